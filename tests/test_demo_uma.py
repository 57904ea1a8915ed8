"""`make demo-uma` against the demo as `make demo` runs it: tests/authserver.py
and tests/echo.py with demo/run.py's arguments, Envoy with envoy/demo.yaml,
only the ports swapped for free ones (examples.render); then
demo/uma_walkthrough.py as a user runs it. It must walk seed 001's two UMA
flows and seed 003's upstream OAuth and exit 0, and exit 1 when the answers
are not what the flows expect."""

import importlib.util
import re
import subprocess

import pytest
import requests

import harness
from examples import ENVOY_DIR, EnvoyFile, render

DEMO = harness.ROOT / "demo"
WALKTHROUGH = DEMO / "uma_walkthrough.py"


def demo_run():
    spec = importlib.util.spec_from_file_location("demo_run", DEMO / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ported(args, demo_port, port):
    """demo/run.py's arguments with its fixed port (alone, or in a URL) swapped."""
    out = [str(port) if a == str(demo_port) else re.sub(r"127\.0\.0\.1:%d\b" % demo_port, "127.0.0.1:%d" % port, a)
           for a in args]
    assert out != args, "no port %d in %r" % (demo_port, args)
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory, wasm):
    """The demo stack; yields (gateway URL, issuer URL)."""
    run = demo_run()
    tmp = tmp_path_factory.mktemp("demo")
    as_port, echo_port = harness.free_port(), harness.free_port()
    started = []
    try:
        a = harness.Proc("authserver", [harness.PYTHON, harness.TESTS / "authserver.py",
                                        *ported(run.AUTHSERVER_ARGS, 9000, as_port)], tmp / "authserver.log")
        started.append(a)
        e = harness.Proc("echo", [harness.PYTHON, harness.TESTS / "echo.py", *ported(run.ECHO_ARGS, 9001, echo_port)],
                         tmp / "echo.log")
        started.append(e)
        a.wait_ready_line()
        e.wait_ready_line()
        text = render((ENVOY_DIR / "demo.yaml").read_text(), {"authserver": as_port, "upstream": echo_port})
        env = EnvoyFile(text, tmp / "envoy")
        started.append(env)
        yield env.url, "http://127.0.0.1:%d" % as_port
    finally:
        for p in reversed(started):
            p.stop()


def walk(demo, *extra):
    gateway, issuer = demo
    return subprocess.run([harness.PYTHON, str(WALKTHROUGH), "--gateway", gateway, "--issuer", issuer, *extra],
                          capture_output=True, text=True, timeout=90)


def test_the_walkthrough_performs_both_uma_flows_and_upstream_oauth(demo):
    r = walk(demo)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "DEVIATION" not in out
    # Each flow's exchanges, as printed: the ticket, need_info and the claims
    # form only in (b), the RPT passing, the gateway's token upstream.
    a, b, c = re.split(r"^== \([abc]\) ", out, flags=re.M)[1:]
    for flow in (a, b):
        assert re.search(r'< www-authenticate: UMA realm="demo", as_uri="%s", ticket="' % re.escape(demo[1]), flow)
        assert flow.count("< 200 OK") >= 2, flow  # the RPT, then the API with it
    assert "need_info" not in a and "need_info" in b
    assert "country=US" in b and "< location: https://client.example/claims-callback?" in b, b
    assert "client_id='gateway', scope='backend.read' (the caller's: client_id='demo-client')" in c, c
    assert out.rstrip().splitlines()[-1].startswith("OK: "), out
    # No secret printed, tokens shortened.
    assert "demo-secret" not in out and "gateway-secret" not in out
    assert not re.search(r"[A-Za-z0-9_\-.]{60,}", out), "a token printed in full"


def test_the_walkthrough_exits_1_at_the_first_deviation(demo):
    # A client the AS does not know: the uma-ticket grant answers 401, not an RPT.
    r = walk(demo, "--client", "demo-client:wrong-secret")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "DEVIATION: expected an RPT, got 401" in r.stdout, r.stdout
    assert "[a2]" in r.stdout and "[a3]" not in r.stdout


def test_the_demo_still_serves_the_quick_start(demo):
    """The README's quick start on the same stack: /api by scope, /health public."""
    gateway, issuer = demo
    token = requests.post(issuer + "/token", auth=("reader", "reader-secret"),
                          data={"grant_type": "client_credentials"}, timeout=10).json()["access_token"]
    r = requests.get(gateway + "/api/hello", headers={"Authorization": "Bearer " + token}, timeout=10)
    assert r.status_code == 200 and r.json()["headers"]["x-jwt-sub"] == "reader", r.text
    r = requests.post(gateway + "/api/orders", headers={"Authorization": "Bearer " + token}, timeout=10)
    assert r.status_code == 403 and 'scope="write"' in r.headers["www-authenticate"], r.headers
    assert requests.get(gateway + "/api/hello", timeout=10).headers["www-authenticate"] == 'Bearer realm="demo"'
    assert requests.get(gateway + "/health", timeout=10).status_code == 200
