//! tract: pure Rust, always available, several times slower than ONNX Runtime;
//! the fallback when no libonnxruntime loads, and a cross-check of it.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::{Backend, ModelIo};

type Plan = Arc<TypedRunnableModel>;

pub struct TractBackend {
    plan: Plan,
    io: ModelIo,
}

impl TractBackend {
    pub fn load(onnx: &[u8], io: ModelIo, threads: usize) -> Result<TractBackend> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        if threads > 1 {
            tract_linalg::multithread::set_default_executor(
                tract_linalg::multithread::Executor::multithread(threads),
            );
        }
        let model = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(onnx))
            .map_err(|e| anyhow!("tract cannot load the model: {e}"))?;
        // The declared shapes must agree with the manifest before we pin them.
        let declared = |fact: &InferenceFact| -> Vec<i64> {
            match fact.shape.concretize() {
                Some(dims) => dims.iter().map(|d| d.to_i64().unwrap_or(-1)).collect(),
                None => vec![-1; 5],
            }
        };
        let inp = model.input_fact(0).map_err(|e| anyhow!("{e}"))?;
        super::check_shape(&declared(inp), io.input_shape(), "input")?;
        let out = model.output_fact(0).map_err(|e| anyhow!("{e}"))?;
        if out.shape.rank().concretize().is_some() {
            super::check_shape(&declared(out), io.output_shape(), "output")?;
        }
        let plan = model
            .with_input_fact(0, f32::fact(io.input_shape()).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| {
                anyhow!("tract cannot load the model (optimising it for the patch shape): {e}")
            })?;
        Ok(TractBackend { plan, io })
    }
}

impl Backend for TractBackend {
    fn name(&self) -> String {
        "tract".into()
    }

    fn run(&mut self, patch: &[f32]) -> Result<Vec<f32>> {
        let t = Tensor::from_shape(&self.io.input_shape(), patch).map_err(|e| anyhow!("{e}"))?;
        let out = self
            .plan
            .run(tvec!(t.into()))
            .map_err(|e| anyhow!("tract: {e}"))?;
        let v = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| anyhow!("tract output: {e}"))?;
        Ok(v.iter().copied().collect())
    }
}
