//! Training and evaluation of OsteoServe models. This increment holds the evaluation metrics
//! (per-class one-vs-rest ROC AUC, macro AUC, accuracy, balanced accuracy, per-class sensitivity,
//! specificity and F1, confusion matrix, bootstrap confidence intervals).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod metrics;

pub use metrics::{Evaluation, evaluate};
