//! Writing a trained model directory: `model.toml`, `weights.safetensors` and the `model.onnx`
//! exported from them.

use crate::error::TrainError;
use crate::train::Trained;
use osteo_core::manifest::{MANIFEST_FILE, Provenance, WEIGHTS_FILE};
use osteo_core::{Grade, ModelArtifacts, ModelManifest};
use std::collections::BTreeMap;
use std::path::Path;

/// Writes the model directory (manifest, weights, ONNX export) and returns its manifest.
pub fn write_model(
    trained: &Trained,
    (name, version): (&str, &str),
    provenance: Provenance,
    metrics: BTreeMap<String, f64>,
    dir: &Path,
) -> Result<ModelManifest, TrainError> {
    let io = |e: String| TrainError::Io {
        path: dir.display().to_string(),
        message: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(e.to_string()))?;
    let manifest = ModelManifest {
        name: name.to_string(),
        version: version.to_string(),
        kind: trained.arch.kind,
        classes: Grade::ALL.iter().map(|g| g.name().to_string()).collect(),
        arch: trained.arch.clone(),
        view: trained.view,
        tabular: trained.tabular.clone(),
        provenance,
        metrics,
        weights_blake3: String::new(),
        decision: None,
    };
    manifest
        .validate()
        .map_err(|e| TrainError::Setup(format!("the trained model's manifest is invalid: {e}")))?;
    trained
        .varmap
        .save(dir.join(WEIGHTS_FILE))
        .map_err(|e| io(e.to_string()))?;
    let mut artifacts = ModelArtifacts {
        dir: dir.to_path_buf(),
        manifest,
    };
    artifacts
        .record_weights_digest()
        .map_err(|e| io(e.to_string()))?;
    std::fs::write(
        dir.join(MANIFEST_FILE),
        artifacts
            .manifest
            .to_toml()
            .map_err(|e| io(e.to_string()))?,
    )
    .map_err(|e| io(e.to_string()))?;
    osteo_onnx::write_model(&artifacts).map_err(|e| io(e.to_string()))?;
    Ok(artifacts.manifest)
}
