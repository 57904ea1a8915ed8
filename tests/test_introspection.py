"""RFC 7662 token introspection through a real Envoy: opaque tokens pass with
identity headers, the answer is cached (per worker and shared by workers),
revocation and negative results last their TTL, every authorization-server
fault is a 503 that nothing remembers, client authentication (basic, post,
secret from the environment), the phantom-token header, serve_stale, and
`mode: introspect` for JWTs.

The authorization server is tests/authserver.py (`/introspect`, opaque tokens
from /_test/opaque, faults from /_test/introspection); what it received is
read back from /_test/stats. Envoys that can be shared live for the module.
"""

import base64
import json
import re
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

import harness

REALM = "introspection-test"
# Introspection clients of this module's authorization server. The odd one
# needs form-urlencoding in Basic credentials (a raw ':' / '+' / '%' breaks it).
ODD_ID = "pep odd"
ODD_SECRET = "s3c:r&t+=/%Zq-6d1f"
ENV_SECRET = "env-secret-91c2e07b"
ENV_VAR = "OAUTH_PEP_TEST_INTROSPECTION_SECRET"
# This module's authorization server has these introspection clients (conftest's authserver_module).
AUTHSERVER_INTROSPECTION_CLIENTS = {"pep": "pep-secret", ODD_ID: ODD_SECRET, "pep-env": ENV_SECRET}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def delta(before, after, name):
    return after.get(name, 0) - before.get(name, 0)


def result_counter(issuer, result):
    return "oauth_pep.introspections.issuer.%s.result.%s" % (harness.label(issuer), result)


def introspection(a, **over):
    """The `introspection` block of an issuer (client pep / pep-secret, basic)."""
    return harness._overridden({"endpoint": a.url("/introspect"), "client_id": "pep",
                                "client_secret": "pep-secret"}, over)


def issuer(a, intro=None, **over):
    """An issuer entry for the authserver with introspection (no keys unless
    discovery is asked for)."""
    return harness._overridden({"issuer": a.issuer, "audiences": ["api"], "upstream": "authserver",
                                "introspection": introspection(a, **(intro or {}))}, over)


def config(*issuers, **top):
    cfg = {"realm": REALM, "issuers": list(issuers)}
    cfg.update(top)
    return cfg


def send(env, path="/", token=None, headers=(), timeout=10):
    """GET on a new connection (a new chance of another worker)."""
    return harness.send_raw(env, path, headers, token, timeout)


def upstream_headers(r):
    """What the echo upstream received, from a 200 response."""
    assert r.status == 200, r
    return r.json()["headers"]


def check_inactive(r):
    """401 token_inactive with an invalid_token challenge."""
    assert r.status == 401, r
    params = harness.bearer_params(r.headers.get("www-authenticate"))
    assert params is not None, r
    assert params["realm"] == REALM and params["error"] == "invalid_token", r
    body = r.json()
    assert body["reason"] == "token_inactive" and body["error"] == "invalid_token", body
    return body


def check_unavailable(r):
    """503 introspection_unavailable, like the filter's other outages: no
    challenge (it is not the client's fault), a Retry-After."""
    assert r.status == 503, r
    assert r.headers.get("content-type", "").startswith("application/json"), r
    body = r.json()
    assert body["reason"] == "introspection_unavailable", body
    assert body["error"] == "temporarily_unavailable", body
    assert "www-authenticate" not in r.headers, r
    assert int(r.headers.get("retry-after", "0")) > 0, r
    return body


def assert_not_in_log(env, *secrets):
    time.sleep(0.3)  # the log is flushed every 100 ms
    log = env.log_text()
    for s in secrets:
        assert s not in log, "%r appears in the Envoy log" % s


def secret_spellings(cid, secret):
    """A secret as the log could leak it: raw, form-urlencoded, in a Basic header."""
    enc = urllib.parse.quote_plus
    return [secret, enc(secret), urllib.parse.quote(secret, safe=""),
            base64.b64encode(("%s:%s" % (enc(cid), enc(secret))).encode()).decode(),
            base64.b64encode(("%s:%s" % (cid, secret)).encode()).decode()]


def poll(fn, until, timeout, interval=0.1):
    """Calls fn() every `interval` s until until(result); returns (result, the
    monotonic time it was obtained, every earlier result)."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        r = fn()
        t = time.monotonic()
        if until(r):
            return r, t, seen
        seen.append(r)
        if t >= deadline:
            raise AssertionError("no matching result within %.1fs; last: %r" % (timeout, r))
        time.sleep(interval)


def start_loaded(factory, a, cfg, **kw):
    """Start Envoy; with discovery, wait until the keys are loaded."""
    env = factory(cfg, **kw)
    if any(i.get("discovery") for i in cfg["issuers"]):
        env.wait_status("/", 200, token=a.mint(), timeout=20)
    return env


# --------------------------------------------------------------------------
# the main Envoy: introspection beside local JWT verification, a policy, the
# phantom token header
# --------------------------------------------------------------------------

POLICY = {"GET /admin/??": "admin", "GET /??": "read"}


@pytest.fixture(scope="module")
def main_envoy(module_envoy, authserver_module):
    a = authserver_module
    a.reset()
    cfg = config(issuer(a, discovery=True), policy=POLICY,
                 forward={"phantom_token_header": "x-introspection"})
    return start_loaded(module_envoy, a, cfg)


def test_opaque_token_passes_with_identity_headers_then_is_answered_from_cache(main_envoy, authserver):
    a, env = authserver, main_envoy
    exp = int(time.time()) + 900
    token = a.opaque(sub="user-7", client_id="orders-app", scope="read write", exp=exp)
    before = harness.wasm_stats(env)

    h = upstream_headers(send(env, "/orders/1", token=token))
    assert h.get("x-authenticated-scope") == "read,write", h
    assert h.get("x-oauth-client-id") == "orders-app", h
    assert h.get("x-oauth-expiration") == str(exp), h
    assert a.introspections(token) == 1

    # The callout, as the authorization server received it.
    req = a.last_introspection()
    assert req["method"] == "POST" and req["path"] == "/introspect", req
    assert req["headers"]["content-type"].split(";")[0].strip() == "application/x-www-form-urlencoded", req
    assert req["headers"].get("accept") == "application/json", req
    assert req["form"] == {"token": token, "token_type_hint": "access_token"}, req
    assert req["auth_method"] == "client_secret_basic" and req["client_authenticated"], req

    # Same token again, on another connection: no callout, same identity.
    h2 = upstream_headers(send(env, "/orders/2", token=token))
    assert {k: h2.get(k) for k in ("x-authenticated-scope", "x-oauth-client-id", "x-oauth-expiration")} == \
        {k: h.get(k) for k in ("x-authenticated-scope", "x-oauth-client-id", "x-oauth-expiration")}
    assert a.introspections(token) == 1, "the second request made a callout"

    after = harness.wasm_stats(env)
    assert delta(before, after, result_counter(a.issuer, "active")) == 1, after
    assert delta(before, after, "oauth_pep.callouts.kind.introspection.outcome.ok") == 1, after
    assert delta(before, after, "oauth_pep.allowed") == 2, after
    assert_not_in_log(env, token, "pep-secret")


def test_jwt_is_verified_locally_by_default(main_envoy, authserver):
    """mode defaults to jwt: a JWT of an issuer with introspection is not introspected."""
    a = authserver
    jwt = a.mint()
    assert send(main_envoy, token=jwt).status == 200
    assert a.introspections() == 0, a.stats()


def test_introspected_scopes_feed_the_policy(main_envoy, authserver):
    a = authserver
    reader = a.opaque(scope="read write")
    r = send(main_envoy, "/admin/users", token=reader)
    assert r.status == 403, r
    assert r.json()["reason"] == "insufficient_scope", r
    params = harness.bearer_params(r.headers.get("www-authenticate"))
    assert params and params["error"] == "insufficient_scope" and params["scope"] == "admin", r
    admin = a.opaque(scope="admin read")
    assert upstream_headers(send(main_envoy, "/admin/users", token=admin))["x-authenticated-scope"] == "admin,read"


def test_inactive_token_is_401_invalid_token_and_remembered(main_envoy, authserver):
    a, env = authserver, main_envoy
    before = harness.wasm_stats(env)
    unknown = "opaque-" + "q" * 40
    check_inactive(send(env, token=unknown))
    assert a.introspections(unknown) == 1
    revoked = a.opaque()
    a.revoke(revoked)
    check_inactive(send(env, token=revoked))
    # negative_ttl_seconds defaults to 10: the answer is remembered
    check_inactive(send(env, token=unknown))
    assert a.introspections(unknown) == 1, "an inactive answer was not cached"
    after = harness.wasm_stats(env)
    assert delta(before, after, "oauth_pep.denied.reason.token_inactive") == 3, after
    assert delta(before, after, result_counter(a.issuer, "inactive")) == 2, after


# name, claim overrides (now), expected status, expected reason (None: any 401 invalid_token)
ACTIVE_CLAIMS = [
    ("expired_beyond_skew", lambda n: dict(exp=n - 120), 401, "token_expired"),
    ("expired_within_skew", lambda n: dict(exp=n - 20), 200, None),
    ("nbf_in_future", lambda n: dict(nbf=n + 600), 401, "token_not_yet_valid"),
    ("other_iss", lambda n: dict(iss="https://other.example"), 401, None),
    ("no_iss", lambda n: dict(iss=None), 200, None),
    ("wrong_aud", lambda n: dict(aud="other-api"), 401, "audience_mismatch"),
    ("aud_list_with_api", lambda n: dict(aud=["x", "api"]), 200, None),
    ("token_type_refresh", lambda n: dict(token_type="refresh_token"), 401, None),
    ("token_type_access_token", lambda n: dict(token_type="access_token"), 200, None),
    ("no_token_type", lambda n: dict(token_type=None), 200, None),
]


@pytest.mark.parametrize("name,claims,status,reason", ACTIVE_CLAIMS, ids=[c[0] for c in ACTIVE_CLAIMS])
def test_active_answer_claims_are_checked_like_jwt_claims(main_envoy, authserver, name, claims, status, reason):
    token = authserver.opaque(**claims(harness.now()))
    r = send(main_envoy, token=token)
    assert r.status == status, r
    if status == 401:
        params = harness.bearer_params(r.headers.get("www-authenticate"))
        assert params and params["error"] == "invalid_token", r
        body = r.json()
        assert body["error"] == "invalid_token", body
        if reason:
            assert body["reason"] == reason, body
        assert body["reason"] != "token_inactive", body


def _json_ws_outside_strings(text):
    return re.search(r"\s", re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)) is not None


def test_phantom_token_header_carries_the_answer_and_forgeries_are_stripped(main_envoy, authserver):
    a, env = authserver, main_envoy
    token = a.opaque(sub="usér-ü 7", scope="read write", client_id="orders-app")
    forged = [("X-Introspection", '{"active":true,"sub":"forged","scope":"admin"}'),
              ("x_introspection", '{"active":true,"sub":"forged2"}'),
              ("X_INTROSPECTION", "forged3")]
    h = upstream_headers(send(env, "/x", token=token, headers=forged))
    raw = h.get("x-introspection")
    assert raw is not None, h
    assert "forged" not in json.dumps(h), "a forged phantom header reached the upstream: %r" % h
    assert all(ord(c) < 128 for c in raw), "not ASCII: %r" % raw
    assert not _json_ws_outside_strings(raw), "not compact JSON: %r" % raw
    doc = json.loads(raw)
    assert doc["active"] is True and doc["sub"] == "usér-ü 7" and doc["scope"] == "read write", doc
    assert doc["client_id"] == "orders-app", doc
    assert not any(k.replace("_", "-") == "x-introspection" and k != "x-introspection" for k in h), h

    # From the cache: the same header.
    assert upstream_headers(send(env, "/y", token=token, headers=forged)).get("x-introspection") == raw
    assert a.introspections(token) == 1

    # A JWT verified locally: no introspection answer, and still no forgery.
    h = upstream_headers(send(env, "/z", token=a.mint(), headers=forged))
    assert not any(k.replace("_", "-") == "x-introspection" for k in h), h
    assert "forged" not in json.dumps(h), h


def test_active_result_is_cached_until_5s_before_exp(main_envoy, authserver):
    """max_ttl_seconds is 300 here: a token expiring in 8 s is cached until exp - 5 s."""
    a, env = authserver, main_envoy
    token = a.opaque(exp=harness.now() + 8)
    t0 = time.monotonic()
    assert send(env, token=token).status == 200
    assert a.introspections(token) == 1
    _, t, seen = poll(lambda: (send(env, token=token).status, a.introspections(token)),
                      lambda s: s[1] == 2, timeout=6)
    assert all(s == (200, 1) for s in seen), seen
    assert 1.0 <= t - t0 <= 4.6, "re-introspected %.2fs after the first call (exp - 5 s = ~3 s)" % (t - t0)


# --------------------------------------------------------------------------
# two workers
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_workers(module_envoy, authserver_module):
    def bounded_upstream(b):
        # 200 requests released at once must not need 200 new connections to
        # the echo server (its listen backlog is small).
        for c in b["static_resources"]["clusters"]:
            if c["name"] == "upstream":
                c["circuit_breakers"] = {"thresholds": [{"max_connections": 16, "max_pending_requests": 1024,
                                                         "max_requests": 1024}]}
    return module_envoy(config(issuer(authserver_module)), concurrency=2, customize=bounded_upstream)


def worker_connections(env):
    return {k.split(".worker_")[1].split(".")[0]: v for k, v in env.stats("downstream_cx_total").items()
            if k.startswith("listener.127.0.0.1_%d.worker_" % env.port)}


OBSERVED = {}


def test_two_workers_share_one_callout_per_token(two_workers, authserver):
    a, env = authserver, two_workers
    before_cx, before = worker_connections(env), harness.wasm_stats(env)
    tokens = [a.opaque(sub="w%d" % i) for i in range(5)]
    for _ in range(16):
        for t in tokens:
            r = send(env, token=t)
            assert r.status == 200, r
    after_cx, after = worker_connections(env), harness.wasm_stats(env)
    used = {w: after_cx[w] - before_cx.get(w, 0) for w in after_cx}
    assert len(used) == 2 and all(n > 0 for n in used.values()), "both workers must serve: %r" % used
    counts = {t[:8]: a.introspections(t) for t in tokens}
    OBSERVED["sequential, 5 tokens x 16 connections"] = counts
    print("\nobserved callouts per token over 2 workers:", counts, "connections per worker:", used)
    assert all(1 <= n <= 2 for n in counts.values()), counts
    shared_hits = delta(before, after, "oauth_pep.cache_hits.cache.introspection_shared")
    assert shared_hits > 0, "no worker found another's answer in the shared cache: %r" % after
    assert sum(counts.values()) < 2 * len(tokens), counts


def test_200_concurrent_requests_with_one_new_token(two_workers, authserver):
    a, env = authserver, two_workers
    token = a.opaque()
    a.set_introspection_mode("slow", delay_ms=300)  # every request arrives while the callout is out
    n = 200
    barrier = threading.Barrier(n, timeout=20)
    before_cx = worker_connections(env)

    def one(_):
        barrier.wait()
        try:
            return send(env, token=token, timeout=15).status
        except OSError as e:
            return repr(e)

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=n) as pool:
        statuses = list(pool.map(one, range(n)))
    elapsed = time.monotonic() - t0
    after_cx = worker_connections(env)
    calls = a.introspections(token)
    OBSERVED["200 concurrent, one token"] = calls
    print("\n200 concurrent requests: %d callouts, %.2fs, connections per worker %r" % (
        calls, elapsed, {w: after_cx[w] - before_cx.get(w, 0) for w in after_cx}))
    assert statuses == [200] * n, {s: statuses.count(s) for s in set(statuses)}
    assert 1 <= calls <= 2, calls


# --------------------------------------------------------------------------
# TTLs: revocation, negative results, an outage past the TTL (failure_mode deny)
# --------------------------------------------------------------------------

TTL = 2


@pytest.fixture(scope="module")
def short_ttl(module_envoy, authserver_module):
    intro = {"max_ttl_seconds": TTL, "negative_ttl_seconds": TTL}
    return module_envoy(config(issuer(authserver_module, intro)))


def test_revoked_token_is_allowed_until_the_ttl_then_refused(short_ttl, authserver):
    a, env = authserver, short_ttl
    token = a.opaque()
    t0 = time.monotonic()
    assert send(env, token=token).status == 200
    a.revoke(token)
    assert send(env, token=token).status == 200, "within the TTL the cached answer stands"
    assert a.introspections(token) == 1
    r, t, seen = poll(lambda: send(env, token=token), lambda r: r.status != 200, timeout=TTL + 3)
    check_inactive(r)
    assert a.introspections(token) == 2, "one new callout once the TTL passed"
    # (the filter's clock may count whole seconds: a TTL of 2 s lasts 1 to 2 s)
    assert TTL - 1 - 0.05 <= t - t0 <= TTL + 1.5, "refused %.2fs after the first callout" % (t - t0)


def test_negative_result_lives_for_its_ttl_only(short_ttl, authserver):
    a, env = authserver, short_ttl
    token = a.opaque(active=False)
    t0 = time.monotonic()
    check_inactive(send(env, token=token))
    a.update_opaque(token, active=True)
    check_inactive(send(env, token=token))
    assert a.introspections(token) == 1, "the inactive answer was not cached"
    r, t, seen = poll(lambda: send(env, token=token), lambda r: r.status == 200, timeout=TTL + 3)
    assert all(s.status == 401 for s in seen), seen
    assert a.introspections(token) == 2
    assert TTL - 1 - 0.05 <= t - t0 <= TTL + 1.5, "allowed %.2fs after the first callout" % (t - t0)


def test_deny_mode_refuses_an_expired_cache_entry_while_the_server_is_down(short_ttl, authserver):
    a, env = authserver, short_ttl
    token = a.opaque()
    assert send(env, token=token).status == 200
    a.set_introspection_mode("error500")
    r, _, seen = poll(lambda: send(env, token=token), lambda r: r.status != 200, timeout=TTL + 3)
    check_unavailable(r)
    assert a.introspections(token) == 2


# --------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------

DEAD_PORT = harness.free_port()  # nothing listens there
DEAD_ISSUER = "http://127.0.0.1:%d" % DEAD_PORT


@pytest.fixture(scope="module")
def fault_envoy(module_envoy, authserver_module):
    a = authserver_module
    dead = {"issuer": DEAD_ISSUER, "audiences": "any", "upstream": "deadport",
            "introspection": {"endpoint": DEAD_ISSUER + "/introspect", "client_id": "pep",
                              "client_secret": "pep-secret", "token_prefix": "dead_", "timeout_ms": 500}}
    cfg = config(issuer(a, {"timeout_ms": 500}), dead)
    return module_envoy(cfg, clusters={"deadport": DEAD_PORT})


# fault -> the callout outcome it is counted as (README, Metrics): ok = a 2xx
# answer (unusable here), error = another status or a body over 1 MiB,
# no_response = no HTTP answer at all.
FAULTS = {"error500": "error", "error400": "error", "garbage": "ok", "html": "ok", "no_active": "ok",
          "huge": "error", "hang": "no_response", "close": "no_response", "refused": "no_response"}


def fault_request(a, env, fault):
    """One request with a new token while the authorization server has
    `fault`; returns (token, issuer, response, seconds, stats before, after)."""
    iss = DEAD_ISSUER if fault == "refused" else a.issuer
    token = a.opaque(_prefix="dead_" if fault == "refused" else "", iss=iss)
    before = harness.wasm_stats(env)
    if fault != "refused":
        a.set_introspection_mode(fault)
    t0 = time.monotonic()
    r = send(env, "/f/" + fault, token=token)
    elapsed = time.monotonic() - t0
    return token, iss, r, elapsed, before, harness.wasm_stats(env)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_fault_is_503_counted_and_not_cached(fault_envoy, authserver, fault):
    a, env = authserver, fault_envoy
    token, iss, r, elapsed, before, after = fault_request(a, env, fault)
    body = check_unavailable(r)
    assert token not in r.body.decode() and "pep-secret" not in r.body.decode(), body
    assert delta(before, after, result_counter(iss, "failed")) == 1, after
    assert delta(before, after, "oauth_pep.denied.reason.introspection_unavailable") == 1, after
    assert delta(before, after, result_counter(iss, "active")) == 0, after
    outcomes = [delta(before, after, "oauth_pep.callouts.kind.introspection.outcome." + o)
                for o in ("ok", "error", "no_response", "not_dispatched")]
    assert sum(outcomes) == 1, "one callout, counted once: %r" % after
    if fault == "hang":
        assert 0.4 <= elapsed <= 2.5, "timeout_ms 500, answered after %.2fs" % elapsed
    line = harness.wait_until(lambda: [ln for ln in env.log_text().splitlines()
                                       if "denied status=503 reason=introspection_unavailable" in ln
                                       and "path=/f/%s" % fault in ln], 5, what="the denial log line")[-1]
    assert "issuer=" + iss in line and "cause=" in line, line
    assert "][warning][" in line, "an outage is logged at warn: %r" % line
    assert token not in env.log_text() and "pep-secret" not in env.log_text()
    if fault == "refused":
        assert a.introspections(token) == 0
        return
    assert a.introspections(token) == 1
    a.set_introspection_mode("ok")
    r = env.wait_status("/", 200, token=token, timeout=1.5)
    assert a.introspections(token) == 2, "the fault was cached"


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_callout_outcome_metric(fault_envoy, authserver, fault):
    *_, before, after = fault_request(authserver, fault_envoy, fault)
    outcome = "oauth_pep.callouts.kind.introspection.outcome."
    got = {o: delta(before, after, outcome + o) for o in ("ok", "error", "no_response", "not_dispatched")}
    assert got == {o: int(o == FAULTS[fault]) for o in got}, got


# --------------------------------------------------------------------------
# client authentication
# --------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_client_authentication_method(start_envoy, authserver, method):
    a = authserver
    env = start_envoy(config(issuer(a, {"client_id": ODD_ID, "client_secret": ODD_SECRET,
                                        "auth_method": method})))
    token = a.opaque()
    assert send(env, token=token).status == 200
    req = a.last_introspection()
    assert req["auth_method"] == method and req["client_id"] == ODD_ID and req["client_authenticated"], req
    assert req["form"]["token"] == token and req["form"]["token_type_hint"] == "access_token", req
    if method == "client_secret_basic":
        assert "client_id" not in req["form"] and "client_secret" not in req["form"], req
        creds = base64.b64decode(req["headers"]["authorization"][len("Basic "):]).decode()
        assert creds.count(":") == 1, "id and secret not form-urlencoded: %r" % creds
    else:
        assert "authorization" not in req["headers"], req
        assert req["form"]["client_id"] == ODD_ID and req["form"]["client_secret"] == ODD_SECRET, req
    assert_not_in_log(env, *secret_spellings(ODD_ID, ODD_SECRET))


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_wrong_client_secret_is_an_outage_not_the_callers_fault(start_envoy, authserver, method):
    a = authserver
    wrong = "wrong-secret-5be0a9f3"
    env = start_envoy(config(issuer(a, {"client_secret": wrong, "auth_method": method})))
    token = a.opaque()
    before = harness.wasm_stats(env)
    r = send(env, token=token)
    check_unavailable(r)
    req = a.last_introspection()
    assert req["status"] == 401 and not req["client_authenticated"], req
    assert wrong not in r.body.decode() and wrong not in json.dumps(r.headers)
    assert delta(before, harness.wasm_stats(env), result_counter(a.issuer, "failed")) == 1
    check_unavailable(send(env, token=token))
    assert a.introspections(token) == 2, "a failed introspection was cached"
    assert_not_in_log(env, *secret_spellings("pep", wrong))


def test_client_secret_from_the_environment(start_envoy, authserver):
    a = authserver
    intro = {"client_id": "pep-env", "client_secret": None, "client_secret_env": ENV_VAR}
    env = start_envoy(config(issuer(a, intro)), env={ENV_VAR: ENV_SECRET}, host_env_keys=[ENV_VAR])
    token = a.opaque()
    assert send(env, token=token).status == 200
    req = a.last_introspection()
    assert req["client_id"] == "pep-env" and req["client_authenticated"], req
    assert_not_in_log(env, *secret_spellings("pep-env", ENV_SECRET))


# --------------------------------------------------------------------------
# failure_mode serve_stale
# --------------------------------------------------------------------------

STALE = 3


@pytest.fixture(scope="module")
def stale_envoy(module_envoy, authserver_module):
    intro = {"max_ttl_seconds": TTL, "failure_mode": "serve_stale", "stale_seconds": STALE}
    return module_envoy(config(issuer(authserver_module, intro)))


def test_serve_stale_serves_a_cached_answer_while_the_server_is_down(stale_envoy, authserver):
    a, env = authserver, stale_envoy
    token = a.opaque()
    before = harness.wasm_stats(env)
    t0 = time.monotonic()
    assert send(env, token=token).status == 200
    a.set_introspection_mode("error500")

    def step():
        return send(env, token=token).status, a.introspections(token)

    r, t, seen = poll(step, lambda s: s[0] != 200, timeout=TTL + STALE + 4)
    assert r[0] == 503, r
    check_unavailable(send(env, token=token))
    assert any(calls >= 2 for _, calls in seen), "the server was never asked again before the 503: %r" % seen
    after = harness.wasm_stats(env)
    assert delta(before, after, "oauth_pep.stale_served.issuer." + harness.label(a.issuer)) >= 1, after
    # stale from the TTL's end (1-2 s) for STALE s
    assert TTL + STALE - 1 - 0.05 <= t - t0 <= TTL + STALE + 1.5, "503 %.2fs after the first callout" % (t - t0)


def test_serve_stale_does_not_outlive_a_revocation(stale_envoy, authserver):
    """Only a failure serves the stale answer: an inactive answer is believed."""
    a, env = authserver, stale_envoy
    token = a.opaque()
    assert send(env, token=token).status == 200
    a.revoke(token)
    r, _, _ = poll(lambda: send(env, token=token), lambda r: r.status != 200, timeout=TTL + 3)
    check_inactive(r)


# --------------------------------------------------------------------------
# mode introspect
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def introspect_mode(module_envoy, authserver_module):
    a = authserver_module
    a.reset()
    # endpoint from discovery (introspection_endpoint); keys are loaded too,
    # so a JWT could be verified locally: mode introspect must not.
    intro = introspection(a, endpoint=None)
    cfg = config({"issuer": a.issuer, "audiences": ["api"], "upstream": "authserver", "discovery": True,
                  "mode": "introspect", "introspection": intro})
    env = module_envoy(cfg)
    tok = a.opaque()
    env.wait_status("/", 200, token=tok, timeout=20)
    return env


def test_mode_introspect_introspects_a_jwt(introspect_mode, authserver):
    a, env = authserver, introspect_mode
    jwt = a.mint(a.claims(client_id="jwt-app", scope="read"))
    h = upstream_headers(send(env, token=jwt))
    assert h.get("x-oauth-client-id") == "jwt-app" and h.get("x-authenticated-scope") == "read", h
    assert a.introspections(jwt) == 1, "the JWT was not introspected"
    assert send(env, token=jwt).status == 200
    assert a.introspections(jwt) == 1
    # A well-signed JWT the server says is revoked: introspection decides.
    revoked = a.mint()
    a.revoke(revoked)
    check_inactive(send(env, token=revoked))
    assert a.introspections(revoked) == 1


def test_mode_introspect_unknown_token_is_401(introspect_mode, authserver):
    a, env = authserver, introspect_mode
    check_inactive(send(env, token="never-issued-" + "z" * 32))
    # a JWT-shaped token the server never issued
    head, body, _ = a.mint().split(".")
    forged = "%s.%s.%s" % (head, body, "A" * 43)
    check_inactive(send(env, token=forged))
    assert a.introspections(forged) == 1


def test_mode_jwt_then_introspect_verifies_locally_first(start_envoy, authserver):
    """A JWT must pass local verification (no callout for a forgery), then introspection."""
    a = authserver
    cfg = config(issuer(a, {"endpoint": None}, discovery=True, mode="jwt_then_introspect"))
    env = start_envoy(cfg)
    good = a.mint(a.claims(client_id="both-app"))
    r = env.wait_status("/", 200, token=good, timeout=20)  # keys load first
    assert r.json()["headers"].get("x-oauth-client-id") == "both-app", r.json()
    assert a.introspections(good) == 1
    head, body, _ = a.mint().split(".")
    forged = "%s.%s.%s" % (head, body, "A" * 342)
    r = send(env, token=forged)
    assert r.status == 401 and r.json()["reason"] == "signature_invalid", r
    assert a.introspections(forged) == 0, "a forged JWT was introspected"
    revoked = a.mint()
    a.revoke(revoked)
    check_inactive(send(env, token=revoked))
    assert a.introspections(revoked) == 1


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------

def test_a_misspelt_field_in_the_block_is_refused_naming_the_block(envoy_failure, authserver):
    """Before: ``unknown field `cache_ttl_seconds`, expected one of …`` with no path."""
    res = envoy_failure(config(issuer(authserver, intro={"cache_ttl_seconds": 60})))
    assert not res.became_ready, res
    assert "invalid configuration: `issuers[0].introspection`: unknown field `cache_ttl_seconds`, " \
        "expected one of" in res.log, res.log[-3000:]
