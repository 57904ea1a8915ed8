//! Revocations through etcd (with a `fleet_cache` block): the receiver's
//! deny entries are written there (a lease for the retention, then one put
//! per entry) before it answers 202, and one worker per process polls the
//! deny prefix on its tick by revision, taking what verifies into the
//! process's deny set. Both go through the etcd client of the fleet cache
//! ([`crate::etcd`]) with its endpoint, user, timeouts and auth token (the
//! fleet cache's session, obtained on the root's tick: neither a poll nor
//! a push ever authenticates itself).

use std::rc::Rc;

use crate::budget::{Budget, Spender};
use crate::cache::Digest;
use crate::callout::{Callout, CalloutReply};
use crate::config::Config;
use crate::etcd::{self, EtcdError};
use crate::fleet_cache::{FleetCache, AUTH_USE_SECONDS};
use crate::metrics::{Counter, Gauge, Metrics};
use crate::revocation::deny::Denied;
use crate::revocation::deny::DenyKey;
use crate::revocation::{Fanout, Revocation, POLL_PAGE};
use crate::services::SharedStore;
use crate::shared_cache::{claim_marker, Claim};
use crate::wait::Note;

use super::{Fetch, Resume, Resumed, State, Verdict};

/// Which worker of the process polls (a marker, like a fetch's).
const POLLER_KEY: &str = "oauth_pep.deny.poller";
const POLLER_SUBJECT: Digest = [0x70; 32];
/// The revision the process has read the deny prefix up to.
const REVISION_KEY: &str = "oauth_pep.deny.revision";
/// The receiver's etcd writes per worker: a transmitter's burst is taken,
/// a flood of (valid) SETs gets 503s instead of as many writes.
pub const PUSH_BUDGET: Budget = Budget {
    per_second: 20,
    burst: 40,
};

/// What one worker keeps for the fan-out.
#[derive(Debug)]
pub struct FanoutState {
    next_poll_ms: u64,
    /// A poll of this worker in flight, until then (s): one at a time.
    polling_until: u64,
    pushes: Spender,
}

impl FanoutState {
    pub fn new() -> Self {
        FanoutState {
            next_poll_ms: 0,
            polling_until: 0,
            pushes: Spender::new(PUSH_BUDGET),
        }
    }
}

/// One etcd call of the fan-out: a step of a poll, or of a receiver's push.
#[derive(Debug, PartialEq)]
pub struct PendingDeny {
    step: Step,
    job: Job,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Scan { from: i64 },
    Grant,
    Put { lease: i64, index: usize },
}

#[derive(Debug, PartialEq)]
enum Job {
    Poll,
    Push(Box<Push>),
}

/// A SET's revocations on their way to etcd, and what the receiver does
/// once they are there (remember the `jti`, answer 202).
#[derive(Debug, PartialEq)]
pub(super) struct Push {
    pub(super) writes: Vec<(Vec<u8>, Vec<u8>)>,
    /// The lease's TTL: the longest entry's remaining life.
    pub(super) ttl: i64,
    pub(super) replay_id: Digest,
    pub(super) replay_until: u64,
    pub(super) revocations: usize,
    pub(super) ignored: usize,
}

type Parts<'c> = (&'c Revocation, &'c Fanout, &'c FleetCache);

fn parts(config: &Config) -> Option<Parts<'_>> {
    let revocation = config.revocation.as_ref()?;
    Some((
        revocation,
        revocation.fanout.as_ref()?,
        config.fleet_cache.as_ref()?,
    ))
}

/// The SET's etcd writes, when there is a fan-out: `None` without one.
pub(super) fn writes(
    config: &Config,
    items: &[(crate::revocation::set::Target, Denied)],
) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let (revocation, fanout, _) = parts(config)?;
    Some(
        items
            .iter()
            .map(|(target, denied)| revocation.seal(fanout, target, *denied))
            .collect(),
    )
}

/// Whether etcd may be called now: without auth, or with the fleet cache's
/// token (the root's tick obtains it; nothing here waits for it).
fn authenticated(state: &State, fleet: &FleetCache, now: u64) -> bool {
    fleet.credentials.is_none() || state.fleet.session.token(AUTH_USE_SECONDS, now).is_some()
}

fn callout(state: &State, parts: Parts, step: Step, job: &Job, now: u64) -> Callout {
    let (_, fanout, fleet) = parts;
    let e = &fleet.etcd;
    let token = state.fleet.session.token(AUTH_USE_SECONDS, now);
    let token = token.as_deref();
    let (read, write) = (fleet.read_timeout_ms, fleet.write_timeout_ms);
    match (step, job) {
        (Step::Scan { from }, _) => e.scan(&fanout.prefix, from, POLL_PAGE, token, read),
        (Step::Grant, Job::Push(push)) => e.grant(push.ttl, token, write),
        (Step::Put { lease, index }, Job::Push(push)) => {
            let (key, value) = push
                .writes
                .get(index)
                .map_or((&[][..], &[][..]), |(k, v)| (k.as_slice(), v.as_slice()));
            e.put(key, value, Some(lease), token, write)
        }
        // A poll never grants or puts.
        (Step::Grant | Step::Put { .. }, Job::Poll) => e.get(&fanout.prefix, token, read),
    }
}

/// The receiver's push: its first etcd call, for the request to make; a
/// 503 past the budget.
pub(super) fn push(
    config: &Config,
    state: &mut State,
    push: Push,
    client: Option<&str>,
    now: u64,
) -> Verdict {
    let Some(parts) = parts(config) else {
        return super::revoke::unavailable("no fan-out is configured");
    };
    if !authenticated(state, parts.2, now) {
        return super::revoke::unavailable("no etcd auth token yet (the fleet cache obtains it)");
    }
    if !state.fanout.pushes.spend(client, now) {
        return super::revoke::unavailable("the receiver's etcd write budget is spent");
    }
    let step = Step::Grant;
    let job = Job::Push(Box::new(push));
    Verdict::Call {
        callout: Box::new(callout(state, parts, step, &job, now)),
        resume: Resume::Deny(Box::new(PendingDeny { step, job })),
    }
}

fn read_revision(store: &dyn SharedStore) -> i64 {
    store
        .get(REVISION_KEY)
        .and_then(|(bytes, _)| Some(i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?)))
        .unwrap_or(0)
}

/// Root, on each tick: the poll, if it is time and this worker polls for
/// the process (another worker's marker is live otherwise).
pub(super) fn poll_due(config: &Config, state: &mut State, now_ms: u64) -> Option<Fetch> {
    let parts = parts(config)?;
    let now = now_ms / 1000;
    if now_ms < state.fanout.next_poll_ms || now < state.fanout.polling_until {
        return None;
    }
    let (_, fanout, fleet) = parts;
    if !authenticated(state, fleet, now) {
        return None;
    }
    state.fanout.next_poll_ms = now_ms.saturating_add(fanout.poll_ms);
    let timeout = fleet.read_timeout_ms.max(fleet.write_timeout_ms) / 1000 + 2;
    let store = Rc::clone(&state.replay);
    let until = now.saturating_add(timeout.max(fanout.poll_ms / 1000 + 2));
    if let Claim::HeldElsewhere { .. } = claim_marker(
        store.as_ref(),
        POLLER_KEY,
        &POLLER_SUBJECT,
        state.worker,
        until,
        now,
    ) {
        return None;
    }
    state.fanout.polling_until = now.saturating_add(timeout);
    let from = read_revision(store.as_ref()).saturating_add(1);
    let step = Step::Scan { from };
    let job = Job::Poll;
    Some(Fetch {
        callout: Box::new(callout(state, parts, step, &job, now)),
        resume: Resume::Deny(Box::new(PendingDeny { step, job })),
    })
}

/// What an etcd answer (or a dispatch failure) leads to.
pub(super) fn on_reply(
    config: &Config,
    state: &mut State,
    metrics: &dyn Metrics,
    pending: PendingDeny,
    answer: Result<&CalloutReply, &str>,
    now: u64,
) -> Resumed {
    let PendingDeny { step, job } = pending;
    let Some(parts) = parts(config) else {
        return failed(state, metrics, job, "no fan-out is configured".into());
    };
    let reply = match answer {
        Ok(reply) => reply,
        Err(why) => {
            return failed(
                state,
                metrics,
                job,
                format!("etcd callout not dispatched: {why}"),
            )
        }
    };
    let next = match step {
        Step::Grant => etcd::read_grant(reply).map(|lease| Step::Put {
            lease: lease.id,
            index: 0,
        }),
        Step::Put { lease, index } => etcd::read_put(reply).map(|_| Step::Put {
            lease,
            index: index.saturating_add(1),
        }),
        Step::Scan { from } => match etcd::read_range(reply) {
            Ok(range) => return scanned(state, metrics, parts, from, range, now),
            Err(e) => Err(e),
        },
    };
    let next = match next {
        Ok(next) => next,
        Err(e) => {
            if matches!(e, EtcdError::Unauthenticated(_)) {
                state.fleet.session.refused();
            }
            return failed(state, metrics, job, e.to_string());
        }
    };
    match (next, job) {
        (Step::Put { index, .. }, Job::Push(push)) if index >= push.writes.len() => {
            Resumed::Decided(super::revoke::stored(config, state, &push, now))
        }
        (next, Job::Push(push)) => {
            let job = Job::Push(push);
            Resumed::Decided(Verdict::Call {
                callout: Box::new(callout(state, parts, next, &job, now)),
                resume: Resume::Deny(Box::new(PendingDeny { step: next, job })),
            })
        }
        (next, Job::Poll) => Resumed::Next(Fetch {
            callout: Box::new(callout(state, parts, next, &Job::Poll, now)),
            resume: Resume::Deny(Box::new(PendingDeny {
                step: next,
                job: Job::Poll,
            })),
        }),
    }
}

/// A page of the deny prefix: what verifies goes into the deny set, then
/// the next page, or the poll is over.
fn scanned(
    state: &mut State,
    metrics: &dyn Metrics,
    parts: Parts,
    from: i64,
    range: etcd::Range,
    now: u64,
) -> Resumed {
    let (revocation, fanout, _) = parts;
    let mut items: Vec<(DenyKey, Denied)> = Vec::new();
    let mut rejected: Vec<&'static str> = Vec::new();
    let mut last = from.saturating_sub(1);
    for kv in &range.kvs {
        last = last.max(kv.mod_revision);
        match revocation.open(fanout, &kv.key, &kv.value, now) {
            Ok(item) => items.push(item),
            Err(why) => rejected.push(why.code()),
        }
    }
    metrics.increment(Counter::RevocationEntry { taken: true }, items.len() as u64);
    metrics.increment(
        Counter::RevocationEntry { taken: false },
        rejected.len() as u64,
    );
    let mut notes = Vec::new();
    if let Some(why) = rejected.first() {
        notes.push(Note::Warn(format!(
            "revocation poll: {} deny entr(ies) in etcd rejected (first: {why}): is something without the fleet key writing the deny prefix?",
            rejected.len()
        )));
    }
    let store = Rc::clone(&state.replay);
    if !items.is_empty() {
        if let Err(e) = state
            .deny
            .add(store.as_ref(), &items, revocation.max_entries, now)
        {
            // The revision is not moved on: the next poll reads them again.
            state.fanout.polling_until = 0;
            metrics.increment(Counter::RevocationPoll { ok: false }, 1);
            notes.push(Note::Warn(format!("revocation poll: {e}")));
            return Resumed::Later { notes };
        }
        metrics.set(Gauge::DenyEntries, state.deny.len() as u64);
    }
    // Keys a transaction wrote together share a revision: a page cut among
    // them is read again from that revision (unless it is all the page).
    let next = if range.more {
        if last > from {
            last
        } else {
            last.saturating_add(1)
        }
    } else {
        range.revision.max(last).saturating_add(1)
    };
    let _ = store.set(REVISION_KEY, &next.saturating_sub(1).to_be_bytes(), None);
    if range.more {
        let step = Step::Scan { from: next };
        return Resumed::Next(Fetch {
            callout: Box::new(callout(state, parts, step, &Job::Poll, now)),
            resume: Resume::Deny(Box::new(PendingDeny {
                step,
                job: Job::Poll,
            })),
        });
    }
    state.fanout.polling_until = 0;
    metrics.increment(Counter::RevocationPoll { ok: true }, 1);
    Resumed::Later { notes }
}

fn failed(state: &mut State, metrics: &dyn Metrics, job: Job, why: String) -> Resumed {
    match job {
        Job::Poll => {
            state.fanout.polling_until = 0;
            metrics.increment(Counter::RevocationPoll { ok: false }, 1);
            Resumed::Later {
                notes: vec![Note::Warn(format!("revocation poll failed: {why}"))],
            }
        }
        Job::Push(_) => Resumed::Decided(super::revoke::unavailable(&format!(
            "the deny entries could not be written to etcd: {why}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use serde_json::json;

    use super::*;
    use crate::engine::test_support::*;
    use crate::engine::Request;
    use crate::extract::tests::h;
    use crate::jwt::test_vectors::vectors;
    use crate::metrics::testing::FakeMetrics;
    use crate::response::{Denial, TokenProblem};
    use crate::revocation::set::tests::sign;
    use crate::revocation::set::{Target, ACCOUNT_DISABLED};

    const KEY: &str = "fleet-key-0123456789abcdef-0123456789";

    fn config() -> Config {
        let json = format!(
            r#"{{"issuers":[{{"issuer":"https://hs.test","audiences":["api"],"shared_secret":"{}"}}],
                "fleet_cache":{{"endpoint":"http://etcd:2379","upstream":"etcd","key_prefix":"/p/","hmac_key_env":"K"}},
                "revocation":{{"receiver":{{"path":"/ssf","transmitter":"https://hs.test","audience":"gw"}},"retention_seconds":3600,"poll_ms":500}}}}"#,
            vectors().hs_secret
        );
        Config::from_json(json.as_bytes(), &|n| (n == "K").then(|| KEY.to_string())).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        etcd::b64(bytes)
    }

    fn alice() -> Target {
        Target::Subject {
            iss: "https://hs.test".into(),
            sub: "alice".into(),
        }
    }

    fn range(kvs: &[(Vec<u8>, Vec<u8>, i64)], more: bool, revision: i64) -> CalloutReply {
        let kvs: Vec<_> = kvs
            .iter()
            .map(|(k, v, r)| json!({"key": b64(k), "value": b64(v), "mod_revision": r.to_string()}))
            .collect();
        let mut body =
            json!({"header": {"revision": revision.to_string()}, "count": kvs.len().to_string()});
        if !kvs.is_empty() {
            body["kvs"] = json!(kvs);
        }
        if more {
            body["more"] = json!(true);
        }
        reply(200, &body.to_string())
    }

    fn scan_body(fetch: &Fetch) -> serde_json::Value {
        serde_json::from_slice(fetch.callout.body.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn one_worker_polls_by_revision_and_takes_only_what_verifies() {
        let c = config();
        let store = Rc::new(crate::services::testing::MemoryStore::default());
        let (mut a, mut b) = (State::new(&c), State::new(&c));
        a.share_through(store.clone(), 1);
        b.share_through(store.clone(), 2);
        let now_ms = vectors().now * 1000;
        let poll = poll_due(&c, &mut a, now_ms).expect("a polls");
        assert!(
            poll_due(&c, &mut b, now_ms).is_none(),
            "one poller per process"
        );
        assert!(
            poll_due(&c, &mut a, now_ms + 100).is_none(),
            "one poll at a time"
        );
        assert_eq!(poll.callout.url.path, "/v3/kv/range");
        assert_eq!(scan_body(&poll)["min_mod_revision"], json!("1"));

        let revocation = c.revocation.as_ref().unwrap();
        let fanout = revocation.fanout.as_ref().unwrap();
        let now = vectors().now;
        let (key, value) = revocation.seal(
            fanout,
            &alice(),
            Denied {
                at: now - 5,
                until: now + 600,
            },
        );
        let forged = crate::revocation::stored::seal(
            b"another-key-another-key-another!",
            b"/p/d/",
            &alice(),
            Denied {
                at: now,
                until: now + 600,
            },
        );
        let metrics = FakeMetrics::default();
        let Resume::Deny(pending) = poll.resume else {
            panic!()
        };
        let page = range(&[(key, value, 7), (forged.0, forged.1, 8)], true, 9);
        let Resumed::Next(next) = on_reply(&c, &mut a, &metrics, *pending, Ok(&page), now) else {
            panic!("more: the next page at once")
        };
        assert_eq!(
            scan_body(&next)["min_mod_revision"],
            json!("8"),
            "from the last page's last revision"
        );
        assert_eq!(metrics.counter(Counter::RevocationEntry { taken: true }), 1);
        assert_eq!(
            metrics.counter(Counter::RevocationEntry { taken: false }),
            1
        );
        let Resume::Deny(pending) = next.resume else {
            panic!()
        };
        let Resumed::Later { notes } = on_reply(
            &c,
            &mut a,
            &metrics,
            *pending,
            Ok(&range(&[], false, 12)),
            now,
        ) else {
            panic!()
        };
        assert!(notes.is_empty());
        assert_eq!(metrics.counter(Counter::RevocationPoll { ok: true }), 1);
        assert_eq!(read_revision(store.as_ref()), 12);

        // Every worker of the process refuses alice's earlier tokens.
        crate::engine::due(&c, &mut b, &FakeMetrics::default(), now_ms);
        let t = bearer(&hs_token(hs_claims(json!({"iat": now - 10}))));
        assert_eq!(
            run(&c, &mut b, &t, "/"),
            crate::engine::Verdict::Deny(Denial::InvalidToken(TokenProblem::Revoked))
        );
        // The next poll starts after what was read.
        let later = poll_due(&c, &mut a, now_ms + 600).expect("due again");
        assert_eq!(scan_body(&later)["min_mod_revision"], json!("13"));
    }

    #[test]
    fn a_failed_poll_is_counted_and_the_next_one_goes_out() {
        let c = config();
        let mut s = State::new(&c);
        let now_ms = vectors().now * 1000;
        let poll = poll_due(&c, &mut s, now_ms).unwrap();
        let Resume::Deny(pending) = poll.resume else {
            panic!()
        };
        let metrics = FakeMetrics::default();
        let garbage = reply(200, "not json");
        assert!(matches!(
            on_reply(&c, &mut s, &metrics, *pending, Ok(&garbage), vectors().now),
            Resumed::Later { .. }
        ));
        assert_eq!(metrics.counter(Counter::RevocationPoll { ok: false }), 1);
        assert!(poll_due(&c, &mut s, now_ms + 500).is_some());
    }

    fn push_set(c: &Config, s: &mut State, jti: &str) -> Verdict {
        let claims = json!({"iss": "https://hs.test", "aud": "gw", "iat": vectors().now, "jti": jti,
            "events": {ACCOUNT_DISABLED: {"subject": {"format": "iss_sub", "iss": "https://hs.test", "sub": "alice"}}}});
        let body = sign(
            &json!({"typ": "secevent+jwt", "alg": "HS256"}),
            &claims,
            vectors().hs_secret.as_bytes(),
        );
        let headers = h(&[("content-type", "application/secevent+jwt")]);
        let request = Request {
            method: "POST",
            body: Some(body.as_bytes()),
            ..get("/ssf", &headers, None)
        };
        crate::engine::verdict_for(c, s, &request, vectors().now)
    }

    fn answer(c: &Config, s: &mut State, asked: Verdict, reply: &CalloutReply) -> Verdict {
        let Verdict::Call { resume, .. } = asked else {
            panic!("no callout: {asked:?}")
        };
        let Resumed::Decided(v) = crate::engine::resume(
            c,
            s,
            &FakeMetrics::default(),
            resume,
            Ok(reply),
            vectors().now,
        ) else {
            panic!()
        };
        v
    }

    fn receipt_status(v: &Verdict) -> u32 {
        match v {
            Verdict::Receipt(r) => r.response.status,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_receiver_answers_once_etcd_holds_the_entry_and_a_failure_is_retried() {
        let c = config();
        let mut s = State::new(&c);
        let grant = push_set(&c, &mut s, "j-1");
        let Verdict::Call { callout, .. } = &grant else {
            panic!("{grant:?}")
        };
        assert_eq!(callout.url.path, "/v3/lease/grant");
        let put = answer(
            &c,
            &mut s,
            grant,
            &reply(200, r#"{"ID":"77","TTL":"3600"}"#),
        );
        let Verdict::Call { callout, .. } = &put else {
            panic!("{put:?}")
        };
        assert_eq!(callout.url.path, "/v3/kv/put");
        let body: serde_json::Value =
            serde_json::from_slice(callout.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["lease"], json!("77"));
        let done = answer(
            &c,
            &mut s,
            put,
            &reply(200, r#"{"header":{"revision":"5"}}"#),
        );
        assert_eq!(receipt_status(&done), 202);
        assert!(
            matches!(push_set(&c, &mut s, "j-1"), Verdict::Receipt(_)),
            "a replay: no etcd call"
        );

        // etcd refusing: 503, and the same SET is taken when retried.
        let grant = push_set(&c, &mut s, "j-2");
        let refused = answer(
            &c,
            &mut s,
            grant,
            &reply(403, r#"{"error":"etcdserver: permission denied","code":7}"#),
        );
        assert_eq!(receipt_status(&refused), 503);
        assert!(matches!(push_set(&c, &mut s, "j-2"), Verdict::Call { .. }));
    }

    #[test]
    fn with_auth_on_nothing_goes_out_before_the_fleet_caches_token() {
        let json = format!(
            r#"{{"issuers":[{{"issuer":"https://hs.test","audiences":["api"],"shared_secret":"{}"}}],
                "fleet_cache":{{"endpoint":"http://etcd:2379","upstream":"etcd","key_prefix":"/p/","hmac_key_env":"K","username":"pep","password_env":"P"}},
                "revocation":{{"receiver":{{"path":"/ssf","transmitter":"https://hs.test","audience":"gw"}},"poll_ms":500}}}}"#,
            vectors().hs_secret
        );
        let env = |n: &str| match n {
            "K" => Some(KEY.to_string()),
            "P" => Some("pw".to_string()),
            _ => None,
        };
        let c = Config::from_json(json.as_bytes(), &env).unwrap();
        let mut s = State::new(&c);
        let now_ms = vectors().now * 1000;
        assert!(poll_due(&c, &mut s, now_ms).is_none(), "no token: no poll");
        assert_eq!(receipt_status(&push_set(&c, &mut s, "j-1")), 503);
        // Once the fleet cache holds a token, both go out with it.
        s.fleet.session.obtained("etcd-token".into(), vectors().now);
        let poll = poll_due(&c, &mut s, now_ms).expect("a poll");
        assert!(poll
            .callout
            .headers
            .contains(&("authorization".into(), "etcd-token".into())));
        assert!(
            matches!(push_set(&c, &mut s, "j-1"), Verdict::Call { .. }),
            "the retry is taken"
        );
    }
}
