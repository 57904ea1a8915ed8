//! Introspection answers shared by every worker of the process, in proxy-wasm
//! shared data (the [`SharedStore`] seam), and the "in flight" markers that
//! let one worker ask while the others wait.
//!
//! Shared data has neither eviction nor expiry, and keys cannot be deleted,
//! so the cache is a fixed table of `slots` keys, each holding at most one
//! entry of at most `entry_bytes`, grouped in sets of [`WAYS`] ways (keys
//! `set * ways + way`). A token's set is the first 8 bytes of the SHA-256
//! of the whole token modulo the number of sets; the entry repeats the
//! whole digest, so a way answers only for the token it holds. A read probes
//! the set's ways starting at the token's home way (the next 8 bytes), so a
//! token that found its home way free costs one host call. A write takes,
//! in this order: the way holding the same token's answer, an empty (or
//! expired, or unreadable) way, the live inactive answer closest to expiry,
//! an active one past its TTL (kept only to be served stale), then the live
//! active answer closest to expiry; an inactive answer never takes the last
//! (a flood of junk tokens cannot push out the tokens in use). Expiry is
//! checked on every read.
//!
//! Each entry names the [`Scope`] it was accepted under: a fingerprint of
//! what accepting an answer depends on for its issuer (issuer, endpoint,
//! introspecting client, audiences, skew, answer format, TTLs), not of the
//! whole configuration, so a policy edit keeps the answers while a change
//! that matters never reads them. See docs/introspection-cache.md.

use crate::cache::Digest;
use crate::services::SharedStore;

/// Key prefix of entries and markers in shared data.
const PREFIX: &str = "oauth_pep.introspection";
/// `OPI1` entries (the whole-configuration fingerprint and an issuer index)
/// read as empty ways.
const ENTRY_MAGIC: &[u8; 4] = b"OPI2";
const MARKER_MAGIC: &[u8; 4] = b"OPF1";
/// Magic, scope, digest, kind, two times.
const ENTRY_HEADER_BYTES: usize = 4 + 8 + 32 + 1 + 8 + 8;
const MARKER_BYTES: usize = 4 + 32 + 8 + 8;
/// The most entries the table may have, whatever the byte budget.
const MAX_SLOTS: u64 = 1 << 20;
/// Ways per set. Four: the replay in docs/introspection-cache.md loses
/// almost nothing to conflicts with four (and no measurable amount more
/// with eight), while a miss reads every way of its set.
pub const WAYS: u64 = 4;

/// What an answer's acceptance depends on, for one issuer: entries and
/// in-flight markers of two configurations are shared only when their
/// scopes are equal (see `crate::config::compile`, `answer_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scope(pub [u8; 8]);

impl Scope {
    /// The first 8 bytes of `digest`.
    pub fn from_digest(digest: &Digest) -> Scope {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
        Scope(bytes)
    }
}

/// The compiled table settings. `slots == 0` turns the shared cache off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedCache {
    sets: u64,
    ways: u64,
    entry_bytes: usize,
}

/// A cached answer as stored, naming the scope of the issuer that accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// The answer's JSON (without `active`); used until `fresh_until`, and
    /// up to `stale_until` only when the endpoint fails and the issuer
    /// serves stale answers.
    Active {
        issuer: Scope,
        fresh_until: u64,
        stale_until: u64,
        json: Vec<u8>,
    },
    Inactive {
        issuer: Scope,
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

    fn scope(&self) -> Scope {
        match self {
            Entry::Active { issuer, .. } | Entry::Inactive { issuer, .. } => *issuer,
        }
    }

    /// How willingly a write replaces this live entry of another token:
    /// lower first, and of equal rank the one closest to expiry.
    fn rank(&self, now: u64) -> (u8, u64) {
        match self {
            Entry::Inactive { until, .. } => (RANK_INACTIVE, *until),
            Entry::Active {
                fresh_until,
                stale_until,
                ..
            } if now >= *fresh_until => (RANK_STALE, *stale_until),
            Entry::Active { fresh_until, .. } => (RANK_ACTIVE, *fresh_until),
        }
    }
}

const RANK_SAME: u8 = 0;
const RANK_EMPTY: u8 = 1;
const RANK_INACTIVE: u8 = 2;
const RANK_STALE: u8 = 3;
const RANK_ACTIVE: u8 = 4;

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// In place of the same token's entry.
    Stored,
    /// Into an empty way (never written, expired, or unreadable): the
    /// table's occupancy grew, or an expired entry was reused.
    Filled,
    /// In place of another token's live entry.
    Evicted,
    /// Over `entry_bytes`: only the worker's own cache keeps it.
    TooLarge,
    /// Every way of the set holds another token's live active answer,
    /// which an inactive one does not replace.
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

/// One way as a write sees it.
struct Way {
    key: String,
    cas: Option<u32>,
    rank: (u8, u64),
}

impl SharedCache {
    /// `total_bytes / entry_bytes` slots (none when `total_bytes` is 0) in
    /// sets of [`WAYS`].
    pub fn new(total_bytes: usize, entry_bytes: usize) -> SharedCache {
        SharedCache::with_ways(total_bytes, entry_bytes, WAYS)
    }

    /// With `ways` ways per set (1: direct-mapped), fewer if the table has
    /// fewer slots.
    pub fn with_ways(total_bytes: usize, entry_bytes: usize, ways: u64) -> SharedCache {
        let slots = ((total_bytes / entry_bytes.max(1)) as u64).min(MAX_SLOTS);
        let ways = ways.clamp(1, slots.max(1));
        SharedCache {
            sets: slots / ways,
            ways,
            entry_bytes,
        }
    }

    pub fn enabled(&self) -> bool {
        self.sets > 0
    }

    /// The keys the table may use: at most `total_bytes / entry_bytes`.
    pub fn slots(&self) -> u64 {
        self.sets * self.ways
    }

    /// The smallest entry budget that still holds a useful answer (127, as
    /// when entries had a larger header, so configurations stay valid).
    pub fn min_entry_bytes() -> usize {
        (ENTRY_HEADER_BYTES + 64).max(127)
    }

    fn set_of(&self, digest: &Digest) -> u64 {
        be_u64(digest, 0) % self.sets.max(1)
    }

    /// The set's keys, starting at the token's home way.
    fn probe(&self, digest: &Digest) -> impl Iterator<Item = String> {
        let first = self.set_of(digest) * self.ways;
        let home = be_u64(digest, 8) % self.ways.max(1);
        let ways = self.ways;
        (0..ways).map(move |i| format!("{PREFIX}.{}", first + (home + i) % ways))
    }

    /// One marker key per slot: `slots` keys, whatever clients send.
    pub fn marker_key(&self, digest: &Digest) -> String {
        format!(
            "{PREFIX}.{}.in_flight",
            be_u64(digest, 0) % self.slots().max(1)
        )
    }

    /// What a marker says is being asked: this token under this scope.
    /// Another scope (a second listener, or a configuration that changed what
    /// its issuer accepts) asks with its own settings, and its answer is not
    /// one this scope reads; so its worker neither waits for this marker nor
    /// is waited for. The marker key stays the same, so shared data holds no
    /// more marker keys than slots.
    pub fn marker_subject(&self, scope: &Scope, token: &Digest) -> Digest {
        crate::cache::digest(&[&scope.0, token])
    }

    /// The live entry for this token under this scope, if its set holds one.
    pub fn read(
        &self,
        store: &dyn SharedStore,
        scope: &Scope,
        digest: &Digest,
        now: u64,
    ) -> Option<Entry> {
        if !self.enabled() {
            return None;
        }
        self.probe(digest).find_map(|key| {
            let (bytes, _) = store.get(&key)?;
            let (held, entry) = decode(&bytes)?;
            (held == *digest && entry.scope() == *scope && now < entry.live_until())
                .then_some(entry)
        })
    }

    /// Stores `entry` for the token, in the way the replacement order picks.
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
        let bytes = encode(digest, entry);
        if bytes.len() > self.entry_bytes {
            return Written::TooLarge;
        }
        // Conditional on the version read: if another worker wrote the way
        // meanwhile, choose again once (it may have taken the way we chose
        // for another token), then give up rather than spin.
        for _ in 0..2 {
            let Some(way) = self.victim(store, digest, entry, now) else {
                return Written::KeptOther;
            };
            if store.set(&way.key, &bytes, way.cas).is_ok() {
                return match way.rank.0 {
                    RANK_SAME => Written::Stored,
                    RANK_EMPTY => Written::Filled,
                    _ => Written::Evicted,
                };
            }
        }
        Written::Skipped
    }

    /// The way `entry` goes into, if any may take it.
    fn victim(
        &self,
        store: &dyn SharedStore,
        digest: &Digest,
        entry: &Entry,
        now: u64,
    ) -> Option<Way> {
        let mut best: Option<Way> = None;
        for key in self.probe(digest) {
            let (rank, cas) = match store.get(&key) {
                None => ((RANK_EMPTY, 0), None),
                Some((bytes, cas)) => {
                    let rank = match decode(&bytes) {
                        Some((held, old)) if now < old.live_until() => {
                            if held == *digest && old.scope() == entry.scope() {
                                (RANK_SAME, 0)
                            } else {
                                old.rank(now)
                            }
                        }
                        _ => (RANK_EMPTY, 0),
                    };
                    (rank, Some(cas))
                }
            };
            if best.as_ref().is_none_or(|b| rank < b.rank) {
                best = Some(Way { key, cas, rank });
            }
            if rank.0 == RANK_SAME {
                break;
            }
        }
        best.filter(|way| matches!(entry, Entry::Active { .. }) || way.rank.0 < RANK_ACTIVE)
    }
}

fn be_u64(digest: &Digest, at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(digest.get(at..at + 8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(bytes)
}

fn encode(digest: &Digest, entry: &Entry) -> Vec<u8> {
    let (kind, first, second, json): (u8, u64, u64, &[u8]) = match entry {
        Entry::Active {
            fresh_until,
            stale_until,
            json,
            ..
        } => (1, *fresh_until, *stale_until, json),
        Entry::Inactive { until, .. } => (0, *until, *until, &[]),
    };
    let mut out = Vec::with_capacity(ENTRY_HEADER_BYTES + json.len());
    out.extend_from_slice(ENTRY_MAGIC);
    out.extend_from_slice(&entry.scope().0);
    out.extend_from_slice(digest);
    out.push(kind);
    out.extend_from_slice(&first.to_be_bytes());
    out.extend_from_slice(&second.to_be_bytes());
    out.extend_from_slice(json);
    out
}

fn decode(bytes: &[u8]) -> Option<(Digest, Entry)> {
    let mut r = Reader(bytes);
    if r.take(4)? != ENTRY_MAGIC {
        return None;
    }
    let issuer = Scope(r.take(8)?.try_into().ok()?);
    let digest: Digest = r.take(32)?.try_into().ok()?;
    let kind = *r.take(1)?.first()?;
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

    const S: Scope = Scope(*b"scope-01");

    fn active(fresh_until: u64, json: &str) -> Entry {
        Entry::Active {
            issuer: S,
            fresh_until,
            stale_until: fresh_until,
            json: json.as_bytes().to_vec(),
        }
    }

    fn inactive(until: u64) -> Entry {
        Entry::Inactive { issuer: S, until }
    }

    /// `n` tokens whose digests fall in the same set of `cache`.
    fn same_set(cache: &SharedCache, n: usize) -> Vec<Digest> {
        let first = digest(&[b"0"]);
        let mut out = vec![first];
        let mut i = 1u32;
        while out.len() < n {
            let d = digest(&[&i.to_be_bytes()]);
            if cache.set_of(&d) == cache.set_of(&first) {
                out.push(d);
            }
            i += 1;
        }
        out
    }

    #[test]
    fn an_entry_answers_only_for_its_own_token_scope_and_only_until_it_expires() {
        let store = MemoryStore::default();
        let cache = SharedCache::new(1 << 20, 1024);
        let a = digest(&[b"token-a"]);
        let entry = active(1_000, r#"{"sub":"u"}"#);
        assert_eq!(cache.write(&store, &a, &entry, 900), Written::Filled);
        assert_eq!(cache.read(&store, &S, &a, 999), Some(entry.clone()));
        assert_eq!(cache.read(&store, &S, &a, 1_000), None, "expired");
        assert_eq!(cache.read(&store, &S, &digest(&[b"token-b"]), 999), None);
        // Another scope (what the issuer accepts changed) never reads it.
        assert_eq!(cache.read(&store, &Scope(*b"scope-02"), &a, 999), None);
        // The same token's answer again replaces its own entry.
        assert_eq!(cache.write(&store, &a, &entry, 901), Written::Stored);
        // And a configuration with another table size but the same scope
        // still reads what fits its own sets (the same keys).
        assert_eq!(
            SharedCache::new(1 << 20, 1024).read(&store, &S, &a, 999),
            Some(entry)
        );
    }

    #[test]
    fn the_table_has_a_fixed_number_of_keys_bounded_in_bytes() {
        let store = MemoryStore::default();
        // 8 slots of at most 256 bytes: 2 sets of 4 ways.
        let cache = SharedCache::new(2048, 256);
        assert_eq!((cache.sets, cache.ways, cache.slots()), (2, 4, 8));
        for i in 0..1000u32 {
            let d = digest(&[&i.to_be_bytes()]);
            cache.write(
                &store,
                &d,
                &active(u64::from(i) + 10, r#"{"scope":"a"}"#),
                0,
            );
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
    fn tokens_that_share_a_set_keep_their_answers_where_direct_mapping_loses_one() {
        // 64 slots: direct-mapped, two tokens of one slot take turns.
        let direct = SharedCache::with_ways(64 * 256, 256, 1);
        let store = MemoryStore::default();
        let (a, b) = {
            let t = same_set(&direct, 2);
            (t[0], t[1])
        };
        assert_eq!(
            direct.write(&store, &a, &active(100, "{}"), 0),
            Written::Filled
        );
        assert_eq!(
            direct.write(&store, &b, &active(100, "{}"), 0),
            Written::Evicted
        );
        assert_eq!(direct.read(&store, &S, &a, 1), None, "a lost to b");

        // The same budget in sets of four: four tokens of one set all stay.
        let cache = SharedCache::new(64 * 256, 256);
        let store = MemoryStore::default();
        let tokens = same_set(&cache, 5);
        for t in &tokens[..4] {
            assert_eq!(
                cache.write(&store, t, &active(100, "{}"), 0),
                Written::Filled
            );
        }
        for t in &tokens[..4] {
            assert!(cache.read(&store, &S, t, 1).is_some());
        }
        // A fifth takes the way of the one closest to expiry.
        cache.write(&store, &tokens[2], &active(50, "{}"), 0);
        assert_eq!(
            cache.write(&store, &tokens[4], &active(100, "{}"), 1),
            Written::Evicted
        );
        assert!(cache.read(&store, &S, &tokens[2], 2).is_none());
        for t in [0, 1, 3, 4] {
            assert!(cache.read(&store, &S, &tokens[t], 2).is_some(), "{t}");
        }
    }

    #[test]
    fn replacement_takes_the_same_token_then_empty_then_inactive_then_soonest_to_expire() {
        let cache = SharedCache::new(4 * 256, 256); // one set of 4 ways
        let store = MemoryStore::default();
        let t = same_set(&cache, 8);
        let live = |d: &Digest, now| cache.read(&store, &S, d, now).is_some();
        // Empty ways first: four tokens fill the set.
        assert_eq!(
            cache.write(&store, &t[0], &active(100, "{}"), 0),
            Written::Filled
        );
        assert_eq!(
            cache.write(&store, &t[1], &inactive(30), 0),
            Written::Filled
        );
        assert_eq!(
            cache.write(&store, &t[2], &active(60, "{}"), 0),
            Written::Filled
        );
        assert_eq!(
            cache.write(&store, &t[3], &inactive(20), 0),
            Written::Filled
        );
        // The same token's own way before anything else.
        assert_eq!(
            cache.write(&store, &t[0], &active(200, "{}"), 1),
            Written::Stored
        );
        assert_eq!(store.keys().len(), 4);
        // An expired way is an empty one (t[3] expired at 20).
        assert_eq!(
            cache.write(&store, &t[4], &active(90, "{}"), 25),
            Written::Filled
        );
        assert!(!live(&t[3], 25) && live(&t[1], 25));
        // Then the live inactive answer (t[1]), though actives expire sooner.
        assert_eq!(
            cache.write(&store, &t[5], &active(80, "{}"), 26),
            Written::Evicted
        );
        assert!(!live(&t[1], 26));
        // Then the live active answer closest to expiry (t[2], at 60).
        assert_eq!(
            cache.write(&store, &t[6], &active(300, "{}"), 27),
            Written::Evicted
        );
        assert!(!live(&t[2], 27));
        for d in [&t[0], &t[4], &t[5], &t[6]] {
            assert!(live(d, 27));
        }
        // An inactive answer never pushes out a live active one...
        assert_eq!(
            cache.write(&store, &t[7], &inactive(99), 27),
            Written::KeptOther
        );
        assert!(!live(&t[7], 27));
        // ...but takes one past its TTL that is kept only to be served stale.
        let stale = Entry::Active {
            issuer: S,
            fresh_until: 28,
            stale_until: 500,
            json: b"{}".to_vec(),
        };
        assert_eq!(cache.write(&store, &t[5], &stale, 27), Written::Stored);
        assert_eq!(
            cache.write(&store, &t[7], &inactive(99), 29),
            Written::Evicted
        );
        assert!(live(&t[7], 29) && !live(&t[5], 29));
    }

    #[test]
    fn another_scopes_answer_for_the_same_token_is_another_entry() {
        let cache = SharedCache::new(4 * 256, 256);
        let store = MemoryStore::default();
        let t = digest(&[b"t"]);
        let other = Entry::Active {
            issuer: Scope(*b"scope-02"),
            fresh_until: 100,
            stale_until: 100,
            json: b"{}".to_vec(),
        };
        assert_eq!(
            cache.write(&store, &t, &active(100, "{}"), 0),
            Written::Filled
        );
        assert_eq!(cache.write(&store, &t, &other, 0), Written::Filled);
        assert_eq!(cache.read(&store, &S, &t, 1), Some(active(100, "{}")));
        assert_eq!(cache.read(&store, &Scope(*b"scope-02"), &t, 1), Some(other));
    }

    #[test]
    fn of_two_workers_one_claims_the_token_and_the_other_waits() {
        let store = MemoryStore::default();
        let cache = SharedCache::new(1 << 20, 1024);
        let t = digest(&[b"t"]);
        let key = cache.marker_key(&t);
        let subject = cache.marker_subject(&S, &t);
        let claim = |owner, until, now| claim_marker(&store, &key, &subject, owner, until, now);
        assert_eq!(claim(1, 10, 0), Claim::Claimed);
        assert_eq!(claim(2, 12, 1), Claim::HeldElsewhere { until: 10 });
        // Past its deadline a marker no longer holds anyone back.
        assert_eq!(claim(2, 20, 10), Claim::Claimed);
        release_marker(&store, &key, &subject, 1); // not the holder: no effect
        assert_eq!(claim(3, 30, 11), Claim::HeldElsewhere { until: 20 });
        release_marker(&store, &key, &subject, 2);
        assert_eq!(claim(3, 30, 11), Claim::Claimed);
        // Another scope's worker neither waits for this marker nor is waited for.
        let theirs = cache.marker_subject(&Scope(*b"scope-02"), &t);
        assert_ne!(theirs, subject);
        assert_eq!(
            claim_marker(&store, &key, &theirs, 4, 30, 12),
            Claim::Claimed
        );
    }

    #[test]
    fn garbage_in_shared_data_reads_as_nothing_and_as_an_empty_way() {
        let store = MemoryStore::default();
        let cache = SharedCache::new(4 * 256, 256);
        let t = digest(&[b"t"]);
        let mut old = b"OPI1".to_vec(); // the previous format
        old.extend_from_slice(&[0; 200]);
        let mut truncated = encode(&t, &active(100, "{}"));
        truncated.truncate(40);
        let mut bad_kind = encode(&t, &active(100, "{}"));
        if let Some(kind) = bad_kind.get_mut(44) {
            *kind = 7;
        }
        for junk in [
            &b""[..],
            b"OPI2",
            b"OPI2\0\0\0\0\0\0\0\0short",
            &[0xff; 300],
            &old,
            &truncated,
            &bad_kind,
        ] {
            for key in cache.probe(&t) {
                store.set(&key, junk, None).unwrap();
            }
            store.set(&cache.marker_key(&t), junk, None).unwrap();
            assert_eq!(cache.read(&store, &S, &t, 0), None);
            assert_eq!(
                claim_marker(&store, &cache.marker_key(&t), &t, 1, 5, 0),
                Claim::Claimed
            );
            // Unreadable ways are free: even an inactive answer takes one.
            assert_eq!(cache.write(&store, &t, &inactive(9), 0), Written::Filled);
            assert_eq!(cache.read(&store, &S, &t, 0), Some(inactive(9)));
        }
    }

    #[test]
    fn off_means_no_shared_data_at_all() {
        let store = MemoryStore::default();
        let cache = SharedCache::new(0, 4096);
        let t = digest(&[b"t"]);
        assert_eq!(
            cache.write(&store, &t, &active(9, "{}"), 0),
            Written::Skipped
        );
        assert_eq!(cache.read(&store, &S, &t, 0), None);
        assert!(store.keys().is_empty());
        // A table smaller than a set is one set of as many ways as slots.
        let tiny = SharedCache::new(2 * 256, 256);
        assert_eq!((tiny.sets, tiny.ways), (1, 2));
    }

    /// The replay behind the numbers in docs/introspection-cache.md: one
    /// instance's requests for an hour, tokens of Zipf popularity (s = 1),
    /// each answer cached 300 s, through an 8 MiB table: 4 KiB entries (the
    /// default, 2,048 slots) direct-mapped and in sets of 4 and 8 ways, and
    /// 1 KiB entries (8,192 slots) direct-mapped and in sets of 4; against a
    /// table of 2^20 slots (the floor: first sights and TTL expiry). Counts
    /// introspections (misses) and the host reads per lookup. Run with
    /// `cargo test -p oauth-pep-core --release replay -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn replay() {
        println!(
            "tokens  req/s  table               misses            gets/hit  gets/miss  evictions"
        );
        let tables: [(&str, usize, usize, u64); 6] = [
            ("floor (2^20 slots)", 1 << 30, 1024, 8),
            ("2,048 x 1 way", 8 << 20, 4096, 1),
            ("2,048 x 4 ways", 8 << 20, 4096, 4),
            ("2,048 x 8 ways", 8 << 20, 4096, 8),
            ("8,192 x 1 way", 8 << 20, 1024, 1),
            ("8,192 x 4 ways", 8 << 20, 1024, 4),
        ];
        for (tokens, rate) in [
            (2_000u64, 50u64),
            (5_000, 100),
            (10_000, 150),
            (20_000, 200),
        ] {
            let mut floor = 0;
            for (name, bytes, entry, ways) in tables {
                let cache = SharedCache::with_ways(bytes, entry, ways);
                let store = CountingStore::default();
                let zipf = Zipf::new(tokens, 1.0);
                let mut rng = 0x9e37_79b9_7f4a_7c15u64;
                let (mut misses, mut hits, mut hit_gets, mut miss_gets, mut evictions) =
                    (0u64, 0u64, 0u64, 0u64, 0u64);
                for now in 0..3_600 {
                    for _ in 0..rate {
                        let token = zipf.sample(next(&mut rng));
                        let d = digest(&[&token.to_be_bytes()]);
                        let before = store.gets.get();
                        let found = cache.read(&store, &S, &d, now).is_some();
                        let gets = store.gets.get() - before;
                        if found {
                            hits += 1;
                            hit_gets += gets;
                        } else {
                            misses += 1;
                            miss_gets += gets;
                            let entry = active(now + 300, &"x".repeat(600));
                            if cache.write(&store, &d, &entry, now) == Written::Evicted {
                                evictions += 1;
                            }
                        }
                    }
                }
                if floor == 0 {
                    floor = misses;
                }
                println!(
                    "{tokens:>6}  {rate:>5}  {name:<18}  {misses:>7} ({:.2}x)  {:>8.2}  {:>9.2}  {evictions:>9}",
                    misses as f64 / floor.max(1) as f64,
                    hit_gets as f64 / hits.max(1) as f64,
                    miss_gets as f64 / misses.max(1) as f64,
                );
            }
        }
    }

    #[derive(Default)]
    struct CountingStore {
        inner: MemoryStore,
        gets: std::cell::Cell<u64>,
    }

    impl SharedStore for CountingStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.gets.set(self.gets.get() + 1);
            self.inner.get(key)
        }

        fn set(
            &self,
            key: &str,
            value: &[u8],
            cas: Option<u32>,
        ) -> Result<(), crate::services::CasMismatch> {
            self.inner.set(key, value, cas)
        }
    }

    fn next(state: &mut u64) -> f64 {
        // xorshift64*: deterministic, good enough for a replay.
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Token ranks 0..n drawn with probability proportional to 1 / (rank + 1)^s.
    struct Zipf {
        cumulative: Vec<f64>,
    }

    impl Zipf {
        fn new(n: u64, s: f64) -> Zipf {
            let mut total = 0.0;
            let cumulative = (0..n)
                .map(|k| {
                    total += 1.0 / ((k + 1) as f64).powf(s);
                    total
                })
                .collect::<Vec<_>>();
            let cumulative = cumulative.into_iter().map(|c| c / total).collect();
            Zipf { cumulative }
        }

        fn sample(&self, u: f64) -> u64 {
            self.cumulative.partition_point(|&c| c < u) as u64
        }
    }
}
