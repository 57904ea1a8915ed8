#!/usr/bin/env python3
"""`make demo`: run the oauth-pep filter in Envoy against a local authorization server.

Starts, all on 127.0.0.1:
  tests/authserver.py  :9000  issuer http://127.0.0.1:9000, client demo-client/demo-secret
                              (scopes "read write"), audience demo-api
  tests/echo.py        :9001  the upstream (echoes method, path, headers)
  envoy                :10000 with envoy/demo.yaml (admin :9901)
waits until all are ready, prints commands to try, and runs until Ctrl-C
(SIGINT/SIGTERM), which stops everything it started. Logs go to a
temporary directory whose path is printed.
Run from anywhere; it works from the repository root.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "bin"
PY = str(VENV / "python") if (VENV / "python").exists() else sys.executable
ENVOY = VENV / "envoy"
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "oauth_pep.wasm"
LOGS = None  # a temporary directory, made by main()
# The demo's authorization server; demo/docker-compose.yml runs it with the same
# arguments (tests/test_compose.py checks that they agree).
# resource-server is the PEP's own client for its protection API token (the filter's
# `clients.pat`), gateway the client whose token upstream OAuth sends to /backend
# (`clients.backend`). The UMA resources photos and vault are registered at start
# (envoy/demo.yaml's `uma.resources` name them); vault's scope "open" carries seed
# 001's claims policy (country=US, city=NY), photos' scopes none.
AUTHSERVER_ARGS = ["--port", "9000", "--issuer", "http://127.0.0.1:9000",
                   "--client", "demo-client:demo-secret:read write",
                   "--client", "reader:reader-secret:read",
                   "--client", "resource-server:rs-secret:uma_protection",
                   "--client", "gateway:gateway-secret:backend.read", "--audience", "demo-api",
                   "--uma-resource", "photos:view,edit", "--uma-resource", "vault:open",
                   "--uma-claims-scope", "open"]
ECHO_ARGS = ["--port", "9001"]

procs = []


def start(name, argv):
    log = open(LOGS / (name + ".log"), "wb")
    p = subprocess.Popen([str(a) for a in argv], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)
    p.name, p.logfile = name, LOGS / (name + ".log")
    procs.append(p)
    return p


def stop_all(*_):
    for p in reversed(procs):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def port_in_use(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait(what, pred, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited (%s); see %s:\n%s" % (
                what, proc.returncode, proc.logfile, proc.logfile.read_text(errors="replace")[-3000:]))
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("%s not ready after %ss; see %s" % (what, timeout, proc.logfile))


def printed_ready(proc):
    return lambda: any(l.startswith("READY") for l in proc.logfile.read_text(errors="replace").splitlines())


def envoy_live():
    with urllib.request.urlopen("http://127.0.0.1:9901/ready", timeout=1) as r:
        return r.read().decode().strip() == "LIVE" and port_in_use(10000)


def main():
    global LOGS
    os.chdir(ROOT)
    if not WASM.is_file():
        sys.exit("%s missing: run `make build` (or `make demo`)" % WASM.relative_to(ROOT))
    if not ENVOY.exists():
        sys.exit(".venv/bin/envoy missing: run `make demo-setup`")
    busy = [p for p in (9000, 9001, 9901, 10000) if port_in_use(p)]
    if busy:
        sys.exit("ports already in use on 127.0.0.1: %s (another demo running?)" % busy)
    LOGS = Path(tempfile.mkdtemp(prefix="oauth-pep-demo-"))

    def interrupted(*_):
        raise KeyboardInterrupt

    # explicit handlers: SIGINT may be ignored when started from a non-interactive shell
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        a = start("authserver", [PY, "tests/authserver.py", *AUTHSERVER_ARGS])
        e = start("echo", [PY, "tests/echo.py", *ECHO_ARGS])
        wait("authserver", printed_ready(a), a)
        wait("echo", printed_ready(e), e)
        v = start("envoy", [ENVOY, "-c", "envoy/demo.yaml", "--concurrency", "1", "--disable-hot-restart",
                            "-l", "info"])
        wait("envoy", envoy_live, v, timeout=60)
        print("""
oauth-pep demo is up (logs in %s). Try, in another terminal:

  token() { curl -s -u "$1" -d grant_type=client_credentials http://127.0.0.1:9000/token | python3 -c 'import sys,json;print(json.load(sys.stdin)["access_token"])'; }
  TOKEN=$(token demo-client:demo-secret)      # scopes "read write"
  READER=$(token reader:reader-secret)        # scope "read"

  curl -i -H "Authorization: Bearer $TOKEN" http://127.0.0.1:10000/api/hello              # 200, upstream sees x-jwt-sub, x-authenticated-scope...
  curl -i http://127.0.0.1:10000/api/hello                                                 # 401, WWW-Authenticate: Bearer realm="demo"
  curl -i -H "Authorization: Bearer not.a.token" http://127.0.0.1:10000/api/hello          # 401 invalid_token
  curl -i -X POST -H "Authorization: Bearer $TOKEN" http://127.0.0.1:10000/api/orders      # 200: POST needs "write"
  curl -i -X POST -H "Authorization: Bearer $READER" http://127.0.0.1:10000/api/orders     # 403 insufficient_scope, scope="write"
  curl -i -H "Authorization: Bearer $TOKEN" http://127.0.0.1:10000/admin                   # 403: no rule allows it (deny_by_default)
  curl -i http://127.0.0.1:10000/health                                                    # 200: a public path
  OPAQUE=$(curl -s -u demo-client:demo-secret -d grant_type=client_credentials -d token_format=opaque http://127.0.0.1:9000/token | python3 -c 'import sys,json;print(json.load(sys.stdin)["access_token"])')
  curl -i -H "Authorization: Bearer $OPAQUE" http://127.0.0.1:10000/api/hello             # 200: an opaque token, introspected once, then cached
  curl -i http://127.0.0.1:10000/photos/1                                                  # 401, WWW-Authenticate: UMA realm="demo", as_uri=..., ticket=...
  curl -i -H "Authorization: Bearer $TOKEN" http://127.0.0.1:10000/backend/reports         # 200: the upstream got the gateway's own token (upstream OAuth)
  make demo-uma                                                                            # seed 001's UMA flows and seed 003's upstream OAuth, step by step

Discovery: http://127.0.0.1:9000/.well-known/openid-configuration   JWKS: http://127.0.0.1:9000/jwks
Envoy admin: http://127.0.0.1:9901/   Press Ctrl-C to stop.
""" % LOGS, flush=True)
        while True:
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError("%s exited (%s); see %s" % (p.name, p.returncode, p.logfile))
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    except RuntimeError as err:
        print("demo: %s" % err, file=sys.stderr, flush=True)
        return 1
    finally:
        stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
