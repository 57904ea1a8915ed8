//! A bounded cache whose entries expire at an absolute time.
//!
//! Callers key by the whole token (never a prefix or a hash that could collide)
//! or by the facts a PDP decision depends on. The time is always a parameter,
//! so expiry is deterministic under test.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone)]
struct Entry<V> {
    value: V,
    expires_at: u64,
    seq: u64,
}

/// At most `max_entries` values, each valid while `now < expires_at`.
///
/// A second index ordered by `(expires_at, seq)` makes both purging expired
/// entries and evicting the one expiring soonest O(log n), so a full cache under
/// attack (a flood of distinct tokens) never degrades into a linear scan per
/// request. `seq` breaks ties so equal expiry times stay distinct index keys.
#[derive(Debug, Clone)]
pub struct BoundedCache<V> {
    max_entries: usize,
    entries: HashMap<String, Entry<V>>,
    by_expiry: BTreeMap<(u64, u64), String>,
    next_seq: u64,
}

impl<V> BoundedCache<V> {
    /// `max_entries == 0` disables caching: nothing is ever stored.
    pub fn new(max_entries: usize) -> Self {
        BoundedCache {
            max_entries,
            entries: HashMap::new(),
            by_expiry: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// The value, unless it has expired (`now >= expires_at`).
    pub fn get(&self, key: &str, now: u64) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|e| now < e.expires_at)
            .map(|e| &e.value)
    }

    /// Stores `value` until `expires_at`, replacing any previous value for `key`.
    pub fn insert(&mut self, key: String, value: V, expires_at: u64, now: u64) {
        // The new value supersedes the old one even when it cannot be stored:
        // keeping the old one would serve a verdict the caller just replaced.
        self.remove(&key);
        if self.max_entries == 0 || expires_at <= now {
            return;
        }
        self.purge_expired(now);
        while self.entries.len() >= self.max_entries {
            let Some(((_, _), soonest)) = self.by_expiry.pop_first() else {
                break;
            };
            self.entries.remove(&soonest);
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.by_expiry.insert((expires_at, seq), key.clone());
        self.entries.insert(
            key,
            Entry {
                value,
                expires_at,
                seq,
            },
        );
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let entry = self.entries.remove(key)?;
        self.by_expiry.remove(&(entry.expires_at, entry.seq));
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
            self.entries.remove(&key);
        }
    }

    /// Entries held, including expired ones not purged yet.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn value_is_served_until_the_second_it_expires() {
        let mut c = BoundedCache::new(4);
        c.insert("tok".to_string(), 1, 110, 100);
        assert_eq!(c.get("tok", 100), Some(&1));
        assert_eq!(c.get("tok", 109), Some(&1));
        assert_eq!(c.get("tok", 110), None);
        assert_eq!(c.get("tok", 111), None);
        assert_eq!(c.get("other", 100), None);
    }

    #[test]
    fn already_expired_values_are_not_stored() {
        let mut c = BoundedCache::new(4);
        c.insert("past".to_string(), 1, 99, 100);
        c.insert("now".to_string(), 2, 100, 100);
        assert!(c.is_empty());
    }

    #[test]
    fn unstorable_replacement_still_drops_the_old_value() {
        let mut c = BoundedCache::new(4);
        c.insert("k".to_string(), "permit", 200, 100);
        c.insert("k".to_string(), "deny", 100, 100);
        assert_eq!(c.get("k", 100), None);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn replacing_a_key_keeps_one_entry_with_the_new_expiry() {
        let mut c = BoundedCache::new(2);
        c.insert("k".to_string(), 1, 200, 100);
        c.insert("k".to_string(), 2, 150, 100);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get("k", 149), Some(&2));
        assert_eq!(c.get("k", 150), None);
        // The stale index entry for expiry 200 must be gone, or a later
        // eviction would remove the wrong key.
        c.insert("a".to_string(), 3, 300, 100);
        c.insert("b".to_string(), 4, 400, 100);
        assert_eq!(c.get("k", 100), None);
        assert_eq!(c.get("a", 100), Some(&3));
        assert_eq!(c.get("b", 100), Some(&4));
    }

    #[test]
    fn full_cache_evicts_the_entry_expiring_soonest() {
        let mut c = BoundedCache::new(3);
        c.insert("late".to_string(), 1, 300, 100);
        c.insert("soon".to_string(), 2, 150, 100);
        c.insert("mid".to_string(), 3, 200, 100);
        c.insert("new".to_string(), 4, 250, 100);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("soon", 100), None);
        assert_eq!(c.get("late", 100), Some(&1));
        assert_eq!(c.get("mid", 100), Some(&3));
        assert_eq!(c.get("new", 100), Some(&4));
    }

    #[test]
    fn full_cache_drops_expired_entries_before_evicting_live_ones() {
        let mut c = BoundedCache::new(3);
        c.insert("a".to_string(), 1, 110, 100);
        c.insert("b".to_string(), 2, 120, 100);
        c.insert("c".to_string(), 3, 500, 100);
        c.insert("d".to_string(), 4, 130, 125);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("c", 125), Some(&3));
        assert_eq!(c.get("d", 125), Some(&4));
    }

    #[test]
    fn equal_expiry_times_are_distinct_entries() {
        let mut c = BoundedCache::new(2);
        c.insert("a".to_string(), 1, 200, 100);
        c.insert("b".to_string(), 2, 200, 100);
        c.insert("c".to_string(), 3, 200, 100);
        assert_eq!(c.len(), 2);
        // Ties go to insertion order: the oldest is evicted.
        assert_eq!(c.get("a", 100), None);
        assert_eq!(c.get("b", 100), Some(&2));
        assert_eq!(c.get("c", 100), Some(&3));
    }

    #[test]
    fn zero_capacity_disables_caching() {
        let mut c = BoundedCache::new(0);
        c.insert("k".to_string(), 1, 200, 100);
        assert_eq!(c.get("k", 100), None);
        assert!(c.is_empty());
        assert_eq!(c.remove("k"), None);
    }

    #[test]
    fn remove_and_purge() {
        let mut c = BoundedCache::new(4);
        c.insert("a".to_string(), 1, 110, 100);
        c.insert("b".to_string(), 2, 120, 100);
        assert_eq!(c.remove("a"), Some(1));
        assert_eq!(c.remove("a"), None);
        c.purge_expired(119);
        assert_eq!(c.len(), 1);
        c.purge_expired(120);
        assert!(c.is_empty());
    }

    #[test]
    fn many_inserts_stay_bounded() {
        let mut c = BoundedCache::new(16);
        for i in 0..1000u64 {
            c.insert(format!("k{i}"), i, 1000 + (i * 7919) % 500, 100 + i / 10);
            assert!(c.len() <= 16);
            assert_eq!(c.entries.len(), c.by_expiry.len());
        }
    }
}
