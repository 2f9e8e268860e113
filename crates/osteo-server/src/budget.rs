//! Byte budgets: a shared allowance (the study store, upload bytes in flight) from which work
//! reserves what it will hold *before* it allocates it. A [`Reservation`] gives its bytes back
//! when dropped, so every failure path releases what it took.

use crate::error::ServerError;
use std::sync::{Arc, Mutex};

/// A bounded number of bytes shared by many holders.
#[derive(Debug)]
pub struct Budget {
    key: &'static str,
    max: u64,
    used: Mutex<u64>,
}

/// Bytes taken from a [`Budget`], returned on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Budget {
    /// A budget of `max` bytes, configured by the setting `key` (named in refusals).
    pub fn new(key: &'static str, max: u64) -> Arc<Self> {
        Arc::new(Self {
            key,
            max,
            used: Mutex::new(0),
        })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configured maximum.
    pub fn max(&self) -> u64 {
        self.max
    }

    fn take(&self, bytes: u64, what: &str) -> Result<(), ServerError> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let after = used.saturating_add(bytes);
        if after > self.max {
            return Err(ServerError::ResourceExhausted(format!(
                "{what} needs {bytes} bytes but only {} of {} ({}) are free; retry later, or \
                 free space (delete studies you no longer need)",
                self.max - *used,
                self.max,
                self.key
            )));
        }
        *used = after;
        Ok(())
    }

    /// Reserves `bytes` for `what` (e.g. "the decoded study"), or RESOURCE_EXHAUSTED naming the
    /// setting when they do not fit.
    pub fn reserve(self: &Arc<Self>, bytes: u64, what: &str) -> Result<Reservation, ServerError> {
        self.take(bytes, what)?;
        Ok(Reservation {
            budget: self.clone(),
            bytes,
        })
    }
}

impl Reservation {
    /// Reserves `more` bytes on top of this reservation.
    pub fn grow(&mut self, more: u64, what: &str) -> Result<(), ServerError> {
        self.budget.take(more, what)?;
        self.bytes += more;
        Ok(())
    }

    /// Grows or shrinks the reservation to `bytes` (growing may be refused).
    pub fn resize(&mut self, bytes: u64, what: &str) -> Result<(), ServerError> {
        if bytes > self.bytes {
            self.grow(bytes - self.bytes, what)
        } else {
            let mut used = self.budget.used.lock().unwrap_or_else(|p| p.into_inner());
            *used = used.saturating_sub(self.bytes - bytes);
            self.bytes = bytes;
            Ok(())
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_refused_beyond_the_budget_and_released_on_drop() {
        let b = Budget::new("store.max_bytes", 100);
        let mut a = b.reserve(60, "a").expect("fits");
        let e = b.reserve(50, "the decoded study").expect_err("110 > 100");
        assert!(matches!(e, ServerError::ResourceExhausted(_)));
        assert!(e.to_string().contains("store.max_bytes"), "{e}");
        assert_eq!(b.used(), 60, "a refusal takes nothing");
        a.grow(40, "a").expect("exactly full");
        assert!(a.grow(1, "a").is_err());
        assert_eq!(a.bytes(), 100);
        a.resize(30, "a").expect("shrinks");
        assert_eq!(b.used(), 30);
        a.resize(100, "a").expect("grows back");
        drop(a);
        assert_eq!(b.used(), 0);
        let _c = b.reserve(100, "c").expect("free again");
    }
}
