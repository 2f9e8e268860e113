//! The backend boundary (DESIGN §6): what every inference engine implements. Backends are
//! synchronous and own one loaded model; the server runs each on its own worker thread.

use crate::arch::ArchSpec;
use crate::gradcam::Explanation;
use crate::manifest::ModelArtifacts;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Device {
    /// The CPU.
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for Device {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    BackendError::InvalidInput(format!(
                        "unknown device {other:?}; expected \"cpu\" or \"cuda:N\""
                    ))
                }),
        }
    }
}

/// What a backend says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// Backend name: `candle`, `ort` or `tch`.
    pub name: String,
    /// Device it runs on.
    pub device: Device,
    /// Version of the underlying library.
    pub library_version: String,
}

/// One sample's model input: the view `[C, H, W]` (flattened, image and fused models) and/or the
/// encoded clinical features `[F]` (tabular and fused models).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sample {
    /// Flattened view.
    pub image: Option<Vec<f32>>,
    /// Encoded clinical features.
    pub tabular: Option<Vec<f32>>,
}

/// A batch of model inputs; which parts are present depends on the model kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Views `[N, 2, H, W]` (image and fused models).
    pub images: Option<Tensor>,
    /// Encoded clinical features `[N, F]` (tabular and fused models).
    pub tabular: Option<Tensor>,
}

impl Batch {
    /// Stacks samples into the batch `arch` reads (its channels, view size and feature count),
    /// checking every sample's sizes; parts the model does not read are ignored.
    pub fn stack<S: std::borrow::Borrow<Sample>>(
        arch: &ArchSpec,
        samples: &[S],
    ) -> Result<Batch, BackendError> {
        let n = samples.len();
        let stack = |dims: Vec<usize>, part: &dyn Fn(&Sample) -> Option<&Vec<f32>>, what: &str| {
            let per: usize = dims.iter().skip(1).product();
            let mut data = Vec::with_capacity(n * per);
            for sample in samples {
                let v = part(sample.borrow()).ok_or_else(|| {
                    BackendError::InvalidInput(format!("a {} model needs {what}", arch.kind))
                })?;
                if v.len() != per {
                    return Err(BackendError::InvalidInput(format!(
                        "{what} has {} values, the model takes {per}",
                        v.len()
                    )));
                }
                data.extend_from_slice(v);
            }
            Tensor::new(dims, data).map_err(|e| BackendError::InvalidInput(e.to_string()))
        };
        let images = arch
            .image
            .as_ref()
            .map(|i| {
                stack(
                    vec![n, i.in_channels, i.height, i.width],
                    &|s| s.image.as_ref(),
                    "a CT view",
                )
            })
            .transpose()?;
        let tabular = arch
            .tabular
            .as_ref()
            .map(|t| {
                stack(
                    vec![n, t.in_features],
                    &|s| s.tabular.as_ref(),
                    "clinical features",
                )
            })
            .transpose()?;
        Ok(Batch { images, tabular })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.images
            .as_ref()
            .or(self.tabular.as_ref())
            .and_then(|t| t.shape().first().copied())
            .unwrap_or(0)
    }

    /// Whether the batch holds no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that the batch holds exactly the inputs `arch` reads, shaped `[N, ...]` with one
    /// `N > 0`, and returns `N`. Every backend runs this before touching its engine.
    pub fn check(&self, arch: &ArchSpec) -> Result<usize, BackendError> {
        let image = arch
            .image
            .as_ref()
            .map(|i| vec![i.in_channels, i.height, i.width]);
        let tabular = arch.tabular.as_ref().map(|t| vec![t.in_features]);
        let mut n = None;
        for (what, tensor, expect) in [
            ("images", self.images.as_ref(), image),
            ("clinical features", self.tabular.as_ref(), tabular),
        ] {
            let Some(expect) = expect else { continue };
            let t = tensor.ok_or_else(|| {
                BackendError::InvalidInput(format!("a {} model needs {what}", arch.kind))
            })?;
            let shape = t.shape();
            if shape.len() != expect.len() + 1 || shape[1..] != *expect || shape[0] == 0 {
                return Err(BackendError::InvalidInput(format!(
                    "{what} must be [N, {expect:?}] with N > 0, got {shape:?}"
                )));
            }
            if n.is_some_and(|n| n != shape[0]) {
                return Err(BackendError::InvalidInput(
                    "images and clinical features differ in batch size".into(),
                ));
            }
            if let Some(at) = first_non_finite(t.data()) {
                return Err(BackendError::InvalidInput(format!(
                    "{what} hold a value that is not a finite number (NaN or infinity) at \
                     element {at}; send finite values"
                )));
            }
            n = Some(shape[0]);
        }
        n.ok_or_else(|| BackendError::InvalidInput("the model reads no input".into()))
    }

    /// [`Batch::check`] for explanations: the batch must hold one sample.
    pub fn check_explain(&self, arch: &ArchSpec) -> Result<(), BackendError> {
        if self.check(arch)? != 1 {
            return Err(BackendError::InvalidInput(
                "explanations take one sample at a time".into(),
            ));
        }
        Ok(())
    }
}

/// The index of the first value that is NaN or infinite.
pub fn first_non_finite(values: &[f32]) -> Option<usize> {
    values.iter().position(|v| !v.is_finite())
}

/// Why a backend call failed. `Clone`, so one failure can be sent to every request of a batch.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum BackendError {
    /// The model files could not be loaded.
    #[error("cannot load model: {0}")]
    Load(String),
    /// The input does not fit the model.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The operation does not apply to this model (e.g. Grad-CAM on a tabular model).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The device is unavailable or failed (e.g. CUDA out of memory).
    #[error("device error: {0}")]
    Device(String),
    /// The engine failed while running.
    #[error("inference failed: {0}")]
    Runtime(String),
}

impl BackendError {
    /// Whether the error is the device running out of memory (CUDA's "out of memory", ONNX
    /// Runtime's failed allocation): a smaller batch may still succeed.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            BackendError::Device(m) | BackendError::Runtime(m) => {
                let m = m.to_ascii_lowercase();
                m.contains("out of memory") || m.contains("failed to allocate memory")
            }
            _ => false,
        }
    }
}

/// An inference engine with one loaded model.
pub trait Backend: Send {
    /// Name, device and library version.
    fn info(&self) -> BackendInfo;

    /// Logits `[N, 3]` for a batch, in class order normal, osteopenia, osteoporosis.
    fn predict(&mut self, batch: &Batch) -> Result<Tensor, BackendError>;

    /// One sample's logits, the Grad-CAM parts of every class (image models) and the gradient
    /// of every class's logit with respect to the clinical features (models with them), in one
    /// pass (Explain's prediction, map and attributions come from the same backend call).
    fn explain(&mut self, sample: &Batch) -> Result<Explanation, BackendError>;
}

/// Loading a backend from a model directory.
pub trait LoadBackend: Backend + Sized {
    /// Loads the model in `artifacts` onto `device`.
    fn load(artifacts: &ModelArtifacts, device: Device) -> Result<Self, BackendError>;
}

/// Softmax of one row of logits.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let exp: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_stack_into_the_shapes_the_architecture_reads() {
        let arch = crate::arch::tests::fused();
        let sample = |v: f32| Sample {
            image: Some(vec![v; 2 * 128 * 128]),
            tabular: Some(vec![v; 13]),
        };
        let batch = Batch::stack(&arch, &[sample(1.0), sample(2.0)]).expect("stack");
        assert_eq!(batch.check(&arch).expect("valid"), 2);
        assert_eq!(
            batch.images.as_ref().expect("images").shape(),
            [2, 2, 128, 128]
        );
        let tabular = batch.tabular.expect("tabular");
        assert_eq!(tabular.shape(), [2, 13]);
        assert_eq!((tabular.data()[0], tabular.data()[13]), (1.0, 2.0));
        let short = Sample {
            tabular: Some(vec![0.0; 12]),
            ..sample(0.0)
        };
        let e = Batch::stack(&arch, &[sample(0.0), short]).expect_err("12 features");
        assert!(
            e.to_string().contains("clinical features has 12 values"),
            "{e}"
        );
        let no_view = Sample {
            image: None,
            ..sample(0.0)
        };
        let e = Batch::stack(&arch, &[no_view]).expect_err("no view");
        assert!(e.to_string().contains("needs a CT view"), "{e}");
    }

    #[test]
    fn devices_parse_and_print() {
        assert_eq!("cpu".parse::<Device>().expect("cpu"), Device::Cpu);
        assert_eq!("cuda:1".parse::<Device>().expect("cuda"), Device::Cuda(1));
        assert_eq!(Device::Cuda(0).to_string(), "cuda:0");
        assert!("gpu".parse::<Device>().is_err());
    }

    #[test]
    fn out_of_memory_is_recognised_from_each_engine() {
        assert!(
            BackendError::Device("CUDA_ERROR_OUT_OF_MEMORY: out of memory".into())
                .is_out_of_memory()
        );
        assert!(
            BackendError::Runtime("Failed to allocate memory for requested buffer".into())
                .is_out_of_memory()
        );
        assert!(!BackendError::Device("no CUDA device".into()).is_out_of_memory());
        assert!(!BackendError::InvalidInput("out of memory".into()).is_out_of_memory());
    }

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let p = softmax(&[1000.0, 1000.0, 0.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((p[0] - 0.5).abs() < 1e-6 && p[2] < 1e-6);
    }
}
