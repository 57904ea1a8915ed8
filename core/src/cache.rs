//! A cache bounded in bytes and entries, whose entries expire at an absolute time.
//!
//! Keys are SHA-256 digests ([`Digest`]) of everything the cached value depends
//! on (the whole token; or the facts of a PDP decision). SHA-256 is collision
//! resistant, so the digest alone identifies the input and the input itself is
//! never stored: a key costs 32 bytes whatever a client sends, and a cached
//! verdict can only be served for the exact input it was made for. The time is
//! always a parameter, so expiry is deterministic under test.

use std::collections::{BTreeMap, HashMap};

/// A SHA-256 digest used as a cache key.
pub type Digest = [u8; 32];

/// The digest of several parts, each length-prefixed so that no two different
/// lists of parts can hash the same bytes (`["ab", "c"]` vs `["a", "bc"]`).
pub fn digest(parts: &[&[u8]]) -> Digest {
    let mut hash = hmac_sha256::Hash::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize()
}

/// Estimated bookkeeping per entry beyond the value's own weight: the 32-byte
/// key twice (map and expiry index), the hash-map slot, the B-tree entry and
/// the entry's fields. An estimate on the high side, so the budget holds.
pub const ENTRY_OVERHEAD_BYTES: usize = 160;

/// How many bytes a cached value holds on the heap and inline.
pub trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for bool {
    fn weight(&self) -> usize {
        1
    }
}

impl<T: Weigh> Weigh for std::rc::Rc<T> {
    fn weight(&self) -> usize {
        (**self).weight().saturating_add(16)
    }
}

/// Heap bytes of a string, plus its inline size.
pub fn string_weight(s: &str) -> usize {
    s.len().saturating_add(std::mem::size_of::<String>())
}

/// What the cache has done since it was created, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Live entries dropped to make room (expired ones are not counted).
    pub evictions: u64,
    /// Entries stored where nothing live was (only the shared introspection
    /// table counts them: its occupancy).
    pub fills: u64,
}

#[derive(Debug, Clone)]
struct Entry<V> {
    value: V,
    expires_at: u64,
    seq: u64,
    weight: usize,
}

/// At most `max_bytes` (entries weighed with [`Weigh`] plus
/// [`ENTRY_OVERHEAD_BYTES`]) and `max_entries` values, each valid while
/// `now < expires_at`.
///
/// A second index ordered by `(expires_at, seq)` makes both purging expired
/// entries and evicting the one expiring soonest O(log n), so a full cache under
/// attack (a flood of distinct tokens) never degrades into a linear scan per
/// request. `seq` breaks ties so equal expiry times stay distinct index keys.
#[derive(Debug, Clone)]
pub struct BoundedCache<V> {
    max_bytes: usize,
    max_entries: usize,
    bytes: usize,
    entries: HashMap<Digest, Entry<V>>,
    by_expiry: BTreeMap<(u64, u64), Digest>,
    next_seq: u64,
    stats: CacheStats,
}

impl<V: Weigh> BoundedCache<V> {
    /// A zero `max_bytes` or `max_entries` disables caching: nothing is stored.
    pub fn new(max_bytes: usize, max_entries: usize) -> Self {
        BoundedCache {
            max_bytes,
            max_entries,
            bytes: 0,
            entries: HashMap::new(),
            by_expiry: BTreeMap::new(),
            next_seq: 0,
            stats: CacheStats::default(),
        }
    }

    /// The value, unless it has expired (`now >= expires_at`). Counts a hit or a miss.
    pub fn get(&mut self, key: &Digest, now: u64) -> Option<&V> {
        let found = self.entries.get(key).filter(|e| now < e.expires_at);
        match found {
            Some(entry) => {
                self.stats.hits = self.stats.hits.saturating_add(1);
                Some(&entry.value)
            }
            None => {
                self.stats.misses = self.stats.misses.saturating_add(1);
                None
            }
        }
    }

    /// Stores `value` until `expires_at`, replacing any previous value for
    /// `key`. A value heavier than a sixteenth of the budget is not stored, so
    /// one entry can never push out most of the others.
    pub fn insert(&mut self, key: Digest, value: V, expires_at: u64, now: u64) {
        // The new value supersedes the old one even when it cannot be stored:
        // keeping the old one would serve a verdict the caller just replaced.
        self.remove(&key);
        let weight = value.weight().saturating_add(ENTRY_OVERHEAD_BYTES);
        if self.max_entries == 0 || expires_at <= now || weight > self.max_bytes / 16 {
            return;
        }
        self.purge_expired(now);
        while self.entries.len() >= self.max_entries
            || self.bytes.saturating_add(weight) > self.max_bytes
        {
            let Some((_, soonest)) = self.by_expiry.pop_first() else {
                break;
            };
            if let Some(evicted) = self.entries.remove(&soonest) {
                self.bytes = self.bytes.saturating_sub(evicted.weight);
                self.stats.evictions = self.stats.evictions.saturating_add(1);
            }
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.by_expiry.insert((expires_at, seq), key);
        self.bytes = self.bytes.saturating_add(weight);
        self.entries.insert(
            key,
            Entry {
                value,
                expires_at,
                seq,
                weight,
            },
        );
    }

    pub fn remove(&mut self, key: &Digest) -> Option<V> {
        let entry = self.entries.remove(key)?;
        self.by_expiry.remove(&(entry.expires_at, entry.seq));
        self.bytes = self.bytes.saturating_sub(entry.weight);
        Some(entry.value)
    }

    /// Drops every entry expired at `now`. `insert` does this already; calling
    /// it from a timer only returns memory sooner.
    pub fn purge_expired(&mut self, now: u64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some(expired) = self.entries.remove(&key) {
                self.bytes = self.bytes.saturating_sub(expired.weight);
            }
        }
    }

    /// Entries held, including expired ones not purged yet.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held by the entries, by the same estimate as the budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    impl Weigh for u64 {
        fn weight(&self) -> usize {
            8
        }
    }

    /// A value of a chosen weight.
    #[derive(Debug, PartialEq)]
    struct Blob(usize);
    impl Weigh for Blob {
        fn weight(&self) -> usize {
            self.0
        }
    }

    fn k(name: &str) -> Digest {
        digest(&[name.as_bytes()])
    }

    fn roomy() -> BoundedCache<u64> {
        BoundedCache::new(1 << 20, 4)
    }

    #[test]
    fn digests_separate_their_parts() {
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
        assert_ne!(digest(&[b"a", b""]), digest(&[b"a"]));
        assert_eq!(digest(&[b"a", b"b"]), digest(&[b"a", b"b"]));
    }

    #[test]
    fn value_is_served_until_the_second_it_expires() {
        let mut c = roomy();
        c.insert(k("tok"), 1, 110, 100);
        assert_eq!(c.get(&k("tok"), 100), Some(&1));
        assert_eq!(c.get(&k("tok"), 109), Some(&1));
        assert_eq!(c.get(&k("tok"), 110), None);
        assert_eq!(c.get(&k("other"), 100), None);
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 2,
                misses: 2,
                evictions: 0,
                fills: 0
            }
        );
    }

    #[test]
    fn already_expired_values_are_not_stored() {
        let mut c = roomy();
        c.insert(k("past"), 1, 99, 100);
        c.insert(k("now"), 2, 100, 100);
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn unstorable_replacement_still_drops_the_old_value() {
        let mut c = roomy();
        c.insert(k("k"), 1, 200, 100);
        c.insert(k("k"), 2, 100, 100);
        assert_eq!(c.get(&k("k"), 100), None);
        assert_eq!(c.len(), 0);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn replacing_a_key_keeps_one_entry_with_the_new_expiry() {
        let mut c = BoundedCache::new(1 << 20, 2);
        c.insert(k("k"), 1, 200, 100);
        c.insert(k("k"), 2, 150, 100);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&k("k"), 149), Some(&2));
        assert_eq!(c.get(&k("k"), 150), None);
        // The stale index entry for expiry 200 must be gone, or a later
        // eviction would remove the wrong key.
        c.insert(k("a"), 3, 300, 100);
        c.insert(k("b"), 4, 400, 100);
        assert_eq!(c.get(&k("k"), 100), None);
        assert_eq!(c.get(&k("a"), 100), Some(&3));
        assert_eq!(c.get(&k("b"), 100), Some(&4));
    }

    #[test]
    fn full_cache_evicts_the_entry_expiring_soonest() {
        let mut c = BoundedCache::new(1 << 20, 3);
        c.insert(k("late"), 1, 300, 100);
        c.insert(k("soon"), 2, 150, 100);
        c.insert(k("mid"), 3, 200, 100);
        c.insert(k("new"), 4, 250, 100);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&k("soon"), 100), None);
        assert_eq!(c.get(&k("late"), 100), Some(&1));
        assert_eq!(c.stats().evictions, 1);
    }

    #[test]
    fn the_byte_budget_bounds_the_cache_whatever_the_entry_count() {
        let entry = 1000 + ENTRY_OVERHEAD_BYTES;
        let mut c = BoundedCache::new(16 * entry, usize::MAX);
        for i in 0..1000u64 {
            c.insert(digest(&[&i.to_be_bytes()]), Blob(1000), 10_000 + i, 100);
            assert!(c.bytes() <= 16 * entry);
            assert_eq!(c.bytes(), c.len() * entry);
        }
        assert_eq!(c.len(), 16);
        assert_eq!(c.stats().evictions, 1000 - 16);
        // The latest-expiring entries survive.
        assert!(c.get(&digest(&[&999u64.to_be_bytes()]), 100).is_some());
    }

    #[test]
    fn an_entry_heavier_than_a_sixteenth_of_the_budget_is_not_stored() {
        let mut c = BoundedCache::new(16_000, 100);
        c.insert(k("small"), Blob(10), 200, 100);
        c.insert(k("huge"), Blob(1000), 200, 100);
        assert_eq!(c.get(&k("huge"), 100), None);
        assert_eq!(c.get(&k("small"), 100), Some(&Blob(10)));
    }

    #[test]
    fn full_cache_drops_expired_entries_before_evicting_live_ones() {
        let mut c = BoundedCache::new(1 << 20, 3);
        c.insert(k("a"), 1, 110, 100);
        c.insert(k("b"), 2, 120, 100);
        c.insert(k("c"), 3, 500, 100);
        c.insert(k("d"), 4, 130, 125);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&k("c"), 125), Some(&3));
        assert_eq!(c.get(&k("d"), 125), Some(&4));
        assert_eq!(c.stats().evictions, 0, "expired entries are not evictions");
    }

    #[test]
    fn zero_capacity_disables_caching() {
        for mut c in [BoundedCache::new(0, 10), BoundedCache::new(1 << 20, 0)] {
            c.insert(k("k"), 1u64, 200, 100);
            assert_eq!(c.get(&k("k"), 100), None);
            assert!(c.is_empty());
            assert_eq!(c.remove(&k("k")), None);
        }
    }

    #[test]
    fn remove_and_purge_return_their_bytes() {
        let mut c = roomy();
        c.insert(k("a"), 1, 110, 100);
        c.insert(k("b"), 2, 120, 100);
        assert_eq!(c.remove(&k("a")), Some(1));
        assert_eq!(c.remove(&k("a")), None);
        c.purge_expired(119);
        assert_eq!(c.len(), 1);
        c.purge_expired(120);
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn many_inserts_stay_bounded() {
        let mut c = BoundedCache::new(1 << 20, 16);
        for i in 0..1000u64 {
            c.insert(
                digest(&[&i.to_be_bytes()]),
                i,
                1000 + (i * 7919) % 500,
                100 + i / 10,
            );
            assert!(c.len() <= 16);
            assert_eq!(c.entries.len(), c.by_expiry.len());
        }
    }
}
