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
//!
//! # Request bodies
//!
//! When the core asks for the body ([`Verdict::ReadBody`]) the request is
//! parked like any wait, its headers go on (a proxy-wasm filter sees the body
//! only after they did: Envoy turns a paused header callback into "stop
//! everything"), and `on_http_request_body` keeps Envoy buffering until the
//! body ends or passes the bound (or the deadline comes); then the request is
//! decided again with the body in hand.
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
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use host::Door;
use log::{error, info, warn};
use oauth_pep_core::callout::{Callout, CalloutReply};
use oauth_pep_core::config::{Config, Crypto, LogLevel as ConfigLogLevel};
use oauth_pep_core::engine::{
    due, fetching_here, resume as resume_callout, timed_out, verdict_knowing, Allow, Due, Fetch,
    Known, Request, Resume, Resumed, State, Verdict, Wait,
};
use oauth_pep_core::extract::target_for_log;
use oauth_pep_core::metrics::{
    CacheCounts, CalloutKind, CalloutOutcome, Catalogue, Counter, Histogram,
};
use oauth_pep_core::response::Denial;
use oauth_pep_core::services::Random;
use oauth_pep_core::upstream_oauth::{routing_needs, RoutingNeeds};
use oauth_pep_core::verify::{self_test, HostVerifier};
use oauth_pep_core::wait::{Bound, Note, WaitKey, Waits};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

/// The granularity of refreshes, retries and wait deadlines.
const TICK: Duration = Duration::from_millis(200);
/// The tick while the root has work queued (fetches to dispatch, parked
/// requests to decide in batches): the soonest it can come.
const DISPATCH_SOON: Duration = Duration::from_millis(1);
/// The tick while requests wait for another worker's fetch, which only
/// shows in shared data: how often they look.
const POLL_SHARED: Duration = Duration::from_millis(20);
/// Requests' own callouts (PDP, permission tickets) in flight per worker:
/// beyond, a flood gets 503s instead of as many callouts.
const MAX_OWN_CALLOUTS: usize = 256;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

type Headers = Vec<(String, String)>;

/// What the glue reads of a request once, and keeps while it waits.
struct Facts {
    headers: Headers,
    /// The client's address, for its share of callout budgets.
    client: Option<Rc<str>>,
    /// The connection's client certificate digest (hex), for certificate-bound tokens.
    peer_certificate: Option<Rc<str>>,
    /// Where Envoy routes it, as far as upstream OAuth rules compare it
    /// (none read when no rule does).
    routing: Option<Rc<host::RouteFacts>>,
    /// The headers ended the request: it has no body.
    ended: bool,
    /// The body, once read (complete, or cut past the bound).
    body: Option<Rc<[u8]>>,
    /// The core asked for the body, up to this many bytes
    /// ([`Verdict::ReadBody`]); its headers went on then.
    reading: Option<usize>,
}

/// A callout in flight: what its answer is for (the core's [`Resume`]), the
/// request that made it for itself (none for a fetch requests share), and
/// when it was dispatched (ms).
struct InFlight {
    resume: Resume,
    request: Option<(u32, Facts)>,
    started_ms: u64,
}

/// A request paused until what it waits for settles, or `until` (its first
/// deadline, which holds across every wake).
struct Parked {
    on: WaitKey,
    until: u64,
    request: Facts,
}

/// A request taken off its wait, to be decided in a later batch.
enum Ready {
    /// What it waited on settled (with `known` for a token's introspection),
    /// or it probes whether another worker's fetch has.
    Decide {
        id: u32,
        parked: Parked,
        known: Option<Rc<Known>>,
    },
    /// Its deadline passed.
    Answer {
        id: u32,
        request: Facts,
        denial: Denial,
    },
}

impl Ready {
    fn id(&self) -> u32 {
        match self {
            Ready::Decide { id, .. } | Ready::Answer { id, .. } => *id,
        }
    }

    fn request(&self) -> &Facts {
        match self {
            Ready::Decide { parked, .. } => &parked.request,
            Ready::Answer { request, .. } => request,
        }
    }
}

/// The bytes a request's copy holds, with a fixed cost per header for the
/// two `String`s.
fn weight(request: &Facts) -> usize {
    request
        .headers
        .iter()
        .map(|(n, v)| n.len().saturating_add(v.len()).saturating_add(48))
        .sum::<usize>()
        .saturating_add(request.client.as_ref().map_or(0, |c| c.len()))
        .saturating_add(request.routing.as_ref().map_or(0, |r| r.len()))
        .saturating_add(request.peer_certificate.as_ref().map_or(0, |c| c.len()))
        .saturating_add(request.body.as_ref().map_or(0, |b| b.len()))
}

/// Whether the request may go on (Continue) or waits / was answered (Pause).
enum Outcome {
    Proceed,
    Hold,
}

/// Every request that waits: parked by what it waits for, or ready to be
/// decided again; counted per key and in bytes, within [`Waits`].
#[derive(Default)]
struct Waiting {
    parked: HashMap<u32, Parked>,
    per_key: HashMap<WaitKey, usize>,
    ready: VecDeque<Ready>,
    bytes: usize,
}

impl Waiting {
    fn park(&mut self, id: u32, parked: Parked, bounds: &Waits) -> Result<(), Box<Parked>> {
        let bytes = weight(&parked.request);
        let on_key = self.per_key.get(&parked.on).copied().unwrap_or(0);
        if on_key >= bounds.max_per_key
            || self.parked.len().saturating_add(self.ready.len()) >= bounds.max_per_worker
            || self.bytes.saturating_add(bytes) > bounds.max_parked_bytes
        {
            return Err(Box::new(parked));
        }
        self.per_key.insert(parked.on, on_key.saturating_add(1));
        self.bytes = self.bytes.saturating_add(bytes);
        self.parked.insert(id, parked);
        Ok(())
    }

    /// Takes request `id` off its wait; its bytes stay counted until it
    /// leaves the ready queue too.
    fn unpark(&mut self, id: u32) -> Option<Parked> {
        let parked = self.parked.remove(&id)?;
        if let Some(count) = self.per_key.get_mut(&parked.on) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_key.remove(&parked.on);
            }
        }
        Some(parked)
    }

    fn waiting_on(&self, on: &WaitKey) -> bool {
        self.per_key.contains_key(on)
    }

    /// The requests parked on `on`, oldest first (ids grow).
    fn on(&self, on: &WaitKey) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .parked
            .iter()
            .filter(|(_, p)| p.on == *on)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    fn pop_ready(&mut self) -> Option<Ready> {
        let ready = self.ready.pop_front()?;
        self.bytes = self.bytes.saturating_sub(weight(ready.request()));
        Some(ready)
    }

    /// Takes request `id` off its wait for good (decided now, not queued).
    fn take(&mut self, id: u32) -> Option<Parked> {
        let parked = self.unpark(id)?;
        self.bytes = self.bytes.saturating_sub(weight(&parked.request));
        Some(parked)
    }

    /// Drops every trace of request `id` (it ended).
    fn forget(&mut self, id: u32) {
        if let Some(parked) = self.unpark(id) {
            self.bytes = self.bytes.saturating_sub(weight(&parked.request));
        }
        let mut kept = VecDeque::with_capacity(self.ready.len());
        for ready in std::mem::take(&mut self.ready) {
            if ready.id() == id {
                self.bytes = self.bytes.saturating_sub(weight(ready.request()));
            } else {
                kept.push_back(ready);
            }
        }
        self.ready = kept;
    }
}

/// What a VM shares between its root context and its requests, and the
/// host it acts through (the proxy-wasm host, or a fake in tests).
struct Shared<H> {
    config: Config,
    state: RefCell<State>,
    /// Every callout in flight, by token, whichever context receives it.
    callouts: RefCell<HashMap<u32, InFlight>>,
    waiting: RefCell<Waiting>,
    waits: Waits,
    /// Fetches requests asked for, for the root to dispatch, so that their
    /// answers reach every request waiting.
    root_queue: RefCell<Vec<Fetch>>,
    /// The tick period last set.
    tick: Cell<Duration>,
    /// Whether a rewritten `:path` needs the route picked again.
    envoy: bool,
    /// Which of Envoy's routing facts to read for each request.
    routing_needs: RoutingNeeds,
    /// Whether to read the client's address for each request (a host call).
    reads_client: bool,
    host: H,
    cache_counts: RefCell<CacheCounts>,
}

impl<H: Door> Shared<H> {
    /// `state` is the core's state for `config`, with the host's services.
    fn new(config: Config, envoy: bool, host: H, state: State) -> Self {
        state.report_keys(&host);
        Shared {
            waits: config.waits,
            routing_needs: routing_needs(&config.upstream_oauth),
            reads_client: config.needs_client_address(),
            config,
            state: RefCell::new(state),
            callouts: RefCell::default(),
            waiting: RefCell::default(),
            root_queue: RefCell::default(),
            tick: Cell::new(TICK),
            envoy,
            host,
            cache_counts: RefCell::default(),
        }
    }

    /// Decides request `id`, the effective context, and carries it out;
    /// `known` is the outcome of the introspection it waited for, `until`
    /// its first deadline if it waited before.
    fn decide(&self, id: u32, facts: Facts, known: Option<&Known>, until: Option<u64>) -> Outcome {
        let verdict = {
            let headers = &facts.headers;
            let request = Request {
                method: header(headers, ":method").unwrap_or_default(),
                path: header(headers, ":path").unwrap_or_default(),
                headers,
                client: facts.client.as_deref(),
                peer_certificate: facts.peer_certificate.as_deref(),
                routing: facts
                    .routing
                    .as_ref()
                    .map(|r| r.routing())
                    .unwrap_or_default(),
                body: if facts.ended {
                    Some(&[])
                } else {
                    facts.body.as_deref()
                },
            };
            verdict_knowing(
                &self.config,
                &mut self.state.borrow_mut(),
                &request,
                known,
                self.host.now(),
            )
        };
        self.carry_out(id, facts, verdict, until)
    }

    fn carry_out(&self, id: u32, request: Facts, verdict: Verdict, until: Option<u64>) -> Outcome {
        // Every cache lookup happens in a decision, which ends here.
        self.cache_counts
            .borrow_mut()
            .report(self.state.borrow().cache_totals(), &self.host);
        match verdict {
            Verdict::Allow(allow) => {
                self.host.increment(Counter::Allowed, 1);
                // Once the headers went on (to let the body come), they
                // were changed as the body's verdict said, and are gone.
                if request.reading.is_none() {
                    apply(&self.host, &allow, self.envoy);
                }
                Outcome::Proceed
            }
            Verdict::ReadBody(read) => {
                let request = Facts {
                    reading: Some(read.max_bytes),
                    ..request
                };
                if !self.park(id, request, read.wait, until) {
                    return Outcome::Hold;
                }
                // The headers go on, changed as if the body passes; the body
                // is held (Envoy buffers it) until it is judged.
                apply(&self.host, &read.allow, self.envoy);
                Outcome::Proceed
            }
            Verdict::Deny(denial) => {
                self.deny(&request.headers, &denial);
                Outcome::Hold
            }
            Verdict::Respond(response) => {
                self.host.send_response(&response);
                Outcome::Hold
            }
            Verdict::Receipt(receipt) => {
                log_note(&receipt.note);
                for counter in receipt.counters {
                    self.host.increment(counter, 1);
                }
                for (gauge, value) in receipt.gauges {
                    self.host.set(gauge, value);
                }
                self.host.send_response(&receipt.response);
                Outcome::Hold
            }
            Verdict::Call { callout, resume } => {
                let own = self
                    .callouts
                    .borrow()
                    .values()
                    .filter(|f| f.request.is_some())
                    .count();
                if own >= MAX_OWN_CALLOUTS {
                    self.deny(
                        &request.headers,
                        &Denial::Overloaded {
                            bound: Bound::InFlight,
                        },
                    );
                    return Outcome::Hold;
                }
                self.dispatch(&callout, resume, Some((id, request)))
                    .unwrap_or(Outcome::Hold)
            }
            Verdict::Wait(wait) => {
                self.park(id, request, wait, until);
                Outcome::Hold
            }
        }
    }

    /// Parks request `id` as `wait` says, bounded by its first deadline
    /// `until` (if it waited before) and the bounds on waiting; whether it
    /// is parked (if not, it was answered).
    fn park(&self, id: u32, request: Facts, wait: Wait, until: Option<u64>) -> bool {
        if let Some(fetch) = wait.fetch {
            self.queue_for_root(fetch);
        }
        let until = until.map_or(wait.until, |first| first.min(wait.until));
        if until <= self.host.now() {
            self.deny(&request.headers, &timed_out(&self.config, &wait.on));
            return false;
        }
        let parked = Parked {
            on: wait.on,
            until,
            request,
        };
        let refused = self.waiting.borrow_mut().park(id, parked, &self.waits);
        if let Err(parked) = refused {
            self.deny(
                &parked.request.headers,
                &Denial::Overloaded {
                    bound: Bound::Waiters,
                },
            );
            return false;
        }
        true
    }

    /// Dispatches a callout, or, when the host refuses, lets the core decide
    /// what that means; the outcome is for `request` if that was decided now.
    fn dispatch(
        &self,
        callout: &Callout,
        resume: Resume,
        request: Option<(u32, Facts)>,
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
                let kind = resume.kind();
                warn!("{} callout not dispatched: {why}", kind.label());
                self.count_callout(kind, CalloutOutcome::NotDispatched, None);
                self.settle(resume, request, Err(&why))
            }
        }
    }

    /// Feeds an answer (or a dispatch failure) to the core and carries out
    /// what follows: a verdict for the request that made its own callout,
    /// the next step of a fetch, or waking the requests parked on it.
    fn settle(
        &self,
        resume: Resume,
        request: Option<(u32, Facts)>,
        answer: Result<&CalloutReply, &str>,
    ) -> Option<Outcome> {
        let resumed = resume_callout(
            &self.config,
            &mut self.state.borrow_mut(),
            &self.host,
            resume,
            answer,
            self.host.now(),
        );
        match resumed {
            Resumed::Decided(verdict) => {
                let (id, request) = request?;
                self.host.set_effective_context(id).ok()?;
                Some(self.carry_out(id, request, verdict, None))
            }
            Resumed::Next(fetch) => self.dispatch(&fetch.callout, fetch.resume, None),
            Resumed::Settled { on, known, notes } => {
                notes.iter().for_each(log_note);
                self.wake(&on, known);
                None
            }
            Resumed::Later { notes } => {
                notes.iter().for_each(log_note);
                None
            }
        }
    }

    /// Queues a fetch for the root and has the root tick at once.
    fn queue_for_root(&self, fetch: Fetch) {
        self.root_queue.borrow_mut().push(fetch);
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

    /// Root only: what each tick does.
    fn on_tick(&self) {
        let now = self.host.now();
        let found = due(
            &self.config,
            &mut self.state.borrow_mut(),
            &self.host,
            self.host.now_ms(),
        );
        for item in found {
            match item {
                Due::Dispatch(fetch) => self.root_queue.borrow_mut().push(fetch),
                Due::Wake { on, notes } => {
                    notes.iter().for_each(log_note);
                    self.wake(&on, None);
                }
                Due::Log(notes) => notes.iter().for_each(log_note),
            }
        }
        let queued = std::mem::take(&mut *self.root_queue.borrow_mut());
        for fetch in queued {
            self.dispatch(&fetch.callout, fetch.resume, None);
        }
        self.poll_elsewhere(now);
        self.expire_waits(now);
        self.answer_ready();
    }

    /// Root only: for each fetch another worker makes, one parked request
    /// is decided again, as a probe: if it no longer waits on that fetch,
    /// the fetch settled and every request parked on it follows.
    fn poll_elsewhere(&self, now: u64) {
        let mut waiting = self.waiting.borrow_mut();
        // One pass over the parked requests: the oldest on each such fetch.
        let probes: Vec<u32> = {
            let state = self.state.borrow();
            let mut oldest: HashMap<WaitKey, u32> = HashMap::new();
            for (id, parked) in &waiting.parked {
                if !fetching_here(&state, &parked.on, now) {
                    let first = oldest.entry(parked.on).or_insert(*id);
                    *first = (*first).min(*id);
                }
            }
            oldest.into_values().collect()
        };
        for id in probes {
            if let Some(parked) = waiting.unpark(id) {
                waiting.ready.push_back(Ready::Decide {
                    id,
                    parked,
                    known: None,
                });
            }
        }
    }

    /// Feeds a callout's answer to whatever waits for it; `root` when the
    /// root context received it, which alone may act on other requests.
    fn on_reply(&self, token: u32, reply: &CalloutReply, root: bool) {
        let Some(in_flight) = self.callouts.borrow_mut().remove(&token) else {
            return;
        };
        let kind = in_flight.resume.kind();
        self.count_callout(kind, CalloutOutcome::of(reply), Some(in_flight.started_ms));
        if let Some(Outcome::Proceed) = self.settle(in_flight.resume, in_flight.request, Ok(reply))
        {
            self.host.resume_request();
        }
        if root {
            self.answer_ready();
        } else if !self.waiting.borrow().ready.is_empty() {
            self.set_tick(DISPATCH_SOON);
        }
    }

    /// Moves every request parked on `on` to the ready queue, to be decided
    /// in batches by the root.
    fn wake(&self, on: &WaitKey, known: Option<Rc<Known>>) {
        let mut waiting = self.waiting.borrow_mut();
        for id in waiting.on(on) {
            if let Some(parked) = waiting.unpark(id) {
                waiting.ready.push_back(Ready::Decide {
                    id,
                    parked,
                    known: known.clone(),
                });
            }
        }
    }

    /// Root only: decides or answers at most one batch of ready requests.
    /// Local replies nest in the VM's stack until the callback returns, so
    /// the rest wait for the next tick.
    fn answer_ready(&self) {
        for _ in 0..self.waits.replies_per_callback {
            let Some(ready) = self.waiting.borrow_mut().pop_ready() else {
                break;
            };
            if self.host.set_effective_context(ready.id()).is_err() {
                continue;
            }
            match ready {
                Ready::Decide { id, parked, known } => {
                    let on = parked.on;
                    let outcome =
                        self.decide(id, parked.request, known.as_deref(), Some(parked.until));
                    if let Outcome::Proceed = outcome {
                        self.host.resume_request();
                    }
                    let still_waits = self
                        .waiting
                        .borrow()
                        .parked
                        .get(&id)
                        .is_some_and(|p| p.on == on);
                    // A probe that no longer waits: the fetch settled
                    // elsewhere, and the others parked on it follow.
                    if !still_waits && self.waiting.borrow().waiting_on(&on) {
                        self.wake(&on, None);
                    }
                }
                Ready::Answer {
                    request, denial, ..
                } => self.deny(&request.headers, &denial),
            }
        }
        let busy = !self.waiting.borrow().ready.is_empty() || !self.root_queue.borrow().is_empty();
        let polling = {
            let state = self.state.borrow();
            let now = self.host.now();
            self.waiting
                .borrow()
                .per_key
                .keys()
                .any(|on| !fetching_here(&state, on, now))
        };
        self.set_tick(if busy {
            DISPATCH_SOON
        } else if polling {
            POLL_SHARED
        } else {
            TICK
        });
    }

    /// Root only: the requests whose wait reached its deadline are queued
    /// for their 503.
    fn expire_waits(&self, now: u64) {
        let mut waiting = self.waiting.borrow_mut();
        let expired: Vec<u32> = waiting
            .parked
            .iter()
            .filter(|(_, p)| p.until <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(parked) = waiting.unpark(id) {
                let denial = timed_out(&self.config, &parked.on);
                waiting.ready.push_back(Ready::Answer {
                    id,
                    request: parked.request,
                    denial,
                });
            }
        }
    }

    /// Request `id`'s body grew to `size` bytes (`end` when complete): keep
    /// it buffered while the core waits for more, or decide with it once it
    /// is complete or over the bound. `read(n)` reads its first `n` bytes.
    /// Requests the core did not ask the body of pass it on.
    fn on_body(
        &self,
        id: u32,
        size: usize,
        end: bool,
        read: impl FnOnce(usize) -> Vec<u8>,
    ) -> Outcome {
        let limit = {
            let waiting = self.waiting.borrow();
            match waiting.parked.get(&id) {
                Some(parked) if parked.request.body.is_none() => parked.request.reading,
                _ => None,
            }
        };
        let Some(limit) = limit else {
            return Outcome::Proceed;
        };
        if !end && size <= limit {
            return Outcome::Hold;
        }
        let Some(mut parked) = self.waiting.borrow_mut().take(id) else {
            return Outcome::Hold;
        };
        parked.request.body = Some(Rc::from(read(size.min(limit.saturating_add(1)))));
        self.decide(id, parked.request, None, Some(parked.until))
    }

    /// The request is over (answered, or reset by the client): nothing may
    /// act on it any more.
    fn forget(&self, id: u32) {
        self.waiting.borrow_mut().forget(id);
        self.callouts
            .borrow_mut()
            .retain(|_, f| !matches!(&f.request, Some((request, _)) if *request == id));
    }

    /// Answers the request, with one `key=value` log line: at `warn` for
    /// outages (the operator must act), `info` for a refused caller.
    fn deny(&self, headers: &Headers, denial: &Denial) {
        for counter in Counter::of_denial(denial) {
            self.host.increment(counter, 1);
        }
        let request_id = header(headers, "x-request-id");
        let level = if denial.status() == 503 {
            log::Level::Warn
        } else {
            log::Level::Info
        };
        if log::log_enabled!(level) {
            self.log_denial(level, headers, request_id, denial);
        }
        if self.envoy {
            self.host.set_reason_filter_state(denial.code());
        }
        let hints = self.config.challenge_hints(
            header(headers, ":method").unwrap_or_default(),
            header(headers, ":path").unwrap_or_default(),
        );
        self.host.send_response(&denial.render(
            &self.config.realm,
            &hints,
            request_id,
            self.config.error_body,
        ));
    }

    /// The denial's one `key=value` line, built only when `level` is
    /// logged (the check costs nothing; the line, a few allocations).
    fn log_denial(
        &self,
        level: log::Level,
        headers: &Headers,
        request_id: Option<&str>,
        denial: &Denial,
    ) {
        let mut line = format!(
            "denied status={} reason={} request_id={} method={} path={}",
            denial.status(),
            denial.code(),
            log_value(request_id.unwrap_or("-")),
            log_value(header(headers, ":method").unwrap_or("-")),
            log_value(&header(headers, ":path").map_or_else(
                || "-".into(),
                |raw| target_for_log(raw, &self.config.token_sources)
            )),
        );
        for (key, value) in denial.log_fields() {
            line.push_str(&format!(" {key}={}", log_value(&value)));
        }
        log::log!(level, "{line}");
    }
}

fn log_note(note: &Note) {
    match note {
        Note::Info(text) => info!("{text}"),
        Note::Warn(text) => warn!("{text}"),
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
            shared.on_reply(token, &host::callout_reply(num_headers, body_size), true);
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
        if let Err(e) = config.check_host(envoy) {
            error!("oauth-pep: {e}");
            return false;
        }
        info!(
            "oauth-pep configured: {} issuer(s), on {}",
            config.issuers.len(),
            if envoy {
                "Envoy"
            } else {
                "a host that is not Envoy"
            }
        );
        if !envoy && routing_needs(&config.upstream_oauth).any() {
            // A rule that could never apply would send no token, silently.
            error!("oauth-pep: `upstream_oauth` rules with `virtual_hosts`, `routes` or `clusters` need Envoy (its xds.* attributes); on this host use `authorities`");
            return false;
        }
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
            .on_reply(token, &host::callout_reply(num_headers, body_size), false);
    }

    fn on_done(&mut self) -> bool {
        self.shared.forget(self.id);
        true
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        match self.shared.decide(
            self.id,
            Facts {
                headers: host::request_headers(),
                client: if self.shared.reads_client {
                    host::client_address().map(Rc::from)
                } else {
                    None
                },
                peer_certificate: host::peer_certificate_digest().map(Rc::from),
                routing: host::routing(self.shared.routing_needs).map(Rc::new),
                ended: end_of_stream,
                body: None,
                reading: None,
            },
            None,
            None,
        ) {
            Outcome::Proceed => Action::Continue,
            Outcome::Hold => Action::Pause,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self
            .shared
            .on_body(self.id, body_size, end_of_stream, host::request_body)
        {
            Outcome::Proceed => Action::Continue,
            Outcome::Hold => Action::Pause,
        }
    }

    /// Trailers end the body: continuing them would send the buffered body
    /// on unjudged.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let size = usize::MAX;
        match self.shared.on_body(self.id, size, true, host::request_body) {
            Outcome::Proceed => Action::Continue,
            Outcome::Hold => Action::Pause,
        }
    }
}
