//! Clinical-variable flags shared by `predict`, `classify`, `explain` and `compare`.

use clap::Args;
use osteo_core::{ClinicalInput, RiskFlags, Sex};
use osteo_proto::v1 as pb;

/// Clinical variables on the command line.
#[derive(Debug, Clone, Args)]
pub struct ClinicalArgs {
    /// Age in years.
    #[arg(long)]
    age: f64,
    /// Sex: F or M.
    #[arg(long)]
    sex: Sex,
    /// Height in centimetres.
    #[arg(long)]
    height_cm: f64,
    /// Weight in kilograms.
    #[arg(long)]
    weight_kg: f64,
    /// Prior fragility fracture (omit when unknown).
    #[arg(long)]
    prior_fracture: Option<bool>,
    /// Long-term glucocorticoid use (omit when unknown).
    #[arg(long)]
    glucocorticoids: Option<bool>,
    /// Current smoker (omit when unknown).
    #[arg(long)]
    smoker: Option<bool>,
    /// Rheumatoid arthritis (omit when unknown).
    #[arg(long)]
    rheumatoid_arthritis: Option<bool>,
}

impl ClinicalArgs {
    /// The unvalidated domain input.
    pub fn input(&self) -> ClinicalInput {
        ClinicalInput {
            age_years: self.age,
            sex: self.sex,
            height_cm: self.height_cm,
            weight_kg: self.weight_kg,
            bmi: None,
            risk: RiskFlags {
                prior_fragility_fracture: self.prior_fracture,
                glucocorticoids: self.glucocorticoids,
                smoker: self.smoker,
                rheumatoid_arthritis: self.rheumatoid_arthritis,
            },
        }
    }

    /// The request message (validated by the server).
    pub fn message(&self) -> pb::ClinicalVariables {
        pb::ClinicalVariables {
            age_years: self.age,
            sex: match self.sex {
                Sex::Female => pb::Sex::Female as i32,
                Sex::Male => pb::Sex::Male as i32,
            },
            height_cm: self.height_cm,
            weight_kg: self.weight_kg,
            bmi: None,
            prior_fragility_fracture: self.prior_fracture,
            glucocorticoids: self.glucocorticoids,
            smoker: self.smoker,
            rheumatoid_arthritis: self.rheumatoid_arthritis,
        }
    }
}
