"""Gluu Gateway's plugin configs, pasted as they are into a `gluu` block,
through a real Envoy against tests/authserver.py (its issuer is the op_url):
Kong admin API output and the keyed-by-name form, the one info line about the
oxd fields, every config error at once, pass_credentials (pass, hide,
phantom_token), anonymous, consumer_mapping, custom_headers and Kong-style
`{"message": …}` bodies with our statuses and challenges.
docs/migrating-from-gluu-gateway.md is the guide.
"""

import base64
import json
import time

import pytest

import harness

# Seed 000 (Gluu's spontaneous-scope tutorial): `/transactions/?` needs a
# `transactions:…` scope. As the GG UI stored it: a JSON string.
SEED_000_EXPRESSION = json.dumps([{
    "path": "/transactions/?",
    "conditions": [{"httpMethods": ["GET"],
                    "scope_expression": {"rule": {"and": [{"var": 0}]}, "data": ["^transactions:.+$"]}}],
}])

OXD = {"oxd_id": "6ab3-oxd-id", "oxd_url": "https://localhost:8443",
       "client_id": "@!oxd-client", "client_secret": "oxd-secret"}


def kong_plugins(auth, pep):
    """What GET /plugins on Kong's admin API answers for the two plugins."""
    def obj(name, config):
        return {"id": "p-" + name, "name": name, "enabled": True, "protocols": ["http", "https"],
                "route": {"id": "r-1"}, "service": None, "consumer": None, "created_at": 1600000000,
                "tags": None, "config": config}
    return {"data": [obj("gluu-oauth-auth", auth), obj("gluu-oauth-pep", pep)], "next": None}


def seed_000(a, **auth):
    """The tutorial's two plugins, the way Kong returns them, defaults shown."""
    auth_config = dict(OXD, op_url=a.issuer, anonymous=" ", pass_credentials="pass",
                       consumer_mapping=True, custom_headers=None)
    auth_config.update(auth)
    pep_config = dict(OXD, op_url=a.issuer, deny_by_default=True,
                      oauth_scope_expression=SEED_000_EXPRESSION, method_path_tree="{\"GET\":{}}")
    return kong_plugins(auth_config, pep_config)


# The Kong consumer the tutorial creates for its OP client (custom_id = client_id).
CONSUMERS = {"data": [{"id": "0c7f-consumer", "username": "tutorial-app", "custom_id": "demo-client"},
                      {"id": "a1a1-anonymous", "username": "anonymous"}]}
INTROSPECTION = {"client_id": "pep", "client_secret": "pep-secret"}


def gluu_config(a, plugins, **block):
    b = {"upstream": "authserver", "introspection": INTROSPECTION, "consumers": CONSUMERS, "plugins": plugins}
    b.update(block)
    return {"realm": "gluu-test", "gluu": b}


def start(module_envoy, a, cfg):
    env = module_envoy(cfg)
    jwt = a.mint(a.claims(scope="transactions:1"))
    harness.wait_until(lambda: env.get("/transactions/1", token=jwt).status_code != 503, 20,
                       what="op_url's keys to load")
    return env


def unsigned_jwt_payload(value):
    """The payload of `Bearer header.payload.` with alg none."""
    assert value.startswith("Bearer "), value
    header, payload, signature = value[len("Bearer "):].split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    assert json.loads(base64.urlsafe_b64decode(pad(header))) == {"typ": "JWT", "alg": "none"}
    assert signature == ""
    return json.loads(base64.urlsafe_b64decode(pad(payload)))


def message(r):
    return r.json()


@pytest.fixture(scope="module")
def phantom(module_envoy, authserver_module):
    a = authserver_module
    a.reset()
    custom = [{"header_name": "x-consumer-id", "value_lua_exp": "consumer.id", "format": "string"},
              {"header_name": "x_token_sub", "value_lua_exp": "introspect_data.sub", "format": "base64"},
              {"header_name": "x-token-data", "value_lua_exp": "introspect_data", "format": "jwt"}]
    return start(module_envoy, a, gluu_config(a, seed_000(a, pass_credentials="phantom_token",
                                                          custom_headers=custom)))


def test_the_oxd_fields_get_one_info_line(phantom):
    log = phantom.log_text().splitlines()
    lines = [ln for ln in log if "configured oxd" in ln]
    # One line per configuration load: each wasm VM (main thread, workers) loads it.
    assert len(lines) == len([ln for ln in log if "oauth-pep configured:" in ln]) >= 1, lines
    assert "`oxd_id`, `oxd_url`, `client_id`, `client_secret` ignored" in lines[0], lines
    assert "[info]" in lines[0], lines
    assert any("method_path_tree` ignored" in ln for ln in phantom.log_text().splitlines())


def test_seed_000_tutorial_behaves_as_documented(phantom, authserver):
    a = authserver
    # Step 2 of the tutorial: the token with transactions:123 reads /transactions/123.
    jwt = a.mint(a.claims(scope="transactions:123"))
    r = phantom.get("/transactions/123", token=jwt)
    assert r.status_code == 200, r.text
    seen = r.json()["headers"]
    assert seen["x-consumer-id"] == "0c7f-consumer" and seen["x-consumer-username"] == "tutorial-app"
    assert seen["x-oauth-client-id"] == "demo-client"
    assert seen["x-authenticated-scope"] == "transactions:123"
    assert base64.b64decode(seen["x-token-sub"]) == b"demo-client"
    assert unsigned_jwt_payload("Bearer " + seen["x-token-data"])["scope"] == "transactions:123"
    # A JWT is passed on as it came (Gluu's phantom token replaced only introspected ones).
    assert seen["authorization"] == "Bearer " + jwt


def test_phantom_token_replaces_an_opaque_token_upstream(phantom, authserver):
    opaque = authserver.opaque(scope="transactions:7", client_id="demo-client")
    r = phantom.get("/transactions/7", token=opaque)
    assert r.status_code == 200, r.text
    answer = unsigned_jwt_payload(r.json()["headers"]["authorization"])
    assert answer["active"] is True and answer["scope"] == "transactions:7", answer
    assert opaque not in json.dumps(r.json()), "the opaque token reached the upstream"


def test_kong_style_bodies_keep_statuses_and_challenges(phantom, authserver):
    a = authserver
    r = phantom.get("/transactions/1")
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="gluu-test"'
    assert message(r)["message"] == "Failed to get bearer token from Authorization header"
    assert set(message(r)) <= {"message", "request_id"}, r.text

    r = phantom.get("/transactions/1", token=a.mint(a.claims(scope="read")))
    assert r.status_code == 403, r.text
    assert message(r)["message"] == "You are not authorized to access this resource"
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]

    r = phantom.get("/accounts/1", token=a.mint(a.claims(scope="transactions:1")))
    assert (r.status_code, message(r)["message"]) == (403, "Unprotected path/method are not allowed")

    # consumer_mapping: a client without a Kong consumer is refused as Gluu did.
    r = phantom.get("/transactions/1", token=a.mint(a.claims(scope="transactions:1", client_id="stranger")))
    assert (r.status_code, message(r)["message"]) == (401, "Unknown consumer")
    assert 'error="invalid_token"' in r.headers["www-authenticate"]

    r = phantom.get("/transactions/1", token=a.mint(a.claims(scope="transactions:1", exp=int(time.time()) - 600)))
    assert r.status_code == 401 and "expired" in message(r)["message"], r.text

    revoked = a.opaque(scope="transactions:1")
    a.revoke(revoked)
    r = phantom.get("/transactions/1", token=revoked)
    assert (r.status_code, message(r)["message"]) == (401, "Invalid access token provided in Authorization header")


def test_an_authorization_server_outage_is_503_not_gluus_502(phantom, authserver):
    authserver.set_introspection_mode("error500")
    try:
        r = phantom.get("/transactions/1", token=authserver.opaque(scope="transactions:1"))
    finally:
        authserver.set_introspection_mode("ok")
    assert r.status_code == 503, r.text
    assert message(r)["message"] == "An unexpected error ocurred"
    assert r.headers["retry-after"] == "5"


@pytest.fixture(scope="module")
def hidden(module_envoy, authserver_module):
    """The keyed-by-name form; hide, anonymous, no consumer mapping,
    deny_by_default false, RFC 6750 bodies chosen back."""
    a = authserver_module
    a.reset()
    cfg = {"realm": "gluu-test", "error_body": "rfc6750", "gluu": {
        "upstream": "authserver",
        "consumers": CONSUMERS,
        "gluu-oauth-auth": dict(OXD, op_url=a.issuer, pass_credentials="hide",
                                anonymous="a1a1-anonymous", consumer_mapping=True),
        "gluu-oauth-pep": dict(OXD, op_url=a.issuer, deny_by_default=False,
                               oauth_scope_expression=json.loads(SEED_000_EXPRESSION)),
    }}
    return start(module_envoy, a, cfg)


def test_hide_and_anonymous(hidden, authserver):
    a = authserver
    jwt = a.mint(a.claims(scope="transactions:5"))
    r = hidden.get("/transactions/5", token=jwt)
    assert r.status_code == 200, r.text
    assert "authorization" not in r.json()["headers"], "pass_credentials: hide"
    # No token, a path no rule names (deny_by_default false): the anonymous consumer.
    r = hidden.get("/catalog")
    assert r.status_code == 200, r.text
    seen = r.json()["headers"]
    assert seen["x-anonymous-consumer"] == "true" and seen["x-consumer-id"] == "a1a1-anonymous"
    assert seen["x-consumer-username"] == "anonymous"
    # A broken token falls back to anonymous too, as in Gluu.
    assert hidden.get("/catalog", token="garbage.garbage.garbage").status_code == 200
    # A rule still needs a token: 401 with our RFC 6750 body.
    r = hidden.get("/transactions/5")
    assert r.status_code == 401 and r.json()["reason"] == "token_missing", r.text
    # Without gluu.introspection an opaque token cannot be checked (said at start).
    assert any("no `gluu.introspection`" in ln for ln in hidden.log_text().splitlines())
    assert hidden.get("/transactions/5", token=a.opaque(scope="transactions:5")).status_code == 401


def test_a_pasted_config_gets_every_error_at_once(envoy_failure, authserver):
    a = authserver
    pasted = dict(OXD, op_url=a.issuer, oauth_scope_expression=SEED_000_EXPRESSION,
                  pass_credentials="pass")
    cfg = dict(pasted, issuers=[a.issuer_config()],
               gluu={"upstream": "authserver", "gluu-oauth-auth": dict(OXD, op_url=a.issuer, consumer_mapping=False,
                                                                       hide_credentials=True, pass_credentials="hide"),
                     "gluu-oauth-pep": {"op_url": a.issuer, "oauth_scope_expresion": "[]"}})
    res = envoy_failure(cfg)
    assert not res.became_ready and res.exited, res
    lines = [ln for ln in res.log.splitlines() if "oauth-pep: invalid configuration" in ln]
    assert len(lines) == 1, res.log[-3000:]
    line = lines[0]
    for expected in [
        "`oxd_id`: unknown field `oxd_id`; `oxd_id` only served oxd: put the Gluu plugin config inside `gluu`",
        "`oauth_scope_expression`: unknown field `oauth_scope_expression`; `oauth_scope_expression` goes under `policy` or inside `gluu`",
        "`pass_credentials`: unknown field",
        "`client_secret`: unknown field",
        "`gluu.gluu-oauth-pep.oauth_scope_expresion`: unknown field `oauth_scope_expresion`; did you mean `oauth_scope_expression`?",
        "`gluu.gluu-oauth-auth.hide_credentials`: give `pass_credentials` (4.x) or `hide_credentials` (3.x), not both",
        "`issuers[0]`: is set both here and by `gluu.gluu-oauth-auth.op_url`",
    ]:
        assert expected in line, "%s\n not in: %s" % (expected, line)
