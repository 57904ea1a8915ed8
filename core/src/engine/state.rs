//! What one worker (one VM) keeps between requests: its keys, its caches,
//! the introspections it has in flight, its callout budgets and the
//! gateway's own tokens.

use std::collections::HashMap;
use std::rc::Rc;

use crate::budget::Spender;
use crate::cache::{BoundedCache, CacheStats, Digest};
use crate::callout::Callout;
use crate::config::Config;
use crate::exchange::Exchanges;
use crate::flight::Flight;
use crate::grant::Grant;
use crate::introspection;
use crate::keys::{KeyManager, Sharing};
use crate::metrics::{CacheTotals, Gauge, Metrics};
use crate::response::Denial;
use crate::services::{NoRandom, NoSharing, Random, SharedStore};
use crate::token_client::ClientTokens;
use crate::verify::{PureRustVerifier, SignatureVerifier};

/// Mutable state shared by all requests of one VM (one Envoy worker).
pub struct State {
    pub keys: KeyManager,
    /// Grants of verified tokens, by the SHA-256 of the whole token.
    pub tokens: BoundedCache<Rc<Grant>>,
    /// PDP answers, by the SHA-256 of (subject, client, method, path, scopes).
    pub decisions: BoundedCache<bool>,
    /// Denials of tokens whose signature failed, by the SHA-256 of the token.
    pub rejected: BoundedCache<Denial>,
    /// Checks signatures; replaceable so tests can inject their own.
    pub verifier: Box<dyn SignatureVerifier>,
    /// Shared data, for introspection answers every worker reads.
    pub(super) shared: Rc<dyn SharedStore>,
    /// This worker's id in shared in-flight markers (random per VM).
    pub(super) worker: u64,
    /// Introspections this worker has in flight, by token digest, with the
    /// address of the client whose token it is.
    pub(super) introspecting: HashMap<Digest, (Flight, Option<Rc<str>>)>,
    /// Per issuer (index for index): introspections left this second.
    pub(super) introspection_budgets: Vec<Spender>,
    /// UMA permission requests left this second.
    pub(super) permission_budget: Spender,
    /// Reads of the shared introspection cache.
    pub shared_stats: CacheStats,
    /// For the jti of client assertions (`private_key_jwt`).
    pub(super) random: Rc<dyn Random>,
    /// The gateway's own tokens (UMA PAT, upstream OAuth).
    pub clients: ClientTokens,
    /// Tokens exchanged for callers' (upstream OAuth `exchange`), the
    /// exchanges in flight and their budgets.
    pub(super) exchanges: Exchanges,
    /// Where DPoP proofs' `jti`s are remembered: shared data when shared,
    /// this worker's memory otherwise.
    pub(super) replay: Rc<dyn SharedStore>,
    /// This worker's copy of the deny set (revocations); the shared one is
    /// in `replay`'s store.
    pub(super) deny: crate::revocation::deny::DenySet,
    /// The revocation fan-out through etcd: its token, poll and budget.
    pub(super) fanout: super::fanout::FanoutState,
    /// The fleet cache's etcd token, leases, budget, queued writes and polls.
    pub(super) fleet: super::fleet::FleetState,
}

impl State {
    pub fn new(config: &Config) -> Self {
        let mut clients = ClientTokens::new(&config.clients);
        // A client whose own token nothing sends (no UMA PAT, no rule that
        // sends it or sends it as an exchange's actor) is not fetched ahead.
        for index in 0..config.clients.len() {
            let sent = config.uma.as_ref().is_some_and(|u| u.client == index)
                || config
                    .upstream_oauth
                    .iter()
                    .any(|r| r.client == index && r.exchange.as_ref().is_none_or(|x| x.actor));
            if !sent {
                clients.fetch_on_demand(index);
            }
        }
        let (pdp_bytes, pdp_entries) = match &config.pdp {
            Some(pdp) if pdp.cache_seconds() > 0 => (pdp.cache_bytes(), usize::MAX),
            _ => (0, 0),
        };
        State {
            keys: KeyManager::new(&config.issuers),
            tokens: BoundedCache::new(config.token_cache.max_bytes, config.token_cache.max_entries),
            decisions: BoundedCache::new(pdp_bytes, pdp_entries),
            rejected: BoundedCache::new(config.rejected_cache_bytes, usize::MAX),
            verifier: Box::new(PureRustVerifier),
            shared: Rc::new(NoSharing),
            worker: 0,
            introspecting: HashMap::new(),
            introspection_budgets: config
                .issuers
                .iter()
                .map(|i| {
                    Spender::new(
                        i.introspection
                            .as_ref()
                            .map_or(introspection::DEFAULT_BUDGET, |x| x.budget),
                    )
                })
                .collect(),
            permission_budget: Spender::new(
                config
                    .uma
                    .as_ref()
                    .map_or(crate::uma::DEFAULT_PERMISSION_BUDGET, |u| {
                        u.permission_budget
                    }),
            ),
            shared_stats: CacheStats::default(),
            random: Rc::new(NoRandom),
            clients,
            exchanges: Exchanges::new(
                &config
                    .upstream_oauth
                    .iter()
                    .map(|r| r.exchange.as_ref())
                    .collect::<Vec<_>>(),
            ),
            replay: Rc::new(crate::dpop::LocalStore::default()),
            deny: crate::revocation::deny::DenySet::default(),
            fanout: super::fanout::FanoutState::new(),
            fleet: super::fleet::FleetState::new(config),
        }
    }

    /// The host's randomness, for what must be unique (the jti of client
    /// assertions). Without it, `private_key_jwt` introspections are 503s.
    pub fn use_random(&mut self, random: Rc<dyn Random>) {
        self.random = random;
    }

    /// Shares keys and introspection answers with the other workers through
    /// `store` (proxy-wasm shared data); `worker` is this one's id there.
    pub fn share_through(&mut self, store: Rc<dyn SharedStore>, worker: u64) {
        self.keys.share_through(Sharing {
            store: Rc::clone(&store),
            worker,
        });
        self.clients.share_through(Sharing {
            store: Rc::clone(&store),
            worker,
        });
        self.replay = Rc::clone(&store);
        self.shared = store;
        self.worker = worker;
    }

    /// Root only, on each tick: the gateway's token requests that are due,
    /// and the clients whose token another worker fetched.
    pub fn client_tokens_due(&mut self, now: u64) -> (Vec<(usize, Callout)>, Vec<usize>) {
        let keys = &self.keys;
        let discovered = |issuer: usize| keys.discovered(issuer).and_then(|e| e.token.clone());
        self.clients.due(&discovered, self.random.as_ref(), now)
    }

    /// The keys each issuer has now (configured ones, at start), as gauges.
    pub fn report_keys(&self, metrics: &dyn Metrics) {
        for issuer in 0..self.keys.len() {
            let keys = self.keys.keys(issuer).map_or(0, |keys| keys.len());
            metrics.set(Gauge::KeysLoaded { issuer }, keys as u64);
        }
    }

    /// The caches' cumulative counts, for the cache metrics.
    pub fn cache_totals(&self) -> CacheTotals {
        CacheTotals {
            tokens: self.tokens.stats(),
            decisions: self.decisions.stats(),
            rejected: self.rejected.stats(),
            shared: self.shared_stats,
        }
    }

    /// Whether this worker is asking about the token with this digest.
    pub fn is_introspecting(&self, key: &Digest) -> bool {
        self.introspecting.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::metrics::testing::FakeMetrics;
    use crate::metrics::{CacheCounts, CacheEvent, CacheName, Counter};

    #[test]
    fn cache_counts_are_reported_as_deltas() {
        let c = Config::from_json(
            br#"{"issuers":[{"issuer":"https://as.example","audiences":["api"],"shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
            &|_| None,
        )
        .unwrap();
        let mut state = State::new(&c);
        let metrics = FakeMetrics::default();
        let mut counts = CacheCounts::default();
        let key = [7u8; 32];

        assert!(state.tokens.get(&key, 10).is_none());
        counts.report(state.cache_totals(), &metrics);
        counts.report(state.cache_totals(), &metrics);
        assert_eq!(
            metrics.counter(Counter::Cache(CacheName::Tokens, CacheEvent::Miss)),
            1
        );

        state.decisions = crate::cache::BoundedCache::new(1 << 20, 1);
        state.decisions.insert([1; 32], true, 100, 10);
        state.decisions.insert([2; 32], true, 100, 10);
        assert_eq!(state.decisions.get(&[2; 32], 10), Some(&true));
        counts.report(state.cache_totals(), &metrics);
        let decisions = |event| metrics.counter(Counter::Cache(CacheName::PdpDecisions, event));
        assert_eq!(
            (
                decisions(CacheEvent::Hit),
                decisions(CacheEvent::Miss),
                decisions(CacheEvent::Eviction)
            ),
            (1, 0, 1)
        );
        // Nothing else was counted.
        assert_eq!(metrics.counters().len(), 3);
    }
}
