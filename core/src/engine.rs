//! The decision for one request, as data: allow (with the headers to set and
//! strip), deny (with a [`Denial`]), or "make this callout first". The glue
//! runs the callout, feeds the reply to [`State`] and asks again.

use std::collections::HashMap;
use std::rc::Rc;

use crate::budget::Spender;
use crate::cache::{digest, BoundedCache, CacheStats, Digest};
use crate::callout::{Callout, CalloutReply, Url};
use crate::config::{Config, PhantomFormat, TokenSource};
use crate::consumer::{Consumer, ConsumerLookup};
use crate::extract::{cookies_without, find_token, path_without_param, FoundToken};
use crate::flight::{Flight, Marker};
use crate::grant::Grant;
use crate::headers::cmp_spelling;
use crate::introspection::Introspection;
use crate::introspection::{self, Answer, Mode};
use crate::jwks::KeyLookupError;
use crate::jwt::{looks_like_jwt, precheck, TokenError, VerifiedToken};
use crate::keys::{
    Due as KeysDue, Endpoints, FetchProgress, FetchStep, KeyManager, KeyWait, Sharing,
};
use crate::metrics::{CalloutKind, Counter, Gauge, IntrospectionResult};
use crate::pdp::{Pdp, PdpQuery};
use crate::policy::PolicyDecision;
use crate::request::{normalize_target, NormalTarget};
use crate::response::{Denial, RequestProblem, TokenProblem};
use crate::services::{Metrics, NoRandom, NoSharing, Random, SharedStore};
use crate::shared_cache::{Entry, Written};
use crate::token_client::{ClientTokens, Fetched, TokenWait};
use crate::uma::{granted_scopes, Insufficient, Resource, Uma};
use crate::upstream_oauth::{rule_for, ClientCredential, UpstreamOAuth};
use crate::verify::{PureRustVerifier, SignatureVerifier};
use crate::wait::{Bound, Note, WaitKey};

/// A token without `exp` (allowed only when `require_exp` is off) is cached this long.
const NO_EXP_CACHE_SECONDS: u64 = 300;
/// How long a token whose signature failed is answered from memory.
const REJECTED_CACHE_SECONDS: u64 = 60;
/// Introspections one worker may have in flight at once: beyond, a flood of
/// made-up opaque tokens gets 503s instead of as many callouts.
pub const MAX_INTROSPECTIONS_IN_FLIGHT: usize = 256;

/// The facts of one request, as the glue read them.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Lowercase names, in arrival order, repeats kept.
    pub headers: &'a [(String, String)],
    /// The client's address (Envoy's `source.address`, without the port),
    /// when the host tells it: whose share of a callout budget is spent.
    pub client: Option<&'a str>,
}

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
    shared: Rc<dyn SharedStore>,
    /// This worker's id in shared in-flight markers (random per VM).
    worker: u64,
    /// Introspections this worker has in flight, by token digest, with the
    /// address of the client whose token it is.
    introspecting: HashMap<Digest, (Flight, Option<Rc<str>>)>,
    /// Per issuer (index for index): introspections left this second.
    introspection_budgets: Vec<Spender>,
    /// UMA permission requests left this second.
    permission_budget: Spender,
    /// Reads of the shared introspection cache.
    pub shared_stats: CacheStats,
    /// For the jti of client assertions (`private_key_jwt`).
    random: Rc<dyn Random>,
    /// The gateway's own tokens (UMA PAT, upstream OAuth).
    pub clients: ClientTokens,
}

impl State {
    pub fn new(config: &Config) -> Self {
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
            clients: ClientTokens::new(&config.clients),
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

    /// Whether this worker is asking about the token with this digest.
    pub fn is_introspecting(&self, key: &Digest) -> bool {
        self.introspecting.contains_key(key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allow {
    /// Removed from the upstream request before `set_headers` are added.
    pub remove_headers: Vec<String>,
    pub set_headers: Vec<(String, String)>,
    /// The request target (path and query) to send upstream instead of the
    /// one received: the judged path, and the token removed from the query.
    pub new_path: Option<String>,
    /// For logs: who was let through.
    pub subject: Option<String>,
}

/// A request waiting for an introspection answer (its own callout): which
/// token, and the grant of its local verification under `jwt_then_introspect`.
#[derive(Debug, PartialEq)]
pub struct PendingIntrospection {
    pub issuer: usize,
    pub key: Digest,
    /// When the requests waiting for this answer give up (seconds).
    pub until: u64,
    local: Option<Rc<Grant>>,
}

/// The outcome of an introspection, for the requests that waited for it.
pub type Known = (Digest, Result<Rc<Grant>, Denial>);

/// A request waiting for the PDP: what to do on permit and on deny.
#[derive(Debug, PartialEq)]
pub struct PendingPdp {
    allow: Allow,
    denial: Denial,
    cache_key: Digest,
}

#[derive(Debug, PartialEq)]
pub enum Verdict {
    Allow(Allow),
    Deny(Denial),
    /// This request's own callout (the PDP, a permission ticket): make it,
    /// then feed its answer, or why it could not be dispatched, to [`resume`]
    /// for this request.
    Call {
        callout: Box<Callout>,
        resume: Resume,
    },
    /// Park the request on what it waits for, shared with other requests.
    Wait(Wait),
}

/// A request parked on `on` until it settles ([`Resumed::Settled`] or a
/// [`Due::Wake`] names it), then decided again; at `until` at the latest it
/// is answered with [`timed_out`].
#[derive(Debug, PartialEq)]
pub struct Wait {
    pub on: WaitKey,
    pub until: u64,
    /// The fetch to dispatch from the root, which outlives every request and
    /// so receives the answer whichever request caused it.
    pub fetch: Option<Fetch>,
}

/// A callout many requests may wait for, and what its answer is for.
#[derive(Debug, PartialEq)]
pub struct Fetch {
    pub callout: Box<Callout>,
    pub resume: Resume,
}

/// What a callout's answer is for: one value per kind of callout, so each
/// later capability (introspection, tickets, tokens) is one more variant.
#[derive(Debug, PartialEq)]
pub enum Resume {
    /// One step of `issuer`'s key fetch (discovery, then JWKS).
    Keys { issuer: usize, step: FetchStep },
    /// The PDP's decision for a request that passed every other check.
    Pdp(Box<PendingPdp>),
    /// The introspection of one token.
    Introspect(Box<PendingIntrospection>),
    /// The token request of one of the gateway's clients, which every
    /// request waiting for it shares (like a key fetch).
    ClientToken { client: usize },
    /// A UMA permission ticket for the request that waits for it.
    Ticket(Box<PendingTicket>),
}

/// A request waiting for its UMA permission ticket.
#[derive(Debug, PartialEq)]
pub struct PendingTicket {
    resource_id: String,
    /// Why the request needs a ticket, for the log.
    why: String,
}

/// What an answer (or a dispatch failure) leads to.
#[derive(Debug, PartialEq)]
pub enum Resumed {
    /// The request that made its own callout is decided.
    Decided(Verdict),
    /// The fetch goes on (discovery → JWKS): make this callout too.
    Next(Fetch),
    /// A shared fetch settled, well or not: every request parked on `on` is
    /// to be decided again, with `known` if the answer was about one token.
    Settled {
        on: WaitKey,
        known: Option<Rc<Known>>,
        notes: Vec<Note>,
    },
}

/// What the root does on a tick, besides expiring waits.
#[derive(Debug, PartialEq)]
pub enum Due {
    /// Dispatch this fetch (a refresh, a retry, a first load).
    Dispatch(Fetch),
    /// Another worker's fetch left its result in shared data, now taken
    /// here: the requests parked on `on` may go on.
    Wake { on: WaitKey, notes: Vec<Note> },
}

impl Resume {
    /// For the callout metrics.
    pub fn kind(&self) -> CalloutKind {
        match self {
            Resume::Keys { step, .. } => CalloutKind::from(*step),
            Resume::Pdp(_) => CalloutKind::Pdp,
            Resume::Introspect(_) => CalloutKind::Introspection,
            Resume::ClientToken { .. } => CalloutKind::Token,
            Resume::Ticket(_) => CalloutKind::Permission,
        }
    }
}

/// The one entry point for every callout's outcome: its answer, or why the
/// host would not dispatch it. Failures are decided here, not in the glue.
pub fn resume(
    config: &Config,
    state: &mut State,
    metrics: &dyn Metrics,
    resume: Resume,
    answer: Result<&CalloutReply, &str>,
    now: u64,
) -> Resumed {
    match resume {
        Resume::Keys { issuer, step } => {
            let progress = match answer {
                Ok(reply) => state.keys.on_reply(issuer, step, reply, now),
                Err(why) => state.keys.on_dispatch_error(issuer, step, why, now),
            };
            match progress {
                FetchProgress::Next(step, callout) => Resumed::Next(Fetch {
                    callout: Box::new(callout),
                    resume: Resume::Keys { issuer, step },
                }),
                progress => Resumed::Settled {
                    on: WaitKey::Keys(issuer),
                    known: None,
                    notes: keys_settled(config, metrics, issuer, &progress),
                },
            }
        }
        Resume::Introspect(pending) => {
            let (issuer, known, result) =
                finish_introspection(config, state, *pending, answer, now);
            metrics.increment(Counter::Introspection { issuer, result }, 1);
            Resumed::Settled {
                on: WaitKey::Introspection {
                    issuer,
                    token: known.0,
                },
                known: Some(Rc::new(known)),
                notes: Vec::new(),
            }
        }
        Resume::ClientToken { client } => {
            let fetched = state.clients.on_reply(client, answer, now);
            let ok = matches!(fetched, Fetched::Token { .. });
            metrics.increment(Counter::ClientToken { client, ok }, 1);
            let note = match fetched {
                Fetched::Token { lifetime } => Note::Info(format!(
                    "got a token for client {}, usable for {lifetime} s",
                    client_name(config, client)
                )),
                Fetched::Failed(why) => Note::Warn(why),
            };
            Resumed::Settled {
                on: WaitKey::ClientToken(client),
                known: None,
                notes: vec![note],
            }
        }
        Resume::Ticket(pending) => Resumed::Decided(Verdict::Deny(finish_ticket(
            config, state, *pending, answer,
        ))),
        Resume::Pdp(pending) => Resumed::Decided(match answer {
            Ok(reply) => finish_pdp(config, state, *pending, reply, now),
            Err(why) => Verdict::Deny(Denial::PdpUnavailable {
                cause: format!("the callout could not be dispatched: {why}"),
            }),
        }),
    }
}

/// The log lines and metrics of a key fetch that settled.
fn keys_settled(
    config: &Config,
    metrics: &dyn Metrics,
    issuer: usize,
    progress: &FetchProgress,
) -> Vec<Note> {
    let name = issuer_name(config, issuer);
    let mut notes = Vec::new();
    match progress {
        FetchProgress::Loaded { keys, skipped } => {
            metrics.set(Gauge::KeysLoaded { issuer }, *keys as u64);
            notes.push(Note::Info(format!(
                "loaded {keys} verification keys for {name}"
            )));
            for note in skipped {
                notes.push(Note::Info(format!("skipped a key of {name}: {note}")));
            }
        }
        FetchProgress::Failed(why) => notes.push(Note::Warn(format!("key fetch failed: {why}"))),
        FetchProgress::Next(..) => {}
    }
    let ok = matches!(progress, FetchProgress::Loaded { .. });
    metrics.increment(Counter::KeyRefresh { issuer, ok }, 1);
    notes
}

/// Root only, on each tick: the fetches that are due (first loads, retries,
/// refreshes ahead of expiry), and what other workers fetched meanwhile.
pub fn due(config: &Config, state: &mut State, metrics: &dyn Metrics, now: u64) -> Vec<Due> {
    let mut due = Vec::new();
    for found in state.keys.due(now) {
        due.push(match found {
            KeysDue::Fetch(issuer, step, callout) => Due::Dispatch(Fetch {
                callout: Box::new(callout),
                resume: Resume::Keys { issuer, step },
            }),
            KeysDue::Adopted(issuer, progress) => {
                let mut notes = Vec::new();
                if let FetchProgress::Loaded { keys, .. } = progress {
                    metrics.set(Gauge::KeysLoaded { issuer }, keys as u64);
                    notes.push(Note::Info(format!(
                        "loaded {keys} verification keys for {} that another worker fetched",
                        issuer_name(config, issuer)
                    )));
                }
                Due::Wake {
                    on: WaitKey::Keys(issuer),
                    notes,
                }
            }
        });
    }
    let (tokens, adopted) = state.client_tokens_due(now);
    due.extend(adopted.into_iter().map(|client| Due::Wake {
        on: WaitKey::ClientToken(client),
        notes: Vec::new(),
    }));
    due.extend(tokens.into_iter().map(|(client, callout)| {
        Due::Dispatch(Fetch {
            callout: Box::new(callout),
            resume: Resume::ClientToken { client },
        })
    }));
    due
}

/// Whether this worker is making the fetch `on` names. If not, another
/// worker is, and its outcome shows only in shared data: the glue polls,
/// deciding the parked requests again.
pub fn fetching_here(state: &State, on: &WaitKey, now: u64) -> bool {
    match on {
        WaitKey::Keys(issuer) => state.keys.awaited_until(*issuer, now).is_some(),
        WaitKey::Introspection { token, .. } => state.introspecting.contains_key(token),
        WaitKey::ClientToken(client) => state.clients.awaited_until(*client, now).is_some(),
    }
}

/// The answer for a request whose wait on `on` reached its deadline.
pub fn timed_out(config: &Config, on: &WaitKey) -> Denial {
    match on {
        WaitKey::Keys(issuer) => Denial::KeysUnavailable {
            issuer: issuer_name(config, *issuer),
            cause: "the key fetch did not settle within twice its timeout".into(),
        },
        WaitKey::Introspection { issuer, .. } => Denial::IntrospectionUnavailable {
            issuer: issuer_name(config, *issuer),
            cause: "no introspection answer within the timeout".into(),
        },
        WaitKey::ClientToken(client) => Denial::ClientTokenUnavailable {
            client: client_name(config, *client),
            cause: "the token request did not settle within its timeout".into(),
        },
    }
}

impl Verdict {
    fn from_key_wait(
        config: &Config,
        wait: KeyWait,
        issuer: usize,
        kid: Option<String>,
    ) -> Verdict {
        match wait {
            KeyWait::Fetch {
                step,
                callout,
                until,
            } => Verdict::Wait(Wait {
                on: WaitKey::Keys(issuer),
                until,
                fetch: Some(Fetch {
                    callout: Box::new(callout),
                    resume: Resume::Keys { issuer, step },
                }),
            }),
            KeyWait::Wait { until } => Verdict::Wait(Wait {
                on: WaitKey::Keys(issuer),
                until,
                fetch: None,
            }),
            KeyWait::Unavailable(cause) => Verdict::Deny(Denial::KeysUnavailable {
                issuer: issuer_name(config, issuer),
                cause,
            }),
            // The caller looks again before it gets here; an adoption that
            // still lacks the key is as good as an unknown kid.
            KeyWait::Adopted | KeyWait::KidUnknown => {
                Verdict::Deny(Denial::InvalidToken(TokenProblem::Jwt(TokenError::Key(
                    KeyLookupError::UnknownKid(kid.unwrap_or_default()),
                ))))
            }
        }
    }
}

fn issuer_name(config: &Config, issuer: usize) -> String {
    config
        .issuers
        .get(issuer)
        .map_or_else(String::new, |i| i.issuer.clone())
}

fn client_name(config: &Config, client: usize) -> String {
    config
        .clients
        .get(client)
        .map_or_else(String::new, |c| c.name.clone())
}

pub fn authorize(config: &Config, state: &mut State, request: &Request, now: u64) -> Verdict {
    authorize_knowing(config, state, request, None, now)
}

/// [`authorize`], for a request that waited for an introspection: `known` is
/// its outcome, used whatever the caches kept of it.
pub fn authorize_knowing(
    config: &Config,
    state: &mut State,
    request: &Request,
    known: Option<&Known>,
    now: u64,
) -> Verdict {
    let target = match normalize_target(request.path) {
        Ok(target) => target,
        Err(e) => return Verdict::Deny(Denial::InvalidRequest(RequestProblem::Path(e))),
    };
    let verdict = decide(config, state, request, &target.path, known, now);
    forward_as_judged(verdict, &target, request.path)
}

/// Whatever the request is let through with, the upstream gets the path that
/// was judged (normalised, as Envoy's `normalize_path` and `merge_slashes`
/// would), with the query as it is by then.
fn forward_as_judged(verdict: Verdict, target: &NormalTarget, raw: &str) -> Verdict {
    let rewrite = |allow: &mut Allow| {
        let sent = allow.new_path.as_deref().unwrap_or(raw);
        let query = sent.find('?').and_then(|i| sent.get(i..)).unwrap_or("");
        let forwarded = target.forwarded_path() + query;
        allow.new_path = (forwarded != raw).then_some(forwarded);
    };
    match verdict {
        Verdict::Allow(mut allow) => {
            rewrite(&mut allow);
            Verdict::Allow(allow)
        }
        Verdict::Call {
            callout,
            resume: Resume::Pdp(mut pending),
        } => {
            rewrite(&mut pending.allow);
            Verdict::Call {
                callout,
                resume: Resume::Pdp(pending),
            }
        }
        other => other,
    }
}

/// The verdict, with the gateway's own token added where upstream OAuth
/// applies: whatever let the request through, the upstream gets the token.
fn decide(
    config: &Config,
    state: &mut State,
    request: &Request,
    path: &str,
    known: Option<&Known>,
    now: u64,
) -> Verdict {
    let upstream = rule_for(&config.upstream_oauth, request.method, path);
    let verdict = judge(config, state, request, path, upstream, known, now);
    let Some(rule) = upstream else {
        return verdict;
    };
    let mut add_token = |allow: &mut Allow| -> Result<(), Verdict> {
        let token = client_token(config, state, rule.client, now)?;
        allow
            .set_headers
            .push((rule.header.clone(), format!("Bearer {token}")));
        Ok(())
    };
    match verdict {
        Verdict::Allow(mut allow) => match add_token(&mut allow) {
            Ok(()) => Verdict::Allow(allow),
            Err(wait) => wait,
        },
        Verdict::Call {
            callout,
            resume: Resume::Pdp(mut pending),
        } => match add_token(&mut pending.allow) {
            Ok(()) => Verdict::Call {
                callout,
                resume: Resume::Pdp(pending),
            },
            Err(wait) => wait,
        },
        other => other,
    }
}

/// The token of one of the gateway's clients, or what the request must do
/// (wait for the fetch, or a 503) while there is none that may be sent.
fn client_token(
    config: &Config,
    state: &mut State,
    client: usize,
    now: u64,
) -> Result<Rc<str>, Verdict> {
    let keys = &state.keys;
    let discovered = |issuer: usize| keys.discovered(issuer).and_then(|e| e.token.clone());
    let wait_for = state
        .clients
        .for_request(client, &discovered, state.random.as_ref(), now);
    let unavailable = |cause: String| {
        Verdict::Deny(Denial::ClientTokenUnavailable {
            client: client_name(config, client),
            cause,
        })
    };
    let wait = |until: u64, fetch: Option<Fetch>| {
        Verdict::Wait(Wait {
            on: WaitKey::ClientToken(client),
            until,
            fetch,
        })
    };
    match wait_for {
        TokenWait::Ready(token) => Ok(token),
        TokenWait::Fetch { callout, until } => Err(wait(
            until,
            Some(Fetch {
                callout,
                resume: Resume::ClientToken { client },
            }),
        )),
        TokenWait::Wait { until } => Err(wait(until, None)),
        TokenWait::NeedsDiscovery(issuer) => {
            match discovered_endpoint(config, state, issuer, now, |e| &e.token)? {
                // Loaded just now (another worker's): asked again with it.
                Some(_) => client_token(config, state, client, now),
                None => Err(unavailable(
                    "the issuer's discovery document has no usable token_endpoint".into(),
                )),
            }
        }
        TokenWait::Unavailable(cause) => Err(unavailable(cause)),
    }
}

/// The endpoint `pick` takes from the issuer's discovery document: `None`
/// when the document is loaded and has none, or what the request must do
/// while it is not loaded (wait for the fetch, or a 503).
fn discovered_endpoint(
    config: &Config,
    state: &mut State,
    issuer: usize,
    now: u64,
    pick: impl Fn(&Endpoints) -> &Option<Url>,
) -> Result<Option<Url>, Verdict> {
    let known = |state: &State| state.keys.discovered(issuer).and_then(|e| pick(e).clone());
    if let Some(endpoint) = known(state) {
        return Ok(Some(endpoint));
    }
    if state.keys.keys(issuer).is_some() {
        return Ok(None);
    }
    match state.keys.load_for_request(issuer, now) {
        // Another worker's document was just loaded.
        KeyWait::Adopted => Ok(known(state)),
        wait => Err(Verdict::from_key_wait(config, wait, issuer, None)),
    }
}

/// A request for a UMA-protected resource: let through with an RPT whose
/// permissions cover it, else answered with a new permission ticket.
#[allow(clippy::too_many_arguments)]
fn judge_uma(
    config: &Config,
    state: &mut State,
    request: &Request,
    path: &str,
    upstream: Option<&UpstreamOAuth>,
    uma: &Uma,
    resource: &Resource,
    required: Vec<String>,
    known: Option<&Known>,
    now: u64,
) -> Verdict {
    let found = match find_token(&config.token_sources, request.headers, request.path) {
        Ok(Some(found)) => found,
        Ok(None) => {
            return ticket(
                config,
                state,
                request.client,
                uma,
                resource,
                &required,
                "no RPT".into(),
                now,
            )
        }
        Err(e) => return Verdict::Deny(Denial::InvalidRequest(RequestProblem::Token(e))),
    };
    let grant = match verify(config, state, &found.token, request.client, known, now) {
        Ok(grant) => grant,
        // UMA's answer to an unusable RPT is a new ticket, not a Bearer error.
        Err(Verdict::Deny(denial @ Denial::InvalidToken(_))) => {
            let why = format!("the RPT is not usable: {}", denial.description());
            return ticket(
                config,
                state,
                request.client,
                uma,
                resource,
                &required,
                why,
                now,
            );
        }
        Err(verdict) => return verdict,
    };
    if grant.issuer != uma.issuer {
        let why = "the token is not an RPT of the UMA authorization server".to_string();
        return ticket(
            config,
            state,
            request.client,
            uma,
            resource,
            &required,
            why,
            now,
        );
    }
    let consumer = match consumer_for(config, &grant) {
        Ok(consumer) => consumer,
        Err(denial) => return Verdict::Deny(denial),
    };
    let scopes = granted_scopes(&grant.permissions, &resource.id, now);
    match resource.decide(request.method, path, &scopes) {
        PolicyDecision::Allow { .. } => {
            Verdict::Allow(allow(config, request, upstream, &found, &grant, consumer))
        }
        PolicyDecision::InsufficientScope { rule, required } => {
            if uma.on_insufficient == Insufficient::Forbidden {
                return Verdict::Deny(Denial::InsufficientScope {
                    rule,
                    scopes: required,
                });
            }
            let why = format!("the RPT has no permission for rule \"{rule}\"");
            ticket(
                config,
                state,
                request.client,
                uma,
                resource,
                &required,
                why,
                now,
            )
        }
        PolicyDecision::NoRule => {
            let why = "the RPT has no permission for this request".to_string();
            ticket(
                config,
                state,
                request.client,
                uma,
                resource,
                &required,
                why,
                now,
            )
        }
    }
}

/// The permission ticket request, made with the PAT once there is one.
#[allow(clippy::too_many_arguments)]
fn ticket(
    config: &Config,
    state: &mut State,
    client: Option<&str>,
    uma: &Uma,
    resource: &Resource,
    scopes: &[String],
    why: String,
    now: u64,
) -> Verdict {
    let pat = match client_token(config, state, uma.client, now) {
        Ok(pat) => pat,
        Err(Verdict::Deny(Denial::ClientTokenUnavailable { cause, .. })) => {
            return Verdict::Deny(Denial::UmaUnavailable {
                cause: format!("no protection API token: {cause}"),
            })
        }
        Err(wait) => return wait,
    };
    let endpoint = match &uma.permission_endpoint {
        Some(endpoint) => endpoint.clone(),
        None => match discovered_endpoint(config, state, uma.issuer, now, |e| &e.permission) {
            Ok(Some(endpoint)) => endpoint,
            Ok(None) => {
                return Verdict::Deny(Denial::UmaUnavailable {
                    cause: "the discovery document has no usable permission_endpoint".into(),
                })
            }
            Err(wait) => return wait,
        },
    };
    if !state.permission_budget.spend(client, now) {
        return Verdict::Deny(Denial::Overloaded {
            bound: Bound::PermissionBudget,
        });
    }
    Verdict::Call {
        callout: Box::new(uma.ticket_callout(&endpoint, &pat, &resource.id, scopes)),
        resume: Resume::Ticket(Box::new(PendingTicket {
            resource_id: resource.id.clone(),
            why,
        })),
    }
}

/// The permission endpoint's answer: the ticket for the 401, or a 503. A
/// PAT the endpoint refuses is dropped, so the next request gets a new one.
fn finish_ticket(
    config: &Config,
    state: &mut State,
    pending: PendingTicket,
    answer: Result<&CalloutReply, &str>,
) -> Denial {
    let Some(uma) = &config.uma else {
        return Denial::UmaUnavailable {
            cause: "UMA is not configured".into(),
        };
    };
    let reply = match answer {
        Ok(reply) => reply,
        Err(why) => {
            return Denial::UmaUnavailable {
                cause: format!("the permission request could not be dispatched: {why}"),
            }
        }
    };
    match crate::uma::ticket(reply) {
        Ok(ticket) => Denial::UmaTicket {
            as_uri: uma.as_uri.clone(),
            ticket,
            resource_id: pending.resource_id,
            why: pending.why,
        },
        Err(cause) => {
            if reply.status == Some(401) {
                state.clients.invalidate(uma.client);
            }
            Denial::UmaUnavailable { cause }
        }
    }
}

/// The consumer the token's client maps to, if consumers are configured.
fn consumer_for<'c>(config: &'c Config, grant: &Grant) -> Result<Option<&'c Consumer>, Denial> {
    match config.consumers.lookup(grant.client_id.as_deref()) {
        ConsumerLookup::Known(consumer) => Ok(Some(consumer)),
        ConsumerLookup::NotConfigured => Ok(None),
        ConsumerLookup::Unregistered if config.consumers.allow_unregistered_clients() => Ok(None),
        ConsumerLookup::Unregistered => Err(Denial::InvalidToken(TokenProblem::ClientUnknown)),
    }
}

/// The verdict before upstream OAuth adds the gateway's token; `upstream`
/// is the upstream OAuth rule for the request, if any.
fn judge(
    config: &Config,
    state: &mut State,
    request: &Request,
    path: &str,
    upstream: Option<&UpstreamOAuth>,
    known: Option<&Known>,
    now: u64,
) -> Verdict {
    if config.public_paths.matches(path) {
        return Verdict::Allow(Allow {
            remove_headers: forged(config, request.headers),
            ..Allow::default()
        });
    }
    if let Some(uma) = &config.uma {
        if let Some((resource, required)) = uma.resource_for(request.method, path) {
            return judge_uma(
                config, state, request, path, upstream, uma, resource, required, known, now,
            );
        }
    }
    let found = match find_token(&config.token_sources, request.headers, request.path) {
        Ok(Some(found)) => found,
        Ok(None) => return anonymous_or(config, request, path, Denial::NoToken),
        Err(e) => return Verdict::Deny(Denial::InvalidRequest(RequestProblem::Token(e))),
    };
    let grant = match verify(config, state, &found.token, request.client, known, now) {
        Ok(grant) => grant,
        Err(Verdict::Deny(denial @ Denial::InvalidToken(_))) => {
            let on_invalid = config
                .consumers
                .anonymous()
                .is_some_and(|a| a.on_invalid_token);
            return if on_invalid {
                anonymous_or(config, request, path, denial)
            } else {
                Verdict::Deny(denial)
            };
        }
        Err(verdict) => return verdict,
    };
    let consumer = match consumer_for(config, &grant) {
        Ok(consumer) => consumer,
        Err(denial) => return Verdict::Deny(denial),
    };
    let rule = match check_policy(config, request.method, path, &grant.scopes) {
        Ok(rule) => rule,
        Err(denial) => return Verdict::Deny(denial),
    };
    let allow = allow(config, request, upstream, &found, &grant, consumer);
    let Some(pdp) = &config.pdp else {
        return Verdict::Allow(allow);
    };
    let claims = grant.claims();
    let query = PdpQuery {
        subject: grant.subject.as_deref().unwrap_or_default(),
        client_id: grant.client_id.as_deref(),
        claims: &claims,
        method: request.method,
        path,
        rule: rule.as_deref().unwrap_or(""),
        scopes: &grant.scopes,
    };
    let cache_key = digest(&[Pdp::cache_key(&query).as_bytes()]);
    match state.decisions.get(&cache_key, now) {
        Some(true) => Verdict::Allow(allow),
        Some(false) => Verdict::Deny(pdp_denied(&query)),
        None => {
            let callout = Box::new(pdp.callout(&query));
            let denial = pdp_denied(&query);
            Verdict::Call {
                callout,
                resume: Resume::Pdp(Box::new(PendingPdp {
                    allow,
                    denial,
                    cache_key,
                })),
            }
        }
    }
}

/// The policy's verdict on these scopes: the matched rule (`None` without a
/// policy, or for an unlisted path when `deny_by_default` is off), or the denial.
fn check_policy(
    config: &Config,
    method: &str,
    path: &str,
    scopes: &[String],
) -> Result<Option<String>, Denial> {
    let Some(policy) = &config.policy else {
        return Ok(None);
    };
    match policy.decide(method, path, scopes) {
        PolicyDecision::Allow { rule } => Ok(Some(rule)),
        PolicyDecision::NoRule if config.deny_by_default => Err(Denial::NoRule {
            method: method.to_string(),
            path: path.to_string(),
        }),
        PolicyDecision::NoRule => Ok(None),
        PolicyDecision::InsufficientScope { rule, required } => Err(Denial::InsufficientScope {
            rule,
            scopes: required,
        }),
    }
}

fn pdp_denied(query: &PdpQuery) -> Denial {
    Denial::PdpDenied {
        method: query.method.to_string(),
        path: query.path.to_string(),
    }
}

/// The PDP's reply completes a request that passed every other check.
fn finish_pdp(
    config: &Config,
    state: &mut State,
    pending: PendingPdp,
    reply: &CalloutReply,
    now: u64,
) -> Verdict {
    let Some(pdp) = &config.pdp else {
        return Verdict::Deny(pending.denial);
    };
    match pdp.verdict(reply) {
        Ok(permit) => {
            if pdp.cache_seconds() > 0 {
                state.decisions.insert(
                    pending.cache_key,
                    permit,
                    now.saturating_add(pdp.cache_seconds()),
                    now,
                );
            }
            if permit {
                Verdict::Allow(pending.allow)
            } else {
                Verdict::Deny(pending.denial)
            }
        }
        // Fail closed: no answer is never a permit.
        Err(e) => Verdict::Deny(Denial::PdpUnavailable {
            cause: e.to_string(),
        }),
    }
}

/// The headers this filter may set that the client sent anyway, in any
/// spelling a backend would read as the same header (case, `_` for `-`):
/// removed so none can be forged. Only those present, to spare host calls.
fn forged(config: &Config, headers: &[(String, String)]) -> Vec<String> {
    let mut names: Vec<String> = headers
        .iter()
        .map(|(name, _)| name)
        .filter(|name| {
            config
                .strip_headers
                .binary_search_by(|key| cmp_spelling(key, name))
                .is_ok()
        })
        .cloned()
        .collect();
    names.dedup();
    names
}

/// Without a usable token, the anonymous consumer may pass on its paths, as
/// far as the policy lets its own scopes (none by default) go: dropping the
/// token never gives more access than sending one. Where it may not pass, the
/// caller gets `denial` (a 401 challenge), since a token could help.
fn anonymous_or(config: &Config, request: &Request, path: &str, denial: Denial) -> Verdict {
    let Some(anonymous) = config.consumers.anonymous() else {
        return Verdict::Deny(denial);
    };
    if !config.anonymous_paths.matches(path)
        || check_policy(config, request.method, path, &anonymous.scopes).is_err()
    {
        return Verdict::Deny(denial);
    }
    let mut set_headers = anonymous.consumer.upstream_headers(&config.identity);
    if !anonymous.scopes.is_empty() {
        set_headers.push((config.identity.scope.clone(), anonymous.scopes.join(",")));
    }
    Verdict::Allow(Allow {
        remove_headers: forged(config, request.headers),
        set_headers,
        subject: Some(anonymous.consumer.id.clone()),
        new_path: None,
    })
}

fn verify(
    config: &Config,
    state: &mut State,
    token: &str,
    client: Option<&str>,
    known: Option<&Known>,
    now: u64,
) -> Result<Rc<Grant>, Verdict> {
    let key = digest(&[token.as_bytes()]);
    if let Some((known_key, outcome)) = known {
        if *known_key == key {
            return outcome.clone().map_err(Verdict::Deny);
        }
    }
    if let Some(hit) = state.tokens.get(&key, now) {
        return Ok(Rc::clone(hit));
    }
    if let Some(denial) = state.rejected.get(&key, now) {
        return Err(Verdict::Deny(denial.clone()));
    }
    verify_once(config, state, token, client, key, true, now)
}

/// A token no cache knows: introspected, or checked against the keys
/// (`retry_adopted`: again, if another worker's newer keys were loaded).
fn verify_once(
    config: &Config,
    state: &mut State,
    token: &str,
    client: Option<&str>,
    key: Digest,
    retry_adopted: bool,
    now: u64,
) -> Result<Rc<Grant>, Verdict> {
    let invalid = |e: TokenError| Verdict::Deny(Denial::InvalidToken(TokenProblem::Jwt(e)));
    if !looks_like_jwt(token) {
        if let Some((issuer, settings)) = opaque_token_issuer(config, token) {
            // Junk of the wrong shape (and no 60 KiB token) goes out in no callout.
            settings
                .token_shape
                .admits(token)
                .map_err(|why| invalid(TokenError::Malformed(why)))?;
            let asking = Asking { issuer, client };
            return introspect(config, state, asking, token, key, None, now);
        }
    }
    let unverified = precheck(token, &config.issuers, &config.rules, now).map_err(invalid)?;
    let issuer = unverified.issuer;
    let mode = config.issuers.get(issuer).map_or(Mode::Jwt, |i| i.mode);
    if mode == Mode::Introspect {
        // The cheap checks above ran first: a JWT with a wrong iss, aud or
        // exp costs no callout.
        let asking = Asking { issuer, client };
        return introspect(config, state, asking, token, key, None, now);
    }
    let keys = match state.keys.keys(issuer).map(Rc::clone) {
        Some(keys) => keys,
        None => match state.keys.load_for_request(issuer, now) {
            KeyWait::Adopted => match state.keys.keys(issuer).map(Rc::clone) {
                Some(keys) => keys,
                None => {
                    return Err(Verdict::from_key_wait(
                        config,
                        KeyWait::Adopted,
                        issuer,
                        None,
                    ))
                }
            },
            wait => return Err(Verdict::from_key_wait(config, wait, issuer, None)),
        },
    };
    match unverified.verify(&keys, state.verifier.as_ref()) {
        Ok(verified) => {
            let grant = Grant::from_token(&verified, config)
                .map_err(|e| Verdict::Deny(Denial::InvalidToken(TokenProblem::Claim(e))))?;
            let grant = Rc::new(grant);
            if mode == Mode::JwtThenIntrospect {
                let asking = Asking { issuer, client };
                return introspect(config, state, asking, token, key, Some(grant), now);
            }
            let expires_at = grant
                .expires_at
                .unwrap_or(now.saturating_add(NO_EXP_CACHE_SECONDS));
            // Keyed by a digest of the whole token: a prefix or a `kid` is never enough.
            state.tokens.insert(key, Rc::clone(&grant), expires_at, now);
            Ok(grant)
        }
        Err(TokenError::Key(KeyLookupError::UnknownKid(kid))) => {
            match state.keys.refetch_for_unknown_kid(issuer, &kid, now) {
                // Another worker's newer keys: judged again against them (once).
                KeyWait::Adopted if retry_adopted => {
                    verify_once(config, state, token, client, key, false, now)
                }
                wait => Err(Verdict::from_key_wait(config, wait, issuer, Some(kid))),
            }
        }
        // A signature that did not verify never will: remembering it makes a
        // repeated forgery cost a lookup instead of ~1 ms of signature work.
        Err(e @ (TokenError::BadSignature | TokenError::Signature(_))) => {
            let denial = Denial::InvalidToken(TokenProblem::Jwt(e));
            state.rejected.insert(
                key,
                denial.clone(),
                now.saturating_add(REJECTED_CACHE_SECONDS),
                now,
            );
            Err(Verdict::Deny(denial))
        }
        Err(e) => Err(invalid(e)),
    }
}

/// The issuer that introspects an opaque token: the first whose
/// `token_prefix` starts it, else the one introspecting without a prefix
/// (configuration allows at most one).
fn opaque_token_issuer<'c>(config: &'c Config, token: &str) -> Option<(usize, &'c Introspection)> {
    let introspecting = || {
        config
            .issuers
            .iter()
            .enumerate()
            .filter_map(|(index, issuer)| Some((index, issuer.introspection.as_ref()?)))
    };
    introspecting()
        .find(|(_, x)| {
            x.token_prefix
                .as_deref()
                .is_some_and(|p| token.starts_with(p))
        })
        .or_else(|| introspecting().find(|(_, x)| x.token_prefix.is_none()))
}

/// Which issuer is asked about a token, for which client address.
#[derive(Clone, Copy)]
struct Asking<'a> {
    issuer: usize,
    client: Option<&'a str>,
}

/// An answer from shared data, another worker's (or an earlier one of ours),
/// or the callout to ask, or a wait for the worker that is asking.
fn introspect(
    config: &Config,
    state: &mut State,
    asking: Asking,
    token: &str,
    key: Digest,
    local: Option<Rc<Grant>>,
    now: u64,
) -> Result<Rc<Grant>, Verdict> {
    let issuer = asking.issuer;
    let unavailable = |cause: String| {
        Verdict::Deny(Denial::IntrospectionUnavailable {
            issuer: issuer_name(config, issuer),
            cause,
        })
    };
    let Some(settings) = config
        .issuers
        .get(issuer)
        .and_then(|i| i.introspection.as_ref())
    else {
        return Err(unavailable(
            "the issuer has no introspection settings".into(),
        ));
    };
    if config.shared_cache.enabled() {
        match config.shared_cache.read(state.shared.as_ref(), &key, now) {
            Some(entry @ Entry::Active { fresh_until, .. }) if now < fresh_until => {
                state.shared_stats.hits += 1;
                return match use_entry(config, state, issuer, key, &entry, local.as_ref(), now) {
                    Some(outcome) => outcome.map_err(Verdict::Deny),
                    None => Err(unavailable("a shared cache entry could not be read".into())),
                };
            }
            Some(entry @ Entry::Inactive { .. }) => {
                state.shared_stats.hits += 1;
                if let Some(outcome) = use_entry(config, state, issuer, key, &entry, None, now) {
                    return outcome.map_err(Verdict::Deny);
                }
            }
            _ => state.shared_stats.misses += 1,
        }
    }
    let wait = |until: u64, fetch: Option<Fetch>| {
        Verdict::Wait(Wait {
            on: WaitKey::Introspection { issuer, token: key },
            until,
            fetch,
        })
    };
    if let Some(until) = state
        .introspecting
        .get(&key)
        .and_then(|(f, _)| f.awaited_until(now))
    {
        return Err(wait(until, None));
    }
    // Its answer never came (the host dropped it): ask again.
    state.introspecting.remove(&key);
    if in_flight_full(state, asking.client, now) {
        return Err(Verdict::Deny(Denial::Overloaded {
            bound: Bound::InFlight,
        }));
    }
    let endpoint = match &settings.endpoint {
        Some(endpoint) => endpoint.clone(),
        None => match discovered_endpoint(config, state, issuer, now, |e| &e.introspection)? {
            Some(endpoint) => endpoint,
            None => {
                return Err(unavailable(
                    "the discovery document has no usable introspection_endpoint".into(),
                ))
            }
        },
    };
    // Built before anything is claimed: a request that cannot be made
    // (no random bytes for a client assertion) holds no worker back.
    let callout = settings
        .callout(&endpoint, token, now, state.random.as_ref())
        .map_err(|e| unavailable(e.to_string()))?;
    // Two timeouts: the callout's own, and the time to dispatch it.
    let until = now.saturating_add(settings.timeout_ms / 1000 + 2);
    let mut flight = Flight::default();
    let marker = introspection_marker(config, state, &key);
    if let Err(theirs) = flight.start(marker.as_ref(), until, now) {
        return Err(wait(theirs, None));
    }
    // Spent only by the worker that asks: waiting for another worker's
    // answer (and polling for it) costs the budget nothing.
    let spent = state
        .introspection_budgets
        .get_mut(issuer)
        .is_some_and(|budget| budget.spend(asking.client, now));
    if !spent {
        flight.succeeded(introspection_marker(config, state, &key).as_ref(), 0);
        return Err(Verdict::Deny(Denial::Overloaded {
            bound: Bound::IntrospectionBudget,
        }));
    }
    state
        .introspecting
        .insert(key, (flight, asking.client.map(Rc::from)));
    Err(wait(
        until,
        Some(Fetch {
            callout: Box::new(callout),
            resume: Resume::Introspect(Box::new(PendingIntrospection {
                issuer,
                key,
                until,
                local,
            })),
        }),
    ))
}

/// Whether the worker's introspections in flight are at their cap, or
/// `client` holds three quarters of it (so one flooding address leaves room
/// for the others).
fn in_flight_full(state: &mut State, client: Option<&str>, now: u64) -> bool {
    let in_flight = |state: &State| {
        let all = state.introspecting.len();
        let theirs = client.map_or(0, |client| {
            state
                .introspecting
                .values()
                .filter(|(_, c)| c.as_deref() == Some(client))
                .count()
        });
        (all, theirs)
    };
    let full = |(all, theirs): (usize, usize)| {
        all >= MAX_INTROSPECTIONS_IN_FLIGHT || theirs >= MAX_INTROSPECTIONS_IN_FLIGHT / 4 * 3
    };
    if full(in_flight(state)) {
        state.introspecting.retain(|_, (f, _)| f.awaiting(now));
    }
    full(in_flight(state))
}

/// Where a token's introspection is claimed in shared data, when the
/// shared cache is on.
fn introspection_marker<'a>(config: &Config, state: &'a State, key: &Digest) -> Option<Marker<'a>> {
    config.shared_cache.enabled().then(|| Marker {
        store: state.shared.as_ref(),
        key: config.shared_cache.marker_key(key),
        subject: *key,
        worker: state.worker,
    })
}

/// The grant (or denial) a cached answer stands for, cached in this worker
/// too; `None` if the entry does not hold a JSON object.
fn use_entry(
    config: &Config,
    state: &mut State,
    issuer: usize,
    key: Digest,
    entry: &Entry,
    local: Option<&Rc<Grant>>,
    now: u64,
) -> Option<Result<Rc<Grant>, Denial>> {
    match entry {
        Entry::Active {
            json, fresh_until, ..
        } => {
            let claims = serde_json::from_slice(json).ok()?;
            Some(admit(
                config,
                state,
                issuer,
                key,
                claims,
                local,
                *fresh_until,
                now,
            ))
        }
        Entry::Inactive { until, .. } => {
            let denial = Denial::InvalidToken(TokenProblem::Inactive);
            state.rejected.insert(key, denial.clone(), *until, now);
            Some(Err(denial))
        }
    }
}

/// An active answer's claims, checked, as a grant cached until its checked
/// `exp` (less the margin, within `max_ttl_seconds`) and never past
/// `max_until`; a check that fails is remembered like an inactive answer.
#[allow(clippy::too_many_arguments)]
fn admit(
    config: &Config,
    state: &mut State,
    issuer: usize,
    key: Digest,
    claims: serde_json::Map<String, serde_json::Value>,
    local: Option<&Rc<Grant>>,
    max_until: u64,
    now: u64,
) -> Result<Rc<Grant>, Denial> {
    let Some(settings) = config.issuers.get(issuer) else {
        return Err(Denial::InvalidToken(TokenProblem::Inactive));
    };
    let negative_until = now.saturating_add(
        settings
            .introspection
            .as_ref()
            .map_or(0, |x| x.negative_ttl_seconds),
    );
    let refuse = |state: &mut State, denial: Denial| {
        state
            .rejected
            .insert(key, denial.clone(), negative_until, now);
        Err(denial)
    };
    let exp =
        match introspection::check_active(&claims, settings, &config.rules, local.is_some(), now) {
            Ok(exp) => exp,
            Err(e) => return refuse(state, Denial::InvalidToken(TokenProblem::Jwt(e))),
        };
    let phantom = config.forward.phantom_token_header.as_ref().and_then(|_| {
        let mut answer = claims.clone();
        answer.insert("active".into(), serde_json::Value::Bool(true));
        match config.forward.phantom_token_format {
            PhantomFormat::Json => Some(introspection::ascii_json(&answer)),
            PhantomFormat::Jwt => crate::grant::unsigned_jwt(&serde_json::Value::Object(answer))
                .map(|jwt| format!("Bearer {jwt}")),
        }
    });
    let grant = match local {
        // Locally verified: the JWT's own claims are what is forwarded.
        Some(local) => {
            let mut grant = (**local).clone();
            grant.expires_at = match (grant.expires_at, exp) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            grant.phantom = phantom;
            grant
        }
        None => {
            let token = VerifiedToken::introspected(issuer, claims, exp);
            match Grant::from_token(&token, config) {
                Ok(mut grant) => {
                    grant.phantom = phantom;
                    grant
                }
                Err(e) => return refuse(state, Denial::InvalidToken(TokenProblem::Claim(e))),
            }
        }
    };
    // From the checked `exp` (a fractional one included) and, after a local
    // verification, the JWT's own: the cache never outlives either.
    let until = settings
        .introspection
        .as_ref()
        .map_or(max_until, |x| x.fresh_until(grant.expires_at, now))
        .min(max_until);
    let grant = Rc::new(grant);
    state.tokens.insert(key, Rc::clone(&grant), until, now);
    Ok(grant)
}

/// The endpoint's answer (or why there is none) for one token: cached for
/// every worker, and the outcome handed to the requests that waited.
fn finish_introspection(
    config: &Config,
    state: &mut State,
    pending: PendingIntrospection,
    answer: Result<&CalloutReply, &str>,
    now: u64,
) -> (usize, Known, IntrospectionResult) {
    let PendingIntrospection {
        issuer, key, local, ..
    } = pending;
    let flight = state.introspecting.remove(&key);
    let outcome = settle_introspection(config, state, issuer, key, local, answer, now);
    // Released once the answer is in shared data: a worker that polls and
    // finds no marker finds the answer.
    if let Some((mut flight, _)) = flight {
        flight.succeeded(introspection_marker(config, state, &key).as_ref(), 0);
    }
    outcome
}

fn settle_introspection(
    config: &Config,
    state: &mut State,
    issuer: usize,
    key: Digest,
    local: Option<Rc<Grant>>,
    answer: Result<&CalloutReply, &str>,
    now: u64,
) -> (usize, Known, IntrospectionResult) {
    let shared = &config.shared_cache;
    let Some(settings) = config
        .issuers
        .get(issuer)
        .and_then(|i| i.introspection.as_ref())
    else {
        return (
            issuer,
            (key, Err(Denial::InvalidToken(TokenProblem::Inactive))),
            IntrospectionResult::Failed,
        );
    };
    let interpreted = match answer {
        Ok(reply) => introspection::interpret(reply).map_err(|e| e.to_string()),
        Err(why) => Err(format!("the callout could not be dispatched: {why}")),
    };
    let issuer_u16 = u16::try_from(issuer).unwrap_or(u16::MAX);
    let (outcome, result) = match interpreted {
        Ok(Answer::Active(claims)) => {
            let json = serde_json::Value::Object(claims.clone()).to_string();
            let outcome = admit(
                config,
                state,
                issuer,
                key,
                claims,
                local.as_ref(),
                u64::MAX,
                now,
            );
            let fresh_until = outcome
                .as_ref()
                .map_or(now, |grant| settings.fresh_until(grant.expires_at, now));
            if fresh_until > now {
                let entry = Entry::Active {
                    issuer: issuer_u16,
                    fresh_until,
                    stale_until: settings.stale_until(fresh_until),
                    json: json.into_bytes(),
                };
                if shared.write(state.shared.as_ref(), &key, &entry, now) == Written::Evicted {
                    state.shared_stats.evictions += 1;
                }
            }
            let result = if outcome.is_ok() {
                IntrospectionResult::Active
            } else {
                IntrospectionResult::Inactive
            };
            (outcome, result)
        }
        Ok(Answer::Inactive) => {
            let until = now.saturating_add(settings.negative_ttl_seconds);
            let denial = Denial::InvalidToken(TokenProblem::Inactive);
            if settings.negative_ttl_seconds > 0 {
                state.rejected.insert(key, denial.clone(), until, now);
                let entry = Entry::Inactive {
                    issuer: issuer_u16,
                    until,
                };
                shared.write(state.shared.as_ref(), &key, &entry, now);
            }
            (Err(denial), IntrospectionResult::Inactive)
        }
        Err(cause) => match stale(config, state, issuer, key, local.as_ref(), now) {
            Some(grant) => (Ok(grant), IntrospectionResult::StaleServed),
            None => (
                Err(Denial::IntrospectionUnavailable {
                    issuer: issuer_name(config, issuer),
                    cause,
                }),
                IntrospectionResult::Failed,
            ),
        },
    };
    (issuer, (key, outcome), result)
}

/// Under `failure_mode: serve_stale`, the cached active answer past its TTL
/// but within `stale_seconds`, if shared data still holds it.
fn stale(
    config: &Config,
    state: &mut State,
    issuer: usize,
    key: Digest,
    local: Option<&Rc<Grant>>,
    now: u64,
) -> Option<Rc<Grant>> {
    let entry = config.shared_cache.read(state.shared.as_ref(), &key, now)?;
    let Entry::Active { json, .. } = &entry else {
        return None;
    };
    let claims = serde_json::from_slice(json).ok()?;
    // Served for this request only: the next one asks the endpoint again.
    let grant = admit(config, state, issuer, key, claims, local, now, now).ok()?;
    Some(grant)
}

/// The upstream request of a caller let through; `upstream` is the upstream
/// OAuth rule for the request, which decides what becomes of its credential.
fn allow(
    config: &Config,
    request: &Request,
    upstream: Option<&UpstreamOAuth>,
    found: &FoundToken,
    grant: &Grant,
    consumer: Option<&Consumer>,
) -> Allow {
    let mut allow = Allow {
        remove_headers: forged(config, request.headers),
        subject: grant.subject.clone(),
        ..Allow::default()
    };
    let identity = &config.identity;
    // Comma-separated, as Gluu Gateway sent it.
    allow
        .set_headers
        .push((identity.scope.clone(), grant.scopes.join(",")));
    if let Some(client_id) = &grant.client_id {
        allow
            .set_headers
            .push((identity.client_id.clone(), client_id.clone()));
    }
    if let Some(exp) = grant.expires_at {
        allow
            .set_headers
            .push((identity.expiration.clone(), exp.to_string()));
    }
    if let Some(consumer) = consumer {
        allow
            .set_headers
            .extend(consumer.upstream_headers(identity));
    }
    for (i, value) in &grant.forwarded {
        if let Some(forward) = config.forward.claims.get(*i) {
            allow
                .set_headers
                .push((forward.header.clone(), value.clone()));
        }
    }
    if let (Some(header), Some(payload)) = (&config.forward.payload_header, &grant.payload) {
        allow.set_headers.push((header.clone(), payload.clone()));
    }
    if let (Some(header), Some(answer)) = (&config.forward.phantom_token_header, &grant.phantom) {
        allow.set_headers.push((header.clone(), answer.clone()));
    }
    if let Some(UpstreamOAuth {
        credential: ClientCredential::MoveTo(to),
        ..
    }) = upstream
    {
        let value = match &found.source {
            TokenSource::Header { name, .. } => request
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map_or_else(|| found.token.clone(), |(_, v)| v.clone()),
            _ => found.token.clone(),
        };
        allow.set_headers.push((to.clone(), value));
    }
    let moved_or_replaced = upstream.is_some_and(|r| r.credential != ClientCredential::Keep);
    if config.forward.hide_credentials || moved_or_replaced {
        match &found.source {
            TokenSource::Header { name, .. } => allow.remove_headers.push(name.clone()),
            TokenSource::Query(name) => {
                allow.new_path = Some(path_without_param(request.path, name))
            }
            TokenSource::Cookie(name) => {
                allow.remove_headers.push("cookie".into());
                if let Some(rest) = cookies_without(request.headers, name) {
                    allow.set_headers.push(("cookie".into(), rest));
                }
            }
        }
    }
    allow
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::services::testing::FakeMetrics;

    /// The PDP's answer to a request that asked it.
    fn answer_pdp(c: &Config, s: &mut State, asked: Verdict, reply: &CalloutReply) -> Verdict {
        let Verdict::Call {
            resume: resume @ Resume::Pdp(_),
            ..
        } = asked
        else {
            panic!("the PDP was not asked: {asked:?}")
        };
        let Resumed::Decided(verdict) = super::resume(
            c,
            s,
            &FakeMetrics::default(),
            resume,
            Ok(reply),
            vectors().now,
        ) else {
            panic!("a PDP answer decides its request")
        };
        verdict
    }

    fn starts_key_fetch(v: &Verdict) -> bool {
        matches!(
            v,
            Verdict::Wait(Wait {
                fetch: Some(Fetch {
                    resume: Resume::Keys { issuer: 0, .. },
                    ..
                }),
                ..
            })
        )
    }
    use crate::callout::CalloutReply;
    use crate::extract::tests::h;
    use crate::jwt::test_vectors::vectors;

    fn inline_config(extra: &str) -> Config {
        let v = vectors();
        let jwks = String::from_utf8(v.jwks).unwrap();
        let json = format!(
            r#"{{"issuers":[{{"issuer":"https://issuer.test","audiences":["api"],"jwks":{jwks}}}]{extra}}}"#
        );
        Config::from_json(json.as_bytes(), &|_| None).unwrap()
    }

    fn bearer(token: &str) -> Vec<(String, String)> {
        h(&[("authorization", &format!("Bearer {token}"))])
    }

    fn run(
        config: &Config,
        state: &mut State,
        headers: &[(String, String)],
        path: &str,
    ) -> Verdict {
        let request = Request {
            method: "GET",
            path,
            headers,
            client: None,
        };
        authorize(config, state, &request, vectors().now)
    }

    #[test]
    fn a_good_token_is_allowed_with_claims_forwarded_and_forgeable_headers_stripped() {
        let c = inline_config(
            r#","forward":{"claims":{"sub":"x-jwt-sub","scope":"x-scope"},"payload_header":"x-jwt-payload"}"#,
        );
        let mut s = State::new(&c);
        let token = vectors().token("good_RS256").to_string();
        let forgeable = [
            "x-jwt-payload",
            "x-jwt-sub",
            "x-scope",
            "x-authenticated-scope",
            "x-consumer-id",
        ];
        let mut headers = bearer(&token);
        headers.extend(
            forgeable
                .iter()
                .map(|name| (name.to_string(), "forged".to_string())),
        );
        let Verdict::Allow(allow) = run(&c, &mut s, &headers, "/") else {
            panic!("denied")
        };
        assert_eq!(
            allow.remove_headers.len(),
            forgeable.len(),
            "only what was sent"
        );
        for name in forgeable {
            assert!(allow.remove_headers.iter().any(|h| h == name), "{name}");
        }
        assert!(allow
            .set_headers
            .contains(&("x-authenticated-scope".into(), "read,write".into())));
        assert!(allow
            .set_headers
            .contains(&("x-oauth-client-id".into(), "client-1".into())));
        assert!(allow
            .set_headers
            .contains(&("x-oauth-expiration".into(), "1700003600".into())));
        assert!(allow
            .set_headers
            .contains(&("x-jwt-sub".into(), "client-1".into())));
        assert!(allow
            .set_headers
            .contains(&("x-scope".into(), "read write".into())));
        let payload = token.split('.').nth(1).unwrap();
        assert!(allow
            .set_headers
            .contains(&("x-jwt-payload".into(), payload.into())));
        assert_eq!(allow.subject.as_deref(), Some("client-1"));
    }

    #[test]
    fn missing_malformed_and_invalid_tokens_are_told_apart() {
        let c = inline_config("");
        let mut s = State::new(&c);
        assert_eq!(run(&c, &mut s, &[], "/"), Verdict::Deny(Denial::NoToken));
        assert!(matches!(
            run(
                &c,
                &mut s,
                &h(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
                "/"
            ),
            Verdict::Deny(Denial::InvalidRequest(_))
        ));
        let expired = vectors().token("expired").to_string();
        assert_eq!(
            run(&c, &mut s, &bearer(&expired), "/"),
            Verdict::Deny(Denial::InvalidToken(TokenProblem::Jwt(TokenError::Expired)))
        );
    }

    #[test]
    fn the_cache_answers_a_repeated_token_until_it_expires() {
        let c = inline_config("");
        let mut s = State::new(&c);
        let token = vectors().token("good_ES256").to_string();
        assert!(matches!(
            run(&c, &mut s, &bearer(&token), "/"),
            Verdict::Allow(_)
        ));
        assert_eq!(s.tokens.len(), 1);
        let request = Request {
            method: "GET",
            path: "/",
            headers: &bearer(&token),
            client: None,
        };
        // exp is 1700003600; the cache must not outlive it.
        assert!(matches!(
            authorize(&c, &mut s, &request, 1_700_003_600),
            Verdict::Allow(_)
        ));
        assert!(matches!(
            authorize(&c, &mut s, &request, 1_700_003_661),
            Verdict::Deny(Denial::InvalidToken(_))
        ));
    }

    #[test]
    fn hide_credentials_removes_the_token_wherever_it_was() {
        let c = inline_config(
            r#","forward":{"hide_credentials":true},"token_sources":[{"header":"authorization"},{"query":"at"},{"cookie":"at"}]"#,
        );
        let mut s = State::new(&c);
        let token = vectors().token("good_EdDSA").to_string();
        let Verdict::Allow(a) = run(&c, &mut s, &bearer(&token), "/x") else {
            panic!()
        };
        assert!(a.remove_headers.contains(&"authorization".to_string()));
        let Verdict::Allow(a) = run(&c, &mut s, &[], &format!("/x?at={token}&k=1")) else {
            panic!()
        };
        assert_eq!(a.new_path.as_deref(), Some("/x?k=1"));
        let Verdict::Allow(a) = run(
            &c,
            &mut s,
            &h(&[("cookie", &format!("at={token}; b=2"))]),
            "/x",
        ) else {
            panic!()
        };
        assert!(a.set_headers.contains(&("cookie".into(), "b=2".into())));
    }

    #[test]
    fn every_way_through_forwards_the_judged_path_with_the_query() {
        let c = inline_config(
            r#","policy":{"GET /api/??":"read","GET /admin/??":"admin","GET /open/??":"read"},"public_paths":["/health"],"anonymous":{"id":"anon","paths":["/open/??"],"scopes":["read"]},"forward":{"hide_credentials":true},"token_sources":[{"header":"authorization"},{"query":"at"}]"#,
        );
        let mut s = State::new(&c);
        let token = vectors().token("good_RS256").to_string();
        let new_path = |verdict: Verdict| match verdict {
            Verdict::Allow(a) => a.new_path,
            other => panic!("{other:?}"),
        };
        // (raw path, token in the authorization header, forwarded)
        let cases = [
            ("/admin/x/../../health", false, Some("/health")),
            ("/health", false, None),
            ("/x/..//open/./doc?q=1", false, Some("/open/doc?q=1")),
            ("/admin/s/../../api/x", true, Some("/api/x")),
            ("/admin//../api/x", true, Some("/api/x")),
            (
                "/api/%7euser/caf%c3%a9?q=%2F",
                true,
                Some("/api/~user/caf%C3%A9?q=%2F"),
            ),
            ("/api/x/", true, None),
            ("/api/x//", true, Some("/api/x/")),
            ("/api/x?q", true, None),
        ];
        for (raw, with_token, want) in cases {
            let headers = if with_token { bearer(&token) } else { vec![] };
            let got = new_path(run(&c, &mut s, &headers, raw));
            assert_eq!(got.as_deref(), want, "{raw}");
        }
        // A token in the query is removed from the normalised target.
        let raw = format!("/api//a/./b?k=1&at={token}&z");
        assert_eq!(
            new_path(run(&c, &mut s, &[], &raw)).as_deref(),
            Some("/api/a/b?k=1&z")
        );
        let raw = format!("/api/b?at={token}");
        assert_eq!(
            new_path(run(&c, &mut s, &[], &raw)).as_deref(),
            Some("/api/b")
        );
        for raw in [
            "/api/a%2fb",
            "/admin;x/secret",
            "/admin./secret",
            "/api/x#f",
        ] {
            assert!(
                matches!(
                    run(&c, &mut s, &bearer(&token), raw),
                    Verdict::Deny(Denial::InvalidRequest(_))
                ),
                "{raw}"
            );
        }

        let lenient = inline_config(r#","policy":{"GET /a":"admin"},"deny_by_default":false"#);
        let mut s = State::new(&lenient);
        assert_eq!(
            new_path(run(&lenient, &mut s, &bearer(&token), "/a/../b")).as_deref(),
            Some("/b")
        );

        let pdp = inline_config(
            r#","pdp":{"kind":"opa","upstream":"pdp","url":"http://opa/v1/data/authz"}"#,
        );
        let mut s = State::new(&pdp);
        let asked = run(&pdp, &mut s, &bearer(&token), "/a/./b");
        let permit = reply(200, r#"{"result":true}"#);
        assert_eq!(
            new_path(answer_pdp(&pdp, &mut s, asked, &permit)).as_deref(),
            Some("/a/b")
        );
    }

    fn fetched_config() -> Config {
        Config::from_json(
            br#"{"issuers":[{"issuer":"https://issuer.test","audiences":["api"],"discovery":true,"upstream":"as","unknown_kid_refetch_seconds":30}]}"#,
            &|_| None,
        )
        .unwrap()
    }

    fn reply(status: u16, body: &str) -> CalloutReply {
        CalloutReply {
            status: Some(status),
            body: body.as_bytes().to_vec(),
            ..CalloutReply::default()
        }
    }

    #[test]
    fn before_keys_load_a_request_starts_the_fetch_and_others_wait_for_it() {
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        let token = vectors().token("good_RS256").to_string();
        let Verdict::Wait(Wait {
            fetch:
                Some(Fetch {
                    callout,
                    resume:
                        Resume::Keys {
                            issuer: 0,
                            step: FetchStep::Discovery,
                        },
                }),
            ..
        }) = run(&c, &mut s, &bearer(&token), "/")
        else {
            panic!("the first request starts the fetch")
        };
        let until = s.keys.awaited_until(0, now).unwrap();
        assert_eq!(callout.url.path, "/.well-known/openid-configuration");
        assert_eq!(callout.upstream, "as");
        assert_eq!(until, now + 11, "2 x fetch_timeout, rounded up");
        assert_eq!(
            run(&c, &mut s, &bearer(&token), "/"),
            Verdict::Wait(Wait {
                on: WaitKey::Keys(0),
                until,
                fetch: None
            }),
            "the next one waits for it"
        );
        assert!(s.keys.due(now).is_empty(), "one fetch at a time");

        let discovery = reply(
            200,
            r#"{"issuer":"https://issuer.test","jwks_uri":"https://issuer.test/keys"}"#,
        );
        let crate::keys::FetchProgress::Next(FetchStep::Jwks, jwks_call) =
            s.keys.on_reply(0, FetchStep::Discovery, &discovery, now)
        else {
            panic!()
        };
        assert_eq!(jwks_call.url.path, "/keys");
        let jwks = String::from_utf8(vectors().jwks).unwrap();
        assert!(matches!(
            s.keys.on_reply(0, FetchStep::Jwks, &reply(200, &jwks), now),
            crate::keys::FetchProgress::Loaded { .. }
        ));
        assert!(matches!(
            run(&c, &mut s, &bearer(&token), "/"),
            Verdict::Allow(_)
        ));
    }

    /// A worker that has not fetched anything yet adopts the discovery
    /// document and keys another worker published: its first UMA request
    /// without an RPT goes on to the PAT and the ticket, whether the PAT's
    /// token endpoint is discovered or fixed (before the fix, a 401 "unknown
    /// kid", seen on the demo's first request after start).
    #[test]
    fn a_worker_adopting_the_uma_discovery_goes_on_to_the_pat_and_the_ticket() {
        for pat_endpoint in [
            r#""issuer":"https://issuer.test""#,
            r#""token_endpoint":"https://issuer.test/token","upstream":"as""#,
        ] {
            let json = format!(
                r#"{{"issuers":[{{"issuer":"https://issuer.test","audiences":["api"],
                    "discovery":"uma2-configuration","upstream":"as"}}],
                  "clients":{{"pat":{{{pat_endpoint},"client_id":"rs","client_secret":"rs-secret"}}}},
                  "uma":{{"issuer":"https://issuer.test","client":"pat",
                    "resources":[{{"resource_id":"photos","policy":{{"GET /photos/??":"view"}}}}]}}}}"#
            );
            let c = Config::from_json(json.as_bytes(), &|_| None).unwrap();
            let now = vectors().now;
            let store = std::rc::Rc::new(crate::services::testing::MemoryStore::default());
            let worker = |id| {
                let mut s = State::new(&c);
                s.share_through(store.clone(), id);
                s
            };
            // The first worker loads the discovery document and the keys.
            let mut first = worker(1);
            assert!(matches!(
                first.keys.load_for_request(0, now),
                KeyWait::Fetch { .. }
            ));
            let discovery = reply(
                200,
                r#"{"issuer":"https://issuer.test","jwks_uri":"https://issuer.test/keys",
                    "token_endpoint":"https://issuer.test/token","permission_endpoint":"https://issuer.test/perm"}"#,
            );
            let _ = first
                .keys
                .on_reply(0, FetchStep::Discovery, &discovery, now);
            let jwks = String::from_utf8(vectors().jwks).unwrap();
            assert!(matches!(
                first
                    .keys
                    .on_reply(0, FetchStep::Jwks, &reply(200, &jwks), now),
                crate::keys::FetchProgress::Loaded { .. }
            ));

            let mut second = worker(2);
            let Verdict::Wait(Wait {
                fetch:
                    Some(Fetch {
                        callout,
                        resume: Resume::ClientToken { client: 0 },
                    }),
                ..
            }) = run(&c, &mut second, &[], "/photos/1")
            else {
                panic!("the second worker does not ask for the PAT ({pat_endpoint})")
            };
            assert_eq!(callout.url.path, "/token");
            let pat = reply(
                200,
                r#"{"access_token":"pat-1","token_type":"Bearer","expires_in":300}"#,
            );
            let _ = super::resume(
                &c,
                &mut second,
                &FakeMetrics::default(),
                Resume::ClientToken { client: 0 },
                Ok(&pat),
                now,
            );
            let Verdict::Call {
                callout,
                resume: Resume::Ticket(_),
            } = run(&c, &mut second, &[], "/photos/1")
            else {
                panic!("no ticket request with the PAT ({pat_endpoint})")
            };
            assert_eq!(callout.url.path, "/perm");
        }
    }

    #[test]
    fn while_the_server_is_down_requests_retry_at_most_once_a_second() {
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        let token = vectors().token("good_RS256").to_string();
        let at = |s: &mut State, t: u64| {
            let request = Request {
                method: "GET",
                path: "/",
                headers: &bearer(&token),
                client: None,
            };
            authorize(&c, s, &request, t)
        };
        assert!(starts_key_fetch(&at(&mut s, now)));
        let _ = s
            .keys
            .on_reply(0, FetchStep::Discovery, &CalloutReply::default(), now);
        assert!(
            matches!(
                at(&mut s, now),
                Verdict::Deny(Denial::KeysUnavailable { .. })
            ),
            "the same second: 503, no second fetch"
        );
        assert!(
            starts_key_fetch(&at(&mut s, now + 1)),
            "a second later a request tries again, whatever the back-off"
        );
    }

    #[test]
    fn a_fetch_that_never_answers_does_not_block_later_fetches() {
        // The request that dispatched it was reset, so no reply ever comes.
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        assert_eq!(s.keys.due(now).len(), 1);
        assert!(
            s.keys.due(now + 5).is_empty(),
            "still awaited within 2 x fetch_timeout"
        );
        assert_eq!(s.keys.due(now + 11).len(), 1, "given up after the deadline");
    }

    #[test]
    fn a_refused_dispatch_is_named_in_the_503() {
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        let _ = s.keys.due(now);
        s.keys.on_dispatch_error(
            0,
            FetchStep::Discovery,
            "BadArgument (is `as` a configured cluster?)",
            now,
        );
        let token = vectors().token("good_RS256").to_string();
        let Verdict::Deny(Denial::KeysUnavailable { issuer, cause }) =
            run(&c, &mut s, &bearer(&token), "/")
        else {
            panic!()
        };
        assert_eq!(issuer, "https://issuer.test");
        assert!(
            cause.contains("OIDC discovery") && cause.contains("is `as` a configured cluster?"),
            "{cause}"
        );
    }

    #[test]
    fn failed_fetches_keep_old_keys_and_are_retried() {
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        // Kong reports a failed callout as a reply without status: a failure.
        let _ = s.keys.due(now);
        let failed = s
            .keys
            .on_reply(0, FetchStep::Discovery, &CalloutReply::default(), now);
        assert!(matches!(failed, crate::keys::FetchProgress::Failed(_)));
        assert!(s.keys.due(now).is_empty());
        assert_eq!(s.keys.due(now + 1).len(), 1, "first-load retry after 1 s");
        let jwks = String::from_utf8(vectors().jwks).unwrap();
        let _ = s
            .keys
            .on_reply(0, FetchStep::Jwks, &reply(200, &jwks), now + 1);
        let _ = s.keys.due(now + 400);
        for garbage in [
            reply(500, "oops"),
            reply(200, "<html>"),
            reply(200, r#"{"keys":[]}"#),
        ] {
            assert!(matches!(
                s.keys.on_reply(0, FetchStep::Jwks, &garbage, now + 400),
                crate::keys::FetchProgress::Failed(_)
            ));
        }
        assert!(s.keys.keys(0).is_some(), "last good keys survive");
    }

    #[test]
    fn unknown_kids_refetch_with_a_burst_allowance_and_waiters() {
        let c = fetched_config();
        let mut s = State::new(&c);
        let now = vectors().now;
        let _ = s.keys.due(now);
        let jwks = String::from_utf8(vectors().jwks).unwrap();
        let loaded =
            |s: &mut State, t: u64| s.keys.on_reply(0, FetchStep::Jwks, &reply(200, &jwks), t);
        let _ = loaded(&mut s, now);
        let junk = bearer(vectors().token("unknown_kid"));
        let at = |s: &mut State, t: u64, headers: &[(String, String)]| {
            let request = Request {
                method: "GET",
                path: "/",
                headers,
                client: None,
            };
            authorize(&c, s, &request, t)
        };
        let t = now + 1;
        assert!(starts_key_fetch(&at(&mut s, t, &junk)));
        assert!(
            matches!(
                at(&mut s, t, &junk),
                Verdict::Wait(Wait {
                    on: WaitKey::Keys(0),
                    ..
                })
            ),
            "a second request with the kid waits for the refetch"
        );
        let _ = loaded(&mut s, t);
        let Verdict::Deny(denial) = at(&mut s, t + 5, &junk) else {
            panic!("the refetch did not find it: 401")
        };
        assert_eq!(denial.code(), "kid_unknown");
        // The junk kid spent one refetch; repeating it spends none, so a
        // genuinely new kid moments later still gets its refetch.
        let _ = at(&mut s, t + 6, &junk);
        // Another unknown kid: the lookup fails before any signature check.
        let other = {
            use ct_codecs::{Base64UrlSafeNoPadding, Encoder as _};
            let header =
                Base64UrlSafeNoPadding::encode_to_string(br#"{"alg":"RS256","kid":"rotated"}"#)
                    .unwrap();
            let good = vectors().token("good_RS256").to_string();
            let rest = good.split_once('.').unwrap().1;
            bearer(&format!("{header}.{rest}"))
        };
        assert!(starts_key_fetch(&at(&mut s, t + 7, &other)));
        // A refetch that fails is a 503, not a 401.
        let _ = s
            .keys
            .on_reply(0, FetchStep::Jwks, &reply(500, "down"), t + 7);
        assert!(matches!(
            at(&mut s, t + 7, &other),
            Verdict::Deny(Denial::KeysUnavailable { .. })
        ));
        assert!(
            s.keys.keys(0).is_some(),
            "the old keys still serve their tokens"
        );
    }

    fn method_run(
        c: &Config,
        s: &mut State,
        method: &str,
        path: &str,
        headers: &[(String, String)],
    ) -> Verdict {
        let request = Request {
            method,
            path,
            headers,
            client: None,
        };
        authorize(c, s, &request, vectors().now)
    }

    fn good() -> Vec<(String, String)> {
        bearer(vectors().token("good_RS256"))
    }

    #[test]
    fn the_policy_decides_after_the_token_with_a_scope_hint() {
        // good tokens carry scopes "read write".
        let c = inline_config(
            r#","policy":{"GET /a/{id}":"read","POST /a/{id}":"read and (fido or otp)"},"public_paths":["/health"]"#,
        );
        let mut s = State::new(&c);
        assert!(matches!(
            method_run(&c, &mut s, "GET", "/a/1", &good()),
            Verdict::Allow(_)
        ));
        let Verdict::Deny(Denial::InsufficientScope { rule, scopes }) =
            method_run(&c, &mut s, "POST", "/a/1", &good())
        else {
            panic!("expected insufficient_scope")
        };
        assert_eq!(rule, "POST /a/{id}");
        assert!(
            scopes.contains(&"read".to_string()) && scopes.len() == 2,
            "{scopes:?}"
        );
        assert!(matches!(
            method_run(&c, &mut s, "GET", "/b", &good()),
            Verdict::Deny(Denial::NoRule { .. })
        ));
        assert!(matches!(
            method_run(&c, &mut s, "GET", "/health", &[]),
            Verdict::Allow(_)
        ));
        assert_eq!(
            method_run(&c, &mut s, "GET", "/a/1", &[]),
            Verdict::Deny(Denial::NoToken)
        );
        // A dot segment is resolved before matching, so it cannot dodge a rule.
        assert!(matches!(
            method_run(&c, &mut s, "GET", "/health/../b", &good()),
            Verdict::Deny(Denial::NoRule { .. })
        ));
        assert!(matches!(
            method_run(&c, &mut s, "GET", "/a/%2F", &good()),
            Verdict::Deny(Denial::InvalidRequest(_))
        ));
    }

    #[test]
    fn without_deny_by_default_unlisted_paths_need_only_a_valid_token() {
        let c = inline_config(r#","policy":{"GET /a":"admin"},"deny_by_default":false"#);
        let mut s = State::new(&c);
        assert!(matches!(
            method_run(&c, &mut s, "GET", "/b", &good()),
            Verdict::Allow(_)
        ));
        assert_eq!(
            method_run(&c, &mut s, "GET", "/b", &[]),
            Verdict::Deny(Denial::NoToken)
        );
    }

    #[test]
    fn consumers_and_the_anonymous_consumer() {
        let c = inline_config(
            r#","consumers":{"client-1":{"id":"c1","username":"alice"}},"anonymous":{"id":"anon","paths":["/open/??"]}"#,
        );
        let mut s = State::new(&c);
        let Verdict::Allow(a) = method_run(&c, &mut s, "GET", "/x", &good()) else {
            panic!()
        };
        assert!(a
            .set_headers
            .contains(&("x-consumer-id".into(), "c1".into())));
        assert!(a
            .set_headers
            .contains(&("x-consumer-username".into(), "alice".into())));
        let Verdict::Allow(a) = method_run(&c, &mut s, "GET", "/open/doc", &[]) else {
            panic!()
        };
        assert!(a
            .set_headers
            .contains(&("x-anonymous-consumer".into(), "true".into())));
        assert!(a
            .set_headers
            .contains(&("x-consumer-id".into(), "anon".into())));
        assert_eq!(
            method_run(&c, &mut s, "GET", "/x", &[]),
            Verdict::Deny(Denial::NoToken)
        );
        let expired = bearer(vectors().token("expired"));
        assert!(matches!(
            method_run(&c, &mut s, "GET", "/open/doc", &expired),
            Verdict::Deny(Denial::InvalidToken(_))
        ));

        let strict = inline_config(r#","consumers":{"someone-else":{"id":"c2"}}"#);
        let mut s = State::new(&strict);
        assert_eq!(
            method_run(&strict, &mut s, "GET", "/x", &good()),
            Verdict::Deny(Denial::InvalidToken(TokenProblem::ClientUnknown))
        );
    }

    #[test]
    fn the_pdp_is_asked_last_and_fails_closed() {
        let c = inline_config(
            r#","policy":{"GET /a":"read","GET /b":"admin"},"pdp":{"kind":"opa","upstream":"pdp","url":"http://opa/v1/data/authz","cache_seconds":5}"#,
        );
        let mut s = State::new(&c);
        assert!(
            matches!(
                method_run(&c, &mut s, "GET", "/b", &good()),
                Verdict::Deny(Denial::InsufficientScope { .. })
            ),
            "a failed scope check never reaches the PDP"
        );
        let asked = method_run(&c, &mut s, "GET", "/a", &good());
        let Verdict::Call { callout, .. } = &asked else {
            panic!()
        };
        assert_eq!(callout.url.path, "/v1/data/authz");
        let permit = reply(200, r#"{"result":true}"#);
        assert!(matches!(
            answer_pdp(&c, &mut s, asked, &permit),
            Verdict::Allow(_)
        ));
        assert!(
            matches!(
                method_run(&c, &mut s, "GET", "/a", &good()),
                Verdict::Allow(_)
            ),
            "cached permit"
        );

        let c = inline_config(
            r#","pdp":{"kind":"opa","upstream":"pdp","url":"http://opa/v1/data/authz"}"#,
        );
        let mut s = State::new(&c);
        for (answer, denied) in [
            (reply(200, "{}"), "pdp_denied"),
            (reply(200, r#"{"result":false}"#), "pdp_denied"),
            (reply(500, ""), "pdp_unavailable"),
            (CalloutReply::default(), "pdp_unavailable"),
            (reply(200, "garbage"), "pdp_unavailable"),
        ] {
            let asked = method_run(&c, &mut s, "GET", "/a", &good());
            let Verdict::Deny(denial) = answer_pdp(&c, &mut s, asked, &answer) else {
                panic!("{answer:?}")
            };
            assert_eq!(denial.code(), denied, "{answer:?}");
        }
        // A callout the host would not dispatch is decided in the core too.
        let Verdict::Call { resume, .. } = method_run(&c, &mut s, "GET", "/a", &good()) else {
            panic!()
        };
        let Resumed::Decided(Verdict::Deny(denial)) = super::resume(
            &c,
            &mut s,
            &FakeMetrics::default(),
            resume,
            Err("BadArgument"),
            vectors().now,
        ) else {
            panic!()
        };
        assert_eq!(denial.code(), "pdp_unavailable");
    }

    /// An HS256 token over `claims`, signed with the vectors' shared secret.
    fn hs_token(claims: serde_json::Value) -> String {
        use ct_codecs::{Base64UrlSafeNoPadding, Encoder as _};
        let enc = |b: &[u8]| Base64UrlSafeNoPadding::encode_to_string(b).unwrap();
        let input = format!(
            "{}.{}",
            enc(br#"{"alg":"HS256","typ":"JWT"}"#),
            enc(claims.to_string().as_bytes())
        );
        let mac = hmac_sha256::HMAC::mac(input.as_bytes(), vectors().hs_secret.as_bytes());
        format!("{input}.{}", enc(&mac))
    }

    fn hs_config(extra: &str) -> Config {
        let json = format!(
            r#"{{"issuers":[{{"issuer":"https://hs.test","audiences":["api"],"shared_secret":"{}"}}]{extra}}}"#,
            vectors().hs_secret
        );
        Config::from_json(json.as_bytes(), &|_| None).unwrap()
    }

    fn hs_claims(extra: serde_json::Value) -> serde_json::Value {
        let mut claims = serde_json::json!({"iss": "https://hs.test", "aud": "api",
            "sub": "alice", "client_id": "app", "scope": "read", "exp": vectors().now + 600});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    }

    #[test]
    fn forgeable_headers_are_stripped_in_every_spelling_a_backend_merges() {
        let c = hs_config(r#","forward":{"claims":{"sub":"X-Jwt-Sub"}},"public_paths":["/open"]"#);
        let mut s = State::new(&c);
        let sent = h(&[
            ("x_authenticated_scope", "admin"),
            ("x-authenticated_scope", "admin"),
            ("x_jwt_sub", "root"),
            ("x_consumer_id", "c0"),
            ("x_other", "kept"),
        ]);
        let Verdict::Allow(public) = method_run(&c, &mut s, "GET", "/open", &sent) else {
            panic!()
        };
        assert_eq!(
            public.remove_headers,
            [
                "x_authenticated_scope",
                "x-authenticated_scope",
                "x_jwt_sub",
                "x_consumer_id"
            ]
        );
        let mut with_token = bearer(&hs_token(hs_claims(serde_json::json!({}))));
        with_token.extend(sent);
        let Verdict::Allow(allowed) = method_run(&c, &mut s, "GET", "/x", &with_token) else {
            panic!()
        };
        assert_eq!(allowed.remove_headers, public.remove_headers);
        assert!(allowed
            .set_headers
            .contains(&("x-authenticated-scope".into(), "read".into())));
    }

    #[test]
    fn the_anonymous_consumer_is_bound_by_the_policy() {
        let c = hs_config(
            r#","policy":{"GET /catalog/??":"read","POST,PUT,DELETE /catalog/??":"write"},
                "anonymous":{"id":"anon","paths":["/catalog/??"],"scopes":["read"]}"#,
        );
        let mut s = State::new(&c);
        let Verdict::Allow(a) = method_run(&c, &mut s, "GET", "/catalog/item1", &[]) else {
            panic!("anonymous read is allowed")
        };
        assert!(a
            .set_headers
            .contains(&("x-authenticated-scope".into(), "read".into())));
        assert_eq!(
            method_run(&c, &mut s, "DELETE", "/catalog/item1", &[]),
            Verdict::Deny(Denial::NoToken),
            "anonymous lacks write: a 401 challenge, as for a missing token"
        );
        let basic = h(&[("authorization", "Basic YTpi")]);
        assert_eq!(
            method_run(&c, &mut s, "DELETE", "/catalog/item1", &basic),
            Verdict::Deny(Denial::NoToken)
        );
        let reader = bearer(&hs_token(hs_claims(serde_json::json!({}))));
        assert!(matches!(
            method_run(&c, &mut s, "DELETE", "/catalog/item1", &reader),
            Verdict::Deny(Denial::InsufficientScope { .. })
        ));

        let no_scopes = hs_config(
            r#","policy":{"GET /catalog/??":"read"},"anonymous":{"id":"anon","paths":["/catalog/??"]}"#,
        );
        let mut s = State::new(&no_scopes);
        assert_eq!(
            method_run(&no_scopes, &mut s, "GET", "/catalog/x", &[]),
            Verdict::Deny(Denial::NoToken),
            "no scopes by default"
        );
    }

    #[test]
    fn claims_that_cannot_be_headers_reject_the_token_and_nothing_is_cached() {
        let c = hs_config(r#","forward":{"claims":{"sub":"x-jwt-sub"}}"#);
        let mut s = State::new(&c);
        for extra in [
            serde_json::json!({"sub": "alice\r\nx-admin: true"}),
            serde_json::json!({"client_id": "app\u{0}"}),
            serde_json::json!({"scope": "read a,b"}),
        ] {
            let token = hs_token(hs_claims(extra.clone()));
            let Verdict::Deny(denial) = run(&c, &mut s, &bearer(&token), "/") else {
                panic!("{extra} was let through")
            };
            assert_eq!(denial.code(), "claim_unusable", "{extra}");
        }
        assert!(s.tokens.is_empty());
        // A control character in a claim that is not sent upstream is harmless.
        let token = hs_token(hs_claims(serde_json::json!({"name": "a\nb"})));
        assert!(matches!(
            run(&c, &mut s, &bearer(&token), "/"),
            Verdict::Allow(_)
        ));
    }

    #[test]
    fn the_token_cache_holds_compact_grants_within_its_byte_budget() {
        let c = hs_config(r#","token_cache_bytes":65536"#);
        let mut s = State::new(&c);
        let groups: Vec<String> = (0..700).map(|i| format!("group-{i}")).collect();
        // 400 grants weigh more than 64 KiB on 32- and 64-bit targets alike.
        for i in 0..400 {
            let token = hs_token(hs_claims(
                serde_json::json!({"jti": format!("t{i}"), "groups": groups}),
            ));
            assert!(matches!(
                run(&c, &mut s, &bearer(&token), "/"),
                Verdict::Allow(_)
            ));
            assert!(s.tokens.bytes() <= 65536);
        }
        // The big `groups` claim is not forwarded, so it is not kept: a grant
        // weighs a few hundred bytes, not the ~10 KB of its claims.
        assert!(s.tokens.len() > 100, "{} cached", s.tokens.len());
        assert!(s.tokens.stats().evictions > 0);
    }

    /// Makes `state` count its signature checks, in the returned cell.
    fn count_signature_checks(state: &mut State) -> Rc<std::cell::Cell<usize>> {
        use crate::verify::{KeyMaterial, SignatureVerifier, VerifyError};
        struct Counting(Rc<std::cell::Cell<usize>>);
        impl SignatureVerifier for Counting {
            fn verify(
                &self,
                alg: crate::alg::Alg,
                key: &KeyMaterial,
                input: &[u8],
                signature: &[u8],
            ) -> Result<(), VerifyError> {
                self.0.set(self.0.get() + 1);
                PureRustVerifier.verify(alg, key, input, signature)
            }
        }
        let checks = Rc::new(std::cell::Cell::new(0));
        state.verifier = Box::new(Counting(Rc::clone(&checks)));
        checks
    }

    #[test]
    fn cheap_checks_run_before_any_signature_work() {
        let c = inline_config("");
        let mut s = State::new(&c);
        let checks = count_signature_checks(&mut s);
        for name in [
            "wrong_iss",
            "wrong_aud",
            "expired",
            "not_yet_valid",
            "alg_none",
        ] {
            let headers = bearer(vectors().token(name));
            assert!(
                matches!(run(&c, &mut s, &headers, "/"), Verdict::Deny(_)),
                "{name}"
            );
        }
        assert_eq!(checks.get(), 0, "no signature was checked");
        let good = bearer(vectors().token("good_RS256"));
        assert!(matches!(run(&c, &mut s, &good, "/"), Verdict::Allow(_)));
        assert_eq!(checks.get(), 1, "the counter counts");
    }

    #[test]
    fn a_repeated_forgery_costs_one_signature_check_per_minute() {
        let c = inline_config("");
        let mut s = State::new(&c);
        let checks = count_signature_checks(&mut s);
        let forged = bearer(vectors().token("bad_signature"));
        let at = |s: &mut State, t: u64| {
            let request = Request {
                method: "GET",
                path: "/",
                headers: &forged,
                client: None,
            };
            authorize(&c, s, &request, t)
        };
        let now = vectors().now;
        for _ in 0..5 {
            let Verdict::Deny(denial) = at(&mut s, now) else {
                panic!()
            };
            assert_eq!(denial.code(), "signature_invalid");
        }
        assert_eq!(checks.get(), 1, "answered from memory after the first");
        assert_eq!(s.rejected.stats().hits, 4);
        let _ = at(&mut s, now + REJECTED_CACHE_SECONDS);
        assert_eq!(checks.get(), 2, "remembered for a minute only");
        // A good token is never put there.
        let _ = run(&c, &mut s, &good(), "/");
        assert_eq!(s.rejected.len(), 1);
    }
}

#[cfg(test)]
#[path = "engine_introspection_tests.rs"]
mod introspection_tests;
