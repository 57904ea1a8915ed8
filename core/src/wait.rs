//! Where a request waits, and the bounds on waiting: the core names what a
//! request waits for ([`WaitKey`]); the glue parks, wakes and expires
//! requests by that key without knowing what it stands for, within [`Waits`].

use serde::Deserialize;

use crate::cache::Digest;
use crate::config_error::ConfigError;

/// What parked requests wait for: one fetch that many requests may share.
/// The glue only compares and hashes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitKey {
    /// The keys (or discovery document) of an issuer.
    Keys(usize),
    /// The introspection of the token with this digest, at this issuer.
    Introspection { issuer: usize, token: Digest },
    /// The token of one of the gateway's own clients.
    ClientToken(usize),
    /// The request's own body, which a JSON-RPC selector reads: nothing is
    /// fetched; the request is decided again when its body is complete (or
    /// over the bound), or answered 408 at its deadline.
    Body,
    /// The token exchange (RFC 8693) of upstream OAuth rule `rule` for the
    /// caller token with this digest.
    Exchange { rule: usize, token: Digest },
}

/// Which bound refused a request with [`crate::response::Denial::Overloaded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bound {
    /// Too many requests parked (per key, per worker, or their header bytes).
    Waiters,
    /// Too many callouts of this kind in flight on the worker (or held by
    /// one client address).
    InFlight,
    /// The issuer's introspection budget per second is spent.
    IntrospectionBudget,
    /// The UMA permission request budget per second is spent.
    PermissionBudget,
    /// An upstream OAuth rule's token exchange budget per second is spent.
    ExchangeBudget,
}

impl Bound {
    pub const ALL: [Bound; 5] = [
        Bound::Waiters,
        Bound::InFlight,
        Bound::IntrospectionBudget,
        Bound::PermissionBudget,
        Bound::ExchangeBudget,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Bound::Waiters => "waiters",
            Bound::InFlight => "in_flight",
            Bound::IntrospectionBudget => "introspection_budget",
            Bound::PermissionBudget => "permission_budget",
            Bound::ExchangeBudget => "exchange_budget",
        }
    }
}

/// Something the glue logs for the core, which does no I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Info(String),
    /// The operator must act (an outage, a refused fetch).
    Warn(String),
}

/// The `waits` block as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWaits {
    max_per_key: Option<usize>,
    max_per_worker: Option<usize>,
    max_parked_bytes: Option<usize>,
    replies_per_callback: Option<usize>,
}

/// How many requests one worker keeps waiting, and how many it answers from
/// one VM callback: the bounds that keep a flood of parked requests from
/// exhausting memory or the VM's stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    /// Requests parked on one [`WaitKey`].
    pub max_per_key: usize,
    /// Requests parked (or woken and not yet decided) in the worker.
    pub max_per_worker: usize,
    /// Header bytes those requests hold.
    pub max_parked_bytes: usize,
    /// Parked requests decided (answered or resumed) in one VM callback; the
    /// rest go out on the root's next ticks. Envoy's V8 VM dies of stack
    /// exhaustion at about 300 local replies from one callback.
    pub replies_per_callback: usize,
}

/// Beyond this many replies from one callback the VM is near the stack
/// depth measured to kill it (~300), whatever the host.
pub const MAX_REPLIES_PER_CALLBACK: usize = 64;

impl Default for Waits {
    fn default() -> Self {
        Waits {
            max_per_key: 256,
            max_per_worker: 1024,
            max_parked_bytes: 16 << 20,
            replies_per_callback: 32,
        }
    }
}

impl Waits {
    pub fn compile(raw: Option<RawWaits>) -> Result<Waits, ConfigError> {
        let defaults = Waits::default();
        let Some(raw) = raw else {
            return Ok(defaults);
        };
        let positive = |value: Option<usize>, default: usize, field: &str| match value {
            Some(0) => Err(ConfigError::new(
                format!("waits.{field}"),
                "must be at least 1",
            )),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let waits = Waits {
            max_per_key: positive(raw.max_per_key, defaults.max_per_key, "max_per_key")?,
            max_per_worker: positive(
                raw.max_per_worker,
                defaults.max_per_worker,
                "max_per_worker",
            )?,
            max_parked_bytes: positive(
                raw.max_parked_bytes,
                defaults.max_parked_bytes,
                "max_parked_bytes",
            )?,
            replies_per_callback: positive(
                raw.replies_per_callback,
                defaults.replies_per_callback,
                "replies_per_callback",
            )?,
        };
        if waits.replies_per_callback > MAX_REPLIES_PER_CALLBACK {
            return Err(ConfigError::new(
                "waits.replies_per_callback",
                format!("at most {MAX_REPLIES_PER_CALLBACK}: Envoy's VM dies of stack exhaustion at about 300 replies from one callback"),
            ));
        }
        if waits.max_per_key > waits.max_per_worker {
            return Err(ConfigError::new(
                "waits.max_per_key",
                "must not exceed waits.max_per_worker",
            ));
        }
        Ok(waits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(json: &str) -> Result<Waits, ConfigError> {
        Waits::compile(Some(serde_json::from_str(json).unwrap()))
    }

    #[test]
    fn defaults_and_bounds_with_the_field_named() {
        assert_eq!(Waits::compile(None).unwrap(), Waits::default());
        assert_eq!(compile(r#"{"max_per_key": 8}"#).unwrap().max_per_key, 8);
        for (json, field) in [
            (r#"{"max_per_key": 0}"#, "waits.max_per_key"),
            (
                r#"{"replies_per_callback": 0}"#,
                "waits.replies_per_callback",
            ),
            (
                r#"{"replies_per_callback": 300}"#,
                "waits.replies_per_callback",
            ),
            (
                r#"{"max_per_key": 9, "max_per_worker": 8}"#,
                "waits.max_per_key",
            ),
        ] {
            let error = compile(json).unwrap_err().to_string();
            assert!(error.contains(field), "{json}: {error}");
        }
        assert!(serde_json::from_str::<RawWaits>(r#"{"max": 1}"#).is_err());
    }
}
