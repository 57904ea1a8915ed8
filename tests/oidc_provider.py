"""oidc-provider (tests/oidc/server.mjs, an OpenID Certified provider on
Node.js) for the introspection interop tests; the `oidc_provider` fixture
in conftest.py starts one per module.

    op = OidcProvider.start(tmpdir)
    op.issuer                      # http://127.0.0.1:PORT
    op.discovery()                 # its /.well-known/openid-configuration
    tok = op.token("read write")   # opaque client_credentials token of client `app`
    op.introspect(tok)             # RFC 7662 answer to `pep` (client_secret_basic)
    op.introspect(tok, "pep-post", "pep-post-secret", auth="client_secret_post")
    op.introspect_response(tok, PEP_JWT, auth="private_key_jwt", assertion=jwt)   # RFC 7523
    op.revoke(tok)                 # RFC 7009, as `app`
    op.calls("introspection", tok) # introspection requests the provider saw for tok
    op.stop()

Node modules come from `make setup` (target node-deps: npm ci in tests/oidc).
"""

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path

import jwt as pyjwt
import requests

import harness

OIDC_DIR = harness.TESTS / "oidc"
SERVER = OIDC_DIR / "server.mjs"

# The clients of tests/oidc/server.mjs.
APP = ("app", "app-secret")                 # client_credentials, scopes "read write"
PEP = ("pep", "pep-secret")                 # introspection, client_secret_basic
PEP_POST = ("pep-post", "pep-post-secret")  # introspection, client_secret_post
PEP_JWT = ("pep-jwt", None)                 # introspection, private_key_jwt (keys below)
MCP_READER = ("mcp-reader", "mcp-reader-secret")  # with mcp_resources: client_credentials, scope "read"
MCP_ADMIN = ("mcp-admin", "mcp-admin-secret")     # with mcp_resources: scopes "read admin"

# pep-jwt's private JWKs (test keys), by kid: pep-jwt-es256 (ES256), pep-jwt-eddsa (EdDSA).
PEP_JWT_KEYS = {k["kid"]: k for k in json.loads((OIDC_DIR / "pep-jwt-keys.json").read_text())["keys"]}

_CALL = re.compile(r"CALL route=(\S+) client=(\S+) auth=(\S+) hint=(\S+) token=(\S+) status=(\d+) active=(\S+)"
                   r" jti=(\S+)")


def node_binary():
    node = os.environ.get("NODE") or shutil.which("node")
    if not node:
        raise RuntimeError("node not found (set NODE or put Node.js 20+ on PATH)")
    return node


def require_node_modules(package="oidc-provider"):
    if not (OIDC_DIR / "node_modules" / package / "package.json").is_file():
        raise RuntimeError("%s/node_modules missing: run `make setup` (or `make node-deps`)" % OIDC_DIR)


def token_digest(token):
    """How server.mjs names a token in its CALL log lines."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def is_jwt_shaped(token):
    parts = token.split(".")
    return len(parts) == 3 and all(re.fullmatch(r"[A-Za-z0-9_-]+", p) for p in parts)


class OidcProvider:
    def __init__(self, proc, port):
        self.proc, self.port = proc, port
        self.issuer = "http://127.0.0.1:%d" % port
        self.http = requests.Session()
        self._discovery = None

    @classmethod
    def start(cls, tmpdir, timeout=30, dpop=False, mcp_resources=(), jwt_introspection=False):
        """dpop: also DPoP-bound tokens and JWT access tokens for `resource=https://api.test`.
        mcp_resources: resource identifiers it issues JWT access tokens for (scopes read, admin)
        to the clients MCP_READER and MCP_ADMIN.
        jwt_introspection: RFC 9701 signed introspection answers for pep and pep-post."""
        require_node_modules()
        port = harness.free_port()
        env = {}
        if dpop:
            env["OIDC_DPOP"] = "1"
        if mcp_resources:
            env["OIDC_MCP_RESOURCE"] = ",".join(mcp_resources)
        if jwt_introspection:
            env["OIDC_JWT_INTROSPECTION"] = "1"
        env = env or None
        proc = harness.Proc("oidc-provider", [node_binary(), SERVER, port],
                            Path(tmpdir) / ("oidc-provider-%d.log" % port), cwd=OIDC_DIR, env=env)
        proc.wait_ready_line(timeout)
        op = cls(proc, port)
        try:
            harness.wait_until(lambda: op.discovery().get("issuer") == op.issuer, 10,
                               what="oidc-provider discovery document")
        except TimeoutError:
            op.stop()
            raise
        return op

    def stop(self):
        self.http.close()
        return self.proc.stop()

    def url(self, path):
        return self.issuer + path

    def discovery(self):
        if self._discovery is None:
            r = self.http.get(self.url("/.well-known/openid-configuration"), timeout=5)
            r.raise_for_status()
            self._discovery = r.json()
        return self._discovery

    def endpoint(self, name):
        """A discovery field, e.g. endpoint("introspection_endpoint")."""
        return self.discovery()[name]

    # --- OAuth ---
    def token_response(self, scope="read write", client=APP):
        data = {"grant_type": "client_credentials"}
        if scope is not None:
            data["scope"] = scope
        return self.http.post(self.endpoint("token_endpoint"), data=data, auth=client, timeout=10)

    def token(self, scope="read write", client=APP):
        """An access token (opaque) for `app` from the client_credentials grant."""
        r = self.token_response(scope, client)
        if r.status_code != 200:
            raise AssertionError("token request failed: %s %s" % (r.status_code, r.text[:500]))
        tok = r.json()["access_token"]
        if is_jwt_shaped(tok):
            raise AssertionError("oidc-provider issued a JWT, the tests need opaque tokens: %s" % tok[:60])
        return tok

    def client_assertion(self, kid="pep-jwt-es256", aud=None, jti=None, client_id=PEP_JWT[0], lifetime=60):
        """An RFC 7523 client assertion of pep-jwt, signed with its key `kid`,
        for `aud` (default: the introspection endpoint's URL)."""
        jwk = PEP_JWT_KEYS[kid]
        now = int(time.time())
        claims = {"iss": client_id, "sub": client_id, "aud": aud or self.endpoint("introspection_endpoint"),
                  "iat": now, "exp": now + lifetime, "jti": jti or secrets.token_hex(16)}
        return pyjwt.encode(claims, pyjwt.PyJWK(jwk).key, algorithm=jwk["alg"], headers={"kid": kid})

    def _authenticated(self, client, auth, data, assertion=None):
        if auth == "client_secret_basic":
            return {"data": data, "auth": client}
        if auth == "client_secret_post":
            return {"data": dict(data, client_id=client[0], client_secret=client[1])}
        if auth == "private_key_jwt":
            return {"data": dict(data, client_id=client[0], client_assertion=assertion or self.client_assertion(),
                                 client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer")}
        raise ValueError(auth)

    def introspect_response(self, token, client=PEP, auth="client_secret_basic", hint="access_token", assertion=None):
        data = {"token": token}
        if hint is not None:
            data["token_type_hint"] = hint
        return self.http.post(self.endpoint("introspection_endpoint"), timeout=10,
                              headers={"accept": "application/json"},
                              **self._authenticated(client, auth, data, assertion))

    def introspect(self, token, client=PEP, auth="client_secret_basic"):
        r = self.introspect_response(token, client, auth)
        if r.status_code != 200:
            raise AssertionError("introspection failed: %s %s" % (r.status_code, r.text[:500]))
        return r.json()

    def revoke(self, token, client=APP, auth="client_secret_basic"):
        """RFC 7009 revocation of an access token, by the client it was issued to."""
        r = self.http.post(self.endpoint("revocation_endpoint"), timeout=10,
                           **self._authenticated(client, auth, {"token": token, "token_type_hint": "access_token"}))
        if r.status_code != 200:
            raise AssertionError("revocation failed: %s %s" % (r.status_code, r.text[:500]))
        return r

    # --- what the provider saw ---
    def calls(self, route="introspection", token=None):
        """The requests server.mjs logged for route (introspection|revocation),
        optionally only those for `token`, as dicts: client, auth, hint, token
        (digest), status (int), active ("true"/"false"/"-"), jti (the client
        assertion's, "-" without one)."""
        out = []
        for line in self.proc.log_text().splitlines():
            m = _CALL.fullmatch(line.strip())
            if not m:
                continue
            c = dict(zip(("route", "client", "auth", "hint", "token", "status", "active", "jti"), m.groups()))
            c["status"] = int(c["status"])
            if c["route"] == route and (token is None or c["token"] == token_digest(token)):
                out.append(c)
        return out
