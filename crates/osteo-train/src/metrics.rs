//! Classification metrics for the three WHO grades.

use osteo_core::Grade;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Number of classes.
const K: usize = 3;

/// ROC AUC of scores for a binary labelling (Mann–Whitney U with ties counted half);
/// `None` when one of the two classes is absent.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let n_pos = positive.iter().filter(|p| **p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    // Average ranks over ties, then U = sum of positive ranks - n_pos (n_pos + 1) / 2.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += (i..=j).filter(|&t| positive[idx[t]]).count() as f64 * avg_rank;
        i = j + 1;
    }
    let u = rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// ROC curve points `(false positive rate, true positive rate)` from the highest threshold down.
pub fn roc_curve(scores: &[f64], positive: &[bool]) -> Vec<(f64, f64)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let n_pos = positive.iter().filter(|p| **p).count().max(1) as f64;
    let n_neg = (positive.len() - positive.iter().filter(|p| **p).count()).max(1) as f64;
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut points = vec![(0.0, 0.0)];
    let mut i = 0;
    while i < idx.len() {
        let s = scores[idx[i]];
        while i < idx.len() && scores[idx[i]] == s {
            if positive[idx[i]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        points.push((fp / n_neg, tp / n_pos));
    }
    points
}

/// Sensitivity, specificity and F1 of one class (one-vs-rest on the predicted grade).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassStats {
    /// True positive rate.
    pub sensitivity: f64,
    /// True negative rate.
    pub specificity: f64,
    /// Harmonic mean of precision and sensitivity.
    pub f1: f64,
}

/// Metrics of a set of predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Samples evaluated.
    pub n: usize,
    /// One-vs-rest AUC per class (`None` where a class is absent).
    pub auc: [Option<f64>; K],
    /// Mean of the defined per-class AUCs.
    pub auc_macro: f64,
    /// Fraction predicted correctly (argmax of the probabilities).
    pub accuracy: f64,
    /// Mean per-class sensitivity.
    pub balanced_accuracy: f64,
    /// Per-class statistics.
    pub per_class: [ClassStats; K],
    /// `confusion[truth][predicted]` counts.
    pub confusion: [[usize; K]; K],
}

impl Evaluation {
    /// The headline figures as JSON: `auc_macro`, `auc` per grade (null where undefined),
    /// `accuracy`, `balanced_accuracy`.
    pub fn headline(&self) -> serde_json::Value {
        serde_json::json!({
            "auc_macro": self.auc_macro,
            "auc": {"normal": self.auc[0], "osteopenia": self.auc[1], "osteoporosis": self.auc[2]},
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
        })
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Evaluates class probabilities against the true grades.
pub fn evaluate(probs: &[[f64; K]], truth: &[Grade]) -> Evaluation {
    let n = probs.len().min(truth.len());
    let mut confusion = [[0usize; K]; K];
    for (p, t) in probs.iter().zip(truth) {
        // A row that is not numbers (a diverged model) has no predicted grade to count.
        if let Some(g) = Grade::most_probable(p) {
            confusion[t.index()][g.index()] += 1;
        }
    }
    let auc: [Option<f64>; K] = std::array::from_fn(|k| {
        let scores: Vec<f64> = probs[..n].iter().map(|p| p[k]).collect();
        let positive: Vec<bool> = truth[..n].iter().map(|t| t.index() == k).collect();
        roc_auc(&scores, &positive)
    });
    let defined: Vec<f64> = auc.iter().flatten().copied().collect();
    let auc_macro = if defined.is_empty() {
        0.0
    } else {
        defined.iter().sum::<f64>() / defined.len() as f64
    };
    let correct: usize = (0..K).map(|k| confusion[k][k]).sum();
    let per_class: [ClassStats; K] = std::array::from_fn(|k| {
        let tp = confusion[k][k];
        let actual: usize = confusion[k].iter().sum();
        let predicted: usize = (0..K).map(|t| confusion[t][k]).sum();
        let fp = predicted - tp;
        let negatives = n - actual;
        let sensitivity = ratio(tp, actual);
        let precision = ratio(tp, predicted);
        let f1 = if precision + sensitivity > 0.0 {
            2.0 * precision * sensitivity / (precision + sensitivity)
        } else {
            0.0
        };
        ClassStats {
            sensitivity,
            specificity: ratio(negatives - fp, negatives),
            f1,
        }
    });
    let present: Vec<f64> = (0..K)
        .filter(|k| confusion[*k].iter().sum::<usize>() > 0)
        .map(|k| per_class[k].sensitivity)
        .collect();
    let balanced_accuracy = if present.is_empty() {
        0.0
    } else {
        present.iter().sum::<f64>() / present.len() as f64
    };
    Evaluation {
        n,
        auc,
        auc_macro,
        accuracy: ratio(correct, n),
        balanced_accuracy,
        per_class,
        confusion,
    }
}

/// A 95% percentile-bootstrap confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// 2.5th percentile.
    pub low: f64,
    /// 97.5th percentile.
    pub high: f64,
}

/// Bootstrap intervals of the headline metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intervals {
    /// Macro AUC.
    pub auc_macro: Interval,
    /// Per-class AUC.
    pub auc: [Interval; K],
    /// Accuracy.
    pub accuracy: Interval,
    /// Balanced accuracy.
    pub balanced_accuracy: Interval,
}

/// Two models' differences on the same patients (`a` minus `b`), each with its paired 95%
/// bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairedDifference {
    /// Difference in macro AUC.
    pub auc_macro: f64,
    /// Its interval.
    pub auc_macro_ci95: Interval,
    /// Difference in accuracy.
    pub accuracy: f64,
    /// Its interval.
    pub accuracy_ci95: Interval,
}

/// The differences in macro AUC and accuracy of two models' probabilities on the same patients
/// (`a` minus `b`) with paired 95% bootstrap intervals: each resample draws the same patients
/// for both, so what the patients have in common cancels.
pub fn paired_difference(
    a: &[[f64; K]],
    b: &[[f64; K]],
    truth: &[Grade],
    resamples: usize,
    seed: u64,
) -> PairedDifference {
    let n = a.len().min(b.len()).min(truth.len());
    let diff =
        |ea: Evaluation, eb: Evaluation| (ea.auc_macro - eb.auc_macro, ea.accuracy - eb.accuracy);
    let point = diff(
        evaluate(&a[..n], &truth[..n]),
        evaluate(&b[..n], &truth[..n]),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut auc, mut acc) = (Vec::new(), Vec::new());
    for _ in 0..resamples.max(1) {
        let idx: Vec<usize> = (0..n).map(|_| rng.random_range(0..n.max(1))).collect();
        let pick = |p: &[[f64; K]]| idx.iter().map(|&i| p[i]).collect::<Vec<_>>();
        let t: Vec<Grade> = idx.iter().map(|&i| truth[i]).collect();
        let (d_auc, d_acc) = diff(evaluate(&pick(a), &t), evaluate(&pick(b), &t));
        auc.push(d_auc);
        acc.push(d_acc);
    }
    PairedDifference {
        auc_macro: point.0,
        auc_macro_ci95: percentile_interval(auc),
        accuracy: point.1,
        accuracy_ci95: percentile_interval(acc),
    }
}

fn percentile_interval(mut v: Vec<f64>) -> Interval {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
    Interval {
        low: at(0.025),
        high: at(0.975),
    }
}

/// 95% percentile-bootstrap intervals from `resamples` patient-level resamples (seeded).
pub fn bootstrap(probs: &[[f64; K]], truth: &[Grade], resamples: usize, seed: u64) -> Intervals {
    let n = probs.len().min(truth.len());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut macro_auc = Vec::with_capacity(resamples);
    let mut class_auc: [Vec<f64>; K] = Default::default();
    let mut acc = Vec::with_capacity(resamples);
    let mut bal = Vec::with_capacity(resamples);
    for _ in 0..resamples.max(1) {
        let idx: Vec<usize> = (0..n).map(|_| rng.random_range(0..n.max(1))).collect();
        let p: Vec<[f64; K]> = idx.iter().map(|&i| probs[i]).collect();
        let t: Vec<Grade> = idx.iter().map(|&i| truth[i]).collect();
        let e = evaluate(&p, &t);
        macro_auc.push(e.auc_macro);
        for (bucket, auc) in class_auc.iter_mut().zip(e.auc) {
            if let Some(a) = auc {
                bucket.push(a);
            }
        }
        acc.push(e.accuracy);
        bal.push(e.balanced_accuracy);
    }
    Intervals {
        auc_macro: percentile_interval(macro_auc),
        auc: class_auc.map(|v| {
            if v.is_empty() {
                Interval {
                    low: 0.0,
                    high: 0.0,
                }
            } else {
                percentile_interval(v)
            }
        }),
        accuracy: percentile_interval(acc),
        balanced_accuracy: percentile_interval(bal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_known_orderings() {
        assert_eq!(
            roc_auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            roc_auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        assert_eq!(roc_auc(&[0.5; 4], &[false, true, false, true]), Some(0.5));
        // One inversion out of 2 x 2 pairs.
        assert_eq!(
            roc_auc(&[0.1, 0.6, 0.5, 0.9], &[false, false, true, true]),
            Some(0.75)
        );
        // A tie between a positive and a negative counts half: 3.5 / 4.
        assert_eq!(
            roc_auc(&[0.1, 0.5, 0.5, 0.9], &[false, false, true, true]),
            Some(0.875)
        );
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn roc_curve_runs_from_origin_to_one_one() {
        let c = roc_curve(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]);
        assert_eq!(c.first(), Some(&(0.0, 0.0)));
        assert_eq!(c.last(), Some(&(1.0, 1.0)));
        assert_eq!(c[1], (0.0, 0.5));
        assert_eq!(c[2], (0.5, 0.5));
    }

    #[test]
    fn confusion_and_derived_statistics() {
        use Grade::*;
        let p = |k: usize| {
            let mut v = [0.1; 3];
            v[k] = 0.8;
            v
        };
        let probs = [p(0), p(0), p(1), p(1), p(2), p(0)];
        let truth = [
            Normal,
            Normal,
            Osteopenia,
            Osteoporosis,
            Osteoporosis,
            Osteopenia,
        ];
        let e = evaluate(&probs, &truth);
        assert_eq!(e.confusion, [[2, 0, 0], [1, 1, 0], [0, 1, 1]]);
        assert!((e.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert!((e.balanced_accuracy - (1.0 + 0.5 + 0.5) / 3.0).abs() < 1e-12);
        let normal = e.per_class[0];
        assert_eq!(normal.sensitivity, 1.0);
        assert!((normal.specificity - 3.0 / 4.0).abs() < 1e-12);
        assert!((normal.f1 - 2.0 * (2.0 / 3.0) / (2.0 / 3.0 + 1.0)).abs() < 1e-12);
    }

    #[test]
    fn bootstrap_interval_brackets_the_estimate_and_narrows_with_more_patients() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let make = |n: usize, rng: &mut ChaCha8Rng| {
            let truth: Vec<Grade> = (0..n).map(|i| Grade::ALL[i % 3]).collect();
            let probs: Vec<[f64; 3]> = truth
                .iter()
                .map(|t| {
                    let mut v: [f64; 3] = std::array::from_fn(|_| rng.random::<f64>());
                    v[t.index()] += 0.6;
                    let s: f64 = v.iter().sum();
                    v.map(|x| x / s)
                })
                .collect();
            (probs, truth)
        };
        let (p1, t1) = make(90, &mut rng);
        let (p2, t2) = make(2000, &mut rng);
        let e1 = evaluate(&p1, &t1);
        let i1 = bootstrap(&p1, &t1, 300, 1);
        let i2 = bootstrap(&p2, &t2, 300, 1);
        assert!(i1.auc_macro.low <= e1.auc_macro && e1.auc_macro <= i1.auc_macro.high);
        assert!(i2.auc_macro.high - i2.auc_macro.low < i1.auc_macro.high - i1.auc_macro.low);
        assert_eq!(bootstrap(&p1, &t1, 300, 1), i1, "seeded");
    }

    #[test]
    fn paired_difference_separates_a_better_model_and_cancels_an_equal_one() {
        let truth: Vec<Grade> = (0..90).map(|i| Grade::ALL[i % 3]).collect();
        let sure = |g: &Grade| {
            let mut p = [0.1; 3];
            p[g.index()] = 0.8;
            p
        };
        let perfect: Vec<[f64; 3]> = truth.iter().map(sure).collect();
        // Right on two patients in three, a confident wrong grade on the third.
        let worse: Vec<[f64; 3]> = truth
            .iter()
            .enumerate()
            .map(|(i, g)| {
                if i % 3 == 0 {
                    sure(&Grade::ALL[(g.index() + 1) % 3])
                } else {
                    sure(g)
                }
            })
            .collect();
        let d = paired_difference(&perfect, &worse, &truth, 200, 3);
        let (auc, ci) = (d.auc_macro, d.auc_macro_ci95);
        assert!(
            auc > 0.1 && ci.low > 0.0 && ci.low <= auc && auc <= ci.high,
            "{d:?}"
        );
        assert!(
            (d.accuracy - 1.0 / 3.0).abs() < 1e-9 && d.accuracy_ci95.low > 0.0,
            "{d:?}"
        );
        let d = paired_difference(&worse, &worse, &truth, 200, 3);
        let ci = d.auc_macro_ci95;
        assert_eq!(
            (d.auc_macro, ci.low, ci.high, d.accuracy),
            (0.0, 0.0, 0.0, 0.0)
        );
    }
}
