//! The candle backend: OsteoServe's embedded, pure-Rust inference engine.
//!
//! [`Network`] builds the graph of an [`osteo_core::ArchSpec`] with candle-nn (the trainer uses
//! the same type with trainable variables); [`CandleBackend`] loads `weights.safetensors` into it
//! and implements [`osteo_core::Backend`]: batched predict in eval mode (on the CPU through the
//! folded channels-last path of `folded`), and Grad-CAM by autograd (the head is re-run on a
//! `Var` holding the detached activation, whose gradient gives alpha).
// One audited `unsafe` block: the gemm call of the CPU inference path (`folded::matmul`).
#![deny(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

mod backend;
mod folded;
mod network;

pub use backend::{CandleBackend, LIBRARY_VERSION, to_candle_device};
pub use network::Network;
