//! The flight protocol's other half: what a callout's answer leads to
//! ([`resume`]), what the root does on a tick ([`due`]), and how a wait ends
//! ([`fetching_here`], [`timed_out`]).

use std::rc::Rc;

use crate::callout::CalloutReply;
use crate::config::Config;
use crate::exchange::Outcome;
use crate::keys::{Due as KeysDue, FetchProgress};
use crate::metrics::{Counter, ExchangeResult, Gauge, Metrics};
use crate::policy::jsonrpc::BodyProblem;
use crate::response::Denial;
use crate::token_client::Fetched;
use crate::wait::{Note, WaitKey};

use super::{authorize, exchange, fleet, introspect, uma};
use super::{client_name, issuer_name, Due, Fetch, Resume, Resumed, State, Verdict};

/// The one entry point for every callout's outcome: its answer, or why the
/// host would not dispatch it. Failures are decided here, not in the glue.
pub fn resume(
    config: &Config,
    state: &mut State,
    metrics: &dyn Metrics,
    resume: Resume,
    answer: Result<&CalloutReply, &str>,
    now: u64,
) -> Resumed {
    match resume {
        Resume::Keys { issuer, step } => {
            let progress = match answer {
                Ok(reply) => state.keys.on_reply(issuer, step, reply, now),
                Err(why) => state.keys.on_dispatch_error(issuer, step, why, now),
            };
            match progress {
                FetchProgress::Next(step, callout) => Resumed::Next(Fetch {
                    callout: Box::new(callout),
                    resume: Resume::Keys { issuer, step },
                }),
                progress => Resumed::Settled {
                    on: WaitKey::Keys(issuer),
                    known: None,
                    notes: keys_settled(config, metrics, issuer, &progress),
                },
            }
        }
        Resume::Introspect(pending) => {
            let (issuer, known, result) =
                introspect::finish_introspection(config, state, *pending, answer, now);
            metrics.increment(Counter::Introspection { issuer, result }, 1);
            Resumed::Settled {
                on: WaitKey::Introspection {
                    issuer,
                    token: known.0,
                },
                known: Some(Rc::new(known)),
                notes: Vec::new(),
            }
        }
        Resume::ClientToken { client } => {
            let fetched = state.clients.on_reply(client, answer, now);
            let ok = matches!(fetched, Fetched::Token { .. });
            metrics.increment(Counter::ClientToken { client, ok }, 1);
            let note = match fetched {
                Fetched::Token { lifetime } => Note::Info(format!(
                    "got a token for client {}, usable for {lifetime} s",
                    client_name(config, client)
                )),
                Fetched::Failed(why) => Note::Warn(why),
            };
            Resumed::Settled {
                on: WaitKey::ClientToken(client),
                known: None,
                notes: vec![note],
            }
        }
        Resume::Exchange(pending) => {
            let outcome = exchange::finish_exchange(config, state, &pending, answer, now);
            let rule = exchange::rule_name(pending.rule);
            let (result, note) = match outcome {
                Outcome::Issued { lifetime, .. } => (
                    ExchangeResult::Issued,
                    Note::Info(format!(
                        "exchanged a caller token for {rule}, usable for {lifetime} s"
                    )),
                ),
                Outcome::Refused(refusal) => (
                    ExchangeResult::Refused,
                    Note::Info(format!(
                        "the token endpoint refused to exchange a caller token for {rule}: {}",
                        refusal.error()
                    )),
                ),
                Outcome::Failed(why) => (
                    ExchangeResult::Failed,
                    Note::Warn(format!("token exchange for {rule} failed: {why}")),
                ),
            };
            metrics.increment(Counter::Exchange(result), 1);
            Resumed::Settled {
                on: WaitKey::Exchange {
                    rule: pending.rule,
                    token: pending.key,
                },
                known: None,
                notes: vec![note],
            }
        }
        Resume::Deny(pending) => {
            super::fanout::on_reply(config, state, metrics, *pending, answer, now)
        }
        Resume::Fleet(pending) => fleet::on_reply(config, state, metrics, *pending, answer, now),
        Resume::Ticket(pending) => Resumed::Decided(Verdict::Deny(uma::finish_ticket(
            config, state, *pending, answer,
        ))),
        Resume::Pdp(pending) => Resumed::Decided(match answer {
            Ok(reply) => authorize::finish_pdp(config, state, *pending, reply, now),
            Err(why) => Verdict::Deny(Denial::PdpUnavailable {
                cause: format!("the callout could not be dispatched: {why}"),
            }),
        }),
    }
}

/// The log lines and metrics of a key fetch that settled.
fn keys_settled(
    config: &Config,
    metrics: &dyn Metrics,
    issuer: usize,
    progress: &FetchProgress,
) -> Vec<Note> {
    let name = issuer_name(config, issuer);
    let mut notes = Vec::new();
    match progress {
        FetchProgress::Loaded { keys, skipped } => {
            metrics.set(Gauge::KeysLoaded { issuer }, *keys as u64);
            notes.push(Note::Info(format!(
                "loaded {keys} verification keys for {name}"
            )));
            for note in skipped {
                notes.push(Note::Info(format!("skipped a key of {name}: {note}")));
            }
        }
        FetchProgress::NoJwksUri => {
            metrics.set(Gauge::KeysLoaded { issuer }, 0);
            notes.push(Note::Info(no_jwks_uri_note(config, issuer, "")));
        }
        FetchProgress::Failed(why) => notes.push(Note::Warn(format!("key fetch failed: {why}"))),
        FetchProgress::Next(..) => {}
    }
    let ok = matches!(
        progress,
        FetchProgress::Loaded { .. } | FetchProgress::NoJwksUri
    );
    metrics.increment(Counter::KeyRefresh { issuer, ok }, 1);
    notes
}

/// What a discovery document without `jwks_uri` means for the issuer's tokens.
fn no_jwks_uri_note(config: &Config, issuer: usize, fetched: &str) -> String {
    let name = issuer_name(config, issuer);
    let tokens = match config.issuers.get(issuer).map(|i| i.mode) {
        Some(crate::introspection::Mode::Introspect) => "every token of it is introspected",
        _ => "its opaque tokens are introspected (with an `introspection` block), and a JWT of it is answered 503 keys_unavailable until a refresh finds keys",
    };
    format!("the discovery document of {name}{fetched} names no jwks_uri: no verification keys; {tokens}")
}

/// Root only, on each tick: the fetches that are due (first loads, retries,
/// refreshes ahead of expiry, fleet-cache writes and polls, the revocation
/// poll), and what other workers fetched meanwhile. `now_ms`: milliseconds
/// since the epoch.
pub fn due(config: &Config, state: &mut State, metrics: &dyn Metrics, now_ms: u64) -> Vec<Due> {
    let now = now_ms / 1000;
    let mut due = fleet::due(config, state, metrics, now_ms);
    for found in state.keys.due(now) {
        due.push(match found {
            KeysDue::Fetch(issuer, step, callout) => Due::Dispatch(Fetch {
                callout: Box::new(callout),
                resume: Resume::Keys { issuer, step },
            }),
            KeysDue::Adopted(issuer, progress) => {
                let mut notes = Vec::new();
                match progress {
                    FetchProgress::Loaded { keys, .. } => {
                        metrics.set(Gauge::KeysLoaded { issuer }, keys as u64);
                        notes.push(Note::Info(format!(
                            "loaded {keys} verification keys for {} that another worker fetched",
                            issuer_name(config, issuer)
                        )));
                    }
                    FetchProgress::NoJwksUri => {
                        metrics.set(Gauge::KeysLoaded { issuer }, 0);
                        let note = no_jwks_uri_note(config, issuer, " (fetched by another worker)");
                        notes.push(Note::Info(note));
                    }
                    FetchProgress::Next(..) | FetchProgress::Failed(_) => {}
                }
                Due::Wake {
                    on: WaitKey::Keys(issuer),
                    notes,
                }
            }
        });
    }
    if config.revocation.is_some() && state.deny.refresh(state.replay.as_ref(), now) {
        metrics.set(Gauge::DenyEntries, state.deny.len() as u64);
    }
    if let Some(poll) = super::fanout::poll_due(config, state, now_ms) {
        due.push(Due::Dispatch(poll));
    }
    let (tokens, adopted) = state.client_tokens_due(now);
    due.extend(adopted.into_iter().map(|client| Due::Wake {
        on: WaitKey::ClientToken(client),
        notes: Vec::new(),
    }));
    due.extend(tokens.into_iter().map(|(client, callout)| {
        Due::Dispatch(Fetch {
            callout: Box::new(callout),
            resume: Resume::ClientToken { client },
        })
    }));
    due
}

/// Whether this worker is making the fetch `on` names. If not, another
/// worker is, and its outcome shows only in shared data: the glue polls,
/// deciding the parked requests again.
pub fn fetching_here(state: &State, on: &WaitKey, now: u64) -> bool {
    match on {
        WaitKey::Keys(issuer) => state.keys.awaited_until(*issuer, now).is_some(),
        WaitKey::Introspection { token, .. } => state.introspecting.contains_key(token),
        WaitKey::ClientToken(client) => state.clients.awaited_until(*client, now).is_some(),
        // Each request's own: no other worker can bring it.
        WaitKey::Body => true,
        WaitKey::Exchange { token, .. } => state.exchanges.in_flight(token, now),
    }
}

/// The answer for a request whose wait on `on` reached its deadline.
pub fn timed_out(config: &Config, on: &WaitKey) -> Denial {
    match on {
        WaitKey::Keys(issuer) => Denial::KeysUnavailable {
            issuer: issuer_name(config, *issuer),
            cause: "the key fetch did not settle within twice its timeout".into(),
        },
        WaitKey::Introspection { issuer, .. } => Denial::IntrospectionUnavailable {
            issuer: issuer_name(config, *issuer),
            cause: "no introspection answer within the timeout".into(),
        },
        WaitKey::ClientToken(client) => Denial::ClientTokenUnavailable {
            client: client_name(config, *client),
            cause: "the token request did not settle within its timeout".into(),
        },
        WaitKey::Body => Denial::Body(BodyProblem::TooSlow),
        WaitKey::Exchange { rule, .. } => Denial::ExchangeUnavailable {
            rule: exchange::rule_name(*rule),
            cause: "the token exchange did not settle within its timeout".into(),
        },
    }
}
