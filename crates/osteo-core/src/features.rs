//! Tabular features: how validated clinical variables become the model's input vector.
//!
//! Each feature has a name, a unit, a valid range (values outside it are rejected, never clamped)
//! and normalisation statistics; the manifest stores the list, so training and serving encode
//! identically. Risk flags come with a missing-indicator feature each.

use crate::clinical::{AGE_YEARS, BMI, ClinicalVariables, HEIGHT_CM, Sex, WEIGHT_KG};
use crate::error::CoreError;
use serde::{Deserialize, Serialize};

/// One input feature of a tabular branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    /// Feature name (see [`FEATURE_NAMES`]).
    pub name: String,
    /// Unit of the raw value.
    pub unit: String,
    /// Smallest accepted raw value.
    pub min: f64,
    /// Largest accepted raw value.
    pub max: f64,
    /// Normalisation mean.
    pub mean: f64,
    /// Normalisation standard deviation (positive).
    pub std: f64,
}

/// Every feature the encoder knows, in the default order: name, unit, valid range.
pub const FEATURE_NAMES: [(&str, &str, f64, f64); 13] = [
    ("age_years", "years", AGE_YEARS.0, AGE_YEARS.1),
    ("sex_female", "1 = female", 0.0, 1.0),
    ("height_cm", "cm", HEIGHT_CM.0, HEIGHT_CM.1),
    ("weight_kg", "kg", WEIGHT_KG.0, WEIGHT_KG.1),
    ("bmi", "kg/m²", BMI.0, BMI.1),
    ("prior_fragility_fracture", "1 = yes", 0.0, 1.0),
    ("prior_fragility_fracture_missing", "1 = unknown", 0.0, 1.0),
    ("glucocorticoids", "1 = yes", 0.0, 1.0),
    ("glucocorticoids_missing", "1 = unknown", 0.0, 1.0),
    ("smoker", "1 = yes", 0.0, 1.0),
    ("smoker_missing", "1 = unknown", 0.0, 1.0),
    ("rheumatoid_arthritis", "1 = yes", 0.0, 1.0),
    ("rheumatoid_arthritis_missing", "1 = unknown", 0.0, 1.0),
];

/// The raw (unnormalised) value of a named feature, `None` for an unknown name.
pub fn raw_value(name: &str, c: &ClinicalVariables) -> Option<f64> {
    let flag = |v: Option<bool>| f64::from(u8::from(v.unwrap_or(false)));
    let missing = |v: Option<bool>| f64::from(u8::from(v.is_none()));
    let r = c.risk();
    Some(match name {
        "age_years" => c.age_years(),
        "sex_female" => f64::from(u8::from(c.sex() == Sex::Female)),
        "height_cm" => c.height_cm(),
        "weight_kg" => c.weight_kg(),
        "bmi" => c.bmi(),
        "prior_fragility_fracture" => flag(r.prior_fragility_fracture),
        "prior_fragility_fracture_missing" => missing(r.prior_fragility_fracture),
        "glucocorticoids" => flag(r.glucocorticoids),
        "glucocorticoids_missing" => missing(r.glucocorticoids),
        "smoker" => flag(r.smoker),
        "smoker_missing" => missing(r.smoker),
        "rheumatoid_arthritis" => flag(r.rheumatoid_arthritis),
        "rheumatoid_arthritis_missing" => missing(r.rheumatoid_arthritis),
        _ => return None,
    })
}

/// The tabular input specification of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TabularSpec {
    /// Features in input order.
    pub features: Vec<FeatureSpec>,
}

impl TabularSpec {
    /// All known features with the given normalisation statistics (`(mean, std)` per feature in
    /// [`FEATURE_NAMES`] order).
    pub fn with_stats(stats: &[(f64, f64)]) -> Result<Self, CoreError> {
        if stats.len() != FEATURE_NAMES.len() {
            return Err(CoreError::InvalidSpec {
                what: "tabular features",
                reason: format!(
                    "{} statistics for {} features",
                    stats.len(),
                    FEATURE_NAMES.len()
                ),
            });
        }
        let features = FEATURE_NAMES
            .iter()
            .zip(stats)
            .map(|(&(name, unit, min, max), &(mean, std))| FeatureSpec {
                name: name.into(),
                unit: unit.into(),
                min,
                max,
                mean,
                std: if std > 1e-9 { std } else { 1.0 },
            })
            .collect();
        let spec = Self { features };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks names are known and statistics usable.
    pub fn validate(&self) -> Result<(), CoreError> {
        for f in &self.features {
            if !FEATURE_NAMES.iter().any(|k| k.0 == f.name) {
                return Err(CoreError::InvalidSpec {
                    what: "tabular features",
                    reason: format!("unknown feature {:?}", f.name),
                });
            }
            if !(f.std.is_finite() && f.std > 0.0 && f.mean.is_finite() && f.min <= f.max) {
                return Err(CoreError::InvalidSpec {
                    what: "tabular features",
                    reason: format!(
                        "feature {:?} needs finite mean, positive std and min <= max",
                        f.name
                    ),
                });
            }
        }
        Ok(())
    }

    /// Encodes validated clinical variables into the normalised input vector.
    pub fn encode(&self, c: &ClinicalVariables) -> Result<Vec<f32>, CoreError> {
        self.features
            .iter()
            .map(|f| {
                let v = raw_value(&f.name, c).ok_or_else(|| CoreError::InvalidSpec {
                    what: "tabular features",
                    reason: format!("unknown feature {:?}", f.name),
                })?;
                if v < f.min || v > f.max {
                    return Err(CoreError::OutOfRange {
                        field: FEATURE_NAMES
                            .iter()
                            .find(|k| k.0 == f.name)
                            .map_or("feature", |k| k.0),
                        value: v,
                        unit: "",
                        min: f.min,
                        max: f.max,
                    });
                }
                Ok(((v - f.mean) / f.std) as f32)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clinical::{ClinicalInput, RiskFlags};

    #[test]
    fn encodes_with_missing_indicators_and_normalisation() {
        let c = ClinicalVariables::validate(ClinicalInput {
            age_years: 70.0,
            sex: Sex::Female,
            height_cm: 160.0,
            weight_kg: 64.0,
            bmi: None,
            risk: RiskFlags {
                smoker: Some(true),
                ..Default::default()
            },
        })
        .expect("valid");
        let mut stats = vec![(0.0, 1.0); FEATURE_NAMES.len()];
        stats[0] = (65.0, 10.0);
        let spec = TabularSpec::with_stats(&stats).expect("spec");
        let x = spec.encode(&c).expect("encodes");
        assert_eq!(x.len(), 13);
        assert!((x[0] - 0.5).abs() < 1e-6, "age normalised");
        assert_eq!(x[1], 1.0, "female");
        assert!((x[4] - 25.0).abs() < 1e-4, "bmi derived");
        assert_eq!(&x[5..], &[0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn a_stricter_manifest_range_rejects_values() {
        let c = ClinicalVariables::validate(ClinicalInput {
            age_years: 30.0,
            sex: Sex::Male,
            height_cm: 180.0,
            weight_kg: 80.0,
            bmi: None,
            risk: RiskFlags::default(),
        })
        .expect("valid");
        let mut spec =
            TabularSpec::with_stats(&vec![(0.0, 1.0); FEATURE_NAMES.len()]).expect("spec");
        spec.features[0].min = 40.0;
        assert!(matches!(
            spec.encode(&c),
            Err(CoreError::OutOfRange {
                field: "age_years",
                ..
            })
        ));
    }
}
