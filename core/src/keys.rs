//! Key state per issuer and the fetch schedule: discovery → JWKS as a small
//! state machine. The glue dispatches the callouts it returns and feeds the
//! replies back; keys are refreshed on a period, refetched (rate-limited) when
//! an unknown `kid` shows up, and the last good keys survive a failed refresh.

use std::rc::Rc;

use serde::Deserialize;

use crate::alg::Alg;
use crate::cache::{digest, Digest};
use crate::callout::{Callout, CalloutError, CalloutReply, Url};
use crate::introspection::{Introspection, Mode};
use crate::jwks::KeySet;

/// How the keys of an issuer are obtained.
#[derive(Clone)]
pub enum KeySource {
    /// Inline JWKS and/or a shared secret: ready at configure time.
    Static(Rc<KeySet>),
    JwksUri(Url),
    Discovery(Url),
    /// No keys: every token of the issuer is introspected.
    None,
}

#[derive(Clone)]
pub struct Issuer {
    pub issuer: String,
    /// Accepted `aud` values; empty only when configured as `"any"`.
    pub audiences: Vec<String>,
    pub algorithms: Vec<Alg>,
    pub source: KeySource,
    /// Envoy cluster (or Kong `host:port`) that fetches go through.
    pub upstream: String,
    pub shared_secret: Option<Vec<u8>>,
    pub refresh_seconds: u64,
    pub fetch_timeout_ms: u64,
    pub unknown_kid_refetch_seconds: u64,
    pub mode: Mode,
    pub introspection: Option<Introspection>,
}

impl Issuer {
    /// Turns a fetched JWKS into this issuer's key set (plus its shared secret).
    pub fn keys_from_jwks(
        &self,
        jwks: &[u8],
    ) -> Result<(KeySet, Vec<String>), crate::jwks::JwksError> {
        let (mut keys, skipped) = KeySet::from_jwks(jwks, &self.algorithms)?;
        if let Some(secret) = &self.shared_secret {
            keys.add_secret(secret, &self.algorithms);
        }
        Ok((keys, skipped))
    }

    #[cfg(test)]
    pub fn for_tests(issuer: &str, audiences: &[&str], algorithms: &[Alg]) -> Issuer {
        Issuer {
            issuer: issuer.into(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            algorithms: algorithms.to_vec(),
            source: KeySource::Static(Rc::new(KeySet::default())),
            upstream: String::new(),
            shared_secret: None,
            refresh_seconds: 300,
            fetch_timeout_ms: 1000,
            unknown_kid_refetch_seconds: 30,
            mode: Mode::Jwt,
            introspection: None,
        }
    }
}

/// Retry delays while an issuer has never had keys: fast at first, so the
/// filter recovers quickly once the authorization server comes up.
const FIRST_LOAD_RETRY_SECONDS: [u64; 5] = [1, 2, 4, 8, 15];
/// Retry delay after a failed refresh while older keys are still in use.
const REFRESH_RETRY_SECONDS: u64 = 15;
/// A request may start a fetch itself (keys never loaded, or an unknown
/// `kid`) at most this often per issuer, so recovery follows the server
/// within about a second while a flood of requests stays one fetch a second.
const REQUEST_FETCH_INTERVAL_SECONDS: u64 = 1;
/// Unknown-kid refetches that may be spent at once; one more is earned every
/// `unknown_kid_refetch_seconds`. A junk kid therefore never locks out the
/// refetch a genuine rotation needs a moment later.
const UNKNOWN_KID_BURST: u64 = 3;
/// Kids a refetch did not find, remembered (by digest) so that repeating one
/// spends no further refetch for `unknown_kid_refetch_seconds`.
const ABSENT_KIDS_REMEMBERED: usize = 64;

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
    /// When the last fetch of any kind was started.
    last_started_at: Option<u64>,
    /// Unknown-kid refetch allowance: tokens left, as of `refetch_credit_at`.
    refetch_credit: u64,
    refetch_credit_at: u64,
    /// Kids that requests wait for in the fetch in flight.
    wanted_kids: Vec<Digest>,
    /// Kids the last fetches did not find, until when they are not refetched for.
    absent_kids: Vec<(Digest, u64)>,
    /// From the last discovery document.
    introspection_endpoint: Option<Url>,
}

/// What one reply means for the fetch in progress.
#[derive(Debug, PartialEq)]
pub enum FetchProgress {
    Next(FetchStep, Callout),
    Loaded { keys: usize, skipped: Vec<String> },
    Failed(String),
}

/// What a request that lacks keys (or the key its `kid` names) may do.
#[derive(Debug, PartialEq)]
pub enum KeyWait {
    /// Start this fetch and wait for it, until [`KeyManager::awaited_until`].
    Fetch { step: FetchStep, callout: Callout },
    /// Wait for the fetch in flight, until `until`.
    Wait { until: u64 },
    /// No fetch can help now; the keys are unavailable for this reason (503).
    Unavailable(String),
    /// The keys are fine and hold no such kid (401).
    KidUnknown,
}

impl IssuerKeys {
    fn fresh(now: u64) -> Self {
        IssuerKeys {
            refetch_credit: UNKNOWN_KID_BURST,
            refetch_credit_at: now,
            ..IssuerKeys::default()
        }
    }

    fn awaiting(&self, now: u64) -> bool {
        self.in_flight_until.is_some_and(|until| now < until)
    }

    fn may_start_for_request(&self, now: u64) -> bool {
        self.last_started_at
            .is_none_or(|t| now >= t.saturating_add(REQUEST_FETCH_INTERVAL_SECONDS))
    }

    fn start(&mut self, issuer: &Issuer, now: u64) -> Option<(FetchStep, Callout)> {
        let first = first_callout(issuer)?;
        self.in_flight_until = Some(in_flight_deadline(issuer, now));
        self.last_started_at = Some(now);
        Some(first)
    }

    fn wait(&mut self, kid: Option<Digest>) -> KeyWait {
        if let Some(kid) = kid {
            if !self.wanted_kids.contains(&kid) && self.wanted_kids.len() < ABSENT_KIDS_REMEMBERED {
                self.wanted_kids.push(kid);
            }
        }
        KeyWait::Wait {
            until: self.in_flight_until.unwrap_or_default(),
        }
    }

    fn unavailable(&self, issuer: &Issuer) -> KeyWait {
        KeyWait::Unavailable(match &self.last_error {
            Some(error) => format!(
                "the signing keys of {} are not available: {error}",
                issuer.issuer
            ),
            None => format!("the signing keys of {} are being fetched", issuer.issuer),
        })
    }

    /// Spends one unknown-kid refetch if there is one left.
    fn take_refetch_credit(&mut self, interval: u64, now: u64) -> bool {
        let interval = interval.max(1);
        let earned = now.saturating_sub(self.refetch_credit_at) / interval;
        if earned > 0 {
            self.refetch_credit = self
                .refetch_credit
                .saturating_add(earned)
                .min(UNKNOWN_KID_BURST);
            self.refetch_credit_at = self
                .refetch_credit_at
                .saturating_add(earned.saturating_mul(interval));
        }
        if self.refetch_credit == 0 {
            return false;
        }
        self.refetch_credit -= 1;
        true
    }
}

/// Discovery and JWKS are two callouts, each bounded by the fetch timeout.
fn in_flight_deadline(issuer: &Issuer, now: u64) -> u64 {
    now.saturating_add(issuer.fetch_timeout_ms.saturating_mul(2) / 1000 + 1)
}

pub struct KeyManager {
    /// The issuers' settings, index for index with `issuers`.
    settings: Vec<Issuer>,
    issuers: Vec<IssuerKeys>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
    introspection_endpoint: Option<String>,
}

impl KeyManager {
    /// Key state for these issuers, which it keeps (a copy made at load).
    pub fn new(issuers: &[Issuer]) -> Self {
        let states = issuers
            .iter()
            .map(|issuer| match &issuer.source {
                KeySource::Static(keys) => IssuerKeys {
                    keys: Some(Rc::clone(keys)),
                    ..IssuerKeys::default()
                },
                _ => IssuerKeys::fresh(0),
            })
            .collect();
        KeyManager {
            settings: issuers.to_vec(),
            issuers: states,
        }
    }

    pub fn keys(&self, issuer: usize) -> Option<&Rc<KeySet>> {
        self.issuers.get(issuer)?.keys.as_ref()
    }

    /// The `introspection_endpoint` of the issuer's last discovery document.
    pub fn discovered_introspection_endpoint(&self, issuer: usize) -> Option<&Url> {
        self.issuers.get(issuer)?.introspection_endpoint.as_ref()
    }

    pub fn state(&self, issuer: usize) -> Option<&IssuerKeys> {
        self.issuers.get(issuer)
    }

    /// Fetches due now (first load, retries, periodic refresh), marked in flight.
    pub fn due(&mut self, now: u64) -> Vec<(usize, FetchStep, Callout)> {
        let mut due = Vec::new();
        for (index, (state, issuer)) in self.issuers.iter_mut().zip(&self.settings).enumerate() {
            if state.awaiting(now) || now < state.next_attempt_at {
                continue;
            }
            if let Some((step, callout)) = state.start(issuer, now) {
                due.push((index, step, callout));
            }
        }
        due
    }

    /// A request needs the keys of `issuer`, which have never loaded: wait
    /// for the fetch in flight, or start one (at most one a second), or give
    /// the reason they are unavailable.
    pub fn load_for_request(&mut self, issuer: usize, now: u64) -> KeyWait {
        let (Some(settings), Some(state)) =
            (self.settings.get(issuer), self.issuers.get_mut(issuer))
        else {
            return KeyWait::Unavailable("unknown issuer".into());
        };
        if state.awaiting(now) {
            return state.wait(None);
        }
        if state.may_start_for_request(now) {
            if let Some((step, callout)) = state.start(settings, now) {
                return KeyWait::Fetch { step, callout };
            }
        }
        state.unavailable(settings)
    }

    /// A token named a `kid` the keys lack, maybe after a rotation: wait for
    /// the fetch in flight, or refetch now if the allowance permits (a burst
    /// of [`UNKNOWN_KID_BURST`], then one per `unknown_kid_refetch_seconds`;
    /// a kid the last refetch did not find spends nothing). When the last
    /// fetch failed, the answer is "unavailable", not "unknown kid".
    pub fn refetch_for_unknown_kid(&mut self, issuer: usize, kid: &str, now: u64) -> KeyWait {
        let (Some(settings), Some(state)) =
            (self.settings.get(issuer), self.issuers.get_mut(issuer))
        else {
            return KeyWait::Unavailable("unknown issuer".into());
        };
        if matches!(settings.source, KeySource::Static(_)) {
            return KeyWait::KidUnknown;
        }
        let kid = digest(&[kid.as_bytes()]);
        if state.awaiting(now) {
            return state.wait(Some(kid));
        }
        state.absent_kids.retain(|(_, until)| now < *until);
        // After a failed fetch, the requests that waited for it get their
        // 503 rather than each starting another fetch at once.
        let refetch = !state.absent_kids.iter().any(|(k, _)| *k == kid)
            && (state.last_error.is_none() || state.may_start_for_request(now))
            && state.take_refetch_credit(settings.unknown_kid_refetch_seconds, now);
        if refetch {
            if let Some((step, callout)) = state.start(settings, now) {
                state.wanted_kids.push(kid);
                return KeyWait::Fetch { step, callout };
            }
        }
        if state.last_error.is_some() {
            state.unavailable(settings)
        } else {
            KeyWait::KidUnknown
        }
    }

    /// When the fetch in flight for `issuer` is given up on, if one is.
    pub fn awaited_until(&self, issuer: usize, now: u64) -> Option<u64> {
        let state = self.issuers.get(issuer)?;
        state.awaiting(now).then_some(state.in_flight_until?)
    }

    /// The request that dispatched a fetch is gone, and with it (on Envoy
    /// with the Rust SDK) the reply: stop waiting for it, so the next request
    /// can start another at once.
    pub fn abandon(&mut self, issuer: usize) {
        if let Some(state) = self.issuers.get_mut(issuer) {
            state.in_flight_until = None;
            state.last_started_at = None;
        }
    }

    /// Feeds one reply into the fetch of `issuer`.
    pub fn on_reply(
        &mut self,
        issuer: usize,
        step: FetchStep,
        reply: &CalloutReply,
        now: u64,
    ) -> FetchProgress {
        self.settle(issuer, step, reply.success_body(), now)
    }

    /// The host refused to dispatch (e.g. no such cluster): a failed fetch
    /// whose reason is kept for the 503 body and the log.
    pub fn on_dispatch_error(
        &mut self,
        issuer: usize,
        step: FetchStep,
        why: &str,
        now: u64,
    ) -> FetchProgress {
        self.settle(
            issuer,
            step,
            Err(CalloutError::Dispatch(why.to_string())),
            now,
        )
    }

    fn settle(
        &mut self,
        issuer: usize,
        step: FetchStep,
        body: Result<&[u8], CalloutError>,
        now: u64,
    ) -> FetchProgress {
        let (Some(settings), Some(state)) =
            (self.settings.get(issuer), self.issuers.get_mut(issuer))
        else {
            return FetchProgress::Failed("unknown issuer".into());
        };
        let outcome = interpret(settings, step, body);
        match outcome {
            Ok(Interpreted::Next(next_step, callout, introspection)) => {
                state.introspection_endpoint = introspection;
                FetchProgress::Next(next_step, callout)
            }
            Ok(Interpreted::Keys(keys, skipped)) => {
                let count = keys.len();
                let remember_until = now.saturating_add(settings.unknown_kid_refetch_seconds);
                for kid in std::mem::take(&mut state.wanted_kids) {
                    if !keys.has_kid_digest(&kid) {
                        if state.absent_kids.len() >= ABSENT_KIDS_REMEMBERED {
                            state.absent_kids.remove(0);
                        }
                        state.absent_kids.push((kid, remember_until));
                    }
                }
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
                state.wanted_kids.clear();
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
    /// The next step, and the discovery document's introspection endpoint.
    Next(FetchStep, Callout, Option<Url>),
    Keys(KeySet, Vec<String>),
}

fn first_callout(issuer: &Issuer) -> Option<(FetchStep, Callout)> {
    match &issuer.source {
        KeySource::Static(_) | KeySource::None => None,
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
                    "OIDC discovery for {}: not a document with issuer and jwks_uri ({e})",
                    issuer.issuer
                )
            })?;
            // OpenID Connect Discovery §4.3 (and RFC 8414 §3.3): a document
            // for another issuer must not supply this issuer's keys.
            if doc.issuer != issuer.issuer {
                let named: String = doc.issuer.chars().take(200).collect();
                return Err(format!(
                    "OIDC discovery for {}: the document is for issuer {named:?}, not the configured one",
                    issuer.issuer
                ));
            }
            let url = Url::parse(&doc.jwks_uri)
                .map_err(|e| format!("OIDC discovery for {}: jwks_uri {e}", issuer.issuer))?;
            // An unusable endpoint is reported when a token needs it.
            let introspection = doc.introspection_endpoint.and_then(|u| Url::parse(&u).ok());
            Ok(Interpreted::Next(
                FetchStep::Jwks,
                Callout::get(&issuer.upstream, url, issuer.fetch_timeout_ms),
                introspection,
            ))
        }
        FetchStep::Jwks => {
            let (keys, skipped) = issuer
                .keys_from_jwks(body)
                .map_err(|e| format!("JWKS for {}: {e}", issuer.issuer))?;
            if keys.is_empty() {
                let why = match skipped.first() {
                    Some(first) => format!(" ({} skipped, first {first})", skipped.len()),
                    None => String::new(),
                };
                return Err(format!(
                    "JWKS for {}: no key usable with the allowed algorithms{why}",
                    issuer.issuer
                ));
            }
            Ok(Interpreted::Keys(keys, skipped))
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::Config;
    use crate::jwt::test_vectors::vectors;

    fn config() -> Config {
        Config::from_json(
            br#"{"issuers":[{"issuer":"https://issuer.test","audiences":["api"],"discovery":true,"upstream":"as"}]}"#,
        )
        .unwrap()
    }

    fn discover(manager: &mut KeyManager, doc: &str) -> FetchProgress {
        let reply = CalloutReply {
            status: Some(200),
            body: doc.as_bytes().to_vec(),
            ..CalloutReply::default()
        };
        manager.on_reply(0, FetchStep::Discovery, &reply, 1)
    }

    #[test]
    fn a_discovery_document_for_another_issuer_is_refused() {
        let c = config();
        for (doc, why) in [
            (
                r#"{"issuer":"https://evil.test","jwks_uri":"https://evil.test/jwks"}"#,
                r#"the document is for issuer "https://evil.test", not the configured one"#,
            ),
            // Exact comparison: no trailing-slash or case leniency.
            (
                r#"{"issuer":"https://issuer.test/","jwks_uri":"https://issuer.test/jwks"}"#,
                r#"for issuer "https://issuer.test/""#,
            ),
            (
                r#"{"issuer":"HTTPS://ISSUER.TEST","jwks_uri":"https://issuer.test/jwks"}"#,
                "not the configured one",
            ),
            (
                r#"{"jwks_uri":"https://issuer.test/jwks"}"#,
                "not a document with issuer and jwks_uri (missing field `issuer`",
            ),
        ] {
            let mut m = KeyManager::new(&c.issuers);
            let FetchProgress::Failed(error) = discover(&mut m, doc) else {
                panic!("{doc} was accepted")
            };
            assert!(
                error.starts_with("OIDC discovery for https://issuer.test: ")
                    && error.contains(why),
                "{error}"
            );
            assert_eq!(m.state(0).unwrap().last_error.as_ref(), Some(&error));
            assert!(m.keys(0).is_none());
        }
        let mut m = KeyManager::new(&c.issuers);
        let doc = r#"{"issuer":"https://issuer.test","jwks_uri":"https://issuer.test/jwks"}"#;
        assert!(matches!(
            discover(&mut m, doc),
            FetchProgress::Next(FetchStep::Jwks, _)
        ));
    }

    #[test]
    fn a_jwks_with_no_usable_key_fails_with_the_first_reason() {
        let c = config();
        let mut m = KeyManager::new(&c.issuers);
        let jwks = br#"{"keys":[{"kty":"RSA","kid":"small","n":"AQAB","e":"AQAB"},{"kty":"OKP","crv":"Ed25519","kid":"short","x":"AAAA"}]}"#;
        let reply = CalloutReply {
            status: Some(200),
            body: jwks.to_vec(),
            ..CalloutReply::default()
        };
        let FetchProgress::Failed(error) = m.on_reply(0, FetchStep::Jwks, &reply, 1) else {
            panic!()
        };
        assert!(
            error.contains("no key usable with the allowed algorithms (2 skipped, first keys[0] (kid \"small\"): the RSA modulus has 17 bits"),
            "{error}"
        );
        // One good key among them is enough.
        let mut doc: serde_json::Value = serde_json::from_slice(jwks).unwrap();
        let good: serde_json::Value = serde_json::from_slice(&vectors().jwks).unwrap();
        doc["keys"]
            .as_array_mut()
            .unwrap()
            .push(good["keys"][0].clone());
        let reply = CalloutReply {
            status: Some(200),
            body: serde_json::to_vec(&doc).unwrap(),
            ..CalloutReply::default()
        };
        let FetchProgress::Loaded { keys, skipped } = m.on_reply(0, FetchStep::Jwks, &reply, 2)
        else {
            panic!()
        };
        assert_eq!((keys, skipped.len()), (1, 2), "{skipped:?}");
    }
}
