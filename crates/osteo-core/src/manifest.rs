//! `model.toml`: the manifest of a model directory (DESIGN §5).

use crate::arch::{ArchSpec, ModelKind};
use crate::decision::DecisionSpec;
use crate::error::CoreError;
use crate::features::TabularSpec;
use crate::grade::Grade;
use crate::view_spec::ViewSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name of the manifest inside a model directory.
pub const MANIFEST_FILE: &str = "model.toml";
/// File name of the weights (the one source of truth every backend loads).
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// File name of the ONNX export.
pub const ONNX_FILE: &str = "model.onnx";

/// How a model was produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The command line that trained it.
    pub command: String,
    /// The training seed.
    pub seed: u64,
    /// The source commit.
    pub commit: String,
    /// Description of the training data.
    pub data: String,
}

/// The manifest of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// Model name, e.g. `osteo-fused-v1`.
    pub name: String,
    /// Model version.
    pub version: String,
    /// What the model reads.
    pub kind: ModelKind,
    /// Class names in logit order.
    pub classes: Vec<String>,
    /// The network.
    pub arch: ArchSpec,
    /// The CT view (image and fused models).
    pub view: Option<ViewSpec>,
    /// The tabular features (tabular and fused models).
    pub tabular: Option<TabularSpec>,
    /// How it was trained.
    pub provenance: Provenance,
    /// Evaluation metrics (name -> value).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Hex BLAKE3 digest of `weights.safetensors`, checked by every backend at load.
    #[serde(default)]
    pub weights_blake3: String,
    /// Calibration, screening operating point and conformal threshold, fitted on the
    /// validation split; absent in models trained before them (they decide nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionSpec>,
}

impl ModelManifest {
    /// Whether the model reads features measured on its CT study (the attenuation).
    pub fn reads_measured(&self) -> bool {
        self.tabular
            .as_ref()
            .is_some_and(TabularSpec::reads_measured)
    }

    /// Whether the model was trained on synthetic data (its results must say so).
    pub fn trained_on_synthetic(&self) -> bool {
        self.provenance
            .data
            .to_ascii_lowercase()
            .contains("synthetic")
    }
}

/// Hex BLAKE3 digest of a weights file's bytes.
pub fn weights_digest(weights: &[u8]) -> String {
    blake3::hash(weights).to_hex().to_string()
}

fn bad(reason: String) -> CoreError {
    CoreError::InvalidSpec {
        what: "model manifest",
        reason,
    }
}

impl ModelManifest {
    /// Checks internal consistency: kind, branches, view size, feature count, classes, and the
    /// decision section's ranges.
    pub fn validate(&self) -> Result<(), CoreError> {
        self.arch.validate()?;
        if let Some(d) = &self.decision {
            d.validate()?;
        }
        if self.arch.kind != self.kind {
            return Err(bad(format!(
                "kind {} but architecture kind {}",
                self.kind, self.arch.kind
            )));
        }
        let expected: Vec<&str> = Grade::ALL.iter().map(|g| g.name()).collect();
        if self.classes != expected || self.arch.head.classes != expected.len() {
            return Err(bad(format!(
                "classes must be {expected:?} with a 3-way head"
            )));
        }
        match (&self.arch.image, &self.view) {
            (Some(img), Some(view)) => {
                view.validate()?;
                if (img.height, img.width) != (view.height, view.width) || img.in_channels != 2 {
                    return Err(bad(format!(
                        "image branch input {}x{}x{} does not match the 2-channel {}x{} view",
                        img.in_channels, img.height, img.width, view.height, view.width
                    )));
                }
            }
            (None, None) => {}
            _ => {
                return Err(bad(
                    "a view is required exactly when the model has an image branch".into(),
                ));
            }
        }
        match (&self.arch.tabular, &self.tabular) {
            (Some(t), Some(spec)) => {
                spec.validate()?;
                if t.in_features != spec.features.len() {
                    return Err(bad(format!(
                        "tabular branch takes {} features, manifest lists {}",
                        t.in_features,
                        spec.features.len()
                    )));
                }
                if spec.reads_measured() && self.view.is_none() {
                    return Err(bad(
                        "features measured on the CT study need a model that reads CT (a view)"
                            .into(),
                    ));
                }
            }
            (None, None) => {}
            _ => {
                return Err(bad(
                    "tabular features are required exactly when the model has a tabular branch"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Parses and validates a manifest from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, CoreError> {
        let m: ModelManifest = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Serialises to TOML.
    pub fn to_toml(&self) -> Result<String, CoreError> {
        toml::to_string_pretty(self).map_err(|e| bad(e.to_string()))
    }
}

/// A model directory with its parsed manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelArtifacts {
    /// The directory.
    pub dir: PathBuf,
    /// The manifest.
    pub manifest: ModelManifest,
}

impl ModelArtifacts {
    /// Reads `dir/model.toml`.
    pub fn open(dir: &Path) -> Result<Self, CoreError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        let manifest =
            ModelManifest::from_toml(&text).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Path of the weights file.
    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }

    /// Path of the ONNX export.
    pub fn onnx_path(&self) -> PathBuf {
        self.dir.join(ONNX_FILE)
    }

    /// Checks `weights.safetensors` against the digest `model.toml` records, so a changed or
    /// corrupted weights file is refused instead of served. Every backend runs it at load.
    pub fn verify_weights(&self) -> Result<(), CoreError> {
        let path = self.weights_path();
        let bytes = std::fs::read(&path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        let have = weights_digest(&bytes);
        let want = &self.manifest.weights_blake3;
        let dir = self.dir.display();
        if want.is_empty() {
            return Err(bad(format!(
                "{dir}/{MANIFEST_FILE} records no weights_blake3: if {} is the file you trust, \
                 record its digest with `osteo export-onnx --model {dir}`",
                path.display()
            )));
        }
        if have != *want {
            return Err(bad(format!(
                "{} does not match the weights_blake3 recorded in {dir}/{MANIFEST_FILE} (the file \
                 is {have}, the manifest says {want}): the weights were changed or corrupted; \
                 restore the model directory, or if the new weights are intended, record them \
                 with `osteo export-onnx --model {dir}`",
                path.display()
            )));
        }
        Ok(())
    }

    /// Records the digest of the current `weights.safetensors` in the manifest (in memory).
    pub fn record_weights_digest(&mut self) -> Result<(), CoreError> {
        let path = self.weights_path();
        let bytes = std::fs::read(&path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        self.manifest.weights_blake3 = weights_digest(&bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{Head, ImageBranch, TabularBranch};
    use crate::features::FEATURE_NAMES;

    fn manifest() -> ModelManifest {
        ModelManifest {
            name: "osteo-fused-test".into(),
            version: "1".into(),
            kind: ModelKind::Fused,
            classes: Grade::ALL.iter().map(|g| g.name().to_string()).collect(),
            arch: ArchSpec {
                kind: ModelKind::Fused,
                image: Some(ImageBranch {
                    in_channels: 2,
                    height: 128,
                    width: 128,
                    channels: vec![8, 16],
                    batch_norm_eps: 1e-5,
                }),
                tabular: Some(TabularBranch {
                    in_features: 13,
                    hidden: vec![16],
                }),
                head: Head {
                    hidden: vec![16],
                    classes: 3,
                },
            },
            view: Some(ViewSpec::default()),
            tabular: Some(
                TabularSpec::with_stats(&vec![(0.0, 1.0); FEATURE_NAMES.len()]).expect("spec"),
            ),
            provenance: Provenance {
                command: "osteo train".into(),
                seed: 1,
                commit: "abc".into(),
                data: "synthetic".into(),
            },
            metrics: [("auc_macro".to_string(), 0.9)].into_iter().collect(),
            weights_blake3: String::new(),
            decision: None,
        }
    }

    #[test]
    fn changed_weights_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(WEIGHTS_FILE), b"weights v1").expect("write");
        let mut a = ModelArtifacts {
            dir: dir.path().to_path_buf(),
            manifest: manifest(),
        };
        let missing = a.verify_weights().expect_err("no digest recorded");
        assert!(
            missing.to_string().contains("osteo export-onnx"),
            "{missing}"
        );
        a.record_weights_digest().expect("digest");
        a.verify_weights().expect("intact");
        std::fs::write(dir.path().join(WEIGHTS_FILE), b"weights v2").expect("write");
        let e = a.verify_weights().expect_err("tampered").to_string();
        assert!(
            e.contains("changed or corrupted") && e.contains("weights_blake3"),
            "{e}"
        );
    }

    #[test]
    fn round_trips_through_toml() {
        let m = manifest();
        let text = m.to_toml().expect("toml");
        assert!(text.contains("name = \"osteo-fused-test\""), "{text}");
        assert_eq!(ModelManifest::from_toml(&text).expect("parses"), m);
    }

    #[test]
    fn inconsistent_manifests_are_rejected_with_a_reason() {
        let mut m = manifest();
        m.view = Some(ViewSpec {
            height: 64,
            ..ViewSpec::default()
        });
        assert!(
            ModelManifest::from_toml(&m.to_toml().expect("toml"))
                .expect_err("size")
                .to_string()
                .contains("does not match")
        );
        let mut m = manifest();
        m.classes.swap(0, 1);
        assert!(m.validate().is_err());
        assert!(ModelManifest::from_toml("name = 3").is_err());
    }

    #[test]
    fn measured_features_need_a_model_that_reads_ct() {
        let names = ["age_years", crate::features::LUMBAR_HU];
        let spec = TabularSpec::with_features(&names, &[(0.0, 1.0); 2]).expect("spec");
        let mut m = manifest();
        m.tabular = Some(spec);
        if let Some(t) = m.arch.tabular.as_mut() {
            t.in_features = 2;
        }
        m.validate().expect("a fused model reads them");
        assert!(m.reads_measured());
        m.kind = ModelKind::Tabular;
        m.arch.kind = ModelKind::Tabular;
        m.arch.image = None;
        m.view = None;
        let e = m.validate().expect_err("no CT").to_string();
        assert!(e.contains("reads CT"), "{e}");
    }
}
