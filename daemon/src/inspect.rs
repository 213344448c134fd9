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
