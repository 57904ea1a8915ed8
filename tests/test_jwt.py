"""JWT verification through a real Envoy: every algorithm, every rejection as
the client sees it (status, WWW-Authenticate, JSON body), token sources,
header stripping, key rotation, JWKS outages, the token cache, refused
configurations and hostile header bytes.

Envoys that can be shared live for the module (`main_envoy`, `hide_envoy`);
tests that need fresh key state start their own.
"""

import base64
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import harness
from authserver import load_keys, public_jwk

REALM = "oauth-pep-test"
HS_ISSUER = "https://hs.example"
HS_SECRET = "integration-test-shared-secret-0123456789"
# A fragment of the rsa1 public modulus: must never appear in a denial.
RSA_N = public_jwk(load_keys(harness.TESTS / "keys")["rsa1"], "rsa1")["n"][:24]
# kid -> alg published on top of the authserver defaults (same rsa1 key).
EXTRA_KEYS = {"rsa1-RS384": "RS384", "rsa1-RS512": "RS512", "rsa1-PS384": "PS384", "rsa1-PS512": "PS512"}


def publish_extra_keys(a):
    for kid, alg in EXTRA_KEYS.items():
        a.rotate(add="rsa1", kid=kid, alg=alg)


@pytest.fixture(autouse=True)
def auth(authserver):
    """The authserver, reset, with the extra RSA kids published (so an
    unknown-kid refetch by a module Envoy still finds them)."""
    publish_extra_keys(authserver)
    return authserver


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

Resp = harness.Resp
send = harness.send_raw


def b64decode(segment):
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def check_ok(r):
    assert r.status == 200, r
    return r.json()


def check_denied(r, status, error=None, desc=None):
    """status + challenge + JSON body; error=None means the bare challenge."""
    assert r.status == status, r
    assert r.headers.get("content-type", "").startswith("application/json"), r
    body = r.json()
    text = json.dumps(r.headers) + r.body.decode("utf-8", "replace")
    assert "-----BEGIN" not in text and RSA_N not in text, "key material leaked: %r" % r
    www = r.headers.get("www-authenticate")
    if status == 503:
        assert body["error"] == "temporarily_unavailable", body
        assert int(r.headers["retry-after"]) > 0, r
        assert www is None, r
        assert desc is None or desc.lower() in body["error_description"].lower(), body
        return body
    if error is None:
        assert www == 'Bearer realm="%s"' % REALM, r
        assert "error_description" in body and body.get("error") != "invalid_token", body
        return body
    params = harness.bearer_params(www)
    assert params is not None, r
    assert params["realm"] == REALM and params["error"] == error, www
    assert body["error"] == error, body
    assert desc.lower() in body["error_description"].lower(), body
    # RFC 9110 quoting: the header carries exactly what the body says.
    assert params["error_description"] == body["error_description"], (www, body)
    return body


def settled_stats(a, quiet=0.6, timeout=15):
    """authserver fetch counts once they stop moving (every VM loaded)."""
    prev = a.stats()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(quiet)
        cur = a.stats()
        if cur == prev:
            return cur
        prev = cur
    raise AssertionError("fetch counts never settled: %r" % prev)


def main_config(a, **top):
    cfg = {
        "realm": REALM,
        "issuers": [a.issuer_config(),
                    {"issuer": HS_ISSUER, "audiences": ["api"], "shared_secret": HS_SECRET,
                     "algorithms": ["HS256", "HS384", "HS512"]}],
        "max_lifetime_seconds": 3600,
        "token_sources": [{"header": "authorization"}, {"header": "x-token"},
                          {"query": "access_token"}, {"cookie": "at"}],
        "forward": {"claims": {"sub": "x-jwt-sub"}, "payload_header": "x-jwt-payload"},
    }
    cfg.update(top)
    return cfg


# Envoy writes --log-path every 10 s by default; the tests read it sooner.
FLUSH = ("--file-flush-interval-msec", "50")


def start_and_load(factory, a, cfg):
    env = factory(cfg, extra_args=FLUSH)
    env.wait_status("/", 200, token=a.mint(), timeout=20)
    return env


@pytest.fixture(scope="module")
def main_envoy(module_envoy, authserver_module):
    authserver_module.reset()
    publish_extra_keys(authserver_module)
    return start_and_load(module_envoy, authserver_module, main_config(authserver_module))


@pytest.fixture(scope="module")
def hide_envoy(module_envoy, authserver_module):
    cfg = {"realm": REALM, "issuers": [authserver_module.issuer_config()], "clock_skew_seconds": 0,
           "token_sources": [{"header": "authorization"}, {"query": "access_token"}, {"cookie": "at"}],
           "forward": {"hide_credentials": True}}
    return start_and_load(module_envoy, authserver_module, cfg)


# --------------------------------------------------------------------------
# 1. every algorithm
# --------------------------------------------------------------------------

ALGS = [("RS256", "rsa1"), ("RS384", "rsa1-RS384"), ("RS512", "rsa1-RS512"), ("PS256", "rsa1-ps"),
        ("PS384", "rsa1-PS384"), ("PS512", "rsa1-PS512"), ("ES256", "ec256"), ("ES384", "ec384"),
        ("EdDSA", "ed25519"), ("HS256", None), ("HS384", None), ("HS512", None)]


@pytest.mark.parametrize("alg,kid", ALGS, ids=[a for a, _ in ALGS])
def test_valid_token_of_each_algorithm_passes_with_identity_headers(main_envoy, auth, alg, kid):
    now = int(time.time())
    claims = auth.claims(sub="user-" + alg, client_id="client-" + alg, scope="read write",
                         iat=now, exp=now + 240)
    if alg.startswith("HS"):
        claims["iss"] = HS_ISSUER
        token = auth.mint(claims, alg=alg, secret=HS_SECRET, kid=None)
    else:
        token = auth.mint(claims, alg=alg, kid=kid)
    assert json.loads(b64decode(token.split(".")[0]))["alg"] == alg
    h = check_ok(send(main_envoy, "/api/items", token=token))["headers"]
    assert h.get("x-jwt-sub") == "user-" + alg, h
    assert h.get("x-oauth-client-id") == "client-" + alg, h
    assert h.get("x-authenticated-scope") == "read,write", h
    assert h.get("x-oauth-expiration") == str(now + 240), h
    assert h.get("x-jwt-payload") == token.split(".")[1], h
    assert h.get("authorization") == "Bearer " + token, "without hide_credentials the token goes on"


# --------------------------------------------------------------------------
# 2./3. rejections and time rules
# --------------------------------------------------------------------------

def _swap_payload(a):
    good = a.mint().split(".")
    other = a.mint(a.claims(scope="read write admin")).split(".")
    return "%s.%s.%s" % (good[0], other[1], good[2])


def _hs(a, secret, **claims):
    return a.mint(a.claims(iss=HS_ISSUER, **claims), alg="HS256", secret=secret, kid=None)


def _t(a, **claims):
    return a.mint(a.claims(**claims))


def bearer(tok):
    return [("Authorization", "Bearer " + tok)]


# name, request(a) -> (path, headers), status, error, description fragment
REJECTIONS = [
    ("no_token", lambda a: ("/", []), 401, None, None),
    ("basic_scheme_only", lambda a: ("/", [("Authorization", "Basic ZGVtbzpzZWNyZXQ=")]), 401, None, None),
    ("expired",
     lambda a: ("/", bearer(_t(a, iat=harness.now() - 400, nbf=harness.now() - 400, exp=harness.now() - 120))),
     401, "invalid_token", "expired"),
    ("nbf_in_future", lambda a: ("/", bearer(_t(a, nbf=harness.now() + 120))), 401, "invalid_token", "not valid yet"),
    ("iat_in_future", lambda a: ("/", bearer(_t(a, iat=harness.now() + 120, nbf=None))), 401, "invalid_token",
     "issued in the future"),
    ("missing_exp", lambda a: ("/", bearer(_t(a, exp=None))), 401, "invalid_token", "no exp"),
    ("wrong_aud", lambda a: ("/", bearer(_t(a, aud="other-api"))), 401, "invalid_token", "audience"),
    ("wrong_aud_list", lambda a: ("/", bearer(_t(a, aud=["x", "y"]))), 401, "invalid_token", "audience"),
    ("unknown_iss", lambda a: ("/", bearer(_t(a, iss="https://evil.example"))), 401, "invalid_token",
     "not trusted"),
    ("missing_iss", lambda a: ("/", bearer(_t(a, iss=None))), 401, "invalid_token", "no iss"),
    ("alg_none", lambda a: ("/", bearer(a.mint(alg="none"))), 401, "invalid_token", "not accepted"),
    ("alg_none_with_kid", lambda a: ("/", bearer(a.mint(alg="none", kid="rsa1"))), 401, "invalid_token",
     "not accepted"),
    ("hs256_signed_with_rsa_public_key",
     lambda a: ("/", bearer(a.mint(alg="HS256", sign_with="rsa1", kid="rsa1"))), 401, "invalid_token",
     "not allowed"),
    ("bad_signature", lambda a: ("/", bearer(_swap_payload(a))), 401, "invalid_token", "signature"),
    ("hs_wrong_secret", lambda a: ("/", bearer(_hs(a, "another-secret-another-secret-0123456"))), 401,
     "invalid_token", "signature"),
    ("es256_header_with_rsa_kid",
     lambda a: ("/", bearer(a.mint(alg="ES256", kid="rsa1", sign_with="ec256"))), 401, "invalid_token",
     'kid "rsa1"'),
    ("lifetime_too_long", lambda a: ("/", bearer(_t(a, iat=harness.now(), exp=harness.now() + 7200))), 401,
     "invalid_token", "lifetime"),
    ("two_parts", lambda a: ("/", bearer("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0")), 401, "invalid_token",
     "malformed"),
    ("garbage_base64", lambda a: ("/", bearer("Zm9v.YmFy.YmF6")), 401, "invalid_token", "malformed"),
    ("oversized", lambda a: ("/", bearer("a" * 17000 + ".b.c")), 401, "invalid_token", "malformed"),
    ("bad_token_syntax", lambda a: ("/", bearer("###.$$$.@@@")), 400, "invalid_request",
     "not a valid bearer token"),
    # Envoy folds a repeated Authorization (an inline header) into "Bearer a,Bearer b";
    # the filter still names it a repeat.
    ("two_authorization_headers", lambda a: ("/", bearer(a.mint()) + bearer(a.mint())), 400, "invalid_request",
     "more than one authorization header"),
    ("two_custom_headers", lambda a: ("/", [("X-Token", a.mint()), ("X-Token", a.mint())]), 400,
     "invalid_request", "more than one x-token header"),
    ("header_and_query", lambda a: ("/?access_token=" + a.mint(), bearer(a.mint())), 400, "invalid_request",
     "more than one place"),
    ("header_and_cookie", lambda a: ("/", bearer(a.mint()) + [("Cookie", "at=" + a.mint())]), 400,
     "invalid_request", "more than one place"),
    ("query_twice", lambda a: ("/?access_token=%s&access_token=%s" % (a.mint(), a.mint()), []), 400,
     "invalid_request", "more than one"),
]


@pytest.mark.parametrize("name,make,status,error,desc", REJECTIONS, ids=[c[0] for c in REJECTIONS])
def test_rejection_status_challenge_and_body(main_envoy, auth, name, make, status, error, desc):
    path, headers = make(auth)
    check_denied(send(main_envoy, path, headers), status, error, desc)


# name, claims(now) overrides, passes?, description fragment when refused
TIMES = [
    ("expired_30s_ago_within_skew", lambda n: dict(iat=n - 300, nbf=n - 300, exp=n - 30), True, None),
    ("expired_120s_ago_beyond_skew", lambda n: dict(iat=n - 300, nbf=n - 300, exp=n - 120), False, "expired"),
    ("nbf_30s_ahead_within_skew", lambda n: dict(nbf=n + 30), True, None),
    ("iat_30s_ahead_within_skew", lambda n: dict(iat=n + 30, nbf=None), True, None),
    ("lifetime_exactly_max", lambda n: dict(iat=n, exp=n + 3600), True, None),
    ("lifetime_above_max", lambda n: dict(iat=n, exp=n + 3601), False, "lifetime"),
    ("lifetime_without_iat_counts_from_now", lambda n: dict(iat=None, exp=n + 7200), False, "lifetime"),
]


@pytest.mark.parametrize("name,claims,passes,desc", TIMES, ids=[c[0] for c in TIMES])
def test_clock_skew_and_max_lifetime(main_envoy, auth, name, claims, passes, desc):
    r = send(main_envoy, token=auth.mint(auth.claims(**claims(harness.now()))))
    if passes:
        check_ok(r)
    else:
        check_denied(r, 401, "invalid_token", desc)


# --------------------------------------------------------------------------
# 4./5. forged headers, token sources, hide_credentials
# --------------------------------------------------------------------------

FORGED = [("x-jwt-sub", "admin"), ("x-authenticated-scope", "admin"), ("x-oauth-client-id", "evil"),
          ("x-oauth-expiration", "9999999999"), ("x-jwt-payload", "e30"), ("X-JWT-SUB", "root")]


def test_forged_identity_headers_are_replaced_by_the_real_values(main_envoy, auth):
    exp = harness.now() + 200
    token = auth.mint(auth.claims(sub="alice", client_id="app-1", scope="read", exp=exp))
    h = check_ok(send(main_envoy, headers=FORGED, token=token))["headers"]
    assert (h.get("x-jwt-sub"), h.get("x-authenticated-scope"), h.get("x-oauth-client-id"),
            h.get("x-oauth-expiration"), h.get("x-jwt-payload")) == \
        ("alice", "read", "app-1", str(exp), token.split(".")[1]), h


def test_forged_headers_are_removed_when_the_token_lacks_those_claims(main_envoy, auth):
    token = auth.mint(auth.claims(sub=None, client_id=None, scope=None))
    h = check_ok(send(main_envoy, headers=FORGED, token=token))["headers"]
    assert "x-jwt-sub" not in h and "x-oauth-client-id" not in h, h
    assert h.get("x-authenticated-scope") in (None, ""), "no scopes granted, not the forged 'admin': %r" % h


SOURCES = [
    ("custom_header", lambda t: ("/s", [("X-Token", t)])),
    ("query", lambda t: ("/s?k=1&access_token=" + t, [])),
    ("cookie", lambda t: ("/s", [("Cookie", "a=1; at=%s; b=2" % t)])),
    ("bearer_scheme_any_case", lambda t: ("/s", [("Authorization", "bEaReR " + t)])),
]


@pytest.mark.parametrize("name,make", SOURCES, ids=[s[0] for s in SOURCES])
def test_alternative_token_sources(main_envoy, auth, name, make):
    token = auth.mint(auth.claims(sub="via-" + name))
    path, headers = make(token)
    body = check_ok(send(main_envoy, path, headers))
    assert body["headers"].get("x-jwt-sub") == "via-" + name, body
    # a bad token in the same place is refused, not ignored
    bad = _swap_payload(auth)
    path, headers = make(bad)
    check_denied(send(main_envoy, path, headers), 401, "invalid_token", "signature")


HIDE = [
    ("authorization", lambda t: ("/h", [("Authorization", "Bearer " + t), ("X-Keep", "1")]),
     "/h", {"authorization": None, "x-keep": "1"}),
    ("query", lambda t: ("/h?k=1&access_token=%s&z=2" % t, []), "/h?k=1&z=2", {}),
    ("query_only_param", lambda t: ("/h?access_token=" + t, []), "/h", {}),
    ("cookie", lambda t: ("/h", [("Cookie", "a=1; at=%s; b=2" % t)]), "/h", {"cookie": "a=1; b=2"}),
    ("cookie_only", lambda t: ("/h", [("Cookie", "at=" + t)]), "/h", {"cookie": None}),
]


@pytest.mark.parametrize("name,make,path,expect", HIDE, ids=[h[0] for h in HIDE])
def test_hide_credentials_removes_the_token_from_its_source(hide_envoy, auth, name, make, path, expect):
    token = auth.mint()
    req_path, headers = make(token)
    body = check_ok(send(hide_envoy, req_path, headers))
    assert body["path"] == path, body
    for k, v in expect.items():
        assert body["headers"].get(k) == v, body
    assert token not in json.dumps(body), "the token reached the upstream: %r" % body


# --------------------------------------------------------------------------
# 8. token cache
# --------------------------------------------------------------------------

@pytest.mark.parametrize("entries,cached", [(None, True), (0, False)], ids=["default", "token_cache_entries_0"])
def test_a_cached_token_outlives_its_withdrawn_key(start_envoy, auth, entries, cached):
    """A cache hit is what a client can tell apart: a verified token stays
    valid until its `exp` even after its key has left the JWKS (README,
    Cache), while with the cache off the same token is verified again and
    refused. (Fetch counts cannot show a hit: a known key is never fetched.)"""
    auth.rotate(add="rsa2", kid="rsa2")
    cfg = {"realm": REALM, "issuers": [auth.issuer_config(refresh_seconds=1)],
           "forward": {"claims": {"sub": "x-jwt-sub"}}}
    if entries is not None:
        cfg["token_cache_entries"] = entries
    env = start_and_load(start_envoy, auth, cfg)
    token = auth.mint(auth.claims(sub="cached"), kid="rsa2")
    for _ in range(2):
        assert check_ok(send(env, token=token))["headers"]["x-jwt-sub"] == "cached"
    auth.rotate(remove="rsa2")

    def withdrawn():  # a fresh token each time: one that passed would be cached
        r = send(env, token=auth.mint(auth.claims(), kid="rsa2", sign_with="rsa2"))
        return r.status == 401 and 'kid "rsa2"' in r.json()["error_description"]

    harness.wait_until(withdrawn, 10, interval=0.2, what="a key refresh without rsa2")
    r = send(env, token=token)
    if cached:
        assert check_ok(r)["headers"]["x-jwt-sub"] == "cached"
    else:
        check_denied(r, 401, "invalid_token", 'kid "rsa2"')


def token_cache_counts(env):
    s = env.stats("oauth_pep.cache_")
    return tuple(s["wasmcustom.oauth_pep.cache_%s.cache.tokens" % e] for e in ("hits", "misses"))


def test_same_token_twice_passes_without_another_fetch(main_envoy, auth):
    token = auth.mint()
    check_ok(send(main_envoy, token=token))
    before, fetches = token_cache_counts(main_envoy), auth.stats()
    for _ in range(3):
        check_ok(send(main_envoy, token=token))
    # Served from the token cache: three hits, no miss (no verification).
    hits, misses = token_cache_counts(main_envoy)
    assert (hits, misses) == (before[0] + 3, before[1]), (before, hits, misses)
    assert auth.stats() == fetches


def test_token_expiring_while_cached_is_refused_after_expiry(hide_envoy, auth):
    exp = harness.now() + 2
    token = auth.mint(auth.claims(iat=exp - 2, nbf=exp - 2, exp=exp))
    check_ok(send(hide_envoy, token=token))
    check_ok(send(hide_envoy, token=token))  # served from the cache
    time.sleep(max(0.0, exp + 1.3 - time.time()))
    check_denied(send(hide_envoy, token=token), 401, "invalid_token", "expired")


# --------------------------------------------------------------------------
# 6. key rotation
# --------------------------------------------------------------------------

def test_key_published_after_load_passes_via_one_refetch(start_envoy, auth):
    env = start_and_load(start_envoy, auth, main_config(auth))
    # A request starts a fetch at most once per (whole) second: a load less
    # than a second old would refuse the refetch this test is about.
    base = settled_stats(auth, quiet=1.1)
    assert auth.rotate(add="rsa2", kid="rsa2")[-1] == "rsa2"
    rotated = auth.mint(auth.claims(sub="rotated"), kid="rsa2")
    assert check_ok(send(env, token=rotated))["headers"]["x-jwt-sub"] == "rotated"
    after = auth.stats()
    assert after["jwks"] == base["jwks"] + 1, (base, after)
    # another unknown kid: the burst allowance refetches once more, without finding it
    stray = auth.mint(auth.claims(), kid="rsa3", sign_with="rsa2")
    check_denied(send(env, token=stray), 401, "invalid_token", 'kid "rsa3"')
    after = settled_stats(auth)
    assert after["jwks"] == base["jwks"] + 2, (base, after)
    # the same stray kid again spends no refetch
    check_denied(send(env, token=stray), 401, "invalid_token", 'kid "rsa3"')
    time.sleep(0.3)
    assert auth.stats() == after
    # the rotated key stays usable (fresh token, not a cache hit)
    check_ok(send(env, token=auth.mint(auth.claims(), kid="rsa2")))
    assert auth.stats() == after


# --------------------------------------------------------------------------
# 7. JWKS outages
# --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["error500", "garbage", "hang", "close"])
def test_jwks_down_at_start_gives_503_then_recovers(start_envoy, auth, mode):
    auth.set_jwks_mode(mode)
    cfg = {"realm": REALM, "issuers": [auth.issuer_config(fetch_timeout_ms=500)]}
    env = start_envoy(cfg, extra_args=FLUSH)
    token = auth.mint()
    last = {}

    def failed_fetch_reported():
        last["r"] = send(env, token=token)
        return last["r"].status == 503 and "not available" in last["r"].body.decode()

    harness.wait_until(failed_fetch_reported, 10, interval=0.1, what="503 naming the failed fetch")
    check_denied(last["r"], 503, desc="not available")
    auth.set_jwks_mode("ok")
    env.wait_status("/", 200, token=token, timeout=20)
    # Envoy flushes its log on its own schedule: wait for the line rather than race it.
    harness.wait_until(lambda: "key fetch failed" in env.log_text(), 10, what="the failed fetch logged")


def test_failed_refresh_keeps_the_old_keys(start_envoy, auth):
    cfg = {"realm": REALM, "issuers": [auth.issuer_config(refresh_seconds=1, fetch_timeout_ms=500)]}
    env = start_and_load(start_envoy, auth, cfg)
    base = auth.stats()["discovery"]
    auth.set_jwks_mode("error500")
    harness.wait_until(lambda: auth.stats()["discovery"] >= base + 3, 10, what="failed refreshes")
    for _ in range(3):
        check_ok(send(env, token=auth.mint()))  # fresh tokens: verified with the old keys
        time.sleep(0.4)
    # Envoy flushes its log on its own schedule: wait for the line rather than race it.
    harness.wait_until(lambda: "key fetch failed" in env.log_text(), 10, what="the failed fetch logged")


# --------------------------------------------------------------------------
# 9. refused configurations
# --------------------------------------------------------------------------

def _iss():
    return "http://127.0.0.1:1"


BAD_CONFIGS = [
    ("missing_issuers", {"realm": "x"}, "issuers"),
    ("empty_issuers", {"issuers": []}, "`issuers`"),
    ("upstream_missing", {"issuers": [{"issuer": _iss(), "jwks_uri": _iss() + "/jwks"}]}, "`issuers[0].upstream`"),
    ("alg_none", {"issuers": [{"issuer": _iss(), "jwks_uri": _iss() + "/jwks", "upstream": "authserver",
                               "algorithms": ["none"]}]}, "`issuers[0].algorithms`"),
    ("unknown_top_level_field", {"issuers": [{"issuer": "x", "shared_secret": HS_SECRET}], "bogus_field": 1},
     "bogus_field"),
    ("short_secret", {"issuers": [{"issuer": "x", "shared_secret": "short"}]}, "`issuers[0].shared_secret`"),
    ("skew_too_lenient", {"issuers": [{"issuer": "x", "shared_secret": HS_SECRET}], "clock_skew_seconds": 3600},
     "`clock_skew_seconds`"),
    ("empty_config", "", "empty"),
    ("not_json", "{issuers: nope", "line 1 column"),
]


@pytest.fixture(scope="module")
def refused(wasm, tmp_path_factory, echo, authserver_module):
    """Every bad config started at once (each Envoy spends ~2 s compiling
    the module): name -> harness.EnvoyFailure."""
    workdir = tmp_path_factory.mktemp("bad-configs")

    def run(case):
        return harness.Envoy.start_expecting_failure(
            case[1], workdir / case[0], upstream_port=echo.port, authserver_port=authserver_module.port,
            timeout=30)

    with ThreadPoolExecutor(max_workers=len(BAD_CONFIGS)) as pool:
        return dict(zip([c[0] for c in BAD_CONFIGS], pool.map(run, BAD_CONFIGS)))


@pytest.mark.parametrize("name,field", [(c[0], c[2]) for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_refused_and_the_log_names_the_field(refused, name, field):
    res = refused[name]
    assert not res.became_ready and res.exited and res.returncode != 0, res
    lines = [ln for ln in res.log.splitlines() if "oauth-pep: invalid configuration" in ln]
    assert lines, "no 'invalid configuration' line in the log:\n" + res.log[-3000:]
    assert any(field in ln for ln in lines), lines


# --------------------------------------------------------------------------
# 10. robustness
# --------------------------------------------------------------------------

def test_non_utf8_header_value_does_not_break_the_filter(main_envoy, auth):
    token = auth.mint(auth.claims(sub="latin"))
    body = check_ok(send(main_envoy, "/raw", [("X-Thing", "caf\xe9"), ("X-Other", "\xff\xfe")], token=token))
    assert body["headers"]["x-jwt-sub"] == "latin"
    assert body["headers"].get("x-thing") == "caf\xe9", body  # passed on untouched
    # non-UTF-8 where the token is expected: a 400, not a crash
    check_denied(send(main_envoy, "/raw", [("Authorization", "Bearer caf\xe9.x.y")]), 400, "invalid_request",
                 "not a valid bearer token")
    check_denied(send(main_envoy, "/raw?access_token=%ff%fe.a.b"), 400, "invalid_request",
                 "not a valid bearer token")
    check_denied(send(main_envoy, "/raw", [("Cookie", "at=\xe9\xe9.a.b")]), 400, "invalid_request",
                 "not a valid bearer token")
    check_ok(send(main_envoy, "/after", token=auth.mint()))
    assert "panicked" not in main_envoy.log_text()


def test_main_envoy_never_panicked(main_envoy):
    assert main_envoy.alive()
    log = main_envoy.log_text()
    assert "panicked" not in log and "wasm trap" not in log.lower(), log[-3000:]


# --------------------------------------------------------------------------
# both crypto paths: Envoy's verify_signature (host) and pure Rust (wasm)
# --------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["host", "wasm"])
def crypto_envoy(request, module_envoy, authserver_module):
    authserver_module.reset()
    publish_extra_keys(authserver_module)
    cfg = main_config(authserver_module, crypto=request.param)
    env = start_and_load(module_envoy, authserver_module, cfg)
    env.crypto = request.param
    return env


@pytest.mark.parametrize("alg,kid", ALGS, ids=[a for a, _ in ALGS])
def test_every_algorithm_on_both_crypto_paths(crypto_envoy, auth, alg, kid):
    """RS*/ES* go to the host's crypto with crypto "host" (PS*, EdDSA and HS*
    stay in wasm: Envoy's verify_signature has no PSS padding and no EdDSA);
    everything is pure Rust with "wasm". Each path accepts a good signature
    and refuses one over other claims."""
    where = "the host (Envoy's BoringSSL)" if crypto_envoy.crypto == "host" else "pure Rust in wasm"
    assert "signatures are checked by " + where in crypto_envoy.log_text()

    def mint(**extra):
        claims = auth.claims(sub="user-" + alg, scope="read", **extra)
        if alg.startswith("HS"):
            claims["iss"] = HS_ISSUER
            return auth.mint(claims, alg=alg, secret=HS_SECRET, kid=None)
        return auth.mint(claims, alg=alg, kid=kid)

    good = mint()
    r = send(crypto_envoy, "/api/items", token=good)
    assert r.status == 200, r
    header, _, signature = good.split(".")
    other = mint(jti="other-" + alg).split(".")[1]
    r = send(crypto_envoy, "/api/items", token="%s.%s.%s" % (header, other, signature))
    assert r.status == 401 and r.json()["reason"] == "signature_invalid", r
