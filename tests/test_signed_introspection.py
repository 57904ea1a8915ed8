"""Signed introspection answers (RFC 9701) through a real Envoy: with
`introspection.response: "jwt"` the filter asks for
`application/token-introspection+jwt` and accepts only a JWT signed with the
issuer's keys, `typ` token-introspection+jwt, `iss` the issuer, `aud` its
client id, `iat` fresh; anything else is a 503 and nothing is cached.

Against oidc-provider with features.jwtIntrospection (tests/oidc/server.mjs,
OIDC_JWT_INTROSPECTION=1), and tests/authserver.py's signed modes of
/_test/introspection for the failures (unsigned, wrong aud, wrong key, typ
JWT, plain JSON).
"""

import pytest
import requests

import harness
import oidc_provider as oidc_op
from oidc_provider import APP, PEP

pytestmark = pytest.mark.timeout(90)

AUTHSERVER_INTROSPECTION_CLIENTS = {"pep": "pep-secret"}


def fake_config(a):
    return {"realm": "signed-introspection",
            "issuers": [a.issuer_config(introspection={"endpoint": a.url("/introspect"), "client_id": "pep",
                                                       "client_secret": "pep-secret", "response": "jwt",
                                                       "max_ttl_seconds": 1})]}


def test_a_signed_answer_passes_and_every_broken_one_is_503_and_not_cached(start_envoy, authserver):
    a = authserver
    a.set_introspection_mode("jwt")
    env = start_envoy(fake_config(a))
    token = a.opaque()
    r = env.wait_status("/", 200, token=token, timeout=20)
    assert r.json()["headers"]["x-oauth-client-id"] == "demo-client"
    sent = a.stats()["last_introspection"]
    assert sent["headers"]["accept"] == "application/token-introspection+jwt", sent
    for mode in ("jwt_unsigned", "jwt_wrong_aud", "jwt_wrong_key", "jwt_typ_jwt", "ok"):
        a.set_introspection_mode(mode)
        fresh = a.opaque()
        before = a.stats()["introspect"]
        for _ in range(2):
            r = env.get("/", token=fresh)
            assert r.status_code == 503 and r.json()["reason"] == "introspection_unavailable", (mode, r.text)
        # Nothing cached: each request asked again.
        assert a.stats()["introspect"] - before == 2, mode
    # The server signs again: the same token passes.
    a.set_introspection_mode("jwt")
    assert env.get("/", token=fresh).status_code == 200


def test_a_signed_answer_is_not_an_access_token(start_envoy, authserver):
    a = authserver
    a.set_introspection_mode("jwt")
    env = start_envoy(fake_config(a))
    token = a.opaque()
    env.wait_status("/", 200, token=token, timeout=20)
    # What the endpoint signed, presented as the caller's token: the issuer's
    # key and iss, but an introspection answer (typ) is never a token.
    answer = requests.post(a.url("/introspect"), data={"token": token},
                                   auth=("pep", "pep-secret"), timeout=10).text
    assert answer.count(".") == 2, answer[:80]
    r = env.get("/", token=answer)
    assert r.status_code == 401, r.text


@pytest.fixture(scope="module")
def signing_op(tmp_path_factory):
    op = oidc_op.OidcProvider.start(tmp_path_factory.mktemp("oidc-jwt"), jwt_introspection=True)
    yield op
    op.stop()


def op_config(op):
    return {"realm": "signed-introspection-op",
            "issuers": [{"issuer": op.issuer, "audiences": "any", "discovery": True, "upstream": "op",
                         "introspection": {"client_id": PEP[0], "client_secret": PEP[1], "response": "jwt"}}]}


def test_oidc_provider_signed_answers_pass(wasm, signing_op, echo, tmp_path):
    op = signing_op
    env = harness.Envoy.start(op_config(op), tmp_path / "envoy", upstream_port=echo.port,
                              clusters={"op": op.port}, timeout=30)
    try:
        token = op.token("read write", APP)
        r = env.wait_status("/", 200, token=token, timeout=20)
        assert r.json()["headers"]["x-oauth-client-id"] == APP[0]
        assert [c["status"] for c in op.calls("introspection", token) if c["client"] == PEP[0]] == [200]
        # An unknown token: the signed answer says inactive (401), as a JSON one would.
        r = env.get("/", token="junk-" + "x" * 40)
        assert r.status_code == 401 and r.json()["reason"] == "token_inactive", r.text
    finally:
        env.stop()


def test_plain_json_from_oidc_provider_is_503_when_jwt_is_configured(wasm, oidc_provider, echo, tmp_path):
    op = oidc_provider   # without jwtIntrospection: it answers plain JSON
    env = harness.Envoy.start(op_config(op), tmp_path / "envoy", upstream_port=echo.port,
                              clusters={"op": op.port}, timeout=30)
    try:
        token = op.token("read write", APP)
        r = env.wait_status("/", 503, token=token, timeout=20)
        assert r.json()["reason"] == "introspection_unavailable", r.text
        # The provider answered (plain JSON, active): the filter refused it.
        assert 200 in [c["status"] for c in op.calls("introspection", token) if c["client"] == PEP[0]]
    finally:
        env.stop()
