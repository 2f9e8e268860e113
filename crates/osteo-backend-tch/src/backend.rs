//! `TchBackend`: loads `weights.safetensors` into libtorch and serves predict and Grad-CAM (by
//! autograd through the head, as the candle backend does).

use crate::cuda;
use crate::network::Network;
use osteo_core::{
    Backend, BackendError, BackendInfo, Batch, Device, Explanation, LoadBackend, ModelArtifacts,
};
use safetensors::{Dtype, SafeTensors};
use tch::{Kind, TchError, Tensor};

/// The libtorch release this backend is built against (tch 0.24).
pub const LIBTORCH_RELEASE: &str = "2.11.0";

/// Engine options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TchOptions {
    /// libtorch's intra-op threads; process-wide, set when a model loads (0 = libtorch's
    /// default, one per core).
    pub intra_threads: usize,
}

/// A model loaded on libtorch.
pub struct TchBackend {
    network: Network,
    device: Device,
    torch_device: tch::Device,
}

impl std::fmt::Debug for TchBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TchBackend")
            .field("model", &self.network.arch().kind)
            .field("device", &self.device)
            .finish()
    }
}

fn runtime(e: impl std::fmt::Display) -> BackendError {
    BackendError::Runtime(e.to_string())
}

/// Checks names, shapes and element types of the weights file against the architecture.
fn check_weights(artifacts: &ModelArtifacts) -> Result<(), BackendError> {
    let path = artifacts.weights_path();
    let load = |e: String| BackendError::Load(format!("{}: {e}", path.display()));
    let bytes = std::fs::read(&path).map_err(|e| load(e.to_string()))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| load(e.to_string()))?;
    let views = tensors.tensors();
    artifacts
        .manifest
        .arch
        .check_parameters(views.iter().map(|(n, v)| (n.as_str(), v.shape())))
        .map_err(|e| load(e.to_string()))?;
    match views.iter().find(|(_, v)| v.dtype() != Dtype::F32) {
        Some((name, v)) => Err(load(format!(
            "parameter {name} is {:?}; the backend loads f32 weights",
            v.dtype()
        ))),
        None => Ok(()),
    }
}

impl TchBackend {
    /// Loads a model directory's weights onto `device` with explicit engine options.
    pub fn load_with(
        artifacts: &ModelArtifacts,
        device: Device,
        options: TchOptions,
    ) -> Result<Self, BackendError> {
        let arch = &artifacts.manifest.arch;
        arch.validate()
            .map_err(|e| BackendError::Load(e.to_string()))?;
        artifacts
            .verify_weights()
            .map_err(|e| BackendError::Load(e.to_string()))?;
        let torch_device = cuda::torch_device(device)?;
        if options.intra_threads > 0 {
            tch::set_num_threads(i32::try_from(options.intra_threads).unwrap_or(i32::MAX));
        }
        check_weights(artifacts)?;
        let mut network = Network::new(arch, torch_device);
        network.load(&artifacts.weights_path()).map_err(|e| {
            BackendError::Load(format!("{}: {e}", artifacts.weights_path().display()))
        })?;
        Ok(Self {
            network,
            device,
            torch_device,
        })
    }

    /// The batch's tensors on the model's device (after checking them against the spec).
    fn inputs(&self, batch: &Batch) -> Result<(Option<Tensor>, Option<Tensor>), BackendError> {
        let arch = self.network.arch();
        batch.check(arch)?;
        let to = |t: Option<&osteo_core::Tensor>| -> Result<Option<Tensor>, TchError> {
            t.map(|t| {
                let dims: Vec<i64> = t.shape().iter().map(|d| *d as i64).collect();
                Tensor::f_from_slice(t.data())?
                    .f_reshape(&dims)?
                    .f_to_device(self.torch_device)
            })
            .transpose()
        };
        let images = to(arch.image.as_ref().and(batch.images.as_ref())).map_err(runtime)?;
        let tabular = to(arch.tabular.as_ref().and(batch.tabular.as_ref())).map_err(runtime)?;
        Ok((images, tabular))
    }
}

/// Row-major values and shape of a tensor, on the CPU.
fn to_core(t: &Tensor) -> Result<osteo_core::Tensor, BackendError> {
    let shape: Vec<usize> = t.size().iter().map(|d| *d as usize).collect();
    let flat = t
        .f_to_device(tch::Device::Cpu)
        .and_then(|t| t.f_to_kind(Kind::Float))
        .and_then(|t| t.f_flatten(0, -1))
        .map_err(runtime)?;
    let data = Vec::<f32>::try_from(&flat).map_err(runtime)?;
    osteo_core::Tensor::new(shape, data).map_err(runtime)
}

impl LoadBackend for TchBackend {
    fn load(artifacts: &ModelArtifacts, device: Device) -> Result<Self, BackendError> {
        Self::load_with(artifacts, device, TchOptions::default())
    }
}

impl Backend for TchBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "tch".into(),
            device: self.device,
            library_version: format!("libtorch {LIBTORCH_RELEASE}"),
        }
    }

    fn predict(&mut self, batch: &Batch) -> Result<osteo_core::Tensor, BackendError> {
        let (images, tabular) = self.inputs(batch)?;
        let logits = tch::no_grad(|| {
            let a = images
                .as_ref()
                .map(|x| self.network.activation(x))
                .transpose()?;
            self.network.head(a.as_ref(), tabular.as_ref())
        })
        .map_err(runtime)?;
        to_core(&logits)
    }

    fn explain(&mut self, sample: &Batch) -> Result<Explanation, BackendError> {
        sample.check_explain(self.network.arch())?;
        let (images, tabular) = self.inputs(sample)?;
        type Parts = (Option<Tensor>, Tensor, Vec<Tensor>, Vec<Tensor>);
        let run = || -> Result<Parts, TchError> {
            let activation = match &images {
                Some(x) => Some(
                    tch::no_grad(|| self.network.activation(x))?
                        .f_detach()?
                        .f_set_requires_grad(true)?,
                ),
                None => None,
            };
            let tab = match &tabular {
                Some(t) => Some(t.f_detach()?.f_set_requires_grad(true)?),
                None => None,
            };
            let logits = self.network.head(activation.as_ref(), tab.as_ref())?;
            // One backward pass through the head per class, keeping the graph between them.
            let classes = logits.size().get(1).copied().unwrap_or(0);
            let mut alphas = Vec::with_capacity(classes as usize);
            let mut tab_grads = Vec::new();
            let wrt: Vec<&Tensor> = activation.iter().chain(tab.iter()).collect();
            for c in 0..classes {
                let target = logits.f_get(0)?.f_get(c)?;
                let grads = Tensor::f_run_backward(&[&target], &wrt, true, false)?;
                let mut grads = grads.iter();
                if activation.is_some()
                    && let Some(grad) = grads.next()
                {
                    alphas.push(grad.f_get(0)?.f_mean_dim(
                        [1i64, 2].as_slice(),
                        false,
                        Kind::Float,
                    )?);
                }
                if let Some(grad) = grads.next() {
                    tab_grads.push(grad.f_get(0)?);
                }
            }
            Ok((
                match &activation {
                    Some(a) => Some(a.f_detach()?.f_get(0)?),
                    None => None,
                },
                logits.f_detach()?.f_get(0)?,
                alphas,
                tab_grads,
            ))
        };
        let (a, logits, alphas, tab_grads) = run().map_err(runtime)?;
        Ok(Explanation {
            logits: to_core(&logits)?.into_data(),
            activation: a.as_ref().map(to_core).transpose()?,
            alphas: alphas
                .iter()
                .map(|alpha| to_core(alpha).map(osteo_core::Tensor::into_data))
                .collect::<Result<_, _>>()?,
            tabular_gradients: tab_grads
                .iter()
                .map(|g| to_core(g).map(osteo_core::Tensor::into_data))
                .collect::<Result<_, _>>()?,
        })
    }
}
