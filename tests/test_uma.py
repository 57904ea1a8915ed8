"""UMA 2.0 through a real Envoy (seed 001's flows): without an RPT the filter
registers a permission ticket with the PAT and answers 401 `UMA realm,
as_uri, ticket`; the client redeems the ticket (after claims gathering when
the authorization server's policy wants country=US and city=NY) and the RPT
passes; RPTs for another resource, without the scope, or expired get a new
ticket (or 403 when so configured); RPT answers are cached; a failing
permission endpoint is a 503, never a 401 without a ticket; the PAT is
renewed ahead of expiry once for all workers.

The authorization server is tests/authserver.py (`/.well-known/uma2-configuration`,
`/uma/permission`, the uma-ticket grant, `/uma/gather_claims`; settings from /_test/uma).
"""

import base64
import json
import re
import time
import urllib.parse

import pytest

import harness

REALM = "uma-test"
UMA_GRANT = "urn:ietf:params:oauth:grant-type:uma-ticket"
RS = ("resource-server", "rs-secret", "uma_protection")
# This module's authorization server has the resource server's client too (conftest's authserver_module).
AUTHSERVER_CLIENTS = dict(harness.DEFAULT_CLIENTS, **{RS[0]: (RS[1], RS[2])})
RESOURCES = {"photos": ["view", "edit"], "docs": ["read"]}


@pytest.fixture
def uma_as(authserver):
    authserver.uma(resources=RESOURCES)
    return authserver


def config(a, **uma_over):
    issuer = {"issuer": a.issuer, "discovery": "uma2-configuration", "upstream": "authserver",
              "audiences": ["api"], "introspection": {"client_id": "pep", "client_secret": "pep-secret"}}
    uma = harness._overridden({
        "issuer": a.issuer, "client": "pat",
        "resources": [
            {"resource_id": "photos", "policy": {"GET /photos/??": "view", "POST /photos/??": "edit"}},
            {"resource_id": "docs", "policy": {"GET /docs/??": "read"}},
        ],
    }, uma_over)
    return {"realm": REALM, "issuers": [issuer],
            "clients": {"pat": {"issuer": a.issuer, "client_id": RS[0], "client_secret": RS[1],
                                "scopes": ["uma_protection"]}},
            "uma": uma}


def started(factory, a, cfg, **kw):
    env = factory(cfg, **kw)
    # Ready once the keys and the PAT are there: a request gets its ticket.
    harness.wait_until(lambda: harness.send_raw(env, "/photos/1").status == 401, 20, what="a UMA ticket")
    return env


def challenge(r):
    """The `UMA` challenge's parameters (UMA 2.0 Grant §3.2)."""
    assert r.status == 401, r
    www = r.headers.get("www-authenticate", "")
    assert www.startswith("UMA "), r
    params = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', www))
    assert set(params) == {"realm", "as_uri", "ticket"}, www
    body = r.json()
    assert body["reason"] == "uma_ticket" and body["ticket"] == params["ticket"], body
    assert body["as_uri"] == params["as_uri"]
    return params


def get(env, path, token=None, method="GET"):
    if method == "GET":
        return harness.send_raw(env, path, (), token)
    r = env.request(method, path, token=token)
    return harness.Resp(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)


def redeem(a, ticket, claims=None, client=("demo-client", "demo-secret")):
    data = {"grant_type": UMA_GRANT, "ticket": ticket}
    if claims is not None:
        data["claim_token"] = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        data["claim_token_format"] = "https://demo.oauth-pep/claims+json"
    return a.http.post(a.url("/token"), data=data, auth=client, timeout=10)


def rpt_for(a, env, path, method="GET"):
    params = challenge(get(env, path, method=method))
    r = redeem(a, params["ticket"])
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def last_permission(a):
    reqs = a.uma()["permission_requests"]
    assert reqs, "no permission request"
    return reqs[-1]


def test_ticket_then_rpt_then_200_and_the_rpt_is_cached(start_envoy, uma_as):
    a = uma_as
    env = started(start_envoy, a, config(a))

    params = challenge(get(env, "/photos/1"))
    assert params["realm"] == REALM and params["as_uri"] == a.issuer, params
    req = last_permission(a)
    assert json.loads(req["body"]) == {"resource_id": "photos", "resource_scopes": ["view"]}, req
    assert req["headers"]["content-type"] == "application/json", req
    pat = req["headers"]["authorization"]
    assert pat.startswith("Bearer "), req
    assert a.introspect(pat[7:]).json()["scope"] == "uma_protection", "the PAT is the RS's token"

    r = redeem(a, params["ticket"])
    assert r.status_code == 200, r.text
    rpt = r.json()["access_token"]
    before = a.introspections(rpt)
    ok = get(env, "/photos/1", token=rpt)
    assert ok.status == 200, ok
    assert ok.json()["headers"].get("x-oauth-client-id") == "demo-client"
    for _ in range(5):
        assert get(env, "/photos/2", token=rpt).status == 200
    assert a.introspections(rpt) - before == 1, "the RPT's answer is cached"
    # The ticket is not reusable, and each request without an RPT gets its own.
    assert redeem(a, params["ticket"]).status_code == 400
    assert challenge(get(env, "/photos/1"))["ticket"] != params["ticket"]


def test_claims_gathering_need_info_then_a_new_ticket_then_200(start_envoy, uma_as):
    a = uma_as
    a.uma(require_claims=True)
    env = started(start_envoy, a, config(a))

    ticket = challenge(get(env, "/photos/1"))["ticket"]
    need = redeem(a, ticket)
    assert need.status_code == 403, need.text
    info = need.json()
    assert info["error"] == "need_info" and info["ticket"] != ticket, info
    assert {c["name"] for c in info["required_claims"]} == {"country", "city"}, info

    # The user's browser goes to the claims gathering URL; wrong claims do not pass.
    def gather(ticket, country, city):
        q = urllib.parse.urlencode({"ticket": ticket, "claims_redirect_uri": "https://client.example/cb",
                                    "country": country, "city": city})
        r = a.http.get(info["redirect_user"] + "?" + q, allow_redirects=False, timeout=10)
        assert r.status_code == 302, r.text
        back = urllib.parse.urlsplit(r.headers["Location"])
        assert back.netloc == "client.example"
        return urllib.parse.parse_qs(back.query)["ticket"][0]

    wrong = gather(info["ticket"], "FR", "Paris")
    again = redeem(a, wrong)
    assert again.status_code == 403 and again.json()["error"] == "need_info", again.text

    good = gather(again.json()["ticket"], "US", "NY")
    r = redeem(a, good)
    assert r.status_code == 200, r.text
    assert get(env, "/photos/1", token=r.json()["access_token"]).status == 200

    # Pushed claims work too (UMA 2.0 Grant §3.3.1).
    ticket = challenge(get(env, "/photos/3"))["ticket"]
    r = redeem(a, ticket, claims={"country": "US", "city": "NY"})
    assert r.status_code == 200, r.text


def test_an_rpt_for_another_resource_or_without_the_scope_gets_a_new_ticket(start_envoy, uma_as):
    a = uma_as
    env = started(start_envoy, a, config(a))
    docs = rpt_for(a, env, "/docs/a")
    assert get(env, "/docs/a", token=docs).status == 200

    params = challenge(get(env, "/photos/1", token=docs))
    assert json.loads(last_permission(a)["body"]) == {"resource_id": "photos", "resource_scopes": ["view"]}
    assert params["ticket"]

    view = rpt_for(a, env, "/photos/1")
    assert get(env, "/photos/1", token=view).status == 200
    challenge(get(env, "/photos/1", token=view, method="POST"))
    assert json.loads(last_permission(a)["body"]) == {"resource_id": "photos", "resource_scopes": ["edit"]}

    # A plain access token (not an RPT) is no permission either.
    challenge(get(env, "/photos/1", token=a.token()))
    # Paths no resource names are not UMA's: an ordinary token passes.
    assert get(env, "/public/x", token=a.token()).status == 200


def test_on_insufficient_forbidden_answers_403(start_envoy, uma_as):
    a = uma_as
    env = started(start_envoy, a, config(a, on_insufficient="forbidden"))
    view = rpt_for(a, env, "/photos/1")
    r = get(env, "/photos/1", token=view, method="POST")
    assert r.status == 403 and r.json()["reason"] == "insufficient_scope", r
    # Without an RPT it is still a ticket.
    challenge(get(env, "/photos/1"))


# An expired RPT asked about again and answered with a new ticket, and a PAT
# that expired and cannot be renewed (a 503): with injected time in the core
# (core/src/engine/uma.rs), not by sleeping here.


def test_a_jwt_rpt_is_verified_locally_with_its_permissions(start_envoy, uma_as):
    a = uma_as
    a.uma(rpt_format="jwt")
    env = started(start_envoy, a, config(a))
    rpt = rpt_for(a, env, "/photos/1")
    assert rpt.count(".") == 2
    before = a.introspections()
    assert get(env, "/photos/1", token=rpt).status == 200
    challenge(get(env, "/docs/1", token=rpt))
    assert a.introspections() == before, "no introspection for a JWT RPT"


@pytest.mark.parametrize("mode", ["error500", "garbage", "hang"])
def test_the_permission_endpoint_failing_is_a_503_never_a_401_without_ticket(start_envoy, uma_as, mode):
    a = uma_as
    env = started(start_envoy, a, config(a, timeout_ms=700))
    a.uma(permission_mode=mode)
    r = get(env, "/photos/1")
    assert r.status == 503, r
    body = r.json()
    assert body["reason"] == "uma_unavailable" and "ticket" not in body, body
    assert "www-authenticate" not in r.headers, r
    a.uma(permission_mode="ok")
    challenge(get(env, "/photos/1"))


def test_the_pat_is_renewed_once_for_all_workers(start_envoy, uma_as):
    a = uma_as
    a.set_token_mode("ok", expires_in=12)
    env = started(start_envoy, a, config(a), concurrency=2)
    calls = a.token_calls()
    pats = set()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        challenge(get(env, "/photos/1"))
        pats.add(last_permission(a)["headers"]["authorization"])
        time.sleep(0.25)
    assert len(pats) == 2, "one PAT, then its renewal ahead of expiry"
    assert a.token_calls() - calls == 1, "renewed once for both workers"


def test_a_uma_server_that_publishes_no_jwks_uri_still_gives_tickets(start_envoy, uma_as):
    """RFC 8414 makes `jwks_uri` optional, and a UMA server issuing opaque RPTs
    may leave it out. Before: every request was 503 `keys_unavailable` ("OIDC
    discovery for …: missing field `jwks_uri`"), even one that needed only a ticket."""
    a = uma_as
    a.override_discovery(jwks_uri=None)
    env = started(start_envoy, a, config(a))
    rpt = rpt_for(a, env, "/photos/1")
    assert get(env, "/photos/1", token=rpt).status == 200, "the opaque RPT is introspected"
    # A JWT of that issuer: no key can verify it, which is the configuration's
    # fault, not the caller's: 503 naming the document (in the log), never a fetch loop.
    jwt = a.token()
    assert jwt.count(".") == 2
    for _ in range(3):
        r = get(env, "/public/x", token=jwt)
        assert r.status == 503 and r.json()["reason"] == "keys_unavailable", r
    harness.wait_until(lambda: "the UMA discovery document of %s names no jwks_uri" % a.issuer
                       in env.log_text(), 10, what="the cause in the log")
    assert "OIDC discovery" not in env.log_text()
    stats = a.stats()
    assert stats["jwks"] == 0 and stats["uma2_discovery"] <= 2, stats


def test_uma_without_discovery_takes_its_upstream_from_the_issuer(start_envoy, uma_as):
    """README's UMA example without discovery: an issuer with no keys (every
    token introspected), fixed endpoints, and `uma.upstream` and
    `introspection.upstream` left to the issuer's. Before: refused at load with
    `uma.upstream: is required`."""
    a = uma_as
    cfg = config(a)
    cfg["issuers"] = [{"issuer": a.issuer, "audiences": ["api"], "upstream": "authserver",
                       "introspection": {"endpoint": a.issuer + "/introspect",
                                         "client_id": "pep", "client_secret": "pep-secret"}}]
    cfg["clients"]["pat"] = {"token_endpoint": a.issuer + "/token", "upstream": "authserver",
                             "client_id": RS[0], "client_secret": RS[1], "scopes": ["uma_protection"]}
    cfg["uma"]["permission_endpoint"] = a.issuer + "/uma/permission"
    env = started(start_envoy, a, cfg)
    rpt = rpt_for(a, env, "/photos/1")
    assert get(env, "/photos/1", token=rpt).status == 200
    stats = a.stats()
    assert stats["discovery"] == stats["uma2_discovery"] == stats["jwks"] == 0, stats


def test_a_uma_config_without_a_permission_endpoint_is_refused(envoy_failure, uma_as):
    a = uma_as
    cfg = config(a)
    cfg["issuers"][0]["discovery"] = True
    cfg["uma"].pop("permission_endpoint", None)
    f = envoy_failure(cfg)
    assert not f.became_ready and "uma.permission_endpoint" in f.log, f.log[-3000:]
    cfg = config(a, client="nope")
    f = envoy_failure(cfg)
    assert not f.became_ready and "uma.client" in f.log, f.log[-3000:]
