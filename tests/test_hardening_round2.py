"""The second attacker's review (issue 18), through real Envoy: each finding
that is fixed has its regression test here."""

import pytest

import harness
from test_upstream_oauth import AUTHSERVER_CLIENTS, GATEWAY, claims_of, config, send, started  # noqa: F401


def test_head_gets_the_gateways_token_where_a_get_rule_applies(start_envoy, authserver):
    """Finding 7: `methods: ["GET"]` with `replace` covered GET only, so HEAD
    sent the caller's own token to the backend."""
    a = authserver
    rule = {"client": "billing", "paths": ["/billing/??"], "methods": ["GET"]}
    env = started(start_envoy, a, config(a, [rule]))
    token = a.token()
    for method in ("GET", "HEAD"):
        r = env.request(method, "/billing/reports", token=token)
        assert r.status_code == 200, (method, r.status_code, r.text)
        sent = r.json()["headers"]["authorization"] if method == "GET" else r.headers["x-echo-authorization"]
        assert sent != "Bearer " + token, method
        assert claims_of(sent)["client_id"] == GATEWAY[0], method
    # A method the rule does not list keeps the caller's token.
    r = env.request("POST", "/billing/reports", token=token)
    assert r.json()["headers"]["authorization"] == "Bearer " + token


def test_method_override_headers_never_reach_the_upstream(start_envoy, authserver):
    """Finding 4: a `write` token ran DELETE (which needs `admin`) through a
    POST carrying X-HTTP-Method-Override, which frameworks obey."""
    a = authserver
    cfg = {"realm": "test", "issuers": [a.issuer_config()],
           "policy": {"POST /items": "write", "DELETE /items": "admin", "GET /??": "read"}}
    env = start_envoy(cfg)
    env.wait_status("/", 200, token=a.mint(a.claims(scope="read")), timeout=20)
    token = a.mint(a.claims(scope="write"))
    overrides = {"X-HTTP-Method-Override": "DELETE", "X-HTTP-Method": "DELETE",
                 "X-Method-Override": "DELETE", "x_http_method_override": "DELETE"}
    r = env.post("/items", token=token, headers=overrides)
    assert r.status_code == 200, r.text
    received = r.json()["headers"]
    leaked = [h for h in received if h.replace("_", "-") in
              ("x-http-method-override", "x-http-method", "x-method-override")]
    assert not leaked, received
    assert r.json()["method"] == "POST"
    assert env.request("DELETE", "/items", token=token).status_code == 403
