//! Budgets for the callouts a client can cause (introspections of tokens no
//! cache knows, UMA permission requests): token buckets per worker, one for
//! everyone and one per client address holding a quarter of it, so that a
//! flood of junk tokens from one address neither becomes as many callouts to
//! the authorization server nor spends what other clients need.

use std::collections::HashMap;

use serde::Deserialize;

use crate::config_error::ConfigError;

/// Client addresses tracked at once; beyond, the idlest is forgotten.
const MAX_CLIENTS: usize = 1024;
/// Longer addresses are cut (an IPv6 address with its port is under 50).
const MAX_CLIENT_BYTES: usize = 64;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    per_second: Option<u32>,
    burst: Option<u32>,
}

/// Callouts per second, and how many may be spent at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub per_second: u32,
    pub burst: u32,
}

impl Budget {
    /// `field` names the block in errors; `default` applies to what is unset.
    pub fn compile(
        raw: Option<RawBudget>,
        default: Budget,
        field: &str,
    ) -> Result<Budget, ConfigError> {
        let raw = raw.unwrap_or_default();
        let per_second = raw.per_second.unwrap_or(default.per_second);
        if per_second == 0 {
            return Err(ConfigError::new(
                format!("{field}.per_second"),
                "must be at least 1: a budget of 0 refuses every callout (remove the block for the default)",
            ));
        }
        let burst = raw.burst.unwrap_or(per_second.saturating_mul(2));
        if burst < per_second {
            return Err(ConfigError::new(
                format!("{field}.burst"),
                "must be at least per_second",
            ));
        }
        Ok(Budget { per_second, burst })
    }

    /// One client address's share: a quarter, at least one a second.
    fn per_client(self) -> Budget {
        Budget {
            per_second: (self.per_second / 4).max(1),
            burst: (self.burst / 4).max(1),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u64,
    at: u64,
}

impl Bucket {
    fn full(budget: Budget, now: u64) -> Bucket {
        Bucket {
            tokens: u64::from(budget.burst),
            at: now,
        }
    }

    fn refill(&mut self, budget: Budget, now: u64) {
        let earned = now
            .saturating_sub(self.at)
            .saturating_mul(u64::from(budget.per_second));
        self.tokens = self
            .tokens
            .saturating_add(earned)
            .min(u64::from(budget.burst));
        self.at = self.at.max(now);
    }
}

/// What is left of one budget on this worker.
#[derive(Debug)]
pub struct Spender {
    budget: Budget,
    everyone: Bucket,
    clients: HashMap<String, Bucket>,
}

impl Spender {
    pub fn new(budget: Budget) -> Spender {
        Spender {
            budget,
            everyone: Bucket::full(budget, 0),
            clients: HashMap::new(),
        }
    }

    /// Takes one callout from the budget for `client` (its address, when
    /// the host tells it); `false` when the client's share or the whole
    /// budget is spent for now.
    pub fn spend(&mut self, client: Option<&str>, now: u64) -> bool {
        self.everyone.refill(self.budget, now);
        if self.everyone.tokens == 0 {
            return false;
        }
        if let Some(client) = client {
            let share = self.budget.per_client();
            let key = cut(client);
            if !self.clients.contains_key(key) {
                self.make_room(now);
            }
            let bucket = self
                .clients
                .entry(key.to_string())
                .or_insert_with(|| Bucket::full(share, now));
            bucket.refill(share, now);
            if bucket.tokens == 0 {
                return false;
            }
            bucket.tokens -= 1;
        }
        self.everyone.tokens -= 1;
        true
    }

    /// Forgets clients whose share is whole again (they cost nothing to
    /// forget), else the one seen longest ago.
    fn make_room(&mut self, now: u64) {
        if self.clients.len() < MAX_CLIENTS {
            return;
        }
        let share = self.budget.per_client();
        self.clients.retain(|_, bucket| {
            bucket.refill(share, now);
            bucket.tokens < u64::from(share.burst)
        });
        if self.clients.len() >= MAX_CLIENTS {
            let oldest = self
                .clients
                .iter()
                .min_by_key(|(_, bucket)| bucket.at)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                self.clients.remove(&oldest);
            }
        }
    }
}

fn cut(client: &str) -> &str {
    let mut end = client.len().min(MAX_CLIENT_BYTES);
    while !client.is_char_boundary(end) {
        end -= 1;
    }
    client.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const BUDGET: Budget = Budget {
        per_second: 8,
        burst: 16,
    };

    fn spent(spender: &mut Spender, client: Option<&str>, now: u64, tries: usize) -> usize {
        (0..tries).filter(|_| spender.spend(client, now)).count()
    }

    #[test]
    fn one_address_gets_a_quarter_and_the_rest_is_left_for_others() {
        let mut s = Spender::new(BUDGET);
        assert_eq!(spent(&mut s, Some("10.0.0.1"), 100, 100), 4, "burst / 4");
        assert_eq!(
            spent(&mut s, Some("10.0.0.1"), 101, 100),
            2,
            "8 / 4 a second"
        );
        assert_eq!(spent(&mut s, Some("10.0.0.2"), 101, 100), 4);
        // Without an address only the whole budget counts.
        assert_eq!(spent(&mut s, None, 101, 100), 10);
        assert_eq!(spent(&mut s, Some("10.0.0.3"), 101, 100), 0, "all spent");
        assert_eq!(spent(&mut s, None, 102, 100), 8, "refilled by per_second");
    }

    #[test]
    fn many_addresses_are_tracked_within_a_bound() {
        let mut s = Spender::new(Budget {
            per_second: 1_000_000,
            burst: 1_000_000,
        });
        for i in 0..5 * MAX_CLIENTS {
            assert!(s.spend(Some(&format!("10.{i}.0.1:{}", "9".repeat(100))), 1));
        }
        assert!(s.clients.len() <= MAX_CLIENTS);
        assert!(s.clients.keys().all(|k| k.len() <= MAX_CLIENT_BYTES));
    }

    #[test]
    fn a_zero_budget_is_refused_with_the_field_named() {
        let raw = |json: &str| Some(serde_json::from_str::<RawBudget>(json).unwrap());
        let field = "issuers[0].introspection.budget";
        assert_eq!(Budget::compile(None, BUDGET, field).unwrap(), BUDGET);
        assert_eq!(
            Budget::compile(raw(r#"{"per_second": 3}"#), BUDGET, field).unwrap(),
            Budget {
                per_second: 3,
                burst: 6
            }
        );
        for (json, at) in [
            (r#"{"per_second": 0}"#, "budget.per_second"),
            (r#"{"per_second": 5, "burst": 4}"#, "budget.burst"),
        ] {
            let e = Budget::compile(raw(json), BUDGET, field).unwrap_err();
            assert!(e.field.ends_with(at), "{e}");
        }
    }
}
