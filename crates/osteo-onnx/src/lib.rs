//! The ONNX exporter (DESIGN §3, §5): writes `model.onnx` (IR 8, opset 17) from a model's
//! `ArchSpec` and `weights.safetensors`, with the outputs `logits`, `activation` and
//! `gradcam_alpha` so ONNX Runtime (or Triton, or any ONNX tool) serves predictions and
//! Grad-CAM without autograd. The protobuf messages are declared here with prost; no protoc.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod error;
pub mod export;
mod graph;
pub mod proto;

pub use error::OnnxError;
pub use export::{IR_VERSION, OPSET, WEIGHTS_DIGEST_KEY, export, weights_digest};

use osteo_core::ModelArtifacts;
use std::path::Path;

/// Graph input and output names (defined with the domain types, shared by every backend).
pub use osteo_core::names;

fn read(path: &Path) -> Result<Vec<u8>, OnnxError> {
    std::fs::read(path).map_err(|e| OnnxError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The ONNX bytes for a model directory, from its manifest and weights.
pub fn export_model(artifacts: &ModelArtifacts) -> Result<Vec<u8>, OnnxError> {
    export(&artifacts.manifest, &read(&artifacts.weights_path())?)
}

/// Exports a model directory and writes its `model.onnx`; returns the file size.
pub fn write_model(artifacts: &ModelArtifacts) -> Result<usize, OnnxError> {
    let bytes = export_model(artifacts)?;
    let path = artifacts.onnx_path();
    std::fs::write(&path, &bytes).map_err(|e| OnnxError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(bytes.len())
}

/// Decodes an ONNX file.
pub fn decode(path: &Path) -> Result<proto::ModelProto, OnnxError> {
    let bytes = read(path)?;
    <proto::ModelProto as prost::Message>::decode(bytes.as_slice()).map_err(|e| OnnxError::Decode {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The weights digest an ONNX file records, if any.
pub fn recorded_digest(model: &proto::ModelProto) -> Option<&str> {
    model
        .metadata_props
        .iter()
        .find(|p| p.key == WEIGHTS_DIGEST_KEY)
        .map(|p| p.value.as_str())
}

fn stale(artifacts: &ModelArtifacts, reason: String) -> OnnxError {
    OnnxError::Stale {
        path: artifacts.onnx_path().display().to_string(),
        dir: artifacts.dir.display().to_string(),
        reason,
    }
}

/// Checks that `model.onnx` records the digest of the current weights (cheap; run at load).
pub fn check_digest(artifacts: &ModelArtifacts) -> Result<(), OnnxError> {
    let model = decode(&artifacts.onnx_path())?;
    let want = weights_digest(&read(&artifacts.weights_path())?);
    match recorded_digest(&model) {
        Some(have) if have == want => Ok(()),
        Some(have) => Err(stale(
            artifacts,
            format!("it was exported from weights {have}, the weights are {want}"),
        )),
        None => Err(stale(artifacts, "it records no weights digest".into())),
    }
}

/// Checks that `model.onnx` is byte-for-byte what the exporter writes from the current weights.
pub fn check_in_sync(artifacts: &ModelArtifacts) -> Result<(), OnnxError> {
    check_digest(artifacts)?;
    let want = export_model(artifacts)?;
    let have = read(&artifacts.onnx_path())?;
    if have != want {
        return Err(stale(
            artifacts,
            format!(
                "{} bytes on disk, the exporter writes {} different bytes",
                have.len(),
                want.len()
            ),
        ));
    }
    Ok(())
}
