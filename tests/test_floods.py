"""Floods of parked requests through real Envoy (issue 17, "Tests").

Before issue 17, about 300 requests parked on one thing and answered
together killed the worker's wasm VM: Envoy logged `Function:
proxy_on_response_headers failed: Uncaught RangeError: Maximum call stack
size exceeded`, and the worker then answered 503 to everything (with
`fail_open: true`, let everything through). Every test here parks 1,000
requests at once on one HTTP/2 connection (`h2load -c 1 -m 1000`, h2c to the
listener, whose codec is AUTO) and then checks:

- every one of the 1,000 got an answer, only with the statuses the kind of
  wait allows (never Envoy's 504, never none);
- the worker survived: Envoy's log has no failed VM call, the next valid
  request gets 200 and, with `fail_open: true`, the next request without a
  token gets 401 (not the upstream's 200).

The kinds of wait: introspection answering inactive, introspection failing,
key fetch failing, unknown kids, the gateway's client token failing, the UMA
permission endpoint failing. Then the deadline (a hanging JWKS: every parked
request gets 503 within its deadline), the introspection budget (junk opaque
tokens from one client address make at most the budget of introspections; a
new legitimate token from another address passes during the flood), the token
shape (junk refused before any callout) and the `waits` caps raised so that
all 1,000 park on one key (the answers are spread over callbacks). Then the
JSON-RPC body reader (1,000 bodies that never complete: 408 by the body
timeout, or by the first deadline after an introspection) and token exchange
(1,000 parked on one hanging exchange; 1,000 distinct callers against the
exchange budget).

Envoy runs one worker (`--concurrency 1`): the flood and the checks after it
meet the same VM. h2load comes from Debian's nghttp2-client (`make setup`).
"""

import base64
import collections
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

import harness

REALM = "floods"
N = 1000
# The gateway's client (upstream OAuth) and the UMA resource server's (its PAT), beside the defaults.
GATEWAY = ("gateway", "gateway-secret", "billing.read")
RS = ("resource-server", "rs-secret", "uma_protection")
AUTHSERVER_CLIENTS = dict(harness.DEFAULT_CLIENTS, **{GATEWAY[0]: (GATEWAY[1], GATEWAY[2]),
                                                      RS[0]: (RS[1], RS[2])})
# What a dead VM leaves in Envoy's log (a failed call into the VM, a panic, V8's stack overflow).
VM_FAILURE = re.compile(r"Maximum call stack size exceeded|Function: \w+ failed|Uncaught \w*Error|panicked at")
# Tokens read from the query too: h2load sends one set of headers, but a file of URIs.
TOKEN_SOURCES = [{"header": "authorization"}, {"query": "access_token"}]


@pytest.fixture(scope="module", autouse=True)
def _h2load():
    if shutil.which("h2load") is None:
        pytest.fail("h2load not found: `make setup` installs it (apt package nghttp2-client)", pytrace=False)


# --------------------------------------------------------------------------
# h2load
# --------------------------------------------------------------------------

class Flood:
    """What h2load saw: `statuses` (a Counter of HTTP statuses, one per answered
    request), `seconds` (each answered request's time to its end), `answered`,
    `reset` (streams that ended without a status: h2load logs -1), `unanswered`
    (reset, or still open when h2load finished or was killed), `elapsed` (wall
    time of the whole run) and h2load's output."""

    def __init__(self, n, rows, elapsed, output, timed_out):
        self.n, self.elapsed, self.output, self.timed_out = n, elapsed, output, timed_out
        self.statuses = collections.Counter(status for status, _ in rows if status > 0)
        self.seconds = [s for status, s in rows if status > 0]
        self.answered = sum(self.statuses.values())
        self.reset = sum(1 for status, _ in rows if status <= 0)
        self.unanswered = n - self.answered

    def __repr__(self):
        return "Flood(%d requests: statuses %s, %d unanswered (%d reset)%s, %.1fs, slowest %.2fs)" % (
            self.n, dict(sorted(self.statuses.items())), self.unanswered, self.reset,
            ", h2load killed at its deadline" if self.timed_out else "", self.elapsed,
            max(self.seconds, default=0.0))


def h2load(env, tmp_path, path="/", token=None, tokens=None, n=N, streams=None, rps=None, timeout=30):
    """h2load on one HTTP/2 connection to `env`'s listener: n requests, all at
    once (or `streams` at a time; `rps` per second). token: the same
    `Authorization: Bearer` for all; tokens: one per request, in the
    `access_token` query parameter (cycled if fewer than n). Bounded by
    `timeout` seconds (h2load is killed then; what was not answered by then
    counts as unanswered)."""
    tag = "%d-%s" % (time.monotonic_ns(), secrets.token_hex(3))
    log = Path(tmp_path) / ("h2load-%s.tsv" % tag)
    argv = ["h2load", "-n", str(n), "-c", "1", "-m", str(streams or n), "--log-file", str(log)]
    if rps:
        argv += ["--rps", str(rps)]
    if token is not None:
        argv += ["-H", "authorization: Bearer " + token]
    if tokens is not None:
        uris = Path(tmp_path) / ("uris-%s.txt" % tag)
        sep = "&" if "?" in path else "?"
        uris.write_text("".join("%s%s%saccess_token=%s\n" % (env.base_url, path, sep, t) for t in tokens))
        argv += ["-i", str(uris)]
    else:
        argv.append(env.url(path))
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
    elapsed = time.monotonic() - t0
    rows = []
    if log.exists():
        for line in log.read_text().splitlines():
            cols = line.split("\t")
            if len(cols) >= 3:
                rows.append((int(cols[1]), int(cols[2]) / 1e6))
    return Flood(n, rows, elapsed, out.decode(errors="replace"), timed_out)


# --------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------

def vm_failures(env):
    time.sleep(0.3)  # the log is flushed every 100 ms
    return [line for line in env.log_text().splitlines() if VM_FAILURE.search(line)]


def check_answered(env, flood, allowed):
    """Every request answered, with a status in `allowed`; the VM never failed."""
    print("\n%r" % flood)  # shown with -s or -rP: how the 1,000 were answered
    failures = vm_failures(env)
    assert not failures, "the wasm VM failed during the flood (%r):\n%s" % (flood, "\n".join(failures[:5]))
    assert flood.unanswered == 0, "%r\n--- h2load ---\n%s" % (flood, flood.output[-1500:])
    assert 504 not in flood.statuses, flood
    assert set(flood.statuses) <= set(allowed), "statuses other than %s: %r" % (sorted(allowed), flood)


def check_survived(env, valid_token, fail_open, path="/"):
    """The worker still judges: a valid token gets 200, and (with fail_open,
    where a dead VM lets everything through) none gets 401."""
    r = harness.send_raw(env, path, token=valid_token)
    assert r.status == 200, "a valid request after the flood: %r" % r
    r = harness.send_raw(env, path)
    assert r.status == 401, "a request without a token after the flood%s: %r" % (
        " (fail_open: a dead VM lets it through)" if fail_open else "", r)
    assert r.json().get("reason") == "token_missing", r
    failures = vm_failures(env)
    assert not failures, "the wasm VM failed:\n%s" % "\n".join(failures[:5])


def delta(before, after, name):
    return after.get(name, 0) - before.get(name, 0)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def junk_jwt(a, kid):
    """A JWT of `a`'s issuer with valid claims, a made-up `kid` and a made-up
    signature (the kid is looked up first): what an attacker without any
    credential sends."""
    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(a.claims()).encode()),
                     b64url(secrets.token_bytes(256))])


def junk_opaque():
    return "junk-" + secrets.token_urlsafe(30)


# --------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------

def introspection_issuer(a, **over):
    """The authserver as an introspection-only issuer (client pep / pep-secret)."""
    intro = dict({"endpoint": a.url("/introspect"), "client_id": "pep", "client_secret": "pep-secret"},
                 **over.pop("introspection", {}))
    return dict({"issuer": a.issuer, "audiences": ["api"], "upstream": "authserver", "introspection": intro},
                **over)


def jwt_issuer(a, **over):
    """The authserver as a JWT issuer (keys from discovery)."""
    return a.issuer_config(**over)


def config(*issuers, **top):
    cfg = {"realm": REALM, "issuers": list(issuers), "token_sources": TOKEN_SOURCES}
    cfg.update(top)
    return cfg


def start(start_envoy, cfg, fail_open, **kw):
    return start_envoy(cfg, fail_open=fail_open, concurrency=1, **kw)


FAIL_OPEN = [pytest.param(False, id="fail_closed"), pytest.param(True, id="fail_open")]


# --------------------------------------------------------------------------
# one kind of wait each
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fail_open", FAIL_OPEN)
def test_introspection_answering_inactive(start_envoy, authserver, tmp_path, fail_open):
    """1,000 requests with one made-up opaque token wait for its one
    introspection (answered inactive after 1.5 s): 401 token_inactive for
    those that waited, 503 overloaded for those over a cap."""
    a = authserver
    env = start(start_envoy, config(introspection_issuer(a)), fail_open)
    a.set_introspection_mode("slow", delay_ms=1500)  # the inactive answer, late: all are parked by then
    flood = h2load(env, tmp_path, "/inactive", token=junk_opaque())
    check_answered(env, flood, {401, 503})
    assert flood.statuses[401] >= 1, flood
    a.set_introspection_mode("ok")
    check_survived(env, a.opaque(), fail_open)


@pytest.mark.parametrize("fault", ["error500", "close"])
@pytest.mark.parametrize("fail_open", FAIL_OPEN)
def test_introspection_failing(start_envoy, authserver, tmp_path, fail_open, fault):
    """1,000 requests with one opaque token wait for its introspection, which
    fails after 1.5 s (a 500, or the connection dropped): 503 for all."""
    a = authserver
    env = start(start_envoy, config(introspection_issuer(a)), fail_open)
    token = a.opaque()
    a.set_introspection_mode(fault, delay_ms=1500)
    flood = h2load(env, tmp_path, "/failing", token=token)
    check_answered(env, flood, {503})
    a.set_introspection_mode("ok")
    check_survived(env, a.opaque(), fail_open)


@pytest.mark.parametrize("fail_open", FAIL_OPEN)
def test_key_fetch_failing(start_envoy, authserver, tmp_path, fail_open):
    """Envoy starts while discovery and the JWKS answer 500 after 1.5 s
    (fetch_timeout_ms 2000: a wait for keys ends by ~5 s): 1,000 JWTs wait
    for the keys and get 503 (keys_unavailable, or overloaded)."""
    a = authserver
    a.set_jwks_mode("error500", delay_ms=1500)
    env = start(start_envoy, config(jwt_issuer(a, fetch_timeout_ms=2000)), fail_open)
    flood = h2load(env, tmp_path, "/keys", token=a.mint())
    check_answered(env, flood, {503})
    a.set_jwks_mode("ok")
    env.wait_status("/", 200, token=a.mint(), timeout=20)
    check_survived(env, a.mint(), fail_open)


@pytest.mark.parametrize("fail_open", FAIL_OPEN)
def test_unknown_kids(start_envoy, authserver, tmp_path, fail_open):
    """With the keys loaded, 1,000 JWTs with random kids (and made-up
    signatures) wait for one unknown-kid refetch (discovery and the JWKS each
    answered after 1 s), then
    are refused together: 401 (503 for those over a cap)."""
    a = authserver
    env = start(start_envoy, config(jwt_issuer(a)), fail_open)
    env.wait_status("/", 200, token=a.mint(), timeout=20)
    a.set_jwks_mode("ok", delay_ms=1000)
    flood = h2load(env, tmp_path, "/kids", tokens=[junk_jwt(a, secrets.token_hex(8)) for _ in range(N)])
    check_answered(env, flood, {401, 503})
    assert flood.statuses[401] >= 1, flood
    a.set_jwks_mode("ok")
    check_survived(env, a.mint(), fail_open)


@pytest.mark.parametrize("fail_open", FAIL_OPEN)
def test_client_token_failing(start_envoy, authserver, tmp_path, fail_open):
    """An upstream OAuth rule on /billing: Envoy starts while the token
    endpoint answers 500 after 3 s; 1,000 valid requests wait for the
    gateway's token and get 503 (client_token_unavailable, or overloaded)."""
    a = authserver
    a.set_token_mode("error500", delay_ms=3000)
    cfg = config(jwt_issuer(a),
                 clients={"billing": {"issuer": a.issuer, "client_id": GATEWAY[0], "client_secret": GATEWAY[1],
                                      "scopes": ["billing.read"]}},
                 upstream_oauth=[{"client": "billing", "virtual_hosts": ["all"], "paths": ["/billing/??"]}])
    env = start(start_envoy, cfg, fail_open)
    caller = a.mint()
    env.wait_status("/", 200, token=caller, timeout=20)  # the keys (the rule does not cover /)
    flood = h2load(env, tmp_path, "/billing/1", token=caller)
    check_answered(env, flood, {503})
    a.set_token_mode("ok")
    check_survived(env, a.mint(), fail_open)
    env.wait_status("/billing/1", 200, token=a.mint(), timeout=20)


@pytest.mark.parametrize("fail_open", FAIL_OPEN)
def test_permission_endpoint_failing(start_envoy, authserver, tmp_path, fail_open):
    """A UMA resource: 1,000 requests without a token, each needing a ticket,
    while the permission endpoint answers 500 after 1.5 s: 503
    (uma_unavailable, or overloaded), and no more permission requests than
    the default budget (uma.permission_budget, 50/s with a burst of 100)."""
    a = authserver
    a.uma(resources={"photos": ["view"]})
    issuer = jwt_issuer(a, discovery="uma2-configuration",
                        introspection={"client_id": "pep", "client_secret": "pep-secret"})
    cfg = config(issuer,
                 clients={"pat": {"issuer": a.issuer, "client_id": RS[0], "client_secret": RS[1],
                                  "scopes": ["uma_protection"]}},
                 uma={"issuer": a.issuer, "client": "pat",
                      "resources": [{"resource_id": "photos", "policy": {"GET /photos/??": "view"}}]})
    env = start(start_envoy, cfg, fail_open)
    # Ready once the keys and the PAT are there: a request gets its ticket.
    harness.wait_until(lambda: harness.send_raw(env, "/photos/1").status == 401, 20, what="a UMA ticket")
    env.wait_status("/", 200, token=a.mint(), timeout=20)
    a.uma(permission_mode="error500", permission_delay_ms=1500)
    before = harness.wasm_stats(env)
    flood = h2load(env, tmp_path, "/photos/1")
    check_answered(env, flood, {503})
    # Permission requests sent (the server may not accept them all: Envoy's own 503s count as no_response).
    after = harness.wasm_stats(env)
    sent = sum(delta(before, after, k) for k in after if k.startswith("oauth_pep.callouts.kind.uma_permission."))
    bound = 100 + 50 * flood.elapsed + 2
    assert sent <= bound, "%d permission requests in %.1fs (budget: at most %.0f): %r" % (
        sent, flood.elapsed, bound, flood)
    a.uma(permission_mode="ok", permission_delay_ms=0)
    check_survived(env, a.mint(), fail_open)


# --------------------------------------------------------------------------
# deadlines, budgets, token shape, caps
# --------------------------------------------------------------------------

FETCH_TIMEOUT_MS = 1000
# README: a request waits for keys at most twice the fetch timeout, plus a second.
KEYS_DEADLINE = 2 * FETCH_TIMEOUT_MS / 1000 + 1
SLACK = 1.5


def test_a_hanging_jwks_answers_every_parked_request_with_503_by_its_deadline(start_envoy, authserver, tmp_path):
    """Discovery accepts the connection and never answers (fetch_timeout_ms
    1000): each fetch times out, and the requests parked meanwhile get 503
    within ~2 x 1 s + 1 s of their arrival, not Envoy's stream timeout (504
    after 5 min), however many fetches time out meanwhile."""
    a = authserver
    a.set_jwks_mode("hang")
    env = start(start_envoy, config(jwt_issuer(a, fetch_timeout_ms=FETCH_TIMEOUT_MS)), False)
    flood = h2load(env, tmp_path, "/hang", token=a.mint(), timeout=KEYS_DEADLINE + 15)
    check_answered(env, flood, {503})
    slowest = max(flood.seconds)
    assert slowest <= KEYS_DEADLINE + SLACK, "the slowest answer took %.2fs (deadline %.1fs): %r" % (
        slowest, KEYS_DEADLINE, flood)
    a.set_jwks_mode("ok")
    env.wait_status("/", 200, token=a.mint(), timeout=20)
    check_survived(env, a.mint(), False)


def send_from(env, source, path="/", token=None, timeout=10):
    """GET with the client socket bound to `source` (e.g. 127.0.0.2: another
    client address for the filter's `source.address`)."""
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=timeout, source_address=(source, 0))
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        if token is not None:
            conn.putheader("Authorization", "Bearer " + token)
        conn.endheaders()
        r = conn.getresponse()
        return harness.Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


BUDGET = {"per_second": 5, "burst": 10}


def test_the_introspection_budget_bounds_junk_and_lets_a_legitimate_token_through(
        start_envoy, authserver, tmp_path):
    """~500 distinct junk opaque tokens from 127.0.0.1 (h2load, 250/s): at most
    burst + per_second x elapsed introspections reach the server; the refused
    get 503 overloaded with retry-after, counted; a new legitimate token sent
    from 127.0.0.2 during the flood gets 200."""
    a = authserver
    env = start(start_envoy, config(introspection_issuer(a, introspection={"budget": BUDGET})), False)
    before = harness.wasm_stats(env)
    legit = {}

    def legitimate():
        time.sleep(0.7)  # well inside the flood
        legit["t"] = time.monotonic()
        legit["r"] = send_from(env, "127.0.0.2", "/legit", token=a.opaque())

    t0 = time.monotonic()
    th = threading.Thread(target=legitimate, daemon=True)
    th.start()
    flood = h2load(env, tmp_path, "/junk", tokens=[junk_opaque() for _ in range(500)], n=500, streams=100, rps=250)
    th.join(15)
    elapsed = time.monotonic() - t0
    calls = a.introspections()
    check_answered(env, flood, {401, 503})
    assert legit.get("r") is not None, "the legitimate request did not finish"
    assert legit["t"] - t0 < flood.elapsed, "the legitimate request was not sent during the flood"
    assert legit["r"].status == 200, legit["r"]
    # One introspection is the legitimate token's.
    bound = BUDGET["burst"] + BUDGET["per_second"] * elapsed + 2
    assert calls <= bound, "%d introspections in %.1fs (budget: at most %.0f): %r" % (calls, elapsed, bound, flood)
    refused = flood.statuses[503]
    assert refused >= 500 - bound, flood
    after = harness.wasm_stats(env)
    overloaded = delta(before, after, "oauth_pep.denied.reason.overloaded")
    assert overloaded == refused, (overloaded, flood)
    by_budget = delta(before, after, "oauth_pep.overloaded.bound.introspection_budget")
    assert by_budget >= 1, {k: v for k, v in after.items() if "overload" in k}
    # What a refused one looks like (the client's bucket refills at about 1/s: a few tries at most).
    tries = [harness.send_raw(env, "/junk", token=junk_opaque()) for _ in range(4)]
    r = next((r for r in tries if r.status == 503), None)
    assert r is not None, tries
    body = r.json()
    assert body["reason"] == "overloaded" and body["error"] == "temporarily_unavailable", body
    assert int(r.headers.get("retry-after", "0")) >= 1, r
    assert "www-authenticate" not in r.headers, r


def test_a_token_of_the_wrong_shape_is_refused_without_a_callout(start_envoy, authserver):
    """token_pattern and max_token_length: junk is 401 invalid_token before any
    introspection; a token of the right shape is introspected as usual."""
    a = authserver
    # The authserver's opaque tokens are 43 base64url characters.
    intro = {"token_pattern": "[A-Za-z0-9_-]{43}", "max_token_length": 64}
    env = start(start_envoy, config(introspection_issuer(a, introspection=intro)), False)
    for junk in ["junk-" + secrets.token_urlsafe(30), "A" * 42, "A" * 44, secrets.token_urlsafe(200)]:
        r = harness.send_raw(env, "/shape", token=junk)
        assert r.status == 401, (junk, r)
        assert r.json()["error"] == "invalid_token", r
    assert a.introspections() == 0, "junk reached the authorization server"
    r = harness.send_raw(env, "/shape", token=a.opaque())
    assert r.status == 200, r
    assert a.introspections() == 1


def test_with_the_caps_raised_1000_parked_on_one_token_are_all_answered(start_envoy, authserver, tmp_path):
    """`waits` caps above 1,000: all 1,000 park on one introspection and all
    get its 401, spread over the root's ticks (replies_per_callback), with no
    503 and a live worker."""
    a = authserver
    waits = {"max_per_key": 2048, "max_per_worker": 2048}
    env = start(start_envoy, config(introspection_issuer(a), waits=waits), False)
    a.set_introspection_mode("slow", delay_ms=1500)
    flood = h2load(env, tmp_path, "/inactive", token=junk_opaque())
    check_answered(env, flood, {401})
    a.set_introspection_mode("ok")
    check_survived(env, a.opaque(), False)


# --------------------------------------------------------------------------
# bodies that never complete (JSON-RPC selectors)
# --------------------------------------------------------------------------
#
# h2load sends whole bodies, so these floods use a minimal HTTP/2 client of
# their own: one connection (h2c, prior knowledge), 1,000 streams, each its
# headers and the first bytes of a body whose `content-length` promises more,
# never the rest. Requests are HPACK literals (no Huffman, no indexing); the
# answers' headers are not decoded: each answer is read from its body (the
# filter's JSON, with its `reason`).

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def hpack_length(n):
    """An HPACK string length (7-bit prefix, no Huffman)."""
    if n < 127:
        return bytes([n])
    out, n = [127], n - 127
    while n >= 128:
        out.append((n & 127) | 128)
        n >>= 7
    return bytes(out + [n])


def hpack_literal(name, value):
    """A literal header field without indexing, new name (RFC 7541, 6.2.2)."""
    name, value = name.encode(), value.encode()
    return b"\x00" + hpack_length(len(name)) + name + hpack_length(len(value)) + value


class Unfinished:
    """What the server answered to `n` requests whose bodies never completed:
    `reasons` (a Counter of the `reason` of each answer's JSON body; `None`
    for a body without one), `seconds` (each answered stream's time from the
    send to its end), `reset` (streams reset without an answer) and
    `unanswered`."""

    def __init__(self, n, answers, reset, elapsed):
        self.n, self.reset, self.elapsed = n, reset, elapsed
        self.reasons = collections.Counter(reason for reason, _ in answers.values())
        self.seconds = [s for _, s in answers.values()]
        self.unanswered = n - len(answers)

    def __repr__(self):
        return "Unfinished(%d requests: reasons %s, %d unanswered (%d reset), %.1fs, slowest %.2fs)" % (
            self.n, dict(self.reasons), self.unanswered, self.reset, self.elapsed, max(self.seconds, default=0.0))


def h2_unfinished_bodies(env, path, token, body_start, content_length, n=N, timeout=30):
    """n POSTs of `path` on one HTTP/2 connection, each with its headers and
    `body_start` of a body announced as `content_length` bytes, and nothing
    more; reads the answers until every stream ended or `timeout`."""
    s = socket.create_connection(("127.0.0.1", env.port), timeout=timeout)
    try:
        # Large receive windows: 1,000 answers must not wait for WINDOW_UPDATEs.
        out = [H2_PREFACE, h2_frame(SETTINGS, 0, 0, (2).to_bytes(2, "big") + (0).to_bytes(4, "big")
                                    + (4).to_bytes(2, "big") + (1 << 24).to_bytes(4, "big")),
               h2_frame(0x8, 0, 0, (1 << 30).to_bytes(4, "big"))]
        for i in range(n):
            stream = 2 * i + 1
            block = b"".join(hpack_literal(k, v) for k, v in [
                (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "127.0.0.1"),
                ("authorization", "Bearer " + token), ("content-type", "application/json"),
                ("content-length", str(content_length))])
            out.append(h2_frame(HEADERS, END_HEADERS, stream, block))
            out.append(h2_frame(DATA, 0, stream, body_start))
        t0 = time.monotonic()
        s.sendall(b"".join(out))
        bodies, ended, reset = collections.defaultdict(bytes), {}, 0
        buf = b""
        deadline = t0 + timeout
        while len(ended) + reset < n and time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = s.recv(1 << 16)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + length:
                    break
                kind, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                payload, buf = buf[9:9 + length], buf[9 + length:]
                if kind == SETTINGS and not flags & ACK:
                    s.sendall(h2_frame(SETTINGS, ACK, 0))
                elif kind == PING and not flags & ACK:
                    s.sendall(h2_frame(PING, ACK, 0, payload))
                elif kind == DATA:
                    bodies[stream] += payload
                    if flags & END_STREAM and stream not in ended:
                        ended[stream] = time.monotonic() - t0
                elif kind == HEADERS and flags & END_STREAM and stream not in ended:
                    ended[stream] = time.monotonic() - t0
                elif kind == RST_STREAM and stream not in ended:
                    reset += 1
                    ended[stream] = None
                elif kind == GOAWAY:
                    deadline = 0
        answers = {}
        for stream, seconds in ended.items():
            if seconds is None:
                continue
            try:
                body = json.loads(bodies[stream])
            except ValueError:
                body = {}
            reason = body.get("reason") or body.get("error", {}).get("data", {}).get("reason") \
                if isinstance(body, dict) else None
            answers[stream] = (reason, seconds)
        return Unfinished(n, answers, reset, time.monotonic() - t0)
    finally:
        s.close()


MCP_POLICY = {"GET /??": "read", "POST /mcp": "read", "POST /mcp tools/call admin_*": "admin"}
TOOL_CALL = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                        "params": {"name": "search", "arguments": {}}}).encode()


def check_mcp_survived(env, token):
    """A whole MCP request still passes, a token-less one is 401, the VM is alive."""
    r = env.http.post(env.url("/mcp"), data=TOOL_CALL, timeout=10,
                      headers={"authorization": "Bearer " + token, "content-type": "application/json"})
    assert r.status_code == 200, (r.status_code, r.text[:300])
    r = harness.send_raw(env, "/")
    assert r.status == 401, r
    failures = vm_failures(env)
    assert not failures, "the wasm VM failed:\n%s" % "\n".join(failures[:5])


def test_bodies_that_never_complete_are_answered_408_by_the_body_timeout(start_envoy, authserver):
    """1,000 POSTs to a path with JSON-RPC selectors, each body stopped after
    20 bytes: the body readers park on their worker's one body key, so
    `waits.max_per_key` (256) of them wait and get 408 body_timeout by
    `body_timeout_seconds` (2), the other 744 get 503 overloaded at once
    (counted as `waiters`); then the worker still answers."""
    a = authserver
    cfg = config(jwt_issuer(a), policy=MCP_POLICY, jsonrpc={"body_timeout_seconds": 2})
    # Envoy's buffer filter after oauth-pep, as README advises for MCP routes:
    # without it the router opens 1,000 upstream requests with the headers
    # while the bodies are held (the echo server then times out connects).
    env = start(start_envoy, cfg, False, customize=harness.buffer_after_oauth_pep)
    token = a.mint(a.claims(scope="read"))
    env.wait_status("/", 200, token=token, timeout=20)  # keys loaded (/ needs no body)
    before = harness.wasm_stats(env)
    flood = h2_unfinished_bodies(env, "/mcp", token, TOOL_CALL[:20], len(TOOL_CALL), timeout=15)
    print("\n%r" % flood)
    assert flood.unanswered == 0, flood
    assert set(flood.reasons) <= {"body_timeout", "overloaded"}, flood
    assert flood.reasons["body_timeout"] == 256, flood
    # 2 s from the headers, checked on 200 ms ticks in whole seconds.
    slowest = max(flood.seconds)
    assert slowest <= 3 + SLACK, flood
    after = harness.wasm_stats(env)
    assert delta(before, after, "oauth_pep.denied.reason.body_timeout") == 256
    assert delta(before, after, "oauth_pep.overloaded.bound.waiters") == flood.reasons["overloaded"]
    check_mcp_survived(env, token)


def test_a_body_wait_after_an_introspection_ends_at_the_first_deadline(start_envoy, authserver):
    """The same with one new opaque token whose introspection takes 1.5 s
    (timeout_ms 1000: deadline 1 + 2 s from the headers): those that waited
    for it read their bodies only until that first deadline, not for
    `body_timeout_seconds` (30): 408 within ~3 s."""
    a = authserver
    cfg = config(introspection_issuer(a, introspection={"timeout_ms": 1000}), policy=MCP_POLICY,
                 jsonrpc={"body_timeout_seconds": 30})
    env = start(start_envoy, cfg, False, customize=harness.buffer_after_oauth_pep)
    token = a.opaque(scope="read")
    a.set_introspection_mode("slow", delay_ms=800)
    flood = h2_unfinished_bodies(env, "/mcp", token, TOOL_CALL[:20], len(TOOL_CALL), timeout=15)
    print("\n%r" % flood)
    assert flood.unanswered == 0, flood
    assert set(flood.reasons) <= {"body_timeout", "overloaded"}, flood
    assert 1 <= flood.reasons["body_timeout"] <= 256, flood
    assert max(flood.seconds) <= 3 + SLACK, flood
    a.set_introspection_mode("ok")
    check_mcp_survived(env, a.opaque(scope="read"))


# --------------------------------------------------------------------------
# token exchange
# --------------------------------------------------------------------------

def exchange_config(a, **exchange):
    return config(jwt_issuer(a),
                  clients={"backend": {"issuer": a.issuer, "client_id": GATEWAY[0], "client_secret": GATEWAY[1],
                                       "timeout_ms": 1000}},
                  upstream_oauth=[{"client": "backend", "virtual_hosts": ["all"], "paths": ["/billing/??"],
                                   "exchange": dict({"audience": "https://backend.test",
                                                     "scopes": ["billing.read"]}, **exchange)}])


@pytest.mark.parametrize("fail_open", FAIL_OPEN)
def test_1000_parked_on_one_slow_exchange(start_envoy, authserver, tmp_path, fail_open):
    """One caller token, 1,000 requests on a rule with `exchange`, the token
    endpoint hanging: one exchange; `max_per_key` (256) wait and get 503
    exchange_unavailable by their deadline (timeout_ms 1000 + 2 s), the rest
    503 overloaded at once; the worker survives."""
    a = authserver
    env = start(start_envoy, exchange_config(a), fail_open)
    caller = a.mint()
    env.wait_status("/", 200, token=caller, timeout=20)  # the keys (the rule does not cover /)
    a.set_exchange_mode("hang")
    before = harness.wasm_stats(env)
    flood = h2load(env, tmp_path, "/billing/1", token=caller, timeout=20)
    check_answered(env, flood, {503})
    assert max(flood.seconds) <= 3 + SLACK, flood
    after = harness.wasm_stats(env)
    assert a.exchanges()["calls"] == 1, "the parked requests shared one exchange"
    assert delta(before, after, "oauth_pep.denied.reason.exchange_unavailable") == 256, after
    assert delta(before, after, "oauth_pep.overloaded.bound.waiters") == N - 256, after
    a.set_exchange_mode("ok")
    check_survived(env, a.mint(), fail_open)
    r = harness.send_raw(env, "/billing/1", token=a.mint())
    assert r.status == 200, r


def test_the_exchange_budget_bounds_1000_distinct_callers(start_envoy, authserver, tmp_path):
    """1,000 distinct caller tokens from one address (h2load, 250/s), each a
    new exchange (answered after 0.3 s): at most a quarter of the burst plus a
    quarter of the rate per second reach the token endpoint; the rest are 503
    overloaded (exchange_budget), all answered; the worker survives."""
    a = authserver
    budget = {"per_second": 20, "burst": 40}
    env = start(start_envoy, exchange_config(a, budget=budget), False)
    env.wait_status("/", 200, token=a.mint(), timeout=20)
    a.set_exchange_mode("ok", delay_ms=300)
    callers = [a.mint(a.claims(sub="caller-%d" % i)) for i in range(N)]
    before = harness.wasm_stats(env)
    t0 = time.monotonic()
    flood = h2load(env, tmp_path, "/billing/1", tokens=callers, streams=200, rps=250, timeout=30)
    elapsed = time.monotonic() - t0
    check_answered(env, flood, {200, 503})
    calls = a.exchanges()["calls"]
    bound = budget["burst"] / 4 + budget["per_second"] / 4 * elapsed + 2
    assert calls <= bound, "%d exchanges in %.1fs (one address's budget: at most %.0f): %r" % (
        calls, elapsed, bound, flood)
    assert flood.statuses[200] == calls, flood
    after = harness.wasm_stats(env)
    assert delta(before, after, "oauth_pep.overloaded.bound.exchange_budget") == flood.statuses[503], after
    a.set_exchange_mode("ok")
    check_survived(env, a.mint(), False)
