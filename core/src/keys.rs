//! Key state per issuer and the fetch schedule: discovery → JWKS as a small
//! state machine. The glue dispatches the callouts it returns and feeds the
//! replies back; keys are refreshed on a period, refetched (rate-limited) when
//! an unknown `kid` shows up, and the last good keys survive a failed refresh.

use std::rc::Rc;

use serde::Deserialize;

use crate::callout::{Callout, CalloutError, CalloutReply, Url};
use crate::config::{Config, Issuer, KeySource};
use crate::jwks::KeySet;

/// Retry delays while an issuer has never had keys: fast at first, so the
/// filter recovers quickly once the authorization server comes up.
const FIRST_LOAD_RETRY_SECONDS: [u64; 5] = [1, 2, 4, 8, 15];
/// Retry delay after a failed refresh while older keys are still in use.
const REFRESH_RETRY_SECONDS: u64 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchStep {
    Discovery,
    Jwks,
}

#[derive(Default)]
pub struct IssuerKeys {
    pub keys: Option<Rc<KeySet>>,
    pub last_error: Option<String>,
    /// Until when a dispatched fetch is awaited. A request that started a
    /// fetch can be reset, and the host then drops the callout without a
    /// reply; the deadline keeps that from blocking fetches for good.
    in_flight_until: Option<u64>,
    next_attempt_at: u64,
    failures: usize,
    last_unknown_kid_fetch: Option<u64>,
}

/// What one reply means for the fetch in progress.
#[derive(Debug, PartialEq)]
pub enum FetchProgress {
    Next(FetchStep, Callout),
    Loaded { keys: usize, skipped: Vec<String> },
    Failed(String),
}

impl IssuerKeys {
    fn awaiting(&self, now: u64) -> bool {
        self.in_flight_until.is_some_and(|until| now < until)
    }
}

/// Discovery and JWKS are two callouts, each bounded by the fetch timeout.
fn in_flight_deadline(issuer: &Issuer, now: u64) -> u64 {
    now.saturating_add(issuer.fetch_timeout_ms.saturating_mul(2) / 1000 + 1)
}

pub struct KeyManager {
    issuers: Vec<IssuerKeys>,
}

#[derive(Deserialize)]
struct Discovery {
    jwks_uri: String,
}

impl KeyManager {
    pub fn new(config: &Config) -> Self {
        let issuers = config
            .issuers
            .iter()
            .map(|issuer| match &issuer.source {
                KeySource::Static(keys) => IssuerKeys {
                    keys: Some(Rc::clone(keys)),
                    ..IssuerKeys::default()
                },
                _ => IssuerKeys::default(),
            })
            .collect();
        KeyManager { issuers }
    }

    pub fn keys(&self, issuer: usize) -> Option<&Rc<KeySet>> {
        self.issuers.get(issuer)?.keys.as_ref()
    }

    pub fn state(&self, issuer: usize) -> Option<&IssuerKeys> {
        self.issuers.get(issuer)
    }

    /// Fetches due now (first load, retries, periodic refresh), marked in flight.
    pub fn due(&mut self, config: &Config, now: u64) -> Vec<(usize, FetchStep, Callout)> {
        let mut due = Vec::new();
        for (index, (state, issuer)) in self.issuers.iter_mut().zip(&config.issuers).enumerate() {
            if state.awaiting(now) || now < state.next_attempt_at {
                continue;
            }
            if let Some((step, callout)) = first_callout(issuer) {
                state.in_flight_until = Some(in_flight_deadline(issuer, now));
                due.push((index, step, callout));
            }
        }
        due
    }

    /// A token named a `kid` we lack: refetch now unless one is in flight or
    /// the last such refetch was too recent (a flood of made-up kids must not
    /// turn into a flood of fetches).
    pub fn refetch_for_unknown_kid(
        &mut self,
        config: &Config,
        issuer: usize,
        now: u64,
    ) -> Option<(FetchStep, Callout)> {
        let settings = config.issuers.get(issuer)?;
        let state = self.issuers.get_mut(issuer)?;
        let recent = state
            .last_unknown_kid_fetch
            .is_some_and(|t| now < t.saturating_add(settings.unknown_kid_refetch_seconds));
        if state.awaiting(now) || recent {
            return None;
        }
        let (step, callout) = first_callout(settings)?;
        state.in_flight_until = Some(in_flight_deadline(settings, now));
        state.last_unknown_kid_fetch = Some(now);
        Some((step, callout))
    }

    /// Feeds one reply into the fetch of `issuer`.
    pub fn on_reply(
        &mut self,
        config: &Config,
        issuer: usize,
        step: FetchStep,
        reply: &CalloutReply,
        now: u64,
    ) -> FetchProgress {
        self.settle(config, issuer, step, reply.success_body(), now)
    }

    /// The host refused to dispatch (e.g. no such cluster): a failed fetch
    /// whose reason is kept for the 503 body and the log.
    pub fn on_dispatch_error(
        &mut self,
        config: &Config,
        issuer: usize,
        step: FetchStep,
        why: &str,
        now: u64,
    ) {
        let _ = self.settle(
            config,
            issuer,
            step,
            Err(CalloutError::Dispatch(why.to_string())),
            now,
        );
    }

    fn settle(
        &mut self,
        config: &Config,
        issuer: usize,
        step: FetchStep,
        body: Result<&[u8], CalloutError>,
        now: u64,
    ) -> FetchProgress {
        let (Some(settings), Some(state)) =
            (config.issuers.get(issuer), self.issuers.get_mut(issuer))
        else {
            return FetchProgress::Failed("unknown issuer".into());
        };
        let outcome = interpret(settings, step, body);
        match outcome {
            Ok(Interpreted::Next(next_step, callout)) => FetchProgress::Next(next_step, callout),
            Ok(Interpreted::Keys(keys, skipped)) => {
                let count = keys.len();
                state.keys = Some(Rc::new(keys));
                state.last_error = None;
                state.in_flight_until = None;
                state.failures = 0;
                state.next_attempt_at = now.saturating_add(settings.refresh_seconds);
                FetchProgress::Loaded {
                    keys: count,
                    skipped,
                }
            }
            Err(why) => {
                state.in_flight_until = None;
                state.last_error = Some(why.clone());
                state.failures = state.failures.saturating_add(1);
                let delay = if state.keys.is_some() {
                    REFRESH_RETRY_SECONDS.min(settings.refresh_seconds)
                } else {
                    let i = state
                        .failures
                        .saturating_sub(1)
                        .min(FIRST_LOAD_RETRY_SECONDS.len() - 1);
                    FIRST_LOAD_RETRY_SECONDS
                        .get(i)
                        .copied()
                        .unwrap_or(REFRESH_RETRY_SECONDS)
                };
                state.next_attempt_at = now.saturating_add(delay);
                FetchProgress::Failed(why)
            }
        }
    }
}

enum Interpreted {
    Next(FetchStep, Callout),
    Keys(KeySet, Vec<String>),
}

fn first_callout(issuer: &Issuer) -> Option<(FetchStep, Callout)> {
    match &issuer.source {
        KeySource::Static(_) => None,
        KeySource::JwksUri(url) => Some((
            FetchStep::Jwks,
            Callout::get(&issuer.upstream, url.clone(), issuer.fetch_timeout_ms),
        )),
        KeySource::Discovery(url) => Some((
            FetchStep::Discovery,
            Callout::get(&issuer.upstream, url.clone(), issuer.fetch_timeout_ms),
        )),
    }
}

fn interpret(
    issuer: &Issuer,
    step: FetchStep,
    body: Result<&[u8], CalloutError>,
) -> Result<Interpreted, String> {
    let what = match step {
        FetchStep::Discovery => "OIDC discovery",
        FetchStep::Jwks => "JWKS",
    };
    let body = body.map_err(|e| format!("{what} fetch for {}: {e}", issuer.issuer))?;
    match step {
        FetchStep::Discovery => {
            let doc: Discovery = serde_json::from_slice(body).map_err(|e| {
                format!(
                    "OIDC discovery for {}: no usable jwks_uri ({e})",
                    issuer.issuer
                )
            })?;
            let url = Url::parse(&doc.jwks_uri)
                .map_err(|e| format!("OIDC discovery for {}: jwks_uri {e}", issuer.issuer))?;
            Ok(Interpreted::Next(
                FetchStep::Jwks,
                Callout::get(&issuer.upstream, url, issuer.fetch_timeout_ms),
            ))
        }
        FetchStep::Jwks => {
            let (keys, skipped) = issuer
                .keys_from_jwks(body)
                .map_err(|e| format!("JWKS for {}: {e}", issuer.issuer))?;
            if keys.is_empty() {
                return Err(format!(
                    "JWKS for {}: no key usable with the allowed algorithms",
                    issuer.issuer
                ));
            }
            Ok(Interpreted::Keys(keys, skipped))
        }
    }
}
