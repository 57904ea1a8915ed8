//! Introspection answers shared by every worker of the process, in proxy-wasm
//! shared data (the [`SharedStore`] seam), and the "in flight" markers that
//! let one worker ask while the others wait.
//!
//! Shared data has neither eviction nor expiry, and keys cannot be deleted,
//! so the cache is a fixed table: `slots` keys, each holding at most one
//! entry of at most `entry_bytes`. A token's slot is the first 8 bytes of the
//! SHA-256 of the whole token modulo `slots`; the entry repeats the whole
//! digest, so a slot shared by two tokens answers only for the one it holds.
//! Eviction: a new entry replaces whatever its slot holds, except that an
//! inactive answer never replaces another token's live active one (a flood
//! of junk tokens cannot push out the tokens in use). Expiry is checked on
//! every read. Each entry also names the configuration it was made under,
//! so a reloaded configuration never reads answers checked by the old one.
//! See docs/introspection-cache.md.

use crate::cache::Digest;
use crate::services::SharedStore;

/// Key prefix of entries and markers in shared data.
const PREFIX: &str = "oauth_pep.introspection";
const ENTRY_MAGIC: &[u8; 4] = b"OPI1";
const MARKER_MAGIC: &[u8; 4] = b"OPF1";
/// Magic, configuration fingerprint, digest, kind, issuer, two times.
const ENTRY_HEADER_BYTES: usize = 4 + 8 + 32 + 1 + 2 + 8 + 8;
const MARKER_BYTES: usize = 4 + 32 + 8 + 8;
/// The most entries the table may have, whatever the byte budget.
const MAX_SLOTS: u64 = 1 << 20;

/// The compiled cache settings. `slots == 0` turns the shared cache off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedCache {
    slots: u64,
    entry_bytes: usize,
    fingerprint: [u8; 8],
}

/// A cached answer as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// The answer's JSON (without `active`); used until `fresh_until`, and
    /// up to `stale_until` only when the endpoint fails and the issuer
    /// serves stale answers.
    Active {
        issuer: u16,
        fresh_until: u64,
        stale_until: u64,
        json: Vec<u8>,
    },
    Inactive {
        issuer: u16,
        until: u64,
    },
}

impl Entry {
    fn live_until(&self) -> u64 {
        match self {
            Entry::Active { stale_until, .. } => *stale_until,
            Entry::Inactive { until, .. } => *until,
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Stored,
    /// Stored in place of another token's live entry.
    Evicted,
    /// Over `entry_bytes`: only the worker's own cache keeps it.
    TooLarge,
    /// The slot holds another token's live active answer, which an inactive
    /// one does not replace.
    KeptOther,
    /// Off, or the host refused the write.
    Skipped,
}

/// Whether this worker should make the callout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The marker is ours: ask, then [`SharedCache::release`].
    Claimed,
    /// Another worker is asking, and is given until then (seconds).
    HeldElsewhere { until: u64 },
}

impl SharedCache {
    /// `total_bytes / entry_bytes` slots (none when `total_bytes` is 0).
    pub fn new(total_bytes: usize, entry_bytes: usize, fingerprint: [u8; 8]) -> SharedCache {
        let slots = (total_bytes / entry_bytes.max(1)) as u64;
        SharedCache {
            slots: slots.min(MAX_SLOTS),
            entry_bytes,
            fingerprint,
        }
    }

    pub fn enabled(&self) -> bool {
        self.slots > 0
    }

    /// The smallest entry budget that still holds a useful answer.
    pub fn min_entry_bytes() -> usize {
        ENTRY_HEADER_BYTES + 64
    }

    fn slot(&self, digest: &Digest) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
        u64::from_be_bytes(first) % self.slots.max(1)
    }

    fn entry_key(&self, digest: &Digest) -> String {
        format!("{PREFIX}.{}", self.slot(digest))
    }

    pub fn marker_key(&self, digest: &Digest) -> String {
        format!("{PREFIX}.{}.in_flight", self.slot(digest))
    }

    /// What a marker says is being asked: this token under this
    /// configuration. Another configuration (a second listener, or the one a
    /// config update replaces) asks its own endpoint with its own settings,
    /// and its answer is not one this configuration reads; so its worker
    /// neither waits for this marker nor is waited for. The slot's marker
    /// key stays the same, so shared data holds no more keys than slots.
    pub fn marker_subject(&self, token: &Digest) -> Digest {
        crate::cache::digest(&[&self.fingerprint, token])
    }

    /// The live entry for this token, if its slot holds one.
    pub fn read(&self, store: &dyn SharedStore, digest: &Digest, now: u64) -> Option<Entry> {
        if !self.enabled() {
            return None;
        }
        let (bytes, _) = store.get(&self.entry_key(digest))?;
        let (held, entry) = self.decode(&bytes)?;
        (held == *digest && now < entry.live_until()).then_some(entry)
    }

    pub fn write(
        &self,
        store: &dyn SharedStore,
        digest: &Digest,
        entry: &Entry,
        now: u64,
    ) -> Written {
        if !self.enabled() {
            return Written::Skipped;
        }
        let bytes = self.encode(digest, entry);
        if bytes.len() > self.entry_bytes {
            return Written::TooLarge;
        }
        let key = self.entry_key(digest);
        let held = store
            .get(&key)
            .and_then(|(held, _)| self.decode(&held))
            .filter(|(other, entry)| other != digest && now < entry.live_until());
        if let (Entry::Inactive { .. }, Some((_, Entry::Active { fresh_until, .. }))) =
            (entry, &held)
        {
            if now < *fresh_until {
                return Written::KeptOther;
            }
        }
        // Unconditional: whichever answer lands last is as good as the other.
        match store.set(&key, &bytes, None) {
            Ok(()) if held.is_some() => Written::Evicted,
            Ok(()) => Written::Stored,
            Err(_) => Written::Skipped,
        }
    }

    fn encode(&self, digest: &Digest, entry: &Entry) -> Vec<u8> {
        let (kind, issuer, first, second, json): (u8, u16, u64, u64, &[u8]) = match entry {
            Entry::Active {
                issuer,
                fresh_until,
                stale_until,
                json,
            } => (1, *issuer, *fresh_until, *stale_until, json),
            Entry::Inactive { issuer, until } => (0, *issuer, *until, *until, &[]),
        };
        let mut out = Vec::with_capacity(ENTRY_HEADER_BYTES + json.len());
        out.extend_from_slice(ENTRY_MAGIC);
        out.extend_from_slice(&self.fingerprint);
        out.extend_from_slice(digest);
        out.push(kind);
        out.extend_from_slice(&issuer.to_be_bytes());
        out.extend_from_slice(&first.to_be_bytes());
        out.extend_from_slice(&second.to_be_bytes());
        out.extend_from_slice(json);
        out
    }

    fn decode(&self, bytes: &[u8]) -> Option<(Digest, Entry)> {
        let mut r = Reader(bytes);
        if r.take(4)? != ENTRY_MAGIC || r.take(8)? != self.fingerprint {
            return None;
        }
        let digest: Digest = r.take(32)?.try_into().ok()?;
        let kind = *r.take(1)?.first()?;
        let issuer = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
        let first = r.u64()?;
        let second = r.u64()?;
        let entry = match kind {
            1 => Entry::Active {
                issuer,
                fresh_until: first,
                stale_until: second,
                json: r.0.to_vec(),
            },
            0 => Entry::Inactive {
                issuer,
                until: first,
            },
            _ => return None,
        };
        Some((digest, entry))
    }
}

/// Marks `subject` as being fetched by `owner` until `until` at `key`,
/// unless another owner's marker for it is still live. Compare-and-swap, so
/// of workers racing for one subject exactly one claims it.
pub fn claim_marker(
    store: &dyn SharedStore,
    key: &str,
    subject: &Digest,
    owner: u64,
    until: u64,
    now: u64,
) -> Claim {
    let marker = encode_marker(subject, owner, until);
    for _ in 0..2 {
        let cas = match store.get(key) {
            Some((bytes, cas)) => {
                if let Some((held, holder, held_until)) = decode_marker(&bytes) {
                    if held == *subject && holder != owner && now < held_until {
                        return Claim::HeldElsewhere { until: held_until };
                    }
                }
                Some(cas)
            }
            None => None,
        };
        if store.set(key, &marker, cas).is_ok() {
            return Claim::Claimed;
        }
    }
    // Lost twice to other writers, one of which holds it now; or the host
    // refuses writes, and then nothing coordinates: go ahead, as without
    // shared data, rather than wait for a marker nobody can set.
    match store.get(key).and_then(|(bytes, _)| decode_marker(&bytes)) {
        Some((held, holder, held_until))
            if held == *subject && holder != owner && now < held_until =>
        {
            Claim::HeldElsewhere { until: held_until }
        }
        _ => Claim::Claimed,
    }
}

/// Clears `owner`'s marker for `subject` at `key`, if it is still there.
pub fn release_marker(store: &dyn SharedStore, key: &str, subject: &Digest, owner: u64) {
    if let Some((bytes, cas)) = store.get(key) {
        if matches!(decode_marker(&bytes), Some((held, holder, _)) if held == *subject && holder == owner)
        {
            // A lost race here means another worker already replaced it.
            let _ = store.set(key, &[], Some(cas));
        }
    }
}

fn encode_marker(digest: &Digest, owner: u64, until: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(MARKER_BYTES);
    out.extend_from_slice(MARKER_MAGIC);
    out.extend_from_slice(digest);
    out.extend_from_slice(&owner.to_be_bytes());
    out.extend_from_slice(&until.to_be_bytes());
    out
}

fn decode_marker(bytes: &[u8]) -> Option<(Digest, u64, u64)> {
    let mut r = Reader(bytes);
    if r.take(4)? != MARKER_MAGIC {
        return None;
    }
    let digest: Digest = r.take(32)?.try_into().ok()?;
    Some((digest, r.u64()?, r.u64()?))
}

/// Reads fixed-size fields off the front of a byte slice.
pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader(bytes)
    }

    pub(crate) fn rest(self) -> &'a [u8] {
        self.0
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::cache::digest;
    use crate::services::testing::MemoryStore;

    fn active(fresh_until: u64, json: &str) -> Entry {
        Entry::Active {
            issuer: 0,
            fresh_until,
            stale_until: fresh_until,
            json: json.as_bytes().to_vec(),
        }
    }

    #[test]
    fn an_entry_answers_only_for_its_own_token_and_only_until_it_expires() {
        let store = MemoryStore::default();
        let cache = SharedCache::new(1 << 20, 1024, *b"config-1");
        let a = digest(&[b"token-a"]);
        let entry = active(1_000, r#"{"sub":"u"}"#);
        assert_eq!(cache.write(&store, &a, &entry, 900), Written::Stored);
        assert_eq!(cache.read(&store, &a, 999), Some(entry));
        assert_eq!(cache.read(&store, &a, 1_000), None, "expired");
        assert_eq!(cache.read(&store, &digest(&[b"token-b"]), 999), None);
        // Another configuration never reads it.
        let reloaded = SharedCache::new(1 << 20, 1024, *b"config-2");
        assert_eq!(reloaded.read(&store, &a, 999), None);
    }

    #[test]
    fn the_table_has_a_fixed_number_of_keys_bounded_in_bytes() {
        let store = MemoryStore::default();
        // 8 slots of at most 256 bytes.
        let cache = SharedCache::new(2048, 256, [0; 8]);
        for i in 0..1000u32 {
            let d = digest(&[&i.to_be_bytes()]);
            cache.write(&store, &d, &active(u64::MAX, r#"{"scope":"a"}"#), 0);
        }
        assert_eq!(store.keys().len(), 8);
        assert!(store
            .keys()
            .iter()
            .all(|k| store.get(k).unwrap().0.len() <= 256));
        let big = "x".repeat(300);
        assert_eq!(
            cache.write(&store, &digest(&[b"t"]), &active(9, &big), 0),
            Written::TooLarge
        );
    }

    #[test]
    fn an_inactive_answer_never_pushes_out_a_live_active_one() {
        let store = MemoryStore::default();
        let cache = SharedCache::new(256, 256, [0; 8]); // one slot
        let good = digest(&[b"good"]);
        let junk = digest(&[b"junk"]);
        cache.write(&store, &good, &active(100, "{}"), 0);
        let inactive = Entry::Inactive {
            issuer: 0,
            until: 50,
        };
        assert_eq!(
            cache.write(&store, &junk, &inactive, 10),
            Written::KeptOther
        );
        assert!(cache.read(&store, &good, 10).is_some());
        // Once the active one is past its TTL, the slot is free game.
        assert_eq!(cache.write(&store, &junk, &inactive, 100), Written::Stored);
        // And an active answer replaces anything.
        let inactive = Entry::Inactive {
            issuer: 0,
            until: 150,
        };
        assert_eq!(cache.write(&store, &junk, &inactive, 100), Written::Stored);
        assert_eq!(
            cache.write(&store, &good, &active(200, "{}"), 101),
            Written::Evicted
        );
    }

    #[test]
    fn of_two_workers_one_claims_the_token_and_the_other_waits() {
        let store = MemoryStore::default();
        let cache = SharedCache::new(1 << 20, 1024, [0; 8]);
        let t = digest(&[b"t"]);
        let key = cache.marker_key(&t);
        let claim = |owner, until, now| claim_marker(&store, &key, &t, owner, until, now);
        assert_eq!(claim(1, 10, 0), Claim::Claimed);
        assert_eq!(claim(2, 12, 1), Claim::HeldElsewhere { until: 10 });
        // Past its deadline a marker no longer holds anyone back.
        assert_eq!(claim(2, 20, 10), Claim::Claimed);
        release_marker(&store, &key, &t, 1); // not the holder: no effect
        assert_eq!(claim(3, 30, 11), Claim::HeldElsewhere { until: 20 });
        release_marker(&store, &key, &t, 2);
        assert_eq!(claim(3, 30, 11), Claim::Claimed);
    }

    #[test]
    fn garbage_in_shared_data_reads_as_nothing() {
        let store = MemoryStore::default();
        let cache = SharedCache::new(256, 256, [0; 8]);
        let t = digest(&[b"t"]);
        for junk in [
            &b""[..],
            b"OPI1",
            b"OPI1\0\0\0\0\0\0\0\0short",
            &[0xff; 300],
        ] {
            store.set(&cache.entry_key(&t), junk, None).unwrap();
            store.set(&cache.marker_key(&t), junk, None).unwrap();
            assert_eq!(cache.read(&store, &t, 0), None);
            assert_eq!(
                claim_marker(&store, &cache.marker_key(&t), &t, 1, 5, 0),
                Claim::Claimed
            );
        }
    }

    #[test]
    fn off_means_no_shared_data_at_all() {
        let store = MemoryStore::default();
        let cache = SharedCache::new(0, 4096, [0; 8]);
        let t = digest(&[b"t"]);
        assert_eq!(
            cache.write(&store, &t, &active(9, "{}"), 0),
            Written::Skipped
        );
        assert!(store.keys().is_empty());
    }
}
