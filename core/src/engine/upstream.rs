//! The request let through: the headers set and stripped (forged identity
//! headers first), the caller's credential kept, moved or hidden, the
//! gateway's own token for upstream OAuth, and the path as it was judged.

use std::rc::Rc;

use crate::config::{Config, TokenSource};
use crate::consumer::Consumer;
use crate::extract::{cookies_without, path_without_param, FoundToken};
use crate::grant::Grant;
use crate::headers::cmp_spelling;
use crate::request::NormalTarget;
use crate::response::Denial;
use crate::token_client::TokenWait;
use crate::upstream_oauth::{ClientCredential, UpstreamOAuth};
use crate::wait::WaitKey;

use super::exchange::{exchanged_token, rule_index};
use super::{
    authenticate, client_name, Allow, Fetch, Request, Resume, State, SubjectToken, Verdict, Wait,
};

/// The upstream request of a caller let through; `upstream` is the upstream
/// OAuth rule for the request, which decides what becomes of its credential.
pub(super) fn allow(
    config: &Config,
    request: &Request,
    upstream: Option<&UpstreamOAuth>,
    found: &FoundToken,
    grant: &Grant,
    consumer: Option<&Consumer>,
) -> Allow {
    let mut allow = Allow {
        remove_headers: forged(config, request.headers),
        subject: grant.subject.clone(),
        ..Allow::default()
    };
    let identity = &config.identity;
    // Comma-separated, as Gluu Gateway sent it.
    allow
        .set_headers
        .push((identity.scope.clone(), grant.scopes.join(",")));
    if let Some(client_id) = &grant.client_id {
        allow
            .set_headers
            .push((identity.client_id.clone(), client_id.clone()));
    }
    if let Some(exp) = grant.expires_at {
        allow
            .set_headers
            .push((identity.expiration.clone(), exp.to_string()));
    }
    if let Some(consumer) = consumer {
        allow
            .set_headers
            .extend(consumer.upstream_headers(identity));
    }
    for (i, value) in &grant.forwarded {
        if let Some(forward) = config.forward.claims.get(*i) {
            allow
                .set_headers
                .push((forward.header.clone(), value.clone()));
        }
    }
    if let (Some(header), Some(payload)) = (&config.forward.payload_header, &grant.payload) {
        allow.set_headers.push((header.clone(), payload.clone()));
    }
    if let (Some(header), Some(answer)) = (&config.forward.phantom_token_header, &grant.phantom) {
        allow.set_headers.push((header.clone(), answer.clone()));
    }
    if let Some(UpstreamOAuth {
        credential: ClientCredential::MoveTo(to),
        ..
    }) = upstream
    {
        let value = match &found.source {
            TokenSource::Header { name, .. } => request
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map_or_else(|| found.token.clone(), |(_, v)| v.clone()),
            _ => found.token.clone(),
        };
        allow.set_headers.push((to.clone(), value));
    }
    if upstream.is_some_and(|r| r.exchange.is_some()) {
        allow.subject_token = Some(SubjectToken(Rc::from(found.token.as_str())));
    }
    let moved_or_replaced = upstream.is_some_and(|r| r.credential != ClientCredential::Keep);
    if config.forward.hide_credentials || moved_or_replaced {
        remove_credential(&mut allow, request, found);
    } else if grant.phantom.is_none()
        && config.forward.phantom_in_authorization()
        && matches!(&found.source, TokenSource::Header { name, .. } if name == "authorization")
    {
        // The filter owns `authorization` for its phantom tokens; a token
        // verified without one (a JWT checked locally, which Gluu passed on
        // as it came) is the caller's own, verified: it stays.
        allow
            .remove_headers
            .retain(|name| !name.eq_ignore_ascii_case("authorization"));
    }
    allow
}

/// Removes the caller's credential from where it was found: its header, its
/// query parameter (in the path forwarded) or its cookie (the others kept).
pub(super) fn remove_credential(allow: &mut Allow, request: &Request, found: &FoundToken) {
    match &found.source {
        TokenSource::Header { name, .. } => {
            if !allow.remove_headers.contains(name) {
                allow.remove_headers.push(name.clone());
            }
        }
        TokenSource::Query(name) => allow.new_path = Some(path_without_param(request.path, name)),
        TokenSource::Cookie(name) => {
            allow.remove_headers.push("cookie".into());
            if let Some(rest) = cookies_without(request.headers, name) {
                allow.set_headers.push(("cookie".into(), rest));
            }
        }
    }
}

/// Whether Envoy will route the request again after the filter: the path
/// forwarded (normalised) is not the path received.
pub(super) fn rerouted(target: &NormalTarget, raw: &str) -> bool {
    let received = raw.split('?').next().unwrap_or(raw);
    target.forwarded_path() != received
}

/// The headers this filter may set that the client sent anyway, in any
/// spelling a backend would read as the same header (case, `_` for `-`):
/// removed so none can be forged. Only those present, to spare host calls.
/// `authorization` too where the filter sends phantom tokens in it: a
/// request let through without a phantom of the filter's never carries one
/// the client wrote ([`allow`] keeps a verified token the caller sent there).
pub(super) fn forged(config: &Config, headers: &[(String, String)]) -> Vec<String> {
    let owns_authorization = config.forward.phantom_in_authorization();
    let mut names: Vec<String> = headers
        .iter()
        .map(|(name, _)| name)
        .filter(|name| {
            (owns_authorization && name.eq_ignore_ascii_case("authorization"))
                || config
                    .strip_headers
                    .binary_search_by(|key| cmp_spelling(key, name))
                    .is_ok()
        })
        .cloned()
        .collect();
    names.dedup();
    names
}

/// Whatever the request is let through with, the upstream gets the path that
/// was judged (normalised, as Envoy's `normalize_path` and `merge_slashes`
/// would), with the query as it is by then.
pub(super) fn forward_as_judged(verdict: Verdict, target: &NormalTarget, raw: &str) -> Verdict {
    let rewrite = |allow: &mut Allow| {
        let sent = allow.new_path.as_deref().unwrap_or(raw);
        let query = sent.find('?').and_then(|i| sent.get(i..)).unwrap_or("");
        let forwarded = target.forwarded_path() + query;
        allow.new_path = (forwarded != raw).then_some(forwarded);
    };
    match verdict {
        Verdict::Allow(mut allow) => {
            rewrite(&mut allow);
            Verdict::Allow(allow)
        }
        Verdict::ReadBody(mut read) => {
            rewrite(&mut read.allow);
            Verdict::ReadBody(read)
        }
        Verdict::Call {
            callout,
            resume: Resume::Pdp(mut pending),
        } => {
            rewrite(&mut pending.allow);
            Verdict::Call {
                callout,
                resume: Resume::Pdp(pending),
            }
        }
        other => other,
    }
}

/// The verdict, with the gateway's own token added where upstream OAuth
/// applies (`upstream` is the request's rule, if any): whatever let the
/// request through, the upstream gets the token; under a rule with
/// `exchange`, the one exchanged for the caller's, never the caller's own.
pub(super) fn add_gateway_token(
    config: &Config,
    state: &mut State,
    request: &Request,
    upstream: Option<&UpstreamOAuth>,
    verdict: Verdict,
    now: u64,
) -> Verdict {
    let Some(rule) = upstream else {
        return verdict;
    };
    if matches!(&verdict, Verdict::Allow(allow) if allow.anonymous && !rule.anonymous) {
        // A caller without a verified token gets the gateway's identity only
        // where the rule says so.
        return verdict;
    }
    let mut add_token = |allow: &mut Allow| -> Result<(), Verdict> {
        let subject = allow.subject_token.take();
        let token = match (&rule.exchange, subject) {
            (None, _) => client_token(config, state, rule.client, now)?,
            (Some(exchange), Some(SubjectToken(subject))) => exchanged_token(
                config,
                state,
                rule_index(config, rule),
                rule,
                exchange,
                &subject,
                request.client,
                now,
            )?,
            (Some(_), None) => {
                return Err(Verdict::Deny(Denial::ExchangeUnavailable {
                    rule: super::exchange::rule_name(rule_index(config, rule)),
                    cause: "no verified caller token to exchange".into(),
                }))
            }
        };
        allow
            .set_headers
            .push((rule.header.clone(), format!("Bearer {token}")));
        Ok(())
    };
    match verdict {
        Verdict::Allow(mut allow) => match add_token(&mut allow) {
            Ok(()) => Verdict::Allow(allow),
            Err(wait) => wait,
        },
        Verdict::ReadBody(mut read) => match add_token(&mut read.allow) {
            Ok(()) => Verdict::ReadBody(read),
            Err(wait) => wait,
        },
        Verdict::Call {
            callout,
            resume: Resume::Pdp(mut pending),
        } => match add_token(&mut pending.allow) {
            Ok(()) => Verdict::Call {
                callout,
                resume: Resume::Pdp(pending),
            },
            Err(wait) => wait,
        },
        other => other,
    }
}

/// The token of one of the gateway's clients, or what the request must do
/// (wait for the fetch, or a 503) while there is none that may be sent.
pub(super) fn client_token(
    config: &Config,
    state: &mut State,
    client: usize,
    now: u64,
) -> Result<Rc<str>, Verdict> {
    let keys = &state.keys;
    let discovered = |issuer: usize| keys.discovered(issuer).and_then(|e| e.token.clone());
    let wait_for = state
        .clients
        .for_request(client, &discovered, state.random.as_ref(), now);
    let unavailable = |cause: String| {
        Verdict::Deny(Denial::ClientTokenUnavailable {
            client: client_name(config, client),
            cause,
        })
    };
    let wait = |until: u64, fetch: Option<Fetch>| {
        Verdict::Wait(Wait {
            on: WaitKey::ClientToken(client),
            until,
            fetch,
        })
    };
    match wait_for {
        TokenWait::Ready(token) => Ok(token),
        TokenWait::Fetch { callout, until } => Err(wait(
            until,
            Some(Fetch {
                callout,
                resume: Resume::ClientToken { client },
            }),
        )),
        TokenWait::Wait { until } => Err(wait(until, None)),
        TokenWait::NeedsDiscovery(issuer) => {
            match authenticate::discovered_endpoint(config, state, issuer, now, |e| &e.token)? {
                // Loaded just now (another worker's): asked again with it.
                Some(_) => client_token(config, state, client, now),
                None => Err(unavailable(
                    "the issuer's discovery document has no usable token_endpoint".into(),
                )),
            }
        }
        TokenWait::Unavailable(cause) => Err(unavailable(cause)),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::engine::test_support::*;
    use crate::extract::tests::h;
    use crate::jwt::test_vectors::vectors;

    #[test]
    fn a_good_token_is_allowed_with_claims_forwarded_and_forgeable_headers_stripped() {
        let c = inline_config(
            r#","forward":{"claims":{"sub":"x-jwt-sub","scope":"x-scope"},"payload_header":"x-jwt-payload"}"#,
        );
        let mut s = State::new(&c);
        let token = vectors().token("good_RS256").to_string();
        let forgeable = [
            "x-jwt-payload",
            "x-jwt-sub",
            "x-scope",
            "x-authenticated-scope",
            "x-consumer-id",
        ];
        let mut headers = bearer(&token);
        headers.extend(
            forgeable
                .iter()
                .map(|name| (name.to_string(), "forged".to_string())),
        );
        let Verdict::Allow(allow) = run(&c, &mut s, &headers, "/") else {
            panic!("denied")
        };
        assert_eq!(
            allow.remove_headers.len(),
            forgeable.len(),
            "only what was sent"
        );
        for name in forgeable {
            assert!(allow.remove_headers.iter().any(|h| h == name), "{name}");
        }
        assert!(allow
            .set_headers
            .contains(&("x-authenticated-scope".into(), "read,write".into())));
        assert!(allow
            .set_headers
            .contains(&("x-oauth-client-id".into(), "client-1".into())));
        assert!(allow
            .set_headers
            .contains(&("x-oauth-expiration".into(), "1700003600".into())));
        assert!(allow
            .set_headers
            .contains(&("x-jwt-sub".into(), "client-1".into())));
        assert!(allow
            .set_headers
            .contains(&("x-scope".into(), "read write".into())));
        let payload = token.split('.').nth(1).unwrap();
        assert!(allow
            .set_headers
            .contains(&("x-jwt-payload".into(), payload.into())));
        assert_eq!(allow.subject.as_deref(), Some("client-1"));
    }

    #[test]
    fn hide_credentials_removes_the_token_wherever_it_was() {
        let c = inline_config(
            r#","forward":{"hide_credentials":true},"token_sources":[{"header":"authorization"},{"query":"at"},{"cookie":"at"}]"#,
        );
        let mut s = State::new(&c);
        let token = vectors().token("good_EdDSA").to_string();
        let Verdict::Allow(a) = run(&c, &mut s, &bearer(&token), "/x") else {
            panic!()
        };
        assert!(a.remove_headers.contains(&"authorization".to_string()));
        let Verdict::Allow(a) = run(&c, &mut s, &[], &format!("/x?at={token}&k=1")) else {
            panic!()
        };
        assert_eq!(a.new_path.as_deref(), Some("/x?k=1"));
        let Verdict::Allow(a) = run(
            &c,
            &mut s,
            &h(&[("cookie", &format!("at={token}; b=2"))]),
            "/x",
        ) else {
            panic!()
        };
        assert!(a.set_headers.contains(&("cookie".into(), "b=2".into())));
    }

    #[test]
    fn every_way_through_forwards_the_judged_path_with_the_query() {
        let c = inline_config(
            r#","policy":{"GET /api/??":"read","GET /admin/??":"admin","GET /open/??":"read"},"public_paths":["/health"],"anonymous":{"id":"anon","paths":["/open/??"],"scopes":["read"]},"forward":{"hide_credentials":true},"token_sources":[{"header":"authorization"},{"query":"at"}]"#,
        );
        let mut s = State::new(&c);
        let token = vectors().token("good_RS256").to_string();
        let new_path = |verdict: Verdict| match verdict {
            Verdict::Allow(a) => a.new_path,
            other => panic!("{other:?}"),
        };
        // (raw path, token in the authorization header, forwarded)
        let cases = [
            ("/admin/x/../../health", false, Some("/health")),
            ("/health", false, None),
            ("/x/..//open/./doc?q=1", false, Some("/open/doc?q=1")),
            ("/admin/s/../../api/x", true, Some("/api/x")),
            ("/admin//../api/x", true, Some("/api/x")),
            (
                "/api/%7euser/caf%c3%a9?q=%2F",
                true,
                Some("/api/~user/caf%C3%A9?q=%2F"),
            ),
            ("/api/x/", true, None),
            ("/api/x//", true, Some("/api/x/")),
            ("/api/x?q", true, None),
        ];
        for (raw, with_token, want) in cases {
            let headers = if with_token { bearer(&token) } else { vec![] };
            let got = new_path(run(&c, &mut s, &headers, raw));
            assert_eq!(got.as_deref(), want, "{raw}");
        }
        // A token in the query is removed from the normalised target.
        let raw = format!("/api//a/./b?k=1&at={token}&z");
        assert_eq!(
            new_path(run(&c, &mut s, &[], &raw)).as_deref(),
            Some("/api/a/b?k=1&z")
        );
        let raw = format!("/api/b?at={token}");
        assert_eq!(
            new_path(run(&c, &mut s, &[], &raw)).as_deref(),
            Some("/api/b")
        );
        for raw in [
            "/api/a%2fb",
            "/admin;x/secret",
            "/admin./secret",
            "/api/x#f",
        ] {
            assert!(
                matches!(
                    run(&c, &mut s, &bearer(&token), raw),
                    Verdict::Deny(Denial::InvalidRequest(_))
                ),
                "{raw}"
            );
        }

        let lenient = inline_config(r#","policy":{"GET /a":"admin"},"deny_by_default":false"#);
        let mut s = State::new(&lenient);
        assert_eq!(
            new_path(run(&lenient, &mut s, &bearer(&token), "/a/../b")).as_deref(),
            Some("/b")
        );

        let pdp = inline_config(
            r#","pdp":{"kind":"opa","upstream":"pdp","url":"http://opa/v1/data/authz"}"#,
        );
        let mut s = State::new(&pdp);
        let asked = run(&pdp, &mut s, &bearer(&token), "/a/./b");
        let permit = reply(200, r#"{"result":true}"#);
        assert_eq!(
            new_path(answer_pdp(&pdp, &mut s, asked, &permit)).as_deref(),
            Some("/a/b")
        );
    }

    #[test]
    fn forgeable_headers_are_stripped_in_every_spelling_a_backend_merges() {
        let c = hs_config(r#","forward":{"claims":{"sub":"X-Jwt-Sub"}},"public_paths":["/open"]"#);
        let mut s = State::new(&c);
        let sent = h(&[
            ("x_authenticated_scope", "admin"),
            ("x-authenticated_scope", "admin"),
            ("x_jwt_sub", "root"),
            ("x_consumer_id", "c0"),
            ("x_other", "kept"),
        ]);
        let Verdict::Allow(public) = method_run(&c, &mut s, "GET", "/open", &sent) else {
            panic!()
        };
        assert_eq!(
            public.remove_headers,
            [
                "x_authenticated_scope",
                "x-authenticated_scope",
                "x_jwt_sub",
                "x_consumer_id"
            ]
        );
        let mut with_token = bearer(&hs_token(hs_claims(serde_json::json!({}))));
        with_token.extend(sent);
        let Verdict::Allow(allowed) = method_run(&c, &mut s, "GET", "/x", &with_token) else {
            panic!()
        };
        assert_eq!(allowed.remove_headers, public.remove_headers);
        assert!(allowed
            .set_headers
            .contains(&("x-authenticated-scope".into(), "read".into())));
    }

    /// A request for `authority` routed by `routing`, as the glue reads it.
    fn at(
        c: &Config,
        s: &mut State,
        method: &str,
        target: (&str, &str),
        routing: crate::upstream_oauth::Routing,
        headers: &[(String, String)],
    ) -> Verdict {
        let (authority, path) = target;
        let mut all = h(&[(":authority", authority)]);
        all.extend(headers.iter().cloned());
        let request = Request {
            method,
            path,
            headers: &all,
            client: None,
            peer_certificate: None,
            routing,
            body: None,
        };
        super::super::verdict_for(c, s, &request, vectors().now)
    }

    /// Whether the verdict waits for the gateway's own token (which it
    /// would then send upstream).
    fn sends_gateway_token(v: &Verdict) -> bool {
        matches!(
            v,
            Verdict::Wait(Wait {
                on: WaitKey::ClientToken(0),
                ..
            })
        )
    }

    fn with_rules(rules: &str, extra: &str) -> Config {
        inline_config(&format!(
            r#","clients":{{"backend":{{"token_endpoint":"https://issuer.test/token","upstream":"as","client_id":"gw","client_secret":"s"}}}},"upstream_oauth":{rules}{extra}"#
        ))
    }

    #[test]
    fn the_gateways_token_goes_only_where_its_rule_says() {
        use crate::upstream_oauth::Routing;
        let c = with_rules(
            r#"[{"client":"backend","authorities":["backend.internal"],"paths":["/backend/??"]}]"#,
            "",
        );
        let mut s = State::new(&c);
        let none = Routing::default();
        let target = |authority| (authority, "/backend/reports");
        assert!(sends_gateway_token(&at(
            &c,
            &mut s,
            "GET",
            target("backend.internal"),
            none,
            &good()
        )));
        assert!(sends_gateway_token(&at(
            &c,
            &mut s,
            "HEAD",
            target("Backend.Internal"),
            none,
            &good()
        )));
        for other in [
            "www.example.com",
            "backend.internal:443",
            "backend.internal:80",
        ] {
            let v = at(&c, &mut s, "GET", target(other), none, &good());
            assert!(matches!(v, Verdict::Allow(_)), "{other}: {v:?}");
        }

        let by_cluster = with_rules(r#"[{"client":"backend","clusters":["backend"]}]"#, "");
        let mut s = State::new(&by_cluster);
        let routed = |cluster| Routing {
            virtual_host: None,
            route: None,
            cluster: Some(cluster),
        };
        assert!(sends_gateway_token(&at(
            &by_cluster,
            &mut s,
            "GET",
            ("x", "/a"),
            routed("backend"),
            &good()
        )));
        assert!(matches!(
            at(
                &by_cluster,
                &mut s,
                "GET",
                ("x", "/a"),
                routed("www"),
                &good()
            ),
            Verdict::Allow(_)
        ));
        assert!(
            matches!(
                at(&by_cluster, &mut s, "GET", ("x", "/a"), none, &good()),
                Verdict::Allow(_)
            ),
            "a cluster the host did not tell is no match"
        );
        // Envoy routes a rewritten path again, after the rule was matched
        // against the route of the path received.
        for raw in ["/a//b", "/x/../a", "/a/./b", "/%7ea"] {
            assert_eq!(
                at(
                    &by_cluster,
                    &mut s,
                    "GET",
                    ("x", raw),
                    routed("backend"),
                    &good()
                ),
                Verdict::Deny(Denial::InvalidRequest(
                    crate::response::RequestProblem::Rerouted
                )),
                "{raw}"
            );
        }
        assert!(sends_gateway_token(&at(
            &by_cluster,
            &mut s,
            "GET",
            ("x", "/a/b?q=1"),
            routed("backend"),
            &good()
        )));
        // The virtual host stays with a new path.
        let by_vhost = with_rules(r#"[{"client":"backend","virtual_hosts":["backend"]}]"#, "");
        let mut s = State::new(&by_vhost);
        let vhost = Routing {
            virtual_host: Some("backend"),
            route: None,
            cluster: None,
        };
        assert!(sends_gateway_token(&at(
            &by_vhost,
            &mut s,
            "GET",
            ("x", "/a//b"),
            vhost,
            &good()
        )));
    }

    #[test]
    fn callers_without_a_verified_token_get_the_gateways_only_where_the_rule_says_anonymous() {
        use crate::upstream_oauth::Routing;
        let extra = r#","public_paths":["/public/??"],"anonymous":{"id":"anon","paths":["/open/??"],"on_invalid_token":true}"#;
        let none = Routing::default();
        let plain = with_rules(r#"[{"client":"backend","authorities":["b"]}]"#, extra);
        let mut s = State::new(&plain);
        let expired = bearer(vectors().token("expired"));
        for (path, headers) in [
            ("/public/x", vec![]),
            ("/open/x", vec![]),
            ("/open/x", expired.clone()),
        ] {
            let v = at(&plain, &mut s, "GET", ("b", path), none, &headers);
            let Verdict::Allow(allow) = &v else {
                panic!("{path}: {v:?}")
            };
            assert!(allow.anonymous, "{path}");
        }
        assert!(sends_gateway_token(&at(
            &plain,
            &mut s,
            "GET",
            ("b", "/x"),
            none,
            &good()
        )));

        let open = with_rules(
            r#"[{"client":"backend","authorities":["b"],"anonymous":true}]"#,
            extra,
        );
        let mut s = State::new(&open);
        for (path, headers) in [
            ("/public/x", vec![]),
            ("/open/x", vec![]),
            ("/open/x", expired),
        ] {
            assert!(
                sends_gateway_token(&at(&open, &mut s, "GET", ("b", path), none, &headers)),
                "{path}"
            );
        }
    }

    #[test]
    fn the_phantom_header_authorization_is_owned_on_every_outcome() {
        let c = inline_config(
            r#","forward":{"phantom_token_header":"authorization","phantom_token_format":"jwt"},
               "public_paths":["/public/??"],"anonymous":{"id":"anon","paths":["/open/??"],"on_invalid_token":true},
               "policy":{"GET /api/??":"read"},"deny_by_default":false"#,
        );
        let mut s = State::new(&c);
        let forged = bearer("eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.");
        let allow = |v: Verdict| match v {
            Verdict::Allow(a) => a,
            other => panic!("{other:?}"),
        };
        // A public path, the anonymous consumer, an invalid token's fallback:
        // no phantom of the filter's, so none of the client's.
        for (path, headers) in [
            ("/public/x", forged.clone()),
            ("/open/x", forged.clone()),
            ("/open/x", bearer(vectors().token("expired"))),
        ] {
            let a = allow(run(&c, &mut s, &headers, path));
            assert!(
                a.remove_headers.contains(&"authorization".to_string()),
                "{path}: {a:?}"
            );
        }
        let token = vectors().token("good_RS256").to_string();
        // A JWT verified locally from elsewhere: the client's `authorization`
        // is not what the filter sent.
        let from_query = inline_config(
            r#","forward":{"phantom_token_header":"authorization","phantom_token_format":"jwt"},"token_sources":[{"query":"at"}]"#,
        );
        let mut q = State::new(&from_query);
        let a = allow(run(
            &from_query,
            &mut q,
            &forged,
            &format!("/api/x?at={token}"),
        ));
        assert!(
            a.remove_headers.contains(&"authorization".to_string()),
            "{a:?}"
        );
        // A JWT verified locally from `authorization` is the caller's own,
        // verified: it goes on as it came, as Gluu passed it.
        let a = allow(run(&c, &mut s, &bearer(&token), "/api/x"));
        assert!(
            !a.remove_headers.contains(&"authorization".to_string()),
            "{a:?}"
        );
    }

    #[test]
    fn an_invalid_tokens_anonymous_fallback_hides_it_where_credentials_are_hidden() {
        let config = |forward: &str| {
            inline_config(&format!(
                r#",{forward}"token_sources":[{{"header":"authorization"}},{{"query":"at"}},{{"cookie":"at"}}],
                   "anonymous":{{"id":"anon","paths":["/open/??"],"on_invalid_token":true}}"#
            ))
        };
        let expired = vectors().token("expired").to_string();
        let hidden = config(r#""forward":{"hide_credentials":true},"#);
        let mut s = State::new(&hidden);
        let Verdict::Allow(a) = run(&hidden, &mut s, &bearer(&expired), "/open/x") else {
            panic!()
        };
        assert!(
            a.remove_headers.contains(&"authorization".to_string()),
            "{a:?}"
        );
        assert_eq!(a.subject.as_deref(), Some("anon"));
        let Verdict::Allow(a) = run(&hidden, &mut s, &[], &format!("/open/x?k=1&at={expired}"))
        else {
            panic!()
        };
        assert_eq!(a.new_path.as_deref(), Some("/open/x?k=1"));
        let Verdict::Allow(a) = run(
            &hidden,
            &mut s,
            &h(&[("cookie", &format!("at={expired}; b=2"))]),
            "/open/x",
        ) else {
            panic!()
        };
        assert!(
            a.set_headers.contains(&("cookie".into(), "b=2".into())),
            "{a:?}"
        );
        // In phantom mode too, whatever the header.
        let phantom = config(r#""forward":{"phantom_token_header":"x-introspection"},"#);
        let mut s = State::new(&phantom);
        let Verdict::Allow(a) = run(&phantom, &mut s, &bearer(&expired), "/open/x") else {
            panic!()
        };
        assert!(
            a.remove_headers.contains(&"authorization".to_string()),
            "{a:?}"
        );
        // Passed on where credentials are passed on (Gluu's `pass`).
        let passed = config("");
        let mut s = State::new(&passed);
        let Verdict::Allow(a) = run(&passed, &mut s, &bearer(&expired), "/open/x") else {
            panic!()
        };
        assert!(
            !a.remove_headers.contains(&"authorization".to_string()),
            "{a:?}"
        );
    }
}
