//! Training and evaluation of OsteoServe models: cohorts (CSV or synthetic, one view function, an
//! on-disk view cache), the seeded split, the training loop, evaluation metrics with bootstrap
//! intervals, the Bayes oracle of synthetic cohorts, model directories and their report folders
//! (metrics.json, report.md, PNG plots).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod artifact;
pub mod calibration;
pub mod cohort;
pub mod error;
pub mod inference;
pub mod metrics;
pub mod oracle;
pub mod plot;
pub mod report;
pub mod split;
pub mod train;

pub use cohort::{CohortSource, Sample};
pub use error::TrainError;
pub use metrics::{Evaluation, evaluate};
