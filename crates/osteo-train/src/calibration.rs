//! Fitting a model's `[decision]` section on the validation split — temperature scaling, the
//! screening thresholds that reach a target sensitivity, the split-conformal threshold — and
//! the figures that check them on the test split: expected calibration error with a
//! reliability diagram, sensitivity / specificity / PPV / NPV with Wilson intervals, and
//! prediction-set coverage and abstention.

use crate::cohort::Sample;
use crate::error::TrainError;
use osteo_backend_candle::CandleBackend;
use osteo_core::decision::calibrated;
use osteo_core::manifest::MANIFEST_FILE;
use osteo_core::{
    DecisionSpec, Device, Grade, LoadBackend, ModelArtifacts, PredictionSet, ReferOn,
};
use serde::Serialize;

/// Bins of the expected calibration error and the reliability diagram.
pub const BINS: usize = 10;

/// What to fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionConfig {
    /// Sensitivity the referral thresholds must reach on validation.
    pub target_sensitivity: f64,
    /// Coverage of the prediction sets.
    pub coverage: f64,
    /// Which threshold decides `refer`.
    pub refer_on: ReferOn,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        Self {
            target_sensitivity: 0.9,
            coverage: 0.9,
            refer_on: ReferOn::Osteoporosis,
        }
    }
}

impl DecisionConfig {
    /// Checks both rates lie strictly between 0 and 1.
    pub fn validate(&self) -> Result<(), TrainError> {
        for (name, v) in [
            ("target sensitivity", self.target_sensitivity),
            ("coverage", self.coverage),
        ] {
            if !(v > 0.0 && v < 1.0) {
                return Err(TrainError::Setup(format!(
                    "the {name} must lie strictly between 0 and 1"
                )));
            }
        }
        Ok(())
    }
}

/// Mean negative log-likelihood of the truth under `logits / temperature`.
fn nll(logits: &[[f32; 3]], truth: &[Grade], temperature: f64) -> f64 {
    let n = logits.len().max(1) as f64;
    logits
        .iter()
        .zip(truth)
        .map(|(l, t)| {
            let p = calibrated(l, temperature)[t.index()];
            -f64::from(p.max(1e-12)).ln()
        })
        .sum::<f64>()
        / n
}

/// The temperature minimising the validation negative log-likelihood (golden-section search
/// over log T in [1/20, 20]; the likelihood is unimodal in it).
pub fn fit_temperature(logits: &[[f32; 3]], truth: &[Grade]) -> f64 {
    let f = |log_t: f64| nll(logits, truth, log_t.exp());
    let (mut a, mut b) = ((0.05f64).ln(), (20.0f64).ln());
    let r = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - r * (b - a), a + r * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..80 {
        if fc < fd {
            b = d;
            (d, fd) = (c, fc);
            c = b - r * (b - a);
            fc = f(c);
        } else {
            a = c;
            (c, fc) = (d, fd);
            d = a + r * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp()
}

/// The largest threshold at which at least `target` of the positives score at or above it:
/// the `ceil(target * n)`-th largest positive score. `None` without positives.
pub fn threshold_for_sensitivity(scores: &[f64], positive: &[bool], target: f64) -> Option<f64> {
    let mut pos: Vec<f64> = scores
        .iter()
        .zip(positive)
        .filter(|(_, p)| **p)
        .map(|(s, _)| *s)
        .collect();
    if pos.is_empty() {
        return None;
    }
    pos.sort_by(|a, b| b.total_cmp(a));
    let k = ((target * pos.len() as f64).ceil() as usize).clamp(1, pos.len());
    Some(pos[k - 1])
}

/// The split-conformal set threshold: a grade joins the set when its probability is at least
/// `1 - q`, `q` the `ceil((n + 1) coverage)`-th smallest of the scores `1 - p(truth)` (all
/// grades when that rank exceeds `n`).
pub fn conformal_threshold(probs: &[[f32; 3]], truth: &[Grade], coverage: f64) -> f64 {
    let mut scores: Vec<f64> = probs
        .iter()
        .zip(truth)
        .map(|(p, t)| 1.0 - f64::from(p[t.index()]))
        .collect();
    scores.sort_by(f64::total_cmp);
    let n = scores.len();
    let rank = ((n + 1) as f64 * coverage).ceil() as usize;
    if rank == 0 || rank > n {
        return 0.0;
    }
    (1.0 - scores[rank - 1]).clamp(0.0, 1.0)
}

/// Fits the decision section on validation logits and their true grades.
pub fn fit(
    logits: &[[f32; 3]],
    truth: &[Grade],
    config: &DecisionConfig,
) -> Result<DecisionSpec, TrainError> {
    config.validate()?;
    if logits.is_empty() || logits.len() != truth.len() {
        return Err(TrainError::Setup(
            "the validation split is empty: nothing to calibrate on".into(),
        ));
    }
    let temperature = fit_temperature(logits, truth);
    let probs: Vec<[f32; 3]> = logits.iter().map(|l| calibrated(l, temperature)).collect();
    let threshold = |on: ReferOn| {
        let scores: Vec<f64> = probs.iter().map(|p| f64::from(on.score(p))).collect();
        let positive: Vec<bool> = truth.iter().map(|t| on.positive(*t)).collect();
        threshold_for_sensitivity(&scores, &positive, config.target_sensitivity).ok_or_else(|| {
            TrainError::Setup(format!(
                "the validation split holds no {} patient: no operating point can be chosen; \
                 use a larger cohort",
                match on {
                    ReferOn::Osteoporosis => "osteoporosis",
                    ReferOn::LowBmd => "osteopenia or osteoporosis",
                }
            ))
        })
    };
    let spec = DecisionSpec {
        temperature,
        target_sensitivity: config.target_sensitivity,
        refer_on: config.refer_on,
        osteoporosis_threshold: threshold(ReferOn::Osteoporosis)?,
        low_bmd_threshold: threshold(ReferOn::LowBmd)?,
        coverage: config.coverage,
        set_threshold: conformal_threshold(&probs, truth, config.coverage),
        fitted_on: logits.len(),
        fitted_with: String::new(),
    };
    spec.validate()
        .map_err(|e| TrainError::Setup(format!("the fitted decision is invalid: {e}")))?;
    Ok(spec)
}

/// Fits the `[decision]` of the model in `artifacts` on the `validation` patients of
/// `samples` (logits through the candle backend, as served), records `command` as how it was
/// fitted, and writes `model.toml`.
pub fn calibrate_model(
    artifacts: &mut ModelArtifacts,
    samples: &[Sample],
    validation: &[usize],
    config: &DecisionConfig,
    command: &str,
) -> Result<DecisionSpec, TrainError> {
    let dir = artifacts.dir.clone();
    let io = |e: String| TrainError::Io {
        path: dir.display().to_string(),
        message: e,
    };
    let mut backend = CandleBackend::load(artifacts, Device::Cpu).map_err(|e| io(e.to_string()))?;
    let m = &artifacts.manifest;
    let logits = crate::inference::logits(&mut backend, m, samples, validation)?;
    let truth: Vec<Grade> = validation.iter().map(|&i| samples[i].grade).collect();
    let spec = DecisionSpec {
        fitted_with: command.to_string(),
        ..fit(&logits, &truth, config)?
    };
    artifacts.manifest.decision = Some(spec.clone());
    let toml = artifacts
        .manifest
        .to_toml()
        .map_err(|e| io(e.to_string()))?;
    std::fs::write(dir.join(MANIFEST_FILE), toml).map_err(|e| io(e.to_string()))?;
    Ok(spec)
}

/// One bin of a reliability diagram (top-label confidence).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bin {
    /// Samples in the bin.
    pub n: usize,
    /// Their mean confidence (probability of the predicted grade).
    pub confidence: f64,
    /// The fraction of them graded correctly.
    pub accuracy: f64,
}

/// Reliability bins of top-label confidence ([`BINS`] equal widths over 0..1) and the expected
/// calibration error: the bins' |accuracy - confidence| weighted by their share of samples.
pub fn reliability(probs: &[[f32; 3]], truth: &[Grade]) -> (Vec<Bin>, f64) {
    let mut sums = [(0usize, 0.0f64, 0usize); BINS];
    for (p, t) in probs.iter().zip(truth) {
        let Some(g) = Grade::most_probable(p) else {
            continue;
        };
        let conf = f64::from(p[g.index()]);
        let b = ((conf * BINS as f64) as usize).min(BINS - 1);
        sums[b].0 += 1;
        sums[b].1 += conf;
        sums[b].2 += usize::from(g == *t);
    }
    let total: usize = sums.iter().map(|s| s.0).sum();
    let bins: Vec<Bin> = sums
        .iter()
        .map(|&(n, conf, correct)| Bin {
            n,
            confidence: if n == 0 { 0.0 } else { conf / n as f64 },
            accuracy: if n == 0 {
                0.0
            } else {
                correct as f64 / n as f64
            },
        })
        .collect();
    let ece = bins
        .iter()
        .map(|b| b.n as f64 / total.max(1) as f64 * (b.accuracy - b.confidence).abs())
        .sum();
    (bins, ece)
}

/// A proportion with its Wilson 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    /// Successes.
    pub k: usize,
    /// Trials.
    pub n: usize,
    /// k / n (0 when n is 0).
    pub value: f64,
    /// Lower end of the 95% interval.
    pub low: f64,
    /// Upper end of the 95% interval.
    pub high: f64,
}

impl Rate {
    /// `k` of `n` with its Wilson score interval (z = 1.96).
    pub fn wilson(k: usize, n: usize) -> Self {
        if n == 0 {
            return Self {
                k,
                n,
                value: 0.0,
                low: 0.0,
                high: 1.0,
            };
        }
        let (kf, nf, z) = (k as f64, n as f64, 1.96f64);
        let p = kf / nf;
        let denom = 1.0 + z * z / nf;
        let centre = (p + z * z / (2.0 * nf)) / denom;
        let half = z * ((p * (1.0 - p) / nf) + z * z / (4.0 * nf * nf)).sqrt() / denom;
        Self {
            k,
            n,
            value: p,
            low: (centre - half).max(0.0),
            high: (centre + half).min(1.0),
        }
    }

    /// `0.912 (0.871–0.941)`.
    pub fn cell(&self) -> String {
        if self.n == 0 {
            return "n/a".into();
        }
        format!("{:.3} ({:.3}–{:.3})", self.value, self.low, self.high)
    }
}

/// Sensitivity, specificity, PPV and NPV of a binary decision.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Screening {
    /// Positives flagged among all positives.
    pub sensitivity: Rate,
    /// Negatives not flagged among all negatives.
    pub specificity: Rate,
    /// Positives among the flagged.
    pub ppv: Rate,
    /// Negatives among the not flagged.
    pub npv: Rate,
    /// Fraction flagged.
    pub flagged: f64,
}

impl Screening {
    /// The figures of `flag` against `positive`.
    pub fn of(flag: &[bool], positive: &[bool]) -> Self {
        let count = |f: bool, p: bool| {
            flag.iter()
                .zip(positive)
                .filter(|(a, b)| **a == f && **b == p)
                .count()
        };
        let (tp, fp, tn, fn_) = (
            count(true, true),
            count(true, false),
            count(false, false),
            count(false, true),
        );
        Self {
            sensitivity: Rate::wilson(tp, tp + fn_),
            specificity: Rate::wilson(tn, tn + fp),
            ppv: Rate::wilson(tp, tp + fp),
            npv: Rate::wilson(tn, tn + fn_),
            flagged: (tp + fp) as f64 / flag.len().max(1) as f64,
        }
    }
}

/// How the prediction sets behave on a split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SetFigures {
    /// Samples whose set holds their true grade.
    pub coverage: Rate,
    /// Samples whose set spans normal to osteoporosis.
    pub indeterminate: Rate,
    /// Mean number of grades per set.
    pub mean_size: f64,
    /// Samples with sets of 1, 2 and 3 grades.
    pub sizes: [usize; 3],
}

/// The prediction sets of calibrated `probs` at `threshold` against the truth.
pub fn set_figures(probs: &[[f32; 3]], truth: &[Grade], threshold: f64) -> SetFigures {
    let sets: Vec<PredictionSet> = probs
        .iter()
        .map(|p| PredictionSet::of(p, threshold))
        .collect();
    let n = sets.len();
    let covered = sets
        .iter()
        .zip(truth)
        .filter(|(s, t)| s.contains(**t))
        .count();
    let indeterminate = sets.iter().filter(|s| s.indeterminate()).count();
    let mut sizes = [0usize; 3];
    for s in &sets {
        if let Some(slot) = s.len().checked_sub(1).and_then(|i| sizes.get_mut(i)) {
            *slot += 1;
        }
    }
    SetFigures {
        coverage: Rate::wilson(covered, n),
        indeterminate: Rate::wilson(indeterminate, n),
        mean_size: sets.iter().map(|s| s.len()).sum::<usize>() as f64 / n.max(1) as f64,
        sizes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Logits whose softmax at temperature `t` is the true posterior of the drawn grade.
    fn overconfident(n: usize, t: f32, seed: u64) -> (Vec<[f32; 3]>, Vec<Grade>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut logits = Vec::new();
        let mut truth = Vec::new();
        for _ in 0..n {
            let base: [f32; 3] = std::array::from_fn(|_| rng.random_range(-2.0..2.0));
            let p = calibrated(&base, 1.0);
            let u: f32 = rng.random();
            let g = if u < p[0] {
                Grade::Normal
            } else if u < p[0] + p[1] {
                Grade::Osteopenia
            } else {
                Grade::Osteoporosis
            };
            logits.push(base.map(|v| v * t));
            truth.push(g);
        }
        (logits, truth)
    }

    #[test]
    fn temperature_scaling_recovers_the_overconfidence_and_lowers_the_ece() {
        let (logits, truth) = overconfident(4000, 3.0, 7);
        let t = fit_temperature(&logits, &truth);
        assert!((t - 3.0).abs() < 0.3, "fitted {t}, drawn 3");
        let raw: Vec<[f32; 3]> = logits.iter().map(|l| calibrated(l, 1.0)).collect();
        let cal: Vec<[f32; 3]> = logits.iter().map(|l| calibrated(l, t)).collect();
        let (_, before) = reliability(&raw, &truth);
        let (_, after) = reliability(&cal, &truth);
        assert!(after < before / 2.0, "ECE {before} -> {after}");
    }

    #[test]
    fn the_threshold_reaches_the_target_sensitivity() {
        let scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05];
        let positive = [true; 10];
        assert_eq!(
            threshold_for_sensitivity(&scores, &positive, 0.9),
            Some(0.1)
        );
        assert_eq!(
            threshold_for_sensitivity(&scores, &positive, 0.85),
            Some(0.1)
        );
        assert_eq!(
            threshold_for_sensitivity(&scores, &positive, 0.8),
            Some(0.2)
        );
        assert_eq!(threshold_for_sensitivity(&scores, &[false; 10], 0.9), None);
    }

    #[test]
    fn conformal_sets_cover_unseen_samples_at_the_target() {
        let (logits, truth) = overconfident(6000, 1.0, 11);
        let probs: Vec<[f32; 3]> = logits.iter().map(|l| calibrated(l, 1.0)).collect();
        let threshold = conformal_threshold(&probs[..3000], &truth[..3000], 0.9);
        let figures = set_figures(&probs[3000..], &truth[3000..], threshold);
        assert!(
            (figures.coverage.value - 0.9).abs() < 0.02,
            "coverage {:?}",
            figures.coverage
        );
        assert!(figures.mean_size > 1.0 && figures.mean_size < 3.0);
        assert_eq!(figures.sizes.iter().sum::<usize>(), 3000);
    }

    #[test]
    fn fitting_refuses_a_split_without_positives_and_bad_rates() {
        let logits = vec![[1.0f32, 0.0, -1.0]; 20];
        let truth = vec![Grade::Normal; 20];
        let e = fit(&logits, &truth, &DecisionConfig::default()).expect_err("no positives");
        assert!(e.to_string().contains("no osteoporosis patient"), "{e}");
        let bad = DecisionConfig {
            coverage: 1.0,
            ..DecisionConfig::default()
        };
        assert!(fit(&logits, &truth, &bad).is_err());
    }

    #[test]
    fn wilson_intervals_match_the_textbook_values() {
        let r = Rate::wilson(81, 100);
        assert!(
            (r.low - 0.722).abs() < 0.002 && (r.high - 0.875).abs() < 0.002,
            "{r:?}"
        );
        let s = Screening::of(&[true, true, false, false], &[true, false, false, true]);
        assert_eq!((s.sensitivity.k, s.sensitivity.n), (1, 2));
        assert_eq!((s.npv.k, s.npv.n), (1, 2));
        assert!((s.flagged - 0.5).abs() < 1e-12);
    }
}
