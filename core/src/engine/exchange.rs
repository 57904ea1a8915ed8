//! The token an upstream OAuth rule with `exchange` sends: the caller's
//! verified token exchanged at the rule's client's token endpoint (RFC 8693,
//! [`crate::exchange`]), cached per worker per (caller token, rule); one
//! exchange per caller token in flight, the others park on it.

use std::rc::Rc;

use crate::cache::Digest;
use crate::callout::CalloutReply;
use crate::config::Config;
use crate::exchange::{interpret, Exchange, Exchanges, Lookup, Outcome, Refusal};
use crate::response::Denial;
use crate::token_client::TokenEndpoint;
use crate::upstream_oauth::UpstreamOAuth;
use crate::wait::WaitKey;

use super::{authenticate, upstream, Fetch, Resume, State, Verdict, Wait};

/// An exchange in flight, which every request with the same caller token
/// for the same rule waits for.
#[derive(Debug, PartialEq)]
pub struct PendingExchange {
    pub rule: usize,
    pub key: Digest,
}

/// One rule, as the engine names it in denials and logs.
pub(super) fn rule_name(rule: usize) -> String {
    format!("upstream_oauth[{rule}]")
}

/// Which rule of the configuration `rule` is.
pub(super) fn rule_index(config: &Config, rule: &UpstreamOAuth) -> usize {
    config
        .upstream_oauth
        .iter()
        .position(|r| std::ptr::eq(r, rule))
        .unwrap_or(usize::MAX)
}

/// The token exchanged for `subject` (the caller's verified token) under
/// rule `index`, or what the request must do: wait for the exchange (made
/// by this request, or by another with the same token), or its denial.
/// `client` is the caller's address, whose share of the budget is spent.
#[allow(clippy::too_many_arguments)]
pub(super) fn exchanged_token(
    config: &Config,
    state: &mut State,
    index: usize,
    rule: &UpstreamOAuth,
    exchange: &Exchange,
    subject: &str,
    client: Option<&str>,
    now: u64,
) -> Result<Rc<str>, Verdict> {
    let unavailable = |cause: String| {
        Verdict::Deny(Denial::ExchangeUnavailable {
            rule: rule_name(index),
            cause,
        })
    };
    let key = Exchanges::key(index, subject);
    let wait = |until: u64, fetch: Option<Fetch>| {
        Verdict::Wait(Wait {
            on: WaitKey::Exchange {
                rule: index,
                token: key,
            },
            until,
            fetch,
        })
    };
    match state.exchanges.lookup(index, &key, now) {
        Lookup::Ready(token) => return Ok(token),
        Lookup::Refused(refusal) => return Err(Verdict::Deny(refused(index, refusal))),
        Lookup::Failed(why) => return Err(unavailable(why.to_string())),
        Lookup::Wait { until } => return Err(wait(until, None)),
        Lookup::Unknown => {}
    }
    let Some(token_client) = config.clients.get(rule.client) else {
        return Err(unavailable("the rule's client is not configured".into()));
    };
    // The gateway's own token first (it may need a fetch of its own).
    let actor = match exchange.actor {
        true => Some(upstream::client_token(config, state, rule.client, now)?),
        false => None,
    };
    let endpoint = match &token_client.endpoint {
        TokenEndpoint::Fixed(url) => url.clone(),
        TokenEndpoint::Discovered(issuer) => {
            match authenticate::discovered_endpoint(config, state, *issuer, now, |e| &e.token)? {
                Some(url) => url,
                None => {
                    return Err(unavailable(
                        "the issuer's discovery document has no usable token_endpoint".into(),
                    ))
                }
            }
        }
    };
    // Built before anything is claimed or spent: one that cannot be made
    // (no random bytes for a client assertion) costs nothing.
    let fields = exchange.fields(subject, actor.as_deref());
    let callout = token_client
        .post_form(&endpoint, &fields, now, state.random.as_ref())
        .map_err(|e| unavailable(e.to_string()))?;
    let until = token_client.in_flight_deadline(now);
    if let Err(bound) = state.exchanges.start(index, key, client, until, now) {
        return Err(Verdict::Deny(Denial::Overloaded { bound }));
    }
    Err(wait(
        until,
        Some(Fetch {
            callout: Box::new(callout),
            resume: Resume::Exchange(Box::new(PendingExchange { rule: index, key })),
        }),
    ))
}

fn refused(index: usize, refusal: Refusal) -> Denial {
    match refusal {
        Refusal::SubjectToken(error) => Denial::ExchangeRefused {
            rule: rule_name(index),
            error,
        },
        Refusal::Target(error) => Denial::ExchangeForbidden {
            rule: rule_name(index),
            error,
        },
    }
}

/// The token endpoint's answer (or why there is none), kept for the
/// requests that waited for it, which are decided again.
pub(super) fn finish_exchange(
    config: &Config,
    state: &mut State,
    pending: &PendingExchange,
    answer: Result<&CalloutReply, &str>,
    now: u64,
) -> Outcome {
    let default_expires_in = config
        .upstream_oauth
        .get(pending.rule)
        .and_then(|r| config.clients.get(r.client))
        .map_or(0, |c| c.default_expires_in());
    let outcome = match answer {
        Ok(reply) => interpret(reply, default_expires_in),
        Err(why) => Outcome::Failed(format!("the exchange could not be dispatched: {why}")),
    };
    state
        .exchanges
        .settle(pending.rule, pending.key, &outcome, now);
    outcome
}
