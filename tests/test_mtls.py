"""Certificate-bound access tokens (RFC 8705 §3) through a real Envoy that
terminates TLS with client certificates, against oidc-provider issuing
certificate-bound tokens (tests/oidc/server.mjs with OIDC_DPOP=1: client
`mtls-app`; the provider reads the client certificate from a test header),
as JWTs and as opaque tokens (the introspection answer carries `cnf`).

A test CA and two client certificates are made at test time. The filter
reads the connection's certificate digest
(`connection.sha256_peer_certificate_digest`) and compares it with
`cnf.x5t#S256`: the right certificate passes; another, none, plain HTTP or a
forged `x-forwarded-client-cert` get 401. Every refusal was a 200 before
(OAUTH_PEP_WASM=<older build>).
"""

import base64
import datetime
import hashlib
import ipaddress

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import harness
from oidc_provider import PEP, OidcProvider

pytestmark = pytest.mark.timeout(90)

RESOURCE = "https://api.test"
MTLS_APP = ("mtls-app", "mtls-app-secret")


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer, issuer_key, ca=False, server=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


class Pki:
    """A test CA, a server certificate for 127.0.0.1 and two client certificates, as files."""

    def __init__(self, d):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("oauth-pep test CA", ca_key, "oauth-pep test CA", ca_key, ca=True)
        self.ca = self._write(d, "ca", ca, None)
        server_key = ec.generate_private_key(ec.SECP256R1())
        self.server = self._write(d, "server", _cert("127.0.0.1", server_key, "oauth-pep test CA", ca_key,
                                                     server=True), server_key)
        self.clients = {}
        for name in ("alice", "mallory"):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _cert(name, key, "oauth-pep test CA", ca_key)
            self.clients[name] = self._write(d, name, cert, key) + (cert,)

    @staticmethod
    def _write(d, name, cert, key):
        pem = d / (name + ".pem")
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is None:
            return str(pem)
        key_path = d / (name + ".key")
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return str(pem), str(key_path)

    def x5t(self, name):
        der = self.clients[name][2].public_bytes(serialization.Encoding.DER)
        return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()

    def hex(self, name):
        return hashlib.sha256(self.clients[name][2].public_bytes(serialization.Encoding.DER)).hexdigest()

    def pem_header(self, name):
        return base64.b64encode(self.clients[name][2].public_bytes(serialization.Encoding.PEM)).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def op(tmp_path_factory):
    try:
        provider = OidcProvider.start(tmp_path_factory.mktemp("oidc-mtls"), dpop=True)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield provider
    provider.stop()


def bound_token(op, pki, name, jwt_format=True):
    data = {"grant_type": "client_credentials", "scope": "read write"}
    if jwt_format:
        data["resource"] = RESOURCE
    r = op.http.post(op.endpoint("token_endpoint"), data=data, auth=MTLS_APP, timeout=10,
                     headers={"x-test-client-cert": pki.pem_header(name)})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def filter_config(op, **extra):
    config = {
        "realm": "mtls",
        "issuers": [{"issuer": op.issuer, "audiences": "any", "discovery": True, "upstream": "op",
                     "introspection": {"client_id": PEP[0], "client_secret": PEP[1], "max_ttl_seconds": 5}}],
        "policy": {"GET /read": "read"},
    }
    config.update(extra)
    return config


def tls_listener(pki):
    def customize(b):
        chain = b["static_resources"]["listeners"][0]["filter_chains"][0]
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": False,
                "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": {"filename": pki.server[0]},
                                          "private_key": {"filename": pki.server[1]}}],
                    "validation_context": {"trusted_ca": {"filename": pki.ca}},
                },
            },
        }
    return customize


@pytest.fixture(scope="module")
def tls_env(wasm, op, echo, pki, tmp_path_factory):
    e = harness.Envoy.start(filter_config(op), tmp_path_factory.mktemp("envoy-mtls"), upstream_port=echo.port,
                            clusters={"op": op.port}, customize=tls_listener(pki), timeout=30)
    yield e
    e.stop()


@pytest.fixture(scope="module")
def plain_env(wasm, op, echo, tmp_path_factory):
    e = harness.Envoy.start(filter_config(op), tmp_path_factory.mktemp("envoy-plain"), upstream_port=echo.port,
                            clusters={"op": op.port}, timeout=30)
    yield e
    e.stop()


def tls_get(env, pki, token, client=None, headers=None):
    h = {"Authorization": "Bearer " + token}
    h.update(headers or {})
    cert = pki.clients[client][:2] if client else None
    last = None
    for _ in range(100):   # the first requests may wait for the keys
        last = requests.get("https://127.0.0.1:%d/read" % env.port, headers=h, cert=cert, verify=pki.ca,
                            timeout=10)
        if last.status_code != 503:
            return last
        harness.wait_until(lambda: True, 0.1)
    return last


def refused(r, reason):
    assert r.status_code == 401, (r.status_code, r.text[:400])
    assert r.json()["reason"] == reason, r.json()
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


@pytest.mark.parametrize("jwt_format", [True, False], ids=["jwt", "opaque"])
def test_the_right_certificate_passes_and_others_are_refused(tls_env, op, pki, jwt_format):
    token = bound_token(op, pki, "alice", jwt_format)
    if jwt_format:
        import jwt as pyjwt
        assert pyjwt.decode(token, options={"verify_signature": False})["cnf"]["x5t#S256"] == pki.x5t("alice")
    else:
        assert op.introspect(token)["cnf"]["x5t#S256"] == pki.x5t("alice")
    r = tls_get(tls_env, pki, token, "alice")
    assert r.status_code == 200, (r.status_code, r.text[:400])
    refused(tls_get(tls_env, pki, token, "mallory"), "certificate_mismatch")
    refused(tls_get(tls_env, pki, token), "certificate_missing")


def test_a_forged_xfcc_does_not_stand_in_for_the_certificate(tls_env, plain_env, op, pki):
    token = bound_token(op, pki, "alice")
    xfcc = {"x-forwarded-client-cert": "Hash=%s;Subject=\"CN=alice\"" % pki.hex("alice")}
    refused(tls_get(tls_env, pki, token, None, xfcc), "certificate_missing")
    refused(tls_get(tls_env, pki, token, "mallory", xfcc), "certificate_mismatch")
    harness.wait_until(lambda: plain_env.get("/read", token=token).status_code != 503, 20, interval=0.2,
                       what="keys")
    refused(plain_env.get("/read", token=token, headers=xfcc), "certificate_missing")


def test_an_unbound_token_passes_on_any_connection(tls_env, op, pki):
    r = op.http.post(op.endpoint("token_endpoint"), auth=("app", "app-secret"), timeout=10,
                     data={"grant_type": "client_credentials", "scope": "read write", "resource": RESOURCE})
    token = r.json()["access_token"]
    assert tls_get(tls_env, pki, token).status_code == 200
    assert tls_get(tls_env, pki, token, "mallory").status_code == 200


def test_xfcc_is_used_only_when_trusted(wasm, op, echo, pki, tmp_path_factory):
    """`client_certificate.source: "xfcc"` (Envoy behind a TLS terminator that sets it with
    SANITIZE_SET, and this Envoy keeping it: `forward_client_cert_details: ALWAYS_FORWARD_ONLY`, since
    Envoy's default SANITIZE removes it before any filter): the Hash of its one element is the
    certificate; two elements are none."""
    def forward_only(b):
        hcm = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["forward_client_cert_details"] = "ALWAYS_FORWARD_ONLY"

    e = harness.Envoy.start(filter_config(op, client_certificate={"source": "xfcc"}),
                            tmp_path_factory.mktemp("envoy-xfcc"), upstream_port=echo.port,
                            clusters={"op": op.port}, customize=forward_only, timeout=30)
    try:
        token = bound_token(op, pki, "alice")
        xfcc = lambda name: {"x-forwarded-client-cert": "By=spiffe://edge;Hash=%s;Subject=\"CN=%s\"" % (
            pki.hex(name), name)}
        r = None
        for _ in range(100):
            r = e.get("/read", token=token, headers=xfcc("alice"))
            if r.status_code != 503:
                break
            harness.wait_until(lambda: True, 0.1)
        assert r.status_code == 200, (r.status_code, r.text[:400])
        refused(e.get("/read", token=token, headers=xfcc("mallory")), "certificate_mismatch")
        refused(e.get("/read", token=token), "certificate_missing")
        two = {"x-forwarded-client-cert": "Hash=%s,Hash=%s" % (pki.hex("mallory"), pki.hex("alice"))}
        refused(e.get("/read", token=token, headers=two), "certificate_missing")
    finally:
        e.stop()
