//! Which studies are open: instances counted per study as they are kept, and a study complete
//! once no instance of it arrived for the idle time (a late instance opens it again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One open study.
struct Open {
    last: Instant,
    instances: usize,
}

/// The open studies, by key.
pub struct Tracker {
    open: Mutex<HashMap<String, Open>>,
    idle: Duration,
    max_instances: usize,
}

impl Tracker {
    /// No open study; a study completes after `idle` without instances and holds at most
    /// `max_instances`.
    pub fn new(idle: Duration, max_instances: usize) -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
            idle,
            max_instances,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether study `key` may take one more instance.
    pub fn admit(&self, key: &str) -> bool {
        self.lock()
            .get(key)
            .is_none_or(|o| o.instances < self.max_instances)
    }

    /// Counts an instance kept for study `key`, which stays open for the idle time from now.
    pub fn received(&self, key: &str) {
        let mut open = self.lock();
        let o = open.entry(key.to_string()).or_insert(Open {
            last: Instant::now(),
            instances: 0,
        });
        o.instances += 1;
        o.last = Instant::now();
    }

    /// Opens study `key` with `instances` already spooled (a restart), complete after the idle
    /// time from now.
    pub fn restore(&self, key: &str, instances: usize) {
        self.lock().insert(
            key.to_string(),
            Open {
                last: Instant::now(),
                instances,
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
        let t = Tracker::new(Duration::from_secs(30), 2);
        t.received("a");
        let now = Instant::now();
        assert!(t.complete(now).is_empty());
        assert_eq!(t.complete(now + Duration::from_secs(31)), ["a"]);
        assert!(t.is_empty());
        t.received("a");
        assert_eq!(t.len(), 1, "reopened");
        assert!(t.admit("a"));
        t.received("a");
        assert!(!t.admit("a"), "two instances is the limit");
    }
}
