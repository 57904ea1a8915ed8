"""The second attacker's review (issue 18), through real Envoy: each finding
that is fixed has its regression test here."""

import base64
import http.client
import json

import pytest

import harness
from test_gluu_dropin import gluu_config, seed_000, unsigned_jwt_payload
from test_upstream_oauth import AUTHSERVER_CLIENTS, GATEWAY, claims_of, config, send, started  # noqa: F401


def test_head_gets_the_gateways_token_where_a_get_rule_applies(start_envoy, authserver):
    """Finding 7: `methods: ["GET"]` with `replace` covered GET only, so HEAD
    sent the caller's own token to the backend."""
    a = authserver
    rule = {"client": "billing", "paths": ["/billing/??"], "methods": ["GET"]}
    env = started_or_legacy(start_envoy, a, config(a, [rule]), with_rules(config(a, []), [rule]))
    token = a.token()
    for method in ("GET", "HEAD"):
        r = env.request(method, "/billing/reports", token=token)
        assert r.status_code == 200, (method, r.status_code, r.text)
        sent = r.json()["headers"]["authorization"] if method == "GET" else r.headers["x-echo-authorization"]
        assert sent != "Bearer " + token, method
        assert claims_of(sent)["client_id"] == GATEWAY[0], method
    # A method the rule does not list keeps the caller's token.
    r = env.request("POST", "/billing/reports", token=token)
    assert r.json()["headers"]["authorization"] == "Bearer " + token


def test_method_override_headers_never_reach_the_upstream(start_envoy, authserver):
    """Finding 4: a `write` token ran DELETE (which needs `admin`) through a
    POST carrying X-HTTP-Method-Override, which frameworks obey."""
    a = authserver
    cfg = {"realm": "test", "issuers": [a.issuer_config()],
           "policy": {"POST /items": "write", "DELETE /items": "admin", "GET /??": "read"}}
    env = start_envoy(cfg)
    env.wait_status("/", 200, token=a.mint(a.claims(scope="read")), timeout=20)
    token = a.mint(a.claims(scope="write"))
    overrides = {"X-HTTP-Method-Override": "DELETE", "X-HTTP-Method": "DELETE",
                 "X-Method-Override": "DELETE", "x_http_method_override": "DELETE"}
    r = env.post("/items", token=token, headers=overrides)
    assert r.status_code == 200, r.text
    received = r.json()["headers"]
    leaked = [h for h in received if h.replace("_", "-") in
              ("x-http-method-override", "x-http-method", "x-method-override")]
    assert not leaked, received
    assert r.json()["method"] == "POST"
    assert env.request("DELETE", "/items", token=token).status_code == 403


# ---------------------------------------------------------------- finding 1: where the gateway's token may go

# Two virtual hosts on one HTTP connection manager, as a gateway fronts them:
# `backend` (Host backend.internal) sends /backend/ to the backend that trusts
# the gateway's token and the rest to the reflecting upstream; `www` (every
# other host) sends everything to the reflecting upstream (tests/echo.py, which
# hands a caller whatever it received). Every route names its cluster in the
# answer (x-test-cluster), so a test sees where each request went, HEAD included.
BACKEND_HOST = "backend.internal"


def two_virtual_hosts(b):
    hcm = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    upstream = b["static_resources"]["clusters"][0]
    assert upstream["name"] == "upstream"

    def route(name, prefix, cluster):
        return {"name": name, "match": {"prefix": prefix},
                "route": {"cluster": cluster, "timeout": "15s"},
                "response_headers_to_add": [{"header": {"key": "x-test-cluster", "value": cluster}}]}

    hcm["route_config"]["virtual_hosts"] = [
        {"name": "backend", "domains": [BACKEND_HOST],
         "routes": [route("backend-api", "/backend/", "backend"), route("backend-rest", "/", "upstream")]},
        {"name": "www", "domains": ["*"], "routes": [route("www", "/", "upstream")]},
    ]
    backend = dict(upstream, name="backend")
    backend["load_assignment"] = dict(upstream["load_assignment"], cluster_name="backend")
    b["static_resources"]["clusters"].append(backend)


def through(env, method, target, host, token=None, headers=()):
    """One request with this request-target (origin or absolute form) and
    Host: (status, the cluster it went to, the Authorization it carried there)."""
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        if token is not None:
            conn.putheader("Authorization", "Bearer " + token)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        cluster = r.getheader("x-test-cluster")
        if r.status != 200:
            return r.status, cluster, None
        if method == "HEAD":
            sent = r.getheader("x-echo-authorization")
            return r.status, cluster, None if sent == "-" else sent
        return r.status, cluster, json.loads(body)["headers"].get("authorization")
    finally:
        conn.close()


def is_gateways(sent):
    return bool(sent) and sent.startswith("Bearer ") and sent.count(".") == 2 and \
        claims_of(sent).get("client_id") == GATEWAY[0]


# (method, request-target, Host): where Envoy routes it.
TO_BACKEND = [
    ("GET", "/backend/reports", BACKEND_HOST),
    ("HEAD", "/backend/reports", BACKEND_HOST),
    ("GET", "/backend/reports", "Backend.Internal"),
    ("GET", "http://backend.internal/backend/reports", "www.example.com"),
]
TO_REFLECTOR = [
    ("GET", "/backend/reports", "www.example.com"),
    ("HEAD", "/backend/reports", "www.example.com"),
    ("GET", "/backend/reports", "backend.internal:443"),
    ("GET", "/backend/reports", "backend.internal:80"),
    ("GET", "/backend/reports", "backend.internal."),
    ("GET", "http://www.example.com/backend/reports", BACKEND_HOST),
    ("HEAD", "http://www.example.com/backend/reports", BACKEND_HOST),
    ("GET", "/other", BACKEND_HOST),
]


def leaks(env, token):
    """The requests whose gateway token reached the reflecting upstream."""
    out = []
    for method, target, host in TO_BACKEND + TO_REFLECTOR:
        status, cluster, sent = through(env, method, target, host, token=token)
        assert status == 200, (method, target, host, status)
        if cluster != "backend" and is_gateways(sent):
            out.append((method, target, host))
    return out


def with_rules(cfg, rules):
    """`cfg` with exactly these upstream OAuth rules (config() gives each a
    destination; a build from before issue 18 knew none)."""
    return dict(cfg, upstream_oauth=rules)


def started_or_legacy(start_envoy, a, cfg, legacy, **kw):
    """Envoy with `cfg`; where the filter does not know its new fields (a
    build from before issue 18: OAUTH_PEP_WASM=…), with `legacy`, the nearest
    configuration that build accepted, so that the test shows what it let
    through rather than only that it refused the new fields."""
    try:
        return started(start_envoy, a, cfg, **kw)
    except RuntimeError as e:
        if "unknown field" not in str(e):
            raise
        return started(start_envoy, a, legacy, **kw)


def test_a_rule_that_does_not_say_where_its_token_may_go_is_refused(start_envoy, envoy_failure, authserver):
    """Finding 1: a rule written for the backend's paths sent the gateway's
    token to whichever virtual host the caller named. Such a rule is now
    refused at load; on a build that accepts it, the leak is shown."""
    a = authserver
    cfg = with_rules(config(a, []), [{"client": "billing", "paths": ["/backend/??"]}])
    res = envoy_failure(cfg, customize=two_virtual_hosts)
    if res.became_ready:
        env = started(start_envoy, a, cfg, customize=two_virtual_hosts)
        assert not leaks(env, a.token()), "the gateway's token reached another virtual host's upstream"
        pytest.fail("a rule without a destination was accepted")
    assert res.exited, res
    assert "`upstream_oauth[0]`: must say where the gateway's token may go" in res.log, res.log[-3000:]


@pytest.mark.parametrize("where", [
    {"authorities": [BACKEND_HOST]},
    {"virtual_hosts": ["backend"]},
    {"routes": ["backend-api"]},
    {"clusters": ["backend"]},
], ids=lambda w: next(iter(w)))
def test_the_gateways_token_goes_only_where_its_rule_says(start_envoy, authserver, where):
    """Finding 1: Host, Host with a port, an absolute-form target, HEAD: the
    reflecting upstream of the other virtual host never sees the gateway's
    token, and the backend gets it wherever Envoy routes the request there."""
    a = authserver
    rule = dict(where, client="billing", paths=["/backend/??"])
    legacy = with_rules(config(a, []), [{"client": "billing", "paths": ["/backend/??"]}])
    env = started_or_legacy(start_envoy, a, config(a, [rule]), legacy, customize=two_virtual_hosts)
    token = a.token()
    for method, target, host in TO_BACKEND:
        status, cluster, sent = through(env, method, target, host, token=token)
        assert (status, cluster) == (200, "backend"), (method, target, host, status, cluster)
        assert is_gateways(sent), (method, target, host, sent)
    for method, target, host in TO_REFLECTOR:
        status, cluster, sent = through(env, method, target, host, token=token)
        assert (status, cluster) == (200, "upstream"), (method, target, host, status, cluster)
        assert not is_gateways(sent), ("the gateway's token reached the reflecting upstream", method, target, host)
        assert sent == "Bearer " + token, (method, target, host, sent)


def test_a_rule_bound_to_a_route_refuses_a_path_envoy_would_route_again(start_envoy, authserver):
    """Finding 1: the filter forwards the path it judged and makes Envoy pick
    the route again; `/backend/../x` was routed to the backend, judged as `/x`
    and re-routed to the reflecting upstream, with the token the backend's
    route had earned. Where a rule is bound to a route or cluster, such a
    path is refused (Envoy's normalize_path and merge_slashes spare honest
    clients); one bound to a virtual host keeps it across the new path."""
    a = authserver
    rule = {"client": "billing", "clusters": ["backend"]}
    legacy = with_rules(config(a, []), [{"client": "billing"}])
    env = started_or_legacy(start_envoy, a, config(a, [rule]), legacy, customize=two_virtual_hosts)
    token = a.token()
    status, cluster, sent = through(env, "GET", "/backend/reports", BACKEND_HOST, token=token)
    assert (status, cluster) == (200, "backend") and is_gateways(sent), (status, cluster, sent)
    for target in ["/backend/../other", "/backend/%2e%2e/other", "/backend//reports"]:
        status, cluster, sent = through(env, "GET", target, BACKEND_HOST, token=token)
        assert not (cluster == "upstream" and is_gateways(sent)), ("re-routed with the gateway's token", target)
        assert status == 400, (target, status, cluster)


def test_token_less_callers_get_the_gateways_token_only_where_the_rule_says_anonymous(start_envoy, authserver):
    """Finding 1: a rule covering public paths sent the gateway's identity for
    callers without any token. Now only a rule with `anonymous: true` does,
    for public paths, the anonymous consumer and an invalid token's fallback."""
    a = authserver
    top = {"public_paths": ["/backend/status"],
           "anonymous": {"id": "anon", "paths": ["/backend/open/??"], "on_invalid_token": True}}
    rule = {"client": "billing", "authorities": [BACKEND_HOST]}
    legacy = with_rules(config(a, [], **top), [{"client": "billing"}])
    env = started_or_legacy(start_envoy, a, config(a, [rule], **top), legacy, customize=two_virtual_hosts)
    expired = a.mint(a.claims(exp=harness.now() - 600))
    token_less = [("/backend/status", None), ("/backend/open/doc", None), ("/backend/open/doc", expired)]
    for target, token in token_less:
        status, cluster, sent = through(env, "GET", target, BACKEND_HOST, token=token)
        assert (status, cluster) == (200, "backend"), (target, status)
        assert not is_gateways(sent), ("the gateway's identity for a caller without a verified token", target)
    # A verified caller still gets it there.
    assert is_gateways(through(env, "GET", "/backend/x", BACKEND_HOST, token=a.token())[2])

    open_rule = dict(rule, anonymous=True)
    env = started(start_envoy, a, config(a, [open_rule], **top), customize=two_virtual_hosts)
    for target, token in token_less:
        status, cluster, sent = through(env, "GET", target, BACKEND_HOST, token=token)
        assert status == 200 and is_gateways(sent), (target, status, sent)


# ---------------------------------------------------------------- finding 2: forged phantom tokens

def forged_phantom(**claims):
    """What a client writes to pass for the gateway's phantom token: `Bearer`
    and an unsigned JWT, exactly the gateway's shape."""
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    body = {"active": True, "sub": "admin", "client_id": "demo-client", "scope": "transactions:1 admin"}
    body.update(claims)
    return "%s.%s." % (enc({"typ": "JWT", "alg": "none"}), enc(body))


def phantom_gluu_config(a):
    """The `gluu` block with pass_credentials phantom_token (the phantom in
    `authorization`), the anonymous consumer (Gluu's fallback for invalid
    tokens too) and deny_by_default false, plus a public path."""
    cfg = gluu_config(a, seed_000(a, pass_credentials="phantom_token", anonymous="a1a1-anonymous"))
    pep = cfg["gluu"]["plugins"]["data"][1]["config"]
    assert pep["deny_by_default"] is True
    pep["deny_by_default"] = False
    cfg["public_paths"] = ["/health"]
    return cfg


def test_forged_phantom_tokens_never_reach_the_upstream(start_envoy, authserver):
    """Finding 2: with phantom tokens in `authorization`, a client's own
    unsigned phantom went upstream on a public path and through an invalid
    token's fallback to the anonymous consumer, in exactly the gateway's
    shape. The filter owns the header on every outcome."""
    a = authserver
    env = start_envoy(phantom_gluu_config(a))
    jwt = a.mint(a.claims(scope="transactions:1"))
    env.wait_status("/transactions/1", 200, token=jwt, timeout=20)
    forged = forged_phantom()
    expired = a.mint(a.claims(scope="transactions:1", exp=harness.now() - 600))
    reached = []
    for path, token, who in [("/health", forged, None), ("/catalog", forged, "a1a1-anonymous"),
                             ("/catalog", expired, "a1a1-anonymous")]:
        r = env.get(path, token=token)
        assert r.status_code == 200, (path, r.status_code, r.text)
        seen = r.json()["headers"]
        assert seen.get("x-consumer-id") == who, (path, seen)
        if "authorization" in seen:
            reached.append((path, "forged" if token == forged else "expired"))
    assert not reached, "a phantom the gateway did not make reached the upstream: %s" % reached
    # The gateway's own phantom still replaces an opaque token, and a JWT
    # verified locally goes on as it came.
    opaque = a.opaque(scope="transactions:7", client_id="demo-client")
    r = env.get("/transactions/7", token=opaque)
    assert r.status_code == 200 and unsigned_jwt_payload(r.json()["headers"]["authorization"])["active"] is True
    assert env.get("/transactions/1", token=jwt).json()["headers"]["authorization"] == "Bearer " + jwt


def test_a_forged_phantom_beside_a_token_read_elsewhere_is_stripped(start_envoy, authserver):
    """Finding 2: where the caller's token comes from the query, the anonymous
    consumer's requests and verified ones carried the client's own
    `authorization` to an upstream that reads phantom tokens there."""
    a = authserver
    cfg = {"realm": "test", "issuers": [a.issuer_config(introspection={"client_id": "pep", "client_secret": "pep-secret"})],
           "token_sources": [{"query": "access_token"}],
           "forward": {"phantom_token_header": "authorization", "phantom_token_format": "jwt"},
           "anonymous": {"id": "anon", "paths": ["/open/??"]}}
    env = start_envoy(cfg)
    jwt = a.mint(a.claims(scope="read"))
    env.wait_status("/x?access_token=" + jwt, 200, timeout=20)
    forged = {"Authorization": "Bearer " + forged_phantom()}
    for path in ["/open/doc", "/x?access_token=" + jwt]:
        r = env.get(path, headers=forged)
        assert r.status_code == 200, (path, r.text)
        assert "authorization" not in r.json()["headers"], (path, r.json()["headers"])
    r = env.get("/x?access_token=" + a.opaque(scope="read"), headers=forged)
    assert r.status_code == 200, r.text
    assert unsigned_jwt_payload(r.json()["headers"]["authorization"])["sub"] == "demo-user"


# ---------------------------------------------------------------- finding 8: hide_credentials on the anonymous fallback

def test_an_invalid_token_falling_back_to_anonymous_is_hidden(start_envoy, authserver):
    """Finding 8: with hide_credentials (Gluu's pass_credentials hide) an
    expired token falling back to the anonymous consumer went upstream."""
    a = authserver
    cfg = {"realm": "test", "issuers": [a.issuer_config()],
           "token_sources": [{"header": "authorization"}, {"query": "access_token"}],
           "forward": {"hide_credentials": True},
           "anonymous": {"id": "anon", "paths": ["/open/??"], "on_invalid_token": True}}
    env = start_envoy(cfg)
    env.wait_status("/x", 200, token=a.mint(), timeout=20)
    expired = a.mint(a.claims(exp=harness.now() - 600))
    r = env.get("/open/doc", token=expired)
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["headers"]["x-consumer-id"] == "anon"
    assert "authorization" not in seen["headers"], seen["headers"]
    r = env.get("/open/doc?a=1&access_token=%s&b=2" % expired)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/open/doc?a=1&b=2", r.json()["path"]
    assert expired not in r.text
