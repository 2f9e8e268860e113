//! `ArchSpec`: the network description every backend (and the ONNX exporter) builds the same
//! graph from, and the parameter names and shapes of `weights.safetensors`.
//!
//! Graph: image branch = conv blocks (conv3x3 pad 1 -> batch-norm -> ReLU -> max-pool 2x2) then
//! global average pooling; tabular branch = Linear -> ReLU per hidden layer; head = concatenated
//! embeddings -> (Linear -> ReLU)* -> Linear to the class logits. Batch-norm runs in eval mode.

use crate::error::CoreError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a model reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// CT view only.
    Image,
    /// Clinical variables only.
    Tabular,
    /// Both, fused.
    Fused,
}

impl ModelKind {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Image => "image",
            ModelKind::Tabular => "tabular",
            ModelKind::Fused => "fused",
        }
    }

    /// Whether the model reads the CT view.
    pub fn uses_image(self) -> bool {
        matches!(self, ModelKind::Image | ModelKind::Fused)
    }

    /// Whether the model reads clinical variables.
    pub fn uses_tabular(self) -> bool {
        matches!(self, ModelKind::Tabular | ModelKind::Fused)
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ModelKind {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "image" => Ok(ModelKind::Image),
            "tabular" => Ok(ModelKind::Tabular),
            "fused" => Ok(ModelKind::Fused),
            other => Err(CoreError::Parse {
                field: "kind",
                message: format!("unknown model kind {other:?}; expected image, tabular or fused"),
            }),
        }
    }
}

/// The convolutional image branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageBranch {
    /// Input channels (the view's channels).
    pub in_channels: usize,
    /// Input height in pixels.
    pub height: usize,
    /// Input width in pixels.
    pub width: usize,
    /// Output channels of each conv block; each block halves the spatial size.
    pub channels: Vec<usize>,
    /// Batch-norm epsilon.
    pub batch_norm_eps: f64,
}

impl ImageBranch {
    /// Spatial size `[h, w]` of the last block's activation (the Grad-CAM grid).
    pub fn activation_size(&self) -> [usize; 2] {
        let f = 1usize << self.channels.len();
        [self.height / f, self.width / f]
    }

    /// Channels of the last block (the embedding size after pooling, and Grad-CAM's K).
    pub fn embedding(&self) -> usize {
        self.channels.last().copied().unwrap_or(self.in_channels)
    }
}

/// The tabular MLP branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TabularBranch {
    /// Input features.
    pub in_features: usize,
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
}

impl TabularBranch {
    /// Embedding size.
    pub fn embedding(&self) -> usize {
        self.hidden.last().copied().unwrap_or(self.in_features)
    }
}

/// The classification head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Output classes.
    pub classes: usize,
}

/// The whole network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchSpec {
    /// What the network reads.
    pub kind: ModelKind,
    /// Image branch (image and fused models).
    pub image: Option<ImageBranch>,
    /// Tabular branch (tabular and fused models).
    pub tabular: Option<TabularBranch>,
    /// Head.
    pub head: Head,
}

fn bad(reason: String) -> CoreError {
    CoreError::InvalidSpec {
        what: "architecture",
        reason,
    }
}

impl ArchSpec {
    /// Checks the branches match the kind and every size is usable.
    pub fn validate(&self) -> Result<(), CoreError> {
        if self.kind.uses_image() != self.image.is_some() {
            return Err(bad(format!(
                "a {} model must {}have an image branch",
                self.kind,
                if self.kind.uses_image() { "" } else { "not " }
            )));
        }
        if self.kind.uses_tabular() != self.tabular.is_some() {
            return Err(bad(format!(
                "a {} model must {}have a tabular branch",
                self.kind,
                if self.kind.uses_tabular() { "" } else { "not " }
            )));
        }
        if let Some(img) = &self.image {
            let f = 1usize << img.channels.len().min(16);
            if img.channels.is_empty() || img.channels.len() > 8 {
                return Err(bad("the image branch needs 1 to 8 conv blocks".into()));
            }
            if img.in_channels == 0 || img.channels.contains(&0) {
                return Err(bad("channel counts must be positive".into()));
            }
            if img.height % f != 0 || img.width % f != 0 || img.height < f || img.width < f {
                return Err(bad(format!(
                    "input {}x{} must be a positive multiple of {f} ({} pooling blocks)",
                    img.height,
                    img.width,
                    img.channels.len()
                )));
            }
            if !(img.batch_norm_eps > 0.0 && img.batch_norm_eps < 1.0) {
                return Err(bad("batch_norm_eps must be in (0, 1)".into()));
            }
        }
        if let Some(t) = &self.tabular
            && (t.in_features == 0 || t.hidden.contains(&0))
        {
            return Err(bad("tabular sizes must be positive".into()));
        }
        if self.head.classes < 2 || self.head.hidden.contains(&0) {
            return Err(bad(
                "the head needs at least 2 classes and positive hidden sizes".into(),
            ));
        }
        Ok(())
    }

    /// Size of the head's input (concatenated embeddings).
    pub fn head_input(&self) -> usize {
        self.image.as_ref().map_or(0, ImageBranch::embedding)
            + self.tabular.as_ref().map_or(0, TabularBranch::embedding)
    }

    /// Checks that a weights file holds exactly this spec's parameters (`(name, shape)` pairs),
    /// each with the right shape; the error names the first parameter that is missing, misshapen
    /// or unknown.
    pub fn check_parameters<'a>(
        &self,
        present: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    ) -> Result<(), CoreError> {
        let present: Vec<(&str, &[usize])> = present.into_iter().collect();
        let weights = |reason: String| CoreError::InvalidSpec {
            what: "weights",
            reason,
        };
        let expected = self.parameters();
        for (name, shape) in &expected {
            match present.iter().find(|(n, _)| n == name) {
                None => return Err(weights(format!("parameter {name} {shape:?} is missing"))),
                Some((_, have)) if *have != shape.as_slice() => {
                    return Err(weights(format!(
                        "parameter {name} has shape {have:?}, the architecture needs {shape:?}"
                    )));
                }
                Some(_) => {}
            }
        }
        match present
            .iter()
            .find(|(n, _)| !expected.iter().any(|(e, _)| e == n))
        {
            Some((extra, _)) => Err(weights(format!(
                "{extra} is not a parameter of the architecture (stale weights?)"
            ))),
            None => Ok(()),
        }
    }

    /// Every parameter's safetensors name and shape, in a stable order. Names:
    /// `image.block{i}.conv.{weight,bias}`, `image.block{i}.bn.{weight,bias,running_mean,running_var}`,
    /// `tabular.fc{i}.{weight,bias}`, `head.fc{i}.{weight,bias}`, `head.out.{weight,bias}`;
    /// linear weights are `[out, in]`, conv weights `[out, in, 3, 3]`.
    pub fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        let linear = |out: &mut Vec<(String, Vec<usize>)>, name: String, i: usize, o: usize| {
            out.push((format!("{name}.weight"), vec![o, i]));
            out.push((format!("{name}.bias"), vec![o]));
        };
        if let Some(img) = &self.image {
            let mut c_in = img.in_channels;
            for (b, &c) in img.channels.iter().enumerate() {
                out.push((format!("image.block{b}.conv.weight"), vec![c, c_in, 3, 3]));
                out.push((format!("image.block{b}.conv.bias"), vec![c]));
                for p in ["weight", "bias", "running_mean", "running_var"] {
                    out.push((format!("image.block{b}.bn.{p}"), vec![c]));
                }
                c_in = c;
            }
        }
        if let Some(t) = &self.tabular {
            let mut i = t.in_features;
            for (k, &h) in t.hidden.iter().enumerate() {
                linear(&mut out, format!("tabular.fc{k}"), i, h);
                i = h;
            }
        }
        let mut i = self.head_input();
        for (k, &h) in self.head.hidden.iter().enumerate() {
            linear(&mut out, format!("head.fc{k}"), i, h);
            i = h;
        }
        linear(&mut out, "head.out".into(), i, self.head.classes);
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn fused() -> ArchSpec {
        ArchSpec {
            kind: ModelKind::Fused,
            image: Some(ImageBranch {
                in_channels: 2,
                height: 128,
                width: 128,
                channels: vec![16, 32, 64, 64],
                batch_norm_eps: 1e-5,
            }),
            tabular: Some(TabularBranch {
                in_features: 13,
                hidden: vec![32, 16],
            }),
            head: Head {
                hidden: vec![32],
                classes: 3,
            },
        }
    }

    #[test]
    fn parameter_names_and_shapes_follow_the_graph() {
        let a = fused();
        a.validate().expect("valid");
        let p = a.parameters();
        assert_eq!(
            p[0],
            ("image.block0.conv.weight".to_string(), vec![16, 2, 3, 3])
        );
        assert!(p.contains(&("image.block3.bn.running_var".to_string(), vec![64])));
        assert!(p.contains(&("tabular.fc1.weight".to_string(), vec![16, 32])));
        assert!(p.contains(&("head.fc0.weight".to_string(), vec![32, 64 + 16])));
        assert_eq!(p.last(), Some(&("head.out.bias".to_string(), vec![3])));
        assert_eq!(
            a.image.as_ref().map(ImageBranch::activation_size),
            Some([8, 8])
        );
    }

    #[test]
    fn weights_are_checked_by_name_and_shape() {
        let a = fused();
        let params = a.parameters();
        let all: Vec<(&str, &[usize])> = params
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_slice()))
            .collect();
        a.check_parameters(all.iter().copied()).expect("complete");
        let missing = a.check_parameters(all[1..].iter().copied());
        assert!(
            missing
                .expect_err("missing")
                .to_string()
                .contains("image.block0.conv.weight"),
        );
        let mut wrong = all.clone();
        wrong[0].1 = &[16, 2, 5, 5];
        let e = a.check_parameters(wrong).expect_err("shape").to_string();
        assert!(
            e.contains("[16, 2, 5, 5]") && e.contains("[16, 2, 3, 3]"),
            "{e}"
        );
        let mut extra = all.clone();
        extra.push(("head.fc9.weight", &[1]));
        let e = a.check_parameters(extra).expect_err("extra").to_string();
        assert!(e.contains("head.fc9.weight") && e.contains("stale"), "{e}");
    }

    #[test]
    fn inconsistent_specs_are_rejected() {
        let mut a = fused();
        a.kind = ModelKind::Image;
        assert!(a.validate().is_err(), "image model with a tabular branch");
        let mut b = fused();
        if let Some(img) = b.image.as_mut() {
            img.height = 100;
        }
        assert!(
            b.validate()
                .expect_err("100 is not a multiple of 16")
                .to_string()
                .contains("multiple of 16")
        );
        let mut c = fused();
        c.head.classes = 1;
        assert!(c.validate().is_err());
    }
}
