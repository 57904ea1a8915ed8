//! The proxy-wasm glue: reads request facts, asks the core for a verdict and
//! carries it out (headers, local replies, callouts, ticks). No decisions here.
//!
//! Host calls go through `proxy_wasm::hostcalls`, which return errors, never
//! through the SDK's convenience methods, which unwrap them (a panic kills the
//! VM, and with it this Envoy worker's filter). Once configured, [`Shared`]
//! reaches the host only through [`host::Door`], so the routing below is
//! tested natively against a recording fake (`tests.rs`).
//!
//! # Callouts and waiting requests
//!
//! Every callout in flight is in one table, by token, with what to do with its
//! answer ([`Resume`]), whichever context receives it. The Rust SDK delivers a
//! reply to the context that was running when the call was dispatched, and
//! drops it if that context is gone; so key fetches, which many requests may
//! wait for, are dispatched only by the root context (which lives as long as
//! the filter): a request that needs keys queues the fetch and parks itself,
//! the root dispatches the queue on its next tick, and when the fetch settles
//! the root wakes every request parked on that issuer and decides each again.
//! A parked request whose wait outlives the fetch deadline gets a 503. Acting
//! on another request (waking it) happens only from root callbacks: from a
//! request's callback the SDK holds its context table, and re-entering it for
//! another request would panic.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

mod host;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use host::Door;
use log::{error, info, warn};
use oauth_pep_core::cache::Digest;
use oauth_pep_core::callout::{Callout, CalloutReply};
use oauth_pep_core::config::{Config, Crypto, LogLevel as ConfigLogLevel};
use oauth_pep_core::engine::{
    authorize_knowing, client_token_waited_too_long, introspection_waited_too_long,
    resume as resume_callout, waited_too_long, Allow, Known, Request, Resume, Resumed, State,
    Verdict,
};
use oauth_pep_core::keys::{Due, FetchProgress};
use oauth_pep_core::metrics::{
    CacheCounts, CalloutKind, CalloutOutcome, Catalogue, Counter, Gauge, Histogram,
};
use oauth_pep_core::response::Denial;
use oauth_pep_core::services::Random;
use oauth_pep_core::token_client::Fetched;
use oauth_pep_core::verify::{self_test, HostVerifier};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

/// How soon the root dispatches a fetch a request asked for, and the
/// granularity of refreshes, retries and wait deadlines.
const TICK: Duration = Duration::from_millis(200);
/// The tick right after a request queued a callout for the root: the soonest
/// the root can dispatch it.
const DISPATCH_SOON: Duration = Duration::from_millis(1);
/// The tick while requests wait for another worker's introspection answer,
/// which only shows in shared data: how often they look.
const POLL_SHARED: Duration = Duration::from_millis(20);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

type Headers = Vec<(String, String)>;

/// A callout in flight: what its answer is for (the core's [`Resume`]), the
/// request that waits for it alone (none for a key fetch, which wakes every
/// request parked on its issuer), and when it was dispatched (ms).
struct InFlight {
    resume: Resume,
    request: Option<(u32, Headers)>,
    started_ms: u64,
}

fn kind(resume: &Resume) -> CalloutKind {
    match resume {
        Resume::Keys { step, .. } => CalloutKind::from(*step),
        Resume::Pdp(_) => CalloutKind::Pdp,
        Resume::Introspect(_) => CalloutKind::Introspection,
        Resume::ClientToken { .. } => CalloutKind::Token,
        Resume::Ticket(_) => CalloutKind::Permission,
    }
}

/// What a parked request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The keys (or discovery document) of an issuer.
    Keys(usize),
    /// The introspection of the token with this digest.
    Introspection { issuer: usize, key: Digest },
    /// The token of one of the gateway's clients.
    ClientToken(usize),
}

/// A request paused until what it waits for settles, or `until`.
struct Parked {
    wait: Wait,
    until: u64,
    headers: Headers,
}

/// Whether the request may go on (Continue) or waits / was answered (Pause).
enum Outcome {
    Proceed,
    Hold,
}

/// What a VM shares between its root context and its requests, and the
/// host it acts through (the proxy-wasm host, or a fake in tests).
struct Shared<H> {
    config: Config,
    state: RefCell<State>,
    /// Every callout in flight, by token, whichever context receives it.
    callouts: RefCell<HashMap<u32, InFlight>>,
    parked: RefCell<HashMap<u32, Parked>>,
    /// Callouts requests asked for (key fetches, introspections), for the
    /// root to dispatch, so that their answers reach every request waiting.
    root_queue: RefCell<Vec<(Callout, Resume)>>,
    /// The tick period last set.
    tick: Cell<Duration>,
    /// Whether a rewritten `:path` needs the route picked again.
    envoy: bool,
    host: H,
    cache_counts: RefCell<CacheCounts>,
}

impl<H: Door> Shared<H> {
    /// `state` is the core's state for `config`, with the host's services.
    fn new(config: Config, envoy: bool, host: H, state: State) -> Self {
        for issuer in 0..config.issuers.len() {
            let keys = state.keys.keys(issuer).map_or(0, |keys| keys.len());
            host.set(Gauge::KeysLoaded { issuer }, keys as u64);
        }
        Shared {
            config,
            state: RefCell::new(state),
            callouts: RefCell::default(),
            parked: RefCell::default(),
            root_queue: RefCell::default(),
            tick: Cell::new(TICK),
            envoy,
            host,
            cache_counts: RefCell::default(),
        }
    }

    /// Decides request `id`, the effective context, and carries it out;
    /// `known` is the outcome of the introspection it waited for.
    fn decide(&self, id: u32, headers: Headers, known: Option<&Known>) -> Outcome {
        let verdict = {
            let request = Request {
                method: header(&headers, ":method").unwrap_or_default(),
                path: header(&headers, ":path").unwrap_or_default(),
                headers: &headers,
            };
            authorize_knowing(
                &self.config,
                &mut self.state.borrow_mut(),
                &request,
                known,
                self.host.now(),
            )
        };
        self.carry_out(id, headers, verdict)
    }

    fn carry_out(&self, id: u32, headers: Headers, verdict: Verdict) -> Outcome {
        // Every cache lookup happens in a decision, which ends here.
        self.cache_counts
            .borrow_mut()
            .report(&self.state.borrow(), &self.host);
        match verdict {
            Verdict::Allow(allow) => {
                self.host.increment(Counter::Allowed, 1);
                apply(&self.host, &allow, self.envoy);
                Outcome::Proceed
            }
            Verdict::Deny(denial) => {
                self.deny(&headers, &denial);
                Outcome::Hold
            }
            Verdict::Callout {
                callout,
                resume: resume @ Resume::Keys { issuer, .. },
            } => {
                let until = self
                    .state
                    .borrow()
                    .keys
                    .awaited_until(issuer, self.host.now())
                    .unwrap_or_default();
                self.queue_for_root(*callout, resume);
                self.park(id, Wait::Keys(issuer), until, headers);
                Outcome::Hold
            }
            Verdict::Callout {
                callout,
                resume: Resume::Introspect(pending),
            } => {
                let wait = Wait::Introspection {
                    issuer: pending.issuer,
                    key: pending.key,
                };
                let until = pending.until;
                self.queue_for_root(*callout, Resume::Introspect(pending));
                self.park(id, wait, until, headers);
                Outcome::Hold
            }
            Verdict::Callout {
                callout,
                resume: resume @ Resume::ClientToken { client },
            } => {
                let until = self
                    .state
                    .borrow()
                    .clients
                    .awaited_until(client, self.host.now())
                    .unwrap_or_default();
                self.queue_for_root(*callout, resume);
                self.park(id, Wait::ClientToken(client), until, headers);
                Outcome::Hold
            }
            Verdict::WaitForClientToken { client, until } => {
                self.park(id, Wait::ClientToken(client), until, headers);
                Outcome::Hold
            }
            Verdict::WaitForKeys { issuer, until } => {
                self.park(id, Wait::Keys(issuer), until, headers);
                Outcome::Hold
            }
            Verdict::WaitForIntrospection { issuer, key, until } => {
                self.park(id, Wait::Introspection { issuer, key }, until, headers);
                Outcome::Hold
            }
            Verdict::Callout { callout, resume } => self
                .dispatch(&callout, resume, Some((id, headers)))
                .unwrap_or(Outcome::Hold),
        }
    }

    /// Dispatches a callout, or, when the host refuses, lets the core decide
    /// what that means; the outcome is for `request` if that was decided now.
    fn dispatch(
        &self,
        callout: &Callout,
        resume: Resume,
        request: Option<(u32, Headers)>,
    ) -> Option<Outcome> {
        match self.host.dispatch(callout) {
            Ok(token) => {
                self.callouts.borrow_mut().insert(
                    token,
                    InFlight {
                        resume,
                        request,
                        started_ms: self.host.now_ms(),
                    },
                );
                None
            }
            Err(why) => {
                warn!("{} callout not dispatched: {why}", kind(&resume).label());
                self.count_callout(kind(&resume), CalloutOutcome::NotDispatched, None);
                self.settle(resume, request, Err(&why))
            }
        }
    }

    /// Feeds an answer (or a dispatch failure) to the core and carries out
    /// what follows: a verdict for the waiting request, the next step of a
    /// key fetch, or waking the requests parked on a settled one.
    fn settle(
        &self,
        resume: Resume,
        request: Option<(u32, Headers)>,
        answer: Result<&CalloutReply, &str>,
    ) -> Option<Outcome> {
        let resumed = resume_callout(
            &self.config,
            &mut self.state.borrow_mut(),
            resume,
            answer,
            self.host.now(),
        );
        match resumed {
            Resumed::Decided(verdict) => {
                let (id, headers) = request?;
                self.host.set_effective_context(id).ok()?;
                Some(self.carry_out(id, headers, verdict))
            }
            Resumed::Next { callout, resume } => self.dispatch(&callout, resume, None),
            Resumed::KeysSettled { issuer, progress } => {
                log_fetch(&self.config, issuer, &progress);
                self.count_refresh(issuer, &progress);
                self.wake(|wait| wait == Wait::Keys(issuer), None);
                None
            }
            Resumed::ClientTokenSettled { client, fetched } => {
                let name = self
                    .config
                    .clients
                    .get(client)
                    .map_or("?", |c| c.name.as_str());
                let ok = matches!(fetched, Fetched::Token { .. });
                match &fetched {
                    Fetched::Token { lifetime } => {
                        info!("got a token for client {name}, usable for {lifetime} s")
                    }
                    Fetched::Failed(why) => warn!("{why}"),
                }
                self.host.increment(Counter::ClientToken { client, ok }, 1);
                self.wake(|wait| wait == Wait::ClientToken(client), None);
                None
            }
            Resumed::Introspected {
                issuer,
                known,
                result,
            } => {
                self.host
                    .increment(Counter::Introspection { issuer, result }, 1);
                let key = known.0;
                self.wake(
                    |wait| matches!(wait, Wait::Introspection { key: k, .. } if k == key),
                    Some(&known),
                );
                None
            }
        }
    }

    fn park(&self, id: u32, wait: Wait, until: u64, headers: Headers) {
        self.parked.borrow_mut().insert(
            id,
            Parked {
                wait,
                until,
                headers,
            },
        );
    }

    /// Queues a callout for the root and has the root tick at once.
    fn queue_for_root(&self, callout: Callout, resume: Resume) {
        self.root_queue.borrow_mut().push((callout, resume));
        self.set_tick(DISPATCH_SOON);
    }

    fn set_tick(&self, period: Duration) {
        if self.tick.get() != period {
            self.tick.set(period);
            self.host.set_tick_period(period);
        }
    }

    /// Counts a callout that ended, with its latency if it was dispatched.
    fn count_callout(&self, kind: CalloutKind, outcome: CalloutOutcome, started_ms: Option<u64>) {
        self.host.increment(Counter::Callout(kind, outcome), 1);
        if let Some(started) = started_ms {
            let ms = self.host.now_ms().saturating_sub(started);
            self.host.record(Histogram::CalloutLatencyMs(kind), ms);
        }
    }

    fn count_refresh(&self, issuer: usize, progress: &FetchProgress) {
        let ok = match progress {
            FetchProgress::Loaded { keys, .. } => {
                self.host.set(Gauge::KeysLoaded { issuer }, *keys as u64);
                true
            }
            _ => false,
        };
        self.host.increment(Counter::KeyRefresh { issuer, ok }, 1);
    }

    /// Root only: the fetches that are due or that requests asked for.
    fn dispatch_fetches(&self) {
        let due = self.state.borrow_mut().keys.due(self.host.now());
        let mut fetches: Vec<(Callout, Resume)> = Vec::new();
        for due in due {
            match due {
                Due::Fetch(issuer, step, callout) => {
                    fetches.push((callout, Resume::Keys { issuer, step }))
                }
                Due::Adopted(issuer, progress) => {
                    if let FetchProgress::Loaded { keys, .. } = progress {
                        info!(
                            "loaded {keys} verification keys for {} that another worker fetched",
                            self.config
                                .issuers
                                .get(issuer)
                                .map_or("?", |i| i.issuer.as_str())
                        );
                        self.host.set(Gauge::KeysLoaded { issuer }, keys as u64);
                    }
                    self.wake(|wait| wait == Wait::Keys(issuer), None);
                }
            }
        }
        let (tokens, adopted) = self.state.borrow_mut().client_tokens_due(self.host.now());
        for client in adopted {
            self.wake(|wait| wait == Wait::ClientToken(client), None);
        }
        fetches.extend(
            tokens
                .into_iter()
                .map(|(client, callout)| (callout, Resume::ClientToken { client })),
        );
        fetches.append(&mut self.root_queue.borrow_mut());
        for (callout, resume) in fetches {
            self.dispatch(&callout, resume, None);
        }
    }

    /// Root only: what each tick does.
    fn on_tick(&self) {
        self.dispatch_fetches();
        self.poll_shared();
        self.expire_waits(self.host.now());
        let polling = self
            .parked
            .borrow()
            .values()
            .any(|p| self.waits_elsewhere(p));
        self.set_tick(if polling { POLL_SHARED } else { TICK });
    }

    /// Whether the request waits for a callout another worker makes, whose
    /// outcome only shows in shared data.
    fn waits_elsewhere(&self, parked: &Parked) -> bool {
        let state = self.state.borrow();
        match parked.wait {
            Wait::Introspection { key, .. } => !state.is_introspecting(&key),
            Wait::Keys(issuer) => state.keys.awaited_until(issuer, self.host.now()).is_none(),
            Wait::ClientToken(client) => state
                .clients
                .awaited_until(client, self.host.now())
                .is_none(),
        }
    }

    /// Root only: decides again the requests that wait for another worker's
    /// introspection or key fetch. Its answer shows in shared data; if it
    /// failed, its marker is gone and this worker asks (or answers 503).
    fn poll_shared(&self) {
        // Waiting again, a request keeps its first deadline.
        self.decide_again(|p| self.waits_elsewhere(p), None, true);
    }

    /// Feeds a callout's answer to whatever waits for it.
    fn on_reply(&self, token: u32, reply: &CalloutReply) {
        let Some(in_flight) = self.callouts.borrow_mut().remove(&token) else {
            return;
        };
        let kind = kind(&in_flight.resume);
        self.count_callout(kind, CalloutOutcome::of(reply), Some(in_flight.started_ms));
        if let Some(Outcome::Proceed) = self.settle(in_flight.resume, in_flight.request, Ok(reply))
        {
            self.host.resume_request();
        }
    }

    /// Root only: decides again every request parked on what settled.
    fn wake(&self, settled: impl Fn(Wait) -> bool, known: Option<&Known>) {
        self.decide_again(|p| settled(p.wait), known, false);
    }

    /// Root only: decides again the parked requests `pick` chooses.
    fn decide_again(
        &self,
        pick: impl Fn(&Parked) -> bool,
        known: Option<&Known>,
        keep_deadline: bool,
    ) {
        let ids: Vec<u32> = self
            .parked
            .borrow()
            .iter()
            .filter(|(_, p)| pick(p))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(parked) = self.parked.borrow_mut().remove(&id) else {
                continue;
            };
            if self.host.set_effective_context(id).is_err() {
                continue;
            }
            let outcome = self.decide(id, parked.headers, known);
            if keep_deadline {
                if let Some(again) = self.parked.borrow_mut().get_mut(&id) {
                    again.until = again.until.min(parked.until);
                }
            }
            if let Outcome::Proceed = outcome {
                self.host.resume_request();
            }
        }
    }

    /// Root only: answers the requests whose wait outlived its deadline.
    fn expire_waits(&self, now: u64) {
        let expired: Vec<(u32, Parked)> = {
            let mut parked = self.parked.borrow_mut();
            let ids: Vec<u32> = parked
                .iter()
                .filter(|(_, p)| p.until <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| parked.remove(&id).map(|p| (id, p)))
                .collect()
        };
        for (id, parked) in expired {
            if self.host.set_effective_context(id).is_ok() {
                let denial = match parked.wait {
                    Wait::Keys(issuer) => waited_too_long(&self.config, issuer),
                    Wait::Introspection { issuer, .. } => {
                        introspection_waited_too_long(&self.config, issuer)
                    }
                    Wait::ClientToken(client) => client_token_waited_too_long(&self.config, client),
                };
                self.deny(&parked.headers, &denial);
            }
        }
    }

    /// The request is over (answered, or reset by the client): nothing may
    /// act on it any more.
    fn forget(&self, id: u32) {
        self.parked.borrow_mut().remove(&id);
        self.callouts
            .borrow_mut()
            .retain(|_, f| !matches!(&f.request, Some((request, _)) if *request == id));
    }

    /// Answers the request, with one `key=value` log line: at `warn` for
    /// outages (the operator must act), `info` for a refused caller.
    fn deny(&self, headers: &Headers, denial: &Denial) {
        self.host.increment(Counter::denied(denial), 1);
        let request_id = header(headers, "x-request-id");
        let mut line = format!(
            "denied status={} reason={} request_id={} method={} path={}",
            denial.status(),
            denial.code(),
            log_value(request_id.unwrap_or("-")),
            log_value(header(headers, ":method").unwrap_or("-")),
            log_value(header(headers, ":path").unwrap_or("-")),
        );
        for (key, value) in denial.log_fields() {
            line.push_str(&format!(" {key}={}", log_value(&value)));
        }
        if denial.status() == 503 {
            warn!("{line}");
        } else {
            info!("{line}");
        }
        if self.envoy {
            self.host.set_reason_filter_state(denial.code());
        }
        self.host.send_response(&denial.render(
            &self.config.realm,
            request_id,
            self.config.error_body,
        ));
    }
}

/// A log value on one line: quoted when it has spaces or quotes, control
/// characters escaped, and cut at 512 bytes (a path can be 60 KiB).
fn log_value(value: &str) -> String {
    let mut cut = value;
    if cut.len() > 512 {
        let mut end = 512;
        while !cut.is_char_boundary(end) {
            end -= 1;
        }
        cut = cut.get(..end).unwrap_or("");
    }
    let plain = !cut.is_empty()
        && cut
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != '=');
    let mut out = String::with_capacity(cut.len() + 2);
    if plain {
        out.push_str(cut);
    } else {
        out.push('"');
        for c in cut.chars() {
            match c {
                '"' | '\\' => {
                    out.push('\\');
                    out.push(c);
                }
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    if cut.len() < value.len() {
        out.push_str("...");
    }
    out
}

fn apply(door: &impl Door, allow: &Allow, envoy: bool) {
    for name in &allow.remove_headers {
        door.remove_request_header(name);
    }
    for (name, value) in &allow.set_headers {
        door.set_request_header(name, value);
    }
    if let Some(path) = &allow.new_path {
        door.set_request_header(":path", path);
        if envoy {
            door.clear_route_cache();
        }
    }
}

fn log_fetch(config: &Config, issuer: usize, progress: &FetchProgress) {
    let name = config
        .issuers
        .get(issuer)
        .map_or("?", |i| i.issuer.as_str());
    match progress {
        FetchProgress::Loaded { keys, skipped } => {
            info!("loaded {keys} verification keys for {name}");
            for note in skipped {
                info!("skipped a key of {name}: {note}");
            }
        }
        FetchProgress::Failed(why) => warn!("key fetch failed: {why}"),
        FetchProgress::Next(..) => {}
    }
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared<host::Host>>>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(shared) = &self.shared {
            shared.on_reply(token, &host::callout_reply(num_headers, body_size));
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let json = host::plugin_configuration();
        let config = match Config::from_json(&json, &|name| std::env::var(name).ok()) {
            Ok(config) => config,
            Err(e) => {
                // Returning false makes Envoy refuse the filter instead of
                // running it half-configured.
                error!("oauth-pep: {e}");
                return false;
            }
        };
        proxy_wasm::set_log_level(match config.log_level {
            ConfigLogLevel::Trace => LogLevel::Trace,
            ConfigLogLevel::Debug => LogLevel::Debug,
            ConfigLogLevel::Info => LogLevel::Info,
            ConfigLogLevel::Warn => LogLevel::Warn,
            ConfigLogLevel::Error => LogLevel::Error,
            ConfigLogLevel::Critical => LogLevel::Critical,
        });
        for warning in &config.warnings {
            warn!("oauth-pep configuration: {warning}");
        }
        for note in &config.notes {
            info!("oauth-pep configuration: {note}");
        }
        let envoy = host::is_envoy();
        info!(
            "oauth-pep configured: {} issuer(s), on {}",
            config.issuers.len(),
            if envoy {
                "Envoy"
            } else {
                "a host that is not Envoy"
            }
        );
        let host = host::Host::new(&Catalogue::new(&config));
        let mut state = State::new(&config);
        state.use_random(Rc::new(host::HostRandom));
        let host_crypto = HostVerifier::new(host::verify_signature);
        let crypto = match (config.crypto, envoy) {
            (Crypto::Wasm, _) => Ok(false),
            (Crypto::Auto | Crypto::Host, true) => self_test(&host_crypto).map(|()| true),
            (_, false) => Err("the host has no verify_signature function (it is not Envoy)".into()),
        };
        let on_host = matches!(crypto, Ok(true));
        match crypto {
            Ok(true) => state.verifier = Box::new(host_crypto),
            Ok(false) => {}
            Err(why) if config.crypto == Crypto::Host => {
                error!("oauth-pep: `crypto: \"host\"` cannot be used: {why}");
                return false;
            }
            Err(why) if envoy => {
                warn!("oauth-pep: host crypto unusable, signatures are checked in wasm: {why}")
            }
            Err(_) => {}
        }
        info!(
            "oauth-pep: RS*/ES* signatures are checked by {}",
            if on_host {
                "the host (Envoy's BoringSSL)"
            } else {
                "pure Rust in wasm"
            }
        );
        let mut id = [0u8; 8];
        // Without randomness two workers could share an id, and each would
        // take the other's in-flight marker for its own: one extra callout.
        if let Err(e) = host::HostRandom.fill(&mut id) {
            warn!("oauth-pep: {e}");
        }
        if config.shared_data.enabled(envoy) {
            state.share_through(Rc::new(host::SharedData), u64::from_be_bytes(id));
        } else {
            info!("oauth-pep: shared data is off: each worker fetches keys and introspects for itself");
        }
        let shared = Rc::new(Shared::new(config, envoy, host, state));
        if let Err(why) = host::set_tick_period(TICK) {
            error!("oauth-pep: cannot set the tick period: {why}");
            return false;
        }
        // The first fetches go out on the first tick, not from here: Envoy
        // configures throwaway VMs too, and one that claimed a fetch in
        // shared data and vanished would hold every worker back.
        shared.set_tick(DISPATCH_SOON);
        self.shared = Some(shared);
        true
    }

    fn on_tick(&mut self) {
        if let Some(shared) = &self.shared {
            shared.on_tick();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(Filter {
            id: context_id,
            shared,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request. Its state while it waits lives in [`Shared`], by `id`.
struct Filter {
    id: u32,
    shared: Rc<Shared<host::Host>>,
}

impl Context for Filter {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        self.shared
            .on_reply(token, &host::callout_reply(num_headers, body_size));
    }

    fn on_done(&mut self) -> bool {
        self.shared.forget(self.id);
        true
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.shared.decide(self.id, host::request_headers(), None) {
            Outcome::Proceed => Action::Continue,
            Outcome::Hold => Action::Pause,
        }
    }
}
