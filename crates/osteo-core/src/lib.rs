//! Domain types shared by every OsteoServe crate: the WHO grade and T-score, validated clinical
//! variables, and the errors raised when input violates their rules.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod clinical;
pub mod error;
pub mod grade;

pub use clinical::{ClinicalInput, ClinicalVariables, RiskFlags, Sex};
pub use error::CoreError;
pub use grade::{Grade, TScore};
