"""The filter's Envoy stats after known traffic: exact counts on the admin
/stats (full names) and /stats/prometheus (labels with the stats_tags of
envoy/demo.yaml, harness.STATS_TAGS; flat names without them)."""

import re
import time

import harness

HS_ISSUER = "https://hs.example"
HS_SECRET = "stats-test-shared-secret-0123456789abcdef"


def settled(env, auth, timeout=20):
    """Waits until the fetches the authserver received are the ones the
    filter counted (no fetch in flight), then returns both."""
    last = {}

    def same():
        a, s = auth.stats(), harness.wasm_stats(env)
        last.update(auth=a, stats=s)
        count = lambda kind, *outcomes: sum(  # noqa: E731
            s.get("oauth_pep.callouts.kind.%s.outcome.%s" % (kind, o), 0) for o in outcomes)
        # Each good discovery is followed by a JWKS callout: when as many
        # have been answered, no fetch is half done.
        return (a["discovery"] > 0 and count("discovery", "ok", "error") == a["discovery"]
                and count("jwks", "ok", "error") == a["jwks"] == count("discovery", "ok"))

    harness.wait_until(same, timeout, interval=0.2, what="filter counts == authserver counts")
    return last["auth"], last["stats"]


def hs_token(auth, **claims):
    return auth.mint(auth.claims(iss=HS_ISSUER, aud="api", **claims), alg="HS256", secret=HS_SECRET)


def test_counts_after_known_traffic(start_envoy, authserver, filter_config):
    auth = authserver
    cfg = filter_config(top={"policy": {"GET /admin": "admin", "GET /??": "read"}})
    env = start_envoy(cfg, customize=harness.with_stats_tags)
    fetched, before = settled(env, auth)
    issuer = harness.label(auth.issuer)
    loaded = harness.wait_until(lambda: [int(n) for n in re.findall(
        r"loaded (\d+) verification keys for " + re.escape(auth.issuer), env.log_text())], 10,
        what="the key count in the log")

    good = auth.mint()
    now = int(time.time())
    expired = auth.mint(auth.claims(iat=now - 900, nbf=now - 900, exp=now - 600))
    for _ in range(3):
        assert env.get("/data", token=good).status_code == 200
    assert env.get("/admin", token=good).status_code == 403          # insufficient_scope, cache hit
    assert env.get("/data").status_code == 401                       # token_missing
    for _ in range(2):
        assert env.get("/data", token=expired).status_code == 401    # token_expired, cache miss
    assert env.get("/data;x", token=good).status_code == 400         # request_invalid

    fetched, s = settled(env, auth)
    expected = {
        "oauth_pep.allowed": 3,
        "oauth_pep.denied.reason.token_missing": 1,
        "oauth_pep.denied.reason.request_invalid": 1,
        "oauth_pep.denied.reason.token_expired": 2,
        "oauth_pep.denied.reason.insufficient_scope": 1,
        "oauth_pep.denied.reason.no_rule": 0,
        "oauth_pep.denied.reason.signature_invalid": 0,
        "oauth_pep.denied.reason.keys_unavailable": 0,
        "oauth_pep.denied.reason.pdp_unavailable": 0,
        # good: a miss, then hits (3 x /data and /admin); expired: never cached.
        "oauth_pep.cache_hits.cache.tokens": 3,
        "oauth_pep.cache_misses.cache.tokens": 3,
        "oauth_pep.cache_evictions.cache.tokens": 0,
        "oauth_pep.cache_hits.cache.pdp_decisions": 0,
        "oauth_pep.cache_misses.cache.pdp_decisions": 0,
        "oauth_pep.callouts.kind.discovery.outcome.ok": fetched["discovery"],
        "oauth_pep.callouts.kind.jwks.outcome.ok": fetched["jwks"],
        "oauth_pep.callouts.kind.jwks.outcome.error": 0,
        "oauth_pep.callouts.kind.jwks.outcome.no_response": 0,
        "oauth_pep.callouts.kind.jwks.outcome.not_dispatched": 0,
        "oauth_pep.callouts.kind.pdp.outcome.ok": 0,
        "oauth_pep.key_refreshes.issuer.%s.outcome.ok" % issuer: fetched["jwks"],
        "oauth_pep.key_refreshes.issuer.%s.outcome.failed" % issuer: 0,
        "oauth_pep.keys_loaded.issuer.%s" % issuer: loaded[-1],
    }
    assert {k: s.get(k) for k in expected} == expected, s
    assert fetched["jwks"] >= 1 and before["oauth_pep.allowed"] == 0

    # The same counts, as Prometheus labels.
    p = env.prometheus()
    by_label = {
        ("oauth_pep_allowed", ()): 3,
        ("oauth_pep_denied", (("reason", "token_missing"),)): 1,
        ("oauth_pep_denied", (("reason", "token_expired"),)): 2,
        ("oauth_pep_denied", (("reason", "insufficient_scope"),)): 1,
        ("oauth_pep_denied", (("reason", "keys_unavailable"),)): 0,
        ("oauth_pep_cache_hits", (("cache", "tokens"),)): 3,
        ("oauth_pep_cache_misses", (("cache", "tokens"),)): 3,
        ("oauth_pep_callouts", (("kind", "jwks"), ("outcome", "ok"))): fetched["jwks"],
        ("oauth_pep_callouts", (("kind", "pdp"), ("outcome", "not_dispatched"))): 0,
        ("oauth_pep_key_refreshes", (("issuer", issuer), ("outcome", "ok"))): fetched["jwks"],
        ("oauth_pep_keys_loaded", (("issuer", issuer),)): loaded[-1],
    }
    assert {k: p.get(k) for k in by_label} == by_label, sorted(k for k in p if k[0].startswith("oauth_pep"))

    # Histograms reach the admin views when Envoy merges them (every 5 s).
    def latencies():
        p = env.prometheus()
        return [p.get(("oauth_pep_callout_ms_count", (("kind", k),))) for k in ("discovery", "jwks", "pdp")]

    harness.wait_until(lambda: latencies() == [fetched["discovery"], fetched["jwks"], 0], 20,
                       interval=0.5, what="callout latency counts")


def test_pdp_callouts_and_decision_cache_without_stats_tags(start_envoy, authserver, filter_config, fake_pdp):
    cfg = filter_config(top={
        "policy": {"GET /pdp/??": "read"},
        "pdp": {"kind": "authzen", "upstream": "pdp", "url": "http://127.0.0.1:%d/access/v1/evaluation" % fake_pdp.port,
                "timeout_ms": 2000, "cache_seconds": 60},
    })
    env = start_envoy(cfg, clusters={"pdp": fake_pdp.port})
    settled(env, authserver)
    calls = fake_pdp.stats()["calls"]
    token = authserver.mint()
    assert env.get("/pdp/allow/1", token=token).status_code == 200   # asks the PDP
    assert env.get("/pdp/allow/1", token=token).status_code == 200   # cached decision
    assert env.get("/pdp/deny/1", token=token).status_code == 403    # asks: pdp_denied
    assert fake_pdp.stats()["calls"] == calls + 2

    s = harness.wasm_stats(env)
    expected = {
        "oauth_pep.allowed": 2,
        "oauth_pep.denied.reason.pdp_denied": 1,
        "oauth_pep.callouts.kind.pdp.outcome.ok": 2,
        "oauth_pep.callouts.kind.pdp.outcome.error": 0,
        "oauth_pep.cache_hits.cache.pdp_decisions": 1,
        "oauth_pep.cache_misses.cache.pdp_decisions": 2,
        "oauth_pep.cache_evictions.cache.pdp_decisions": 0,
    }
    assert {k: s.get(k) for k in expected} == expected, s
    # Without stats_tags, Prometheus gets one flat name per label value.
    p = env.prometheus()
    assert p.get(("oauth_pep_callouts_kind_pdp_outcome_ok", ())) == 2, sorted(
        k for k in p if k[0].startswith("oauth_pep"))
    assert p.get(("oauth_pep_denied_reason_pdp_denied", ())) == 1


def test_failed_fetches_and_undispatched_callouts_are_counted(start_envoy, authserver, filter_config):
    auth = authserver
    auth.set_jwks_mode("error500")
    cfg = filter_config(top={"policy": {"GET /pdp/??": "read"},
                             "pdp": {"kind": "authzen", "upstream": "no-such-cluster",
                                     "url": "http://pdp.example/access/v1/evaluation", "timeout_ms": 1000}})
    cfg["issuers"].append({"issuer": HS_ISSUER, "audiences": ["api"], "shared_secret": HS_SECRET,
                           "algorithms": ["HS256"]})
    env = start_envoy(cfg, customize=harness.with_stats_tags)
    fetched, s = settled(env, auth)
    issuer, hs = harness.label(auth.issuer), harness.label(HS_ISSUER)
    # The test AS answers discovery with 500 too: no JWKS is asked for.
    assert fetched["discovery"] >= 1 and fetched["jwks"] == 0
    expected = {
        "oauth_pep.callouts.kind.discovery.outcome.ok": 0,
        "oauth_pep.callouts.kind.discovery.outcome.error": fetched["discovery"],
        "oauth_pep.callouts.kind.jwks.outcome.error": 0,
        "oauth_pep.key_refreshes.issuer.%s.outcome.ok" % issuer: 0,
        "oauth_pep.key_refreshes.issuer.%s.outcome.failed" % issuer: fetched["discovery"],
        "oauth_pep.keys_loaded.issuer.%s" % issuer: 0,
        # Static keys are loaded at configure and never fetched.
        "oauth_pep.keys_loaded.issuer.%s" % hs: 1,
        "oauth_pep.key_refreshes.issuer.%s.outcome.ok" % hs: 0,
    }
    assert {k: s.get(k) for k in expected} == expected, s

    r = env.get("/pdp/allow/1", token=hs_token(auth))
    assert r.status_code == 503, r.text
    s = harness.wasm_stats(env)
    assert s["oauth_pep.callouts.kind.pdp.outcome.not_dispatched"] == 1, s
    assert s["oauth_pep.callouts.kind.pdp.outcome.ok"] == 0, s
    assert s["oauth_pep.denied.reason.pdp_unavailable"] == 1, s
    p = env.prometheus()
    assert p.get(("oauth_pep_callouts", (("kind", "pdp"), ("outcome", "not_dispatched")))) == 1
    assert p.get(("oauth_pep_key_refreshes", (("issuer", issuer), ("outcome", "failed")))) >= fetched["discovery"]
    assert p.get(("oauth_pep_keys_loaded", (("issuer", hs),))) == 1
