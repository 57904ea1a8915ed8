//! Finding the token's grant: from the worker's caches, by verifying a JWT
//! against the issuer's keys (waiting for them to load if need be), or by
//! handing an opaque token to introspection.

use std::rc::Rc;

use crate::cache::{digest, Digest};
use crate::callout::Url;
use crate::config::Config;
use crate::grant::Grant;
use crate::introspection::Mode;
use crate::jwks::KeyLookupError;
use crate::jwt::{looks_like_jwt, precheck, TokenError};
use crate::keys::{Endpoints, KeyWait};
use crate::response::{Denial, TokenProblem};
use crate::wait::WaitKey;

use super::introspect::{self, Asking};
use super::{issuer_name, Fetch, Known, Resume, State, Verdict, Wait};

/// A token without `exp` (allowed only when `require_exp` is off) is cached this long.
const NO_EXP_CACHE_SECONDS: u64 = 300;
/// How long a token whose signature failed is answered from memory.
const REJECTED_CACHE_SECONDS: u64 = 60;

/// The grant of a token: the introspection outcome the request waited for,
/// a cached one, or a verification (or an introspection) now; refused if
/// its subject or session was revoked after it was issued, however found.
pub(super) fn authenticate(
    config: &Config,
    state: &mut State,
    token: &str,
    client: Option<&str>,
    known: Option<&Known>,
    now: u64,
) -> Result<Rc<Grant>, Verdict> {
    let grant = find_grant(config, state, token, client, known, now)?;
    super::revoke::check(state, &grant, now)?;
    Ok(grant)
}

fn find_grant(
    config: &Config,
    state: &mut State,
    token: &str,
    client: Option<&str>,
    known: Option<&Known>,
    now: u64,
) -> Result<Rc<Grant>, Verdict> {
    let key = digest(&[token.as_bytes()]);
    if let Some((known_key, outcome)) = known {
        if *known_key == key {
            return outcome.clone().map_err(Verdict::Deny);
        }
    }
    if let Some(hit) = state.tokens.get(&key, now) {
        return Ok(Rc::clone(hit));
    }
    if let Some(denial) = state.rejected.get(&key, now) {
        return Err(Verdict::Deny(denial.clone()));
    }
    verify_uncached(config, state, token, client, key, true, now)
}

/// A token no cache knows: introspected, or checked against the keys
/// (`retry_adopted`: again, if another worker's newer keys were loaded).
fn verify_uncached(
    config: &Config,
    state: &mut State,
    token: &str,
    client: Option<&str>,
    key: Digest,
    retry_adopted: bool,
    now: u64,
) -> Result<Rc<Grant>, Verdict> {
    let invalid = |e: TokenError| Verdict::Deny(Denial::InvalidToken(TokenProblem::Jwt(e)));
    if !looks_like_jwt(token) {
        if let Some((issuer, settings)) = introspect::opaque_token_issuer(config, token) {
            // Junk of the wrong shape (and no 60 KiB token) goes out in no callout.
            settings
                .token_shape
                .admits(token)
                .map_err(|why| invalid(TokenError::Malformed(why)))?;
            let asking = Asking { issuer, client };
            return introspect::introspect(config, state, asking, token, key, None, now);
        }
    }
    let unverified = precheck(token, &config.issuers, &config.rules, now).map_err(invalid)?;
    let issuer = unverified.issuer;
    let mode = config.issuers.get(issuer).map_or(Mode::Jwt, |i| i.mode);
    if mode == Mode::Introspect {
        // The cheap checks above ran first: a JWT with a wrong iss, aud or
        // exp costs no callout.
        let asking = Asking { issuer, client };
        return introspect::introspect(config, state, asking, token, key, None, now);
    }
    let keys = match state.keys.keys(issuer).map(Rc::clone) {
        Some(keys) => keys,
        None => match state.keys.load_for_request(issuer, now) {
            KeyWait::Adopted => match state.keys.keys(issuer).map(Rc::clone) {
                Some(keys) => keys,
                None => {
                    return Err(Verdict::from_key_wait(
                        config,
                        KeyWait::Adopted,
                        issuer,
                        None,
                    ))
                }
            },
            wait => return Err(Verdict::from_key_wait(config, wait, issuer, None)),
        },
    };
    match unverified.verify(&keys, state.verifier.as_ref()) {
        Ok(verified) => {
            let grant = Grant::from_token(&verified, &config.grant_keeps())
                .map_err(|e| Verdict::Deny(Denial::InvalidToken(TokenProblem::Claim(e))))?;
            let grant = Rc::new(super::revoke::keyed(config, grant, &verified));
            if mode == Mode::JwtThenIntrospect {
                let asking = Asking { issuer, client };
                return introspect::introspect(config, state, asking, token, key, Some(grant), now);
            }
            let expires_at = grant
                .expires_at
                .unwrap_or(now.saturating_add(NO_EXP_CACHE_SECONDS));
            // Keyed by a digest of the whole token: a prefix or a `kid` is never enough.
            state.tokens.insert(key, Rc::clone(&grant), expires_at, now);
            Ok(grant)
        }
        Err(TokenError::Key(KeyLookupError::UnknownKid(kid))) => {
            match state.keys.refetch_for_unknown_kid(issuer, &kid, now) {
                // Another worker's newer keys: judged again against them (once).
                KeyWait::Adopted if retry_adopted => {
                    verify_uncached(config, state, token, client, key, false, now)
                }
                wait => Err(Verdict::from_key_wait(config, wait, issuer, Some(kid))),
            }
        }
        // A signature that did not verify never will: remembering it makes a
        // repeated forgery cost a lookup instead of ~1 ms of signature work.
        Err(e @ (TokenError::BadSignature | TokenError::Signature(_))) => {
            let denial = Denial::InvalidToken(TokenProblem::Jwt(e));
            state.rejected.insert(
                key,
                denial.clone(),
                now.saturating_add(REJECTED_CACHE_SECONDS),
                now,
            );
            Err(Verdict::Deny(denial))
        }
        Err(e) => Err(invalid(e)),
    }
}

impl Verdict {
    pub(super) fn from_key_wait(
        config: &Config,
        wait: KeyWait,
        issuer: usize,
        kid: Option<String>,
    ) -> Verdict {
        match wait {
            KeyWait::Fetch {
                step,
                callout,
                until,
            } => Verdict::Wait(Wait {
                on: WaitKey::Keys(issuer),
                until,
                fetch: Some(Fetch {
                    callout: Box::new(callout),
                    resume: Resume::Keys { issuer, step },
                }),
            }),
            KeyWait::Wait { until } => Verdict::Wait(Wait {
                on: WaitKey::Keys(issuer),
                until,
                fetch: None,
            }),
            KeyWait::Unavailable(cause) => Verdict::Deny(Denial::KeysUnavailable {
                issuer: issuer_name(config, issuer),
                cause,
            }),
            // The caller looks again before it gets here; an adoption that
            // still lacks the key is as good as an unknown kid.
            KeyWait::Adopted | KeyWait::KidUnknown => {
                Verdict::Deny(Denial::InvalidToken(TokenProblem::Jwt(TokenError::Key(
                    KeyLookupError::UnknownKid(kid.unwrap_or_default()),
                ))))
            }
        }
    }
}

/// The endpoint `pick` takes from the issuer's discovery document: `None`
/// when the document is loaded and has none, or what the request must do
/// while it is not loaded (wait for the fetch, or a 503).
pub(super) fn discovered_endpoint(
    config: &Config,
    state: &mut State,
    issuer: usize,
    now: u64,
    pick: impl Fn(&Endpoints) -> &Option<Url>,
) -> Result<Option<Url>, Verdict> {
    let known = |state: &State| state.keys.discovered(issuer).and_then(|e| pick(e).clone());
    if let Some(endpoint) = known(state) {
        return Ok(Some(endpoint));
    }
    if state.keys.settled(issuer) {
        return Ok(None);
    }
    match state.keys.load_for_request(issuer, now) {
        // Another worker's document was just loaded.
        KeyWait::Adopted => Ok(known(state)),
        wait => Err(Verdict::from_key_wait(config, wait, issuer, None)),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::callout::CalloutReply;
    use crate::engine::test_support::*;
    use crate::engine::{verdict_for, Request};
    use crate::extract::tests::h;
    use crate::jwt::test_vectors::vectors;
    use crate::keys::FetchStep;

    fn starts_key_fetch(v: &Verdict) -> bool {
        matches!(
            v,
            Verdict::Wait(Wait {
                fetch: Some(Fetch {
                    resume: Resume::Keys { issuer: 0, .. },
                    ..
                }),
                ..
            })
        )
    }

    fn fetched_config() -> Config {
        Config::from_json(
            br#"{"issuers":[{"issuer":"https://issuer.test","audiences":["api"],"discovery":true,"upstream":"as","unknown_kid_refetch_seconds":30}]}"#,
            &|_| None,
        )
        .unwrap()
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
            Verdict::Deny(Denial::InvalidToken(TokenProblem::Jwt(TokenError::Expired)))
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
        assert_eq!(s.tokens.len(), 1);
        let request = Request {
            method: "GET",
            path: "/",
            headers: &bearer(&token),
            client: None,
            peer_certificate: None,
            routing: Default::default(),
            body: None,
        };
        // exp is 1700003600; the cache must not outlive it.
        assert!(matches!(
            verdict_for(&c, &mut s, &request, 1_700_003_600),
            Verdict::Allow(_)
        ));
        assert!(matches!(
            verdict_for(&c, &mut s, &request, 1_700_003_661),
            Verdict::Deny(Denial::InvalidToken(_))
        ));
    }

    #[test]
    fn before_keys_load_a_request_starts_the_fetch_and_others_wait_for_it() {
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        let token = vectors().token("good_RS256").to_string();
        let Verdict::Wait(Wait {
            fetch:
                Some(Fetch {
                    callout,
                    resume:
                        Resume::Keys {
                            issuer: 0,
                            step: FetchStep::Discovery,
                        },
                }),
            ..
        }) = run(&c, &mut s, &bearer(&token), "/")
        else {
            panic!("the first request starts the fetch")
        };
        let until = s.keys.awaited_until(0, now).unwrap();
        assert_eq!(callout.url.path, "/.well-known/openid-configuration");
        assert_eq!(callout.upstream, "as");
        assert_eq!(until, now + 11, "2 x fetch_timeout, rounded up");
        assert_eq!(
            run(&c, &mut s, &bearer(&token), "/"),
            Verdict::Wait(Wait {
                on: WaitKey::Keys(0),
                until,
                fetch: None
            }),
            "the next one waits for it"
        );
        assert!(s.keys.due(now).is_empty(), "one fetch at a time");

        let discovery = reply(
            200,
            r#"{"issuer":"https://issuer.test","jwks_uri":"https://issuer.test/keys"}"#,
        );
        let crate::keys::FetchProgress::Next(FetchStep::Jwks, jwks_call) =
            s.keys.on_reply(0, FetchStep::Discovery, &discovery, now)
        else {
            panic!()
        };
        assert_eq!(jwks_call.url.path, "/keys");
        let jwks = String::from_utf8(vectors().jwks).unwrap();
        assert!(matches!(
            s.keys.on_reply(0, FetchStep::Jwks, &reply(200, &jwks), now),
            crate::keys::FetchProgress::Loaded { .. }
        ));
        assert!(matches!(
            run(&c, &mut s, &bearer(&token), "/"),
            Verdict::Allow(_)
        ));
    }

    #[test]
    fn while_the_server_is_down_requests_retry_at_most_once_a_second() {
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        let token = vectors().token("good_RS256").to_string();
        let at = |s: &mut State, t: u64| {
            let request = Request {
                method: "GET",
                path: "/",
                headers: &bearer(&token),
                client: None,
                peer_certificate: None,
                routing: Default::default(),
                body: None,
            };
            verdict_for(&c, s, &request, t)
        };
        assert!(starts_key_fetch(&at(&mut s, now)));
        let _ = s
            .keys
            .on_reply(0, FetchStep::Discovery, &CalloutReply::default(), now);
        assert!(
            matches!(
                at(&mut s, now),
                Verdict::Deny(Denial::KeysUnavailable { .. })
            ),
            "the same second: 503, no second fetch"
        );
        assert!(
            starts_key_fetch(&at(&mut s, now + 1)),
            "a second later a request tries again, whatever the back-off"
        );
    }

    #[test]
    fn a_fetch_that_never_answers_does_not_block_later_fetches() {
        // The request that dispatched it was reset, so no reply ever comes.
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        assert_eq!(s.keys.due(now).len(), 1);
        assert!(
            s.keys.due(now + 5).is_empty(),
            "still awaited within 2 x fetch_timeout"
        );
        assert_eq!(s.keys.due(now + 11).len(), 1, "given up after the deadline");
    }

    #[test]
    fn a_refused_dispatch_is_named_in_the_503() {
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        let _ = s.keys.due(now);
        s.keys.on_dispatch_error(
            0,
            FetchStep::Discovery,
            "BadArgument (is `as` a configured cluster?)",
            now,
        );
        let token = vectors().token("good_RS256").to_string();
        let Verdict::Deny(Denial::KeysUnavailable { issuer, cause }) =
            run(&c, &mut s, &bearer(&token), "/")
        else {
            panic!()
        };
        assert_eq!(issuer, "https://issuer.test");
        assert!(
            cause.contains("OIDC discovery") && cause.contains("is `as` a configured cluster?"),
            "{cause}"
        );
    }

    #[test]
    fn failed_fetches_keep_old_keys_and_are_retried() {
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        // Kong reports a failed callout as a reply without status: a failure.
        let _ = s.keys.due(now);
        let failed = s
            .keys
            .on_reply(0, FetchStep::Discovery, &CalloutReply::default(), now);
        assert!(matches!(failed, crate::keys::FetchProgress::Failed(_)));
        assert!(s.keys.due(now).is_empty());
        assert_eq!(s.keys.due(now + 1).len(), 1, "first-load retry after 1 s");
        let jwks = String::from_utf8(vectors().jwks).unwrap();
        let _ = s
            .keys
            .on_reply(0, FetchStep::Jwks, &reply(200, &jwks), now + 1);
        let _ = s.keys.due(now + 400);
        for garbage in [
            reply(500, "oops"),
            reply(200, "<html>"),
            reply(200, r#"{"keys":[]}"#),
        ] {
            assert!(matches!(
                s.keys.on_reply(0, FetchStep::Jwks, &garbage, now + 400),
                crate::keys::FetchProgress::Failed(_)
            ));
        }
        assert!(s.keys.keys(0).is_some(), "last good keys survive");
    }

    #[test]
    fn unknown_kids_refetch_with_a_burst_allowance_and_waiters() {
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        let _ = s.keys.due(now);
        let jwks = String::from_utf8(vectors().jwks).unwrap();
        let loaded =
            |s: &mut State, t: u64| s.keys.on_reply(0, FetchStep::Jwks, &reply(200, &jwks), t);
        let _ = loaded(&mut s, now);
        let junk = bearer(vectors().token("unknown_kid"));
        let at = |s: &mut State, t: u64, headers: &[(String, String)]| {
            let request = Request {
                method: "GET",
                path: "/",
                headers,
                client: None,
                peer_certificate: None,
                routing: Default::default(),
                body: None,
            };
            verdict_for(&c, s, &request, t)
        };
        let t = now + 1;
        assert!(starts_key_fetch(&at(&mut s, t, &junk)));
        assert!(
            matches!(
                at(&mut s, t, &junk),
                Verdict::Wait(Wait {
                    on: WaitKey::Keys(0),
                    ..
                })
            ),
            "a second request with the kid waits for the refetch"
        );
        let _ = loaded(&mut s, t);
        let Verdict::Deny(denial) = at(&mut s, t + 5, &junk) else {
            panic!("the refetch did not find it: 401")
        };
        assert_eq!(denial.code(), "kid_unknown");
        // The junk kid spent one refetch; repeating it spends none, so a
        // genuinely new kid moments later still gets its refetch.
        let _ = at(&mut s, t + 6, &junk);
        // Another unknown kid: the lookup fails before any signature check.
        let other = {
            use ct_codecs::{Base64UrlSafeNoPadding, Encoder as _};
            let header =
                Base64UrlSafeNoPadding::encode_to_string(br#"{"alg":"RS256","kid":"rotated"}"#)
                    .unwrap();
            let good = vectors().token("good_RS256").to_string();
            let rest = good.split_once('.').unwrap().1;
            bearer(&format!("{header}.{rest}"))
        };
        assert!(starts_key_fetch(&at(&mut s, t + 7, &other)));
        // A refetch that fails is a 503, not a 401.
        let _ = s
            .keys
            .on_reply(0, FetchStep::Jwks, &reply(500, "down"), t + 7);
        assert!(matches!(
            at(&mut s, t + 7, &other),
            Verdict::Deny(Denial::KeysUnavailable { .. })
        ));
        assert!(
            s.keys.keys(0).is_some(),
            "the old keys still serve their tokens"
        );
    }

    #[test]
    fn claims_that_cannot_be_headers_reject_the_token_and_nothing_is_cached() {
        let c = hs_config(r#","forward":{"claims":{"sub":"x-jwt-sub"}}"#);
        let mut s = State::new(&c);
        for extra in [
            serde_json::json!({"sub": "alice\r\nx-admin: true"}),
            serde_json::json!({"client_id": "app\u{0}"}),
            serde_json::json!({"scope": "read a,b"}),
        ] {
            let token = hs_token(hs_claims(extra.clone()));
            let Verdict::Deny(denial) = run(&c, &mut s, &bearer(&token), "/") else {
                panic!("{extra} was let through")
            };
            assert_eq!(denial.code(), "claim_unusable", "{extra}");
        }
        assert!(s.tokens.is_empty());
        // A control character in a claim that is not sent upstream is harmless.
        let token = hs_token(hs_claims(serde_json::json!({"name": "a\nb"})));
        assert!(matches!(
            run(&c, &mut s, &bearer(&token), "/"),
            Verdict::Allow(_)
        ));
    }

    #[test]
    fn the_token_cache_holds_compact_grants_within_its_byte_budget() {
        let c = hs_config(r#","token_cache_bytes":65536"#);
        let mut s = State::new(&c);
        let groups: Vec<String> = (0..700).map(|i| format!("group-{i}")).collect();
        // 400 grants weigh more than 64 KiB on 32- and 64-bit targets alike.
        for i in 0..400 {
            let token = hs_token(hs_claims(
                serde_json::json!({"jti": format!("t{i}"), "groups": groups}),
            ));
            assert!(matches!(
                run(&c, &mut s, &bearer(&token), "/"),
                Verdict::Allow(_)
            ));
            assert!(s.tokens.bytes() <= 65536);
        }
        // The big `groups` claim is not forwarded, so it is not kept: a grant
        // weighs a few hundred bytes, not the ~10 KB of its claims.
        assert!(s.tokens.len() > 100, "{} cached", s.tokens.len());
        assert!(s.tokens.stats().evictions > 0);
    }

    #[test]
    fn cheap_checks_run_before_any_signature_work() {
        let c = inline_config("");
        let mut s = State::new(&c);
        let checks = count_signature_checks(&mut s);
        for name in [
            "wrong_iss",
            "wrong_aud",
            "expired",
            "not_yet_valid",
            "alg_none",
        ] {
            let headers = bearer(vectors().token(name));
            assert!(
                matches!(run(&c, &mut s, &headers, "/"), Verdict::Deny(_)),
                "{name}"
            );
        }
        assert_eq!(checks.get(), 0, "no signature was checked");
        let good = bearer(vectors().token("good_RS256"));
        assert!(matches!(run(&c, &mut s, &good, "/"), Verdict::Allow(_)));
        assert_eq!(checks.get(), 1, "the counter counts");
    }

    #[test]
    fn ps_for_a_key_without_alg_only_where_the_issuer_lists_it() {
        // Issue 18: an RSA JWK without `alg` let a caller pick PS512, whose
        // forgeries cost a pure-Rust check each. Refused now before any
        // signature work, and without an unknown-kid refetch: the kid is known.
        let jwks = String::from_utf8(vectors().jwks).unwrap();
        let ps512 = bearer(vectors().token("good_PS512"));
        for (algorithms, allowed) in [("", false), (r#","algorithms":["RS256","PS512"]"#, true)] {
            let c = Config::from_json(
                format!(
                    r#"{{"issuers":[{{"issuer":"https://issuer.test","audiences":["api"],"discovery":true,"upstream":"as"{algorithms}}}]}}"#
                )
                .as_bytes(),
                &|_| None,
            )
            .unwrap();
            let mut s = State::new(&c);
            let checks = count_signature_checks(&mut s);
            let now = vectors().now;
            let _ = s.keys.due(now);
            let _ = s.keys.on_reply(0, FetchStep::Jwks, &reply(200, &jwks), now);
            let verdict = run(&c, &mut s, &ps512, "/");
            if allowed {
                assert!(matches!(verdict, Verdict::Allow(_)), "{verdict:?}");
                assert_eq!(checks.get(), 1);
            } else {
                let Verdict::Deny(denial) = verdict else {
                    panic!("refused at once, no refetch: {verdict:?}")
                };
                assert_eq!(denial.code(), "algorithm_not_allowed");
                assert_eq!(checks.get(), 0, "no signature work");
                assert!(matches!(run(&c, &mut s, &good(), "/"), Verdict::Allow(_)));
            }
        }
    }

    #[test]
    fn a_repeated_forgery_costs_one_signature_check_per_minute() {
        let c = inline_config("");
        let mut s = State::new(&c);
        let checks = count_signature_checks(&mut s);
        let forged = bearer(vectors().token("bad_signature"));
        let at = |s: &mut State, t: u64| {
            let request = Request {
                method: "GET",
                path: "/",
                headers: &forged,
                client: None,
                peer_certificate: None,
                routing: Default::default(),
                body: None,
            };
            verdict_for(&c, s, &request, t)
        };
        let now = vectors().now;
        for _ in 0..5 {
            let Verdict::Deny(denial) = at(&mut s, now) else {
                panic!()
            };
            assert_eq!(denial.code(), "signature_invalid");
        }
        assert_eq!(checks.get(), 1, "answered from memory after the first");
        assert_eq!(s.rejected.stats().hits, 4);
        let _ = at(&mut s, now + REJECTED_CACHE_SECONDS);
        assert_eq!(checks.get(), 2, "remembered for a minute only");
        // A good token is never put there.
        let _ = run(&c, &mut s, &good(), "/");
        assert_eq!(s.rejected.len(), 1);
    }
}
