//! Training and evaluation of OsteoServe models. Landed so far: cohorts (CSV or synthetic, one
//! view function, an on-disk view cache keyed by study content and view spec) and the evaluation
//! metrics (per-class one-vs-rest ROC AUC, macro AUC, accuracy, balanced accuracy, per-class
//! sensitivity, specificity and F1, confusion matrix, bootstrap confidence intervals).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod artifact;
pub mod cohort;
pub mod error;
pub mod metrics;
pub mod oracle;
pub mod split;
pub mod train;

pub use cohort::{CohortSource, Sample};
pub use error::TrainError;
pub use metrics::{Evaluation, evaluate};
