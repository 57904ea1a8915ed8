//! JWT access-token verification, cheapest checks first: shape, header `alg`,
//! `iss`, the issuer's allowed algorithms, time claims, `aud`, lifetime, then the
//! key lookup and only then the (slow, ~0.5 ms in wasm) signature check.
//!
//! Only [`Unverified::verify`] can build a [`VerifiedToken`], so nothing
//! downstream can mistake parsed claims for verified ones.

use std::fmt;

use ct_codecs::{Base64UrlSafeNoPadding, Decoder as _, Encoder as _};
use serde_json::{Map, Value};

use crate::alg::Alg;
use crate::extract::MAX_TOKEN_BYTES;
use crate::issuer::{AccessTokenProfile, Issuer};
use crate::jwks::{KeyLookupError, KeySet};
use crate::verify::{SignatureVerifier, VerifyError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtRules {
    pub clock_skew_seconds: u64,
    pub max_lifetime_seconds: Option<u64>,
    pub require_exp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Malformed(&'static str),
    UnsupportedAlg(String),
    AlgNotAllowed(Alg),
    MissingIssuer,
    UnknownIssuer(String),
    MissingExp,
    Expired,
    NotYetValid,
    IssuedInFuture,
    LifetimeTooLong {
        seconds: u64,
        max: u64,
    },
    WrongAudience,
    Key(KeyLookupError),
    BadSignature,
    Signature(VerifyError),
    /// An introspection answer's `token_type` names something other than a
    /// bearer access token (a refresh token, a DPoP-bound token).
    NotAnAccessToken(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Malformed(why) => write!(f, "the token is malformed: {why}"),
            TokenError::UnsupportedAlg(alg) => {
                write!(f, "the token algorithm \"{alg}\" is not accepted")
            }
            TokenError::AlgNotAllowed(alg) => write!(
                f,
                "the token algorithm {alg} is not allowed for this issuer"
            ),
            TokenError::MissingIssuer => write!(f, "the token has no iss claim"),
            TokenError::UnknownIssuer(iss) => {
                write!(f, "the token issuer \"{iss}\" is not trusted")
            }
            TokenError::MissingExp => write!(f, "the token has no exp claim"),
            TokenError::Expired => write!(f, "the token has expired"),
            TokenError::NotYetValid => write!(f, "the token is not valid yet (nbf)"),
            TokenError::IssuedInFuture => write!(f, "the token was issued in the future (iat)"),
            TokenError::LifetimeTooLong { seconds, max } => {
                write!(
                    f,
                    "the token lifetime of {seconds} s exceeds the allowed {max} s"
                )
            }
            TokenError::WrongAudience => write!(f, "the token audience is not accepted"),
            TokenError::Key(e) => write!(f, "{e}"),
            TokenError::BadSignature => write!(f, "the token signature is invalid"),
            TokenError::Signature(e) => write!(f, "the token signature is invalid: {e}"),
            TokenError::NotAnAccessToken(kind) => {
                write!(
                    f,
                    "the token is a {kind:?} token, not a bearer access token"
                )
            }
        }
    }
}

/// A token whose claims passed every check that needs no key.
#[derive(Debug)]
pub struct Unverified<'t> {
    /// `header_b64 "." payload_b64`, what the signature covers.
    signing_input: &'t str,
    signature: Vec<u8>,
    pub issuer: usize,
    pub alg: Alg,
    pub kid: Option<String>,
    payload: &'t str,
    claims: Map<String, Value>,
    expires_at: Option<u64>,
}

/// Proof that a token's signature and claims were checked.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    issuer: usize,
    payload: String,
    claims: Map<String, Value>,
    expires_at: Option<u64>,
}

impl VerifiedToken {
    /// An active introspection answer whose claims passed [`check_claims`]:
    /// the payload is the answer as JSON, base64url-encoded, so the payload
    /// header carries the same kind of value for both kinds of token.
    pub(crate) fn introspected(
        issuer: usize,
        claims: Map<String, Value>,
        expires_at: Option<u64>,
    ) -> VerifiedToken {
        let json = Value::Object(claims.clone()).to_string();
        VerifiedToken {
            issuer,
            payload: Base64UrlSafeNoPadding::encode_to_string(json).unwrap_or_default(),
            claims,
            expires_at,
        }
    }

    pub fn issuer_index(&self) -> usize {
        self.issuer
    }
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }
    pub fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }
    /// The payload exactly as signed, still base64url-encoded.
    pub fn payload_segment(&self) -> &str {
        &self.payload
    }

    /// A claim as header text: strings as they are, numbers and booleans
    /// printed, string arrays joined by a space; objects are not flattened.
    pub fn claim_text(&self, name: &str) -> Option<String> {
        match self.claims.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Array(items) => {
                let parts: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
                parts.map(|p| p.join(" "))
            }
            _ => None,
        }
    }

    /// Granted scopes from the first configured claim that is present: a
    /// space-separated string (`scope`) or an array of strings (`scp`).
    pub fn scopes(&self, scope_claims: &[String]) -> Vec<String> {
        for claim in scope_claims {
            match self.claims.get(claim) {
                Some(Value::String(s)) => {
                    return s.split_whitespace().map(str::to_string).collect()
                }
                Some(Value::Array(items)) => {
                    return items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                }
                _ => {}
            }
        }
        Vec::new()
    }
}

struct Segments<'t> {
    header: &'t str,
    payload: &'t str,
    signature: &'t str,
    signing_input: &'t str,
}

/// Whether the token has the compact JWS shape (three base64url segments);
/// anything else is an opaque token, for introspection.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = 0;
    for part in token.split('.') {
        parts += 1;
        if part.is_empty() && parts < 3
            || !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    parts == 3
}

fn split(token: &str) -> Result<Segments<'_>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed("longer than 16 KiB"));
    }
    let shape = TokenError::Malformed("a JWT has three dot-separated parts");
    let (signing_input, signature) = token.rsplit_once('.').ok_or_else(|| shape.clone())?;
    match signing_input.split_once('.') {
        Some((header, payload)) if !payload.contains('.') => Ok(Segments {
            header,
            payload,
            signature,
            signing_input,
        }),
        _ => Err(shape),
    }
}

fn decode_json(segment: &str, what: &'static str) -> Result<Map<String, Value>, TokenError> {
    let bytes = Base64UrlSafeNoPadding::decode_to_vec(segment, None)
        .map_err(|_| TokenError::Malformed(what))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed(what))
}

/// A compact JWS's header and claims, decoded, nothing checked: for the
/// cheap checks a caller runs before [`verify_jws`] spends a signature check.
pub(crate) fn unverified_parts(jws: &str) -> Result<HeaderAndClaims, TokenError> {
    let segments = split(jws)?;
    let header = decode_json(segments.header, "the header is not base64url JSON")?;
    let claims = decode_json(segments.payload, "the payload is not base64url JSON")?;
    Ok((header, claims))
}

/// The header's `alg`, which must be one this crate knows. Read the same
/// way for an access token ([`precheck`]) and a signed introspection answer
/// ([`verify_jws`]), so the two cannot drift apart.
fn header_alg(header: &Map<String, Value>) -> Result<Alg, TokenError> {
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(TokenError::Malformed("the header has no alg"))?;
    Alg::parse(alg_name).ok_or_else(|| TokenError::UnsupportedAlg(alg_name.to_string()))
}

/// The header's `kid`, if any; a `crit` header is refused (RFC 7515
/// §4.1.11: no extension is understood, so none may be critical). Shared by
/// [`precheck`] and [`verify_jws`] like [`header_alg`]; a non-string `kid`
/// is named before `crit` when a header has both (precheck's order).
fn header_kid(header: &Map<String, Value>) -> Result<Option<&str>, TokenError> {
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(TokenError::Malformed("kid must be a string")),
    };
    if header.get("crit").is_some() {
        return Err(TokenError::Malformed(
            "critical header extensions are not supported",
        ));
    }
    Ok(kid)
}

/// An RFC 7519 NumericDate: seconds, possibly fractional. A fraction is cut
/// off (floor), so an `exp` of 1700000000.5 expires at 1700000000.
pub(crate) fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
) -> Result<Option<u64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(t), _) => Ok(Some(t)),
            // Beyond u64 the cast saturates: a date that far is "never".
            (None, Some(t)) if t.is_finite() && t >= 0.0 => Ok(Some(t.floor() as u64)),
            _ => Err(TokenError::Malformed(
                "exp, nbf and iat must be finite and not negative",
            )),
        },
        Some(_) => Err(TokenError::Malformed("exp, nbf and iat must be numbers")),
    }
}

/// `typ` is optional (RFC 7515 §4.1.9); when present it must name a JWT:
/// `JWT`, `JOSE` (RFC 7515 §9.1, the compact form) or a `+jwt` type such as
/// RFC 9068's `at+jwt`, compared without case as media types are.
fn typ_is_jwt(typ: &str) -> bool {
    let lower = typ.to_ascii_lowercase();
    // RFC 7515 §4.1.9: the "application/" prefix may be left out.
    let subtype = lower.strip_prefix("application/").unwrap_or(&lower);
    subtype == "jwt"
        || subtype == "jose"
        || subtype.strip_suffix("+jwt").is_some_and(|s| !s.is_empty())
}

/// RFC 9701 §5's `typ`, with or without the `application/` prefix.
pub fn is_introspection_typ(typ: &str) -> bool {
    let lower = typ.to_ascii_lowercase();
    lower.strip_prefix("application/").unwrap_or(&lower) == "token-introspection+jwt"
}

/// RFC 8417 §2.3's `typ` for a security event token, with or without the
/// `application/` prefix.
pub fn is_secevent_typ(typ: &str) -> bool {
    let lower = typ.to_ascii_lowercase();
    lower.strip_prefix("application/").unwrap_or(&lower) == "secevent+jwt"
}

/// A JWT's header and claims.
pub(crate) type HeaderAndClaims = (Map<String, Value>, Map<String, Value>);

/// A JWS in compact form signed by one of `keys` with one of `algorithms`:
/// its header and claims once the signature checks. No claim is checked
/// here: what the JWT is decides which (see [`crate::introspection_jwt`]).
pub(crate) fn verify_jws(
    jws: &str,
    algorithms: &[Alg],
    keys: &KeySet,
    verifier: &dyn SignatureVerifier,
) -> Result<HeaderAndClaims, TokenError> {
    let segments = split(jws)?;
    let header = decode_json(segments.header, "the header is not base64url JSON")?;
    let alg = header_alg(&header)?;
    if !algorithms.contains(&alg) {
        return Err(TokenError::AlgNotAllowed(alg));
    }
    let kid = header_kid(&header)?;
    let claims = decode_json(segments.payload, "the payload is not base64url JSON")?;
    let signature = Base64UrlSafeNoPadding::decode_to_vec(segments.signature, None)
        .map_err(|_| TokenError::Malformed("the signature is not base64url"))?;
    let key = keys.find(kid, alg).map_err(TokenError::Key)?;
    verifier
        .verify(alg, &key.key, segments.signing_input.as_bytes(), &signature)
        .map_err(|e| match e {
            VerifyError::Mismatch => TokenError::BadSignature,
            other => TokenError::Signature(other),
        })?;
    Ok((header, claims))
}

/// The issuer's access-token profile: the header's `typ`, and with RFC
/// 9068 the claims §2.2 requires (`exp` and `iss` are required anyway, `aud`
/// where the issuer lists audiences).
fn check_profile(
    profile: &AccessTokenProfile,
    typ: Option<&str>,
    claims: &Map<String, Value>,
) -> Result<(), TokenError> {
    match profile {
        AccessTokenProfile::Jwt => match typ {
            None => Ok(()),
            Some(typ) if typ_is_jwt(typ) => Ok(()),
            Some(_) => Err(TokenError::Malformed(
                "typ must be JWT, JOSE or a +jwt type such as at+jwt",
            )),
        },
        AccessTokenProfile::Rfc9068 => {
            if typ.is_none_or(|t| AccessTokenProfile::media_type(t) != "at+jwt") {
                return Err(TokenError::Malformed(
                    "typ must be at+jwt (RFC 9068 access token)",
                ));
            }
            let text = |name: &str| claims.get(name).is_some_and(Value::is_string);
            if !(text("sub")
                && text("client_id")
                && text("jti")
                && claims.get("iat").is_some_and(Value::is_number))
            {
                return Err(TokenError::Malformed(
                    "an RFC 9068 access token needs sub, client_id, iat and jti",
                ));
            }
            Ok(())
        }
        AccessTokenProfile::Typ(accepted) => {
            let typ = typ.map(AccessTokenProfile::media_type).unwrap_or_default();
            if accepted.contains(&typ) {
                Ok(())
            } else {
                Err(TokenError::Malformed(
                    "typ is not one the issuer's tokens carry",
                ))
            }
        }
    }
}

/// The most of a value from a token that an error repeats (the body, the
/// log): a 16 KiB `iss` is not sent back whole.
const MAX_ECHOED_CHARS: usize = 200;

/// `text` as an error may quote it: at most [`MAX_ECHOED_CHARS`] characters.
fn echoed(text: &str) -> String {
    let mut out: String = text.chars().take(MAX_ECHOED_CHARS).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// Everything that needs no key. `issuers` is the compiled list; the token's
/// `iss` picks exactly one of them.
pub fn precheck<'t>(
    token: &'t str,
    issuers: &[Issuer],
    rules: &JwtRules,
    now: u64,
) -> Result<Unverified<'t>, TokenError> {
    let segments = split(token)?;
    let header = decode_json(segments.header, "the header is not base64url JSON")?;
    let alg = header_alg(&header)?;
    let kid = header_kid(&header)?.map(str::to_owned);
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(typ)) => Some(typ.as_str()),
        Some(_) => return Err(TokenError::Malformed("typ must be a string")),
    };
    // A signed introspection answer (RFC 9701 §5) is about a token, for the
    // gateway: it is never one, whatever profile the issuer's tokens have.
    if typ.is_some_and(is_introspection_typ) {
        return Err(TokenError::Malformed(
            "a token introspection response is not an access token",
        ));
    }
    // Nor is a security event (RFC 8417 §4.1), signed by a transmitter that
    // may also issue access tokens: it says something about a subject.
    if typ.is_some_and(is_secevent_typ) {
        return Err(TokenError::Malformed(
            "a security event token is not an access token",
        ));
    }
    // Other header parameters are not read: an embedded `jwk`, `jku`, `x5u`
    // or `x5c` names a key the token chose itself and is never used.

    let claims = decode_json(segments.payload, "the payload is not base64url JSON")?;
    let signature = Base64UrlSafeNoPadding::decode_to_vec(segments.signature, None)
        .map_err(|_| TokenError::Malformed("the signature is not base64url"))?;
    let iss = match claims.get("iss") {
        None => return Err(TokenError::MissingIssuer),
        Some(Value::String(iss)) => iss,
        Some(_) => return Err(TokenError::Malformed("iss must be a string")),
    };
    let unknown = || TokenError::UnknownIssuer(echoed(iss));
    let issuer = issuers
        .iter()
        .position(|i| &i.issuer == iss)
        .ok_or_else(unknown)?;
    let config = issuers.get(issuer).ok_or_else(unknown)?;
    if !config.algorithms.contains(&alg) {
        return Err(TokenError::AlgNotAllowed(alg));
    }

    check_profile(&config.profile, typ, &claims)?;
    let exp = check_claims(&claims, &config.audiences_anywhere, rules, now)?;
    Ok(Unverified {
        signing_input: segments.signing_input,
        signature,
        issuer,
        alg,
        kid,
        payload: segments.payload,
        claims,
        expires_at: exp,
    })
}

/// The checks every token's claims pass, whether they came signed in a JWT or
/// from the introspection endpoint: `sub` a string, `exp`/`nbf`/`iat` with
/// the skew, the audience, the lifetime. Returns `exp`.
pub fn check_claims(
    claims: &Map<String, Value>,
    audiences: &[String],
    rules: &JwtRules,
    now: u64,
) -> Result<Option<u64>, TokenError> {
    if claims.get("sub").is_some_and(|sub| !sub.is_string()) {
        return Err(TokenError::Malformed("sub must be a string"));
    }
    let exp = numeric_date(claims, "exp")?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    let skew = rules.clock_skew_seconds;
    match exp {
        None if rules.require_exp => return Err(TokenError::MissingExp),
        Some(exp) if now > exp.saturating_add(skew) => return Err(TokenError::Expired),
        _ => {}
    }
    if nbf.is_some_and(|nbf| now.saturating_add(skew) < nbf) {
        return Err(TokenError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(skew)) {
        return Err(TokenError::IssuedInFuture);
    }
    if !audiences.is_empty() && !audience_matches(claims.get("aud"), audiences) {
        return Err(TokenError::WrongAudience);
    }
    if let Some(max) = rules.max_lifetime_seconds {
        let start = iat.unwrap_or(now);
        let seconds = exp.map_or(u64::MAX, |exp| exp.saturating_sub(start));
        if seconds > max {
            return Err(TokenError::LifetimeTooLong { seconds, max });
        }
    }
    Ok(exp)
}

/// An active introspection answer's claims, checked as a JWT's would be: `iss` (when the
/// server says it) must be this issuer, `token_type` (when said) a bearer
/// access token, then times, audience and lifetime as [`check_claims`]
/// does. `exp` is optional here (RFC 7662 makes it so). An answer without
/// `aud` fails a configured audience list, unless `verified_jwt` says the
/// token's own `aud` was already checked. Returns `exp`.
pub fn check_introspected(
    claims: &Map<String, Value>,
    issuer: &Issuer,
    rules: &JwtRules,
    verified_jwt: bool,
    now: u64,
) -> Result<Option<u64>, TokenError> {
    match claims.get("iss") {
        None => {}
        Some(Value::String(iss)) if *iss == issuer.issuer => {}
        Some(Value::String(iss)) => return Err(TokenError::UnknownIssuer(echoed(iss))),
        Some(_) => return Err(TokenError::Malformed("iss must be a string")),
    }
    match claims.get("token_type") {
        None => {}
        Some(Value::String(kind)) if is_bearer_access_token(kind) => {}
        Some(Value::String(kind)) => {
            return Err(TokenError::NotAnAccessToken(
                kind.chars().take(64).collect(),
            ))
        }
        Some(_) => return Err(TokenError::Malformed("token_type must be a string")),
    }
    let rules = JwtRules {
        require_exp: false,
        // Without `exp` the lifetime is unknown, not infinite: the cache
        // TTL bounds how long such an answer is trusted.
        max_lifetime_seconds: rules
            .max_lifetime_seconds
            .filter(|_| claims.contains_key("exp")),
        ..rules.clone()
    };
    let audiences: &[String] = if verified_jwt && !claims.contains_key("aud") {
        &[]
    } else {
        &issuer.audiences_anywhere
    };
    check_claims(claims, audiences, &rules, now)
}

fn is_bearer_access_token(kind: &str) -> bool {
    [
        "bearer",
        "access_token",
        "urn:ietf:params:oauth:token-type:access_token",
        // RFC 9449 §6.2: a DPoP-bound token's introspection answer.
        "dpop",
    ]
    .iter()
    .any(|k| kind.eq_ignore_ascii_case(k))
}

fn audience_matches(aud: Option<&Value>, accepted: &[String]) -> bool {
    match aud {
        Some(Value::String(a)) => accepted.iter().any(|x| x == a),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .any(|a| accepted.iter().any(|x| x == a)),
        _ => false,
    }
}

impl Unverified<'_> {
    /// The key lookup and the signature check, over the bytes as they came:
    /// header and claims were read once, by [`precheck`], and are not again.
    pub fn verify(
        self,
        keys: &KeySet,
        verifier: &dyn SignatureVerifier,
    ) -> Result<VerifiedToken, TokenError> {
        let key = keys
            .find(self.kid.as_deref(), self.alg)
            .map_err(TokenError::Key)?;
        verifier
            .verify(
                self.alg,
                &key.key,
                self.signing_input.as_bytes(),
                &self.signature,
            )
            .map_err(|e| match e {
                VerifyError::Mismatch => TokenError::BadSignature,
                other => TokenError::Signature(other),
            })?;
        Ok(VerifiedToken {
            issuer: self.issuer,
            payload: self.payload.to_string(),
            claims: self.claims,
            expires_at: self.expires_at,
        })
    }
}

#[cfg(test)]
pub(crate) mod test_vectors {
    use std::collections::HashMap;

    use ct_codecs::{Base64UrlSafeNoPadding, Decoder as _};
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Raw {
        jwks: serde_json::Value,
        hs_secret: String,
        hs_secret_bytes_b64url: String,
        now: u64,
        tokens: HashMap<String, String>,
    }

    pub struct Vectors {
        pub jwks: Vec<u8>,
        pub hs_secret: String,
        /// A secret that is not UTF-8 (`shared_secret: {"base64url": …}`).
        pub hs_secret_bytes: Vec<u8>,
        pub now: u64,
        tokens: HashMap<String, String>,
    }

    impl Vectors {
        pub fn token(&self, name: &str) -> &str {
            self.tokens
                .get(name)
                .unwrap_or_else(|| panic!("no test vector {name}"))
        }
    }

    /// Generated by tools/gen_vectors.py from the fixed keys in tests/keys.
    pub fn vectors() -> Vectors {
        let mut raw: Raw = serde_json::from_str(include_str!("../tests/vectors.json")).unwrap();
        // The generator publishes the HMAC secret as an `oct` JWK for other
        // tools; we take secrets only from `shared_secret`.
        if let Some(keys) = raw.jwks.get_mut("keys").and_then(|k| k.as_array_mut()) {
            keys.retain(|k| k["kty"] != "oct");
        }
        Vectors {
            jwks: serde_json::to_vec(&raw.jwks).unwrap(),
            hs_secret: raw.hs_secret,
            hs_secret_bytes: Base64UrlSafeNoPadding::decode_to_vec(
                raw.hs_secret_bytes_b64url,
                None,
            )
            .unwrap(),
            now: raw.now,
            tokens: raw.tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::test_vectors::{vectors, Vectors};
    use super::*;
    use crate::verify::PureRustVerifier;

    fn issuer(algorithms: &[Alg]) -> Issuer {
        Issuer::for_tests("https://issuer.test", &["api"], algorithms)
    }

    fn rules() -> JwtRules {
        JwtRules {
            clock_skew_seconds: 60,
            max_lifetime_seconds: None,
            require_exp: true,
        }
    }

    fn keys(v: &Vectors, algorithms: &[Alg]) -> KeySet {
        let (mut set, _) =
            KeySet::from_jwks(&v.jwks, crate::jwks::KeyAlgs::listed(algorithms)).unwrap();
        set.add_secret(v.hs_secret.as_bytes(), algorithms);
        set
    }

    fn check(
        name: &str,
        algorithms: &[Alg],
        rules: &JwtRules,
        now_offset: i64,
    ) -> Result<VerifiedToken, TokenError> {
        let v = vectors();
        let now = v.now.checked_add_signed(now_offset).unwrap();
        let issuers = [issuer(algorithms)];
        let unverified = precheck(v.token(name), &issuers, rules, now)?;
        unverified.verify(&keys(&v, algorithms), &PureRustVerifier)
    }

    fn all_algs() -> Vec<Alg> {
        Alg::ASYMMETRIC
            .iter()
            .chain(Alg::HMAC.iter())
            .copied()
            .collect()
    }

    #[test]
    fn every_algorithm_verifies_its_good_token() {
        for alg in all_algs() {
            let name = format!("good_{alg}");
            let verified =
                check(&name, &all_algs(), &rules(), 0).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(verified.claim_text("sub").as_deref(), Some("client-1"));
            assert_eq!(verified.scopes(&["scope".into()]), vec!["read", "write"]);
            assert_eq!(verified.expires_at(), Some(1_700_003_600));
        }
    }

    #[test]
    fn each_rejection_has_its_reason() {
        let all = all_algs();
        let table: &[(&str, TokenError)] = &[
            ("expired", TokenError::Expired),
            ("not_yet_valid", TokenError::NotYetValid),
            ("iat_in_future", TokenError::IssuedInFuture),
            ("no_exp", TokenError::MissingExp),
            ("wrong_aud", TokenError::WrongAudience),
            (
                "wrong_iss",
                TokenError::UnknownIssuer("https://evil.test".into()),
            ),
            (
                "unknown_kid",
                TokenError::Key(KeyLookupError::UnknownKid("nope".into())),
            ),
            ("alg_none", TokenError::UnsupportedAlg("none".into())),
            ("bad_signature", TokenError::BadSignature),
            ("rs256_signed_by_rsa2", TokenError::BadSignature),
            (
                "es256_with_rsa_kid",
                TokenError::Key(KeyLookupError::AlgNotForKey {
                    kid: "rsa1".into(),
                    alg: crate::jwks::Alg::ES256,
                }),
            ),
            (
                "malformed_two_parts",
                TokenError::Malformed("a JWT has three dot-separated parts"),
            ),
            (
                "malformed_base64",
                TokenError::Malformed("the payload is not base64url JSON"),
            ),
            ("float_exp_past", TokenError::Expired),
            (
                "negative_exp",
                TokenError::Malformed("exp, nbf and iat must be finite and not negative"),
            ),
            (
                "string_exp",
                TokenError::Malformed("exp, nbf and iat must be numbers"),
            ),
            ("numeric_sub", TokenError::Malformed("sub must be a string")),
            (
                "typ_other",
                TokenError::Malformed("typ must be JWT, JOSE or a +jwt type such as at+jwt"),
            ),
            (
                "crit_header",
                TokenError::Malformed("critical header extensions are not supported"),
            ),
            // The token's own key (jwk, jku, x5u, x5c) is never used: the
            // issuer's key checks the attacker's signature and refuses it.
            ("embedded_attacker_jwk", TokenError::BadSignature),
            ("embedded_attacker_jwk_no_kid", TokenError::BadSignature),
        ];
        for (name, expected) in table {
            assert_eq!(
                check(name, &all, &rules(), 0).err().as_ref(),
                Some(expected),
                "{name}"
            );
        }
    }

    #[test]
    fn forms_rfc_7515_and_7519_allow_verify() {
        for name in [
            "typ_jose",
            "typ_at_jwt",
            "numeric_jti_and_nonce",
            "float_exp",
            "embedded_own_jwk",
        ] {
            let verified =
                check(name, &all_algs(), &rules(), 0).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(verified.claim_text("sub").as_deref(), Some("client-1"));
        }
    }

    #[test]
    fn a_fractional_numeric_date_is_cut_to_the_second() {
        // exp 1700003600.5 = now + 2600.5: expires like exp 1700003600.
        let v = check("float_exp", &all_algs(), &rules(), 0).unwrap();
        assert_eq!(v.expires_at(), Some(1_700_003_600));
        assert!(check("float_exp", &all_algs(), &rules(), 2600 + 60).is_ok());
        assert_eq!(
            check("float_exp", &all_algs(), &rules(), 2600 + 61).err(),
            Some(TokenError::Expired)
        );
    }

    #[test]
    fn a_der_ecdsa_signature_is_refused_with_its_length() {
        match check("es256_der_signature", &all_algs(), &rules(), 0) {
            Err(TokenError::Signature(VerifyError::Length {
                alg: Alg::ES256,
                expected: 64,
                got,
            })) => assert!((68..=72).contains(&got), "{got}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_secret_that_is_not_text_verifies_hmac_tokens() {
        let v = vectors();
        let issuers = [issuer(&Alg::HMAC)];
        let token = v.token("good_HS256_binary_secret");
        let with = |secret: &[u8]| {
            let mut keys = KeySet::default();
            keys.add_secret(secret, &Alg::HMAC);
            precheck(token, &issuers, &rules(), v.now)?.verify(&keys, &PureRustVerifier)
        };
        assert!(with(&v.hs_secret_bytes).is_ok());
        assert_eq!(
            with(v.hs_secret.as_bytes()).err(),
            Some(TokenError::BadSignature)
        );
    }

    /// (alg, signing input, signature) of one call.
    type Call = (Alg, Vec<u8>, Vec<u8>);

    /// Records what it was asked and answers as told.
    struct Recording {
        answer: Result<(), VerifyError>,
        seen: std::cell::RefCell<Vec<Call>>,
    }

    impl SignatureVerifier for Recording {
        fn verify(
            &self,
            alg: Alg,
            _key: &crate::verify::KeyMaterial,
            signing_input: &[u8],
            signature: &[u8],
        ) -> Result<(), VerifyError> {
            self.seen
                .borrow_mut()
                .push((alg, signing_input.to_vec(), signature.to_vec()));
            self.answer
        }
    }

    #[test]
    fn the_verifier_gets_the_signing_input_and_the_decoded_signature() {
        let v = vectors();
        let issuers = [issuer(&all_algs())];
        let token = v.token("good_ES256");
        let (input, sig) = token.rsplit_once('.').unwrap();
        for (answer, expected) in [
            (Ok(()), None),
            (Err(VerifyError::Mismatch), Some(TokenError::BadSignature)),
        ] {
            let verifier = Recording {
                answer,
                seen: Default::default(),
            };
            let result = precheck(token, &issuers, &rules(), v.now)
                .unwrap()
                .verify(&keys(&v, &all_algs()), &verifier);
            assert_eq!(result.err(), expected);
            let seen = verifier.seen.into_inner();
            assert_eq!(
                seen,
                vec![(
                    Alg::ES256,
                    input.as_bytes().to_vec(),
                    Base64UrlSafeNoPadding::decode_to_vec(sig, None).unwrap()
                )]
            );
        }
    }

    #[test]
    fn hmac_with_the_rsa_public_key_is_algorithm_confusion() {
        // Without a shared secret HS256 is not allowed at all.
        assert_eq!(
            check("hs256_with_rsa_pubkey", &Alg::ASYMMETRIC, &rules(), 0).err(),
            Some(TokenError::AlgNotAllowed(Alg::HS256))
        );
        // With one, the RSA-derived MAC still fails, as no HS key carries kid rsa1.
        assert!(check("hs256_with_rsa_pubkey", &all_algs(), &rules(), 0).is_err());
    }

    #[test]
    fn clock_skew_bounds_exp_and_nbf() {
        let skew = rules();
        // expired at 1700000500; now is 1700001000: 500 s late, beyond 60 s.
        let generous = JwtRules {
            clock_skew_seconds: 600,
            ..skew.clone()
        };
        assert!(check("expired", &all_algs(), &generous, 0).is_ok());
        // good tokens expire at 1700003600 = now + 2600.
        assert!(check("good_RS256", &all_algs(), &skew, 2600 + 60).is_ok());
        assert_eq!(
            check("good_RS256", &all_algs(), &skew, 2600 + 61).err(),
            Some(TokenError::Expired)
        );
        // nbf 1700002000 = now + 1000
        assert!(check("not_yet_valid", &all_algs(), &skew, 1000 - 60).is_ok());
    }

    #[test]
    fn optional_exp_and_maximum_lifetime() {
        let lax = JwtRules {
            require_exp: false,
            ..rules()
        };
        assert!(check("no_exp", &all_algs(), &lax, 0).is_ok());
        let bounded = JwtRules {
            max_lifetime_seconds: Some(3600),
            ..rules()
        };
        assert!(check("good_RS256", &all_algs(), &bounded, 0).is_ok());
        assert_eq!(
            check("long_lifetime", &all_algs(), &bounded, 0).err(),
            Some(TokenError::LifetimeTooLong {
                seconds: 90_000,
                max: 3600
            })
        );
    }

    #[test]
    fn audience_may_be_an_array_and_scopes_an_scp_array() {
        assert!(check("aud_array", &all_algs(), &rules(), 0).is_ok());
        let v = check("scp_array", &all_algs(), &rules(), 0).unwrap();
        assert_eq!(
            v.scopes(&["scope".into(), "scp".into()]),
            vec!["read", "write"]
        );
    }

    #[test]
    fn token_without_kid_is_refused_when_several_keys_fit() {
        assert!(matches!(
            check("no_kid_rs256", &all_algs(), &rules(), 0),
            Err(TokenError::Key(KeyLookupError::Ambiguous { .. }))
        ));
        assert!(
            check("no_kid_rs256", &[Alg::RS256], &rules(), 0).is_err(),
            "rsa1 and rsa1-any both fit"
        );
    }

    #[test]
    fn algorithm_outside_the_issuer_list_is_refused_before_key_work() {
        assert_eq!(
            check("good_ES256", &[Alg::RS256], &rules(), 0).err(),
            Some(TokenError::AlgNotAllowed(Alg::ES256))
        );
    }

    #[test]
    fn the_access_token_profile_picks_the_typ_and_the_claims() {
        let all = serde_json::json!({"sub": "s", "client_id": "c", "iat": 1, "jti": "j"});
        let claims = |drop: &str| {
            let mut c = all.as_object().unwrap().clone();
            c.remove(drop);
            c
        };
        let full = claims("");
        let rfc = AccessTokenProfile::Rfc9068;
        assert_eq!(check_profile(&rfc, Some("at+jwt"), &full), Ok(()));
        assert_eq!(
            check_profile(&rfc, Some("Application/AT+JWT"), &full),
            Ok(())
        );
        for typ in [None, Some("JWT"), Some("application/jwt"), Some("at+jwt+x")] {
            assert!(check_profile(&rfc, typ, &full).is_err(), "{typ:?}");
        }
        for missing in ["sub", "client_id", "iat", "jti"] {
            assert_eq!(
                check_profile(&rfc, Some("at+jwt"), &claims(missing)),
                Err(TokenError::Malformed(
                    "an RFC 9068 access token needs sub, client_id, iat and jti"
                )),
                "{missing}"
            );
        }
        let default = AccessTokenProfile::Jwt;
        for typ in [None, Some("JWT"), Some("jose"), Some("application/at+jwt")] {
            assert_eq!(check_profile(&default, typ, &Map::new()), Ok(()), "{typ:?}");
        }
        assert!(check_profile(&default, Some("text/plain"), &Map::new()).is_err());
        let listed = AccessTokenProfile::Typ(vec![String::new(), "at+jwt".into()]);
        assert_eq!(check_profile(&listed, None, &Map::new()), Ok(()));
        assert_eq!(
            check_profile(&listed, Some("application/AT+JWT"), &Map::new()),
            Ok(())
        );
        assert!(check_profile(&listed, Some("JWT"), &Map::new()).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let v = vectors();
        let issuers = [issuer(&all_algs())];
        let good = v.token("good_RS256");
        let keys = keys(&v, &all_algs());
        let inputs = [
            "",
            ".",
            "..",
            "...",
            "a.b.c",
            "\u{0}.\u{0}.\u{0}",
            "e30.e30.",
            "e30.e30.e30",
            "eyJhbGciOiJSUzI1NiJ9.bnVsbA.x",
            "eyJhbGciOjF9.e30.x",
        ];
        for input in inputs
            .iter()
            .copied()
            .chain((0..good.len()).map(|i| good.get(..i).unwrap_or("")))
        {
            let _ = precheck(input, &issuers, &rules(), v.now)
                .map(|u| u.verify(&keys, &PureRustVerifier));
        }
        assert_eq!(
            precheck("eyJhbGciOiJSUzI1NiJ9.e30.*", &issuers, &rules(), v.now).err(),
            Some(TokenError::Malformed("the signature is not base64url"))
        );
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            precheck(&long, &issuers, &rules(), v.now).err(),
            Some(TokenError::Malformed("longer than 16 KiB"))
        );
    }

    #[test]
    fn an_untrusted_iss_is_echoed_at_most_200_characters() {
        assert_eq!(echoed("https://a.test"), "https://a.test");
        let long = "x".repeat(5000);
        let e = echoed(&long);
        assert_eq!(e.chars().count(), MAX_ECHOED_CHARS + 1);
        assert!(e.ends_with('…'));
        assert!(TokenError::UnknownIssuer(e).to_string().len() < 300);
    }

    fn claims(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn introspected_claims_are_checked_like_a_jwts() {
        let issuer = Issuer::for_tests("https://as.test", &["api"], &[Alg::RS256]);
        let rules = JwtRules {
            clock_skew_seconds: 60,
            max_lifetime_seconds: Some(3600),
            require_exp: true,
        };
        let now = 1_700_000_000;
        let ok = claims(
            r#"{"aud":"api","exp":1700000100,"iss":"https://as.test","token_type":"Bearer"}"#,
        );
        assert_eq!(
            check_introspected(&ok, &issuer, &rules, false, now),
            Ok(Some(1_700_000_100))
        );
        // Neither exp nor the lifetime limit is required of an answer.
        assert_eq!(
            check_introspected(
                &claims(r#"{"aud":["x","api"]}"#),
                &issuer,
                &rules,
                false,
                now
            ),
            Ok(None)
        );
        for (json, err) in [
            (r#"{"aud":"api","exp":1699990000}"#, TokenError::Expired),
            (r#"{"aud":"api","nbf":1700009999}"#, TokenError::NotYetValid),
            (r#"{"aud":"other"}"#, TokenError::WrongAudience),
            (r#"{}"#, TokenError::WrongAudience),
            (
                r#"{"aud":"api","iss":"https://evil.test"}"#,
                TokenError::UnknownIssuer("https://evil.test".into()),
            ),
            (
                r#"{"aud":"api","token_type":"refresh_token"}"#,
                TokenError::NotAnAccessToken("refresh_token".into()),
            ),
            (
                r#"{"aud":"api","iat":1690000000,"exp":1700000100}"#,
                TokenError::LifetimeTooLong {
                    seconds: 10_000_100,
                    max: 3600,
                },
            ),
        ] {
            assert_eq!(
                check_introspected(&claims(json), &issuer, &rules, false, now),
                Err(err),
                "{json}"
            );
        }
    }
}
