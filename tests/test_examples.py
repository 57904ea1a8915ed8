"""The Envoy files in envoy/: each passes `envoy --mode validate` (which runs
the filter's on_configure, so a refused filter configuration fails it), and
the main ones really run against tests/authserver.py and tests/echo.py: 200
with a good token, 401 without, and what each file is about."""

import base64
import json

import pytest

import harness
from examples import ENVOY_DIR, EnvoyFile, render, validate

SECRET_ENV = {"OAUTH_PEP_INTROSPECTION_SECRET": "pep-secret"}
# Only validated: it names a real host over TLS (envoy/README.md).
VALIDATE_ONLY = {"tls-authserver.yaml"}
FILES = sorted(p.name for p in ENVOY_DIR.glob("*.yaml"))


# The demo's own clients beside the defaults (demo/run.py): the UMA resource
# server (its PAT) and the gateway's client for upstream OAuth.
DEMO_CLIENTS = dict(harness.DEFAULT_CLIENTS, **{"resource-server": ("rs-secret", "uma_protection"),
                                                "gateway": ("gateway-secret", "backend.read")})


@pytest.fixture(scope="module")
def demo_as(tmp_path_factory):
    """The authorization server as the demo runs it: audience demo-api, clients
    demo-client (read write), reader (read), admin (read write admin),
    resource-server (uma_protection), gateway (backend.read); UMA resource photos."""
    a = harness.AuthServer.start(tmp_path_factory.mktemp("as"), audience="demo-api", clients=DEMO_CLIENTS)
    a.uma(resources={"photos": ["view", "edit"]})
    yield a
    a.stop()


@pytest.fixture
def run(request, tmp_path, wasm, echo, demo_as):
    """run("jwt-discovery.yaml") -> a running EnvoyFile, stopped after the test."""
    started = []

    def start(name):
        text = render((ENVOY_DIR / name).read_text(), {"authserver": demo_as.port, "upstream": echo.port})
        env = EnvoyFile(text, tmp_path / ("envoy%d" % len(started)), env=SECRET_ENV)
        started.append(env)
        return env

    yield start
    for env in started:
        env.stop()


def test_every_file_is_listed():
    assert {"jwt-inline-jwks.yaml", "jwt-discovery.yaml", "introspection.yaml", "policy-gluu.yaml",
            "policy-readable.yaml", "several-issuers.yaml", "two-routes.yaml", "tls-authserver.yaml",
            "access-log.yaml", "demo.yaml", "uma.yaml", "upstream-oauth.yaml", "mcp.yaml",
            "token-affinity.yaml"} <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_validates(name, wasm, tmp_path):
    path = tmp_path / name
    path.write_text((ENVOY_DIR / name).read_text())
    ok, out = validate(path, env=SECRET_ENV)
    assert ok, out[-3000:]


def test_validate_runs_the_filters_configuration(wasm, tmp_path):
    """Without the variable its secret comes from, introspection.yaml is
    refused by validation: the filter's on_configure ran and said no."""
    path = tmp_path / "introspection.yaml"
    path.write_text((ENVOY_DIR / "introspection.yaml").read_text())
    ok, out = validate(path, env={"OAUTH_PEP_INTROSPECTION_SECRET": None})
    assert not ok
    assert "OAUTH_PEP_INTROSPECTION_SECRET" in out, out[-3000:]


# Run with their own paths and tokens below (test_two_routes_one_policy, test_mcp_server).
OWN_PATHS = {"two-routes.yaml", "mcp.yaml"}


@pytest.mark.parametrize("name", [n for n in FILES if n not in VALIDATE_ONLY and n not in OWN_PATHS])
def test_good_token_200_no_token_401(name, run, demo_as):
    env = run(name)
    path = "/api/hello"
    token = demo_as.token("demo-client")
    r = env.wait_status(path, 200, token=token)
    assert json.loads(r.text)["path"] == path
    r = env.get(path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="demo"'
    r = env.get(path, token=token[:-4] + "AAAA")
    assert r.status_code == 401
    assert "invalid_token" in r.headers["www-authenticate"]


def test_inline_jwks_makes_no_callout(run, demo_as):
    env = run("jwt-inline-jwks.yaml")
    before = demo_as.stats()
    assert env.get("/x", token=demo_as.token()).status_code == 200
    after = demo_as.stats()
    assert (after["jwks"], after["discovery"]) == (before["jwks"], before["discovery"])


def test_introspection(run, demo_as):
    env = run("introspection.yaml")
    opaque = demo_as.opaque(aud="demo-api", scope="read")
    r = env.wait_status("/api/x", 200, token=opaque)
    phantom = json.loads(json.loads(r.text)["headers"]["x-introspection"])
    assert phantom["active"] is True and phantom["scope"] == "read"
    demo_as.revoke(demo_as.opaque(aud="demo-api"))
    r = env.get("/api/x", token=demo_as.opaque(aud="other-api"))
    assert r.status_code == 401
    assert demo_as.last_introspection()["client_id"] == "pep"


@pytest.mark.parametrize("name", ["policy-gluu.yaml", "policy-readable.yaml"])
def test_policy_forms_agree(name, run, demo_as):
    env = run(name)
    rw, ro = demo_as.token("demo-client"), demo_as.token("reader")
    acct = demo_as.mint(demo_as.claims(scope="accounts:45"))
    env.wait_status("/api/x", 200, token=ro)
    got = {
        "GET reader": env.request("GET", "/api/x", ro).status_code,
        "POST reader": env.request("POST", "/api/x", ro).status_code,
        "POST demo-client": env.request("POST", "/api/x", rw).status_code,
        "GET /accounts/45 with accounts:45": env.get("/accounts/45", acct).status_code,
        "GET /accounts/46 with accounts:45": env.get("/accounts/46", acct).status_code,
        "GET /other": env.get("/other", rw).status_code,
    }
    assert got == {"GET reader": 200, "POST reader": 403, "POST demo-client": 200,
                   "GET /accounts/45 with accounts:45": 200, "GET /accounts/46 with accounts:45": 403,
                   "GET /other": 403}
    r = env.request("POST", "/api/x", ro)
    assert harness.bearer_params(r.headers["www-authenticate"])["error"] == "insufficient_scope"


def test_token_affinity_sends_each_token_to_one_gateway(run, demo_as):
    """The front tier hashes `authorization` (MAGLEV): every request with one
    token reaches the same gateway, and the tokens spread over both."""
    env = run("token-affinity.yaml")
    tokens = [demo_as.opaque(aud="demo-api") for _ in range(16)]
    env.wait_status("/api/x", 200, token=tokens[0])
    gateway_of = {}
    for round_ in range(3):
        for token in tokens:
            r = env.get("/api/x", token=token)
            assert r.status_code == 200, r.text
            gateway = json.loads(r.text)["headers"]["x-gateway"]
            assert gateway_of.setdefault(token, gateway) == gateway, (round_, gateway_of[token], gateway)
    assert set(gateway_of.values()) == {"a", "b"}, gateway_of
    assert env.get("/api/x").status_code == 401


def test_several_issuers(run, demo_as):
    env = run("several-issuers.yaml")
    env.wait_status("/x", 200, token=demo_as.token())
    partner = demo_as.mint(demo_as.claims(iss="https://partner.example"), alg="HS256",
                           secret="partner-secret-of-at-least-32-bytes!", kid=None)
    r = env.get("/x", token=partner)
    assert r.status_code == 200, r.text
    assert json.loads(r.text)["headers"]["x-jwt-iss"] == "https://partner.example"
    stranger = demo_as.mint(demo_as.claims(iss="https://stranger.example"))
    assert env.get("/x", token=stranger).status_code == 401


def test_two_routes_one_policy(run, demo_as):
    env = run("two-routes.yaml")
    rw, admin = demo_as.token("demo-client"), demo_as.token("admin")
    r = env.wait_status("/orders/7", 200, token=rw)
    assert json.loads(r.text)["path"] == "/orders/7"
    assert env.request("POST", "/orders/7", rw).status_code == 200
    r = env.get("/admin/users", rw)
    assert r.status_code == 403
    assert harness.bearer_params(r.headers["www-authenticate"])["scope"] == "admin"
    assert env.get("/admin/users", admin).status_code == 200
    assert env.get("/orders/7").status_code == 401
    # One configuration: as many VMs (configured root contexts) as a one-route file, not one per route.
    single = run("jwt-discovery.yaml")
    single.wait_status("/x", 200, token=rw)
    assert env.log_text().count("oauth-pep configured:") == single.log_text().count("oauth-pep configured:")


def test_access_log_has_the_reason(run, demo_as):
    env = run("access-log.yaml")
    env.wait_status("/api/ok", 200, token=demo_as.token())
    assert env.get("/api/none").status_code == 401
    expired = demo_as.mint(demo_as.claims(exp=1000, iat=900, nbf=900))
    assert env.get("/api/old", token=expired).status_code == 401

    def lines():
        return [l for l in env.stdout_text().splitlines() if l.startswith("[")]

    harness.wait_until(lambda: len(lines()) >= 3, 10, what="access log lines")
    by_path = {l.split()[2]: l.split()[3:5] for l in lines()}
    assert by_path["/api/none"] == ["401", "token_missing"]
    assert by_path["/api/old"] == ["401", "token_expired"]
    assert by_path["/api/ok"] == ["200", "-"]


def test_uma_ticket_then_rpt(run, demo_as):
    env = run("uma.yaml")
    def ticketed():
        r = env.get("/photos/1")
        # A list: a 401 Response is falsy.
        return [r] if r.headers.get("www-authenticate", "").startswith("UMA ") else None

    r = harness.wait_until(ticketed, 20, what="a UMA ticket")[0]
    assert r.status_code == 401
    body = r.json()
    assert body["reason"] == "uma_ticket" and body["as_uri"] == demo_as.issuer, body
    rpt = demo_as.http.post(demo_as.url("/token"), auth=("demo-client", "demo-secret"), timeout=10, data={
        "grant_type": "urn:ietf:params:oauth:grant-type:uma-ticket", "ticket": body["ticket"]})
    assert rpt.status_code == 200, rpt.text
    assert env.get("/photos/1", token=rpt.json()["access_token"]).status_code == 200


def test_upstream_oauth_sends_the_gateways_token(run, demo_as):
    env = run("upstream-oauth.yaml")
    token = demo_as.token("demo-client")
    backend = {"Host": "backend.internal"}
    r = env.wait_status("/backend/reports", 200, token=token, headers=backend)
    headers = json.loads(r.text)["headers"]
    assert headers["x-client-authorization"] == "Bearer " + token
    payload = headers["authorization"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["client_id"] == "gateway" and claims["scope"] == "backend.read", claims
    # Another virtual host gets the caller's own token, never the gateway's.
    r = env.get("/backend/reports", token=token, headers={"Host": "www.example.com"})
    assert r.status_code == 200, r.text
    headers = json.loads(r.text)["headers"]
    assert headers["authorization"] == "Bearer " + token and "x-client-authorization" not in headers


def jsonrpc(method, **params):
    return {"jsonrpc": "2.0", "id": 1, "method": method, **({"params": params} if params else {})}


def test_mcp_server(run, demo_as):
    """mcp.yaml in front of the echo API (the MCP SDK itself runs in tests/test_mcp.py)."""
    env = run("mcp.yaml")
    resource = env.url + "/mcp"
    metadata_url = env.url + "/.well-known/oauth-protected-resource/mcp"
    reader = demo_as.mint(demo_as.claims(aud=resource, scope="read"))
    admin = demo_as.mint(demo_as.claims(aud=resource, scope="read admin"))
    mcp = {"accept": "application/json, text/event-stream"}

    def post(token, body):
        return env.request("POST", "/mcp", token, headers=mcp, data=json.dumps(body))

    env.wait_status("/mcp", 200, token=reader)   # the keys are loaded
    # The metadata, without a token.
    r = env.get("/.well-known/oauth-protected-resource/mcp")
    assert r.status_code == 200, r.text
    meta = r.json()
    assert {k: meta.get(k) for k in ("resource", "authorization_servers", "scopes_supported",
                                     "bearer_methods_supported", "resource_name")} == {
        "resource": resource, "authorization_servers": [demo_as.issuer], "scopes_supported": ["admin", "read"],
        "bearer_methods_supported": ["header"], "resource_name": "Notes (MCP server)"}, meta
    # No token: 401 naming the metadata, no error.
    r = post(None, jsonrpc("initialize"))
    assert r.status_code == 401
    assert harness.bearer_params(r.headers["www-authenticate"]) == {"realm": "demo", "scope": "read",
                                                                     "resource_metadata": metadata_url}
    # A token for another audience (the demo's API): not for this resource.
    r = post(demo_as.token("demo-client"), jsonrpc("tools/list"))
    assert r.status_code == 401 and r.json()["reason"] == "audience_mismatch", r.text
    # read: tools/list and read_notes reach the server, the body unchanged.
    for body in (jsonrpc("tools/list"), jsonrpc("tools/call", name="read_notes", arguments={})):
        r = post(reader, body)
        assert r.status_code == 200, r.text
        assert json.loads(r.json()["body"]) == body
    # admin_reset with read: 403 naming the scope, nothing upstream (the echo would answer 200).
    r = post(reader, jsonrpc("tools/call", name="admin_reset", arguments={}))
    assert r.status_code == 403, r.text
    c = harness.bearer_params(r.headers["www-authenticate"])
    assert (c["error"], c["scope"], c["resource_metadata"]) == ("insufficient_scope", "admin", metadata_url), c
    # With admin it goes through.
    body = jsonrpc("tools/call", name="admin_reset", arguments={})
    r = post(admin, body)
    assert r.status_code == 200 and json.loads(r.json()["body"]) == body, r.text
