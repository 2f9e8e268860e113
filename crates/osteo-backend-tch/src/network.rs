//! The network of an `ArchSpec` on libtorch: parameters live in a `VarStore` under the names of
//! [`ArchSpec::parameters`], filled from `weights.safetensors`; the forward pass uses libtorch's
//! fallible operators, so an engine error is an error, never a panic.

use osteo_core::ArchSpec;
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, TchError, Tensor};

/// One conv block's parameters.
struct ConvBlock {
    weight: Tensor,
    bias: Tensor,
    bn: [Tensor; 4],
}

/// One linear layer's parameters.
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        x.f_linear(&self.weight, Some(&self.bias))
    }
}

/// The whole network (eval mode: batch-norm uses the running statistics).
pub struct Network {
    arch: ArchSpec,
    eps: f64,
    blocks: Vec<ConvBlock>,
    tabular: Vec<Linear>,
    head: Vec<Linear>,
    /// Owns the parameters (and their names for loading).
    vs: VarStore,
}

impl Network {
    /// Creates every parameter of `arch` in a new VarStore on `device` (zero-initialised;
    /// [`Network::load`] fills them).
    pub fn new(arch: &ArchSpec, device: Device) -> Self {
        let vs = VarStore::new(device);
        let root = vs.root();
        // "image.block0.conv.weight" is the variable "weight" under image / block0 / conv.
        let var = |name: &str, shape: &[usize]| {
            let dims: Vec<i64> = shape.iter().map(|d| *d as i64).collect();
            let mut segments: Vec<&str> = name.split('.').collect();
            let leaf = segments.pop().unwrap_or(name);
            let path = segments.iter().fold(root.clone(), |p, s| p.sub(*s));
            path.var(leaf, &dims, Init::Const(0.0))
        };
        let shapes: std::collections::HashMap<String, Vec<usize>> =
            arch.parameters().into_iter().collect();
        let get = |name: String| var(&name, shapes.get(&name).map_or(&[][..], Vec::as_slice));
        let blocks = arch.image.as_ref().map_or_else(Vec::new, |img| {
            (0..img.channels.len())
                .map(|b| {
                    let p = format!("image.block{b}");
                    ConvBlock {
                        weight: get(format!("{p}.conv.weight")),
                        bias: get(format!("{p}.conv.bias")),
                        bn: ["weight", "bias", "running_mean", "running_var"]
                            .map(|s| get(format!("{p}.bn.{s}"))),
                    }
                })
                .collect()
        });
        let linear = |name: String| Linear {
            weight: get(format!("{name}.weight")),
            bias: get(format!("{name}.bias")),
        };
        let tabular = arch.tabular.as_ref().map_or_else(Vec::new, |t| {
            (0..t.hidden.len())
                .map(|k| linear(format!("tabular.fc{k}")))
                .collect()
        });
        let mut head: Vec<Linear> = (0..arch.head.hidden.len())
            .map(|k| linear(format!("head.fc{k}")))
            .collect();
        head.push(linear("head.out".into()));
        let eps = arch.image.as_ref().map_or(1e-5, |i| i.batch_norm_eps);
        Self {
            arch: arch.clone(),
            eps,
            blocks,
            tabular,
            head,
            vs,
        }
    }

    /// Fills the parameters from a safetensors file (names and shapes already checked).
    pub fn load(&mut self, weights: &std::path::Path) -> Result<(), TchError> {
        self.vs.load(weights)?;
        self.vs.freeze();
        Ok(())
    }

    /// The spec the network was built from.
    pub fn arch(&self) -> &ArchSpec {
        &self.arch
    }

    /// The last conv block's activation `A [N, K, h, w]` for views `[N, C, H, W]`.
    pub fn activation(&self, images: &Tensor) -> Result<Tensor, TchError> {
        let mut x = images.shallow_clone();
        for b in &self.blocks {
            x = x.f_conv2d(&b.weight, Some(&b.bias), [1, 1], [1, 1], [1, 1], 1)?;
            x = x.f_batch_norm(
                Some(&b.bn[0]),
                Some(&b.bn[1]),
                Some(&b.bn[2]),
                Some(&b.bn[3]),
                false,
                0.1,
                self.eps,
                true,
            )?;
            x = x
                .f_relu()?
                .f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?;
        }
        Ok(x)
    }

    /// Logits `[N, classes]` from the image activation and/or the encoded clinical features.
    pub fn head(
        &self,
        activation: Option<&Tensor>,
        tabular: Option<&Tensor>,
    ) -> Result<Tensor, TchError> {
        let mut parts = Vec::with_capacity(2);
        if let Some(a) = activation {
            parts.push(a.f_mean_dim([2i64, 3].as_slice(), false, Kind::Float)?);
        }
        if let Some(t) = tabular {
            let mut x = t.shallow_clone();
            for layer in &self.tabular {
                x = layer.forward(&x)?.f_relu()?;
            }
            parts.push(x);
        }
        let mut x = match parts.len() {
            1 => parts.remove(0),
            _ => Tensor::f_cat(&parts, 1)?,
        };
        let last = self.head.len() - 1;
        for (k, layer) in self.head.iter().enumerate() {
            x = layer.forward(&x)?;
            if k < last {
                x = x.f_relu()?;
            }
        }
        Ok(x)
    }
}
