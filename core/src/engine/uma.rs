//! UMA resources: a request is let through with an RPT whose permissions
//! cover it, else answered 401 with a new permission ticket, asked for with
//! the gateway's protection API token (PAT).

use crate::callout::CalloutReply;
use crate::config::Config;
use crate::extract::find_token;
use crate::policy::PolicyDecision;
use crate::response::{Denial, RequestProblem};
use crate::uma::{granted_scopes, Insufficient, Resource, Uma};
use crate::upstream_oauth::UpstreamOAuth;
use crate::wait::Bound;

use super::authenticate::{authenticate, discovered_endpoint};
use super::{authorize, upstream, Known, Request, Resume, State, Verdict};

/// A request waiting for its UMA permission ticket.
#[derive(Debug, PartialEq)]
pub struct PendingTicket {
    resource_id: String,
    /// Why the request needs a ticket, for the log.
    why: String,
}

/// A request for a UMA-protected resource: let through with an RPT whose
/// permissions cover it, else answered with a new permission ticket.
#[allow(clippy::too_many_arguments)]
pub(super) fn check_uma_access(
    config: &Config,
    state: &mut State,
    request: &Request,
    path: &str,
    upstream: Option<&UpstreamOAuth>,
    uma: &Uma,
    resource: &Resource,
    required: Vec<String>,
    known: Option<&Known>,
    now: u64,
) -> Verdict {
    let ticket = |state: &mut State, scopes: &[String], why: String| {
        request_ticket(
            config,
            state,
            request.client,
            uma,
            resource,
            scopes,
            why,
            now,
        )
    };
    let found = match find_token(&config.token_sources, request.headers, request.path) {
        Ok(Some(found)) => found,
        Ok(None) => return ticket(state, &required, "no RPT".into()),
        Err(e) => return Verdict::Deny(Denial::InvalidRequest(RequestProblem::Token(e))),
    };
    let grant = match authenticate(config, state, &found.token, request.client, known, now) {
        Ok(grant) => grant,
        // UMA's answer to an unusable RPT is a new ticket, not a Bearer error.
        Err(Verdict::Deny(denial @ Denial::InvalidToken(_))) => {
            let why = format!("the RPT is not usable: {}", denial.description());
            return ticket(state, &required, why);
        }
        Err(verdict) => return verdict,
    };
    if grant.issuer != uma.issuer {
        let why = "the token is not an RPT of the UMA authorization server".to_string();
        return ticket(state, &required, why);
    }
    let consumer = match authorize::consumer_for(config, &grant) {
        Ok(consumer) => consumer,
        Err(denial) => return Verdict::Deny(denial),
    };
    let scopes = granted_scopes(&grant.permissions, &resource.id, now);
    match resource.decide(request.method, path, &scopes) {
        PolicyDecision::Allow { .. } => Verdict::Allow(upstream::allow(
            config, request, upstream, &found, &grant, consumer,
        )),
        PolicyDecision::InsufficientScope { rule, required } => {
            if uma.on_insufficient == Insufficient::Forbidden {
                return Verdict::Deny(Denial::InsufficientScope {
                    rule,
                    scopes: required,
                });
            }
            let why = format!("the RPT has no permission for rule \"{rule}\"");
            ticket(state, &required, why)
        }
        // Refused at load for UMA resources (`uses_request_facts`).
        PolicyDecision::NoRule
        | PolicyDecision::StepUp { .. }
        | PolicyDecision::NeedBody
        | PolicyDecision::BadBody(_) => {
            let why = "the RPT has no permission for this request".to_string();
            ticket(state, &required, why)
        }
    }
}

/// The permission ticket request, made with the PAT once there is one.
#[allow(clippy::too_many_arguments)]
fn request_ticket(
    config: &Config,
    state: &mut State,
    client: Option<&str>,
    uma: &Uma,
    resource: &Resource,
    scopes: &[String],
    why: String,
    now: u64,
) -> Verdict {
    let pat = match upstream::client_token(config, state, uma.client, now) {
        Ok(pat) => pat,
        Err(Verdict::Deny(Denial::ClientTokenUnavailable { cause, .. })) => {
            return Verdict::Deny(Denial::UmaUnavailable {
                cause: format!("no protection API token: {cause}"),
            })
        }
        Err(wait) => return wait,
    };
    let endpoint = match &uma.permission_endpoint {
        Some(endpoint) => endpoint.clone(),
        None => match discovered_endpoint(config, state, uma.issuer, now, |e| &e.permission) {
            Ok(Some(endpoint)) => endpoint,
            Ok(None) => {
                return Verdict::Deny(Denial::UmaUnavailable {
                    cause: "the discovery document has no usable permission_endpoint".into(),
                })
            }
            Err(wait) => return wait,
        },
    };
    if !state.permission_budget.spend(client, now) {
        return Verdict::Deny(Denial::Overloaded {
            bound: Bound::PermissionBudget,
        });
    }
    Verdict::Call {
        callout: Box::new(uma.ticket_callout(&endpoint, &pat, &resource.id, scopes)),
        resume: Resume::Ticket(Box::new(PendingTicket {
            resource_id: resource.id.clone(),
            why,
        })),
    }
}

/// The permission endpoint's answer: the ticket for the 401, or a 503. A
/// PAT the endpoint refuses is dropped, so the next request gets a new one.
pub(super) fn finish_ticket(
    config: &Config,
    state: &mut State,
    pending: PendingTicket,
    answer: Result<&CalloutReply, &str>,
) -> Denial {
    let Some(uma) = &config.uma else {
        return Denial::UmaUnavailable {
            cause: "UMA is not configured".into(),
        };
    };
    let reply = match answer {
        Ok(reply) => reply,
        Err(why) => {
            return Denial::UmaUnavailable {
                cause: format!("the permission request could not be dispatched: {why}"),
            }
        }
    };
    match crate::uma::ticket(reply) {
        Ok(ticket) => Denial::UmaTicket {
            as_uri: uma.as_uri.clone(),
            ticket,
            resource_id: pending.resource_id,
            why: pending.why,
        },
        Err(cause) => {
            if reply.status == Some(401) {
                state.clients.invalidate(uma.client);
            }
            Denial::UmaUnavailable { cause }
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::engine::test_support::*;
    use crate::engine::{Fetch, Resumed, Wait};
    use crate::jwt::test_vectors::vectors;
    use crate::keys::{FetchStep, KeyWait};
    use crate::metrics::testing::FakeMetrics;

    /// A worker that has not fetched anything yet adopts the discovery
    /// document and keys another worker published: its first UMA request
    /// without an RPT goes on to the PAT and the ticket, whether the PAT's
    /// token endpoint is discovered or fixed (before the fix, a 401 "unknown
    /// kid", seen on the demo's first request after start).
    #[test]
    fn a_worker_adopting_the_uma_discovery_goes_on_to_the_pat_and_the_ticket() {
        for pat_endpoint in [
            r#""issuer":"https://issuer.test""#,
            r#""token_endpoint":"https://issuer.test/token","upstream":"as""#,
        ] {
            let json = format!(
                r#"{{"issuers":[{{"issuer":"https://issuer.test","audiences":["api"],
                    "discovery":"uma2-configuration","upstream":"as"}}],
                  "clients":{{"pat":{{{pat_endpoint},"client_id":"rs","client_secret":"rs-secret"}}}},
                  "uma":{{"issuer":"https://issuer.test","client":"pat",
                    "resources":[{{"resource_id":"photos","policy":{{"GET /photos/??":"view"}}}}]}}}}"#
            );
            let c = Config::from_json(json.as_bytes(), &|_| None).unwrap();
            let now = vectors().now;
            let store = std::rc::Rc::new(crate::services::testing::MemoryStore::default());
            let worker = |id| {
                let mut s = State::new(&c);
                s.share_through(store.clone(), id);
                s
            };
            // The first worker loads the discovery document and the keys.
            let mut first = worker(1);
            assert!(matches!(
                first.keys.load_for_request(0, now),
                KeyWait::Fetch { .. }
            ));
            let discovery = reply(
                200,
                r#"{"issuer":"https://issuer.test","jwks_uri":"https://issuer.test/keys",
                    "token_endpoint":"https://issuer.test/token","permission_endpoint":"https://issuer.test/perm"}"#,
            );
            let _ = first
                .keys
                .on_reply(0, FetchStep::Discovery, &discovery, now);
            let jwks = String::from_utf8(vectors().jwks).unwrap();
            assert!(matches!(
                first
                    .keys
                    .on_reply(0, FetchStep::Jwks, &reply(200, &jwks), now),
                crate::keys::FetchProgress::Loaded { .. }
            ));

            let mut second = worker(2);
            assert_eq!(ticket_after_the_pat(&c, &mut second, now), "/perm");
        }
    }

    /// A UMA server that issues opaque RPTs publishes no `jwks_uri` (RFC
    /// 8414 makes it optional): its `uma2-configuration` loads all the same,
    /// a request without an RPT goes on to the PAT and its ticket, an opaque
    /// RPT is introspected, and a JWT of the issuer, which no key can
    /// verify, is a 503 `keys_unavailable` naming the document, not a fetch
    /// retried every second (before the fix, every request was a 503 "OIDC
    /// discovery …: missing field `jwks_uri`").
    #[test]
    fn a_uma_discovery_document_without_jwks_uri_serves_tickets_and_introspection() {
        let c = Config::from_json(
            br#"{"issuers":[{"issuer":"https://issuer.test","audiences":"any",
                    "discovery":"uma2-configuration","upstream":"as",
                    "introspection":{"client_id":"pep","client_secret":"pep-secret"}}],
                  "clients":{"pat":{"issuer":"https://issuer.test","client_id":"rs","client_secret":"rs-secret"}},
                  "uma":{"issuer":"https://issuer.test","client":"pat",
                    "resources":[{"resource_id":"photos","policy":{"GET /photos/??":"view"}}]}}"#,
            &|_| None,
        )
        .unwrap();
        let now = vectors().now;
        let mut s = State::new(&c);
        let Verdict::Wait(Wait {
            fetch:
                Some(Fetch {
                    callout,
                    resume:
                        resume @ Resume::Keys {
                            step: FetchStep::Discovery,
                            ..
                        },
                }),
            ..
        }) = run(&c, &mut s, &[], "/photos/1")
        else {
            panic!("the first request fetches the discovery document")
        };
        assert_eq!(callout.url.path, "/.well-known/uma2-configuration");
        let metrics = FakeMetrics::default();
        let document = reply(
            200,
            r#"{"issuer":"https://issuer.test","token_endpoint":"https://issuer.test/token",
                "introspection_endpoint":"https://issuer.test/introspect",
                "permission_endpoint":"https://issuer.test/perm"}"#,
        );
        let Resumed::Settled { notes, .. } =
            crate::engine::resume(&c, &mut s, &metrics, resume, Ok(&document), now)
        else {
            panic!("a document without jwks_uri settles the fetch")
        };
        assert!(
            matches!(notes.as_slice(), [crate::wait::Note::Info(n)] if n.contains("names no jwks_uri")),
            "{notes:?}"
        );
        assert!(s.keys.keys(0).is_none() && s.keys.settled(0));
        // No RPT: the PAT from the discovered token endpoint, then the ticket.
        assert_eq!(ticket_after_the_pat(&c, &mut s, now), "/perm");
        // An opaque RPT goes to the discovered introspection endpoint.
        let Verdict::Wait(Wait {
            fetch:
                Some(Fetch {
                    callout,
                    resume: Resume::Introspect(_),
                }),
            ..
        }) = run(&c, &mut s, &bearer("opaque-rpt-0123456789"), "/photos/1")
        else {
            panic!("an opaque RPT is not introspected")
        };
        assert_eq!(callout.url.path, "/introspect");
        // A JWT of the issuer: 503 naming the document, and no fetch.
        let jwt = bearer(vectors().token("good_RS256"));
        for _ in 0..2 {
            let Verdict::Deny(Denial::KeysUnavailable { cause, .. }) =
                run(&c, &mut s, &jwt, "/elsewhere")
            else {
                panic!("a JWT of a server without keys")
            };
            assert!(
                cause.starts_with(
                    "the UMA discovery document of https://issuer.test names no jwks_uri"
                ) && !cause.contains("OIDC"),
                "{cause}"
            );
        }
        assert!(s.keys.due(now + 1).is_empty(), "next fetch at the refresh");
        assert_eq!(s.keys.due(now + 300).len(), 1);
    }

    /// A token-less request asks for the PAT (answered here), then for its
    /// ticket: the ticket request's URL path.
    fn ticket_after_the_pat(c: &Config, s: &mut State, now: u64) -> String {
        let Verdict::Wait(Wait {
            fetch:
                Some(Fetch {
                    callout,
                    resume: resume @ Resume::ClientToken { client: 0 },
                }),
            ..
        }) = run(c, s, &[], "/photos/1")
        else {
            panic!("no PAT request")
        };
        assert_eq!(callout.url.path, "/token");
        let pat = reply(
            200,
            r#"{"access_token":"pat-1","token_type":"Bearer","expires_in":300}"#,
        );
        let _ = crate::engine::resume(c, s, &FakeMetrics::default(), resume, Ok(&pat), now);
        let Verdict::Call {
            callout,
            resume: Resume::Ticket(_),
        } = run(c, s, &[], "/photos/1")
        else {
            panic!("no ticket request with the PAT")
        };
        callout.url.path.clone()
    }

    /// UMA with every endpoint fixed (no discovery): opaque RPTs introspected
    /// at `/introspect`, the PAT from `/token`, tickets from `/perm`.
    fn fixed_uma() -> Config {
        let json = r#"{"issuers":[{"issuer":"https://issuer.test","audiences":"any","upstream":"as",
                "introspection":{"endpoint":"https://issuer.test/introspect","client_id":"pep","client_secret":"s"}}],
              "clients":{"pat":{"token_endpoint":"https://issuer.test/token","upstream":"as","client_id":"rs","client_secret":"s"}},
              "uma":{"issuer":"https://issuer.test","client":"pat","permission_endpoint":"https://issuer.test/perm","upstream":"as",
                "resources":[{"resource_id":"photos","policy":{"GET /photos/??":"view"}}]}}"#;
        Config::from_json(json.as_bytes(), &|_| None).unwrap()
    }

    fn at(c: &Config, s: &mut State, token: Option<&str>, now: u64) -> Verdict {
        let headers = token.map(bearer).unwrap_or_default();
        let request = crate::engine::Request {
            method: "GET",
            path: "/photos/1",
            headers: &headers,
            client: None,
            peer_certificate: None,
            routing: Default::default(),
            body: None,
        };
        crate::engine::verdict_for(c, s, &request, now)
    }

    /// Feeds `body` to the shared fetch `v` waits for; what it settled.
    fn settle(c: &Config, s: &mut State, v: Verdict, status: u16, body: &str, now: u64) -> Resumed {
        let Verdict::Wait(Wait {
            fetch: Some(fetch), ..
        }) = v
        else {
            panic!("no fetch: {v:?}")
        };
        let answer = reply(status, body);
        crate::engine::resume(
            c,
            s,
            &FakeMetrics::default(),
            fetch.resume,
            Ok(&answer),
            now,
        )
    }

    fn pat(c: &Config, s: &mut State, expires_in: u64, now: u64) {
        let v = at(c, s, None, now);
        let body = format!(
            r#"{{"access_token":"pat-1","token_type":"Bearer","expires_in":{expires_in}}}"#
        );
        settle(c, s, v, 200, &body, now);
    }

    /// Was tests/test_uma.py's 7.5 s sleep: an RPT used until it expires,
    /// then asked about again, and the request answered with a new ticket.
    #[test]
    fn an_expired_rpt_is_asked_about_again_and_gets_a_new_ticket() {
        let c = fixed_uma();
        let mut s = State::new(&c);
        let now = vectors().now;
        pat(&c, &mut s, 300, now);
        let rpt = format!(
            r#"{{"active":true,"exp":{},"permissions":[{{"resource_id":"photos","resource_scopes":["view"]}}]}}"#,
            now + 7
        );
        let v = at(&c, &mut s, Some("rpt-1"), now);
        let Resumed::Settled {
            known: Some(known), ..
        } = settle(&c, &mut s, v, 200, &rpt, now)
        else {
            panic!()
        };
        assert!(matches!(
            crate::engine::verdict_knowing(
                &c,
                &mut s,
                &crate::engine::Request {
                    method: "GET",
                    path: "/photos/1",
                    headers: &bearer("rpt-1"),
                    client: None,
                    peer_certificate: None,
                    routing: Default::default(),
                    body: None,
                },
                Some(&known),
                now
            ),
            Verdict::Allow(_)
        ));
        // Cached until 5 s before its exp (introspection's margin).
        assert!(
            matches!(at(&c, &mut s, Some("rpt-1"), now + 1), Verdict::Allow(_)),
            "cached"
        );
        // Past its exp: not from the cache; the server now says inactive.
        let v = at(&c, &mut s, Some("rpt-1"), now + 8);
        let Resumed::Settled {
            known: Some(known), ..
        } = settle(&c, &mut s, v, 200, r#"{"active":false}"#, now + 8)
        else {
            panic!("the expired RPT was not asked about again")
        };
        let again = crate::engine::verdict_knowing(
            &c,
            &mut s,
            &crate::engine::Request {
                method: "GET",
                path: "/photos/1",
                headers: &bearer("rpt-1"),
                client: None,
                peer_certificate: None,
                routing: Default::default(),
                body: None,
            },
            Some(&known),
            now + 8,
        );
        let Verdict::Call {
            resume: Resume::Ticket(_),
            callout,
        } = again
        else {
            panic!("no ticket for the expired RPT: {again:?}")
        };
        assert_eq!(callout.url.path, "/perm");
    }

    /// Was tests/test_uma.py's other 7.5 s sleep: a PAT past its margin that
    /// cannot be renewed is a 503, never a ticket request without a PAT.
    #[test]
    fn a_pat_that_expired_and_cannot_be_renewed_is_a_503() {
        let c = fixed_uma();
        let mut s = State::new(&c);
        let now = vectors().now;
        pat(&c, &mut s, 12, now);
        assert!(matches!(
            at(&c, &mut s, None, now + 1),
            Verdict::Call { .. }
        ));
        // Usable until 5 s before it expires; the renewal fails.
        let v = at(&c, &mut s, None, now + 8);
        settle(&c, &mut s, v, 500, "down", now + 8);
        let Verdict::Deny(denial) = at(&c, &mut s, None, now + 8) else {
            panic!("a request without a usable PAT was not refused")
        };
        assert_eq!((denial.status(), denial.code()), (503, "uma_unavailable"));
    }
}
