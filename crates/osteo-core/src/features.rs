//! Tabular features: how validated clinical variables become the model's input vector.
//!
//! Each feature has a name, a unit, a valid range (values outside it are rejected, never clamped)
//! and normalisation statistics; the manifest stores the list, so training and serving encode
//! identically. Risk flags come with a missing-indicator feature each. A model may also read
//! what was measured on its CT study (the trabecular attenuation of the lumbar vertebrae and the
//! femoral necks, [`Measured`]); each such feature comes with a missing indicator too, set when
//! the study did not show the site.

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

/// The features measured on the CT study: name, unit, plausible range. A measurement outside
/// the range counts as not measured (it is the server's own measurement, not the client's
/// input, so it is never a reason to refuse a request).
pub const MEASURED_FEATURES: [(&str, &str, f64, f64); 4] = [
    (LUMBAR_HU, "HU", -300.0, 1000.0),
    ("lumbar_trabecular_hu_missing", "1 = not measured", 0.0, 1.0),
    (FEMORAL_NECK_HU, "HU", -300.0, 1000.0),
    (
        "femoral_neck_trabecular_hu_missing",
        "1 = not measured",
        0.0,
        1.0,
    ),
];

/// Mean calibrated trabecular HU of the lumbar bodies L1-L4 measured on the study.
pub const LUMBAR_HU: &str = "lumbar_trabecular_hu";
/// Mean calibrated trabecular HU of the femoral necks measured on the study.
pub const FEMORAL_NECK_HU: &str = "femoral_neck_trabecular_hu";

/// What was measured on a patient's CT study for the model's measured features.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Mean calibrated trabecular HU of the lumbar bodies L1-L4 that were measured whole.
    pub lumbar_hu: Option<f64>,
    /// Mean calibrated trabecular HU of the femoral necks that were measured.
    pub femoral_neck_hu: Option<f64>,
}

impl Measured {
    /// Nothing measured (no study, or the study showed neither site).
    pub const NONE: Measured = Measured {
        lumbar_hu: None,
        femoral_neck_hu: None,
    };

    /// A measurement within its feature's plausible range, `None` otherwise.
    fn plausible(value: Option<f64>, feature: &str) -> Option<f64> {
        let (_, _, min, max) = MEASURED_FEATURES.iter().find(|f| f.0 == feature)?;
        value.filter(|v| v.is_finite() && (*min..=*max).contains(v))
    }
}

/// Whether `name` is a feature measured on the CT study.
pub fn is_measured(name: &str) -> bool {
    MEASURED_FEATURES.iter().any(|f| f.0 == name)
}

/// The name, unit and range of a known feature.
fn known(name: &str) -> Option<&'static (&'static str, &'static str, f64, f64)> {
    FEATURE_NAMES
        .iter()
        .chain(MEASURED_FEATURES.iter())
        .find(|f| f.0 == name)
}

/// The raw (unnormalised) value of a named feature, `None` for an unknown name. A measured
/// feature that was not measured takes its normalisation `mean` (so it encodes as 0) and its
/// missing indicator 1.
pub fn raw_value(name: &str, c: &ClinicalVariables, m: &Measured, mean: f64) -> Option<f64> {
    let flag = |v: Option<bool>| f64::from(u8::from(v.unwrap_or(false)));
    let missing = |v: Option<bool>| f64::from(u8::from(v.is_none()));
    let lumbar = Measured::plausible(m.lumbar_hu, LUMBAR_HU);
    let neck = Measured::plausible(m.femoral_neck_hu, FEMORAL_NECK_HU);
    let r = c.risk();
    Some(match name {
        LUMBAR_HU => lumbar.unwrap_or(mean),
        "lumbar_trabecular_hu_missing" => f64::from(u8::from(lumbar.is_none())),
        FEMORAL_NECK_HU => neck.unwrap_or(mean),
        "femoral_neck_trabecular_hu_missing" => f64::from(u8::from(neck.is_none())),
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
    /// The clinical features ([`FEATURE_NAMES`]) with the given normalisation statistics
    /// (`(mean, std)` per feature in that order).
    pub fn with_stats(stats: &[(f64, f64)]) -> Result<Self, CoreError> {
        let names: Vec<&str> = FEATURE_NAMES.iter().map(|f| f.0).collect();
        Self::with_features(&names, stats)
    }

    /// The named known features, in this order, with the given normalisation statistics.
    pub fn with_features(names: &[&str], stats: &[(f64, f64)]) -> Result<Self, CoreError> {
        if stats.len() != names.len() {
            return Err(CoreError::InvalidSpec {
                what: "tabular features",
                reason: format!("{} statistics for {} features", stats.len(), names.len()),
            });
        }
        let features = names
            .iter()
            .zip(stats)
            .map(|(name, &(mean, std))| {
                let &(name, unit, min, max) =
                    known(name).ok_or_else(|| CoreError::InvalidSpec {
                        what: "tabular features",
                        reason: format!("unknown feature {name:?}"),
                    })?;
                Ok(FeatureSpec {
                    name: name.into(),
                    unit: unit.into(),
                    min,
                    max,
                    mean,
                    std: if std > 1e-9 { std } else { 1.0 },
                })
            })
            .collect::<Result<_, CoreError>>()?;
        let spec = Self { features };
        spec.validate()?;
        Ok(spec)
    }

    /// Whether the model reads features measured on its CT study.
    pub fn reads_measured(&self) -> bool {
        self.features.iter().any(|f| is_measured(&f.name))
    }

    /// Checks names are known, unique and statistics usable.
    pub fn validate(&self) -> Result<(), CoreError> {
        for (i, f) in self.features.iter().enumerate() {
            if self.features[..i].iter().any(|g| g.name == f.name) {
                return Err(CoreError::InvalidSpec {
                    what: "tabular features",
                    reason: format!("feature {:?} is listed twice", f.name),
                });
            }
            if known(&f.name).is_none() {
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

    /// Encodes validated clinical variables and what was measured on the study (`Measured::NONE`
    /// for models that read no measured feature) into the normalised input vector.
    pub fn encode(&self, c: &ClinicalVariables, m: &Measured) -> Result<Vec<f32>, CoreError> {
        self.features
            .iter()
            .map(|f| {
                let v = raw_value(&f.name, c, m, f.mean).ok_or_else(|| CoreError::InvalidSpec {
                    what: "tabular features",
                    reason: format!("unknown feature {:?}", f.name),
                })?;
                if v < f.min || v > f.max {
                    return Err(CoreError::OutOfRange {
                        field: known(&f.name).map_or("feature", |k| k.0),
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

    /// A 70-year-old woman, 160 cm and 64 kg (BMI 25), with these risk flags.
    fn woman(risk: RiskFlags) -> ClinicalVariables {
        ClinicalVariables::validate(ClinicalInput {
            age_years: 70.0,
            sex: Sex::Female,
            height_cm: 160.0,
            weight_kg: 64.0,
            bmi: None,
            risk,
        })
        .expect("valid")
    }

    #[test]
    fn encodes_with_missing_indicators_and_normalisation() {
        let c = woman(RiskFlags {
            smoker: Some(true),
            ..Default::default()
        });
        let mut stats = vec![(0.0, 1.0); FEATURE_NAMES.len()];
        stats[0] = (65.0, 10.0);
        let spec = TabularSpec::with_stats(&stats).expect("spec");
        let x = spec.encode(&c, &Measured::NONE).expect("encodes");
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
            spec.encode(&c, &Measured::NONE),
            Err(CoreError::OutOfRange {
                field: "age_years",
                ..
            })
        ));
    }

    #[test]
    fn measured_features_encode_with_missing_indicators() {
        let c = woman(RiskFlags::default());
        let names = ["age_years", LUMBAR_HU, "lumbar_trabecular_hu_missing"];
        let spec = TabularSpec::with_features(&names, &[(0.0, 1.0), (120.0, 40.0), (0.0, 1.0)])
            .expect("spec");
        assert!(spec.reads_measured());
        let seen = Measured {
            lumbar_hu: Some(80.0),
            femoral_neck_hu: None,
        };
        assert_eq!(
            spec.encode(&c, &seen).expect("encodes"),
            vec![70.0, -1.0, 0.0]
        );
        // Not measured, or an implausible measurement: the mean and the indicator.
        assert_eq!(
            spec.encode(&c, &Measured::NONE).expect("encodes"),
            vec![70.0, 0.0, 1.0]
        );
        let odd = Measured {
            lumbar_hu: Some(5000.0),
            femoral_neck_hu: None,
        };
        assert_eq!(
            spec.encode(&c, &odd).expect("encodes"),
            vec![70.0, 0.0, 1.0]
        );
        assert!(
            !TabularSpec::with_stats(&[(0.0, 1.0); 13])
                .expect("spec")
                .reads_measured()
        );
        assert!(TabularSpec::with_features(&["age_years", "age_years"], &[(0.0, 1.0); 2]).is_err());
        assert!(TabularSpec::with_features(&["shoe_size"], &[(0.0, 1.0)]).is_err());
    }
}
