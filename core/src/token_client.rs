//! The gateway's own access tokens, got by the client credentials grant
//! (RFC 6749 §4.4): the UMA protection API token (PAT) and the tokens it
//! sends upstream. Each configured client holds at most one token, used until
//! shortly before it expires and refreshed ahead of that on the root's tick,
//! with one request in flight for all workers (shared data). A token that
//! cannot be used any more is never sent: the request gets a 503.

use std::rc::Rc;

use serde::Deserialize;
use serde_json::Value;

use crate::cache::{digest, Digest};
use crate::callout::{check_authority, check_timeout_ms, upstream_or, Callout, CalloutReply, Url};
use crate::client_auth::{AssertionError, AuthMethod, ClientAuth, RawCredentials};
use crate::config_error::ConfigError;
use crate::flight::{backoff, Flight, Marker};
use crate::headers::is_header_value;
use crate::keys::Sharing;
use crate::services::{NoSharing, Random};
use crate::shared_cache::Reader;

/// A token is not sent once it is this close to its `expires_in`: a clock
/// a little behind the server's, or a slow upstream, never receives an
/// expired token.
pub const EXPIRY_MARGIN_SECONDS: u64 = 5;
/// The longest access token accepted (a JWT with many claims fits).
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Retry delays after failed fetches while there is no usable token.
const SHARED_PREFIX: &str = "oauth_pep.client_token";
const SHARED_MAGIC: &[u8; 4] = b"OCT1";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokenClient {
    token_endpoint: Option<String>,
    /// An issuer with `discovery: true`, whose `token_endpoint` is used.
    issuer: Option<String>,
    upstream: Option<String>,
    authority: Option<String>,
    client_id: String,
    client_secret: Option<String>,
    client_secret_env: Option<String>,
    private_key: Option<Value>,
    private_key_env: Option<String>,
    #[serde(default)]
    auth_method: AuthMethod,
    #[serde(default)]
    scopes: Vec<String>,
    resource: Option<String>,
    audience: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_refresh_before")]
    refresh_before_seconds: u64,
    #[serde(default = "default_expires_in")]
    default_expires_in_seconds: u64,
}

fn default_timeout_ms() -> u64 {
    2_000
}
fn default_refresh_before() -> u64 {
    60
}
fn default_expires_in() -> u64 {
    300
}

/// Where the token endpoint comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenEndpoint {
    Fixed(Url),
    /// The `token_endpoint` of this issuer's discovery document.
    Discovered(usize),
}

/// One configured client, compiled.
#[derive(Debug, Clone)]
pub struct TokenClient {
    pub name: String,
    pub endpoint: TokenEndpoint,
    upstream: String,
    authority: Option<String>,
    auth: ClientAuth,
    scope: Option<String>,
    resource: Option<String>,
    audience: Option<String>,
    pub timeout_ms: u64,
    refresh_before_seconds: u64,
    default_expires_in_seconds: u64,
    /// Names this client's token in shared data: what it is fetched for.
    shared_id: Digest,
}

/// What the compiler needs to know of an issuer a client names.
pub struct IssuerRef<'a> {
    pub issuer: &'a str,
    pub discovery: bool,
    pub upstream: Option<&'a str>,
    /// Where its discovery document comes from
    /// ([`crate::issuer::Issuer::fetch_fingerprint`]).
    pub fetched_from: Digest,
}

impl TokenClient {
    pub fn compile(
        name: &str,
        raw: RawTokenClient,
        field: &str,
        issuers: &[IssuerRef],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<TokenClient, ConfigError> {
        let f = |n: &str| format!("{field}.{n}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::new(
                field,
                "a client's name must be ASCII letters, digits, `_` or `-` (it names the client in metrics)",
            ));
        }
        let mut issuer_upstream = None;
        let endpoint = match (raw.token_endpoint, raw.issuer) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    field,
                    "give only one of `token_endpoint` and `issuer`",
                ))
            }
            (Some(url), None) => TokenEndpoint::Fixed(
                Url::parse(&url).map_err(|e| ConfigError::new(f("token_endpoint"), e))?,
            ),
            (None, Some(wanted)) => {
                let (index, issuer) = issuers
                    .iter()
                    .enumerate()
                    .find(|(_, i)| i.issuer == wanted)
                    .ok_or_else(|| {
                        ConfigError::new(f("issuer"), format!("{wanted:?} is not one of `issuers`"))
                    })?;
                if !issuer.discovery {
                    return Err(ConfigError::new(
                        f("issuer"),
                        format!("{wanted:?} has no `discovery`, so its token_endpoint is unknown: give `token_endpoint`"),
                    ));
                }
                issuer_upstream = issuer.upstream;
                TokenEndpoint::Discovered(index)
            }
            (None, None) => return Err(ConfigError::new(
                f("token_endpoint"),
                "is required (or `issuer`, an issuer with discovery whose token_endpoint is used)",
            )),
        };
        let upstream = upstream_or(
            raw.upstream.as_deref(),
            issuer_upstream,
            &f("upstream"),
            "token endpoint",
        )?;
        check_authority(raw.authority.as_deref(), &f("authority"))?;
        for scope in &raw.scopes {
            if scope.is_empty()
                || !scope
                    .chars()
                    .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
            {
                return Err(ConfigError::new(
                    f("scopes"),
                    format!("{scope:?} is not a scope token (RFC 6749 §3.3)"),
                ));
            }
        }
        for (value, name) in [(&raw.resource, "resource"), (&raw.audience, "audience")] {
            if value
                .as_deref()
                .is_some_and(|v| v.is_empty() || v.chars().any(char::is_control))
            {
                return Err(ConfigError::new(
                    f(name),
                    "must be non-empty text without control characters",
                ));
            }
        }
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
        if !(10..=86_400).contains(&raw.default_expires_in_seconds) {
            return Err(ConfigError::new(
                f("default_expires_in_seconds"),
                "must be between 10 and 86400",
            ));
        }
        if raw.refresh_before_seconds > 3_600 {
            return Err(ConfigError::new(
                f("refresh_before_seconds"),
                "must be at most 3600",
            ));
        }
        let scope = (!raw.scopes.is_empty()).then(|| raw.scopes.join(" "));
        // Everything that decides which token comes back: where it is asked
        // for and through which cluster, as whom (the credentials, not just
        // the client_id), and for what. Two configurations sharing this
        // share the token; a client of the same name with other credentials
        // or another server never adopts it.
        let endpoint_text = match &endpoint {
            TokenEndpoint::Fixed(url) => {
                format!("fixed {}://{}{}", url.scheme, url.authority, url.path)
            }
            TokenEndpoint::Discovered(i) => issuers.get(*i).map_or_else(String::new, |i| {
                let hex: String = i.fetched_from.iter().map(|b| format!("{b:02x}")).collect();
                format!("discovered {} {hex}", i.issuer)
            }),
        };
        let shared_id = digest(&[
            endpoint_text.as_bytes(),
            upstream.as_bytes(),
            raw.authority.as_deref().unwrap_or("").as_bytes(),
            &auth.fingerprint(),
            raw.client_id.as_bytes(),
            scope.as_deref().unwrap_or("").as_bytes(),
            raw.resource.as_deref().unwrap_or("").as_bytes(),
            raw.audience.as_deref().unwrap_or("").as_bytes(),
        ]);
        Ok(TokenClient {
            name: name.to_string(),
            endpoint,
            upstream,
            authority: raw.authority,
            auth,
            scope,
            resource: raw.resource,
            audience: raw.audience,
            timeout_ms: raw.timeout_ms,
            refresh_before_seconds: raw.refresh_before_seconds,
            default_expires_in_seconds: raw.default_expires_in_seconds,
            shared_id,
        })
    }

    /// The token request (RFC 6749 §4.4.2), with RFC 8707 `resource` and
    /// the `audience` many servers take.
    pub fn callout(
        &self,
        endpoint: &Url,
        now: u64,
        random: &dyn Random,
    ) -> Result<Callout, AssertionError> {
        let mut fields = vec![("grant_type", "client_credentials")];
        for (name, value) in [
            ("scope", &self.scope),
            ("resource", &self.resource),
            ("audience", &self.audience),
        ] {
            if let Some(value) = value {
                fields.push((name, value.as_str()));
            }
        }
        self.post_form(endpoint, &fields, now, random)
    }

    /// A POST of `fields` to the token endpoint `endpoint` as this client
    /// (its authentication, cluster, authority and timeout): for grants other
    /// than its own client credentials, such as a token exchange.
    pub fn post_form(
        &self,
        endpoint: &Url,
        fields: &[(&str, &str)],
        now: u64,
        random: &dyn Random,
    ) -> Result<Callout, AssertionError> {
        self.auth.form_post(
            &self.upstream,
            endpoint,
            self.authority.as_deref(),
            fields,
            self.timeout_ms,
            now,
            random,
        )
    }

    /// The lifetime assumed for a token whose answer has no `expires_in`.
    pub fn default_expires_in(&self) -> u64 {
        self.default_expires_in_seconds
    }

    /// Until when requests wait for a request to this client's token
    /// endpoint made at `now`: its timeout, and the time to dispatch it.
    pub fn in_flight_deadline(&self, now: u64) -> u64 {
        now.saturating_add(self.timeout_ms / 1000 + 2)
    }
}

/// A token the server gave, and when to stop using and to renew it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    /// The access token, checked to be a valid header value.
    token: Rc<str>,
    obtained_at: u64,
    /// Not sent from this time on.
    usable_until: u64,
    /// Renewed on the tick from this time on.
    refresh_at: u64,
}

#[derive(Debug, Default)]
struct ClientState {
    held: Option<Held>,
    flight: Flight,
    /// Tokens obtained before this were refused by the server: not adopted.
    refused_before: u64,
    /// Fetched on demand only, not ahead on the tick while none is held:
    /// a client whose own token nothing sends (its rules only exchange).
    on_demand: bool,
}

impl ClientState {
    fn usable(&self, now: u64) -> Option<&Held> {
        self.held.as_ref().filter(|h| now < h.usable_until)
    }
}

/// What a request that needs a client's token may do.
#[derive(Debug, PartialEq)]
pub enum TokenWait {
    Ready(Rc<str>),
    /// Make this fetch (for everyone) and wait for it until `until`.
    Fetch {
        callout: Box<Callout>,
        until: u64,
    },
    /// A fetch is in flight (here or on another worker): wait until `until`.
    Wait {
        until: u64,
    },
    /// The discovery document with the token endpoint is not loaded yet.
    NeedsDiscovery(usize),
    /// No token can be had now, for this reason (503).
    Unavailable(String),
}

/// The tokens of every configured client, for one worker.
pub struct ClientTokens {
    clients: Vec<TokenClient>,
    states: Vec<ClientState>,
    shared: Sharing,
}

/// How a fetch ended, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// A token usable for this many seconds.
    Token {
        lifetime: u64,
    },
    Failed(String),
}

impl ClientTokens {
    pub fn new(clients: &[TokenClient]) -> Self {
        ClientTokens {
            clients: clients.to_vec(),
            states: clients.iter().map(|_| ClientState::default()).collect(),
            shared: Sharing {
                store: Rc::new(NoSharing),
                worker: 0,
            },
        }
    }

    pub fn share_through(&mut self, shared: Sharing) {
        self.shared = shared;
    }

    /// Client `index`'s own token is fetched only when a request needs it
    /// (then renewed ahead of expiry as any other), not at start.
    pub fn fetch_on_demand(&mut self, index: usize) {
        if let Some(state) = self.states.get_mut(index) {
            state.on_demand = true;
        }
    }

    pub fn client(&self, index: usize) -> Option<&TokenClient> {
        self.clients.get(index)
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    fn shared_key(&self, index: usize, what: &str) -> Option<String> {
        Some(shared_key(&self.clients.get(index)?.shared_id, what))
    }

    /// Takes a newer token another worker fetched; whether one was taken.
    fn adopt(&mut self, index: usize, now: u64) -> bool {
        let Some(key) = self.shared_key(index, "token") else {
            return false;
        };
        let Some((bytes, _)) = self.shared.store.get(&key) else {
            return false;
        };
        let Some(theirs) = decode(&bytes) else {
            return false;
        };
        let Some(state) = self.states.get_mut(index) else {
            return false;
        };
        let newer = state
            .held
            .as_ref()
            .is_none_or(|ours| theirs.obtained_at > ours.obtained_at)
            && theirs.obtained_at >= state.refused_before;
        if !newer || now >= theirs.usable_until {
            return false;
        }
        state.held = Some(theirs);
        state.flight.adopted(0);
        true
    }

    /// The token of client `index` for a request; `endpoint` gives the
    /// discovered token endpoint of an issuer, if it is known.
    pub fn for_request(
        &mut self,
        index: usize,
        endpoint: &dyn Fn(usize) -> Option<Url>,
        random: &dyn Random,
        now: u64,
    ) -> TokenWait {
        if let Some(held) = self.states.get(index).and_then(|s| s.usable(now)) {
            return TokenWait::Ready(Rc::clone(&held.token));
        }
        if self.adopt(index, now) {
            if let Some(held) = self.states.get(index).and_then(|s| s.usable(now)) {
                return TokenWait::Ready(Rc::clone(&held.token));
            }
        }
        let Some(state) = self.states.get(index) else {
            return TokenWait::Unavailable("no such client".into());
        };
        if let Some(until) = state.flight.awaited_until(now) {
            return TokenWait::Wait { until };
        }
        if !state.flight.retry_due(now) {
            return TokenWait::Unavailable(self.unavailable(index));
        }
        match self.start(index, endpoint, random, now) {
            Ok(Some((callout, until))) => TokenWait::Fetch {
                callout: Box::new(callout),
                until,
            },
            Ok(None) => TokenWait::Unavailable(self.unavailable(index)),
            Err(wait) => wait,
        }
    }

    fn unavailable(&self, index: usize) -> String {
        let name = self.clients.get(index).map_or("?", |c| c.name.as_str());
        match self.states.get(index).and_then(|s| s.flight.last_error()) {
            Some(error) => format!("no token for client {name}: {error}"),
            None => format!("no token for client {name} yet"),
        }
    }

    /// Claims the fetch for this worker and builds it: `Ok(None)` when it
    /// cannot be built, `Err` with the wait when another worker is fetching
    /// (or the endpoint needs discovery first).
    #[allow(clippy::type_complexity)]
    fn start(
        &mut self,
        index: usize,
        endpoint: &dyn Fn(usize) -> Option<Url>,
        random: &dyn Random,
        now: u64,
    ) -> Result<Option<(Callout, u64)>, TokenWait> {
        let Some(client) = self.clients.get(index) else {
            return Ok(None);
        };
        let url = match &client.endpoint {
            TokenEndpoint::Fixed(url) => url.clone(),
            TokenEndpoint::Discovered(issuer) => match endpoint(*issuer) {
                Some(url) => url,
                None => return Err(TokenWait::NeedsDiscovery(*issuer)),
            },
        };
        // Built before anything is claimed: one that cannot be made (no
        // random bytes for an assertion) holds no worker back.
        let callout = match client.callout(&url, now, random) {
            Ok(callout) => callout,
            Err(e) => {
                if let Some(state) = self.states.get_mut(index) {
                    state.flight.could_not_start(e.to_string());
                }
                return Ok(None);
            }
        };
        let until = client.in_flight_deadline(now);
        let marker = marker(&self.shared, client);
        let Some(state) = self.states.get_mut(index) else {
            return Ok(None);
        };
        state
            .flight
            .start(Some(&marker), until, now)
            .map_err(|until| TokenWait::Wait { until })?;
        Ok(Some((callout, until)))
    }

    /// Root only, on each tick: fetches that are due (a first token, or a
    /// refresh ahead of expiry), claimed for this worker; and the clients
    /// whose token another worker fetched (`adopted`), whose waiters may go on.
    pub fn due(
        &mut self,
        endpoint: &dyn Fn(usize) -> Option<Url>,
        random: &dyn Random,
        now: u64,
    ) -> (Vec<(usize, Callout)>, Vec<usize>) {
        let mut fetches = Vec::new();
        let mut adopted = Vec::new();
        for index in 0..self.clients.len() {
            let due = self.states.get(index).is_some_and(|s| {
                let refresh = match &s.held {
                    Some(held) => now >= held.refresh_at,
                    // None held: a first load, unless it waits for a request.
                    None => !s.on_demand,
                };
                refresh && !s.flight.awaiting(now) && s.flight.retry_due(now)
            });
            if !due {
                continue;
            }
            if self.adopt(index, now) {
                adopted.push(index);
                continue;
            }
            if let Ok(Some((callout, _))) = self.start(index, endpoint, random, now) {
                fetches.push((index, callout));
            }
        }
        (fetches, adopted)
    }

    /// Drops client `index`'s token, which the server refused: the next
    /// request that needs one gets a new one.
    pub fn invalidate(&mut self, index: usize) {
        if let Some(state) = self.states.get_mut(index) {
            if let Some(held) = state.held.take() {
                state.refused_before = held.obtained_at.saturating_add(1);
            }
        }
    }

    /// Until when requests wait for client `index`'s fetch, if one is in flight here.
    pub fn awaited_until(&self, index: usize, now: u64) -> Option<u64> {
        self.states.get(index)?.flight.awaited_until(now)
    }

    /// The token endpoint's answer (or why there is none).
    pub fn on_reply(
        &mut self,
        index: usize,
        answer: Result<&CalloutReply, &str>,
        now: u64,
    ) -> Fetched {
        let Some(client) = self.clients.get(index) else {
            return Fetched::Failed("no such client".into());
        };
        let parsed = match answer {
            Ok(reply) => parse_token_response(reply, client.default_expires_in_seconds),
            Err(why) => Err(format!("the token request could not be dispatched: {why}")),
        };
        let refresh_before = client.refresh_before_seconds;
        let name = client.name.clone();
        let token_key = shared_key(&client.shared_id, "token");
        let marker = marker(&self.shared, client);
        let Some(state) = self.states.get_mut(index) else {
            return Fetched::Failed("no such client".into());
        };
        match parsed {
            Ok((token, expires_in)) if expires_in > EXPIRY_MARGIN_SECONDS => {
                let usable_until = now.saturating_add(expires_in - EXPIRY_MARGIN_SECONDS);
                // Renewed ahead of expiry, but never sooner than halfway
                // through its life: a short-lived token is not refetched on
                // every tick.
                let refresh_at = now
                    .saturating_add(
                        expires_in
                            .saturating_sub(refresh_before)
                            .max(expires_in / 2),
                    )
                    .min(usable_until);
                let held = Held {
                    token: Rc::from(token.as_str()),
                    obtained_at: now,
                    usable_until,
                    refresh_at,
                };
                let _ = self.shared.store.set(&token_key, &encode(&held), None);
                state.held = Some(held);
                state.flight.succeeded(Some(&marker), 0);
                Fetched::Token {
                    lifetime: usable_until.saturating_sub(now),
                }
            }
            other => {
                let why = match other {
                    Ok((_, expires_in)) => {
                        format!("the token expires in {expires_in} s, too soon to be used")
                    }
                    Err(why) => why,
                };
                let why = format!("token request for client {name}: {why}");
                let delay = backoff(state.flight.failures().saturating_add(1));
                state.flight.failed(Some(&marker), why.clone(), delay, now);
                Fetched::Failed(why)
            }
        }
    }
}

fn shared_key(id: &Digest, what: &str) -> String {
    let hex: String = id.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{SHARED_PREFIX}.{hex}.{what}")
}

/// Where a client's token request is claimed in shared data.
fn marker<'a>(shared: &'a Sharing, client: &TokenClient) -> Marker<'a> {
    Marker {
        store: shared.store.as_ref(),
        key: shared_key(&client.shared_id, "in_flight"),
        subject: client.shared_id,
        worker: shared.worker,
    }
}

/// RFC 6749 §5.1: a Bearer `access_token` and its `expires_in` (the default
/// when the server gives none). Never quotes the token in an error.
fn parse_token_response(
    reply: &CalloutReply,
    default_expires_in: u64,
) -> Result<(String, u64), String> {
    let body = reply
        .small_success_body()
        .map_err(|e| e.of("the token endpoint"))?;
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(body) else {
        return Err("the token endpoint's answer is not a JSON object".into());
    };
    bearer_token(&answer, default_expires_in)
}

/// The Bearer `access_token` of a token endpoint's JSON answer and its
/// `expires_in` (the default when the server gives none). Never quotes the
/// token in an error.
pub fn bearer_token(
    answer: &serde_json::Map<String, Value>,
    default_expires_in: u64,
) -> Result<(String, u64), String> {
    let token = match answer.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => t,
        _ => return Err("the answer has no access_token".into()),
    };
    if token.len() > MAX_TOKEN_BYTES || !is_header_value(token) || token.contains(' ') {
        return Err(format!(
            "the access_token is not a bearer token of at most {MAX_TOKEN_BYTES} visible ASCII bytes"
        ));
    }
    match answer.get("token_type") {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(Value::String(t)) => {
            let named: String = t.chars().filter(|c| !c.is_control()).take(40).collect();
            return Err(format!("the token_type is {named:?}, not Bearer"));
        }
        _ => return Err("the answer has no token_type".into()),
    }
    let expires_in = match answer.get("expires_in") {
        None | Some(Value::Null) => default_expires_in,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(s) if s >= 0.0 => s as u64,
            _ => return Err("expires_in is not a number of seconds".into()),
        },
        // Some servers send it as a string.
        Some(Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| "expires_in is not a number of seconds".to_string())?,
        Some(_) => return Err("expires_in is not a number of seconds".into()),
    };
    Ok((token.clone(), expires_in))
}

fn encode(held: &Held) -> Vec<u8> {
    let mut out = Vec::with_capacity(28 + held.token.len());
    out.extend_from_slice(SHARED_MAGIC);
    out.extend_from_slice(&held.obtained_at.to_be_bytes());
    out.extend_from_slice(&held.usable_until.to_be_bytes());
    out.extend_from_slice(&held.refresh_at.to_be_bytes());
    out.extend_from_slice(held.token.as_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<Held> {
    let mut r = Reader::new(bytes);
    if r.take(4)? != SHARED_MAGIC {
        return None;
    }
    let obtained_at = r.u64()?;
    let usable_until = r.u64()?;
    let refresh_at = r.u64()?;
    let token = std::str::from_utf8(r.rest()).ok()?;
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES || !is_header_value(token) {
        return None;
    }
    Some(Held {
        token: Rc::from(token),
        obtained_at,
        usable_until,
        refresh_at,
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::services::testing::MemoryStore;
    use crate::services::NoRandom;

    const NOW: u64 = 1_700_000_000;

    fn client(json: &str) -> Result<TokenClient, ConfigError> {
        let raw: RawTokenClient = serde_json::from_str(json).unwrap();
        let issuers = [IssuerRef {
            issuer: "https://as.test",
            discovery: true,
            upstream: Some("as"),
            fetched_from: [7; 32],
        }];
        TokenClient::compile("pat", raw, "clients.pat", &issuers, &|_| None)
    }

    fn manager() -> ClientTokens {
        let c = client(
            r#"{"token_endpoint":"https://as.test/token","upstream":"as","client_id":"rs","client_secret":"s3","scopes":["uma_protection","x"],"resource":"https://api.test"}"#,
        )
        .unwrap();
        ClientTokens::new(&[c])
    }

    fn no_discovery(_: usize) -> Option<Url> {
        None
    }

    fn reply(status: u16, body: &str) -> CalloutReply {
        CalloutReply {
            status: Some(status),
            body: body.as_bytes().to_vec(),
            oversized: None,
        }
    }

    fn fetch(m: &mut ClientTokens, now: u64) -> Callout {
        match m.for_request(0, &no_discovery, &NoRandom, now) {
            TokenWait::Fetch { callout, .. } => *callout,
            other => panic!("expected a fetch, got {other:?}"),
        }
    }

    fn ready(m: &mut ClientTokens, now: u64) -> Option<String> {
        match m.for_request(0, &no_discovery, &NoRandom, now) {
            TokenWait::Ready(t) => Some(t.to_string()),
            _ => None,
        }
    }

    #[test]
    fn the_request_is_a_client_credentials_grant_with_scope_and_resource() {
        let mut m = manager();
        let c = fetch(&mut m, NOW);
        assert_eq!(c.method, "POST");
        assert_eq!(c.url.path, "/token");
        let body = String::from_utf8(c.body.unwrap()).unwrap();
        assert_eq!(
            body,
            "grant_type=client_credentials&scope=uma_protection+x&resource=https%3A%2F%2Fapi.test"
        );
        assert!(c
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && v.starts_with("Basic ")));
        // One request in flight: the next request waits for it.
        assert!(matches!(
            m.for_request(0, &no_discovery, &NoRandom, NOW),
            TokenWait::Wait { .. }
        ));
    }

    #[test]
    fn a_token_is_used_until_its_margin_and_renewed_from_halfway() {
        let mut m = manager();
        fetch(&mut m, NOW);
        let got = m.on_reply(
            0,
            Ok(&reply(
                200,
                r#"{"access_token":"t1","token_type":"bearer","expires_in":100}"#,
            )),
            NOW,
        );
        assert_eq!(got, Fetched::Token { lifetime: 95 });
        assert_eq!(ready(&mut m, NOW + 94).as_deref(), Some("t1"));
        // The tick renews at max(expires_in - refresh_before, expires_in / 2).
        assert!(m.due(&no_discovery, &NoRandom, NOW + 49).0.is_empty());
        assert_eq!(m.due(&no_discovery, &NoRandom, NOW + 50).0.len(), 1);
        // While the renewal is out, the old token is still sent, but never
        // within EXPIRY_MARGIN_SECONDS of its expiry.
        assert_eq!(ready(&mut m, NOW + 51).as_deref(), Some("t1"));
        assert_eq!(ready(&mut m, NOW + 95), None);
    }

    #[test]
    fn a_client_fetched_on_demand_is_not_fetched_ahead_until_asked() {
        let mut m = manager();
        m.fetch_on_demand(0);
        assert!(m.due(&no_discovery, &NoRandom, NOW).0.is_empty());
        fetch(&mut m, NOW);
        m.on_reply(
            0,
            Ok(&reply(
                200,
                r#"{"access_token":"t1","token_type":"bearer","expires_in":100}"#,
            )),
            NOW,
        );
        // Once one is held it is renewed ahead as any other.
        assert_eq!(m.due(&no_discovery, &NoRandom, NOW + 50).0.len(), 1);
    }

    #[test]
    fn bad_answers_are_failures_that_back_off_and_never_a_token() {
        for (status, body) in [
            (500, r#"{"error":"server_error"}"#),
            (200, "<html>"),
            (200, r#"{"token_type":"Bearer"}"#),
            (200, r#"{"access_token":"a b","token_type":"Bearer"}"#),
            (200, r#"{"access_token":"t","token_type":"DPoP"}"#),
            (200, r#"{"access_token":"t"}"#),
            (
                200,
                r#"{"access_token":"t","token_type":"Bearer","expires_in":-3}"#,
            ),
            (
                200,
                r#"{"access_token":"t","token_type":"Bearer","expires_in":5}"#,
            ),
        ] {
            let mut m = manager();
            fetch(&mut m, NOW);
            let got = m.on_reply(0, Ok(&reply(status, body)), NOW);
            assert!(matches!(got, Fetched::Failed(_)), "{body}: {got:?}");
            // Backing off: a 503 with the reason, no new request for a second.
            match m.for_request(0, &no_discovery, &NoRandom, NOW) {
                TokenWait::Unavailable(why) => assert!(why.contains("client pat"), "{why}"),
                other => panic!("{body}: {other:?}"),
            }
            fetch(&mut m, NOW + 1);
        }
        // A string expires_in (some servers) and no expires_in (the default) are fine.
        for (body, lifetime) in [
            (
                r#"{"access_token":"t","token_type":"Bearer","expires_in":"60"}"#,
                55,
            ),
            (r#"{"access_token":"t","token_type":"Bearer"}"#, 295),
        ] {
            let mut m = manager();
            fetch(&mut m, NOW);
            assert_eq!(
                m.on_reply(0, Ok(&reply(200, body)), NOW),
                Fetched::Token { lifetime }
            );
        }
    }

    #[test]
    fn one_worker_fetches_and_the_others_adopt_its_token_but_not_a_refused_one() {
        let store: Rc<dyn crate::services::SharedStore> = Rc::new(MemoryStore::default());
        let mut a = manager();
        let mut b = manager();
        a.share_through(Sharing {
            store: Rc::clone(&store),
            worker: 1,
        });
        b.share_through(Sharing {
            store: Rc::clone(&store),
            worker: 2,
        });
        fetch(&mut a, NOW);
        // b sees a's claim and waits rather than asking too.
        assert!(matches!(
            b.for_request(0, &no_discovery, &NoRandom, NOW),
            TokenWait::Wait { .. }
        ));
        a.on_reply(
            0,
            Ok(&reply(
                200,
                r#"{"access_token":"shared","token_type":"Bearer","expires_in":300}"#,
            )),
            NOW,
        );
        assert_eq!(ready(&mut b, NOW).as_deref(), Some("shared"));
        // The server refused it (e.g. revoked): b drops it and does not take
        // the same one back from shared data.
        b.invalidate(0);
        fetch(&mut b, NOW + 1);
    }

    #[test]
    fn a_token_is_shared_only_by_clients_that_would_get_the_same_one() {
        // Issue 18: the shared name covered the endpoint, client_id, scope,
        // resource and audience, so a configuration with the same client and
        // other credentials (or another cluster) adopted another's token.
        let base = r#""token_endpoint":"https://as.test/token","upstream":"as","client_id":"rs","client_secret":"s3""#;
        let id = |extra: &str| client(&format!("{{{base}{extra}}}")).unwrap().shared_id;
        let same = id("");
        assert_eq!(same, id(""));
        assert_eq!(
            same,
            id(r#","timeout_ms":1000"#),
            "a timeout is not who asks"
        );
        let others = [
            client(r#"{"token_endpoint":"https://as.test/token","upstream":"as","client_id":"rs","client_secret":"other"}"#)
                .unwrap()
                .shared_id,
            client(r#"{"token_endpoint":"https://as.test/token","upstream":"as2","client_id":"rs","client_secret":"s3"}"#)
                .unwrap()
                .shared_id,
            client(r#"{"token_endpoint":"https://as.test/token","upstream":"as","client_id":"rs","client_secret":"s3","auth_method":"client_secret_post"}"#)
                .unwrap()
                .shared_id,
            id(r#","authority":"as.internal""#),
            id(r#","scopes":["a"]"#),
            id(r#","audience":"x""#),
        ];
        for (i, other) in others.iter().enumerate() {
            assert_ne!(&same, other, "{i}");
        }
    }

    #[test]
    fn bad_settings_are_refused_with_the_field_named() {
        for (json, field) in [
            (
                r#"{"client_id":"a","client_secret":"b"}"#,
                "clients.pat.token_endpoint",
            ),
            (
                r#"{"issuer":"https://other","client_id":"a","client_secret":"b"}"#,
                "clients.pat.issuer",
            ),
            (
                r#"{"issuer":"https://as.test","token_endpoint":"https://as.test/t","client_id":"a","client_secret":"b"}"#,
                "clients.pat",
            ),
            (
                r#"{"issuer":"https://as.test","client_id":"a","client_secret":"b","scopes":["a b"]}"#,
                "clients.pat.scopes",
            ),
            (
                r#"{"issuer":"https://as.test","client_id":"a"}"#,
                "clients.pat",
            ),
            (
                r#"{"issuer":"https://as.test","client_id":"a","client_secret":"b","timeout_ms":0}"#,
                "clients.pat.timeout_ms",
            ),
        ] {
            let e = client(json).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
        let ok =
            client(r#"{"issuer":"https://as.test","client_id":"a","client_secret":"b"}"#).unwrap();
        assert_eq!(ok.endpoint, TokenEndpoint::Discovered(0));
    }

    #[test]
    fn the_secret_never_shows() {
        let c = client(
            r#"{"issuer":"https://as.test","client_id":"a","client_secret":"hunter2-secret"}"#,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
