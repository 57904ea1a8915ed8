"""Upstream OAuth (seed 003) through a real Envoy: the gateway gets its own
token by client credentials, caches it, renews it ahead of expiry (once for
all workers), and sends it upstream on the paths a rule names, after the
client's token was checked; the client's credential is replaced, kept or
moved; forged copies of the gateway's headers are stripped; a token
endpoint that fails is a 503 until it works again.

The token endpoint is tests/authserver.py's /token (faults and expires_in
from /_test/token); what the upstream received is what tests/echo.py echoes.
"""

import base64
import json
import time

import pytest

import harness

GATEWAY = ("gateway", "gateway-secret", "billing.read billing.write")
# This module's authorization server has the gateway's client too (conftest's authserver_module).
AUTHSERVER_CLIENTS = dict(harness.DEFAULT_CLIENTS, **{GATEWAY[0]: (GATEWAY[1], GATEWAY[2])})


def client(a, **over):
    return harness._overridden({"issuer": a.issuer, "client_id": GATEWAY[0], "client_secret": GATEWAY[1],
                                "scopes": ["billing.read"]}, over)


# A rule must say where its token may go; these tests' rules go to the
# harness's one virtual host (named "all") unless they say otherwise.
DESTINATIONS = ("authorities", "virtual_hosts", "routes", "clusters")


def config(a, rules, clients=None, **top):
    rules = [r if any(k in r for k in DESTINATIONS) else dict(r, virtual_hosts=["all"]) for r in rules]
    cfg = {"realm": "upstream-oauth-test", "issuers": [a.issuer_config()],
           "clients": clients or {"billing": client(a)}, "upstream_oauth": rules}
    cfg.update(top)
    return cfg


def claims_of(bearer):
    """The claims of the JWT in an `Authorization: Bearer` value."""
    assert bearer and bearer.startswith("Bearer "), bearer
    payload = bearer[len("Bearer "):].split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def upstream(r):
    assert r.status == 200, r
    return r.json()["headers"]


def send(env, path, token=None, headers=()):
    return harness.send_raw(env, path, headers, token)


def started(factory, a, cfg, **kw):
    env = factory(cfg, **kw)
    env.wait_status("/", 200, token=a.token(), timeout=20)
    return env


def test_the_upstream_gets_the_gateways_token_and_the_client_token_is_checked_first(start_envoy, authserver):
    a = authserver
    rule = {"client": "billing", "paths": ["/billing/??"], "client_credential": "move",
            "move_to": "x-client-authorization"}
    env = started(start_envoy, a, config(a, [rule]))
    token = a.token()

    h = upstream(send(env, "/billing/invoices/7", token=token))
    gateway = claims_of(h.get("authorization"))
    assert gateway["client_id"] == GATEWAY[0] and gateway["scope"] == "billing.read", gateway
    assert gateway["iss"] == a.issuer
    # The client's own credential, moved, exactly as it came.
    assert h.get("x-client-authorization") == "Bearer " + token, h
    # The identity headers still describe the client.
    assert h.get("x-oauth-client-id") == "demo-client", h

    # The token request, as the server received it.
    req = a.last_token_request(GATEWAY[0])
    assert req["client_id"] == GATEWAY[0], req
    assert req["headers"]["authorization"].startswith("Basic "), req
    assert req["form"] == {"grant_type": "client_credentials", "scope": "billing.read"}, req

    # Outside the rule: the client's token goes on untouched, no gateway token.
    h = upstream(send(env, "/orders/1", token=token))
    assert h.get("authorization") == "Bearer " + token, h
    assert "x-client-authorization" not in h, h

    # The client's token is still required on the rule's paths.
    r = send(env, "/billing/invoices/7")
    assert r.status == 401 and r.json()["reason"] == "token_missing", r
    r = send(env, "/billing/invoices/7", token=token[:-4] + "AAAA")
    assert r.status == 401, r


def test_the_token_is_cached_and_renewed_ahead_of_expiry_once_for_all_workers(start_envoy, authserver):
    a = authserver
    # Usable until 5 s before expiry (3 s), renewed then (halfway would be 4 s);
    # the timing itself is tested in the core (token_client.rs) with injected time.
    a.set_token_mode("ok", expires_in=8)
    env = started(start_envoy, a, config(a, [{"client": "billing"}]), concurrency=2)
    token = a.token()
    first = claims_of(upstream(send(env, "/a", token=token)).get("authorization"))
    calls = a.token_calls()
    for _ in range(10):
        again = claims_of(upstream(send(env, "/a", token=token)).get("authorization"))
        assert again["jti"] == first["jti"], "the cached token is sent"
    assert a.token_calls() == calls, "no token request while the token is fresh"

    time.sleep(3.5)
    renewed = claims_of(upstream(send(env, "/b", token=token)).get("authorization"))
    assert renewed["jti"] != first["jti"], "renewed before it could expire"
    assert renewed["exp"] > first["exp"]
    # One renewal for both workers (plus the request that minted the client's token).
    assert a.token_calls() - calls <= 2, a.token_calls() - calls
    for _ in range(8):
        sent = claims_of(upstream(send(env, "/c", token=token)).get("authorization"))
        # Never a token within the 5 s margin of its expiry.
        assert sent["exp"] - time.time() > 4, sent


def test_the_token_endpoint_down_is_a_503_and_it_recovers(start_envoy, authserver):
    a = authserver
    token = a.token()  # before the grant breaks
    a.set_token_mode("error500")
    env = start_envoy(config(a, [{"client": "billing", "paths": ["/billing/??"]}]),
                      customize=harness.with_stats_tags)
    # Paths without the rule are not affected.
    env.wait_status("/other", 200, token=token, timeout=20)
    r = send(env, "/billing/x", token=token)
    assert r.status == 503, r
    body = r.json()
    assert body["reason"] == "client_token_unavailable" and body["error"] == "temporarily_unavailable", body
    assert "www-authenticate" not in r.headers and int(r.headers.get("retry-after", "0")) > 0, r
    assert GATEWAY[1] not in r.body.decode(), "no secret in the answer"

    a.set_token_mode("garbage")
    assert send(env, "/billing/x", token=token).status == 503
    a.set_token_mode("ok")
    env.wait_status("/billing/x", 200, token=token, timeout=25)
    # The failures and the success, as Prometheus labels (envoy/demo.yaml's stats_tags).
    p = env.prometheus()
    assert p.get(("oauth_pep_client_tokens", (("client", "billing"), ("outcome", "ok")))) == 1, p
    assert p.get(("oauth_pep_client_tokens", (("client", "billing"), ("outcome", "failed")))) >= 1, p
    assert p.get(("oauth_pep_denied", (("reason", "client_token_unavailable"),))) >= 2, p
    assert p.get(("oauth_pep_callouts", (("kind", "token"), ("outcome", "ok")))) == 1, p
    assert claims_of(upstream(send(env, "/billing/x", token=token)).get("authorization"))["client_id"] == GATEWAY[0]
    log = env.log_text()
    assert "client_token_unavailable" in log and "token request for client billing" in log
    assert GATEWAY[1] not in log, "the secret is never logged"


def test_forged_gateway_headers_are_stripped_and_keep_leaves_the_client_token(start_envoy, authserver):
    a = authserver
    rule = {"client": "billing", "paths": ["/billing/??"], "header": "x-gateway-token",
            "client_credential": "keep"}
    env = started(start_envoy, a, config(a, [rule]))
    token = a.token()
    forged = [("X-Gateway-Token", "Bearer forged"), ("x_gateway_token", "Bearer forged2")]

    h = upstream(send(env, "/billing/1", token=token, headers=forged))
    assert h.get("authorization") == "Bearer " + token, "kept"
    assert claims_of(h.get("x-gateway-token"))["client_id"] == GATEWAY[0], h
    assert "forged" not in json.dumps(h), h
    # Outside the rule the forgeries are stripped too, in every spelling.
    h = upstream(send(env, "/orders", token=token, headers=forged))
    assert not any(k.replace("_", "-") == "x-gateway-token" for k in h), h


def test_replace_hides_a_query_token_and_sets_the_gateway_token(start_envoy, authserver):
    a = authserver
    top = {"token_sources": [{"header": "authorization", "prefix": "Bearer"}, {"query": "access_token"}]}
    env = started(start_envoy, a, config(a, [{"client": "billing"}], **top))
    token = a.token()
    r = send(env, "/billing?access_token=%s&x=1" % token)
    h = upstream(r)
    assert claims_of(h.get("authorization"))["client_id"] == GATEWAY[0]
    assert r.json()["path"] == "/billing?x=1", r.json()


@pytest.mark.parametrize("rules,clients,field", [
    ([{"client": "nope"}], None, "upstream_oauth[0].client"),
    ([{"client": "billing", "client_credential": "keep"}], None, "upstream_oauth[0].client_credential"),
    ([{"client": "billing", "client_credential": "move"}], None, "upstream_oauth[0].move_to"),
    ([{"client": "billing", "header": "host"}], None, "upstream_oauth[0].header"),
    ([{"client": "billing"}], {"billing": {"client_id": "x", "client_secret": "y"}}, "clients.billing.token_endpoint"),
    ([{"client": "billing"}], {"bad.name": {"token_endpoint": "http://a/t", "upstream": "a", "client_id": "x",
                                            "client_secret": "y"}}, "clients.bad.name"),
])
def test_bad_settings_are_refused_with_the_field_named(envoy_failure, authserver, rules, clients, field):
    a = authserver
    f = envoy_failure(config(a, rules, clients=clients))
    assert not f.became_ready, f.log[-3000:]
    assert field in f.log, f.log[-3000:]


def test_interop_oidc_provider_client_credentials(start_envoy, authserver, oidc_provider):
    """The token manager against the certified oidc-provider: its token
    endpoint (from discovery), client_secret_basic, an opaque token that
    oidc-provider itself says is active for the gateway's client."""
    a, op = authserver, oidc_provider
    issuer = {"issuer": op.issuer, "discovery": True, "upstream": "oidc", "audiences": "any"}
    cfg = {"realm": "interop", "issuers": [a.issuer_config(), issuer],
           "clients": {"op": {"issuer": op.issuer, "client_id": "app", "client_secret": "app-secret",
                              "scopes": ["read"]}},
           "upstream_oauth": [{"client": "op", "virtual_hosts": ["all"]}]}
    env = start_envoy(cfg, clusters={"oidc": op.port})
    token = a.token()
    r = env.wait_status("/x", 200, token=token, timeout=25)
    sent = r.json()["headers"]["authorization"]
    assert sent.startswith("Bearer "), sent
    answer = op.introspect(sent[len("Bearer "):])
    assert answer["active"] is True and answer["client_id"] == "app", answer
    assert answer["scope"] == "read", answer


def test_client_secret_post_and_a_secret_from_the_environment(start_envoy, authserver):
    a = authserver
    c = client(a, auth_method="client_secret_post", client_secret=None,
               client_secret_env="OAUTH_PEP_TEST_GATEWAY_SECRET")
    env = started(start_envoy, a, config(a, [{"client": "billing"}], clients={"billing": c}),
                  env={"OAUTH_PEP_TEST_GATEWAY_SECRET": GATEWAY[1]},
                  host_env_keys=["OAUTH_PEP_TEST_GATEWAY_SECRET"])
    h = upstream(send(env, "/x", token=a.token()))
    assert claims_of(h.get("authorization"))["client_id"] == GATEWAY[0]
    req = a.last_token_request(GATEWAY[0])
    assert "authorization" not in req["headers"], req
    assert req["form"] == {"grant_type": "client_credentials", "scope": "billing.read",
                           "client_id": GATEWAY[0]}, req
    time.sleep(0.3)
    assert GATEWAY[1] not in env.log_text()
