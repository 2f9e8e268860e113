//! OsteoServe inference backend on libtorch through `tch` (DESIGN §6, §8): the network built
//! from `ArchSpec` with its parameters in a `VarStore` loaded from `weights.safetensors`, batched
//! predict, and Grad-CAM by autograd. Built only with the `tch` feature of the `osteo` package;
//! the libtorch tree comes from `scripts/fetch-libtorch.sh`.
#![deny(rust_2018_idioms, missing_docs)]

pub mod backend;
pub mod cuda;
mod network;

pub use backend::{LIBTORCH_RELEASE, TchBackend, TchOptions};
