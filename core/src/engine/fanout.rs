//! Revocations through etcd (with a `fleet_cache` block): the receiver's
//! deny entries are written there (a lease for the retention, then one put
//! per entry) before it answers 202, and one worker per process polls the
//! deny prefix on its tick by revision, taking what verifies into the
//! process's deny set. Both go through the etcd client of the fleet cache
//! ([`crate::etcd`]) with its endpoint, user and timeouts.

use std::rc::Rc;

use crate::budget::{Budget, Spender};
use crate::cache::Digest;
use crate::callout::{Callout, CalloutReply};
use crate::config::Config;
use crate::etcd::{self, EtcdError};
use crate::fleet_cache::{FleetCache, AUTH_RENEW_SECONDS};
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
    /// etcd's auth token (with auth on), and when it was obtained.
    token: Option<(Rc<str>, u64)>,
    next_poll_ms: u64,
    /// A poll of this worker in flight, until then (s): one at a time.
    polling_until: u64,
    pushes: Spender,
}

impl FanoutState {
    pub fn new() -> Self {
        FanoutState {
            token: None,
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
    Authenticate,
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

/// The step to take, authenticating first when auth is on and no fresh
/// token is held.
fn first(state: &State, fleet: &FleetCache, then: Step, now: u64) -> Step {
    let fresh = state
        .fanout
        .token
        .as_ref()
        .is_some_and(|(_, at)| now < at.saturating_add(AUTH_RENEW_SECONDS));
    if fleet.credentials.is_some() && !fresh {
        Step::Authenticate
    } else {
        then
    }
}

fn callout(state: &State, parts: Parts, step: Step, job: &Job) -> Callout {
    let (_, fanout, fleet) = parts;
    let e = &fleet.etcd;
    let token = state.fanout.token.as_ref().map(|(t, _)| &**t);
    let (read, write) = (fleet.read_timeout_ms, fleet.write_timeout_ms);
    match (step, job) {
        (Step::Authenticate, _) => match &fleet.credentials {
            Some(c) => e.authenticate(&c.username, &c.password, read),
            None => e.authenticate("", "", read),
        },
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
    if !state.fanout.pushes.spend(client, now) {
        return super::revoke::unavailable("the receiver's etcd write budget is spent");
    }
    let step = first(state, parts.2, Step::Grant, now);
    let job = Job::Push(Box::new(push));
    Verdict::Call {
        callout: Box::new(callout(state, parts, step, &job)),
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
    let step = first(state, fleet, Step::Scan { from }, now);
    let job = Job::Poll;
    Some(Fetch {
        callout: Box::new(callout(state, parts, step, &job)),
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
        Step::Authenticate => etcd::read_authenticate(reply).map(|token| {
            state.fanout.token = Some((Rc::from(token), now));
            match &job {
                Job::Poll => Step::Scan {
                    from: read_revision(state.replay.as_ref()).saturating_add(1),
                },
                Job::Push(_) => Step::Grant,
            }
        }),
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
                state.fanout.token = None;
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
                callout: Box::new(callout(state, parts, next, &job)),
                resume: Resume::Deny(Box::new(PendingDeny { step: next, job })),
            })
        }
        (next, Job::Poll) => Resumed::Next(Fetch {
            callout: Box::new(callout(state, parts, next, &Job::Poll)),
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
            callout: Box::new(callout(state, parts, step, &Job::Poll)),
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
