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

#[cfg(test)]
mod tests {
    //! The engine with an `exchange` rule: who asks, who waits, what goes
    //! upstream, and what each answer leads to.

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::engine::test_support::*;
    use crate::engine::{resume, verdict_for, Allow, Request, Resumed};
    use crate::extract::tests::h;
    use crate::jwt::test_vectors::vectors;
    use crate::metrics::testing::FakeMetrics;
    use crate::metrics::{Counter, ExchangeResult};
    use crate::wait::Bound;

    const GOOD: &str = r#"{"access_token":"exchanged-1","token_type":"Bearer","expires_in":60,"issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#;

    fn config(exchange: &str) -> Config {
        inline_config(&format!(
            r#","clients":{{"backend":{{"token_endpoint":"https://issuer.test/token","upstream":"as","client_id":"gw","client_secret":"s"}}}},"upstream_oauth":[{{"client":"backend","authorities":["backend.internal"],"exchange":{exchange}}}]"#
        ))
    }

    fn ask(c: &Config, s: &mut State, token: &str, client: &str, now: u64) -> Verdict {
        let mut headers = bearer(token);
        headers.extend(h(&[(":authority", "backend.internal")]));
        let request = Request {
            method: "GET",
            path: "/x",
            headers: &headers,
            client: Some(client),
            peer_certificate: None,
            routing: Default::default(),
            body: None,
        };
        verdict_for(c, s, &request, now)
    }

    /// The exchange a verdict starts: its form body and what it resumes.
    fn started(v: Verdict) -> (String, Resume) {
        match v {
            Verdict::Wait(Wait {
                on: WaitKey::Exchange { rule: 0, .. },
                fetch: Some(Fetch { callout, resume }),
                ..
            }) => (String::from_utf8(callout.body.unwrap()).unwrap(), resume),
            other => panic!("no exchange started: {other:?}"),
        }
    }

    fn answer(c: &Config, s: &mut State, m: &FakeMetrics, r: Resume, status: u16, body: &str) {
        let now = vectors().now;
        let Resumed::Settled { on, known, .. } = resume(c, s, m, r, Ok(&reply(status, body)), now)
        else {
            panic!("an exchange settles its waiters")
        };
        assert!(matches!(on, WaitKey::Exchange { rule: 0, .. }) && known.is_none());
    }

    #[test]
    fn the_caller_token_is_exchanged_once_and_the_exchanged_one_goes_upstream() {
        let c = config(r#"{"audience":"https://backend","scopes":["read"]}"#);
        let mut s = State::new(&c);
        let m = FakeMetrics::default();
        let now = vectors().now;
        let token = vectors().token("good_RS256").to_string();
        let (body, r) = started(ask(&c, &mut s, &token, "10.0.0.1", now));
        assert!(body.starts_with("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token="), "{body}");
        assert!(body.contains(
            "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token"
        ));
        assert!(
            body.ends_with("&audience=https%3A%2F%2Fbackend&scope=read"),
            "{body}"
        );
        assert!(!body.contains("actor_token"));
        // Another request with the same token waits for the same exchange.
        assert!(matches!(
            ask(&c, &mut s, &token, "10.0.0.2", now),
            Verdict::Wait(Wait {
                on: WaitKey::Exchange { .. },
                fetch: None,
                ..
            })
        ));
        answer(&c, &mut s, &m, r, 200, GOOD);
        assert_eq!(m.counter(Counter::Exchange(ExchangeResult::Issued)), 1);
        let Verdict::Allow(Allow {
            set_headers,
            remove_headers,
            subject_token,
            ..
        }) = ask(&c, &mut s, &token, "10.0.0.1", now)
        else {
            panic!("not allowed")
        };
        assert!(set_headers.contains(&("authorization".into(), "Bearer exchanged-1".into())));
        assert!(remove_headers.contains(&"authorization".to_string()));
        assert!(
            subject_token.is_none(),
            "the caller's token never leaves the core"
        );
        // Until its expiry less the margin; then exchanged again.
        assert!(matches!(
            ask(&c, &mut s, &token, "10.0.0.1", now + 54),
            Verdict::Allow(_)
        ));
        started(ask(&c, &mut s, &token, "10.0.0.1", now + 55));
        // Another caller token is another exchange.
        started(ask(
            &c,
            &mut s,
            vectors().token("good_ES256"),
            "10.0.0.1",
            now,
        ));
    }

    #[test]
    fn refusals_are_401_or_403_and_failures_503_never_the_callers_token() {
        let token = vectors().token("good_RS256").to_string();
        for (status, body, want, reason) in [
            (400, r#"{"error":"invalid_grant"}"#, 401, "exchange_refused"),
            (
                400,
                r#"{"error":"invalid_request"}"#,
                401,
                "exchange_refused",
            ),
            (
                400,
                r#"{"error":"invalid_target"}"#,
                403,
                "exchange_forbidden",
            ),
            (
                400,
                r#"{"error":"unauthorized_client"}"#,
                503,
                "exchange_unavailable",
            ),
            (500, "oops", 503, "exchange_unavailable"),
            (200, "<html>", 503, "exchange_unavailable"),
            (
                200,
                r#"{"access_token":"x","token_type":"Bearer","issued_token_type":"urn:ietf:params:oauth:token-type:jwt"}"#,
                503,
                "exchange_unavailable",
            ),
        ] {
            let c = config(r#"{"audience":"https://backend"}"#);
            let mut s = State::new(&c);
            let m = FakeMetrics::default();
            let now = vectors().now;
            let (_, r) = started(ask(&c, &mut s, &token, "10.0.0.1", now));
            answer(&c, &mut s, &m, r, status, body);
            let Verdict::Deny(denial) = ask(&c, &mut s, &token, "10.0.0.1", now) else {
                panic!("{body}: let through")
            };
            assert_eq!((denial.status(), denial.code()), (want, reason), "{body}");
            let counted = if want == 503 {
                ExchangeResult::Failed
            } else {
                ExchangeResult::Refused
            };
            assert_eq!(m.counter(Counter::Exchange(counted)), 1, "{body}");
        }
    }

    #[test]
    fn the_actor_token_is_the_gateways_own_fetched_first() {
        let c = config(r#"{"audience":"https://backend","actor":true}"#);
        let mut s = State::new(&c);
        let m = FakeMetrics::default();
        let now = vectors().now;
        let token = vectors().token("good_RS256").to_string();
        let Verdict::Wait(Wait {
            on: WaitKey::ClientToken(0),
            fetch: Some(fetch),
            ..
        }) = ask(&c, &mut s, &token, "10.0.0.1", now)
        else {
            panic!("the client token is fetched first")
        };
        resume(
            &c,
            &mut s,
            &m,
            fetch.resume,
            Ok(&reply(
                200,
                r#"{"access_token":"gw-own","token_type":"Bearer","expires_in":600}"#,
            )),
            now,
        );
        let (body, _) = started(ask(&c, &mut s, &token, "10.0.0.1", now));
        assert!(body.contains("&actor_token=gw-own&actor_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token"), "{body}");
    }

    #[test]
    fn a_timed_out_exchange_is_503_and_the_budget_bounds_new_caller_tokens() {
        let c = config(r#"{"audience":"https://backend","budget":{"per_second":4,"burst":4}}"#);
        let mut s = State::new(&c);
        let now = vectors().now;
        let denial = crate::engine::timed_out(
            &c,
            &WaitKey::Exchange {
                rule: 0,
                token: [0; 32],
            },
        );
        assert_eq!(
            (denial.status(), denial.code()),
            (503, "exchange_unavailable")
        );
        // One address's quarter of the burst: one exchange, then 503 overloaded.
        let tokens = ["good_RS256", "good_ES256", "good_EdDSA"];
        started(ask(&c, &mut s, vectors().token(tokens[0]), "10.0.0.1", now));
        let Verdict::Deny(Denial::Overloaded { bound }) =
            ask(&c, &mut s, vectors().token(tokens[1]), "10.0.0.1", now)
        else {
            panic!("over budget")
        };
        assert_eq!(bound, Bound::ExchangeBudget);
        started(ask(&c, &mut s, vectors().token(tokens[2]), "10.0.0.2", now));
    }
}
