"""Keys and strict parsing through a real Envoy (security review, issue 6):

- a fetched JWKS with broken or weak keys among good ones still loads (at
  first load and on refresh), each bad key logged with its kid and reason;
  only a JWKS with no usable key is a failed fetch;
- a discovery document naming another issuer is refused (503, logged);
- shared_secret may be bytes given as {"base64url": ...};
- tokens in forms RFC 7515/7519 allow (typ JOSE, numeric jti/nonce, an
  embedded jwk, a fractional exp) pass; an embedded key is never used; what
  is still refused says why.
"""


import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

import harness
from authserver import b64url, load_keys, public_jwk

KEYS = load_keys(harness.TESTS / "keys")
FLUSH = ("--file-flush-interval-msec", "50")
HS_ISSUER = "https://hs.example"
# 0xff..0xe0: not UTF-8, so it cannot be written as a JSON string.
BINARY_SECRET = bytes(range(0xFF, 0xDF, -1))

# kid -> (JWK, what the log must say about it)
BAD_KEYS = {
    "weak-rsa1024": (public_jwk(KEYS["rsa1024"], "weak-rsa1024", "RS256"), "the RSA modulus has 1024 bits"),
    "rsa-e3": ({"kty": "RSA", "kid": "rsa-e3", "n": b64url(b"\xc3" * 256), "e": "Aw"},
               "the RSA exponent must be 65537"),
    "rsa-16384": ({"kty": "RSA", "kid": "rsa-16384", "n": b64url(b"\xc3" * 2048), "e": "AQAB"},
                  "the RSA modulus has 16384 bits"),
    "ec-off-curve": ({"kty": "EC", "crv": "P-256", "kid": "ec-off-curve", "x": b64url(b"\x01" * 32),
                      "y": b64url(b"\x01" * 32)}, "the point is not on the P-256 curve"),
    "ed-31": ({"kty": "OKP", "crv": "Ed25519", "kid": "ed-31", "x": b64url(b"\x07" * 31)},
              "an Ed25519 key is 32 bytes, not 31"),
    "oct-key": ({"kty": "oct", "kid": "oct-key", "k": b64url(b"s" * 32)}, "symmetric (oct) keys are not accepted"),
}
# An entry of the wrong shape (numeric kid) is one bad key too, not a bad document.
WRONG_SHAPE = {"kty": "RSA", "kid": 12, "n": "AQAB", "e": "AQAB"}


def bad_jwks_keys():
    return [jwk for jwk, _ in BAD_KEYS.values()] + [WRONG_SHAPE]


def denied(r, status, error, desc):
    assert r.status_code == status, (r.status_code, r.headers, r.text)
    body = r.json()
    if status == 503:
        assert body["error"] == "temporarily_unavailable", body
    else:
        assert body["error"] == error, body
        assert 'error="%s"' % error in r.headers.get("www-authenticate", ""), r.headers
    assert desc.lower() in body["error_description"].lower(), body
    return body


def wait_log(env, *fragments, timeout=10):
    """The Envoy log once one line holds all fragments; returns that line."""
    def line():
        for ln in env.log_text().splitlines():
            if all(f in ln for f in fragments):
                return ln
        return None

    return harness.wait_until(line, timeout, interval=0.1, what="a log line with %r" % (fragments,))


def wait_503(env, token, fragment, timeout=15):
    last = {}

    def reported():
        last["r"] = env.get("/", token=token)
        return last["r"].status_code == 503 and fragment in last["r"].text

    try:
        harness.wait_until(reported, timeout, interval=0.1, what="503 saying %r" % fragment)
    except TimeoutError as e:
        r = last.get("r")
        raise AssertionError("%s; last: %s %s" % (e, getattr(r, "status_code", None), getattr(r, "text", "")[:400]))
    return last["r"]


# --------------------------------------------------------------------------
# 1. one bad key does not block the key set
# --------------------------------------------------------------------------

def test_bad_keys_in_the_first_jwks_are_skipped_and_logged(start_envoy, filter_config, authserver, mint):
    authserver.set_extra_jwks_keys(bad_jwks_keys())
    env = start_envoy(filter_config(), extra_args=FLUSH)
    r = env.wait_status("/", 200, token=mint(), timeout=15)
    assert r.json()["headers"]["x-jwt-sub"] == "demo-client"
    for kid, (_, why) in BAD_KEYS.items():
        wait_log(env, "skipped a key of %s" % authserver.issuer, '(kid "%s")' % kid, why)
    wait_log(env, "skipped a key of", "not a usable JWK")
    # every good key still works, not just the first
    for kid in ("rsa1-ps", "ec256", "ec384", "ed25519"):
        assert env.get("/", token=mint(kid=kid)).status_code == 200, kid
    assert "key fetch failed" not in env.log_text()


def test_bad_keys_appearing_on_refresh_do_not_freeze_the_keys(start_envoy, filter_config, authserver, mint):
    env = start_envoy(filter_config(refresh_seconds=1), extra_args=FLUSH)
    env.wait_status("/", 200, token=mint(), timeout=15)
    authserver.set_extra_jwks_keys(bad_jwks_keys())
    authserver.rotate(add="rsa2", kid="rsa2")
    base = authserver.stats()["jwks"]
    harness.wait_until(lambda: authserver.stats()["jwks"] >= base + 2, 10, what="two refreshes")
    r = env.get("/", token=mint(authserver.claims(sub="rotated"), kid="rsa2"))
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.json()["headers"]["x-jwt-sub"] == "rotated"
    wait_log(env, '(kid "rsa-e3")', "the RSA exponent must be 65537")
    assert "key fetch failed" not in env.log_text()


def test_a_jwks_with_no_usable_key_is_a_failed_fetch_that_says_why(start_envoy, filter_config, authserver, mint):
    authserver.set_extra_jwks_keys([BAD_KEYS["rsa-e3"][0]])
    for kid in ("rsa1", "rsa1-ps", "ec256", "ec384", "ed25519"):
        authserver.rotate(remove=kid)
    env = start_envoy(filter_config(fetch_timeout_ms=500), extra_args=FLUSH)
    token = mint(kid="rsa1")
    r = wait_503(env, token, "keys_unavailable")
    denied(r, 503, None, "signing keys are not available")
    assert "rsa-e3" not in r.text, "the cause goes to the log, not to the caller"
    wait_log(env, "denied status=503 reason=keys_unavailable",
             'no key usable with the allowed algorithms (1 skipped, first keys[0] (kid \\"rsa-e3\\")')
    wait_log(env, "key fetch failed", "no key usable", "the RSA exponent must be 65537")
    authserver.reset()
    env.wait_status("/", 200, token=token, timeout=20)


# --------------------------------------------------------------------------
# 3. discovery must be for the configured issuer
# --------------------------------------------------------------------------

def test_a_discovery_document_for_another_issuer_is_refused(start_envoy, filter_config, authserver, mint):
    authserver.override_discovery(issuer="https://evil.example")
    env = start_envoy(filter_config(fetch_timeout_ms=500), extra_args=FLUSH)
    token = mint()
    r = wait_503(env, token, "keys_unavailable")
    assert "evil" not in r.text, "the cause goes to the log, not to the caller"
    wait_log(env, "denied status=503 reason=keys_unavailable", 'the document is for issuer \\"https://evil.example\\"')
    wait_log(env, "key fetch failed", "OIDC discovery for %s" % authserver.issuer, '"https://evil.example"')
    assert authserver.stats()["jwks"] == 0, "the jwks_uri of a foreign document was followed"
    # the same document with the right issuer is taken (on the next retry)
    authserver.override_discovery()
    env.wait_status("/", 200, token=token, timeout=20)


# --------------------------------------------------------------------------
# 2. HMAC secrets that are not text
# --------------------------------------------------------------------------

def test_a_binary_shared_secret_given_as_base64url_verifies_hs256(start_envoy, authserver, mint):
    cfg = {"realm": "test", "issuers": [{"issuer": HS_ISSUER, "audiences": ["api"], "algorithms": ["HS256"],
                                         "shared_secret": {"base64url": b64url(BINARY_SECRET)}}],
           "forward": {"claims": {"sub": "x-jwt-sub"}}}
    env = start_envoy(cfg)
    claims = authserver.claims(iss=HS_ISSUER, sub="hmac-user")
    r = env.get("/", token=mint(claims, alg="HS256", secret=BINARY_SECRET, kid=None))
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["x-jwt-sub"] == "hmac-user"
    # the same characters as text are other bytes: another secret
    as_text = BINARY_SECRET.decode("latin-1")
    r = env.get("/", token=mint(claims, alg="HS256", secret=as_text, kid=None))
    denied(r, 401, "invalid_token", "signature")


@pytest.mark.parametrize("secret,says", [
    ({"base64url": b64url(b"k" * 31)}, "`issuers[0].shared_secret`: is 31 bytes"),
    ({"hex": "00" * 32}, "`issuers[0].shared_secret`: must be a string or"),
], ids=["short_after_decoding", "unknown_form"])
def test_a_bad_shared_secret_is_refused_naming_the_field(envoy_failure, secret, says):
    res = envoy_failure({"issuers": [{"issuer": HS_ISSUER, "shared_secret": secret}]})
    assert not res.became_ready and res.exited and res.returncode != 0, res
    assert any("invalid configuration" in ln and says in ln for ln in res.log.splitlines()), res.log[-3000:]


# --------------------------------------------------------------------------
# 4. valid signatures, strict parsing
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def forms_envoy(module_envoy, authserver_module):
    authserver_module.reset()
    cfg = {"realm": "test", "issuers": [authserver_module.issuer_config()],
           "forward": {"claims": {"sub": "x-jwt-sub"}}}
    env = module_envoy(cfg)
    env.wait_status("/", 200, token=authserver_module.mint(), timeout=20)
    return env


ALLOWED_FORMS = [
    ("typ_JOSE", lambda a: a.mint(header={"typ": "JOSE"})),
    ("typ_at_jwt", lambda a: a.mint(header={"typ": "at+jwt"})),
    ("numeric_jti", lambda a: a.mint(a.claims(jti=12345))),
    ("numeric_nonce", lambda a: a.mint(a.claims(nonce=7))),
    ("embedded_own_jwk", lambda a: a.mint(header={"jwk": public_jwk(KEYS["rsa1"], "rsa1")}, kid="rsa1")),
    ("jku_x5u_x5c", lambda a: a.mint(header={"jku": a.url("/jwks"), "x5u": a.url("/cert"), "x5c": ["MIIB"]})),
    ("float_exp_and_nbf", lambda a: a.mint(a.claims(exp=harness.now() + 200.5, nbf=harness.now() - 0.25))),
]


@pytest.mark.parametrize("name,make", ALLOWED_FORMS, ids=[f[0] for f in ALLOWED_FORMS])
def test_tokens_in_forms_the_rfcs_allow_pass(forms_envoy, authserver, name, make):
    before = authserver.stats()["jwks"]
    r = forms_envoy.get("/", token=make(authserver))
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.json()["headers"]["x-jwt-sub"] == "demo-client"
    assert authserver.stats()["jwks"] == before, "a key the token pointed to was fetched"


def test_a_fractional_exp_is_cut_to_the_second(forms_envoy, authserver):
    exp = harness.now() + 200
    r = forms_envoy.get("/", token=authserver.mint(authserver.claims(exp=exp + 0.9)))
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["x-oauth-expiration"] == str(exp)


def _rs2_with_embedded_rs2(a, kid):
    """Signed by rsa2 (the attacker), carrying rsa2's public key."""
    jwk = public_jwk(KEYS["rsa2"], kid or "attacker")
    return a.mint(header={"jwk": jwk, "jku": a.url("/jwks")}, alg="RS256", kid=kid, sign_with="rsa2")


@pytest.mark.parametrize("kid", ["rsa1", None], ids=["real_kid", "no_kid"])
def test_an_embedded_attacker_key_is_never_used(forms_envoy, authserver, kid):
    # no kid: the one published RS256 key (rsa1) checks it
    r = forms_envoy.get("/", token=_rs2_with_embedded_rs2(authserver, kid))
    denied(r, 401, "invalid_token", "the token signature is invalid")


def _es256_with_der_signature(a):
    header, payload, _ = a.mint(alg="ES256", kid="ec256").split(".")
    der = KEYS["ec256"].sign(("%s.%s" % (header, payload)).encode(), ec.ECDSA(hashes.SHA256()))
    return "%s.%s.%s" % (header, payload, b64url(der))


STILL_REFUSED = [
    ("float_exp_in_the_past",
     lambda a: a.mint(a.claims(iat=harness.now() - 400, nbf=harness.now() - 400, exp=harness.now() - 120.5)),
     "has expired"),
    ("negative_exp", lambda a: a.mint(a.claims(exp=-1)), "must be finite and not negative"),
    ("crit", lambda a: a.mint(header={"crit": ["exp"], "exp": 1}), "critical header extensions"),
    ("typ_not_a_jwt", lambda a: a.mint(header={"typ": "secevent+jws"}), "typ must be JWT, JOSE"),
    ("numeric_sub", lambda a: a.mint(a.claims(sub=42)), "sub must be a string"),
    ("es256_der_signature", _es256_with_der_signature, "ES256 signatures are 64 bytes, this one is"),
    ("signature_not_base64url", lambda a: a.mint().rsplit(".", 1)[0] + ".+++", "signature is not base64url"),
]


@pytest.mark.parametrize("name,make,says", STILL_REFUSED, ids=[c[0] for c in STILL_REFUSED])
def test_what_is_still_refused_says_why(forms_envoy, authserver, name, make, says):
    denied(forms_envoy.get("/", token=make(authserver)), 401, "invalid_token", says)


def test_forms_envoy_never_panicked(forms_envoy):
    assert forms_envoy.alive()
    log = forms_envoy.log_text()
    assert "panicked" not in log and "wasm trap" not in log.lower(), log[-3000:]


def _fetches(authserver):
    stats = authserver.stats()
    return stats["jwks"], stats["discovery"]


@pytest.mark.parametrize("shared_data", ["auto", "off"])
def test_two_workers_share_one_key_fetch(start_envoy, filter_config, authserver, shared_data):
    """Keys are fetched once per Envoy process: the other worker (and the
    main thread's VM) load the copy in shared data. With shared_data off,
    each VM fetches for itself."""
    env = start_envoy(filter_config(top={"shared_data": shared_data}), concurrency=2)
    token = authserver.token()
    # Requests on many connections, so both workers verify tokens.
    for _ in range(20):
        r = harness.requests.get(env.base_url + "/", headers={"authorization": "Bearer " + token},
                                 timeout=10)
        assert r.status_code == 200, r.text
    jwks, discovery = _fetches(authserver)
    if shared_data == "auto":
        assert (jwks, discovery) == (1, 1), (jwks, discovery)
    else:
        # Two workers and the main thread's VM.
        assert jwks >= 2 and discovery >= 2, (jwks, discovery)
    print("key fetches with 2 workers, shared_data=%s: discovery %d, jwks %d" % (shared_data, discovery, jwks))
