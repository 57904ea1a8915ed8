"""The path the filter judges is the path the upstream gets, through a real Envoy.

The harness leaves the HTTP connection manager at Envoy's defaults
(`normalize_path` and `merge_slashes` off), so Envoy hands the filter the path
as the client sent it and only the filter's own rewrite of `:path` stands
between a dot segment and the upstream. Requests are sent byte for byte
(`Srv.raw`); tests/echo.py answers with the path it received.
"""

import pytest

from test_policy import REALM, Srv, config, is_echo, launch  # noqa: F401 - launch is a fixture

POLICY = {
    "GET /admin/??": "admin",
    "HEAD /admin/ping": "read",
    "GET /api/??": "read",
    "? /??": "read",  # a weaker catch-all: what a dodged rule would fall to
}


@pytest.fixture(scope="module")
def srv(launch, authserver_module):  # noqa: F811 - the imported fixture
    return launch(config(
        authserver_module, policy=POLICY, public_paths=["/health"],
        anonymous={"id": "anon", "paths": ["/open/??"], "scopes": ["read"]}, forward={"hide_credentials": True},
        token_sources=[{"header": "authorization"}, {"query": "at"}]))


def upstream_path(srv, method, path, scopes=None, token=None):
    if token is None and scopes is not None:
        token = srv.token(scopes)
    seen = srv.check(srv.raw(method, path, token), "%s %s with %r" % (method, path, scopes), 200)
    return seen["path"]


def test_the_upstream_gets_the_judged_path(srv):
    cases = [
        # (raw path, scopes (None: no token), what the upstream must receive)
        ("/admin/x/../../health", None, "/health"),  # judged as the public /health
        ("/admin/s/../../api/x", ["read"], "/api/x"),  # judged as /api/x, needs only read
        ("/admin//../api/x", ["read"], "/api/x"),
        ("/admin/%2e%2e/api/x?q=1&r=%2F&s=/../", ["read"], "/api/x?q=1&r=%2F&s=/../"),  # query kept
        ("//admin///x", ["admin"], "/admin/x"),
        ("/api/%7Euser/caf%c3%a9", ["read"], "/api/~user/caf%C3%A9"),
        ("/x/../open/doc", None, "/open/doc"),  # the anonymous consumer
        # A trailing slash is kept, as Envoy's normalize_path and merge_slashes keep it.
        ("/api/x/", ["read"], "/api/x/"),
        ("/api/x//", ["read"], "/api/x/"),
        ("/api/x/y/..", ["read"], "/api/x/"),
        # Matching is case-sensitive, like Envoy's routes: /ADMIN is not /admin
        # (README: what to do with a case-insensitive upstream).
        ("/ADMIN/secret", ["read"], "/ADMIN/secret"),
        ("/api/x?q", ["read"], "/api/x?q"),
    ]
    for raw, scopes, want in cases:
        assert upstream_path(srv, "GET", raw, scopes) == want, raw
    # ... and the rule that judged it is the one for that path.
    for raw in ("//admin///x", "/api/../admin/x", "/open/../admin/x"):
        srv.check(srv.raw("GET", raw, srv.token(["read"])), raw, 403, "insufficient_scope", "GET /admin/??",
                  "admin")
    srv.check(srv.raw("GET", "/admin/x/../../api/x"), "no token", 401)


def test_a_query_token_is_hidden_from_the_normalised_path(srv):
    token = srv.token(["read"])
    assert upstream_path(srv, "GET", "/api/./x?k=1&at=%s&z" % token) == "/api/x?k=1&z"
    assert upstream_path(srv, "GET", "/api//x?at=%s" % token) == "/api/x"


@pytest.mark.parametrize("raw, problem", [
    ("/admin;x/secret", "path contains `;` (path parameters)"),  # Tomcat/Spring: /admin/secret
    ("/api/x;jsessionid=1", "path contains `;` (path parameters)"),
    ("/api/x%3Bjsessionid=1", "path contains `;` (path parameters)"),
    ("/admin./secret", "path has a segment ending in `.` or a space"),  # IIS: /admin/secret
    ("/admin%2E/secret", "path has a segment ending in `.` or a space"),
    ("/admin%20/secret", "path has a segment ending in `.` or a space"),
])
def test_paths_an_upstream_may_read_differently_are_refused(srv, raw, problem):
    r = srv.raw("GET", raw, srv.token(["read"]))
    body = srv.check(r, raw, 400, "invalid_request")
    assert body["error_description"] == problem, srv.fail(raw, r)
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="%s", error="invalid_request", error_description="%s"' % (
        REALM, problem), srv.fail(raw, r)


def test_head_is_judged_by_the_get_rule(srv):
    read, admin = srv.token(["read"]), srv.token(["admin"])
    # Frameworks answer HEAD with the GET handler: the weaker `? /??` must not apply.
    r = srv.raw("HEAD", "/admin/x", read)  # a HEAD answer has no body
    assert r.status_code == 403 and 'error="insufficient_scope"' in r.headers["WWW-Authenticate"], srv.fail("HEAD", r)
    assert srv.raw("HEAD", "/admin/x", admin).status_code == 200
    assert srv.raw("HEAD", "/admin/x/../../api/x", read).status_code == 200
    # A HEAD rule of its own wins over the GET rule.
    assert srv.raw("HEAD", "/admin/ping", read).status_code == 200
    srv.check(srv.raw("GET", "/admin/ping", read), "GET /admin/ping with read", 403, "insufficient_scope",
              "GET /admin/??")


def test_options_is_a_method_like_any_other(srv):
    # A CORS preflight carries no token: without Envoy's CORS filter in front it gets 401.
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    srv.check(srv.raw("OPTIONS", "/api/x", headers=preflight), "preflight", 401)
    assert upstream_path(srv, "OPTIONS", "/api/./x", ["read"]) == "/api/x"  # the `? /??` rule


ROUTES = [
    {"match": {"prefix": "/admin"}, "route": {"cluster": "upstream", "timeout": "15s"}},
    {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "other route"}}},
]


@pytest.fixture(scope="module")
def routed(launch, authserver_module):  # noqa: F811 - the imported fixture
    return launch(config(authserver_module, policy={"GET /admin/??": "admin", "GET /api/??": "read"}),
                  routes=ROUTES)


def test_envoy_routes_by_the_rewritten_path(routed):
    admin, read = routed.token(["admin"]), routed.token(["admin", "read"])
    # Sent to the catch-all route, judged and rewritten as /admin/x: routed to the upstream.
    seen = routed.check(routed.raw("GET", "/other/../admin/x", admin), "into /admin", 200)
    assert seen["path"] == "/admin/x", seen
    # Sent to the /admin route, judged and rewritten as /api/x: routed to the other route.
    r = routed.raw("GET", "/admin/../api/x", read)
    assert r.status_code == 200 and not is_echo(r) and r.text == "other route", routed.fail("out of /admin", r)


def cors_in_front(bootstrap):
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"].insert(0, {"name": "envoy.filters.http.cors", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}})
    hcm["route_config"]["virtual_hosts"][0]["typed_per_filter_config"] = {"envoy.filters.http.cors": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": "https://app.example"}],
        "allow_methods": "GET, POST", "allow_headers": "authorization"}}


@pytest.fixture(scope="module")
def cors(launch, authserver_module):  # noqa: F811 - the imported fixture
    return launch(config(authserver_module, policy={"GET /api/??": "read"}), customize=cors_in_front)


def test_envoys_cors_filter_in_front_answers_preflights(cors):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}
    r = cors.raw("OPTIONS", "/api/x", headers=preflight)
    assert r.status_code == 200 and not is_echo(r), cors.fail("preflight", r)
    assert r.headers.get("access-control-allow-origin") == "https://app.example", cors.fail("preflight", r)
    # The request itself still needs its token.
    origin = {"Origin": "https://app.example"}
    cors.check(cors.raw("GET", "/api/x", headers=origin), "no token", 401)
    seen = cors.check(cors.raw("GET", "/api/./x", cors.token(["read"]), headers=origin), "with token", 200)
    assert seen["path"] == "/api/x", seen
