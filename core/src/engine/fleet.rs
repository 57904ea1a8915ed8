//! The fleet cache in the flight protocol: on a per-process miss, the
//! worker that won the process's claim for a token reads etcd before it
//! asks the authorization server. Each etcd call is one more step of the
//! same fetch (the requests keep waiting on the token's
//! [`WaitKey::Introspection`], within the first deadline): authenticate
//! (when no etcd token is held), read (by the current key, then the
//! previous), on a miss claim the token for the fleet (a lease, then a
//! compare-and-create transaction), and, having lost the claim, poll on the
//! root's tick until `claim_wait_ms`. Whatever fails ends where the filter
//! is without the fleet cache: it asks the authorization server itself.
//! Answers are written afterwards, from the root's tick (nobody waits).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use crate::budget::Spender;
use crate::callout::{Callout, CalloutReply};
use crate::config::Config;
use crate::etcd::{self, EtcdError};
use crate::fleet_cache::{
    Answer, BreakerState, FleetCache, Location, Rejected, StoredAnswer, AUTH_RENEW_SECONDS,
    AUTH_TIMEOUT_MS, AUTH_USE_SECONDS, CLAIM_LEASE_SECONDS,
};
use crate::introspection::{Answer as Introspected, ResponseFormat};
use crate::introspection_jwt;
use crate::metrics::{Counter, FleetClaim, FleetRead, Gauge, Metrics};
use crate::wait::{Note, WaitKey};

use super::introspect::{self, PendingIntrospection};
use super::{Due, Fetch, Resume, Resumed, State};

/// Writes waiting for the root's tick, per worker: beyond, new answers are
/// not written (a flood of new tokens does not queue without bound).
const MAX_QUEUED_WRITES: usize = 256;
/// Early refreshes waiting for the root's tick, per worker.
const MAX_REFRESHES: usize = 64;
/// Claim losers polling at once, per worker (each is also an introspection
/// in flight, which [`super::MAX_INTROSPECTIONS_IN_FLIGHT`] bounds).
const MAX_POLLS: usize = 256;
/// How often a claim loser reads etcd for the winner's answer (ms); the
/// root's tick is the granularity.
const POLL_MS: u64 = 100;
/// Leases held per worker, reused for answers that expire close together.
const MAX_LEASES: usize = 8;
/// An answer's lease may outlive its `stale_until` by this much, so that
/// answers written within this window share one lease.
const LEASE_SLACK_SECONDS: u64 = 60;

/// What one worker keeps for the fleet cache.
#[derive(Debug)]
pub struct FleetState {
    /// etcd's auth token (the revocation poll may share it), obtained and
    /// renewed on the root's tick, never by a request.
    pub session: etcd::Session,
    /// The authenticate fetch: one per process at a time (a marker in
    /// shared data), the token then shared with the other workers.
    auth: crate::flight::Flight,
    /// Leases granted: id and when it expires (seconds, conservatively).
    leases: Vec<(i64, u64)>,
    budget: Spender,
    writes: VecDeque<PendingFleet>,
    polls: Vec<Poll>,
    refreshes: Vec<Lookup>,
    /// Counts not reported yet (the engine's introspect path has no metrics).
    counts: HashMap<Counter, u64>,
    notes: Vec<Note>,
}

impl FleetState {
    pub fn new(config: &Config) -> Self {
        FleetState {
            session: etcd::Session::default(),
            auth: crate::flight::Flight::default(),
            leases: Vec::new(),
            budget: Spender::new(
                config
                    .fleet_cache
                    .as_ref()
                    .map_or(crate::fleet_cache::DEFAULT_BUDGET, |f| f.budget),
            ),
            writes: VecDeque::new(),
            polls: Vec::new(),
            refreshes: Vec::new(),
            counts: HashMap::new(),
            notes: Vec::new(),
        }
    }

    fn count(&mut self, counter: Counter) {
        *self.counts.entry(counter).or_insert(0) += 1;
    }

    fn lease(&self, from: u64, to: u64) -> Option<i64> {
        self.leases
            .iter()
            .find(|(_, expires)| (from..=to).contains(expires))
            .map(|(id, _)| *id)
    }

    fn keep_lease(&mut self, id: i64, expires: u64, now: u64) {
        self.leases.retain(|(_, e)| *e > now);
        if self.leases.len() >= MAX_LEASES {
            self.leases.remove(0);
        }
        self.leases.push((id, expires));
    }
}

/// A claim loser waiting for its next read.
#[derive(Debug)]
struct Poll {
    next_ms: Option<u64>,
    until_ms: Option<u64>,
    lookup: Box<Lookup>,
}

/// One etcd call and what it is part of.
#[derive(Debug, PartialEq)]
pub struct PendingFleet {
    step: Step,
    job: Job,
}

#[derive(Debug, PartialEq)]
enum Step {
    /// Get an auth token (from the root's tick).
    Authenticate,
    /// Read the answer at `locations[at]`.
    Read { at: usize },
    /// Grant a lease of `ttl` seconds, then take the step with it.
    Grant { ttl: i64, then: Box<Step> },
    /// Claim the token for the fleet (or read the answer another wrote).
    Claim { lease: i64 },
    /// Read again for the claim winner's answer, until then (ms; set on
    /// the root's first tick after the claim was lost).
    Poll { until_ms: Option<u64> },
    /// Write the answer.
    Put { lease: i64 },
}

#[derive(Debug, PartialEq)]
enum Job {
    /// The worker's etcd auth token.
    Auth,
    Lookup(Box<Lookup>),
    Write {
        key: Vec<u8>,
        value: Vec<u8>,
        stale_until: u64,
    },
}

/// A token's lookup: the introspection it stands for, and the callout that
/// asks the authorization server if the fleet has no answer.
#[derive(Debug, PartialEq)]
struct Lookup {
    pending: PendingIntrospection,
    ask: Box<Callout>,
    locations: Vec<Location>,
    /// An early refresh of the entry fresh until then (nobody waits): only
    /// a won claim leads anywhere. Its claim key names that generation, so
    /// the claim of the miss that wrote it does not block it.
    refresh: Option<u64>,
}

/// Where the fleet cache stands for `issuer`'s tokens: its settings, if it
/// serves them.
fn serving(config: &Config, issuer: usize) -> Option<&FleetCache> {
    let fleet = config.fleet_cache.as_ref()?;
    let signed =
        config.issuers.get(issuer)?.introspection.as_ref()?.response == ResponseFormat::Jwt;
    fleet.serves(issuer, signed).then_some(fleet)
}

/// What names a token's answers in the fleet: the issuer and the client
/// that asks (answers to another client of the same issuer are not ours).
fn identity(config: &Config, issuer: usize) -> Option<String> {
    let settings = config.issuers.get(issuer)?;
    let client = &settings.introspection.as_ref()?.client_id;
    Some(format!("{}\0{client}", settings.issuer))
}

/// How much longer requests wait for an introspection that may go through
/// the fleet first (seconds, rounded up): reads by two keys, a lease and a
/// claim, then polls until `claim_wait_ms` (starting on the next tick) and
/// the last poll's own timeout.
pub(super) fn extra_wait_seconds(config: &Config, issuer: usize) -> u64 {
    serving(config, issuer).map_or(0, |f| {
        let polls = if f.single_flight {
            f.claim_wait_ms
                .saturating_add(f.read_timeout_ms)
                .saturating_add(TICK_MS)
        } else {
            0
        };
        let ms = f.read_timeout_ms.saturating_mul(4).saturating_add(polls);
        ms.div_ceil(1000).saturating_add(1)
    })
}

/// The root's slow tick (the glue's `TICK`): the most a poll waits for it.
const TICK_MS: u64 = 200;

/// The first etcd call of a token's lookup, instead of asking `ask` at
/// once; `Err` gives the lookup back when the fleet is not used (not
/// configured for the issuer, breaker open, budget spent).
pub(super) fn lookup(
    config: &Config,
    state: &mut State,
    pending: PendingIntrospection,
    ask: Box<Callout>,
    token: &str,
    now: u64,
) -> Result<Fetch, (PendingIntrospection, Box<Callout>)> {
    let issuer = pending.issuer;
    let (Some(fleet), Some(identity)) = (serving(config, issuer), identity(config, issuer)) else {
        return Err((pending, ask));
    };
    // With auth on, a lookup needs the token the root's tick obtains: a
    // request never waits for an authenticate (bcrypt on etcd's side).
    let unauthenticated = fleet.credentials.is_some()
        && state.fleet.session.token(AUTH_USE_SECONDS, now).is_none()
        && !adopt_token(fleet, state, now);
    if unauthenticated || BreakerState::read(state.shared.as_ref()).0.is_open(now) {
        state.fleet.count(Counter::FleetRead(FleetRead::Bypassed));
        return Err((pending, ask));
    }
    if !state.fleet.budget.spend(None, now) {
        state.fleet.count(Counter::FleetRead(FleetRead::Bypassed));
        return Err((pending, ask));
    }
    let job = Job::Lookup(Box::new(Lookup {
        pending,
        ask,
        locations: fleet.locations(&identity, token),
        refresh: None,
    }));
    Ok(build(fleet, state, Step::Read { at: 0 }, job, now))
}

/// The etcd call for `step` (its budget spent by the caller), with the
/// auth token if one is held.
fn build(fleet: &FleetCache, state: &State, step: Step, job: Job, now: u64) -> Fetch {
    let token = state.fleet.session.token(AUTH_USE_SECONDS, now);
    let callout = callout_for(fleet, token.as_deref(), &step, &job);
    Fetch {
        callout: Box::new(callout),
        resume: Resume::Fleet(Box::new(PendingFleet { step, job })),
    }
}

fn callout_for(fleet: &FleetCache, token: Option<&str>, step: &Step, job: &Job) -> Callout {
    let e = &fleet.etcd;
    let (read, write) = (fleet.read_timeout_ms, fleet.write_timeout_ms);
    let location = |at: usize| match job {
        Job::Lookup(l) => l.locations.get(at).cloned(),
        Job::Write { .. } | Job::Auth => None,
    };
    match step {
        // Nobody waits for it.
        Step::Authenticate => match &fleet.credentials {
            Some(c) => e.authenticate(&c.username, &c.password, AUTH_TIMEOUT_MS),
            None => e.authenticate("", "", AUTH_TIMEOUT_MS),
        },
        Step::Read { at } => e.get(
            &location(*at).map(|l| l.answer).unwrap_or_default(),
            token,
            read,
        ),
        Step::Poll { .. } => e.get(
            &location(0).map(|l| l.answer).unwrap_or_default(),
            token,
            read,
        ),
        Step::Grant { ttl, .. } => e.grant(*ttl, token, read),
        Step::Claim { lease } => {
            let l = location(0).unwrap_or(Location {
                answer: Vec::new(),
                claim: Vec::new(),
            });
            let mut claim = l.claim;
            if let Job::Lookup(lookup) = job {
                if let Some(generation) = lookup.refresh {
                    claim.extend_from_slice(format!("/{generation}").as_bytes());
                }
            }
            e.create(&claim, b"1", Some(*lease), &l.answer, token, read)
        }
        Step::Put { lease } => match job {
            Job::Write { key, value, .. } => e.put(key, value, Some(*lease), token, write),
            Job::Lookup(_) | Job::Auth => e.put(b"", b"", None, token, write),
        },
    }
}

/// An etcd call's answer (or why there is none).
pub(super) fn on_reply(
    config: &Config,
    state: &mut State,
    metrics: &dyn Metrics,
    pending: PendingFleet,
    answer: Result<&CalloutReply, &str>,
    now: u64,
) -> Resumed {
    let Some(fleet) = config.fleet_cache.as_ref() else {
        return Resumed::Later { notes: Vec::new() };
    };
    let PendingFleet { step, job } = pending;
    let outcome: Result<Next, EtcdError> = match answer {
        Err(why) => Err(EtcdError::Refused {
            status: 0,
            code: None,
            message: format!("not dispatched: {why}"),
        }),
        Ok(reply) => step_reply(config, fleet, state, step, &job, reply, now),
    };
    let ok = outcome.is_ok();
    if BreakerState::record(state.shared.as_ref(), fleet.breaker, ok, now) {
        state.fleet.notes.push(Note::Warn(format!(
            "the fleet cache's etcd failed {} times in a row: skipped for {} s (the authorization server is asked directly)",
            fleet.breaker.failures, fleet.breaker.open_seconds
        )));
    }
    let resumed = match outcome {
        Ok(next) => proceed(config, fleet, state, next, job, now),
        Err(e) => {
            if matches!(e, EtcdError::Unauthenticated(_)) {
                state.fleet.session.refused();
            }
            let what = match &job {
                Job::Lookup(_) => "a read",
                Job::Write { .. } => "a write",
                Job::Auth => "authenticate",
            };
            state.fleet.notes.push(Note::Warn(format!(
                "fleet cache: {what} failed ({}): {e}",
                e.code()
            )));
            match job {
                Job::Lookup(lookup) if lookup.refresh.is_some() => {
                    Resumed::Later { notes: Vec::new() }
                }
                Job::Lookup(lookup) => {
                    state.fleet.count(Counter::FleetRead(FleetRead::Error));
                    ask(*lookup, false)
                }
                Job::Write { .. } => {
                    state.fleet.count(Counter::FleetWrite { ok: false });
                    Resumed::Later { notes: Vec::new() }
                }
                Job::Auth => {
                    let delay = crate::flight::backoff(state.fleet.auth.failures() + 1);
                    let marker = auth_marker(config, state.shared.as_ref(), state.worker);
                    state
                        .fleet
                        .auth
                        .failed(marker.as_ref(), e.to_string(), delay, now);
                    Resumed::Later { notes: Vec::new() }
                }
            }
        }
    };
    report(state, metrics);
    match resumed {
        Resumed::Later { mut notes } => {
            notes.append(&mut state.fleet.notes);
            Resumed::Later { notes }
        }
        other => other,
    }
}

/// What a step's answer leads to.
enum Next {
    /// Take this step of the same job.
    Step(Step),
    /// A valid answer from the fleet.
    Hit(
        Box<StoredAnswer>,
        serde_json::Map<String, serde_json::Value>,
    ),
    /// An entry that failed a check.
    Rejected(Rejected),
    /// Nothing in the fleet (and no claim to make): ask, and write.
    Miss,
    /// The fleet claim is this instance's: ask, and write.
    Won,
    /// Another instance holds the claim: poll (until then, once known).
    Lost(Option<u64>),
    /// The write is done.
    Written,
}

fn step_reply(
    config: &Config,
    fleet: &FleetCache,
    state: &mut State,
    step: Step,
    job: &Job,
    reply: &CalloutReply,
    now: u64,
) -> Result<Next, EtcdError> {
    let lookup = match job {
        Job::Lookup(l) => Some(l.as_ref()),
        Job::Write { .. } | Job::Auth => None,
    };
    Ok(match step {
        Step::Authenticate => {
            let token = etcd::read_authenticate(reply)?;
            share_token(fleet, state, &token, now);
            state.fleet.session.obtained(token, now);
            let marker = auth_marker(config, state.shared.as_ref(), state.worker);
            state.fleet.auth.succeeded(marker.as_ref(), 0);
            Next::Written
        }
        Step::Grant { then, .. } => {
            let lease = etcd::read_grant(reply)?;
            let ttl = u64::try_from(lease.ttl).unwrap_or(0);
            // Counted from now, less a second for the call's own time.
            state
                .fleet
                .keep_lease(lease.id, now.saturating_add(ttl).saturating_sub(1), now);
            Next::Step(match *then {
                Step::Claim { .. } => Step::Claim { lease: lease.id },
                Step::Put { .. } => Step::Put { lease: lease.id },
                other => other,
            })
        }
        Step::Read { at } => {
            let range = etcd::read_range(reply)?;
            let Some(lookup) = lookup else {
                return Ok(Next::Written);
            };
            match range.kvs.first() {
                // An expired entry (the token is hot everywhere at once):
                // claimed like a miss, so that one instance asks.
                Some(kv) => match verdict(config, fleet, state, lookup, at, &kv.value, now) {
                    Next::Rejected(Rejected::Expired) if fleet.single_flight => {
                        state.fleet.count(Counter::FleetRead(FleetRead::Rejected));
                        Next::Step(claim_step(state, now))
                    }
                    other => other,
                },
                None if at + 1 < lookup.locations.len() => Next::Step(Step::Read { at: at + 1 }),
                None if fleet.single_flight => Next::Step(claim_step(state, now)),
                None => Next::Miss,
            }
        }
        Step::Claim { .. } => {
            let txn = etcd::read_txn(reply)?;
            let Some(lookup) = lookup else {
                return Ok(Next::Written);
            };
            if txn.succeeded {
                Next::Won
            } else {
                match txn.ranges.first().and_then(|r| r.kvs.first()) {
                    Some(kv) => match verdict(config, fleet, state, lookup, 0, &kv.value, now) {
                        Next::Rejected(Rejected::Expired) => Next::Lost(None),
                        other => other,
                    },
                    None => Next::Lost(None),
                }
            }
        }
        Step::Poll { until_ms } => {
            let range = etcd::read_range(reply)?;
            let Some(lookup) = lookup else {
                return Ok(Next::Written);
            };
            match range.kvs.first() {
                Some(kv) => match verdict(config, fleet, state, lookup, 0, &kv.value, now) {
                    Next::Rejected(Rejected::Expired) => Next::Lost(until_ms),
                    other => other,
                },
                None => Next::Lost(until_ms),
            }
        }
        Step::Put { .. } => {
            etcd::read_put(reply)?;
            Next::Written
        }
    })
}

/// The claim, with a short lease this worker holds (or one granted first).
fn claim_step(state: &State, now: u64) -> Step {
    let max = u64::try_from(CLAIM_LEASE_SECONDS).unwrap_or(5);
    match state
        .fleet
        .lease(now.saturating_add(2), now.saturating_add(max))
    {
        Some(lease) => Step::Claim { lease },
        None => Step::Grant {
            ttl: CLAIM_LEASE_SECONDS,
            then: Box::new(Step::Claim { lease: 0 }),
        },
    }
}

/// An entry read from etcd, opened and checked as this instance would
/// check the authorization server's answer.
fn verdict(
    config: &Config,
    fleet: &FleetCache,
    state: &State,
    lookup: &Lookup,
    at: usize,
    value: &[u8],
    now: u64,
) -> Next {
    let issuer = lookup.pending.issuer;
    let (Some(settings), Some(location)) = (config.issuers.get(issuer), lookup.locations.get(at))
    else {
        return Next::Rejected(Rejected::Malformed);
    };
    let entry = match fleet.open(location, value, &settings.issuer, now) {
        Ok(entry) => entry,
        Err(why) => return Next::Rejected(why),
    };
    let signed = settings
        .introspection
        .as_ref()
        .is_some_and(|x| x.response == ResponseFormat::Jwt);
    let claims = match (&entry.answer, signed) {
        (Answer::Plain(claims), false) => match crate::introspection::read_answer(claims.clone()) {
            Ok(Introspected::Active(claims)) => claims,
            _ => return Next::Rejected(Rejected::Checks),
        },
        (Answer::Signed(jwt), true) => {
            let Some(x) = settings.introspection.as_ref() else {
                return Next::Rejected(Rejected::Unsigned);
            };
            let reply = CalloutReply {
                status: Some(200),
                body: jwt.as_bytes().to_vec(),
                oversized: None,
            };
            // Its iat is checked against when it was written (MACed).
            match introspection_jwt::read(
                &reply,
                settings,
                &x.client_id,
                state.keys.keys(issuer).map(|k| k.as_ref()),
                state.verifier.as_ref(),
                config.rules.clock_skew_seconds,
                entry.written_at,
            ) {
                Ok(Introspected::Active(claims)) => claims,
                _ => return Next::Rejected(Rejected::Unsigned),
            }
        }
        _ => return Next::Rejected(Rejected::Unsigned),
    };
    Next::Hit(Box::new(entry), claims)
}

fn proceed(
    config: &Config,
    fleet: &FleetCache,
    state: &mut State,
    next: Next,
    job: Job,
    now: u64,
) -> Resumed {
    let lookup = match job {
        Job::Auth => return Resumed::Later { notes: Vec::new() },
        Job::Write { .. } => {
            return match next {
                Next::Step(step) if state.fleet.budget.spend(None, now) => {
                    Resumed::Next(build(fleet, state, step, job, now))
                }
                Next::Step(_) => {
                    state.fleet.count(Counter::FleetWrite { ok: false });
                    Resumed::Later { notes: Vec::new() }
                }
                _ => {
                    state.fleet.count(Counter::FleetWrite { ok: true });
                    Resumed::Later { notes: Vec::new() }
                }
            }
        }
        Job::Lookup(lookup) => lookup,
    };
    if lookup.refresh.is_some() {
        // Someone else refreshes (or already did), or etcd said no.
        return match next {
            Next::Step(step) if state.fleet.budget.spend(None, now) => {
                Resumed::Next(build(fleet, state, step, Job::Lookup(lookup), now))
            }
            Next::Won => {
                state.fleet.count(Counter::FleetClaim(FleetClaim::Won));
                ask(*lookup, true)
            }
            _ => Resumed::Later { notes: Vec::new() },
        };
    }
    match next {
        Next::Step(step) if state.fleet.budget.spend(None, now) => {
            Resumed::Next(build(fleet, state, step, Job::Lookup(lookup), now))
        }
        Next::Step(_) => {
            state.fleet.count(Counter::FleetRead(FleetRead::Bypassed));
            ask(*lookup, true)
        }
        Next::Hit(entry, claims) => {
            state.fleet.count(Counter::FleetRead(FleetRead::Hit));
            // Used here until `refresh_before_seconds` before its end, so
            // that a read falls in that window; there, one instance (the
            // claim's winner) refreshes it while every one goes on using it.
            let refresh_at = entry
                .fresh_until
                .saturating_sub(fleet.refresh_before_seconds);
            let local_until = if refresh_at > now {
                refresh_at
            } else {
                entry.fresh_until
            };
            if fleet.single_flight
                && fleet.refresh_before_seconds > 0
                && refresh_at <= now
                && state.fleet.refreshes.len() < MAX_REFRESHES
            {
                state.fleet.refreshes.push(Lookup {
                    pending: introspect::again(&lookup.pending),
                    ask: lookup.ask.clone(),
                    locations: lookup.locations.clone(),
                    refresh: Some(entry.fresh_until),
                });
            }
            let Lookup { pending, .. } = *lookup;
            let (issuer, known) = introspect::finish_from_fleet(
                config,
                state,
                pending,
                claims,
                local_until,
                entry.stale_until,
                now,
            );
            Resumed::Settled {
                on: WaitKey::Introspection {
                    issuer,
                    token: known.0,
                },
                known: Some(Rc::new(known)),
                notes: std::mem::take(&mut state.fleet.notes),
            }
        }
        Next::Rejected(why) => {
            state.fleet.count(Counter::FleetRead(FleetRead::Rejected));
            state.fleet.notes.push(Note::Warn(format!(
                "fleet cache: an entry was rejected ({}); the authorization server is asked",
                why.code()
            )));
            ask(*lookup, true)
        }
        Next::Miss => {
            state.fleet.count(Counter::FleetRead(FleetRead::Miss));
            ask(*lookup, true)
        }
        Next::Won => {
            state.fleet.count(Counter::FleetRead(FleetRead::Miss));
            state.fleet.count(Counter::FleetClaim(FleetClaim::Won));
            ask(*lookup, true)
        }
        Next::Lost(until_ms) => {
            if until_ms.is_none() {
                state.fleet.count(Counter::FleetRead(FleetRead::Miss));
                state.fleet.count(Counter::FleetClaim(FleetClaim::Lost));
            }
            if state.fleet.polls.len() >= MAX_POLLS {
                state.fleet.count(Counter::FleetClaim(FleetClaim::Timeout));
                return ask(*lookup, true);
            }
            state.fleet.polls.push(Poll {
                next_ms: None,
                until_ms,
                lookup,
            });
            Resumed::Later { notes: Vec::new() }
        }
        Next::Written => Resumed::Later { notes: Vec::new() },
    }
}

/// Asks the authorization server, as without the fleet cache; `write`: its
/// answer is written to the fleet afterwards (the lookup reached etcd).
fn ask(lookup: Lookup, write: bool) -> Resumed {
    let Lookup {
        mut pending,
        ask,
        locations,
        ..
    } = lookup;
    pending.fleet_key = if write {
        locations.into_iter().next().map(|l| l.answer)
    } else {
        None
    };
    Resumed::Next(Fetch {
        callout: ask,
        resume: Resume::Introspect(Box::new(pending)),
    })
}

/// After the authorization server's active answer to a lookup that reached
/// etcd: the answer is written on the root's next tick.
pub(super) fn queue_write(
    config: &Config,
    state: &mut State,
    key: Vec<u8>,
    issuer: usize,
    answer: Answer,
    (fresh_until, stale_until): (u64, u64),
    now: u64,
) {
    let (Some(fleet), Some(settings)) = (serving(config, issuer), config.issuers.get(issuer))
    else {
        return;
    };
    if state.fleet.writes.len() >= MAX_QUEUED_WRITES || fresh_until <= now {
        return;
    }
    let entry = StoredAnswer {
        issuer: settings.issuer.clone(),
        written_at: now,
        fresh_until,
        stale_until,
        answer,
    };
    let location = Location {
        answer: key.clone(),
        claim: Vec::new(),
    };
    let value = fleet.seal(&location, &entry);
    if value.len() > crate::fleet_cache::MAX_VALUE_BYTES {
        // No reader would take it.
        state.fleet.count(Counter::FleetWrite { ok: false });
        return;
    }
    state.fleet.writes.push_back(PendingFleet {
        step: Step::Put { lease: 0 },
        job: Job::Write {
            key,
            value,
            stale_until,
        },
    });
}

/// Root only, on each tick: queued writes, the polls that are due, and the
/// claims waited for long enough (then asked here).
pub(super) fn due(
    config: &Config,
    state: &mut State,
    metrics: &dyn Metrics,
    now_ms: u64,
) -> Vec<Due> {
    let Some(fleet) = config.fleet_cache.as_ref() else {
        return Vec::new();
    };
    let now = now_ms / 1000;
    let mut due = Vec::new();
    if fleet.credentials.is_some()
        && state.fleet.session.needs_renewal(AUTH_RENEW_SECONDS, now)
        && !adopt_token(fleet, state, now)
        && !state.fleet.auth.awaiting(now)
        && state.fleet.auth.retry_due(now)
    {
        let until = now.saturating_add(AUTH_TIMEOUT_MS / 1000 + 1);
        let marker = auth_marker(config, state.shared.as_ref(), state.worker);
        let claimed = state.fleet.auth.start(marker.as_ref(), until, now).is_ok();
        if claimed && state.fleet.budget.spend(None, now) {
            due.push(Due::Dispatch(build(
                fleet,
                state,
                Step::Authenticate,
                Job::Auth,
                now,
            )));
        } else if claimed {
            let marker = auth_marker(config, state.shared.as_ref(), state.worker);
            let why = "the etcd budget is spent".to_string();
            state.fleet.auth.failed(marker.as_ref(), why, 1, now);
        }
    }
    while let Some(write) = state.fleet.writes.pop_front() {
        let PendingFleet { job, .. } = write;
        let stale_until = match &job {
            Job::Write { stale_until, .. } => *stale_until,
            Job::Lookup(_) | Job::Auth => continue,
        };
        let step = match state
            .fleet
            .lease(stale_until, stale_until.saturating_add(LEASE_SLACK_SECONDS))
        {
            Some(lease) => Step::Put { lease },
            None => Step::Grant {
                ttl: i64::try_from(
                    stale_until
                        .saturating_sub(now)
                        .saturating_add(LEASE_SLACK_SECONDS / 2),
                )
                .unwrap_or(i64::MAX),
                then: Box::new(Step::Put { lease: 0 }),
            },
        };
        if state.fleet.budget.spend(None, now) {
            due.push(Due::Dispatch(build(fleet, state, step, job, now)));
        } else {
            state.fleet.count(Counter::FleetWrite { ok: false });
        }
    }
    for refresh in std::mem::take(&mut state.fleet.refreshes) {
        if state.fleet.budget.spend(None, now) {
            let step = claim_step(state, now);
            due.push(Due::Dispatch(build(
                fleet,
                state,
                step,
                Job::Lookup(Box::new(refresh)),
                now,
            )));
        }
    }
    let polls = std::mem::take(&mut state.fleet.polls);
    for mut poll in polls {
        let until = *poll
            .until_ms
            .get_or_insert(now_ms.saturating_add(fleet.claim_wait_ms));
        let next = *poll.next_ms.get_or_insert(now_ms.saturating_add(POLL_MS));
        let lookup = poll.lookup;
        if now_ms >= until || (now_ms >= next && !state.fleet.budget.spend(None, now)) {
            state.fleet.count(Counter::FleetClaim(FleetClaim::Timeout));
            if let Resumed::Next(fetch) = ask(*lookup, true) {
                due.push(Due::Dispatch(fetch));
            }
        } else if now_ms >= next {
            let step = Step::Poll {
                until_ms: Some(until),
            };
            due.push(Due::Dispatch(build(
                fleet,
                state,
                step,
                Job::Lookup(lookup),
                now,
            )));
        } else {
            state.fleet.polls.push(Poll {
                next_ms: Some(next),
                until_ms: Some(until),
                lookup,
            });
        }
    }
    let open = BreakerState::read(state.shared.as_ref()).0.is_open(now);
    metrics.set(Gauge::FleetBreakerOpen, u64::from(open));
    report(state, metrics);
    let notes = std::mem::take(&mut state.fleet.notes);
    if !notes.is_empty() {
        due.push(Due::Log(notes));
    }
    due
}

/// What the gateway's etcd token is for: the endpoint, cluster and user.
fn auth_subject(fleet: &FleetCache) -> crate::cache::Digest {
    let user = fleet
        .credentials
        .as_ref()
        .map_or("", |c| c.username.as_str());
    crate::cache::digest(&[
        fleet.etcd.base.scheme.as_bytes(),
        fleet.etcd.base.authority.as_bytes(),
        fleet.etcd.base.path.as_bytes(),
        fleet.etcd.upstream.as_bytes(),
        user.as_bytes(),
    ])
}

const AUTH_MARKER_KEY: &str = "oauth_pep.fleet_cache.auth_marker";
const AUTH_TOKEN_KEY: &str = "oauth_pep.fleet_cache.auth_token";

fn auth_marker<'a>(
    config: &Config,
    store: &'a dyn crate::services::SharedStore,
    worker: u64,
) -> Option<crate::flight::Marker<'a>> {
    let fleet = config.fleet_cache.as_ref()?;
    Some(crate::flight::Marker {
        store,
        key: AUTH_MARKER_KEY.to_string(),
        subject: auth_subject(fleet),
        worker,
    })
}

/// The token, for the process's other workers: subject, when obtained, token.
fn share_token(fleet: &FleetCache, state: &State, token: &str, now: u64) {
    let mut value = auth_subject(fleet).to_vec();
    value.extend_from_slice(&now.to_be_bytes());
    value.extend_from_slice(token.as_bytes());
    // Refused (no shared data): each worker authenticates for itself.
    let _ = state.shared.set(AUTH_TOKEN_KEY, &value, None);
}

/// Takes a fresher token another worker obtained; whether one was taken.
fn adopt_token(fleet: &FleetCache, state: &mut State, now: u64) -> bool {
    let Some((value, _)) = state.shared.get(AUTH_TOKEN_KEY) else {
        return false;
    };
    let (Some(subject), Some(at), Some(token)) =
        (value.get(..32), value.get(32..40), value.get(40..))
    else {
        return false;
    };
    let at = u64::from_be_bytes(at.try_into().unwrap_or([0; 8]));
    let fresh = now < at.saturating_add(AUTH_RENEW_SECONDS);
    match std::str::from_utf8(token) {
        Ok(token) if subject == auth_subject(fleet) && fresh && !token.is_empty() => {
            state.fleet.session.obtained(token.to_string(), at);
            state.fleet.auth.adopted(0);
            true
        }
        _ => false,
    }
}

/// Counts kept since the last report.
fn report(state: &mut State, metrics: &dyn Metrics) {
    for (counter, n) in state.fleet.counts.drain() {
        metrics.increment(counter, n);
    }
}

#[cfg(test)]
mod tests {
    //! The fleet cache's steps with canned etcd 3.4 answers (int64s as
    //! strings; `kvs`, `succeeded` and `count` left out when empty), two
    //! processes (two shared-data stores) sharing one etcd.

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use serde_json::{json, Value};

    use super::*;
    use crate::engine::test_support::{bearer, get};
    use crate::engine::{verdict_for, Verdict, Wait};
    use crate::metrics::testing::FakeMetrics;
    use crate::services::testing::MemoryStore;

    const NOW: u64 = 1_700_001_000;
    const KEY: &str = "fleet-key-0123456789abcdef-0123456789";
    const HEADER: &str =
        r#""header":{"cluster_id":"1","member_id":"2","revision":"7","raft_term":"2"}"#;

    fn config(fleet: &str) -> Config {
        let json = format!(
            r#"{{"issuers":[{{"issuer":"https://issuer.test","audiences":["api"],
                "introspection":{{"endpoint":"https://issuer.test/introspect","upstream":"as",
                "client_id":"pep","client_secret":"s"}}}}],
                "fleet_cache":{{"endpoint":"http://etcd.test:2379","upstream":"etcd",
                "hmac_key_env":"K","username":"pep","password_env":"P"{fleet}}}}}"#
        );
        let env = |name: &str| match name {
            "K" => Some(KEY.to_string()),
            "P" => Some("pw".to_string()),
            _ => None,
        };
        Config::from_json(json.as_bytes(), &env).unwrap()
    }

    fn worker(c: &Config, store: &Rc<MemoryStore>) -> State {
        let mut s = State::new(c);
        s.share_through(store.clone(), 1);
        s
    }

    fn reply(status: u16, body: &str) -> CalloutReply {
        CalloutReply {
            status: Some(status),
            body: body.as_bytes().to_vec(),
            oversized: None,
        }
    }

    fn ask(c: &Config, s: &mut State, token: &str, now: u64) -> Verdict {
        let headers = bearer(token);
        verdict_for(c, s, &get("/api", &headers, None), now)
    }

    /// The fetch a request's verdict starts.
    fn fetch_of(v: Verdict) -> Fetch {
        match v {
            Verdict::Wait(Wait {
                fetch: Some(fetch), ..
            }) => fetch,
            other => panic!("no fetch: {other:?}"),
        }
    }

    fn body(f: &Fetch) -> Value {
        serde_json::from_slice(f.callout.body.as_deref().unwrap_or(b"null")).unwrap()
    }

    /// Feeds `answer` to `f` and returns what follows.
    fn feed(
        c: &Config,
        s: &mut State,
        m: &FakeMetrics,
        f: Fetch,
        answer: &CalloutReply,
        now: u64,
    ) -> Resumed {
        crate::engine::resume(c, s, m, f.resume, Ok(answer), now)
    }

    fn next(r: Resumed) -> Fetch {
        match r {
            Resumed::Next(f) => f,
            other => panic!("no next call: {other:?}"),
        }
    }

    fn is_etcd(f: &Fetch, path: &str) -> bool {
        matches!(f.resume, Resume::Fleet(_)) && f.callout.url.path == path
    }

    fn active() -> String {
        format!(
            r#"{{"active":true,"sub":"alice","scope":"read","aud":"api","exp":{},"iss":"https://issuer.test","client_id":"app"}}"#,
            NOW + 600
        )
    }

    fn range_with(value: &[u8]) -> String {
        format!(
            r#"{{{HEADER},"kvs":[{{"key":"YQ==","create_revision":"5","mod_revision":"5","version":"1","value":"{}","lease":"42"}}],"count":"1"}}"#,
            etcd::b64(value)
        )
    }

    /// The root's tick authenticates (a request never does).
    fn authenticate(c: &Config, s: &mut State, m: &FakeMetrics, token: &str, now: u64) {
        let due = crate::engine::due(c, s, m, now * 1000);
        let [Due::Dispatch(f)] = <[Due; 1]>::try_from(due).unwrap() else {
            panic!("no authenticate")
        };
        assert!(is_etcd(&f, "/v3/auth/authenticate"));
        assert_eq!(body(&f), json!({"name": "pep", "password": "pw"}));
        let answer = reply(200, &format!(r#"{{{HEADER},"token":"{token}"}}"#));
        assert!(matches!(
            feed(c, s, m, f, &answer, now),
            Resumed::Later { .. }
        ));
    }

    fn fleet_count(m: &FakeMetrics, read: FleetRead) -> u64 {
        m.counter(Counter::FleetRead(read))
    }

    /// Process A asks the authorization server for the fleet; its answer
    /// is written; process B finds it and asks nobody.
    #[test]
    fn a_miss_is_claimed_asked_and_written_and_another_process_hits() {
        let c = config("");
        let m = FakeMetrics::default();
        let (store_a, store_b) = (
            Rc::new(MemoryStore::default()),
            Rc::new(MemoryStore::default()),
        );
        let mut a = worker(&c, &store_a);
        // No etcd token yet: the AS is asked directly.
        let f = fetch_of(ask(&c, &mut a, "opaque-0", NOW));
        assert!(matches!(f.resume, Resume::Introspect(_)));
        authenticate(&c, &mut a, &m, "tok.1", NOW);
        let f = fetch_of(ask(&c, &mut a, "opaque-1", NOW));
        assert!(is_etcd(&f, "/v3/kv/range"));
        assert!(f
            .callout
            .headers
            .contains(&("authorization".into(), "tok.1".into())));
        assert_eq!(f.callout.timeout_ms, 200);
        let answer_key = body(&f)["key"].as_str().unwrap().to_string();
        // A miss: no kvs, no count.
        let f = next(feed(
            &c,
            &mut a,
            &m,
            f,
            &reply(200, &format!("{{{HEADER}}}")),
            NOW,
        ));
        assert!(is_etcd(&f, "/v3/lease/grant"));
        let f = next(feed(
            &c,
            &mut a,
            &m,
            f,
            &reply(200, &format!(r#"{{{HEADER},"ID":"99","TTL":"5"}}"#)),
            NOW,
        ));
        assert!(is_etcd(&f, "/v3/kv/txn"));
        assert_eq!(body(&f)["success"][0]["request_put"]["lease"], "99");
        assert_eq!(
            body(&f)["failure"][0]["request_range"]["key"],
            answer_key.as_str()
        );
        let won = format!(
            r#"{{{HEADER},"succeeded":true,"responses":[{{"response_put":{{"header":{{"revision":"8"}}}}}}]}}"#
        );
        let f = next(feed(&c, &mut a, &m, f, &reply(200, &won), NOW));
        assert!(matches!(f.resume, Resume::Introspect(_)), "the winner asks");
        assert_eq!(f.callout.upstream, "as");
        let Resumed::Settled {
            known: Some(known), ..
        } = feed(&c, &mut a, &m, f, &reply(200, &active()), NOW)
        else {
            panic!("not settled")
        };
        assert!(known.1.is_ok());
        assert_eq!(m.counter(Counter::FleetClaim(FleetClaim::Won)), 1);
        // The write goes out on the root's tick: a lease covering
        // stale_until, then the put.
        let due = crate::engine::due(&c, &mut a, &m, NOW * 1000);
        let [Due::Dispatch(f)] = <[Due; 1]>::try_from(due).unwrap() else {
            panic!("no write")
        };
        assert!(is_etcd(&f, "/v3/lease/grant"));
        let ttl: u64 = body(&f)["TTL"].as_str().unwrap().parse().unwrap();
        assert!(ttl >= 300, "{ttl}");
        let f = next(feed(
            &c,
            &mut a,
            &m,
            f,
            &reply(200, &format!(r#"{{{HEADER},"ID":"100","TTL":"{ttl}"}}"#)),
            NOW,
        ));
        assert!(is_etcd(&f, "/v3/kv/put"));
        assert_eq!(body(&f)["key"], answer_key.as_str());
        assert_eq!(body(&f)["lease"], "100");
        let value = <ct_codecs::Base64 as ct_codecs::Decoder>::decode_to_vec(
            body(&f)["value"].as_str().unwrap(),
            None,
        )
        .unwrap();
        assert!(!String::from_utf8_lossy(&value).contains("opaque-1"));
        assert!(matches!(
            feed(
                &c,
                &mut a,
                &m,
                f,
                &reply(200, &format!("{{{HEADER}}}")),
                NOW
            ),
            Resumed::Later { .. }
        ));
        assert_eq!(m.counter(Counter::FleetWrite { ok: true }), 1);

        // Process B: authenticates, reads, finds A's entry.
        let mut b = worker(&c, &store_b);
        authenticate(&c, &mut b, &m, "tok.2", NOW + 5);
        let f = fetch_of(ask(&c, &mut b, "opaque-1", NOW + 5));
        let Resumed::Settled {
            known: Some(known), ..
        } = feed(&c, &mut b, &m, f, &reply(200, &range_with(&value)), NOW + 5)
        else {
            panic!("no hit")
        };
        assert_eq!(known.1.as_ref().unwrap().subject.as_deref(), Some("alice"));
        assert_eq!(fleet_count(&m, FleetRead::Hit), 1);
        // Cached for the process: no more calls.
        assert!(matches!(
            ask(&c, &mut b, "opaque-1", NOW + 6),
            Verdict::Allow(_)
        ));
        // Under another token's key the same value is rejected.
        let f = fetch_of(ask(&c, &mut b, "opaque-2", NOW + 6));
        let f = next(feed(
            &c,
            &mut b,
            &m,
            f,
            &reply(200, &range_with(&value)),
            NOW + 6,
        ));
        assert!(matches!(f.resume, Resume::Introspect(_)));
        assert_eq!(fleet_count(&m, FleetRead::Rejected), 1);
    }

    #[test]
    fn a_lost_claim_polls_on_the_tick_then_asks_itself() {
        let c = config(r#","claim_wait_ms":300"#);
        let m = FakeMetrics::default();
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store);
        s.fleet.session.obtained("tok".into(), NOW);
        let f = fetch_of(ask(&c, &mut s, "opaque-1", NOW));
        let f = next(feed(
            &c,
            &mut s,
            &m,
            f,
            &reply(200, &format!("{{{HEADER}}}")),
            NOW,
        ));
        let f = next(feed(
            &c,
            &mut s,
            &m,
            f,
            &reply(200, &format!(r#"{{{HEADER},"ID":"7","TTL":"5"}}"#)),
            NOW,
        ));
        // Lost: neither `succeeded` nor a range in the answer.
        assert!(matches!(
            feed(
                &c,
                &mut s,
                &m,
                f,
                &reply(200, &format!("{{{HEADER}}}")),
                NOW
            ),
            Resumed::Later { .. }
        ));
        assert_eq!(m.counter(Counter::FleetClaim(FleetClaim::Lost)), 1);
        // Its requests still wait; nothing is asked before the poll is due.
        assert!(matches!(
            ask(&c, &mut s, "opaque-1", NOW),
            Verdict::Wait(Wait { fetch: None, .. })
        ));
        let t = NOW * 1000;
        assert!(crate::engine::due(&c, &mut s, &m, t).is_empty());
        let due = crate::engine::due(&c, &mut s, &m, t + 100);
        let [Due::Dispatch(f)] = <[Due; 1]>::try_from(due).unwrap() else {
            panic!("no poll")
        };
        assert!(is_etcd(&f, "/v3/kv/range"));
        assert!(matches!(
            feed(
                &c,
                &mut s,
                &m,
                f,
                &reply(200, &format!("{{{HEADER}}}")),
                NOW
            ),
            Resumed::Later { .. }
        ));
        // Past claim_wait_ms: asked here.
        let due = crate::engine::due(&c, &mut s, &m, t + 300);
        let [Due::Dispatch(f)] = <[Due; 1]>::try_from(due).unwrap() else {
            panic!("not asked")
        };
        assert!(matches!(f.resume, Resume::Introspect(_)));
        assert_eq!(m.counter(Counter::FleetClaim(FleetClaim::Timeout)), 1);
    }

    #[test]
    fn every_etcd_failure_asks_the_authorization_server_and_the_breaker_opens() {
        let c = config(r#","breaker":{"failures":4,"open_seconds":30}"#);
        let m = FakeMetrics::default();
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store);
        let failures = [
            reply(
                401,
                r#"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#,
            ),
            reply(429, r#"{"error":"etcdserver: too many requests","code":8}"#),
            reply(200, "<html>"),
            CalloutReply::default(),
        ];
        for (i, failure) in failures.iter().enumerate() {
            s.fleet.session.obtained("tok".into(), NOW);
            let f = fetch_of(ask(&c, &mut s, &format!("opaque-{i}"), NOW));
            assert!(is_etcd(&f, "/v3/kv/range"), "{i}");
            let f = next(feed(&c, &mut s, &m, f, failure, NOW));
            assert!(
                matches!(f.resume, Resume::Introspect(_)),
                "{i}: the AS is asked"
            );
            if i == 0 {
                // A refused token is dropped: the next lookup bypasses etcd
                // until the root's tick authenticates again.
                assert!(s.fleet.session.token(AUTH_USE_SECONDS, NOW).is_none());
                let f = fetch_of(ask(&c, &mut s, "opaque-x", NOW));
                assert!(matches!(f.resume, Resume::Introspect(_)));
            }
        }
        assert_eq!(fleet_count(&m, FleetRead::Error), 4);
        // Open: the next token goes straight to the authorization server.
        let f = fetch_of(ask(&c, &mut s, "opaque-9", NOW + 1));
        assert!(matches!(f.resume, Resume::Introspect(_)));
        crate::engine::due(&c, &mut s, &m, (NOW + 1) * 1000);
        assert_eq!(fleet_count(&m, FleetRead::Bypassed), 2);
        assert_eq!(m.gauge(Gauge::FleetBreakerOpen), Some(1));
        // Closed again after open_seconds.
        let f = fetch_of(ask(&c, &mut s, "opaque-10", NOW + 31));
        assert!(matches!(f.resume, Resume::Fleet(_)));
    }

    #[test]
    fn an_excluded_issuer_and_unsigned_answers_under_require_signed_bypass_etcd() {
        for fleet in [
            r#","exclude_issuers":["https://issuer.test"]"#,
            r#","require_signed_answers":true"#,
        ] {
            let c = config(fleet);
            let store = Rc::new(MemoryStore::default());
            let mut s = worker(&c, &store);
            let f = fetch_of(ask(&c, &mut s, "opaque-1", NOW));
            assert!(matches!(f.resume, Resume::Introspect(_)), "{fleet}");
        }
    }

    /// An entry sealed as a writer would, for `token`, fresh until `fresh_until`.
    fn entry_for(c: &Config, token: &str, written_at: u64, fresh_until: u64) -> Vec<u8> {
        let fleet = c.fleet_cache.as_ref().unwrap();
        let at = &fleet.locations("https://issuer.test\0pep", token)[0];
        let claims: serde_json::Map<String, Value> = serde_json::from_str(&active()).unwrap();
        fleet.seal(
            at,
            &StoredAnswer {
                issuer: "https://issuer.test".into(),
                written_at,
                fresh_until,
                stale_until: fresh_until,
                answer: Answer::Plain(claims),
            },
        )
    }

    #[test]
    fn a_hit_near_its_end_is_used_and_refreshed_by_the_claims_winner() {
        let c = config("");
        let m = FakeMetrics::default();
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store);
        s.fleet.session.obtained("tok".into(), NOW);
        let value = entry_for(&c, "hot", NOW - 290, NOW + 5);
        let f = fetch_of(ask(&c, &mut s, "hot", NOW));
        let Resumed::Settled {
            known: Some(known), ..
        } = feed(&c, &mut s, &m, f, &reply(200, &range_with(&value)), NOW)
        else {
            panic!("no hit")
        };
        assert!(known.1.is_ok(), "used while it is refreshed");
        // The refresh claims the token on the tick (a lease first).
        let due = crate::engine::due(&c, &mut s, &m, NOW * 1000);
        let [Due::Dispatch(f)] = <[Due; 1]>::try_from(due).unwrap() else {
            panic!("no refresh")
        };
        assert!(is_etcd(&f, "/v3/lease/grant"));
        let grant = format!(r#"{{{HEADER},"ID":"9","TTL":"5"}}"#);
        let f = next(feed(&c, &mut s, &m, f, &reply(200, &grant), NOW));
        assert!(is_etcd(&f, "/v3/kv/txn"));
        // A claim of this generation: the miss's claim does not block it.
        let claim = <ct_codecs::Base64 as ct_codecs::Decoder>::decode_to_vec(
            body(&f)["compare"][0]["key"].as_str().unwrap(),
            None,
        )
        .unwrap();
        assert!(String::from_utf8(claim)
            .unwrap()
            .ends_with(&format!("/{}", NOW + 5)));
        let won = format!(r#"{{{HEADER},"succeeded":true}}"#);
        let f = next(feed(&c, &mut s, &m, f, &reply(200, &won), NOW));
        assert!(matches!(f.resume, Resume::Introspect(_)));
        feed(&c, &mut s, &m, f, &reply(200, &active()), NOW);
        // And its answer is written.
        let due = crate::engine::due(&c, &mut s, &m, NOW * 1000);
        assert!(
            matches!(&due[..], [Due::Dispatch(f)] if is_etcd(f, "/v3/lease/grant") || is_etcd(f, "/v3/kv/put"))
        );
        // A refresh that loses the claim stops there.
        let value = entry_for(&c, "hot2", NOW - 290, NOW + 5);
        let f = fetch_of(ask(&c, &mut s, "hot2", NOW));
        feed(&c, &mut s, &m, f, &reply(200, &range_with(&value)), NOW);
        let due = crate::engine::due(&c, &mut s, &m, NOW * 1000);
        let [Due::Dispatch(f)] = <[Due; 1]>::try_from(due).unwrap() else {
            panic!("no refresh")
        };
        assert!(is_etcd(&f, "/v3/kv/txn"), "the lease is reused");
        let lost = format!("{{{HEADER}}}");
        assert!(matches!(
            feed(&c, &mut s, &m, f, &reply(200, &lost), NOW),
            Resumed::Later { .. }
        ));
        assert!(crate::engine::due(&c, &mut s, &m, NOW * 1000 + 500).is_empty());
    }

    #[test]
    fn an_expired_entry_is_claimed_like_a_miss() {
        let c = config("");
        let m = FakeMetrics::default();
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store);
        s.fleet.session.obtained("tok".into(), NOW);
        let value = entry_for(&c, "old", NOW - 400, NOW - 100);
        let f = fetch_of(ask(&c, &mut s, "old", NOW));
        let f = next(feed(
            &c,
            &mut s,
            &m,
            f,
            &reply(200, &range_with(&value)),
            NOW,
        ));
        assert!(
            is_etcd(&f, "/v3/lease/grant"),
            "claimed, not asked directly"
        );
        assert_eq!(fleet_count(&m, FleetRead::Rejected), 1);
    }

    #[test]
    fn an_inactive_answer_is_not_written() {
        let c = config(r#","single_flight":false"#);
        let m = FakeMetrics::default();
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store);
        s.fleet.session.obtained("tok".into(), NOW);
        let f = fetch_of(ask(&c, &mut s, "junk", NOW));
        let f = next(feed(
            &c,
            &mut s,
            &m,
            f,
            &reply(200, &format!("{{{HEADER}}}")),
            NOW,
        ));
        assert!(
            matches!(f.resume, Resume::Introspect(_)),
            "no claim without single_flight"
        );
        feed(&c, &mut s, &m, f, &reply(200, r#"{"active":false}"#), NOW);
        assert!(crate::engine::due(&c, &mut s, &m, NOW * 1000).is_empty());
    }
}
