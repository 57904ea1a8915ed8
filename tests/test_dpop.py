"""DPoP (RFC 9449) through a real Envoy, against oidc-provider issuing
DPoP-bound tokens (tests/oidc/server.mjs with OIDC_DPOP=1: `features.dPoP`,
JWT access tokens for `resource=https://api.test`, opaque ones otherwise,
whose introspection answer carries `cnf.jkt`), with proofs made by the npm
`dpop` client library (tests/oidc/dpop_proofs.mjs) for ES256, RS256 and
Ed25519 keys, and by hand (PyJWT) for the proofs no library would make.

The filter is configured as a user of the pre-DPoP filter could have
configured it to let DPoP clients in: the `authorization` header with the
`Bearer` or the `DPoP` prefix, no `dpop` field (the default, `allowed`).
Every refusal below was a 200 before (OAUTH_PEP_WASM=<older build>).
"""

import base64
import hashlib
import json
import secrets
import subprocess
import time

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

import harness
from oidc_provider import APP, OIDC_DIR, PEP, OidcProvider, node_binary

pytestmark = pytest.mark.timeout(90)

RESOURCE = "https://api.test"
JKT_HEADER = "x-oauth-dpop-jkt"


class Key:
    """A client's DPoP key: `lib_alg` is the alg the npm library signs with,
    `py_alg` the one PyJWT (and oidc-provider 8) names it."""

    def __init__(self, kind):
        if kind == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.jwk = ECAlgorithm.to_jwk(self.private, as_dict=True)
            self.py_alg = self.lib_alg = "ES256"
        elif kind == "RS256":
            self.private = rsa.generate_private_key(65537, 2048)
            self.jwk = RSAAlgorithm.to_jwk(self.private, as_dict=True)
            self.py_alg = self.lib_alg = "RS256"
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()
            self.jwk = OKPAlgorithm.to_jwk(self.private, as_dict=True)
            self.py_alg, self.lib_alg = "EdDSA", "Ed25519"
        for k in ("key_ops", "use", "alg"):
            self.jwk.pop(k, None)
        private_members = ("d", "p", "q", "dp", "dq", "qi")
        self.public = {k: v for k, v in self.jwk.items() if k not in private_members}

    @property
    def jkt(self):
        required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
        canon = json.dumps({k: self.public[k] for k in required[self.public["kty"]]},
                           separators=(",", ":"), sort_keys=True)
        return b64(hashlib.sha256(canon.encode()).digest())


def b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def ath(token):
    return b64(hashlib.sha256(token.encode()).digest())


def lib_proofs(requests_):
    """Proofs from the npm `dpop` library: [(key, htm, htu, token)] -> [proof]."""
    reqs = [{"jwk": key.jwk, "htm": htm, "htu": htu, "token": token} for key, htm, htu, token in requests_]
    out = subprocess.run([node_binary(), OIDC_DIR / "dpop_proofs.mjs"], input=json.dumps(reqs),
                         capture_output=True, text=True, timeout=30, cwd=OIDC_DIR)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def lib_proof(key, htm, htu, token):
    return lib_proofs([(key, htm, htu, token)])[0]


def py_proof(key, htm, htu, token=None, header=None, claims=None, sign_with=None, alg=None):
    """A proof made by hand; `header`/`claims` override (None values remove)."""
    h = {"typ": "dpop+jwt", "jwk": key.public}
    h.update(header or {})
    c = {"jti": secrets.token_urlsafe(16), "htm": htm, "htu": htu, "iat": int(time.time())}
    if token is not None:
        c["ath"] = ath(token)
    c.update(claims or {})
    h = {k: v for k, v in h.items() if v is not None}
    c = {k: v for k, v in c.items() if v is not None}
    return pyjwt.encode(c, sign_with or key.private, algorithm=alg or key.py_alg, headers=h)


def bound_token(op, key, jwt_format=True):
    """A client_credentials token of `app` bound to `key` (the token request's proof made by hand:
    oidc-provider 8 knows EdDSA, not the Ed25519 name the npm library uses)."""
    url = op.endpoint("token_endpoint")
    data = {"grant_type": "client_credentials", "scope": "read write"}
    if jwt_format:
        data["resource"] = RESOURCE
    r = op.http.post(url, data=data, auth=APP, timeout=10, headers={"DPoP": py_proof(key, "POST", url)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "DPoP", body
    return body["access_token"]


def bearer_token(op):
    r = op.http.post(op.endpoint("token_endpoint"), auth=APP, timeout=10,
                     data={"grant_type": "client_credentials", "scope": "read write", "resource": RESOURCE})
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "Bearer"
    return r.json()["access_token"]


@pytest.fixture(scope="module")
def op(tmp_path_factory):
    try:
        provider = OidcProvider.start(tmp_path_factory.mktemp("oidc-dpop"), dpop=True)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def keys():
    return {kind: Key(kind) for kind in ("ES256", "RS256", "Ed25519")}


@pytest.fixture(scope="module")
def env(wasm, op, echo, tmp_path_factory):
    config = {
        "realm": "dpop",
        "issuers": [{
            "issuer": op.issuer,
            "audiences": "any",   # opaque tokens' answers carry no aud
            "discovery": True,
            "upstream": "op",
            "introspection": {"client_id": PEP[0], "client_secret": PEP[1], "max_ttl_seconds": 5},
        }],
        "token_sources": [{"header": "authorization", "prefix": "Bearer"},
                          {"header": "authorization", "prefix": "DPoP"}],
        "policy": {"GET /read": "read", "POST /read": "read"},
    }
    e = harness.Envoy.start(config, tmp_path_factory.mktemp("envoy-dpop"), upstream_port=echo.port,
                            clusters={"op": op.port}, timeout=30)
    token = bearer_token(op)
    harness.wait_until(lambda: e.get("/read", token=token).status_code == 200, 20, interval=0.2,
                       what="the filter to load the provider's keys")
    yield e
    e.stop()


def htu(env, path="/read"):
    return "http://127.0.0.1:%d%s" % (env.port, path)


def dpop_get(env, token, proof, path="/read", method="GET", extra=None):
    headers = {"Authorization": "DPoP " + token}
    if proof is not None:
        headers["DPoP"] = proof
    headers.update(extra or {})
    return env.request(method, path, headers=headers)


def allowed(r):
    assert r.status_code == 200, (r.status_code, r.headers, r.text[:400])
    return r.json()["headers"]


def refused(r, reason, error="invalid_dpop_proof", status=401):
    assert r.status_code == status, (r.status_code, r.headers, r.text[:400])
    body = r.json()
    assert body["reason"] == reason, body
    if status == 401:
        www = r.headers["www-authenticate"]
        assert www.startswith("DPoP ") and 'error="%s"' % error in www and "algs=" in www, www
    return body


@pytest.mark.parametrize("kind", ["ES256", "RS256", "Ed25519"])
def test_a_bound_jwt_with_its_proof_from_the_dpop_library_passes(env, op, keys, kind):
    key = keys[kind]
    token = bound_token(op, key)
    claims = pyjwt.decode(token, options={"verify_signature": False})
    assert claims["cnf"]["jkt"] == key.jkt
    proof = lib_proof(key, "GET", htu(env), token)
    assert json.loads(base64.urlsafe_b64decode(proof.split(".")[0] + "==="))["alg"] == key.lib_alg
    headers = allowed(dpop_get(env, token, proof))
    assert headers[JKT_HEADER] == key.jkt
    assert "dpop" not in headers, "the proof is not forwarded"
    # A second request needs a proof of its own; the grant may be cached, the proof never is.
    allowed(dpop_get(env, token, lib_proof(key, "GET", htu(env), token)))


def test_an_opaque_bound_token_is_bound_through_introspection(env, op, keys):
    key = keys["ES256"]
    token = bound_token(op, key, jwt_format=False)
    assert op.introspect(token)["cnf"]["jkt"] == key.jkt
    headers = allowed(dpop_get(env, token, lib_proof(key, "GET", htu(env), token)))
    assert headers[JKT_HEADER] == key.jkt
    refused(env.get("/read", token=token), "dpop_downgrade", error="invalid_token")


def test_a_bound_jwt_sent_as_bearer_is_a_downgrade(env, op, keys):
    token = bound_token(op, keys["ES256"])
    refused(env.get("/read", token=token), "dpop_downgrade", error="invalid_token")


def test_a_proof_is_accepted_once(env, op, keys):
    key = keys["ES256"]
    token = bound_token(op, key)
    proof = lib_proof(key, "GET", htu(env), token)
    allowed(dpop_get(env, token, proof))
    refused(dpop_get(env, token, proof), "dpop_proof_replayed")


def test_two_dpop_headers_are_refused(env, op, keys):
    key = keys["ES256"]
    token = bound_token(op, key)
    one, two = lib_proofs([(key, "GET", htu(env), token)] * 2)
    r = harness.send_raw(env, "/read", headers=[("Authorization", "DPoP " + token), ("DPoP", one), ("DPoP", two)])
    assert r.status == 401, (r.status, r.body)
    assert r.json()["reason"] == "dpop_proof_invalid"


def test_the_dpop_scheme_without_a_proof_is_refused(env, op, keys):
    token = bound_token(op, keys["ES256"])
    refused(dpop_get(env, token, None), "dpop_proof_invalid")


def test_an_unbound_token_under_the_dpop_scheme_is_refused(env, op, keys):
    token = bearer_token(op)
    key = keys["ES256"]
    refused(dpop_get(env, token, lib_proof(key, "GET", htu(env), token)), "dpop_unbound", error="invalid_token")
    allowed(env.get("/read", token=token))


def test_a_proof_for_another_method_or_uri_is_refused(env, op, keys):
    key = keys["ES256"]
    token = bound_token(op, key)
    refused(dpop_get(env, token, lib_proof(key, "POST", htu(env), token)), "dpop_proof_invalid")
    refused(dpop_get(env, token, lib_proof(key, "GET", htu(env, "/other"), token)), "dpop_proof_invalid")
    wrong_host = "http://api.example.com:%d/read" % env.port
    refused(dpop_get(env, token, lib_proof(key, "GET", wrong_host, token)), "dpop_proof_invalid")
    # The query is not part of htu.
    allowed(dpop_get(env, token, lib_proof(key, "GET", htu(env) + "?x=1", token), path="/read?y=2"))


def test_a_proof_for_another_token_is_refused(env, op, keys):
    key = keys["ES256"]
    token, other = bound_token(op, key), bound_token(op, key)
    body = refused(dpop_get(env, token, lib_proof(key, "GET", htu(env), other)), "dpop_proof_invalid")
    assert "ath" in body["error_description"]


def test_a_proof_by_another_key_is_refused(env, op, keys):
    token = bound_token(op, keys["ES256"])
    proof = lib_proof(keys["RS256"], "GET", htu(env), token)
    refused(dpop_get(env, token, proof), "dpop_key_mismatch", error="invalid_token")


@pytest.mark.parametrize("case", [
    "typ", "alg_hs256", "alg_none", "private_jwk", "signature", "iat_old", "iat_future", "no_jti",
])
def test_each_proof_check(env, op, keys, case):
    key = keys["ES256"]
    token = bound_token(op, key)
    url = htu(env)
    if case == "typ":
        proof = py_proof(key, "GET", url, token, header={"typ": "JWT"})
    elif case == "alg_hs256":
        proof = py_proof(key, "GET", url, token, sign_with=b"k" * 32, alg="HS256")
    elif case == "alg_none":
        head = b64(json.dumps({"typ": "dpop+jwt", "alg": "none", "jwk": key.public}).encode())
        body = b64(json.dumps({"jti": "x", "htm": "GET", "htu": url, "iat": int(time.time()),
                               "ath": ath(token)}).encode())
        proof = head + "." + body + "."
    elif case == "private_jwk":
        proof = py_proof(key, "GET", url, token, header={"jwk": key.jwk})
    elif case == "signature":
        # Signed by another key, with this key's jwk: only the signature is wrong.
        proof = py_proof(key, "GET", url, token, sign_with=ec.generate_private_key(ec.SECP256R1()))
    elif case == "iat_old":
        proof = py_proof(key, "GET", url, token, claims={"iat": int(time.time()) - 600})
    elif case == "iat_future":
        proof = py_proof(key, "GET", url, token, claims={"iat": int(time.time()) + 600})
    else:
        proof = py_proof(key, "GET", url, token, claims={"jti": None})
    body = refused(dpop_get(env, token, proof), "dpop_proof_invalid")
    # The same hand-made proof with nothing wrong passes: the check above is what refused it.
    allowed(dpop_get(env, token, py_proof(key, "GET", url, token)))
    assert body["error"] == "invalid_dpop_proof"


def test_the_dpop_header_and_a_forged_thumbprint_header_do_not_reach_a_bearer_upstream(env, op):
    token = bearer_token(op)
    headers = allowed(env.get("/read", token=token, headers={"DPoP": "x.y.z", JKT_HEADER: "forged"}))
    assert "dpop" not in headers and JKT_HEADER not in headers, headers
