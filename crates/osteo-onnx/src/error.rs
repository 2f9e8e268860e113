//! Why an export or a sync check failed.

use thiserror::Error;

/// An ONNX export or check error.
#[derive(Debug, Error)]
pub enum OnnxError {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The manifest or the weights do not describe an exportable network.
    #[error("cannot export: {0}")]
    Invalid(String),
    /// `model.onnx` does not match the weights (or the exporter changed since it was written).
    #[error(
        "{path} is out of date with weights.safetensors ({reason}); regenerate it with `osteo export-onnx --model {dir}`"
    )]
    Stale {
        /// The ONNX file.
        path: String,
        /// The model directory.
        dir: String,
        /// What differs.
        reason: String,
    },
    /// A file is not a decodable ONNX model.
    #[error("{path} is not a readable ONNX model: {message}")]
    Decode {
        /// The file.
        path: String,
        /// The decoder's message.
        message: String,
    },
}
