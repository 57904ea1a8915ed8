#!/usr/bin/env python3
"""`make bench`: oauth-pep against pass-through, a no-op wasm filter and
Envoy's native jwt_authn, on the pinned Envoy, one worker, 127.0.0.1.

Every configuration runs in its own Envoy (all started once, side by side,
each with --concurrency 1 and a direct_response route). wrk -t1 -c16 drives
one row at a time for DURATION seconds; the rows are interleaved (row 1..N,
then again) and each row's figure is the median of REPEATS runs. A Lua script
(bench/rotate.lua) sends `Authorization: Bearer <token>` rotating through a
token file written here; rows whose tokens must never repeat (bad
signatures, which a negative cache could otherwise remember) get a fresh file
per run, and the table says if a run had to wrap around.

Before measuring, each row's first token is sent once and its status checked
(200 for valid tokens, 401 for rejected ones); during a run, wrk's count of
non-2xx answers must be 0 (valid rows) or all requests (rejected rows), else
the row is marked.

    .venv/bin/python bench/run.py [--duration 3] [--repeats 3] [--only 'NAME;NAME...'] [--keep]

Prints the table and writes bench/RESULTS.md.
"""

import argparse
import base64
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import harness  # noqa: E402
from authserver import b64url, encode_jwt, json_compact, load_keys, public_jwk  # noqa: E402

BENCH = ROOT / "bench"
LUA = BENCH / "rotate.lua"
NOOP_WASM = ROOT / "target" / "bench-noop" / "wasm32-wasip1" / "release" / "bench_noop.wasm"
ROUTES = [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}]
PATH = "/r999/1"  # the path every row requests (a rule of the 1,000-rule policy)
KIDS = {"RS256": ("rsa1", "rsa1"), "ES256": ("ec256", "ec256"), "PS256": ("rsa1-ps", "rsa1"),
        "EdDSA": ("ed25519", "ed25519")}
ROTATING = 2000      # distinct tokens of the rotating rows
FRESH = 3000         # valid tokens per run of a row that needs each new (a token exchange each)
UNIQUE = 40000       # tokens per run of the rows that must never repeat a token
# DPoP rows: the client's key (a test key, not the issuer's), by proof alg.
DPOP_KEYS = {"ES256": "ec256", "EdDSA": "ed25519"}


# --------------------------------------------------------------------------
# tokens
# --------------------------------------------------------------------------

class Tokens:
    def __init__(self, auth, workdir):
        self.auth, self.dir = auth, Path(workdir)
        self.keys = load_keys(harness.TESTS / "keys")
        self.now = int(time.time())

    def claims(self, **over):
        c = {"iss": self.auth.issuer, "sub": "bench-user", "client_id": "demo-client", "aud": "api",
             "scope": "read write", "iat": self.now, "nbf": self.now, "exp": self.now + 3600,
             "jti": uuid.uuid4().hex}
        c.update(over)
        return c

    def jwt(self, alg="RS256", **over):
        kid, key = KIDS[alg]
        return encode_jwt({"alg": alg, "typ": "JWT", "kid": kid}, self.claims(**over), self.keys[key])

    def forgery(self, template):
        """A token with the template's real header (e.g. kid rsa1, RS256), valid-looking fresh
        claims and a random signature: a random number below the key's
        modulus, so that every forgery costs a full RSA check (random bytes
        at or above the modulus are refused before any arithmetic)."""
        head, _, sig = template.split(".")
        size = len(base64_decode(sig))
        modulus = self.keys["rsa1"].public_key().public_numbers().n
        forged = (int.from_bytes(os.urandom(size + 8), "big") % modulus).to_bytes(size, "big")
        return "%s.%s.%s" % (head, b64url(json.dumps(self.claims(), separators=(",", ":"))), b64url(forged))

    def dpop_key(self, alg):
        key = self.keys[DPOP_KEYS[alg]]
        jwk = {k: v for k, v in public_jwk(key, "x").items() if k not in ("kid", "use", "alg")}
        required = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}[jwk["kty"]]
        canon = json_compact({k: jwk[k] for k in sorted(required)})
        return key, jwk, b64url(hashlib.sha256(canon.encode()).digest())

    def dpop_token(self, alg):
        """An RS256 access token bound to the DPoP key of `alg` (cnf.jkt)."""
        return self.jwt(cnf={"jkt": self.dpop_key(alg)[2]})

    def dpop_lines(self, alg, token, htu, n):
        """`token<TAB>proof` lines, each proof for GET `htu`, fresh (iat now), never repeated."""
        key, jwk, _ = self.dpop_key(alg)
        header = {"typ": "dpop+jwt", "alg": alg, "jwk": jwk}
        ath = b64url(hashlib.sha256(token.encode()).digest())
        now = int(time.time())
        return ["%s\t%s" % (token, encode_jwt(header, {"jti": uuid.uuid4().hex, "htm": "GET", "htu": htu,
                                                       "iat": now, "ath": ath}, key))
                for _ in range(n)]

    def write(self, name, tokens):
        p = self.dir / ("%s.tokens" % name)
        p.write_text("\n".join(tokens) + "\n")
        return p


def base64_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


# --------------------------------------------------------------------------
# Envoy configurations
# --------------------------------------------------------------------------

def replace_filter(new_filter):
    """`customize` for harness.bootstrap: the wasm filter replaced by
    `new_filter` (None: removed, leaving only the router)."""
    def edit(b):
        hcm = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = ([new_filter] if new_filter else []) + hcm["http_filters"][1:]
    return edit


def jwt_authn(auth, jwks, cache):
    provider = {"issuer": auth.issuer, "audiences": ["api"], "forward": True,
                "local_jwks": {"inline_string": json.dumps(jwks)}}
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 4096}
    return {"name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"as": provider},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "as"}}]}}


def pep_config(auth, **top):
    cfg = {"issuers": [auth.issuer_config()]}
    cfg.update(top)
    return cfg


def envoy_specs(auth):
    """name -> (description, kwargs for harness.Envoy.start)."""
    jwks = auth.jwks()
    discovery = requests.get(auth.url("/.well-known/openid-configuration"), timeout=10).json()
    policy = {"GET /r%d/{id}" % i: "read" for i in range(1000)}
    introspection = {"client_id": "pep", "client_secret": "pep-secret",
                     "endpoint": discovery["introspection_endpoint"]}
    return {
        "pass": dict(filter_config="", customize=replace_filter(None)),
        "noop": dict(filter_config="", wasm_path=NOOP_WASM),
        "native_nocache": dict(filter_config="", customize=replace_filter(jwt_authn(auth, jwks, False))),
        "native_cache": dict(filter_config="", customize=replace_filter(jwt_authn(auth, jwks, True))),
        "pep": dict(filter_config=pep_config(auth)),
        # The same configuration, for the rejection rows: the cached rows
        # above measure an Envoy that never saw a forgery.
        "pep_reject": dict(filter_config=pep_config(auth)),
        "pep_nocache_host": dict(filter_config=pep_config(auth, token_cache_entries=0, crypto="host")),
        "pep_nocache_wasm": dict(filter_config=pep_config(auth, token_cache_entries=0, crypto="wasm")),
        "pep_policy": dict(filter_config=pep_config(auth, policy=policy)),
        "pep_introspect": dict(filter_config={"issuers": [auth.issuer_config(introspection=introspection)]}),
        # Upstream OAuth with a token exchange (RFC 8693) at the authserver, per caller token;
        # the budget raised so that one address (wrk) is never refused.
        "pep_exchange": dict(filter_config=pep_config(
            auth, clients={"backend": {"issuer": auth.issuer, "client_id": "demo-client",
                                       "client_secret": "demo-secret"}},
            upstream_oauth=[{"client": "backend", "virtual_hosts": ["all"],
                             "exchange": {"audience": "https://backend.test",
                                          "budget": {"per_second": 1000000}}}])),
        # DPoP: the token's grant cached, a fresh proof per request (its signature never cached).
        "pep_dpop_host": dict(filter_config=pep_config(auth, crypto="host")),
        "pep_dpop_wasm": dict(filter_config=pep_config(auth, crypto="wasm")),
    }


# --------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------

class Row:
    def __init__(self, name, envoy, tokens, status, native=None, unique=False, note="", forge="RS256", dpop=None,
                 fresh=False):
        """unique: never-repeated forgeries of a `forge` token (its header and kid) each run, or with
        `dpop` (the proof alg) never-repeated proofs: lines `token<TAB>proof`, made fresh per run.
        fresh: never-repeated valid tokens, made fresh per run (each one a new token exchange)."""
        self.name, self.envoy, self.tokens, self.status = name, envoy, tokens, status
        self.native, self.unique, self.note, self.forge = native, unique, note, forge
        self.dpop, self.fresh = dpop, fresh
        self.runs = []      # parsed wrk results
        self.flags = set()


EXCHANGE_ROWS = ["oauth-pep, token exchange, 1 token (exchange cached)",
                 "oauth-pep, token exchange, a new token per request (one exchange each)"]

DPOP_ROWS = ["oauth-pep, DPoP ES256 proof per request, token cached, crypto host",
             "oauth-pep, DPoP ES256 proof per request, token cached, crypto wasm",
             "oauth-pep, DPoP EdDSA proof per request, token cached (wasm)"]


def make_rows(tok, auth, only):
    t1 = tok.jwt()
    rotating = [tok.jwt() for _ in range(ROTATING)]
    distinct = {alg: [tok.jwt(alg) for _ in range(ROTATING)] for alg in KIDS}
    expired = [tok.jwt(iat=tok.now - 7200, nbf=tok.now - 7200, exp=tok.now - 3600) for _ in range(ROTATING)]
    w = tok.write
    one, rot = w("one", [t1]), w("rotating", rotating)
    dist = {alg: w("distinct-" + alg, ts) for alg, ts in distinct.items()}
    garbage, exp = w("garbage", ["garbage"]), w("expired", expired)
    forged = "forged"  # files written per run (unique)
    rows = [
        Row("pass-through (no filter)", "pass", one, 200),
        Row("no-op wasm filter (floor)", "noop", one, 200),
        Row("native jwt_authn, cache, 1 token", "native_cache", one, 200),
        Row("native jwt_authn, cache, 2,000 rotating", "native_cache", rot, 200),
        Row("native jwt_authn, no cache, RS256 distinct", "native_nocache", dist["RS256"], 200),
        Row("native jwt_authn, no cache, ES256 distinct", "native_nocache", dist["ES256"], 200),
        Row("native jwt_authn, no cache, PS256 distinct", "native_nocache", dist["PS256"], 200),
        Row("native jwt_authn, no cache, EdDSA distinct", "native_nocache", dist["EdDSA"], 200),
        Row("native jwt_authn, bad-signature RS256 forgeries", "native_cache", forged, 401, unique=True),
        Row("native jwt_authn, bad-signature PS256 forgeries", "native_cache", forged, 401, unique=True,
            forge="PS256"),
        Row("native jwt_authn, garbage token", "native_cache", garbage, 401),
        Row("native jwt_authn, expired RS256 (2,000 rotating)", "native_cache", exp, 401),
        Row("oauth-pep, 1 token (cached)", "pep", one, 200, native="native jwt_authn, cache, 1 token"),
        Row("oauth-pep, 2,000 rotating (cached)", "pep", rot, 200,
            native="native jwt_authn, cache, 2,000 rotating"),
        Row("oauth-pep, RS256 distinct, cache off, crypto host", "pep_nocache_host", dist["RS256"], 200,
            native="native jwt_authn, no cache, RS256 distinct"),
        Row("oauth-pep, RS256 distinct, cache off, crypto wasm", "pep_nocache_wasm", dist["RS256"], 200,
            native="native jwt_authn, no cache, RS256 distinct"),
        Row("oauth-pep, ES256 distinct, cache off, crypto host", "pep_nocache_host", dist["ES256"], 200,
            native="native jwt_authn, no cache, ES256 distinct"),
        Row("oauth-pep, ES256 distinct, cache off, crypto wasm", "pep_nocache_wasm", dist["ES256"], 200,
            native="native jwt_authn, no cache, ES256 distinct"),
        Row("oauth-pep, PS256 distinct, cache off (wasm)", "pep_nocache_host", dist["PS256"], 200,
            native="native jwt_authn, no cache, PS256 distinct",
            note="PS* and EdDSA always run in wasm (Envoy's verify_signature has no PSS or EdDSA)"),
        Row("oauth-pep, EdDSA distinct, cache off (wasm)", "pep_nocache_host", dist["EdDSA"], 200,
            native="native jwt_authn, no cache, EdDSA distinct"),
        Row("oauth-pep, bad-signature RS256 forgeries", "pep_reject", forged, 401, unique=True,
            native="native jwt_authn, bad-signature RS256 forgeries"),
        Row("oauth-pep, 1 token (cached), after the forgeries", "pep_reject", one, 200,
            native="native jwt_authn, cache, 1 token",
            note="the same Envoy right after the forgery row: see the notes"),
        Row("oauth-pep, bad-signature RS256 forgeries, crypto host", "pep_nocache_host", forged, 401, unique=True,
            native="native jwt_authn, bad-signature RS256 forgeries"),
        Row("oauth-pep, bad-signature RS256 forgeries, crypto wasm", "pep_nocache_wasm", forged, 401, unique=True,
            native="native jwt_authn, bad-signature RS256 forgeries"),
        Row("oauth-pep, bad-signature PS256 forgeries", "pep_reject", forged, 401, unique=True, forge="PS256",
            native="native jwt_authn, bad-signature PS256 forgeries",
            note="PS* is checked in wasm whatever `crypto` says (Envoy's verify_signature has no PSS): the "
                 "cost of a rejected signature a caller may choose where a key serves PS*; an RSA key "
                 "without `alg` serves PS* only where the issuer lists it (README, Keys)"),
        Row("oauth-pep, garbage token", "pep_reject", garbage, 401, native="native jwt_authn, garbage token"),
        Row("oauth-pep, expired RS256 (2,000 rotating)", "pep_reject", exp, 401,
            native="native jwt_authn, expired RS256 (2,000 rotating)"),
        Row("oauth-pep, 1,000-rule policy, 1 token (cached)", "pep_policy", one, 200,
            native="native jwt_authn, cache, 1 token",
            note="ratio to the cached-token row: see the targets"),
        Row("oauth-pep, opaque token, introspection cache hit", "pep_introspect",
            w("opaque", [auth.opaque(scope="read write")]), 200),
        Row(EXCHANGE_ROWS[0], "pep_exchange", one, 200, native="native jwt_authn, cache, 1 token",
            note="upstream OAuth `exchange`: the caller's token verified from the cache, the exchanged "
                 "token from the per-worker exchange cache; the ratio to the plain cached token is in the notes"),
        Row(EXCHANGE_ROWS[1], "pep_exchange", one, 200, unique=True, fresh=True,
            native="native jwt_authn, cache, 1 token",
            note="each request a new caller token (signature checked) and one token exchange at the test "
                 "authorization server (Python, on the same machine: its latency bounds this row)"),
        Row(DPOP_ROWS[0], "pep_dpop_host", tok.dpop_token("ES256"), 200, unique=True, dpop="ES256",
            native="native jwt_authn, cache, 1 token",
            note="DPoP: the bound token's grant is cached, each request's proof is new (one proof signature "
                 "check and one replay-table write per request); the ratio to the plain cached token is in "
                 "the notes"),
        Row(DPOP_ROWS[1], "pep_dpop_wasm", tok.dpop_token("ES256"), 200, unique=True, dpop="ES256",
            native="native jwt_authn, cache, 1 token"),
        Row(DPOP_ROWS[2], "pep_dpop_host", tok.dpop_token("EdDSA"), 200, unique=True, dpop="EdDSA",
            native="native jwt_authn, cache, 1 token",
            note="EdDSA proofs always run in wasm (Envoy's verify_signature has no EdDSA)"),
    ]
    if only:
        keep = set(only)
        for r in list(rows):  # keep the references of what is kept
            if r.envoy in keep or r.name in keep:
                for ref in ("pass-through (no filter)", "no-op wasm filter (floor)", r.native):
                    keep.add(ref)
        rows = [r for r in rows if r.name in keep or r.envoy in keep]
    return rows


# --------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url, token_file, duration, start=0):
    argv = ["wrk", "-t1", "-c16", "-d%ds" % duration, "--latency", "-s", str(LUA), url, "--",
            str(token_file), str(start)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30).stdout
    res = {"raw": out}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s)", out)
    res["requests"] = int(m.group(1))
    res["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    res["p50"] = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    res["p99"] = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    res["socket_errors"] = m.group(1) if m else ""
    return res


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pgid):
    """User + system CPU time of every process in process group `pgid` (the
    harness starts Envoy, behind its Python launcher, in its own group)."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def machine():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    envoy = subprocess.run([harness.ENVOY_BIN, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version: \S+/([\d.]+)/", envoy)
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "envoy": m.group(1) if m else envoy.strip(),
            "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split(" Copyright")[0].strip(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "wasm": harness.WASM.stat().st_size, "noop": NOOP_WASM.stat().st_size}


def fmt_ratio(a, b):
    return "%.2f" % (a / b) if a and b else "–"


def table(rows, by_name):
    pas = by_name["pass-through (no filter)"].rps
    floor = by_name["no-op wasm filter (floor)"].rps
    lines = ["| setup | req/s | p50 ms | p99 ms | vs pass-through | vs floor | vs native jwt_authn "
             "| Envoy CPU µs/req |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        nat = by_name.get(r.native)
        flags = (" (%s)" % ", ".join(sorted(r.flags))) if r.flags else ""
        lines.append("| %s%s | %.0f | %.2f | %.2f | %s | %s | %s | %.0f |" % (
            r.name, flags, r.rps, r.p50, r.p99, fmt_ratio(r.rps, pas), fmt_ratio(r.rps, floor),
            fmt_ratio(r.rps, nat.rps) if nat else "–", r.cpu_us))
    return "\n".join(lines)


TARGETS = [  # (row, reference row, target ratio, what), issue 9 "Targets"
    ("oauth-pep, 1 token (cached)", "native jwt_authn, cache, 1 token", 0.85, "cached token vs native with its cache"),
    ("oauth-pep, 2,000 rotating (cached)", "native jwt_authn, cache, 2,000 rotating", 0.85,
     "2,000 cached tokens vs native with its cache"),
    ("oauth-pep, 1 token (cached)", "no-op wasm filter (floor)", 0.9, "cached token vs the wasm floor"),
    ("oauth-pep, RS256 distinct, cache off, crypto host", "native jwt_authn, no cache, RS256 distinct", 0.5,
     "RS256 distinct vs native without cache (stretch 0.8)"),
    ("oauth-pep, ES256 distinct, cache off, crypto host", "native jwt_authn, no cache, ES256 distinct", 0.5,
     "ES256 distinct vs native without cache (stretch 0.8)"),
    ("oauth-pep, bad-signature RS256 forgeries", "native jwt_authn, bad-signature RS256 forgeries", 0.5,
     "bad signatures vs native rejecting them"),
    ("oauth-pep, garbage token", "native jwt_authn, garbage token", 0.85, "garbage vs native"),
    ("oauth-pep, expired RS256 (2,000 rotating)", "native jwt_authn, expired RS256 (2,000 rotating)", 0.85,
     "expired vs native"),
    ("oauth-pep, 1,000-rule policy, 1 token (cached)", "oauth-pep, 1 token (cached)", 0.9,
     "1,000-rule policy vs the cached-token row"),
]


def targets_table(by_name):
    lines = ["| target | needed | by req/s | by Envoy CPU/req | met (CPU) |", "|---|---:|---:|---:|---|"]
    for row, ref, need, what in TARGETS:
        r, b = by_name.get(row), by_name.get(ref)
        if not (r and b):
            continue
        by_cpu = b.cpu_us / r.cpu_us if r.cpu_us else 0
        lines.append("| %s | %.2f | %.2f | %.2f | %s |" % (
            what, need, r.rps / b.rps, by_cpu, "yes" if by_cpu >= need else "no"))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="", help="';'-separated row names or Envoy names (plus their references)")
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, token files)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found (make bench installs it)")
    for p in (harness.WASM, NOOP_WASM):
        if not p.exists():
            sys.exit("%s missing (make bench builds it)" % p)

    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="oauth-pep-bench-"))
    started = []
    try:
        auth = harness.AuthServer.start(work)
        started.append(auth)
        tok = Tokens(auth, work)
        rows = make_rows(tok, auth, [s for s in args.only.split(";") if s])
        if any(r.envoy == "pep_exchange" for r in rows):
            auth.set_exchange_mode("trusting")   # the bench's tokens are minted here, not by the server
        specs = envoy_specs(auth)
        envoys = {}
        dummy_upstream = harness.free_port()  # the direct_response route never uses it
        for name in sorted({r.envoy for r in rows}):
            env = harness.Envoy.start(workdir=work / name, upstream_port=dummy_upstream, authserver_port=auth.port,
                                      routes=ROUTES, concurrency=1, log_level="warn", **specs[name])
            started.append(env)
            envoys[name] = env
        templates = {}
        forged = {}

        def forged_file(rep, alg):
            if alg not in templates:
                templates[alg] = tok.jwt(alg)
            if rep not in forged:
                forged[rep] = tok.write("forged-%d" % len(forged),
                                        [tok.forgery(templates[alg]) for _ in range(UNIQUE)])
            return forged[rep]

        def token_file(r, rep):
            if r.dpop:   # made now: the proofs' iat must be fresh, and each is used once
                return tok.write("dpop-%s-%s" % (r.envoy, rep),
                                 tok.dpop_lines(r.dpop, r.tokens, envoys[r.envoy].url(PATH), UNIQUE))
            if r.fresh:  # made now: valid tokens, each used once
                return tok.write("fresh-%s-%s" % (r.envoy, rep), [tok.jwt() for _ in range(FRESH)])
            return forged_file("%s-%s" % (r.name, rep), r.forge) if r.unique else r.tokens

        # check each row answers as expected (keys loaded, token accepted or refused)
        for r in rows:
            env = envoys[r.envoy]
            if r.dpop:
                def dpop_ok():
                    token, proof = tok.dpop_lines(r.dpop, r.tokens, env.url(PATH), 1)[0].split("\t")
                    return env.get(PATH, headers={"Authorization": "DPoP " + token, "DPoP": proof}).status_code
                harness.wait_until(lambda: dpop_ok() == 200, 30, interval=0.2, what="%s: 200" % r.name)
                continue
            first = Path(token_file(r, "check")).read_text().split("\n", 1)[0]
            if r.status == 200:
                env.wait_status(PATH, 200, token=first, timeout=30)
            else:
                got = env.get(PATH, token=first).status_code
                if got != r.status:
                    raise SystemExit("%s: expected %d, got %d" % (r.name, r.status, got))
        print("warm-up ...", flush=True)
        for r in rows:
            wrk(envoys[r.envoy].url(PATH), token_file(r, "warm"), 1)
        for rep in range(args.repeats):
            for r in rows:
                f = token_file(r, rep)
                pgid = envoys[r.envoy].proc.pid
                cpu0 = cpu_seconds(pgid)
                res = wrk(envoys[r.envoy].url(PATH), f, args.duration)
                res["cpu_us"] = (cpu_seconds(pgid) - cpu0) * 1e6 / max(res["requests"], 1)
                if r.unique and res["requests"] > (FRESH if r.fresh else UNIQUE):
                    r.flags.add("tokens wrapped")
                bad = res["non2xx"] if r.status == 200 else res["requests"] - res["non2xx"]
                if bad:
                    r.flags.add("%d unexpected statuses" % bad)
                if res["socket_errors"]:
                    r.flags.add("socket errors")
                r.runs.append(res)
                print("  run %d  %-58s %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  %6.1f us CPU/req" % (
                    rep + 1, r.name, res["rps"], res["p50"], res["p99"], res["cpu_us"]), flush=True)
        for r in rows:
            r.rps = statistics.median(x["rps"] for x in r.runs)
            r.p50 = statistics.median(x["p50"] for x in r.runs)
            r.p99 = statistics.median(x["p99"] for x in r.runs)
            r.cpu_us = statistics.median(x["cpu_us"] for x in r.runs)
            r.spread = (min(x["rps"] for x in r.runs), max(x["rps"] for x in r.runs))
        for name, env in envoys.items():
            if not env.alive():
                raise SystemExit("Envoy %s died during the run" % name)
            if "panicked" in env.log_text():
                raise SystemExit("Envoy %s: the filter panicked" % name)
    finally:
        for p in reversed(started):
            p.stop()
        if args.keep:
            print("work directory kept: %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    by_name = {r.name: r for r in rows}
    cached = by_name.get("oauth-pep, 1 token (cached)")
    for name in EXCHANGE_ROWS + DPOP_ROWS:
        r = by_name.get(name)
        if r and cached:
            r.note = (r.note + "; " if r.note else "") + "%.2f of the plain cached token's req/s, %.1fx its Envoy CPU per request" % (
                r.rps / cached.rps, r.cpu_us / cached.cpu_us if cached.cpu_us else 0)
    m = machine()
    elapsed = time.monotonic() - t0
    tab = table(rows, by_name)
    targets = targets_table(by_name)
    notes = []
    for r in rows:
        if r.note and r.note != "ratio to the cached-token row: see the targets":
            notes.append("%s: %s." % (r.name, r.note))
    spread = "\n".join("| %s | %.0f | %.0f | %.0f | %.0f |" % (
        r.name, r.spread[0], r.spread[1], min(x["cpu_us"] for x in r.runs), max(x["cpu_us"] for x in r.runs))
        for r in rows)
    md = """# `make bench` results

Generated by `bench/run.py` (`make bench`); one real run, not edited.

- Machine: %(nproc)d CPUs (`nproc`), %(cpu)s, Linux %(kernel)s; the cores were shared with other work
  during the run, so figures are noisy (see the per-run spread below).
- Envoy %(envoy)s (the pinned `.venv/bin/envoy`), `--concurrency 1`, 127.0.0.1, direct_response route.
- Load: %(wrk)s, `wrk -t1 -c16 -d%(duration)ds --latency`, `bench/rotate.lua` rotating through pre-made tokens;
  wrk runs on the same machine as Envoy. Rows interleaved, median of %(repeats)d runs each.
- Date: %(date)s. Total time of the run: %(elapsed).0f s.
- `oauth_pep.wasm`: %(wasm)d bytes; no-op floor `bench_noop.wasm`: %(noop)d bytes.

%(table)s

"Envoy CPU µs/req" is the user + system CPU time of the Envoy process (all its threads) during
the run divided by the requests answered: less sensitive to other load on the machine than req/s,
which also depends on how much CPU wrk and the neighbours got.

"vs native jwt_authn" compares with the native row of the same cache setting and the same tokens:
cached oauth-pep rows with `jwt_cache_config` (size 4096), cache-off rows with native without cache,
rejection rows with native rejecting the same tokens. Native jwt_authn runs with a `local_jwks`
inline copy of the authorization server's JWKS (`forward: true`); oauth-pep loads the same keys
by discovery. "distinct" rows rotate through %(rot)d tokens with the caches off (every request
verified); the oauth-pep bad-signature row without a crypto suffix runs the default configuration
(`crypto: "auto"`, caches on), the other two the cache-off Envoys; bad-signature rows send %(uniq)d never-repeated forgeries per run (a real header and
`kid`, fresh valid claims, a random signature below the RSA modulus).

## Issue 9 targets

"by Envoy CPU/req" is the reference row's CPU per request divided by this row's: what the
throughput ratio would be with Envoy's worker the bottleneck and the machine otherwise idle. On a
shared machine it is the steadier of the two figures; "met" is judged on it.

%(targets)s

%(notes)s

Per-row spread of the %(repeats)d runs:

| setup | req/s min | req/s max | CPU µs/req min | CPU µs/req max |
|---|---:|---:|---:|---:|
%(spread)s
""" % dict(m, duration=args.duration, repeats=args.repeats, elapsed=elapsed, table=tab, rot=ROTATING,
           uniq=UNIQUE, targets=targets, notes="\n".join("- " + n for n in notes), spread=spread)
    print()
    print(tab)
    print()
    print(targets)
    for n in notes:
        print("- " + n)
    print("\nwasm %d bytes, floor %d bytes; %d s in all" % (m["wasm"], m["noop"], elapsed))
    Path(args.out).write_text(md)
    print("written to %s" % args.out)


if __name__ == "__main__":
    main()
