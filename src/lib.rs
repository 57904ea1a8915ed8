//! The proxy-wasm glue: reads request facts, asks the core for a verdict and
//! carries it out (headers, local replies, callouts, ticks). No decisions here.
//!
//! Host calls go through `proxy_wasm::hostcalls`, which return errors, never
//! through the SDK's convenience methods, which unwrap them (a panic kills the
//! VM, and with it this Envoy worker's filter).
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

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use log::{error, info, warn};
use oauth_pep_core::callout::{Callout, CalloutReply};
use oauth_pep_core::config::Config;
use oauth_pep_core::engine::{authorize, finish_pdp, Allow, PendingPdp, Request, State, Verdict};
use oauth_pep_core::keys::{FetchProgress, FetchStep};
use oauth_pep_core::response::Denial;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

/// Granularity of key refreshes and retries; the schedule itself is in the core.
const TICK: Duration = Duration::from_secs(1);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// What a VM shares between its root context and its requests.
struct Shared {
    config: Config,
    state: RefCell<State>,
    /// Whether a rewritten `:path` needs the route picked again.
    envoy: bool,
}

impl Shared {
    /// Feeds a key-fetch reply to the key state; returns the next callout
    /// of the same fetch (discovery → JWKS), if any, and logs the end of one.
    fn key_reply(
        &self,
        issuer: usize,
        step: FetchStep,
        reply: &CalloutReply,
    ) -> Option<(FetchStep, Callout)> {
        let progress =
            self.state
                .borrow_mut()
                .keys
                .on_reply(&self.config, issuer, step, reply, host::now());
        match progress {
            FetchProgress::Next(step, callout) => Some((step, callout)),
            done => {
                log_fetch(&self.config, issuer, &done);
                None
            }
        }
    }

    /// The host refused a key-fetch callout (e.g. an unknown cluster).
    fn fetch_not_dispatched(&self, issuer: usize, step: FetchStep, why: &str) {
        warn!("key fetch for issuer #{issuer} not dispatched: {why}");
        self.state.borrow_mut().keys.on_dispatch_error(
            &self.config,
            issuer,
            step,
            why,
            host::now(),
        );
    }
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
    fetches: HashMap<u32, (usize, FetchStep)>,
}

impl Root {
    fn start_due_fetches(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let now = host::now();
        let due = shared.state.borrow_mut().keys.due(&shared.config, now);
        for (issuer, step, callout) in due {
            self.dispatch_fetch(&shared, issuer, step, &callout);
        }
    }

    fn dispatch_fetch(
        &mut self,
        shared: &Shared,
        issuer: usize,
        step: FetchStep,
        callout: &Callout,
    ) {
        match host::dispatch(callout) {
            Ok(token) => {
                self.fetches.insert(token, (issuer, step));
            }
            Err(why) => shared.fetch_not_dispatched(issuer, step, &why),
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let (Some(shared), Some((issuer, step))) =
            (self.shared.clone(), self.fetches.remove(&token))
        else {
            return;
        };
        let reply = host::callout_reply(num_headers, body_size);
        if let Some((step, callout)) = shared.key_reply(issuer, step, &reply) {
            self.dispatch_fetch(&shared, issuer, step, &callout);
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

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let json = host::plugin_configuration();
        let config = match Config::from_json(&json) {
            Ok(config) => config,
            Err(e) => {
                // Returning false makes Envoy refuse the filter instead of
                // running it half-configured.
                error!("oauth-pep: {e}");
                return false;
            }
        };
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
        let state = RefCell::new(State::new(&config));
        self.shared = Some(Rc::new(Shared {
            config,
            state,
            envoy,
        }));
        if let Err(why) = host::set_tick_period(TICK) {
            error!("oauth-pep: cannot set the tick period: {why}");
            return false;
        }
        self.start_due_fetches();
        true
    }

    fn on_tick(&mut self) {
        self.start_due_fetches();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(Filter {
            shared,
            waiting: None,
            headers: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    shared: Rc<Shared>,
    /// The callout this request waits for, by its token.
    waiting: Option<(u32, Waiting)>,
    headers: Vec<(String, String)>,
}

enum Waiting {
    Keys { issuer: usize, step: FetchStep },
    Pdp(Box<PendingPdp>),
}

/// Whether the request may go on (Continue) or waits / was answered (Pause).
enum Outcome {
    Proceed,
    Hold,
}

impl Filter {
    fn decide(&mut self) -> Outcome {
        let shared = Rc::clone(&self.shared);
        let now = host::now();
        let method = header(&self.headers, ":method").unwrap_or_default();
        let path = header(&self.headers, ":path").unwrap_or_default();
        let request = Request {
            method,
            path,
            headers: &self.headers,
        };
        let verdict = authorize(
            &shared.config,
            &mut shared.state.borrow_mut(),
            &request,
            now,
        );
        self.carry_out(verdict)
    }

    fn carry_out(&mut self, verdict: Verdict) -> Outcome {
        match verdict {
            Verdict::Allow(allow) => {
                self.apply(&allow);
                Outcome::Proceed
            }
            Verdict::Deny(denial) => {
                self.deny(&denial);
                Outcome::Hold
            }
            Verdict::FetchKeys {
                issuer,
                step,
                callout,
            } => match host::dispatch(&callout) {
                Ok(token) => {
                    self.waiting = Some((token, Waiting::Keys { issuer, step }));
                    Outcome::Hold
                }
                Err(why) => {
                    self.shared.fetch_not_dispatched(issuer, step, &why);
                    self.decide()
                }
            },
            Verdict::AskPdp { callout, pending } => match host::dispatch(&callout) {
                Ok(token) => {
                    self.waiting = Some((token, Waiting::Pdp(pending)));
                    Outcome::Hold
                }
                Err(why) => {
                    self.deny(&Denial::Unavailable(format!(
                        "policy decision point: {why}"
                    )));
                    Outcome::Hold
                }
            },
        }
    }

    /// A key fetch this request waited for has answered: continue the fetch
    /// (discovery → JWKS) or decide again with whatever keys there are now.
    fn keys_fetched(
        &mut self,
        issuer: usize,
        step: FetchStep,
        reply: &CalloutReply,
    ) -> Option<Outcome> {
        let shared = Rc::clone(&self.shared);
        if let Some((step, callout)) = shared.key_reply(issuer, step, reply) {
            match host::dispatch(&callout) {
                Ok(token) => {
                    self.waiting = Some((token, Waiting::Keys { issuer, step }));
                    return None;
                }
                Err(why) => shared.fetch_not_dispatched(issuer, step, &why),
            }
        }
        Some(self.decide())
    }

    fn apply(&self, allow: &Allow) {
        for name in &allow.remove_headers {
            host::remove_request_header(name);
        }
        for (name, value) in &allow.set_headers {
            host::set_request_header(name, value);
        }
        if let Some(path) = &allow.new_path {
            host::set_request_header(":path", path);
            if self.shared.envoy {
                host::clear_route_cache();
            }
        }
    }

    fn deny(&self, denial: &Denial) {
        let path = header(&self.headers, ":path").unwrap_or_default();
        let method = header(&self.headers, ":method").unwrap_or_default();
        match denial {
            Denial::Unavailable(why) => warn!("{method} {path}: 503: {why}"),
            other => info!(
                "{method} {path}: {} {}: {other:?}",
                other.status(),
                other.code()
            ),
        }
        host::send_response(&denial.render(&self.shared.config.realm));
    }
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

impl Context for Filter {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some((expected, waiting)) = self.waiting.take() else {
            return;
        };
        if expected != token {
            self.waiting = Some((expected, waiting));
            return;
        }
        let reply = host::callout_reply(num_headers, body_size);
        let outcome = match waiting {
            Waiting::Pdp(pending) => {
                let shared = Rc::clone(&self.shared);
                let verdict = finish_pdp(
                    &shared.config,
                    &mut shared.state.borrow_mut(),
                    *pending,
                    &reply,
                    host::now(),
                );
                Some(self.carry_out(verdict))
            }
            Waiting::Keys { issuer, step } => self.keys_fetched(issuer, step, &reply),
        };
        if let Some(Outcome::Proceed) = outcome {
            host::resume_request();
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.headers = host::request_headers();
        match self.decide() {
            Outcome::Proceed => Action::Continue,
            Outcome::Hold => Action::Pause,
        }
    }
}
