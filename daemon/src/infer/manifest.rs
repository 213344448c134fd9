//! A model bundle: manifest.toml (what the model expects and what it was measured
//! to do), model.onnx (checked against the manifest's sha256) and a golden case.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    /// Which daemons may install it over the air: must equal their [ota] compatible.
    #[serde(default)]
    pub compatible: Option<String>,
    pub input: InputSpec,
    pub normalisation: Normalisation,
    /// label value -> name; values 0..classes-1, 0 is background.
    pub labels: BTreeMap<String, String>,
    pub inference: InferenceSpec,
    /// Free-form: how it was trained, how it was evaluated (reported, not used).
    pub training: toml::Table,
    pub evaluation: toml::Table,
    pub golden: Golden,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub file: String,
    pub sha256: String,
    pub input_name: String,
    pub output_name: String,
    /// z, y, x of the model grid (patient LPS axes), mm
    pub spacing_mm: [f64; 3],
    pub patch: [usize; 3],
    /// One entry per input channel, in order.
    pub channels: Vec<String>,
    pub orientation: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalisation {
    /// "percentile": the low percentile maps to 0, the high one to 1 (nearest rank)
    pub method: String,
    pub low: f64,
    pub high: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceSpec {
    pub overlap: f32,
    pub blend: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    pub input: String,
    pub shape: [usize; 3],
    pub voxel_counts: Vec<u64>,
}

/// A bundle read into memory and checked.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: Option<PathBuf>,
    pub manifest: Manifest,
    pub onnx: Vec<u8>,
    pub sha256: String,
    pub golden_input: Vec<f32>,
}

/// The default model, compiled into the binary so `scanside run` works anywhere.
const BUILTIN_MANIFEST: &str = include_str!("../../../models/brats-synth-unet/manifest.toml");
const BUILTIN_ONNX: &[u8] = include_bytes!("../../../models/brats-synth-unet/model.onnx");
const BUILTIN_GOLDEN: &[u8] = include_bytes!("../../../models/brats-synth-unet/golden/input.npy");

impl Manifest {
    pub fn classes(&self) -> usize {
        self.labels.len()
    }

    pub fn label_name(&self, v: u8) -> &str {
        self.labels
            .get(&v.to_string())
            .map(|s| s.as_str())
            .unwrap_or("?")
    }

    fn check(&self) -> Result<()> {
        let i = &self.input;
        if i.patch.iter().any(|&p| p == 0 || p > 512) {
            bail!("input.patch {:?}: each side must be 1..512", i.patch);
        }
        if i.spacing_mm.iter().any(|&s| !(s > 0.0 && s <= 20.0)) {
            bail!(
                "input.spacing_mm {:?}: each must be in (0, 20]",
                i.spacing_mm
            );
        }
        if i.channels.len() != 1 {
            bail!(
                "input.channels: {} channels; this daemon feeds one series (one channel) per job",
                i.channels.len()
            );
        }
        if i.orientation != "LPS" {
            bail!(
                "input.orientation {:?}: only \"LPS\" is supported",
                i.orientation
            );
        }
        for k in 0..self.labels.len() {
            if !self.labels.contains_key(&k.to_string()) {
                bail!(
                    "labels: values must be 0..{} without gaps; {k} is missing",
                    self.labels.len() - 1
                );
            }
        }
        if self.labels.len() < 2 || self.labels.len() > 255 {
            bail!("labels: {} classes; need 2..255", self.labels.len());
        }
        if self.normalisation.method != "percentile"
            || !(0.0..100.0).contains(&self.normalisation.low)
            || !(self.normalisation.low < self.normalisation.high
                && self.normalisation.high <= 100.0)
        {
            bail!("normalisation: method must be \"percentile\" with 0 <= low < high <= 100");
        }
        if !(0.0..0.95).contains(&self.inference.overlap) {
            bail!(
                "inference.overlap {}: must be in [0, 0.95)",
                self.inference.overlap
            );
        }
        if self.inference.blend != "gaussian" {
            bail!(
                "inference.blend {:?}: only \"gaussian\" is supported",
                self.inference.blend
            );
        }
        if self.golden.voxel_counts.len() != self.labels.len() {
            bail!("golden.voxel_counts: one count per label expected");
        }
        Ok(())
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Manifest {
    /// Parses and checks a manifest.toml (what the fuzz target `manifest` drives).
    pub fn parse(text: &str) -> Result<Manifest> {
        let m: Manifest = toml::from_str(text)?;
        m.check()?;
        Ok(m)
    }
}

impl Bundle {
    pub fn builtin() -> Result<Bundle> {
        Self::from_parts(
            None,
            BUILTIN_MANIFEST,
            BUILTIN_ONNX.to_vec(),
            BUILTIN_GOLDEN,
        )
        .context("the built-in model bundle")
    }

    /// Reads and checks the bundle in `dir`; every error names the file at fault.
    pub fn open(dir: &Path) -> Result<Bundle> {
        let mpath = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&mpath)
            .with_context(|| format!("cannot read {}", mpath.display()))?;
        let m: Manifest = toml::from_str(&text).with_context(|| format!("{}", mpath.display()))?;
        let onnx_path = dir.join(&m.input.file);
        let onnx = std::fs::read(&onnx_path)
            .with_context(|| format!("cannot read {}", onnx_path.display()))?;
        let gpath = dir.join(&m.golden.input);
        let golden =
            std::fs::read(&gpath).with_context(|| format!("cannot read {}", gpath.display()))?;
        Self::from_parts(Some(dir.to_path_buf()), &text, onnx, &golden)
            .with_context(|| format!("model bundle {}", dir.display()))
    }

    fn from_parts(
        dir: Option<PathBuf>,
        manifest: &str,
        onnx: Vec<u8>,
        golden: &[u8],
    ) -> Result<Bundle> {
        let manifest = Manifest::parse(manifest).context("manifest.toml")?;
        let sha256 = sha256_hex(&onnx);
        if !sha256.eq_ignore_ascii_case(&manifest.input.sha256) {
            bail!(
                "{}: sha256 is {sha256}, the manifest says {} (corrupt or replaced file)",
                manifest.input.file,
                manifest.input.sha256
            );
        }
        let golden_input = read_npy_f32(golden, manifest.golden.shape)
            .with_context(|| format!("golden input {}", manifest.golden.input))?;
        Ok(Bundle {
            dir,
            manifest,
            onnx,
            sha256,
            golden_input,
        })
    }
}

/// A little-endian f32 .npy file of the given C-order shape.
pub fn read_npy_f32(b: &[u8], shape: [usize; 3]) -> Result<Vec<f32>> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        bail!("not a .npy file");
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => bail!(".npy version {v} not supported"),
    };
    let header = std::str::from_utf8(b.get(start..start + hlen).context("truncated header")?)?;
    let want_shape = format!("({}, {}, {})", shape[0], shape[1], shape[2]);
    if !header.contains("'descr': '<f4'")
        || !header.contains("'fortran_order': False")
        || !header.contains(&want_shape)
    {
        bail!("expected little-endian f32, C order, shape {want_shape}; header is {header}");
    }
    let data = &b[start + hlen..];
    let n: usize = shape.iter().product();
    if data.len() != n * 4 {
        bail!("{} data bytes for {n} values", data.len());
    }
    Ok(data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_bundle_is_consistent() {
        let b = Bundle::builtin().unwrap();
        assert_eq!(b.manifest.classes(), 4);
        assert_eq!(
            b.golden_input.len(),
            b.manifest.golden.shape.iter().product::<usize>()
        );
        assert_eq!(b.manifest.label_name(0), "background");
    }

    #[test]
    fn a_replaced_onnx_is_refused_by_its_hash() {
        let e = Bundle::from_parts(
            None,
            BUILTIN_MANIFEST,
            b"not a model".to_vec(),
            BUILTIN_GOLDEN,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("sha256"), "{e:#}");
    }

    #[test]
    fn manifest_errors_name_the_key() {
        let bad = BUILTIN_MANIFEST.replace("patch = [64, 64, 64]", "patch = [64, 0, 64]");
        let e = Bundle::from_parts(None, &bad, BUILTIN_ONNX.to_vec(), BUILTIN_GOLDEN).unwrap_err();
        assert!(format!("{e:#}").contains("input.patch"), "{e:#}");
        let bad = BUILTIN_MANIFEST.replace("[labels]", "[labels]\n7 = \"extra\"");
        let e = Bundle::from_parts(None, &bad, BUILTIN_ONNX.to_vec(), BUILTIN_GOLDEN).unwrap_err();
        assert!(format!("{e:#}").contains("labels"), "{e:#}");
    }
}
