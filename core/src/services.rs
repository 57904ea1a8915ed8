//! What the core needs from its host, as traits: the time, a key-value store
//! shared by every worker, and randomness. The glue implements them over
//! proxy-wasm (`src/host.rs`); the core's tests use the in-memory fakes of
//! [`testing`]. Metrics are the same kind of seam, beside the ids they take
//! ([`crate::metrics::Metrics`]), and so is signature verification
//! ([`crate::verify::SignatureVerifier`]).

use std::fmt;

pub trait Clock {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Seconds since the Unix epoch: what expiry times and schedules use.
    fn now(&self) -> u64 {
        self.now_ms() / 1000
    }
}

/// A key-value store shared by all workers (proxy-wasm shared data). Every
/// value has a version, its `cas`, that changes on each write, so that a
/// read-modify-write can tell whether another worker wrote in between.
pub trait SharedStore {
    /// The value and its version, if the key is set.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;

    /// Writes `value`. With `Some(cas)`, only if the stored version is still
    /// `cas` (the one `get` returned); with `None`, unconditionally. As in the
    /// proxy-wasm ABI, a version of 0 checks nothing, and a key that is not
    /// set yet is written whatever the version.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch>;
}

/// No shared data (a host without it, or tests that do not need it): every
/// read finds nothing and every write is refused, so nothing is shared.
pub struct NoSharing;

impl SharedStore for NoSharing {
    fn get(&self, _key: &str) -> Option<(Vec<u8>, u32)> {
        None
    }

    fn set(&self, _key: &str, _value: &[u8], _cas: Option<u32>) -> Result<(), CasMismatch> {
        Err(CasMismatch)
    }
}

/// Another writer changed the value since it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CasMismatch;

pub trait Random {
    /// Fills `buf` with cryptographically secure random bytes.
    fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError>;
}

/// No randomness (a state the glue has not given its host's): every fill
/// fails, so nothing that needs a unique value is made without one.
pub struct NoRandom;

impl Random for NoRandom {
    fn fill(&self, _buf: &mut [u8]) -> Result<(), RandomError> {
        Err(RandomError(
            "the host gave the filter no random source".into(),
        ))
    }
}

/// The host could not supply random bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RandomError(pub String);

impl fmt::Display for RandomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no random bytes from the host: {}", self.0)
    }
}

/// In-memory hosts for tests (of the core and of the glue).
pub mod testing {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use super::*;

    /// A clock that moves only when told to.
    #[derive(Debug, Default)]
    pub struct FakeClock {
        ms: Cell<u64>,
    }

    impl FakeClock {
        pub fn at_ms(ms: u64) -> Self {
            FakeClock { ms: Cell::new(ms) }
        }

        pub fn advance_ms(&self, ms: u64) {
            self.ms.set(self.ms.get().saturating_add(ms));
        }
    }

    impl Clock for FakeClock {
        fn now_ms(&self) -> u64 {
            self.ms.get()
        }
    }

    /// Shared data with the proxy-wasm CAS rules.
    #[derive(Debug, Default)]
    pub struct MemoryStore {
        entries: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        last_cas: Cell<u32>,
    }

    impl MemoryStore {
        /// Every key written so far, sorted.
        pub fn keys(&self) -> Vec<String> {
            let mut keys: Vec<String> = self.entries.borrow().keys().cloned().collect();
            keys.sort();
            keys
        }
    }

    impl SharedStore for MemoryStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.entries.borrow().get(key).cloned()
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
            let mut entries = self.entries.borrow_mut();
            if let (Some(cas), Some((_, current))) = (cas.filter(|&c| c != 0), entries.get(key)) {
                if cas != *current {
                    return Err(CasMismatch);
                }
            }
            // Like Envoy's: versions count up and are never 0.
            let next = self.last_cas.get().checked_add(1).unwrap_or(1);
            self.last_cas.set(next);
            entries.insert(key.to_string(), (value.to_vec(), next));
            Ok(())
        }
    }

    /// Predictable "random" bytes: 0, 1, 2, … across calls.
    #[derive(Debug, Default)]
    pub struct CountingRandom {
        next: Cell<u8>,
    }

    impl Random for CountingRandom {
        fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError> {
            for byte in buf {
                *byte = self.next.get();
                self.next.set(self.next.get().wrapping_add(1));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::testing::*;
    use super::*;

    #[test]
    fn the_clock_gives_seconds_from_milliseconds() {
        let clock = FakeClock::at_ms(1_700_000_000_999);
        assert_eq!(clock.now(), 1_700_000_000);
        clock.advance_ms(1);
        assert_eq!(
            (clock.now_ms(), clock.now()),
            (1_700_000_001_000, 1_700_000_001)
        );
    }

    #[test]
    fn a_write_with_a_stale_version_is_refused() {
        let store = MemoryStore::default();
        assert_eq!(store.get("k"), None);
        // A key not set yet is written whatever the version.
        store.set("k", b"one", Some(42)).unwrap();
        let (value, cas) = store.get("k").unwrap();
        assert_eq!(value, b"one");
        assert_ne!(cas, 0);

        // Another worker writes in between: the first one's update is refused.
        store.set("k", b"two", Some(cas)).unwrap();
        assert_eq!(store.set("k", b"lost", Some(cas)), Err(CasMismatch));
        let (value, newer) = store.get("k").unwrap();
        assert_eq!(value, b"two");
        assert_ne!(newer, cas);

        // No version, or version 0, overwrites.
        store.set("k", b"three", None).unwrap();
        store.set("k", b"four", Some(0)).unwrap();
        assert_eq!(store.get("k").unwrap().0, b"four");
    }

    #[test]
    fn fake_random_fills_every_byte() {
        let random = CountingRandom::default();
        let mut buf = [0xffu8; 3];
        random.fill(&mut buf).unwrap();
        assert_eq!(buf, [0, 1, 2]);
    }
}
