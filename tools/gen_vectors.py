#!/usr/bin/env python3
"""Generate fixed JWT test vectors for the Rust unit tests.

    .venv/bin/python tools/gen_vectors.py > core/tests/vectors.json

Signed with the keys in tests/keys, with FIXED times (iat/nbf 1700000000,
exp 1700003600); the Rust tests use now = 1700001000. Claims, headers and
the JWKS are deterministic; ECDSA and PSS signatures are randomised, so a
re-run changes those signatures (and nothing else).

JWKS kids: rsa1 (RS256), rsa1-ps (PS256), rsa1-any (same RSA key, no alg:
used by RS384/RS512/PS384/PS512), ec256 (ES256), ec384 (ES384), ed25519
(EdDSA), hs (oct, no alg: used by HS256/HS384/HS512).
"""

import base64
import json
import os
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from authserver import (  # noqa: E402
    b64url,
    encode_jwt,
    json_compact,
    load_keys,
    public_jwk,
    public_pem,
    sign_input,
)

ISS = "https://issuer.test"
AUD = "api"
NOW = 1700001000
HS_SECRET = "0123456789abcdef0123456789abcdef"
# Not UTF-8: configured as {"base64url": ...}.
HS_SECRET_BYTES = bytes(range(0xFF, 0xDF, -1))


def base_claims(**over):
    c = {
        "iss": ISS,
        "sub": "client-1",
        "client_id": "client-1",
        "aud": AUD,
        "scope": "read write",
        "iat": 1700000000,
        "nbf": 1700000000,
        "exp": 1700003600,
    }
    for k, v in over.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def main():
    keys = load_keys(os.path.join(ROOT, "tests", "keys"))
    rsa1, rsa2 = keys["rsa1"], keys["rsa2"]
    ec256, ec384, ed = keys["ec256"], keys["ec384"], keys["ed25519"]

    jwks = {
        "keys": [
            public_jwk(rsa1, "rsa1", "RS256"),
            public_jwk(rsa1, "rsa1-ps", "PS256"),
            public_jwk(rsa1, "rsa1-any"),
            public_jwk(ec256, "ec256", "ES256"),
            public_jwk(ec384, "ec384", "ES384"),
            public_jwk(ed, "ed25519", "EdDSA"),
            {"kid": "hs", "use": "sig", "kty": "oct", "k": b64url(HS_SECRET.encode())},
        ]
    }

    def tok(alg, kid, claims=None, key=None, secret=None, header_extra=None):
        header = {"alg": alg, "typ": "JWT"}
        if kid is not None:
            header["kid"] = kid
        header.update(header_extra or {})
        return encode_jwt(header, claims if claims is not None else base_claims(), key=key, secret=secret)

    t = {}
    t["good_RS256"] = tok("RS256", "rsa1", key=rsa1)
    t["good_RS384"] = tok("RS384", "rsa1-any", key=rsa1)
    t["good_RS512"] = tok("RS512", "rsa1-any", key=rsa1)
    t["good_PS256"] = tok("PS256", "rsa1-ps", key=rsa1)
    t["good_PS384"] = tok("PS384", "rsa1-any", key=rsa1)
    t["good_PS512"] = tok("PS512", "rsa1-any", key=rsa1)
    t["good_ES256"] = tok("ES256", "ec256", key=ec256)
    t["good_ES384"] = tok("ES384", "ec384", key=ec384)
    t["good_EdDSA"] = tok("EdDSA", "ed25519", key=ed)
    t["good_HS256"] = tok("HS256", "hs", secret=HS_SECRET)
    t["good_HS384"] = tok("HS384", "hs", secret=HS_SECRET)
    t["good_HS512"] = tok("HS512", "hs", secret=HS_SECRET)

    t["expired"] = tok("RS256", "rsa1", base_claims(exp=1700000500), key=rsa1)
    t["not_yet_valid"] = tok("RS256", "rsa1", base_claims(nbf=1700002000), key=rsa1)
    t["iat_in_future"] = tok("RS256", "rsa1", base_claims(iat=1700005000), key=rsa1)
    t["no_exp"] = tok("RS256", "rsa1", base_claims(exp=None), key=rsa1)
    t["wrong_aud"] = tok("RS256", "rsa1", base_claims(aud="other"), key=rsa1)
    t["wrong_iss"] = tok("RS256", "rsa1", base_claims(iss="https://evil.test"), key=rsa1)
    t["unknown_kid"] = tok("RS256", "nope", key=rsa1)
    t["no_kid_rs256"] = tok("RS256", None, key=rsa1)
    t["alg_none"] = tok("none", "rsa1")
    t["hs256_with_rsa_pubkey"] = tok("HS256", "rsa1", secret=public_pem(rsa1))

    # Flip one bit of the last signature byte: the signature really differs
    # (changing only the last base64url character may touch padding bits).
    h, p, s = t["good_RS256"].split(".")
    sig = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    sig[-1] ^= 0x01
    t["bad_signature"] = h + "." + p + "." + b64url(bytes(sig))

    t["rs256_signed_by_rsa2"] = tok("RS256", "rsa1", key=rsa2)
    t["es256_with_rsa_kid"] = tok("ES256", "rsa1", key=ec256)
    t["aud_array"] = tok("RS256", "rsa1", base_claims(aud=["other", "api"]), key=rsa1)
    t["malformed_two_parts"] = h + "." + p
    t["malformed_base64"] = h + ".%%%not*base64%%%." + s
    t["long_lifetime"] = tok("RS256", "rsa1", base_claims(exp=1700090000), key=rsa1)
    t["scp_array"] = tok("RS256", "rsa1", base_claims(scope=None, scp=["read", "write"]), key=rsa1)

    # What RFC 7515/7519 allow and a strict parser once refused after the
    # signature check: all verify.
    t["typ_jose"] = tok("RS256", "rsa1", key=rsa1, header_extra={"typ": "JOSE"})
    t["typ_at_jwt"] = tok("ES256", "ec256", key=ec256, header_extra={"typ": "at+jwt"})
    t["numeric_jti_and_nonce"] = tok("RS256", "rsa1", base_claims(jti=12345, nonce=7), key=rsa1)
    t["float_exp"] = tok("RS256", "rsa1", base_claims(exp=1700003600.5, nbf=1699999999.75), key=rsa1)
    t["embedded_own_jwk"] = tok("RS256", "rsa1", key=rsa1, header_extra={"jwk": public_jwk(rsa1, "rsa1")})
    t["good_HS256_binary_secret"] = tok("HS256", None, secret=HS_SECRET_BYTES)
    # ...and what is still refused, with its reason.
    t["float_exp_past"] = tok("RS256", "rsa1", base_claims(exp=1700000500.5), key=rsa1)
    t["negative_exp"] = tok("RS256", "rsa1", base_claims(exp=-1), key=rsa1)
    t["string_exp"] = tok("RS256", "rsa1", base_claims(exp="1700003600"), key=rsa1)
    t["numeric_sub"] = tok("RS256", "rsa1", base_claims(sub=42), key=rsa1)
    t["typ_other"] = tok("RS256", "rsa1", key=rsa1, header_extra={"typ": "secevent+jws"})
    t["crit_header"] = tok("RS256", "rsa1", key=rsa1, header_extra={"crit": ["exp"], "exp": 1})
    # The attacker's own key, embedded or pointed to, signed by it: the token
    # names the real kid, so the real key checks it and it fails.
    attacker = {"jwk": public_jwk(rsa2, "rsa1"), "jku": "https://evil.test/jwks",
                "x5u": "https://evil.test/cert", "x5c": ["MIIB"]}
    t["embedded_attacker_jwk"] = tok("RS256", "rsa1", key=rsa2, header_extra=attacker)
    mallory = ec.generate_private_key(ec.SECP256R1())
    t["embedded_attacker_jwk_no_kid"] = tok(
        "ES256", None, key=mallory, header_extra=dict(attacker, jwk=public_jwk(mallory, "mallory")))
    # A DER-encoded ECDSA signature (a common signer bug): JOSE wants r || s.
    h, p, _ = t["good_ES256"].split(".")
    der = ec256.sign((h + "." + p).encode(), ec.ECDSA(hashes.SHA256()))
    t["es256_der_signature"] = h + "." + p + "." + b64url(der)

    # sanity: alg none really has an empty signature
    assert t["alg_none"].endswith(".") and sign_input("none", None, b"") == b""
    assert json_compact({}) == "{}"

    out = {
        "issuer": ISS,
        "audience": AUD,
        "now": NOW,
        "hs_secret": HS_SECRET,
        "hs_secret_bytes_b64url": b64url(HS_SECRET_BYTES),
        "jwks": jwks,
        "tokens": t,
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
