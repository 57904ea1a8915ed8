//! The decision for one request, as data: allow (with the headers to set and
//! strip), deny (with a [`Denial`]), or "make this callout first". The glue
//! runs the callout, feeds the reply to [`State`] and asks again.

use std::rc::Rc;

use crate::cache::BoundedCache;
use crate::callout::{Callout, CalloutReply};
use crate::config::{Config, TokenSource};
use crate::consumer::{Consumer, ConsumerLookup};
use crate::extract::{cookies_without, find_token, path_without_param, FoundToken};
use crate::jwks::KeyLookupError;
use crate::jwt::{precheck, TokenError, VerifiedToken};
use crate::keys::{FetchStep, KeyManager};
use crate::pdp::{Pdp, PdpQuery};
use crate::policy::{normalize_path, PolicyDecision};
use crate::response::Denial;
use crate::verify::{PureRustVerifier, SignatureVerifier};

/// A token without `exp` (allowed only when `require_exp` is off) is cached this long.
const NO_EXP_CACHE_SECONDS: u64 = 300;

/// The facts of one request, as the glue read them.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Lowercase names, in arrival order, repeats kept.
    pub headers: &'a [(String, String)],
}

/// Mutable state shared by all requests of one VM (one Envoy worker).
pub struct State {
    pub keys: KeyManager,
    tokens: BoundedCache<Rc<VerifiedToken>>,
    /// PDP answers by (subject, client, method, path, scopes).
    decisions: BoundedCache<bool>,
    /// Checks signatures; replaceable so tests can inject their own.
    pub verifier: Box<dyn SignatureVerifier>,
}

impl State {
    pub fn new(config: &Config) -> Self {
        State {
            keys: KeyManager::new(config),
            tokens: BoundedCache::new(config.token_cache_entries),
            decisions: BoundedCache::new(config.token_cache_entries),
            verifier: Box::new(PureRustVerifier),
        }
    }

    pub fn cached_tokens(&self) -> usize {
        self.tokens.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allow {
    /// Removed from the upstream request before `set_headers` are added.
    pub remove_headers: Vec<String>,
    pub set_headers: Vec<(String, String)>,
    pub new_path: Option<String>,
    /// For logs: who was let through.
    pub subject: Option<String>,
}

/// A request waiting for the PDP: what to do on permit and on deny.
#[derive(Debug, PartialEq)]
pub struct PendingPdp {
    allow: Allow,
    denial: Denial,
    cache_key: String,
}

#[derive(Debug, PartialEq)]
pub enum Verdict {
    Allow(Allow),
    Deny(Denial),
    /// Ask the policy decision point, then call [`finish_pdp`] with its reply.
    AskPdp {
        callout: Box<Callout>,
        pending: Box<PendingPdp>,
    },
    /// Fetch this issuer's keys, then ask again.
    FetchKeys {
        issuer: usize,
        step: FetchStep,
        callout: Box<Callout>,
    },
}

pub fn authorize(config: &Config, state: &mut State, request: &Request, now: u64) -> Verdict {
    let path = match normalize_path(request.path) {
        Ok(path) => path,
        Err(e) => return Verdict::Deny(Denial::InvalidRequest(e.to_string())),
    };
    if config.public_paths.matches(&path) {
        return Verdict::Allow(Allow {
            remove_headers: forged(config, request.headers),
            ..Allow::default()
        });
    }
    let found = match find_token(&config.token_sources, request.headers, request.path) {
        Ok(Some(found)) => found,
        Ok(None) => return anonymous_or(config, request, &path, Denial::NoToken),
        Err(e) => return Verdict::Deny(Denial::InvalidRequest(e.to_string())),
    };
    let token = match verify(config, state, &found.token, now) {
        Ok(verified) => verified,
        Err(Verdict::Deny(denial @ Denial::InvalidToken(_))) => {
            let on_invalid = config
                .consumers
                .anonymous()
                .is_some_and(|a| a.on_invalid_token);
            return if on_invalid {
                anonymous_or(config, request, &path, denial)
            } else {
                Verdict::Deny(denial)
            };
        }
        Err(verdict) => return verdict,
    };
    let client_id = token
        .claim_text("client_id")
        .or_else(|| token.claim_text("azp"));
    let consumer = match config.consumers.lookup(client_id.as_deref()) {
        ConsumerLookup::Known(consumer) => Some(consumer),
        ConsumerLookup::NotConfigured => None,
        ConsumerLookup::Unregistered if config.consumers.allow_unregistered_clients() => None,
        ConsumerLookup::Unregistered => {
            return Verdict::Deny(Denial::InvalidToken("unknown client".into()));
        }
    };
    let scopes = token.scopes(&config.scope_claims);
    let rule = match &config.policy {
        None => None,
        Some(policy) => match policy.decide(request.method, &path, &scopes) {
            PolicyDecision::Allow { rule } => Some(rule),
            PolicyDecision::NoRule if config.deny_by_default => {
                return Verdict::Deny(Denial::Forbidden(format!(
                    "no policy rule allows {} {path}",
                    request.method
                )));
            }
            PolicyDecision::NoRule => None,
            PolicyDecision::InsufficientScope { rule, required } => {
                return Verdict::Deny(Denial::InsufficientScope {
                    rule,
                    scopes: required,
                });
            }
        },
    };
    let allow = allow(
        config,
        request,
        &found,
        &token,
        consumer,
        client_id.as_deref(),
        &scopes,
    );
    let Some(pdp) = &config.pdp else {
        return Verdict::Allow(allow);
    };
    let subject = allow.subject.clone().unwrap_or_default();
    let query = PdpQuery {
        subject: &subject,
        client_id: client_id.as_deref(),
        claims: token.claims(),
        method: request.method,
        path: &path,
        rule: rule.as_deref().unwrap_or(""),
        scopes: &scopes,
    };
    let cache_key = Pdp::cache_key(&query);
    match state.decisions.get(&cache_key, now) {
        Some(true) => Verdict::Allow(allow),
        Some(false) => Verdict::Deny(pdp_denied(&query)),
        None => {
            let callout = Box::new(pdp.callout(&query));
            let denial = pdp_denied(&query);
            Verdict::AskPdp {
                callout,
                pending: Box::new(PendingPdp {
                    allow,
                    denial,
                    cache_key,
                }),
            }
        }
    }
}

fn pdp_denied(query: &PdpQuery) -> Denial {
    Denial::Forbidden(format!(
        "the policy decision point denied {} {}",
        query.method, query.path
    ))
}

/// The PDP's reply completes a request that passed every other check.
pub fn finish_pdp(
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
        Err(e) => Verdict::Deny(Denial::Unavailable(e.to_string())),
    }
}

/// The headers this filter may set that the client sent anyway: removed so
/// none can be forged. Only those present, to spare host calls.
fn forged(config: &Config, headers: &[(String, String)]) -> Vec<String> {
    config
        .strip_headers
        .iter()
        .filter(|name| headers.iter().any(|(n, _)| n == *name))
        .cloned()
        .collect()
}

/// Without a usable token, the anonymous consumer may pass on its paths.
fn anonymous_or(config: &Config, request: &Request, path: &str, denial: Denial) -> Verdict {
    match config.consumers.anonymous() {
        Some(anonymous) if config.anonymous_paths.matches(path) => Verdict::Allow(Allow {
            remove_headers: forged(config, request.headers),
            set_headers: anonymous.consumer.upstream_headers(&config.identity),
            subject: Some(anonymous.consumer.id.clone()),
            new_path: None,
        }),
        _ => Verdict::Deny(denial),
    }
}

fn verify(
    config: &Config,
    state: &mut State,
    token: &str,
    now: u64,
) -> Result<Rc<VerifiedToken>, Verdict> {
    if let Some(hit) = state.tokens.get(token, now) {
        return Ok(Rc::clone(hit));
    }
    let invalid = |e: TokenError| Verdict::Deny(Denial::InvalidToken(e.to_string()));
    let unverified = precheck(token, &config.issuers, &config.rules, now).map_err(invalid)?;
    let issuer = unverified.issuer;
    let Some(keys) = state.keys.keys(issuer).map(Rc::clone) else {
        let name = config.issuers.get(issuer).map_or("", |i| i.issuer.as_str());
        let why = match state
            .keys
            .state(issuer)
            .and_then(|s| s.last_error.as_deref())
        {
            Some(error) => format!("the signing keys of {name} are not available: {error}"),
            None => format!("the signing keys of {name} are being fetched"),
        };
        return Err(Verdict::Deny(Denial::Unavailable(why)));
    };
    match unverified.verify(&keys, state.verifier.as_ref()) {
        Ok(verified) => {
            let expires_at = verified
                .expires_at()
                .unwrap_or(now.saturating_add(NO_EXP_CACHE_SECONDS));
            let verified = Rc::new(verified);
            // Keyed by the whole token: a prefix or a `kid` is never enough.
            state
                .tokens
                .insert(token.to_string(), Rc::clone(&verified), expires_at, now);
            Ok(verified)
        }
        Err(TokenError::Key(KeyLookupError::UnknownKid(kid))) => {
            match state.keys.refetch_for_unknown_kid(config, issuer, now) {
                Some((step, callout)) => Err(Verdict::FetchKeys {
                    issuer,
                    step,
                    callout: Box::new(callout),
                }),
                None => Err(invalid(TokenError::Key(KeyLookupError::UnknownKid(kid)))),
            }
        }
        Err(e) => Err(invalid(e)),
    }
}

fn allow(
    config: &Config,
    request: &Request,
    found: &FoundToken,
    token: &VerifiedToken,
    consumer: Option<&Consumer>,
    client_id: Option<&str>,
    scopes: &[String],
) -> Allow {
    let mut allow = Allow {
        remove_headers: forged(config, request.headers),
        subject: token
            .claim_text("sub")
            .or_else(|| client_id.map(str::to_string)),
        ..Allow::default()
    };
    let identity = &config.identity;
    // Comma-separated, as Gluu Gateway sent it.
    allow
        .set_headers
        .push((identity.scope.clone(), scopes.join(",")));
    if let Some(client_id) = client_id {
        allow
            .set_headers
            .push((identity.client_id.clone(), client_id.to_string()));
    }
    if let Some(exp) = token.expires_at() {
        allow
            .set_headers
            .push((identity.expiration.clone(), exp.to_string()));
    }
    if let Some(consumer) = consumer {
        allow
            .set_headers
            .extend(consumer.upstream_headers(identity));
    }
    for (claim, header) in &config.forward.claims {
        if let Some(value) = token.claim_text(claim) {
            allow.set_headers.push((header.clone(), value));
        }
    }
    if let Some(header) = &config.forward.payload_header {
        allow
            .set_headers
            .push((header.clone(), token.payload_segment().to_string()));
    }
    if config.forward.hide_credentials {
        match &found.source {
            TokenSource::Header { name, .. } => allow.remove_headers.push(name.clone()),
            TokenSource::Query(name) => {
                allow.new_path = Some(path_without_param(request.path, name))
            }
            TokenSource::Cookie(name) => {
                allow.remove_headers.push("cookie".into());
                if let Some(rest) = cookies_without(request.headers, name) {
                    allow.set_headers.push(("cookie".into(), rest));
                }
            }
        }
    }
    allow
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::callout::CalloutReply;
    use crate::extract::tests::h;
    use crate::jwt::test_vectors::vectors;

    fn inline_config(extra: &str) -> Config {
        let v = vectors();
        let jwks = String::from_utf8(v.jwks).unwrap();
        let json = format!(
            r#"{{"issuers":[{{"issuer":"https://issuer.test","audiences":["api"],"jwks":{jwks}}}]{extra}}}"#
        );
        Config::from_json(json.as_bytes()).unwrap()
    }

    fn bearer(token: &str) -> Vec<(String, String)> {
        h(&[("authorization", &format!("Bearer {token}"))])
    }

    fn run(
        config: &Config,
        state: &mut State,
        headers: &[(String, String)],
        path: &str,
    ) -> Verdict {
        let request = Request {
            method: "GET",
            path,
            headers,
        };
        authorize(config, state, &request, vectors().now)
    }

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
    fn missing_malformed_and_invalid_tokens_are_told_apart() {
        let c = inline_config("");
        let mut s = State::new(&c);
        assert_eq!(run(&c, &mut s, &[], "/"), Verdict::Deny(Denial::NoToken));
        assert!(matches!(
            run(
                &c,
                &mut s,
                &h(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
                "/"
            ),
            Verdict::Deny(Denial::InvalidRequest(_))
        ));
        let expired = vectors().token("expired").to_string();
        assert_eq!(
            run(&c, &mut s, &bearer(&expired), "/"),
            Verdict::Deny(Denial::InvalidToken("the token has expired".into()))
        );
    }

    #[test]
    fn the_cache_answers_a_repeated_token_until_it_expires() {
        let c = inline_config("");
        let mut s = State::new(&c);
        let token = vectors().token("good_ES256").to_string();
        assert!(matches!(
            run(&c, &mut s, &bearer(&token), "/"),
            Verdict::Allow(_)
        ));
        assert_eq!(s.cached_tokens(), 1);
        let request = Request {
            method: "GET",
            path: "/",
            headers: &bearer(&token),
        };
        // exp is 1700003600; the cache must not outlive it.
        assert!(matches!(
            authorize(&c, &mut s, &request, 1_700_003_600),
            Verdict::Allow(_)
        ));
        assert!(matches!(
            authorize(&c, &mut s, &request, 1_700_003_661),
            Verdict::Deny(Denial::InvalidToken(_))
        ));
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

    fn fetched_config() -> Config {
        Config::from_json(
            br#"{"issuers":[{"issuer":"https://issuer.test","audiences":["api"],"discovery":true,"upstream":"as","unknown_kid_refetch_seconds":30}]}"#,
        )
        .unwrap()
    }

    fn reply(status: u16, body: &str) -> CalloutReply {
        CalloutReply {
            status: Some(status),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn before_keys_load_requests_get_503_and_the_fetch_follows_discovery() {
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        let token = vectors().token("good_RS256").to_string();
        assert!(matches!(
            run(&c, &mut s, &bearer(&token), "/"),
            Verdict::Deny(Denial::Unavailable(_))
        ));

        let due = s.keys.due(&c, now);
        let [(0, FetchStep::Discovery, callout)] = due.as_slice() else {
            panic!("{due:?}")
        };
        assert_eq!(callout.url.path, "/.well-known/openid-configuration");
        assert_eq!(callout.upstream, "as");
        assert!(s.keys.due(&c, now).is_empty(), "one fetch at a time");

        let discovery = reply(
            200,
            r#"{"issuer":"https://issuer.test","jwks_uri":"https://issuer.test/keys"}"#,
        );
        let crate::keys::FetchProgress::Next(FetchStep::Jwks, jwks_call) =
            s.keys
                .on_reply(&c, 0, FetchStep::Discovery, &discovery, now)
        else {
            panic!()
        };
        assert_eq!(jwks_call.url.path, "/keys");
        let jwks = String::from_utf8(vectors().jwks).unwrap();
        assert!(matches!(
            s.keys
                .on_reply(&c, 0, FetchStep::Jwks, &reply(200, &jwks), now),
            crate::keys::FetchProgress::Loaded { .. }
        ));
        assert!(matches!(
            run(&c, &mut s, &bearer(&token), "/"),
            Verdict::Allow(_)
        ));
    }

    #[test]
    fn a_fetch_that_never_answers_does_not_block_later_fetches() {
        // The request that dispatched it was reset, so no reply ever comes.
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        assert_eq!(s.keys.due(&c, now).len(), 1);
        assert!(
            s.keys.due(&c, now + 5).is_empty(),
            "still awaited within 2 x fetch_timeout"
        );
        assert_eq!(
            s.keys.due(&c, now + 11).len(),
            1,
            "given up after the deadline"
        );
    }

    #[test]
    fn a_refused_dispatch_is_named_in_the_503() {
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        let _ = s.keys.due(&c, now);
        s.keys.on_dispatch_error(
            &c,
            0,
            FetchStep::Discovery,
            "BadArgument (is `as` a configured cluster?)",
            now,
        );
        let token = vectors().token("good_RS256").to_string();
        let Verdict::Deny(Denial::Unavailable(why)) = run(&c, &mut s, &bearer(&token), "/") else {
            panic!()
        };
        assert!(
            why.contains("OIDC discovery") && why.contains("is `as` a configured cluster?"),
            "{why}"
        );
    }

    #[test]
    fn failed_fetches_keep_old_keys_and_are_retried() {
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        // Kong reports a failed callout as a reply without status: a failure.
        let _ = s.keys.due(&c, now);
        let failed = s
            .keys
            .on_reply(&c, 0, FetchStep::Discovery, &CalloutReply::default(), now);
        assert!(matches!(failed, crate::keys::FetchProgress::Failed(_)));
        assert!(s.keys.due(&c, now).is_empty());
        assert_eq!(
            s.keys.due(&c, now + 1).len(),
            1,
            "first-load retry after 1 s"
        );
        let jwks = String::from_utf8(vectors().jwks).unwrap();
        let _ = s
            .keys
            .on_reply(&c, 0, FetchStep::Jwks, &reply(200, &jwks), now + 1);
        let _ = s.keys.due(&c, now + 400);
        for garbage in [
            reply(500, "oops"),
            reply(200, "<html>"),
            reply(200, r#"{"keys":[]}"#),
        ] {
            assert!(matches!(
                s.keys.on_reply(&c, 0, FetchStep::Jwks, &garbage, now + 400),
                crate::keys::FetchProgress::Failed(_)
            ));
        }
        assert!(s.keys.keys(0).is_some(), "last good keys survive");
    }

    #[test]
    fn an_unknown_kid_triggers_one_rate_limited_refetch() {
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        let _ = s.keys.due(&c, now);
        let jwks = String::from_utf8(vectors().jwks).unwrap();
        let _ = s
            .keys
            .on_reply(&c, 0, FetchStep::Jwks, &reply(200, &jwks), now);
        let token = vectors().token("unknown_kid").to_string();
        assert!(matches!(
            run(&c, &mut s, &bearer(&token), "/"),
            Verdict::FetchKeys { issuer: 0, .. }
        ));
        let _ = s
            .keys
            .on_reply(&c, 0, FetchStep::Jwks, &reply(200, &jwks), now);
        assert!(
            matches!(
                run(&c, &mut s, &bearer(&token), "/"),
                Verdict::Deny(Denial::InvalidToken(_))
            ),
            "no second refetch within 30 s"
        );
    }

    fn method_run(
        c: &Config,
        s: &mut State,
        method: &str,
        path: &str,
        headers: &[(String, String)],
    ) -> Verdict {
        let request = Request {
            method,
            path,
            headers,
        };
        authorize(c, s, &request, vectors().now)
    }

    fn good() -> Vec<(String, String)> {
        bearer(vectors().token("good_RS256"))
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
            Verdict::Deny(Denial::Forbidden(_))
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
            Verdict::Deny(Denial::Forbidden(_))
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
            Verdict::Deny(Denial::InvalidToken("unknown client".into()))
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
        let Verdict::AskPdp { callout, pending } = method_run(&c, &mut s, "GET", "/a", &good())
        else {
            panic!()
        };
        assert_eq!(callout.url.path, "/v1/data/authz");
        let now = vectors().now;
        let permit = reply(200, r#"{"result":true}"#);
        assert!(matches!(
            finish_pdp(&c, &mut s, *pending, &permit, now),
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
            (reply(200, "{}"), "forbidden"),
            (reply(200, r#"{"result":false}"#), "forbidden"),
            (reply(500, ""), "unavailable"),
            (CalloutReply::default(), "unavailable"),
            (reply(200, "garbage"), "unavailable"),
        ] {
            let Verdict::AskPdp { pending, .. } = method_run(&c, &mut s, "GET", "/a", &good())
            else {
                panic!()
            };
            let Verdict::Deny(denial) = finish_pdp(&c, &mut s, *pending, &answer, now) else {
                panic!("{answer:?}")
            };
            assert_eq!(denial.code(), denied, "{answer:?}");
        }
    }
}
