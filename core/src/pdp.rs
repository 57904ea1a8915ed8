//! An external policy decision point, asked after the scope check has passed:
//! an AuthZEN 1.0 evaluation endpoint or OPA's Data API.
//!
//! Only an explicit permit allows. A PDP that cannot be asked or answers
//! something unreadable is an error (the filter answers 503), never a permit.

use crate::cache::{digest, Digest};
use crate::callout::{Callout, CalloutError, CalloutReply, Url};
use crate::config_error::ConfigError;
use crate::headers::{header_name, is_header_value, HeaderUse};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt;

const AUTHZEN_EVALUATION_PATH: &str = "/access/v1/evaluation";
const DEFAULT_TIMEOUT_MS: u64 = 2000;
const MAX_CACHE_SECONDS: u64 = 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PdpKind {
    Authzen,
    Opa,
}

/// The `pdp` object of the filter configuration, as written.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PdpConfig {
    pub kind: PdpKind,
    /// Envoy cluster name, or `host:port` on Kong.
    pub upstream: String,
    pub url: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// 0 (the default) asks the PDP on every request: a cached permit outlives
    /// a policy change, so staleness must be opted into.
    #[serde(default)]
    pub cache_seconds: u64,
    /// Byte budget of the decision cache (per worker).
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: usize,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

// Static headers typically hold a bearer secret; config dumps and logs must
// not reveal it.
impl fmt::Debug for PdpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PdpConfig")
            .field("kind", &self.kind)
            .field("upstream", &self.upstream)
            .field("url", &self.url)
            .field("timeout_ms", &self.timeout_ms)
            .field("cache_seconds", &self.cache_seconds)
            .field("headers", &redacted(self.headers.keys()))
            .finish()
    }
}

fn redacted<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    names.map(|n| format!("{n}: <redacted>")).collect()
}

/// Why no decision could be had. The filter turns every one into a 503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PdpError {
    Callout(CalloutError),
    /// A 2xx answer whose body is not the document the protocol defines.
    Malformed(String),
}

impl fmt::Display for PdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PdpError::Callout(e) => write!(f, "policy decision point failed: {e}"),
            PdpError::Malformed(why) => {
                write!(f, "policy decision point gave an unusable answer: {why}")
            }
        }
    }
}

impl std::error::Error for PdpError {}

/// The facts a decision is asked about.
#[derive(Debug, Clone, Copy)]
pub struct PdpQuery<'a> {
    /// `sub`, or the client_id when the token has no `sub`.
    pub subject: &'a str,
    pub client_id: Option<&'a str>,
    pub claims: &'a Map<String, Value>,
    pub method: &'a str,
    pub path: &'a str,
    /// The name of the policy rule that matched the request.
    pub rule: &'a str,
    pub scopes: &'a [String],
}

fn default_cache_bytes() -> usize {
    1 << 20
}

#[derive(Clone, PartialEq, Eq)]
pub struct Pdp {
    kind: PdpKind,
    upstream: String,
    url: Url,
    timeout_ms: u64,
    cache_seconds: u64,
    cache_bytes: usize,
    headers: Vec<(String, String)>,
}

impl fmt::Debug for Pdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pdp")
            .field("kind", &self.kind)
            .field("upstream", &self.upstream)
            .field("url", &self.url)
            .field("timeout_ms", &self.timeout_ms)
            .field("cache_seconds", &self.cache_seconds)
            .field("headers", &redacted(self.headers.iter().map(|(n, _)| n)))
            .finish()
    }
}

impl Pdp {
    pub fn compile(cfg: &PdpConfig) -> Result<Pdp, ConfigError> {
        if cfg.upstream.is_empty() {
            return Err(ConfigError::new("pdp.upstream", "must not be empty"));
        }
        if cfg
            .upstream
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::new(
                "pdp.upstream",
                "must not contain whitespace or control characters",
            ));
        }
        let mut url = Url::parse(&cfg.url).map_err(|e| ConfigError::new("pdp.url", e))?;
        if url
            .path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::new(
                "pdp.url",
                "must not contain whitespace or control characters",
            ));
        }
        match cfg.kind {
            PdpKind::Authzen if url.path == "/" => url.path = AUTHZEN_EVALUATION_PATH.to_string(),
            // OPA's root document is all of its data, never a decision.
            PdpKind::Opa if url.path == "/" || url.path.starts_with("/?") => {
                return Err(ConfigError::new(
                    "pdp.url",
                    "must name the decision document, e.g. http://127.0.0.1:8181/v1/data/httpapi/authz/allow",
                ))
            }
            _ => {}
        }
        crate::callout::check_timeout_ms(cfg.timeout_ms, "pdp.timeout_ms")?;
        if cfg.cache_seconds > MAX_CACHE_SECONDS {
            return Err(ConfigError::new(
                "pdp.cache_seconds",
                format!("must be at most {MAX_CACHE_SECONDS}"),
            ));
        }
        let mut headers = Vec::with_capacity(cfg.headers.len());
        for (name, value) in &cfg.headers {
            let at = format!("pdp.headers[{}]", Value::String(name.clone()));
            let name = header_name(name, &at, HeaderUse::Callout)?;
            // accept and content-type are the callout's own.
            if name == "accept" {
                return Err(ConfigError::new(at, "`accept` is set by the filter"));
            }
            if !is_header_value(value) {
                return Err(ConfigError::new(
                    at,
                    "value must not contain control characters",
                ));
            }
            headers.push((name, value.clone()));
        }
        Ok(Pdp {
            kind: cfg.kind,
            upstream: cfg.upstream.clone(),
            url,
            timeout_ms: cfg.timeout_ms,
            cache_seconds: cfg.cache_seconds,
            cache_bytes: cfg.cache_bytes,
            headers,
        })
    }

    pub fn kind(&self) -> PdpKind {
        self.kind
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// How long a decision may be reused; 0 means never.
    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    pub fn cache_seconds(&self) -> u64 {
        self.cache_seconds
    }

    /// The callout that asks about `q`, and the key its decision is cached
    /// under: the SHA-256 of the exact body the PDP is sent. The PDP may
    /// decide on anything it is sent (`iss`, `acr`, any claim, the rule), so
    /// a decision is reused only for a request that would send it the same
    /// document; the URL and static headers are the configuration's, and
    /// each configuration has its own cache.
    pub fn ask(&self, q: &PdpQuery) -> (Callout, Digest) {
        let body = match self.kind {
            PdpKind::Authzen => authzen_request(q),
            PdpKind::Opa => opa_request(q),
        };
        // Value's Display cannot fail, unlike serde_json::to_vec.
        let body = body.to_string().into_bytes();
        let key = digest(&[&body]);
        let mut callout =
            Callout::post_json(&self.upstream, self.url.clone(), body, self.timeout_ms);
        callout.headers.extend(self.headers.iter().cloned());
        (callout, key)
    }

    /// `Ok(true)` permits; `Ok(false)` is an explicit or implicit deny.
    pub fn verdict(&self, reply: &CalloutReply) -> Result<bool, PdpError> {
        let body = reply.success_body().map_err(PdpError::Callout)?;
        let doc: Value = serde_json::from_slice(body)
            .map_err(|e| PdpError::Malformed(format!("body is not JSON ({e})")))?;
        let Value::Object(doc) = doc else {
            return Err(PdpError::Malformed("body is not a JSON object".to_string()));
        };
        match self.kind {
            // AuthZEN requires `decision`; without it the PDP is not speaking
            // the protocol, which an operator should see as a failure rather
            // than as a policy denying everyone.
            PdpKind::Authzen => match doc.get("decision") {
                Some(Value::Bool(decision)) => Ok(*decision),
                Some(_) => Err(PdpError::Malformed(
                    "`decision` is not a boolean".to_string(),
                )),
                None => Err(PdpError::Malformed("no `decision` member".to_string())),
            },
            // A missing `result` is OPA's undefined document: the policy made
            // no decision, which denies.
            PdpKind::Opa => Ok(match doc.get("result") {
                Some(Value::Bool(allow)) => *allow,
                Some(Value::Object(result)) => result.get("allow") == Some(&Value::Bool(true)),
                _ => false,
            }),
        }
    }
}

fn authzen_request(q: &PdpQuery) -> Value {
    // A token whose subject is its own client acts for itself (client
    // credentials); any other subject is a user the client acts for.
    let subject_type = match q.client_id {
        Some(client_id) if client_id == q.subject => "client",
        _ => "user",
    };
    json!({
        "subject": {
            "type": subject_type,
            "id": q.subject,
            "properties": q.claims,
        },
        "action": { "name": q.method },
        "resource": {
            "type": "route",
            "id": q.path,
            "properties": { "rule": q.rule },
        },
        "context": {
            "scopes": q.scopes,
            "client_id": q.client_id,
        },
    })
}

fn opa_request(q: &PdpQuery) -> Value {
    json!({
        "input": {
            "subject": q.subject,
            "client_id": q.client_id,
            "claims": q.claims,
            "method": q.method,
            "path": q.path,
            "rule": q.rule,
            "scopes": q.scopes,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn pdp(json: &str) -> Pdp {
        Pdp::compile(&serde_json::from_str(json).unwrap()).unwrap()
    }

    fn compile_err(json: &str) -> ConfigError {
        Pdp::compile(&serde_json::from_str(json).unwrap()).unwrap_err()
    }

    fn authzen() -> Pdp {
        pdp(r#"{"kind": "authzen", "upstream": "pdp", "url": "http://pdp.local:8080"}"#)
    }

    fn opa() -> Pdp {
        pdp(r#"{"kind": "opa", "upstream": "pdp",
                "url": "http://127.0.0.1:8181/v1/data/httpapi/authz/allow"}"#)
    }

    fn reply(status: u16, body: &str) -> CalloutReply {
        CalloutReply {
            status: Some(status),
            body: body.as_bytes().to_vec(),
            ..CalloutReply::default()
        }
    }

    fn claims() -> Map<String, Value> {
        let Value::Object(m) = json!({"sub": "alice", "azp": "app", "roles": ["admin"]}) else {
            unreachable!()
        };
        m
    }

    fn body_of(c: &Callout) -> Value {
        serde_json::from_slice(c.body.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn config_defaults_and_path_default() {
        let p = authzen();
        assert_eq!(p.kind(), PdpKind::Authzen);
        assert_eq!(p.url().path, "/access/v1/evaluation");
        assert_eq!(p.url().authority, "pdp.local:8080");
        assert_eq!(p.cache_seconds(), 0);
        assert_eq!(p.timeout_ms, 2000);
        // An explicit path is kept, even for AuthZEN.
        let p = pdp(r#"{"kind": "authzen", "upstream": "pdp", "url": "http://pdp/authz/v1/eval"}"#);
        assert_eq!(p.url().path, "/authz/v1/eval");
        assert_eq!(opa().url().path, "/v1/data/httpapi/authz/allow");
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = compile_err(r#"{"kind": "opa", "upstream": "pdp", "url": "/v1/data/x"}"#);
        assert_eq!(e.field, "pdp.url");
        assert!(e
            .to_string()
            .starts_with("invalid configuration: `pdp.url`: "));
        assert_eq!(
            compile_err(r#"{"kind": "opa", "upstream": "pdp", "url": "http://opa:8181/"}"#).field,
            "pdp.url"
        );
        assert_eq!(
            compile_err(r#"{"kind": "opa", "upstream": "", "url": "http://opa/v1/data/x"}"#).field,
            "pdp.upstream"
        );
        let e = compile_err(
            r#"{"kind": "opa", "upstream": "pdp", "url": "http://opa/v1/data/x", "timeout_ms": 0}"#,
        );
        assert_eq!(
            e.to_string(),
            "invalid configuration: `pdp.timeout_ms`: must be between 1 and 60000"
        );
        assert_eq!(
            compile_err(
                r#"{"kind": "opa", "upstream": "pdp", "url": "http://opa/v1/data/x", "timeout_ms": 60001}"#
            )
            .field,
            "pdp.timeout_ms"
        );
        assert_eq!(
            compile_err(
                r#"{"kind": "opa", "upstream": "pdp", "url": "http://opa/v1/data/x", "cache_seconds": 3601}"#
            )
            .field,
            "pdp.cache_seconds"
        );
        assert_eq!(
            compile_err(
                r#"{"kind": "opa", "upstream": "pdp", "url": "http://opa/v1/data/x", "headers": {"X Key": "v"}}"#
            )
            .field,
            r#"pdp.headers["X Key"]"#
        );
        assert_eq!(
            compile_err(
                r#"{"kind": "opa", "upstream": "pdp", "url": "http://opa/v1/data/x", "headers": {"content-type": "text/plain"}}"#
            )
            .field,
            r#"pdp.headers["content-type"]"#
        );
        assert_eq!(
            compile_err(
                r#"{"kind": "opa", "upstream": "pdp", "url": "http://opa/v1/data/x", "headers": {"x-key": "a\nb"}}"#
            )
            .field,
            r#"pdp.headers["x-key"]"#
        );
    }

    #[test]
    fn config_rejects_unknown_fields_and_kinds() {
        let parse = serde_json::from_str::<PdpConfig>;
        assert!(parse(r#"{"kind": "xacml", "upstream": "p", "url": "http://p/"}"#).is_err());
        assert!(
            parse(r#"{"kind": "opa", "upstream": "p", "url": "http://p/x", "timeout": 5}"#)
                .is_err()
        );
        assert!(parse(r#"{"kind": "opa", "url": "http://p/x"}"#).is_err());
    }

    #[test]
    fn static_headers_are_sent_but_never_shown() {
        let p = pdp(
            r#"{"kind": "opa", "upstream": "pdp", "url": "http://opa/v1/data/x",
                "headers": {"authorization": "Bearer s3cret"}}"#,
        );
        let (c, _) = p.ask(&PdpQuery {
            subject: "alice",
            client_id: None,
            claims: &Map::new(),
            method: "GET",
            path: "/",
            rule: "r",
            scopes: &[],
        });
        assert!(c
            .headers
            .contains(&("authorization".to_string(), "Bearer s3cret".to_string())));
        assert!(c
            .headers
            .contains(&("content-type".to_string(), "application/json".to_string())));
        assert!(!format!("{p:?}").contains("s3cret"));
        let cfg: PdpConfig = serde_json::from_str(
            r#"{"kind": "opa", "upstream": "pdp", "url": "http://opa/v1/data/x",
                "headers": {"authorization": "Bearer s3cret"}}"#,
        )
        .unwrap();
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    #[test]
    fn authzen_request_body() {
        let claims = claims();
        let scopes = vec!["read".to_string(), "write".to_string()];
        let q = PdpQuery {
            subject: "alice",
            client_id: Some("app"),
            claims: &claims,
            method: "DELETE",
            path: "/pdp/allow/1",
            rule: "delete-items",
            scopes: &scopes,
        };
        let (c, _) = authzen().ask(&q);
        assert_eq!(c.method, "POST");
        assert_eq!(c.upstream, "pdp");
        assert_eq!(c.timeout_ms, 2000);
        assert_eq!(c.url.path, "/access/v1/evaluation");
        assert_eq!(
            body_of(&c),
            json!({
                "subject": {"type": "user", "id": "alice",
                            "properties": {"sub": "alice", "azp": "app", "roles": ["admin"]}},
                "action": {"name": "DELETE"},
                "resource": {"type": "route", "id": "/pdp/allow/1", "properties": {"rule": "delete-items"}},
                "context": {"scopes": ["read", "write"], "client_id": "app"},
            })
        );
    }

    #[test]
    fn authzen_subject_type() {
        let claims = Map::new();
        let q = |subject, client_id| PdpQuery {
            subject,
            client_id,
            claims: &claims,
            method: "GET",
            path: "/",
            rule: "r",
            scopes: &[],
        };
        let kind = |q: PdpQuery| body_of(&authzen().ask(&q).0)["subject"]["type"].clone();
        assert_eq!(kind(q("app", Some("app"))), "client");
        assert_eq!(kind(q("alice", Some("app"))), "user");
        assert_eq!(kind(q("alice", None)), "user");
    }

    #[test]
    fn opa_request_body() {
        let claims = claims();
        let scopes = vec!["read".to_string()];
        let q = PdpQuery {
            subject: "alice",
            client_id: None,
            claims: &claims,
            method: "GET",
            path: "/pdp/allow",
            rule: "read-items",
            scopes: &scopes,
        };
        let (c, _) = opa().ask(&q);
        assert_eq!(c.url.path, "/v1/data/httpapi/authz/allow");
        assert_eq!(c.url.authority, "127.0.0.1:8181");
        assert_eq!(
            body_of(&c),
            json!({"input": {
                "subject": "alice", "client_id": null,
                "claims": {"sub": "alice", "azp": "app", "roles": ["admin"]},
                "method": "GET", "path": "/pdp/allow", "rule": "read-items", "scopes": ["read"],
            }})
        );
    }

    #[test]
    fn authzen_verdicts() {
        let p = authzen();
        assert_eq!(p.verdict(&reply(200, r#"{"decision": true}"#)), Ok(true));
        assert_eq!(
            p.verdict(&reply(200, r#"{"decision": true, "context": {"id": "0"}}"#)),
            Ok(true)
        );
        assert_eq!(p.verdict(&reply(200, r#"{"decision": false}"#)), Ok(false));
        assert!(matches!(
            p.verdict(&reply(200, r#"{"decision": "true"}"#)),
            Err(PdpError::Malformed(_))
        ));
        assert!(matches!(
            p.verdict(&reply(200, "{}")),
            Err(PdpError::Malformed(_))
        ));
        // OPA's shape is not AuthZEN's.
        assert!(p.verdict(&reply(200, r#"{"result": true}"#)).is_err());
    }

    #[test]
    fn opa_verdicts() {
        let p = opa();
        assert_eq!(p.verdict(&reply(200, r#"{"result": true}"#)), Ok(true));
        assert_eq!(
            p.verdict(&reply(200, r#"{"result": {"allow": true}}"#)),
            Ok(true)
        );
        assert_eq!(p.verdict(&reply(200, r#"{"result": false}"#)), Ok(false));
        assert_eq!(
            p.verdict(&reply(200, r#"{"result": {"allow": false}}"#)),
            Ok(false)
        );
        assert_eq!(
            p.verdict(&reply(200, r#"{"result": {"allow": "yes"}}"#)),
            Ok(false)
        );
        assert_eq!(p.verdict(&reply(200, r#"{"result": {}}"#)), Ok(false));
        assert_eq!(p.verdict(&reply(200, r#"{"result": "true"}"#)), Ok(false));
        assert_eq!(p.verdict(&reply(200, r#"{"result": 1}"#)), Ok(false));
        // Undefined document.
        assert_eq!(p.verdict(&reply(200, "{}")), Ok(false));
        assert_eq!(p.verdict(&reply(200, r#"{"decision_id": "x"}"#)), Ok(false));
    }

    #[test]
    fn failures_are_errors_not_denials() {
        for p in [authzen(), opa()] {
            let e = p.verdict(&reply(200, "<html>")).unwrap_err();
            assert!(matches!(e, PdpError::Malformed(_)));
            assert!(e.to_string().contains("not JSON"), "{e}");
            assert!(matches!(
                p.verdict(&reply(200, "")),
                Err(PdpError::Malformed(_))
            ));
            assert!(matches!(
                p.verdict(&reply(200, "true")),
                Err(PdpError::Malformed(_))
            ));
            let e = p
                .verdict(&reply(500, r#"{"result": true, "decision": true}"#))
                .unwrap_err();
            assert_eq!(e, PdpError::Callout(CalloutError::Status(500)));
            assert_eq!(
                e.to_string(),
                "policy decision point failed: answered HTTP 500"
            );
            assert_eq!(
                p.verdict(&reply(403, r#"{"decision": true}"#)),
                Err(PdpError::Callout(CalloutError::Status(403)))
            );
            let e = p
                .verdict(&CalloutReply {
                    status: None,
                    body: vec![],
                    ..CalloutReply::default()
                })
                .unwrap_err();
            assert_eq!(e, PdpError::Callout(CalloutError::NoResponse));
            assert!(e.to_string().contains("no response"));
        }
    }

    #[test]
    fn the_cache_key_is_the_exact_body_sent() {
        // Issue 18: the key covered subject, client, method, path and scopes,
        // so a token of another issuer (or without MFA) with the same `sub`
        // and client got a decision the PDP made about other claims.
        let scopes = vec!["read".to_string()];
        let claims = |extra: Value| {
            let mut m = claims();
            if let Value::Object(extra) = extra {
                m.extend(extra);
            }
            m
        };
        fn query<'a>(claims: &'a Map<String, Value>, scopes: &'a [String]) -> PdpQuery<'a> {
            PdpQuery {
                subject: "alice",
                client_id: Some("app"),
                claims,
                method: "GET",
                path: "/x",
                rule: "r",
                scopes,
            }
        }
        for p in [authzen(), opa()] {
            let a = claims(json!({"iss": "https://a.example", "acr": "mfa"}));
            let (callout, key) = p.ask(&query(&a, &scopes));
            assert_eq!(key, digest(&[callout.body.as_deref().unwrap()]));
            assert_eq!(
                key,
                p.ask(&query(&a, &scopes)).1,
                "the same facts, the same key"
            );
            let others = [
                claims(json!({"iss": "https://b.example", "acr": "mfa"})),
                claims(json!({"iss": "https://a.example", "acr": "pwd"})),
                claims(json!({"iss": "https://a.example"})),
                claims(json!({"iss": "https://a.example", "acr": "mfa", "amr": ["otp"]})),
            ];
            let mut keys = vec![key];
            for other in &others {
                keys.push(p.ask(&query(other, &scopes)).1);
            }
            let mut rule = query(&a, &scopes);
            rule.rule = "another rule";
            keys.push(p.ask(&rule).1);
            let mut no_scopes = query(&a, &scopes);
            no_scopes.scopes = &[];
            keys.push(p.ask(&no_scopes).1);
            let mut client = query(&a, &scopes);
            client.client_id = None;
            keys.push(p.ask(&client).1);
            for (i, k) in keys.iter().enumerate() {
                for other in keys.iter().skip(i + 1) {
                    assert_ne!(k, other);
                }
            }
        }
    }
}
