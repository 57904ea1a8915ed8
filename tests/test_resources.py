"""Protected resources through a real Envoy (RFC 9728, RFC 8707, RFC 9068):
the metadata documents of a root and a path resource (GET, HEAD, other
methods), checked by the strict client library oauth4webapi as well; the
`resource_metadata` of every 401 and 403 on a resource's paths; tokens
accepted only on the resource they name in `aud`, whatever the caches hold;
and the issuers' JWT access-token profile (`typ`, RFC 9068's claims).
"""

import http.client
import json
import subprocess

import pytest

import harness
from oidc_provider import OIDC_DIR, node_binary, require_node_modules

MCP = "https://api.example/mcp"
ROOT = "https://api.example/"
MCP_METADATA = "https://api.example/.well-known/oauth-protected-resource/mcp"
ROOT_METADATA = "https://api.example/.well-known/oauth-protected-resource"


def request(env, method, path, token=None, headers=()):
    """Any method through Envoy; the body as read (none for HEAD)."""
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
    try:
        hs = dict(headers)
        if token is not None:
            hs["Authorization"] = "Bearer " + token
        conn.request(method, path, headers=hs)
        r = conn.getresponse()
        body = r.read()
        return harness.Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, body)
    finally:
        conn.close()


def resource_config(filter_config, authserver):
    return filter_config(top={
        "resources": [
            {"resource": MCP, "resource_name": "MCP tools",
             "resource_documentation": "https://docs.example/mcp"},
            # The root resource takes the tokens the authserver mints by default (aud "api").
            {"resource": ROOT, "audiences": ["api"]},
        ],
        "policy": {"GET /mcp/??": "read", "POST /mcp/??": "admin", "GET /??": "read"},
    })


@pytest.fixture
def env(start_envoy, filter_config, authserver):
    return start_envoy(resource_config(filter_config, authserver))


def challenge(r):
    params = harness.bearer_params(r.headers.get("www-authenticate"))
    assert params is not None, r
    return params


def test_metadata_of_a_path_and_a_root_resource(env, authserver):
    r = request(env, "GET", "/.well-known/oauth-protected-resource/mcp")
    assert r.status == 200, r
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "max-age=300"
    assert r.json() == {
        "resource": MCP,
        "authorization_servers": [authserver.issuer],
        "scopes_supported": ["admin", "read"],
        "bearer_methods_supported": ["header"],
        "resource_name": "MCP tools",
        "resource_documentation": "https://docs.example/mcp",
        "dpop_signing_alg_values_supported": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                              "ES256", "ES384", "EdDSA"],
        "dpop_bound_access_tokens_required": False,
        "tls_client_certificate_bound_access_tokens": False,
    }
    root = request(env, "GET", "/.well-known/oauth-protected-resource?x=1")
    assert root.status == 200 and root.json()["resource"] == ROOT, root
    assert root.json()["scopes_supported"] == ["admin", "read"], "every rule overlaps /??"


def test_head_gets_the_headers_and_other_methods_405(env):
    r = request(env, "HEAD", "/.well-known/oauth-protected-resource/mcp")
    assert r.status == 200 and r.body == b"", r
    assert r.headers["content-type"] == "application/json"
    for method in ("POST", "PUT", "DELETE"):
        r = request(env, method, "/.well-known/oauth-protected-resource/mcp")
        assert r.status == 405, r
        assert r.headers["allow"] == "GET, HEAD"
    # Not a metadata path: judged like any other path.
    r = request(env, "GET", "/.well-known/oauth-protected-resource/other")
    assert r.status == 401 and challenge(r)["resource_metadata"] == ROOT_METADATA, r


def test_every_401_and_403_names_the_resources_metadata(env, mint, authserver):
    r = request(env, "GET", "/mcp/tools")
    assert r.status == 401, r
    # The scope the policy wants here, then the metadata URL; no error code
    # for a missing token (RFC 6750 §3.1).
    assert r.headers["www-authenticate"] == \
        'Bearer realm="test", scope="read", resource_metadata="%s"' % MCP_METADATA
    r = request(env, "POST", "/mcp/tools/call")
    assert r.status == 401 and challenge(r) == \
        {"realm": "test", "scope": "admin", "resource_metadata": MCP_METADATA}, r
    r = request(env, "GET", "/orders")
    assert r.status == 401 and challenge(r) == \
        {"realm": "test", "scope": "read", "resource_metadata": ROOT_METADATA}, r

    read = mint(authserver.claims(aud=MCP, scope="read"))
    r = request(env, "POST", "/mcp/tools/call", token=read)
    assert r.status == 403, r
    assert challenge(r) == {
        "realm": "test", "error": "insufficient_scope",
        "error_description": 'the token lacks the scopes this request needs (rule "POST /mcp/??")',
        "scope": "admin", "resource_metadata": MCP_METADATA,
    }
    r = request(env, "GET", "/mcp/tools", token="not-a-jwt")
    assert r.status == 401 and challenge(r)["error"] == "invalid_token", r
    assert challenge(r)["resource_metadata"] == MCP_METADATA and challenge(r)["scope"] == "read"
    # A 403 without a challenge of its own (no rule) gets one carrying the URL.
    r = request(env, "DELETE", "/x", token=mint())
    assert r.status == 403 and r.json()["reason"] == "no_rule", r
    assert challenge(r) == {"realm": "test", "resource_metadata": ROOT_METADATA}


def test_a_token_is_accepted_only_on_the_resource_it_names(env, mint, authserver):
    for_root = mint()  # aud "api": the root resource's audience
    for_mcp = mint(authserver.claims(aud=[MCP, "other"]))
    # Each first where it belongs (so the token cache holds its grant), then elsewhere.
    assert request(env, "GET", "/orders", token=for_root).status == 200
    assert request(env, "GET", "/mcp/tools", token=for_mcp).status == 200
    for token, path in ((for_root, "/mcp/tools"), (for_mcp, "/orders"), (for_root, "/mcp")):
        r = request(env, "GET", path, token=token, headers={"x-request-id": "aud-%s" % path})
        assert r.status == 401, (path, r)
        assert r.json()["reason"] == "audience_mismatch", r
        assert challenge(r)["error"] == "invalid_token"
    # and where they belong, still.
    assert request(env, "GET", "/orders", token=for_root).status == 200
    assert request(env, "GET", "/mcp/tools", token=for_mcp).status == 200
    harness.wait_until(lambda: "request_id=aud-/mcp/tools" in env.log_text(), 5, what="the log line")
    line = next(l for l in env.log_text().splitlines() if "request_id=aud-/mcp/tools" in l)
    assert "reason=audience_mismatch" in line and for_root not in line, line


def test_outside_every_resource_the_issuers_audiences_rule(start_envoy, filter_config, mint, authserver):
    cfg = filter_config(top={"resources": [{"resource": MCP}]})
    env = start_envoy(cfg)
    for_mcp = mint(authserver.claims(aud=MCP))
    assert request(env, "GET", "/mcp/x", token=for_mcp).status == 200
    r = request(env, "GET", "/elsewhere", token=for_mcp)
    assert r.status == 401 and r.json()["reason"] == "audience_mismatch", r
    assert "resource_metadata" not in r.headers["www-authenticate"], "not a resource's path"
    assert request(env, "GET", "/elsewhere").headers["www-authenticate"] == 'Bearer realm="test"'
    assert request(env, "GET", "/elsewhere", token=mint()).status == 200
    r = request(env, "GET", "/mcp/x", token=mint())
    assert r.status == 401 and r.json()["reason"] == "audience_mismatch", r


def test_an_introspection_answers_aud_decides_per_resource(start_envoy, authserver):
    """Opaque tokens: the answer's `aud` is checked per request like a JWT's,
    and the cached answer does not carry a token to another resource."""
    issuer = {"issuer": authserver.issuer, "audiences": ["api"], "upstream": "authserver",
              "introspection": {"endpoint": authserver.url("/introspect"), "client_id": "pep",
                                "client_secret": "pep-secret"}}
    env = start_envoy({"realm": "test", "issuers": [issuer],
                       "resources": [{"resource": MCP}, {"resource": ROOT, "audiences": ["api"]}]})
    for_root = authserver.opaque()  # aud "api"
    for_mcp = authserver.opaque(aud=[MCP])
    no_aud = authserver.opaque(aud=None)
    assert request(env, "GET", "/orders", token=for_root).status == 200
    assert request(env, "GET", "/mcp/x", token=for_mcp).status == 200
    for token, path in ((for_root, "/mcp/x"), (for_mcp, "/orders"), (no_aud, "/orders")):
        r = request(env, "GET", path, token=token)
        assert r.status == 401 and r.json()["reason"] == "audience_mismatch", (path, r)
    assert authserver.introspections(for_root) == 1, "the second answer came from the cache"


def test_oauth4webapi_discovers_and_accepts_the_metadata(env, authserver):
    try:
        require_node_modules()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    cases = [{"resource": MCP, "path": "/mcp"}, {"resource": ROOT, "path": "/orders"}]
    out = subprocess.run([node_binary(), OIDC_DIR / "resource_discovery.mjs"],
                         input=json.dumps({"base": env.base_url, "cases": cases}),
                         capture_output=True, text=True, timeout=30, cwd=OIDC_DIR)
    assert out.returncode == 0, out.stderr
    mcp, root = json.loads(out.stdout)
    assert "error" not in mcp and "error" not in root, (mcp, root)
    assert mcp["status"] == 401
    assert mcp["challenge"]["resource_metadata"] == MCP_METADATA, mcp
    assert mcp["challenge"]["error"] == "invalid_token", mcp
    assert mcp["metadata_url"] == MCP_METADATA
    assert mcp["metadata"]["resource"] == MCP
    assert mcp["metadata"]["authorization_servers"] == [authserver.issuer]
    assert root["challenge"]["resource_metadata"] == ROOT_METADATA == root["metadata_url"]
    assert root["metadata"]["resource"] == ROOT


def test_oauth4webapi_refuses_a_document_for_another_resource(start_envoy, filter_config):
    """The check the library makes is real: a document whose `resource`
    differs from the identifier asked for is refused."""
    try:
        require_node_modules()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    env = start_envoy(filter_config(top={"resources": [{"resource": "https://api.example/mcp"}]}))
    cases = [{"resource": "https://other.example/mcp", "path": "/mcp"}]
    out = subprocess.run([node_binary(), OIDC_DIR / "resource_discovery.mjs"],
                         input=json.dumps({"base": env.base_url, "cases": cases}),
                         capture_output=True, text=True, timeout=30, cwd=OIDC_DIR)
    assert out.returncode == 0, out.stderr
    (result,) = json.loads(out.stdout)
    assert "does not match the expected value" in result.get("error", ""), result


def test_two_resources_with_one_metadata_path_are_refused(envoy_failure, filter_config):
    cfg = filter_config(top={"resources": [{"resource": "https://a.example/mcp"},
                                           {"resource": "https://b.example/mcp"}]})
    failure = envoy_failure(cfg)
    assert "`resources[1].resource`: has the metadata path /.well-known/oauth-protected-resource/mcp" \
        in failure.log, failure.log[-2000:]


# --------------------------------------------------------------------------
# RFC 9068 JWT access-token profile
# --------------------------------------------------------------------------

def test_the_rfc9068_profile_wants_at_jwt_and_its_claims(start_envoy, filter_config, mint, authserver):
    env = start_envoy(filter_config(access_token_profile="rfc9068"))
    at = {"typ": "at+jwt"}
    assert request(env, "GET", "/", token=mint(header=at)).status == 200
    assert request(env, "GET", "/", token=mint(header={"typ": "application/AT+JWT"})).status == 200
    for header, claims, why in (
        ({"typ": "JWT"}, None, "typ must be at+jwt"),
        ({"typ": None}, None, "typ must be at+jwt"),
        (at, authserver.claims(jti=None), "needs sub, client_id, iat and jti"),
        (at, authserver.claims(client_id=None), "needs sub, client_id, iat and jti"),
        (at, authserver.claims(sub=None), "needs sub, client_id, iat and jti"),
        (at, authserver.claims(iat=None), "needs sub, client_id, iat and jti"),
    ):
        r = request(env, "GET", "/", token=mint(claims, header=header))
        assert r.status == 401, (header, claims, r)
        assert r.json()["reason"] == "token_malformed" and why in r.json()["error_description"], r


def test_a_typ_list_and_the_default(start_envoy, filter_config, mint):
    listed = start_envoy(filter_config(access_token_profile=["", "at+jwt"]))
    default = start_envoy(filter_config())
    for header, on_list, on_default in (
        ({"typ": None}, 200, 200),
        ({"typ": "at+jwt"}, 200, 200),
        ({"typ": "JWT"}, 401, 200),
        ({"typ": "example+jwt"}, 401, 200),
        # A security event (RFC 8417) is never an access token, whatever the profile.
        ({"typ": "secevent+jwt"}, 401, 401),
        ({"typ": "text/plain"}, 401, 401),
    ):
        token = mint(header=header)
        assert request(listed, "GET", "/", token=token).status == on_list, header
        assert request(default, "GET", "/", token=token).status == on_default, header
