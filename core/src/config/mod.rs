//! The filter's JSON configuration: serde structs that refuse unknown fields
//! (`raw`), compiled once (in `on_configure`) into an immutable [`Config`].
//! Every error names the field and the problem; the request path never sees
//! raw config.

mod compile;
mod hints;
mod issuer;
mod located;
mod raw;

use serde::Deserialize;
use serde_json::Value;

pub use crate::config_error::ConfigError;
use crate::consumer::{Consumers, IdentityHeaderNames};
pub use crate::extract::TokenSource;
use crate::grant::Keep;
pub use crate::grant::{ClaimFormat, ForwardClaim};
pub use crate::issuer::{Issuer, KeySource};
pub use crate::jwt::JwtRules;
use crate::pdp::Pdp;
use crate::policy::{PathSet, Policy, PolicyDecision};
use crate::response::ChallengeHints;
pub use crate::response::ErrorBody;
use crate::shared_cache::SharedCache;
use crate::token_client::TokenClient;
use crate::uma::Uma;
use crate::upstream_oauth::UpstreamOAuth;
use crate::wait::Waits;

/// How `forward.phantom_token_header` carries an introspection answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhantomFormat {
    /// Compact ASCII JSON.
    #[default]
    Json,
    /// `Bearer ` and an unsigned (`alg: none`) JWT of the answer, as Gluu's
    /// `pass_credentials: phantom_token` sent it in `authorization`.
    Jwt,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forward {
    /// `forward.claims`, then `forward.headers`.
    pub claims: Vec<ForwardClaim>,
    /// Receives the verified payload, base64url-encoded as Envoy's jwt_authn does.
    pub payload_header: Option<String>,
    /// Receives an introspected token's answer as JSON (unsigned).
    pub phantom_token_header: Option<String>,
    pub phantom_token_format: PhantomFormat,
    /// Remove the credential from wherever it was found before forwarding.
    pub hide_credentials: bool,
}

impl Forward {
    /// Whether phantom tokens go in `authorization` (Gluu's
    /// `pass_credentials: phantom_token`): then the filter owns that header
    /// on every outcome, as it owns every other header it sets.
    pub fn phantom_in_authorization(&self) -> bool {
        self.phantom_token_header.as_deref() == Some("authorization")
    }
}

/// How much the filter logs; the host's own log level filters on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
    Critical,
}

/// Whether keys and introspection answers are shared between workers
/// through proxy-wasm shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharedData {
    /// On Envoy; off elsewhere: the Rust SDK panics (killing the VM) on a
    /// shared-data error, and Kong answers one without a shared-memory zone.
    #[default]
    Auto,
    On,
    Off,
}

impl SharedData {
    pub fn enabled(self, envoy: bool) -> bool {
        match self {
            SharedData::Auto => envoy,
            SharedData::On => true,
            SharedData::Off => false,
        }
    }
}

/// Who checks RS* and ES* signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crypto {
    /// The host's crypto where it has it (Envoy's `verify_signature`) and
    /// passes the self-test at load; pure Rust otherwise.
    #[default]
    Auto,
    /// The host's crypto, or the filter refuses to start.
    Host,
    /// Pure Rust in the VM.
    Wasm,
}

/// The budget of one per-worker cache; zero in either disables it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    pub max_bytes: usize,
    pub max_entries: usize,
}

pub struct Config {
    pub realm: String,
    pub log_level: LogLevel,
    pub issuers: Vec<Issuer>,
    pub rules: JwtRules,
    pub token_sources: Vec<TokenSource>,
    pub forward: Forward,
    pub token_cache: CacheLimits,
    /// Byte budget of the cache of tokens whose signature failed.
    pub rejected_cache_bytes: usize,
    /// Introspection answers shared by all workers.
    pub shared_cache: SharedCache,
    /// Introspection answers shared by every instance through etcd.
    pub fleet_cache: Option<crate::fleet_cache::FleetCache>,
    pub shared_data: SharedData,
    /// Bounds on the requests a worker keeps waiting.
    pub waits: Waits,
    /// How much of a request body JSON-RPC selectors read, and how long for.
    pub jsonrpc: crate::body::BodyLimits,
    pub crypto: Crypto,
    /// Scope rules per path and method; without one, any valid token passes.
    pub policy: Option<Policy>,
    /// With a policy: whether a path/method that no rule names is refused.
    pub deny_by_default: bool,
    /// Paths that need no token at all.
    pub public_paths: PathSet,
    /// Where granted scopes are read from, first present wins.
    pub scope_claims: Vec<String>,
    pub identity: IdentityHeaderNames,
    pub consumers: Consumers,
    /// Where the anonymous consumer (if any) may go without a valid token.
    pub anonymous_paths: PathSet,
    pub pdp: Option<Pdp>,
    /// The gateway's own OAuth clients (client credentials), by name order.
    pub clients: Vec<TokenClient>,
    /// Where the gateway sends its own token upstream; first match wins.
    pub upstream_oauth: Vec<UpstreamOAuth>,
    pub uma: Option<Uma>,
    /// Every header this filter may set upstream, as spelling keys
    /// ([`spelling_key`]): incoming headers with one of these keys are
    /// stripped first, so a client cannot forge them in any spelling.
    pub strip_headers: Vec<String>,
    /// Things that load but probably do not do what was meant; the glue logs
    /// them at `warn` when the filter starts.
    pub warnings: Vec<String>,
    /// Facts about the configuration the glue logs at `info` when the filter
    /// starts (what the `gluu` block ignored and why).
    pub notes: Vec<String>,
    pub error_body: ErrorBody,
    /// How DPoP proofs are checked (the issuers say whose tokens need them).
    pub dpop: crate::dpop::DpopSettings,
    /// Where a certificate-bound token's client certificate is read from.
    pub client_certificate: crate::mtls::ClientCertificate,
    /// Protected resources (RFC 9728): their metadata, and the audiences
    /// tokens must name on their paths.
    pub resources: crate::resource::Resources,
    /// Revocations pushed by a transmitter, and the deny set they fill.
    pub revocation: Option<crate::revocation::Revocation>,
}

impl Config {
    /// What a grant keeps of a token under this configuration.
    pub fn grant_keeps(&self) -> Keep<'_> {
        Keep {
            scope_claims: &self.scope_claims,
            forward: &self.forward.claims,
            payload: self.forward.payload_header.is_some(),
            claims_json: self.pdp.is_some(),
            uma_issuer: self.uma.as_ref().map(|uma| uma.issuer),
            audiences: !self.resources.is_empty(),
        }
    }

    /// Whether a decision may read the client's address: only introspection
    /// budgets, UMA and upstream OAuth (token exchange) count calls per
    /// client. Without them the glue does not ask the host (a property read
    /// on every request).
    pub fn needs_client_address(&self) -> bool {
        self.issuers.iter().any(|i| i.introspection.is_some())
            || self.uma.is_some()
            || !self.upstream_oauth.is_empty()
    }

    /// Whether a decision may read the connection's client certificate:
    /// only for an issuer whose tokens may be certificate-bound, with the
    /// certificate read from the connection.
    pub fn needs_peer_certificate(&self) -> bool {
        self.client_certificate.source == crate::mtls::CertificateSource::Connection
            && self
                .issuers
                .iter()
                .any(|i| i.certificate_bound != crate::mtls::CertificateBound::Off)
    }

    /// What this configuration needs of its host that a host other than
    /// Envoy lacks: Kong's ngx_wasm_module has no peer-certificate
    /// attribute, so `certificate_bound: "required"` with certificates read
    /// from the connection could never pass there, and is refused rather
    /// than silently failing every request. (`allowed` stays: a bound token
    /// then gets 401 `certificate_missing`, never a pass.)
    pub fn check_host(&self, envoy: bool) -> Result<(), ConfigError> {
        if envoy || self.client_certificate.source != crate::mtls::CertificateSource::Connection {
            return Ok(());
        }
        match self
            .issuers
            .iter()
            .position(|i| i.certificate_bound == crate::mtls::CertificateBound::Required)
        {
            Some(i) => Err(ConfigError::new(
                format!("issuers[{i}].certificate_bound"),
                "\"required\" needs the client certificate of the connection, which only Envoy tells a filter; behind a proxy that terminates TLS and sets x-forwarded-client-cert, set `client_certificate.source: \"xfcc\"`",
            )),
            None => Ok(()),
        }
    }

    /// What the protected resource of this request (`:path` as received)
    /// adds to a denial's challenge: its metadata URL, and the scopes the
    /// policy wants for this method and path. Nothing outside every resource.
    pub fn challenge_hints(&self, method: &str, target: &str) -> ChallengeHints<'_> {
        if self.resources.is_empty() {
            return ChallengeHints::default();
        }
        let Ok(target) = crate::request::normalize_target(target) else {
            return ChallengeHints::default();
        };
        let Some(resource) = self.resources.for_path(&target.path) else {
            return ChallengeHints::default();
        };
        let scope = match self
            .policy
            .as_ref()
            .map(|p| p.decide(method, &target.path, &[]))
        {
            Some(
                PolicyDecision::InsufficientScope { required, .. }
                | PolicyDecision::StepUp { required, .. },
            ) if !required.is_empty() => Some(required.join(" ")),
            _ => None,
        };
        ChallengeHints {
            resource_metadata: Some(&resource.metadata_url),
            scope,
        }
    }

    /// `env` reads the filter's environment, for the settings that name a
    /// variable instead of holding a secret (`client_secret_env`,
    /// `private_key_env`); the glue passes the process environment.
    pub fn from_json(
        json: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::new(
                "",
                "the configuration is empty; at least `issuers` is required",
            ));
        }
        let document: Value =
            serde_json::from_slice(json).map_err(|e| ConfigError::new("", e.to_string()))?;
        let (raw, notes) = hints::prepare(document)?;
        let mut config = compile::compile(raw, env)?;
        config.notes = notes;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::jwks::Alg;

    /// The message of a refused configuration.
    pub(super) fn err(json: &str) -> String {
        match Config::from_json(json.as_bytes(), &|_| None) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e.to_string(),
        }
    }

    /// Each configuration is refused with an error that contains its text.
    pub(super) fn refused_with(table: &[(&str, &str)]) {
        for (json, expected) in table {
            let e = err(json);
            assert!(
                e.contains(expected),
                "{json}\n  gave: {e}\n  expected: {expected}"
            );
        }
    }

    /// The glue reads the client's address and certificate only where a
    /// decision may use them (each is a host call on every request).
    #[test]
    fn the_connection_facts_a_decision_reads() {
        let load = |json: &str| Config::from_json(json.as_bytes(), &|_| None).unwrap();
        let jwt = r#"{"issuers":[{"issuer":"https://a.test","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"#;
        let plain = load(&format!("{jwt}\"}}]}}"));
        assert!(!plain.needs_client_address());
        // `certificate_bound` is "allowed" by default: a bound token is checked.
        assert!(plain.needs_peer_certificate());
        let off = load(&format!("{jwt}\",\"certificate_bound\":\"off\"}}]}}"));
        assert!(!off.needs_peer_certificate());
        let introspecting = load(
            r#"{"issuers":[{"issuer":"https://a.test","audiences":"any","introspection":{"endpoint":"https://a.test/i","upstream":"a","client_id":"p","client_secret":"s"}}]}"#,
        );
        assert!(introspecting.needs_client_address());
    }

    #[test]
    fn challenge_hints_come_from_the_requests_resource_and_policy() {
        let c = Config::from_json(
            br#"{"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}],
                 "resources":[{"resource":"https://api.example/mcp"}],
                 "policy":{"GET /mcp/??":"read","POST /mcp/?":"write and admin","GET /open":"read"}}"#,
            &|_| None,
        )
        .unwrap();
        let url = Some("https://api.example/.well-known/oauth-protected-resource/mcp");
        assert_eq!(
            c.challenge_hints("GET", "/mcp/./x?a=b"),
            ChallengeHints {
                resource_metadata: url,
                scope: Some("read".into())
            }
        );
        assert_eq!(
            c.challenge_hints("POST", "/mcp/orders").scope.as_deref(),
            Some("write admin")
        );
        assert_eq!(
            c.challenge_hints("DELETE", "/mcp"),
            ChallengeHints {
                resource_metadata: url,
                scope: None
            }
        );
        assert_eq!(c.challenge_hints("GET", "/open"), ChallengeHints::default());
        assert_eq!(
            c.challenge_hints("GET", "/mcp/%2F"),
            ChallengeHints::default()
        );
    }

    /// A shared secret long enough for HMAC.
    pub(super) const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn minimal_discovery_config_compiles_with_safe_defaults() {
        let c = Config::from_json(
            br#"{"issuers":[{"issuer":"https://as.test/realm","audiences":["api"],"discovery":true,"upstream":"as"}]}"#,
            &|_| None,
        )
        .unwrap();
        assert_eq!(
            c.rules,
            JwtRules {
                clock_skew_seconds: 60,
                max_lifetime_seconds: None,
                require_exp: true
            }
        );
        assert_eq!(
            c.token_sources,
            vec![TokenSource::Header {
                name: "authorization".into(),
                prefix: Some("Bearer".into())
            }]
        );
        let issuer = c.issuers.first().unwrap();
        assert!(
            !issuer.algorithms.contains(&Alg::HS256),
            "no HMAC without a secret"
        );
        match &issuer.source {
            KeySource::Discovery(url) => {
                assert_eq!(url.path, "/realm/.well-known/openid-configuration")
            }
            _ => panic!("expected discovery"),
        }
    }

    #[test]
    fn a_gluu_block_compiles_onto_the_same_fields() {
        let json = r#"{"gluu": {
            "upstream": "gluu",
            "introspection": {"client_id": "gw", "client_secret": "s"},
            "consumers": [{"id": "c-1", "username": "app", "custom_id": "client-1"}],
            "gluu-oauth-auth": {"oxd_id": "x", "oxd_url": "https://oxd", "client_id": "c", "client_secret": "s",
                                "op_url": "https://op.example.com", "anonymous": " ", "pass_credentials": "phantom_token",
                                "custom_headers": [{"header_name": "x-token", "value_lua_exp": "introspect_data", "format": "jwt"}]},
            "gluu-oauth-pep": {"op_url": "https://op.example.com", "deny_by_default": true,
                               "oauth_scope_expression": "[{\"path\":\"/api/??\",\"conditions\":[{\"httpMethods\":[\"GET\"],\"scope_expression\":{\"rule\":{\"var\":0},\"data\":[\"read\"]}}]}]"}
        }}"#;
        let c = Config::from_json(json.as_bytes(), &|_| None).unwrap();
        let issuer = c.issuers.first().unwrap();
        assert_eq!(issuer.issuer, "https://op.example.com");
        assert!(
            matches!(&issuer.source, KeySource::Discovery(url) if url.path == "/.well-known/openid-configuration")
        );
        assert!(issuer.audiences.is_empty(), "audiences default to \"any\"");
        assert!(issuer.introspection.is_some());
        assert!(c.policy.is_some());
        assert_eq!(c.error_body, ErrorBody::Kong);
        assert_eq!(
            c.forward.phantom_token_header.as_deref(),
            Some("authorization")
        );
        assert_eq!(c.forward.phantom_token_format, PhantomFormat::Jwt);
        assert!(!c.strip_headers.iter().any(|h| h == "authorization"));
        assert_eq!(
            c.forward.claims,
            vec![ForwardClaim {
                claim: None,
                header: "x-token".into(),
                format: ClaimFormat::Jwt
            }]
        );
        assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
        // Without the block the default stays RFC 6750; it may be chosen either way.
        let plain = format!(
            r#"{{"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}]}}"#
        );
        assert_eq!(
            Config::from_json(plain.as_bytes(), &|_| None)
                .unwrap()
                .error_body,
            ErrorBody::Rfc6750
        );
        let overridden = json.replacen("{\"gluu\"", "{\"error_body\": \"rfc6750\", \"gluu\"", 1);
        assert_eq!(
            Config::from_json(overridden.as_bytes(), &|_| None)
                .unwrap()
                .error_body,
            ErrorBody::Rfc6750
        );
    }
}
