"""Scope policy, consumers, anonymous access and the PDP through a real Envoy.

Each Envoy lives for a module-scoped fixture and serves a table of requests;
what is asserted is what a client and the upstream (tests/echo.py) see:
status, WWW-Authenticate challenge, JSON error body, and the headers that
reach the upstream. docs/policy.md describes the policy language.
"""

import http.client
import json
import socket
import time

import pytest
import requests

import harness

REALM = "policy-test"
ECHO_KEYS = {"method", "path", "headers", "body"}
IDENTITY = ["x-authenticated-scope", "x-oauth-client-id", "x-oauth-expiration", "x-consumer-id",
            "x-consumer-username", "x-consumer-custom-id", "x-anonymous-consumer"]
FORGED = {h: "forged" for h in IDENTITY}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def var(i):
    return {"var": i}


def both_formats(rules):
    """rules: [(path, [(methods, readable expression, Gluu scope_expression or None)])]
    -> {"readable": {...}, "gluu": [...], "gluu-string": "[...]"}, written by hand
    on both sides so that the two parsers really are compared."""
    readable = {"%s %s" % (",".join(m), path): text for path, conds in rules for m, text, _ in conds}
    gluu = [{"path": path, "conditions": [dict({"httpMethods": m}, **({"scope_expression": g} if g else {}))
                                          for m, _, g in conds]} for path, conds in rules]
    return {"readable": readable, "gluu": gluu, "gluu-string": json.dumps(gluu)}


def is_echo(r):
    """Whether the response came from the upstream (the request got through)."""
    try:
        return r.status_code == 200 and ECHO_KEYS <= set(r.json())
    except ValueError:
        return False


class Srv:
    """An Envoy with the filter, plus token minting and checked requests."""

    def __init__(self, env, auth):
        self.env, self.auth, self._tokens = env, auth, {}

    def token(self, scopes=None, **claims):
        if scopes is not None:
            claims["scope"] = " ".join(scopes)
        key = json.dumps(claims, sort_keys=True)
        if key not in self._tokens:
            self._tokens[key] = self.auth.mint(self.auth.claims(**claims))
        return self._tokens[key]

    def expired_token(self):
        now = int(time.time())
        return self.auth.mint(self.auth.claims(iat=now - 1200, nbf=now - 1200, exp=now - 600))

    def req(self, method, path, scopes=None, token=None, headers=None, **claims):
        if token is None and (scopes is not None or claims):
            token = self.token(scopes, **claims)
        return self.env.request(method, path, token=token, headers=headers)

    def raw(self, method, path, token=None, headers=None):
        """Send `path` byte for byte (requests would resolve dot segments)."""
        h = dict(headers or {})
        if token:
            h["Authorization"] = "Bearer " + token
        conn = http.client.HTTPConnection("127.0.0.1", self.env.port, timeout=10)
        try:
            conn.request(method, path, headers=h)
            resp = conn.getresponse()
            r = requests.Response()
            r.status_code, r._content = resp.status, resp.read()
            r.headers = requests.structures.CaseInsensitiveDict(resp.getheaders())
            return r
        finally:
            conn.close()

    def fail(self, what, r):
        return "%s\n-> %s %s %s\n--- envoy log tail ---\n%s" % (
            what, r.status_code, dict(r.headers), r.text[:600], self.env.log_text()[-3000:])

    def check(self, r, what, status, error=None, rule=None, scope=None, description=None):
        """Assert the outcome of one request; returns the upstream's view (200) or the body."""
        assert r.status_code == status, self.fail(what, r)
        if status == 200:
            assert is_echo(r), self.fail(what + ": not answered by the upstream", r)
            return r.json()
        assert not is_echo(r), self.fail(what, r)
        body = r.json()
        challenge = r.headers.get("WWW-Authenticate", "")
        if error is not None:
            assert body.get("error") == error, self.fail(what, r)
        if error in ("insufficient_scope", "invalid_token"):
            assert challenge.startswith('Bearer realm="%s", error="%s"' % (REALM, error)), self.fail(what, r)
        if rule is not None:
            assert body.get("rule") == rule, self.fail(what, r)
        if scope is not None:
            assert challenge.endswith(', scope="%s"' % scope), self.fail(what, r)
            assert body.get("scope") == scope, self.fail(what, r)
        if description is not None:
            params = harness.bearer_params(challenge) or {}
            assert params.get("error_description") == description, self.fail(what, r)
        return body

    def run_table(self, cases):
        """cases: (method, path, scopes, status[, error, rule, scope])."""
        for method, path, scopes, status, *rest in cases:
            error, rule, scope = (rest + [None] * 3)[:3]
            what = "%s %s with scopes %r" % (method, path, scopes)
            seen = self.check(self.req(method, path, scopes), what, status, error, rule, scope)
            if status == 200:
                assert seen["method"] == method and seen["path"] == path, what


def config(auth, **top):
    cfg = {"realm": REALM, "issuers": [auth.issuer_config()]}
    cfg.update(top)
    return cfg


@pytest.fixture(scope="module")
def launch(module_envoy, authserver_module):
    """launch(cfg, clusters=None, **envoy) -> Srv once the issuer's keys are
    loaded; envoy: more harness.Envoy.start arguments (routes, customize).
    The Envoys live for the module (conftest.module_envoy)."""

    def run(cfg, clusters=None, **envoy):
        srv = Srv(module_envoy(cfg, clusters=clusters, **envoy), authserver_module)
        # The keys are fetched through discovery after start: 503 until then.
        harness.wait_until(lambda: srv.req("GET", "/warm-up", ["x"]).status_code != 503, 20,
                           what="the issuer's keys to load")
        return srv

    return run


# --------------------------------------------------------------------------
# 1-4, 6: the main policy, in the readable form, the Gluu array and the Gluu string
# --------------------------------------------------------------------------

TX = "^transactions:(?<PC1>[0-9]+)$"
POSTS = "^posts:(.+)$"  # Gluu's example: any `posts:` scope (tests/test_gluu_policy.py binds one)
MAIN = both_formats([
    ("/transactions/{^[0-9]+$}", [(["GET"], TX, {"rule": var(0), "data": [TX]})]),
    ("/docs/?", [
        (["GET"], "READ", {"rule": var(0), "data": ["READ"]}),
        (["POST"], "READ and (FIDO or OTP)",
         {"rule": {"and": [var(0), {"or": [var(1), var(2)]}]}, "data": ["READ", "FIDO", "OTP"]}),
    ]),
    ("/items/{id}", [
        (["GET"], "read", {"rule": var(0), "data": ["read"]}),
        (["?"], "write", {"rule": var(0), "data": ["write"]}),
    ]),
    ("/admin", [(["?"], "admin", {"rule": var(0), "data": ["admin"]})]),
    ("/public/??", [(["?"], "true", None)]),
    # Gluu's own spontaneous-scope example (its common-features docs)
    ("/posts/??", [(["GET", "POST"], "admin and (%s or email)" % POSTS,
                    {"rule": {"and": [var(0), {"or": [var(1), var(2)]}]}, "data": ["admin", POSTS, "email"]})]),
])


@pytest.fixture(scope="module", params=sorted(MAIN))
def main(request, launch, authserver_module):
    return launch(config(authserver_module, policy=MAIN[request.param], public_paths=["/health"]))


def test_seed_flow_spontaneous_scope_bound_to_the_path(main):
    rule = "GET /transactions/{^[0-9]+$}"
    token = main.token(["transactions:123"])
    for _ in range(2):  # the same token again: no decision is reused across captures
        seen = main.check(main.req("GET", "/transactions/123", token=token), "own transaction", 200)
        assert seen["headers"]["x-authenticated-scope"] == "transactions:123"
        r = main.req("GET", "/transactions/124", token=token)
        main.check(r, "another transaction", 403, "insufficient_scope", rule, "transactions:124",
                   description='the token lacks the scopes this request needs (rule "%s")' % rule)
    main.run_table([
        ("GET", "/transactions/1234", ["transactions:123"], 403, "insufficient_scope", rule, "transactions:1234"),
        ("GET", "/transactions/124", ["transactions:124"], 200),
        ("GET", "/transactions/abc", ["transactions:abc"], 403, "forbidden"),  # `{^[0-9]+$}` is anchored
        ("POST", "/transactions/123", ["transactions:123"], 403, "forbidden"),  # no POST condition
    ])


def test_read_and_fido_or_otp(main):
    post = "POST /docs/?"
    main.run_table([
        ("GET", "/docs/1", ["READ"], 200),
        ("POST", "/docs/1", ["READ"], 403, "insufficient_scope", post, "READ FIDO"),
        ("POST", "/docs/1", ["READ", "OTP"], 200),
        ("POST", "/docs/1", ["READ", "FIDO"], 200),
        ("POST", "/docs/1", ["FIDO", "OTP"], 403, "insufficient_scope", post, "READ FIDO"),
        ("GET", "/docs/1", ["FIDO"], 403, "insufficient_scope", "GET /docs/?", "READ"),
        ("GET", "/docs/1", ["read"], 403, "insufficient_scope", "GET /docs/?", "READ"),  # case-sensitive
        ("PUT", "/docs/1", ["READ", "OTP"], 403, "forbidden"),  # no condition for PUT
    ])
    # scopes may also come from `scp` (an array), and reach the upstream comma-separated
    token = main.token(scope=None, scp=["READ", "OTP"])
    seen = main.check(main.req("POST", "/docs/2", token=token), "scp claim", 200)
    assert seen["headers"]["x-authenticated-scope"] == "READ,OTP"


def test_gluu_example_multi_segment_spontaneous_scope(main):
    rule = "GET,POST /posts/??"
    main.run_table([
        ("GET", "/posts/1", ["admin", "posts:1"], 200),
        ("POST", "/posts/1", ["admin", "posts:1"], 200),
        ("GET", "/posts/1/comments", ["admin", "posts:9"], 200),  # any scope matching the regex
        ("GET", "/posts/2", ["posts:2"], 403, "insufficient_scope", rule, "admin " + POSTS),
        ("GET", "/posts/2", ["admin", "email"], 200),
        ("GET", "/posts", ["admin", "email"], 200),
        ("GET", "/posts", ["admin", "posts:"], 403, "insufficient_scope", rule, "admin " + POSTS),
        ("DELETE", "/posts/1", ["admin", "posts:1"], 403, "forbidden"),
    ])


def test_method_specific_condition_beats_any_method(main):
    main.run_table([
        ("GET", "/items/7", ["read"], 200),
        ("GET", "/items/7", ["write"], 403, "insufficient_scope", "GET /items/{id}", "read"),
        ("POST", "/items/7", ["write"], 200),
        ("DELETE", "/items/7", ["write"], 200),
        ("POST", "/items/7", ["read"], 403, "insufficient_scope", "? /items/{id}", "write"),
        ("PATCH", "/items/7", ["read"], 403, "insufficient_scope", "? /items/{id}", "write"),
    ])


def test_deny_by_default_public_path_and_identity_headers(main):
    r = main.req("GET", "/unlisted", ["read", "write", "admin"])
    body = main.check(r, "unlisted path", 403, "forbidden")
    assert "GET /unlisted" in body.get("error_description", ""), body
    main.check(main.req("GET", "/unlisted"), "unlisted path without a token", 401)
    # a public path needs no token, and forged identity headers never reach the upstream
    seen = main.check(main.req("GET", "/health", headers=FORGED), "public path", 200)
    assert not set(IDENTITY) & set(seen["headers"]), seen["headers"]
    # an allowed request carries the filter's identity headers, not the client's
    claims = main.auth.claims(scope="read write")
    r = main.req("GET", "/items/1", token=main.auth.mint(claims), headers=FORGED)
    h = main.check(r, "allowed request", 200)["headers"]
    assert h["x-authenticated-scope"] == "read,write", h
    assert h["x-oauth-client-id"] == "demo-client", h
    assert h["x-oauth-expiration"] == str(claims["exp"]), h
    for name in ("x-consumer-id", "x-consumer-username", "x-consumer-custom-id", "x-anonymous-consumer"):
        assert name not in h, (name, h)


def test_dot_segments_cannot_dodge_a_rule(main):
    read, admin = main.token(["read"]), main.token(["admin"])
    main.check(main.raw("GET", "/public/x", read), "public rule", 200)
    for path in ("/public/../admin", "/public/%2e%2e/admin", "/public/%2E%2E/admin", "/public/./../admin",
                 "/public//..//admin"):
        r = main.raw("GET", path, read)
        # whatever Envoy might do first, it must never reach the upstream ...
        assert r.status_code != 200 and not is_echo(r), main.fail("%s without `admin`" % path, r)
        # ... and with this bootstrap (HCM defaults: no normalize_path) the filter judges it as /admin
        main.check(r, path, 403, "insufficient_scope", "? /admin", "admin")
        # ... and forwards what it judged (tests/test_paths.py has more)
        assert main.check(main.raw("GET", path, admin), path + " with `admin`", 200)["path"] == "/admin"
        dodge = path.replace("/public", "/health")  # a public path
        main.check(main.raw("GET", dodge), dodge + " without a token", 401)


# --------------------------------------------------------------------------
# 5: backtracking
# --------------------------------------------------------------------------

BACKTRACK = both_formats([
    ("/??", [(["?"], "any", {"rule": var(0), "data": ["any"]})]),
    ("/posts", [(["?"], "posts", {"rule": var(0), "data": ["posts"]})]),
    ("/a/b/c", [(["?"], "abc", {"rule": var(0), "data": ["abc"]})]),
    ("/a/?/d", [(["?"], "aqd", {"rule": var(0), "data": ["aqd"]})]),
])


@pytest.fixture(scope="module", params=["readable", "gluu"])
def backtrack(request, launch, authserver_module):
    return launch(config(authserver_module, policy=BACKTRACK[request.param]))


def test_backtracking(backtrack):
    no = ["none"]
    backtrack.run_table([
        ("GET", "/posts/1", no, 403, "insufficient_scope", "? /??", "any"),
        ("GET", "/posts/1", ["posts"], 403, "insufficient_scope", "? /??", "any"),
        ("GET", "/posts/1", ["any"], 200),
        ("GET", "/posts", no, 403, "insufficient_scope", "? /posts", "posts"),
        ("GET", "/posts", ["posts"], 200),
        ("GET", "/a/b/d", no, 403, "insufficient_scope", "? /a/?/d", "aqd"),
        ("GET", "/a/b/d", ["aqd"], 200),
        ("GET", "/a/b/c", no, 403, "insufficient_scope", "? /a/b/c", "abc"),
        ("GET", "/a/z/d", no, 403, "insufficient_scope", "? /a/?/d", "aqd"),
        ("GET", "/a/b/e", no, 403, "insufficient_scope", "? /??", "any"),
    ])


# --------------------------------------------------------------------------
# 3, 7, 8: deny_by_default, consumers, anonymous
# --------------------------------------------------------------------------

CONSUMERS = {"demo-client": {"id": "c-demo", "username": "demo", "custom_id": "cust-1"}}


@pytest.fixture(scope="module")
def strict(launch, authserver_module):
    return launch(config(authserver_module, consumers=CONSUMERS, anonymous={
        "id": "anon", "username": "anonymous", "paths": ["/open/??"], "on_invalid_token": False}))


@pytest.fixture(scope="module")
def lenient(launch, authserver_module):
    return launch(config(authserver_module, policy={"GET /admin": "admin"}, deny_by_default=False,
                         consumers=CONSUMERS, allow_unregistered_clients=True, anonymous={
                             "id": "anon", "username": "anonymous", "paths": ["/open/??"],
                             "on_invalid_token": True}))


def test_registered_and_unregistered_clients(strict):
    h = strict.check(strict.req("GET", "/api", ["read"], headers=FORGED), "registered client", 200)["headers"]
    assert (h["x-consumer-id"], h["x-consumer-username"], h["x-consumer-custom-id"]) == ("c-demo", "demo", "cust-1")
    assert h["x-oauth-client-id"] == "demo-client" and "x-anonymous-consumer" not in h, h
    for claims in ({"client_id": "stranger", "sub": "stranger"}, {"client_id": None}):
        r = strict.req("GET", "/api", ["read"], **claims)
        strict.check(r, "unregistered client %r" % claims, 401, "invalid_token", description="unknown client")


def test_anonymous_consumer(strict):
    h = strict.check(strict.req("GET", "/open/doc", headers=FORGED), "anonymous", 200)["headers"]
    assert (h.get("x-anonymous-consumer"), h.get("x-consumer-id"), h.get("x-consumer-username")) == (
        "true", "anon", "anonymous"), h
    for name in ("x-authenticated-scope", "x-oauth-client-id", "x-oauth-expiration", "x-consumer-custom-id"):
        assert name not in h, (name, h)
    strict.check(strict.req("GET", "/open"), "anonymous, `??` matching nothing", 200)
    r = strict.req("GET", "/closed")
    strict.check(r, "no token off the anonymous paths", 401)
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="%s"' % REALM
    for bad in (strict.expired_token(), "not-a-jwt"):
        r = strict.req("GET", "/open/doc", token=bad)
        strict.check(r, "bad token on an anonymous path", 401, "invalid_token")
    # a valid token on an anonymous path is the client's own consumer
    h = strict.check(strict.req("GET", "/open/doc", ["read"]), "token on anonymous path", 200)["headers"]
    assert h["x-consumer-id"] == "c-demo" and "x-anonymous-consumer" not in h, h


def test_lenient_deny_by_default_unregistered_and_invalid_token_as_anonymous(lenient):
    lenient.check(lenient.req("GET", "/unlisted", ["read"]), "unlisted path", 200)
    lenient.check(lenient.req("GET", "/unlisted"), "unlisted path without a token", 401)
    lenient.check(lenient.req("GET", "/admin", ["read"]), "listed path", 403, "insufficient_scope",
                  "GET /admin", "admin")
    h = lenient.check(lenient.req("GET", "/x", ["read"], client_id="stranger", headers=FORGED),
                      "unregistered client", 200)["headers"]
    assert h["x-oauth-client-id"] == "stranger", h
    for name in ("x-consumer-id", "x-consumer-username", "x-consumer-custom-id", "x-anonymous-consumer"):
        assert name not in h, (name, h)
    h = lenient.check(lenient.req("GET", "/x", ["read"]), "registered client", 200)["headers"]
    assert h["x-consumer-id"] == "c-demo", h
    for bad in (lenient.expired_token(), "not-a-jwt"):
        r = lenient.req("GET", "/open/doc", token=bad, headers=FORGED)
        h = lenient.check(r, "bad token on an anonymous path", 200)["headers"]
        assert (h.get("x-anonymous-consumer"), h.get("x-consumer-id")) == ("true", "anon"), h
        assert "x-oauth-client-id" not in h and "x-authenticated-scope" not in h, h
        lenient.check(lenient.req("GET", "/closed", token=bad), "bad token elsewhere", 401, "invalid_token")


# --------------------------------------------------------------------------
# 9: the policy decision point
# --------------------------------------------------------------------------

PDP_POLICY = {"GET /pdp/??": "read", "DELETE /pdp/??": "admin"}


def pdp_srv(launch, auth, kind, port, path, **pdp):
    cfg = config(auth, policy=PDP_POLICY, pdp=dict(
        {"kind": kind, "upstream": "pdp", "url": "http://127.0.0.1:%d%s" % (port, path), "timeout_ms": 2000,
         "cache_seconds": 0}, **pdp))
    return launch(cfg, clusters={"pdp": port})


@pytest.fixture(scope="module")
def authzen(launch, authserver_module, fake_pdp):
    return pdp_srv(launch, authserver_module, "authzen", fake_pdp.port, "/access/v1/evaluation")


@pytest.fixture(scope="module")
def opa(launch, authserver_module, fake_pdp):
    return pdp_srv(launch, authserver_module, "opa", fake_pdp.port, "/v1/data/httpapi/authz")


def pdp_table(srv, pdp, cases):
    """cases: (method, path, scopes, status, error, PDP asked?)."""
    for method, path, scopes, status, error, asked in cases:
        before = pdp.stats()["calls"]
        r = srv.req(method, path, scopes, sub="alice") if scopes else srv.req(method, path)
        srv.check(r, "%s %s %r" % (method, path, scopes), status, error)
        after = pdp.stats()
        assert after["calls"] - before == (1 if asked else 0), (method, path, before, after)


def test_authzen_pdp(authzen, fake_pdp):
    pdp_table(authzen, fake_pdp, [
        ("GET", "/pdp/allow/1", ["read"], 200, None, True),
        ("GET", "/pdp/allow/1", ["read"], 200, None, True),  # cache_seconds 0: asked every time
        ("GET", "/pdp/deny/1", ["read"], 403, "forbidden", True),
        ("GET", "/pdp/undefined/1", ["read"], 403, "forbidden", True),
        ("GET", "/pdp/allow/1", ["write"], 403, "insufficient_scope", False),
        ("DELETE", "/pdp/allow/1", ["read"], 403, "insufficient_scope", False),
        ("GET", "/elsewhere", ["read"], 403, "forbidden", False),
        ("GET", "/pdp/allow/1", None, 401, None, False),
    ])
    authzen.req("GET", "/pdp/allow/2", ["read", "extra"], sub="alice")
    last = fake_pdp.stats()["last"]
    assert last["subject"]["type"] == "user" and last["subject"]["id"] == "alice", last
    assert last["subject"]["properties"]["client_id"] == "demo-client", last
    assert last["action"] == {"name": "GET"}, last
    assert last["resource"]["id"] == "/pdp/allow/2" and last["resource"]["type"] == "route", last
    assert last["resource"]["properties"]["rule"] == "GET /pdp/??", last
    assert last["context"]["scopes"] == ["read", "extra"], last


def test_opa_pdp(opa, fake_pdp):
    pdp_table(opa, fake_pdp, [
        ("GET", "/pdp/allow/1", ["read"], 200, None, True),
        ("GET", "/pdp/deny/1", ["read"], 403, "forbidden", True),
        ("GET", "/pdp/undefined/1", ["read"], 403, "forbidden", True),
        ("DELETE", "/pdp/deny/1", ["read"], 403, "insufficient_scope", False),
    ])
    # The path is rewritten after the PDP's answer too.
    seen = opa.check(opa.raw("GET", "/pdp/allow/%2e%2e/allow/3", opa.token(["read"], sub="alice")), "dots", 200)
    assert seen["path"] == "/pdp/allow/3", seen
    inp = fake_pdp.stats()["last"]["input"]
    assert (inp["subject"], inp["client_id"], inp["method"]) == ("alice", "demo-client", "GET"), inp
    assert (inp["path"], inp["rule"], inp["scopes"]) == ("/pdp/allow/3", "GET /pdp/??", ["read"]), inp


def test_pdp_timeout_and_down_fail_closed(launch, authserver_module):
    # A listener that accepts connections but never answers, then a closed port.
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(64)
    port = sink.getsockname()[1]
    # Longer than the default (2 s), so that an answer after 2.5 s shows the
    # configured timeout was applied (load can only make it later); the
    # client's 10 s timeout catches none being applied.
    srv = pdp_srv(launch, authserver_module, "authzen", port, "/access/v1/evaluation", timeout_ms=3000)
    try:
        t0 = time.monotonic()
        r = srv.req("GET", "/pdp/allow/1", ["read"])
        waited = time.monotonic() - t0
        srv.check(r, "PDP never answers", 503, "temporarily_unavailable")
        assert waited >= 2.5, "503 after %.1f s: not the configured 3 s timeout" % waited
        assert r.headers.get("Retry-After"), dict(r.headers)
    finally:
        sink.close()
    r = srv.req("GET", "/pdp/allow/1", ["read"])
    srv.check(r, "PDP down", 503, "temporarily_unavailable")
    srv.check(srv.req("GET", "/pdp/allow/1", ["write"]), "scope check first", 403, "insufficient_scope")


# --------------------------------------------------------------------------
# 10: a bad policy is refused at load, naming the rule and the problem
# --------------------------------------------------------------------------

def gluu_rule(path, rule, data, methods=("GET",)):
    return [{"path": path, "conditions": [{"httpMethods": list(methods),
                                           "scope_expression": {"rule": rule, "data": data}}]}]


BAD_POLICIES = [
    ("two ??", {"GET /a/??/b/??": "read"}, "/a/??/b/??", "more than one `??`"),
    ("unknown operator", gluu_rule("/x", {"xor": [var(0), var(0)]}, ["a"]), "GET /x", "unknown operator `xor`"),
    ("var out of range", gluu_rule("/x", {"and": [var(0), var(3)]}, ["a", "b"]), "GET /x",
     "`var` 3 is out of range"),
    ("bad path regex", {"GET /x/{a(b}": "read"}, "/x/{a(b}", "bad path regex"),
    ("bad scope regex", {"GET /t/?": "^t:(?<PC1>[0-9]+$"}, "GET /t/?", "scope `^t:(?<PC1>[0-9]+$`"),
    ("PC2 beyond the captures", gluu_rule("/posts/?", {"or": [var(0), var(1)]}, ["admin", "^posts:(?<PC2>.+)$"],
                                          ("GET", "POST")),
     "GET,POST /posts/?", "uses group `PC2` but the path has 1 capture(s)"),
    ("dangling operator", {"POST /d": "read and"}, "POST /d", "expression `read and`"),
    ("upper-case operator", {"POST /d": "READ AND WRITE"}, "POST /d", "`AND`"),
]


@pytest.mark.parametrize("policy,rule,problem", [c[1:] for c in BAD_POLICIES], ids=[c[0] for c in BAD_POLICIES])
def test_bad_policy_is_refused_naming_the_rule(envoy_failure, authserver, policy, rule, problem):
    res = envoy_failure(config(authserver, policy=policy), timeout=20)
    assert not res.became_ready, (res, res.log[-3000:])
    lines = [line for line in res.log.splitlines() if "invalid configuration: `policy`" in line]
    assert lines, res.log[-3000:]
    assert "policy rule `%s`" % rule in lines[0] and problem in lines[0], lines[0]
