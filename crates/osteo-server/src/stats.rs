//! Per-model inference statistics in Triton's terms (ModelStatistics): requests that succeeded
//! or failed and their durations, samples inferred, backend executions, queue and compute time.
//! Lock-free counters, updated by the workers and by the inference RPCs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and a total duration.
#[derive(Debug, Default)]
pub struct Tally {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Tally {
    /// Adds `count` events that took `ns` nanoseconds together.
    pub fn add(&self, count: u64, ns: u64) {
        self.count.fetch_add(count, Ordering::Relaxed);
        self.ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The count and the total nanoseconds.
    pub fn get(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.ns.load(Ordering::Relaxed),
        )
    }
}

/// Nanoseconds of a duration, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One model's statistics (every backend together).
#[derive(Debug, Default)]
pub struct ModelStats {
    /// Inference requests that succeeded, end to end.
    pub success: Tally,
    /// Inference requests that failed, end to end.
    pub fail: Tally,
    /// Samples' time in the batching queue.
    pub queue: Tally,
    /// Backend time, counted once per sample of each batch.
    pub compute: Tally,
    /// Backend executions (batches).
    pub executions: AtomicU64,
    /// When the last batch ran, milliseconds since the Unix epoch.
    pub last_inference_ms: AtomicU64,
}

impl ModelStats {
    /// Records one backend execution of `samples` samples that took `took`.
    pub fn executed(&self, samples: usize, took: Duration) {
        self.executions.fetch_add(1, Ordering::Relaxed);
        self.compute
            .add(samples as u64, nanos(took).saturating_mul(samples as u64));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.last_inference_ms.store(now, Ordering::Relaxed);
    }

    /// Records a sample's wait in the queue.
    pub fn queued(&self, waited: Duration) {
        self.queue.add(1, nanos(waited));
    }

    /// Records an inference request's outcome.
    pub fn finished(&self, ok: bool, took: Duration) {
        if ok { &self.success } else { &self.fail }.add(1, nanos(took));
    }
}
