"""Step-up (RFC 9470) and JSON-RPC (MCP) selectors through a real Envoy.

Step-up: a rule with `acr_values` / `max_age` answers 401
`insufficient_user_authentication` with what to ask for, for JWTs (verified
locally) and opaque tokens (introspected), in both policy forms.

MCP: `POST /mcp tools/call admin_*` needs `admin`; the filter reads the
JSON-RPC body only there, within `jsonrpc.max_body_bytes`, and the body goes
upstream unchanged. The upstream here is a recorder that keeps every byte it
receives, to show what a refused request left there. Envoy's `buffer` filter
after oauth-pep (as README recommends for MCP routes) keeps even the headers
of a refused request from the upstream; without it the upstream sees the
headers of a request that is then reset, never its body.
"""

import http.client
import json
import socket
import socketserver
import threading
import time

import pytest

import harness

ACR = "urn:example:mfa"

POLICY = {
    "GET /account": {"scope": "read", "acr_values": [ACR, "urn:example:hw"], "max_age": 300},
    "POST,GET,DELETE /mcp": "read",
    "POST /mcp tools/call admin_*": "admin",
}

GLUU_POLICY = [
    {"path": "/account", "conditions": [{
        "httpMethods": ["GET"],
        "scope_expression": {"rule": {"var": 0}, "data": ["read"]},
        "acr_values": [ACR, "urn:example:hw"], "max_age": 300}]},
    {"path": "/mcp", "conditions": [
        {"httpMethods": ["POST", "GET", "DELETE"],
         "scope_expression": {"rule": {"var": 0}, "data": ["read"]}},
        {"httpMethods": ["POST"], "jsonrpc": {"method": "tools/call", "name": "admin_*"},
         "scope_expression": {"rule": {"var": 0}, "data": ["admin"]}}]},
]

MAX_BODY = 2048


# --------------------------------------------------------------------------
# a recording upstream
# --------------------------------------------------------------------------

class Recorder:
    """HTTP/1.1 upstream that records every byte of every connection and
    answers each complete request 200 with {"body": <the body received>}."""

    def __init__(self):
        self.received = []  # raw bytes per connection
        self.lock = threading.Lock()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                raw = bytearray()
                with outer.lock:
                    outer.received.append(raw)
                self.request.settimeout(20)
                buf = b""
                while True:
                    try:
                        chunk = self.request.recv(65536)
                    except (socket.timeout, OSError):
                        return
                    if not chunk:
                        return
                    raw += chunk
                    buf += chunk
                    while b"\r\n\r\n" in buf:
                        head, rest = buf.split(b"\r\n\r\n", 1)
                        length = 0
                        for line in head.split(b"\r\n")[1:]:
                            name, _, value = line.partition(b":")
                            if name.strip().lower() == b"content-length":
                                length = int(value.strip())
                        if len(rest) < length:
                            break
                        body, buf = rest[:length], rest[length:]
                        out = json.dumps({"body": body.decode("utf-8", "replace"),
                                          "head": head.decode("latin-1")}).encode()
                        self.request.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                             b"content-length: %d\r\n\r\n%s" % (len(out), out))

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def everything(self):
        with self.lock:
            return b"".join(bytes(r) for r in self.received)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def recorder():
    r = Recorder()
    yield r
    r.stop()


def config(a, policy):
    issuer = a.issuer_config(introspection={"endpoint": a.url("/introspect"), "client_id": "pep",
                                            "client_secret": "pep-secret"})
    return {"realm": "mcp", "issuers": [issuer], "policy": policy,
            "jsonrpc": {"max_body_bytes": MAX_BODY, "body_timeout_seconds": 2}}


def start(factory, a, policy, recorder, buffered=True):
    env = factory(config(a, policy), upstream_port=recorder.port,
                  customize=harness.buffer_after_oauth_pep if buffered else None)
    env.wait_status("/mcp", 200, token=a.mint(), timeout=20)
    return env


@pytest.fixture(scope="module", params=["readable", "gluu"])
def env(request, module_envoy, authserver_module, recorder):
    a = authserver_module
    a.reset()
    return start(module_envoy, a, POLICY if request.param == "readable" else GLUU_POLICY, recorder)


def post(env, body, token=None, headers=(), path="/mcp", timeout=10):
    """POST `body` (bytes) on a new connection; returns harness.Resp."""
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=timeout)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        hs = [("content-type", "application/json"), ("content-length", str(len(body)))] + list(headers)
        if token:
            hs.append(("authorization", "Bearer " + token))
        for k, v in hs:
            conn.putheader(k, v)
        conn.endheaders()
        conn.send(body)
        r = conn.getresponse()
        return harness.Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def post_refused_admin_tool(env, a, name):
    """Calls admin tool `name` with a read-only token and an x-probe header, and checks
    the 403: the buffered and the unbuffered tests then look upstream for the probe
    (the headers) and the marker (the body). Returns (answer, body, marker, probe)."""
    body = tool_call(name)
    marker = json.loads(body)["params"]["arguments"]["marker"].encode()
    probe = "probe-%f" % time.time()
    r = post(env, body, token=a.mint(a.claims(scope="read")), headers=[("x-probe", probe)])
    assert r.status == 403, r
    return r, body, marker, probe


def tool_call(name, id_=1):
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": "tools/call",
                       "params": {"name": name, "arguments": {"marker": "m-%s-%f" % (name, time.time())}}}).encode()


# --------------------------------------------------------------------------
# step-up
# --------------------------------------------------------------------------

def challenge(r):
    return harness.bearer_params(r.headers["www-authenticate"])


def check_step_up(r, max_age="300", scope=None):
    assert r.status == 401, r
    c = challenge(r)
    assert c["error"] == "insufficient_user_authentication", c
    assert c["acr_values"] == ACR + " urn:example:hw", c
    assert c["max_age"] == max_age, c
    assert c.get("scope") == scope, c
    assert r.json()["reason"] == "insufficient_user_authentication"


@pytest.mark.parametrize("kind", ["jwt", "introspected"])
def test_step_up_acr_and_max_age(env, authserver, kind):
    a = authserver
    now = harness.now()

    def token(**claims):
        if kind == "jwt":
            return a.mint(a.claims(**claims))
        return a.opaque(**claims)

    ok = token(acr=ACR, auth_time=now - 10)
    r = env.get("/account", token=ok)
    assert r.status_code == 200, r.text
    # acr missing, wrong; auth_time missing, too old (300 s + 60 s of skew).
    for claims in [dict(auth_time=now - 10), dict(acr="urn:example:pwd", auth_time=now - 10),
                   dict(acr=ACR), dict(acr=ACR, auth_time=now - 400)]:
        r = harness.send_raw(env, "/account", token=token(**claims))
        check_step_up(r)
    # The second listed value serves too.
    assert env.get("/account", token=token(acr="urn:example:hw", auth_time=now)).status_code == 200
    # Neither scope nor authentication: one 401 says both.
    r = harness.send_raw(env, "/account", token=token(scope="write"))
    check_step_up(r, scope="read")
    # The scope alone missing: 403 insufficient_scope.
    r = harness.send_raw(env, "/account", token=token(scope="write", acr=ACR, auth_time=now))
    assert r.status == 403 and challenge(r)["scope"] == "read", r


# --------------------------------------------------------------------------
# MCP tools
# --------------------------------------------------------------------------

def test_admin_tool_needs_admin_and_never_reaches_the_upstream(env, authserver, recorder):
    a = authserver
    r, body, marker, probe = post_refused_admin_tool(env, a, "admin_delete_users")
    time.sleep(0.2)
    # Neither its headers nor its body reached the upstream.
    assert probe.encode() not in recorder.everything()
    c = challenge(r)
    assert (c["error"], c["scope"]) == ("insufficient_scope", "admin"), c
    assert r.json()["reason"] == "insufficient_scope"
    # A read tool passes with the same token; the admin tool with the wider
    # one; the upstream gets the body byte for byte.
    r = post(env, tool_call("search"), token=a.mint(a.claims(scope="read")))
    assert r.status == 200, r
    wide = a.mint(a.claims(scope="read admin"))
    r = post(env, body, token=wide)
    assert r.status == 200, r
    assert r.json()["body"].encode() == body
    assert recorder.everything().count(marker) == 1
    # Opaque tokens too.
    r = post(env, tool_call("admin_x"), token=a.opaque(scope="read"))
    assert r.status == 403 and challenge(r)["scope"] == "admin", r
    assert post(env, tool_call("admin_x"), token=a.opaque(scope="read admin")).status == 200


def test_a_bad_token_is_401_before_the_body(env, authserver):
    r = post(env, b"not json", token="garbage.token.here")
    assert r.status == 401, r
    assert challenge(r)["error"] == "invalid_token"
    r = post(env, b"not json")
    assert r.status == 401 and "error" not in challenge(r), r
    # A token the path's own rule refuses: 403 at once, the body not awaited.
    write = authserver.mint(authserver.claims(scope="write"))
    s = socket.create_connection(("127.0.0.1", env.port), timeout=10)
    try:
        s.sendall(b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"authorization: Bearer " + write.encode() + b"\r\ncontent-length: 100\r\n\r\n{")
        started = time.monotonic()
        answer = s.recv(65536)
        took = time.monotonic() - started
    finally:
        s.close()
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert took < 1.5, took  # body_timeout_seconds is 2


def test_initialize_list_and_notifications_follow_the_path_rule(env, authserver):
    a = authserver
    read = a.mint(a.claims(scope="read"))
    for body in [{"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}},
                 {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                 {"jsonrpc": "2.0", "method": "notifications/initialized"}]:
        raw = json.dumps(body).encode()
        r = post(env, raw, token=read)
        assert r.status == 200, (body, r)
        assert r.json()["body"].encode() == raw
    r = post(env, tool_call("search"), token=a.mint(a.claims(scope="write")))
    assert r.status == 403 and challenge(r)["scope"] == "read", r


def test_a_batch_is_judged_entry_by_entry(env, authserver):
    a = authserver
    batch = b"[" + tool_call("search", 1) + b"," + tool_call("admin_x", 2) + b"]"
    r = post(env, batch, token=a.mint(a.claims(scope="read")))
    assert r.status == 403 and challenge(r)["scope"] == "admin", r
    r = post(env, batch, token=a.mint(a.claims(scope="read admin")))
    assert r.status == 200, r
    assert r.json()["body"].encode() == batch


def jsonrpc_error(r, status, code, id_=None, reason="body_invalid"):
    assert r.status == status, r
    body = r.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == id_, body
    assert body["error"]["code"] == code, body
    assert body["error"]["data"]["reason"] == reason, body


def test_bodies_that_cannot_be_judged(env, authserver):
    read = authserver.mint(authserver.claims(scope="read admin"))
    jsonrpc_error(post(env, b"not json", token=read), 400, -32700)
    jsonrpc_error(post(env, b"", token=read), 400, -32700)
    jsonrpc_error(post(env, b"[]", token=read), 400, -32600)
    jsonrpc_error(post(env, b'{"jsonrpc":"1.0","id":5,"method":"tools/call"}', token=read), 400, -32600, 5)
    jsonrpc_error(post(env, b'{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{}}', token=read),
                  400, -32602, "q")
    dup = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","name":"admin_x"}}'
    jsonrpc_error(post(env, dup, token=read), 400, -32600)
    jsonrpc_error(post(env, tool_call("search"), token=read, headers=[("content-encoding", "gzip")]),
                  415, -32600)
    # Over the bound: announced, and (chunked) received.
    big = tool_call("search" + "x" * MAX_BODY)
    jsonrpc_error(post(env, big, token=read), 413, -32600, reason="body_too_large")
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
    try:
        conn.request("POST", "/mcp", body=iter([big[:1000], big[1000:]]),
                     headers={"authorization": "Bearer " + read, "content-type": "application/json",
                              "transfer-encoding": "chunked"}, encode_chunked=True)
        r = conn.getresponse()
        jsonrpc_error(harness.Resp(r.status, {}, r.read()), 413, -32600, reason="body_too_large")
    finally:
        conn.close()


def test_a_slow_body_is_answered_408_by_its_deadline(env, authserver, recorder):
    read = authserver.mint(authserver.claims(scope="read admin"))
    body = tool_call("admin_slow")
    marker = json.loads(body)["params"]["arguments"]["marker"].encode()
    s = socket.create_connection(("127.0.0.1", env.port), timeout=10)
    try:
        s.sendall(b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"authorization: Bearer " + read.encode() + b"\r\n"
                  b"content-length: %d\r\n\r\n" % len(body) + body[:20])
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
        took = time.monotonic() - started
    finally:
        s.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body_timeout" in answer
    # body_timeout_seconds is 2, checked on 200 ms ticks, in whole seconds.
    assert 1.0 <= took <= 5.0, took
    assert marker not in recorder.everything()


def test_without_the_buffer_filter_a_refused_body_never_reaches_the_upstream(start_envoy, authserver, recorder):
    a = authserver
    env = start(start_envoy, a, POLICY, recorder, buffered=False)
    r, body, marker, probe = post_refused_admin_tool(env, a, "admin_unbuffered")
    time.sleep(0.3)
    # Envoy's router opened the upstream request with the headers (a
    # proxy-wasm filter sees the body only after they went on), then reset
    # it: the body never arrived.
    assert probe.encode() in recorder.everything()
    assert marker not in recorder.everything()
    r = post(env, body, token=a.mint(a.claims(scope="read admin")))
    assert r.status == 200 and r.json()["body"].encode() == body, r


def test_on_a_protected_resource_the_challenges_name_its_metadata(start_envoy, authserver, recorder):
    """With `resources` (RFC 9728), the step-up 401 and the tool's 403 also
    carry `resource_metadata`; a body error stays a JSON-RPC error."""
    a = authserver
    cfg = config(a, POLICY)
    cfg["resources"] = [{"resource": "https://mcp.example/mcp", "paths": ["/mcp", "/account"],
                         "audiences": ["api"]}]
    env = start_envoy(cfg, upstream_port=recorder.port, customize=harness.buffer_after_oauth_pep)
    env.wait_status("/mcp", 200, token=a.mint(), timeout=20)
    metadata = "https://mcp.example/.well-known/oauth-protected-resource/mcp"
    r = post(env, tool_call("admin_x"), token=a.mint(a.claims(scope="read")))
    assert r.status == 403, r
    c = challenge(r)
    assert (c["error"], c["scope"], c["resource_metadata"]) == ("insufficient_scope", "admin", metadata), c
    r = harness.send_raw(env, "/account", token=a.mint(a.claims(scope="write")))
    c = challenge(r)
    assert r.status == 401 and c["error"] == "insufficient_user_authentication", r
    assert (c["scope"], c["max_age"], c["resource_metadata"]) == ("read", "300", metadata), c
    assert r.headers["www-authenticate"].count("scope=") == 1, r.headers
    jsonrpc_error(post(env, b"[]", token=a.mint(a.claims(scope="read"))), 400, -32600)
