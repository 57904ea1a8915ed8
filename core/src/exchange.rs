//! Token exchange (RFC 8693) for upstream OAuth: instead of the gateway's own
//! client-credentials token, the upstream gets a token the authorization
//! server issues for the caller, exchanged from the caller's verified token
//! for the rule's audience, resource and scope. The gateway authenticates at
//! the token endpoint as the rule's client; with `actor: true` it also sends
//! its own client token as the `actor_token` (delegation, RFC 8693 §1.1).
//!
//! Exchanged tokens are cached per worker, per (caller token, rule), until
//! their `expires_in` less [`EXPIRY_MARGIN_SECONDS`], in a cache bounded in
//! bytes. They are not shared across workers: shared data cannot delete an
//! entry, so per-caller entries would need a fixed-slot table, and would put
//! a copy of every caller's upstream credential where every filter
//! configuration of the process can read it; the saving is at most one
//! exchange per extra worker per caller token and token lifetime.
//!
//! An exchange is a callout a caller causes with each new token: one per
//! (caller token, rule) in flight per worker, at most
//! [`MAX_EXCHANGES_IN_FLIGHT`] (three quarters for one client address), and a
//! budget per rule with a quarter for one address ([`crate::budget`]).
//!
//! How an answer is read ([`interpret`]):
//! - 200 with a Bearer `access_token`, `issued_token_type` the access token
//!   type: the token, sent upstream as `Bearer`.
//! - 400 `invalid_request` or `invalid_grant`: the caller's token is not
//!   acceptable as a subject token (RFC 8693 §2.2.2; revoked, expired at the
//!   server, of another audience): 401 `invalid_token`.
//! - 400 `invalid_target` or `invalid_scope`: the server will not issue a
//!   token for this audience or scope to this caller: 403.
//! - Anything else (5xx, garbage, another `issued_token_type` or
//!   `token_type`, `invalid_client`, `unauthorized_client`,
//!   `unsupported_grant_type`: the gateway's own credentials or the server's
//!   setup, the same for every caller), no answer: 503. The caller's own
//!   token is never sent instead.

use std::collections::HashMap;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::Value;

use crate::budget::{Budget, RawBudget, Spender};
use crate::cache::{digest, string_weight, BoundedCache, Digest, Weigh};
use crate::callout::CalloutReply;
use crate::config_error::ConfigError;
use crate::flight::Flight;
use crate::token_client::{bearer_token, EXPIRY_MARGIN_SECONDS};
use crate::wait::Bound;

/// RFC 8693 §2.1.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 §3: the type of the caller's token, of the actor token, and of
/// the token asked for.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Exchanges one worker may have in flight at once (a quarter of them for
/// one client address at most three quarters).
pub const MAX_EXCHANGES_IN_FLIGHT: usize = 256;
/// Per rule, per worker, unless `exchange.budget` says otherwise.
pub const DEFAULT_BUDGET: Budget = Budget {
    per_second: 50,
    burst: 100,
};
const DEFAULT_CACHE_BYTES: usize = 4 << 20;
/// A refusal for a caller token is remembered this long: its requests get
/// the same answer without asking again.
pub const REFUSAL_SECONDS: u64 = 10;
/// A failed exchange is remembered this long for its caller token: the
/// requests that waited for it, and those right after, get the 503 rather
/// than a new callout each.
pub const FAILURE_SECONDS: u64 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExchange {
    audience: Option<String>,
    resource: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    /// Whether the gateway's own client token goes as `actor_token`.
    #[serde(default)]
    actor: bool,
    budget: Option<RawBudget>,
    cache_bytes: Option<usize>,
}

/// One rule's exchange, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    audience: Option<String>,
    resource: Option<String>,
    scope: Option<String>,
    pub actor: bool,
    pub budget: Budget,
    pub cache_bytes: usize,
}

impl Exchange {
    pub fn compile(raw: RawExchange, field: &str) -> Result<Exchange, ConfigError> {
        let f = |n: &str| format!("{field}.{n}");
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
        if raw.audience.is_none() && raw.resource.is_none() {
            return Err(ConfigError::new(
                field,
                "needs `audience` or `resource`: the upstream the exchanged token is for (without one the server may hand back a token for any audience, the caller's own included)",
            ));
        }
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
        let cache_bytes = raw.cache_bytes.unwrap_or(DEFAULT_CACHE_BYTES);
        if cache_bytes > 256 << 20 {
            return Err(ConfigError::new(
                f("cache_bytes"),
                "must be at most 268435456 (256 MiB)",
            ));
        }
        Ok(Exchange {
            audience: raw.audience,
            resource: raw.resource,
            scope: (!raw.scopes.is_empty()).then(|| raw.scopes.join(" ")),
            actor: raw.actor,
            budget: Budget::compile(raw.budget, DEFAULT_BUDGET, &f("budget"))?,
            cache_bytes,
        })
    }

    /// The token request's form (RFC 8693 §2.1): the caller's token as the
    /// subject, the gateway's as the actor if there is one.
    pub fn fields<'a>(
        &'a self,
        subject: &'a str,
        actor: Option<&'a str>,
    ) -> Vec<(&'a str, &'a str)> {
        let mut fields = vec![
            ("grant_type", GRANT_TYPE),
            ("subject_token", subject),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
        ];
        if let Some(actor) = actor {
            fields.push(("actor_token", actor));
            fields.push(("actor_token_type", ACCESS_TOKEN_TYPE));
        }
        for (name, value) in [
            ("audience", &self.audience),
            ("resource", &self.resource),
            ("scope", &self.scope),
        ] {
            if let Some(value) = value {
                fields.push((name, value.as_str()));
            }
        }
        fields
    }
}

/// Why the server refused to exchange this caller's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `invalid_request` or `invalid_grant`: the caller's token is not
    /// acceptable as a subject token (401).
    SubjectToken(&'static str),
    /// `invalid_target` or `invalid_scope`: no token for this audience or
    /// scope for this caller (403).
    Target(&'static str),
}

impl Refusal {
    /// The server's `error` code.
    pub fn error(self) -> &'static str {
        match self {
            Refusal::SubjectToken(e) | Refusal::Target(e) => e,
        }
    }
}

/// What an exchange came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A token, usable for this many seconds.
    Issued {
        token: Rc<str>,
        lifetime: u64,
    },
    Refused(Refusal),
    /// No usable answer; the reason is for the log.
    Failed(String),
}

/// The token endpoint's answer to an exchange, read as the module's doc says.
pub fn interpret(reply: &CalloutReply, default_expires_in: u64) -> Outcome {
    if reply.status == Some(400) || reply.status == Some(401) || reply.status == Some(403) {
        let error = serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned));
        return match error.as_deref() {
            Some("invalid_request") => Outcome::Refused(Refusal::SubjectToken("invalid_request")),
            Some("invalid_grant") => Outcome::Refused(Refusal::SubjectToken("invalid_grant")),
            Some("invalid_target") => Outcome::Refused(Refusal::Target("invalid_target")),
            Some("invalid_scope") => Outcome::Refused(Refusal::Target("invalid_scope")),
            Some(other) => {
                let named: String = other.chars().filter(|c| !c.is_control()).take(40).collect();
                Outcome::Failed(format!(
                    "the token endpoint refused the exchange with {named:?} (HTTP {}): the gateway's client or the server's setup, not the caller",
                    reply.status.unwrap_or(0)
                ))
            }
            None => Outcome::Failed(format!(
                "the token endpoint answered HTTP {} without an OAuth error",
                reply.status.unwrap_or(0)
            )),
        };
    }
    let body = match reply.small_success_body() {
        Ok(body) => body,
        Err(e) => return Outcome::Failed(e.of("the token endpoint")),
    };
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(body) else {
        return Outcome::Failed("the token endpoint's answer is not a JSON object".into());
    };
    match answer.get("issued_token_type") {
        Some(Value::String(t)) if t == ACCESS_TOKEN_TYPE => {}
        Some(Value::String(t)) => {
            let named: String = t.chars().filter(|c| !c.is_control()).take(80).collect();
            return Outcome::Failed(format!(
                "the issued_token_type is {named:?}, not an access token"
            ));
        }
        _ => {
            return Outcome::Failed("the answer has no issued_token_type (RFC 8693 §2.2.1)".into())
        }
    }
    match bearer_token(&answer, default_expires_in) {
        Ok((_, expires_in)) if expires_in <= EXPIRY_MARGIN_SECONDS => Outcome::Failed(format!(
            "the exchanged token expires in {expires_in} s, too soon to be used"
        )),
        Ok((token, expires_in)) => Outcome::Issued {
            token: Rc::from(token),
            lifetime: expires_in - EXPIRY_MARGIN_SECONDS,
        },
        Err(why) => Outcome::Failed(why),
    }
}

/// What the cache keeps for one (caller token, rule).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cached {
    Token(Rc<str>),
    Refused(Refusal),
    Failed(Rc<str>),
}

impl Weigh for Cached {
    fn weight(&self) -> usize {
        match self {
            Cached::Token(s) | Cached::Failed(s) => string_weight(s).saturating_add(16),
            Cached::Refused(_) => 24,
        }
    }
}

/// What a request that needs an exchanged token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Ready(Rc<str>),
    Refused(Refusal),
    /// The last exchange for this caller token failed (for a moment).
    Failed(Rc<str>),
    /// An exchange for it is in flight here: wait until then.
    Wait {
        until: u64,
    },
    /// None is known: start one ([`Exchanges::start`]).
    Unknown,
}

/// One worker's exchanged tokens, exchanges in flight and budgets, for the
/// rules of one configuration (by rule index; rules without an exchange
/// hold empty ones).
pub struct Exchanges {
    caches: Vec<BoundedCache<Cached>>,
    budgets: Vec<Spender>,
    /// By key, with the address of the client whose token it is.
    in_flight: HashMap<Digest, (Flight, Option<Rc<str>>)>,
}

impl Exchanges {
    /// `rules`: each upstream OAuth rule's exchange, if it has one.
    pub fn new(rules: &[Option<&Exchange>]) -> Self {
        Exchanges {
            caches: rules
                .iter()
                .map(|x| BoundedCache::new(x.map_or(0, |x| x.cache_bytes), usize::MAX))
                .collect(),
            budgets: rules
                .iter()
                .map(|x| Spender::new(x.map_or(DEFAULT_BUDGET, |x| x.budget)))
                .collect(),
            in_flight: HashMap::new(),
        }
    }

    /// Names the exchange of `subject` (the caller's token) for `rule`; the
    /// token itself is never kept.
    pub fn key(rule: usize, subject: &str) -> Digest {
        digest(&[
            b"exchange",
            &(rule as u64).to_be_bytes(),
            subject.as_bytes(),
        ])
    }

    pub fn lookup(&mut self, rule: usize, key: &Digest, now: u64) -> Lookup {
        if let Some(cached) = self.caches.get_mut(rule).and_then(|c| c.get(key, now)) {
            return match cached {
                Cached::Token(t) => Lookup::Ready(Rc::clone(t)),
                Cached::Refused(r) => Lookup::Refused(*r),
                Cached::Failed(why) => Lookup::Failed(Rc::clone(why)),
            };
        }
        match self
            .in_flight
            .get(key)
            .and_then(|(f, _)| f.awaited_until(now))
        {
            Some(until) => Lookup::Wait { until },
            None => {
                // Its answer never came (the host dropped it): ask again.
                self.in_flight.remove(key);
                Lookup::Unknown
            }
        }
    }

    /// Claims an exchange for `key` until `until`, for the client at
    /// `client`: refused by the in-flight cap or the rule's budget.
    pub fn start(
        &mut self,
        rule: usize,
        key: Digest,
        client: Option<&str>,
        until: u64,
        now: u64,
    ) -> Result<(), Bound> {
        if self.in_flight_full(client, now) {
            return Err(Bound::InFlight);
        }
        let spent = self
            .budgets
            .get_mut(rule)
            .is_some_and(|budget| budget.spend(client, now));
        if !spent {
            return Err(Bound::ExchangeBudget);
        }
        let mut flight = Flight::default();
        // No marker: exchanges are not shared across workers.
        let _ = flight.start(None, until, now);
        self.in_flight.insert(key, (flight, client.map(Rc::from)));
        Ok(())
    }

    /// Whether the worker's exchanges in flight are at their cap, or
    /// `client` holds three quarters of it.
    fn in_flight_full(&mut self, client: Option<&str>, now: u64) -> bool {
        let count = |map: &HashMap<Digest, (Flight, Option<Rc<str>>)>| {
            let theirs = client.map_or(0, |client| {
                map.values()
                    .filter(|(_, c)| c.as_deref() == Some(client))
                    .count()
            });
            (map.len(), theirs)
        };
        let full = |(all, theirs): (usize, usize)| {
            all >= MAX_EXCHANGES_IN_FLIGHT || theirs >= MAX_EXCHANGES_IN_FLIGHT / 4 * 3
        };
        if full(count(&self.in_flight)) {
            self.in_flight.retain(|_, (f, _)| f.awaiting(now));
        }
        full(count(&self.in_flight))
    }

    /// Whether an exchange for `key` is in flight on this worker.
    pub fn in_flight(&self, key: &Digest, now: u64) -> bool {
        self.in_flight
            .get(key)
            .is_some_and(|(f, _)| f.awaiting(now))
    }

    /// The end of the exchange for `key`: its outcome cached for the
    /// requests that waited and those to come (a token until its expiry
    /// less the margin, a refusal for [`REFUSAL_SECONDS`], a failure for
    /// [`FAILURE_SECONDS`]).
    pub fn settle(&mut self, rule: usize, key: Digest, outcome: &Outcome, now: u64) {
        self.in_flight.remove(&key);
        let Some(cache) = self.caches.get_mut(rule) else {
            return;
        };
        let (cached, seconds) = match outcome {
            Outcome::Issued { token, lifetime } => (Cached::Token(Rc::clone(token)), *lifetime),
            Outcome::Refused(r) => (Cached::Refused(*r), REFUSAL_SECONDS),
            Outcome::Failed(why) => (Cached::Failed(Rc::from(why.as_str())), FAILURE_SECONDS),
        };
        cache.insert(key, cached, now.saturating_add(seconds), now);
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn exchange(json: &str) -> Result<Exchange, ConfigError> {
        Exchange::compile(
            serde_json::from_str(json).unwrap(),
            "upstream_oauth[0].exchange",
        )
    }

    fn reply(status: u16, body: &str) -> CalloutReply {
        CalloutReply {
            status: Some(status),
            body: body.as_bytes().to_vec(),
            oversized: None,
        }
    }

    const GOOD: &str = r#"{"access_token":"x1","token_type":"Bearer","expires_in":60,"issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#;

    #[test]
    fn the_request_names_the_subject_the_actor_and_the_target() {
        let x = exchange(r#"{"audience":"https://backend","resource":"https://backend/api","scopes":["read","write"],"actor":true}"#).unwrap();
        let fields = x.fields("caller", Some("gateway"));
        assert_eq!(
            fields,
            vec![
                ("grant_type", GRANT_TYPE),
                ("subject_token", "caller"),
                ("subject_token_type", ACCESS_TOKEN_TYPE),
                ("requested_token_type", ACCESS_TOKEN_TYPE),
                ("actor_token", "gateway"),
                ("actor_token_type", ACCESS_TOKEN_TYPE),
                ("audience", "https://backend"),
                ("resource", "https://backend/api"),
                ("scope", "read write"),
            ]
        );
        assert_eq!(x.budget, DEFAULT_BUDGET);
        let plain = exchange(r#"{"audience":"b"}"#).unwrap();
        assert_eq!(plain.fields("c", None).len(), 5);
    }

    #[test]
    fn bad_settings_are_refused_with_the_field_named() {
        for (json, field) in [
            (r#"{}"#, "upstream_oauth[0].exchange"),
            (r#"{"scopes":["a"]}"#, "upstream_oauth[0].exchange"),
            (r#"{"audience":""}"#, "upstream_oauth[0].exchange.audience"),
            (
                r#"{"audience":"a","scopes":["a b"]}"#,
                "upstream_oauth[0].exchange.scopes",
            ),
            (
                r#"{"audience":"a","budget":{"per_second":0}}"#,
                "upstream_oauth[0].exchange.budget.per_second",
            ),
            (
                r#"{"audience":"a","cache_bytes":1000000000}"#,
                "upstream_oauth[0].exchange.cache_bytes",
            ),
        ] {
            let e = exchange(json).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
        assert!(serde_json::from_str::<RawExchange>(r#"{"audence":"a"}"#).is_err());
    }

    #[test]
    fn answers_map_to_a_token_a_refusal_or_a_failure() {
        assert_eq!(
            interpret(&reply(200, GOOD), 300),
            Outcome::Issued {
                token: Rc::from("x1"),
                lifetime: 55
            }
        );
        for (status, body, want) in [
            (
                400,
                r#"{"error":"invalid_grant"}"#,
                Some(Refusal::SubjectToken("invalid_grant")),
            ),
            (
                400,
                r#"{"error":"invalid_request","error_description":"x"}"#,
                Some(Refusal::SubjectToken("invalid_request")),
            ),
            (
                400,
                r#"{"error":"invalid_target"}"#,
                Some(Refusal::Target("invalid_target")),
            ),
            (
                400,
                r#"{"error":"invalid_scope"}"#,
                Some(Refusal::Target("invalid_scope")),
            ),
            (400, r#"{"error":"unauthorized_client"}"#, None),
            (401, r#"{"error":"invalid_client"}"#, None),
            (400, r#"{"error":"unsupported_grant_type"}"#, None),
            (400, "<html>", None),
            (500, r#"{"error":"server_error"}"#, None),
            (503, r#"{"error":"invalid_grant"}"#, None),
            (200, "<html>", None),
            (200, r#"{"access_token":"x","token_type":"Bearer"}"#, None),
            (
                200,
                r#"{"access_token":"x","token_type":"Bearer","issued_token_type":"urn:ietf:params:oauth:token-type:id_token"}"#,
                None,
            ),
            (
                200,
                r#"{"access_token":"x","token_type":"DPoP","issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#,
                None,
            ),
            (
                200,
                r#"{"access_token":"x","token_type":"N_A","issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#,
                None,
            ),
            (
                200,
                r#"{"access_token":"a b","token_type":"Bearer","issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#,
                None,
            ),
            (
                200,
                r#"{"access_token":"x","token_type":"Bearer","expires_in":5,"issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#,
                None,
            ),
        ] {
            let got = interpret(&reply(status, body), 300);
            match want {
                Some(refusal) => assert_eq!(got, Outcome::Refused(refusal), "{status} {body}"),
                None => assert!(
                    matches!(got, Outcome::Failed(_)),
                    "{status} {body}: {got:?}"
                ),
            }
        }
        // A failure never quotes the token.
        let Outcome::Failed(why) = interpret(
            &reply(
                200,
                r#"{"access_token":"secret-xyz","token_type":"DPoP","issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#,
            ),
            300,
        ) else {
            panic!()
        };
        assert!(!why.contains("secret-xyz"), "{why}");
    }

    #[test]
    fn one_exchange_per_caller_token_in_flight_then_cached_until_its_margin() {
        let x = exchange(r#"{"audience":"b"}"#).unwrap();
        let mut s = Exchanges::new(&[Some(&x)]);
        let key = Exchanges::key(0, "caller");
        assert_ne!(key, Exchanges::key(1, "caller"), "per rule");
        assert_eq!(s.lookup(0, &key, NOW), Lookup::Unknown);
        s.start(0, key, Some("10.0.0.1"), NOW + 4, NOW).unwrap();
        assert!(s.in_flight(&key, NOW));
        assert_eq!(s.lookup(0, &key, NOW), Lookup::Wait { until: NOW + 4 });
        let issued = interpret(&reply(200, GOOD), 300);
        s.settle(0, key, &issued, NOW);
        assert!(!s.in_flight(&key, NOW));
        assert_eq!(s.lookup(0, &key, NOW + 54), Lookup::Ready(Rc::from("x1")));
        assert_eq!(s.lookup(0, &key, NOW + 55), Lookup::Unknown);
        // A dropped answer: after the deadline the next request asks again.
        s.start(0, key, None, NOW + 60, NOW + 56).unwrap();
        assert_eq!(s.lookup(0, &key, NOW + 60), Lookup::Unknown);
    }

    #[test]
    fn refusals_and_failures_are_remembered_briefly() {
        let x = exchange(r#"{"audience":"b"}"#).unwrap();
        let mut s = Exchanges::new(&[Some(&x)]);
        let (a, b) = (Exchanges::key(0, "a"), Exchanges::key(0, "b"));
        s.start(0, a, None, NOW + 4, NOW).unwrap();
        s.settle(
            0,
            a,
            &Outcome::Refused(Refusal::SubjectToken("invalid_grant")),
            NOW,
        );
        s.start(0, b, None, NOW + 4, NOW).unwrap();
        s.settle(0, b, &Outcome::Failed("down".into()), NOW);
        assert_eq!(
            s.lookup(0, &a, NOW + REFUSAL_SECONDS - 1),
            Lookup::Refused(Refusal::SubjectToken("invalid_grant"))
        );
        assert_eq!(s.lookup(0, &a, NOW + REFUSAL_SECONDS), Lookup::Unknown);
        assert_eq!(s.lookup(0, &b, NOW), Lookup::Failed(Rc::from("down")));
        assert_eq!(s.lookup(0, &b, NOW + FAILURE_SECONDS), Lookup::Unknown);
    }

    #[test]
    fn the_budget_and_the_in_flight_cap_bound_what_one_address_causes() {
        let x = exchange(r#"{"audience":"b","budget":{"per_second":4,"burst":8}}"#).unwrap();
        let mut s = Exchanges::new(&[Some(&x)]);
        // One address gets a quarter of the burst.
        let mut started = 0;
        for i in 0..10u8 {
            match s.start(0, [i; 32], Some("10.0.0.1"), NOW + 4, NOW) {
                Ok(()) => started += 1,
                Err(bound) => assert_eq!(bound, Bound::ExchangeBudget),
            }
        }
        assert_eq!(started, 2);
        assert!(s.start(0, [99; 32], Some("10.0.0.2"), NOW + 4, NOW).is_ok());
        // The cap on exchanges in flight, three quarters for one address.
        let big = exchange(r#"{"audience":"b","budget":{"per_second":10000}}"#).unwrap();
        let mut s = Exchanges::new(&[Some(&big)]);
        let mut refused = None;
        for i in 0..MAX_EXCHANGES_IN_FLIGHT {
            let key = digest(&[&i.to_be_bytes()]);
            if let Err(bound) = s.start(0, key, Some("10.0.0.1"), NOW + 4, NOW) {
                refused = Some((i, bound));
                break;
            }
        }
        assert_eq!(
            refused,
            Some((MAX_EXCHANGES_IN_FLIGHT / 4 * 3, Bound::InFlight))
        );
        assert!(s.start(0, [1; 32], Some("10.0.0.2"), NOW + 4, NOW).is_ok());
        // Exchanges whose deadline passed free their place.
        assert!(s
            .start(0, [2; 32], Some("10.0.0.1"), NOW + 9, NOW + 5)
            .is_ok());
    }
}
