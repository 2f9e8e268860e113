//! Errors raised by domain validation.

use thiserror::Error;

/// A domain rule was violated by input values.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CoreError {
    /// A numeric input is outside its documented valid range (values are rejected, never clamped).
    /// The message names the field and the range, never the value (patient data reaches logs
    /// through error messages).
    #[error("{field} is outside the valid range {min}..={max} {unit}")]
    OutOfRange {
        /// The field name as it appears in the API.
        field: &'static str,
        /// The rejected value.
        value: f64,
        /// The unit the value is expressed in.
        unit: &'static str,
        /// Smallest accepted value.
        min: f64,
        /// Largest accepted value.
        max: f64,
    },
    /// A numeric input is NaN or infinite.
    #[error("{field} must be a finite number")]
    NotFinite {
        /// The field name as it appears in the API.
        field: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// A supplied BMI disagrees with the one computed from height and weight.
    #[error(
        "bmi disagrees with weight_kg / height_m² by more than 5%; send consistent values or leave bmi unset"
    )]
    InconsistentBmi {
        /// The BMI the caller supplied.
        given: f64,
        /// The BMI computed from height and weight.
        derived: f64,
    },
    /// A specification (view, architecture, manifest) is unusable.
    #[error("invalid {what}: {reason}")]
    InvalidSpec {
        /// What kind of specification.
        what: &'static str,
        /// Why it is unusable.
        reason: String,
    },
    /// A text value could not be parsed into the named type.
    #[error("{field}: {message}")]
    Parse {
        /// The field name as it appears in the API.
        field: &'static str,
        /// What was wrong.
        message: String,
    },
}

/// An error and its sources on one line, `error: source: source`, each source's text left out
/// when an earlier text holds it already (libraries often repeat their cause).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
