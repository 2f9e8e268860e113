//! One shadow pair's running figures: counts by outcome, the confusion matrix between primary
//! and shadow grades, probability differences and latencies, exported to Prometheus as they
//! change, and a report over the most recent comparisons with bootstrap confidence intervals.

use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::sync::Mutex;

/// One comparison of a primary and a shadow answer.
#[derive(Debug, Clone, Copy)]
pub struct Comparison {
    /// The primary's grade (class index).
    pub primary: usize,
    /// The shadow's grade (class index).
    pub shadow: usize,
    /// The largest difference of a class probability.
    pub max_abs_diff: f64,
    /// The primary's inference time, ms.
    pub primary_ms: f64,
    /// The shadow's inference time, ms.
    pub shadow_ms: f64,
}

/// A figure with its 95% bootstrap interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Interval {
    /// The estimate over the window.
    pub estimate: f64,
    /// 2.5th percentile of the bootstrap distribution.
    pub low: f64,
    /// 97.5th percentile of the bootstrap distribution.
    pub high: f64,
}

/// A pair's report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairReport {
    /// Mirrored requests compared, since start.
    pub compared: u64,
    /// Mirrored requests dropped (queue full, target busy), since start.
    pub dropped: u64,
    /// Mirrored requests whose shadow failed, since start.
    pub failed: u64,
    /// Compared requests whose grades differed, since start.
    pub disagreements: u64,
    /// Primary grade (rows) by shadow grade (columns), row-major, since start.
    pub confusion: [[u64; 3]; 3],
    /// Largest probability difference, since start.
    pub max_abs_diff: f64,
    /// Comparisons the intervals are computed over (the most recent).
    pub window: usize,
    /// Share of equal grades.
    pub agreement: Interval,
    /// Cohen's kappa of the grades.
    pub kappa: Interval,
    /// Mean of the largest class-probability difference.
    pub mean_abs_diff: Interval,
    /// Mean shadow inference time over mean primary inference time.
    pub latency_ratio: Interval,
}

#[derive(Default)]
struct Inner {
    compared: u64,
    dropped: u64,
    failed: u64,
    confusion: [[u64; 3]; 3],
    max_abs_diff: f64,
    window: VecDeque<Comparison>,
}

/// A pair's statistics, shared by the runner that adds to them and the report that reads them.
pub struct PairStats {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl PairStats {
    /// Empty statistics keeping the last `capacity` comparisons.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a dropped mirror.
    pub fn dropped(&self) {
        self.lock().dropped += 1;
    }

    /// Counts a failed shadow.
    pub fn failed(&self) {
        self.lock().failed += 1;
    }

    /// Adds a comparison; answers the agreement and kappa since start (for the gauges).
    pub fn compared(&self, c: Comparison) -> (f64, f64) {
        let mut s = self.lock();
        s.compared += 1;
        if c.primary < 3 && c.shadow < 3 {
            s.confusion[c.primary][c.shadow] += 1;
        }
        s.max_abs_diff = s.max_abs_diff.max(c.max_abs_diff);
        if s.window.len() == self.capacity {
            s.window.pop_front();
        }
        s.window.push_back(c);
        agreement_and_kappa(&s.confusion)
    }

    /// The report, with `resamples` bootstrap resamples of the window (seeded: the same window
    /// gives the same intervals).
    pub fn report(&self, resamples: usize) -> PairReport {
        let (mut r, window) = {
            let s = self.lock();
            let r = PairReport {
                compared: s.compared,
                dropped: s.dropped,
                failed: s.failed,
                disagreements: s.compared - (0..3).map(|k| s.confusion[k][k]).sum::<u64>(),
                confusion: s.confusion,
                max_abs_diff: s.max_abs_diff,
                window: s.window.len(),
                ..PairReport::default()
            };
            (r, s.window.iter().copied().collect::<Vec<_>>())
        };
        if window.is_empty() {
            return r;
        }
        let point = figures(window.iter());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(window.len() as u64);
        let mut draws: [Vec<f64>; 4] = Default::default();
        for _ in 0..resamples {
            let sample = (0..window.len()).map(|_| &window[rng.random_range(0..window.len())]);
            for (d, v) in draws.iter_mut().zip(figures(sample)) {
                d.push(v);
            }
        }
        let mut interval = |i: usize| {
            let d = &mut draws[i];
            d.sort_by(f64::total_cmp);
            let at = |q: f64| {
                if d.is_empty() {
                    point[i]
                } else {
                    d[((d.len() - 1) as f64 * q).round() as usize]
                }
            };
            Interval {
                estimate: point[i],
                low: at(0.025),
                high: at(0.975),
            }
        };
        r.agreement = interval(0);
        r.kappa = interval(1);
        r.mean_abs_diff = interval(2);
        r.latency_ratio = interval(3);
        r
    }
}

/// Agreement, kappa, mean |Δp| and latency ratio of some comparisons.
fn figures<'a>(cs: impl Iterator<Item = &'a Comparison>) -> [f64; 4] {
    let mut confusion = [[0u64; 3]; 3];
    let (mut n, mut diff, mut pms, mut sms) = (0usize, 0f64, 0f64, 0f64);
    for c in cs {
        if c.primary < 3 && c.shadow < 3 {
            confusion[c.primary][c.shadow] += 1;
        }
        n += 1;
        diff += c.max_abs_diff;
        pms += c.primary_ms;
        sms += c.shadow_ms;
    }
    let (agreement, kappa) = agreement_and_kappa(&confusion);
    let ratio = if pms > 0.0 { sms / pms } else { 0.0 };
    [agreement, kappa, diff / n.max(1) as f64, ratio]
}

/// The share of the diagonal and Cohen's kappa of a confusion matrix (kappa is 1 when both
/// raters agree on everything, even on a single class, where chance agreement is 1 too).
pub fn agreement_and_kappa(m: &[[u64; 3]; 3]) -> (f64, f64) {
    let n: u64 = m.iter().flatten().sum();
    if n == 0 {
        return (0.0, 0.0);
    }
    let n = n as f64;
    let observed = (0..3).map(|k| m[k][k]).sum::<u64>() as f64 / n;
    let expected: f64 = (0..3)
        .map(|k| {
            let row: u64 = m[k].iter().sum();
            let col: u64 = (0..3).map(|r| m[r][k]).sum();
            (row as f64 / n) * (col as f64 / n)
        })
        .sum();
    let kappa = if observed >= 1.0 {
        1.0
    } else if expected >= 1.0 {
        0.0
    } else {
        (observed - expected) / (1.0 - expected)
    };
    (observed, kappa)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(primary: usize, shadow: usize) -> Comparison {
        Comparison {
            primary,
            shadow,
            max_abs_diff: if primary == shadow { 0.01 } else { 0.4 },
            primary_ms: 1.0,
            shadow_ms: 2.0,
        }
    }

    #[test]
    fn kappa_matches_a_worked_example() {
        // 50 pairs: 20+15 agree on classes 0 and 1, 5 on class 2.
        let m = [[20, 5, 0], [3, 15, 2], [0, 0, 5]];
        let (a, k) = agreement_and_kappa(&m);
        assert!((a - 0.8).abs() < 1e-12);
        // Expected: (25*23 + 20*20 + 5*7) / 2500 = 0.404.
        assert!((k - (0.8 - 0.404) / (1.0 - 0.404)).abs() < 1e-12, "{k}");
        assert_eq!(
            agreement_and_kappa(&[[7, 0, 0], [0, 0, 0], [0, 0, 0]]),
            (1.0, 1.0)
        );
    }

    #[test]
    fn the_report_brackets_its_estimates_and_keeps_only_the_window() {
        let s = PairStats::new(100);
        for i in 0..150 {
            s.compared(if i % 10 == 0 {
                c(0, 1)
            } else {
                c(i % 3, i % 3)
            });
        }
        s.dropped();
        let r = s.report(500);
        assert_eq!((r.compared, r.dropped, r.window), (150, 1, 100));
        assert_eq!(r.disagreements, 15);
        assert_eq!(r.confusion.iter().flatten().sum::<u64>(), 150);
        assert!((r.agreement.estimate - 0.9).abs() < 1e-12);
        for i in [r.agreement, r.kappa, r.mean_abs_diff, r.latency_ratio] {
            assert!(i.low <= i.estimate && i.estimate <= i.high, "{i:?}");
        }
        assert!(r.agreement.high - r.agreement.low > 0.0);
        assert!((r.latency_ratio.estimate - 2.0).abs() < 1e-12);
        assert_eq!(s.report(500), r, "seeded");
    }
}
