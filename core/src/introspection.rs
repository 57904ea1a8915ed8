//! RFC 7662 token introspection: per-issuer settings, the callout that asks
//! the authorization server about a token, and what its answer means (an
//! active answer's claims are then checked like a JWT's, by
//! [`crate::jwt::check_introspected`]). The engine decides when to ask;
//! [`crate::shared_cache`] remembers the answers for every worker.

use std::fmt;

use regex_lite::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::budget::{Budget, RawBudget};
use crate::cache::Digest;
use crate::callout::{
    check_authority, check_timeout_ms, upstream_or, Callout, CalloutError, CalloutReply, Url,
};
use crate::client_auth::{AssertionError, AuthMethod, ClientAuth, RawCredentials};
use crate::config_error::ConfigError;
use crate::extract::MAX_TOKEN_BYTES;
use crate::services::Random;
use crate::shared_cache::Scope;

/// An active result is cached until this long before the token's `exp`, so
/// that a cached answer never outlives the token on a clock a little ahead.
pub const EXP_MARGIN_SECONDS: u64 = 5;
/// Upper bounds for the durations an operator may configure.
const MAX_TTL_LIMIT_SECONDS: u64 = 86_400;
const NEGATIVE_TTL_LIMIT_SECONDS: u64 = 3_600;
const STALE_LIMIT_SECONDS: u64 = 86_400;

/// Which tokens of an issuer are verified locally and which are introspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// JWTs are verified locally; only opaque tokens are introspected.
    #[default]
    Jwt,
    /// Every token is introspected, to see revocations at once.
    Introspect,
    /// JWTs are verified locally, then introspected (cached).
    JwtThenIntrospect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawFailureMode {
    #[default]
    Deny,
    ServeStale,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    endpoint: Option<String>,
    upstream: Option<String>,
    authority: Option<String>,
    client_id: String,
    client_secret: Option<String>,
    client_secret_env: Option<String>,
    /// A private JWK (an object, or its JSON text), for `private_key_jwt`.
    private_key: Option<Value>,
    /// The environment variable holding the private JWK's JSON text.
    private_key_env: Option<String>,
    #[serde(default)]
    auth_method: AuthMethod,
    #[serde(default = "default_hint")]
    token_type_hint: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_max_ttl")]
    max_ttl_seconds: u64,
    #[serde(default = "default_negative_ttl")]
    negative_ttl_seconds: u64,
    token_prefix: Option<String>,
    #[serde(default)]
    failure_mode: RawFailureMode,
    stale_seconds: Option<u64>,
    budget: Option<RawBudget>,
    token_pattern: Option<String>,
    min_token_length: Option<usize>,
    max_token_length: Option<usize>,
    /// `jwt`: ask for signed answers (RFC 9701) and accept nothing else.
    #[serde(default)]
    response: ResponseFormat,
}

/// How the endpoint answers: plain JSON (RFC 7662), or a JWT the issuer
/// signs (RFC 9701), checked with the issuer's keys ([`crate::introspection_jwt`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseFormat {
    #[default]
    Json,
    Jwt,
}

/// RFC 9701 §4: what a request for a signed answer accepts.
pub const JWT_MEDIA_TYPE: &str = "application/token-introspection+jwt";

/// Introspections a worker may start per second for one issuer, by default.
pub const DEFAULT_BUDGET: Budget = Budget {
    per_second: 100,
    burst: 200,
};
/// The longest token sent out in a callout, as for JWTs.
const MAX_TOKEN_LENGTH: usize = MAX_TOKEN_BYTES;
/// A longer `token_pattern` is a mistake, not a token shape.
const MAX_PATTERN_BYTES: usize = 1024;

/// What an issuer's opaque tokens look like: a token of another shape is
/// refused before any callout (junk costs the authorization server nothing).
#[derive(Debug, Clone)]
pub struct TokenShape {
    /// Anchored at both ends.
    pattern: Option<Regex>,
    min_length: usize,
    max_length: usize,
}

impl TokenShape {
    pub fn admits(&self, token: &str) -> Result<(), &'static str> {
        if token.len() < self.min_length {
            return Err("shorter than the issuer's tokens");
        }
        if token.len() > self.max_length {
            return Err("longer than the issuer's tokens");
        }
        if self.pattern.as_ref().is_some_and(|p| !p.is_match(token)) {
            return Err("not of the issuer's token_pattern");
        }
        Ok(())
    }
}

fn default_hint() -> Option<String> {
    Some("access_token".into())
}
fn default_timeout_ms() -> u64 {
    2_000
}
fn default_max_ttl() -> u64 {
    300
}
fn default_negative_ttl() -> u64 {
    10
}

/// What to do when the endpoint gives no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// 503: nothing is let through on a guess.
    Deny,
    /// Serve a cached active result up to this long past its TTL (logged and
    /// counted), then 503.
    ServeStale { seconds: u64 },
}

#[derive(Debug, Clone)]
pub struct Introspection {
    /// `None`: the discovery document's `introspection_endpoint`.
    pub endpoint: Option<Url>,
    pub upstream: String,
    authority: Option<String>,
    auth: ClientAuth,
    token_type_hint: Option<String>,
    pub timeout_ms: u64,
    pub max_ttl_seconds: u64,
    pub negative_ttl_seconds: u64,
    pub token_prefix: Option<String>,
    pub failure_mode: FailureMode,
    pub budget: Budget,
    pub token_shape: TokenShape,
    pub response: ResponseFormat,
    /// The gateway's client id here: the `aud` of a signed answer.
    pub client_id: String,
    /// What accepting this issuer's answers depends on; set when the whole
    /// configuration is compiled (`crate::config::compile::answer_scope`).
    pub scope: Scope,
}

fn token_shape(
    pattern: Option<&str>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    f: &dyn Fn(&str) -> String,
) -> Result<TokenShape, ConfigError> {
    let min_length = min_length.unwrap_or(1);
    let max_length = max_length.unwrap_or(MAX_TOKEN_LENGTH);
    if min_length == 0 {
        return Err(ConfigError::new(
            f("min_token_length"),
            "must be at least 1",
        ));
    }
    if !(min_length..=MAX_TOKEN_LENGTH).contains(&max_length) {
        return Err(ConfigError::new(
            f("max_token_length"),
            format!("must be between min_token_length and {MAX_TOKEN_LENGTH}"),
        ));
    }
    let pattern = match pattern {
        None => None,
        Some(p) if p.is_empty() || p.len() > MAX_PATTERN_BYTES => {
            return Err(ConfigError::new(
                f("token_pattern"),
                format!("must be a regular expression of 1 to {MAX_PATTERN_BYTES} bytes"),
            ))
        }
        Some(p) => Some(
            Regex::new(&format!("^(?:{p})$"))
                .map_err(|e| ConfigError::new(f("token_pattern"), e.to_string()))?,
        ),
    };
    Ok(TokenShape {
        pattern,
        min_length,
        max_length,
    })
}

impl Introspection {
    /// `issuer_upstream` is the issuer's own cluster, the default;
    /// `discovery` whether the endpoint may come from the discovery document.
    pub fn compile(
        raw: RawIntrospection,
        field: &str,
        issuer_upstream: Option<&str>,
        discovery: bool,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Introspection, ConfigError> {
        let f = |name: &str| format!("{field}.{name}");
        let endpoint = match raw.endpoint {
            Some(url) => Some(Url::parse(&url).map_err(|e| ConfigError::new(f("endpoint"), e))?),
            None if discovery => None,
            None => {
                return Err(ConfigError::new(
                    f("endpoint"),
                    "is required unless the issuer uses `discovery: true` (its `introspection_endpoint`)",
                ))
            }
        };
        let upstream = upstream_or(
            raw.upstream.as_deref(),
            issuer_upstream,
            &f("upstream"),
            "introspection endpoint",
        )?;
        check_authority(raw.authority.as_deref(), &f("authority"))?;
        let auth = ClientAuth::compile(
            RawCredentials {
                client_id: raw.client_id.clone(),
                client_secret: raw.client_secret,
                client_secret_env: raw.client_secret_env,
                private_key: raw.private_key,
                private_key_env: raw.private_key_env,
                auth_method: raw.auth_method,
            },
            field,
            env,
        )?;
        check_timeout_ms(raw.timeout_ms, &f("timeout_ms"))?;
        if !(1..=MAX_TTL_LIMIT_SECONDS).contains(&raw.max_ttl_seconds) {
            return Err(ConfigError::new(
                f("max_ttl_seconds"),
                format!("must be between 1 and {MAX_TTL_LIMIT_SECONDS}"),
            ));
        }
        if raw.negative_ttl_seconds > NEGATIVE_TTL_LIMIT_SECONDS {
            return Err(ConfigError::new(
                f("negative_ttl_seconds"),
                format!("must be at most {NEGATIVE_TTL_LIMIT_SECONDS}: a revoked-then-reissued token should not wait longer"),
            ));
        }
        if raw.token_prefix.as_deref() == Some("") {
            return Err(ConfigError::new(
                f("token_prefix"),
                "must not be empty; leave it out to take every opaque token",
            ));
        }
        let failure_mode = match (raw.failure_mode, raw.stale_seconds) {
            (RawFailureMode::Deny, None) => FailureMode::Deny,
            (RawFailureMode::Deny, Some(_)) => {
                return Err(ConfigError::new(
                    f("stale_seconds"),
                    "applies only with `failure_mode: \"serve_stale\"`",
                ))
            }
            (RawFailureMode::ServeStale, seconds) => {
                let seconds = seconds.unwrap_or(60);
                if !(1..=STALE_LIMIT_SECONDS).contains(&seconds) {
                    return Err(ConfigError::new(
                        f("stale_seconds"),
                        format!("must be between 1 and {STALE_LIMIT_SECONDS}"),
                    ));
                }
                FailureMode::ServeStale { seconds }
            }
        };
        let budget = Budget::compile(raw.budget, DEFAULT_BUDGET, &f("budget"))?;
        let token_shape = token_shape(
            raw.token_pattern.as_deref(),
            raw.min_token_length,
            raw.max_token_length,
            &f,
        )?;
        Ok(Introspection {
            budget,
            token_shape,
            endpoint,
            upstream,
            authority: raw.authority,
            auth,
            token_type_hint: raw.token_type_hint.filter(|h| !h.is_empty()),
            timeout_ms: raw.timeout_ms,
            max_ttl_seconds: raw.max_ttl_seconds,
            negative_ttl_seconds: raw.negative_ttl_seconds,
            token_prefix: raw.token_prefix,
            failure_mode,
            response: raw.response,
            client_id: raw.client_id,
            scope: Scope::default(),
        })
    }

    /// Names the settings an answer's acceptance depends on here: the
    /// endpoint (or "discovered"), cluster and authority, the introspecting
    /// client's credentials (a digest), the hint, the answer format and
    /// the lifetimes of cached answers. Not `timeout_ms`, the budget or the
    /// token shape: they decide when to ask, not what an answer means.
    pub fn answer_fingerprint(&self) -> Digest {
        let endpoint = self.endpoint.as_ref().map_or_else(
            || "discovered".to_string(),
            |url| format!("{}://{}{}", url.scheme, url.authority, url.path),
        );
        let response: &[u8] = match self.response {
            ResponseFormat::Json => b"json",
            ResponseFormat::Jwt => b"jwt",
        };
        let stale = match self.failure_mode {
            FailureMode::Deny => 0,
            FailureMode::ServeStale { seconds } => seconds.saturating_add(1),
        };
        crate::cache::digest(&[
            endpoint.as_bytes(),
            self.upstream.as_bytes(),
            self.authority.as_deref().unwrap_or("").as_bytes(),
            &[u8::from(self.authority.is_some())],
            &self.auth.fingerprint(),
            self.client_id.as_bytes(),
            self.token_type_hint.as_deref().unwrap_or("").as_bytes(),
            response,
            &self.max_ttl_seconds.to_be_bytes(),
            &self.negative_ttl_seconds.to_be_bytes(),
            &stale.to_be_bytes(),
        ])
    }

    /// The RFC 7662 §2.1 request for `token`. With `private_key_jwt`, a
    /// fresh client assertion signed at `now` with a jti from `random`
    /// (servers such as oidc-provider refuse a jti they have seen).
    pub fn callout(
        &self,
        endpoint: &Url,
        token: &str,
        now: u64,
        random: &dyn Random,
    ) -> Result<Callout, AssertionError> {
        let mut fields = vec![("token", token)];
        if let Some(hint) = &self.token_type_hint {
            fields.push(("token_type_hint", hint));
        }
        let mut callout = self.auth.form_post(
            &self.upstream,
            endpoint,
            self.authority.as_deref(),
            &fields,
            self.timeout_ms,
            now,
            random,
        )?;
        if self.response == ResponseFormat::Jwt {
            // Only the signed answer: a server that cannot sign fails
            // rather than answering plain JSON (which is refused anyway).
            callout
                .headers
                .retain(|(name, _)| !name.eq_ignore_ascii_case("accept"));
            callout
                .headers
                .push(("accept".into(), JWT_MEDIA_TYPE.into()));
        }
        Ok(callout)
    }

    /// Until when an active answer may be used: `exp` less the margin, and
    /// never more than `max_ttl_seconds` from now.
    pub fn fresh_until(&self, exp: Option<u64>, now: u64) -> u64 {
        let cap = now.saturating_add(self.max_ttl_seconds);
        exp.map_or(cap, |exp| exp.saturating_sub(EXP_MARGIN_SECONDS).min(cap))
    }

    /// Until when a stale active answer may still be served, if ever.
    pub fn stale_until(&self, fresh_until: u64) -> u64 {
        match self.failure_mode {
            FailureMode::Deny => fresh_until,
            FailureMode::ServeStale { seconds } => fresh_until.saturating_add(seconds),
        }
    }
}

/// What the endpoint said about a token.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `active: true`, with the other members of the answer.
    Active(Map<String, Value>),
    Inactive,
}

/// Why an answer is unusable: never a verdict on the token, always a 503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntrospectionError {
    Callout(CalloutError),
    NotJson,
    NoActive,
}

impl fmt::Display for IntrospectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntrospectionError::Callout(CalloutError::Status(401 | 403)) => write!(
                f,
                "the endpoint refused the gateway's client credentials (check client_id and the secret or private key)"
            ),
            IntrospectionError::Callout(e) => write!(f, "{e}"),
            IntrospectionError::NotJson => write!(f, "the answer is not a JSON object"),
            IntrospectionError::NoActive => {
                write!(f, "the answer has no boolean `active` member")
            }
        }
    }
}

/// Reads the endpoint's reply (RFC 7662 §2.2).
pub fn interpret(reply: &CalloutReply) -> Result<Answer, IntrospectionError> {
    let body = reply
        .small_success_body()
        .map_err(IntrospectionError::Callout)?;
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(body) else {
        return Err(IntrospectionError::NotJson);
    };
    read_answer(answer)
}

/// The RFC 7662 §2.2 members, from a JSON answer or a signed answer's
/// `token_introspection` claim.
pub fn read_answer(mut answer: Map<String, Value>) -> Result<Answer, IntrospectionError> {
    match answer.remove("active") {
        Some(Value::Bool(true)) => Ok(Answer::Active(answer)),
        Some(Value::Bool(false)) => Ok(Answer::Inactive),
        _ => Err(IntrospectionError::NoActive),
    }
}

/// The answer as compact JSON with every non-ASCII character escaped, so it
/// can travel in a header (the phantom token) byte for byte.
pub fn ascii_json(claims: &Map<String, Value>) -> String {
    let json = Value::Object(claims.clone()).to_string();
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use std::rc::Rc;

    use ct_codecs::{Base64UrlSafeNoPadding, Decoder as _};
    use serde_json::json;

    use super::*;
    use crate::alg::Alg;
    use crate::services::testing::CountingRandom;
    use crate::services::NoRandom;
    use crate::verify::{KeyMaterial, PureRustVerifier, SignatureVerifier as _};

    // Test keys only (not those of tests/oidc).
    const ES256_JWK: &str = r#"{"kty":"EC","crv":"P-256","kid":"k-es","x":"nwG8DSp8G6J-WXVtfzoKMinE3a3FHwdjTifZ8D4ZtRo","y":"sV_R5wNzFJPtishYtK7xGuOxp0XTK9T4EHHBaL5WYyo","d":"mpWhvk6JTa9whsH--944EixqDgVK7sw1_oI24qz7ook"}"#;
    const ED25519_JWK: &str = r#"{"kty":"OKP","crv":"Ed25519","x":"9GahbjkaFmHvVuz7VdIcWKNLpk9ZoJ6a_sDFMRzfCPM","d":"AQXxWxNExKUS791-DUQTwuW_A7RJY4YfSIVYTvp25MA"}"#;
    const NOW: u64 = 1_700_000_000;

    fn compile(json: &str) -> Result<Introspection, ConfigError> {
        let raw: RawIntrospection = serde_json::from_str(json).unwrap();
        Introspection::compile(
            raw,
            "issuers[0].introspection",
            Some("as"),
            false,
            &|name| match name {
                "PEP_SECRET" => Some("from-env".to_string()),
                "PEP_JWK" => Some(ED25519_JWK.to_string()),
                "PEP_BAD_JWK" => Some("{not json".to_string()),
                _ => None,
            },
        )
    }

    fn body_of(c: &Callout) -> String {
        String::from_utf8(c.body.clone().unwrap()).unwrap()
    }

    fn form(body: &str) -> Vec<(String, String)> {
        body.split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                let decode = |s: &str| {
                    let s = s.replace('+', " ");
                    let mut out = Vec::new();
                    let bytes = s.as_bytes();
                    let mut i = 0;
                    while i < bytes.len() {
                        if bytes[i] == b'%' {
                            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                            i += 3;
                        } else {
                            out.push(bytes[i]);
                            i += 1;
                        }
                    }
                    String::from_utf8(out).unwrap()
                };
                (decode(k), decode(v))
            })
            .collect()
    }

    /// The assertion's header and claims, after its signature verified with
    /// the public part of `jwk`.
    fn verified(assertion: &str, jwk: &str) -> (Value, Value) {
        let jwk: Value = serde_json::from_str(jwk).unwrap();
        let b64 = |name: &str| {
            Base64UrlSafeNoPadding::decode_to_vec(jwk[name].as_str().unwrap(), None).unwrap()
        };
        let (key, alg) = match jwk["kty"].as_str().unwrap() {
            "EC" => (KeyMaterial::p256(&b64("x"), &b64("y")).unwrap(), Alg::ES256),
            _ => (KeyMaterial::ed25519(&b64("x")).unwrap(), Alg::EdDSA),
        };
        let (input, signature) = assertion.rsplit_once('.').unwrap();
        let signature = Base64UrlSafeNoPadding::decode_to_vec(signature, None).unwrap();
        PureRustVerifier
            .verify(alg, &key, input.as_bytes(), &signature)
            .expect("the assertion verifies with the public key");
        let part = |s: &str| -> Value {
            serde_json::from_slice(&Base64UrlSafeNoPadding::decode_to_vec(s, None).unwrap())
                .unwrap()
        };
        let (header, claims) = input.split_once('.').unwrap();
        (part(header), part(claims))
    }

    fn reply(status: u16, body: &str) -> CalloutReply {
        CalloutReply {
            status: Some(status),
            body: body.as_bytes().to_vec(),
            oversized: None,
        }
    }

    #[test]
    fn the_request_is_a_form_post_with_basic_client_authentication() {
        let i = compile(
            r#"{"endpoint":"https://as.test/oauth/introspect","client_id":"pep gw","client_secret":"s:e&c"}"#,
        )
        .unwrap();
        let c = i
            .callout(i.endpoint.as_ref().unwrap(), "tok en+/=", NOW, &NoRandom)
            .unwrap();
        assert_eq!((c.method, c.upstream.as_str()), ("POST", "as"));
        assert_eq!(c.url.path, "/oauth/introspect");
        assert_eq!(
            String::from_utf8(c.body.clone().unwrap()).unwrap(),
            "token=tok+en%2B%2F%3D&token_type_hint=access_token"
        );
        let auth = c
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap();
        // base64("pep+gw:s%3Ae%26c"): each part form-encoded first (RFC 6749 §2.3.1).
        assert_eq!(auth.1, "Basic cGVwK2d3OnMlM0FlJTI2Yw==");
        assert!(c.headers.contains(&(
            "content-type".into(),
            "application/x-www-form-urlencoded".into()
        )));
        assert!(
            !format!("{i:?}").contains("s:e&c"),
            "Debug hides the secret"
        );
    }

    #[test]
    fn post_authentication_and_a_secret_from_the_environment() {
        let i = compile(
            r#"{"endpoint":"http://as/i","client_id":"pep","client_secret_env":"PEP_SECRET","auth_method":"client_secret_post","token_type_hint":null,"authority":"login.test"}"#,
        )
        .unwrap();
        let c = i
            .callout(i.endpoint.as_ref().unwrap(), "t", NOW, &NoRandom)
            .unwrap();
        assert_eq!(
            String::from_utf8(c.body.clone().unwrap()).unwrap(),
            "token=t&client_id=pep&client_secret=from-env"
        );
        assert_eq!(c.url.authority, "login.test");
        assert!(!c.headers.iter().any(|(k, _)| k == "authorization"));
    }

    #[test]
    fn bad_settings_are_refused_with_the_field_named() {
        for (json, field) in [
            (
                r#"{"client_id":"p","client_secret":"s"}"#,
                "issuers[0].introspection.endpoint",
            ),
            (
                r#"{"endpoint":"ftp://x/","client_id":"p","client_secret":"s"}"#,
                "issuers[0].introspection.endpoint",
            ),
            (
                r#"{"endpoint":"http://x/","client_id":"","client_secret":"s"}"#,
                "issuers[0].introspection.client_id",
            ),
            (
                r#"{"endpoint":"http://x/","client_id":"p"}"#,
                "issuers[0].introspection",
            ),
            (
                r#"{"endpoint":"http://x/","client_id":"p","client_secret":"s","client_secret_env":"PEP_SECRET"}"#,
                "issuers[0].introspection",
            ),
            (
                r#"{"endpoint":"http://x/","client_id":"p","client_secret_env":"UNSET"}"#,
                "issuers[0].introspection.client_secret_env",
            ),
            (
                r#"{"endpoint":"http://x/","client_id":"p","client_secret":"s","timeout_ms":0}"#,
                "issuers[0].introspection.timeout_ms",
            ),
            (
                r#"{"endpoint":"http://x/","client_id":"p","client_secret":"s","max_ttl_seconds":0}"#,
                "issuers[0].introspection.max_ttl_seconds",
            ),
            (
                r#"{"endpoint":"http://x/","client_id":"p","client_secret":"s","negative_ttl_seconds":99999}"#,
                "issuers[0].introspection.negative_ttl_seconds",
            ),
            (
                r#"{"endpoint":"http://x/","client_id":"p","client_secret":"s","stale_seconds":5}"#,
                "issuers[0].introspection.stale_seconds",
            ),
            (
                r#"{"endpoint":"http://x/","client_id":"p","client_secret":"s","token_prefix":""}"#,
                "issuers[0].introspection.token_prefix",
            ),
            (
                r#"{"endpoint":"http://x/","client_id":"p","client_secret":"s","auth_method":"private_key_jwt"}"#,
                "issuers[0].introspection",
            ),
            (
                r#"{"endpoint":"http://x/","client_id":"p","auth_method":"private_key_jwt"}"#,
                "issuers[0].introspection.private_key",
            ),
            (
                r#"{"endpoint":"http://x/","client_id":"p","client_secret":"s","private_key_env":"PEP_JWK"}"#,
                "issuers[0].introspection.auth_method",
            ),
            (
                r#"{"endpoint":"http://x/","client_id":"p","auth_method":"private_key_jwt","private_key_env":"UNSET"}"#,
                "issuers[0].introspection.private_key_env",
            ),
            (
                r#"{"endpoint":"http://x/","client_id":"p","auth_method":"private_key_jwt","private_key_env":"PEP_BAD_JWK"}"#,
                "issuers[0].introspection.private_key_env",
            ),
            (
                r#"{"endpoint":"http://x/","client_id":"p","auth_method":"private_key_jwt","private_key_env":"PEP_JWK","private_key":{}}"#,
                "issuers[0].introspection",
            ),
        ] {
            let e = compile(json).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }

    fn jwt_settings(jwk: &str) -> Introspection {
        compile(&format!(
            r#"{{"endpoint":"https://as.test/token/introspection","client_id":"pep-jwt","auth_method":"private_key_jwt","private_key":{jwk},"authority":"internal:8443"}}"#
        ))
        .unwrap()
    }

    #[test]
    fn private_key_jwt_sends_a_signed_assertion_for_the_endpoint() {
        for (jwk, alg, kid) in [
            (ES256_JWK, "ES256", Some("k-es")),
            (ED25519_JWK, "EdDSA", None),
        ] {
            let i = jwt_settings(jwk);
            let random = CountingRandom::default();
            let c = i
                .callout(i.endpoint.as_ref().unwrap(), "opaque", NOW, &random)
                .unwrap();
            assert!(!c.headers.iter().any(|(k, _)| k == "authorization"));
            assert_eq!(c.url.authority, "internal:8443");
            let fields = form(&body_of(&c));
            let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(
                names,
                [
                    "token",
                    "token_type_hint",
                    "client_id",
                    "client_assertion_type",
                    "client_assertion"
                ]
            );
            assert_eq!(fields[2].1, "pep-jwt");
            assert_eq!(
                fields[3].1,
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            );
            let (header, claims) = verified(&fields[4].1, jwk);
            let mut expected_header = json!({"alg": alg, "typ": "JWT"});
            if let Some(kid) = kid {
                expected_header["kid"] = Value::from(kid);
            }
            assert_eq!(header, expected_header, "{alg}");
            assert_eq!(
                claims,
                json!({
                    "iss": "pep-jwt",
                    "sub": "pep-jwt",
                    // The endpoint's own URL, not the authority it is sent to.
                    "aud": "https://as.test/token/introspection",
                    "iat": NOW,
                    "exp": NOW + 60,
                    "jti": "000102030405060708090a0b0c0d0e0f",
                }),
                "{alg}"
            );
            // The next callout: a new assertion with a new jti.
            let again = i
                .callout(i.endpoint.as_ref().unwrap(), "opaque", NOW + 1, &random)
                .unwrap();
            let (_, claims) = verified(&form(&body_of(&again))[4].1, jwk);
            assert_eq!(claims["jti"], "101112131415161718191a1b1c1d1e1f");
            assert_eq!(claims["iat"], NOW + 1);
        }
    }

    #[test]
    fn no_random_bytes_no_assertion() {
        let i = jwt_settings(ES256_JWK);
        let e = i
            .callout(i.endpoint.as_ref().unwrap(), "opaque", NOW, &NoRandom)
            .unwrap_err();
        assert!(matches!(e, AssertionError::Random(_)), "{e}");
        assert!(e.to_string().contains("jti"), "{e}");
    }

    #[test]
    fn the_private_key_can_come_from_the_environment_or_as_text() {
        let i = compile(
            r#"{"endpoint":"http://as/i","client_id":"p","auth_method":"private_key_jwt","private_key_env":"PEP_JWK"}"#,
        )
        .unwrap();
        let c = i
            .callout(
                i.endpoint.as_ref().unwrap(),
                "t",
                NOW,
                &CountingRandom::default(),
            )
            .unwrap();
        let (header, _) = verified(&form(&body_of(&c))[4].1, ED25519_JWK);
        assert_eq!(header["alg"], "EdDSA");
        let as_text = serde_json::to_string(ES256_JWK).unwrap();
        let i = jwt_settings(&as_text);
        assert!(format!("{i:?}").contains("ES256"));
    }

    #[test]
    fn the_private_key_never_shows() {
        for jwk in [ES256_JWK, ED25519_JWK] {
            let i = jwt_settings(jwk);
            let d: Value = serde_json::from_str(jwk).unwrap();
            let d = d["d"].as_str().unwrap();
            let debug = format!("{i:?}");
            assert!(debug.contains("<private>") && !debug.contains(d), "{debug}");
            let c = i
                .callout(
                    i.endpoint.as_ref().unwrap(),
                    "t",
                    NOW,
                    &CountingRandom::default(),
                )
                .unwrap();
            assert!(!body_of(&c).contains(d));
            assert!(!format!("{c:?}").contains(d));
        }
        // Nor in the refusal of a key that does not match its public part.
        let wrong = ES256_JWK.replace(
            "sV_R5wNzFJPtishYtK7xGuOxp0XTK9T4EHHBaL5WYyo",
            "rt21Xi4fE-1Vv4mIABtjqdE3Xr-l_PHbeORjaMwMMj0",
        );
        let e = compile(&format!(
            r#"{{"endpoint":"http://x/","client_id":"p","auth_method":"private_key_jwt","private_key":{wrong}}}"#
        ))
        .unwrap_err();
        assert!(!e.to_string().contains("mpWhvk6J"), "{e}");
    }

    #[test]
    fn unusable_private_keys_are_refused_at_load() {
        let public_only =
            ES256_JWK.replace(r#","d":"mpWhvk6JTa9whsH--944EixqDgVK7sw1_oI24qz7ook""#, "");
        let short_d = ED25519_JWK.replace("AQXxWxNExKUS791-DUQTwuW_A7RJY4YfSIVYTvp25MA", "AQXx");
        let other_x = ED25519_JWK.replace(
            "9GahbjkaFmHvVuz7VdIcWKNLpk9ZoJ6a_sDFMRzfCPM",
            "1SrWhADyEBvbZOFwka_QLi6Dk4vV_tRHOoU-lCJ0fO0",
        );
        let wrong_alg = ES256_JWK.replace(r#""kid""#, r#""alg":"ES384","kid""#);
        let enc = ES256_JWK.replace(r#""kid""#, r#""use":"enc","kid""#);
        let p384 = ES256_JWK.replace("P-256", "P-384");
        for (jwk, problem) in [
            (public_only.as_str(), "no `d`"),
            (short_d.as_str(), "32 bytes"),
            (other_x.as_str(), "not the public key"),
            (wrong_alg.as_str(), "ES384"),
            (enc.as_str(), "sig"),
            (p384.as_str(), "P-384"),
            (
                r#"{"kty":"RSA","n":"AQAB","e":"AQAB","d":"AQAB"}"#,
                "RSA keys are not supported",
            ),
            (r#"{"kty":"oct","k":"c2VjcmV0"}"#, "not supported"),
            (r#""{not json""#, "JSON text"),
            ("[1]", "JSON object"),
        ] {
            let e = compile(&format!(
                r#"{{"endpoint":"http://x/","client_id":"p","auth_method":"private_key_jwt","private_key":{jwk}}}"#
            ))
            .unwrap_err();
            assert_eq!(
                e.field, "issuers[0].introspection.private_key",
                "{jwk}: {e}"
            );
            assert!(e.to_string().contains(problem), "{jwk}: {e}");
        }
    }

    #[test]
    fn without_random_bytes_the_engine_denies_503_and_holds_no_worker_back() {
        use crate::config::Config;
        use crate::engine::{verdict_for, State, Verdict};
        use crate::response::Denial;
        use crate::services::testing::MemoryStore;
        let c = Config::from_json(
            format!(
                r#"{{"issuers":[{{"issuer":"https://as.test","audiences":"any","introspection":{{
                "endpoint":"https://as.test/token/introspection","upstream":"as","client_id":"pep-jwt",
                "auth_method":"private_key_jwt","private_key":{ES256_JWK}}}}}]}}"#
            )
            .as_bytes(),
            &|_| None,
        )
        .unwrap();
        let store = Rc::new(MemoryStore::default());
        let headers = crate::engine::test_support::bearer("opaque-token");
        let request = crate::engine::test_support::get("/api", &headers, None);
        let denied = |state: &mut State| match verdict_for(&c, state, &request, NOW) {
            Verdict::Deny(denial @ Denial::IntrospectionUnavailable { .. }) => {
                assert_eq!(denial.status(), 503);
                let Denial::IntrospectionUnavailable { cause, .. } = &denial else {
                    unreachable!()
                };
                assert!(cause.contains("jti"), "{cause}");
            }
            other => panic!("{other:?}"),
        };
        let asks = |state: &mut State| {
            let Verdict::Wait(crate::engine::Wait {
                fetch: Some(crate::engine::Fetch { callout, .. }),
                ..
            }) = verdict_for(&c, state, &request, NOW)
            else {
                panic!("no callout");
            };
            let (_, claims) = verified(&form(&body_of(&callout))[4].1, ES256_JWK);
            assert_eq!(claims["aud"], "https://as.test/token/introspection");
        };
        // The glue gave this worker no random source: 503, and no in-flight
        // marker in shared data, so another worker asks at once.
        let mut first = State::new(&c);
        first.share_through(store.clone(), 1);
        denied(&mut first);
        let mut second = State::new(&c);
        second.share_through(store.clone(), 2);
        second.use_random(Rc::new(CountingRandom::default()));
        asks(&mut second);
        // Nor a marker of its own: once it has randomness, it asks too.
        let mut lone = State::new(&c);
        denied(&mut lone);
        lone.use_random(Rc::new(CountingRandom::default()));
        asks(&mut lone);
    }

    #[test]
    fn answers_are_active_inactive_or_a_failure_never_a_guess() {
        assert_eq!(
            interpret(&reply(200, r#"{"active":false}"#)),
            Ok(Answer::Inactive)
        );
        let Ok(Answer::Active(claims)) =
            interpret(&reply(200, r#"{"active":true,"scope":"a b","sub":"u"}"#))
        else {
            panic!()
        };
        assert_eq!(claims.get("sub"), Some(&Value::from("u")));
        // An answer about one token is never 64 KiB: not even parsed.
        let padded = format!(
            r#"{{"active":true,"sub":"u","pad":"{}"}}"#,
            "x".repeat(crate::callout::MAX_SMALL_REPLY_BYTES)
        );
        assert!(matches!(
            interpret(&reply(200, &padded)),
            Err(IntrospectionError::Callout(CalloutError::TooLarge { .. }))
        ));
        for (status, body, err) in [
            (200, "<html>hi</html>", IntrospectionError::NotJson),
            (200, "[true]", IntrospectionError::NotJson),
            (200, r#"{"active":"true"}"#, IntrospectionError::NoActive),
            (200, r#"{"scope":"a"}"#, IntrospectionError::NoActive),
            (
                500,
                r#"{"active":true}"#,
                IntrospectionError::Callout(CalloutError::Status(500)),
            ),
            (
                401,
                r#"{"error":"invalid_client"}"#,
                IntrospectionError::Callout(CalloutError::Status(401)),
            ),
        ] {
            assert_eq!(interpret(&reply(status, body)), Err(err), "{status} {body}");
        }
        let none = CalloutReply::default();
        assert_eq!(
            interpret(&none),
            Err(IntrospectionError::Callout(CalloutError::NoResponse))
        );
        let huge = CalloutReply {
            status: Some(200),
            body: Vec::new(),
            oversized: Some(5 << 20),
        };
        assert!(interpret(&huge)
            .unwrap_err()
            .to_string()
            .contains("5242880"));
    }

    fn claims(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn results_live_until_exp_less_the_margin_or_the_maximum() {
        let i = compile(
            r#"{"endpoint":"http://x/","client_id":"p","client_secret":"s","max_ttl_seconds":300,"failure_mode":"serve_stale","stale_seconds":30}"#,
        )
        .unwrap();
        assert_eq!(i.fresh_until(Some(1_000_100), 1_000_000), 1_000_095);
        assert_eq!(i.fresh_until(Some(9_000_000), 1_000_000), 1_000_300);
        assert_eq!(i.fresh_until(None, 1_000_000), 1_000_300);
        assert_eq!(i.stale_until(1_000_300), 1_000_330);
    }

    #[test]
    fn the_phantom_json_is_ascii() {
        let json = ascii_json(&claims(r#"{"name":"Zoë 😀","n":1}"#));
        assert!(json.is_ascii());
        let back: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["name"], "Zoë 😀");
    }
}
