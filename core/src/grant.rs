//! What a verified token grants: the few facts that later decisions (policy,
//! consumers, PDP) and the upstream headers use, extracted once and cached in
//! place of the token. A payload with a 3,000-entry `groups` claim costs its
//! forwarded values here, not its parsed JSON tree.

use std::fmt;

use serde_json::{Map, Value};

use ct_codecs::{Base64, Base64UrlSafeNoPadding, Encoder as _};

use crate::cache::{string_weight, Weigh};
use crate::headers::is_header_value;
use crate::jwt::VerifiedToken;
use crate::uma::{permissions, Permission};

/// How a forwarded value is written into its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimFormat {
    /// `forward.claims`: text, numbers and booleans as they are, arrays of
    /// strings joined by spaces; anything else is not sent.
    Text,
    /// Text as it is, numbers and booleans written out, arrays and objects as
    /// JSON.
    String,
    /// An array's items joined by the separator.
    List(String),
    /// Standard base64 (padded) of the text, or of the JSON.
    Base64,
    /// An object as an unsigned (`alg: none`) JWT.
    Jwt,
    /// Percent-encoded text, or JSON.
    Urlencoded,
    /// Gluu's default: `String` for text and numbers, `Base64` otherwise.
    Auto,
}

/// One value sent upstream from the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardClaim {
    /// None: the whole payload (or introspection answer).
    pub claim: Option<String>,
    pub header: String,
    pub format: ClaimFormat,
}

/// What a grant keeps of a token: what later decisions and the upstream
/// headers will read, as the configuration says ([`crate::config::Config::grant_keeps`]).
#[derive(Debug, Clone, Copy)]
pub struct Keep<'a> {
    /// Where granted scopes are read from, first present wins.
    pub scope_claims: &'a [String],
    /// The values sent upstream (`forward.claims`, then `forward.headers`).
    pub forward: &'a [ForwardClaim],
    /// The payload as signed, for `forward.payload_header`.
    pub payload: bool,
    /// The claims as JSON, for the PDP.
    pub claims_json: bool,
    /// The UMA authorization server: its tokens' permissions are kept.
    pub uma_issuer: Option<usize>,
    /// `aud`, for the audience check of each request's resource (RFC 8707).
    pub audiences: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub issuer: usize,
    /// `sub`, or the client id when there is no `sub`.
    pub subject: Option<String>,
    /// With a `revocation` block: what revocations are checked against,
    /// made once when the grant is, so a cached grant is checked without
    /// any hashing (boxed: one pointer in grants without it).
    pub revocation: Option<Box<RevocationKeys>>,
    /// `client_id`, or `azp`.
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    pub expires_at: Option<u64>,
    /// `(index into config.forward.claims, value)` for the claims present.
    pub forwarded: Vec<(usize, String)>,
    /// The payload as signed (base64url), kept only for `forward.payload_header`.
    pub payload: Option<String>,
    /// The claims as JSON text, kept only when a PDP is asked about them.
    claims_json: Option<String>,
    /// An introspected token's answer as ASCII JSON, kept only for
    /// `forward.phantom_token_header`.
    pub phantom: Option<String>,
    /// An RPT's UMA permissions (only for the UMA issuer's tokens).
    pub permissions: Vec<Permission>,
    /// `cnf.jkt`: the thumbprint of the key the token is bound to (DPoP).
    pub cnf_jkt: Option<String>,
    /// `cnf.x5t#S256`: the SHA-256 of the client certificate the token is
    /// bound to (RFC 8705), base64url.
    pub cnf_x5t: Option<String>,
    /// `acr`: the authentication context class (RFC 9470 step-up), when a
    /// string of at most 256 bytes.
    pub acr: Option<String>,
    /// `auth_time`: when the user authenticated (seconds since the epoch).
    pub auth_time: Option<u64>,
    /// `aud` (text values only), kept only where protected resources are
    /// configured: each request checks it against its own resource's
    /// audiences, so a grant cached for one resource is never taken for
    /// another.
    pub audiences: Vec<String>,
}

/// A token's `iat` (a revocation refuses the tokens issued before it) and
/// the deny-set keys of its subject (`sub`, not a client id standing in for
/// it) and session (`sid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationKeys {
    pub issued_at: Option<u64>,
    pub keys: Vec<[u8; 16]>,
}

/// Why a validly signed token still cannot be let through: a value it would
/// send upstream cannot be carried faithfully in a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantError {
    /// CR, LF, NUL or another control character: Envoy would refuse the
    /// header, or a backend would split it.
    NotAHeaderValue { claim: String },
    /// The scope header is comma-separated (as Gluu Gateway sent it), so a
    /// scope with a comma would read as two scopes upstream.
    CommaInScope,
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantError::NotAHeaderValue { claim } => write!(
                f,
                "the {claim} claim holds control characters and cannot be sent upstream"
            ),
            GrantError::CommaInScope => write!(
                f,
                "a granted scope contains a comma, which the comma-separated scope header cannot carry"
            ),
        }
    }
}

impl std::error::Error for GrantError {}

fn header_safe(claim: &str, value: Option<String>) -> Result<Option<String>, GrantError> {
    match value {
        Some(v) if !is_header_value(&v) => Err(GrantError::NotAHeaderValue {
            claim: claim.to_string(),
        }),
        v => Ok(v),
    }
}

/// A value in one of Gluu's `custom_headers` formats; `None` when the value
/// does not fit the format (Gluu sent no header then either).
pub fn render(value: &Value, format: &ClaimFormat) -> Option<String> {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => None,
        other => Some(ascii_json(other)),
    };
    match format {
        ClaimFormat::Text | ClaimFormat::String => text(value),
        ClaimFormat::List(sep) => match value {
            Value::Array(items) if !items.is_empty() => {
                let parts: Option<Vec<String>> = items.iter().map(text).collect();
                parts.map(|p| p.join(sep))
            }
            _ => None,
        },
        ClaimFormat::Base64 => text(value).and_then(|t| Base64::encode_to_string(t).ok()),
        ClaimFormat::Urlencoded => text(value).map(|t| percent_encode(&t)),
        ClaimFormat::Jwt => match value {
            Value::Object(_) => unsigned_jwt(value),
            _ => None,
        },
        ClaimFormat::Auto => match value {
            Value::Array(_) | Value::Object(_) => render(value, &ClaimFormat::Base64),
            other => text(other),
        },
    }
}

/// `header.payload.` with `{"typ":"JWT","alg":"none"}`: what Gluu sent for
/// its phantom token and `jwt` headers. Unsigned: the upstream must trust
/// the network path from the gateway.
pub fn unsigned_jwt(payload: &Value) -> Option<String> {
    let header = Base64UrlSafeNoPadding::encode_to_string(r#"{"typ":"JWT","alg":"none"}"#).ok()?;
    let body = Base64UrlSafeNoPadding::encode_to_string(payload.to_string()).ok()?;
    Some(format!("{header}.{body}."))
}

fn ascii_json(value: &Value) -> String {
    match value {
        Value::Object(map) => crate::introspection::ascii_json(map),
        other => {
            let mut map = Map::new();
            map.insert(String::new(), other.clone());
            // `{"":X}` → `X`: the same escaping for arrays as for objects.
            let json = crate::introspection::ascii_json(&map);
            json.get(4..json.len().saturating_sub(1))
                .unwrap_or_default()
                .to_string()
        }
    }
}

/// Every byte but `A-Z a-z 0-9 - _ . ~` as `%XX` (RFC 3986 unreserved kept).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Grant {
    pub fn from_token(token: &VerifiedToken, keep: &Keep) -> Result<Grant, GrantError> {
        let client_id = match token.claim_text("client_id") {
            Some(id) => header_safe("client_id", Some(id))?,
            None => header_safe("azp", token.claim_text("azp"))?,
        };
        let subject = token.claim_text("sub").or_else(|| client_id.clone());
        let scopes = token.scopes(keep.scope_claims);
        for scope in &scopes {
            if scope.contains(',') {
                return Err(GrantError::CommaInScope);
            }
            if !is_header_value(scope) {
                return Err(GrantError::NotAHeaderValue {
                    claim: "scope".into(),
                });
            }
        }
        let mut forwarded = Vec::new();
        for (i, forward) in keep.forward.iter().enumerate() {
            let value = match (&forward.claim, &forward.format) {
                (Some(claim), ClaimFormat::Text) => token.claim_text(claim),
                (Some(claim), format) => token.claims().get(claim).and_then(|v| render(v, format)),
                (None, format) => render(&Value::Object(token.claims().clone()), format),
            };
            let name = forward.claim.as_deref().unwrap_or("payload");
            if let Some(value) = header_safe(name, value)? {
                forwarded.push((i, value));
            }
        }
        Ok(Grant {
            issuer: token.issuer_index(),
            subject,
            revocation: None,
            client_id,
            scopes,
            expires_at: token.expires_at(),
            forwarded,
            payload: keep.payload.then(|| token.payload_segment().to_string()),
            claims_json: keep
                .claims_json
                .then(|| Value::Object(token.claims().clone()).to_string()),
            phantom: None,
            permissions: if keep.uma_issuer == Some(token.issuer_index()) {
                permissions(token.claims().get("permissions"))
            } else {
                Vec::new()
            },
            cnf_jkt: token
                .claims()
                .get("cnf")
                .and_then(|cnf| cnf.get("jkt"))
                // A `jkt` that is not text binds to no key at all.
                .map(|jkt| jkt.as_str().unwrap_or_default().to_string()),
            cnf_x5t: token
                .claims()
                .get("cnf")
                .and_then(|cnf| cnf.get("x5t#S256"))
                .map(|x5t| x5t.as_str().unwrap_or_default().to_string()),
            acr: token
                .claims()
                .get("acr")
                .and_then(Value::as_str)
                .filter(|acr| acr.len() <= 256)
                .map(str::to_string),
            // A whole number of seconds; OIDC allows a JSON number, so a
            // fraction is cut, never rounded up.
            auth_time: token.claims().get("auth_time").and_then(|t| {
                t.as_u64()
                    .or_else(|| t.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            }),
            audiences: if keep.audiences {
                match token.claims().get("aud") {
                    Some(Value::String(aud)) => vec![aud.clone()],
                    Some(Value::Array(items)) => items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect(),
                    _ => Vec::new(),
                }
            } else {
                Vec::new()
            },
        })
    }

    /// The claims for a PDP query (empty when no PDP is configured).
    pub fn claims(&self) -> Map<String, Value> {
        self.claims_json
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default()
    }
}

fn option_weight(s: &Option<String>) -> usize {
    s.as_deref().map_or(0, string_weight)
}

impl Weigh for Grant {
    fn weight(&self) -> usize {
        let strings = self
            .scopes
            .iter()
            .map(|s| string_weight(s))
            .chain(self.forwarded.iter().map(|(_, v)| string_weight(v) + 8))
            .chain(self.audiences.iter().map(|a| string_weight(a)))
            .chain(self.permissions.iter().map(|p| {
                p.scopes
                    .iter()
                    .map(|s| string_weight(s))
                    .fold(string_weight(&p.resource_id) + 24, usize::saturating_add)
            }))
            .fold(0usize, usize::saturating_add);
        [
            std::mem::size_of::<Grant>(),
            strings,
            option_weight(&self.subject),
            option_weight(&self.client_id),
            option_weight(&self.payload),
            option_weight(&self.claims_json),
            option_weight(&self.phantom),
            option_weight(&self.cnf_jkt),
            option_weight(&self.cnf_x5t),
            option_weight(&self.acr),
            self.revocation.as_ref().map_or(0, |r| {
                std::mem::size_of::<RevocationKeys>() + r.keys.len() * 16
            }),
        ]
        .into_iter()
        .fold(0, usize::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use serde_json::json;

    use super::*;

    #[test]
    fn gluu_header_formats() {
        let list = ClaimFormat::List(", ".into());
        let table: &[(Value, &ClaimFormat, Option<&str>)] = &[
            (json!("alice"), &ClaimFormat::String, Some("alice")),
            (json!(17), &ClaimFormat::String, Some("17")),
            (
                json!({"a": "é"}),
                &ClaimFormat::String,
                Some(r#"{"a":"\u00e9"}"#),
            ),
            (json!(["a", "b"]), &list, Some("a, b")),
            (json!([]), &list, None),
            (json!("a b"), &list, None),
            (json!("alice"), &ClaimFormat::Base64, Some("YWxpY2U=")),
            (json!("a b/c"), &ClaimFormat::Urlencoded, Some("a%20b%2Fc")),
            (
                json!({"sub": "a"}),
                &ClaimFormat::Jwt,
                Some("eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0."),
            ),
            (json!("a"), &ClaimFormat::Jwt, None),
            (json!("a"), &ClaimFormat::Auto, Some("a")),
            (json!(["a"]), &ClaimFormat::Auto, Some("WyJhIl0=")),
            (Value::Null, &ClaimFormat::String, None),
        ];
        for (value, format, expected) in table {
            assert_eq!(
                render(value, format).as_deref(),
                *expected,
                "{value} as {format:?}"
            );
        }
    }
}
