//! Synthetic patients: demographics, risk flags and the T-score model.

use crate::rng;
use osteo_core::{ClinicalInput, Grade, RiskFlags, Sex, TScore};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// Parameters of the T-score model (see the crate documentation for the formula).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TScoreModel {
    /// Probability that a patient is female.
    pub p_female: f64,
    /// Mean T-score of a 50-year-old with BMI 25 and no risk flags: `[female, male]`.
    pub intercept: [f64; 2],
    /// T-score loss per year of age over 50: `[female, male]`.
    pub age_slope: [f64; 2],
    /// T-score gain per kg/m² of BMI above 25.
    pub bmi_coef: f64,
    /// T-score shift of a prior fragility fracture.
    pub fracture: f64,
    /// T-score shift of glucocorticoid use.
    pub glucocorticoids: f64,
    /// T-score shift of smoking.
    pub smoker: f64,
    /// T-score shift of rheumatoid arthritis.
    pub rheumatoid_arthritis: f64,
    /// Standard deviation of the latent term no demographic variable reveals.
    pub sigma_latent: f64,
    /// Probability that any one risk flag is missing from the record.
    pub p_flag_unknown: f64,
}

impl Default for TScoreModel {
    fn default() -> Self {
        Self {
            p_female: 0.62,
            intercept: [-0.6, -0.25],
            age_slope: [0.055, 0.035],
            bmi_coef: 0.085,
            fracture: 0.55,
            glucocorticoids: 0.45,
            smoker: 0.25,
            rheumatoid_arthritis: 0.35,
            sigma_latent: 0.85,
            p_flag_unknown: 0.08,
        }
    }
}

/// True risk-flag values of a patient (the record may hide some: see [`Patient::recorded_risk`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrueFlags {
    /// Prior fragility fracture.
    pub prior_fragility_fracture: bool,
    /// Glucocorticoid use.
    pub glucocorticoids: bool,
    /// Smoker.
    pub smoker: bool,
    /// Rheumatoid arthritis.
    pub rheumatoid_arthritis: bool,
}

/// One synthetic patient with known ground truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Patient {
    /// Index in the cohort.
    pub index: u64,
    /// Cohort seed.
    pub seed: u64,
    /// Synthetic identifier, `S<seed>-P<index>`.
    pub id: String,
    /// Age in years.
    pub age_years: f64,
    /// Sex.
    pub sex: Sex,
    /// Height in cm.
    pub height_cm: f64,
    /// Weight in kg.
    pub weight_kg: f64,
    /// True risk flags.
    pub flags: TrueFlags,
    /// Which flags the record hides (same order as [`TrueFlags`]).
    pub flags_unknown: [bool; 4],
    /// Mean T-score given the demographics and true flags (μ of the model).
    pub t_mean: f64,
    /// The T-score.
    pub t_score: f64,
    /// WHO grade of the T-score.
    pub grade: Grade,
}

fn normal(r: &mut ChaCha8Rng, mean: f64, sd: f64) -> f64 {
    let z: f64 = StandardNormal.sample(r);
    mean + sd * z
}

fn truncated(r: &mut ChaCha8Rng, mean: f64, sd: f64, lo: f64, hi: f64) -> f64 {
    for _ in 0..64 {
        let v = normal(r, mean, sd);
        if (lo..=hi).contains(&v) {
            return v;
        }
    }
    mean.clamp(lo, hi)
}

/// Rounds to `d` decimals (records carry realistic precision).
fn round(v: f64, d: i32) -> f64 {
    let f = 10f64.powi(d);
    (v * f).round() / f
}

impl TScoreModel {
    /// The model mean μ for given demographics and true flags.
    pub fn mean(&self, sex: Sex, age: f64, bmi: f64, flags: TrueFlags) -> f64 {
        let s = usize::from(sex == Sex::Male);
        let mut mu =
            self.intercept[s] - self.age_slope[s] * (age - 50.0) + self.bmi_coef * (bmi - 25.0);
        for (on, shift) in [
            (flags.prior_fragility_fracture, self.fracture),
            (flags.glucocorticoids, self.glucocorticoids),
            (flags.smoker, self.smoker),
            (flags.rheumatoid_arthritis, self.rheumatoid_arthritis),
        ] {
            if on {
                mu -= shift;
            }
        }
        mu
    }

    /// Prior probabilities of the four risk flags (fracture, glucocorticoids, smoker, rheumatoid
    /// arthritis) for a patient's sex and age.
    pub fn flag_probabilities(&self, sex: Sex, age: f64) -> [f64; 4] {
        [
            (0.04 + 0.005 * (age - 50.0).max(0.0)).min(0.5),
            0.07,
            if sex == Sex::Female { 0.12 } else { 0.22 },
            0.05,
        ]
    }

    /// Draws patient `index` of the cohort with `seed`.
    pub fn patient(&self, seed: u64, index: u64) -> Patient {
        let r = &mut rng::stream(seed, index, 0);
        let sex = if r.random_bool(self.p_female) {
            Sex::Female
        } else {
            Sex::Male
        };
        let age = round(truncated(r, 66.0, 10.0, 40.0, 95.0), 0);
        let base_h = if sex == Sex::Female {
            normal(r, 159.0, 6.5)
        } else {
            normal(r, 172.0, 7.0)
        };
        let height = round(
            (base_h - 0.15 * (age - 60.0).max(0.0)).clamp(135.0, 205.0),
            1,
        );
        let bmi = truncated(r, 25.0, 4.0, 16.0, 45.0);
        let weight = round(bmi * (height / 100.0).powi(2), 1);
        let bmi = weight / (height / 100.0).powi(2);
        let [pf, pg, ps, pr] = self.flag_probabilities(sex, age);
        let flags = TrueFlags {
            prior_fragility_fracture: r.random_bool(pf),
            glucocorticoids: r.random_bool(pg),
            smoker: r.random_bool(ps),
            rheumatoid_arthritis: r.random_bool(pr),
        };
        let flags_unknown = std::array::from_fn(|_| r.random_bool(self.p_flag_unknown));
        let t_mean = self.mean(sex, age, bmi, flags);
        let t_score = round(
            (t_mean + normal(r, 0.0, self.sigma_latent)).clamp(-5.5, 3.5),
            2,
        );
        let grade = TScore::new(t_score)
            .map(TScore::grade)
            .unwrap_or(Grade::Osteoporosis);
        Patient {
            index,
            seed,
            id: format!("S{seed}-P{index:06}"),
            age_years: age,
            sex,
            height_cm: height,
            weight_kg: weight,
            flags,
            flags_unknown,
            t_mean,
            t_score,
            grade,
        }
    }
}

impl Patient {
    /// The risk flags as recorded (hidden ones `None`).
    pub fn recorded_risk(&self) -> RiskFlags {
        let f = self.flags;
        let k = self.flags_unknown;
        let rec = |known_hidden: bool, v: bool| (!known_hidden).then_some(v);
        RiskFlags {
            prior_fragility_fracture: rec(k[0], f.prior_fragility_fracture),
            glucocorticoids: rec(k[1], f.glucocorticoids),
            smoker: rec(k[2], f.smoker),
            rheumatoid_arthritis: rec(k[3], f.rheumatoid_arthritis),
        }
    }

    /// The patient's record as clinical input (BMI left to be derived, hidden flags unknown).
    pub fn clinical_input(&self) -> ClinicalInput {
        ClinicalInput {
            age_years: self.age_years,
            sex: self.sex,
            height_cm: self.height_cm,
            weight_kg: self.weight_kg,
            bmi: None,
            risk: self.recorded_risk(),
        }
    }

    /// Body-mass index in kg/m².
    pub fn bmi(&self) -> f64 {
        osteo_core::clinical::bmi_from(self.height_cm, self.weight_kg)
    }
}

/// Draws patients `0..n` of the cohort with `seed`.
pub fn cohort(model: &TScoreModel, seed: u64, n: usize) -> Vec<Patient> {
    (0..n as u64).map(|i| model.patient(seed, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use osteo_core::ClinicalVariables;

    #[test]
    fn cohort_is_reproducible_and_independent_of_size() {
        let m = TScoreModel::default();
        let a = cohort(&m, 7, 50);
        let b = cohort(&m, 7, 20);
        assert_eq!(a[..20], b[..]);
        assert_ne!(cohort(&m, 8, 20), b);
    }

    #[test]
    fn patients_are_valid_clinical_input_and_grades_match_t_scores() {
        let m = TScoreModel::default();
        for p in cohort(&m, 3, 2000) {
            ClinicalVariables::validate(p.clinical_input())
                .expect("synthetic patients are valid input");
            assert_eq!(TScore::new(p.t_score).expect("valid").grade(), p.grade);
        }
    }

    #[test]
    fn cohort_has_all_grades_in_plausible_proportions() {
        let m = TScoreModel::default();
        let ps = cohort(&m, 11, 3012);
        let count = |g| ps.iter().filter(|p| p.grade == g).count() as f64 / ps.len() as f64;
        let (n, o, p) = (
            count(Grade::Normal),
            count(Grade::Osteopenia),
            count(Grade::Osteoporosis),
        );
        // Each class well represented (the paper's cohort had all three in substantial numbers).
        assert!(
            n > 0.2 && o > 0.25 && p > 0.12,
            "normal {n:.2}, osteopenia {o:.2}, osteoporosis {p:.2}"
        );
        // Older women have lower T-scores on average, as in the model.
        let mean = |f: &dyn Fn(&Patient) -> bool| {
            let v: Vec<f64> = ps.iter().filter(|p| f(p)).map(|p| p.t_score).collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        assert!(
            mean(&|p| p.sex == Sex::Female && p.age_years > 75.0)
                < mean(&|p| p.sex == Sex::Female && p.age_years < 55.0) - 0.8
        );
    }
}
