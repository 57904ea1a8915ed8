"""An MCP server protected tool by tool, end to end, with the official MCP TypeScript SDK
(@modelcontextprotocol/sdk, pinned in tests/oidc/package-lock.json, installed by `make setup`) on
both sides of a real Envoy with the filter:

    SDK client (tests/oidc/mcp_client.mjs: Client + StreamableHTTPClientTransport +
    ClientCredentialsProvider)  ->  Envoy + oauth-pep  ->  SDK server (tests/oidc/mcp_server.mjs:
    read_notes, admin_reset)

and oidc-provider (tests/oidc/server.mjs, OIDC_MCP_RESOURCE mode) as the authorization server,
issuing JWT access tokens whose `aud` is the resource (RFC 8707 `resource=`).

The client is given only the MCP URL, its credentials and the issuer its credentials belong to
(the SDK's `expectedIssuer`): everything else it discovers from the gateway's 401 (RFC 9728
`resource_metadata` -> the gateway's metadata -> the authorization server's metadata). The client
prints every HTTP request it made (FETCH lines: method, URL, status, challenge, form fields
without credentials, granted scope and `aud`), and the tests assert that sequence: it is the list
the README's "Protecting an MCP server" section shows.

Envoy has its buffer filter after oauth-pep, as README and envoy/mcp.yaml advise: a refused
request does not reach the MCP server at all, not even its headers (the tests count the server's
HTTP requests).

The resource identifier names the gateway's own URL (the SDK checks the metadata's `resource`
against the URL it connects to, origin and path prefix), so Envoy's listener port is chosen
before the provider and Envoy start.
"""

import json
import subprocess
from urllib.parse import urlsplit

import pytest
import requests

import harness
from oidc_provider import MCP_ADMIN, MCP_READER, OIDC_DIR, OidcProvider, node_binary, require_node_modules

pytestmark = pytest.mark.timeout(120)

REALM = "mcp"
MCP_SERVER = OIDC_DIR / "mcp_server.mjs"
MCP_CLIENT = OIDC_DIR / "mcp_client.mjs"
CLIENT_TIMEOUT = 60


def filter_config(op_issuer, resource):
    return {
        "realm": REALM,
        "issuers": [{"issuer": op_issuer, "discovery": True, "upstream": "op", "audiences": [resource]}],
        "resources": [{"resource": resource, "paths": ["/mcp/??"], "resource_name": "Notes (MCP)"}],
        "policy": {
            "POST /mcp tools/call admin_*": "admin",
            "POST /mcp": "read",
            "GET /mcp": "read",
        },
    }


def other_resource(resource):
    """Another resource the provider issues tokens for, on the same origin."""
    return resource + "-other"


def resource_token(op, resource, client=MCP_READER, scope="read"):
    r = op.http.post(op.endpoint("token_endpoint"), auth=client, timeout=10, data={
        "grant_type": "client_credentials", "scope": scope, "resource": resource})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def list_tools(env, token):
    """A stateless tools/list, as an MCP client sends it."""
    return env.post("/mcp", token=token, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                    headers={"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"})


class McpServer:
    """tests/oidc/mcp_server.mjs: its log lines and its counts."""

    def __init__(self, proc, port):
        self.proc, self.port = proc, port

    @classmethod
    def start(cls, tmpdir):
        port = harness.free_port()
        proc = harness.Proc("mcp-server", [node_binary(), MCP_SERVER, port], tmpdir / "mcp-server.log", cwd=OIDC_DIR)
        proc.wait_ready_line(30)
        return cls(proc, port)

    def stats(self):
        return requests.get("http://127.0.0.1:%d/stats" % self.port, timeout=5).json()

    def calls(self):
        """The HTTP requests that reached it: [(method, jsonrpc method, tool, had authorization)]."""
        out = []
        for line in self.proc.log_text().splitlines():
            if line.startswith("CALL "):
                f = dict(kv.split("=", 1) for kv in line.split()[1:])
                out.append((f["http"], f["jsonrpc"], f["tool"], f["authorization"] == "yes"))
        return out

    def stop(self):
        return self.proc.stop()


@pytest.fixture(scope="module")
def setup(wasm, tmp_path_factory):
    """(envoy, op, mcp server, resource identifier): one of each for the module."""
    try:
        require_node_modules("@modelcontextprotocol/sdk")
        require_node_modules()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    tmp = tmp_path_factory.mktemp("mcp")
    listener = harness.free_port()
    resource = "http://127.0.0.1:%d/mcp" % listener
    started = []
    try:
        op = OidcProvider.start(tmp, mcp_resources=[resource, other_resource(resource)])
        started.append(op)
        server = McpServer.start(tmp)
        started.append(server)
        env = harness.Envoy.start(filter_config(op.issuer, resource), tmp / "envoy", upstream_port=server.port,
                                  clusters={"op": op.port}, listener_port=listener, timeout=30,
                                  customize=harness.buffer_after_oauth_pep)
        started.append(env)
        # The keys come from discovery: wait until a token for the resource gets through.
        token = resource_token(op, resource)
        harness.wait_until(lambda: list_tools(env, token).status_code == 200, 20, what="the filter's keys")
        yield env, op, server, resource
    finally:
        for p in reversed(started):
            p.stop()


def run_client(url, op, client, scope, calls=()):
    """Run the SDK client; returns (fetches, steps, result)."""
    argv = [node_binary(), MCP_CLIENT, "--url", url, "--issuer", op.issuer, "--client-id", client[0],
            "--client-secret", client[1], "--scope", scope, "--timeout-ms", "20000"]
    for tool in calls:
        argv += ["--call", tool]
    r = subprocess.run([str(a) for a in argv], cwd=str(OIDC_DIR), capture_output=True, text=True,
                       timeout=CLIENT_TIMEOUT)
    fetches, steps, result = [], [], None
    for line in r.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "FETCH":
            fetches.append(json.loads(rest))
        elif kind == "STEP":
            steps.append(json.loads(rest))
        elif kind == "RESULT":
            result = json.loads(rest)
    assert result is not None, "client printed no RESULT (rc %s):\n%s\n%s" % (r.returncode, r.stdout, r.stderr)
    assert client[1] not in r.stdout, "the client printed its secret"
    print("\n".join(line for line in r.stdout.splitlines() if line.startswith(("FETCH", "STEP"))))
    return fetches, steps, result


def sequence(fetches, origin_names):
    """Each request as 'METHOD who/path -> status' (who: gateway or as), without the SSE GET the SDK
    opens in the background (its place in the order is not fixed)."""
    out = []
    for f in fetches:
        u = urlsplit(f["url"])
        who = origin_names.get("%s://%s" % (u.scheme, u.netloc), u.netloc)
        line = "%s %s%s" % (f["method"], who, u.path)
        if f.get("jsonrpc"):
            line += " " + f["jsonrpc"] + (" " + f["tool"] if f.get("tool") else "")
        line += " -> %s" % f.get("status", f.get("failed"))
        if not (f["method"] == "GET" and u.path == "/mcp"):
            out.append(line)
    return out


def challenge(f):
    return harness.bearer_params(f.get("www_authenticate"))


def test_sdk_client_discovers_everything_from_the_401_and_is_refused_the_admin_tool(setup):
    env, op, server, resource = setup
    metadata_url = env.base_url + "/.well-known/oauth-protected-resource/mcp"
    before = server.stats()
    fetches, steps, result = run_client(env.base_url + "/mcp", op, MCP_READER, "read",
                                        calls=["read_notes", "admin_reset"])
    after = server.stats()
    names = {env.base_url: "gateway", op.issuer: "as"}
    discovery = [
        "GET gateway/.well-known/oauth-protected-resource/mcp -> 200",
        "GET as/.well-known/oauth-authorization-server -> 404",
        "GET as/.well-known/openid-configuration -> 200",
        "POST as/token -> 200",
    ]
    assert sequence(fetches, names) == [
        "POST gateway/mcp initialize -> 401",
        *discovery,
        "POST gateway/mcp initialize -> 200",
        "POST gateway/mcp notifications/initialized -> 202",
        "POST gateway/mcp tools/list -> 200",
        "POST gateway/mcp tools/call read_notes -> 200",
        "POST gateway/mcp tools/call admin_reset -> 403",
        # The SDK re-authorizes on insufficient_scope, but ClientCredentialsProvider asks for its
        # configured scope (read), not the challenge's: the same token, the same 403, and it gives up.
        *discovery,
        "POST gateway/mcp tools/call admin_reset -> 403",
    ], json.dumps(fetches, indent=1)

    # 1. The 401: no error (no token was sent, RFC 6750 §3.1), the scope the path needs, the
    # metadata's URL.
    first = challenge(fetches[0])
    assert first == {"realm": REALM, "scope": "read", "resource_metadata": metadata_url}, fetches[0]
    # 2. The gateway's metadata names the resource and the authorization server.
    meta = fetches[1]["document"]
    assert meta["resource"] == resource and meta["authorization_servers"] == [op.issuer], meta
    assert set(meta["scopes_supported"]) == {"read", "admin"}, meta
    # 3. The token request names the resource (RFC 8707); the token's aud is the resource.
    token_request = fetches[4]
    assert token_request["form"] == {"grant_type": "client_credentials", "scope": "read", "resource": resource}
    assert token_request["authorization"] == "Basic"
    assert token_request["token"] == {"token_type": "Bearer", "scope": "read", "aud": resource, "jwt": True}
    # 4. The admin tool: 403 insufficient_scope naming the scope that would do.
    refused = [f for f in fetches if f.get("tool") == "admin_reset"]
    assert len(refused) == 2
    for f in refused:
        c = challenge(f)
        assert (c["error"], c["scope"], c["resource_metadata"]) == ("insufficient_scope", "admin", metadata_url), f

    assert result["tools"] == ["read_notes", "admin_reset"], result
    read, admin = result["calls"]
    assert read["ok"] and read["text"], read
    assert not admin["ok"] and "403" in admin["error"], admin
    # The upstream ran read_notes and never saw the admin call: it got exactly the requests the
    # gateway let through (the SSE GET included), nothing of the refused ones.
    assert after["tools"].get("admin_reset", 0) == before["tools"].get("admin_reset", 0)
    assert after["tools"].get("read_notes", 0) == before["tools"].get("read_notes", 0) + 1
    passed = [f for f in fetches if f["url"].startswith(env.base_url + "/mcp") and f.get("status") in (200, 202)]
    assert after["http"] - before["http"] == len(passed), (after, before, passed)
    assert len([f for f in passed if f["method"] == "POST"]) == 4, passed   # the SSE GET may or may not be in
    assert not [c for c in server.calls() if c[2] == "admin_reset"], server.calls()


def test_sdk_client_with_the_admin_scope_runs_the_admin_tool(setup):
    env, op, server, resource = setup
    before = server.stats()["tools"].get("admin_reset", 0)
    fetches, steps, result = run_client(env.base_url + "/mcp", op, MCP_ADMIN, "read admin", calls=["admin_reset"])
    assert result["calls"] == [{"tool": "admin_reset", "ok": True, "text": "notes cleared"}], (result, fetches)
    token = [f for f in fetches if f.get("form")][0]
    assert token["form"]["scope"] == "read admin" and token["form"]["resource"] == resource, token
    assert token["token"]["scope"] == "read admin" and token["token"]["aud"] == resource, token
    assert server.stats()["tools"].get("admin_reset", 0) == before + 1
    assert [c for c in server.calls() if c[2] == "admin_reset"] == [("POST", "tools/call", "admin_reset", True)]


def test_a_token_for_another_resource_is_refused(setup):
    """RFC 8707: the provider's token for another resource (its `aud`) is no token for this one."""
    env, op, server, resource = setup
    calls = len(server.calls())
    assert list_tools(env, resource_token(op, resource)).status_code == 200
    r = list_tools(env, resource_token(op, other_resource(resource)))
    assert r.status_code == 401, (r.status_code, r.text[:300])
    assert r.json()["reason"] == "audience_mismatch", r.text
    c = harness.bearer_params(r.headers["www-authenticate"])
    assert (c["error"], c["resource_metadata"]) == (
        "invalid_token", env.base_url + "/.well-known/oauth-protected-resource/mcp"), c
    assert len(server.calls()) == calls + 1, server.calls()


# What an attacker with a `read` token may try so that the filter and the MCP server read different
# tools from one body. The MCP SDK server is the judge of what it would run: JSON.parse (the last
# of duplicate keys wins, \u escapes decoded, surrogates, whitespace), batches of up to 100, any
# JSON Content-Type. Whatever the filter answers (403, 400, 413), admin_reset must not run.
def _call(name, **extra):
    return {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": dict({"name": name, "arguments": {}}, **extra)}


# case: (body, expected status); 400/413 come with a JSON-RPC error body, 403 with scope="admin".
SMUGGLES = {
    "duplicate name, admin last": (b'{"jsonrpc":"2.0","id":7,"method":"tools/call",'
                                   b'"params":{"name":"read_notes","arguments":{},"name":"admin_reset"}}', 400),
    "duplicate params, admin last": (b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read_notes"},'
                                     b'"params":{"name":"admin_reset","arguments":{}}}', 400),
    "duplicate method, tools/call last": (b'{"jsonrpc":"2.0","id":7,"method":"tools/list","method":"tools/call",'
                                          b'"params":{"name":"admin_reset","arguments":{}}}', 400),
    "escaped name": (b'{"jsonrpc":"2.0","id":7,"method":"tools/call",'
                     b'"params":{"name":"admin\\u005freset","arguments":{}}}', 403),
    "escaped method": (b'{"jsonrpc":"2.0","id":7,"method":"tools\\/call","params":{"name":"admin_reset","arguments":{}}}',
                       403),
    "batch, admin second": (json.dumps([_call("read_notes"), dict(_call("admin_reset"), id=8)]).encode(), 403),
    "batch of one": (json.dumps([_call("admin_reset")]).encode(), 403),
    "whitespace around": (b' \r\n\t' + json.dumps(_call("admin_reset")).encode() + b' \n', 403),
    "content-type with parameters": (json.dumps(_call("admin_reset")).encode(), 403),
    "content-type text/plain": (json.dumps(_call("admin_reset")).encode(), 403),
    "chunked in small pieces": (json.dumps(_call("admin_reset")).encode(), 403),
    "padded past the bound": (json.dumps(_call("admin_reset", pad="x" * (2 << 20))).encode(), 413),
    "not JSON": (b"tools/call admin_reset", 400),
}
HEADERS = {"content-type with parameters": "Application/JSON ; charset=utf-8", "content-type text/plain": "text/plain"}


@pytest.mark.parametrize("case", list(SMUGGLES))
def test_a_read_token_cannot_smuggle_the_admin_tool(setup, case):
    env, op, server, resource = setup
    token = resource_token(op, resource)
    body, expected = SMUGGLES[case]
    headers = {"accept": "application/json, text/event-stream", "content-type": HEADERS.get(case, "application/json"),
               "mcp-protocol-version": "2025-06-18"}
    data = body
    if case == "chunked in small pieces":
        data = (body[i:i + 7] for i in range(0, len(body), 7))
    before = server.stats()
    r = env.post("/mcp", token=token, headers=headers, data=data, timeout=20)
    after = server.stats()
    assert after["tools"].get("admin_reset", 0) == before["tools"].get("admin_reset", 0), (case, r.status_code)
    assert after["http"] == before["http"], (case, r.status_code, "the MCP server saw the request")
    assert r.status_code == expected, (case, r.status_code, r.text[:300])
    if expected == 403:
        c = challenge({"www_authenticate": r.headers.get("www-authenticate")})
        assert (c["error"], c["scope"]) == ("insufficient_scope", "admin"), c
    else:
        err = r.json()
        assert err["jsonrpc"] == "2.0" and err["id"] is None and err["error"]["code"] in (-32700, -32600), err
        assert err["error"]["data"]["reason"] == ("body_too_large" if expected == 413 else "body_invalid"), err


def test_a_batch_of_read_calls_is_judged_entry_by_entry(setup):
    env, op, server, resource = setup
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, dict(_call("read_notes"), id=2)]
    r = env.post("/mcp", token=resource_token(op, resource), json=batch,
                 headers={"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"})
    assert r.status_code == 200, r.text[:300]
    assert sorted(answer["id"] for answer in r.json()) == [1, 2], r.text[:300]


def test_without_resources_the_sdk_client_stops_at_discovery(setup, tmp_path):
    """The "before" (issue 20): the same gateway without `resources` answers 401 with no
    resource_metadata and 401 on every well-known path, so the SDK takes the gateway for the
    authorization server and will not send it the credentials bound to the real one."""
    env, op, server, resource = setup
    config = filter_config(op.issuer, resource)
    del config["resources"]
    calls = len(server.calls())
    plain = harness.Envoy.start(config, tmp_path / "envoy", upstream_port=server.port, clusters={"op": op.port},
                                timeout=30)
    try:
        fetches, steps, result = run_client(plain.base_url + "/mcp", op, MCP_READER, "read", calls=["read_notes"])
    finally:
        plain.stop()
    assert sequence(fetches, {plain.base_url: "gateway", op.issuer: "as"}) == [
        "POST gateway/mcp initialize -> 401",
        "GET gateway/.well-known/oauth-protected-resource/mcp -> 401",
        "GET gateway/.well-known/oauth-protected-resource -> 401",
        "GET gateway/.well-known/oauth-authorization-server -> 401",
        "GET gateway/.well-known/openid-configuration -> 401",
    ], fetches
    assert challenge(fetches[0]) == {"realm": REALM}, fetches[0]
    assert not result["connected"] and "is not presented to %s/" % plain.base_url in result["error"], result
    assert len(server.calls()) == calls
