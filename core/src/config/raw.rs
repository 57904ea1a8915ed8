//! The configuration as written: serde structs that refuse unknown fields,
//! with the defaults of every optional setting. Nothing here checks a value;
//! `compile` and `issuer` do.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{Crypto, LogLevel, PhantomFormat, SharedData};
use crate::body::RawBodyLimits;
use crate::consumer::{AnonymousConfig, ConsumerConfig, IdentityHeaderNames};
use crate::introspection::{Mode, RawIntrospection};
use crate::pdp::PdpConfig;
use crate::response::ErrorBody;
use crate::token_client::RawTokenClient;
use crate::uma::RawUma;
use crate::upstream_oauth::RawUpstreamOAuth;
use crate::wait::RawWaits;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default = "default_realm")]
    pub(super) realm: String,
    #[serde(default)]
    pub(super) log_level: LogLevel,
    /// May be empty when the `gluu` block gives the issuer.
    #[serde(default)]
    pub(super) issuers: Vec<RawIssuer>,
    #[serde(default = "default_skew")]
    pub(super) clock_skew_seconds: u64,
    pub(super) max_lifetime_seconds: Option<u64>,
    #[serde(default = "yes")]
    pub(super) require_exp: bool,
    pub(super) token_sources: Option<Vec<RawTokenSource>>,
    #[serde(default)]
    pub(super) forward: RawForward,
    #[serde(default = "default_cache_entries")]
    pub(super) token_cache_entries: usize,
    #[serde(default = "default_cache_bytes")]
    pub(super) token_cache_bytes: usize,
    #[serde(default = "default_rejected_cache_bytes")]
    pub(super) rejected_cache_bytes: usize,
    #[serde(default)]
    pub(super) shared_data: SharedData,
    #[serde(default)]
    pub(super) waits: Option<RawWaits>,
    pub(super) jsonrpc: Option<RawBodyLimits>,
    #[serde(default)]
    pub(super) crypto: Crypto,
    #[serde(default = "default_introspection_cache_bytes")]
    pub(super) introspection_cache_bytes: usize,
    #[serde(default = "default_introspection_entry_bytes")]
    pub(super) introspection_cache_entry_bytes: usize,
    pub(super) policy: Option<Value>,
    #[serde(default = "yes")]
    pub(super) deny_by_default: bool,
    #[serde(default)]
    pub(super) public_paths: Vec<String>,
    pub(super) scope_claims: Option<Vec<String>>,
    #[serde(default)]
    pub(super) identity_headers: IdentityHeaderNames,
    pub(super) consumers: Option<BTreeMap<String, ConsumerConfig>>,
    #[serde(default)]
    pub(super) allow_unregistered_clients: bool,
    pub(super) anonymous: Option<AnonymousConfig>,
    pub(super) pdp: Option<PdpConfig>,
    #[serde(default)]
    pub(super) clients: BTreeMap<String, RawTokenClient>,
    #[serde(default)]
    pub(super) upstream_oauth: Vec<RawUpstreamOAuth>,
    pub(super) uma: Option<RawUma>,
    #[serde(default)]
    pub(super) error_body: Option<ErrorBody>,
    pub(super) dpop: Option<crate::dpop::RawDpop>,
    #[serde(default)]
    pub(super) client_certificate: crate::mtls::ClientCertificate,
    #[serde(default)]
    pub(super) resources: Vec<crate::resource::RawResource>,
    pub(super) revocation: Option<crate::revocation::RawRevocation>,
    pub(super) fleet_cache: Option<crate::fleet_cache::RawFleetCache>,
}

fn default_realm() -> String {
    "oauth-pep".into()
}
fn default_skew() -> u64 {
    60
}
fn yes() -> bool {
    true
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_cache_bytes() -> usize {
    4 << 20
}
fn default_rejected_cache_bytes() -> usize {
    1 << 20
}
fn default_introspection_cache_bytes() -> usize {
    8 << 20
}
fn default_introspection_entry_bytes() -> usize {
    4096
}
fn default_refresh() -> u64 {
    300
}
fn default_timeout() -> u64 {
    5_000
}
fn default_refetch_interval() -> u64 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIssuer {
    pub(super) issuer: String,
    pub(super) audiences: Option<RawAudiences>,
    pub(super) algorithms: Option<Vec<String>>,
    pub(super) jwks: Option<Value>,
    pub(super) jwks_uri: Option<String>,
    #[serde(default)]
    pub(super) discovery: RawDiscovery,
    pub(super) upstream: Option<String>,
    pub(super) shared_secret: Option<Value>,
    #[serde(default = "default_refresh")]
    pub(super) refresh_seconds: u64,
    #[serde(default = "default_timeout")]
    pub(super) fetch_timeout_ms: u64,
    #[serde(default = "default_refetch_interval")]
    pub(super) unknown_kid_refetch_seconds: u64,
    #[serde(default)]
    pub(super) mode: Mode,
    pub(super) introspection: Option<RawIntrospection>,
    #[serde(default)]
    pub(super) dpop: crate::dpop::DpopMode,
    #[serde(default)]
    pub(super) certificate_bound: crate::mtls::CertificateBound,
    pub(super) access_token_profile: Option<RawProfile>,
}

/// `"jwt"`, `"rfc9068"`, or the `typ` values accepted.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawProfile {
    Keyword(String),
    Typ(Vec<String>),
}

/// `true` for `/.well-known/openid-configuration`, or the name of another
/// well-known metadata document of the issuer (`"uma2-configuration"`, whose
/// `permission_endpoint` UMA needs, or `"oauth-authorization-server"`).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawDiscovery {
    Flag(bool),
    Document(String),
}

impl Default for RawDiscovery {
    fn default() -> Self {
        RawDiscovery::Flag(false)
    }
}

/// A list of accepted audiences, or `"any"` to accept tokens minted for any
/// audience of the issuer, which must be said on purpose.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawAudiences {
    List(Vec<String>),
    Keyword(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokenSource {
    pub(super) header: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) query: Option<String>,
    pub(super) cookie: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForward {
    #[serde(default)]
    pub(super) claims: BTreeMap<String, String>,
    pub(super) payload_header: Option<String>,
    pub(super) phantom_token_header: Option<String>,
    #[serde(default)]
    pub(super) phantom_token_format: PhantomFormat,
    #[serde(default)]
    pub(super) hide_credentials: bool,
    /// Claims (or the whole payload) sent in a chosen encoding: Gluu's
    /// `custom_headers`.
    #[serde(default)]
    pub(super) headers: Vec<RawForwardHeader>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForwardHeader {
    pub(super) header: String,
    /// None: the whole payload (or introspection answer).
    pub(super) claim: Option<String>,
    pub(super) format: Option<RawClaimFormat>,
    pub(super) separator: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawClaimFormat {
    String,
    List,
    Base64,
    Jwt,
    Urlencoded,
}
