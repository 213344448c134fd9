//! Typed configuration (TOML). Unknown keys are errors; every error names its key path.
//!
//! Parsing happens in two passes: serde (with `serde_path_to_error`, so the first
//! structural error names its key path), then `validate`, which collects every semantic
//! error at once so an installer fixes a file in one round.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

mod layers;

pub use layers::load_layers;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The embedded default: what `scanside run` uses without --config.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../firmware-config/default.toml");

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dicom: DicomConfig,
    pub storage: StorageConfig,
    #[serde(default)]
    pub series: SeriesConfig,
    pub http: HttpConfig,
    #[serde(default)]
    pub gate: GateConfig,
    #[serde(default)]
    pub inference: InferenceConfig,
    #[serde(default)]
    pub budget: BudgetConfig,
    #[serde(default)]
    pub measure: MeasureConfig,
    /// Where results are forwarded (none: they stay on the box).
    #[serde(default)]
    pub upstream: Vec<UpstreamConfig>,
    #[serde(default)]
    pub qr: QrConfig,
    #[serde(default)]
    pub ota: OtaConfig,
    #[serde(default)]
    pub audit: AuditConfig,
}

/// The audit trail (audit/): always kept on the box; sent on when a receiver is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The site's syslog (audit record repository) as "host:port", TCP with
    /// octet counting (RFC 6587), or TLS (RFC 5425) with `tls`. Unset: the
    /// records stay in <data_dir>/audit/audit.log only.
    pub syslog: Option<String>,
    /// TLS to the receiver (ca_file, optional cert_file/key_file, server_name).
    pub tls: Option<UpstreamTls>,
}

/// Over-the-air model updates (ota/): signed bundles from the CLI or a pull.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OtaConfig {
    /// Folder of trusted minisign public keys (*.pub); a bundle must be signed by
    /// one of them. Unset: every install is refused.
    pub trusted_keys_dir: Option<PathBuf>,
    /// A bundle's manifest must carry this `compatible` string.
    pub compatible: String,
    /// Bundle to pull (http or https); its signature is at the same URL + ".minisig".
    /// Unset: no pull, installs come only from `scanside model install`.
    pub update_url: Option<String>,
    /// Seconds between pulls.
    pub check_interval_s: u64,
    /// PEM CA certificate(s) an https update server must chain to.
    pub ca_file: Option<PathBuf>,
    /// Largest bundle downloaded or installed, bytes.
    pub max_bundle_bytes: u64,
}

impl Default for OtaConfig {
    fn default() -> Self {
        OtaConfig {
            trusted_keys_dir: None,
            compatible: "scanside-model-1".into(),
            update_url: None,
            check_interval_s: 3600,
            ca_file: None,
            max_bundle_bytes: 2 << 30,
        }
    }
}

/// The query/retrieve SCP.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QrConfig {
    /// The AEs a C-MOVE may send to; any other Move Destination is refused (A801).
    pub move_destinations: Vec<MoveDestination>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveDestination {
    pub ae_title: String,
    pub host: String,
    pub port: u16,
}

/// One upstream destination (a PACS at the hub) for the forwarder.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Its AE title (called AE); also names the destination in metrics and the API.
    pub ae_title: String,
    pub host: String,
    pub port: u16,
    /// Our calling AE title toward it; default: dicom.ae_title.
    #[serde(default)]
    pub calling_ae_title: Option<String>,
    /// Objects per association.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Tries of an object the destination refuses (permanent error) before it is
    /// dead-lettered with the reason. Transient errors are retried without limit.
    #[serde(default = "default_max_tries")]
    pub max_tries: u32,
    /// Back-off after a failure: starts here, doubles, capped, with +-25% jitter.
    #[serde(default = "default_retry_initial_s")]
    pub retry_initial_s: f64,
    #[serde(default = "default_retry_max_s")]
    pub retry_max_s: f64,
    /// Also forward the source series of every job (as received), queued when
    /// the series completes, before its results.
    #[serde(default)]
    pub forward_sources: bool,
    /// Ask for storage commitment (N-ACTION) after each batch: an object counts
    /// as delivered only once the destination's N-EVENT-REPORT confirms it. The
    /// destination must know our AE (title, host, [dicom] listen port) to report.
    #[serde(default)]
    pub storage_commitment: bool,
    /// No report this long after the request: the objects are sent again.
    #[serde(default = "default_commitment_timeout_s")]
    pub commitment_timeout_s: u64,
    /// DICOM over TLS to this destination; absent: plain TCP.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM file of the CA certificate(s) the destination's certificate must chain to.
    pub ca_file: PathBuf,
    /// Our certificate chain and key (PEM) for a destination that asks for one.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the destination's certificate must carry; default: host.
    #[serde(default)]
    pub server_name: Option<String>,
}

fn default_commitment_timeout_s() -> u64 {
    600
}

fn default_batch() -> usize {
    50
}
fn default_max_tries() -> u32 {
    5
}
fn default_retry_initial_s() -> f64 {
    2.0
}
fn default_retry_max_s() -> f64 {
    300.0
}

/// The longitudinal figures: the volumetric progression flag (decision support).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MeasureConfig {
    /// Increase from the nadir, percent, at or above which a region is flagged
    /// (RANO 2.0 volumetric threshold: 40).
    pub progression_pct: f64,
    /// ... and at least this many mL (guards tiny volumes against noise).
    pub min_increase_ml: f64,
}

impl Default for MeasureConfig {
    fn default() -> Self {
        MeasureConfig {
            progression_pct: 40.0,
            min_increase_ml: 0.1,
        }
    }
}

impl MeasureConfig {
    pub fn thresholds(&self) -> crate::measure::history::Thresholds {
        crate::measure::history::Thresholds {
            progression_pct: self.progression_pct,
            min_increase_ml: self.min_increase_ml,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// ONNX Runtime when its library loads, else tract
    Auto,
    /// ONNX Runtime only: a library that does not load is an error
    Ort,
    /// tract (pure Rust) only
    Tract,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
    Tensorrt,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// auto | ort | tract
    pub backend: BackendChoice,
    /// Model bundle directory (manifest.toml, model.onnx, golden/); unset: the
    /// model built into the binary.
    pub model_dir: Option<PathBuf>,
    /// libonnxruntime.so to load; unset: $ORT_DYLIB_PATH, else the loader's path.
    pub ort_library: Option<PathBuf>,
    /// ONNX Runtime execution provider: cpu | cuda | tensorrt.
    pub execution_provider: ExecutionProvider,
    /// When the configured execution provider does not load, run on the CPU
    /// instead of refusing to load the model.
    pub ep_fallback: bool,
    /// TensorRT: build fp16 engines.
    pub fp16: bool,
    /// TensorRT engine and timing caches; unset: <data_dir>/engine-cache.
    pub engine_cache_dir: Option<PathBuf>,
    /// Threads for inference; 0: all cores.
    pub threads: usize,
    /// Sliding-window overlap; unset: the manifest's.
    pub overlap: Option<f32>,
    /// Mirroring test-time augmentation (8x the inference time).
    pub mirror_tta: bool,
    /// Connected tumour components smaller than this (mL) are removed.
    pub min_component_ml: f64,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            backend: BackendChoice::Auto,
            model_dir: None,
            ort_library: None,
            execution_provider: ExecutionProvider::Cpu,
            ep_fallback: false,
            fp16: true,
            engine_cache_dir: None,
            threads: 0,
            overlap: None,
            mirror_tta: false,
            min_component_ml: 0.1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// From "series complete" to "results committed"; a job past it is flagged.
    pub seconds: u64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig { seconds: 300 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DicomConfig {
    /// Our AE title; associations calling another title are rejected.
    pub ae_title: String,
    /// Address and port of the DICOM listener, e.g. "0.0.0.0:11112".
    pub listen: String,
    /// Peers allowed to open associations (deny by default).
    #[serde(default)]
    pub allowed_peers: Vec<AllowedPeer>,
    /// Concurrent associations; more are rejected with a transient reason.
    #[serde(default = "default_max_associations")]
    pub max_associations: usize,
    /// Seconds of silence inside an association before it is aborted.
    #[serde(default = "default_read_timeout_s")]
    pub read_timeout_s: u64,
    /// Largest PDU (bytes) we accept; announced in A-ASSOCIATE-AC.
    #[serde(default = "default_max_pdu_length")]
    pub max_pdu_length: u32,
    /// A second listener for DICOM over TLS (PS3.15 B.1, BCP 195); absent: none.
    #[serde(default)]
    pub tls: Option<DicomTls>,
}

/// DICOM over TLS: our certificate, and the CA client certificates chain to.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DicomTls {
    /// Address and port of the TLS listener, e.g. "0.0.0.0:2762".
    pub listen: String,
    /// Our certificate chain (PEM), re-read on SIGHUP.
    pub cert_file: PathBuf,
    /// Its private key (PEM), re-read on SIGHUP.
    pub key_file: PathBuf,
    /// CA certificate(s) a client certificate must chain to. Set: a client may
    /// present one (and a peer with `transport = "mutual_tls"` must); a
    /// certificate that does not verify (other CA, expired) fails the handshake.
    /// Unset: client certificates are not asked for.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// How an allowed peer may connect.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PeerTransport {
    /// Plain TCP or TLS
    #[default]
    Any,
    /// Only over the TLS listener
    Tls,
    /// Only over TLS, with a client certificate that verifies against client_ca_file
    MutualTls,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowedPeer {
    /// Calling AE title, or "*" for any title from this address.
    pub ae_title: String,
    /// An IP address or a CIDR block, e.g. "10.1.2.0/24".
    pub address: String,
    /// any (default) | tls | mutual_tls
    #[serde(default)]
    pub transport: PeerTransport,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Spool, index and results live here.
    pub data_dir: PathBuf,
    /// Refuse new data (A700) when free space falls below this many bytes.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// How long data is kept once every upstream has it ("30d", "12h", "90m",
    /// "45s"). Unset: kept until space runs short. Undelivered data is never removed.
    #[serde(default)]
    pub retention: Option<String>,
}

/// "30d", "12h", "90m", "45s" (or a bare number of seconds) in seconds.
pub fn parse_duration_s(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like \"30d\", \"12h\" or \"90m\""))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesConfig {
    /// A series with nothing new for this long is complete.
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u64,
    /// After its association is released, a series with nothing new for this long is complete.
    #[serde(default = "default_release_quiet_s")]
    pub release_quiet_s: u64,
}

impl Default for SeriesConfig {
    fn default() -> Self {
        SeriesConfig {
            idle_timeout_s: default_idle_timeout_s(),
            release_quiet_s: default_release_quiet_s(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port of the health/metrics/status listener.
    pub listen: String,
    /// Bearer token required by every request that changes state (dead-letter
    /// replay). Unset: such requests are refused (403).
    #[serde(default)]
    pub token: Option<String>,
    /// HTTPS: required when `listen` is not a loopback address.
    #[serde(default)]
    pub tls: Option<HttpTls>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// Our certificate chain (PEM), re-read on SIGHUP.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
}

/// Thresholds of the series gate (clinical.md 1(a), 1(b)).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// Magnetic field strength floor, tesla (H7).
    pub min_field_strength_t: f64,
    /// Regex over Series Description + Protocol Name naming a localizer (H4).
    pub localizer_pattern: String,
    /// Regex over study/series/protocol/procedure descriptions that votes for the head (H5).
    pub head_pattern: String,
    /// Regex naming another body region; refuses when nothing votes for the head (H5).
    pub other_region_pattern: String,
    /// Regex over descriptions and sequence name for unsupported sequences (H6).
    pub other_sequence_pattern: String,
    /// Regex over descriptions that marks a T1 as post-contrast (H6).
    pub contrast_pattern: String,
    /// Fewest slices that make a brain volume (G6).
    pub min_slices: usize,
    /// Least coverage along the slice normal, mm (G6).
    pub min_coverage_mm: f64,
    /// Least in-plane field of view, mm (G6).
    pub min_inplane_fov_mm: f64,
    /// Smallest Rows/Columns (G9).
    pub min_matrix: u32,
    /// Coarsest in-plane pixel spacing, mm (G7).
    pub max_pixel_spacing_mm: f64,
    /// Widest slice spacing of a 3D acquisition, mm (G7).
    pub max_slice_spacing_3d_mm: f64,
    /// Widest slice spacing of a 2D acquisition, mm (G7).
    pub max_slice_spacing_2d_mm: f64,
    /// Largest gap between 2D slices (spacing - thickness), mm (G7).
    pub max_slice_gap_mm: f64,
    /// Spacing tolerance: max(this, fraction x median step), mm (G3).
    pub spacing_tolerance_mm: f64,
    pub spacing_tolerance_fraction: f64,
    /// Image quality (MRIQC-style, see gate/quality.rs): SNR (Dietrich) floor.
    pub min_snr: f64,
    /// Tissue contrast-to-noise floor.
    pub min_cnr: f64,
    /// Coefficient of joint variation ceiling.
    pub max_cjv: f64,
    /// Entropy focus criterion ceiling (ghosting, blur).
    pub max_efc: f64,
    /// Foreground-to-background energy ratio floor.
    pub min_fber: f64,
    /// Largest share of voxels exactly zero (skull-stripped / zero-filled input).
    pub max_zero_fraction: f64,
    /// Least in-plane extent of the head-shaped foreground, mm.
    pub min_head_extent_mm: f64,
    /// Series a scanner must have sent before its history judges outliers.
    pub scanner_min_history: u64,
    /// Standard deviations from the scanner's history that make a metric an outlier.
    pub scanner_outlier_z: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            min_field_strength_t: 1.0,
            localizer_pattern: r"(?i)locali[sz]er|scout|survey|pilot|3[- ]?plane|tri[- ]?plane|aahead_scout|calibration|asset cal|sense ref|field ?map|b1map|shim".into(),
            head_pattern: r"(?i)brain|head|neuro|cran|glio|tumou?r|gbm|\bmets?\b|skull|intracran|cerebr|pituit|sella|orbit|\biac\b".into(),
            other_region_pattern: r"(?i)\b(chest|thorax|abdomen|abdominal|abd|pelvis|pelvic|spine|lumbar|thoracic|cervical spine|knee|shoulder|breast|prostate|liver|hip|ankle|wrist|elbow|cardiac|heart)\b".into(),
            other_sequence_pattern: r"(?i)\btof\b|angio|\bmra\b|\bswi\b|dwi|diff|\badc\b|perf|bold|\bdti\b|t2\*|gre[ _-]?t2|hemo".into(),
            contrast_pattern: r"(?i)post|\+c|\bgd\b|gad|contrast|\bce\b|t1c|mprage.*(post|gd)".into(),
            min_slices: 20,
            min_coverage_mm: 100.0,
            min_inplane_fov_mm: 180.0,
            min_matrix: 128,
            max_pixel_spacing_mm: 1.5,
            max_slice_spacing_3d_mm: 1.5,
            max_slice_spacing_2d_mm: 5.0,
            max_slice_gap_mm: 0.1,
            spacing_tolerance_mm: 0.2,
            spacing_tolerance_fraction: 0.05,
            min_snr: 8.0,
            min_cnr: 1.0,
            max_cjv: 1.5,
            max_efc: 0.9,
            min_fber: 20.0,
            max_zero_fraction: 0.3,
            min_head_extent_mm: 100.0,
            scanner_min_history: 10,
            scanner_outlier_z: 3.0,
        }
    }
}

fn default_max_associations() -> usize {
    8
}
fn default_read_timeout_s() -> u64 {
    60
}
fn default_max_pdu_length() -> u32 {
    65536
}
fn default_min_free_bytes() -> u64 {
    1 << 30
}
fn default_idle_timeout_s() -> u64 {
    120
}
fn default_release_quiet_s() -> u64 {
    5
}

/// One configuration error, with the key path it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// All errors found in one file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} error(s)", self.source, self.errors.len())?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A peer rule in its parsed form.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRule {
    pub ae_title: Option<String>,
    pub net: IpNet,
    pub transport: PeerTransport,
}

impl PeerRule {
    pub fn matches(&self, calling_ae: &str, addr: IpAddr) -> bool {
        let addr = match addr {
            // An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.net.contains(&addr) && self.ae_title.as_deref().is_none_or(|t| t == calling_ae)
    }
}

impl Config {
    pub fn embedded_default() -> Config {
        Config::parse(EMBEDDED_DEFAULT, "<embedded default>")
            .expect("the embedded default configuration is valid (checked by a unit test)")
    }

    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source: source.clone(),
            errors: vec![ConfigError {
                key: "<file>".into(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        Config::parse(&text, &source)
    }

    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigErrors> {
        let one = |key: String, message: String| ConfigErrors {
            source: source.to_string(),
            errors: vec![ConfigError { key, message }],
        };
        let de = toml::Deserializer::new(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().to_string();
            let key = if key == "." {
                "<top level>".to_string()
            } else {
                key
            };
            one(key, message)
        })?;
        let errors = cfg.validate();
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors {
                source: source.to_string(),
                errors,
            })
        }
    }

    /// Semantic checks; returns every problem found.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let mut err = |key: &str, message: String| {
            errs.push(ConfigError {
                key: key.to_string(),
                message,
            })
        };
        if let Err(m) = check_ae_title(&self.dicom.ae_title) {
            err("dicom.ae_title", m);
        }
        if let Err(m) = parse_listen(&self.dicom.listen) {
            err("dicom.listen", m);
        }
        if self.dicom.max_associations == 0 {
            err("dicom.max_associations", "must be at least 1".into());
        }
        if self.dicom.read_timeout_s == 0 {
            err("dicom.read_timeout_s", "must be at least 1 second".into());
        }
        // PS3.8 allows 4096..=2^32-1 from us; dicom-ul caps at 16 MiB.
        if !(4096..=16 * 1024 * 1024).contains(&self.dicom.max_pdu_length) {
            err(
                "dicom.max_pdu_length",
                "must be between 4096 and 16777216 bytes".into(),
            );
        }
        for (i, p) in self.dicom.allowed_peers.iter().enumerate() {
            if p.ae_title != "*" {
                if let Err(m) = check_ae_title(&p.ae_title) {
                    err(&format!("dicom.allowed_peers[{i}].ae_title"), m);
                }
            }
            if let Err(m) = parse_net(&p.address) {
                err(&format!("dicom.allowed_peers[{i}].address"), m);
            }
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            err("storage.data_dir", "must not be empty".into());
        }
        if self.series.idle_timeout_s == 0 {
            err("series.idle_timeout_s", "must be at least 1 second".into());
        }
        if self.series.release_quiet_s > self.series.idle_timeout_s {
            err(
                "series.release_quiet_s",
                format!(
                    "must not exceed series.idle_timeout_s ({})",
                    self.series.idle_timeout_s
                ),
            );
        }
        if let Err(m) = parse_listen(&self.http.listen) {
            err("http.listen", m);
        }
        let g = &self.gate;
        for (key, v) in [
            ("gate.min_field_strength_t", g.min_field_strength_t),
            ("gate.min_coverage_mm", g.min_coverage_mm),
            ("gate.min_inplane_fov_mm", g.min_inplane_fov_mm),
            ("gate.max_slice_gap_mm", g.max_slice_gap_mm),
            ("gate.spacing_tolerance_mm", g.spacing_tolerance_mm),
            (
                "gate.spacing_tolerance_fraction",
                g.spacing_tolerance_fraction,
            ),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                err(key, format!("must be a number >= 0, not {v}"));
            }
        }
        for (key, v) in [
            ("gate.max_pixel_spacing_mm", g.max_pixel_spacing_mm),
            ("gate.max_slice_spacing_3d_mm", g.max_slice_spacing_3d_mm),
            ("gate.max_slice_spacing_2d_mm", g.max_slice_spacing_2d_mm),
        ] {
            if !(v.is_finite() && v > 0.0) {
                err(key, format!("must be a number > 0, not {v}"));
            }
        }
        for (key, pattern) in [
            ("gate.localizer_pattern", &g.localizer_pattern),
            ("gate.head_pattern", &g.head_pattern),
            ("gate.other_region_pattern", &g.other_region_pattern),
            ("gate.other_sequence_pattern", &g.other_sequence_pattern),
            ("gate.contrast_pattern", &g.contrast_pattern),
        ] {
            if let Err(e) = regex::Regex::new(pattern) {
                err(key, format!("not a valid regular expression: {e}"));
            }
        }
        if g.min_slices < 2 {
            err("gate.min_slices", "must be at least 2".into());
        }
        let inf = &self.inference;
        if let Some(d) = &inf.model_dir {
            if !d.join("manifest.toml").is_file() {
                err(
                    "inference.model_dir",
                    format!("{} has no manifest.toml", d.display()),
                );
            }
        }
        if let Some(o) = inf.overlap {
            if !(0.0..0.95).contains(&o) {
                err(
                    "inference.overlap",
                    format!("must be in [0, 0.95), not {o}"),
                );
            }
        }
        if !(inf.min_component_ml.is_finite() && inf.min_component_ml >= 0.0) {
            err("inference.min_component_ml", "must be a number >= 0".into());
        }
        if inf.execution_provider != ExecutionProvider::Cpu && inf.backend == BackendChoice::Tract {
            err(
                "inference.execution_provider",
                "needs backend = \"ort\" or \"auto\"".into(),
            );
        }
        if self.budget.seconds == 0 {
            err("budget.seconds", "must be at least 1".into());
        }
        if let Some(t) = &self.http.token {
            if t.len() < 16 {
                err("http.token", "must be at least 16 characters".into());
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, u) in self.upstream.iter().enumerate() {
            let key = |k: &str| format!("upstream[{i}].{k}");
            if let Err(e) = check_ae_title(&u.ae_title) {
                err(&key("ae_title"), e);
            }
            if !seen.insert(u.ae_title.clone()) {
                err(
                    &key("ae_title"),
                    format!("{:?} names two upstreams", u.ae_title),
                );
            }
            if let Some(c) = &u.calling_ae_title {
                if let Err(e) = check_ae_title(c) {
                    err(&key("calling_ae_title"), e);
                }
            }
            if u.host.trim().is_empty() {
                err(&key("host"), "must name a host".into());
            }
            if u.port == 0 {
                err(&key("port"), "must be 1-65535".into());
            }
            if u.batch == 0 {
                err(&key("batch"), "must be at least 1".into());
            }
            if let Some(t) = &u.tls {
                if let Err((k, m)) = crate::dimse::tls::client_config(t) {
                    err(&key(&format!("tls.{k}")), m);
                }
            }
            if u.storage_commitment && u.commitment_timeout_s == 0 {
                err(
                    &key("commitment_timeout_s"),
                    "must be at least 1 second".into(),
                );
            }
            if u.max_tries == 0 {
                err(&key("max_tries"), "must be at least 1".into());
            }
            if !(u.retry_initial_s.is_finite()
                && u.retry_initial_s > 0.0
                && u.retry_max_s >= u.retry_initial_s)
            {
                err(
                    &key("retry_initial_s"),
                    "needs 0 < retry_initial_s <= retry_max_s".into(),
                );
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, d) in self.qr.move_destinations.iter().enumerate() {
            let key = |k: &str| format!("qr.move_destinations[{i}].{k}");
            if let Err(e) = check_ae_title(&d.ae_title) {
                err(&key("ae_title"), e);
            }
            if !seen.insert(d.ae_title.clone()) {
                err(
                    &key("ae_title"),
                    format!("{:?} is listed twice", d.ae_title),
                );
            }
            if d.host.trim().is_empty() {
                err(&key("host"), "must name a host".into());
            }
            if d.port == 0 {
                err(&key("port"), "must be 1-65535".into());
            }
        }
        if let Some(r) = &self.storage.retention {
            if let Err(e) = parse_duration_s(r) {
                err("storage.retention", e);
            }
        }
        let m = &self.measure;
        if !(m.progression_pct.is_finite() && m.progression_pct > 0.0) {
            err(
                "measure.progression_pct",
                format!("must be a number > 0, not {}", m.progression_pct),
            );
        }
        if !(m.min_increase_ml.is_finite() && m.min_increase_ml >= 0.0) {
            err(
                "measure.min_increase_ml",
                format!("must be a number >= 0, not {}", m.min_increase_ml),
            );
        }
        if let Some(t) = &self.dicom.tls {
            if let Err(m) = parse_listen(&t.listen) {
                err("dicom.tls.listen", m);
            }
            if let Err((k, m)) = crate::dimse::tls::server_config(
                &t.cert_file,
                &t.key_file,
                t.client_ca_file.as_deref(),
            ) {
                err(&format!("dicom.tls.{k}"), m);
            }
        } else if let Some(i) = self
            .dicom
            .allowed_peers
            .iter()
            .position(|p| p.transport != PeerTransport::Any)
        {
            err(
                &format!("dicom.allowed_peers[{i}].transport"),
                "needs [dicom.tls] (there is no TLS listener)".into(),
            );
        }
        if let Some(i) = self
            .dicom
            .allowed_peers
            .iter()
            .position(|p| p.transport == PeerTransport::MutualTls)
        {
            if self
                .dicom
                .tls
                .as_ref()
                .is_some_and(|t| t.client_ca_file.is_none())
            {
                err(
                    &format!("dicom.allowed_peers[{i}].transport"),
                    "mutual_tls needs dicom.tls.client_ca_file".into(),
                );
            }
        }
        if let Ok(addr) = parse_listen(&self.http.listen) {
            if !addr.ip().is_loopback() && self.http.tls.is_none() {
                err(
                    "http.listen",
                    format!("{addr} is not a loopback address: serving the API to the network needs [http.tls]"),
                );
            }
        }
        if let Some(t) = &self.http.tls {
            if let Err((k, m)) = crate::dimse::tls::server_config(&t.cert_file, &t.key_file, None) {
                err(&format!("http.tls.{k}"), m);
            }
        }
        if let Some(t) = &self.audit.syslog {
            match t.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0) => {}
                _ => err(
                    "audit.syslog",
                    format!("{t:?} is not host:port such as \"syslog.example.org:6514\""),
                ),
            }
        }
        if let Some(t) = &self.audit.tls {
            if self.audit.syslog.is_none() {
                err("audit.tls", "needs audit.syslog".into());
            } else if let Err((k, m)) = crate::dimse::tls::client_config(t) {
                err(&format!("audit.tls.{k}"), m);
            }
        }
        let o = &self.ota;
        if o.compatible.trim().is_empty() {
            err("ota.compatible", "must not be empty".into());
        }
        if let Some(u) = &o.update_url {
            match u.split_once("://") {
                Some(("https", _)) if o.ca_file.is_none() => err(
                    "ota.ca_file",
                    "needed for an https update_url (the box trusts only the site's CA)".into(),
                ),
                Some(("http" | "https", rest)) if !rest.is_empty() => {}
                _ => err(
                    "ota.update_url",
                    format!("{u:?} is not an http:// or https:// URL"),
                ),
            }
        }
        if o.check_interval_s == 0 {
            err("ota.check_interval_s", "must be at least 1 second".into());
        }
        if o.max_bundle_bytes == 0 {
            err("ota.max_bundle_bytes", "must be at least 1".into());
        }
        errs
    }

    pub fn dicom_listen(&self) -> SocketAddr {
        parse_listen(&self.dicom.listen).expect("validated")
    }

    pub fn http_listen(&self) -> SocketAddr {
        parse_listen(&self.http.listen).expect("validated")
    }

    pub fn peer_rules(&self) -> Vec<PeerRule> {
        self.dicom
            .allowed_peers
            .iter()
            .map(|p| PeerRule {
                ae_title: (p.ae_title != "*").then(|| p.ae_title.clone()),
                net: parse_net(&p.address).expect("validated"),
                transport: p.transport,
            })
            .collect()
    }
}

/// PS3.5: an AE title is 1..=16 characters of the default repertoire, no backslash
/// or control characters, and not all spaces.
pub fn check_ae_title(t: &str) -> Result<(), String> {
    if t.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if t.len() > 16 {
        return Err(format!("{t:?} is longer than 16 characters"));
    }
    if t.chars().any(|c| !(' '..='~').contains(&c) || c == '\\') {
        return Err(format!(
            "{t:?} has characters outside the DICOM default repertoire"
        ));
    }
    Ok(())
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an address:port such as \"0.0.0.0:11112\""))
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is neither an IP address nor a CIDR block"))
}

/// The JSON schema of the configuration, as committed in firmware-config/.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Config);
    serde_json::to_string_pretty(&schema).expect("schema serialises") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_matches_design() {
        let c = Config::parse(EMBEDDED_DEFAULT, "default").unwrap();
        assert_eq!(c.dicom.ae_title, "SCANSIDE");
        assert_eq!(c.dicom_listen().to_string(), "127.0.0.1:11112");
        assert_eq!(c.http_listen().to_string(), "127.0.0.1:8080");
        assert_eq!(c.storage.data_dir, PathBuf::from("./scanside-data"));
        let rules = c.peer_rules();
        assert!(rules[0].matches("ANY", "127.0.0.1".parse().unwrap()));
        assert!(!rules[0].matches("ANY", "10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn unknown_key_names_its_path() {
        let text = EMBEDDED_DEFAULT.replace("[storage]", "[storage]\nretension = 3");
        let e = Config::parse(&text, "x").unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert_eq!(e.errors[0].key, "storage.retension");
        assert!(e.errors[0].message.contains("unknown field"), "{}", e);
    }

    #[test]
    fn wrong_type_names_its_path() {
        let text = EMBEDDED_DEFAULT.replace("max_associations = 8", "max_associations = \"8\"");
        let e = Config::parse(&text, "x").unwrap_err();
        assert_eq!(e.errors[0].key, "dicom.max_associations");
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let text = EMBEDDED_DEFAULT
            .replace(
                "ae_title = \"SCANSIDE\"",
                "ae_title = \"A_TITLE_FAR_TOO_LONG\"",
            )
            .replace("address = \"127.0.0.1\"", "address = \"10.1.2.0/33\"")
            .replace("listen = \"127.0.0.1:8080\"", "listen = \"localhost\"");
        let e = Config::parse(&text, "x").unwrap_err();
        let keys: Vec<_> = e.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "dicom.ae_title",
                "dicom.allowed_peers[0].address",
                "http.listen"
            ]
        );
    }

    #[test]
    fn gate_patterns_match_the_code_defaults_and_bad_ones_name_their_key() {
        let c = Config::parse(EMBEDDED_DEFAULT, "x").unwrap();
        let d = GateConfig::default();
        assert_eq!(c.gate.localizer_pattern, d.localizer_pattern);
        assert_eq!(c.gate.head_pattern, d.head_pattern);
        assert_eq!(c.gate.other_region_pattern, d.other_region_pattern);
        assert_eq!(c.gate.other_sequence_pattern, d.other_sequence_pattern);
        assert_eq!(c.gate.contrast_pattern, d.contrast_pattern);
        let text =
            EMBEDDED_DEFAULT.replace("localizer_pattern = '(?i)", "localizer_pattern = '(?i)(");
        let e = Config::parse(&text, "x").unwrap_err();
        assert_eq!(e.errors[0].key, "gate.localizer_pattern");
        assert!(e.errors[0].message.contains("regular expression"));
    }

    #[test]
    fn peer_rules_match_title_and_cidr() {
        let r = PeerRule {
            ae_title: Some("MRSCANNER1".into()),
            net: "10.1.2.0/24".parse().unwrap(),
            transport: PeerTransport::Any,
        };
        assert!(r.matches("MRSCANNER1", "10.1.2.77".parse().unwrap()));
        assert!(!r.matches("MRSCANNER2", "10.1.2.77".parse().unwrap()));
        assert!(!r.matches("MRSCANNER1", "10.1.3.1".parse().unwrap()));
        assert!(r.matches("MRSCANNER1", "::ffff:10.1.2.9".parse().unwrap()));
    }

    #[test]
    fn committed_schema_is_fresh() {
        let committed = include_str!("../../../firmware-config/scanside.schema.json");
        assert_eq!(
            committed,
            json_schema(),
            "firmware-config/scanside.schema.json is stale: run `scanside config-schema > firmware-config/scanside.schema.json`"
        );
    }
}
