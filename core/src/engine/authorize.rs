//! What a caller may do once its token is known: the consumer its client
//! maps to, the anonymous consumer without a usable token, the policy's
//! scopes, then (last, as the only callout) the PDP.

use std::rc::Rc;

use crate::cache::Digest;
use crate::callout::CalloutReply;
use crate::config::Config;
use crate::consumer::{Consumer, ConsumerLookup};
use crate::extract::{find_token, FoundToken};
use crate::grant::Grant;
use crate::jwt::TokenError;
use crate::pdp::PdpQuery;
use crate::policy::jsonrpc::{read_calls, BodyProblem};
use crate::policy::{PolicyDecision, Presented};
use crate::response::{Denial, RequestProblem, TokenProblem};
use crate::upstream_oauth::{ClientCredential, UpstreamOAuth};

use super::authenticate::authenticate;
use super::bind::{self, Scheme};
use super::{uma, upstream, Allow, Known, ReadBody, Request, Resume, State, Verdict, Wait};
use crate::wait::WaitKey;

/// A request waiting for the PDP: what to do on permit and on deny.
#[derive(Debug, PartialEq)]
pub struct PendingPdp {
    pub(super) allow: Allow,
    denial: Denial,
    cache_key: Digest,
}

/// Whether the request may pass, and as whom: public paths first, then UMA
/// resources, the token, the consumer, the policy and, last, the PDP. The
/// gateway's token for upstream OAuth is added afterwards; `upstream` is the
/// request's upstream OAuth rule, if any, which decides what becomes of the
/// caller's credential.
pub(super) fn check_access(
    config: &Config,
    state: &mut State,
    request: &Request,
    path: &str,
    upstream: Option<&UpstreamOAuth>,
    known: Option<&Known>,
    now: u64,
) -> Verdict {
    if config.public_paths.matches(path) {
        return Verdict::Allow(Allow {
            remove_headers: upstream::forged(config, request.headers),
            anonymous: true,
            ..Allow::default()
        });
    }
    if let Some(uma) = &config.uma {
        if let Some((resource, required)) = uma.resource_for(request.method, path) {
            return uma::check_uma_access(
                config, state, request, path, upstream, uma, resource, required, known, now,
            );
        }
    }
    let found =
        find_token(&config.token_sources, request.headers, request.path).and_then(|found| {
            match bind::dpop_token(config, request, found.as_ref())? {
                Some(dpop) => Ok(Some((dpop, Scheme::Dpop))),
                None => Ok(found.map(|found| (found, Scheme::Bearer))),
            }
        });
    let (found, scheme) = match found {
        Ok(Some(found)) => found,
        Ok(None) => return anonymous_or(config, request, path, upstream, None, Denial::NoToken),
        Err(e) => return Verdict::Deny(Denial::InvalidRequest(RequestProblem::Token(e))),
    };
    let grant = authenticate(config, state, &found.token, request.client, known, now)
        .and_then(|grant| for_this_resource(config, path, grant));
    let grant = match grant {
        Ok(grant) => grant,
        Err(Verdict::Deny(denial @ Denial::InvalidToken(_))) => {
            let on_invalid = config
                .consumers
                .anonymous()
                .is_some_and(|a| a.on_invalid_token);
            return if on_invalid {
                anonymous_or(config, request, path, upstream, Some(&found), denial)
            } else {
                Verdict::Deny(denial)
            };
        }
        Err(verdict) => return verdict,
    };
    let jkt = match bind::check_binding(config, state, request, &found.token, scheme, &grant, now) {
        Ok(jkt) => jkt,
        Err(denial) => return Verdict::Deny(denial),
    };
    if let Err(denial) = bind::check_certificate(config, request, &grant) {
        return Verdict::Deny(denial);
    }
    let consumer = match consumer_for(config, &grant) {
        Ok(consumer) => consumer,
        Err(denial) => return Verdict::Deny(denial),
    };
    let who = Presented {
        scopes: &grant.scopes,
        acr: grant.acr.as_deref(),
        auth_time: grant.auth_time,
        now,
        skew: config.rules.clock_skew_seconds,
    };
    let rule = match check_policy(config, request, path, &who) {
        Ok(Judged::Rule(rule)) => rule,
        Ok(Judged::ReadBody) => {
            // What passes if the body does: its headers go on now.
            let mut allow = upstream::allow(config, request, upstream, &found, &grant, consumer);
            add_dpop_headers(config, request, jkt, &mut allow);
            return Verdict::ReadBody(Box::new(ReadBody {
                allow,
                max_bytes: config.jsonrpc.max_body_bytes,
                wait: Wait {
                    on: WaitKey::Body,
                    until: now.saturating_add(config.jsonrpc.body_timeout_seconds),
                    fetch: None,
                },
            }));
        }
        Err(denial) => return Verdict::Deny(denial),
    };
    let mut allow = upstream::allow(config, request, upstream, &found, &grant, consumer);
    add_dpop_headers(config, request, jkt, &mut allow);
    let Some(pdp) = &config.pdp else {
        return Verdict::Allow(allow);
    };
    let claims = grant.claims();
    let query = PdpQuery {
        subject: grant.subject.as_deref().unwrap_or_default(),
        client_id: grant.client_id.as_deref(),
        claims: &claims,
        method: request.method,
        path,
        rule: rule.as_deref().unwrap_or(""),
        scopes: &grant.scopes,
    };
    // Keyed by the exact body the PDP is sent: every claim it may decide on.
    let (callout, cache_key) = pdp.ask(&query);
    match state.decisions.get(&cache_key, now) {
        Some(true) => Verdict::Allow(allow),
        Some(false) => Verdict::Deny(pdp_denied(&query)),
        None => {
            let denial = pdp_denied(&query);
            Verdict::Call {
                callout: Box::new(callout),
                resume: Resume::Pdp(Box::new(PendingPdp {
                    allow,
                    denial,
                    cache_key,
                })),
            }
        }
    }
}

fn add_dpop_headers(config: &Config, request: &Request, jkt: Option<String>, allow: &mut Allow) {
    if let Some(jkt) = jkt {
        allow
            .set_headers
            .push((config.identity.dpop_jkt.clone(), jkt));
    }
    if !config.dpop.forward_proof && request.headers.iter().any(|(n, _)| n == "dpop") {
        allow.remove_headers.push("dpop".into());
    }
}

/// RFC 8707: on a protected resource's paths a token must come from one of
/// its authorization servers and name one of its audiences; elsewhere, one
/// of its issuer's `audiences`. Checked per request against the grant's
/// `aud`, so a grant cached on one resource's path is never good on
/// another's; without resources the issuer's list was checked before the
/// signature and there is nothing more to do.
fn for_this_resource(config: &Config, path: &str, grant: Rc<Grant>) -> Result<Rc<Grant>, Verdict> {
    if config.resources.is_empty() {
        return Ok(grant);
    }
    let accepted = match config.resources.for_path(path) {
        Some(resource) => {
            resource.issuers.contains(&grant.issuer) && resource.accepts_audience(&grant.audiences)
        }
        None => config.issuers.get(grant.issuer).is_some_and(|issuer| {
            issuer.audiences.is_empty()
                || issuer.audiences.iter().any(|a| grant.audiences.contains(a))
        }),
    };
    if accepted {
        Ok(grant)
    } else {
        Err(Verdict::Deny(Denial::InvalidToken(TokenProblem::Jwt(
            TokenError::WrongAudience,
        ))))
    }
}

/// What the policy made of a request it could judge.
enum Judged {
    /// The matched rule (`None` without a policy, or for an unlisted path
    /// when `deny_by_default` is off).
    Rule(Option<String>),
    /// A JSON-RPC selector needs the body, not read yet.
    ReadBody,
}

/// The policy's verdict on the token's scopes and authentication (and the
/// body's JSON-RPC calls where a selector reads them), or the denial.
fn check_policy(
    config: &Config,
    request: &Request,
    path: &str,
    who: &Presented,
) -> Result<Judged, Denial> {
    let Some(policy) = &config.policy else {
        return Ok(Judged::Rule(None));
    };
    let mut decision = policy.decide_request(request.method, path, who, None);
    if decision == PolicyDecision::NeedBody {
        let limits = &config.jsonrpc;
        limits.precheck(request.headers).map_err(Denial::Body)?;
        let Some(body) = request.body else {
            return Ok(Judged::ReadBody);
        };
        let (calls, _batch) = read_calls(body, limits.max_body_bytes).map_err(Denial::Body)?;
        decision = policy.decide_request(request.method, path, who, Some(&calls));
    }
    match decision {
        PolicyDecision::Allow { rule } => Ok(Judged::Rule(Some(rule))),
        PolicyDecision::NoRule if config.deny_by_default => Err(Denial::NoRule {
            method: request.method.to_string(),
            path: path.to_string(),
        }),
        PolicyDecision::NoRule => Ok(Judged::Rule(None)),
        PolicyDecision::InsufficientScope { rule, required } => Err(Denial::InsufficientScope {
            rule,
            scopes: required,
        }),
        PolicyDecision::StepUp {
            rule,
            step_up,
            required,
        } => Err(Denial::StepUp {
            rule,
            step_up,
            scopes: required,
        }),
        PolicyDecision::BadBody(problem) => Err(Denial::Body(problem)),
        // Asked with the calls: not again.
        PolicyDecision::NeedBody => Err(Denial::Body(BodyProblem::NotJsonRpc {
            problem: "the body was not read".into(),
            id: None,
        })),
    }
}

fn pdp_denied(query: &PdpQuery) -> Denial {
    Denial::PdpDenied {
        method: query.method.to_string(),
        path: query.path.to_string(),
    }
}

/// The PDP's reply completes a request that passed every other check.
pub(super) fn finish_pdp(
    config: &Config,
    state: &mut State,
    pending: PendingPdp,
    reply: &CalloutReply,
    now: u64,
) -> Verdict {
    let Some(pdp) = &config.pdp else {
        return Verdict::Deny(pending.denial);
    };
    match pdp.verdict(reply) {
        Ok(permit) => {
            if pdp.cache_seconds() > 0 {
                state.decisions.insert(
                    pending.cache_key,
                    permit,
                    now.saturating_add(pdp.cache_seconds()),
                    now,
                );
            }
            if permit {
                Verdict::Allow(pending.allow)
            } else {
                Verdict::Deny(pending.denial)
            }
        }
        // Fail closed: no answer is never a permit.
        Err(e) => Verdict::Deny(Denial::PdpUnavailable {
            cause: e.to_string(),
        }),
    }
}

/// The consumer the token's client maps to, if consumers are configured.
pub(super) fn consumer_for<'c>(
    config: &'c Config,
    grant: &Grant,
) -> Result<Option<&'c Consumer>, Denial> {
    match config
        .consumers
        .lookup(grant.issuer, grant.client_id.as_deref())
    {
        ConsumerLookup::Known(consumer) => Ok(Some(consumer)),
        ConsumerLookup::NotConfigured => Ok(None),
        ConsumerLookup::Unregistered if config.consumers.allow_unregistered_clients() => Ok(None),
        ConsumerLookup::Unregistered => Err(Denial::InvalidToken(TokenProblem::ClientUnknown)),
    }
}

/// Without a usable token, the anonymous consumer may pass on its paths, as
/// far as the policy lets its own scopes (none by default) go: dropping the
/// token never gives more access than sending one. Where it may not pass, the
/// caller gets `denial` (a 401 challenge), since a token could help. `found`
/// is the token that failed, if one was sent (`on_invalid_token`): it does
/// not go upstream where credentials are hidden, in phantom mode, or where
/// the upstream OAuth rule (`upstream`, covering anonymous callers) replaces
/// or moves the caller's credential.
fn anonymous_or(
    config: &Config,
    request: &Request,
    path: &str,
    upstream: Option<&UpstreamOAuth>,
    found: Option<&FoundToken>,
    denial: Denial,
) -> Verdict {
    let Some(anonymous) = config.consumers.anonymous() else {
        return Verdict::Deny(denial);
    };
    // Its scopes alone: no authentication to step up, and no body read (a
    // path a JSON-RPC selector judges is not for anonymous callers).
    let who = Presented::scopes(&anonymous.scopes);
    if !config.anonymous_paths.matches(path)
        || !matches!(
            check_policy(config, request, path, &who),
            Ok(Judged::Rule(_))
        )
    {
        return Verdict::Deny(denial);
    }
    let mut set_headers = anonymous.consumer.upstream_headers(&config.identity);
    if !anonymous.scopes.is_empty() {
        set_headers.push((config.identity.scope.clone(), anonymous.scopes.join(",")));
    }
    let mut allow = Allow {
        remove_headers: upstream::forged(config, request.headers),
        set_headers,
        subject: Some(anonymous.consumer.id.clone()),
        new_path: None,
        anonymous: true,
        subject_token: None,
    };
    let hidden = config.forward.hide_credentials
        || config.forward.phantom_token_header.is_some()
        || upstream.is_some_and(|r| r.anonymous && r.credential != ClientCredential::Keep);
    if let (Some(found), true) = (found, hidden) {
        upstream::remove_credential(&mut allow, request, found);
    }
    Verdict::Allow(allow)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::engine::test_support::*;
    use crate::engine::Resumed;
    use crate::extract::tests::h;
    use crate::jwt::test_vectors::vectors;
    use crate::metrics::testing::FakeMetrics;

    #[test]
    fn step_up_reads_acr_and_auth_time_from_the_grant() {
        let c =
            hs_config(r#","policy":{"GET /a":{"scope":"read","acr_values":["mfa"],"max_age":60}}"#);
        let mut s = State::new(&c);
        let now = vectors().now;
        let run = |s: &mut State, extra: serde_json::Value| {
            method_run(&c, s, "GET", "/a", &bearer(&hs_token(hs_claims(extra))))
        };
        assert!(matches!(
            run(
                &mut s,
                serde_json::json!({"acr": "mfa", "auth_time": now - 30})
            ),
            Verdict::Allow(_)
        ));
        for extra in [
            serde_json::json!({"auth_time": now - 30}),
            serde_json::json!({"acr": "pwd", "auth_time": now - 30}),
            serde_json::json!({"acr": "mfa", "auth_time": now - 200}),
            serde_json::json!({"acr": "mfa", "auth_time": "yesterday"}),
            serde_json::json!({"acr": ["mfa"], "auth_time": now}),
        ] {
            let Verdict::Deny(Denial::StepUp {
                step_up, scopes, ..
            }) = run(&mut s, extra.clone())
            else {
                panic!("{extra}: expected a step-up")
            };
            assert_eq!(
                (step_up.acr_values, step_up.max_age),
                (vec!["mfa".into()], Some(60))
            );
            assert!(scopes.is_empty());
        }
    }

    #[test]
    fn a_json_rpc_selector_asks_for_the_body_then_judges_it() {
        let c = hs_config(
            r#","jsonrpc":{"max_body_bytes":200},"policy":{"POST /mcp":"read","POST /mcp tools/call admin_*":"admin"}"#,
        );
        let mut s = State::new(&c);
        let headers = bearer(&hs_token(hs_claims(serde_json::json!({}))));
        let with_body = |s: &mut State, headers: &[(String, String)], body: Option<&[u8]>| {
            let request = Request {
                method: "POST",
                path: "/mcp",
                headers,
                client: None,
                peer_certificate: None,
                routing: Default::default(),
                body,
            };
            crate::engine::verdict_for(&c, s, &request, vectors().now)
        };
        // Not read yet: the headers as they would pass, the bound, the deadline.
        let Verdict::ReadBody(read) = with_body(&mut s, &headers, None) else {
            panic!("expected ReadBody")
        };
        assert_eq!(read.max_bytes, 200);
        assert_eq!(read.wait.on, WaitKey::Body);
        assert_eq!(read.wait.until, vectors().now + 10);
        assert!(read
            .allow
            .set_headers
            .iter()
            .any(|(n, _)| n == "x-oauth-client-id"));
        let call = |name: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}"}}}}"#
            )
        };
        assert!(matches!(
            with_body(&mut s, &headers, Some(call("search").as_bytes())),
            Verdict::Allow(_)
        ));
        assert!(matches!(
            with_body(&mut s, &headers, Some(call("admin_x").as_bytes())),
            Verdict::Deny(Denial::InsufficientScope { .. })
        ));
        // A content-length over the bound: refused before the body.
        let mut long = headers.clone();
        long.push(("content-length".into(), "201".into()));
        assert!(matches!(
            with_body(&mut s, &long, None),
            Verdict::Deny(Denial::Body(BodyProblem::TooLarge { max: 200 }))
        ));
        assert!(matches!(
            with_body(&mut s, &headers, Some(&[b' '; 201])),
            Verdict::Deny(Denial::Body(BodyProblem::TooLarge { max: 200 }))
        ));
    }

    #[test]
    fn a_token_passes_only_on_the_resource_its_audience_names_whatever_the_cache_holds() {
        // Issuer-wide audiences ["api"]; the resource under /a takes "other".
        let c = inline_config(
            r#","resources":[{"resource":"https://r.test/a","audiences":["other"]}]"#,
        );
        let mut s = State::new(&c);
        let v = vectors();
        let mismatch = Verdict::Deny(Denial::InvalidToken(TokenProblem::Jwt(
            TokenError::WrongAudience,
        )));
        let api = bearer(v.token("good_ES256"));
        let other = bearer(v.token("wrong_aud"));
        let both = bearer(v.token("aud_array"));
        assert!(matches!(run(&c, &mut s, &api, "/"), Verdict::Allow(_)));
        assert_eq!(s.tokens.len(), 1);
        assert_eq!(
            run(&c, &mut s, &api, "/a/x"),
            mismatch,
            "cached, yet refused here"
        );
        assert_eq!(run(&c, &mut s, &api, "/a"), mismatch);
        assert!(matches!(run(&c, &mut s, &other, "/a/x"), Verdict::Allow(_)));
        assert_eq!(run(&c, &mut s, &other, "/b"), mismatch);
        assert!(matches!(run(&c, &mut s, &both, "/a/x"), Verdict::Allow(_)));
        assert!(matches!(run(&c, &mut s, &both, "/b"), Verdict::Allow(_)));
        assert!(matches!(run(&c, &mut s, &api, "/"), Verdict::Allow(_)));
    }

    #[test]
    fn a_resource_takes_only_its_authorization_servers_tokens() {
        let v = vectors();
        let jwks = String::from_utf8(v.jwks.clone()).unwrap();
        let json = format!(
            r#"{{"issuers":[{{"issuer":"https://issuer.test","audiences":["api"],"jwks":{jwks}}},
                {{"issuer":"https://other.test","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}}],
               "resources":[{{"resource":"https://r.test/","authorization_servers":["https://other.test"],"audiences":["api"]}}]}}"#
        );
        let c = Config::from_json(json.as_bytes(), &|_| None).unwrap();
        let mut s = State::new(&c);
        assert_eq!(
            run(&c, &mut s, &bearer(v.token("good_ES256")), "/x"),
            Verdict::Deny(Denial::InvalidToken(TokenProblem::Jwt(
                TokenError::WrongAudience
            )))
        );
    }

    #[test]
    fn the_metadata_is_answered_before_any_token_work() {
        let c = inline_config(r#","resources":[{"resource":"https://r.test/a"}]"#);
        let mut s = State::new(&c);
        let Verdict::Respond(r) = run(&c, &mut s, &[], "/.well-known/oauth-protected-resource/a")
        else {
            panic!("not answered")
        };
        assert_eq!(r.status, 200);
        let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(doc["resource"], "https://r.test/a");
        assert_eq!(
            doc["authorization_servers"],
            serde_json::json!(["https://issuer.test"])
        );
        assert_eq!(
            run(&c, &mut s, &[], "/.well-known/oauth-protected-resource"),
            Verdict::Deny(Denial::NoToken),
            "no resource at the root"
        );
    }

    #[test]
    fn the_policy_decides_after_the_token_with_a_scope_hint() {
        // good tokens carry scopes "read write".
        let c = inline_config(
            r#","policy":{"GET /a/{id}":"read","POST /a/{id}":"read and (fido or otp)"},"public_paths":["/health"]"#,
        );
        let mut s = State::new(&c);
        assert!(matches!(
            method_run(&c, &mut s, "GET", "/a/1", &good()),
            Verdict::Allow(_)
        ));
        let Verdict::Deny(Denial::InsufficientScope { rule, scopes }) =
            method_run(&c, &mut s, "POST", "/a/1", &good())
        else {
            panic!("expected insufficient_scope")
        };
        assert_eq!(rule, "POST /a/{id}");
        assert!(
            scopes.contains(&"read".to_string()) && scopes.len() == 2,
            "{scopes:?}"
        );
        assert!(matches!(
            method_run(&c, &mut s, "GET", "/b", &good()),
            Verdict::Deny(Denial::NoRule { .. })
        ));
        assert!(matches!(
            method_run(&c, &mut s, "GET", "/health", &[]),
            Verdict::Allow(_)
        ));
        assert_eq!(
            method_run(&c, &mut s, "GET", "/a/1", &[]),
            Verdict::Deny(Denial::NoToken)
        );
        // A dot segment is resolved before matching, so it cannot dodge a rule.
        assert!(matches!(
            method_run(&c, &mut s, "GET", "/health/../b", &good()),
            Verdict::Deny(Denial::NoRule { .. })
        ));
        assert!(matches!(
            method_run(&c, &mut s, "GET", "/a/%2F", &good()),
            Verdict::Deny(Denial::InvalidRequest(_))
        ));
    }

    #[test]
    fn without_deny_by_default_unlisted_paths_need_only_a_valid_token() {
        let c = inline_config(r#","policy":{"GET /a":"admin"},"deny_by_default":false"#);
        let mut s = State::new(&c);
        assert!(matches!(
            method_run(&c, &mut s, "GET", "/b", &good()),
            Verdict::Allow(_)
        ));
        assert_eq!(
            method_run(&c, &mut s, "GET", "/b", &[]),
            Verdict::Deny(Denial::NoToken)
        );
    }

    #[test]
    fn consumers_and_the_anonymous_consumer() {
        let c = inline_config(
            r#","consumers":{"client-1":{"id":"c1","username":"alice"}},"anonymous":{"id":"anon","paths":["/open/??"]}"#,
        );
        let mut s = State::new(&c);
        let Verdict::Allow(a) = method_run(&c, &mut s, "GET", "/x", &good()) else {
            panic!()
        };
        assert!(a
            .set_headers
            .contains(&("x-consumer-id".into(), "c1".into())));
        assert!(a
            .set_headers
            .contains(&("x-consumer-username".into(), "alice".into())));
        let Verdict::Allow(a) = method_run(&c, &mut s, "GET", "/open/doc", &[]) else {
            panic!()
        };
        assert!(a
            .set_headers
            .contains(&("x-anonymous-consumer".into(), "true".into())));
        assert!(a
            .set_headers
            .contains(&("x-consumer-id".into(), "anon".into())));
        assert_eq!(
            method_run(&c, &mut s, "GET", "/x", &[]),
            Verdict::Deny(Denial::NoToken)
        );
        let expired = bearer(vectors().token("expired"));
        assert!(matches!(
            method_run(&c, &mut s, "GET", "/open/doc", &expired),
            Verdict::Deny(Denial::InvalidToken(_))
        ));

        let strict = inline_config(r#","consumers":{"someone-else":{"id":"c2"}}"#);
        let mut s = State::new(&strict);
        assert_eq!(
            method_run(&strict, &mut s, "GET", "/x", &good()),
            Verdict::Deny(Denial::InvalidToken(TokenProblem::ClientUnknown))
        );
    }

    #[test]
    fn the_pdp_is_asked_last_and_fails_closed() {
        let c = inline_config(
            r#","policy":{"GET /a":"read","GET /b":"admin"},"pdp":{"kind":"opa","upstream":"pdp","url":"http://opa/v1/data/authz","cache_seconds":5}"#,
        );
        let mut s = State::new(&c);
        assert!(
            matches!(
                method_run(&c, &mut s, "GET", "/b", &good()),
                Verdict::Deny(Denial::InsufficientScope { .. })
            ),
            "a failed scope check never reaches the PDP"
        );
        let asked = method_run(&c, &mut s, "GET", "/a", &good());
        let Verdict::Call { callout, .. } = &asked else {
            panic!()
        };
        assert_eq!(callout.url.path, "/v1/data/authz");
        let permit = reply(200, r#"{"result":true}"#);
        assert!(matches!(
            answer_pdp(&c, &mut s, asked, &permit),
            Verdict::Allow(_)
        ));
        assert!(
            matches!(
                method_run(&c, &mut s, "GET", "/a", &good()),
                Verdict::Allow(_)
            ),
            "cached permit"
        );

        let c = inline_config(
            r#","pdp":{"kind":"opa","upstream":"pdp","url":"http://opa/v1/data/authz"}"#,
        );
        let mut s = State::new(&c);
        for (answer, denied) in [
            (reply(200, "{}"), "pdp_denied"),
            (reply(200, r#"{"result":false}"#), "pdp_denied"),
            (reply(500, ""), "pdp_unavailable"),
            (CalloutReply::default(), "pdp_unavailable"),
            (reply(200, "garbage"), "pdp_unavailable"),
        ] {
            let asked = method_run(&c, &mut s, "GET", "/a", &good());
            let Verdict::Deny(denial) = answer_pdp(&c, &mut s, asked, &answer) else {
                panic!("{answer:?}")
            };
            assert_eq!(denial.code(), denied, "{answer:?}");
        }
        // A callout the host would not dispatch is decided in the core too.
        let Verdict::Call { resume, .. } = method_run(&c, &mut s, "GET", "/a", &good()) else {
            panic!()
        };
        let Resumed::Decided(Verdict::Deny(denial)) = crate::engine::resume(
            &c,
            &mut s,
            &FakeMetrics::default(),
            resume,
            Err("BadArgument"),
            vectors().now,
        ) else {
            panic!()
        };
        assert_eq!(denial.code(), "pdp_unavailable");
    }

    /// Two issuers sharing one HMAC secret (the vectors'), with `extra`.
    fn two_issuers(extra: &str) -> Config {
        let secret = vectors().hs_secret;
        let json = format!(
            r#"{{"issuers":[{{"issuer":"https://hs.test","audiences":["api"],"shared_secret":"{secret}"}},
                {{"issuer":"https://other.test","audiences":["api"],"shared_secret":"{secret}"}}]{extra}}}"#
        );
        Config::from_json(json.as_bytes(), &|_| None).unwrap()
    }

    #[test]
    fn a_pdp_decision_is_reused_only_for_the_same_question() {
        // Issue 18: the key was [sub, client_id, method, path, scopes], so a
        // token of another issuer with the same `sub` and client, or the same
        // user without MFA, got a decision made about other claims.
        let c = two_issuers(
            r#","pdp":{"kind":"authzen","upstream":"pdp","url":"http://pdp","cache_seconds":60}"#,
        );
        let mut s = State::new(&c);
        let token = |claims| bearer(&hs_token(hs_claims(claims)));
        let mfa = token(serde_json::json!({"acr": "mfa"}));
        let asked = method_run(&c, &mut s, "GET", "/a", &mfa);
        let permit = reply(200, r#"{"decision":true}"#);
        assert!(matches!(
            answer_pdp(&c, &mut s, asked, &permit),
            Verdict::Allow(_)
        ));
        assert!(
            matches!(method_run(&c, &mut s, "GET", "/a", &mfa), Verdict::Allow(_)),
            "the same question: the cached permit"
        );
        for other in [
            token(serde_json::json!({"iss": "https://other.test", "acr": "mfa"})),
            token(serde_json::json!({"acr": "pwd"})),
            token(serde_json::json!({})),
        ] {
            let asked = method_run(&c, &mut s, "GET", "/a", &other);
            assert!(matches!(asked, Verdict::Call { .. }), "asked again");
            let deny = reply(200, r#"{"decision":false}"#);
            assert!(matches!(
                answer_pdp(&c, &mut s, asked, &deny),
                Verdict::Deny(Denial::PdpDenied { .. })
            ));
        }
        // Those denials are theirs alone.
        assert!(matches!(
            method_run(&c, &mut s, "GET", "/a", &mfa),
            Verdict::Allow(_)
        ));
    }

    #[test]
    fn a_consumer_is_a_client_of_its_own_issuer() {
        let c = two_issuers(
            r#","consumers":{"app":{"id":"c-hs","issuer":"https://hs.test"}},"allow_unregistered_clients":true"#,
        );
        let mut s = State::new(&c);
        let Verdict::Allow(a) = run(
            &c,
            &mut s,
            &bearer(&hs_token(hs_claims(serde_json::json!({})))),
            "/",
        ) else {
            panic!()
        };
        assert!(a
            .set_headers
            .contains(&("x-consumer-id".into(), "c-hs".into())));
        let other = hs_token(hs_claims(serde_json::json!({"iss": "https://other.test"})));
        let Verdict::Allow(a) = run(&c, &mut s, &bearer(&other), "/") else {
            panic!()
        };
        assert!(
            !a.set_headers.iter().any(|(h, _)| h == "x-consumer-id"),
            "the same client_id at another issuer is another client: {:?}",
            a.set_headers
        );
        let strict =
            two_issuers(r#","consumers":{"app":{"id":"c-hs","issuer":"https://hs.test"}}"#);
        let mut s = State::new(&strict);
        assert_eq!(
            run(&strict, &mut s, &bearer(&other), "/"),
            Verdict::Deny(Denial::InvalidToken(TokenProblem::ClientUnknown))
        );
    }

    #[test]
    fn the_anonymous_consumer_is_bound_by_the_policy() {
        let c = hs_config(
            r#","policy":{"GET /catalog/??":"read","POST,PUT,DELETE /catalog/??":"write"},
                "anonymous":{"id":"anon","paths":["/catalog/??"],"scopes":["read"]}"#,
        );
        let mut s = State::new(&c);
        let Verdict::Allow(a) = method_run(&c, &mut s, "GET", "/catalog/item1", &[]) else {
            panic!("anonymous read is allowed")
        };
        assert!(a
            .set_headers
            .contains(&("x-authenticated-scope".into(), "read".into())));
        assert_eq!(
            method_run(&c, &mut s, "DELETE", "/catalog/item1", &[]),
            Verdict::Deny(Denial::NoToken),
            "anonymous lacks write: a 401 challenge, as for a missing token"
        );
        let basic = h(&[("authorization", "Basic YTpi")]);
        assert_eq!(
            method_run(&c, &mut s, "DELETE", "/catalog/item1", &basic),
            Verdict::Deny(Denial::NoToken)
        );
        let reader = bearer(&hs_token(hs_claims(serde_json::json!({}))));
        assert!(matches!(
            method_run(&c, &mut s, "DELETE", "/catalog/item1", &reader),
            Verdict::Deny(Denial::InsufficientScope { .. })
        ));

        let no_scopes = hs_config(
            r#","policy":{"GET /catalog/??":"read"},"anonymous":{"id":"anon","paths":["/catalog/??"]}"#,
        );
        let mut s = State::new(&no_scopes);
        assert_eq!(
            method_run(&no_scopes, &mut s, "GET", "/catalog/x", &[]),
            Verdict::Deny(Denial::NoToken),
            "no scopes by default"
        );
    }
}
