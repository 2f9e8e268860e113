//! `CandleBackend`: loads `weights.safetensors` and serves predict and Grad-CAM.

use crate::folded::Folded;
use crate::network::Network;
use candle_core::{D, DType, IndexOp, Tensor, Var};
use candle_nn::VarBuilder;
use osteo_core::{
    Backend, BackendError, BackendInfo, Batch, Device, Explanation, LoadBackend, ModelArtifacts,
};
use std::collections::HashMap;

/// Version of candle this backend is built against.
pub const LIBRARY_VERSION: &str = "candle 0.11.1";

/// The candle device for an OsteoServe device.
pub fn to_candle_device(device: Device) -> Result<candle_core::Device, BackendError> {
    match device {
        Device::Cpu => Ok(candle_core::Device::Cpu),
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => candle_core::Device::new_cuda(i)
            .map_err(|e| BackendError::Device(format!("cuda:{i}: {e}"))),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(i) => Err(BackendError::Device(format!(
            "cuda:{i} requested but this build of the candle backend has no CUDA support (build with --features cuda)"
        ))),
    }
}

fn runtime(e: candle_core::Error) -> BackendError {
    BackendError::Runtime(e.to_string())
}

/// A model loaded on candle.
#[derive(Debug)]
pub struct CandleBackend {
    network: Network,
    /// The CPU inference path (batch-norm folded, channels last); `None` on GPUs.
    folded: Option<Folded>,
    device: Device,
    candle_device: candle_core::Device,
}

impl CandleBackend {
    /// Wraps an already built network (e.g. straight from training).
    /// Predictions use the network's weights as they are now (folded once, here).
    pub fn from_network(network: Network, device: Device) -> Result<Self, BackendError> {
        let candle_device = to_candle_device(device)?;
        let folded = match device {
            Device::Cpu => Some(Folded::new(&network).map_err(runtime)?),
            Device::Cuda(_) => None,
        };
        Ok(Self {
            network,
            folded,
            device,
            candle_device,
        })
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.network
    }

    fn tensor(&self, t: Option<&osteo_core::Tensor>) -> Result<Option<Tensor>, BackendError> {
        t.map(|t| Tensor::from_slice(t.data(), t.shape(), &self.candle_device))
            .transpose()
            .map_err(runtime)
    }

    fn inputs(&self, batch: &Batch) -> Result<(Option<Tensor>, Option<Tensor>), BackendError> {
        let arch = self.network.arch();
        batch.check(arch)?;
        let images = arch.image.as_ref().and(batch.images.as_ref());
        let tabular = arch.tabular.as_ref().and(batch.tabular.as_ref());
        Ok((self.tensor(images)?, self.tensor(tabular)?))
    }
}

impl LoadBackend for CandleBackend {
    fn load(artifacts: &ModelArtifacts, device: Device) -> Result<Self, BackendError> {
        artifacts
            .verify_weights()
            .map_err(|e| BackendError::Load(e.to_string()))?;
        let candle_device = to_candle_device(device)?;
        let path = artifacts.weights_path();
        let tensors = candle_core::safetensors::load(&path, &candle_device)
            .map_err(|e| BackendError::Load(format!("{}: {e}", path.display())))?;
        let arch = &artifacts.manifest.arch;
        arch.check_parameters(tensors.iter().map(|(k, v)| (k.as_str(), v.dims())))
            .map_err(|e| BackendError::Load(format!("{}: {e}", path.display())))?;
        let tensors = tensors
            .into_iter()
            .map(|(k, v)| v.to_dtype(DType::F32).map(|v| (k, v)))
            .collect::<candle_core::Result<HashMap<_, _>>>()
            .map_err(runtime)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &candle_device);
        let network = Network::new(arch, vb).map_err(|e| BackendError::Load(e.to_string()))?;
        Self::from_network(network, device)
    }
}

impl Backend for CandleBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "candle".into(),
            device: self.device,
            library_version: LIBRARY_VERSION.into(),
        }
    }

    fn predict(&mut self, batch: &Batch) -> Result<osteo_core::Tensor, BackendError> {
        if let Some(folded) = &self.folded {
            let arch = self.network.arch();
            let n = batch.check(arch)?;
            let images = arch.image.as_ref().and(batch.images.as_ref());
            let tabular = arch.tabular.as_ref().and(batch.tabular.as_ref());
            let logits = folded
                .forward(
                    n,
                    images.map(osteo_core::Tensor::data),
                    tabular.map(osteo_core::Tensor::data),
                )
                .map_err(runtime)?;
            return osteo_core::Tensor::new(vec![n, arch.head.classes], logits)
                .map_err(|e| BackendError::Runtime(e.to_string()));
        }
        let (images, tabular) = self.inputs(batch)?;
        let logits = self
            .network
            .forward(images.as_ref(), tabular.as_ref(), false)
            .map_err(runtime)?;
        let (n, c) = logits.dims2().map_err(runtime)?;
        let data = logits
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(runtime)?;
        osteo_core::Tensor::new(vec![n, c], data).map_err(|e| BackendError::Runtime(e.to_string()))
    }

    fn explain(&mut self, sample: &Batch) -> Result<Explanation, BackendError> {
        let arch = self.network.arch();
        sample.check_explain(arch)?;
        let view = arch.image.as_ref().and(sample.images.as_ref());
        let tabular = self.tensor(arch.tabular.as_ref().and(sample.tabular.as_ref()))?;
        // The convolutions need no gradient: on the CPU they run on the folded path.
        let activation = match (view, &self.folded) {
            (Some(view), Some(folded)) => {
                let (act, (k, h, w)) = folded.activation(view.data()).map_err(runtime)?;
                Some(Tensor::from_vec(act, (1, k, h, w), &self.candle_device).map_err(runtime)?)
            }
            (view, None) => self
                .tensor(view)?
                .map(|x| self.network.image_activation(&x, false).map(|a| a.detach()))
                .transpose()
                .map_err(runtime)?,
            (None, Some(_)) => None,
        };
        let var = activation
            .as_ref()
            .map(Var::from_tensor)
            .transpose()
            .map_err(runtime)?;
        let tab_var = tabular
            .as_ref()
            .map(|t| Var::from_tensor(&t.detach()))
            .transpose()
            .map_err(runtime)?;
        let logits = self
            .network
            .head_from(
                var.as_ref().map(Var::as_tensor),
                tab_var.as_ref().map(Var::as_tensor),
            )
            .map_err(runtime)?;
        // One backward pass through the head per class: the convolutions ran once.
        let classes = logits.dim(1).map_err(runtime)?;
        let mut alphas = Vec::with_capacity(classes);
        let mut tabular_gradients = Vec::new();
        for c in 0..classes {
            let grads = logits
                .i((0, c))
                .and_then(|t| t.backward())
                .map_err(runtime)?;
            if let Some(v) = &var {
                let grad = grads.get(v.as_tensor()).ok_or_else(|| {
                    BackendError::Runtime("no gradient reached the activation".into())
                })?;
                alphas.push(
                    grad.i(0)
                        .and_then(|g| g.mean(D::Minus1)?.mean(D::Minus1)?.to_vec1::<f32>())
                        .map_err(runtime)?,
                );
            }
            if let Some(t) = &tab_var {
                let g = grads.get(t.as_tensor()).ok_or_else(|| {
                    BackendError::Runtime("no gradient reached the tabular input".into())
                })?;
                tabular_gradients.push(g.i(0).and_then(|g| g.to_vec1::<f32>()).map_err(runtime)?);
            }
        }
        let row = logits
            .i(0)
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(runtime)?;
        let activation = activation
            .map(|activation| {
                let a = activation.i(0).map_err(runtime)?;
                let shape = a.dims().to_vec();
                let data = a
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(runtime)?;
                osteo_core::Tensor::new(shape, data)
                    .map_err(|e| BackendError::Runtime(e.to_string()))
            })
            .transpose()?;
        Ok(Explanation {
            logits: row,
            activation,
            alphas,
            tabular_gradients,
        })
    }
}
