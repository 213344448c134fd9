//! `scanside inspect`: read a file the way the daemon does and, on request, decode
//! its pixel data with the decoder the pipeline uses.

use std::path::Path;

use anyhow::{anyhow, Result};
use dicom_pixeldata::PixelDecoder;
use serde_json::json;

pub fn inspect(path: &Path, decode: bool) -> Result<serde_json::Value> {
    let h = crate::store::parse_header(path)?;
    let mut v = json!({
        "sop_class_uid": h.sop_class_uid,
        "sop_instance_uid": h.sop_instance_uid,
        "study_instance_uid": h.study_uid,
        "series_instance_uid": h.series_uid,
        "transfer_syntax": h.transfer_syntax,
        "modality": h.modality,
        "number_of_frames": h.number_of_frames,
        "expected_in_series": h.expected_in_series,
    });
    if decode {
        let obj = dicom_object::open_file(path).map_err(|e| anyhow!("{e}"))?;
        let px = obj
            .decode_pixel_data()
            .map_err(|e| anyhow!("cannot decode pixel data: {e}"))?;
        let data = px.data();
        v["decoded"] = json!({
            "rows": px.rows(),
            "columns": px.columns(),
            "frames": px.number_of_frames(),
            "samples_per_pixel": px.samples_per_pixel(),
            "bits_allocated": px.bits_allocated(),
            "bytes": data.len(),
            "nonzero_bytes": data.iter().filter(|&&b| b != 0).count(),
        });
    }
    Ok(v)
}

/// `scanside gate`: the daemon's gate over files given by the operator (folders
/// are read recursively). All files must belong to one series. No history.
pub fn gate(
    paths: &[std::path::PathBuf],
    cfg: &crate::config::GateConfig,
) -> Result<(serde_json::Value, bool)> {
    let mut files = Vec::new();
    let mut stack: Vec<std::path::PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        } else {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(anyhow!("no files given"));
    }
    files.sort();
    let series: std::collections::BTreeSet<String> = files
        .iter()
        .map(|f| crate::store::parse_header(f).map(|h| h.series_uid))
        .collect::<Result<_>>()?;
    if series.len() != 1 {
        return Err(anyhow!(
            "the files belong to {} series; give one series",
            series.len()
        ));
    }
    let t0 = std::time::Instant::now();
    let d = crate::gate::run_series(&files, cfg, |_| Ok(None))?.decision;
    let mut v = serde_json::to_value(&d)?;
    v["instances"] = json!(files.len());
    v["elapsed_ms"] = json!(t0.elapsed().as_millis() as u64);
    Ok((v, d.passed))
}
