//! The deny set: which subjects and sessions were revoked, and when. One
//! copy per process in shared data (every worker's receiver writes it, the
//! fleet poll fills it), and one per worker in memory, taken again on the
//! root's tick when the shared copy's generation moved, so the check on a
//! request reads no shared data at all.

use std::collections::HashMap;

use crate::services::{CasMismatch, SharedStore};

/// A subject or session, as [`super::subject_key`] names it: never in clear.
pub type DenyKey = [u8; 16];

/// A revocation: tokens issued before `at` are refused until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub at: u64,
    pub until: u64,
}

impl Denied {
    /// Two revocations of one key: the later one, kept the longer.
    fn merge(self, other: Denied) -> Denied {
        Denied {
            at: self.at.max(other.at),
            until: self.until.max(other.until),
        }
    }
}

const SET_KEY: &str = "oauth_pep.deny";
const GENERATION_KEY: &str = "oauth_pep.deny.generation";
const MAGIC: &[u8; 4] = b"OPR1";
/// Key, revoked at, until.
pub const ENTRY_BYTES: usize = 16 + 8 + 8;
const CAS_ATTEMPTS: usize = 8;

/// Why entries could not be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyError {
    /// `max_entries` live entries already: a new one is refused (a 503 for
    /// the transmitter, which retries) rather than one forgotten.
    Full { max_entries: usize },
    /// The store refused the write, or other workers kept winning it.
    Unavailable,
}

impl std::fmt::Display for DenyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DenyError::Full { max_entries } => write!(
                f,
                "the deny set holds {max_entries} live entries (revocation.max_entries)"
            ),
            DenyError::Unavailable => f.write_str("the deny set could not be written"),
        }
    }
}

/// One worker's copy.
#[derive(Debug, Default)]
pub struct DenySet {
    entries: HashMap<DenyKey, Denied>,
    /// The shared copy's generation this one was taken at.
    generation: Option<u64>,
}

impl DenySet {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Live entries (expired ones are dropped on the next write or refresh).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The revocation of `key`, if one is live.
    pub fn get(&self, key: &DenyKey, now: u64) -> Option<Denied> {
        self.entries.get(key).copied().filter(|d| d.until > now)
    }

    /// Root, on each tick: takes the shared copy again if another worker
    /// changed it. Whether it did.
    pub fn refresh(&mut self, store: &dyn SharedStore, now: u64) -> bool {
        let generation = read_generation(store);
        if generation.is_none() || generation == self.generation {
            return false;
        }
        let entries = store
            .get(SET_KEY)
            .map(|(bytes, _)| decode(&bytes, now))
            .unwrap_or_default();
        self.entries = entries;
        self.generation = generation;
        true
    }

    /// Adds `items` to the shared copy (and this one): merged with what is
    /// there, expired entries dropped. How many keys were new.
    pub fn add(
        &mut self,
        store: &dyn SharedStore,
        items: &[(DenyKey, Denied)],
        max_entries: usize,
        now: u64,
    ) -> Result<usize, DenyError> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut entries, cas) = match store.get(SET_KEY) {
                Some((bytes, cas)) => (decode(&bytes, now), Some(cas)),
                None => (HashMap::new(), None),
            };
            let mut added = 0;
            for (key, denied) in items {
                if denied.until <= now {
                    continue;
                }
                match entries.get_mut(key) {
                    Some(held) => *held = held.merge(*denied),
                    None => {
                        entries.insert(*key, *denied);
                        added += 1;
                    }
                }
            }
            if entries.len() > max_entries {
                return Err(DenyError::Full { max_entries });
            }
            match store.set(SET_KEY, &encode(&entries), cas) {
                Ok(()) => {}
                Err(CasMismatch) if cas.is_some() => continue,
                Err(CasMismatch) => return Err(DenyError::Unavailable),
            }
            let generation = bump_generation(store).ok_or(DenyError::Unavailable)?;
            self.entries = entries;
            self.generation = Some(generation);
            return Ok(added);
        }
        Err(DenyError::Unavailable)
    }
}

fn read_generation(store: &dyn SharedStore) -> Option<u64> {
    let (bytes, _) = store.get(GENERATION_KEY)?;
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// The generation after this write; readers take the set again when it moves.
fn bump_generation(store: &dyn SharedStore) -> Option<u64> {
    for _ in 0..CAS_ATTEMPTS {
        let (current, cas) = match store.get(GENERATION_KEY) {
            Some((bytes, cas)) => (
                bytes
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_be_bytes),
                Some(cas),
            ),
            None => (0, None),
        };
        let next = current.wrapping_add(1);
        if store.set(GENERATION_KEY, &next.to_be_bytes(), cas).is_ok() {
            return Some(next);
        }
    }
    None
}

fn encode(entries: &HashMap<DenyKey, Denied>) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + entries.len() * ENTRY_BYTES);
    out.extend_from_slice(MAGIC);
    for (key, denied) in entries {
        out.extend_from_slice(key);
        out.extend_from_slice(&denied.at.to_be_bytes());
        out.extend_from_slice(&denied.until.to_be_bytes());
    }
    out
}

/// The live entries of a shared copy; anything that does not parse is none.
fn decode(bytes: &[u8], now: u64) -> HashMap<DenyKey, Denied> {
    let Some(body) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return HashMap::new();
    };
    body.chunks_exact(ENTRY_BYTES)
        .filter_map(|entry| {
            let key: DenyKey = entry.get(..16)?.try_into().ok()?;
            let at = u64::from_be_bytes(entry.get(16..24)?.try_into().ok()?);
            let until = u64::from_be_bytes(entry.get(24..32)?.try_into().ok()?);
            (until > now).then_some((key, Denied { at, until }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::services::testing::MemoryStore;
    use crate::services::NoSharing;

    const NOW: u64 = 1_700_000_000;

    fn denied(at: u64, until: u64) -> Denied {
        Denied { at, until }
    }

    #[test]
    fn one_workers_entry_reaches_another_on_its_refresh() {
        let store = MemoryStore::default();
        let (mut a, mut b) = (DenySet::default(), DenySet::default());
        assert!(!b.refresh(&store, NOW), "nothing shared yet");
        assert_eq!(
            a.add(&store, &[([1; 16], denied(NOW, NOW + 60))], 10, NOW),
            Ok(1)
        );
        assert_eq!(a.get(&[1; 16], NOW), Some(denied(NOW, NOW + 60)));
        assert_eq!(b.get(&[1; 16], NOW), None, "not before its tick");
        assert!(b.refresh(&store, NOW));
        assert_eq!(b.get(&[1; 16], NOW), Some(denied(NOW, NOW + 60)));
        assert!(!b.refresh(&store, NOW), "unchanged: not read again");
        assert_eq!(b.get(&[1; 16], NOW + 60), None, "expired");
    }

    #[test]
    fn a_key_revoked_twice_keeps_the_later_time_and_the_longer_life() {
        let store = MemoryStore::default();
        let mut set = DenySet::default();
        set.add(&store, &[([1; 16], denied(NOW, NOW + 100))], 10, NOW)
            .unwrap();
        assert_eq!(
            set.add(&store, &[([1; 16], denied(NOW - 5, NOW + 50))], 10, NOW),
            Ok(0),
            "not new"
        );
        assert_eq!(set.get(&[1; 16], NOW), Some(denied(NOW, NOW + 100)));
        set.add(&store, &[([1; 16], denied(NOW + 9, NOW + 200))], 10, NOW)
            .unwrap();
        assert_eq!(set.get(&[1; 16], NOW), Some(denied(NOW + 9, NOW + 200)));
    }

    #[test]
    fn a_full_set_refuses_new_keys_and_drops_expired_ones() {
        let store = MemoryStore::default();
        let mut set = DenySet::default();
        set.add(&store, &[([1; 16], denied(NOW, NOW + 10))], 2, NOW)
            .unwrap();
        set.add(&store, &[([2; 16], denied(NOW, NOW + 100))], 2, NOW)
            .unwrap();
        assert_eq!(
            set.add(&store, &[([3; 16], denied(NOW, NOW + 100))], 2, NOW),
            Err(DenyError::Full { max_entries: 2 })
        );
        assert_eq!(set.get(&[3; 16], NOW), None);
        // Once the first expired, there is room again.
        assert_eq!(
            set.add(&store, &[([3; 16], denied(NOW, NOW + 100))], 2, NOW + 10),
            Ok(1)
        );
        assert_eq!(set.len(), 2);
        // An entry already expired is not added at all.
        assert_eq!(
            set.add(&store, &[([4; 16], denied(NOW, NOW))], 2, NOW + 10),
            Ok(0)
        );
    }

    #[test]
    fn a_store_that_refuses_writes_is_an_error_not_a_silent_loss() {
        let mut set = DenySet::default();
        assert_eq!(
            set.add(&NoSharing, &[([1; 16], denied(NOW, NOW + 60))], 10, NOW),
            Err(DenyError::Unavailable)
        );
        assert!(set.is_empty());
    }

    #[test]
    fn garbage_in_shared_data_reads_as_no_entries() {
        let store = MemoryStore::default();
        store.set(SET_KEY, b"junk and more junk", None).unwrap();
        store
            .set(GENERATION_KEY, &7u64.to_be_bytes(), None)
            .unwrap();
        let mut set = DenySet::default();
        assert!(set.refresh(&store, NOW));
        assert!(set.is_empty());
        let mut torn = MAGIC.to_vec();
        torn.extend_from_slice(&[9; 20]);
        assert!(decode(&torn, NOW).is_empty(), "a torn entry is dropped");
    }
}
