"""Revocations pushed as security events (OpenID Shared Signals / CAEP, RFC
8417 SETs by RFC 8935 push), through a real Envoy: the receiver's answers,
and tokens of a revoked subject or session refused with 401 token_revoked
on every worker, whether verified JWTs (cached) or introspected.

The transmitter is the test authorization server: its keys sign the SETs
(/_test/mint with typ secevent+jwt), as they sign its access tokens.
"""

import hashlib
import hmac
import json
import struct
import time
import uuid

import pytest

import harness
from etcd_server import FLEET_KEY, PREFIX, etcd, needs_etcd  # noqa: F401 (etcd is a fixture)
from etcd_server import PASSWORD as ETCD_PASSWORD
from etcd_server import USER as ETCD_USER

RECEIVER = "/ssf/events"
AUDIENCE = "https://gateway.test"
SECRET = "receiver-secret-0123456789"
CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
SET_TYPE = "application/secevent+jwt"


def revocation_config(filter_config, authserver, **receiver):
    r = {"path": RECEIVER, "transmitter": authserver.issuer, "audience": AUDIENCE,
         "auth_token_env": "SSF_TOKEN"}
    r.update(receiver)
    return filter_config(
        introspection={"client_id": "pep", "client_secret": "pep-secret"},
        top={"max_lifetime_seconds": 7200,
             "revocation": {"receiver": r, "retention_seconds": 7200}})


def start(start_envoy, config, **kw):
    return start_envoy(config, concurrency=2, env={"SSF_TOKEN": SECRET},
                       host_env_keys=["SSF_TOKEN"], **kw)


def user(authserver, sub):
    return {"format": "iss_sub", "iss": authserver.issuer, "sub": sub}


def make_set(mint, authserver, events, sub_id=None, **overrides):
    claims = {"iss": authserver.issuer, "aud": AUDIENCE, "iat": harness.now(),
              "jti": uuid.uuid4().hex, "events": events}
    if sub_id is not None:
        claims["sub_id"] = sub_id
    claims.update(overrides)
    return mint(claims=claims, header={"typ": "secevent+jwt"})


def push(env, body, token=SECRET, content_type=SET_TYPE, method="POST"):
    headers = {"content-type": content_type}
    if token is not None:
        headers["authorization"] = "Bearer " + token
    return env.request(method, RECEIVER, headers=headers, data=body)


def token_for(mint, authserver, sub, iat=None, **claims):
    c = authserver.claims(sub=sub, **claims)
    if iat is not None:
        c["iat"] = c["nbf"] = iat
    return mint(claims=c)


def refused_as_revoked(r):
    assert r.status_code == 401, (r.status_code, r.text)
    www = harness.bearer_params(r.headers.get("www-authenticate"))
    assert www and www["error"] == "invalid_token", r.headers
    return True


def on_every_worker(env, token, status, timeout=3.0):
    """`token` gets `status` on ten new connections in a row (both workers),
    within `timeout`."""
    def all_say():
        return all(env.get("/api", token=token, headers={"connection": "close"}).status_code == status
                   for _ in range(10))
    harness.wait_until(all_say, timeout, interval=0.1, what="%d on every worker" % status)


def stats(env):
    return harness.wasm_stats(env)


def test_a_pushed_set_revokes_a_subjects_earlier_tokens_on_every_worker(start_envoy, filter_config, mint, authserver):
    env = start(start_envoy, revocation_config(filter_config, authserver))
    issued = harness.now() - 30
    alice = token_for(mint, authserver, "alice", iat=issued)
    bob = token_for(mint, authserver, "bob", iat=issued)
    opaque_alice = authserver.opaque(sub="alice", iat=issued)
    env.wait_status("/api", 200, token=alice)
    on_every_worker(env, alice, 200)  # cached on both workers
    assert env.get("/api", token=opaque_alice).status_code == 200
    assert env.get("/api", token=opaque_alice).status_code == 200  # cached answer

    s = make_set(mint, authserver, {RISC + "account-disabled": {"subject": user(authserver, "alice")}})
    r = push(env, s)
    assert (r.status_code, r.text) == (202, "")

    on_every_worker(env, alice, 401, timeout=2.0)
    refused_as_revoked(env.get("/api", token=alice))
    refused_as_revoked(env.get("/api", token=opaque_alice))
    harness.wait_until(lambda: "reason=token_revoked" in env.log_text(), 15, what="the denial logged")
    # Another subject, and alice's token issued after the revocation, pass.
    assert env.get("/api", token=bob).status_code == 200
    later = token_for(mint, authserver, "alice", iat=harness.now() + 2)
    on_every_worker(env, later, 200)
    m = stats(env)
    assert m["oauth_pep.security_events.result.accepted"] == 1, m
    assert m["oauth_pep.denied.reason.token_revoked"] >= 12, m
    harness.wait_until(lambda: stats(env)["oauth_pep.deny_entries"] == 1, 2, what="deny_entries gauge")
    # The SET is never sent upstream, nor logged.
    assert s not in env.log_text()


def test_a_revoked_session_refuses_that_session_only(start_envoy, filter_config, mint, authserver):
    env = start(start_envoy, revocation_config(filter_config, authserver))
    issued = harness.now() - 30
    first = token_for(mint, authserver, "carol", iat=issued, sid="session-1")
    second = token_for(mint, authserver, "carol", iat=issued, sid="session-2")
    env.wait_status("/api", 200, token=first)
    s = make_set(mint, authserver, {CAEP + "session-revoked": {"event_timestamp": harness.now() - 1}},
                 sub_id={"format": "opaque", "id": "session-1"})
    assert push(env, s).status_code == 202
    on_every_worker(env, first, 401)
    assert env.get("/api", token=second).status_code == 200
    # A complex subject (SSF) naming the user's other session.
    s = make_set(mint, authserver, {CAEP + "session-revoked": {}},
                 sub_id={"user": user(authserver, "carol"), "session": {"format": "opaque", "id": "session-2"}})
    assert push(env, s).status_code == 202
    on_every_worker(env, second, 401)


def test_bad_sets_get_rfc_8935_errors_and_revoke_nothing(start_envoy, filter_config, mint, authserver):
    env = start(start_envoy, revocation_config(filter_config, authserver))
    dave = token_for(mint, authserver, "dave", iat=harness.now() - 30)
    env.wait_status("/api", 200, token=dave)
    events = {CAEP + "credential-change": {"subject": user(authserver, "dave"),
                                          "credential_type": "password", "change_type": "update"}}
    good = {"iss": authserver.issuer, "aud": AUDIENCE, "iat": harness.now(), "events": events}

    def signed(header=None, sign_with=None, **overrides):
        claims = dict(good, jti=uuid.uuid4().hex, **overrides)
        h = {"typ": "secevent+jwt"}
        h.update(header or {})
        kw = {"sign_with": sign_with, "kid": "rsa1"} if sign_with else {}
        return mint(claims=claims, header=h, **kw)

    cases = [
        ("a signature by another key", signed(sign_with="rsa2"), "invalid_key"),
        ("HS256 with a guessed secret", mint(claims=dict(good, jti="x1"), alg="HS256", secret="guess",
                                             header={"typ": "secevent+jwt"}), "invalid_key"),
        ("another issuer", signed(iss="https://evil.test"), "invalid_issuer"),
        ("another audience", signed(aud="https://other.test"), "invalid_audience"),
        ("an access token", token_for(mint, authserver, "dave"), "invalid_request"),
        ("too old", signed(iat=harness.now() - 3600), "invalid_request"),
        ("an email subject", signed(events={RISC + "account-disabled": {
            "subject": {"format": "email", "email": "dave@example.com"}}}), "invalid_request"),
        ("not a JWS", "hello", "invalid_request"),
    ]
    for name, body, err in cases:
        r = push(env, body)
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json", name
        doc = r.json()
        assert doc["err"] == err and doc["description"], (name, doc)
    # Nothing was revoked: dave's token passes on every worker.
    on_every_worker(env, dave, 200)
    assert stats(env)["oauth_pep.security_events.result.refused"] == len(cases)
    assert stats(env)["oauth_pep.security_events.result.accepted"] == 0


def test_a_replayed_jti_is_refused(start_envoy, filter_config, mint, authserver):
    env = start(start_envoy, revocation_config(filter_config, authserver))
    s = make_set(mint, authserver, {RISC + "sessions-revoked": {"subject": user(authserver, "erin")}})
    assert push(env, s).status_code == 202
    for _ in range(3):  # whichever worker takes it
        r = push(env, s)
        assert r.status_code == 400, r.text
        assert r.json()["err"] == "invalid_request" and "jti" in r.json()["description"]


def test_the_receiver_wants_post_its_media_type_and_its_secret(start_envoy, filter_config, mint, authserver):
    env = start(start_envoy, revocation_config(filter_config, authserver, max_body_bytes=2048))
    s = make_set(mint, authserver, {RISC + "account-disabled": {"subject": user(authserver, "frank")}})
    r = push(env, s, method="GET")
    assert (r.status_code, r.headers.get("allow")) == (405, "POST"), r.text
    for token in (None, "wrong-secret-0123456789"):
        r = push(env, s, token=token)
        assert r.status_code == 401 and r.json()["err"] == "authentication_failed", r.text
        assert r.headers["www-authenticate"] == "Bearer"
    for ctype in ("application/jwt", "text/plain"):
        r = push(env, s, content_type=ctype)
        assert r.status_code == 400 and r.json()["err"] == "invalid_request", r.text
        assert "application/secevent+jwt" in r.json()["description"]
    r = push(env, "x" * 4096)
    assert r.status_code == 413 and r.json()["err"] == "invalid_request", r.text
    # The media type's parameters and case do not matter; the SET was not used up above.
    assert push(env, s, content_type="Application/SecEvent+JWT; charset=utf-8").status_code == 202


def test_a_transmitter_that_is_not_an_issuer_is_refused_at_load(envoy_failure, filter_config, authserver):
    config = revocation_config(filter_config, authserver, transmitter="https://nobody.test")
    res = envoy_failure(config, env={"SSF_TOKEN": SECRET}, host_env_keys=["SSF_TOKEN"])
    assert "revocation.receiver.transmitter" in res.log, res.log[-2000:]


def test_without_a_receiver_secret_set_the_filter_does_not_load(envoy_failure, filter_config, authserver):
    res = envoy_failure(revocation_config(filter_config, authserver))
    assert "revocation.receiver.auth_token_env" in res.log, res.log[-2000:]


def test_it_takes_under_a_second_for_a_revocation_to_reach_the_other_worker(start_envoy, filter_config, mint,
                                                                            authserver):
    env = start(start_envoy, revocation_config(filter_config, authserver))
    grace = token_for(mint, authserver, "grace", iat=harness.now() - 30)
    env.wait_status("/api", 200, token=grace)
    on_every_worker(env, grace, 200)
    assert push(env, make_set(mint, authserver, {RISC + "account-disabled": {
        "subject": user(authserver, "grace")}})).status_code == 202
    started = time.monotonic()
    on_every_worker(env, grace, 401, timeout=2.0)
    assert time.monotonic() - started < 1.5


# --------------------------------------------------------------------------
# The fleet: revocations through etcd (the fleet cache's store and user)
# --------------------------------------------------------------------------

FLEET_ENV = {"OAUTH_PEP_FLEET_KEY": FLEET_KEY, "OAUTH_PEP_ETCD_PASSWORD": ETCD_PASSWORD, "SSF_TOKEN": SECRET}


def deny_name(iss, sub, key=FLEET_KEY, kind=b"s"):
    """A subject's deny entry name (README, "Revocations"): hex HMAC-SHA-256."""
    data = b"oauth-pep deny v1\0" + kind + struct.pack(">I", len(iss.encode())) + iss.encode() + sub.encode()
    return hmac.new(key.encode(), data, hashlib.sha256).hexdigest()


def deny_entry(where, at, until, key=FLEET_KEY):
    """A deny entry's value as a relay writes it: v1.<hex MAC over the etcd key and the JSON>.<JSON>."""
    text = json.dumps({"at": at, "until": until}, separators=(",", ":"))
    tag = hmac.new(key.encode(), b"oauth-pep deny entry v1\0" + where.encode() + b"\0" + text.encode(),
                   hashlib.sha256).hexdigest()
    return "v1.%s.%s" % (tag, text)


def fleet_config(filter_config, authserver, etcd, poll_ms=300):
    cfg = revocation_config(filter_config, authserver)
    cfg["fleet_cache"] = {"endpoint": etcd.url, "upstream": "etcd", "key_prefix": PREFIX,
                          "username": ETCD_USER, "password_env": "OAUTH_PEP_ETCD_PASSWORD",
                          "hmac_key_env": "OAUTH_PEP_FLEET_KEY", "read_timeout_ms": 500}
    cfg["revocation"]["poll_ms"] = poll_ms
    return cfg


def start_fleet(start_envoy, cfg, etcd, n=2):
    return [start_envoy(cfg, concurrency=2, env=FLEET_ENV, host_env_keys=list(FLEET_ENV),
                        clusters={"etcd": etcd.port}) for _ in range(n)]


@needs_etcd
def test_a_set_pushed_to_a_is_refused_on_b_within_the_poll_interval(start_envoy, filter_config, mint,
                                                                    authserver, etcd):
    a, b = start_fleet(start_envoy, fleet_config(filter_config, authserver, etcd), etcd)
    henry = token_for(mint, authserver, "henry", iat=harness.now() - 30)
    for env in (a, b):
        env.wait_status("/api", 200, token=henry)
        on_every_worker(env, henry, 200)  # cached on every worker of both
    harness.wait_until(lambda: stats(b).get("oauth_pep.revocation_polls.outcome.ok", 0) > 0, 5,
                       what="B's first poll")
    s = make_set(mint, authserver, {RISC + "account-disabled": {"subject": user(authserver, "henry")}})
    r = push(a, s)
    assert (r.status_code, r.text) == (202, "")
    pushed = time.monotonic()
    # In etcd: one entry under the deny prefix, named by an HMAC, not the subject.
    keys = etcd.keys(PREFIX + "d/")
    assert keys == [PREFIX + "d/" + deny_name(authserver.issuer, "henry")], keys
    on_every_worker(b, henry, 401, timeout=3.0)
    assert time.monotonic() - pushed < 1.5, "poll_ms 300 + a 200 ms tick, and some slack"
    refused_as_revoked(b.get("/api", token=henry))
    m = stats(b)
    assert m["oauth_pep.revocation_entries.result.taken"] >= 1, m
    assert m.get("oauth_pep.security_events.result.accepted", 0) == 0, "B took no SET itself"
    # A token issued after the revocation still passes on B.
    later = token_for(mint, authserver, "henry", iat=harness.now() + 2)
    on_every_worker(b, later, 200)


@needs_etcd
def test_what_a_relay_writes_counts_only_with_the_fleet_key(start_envoy, filter_config, mint, authserver, etcd):
    (b,) = start_fleet(start_envoy, fleet_config(filter_config, authserver, etcd), etcd, n=1)
    iris = token_for(mint, authserver, "iris", iat=harness.now() - 30)
    b.wait_status("/api", 200, token=iris)
    now = harness.now()
    where = PREFIX + "d/" + deny_name(authserver.issuer, "iris")
    # Garbage, and an entry MACed with another key: rejected, counted, logged.
    etcd.put(PREFIX + "d/not-a-name", "garbage")
    etcd.put(where, deny_entry(where, now, now + 600, key="not-the-fleet-key-0123456789abcdef"))
    harness.wait_until(lambda: stats(b).get("oauth_pep.revocation_entries.result.rejected", 0) >= 2, 5,
                       what="the rejected entries counted")
    on_every_worker(b, iris, 200)
    harness.wait_until(lambda: "rejected (first: bad_mac)" in b.log_text()
                       or "rejected (first: malformed)" in b.log_text(), 15, what="the warning logged")
    # A relay that holds the fleet key writes the same format: B takes it.
    etcd.put(where, deny_entry(where, now, now + 600))
    on_every_worker(b, iris, 401, timeout=3.0)


@needs_etcd
def test_with_etcd_refusing_the_receiver_answers_503_and_the_transmitter_may_retry(
        start_envoy, filter_config, mint, authserver, etcd):
    cfg = fleet_config(filter_config, authserver, etcd)
    cfg["fleet_cache"]["key_prefix"] = "/outside-the-role/"
    (a,) = start_fleet(start_envoy, cfg, etcd, n=1)
    s = make_set(mint, authserver, {RISC + "account-disabled": {"subject": user(authserver, "jack")}})
    r = push(a, s)
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    assert r.json() == {"err": "temporarily_unavailable",
                        "description": "the security event cannot be stored right now: retry"}
    # Not remembered as taken: the same SET is not refused as a replay.
    r = push(a, s)
    assert r.status_code == 503, r.text
    assert stats(a)["oauth_pep.security_events.result.unavailable"] == 2
    # The cause is in the log, not in the answer.
    harness.wait_until(lambda: "permission denied" in a.log_text(), 15, what="the cause logged")
