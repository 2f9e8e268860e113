//! Clinical variables (demographics and risk flags) with units, valid ranges and validation.
//!
//! Values outside their range are rejected, never clamped: a weight in pounds sent as kilograms
//! must fail loudly rather than be graded.

use crate::error::CoreError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Valid range of age in years (adults; DXA T-scores are defined for adults).
pub const AGE_YEARS: (f64, f64) = (18.0, 110.0);
/// Valid range of height in centimetres.
pub const HEIGHT_CM: (f64, f64) = (100.0, 230.0);
/// Valid range of weight in kilograms.
pub const WEIGHT_KG: (f64, f64) = (25.0, 300.0);
/// Valid range of body-mass index in kg/m².
pub const BMI: (f64, f64) = (10.0, 80.0);
/// Largest relative difference tolerated between a supplied BMI and the derived one.
pub const BMI_TOLERANCE: f64 = 0.05;

/// Biological sex as recorded for DXA reference populations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Sex {
    /// Female.
    #[serde(rename = "F")]
    Female,
    /// Male.
    #[serde(rename = "M")]
    Male,
}

impl Sex {
    /// The one-letter DICOM code (F or M).
    pub fn code(self) -> &'static str {
        match self {
            Sex::Female => "F",
            Sex::Male => "M",
        }
    }
}

impl fmt::Display for Sex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Sex {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "F" | "FEMALE" => Ok(Sex::Female),
            "M" | "MALE" => Ok(Sex::Male),
            other => Err(CoreError::Parse {
                field: "sex",
                message: format!("unknown sex {other:?}; expected F or M"),
            }),
        }
    }
}

/// Optional clinical risk flags; `None` means unknown (models see a missing-indicator).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskFlags {
    /// A previous low-trauma (fragility) fracture.
    pub prior_fragility_fracture: Option<bool>,
    /// Current or past long-term oral glucocorticoid use.
    pub glucocorticoids: Option<bool>,
    /// Current smoker.
    pub smoker: Option<bool>,
    /// Diagnosed rheumatoid arthritis.
    pub rheumatoid_arthritis: Option<bool>,
}

/// Unvalidated clinical input as received from a caller.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClinicalInput {
    /// Age in years.
    pub age_years: f64,
    /// Biological sex.
    pub sex: Sex,
    /// Height in centimetres.
    pub height_cm: f64,
    /// Weight in kilograms.
    pub weight_kg: f64,
    /// Body-mass index in kg/m²; derived from height and weight when absent.
    pub bmi: Option<f64>,
    /// Optional risk flags.
    pub risk: RiskFlags,
}

/// Validated clinical variables: every value finite and in range, BMI always present.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClinicalVariables {
    age_years: f64,
    sex: Sex,
    height_cm: f64,
    weight_kg: f64,
    bmi: f64,
    risk: RiskFlags,
}

fn check(
    field: &'static str,
    value: f64,
    unit: &'static str,
    range: (f64, f64),
) -> Result<f64, CoreError> {
    if !value.is_finite() {
        return Err(CoreError::NotFinite { field, value });
    }
    if value < range.0 || value > range.1 {
        return Err(CoreError::OutOfRange {
            field,
            value,
            unit,
            min: range.0,
            max: range.1,
        });
    }
    Ok(value)
}

/// Body-mass index in kg/m² from height in cm and weight in kg.
pub fn bmi_from(height_cm: f64, weight_kg: f64) -> f64 {
    let m = height_cm / 100.0;
    weight_kg / (m * m)
}

impl ClinicalVariables {
    /// Validates raw input: ranges, finiteness, and BMI consistency (derived when absent).
    pub fn validate(input: ClinicalInput) -> Result<Self, CoreError> {
        let age_years = check("age_years", input.age_years, "years", AGE_YEARS)?;
        let height_cm = check("height_cm", input.height_cm, "cm", HEIGHT_CM)?;
        let weight_kg = check("weight_kg", input.weight_kg, "kg", WEIGHT_KG)?;
        let derived = bmi_from(height_cm, weight_kg);
        let bmi = match input.bmi {
            Some(given) => {
                let given = check("bmi", given, "kg/m²", BMI)?;
                if ((given - derived) / derived).abs() > BMI_TOLERANCE {
                    return Err(CoreError::InconsistentBmi { given, derived });
                }
                given
            }
            None => check(
                "bmi",
                derived,
                "kg/m² (derived from height and weight)",
                BMI,
            )?,
        };
        Ok(Self {
            age_years,
            sex: input.sex,
            height_cm,
            weight_kg,
            bmi,
            risk: input.risk,
        })
    }

    /// Age in years.
    pub fn age_years(&self) -> f64 {
        self.age_years
    }
    /// Biological sex.
    pub fn sex(&self) -> Sex {
        self.sex
    }
    /// Height in centimetres.
    pub fn height_cm(&self) -> f64 {
        self.height_cm
    }
    /// Weight in kilograms.
    pub fn weight_kg(&self) -> f64 {
        self.weight_kg
    }
    /// Body-mass index in kg/m² (supplied or derived).
    pub fn bmi(&self) -> f64 {
        self.bmi
    }
    /// Risk flags (each possibly unknown).
    pub fn risk(&self) -> RiskFlags {
        self.risk
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any numbers at all are either accepted within the documented ranges or refused with
        /// a message that names the field but never echoes the value; nothing panics.
        #[test]
        fn arbitrary_values_are_validated_without_echoing_them(
            age in prop_oneof![any::<f64>(), 0.0f64..130.0],
            height in prop_oneof![any::<f64>(), 80.0f64..250.0],
            weight in prop_oneof![any::<f64>(), 10.0f64..320.0],
            bmi in prop::option::of(prop_oneof![any::<f64>(), 5.0f64..90.0]),
        ) {
            let input = ClinicalInput {
                age_years: age,
                sex: Sex::Male,
                height_cm: height,
                weight_kg: weight,
                bmi,
                risk: RiskFlags::default(),
            };
            match ClinicalVariables::validate(input) {
                Ok(c) => {
                    let within = |v: f64, (lo, hi): (f64, f64)| (lo..=hi).contains(&v);
                    prop_assert!(within(c.age_years(), AGE_YEARS));
                    prop_assert!(within(c.height_cm(), HEIGHT_CM));
                    prop_assert!(within(c.weight_kg(), WEIGHT_KG));
                    prop_assert!(within(c.bmi(), BMI));
                }
                Err(e) => {
                    let msg = e.to_string();
                    for v in [age, height, weight].into_iter().chain(bmi) {
                        if v.is_finite() && v.fract() != 0.0 {
                            prop_assert!(!msg.contains(&v.to_string()), "{msg} echoes {v}");
                        }
                    }
                }
            }
        }
    }

    fn input() -> ClinicalInput {
        ClinicalInput {
            age_years: 67.0,
            sex: Sex::Female,
            height_cm: 160.0,
            weight_kg: 58.0,
            bmi: None,
            risk: RiskFlags::default(),
        }
    }

    #[test]
    fn derives_bmi_when_absent() {
        let v = ClinicalVariables::validate(input()).expect("valid");
        assert!((v.bmi() - 58.0 / (1.6 * 1.6)).abs() < 1e-12);
    }

    #[test]
    fn accepts_consistent_bmi_and_rejects_inconsistent() {
        let ok = ClinicalInput {
            bmi: Some(22.9),
            ..input()
        };
        assert!(ClinicalVariables::validate(ok).is_ok());
        let bad = ClinicalInput {
            bmi: Some(30.0),
            ..input()
        };
        assert!(matches!(
            ClinicalVariables::validate(bad),
            Err(CoreError::InconsistentBmi { .. })
        ));
    }

    #[test]
    fn rejects_out_of_range_instead_of_clamping() {
        let pounds = ClinicalInput {
            weight_kg: 350.0,
            ..input()
        };
        let err = ClinicalVariables::validate(pounds).expect_err("rejected");
        let msg = err.to_string();
        assert!(msg.contains("weight_kg is outside"), "{msg}");
        assert!(!msg.contains("350"), "the value is not echoed: {msg}");
        let metres = ClinicalInput {
            height_cm: 1.6,
            ..input()
        };
        assert!(matches!(
            ClinicalVariables::validate(metres),
            Err(CoreError::OutOfRange {
                field: "height_cm",
                ..
            })
        ));
        let child = ClinicalInput {
            age_years: 12.0,
            ..input()
        };
        assert!(ClinicalVariables::validate(child).is_err());
        let nan = ClinicalInput {
            age_years: f64::NAN,
            ..input()
        };
        assert!(matches!(
            ClinicalVariables::validate(nan),
            Err(CoreError::NotFinite { .. })
        ));
    }

    #[test]
    fn range_boundaries_are_inclusive() {
        let lo = ClinicalInput {
            age_years: AGE_YEARS.0,
            ..input()
        };
        let hi = ClinicalInput {
            age_years: AGE_YEARS.1,
            ..input()
        };
        assert!(ClinicalVariables::validate(lo).is_ok());
        assert!(ClinicalVariables::validate(hi).is_ok());
    }

    #[test]
    fn sex_parses_codes_and_words() {
        assert_eq!("f".parse::<Sex>().expect("ok"), Sex::Female);
        assert_eq!("Male".parse::<Sex>().expect("ok"), Sex::Male);
        assert!("x".parse::<Sex>().is_err());
    }
}
