//! ONNX Runtime, loaded at run time (ort's load-dynamic): the wheel's CPU build
//! here, an onnxruntime with the CUDA and TensorRT execution providers on the Jetson.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use ort::session::Session;
use ort::value::Tensor;

use super::{Backend, ModelIo};
use crate::config::{ExecutionProvider, InferenceConfig};

/// The library is loaded once per process; a failure is remembered (and reported
/// the same way at each model load) rather than retried.
static ENV: OnceLock<std::result::Result<(PathBuf, ort::environment::Environment), String>> =
    OnceLock::new();

/// Which libonnxruntime to load: the config's, else $ORT_DYLIB_PATH, else the
/// dynamic loader's search path.
pub fn library_path(cfg: &InferenceConfig) -> PathBuf {
    cfg.ort_library
        .clone()
        .or_else(|| {
            std::env::var_os("ORT_DYLIB_PATH")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("libonnxruntime.so"))
}

fn environment(lib: &Path) -> Result<&'static ort::environment::Environment> {
    let r = ENV.get_or_init(|| {
        let builder = ort::init_from(lib).map_err(|e| format!("cannot load ONNX Runtime: {e}"))?;
        let env = builder
            .with_name("scanside")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime: {e}"))?;
        Ok((lib.to_path_buf(), env))
    });
    match r {
        Ok((loaded, env)) if loaded == lib => Ok(env),
        Ok((loaded, _)) => bail!(
            "ONNX Runtime is already loaded from {}; {} would need a restart",
            loaded.display(),
            lib.display()
        ),
        Err(e) => Err(anyhow!("{e}")),
    }
}

/// The TensorRT engine cache directory for one model on one TensorRT and GPU: an
/// engine built for another model, TensorRT version or GPU is never picked up.
pub fn engine_cache_dir(root: &Path, model_sha256: &str, trt_version: &str, gpu: &str) -> PathBuf {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(48)
            .collect()
    };
    root.join(format!(
        "{}-trt{}-{}",
        &model_sha256[..model_sha256.len().min(16)],
        clean(trt_version),
        clean(gpu)
    ))
}

/// TensorRT's version from libnvinfer (getInferLibVersion), when it is installed.
fn tensorrt_version() -> Option<String> {
    for name in ["libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"] {
        // SAFETY: loading NVIDIA's library runs its initialisers, as ONNX Runtime's
        // TensorRT provider would do anyway.
        if let Ok(lib) = unsafe { libloading::Library::new(name) } {
            let f: libloading::Symbol<unsafe extern "C" fn() -> i32> =
                unsafe { lib.get(b"getInferLibVersion") }.ok()?;
            let v = unsafe { f() };
            return Some(format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100));
        }
    }
    None
}

/// The GPU this runs on: the Jetson module's device-tree model, else the first
/// NVIDIA GPU the driver lists.
fn gpu_name() -> String {
    if let Ok(m) = std::fs::read_to_string("/proc/device-tree/model") {
        return m.trim_end_matches('\0').trim().to_string();
    }
    if let Ok(rd) = std::fs::read_dir("/proc/driver/nvidia/gpus") {
        for e in rd.flatten() {
            if let Ok(info) = std::fs::read_to_string(e.path().join("information")) {
                if let Some(l) = info.lines().find(|l| l.starts_with("Model:")) {
                    return l["Model:".len()..].trim().to_string();
                }
            }
        }
    }
    "unknown-gpu".into()
}

pub struct OrtBackend {
    session: Session,
    io: ModelIo,
    provider: String,
}

impl OrtBackend {
    pub fn load(
        cfg: &InferenceConfig,
        onnx: &[u8],
        sha256: &str,
        io: ModelIo,
        cache_root: &Path,
    ) -> Result<OrtBackend> {
        let env = environment(&library_path(cfg))?;
        let e = |e: ort::Error<ort::session::builder::SessionBuilder>| anyhow!("{e}");
        let mut b = Session::builder(env).map_err(|e| anyhow!("{e}"))?;
        if cfg.threads > 0 {
            b = b.with_intra_threads(cfg.threads).map_err(e)?;
        }
        let strict = !cfg.ep_fallback;
        let provider = match cfg.execution_provider {
            ExecutionProvider::Cpu => "cpu".to_string(),
            ExecutionProvider::Cuda => {
                let mut ep = ort::ep::CUDA::default().build();
                if strict {
                    ep = ep.error_on_failure();
                }
                b = b
                    .with_execution_providers([ep])
                    .map_err(|err| anyhow!("CUDA execution provider did not load: {err}"))?;
                "cuda".into()
            }
            ExecutionProvider::Tensorrt => {
                let trt = tensorrt_version().unwrap_or_else(|| "unknown".into());
                let dir = engine_cache_dir(cache_root, sha256, &trt, &gpu_name());
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create the engine cache {}", dir.display()))?;
                let d = dir.to_string_lossy().into_owned();
                let mut ep = ort::ep::TensorRT::default()
                    .with_fp16(cfg.fp16)
                    .with_engine_cache(true)
                    .with_engine_cache_path(&d)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&d)
                    .build();
                // Nodes TensorRT cannot take run on CUDA, not silently on the CPU.
                let mut cuda = ort::ep::CUDA::default().build();
                if strict {
                    ep = ep.error_on_failure();
                    cuda = cuda.error_on_failure();
                }
                b = b
                    .with_execution_providers([ep, cuda])
                    .map_err(|err| anyhow!("TensorRT execution provider did not load: {err}"))?;
                format!("tensorrt (TensorRT {trt}, cache {})", dir.display())
            }
        };
        let session = b
            .commit_from_memory(onnx)
            .map_err(|err| anyhow!("ONNX Runtime cannot load the model: {err}"))?;
        let check = |outlets: &[ort::value::Outlet],
                     name: &str,
                     want: [usize; 5],
                     what: &str|
         -> Result<()> {
            let o = outlets
                .iter()
                .find(|o| o.name() == name)
                .ok_or_else(|| anyhow!("the model has no {what} named {name:?}"))?;
            let shape = o
                .dtype()
                .tensor_shape()
                .ok_or_else(|| anyhow!("{what} {name:?} is not a tensor"))?;
            let dims: Vec<i64> = shape.iter().copied().collect();
            super::check_shape(&dims, want, what)
        };
        check(session.inputs(), &io.input_name, io.input_shape(), "input")?;
        check(
            session.outputs(),
            &io.output_name,
            io.output_shape(),
            "output",
        )?;
        Ok(OrtBackend {
            session,
            io,
            provider,
        })
    }
}

impl Backend for OrtBackend {
    fn name(&self) -> String {
        format!("ort ({})", self.provider)
    }

    fn run(&mut self, patch: &[f32]) -> Result<Vec<f32>> {
        let shape: Vec<i64> = self.io.input_shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::from_array((shape, patch.to_vec())).map_err(|e| anyhow!("{e}"))?;
        let out = self
            .session
            .run(ort::inputs![self.io.input_name.as_str() => t])
            .map_err(|e| anyhow!("ONNX Runtime: {e}"))?;
        let (_, data) = out[self.io.output_name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("ONNX Runtime output: {e}"))?;
        Ok(data.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_caches_are_keyed_by_model_tensorrt_and_gpu() {
        let root = Path::new("/var/lib/scanside/engine-cache");
        let a = engine_cache_dir(
            root,
            "ab12cd34ef56ab78cd90",
            "10.3.0",
            "NVIDIA Jetson AGX Orin",
        );
        assert_eq!(
            a,
            root.join("ab12cd34ef56ab78-trt10.3.0-NVIDIA_Jetson_AGX_Orin")
        );
        assert_ne!(
            a,
            engine_cache_dir(
                root,
                "ff12cd34ef56ab78cd90",
                "10.3.0",
                "NVIDIA Jetson AGX Orin"
            )
        );
        assert_ne!(
            a,
            engine_cache_dir(
                root,
                "ab12cd34ef56ab78cd90",
                "8.6.2",
                "NVIDIA Jetson AGX Orin"
            )
        );
        assert_ne!(
            a,
            engine_cache_dir(root, "ab12cd34ef56ab78cd90", "10.3.0", "Orin Nano")
        );
        // Nothing from a device name escapes the cache root.
        let b = engine_cache_dir(root, "ab", "../..", "/etc/passwd");
        assert_eq!(b.parent(), Some(root));
    }
}
