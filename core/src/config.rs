//! The filter's JSON configuration: serde structs that refuse unknown fields,
//! compiled once (in `on_configure`) into an immutable [`Config`]. Every error
//! names the field and the problem; the request path never sees raw config.

use std::collections::BTreeMap;
use std::rc::Rc;

use ct_codecs::{Base64UrlSafeNoPadding, Decoder as _};
use serde::Deserialize;
use serde_json::Value;

use crate::cache::digest;
use crate::callout::Url;
pub use crate::config_error::ConfigError;
use crate::consumer::{
    AnonymousConfig, ConsumerConfig, Consumers, ConsumersConfig, IdentityHeaderNames,
};
use crate::gluu;
use crate::headers::{header_name, spelling_key, HeaderUse};
use crate::introspection::{Introspection, Mode, RawIntrospection};
use crate::jwks::{Alg, KeySet};
use crate::pdp::{Pdp, PdpConfig};
use crate::policy::{PathSet, Policy};
pub use crate::response::ErrorBody;
use crate::shared_cache::SharedCache;
use crate::token_client::{IssuerRef, RawTokenClient, TokenClient};
use crate::uma::{RawUma, Uma, UmaIssuer};
use crate::upstream_oauth::{RawUpstreamOAuth, UpstreamOAuth};

const MAX_CLOCK_SKEW_SECONDS: u64 = 300;
const MIN_SECRET_BYTES: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default)]
    log_level: LogLevel,
    /// May be empty when the `gluu` block gives the issuer.
    #[serde(default)]
    issuers: Vec<RawIssuer>,
    #[serde(default = "default_skew")]
    clock_skew_seconds: u64,
    max_lifetime_seconds: Option<u64>,
    #[serde(default = "yes")]
    require_exp: bool,
    token_sources: Option<Vec<RawTokenSource>>,
    #[serde(default)]
    forward: RawForward,
    #[serde(default = "default_cache_entries")]
    token_cache_entries: usize,
    #[serde(default = "default_cache_bytes")]
    token_cache_bytes: usize,
    #[serde(default = "default_rejected_cache_bytes")]
    rejected_cache_bytes: usize,
    #[serde(default)]
    shared_data: SharedData,
    #[serde(default)]
    crypto: Crypto,
    #[serde(default = "default_introspection_cache_bytes")]
    introspection_cache_bytes: usize,
    #[serde(default = "default_introspection_entry_bytes")]
    introspection_cache_entry_bytes: usize,
    policy: Option<Value>,
    #[serde(default = "yes")]
    deny_by_default: bool,
    #[serde(default)]
    public_paths: Vec<String>,
    scope_claims: Option<Vec<String>>,
    #[serde(default)]
    identity_headers: IdentityHeaderNames,
    consumers: Option<BTreeMap<String, ConsumerConfig>>,
    #[serde(default)]
    allow_unregistered_clients: bool,
    anonymous: Option<AnonymousConfig>,
    pdp: Option<PdpConfig>,
    #[serde(default)]
    clients: BTreeMap<String, RawTokenClient>,
    #[serde(default)]
    upstream_oauth: Vec<RawUpstreamOAuth>,
    uma: Option<RawUma>,
    #[serde(default)]
    error_body: Option<ErrorBody>,
}

/// The top-level fields of [`RawConfig`] plus `gluu` (merged away before
/// serde sees the document): unknown ones are reported all together, with
/// hints, before serde would stop at the first.
const TOP_FIELDS: &[&str] = &[
    "realm",
    "log_level",
    "issuers",
    "clock_skew_seconds",
    "max_lifetime_seconds",
    "require_exp",
    "token_sources",
    "forward",
    "token_cache_entries",
    "token_cache_bytes",
    "rejected_cache_bytes",
    "shared_data",
    "crypto",
    "introspection_cache_bytes",
    "introspection_cache_entry_bytes",
    "policy",
    "deny_by_default",
    "public_paths",
    "scope_claims",
    "identity_headers",
    "consumers",
    "allow_unregistered_clients",
    "anonymous",
    "pdp",
    "clients",
    "upstream_oauth",
    "uma",
    "error_body",
    "gluu",
];

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
struct RawIssuer {
    issuer: String,
    audiences: Option<RawAudiences>,
    algorithms: Option<Vec<String>>,
    jwks: Option<Value>,
    jwks_uri: Option<String>,
    #[serde(default)]
    discovery: RawDiscovery,
    upstream: Option<String>,
    shared_secret: Option<Value>,
    #[serde(default = "default_refresh")]
    refresh_seconds: u64,
    #[serde(default = "default_timeout")]
    fetch_timeout_ms: u64,
    #[serde(default = "default_refetch_interval")]
    unknown_kid_refetch_seconds: u64,
    #[serde(default)]
    mode: Mode,
    introspection: Option<RawIntrospection>,
}

/// `true` for `/.well-known/openid-configuration`, or the name of another
/// well-known metadata document of the issuer (`"uma2-configuration"`, whose
/// `permission_endpoint` UMA needs, or `"oauth-authorization-server"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawDiscovery {
    Flag(bool),
    Document(String),
}

impl Default for RawDiscovery {
    fn default() -> Self {
        RawDiscovery::Flag(false)
    }
}

impl RawDiscovery {
    fn document(&self, field: &str) -> Result<Option<&str>, ConfigError> {
        match self {
            RawDiscovery::Flag(false) => Ok(None),
            RawDiscovery::Flag(true) => Ok(Some("openid-configuration")),
            RawDiscovery::Document(name)
                if ["openid-configuration", "uma2-configuration", "oauth-authorization-server"]
                    .contains(&name.as_str()) =>
            {
                Ok(Some(name))
            }
            RawDiscovery::Document(_) => Err(ConfigError::new(
                field,
                "must be true, \"openid-configuration\", \"uma2-configuration\" or \"oauth-authorization-server\"",
            )),
        }
    }
}

/// A list of accepted audiences, or `"any"` to accept tokens minted for any
/// audience of the issuer, which must be said on purpose.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawAudiences {
    List(Vec<String>),
    Keyword(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenSource {
    header: Option<String>,
    prefix: Option<String>,
    query: Option<String>,
    cookie: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawForward {
    #[serde(default)]
    claims: BTreeMap<String, String>,
    payload_header: Option<String>,
    phantom_token_header: Option<String>,
    #[serde(default)]
    phantom_token_format: PhantomFormat,
    #[serde(default)]
    hide_credentials: bool,
    /// Claims (or the whole payload) sent in a chosen encoding: Gluu's
    /// `custom_headers`.
    #[serde(default)]
    headers: Vec<RawForwardHeader>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForwardHeader {
    header: String,
    /// None: the whole payload (or introspection answer).
    claim: Option<String>,
    format: Option<RawClaimFormat>,
    separator: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawClaimFormat {
    String,
    List,
    Base64,
    Jwt,
    Urlencoded,
}

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

pub use crate::extract::TokenSource;
pub use crate::jwt::JwtRules;
pub use crate::keys::{Issuer, KeySource};

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
    pub shared_data: SharedData,
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
}

impl Config {
    pub fn from_json(json: &[u8]) -> Result<Config, ConfigError> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::new(
                "",
                "the configuration is empty; at least `issuers` is required",
            ));
        }
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(digest(&[json]).get(..8).unwrap_or(&[0; 8]));
        let document: Value =
            serde_json::from_slice(json).map_err(|e| ConfigError::new("", e.to_string()))?;
        let (raw, notes) = prepare(document)?;
        let mut config = compile(raw, fingerprint, &|name| std::env::var(name).ok())?;
        config.notes = notes;
        Ok(config)
    }
}

/// Before serde: every unknown top-level field (with a hint) and every
/// problem of the `gluu` block at once, then the block merged into the
/// document's own fields.
fn prepare(document: Value) -> Result<(RawConfig, Vec<String>), ConfigError> {
    let Value::Object(mut doc) = document else {
        return Err(ConfigError::new(
            "",
            "the configuration must be a JSON object",
        ));
    };
    let mut errors: Vec<ConfigError> = doc
        .keys()
        .filter(|k| !TOP_FIELDS.contains(&k.as_str()))
        .map(|k| ConfigError::new(k.as_str(), gluu::top_level_hint(k, TOP_FIELDS)))
        .collect();
    let notes = match gluu::merge(&mut doc) {
        Ok(notes) => notes,
        Err(more) => {
            errors.extend(more);
            Vec::new()
        }
    };
    if let Some(e) = ConfigError::many(errors) {
        return Err(e);
    }
    let raw = serde_json::from_value(Value::Object(doc))
        .map_err(|e| ConfigError::new("", e.to_string()))?;
    Ok((raw, notes))
}

/// `fingerprint` tells this configuration's shared-cache entries from another
/// one's; `env` reads the filter's environment (`client_secret_env`).
fn compile(
    raw: RawConfig,
    fingerprint: [u8; 8],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    if raw.realm.is_empty()
        || raw.realm.contains(['"', '\\'])
        || raw.realm.chars().any(char::is_control)
    {
        return Err(ConfigError::new(
            "realm",
            "must be non-empty text without quotes, backslashes or control characters",
        ));
    }
    if raw.clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
        return Err(ConfigError::new(
            "clock_skew_seconds",
            format!(
                "{} is too lenient; at most {MAX_CLOCK_SKEW_SECONDS}",
                raw.clock_skew_seconds
            ),
        ));
    }
    if raw.max_lifetime_seconds == Some(0) {
        return Err(ConfigError::new(
            "max_lifetime_seconds",
            "must be positive when set",
        ));
    }
    if raw.issuers.is_empty() {
        return Err(ConfigError::new(
            "issuers",
            "at least one issuer is required: list it in `issuers`, or give a `gluu` block",
        ));
    }
    let mut issuers = Vec::with_capacity(raw.issuers.len());
    for (i, issuer) in raw.issuers.into_iter().enumerate() {
        let field = format!("issuers[{i}]");
        let compiled = compile_issuer(issuer, &field, env)?;
        if issuers
            .iter()
            .any(|other: &Issuer| other.issuer == compiled.issuer)
        {
            return Err(ConfigError::new(
                format!("{field}.issuer"),
                format!("\"{}\" is listed twice", compiled.issuer),
            ));
        }
        issuers.push(compiled);
    }
    let unprefixed: Vec<usize> = issuers
        .iter()
        .enumerate()
        .filter(|(_, i)| {
            i.introspection
                .as_ref()
                .is_some_and(|x| x.token_prefix.is_none())
        })
        .map(|(index, _)| index)
        .collect();
    if let [_, second, ..] = unprefixed.as_slice() {
        return Err(ConfigError::new(
            format!("issuers[{second}].introspection.token_prefix"),
            "is required: another issuer already introspects every opaque token without a prefix, so which one asks would be a guess",
        ));
    }
    if !(SharedCache::min_entry_bytes()..=65_536).contains(&raw.introspection_cache_entry_bytes) {
        return Err(ConfigError::new(
            "introspection_cache_entry_bytes",
            format!(
                "must be between {} and 65536",
                SharedCache::min_entry_bytes()
            ),
        ));
    }
    let shared_cache = SharedCache::new(
        raw.introspection_cache_bytes,
        raw.introspection_cache_entry_bytes,
        fingerprint,
    );

    let token_sources = match raw.token_sources {
        None => vec![TokenSource::Header {
            name: "authorization".into(),
            prefix: Some("Bearer".into()),
        }],
        Some(sources) if sources.is_empty() => {
            return Err(ConfigError::new(
                "token_sources",
                "must list at least one place to find the token",
            ))
        }
        Some(sources) => sources
            .into_iter()
            .enumerate()
            .map(|(i, s)| compile_source(s, &format!("token_sources[{i}]")))
            .collect::<Result<_, _>>()?,
    };

    let mut claims = Vec::with_capacity(raw.forward.claims.len() + raw.forward.headers.len());
    let mut claim_fields = Vec::with_capacity(claims.capacity());
    for (claim, header) in raw.forward.claims {
        let field = format!("forward.claims.{claim}");
        let header = header_name(&header, &field, HeaderUse::Upstream)?;
        claims.push(ForwardClaim {
            claim: Some(claim),
            header,
            format: ClaimFormat::Text,
        });
        claim_fields.push(field);
    }
    for (i, h) in raw.forward.headers.into_iter().enumerate() {
        let field = format!("forward.headers[{i}]");
        let header = header_name(&h.header, &format!("{field}.header"), HeaderUse::Upstream)?;
        if h.claim.as_deref() == Some("") {
            return Err(ConfigError::new(
                format!("{field}.claim"),
                "must name a claim; leave it out to send the whole payload",
            ));
        }
        let format = match (h.format, h.separator) {
            (Some(RawClaimFormat::List), sep) => {
                ClaimFormat::List(sep.unwrap_or_else(|| ",".into()))
            }
            (_, Some(_)) => {
                return Err(ConfigError::new(
                    format!("{field}.separator"),
                    "only goes with `\"format\": \"list\"`",
                ))
            }
            (None, None) => ClaimFormat::Auto,
            (Some(RawClaimFormat::String), None) => ClaimFormat::String,
            (Some(RawClaimFormat::Base64), None) => ClaimFormat::Base64,
            (Some(RawClaimFormat::Jwt), None) => ClaimFormat::Jwt,
            (Some(RawClaimFormat::Urlencoded), None) => ClaimFormat::Urlencoded,
        };
        if let ClaimFormat::List(sep) = &format {
            if !crate::headers::is_header_value(sep) {
                return Err(ConfigError::new(
                    format!("{field}.separator"),
                    "cannot be carried in a header",
                ));
            }
        }
        claims.push(ForwardClaim {
            claim: h.claim,
            header,
            format,
        });
        claim_fields.push(field);
    }
    let payload_header = raw
        .forward
        .payload_header
        .map(|h| header_name(&h, "forward.payload_header", HeaderUse::Upstream))
        .transpose()?;
    let phantom_token_format = raw.forward.phantom_token_format;
    let phantom_token_header = raw
        .forward
        .phantom_token_header
        .map(|h| match phantom_token_format {
            // Gluu's phantom token replaces the caller's token upstream.
            PhantomFormat::Jwt if h.eq_ignore_ascii_case("authorization") => {
                Ok("authorization".to_string())
            }
            _ => header_name(&h, "forward.phantom_token_header", HeaderUse::Upstream),
        })
        .transpose()?;
    if phantom_token_header.is_none() && phantom_token_format != PhantomFormat::Json {
        return Err(ConfigError::new(
            "forward.phantom_token_format",
            "needs `forward.phantom_token_header`",
        ));
    }

    let policy = raw
        .policy
        .as_ref()
        .map(Policy::compile)
        .transpose()
        .map_err(|e| ConfigError::new("policy", e.to_string()))?;
    let public_paths = PathSet::compile(&raw.public_paths)
        .map_err(|e| ConfigError::new("public_paths", e.to_string()))?;
    let scope_claims = match raw.scope_claims {
        None => vec!["scope".to_string(), "scp".to_string()],
        Some(claims) if claims.is_empty() || claims.iter().any(String::is_empty) => {
            return Err(ConfigError::new(
                "scope_claims",
                "must list non-empty claim names",
            ))
        }
        Some(claims) => claims,
    };
    let identity = raw
        .identity_headers
        .compile()
        .map_err(|e| ConfigError::new(format!("identity_headers.{}", e.field), e.problem))?;
    let consumers = Consumers::compile(&ConsumersConfig {
        consumers: raw.consumers,
        allow_unregistered_clients: raw.allow_unregistered_clients,
        anonymous: raw.anonymous,
    })?;
    let anonymous_paths = match consumers.anonymous() {
        Some(anonymous) => PathSet::compile(&anonymous.paths)
            .map_err(|e| ConfigError::new("anonymous.paths", e.to_string()))?,
        None => PathSet::default(),
    };
    let pdp = raw.pdp.as_ref().map(Pdp::compile).transpose()?;

    let issuer_refs: Vec<IssuerRef> = issuers
        .iter()
        .map(|i| IssuerRef {
            issuer: &i.issuer,
            discovery: matches!(i.source, KeySource::Discovery(_)),
            upstream: (!i.upstream.is_empty()).then_some(i.upstream.as_str()),
        })
        .collect();
    let mut clients = Vec::with_capacity(raw.clients.len());
    for (name, client) in raw.clients {
        let field = format!("clients.{name}");
        clients.push(TokenClient::compile(
            &name,
            client,
            &field,
            &issuer_refs,
            env,
        )?);
    }
    let client_names: Vec<&str> = clients.iter().map(|c| c.name.as_str()).collect();
    let token_headers: Vec<&str> = token_sources
        .iter()
        .filter_map(|s| match s {
            TokenSource::Header { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let upstream_oauth = raw
        .upstream_oauth
        .into_iter()
        .enumerate()
        .map(|(i, rule)| {
            UpstreamOAuth::compile(
                rule,
                &format!("upstream_oauth[{i}]"),
                &client_names,
                &token_headers,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let uma = raw
        .uma
        .map(|uma| {
            let issuers: Vec<UmaIssuer> = issuers
                .iter()
                .map(|i| UmaIssuer {
                    issuer: &i.issuer,
                    upstream: (!i.upstream.is_empty()).then_some(i.upstream.as_str()),
                    uma2_discovery: matches!(&i.source, KeySource::Discovery(url)
                        if url.path.ends_with("/.well-known/uma2-configuration")),
                })
                .collect();
            Uma::compile(uma, &issuers, &client_names)
        })
        .transpose()?;
    drop(issuer_refs);

    // Two sources for one header would leave its value to ordering.
    let identity_names = identity.all();
    let mut forwarded: Vec<(String, &str)> = claim_fields
        .iter()
        .zip(&claims)
        .map(|(field, c)| (field.clone(), c.header.as_str()))
        .collect();
    forwarded.extend(
        payload_header
            .as_deref()
            .map(|h| ("forward.payload_header".to_string(), h)),
    );
    // `authorization` carries the caller's token in: never stripped.
    forwarded.extend(
        phantom_token_header
            .as_deref()
            .filter(|h| *h != "authorization")
            .map(|h| ("forward.phantom_token_header".to_string(), h)),
    );
    for (i, rule) in upstream_oauth.iter().enumerate() {
        for header in rule.owned_headers() {
            // `authorization` is replaced where a rule applies, never stripped
            // elsewhere: it carries the client's own token.
            if header != "authorization" {
                forwarded.push((format!("upstream_oauth[{i}]"), header));
            }
        }
    }
    for (i, (field, header)) in forwarded.iter().enumerate() {
        if identity_names
            .iter()
            .any(|name| spelling_key(name) == spelling_key(header))
        {
            return Err(ConfigError::new(
                field.as_str(),
                format!("\"{header}\" is already set by `identity_headers`; pick another name or rename the identity header"),
            ));
        }
        if forwarded
            .iter()
            .skip(i + 1)
            .any(|(_, other)| spelling_key(other) == spelling_key(header))
        {
            return Err(ConfigError::new(
                field.as_str(),
                format!("\"{header}\" is used twice"),
            ));
        }
    }
    let mut strip_headers: Vec<String> = forwarded.iter().map(|(_, h)| spelling_key(h)).collect();
    strip_headers.extend(identity_names.into_iter().map(spelling_key));
    strip_headers.sort_unstable();
    strip_headers.dedup();

    let mut warnings = Vec::new();
    if let Some(policy) = &policy {
        warnings.extend(policy.warnings().iter().cloned());
        for (public, rule) in policy.shadowed_by(&public_paths) {
            warnings.push(format!(
                "`public_paths` entry \"{public}\" overlaps the policy rule \"{rule}\": on the paths both match, the public path wins and the rule is never checked"
            ));
        }
    }
    if let Some(uma) = &uma {
        warnings.extend(uma.warnings());
    }

    // A configuration with a `gluu` block defaults to Kong's bodies
    // (gluu::merge sets it); others to RFC 6750's.
    let error_body = raw.error_body.unwrap_or_default();

    Ok(Config {
        warnings,
        notes: Vec::new(),
        error_body,
        strip_headers,
        realm: raw.realm,
        log_level: raw.log_level,
        issuers,
        rules: JwtRules {
            clock_skew_seconds: raw.clock_skew_seconds,
            max_lifetime_seconds: raw.max_lifetime_seconds,
            require_exp: raw.require_exp,
        },
        token_sources,
        forward: Forward {
            claims,
            payload_header,
            phantom_token_header,
            phantom_token_format,
            hide_credentials: raw.forward.hide_credentials,
        },
        rejected_cache_bytes: raw.rejected_cache_bytes,
        shared_cache,
        shared_data: raw.shared_data,
        crypto: raw.crypto,
        token_cache: CacheLimits {
            max_bytes: raw.token_cache_bytes,
            max_entries: raw.token_cache_entries,
        },
        policy,
        deny_by_default: raw.deny_by_default,
        public_paths,
        scope_claims,
        identity,
        consumers,
        anonymous_paths,
        pdp,
        clients,
        upstream_oauth,
        uma,
    })
}

fn compile_issuer(
    raw: RawIssuer,
    field: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Issuer, ConfigError> {
    let f = |name: &str| format!("{field}.{name}");
    if raw.issuer.is_empty() {
        return Err(ConfigError::new(f("issuer"), "must not be empty"));
    }
    let shared_secret = raw
        .shared_secret
        .map(|s| secret_bytes(s).map_err(|e| ConfigError::new(f("shared_secret"), e)))
        .transpose()?;
    let algorithms = match raw.algorithms {
        None => {
            let mut algs = Alg::ASYMMETRIC.to_vec();
            if shared_secret.is_some() {
                algs.extend(Alg::HMAC);
            }
            algs
        }
        Some(names) if names.is_empty() => {
            return Err(ConfigError::new(f("algorithms"), "must not be empty"))
        }
        Some(names) => {
            let mut algs = Vec::with_capacity(names.len());
            for name in names {
                let alg = Alg::parse(&name).ok_or_else(|| {
                    ConfigError::new(
                        f("algorithms"),
                        format!("\"{name}\" is not supported (RS256/384/512, PS256/384/512, ES256/384, EdDSA, HS256/384/512)"),
                    )
                })?;
                if Alg::HMAC.contains(&alg) && shared_secret.is_none() {
                    return Err(ConfigError::new(
                        f("algorithms"),
                        format!("{alg} needs `shared_secret` for this issuer"),
                    ));
                }
                algs.push(alg);
            }
            algs
        }
    };
    let discovery = raw.discovery.document(&f("discovery"))?;
    let sources = usize::from(raw.jwks.is_some())
        + usize::from(raw.jwks_uri.is_some())
        + usize::from(discovery.is_some());
    if sources > 1 {
        return Err(ConfigError::new(
            field,
            "give only one of `jwks`, `jwks_uri` and `discovery`",
        ));
    }
    let keyless = sources == 0 && shared_secret.is_none();
    if keyless && raw.introspection.is_none() {
        return Err(ConfigError::new(
            field,
            "needs keys (one of `jwks`, `jwks_uri`, `discovery: true` or `shared_secret`) or an `introspection` endpoint",
        ));
    }
    if keyless && raw.mode == Mode::JwtThenIntrospect {
        return Err(ConfigError::new(
            f("mode"),
            "\"jwt_then_introspect\" verifies JWTs locally first, so the issuer needs keys: one of `jwks`, `jwks_uri`, `discovery: true` or `shared_secret`",
        ));
    }
    // Without keys, every token of the issuer is introspected.
    let mode = if keyless { Mode::Introspect } else { raw.mode };
    if raw.mode != Mode::Jwt && raw.introspection.is_none() {
        return Err(ConfigError::new(
            f("mode"),
            "introspects tokens, so the issuer needs an `introspection` block",
        ));
    }
    let introspection = raw
        .introspection
        .map(|x| {
            Introspection::compile(
                x,
                &f("introspection"),
                raw.upstream.as_deref(),
                discovery.is_some(),
                env,
            )
        })
        .transpose()?;
    let source = if keyless {
        KeySource::None
    } else if let Some(uri) = raw.jwks_uri {
        KeySource::JwksUri(Url::parse(&uri).map_err(|e| ConfigError::new(f("jwks_uri"), e))?)
    } else if let Some(document) = discovery {
        let base = Url::parse(&raw.issuer).map_err(|e| {
            ConfigError::new(
                f("issuer"),
                format!("discovery needs the issuer to be a URL: {e}"),
            )
        })?;
        KeySource::Discovery(base.join_path(&format!("/.well-known/{document}")))
    } else {
        let (mut keys, _) = match raw.jwks {
            Some(jwks) => {
                let bytes = serde_json::to_vec(&jwks)
                    .map_err(|e| ConfigError::new(f("jwks"), e.to_string()))?;
                KeySet::from_inline_jwks(&bytes, &algorithms)
                    .map_err(|e| ConfigError::new(f("jwks"), e.to_string()))?
            }
            None => (KeySet::default(), Vec::new()),
        };
        if let Some(secret) = &shared_secret {
            keys.add_secret(secret, &algorithms);
        }
        if keys.is_empty() {
            return Err(ConfigError::new(
                f("jwks"),
                "holds no key usable with the allowed algorithms",
            ));
        }
        KeySource::Static(Rc::new(keys))
    };
    let upstream = match (&source, raw.upstream) {
        (KeySource::Static(_) | KeySource::None, _) => String::new(),
        (_, Some(u)) if !u.trim().is_empty() => u,
        _ => {
            return Err(ConfigError::new(
                f("upstream"),
                "is required to fetch keys: the Envoy cluster (or Kong host:port) of the authorization server",
            ))
        }
    };
    if raw.refresh_seconds == 0 {
        return Err(ConfigError::new(f("refresh_seconds"), "must be positive"));
    }
    // The allowance protects the authorization server from a flood of
    // made-up kids; below a second it protects nothing.
    if raw.unknown_kid_refetch_seconds < 1 {
        return Err(ConfigError::new(
            f("unknown_kid_refetch_seconds"),
            "must be at least 1",
        ));
    }
    crate::callout::check_timeout_ms(raw.fetch_timeout_ms, &f("fetch_timeout_ms"))?;
    // Without an audience check, a token the same server minted for any
    // other API would pass here too.
    let audiences = match raw.audiences {
        None => {
            return Err(ConfigError::new(
                f("audiences"),
                "is required: list the `aud` values of this API, or write \"any\" to accept tokens minted for any audience",
            ))
        }
        Some(RawAudiences::Keyword(k)) if k == "any" => Vec::new(),
        Some(RawAudiences::Keyword(k)) => {
            return Err(ConfigError::new(
                f("audiences"),
                format!("must be a list of audiences or \"any\", not \"{k}\""),
            ))
        }
        Some(RawAudiences::List(list)) if list.is_empty() => {
            return Err(ConfigError::new(
                f("audiences"),
                "must not be empty; write \"any\" to accept tokens minted for any audience",
            ))
        }
        Some(RawAudiences::List(list)) => list,
    };
    for (i, aud) in audiences.iter().enumerate() {
        if aud.is_empty() {
            return Err(ConfigError::new(
                format!("{field}.audiences[{i}]"),
                "must not be empty",
            ));
        }
    }
    Ok(Issuer {
        issuer: raw.issuer,
        audiences,
        algorithms,
        source,
        upstream,
        shared_secret,
        refresh_seconds: raw.refresh_seconds,
        fetch_timeout_ms: raw.fetch_timeout_ms,
        unknown_kid_refetch_seconds: raw.unknown_kid_refetch_seconds,
        mode,
        introspection,
    })
}

/// A secret is a string (its UTF-8 bytes) or `{"base64url": "…"}` for bytes
/// that are not text, e.g. 32 random bytes.
fn secret_bytes(value: Value) -> Result<Vec<u8>, String> {
    let bytes = match value {
        Value::String(text) => text.into_bytes(),
        Value::Object(map) => match (map.get("base64url"), map.len()) {
            (Some(Value::String(encoded)), 1) => {
                // Padding is optional, as many encoders add it.
                Base64UrlSafeNoPadding::decode_to_vec(encoded.trim_end_matches('='), None)
                    .map_err(|_| "`base64url` is not base64url (A-Z a-z 0-9 - _)".to_string())?
            }
            _ => return Err(SECRET_FORMS.into()),
        },
        _ => return Err(SECRET_FORMS.into()),
    };
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "is {} bytes; HMAC secrets must be at least {MIN_SECRET_BYTES} bytes",
            bytes.len()
        ));
    }
    Ok(bytes)
}

const SECRET_FORMS: &str = "must be a string or {\"base64url\": \"…\"}";

fn compile_source(raw: RawTokenSource, field: &str) -> Result<TokenSource, ConfigError> {
    match (raw.header, raw.query, raw.cookie) {
        (Some(header), None, None) => {
            let name = header_name(&header, &format!("{field}.header"), HeaderUse::Read)?;
            let prefix = match raw.prefix {
                Some(p) if p.trim().is_empty() => None,
                Some(p) => Some(p.trim().to_string()),
                None if name == "authorization" => Some("Bearer".to_string()),
                None => None,
            };
            Ok(TokenSource::Header { name, prefix })
        }
        (None, Some(q), None) if raw.prefix.is_none() && !q.is_empty() => Ok(TokenSource::Query(q)),
        (None, None, Some(c)) if raw.prefix.is_none() && !c.is_empty() => Ok(TokenSource::Cookie(c)),
        _ => Err(ConfigError::new(
            field,
            "must be exactly one of {\"header\": name[, \"prefix\": scheme]}, {\"query\": name}, {\"cookie\": name}",
        )),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn err(json: &str) -> String {
        match Config::from_json(json.as_bytes()) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e.to_string(),
        }
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn minimal_discovery_config_compiles_with_safe_defaults() {
        let c = Config::from_json(
            br#"{"issuers":[{"issuer":"https://as.test/realm","audiences":["api"],"discovery":true,"upstream":"as"}]}"#,
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
    fn errors_name_the_field_and_the_problem() {
        let table: &[(&str, &str)] = &[
            ("", "the configuration is empty"),
            ("{", "EOF"),
            (
                r#"{"issuers":[],"bogus":1}"#,
                "`bogus`: unknown field `bogus`",
            ),
            (r#"{"issuers":[]}"#, "`issuers`: at least one issuer"),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any"}]}"#,
                "`issuers[0]`: needs keys",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","jwks_uri":"http://a/j"}]}"#,
                "`issuers[0].upstream`: is required",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","jwks_uri":"/j","upstream":"a"}]}"#,
                "`issuers[0].jwks_uri`",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","discovery":true,"upstream":"a"}]}"#,
                "`issuers[0].issuer`: discovery needs",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","shared_secret":"short"}]}"#,
                "`issuers[0].shared_secret`: is 5 bytes",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","shared_secret":{"base64url":"c2hvcnQ"}}]}"#,
                "`issuers[0].shared_secret`: is 5 bytes",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","shared_secret":{"base64url":"not+base64/url"}}]}"#,
                "`issuers[0].shared_secret`: `base64url` is not base64url",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","shared_secret":{"hex":"00"}}]}"#,
                "`issuers[0].shared_secret`: must be a string or {\"base64url\"",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","shared_secret":42}]}"#,
                "`issuers[0].shared_secret`: must be a string or",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","discovery":true,"jwks_uri":"http://a/j","upstream":"a"}]}"#,
                "only one of",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","jwks_uri":"http://a/j","upstream":"a","algorithms":["none"]}]}"#,
                "`issuers[0].algorithms`: \"none\" is not supported",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","jwks_uri":"http://a/j","upstream":"a","algorithms":["HS256"]}]}"#,
                "HS256 needs `shared_secret`",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","jwks":{"keys":[{"kty":"RSA","kid":"k","n":"AQAB","e":"AQAB"}]}}]}"#,
                "`issuers[0].jwks`: keys[0] (kid \"k\"): the RSA modulus has 17 bits",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","jwks":{"keys":[]}}]}"#,
                "`issuers[0].jwks`: holds no key",
            ),
            (
                r#"{"clock_skew_seconds":3600,"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`clock_skew_seconds`: 3600 is too lenient",
            ),
            (
                r#"{"token_sources":[{"query":"a","cookie":"b"}],"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`token_sources[0]`: must be exactly one",
            ),
            (
                r#"{"forward":{"claims":{"sub":"bad header"}},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`forward.claims.sub`: \"bad header\" is not a valid",
            ),
            (
                r#"{"forward":{"claims":{"scope":"x-authenticated-scope"}},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`forward.claims.scope`: \"x-authenticated-scope\" is already set",
            ),
            (
                r#"{"forward":{"claims":{"sub":"x-a","cid":"x-a"}},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "is used twice",
            ),
            (
                r#"{"issuers":[{"issuer":"x","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`issuers[0].audiences`: is required",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":[],"shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`issuers[0].audiences`: must not be empty; write \"any\"",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"all","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`issuers[0].audiences`: must be a list of audiences or \"any\"",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","discovery":true,"upstream":"a","unknown_kid_refetch_seconds":0}]}"#,
                "`issuers[0].issuer`: discovery needs",
            ),
            (
                r#"{"issuers":[{"issuer":"http://x","audiences":"any","discovery":true,"upstream":"a","unknown_kid_refetch_seconds":0}]}"#,
                "`issuers[0].unknown_kid_refetch_seconds`: must be at least 1",
            ),
            (
                r#"{"forward":{"payload_header":"content-length"},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`forward.payload_header`: \"content-length\" is reserved",
            ),
            (
                r#"{"forward":{"claims":{"sub":"host"}},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`forward.claims.sub`: \"host\" is reserved",
            ),
            (
                r#"{"forward":{"claims":{"sub":"X_Forwarded_For"}},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`forward.claims.sub`: \"X_Forwarded_For\" is reserved",
            ),
            (
                r#"{"identity_headers":{"client_id":"x-envoy-client"},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`identity_headers.client_id`: \"x-envoy-client\" is reserved",
            ),
            (
                r#"{"identity_headers":{"client_id":"x-request-id"},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "\"x-request-id\" is reserved",
            ),
            (
                r#"{"forward":{"claims":{"sub":"x_authenticated_scope"}},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "is already set by `identity_headers`",
            ),
            (
                r#"{"realm":"a\"b","issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`realm`",
            ),
        ];
        for (json, expected) in table {
            let e = err(json);
            assert!(
                e.contains(expected),
                "{json}\n  gave: {e}\n  expected: {expected}"
            );
        }
    }

    #[test]
    fn shared_secret_enables_hmac_and_duplicate_issuers_are_refused() {
        let json = format!(
            r#"{{"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}]}}"#
        );
        let c = Config::from_json(json.as_bytes()).unwrap();
        assert!(c.issuers.first().unwrap().algorithms.contains(&Alg::HS512));
        let twice = format!(
            r#"{{"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}},{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}]}}"#
        );
        assert!(err(&twice).contains("`issuers[1].issuer`: \"x\" is listed twice"));
    }

    #[test]
    fn shared_secret_may_be_bytes_given_as_base64url() {
        use ct_codecs::{Base64UrlSafe, Base64UrlSafeNoPadding, Encoder as _};
        // 0xff..0xe0: not UTF-8, so not expressible as a JSON string.
        let secret: Vec<u8> = (0..32u8).map(|i| 0xff - i).collect();
        assert!(std::str::from_utf8(&secret).is_err());
        for encoded in [
            Base64UrlSafeNoPadding::encode_to_string(&secret).unwrap(),
            Base64UrlSafe::encode_to_string(&secret).unwrap(),
        ] {
            let json = format!(
                r#"{{"issuers":[{{"issuer":"x","audiences":"any","shared_secret":{{"base64url":"{encoded}"}}}}]}}"#
            );
            let c = Config::from_json(json.as_bytes()).unwrap();
            let issuer = c.issuers.first().unwrap();
            assert_eq!(issuer.shared_secret.as_deref(), Some(secret.as_slice()));
            assert!(issuer.algorithms.contains(&Alg::HS256));
        }
        // The text form still means the UTF-8 bytes of the string.
        let json = format!(
            r#"{{"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}]}}"#
        );
        let c = Config::from_json(json.as_bytes()).unwrap();
        assert_eq!(
            c.issuers.first().unwrap().shared_secret.as_deref(),
            Some(SECRET.as_bytes())
        );
    }

    #[test]
    fn forwarded_header_names_are_lowercased_and_listed_for_stripping() {
        let json = format!(
            r#"{{"forward":{{"claims":{{"sub":"X-Jwt-Sub","client_id":"x-client"}},"payload_header":"x-jwt-payload"}},"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}]}}"#
        );
        let c = Config::from_json(json.as_bytes()).unwrap();
        for name in [
            "x-client",
            "x-jwt-payload",
            "x-jwt-sub",
            "x-authenticated-scope",
            "x-anonymous-consumer",
        ] {
            assert!(c.strip_headers.iter().any(|h| h == name), "{name}");
        }
    }

    #[test]
    fn public_paths_that_shadow_policy_rules_are_warned_about() {
        let json = format!(
            r#"{{"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}],
                "public_paths":["/health","/docs/??"],
                "policy":{{"GET /docs/{{^v[0-9]+$}}":"read","GET /api/??":"read","GET /health/deep":"admin"}}}}"#
        );
        let c = Config::from_json(json.as_bytes()).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let w = c.warnings.first().unwrap();
        assert!(
            w.contains("\"/docs/??\"") && w.contains("/docs/{^v[0-9]+$}"),
            "{w}"
        );
        let json = format!(
            r#"{{"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}],
                "public_paths":["/health"],"policy":{{"* /??":"read"}}}}"#
        );
        let c = Config::from_json(json.as_bytes()).unwrap();
        assert_eq!(
            c.warnings.len(),
            1,
            "a catch-all rule overlaps every public path"
        );
    }

    #[test]
    fn the_top_level_field_list_is_serdes() {
        // serde names its fields in the unknown-field error: the pre-pass
        // list must be exactly those plus `gluu`.
        let e = match serde_json::from_str::<RawConfig>(r#"{"zz":1}"#) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        };
        let listed: Vec<&str> = e.split('`').skip(3).step_by(2).collect();
        let mut expected: Vec<&str> = TOP_FIELDS
            .iter()
            .copied()
            .filter(|f| *f != "gluu")
            .collect();
        let mut listed = listed;
        listed.sort_unstable();
        expected.sort_unstable();
        assert_eq!(listed, expected, "{e}");
    }

    #[test]
    fn unknown_fields_are_reported_together_with_hints() {
        let e = err(
            r#"{"oxd_id":"x","oauth_scope_expression":"[]","pass_credentials":"hide","realmm":"a",
                "gluu":{"upstream":"as","gluu-oauth-auth":{"op_url":"https://op","consumer_mapping":false,"bogus":1},"extra":2}}"#,
        );
        for expected in [
            "6 problems",
            "`oxd_id`: unknown field `oxd_id`; `oxd_id` only served oxd: put the Gluu plugin config inside `gluu`",
            "`oauth_scope_expression`: unknown field `oauth_scope_expression`; `oauth_scope_expression` goes under `policy` or inside `gluu`",
            "`pass_credentials`: unknown field `pass_credentials`; `pass_credentials` is `forward.hide_credentials`",
            "`realmm`: unknown field `realmm`; did you mean `realm`?",
            "`gluu.gluu-oauth-auth.bogus`: unknown field",
            "`gluu.extra`: unknown field",
        ] {
            assert!(e.contains(expected), "{expected}\n in {e}");
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
        let c = Config::from_json(json.as_bytes()).unwrap();
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
            Config::from_json(plain.as_bytes()).unwrap().error_body,
            ErrorBody::Rfc6750
        );
        let overridden = json.replacen("{\"gluu\"", "{\"error_body\": \"rfc6750\", \"gluu\"", 1);
        assert_eq!(
            Config::from_json(overridden.as_bytes()).unwrap().error_body,
            ErrorBody::Rfc6750
        );
    }

    #[test]
    fn forward_headers_formats_are_checked() {
        let with = |headers: &str| {
            format!(
                r#"{{"forward":{{"headers":{headers}}},"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}]}}"#
            )
        };
        let c = Config::from_json(
            with(r#"[{"header":"X-G","claim":"groups","format":"list","separator":";"}]"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            c.forward.claims.first().unwrap().format,
            ClaimFormat::List(";".into())
        );
        assert!(
            err(&with(r#"[{"header":"x-g","claim":"g","separator":";"}]"#))
                .contains("`forward.headers[0].separator`: only goes with")
        );
        assert!(err(&with(r#"[{"header":"host","claim":"g"}]"#))
            .contains("`forward.headers[0].header`: \"host\" is reserved"));
        let phantom = format!(
            r#"{{"forward":{{"phantom_token_header":"authorization"}},"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}]}}"#
        );
        assert!(
            err(&phantom).contains("\"authorization\" is reserved"),
            "only the jwt format may replace authorization"
        );
    }
}
