//! Inference: a model bundle (manifest + ONNX) run by a backend (ONNX Runtime or
//! tract) over a series volume: resample to the model grid, normalise, sliding
//! window with Gaussian blending, logits back on the series grid, argmax.

pub mod manifest;
pub mod ort_backend;
#[cfg(feature = "tract")]
pub mod tract_backend;
pub mod verify;
pub mod window;

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::config::{BackendChoice, InferenceConfig};
use crate::volume::resample::{self, Grid, Interp};
use crate::volume::Volume;
pub use manifest::Bundle;

/// One patch in, its logits out. Shapes are fixed by the manifest: input
/// [1, channels, patch], output [1, classes, patch].
pub trait Backend: Send {
    fn name(&self) -> String;
    fn run(&mut self, patch: &[f32]) -> Result<Vec<f32>>;
}

#[derive(Debug, Clone)]
pub struct ModelIo {
    pub input_name: String,
    pub output_name: String,
    pub channels: usize,
    pub classes: usize,
    pub patch: [usize; 3],
}

impl ModelIo {
    pub fn of(b: &Bundle) -> ModelIo {
        let m = &b.manifest;
        ModelIo {
            input_name: m.input.input_name.clone(),
            output_name: m.input.output_name.clone(),
            channels: m.input.channels.len(),
            classes: m.classes(),
            patch: m.input.patch,
        }
    }
    pub fn input_shape(&self) -> [usize; 5] {
        [
            1,
            self.channels,
            self.patch[0],
            self.patch[1],
            self.patch[2],
        ]
    }
    pub fn output_shape(&self) -> [usize; 5] {
        [1, self.classes, self.patch[0], self.patch[1], self.patch[2]]
    }
}

/// A declared tensor shape (-1 or 0 = dynamic) against what the manifest says.
pub fn check_shape(declared: &[i64], want: [usize; 5], what: &str) -> Result<()> {
    let ok = declared.len() == 5
        && declared
            .iter()
            .zip(want)
            .all(|(&d, w)| d <= 0 || d as usize == w);
    if !ok {
        bail!(
            "the model's {what} shape {declared:?} disagrees with the manifest, which implies {want:?} (1, channels or classes, patch)"
        );
    }
    Ok(())
}

/// The manifest's "percentile" normalisation: nearest-rank low and high
/// percentiles of all voxels map to 0 and 1.
pub fn normalise(data: &mut [f32], low: f64, high: f64) {
    if data.is_empty() {
        return;
    }
    let mut sorted: Vec<f32> = data.to_vec();
    let rank = |q: f64| ((q / 100.0) * (data.len() - 1) as f64).round() as usize;
    let (rl, rh) = (rank(low), rank(high));
    let lo = *sorted.select_nth_unstable_by(rl, f32::total_cmp).1;
    let hi = *sorted.select_nth_unstable_by(rh, f32::total_cmp).1;
    let scale = 1.0 / (hi - lo).max(1e-6);
    for v in data.iter_mut() {
        *v = (*v - lo) * scale;
    }
}

/// A loaded model: the bundle and the backend that runs it.
pub struct Model {
    pub bundle: Bundle,
    pub backend: Box<dyn Backend>,
    pub overlap: f32,
    pub mirror: bool,
}

/// Labels on the series grid and what it took.
pub struct Segmentation {
    pub labels: Vec<u8>,
    pub grid: Grid,
    pub model_grid: Grid,
    pub resample_ms: u64,
    pub infer_ms: u64,
    pub post_ms: u64,
    pub patches: usize,
}

impl Model {
    /// Loads the configured bundle (the built-in one when none is set) with the
    /// configured backend. Every failure is an error naming what is at fault.
    pub fn load(cfg: &InferenceConfig, cache_root: &Path) -> Result<Model> {
        let bundle = match &cfg.model_dir {
            Some(d) => Bundle::open(d)?,
            None => Bundle::builtin()?,
        };
        Self::with_bundle(bundle, cfg, cache_root)
    }
}

fn tract(bundle: &Bundle, io: ModelIo, threads: usize) -> Result<Box<dyn Backend>> {
    #[cfg(feature = "tract")]
    {
        Ok(Box::new(
            tract_backend::TractBackend::load(&bundle.onnx, io, threads)
                .context("backend tract")?,
        ))
    }
    #[cfg(not(feature = "tract"))]
    {
        let _ = (bundle, io, threads);
        anyhow::bail!("backend tract: this build has no tract (built without the `tract` feature)")
    }
}

impl Model {
    pub fn with_bundle(bundle: Bundle, cfg: &InferenceConfig, cache_root: &Path) -> Result<Model> {
        let io = ModelIo::of(&bundle);
        let backend: Box<dyn Backend> = match cfg.backend {
            BackendChoice::Ort => Box::new(
                ort_backend::OrtBackend::load(cfg, &bundle.onnx, &bundle.sha256, io, cache_root)
                    .context("backend ort")?,
            ),
            BackendChoice::Tract => tract(&bundle, io, cfg.threads)?,
            BackendChoice::Auto => match ort_backend::OrtBackend::load(
                cfg,
                &bundle.onnx,
                &bundle.sha256,
                io.clone(),
                cache_root,
            ) {
                Ok(b) => Box::new(b),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "ONNX Runtime unavailable; using tract (backend = auto)");
                    tract(&bundle, io, cfg.threads)?
                }
            },
        };
        let overlap = cfg.overlap.unwrap_or(bundle.manifest.inference.overlap);
        Ok(Model {
            bundle,
            backend,
            overlap,
            mirror: cfg.mirror_tta,
        })
    }

    pub fn describe(&self) -> String {
        let m = &self.bundle.manifest;
        format!("{} {} on {}", m.name, m.version, self.backend.name())
    }

    fn window(&self) -> window::Window {
        window::Window {
            patch: self.bundle.manifest.input.patch,
            overlap: self.overlap,
            classes: self.bundle.manifest.classes(),
            mirror: self.mirror,
        }
    }

    /// Logits (classes x voxels) of an already normalised image on the model grid.
    pub fn logits(&mut self, image: &[f32], dims: [usize; 3]) -> Result<(Vec<f32>, usize)> {
        let w = self.window();
        let mut patches = 0;
        let backend = &mut self.backend;
        let out = w.run(image, 1, dims, |p| {
            patches += 1;
            backend.run(p)
        })?;
        Ok((out, patches))
    }

    /// Segments one series volume; labels come back on its own grid.
    pub fn segment(&mut self, vol: &Volume) -> Result<Segmentation> {
        let m = &self.bundle.manifest;
        let t0 = Instant::now();
        let grid = Grid::of(vol);
        let model_grid = grid.aligned_cover(m.input.spacing_mm);
        if model_grid.voxels() > 64 << 20 {
            bail!(
                "the series covers {:?} voxels on the model grid; too large",
                model_grid.dims
            );
        }
        let smooth = resample::antialias(&vol.data, &grid, model_grid.spacing);
        let mut image = resample::resample(&smooth, &grid, &model_grid, Interp::Linear, 0.0);
        drop(smooth);
        normalise(&mut image, m.normalisation.low, m.normalisation.high);
        let t1 = Instant::now();
        let classes = m.classes();
        let (logits, patches) = self.logits(&image, model_grid.dims)?;
        drop(image);
        let t2 = Instant::now();
        let labels = resample::resample_argmax(&logits, classes, &model_grid, &grid);
        let t3 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_millis() as u64;
        Ok(Segmentation {
            labels,
            grid,
            model_grid,
            resample_ms: ms(t0, t1),
            infer_ms: ms(t1, t2),
            post_ms: ms(t2, t3),
            patches,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_normalisation_maps_the_ranks_to_0_and_1() {
        let mut v: Vec<f32> = (0..1001).map(|i| i as f32 * 2.0).collect();
        normalise(&mut v, 0.5, 99.5);
        // ranks round(0.005 * 1000) = 5 and 995: values 10 and 1990
        assert!((v[5]).abs() < 1e-6 && (v[995] - 1.0).abs() < 1e-6);
        assert!(v[0] < 0.0 && v[1000] > 1.0);
    }

    #[test]
    fn shapes_are_checked_against_the_manifest() {
        assert!(check_shape(&[1, 1, 64, 64, 64], [1, 1, 64, 64, 64], "input").is_ok());
        assert!(check_shape(&[-1, 1, 64, 64, 64], [1, 1, 64, 64, 64], "input").is_ok());
        let e = check_shape(&[1, 1, 32, 32, 32], [1, 1, 64, 64, 64], "input").unwrap_err();
        assert!(e.to_string().contains("disagrees with the manifest"), "{e}");
        assert!(check_shape(&[1, 64, 64, 64], [1, 1, 64, 64, 64], "input").is_err());
    }
}

/// The daemon's current model, or why there is none. The pipeline holds the lock
/// while it segments; a model switch waits for the job in flight.
#[derive(Default)]
pub struct ModelSlot {
    model: std::sync::Mutex<Option<Model>>,
    status: std::sync::RwLock<ModelStatus>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModelStatus {
    pub loaded: bool,
    pub loading: bool,
    pub name: Option<String>,
    pub version: Option<String>,
    pub sha256: Option<String>,
    pub backend: Option<String>,
    pub error: Option<String>,
    pub load_ms: Option<u64>,
}

impl ModelSlot {
    pub fn status(&self) -> ModelStatus {
        self.status.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Loads the configured model and, when it loads, puts it in place. A failure
    /// leaves the previous model (if any) in service and is reported.
    pub fn load(&self, cfg: &InferenceConfig, cache_root: &Path) -> Result<()> {
        if let Ok(mut s) = self.status.write() {
            s.loading = true;
        }
        let t = Instant::now();
        let r = Model::load(cfg, cache_root);
        let mut s = self
            .status
            .write()
            .map_err(|_| anyhow::anyhow!("model status poisoned"))?;
        s.loading = false;
        match r {
            Ok(m) => {
                let man = &m.bundle.manifest;
                *s = ModelStatus {
                    loaded: true,
                    loading: false,
                    name: Some(man.name.clone()),
                    version: Some(man.version.clone()),
                    sha256: Some(m.bundle.sha256.clone()),
                    backend: Some(m.backend.name()),
                    error: None,
                    load_ms: Some(t.elapsed().as_millis() as u64),
                };
                tracing::info!(model = %m.describe(), ms = t.elapsed().as_millis() as u64, "model loaded");
                *self
                    .model
                    .lock()
                    .map_err(|_| anyhow::anyhow!("model lock poisoned"))? = Some(m);
                Ok(())
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!(error = %msg, "model not loaded; series wait in state gated");
                s.error = Some(msg);
                Err(e)
            }
        }
    }

    /// Runs `f` with the model, or returns None when none is loaded.
    pub fn with<R>(&self, f: impl FnOnce(&mut Model) -> R) -> Option<R> {
        let mut g = self.model.lock().ok()?;
        g.as_mut().map(f)
    }
}
