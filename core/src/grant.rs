//! What a verified token grants: the few facts that later decisions (policy,
//! consumers, PDP) and the upstream headers use, extracted once and cached in
//! place of the token. A payload with a 3,000-entry `groups` claim costs its
//! forwarded values here, not its parsed JSON tree.

use std::fmt;

use serde_json::{Map, Value};

use crate::cache::{string_weight, Weigh};
use crate::config::Config;
use crate::headers::is_header_value;
use crate::jwt::VerifiedToken;
use crate::uma::{permissions, Permission};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub issuer: usize,
    /// `sub`, or the client id when there is no `sub`.
    pub subject: Option<String>,
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

impl Grant {
    pub fn from_token(token: &VerifiedToken, config: &Config) -> Result<Grant, GrantError> {
        let client_id = match token.claim_text("client_id") {
            Some(id) => header_safe("client_id", Some(id))?,
            None => header_safe("azp", token.claim_text("azp"))?,
        };
        let subject = token.claim_text("sub").or_else(|| client_id.clone());
        let scopes = token.scopes(&config.scope_claims);
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
        for (i, (claim, _header)) in config.forward.claims.iter().enumerate() {
            if let Some(value) = header_safe(claim, token.claim_text(claim))? {
                forwarded.push((i, value));
            }
        }
        Ok(Grant {
            issuer: token.issuer_index(),
            subject,
            client_id,
            scopes,
            expires_at: token.expires_at(),
            forwarded,
            payload: config
                .forward
                .payload_header
                .as_ref()
                .map(|_| token.payload_segment().to_string()),
            claims_json: config
                .pdp
                .as_ref()
                .map(|_| Value::Object(token.claims().clone()).to_string()),
            phantom: None,
            permissions: match &config.uma {
                Some(uma) if uma.issuer == token.issuer_index() => {
                    permissions(token.claims().get("permissions"))
                }
                _ => Vec::new(),
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
        ]
        .into_iter()
        .fold(0, usize::saturating_add)
    }
}
