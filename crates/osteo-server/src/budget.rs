//! Byte budgets: a shared allowance (the study store, upload bytes in flight) from which work
//! reserves what it will hold *before* it allocates it. A [`Reservation`] gives its bytes back
//! when dropped, so every failure path releases what it took. A budget may also cap the share
//! of one holder (a principal, or an unauthenticated peer), so that one client cannot take the
//! whole allowance from the others.

use crate::error::ServerError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A bounded number of bytes shared by many holders.
#[derive(Debug)]
pub struct Budget {
    key: &'static str,
    max: u64,
    /// The most one holder may have reserved at once, and the setting that says so.
    share: Option<(&'static str, u64)>,
    used: Mutex<Usage>,
}

/// Bytes reserved now, in all and per holder.
#[derive(Debug, Default)]
struct Usage {
    total: u64,
    by_holder: HashMap<Arc<str>, u64>,
}

/// Bytes taken from a [`Budget`], returned on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    holder: Option<Arc<str>>,
    bytes: u64,
}

impl Budget {
    /// A budget of `max` bytes, configured by the setting `key` (named in refusals).
    pub fn new(key: &'static str, max: u64) -> Arc<Self> {
        Arc::new(Self {
            key,
            max,
            share: None,
            used: Mutex::new(Usage::default()),
        })
    }

    /// A budget of `max` bytes of which one holder may reserve at most `share` (configured by
    /// `share_key`; 0 = no cap beyond `max`).
    pub fn shared(key: &'static str, max: u64, share_key: &'static str, share: u64) -> Arc<Self> {
        Arc::new(Self {
            key,
            max,
            share: (share > 0).then_some((share_key, share)),
            used: Mutex::new(Usage::default()),
        })
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.usage().total
    }

    /// Bytes `holder` has reserved now.
    pub fn used_by(&self, holder: &str) -> u64 {
        self.usage().by_holder.get(holder).copied().unwrap_or(0)
    }

    /// The configured maximum.
    pub fn max(&self) -> u64 {
        self.max
    }

    fn take(&self, holder: Option<&Arc<str>>, bytes: u64, what: &str) -> Result<(), ServerError> {
        // More than the whole budget or one holder's share: no retry can pass.
        if bytes > self.max {
            return Err(ServerError::TooLarge(format!(
                "{what} needs {bytes} bytes, more than the whole {} bytes ({}) allow",
                self.max, self.key
            )));
        }
        let share = holder.and(self.share);
        if let Some((share_key, share)) = share
            && bytes > share
        {
            return Err(ServerError::TooLarge(format!(
                "{what} needs {bytes} bytes, more than one client may hold at once \
                 ({share} bytes, {share_key})"
            )));
        }
        let mut used = self.usage();
        let after = used.total.saturating_add(bytes);
        if after > self.max {
            return Err(ServerError::ResourceExhausted(format!(
                "{what} needs {bytes} more bytes but only {} of {} ({}) are free; retry later, \
                 or free space (delete studies you no longer need)",
                self.max - used.total,
                self.max,
                self.key
            )));
        }
        if let (Some(h), Some((share_key, share))) = (holder, share) {
            let mine = used.by_holder.get(h).copied().unwrap_or(0);
            if mine.saturating_add(bytes) > share {
                return Err(ServerError::ResourceExhausted(format!(
                    "{what} needs {bytes} more bytes but this client already holds {mine} of \
                     the {share} one client may hold at once ({share_key}); finish or cancel \
                     its other uploads and requests first"
                )));
            }
            *used.by_holder.entry(h.clone()).or_insert(0) += bytes;
        }
        used.total = after;
        Ok(())
    }

    fn give_back(&self, holder: Option<&Arc<str>>, bytes: u64) {
        let mut used = self.usage();
        used.total = used.total.saturating_sub(bytes);
        if let Some(h) = holder
            && let Some(mine) = used.by_holder.get_mut(h)
        {
            *mine = mine.saturating_sub(bytes);
            if *mine == 0 {
                used.by_holder.remove(h);
            }
        }
    }

    /// Reserves `bytes` for `what` (e.g. "the decoded study"), or RESOURCE_EXHAUSTED naming the
    /// setting when they do not fit.
    pub fn reserve(self: &Arc<Self>, bytes: u64, what: &str) -> Result<Reservation, ServerError> {
        self.take(None, bytes, what)?;
        Ok(Reservation {
            budget: self.clone(),
            holder: None,
            bytes,
        })
    }

    /// Reserves `bytes` for `what` on behalf of `holder`, within the holder's share.
    pub fn reserve_for(
        self: &Arc<Self>,
        holder: &str,
        bytes: u64,
        what: &str,
    ) -> Result<Reservation, ServerError> {
        let holder: Arc<str> = Arc::from(holder);
        self.take(Some(&holder), bytes, what)?;
        Ok(Reservation {
            budget: self.clone(),
            holder: Some(holder),
            bytes,
        })
    }
}

impl Reservation {
    /// Reserves `more` bytes on top of this reservation.
    pub fn grow(&mut self, more: u64, what: &str) -> Result<(), ServerError> {
        self.budget.take(self.holder.as_ref(), more, what)?;
        self.bytes += more;
        Ok(())
    }

    /// Grows or shrinks the reservation to `bytes` (growing may be refused).
    pub fn resize(&mut self, bytes: u64, what: &str) -> Result<(), ServerError> {
        if bytes > self.bytes {
            self.grow(bytes - self.bytes, what)
        } else {
            self.budget
                .give_back(self.holder.as_ref(), self.bytes - bytes);
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
        self.budget.give_back(self.holder.as_ref(), self.bytes);
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

    #[test]
    fn one_holder_cannot_take_more_than_its_share() {
        let b = Budget::shared("inflight", 100, "inflight_per_principal", 60);
        let mut alice = b.reserve_for("alice", 50, "the upload").expect("fits");
        let e = alice.grow(11, "the upload").expect_err("61 > 60");
        assert!(e.to_string().contains("inflight_per_principal"), "{e}");
        let e = b
            .reserve_for("alice", 11, "the request body")
            .expect_err("her second request counts too");
        assert!(matches!(e, ServerError::ResourceExhausted(_)));
        assert_eq!(b.used_by("alice"), 50, "refusals take nothing");
        // More than a share or the whole budget can ever hold: no retry passes.
        let e = b.reserve_for("bob", 61, "the upload").expect_err("61 > 60");
        assert!(matches!(e, ServerError::TooLarge(_)), "{e}");
        let e = b.reserve(101, "the upload").expect_err("101 > 100");
        assert!(matches!(e, ServerError::TooLarge(_)), "{e}");
        let bob = b
            .reserve_for("bob", 50, "the upload")
            .expect("bob has his own share");
        assert_eq!(b.used(), 100);
        drop(bob);
        alice.resize(10, "the upload").expect("shrinks");
        assert_eq!((b.used(), b.used_by("alice")), (10, 10));
        drop(alice);
        assert_eq!((b.used(), b.used_by("alice")), (0, 0));
        let _unshared = b.reserve(100, "the store").expect("no holder: no share");
    }
}
