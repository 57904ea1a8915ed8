//! Revocations that reach the gateway: security events (RFC 8417) pushed to
//! a receiver path (RFC 8935) by a Shared Signals transmitter, kept in a
//! bounded deny set, and every token whose subject or session was revoked
//! after it was issued refused with 401 `token_revoked`.
//!
//! [`set`] checks the events, [`deny`] keeps the set; this module owns the
//! `revocation` configuration block, the keys subjects are stored under and
//! the receiver's answers.

pub mod deny;
pub mod set;
pub mod stored;

use serde::Deserialize;

use crate::config_error::ConfigError;
use crate::dpop::ReplayTable;
use crate::issuer::{Issuer, KeySource};
use crate::request::normalize_target;
use crate::response::HttpResponse;

use deny::{DenyKey, DenySet};
use set::Target;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRevocation {
    receiver: Option<RawReceiver>,
    #[serde(default = "default_retention")]
    retention_seconds: u64,
    #[serde(default = "default_max_entries")]
    max_entries: usize,
    poll_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReceiver {
    path: String,
    transmitter: String,
    audience: RawAudience,
    auth_token_env: Option<String>,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
    #[serde(default = "default_max_age")]
    max_age_seconds: u64,
    #[serde(default = "default_replay_bytes")]
    replay_cache_bytes: usize,
    #[serde(default = "default_body_timeout")]
    body_timeout_seconds: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawAudience {
    One(String),
    Many(Vec<String>),
}

fn default_retention() -> u64 {
    86_400
}
fn default_max_entries() -> usize {
    10_000
}
fn default_max_body() -> usize {
    16_384
}
fn default_max_age() -> u64 {
    600
}
fn default_replay_bytes() -> usize {
    1 << 20
}
fn default_body_timeout() -> u64 {
    5
}

const MAX_ENTRIES: usize = 100_000;
const DEFAULT_POLL_MS: u64 = 1_000;
/// Keys one poll reads at most; more follow at once, page by page.
pub const POLL_PAGE: i64 = 500;
const MAX_BODY_BYTES: usize = 1 << 20;
const MIN_AUTH_TOKEN_BYTES: usize = 16;
/// Where the receiver remembers the `jti`s it took.
const REPLAY_PREFIX: &str = "oauth_pep.set_jti";
/// The HMAC key of deny keys within one process (no fleet key).
const LOCAL_DENY_SECRET: &[u8] = b"oauth-pep deny set";

/// A secret, never printed (the receiver's bearer secret).
#[derive(Clone, PartialEq, Eq)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// HMAC keys, never printed (the fleet keys).
#[derive(Clone, PartialEq, Eq)]
struct Secrets(Vec<Vec<u8>>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} keys, ..)", self.0.len())
    }
}

/// The compiled `revocation` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub receiver: Option<Receiver>,
    /// How long a deny entry lives: at least the longest token lifetime.
    pub retention_seconds: u64,
    /// Live entries the deny set holds at most.
    pub max_entries: usize,
    /// The HMAC keys deny keys are made with: the fleet's (current first,
    /// then the previous one during a rotation), or a local one.
    secrets: Secrets,
    /// With the fleet cache: where the fleet's deny entries are, and how often
    /// each process reads what changed.
    pub fanout: Option<Fanout>,
}

/// Revocations through etcd (the `fleet_cache` block's store and user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fanout {
    /// `<key_prefix>d/`.
    pub prefix: Vec<u8>,
    pub poll_ms: u64,
}

/// The push receiver (RFC 8935).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    pub path: String,
    /// Index into the configuration's issuers: whose keys sign the SETs.
    pub transmitter: usize,
    pub audiences: Vec<String>,
    /// What `authorization: Bearer …` must carry, when set.
    auth_token: Option<Secret>,
    pub max_body_bytes: usize,
    pub max_age_seconds: u64,
    pub body_timeout_seconds: u64,
    pub replay: ReplayTable,
}

impl Revocation {
    /// `issuers` are the compiled ones; `max_lifetime_seconds` the
    /// configuration's. A warning when no token lifetime bounds retention.
    pub fn compile(
        raw: RawRevocation,
        issuers: &[Issuer],
        max_lifetime_seconds: Option<u64>,
        fleet: Option<&crate::fleet_cache::FleetCache>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Revocation, Option<String>), ConfigError> {
        if raw.retention_seconds == 0 {
            return Err(ConfigError::new(
                "revocation.retention_seconds",
                "must be at least 1",
            ));
        }
        let mut warning = None;
        match max_lifetime_seconds {
            Some(max) if raw.retention_seconds < max => {
                return Err(ConfigError::new(
                    "revocation.retention_seconds",
                    format!("{} is shorter than max_lifetime_seconds ({max}): a revoked token would be accepted again before it expires", raw.retention_seconds),
                ))
            }
            Some(_) => {}
            None => {
                warning = Some(format!("revocation: no max_lifetime_seconds bounds token lifetimes, so a token that lives longer than retention_seconds ({} s) is accepted again once its revocation expires", raw.retention_seconds));
            }
        }
        if raw.max_entries == 0 || raw.max_entries > MAX_ENTRIES {
            return Err(ConfigError::new(
                "revocation.max_entries",
                format!("must be 1 to {MAX_ENTRIES}"),
            ));
        }
        let receiver = raw
            .receiver
            .map(|r| Receiver::compile(r, issuers, env))
            .transpose()?;
        let fanout =
            match (fleet, raw.poll_ms) {
                (None, Some(_)) => return Err(ConfigError::new(
                    "revocation.poll_ms",
                    "needs a fleet_cache block: revocations reach other instances through its etcd",
                )),
                (None, None) => None,
                (Some(fleet), poll_ms) => {
                    let poll_ms = poll_ms.unwrap_or(DEFAULT_POLL_MS);
                    if !(100..=60_000).contains(&poll_ms) {
                        return Err(ConfigError::new(
                            "revocation.poll_ms",
                            "must be 100 to 60000",
                        ));
                    }
                    Some(Fanout {
                        prefix: fleet.deny_prefix(),
                        poll_ms,
                    })
                }
            };
        let secrets =
            Secrets(fleet.map_or_else(|| vec![LOCAL_DENY_SECRET.to_vec()], |f| f.hmac_keys()));
        Ok((
            Revocation {
                receiver,
                retention_seconds: raw.retention_seconds,
                max_entries: raw.max_entries,
                secrets,
                fanout,
            },
            warning,
        ))
    }

    /// The key a target is stored under (by the current key).
    pub fn key(&self, target: &Target) -> DenyKey {
        stored::key_of(&stored::name(self.writing_secret(), target))
    }

    fn writing_secret(&self) -> &[u8] {
        self.secrets
            .0
            .first()
            .map_or(LOCAL_DENY_SECRET, Vec::as_slice)
    }

    /// The etcd key and value of a revocation (with a fan-out).
    pub fn seal(
        &self,
        fanout: &Fanout,
        target: &Target,
        denied: deny::Denied,
    ) -> (Vec<u8>, Vec<u8>) {
        stored::seal(self.writing_secret(), &fanout.prefix, target, denied)
    }

    /// An entry the poll read, if it is one of the fleet's.
    pub fn open(
        &self,
        fanout: &Fanout,
        key: &[u8],
        value: &[u8],
        now: u64,
    ) -> Result<(DenyKey, deny::Denied), stored::Rejected> {
        stored::open(
            &self.secrets.0,
            &fanout.prefix,
            key,
            value,
            self.retention_seconds,
            now,
        )
    }

    /// The deny-set keys a token of issuer `iss` with this `sub` and `sid`
    /// is looked up under: under each fleet key, so that entries another
    /// instance wrote before (or after) a key rotation count too.
    pub fn token_keys(&self, iss: &str, sub: Option<&str>, sid: Option<&str>) -> Vec<DenyKey> {
        let mut keys = Vec::new();
        for secret in &self.secrets.0 {
            let subject = sub.map(|sub| stored::mac_of(secret, b's', iss, sub));
            let session = sid.map(|sid| stored::mac_of(secret, b'i', iss, sid));
            keys.extend(
                subject
                    .into_iter()
                    .chain(session)
                    .map(|n| stored::key_of(&n)),
            );
        }
        keys
    }

    /// Whether a token with these keys ([`Revocation::token_keys`]) and
    /// `iat` was revoked: one of them has an entry from after `iat`. A token
    /// without `iat` that has one is refused (its age cannot be told). An
    /// empty set costs nothing.
    pub fn revoked(deny: &DenySet, keys: &[DenyKey], iat: Option<u64>, now: u64) -> bool {
        !deny.is_empty()
            && keys
                .iter()
                .filter_map(|key| deny.get(key, now))
                .any(|denied| iat.is_none_or(|iat| iat < denied.at))
    }
}

impl Receiver {
    fn compile(
        raw: RawReceiver,
        issuers: &[Issuer],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Receiver, ConfigError> {
        let field = |name: &str| format!("revocation.receiver.{name}");
        let normal = normalize_target(&raw.path).ok().map(|t| t.path);
        if !raw.path.starts_with('/')
            || raw.path.contains('?')
            || normal.as_deref() != Some(raw.path.as_str())
        {
            return Err(ConfigError::new(
                field("path"),
                "must be a normalised absolute path without a query, such as /ssf/events",
            ));
        }
        let transmitter = issuers
            .iter()
            .position(|i| i.issuer == raw.transmitter)
            .ok_or_else(|| {
                ConfigError::new(
                    field("transmitter"),
                    format!(
                        "{:?} is not the issuer of any entry of issuers (the transmitter's keys are an issuer's)",
                        raw.transmitter
                    ),
                )
            })?;
        if matches!(
            issuers.get(transmitter).map(|i| &i.source),
            Some(KeySource::None) | None
        ) {
            return Err(ConfigError::new(
                field("transmitter"),
                "the issuer has no keys (jwks, jwks_uri, discovery or shared_secret) to verify SETs with",
            ));
        }
        let audiences = match raw.audience {
            RawAudience::One(a) => vec![a],
            RawAudience::Many(list) => list,
        };
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                field("audience"),
                "must name at least one audience, none empty",
            ));
        }
        let auth_token = match raw.auth_token_env {
            None => None,
            Some(name) => match env(&name) {
                Some(token) if token.len() >= MIN_AUTH_TOKEN_BYTES && token.is_ascii() => {
                    Some(Secret(token))
                }
                Some(_) => {
                    return Err(ConfigError::new(
                        field("auth_token_env"),
                        format!(
                            "${name} must hold at least {MIN_AUTH_TOKEN_BYTES} ASCII characters"
                        ),
                    ))
                }
                None => {
                    return Err(ConfigError::new(
                        field("auth_token_env"),
                        format!("${name} is not set"),
                    ))
                }
            },
        };
        if raw.max_body_bytes == 0 || raw.max_body_bytes > MAX_BODY_BYTES {
            return Err(ConfigError::new(
                field("max_body_bytes"),
                format!("must be 1 to {MAX_BODY_BYTES}"),
            ));
        }
        if raw.max_age_seconds == 0 {
            return Err(ConfigError::new(
                field("max_age_seconds"),
                "must be at least 1",
            ));
        }
        if raw.replay_cache_bytes < crate::dpop::SLOT_BYTES {
            return Err(ConfigError::new(
                field("replay_cache_bytes"),
                format!("must be at least {}", crate::dpop::SLOT_BYTES),
            ));
        }
        if !(1..=60).contains(&raw.body_timeout_seconds) {
            return Err(ConfigError::new(
                field("body_timeout_seconds"),
                "must be 1 to 60",
            ));
        }
        Ok(Receiver {
            path: raw.path,
            transmitter,
            audiences,
            auth_token,
            max_body_bytes: raw.max_body_bytes,
            max_age_seconds: raw.max_age_seconds,
            body_timeout_seconds: raw.body_timeout_seconds,
            replay: ReplayTable::named(REPLAY_PREFIX, raw.replay_cache_bytes),
        })
    }

    /// Whether the request carries the receiver's authorization (RFC 8935
    /// §2.2 leaves its form open: a bearer secret here), compared in
    /// constant time. Always, when none is configured.
    pub fn authorized(&self, authorization: Option<&str>) -> bool {
        let Some(expected) = &self.auth_token else {
            return true;
        };
        let presented = authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim());
        let (a, b) = (
            hmac_sha256::Hash::hash(presented.as_bytes()),
            hmac_sha256::Hash::hash(expected.0.as_bytes()),
        );
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

/// The answer for a SET taken (RFC 8935 §2.2).
pub fn accepted() -> HttpResponse {
    HttpResponse {
        status: 202,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

/// An RFC 8935 §2.3 error: `{"err": …, "description": …}`.
pub fn refused(status: u32, err: &str, description: &str) -> HttpResponse {
    let body = serde_json::json!({"err": err, "description": description});
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    match status {
        401 => headers.push(("www-authenticate".into(), "Bearer".into())),
        405 => headers.push(("allow".into(), "POST".into())),
        503 => headers.push(("retry-after".into(), "1".into())),
        _ => {}
    }
    HttpResponse {
        status,
        headers,
        body: body.to_string().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::deny::Denied;
    use super::*;
    use crate::services::testing::MemoryStore;

    const NOW: u64 = 1_700_000_000;

    fn compile(
        json: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Revocation, ConfigError> {
        let issuers = crate::config::Config::from_json(
            br#"{"issuers":[{"issuer":"https://idp.test","audiences":["api"],"algorithms":["HS256"],"shared_secret":"a-transmitter-secret-of-32-bytes"},
                            {"issuer":"https://opaque.test","audiences":["api"],"mode":"introspect","upstream":"as",
                             "introspection":{"endpoint":"https://opaque.test/i","client_id":"c","client_secret":"s"}}]}"#,
            &|_| None,
        )
        .unwrap()
        .issuers;
        let raw: RawRevocation = serde_json::from_str(json).unwrap();
        Revocation::compile(raw, &issuers, Some(3600), None, env).map(|(r, _)| r)
    }

    #[test]
    fn bad_blocks_are_refused_naming_the_field() {
        let cases = [
            (r#"{"retention_seconds":0}"#, "revocation.retention_seconds"),
            (
                r#"{"retention_seconds":60}"#,
                "revocation.retention_seconds",
            ),
            (r#"{"max_entries":0}"#, "revocation.max_entries"),
            (
                r#"{"receiver":{"path":"ssf","transmitter":"https://idp.test","audience":"a"}}"#,
                "revocation.receiver.path",
            ),
            (
                r#"{"receiver":{"path":"/a/../b","transmitter":"https://idp.test","audience":"a"}}"#,
                "revocation.receiver.path",
            ),
            (
                r#"{"receiver":{"path":"/ssf","transmitter":"https://nobody.test","audience":"a"}}"#,
                "revocation.receiver.transmitter",
            ),
            (
                r#"{"receiver":{"path":"/ssf","transmitter":"https://opaque.test","audience":"a"}}"#,
                "revocation.receiver.transmitter",
            ),
            (
                r#"{"receiver":{"path":"/ssf","transmitter":"https://idp.test","audience":[]}}"#,
                "revocation.receiver.audience",
            ),
            (
                r#"{"receiver":{"path":"/ssf","transmitter":"https://idp.test","audience":"a","auth_token_env":"UNSET"}}"#,
                "revocation.receiver.auth_token_env",
            ),
            (
                r#"{"receiver":{"path":"/ssf","transmitter":"https://idp.test","audience":"a","auth_token_env":"SHORT"}}"#,
                "revocation.receiver.auth_token_env",
            ),
            (
                r#"{"receiver":{"path":"/ssf","transmitter":"https://idp.test","audience":"a","max_body_bytes":0}}"#,
                "revocation.receiver.max_body_bytes",
            ),
            (
                r#"{"receiver":{"path":"/ssf","transmitter":"https://idp.test","audience":"a","replay_cache_bytes":1}}"#,
                "revocation.receiver.replay_cache_bytes",
            ),
            (
                r#"{"receiver":{"path":"/ssf","transmitter":"https://idp.test","audience":"a","body_timeout_seconds":0}}"#,
                "revocation.receiver.body_timeout_seconds",
            ),
        ];
        let env = |name: &str| (name == "SHORT").then(|| "short".to_string());
        for (json, field) in cases {
            assert_eq!(compile(json, &env).unwrap_err().field, field, "{json}");
        }
        assert!(compile(
            r#"{"receiver":{"path":"/ssf","transmitter":"https://idp.test","audience":["a","b"]}}"#,
            &env
        )
        .is_ok());
    }

    #[test]
    fn the_receiver_secret_is_a_bearer_token_compared_whole() {
        let env = |_: &str| Some("0123456789abcdef-secret".to_string());
        let r = compile(
            r#"{"receiver":{"path":"/ssf","transmitter":"https://idp.test","audience":"a","auth_token_env":"T"}}"#,
            &env,
        )
        .unwrap()
        .receiver
        .unwrap();
        assert!(r.authorized(Some("Bearer 0123456789abcdef-secret")));
        assert!(
            !format!("{r:?}").contains("0123456789abcdef"),
            "never printed"
        );
        assert!(r.authorized(Some("bearer 0123456789abcdef-secret")));
        for bad in [
            None,
            Some("Bearer 0123456789abcdef"),
            Some("Basic 0123456789abcdef-secret"),
            Some(""),
        ] {
            assert!(!r.authorized(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_token_is_revoked_only_if_issued_before_its_subject_or_session_was() {
        let r = compile("{}", &|_| None).unwrap();
        let store = MemoryStore::default();
        let mut set = DenySet::default();
        let alice = Target::Subject {
            iss: "https://idp.test".into(),
            sub: "alice".into(),
        };
        let session = Target::Session {
            iss: "https://idp.test".into(),
            sid: "s-9".into(),
        };
        let alices = r.token_keys("https://idp.test", Some("alice"), None);
        assert!(!Revocation::revoked(&set, &alices, Some(NOW), NOW));
        let until = NOW + 3600;
        set.add(
            &store,
            &[
                (r.key(&alice), Denied { at: NOW, until }),
                (r.key(&session), Denied { at: NOW, until }),
            ],
            10,
            NOW,
        )
        .unwrap();
        let revoked = |iss, sub, sid, iat| {
            Revocation::revoked(&set, &r.token_keys(iss, sub, sid), iat, NOW + 1)
        };
        assert!(revoked(
            "https://idp.test",
            Some("alice"),
            None,
            Some(NOW - 1)
        ));
        assert!(
            !revoked("https://idp.test", Some("alice"), None, Some(NOW)),
            "same second: issued after"
        );
        assert!(!revoked(
            "https://idp.test",
            Some("alice"),
            None,
            Some(NOW + 1)
        ));
        assert!(
            revoked("https://idp.test", Some("alice"), None, None),
            "no iat: refused"
        );
        assert!(
            !revoked("https://other.test", Some("alice"), None, Some(NOW - 1)),
            "another issuer's alice"
        );
        assert!(!revoked(
            "https://idp.test",
            Some("bob"),
            None,
            Some(NOW - 1)
        ));
        assert!(
            revoked("https://idp.test", Some("bob"), Some("s-9"), Some(NOW - 1)),
            "bob's revoked session"
        );
        assert!(!revoked(
            "https://idp.test",
            Some("bob"),
            Some("s-8"),
            Some(NOW - 1)
        ));
        assert!(
            !Revocation::revoked(&set, &alices, Some(NOW - 1), until),
            "retention over"
        );
    }

    #[test]
    fn a_refusal_has_rfc_8935s_body() {
        let reply = refused(400, "invalid_key", "the signature is invalid");
        assert_eq!(reply.status, 400);
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"err": "invalid_key", "description": "the signature is invalid"})
        );
        assert_eq!(accepted().status, 202);
    }
}
