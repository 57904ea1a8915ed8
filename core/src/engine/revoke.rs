//! Revocations in the request path: the push receiver (a SET in, a deny
//! entry and a 202 out) and the check every authenticated token passes.

use std::rc::Rc;

use serde_json::Value;

use crate::cache::digest;
use crate::config::Config;
use crate::dpop::ReplayRefusal;
use crate::grant::{Grant, RevocationKeys};
use crate::jwks::KeyLookupError;
use crate::jwt::{numeric_date, TokenError, VerifiedToken};
use crate::keys::KeyWait;
use crate::metrics::{Counter, Gauge, SetResult};
use crate::response::{Denial, HttpResponse, TokenProblem};
use crate::revocation::deny::Denied;
use crate::revocation::set::{self, Expect, SetError};
use crate::revocation::{accepted, refused, Receiver, Revocation};
use crate::wait::{Note, WaitKey};

use super::fanout::{self, Push};
use super::{Allow, ReadBody, Receipt, Request, State, Verdict, Wait};

/// The receiver configured at `path`, if any.
pub(super) fn receiver_at<'c>(config: &'c Config, path: &str) -> Option<&'c Receiver> {
    config
        .revocation
        .as_ref()?
        .receiver
        .as_ref()
        .filter(|r| r.path == path)
}

/// A new grant of `token` with what revocations are checked against: its
/// `iat`, and the deny-set keys of its `sub` (not a client id standing in
/// for it) and `sid` (a string of at most 256 bytes). Nothing without a
/// `revocation` block.
pub(super) fn keyed(config: &Config, mut grant: Grant, token: &VerifiedToken) -> Grant {
    if let (Some(revocation), Some(issuer)) = (&config.revocation, config.issuers.get(grant.issuer))
    {
        let claims = token.claims();
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let sid = text("sid").filter(|sid| sid.len() <= 256);
        grant.revocation = Some(Box::new(RevocationKeys {
            // check_claims read it already (a number, not in the future).
            issued_at: numeric_date(claims, "iat").ok().flatten(),
            keys: revocation.token_keys(&issuer.issuer, text("sub"), sid),
        }));
    }
    grant
}

/// Refuses a token whose subject or session was revoked after its `iat`:
/// no hashing, no shared data, nothing at all while the set is empty.
pub(super) fn check(state: &State, grant: &Grant, now: u64) -> Result<(), Verdict> {
    let Some(r) = &grant.revocation else {
        return Ok(());
    };
    if Revocation::revoked(&state.deny, &r.keys, r.issued_at, now) {
        return Err(Verdict::Deny(Denial::InvalidToken(TokenProblem::Revoked)));
    }
    Ok(())
}

fn receipt(response: HttpResponse, note: Note, result: SetResult) -> Verdict {
    Verdict::Receipt(Box::new(Receipt {
        response,
        note,
        counters: vec![Counter::SecurityEvent(result)],
        gauges: Vec::new(),
    }))
}

/// A refusal the transmitter must not retry (400, 401, 405, 413). `why`
/// may quote the SET (a `kid`), unverified: control characters are
/// dropped and it is cut to 200 characters, in the answer and the log.
fn refuse(status: u32, err: &str, why: &str) -> Verdict {
    let why: String = why.chars().filter(|c| !c.is_control()).take(200).collect();
    let why = why.as_str();
    receipt(
        refused(status, err, why),
        Note::Info(format!("refused a security event: {status} {err}: {why}")),
        SetResult::Refused,
    )
}

/// A failure here, for the transmitter to retry (503). The cause (etcd's
/// answer, a cluster) goes to the log only.
pub(super) fn unavailable(why: &str) -> Verdict {
    receipt(
        refused(
            503,
            "temporarily_unavailable",
            "the security event cannot be stored right now: retry",
        ),
        Note::Warn(format!("could not take a security event: {why}")),
        SetResult::Unavailable,
    )
}

/// One push (RFC 8935 §2): method, authorization and content type from the
/// headers, then the body, then the SET's checks, the deny entries and the
/// `jti`, in that order, so that a transmitter's retry after a 503 is never
/// refused as a replay.
pub(super) fn receive(
    config: &Config,
    state: &mut State,
    receiver: &Receiver,
    request: &Request,
    now: u64,
) -> Verdict {
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if request.method != "POST" {
        return refuse(
            405,
            "invalid_request",
            "security events are pushed with POST",
        );
    }
    if !receiver.authorized(header("authorization")) {
        return refuse(
            401,
            "authentication_failed",
            "the receiver's authorization is missing or wrong",
        );
    }
    let media_type = header("content-type").map(|v| {
        v.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    });
    if media_type.as_deref() != Some("application/secevent+jwt") {
        return refuse(
            400,
            "invalid_request",
            "the content type must be application/secevent+jwt",
        );
    }
    let Some(body) = request.body else {
        // A proxy-wasm filter cannot read a body while it holds the headers
        // (Envoy stops both), so they go on first, without the receiver's
        // secret; the body is held, and the filter answers once it is read:
        // the upstream sees the request start and then a reset, never the SET.
        return Verdict::ReadBody(Box::new(ReadBody {
            allow: Allow {
                remove_headers: vec!["authorization".into()],
                ..Allow::default()
            },
            max_bytes: receiver.max_body_bytes,
            wait: Wait {
                on: WaitKey::Body,
                until: now.saturating_add(receiver.body_timeout_seconds),
                fetch: None,
            },
        }));
    };
    if body.len() > receiver.max_body_bytes {
        let why = format!("the SET is larger than {} bytes", receiver.max_body_bytes);
        return refuse(413, "invalid_request", &why);
    }
    let Ok(jws) = std::str::from_utf8(body).map(str::trim) else {
        return refuse(400, "invalid_request", "the body is not a compact JWS");
    };
    let (Some(revocation), Some(transmitter)) = (
        config.revocation.as_ref(),
        config.issuers.get(receiver.transmitter),
    ) else {
        return unavailable("the receiver's transmitter is not configured");
    };
    let expect = Expect {
        transmitter,
        audiences: &receiver.audiences,
        max_age_seconds: receiver.max_age_seconds,
        skew_seconds: config.rules.clock_skew_seconds,
    };
    // Every check that needs no key first: a junk SET costs no key fetch.
    if let Err(e) = set::precheck(jws, &expect, now) {
        return refuse(400, e.err(), &e.to_string());
    }
    let checked = match verify(config, state, receiver.transmitter, jws, &expect, true, now) {
        Ok(checked) => checked,
        Err(verdict) => return verdict,
    };
    take(
        config,
        state,
        revocation,
        receiver,
        &transmitter.issuer,
        checked,
        request.client,
        now,
    )
}

/// The signature against the transmitter's keys, loading them (a wait) or
/// refetching them for an unknown `kid` (once) as an access token would.
fn verify(
    config: &Config,
    state: &mut State,
    issuer: usize,
    jws: &str,
    expect: &Expect,
    retry_adopted: bool,
    now: u64,
) -> Result<set::Revocations, Verdict> {
    let keys = match state.keys.keys(issuer).map(Rc::clone) {
        Some(keys) => keys,
        None => match state.keys.load_for_request(issuer, now) {
            KeyWait::Adopted => match state.keys.keys(issuer).map(Rc::clone) {
                Some(keys) => keys,
                None => return Err(unavailable("the transmitter's keys are not loaded")),
            },
            KeyWait::Unavailable(cause) => {
                return Err(unavailable(&format!("the transmitter's keys: {cause}")))
            }
            wait => return Err(Verdict::from_key_wait(config, wait, issuer, None)),
        },
    };
    match set::verify(jws, expect, &keys, state.verifier.as_ref(), now) {
        Ok(checked) => Ok(checked),
        Err(SetError::Key(TokenError::Key(KeyLookupError::UnknownKid(kid)))) => {
            match state.keys.refetch_for_unknown_kid(issuer, &kid, now) {
                KeyWait::Adopted if retry_adopted => {
                    verify(config, state, issuer, jws, expect, false, now)
                }
                wait @ (KeyWait::Fetch { .. } | KeyWait::Wait { .. }) => {
                    Err(Verdict::from_key_wait(config, wait, issuer, Some(kid)))
                }
                _ => {
                    let e = SetError::Key(TokenError::Key(KeyLookupError::UnknownKid(kid)));
                    Err(refuse(400, e.err(), &e.to_string()))
                }
            }
        }
        Err(e) => Err(refuse(400, e.err(), &e.to_string())),
    }
}

/// The deny entries (here, then in etcd with a fan-out), then the `jti`:
/// a 503 before the `jti` is remembered leaves the transmitter's retry
/// welcome, and a `jti` seen already costs no etcd write.
#[allow(clippy::too_many_arguments)]
fn take(
    config: &Config,
    state: &mut State,
    revocation: &Revocation,
    receiver: &Receiver,
    transmitter: &str,
    checked: set::Revocations,
    client: Option<&str>,
    now: u64,
) -> Verdict {
    let replay_id = digest(&[transmitter.as_bytes(), checked.jti.as_bytes()]);
    let store = Rc::clone(&state.replay);
    if receiver.replay.seen(store.as_ref(), &replay_id, now) {
        return replayed();
    }
    // A revocation older than the retention has nothing left to refuse.
    let items: Vec<_> = checked
        .targets
        .iter()
        .map(|(target, at)| {
            let until = at.saturating_add(revocation.retention_seconds);
            (target.clone(), Denied { at: *at, until })
        })
        .filter(|(_, denied)| denied.until > now)
        .collect();
    let keyed: Vec<_> = items
        .iter()
        .map(|(target, denied)| (revocation.key(target), *denied))
        .collect();
    if !keyed.is_empty() {
        if let Err(e) = state
            .deny
            .add(store.as_ref(), &keyed, revocation.max_entries, now)
        {
            return unavailable(&e.to_string());
        }
    }
    // Remembered as long as a SET with this iat is taken at all.
    let replay_until = checked
        .iat
        .saturating_add(receiver.max_age_seconds)
        .saturating_add(config.rules.clock_skew_seconds)
        .saturating_add(1);
    let ttl = items
        .iter()
        .map(|(_, d)| d.until.saturating_sub(now))
        .max()
        .unwrap_or(0);
    let push = Push {
        writes: fanout::writes(config, &items).unwrap_or_default(),
        ttl: i64::try_from(ttl).unwrap_or(i64::MAX),
        replay_id,
        replay_until,
        revocations: items.len(),
        ignored: checked.ignored,
    };
    if push.writes.is_empty() {
        stored(config, state, &push, now)
    } else {
        fanout::push(config, state, push, client, now)
    }
}

fn replayed() -> Verdict {
    refuse(400, "invalid_request", "this jti was received already")
}

/// Once the entries are stored (here, and in etcd with a fan-out): the
/// `jti` is remembered and the SET taken.
pub(super) fn stored(config: &Config, state: &mut State, push: &Push, now: u64) -> Verdict {
    let Some(receiver) = config.revocation.as_ref().and_then(|r| r.receiver.as_ref()) else {
        return unavailable("no receiver is configured");
    };
    let store = Rc::clone(&state.replay);
    match receiver
        .replay
        .remember_key(store.as_ref(), &push.replay_id, push.replay_until, now)
    {
        Ok(()) => {}
        Err(ReplayRefusal::Replayed) => return replayed(),
        Err(ReplayRefusal::Unavailable) => return unavailable("the jti replay table has no room"),
    }
    let note = Note::Info(format!(
        "took a security event: {} revocation(s) stored{}, {} event(s) ignored",
        push.revocations,
        if push.writes.is_empty() {
            ""
        } else {
            " and written to etcd"
        },
        push.ignored
    ));
    Verdict::Receipt(Box::new(Receipt {
        response: accepted(),
        note,
        counters: vec![Counter::SecurityEvent(SetResult::Accepted)],
        gauges: vec![(Gauge::DenyEntries, state.deny.len() as u64)],
    }))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use serde_json::{json, Value};

    use super::*;
    use crate::engine::test_support::*;
    use crate::engine::verdict_for;
    use crate::extract::tests::h;
    use crate::jwt::test_vectors::vectors;
    use crate::metrics::testing::FakeMetrics;
    use crate::revocation::set::tests::sign;
    use crate::revocation::set::ACCOUNT_DISABLED;

    const RECEIVER: &str = r#","revocation":{"receiver":{"path":"/ssf","transmitter":"https://hs.test","audience":"gw"},"retention_seconds":3600}"#;

    fn set(claims: Value) -> String {
        sign(
            &json!({"typ": "secevent+jwt", "alg": "HS256"}),
            &claims,
            vectors().hs_secret.as_bytes(),
        )
    }

    fn disable(sub: &str, jti: &str) -> Value {
        json!({"iss": "https://hs.test", "aud": "gw", "iat": vectors().now, "jti": jti,
               "events": {ACCOUNT_DISABLED: {"subject": {"format": "iss_sub", "iss": "https://hs.test", "sub": sub}}}})
    }

    fn post(c: &Config, s: &mut State, body: Option<&[u8]>) -> Verdict {
        let headers = h(&[("content-type", "application/secevent+jwt")]);
        let request = Request {
            method: "POST",
            body,
            ..get("/ssf", &headers, None)
        };
        verdict_for(c, s, &request, vectors().now)
    }

    fn status(v: &Verdict) -> (u32, String) {
        match v {
            Verdict::Receipt(r) => {
                let body: Value = serde_json::from_slice(&r.response.body).unwrap_or(Value::Null);
                (
                    r.response.status,
                    body["err"].as_str().unwrap_or("").to_string(),
                )
            }
            other => panic!("not a receipt: {other:?}"),
        }
    }

    fn token(extra: Value) -> Vec<(String, String)> {
        bearer(&hs_token(hs_claims(extra)))
    }

    #[test]
    fn a_pushed_set_refuses_the_subjects_earlier_tokens_cached_or_not() {
        let c = hs_config(RECEIVER);
        let mut s = State::new(&c);
        let now = vectors().now;
        let before = token(json!({"iat": now - 10}));
        assert!(
            matches!(run(&c, &mut s, &before, "/"), Verdict::Allow(_)),
            "cached now"
        );

        // The headers first: the body is read, the secret-bearing header dropped.
        let Verdict::ReadBody(read) = post(&c, &mut s, None) else {
            panic!("the body is read")
        };
        assert_eq!(read.allow.remove_headers, vec!["authorization".to_string()]);
        assert_eq!(read.max_bytes, 16_384);

        let body = set(disable("alice", "j-1"));
        assert_eq!(
            status(&post(&c, &mut s, Some(body.as_bytes()))),
            (202, String::new())
        );
        let revoked = Verdict::Deny(Denial::InvalidToken(TokenProblem::Revoked));
        assert_eq!(
            run(&c, &mut s, &before, "/"),
            revoked,
            "the cached grant too"
        );
        assert_eq!(run(&c, &mut s, &token(json!({})), "/"), revoked, "no iat");
        assert!(matches!(
            run(&c, &mut s, &token(json!({"iat": now + 1})), "/"),
            Verdict::Allow(_)
        ));
        assert!(matches!(
            run(
                &c,
                &mut s,
                &token(json!({"iat": now - 10, "sub": "bob"})),
                "/"
            ),
            Verdict::Allow(_)
        ));
        // The same SET again: a replay, whatever else.
        assert_eq!(
            status(&post(&c, &mut s, Some(body.as_bytes()))),
            (400, "invalid_request".into())
        );
    }

    #[test]
    fn another_workers_revocation_is_taken_on_the_tick() {
        let c = hs_config(RECEIVER);
        let store = std::rc::Rc::new(crate::services::testing::MemoryStore::default());
        let (mut a, mut b) = (State::new(&c), State::new(&c));
        a.share_through(store.clone(), 1);
        b.share_through(store, 2);
        let t = token(json!({"iat": vectors().now - 10}));
        assert!(matches!(run(&c, &mut b, &t, "/"), Verdict::Allow(_)));
        let body = set(disable("alice", "j-2"));
        assert_eq!(status(&post(&c, &mut a, Some(body.as_bytes()))).0, 202);
        assert!(
            matches!(run(&c, &mut b, &t, "/"), Verdict::Allow(_)),
            "not before b's tick"
        );
        let metrics = FakeMetrics::default();
        crate::engine::due(&c, &mut b, &metrics, vectors().now * 1000);
        assert_eq!(metrics.gauge(Gauge::DenyEntries), Some(1));
        assert_eq!(
            run(&c, &mut b, &t, "/"),
            Verdict::Deny(Denial::InvalidToken(TokenProblem::Revoked))
        );
        // Either worker refuses the SET's replay.
        assert_eq!(status(&post(&c, &mut b, Some(body.as_bytes()))).0, 400);
    }

    #[test]
    fn a_set_failing_a_cheap_check_costs_no_signature_work() {
        let c = hs_config(RECEIVER);
        let mut s = State::new(&c);
        let checks = count_signature_checks(&mut s);
        let mut claims = disable("alice", "j-3");
        claims["aud"] = json!("other");
        let body = set(claims);
        assert_eq!(
            status(&post(&c, &mut s, Some(body.as_bytes()))),
            (400, "invalid_audience".into())
        );
        assert_eq!(checks.get(), 0);
        let forged = sign(
            &json!({"typ": "secevent+jwt", "alg": "HS256"}),
            &disable("alice", "j-4"),
            b"not-the-transmitter-secret-000000",
        );
        assert_eq!(
            status(&post(&c, &mut s, Some(forged.as_bytes()))),
            (400, "invalid_key".into())
        );
        assert_eq!(checks.get(), 1);
        // Nothing was revoked by either.
        assert!(matches!(
            run(&c, &mut s, &token(json!({"iat": vectors().now - 10})), "/"),
            Verdict::Allow(_)
        ));
    }

    #[test]
    fn the_receiver_refuses_other_methods_types_and_secrets_before_the_body() {
        let env = |name: &str| (name == "T").then(|| "0123456789abcdef-secret".to_string());
        let json = format!(
            r#"{{"issuers":[{{"issuer":"https://hs.test","audiences":["api"],"shared_secret":"{}"}}],"revocation":{{"receiver":{{"path":"/ssf","transmitter":"https://hs.test","audience":"gw","auth_token_env":"T"}}}}}}"#,
            vectors().hs_secret
        );
        let c = Config::from_json(json.as_bytes(), &env).unwrap();
        let mut s = State::new(&c);
        let ask = |s: &mut State, method: &str, headers: &[(&str, &str)]| {
            let headers = h(headers);
            let request = Request {
                method,
                ..get("/ssf", &headers, None)
            };
            verdict_for(&c, s, &request, vectors().now)
        };
        let ct = ("content-type", "application/secevent+jwt");
        let auth = ("authorization", "Bearer 0123456789abcdef-secret");
        assert_eq!(
            status(&ask(&mut s, "GET", &[ct, auth])),
            (405, "invalid_request".into())
        );
        assert_eq!(
            status(&ask(&mut s, "POST", &[ct])),
            (401, "authentication_failed".into())
        );
        assert_eq!(
            status(&ask(
                &mut s,
                "POST",
                &[("content-type", "application/json"), auth]
            )),
            (400, "invalid_request".into())
        );
        assert!(matches!(
            ask(&mut s, "POST", &[ct, auth]),
            Verdict::ReadBody(_)
        ));
    }
}
