"""The fleet cache on etcd through real Envoys: two Envoy processes (two
workers each) share introspection answers through an etcd 3.4 with auth on,
whose role confines the gateway's user to its prefix. One introspection per
token for both (tests/authserver.py and oidc-provider count them); every etcd failure (down, slow, refusing, poisoned entries)
ends where the filter is without the fleet cache, never at allow.

etcd is Debian's etcd-server (`make setup`), started here on 127.0.0.1 with a
free port and a temporary data directory, and stopped at the end.
"""

import base64
import hashlib
import hmac
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import harness
from etcd_server import FLEET_KEY, PASSWORD, Etcd, PREFIX, USER, etcd, needs_etcd  # noqa: F401 (etcd is a fixture)

ENV = {"OAUTH_PEP_FLEET_KEY": FLEET_KEY, "OAUTH_PEP_ETCD_PASSWORD": PASSWORD}

pytestmark = needs_etcd


def location(issuer, token, client="pep", key=FLEET_KEY):
    """The etcd key of a token's answer (README, "The fleet cache on etcd")."""
    name = hmac.new(key.encode(), b"oauth-pep fleet key v1\0" + ("%s\0%s" % (issuer, client)).encode()
                    + b"\0" + token.encode(), hashlib.sha256).hexdigest()
    return PREFIX + "a/" + name


def sealed(where, entry, key=FLEET_KEY):
    """An entry as the filter writes it: v1.<hex MAC over the key and the JSON>.<JSON>."""
    text = json.dumps(entry, separators=(",", ":"))
    tag = hmac.new(key.encode(), b"oauth-pep fleet entry v1\0" + where.encode() + b"\0" + text.encode(),
                   hashlib.sha256).hexdigest()
    return "v1.%s.%s" % (tag, text)


def fleet_block(etcd, **over):
    block = {"endpoint": etcd.url, "upstream": "etcd", "key_prefix": PREFIX,
             "username": USER, "password_env": "OAUTH_PEP_ETCD_PASSWORD",
             "hmac_key_env": "OAUTH_PEP_FLEET_KEY", "read_timeout_ms": 300, "claim_wait_ms": 2000}
    block.update(over)
    return block


def config(authserver, etcd, **fleet):
    return {
        "realm": "fleet",
        "issuers": [{"issuer": authserver.issuer, "audiences": ["api"], "upstream": "authserver",
                     "introspection": {"endpoint": authserver.url("/introspect"), "client_id": "pep",
                                       "client_secret": "pep-secret"}}],
        "fleet_cache": fleet_block(etcd, **fleet),
    }


def start_one(start_envoy, cfg, etcd, clusters=None):
    """An Envoy with two workers whose filter holds an etcd auth token (the
    root's tick authenticates once per process; until then requests ask the
    authorization server directly)."""
    env = start_envoy(cfg, concurrency=2, env=ENV, host_env_keys=list(ENV),
                      clusters=clusters or {"etcd": etcd.port})
    harness.wait_until(lambda: harness.wasm_stats(env).get(
        "oauth_pep.callouts.kind.fleet_cache.outcome.ok", 0) >= 1, 15, what="etcd authenticated")
    return env


def start_pair(start_envoy, cfg, etcd, clusters=None):
    return [start_one(start_envoy, cfg, etcd, clusters) for _ in range(2)]


def stat(env, name):
    return harness.wasm_stats(env).get("oauth_pep.fleet_cache." + name, 0)


def wait_written(etcd, issuer, token):
    harness.wait_until(lambda: etcd.get(location(issuer, token)), 5, what="the answer in etcd")


def test_a_token_through_a_then_b_is_introspected_once(start_envoy, authserver, etcd):
    a, b = start_pair(start_envoy, config(authserver, etcd), etcd)
    token = authserver.opaque(sub="alice")
    r = a.get("/api", token=token)
    assert r.status_code == 200, r.text
    wait_written(etcd, authserver.issuer, token)
    # What etcd holds names neither the token nor its subject in the key,
    # and is MACed.
    stored = etcd.get(location(authserver.issuer, token)).decode()
    assert stored.startswith("v1.") and token not in "".join(etcd.keys())
    before = stat(b, "reads.result.hit")
    r = b.get("/api", token=token)
    assert r.status_code == 200, r.text
    assert authserver.introspections(token) == 1
    assert stat(b, "reads.result.hit") == before + 1
    assert stat(a, "reads.result.miss") >= 1
    assert stat(a, "writes.outcome.ok") >= 1
    # An inactive answer is never written.
    junk = "junk-token-never-issued"
    assert a.get("/api", token=junk).status_code == 401
    time.sleep(0.5)
    assert not etcd.get(location(authserver.issuer, junk))


def test_two_hundred_concurrent_requests_over_two_instances_make_one_introspection(
        start_envoy, authserver, etcd):
    a, b = start_pair(start_envoy, config(authserver, etcd), etcd)
    token = authserver.opaque(sub="bob")
    authserver.set_introspection_mode("slow", delay_ms=300)
    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(lambda i: (a if i % 2 else b).get("/api", token=token, timeout=20).status_code,
                                 range(200)))
    assert statuses == [200] * 200
    assert authserver.introspections(token) == 1
    won = stat(a, "claims.result.won") + stat(b, "claims.result.won")
    lost = stat(a, "claims.result.lost") + stat(b, "claims.result.lost")
    assert (won, lost) == (1, 1), (won, lost)


CODES = {"wrong_mac": "bad_mac", "another_tokens_entry": "bad_mac", "expired": "expired",
         "other_issuer": "other_issuer"}


@pytest.mark.parametrize("poison", sorted(CODES))
def test_poisoned_entries_are_rejected_and_the_authorization_server_asked(
        start_envoy, authserver, etcd, poison):
    a = start_one(start_envoy, config(authserver, etcd), etcd)
    victim = authserver.opaque(sub="victim", scope="read")
    where = location(authserver.issuer, victim)
    now = int(time.time())
    entry = {"iss": authserver.issuer, "written_at": now, "fresh_until": now + 300, "stale_until": now + 300,
             "answer": {"active": True, "sub": "mallory", "scope": "admin", "aud": "api",
                        "iss": authserver.issuer, "exp": now + 3600, "client_id": "evil"}}
    if poison == "wrong_mac":
        value = sealed(where, entry, key="not-the-fleet-key-0123456789abcdef")
    elif poison == "another_tokens_entry":
        value = sealed(location(authserver.issuer, "another-token"), entry)
    elif poison == "expired":
        entry.update(written_at=now - 600, fresh_until=now - 300, stale_until=now - 200)
        value = sealed(where, entry)
    else:
        entry["iss"] = "https://other.example"
        value = sealed(where, entry)
    etcd.put(where, value)
    r = a.get("/api", token=victim)
    assert r.status_code == 200, r.text
    assert r.json()["headers"].get("x-authenticated-scope") == "read", "the poisoned answer was used"
    assert authserver.introspections(victim) == 1
    assert stat(a, "reads.result.rejected") == 1
    if poison != "expired":  # an expired entry is routine (then claimed like a miss), not logged
        harness.wait_until(lambda: "an entry was rejected (%s)" % CODES[poison] in a.log_text(), 5,
                           what="the rejection logged")
    # The good answer replaced it.
    harness.wait_until(lambda: b"victim" in etcd.get(where) or b"mallory" not in etcd.get(where), 5,
                       what="the entry rewritten")


def test_etcd_down_or_slow_is_served_through_the_authorization_server_then_the_breaker_opens(
        start_envoy, authserver, tmp_path):
    etcd = Etcd(tmp_path)
    try:
        cfg = config(authserver, etcd, breaker={"failures": 3, "open_seconds": 30})
        a, b = start_pair(start_envoy, cfg, etcd)
        warm = authserver.opaque()
        assert a.get("/api", token=warm).status_code == 200
        # etcd stops answering: each read times out after read_timeout_ms.
        os.kill(etcd.proc.pid, signal.SIGSTOP)
        try:
            token = authserver.opaque(sub="carol")
            t0 = time.monotonic()
            r = a.get("/api", token=token)
            took = time.monotonic() - t0
            assert r.status_code == 200, r.text
            assert took < 0.3 + 1.0, took
            assert stat(a, "reads.result.error") >= 1
            # Once per process: the per-process cache still answers.
            for env in (a, a, b, b):
                assert env.get("/api", token=token).status_code == 200
            assert authserver.introspections(token) <= 2
        finally:
            os.kill(etcd.proc.pid, signal.SIGCONT)
        etcd.stop()
        # Down: refused connections; after 3 failures in a row the breaker opens.
        for i in range(4):
            assert a.get("/api", token=authserver.opaque(sub="d%d" % i)).status_code == 200
        harness.wait_until(lambda: stat(a, "breaker_open") == 1, 5, what="the breaker open")
        bypassed = stat(a, "reads.result.bypassed")
        assert a.get("/api", token=authserver.opaque(sub="e")).status_code == 200
        assert stat(a, "reads.result.bypassed") == bypassed + 1
        harness.wait_until(lambda: "skipped for 30 s" in a.log_text(), 5, what="the breaker logged")
        # The authorization server down too: 503, never 200.
        authserver.set_introspection_mode("error500")
        r = a.get("/api", token=authserver.opaque(sub="f"))
        assert r.status_code == 503, r.text
    finally:
        etcd.stop()


def test_the_gateways_user_writing_outside_its_prefix_is_refused_and_logged(start_envoy, authserver, etcd):
    a = start_one(start_envoy, config(authserver, etcd, key_prefix="/elsewhere/"), etcd)
    token = authserver.opaque()
    assert a.get("/api", token=token).status_code == 200
    assert authserver.introspections(token) == 1
    harness.wait_until(lambda: "permission_denied" in a.log_text(), 5, what="the refusal logged")
    assert stat(a, "reads.result.error") >= 1
    assert not [k for k in etcd.keys("/elsewhere/")]


def test_the_kong_host_port_form_reaches_etcd(start_envoy, authserver, etcd):
    # As tests/test_kong_shape.py: an Envoy cluster named host:port stands
    # for Kong's callout form.
    target = "127.0.0.1:%d" % etcd.port
    cfg = config(authserver, etcd, upstream=target)
    cluster = harness.static_cluster(target, etcd.port)
    a, b = start_pair(start_envoy, cfg, etcd, clusters={target: cluster})
    token = authserver.opaque()
    assert a.get("/api", token=token).status_code == 200
    wait_written(etcd, authserver.issuer, token)
    assert b.get("/api", token=token).status_code == 200
    assert authserver.introspections(token) == 1
    assert stat(b, "reads.result.hit") == 1


def test_a_config_without_the_key_is_refused_naming_the_field(envoy_failure, authserver, etcd):
    f = envoy_failure(config(authserver, etcd), env={"OAUTH_PEP_ETCD_PASSWORD": PASSWORD},
                      host_env_keys=["OAUTH_PEP_ETCD_PASSWORD"])
    assert "fleet_cache.hmac_key_env" in f.log


def signed_config(authserver, etcd, **fleet):
    cfg = config(authserver, etcd, require_signed_answers=True, **fleet)
    cfg["issuers"] = [authserver.issuer_config(introspection={
        "endpoint": authserver.url("/introspect"), "client_id": "pep", "client_secret": "pep-secret",
        "response": "jwt"})]
    return cfg


def test_signed_answers_are_stored_signed_and_verified_again_on_read(start_envoy, authserver, etcd):
    authserver.set_introspection_mode("jwt")
    a, b = start_pair(start_envoy, signed_config(authserver, etcd), etcd)
    token = authserver.opaque(sub="signed-sub")
    assert a.wait_status("/api", 200, token=token, timeout=20).status_code == 200
    wait_written(etcd, authserver.issuer, token)
    stored = etcd.get(location(authserver.issuer, token)).decode()
    signed = json.loads(stored.split(".", 2)[2])["signed"]
    assert signed.count(".") == 2 and "answer" not in json.loads(stored.split(".", 2)[2])
    r = b.wait_status("/api", 200, token=token, timeout=20)
    assert r.json()["headers"].get("x-authenticated-scope") == "read,write"
    assert authserver.introspections(token) == 1
    assert stat(b, "reads.result.hit") == 1
    # A signed answer whose signature does not verify (a changed payload,
    # MACed with the fleet key all the same) is rejected.
    victim = authserver.opaque(sub="victim")
    header, payload, sig = signed.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["token_introspection"]["scope"] = "admin"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    where = location(authserver.issuer, victim)
    entry = json.loads(stored.split(".", 2)[2])
    entry["signed"] = "%s.%s.%s" % (header, forged_payload, sig)
    etcd.put(where, sealed(where, entry))
    assert b.get("/api", token=victim).status_code == 200
    assert authserver.introspections(victim) == 1
    harness.wait_until(lambda: "an entry was rejected (unsigned)" in b.log_text(), 5, what="logged")


def test_an_unsigned_answer_under_require_signed_answers_is_rejected(start_envoy, authserver, etcd):
    authserver.set_introspection_mode("jwt")
    a = start_one(start_envoy, signed_config(authserver, etcd), etcd)
    victim = authserver.opaque(sub="victim", scope="read")
    where = location(authserver.issuer, victim)
    now = int(time.time())
    etcd.put(where, sealed(where, {
        "iss": authserver.issuer, "written_at": now, "fresh_until": now + 300, "stale_until": now + 300,
        "answer": {"active": True, "sub": "mallory", "scope": "admin", "aud": "api",
                   "iss": authserver.issuer, "exp": now + 3600}}))
    r = a.wait_status("/api", 200, token=victim, timeout=20)
    assert r.json()["headers"].get("x-authenticated-scope") == "read"
    assert authserver.introspections(victim) == 1
    assert stat(a, "reads.result.rejected") == 1


def test_a_hot_entry_near_its_end_is_refreshed_early_by_one_instance(start_envoy, authserver, etcd):
    cfg = config(authserver, etcd, refresh_before_seconds=3)
    cfg["issuers"][0]["introspection"]["max_ttl_seconds"] = 5
    a, b = start_pair(start_envoy, cfg, etcd)
    token = authserver.opaque(sub="hot")
    assert a.get("/api", token=token).status_code == 200
    wait_written(etcd, authserver.issuer, token)
    first = etcd.get(location(authserver.issuer, token))
    # Within the last 3 s of the entry: B uses it at once, and refreshes it
    # (B wins the claim) in the background.
    time.sleep(2.2)
    t0 = time.monotonic()
    assert b.get("/api", token=token).status_code == 200
    assert time.monotonic() - t0 < 0.5
    assert stat(b, "reads.result.hit") == 1
    harness.wait_until(lambda: authserver.introspections(token) == 2, 5, what="the refresh")
    harness.wait_until(lambda: etcd.get(location(authserver.issuer, token)) != first, 5,
                       what="the refreshed entry written")
    assert stat(b, "claims.result.won") == 1


def test_oidc_provider_tokens_are_introspected_once_for_two_instances(start_envoy, etcd, oidc_provider):
    import oidc_provider as oidc_op
    op = oidc_provider
    cfg = {"realm": "fleet-op",
           "issuers": [{"issuer": op.issuer, "audiences": "any", "discovery": True, "upstream": "op",
                        "introspection": {"client_id": oidc_op.PEP[0], "client_secret": oidc_op.PEP[1]}}],
           "fleet_cache": fleet_block(etcd)}
    clusters = {"etcd": etcd.port, "op": op.port}
    a, b = start_pair(start_envoy, cfg, etcd, clusters)
    token = op.token("read write")
    assert a.wait_status("/api", 200, token=token, timeout=20).status_code == 200
    harness.wait_until(lambda: etcd.get(location(op.issuer, token)), 5, what="the answer in etcd")
    assert b.wait_status("/api", 200, token=token, timeout=20).status_code == 200
    assert len(op.calls("introspection", token)) == 1
    assert stat(b, "reads.result.hit") == 1
