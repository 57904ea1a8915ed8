"""The second attacker's review (issue 18), through real Envoy: PDP decisions
and consumers across issuers (finding 3), PS* for RSA keys without `alg`
(finding 6), and several filter configurations in one Envoy ("Also").

Each test fails on the filter before the fix (OAUTH_PEP_WASM=<old build>).
"""

import base64
import copy
import json
import os
import socket
import threading
import time

import pytest
import requests

import harness

# The resource server's client at the authorization server (conftest's authserver_module).
RS = ("resource-server", "rs-secret", "uma_protection")
AUTHSERVER_CLIENTS = dict(harness.DEFAULT_CLIENTS, **{RS[0]: (RS[1], RS[2])})

# A second trusted issuer: HS256 with an inline secret, so tokens of it are minted here.
ISSUER_B = "https://b.example"
SECRET_B = "b-secret-0123456789abcdef0123456789"


def issuer_b():
    return {"issuer": ISSUER_B, "audiences": ["api"], "shared_secret": SECRET_B}


def token_b(a, **claims):
    """A token of issuer B, minted with the claims of `a`'s users."""
    return a.mint(dict(a.claims(**claims), iss=ISSUER_B), alg="HS256", secret=SECRET_B)


# --------------------------------------------------------------------------
# Finding 3: PDP decisions and consumers across issuers and claims
# --------------------------------------------------------------------------

def set_pdp_requirements(pdp, claims):
    requests.post("http://127.0.0.1:%d/_test/require" % pdp.port, json={"claims": claims},
                  timeout=5).raise_for_status()


@pytest.fixture
def pdp_requiring(fake_pdp):
    """fake_pdp permitting /pdp/allow... only for the claims given."""
    def require(**claims):
        set_pdp_requirements(fake_pdp, claims)
    yield require
    set_pdp_requirements(fake_pdp, {})


def test_a_pdp_decision_is_reused_only_for_what_the_pdp_was_asked(start_envoy, authserver, fake_pdp,
                                                                    pdp_requiring):
    """The cache was keyed on [sub, client_id, method, path, scopes]: a token
    of issuer B with issuer A's user's `sub` and client got A's cached permit,
    the user without MFA got the MFA decision, and a cached deny blocked the
    user's good token. Now the key is the digest of the exact body sent."""
    a = authserver
    pdp_requiring(iss=a.issuer, acr="mfa")
    cfg = {"realm": "test", "issuers": [a.issuer_config(), issuer_b()],
           "policy": {"GET /pdp/??": "read"},
           "pdp": {"kind": "authzen", "upstream": "pdp", "cache_seconds": 60,
                   "url": "http://127.0.0.1:%d/access/v1/evaluation" % fake_pdp.port}}
    env = start_envoy(cfg, clusters={"pdp": fake_pdp.port})
    user = dict(sub="alice", client_id="demo-client", scope="read")
    mfa = a.mint(a.claims(acr="mfa", **user))
    env.wait_status("/pdp/allow/warm-up", 200, token=mfa, timeout=20)

    def ask(path, token, status, asked):
        before = fake_pdp.stats()["calls"]
        r = env.get(path, token=token)
        calls = fake_pdp.stats()["calls"] - before
        assert (r.status_code, calls) == (status, int(asked)), (path, r.status_code, calls, r.text)

    ask("/pdp/allow/a", mfa, 200, asked=True)
    ask("/pdp/allow/a", mfa, 200, asked=False)  # the same question: the cached permit
    # Issuer B's token for A's user and client: asked, and denied.
    ask("/pdp/allow/a", token_b(a, acr="mfa", **user), 403, asked=True)
    assert fake_pdp.stats()["last"]["subject"]["properties"]["iss"] == ISSUER_B
    # The same user without MFA: asked, and denied.
    ask("/pdp/allow/a", a.mint(a.claims(acr="pwd", **user)), 403, asked=True)
    # A deny cached first (B's) does not block A's good token.
    ask("/pdp/allow/b", token_b(a, acr="mfa", **user), 403, asked=True)
    ask("/pdp/allow/b", mfa, 200, asked=True)
    ask("/pdp/allow/b", mfa, 200, asked=False)


def test_a_consumer_is_a_client_of_its_own_issuer(start_envoy, envoy_failure, authserver):
    """Consumers were keyed by client_id alone: a token of issuer B naming
    client `demo-client` got the consumer registered for issuer A's
    `demo-client`. With two issuers each consumer names its issuer, or the
    configuration is refused."""
    a = authserver
    issuers = [a.issuer_config(), issuer_b()]
    res = envoy_failure({"realm": "test", "issuers": issuers,
                         "consumers": {"demo-client": {"id": "c-a"}}}, timeout=20)
    assert not res.became_ready, (res, res.log[-3000:])
    assert 'invalid configuration: `consumers["demo-client"].issuer`: is required when several issuers' \
        in res.log, res.log[-3000:]

    env = start_envoy({"realm": "test", "issuers": issuers,
                       "consumers": {"demo-client": {"id": "c-a", "issuer": a.issuer}}})
    r = env.wait_status("/x", 200, token=a.mint(a.claims()), timeout=20)
    assert r.json()["headers"].get("x-consumer-id") == "c-a", r.json()["headers"]
    r = env.get("/x", token=token_b(a))
    assert r.status_code == 401 and r.json()["reason"] == "client_unknown", r.text


# --------------------------------------------------------------------------
# Finding 6: PS* is not the default for an RSA key without `alg`
# --------------------------------------------------------------------------

def publish_alg_less(a, kid, key="rsa2"):
    """Publishes `key` under `kid` in a's JWKS without an `alg` member."""
    a.http.post(a.url("/_test/rotate"), json={"add": key, "kid": kid, "alg": None},
                timeout=10).raise_for_status()
    jwk = next(k for k in a.jwks()["keys"] if k.get("kid") == kid)
    assert "alg" not in jwk, jwk


def test_ps512_with_an_rsa_key_without_alg_needs_the_issuer_to_list_it(start_envoy, authserver):
    """A PS* signature is checked in wasm (Envoy's verify_signature has no
    PSS), so an RSA key without `alg` let a caller pick PS512, ~5x RS256's
    cost per rejected forgery. By default such a key verifies RS* only: the
    PS512 token is refused before any signature work (and without an
    unknown-kid refetch: the kid is known); listing PS512 enables it."""
    a = authserver
    publish_alg_less(a, "rsa2-noalg")
    rs256 = a.mint(a.claims(), alg="RS256", kid="rsa2-noalg")
    ps512 = a.mint(a.claims(), alg="PS512", kid="rsa2-noalg")

    env = start_envoy({"realm": "test", "issuers": [a.issuer_config()]})
    env.wait_status("/", 200, token=rs256, timeout=20)
    fetches = a.stats()["jwks"]
    r = env.get("/", token=ps512)
    assert r.status_code == 401, r.text
    body = r.json()
    assert body["reason"] == "algorithm_not_allowed", body
    assert 'the key with kid "rsa2-noalg" does not verify PS512' in body["error_description"], body
    # A forged PS512 signature costs the same: no signature is checked.
    head, payload, _ = ps512.split(".")
    forged = "%s.%s.%s" % (head, payload, base64.urlsafe_b64encode(os.urandom(256)).rstrip(b"=").decode())
    r = env.get("/", token=forged)
    assert r.status_code == 401 and r.json()["reason"] == "algorithm_not_allowed", r.text
    assert a.stats()["jwks"] == fetches, "a known kid is no rotation: no refetch"
    # A key that declares PS256 keeps it by default.
    r = env.get("/", token=a.mint(a.claims(), alg="PS256", kid="rsa1-ps"))
    assert r.status_code == 200, r.text

    # Listed for the issuer, PS512 is served by the key without `alg`.
    listed = start_envoy({"realm": "test", "issuers": [a.issuer_config(algorithms=["RS256", "PS512"])]})
    listed.wait_status("/", 200, token=rs256, timeout=20)
    r = listed.get("/", token=ps512)
    assert r.status_code == 200, r.text


# --------------------------------------------------------------------------
# Also: several filter configurations in one Envoy
# --------------------------------------------------------------------------

def second_listener(filter_config, port):
    """`customize` for harness.bootstrap: a second listener on `port`, a copy
    of the first whose wasm filter has `filter_config` (same VM, so the same
    shared data)."""
    def edit(b):
        first = b["static_resources"]["listeners"][0]
        second = copy.deepcopy(first)
        second["name"] = "second"
        second["address"]["socket_address"]["port_value"] = port
        hcm = second["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = "second"
        wasm = hcm["http_filters"][0]["typed_config"]["config"]
        wasm["name"] = "oauth-pep-second"
        wasm["configuration"]["value"] = json.dumps(filter_config)
        b["static_resources"]["listeners"].append(second)
    return edit


class Second:
    """Requests to the second listener."""

    def __init__(self, port):
        self.base = "http://127.0.0.1:%d" % port
        self.http = requests.Session()

    def get(self, path, token=None, timeout=15):
        headers = {"authorization": "Bearer " + token} if token else {}
        return self.http.get(self.base + path, headers=headers, timeout=timeout)

    def wait_status(self, path, status, token=None, timeout=20):
        last = {}

        def ok():
            last["r"] = self.get(path, token)
            return last["r"].status_code == status

        try:
            harness.wait_until(ok, timeout, interval=0.1, what="second listener %s -> %d" % (path, status))
        except TimeoutError:
            r = last.get("r")
            raise AssertionError("second listener: %s %s" % (getattr(r, "status_code", None),
                                                             getattr(r, "text", "")[:500]))
        return last["r"]


def two_configs(start_envoy, first, second, **kw):
    port = harness.free_port()
    env = start_envoy(first, customize=second_listener(second, port), **kw)
    return env, Second(port)


def test_two_configs_with_the_same_issuer_and_other_servers_keep_their_own_keys(
        start_envoy, authserver, tmp_path):
    """Keys in shared data were named by issuer and key URL: a listener that
    fetches the same issuer (same discovery URL) through another cluster took
    the other listener's keys, so each accepted the other server's tokens."""
    a = authserver
    (tmp_path / "as-b").mkdir()
    b = harness.AuthServer.start(tmp_path / "as-b", issuer=a.issuer)
    try:
        b.rotate(add="rsa2", kid="rsa2", alg="RS256")
        b.rotate(remove="rsa1")
        via_b = {"realm": "test", "issuers": [a.issuer_config(upstream="as-b")]}
        env, second = two_configs(start_envoy, {"realm": "test", "issuers": [a.issuer_config()]}, via_b,
                                  clusters={"as-b": b.port})
        of_a = a.mint(a.claims(), kid="rsa1")
        of_b = b.mint(b.claims(), kid="rsa2")
        assert b.claims()["iss"] == a.issuer
        # Each listener's own server's token passes (its keys are loaded).
        # Shared keys are adopted when fetched in a later second than one's
        # own, and on the next tick (200 ms): the pauses let that happen.
        env.wait_status("/", 200, token=of_a, timeout=20)
        time.sleep(1.1)
        second.wait_status("/", 200, token=of_b, timeout=20)
        time.sleep(0.5)
        r = second.get("/", token=of_a)
        assert r.status_code == 401, ("listener B took listener A's keys", r.text)
        time.sleep(0.5)
        r = env.get("/", token=of_b)
        assert r.status_code == 401, ("listener A took listener B's keys", r.text)
        assert env.get("/", token=of_a).status_code == 200
        assert second.get("/", token=of_b).status_code == 200
        assert a.stats()["jwks"] >= 1 and b.stats()["jwks"] >= 1, (a.stats(), b.stats())
    finally:
        b.stop()


def test_two_configs_with_one_client_name_and_other_credentials_keep_their_own_tokens(start_envoy, authserver):
    """Client tokens in shared data were named by endpoint, client_id and
    scope: a listener whose client has other credentials (here a wrong
    secret) used the other listener's token. Here the token is UMA's PAT: with
    the first listener's PAT the second one got permission tickets it should
    not have been able to ask for."""
    a = authserver
    a.uma(resources={"photos": ["view"]})

    def cfg(secret):
        issuer = {"issuer": a.issuer, "discovery": "uma2-configuration", "upstream": "authserver",
                  "audiences": ["api"]}
        return {"realm": "test", "issuers": [issuer],
                "clients": {"pat": {"issuer": a.issuer, "client_id": RS[0], "client_secret": secret,
                                    "scopes": ["uma_protection"]}},
                "uma": {"issuer": a.issuer, "client": "pat",
                        "resources": [{"resource_id": "photos", "policy": {"GET /photos/??": "view"}}]}}

    env, second = two_configs(start_envoy, cfg(RS[1]), cfg("not-the-secret"))
    # The first listener fetches its PAT and asks for a ticket with it.
    r = env.wait_status("/photos/1", 401, timeout=20)
    assert r.headers["www-authenticate"].startswith("UMA "), r.headers
    r = second.get("/photos/1")
    assert r.status_code == 503, ("the second listener used the first one's PAT", r.status_code, r.text)
    assert r.json()["reason"] == "uma_unavailable", r.text


def test_two_configs_introspecting_one_token_do_not_wait_for_each_other(start_envoy, authserver):
    """Introspection entries named their configuration, the in-flight
    markers did not: a listener asking about a token waited for the other
    listener's callout (here one that never answers), then found an answer it
    cannot read and asked itself."""
    a = authserver
    hang = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)  # accepts connections, never answers
    try:
        def cfg(upstream):
            introspection = {"client_id": "pep", "client_secret": "pep-secret", "upstream": upstream,
                             "endpoint": a.url("/introspect"), "timeout_ms": 4000}
            return {"realm": "test", "issuers": [a.issuer_config(introspection=introspection)]}

        env, second = two_configs(start_envoy, cfg("hang"), cfg("authserver"),
                                  clusters={"hang": hang.getsockname()[1]})
        second.wait_status("/", 200, token=a.opaque(), timeout=20)
        token = a.opaque()
        first = {}
        t = threading.Thread(target=lambda: first.update(r=env.get("/", token=token, timeout=20)))
        t.start()
        time.sleep(0.5)  # the first listener's introspection is in flight
        started = time.monotonic()
        r = second.get("/", token=token)
        took = time.monotonic() - started
        assert r.status_code == 200, r.text
        assert took < 2.0, "the second listener waited %.1f s for the first one's callout" % took
        t.join(20)
        assert first["r"].status_code == 503, first["r"].text
    finally:
        hang.close()
