//! Which studies are open: instances and bytes counted per study as they are kept, and a study
//! complete once no instance of it arrived for the idle time (a late instance opens it again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One open study.
struct Open {
    last: Instant,
    instances: usize,
    bytes: u64,
}

/// The open studies, by key.
pub struct Tracker {
    open: Mutex<HashMap<String, Open>>,
    idle: Duration,
    max_instances: usize,
    max_bytes: u64,
}

impl Tracker {
    /// No open study; a study completes after `idle` without instances and holds at most
    /// `max_instances` instances and `max_bytes` bytes.
    pub fn new(idle: Duration, max_instances: usize, max_bytes: u64) -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
            idle,
            max_instances,
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether study `key` may take one more instance of `bytes`. An instance refused still
    /// keeps its study open for the idle time: the study is still arriving.
    pub fn admit(&self, key: &str, bytes: u64) -> bool {
        let mut open = self.lock();
        let Some(o) = open.get_mut(key) else {
            return bytes <= self.max_bytes;
        };
        let admitted =
            o.instances < self.max_instances && o.bytes.saturating_add(bytes) <= self.max_bytes;
        if !admitted {
            o.last = Instant::now();
        }
        admitted
    }

    /// Counts an instance of `bytes` kept for study `key`, which stays open for the idle time
    /// from now.
    pub fn received(&self, key: &str, bytes: u64) {
        let mut open = self.lock();
        let o = open.entry(key.to_string()).or_insert(Open {
            last: Instant::now(),
            instances: 0,
            bytes: 0,
        });
        o.instances += 1;
        o.bytes += bytes;
        o.last = Instant::now();
    }

    /// Opens study `key` with `instances` of `bytes` already spooled (a restart), complete
    /// after the idle time from now.
    pub fn restore(&self, key: &str, instances: usize, bytes: u64) {
        self.lock().insert(
            key.to_string(),
            Open {
                last: Instant::now(),
                instances,
                bytes,
            },
        );
    }

    /// The studies idle for the idle time at `now`, closed.
    pub fn complete(&self, now: Instant) -> Vec<String> {
        let mut open = self.lock();
        let due: Vec<String> = open
            .iter()
            .filter(|(_, o)| now.duration_since(o.last) >= self.idle)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &due {
            open.remove(k);
        }
        due
    }

    /// Open studies.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no study is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_study_completes_after_the_idle_time_and_a_late_instance_reopens_it() {
        let t = Tracker::new(Duration::from_secs(30), 2, 100);
        t.received("a", 10);
        let now = Instant::now();
        assert!(t.complete(now).is_empty());
        assert_eq!(t.complete(now + Duration::from_secs(31)), ["a"]);
        assert!(t.is_empty());
        t.received("a", 10);
        assert_eq!(t.len(), 1, "reopened");
        assert!(t.admit("a", 90));
        assert!(!t.admit("a", 91), "100 bytes is the limit");
        t.received("a", 10);
        let before = Instant::now();
        assert!(!t.admit("a", 1), "two instances is the limit");
        assert!(
            t.complete(before + Duration::from_secs(30)).is_empty(),
            "a refused instance keeps its study open"
        );
    }
}
