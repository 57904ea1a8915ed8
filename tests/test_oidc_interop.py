"""Token introspection (RFC 7662) against a real, certified OpenID provider:
oidc-provider on Node.js (tests/oidc/server.mjs, pinned in
tests/oidc/package-lock.json, installed by `make setup`), through a real
Envoy with the filter.

The provider issues opaque client_credentials tokens to `app` and answers
introspection to `pep` (client_secret_basic), `pep-post`
(client_secret_post) and `pep-jwt` (private_key_jwt, RFC 7523), and it is
strict about which method a client uses, so the post variant fails if the
filter sends Basic credentials.
Its active answers are
    {"active": true, "client_id": "app", "exp": ..., "iat": ...,
     "iss": "<issuer>", "scope": "read write", "token_type": "Bearer"}
without `aud` (no resource indicator), so the issuer is configured with
`"audiences": "any"`. The filter finds the introspection endpoint through
discovery (`introspection_endpoint`); the Envoy cluster to the provider is
`op`.

The first group checks, without Envoy, that the provider behaves as the
Envoy tests assume (opaque tokens, both client authentication methods,
revocation); the second goes through Envoy.
"""

import json
import re
import secrets
import time

import pytest

import harness
from oidc_provider import APP, PEP, PEP_JWT, PEP_JWT_KEYS, PEP_POST, is_jwt_shaped

pytestmark = pytest.mark.timeout(60)

REALM = "oidc-interop"
POLICY = {"GET /read": "read"}
WRONG_SECRET = "not-the-pep-secret-5f1c9a"


def filter_config(op, issuer=None, **introspection):
    intro = {"client_id": PEP[0], "client_secret": PEP[1], "max_ttl_seconds": 1, "timeout_ms": 2000}
    intro.update(introspection)
    intro = {k: v for k, v in intro.items() if v is not None}   # None: leave the field out
    iss = {
        "issuer": op.issuer,
        "audiences": "any",          # oidc-provider's answers carry no `aud`
        "discovery": True,
        "upstream": "op",
        "introspection": intro,      # endpoint from discovery
    }
    iss.update(issuer or {})
    return {"realm": REALM, "issuers": [iss], "policy": POLICY}


def junk_token():
    """Opaque-looking (not JWT-shaped), unknown to the provider."""
    return "junk-" + secrets.token_urlsafe(24)


def start_op_envoy(op, echo, workdir, issuer=None, envoy_env=None, **introspection):
    """Envoy with the filter configured for `op`; returns once a request with
    an unknown opaque token has reached the introspection step (the answer
    names token_inactive or introspection_unavailable, not a start-up
    state). envoy_env: environment variables of Envoy the VM may read."""
    extra = {"env": envoy_env, "host_env_keys": list(envoy_env)} if envoy_env else {}
    env = harness.Envoy.start(filter_config(op, issuer, **introspection), workdir, upstream_port=echo.port,
                              clusters={"op": op.port}, timeout=30, **extra)
    last = {}

    def reached():
        r = env.get("/read", token=junk_token())
        last["r"] = r
        return r.headers.get("content-type", "").startswith("application/json") and \
            r.json().get("reason") in ("token_inactive", "introspection_unavailable")

    try:
        harness.wait_until(reached, 20, interval=0.2, what="the filter to introspect")
    except TimeoutError as e:
        r = last.get("r")
        msg = "%s; last: %s %s\n--- envoy log ---\n%s" % (
            e, getattr(r, "status_code", None), getattr(r, "text", "")[:400], env.log_text()[-6000:])
        env.stop()
        raise AssertionError(msg)
    return env


def upstream_headers(r):
    assert r.status_code == 200, (r.status_code, r.headers, r.text[:500])
    return r.json()["headers"]


def denial(r, status, reason):
    assert r.status_code == status, (r.status_code, r.headers, r.text[:500])
    body = r.json()
    assert body["reason"] == reason, body
    return body


def filter_calls(op, token, client=PEP[0]):
    """Introspection requests the provider received for token from `client`
    (the filter), not those the tests made themselves (as `app`)."""
    return [c for c in op.calls("introspection", token) if c["client"] == client]


@pytest.fixture
def dump_on_failure(request):
    """Register Envoys whose log is printed if the test fails."""
    envs = []
    yield envs.append
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for env in envs:
            print("\n--- envoy log (tail) ---\n" + env.log_text()[-8000:])


@pytest.fixture(scope="module")
def main_envoy(wasm, oidc_provider, echo, tmp_path_factory):
    env = start_op_envoy(oidc_provider, echo, tmp_path_factory.mktemp("envoy-op"))
    yield env
    env.stop()


@pytest.fixture
def envoy(main_envoy, dump_on_failure):
    if not main_envoy.alive():
        pytest.fail("envoy died:\n" + main_envoy.log_text()[-4000:], pytrace=False)
    dump_on_failure(main_envoy)
    return main_envoy


@pytest.fixture
def own_envoy(wasm, oidc_provider, echo, tmp_path, dump_on_failure):
    started = []

    def start(issuer=None, envoy_env=None, **introspection):
        env = start_op_envoy(oidc_provider, echo, tmp_path / ("envoy%d" % len(started)), issuer, envoy_env,
                             **introspection)
        started.append(env)
        dump_on_failure(env)
        return env

    yield start
    for env in started:
        env.stop()


# --------------------------------------------------------------------------
# the provider itself, without Envoy
# --------------------------------------------------------------------------

def test_provider_discovery_names_introspection_and_revocation(oidc_provider):
    d = oidc_provider.discovery()
    assert d["issuer"] == oidc_provider.issuer
    assert d["introspection_endpoint"] == oidc_provider.issuer + "/token/introspection"
    assert d["revocation_endpoint"] == oidc_provider.issuer + "/token/revocation"
    assert "client_credentials" in d["grant_types_supported"]


def test_provider_issues_opaque_tokens_that_pep_introspects(oidc_provider):
    op = oidc_provider
    r = op.token_response("read write")
    assert r.status_code == 200, r.text
    issued = r.json()
    tok = issued["access_token"]
    assert not is_jwt_shaped(tok) and "." not in tok, tok
    assert issued["token_type"] == "Bearer" and issued["scope"] == "read write"

    now = int(time.time())
    basic = op.introspect(tok, PEP, "client_secret_basic")
    assert basic["active"] is True
    assert basic["scope"] == "read write"
    assert basic["client_id"] == "app"
    assert basic["iss"] == op.issuer
    assert basic["token_type"] == "Bearer"
    assert now - 5 <= basic["exp"] - issued["expires_in"] <= now + 5, (basic, issued, now)
    assert "aud" not in basic and "sub" not in basic, basic

    post = op.introspect(tok, PEP_POST, "client_secret_post")
    assert post == basic


def test_provider_insists_on_the_registered_client_auth_method(oidc_provider):
    """What makes the filter's client_secret_post test able to fail."""
    op = oidc_provider
    tok = op.token("read")
    assert op.introspect_response(tok, PEP_POST, "client_secret_basic").status_code == 401
    assert op.introspect_response(tok, PEP, "client_secret_post").status_code == 401
    assert op.introspect_response(tok, (PEP[0], WRONG_SECRET)).status_code == 401
    assert op.introspect(tok, PEP)["active"] is True


@pytest.mark.parametrize("kid", ["pep-jwt-es256", "pep-jwt-eddsa"])
def test_provider_takes_each_client_assertion_once(oidc_provider, kid):
    """What the filter's private_key_jwt must do: oidc-provider accepts an
    assertion for the endpoint's URL or the issuer, and refuses an assertion
    (a jti) it has seen, so the filter cannot reuse one across callouts."""
    op = oidc_provider
    tok = op.token("read")
    once = op.client_assertion(kid)
    r = op.introspect_response(tok, PEP_JWT, "private_key_jwt", assertion=once)
    assert r.status_code == 200 and r.json()["active"] is True, r.text
    again = op.introspect_response(tok, PEP_JWT, "private_key_jwt", assertion=once)
    assert again.status_code == 401, again.text
    assert again.json()["error"] == "invalid_client", again.text
    # Same key, a new jti: accepted.
    fresh = op.introspect_response(tok, PEP_JWT, "private_key_jwt", assertion=op.client_assertion(kid))
    assert fresh.status_code == 200, fresh.text
    assert op.introspect_response(tok, PEP_JWT, "private_key_jwt",
                                  assertion=op.client_assertion(kid, aud=op.issuer)).status_code == 200
    assert op.introspect_response(tok, PEP_JWT, "private_key_jwt",
                                  assertion=op.client_assertion(kid, aud=op.url("/elsewhere"))).status_code == 401
    # A secret is no way in for pep-jwt (registered private_key_jwt).
    assert op.introspect_response(tok, ("pep-jwt", "guess"), "client_secret_basic").status_code == 401
    seen = [c for c in op.calls("introspection", tok) if c["client"] == "pep-jwt"]
    assert [(c["auth"], c["status"]) for c in seen] == \
        [("private_key_jwt", s) for s in (200, 401, 200, 200, 401)] + [("client_secret_basic", 401)], seen


def test_provider_revocation_makes_the_token_inactive(oidc_provider):
    op = oidc_provider
    tok = op.token("read")
    assert op.introspect(tok)["active"] is True
    op.revoke(tok)
    assert op.introspect(tok) == {"active": False}
    assert op.introspect(junk_token()) == {"active": False}


def test_provider_scope_subset(oidc_provider):
    tok = oidc_provider.token("write")
    assert oidc_provider.introspect(tok)["scope"] == "write"


# --------------------------------------------------------------------------
# through Envoy
# --------------------------------------------------------------------------

def test_opaque_token_with_read_scope_reaches_upstream_with_identity(envoy, oidc_provider):
    op = oidc_provider
    tok = op.token("read write")
    r = envoy.get("/read", token=tok)
    h = upstream_headers(r)
    assert h.get("x-oauth-client-id") == "app", h
    assert h.get("x-authenticated-scope", "").split(",") == ["read", "write"], h
    assert h.get("x-oauth-expiration") == str(op.introspect(tok, APP)["exp"]), h
    assert tok not in envoy.log_text()

    calls = filter_calls(op, tok)
    assert calls, op.calls("introspection", tok)
    assert {(c["auth"], c["hint"], c["status"], c["active"]) for c in calls} == \
        {("client_secret_basic", "access_token", 200, "true")}, calls


def test_opaque_token_without_read_scope_is_403(envoy, oidc_provider):
    tok = oidc_provider.token("write")
    r = envoy.get("/read", token=tok)
    body = denial(r, 403, "insufficient_scope")
    params = harness.bearer_params(r.headers.get("www-authenticate"))
    assert params and params["error"] == "insufficient_scope" and params["scope"] == "read", \
        (r.headers.get("www-authenticate"), body)
    assert filter_calls(oidc_provider, tok), "the scope came from an introspection"


def test_revoked_token_is_401_token_inactive_once_the_cache_ttl_passed(envoy, oidc_provider):
    op = oidc_provider
    tok = op.token("read")
    upstream_headers(envoy.get("/read", token=tok))
    op.revoke(tok)
    revoked_at = time.monotonic()

    # max_ttl_seconds is 1: the cached active answer may serve for one more
    # second, then the filter asks again and learns the token is inactive.
    time.sleep(1.2)
    last = {}

    def inactive():
        last["r"] = envoy.get("/read", token=tok)
        return last["r"].status_code != 200

    harness.wait_until(inactive, 5, interval=0.2, what="the revoked token to be refused")
    r = last["r"]
    assert time.monotonic() - revoked_at < 6.5
    denial(r, 401, "token_inactive")
    params = harness.bearer_params(r.headers.get("www-authenticate"))
    assert params and params["realm"] == REALM and params["error"] == "invalid_token", \
        r.headers.get("www-authenticate")
    actives = [c["active"] for c in filter_calls(op, tok)]
    assert actives[0] == "true" and actives[-1] == "false", actives


def test_garbage_token_is_401_token_inactive(envoy, oidc_provider):
    tok = junk_token()
    before = harness.wasm_stats(envoy)
    r = envoy.get("/read", token=tok)
    denial(r, 401, "token_inactive")
    params = harness.bearer_params(r.headers.get("www-authenticate"))
    assert params and params["error"] == "invalid_token", r.headers.get("www-authenticate")
    calls = filter_calls(oidc_provider, tok)
    assert [(c["status"], c["active"]) for c in calls] == [(200, "false")], calls
    after = harness.wasm_stats(envoy)
    key = "oauth_pep.introspections.issuer.%s.result.inactive" % harness.label(oidc_provider.issuer)
    assert after.get(key, 0) - before.get(key, 0) == 1, {k: v for k, v in after.items() if "introspect" in k}


def test_client_secret_post_with_pep_post(own_envoy, oidc_provider):
    op = oidc_provider
    env = own_envoy(client_id=PEP_POST[0], client_secret=PEP_POST[1], auth_method="client_secret_post")
    tok = op.token("read")
    h = upstream_headers(env.get("/read", token=tok))
    assert h.get("x-oauth-client-id") == "app", h
    assert h.get("x-authenticated-scope") == "read", h
    calls = filter_calls(op, tok, client=PEP_POST[0])
    assert calls and all((c["auth"], c["status"], c["active"]) == ("client_secret_post", 200, "true")
                         for c in calls), calls


def test_wrong_introspection_secret_is_503_introspection_unavailable(own_envoy, oidc_provider):
    op = oidc_provider
    env = own_envoy(client_secret=WRONG_SECRET)
    tok = op.token("read")
    before = harness.wasm_stats(env)
    r = env.get("/read", token=tok)
    body = denial(r, 503, "introspection_unavailable")
    assert WRONG_SECRET not in r.text and WRONG_SECRET not in json.dumps(dict(r.headers)), r.text

    calls = filter_calls(op, tok)
    assert calls and all(c["status"] == 401 for c in calls), calls
    # nothing cached: the next request asks again
    denial(env.get("/read", token=tok), 503, "introspection_unavailable")
    assert len(filter_calls(op, tok)) == len(calls) + 1, filter_calls(op, tok)

    after = harness.wasm_stats(env)
    key = "oauth_pep.introspections.issuer.%s.result.failed" % harness.label(op.issuer)
    assert after.get(key, 0) - before.get(key, 0) == 2, {k: v for k, v in after.items() if "introspect" in k}
    assert after.get("oauth_pep.denied.reason.introspection_unavailable", 0) - \
        before.get("oauth_pep.denied.reason.introspection_unavailable", 0) == 2

    log = harness.wait_until(lambda: [ln for ln in env.log_text().splitlines()
                                      if "denied status=503 reason=introspection_unavailable" in ln
                                      and body["request_id"] in ln], 5, what="the denial's log line")
    assert "issuer=" + op.issuer in log[0], log[0]
    assert WRONG_SECRET not in env.log_text()


def test_audience_list_refuses_tokens_without_aud(own_envoy, oidc_provider):
    """oidc-provider's introspection answers carry no `aud` (no resource
    indicator): an issuer with an audience list refuses them, as it would a
    JWT without `aud`; hence "any" above."""
    op = oidc_provider
    env = own_envoy(issuer={"audiences": ["api"]})
    tok = op.token("read")
    assert "aud" not in op.introspect(tok, APP)
    r = env.get("/read", token=tok)
    denial(r, 401, "audience_mismatch")
    assert [c["active"] for c in filter_calls(op, tok)] == ["true"]


def private_key_settings(kid):
    """The filter's introspection settings for pep-jwt with its key `kid`."""
    return {"client_id": PEP_JWT[0], "client_secret": None, "auth_method": "private_key_jwt",
            "private_key": PEP_JWT_KEYS[kid]}


@pytest.mark.parametrize("kid", ["pep-jwt-es256", "pep-jwt-eddsa"])
def test_private_key_jwt_with_pep_jwt(own_envoy, oidc_provider, kid):
    """Every callout carries a fresh assertion: two tokens, two callouts,
    both accepted, with different jtis (oidc-provider refuses a reused one)."""
    op = oidc_provider
    jwk = PEP_JWT_KEYS[kid]
    env = own_envoy(**private_key_settings(kid))
    first, second = op.token("read"), op.token("read write")
    for tok, scope in ((first, "read"), (second, "read,write")):
        h = upstream_headers(env.get("/read", token=tok))
        assert h.get("x-oauth-client-id") == "app", h
        assert h.get("x-authenticated-scope") == scope, h
    calls = filter_calls(op, first, client=PEP_JWT[0]) + filter_calls(op, second, client=PEP_JWT[0])
    assert [(c["auth"], c["status"], c["active"]) for c in calls] == [("private_key_jwt", 200, "true")] * 2, calls
    jtis = [c["jti"] for c in calls]
    assert len(set(jtis)) == 2 and all(re.fullmatch(r"[0-9a-f]{32}", j) for j in jtis), jtis
    # Cached: the same token again makes no callout.
    upstream_headers(env.get("/read", token=first))
    assert len(filter_calls(op, first, client=PEP_JWT[0])) == 1
    assert jwk["d"] not in env.log_text()


def test_private_key_jwt_key_from_the_environment(own_envoy, oidc_provider):
    op = oidc_provider
    settings = dict(private_key_settings("pep-jwt-eddsa"), private_key=None, private_key_env="PEP_JWT_KEY")
    env = own_envoy(envoy_env={"PEP_JWT_KEY": json.dumps(PEP_JWT_KEYS["pep-jwt-eddsa"])}, **settings)
    tok = op.token("read")
    upstream_headers(env.get("/read", token=tok))
    assert [(c["auth"], c["status"]) for c in filter_calls(op, tok, client=PEP_JWT[0])] == \
        [("private_key_jwt", 200)]


def test_private_key_jwt_with_a_key_the_provider_does_not_know_is_503(own_envoy, oidc_provider):
    """pep-jwt signing with another (valid) key: the provider refuses the
    assertion, the filter says introspection_unavailable and never leaks its key."""
    from cryptography.hazmat.primitives.asymmetric import ec
    import jwt as pyjwt

    op = oidc_provider
    other = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1())))
    env = own_envoy(**dict(private_key_settings("pep-jwt-es256"), private_key=other))
    tok = op.token("read")
    r = env.get("/read", token=tok)
    denial(r, 503, "introspection_unavailable")
    assert [c["status"] for c in filter_calls(op, tok, client=PEP_JWT[0])] == [401]
    assert other["d"] not in env.log_text() and other["d"] not in r.text
