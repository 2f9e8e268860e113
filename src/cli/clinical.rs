//! Clinical-variable flags shared by `predict`, `classify`, `explain` and `compare`.

use clap::Args;
use osteo_core::{ClinicalInput, RiskFlags, Sex};
use osteo_proto::v1 as pb;

/// Clinical variables on the command line.
#[derive(Debug, Clone, Args)]
pub struct ClinicalArgs {
    /// Age in years.
    #[arg(long, required_unless_present = "clinical_from_dicom")]
    age: Option<f64>,
    /// Sex: F or M.
    #[arg(long, required_unless_present = "clinical_from_dicom")]
    sex: Option<Sex>,
    /// Height in centimetres.
    #[arg(long, required_unless_present = "clinical_from_dicom")]
    height_cm: Option<f64>,
    /// Weight in kilograms.
    #[arg(long, required_unless_present = "clinical_from_dicom")]
    weight_kg: Option<f64>,
    /// Take age, sex, height and weight not given as flags from the study's DICOM header
    /// (PatientAge or PatientBirthDate and StudyDate, PatientSex, PatientSize, PatientWeight).
    #[arg(long)]
    clinical_from_dicom: bool,
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
    /// Whether the header completes the variables (`--clinical-from-dicom`).
    pub fn reads_header(&self) -> bool {
        self.clinical_from_dicom
    }

    /// The unvalidated domain input, completed from `header` with `--clinical-from-dicom`
    /// (flags given win).
    pub fn input(
        &self,
        header: Option<&osteo_dicom::Demographics>,
    ) -> anyhow::Result<ClinicalInput> {
        let explicit = osteo_dicom::Explicit {
            age_years: self.age,
            sex: self.sex,
            height_cm: self.height_cm,
            weight_kg: self.weight_kg,
        };
        let c = match (self.clinical_from_dicom, header) {
            (true, Some(h)) => h.complete(explicit)?,
            (true, None) => {
                anyhow::bail!("--clinical-from-dicom reads the study's header: pass --dicom PATH")
            }
            (false, _) => osteo_dicom::Completed {
                age_years: explicit.age_years.unwrap_or_default(),
                sex: explicit.sex.unwrap_or(Sex::Female),
                height_cm: explicit.height_cm.unwrap_or_default(),
                weight_kg: explicit.weight_kg.unwrap_or_default(),
            },
        };
        Ok(ClinicalInput {
            age_years: c.age_years,
            sex: c.sex,
            height_cm: c.height_cm,
            weight_kg: c.weight_kg,
            bmi: None,
            risk: RiskFlags {
                prior_fragility_fracture: self.prior_fracture,
                glucocorticoids: self.glucocorticoids,
                smoker: self.smoker,
                rheumatoid_arthritis: self.rheumatoid_arthritis,
            },
        })
    }

    /// The request message (validated by the server; unset variables are zero, for the server
    /// to take from the header when `from_dicom`).
    pub fn message(&self) -> pb::ClinicalVariables {
        pb::ClinicalVariables {
            age_years: self.age.unwrap_or_default(),
            sex: match self.sex {
                Some(Sex::Female) => pb::Sex::Female as i32,
                Some(Sex::Male) => pb::Sex::Male as i32,
                None => pb::Sex::Unspecified as i32,
            },
            height_cm: self.height_cm.unwrap_or_default(),
            weight_kg: self.weight_kg.unwrap_or_default(),
            bmi: None,
            prior_fragility_fracture: self.prior_fracture,
            glucocorticoids: self.glucocorticoids,
            smoker: self.smoker,
            rheumatoid_arthritis: self.rheumatoid_arthritis,
        }
    }
}
