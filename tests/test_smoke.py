"""Smoke test: authserver + echo upstream + Envoy with the oauth-pep filter
(issuer keys found through OpenID discovery)."""


def test_no_token_is_401_with_bearer_challenge(start_envoy, filter_config):
    envoy = start_envoy(filter_config())
    r = envoy.get("/api/hello")
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer realm="), r.headers


def test_token_from_token_endpoint_reaches_upstream(start_envoy, filter_config, authserver):
    envoy = start_envoy(filter_config())
    token = authserver.token("demo-client")
    # the filter may still be fetching discovery + JWKS right after start (503)
    r = envoy.wait_status("/api/hello", 200, token=token, timeout=20)
    body = r.json()
    assert body["path"] == "/api/hello"
    assert body["method"] == "GET"
    assert authserver.stats()["jwks"] >= 1
