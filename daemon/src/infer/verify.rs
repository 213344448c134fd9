//! `scanside model verify` and `scanside selftest`: load a bundle with a backend,
//! run its golden case, compare with the manifest. What the OTA self-test will
//! call before a switch; the tests also use its outputs to compare backends.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use super::{window, Bundle, Model};
use crate::config::InferenceConfig;

/// Voxels (as a fraction of the golden input) by which a label count may differ
/// from the manifest's: different CPUs and backends round differently at near ties.
pub const GOLDEN_TOLERANCE: f64 = 0.001;

#[derive(Default)]
pub struct Outputs {
    /// Blended logits of the golden case (classes x shape), f32 .npy
    pub logits: Option<PathBuf>,
    /// Labels of the golden case, u8 .npy
    pub labels: Option<PathBuf>,
    /// Logits of one patch: the golden input's first patch (zero-padded), f32 .npy
    pub patch_logits: Option<PathBuf>,
}

/// The golden case's outcome: label counts against the manifest's.
pub struct Golden {
    pub logits: Vec<f32>,
    pub labels: Vec<u8>,
    pub counts: Vec<u64>,
    pub ok: bool,
    pub patches: usize,
    pub infer_ms: u64,
}

/// Runs the bundle's golden input through the model and compares the label
/// counts with the manifest's (within GOLDEN_TOLERANCE).
pub fn run_golden(model: &mut Model) -> Result<Golden> {
    let man = &model.bundle.manifest;
    let (shape, classes, expected) = (
        man.golden.shape,
        man.classes(),
        man.golden.voxel_counts.clone(),
    );
    let t1 = Instant::now();
    let (logits, patches) = model.logits(&model.bundle.golden_input.clone(), shape)?;
    let infer_ms = t1.elapsed().as_millis() as u64;
    let labels = window::argmax(&logits, classes);
    let mut counts = vec![0u64; classes];
    for &l in &labels {
        counts[l as usize] += 1;
    }
    let n = labels.len() as f64;
    let ok = counts
        .iter()
        .zip(&expected)
        .all(|(&a, &b)| (a as f64 - b as f64).abs() <= GOLDEN_TOLERANCE * n);
    Ok(Golden {
        logits,
        labels,
        counts,
        ok,
        patches,
        infer_ms,
    })
}

pub fn verify(
    dir: Option<&Path>,
    cfg: &InferenceConfig,
    cache_root: &Path,
    out: &Outputs,
) -> Result<(serde_json::Value, bool)> {
    let bundle = match dir {
        Some(d) => Bundle::open(d)?,
        None => Bundle::builtin()?,
    };
    let t0 = Instant::now();
    let mut model = Model::with_bundle(bundle, cfg, cache_root)?;
    let load_ms = t0.elapsed().as_millis() as u64;
    let man = model.bundle.manifest.clone();
    let shape = man.golden.shape;
    let Golden {
        logits,
        labels,
        counts,
        ok,
        patches,
        infer_ms,
    } = run_golden(&mut model)?;
    let d = [man.classes(), shape[0], shape[1], shape[2]];
    if let Some(p) = &out.logits {
        write_npy(p, "<f4", &d, &f32_bytes(&logits))?;
    }
    if let Some(p) = &out.labels {
        write_npy(p, "|u1", &shape, &labels)?;
    }
    if let Some(p) = &out.patch_logits {
        let patch = man.input.patch;
        let mut x = vec![0f32; patch.iter().product()];
        for z in 0..patch[0].min(shape[0]) {
            for y in 0..patch[1].min(shape[1]) {
                for k in 0..patch[2].min(shape[2]) {
                    x[(z * patch[1] + y) * patch[2] + k] =
                        model.bundle.golden_input[(z * shape[1] + y) * shape[2] + k];
                }
            }
        }
        let l = model.backend.run(&x)?;
        write_npy(
            p,
            "<f4",
            &[1, man.classes(), patch[0], patch[1], patch[2]],
            &f32_bytes(&l),
        )?;
    }
    let v = json!({
        "model": man.name,
        "version": man.version,
        "sha256": model.bundle.sha256,
        "backend": model.backend.name(),
        "golden_shape": shape,
        "voxel_counts": counts,
        "expected_voxel_counts": man.golden.voxel_counts,
        "tolerance_fraction": GOLDEN_TOLERANCE,
        "golden_ok": ok,
        "patches": patches,
        "load_ms": load_ms,
        "infer_ms": infer_ms,
        "evaluation": man.evaluation,
    });
    Ok((v, ok))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}{}), }}",
        dims.join(", "),
        if shape.len() == 1 { "," } else { "" }
    );
    // Header padded with spaces to a multiple of 64 bytes, ending in a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    std::fs::write(path, b).with_context(|| format!("cannot write {}", path.display()))
}
