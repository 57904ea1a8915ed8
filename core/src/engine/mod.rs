//! The decision for one request, as data: allow (with the headers to set and
//! strip), deny (with a [`Denial`]), or "make this callout first". The glue
//! runs the callout, feeds the reply to [`resume`] and asks again.
//!
//! By stage, each in its file: [`verdict_for`] normalises the path and runs
//! them in order. `authenticate` finds and verifies the token (with its
//! caches), `introspect` asks the authorization server about the tokens that
//! need it, `authorize` checks consumers, the policy and the PDP, `uma`
//! answers UMA resources with tickets, and `upstream` builds the request let
//! through. `resume` takes callouts' answers and the root's ticks; `state`
//! is what one worker keeps between requests.

mod authenticate;
mod authorize;
mod bind;
mod exchange;
mod fanout;
mod fleet;
mod introspect;
mod resume;
mod revoke;
mod state;
mod uma;
mod upstream;

#[cfg(test)]
pub(crate) mod test_support;

use std::rc::Rc;

use crate::cache::Digest;
use crate::callout::Callout;
use crate::config::Config;
use crate::grant::Grant;
use crate::keys::FetchStep;
use crate::metrics::CalloutKind;
use crate::request::normalize_target;
use crate::response::{Denial, HttpResponse, RequestProblem};
use crate::upstream_oauth::{rule_for, Routing};
use crate::wait::{Note, WaitKey};

pub use authorize::PendingPdp;
pub use exchange::PendingExchange;
pub use fanout::PendingDeny;
pub use fleet::PendingFleet;
pub use introspect::{PendingIntrospection, MAX_INTROSPECTIONS_IN_FLIGHT};
pub use resume::{due, fetching_here, resume, timed_out};
pub use state::State;
pub use uma::PendingTicket;

/// The facts of one request, as the glue read them.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Lowercase names, in arrival order, repeats kept.
    pub headers: &'a [(String, String)],
    /// The client's address (Envoy's `source.address`, without the port),
    /// when the host tells it: whose share of a callout budget is spent.
    pub client: Option<&'a str>,
    /// The SHA-256 of the client certificate of the connection, hex (Envoy's
    /// `connection.sha256_peer_certificate_digest`), when there is one.
    pub peer_certificate: Option<&'a str>,
    /// Where the host routes the request (Envoy's virtual host, route and
    /// cluster), as far as upstream OAuth rules need it.
    pub routing: Routing<'a>,
    /// The body, once read: complete, or cut one byte past the bound
    /// ([`Verdict::ReadBody`]); empty when the headers ended the request.
    /// `None` until then: only a JSON-RPC selector reads it.
    pub body: Option<&'a [u8]>,
}

impl Request<'_> {
    /// The authority the host routes on: `:authority`, or `host` where the
    /// host has no pseudo-header.
    pub fn authority(&self) -> Option<&str> {
        let named = |name: &str| {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        named(":authority").or_else(|| named("host"))
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
    /// Let through without a verified token (a public path, the anonymous
    /// consumer): the gateway's own token goes only where an upstream OAuth
    /// rule says `anonymous`.
    pub anonymous: bool,
    /// The caller's verified token, while the request's upstream OAuth rule
    /// still has to exchange it (taken before the verdict leaves the core).
    pub(crate) subject_token: Option<SubjectToken>,
}

/// A caller's token kept for its exchange: never printed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SubjectToken(pub(crate) Rc<str>);

impl std::fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectToken(..)")
    }
}

/// The outcome of an introspection, for the requests that waited for it.
pub type Known = (Digest, Result<Rc<Grant>, Denial>);

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
    /// The policy reads the request's body (a JSON-RPC selector). Carry out
    /// `allow`'s header changes now (headers cannot change once they have
    /// passed; `allow` is what passes if the body does), let the headers go
    /// on, hold the body, and decide again with it ([`Request::body`]) once
    /// it is complete or over `max_bytes`; parked as `wait` says (on
    /// [`WaitKey::Body`], nothing to fetch) until it is read, or answered
    /// with [`timed_out`] at its deadline.
    ReadBody(Box<ReadBody>),
    /// Answer the request from the filter, not as a denial: a protected
    /// resource's metadata document (RFC 9728), needing no token.
    Respond(HttpResponse),
    /// The revocation receiver's answer to a pushed security event, with
    /// its log line and the metrics it moves.
    Receipt(Box<Receipt>),
}

/// See [`Verdict::Receipt`].
#[derive(Debug, PartialEq)]
pub struct Receipt {
    pub response: HttpResponse,
    pub note: Note,
    pub counters: Vec<crate::metrics::Counter>,
    pub gauges: Vec<(crate::metrics::Gauge, u64)>,
}

/// See [`Verdict::ReadBody`].
#[derive(Debug, PartialEq)]
pub struct ReadBody {
    pub allow: Allow,
    pub max_bytes: usize,
    pub wait: Wait,
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
    /// The token exchange of one caller token for one upstream OAuth rule,
    /// which every request with that token waits for.
    Exchange(Box<PendingExchange>),
    /// One etcd call of the revocation fan-out: a step of the deny poll,
    /// or of the receiver's write for the request that pushed a SET.
    Deny(Box<PendingDeny>),
    /// One etcd call of the fleet cache: a step of a token's introspection
    /// (its requests wait on it), or a write nobody waits for.
    Fleet(Box<PendingFleet>),
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
    /// Nothing to do now: the fetch goes on from a later tick (or was a
    /// write nobody waits for). Log the notes.
    Later { notes: Vec<Note> },
}

/// What the root does on a tick, besides expiring waits.
#[derive(Debug, PartialEq)]
pub enum Due {
    /// Dispatch this fetch (a refresh, a retry, a first load).
    Dispatch(Fetch),
    /// Another worker's fetch left its result in shared data, now taken
    /// here: the requests parked on `on` may go on.
    Wake { on: WaitKey, notes: Vec<Note> },
    /// Only log these.
    Log(Vec<Note>),
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
            Resume::Exchange(_) => CalloutKind::Exchange,
            Resume::Deny(_) => CalloutKind::FleetCache,
            Resume::Fleet(_) => CalloutKind::FleetCache,
        }
    }
}

/// What to do with one request: [`verdict_knowing`] for a request that has
/// not waited for an introspection.
pub fn verdict_for(config: &Config, state: &mut State, request: &Request, now: u64) -> Verdict {
    verdict_knowing(config, state, request, None, now)
}

/// What to do with one request; `known` is the outcome of the introspection
/// it waited for, if it did, used whatever the caches kept of it. The path is
/// normalised first: the path judged is the path forwarded.
pub fn verdict_knowing(
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
    let path = &target.path;
    if let Some(resource) = config.resources.by_metadata_path(path) {
        return Verdict::Respond(resource.metadata_reply(request.method));
    }
    if let Some(receiver) = revoke::receiver_at(config, path) {
        return revoke::receive(config, state, receiver, request, now);
    }
    let rule = rule_for(
        &config.upstream_oauth,
        request.method,
        path,
        request.authority(),
        request.routing,
    );
    if rule.is_some_and(|r| r.bound_to_route()) && upstream::rerouted(&target, request.path) {
        // Envoy picks the route again for the path forwarded, after the
        // route this rule was matched against: the token could follow it.
        return Verdict::Deny(Denial::InvalidRequest(RequestProblem::Rerouted));
    }
    let verdict = authorize::check_access(config, state, request, path, rule, known, now);
    let verdict = upstream::add_gateway_token(config, state, request, rule, verdict, now);
    upstream::forward_as_judged(verdict, &target, request.path)
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
