"""Running the repository's own Envoy files (envoy/*.yaml) in tests.

The files use the demo's fixed addresses (envoy/README.md): authorization
server 127.0.0.1:9000 (also in issuer URLs), echo API 127.0.0.1:9001, listener
10000, admin 9901. `render` swaps in the test's ports; `EnvoyFile` runs the
result from the repository root (the files name the .wasm relative to it).
"""

import os
import random
import re
import subprocess
from pathlib import Path

import requests

import harness

ENVOY_DIR = harness.ROOT / "envoy"
DEMO_PORTS = {"authserver": 9000, "upstream": 9001, "listener": 10000, "admin": 9901}


def render(text, ports):
    """`text` with each demo port replaced by ports[name]; every name must occur."""
    for name, demo_port in DEMO_PORTS.items():
        if name not in ports:
            continue
        pattern = r"(port_value: |127\.0\.0\.1:)%d\b" % demo_port
        if not re.search(pattern, text):
            raise AssertionError("no %s port %d to replace" % (name, demo_port))
        text = re.sub(pattern, lambda m, p=ports[name]: "%s%d" % (m.group(1), p), text)
    return text


def validate(config_path, env=None, timeout=90):
    """`envoy --mode validate` (which runs the filter's on_configure): (ok, output)."""
    r = subprocess.run([harness.ENVOY_BIN, "--mode", "validate", "-c", str(config_path),
                        "--disable-hot-restart", "-l", "error"],
                       cwd=str(harness.ROOT), capture_output=True, text=True, timeout=timeout,
                       env=harness._overridden(dict(os.environ), env or {}))
    out = r.stdout + r.stderr
    return r.returncode == 0 and "OK" in out, out


class EnvoyFile:
    """Envoy started with a whole bootstrap file (not the harness's generated one)."""

    def __init__(self, text, workdir, env=None, timeout=60):
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.admin_port, self.port = harness.free_port(), harness.free_port()
        while self.port == self.admin_port:
            self.port = harness.free_port()
        self.config_path = workdir / "envoy.yaml"
        self.config_path.write_text(render(text, {"listener": self.port, "admin": self.admin_port}))
        self.log_path = workdir / "envoy.log"
        self.proc = harness.Proc("envoy", [
            harness.ENVOY_BIN, "-c", self.config_path, "--concurrency", 1,
            "--base-id", random.randint(1, 2**31 - 1), "--disable-hot-restart", "-l", "info",
            "--log-path", self.log_path, "--file-flush-interval-msec", 100,
        ], workdir / "envoy.out", env=env)
        self.url = "http://127.0.0.1:%d" % self.port
        admin = "http://127.0.0.1:%d/ready" % self.admin_port

        def ready():
            if not self.proc.alive():
                return "exited"
            r = requests.get(admin, timeout=1)
            return r.text.strip() == "LIVE" and harness.port_accepts(self.port)

        try:
            if harness.wait_until(ready, timeout, interval=0.1, what="envoy LIVE") == "exited":
                raise RuntimeError("envoy exited with %s" % self.proc.popen.returncode)
        except (TimeoutError, RuntimeError) as e:
            self.stop()
            raise RuntimeError("Envoy did not start with %s (%s):\n%s\n%s" % (
                self.config_path, e, self.log_text()[-6000:], self.proc.log_text()[-3000:]))

    def request(self, method, path, token=None, **kw):
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kw)

    def get(self, path, token=None, **kw):
        return self.request("GET", path, token, **kw)

    def wait_status(self, path, status, token=None, method="GET", timeout=20, headers=None):
        """The first answer with `status` (keys may still be loading: 503)."""
        last = {}

        def ok():
            last["r"] = self.request(method, path, token, headers=headers or {})
            return last["r"].status_code == status

        try:
            harness.wait_until(ok, timeout, interval=0.1, what="%s %s -> %d" % (method, path, status))
        except TimeoutError as e:
            r = last.get("r")
            raise AssertionError("%s; last: %s %s\n%s" % (e, getattr(r, "status_code", None),
                                                         getattr(r, "text", "")[:300], self.log_text()[-4000:]))
        return last["r"]

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout_text(self):
        return self.proc.log_text()

    def stop(self):
        return self.proc.stop(grace=5.0)
