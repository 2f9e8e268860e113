//! What a clinician acts on besides the grade (model.toml's `[decision]`, fitted by the trainer
//! on the validation split): temperature scaling that calibrates the probabilities, the
//! screening operating point that decides referral for DXA, and the split-conformal threshold
//! that turns the probabilities into a prediction set, indeterminate when it spans normal to
//! osteoporosis. A model without the section grades as before and decides nothing.

use crate::error::CoreError;
use crate::grade::Grade;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Which probability the referral threshold applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferOn {
    /// P(osteoporosis).
    #[default]
    Osteoporosis,
    /// P(osteopenia) + P(osteoporosis): low bone density of either grade.
    LowBmd,
}

impl ReferOn {
    /// The name used in model.toml, APIs and reports.
    pub fn name(self) -> &'static str {
        match self {
            ReferOn::Osteoporosis => "osteoporosis",
            ReferOn::LowBmd => "low_bmd",
        }
    }

    /// Whether a grade is a positive of this target.
    pub fn positive(self, grade: Grade) -> bool {
        match self {
            ReferOn::Osteoporosis => grade == Grade::Osteoporosis,
            ReferOn::LowBmd => grade != Grade::Normal,
        }
    }

    /// The probability of this target from calibrated class probabilities.
    pub fn score(self, p: &[f32; 3]) -> f32 {
        match self {
            ReferOn::Osteoporosis => p[2],
            ReferOn::LowBmd => p[1] + p[2],
        }
    }
}

impl std::str::FromStr for ReferOn {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [ReferOn::Osteoporosis, ReferOn::LowBmd]
            .into_iter()
            .find(|r| r.name() == s.trim())
            .ok_or_else(|| CoreError::Parse {
                field: "refer_on",
                message: "expected osteoporosis or low_bmd".into(),
            })
    }
}

impl fmt::Display for ReferOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// model.toml's `[decision]`: everything fitted on the validation split after training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionSpec {
    /// Logits are divided by it before the softmax (temperature scaling, > 0).
    pub temperature: f64,
    /// The sensitivity the referral thresholds were chosen to reach on validation.
    pub target_sensitivity: f64,
    /// Which threshold decides `refer`.
    #[serde(default)]
    pub refer_on: ReferOn,
    /// Refer when calibrated P(osteoporosis) is at least this.
    pub osteoporosis_threshold: f64,
    /// Refer when calibrated P(osteopenia) + P(osteoporosis) is at least this.
    pub low_bmd_threshold: f64,
    /// The coverage the prediction sets were calibrated for, e.g. 0.9.
    pub coverage: f64,
    /// A grade joins the prediction set when its calibrated probability is at least this
    /// (1 minus the conformal quantile of the validation non-conformity scores).
    pub set_threshold: f64,
    /// Validation patients the section was fitted on.
    pub fitted_on: usize,
    /// The command that fitted it (`osteo train` or `osteo calibrate`).
    #[serde(default)]
    pub fitted_with: String,
}

fn bad(reason: String) -> CoreError {
    CoreError::InvalidSpec {
        what: "model manifest [decision]",
        reason,
    }
}

impl DecisionSpec {
    /// Checks every value is in its range.
    pub fn validate(&self) -> Result<(), CoreError> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(bad("temperature must be a positive number".into()));
        }
        for (name, v) in [
            ("target_sensitivity", self.target_sensitivity),
            ("osteoporosis_threshold", self.osteoporosis_threshold),
            ("low_bmd_threshold", self.low_bmd_threshold),
            ("coverage", self.coverage),
            ("set_threshold", self.set_threshold),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(bad(format!("{name} must lie in 0..=1")));
            }
        }
        Ok(())
    }

    /// The threshold `refer` uses.
    pub fn refer_threshold(&self) -> f64 {
        match self.refer_on {
            ReferOn::Osteoporosis => self.osteoporosis_threshold,
            ReferOn::LowBmd => self.low_bmd_threshold,
        }
    }

    /// Calibrated probabilities of one sample's logits (class order).
    pub fn calibrate(&self, logits: &[f32; 3]) -> [f32; 3] {
        calibrated(logits, self.temperature)
    }

    /// The decision on calibrated probabilities.
    pub fn decide(&self, p: &[f32; 3]) -> Decision {
        let refer = f64::from(self.refer_on.score(p)) >= self.refer_threshold();
        let prediction_set = PredictionSet::of(p, self.set_threshold);
        Decision {
            refer,
            refer_on: self.refer_on,
            refer_threshold: self.refer_threshold(),
            prediction_set,
            indeterminate: prediction_set.indeterminate(),
            coverage: self.coverage,
        }
    }
}

/// Softmax of `logits / temperature`.
pub fn calibrated(logits: &[f32; 3], temperature: f64) -> [f32; 3] {
    let t = temperature as f32;
    let p = crate::backend::softmax(&[logits[0] / t, logits[1] / t, logits[2] / t]);
    [p[0], p[1], p[2]]
}

/// The grades a split-conformal prediction set holds, as a bit per grade; serialised as the
/// list of grade names in class order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PredictionSet(u8);

impl Serialize for PredictionSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.grades())
    }
}

impl PredictionSet {
    /// The grades whose probability is at least `threshold`; never empty: when no grade reaches
    /// it, the most probable one.
    pub fn of(p: &[f32; 3], threshold: f64) -> Self {
        let mut bits = 0u8;
        for g in Grade::ALL {
            if f64::from(p[g.index()]) >= threshold {
                bits |= 1 << g.index();
            }
        }
        if bits == 0 {
            bits = Grade::most_probable(p).map_or(0, |g| 1 << g.index());
        }
        Self(bits)
    }

    /// A set from its grades.
    pub fn from_grades(grades: &[Grade]) -> Self {
        Self(grades.iter().fold(0, |b, g| b | (1 << g.index())))
    }

    /// Whether the set holds `grade`.
    pub fn contains(self, grade: Grade) -> bool {
        self.0 & (1 << grade.index()) != 0
    }

    /// The grades in class order.
    pub fn grades(self) -> Vec<Grade> {
        Grade::ALL
            .into_iter()
            .filter(|g| self.contains(*g))
            .collect()
    }

    /// Number of grades in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty (only a set built from no grades).
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether the set spans normal to osteoporosis: the model cannot tell.
    pub fn indeterminate(self) -> bool {
        self.contains(Grade::Normal) && self.contains(Grade::Osteoporosis)
    }

    /// The grade names joined by `|`, e.g. `osteopenia|osteoporosis`.
    pub fn joined(self) -> String {
        self.grades()
            .iter()
            .map(|g| g.name())
            .collect::<Vec<_>>()
            .join("|")
    }
}

/// What a result decides beyond its grade; serialised (CLI JSON) with these field names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Decision {
    /// Whether the patient should be referred for DXA.
    pub refer: bool,
    /// What the referral threshold applies to.
    pub refer_on: ReferOn,
    /// The threshold on that probability.
    pub refer_threshold: f64,
    /// The grades the conformal prediction set holds.
    pub prediction_set: PredictionSet,
    /// Whether the set spans normal to osteoporosis: the model cannot tell.
    pub indeterminate: bool,
    /// The coverage the set is calibrated for.
    pub coverage: f64,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A decision section for tests.
    pub(crate) fn spec() -> DecisionSpec {
        DecisionSpec {
            temperature: 2.0,
            target_sensitivity: 0.9,
            refer_on: ReferOn::Osteoporosis,
            osteoporosis_threshold: 0.2,
            low_bmd_threshold: 0.5,
            coverage: 0.9,
            set_threshold: 0.15,
            fitted_on: 100,
            fitted_with: String::new(),
        }
    }

    #[test]
    fn temperature_softens_without_changing_the_grade() {
        let logits = [2.0f32, 0.5, -1.0];
        let raw = calibrated(&logits, 1.0);
        let soft = spec().calibrate(&logits);
        assert!(soft[0] < raw[0] && soft[2] > raw[2]);
        assert_eq!(Grade::most_probable(&raw), Grade::most_probable(&soft));
        assert!((soft.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn refer_follows_the_chosen_threshold() {
        let s = spec();
        assert!(s.decide(&[0.5, 0.3, 0.2]).refer, "0.2 reaches 0.2");
        assert!(!s.decide(&[0.5, 0.31, 0.19]).refer);
        let low = DecisionSpec {
            refer_on: ReferOn::LowBmd,
            ..s
        };
        assert!(low.decide(&[0.5, 0.31, 0.19]).refer, "0.5 reaches 0.5");
        assert!(!low.decide(&[0.6, 0.3, 0.1]).refer);
    }

    #[test]
    fn prediction_sets_hold_every_grade_above_the_threshold_and_never_none() {
        let s = spec();
        let d = s.decide(&[0.5, 0.3, 0.2]);
        assert_eq!(d.prediction_set.grades(), Grade::ALL.to_vec());
        assert!(d.indeterminate);
        let d = s.decide(&[0.05, 0.8, 0.15]);
        assert_eq!(d.prediction_set.joined(), "osteopenia|osteoporosis");
        assert!(!d.indeterminate);
        let narrow = PredictionSet::of(&[0.4, 0.35, 0.25], 0.9);
        assert_eq!(
            narrow.grades(),
            vec![Grade::Normal],
            "the argmax when none reaches"
        );
        assert!(
            PredictionSet::from_grades(&[Grade::Normal, Grade::Osteoporosis]).indeterminate(),
            "a set without osteopenia still spans normal to osteoporosis"
        );
    }

    #[test]
    fn out_of_range_values_are_refused() {
        assert!(spec().validate().is_ok());
        for broken in [
            DecisionSpec {
                temperature: 0.0,
                ..spec()
            },
            DecisionSpec {
                temperature: f64::NAN,
                ..spec()
            },
            DecisionSpec {
                coverage: 1.5,
                ..spec()
            },
            DecisionSpec {
                set_threshold: -0.1,
                ..spec()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
        }
    }
}
