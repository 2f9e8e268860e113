//! OsteoServe inference backend on ONNX Runtime (DESIGN §6, §8). The library is loaded at run
//! time (`ort` with `load-dynamic`) from `ORT_DYLIB_PATH` or the project's default location;
//! the model is the `model.onnx` the exporter writes from `weights.safetensors`.
#![deny(rust_2018_idioms, missing_docs)]

pub mod backend;
pub mod library;

pub use backend::{OrtBackend, OrtOptions};
pub use library::{DYLIB_ENV, ORT_RELEASE, library_path};
