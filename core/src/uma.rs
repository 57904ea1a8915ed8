//! UMA 2.0 resource server (policy enforcement point): which resource and
//! scopes a request needs, the permission ticket request (UMA 2.0 Federated
//! Authorization §4) with the protection API token, and whether the
//! permissions of a requesting party token (RPT) cover the request.
//!
//! An RPT is checked like any other token of the UMA issuer (introspected,
//! or verified locally when it is a JWT); its `permissions` are kept in the
//! grant ([`Permission`]).

use serde::Deserialize;
use serde_json::{json, Value};

use crate::budget::{Budget, RawBudget};
use crate::callout::{check_authority, check_timeout_ms, upstream_or, Callout, CalloutReply, Url};
use crate::config_error::ConfigError;
use crate::policy::{Policy, PolicyDecision};

/// The most permissions of one RPT kept, and scopes per permission: an RPT
/// naming more is still checked against the first ones (never more access).
pub const MAX_PERMISSIONS: usize = 64;
pub const MAX_SCOPES_PER_PERMISSION: usize = 64;
const MAX_TICKET_BYTES: usize = 2048;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUma {
    /// One of `issuers`: its tokens are the RPTs, and it is the `as_uri`.
    issuer: String,
    /// A name from `clients`: gets the PAT.
    client: String,
    /// Else the issuer's `permission_endpoint` (`discovery: "uma2-configuration"`).
    permission_endpoint: Option<String>,
    upstream: Option<String>,
    authority: Option<String>,
    resources: Vec<RawResource>,
    /// A valid RPT without the needed permission: a new ticket (UMA's way)
    /// or a 403.
    #[serde(default)]
    on_insufficient: Insufficient,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    permission_budget: Option<RawBudget>,
}

/// Permission requests a worker may make per second, by default.
pub const DEFAULT_PERMISSION_BUDGET: Budget = Budget {
    per_second: 50,
    burst: 100,
};

fn default_timeout_ms() -> u64 {
    2_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Insufficient {
    #[default]
    Ticket,
    Forbidden,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    resource_id: String,
    /// Rules in either policy format (Gluu's `uma_scope_expression`, or the
    /// readable form), over the scopes the RPT grants for this resource.
    policy: Value,
}

#[derive(Debug)]
pub struct Resource {
    pub id: String,
    policy: Policy,
}

#[derive(Debug)]
pub struct Uma {
    pub issuer: usize,
    pub as_uri: String,
    pub client: usize,
    pub permission_endpoint: Option<Url>,
    pub upstream: String,
    authority: Option<String>,
    pub resources: Vec<Resource>,
    pub on_insufficient: Insufficient,
    pub timeout_ms: u64,
    /// Every token-less request to a resource costs a ticket: bounded.
    pub permission_budget: Budget,
}

/// What the issuer list tells the UMA settings.
pub struct UmaIssuer<'a> {
    pub issuer: &'a str,
    pub upstream: Option<&'a str>,
    /// Whether its discovery document is `uma2-configuration`, which names
    /// the permission endpoint.
    pub uma2_discovery: bool,
}

impl Uma {
    pub fn compile(
        raw: RawUma,
        issuers: &[UmaIssuer],
        clients: &[&str],
    ) -> Result<Uma, ConfigError> {
        let (issuer, settings) = issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.issuer == raw.issuer)
            .ok_or_else(|| {
                ConfigError::new(
                    "uma.issuer",
                    format!("{:?} is not one of `issuers`", raw.issuer),
                )
            })?;
        let client = clients
            .iter()
            .position(|c| *c == raw.client)
            .ok_or_else(|| {
                ConfigError::new(
                    "uma.client",
                    format!("{:?} is not one of `clients`", raw.client),
                )
            })?;
        let permission_endpoint = match raw.permission_endpoint {
            Some(url) => {
                Some(Url::parse(&url).map_err(|e| ConfigError::new("uma.permission_endpoint", e))?)
            }
            None if settings.uma2_discovery => None,
            None => {
                return Err(ConfigError::new(
                    "uma.permission_endpoint",
                    "is required unless the issuer uses `discovery: \"uma2-configuration\"`",
                ))
            }
        };
        let upstream = upstream_or(
            raw.upstream.as_deref(),
            settings.upstream,
            "uma.upstream",
            "permission endpoint",
        )?;
        check_authority(raw.authority.as_deref(), "uma.authority")?;
        if raw.resources.is_empty() {
            return Err(ConfigError::new(
                "uma.resources",
                "must list at least one resource with its `resource_id` and `policy`",
            ));
        }
        let mut resources: Vec<Resource> = Vec::with_capacity(raw.resources.len());
        for (i, resource) in raw.resources.into_iter().enumerate() {
            let field = format!("uma.resources[{i}]");
            if resource.resource_id.is_empty()
                || resource.resource_id.len() > 512
                || resource.resource_id.chars().any(char::is_control)
            {
                return Err(ConfigError::new(
                    format!("{field}.resource_id"),
                    "must be 1 to 512 characters without control characters",
                ));
            }
            if resources.iter().any(|r| r.id == resource.resource_id) {
                return Err(ConfigError::new(
                    format!("{field}.resource_id"),
                    format!("{:?} is listed twice", resource.resource_id),
                ));
            }
            let policy = Policy::compile(&resource.policy)
                .map_err(|e| ConfigError::new(format!("{field}.policy"), e.to_string()))?;
            if policy.uses_request_facts() {
                return Err(ConfigError::new(
                    format!("{field}.policy"),
                    "`acr_values`, `max_age` and JSON-RPC selectors are not supported in UMA resource policies: an RPT is judged on its permissions",
                ));
            }
            resources.push(Resource {
                id: resource.resource_id,
                policy,
            });
        }
        check_timeout_ms(raw.timeout_ms, "uma.timeout_ms")?;
        let permission_budget = Budget::compile(
            raw.permission_budget,
            DEFAULT_PERMISSION_BUDGET,
            "uma.permission_budget",
        )?;
        Ok(Uma {
            permission_budget,
            issuer,
            as_uri: raw.issuer,
            client,
            permission_endpoint,
            upstream,
            authority: raw.authority,
            resources,
            on_insufficient: raw.on_insufficient,
            timeout_ms: raw.timeout_ms,
        })
    }

    /// The first resource with a rule for this method and path (normalised),
    /// and the scopes a ticket for it asks for.
    pub fn resource_for(&self, method: &str, path: &str) -> Option<(&Resource, Vec<String>)> {
        self.resources
            .iter()
            .find_map(|r| match r.policy.decide(method, path, &[]) {
                PolicyDecision::NoRule => None,
                PolicyDecision::Allow { .. } => Some((r, Vec::new())),
                PolicyDecision::InsufficientScope { required, .. }
                | PolicyDecision::StepUp { required, .. } => Some((r, required)),
                // Refused at load (`uses_request_facts`): a ticket for nothing.
                PolicyDecision::NeedBody | PolicyDecision::BadBody(_) => Some((r, Vec::new())),
            })
    }

    /// What the resources' policies warn about at load, each named.
    pub fn warnings(&self) -> Vec<String> {
        self.resources
            .iter()
            .flat_map(|r| {
                r.policy
                    .warnings()
                    .iter()
                    .map(move |w| format!("uma resource {:?}: {w}", r.id))
            })
            .collect()
    }

    /// The permission request for `resource` and `scopes`, with the PAT.
    pub fn ticket_callout(
        &self,
        endpoint: &Url,
        pat: &str,
        resource: &str,
        scopes: &[String],
    ) -> Callout {
        let body = json!({"resource_id": resource, "resource_scopes": scopes});
        let mut url = endpoint.clone();
        if let Some(authority) = &self.authority {
            url.authority = authority.clone();
        }
        let mut callout = Callout::post_json(
            &self.upstream,
            url,
            body.to_string().into_bytes(),
            self.timeout_ms,
        );
        callout
            .headers
            .push(("authorization".to_string(), format!("Bearer {pat}")));
        callout
    }
}

impl Resource {
    /// The policy's verdict on the scopes an RPT grants for this resource.
    pub fn decide(&self, method: &str, path: &str, scopes: &[String]) -> PolicyDecision {
        self.policy.decide(method, path, scopes)
    }
}

/// One permission of an RPT (UMA 2.0 Federated Authorization §5.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub resource_id: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<u64>,
}

/// The `permissions` claim of an RPT (introspected or a JWT's); entries that
/// are not well-formed are left out (they grant nothing).
pub fn permissions(claim: Option<&Value>) -> Vec<Permission> {
    let Some(Value::Array(items)) = claim else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let resource_id = item.get("resource_id")?.as_str()?.to_string();
            let scopes = match item.get("resource_scopes") {
                Some(Value::Array(scopes)) => scopes
                    .iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .take(MAX_SCOPES_PER_PERMISSION)
                    .collect(),
                _ => Vec::new(),
            };
            let expires_at = match item.get("exp") {
                None | Some(Value::Null) => None,
                Some(exp) => Some(exp.as_f64().filter(|e| *e >= 0.0)? as u64),
            };
            Some(Permission {
                resource_id,
                scopes,
                expires_at,
            })
        })
        .take(MAX_PERMISSIONS)
        .collect()
}

/// The scopes `permissions` grant for `resource` at `now`.
pub fn granted_scopes(permissions: &[Permission], resource: &str, now: u64) -> Vec<String> {
    let mut scopes: Vec<String> = permissions
        .iter()
        .filter(|p| p.resource_id == resource && p.expires_at.is_none_or(|exp| now < exp))
        .flat_map(|p| p.scopes.iter().cloned())
        .collect();
    scopes.sort_unstable();
    scopes.dedup();
    scopes
}

/// The ticket in the permission endpoint's answer (201 `{"ticket": …}`).
pub fn ticket(reply: &CalloutReply) -> Result<String, String> {
    let body = reply
        .small_success_body()
        .map_err(|e| e.of("the permission endpoint"))?;
    let answer: Value = serde_json::from_slice(body)
        .map_err(|_| "the permission endpoint's answer is not JSON".to_string())?;
    match answer.get("ticket") {
        Some(Value::String(t))
            if !t.is_empty()
                && t.len() <= MAX_TICKET_BYTES
                && t.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') =>
        {
            Ok(t.clone())
        }
        Some(_) => Err(format!(
            "the permission endpoint's ticket is not 1 to {MAX_TICKET_BYTES} visible ASCII characters"
        )),
        None => Err("the permission endpoint's answer has no ticket".into()),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use serde_json::json;

    use super::*;

    fn uma(extra: Value) -> Result<Uma, ConfigError> {
        let mut raw = json!({
            "issuer": "https://as.test", "client": "pat",
            "resources": [
                {"resource_id": "photos", "policy": {"GET /photos/??": "view", "POST /photos/??": "view and edit"}},
                {"resource_id": "open", "policy": {"GET /open": "true"}},
            ],
        });
        if let (Value::Object(raw), Value::Object(extra)) = (&mut raw, extra) {
            raw.extend(extra);
        }
        let issuers = [UmaIssuer {
            issuer: "https://as.test",
            upstream: Some("as"),
            uma2_discovery: true,
        }];
        Uma::compile(serde_json::from_value(raw).unwrap(), &issuers, &["pat"])
    }

    #[test]
    fn the_resource_and_the_scopes_a_ticket_asks_for() {
        let u = uma(json!({})).unwrap();
        let (r, scopes) = u.resource_for("GET", "/photos/1").unwrap();
        assert_eq!(
            (r.id.as_str(), scopes),
            ("photos", vec!["view".to_string()])
        );
        let (_, scopes) = u.resource_for("POST", "/photos/1").unwrap();
        assert_eq!(scopes, ["view", "edit"]);
        assert!(u.resource_for("GET", "/elsewhere").is_none());
        let c = u.ticket_callout(
            &Url::parse("https://as.test/perm").unwrap(),
            "pat-token",
            "photos",
            &["view".to_string()],
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&c.body.unwrap()).unwrap(),
            json!({"resource_id": "photos", "resource_scopes": ["view"]})
        );
        assert!(c
            .headers
            .contains(&("authorization".to_string(), "Bearer pat-token".to_string())));
    }

    #[test]
    fn permissions_grant_their_resources_scopes_until_they_expire() {
        let p = permissions(Some(&json!([
            {"resource_id": "photos", "resource_scopes": ["view"], "exp": 200},
            {"resource_id": "photos", "resource_scopes": ["edit", 7]},
            {"resource_id": "docs", "resource_scopes": ["read"]},
            {"resource_scopes": ["view"]},
            {"resource_id": "photos", "resource_scopes": ["admin"], "exp": "soon"},
            "junk",
        ])));
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(granted_scopes(&p, "photos", 100), ["edit", "view"]);
        assert_eq!(granted_scopes(&p, "photos", 200), ["edit"]);
        assert!(granted_scopes(&p, "other", 100).is_empty());
        assert!(permissions(Some(&json!({"resource_id": "x"}))).is_empty());
        let many: Vec<Value> = (0..500)
            .map(|i| json!({"resource_id": format!("r{i}")}))
            .collect();
        assert_eq!(
            permissions(Some(&Value::Array(many))).len(),
            MAX_PERMISSIONS
        );
    }

    #[test]
    fn a_ticket_is_taken_only_from_a_well_formed_answer() {
        let reply = |status: u16, body: &str| CalloutReply {
            status: Some(status),
            body: body.as_bytes().to_vec(),
            oversized: None,
        };
        assert_eq!(
            ticket(&reply(201, r#"{"ticket":"abc-123"}"#)).unwrap(),
            "abc-123"
        );
        for (status, body) in [
            (500, r#"{"ticket":"abc"}"#),
            (201, r#"{"tick"#),
            (201, r#"{"ticket":""}"#),
            (201, r#"{"ticket":"a\"b"}"#),
            (201, r#"{"ticket":42}"#),
            (201, r#"{}"#),
        ] {
            assert!(ticket(&reply(status, body)).is_err(), "{status} {body}");
        }
        let long = format!(r#"{{"ticket":"{}"}}"#, "a".repeat(MAX_TICKET_BYTES + 1));
        assert!(ticket(&reply(201, &long)).is_err());
    }

    #[test]
    fn bad_settings_are_refused_with_the_field_named() {
        for (extra, field) in [
            (json!({"issuer": "https://nope"}), "uma.issuer"),
            (json!({"client": "nope"}), "uma.client"),
            (json!({"resources": []}), "uma.resources"),
            (
                json!({"resources": [{"resource_id": "", "policy": {"GET /a": "x"}}]}),
                "uma.resources[0].resource_id",
            ),
            (
                json!({"resources": [{"resource_id": "a", "policy": {"GET /a": "x"}}, {"resource_id": "a", "policy": {"GET /b": "x"}}]}),
                "uma.resources[1].resource_id",
            ),
            (
                json!({"resources": [{"resource_id": "a", "policy": {"GET /a": "x and"}}]}),
                "uma.resources[0].policy",
            ),
            (json!({"timeout_ms": 0}), "uma.timeout_ms"),
        ] {
            let e = uma(extra.clone()).unwrap_err();
            assert_eq!(e.field, field, "{extra}: {e}");
        }
    }
}
