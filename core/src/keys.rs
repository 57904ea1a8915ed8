//! Key state per issuer and the fetch schedule: discovery → JWKS as a small
//! state machine. The glue dispatches the callouts it returns and feeds the
//! replies back; keys are refreshed on a period, refetched (rate-limited) when
//! an unknown `kid` shows up, and the last good keys survive a failed refresh.
//!
//! A discovery document without `jwks_uri` (optional in RFC 8414 and so in
//! UMA 2.0's `uma2-configuration`: a server that issues only opaque tokens
//! publishes no keys) loads all the same: its endpoints serve introspection,
//! the gateway's clients and UMA, and only a JWT of that issuer, which no key
//! can verify, is answered 503 `keys_unavailable` naming the cause.

use std::rc::Rc;

use serde::Deserialize;

use crate::cache::{digest, Digest};
use crate::callout::{Callout, CalloutError, CalloutReply, Url};
use crate::flight::{backoff, Flight, Marker};
use crate::issuer::{Issuer, KeySource};
use crate::jwks::KeySet;
use crate::services::SharedStore;
use crate::shared_cache::Reader;

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
    /// The fetch of discovery and JWKS, in flight or not.
    pub flight: Flight,
    /// Unknown-kid refetch allowance: tokens left, as of `refetch_credit_at`.
    refetch_credit: u64,
    refetch_credit_at: u64,
    /// Kids that requests wait for in the fetch in flight.
    wanted_kids: Vec<Digest>,
    /// Kids the last fetches did not find, until when they are not refetched for.
    absent_kids: Vec<(Digest, u64)>,
    /// The endpoints the last discovery document named.
    endpoints: Endpoints,
    /// The last discovery document (here or another worker's) named no
    /// `jwks_uri`: the issuer publishes no keys, and `keys` is `None`.
    no_jwks_uri: bool,
    /// When the keys in use were fetched (here or by another worker).
    fetched_at: Option<u64>,
}

/// What one reply means for the fetch in progress.
#[derive(Debug, PartialEq)]
pub enum FetchProgress {
    Next(FetchStep, Callout),
    Loaded {
        keys: usize,
        skipped: Vec<String>,
    },
    /// The discovery document loaded and names no `jwks_uri`: its endpoints
    /// are in use, and the issuer has no keys until a refresh finds some.
    NoJwksUri,
    Failed(String),
}

/// What a tick finds to do for one issuer.
#[derive(Debug, PartialEq)]
pub enum Due {
    /// Start this fetch.
    Fetch(usize, FetchStep, Callout),
    /// Another worker fetched newer keys, now loaded here too: the requests
    /// waiting for this issuer's keys may go on.
    Adopted(usize, FetchProgress),
}

/// What a request that lacks keys (or the key its `kid` names) may do.
#[derive(Debug, PartialEq)]
pub enum KeyWait {
    /// Another worker's newer keys were just loaded: look again.
    Adopted,
    /// Start this fetch and wait for it, until `until`.
    Fetch {
        step: FetchStep,
        callout: Callout,
        until: u64,
    },
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
        self.flight.awaiting(now)
    }

    fn may_start_for_request(&self, now: u64) -> bool {
        self.flight.quiet_for(REQUEST_FETCH_INTERVAL_SECONDS, now)
    }

    /// Starts a fetch, unless another worker is fetching these keys: then
    /// `Err(until)`, when that worker's fetch is given up on.
    fn start(
        &mut self,
        issuer: &Issuer,
        shared: &Sharing,
        now: u64,
    ) -> Result<Option<(FetchStep, Callout, u64)>, u64> {
        let Some((step, callout)) = first_callout(issuer) else {
            return Ok(None);
        };
        let until = in_flight_deadline(issuer, now);
        self.flight
            .start(Some(&marker(issuer, shared)), until, now)?;
        Ok(Some((step, callout, until)))
    }

    fn wait(&mut self, kid: Option<Digest>, now: u64) -> KeyWait {
        if let Some(kid) = kid {
            if !self.wanted_kids.contains(&kid) && self.wanted_kids.len() < ABSENT_KIDS_REMEMBERED {
                self.wanted_kids.push(kid);
            }
        }
        KeyWait::Wait {
            until: self.flight.awaited_until(now).unwrap_or(now),
        }
    }

    fn unavailable(&self, issuer: &Issuer) -> KeyWait {
        if self.no_jwks_uri {
            return KeyWait::Unavailable(format!(
                "the {} document of {} names no jwks_uri: the issuer publishes no signing keys, so its JWTs cannot be verified here (give the issuer `jwks_uri` or `jwks`, or `\"mode\": \"introspect\"` to introspect its JWTs)",
                discovery_kind(issuer),
                issuer.issuer
            ));
        }
        KeyWait::Unavailable(match self.flight.last_error() {
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

/// Where the issuer's key fetch is claimed in shared data.
fn marker<'a>(issuer: &Issuer, shared: &'a Sharing) -> Marker<'a> {
    let id = shared_id(issuer);
    Marker {
        store: shared.store.as_ref(),
        key: shared_key(&id, "in_flight"),
        subject: id,
        worker: shared.worker,
    }
}

pub struct KeyManager {
    /// The issuers' settings, index for index with `issuers`.
    settings: Vec<Issuer>,
    issuers: Vec<IssuerKeys>,
    shared: Sharing,
}

/// Shared data, where one worker's fetched keys serve every worker, and this
/// worker's id in the in-flight markers there.
#[derive(Clone)]
pub struct Sharing {
    pub store: Rc<dyn SharedStore>,
    pub worker: u64,
}

const SHARED_PREFIX: &str = "oauth_pep.keys";
const SHARED_MAGIC: &[u8; 4] = b"OPK2";

/// Names an issuer's keys in shared data by what they are fetched from (the
/// issuer, its key source and the cluster: [`Issuer::fetch_fingerprint`]),
/// not by the index in one configuration: configurations that fetch the same
/// keys the same way share them, and no other.
fn shared_id(issuer: &Issuer) -> Digest {
    issuer.fetch_fingerprint()
}

fn shared_key(id: &Digest, what: &str) -> String {
    let hex: String = id.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{SHARED_PREFIX}.{hex}.{what}")
}

/// The endpoints of a discovery document the filter uses besides `jwks_uri`
/// (an unusable one is left out, and reported when a request needs it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub introspection: Option<Url>,
    pub token: Option<Url>,
    /// UMA 2.0's permission endpoint (`uma2-configuration`).
    pub permission: Option<Url>,
}

impl Endpoints {
    fn all(&self) -> [&Option<Url>; 3] {
        [&self.introspection, &self.token, &self.permission]
    }
}

/// The JWKS as fetched, when, and the discovery document's endpoints: what
/// another worker needs to load the same keys. No JWKS at all (empty; a
/// fetched one never is) records a document that names no `jwks_uri`.
fn encode_shared(fetched_at: u64, endpoints: &Endpoints, jwks: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + jwks.len());
    out.extend_from_slice(SHARED_MAGIC);
    out.extend_from_slice(&fetched_at.to_be_bytes());
    for endpoint in endpoints.all() {
        let text = endpoint
            .as_ref()
            .map(|u| format!("{}://{}{}", u.scheme, u.authority, u.path))
            .unwrap_or_default();
        let len = u16::try_from(text.len()).unwrap_or(0);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(text.as_bytes().get(..usize::from(len)).unwrap_or_default());
    }
    out.extend_from_slice(jwks);
    out
}

fn decode_shared(bytes: &[u8]) -> Option<(u64, Endpoints, &[u8])> {
    let mut r = Reader::new(bytes);
    if r.take(4)? != SHARED_MAGIC {
        return None;
    }
    let fetched_at = r.u64()?;
    let mut endpoint = || -> Option<Option<Url>> {
        let len = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
        let text = std::str::from_utf8(r.take(usize::from(len))?).ok()?;
        Some((!text.is_empty()).then(|| Url::parse(text).ok()).flatten())
    };
    let endpoints = Endpoints {
        introspection: endpoint()?,
        token: endpoint()?,
        permission: endpoint()?,
    };
    Some((fetched_at, endpoints, r.rest()))
}

/// OpenID Connect Discovery requires `jwks_uri`; RFC 8414 (and so UMA 2.0's
/// `uma2-configuration`) does not. Either way a document without it loads.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: Option<String>,
    introspection_endpoint: Option<String>,
    token_endpoint: Option<String>,
    permission_endpoint: Option<String>,
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
            shared: Sharing {
                store: Rc::new(crate::services::NoSharing),
                worker: 0,
            },
        }
    }

    /// Where fetched keys are shared with the other workers.
    pub fn share_through(&mut self, shared: Sharing) {
        self.shared = shared;
    }

    /// Loads the keys another worker fetched, if they are newer than ours
    /// and not due for a refresh.
    fn adopt(&mut self, issuer: usize, now: u64) -> Option<FetchProgress> {
        let (Some(settings), Some(state)) =
            (self.settings.get(issuer), self.issuers.get_mut(issuer))
        else {
            return None;
        };
        if matches!(settings.source, KeySource::Static(_) | KeySource::None) {
            return None;
        }
        let id = shared_id(settings);
        // The small version key first: the JWKS itself is copied only when newer.
        let (version, _) = self.shared.store.get(&shared_key(&id, "version"))?;
        let fetched_at = u64::from_be_bytes(version.get(..8)?.try_into().ok()?);
        if state.fetched_at.is_some_and(|ours| ours >= fetched_at)
            || fetched_at.saturating_add(settings.refresh_seconds) <= now
        {
            return None;
        }
        let (bytes, _) = self.shared.store.get(&shared_key(&id, "jwks"))?;
        let (fetched_at, endpoints, jwks) = decode_shared(&bytes)?;
        if jwks.is_empty() {
            state.endpoints = endpoints;
            return Some(published_no_keys(state, settings, fetched_at));
        }
        let (keys, skipped) = settings.keys_from_jwks(jwks).ok()?;
        if keys.is_empty() {
            return None;
        }
        state.endpoints = endpoints;
        Some(loaded(state, settings, keys, skipped, fetched_at, now))
    }

    /// How many issuers there are.
    pub fn len(&self) -> usize {
        self.issuers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    pub fn keys(&self, issuer: usize) -> Option<&Rc<KeySet>> {
        self.issuers.get(issuer)?.keys.as_ref()
    }

    /// The `introspection_endpoint` of the issuer's last discovery document.
    pub fn discovered_introspection_endpoint(&self, issuer: usize) -> Option<&Url> {
        self.issuers.get(issuer)?.endpoints.introspection.as_ref()
    }

    /// The endpoints of the issuer's last discovery document.
    pub fn discovered(&self, issuer: usize) -> Option<&Endpoints> {
        Some(&self.issuers.get(issuer)?.endpoints)
    }

    /// Whether the issuer's fetch has settled once: keys are loaded, or a
    /// discovery document that names no `jwks_uri` is. Its endpoints are
    /// then known (or known to be absent).
    pub fn settled(&self, issuer: usize) -> bool {
        self.issuers
            .get(issuer)
            .is_some_and(|state| state.keys.is_some() || state.no_jwks_uri)
    }

    pub fn state(&self, issuer: usize) -> Option<&IssuerKeys> {
        self.issuers.get(issuer)
    }

    /// What is due now: keys another worker fetched to load, and fetches
    /// (first load, retries, periodic refresh), marked in flight, that no
    /// other worker is making.
    pub fn due(&mut self, now: u64) -> Vec<Due> {
        let mut due = Vec::new();
        for index in 0..self.issuers.len() {
            if let Some(progress) = self.adopt(index, now) {
                due.push(Due::Adopted(index, progress));
                continue;
            }
            let (Some(state), Some(issuer)) =
                (self.issuers.get_mut(index), self.settings.get(index))
            else {
                continue;
            };
            if state.awaiting(now) || !state.flight.retry_due(now) {
                continue;
            }
            if let Ok(Some((step, callout, _))) = state.start(issuer, &self.shared, now) {
                due.push(Due::Fetch(index, step, callout));
            }
        }
        due
    }

    /// A request needs the keys of `issuer`, which have never loaded: wait
    /// for the fetch in flight, or start one (at most one a second), or give
    /// the reason they are unavailable.
    pub fn load_for_request(&mut self, issuer: usize, now: u64) -> KeyWait {
        if self.adopt(issuer, now).is_some() {
            return KeyWait::Adopted;
        }
        let (Some(settings), Some(state)) =
            (self.settings.get(issuer), self.issuers.get_mut(issuer))
        else {
            return KeyWait::Unavailable("unknown issuer".into());
        };
        // The server said it has no keys: no fetch before the next refresh.
        if state.no_jwks_uri {
            return state.unavailable(settings);
        }
        if state.awaiting(now) {
            return state.wait(None, now);
        }
        if state.may_start_for_request(now) {
            match state.start(settings, &self.shared, now) {
                Ok(Some((step, callout, until))) => {
                    return KeyWait::Fetch {
                        step,
                        callout,
                        until,
                    }
                }
                Err(until) => return KeyWait::Wait { until },
                Ok(None) => {}
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
        if self.adopt(issuer, now).is_some() {
            return KeyWait::Adopted;
        }
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
            return state.wait(Some(kid), now);
        }
        state.absent_kids.retain(|(_, until)| now < *until);
        // After a failed fetch, the requests that waited for it get their
        // 503 rather than each starting another fetch at once.
        let refetch = !state.absent_kids.iter().any(|(k, _)| *k == kid)
            && (state.flight.last_error().is_none() || state.may_start_for_request(now))
            && state.take_refetch_credit(settings.unknown_kid_refetch_seconds, now);
        if refetch {
            match state.start(settings, &self.shared, now) {
                Ok(Some((step, callout, until))) => {
                    state.wanted_kids.push(kid);
                    return KeyWait::Fetch {
                        step,
                        callout,
                        until,
                    };
                }
                Err(until) => return KeyWait::Wait { until },
                Ok(None) => {}
            }
        }
        if state.flight.last_error().is_some() {
            state.unavailable(settings)
        } else {
            KeyWait::KidUnknown
        }
    }

    /// When the fetch in flight for `issuer` is given up on, if one is.
    pub fn awaited_until(&self, issuer: usize, now: u64) -> Option<u64> {
        self.issuers.get(issuer)?.flight.awaited_until(now)
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
        let jwks = body.as_ref().ok().copied();
        let outcome = interpret(settings, step, body);
        let id = shared_id(settings);
        let store = self.shared.store.as_ref();
        let marker = marker(settings, &self.shared);
        match outcome {
            Ok(Interpreted::Next(next_step, callout, endpoints)) => {
                state.endpoints = *endpoints;
                // The document names a jwks_uri (again): whatever the JWKS
                // fetch gives is the news now.
                state.no_jwks_uri = false;
                FetchProgress::Next(next_step, callout)
            }
            Ok(Interpreted::NoJwksUri(endpoints)) => {
                state.endpoints = *endpoints;
                let record = encode_shared(now, &state.endpoints, &[]);
                if store.set(&shared_key(&id, "jwks"), &record, None).is_ok() {
                    let _ = store.set(&shared_key(&id, "version"), &now.to_be_bytes(), None);
                }
                let progress = published_no_keys(state, settings, now);
                state
                    .flight
                    .succeeded(Some(&marker), now.saturating_add(settings.refresh_seconds));
                progress
            }
            Ok(Interpreted::Keys(keys, skipped)) => {
                // Published for the other workers before the marker goes.
                let record = encode_shared(now, &state.endpoints, jwks.unwrap_or_default());
                // If the host refuses, each worker fetches for itself, as
                // it would without shared data.
                if store.set(&shared_key(&id, "jwks"), &record, None).is_ok() {
                    let _ = store.set(&shared_key(&id, "version"), &now.to_be_bytes(), None);
                }
                let progress = loaded(state, settings, keys, skipped, now, now);
                state
                    .flight
                    .succeeded(Some(&marker), now.saturating_add(settings.refresh_seconds));
                progress
            }
            Err(why) => {
                state.wanted_kids.clear();
                // While older keys are still in use a failed refresh is no
                // emergency; a first load retries fast.
                let delay = if state.keys.is_some() {
                    REFRESH_RETRY_SECONDS.min(settings.refresh_seconds)
                } else {
                    backoff(state.flight.failures().saturating_add(1))
                };
                state.flight.failed(Some(&marker), why.clone(), delay, now);
                FetchProgress::Failed(why)
            }
        }
    }
}

/// Puts keys fetched at `fetched_at` (here or by another worker) in use.
fn loaded(
    state: &mut IssuerKeys,
    settings: &Issuer,
    keys: KeySet,
    skipped: Vec<String>,
    fetched_at: u64,
    now: u64,
) -> FetchProgress {
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
    state.no_jwks_uri = false;
    state.fetched_at = Some(fetched_at);
    state
        .flight
        .adopted(fetched_at.saturating_add(settings.refresh_seconds));
    FetchProgress::Loaded {
        keys: count,
        skipped,
    }
}

/// A discovery document fetched at `fetched_at` (here or by another worker)
/// named no `jwks_uri`: its endpoints are in use, and the keys of an earlier
/// document are dropped, as the server no longer publishes them.
fn published_no_keys(state: &mut IssuerKeys, settings: &Issuer, fetched_at: u64) -> FetchProgress {
    state.keys = None;
    state.no_jwks_uri = true;
    state.wanted_kids.clear();
    state.fetched_at = Some(fetched_at);
    state
        .flight
        .adopted(fetched_at.saturating_add(settings.refresh_seconds));
    FetchProgress::NoJwksUri
}

enum Interpreted {
    /// The next step, and the discovery document's endpoints.
    Next(FetchStep, Callout, Box<Endpoints>),
    /// A discovery document without `jwks_uri`, and its endpoints.
    NoJwksUri(Box<Endpoints>),
    Keys(KeySet, Vec<String>),
}

/// How messages name the issuer's discovery document.
fn discovery_kind(issuer: &Issuer) -> &'static str {
    match &issuer.source {
        KeySource::Discovery(url) if url.path.ends_with("/.well-known/uma2-configuration") => {
            "UMA discovery"
        }
        KeySource::Discovery(url)
            if url
                .path
                .ends_with("/.well-known/oauth-authorization-server") =>
        {
            "OAuth authorization server metadata"
        }
        _ => "OIDC discovery",
    }
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
        FetchStep::Discovery => discovery_kind(issuer),
        FetchStep::Jwks => "JWKS",
    };
    let body = body.map_err(|e| format!("{what} fetch for {}: {e}", issuer.issuer))?;
    match step {
        FetchStep::Discovery => {
            let doc: Discovery = serde_json::from_slice(body).map_err(|e| {
                format!(
                    "{what} for {}: not a document with an issuer ({e})",
                    issuer.issuer
                )
            })?;
            // OpenID Connect Discovery §4.3 (and RFC 8414 §3.3): a document
            // for another issuer must not supply this issuer's keys.
            if doc.issuer != issuer.issuer {
                let named: String = doc.issuer.chars().take(200).collect();
                return Err(format!(
                    "{what} for {}: the document is for issuer {named:?}, not the configured one",
                    issuer.issuer
                ));
            }
            // An unusable endpoint is reported when a token needs it.
            let url_of = |u: Option<String>| u.and_then(|u| Url::parse(&u).ok());
            let endpoints = Endpoints {
                introspection: url_of(doc.introspection_endpoint),
                token: url_of(doc.token_endpoint),
                permission: url_of(doc.permission_endpoint),
            };
            let Some(jwks_uri) = doc.jwks_uri else {
                return Ok(Interpreted::NoJwksUri(Box::new(endpoints)));
            };
            let url = Url::parse(&jwks_uri)
                .map_err(|e| format!("{what} for {}: jwks_uri {e}", issuer.issuer))?;
            Ok(Interpreted::Next(
                FetchStep::Jwks,
                Callout::get(&issuer.upstream, url, issuer.fetch_timeout_ms),
                Box::new(endpoints),
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
            &|_| None,
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
                "not a document with an issuer (missing field `issuer`",
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
            assert_eq!(
                m.state(0).unwrap().flight.last_error(),
                Some(error.as_str())
            );
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

    #[test]
    fn one_worker_fetches_and_the_others_load_its_keys_from_shared_data() {
        let c = config();
        let store: Rc<crate::services::testing::MemoryStore> = Rc::default();
        let workers: Vec<KeyManager> = (1..=2)
            .map(|worker| {
                let mut m = KeyManager::new(&c.issuers);
                m.share_through(Sharing {
                    store: store.clone(),
                    worker,
                });
                m
            })
            .collect();
        let [mut first, mut second] = <[KeyManager; 2]>::try_from(workers).ok().unwrap();
        let now = 100;
        assert!(matches!(
            first.due(now).as_slice(),
            [Due::Fetch(0, FetchStep::Discovery, _)]
        ));
        // The second worker sees the first one's marker: no fetch of its own,
        // and a request there waits.
        assert!(second.due(now).is_empty());
        assert!(matches!(
            second.load_for_request(0, now),
            KeyWait::Wait { .. }
        ));
        let doc = r#"{"issuer":"https://issuer.test","jwks_uri":"https://issuer.test/jwks","introspection_endpoint":"https://issuer.test/introspect"}"#;
        let reply = |body: &str| CalloutReply {
            status: Some(200),
            body: body.as_bytes().to_vec(),
            ..CalloutReply::default()
        };
        assert!(matches!(
            first.on_reply(0, FetchStep::Discovery, &reply(doc), now),
            FetchProgress::Next(FetchStep::Jwks, _)
        ));
        let jwks = String::from_utf8(vectors().jwks).unwrap();
        assert!(matches!(
            first.on_reply(0, FetchStep::Jwks, &reply(&jwks), now),
            FetchProgress::Loaded { .. }
        ));
        // Its next tick loads the same keys and the introspection endpoint.
        let due = second.due(now + 1);
        assert!(
            matches!(
                due.as_slice(),
                [Due::Adopted(0, FetchProgress::Loaded { .. })]
            ),
            "{due:?}"
        );
        assert_eq!(
            second.keys(0).map(|k| k.len()),
            first.keys(0).map(|k| k.len())
        );
        assert_eq!(
            second
                .discovered_introspection_endpoint(0)
                .map(|u| u.path.as_str()),
            Some("/introspect")
        );
        // Nothing newer: nothing to load, nothing due until the refresh.
        assert!(second.due(now + 2).is_empty());
        // At the refresh, one of them fetches again; the other waits for it.
        let refresh = now + 300;
        assert!(matches!(second.due(refresh).as_slice(), [Due::Fetch(..)]));
        assert!(first.due(refresh).is_empty());
    }

    #[test]
    fn a_discovery_document_without_jwks_uri_loads_is_shared_and_may_gain_keys() {
        let c = Config::from_json(
            br#"{"issuers":[{"issuer":"https://issuer.test","audiences":["api"],"discovery":"uma2-configuration","upstream":"as"}]}"#,
            &|_| None,
        )
        .unwrap();
        let store: Rc<crate::services::testing::MemoryStore> = Rc::default();
        let worker = |worker| {
            let mut m = KeyManager::new(&c.issuers);
            m.share_through(Sharing {
                store: store.clone(),
                worker,
            });
            m
        };
        let (mut first, mut second) = (worker(1), worker(2));
        let now = 100;
        assert!(matches!(
            first.due(now).as_slice(),
            [Due::Fetch(0, FetchStep::Discovery, _)]
        ));
        let reply = |body: &str| CalloutReply {
            status: Some(200),
            body: body.as_bytes().to_vec(),
            ..CalloutReply::default()
        };
        let doc =
            r#"{"issuer":"https://issuer.test","permission_endpoint":"https://issuer.test/perm"}"#;
        assert_eq!(
            first.on_reply(0, FetchStep::Discovery, &reply(doc), now),
            FetchProgress::NoJwksUri
        );
        assert!(first.settled(0) && first.keys(0).is_none());
        let KeyWait::Unavailable(cause) = first.load_for_request(0, now + 1) else {
            panic!("a request fetched again")
        };
        assert!(
            cause
                .starts_with("the UMA discovery document of https://issuer.test names no jwks_uri"),
            "{cause}"
        );
        // The other worker takes the document from shared data.
        assert!(matches!(
            second.due(now + 1).as_slice(),
            [Due::Adopted(0, FetchProgress::NoJwksUri)]
        ));
        assert!(second.settled(0));
        assert_eq!(
            second
                .discovered(0)
                .and_then(|e| e.permission.as_ref())
                .map(|u| u.path.as_str()),
            Some("/perm")
        );
        // At the refresh the server publishes keys: they load.
        let refresh = now + 300;
        assert!(matches!(
            first.due(refresh).as_slice(),
            [Due::Fetch(0, FetchStep::Discovery, _)]
        ));
        let doc = r#"{"issuer":"https://issuer.test","jwks_uri":"https://issuer.test/jwks"}"#;
        assert!(matches!(
            first.on_reply(0, FetchStep::Discovery, &reply(doc), refresh),
            FetchProgress::Next(FetchStep::Jwks, _)
        ));
        let jwks = String::from_utf8(vectors().jwks).unwrap();
        assert!(matches!(
            first.on_reply(0, FetchStep::Jwks, &reply(&jwks), refresh),
            FetchProgress::Loaded { .. }
        ));
        assert!(first.keys(0).is_some());
    }

    #[test]
    fn keys_fetched_through_another_cluster_are_not_adopted() {
        // Issue 18: the shared name was the issuer and its key URL, so a
        // second listener fetching the same issuer through another cluster
        // (another server) took the first one's keys, and the other way round.
        let other = Config::from_json(
            br#"{"issuers":[{"issuer":"https://issuer.test","audiences":["api"],"discovery":true,"upstream":"as-b"}]}"#,
            &|_| None,
        )
        .unwrap();
        let store: Rc<crate::services::testing::MemoryStore> = Rc::default();
        let with = |c: &Config, worker| {
            let mut m = KeyManager::new(&c.issuers);
            m.share_through(Sharing {
                store: store.clone(),
                worker,
            });
            m
        };
        let (mut a, mut b, mut a2) = (with(&config(), 1), with(&other, 2), with(&config(), 3));
        let now = 100;
        assert!(matches!(
            a.due(now).as_slice(),
            [Due::Fetch(0, FetchStep::Discovery, _)]
        ));
        assert!(
            matches!(
                b.due(now).as_slice(),
                [Due::Fetch(0, FetchStep::Discovery, _)]
            ),
            "not held back by the other cluster's marker"
        );
        assert!(a2.due(now).is_empty(), "the same settings share one fetch");
        let doc = r#"{"issuer":"https://issuer.test","jwks_uri":"https://issuer.test/jwks"}"#;
        let reply = |body: &str| CalloutReply {
            status: Some(200),
            body: body.as_bytes().to_vec(),
            ..CalloutReply::default()
        };
        let _ = a.on_reply(0, FetchStep::Discovery, &reply(doc), now);
        let jwks = String::from_utf8(vectors().jwks).unwrap();
        assert!(matches!(
            a.on_reply(0, FetchStep::Jwks, &reply(&jwks), now),
            FetchProgress::Loaded { .. }
        ));
        assert!(
            b.due(now + 1).is_empty(),
            "b's own fetch is still in flight"
        );
        assert!(b.keys(0).is_none(), "a's keys are not b's");
        assert!(matches!(
            a2.due(now + 1).as_slice(),
            [Due::Adopted(0, FetchProgress::Loaded { .. })]
        ));
    }
}
