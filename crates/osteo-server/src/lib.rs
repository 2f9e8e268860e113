//! OsteoServe's server: one protocol-neutral [`engine`] (study store, models, admission, the
//! operations, audit) behind three sibling front doors in [`api`] — osteo.v1 over gRPC, the Open
//! Inference Protocol over gRPC and over REST — and the network beneath them in [`net`]
//! (accept loop, connection limits, TLS, descriptor limits), with
//! per-(model, backend) dynamic-batching workers, canary and shadow [`traffic`], grpc.health.v1, reflection, configuration,
//! logging and Prometheus metrics. Backends are plugged in through a [`Registry`]; the server
//! knows only the Backend trait.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod budget;
pub mod config;
pub mod convert;
pub mod engine;
pub mod error;
pub mod metrics_http;
pub mod models;
pub mod net;
pub mod principal;
pub mod registry;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod tokens;
pub mod traffic;
pub mod upload;

pub use config::Settings;
pub use error::ServerError;
pub use registry::Registry;
pub use server::{Listeners, serve, serve_on};
