//! Every metric the filter exports, with its name and labels, defined once.
//!
//! A metric is a typed id ([`Counter`], [`Gauge`], [`Histogram`]) whose
//! label values come from fixed lists (reason codes, callout kinds and
//! outcomes, cache names) or from the configuration (issuers): never from a
//! path, a header or a token, so a client cannot make the set grow. The host
//! defines the whole [`Catalogue`] at configure time.
//!
//! proxy-wasm metrics have a name and no labels, so each label value is part
//! of the name, as `<metric>.<label>.<value>` segments
//! (`oauth_pep.denied.reason.token_expired`); Envoy's `stats_tags` turn them
//! back into Prometheus labels (see README, "Metrics").

use crate::cache::CacheStats;
use crate::callout::{CalloutError, CalloutReply};
use crate::config::Config;
use crate::keys::FetchStep;
use crate::response::{Denial, Reason};
use crate::wait::Bound;

/// Counters, gauges and histograms, named by typed ids whose names and label
/// values all come from this module: nothing a client sends can make
/// a new metric.
pub trait Metrics {
    fn increment(&self, counter: Counter, by: u64);
    fn set(&self, gauge: Gauge, value: u64);
    fn record(&self, histogram: Histogram, value: u64);
}

/// The first segment of every metric name.
pub const PREFIX: &str = "oauth_pep";

/// Every code [`Denial::code`] gives: the values of the `reason` label. The
/// one list to update when codes change; a unit test checks it.
/// The longest issuer label; longer ones are cut.
const MAX_ISSUER_LABEL: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CalloutKind {
    Discovery,
    Jwks,
    Pdp,
    Introspection,
    /// A token request of one of the gateway's clients.
    Token,
    /// A UMA permission (ticket) request.
    Permission,
    /// A token exchange (RFC 8693) for upstream OAuth.
    Exchange,
    /// A call to the fleet cache's etcd.
    FleetCache,
}

impl CalloutKind {
    pub const ALL: [CalloutKind; 8] = [
        CalloutKind::Discovery,
        CalloutKind::Jwks,
        CalloutKind::Pdp,
        CalloutKind::Introspection,
        CalloutKind::Token,
        CalloutKind::Permission,
        CalloutKind::Exchange,
        CalloutKind::FleetCache,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CalloutKind::Discovery => "discovery",
            CalloutKind::Jwks => "jwks",
            CalloutKind::Pdp => "pdp",
            CalloutKind::Introspection => "introspection",
            CalloutKind::Token => "token",
            CalloutKind::Permission => "uma_permission",
            CalloutKind::Exchange => "token_exchange",
            CalloutKind::FleetCache => "fleet_cache",
        }
    }
}

impl From<FetchStep> for CalloutKind {
    fn from(step: FetchStep) -> Self {
        match step {
            FetchStep::Discovery => CalloutKind::Discovery,
            FetchStep::Jwks => CalloutKind::Jwks,
        }
    }
}

/// How a callout ended, as far as HTTP goes: a 200 with a useless body is
/// still `Ok` here (the key refresh or the PDP decision then fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CalloutOutcome {
    /// A 2xx answer.
    Ok,
    /// Another status, or a body over the size limit.
    Error,
    /// No HTTP answer: connection refused or reset, or the timeout (the host
    /// does not say which).
    NoResponse,
    /// The host refused to send it (e.g. an unknown cluster).
    NotDispatched,
}

impl CalloutOutcome {
    pub const ALL: [CalloutOutcome; 4] = [
        CalloutOutcome::Ok,
        CalloutOutcome::Error,
        CalloutOutcome::NoResponse,
        CalloutOutcome::NotDispatched,
    ];

    /// Envoy's own local reply for a cluster no server answered (connect
    /// failure, reset, timeout) is `no_response` too: no server said 503.
    pub fn of(reply: &CalloutReply) -> Self {
        match reply.success_body() {
            Ok(_) => CalloutOutcome::Ok,
            Err(CalloutError::NoResponse | CalloutError::NoUpstream(_)) => {
                CalloutOutcome::NoResponse
            }
            Err(_) => CalloutOutcome::Error,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            CalloutOutcome::Ok => "ok",
            CalloutOutcome::Error => "error",
            CalloutOutcome::NoResponse => "no_response",
            CalloutOutcome::NotDispatched => "not_dispatched",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheName {
    Tokens,
    PdpDecisions,
    RejectedTokens,
    /// Introspection answers in shared data, read by every worker (a miss
    /// is a lookup that found nothing live for the token; an eviction, an
    /// entry that replaced another token's live one).
    IntrospectionShared,
}

impl CacheName {
    pub const ALL: [CacheName; 4] = [
        CacheName::Tokens,
        CacheName::PdpDecisions,
        CacheName::RejectedTokens,
        CacheName::IntrospectionShared,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CacheName::Tokens => "tokens",
            CacheName::PdpDecisions => "pdp_decisions",
            CacheName::RejectedTokens => "rejected_tokens",
            CacheName::IntrospectionShared => "introspection_shared",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheEvent {
    Hit,
    Miss,
    /// A live entry dropped to make room.
    Eviction,
    /// An entry stored where nothing live was (the shared introspection
    /// table only: a fixed table, whose occupancy this shows).
    Fill,
}

impl CacheEvent {
    pub const ALL: [CacheEvent; 4] = [
        CacheEvent::Hit,
        CacheEvent::Miss,
        CacheEvent::Eviction,
        CacheEvent::Fill,
    ];

    fn metric(self) -> &'static str {
        match self {
            CacheEvent::Hit => "cache_hits",
            CacheEvent::Miss => "cache_misses",
            CacheEvent::Eviction => "cache_evictions",
            CacheEvent::Fill => "cache_fills",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    Allowed,
    /// Denials by their stable reason (one counter per [`Reason`]).
    Denied(Reason),
    Callout(CalloutKind, CalloutOutcome),
    Cache(CacheName, CacheEvent),
    /// A key fetch (first load, refresh, unknown-kid refetch) that ended with
    /// usable keys (`ok`) or without.
    KeyRefresh {
        issuer: usize,
        ok: bool,
    },
    /// An introspection that ended: what the endpoint's answer meant.
    Introspection {
        issuer: usize,
        result: IntrospectionResult,
    },
    /// A token request of the gateway's client `client` that ended with a
    /// usable token (`ok`) or without.
    ClientToken {
        client: usize,
        ok: bool,
    },
    /// A token exchange (RFC 8693) that ended: a token, a refusal for the
    /// caller, or no usable answer.
    Exchange(ExchangeResult),
    /// A request refused by a bound on waiting or on callouts.
    Overload(Bound),
    /// A lookup of a token's answer in the fleet cache, by what it found.
    FleetRead(FleetRead),
    /// A fleet claim (single flight across instances), by how it ended.
    FleetClaim(FleetClaim),
    /// An answer written to the fleet cache, `ok` or not.
    FleetWrite {
        ok: bool,
    },
    /// A security event pushed to the revocation receiver, by outcome.
    SecurityEvent(SetResult),
    /// A poll of the fleet's deny entries in etcd that read them all (`ok`)
    /// or failed.
    RevocationPoll {
        ok: bool,
    },
    /// A deny entry the poll read: taken, or rejected (bad MAC, malformed).
    RevocationEntry {
        taken: bool,
    },
}

/// What one pushed security event came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetResult {
    /// Checked, its revocations stored: 202.
    Accepted,
    /// Refused for the transmitter to fix (400, 401, 405, 413).
    Refused,
    /// Not stored here, for the transmitter to retry (503).
    Unavailable,
}

impl SetResult {
    pub const ALL: [SetResult; 3] = [
        SetResult::Accepted,
        SetResult::Refused,
        SetResult::Unavailable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SetResult::Accepted => "accepted",
            SetResult::Refused => "refused",
            SetResult::Unavailable => "unavailable",
        }
    }
}

/// What one fleet-cache lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FleetRead {
    /// A valid entry: no introspection.
    Hit,
    /// No entry: this instance (or the claim's winner) asks.
    Miss,
    /// An entry that failed a check (MAC, issuer, times, signature, the
    /// reader's own checks): ignored, the authorization server asked.
    Rejected,
    /// etcd failed (down, slow, 401/403/429, garbage): asked as without it.
    Error,
    /// etcd not asked: the breaker is open or the etcd budget is spent.
    Bypassed,
}

impl FleetRead {
    pub const ALL: [FleetRead; 5] = [
        FleetRead::Hit,
        FleetRead::Miss,
        FleetRead::Rejected,
        FleetRead::Error,
        FleetRead::Bypassed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FleetRead::Hit => "hit",
            FleetRead::Miss => "miss",
            FleetRead::Rejected => "rejected",
            FleetRead::Error => "error",
            FleetRead::Bypassed => "bypassed",
        }
    }
}

/// How one fleet claim ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FleetClaim {
    /// This instance asks the authorization server for the fleet.
    Won,
    /// Another instance asks: this one polls for its answer.
    Lost,
    /// The winner's answer did not come within `claim_wait_ms`: asked here.
    Timeout,
}

impl FleetClaim {
    pub const ALL: [FleetClaim; 3] = [FleetClaim::Won, FleetClaim::Lost, FleetClaim::Timeout];

    pub fn label(self) -> &'static str {
        match self {
            FleetClaim::Won => "won",
            FleetClaim::Lost => "lost",
            FleetClaim::Timeout => "timeout",
        }
    }
}

/// What one token exchange came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeResult {
    Issued,
    Refused,
    Failed,
}

impl ExchangeResult {
    pub const ALL: [ExchangeResult; 3] = [
        ExchangeResult::Issued,
        ExchangeResult::Refused,
        ExchangeResult::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ExchangeResult::Issued => "issued",
            ExchangeResult::Refused => "refused",
            ExchangeResult::Failed => "failed",
        }
    }
}

/// What one introspection callout came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntrospectionResult {
    Active,
    Inactive,
    /// No usable answer (a 503, or a stale answer served instead).
    Failed,
    /// The endpoint failed and a cached answer past its TTL was served.
    StaleServed,
}

impl IntrospectionResult {
    pub const ALL: [IntrospectionResult; 4] = [
        IntrospectionResult::Active,
        IntrospectionResult::Inactive,
        IntrospectionResult::Failed,
        IntrospectionResult::StaleServed,
    ];
}

impl Counter {
    pub fn denied(denial: &Denial) -> Counter {
        Counter::Denied(denial.reason())
    }

    /// The counters one denial increments: its reason, and for an overload
    /// the bound that refused it.
    pub fn of_denial(denial: &Denial) -> Vec<Counter> {
        let mut counters = vec![Counter::denied(denial)];
        if let Denial::Overloaded { bound } = denial {
            counters.push(Counter::Overload(*bound));
        }
        counters
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gauge {
    /// The verification keys the issuer's last good key set holds.
    KeysLoaded { issuer: usize },
    /// Live entries in this worker's copy of the deny set (revocations).
    DenyEntries,
    /// 1 while the fleet cache's breaker skips etcd, else 0.
    FleetBreakerOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Histogram {
    /// From dispatch to the answer (or its absence), in milliseconds.
    CalloutLatencyMs(CalloutKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

/// The names of every metric of one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalogue {
    /// The `issuer` label of each configured issuer, by index.
    issuers: Vec<String>,
    /// The configured client names (already metric-safe), by index.
    clients: Vec<String>,
    /// Whether the fleet cache's metrics exist.
    fleet: bool,
}

impl Catalogue {
    pub fn new(config: &Config) -> Self {
        let mut issuers: Vec<String> = Vec::with_capacity(config.issuers.len());
        for (index, issuer) in config.issuers.iter().enumerate() {
            let mut label = issuer_label(&issuer.issuer);
            while issuers.contains(&label) {
                label = format!("{label}_{index}");
            }
            issuers.push(label);
        }
        Catalogue {
            issuers,
            clients: config.clients.iter().map(|c| c.name.clone()).collect(),
            fleet: config.fleet_cache.is_some(),
        }
    }

    /// Every metric, with its name: what the host defines at configure time.
    pub fn all(&self) -> Vec<(Metric, String)> {
        let mut all = vec![Metric::Counter(Counter::Allowed)];
        for reason in Reason::ALL {
            all.push(Metric::Counter(Counter::Denied(reason)));
        }
        for kind in CalloutKind::ALL {
            for outcome in CalloutOutcome::ALL {
                all.push(Metric::Counter(Counter::Callout(kind, outcome)));
            }
            all.push(Metric::Histogram(Histogram::CalloutLatencyMs(kind)));
        }
        for bound in Bound::ALL {
            all.push(Metric::Counter(Counter::Overload(bound)));
        }
        for result in ExchangeResult::ALL {
            all.push(Metric::Counter(Counter::Exchange(result)));
        }
        for result in SetResult::ALL {
            all.push(Metric::Counter(Counter::SecurityEvent(result)));
        }
        all.push(Metric::Gauge(Gauge::DenyEntries));
        for ok in [true, false] {
            all.push(Metric::Counter(Counter::RevocationPoll { ok }));
            all.push(Metric::Counter(Counter::RevocationEntry { taken: ok }));
        }
        for cache in CacheName::ALL {
            for event in CacheEvent::ALL {
                // The per-worker caches make room as they fill: no fills.
                if event != CacheEvent::Fill || cache == CacheName::IntrospectionShared {
                    all.push(Metric::Counter(Counter::Cache(cache, event)));
                }
            }
        }
        for issuer in 0..self.issuers.len() {
            for ok in [true, false] {
                all.push(Metric::Counter(Counter::KeyRefresh { issuer, ok }));
            }
            all.push(Metric::Gauge(Gauge::KeysLoaded { issuer }));
            for result in IntrospectionResult::ALL {
                all.push(Metric::Counter(Counter::Introspection { issuer, result }));
            }
        }
        for client in 0..self.clients.len() {
            for ok in [true, false] {
                all.push(Metric::Counter(Counter::ClientToken { client, ok }));
            }
        }
        if self.fleet {
            all.extend(FleetRead::ALL.map(|r| Metric::Counter(Counter::FleetRead(r))));
            all.extend(FleetClaim::ALL.map(|c| Metric::Counter(Counter::FleetClaim(c))));
            for ok in [true, false] {
                all.push(Metric::Counter(Counter::FleetWrite { ok }));
            }
            all.push(Metric::Gauge(Gauge::FleetBreakerOpen));
        }
        all.into_iter()
            .filter_map(|metric| Some((metric, self.name(metric)?)))
            .collect()
    }

    /// The metric's name; `None` for an issuer that is not configured.
    pub fn name(&self, metric: Metric) -> Option<String> {
        let name = match metric {
            Metric::Counter(Counter::Allowed) => format!("{PREFIX}.allowed"),
            Metric::Counter(Counter::Denied(reason)) => {
                format!("{PREFIX}.denied.reason.{}", reason.code())
            }
            Metric::Counter(Counter::Callout(kind, outcome)) => format!(
                "{PREFIX}.callouts.kind.{}.outcome.{}",
                kind.label(),
                outcome.label()
            ),
            Metric::Histogram(Histogram::CalloutLatencyMs(kind)) => {
                format!("{PREFIX}.callout_ms.kind.{}", kind.label())
            }
            Metric::Counter(Counter::Cache(cache, event)) => {
                format!("{PREFIX}.{}.cache.{}", event.metric(), cache.label())
            }
            Metric::Counter(Counter::KeyRefresh { issuer, ok }) => format!(
                "{PREFIX}.key_refreshes.issuer.{}.outcome.{}",
                self.issuers.get(issuer)?,
                if ok { "ok" } else { "failed" }
            ),
            Metric::Counter(Counter::Introspection { issuer, result }) => {
                let issuer = self.issuers.get(issuer)?;
                match result {
                    IntrospectionResult::StaleServed => {
                        format!("{PREFIX}.stale_served.issuer.{issuer}")
                    }
                    result => format!(
                        "{PREFIX}.introspections.issuer.{issuer}.result.{}",
                        match result {
                            IntrospectionResult::Active => "active",
                            IntrospectionResult::Inactive => "inactive",
                            _ => "failed",
                        }
                    ),
                }
            }
            Metric::Counter(Counter::ClientToken { client, ok }) => format!(
                "{PREFIX}.client_tokens.client.{}.outcome.{}",
                self.clients.get(client)?,
                if ok { "ok" } else { "failed" }
            ),
            Metric::Counter(Counter::Exchange(result)) => {
                format!("{PREFIX}.exchanges.result.{}", result.label())
            }
            Metric::Counter(Counter::Overload(bound)) => {
                format!("{PREFIX}.overloaded.bound.{}", bound.label())
            }
            Metric::Counter(Counter::SecurityEvent(result)) => {
                format!("{PREFIX}.security_events.result.{}", result.label())
            }
            Metric::Gauge(Gauge::DenyEntries) => format!("{PREFIX}.deny_entries"),
            Metric::Counter(Counter::RevocationPoll { ok }) => format!(
                "{PREFIX}.revocation_polls.outcome.{}",
                if ok { "ok" } else { "failed" }
            ),
            Metric::Counter(Counter::RevocationEntry { taken }) => format!(
                "{PREFIX}.revocation_entries.result.{}",
                if taken { "taken" } else { "rejected" }
            ),
            Metric::Counter(Counter::FleetRead(result)) => {
                format!("{PREFIX}.fleet_cache.reads.result.{}", result.label())
            }
            Metric::Counter(Counter::FleetClaim(result)) => {
                format!("{PREFIX}.fleet_cache.claims.result.{}", result.label())
            }
            Metric::Counter(Counter::FleetWrite { ok }) => format!(
                "{PREFIX}.fleet_cache.writes.outcome.{}",
                if ok { "ok" } else { "failed" }
            ),
            Metric::Gauge(Gauge::FleetBreakerOpen) => format!("{PREFIX}.fleet_cache.breaker_open"),
            Metric::Gauge(Gauge::KeysLoaded { issuer }) => {
                format!("{PREFIX}.keys_loaded.issuer.{}", self.issuers.get(issuer)?)
            }
        };
        Some(name)
    }
}

/// The issuer URL without its scheme, every run of characters other than
/// ASCII letters, digits and `-` made one `_`, at most [`MAX_ISSUER_LABEL`]
/// bytes: `https://login.example.com/realms/a` is
/// `login_example_com_realms_a`. No `.`, so it stays one name segment.
fn issuer_label(issuer: &str) -> String {
    let rest = issuer.split_once("://").map_or(issuer, |(_, rest)| rest);
    let mut label = String::new();
    for c in rest.chars() {
        if label.len() >= MAX_ISSUER_LABEL {
            break;
        }
        if c.is_ascii_alphanumeric() || c == '-' {
            label.push(c);
        } else if !label.is_empty() && !label.ends_with('_') {
            label.push('_');
        }
    }
    while label.ends_with('_') {
        label.pop();
    }
    if label.is_empty() {
        label.push_str("issuer");
    }
    label
}

/// The caches' cumulative counts, as they are at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheTotals {
    pub tokens: CacheStats,
    pub decisions: CacheStats,
    pub rejected: CacheStats,
    pub shared: CacheStats,
}

/// Turns the caches' cumulative counts into counter increments.
#[derive(Debug, Default)]
pub struct CacheCounts {
    /// The totals at the last report.
    seen: CacheTotals,
}

impl CacheCounts {
    /// Counts what the caches did since the last call.
    pub fn report(&mut self, now: CacheTotals, metrics: &dyn Metrics) {
        let seen = &mut self.seen;
        report_cache(CacheName::Tokens, &mut seen.tokens, now.tokens, metrics);
        report_cache(
            CacheName::PdpDecisions,
            &mut seen.decisions,
            now.decisions,
            metrics,
        );
        report_cache(
            CacheName::RejectedTokens,
            &mut seen.rejected,
            now.rejected,
            metrics,
        );
        report_cache(
            CacheName::IntrospectionShared,
            &mut seen.shared,
            now.shared,
            metrics,
        );
    }
}

fn report_cache(cache: CacheName, seen: &mut CacheStats, now: CacheStats, metrics: &dyn Metrics) {
    for (event, before, after) in [
        (CacheEvent::Hit, seen.hits, now.hits),
        (CacheEvent::Miss, seen.misses, now.misses),
        (CacheEvent::Eviction, seen.evictions, now.evictions),
        (CacheEvent::Fill, seen.fills, now.fills),
    ] {
        let delta = after.saturating_sub(before);
        if delta > 0 {
            metrics.increment(Counter::Cache(cache, event), delta);
        }
    }
    *seen = now;
}

/// An in-memory host for tests (of the core and of the glue).
pub mod testing {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;

    /// Remembers every metric update, for assertions.
    #[derive(Debug, Default)]
    pub struct FakeMetrics {
        counters: RefCell<HashMap<Counter, u64>>,
        gauges: RefCell<HashMap<Gauge, u64>>,
        histograms: RefCell<HashMap<Histogram, Vec<u64>>>,
    }

    impl FakeMetrics {
        pub fn counter(&self, counter: Counter) -> u64 {
            self.counters.borrow().get(&counter).copied().unwrap_or(0)
        }

        pub fn gauge(&self, gauge: Gauge) -> Option<u64> {
            self.gauges.borrow().get(&gauge).copied()
        }

        pub fn samples(&self, histogram: Histogram) -> Vec<u64> {
            self.histograms
                .borrow()
                .get(&histogram)
                .cloned()
                .unwrap_or_default()
        }

        /// Every counter that is not zero.
        pub fn counters(&self) -> HashMap<Counter, u64> {
            self.counters.borrow().clone()
        }
    }

    impl Metrics for FakeMetrics {
        fn increment(&self, counter: Counter, by: u64) {
            let mut counters = self.counters.borrow_mut();
            let value = counters.entry(counter).or_default();
            *value = value.saturating_add(by);
        }

        fn set(&self, gauge: Gauge, value: u64) {
            self.gauges.borrow_mut().insert(gauge, value);
        }

        fn record(&self, histogram: Histogram, value: u64) {
            self.histograms
                .borrow_mut()
                .entry(histogram)
                .or_default()
                .push(value);
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use std::collections::HashSet;

    use super::testing::FakeMetrics;
    use super::*;

    fn config(issuers: &[&str]) -> Config {
        let list: Vec<String> = issuers
            .iter()
            .map(|i| format!(r#"{{"issuer":"{i}","audiences":["api"],"shared_secret":"0123456789abcdef0123456789abcdef"}}"#))
            .collect();
        Config::from_json(
            format!(r#"{{"issuers":[{}]}}"#, list.join(",")).as_bytes(),
            &|_| None,
        )
        .unwrap()
    }

    #[test]
    fn every_reason_has_its_counter() {
        let catalogue = Catalogue::new(&config(&["https://as.test"]));
        let names: Vec<String> = catalogue.all().into_iter().map(|(_, n)| n).collect();
        for reason in Reason::ALL {
            let name = format!("oauth_pep.denied.reason.{}", reason.code());
            assert!(names.contains(&name), "{name}");
        }
        assert_eq!(
            Counter::denied(&Denial::NoToken),
            Counter::Denied(Reason::TokenMissing)
        );
    }

    #[test]
    fn names_are_segments_of_fixed_words_and_config_labels() {
        let catalogue = Catalogue::new(&config(&["https://login.example.com/realms/a"]));
        let names: Vec<String> = catalogue.all().into_iter().map(|(_, n)| n).collect();
        for expected in [
            "oauth_pep.allowed",
            "oauth_pep.denied.reason.insufficient_scope",
            "oauth_pep.denied.reason.keys_unavailable",
            "oauth_pep.callouts.kind.jwks.outcome.no_response",
            "oauth_pep.callouts.kind.pdp.outcome.not_dispatched",
            "oauth_pep.callout_ms.kind.discovery",
            "oauth_pep.cache_hits.cache.tokens",
            "oauth_pep.cache_evictions.cache.pdp_decisions",
            "oauth_pep.cache_fills.cache.introspection_shared",
            "oauth_pep.key_refreshes.issuer.login_example_com_realms_a.outcome.ok",
            "oauth_pep.key_refreshes.issuer.login_example_com_realms_a.outcome.failed",
            "oauth_pep.keys_loaded.issuer.login_example_com_realms_a",
            "oauth_pep.overloaded.bound.waiters",
            "oauth_pep.overloaded.bound.introspection_budget",
            "oauth_pep.overloaded.bound.exchange_budget",
            "oauth_pep.exchanges.result.refused",
            "oauth_pep.callouts.kind.token_exchange.outcome.no_response",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        // 1 allowed + one per reason + 8 kinds x (4 outcomes + 1 histogram)
        // + one per overload bound + 3 exchange results + 3 security event
        // results + the deny set gauge + 2 poll outcomes + 2 entry results
        // + 4 caches x 3 events + the shared table's fills + 1 issuer x (2
        // refresh outcomes + 1 gauge + 4 introspection results); no fleet
        // cache, none of its metrics.
        assert_eq!(
            names.len(),
            1 + Reason::ALL.len() + 40 + Bound::ALL.len() + 3 + 3 + 1 + 4 + 13 + 7
        );
        assert_eq!(names.iter().collect::<HashSet<_>>().len(), names.len());
        for name in &names {
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "{name}"
            );
        }
    }

    #[test]
    fn the_fleet_cache_metrics_exist_with_a_fleet_cache() {
        let json = r#"{"issuers":[{"issuer":"https://as.test","audiences":["api"],"shared_secret":"0123456789abcdef0123456789abcdef"}],
            "fleet_cache":{"endpoint":"http://127.0.0.1:2379","upstream":"etcd","hmac_key_env":"K"}}"#;
        let env = |_: &str| Some("0123456789abcdef0123456789abcdef".to_string());
        let c = Config::from_json(json.as_bytes(), &env).unwrap();
        let names: Vec<String> = Catalogue::new(&c)
            .all()
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        for expected in [
            "oauth_pep.fleet_cache.reads.result.hit",
            "oauth_pep.fleet_cache.reads.result.bypassed",
            "oauth_pep.fleet_cache.claims.result.timeout",
            "oauth_pep.fleet_cache.writes.outcome.failed",
            "oauth_pep.fleet_cache.breaker_open",
            "oauth_pep.callout_ms.kind.fleet_cache",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected}");
        }
    }

    #[test]
    fn issuer_labels_are_short_dotless_and_distinct() {
        assert_eq!(issuer_label("http://127.0.0.1:8080"), "127_0_0_1_8080");
        assert_eq!(issuer_label("https://as.example/"), "as_example");
        assert_eq!(issuer_label("urn:x"), "urn_x");
        assert_eq!(issuer_label("https://"), "issuer");
        assert_eq!(
            issuer_label(&format!("https://{}", "a".repeat(500))).len(),
            48
        );

        let catalogue = Catalogue::new(&config(&[
            "https://as.example",
            "http://as.example",
            "https://other",
        ]));
        assert_eq!(catalogue.issuers, ["as_example", "as_example_1", "other"]);
        assert_eq!(
            catalogue.name(Metric::Gauge(Gauge::KeysLoaded { issuer: 1 })),
            Some("oauth_pep.keys_loaded.issuer.as_example_1".into())
        );
        assert_eq!(
            catalogue.name(Metric::Gauge(Gauge::KeysLoaded { issuer: 3 })),
            None
        );
    }

    #[test]
    fn callout_outcomes_follow_the_reply() {
        let reply = |status, oversized| CalloutReply {
            status,
            body: vec![],
            oversized,
        };
        assert_eq!(
            CalloutOutcome::of(&reply(Some(200), None)),
            CalloutOutcome::Ok
        );
        assert_eq!(
            CalloutOutcome::of(&reply(Some(204), None)),
            CalloutOutcome::Ok
        );
        assert_eq!(
            CalloutOutcome::of(&reply(Some(200), Some(1 << 21))),
            CalloutOutcome::Error
        );
        assert_eq!(
            CalloutOutcome::of(&reply(Some(503), None)),
            CalloutOutcome::Error
        );
        assert_eq!(
            CalloutOutcome::of(&reply(None, None)),
            CalloutOutcome::NoResponse
        );
    }

    #[test]
    fn fake_metrics_remember_what_was_counted() {
        let metrics = FakeMetrics::default();
        let counter = Counter::Callout(CalloutKind::Jwks, CalloutOutcome::Ok);
        metrics.increment(counter, 2);
        metrics.increment(counter, 1);
        metrics.set(Gauge::KeysLoaded { issuer: 0 }, 3);
        metrics.record(Histogram::CalloutLatencyMs(CalloutKind::Jwks), 12);
        assert_eq!(metrics.counter(counter), 3);
        assert_eq!(metrics.counter(Counter::Allowed), 0);
        assert_eq!(metrics.gauge(Gauge::KeysLoaded { issuer: 0 }), Some(3));
        assert_eq!(
            metrics.samples(Histogram::CalloutLatencyMs(CalloutKind::Jwks)),
            vec![12]
        );
    }
}
