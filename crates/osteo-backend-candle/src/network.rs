//! The network of an `ArchSpec`, built with candle-nn.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear, VarBuilder};
use osteo_core::ArchSpec;

/// One conv block: conv3x3 -> batch-norm -> ReLU -> max-pool 2x2.
#[derive(Debug, Clone)]
pub(crate) struct ConvBlock {
    pub(crate) conv: Conv2d,
    pub(crate) bn: BatchNorm,
}

/// Linear layers with ReLU between them (and after the last when `relu_last`).
#[derive(Debug, Clone)]
struct Mlp {
    layers: Vec<Linear>,
    relu_last: bool,
}

impl Mlp {
    fn new(
        vb: &VarBuilder<'_>,
        input: usize,
        sizes: &[usize],
        names: &[String],
        relu_last: bool,
    ) -> Result<Self> {
        let mut layers = Vec::with_capacity(sizes.len());
        let mut i = input;
        for (size, name) in sizes.iter().zip(names) {
            layers.push(candle_nn::linear(i, *size, vb.pp(name))?);
            i = *size;
        }
        Ok(Self { layers, relu_last })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        let n = self.layers.len();
        for (k, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if k + 1 < n || self.relu_last {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

/// The whole network; every backend builds the same graph from the same spec.
#[derive(Debug, Clone)]
pub struct Network {
    arch: ArchSpec,
    blocks: Vec<ConvBlock>,
    tabular: Option<Mlp>,
    head: Mlp,
}

impl Network {
    /// Builds the network, taking (or creating) every parameter from `vb` under the names of
    /// [`ArchSpec::parameters`].
    pub fn new(arch: &ArchSpec, vb: VarBuilder<'_>) -> Result<Self> {
        arch.validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut blocks = Vec::new();
        if let Some(img) = &arch.image {
            let mut c_in = img.in_channels;
            for (b, &c) in img.channels.iter().enumerate() {
                let bvb = vb.pp("image").pp(format!("block{b}"));
                let cfg = Conv2dConfig {
                    padding: 1,
                    ..Default::default()
                };
                let conv = candle_nn::conv2d(c_in, c, 3, cfg, bvb.pp("conv"))?;
                let bn = candle_nn::batch_norm(c, img.batch_norm_eps, bvb.pp("bn"))?;
                blocks.push(ConvBlock { conv, bn });
                c_in = c;
            }
        }
        let tabular = match &arch.tabular {
            Some(t) => {
                let names: Vec<String> = (0..t.hidden.len()).map(|k| format!("fc{k}")).collect();
                Some(Mlp::new(
                    &vb.pp("tabular"),
                    t.in_features,
                    &t.hidden,
                    &names,
                    true,
                )?)
            }
            None => None,
        };
        let mut sizes = arch.head.hidden.clone();
        sizes.push(arch.head.classes);
        let mut names: Vec<String> = (0..arch.head.hidden.len())
            .map(|k| format!("fc{k}"))
            .collect();
        names.push("out".into());
        let head = Mlp::new(&vb.pp("head"), arch.head_input(), &sizes, &names, false)?;
        Ok(Self {
            arch: arch.clone(),
            blocks,
            tabular,
            head,
        })
    }

    /// The spec the network was built from.
    pub fn arch(&self) -> &ArchSpec {
        &self.arch
    }

    /// The conv blocks, input first.
    pub(crate) fn blocks(&self) -> &[ConvBlock] {
        &self.blocks
    }

    /// The clinical-feature MLP's layers (none without one) and whether its last has a ReLU.
    pub(crate) fn tabular_layers(&self) -> (&[Linear], bool) {
        self.tabular
            .as_ref()
            .map_or((&[], false), |m| (&m.layers, m.relu_last))
    }

    /// The head's layers (ReLU between them, none after the last).
    pub(crate) fn head_layers(&self) -> &[Linear] {
        &self.head.layers
    }

    /// The last conv block's activation `A [N, K, h, w]` for views `[N, C, H, W]`.
    pub fn image_activation(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = images.clone();
        for block in &self.blocks {
            x = block.conv.forward(&x)?;
            x = block.bn.forward_t(&x, train)?;
            x = x.relu()?.max_pool2d(2)?;
        }
        Ok(x)
    }

    /// Logits `[N, classes]` from the image activation and/or the encoded clinical features.
    pub fn head_from(
        &self,
        activation: Option<&Tensor>,
        tabular: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut parts = Vec::with_capacity(2);
        if let Some(a) = activation {
            parts.push(a.mean((2, 3))?);
        }
        if let (Some(mlp), Some(t)) = (&self.tabular, tabular) {
            parts.push(mlp.forward(t)?);
        }
        let x = match parts.len() {
            0 => candle_core::bail!("the model needs {} input", self.arch.kind),
            1 => parts.remove(0),
            _ => Tensor::cat(&parts, 1)?,
        };
        self.head.forward(&x)
    }

    /// Logits for a batch; `train` selects batch statistics (and updates the running ones).
    pub fn forward(
        &self,
        images: Option<&Tensor>,
        tabular: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let activation = match (self.arch.image.is_some(), images) {
            (true, Some(x)) => Some(self.image_activation(x, train)?),
            (true, None) => candle_core::bail!("a {} model needs images", self.arch.kind),
            (false, _) => None,
        };
        if self.arch.tabular.is_some() && tabular.is_none() {
            candle_core::bail!("a {} model needs clinical features", self.arch.kind);
        }
        self.head_from(activation.as_ref(), tabular)
    }
}
