//! The fleet cache: introspection answers shared by every instance of a
//! fleet through etcd ([`crate::etcd`]), so that the authorization server
//! is asked about a token once for the fleet, not once per process.
//!
//! What is stored is an answer, never a decision: under a key that is an
//! HMAC of the issuer and the token with a fleet key etcd never sees, the
//! introspection answer (or the signed RFC 9701 answer) with absolute
//! `fresh_until`/`stale_until`, MACed with the same key over the etcd key
//! too (an entry copied under another token's key does not verify). A
//! reader re-runs its own checks on it. Everything here is pure: the
//! engine (`engine/fleet.rs`) makes the callouts.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::budget::{Budget, RawBudget};
use crate::callout::{check_authority, check_timeout_ms, Url};
use crate::config_error::ConfigError;
use crate::etcd::Endpoint;
use crate::sealed;
use crate::services::SharedStore;

/// The fleet key is at least this long (bytes): it is an HMAC key that must
/// not be guessed.
pub const MIN_KEY_BYTES: usize = 32;
/// The etcd auth token is renewed (on the root's tick) once this old, and
/// not used once [`AUTH_USE_SECONDS`] old: etcd's simple tokens live 300 s
/// unless `--auth-token-ttl` says otherwise.
pub const AUTH_RENEW_SECONDS: u64 = 180;
pub const AUTH_USE_SECONDS: u64 = 240;
/// The timeout of an authenticate call: nobody waits for it, and etcd
/// checks the password with bcrypt, slow under load.
pub const AUTH_TIMEOUT_MS: u64 = 5_000;
/// A fleet claim's lease lives this long at most; losers stop waiting for
/// it after `claim_wait_ms` anyway.
pub const CLAIM_LEASE_SECONDS: i64 = 5;
/// The most bytes an entry's value may hold in etcd (what is read too).
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// Per-worker etcd calls per second when no `budget` is given.
pub const DEFAULT_BUDGET: Budget = Budget {
    per_second: 200,
    burst: 400,
};
/// Where the breaker's state is in shared data (one per process).
const BREAKER_KEY: &str = "oauth_pep.fleet_cache.breaker";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    #[default]
    Etcd,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    failures: Option<u32>,
    open_seconds: Option<u64>,
}

/// The `fleet_cache` block as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleetCache {
    #[serde(default)]
    backend: Backend,
    endpoint: String,
    upstream: Option<String>,
    authority: Option<String>,
    #[serde(default = "default_prefix")]
    key_prefix: String,
    username: Option<String>,
    password_env: Option<String>,
    hmac_key_env: Option<String>,
    previous_hmac_key_env: Option<String>,
    #[serde(default = "default_read_timeout")]
    read_timeout_ms: u64,
    #[serde(default = "default_write_timeout")]
    write_timeout_ms: u64,
    #[serde(default = "yes")]
    single_flight: bool,
    #[serde(default = "default_claim_wait")]
    claim_wait_ms: u64,
    breaker: Option<RawBreaker>,
    #[serde(default)]
    exclude_issuers: Vec<String>,
    #[serde(default)]
    require_signed_answers: bool,
    #[serde(default = "default_refresh_before")]
    refresh_before_seconds: u64,
    budget: Option<RawBudget>,
}

/// The field under `fleet_cache`.
fn f(name: &str) -> String {
    format!("fleet_cache.{name}")
}

/// A refusal of `fleet_cache.<name>` (one out-of-line call per check, not
/// the field's `format!` inlined at each).
#[inline(never)]
fn refuse(name: &str, problem: &str) -> ConfigError {
    ConfigError::new(f(name), problem)
}

fn default_prefix() -> String {
    "/oauth-pep/".into()
}
fn default_read_timeout() -> u64 {
    200
}
fn default_write_timeout() -> u64 {
    500
}
fn default_claim_wait() -> u64 {
    1_000
}
fn default_refresh_before() -> u64 {
    10
}
fn yes() -> bool {
    true
}

/// How many etcd failures in a row open the breaker, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    pub failures: u32,
    pub open_seconds: u64,
}

/// The etcd user the gateway authenticates as.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ..)", self.username)
    }
}

/// An HMAC key, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetKey(Vec<u8>);

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(..)")
    }
}

/// The `fleet_cache` block, compiled.
#[derive(Debug, Clone)]
pub struct FleetCache {
    pub etcd: Endpoint,
    pub key_prefix: String,
    pub credentials: Option<Credentials>,
    /// Writes use the current key; reads accept the current or the previous.
    key: FleetKey,
    previous_key: Option<FleetKey>,
    pub read_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub single_flight: bool,
    pub claim_wait_ms: u64,
    pub breaker: Breaker,
    /// Issuers (by index) whose answers never go through the fleet.
    excluded: Vec<usize>,
    pub require_signed_answers: bool,
    /// An entry this close to its `fresh_until` is refreshed by the first
    /// reader that wins the fleet claim, while the others go on using it.
    pub refresh_before_seconds: u64,
    pub budget: Budget,
}

impl FleetCache {
    /// `issuers` are the configured issuers' names, by index.
    pub fn compile(
        raw: RawFleetCache,
        issuers: &[&str],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<FleetCache, ConfigError> {
        let Backend::Etcd = raw.backend;
        let mut base = Url::parse(&raw.endpoint).map_err(|e| ConfigError::new(f("endpoint"), e))?;
        if base.path.contains('?') {
            return Err(refuse("endpoint", "must have no query"));
        }
        check_authority(raw.authority.as_deref(), &f("authority"))?;
        if let Some(authority) = raw.authority {
            base.authority = authority;
        }
        let upstream = match raw.upstream {
            Some(u) if !u.trim().is_empty() => u,
            _ => {
                return Err(refuse(
                    "upstream",
                    "is required: the Envoy cluster (or Kong host:port) of etcd",
                ))
            }
        };
        if raw.key_prefix.is_empty()
            || raw.key_prefix.len() > 128
            || !raw.key_prefix.chars().all(|c| c.is_ascii_graphic())
        {
            return Err(refuse("key_prefix", "must be 1 to 128 printable ASCII characters (the prefix the gateway's etcd role grants)",
            ));
        }
        let read_env = |name: &str, field: &str| {
            env(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                ConfigError::new(
                    f(field),
                    format!("the environment variable {name:?} is not set for the filter (on Envoy, list it in vm_config.environment_variables.host_env_keys)"),
                )
            })
        };
        let credentials = match (raw.username, raw.password_env) {
            (None, None) => None,
            (Some(username), Some(name)) if !username.is_empty() => Some(Credentials {
                username,
                password: read_env(&name, "password_env")?,
            }),
            (Some(_), None) => return Err(refuse("password_env", "is required with `username`")),
            _ => return Err(refuse("username", "is required with `password_env`")),
        };
        let key_from = |name: &str, field: &str| {
            let key = read_env(name, field)?;
            if key.len() < MIN_KEY_BYTES {
                return Err(ConfigError::new(
                    f(field),
                    format!("the key in {name:?} must be at least {MIN_KEY_BYTES} bytes"),
                ));
            }
            Ok(FleetKey(key.into_bytes()))
        };
        let key =
            match raw.hmac_key_env {
                Some(name) => key_from(&name, "hmac_key_env")?,
                None => return Err(refuse(
                    "hmac_key_env",
                    "is required: the variable holding the fleet's HMAC key, which etcd never sees",
                )),
            };
        let previous_key = raw
            .previous_hmac_key_env
            .map(|name| key_from(&name, "previous_hmac_key_env"))
            .transpose()?;
        check_timeout_ms(raw.read_timeout_ms, &f("read_timeout_ms"))?;
        check_timeout_ms(raw.write_timeout_ms, &f("write_timeout_ms"))?;
        if raw.claim_wait_ms == 0 || raw.claim_wait_ms > 10_000 {
            return Err(refuse("claim_wait_ms", "must be between 1 and 10000"));
        }
        let breaker = match raw.breaker {
            None => Breaker {
                failures: 5,
                open_seconds: 30,
            },
            Some(b) => {
                let breaker = Breaker {
                    failures: b.failures.unwrap_or(5),
                    open_seconds: b.open_seconds.unwrap_or(30),
                };
                if breaker.failures == 0 {
                    return Err(refuse("breaker.failures", "must be at least 1"));
                }
                if !(1..=3600).contains(&breaker.open_seconds) {
                    return Err(refuse("breaker.open_seconds", "must be between 1 and 3600"));
                }
                breaker
            }
        };
        let mut excluded = Vec::new();
        for (i, name) in raw.exclude_issuers.iter().enumerate() {
            match issuers.iter().position(|n| n == name) {
                Some(index) => excluded.push(index),
                None => {
                    return Err(ConfigError::new(
                        format!("fleet_cache.exclude_issuers[{i}]"),
                        format!("{name:?} is not a configured issuer"),
                    ))
                }
            }
        }
        if raw.refresh_before_seconds > 3600 {
            return Err(refuse("refresh_before_seconds", "must be at most 3600"));
        }
        let budget = Budget::compile(raw.budget, DEFAULT_BUDGET, &f("budget"))?;
        Ok(FleetCache {
            etcd: Endpoint { base, upstream },
            key_prefix: raw.key_prefix,
            credentials,
            key,
            previous_key,
            read_timeout_ms: raw.read_timeout_ms,
            write_timeout_ms: raw.write_timeout_ms,
            single_flight: raw.single_flight,
            claim_wait_ms: raw.claim_wait_ms,
            breaker,
            excluded,
            require_signed_answers: raw.require_signed_answers,
            refresh_before_seconds: raw.refresh_before_seconds,
            budget,
        })
    }

    /// Whether `issuer`'s answers go through the fleet: not excluded, and
    /// signed (RFC 9701) under `require_signed_answers`.
    pub fn serves(&self, issuer: usize, signed: bool) -> bool {
        !self.excluded.contains(&issuer) && (signed || !self.require_signed_answers)
    }

    /// The keys a token's answer may be under: by the current key first,
    /// then by the previous one (during a rotation).
    pub fn locations(&self, identity: &str, token: &str) -> Vec<Location> {
        std::iter::once(&self.key)
            .chain(self.previous_key.as_ref())
            .map(|key| Location::new(&self.key_prefix, key, identity, token))
            .collect()
    }

    /// Where revocations (deny entries) live, under the same prefix.
    pub fn deny_prefix(&self) -> Vec<u8> {
        format!("{}d/", self.key_prefix).into_bytes()
    }

    /// The value written for an answer at `location` (by the current key).
    pub fn seal(&self, location: &Location, entry: &StoredAnswer) -> Vec<u8> {
        seal(&self.key, &location.answer, entry)
    }

    /// The entry at `location`, if its MAC verifies with either key and it
    /// is for `issuer`; why not otherwise.
    pub fn open(
        &self,
        location: &Location,
        value: &[u8],
        issuer: &str,
        now: u64,
    ) -> Result<StoredAnswer, Rejected> {
        let keys = std::iter::once(&self.key).chain(self.previous_key.as_ref());
        open(keys, &location.answer, value)?.check(issuer, now)
    }
}

/// The etcd keys of one token's answer and of its fleet claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub answer: Vec<u8>,
    pub claim: Vec<u8>,
}

impl Location {
    fn new(prefix: &str, key: &FleetKey, identity: &str, token: &str) -> Location {
        let mut input = b"oauth-pep fleet key v1\0".to_vec();
        input.extend_from_slice(identity.as_bytes());
        input.push(0);
        input.extend_from_slice(token.as_bytes());
        let name = sealed::hex(&hmac_sha256::HMAC::mac(&input, &key.0));
        Location {
            answer: format!("{prefix}a/{name}").into_bytes(),
            claim: format!("{prefix}c/{name}").into_bytes(),
        }
    }
}

/// What an entry holds: the answer as the endpoint gave it (plain RFC 7662
/// JSON, or the signed RFC 9701 JWT), and when it was written and stops
/// being fresh, then usable at all.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAnswer {
    pub issuer: String,
    pub written_at: u64,
    pub fresh_until: u64,
    pub stale_until: u64,
    pub answer: Answer,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Plain(Map<String, Value>),
    Signed(String),
}

/// Why an entry read from etcd was not used (each is counted `rejected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not `v1.<mac>.<json>`, or the JSON is not an entry.
    Malformed,
    /// Its MAC does not verify with either key (forged, another token's, or
    /// a key not (yet) configured here).
    Mac,
    /// Written for another issuer.
    Issuer,
    /// Past `fresh_until`, or written in the future.
    Expired,
    /// A plain answer under `require_signed_answers`, or a signed one that
    /// does not verify.
    Unsigned,
    /// The answer failed the reader's own checks (audience, exp, ...).
    Checks,
}

impl Rejected {
    pub fn code(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::Mac => "bad_mac",
            Rejected::Issuer => "other_issuer",
            Rejected::Expired => "expired",
            Rejected::Unsigned => "unsigned",
            Rejected::Checks => "checks",
        }
    }
}

/// What a fleet entry's MAC covers besides the etcd key and the JSON.
const PURPOSE: &[u8] = b"oauth-pep fleet entry v1\0";

fn seal(key: &FleetKey, location: &[u8], entry: &StoredAnswer) -> Vec<u8> {
    let (name, answer) = match &entry.answer {
        Answer::Plain(claims) => ("answer", Value::Object(claims.clone())),
        Answer::Signed(jwt) => ("signed", Value::String(jwt.clone())),
    };
    let json = json!({
        "iss": entry.issuer,
        "written_at": entry.written_at,
        "fresh_until": entry.fresh_until,
        "stale_until": entry.stale_until,
        name: answer,
    })
    .to_string();
    sealed::seal(PURPOSE, &key.0, location, &json)
}

fn open<'k>(
    keys: impl IntoIterator<Item = &'k FleetKey>,
    location: &[u8],
    value: &[u8],
) -> Result<StoredAnswer, Rejected> {
    let secrets = keys.into_iter().map(|key| key.0.as_slice());
    let json =
        sealed::open(PURPOSE, secrets, location, value, MAX_VALUE_BYTES).map_err(|refused| {
            match refused {
                sealed::Refused::Malformed => Rejected::Malformed,
                sealed::Refused::Mac => Rejected::Mac,
            }
        })?;
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(json) else {
        return Err(Rejected::Malformed);
    };
    let time = |fields: &Map<String, Value>, name: &str| {
        fields
            .get(name)
            .and_then(Value::as_u64)
            .ok_or(Rejected::Malformed)
    };
    let answer = match (fields.remove("answer"), fields.remove("signed")) {
        (Some(Value::Object(claims)), None) => Answer::Plain(claims),
        (None, Some(Value::String(jwt))) => Answer::Signed(jwt),
        _ => return Err(Rejected::Malformed),
    };
    Ok(StoredAnswer {
        issuer: fields
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(Rejected::Malformed)?
            .to_string(),
        written_at: time(&fields, "written_at")?,
        fresh_until: time(&fields, "fresh_until")?,
        stale_until: time(&fields, "stale_until")?,
        answer,
    })
}

impl StoredAnswer {
    /// The entry's own checks: the issuer, and its times against `now`.
    fn check(self, issuer: &str, now: u64) -> Result<StoredAnswer, Rejected> {
        if self.issuer != issuer {
            return Err(Rejected::Issuer);
        }
        if now >= self.fresh_until
            || self.written_at > now.saturating_add(5)
            || self.fresh_until < self.written_at
            || self.stale_until < self.fresh_until
        {
            return Err(Rejected::Expired);
        }
        Ok(self)
    }
}

/// The breaker's state in shared data, which every worker of the process
/// reads: failures in a row, and until when etcd is skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerState {
    pub failures: u32,
    pub open_until: u64,
}

impl BreakerState {
    pub fn read(store: &dyn SharedStore) -> (BreakerState, Option<u32>) {
        match store.get(BREAKER_KEY) {
            Some((bytes, cas)) => {
                let state = match (bytes.get(..4), bytes.get(4..12)) {
                    (Some(f), Some(u)) => BreakerState {
                        failures: u32::from_be_bytes(f.try_into().unwrap_or([0; 4])),
                        open_until: u64::from_be_bytes(u.try_into().unwrap_or([0; 8])),
                    },
                    _ => BreakerState::default(),
                };
                (state, Some(cas))
            }
            None => (BreakerState::default(), None),
        }
    }

    pub fn is_open(self, now: u64) -> bool {
        now < self.open_until
    }

    /// Records one etcd call's outcome; whether this call opened the
    /// breaker.
    pub fn record(store: &dyn SharedStore, breaker: Breaker, ok: bool, now: u64) -> bool {
        // A worker whose write lost the race tries again, a few times.
        for _ in 0..4 {
            let (state, cas) = BreakerState::read(store);
            let next = if ok {
                BreakerState::default()
            } else {
                let failures = state.failures.saturating_add(1);
                if failures >= breaker.failures && !state.is_open(now) {
                    BreakerState {
                        failures: 0,
                        open_until: now.saturating_add(breaker.open_seconds),
                    }
                } else {
                    BreakerState {
                        failures,
                        open_until: state.open_until,
                    }
                }
            };
            if next == state {
                return false;
            }
            let mut bytes = next.failures.to_be_bytes().to_vec();
            bytes.extend_from_slice(&next.open_until.to_be_bytes());
            if store.set(BREAKER_KEY, &bytes, cas).is_ok() {
                return next.open_until > state.open_until;
            }
        }
        false
    }
}

/// What the revocation fan-out (`crate::revocation::stored`) signs its deny
/// entries with: the same fleet keys, current first.
impl FleetCache {
    pub fn hmac_keys(&self) -> Vec<Vec<u8>> {
        std::iter::once(&self.key)
            .chain(self.previous_key.as_ref())
            .map(|k| k.0.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::services::testing::MemoryStore;

    const KEY: &str = "0123456789abcdef0123456789abcdef";
    const OLD: &str = "fedcba9876543210fedcba9876543210";

    fn env(name: &str) -> Option<String> {
        match name {
            "FLEET_KEY" => Some(KEY.into()),
            "OLD_KEY" => Some(OLD.into()),
            "SHORT" => Some("short".into()),
            "ETCD_PW" => Some("pw".into()),
            _ => None,
        }
    }

    fn compile(extra: &str) -> Result<FleetCache, ConfigError> {
        let mut json = json!({"endpoint": "http://127.0.0.1:2379", "upstream": "etcd", "hmac_key_env": "FLEET_KEY"});
        let extra: Value =
            serde_json::from_str(&format!("{{{}}}", extra.trim_start_matches(','))).unwrap();
        for (k, v) in extra.as_object().unwrap() {
            json[k] = v.clone();
        }
        let raw: RawFleetCache = serde_json::from_value(json).unwrap();
        FleetCache::compile(raw, &["https://a.test", "https://b.test"], &env)
    }

    #[test]
    fn config_defaults_and_each_refusal_names_its_field() {
        let c = compile("").unwrap();
        assert_eq!((c.read_timeout_ms, c.write_timeout_ms), (200, 500));
        assert_eq!(c.key_prefix, "/oauth-pep/");
        assert!(c.single_flight && c.credentials.is_none());
        assert!(c.serves(0, false) && c.serves(1, false));
        assert_eq!(c.deny_prefix(), b"/oauth-pep/d/");
        let c = compile(r#","username":"pep","password_env":"ETCD_PW","exclude_issuers":["https://b.test"],"require_signed_answers":true"#).unwrap();
        assert_eq!(c.credentials.as_ref().unwrap().password, "pw");
        assert!(!format!("{c:?}").contains(KEY) && !format!("{c:?}").contains("\"pw\""));
        assert!(c.serves(0, true) && !c.serves(0, false) && !c.serves(1, true));
        let c =
            compile(r#","upstream":"127.0.0.1:2379","authority":"etcd.internal:2379""#).unwrap();
        assert_eq!(c.etcd.upstream, "127.0.0.1:2379");
        assert_eq!(c.etcd.base.authority, "etcd.internal:2379");
        for (extra, field) in [
            (r#","hmac_key_env":"UNSET""#, "fleet_cache.hmac_key_env"),
            (r#","hmac_key_env":"SHORT""#, "fleet_cache.hmac_key_env"),
            (
                r#","previous_hmac_key_env":"UNSET""#,
                "fleet_cache.previous_hmac_key_env",
            ),
            (r#","read_timeout_ms":0"#, "fleet_cache.read_timeout_ms"),
            (r#","write_timeout_ms":0"#, "fleet_cache.write_timeout_ms"),
            (r#","claim_wait_ms":0"#, "fleet_cache.claim_wait_ms"),
            (r#","upstream":"""#, "fleet_cache.upstream"),
            (r#","endpoint":"etcd:2379""#, "fleet_cache.endpoint"),
            (r#","authority":"a/b""#, "fleet_cache.authority"),
            (r#","key_prefix":"""#, "fleet_cache.key_prefix"),
            (r#","key_prefix":"a b""#, "fleet_cache.key_prefix"),
            (r#","username":"pep""#, "fleet_cache.password_env"),
            (r#","password_env":"ETCD_PW""#, "fleet_cache.username"),
            (
                r#","username":"pep","password_env":"UNSET""#,
                "fleet_cache.password_env",
            ),
            (
                r#","breaker":{"failures":0}"#,
                "fleet_cache.breaker.failures",
            ),
            (
                r#","breaker":{"open_seconds":0}"#,
                "fleet_cache.breaker.open_seconds",
            ),
            (
                r#","exclude_issuers":["https://c.test"]"#,
                "fleet_cache.exclude_issuers[0]",
            ),
            (
                r#","budget":{"per_second":0}"#,
                "fleet_cache.budget.per_second",
            ),
        ] {
            let e = compile(extra)
                .err()
                .unwrap_or_else(|| panic!("{extra} accepted"));
            assert_eq!(e.field, field, "{extra}: {e}");
        }
        let raw = serde_json::from_str::<RawFleetCache>(
            r#"{"endpoint":"http://e","upstream":"e","hmac_key_env":"FLEET_KEY","backend":"redis"}"#,
        );
        assert!(raw.is_err());
        let missing: RawFleetCache =
            serde_json::from_str(r#"{"endpoint":"http://e","upstream":"e"}"#).unwrap();
        let e = FleetCache::compile(missing, &[], &env).unwrap_err();
        assert_eq!(e.field, "fleet_cache.hmac_key_env");
    }

    fn entry(now: u64) -> StoredAnswer {
        let claims = json!({"active": true, "sub": "alice"});
        StoredAnswer {
            issuer: "https://a.test".into(),
            written_at: now,
            fresh_until: now + 60,
            stale_until: now + 90,
            answer: Answer::Plain(claims.as_object().unwrap().clone()),
        }
    }

    #[test]
    fn keys_hide_the_token_and_entries_open_only_where_they_were_sealed() {
        let c = compile("").unwrap();
        let here = &c.locations("https://a.test\0pep", "token-1")[0];
        let other = &c.locations("https://a.test\0pep", "token-2")[0];
        let text = String::from_utf8(here.answer.clone()).unwrap();
        assert!(text.starts_with("/oauth-pep/a/") && !text.contains("token"));
        assert_eq!(text.len(), "/oauth-pep/a/".len() + 64);
        assert_ne!(here.answer, other.answer);
        let now = 1_700_000_000;
        let sealed = c.seal(here, &entry(now));
        assert_eq!(c.open(here, &sealed, "https://a.test", now), Ok(entry(now)));
        // Another token's entry copied under this key.
        assert_eq!(
            c.open(other, &sealed, "https://a.test", now),
            Err(Rejected::Mac)
        );
        // A changed byte.
        let mut forged = sealed.clone();
        let last = forged.len() - 3;
        forged[last] ^= 1;
        assert_eq!(
            c.open(here, &forged, "https://a.test", now),
            Err(Rejected::Mac)
        );
        assert_eq!(
            c.open(here, &sealed, "https://b.test", now),
            Err(Rejected::Issuer)
        );
        assert_eq!(
            c.open(here, &sealed, "https://a.test", now + 60),
            Err(Rejected::Expired)
        );
        assert_eq!(
            c.open(here, &sealed, "https://a.test", now - 60),
            Err(Rejected::Expired)
        );
        for junk in [&b"v1.zz"[..], b"", b"v2.00.{}", &[0xff, 0xfe]] {
            assert_eq!(
                c.open(here, junk, "https://a.test", now),
                Err(Rejected::Malformed)
            );
        }
    }

    #[test]
    fn a_rotation_reads_both_keys_and_writes_the_new_one() {
        let old = compile(r#","hmac_key_env":"OLD_KEY""#).unwrap();
        let new = compile(r#","previous_hmac_key_env":"OLD_KEY""#).unwrap();
        let id = "https://a.test\0pep";
        let now = 1_700_000_000;
        let written_by_old = old.seal(&old.locations(id, "t")[0], &entry(now));
        let at = new.locations(id, "t");
        assert_eq!(at.len(), 2);
        assert_eq!(at[1], old.locations(id, "t")[0]);
        assert!(new
            .open(&at[1], &written_by_old, "https://a.test", now)
            .is_ok());
        // Without the old key, the old entry is not trusted.
        let dropped = compile("").unwrap();
        assert_eq!(
            dropped.open(&at[1], &written_by_old, "https://a.test", now),
            Err(Rejected::Mac)
        );
    }

    #[test]
    fn the_breaker_opens_after_failures_in_a_row_for_every_worker() {
        let store = MemoryStore::default();
        let b = Breaker {
            failures: 3,
            open_seconds: 30,
        };
        assert!(!BreakerState::record(&store, b, false, 10));
        assert!(
            !BreakerState::record(&store, b, true, 10),
            "a success resets"
        );
        assert!(!BreakerState::record(&store, b, false, 10));
        assert!(!BreakerState::record(&store, b, false, 10));
        assert!(BreakerState::record(&store, b, false, 11));
        assert!(BreakerState::read(&store).0.is_open(40));
        assert!(!BreakerState::read(&store).0.is_open(41));
    }
}
