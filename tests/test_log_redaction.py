"""No token in the filter's log, whatever the token source and the answer
(issue 18, finding 5): a denial line logs the judged path and the query with
every token parameter's value redacted; headers and cookies are never logged."""

import time

import pytest

import harness

# Envoy writes --log-path every 10 s by default; the tests read it sooner.
FLUSH = ("--file-flush-interval-msec", "50")

SOURCES = [
    ("authorization", lambda t: ("/secret", {"Authorization": "Bearer " + t})),
    ("custom_header", lambda t: ("/secret", {"X-Token": t})),
    ("query", lambda t: ("/secret?k=1&access_token=" + t, {})),
    ("query_encoded_name", lambda t: ("/secret?access%5Ftoken=" + t, {})),
    ("cookie", lambda t: ("/secret", {"Cookie": "a=1; at=%s; b=2" % t})),
]


@pytest.fixture(scope="module")
def envoy(module_envoy, authserver_module):
    auth = authserver_module
    cfg = {
        "realm": "test",
        "issuers": [auth.issuer_config()],
        "token_sources": [{"header": "authorization"}, {"header": "x-token"},
                          {"query": "access_token"}, {"cookie": "at"}],
        "policy": {"GET /secret": "admin", "GET /??": "read"},
    }
    env = module_envoy(cfg, extra_args=FLUSH)
    env.wait_status("/", 200, token=auth.mint(auth.claims(scope="read")), timeout=20)
    return env


@pytest.mark.parametrize("name,make", SOURCES, ids=[s[0] for s in SOURCES])
def test_no_token_reaches_the_log(envoy, authserver_module, name, make):
    auth = authserver_module
    now = int(time.time())
    tokens = {
        # 403: a valid token without the scope.
        "valid": (auth.mint(auth.claims(scope="read")), 403),
        # 401: expired, and a signature that does not verify.
        "expired": (auth.mint(auth.claims(iat=now - 900, nbf=now - 900, exp=now - 600)), 401),
        "forged": (auth.mint(auth.claims(scope="admin"))[:-6] + "AAAAAA", 401),
    }
    ids = []
    for what, (token, status) in tokens.items():
        path, headers = make(token)
        ids.append("log-%s-%s" % (name, what))
        r = envoy.get(path, headers=dict(headers, **{"X-Request-Id": ids[-1]}))
        assert r.status_code == status, (what, r.status_code, r.text)
    signatures = {what: token.rsplit(".", 1)[-1] for what, (token, _) in tokens.items()}

    def logged():
        text = envoy.log_text()
        return text if all("request_id=" + i in text for i in ids) else None

    log = harness.wait_until(logged, 10, what="the denial lines in the log")
    for what, signature in signatures.items():
        assert signature not in log, "the %s token's signature is in the log (%s)" % (what, name)
    if name.startswith("query"):
        assert "REDACTED" in log, log[-2000:]
