#!/usr/bin/env python3
"""Demo / test OAuth 2.0 authorization server for oauth-pep.

THIS IS A TEST AND DEMO SERVER. It has unauthenticated control endpoints
(/_test/*) that let anyone mint arbitrary tokens, change the keys and break
the JWKS endpoint on purpose. Never expose it beyond 127.0.0.1.

Usage:
    python tests/authserver.py --port 9000 --issuer http://127.0.0.1:9000 \
        [--keys tests/keys] [--client ID:SECRET:"SCOPE SCOPE"]... \
        [--audience demo-api]... [--token-alg RS256] \
        [--introspection-client ID:SECRET]... \
        [--uma-resource ID:SCOPE,SCOPE]... [--uma-claims-scope SCOPE]...

Endpoints:
    GET  /.well-known/openid-configuration   (also /.well-known/oauth-authorization-server)
    GET  /jwks                               public keys (JWKS)
    POST /token                              client_credentials grant
    POST /introspect                         RFC 7662 token introspection
        form: token, token_type_hint. Client authentication by
        `Authorization: Basic base64(urlenc(id):urlenc(secret))` or by
        client_id/client_secret form fields (not both), against the
        introspection clients (--introspection-client, default pep:pep-secret);
        bad or missing -> 401 {"error": "invalid_client"}. Known tokens: the
        opaque tokens of /_test/opaque (claims as set, verbatim) and the JWTs
        this server issued (/token, /_test/mint: their claims, active while
        nbf <= now < exp). Anything else -> {"active": false}; an inactive
        token never reveals its claims.
    POST /_test/mint    {"claims": {...}, "kid": "rsa1", "alg": "RS256",
                         "header": {...}, "sign_with": "rsa2", "secret": "..."}
                        -> {"token": ...}
        * key: `sign_with` (a key file name in --keys, e.g. "rsa2", or a
          published kid) if given, else the key published under `kid`, else
          the first published key whose alg matches `alg`.
        * header kid: `kid` if present; `"kid": null` omits it; absent ->
          the kid of the chosen published key.
        * alg default: the alg of the published kid, else RS256.
        * "alg": "none" -> base64url(header).base64url(payload).
        * a "header" field given as null is left out ({"typ": null}: no typ).
        * HS256/384/512: secret = `secret` if given (a string: its UTF-8
          bytes; {"base64url": "..."}: those bytes), else if `sign_with`
          names a key, the PEM (SubjectPublicKeyInfo) of its PUBLIC key (the
          classic algorithm-confusion attack), else the default HS secret.
    POST /_test/jwks    {"mode": "ok"|"error500"|"garbage"|"huge"|"hang"|"close",
                         "delay_ms": N}
                        how /jwks and discovery answer from now on
                        (hang = sleep 30 s then close; close = drop connection),
                        each after delay_ms (default 0) in every mode
    POST /_test/rotate  {"add": "rsa2", "kid": "rsa2", "alg": "RS256"?} or
                        {"remove": "rsa1"}
    POST /_test/jwks-extra {"keys": [{...JWK...}, ...]}
                        published verbatim before the real keys (e.g. broken
                        or weak ones); {"keys": []} removes them
    POST /_test/discovery  {"override": {"issuer": "https://other"}}
                        fields replacing those of the discovery document
                        (and of uma2-configuration); null removes a field
    POST /token with token_format=opaque: an opaque token with the claims a
                        JWT would have (for the demo), answered by /introspect
    POST /_test/opaque  {"claims": {...}, "prefix": "..."} -> {"token": ...}
                        a new random opaque token (prefix + 43 base64url
                        chars) introspecting as the default claims (active
                        true, sub demo-user, client_id demo-client, scope
                        "read write", exp now+3600, iat now, iss the issuer,
                        aud "api", token_type "Bearer") updated by `claims`;
                        a claim given as null is left out.
                        {"token": t, "claims": {...}} updates t's claims
                        (null removes one); 404 if t is unknown.
    POST /_test/revoke  {"token": t}: t introspects as inactive from now on
    POST /_test/introspection {"mode": M, "delay_ms": N}
                        (M also jwt, jwt_unsigned, jwt_wrong_aud, jwt_wrong_key,
                        jwt_typ_jwt: RFC 9701 answers, see signed_introspection)
                        how /introspect answers from now on: ok | error500 |
                        error400 | garbage (200, JSON content type, not JSON)
                        | html (200 text/html page) | no_active (200 JSON
                        without "active") | huge (the right answer padded past
                        1 MiB) | hang (sleep 30 s, then drop the connection) |
                        close (drop the connection) | slow (the right answer
                        after delay_ms). delay_ms (default 0) delays every
                        mode's answer. Calls are counted in every mode.
    GET  /_test/stats   {"jwks": n, "discovery": n, "token": n, "introspect": n,
                         "introspect_by_token": {token: n},
                         "last_introspection": {...} or null}
                        last_introspection: method, path, headers (lowercased
                        names), form (every field, first value), auth_method
                        (client_secret_basic | client_secret_post | both |
                        none), client_id, client_authenticated, status
                        (what was answered; null for a fault without answer)
    POST /_test/token   {"mode": "ok"|"error500"|"garbage"|"hang", "expires_in": N,
                         "delay_ms": N}
                        how the client_credentials grant answers from now on
                        (each answer after delay_ms, default 0, once given);
                        answers {"last_request": {headers, form (no secret),
                        client_id}} of the last /token call, and
                        "last_by_client": {client_id: the same} per client
    POST /token grant_type=urn:ietf:params:oauth:grant-type:token-exchange (RFC 8693)
                        subject_token: a token this server issued or an opaque one it knows,
                        active (else 400 invalid_grant); answers a JWT (this server's
                        key) with the subject's sub and client_id, aud = `audience`,
                        scope = `scope`, act = {"sub": the client} (or the actor
                        token's client_id), exp = now + exchange expires_in;
                        issued_token_type the access token type
    POST /_test/exchange {"mode": one of EXCHANGE_MODES, "delay_ms": N, "expires_in": N}
                        how the exchange answers from now on: ok, error500,
                        garbage, hang, invalid_grant, invalid_request,
                        invalid_target, unauthorized_client (400 with that error),
                        wrong_type (issued_token_type id_token), dpop (token_type
                        DPoP), trusting (ok, but any JWT-shaped subject token is taken
                        as active, its claims unverified: bench/run.py's own tokens); answers {"calls": n, "last_request": {form (no
                        secret), client_id}}
    POST /_test/uma     {"resources": {id: [scopes]}, "permission_mode": "ok"|
                        "error500"|"garbage"|"hang", "permission_delay_ms": N,
                        "require_claims": bool,
                        "rpt_format": "opaque"|"jwt", "rpt_expires_in": N}
                        UMA settings; answers them with "permission_requests"
                        (headers and body of every permission request)

UMA 2.0 (seed 001's flows; see README "UMA 2.0"):
    GET  /.well-known/uma2-configuration   the metadata with permission_endpoint
    POST /uma/resource_set  (PAT) {"resource_scopes": [...], "_id"?} -> 201 {"_id"}
    POST /uma/permission    (PAT) {"resource_id", "resource_scopes"} -> 201 {"ticket"}
    POST /token grant_type=urn:ietf:params:oauth:grant-type:uma-ticket&ticket=T
                        [&claim_token=base64url({"country": "US", "city": "NY"})]
                        -> an RPT (introspects with "permissions"), or, when
                        claims are required and missing, 403 need_info with a
                        new ticket and redirect_user
    GET  /uma/gather_claims?ticket=T&claims_redirect_uri=U&country=US&city=NY
                        -> 302 to U?ticket=NEW (an HTML form without country/city)
    POST /_test/reset   reset modes, keys, counters and opaque tokens (the
                        --uma-resource registrations stay)

    --uma-resource ID:SCOPE,SCOPE   a resource registered at start, with `_id`
                        ID, as its resource server would with its PAT (the
                        filter's `uma.resources` name these ids)
    --uma-claims-scope SCOPE   seed 001's policy (country=US and city=NY) is
                        attached to this scope, as Gluu attaches an
                        uma_rpt_policy to a UMA scope: a ticket asking for it
                        gets need_info until the claims are there; other
                        scopes need none (unless /_test/uma require_claims)

Prints READY on stdout once listening. Logs go to stderr.
"""

import argparse
import base64
import hashlib
import hmac
import html
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from serving import serve

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_KEYS_DIR = os.path.join(HERE, "keys")
DEFAULT_HS_SECRET = "0123456789abcdef0123456789abcdef"

# kid -> (key file name, alg or None). The default published key set.
DEFAULT_PUBLISHED = [
    ("rsa1", "rsa1", "RS256"),
    ("rsa1-ps", "rsa1", "PS256"),
    ("ec256", "ec256", "ES256"),
    ("ec384", "ec384", "ES384"),
    ("ed25519", "ed25519", "EdDSA"),
]

HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
HASHLIB = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}


# --------------------------------------------------------------------------
# JOSE helpers (shared with tools/gen_vectors.py)
# --------------------------------------------------------------------------

UMA_GRANT = "urn:ietf:params:oauth:grant-type:uma-ticket"
EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
EXCHANGE_MODES = ("ok", "error500", "garbage", "hang", "invalid_grant", "invalid_request", "invalid_target",
                  "unauthorized_client", "wrong_type", "dpop", "trusting")


def b64url(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_uint(n, length=None):
    if length is None:
        length = max(1, (n.bit_length() + 7) // 8)
    return b64url(n.to_bytes(length, "big"))


def json_compact(obj):
    return json.dumps(obj, separators=(",", ":"))


def load_keys(keys_dir):
    """All PEM private keys in keys_dir, by file name without .pem."""
    keys = {}
    for fn in sorted(os.listdir(keys_dir)):
        if fn.endswith(".pem"):
            with open(os.path.join(keys_dir, fn), "rb") as f:
                keys[fn[:-4]] = serialization.load_pem_private_key(f.read(), password=None)
    return keys


def default_alg_for(key):
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[key.curve.name]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise ValueError("unsupported key type %r" % type(key))


def public_jwk(key, kid, alg=None):
    """Public JWK of a private key; `alg` omitted from the JWK when None."""
    pub = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        nums = pub.public_numbers()
        jwk = {"kty": "RSA", "n": b64url_uint(nums.n), "e": b64url_uint(nums.e)}
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        nums = pub.public_numbers()
        size = (key.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
        jwk = {"kty": "EC", "crv": crv, "x": b64url_uint(nums.x, size), "y": b64url_uint(nums.y, size)}
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    else:
        raise ValueError("unsupported key type")
    out = {"kid": kid, "use": "sig"}
    if alg:
        out["alg"] = alg
    out.update(jwk)
    return out


def public_pem(key):
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign_input(alg, key, signing_input, secret=None):
    """JWS signature bytes for `alg` over signing_input (bytes)."""
    if alg == "none":
        return b""
    fam, bits = alg[:2], alg[2:]
    if alg == "EdDSA":
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError("EdDSA needs an Ed25519 key")
        return key.sign(signing_input)
    if fam == "HS":
        if secret is None:
            raise ValueError("HS* needs a secret")
        if isinstance(secret, str):
            secret = secret.encode()
        return hmac.new(secret, signing_input, HASHLIB[bits]).digest()
    if fam == "RS":
        return key.sign(signing_input, padding.PKCS1v15(), HASHES[bits]())
    if fam == "PS":
        h = HASHES[bits]()
        return key.sign(
            signing_input, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h
        )
    if fam == "ES":
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("ES* needs an EC key")
        der = key.sign(signing_input, ec.ECDSA(HASHES[bits]()))
        r, s = decode_dss_signature(der)
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise ValueError("unsupported alg %r" % alg)


def encode_jwt(header, claims, key=None, secret=None):
    """Compact JWS. `header` must contain alg; fields are kept in order."""
    alg = header["alg"]
    signing_input = (b64url(json_compact(header)) + "." + b64url(json_compact(claims))).encode()
    sig = sign_input(alg, key, signing_input, secret=secret)
    return signing_input.decode() + "." + b64url(sig)


# --------------------------------------------------------------------------
# Server state
# --------------------------------------------------------------------------

class State:
    def __init__(self, args):
        self.args = args
        self.issuer = args.issuer.rstrip("/")
        self.prefix = urllib.parse.urlsplit(self.issuer).path.rstrip("/")
        self.keys = load_keys(args.keys)
        self.clients = {}
        for spec in args.client or ["demo-client:demo-secret:read write"]:
            cid, secret, scopes = (spec.split(":", 2) + [""])[:3]
            self.clients[cid] = (secret, scopes.split())
        self.audiences = args.audience or []
        self.introspection_clients = {}
        for spec in args.introspection_client or ["pep:pep-secret"]:
            cid, _, secret = spec.partition(":")
            self.introspection_clients[cid] = secret
        self.token_alg = args.token_alg
        self.preregistered = {}
        for spec in args.uma_resource or []:
            rid, sep, scopes = spec.partition(":")
            if not rid or not sep or not scopes:
                raise SystemExit("--uma-resource %r: expected ID:SCOPE,SCOPE" % spec)
            self.preregistered[rid] = {"name": rid, "resource_scopes": scopes.split(",")}
        self.claims_scopes = set(args.uma_claims_scope or [])
        self.lock = threading.Lock()
        # JWTs this server signed (token -> claims): they introspect as
        # themselves. Kept across resets (a token stays issued).
        self.issued = {}
        self.reset()

    def reset(self):
        with self.lock:
            self.mode = "ok"
            self.jwks_delay_ms = 0  # before every /jwks and discovery answer
            self.published = [
                {"kid": kid, "key": name, "alg": alg}
                for kid, name, alg in DEFAULT_PUBLISHED
                if name in self.keys
            ]
            self.stats = {"jwks": 0, "discovery": 0, "token": 0, "uma2_discovery": 0, "permission": 0}
            self.extra_keys = []
            self.discovery_override = {}
            self.introspection_mode = "ok"
            self.introspection_delay_ms = 0
            self.introspect_total = 0
            self.introspect_by_token = {}
            self.last_introspection = None
            self.opaque = {}  # token -> claims, as /introspect answers them
            # The client_credentials grant: a fault mode, the expires_in it
            # gives, and the last request (to check client authentication).
            self.token_mode = "ok"
            self.token_delay_ms = 0
            self.token_expires_in = 300
            self.last_token_request = None
            self.token_requests_by_client = {}
            # The token exchange grant (RFC 8693).
            self.exchange_mode = "ok"
            self.exchange_delay_ms = 0
            self.exchange_expires_in = 300
            self.exchange_calls = 0
            self.last_exchange = None
            # UMA 2.0: registered resources, tickets, the permission
            # endpoint's fault mode, and whether seed 001's claims policy
            # (country=US and city=NY) applies.
            self.uma_resources = {rid: dict(r) for rid, r in self.preregistered.items()}  # id -> {"name", "resource_scopes"}
            self.tickets = {}  # ticket -> {"permissions": [...], "claims": {...}}
            self.permission_mode = "ok"
            self.permission_delay_ms = 0
            self.permission_requests = []
            self.uma_require_claims = False
            self.rpt_format = "opaque"
            self.rpt_expires_in = 300

    def stats_doc(self):
        with self.lock:
            return dict(self.stats, introspect=self.introspect_total,
                        introspect_by_token=dict(self.introspect_by_token),
                        last_introspection=self.last_introspection)

    def default_opaque_claims(self):
        now = int(time.time())
        return {"active": True, "sub": "demo-user", "client_id": "demo-client", "scope": "read write",
                "exp": now + 3600, "iat": now, "iss": self.issuer, "aud": "api", "token_type": "Bearer"}

    def introspect(self, token):
        """The RFC 7662 answer for `token`."""
        with self.lock:
            claims = self.opaque.get(token)
            issued = self.issued.get(token)
        if claims is not None:
            return dict(claims) if claims.get("active") is True else {"active": False}
        if issued is not None:
            now = time.time()
            exp, nbf = issued.get("exp"), issued.get("nbf")
            if (isinstance(exp, (int, float)) and exp <= now) or (isinstance(nbf, (int, float)) and nbf > now):
                return {"active": False}
            return dict(issued, active=True)
        return {"active": False}

    def signed_introspection(self, doc, client_id, mode="jwt"):
        """An RFC 9701 answer: `doc` in token_introspection, signed with the
        RS256 key (jwt), or broken as `mode` says: jwt_unsigned (alg none),
        jwt_wrong_aud, jwt_wrong_key (rsa2 under rsa1's kid), jwt_typ_jwt."""
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": "someone-else" if mode == "jwt_wrong_aud" else client_id,
                  "iat": now, "jti": uuid.uuid4().hex, "token_introspection": doc}
        header = {"alg": "RS256", "kid": "rsa1",
                  "typ": "JWT" if mode == "jwt_typ_jwt" else "token-introspection+jwt"}
        if mode == "jwt_unsigned":
            header["alg"] = "none"
            return encode_jwt(header, claims)
        key = self.keys["rsa2" if mode == "jwt_wrong_key" else "rsa1"]
        return encode_jwt(header, claims, key=key)

    def count(self, what):
        with self.lock:
            self.stats[what] += 1

    def find_kid(self, kid):
        for p in self.published:
            if p["kid"] == kid:
                return p
        return None

    def find_alg(self, alg):
        for p in self.published:
            if p["alg"] == alg:
                return p
        return None

    def jwks(self):
        with self.lock:
            return {
                "keys": list(self.extra_keys)
                + [public_jwk(self.keys[p["key"]], p["kid"], p["alg"]) for p in self.published]
            }

    def discovery(self):
        scopes = sorted({s for _, sc in self.clients.values() for s in sc})
        doc = {
            "issuer": self.issuer,
            "jwks_uri": self.issuer + "/jwks",
            "token_endpoint": self.issuer + "/token",
            "introspection_endpoint": self.issuer + "/introspect",
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": ["token"],
            "scopes_supported": scopes,
            "id_token_signing_alg_values_supported": sorted({p["alg"] for p in self.published if p["alg"]}),
            "subject_types_supported": ["public"],
        }
        with self.lock:
            doc.update(self.discovery_override)
        # A null override removes the field (e.g. jwks_uri, optional in RFC 8414).
        return {k: v for k, v in doc.items() if v is not None}

    def uma2_discovery(self):
        """UMA 2.0 Grant §2 / Federated Authorization §2: the AS metadata
        with the UMA endpoints."""
        doc = self.discovery()
        doc.update({
            "permission_endpoint": self.issuer + "/uma/permission",
            "resource_registration_endpoint": self.issuer + "/uma/resource_set",
            "claims_interaction_endpoint": self.issuer + "/uma/gather_claims",
            "uma_profiles_supported": [],
            "grant_types_supported": ["client_credentials", UMA_GRANT],
        })
        return doc

    def bearer_scopes(self, header):
        """The scopes of an active token this server issued, from an
        `Authorization: Bearer` header; None if there is none."""
        if not header or header[:7].lower() != "bearer ":
            return None
        doc = self.introspect(header[7:].strip())
        if not doc.get("active"):
            return None
        return (doc.get("scope") or "").split()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "oauth-pep-test-authserver/1"
    state = None  # set in main()

    def log_message(self, fmt, *args):
        sys.stderr.write("authserver: %s %s\n" % (self.address_string(), fmt % args))

    # --- plumbing ---
    def _body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(65537)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status, body, ctype="application/json", extra=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json_in(self):
        raw = self._body()
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    def _route(self):
        path = urllib.parse.urlsplit(self.path).path
        pfx = self.state.prefix
        if pfx and path.startswith(pfx + "/"):
            path = path[len(pfx):]
        return path

    def _broken(self):
        """Apply the /_test/jwks mode (after its delay); True if the response was handled."""
        mode, delay = self.state.mode, self.state.jwks_delay_ms
        if delay:
            time.sleep(delay / 1000.0)
        if mode == "ok":
            return False
        if mode == "error500":
            self._send(500, {"error": "server_error"})
        elif mode == "garbage":
            self._send(200, "<html>this is not json{{{", ctype="application/json")
        elif mode == "huge":
            # A valid JWKS padded past the filter's 1 MiB reply limit.
            doc = dict(self.state.jwks(), padding="x" * (2 << 20))
            self._send(200, doc)
        elif mode == "hang":
            time.sleep(30)
            self._drop()
        elif mode == "close":
            self._drop()
        return True

    def _drop(self):
        self.close_connection = True
        try:
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # --- methods ---
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        st = self.state
        path = self._route()
        if path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
            st.count("discovery")
            if not self._broken():
                self._send(200, st.discovery())
        elif path == "/.well-known/uma2-configuration":
            st.count("uma2_discovery")
            if not self._broken():
                self._send(200, st.uma2_discovery())
        elif path == "/uma/gather_claims":
            self._gather_claims()
        elif path == "/uma/resource_set":
            with st.lock:
                self._send(200, sorted(st.uma_resources))
        elif path == "/jwks":
            st.count("jwks")
            if not self._broken():
                self._send(200, st.jwks(), ctype="application/jwk-set+json")
        elif path == "/_test/stats":
            self._send(200, st.stats_doc())
        elif path == "/healthz":
            self._send(200, {"ok": True})
        else:
            self._send(404, {"error": "not_found", "path": path})

    def do_POST(self):
        path = self._route()
        if path == "/token":
            self.state.count("token")
            return self._token()
        if path == "/introspect":
            return self._introspect()
        if path == "/uma/permission":
            self.state.count("permission")
            return self._permission()
        if path == "/uma/resource_set":
            return self._register_resource()
        if path.startswith("/_test/"):
            body = self._json_in()
            if not isinstance(body, dict):
                return self._send(400, {"error": "body must be a JSON object"})
            fn = getattr(self, "_t_" + path[len("/_test/"):].replace("-", "_"), None)
            if fn is None:
                return self._send(404, {"error": "not_found", "path": path})
            try:
                return fn(body)
            except (ValueError, KeyError, TypeError) as e:
                return self._send(400, {"error": "bad_request", "detail": repr(e)})
        self._body()
        self._send(404, {"error": "not_found", "path": path})

    # --- /token ---
    def _oauth_error(self, status, error, desc, extra=None):
        self._send(status, {"error": error, "error_description": desc}, extra=extra)

    def _token(self):
        st = self.state
        form = urllib.parse.parse_qs(self._body().decode("utf-8", "replace"), keep_blank_values=True)
        f = {k: v[0] for k, v in form.items()}
        cid = secret = None
        auth = self.headers.get("Authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                dec = base64.b64decode(auth[6:].strip()).decode()
                u, _, p = dec.partition(":")
                cid, secret = urllib.parse.unquote_plus(u), urllib.parse.unquote_plus(p)
            except ValueError:
                cid = None
        elif "client_id" in f:
            cid, secret = f.get("client_id"), f.get("client_secret")
        client = st.clients.get(cid)
        if client is None or not hmac.compare_digest(client[0].encode(), (secret or "").encode()):
            return self._oauth_error(
                401, "invalid_client", "client authentication failed",
                extra={"WWW-Authenticate": 'Basic realm="authserver"'},
            )
        grant = f.get("grant_type")
        with st.lock:
            st.last_token_request = {
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "form": {k: v for k, v in f.items() if k != "client_secret"},
                "client_id": cid,
            }
            st.token_requests_by_client[str(cid)] = st.last_token_request
            mode, delay = st.token_mode, st.token_delay_ms
        if grant == EXCHANGE_GRANT:
            return self._exchange(cid, f)
        if delay:
            time.sleep(delay / 1000.0)
        if mode == "error500":
            return self._oauth_error(500, "server_error", "the token endpoint is broken (test mode)")
        if mode == "garbage":
            return self._send(200, "<html>not a token", ctype="text/html")
        if mode == "hang":
            time.sleep(30)
            return self._drop()
        if not grant:
            return self._oauth_error(400, "invalid_request", "missing grant_type")
        if grant == UMA_GRANT:
            return self._uma_grant(cid, f)
        if grant != "client_credentials":
            return self._oauth_error(400, "unsupported_grant_type", "only client_credentials")
        registered = client[1]
        if "scope" in f:
            req = f["scope"].split()
            bad = [s for s in req if s not in registered]
            if bad:
                return self._oauth_error(400, "invalid_scope", "not allowed: " + " ".join(bad))
            scopes = req
        else:
            scopes = registered
        now = int(time.time())
        claims = {"iss": st.issuer, "sub": cid, "client_id": cid}
        if st.audiences:
            claims["aud"] = st.audiences[0] if len(st.audiences) == 1 else list(st.audiences)
        claims.update({
            "scope": " ".join(scopes),
            "iat": now, "nbf": now, "exp": now + st.token_expires_in, "jti": uuid.uuid4().hex,
        })
        if f.get("token_format") == "opaque":
            # A reference token (not standard OAuth: how the demo asks for one),
            # answered by /introspect.
            token = b64url(os.urandom(32))
            with st.lock:
                st.opaque[token] = dict(claims, active=True, token_type="Bearer")
            return self._send(200, {
                "access_token": token, "token_type": "Bearer",
                "expires_in": st.token_expires_in, "scope": " ".join(scopes),
            })
        pub = st.find_alg(st.token_alg)
        if pub is None:
            return self._oauth_error(500, "server_error", "no published key for " + st.token_alg)
        header = {"alg": st.token_alg, "typ": "JWT", "kid": pub["kid"]}
        token = encode_jwt(header, claims, key=st.keys[pub["key"]])
        with st.lock:
            st.issued[token] = claims
        self._send(200, {
            "access_token": token, "token_type": "Bearer",
            "expires_in": st.token_expires_in, "scope": " ".join(scopes),
        })

    def _exchange(self, cid, f):
        """RFC 8693 token exchange, in the /_test/exchange mode."""
        st = self.state
        with st.lock:
            st.exchange_calls += 1
            st.last_exchange = {"form": {k: v for k, v in f.items() if k != "client_secret"}, "client_id": cid}
            mode, delay, expires_in = st.exchange_mode, st.exchange_delay_ms, st.exchange_expires_in
        if delay:
            time.sleep(delay / 1000.0)
        if mode == "error500":
            return self._oauth_error(500, "server_error", "the token endpoint is broken (test mode)")
        if mode == "garbage":
            return self._send(200, "<html>not a token", ctype="text/html")
        if mode == "hang":
            time.sleep(30)
            return self._drop()
        if mode in ("invalid_grant", "invalid_request", "invalid_target", "unauthorized_client"):
            return self._oauth_error(400, mode, "refused (test mode)")
        if f.get("subject_token_type") != ACCESS_TOKEN_TYPE:
            return self._oauth_error(400, "invalid_request", "subject_token_type must be the access token type")
        subject = st.introspect(f.get("subject_token", ""))
        if mode == "trusting":
            # bench/run.py: tokens it minted itself, which this server never issued; their
            # claims read unverified (a test server only).
            try:
                payload = f.get("subject_token", "").split(".")[1]
                subject = dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))),
                               active=True)
            except (IndexError, ValueError):
                subject = {"active": False}
        if subject.get("active") is not True:
            return self._oauth_error(400, "invalid_grant", "subject_token is not active")
        act = {"sub": cid}
        if "actor_token" in f:
            actor = st.introspect(f["actor_token"])
            if actor.get("active") is not True:
                return self._oauth_error(400, "invalid_grant", "actor_token is not active")
            act = {"sub": actor.get("client_id")}
        now = int(time.time())
        claims = {"iss": st.issuer, "sub": subject.get("sub"), "client_id": subject.get("client_id"),
                  "act": act, "iat": now, "nbf": now, "exp": now + expires_in, "jti": uuid.uuid4().hex}
        for name in ("audience", "resource"):
            if name in f:
                claims["aud"] = f[name]
                break
        if "scope" in f:
            claims["scope"] = f["scope"]
        pub = st.find_alg(st.token_alg)
        token = encode_jwt({"alg": st.token_alg, "typ": "JWT", "kid": pub["kid"]}, claims, key=st.keys[pub["key"]])
        with st.lock:
            st.issued[token] = claims
        issued_type = "urn:ietf:params:oauth:token-type:id_token" if mode == "wrong_type" else ACCESS_TOKEN_TYPE
        self._send(200, {
            "access_token": token, "issued_token_type": issued_type,
            "token_type": "DPoP" if mode == "dpop" else "Bearer", "expires_in": expires_in,
        })

    def _t_exchange(self, body):
        mode = body.get("mode")
        if mode is not None and mode not in EXCHANGE_MODES:
            raise ValueError("mode must be one of " + "|".join(EXCHANGE_MODES))
        with self.state.lock:
            if mode is not None:
                self.state.exchange_mode = mode
            if "delay_ms" in body:
                self.state.exchange_delay_ms = int(body["delay_ms"] or 0)
            if "expires_in" in body:
                self.state.exchange_expires_in = int(body["expires_in"])
            doc = {"mode": self.state.exchange_mode, "calls": self.state.exchange_calls,
                   "last_request": self.state.last_exchange}
        self._send(200, doc)

    # --- /introspect ---
    def _introspect(self):
        st = self.state
        raw = self._body()
        form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
        f = {k: v[0] for k, v in form.items()}
        token = f.get("token")
        auth = self.headers.get("Authorization")
        basic = auth is not None and auth[:6].lower() == "basic "
        posted = "client_id" in f or "client_secret" in f
        method = ("both" if basic and posted else "client_secret_basic" if basic
                  else "client_secret_post" if posted else "none")
        cid = secret = None
        if method == "client_secret_basic":
            try:
                u, sep, p = base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")
                if sep:
                    cid, secret = urllib.parse.unquote_plus(u), urllib.parse.unquote_plus(p)
            except ValueError:
                pass
        elif method == "client_secret_post":
            cid, secret = f.get("client_id"), f.get("client_secret")
        expected = st.introspection_clients.get(cid)
        authenticated = (expected is not None and secret is not None
                         and hmac.compare_digest(expected.encode(), secret.encode()))
        record = {
            "method": self.command, "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "form": f, "body": raw.decode("utf-8", "replace"),
            "auth_method": method, "client_id": cid, "client_authenticated": authenticated,
            "status": None, "mode": None,
        }
        with st.lock:
            st.introspect_total += 1
            if token is not None:
                st.introspect_by_token[token] = st.introspect_by_token.get(token, 0) + 1
            st.last_introspection = record
            mode, delay = st.introspection_mode, st.introspection_delay_ms
        record["mode"] = mode

        def answer(status, body, ctype="application/json", extra=None):
            record["status"] = status
            self._send(status, body, ctype=ctype, extra=extra)

        if delay:
            time.sleep(delay / 1000.0)  # every mode ("slow" is "ok" after it)
        if mode == "hang":
            time.sleep(30)
            return self._drop()
        if mode == "close":
            return self._drop()
        if mode == "error500":
            return answer(500, {"error": "server_error"})
        if mode == "error400":
            return answer(400, {"error": "invalid_request", "error_description": "introspection refused"})
        if mode == "garbage":
            return answer(200, '{"active": true, "sub": "x"', ctype="application/json")
        if mode == "html":
            return answer(200, "<!DOCTYPE html><html><body><h1>Sign in</h1></body></html>",
                          ctype="text/html; charset=utf-8")
        if not authenticated:
            return answer(401, {"error": "invalid_client", "error_description": "client authentication failed"},
                          extra={"WWW-Authenticate": 'Basic realm="authserver"'})
        if token is None:
            return answer(400, {"error": "invalid_request", "error_description": "missing token"})
        doc = st.introspect(token)
        if mode == "no_active":
            doc.pop("active", None)
            doc.setdefault("sub", "demo-user")
        elif mode == "huge":
            doc["padding"] = "x" * ((1 << 20) + 4096)
        if mode.startswith("jwt"):
            return answer(200, st.signed_introspection(doc, cid, mode).encode(),
                          ctype="application/token-introspection+jwt")
        answer(200, doc)

    # --- UMA 2.0 ---
    def _register_resource(self):
        """Federated Authorization §3.2: a resource, registered with the PAT."""
        st = self.state
        scopes = st.bearer_scopes(self.headers.get("Authorization"))
        doc = self._json_in()
        if scopes is None or "uma_protection" not in scopes:
            return self._oauth_error(401, "invalid_token", "a PAT (scope uma_protection) is required")
        if not isinstance(doc, dict) or not isinstance(doc.get("resource_scopes"), list):
            return self._oauth_error(400, "invalid_request", "resource_scopes is required")
        rid = doc.get("_id") or uuid.uuid4().hex
        with st.lock:
            st.uma_resources[rid] = {"name": doc.get("name", rid), "resource_scopes": doc["resource_scopes"]}
        self._send(201, {"_id": rid})

    def _permission(self):
        """Federated Authorization §4: a permission ticket for the resource
        (and scopes) the resource server asks about, with the PAT."""
        st = self.state
        raw = self._body()
        auth = self.headers.get("Authorization")
        with st.lock:
            mode, delay = st.permission_mode, st.permission_delay_ms
            st.permission_requests.append({"headers": {k.lower(): v for k, v in self.headers.items()},
                                           "body": raw.decode("utf-8", "replace")})
        if delay:
            time.sleep(delay / 1000.0)
        if mode == "error500":
            return self._oauth_error(500, "server_error", "the permission endpoint is broken (test mode)")
        if mode == "garbage":
            return self._send(201, "{\"tick", ctype="application/json")
        if mode == "hang":
            time.sleep(30)
            return self._drop()
        scopes = st.bearer_scopes(auth)
        if scopes is None or "uma_protection" not in scopes:
            return self._oauth_error(401, "invalid_token", "a PAT (scope uma_protection) is required",
                                     extra={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        try:
            doc = json.loads(raw)
        except ValueError:
            return self._oauth_error(400, "invalid_request", "the body is not JSON")
        requests_ = doc if isinstance(doc, list) else [doc]
        permissions = []
        with st.lock:
            for r in requests_:
                rid = r.get("resource_id") if isinstance(r, dict) else None
                res = st.uma_resources.get(rid)
                if res is None:
                    return self._oauth_error(400, "invalid_resource_id", "unknown resource %r" % rid)
                wanted = r.get("resource_scopes") or []
                bad = [x for x in wanted if x not in res["resource_scopes"]]
                if bad:
                    return self._oauth_error(400, "invalid_scope", "not a scope of the resource: %s" % bad)
                permissions.append({"resource_id": rid, "resource_scopes": wanted})
            ticket = uuid.uuid4().hex
            st.tickets[ticket] = {"permissions": permissions, "claims": {}}
        self._send(201, {"ticket": ticket})

    def _uma_grant(self, cid, f):
        """UMA 2.0 Grant §3.3: the ticket for an RPT, or need_info with a
        new ticket and the claims gathering URL (seed 001's policy)."""
        st = self.state
        ticket = f.get("ticket")
        with st.lock:
            entry = st.tickets.pop(ticket, None) if ticket else None
            require_all = st.uma_require_claims
            rpt_format, lifetime = st.rpt_format, st.rpt_expires_in
        if entry is None:
            return self._oauth_error(400, "invalid_grant", "the ticket is unknown or was used")
        require = require_all or any(s in st.claims_scopes for p in entry["permissions"]
                                     for s in p["resource_scopes"])
        claims = dict(entry["claims"])
        if f.get("claim_token"):
            # Pushed claims (§3.3.1): base64url JSON, a format this demo server defines.
            try:
                pad = "=" * (-len(f["claim_token"]) % 4)
                claims.update(json.loads(base64.urlsafe_b64decode(f["claim_token"] + pad)))
            except ValueError:
                return self._oauth_error(400, "invalid_request", "claim_token is not base64url JSON")
        if require and not (claims.get("country") == "US" and claims.get("city") == "NY"):
            new = uuid.uuid4().hex
            with st.lock:
                st.tickets[new] = {"permissions": entry["permissions"], "claims": claims}
            return self._send(403, {
                "error": "need_info", "ticket": new,
                "required_claims": [
                    {"name": "country", "friendly_name": "country", "claim_type": "string",
                     "claim_token_format": ["https://demo.oauth-pep/claims+json"]},
                    {"name": "city", "friendly_name": "city", "claim_type": "string",
                     "claim_token_format": ["https://demo.oauth-pep/claims+json"]},
                ],
                "redirect_user": st.issuer + "/uma/gather_claims",
            })
        now = int(time.time())
        exp = now + lifetime
        perms = [dict(p, exp=exp) for p in entry["permissions"]]
        claims = {"iss": st.issuer, "sub": cid, "client_id": cid, "iat": now, "exp": exp,
                  "permissions": perms, "scope": ""}
        if st.audiences:
            claims["aud"] = st.audiences[0]
        if rpt_format == "jwt":
            pub = st.find_alg(st.token_alg)
            header = {"alg": st.token_alg, "typ": "JWT", "kid": pub["kid"]}
            token = encode_jwt(header, claims, key=st.keys[pub["key"]])
            with st.lock:
                st.issued[token] = claims
        else:
            token = b64url(os.urandom(32))
            with st.lock:
                st.opaque[token] = dict(claims, active=True, token_type="Bearer")
        self._send(200, {"access_token": token, "token_type": "Bearer", "expires_in": lifetime,
                         "upgraded": False})

    def _gather_claims(self):
        """Claims gathering by redirect (UMA 2.0 Grant §3.3.2): the user's
        browser brings the ticket; country and city come from the form (or
        the query), and the browser goes back with a new ticket."""
        st = self.state
        q = {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).items()}
        ticket, back = q.get("ticket"), q.get("claims_redirect_uri")
        with st.lock:
            entry = st.tickets.get(ticket) if ticket else None
        if entry is None or not back:
            return self._send(400, {"error": "invalid_request", "error_description": "ticket and claims_redirect_uri are required"})
        if "country" not in q or "city" not in q:
            form = ("<!DOCTYPE html><html><body><form method=get>"
                    "<input type=hidden name=ticket value=%s><input type=hidden name=claims_redirect_uri value=%s>"
                    "Country <input name=country> City <input name=city> <button>Send</button></form></body></html>"
                    % (html.escape(ticket, quote=True), html.escape(back, quote=True)))
            return self._send(200, form, ctype="text/html; charset=utf-8")
        new = uuid.uuid4().hex
        with st.lock:
            st.tickets.pop(ticket, None)
            st.tickets[new] = {"permissions": entry["permissions"],
                               "claims": dict(entry["claims"], country=q["country"], city=q["city"])}
        sep = "&" if "?" in back else "?"
        target = back + sep + urllib.parse.urlencode({"authorization_state": "claims_submitted", "ticket": new,
                                                       **({"state": q["state"]} if "state" in q else {})})
        self._send(302, {"location": target}, extra={"Location": target})

    def _t_token(self, body):
        modes = ("ok", "error500", "garbage", "hang")
        mode = body.get("mode")
        if mode is not None and mode not in modes:
            raise ValueError("mode must be one of " + "|".join(modes))
        with self.state.lock:
            if mode is not None:
                self.state.token_mode = mode
            mode = self.state.token_mode
            if "expires_in" in body:
                self.state.token_expires_in = int(body["expires_in"])
            if "delay_ms" in body:
                self.state.token_delay_ms = int(body["delay_ms"] or 0)
            last = self.state.last_token_request
            by_client = dict(self.state.token_requests_by_client)
        self._send(200, {"mode": mode, "last_request": last, "last_by_client": by_client})

    def _t_uma(self, body):
        st = self.state
        modes = ("ok", "error500", "garbage", "hang")
        with st.lock:
            for rid, scopes in (body.get("resources") or {}).items():
                st.uma_resources[rid] = {"name": rid, "resource_scopes": list(scopes)}
            if "permission_mode" in body:
                if body["permission_mode"] not in modes:
                    raise ValueError("permission_mode must be one of " + "|".join(modes))
                st.permission_mode = body["permission_mode"]
            if "permission_delay_ms" in body:
                st.permission_delay_ms = int(body["permission_delay_ms"] or 0)
            if "require_claims" in body:
                st.uma_require_claims = bool(body["require_claims"])
            if "rpt_format" in body:
                st.rpt_format = body["rpt_format"]
            if "rpt_expires_in" in body:
                st.rpt_expires_in = int(body["rpt_expires_in"])
            doc = {"resources": dict(st.uma_resources), "permission_requests": list(st.permission_requests),
                   "permission_mode": st.permission_mode, "require_claims": st.uma_require_claims}
        self._send(200, doc)

    # --- /_test/* ---
    def _t_opaque(self, body):
        st = self.state
        claims = body.get("claims") or {}
        if not isinstance(claims, dict):
            raise ValueError("claims must be an object")
        if "token" in body:
            token = body["token"]
            with st.lock:
                if token not in st.opaque:
                    return self._send(404, {"error": "unknown token"})
                st.opaque[token] = {k: v for k, v in dict(st.opaque[token], **claims).items() if v is not None}
                out = dict(st.opaque[token])
            return self._send(200, {"token": token, "claims": out})
        prefix = body.get("prefix") or ""
        token = prefix + b64url(os.urandom(32))
        doc = {k: v for k, v in dict(st.default_opaque_claims(), **claims).items() if v is not None}
        with st.lock:
            st.opaque[token] = doc
        self._send(200, {"token": token, "claims": doc})

    def _t_revoke(self, body):
        st = self.state
        token = body["token"]
        with st.lock:
            if token in st.opaque:
                st.opaque[token]["active"] = False
            elif token in st.issued:
                st.opaque[token] = {"active": False}
            else:
                return self._send(404, {"error": "unknown token"})
        self._send(200, {"revoked": token})

    def _t_introspection(self, body):
        modes = ("ok", "error500", "error400", "garbage", "html", "no_active", "huge", "hang", "close", "slow",
                 "jwt", "jwt_unsigned", "jwt_wrong_aud", "jwt_wrong_key", "jwt_typ_jwt")
        mode = body.get("mode")
        if mode not in modes:
            raise ValueError("mode must be one of " + "|".join(modes))
        delay = int(body.get("delay_ms") or 0)
        with self.state.lock:
            self.state.introspection_mode, self.state.introspection_delay_ms = mode, delay
        self._send(200, {"mode": mode, "delay_ms": delay})

    def _t_mint(self, body):
        st = self.state
        claims = body.get("claims") or {}
        alg = body.get("alg")
        kid_given = "kid" in body
        kid = body.get("kid")
        sign_with = body.get("sign_with")
        with st.lock:
            pub = st.find_kid(kid) if kid else None
            if alg is None:
                alg = (pub or {}).get("alg") or "RS256"
            if pub is None and not kid_given and alg not in ("none",) and not alg.startswith("HS"):
                pub = st.find_alg(alg)
                if pub is None and alg[:2] in ("RS", "PS"):
                    pub = st.find_kid("rsa1")
        key = None
        if sign_with:
            name = sign_with
            if name not in st.keys:
                p = st.find_kid(name)
                if p is None:
                    raise ValueError("unknown key %r" % name)
                name = p["key"]
            key = st.keys[name]
        elif pub is not None:
            key = st.keys[pub["key"]]
        elif alg[:2] in ("RS", "PS"):
            key = st.keys["rsa1"]
        elif alg[:2] == "ES":
            key = st.keys["ec384" if alg == "ES384" else "ec256"]
        elif alg == "EdDSA":
            key = st.keys["ed25519"]
        secret = None
        if alg.startswith("HS"):
            if isinstance(body.get("secret"), dict):
                b64 = body["secret"]["base64url"]
                secret = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
            elif "secret" in body:
                secret = body["secret"]
            elif sign_with:
                secret = public_pem(key)
            else:
                secret = DEFAULT_HS_SECRET
        header = {"alg": alg, "typ": "JWT"}
        hkid = kid if kid_given else (pub or {}).get("kid")
        if hkid is not None:
            header["kid"] = hkid
        header.update(body.get("header") or {})
        header["alg"] = (body.get("header") or {}).get("alg", alg)
        # A header field given as null is left out (a token without `typ`).
        header = {k: v for k, v in header.items() if v is not None}
        signing_input = (b64url(json_compact(header)) + "." + b64url(json_compact(claims))).encode()
        sig = sign_input(alg, key, signing_input, secret=secret)
        token = signing_input.decode() + "." + b64url(sig)
        if isinstance(claims, dict):
            with st.lock:
                st.issued[token] = claims
        self._send(200, {"token": token})

    def _t_jwks(self, body):
        mode = body.get("mode")
        if mode not in ("ok", "error500", "garbage", "huge", "hang", "close"):
            raise ValueError("mode must be ok|error500|garbage|huge|hang|close")
        delay = int(body.get("delay_ms") or 0)
        with self.state.lock:
            self.state.mode, self.state.jwks_delay_ms = mode, delay
        self._send(200, {"mode": mode, "delay_ms": delay})

    def _t_rotate(self, body):
        st = self.state
        with st.lock:
            if body.get("add"):
                name = body["add"]
                if name not in st.keys:
                    raise ValueError("no key file %r" % name)
                kid = body.get("kid") or name
                alg = body.get("alg", default_alg_for(st.keys[name]))
                st.published = [p for p in st.published if p["kid"] != kid]
                st.published.append({"kid": kid, "key": name, "alg": alg})
            if body.get("remove"):
                st.published = [p for p in st.published if p["kid"] != body["remove"]]
            kids = [p["kid"] for p in st.published]
        self._send(200, {"kids": kids})

    def _t_jwks_extra(self, body):
        keys = body.get("keys")
        if not isinstance(keys, list):
            raise ValueError("keys must be a list")
        with self.state.lock:
            self.state.extra_keys = keys
        self._send(200, {"extra": len(keys)})

    def _t_discovery(self, body):
        override = body.get("override")
        if not isinstance(override, dict):
            raise ValueError("override must be an object")
        with self.state.lock:
            self.state.discovery_override = override
        self._send(200, {"override": override})

    def _t_reset(self, body):
        self.state.reset()
        self._send(200, {"reset": True})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--issuer", default=None, help="default http://HOST:PORT")
    ap.add_argument("--keys", default=DEFAULT_KEYS_DIR)
    ap.add_argument("--client", action="append", help='ID:SECRET:"scope scope" (repeatable)')
    ap.add_argument("--audience", action="append", help="aud of /token tokens (repeatable)")
    ap.add_argument("--token-alg", default="RS256")
    ap.add_argument("--introspection-client", action="append",
                    help="ID:SECRET allowed to call /introspect (repeatable; default pep:pep-secret)")
    ap.add_argument("--uma-resource", action="append", help="ID:SCOPE,SCOPE registered at start (repeatable)")
    ap.add_argument("--uma-claims-scope", action="append",
                    help="a UMA scope that needs the claims country=US, city=NY (repeatable)")
    args = ap.parse_args(argv)
    if args.issuer is None:
        args.issuer = "http://%s:%d" % (args.host, args.port)
    Handler.state = State(args)
    serve(Handler, args.host, args.port, "READY %s" % args.issuer)


if __name__ == "__main__":
    main()
