//! Consumers in the Kong/Gluu sense: the OAuth client_id of a valid token maps
//! to a registered consumer whose identity is passed upstream in headers, and an
//! optional anonymous consumer stands in for requests without a usable token on
//! selected paths.

use crate::config_error::ConfigError;
use crate::headers::{header_name, is_header_value, spelling_key, HeaderUse};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// The consumer-related part of the filter configuration, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumersConfig {
    /// client_id -> consumer. Absent means consumers are not used at all.
    #[serde(default)]
    pub consumers: Option<BTreeMap<String, ConsumerConfig>>,
    #[serde(default)]
    pub allow_unregistered_clients: bool,
    #[serde(default)]
    pub anonymous: Option<AnonymousConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    pub id: String,
    /// The issuer whose client this is: a `client_id` names a client only
    /// at its authorization server. Required when several issuers are
    /// configured; with one, that one.
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub custom_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnonymousConfig {
    pub id: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub custom_id: Option<String>,
    pub paths: Vec<String>,
    /// The scopes the policy sees for anonymous requests; none by default.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Whether a presented but invalid token also falls back to anonymous.
    /// Off by default: a client that sends a broken token usually wants to
    /// hear about it rather than silently lose its identity.
    #[serde(default)]
    pub on_invalid_token: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub id: String,
    pub username: Option<String>,
    pub custom_id: Option<String>,
    /// True only for the configured anonymous consumer.
    pub anonymous: bool,
}

impl Consumer {
    /// The consumer's identity headers for the upstream request. Token facts
    /// (scope, client_id, expiration) are the caller's to add: the anonymous
    /// consumer has none.
    pub fn upstream_headers(&self, names: &IdentityHeaderNames) -> Vec<(String, String)> {
        let mut headers = vec![(names.consumer_id.clone(), self.id.clone())];
        if let Some(username) = &self.username {
            headers.push((names.consumer_username.clone(), username.clone()));
        }
        if let Some(custom_id) = &self.custom_id {
            headers.push((names.consumer_custom_id.clone(), custom_id.clone()));
        }
        if self.anonymous {
            headers.push((names.anonymous.clone(), "true".to_string()));
        }
        headers
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anonymous {
    pub consumer: Consumer,
    /// Uncompiled path patterns; `policy::PathSet` owns their syntax.
    pub paths: Vec<String>,
    pub scopes: Vec<String>,
    pub on_invalid_token: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerLookup<'a> {
    Known(&'a Consumer),
    /// Consumers are configured but this client (or a token without a
    /// client_id) is not among them.
    Unregistered,
    /// No consumers map is configured: every client is acceptable.
    NotConfigured,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consumers {
    /// client_id -> (index of the issuer whose client it is, consumer).
    by_client_id: Option<HashMap<String, (usize, Consumer)>>,
    allow_unregistered_clients: bool,
    anonymous: Option<Anonymous>,
}

impl Consumers {
    /// `issuers` are the configured issuers' names, index for index.
    pub fn compile(cfg: &ConsumersConfig, issuers: &[&str]) -> Result<Consumers, ConfigError> {
        let by_client_id = match &cfg.consumers {
            None => None,
            Some(map) => {
                let mut compiled = HashMap::with_capacity(map.len());
                for (client_id, c) in map {
                    let at = format!("consumers[{}]", json_quote(client_id));
                    if client_id.is_empty() {
                        return Err(ConfigError::new(at, "client_id must not be empty"));
                    }
                    let consumer = compile_consumer(&at, &c.id, &c.username, &c.custom_id)?;
                    let issuer = issuer_of(&at, c.issuer.as_deref(), issuers)?;
                    compiled.insert(client_id.clone(), (issuer, consumer));
                }
                Some(compiled)
            }
        };
        let anonymous = match &cfg.anonymous {
            None => None,
            Some(a) => {
                let mut consumer = compile_consumer("anonymous", &a.id, &a.username, &a.custom_id)?;
                consumer.anonymous = true;
                // An empty list would read as "everywhere" to some and
                // "nowhere" to others; demand an explicit choice.
                if a.paths.is_empty() {
                    return Err(ConfigError::new(
                        "anonymous.paths",
                        "must list at least one path pattern",
                    ));
                }
                for (i, p) in a.paths.iter().enumerate() {
                    if p.is_empty() {
                        return Err(ConfigError::new(
                            format!("anonymous.paths[{i}]"),
                            "must not be empty",
                        ));
                    }
                }
                for (i, scope) in a.scopes.iter().enumerate() {
                    if scope.is_empty() || scope.contains([',', ' ']) || !is_header_value(scope) {
                        return Err(ConfigError::new(
                            format!("anonymous.scopes[{i}]"),
                            "must be one scope: not empty, without commas, spaces or control characters",
                        ));
                    }
                }
                Some(Anonymous {
                    consumer,
                    paths: a.paths.clone(),
                    scopes: a.scopes.clone(),
                    on_invalid_token: a.on_invalid_token,
                })
            }
        };
        Ok(Consumers {
            by_client_id,
            allow_unregistered_clients: cfg.allow_unregistered_clients,
            anonymous,
        })
    }

    /// The consumer of the client `client_id` of issuer `issuer` (an index
    /// into the configured issuers): the same client_id at another issuer is
    /// another client, and unregistered.
    pub fn lookup(&self, issuer: usize, client_id: Option<&str>) -> ConsumerLookup<'_> {
        let Some(map) = &self.by_client_id else {
            return ConsumerLookup::NotConfigured;
        };
        match client_id.and_then(|c| map.get(c)) {
            Some((of, consumer)) if *of == issuer => ConsumerLookup::Known(consumer),
            _ => ConsumerLookup::Unregistered,
        }
    }

    /// Whether an `Unregistered` client may still pass (without consumer
    /// headers).
    pub fn allow_unregistered_clients(&self) -> bool {
        self.allow_unregistered_clients
    }

    pub fn anonymous(&self) -> Option<&Anonymous> {
        self.anonymous.as_ref()
    }
}

/// The issuer a consumer's client belongs to: the one named, or the only
/// one. With several issuers a client_id alone could be a client of either
/// (each server hands out its own), so the issuer must be named.
fn issuer_of(at: &str, named: Option<&str>, issuers: &[&str]) -> Result<usize, ConfigError> {
    match (named, issuers) {
        (Some(name), _) => issuers.iter().position(|i| *i == name).ok_or_else(|| {
            ConfigError::new(
                format!("{at}.issuer"),
                format!("\"{name}\" is not in `issuers`"),
            )
        }),
        (None, [_]) => Ok(0),
        (None, _) => Err(ConfigError::new(
            format!("{at}.issuer"),
            "is required when several issuers are configured: a client_id names a client only at its own authorization server, and another issuer may hand out the same one",
        )),
    }
}

fn compile_consumer(
    at: &str,
    id: &str,
    username: &Option<String>,
    custom_id: &Option<String>,
) -> Result<Consumer, ConfigError> {
    check_header_value(&format!("{at}.id"), id)?;
    if let Some(u) = username {
        check_header_value(&format!("{at}.username"), u)?;
    }
    if let Some(c) = custom_id {
        check_header_value(&format!("{at}.custom_id"), c)?;
    }
    Ok(Consumer {
        id: id.to_string(),
        username: username.clone(),
        custom_id: custom_id.clone(),
        anonymous: false,
    })
}

/// These values travel upstream as header values, so a line break would let a
/// configuration smuggle extra headers; an empty optional value should be
/// omitted instead of sent empty.
fn check_header_value(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::new(field, "must not be empty"));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(ConfigError::new(
            field,
            "must not contain control characters",
        ));
    }
    if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        return Err(ConfigError::new(
            field,
            "must not start or end with whitespace (HTTP would strip it)",
        ));
    }
    Ok(())
}

fn json_quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Names of the headers carrying identity upstream. Every one of them is also
/// stripped from incoming requests, so a client cannot forge its identity.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityHeaderNames {
    pub scope: String,
    pub client_id: String,
    pub expiration: String,
    pub consumer_id: String,
    pub consumer_username: String,
    pub consumer_custom_id: String,
    pub anonymous: String,
    /// The RFC 7638 thumbprint of a DPoP-bound token's key.
    pub dpop_jkt: String,
}

impl Default for IdentityHeaderNames {
    fn default() -> Self {
        IdentityHeaderNames {
            scope: "x-authenticated-scope".to_string(),
            client_id: "x-oauth-client-id".to_string(),
            expiration: "x-oauth-expiration".to_string(),
            consumer_id: "x-consumer-id".to_string(),
            consumer_username: "x-consumer-username".to_string(),
            consumer_custom_id: "x-consumer-custom-id".to_string(),
            anonymous: "x-anonymous-consumer".to_string(),
            dpop_jkt: "x-oauth-dpop-jkt".to_string(),
        }
    }
}

impl IdentityHeaderNames {
    pub fn all(&self) -> Vec<&str> {
        self.named().iter().map(|(_, v)| *v).collect()
    }

    fn named(&self) -> [(&'static str, &str); 8] {
        [
            ("scope", &self.scope),
            ("client_id", &self.client_id),
            ("expiration", &self.expiration),
            ("consumer_id", &self.consumer_id),
            ("consumer_username", &self.consumer_username),
            ("consumer_custom_id", &self.consumer_custom_id),
            ("anonymous", &self.anonymous),
            ("dpop_jkt", &self.dpop_jkt),
        ]
    }

    /// The names validated and lowercased. The error's `field` is the bare
    /// field name (`consumer_id`); the caller knows under which key these
    /// names sit in the configuration and prefixes it.
    pub fn compile(mut self) -> Result<IdentityHeaderNames, ConfigError> {
        for (field, name) in self.named_mut() {
            *name = header_name(name, field, HeaderUse::Upstream)?;
        }
        let named = self.named();
        for (i, (field, name)) in named.iter().enumerate() {
            // Two facts under one name would overwrite each other upstream.
            if let Some((other, _)) = named
                .iter()
                .take(i)
                .find(|(_, n)| spelling_key(n) == spelling_key(name))
            {
                return Err(ConfigError::new(
                    *field,
                    format!("`{name}` is already used by {other}"),
                ));
            }
        }
        Ok(self)
    }

    fn named_mut(&mut self) -> [(&'static str, &mut String); 8] {
        [
            ("scope", &mut self.scope),
            ("client_id", &mut self.client_id),
            ("expiration", &mut self.expiration),
            ("consumer_id", &mut self.consumer_id),
            ("consumer_username", &mut self.consumer_username),
            ("consumer_custom_id", &mut self.consumer_custom_id),
            ("anonymous", &mut self.anonymous),
            ("dpop_jkt", &mut self.dpop_jkt),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn parse(json: &str) -> Result<ConsumersConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    fn compile(json: &str) -> Result<Consumers, ConfigError> {
        Consumers::compile(&parse(json).unwrap(), &["https://a"])
    }

    #[test]
    fn known_unregistered_and_not_configured() {
        let c = compile(
            r#"{"consumers": {"app1": {"id": "c-1", "username": "alice"}},
                "allow_unregistered_clients": true}"#,
        )
        .unwrap();
        match c.lookup(0, Some("app1")) {
            ConsumerLookup::Known(k) => {
                assert_eq!(k.id, "c-1");
                assert_eq!(k.username.as_deref(), Some("alice"));
                assert_eq!(k.custom_id, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.lookup(0, Some("app2")), ConsumerLookup::Unregistered);
        assert_eq!(c.lookup(0, None), ConsumerLookup::Unregistered);
        assert!(c.allow_unregistered_clients());

        let none = compile("{}").unwrap();
        assert_eq!(none.lookup(0, Some("app1")), ConsumerLookup::NotConfigured);
        assert_eq!(none.lookup(0, None), ConsumerLookup::NotConfigured);
        assert!(!none.allow_unregistered_clients());
        assert!(none.anonymous().is_none());
    }

    #[test]
    fn a_consumer_is_a_client_of_one_issuer() {
        // Issue 18: keyed by client_id alone, a token of another trusted
        // issuer naming the same client_id got this consumer's identity.
        let json = r#"{"consumers": {"app": {"id": "c-a", "issuer": "https://b"}}}"#;
        let c = Consumers::compile(&parse(json).unwrap(), &["https://a", "https://b"]).unwrap();
        assert!(matches!(c.lookup(1, Some("app")), ConsumerLookup::Known(k) if k.id == "c-a"));
        assert_eq!(c.lookup(0, Some("app")), ConsumerLookup::Unregistered);
        // With one issuer, `issuer` may be left out, or must name it.
        let one = compile(r#"{"consumers": {"app": {"id": "c"}}}"#).unwrap();
        assert!(matches!(
            one.lookup(0, Some("app")),
            ConsumerLookup::Known(_)
        ));
        let e =
            compile(r#"{"consumers": {"app": {"id": "c", "issuer": "https://b"}}}"#).unwrap_err();
        assert_eq!(e.field, r#"consumers["app"].issuer"#);
        assert!(e.problem.contains("not in `issuers`"), "{e}");
        // With several, it must be named.
        let two = Consumers::compile(
            &parse(r#"{"consumers": {"app": {"id": "c"}}}"#).unwrap(),
            &["https://a", "https://b"],
        )
        .unwrap_err();
        assert_eq!(two.field, r#"consumers["app"].issuer"#);
        assert!(
            two.problem.starts_with("is required when several issuers"),
            "{two}"
        );
    }

    #[test]
    fn empty_consumers_map_means_every_client_is_unregistered() {
        let c = compile(r#"{"consumers": {}}"#).unwrap();
        assert_eq!(c.lookup(0, Some("app1")), ConsumerLookup::Unregistered);
    }

    #[test]
    fn errors_name_the_field() {
        let e = compile(r#"{"consumers": {"abc": {"id": ""}}}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid configuration: `consumers["abc"].id`: must not be empty"#
        );
        let e = compile(r#"{"consumers": {"abc": {"id": "x", "username": ""}}}"#).unwrap_err();
        assert_eq!(e.field, r#"consumers["abc"].username"#);
        let e = compile(r#"{"consumers": {"abc": {"id": "x", "custom_id": "a\r\nx-evil: 1"}}}"#)
            .unwrap_err();
        assert_eq!(e.field, r#"consumers["abc"].custom_id"#);
        let e = compile(r#"{"consumers": {"": {"id": "x"}}}"#).unwrap_err();
        assert_eq!(e.field, r#"consumers[""]"#);
        let e = compile(r#"{"consumers": {"a\"b": {"id": " x"}}}"#).unwrap_err();
        assert_eq!(e.field, r#"consumers["a\"b"].id"#);
        let e = compile(r#"{"anonymous": {"id": "", "paths": ["/p"]}}"#).unwrap_err();
        assert_eq!(e.field, "anonymous.id");
        let e = compile(r#"{"anonymous": {"id": "anon", "paths": []}}"#).unwrap_err();
        assert_eq!(e.field, "anonymous.paths");
        let e = compile(r#"{"anonymous": {"id": "anon", "paths": ["/a", ""]}}"#).unwrap_err();
        assert_eq!(e.field, "anonymous.paths[1]");
    }

    #[test]
    fn unknown_and_missing_fields_are_rejected() {
        assert!(parse(r#"{"consumer": {}}"#).is_err());
        assert!(parse(r#"{"consumers": {"a": {"id": "x", "name": "y"}}}"#).is_err());
        assert!(parse(r#"{"consumers": {"a": {"username": "y"}}}"#).is_err());
        assert!(parse(r#"{"anonymous": {"id": "x", "paths": ["/"], "path": "/"}}"#).is_err());
        assert!(parse(r#"{"anonymous": {"id": "x"}}"#).is_err());
    }

    #[test]
    fn anonymous_consumer_is_compiled_and_flagged() {
        let c = compile(
            r#"{"anonymous": {"id": "anon", "custom_id": "guest",
                "paths": ["/public/??"], "on_invalid_token": true}}"#,
        )
        .unwrap();
        let a = c.anonymous().unwrap();
        assert_eq!(a.paths, vec!["/public/??".to_string()]);
        assert!(a.on_invalid_token);
        assert!(a.consumer.anonymous);
        let h = a.consumer.upstream_headers(&IdentityHeaderNames::default());
        assert_eq!(
            h,
            vec![
                ("x-consumer-id".to_string(), "anon".to_string()),
                ("x-consumer-custom-id".to_string(), "guest".to_string()),
                ("x-anonymous-consumer".to_string(), "true".to_string()),
            ]
        );
    }

    #[test]
    fn registered_consumer_headers_use_configured_names() {
        let c = compile(
            r#"{"consumers": {"app": {"id": "c-1", "username": "alice", "custom_id": "42"}}}"#,
        )
        .unwrap();
        let ConsumerLookup::Known(k) = c.lookup(0, Some("app")) else {
            panic!("not known")
        };
        let names: IdentityHeaderNames =
            serde_json::from_str(r#"{"consumer_id": "x-user-id"}"#).unwrap();
        assert_eq!(
            k.upstream_headers(&names),
            vec![
                ("x-user-id".to_string(), "c-1".to_string()),
                ("x-consumer-username".to_string(), "alice".to_string()),
                ("x-consumer-custom-id".to_string(), "42".to_string()),
            ]
        );
    }

    #[test]
    fn identity_header_names_default_and_all() {
        let names: IdentityHeaderNames = serde_json::from_str("{}").unwrap();
        assert_eq!(names, IdentityHeaderNames::default());
        assert_eq!(
            names.all(),
            vec![
                "x-authenticated-scope",
                "x-oauth-client-id",
                "x-oauth-expiration",
                "x-consumer-id",
                "x-consumer-username",
                "x-consumer-custom-id",
                "x-anonymous-consumer",
                "x-oauth-dpop-jkt",
            ]
        );
        assert!(names.clone().compile().is_ok());
        assert!(serde_json::from_str::<IdentityHeaderNames>(r#"{"subject": "x"}"#).is_err());
    }

    #[test]
    fn identity_header_names_are_validated() {
        let bad = |json: &str| {
            serde_json::from_str::<IdentityHeaderNames>(json)
                .unwrap()
                .compile()
                .unwrap_err()
        };
        let upper: IdentityHeaderNames = serde_json::from_str(r#"{"scope": "X-Scope"}"#).unwrap();
        assert_eq!(upper.compile().unwrap().scope, "x-scope");
        let e = bad(r#"{"scope": "x scope"}"#);
        assert_eq!(e.field, "scope");
        assert!(e.problem.contains("not a valid HTTP header name"));
        assert_eq!(
            bad(r#"{"client_id": "x-forwarded-user"}"#).field,
            "client_id"
        );
        assert_eq!(bad(r#"{"consumer_id": "x_consumer_custom_id", "consumer_custom_id": "x-consumer-custom-id"}"#).field, "consumer_custom_id");
        assert_eq!(bad(r#"{"client_id": ""}"#).field, "client_id");
        assert_eq!(bad(r#"{"expiration": "x exp"}"#).field, "expiration");
        assert_eq!(bad(r#"{"consumer_id": ":path"}"#).field, "consumer_id");
        assert_eq!(bad(r#"{"anonymous": "authorization"}"#).field, "anonymous");
        let e = bad(r#"{"consumer_custom_id": "x-consumer-id"}"#);
        assert_eq!(e.field, "consumer_custom_id");
        assert!(e.problem.contains("consumer_id"));
    }
}
