//! The glue's routing against a recording fake host: which context every
//! host call acts on, which callouts go out, who is resumed or answered.
//! Each test plays the host: it enters a context, then calls the hook the
//! SDK would (`decide` for request headers, `on_reply`, `on_tick`, `forget`).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;

use oauth_pep_core::callout::{Callout, CalloutReply};
use oauth_pep_core::config::Config;
use oauth_pep_core::metrics::testing::FakeMetrics;
use oauth_pep_core::metrics::{Counter, Gauge, Histogram, Metrics};
use oauth_pep_core::response::HttpResponse;
use oauth_pep_core::services::testing::FakeClock;
use oauth_pep_core::services::Clock;
use oauth_pep_core::wait::Bound;
use serde_json::Value;

use super::*;

/// The root context's id, as the fake host numbers them.
const ROOT: u32 = 1;

/// What a host call did, to the context that was effective then.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    /// A local reply: its status and the `reason` of its JSON body.
    Answered(u32, String),
    Resumed,
    SetHeader(String, String),
    RemovedHeader(String),
    ClearedRoute,
    ReasonState(String),
}

#[derive(Default)]
struct FakeHost {
    clock: FakeClock,
    metrics: FakeMetrics,
    /// The context host calls act on now.
    current: Cell<u32>,
    /// Every callout dispatched: the context that did it, its token, the call.
    dispatched: RefCell<Vec<(u32, u32, Callout)>>,
    /// Upstreams whose dispatch the host refuses.
    refused: RefCell<HashSet<String>>,
    /// Requests that ended: making one effective fails.
    gone: RefCell<HashSet<u32>>,
    /// Every context the glue asked to make effective, gone or not: a
    /// request that ended must not be asked for at all.
    acted_on: RefCell<Vec<u32>>,
    events: RefCell<Vec<(u32, Event)>>,
    /// Every tick period the glue set.
    ticks: RefCell<Vec<std::time::Duration>>,
}

impl FakeHost {
    fn record(&self, event: Event) {
        self.events.borrow_mut().push((self.current.get(), event));
    }

    fn events_of(&self, context: u32) -> Vec<Event> {
        self.events
            .borrow()
            .iter()
            .filter(|(c, _)| *c == context)
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn resumed(&self) -> Vec<u32> {
        self.contexts_with(|e| *e == Event::Resumed)
    }

    fn answered(&self) -> Vec<(u32, u32, String)> {
        self.events
            .borrow()
            .iter()
            .filter_map(|(c, e)| match e {
                Event::Answered(status, reason) => Some((*c, *status, reason.clone())),
                _ => None,
            })
            .collect()
    }

    fn contexts_with(&self, pick: impl Fn(&Event) -> bool) -> Vec<u32> {
        self.events
            .borrow()
            .iter()
            .filter(|(_, e)| pick(e))
            .map(|(c, _)| *c)
            .collect()
    }

    /// The token and URL path of every callout `context` dispatched.
    fn callouts_of(&self, context: u32) -> Vec<(u32, String)> {
        self.dispatched
            .borrow()
            .iter()
            .filter(|(c, _, _)| *c == context)
            .map(|(_, token, callout)| (*token, callout.url.path.clone()))
            .collect()
    }
}

impl Clock for FakeHost {
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}

impl Metrics for FakeHost {
    fn increment(&self, counter: Counter, by: u64) {
        self.metrics.increment(counter, by);
    }

    fn set(&self, gauge: Gauge, value: u64) {
        self.metrics.set(gauge, value);
    }

    fn record(&self, histogram: Histogram, value: u64) {
        self.metrics.record(histogram, value);
    }
}

impl Door for FakeHost {
    fn dispatch(&self, callout: &Callout) -> Result<u32, String> {
        if self.refused.borrow().contains(&callout.upstream) {
            return Err(format!(
                "BadArgument (is `{}` a cluster?)",
                callout.upstream
            ));
        }
        let mut dispatched = self.dispatched.borrow_mut();
        // Tokens start at 100, apart from context ids.
        let token = 100 + dispatched.len() as u32;
        dispatched.push((self.current.get(), token, callout.clone()));
        Ok(token)
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), ()> {
        self.acted_on.borrow_mut().push(context_id);
        if self.gone.borrow().contains(&context_id) {
            return Err(());
        }
        self.current.set(context_id);
        Ok(())
    }

    fn send_response(&self, response: &HttpResponse) {
        let body: Value = serde_json::from_slice(&response.body).unwrap();
        // A denial's reason (a JSON-RPC error body carries it in
        // `error.data`); a protected resource's document has none.
        let reason = body["reason"]
            .as_str()
            .or_else(|| body["error"]["data"]["reason"].as_str())
            .unwrap_or_default()
            .to_string();
        self.record(Event::Answered(response.status, reason));
    }

    fn resume_request(&self) {
        self.record(Event::Resumed);
    }

    fn remove_request_header(&self, name: &str) {
        self.record(Event::RemovedHeader(name.to_string()));
    }

    fn set_request_header(&self, name: &str, value: &str) {
        self.record(Event::SetHeader(name.to_string(), value.to_string()));
    }

    fn clear_route_cache(&self) {
        self.record(Event::ClearedRoute);
    }

    fn set_tick_period(&self, period: std::time::Duration) {
        self.ticks.borrow_mut().push(period);
    }

    fn set_reason_filter_state(&self, code: &str) {
        self.record(Event::ReasonState(code.to_string()));
    }
}

/// core/tests/vectors.json: its `now`, a token by name, and its JWKS.
struct Vectors(Value);

impl Vectors {
    fn load() -> Vectors {
        Vectors(serde_json::from_str(include_str!("../core/tests/vectors.json")).unwrap())
    }

    fn now_ms(&self) -> u64 {
        self.0["now"].as_u64().unwrap() * 1000
    }

    fn token(&self, name: &str) -> String {
        self.0["tokens"][name].as_str().unwrap().to_string()
    }

    /// Without its `oct` key, published for other tools: a configured JWKS
    /// may not hold one (a fetched one's is skipped).
    fn jwks(&self) -> String {
        let mut jwks = self.0["jwks"].clone();
        if let Some(keys) = jwks["keys"].as_array_mut() {
            keys.retain(|k| k["kty"] != "oct");
        }
        jwks.to_string()
    }
}

/// The glue over a fake host at the vectors' time, on "Envoy".
fn glue(config: &str) -> Shared<FakeHost> {
    let host = FakeHost::default();
    host.clock.advance_ms(Vectors::load().now_ms());
    host.current.set(ROOT);
    let config = Config::from_json(config.as_bytes(), &|_| None).unwrap();
    let state = State::new(&config);
    Shared::new(config, true, host, state)
}

/// One issuer whose keys come from discovery, then its JWKS, on cluster `as`.
fn fetched() -> Shared<FakeHost> {
    glue(
        r#"{"issuers":[{"issuer":"https://issuer.test","audiences":["api"],"discovery":true,"upstream":"as"}]}"#,
    )
}

/// One issuer with inline keys, and an OPA PDP on cluster `pdp`.
fn with_pdp() -> Shared<FakeHost> {
    let jwks = Vectors::load().jwks();
    glue(&format!(
        r#"{{"issuers":[{{"issuer":"https://issuer.test","audiences":["api"],"jwks":{jwks}}}],"pdp":{{"kind":"opa","upstream":"pdp","url":"http://opa/v1/data/authz"}}}}"#
    ))
}

/// The host runs request `id`'s header callback with a good token.
fn request(shared: &Shared<FakeHost>, id: u32) -> Outcome {
    bearer_request(shared, id, &Vectors::load().token("good_RS256"))
}

/// The host runs request `id`'s header callback with `token` as a Bearer.
fn bearer_request(shared: &Shared<FakeHost>, id: u32, token: &str) -> Outcome {
    shared.host.current.set(id);
    let facts = facts(
        &[
            (":method", "GET"),
            (":path", "/"),
            (":authority", "api.test"),
            ("authorization", &format!("Bearer {token}")),
            ("x-request-id", &format!("req-{id}")),
        ],
        false,
    );
    shared.decide(id, facts, None, None)
}

/// What the host hands the glue for a request with `headers`, `ended` when
/// they end it; no client address, certificate, routing or body. The tests
/// differ only in those two, so the rest is written once.
fn facts(headers: &[(&str, &str)], ended: bool) -> Facts {
    Facts {
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        client: None,
        peer_certificate: None,
        routing: None,
        ended,
        body: None,
        reading: None,
    }
}

/// The host runs the root's tick.
fn tick(shared: &Shared<FakeHost>) {
    shared.host.current.set(ROOT);
    shared.on_tick();
}

/// The host delivers the answer to `token` to the context that dispatched it.
fn answer(shared: &Shared<FakeHost>, token: u32, status: u16, body: &str) {
    let context = shared
        .host
        .dispatched
        .borrow()
        .iter()
        .find(|(_, t, _)| *t == token)
        .map(|(c, _, _)| *c)
        .unwrap();
    shared.host.current.set(context);
    let reply = CalloutReply {
        status: Some(status),
        body: body.as_bytes().to_vec(),
        oversized: None,
    };
    shared.on_reply(token, &reply, context == ROOT);
}

const DISCOVERY: &str = r#"{"issuer":"https://issuer.test","jwks_uri":"https://issuer.test/keys"}"#;

/// Ticks, answers the discovery the root dispatched, then its JWKS fetch.
fn load_keys(shared: &Shared<FakeHost>) {
    tick(shared);
    let [(discovery, path)] = shared.host.callouts_of(ROOT).try_into().unwrap();
    assert_eq!(path, "/.well-known/openid-configuration");
    answer(shared, discovery, 200, DISCOVERY);
    let calls = shared.host.callouts_of(ROOT);
    let [_, (jwks, path)] = calls.as_slice() else {
        panic!("no JWKS fetch after discovery: {calls:?}")
    };
    assert_eq!(path, "/keys");
    answer(shared, *jwks, 200, &Vectors::load().jwks());
}

fn is_identity(event: &Event) -> bool {
    matches!(event, Event::SetHeader(name, _) if name == "x-oauth-client-id")
}

#[test]
fn a_request_waiting_for_keys_is_parked_until_the_root_has_fetched_them() {
    let shared = fetched();
    assert!(matches!(request(&shared, 7), Outcome::Hold));
    assert!(
        shared.host.dispatched.borrow().is_empty(),
        "a request never dispatches a key fetch: its context may end first"
    );
    assert!(
        shared.host.events.borrow().is_empty(),
        "parked, not answered"
    );

    load_keys(&shared);

    assert_eq!(shared.host.acted_on.borrow().as_slice(), &[7]);
    let events = shared.host.events_of(7);
    assert!(
        events.contains(&Event::SetHeader(
            "x-oauth-client-id".into(),
            "client-1".into()
        )),
        "{events:?}"
    );
    assert!(events.contains(&Event::SetHeader(
        "x-authenticated-scope".into(),
        "read,write".into()
    )));
    assert_eq!(events.last(), Some(&Event::Resumed), "headers set first");
    assert_eq!(shared.host.resumed(), vec![7]);
    assert_eq!(
        shared.host.events_of(ROOT),
        vec![],
        "nothing acts on the root"
    );
    let loaded = shared.state.borrow().keys.keys(0).map(|k| k.len());
    assert!(loaded > Some(0));
    assert_eq!(
        shared.host.metrics.gauge(Gauge::KeysLoaded { issuer: 0 }),
        loaded.map(|n| n as u64)
    );

    // The keys are loaded: the next request goes on at once, without a wait.
    assert!(matches!(request(&shared, 8), Outcome::Proceed));
    assert!(shared.host.events_of(8).iter().any(is_identity));
    assert_eq!(shared.host.dispatched.borrow().len(), 2);
}

#[test]
fn twenty_requests_waiting_for_one_issuer_share_one_fetch() {
    let shared = fetched();
    let ids: Vec<u32> = (10..30).collect();
    for &id in &ids {
        assert!(matches!(request(&shared, id), Outcome::Hold));
    }
    load_keys(&shared);
    tick(&shared);

    assert_eq!(
        shared.host.dispatched.borrow().len(),
        2,
        "one discovery and one JWKS fetch"
    );
    let mut resumed = shared.host.resumed();
    resumed.sort_unstable();
    assert_eq!(resumed, ids, "each once");
    let mut with_identity = shared.host.contexts_with(is_identity);
    with_identity.sort_unstable();
    assert_eq!(with_identity, ids);
}

#[test]
fn a_wait_past_its_deadline_is_answered_503_and_an_ended_request_is_left_alone() {
    let shared = fetched();
    request(&shared, 7);
    request(&shared, 8);
    tick(&shared);
    let fetches = shared.host.dispatched.borrow().len();
    assert_eq!(fetches, 1, "the discovery fetch, which never answers");

    // Request 8's client goes away.
    shared.forget(8);
    shared.host.gone.borrow_mut().insert(8);

    shared.host.clock.advance_ms(5_000);
    tick(&shared);
    assert!(
        shared.host.events.borrow().is_empty(),
        "within the deadline"
    );

    shared.host.clock.advance_ms(10_000);
    tick(&shared);
    assert_eq!(
        shared.host.answered(),
        vec![(7, 503, "keys_unavailable".to_string())]
    );
    assert_eq!(
        shared.host.events_of(7),
        vec![
            Event::ReasonState("keys_unavailable".into()),
            Event::Answered(503, "keys_unavailable".into())
        ]
    );
    assert!(!shared.host.acted_on.borrow().contains(&8));
    assert!(shared.host.events_of(8).is_empty());
    assert!(shared.host.resumed().is_empty());

    // A late answer to the first fetch acts on no one either.
    answer(&shared, 100, 200, DISCOVERY);
    assert_eq!(shared.host.acted_on.borrow().as_slice(), &[7]);
}

#[test]
fn an_ended_request_is_not_woken_when_the_keys_arrive() {
    let shared = fetched();
    request(&shared, 7);
    request(&shared, 8);
    shared.forget(8);
    shared.host.gone.borrow_mut().insert(8);
    load_keys(&shared);
    assert_eq!(shared.host.acted_on.borrow().as_slice(), &[7]);
    assert_eq!(shared.host.resumed(), vec![7]);
    assert!(shared.host.events_of(8).is_empty());
}

#[test]
fn a_pdp_answer_resumes_the_request_that_asked() {
    let shared = with_pdp();
    assert!(matches!(request(&shared, 7), Outcome::Hold));
    assert!(matches!(request(&shared, 8), Outcome::Hold));
    let [(token, path)] = shared.host.callouts_of(7).try_into().unwrap();
    assert_eq!(path, "/v1/data/authz");
    assert_eq!(shared.host.callouts_of(8).len(), 1);
    assert!(shared.host.events.borrow().is_empty(), "both wait");

    answer(&shared, token, 200, r#"{"result":true}"#);

    assert_eq!(shared.host.resumed(), vec![7]);
    let events = shared.host.events_of(7);
    assert!(events.iter().any(is_identity), "{events:?}");
    assert!(shared.host.events_of(8).is_empty(), "still waiting");
    assert_eq!(
        shared.host.acted_on.borrow().as_slice(),
        &[7],
        "only on the request that asked"
    );
    assert_eq!(shared.host.metrics.counter(Counter::Allowed), 1);
}

#[test]
fn a_pdp_callout_the_host_refuses_is_a_503_without_resume() {
    let shared = with_pdp();
    shared.host.refused.borrow_mut().insert("pdp".into());
    assert!(matches!(request(&shared, 7), Outcome::Hold));
    assert!(shared.host.dispatched.borrow().is_empty());
    assert_eq!(
        shared.host.answered(),
        vec![(7, 503, "pdp_unavailable".to_string())]
    );
    assert!(shared.host.resumed().is_empty());
}

#[test]
fn a_key_fetch_the_host_refuses_answers_the_parked_requests_503() {
    let shared = fetched();
    shared.host.refused.borrow_mut().insert("as".into());
    request(&shared, 7);
    request(&shared, 8);
    tick(&shared);

    assert!(shared.host.dispatched.borrow().is_empty());
    let mut answered = shared.host.answered();
    answered.sort();
    assert_eq!(
        answered,
        vec![
            (7, 503, "keys_unavailable".to_string()),
            (8, 503, "keys_unavailable".to_string())
        ]
    );
    assert!(shared.host.resumed().is_empty());
    assert!(shared.host.events_of(ROOT).is_empty(), "never on the root");
}

/// One issuer that introspects opaque tokens on cluster `as`.
fn introspecting() -> Shared<FakeHost> {
    glue(
        r#"{"issuers":[{"issuer":"https://issuer.test","audiences":"any","introspection":{"endpoint":"https://issuer.test/introspect","upstream":"as","client_id":"pep","client_secret":"s"}}]}"#,
    )
}

#[test]
fn requests_with_one_opaque_token_share_one_introspection_the_root_makes() {
    let shared = introspecting();
    for id in [7, 8, 9] {
        assert!(matches!(
            bearer_request(&shared, id, "opaque"),
            Outcome::Hold
        ));
    }
    assert!(
        shared.host.dispatched.borrow().is_empty(),
        "requests never dispatch it"
    );
    assert_eq!(
        shared.host.ticks.borrow().last(),
        Some(&DISPATCH_SOON),
        "the root is asked to tick at once"
    );
    tick(&shared);
    let [(token, path)] = shared.host.callouts_of(ROOT).try_into().unwrap();
    assert_eq!(path, "/introspect");
    answer(
        &shared,
        token,
        200,
        r#"{"active":true,"scope":"read","client_id":"app"}"#,
    );
    let mut resumed = shared.host.resumed();
    resumed.sort_unstable();
    assert_eq!(resumed, vec![7, 8, 9]);
    for id in [7, 8, 9] {
        assert!(shared.host.events_of(id).iter().any(is_identity), "{id}");
    }
    // Later: from the cache, no callout.
    assert!(matches!(
        bearer_request(&shared, 10, "opaque"),
        Outcome::Proceed
    ));
    assert_eq!(shared.host.dispatched.borrow().len(), 1);
    tick(&shared);
    assert_eq!(
        shared.host.ticks.borrow().last(),
        Some(&TICK),
        "back to the slow tick"
    );
}

#[test]
fn a_failed_introspection_answers_every_waiter_503_and_is_not_remembered() {
    let shared = introspecting();
    bearer_request(&shared, 7, "opaque");
    bearer_request(&shared, 8, "opaque");
    tick(&shared);
    let [(token, _)] = shared.host.callouts_of(ROOT).try_into().unwrap();
    answer(&shared, token, 500, "oops");
    let mut answered = shared.host.answered();
    answered.sort();
    assert_eq!(
        answered,
        vec![
            (7, 503, "introspection_unavailable".to_string()),
            (8, 503, "introspection_unavailable".to_string())
        ]
    );
    assert!(
        matches!(bearer_request(&shared, 9, "opaque"), Outcome::Hold),
        "asked again"
    );
}

/// One introspecting issuer with these `waits`.
fn introspecting_within(waits: &str) -> Shared<FakeHost> {
    glue(&format!(
        r#"{{"issuers":[{{"issuer":"https://issuer.test","audiences":"any","introspection":{{"endpoint":"https://issuer.test/introspect","upstream":"as","client_id":"pep","client_secret":"s"}}}}],"waits":{waits}}}"#
    ))
}

/// The replies (answers and resumes) the glue made so far.
fn replies(shared: &Shared<FakeHost>) -> usize {
    shared.host.answered().len() + shared.host.resumed().len()
}

#[test]
fn replies_to_parked_requests_go_out_a_batch_per_callback() {
    let shared = introspecting();
    let ids: Vec<u32> = (10..110).collect();
    for &id in &ids {
        bearer_request(&shared, id, "made-up");
    }
    tick(&shared);
    let [(token, _)] = shared.host.callouts_of(ROOT).try_into().unwrap();
    answer(&shared, token, 200, r#"{"active":false}"#);
    assert_eq!(replies(&shared), 32, "one batch from the reply's callback");
    assert_eq!(shared.host.ticks.borrow().last(), Some(&DISPATCH_SOON));
    let mut seen = 32;
    while seen < ids.len() {
        tick(&shared);
        let now = replies(&shared);
        assert!(now - seen <= 32 && now > seen, "{seen} then {now}");
        seen = now;
    }
    let mut answered: Vec<u32> = shared.host.answered().iter().map(|a| a.0).collect();
    answered.sort_unstable();
    assert_eq!(answered, ids, "each once, 401");
    assert!(shared
        .host
        .answered()
        .iter()
        .all(|(_, status, reason)| *status == 401 && reason == "token_inactive"));
    tick(&shared);
    assert_eq!(shared.host.ticks.borrow().last(), Some(&TICK));
}

#[test]
fn beyond_the_caps_a_request_is_answered_503_overloaded_at_once() {
    let shared = introspecting_within(r#"{"max_per_key":3,"max_per_worker":5}"#);
    for id in 10..13 {
        assert!(matches!(bearer_request(&shared, id, "a"), Outcome::Hold));
    }
    assert!(shared.host.answered().is_empty());
    bearer_request(&shared, 13, "a");
    assert_eq!(
        shared.host.answered(),
        vec![(13, 503, "overloaded".to_string())],
        "a fourth on one token"
    );
    bearer_request(&shared, 14, "b");
    bearer_request(&shared, 15, "c");
    assert_eq!(
        shared.host.answered().len(),
        1,
        "the fifth in the worker parks"
    );
    bearer_request(&shared, 16, "d");
    assert_eq!(
        shared.host.answered().last(),
        Some(&(16, 503, "overloaded".to_string())),
        "a sixth does not"
    );
    assert_eq!(
        shared
            .host
            .metrics
            .counter(Counter::Overload(Bound::Waiters)),
        2
    );
    // A request that ended frees its place.
    shared.forget(10);
    shared.host.gone.borrow_mut().insert(10);
    assert!(matches!(bearer_request(&shared, 17, "a"), Outcome::Hold));
    assert_eq!(shared.host.answered().len(), 2);
}

#[test]
fn a_request_keeps_its_first_deadline_while_fetches_time_out_and_restart() {
    let shared = fetched();
    request(&shared, 7);
    tick(&shared);
    // fetch_timeout_ms defaults to 5 s: the wait ends 2 x 5 + 1 s on.
    for _ in 0..2 {
        shared.host.clock.advance_ms(5_000);
        let (token, _) = *shared.host.callouts_of(ROOT).last().unwrap();
        shared.host.current.set(ROOT);
        shared.on_reply(token, &CalloutReply::default(), true);
        tick(&shared);
        assert!(shared.host.answered().is_empty(), "parked again");
    }
    assert!(
        shared.host.callouts_of(ROOT).len() >= 2,
        "fetches restarted"
    );
    shared.host.clock.advance_ms(1_000);
    tick(&shared);
    assert_eq!(
        shared.host.answered(),
        vec![(7, 503, "keys_unavailable".to_string())],
        "at its first deadline, not the last fetch's"
    );
}

/// An issuer with inline keys, the gateway's client `backend` on cluster
/// `as`, its token sent upstream on every path of `api.test`.
fn with_upstream_oauth() -> Shared<FakeHost> {
    with_upstream_rule("")
}

/// As [`with_upstream_oauth`], with `more` appended to the rule's members:
/// the two setups differ only there, so they are written once.
fn with_upstream_rule(more: &str) -> Shared<FakeHost> {
    let jwks = Vectors::load().jwks();
    glue(&format!(
        r#"{{"issuers":[{{"issuer":"https://issuer.test","audiences":["api"],"jwks":{jwks}}}],
          "clients":{{"backend":{{"token_endpoint":"https://issuer.test/token","upstream":"as","client_id":"gw","client_secret":"s"}}}},
          "upstream_oauth":[{{"client":"backend","authorities":["api.test"]{more}}}]}}"#
    ))
}

/// The root makes the one call to the token endpoint that requests 7 and 8
/// (already parked) wait for; it is answered 200 with `body`, and both go on
/// with `Bearer {sent}` upstream. Shared by the client credentials and the
/// exchange tests: one fetch for all waiters is the same protocol for both.
fn root_fetch_resumes_both(shared: &Shared<FakeHost>, what: &str, body: &str, sent: &str) {
    tick(shared);
    let calls = shared.host.callouts_of(ROOT);
    let [(token, path)] = calls.as_slice() else {
        panic!("{what}: {calls:?}")
    };
    assert_eq!(path, "/token");
    answer(shared, *token, 200, body);
    let mut resumed = shared.host.resumed();
    resumed.sort_unstable();
    assert_eq!(resumed, vec![7, 8]);
    for id in [7, 8] {
        assert!(shared.host.events_of(id).contains(&Event::SetHeader(
            "authorization".into(),
            format!("Bearer {sent}")
        )));
    }
}

/// Request 7 waits for the root's first call, which is answered 500: what
/// each failure test then sees in `answered`.
fn root_fetch_fails(shared: &Shared<FakeHost>) {
    request(shared, 7);
    tick(shared);
    let [(token, _)] = shared.host.callouts_of(ROOT).try_into().unwrap();
    answer(shared, token, 500, "down");
}

#[test]
fn requests_waiting_for_the_gateways_token_share_the_roots_fetch() {
    let shared = with_upstream_oauth();
    for id in [7, 8] {
        assert!(matches!(request(&shared, id), Outcome::Hold));
    }
    assert!(shared.host.dispatched.borrow().is_empty());
    root_fetch_resumes_both(
        &shared,
        "one token request",
        r#"{"access_token":"gw-token","token_type":"Bearer","expires_in":300}"#,
        "gw-token",
    );
    assert_eq!(
        shared.host.metrics.counter(Counter::ClientToken {
            client: 0,
            ok: true
        }),
        1
    );
}

#[test]
fn a_failed_token_request_answers_its_waiters_503() {
    let shared = with_upstream_oauth();
    root_fetch_fails(&shared);
    assert_eq!(
        shared.host.answered(),
        vec![(7, 503, "client_token_unavailable".to_string())]
    );
}

/// As [`with_upstream_oauth`], the rule exchanging the caller's token (RFC 8693).
fn with_token_exchange() -> Shared<FakeHost> {
    with_upstream_rule(r#","exchange":{"audience":"https://backend"}"#)
}

#[test]
fn requests_with_one_caller_token_share_the_exchange_the_root_makes() {
    // A new kind of callout with no glue change: parked, dispatched from the
    // root and woken by WaitKey as every other fetch.
    let shared = with_token_exchange();
    for id in [7, 8] {
        assert!(matches!(request(&shared, id), Outcome::Hold));
    }
    root_fetch_resumes_both(
        &shared,
        "one exchange",
        r#"{"access_token":"for-the-caller","token_type":"Bearer","expires_in":300,"issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#,
        "for-the-caller",
    );
    // Cached: the next request with the token goes through at once.
    assert!(!matches!(request(&shared, 9), Outcome::Hold));
    assert_eq!(shared.host.callouts_of(ROOT).len(), 1);
    assert_eq!(
        shared.host.metrics.counter(Counter::Callout(
            oauth_pep_core::metrics::CalloutKind::Exchange,
            oauth_pep_core::metrics::CalloutOutcome::Ok
        )),
        1
    );
}

#[test]
fn a_failed_exchange_answers_its_waiters_503() {
    let shared = with_token_exchange();
    root_fetch_fails(&shared);
    assert_eq!(
        shared.host.answered(),
        vec![(7, 503, "exchange_unavailable".to_string())]
    );
}

#[test]
fn a_permission_ticket_is_the_requests_own_callout() {
    let shared = glue(
        r#"{"issuers":[{"issuer":"https://issuer.test","audiences":["api"],"upstream":"as",
            "introspection":{"endpoint":"https://issuer.test/introspect","client_id":"pep","client_secret":"s"}}],
          "clients":{"pat":{"token_endpoint":"https://issuer.test/token","upstream":"as","client_id":"rs","client_secret":"s"}},
          "uma":{"issuer":"https://issuer.test","client":"pat","permission_endpoint":"https://issuer.test/perm","upstream":"as",
            "resources":[{"resource_id":"photos","policy":{"GET /??":"view"}}]}}"#,
    );
    shared.host.current.set(7);
    let facts = facts(&[(":method", "GET"), (":path", "/")], true);
    shared.decide(7, facts, None, None);
    tick(&shared);
    let [(pat, _)] = shared.host.callouts_of(ROOT).try_into().unwrap();
    answer(
        &shared,
        pat,
        200,
        r#"{"access_token":"pat-1","token_type":"Bearer","expires_in":300}"#,
    );
    // Woken by the root, the request asks for its ticket itself; the SDK
    // hands the answer to the root, whose callback was running.
    let [(ticket, path)] = shared.host.callouts_of(7).try_into().unwrap();
    assert_eq!(path, "/perm");
    shared.host.current.set(ROOT);
    let reply = CalloutReply {
        status: Some(201),
        body: br#"{"ticket":"t-1"}"#.to_vec(),
        oversized: None,
    };
    shared.on_reply(ticket, &reply, true);
    assert_eq!(
        shared.host.answered(),
        vec![(7, 401, "uma_ticket".to_string())]
    );
}

/// Inline keys, and a policy whose admin tools need `admin` (the vectors'
/// good token has `read write`), reading at most 72 bytes for 2 s.
fn with_tools() -> Shared<FakeHost> {
    let jwks = Vectors::load().jwks();
    glue(&format!(
        r#"{{"issuers":[{{"issuer":"https://issuer.test","audiences":["api"],"jwks":{jwks}}}],
            "jsonrpc":{{"max_body_bytes":72,"body_timeout_seconds":2}},
            "policy":{{"GET /":"read","GET / tools/call admin_*":"admin"}}}}"#
    ))
}

/// The host hands request `id`'s body, `size` bytes buffered so far, to the
/// body callback; the glue reads from `body`.
fn body(shared: &Shared<FakeHost>, id: u32, body: &[u8], end: bool) -> Outcome {
    shared.host.current.set(id);
    shared.on_body(id, body.len(), end, |n| {
        body.get(..n.min(body.len())).unwrap().to_vec()
    })
}

fn held(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::Hold)
}

#[test]
fn a_body_a_selector_reads_is_held_then_judged() {
    let shared = with_tools();
    // The headers go on, changed as if the body passes (identity set).
    assert!(!held(request(&shared, 2)));
    assert!(shared.host.events_of(2).iter().any(is_identity));
    // Part of it: held, nothing answered.
    assert!(held(body(
        &shared,
        2,
        br#"{"jsonrpc":"2.0","id":1,"#,
        false
    )));
    assert_eq!(shared.host.answered(), vec![]);
    let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"admin_x"}}"#;
    assert!(call.len() > 72);
    let small = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}"#;
    assert!(small.len() <= 72);
    assert!(!held(body(&shared, 2, small, true)));
    // Passed: the headers are not changed again.
    let identities = shared
        .host
        .events_of(2)
        .iter()
        .filter(|e| is_identity(e))
        .count();
    assert_eq!(identities, 1);
    // An admin tool: 403, from the body callback.
    assert!(!held(request(&shared, 3)));
    let admin = br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"admin_x"}}"#;
    assert!(admin.len() <= 72);
    assert!(held(body(&shared, 3, admin, true)));
    // Over the bound before its end: 413 at once.
    assert!(!held(request(&shared, 4)));
    assert!(held(body(&shared, 4, call, false)));
    assert_eq!(
        shared.host.answered(),
        vec![
            (3, 403, "insufficient_scope".to_string()),
            (4, 413, "body_too_large".to_string())
        ]
    );
    // Nothing is left waiting; a body for a request not reading passes.
    assert_eq!(shared.waiting.borrow().bytes, 0);
    assert!(shared.waiting.borrow().parked.is_empty());
    assert!(!held(body(&shared, 9, b"x", true)));
}

#[test]
fn a_slow_body_is_answered_408_at_its_deadline() {
    let shared = with_tools();
    assert!(!held(request(&shared, 2)));
    assert!(held(body(&shared, 2, b"{", false)));
    shared.host.clock.advance_ms(1_000);
    tick(&shared);
    assert_eq!(shared.host.answered(), vec![]);
    shared.host.clock.advance_ms(1_200);
    tick(&shared);
    assert_eq!(
        shared.host.answered(),
        vec![(2, 408, "body_timeout".to_string())]
    );
    assert!(shared.waiting.borrow().parked.is_empty());
}

#[test]
fn a_request_without_a_body_where_a_selector_reads_it_is_refused_at_once() {
    let shared = with_tools();
    shared.host.current.set(5);
    let token = Vectors::load().token("good_RS256");
    let facts = facts(
        &[
            (":method", "GET"),
            (":path", "/"),
            ("authorization", &format!("Bearer {token}")),
        ],
        true,
    );
    assert!(held(shared.decide(5, facts, None, None)));
    assert_eq!(
        shared.host.answered(),
        vec![(5, 400, "body_invalid".to_string())]
    );
}

#[test]
fn a_protected_resources_metadata_is_answered_at_once_without_a_callout() {
    let shared = glue(
        r#"{"issuers":[{"issuer":"https://issuer.test","audiences":["api"],"discovery":true,"upstream":"as"}],
            "resources":[{"resource":"https://api.test/mcp"}]}"#,
    );
    shared.host.current.set(3);
    let facts = facts(
        &[
            (":method", "GET"),
            (":path", "/.well-known/oauth-protected-resource/mcp"),
            (":authority", "evil.test"),
        ],
        false,
    );
    assert!(matches!(shared.decide(3, facts, None, None), Outcome::Hold));
    assert_eq!(shared.host.answered(), vec![(3, 200, String::new())]);
    assert!(shared.host.dispatched.borrow().is_empty(), "no key fetch");
    assert!(shared.host.resumed().is_empty());
}

/// One introspecting issuer and the fleet cache (etcd on cluster `etcd`,
/// no etcd auth).
fn with_fleet_cache() -> Shared<FakeHost> {
    let host = FakeHost::default();
    host.clock.advance_ms(Vectors::load().now_ms());
    host.current.set(ROOT);
    let json = r#"{"issuers":[{"issuer":"https://issuer.test","audiences":"any","introspection":{"endpoint":"https://issuer.test/introspect","upstream":"as","client_id":"pep","client_secret":"s"}}],
        "fleet_cache":{"endpoint":"http://etcd.test:2379","upstream":"etcd","hmac_key_env":"K"}}"#;
    let env = |_: &str| Some("fleet-key-0123456789abcdef-0123456789".to_string());
    let config = Config::from_json(json.as_bytes(), &env).unwrap();
    let state = State::new(&config);
    Shared::new(config, true, host, state)
}

/// The fleet cache's etcd calls are steps of the token's one fetch: the
/// root makes each, the requests wake once the introspection settles, and
/// the write afterwards (a step nobody waits for) wakes nobody.
#[test]
fn a_fleet_lookup_and_its_write_go_through_the_root_without_knowing_what_they_are() {
    let shared = with_fleet_cache();
    for id in [7, 8] {
        assert!(matches!(
            bearer_request(&shared, id, "opaque"),
            Outcome::Hold
        ));
    }
    tick(&shared);
    let header = r#""header":{"revision":"3"}"#;
    let steps = [
        ("/v3/kv/range", format!("{{{header}}}")),
        (
            "/v3/lease/grant",
            format!(r#"{{{header},"ID":"5","TTL":"5"}}"#),
        ),
        ("/v3/kv/txn", format!(r#"{{{header},"succeeded":true}}"#)),
    ];
    for (expected, body) in steps {
        let (token, path) = shared.host.callouts_of(ROOT).last().cloned().unwrap();
        assert_eq!(path, expected);
        assert!(shared.host.resumed().is_empty());
        answer(&shared, token, 200, &body);
    }
    let (token, path) = shared.host.callouts_of(ROOT).last().cloned().unwrap();
    assert_eq!(path, "/introspect");
    answer(
        &shared,
        token,
        200,
        r#"{"active":true,"scope":"read","client_id":"app"}"#,
    );
    let mut resumed = shared.host.resumed();
    resumed.sort_unstable();
    assert_eq!(resumed, vec![7, 8]);
    // The write, from the next tick: a lease, then the put.
    tick(&shared);
    let (token, path) = shared.host.callouts_of(ROOT).last().cloned().unwrap();
    assert_eq!(path, "/v3/lease/grant");
    answer(
        &shared,
        token,
        200,
        &format!(r#"{{{header},"ID":"6","TTL":"330"}}"#),
    );
    let (token, path) = shared.host.callouts_of(ROOT).last().cloned().unwrap();
    assert_eq!(path, "/v3/kv/put");
    answer(&shared, token, 200, &format!("{{{header}}}"));
    assert_eq!(shared.host.resumed().len(), 2, "nobody else woken");
    assert_eq!(shared.host.callouts_of(ROOT).len(), 6);
}
