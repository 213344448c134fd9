//! `scanside demo`: a newcomer's first run. Builds a synthetic brain MR series
//! with a tumour (the built-in model's golden case, a synthetic head from the
//! training recipe, upsampled in-plane and written as a 2D axial T2 series with
//! fresh UIDs), sends it with C-STORE to a daemon (its own, started in this
//! process on free loopback ports, or one given with --to), waits for the
//! result over the HTTP API and prints the volumes, the stage timings and where
//! the SEG, SR and trend picture are.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

use crate::config::Config;
use crate::dimse::scu::StoreScu;
use crate::results::{derived_uid, put};

pub struct DemoOptions {
    /// DICOM address of a running daemon; None starts one in this process.
    pub to: Option<String>,
    /// Its HTTP address (with --to).
    pub http: Option<String>,
    pub called_ae: String,
    /// Data directory of the in-process daemon.
    pub data_dir: PathBuf,
    pub timeout: Duration,
}

const MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";

pub fn run(o: DemoOptions) -> Result<()> {
    let (dicom, http) = match &o.to {
        Some(to) => (
            to.clone(),
            o.http.clone().ok_or_else(|| {
                anyhow!("--to needs --http HOST:PORT (the daemon's HTTP API) to follow the job")
            })?,
        ),
        None => start_daemon(&o.data_dir)?,
    };
    println!("scanside demo: daemon at DICOM {dicom}, HTTP http://{http}");
    wait_ready(&http, o.timeout)?;
    let series = synthetic_series()?;
    let series_uid = crate::results::text(&series[0], tags::SERIES_INSTANCE_UID);
    let t0 = Instant::now();
    let mut scu = StoreScu::connect(&dicom, "SCANSIDEDEMO", &o.called_ae, &[MR_IMAGE_STORAGE])?;
    for obj in &series {
        let status = scu.store(obj)?;
        if status != 0 {
            bail!("the daemon answered C-STORE with status {status:04X}");
        }
    }
    scu.release()?;
    println!(
        "sent {} slices (synthetic axial T2 with a tumour) in {:.1} s; waiting for the results ...",
        series.len(),
        t0.elapsed().as_secs_f64()
    );
    let job = wait_job(&http, &series_uid, o.timeout)?;
    print_job(&job, o.to.is_none().then_some(o.data_dir.as_path()), &http);
    if job["state"] != "written" {
        bail!("the job ended in state {}", job["state"]);
    }
    Ok(())
}

/// Starts the daemon on free loopback ports with the embedded default config.
fn start_daemon(data_dir: &std::path::Path) -> Result<(String, String)> {
    let free = || -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (dp, hp) = (free()?, free()?);
    let mut cfg = Config::embedded_default();
    cfg.storage.data_dir = data_dir.to_path_buf();
    cfg.dicom.listen = format!("127.0.0.1:{dp}");
    cfg.http.listen = format!("127.0.0.1:{hp}");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        if let Err(e) = rt.block_on(crate::run(cfg, Vec::new())) {
            eprintln!("scanside demo: the daemon stopped: {e:#}");
            std::process::exit(1);
        }
    });
    Ok((format!("127.0.0.1:{dp}"), format!("127.0.0.1:{hp}")))
}

/// A GET on the daemon's HTTP API: (status, body).
fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("HTTP {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response from {addr}"))?;
    let body = text.split_once("\r\n\r\n").map(|b| b.1).unwrap_or("");
    Ok((status, body.to_string()))
}

fn wait_ready(http: &str, timeout: Duration) -> Result<()> {
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < timeout {
        match http_get(http, "/readyz") {
            Ok((200, _)) => return Ok(()),
            Ok((_, body)) => last = body,
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("the daemon did not become ready: {last}")
}

fn wait_job(http: &str, series_uid: &str, timeout: Duration) -> Result<serde_json::Value> {
    let t = Instant::now();
    while t.elapsed() < timeout {
        let (_, body) = http_get(http, "/api/v1/jobs")?;
        let jobs: serde_json::Value = serde_json::from_str(&body)?;
        if let Some(j) = jobs
            .as_array()
            .into_iter()
            .flatten()
            .find(|j| j["series_instance_uid"] == series_uid)
        {
            if matches!(j["state"].as_str(), Some("written" | "rejected" | "failed")) {
                let (_, body) = http_get(
                    http,
                    &format!("/api/v1/jobs/{}", j["id"].as_str().unwrap_or("")),
                )?;
                return Ok(serde_json::from_str(&body)?);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("no result within {} s", timeout.as_secs())
}

fn print_job(job: &serde_json::Value, data_dir: Option<&std::path::Path>, http: &str) {
    println!(
        "\njob {}: {}",
        job["id"].as_str().unwrap_or("?"),
        job["state"].as_str().unwrap_or("?")
    );
    if let Some(h) = job["history"].as_array().and_then(|h| h.last()) {
        if let Some(note) = h["note"].as_str() {
            println!("  {note}");
        }
    }
    if let Some(regions) = job["measurement"]["regions"].as_array() {
        println!(
            "\n  region                volume     longest x perpendicular (axial)   craniocaudal"
        );
        for r in regions {
            let s = &r["stats"];
            println!(
                "  {:<20} {:>7.2} mL   {:>6.1} x {:>5.1} mm                    {:>6.1} mm",
                r["region"]["name"].as_str().unwrap_or("?"),
                r["volume_ml"].as_f64().unwrap_or(0.0),
                s["max_axial_diameter_mm"].as_f64().unwrap_or(0.0),
                s["perpendicular_diameter_mm"].as_f64().unwrap_or(0.0),
                s["craniocaudal_extent_mm"].as_f64().unwrap_or(0.0),
            );
        }
    }
    if let Some(inf) = job["inference"].as_object() {
        println!(
            "\n  model {} on {}",
            inf["model"].as_str().unwrap_or("?"),
            inf["backend"].as_str().unwrap_or("?")
        );
    }
    let mut stages: Vec<(String, u64)> = job["inference"]["stage_ms"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    for s in ["measured", "written"] {
        if let Some(ms) = job["stage_timings_ms"][s].as_u64() {
            stages.push((if s == "measured" { "measure" } else { "write" }.into(), ms));
        }
    }
    let order = [
        "decode", "gate", "resample", "infer", "post", "measure", "write",
    ];
    stages.sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(99));
    println!(
        "  stage timings: {}",
        stages
            .iter()
            .map(|(k, v)| format!("{k} {v} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let hist = job["history"].as_array().cloned().unwrap_or_default();
    let at = |s: &str| {
        hist.iter()
            .find(|h| h["state"] == s)
            .and_then(|h| h["at_ms"].as_u64())
    };
    if let (Some(a), Some(b)) = (at("complete"), at("written")) {
        println!(
            "  series complete -> results committed: {:.1} s (budget 300 s)",
            (b - a) as f64 / 1000.0
        );
    }
    if let Some(objs) = job["result_objects"].as_array() {
        println!("\n  results:");
        for o in objs {
            let path = o["path"].as_str().unwrap_or("?");
            let shown = data_dir
                .map(|d| d.join(path).display().to_string())
                .unwrap_or_else(|| path.to_string());
            println!("    {:<14} {shown}", o["kind"].as_str().unwrap_or("?"));
        }
    }
    match (data_dir, job["measurement"]["uids"]["picture"].as_str()) {
        // Our own daemon stops with this command: show the files.
        (Some(d), Some(uid)) => {
            for ext in ["png", "svg"] {
                let p = d.join("pictures").join(format!("{uid}.{ext}"));
                println!("    trend {:<8} {}", ext.to_uppercase(), p.display());
            }
        }
        _ => {
            if let Some(p) = job["trend_png"].as_str() {
                println!("    trend PNG      http://{http}{p}");
                println!(
                    "    trend SVG      http://{http}{}",
                    job["trend_svg"].as_str().unwrap_or("")
                );
            }
        }
    }
    if let Some(gate) = job["gate"]["stages"].as_array() {
        for st in gate {
            for r in st["reasons"].as_array().into_iter().flatten() {
                println!(
                    "  refused ({}): {}",
                    st["stage"].as_str().unwrap_or("?"),
                    r["message"].as_str().unwrap_or("?")
                );
            }
        }
    }
}

/// Small deterministic noise (xorshift), so a demo series is never perfectly clean.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // Sum of uniforms: roughly normal, mean 0, sd 1.
        let u = |x: u64| ((x >> 40) as f32) / (1u64 << 24) as f32;
        let a = u(self.0);
        let b = u(self.0.rotate_left(21));
        let c = u(self.0.rotate_left(42));
        (a + b + c - 1.5) * 2.0
    }
}

/// The golden case (model grid, 2 mm, z y x in LPS) as 2 mm axial slices of
/// 192 x 192 one-millimetre pixels.
pub fn synthetic_series() -> Result<Vec<FileDicomObject<InMemDicomObject>>> {
    let bundle = crate::infer::manifest::Bundle::builtin()?;
    let g = &bundle.golden_input;
    let [nz, ny, nx] = bundle.manifest.golden.shape;
    let n = 192usize;
    let (oy, ox) = ((n - 2 * ny) / 2, (n - 2 * nx) / 2);
    let now = crate::store::now_ms().to_string();
    let uid = |what: &str, k: usize| derived_uid(&["demo", &now, what, &k.to_string()]);
    let (date, time) = crate::sys::utc_now_dicom();
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    let sample = |z: usize, y: f32, x: f32| -> f32 {
        // Bilinear in-plane, clamped at the edges.
        let (y0, x0) = (y.floor().max(0.0) as usize, x.floor().max(0.0) as usize);
        let (y1, x1) = ((y0 + 1).min(ny - 1), (x0 + 1).min(nx - 1));
        let (fy, fx) = (
            (y - y0 as f32).clamp(0.0, 1.0),
            (x - x0 as f32).clamp(0.0, 1.0),
        );
        let v = |yy: usize, xx: usize| g[(z * ny + yy) * nx + xx];
        (v(y0, x0) * (1.0 - fx) + v(y0, x1) * fx) * (1.0 - fy)
            + (v(y1, x0) * (1.0 - fx) + v(y1, x1) * fx) * fy
    };
    let mut out = Vec::with_capacity(nz);
    for z in 0..nz {
        let mut px = Vec::with_capacity(n * n * 2);
        for r in 0..n {
            for c in 0..n {
                let (y, x) = (
                    (r as f32 - oy as f32 - 0.5) / 2.0,
                    (c as f32 - ox as f32 - 0.5) / 2.0,
                );
                let inside = y >= -0.5 && x >= -0.5 && y <= ny as f32 - 0.5 && x <= nx as f32 - 0.5;
                let s = if inside { sample(z, y, x) } else { 0.0 };
                let v = ((s + 0.01 * noise.next()).abs() * 2500.0).clamp(0.0, 4095.0) as u16;
                px.extend_from_slice(&v.to_le_bytes());
            }
        }
        let mut o = InMemDicomObject::new_empty();
        let sop = uid("sop", z);
        for (tag, vr, v) in [
            (tags::SOP_CLASS_UID, VR::UI, MR_IMAGE_STORAGE.to_string()),
            (tags::SOP_INSTANCE_UID, VR::UI, sop.clone()),
            (tags::STUDY_INSTANCE_UID, VR::UI, uid("study", 0)),
            (tags::SERIES_INSTANCE_UID, VR::UI, uid("series", 0)),
            (tags::FRAME_OF_REFERENCE_UID, VR::UI, uid("frame", 0)),
            (tags::MODALITY, VR::CS, "MR".into()),
            (tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\M\\ND".into()),
            (tags::PATIENT_NAME, VR::PN, "Demo^Patient".into()),
            (tags::PATIENT_ID, VR::LO, "SCANSIDE-DEMO".into()),
            (tags::PATIENT_BIRTH_DATE, VR::DA, "19700101".into()),
            (tags::PATIENT_SEX, VR::CS, "O".into()),
            (tags::STUDY_DATE, VR::DA, date.clone()),
            (tags::STUDY_TIME, VR::TM, time.clone()),
            (tags::SERIES_DATE, VR::DA, date.clone()),
            (
                tags::STUDY_DESCRIPTION,
                VR::LO,
                "MRI BRAIN (scanside demo, synthetic)".into(),
            ),
            (tags::STUDY_ID, VR::SH, "DEMO".into()),
            (tags::ACCESSION_NUMBER, VR::SH, "DEMO".into()),
            (tags::REFERRING_PHYSICIAN_NAME, VR::PN, String::new()),
            (tags::SERIES_DESCRIPTION, VR::LO, "AX T2 TSE".into()),
            (tags::PROTOCOL_NAME, VR::LO, "AX T2 TSE".into()),
            (tags::BODY_PART_EXAMINED, VR::CS, "HEAD".into()),
            (tags::MANUFACTURER, VR::LO, "SYNTHETIC".into()),
            (
                tags::MANUFACTURER_MODEL_NAME,
                VR::LO,
                "scanside-demo".into(),
            ),
            (tags::STATION_NAME, VR::SH, "DEMO".into()),
            (tags::MAGNETIC_FIELD_STRENGTH, VR::DS, "3".into()),
            (tags::RECEIVE_COIL_NAME, VR::SH, "Head_32".into()),
            (tags::SCANNING_SEQUENCE, VR::CS, "SE".into()),
            (tags::SEQUENCE_VARIANT, VR::CS, "SP".into()),
            (tags::MR_ACQUISITION_TYPE, VR::CS, "2D".into()),
            (tags::REPETITION_TIME, VR::DS, "4500".into()),
            (tags::ECHO_TIME, VR::DS, "100".into()),
            (tags::SERIES_NUMBER, VR::IS, "5".into()),
            (tags::INSTANCE_NUMBER, VR::IS, (z + 1).to_string()),
            (
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                "1\\0\\0\\0\\1\\0".into(),
            ),
            (
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                format!("{}\\{}\\{}", -96.0, -96.0, -64.0 + 2.0 * z as f64),
            ),
            (tags::PIXEL_SPACING, VR::DS, "1\\1".into()),
            (tags::SLICE_THICKNESS, VR::DS, "2".into()),
            (tags::SPACING_BETWEEN_SLICES, VR::DS, "2".into()),
            (
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                "MONOCHROME2".into(),
            ),
            (tags::RESCALE_INTERCEPT, VR::DS, "0".into()),
            (tags::RESCALE_SLOPE, VR::DS, "1".into()),
        ] {
            put(&mut o, tag, vr, &v);
        }
        for (tag, v) in [
            (tags::SAMPLES_PER_PIXEL, 1u16),
            (tags::ROWS, n as u16),
            (tags::COLUMNS, n as u16),
            (tags::BITS_ALLOCATED, 16),
            (tags::BITS_STORED, 12),
            (tags::HIGH_BIT, 11),
            (tags::PIXEL_REPRESENTATION, 0),
        ] {
            o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
        }
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::from(px),
        ));
        out.push(crate::results::into_file(o)?);
    }
    Ok(out)
}
