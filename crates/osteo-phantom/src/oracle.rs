//! The Bayes oracle: each patient's posterior grade probabilities given exactly what the record
//! and the image carry under the generative model, the ceiling any model can reach (DESIGN §10).
//!
//! An ideal observer reads three numbers from the CT, each with the scanner calibration offset
//! included and voxel noise averaged away: the mean trabecular HU of the vertebrae, the femoral
//! trabecular HU, and the cortical HU ([`ImageEvidence`]). Under [`ImageModel`] they are linear in
//! the T-score plus correlated Gaussian deviations (individual, per-vertebra, cortical,
//! calibration). The record gives the prior mean of T through [`TScoreModel::mean`]; unknown risk
//! flags are summed out with their prior probabilities. Conjugate Gaussian algebra then gives the
//! posterior of T for every flag combination, weighted by how well it explains the image, and the
//! grade probabilities are normal CDFs at the WHO cut-offs (on the two-decimal rounded T-score).
//! The image-only oracle uses the population distribution of the prior mean instead of the record
//! (a Monte-Carlo mixture of [`Oracle::POPULATION`] draws).

use crate::anatomy::{Anatomy, ImageModel};
use crate::patient::{Patient, TScoreModel, TrueFlags};

/// Continuous T below which the rounded T-score is osteoporosis (rounding to 0.01).
const T_OSTEOPOROSIS: f64 = -2.495;
/// Continuous T at or above which the rounded T-score is normal.
const T_NORMAL: f64 = -1.005;

/// What an ideal observer reads from a patient's CT (HU, calibration offset included).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageEvidence {
    /// Mean trabecular HU over the vertebrae.
    pub spine_hu: f64,
    /// Femoral trabecular HU.
    pub femur_hu: f64,
    /// Cortical bone HU.
    pub cortex_hu: f64,
}

impl ImageEvidence {
    /// The evidence in a drawn anatomy.
    pub fn of(a: &Anatomy) -> Self {
        let n = a.vertebrae.len().max(1) as f64;
        let spine = a.vertebrae.iter().map(|v| v.hu_trabecular).sum::<f64>() / n;
        Self {
            spine_hu: spine + a.calibration_hu,
            femur_hu: a.hu_femoral + a.calibration_hu,
            cortex_hu: a.hu_cortical + a.calibration_hu,
        }
    }

    fn vector(&self) -> [f64; 3] {
        [self.spine_hu, self.femur_hu, self.cortex_hu]
    }
}

/// Standard normal CDF (Abramowitz & Stegun 7.1.26 erf, |error| < 1.5e-7).
pub fn normal_cdf(x: f64) -> f64 {
    let z = x / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    0.5 * (1.0 + if z >= 0.0 { erf } else { -erf })
}

/// Grade probabilities of a Gaussian belief about T.
fn grade_probs(mean: f64, sd: f64) -> [f64; 3] {
    let porosis = normal_cdf((T_OSTEOPOROSIS - mean) / sd).clamp(0.0, 1.0);
    let normal = (1.0 - normal_cdf((T_NORMAL - mean) / sd)).clamp(0.0, 1.0 - porosis);
    [normal, (1.0 - normal - porosis).max(0.0), porosis]
}

fn inverse3(m: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    let c =
        |r0: usize, c0: usize, r1: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    let adj = [
        [c(1, 1, 2, 2), -c(0, 1, 2, 2), c(0, 1, 1, 2)],
        [-c(1, 0, 2, 2), c(0, 0, 2, 2), -c(0, 0, 1, 2)],
        [c(1, 0, 2, 1), -c(0, 0, 2, 1), c(0, 0, 1, 1)],
    ];
    adj.map(|row| row.map(|v| v / det))
}

/// The oracle of one generative model.
#[derive(Debug, Clone)]
pub struct Oracle {
    model: TScoreModel,
    /// Intercepts of the evidence.
    m0: [f64; 3],
    /// `b' Sigma^-1` (row vector).
    b_sigma_inv: [f64; 3],
    /// `b' Sigma^-1 b`.
    q: f64,
    /// Prior means of T over the population (for the image-only oracle).
    population: Vec<f64>,
}

impl Oracle {
    /// Draws used to represent the population prior of the image-only oracle.
    pub const POPULATION: usize = 4000;

    /// The oracle of a T-score model and an image model.
    pub fn new(model: TScoreModel, image: ImageModel) -> Self {
        let b = [image.spine[1], image.femur[1], image.cortex[1]];
        let m0 = [image.spine[0], image.femur[0], image.cortex[0]];
        let (vi, vv, vc, vk) = (
            image.sd_individual.powi(2),
            image.sd_vertebra.powi(2) / image.vertebrae.max(1) as f64,
            image.sd_cortex.powi(2),
            image.sd_calibration.powi(2),
        );
        let sigma = [
            [vi + vv + vk, vi + vk, vk],
            [vi + vk, vi + vk, vk],
            [vk, vk, vc + vk],
        ];
        let inv = inverse3(sigma);
        let b_sigma_inv: [f64; 3] = std::array::from_fn(|j| (0..3).map(|i| b[i] * inv[i][j]).sum());
        let q = (0..3).map(|j| b_sigma_inv[j] * b[j]).sum();
        let population = (0..Self::POPULATION as u64)
            .map(|i| model.patient(0x000D_AC1E, i).t_mean)
            .collect();
        Self {
            model,
            m0,
            b_sigma_inv,
            q,
            population,
        }
    }

    /// Every completion of the recorded flags with its prior weight, as prior means of T.
    fn prior_means(&self, p: &Patient) -> Vec<(f64, f64)> {
        let probs = self.model.flag_probabilities(p.sex, p.age_years);
        let truth = [
            p.flags.prior_fragility_fracture,
            p.flags.glucocorticoids,
            p.flags.smoker,
            p.flags.rheumatoid_arthritis,
        ];
        let mut out = Vec::with_capacity(16);
        for combo in 0u32..16 {
            let mut weight = 1.0;
            let mut flags = [false; 4];
            let mut consistent = true;
            for k in 0..4 {
                let bit = combo & (1 << k) != 0;
                if p.flags_unknown[k] {
                    weight *= if bit { probs[k] } else { 1.0 - probs[k] };
                    flags[k] = bit;
                } else if bit != truth[k] {
                    consistent = false;
                } else {
                    flags[k] = bit;
                }
            }
            if consistent {
                let f = TrueFlags {
                    prior_fragility_fracture: flags[0],
                    glucocorticoids: flags[1],
                    smoker: flags[2],
                    rheumatoid_arthritis: flags[3],
                };
                out.push((weight, self.model.mean(p.sex, p.age_years, p.bmi(), f)));
            }
        }
        out
    }

    /// Grade probabilities from a mixture of Gaussian priors `(weight, mean)` with the model's
    /// latent SD, optionally updated by image evidence.
    fn mixture(&self, priors: &[(f64, f64)], evidence: Option<&ImageEvidence>) -> [f64; 3] {
        let s2 = self.model.sigma_latent.powi(2);
        let Some(e) = evidence else {
            let total: f64 = priors.iter().map(|p| p.0).sum();
            let sd = s2.sqrt();
            return priors.iter().fold([0.0; 3], |acc, (w, mu)| {
                let g = grade_probs(*mu, sd);
                std::array::from_fn(|k| acc[k] + w / total * g[k])
            });
        };
        let o = e.vector();
        let r: f64 = (0..3)
            .map(|j| self.b_sigma_inv[j] * (o[j] - self.m0[j]))
            .sum();
        let precision = 1.0 / s2 + self.q;
        let sd = precision.sqrt().recip();
        // log p(o | mu) up to a constant: ((r + mu/s2)^2 / P - mu^2 / s2) / 2.
        let logs: Vec<f64> = priors
            .iter()
            .map(|(w, mu)| w.ln() + 0.5 * ((r + mu / s2).powi(2) / precision - mu * mu / s2))
            .collect();
        let max = logs.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v));
        let weights: Vec<f64> = logs.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        priors
            .iter()
            .zip(&weights)
            .fold([0.0; 3], |acc, ((_, mu), w)| {
                let g = grade_probs((r + mu / s2) / precision, sd);
                std::array::from_fn(|k| acc[k] + w / total * g[k])
            })
    }

    /// Posterior grade probabilities from the record alone.
    pub fn tabular(&self, p: &Patient) -> [f64; 3] {
        self.mixture(&self.prior_means(p), None)
    }

    /// Posterior grade probabilities from the image alone (population prior).
    pub fn image(&self, e: &ImageEvidence) -> [f64; 3] {
        let priors: Vec<(f64, f64)> = self.population.iter().map(|mu| (1.0, *mu)).collect();
        self.mixture(&priors, Some(e))
    }

    /// Posterior grade probabilities from the record and the image: the ceiling.
    pub fn fused(&self, p: &Patient, e: &ImageEvidence) -> [f64; 3] {
        self.mixture(&self.prior_means(p), Some(e))
    }
}

impl Default for Oracle {
    fn default() -> Self {
        Self::new(TScoreModel::default(), ImageModel::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_cdf_matches_known_values() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(-1.0) - 0.158_655_25).abs() < 1e-6);
    }

    #[test]
    fn probabilities_sum_to_one_and_evidence_sharpens_them() {
        let oracle = Oracle::default();
        let model = TScoreModel::default();
        let spec = crate::anatomy::PhantomSpec::default();
        let (mut ll_tabular, mut ll_fused) = (0.0, 0.0);
        for i in 0..300 {
            let p = model.patient(5, i);
            let e = ImageEvidence::of(&Anatomy::draw(&p, &spec));
            for probs in [oracle.tabular(&p), oracle.image(&e), oracle.fused(&p, &e)] {
                assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{probs:?}");
                assert!(probs.iter().all(|v| (0.0..=1.0).contains(v)));
            }
            let truth = p.grade.index();
            ll_tabular += oracle.tabular(&p)[truth].max(1e-12).ln();
            ll_fused += oracle.fused(&p, &e)[truth].max(1e-12).ln();
        }
        assert!(
            ll_fused > ll_tabular + 30.0,
            "image evidence must help: fused {ll_fused:.1}, record alone {ll_tabular:.1}"
        );
    }
}
