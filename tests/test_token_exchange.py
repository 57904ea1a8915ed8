"""Token exchange (RFC 8693) for upstream OAuth through a real Envoy: a rule
with `exchange` sends the upstream a token the authorization server issues
for the caller (exchanged from the caller's verified token), never the
caller's own; one exchange per caller token (per worker), cached until its
expiry; refusals are 401/403, server faults 503.

Against oidc-provider (tests/oidc/server.mjs registers the token-exchange
grant with provider.registerGrantType for its client `gw`), and against
tests/authserver.py's exchange grant for the fault matrix (/_test/exchange).
"""

import concurrent.futures
import time

import pytest

import harness
from oidc_provider import APP, PEP
from test_upstream_oauth import claims_of

pytestmark = pytest.mark.timeout(90)

GATEWAY = ("gateway", "gateway-secret", "billing.read billing.write")
# This module's authorization server has the gateway's client too (conftest's authserver_module).
AUTHSERVER_CLIENTS = dict(harness.DEFAULT_CLIENTS, **{GATEWAY[0]: (GATEWAY[1], GATEWAY[2])})
AUDIENCE = "https://backend.test"   # oidc-provider's EXCHANGE_AUDIENCE (server.mjs)


def fake_config(a, exchange=None, **rule):
    exchange = dict({"audience": AUDIENCE, "scopes": ["billing.read"]}, **(exchange or {}))
    rule = dict({"client": "backend", "authorities": ["backend.internal"], "exchange": exchange}, **rule)
    return {"realm": "exchange-test", "issuers": [a.issuer_config()],
            "clients": {"backend": {"issuer": a.issuer, "client_id": GATEWAY[0], "client_secret": GATEWAY[1],
                                    "timeout_ms": 1000}},
            "upstream_oauth": [rule]}


def send(env, token, host="backend.internal", path="/billing/1"):
    return env.get(path, token=token, headers={"Host": host})


def upstream(r):
    assert r.status_code == 200, (r.status_code, r.text[:500])
    return r.json()["headers"]


def started(factory, a, cfg, **kw):
    env = factory(cfg, **kw)
    env.wait_status("/", 200, token=a.token(), timeout=20, headers={"Host": "elsewhere.internal"})
    return env


def test_the_upstream_gets_a_token_exchanged_for_the_callers_and_never_the_callers(start_envoy, authserver):
    a = authserver
    env = started(start_envoy, a, fake_config(a, {"actor": True}))
    token = a.token()
    h = upstream(send(env, token))
    exchanged = claims_of(h.get("authorization"))
    # Issued for the caller (its sub and client), for the rule's audience and
    # scope, acting: the gateway (its own token was the actor token).
    assert exchanged["sub"] == "demo-client" and exchanged["client_id"] == "demo-client", exchanged
    assert exchanged["aud"] == AUDIENCE and exchanged["scope"] == "billing.read", exchanged
    assert exchanged["act"] == {"sub": GATEWAY[0]}, exchanged
    assert token not in " ".join(h.values()), "the caller's token never reaches the upstream"
    # The request the server received.
    form = a.exchanges()["last_request"]["form"]
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange", form
    assert form["subject_token"] == token, form
    assert form["subject_token_type"] == form["actor_token_type"] == \
        "urn:ietf:params:oauth:token-type:access_token", form
    assert form["audience"] == AUDIENCE and form["scope"] == "billing.read", form
    assert claims_of("Bearer " + form["actor_token"])["client_id"] == GATEWAY[0], form

    # Cached: the same caller token is not exchanged again.
    for _ in range(5):
        again = claims_of(upstream(send(env, token)).get("authorization"))
        assert again["jti"] == exchanged["jti"]
    assert a.exchanges()["calls"] == 1
    # Another caller token is another exchange.
    other = a.token()
    assert claims_of(upstream(send(env, other)).get("authorization"))["jti"] != exchanged["jti"]
    assert a.exchanges()["calls"] == 2
    stats = harness.wasm_stats(env)
    assert stats.get("oauth_pep.exchanges.result.issued") == 2, stats

    # Where the rule does not send its token (another authority), nothing is
    # exchanged and the caller's token goes on as it came.
    h = upstream(send(env, token, host="elsewhere.internal"))
    assert h.get("authorization") == "Bearer " + token, h
    assert a.exchanges()["calls"] == 2
    # A caller without a valid token is refused before any exchange.
    assert send(env, None).status_code == 401
    assert send(env, token[:-4] + "AAAA").status_code == 401
    assert a.exchanges()["calls"] == 2


# (authserver mode, status, reason): what the caller gets for each answer.
FAULTS = [
    ("error500", 503, "exchange_unavailable"),
    ("garbage", 503, "exchange_unavailable"),
    ("wrong_type", 503, "exchange_unavailable"),
    ("dpop", 503, "exchange_unavailable"),
    ("unauthorized_client", 503, "exchange_unavailable"),
    ("invalid_grant", 401, "exchange_refused"),
    ("invalid_request", 401, "exchange_refused"),
    ("invalid_target", 403, "exchange_forbidden"),
]


def test_server_faults_are_503_and_refusals_401_or_403_never_the_callers_token(start_envoy, authserver):
    a = authserver
    env = started(start_envoy, a, fake_config(a))
    failed = None
    for mode, status, reason in FAULTS:
        a.set_exchange_mode(mode)
        token = a.token()   # a new caller token: nothing cached for it
        failed = failed or token
        calls = a.exchanges()["calls"]
        r = send(env, token)
        assert (r.status_code, r.json()["reason"]) == (status, reason), (mode, r)
        if status == 401:
            assert 'error="invalid_token"' in r.headers.get("www-authenticate", ""), r
        if status == 503:
            assert r.headers.get("retry-after") == "5", r
        assert token not in r.text
        assert a.exchanges()["calls"] == calls + 1, mode
        # The answer is remembered for this caller token (a refusal 10 s, a
        # failure 1 s, which a loaded machine may outlast here): the next
        # request gets it without another exchange.
        assert send(env, token).status_code == status
        if status != 503:
            assert a.exchanges()["calls"] == calls + 1, mode
    stats = harness.wasm_stats(env)
    assert stats.get("oauth_pep.exchanges.result.failed") in range(5, 11), stats
    assert stats.get("oauth_pep.exchanges.result.refused") == 3, stats
    assert stats.get("oauth_pep.denied.reason.exchange_unavailable") == 10, stats
    assert stats.get("oauth_pep.denied.reason.exchange_refused") == 4, stats
    assert stats.get("oauth_pep.denied.reason.exchange_forbidden") == 2, stats

    # The server back: a failed caller token is exchanged again after its second.
    a.set_exchange_mode("ok")
    time.sleep(1.1)
    assert claims_of(upstream(send(env, failed)).get("authorization"))["client_id"] == "demo-client"


def test_a_slow_token_endpoint_is_503_by_the_deadline(start_envoy, authserver):
    a = authserver
    env = started(start_envoy, a, fake_config(a))
    a.set_exchange_mode("hang")
    token = a.token()
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: send(env, token, path="/slow"), range(4)))
    elapsed = time.monotonic() - t0
    for r in answers:
        assert r.status_code == 503 and r.json()["reason"] == "exchange_unavailable", r
    # timeout_ms 1000: the callout times out at 1 s, the waiters' deadline is 3 s.
    assert elapsed < 4.5, elapsed
    assert a.exchanges()["calls"] == 1, "the waiters shared one exchange"


def test_two_workers_exchange_a_caller_token_at_most_once_each(start_envoy, authserver):
    a = authserver
    a.set_exchange_mode("ok", delay_ms=200)
    env = started(start_envoy, a, fake_config(a), concurrency=2)
    token = a.token()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: send(env, token), range(64)))
    jtis = {claims_of(upstream(r).get("authorization"))["jti"] for r in answers}
    calls = a.exchanges()["calls"]
    # Per-worker caches (not shared: see README): one exchange per worker at most.
    assert 1 <= calls <= 2 and len(jtis) == calls, (calls, jtis)
    for _ in range(20):
        assert claims_of(upstream(send(env, token)).get("authorization"))["jti"] in jtis
    assert a.exchanges()["calls"] == calls


def test_the_exchange_budget_bounds_what_one_client_causes(start_envoy, authserver):
    a = authserver
    # One address's share: a quarter of the burst of 4, one exchange.
    env = started(start_envoy, a, fake_config(a, {"budget": {"per_second": 1, "burst": 4}}))
    tokens = [a.token() for _ in range(8)]
    answers = [send(env, t) for t in tokens]
    assert answers[0].status_code == 200, answers[0].text
    passed = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 503]
    # A second may pass during the loop and refill one.
    assert len(passed) <= 2 and len(passed) + len(refused) == 8, [r.status_code for r in answers]
    for r in refused:
        assert r.json()["reason"] == "overloaded" and r.headers.get("retry-after") == "1", r.text
    assert a.exchanges()["calls"] == len(passed)
    assert harness.wasm_stats(env).get("oauth_pep.overloaded.bound.exchange_budget") == len(refused)


def test_a_rule_with_exchange_must_not_cover_token_less_callers(envoy_failure, authserver):
    a = authserver
    cfg = fake_config(a, anonymous=True)
    failed = envoy_failure(cfg)
    assert "upstream_oauth[0].exchange" in failed.log, failed.log[-2000:]


# --- against oidc-provider ---

def op_config(op, audience=AUDIENCE, actor=True):
    return {
        "realm": "exchange-op",
        "issuers": [{"issuer": op.issuer, "audiences": "any", "discovery": True, "upstream": "op",
                     "introspection": {"client_id": PEP[0], "client_secret": PEP[1]}}],
        "clients": {"gw": {"issuer": op.issuer, "client_id": "gw", "client_secret": "gw-secret"}},
        "upstream_oauth": [
            {"client": "gw", "authorities": ["backend.internal"],
             "exchange": {"audience": audience, "scopes": ["read"], "actor": actor}},
            {"client": "gw", "authorities": ["other.internal"],
             "exchange": {"audience": "https://not-registered.test"}},
        ],
    }


def test_oidc_provider_exchanges_the_callers_token_for_the_upstream(wasm, oidc_provider, echo, tmp_path):
    op = oidc_provider
    env = harness.Envoy.start(op_config(op), tmp_path / "envoy", upstream_port=echo.port,
                              clusters={"op": op.port}, timeout=30)
    try:
        token = op.token("read write", APP)
        r = env.wait_status("/x", 200, token=token, headers={"Host": "backend.internal"}, timeout=20)
        h = r.json()["headers"]
        sent = h["authorization"]
        assert sent.startswith("Bearer ") and token not in sent, h
        # What the upstream got, as oidc-provider knows it: a token of `gw`
        # exchanged from app's, for the audience and scope, `gw` acting.
        about = op.introspect(sent[len("Bearer "):])
        assert about["active"] is True and about["client_id"] == "gw", about
        assert about["subject_client_id"] == APP[0] and about["exchanged_for"] == AUDIENCE, about
        assert about["scope"] == "read" and about["act"] == {"client_id": "gw"}, about
        assert len(op.calls("exchange", token)) == 1
        for _ in range(5):
            assert env.get("/x", token=token, headers={"Host": "backend.internal"}).json()["headers"][
                "authorization"] == sent
        assert len(op.calls("exchange", token)) == 1, "cached"
        # oidc-provider refuses the other rule's audience: 403, no token.
        r = env.get("/x", token=token, headers={"Host": "other.internal"})
        assert r.status_code == 403 and r.json()["reason"] == "exchange_forbidden", r.text
        other = op.token("read", APP)
        assert env.get("/x", token=other, headers={"Host": "backend.internal"}).status_code == 200
        assert [c["status"] for c in op.calls("exchange", other)] == [200]
    finally:
        env.stop()
