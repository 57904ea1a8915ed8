//! Security event tokens (RFC 8417) from a Shared Signals transmitter: the
//! checks that need no key first (`typ`, `iss`, `aud`, `iat`, `jti`,
//! `events`), then the signature against the transmitter's keys, then what
//! the events revoke (CAEP and RISC event types, RFC 9493 subjects).

use std::fmt;

use serde_json::{Map, Value};

use crate::issuer::Issuer;
use crate::jwks::KeySet;
use crate::jwt::{is_secevent_typ, numeric_date, unverified_parts, verify_jws, TokenError};
use crate::verify::SignatureVerifier;

pub const SESSION_REVOKED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
pub const CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";
pub const ACCOUNT_DISABLED: &str =
    "https://schemas.openid.net/secevent/risc/event-type/account-disabled";
pub const SESSIONS_REVOKED: &str =
    "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked";

/// The most events one SET may carry (a 16 KiB body holds few anyway).
const MAX_EVENTS: usize = 16;
/// The longest `jti`, subject and session id taken.
const MAX_ID_BYTES: usize = 256;
/// An `event_timestamp` beyond this is read as milliseconds (CAEP's
/// examples write them so): 10^11 seconds is the year 5138.
const MILLISECONDS_FROM: u64 = 100_000_000_000;

/// What a revocation names: every token of a user of an issuer, or every
/// token of one session (the token's `sid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Subject { iss: String, sub: String },
    Session { iss: String, sid: String },
}

/// A SET that passed every check: its `jti` and `iat`, and what it revokes
/// (each with the time tokens issued before are refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocations {
    pub jti: String,
    pub iat: u64,
    pub targets: Vec<(Target, u64)>,
    /// Event types it carries that revoke nothing here (ignored, RFC 8417 §2.2).
    pub ignored: usize,
}

/// Why a SET is refused, with its RFC 8935 §2.4 error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetError {
    Malformed(String),
    /// The signature, the key or the algorithm.
    Key(TokenError),
    Issuer,
    Audience,
    /// `iat` older than `max_age_seconds`, or in the future.
    Time(&'static str),
    /// A subject format or shape this receiver cannot act on.
    Subject(String),
}

impl SetError {
    /// RFC 8935 §2.4's `err`.
    pub fn err(&self) -> &'static str {
        match self {
            SetError::Malformed(_) | SetError::Time(_) | SetError::Subject(_) => "invalid_request",
            SetError::Key(_) => "invalid_key",
            SetError::Issuer => "invalid_issuer",
            SetError::Audience => "invalid_audience",
        }
    }
}

impl fmt::Display for SetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetError::Malformed(why) => write!(f, "the SET is malformed: {why}"),
            SetError::Key(e) => write!(f, "{e}"),
            SetError::Issuer => f.write_str("the SET's iss is not the configured transmitter"),
            SetError::Audience => f.write_str("the SET's aud names no configured audience"),
            SetError::Time(why) => write!(f, "the SET's iat is {why}"),
            SetError::Subject(why) => write!(f, "{why}"),
        }
    }
}

fn malformed(why: impl Into<String>) -> SetError {
    SetError::Malformed(why.into())
}

/// What the checks compare a SET with.
pub struct Expect<'a> {
    pub transmitter: &'a Issuer,
    pub audiences: &'a [String],
    pub max_age_seconds: u64,
    pub skew_seconds: u64,
}

/// Every check but the signature, cheapest first: a SET that fails one
/// costs no signature work.
pub fn precheck(jws: &str, expect: &Expect, now: u64) -> Result<Revocations, SetError> {
    let (header, claims) = unverified_parts(jws).map_err(|e| malformed(e.to_string()))?;
    match header.get("typ").and_then(Value::as_str) {
        Some(typ) if is_secevent_typ(typ) => {}
        _ => return Err(malformed("typ must be secevent+jwt (RFC 8417 §2.3)")),
    }
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == expect.transmitter.issuer => {}
        Some(Value::String(_)) => return Err(SetError::Issuer),
        _ => return Err(malformed("iss must be a string")),
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(aud)) => expect.audiences.contains(aud),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .any(|a| expect.audiences.iter().any(|x| x == a)),
        _ => false,
    };
    if !aud_ok {
        return Err(SetError::Audience);
    }
    let date = |name| numeric_date(&claims, name).map_err(|e| malformed(e.to_string()));
    let iat = date("iat")?.ok_or_else(|| malformed("iat is required"))?;
    let skew = expect.skew_seconds;
    if iat > now.saturating_add(skew) {
        return Err(SetError::Time("in the future"));
    }
    if now.saturating_sub(iat) > expect.max_age_seconds.saturating_add(skew) {
        return Err(SetError::Time("older than the receiver's max_age_seconds"));
    }
    // RFC 8417 §2.2 asks for no exp; one that is there is honoured.
    if date("exp")?.is_some_and(|exp| now > exp.saturating_add(skew)) {
        return Err(SetError::Time("past the SET's exp"));
    }
    let jti = match claims.get("jti") {
        Some(Value::String(jti)) if !jti.is_empty() && jti.len() <= MAX_ID_BYTES => jti.clone(),
        _ => return Err(malformed("jti must be a string of 1 to 256 bytes")),
    };
    let (targets, ignored) = targets(&claims, &expect.transmitter.issuer, iat, now)?;
    Ok(Revocations {
        jti,
        iat,
        targets,
        ignored,
    })
}

/// [`precheck`], then the signature against the transmitter's `keys`.
pub fn verify(
    jws: &str,
    expect: &Expect,
    keys: &KeySet,
    verifier: &dyn SignatureVerifier,
    now: u64,
) -> Result<Revocations, SetError> {
    let checked = precheck(jws, expect, now)?;
    verify_jws(jws, &expect.transmitter.algorithms, keys, verifier).map_err(|e| match e {
        TokenError::Malformed(why) => malformed(why),
        other => SetError::Key(other),
    })?;
    Ok(checked)
}

/// What revokes what: a session-revoked event names a session (or, with a
/// user and no session, every session of the user); credential-change,
/// account-disabled and sessions-revoked name the user.
fn targets(
    claims: &Map<String, Value>,
    transmitter: &str,
    iat: u64,
    now: u64,
) -> Result<(Vec<(Target, u64)>, usize), SetError> {
    let events = match claims.get("events") {
        Some(Value::Object(events)) if !events.is_empty() => events,
        _ => return Err(malformed("events must be a non-empty object")),
    };
    if events.len() > MAX_EVENTS {
        return Err(malformed(format!("more than {MAX_EVENTS} events")));
    }
    let mut targets = Vec::new();
    let mut ignored = 0;
    for (kind, event) in events {
        let session = match kind.as_str() {
            SESSION_REVOKED => true,
            CREDENTIAL_CHANGE | ACCOUNT_DISABLED | SESSIONS_REVOKED => false,
            _ => {
                ignored += 1;
                continue;
            }
        };
        let Value::Object(event) = event else {
            return Err(malformed("an event must be an object"));
        };
        // The event's own subject (RISC, early CAEP), else SSF's sub_id.
        let subject = event
            .get("subject")
            .or_else(|| claims.get("sub_id"))
            .ok_or_else(|| SetError::Subject("the event names no subject".into()))?;
        let target = if session {
            session_target(subject, transmitter)?
        } else {
            user_target(subject)?
        };
        // When it happened, if said; never later than now (a future time
        // would refuse tokens not issued yet).
        let at = match numeric_date(event, "event_timestamp") {
            Ok(Some(t)) if t >= MILLISECONDS_FROM => t / 1000,
            Ok(Some(t)) => t,
            Ok(None) => iat,
            Err(_) => return Err(malformed("event_timestamp must be a number")),
        };
        targets.push((target, at.min(now)));
    }
    Ok((targets, ignored))
}

/// A subject identifier's text member (at most [`MAX_ID_BYTES`]).
fn text<'v>(id: &'v Map<String, Value>, name: &str) -> Result<&'v str, SetError> {
    match id.get(name) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_BYTES => Ok(s),
        _ => Err(SetError::Subject(format!(
            "the subject's {name} must be a string of 1 to {MAX_ID_BYTES} bytes"
        ))),
    }
}

fn format_of(id: &Map<String, Value>) -> Option<&str> {
    id.get("format").and_then(Value::as_str)
}

fn unsupported(format: &str) -> SetError {
    // Echoed in the answer and the log before any signature check: letters,
    // digits and `_` only, at most 32 of them.
    let shown: String = format
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(32)
        .collect();
    SetError::Subject(format!(
        "subject format \"{shown}\" is not supported (iss_sub users, opaque session ids, or a complex subject with them)"
    ))
}

/// A user: `iss_sub`, or a complex subject's `user` that is one.
fn user_target(subject: &Value) -> Result<Target, SetError> {
    let Value::Object(id) = subject else {
        return Err(SetError::Subject("the subject must be an object".into()));
    };
    match format_of(id) {
        Some("iss_sub") => Ok(Target::Subject {
            iss: text(id, "iss")?.to_string(),
            sub: text(id, "sub")?.to_string(),
        }),
        Some(other) => Err(unsupported(other)),
        None => match id.get("user") {
            Some(user) => user_target(user),
            None => Err(SetError::Subject(
                "a complex subject without a user names no one this receiver can revoke".into(),
            )),
        },
    }
}

/// A session: an `opaque` id (of the transmitter's sessions), or a complex
/// subject's `session` (of its `user`'s issuer when that is `iss_sub`); a
/// user without a session stands for all of them.
fn session_target(subject: &Value, transmitter: &str) -> Result<Target, SetError> {
    let Value::Object(id) = subject else {
        return Err(SetError::Subject("the subject must be an object".into()));
    };
    match format_of(id) {
        Some("opaque") => Ok(Target::Session {
            iss: transmitter.to_string(),
            sid: text(id, "id")?.to_string(),
        }),
        Some("iss_sub") => user_target(subject),
        Some(other) => Err(unsupported(other)),
        None => {
            let user = id.get("user").map(user_target).transpose()?;
            match id.get("session") {
                Some(Value::Object(session)) if format_of(session) == Some("opaque") => {
                    let iss = match user {
                        Some(Target::Subject { iss, .. }) => iss,
                        _ => transmitter.to_string(),
                    };
                    Ok(Target::Session {
                        iss,
                        sid: text(session, "id")?.to_string(),
                    })
                }
                Some(Value::Object(session)) => {
                    Err(unsupported(format_of(session).unwrap_or("(none)")))
                }
                Some(_) => Err(SetError::Subject("session must be an object".into())),
                None => user.ok_or_else(|| {
                    SetError::Subject("a complex subject names neither a user nor a session".into())
                }),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use ct_codecs::{Base64UrlSafeNoPadding, Encoder as _};
    use serde_json::json;

    use super::*;
    use crate::config::Config;
    use crate::verify::PureRustVerifier;

    const NOW: u64 = 1_700_000_000;
    const SECRET: &[u8] = b"a-transmitter-secret-of-32-bytes";

    fn config() -> Config {
        Config::from_json(
            br#"{"issuers":[{"issuer":"https://idp.test","audiences":["api"],"algorithms":["HS256"],"shared_secret":"a-transmitter-secret-of-32-bytes"}]}"#,
            &|_| None,
        )
        .unwrap()
    }

    /// An HS256 JWS over `header` and `claims`, signed with `key`.
    pub(crate) fn sign(header: &Value, claims: &Value, key: &[u8]) -> String {
        let b64 = |v: &Value| Base64UrlSafeNoPadding::encode_to_string(v.to_string()).unwrap();
        let input = format!("{}.{}", b64(header), b64(claims));
        let mac = hmac_sha256::HMAC::mac(input.as_bytes(), key);
        format!(
            "{input}.{}",
            Base64UrlSafeNoPadding::encode_to_string(mac).unwrap()
        )
    }

    fn header() -> Value {
        json!({"typ": "secevent+jwt", "alg": "HS256"})
    }

    fn claims(events: Value) -> Value {
        json!({"iss": "https://idp.test", "aud": "https://pep.test", "iat": NOW - 5,
               "jti": "set-1", "events": events})
    }

    fn check(header: &Value, claims: &Value, key: &[u8]) -> Result<Revocations, SetError> {
        let c = config();
        let issuer = &c.issuers[0];
        let keys = match &issuer.source {
            crate::issuer::KeySource::Static(keys) => keys.clone(),
            _ => panic!("static keys"),
        };
        let audiences = ["https://pep.test".to_string()];
        let expect = Expect {
            transmitter: issuer,
            audiences: &audiences,
            max_age_seconds: 300,
            skew_seconds: 60,
        };
        verify(
            &sign(header, claims, key),
            &expect,
            &keys,
            &PureRustVerifier,
            NOW,
        )
    }

    fn user(sub: &str) -> Value {
        json!({"format": "iss_sub", "iss": "https://idp.test", "sub": sub})
    }

    #[test]
    fn each_supported_event_revokes_its_subject_or_session() {
        let set = check(
            &header(),
            &json!({"iss": "https://idp.test", "aud": ["x", "https://pep.test"], "iat": NOW - 5,
                    "jti": "set-1", "sub_id": user("alice"),
                    "events": {CREDENTIAL_CHANGE: {"credential_type": "password",
                                                   "change_type": "update",
                                                   "event_timestamp": NOW - 30}}}),
            SECRET,
        )
        .unwrap();
        assert_eq!(set.jti, "set-1");
        assert_eq!(
            set.targets,
            vec![(
                Target::Subject {
                    iss: "https://idp.test".into(),
                    sub: "alice".into()
                },
                NOW - 30
            )]
        );

        let session = |subject: Value| {
            check(
                &header(),
                &claims(json!({SESSION_REVOKED: {"subject": subject,
                                                 "event_timestamp": (NOW - 2) * 1000}})),
                SECRET,
            )
            .map(|s| s.targets)
        };
        let sid = |iss: &str| {
            Ok(vec![(
                Target::Session {
                    iss: iss.into(),
                    sid: "s-1".into(),
                },
                NOW - 2,
            )])
        };
        assert_eq!(
            session(json!({"format": "opaque", "id": "s-1"})),
            sid("https://idp.test"),
            "an opaque id is a session of the transmitter; milliseconds read as such"
        );
        assert_eq!(
            session(
                json!({"user": {"format": "iss_sub", "iss": "https://other.test", "sub": "a"},
                           "session": {"format": "opaque", "id": "s-1"}})
            ),
            sid("https://other.test"),
            "a complex subject's session belongs to its user's issuer"
        );
        assert_eq!(
            session(json!({"user": user("bob")})),
            Ok(vec![(
                Target::Subject {
                    iss: "https://idp.test".into(),
                    sub: "bob".into()
                },
                NOW - 2
            )]),
            "a user without a session: all of them"
        );
        for kind in [ACCOUNT_DISABLED, SESSIONS_REVOKED] {
            let set = check(
                &header(),
                &claims(json!({kind: {"subject": user("carol")}})),
                SECRET,
            )
            .unwrap();
            assert_eq!(set.targets.len(), 1, "{kind}");
            assert_eq!(
                set.targets[0].1,
                NOW - 5,
                "no event_timestamp: the SET's iat"
            );
        }
    }

    #[test]
    fn unknown_events_are_ignored_and_unsupported_subjects_refused() {
        let set = check(
            &header(),
            &claims(json!({"https://example.test/event": {}})),
            SECRET,
        )
        .unwrap();
        assert_eq!((set.targets.len(), set.ignored), (0, 1));
        let email = check(
            &header(),
            &claims(json!({ACCOUNT_DISABLED: {"subject": {"format": "email", "email": "a@b"}}})),
            SECRET,
        );
        assert!(matches!(email, Err(SetError::Subject(_))), "{email:?}");
        let nobody = check(&header(), &claims(json!({ACCOUNT_DISABLED: {}})), SECRET);
        assert!(matches!(nobody, Err(SetError::Subject(_))));
        assert_eq!(nobody.unwrap_err().err(), "invalid_request");
    }

    #[test]
    fn each_bad_set_gets_its_rfc_8935_code() {
        let events = json!({ACCOUNT_DISABLED: {"subject": user("alice")}});
        let good = claims(events.clone());
        let with = |k: &str, v: Value| {
            let mut c = good.clone();
            c[k] = v;
            c
        };
        let cases: Vec<(Value, Value, &[u8], &str)> = vec![
            (
                header(),
                good.clone(),
                b"another-secret-another-secret-32",
                "invalid_key",
            ),
            (
                json!({"alg": "HS256"}),
                good.clone(),
                SECRET,
                "invalid_request",
            ),
            (
                json!({"typ": "JWT", "alg": "HS256"}),
                good.clone(),
                SECRET,
                "invalid_request",
            ),
            (
                json!({"typ": "secevent+jwt", "alg": "RS256"}),
                good.clone(),
                SECRET,
                "invalid_key",
            ),
            (
                header(),
                with("iss", json!("https://evil.test")),
                SECRET,
                "invalid_issuer",
            ),
            (
                header(),
                with("aud", json!("https://other.test")),
                SECRET,
                "invalid_audience",
            ),
            (
                header(),
                with("iat", json!(NOW - 400)),
                SECRET,
                "invalid_request",
            ),
            (
                header(),
                with("iat", json!(NOW + 120)),
                SECRET,
                "invalid_request",
            ),
            (header(), with("jti", json!(7)), SECRET, "invalid_request"),
            (
                header(),
                with("events", json!({})),
                SECRET,
                "invalid_request",
            ),
            (
                header(),
                with("exp", json!(NOW - 100)),
                SECRET,
                "invalid_request",
            ),
        ];
        for (h, c, key, err) in cases {
            let got = check(&h, &c, key);
            assert_eq!(
                got.as_ref().map_err(SetError::err),
                Err(err),
                "{h} {c}: {got:?}"
            );
        }
        let mut no_iat = good.clone();
        no_iat.as_object_mut().unwrap().remove("iat");
        assert_eq!(
            check(&header(), &no_iat, SECRET).unwrap_err().err(),
            "invalid_request"
        );
    }

    #[test]
    fn a_set_is_never_an_access_token() {
        let c = config();
        let token = sign(
            &header(),
            &json!({"iss": "https://idp.test", "aud": "api", "exp": NOW + 60, "sub": "a"}),
            SECRET,
        );
        assert!(matches!(
            crate::jwt::precheck(&token, &c.issuers, &c.rules, NOW),
            Err(TokenError::Malformed(_))
        ));
    }
}
