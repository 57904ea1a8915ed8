//! Signed introspection answers (RFC 9701): with `introspection.response:
//! "jwt"` the filter asks for `application/token-introspection+jwt` and
//! accepts only a JWT that the issuer signed with one of its keys (the key
//! set its access tokens are checked with), whose `typ` is
//! `token-introspection+jwt`, `iss` the issuer, `aud` the gateway's client
//! id, and `iat` fresh; the RFC 7662 members are read from its
//! `token_introspection` claim. Anything else is a fault (503), never a pass
//! and never cached. Such a JWT is never accepted as an access token
//! ([`crate::jwt::precheck`] refuses its `typ`).

use std::fmt;

use serde_json::Value;

use crate::callout::{CalloutError, CalloutReply};
use crate::introspection::{read_answer, Answer, IntrospectionError};
use crate::issuer::Issuer;
use crate::jwks::KeySet;
use crate::jwt::{is_introspection_typ, looks_like_jwt, verify_jws, TokenError};
use crate::verify::SignatureVerifier;

/// How old (beyond the clock skew) a signed answer's `iat` may be: it
/// answers this request, so it is seconds old at most; an older one is a
/// replay.
pub const MAX_AGE_SECONDS: u64 = 60;

/// Why a signed answer was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedAnswerError {
    Callout(CalloutError),
    /// Plain JSON (or anything else) where a JWT was asked for.
    NotAJwt,
    /// The issuer's keys are not loaded.
    NoKeys,
    Jws(TokenError),
    Typ,
    Issuer,
    Audience,
    Iat,
    NoIntrospection,
    Answer(IntrospectionError),
}

impl fmt::Display for SignedAnswerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = "the signed introspection answer";
        match self {
            SignedAnswerError::Callout(e) => write!(f, "{e}"),
            SignedAnswerError::NotAJwt => {
                write!(f, "the answer is not a JWT (RFC 9701 was asked for)")
            }
            SignedAnswerError::NoKeys => {
                write!(
                    f,
                    "the issuer's keys, which sign its answers, are not loaded"
                )
            }
            SignedAnswerError::Jws(e) => write!(f, "{what}: {e}"),
            SignedAnswerError::Typ => {
                write!(f, "{what} has no typ token-introspection+jwt")
            }
            SignedAnswerError::Issuer => write!(f, "{what}'s iss is not the issuer"),
            SignedAnswerError::Audience => {
                write!(f, "{what}'s aud is not the gateway's client id")
            }
            SignedAnswerError::Iat => write!(
                f,
                "{what}'s iat is missing, in the future or older than {MAX_AGE_SECONDS} s"
            ),
            SignedAnswerError::NoIntrospection => {
                write!(f, "{what} has no token_introspection object")
            }
            SignedAnswerError::Answer(e) => write!(f, "{what}: {e}"),
        }
    }
}

/// The answer of `issuer`'s endpoint to the gateway's client `client_id`,
/// checked as the module's doc says; `keys` are the issuer's keys, if loaded.
pub fn read(
    reply: &CalloutReply,
    issuer: &Issuer,
    client_id: &str,
    keys: Option<&KeySet>,
    verifier: &dyn SignatureVerifier,
    skew: u64,
    now: u64,
) -> Result<Answer, SignedAnswerError> {
    let body = reply
        .small_success_body()
        .map_err(SignedAnswerError::Callout)?;
    let jws = std::str::from_utf8(body)
        .map(str::trim)
        .map_err(|_| SignedAnswerError::NotAJwt)?;
    if !looks_like_jwt(jws) {
        return Err(SignedAnswerError::NotAJwt);
    }
    let keys = keys.ok_or(SignedAnswerError::NoKeys)?;
    let (header, claims) =
        verify_jws(jws, &issuer.algorithms, keys, verifier).map_err(SignedAnswerError::Jws)?;
    if !header
        .get("typ")
        .and_then(Value::as_str)
        .is_some_and(is_introspection_typ)
    {
        return Err(SignedAnswerError::Typ);
    }
    if claims.get("iss").and_then(Value::as_str) != Some(issuer.issuer.as_str()) {
        return Err(SignedAnswerError::Issuer);
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == client_id,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(client_id)),
        _ => false,
    };
    if !audience_ok {
        return Err(SignedAnswerError::Audience);
    }
    let fresh = claims
        .get("iat")
        .and_then(Value::as_f64)
        .filter(|iat| iat.is_finite() && *iat >= 0.0)
        .is_some_and(|iat| {
            let iat = iat as u64;
            iat <= now.saturating_add(skew)
                && now <= iat.saturating_add(MAX_AGE_SECONDS).saturating_add(skew)
        });
    if !fresh {
        return Err(SignedAnswerError::Iat);
    }
    match claims.get("token_introspection") {
        Some(Value::Object(answer)) => {
            read_answer(answer.clone()).map_err(SignedAnswerError::Answer)
        }
        _ => Err(SignedAnswerError::NoIntrospection),
    }
}
