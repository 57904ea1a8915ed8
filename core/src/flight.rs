//! The one fetch machine: a value fetched by callout (an issuer's keys, a
//! client's token, a token's introspection) that the workers of a process
//! share. It knows whether a fetch is in flight and until when it is
//! awaited, when the next may start, the failures in a row and the last
//! error, and holds the claim marker in shared data so that one worker of
//! the process fetches while the others adopt its result. What is fetched,
//! and how an adopted result is read, stays with each kind.

use crate::cache::Digest;
use crate::services::SharedStore;
use crate::shared_cache::{claim_marker, release_marker, Claim};

/// Back-off after failures in a row: fast at first, so the filter follows
/// the server back up within seconds, then once every 15 s.
pub const RETRY_SECONDS: [u64; 5] = [1, 2, 4, 8, 15];

/// The delay before the next attempt after `failures` failures in a row.
pub fn backoff(failures: usize) -> u64 {
    let last = RETRY_SECONDS.len().saturating_sub(1);
    RETRY_SECONDS
        .get(failures.saturating_sub(1).min(last))
        .copied()
        .unwrap_or(15)
}

/// Where in shared data a fetch is claimed: one marker per fetched subject.
pub struct Marker<'a> {
    pub store: &'a dyn SharedStore,
    pub key: String,
    pub subject: Digest,
    /// This worker's id in the markers.
    pub worker: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flight {
    /// Until when a dispatched fetch is awaited. The host may drop a callout
    /// without a reply; the deadline keeps that from blocking fetches for good.
    in_flight_until: Option<u64>,
    next_attempt_at: u64,
    failures: usize,
    last_error: Option<String>,
    last_started_at: Option<u64>,
}

impl Flight {
    /// When the fetch in flight is given up on, if one is.
    pub fn awaited_until(&self, now: u64) -> Option<u64> {
        self.in_flight_until.filter(|until| now < *until)
    }

    pub fn awaiting(&self, now: u64) -> bool {
        self.awaited_until(now).is_some()
    }

    /// Whether the back-off after the last failure is over.
    pub fn retry_due(&self, now: u64) -> bool {
        now >= self.next_attempt_at
    }

    /// Whether no fetch started in the last `seconds`.
    pub fn quiet_for(&self, seconds: u64, now: u64) -> bool {
        self.last_started_at
            .is_none_or(|t| now >= t.saturating_add(seconds))
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Claims the fetch for this worker until `until`, unless another
    /// worker's claim is live: then `Err` with when that one is given up on.
    pub fn start(&mut self, marker: Option<&Marker>, until: u64, now: u64) -> Result<(), u64> {
        if let Some(m) = marker {
            if let Claim::HeldElsewhere { until } =
                claim_marker(m.store, &m.key, &m.subject, m.worker, until, now)
            {
                return Err(until);
            }
        }
        self.in_flight_until = Some(until);
        self.last_started_at = Some(now);
        Ok(())
    }

    /// The fetch gave a value: the next one is due at `next_at`.
    pub fn succeeded(&mut self, marker: Option<&Marker>, next_at: u64) {
        release(marker);
        self.adopted(next_at);
    }

    /// Another worker's value was taken instead of fetching.
    pub fn adopted(&mut self, next_at: u64) {
        self.in_flight_until = None;
        self.failures = 0;
        self.last_error = None;
        self.next_attempt_at = next_at;
    }

    /// The fetch failed: retried after `delay` seconds (see [`backoff`]).
    pub fn failed(&mut self, marker: Option<&Marker>, why: String, delay: u64, now: u64) {
        release(marker);
        self.in_flight_until = None;
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(why);
        self.next_attempt_at = now.saturating_add(delay);
    }

    /// Failures in a row so far, for the back-off of the next one.
    pub fn failures(&self) -> usize {
        self.failures
    }

    /// A fetch that could not even be built: no retry is scheduled, the
    /// reason is kept for the 503.
    pub fn could_not_start(&mut self, why: String) {
        self.last_error = Some(why);
    }
}

fn release(marker: Option<&Marker>) {
    if let Some(m) = marker {
        release_marker(m.store, &m.key, &m.subject, m.worker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::testing::MemoryStore;

    #[test]
    fn one_worker_claims_and_the_other_waits_until_it_is_done() {
        let store = MemoryStore::default();
        let marker = |worker| Marker {
            store: &store,
            key: "k".into(),
            subject: [7; 32],
            worker,
        };
        let (mut a, mut b) = (Flight::default(), Flight::default());
        assert_eq!(a.start(Some(&marker(1)), 10, 0), Ok(()));
        assert_eq!(a.awaited_until(5), Some(10));
        assert_eq!(a.awaited_until(10), None, "a deadline passed is no wait");
        assert_eq!(b.start(Some(&marker(2)), 12, 1), Err(10));
        a.succeeded(Some(&marker(1)), 100);
        assert!(!a.awaiting(2));
        assert_eq!(b.start(Some(&marker(2)), 12, 2), Ok(()));
    }

    #[test]
    fn failures_back_off_and_keep_the_reason() {
        let mut f = Flight::default();
        for (n, delay) in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 15), (6, 15)] {
            f.start(None, 100, 0).unwrap();
            f.failed(None, format!("down {n}"), backoff(f.failures() + 1), 0);
            assert_eq!(f.failures(), n);
            assert!(!f.retry_due(delay - 1) && f.retry_due(delay), "failure {n}");
        }
        assert_eq!(f.last_error(), Some("down 6"));
        f.adopted(50);
        assert_eq!((f.failures(), f.last_error()), (0, None));
        assert!(!f.retry_due(49));
    }

    #[test]
    fn a_fetch_starts_again_only_after_a_quiet_interval() {
        let mut f = Flight::default();
        assert!(f.quiet_for(1, 0));
        f.start(None, 3, 10).unwrap();
        assert!(!f.quiet_for(1, 10) && f.quiet_for(1, 11));
    }
}
