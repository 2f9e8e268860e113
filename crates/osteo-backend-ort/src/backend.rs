//! `OrtBackend`: serves a model's `model.onnx` on ONNX Runtime: predict from `logits`, Grad-CAM
//! from the exported `activation` and `gradcam_alpha` outputs (no autograd needed).

use crate::library::environment;
use ort::session::{
    OutputSelector, RunOptions, Session, SessionInputValue, builder::GraphOptimizationLevel,
};
use ort::value::TensorRef;
use osteo_core::{
    ArchSpec, Backend, BackendError, BackendInfo, Batch, Device, Explanation, LoadBackend,
    ModelArtifacts,
};
use osteo_onnx::names;
use std::borrow::Cow;

/// Engine options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrtOptions {
    /// Threads ONNX Runtime uses inside one operator; 0 lets ONNX Runtime choose (one per
    /// physical core).
    pub intra_threads: usize,
    /// Whether the operator threads spin for a moment after each call before they sleep.
    /// Spinning trims microseconds from back-to-back calls on an otherwise idle machine; in a
    /// server it takes cores from the gRPC work and from other models' calls.
    pub spinning: bool,
}

impl Default for OrtOptions {
    /// ONNX Runtime's own defaults: one thread per physical core, spinning.
    fn default() -> Self {
        Self {
            intra_threads: 0,
            spinning: true,
        }
    }
}

/// A model loaded on ONNX Runtime.
pub struct OrtBackend {
    session: Session,
    arch: ArchSpec,
    device: Device,
    version: &'static str,
}

impl std::fmt::Debug for OrtBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtBackend")
            .field("model", &self.arch.kind)
            .field("device", &self.device)
            .field("version", &self.version)
            .finish()
    }
}

fn runtime(e: impl std::fmt::Display) -> BackendError {
    BackendError::Runtime(e.to_string())
}

fn load_error(e: impl std::fmt::Display) -> BackendError {
    BackendError::Load(e.to_string())
}

#[cfg(feature = "cuda")]
fn providers(device: Device) -> Result<Vec<ort::ep::ExecutionProviderDispatch>, BackendError> {
    Ok(match device {
        Device::Cpu => Vec::new(),
        Device::Cuda(i) => {
            let id = i32::try_from(i)
                .map_err(|_| BackendError::Device(format!("cuda:{i}: no such device")))?;
            vec![
                // TF32 off: the GPU must agree with the CPU backends at the parity tolerances.
                ort::ep::CUDA::default()
                    .with_device_id(id)
                    .with_tf32(false)
                    .build()
                    .error_on_failure(),
            ]
        }
    })
}

#[cfg(not(feature = "cuda"))]
fn providers(device: Device) -> Result<Vec<ort::ep::ExecutionProviderDispatch>, BackendError> {
    match device {
        Device::Cpu => Ok(Vec::new()),
        Device::Cuda(i) => Err(BackendError::Device(format!(
            "cuda:{i} requested but this build of the ONNX Runtime backend has no CUDA support (build with --features cuda)"
        ))),
    }
}

impl OrtBackend {
    /// Loads `model.onnx` of a model directory with explicit engine options. Refuses a file
    /// exported from other weights than the directory's `weights.safetensors`.
    pub fn load_with(
        artifacts: &ModelArtifacts,
        device: Device,
        options: OrtOptions,
    ) -> Result<Self, BackendError> {
        let arch = artifacts.manifest.arch.clone();
        arch.validate().map_err(load_error)?;
        artifacts.verify_weights().map_err(load_error)?;
        osteo_onnx::check_digest(artifacts).map_err(load_error)?;
        let (env, version) = environment()?;
        let path = artifacts.onnx_path();
        let builder = Session::builder(env)
            .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::All)?))
            .and_then(|b| Ok(b.with_intra_threads(options.intra_threads)?))
            .and_then(|b| Ok(b.with_intra_op_spinning(options.spinning)?))
            .map_err(load_error)?;
        let mut builder = builder
            .with_execution_providers(providers(device)?)
            .map_err(|e| BackendError::Device(format!("{device}: {e}")))?;
        let session = builder
            .commit_from_file(&path)
            .map_err(|e| BackendError::Load(format!("{}: {e}", path.display())))?;
        let mut want = vec![names::LOGITS];
        if arch.image.is_some() {
            want.extend([names::ACTIVATION, names::ALPHA]);
        }
        for name in want {
            if !session.outputs().iter().any(|o| o.name() == name) {
                return Err(BackendError::Load(format!(
                    "{} has no output {name:?}; re-export it with `osteo export-onnx`",
                    path.display()
                )));
            }
        }
        Ok(Self {
            session,
            arch,
            device,
            version,
        })
    }

    /// Runs the graph on a checked batch and returns the requested outputs (and only those), in
    /// the order asked.
    fn run(
        &mut self,
        batch: &Batch,
        outputs: &[&str],
    ) -> Result<Vec<osteo_core::Tensor>, BackendError> {
        batch.check(&self.arch)?;
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(2);
        for (name, used, tensor) in [
            (
                names::IMAGES,
                self.arch.image.is_some(),
                batch.images.as_ref(),
            ),
            (
                names::TABULAR,
                self.arch.tabular.is_some(),
                batch.tabular.as_ref(),
            ),
        ] {
            if let (true, Some(t)) = (used, tensor) {
                let shape: Vec<i64> = t.shape().iter().map(|d| *d as i64).collect();
                let value = TensorRef::from_array_view((shape, t.data())).map_err(runtime)?;
                inputs.push((Cow::Borrowed(name), value.into()));
            }
        }
        // Only the outputs asked for: predict skips the Grad-CAM outputs' copies (and whatever
        // of their subgraph ONNX Runtime can prune).
        let selector = outputs
            .iter()
            .fold(OutputSelector::no_default(), |sel, name| sel.with(*name));
        let options = RunOptions::new().map_err(runtime)?.with_outputs(selector);
        let results = self
            .session
            .run_with_options(inputs, &options)
            .map_err(runtime)?;
        outputs
            .iter()
            .map(|name| {
                let value = results
                    .get(name)
                    .ok_or_else(|| runtime(format!("the graph returned no {name}")))?;
                let (shape, data) = value.try_extract_tensor::<f32>().map_err(runtime)?;
                let shape = shape.iter().map(|d| *d as usize).collect();
                osteo_core::Tensor::new(shape, data.to_vec()).map_err(runtime)
            })
            .collect()
    }
}

impl LoadBackend for OrtBackend {
    fn load(artifacts: &ModelArtifacts, device: Device) -> Result<Self, BackendError> {
        Self::load_with(artifacts, device, OrtOptions::default())
    }
}

impl Backend for OrtBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "ort".into(),
            device: self.device,
            library_version: self.version.into(),
        }
    }

    fn predict(&mut self, batch: &Batch) -> Result<osteo_core::Tensor, BackendError> {
        let mut out = self.run(batch, &[names::LOGITS])?;
        Ok(out.remove(0))
    }

    fn explain(&mut self, sample: &Batch) -> Result<Explanation, BackendError> {
        sample.check_explain(&self.arch)?;
        let k = self.arch.image.as_ref().map(|img| img.embedding());
        let classes = self.arch.head.classes;
        let features = self.arch.tabular.as_ref().map(|t| t.in_features);
        let mut wanted = vec![names::LOGITS];
        if k.is_some() {
            wanted.extend([names::ACTIVATION, names::ALPHA]);
        }
        if features.is_some() {
            wanted.push(names::TABULAR_GRADIENT);
        }
        let mut out = self.run(sample, &wanted)?;
        let tabular_gradients = match features {
            Some(f) => {
                let t = out
                    .pop()
                    .ok_or_else(|| runtime("no tabular gradient output"))?;
                if t.shape() != [1, classes, f] {
                    return Err(runtime(format!(
                        "unexpected tabular gradient shape {:?}; re-export model.onnx with \
                         osteo export-onnx",
                        t.shape()
                    )));
                }
                t.data().chunks(f.max(1)).map(<[f32]>::to_vec).collect()
            }
            None => Vec::new(),
        };
        let (activation, alphas) = match k {
            Some(k) => {
                let alpha = out.remove(2);
                let a = out.remove(1);
                if alpha.shape() != [1, classes, k] || a.shape().len() != 4 {
                    return Err(runtime(format!(
                        "unexpected Grad-CAM outputs: activation {:?}, alpha {:?}",
                        a.shape(),
                        alpha.shape()
                    )));
                }
                let shape = a.shape()[1..].to_vec();
                let activation = osteo_core::Tensor::new(shape, a.into_data()).map_err(runtime)?;
                let alphas = alpha.data().chunks(k.max(1)).map(<[f32]>::to_vec).collect();
                (Some(activation), alphas)
            }
            None => (None, Vec::new()),
        };
        let logits = out.remove(0);
        if logits.shape() != [1, classes] {
            return Err(runtime(format!(
                "unexpected logits shape {:?}",
                logits.shape()
            )));
        }
        Ok(Explanation {
            logits: logits.into_data(),
            activation,
            alphas,
            tabular_gradients,
        })
    }
}
