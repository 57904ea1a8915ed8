//! Introspection of the tokens that need it (opaque ones, and JWTs of an
//! issuer in an introspecting mode): answers from shared data first, then
//! one callout per token per worker, bounded by the worker's in-flight cap
//! and the issuer's budget; the answer cached for every worker.

use std::rc::Rc;

use crate::cache::Digest;
use crate::callout::CalloutReply;
use crate::config::{Config, PhantomFormat};
use crate::flight::{Flight, Marker};
use crate::grant::Grant;
use crate::introspection::{self, Answer, Introspection, ResponseFormat};
use crate::introspection_jwt;
use crate::jwt::{check_introspected, VerifiedToken};
use crate::keys::KeyWait;
use crate::metrics::IntrospectionResult;
use crate::response::{Denial, TokenProblem};
use crate::shared_cache::{Entry, Written};
use crate::wait::{Bound, WaitKey};

use super::{authenticate, fleet, issuer_name, Fetch, Known, Resume, State, Verdict, Wait};

/// Introspections one worker may have in flight at once: beyond, a flood of
/// made-up opaque tokens gets 503s instead of as many callouts.
pub const MAX_INTROSPECTIONS_IN_FLIGHT: usize = 256;

/// A request waiting for an introspection answer (its own callout): which
/// token, and the grant of its local verification under `jwt_then_introspect`.
#[derive(Debug, PartialEq)]
pub struct PendingIntrospection {
    pub issuer: usize,
    pub key: Digest,
    /// When the requests waiting for this answer give up (seconds).
    pub until: u64,
    local: Option<Rc<Grant>>,
    /// Where the answer goes in the fleet cache (the lookup reached etcd).
    pub(super) fleet_key: Option<Vec<u8>>,
}

/// The issuer that introspects an opaque token: the first whose
/// `token_prefix` starts it, else the one introspecting without a prefix
/// (configuration allows at most one).
pub(super) fn opaque_token_issuer<'c>(
    config: &'c Config,
    token: &str,
) -> Option<(usize, &'c Introspection)> {
    let introspecting = || {
        config
            .issuers
            .iter()
            .enumerate()
            .filter_map(|(index, issuer)| Some((index, issuer.introspection.as_ref()?)))
    };
    introspecting()
        .find(|(_, x)| {
            x.token_prefix
                .as_deref()
                .is_some_and(|p| token.starts_with(p))
        })
        .or_else(|| introspecting().find(|(_, x)| x.token_prefix.is_none()))
}

/// Which issuer is asked about a token, for which client address.
#[derive(Clone, Copy)]
pub(super) struct Asking<'a> {
    pub(super) issuer: usize,
    pub(super) client: Option<&'a str>,
}

/// An answer from shared data, another worker's (or an earlier one of ours),
/// or the callout to ask, or a wait for the worker that is asking.
pub(super) fn introspect(
    config: &Config,
    state: &mut State,
    asking: Asking,
    token: &str,
    key: Digest,
    local: Option<Rc<Grant>>,
    now: u64,
) -> Result<Rc<Grant>, Verdict> {
    let issuer = asking.issuer;
    let unavailable = |cause: String| {
        Verdict::Deny(Denial::IntrospectionUnavailable {
            issuer: issuer_name(config, issuer),
            cause,
        })
    };
    let Some(settings) = config
        .issuers
        .get(issuer)
        .and_then(|i| i.introspection.as_ref())
    else {
        return Err(unavailable(
            "the issuer has no introspection settings".into(),
        ));
    };
    if config.shared_cache.enabled() {
        match config
            .shared_cache
            .read(state.shared.as_ref(), &settings.scope, &key, now)
        {
            Some(entry @ Entry::Active { fresh_until, .. }) if now < fresh_until => {
                state.shared_stats.hits += 1;
                return match use_entry(config, state, issuer, key, &entry, local.as_ref(), now) {
                    Some(outcome) => outcome.map_err(Verdict::Deny),
                    None => Err(unavailable("a shared cache entry could not be read".into())),
                };
            }
            Some(entry @ Entry::Inactive { .. }) => {
                state.shared_stats.hits += 1;
                if let Some(outcome) = use_entry(config, state, issuer, key, &entry, None, now) {
                    return outcome.map_err(Verdict::Deny);
                }
            }
            _ => state.shared_stats.misses += 1,
        }
    }
    let wait = |until: u64, fetch: Option<Fetch>| {
        Verdict::Wait(Wait {
            on: WaitKey::Introspection { issuer, token: key },
            until,
            fetch,
        })
    };
    if let Some(until) = state
        .introspecting
        .get(&key)
        .and_then(|(f, _)| f.awaited_until(now))
    {
        return Err(wait(until, None));
    }
    // Its answer never came (the host dropped it): ask again.
    state.introspecting.remove(&key);
    if in_flight_full(state, asking.client, now) {
        return Err(Verdict::Deny(Denial::Overloaded {
            bound: Bound::InFlight,
        }));
    }
    let endpoint = match &settings.endpoint {
        Some(endpoint) => endpoint.clone(),
        None => match authenticate::discovered_endpoint(config, state, issuer, now, |e| {
            &e.introspection
        })? {
            Some(endpoint) => endpoint,
            None => {
                return Err(unavailable(
                    "the discovery document has no usable introspection_endpoint".into(),
                ))
            }
        },
    };
    // A signed answer (RFC 9701) is checked with the issuer's keys: they
    // are loaded before it is asked for (the request waits on them as a JWT
    // of the issuer would).
    if settings.response == ResponseFormat::Jwt && state.keys.keys(issuer).is_none() {
        match state.keys.load_for_request(issuer, now) {
            // Another worker's keys (if they lack the one that signs, the
            // answer is a fault).
            KeyWait::Adopted => {}
            wait => return Err(Verdict::from_key_wait(config, wait, issuer, None)),
        }
    }
    // Built before anything is claimed: a request that cannot be made
    // (no random bytes for a client assertion) holds no worker back.
    let callout = settings
        .callout(&endpoint, token, now, state.random.as_ref())
        .map_err(|e| unavailable(e.to_string()))?;
    // Two timeouts: the callout's own, and the time to dispatch it; and
    // the fleet cache's calls before it, if it is asked first.
    let until = now
        .saturating_add(settings.timeout_ms / 1000 + 2)
        .saturating_add(fleet::extra_wait_seconds(config, issuer));
    let mut flight = Flight::default();
    let marker = introspection_marker(config, state, settings, &key);
    if let Err(theirs) = flight.start(marker.as_ref(), until, now) {
        return Err(wait(theirs, None));
    }
    // Spent only by the worker that asks: waiting for another worker's
    // answer (and polling for it) costs the budget nothing.
    let spent = state
        .introspection_budgets
        .get_mut(issuer)
        .is_some_and(|budget| budget.spend(asking.client, now));
    if !spent {
        flight.succeeded(
            introspection_marker(config, state, settings, &key).as_ref(),
            0,
        );
        return Err(Verdict::Deny(Denial::Overloaded {
            bound: Bound::IntrospectionBudget,
        }));
    }
    state
        .introspecting
        .insert(key, (flight, asking.client.map(Rc::from)));
    let pending = PendingIntrospection {
        issuer,
        key,
        until,
        local,
        fleet_key: None,
    };
    // The fleet cache first, when it serves this issuer.
    let fetch = match fleet::lookup(config, state, pending, Box::new(callout), token, now) {
        Ok(fetch) => fetch,
        Err((pending, callout)) => Fetch {
            callout,
            resume: Resume::Introspect(Box::new(pending)),
        },
    };
    Err(wait(until, Some(fetch)))
}

/// Whether the worker's introspections in flight are at their cap, or
/// `client` holds three quarters of it (so one flooding address leaves room
/// for the others).
fn in_flight_full(state: &mut State, client: Option<&str>, now: u64) -> bool {
    let in_flight = |state: &State| {
        let all = state.introspecting.len();
        let theirs = client.map_or(0, |client| {
            state
                .introspecting
                .values()
                .filter(|(_, c)| c.as_deref() == Some(client))
                .count()
        });
        (all, theirs)
    };
    let full = |(all, theirs): (usize, usize)| {
        all >= MAX_INTROSPECTIONS_IN_FLIGHT || theirs >= MAX_INTROSPECTIONS_IN_FLIGHT / 4 * 3
    };
    if full(in_flight(state)) {
        state.introspecting.retain(|_, (f, _)| f.awaiting(now));
    }
    full(in_flight(state))
}

/// Where a token's introspection is claimed in shared data, when the
/// shared cache is on: for the issuer's answer scope, so a configuration
/// that accepts answers differently neither waits nor is waited for.
fn introspection_marker<'a>(
    config: &Config,
    state: &'a State,
    settings: &Introspection,
    key: &Digest,
) -> Option<Marker<'a>> {
    config.shared_cache.enabled().then(|| Marker {
        store: state.shared.as_ref(),
        key: config.shared_cache.marker_key(key),
        subject: config.shared_cache.marker_subject(&settings.scope, key),
        worker: state.worker,
    })
}

/// The grant (or denial) a cached answer stands for, cached in this worker
/// too; `None` if the entry does not hold a JSON object.
fn use_entry(
    config: &Config,
    state: &mut State,
    issuer: usize,
    key: Digest,
    entry: &Entry,
    local: Option<&Rc<Grant>>,
    now: u64,
) -> Option<Result<Rc<Grant>, Denial>> {
    match entry {
        Entry::Active {
            json, fresh_until, ..
        } => {
            let claims = serde_json::from_slice(json).ok()?;
            Some(admit(
                config,
                state,
                issuer,
                key,
                claims,
                local,
                *fresh_until,
                now,
            ))
        }
        Entry::Inactive { until, .. } => {
            let denial = Denial::InvalidToken(TokenProblem::Inactive);
            state.rejected.insert(key, denial.clone(), *until, now);
            Some(Err(denial))
        }
    }
}

/// An active answer's claims, checked, as a grant cached until its checked
/// `exp` (less the margin, within `max_ttl_seconds`) and never past
/// `max_until`; a check that fails is remembered like an inactive answer.
#[allow(clippy::too_many_arguments)]
fn admit(
    config: &Config,
    state: &mut State,
    issuer: usize,
    key: Digest,
    claims: serde_json::Map<String, serde_json::Value>,
    local: Option<&Rc<Grant>>,
    max_until: u64,
    now: u64,
) -> Result<Rc<Grant>, Denial> {
    let Some(settings) = config.issuers.get(issuer) else {
        return Err(Denial::InvalidToken(TokenProblem::Inactive));
    };
    let negative_until = now.saturating_add(
        settings
            .introspection
            .as_ref()
            .map_or(0, |x| x.negative_ttl_seconds),
    );
    let refuse = |state: &mut State, denial: Denial| {
        state
            .rejected
            .insert(key, denial.clone(), negative_until, now);
        Err(denial)
    };
    let exp = match check_introspected(&claims, settings, &config.rules, local.is_some(), now) {
        Ok(exp) => exp,
        Err(e) => return refuse(state, Denial::InvalidToken(TokenProblem::Jwt(e))),
    };
    let phantom = config.forward.phantom_token_header.as_ref().and_then(|_| {
        let mut answer = claims.clone();
        answer.insert("active".into(), serde_json::Value::Bool(true));
        match config.forward.phantom_token_format {
            PhantomFormat::Json => Some(introspection::ascii_json(&answer)),
            PhantomFormat::Jwt => crate::grant::unsigned_jwt(&serde_json::Value::Object(answer))
                .map(|jwt| format!("Bearer {jwt}")),
        }
    });
    let grant = match local {
        // Locally verified: the JWT's own claims are what is forwarded.
        Some(local) => {
            let mut grant = (**local).clone();
            grant.expires_at = match (grant.expires_at, exp) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            grant.phantom = phantom;
            grant
        }
        None => {
            let token = VerifiedToken::introspected(issuer, claims, exp);
            match Grant::from_token(&token, &config.grant_keeps()) {
                Ok(mut grant) => {
                    grant.phantom = phantom;
                    super::revoke::keyed(config, grant, &token)
                }
                Err(e) => return refuse(state, Denial::InvalidToken(TokenProblem::Claim(e))),
            }
        }
    };
    // From the checked `exp` (a fractional one included) and, after a local
    // verification, the JWT's own: the cache never outlives either.
    let until = settings
        .introspection
        .as_ref()
        .map_or(max_until, |x| x.fresh_until(grant.expires_at, now))
        .min(max_until);
    let grant = Rc::new(grant);
    state.tokens.insert(key, Rc::clone(&grant), until, now);
    Ok(grant)
}

/// The endpoint's answer (or why there is none) for one token: cached for
/// every worker, and the outcome handed to the requests that waited.
pub(super) fn finish_introspection(
    config: &Config,
    state: &mut State,
    pending: PendingIntrospection,
    answer: Result<&CalloutReply, &str>,
    now: u64,
) -> (usize, Known, IntrospectionResult) {
    let PendingIntrospection {
        issuer,
        key,
        local,
        fleet_key,
        ..
    } = pending;
    let flight = state.introspecting.remove(&key);
    let outcome = settle_introspection(config, state, issuer, key, local, answer, fleet_key, now);
    // Released once the answer is in shared data: a worker that polls and
    // finds no marker finds the answer.
    if let Some((mut flight, _)) = flight {
        let settings = config
            .issuers
            .get(issuer)
            .and_then(|i| i.introspection.as_ref());
        let marker = settings.and_then(|s| introspection_marker(config, state, s, &key));
        flight.succeeded(marker.as_ref(), 0);
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
fn settle_introspection(
    config: &Config,
    state: &mut State,
    issuer: usize,
    key: Digest,
    local: Option<Rc<Grant>>,
    answer: Result<&CalloutReply, &str>,
    fleet_key: Option<Vec<u8>>,
    now: u64,
) -> (usize, Known, IntrospectionResult) {
    let shared = &config.shared_cache;
    let Some(settings) = config
        .issuers
        .get(issuer)
        .and_then(|i| i.introspection.as_ref())
    else {
        return (
            issuer,
            (key, Err(Denial::InvalidToken(TokenProblem::Inactive))),
            IntrospectionResult::Failed,
        );
    };
    let interpreted = match answer {
        Ok(reply) if settings.response == ResponseFormat::Jwt => match config.issuers.get(issuer) {
            Some(issuer_settings) => introspection_jwt::read(
                reply,
                issuer_settings,
                &settings.client_id,
                state.keys.keys(issuer).map(|k| k.as_ref()),
                state.verifier.as_ref(),
                config.rules.clock_skew_seconds,
                now,
            )
            .map_err(|e| e.to_string()),
            None => Err("no such issuer".to_string()),
        },
        Ok(reply) => introspection::interpret(reply).map_err(|e| e.to_string()),
        Err(why) => Err(format!("the callout could not be dispatched: {why}")),
    };
    let (outcome, result) = match interpreted {
        Ok(Answer::Active(claims)) => {
            let json = serde_json::Value::Object(claims.clone()).to_string();
            let outcome = admit(
                config,
                state,
                issuer,
                key,
                claims,
                local.as_ref(),
                u64::MAX,
                now,
            );
            let fresh_until = outcome
                .as_ref()
                .map_or(now, |grant| settings.fresh_until(grant.expires_at, now));
            if let (Some(fleet_key), true) = (fleet_key, outcome.is_ok()) {
                // What the fleet stores is the answer as it came: the
                // signed JWT itself when it was one, re-verified on read.
                let stored = match (settings.response, answer) {
                    (ResponseFormat::Jwt, Ok(reply)) => std::str::from_utf8(&reply.body)
                        .ok()
                        .map(|jwt| crate::fleet_cache::Answer::Signed(jwt.trim().to_string())),
                    _ => Some(crate::fleet_cache::Answer::Plain(claims_for_fleet(&json))),
                };
                if let Some(stored) = stored {
                    fleet::queue_write(
                        config,
                        state,
                        fleet_key,
                        issuer,
                        stored,
                        (fresh_until, settings.stale_until(fresh_until)),
                        now,
                    );
                }
            }
            if fresh_until > now {
                let times = (fresh_until, settings.stale_until(fresh_until));
                share_active(config, state, issuer, key, json, times, now);
            }
            let result = if outcome.is_ok() {
                IntrospectionResult::Active
            } else {
                IntrospectionResult::Inactive
            };
            (outcome, result)
        }
        Ok(Answer::Inactive) => {
            let until = now.saturating_add(settings.negative_ttl_seconds);
            let denial = Denial::InvalidToken(TokenProblem::Inactive);
            if settings.negative_ttl_seconds > 0 {
                state.rejected.insert(key, denial.clone(), until, now);
                let entry = Entry::Inactive {
                    issuer: settings.scope,
                    until,
                };
                count_write(
                    state,
                    shared.write(state.shared.as_ref(), &key, &entry, now),
                );
            }
            (Err(denial), IntrospectionResult::Inactive)
        }
        Err(cause) => match stale(config, state, issuer, key, local.as_ref(), now) {
            Some(grant) => (Ok(grant), IntrospectionResult::StaleServed),
            None => (
                Err(Denial::IntrospectionUnavailable {
                    issuer: issuer_name(config, issuer),
                    cause,
                }),
                IntrospectionResult::Failed,
            ),
        },
    };
    (issuer, (key, outcome), result)
}

/// An active answer (its claims' JSON) in shared data, for every worker of
/// the process, fresh and then stale until the times given.
fn share_active(
    config: &Config,
    state: &mut State,
    issuer: usize,
    key: Digest,
    json: String,
    (fresh_until, stale_until): (u64, u64),
    now: u64,
) {
    let Some(settings) = config
        .issuers
        .get(issuer)
        .and_then(|i| i.introspection.as_ref())
    else {
        return;
    };
    let entry = Entry::Active {
        issuer: settings.scope,
        fresh_until,
        stale_until,
        json: json.into_bytes(),
    };
    let written = config
        .shared_cache
        .write(state.shared.as_ref(), &key, &entry, now);
    count_write(state, written);
}

/// The same introspection again (an early refresh of the fleet's answer,
/// which nobody waits for).
pub(super) fn again(pending: &PendingIntrospection) -> PendingIntrospection {
    PendingIntrospection {
        issuer: pending.issuer,
        key: pending.key,
        until: pending.until,
        local: pending.local.clone(),
        fleet_key: None,
    }
}

/// The answer's claims as the fleet stores them: with `active: true`, as
/// the endpoint said (the claims' JSON was made from them just before).
fn claims_for_fleet(json: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json).unwrap_or_default();
    claims.insert("active".into(), serde_json::Value::Bool(true));
    claims
}

/// A valid answer from the fleet cache for the token of `pending`: checked
/// as the endpoint's would be (and never used past the entry's
/// `fresh_until`), cached for every worker, the waiters woken.
pub(super) fn finish_from_fleet(
    config: &Config,
    state: &mut State,
    pending: PendingIntrospection,
    claims: serde_json::Map<String, serde_json::Value>,
    fresh_until: u64,
    stale_until: u64,
    now: u64,
) -> (usize, Known) {
    let PendingIntrospection {
        issuer, key, local, ..
    } = pending;
    let flight = state.introspecting.remove(&key);
    let json = serde_json::Value::Object(claims.clone()).to_string();
    let outcome = admit(
        config,
        state,
        issuer,
        key,
        claims,
        local.as_ref(),
        fresh_until,
        now,
    );
    if let (Ok(grant), Some(settings)) = (
        &outcome,
        config
            .issuers
            .get(issuer)
            .and_then(|i| i.introspection.as_ref()),
    ) {
        let until = settings.fresh_until(grant.expires_at, now).min(fresh_until);
        if until > now {
            let times = (until, stale_until.max(until));
            share_active(config, state, issuer, key, json, times, now);
        }
    }
    if let Some((mut flight, _)) = flight {
        let settings = config
            .issuers
            .get(issuer)
            .and_then(|i| i.introspection.as_ref());
        let marker = settings.and_then(|s| introspection_marker(config, state, s, &key));
        flight.succeeded(marker.as_ref(), 0);
    }
    (issuer, (key, outcome))
}

/// Counts what a write into the shared table did: an empty way filled, or
/// another token's live answer evicted.
fn count_write(state: &mut State, written: Written) {
    match written {
        Written::Filled => state.shared_stats.fills += 1,
        Written::Evicted => state.shared_stats.evictions += 1,
        _ => {}
    }
}

/// Under `failure_mode: serve_stale`, the cached active answer past its TTL
/// but within `stale_seconds`, if shared data still holds it.
fn stale(
    config: &Config,
    state: &mut State,
    issuer: usize,
    key: Digest,
    local: Option<&Rc<Grant>>,
    now: u64,
) -> Option<Rc<Grant>> {
    let scope = config.issuers.get(issuer)?.introspection.as_ref()?.scope;
    let entry = config
        .shared_cache
        .read(state.shared.as_ref(), &scope, &key, now)?;
    let Entry::Active { json, .. } = &entry else {
        return None;
    };
    let claims = serde_json::from_slice(json).ok()?;
    // Served for this request only: the next one asks the endpoint again.
    let grant = admit(config, state, issuer, key, claims, local, now, now).ok()?;
    Some(grant)
}

#[cfg(test)]
mod tests {
    //! The engine with opaque tokens: when it asks the introspection endpoint,
    //! who waits, what is cached (per worker and in shared data), and what every
    //! kind of answer leads to.

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use std::rc::Rc;

    use super::*;
    use crate::cache::digest;
    use crate::callout::Callout;
    use crate::engine::test_support::{bearer, get};
    use crate::engine::{verdict_for, verdict_knowing, Allow, Resumed};
    use crate::introspection::Mode;
    use crate::jwt::test_vectors::vectors;
    use crate::metrics::testing::FakeMetrics;
    use crate::metrics::Counter;
    use crate::services::testing::MemoryStore;
    use crate::wait::Bound;

    const NOW: u64 = 1_700_001_000;

    fn config(introspection: &str, extra: &str) -> Config {
        let v = vectors();
        let jwks = String::from_utf8(v.jwks).unwrap();
        let json = format!(
            r#"{{"issuers":[{{"issuer":"https://issuer.test","audiences":["api"],"jwks":{jwks},
                "introspection":{{"endpoint":"https://issuer.test/introspect","upstream":"as",
                "client_id":"pep","client_secret":"pep-secret"{introspection}}}}}]{extra}}}"#
        );
        Config::from_json(json.as_bytes(), &|_| None).unwrap()
    }

    fn worker(c: &Config, store: &Rc<MemoryStore>, id: u64) -> State {
        let mut s = State::new(c);
        s.share_through(store.clone(), id);
        s
    }

    fn ask(c: &Config, s: &mut State, token: &str, now: u64) -> Verdict {
        let headers = bearer(token);
        let request = get("/api", &headers, None);
        verdict_for(c, s, &request, now)
    }

    fn ask_knowing(c: &Config, s: &mut State, token: &str, known: &Known, now: u64) -> Verdict {
        let headers = bearer(token);
        let request = get("/api", &headers, None);
        verdict_knowing(c, s, &request, Some(known), now)
    }

    fn answer(status: u16, body: &str) -> CalloutReply {
        CalloutReply {
            status: Some(status),
            body: body.as_bytes().to_vec(),
            oversized: None,
        }
    }

    fn active(exp: u64) -> String {
        format!(
            r#"{{"active":true,"scope":"read write","client_id":"app","sub":"alice","aud":"api","exp":{exp},"iss":"https://issuer.test"}}"#
        )
    }

    /// The introspection callout `v` asks for, and its resume.
    fn expect_callout(v: Verdict) -> (Callout, Resume) {
        match v {
            Verdict::Wait(Wait {
                fetch:
                    Some(Fetch {
                        callout,
                        resume: resume @ Resume::Introspect(_),
                    }),
                ..
            }) => (*callout, resume),
            other => panic!("no introspection asked: {other:?}"),
        }
    }

    fn settle(
        c: &Config,
        s: &mut State,
        resume: Resume,
        reply: Result<&CalloutReply, &str>,
        now: u64,
    ) -> (Known, IntrospectionResult) {
        let metrics = FakeMetrics::default();
        match crate::engine::resume(c, s, &metrics, resume, reply, now) {
            Resumed::Settled {
                known: Some(known), ..
            } => {
                let counted =
                    |result| metrics.counter(Counter::Introspection { issuer: 0, result });
                let result = IntrospectionResult::ALL
                    .into_iter()
                    .find(|r| counted(*r) == 1)
                    .expect("the outcome is counted");
                ((*known).clone(), result)
            }
            other => panic!("not an introspection outcome: {other:?}"),
        }
    }

    fn header<'a>(allow: &'a Allow, name: &str) -> Option<&'a str> {
        allow
            .set_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn an_opaque_token_is_asked_about_once_and_waiters_share_the_answer() {
        let c = config(
            "",
            r#","forward":{"phantom_token_header":"x-introspection"}"#,
        );
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store, 1);
        let (callout, resume) = expect_callout(ask(&c, &mut s, "opaque-1", NOW));
        assert_eq!(callout.url.path, "/introspect");
        assert_eq!(
            callout.body.as_deref(),
            Some(&b"token=opaque-1&token_type_hint=access_token"[..])
        );
        // A second request for the same token waits for that callout.
        assert!(matches!(
            ask(&c, &mut s, "opaque-1", NOW),
            Verdict::Wait(Wait {
                on: WaitKey::Introspection { issuer: 0, .. },
                fetch: None,
                ..
            })
        ));
        let (known, result) = settle(
            &c,
            &mut s,
            resume,
            Ok(&answer(200, &active(NOW + 600))),
            NOW,
        );
        assert_eq!(result, IntrospectionResult::Active);
        let Verdict::Allow(allow) = ask_knowing(&c, &mut s, "opaque-1", &known, NOW) else {
            panic!("the waiter is not allowed")
        };
        assert_eq!(header(&allow, "x-authenticated-scope"), Some("read,write"));
        assert_eq!(header(&allow, "x-oauth-client-id"), Some("app"));
        assert_eq!(allow.subject.as_deref(), Some("alice"));
        let phantom: serde_json::Value =
            serde_json::from_str(header(&allow, "x-introspection").unwrap()).unwrap();
        assert_eq!(phantom["active"], true);
        assert_eq!(phantom["sub"], "alice");
        // Later requests: from the worker's cache, no callout.
        assert!(matches!(
            ask(&c, &mut s, "opaque-1", NOW + 1),
            Verdict::Allow(_)
        ));
    }

    #[test]
    fn another_worker_waits_for_the_first_one_and_reads_its_answer() {
        let c = config("", "");
        let store = Rc::new(MemoryStore::default());
        let mut first = worker(&c, &store, 1);
        let mut second = worker(&c, &store, 2);
        let (_, resume) = expect_callout(ask(&c, &mut first, "opaque-2", NOW));
        assert!(matches!(
            ask(&c, &mut second, "opaque-2", NOW),
            Verdict::Wait(Wait { fetch: None, .. })
        ));
        assert!(!second.is_introspecting(&digest(&[b"opaque-2"])));
        let _ = settle(
            &c,
            &mut first,
            resume,
            Ok(&answer(200, &active(NOW + 600))),
            NOW,
        );
        assert!(matches!(
            ask(&c, &mut second, "opaque-2", NOW),
            Verdict::Allow(_)
        ));
        assert_eq!(second.shared_stats.hits, 1);
        // A worker that lost its marker's owner (no answer by the deadline) asks itself.
        let (_, _lost) = expect_callout(ask(&c, &mut first, "opaque-3", NOW));
        let Verdict::Wait(Wait { until, .. }) = ask(&c, &mut second, "opaque-3", NOW) else {
            panic!()
        };
        expect_callout(ask(&c, &mut second, "opaque-3", until));
    }

    #[test]
    fn another_configuration_neither_waits_for_this_ones_marker_nor_reads_its_answer() {
        // Issue 18: the entries named their configuration, the markers did
        // not: a second listener (or the configuration replacing this one)
        // waited for this one's callout, then found an answer it cannot read.
        // Now both are named by the issuer's answer scope: here a cache
        // lifetime that differs.
        let a = config("", "");
        let b = config(r#","max_ttl_seconds":120"#, "");
        let store = Rc::new(MemoryStore::default());
        let mut on_a = worker(&a, &store, 1);
        let mut on_b = worker(&b, &store, 2);
        let (_, resume) = expect_callout(ask(&a, &mut on_a, "opaque-x", NOW));
        let (_, resume_b) = expect_callout(ask(&b, &mut on_b, "opaque-x", NOW));
        let _ = settle(
            &a,
            &mut on_a,
            resume,
            Ok(&answer(200, &active(NOW + 600))),
            NOW,
        );
        let _ = settle(
            &b,
            &mut on_b,
            resume_b,
            Ok(&answer(200, &active(NOW + 600))),
            NOW,
        );
        // The same configuration still shares one callout across workers.
        let mut also_a = worker(&a, &store, 3);
        let (_, _) = expect_callout(ask(&a, &mut on_a, "opaque-y", NOW));
        assert!(matches!(
            ask(&a, &mut also_a, "opaque-y", NOW),
            Verdict::Wait(Wait { fetch: None, .. })
        ));
    }

    #[test]
    fn a_configuration_that_changes_no_answer_scope_waits_for_and_reads_the_others_answer() {
        // A policy edit (and another callout timeout): the issuer's answers
        // mean the same, so the replacing configuration keeps them.
        let a = config("", "");
        let b = config(r#","timeout_ms":1500"#, r#","policy":{"GET /api":"read"}"#);
        let store = Rc::new(MemoryStore::default());
        let mut on_a = worker(&a, &store, 1);
        let mut on_b = worker(&b, &store, 2);
        let (_, resume) = expect_callout(ask(&a, &mut on_a, "opaque-x", NOW));
        assert!(matches!(
            ask(&b, &mut on_b, "opaque-x", NOW),
            Verdict::Wait(Wait { fetch: None, .. })
        ));
        let _ = settle(
            &a,
            &mut on_a,
            resume,
            Ok(&answer(200, &active(NOW + 600))),
            NOW,
        );
        assert!(matches!(
            ask(&b, &mut on_b, "opaque-x", NOW),
            Verdict::Allow(_)
        ));
        assert_eq!(on_b.shared_stats.hits, 1);
        assert_eq!(on_a.shared_stats.fills, 1);
    }

    #[test]
    fn failures_are_503s_that_nothing_remembers() {
        let c = config("", "");
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store, 1);
        let huge = CalloutReply {
            status: Some(200),
            body: Vec::new(),
            oversized: Some(2 << 20),
        };
        for reply in [
            Ok(answer(500, r#"{"active":true}"#)),
            Ok(answer(401, r#"{"error":"invalid_client"}"#)),
            Ok(answer(200, "<html>login</html>")),
            Ok(answer(200, r#"{"scope":"read"}"#)),
            Ok(CalloutReply::default()),
            Ok(huge),
            Err("BadArgument"),
        ] {
            let (_, resume) = expect_callout(ask(&c, &mut s, "opaque-f", NOW));
            let (known, result) = settle(&c, &mut s, resume, reply.as_ref().map_err(|e| *e), NOW);
            assert_eq!(result, IntrospectionResult::Failed);
            let Err(denial @ Denial::IntrospectionUnavailable { .. }) = &known.1 else {
                panic!("{:?}", known.1)
            };
            assert_eq!(denial.status(), 503);
            assert!(!denial.description().contains("pep-secret"));
        }
        // And once the endpoint answers again, the token passes.
        let (_, resume) = expect_callout(ask(&c, &mut s, "opaque-f", NOW));
        let _ = settle(&c, &mut s, resume, Ok(&answer(200, &active(NOW + 60))), NOW);
        assert!(matches!(
            ask(&c, &mut s, "opaque-f", NOW),
            Verdict::Allow(_)
        ));
    }

    #[test]
    fn an_inactive_answer_is_remembered_for_the_negative_ttl_only() {
        let c = config(r#","negative_ttl_seconds":5"#, "");
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store, 1);
        let (_, resume) = expect_callout(ask(&c, &mut s, "revoked", NOW));
        let (known, result) = settle(
            &c,
            &mut s,
            resume,
            Ok(&answer(200, r#"{"active":false}"#)),
            NOW,
        );
        assert_eq!(result, IntrospectionResult::Inactive);
        let inactive = Denial::InvalidToken(TokenProblem::Inactive);
        assert_eq!(known.1, Err(inactive.clone()));
        assert_eq!(inactive.code(), "token_inactive");
        assert_eq!(
            ask(&c, &mut s, "revoked", NOW + 4),
            Verdict::Deny(inactive.clone())
        );
        // Another worker reads it from shared data.
        let mut other = worker(&c, &store, 2);
        assert_eq!(
            ask(&c, &mut other, "revoked", NOW + 4),
            Verdict::Deny(inactive)
        );
        expect_callout(ask(&c, &mut s, "revoked", NOW + 5));
    }

    #[test]
    fn an_active_answer_lives_until_exp_or_the_maximum_then_is_asked_again() {
        let c = config(r#","max_ttl_seconds":30"#, "");
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store, 1);
        let (_, resume) = expect_callout(ask(&c, &mut s, "t", NOW));
        let _ = settle(
            &c,
            &mut s,
            resume,
            Ok(&answer(200, &active(NOW + 3600))),
            NOW,
        );
        assert!(matches!(ask(&c, &mut s, "t", NOW + 29), Verdict::Allow(_)));
        // Revoked meanwhile: the next answer after the TTL says so.
        let (_, resume) = expect_callout(ask(&c, &mut s, "t", NOW + 30));
        let _ = settle(
            &c,
            &mut s,
            resume,
            Ok(&answer(200, r#"{"active":false}"#)),
            NOW + 30,
        );
        assert!(matches!(ask(&c, &mut s, "t", NOW + 31), Verdict::Deny(_)));
        // exp sooner than the maximum: exp less the margin.
        let (_, resume) = expect_callout(ask(&c, &mut s, "short", NOW));
        let _ = settle(&c, &mut s, resume, Ok(&answer(200, &active(NOW + 20))), NOW);
        assert!(matches!(
            ask(&c, &mut s, "short", NOW + 14),
            Verdict::Allow(_)
        ));
        expect_callout(ask(&c, &mut s, "short", NOW + 15));
    }

    #[test]
    fn the_cache_never_outlives_a_fractional_exp_nor_the_jwts_own() {
        let c = config(r#","max_ttl_seconds":86400"#, "");
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store, 1);
        let (_, resume) = expect_callout(ask(&c, &mut s, "frac", NOW));
        let body = format!(r#"{{"active":true,"aud":"api","exp":{}.5}}"#, NOW + 20);
        let _ = settle(&c, &mut s, resume, Ok(&answer(200, &body)), NOW);
        assert!(matches!(
            ask(&c, &mut s, "frac", NOW + 14),
            Verdict::Allow(_)
        ));
        expect_callout(ask(&c, &mut s, "frac", NOW + 15));
        // Another worker reads the shared entry: no longer either.
        let mut other = worker(&c, &store, 2);
        assert!(matches!(
            ask(&c, &mut other, "frac", NOW + 14),
            Verdict::Allow(_)
        ));

        let mut c = config(r#","max_ttl_seconds":86400"#, "");
        if let Some(issuer) = c.issuers.get_mut(0) {
            issuer.mode = Mode::JwtThenIntrospect;
        }
        let mut s = worker(&c, &Rc::new(MemoryStore::default()), 1);
        let v = vectors();
        let token = v.token("good_RS256");
        let (_, resume) = expect_callout(ask(&c, &mut s, token, v.now));
        // An answer without exp: the JWT's exp (1700003600) bounds the cache.
        let _ = settle(
            &c,
            &mut s,
            resume,
            Ok(&answer(200, r#"{"active":true}"#)),
            v.now,
        );
        assert!(matches!(
            ask(&c, &mut s, token, 1_700_003_594),
            Verdict::Allow(_)
        ));
        expect_callout(ask(&c, &mut s, token, 1_700_003_595));
    }

    #[test]
    fn active_answers_are_checked_like_jwt_claims() {
        let c = config("", "");
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store, 1);
        for (body, reason) in [
            (
                r#"{"active":true,"aud":"other","exp":1700009999}"#,
                "audience_mismatch",
            ),
            (
                r#"{"active":true,"aud":"api","exp":1700000000}"#,
                "token_expired",
            ),
            (
                r#"{"active":true,"aud":"api","iss":"https://evil.test"}"#,
                "issuer_unknown",
            ),
            (
                r#"{"active":true,"aud":"api","token_type":"refresh_token"}"#,
                "token_malformed",
            ),
            (
                r#"{"active":true,"aud":"api","client_id":"a\nb"}"#,
                "claim_unusable",
            ),
        ] {
            let token = format!("tok-{reason}");
            let (_, resume) = expect_callout(ask(&c, &mut s, &token, NOW));
            let (known, result) = settle(&c, &mut s, resume, Ok(&answer(200, body)), NOW);
            assert_eq!(result, IntrospectionResult::Inactive, "{body}");
            let Err(denial) = known.1 else {
                panic!("{body}")
            };
            assert_eq!((denial.status(), denial.code()), (401, reason), "{body}");
            // Remembered like an inactive answer.
            assert_eq!(ask(&c, &mut s, &token, NOW + 1), Verdict::Deny(denial));
        }
    }

    #[test]
    fn serve_stale_bridges_an_outage_for_stale_seconds_only() {
        let c = config(
            r#","max_ttl_seconds":10,"failure_mode":"serve_stale","stale_seconds":60"#,
            "",
        );
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store, 1);
        let (_, resume) = expect_callout(ask(&c, &mut s, "t", NOW));
        let _ = settle(
            &c,
            &mut s,
            resume,
            Ok(&answer(200, &active(NOW + 3600))),
            NOW,
        );
        let down = answer(503, "down");
        let (_, resume) = expect_callout(ask(&c, &mut s, "t", NOW + 11));
        let (known, result) = settle(&c, &mut s, resume, Ok(&down), NOW + 11);
        assert_eq!(result, IntrospectionResult::StaleServed);
        assert!(known.1.is_ok());
        // Served for that request only: the next one asks again.
        let (_, resume) = expect_callout(ask(&c, &mut s, "t", NOW + 12));
        let _ = settle(&c, &mut s, resume, Ok(&down), NOW + 12);
        let (_, resume) = expect_callout(ask(&c, &mut s, "t", NOW + 70));
        let (known, result) = settle(&c, &mut s, resume, Ok(&down), NOW + 70);
        assert_eq!(result, IntrospectionResult::Failed);
        assert!(matches!(
            known.1,
            Err(Denial::IntrospectionUnavailable { .. })
        ));
    }

    #[test]
    fn in_introspect_mode_a_jwt_is_prechecked_then_asked_about() {
        let c = config(r#""#, "");
        let mut c = c;
        if let Some(issuer) = c.issuers.get_mut(0) {
            issuer.mode = Mode::Introspect;
        }
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store, 1);
        let v = vectors();
        // Cheap checks first: no callout for a wrong audience or an expired token.
        for name in ["wrong_aud", "expired", "alg_none"] {
            assert!(
                matches!(ask(&c, &mut s, v.token(name), v.now), Verdict::Deny(_)),
                "{name}"
            );
        }
        expect_callout(ask(&c, &mut s, v.token("good_RS256"), v.now));
    }

    #[test]
    fn jwt_then_introspect_verifies_locally_and_still_asks() {
        let mut c = config(r#""#, r#","forward":{"claims":{"sub":"x-jwt-sub"}}"#);
        if let Some(issuer) = c.issuers.get_mut(0) {
            issuer.mode = Mode::JwtThenIntrospect;
        }
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store, 1);
        let v = vectors();
        assert!(matches!(
            ask(&c, &mut s, v.token("bad_signature"), v.now),
            Verdict::Deny(_)
        ));
        let token = v.token("good_RS256");
        let (_, resume) = expect_callout(ask(&c, &mut s, token, v.now));
        let (known, _) = settle(
            &c,
            &mut s,
            resume,
            Ok(&answer(200, r#"{"active":true}"#)),
            v.now,
        );
        let Verdict::Allow(allow) = ask_knowing(&c, &mut s, token, &known, v.now) else {
            panic!()
        };
        // The JWT's own claims are what is forwarded.
        assert_eq!(header(&allow, "x-jwt-sub"), Some("client-1"));
        let revoked = v.token("good_ES256");
        let (_, resume) = expect_callout(ask(&c, &mut s, revoked, v.now));
        let (known, _) = settle(
            &c,
            &mut s,
            resume,
            Ok(&answer(200, r#"{"active":false}"#)),
            v.now,
        );
        assert_eq!(known.1, Err(Denial::InvalidToken(TokenProblem::Inactive)));
    }

    #[test]
    fn an_opaque_token_over_16_kib_is_refused_without_a_callout() {
        let c = config("", "");
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store, 1);
        let Verdict::Deny(denial) = ask(&c, &mut s, &"x".repeat(16 * 1024 + 1), NOW) else {
            panic!()
        };
        assert_eq!((denial.status(), denial.code()), (401, "token_malformed"));
        expect_callout(ask(&c, &mut s, &"x".repeat(16 * 1024), NOW));
    }

    fn ask_from(c: &Config, s: &mut State, token: &str, client: &str, now: u64) -> Verdict {
        let headers = bearer(token);
        let request = get("/api", &headers, Some(client));
        verdict_for(c, s, &request, now)
    }

    fn overloaded(bound: Bound) -> Verdict {
        Verdict::Deny(Denial::Overloaded { bound })
    }

    #[test]
    fn a_flood_of_new_tokens_is_capped_in_flight_and_one_address_leaves_a_quarter() {
        let c = config(r#","budget":{"per_second":100000}"#, "");
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store, 1);
        let share = MAX_INTROSPECTIONS_IN_FLIGHT / 4 * 3;
        for i in 0..share {
            expect_callout(ask_from(&c, &mut s, &format!("junk-{i}"), "10.0.0.1", NOW));
        }
        assert_eq!(
            ask_from(&c, &mut s, "one-more", "10.0.0.1", NOW),
            overloaded(Bound::InFlight)
        );
        for i in share..MAX_INTROSPECTIONS_IN_FLIGHT {
            expect_callout(ask_from(&c, &mut s, &format!("good-{i}"), "10.0.0.2", NOW));
        }
        assert_eq!(ask(&c, &mut s, "no-room", NOW), overloaded(Bound::InFlight));
        // Once their answers are overdue, the worker asks again.
        let later = NOW + 60;
        expect_callout(ask_from(&c, &mut s, "one-more", "10.0.0.1", later));
    }

    #[test]
    fn the_budget_bounds_new_tokens_per_second_and_a_quarter_per_address() {
        let c = config(r#","budget":{"per_second":4,"burst":8}"#, "");
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store, 1);
        for i in 0..2 {
            expect_callout(ask_from(&c, &mut s, &format!("junk-{i}"), "10.0.0.1", NOW));
        }
        assert_eq!(
            ask_from(&c, &mut s, "junk-2", "10.0.0.1", NOW),
            overloaded(Bound::IntrospectionBudget),
            "burst / 4 for one address"
        );
        // A token already asked about costs nothing more: it waits.
        assert!(matches!(
            ask_from(&c, &mut s, "junk-0", "10.0.0.1", NOW),
            Verdict::Wait(Wait { fetch: None, .. })
        ));
        expect_callout(ask_from(&c, &mut s, "legitimate", "10.0.0.2", NOW));
        expect_callout(ask_from(&c, &mut s, "junk-3", "10.0.0.1", NOW + 1));
        assert_eq!(
            ask_from(&c, &mut s, "junk-4", "10.0.0.1", NOW + 1),
            overloaded(Bound::IntrospectionBudget),
            "per_second / 4 a second after"
        );
        let zero = r#"{"issuers":[{"issuer":"https://a.test","audiences":"any","introspection":{"endpoint":"https://a.test/i","upstream":"a","client_id":"p","client_secret":"s","budget":{"per_second":0}}}]}"#;
        let e = Config::from_json(zero.as_bytes(), &|_| None).err().unwrap();
        assert_eq!(e.field, "issuers[0].introspection.budget.per_second");
    }

    #[test]
    fn a_token_of_another_shape_is_refused_without_a_callout() {
        let c = config(
            r#","token_pattern":"at_[A-Za-z0-9]{8}","max_token_length":11"#,
            "",
        );
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store, 1);
        for junk in ["at_1234567", "xx_12345678", "at_12345678x"] {
            let Verdict::Deny(denial) = ask(&c, &mut s, junk, NOW) else {
                panic!("{junk} was not refused")
            };
            assert_eq!(
                (denial.status(), denial.code()),
                (401, "token_malformed"),
                "{junk}"
            );
        }
        expect_callout(ask(&c, &mut s, "at_12345678", NOW));
        let bad = r#"{"issuers":[{"issuer":"https://a.test","audiences":"any","introspection":{"endpoint":"https://a.test/i","upstream":"a","client_id":"p","client_secret":"s","token_pattern":"("}}]}"#;
        let e = Config::from_json(bad.as_bytes(), &|_| None).err().unwrap();
        assert_eq!(e.field, "issuers[0].introspection.token_pattern");
    }

    #[test]
    fn opaque_tokens_go_to_the_issuer_whose_prefix_they_carry() {
        let json = r#"{"issuers":[
            {"issuer":"https://a.test","audiences":"any","introspection":{"endpoint":"https://a.test/i","upstream":"a","client_id":"p","client_secret":"s"}},
            {"issuer":"https://b.test","audiences":"any","introspection":{"endpoint":"https://b.test/i","upstream":"b","client_id":"p","client_secret":"s","token_prefix":"b."}}]}"#;
        let c = Config::from_json(json.as_bytes(), &|_| None).unwrap();
        let store = Rc::new(MemoryStore::default());
        let mut s = worker(&c, &store, 1);
        assert_eq!(
            expect_callout(ask(&c, &mut s, "b.123", NOW)).0.upstream,
            "b"
        );
        assert_eq!(expect_callout(ask(&c, &mut s, "xyz", NOW)).0.upstream, "a");
        let two_defaults = json.replace(r#","token_prefix":"b.""#, "");
        let e = Config::from_json(two_defaults.as_bytes(), &|_| None)
            .err()
            .unwrap();
        assert_eq!(e.field, "issuers[1].introspection.token_prefix");
    }

    #[test]
    fn a_request_that_adopts_another_workers_discovery_document_is_introspected_not_refused() {
        // The race seen through Envoy with two workers: the first worker loaded
        // the discovery document; the second has not ticked yet when an opaque
        // token arrives. It must load the document then and there and ask the
        // discovered endpoint, not answer 401 "no key with kid".
        let json = r#"{"issuers":[{"issuer":"https://issuer.test","audiences":["api"],"discovery":true,
            "upstream":"as","introspection":{"client_id":"pep","client_secret":"pep-secret"}}]}"#;
        let c = Config::from_json(json.as_bytes(), &|_| None).unwrap();
        let store: Rc<MemoryStore> = Rc::default();
        let mut first = worker(&c, &store, 1);
        let mut second = worker(&c, &store, 2);
        assert_eq!(first.keys.due(NOW).len(), 1);
        let doc = r#"{"issuer":"https://issuer.test","jwks_uri":"https://issuer.test/jwks","introspection_endpoint":"https://issuer.test/oauth/introspect"}"#;
        first
            .keys
            .on_reply(0, crate::keys::FetchStep::Discovery, &answer(200, doc), NOW);
        let jwks = String::from_utf8(vectors().jwks).unwrap();
        first
            .keys
            .on_reply(0, crate::keys::FetchStep::Jwks, &answer(200, &jwks), NOW);

        let (callout, _) = expect_callout(ask(&c, &mut second, "opaque-token", NOW));
        assert_eq!(callout.url.path, "/oauth/introspect");
    }

    #[test]
    fn waiting_for_another_workers_answer_costs_no_budget() {
        let c = config(r#","budget":{"per_second":1,"burst":1}"#, "");
        let store = Rc::new(MemoryStore::default());
        let mut first = worker(&c, &store, 1);
        let mut second = worker(&c, &store, 2);
        expect_callout(ask_from(&c, &mut first, "shared", "10.0.0.1", NOW));
        // The second worker polls for the answer, as its glue does every 20 ms.
        for _ in 0..50 {
            assert!(matches!(
                ask_from(&c, &mut second, "shared", "10.0.0.1", NOW),
                Verdict::Wait(Wait { fetch: None, .. })
            ));
        }
        expect_callout(ask_from(&c, &mut second, "its-own", "10.0.0.2", NOW));
    }
}

#[cfg(test)]
mod signed_answer_tests {
    //! RFC 9701: signed introspection answers, checked with the issuer's
    //! keys; every failed check is a 503 and nothing is cached.

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use ct_codecs::{Base64UrlSafeNoPadding, Encoder as _};
    use serde_json::json;

    use super::*;
    use crate::callout::CalloutReply;
    use crate::engine::test_support::{bearer, get};
    use crate::engine::{verdict_for, verdict_knowing, Resumed};
    use crate::jwt::test_vectors::vectors;
    use crate::metrics::testing::FakeMetrics;

    fn config() -> Config {
        let json = format!(
            r#"{{"issuers":[{{"issuer":"https://hs.test","audiences":["api"],"shared_secret":"{}",
                "introspection":{{"endpoint":"https://hs.test/introspect","upstream":"as",
                "client_id":"pep","client_secret":"s","response":"jwt"}}}}]}}"#,
            vectors().hs_secret
        );
        Config::from_json(json.as_bytes(), &|_| None).unwrap()
    }

    fn sign(header: serde_json::Value, claims: serde_json::Value, secret: &[u8]) -> String {
        let enc = |b: &[u8]| Base64UrlSafeNoPadding::encode_to_string(b).unwrap();
        let input = format!(
            "{}.{}",
            enc(header.to_string().as_bytes()),
            enc(claims.to_string().as_bytes())
        );
        let mac = hmac_sha256::HMAC::mac(input.as_bytes(), secret);
        format!("{input}.{}", enc(&mac))
    }

    fn answer(now: u64) -> serde_json::Value {
        json!({"iss": "https://hs.test", "aud": "pep", "iat": now,
               "token_introspection": {"active": true, "sub": "alice", "client_id": "app",
                                       "scope": "read", "aud": "api", "exp": now + 600,
                                       "iss": "https://hs.test"}})
    }

    fn typ() -> serde_json::Value {
        json!({"alg": "HS256", "typ": "token-introspection+jwt"})
    }

    fn ask(c: &Config, s: &mut State, token: &str, known: Option<&Known>) -> Verdict {
        let headers = bearer(token);
        let request = get("/api", &headers, None);
        match known {
            Some(known) => verdict_knowing(c, s, &request, Some(known), vectors().now),
            None => verdict_for(c, s, &request, vectors().now),
        }
    }

    /// The outcome the waiters get for `body` as the endpoint's answer.
    fn settled(c: &Config, s: &mut State, token: &str, body: &str) -> Verdict {
        let Verdict::Wait(Wait {
            fetch: Some(Fetch { callout, resume }),
            ..
        }) = ask(c, s, token, None)
        else {
            panic!("no introspection")
        };
        let accept: Vec<_> = callout
            .headers
            .iter()
            .filter(|(n, _)| n == "accept")
            .collect();
        assert_eq!(
            accept,
            [&(
                "accept".to_string(),
                "application/token-introspection+jwt".to_string()
            )]
        );
        let reply = CalloutReply {
            status: Some(200),
            body: body.as_bytes().to_vec(),
            oversized: None,
        };
        let m = FakeMetrics::default();
        let Resumed::Settled {
            known: Some(known), ..
        } = crate::engine::resume(c, s, &m, resume, Ok(&reply), vectors().now)
        else {
            panic!("not settled")
        };
        ask(c, s, token, Some(&known))
    }

    #[test]
    fn a_signed_answer_is_read_from_token_introspection() {
        let c = config();
        let mut s = State::new(&c);
        let now = vectors().now;
        let secret = vectors().hs_secret.as_bytes().to_vec();
        let body = sign(typ(), answer(now), &secret);
        let Verdict::Allow(allow) = settled(&c, &mut s, "opaque-1", &body) else {
            panic!("not allowed")
        };
        assert_eq!(allow.subject.as_deref(), Some("alice"));
        // Cached as any active answer.
        assert!(matches!(
            ask(&c, &mut s, "opaque-1", None),
            Verdict::Allow(_)
        ));
    }

    #[test]
    fn every_failed_check_is_a_503_and_nothing_is_cached() {
        let now = vectors().now;
        let secret = vectors().hs_secret.as_bytes().to_vec();
        let claims = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut a = answer(now);
            f(&mut a);
            a
        };
        let cases = [
            (
                "plain JSON",
                r#"{"active":true,"sub":"alice","scope":"read","aud":"api"}"#.to_string(),
            ),
            ("unsigned", {
                let t = sign(
                    json!({"alg": "none", "typ": "token-introspection+jwt"}),
                    answer(now),
                    &secret,
                );
                format!("{}.", t.rsplit_once('.').unwrap().0)
            }),
            (
                "another key",
                sign(typ(), answer(now), b"another-secret-another-secret-32"),
            ),
            (
                "typ JWT",
                sign(json!({"alg": "HS256", "typ": "JWT"}), answer(now), &secret),
            ),
            (
                "no typ",
                sign(json!({"alg": "HS256"}), answer(now), &secret),
            ),
            (
                "wrong aud",
                sign(
                    typ(),
                    claims(&|a| a["aud"] = json!("someone-else")),
                    &secret,
                ),
            ),
            (
                "wrong iss",
                sign(
                    typ(),
                    claims(&|a| a["iss"] = json!("https://evil.test")),
                    &secret,
                ),
            ),
            (
                "old iat",
                sign(typ(), claims(&|a| a["iat"] = json!(now - 3600)), &secret),
            ),
            (
                "future iat",
                sign(typ(), claims(&|a| a["iat"] = json!(now + 3600)), &secret),
            ),
            (
                "no iat",
                sign(
                    typ(),
                    claims(&|a| {
                        a.as_object_mut().unwrap().remove("iat");
                    }),
                    &secret,
                ),
            ),
            (
                "no token_introspection",
                sign(
                    typ(),
                    claims(&|a| {
                        a.as_object_mut().unwrap().remove("token_introspection");
                    }),
                    &secret,
                ),
            ),
        ];
        for (what, body) in cases {
            let c = config();
            let mut s = State::new(&c);
            let Verdict::Deny(denial) = settled(&c, &mut s, "opaque-1", &body) else {
                panic!("{what}: let through")
            };
            assert_eq!(
                (denial.status(), denial.code()),
                (503, "introspection_unavailable"),
                "{what}"
            );
            // Not cached: the next request asks again.
            assert!(
                matches!(
                    ask(&c, &mut s, "opaque-1", None),
                    Verdict::Wait(Wait { fetch: Some(_), .. })
                ),
                "{what}"
            );
        }
    }

    #[test]
    fn a_signed_answer_is_never_an_access_token() {
        let c = config();
        let mut s = State::new(&c);
        let now = vectors().now;
        let secret = vectors().hs_secret.as_bytes().to_vec();
        // Even with every claim an access token of the issuer would carry.
        let mut claims = answer(now);
        claims["aud"] = json!("api");
        claims["exp"] = json!(now + 600);
        claims["sub"] = json!("alice");
        claims["scope"] = json!("read");
        let jwt = sign(typ(), claims, &secret);
        let Verdict::Deny(denial) = ask(&c, &mut s, &jwt, None) else {
            panic!("accepted as a token")
        };
        assert_eq!(denial.status(), 401, "{denial:?}");
    }
}
