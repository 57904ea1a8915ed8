"""What operators see: the denial reason in Envoy's access log, one key=value
log line per denial, the log level, true log lines for cluster and TLS
mistakes, and 503 bodies that do not tell callers internal names."""

import time

import harness

ACCESS_FORMAT = "%REQ(X-REQUEST-ID)% %RESPONSE_CODE% %FILTER_STATE(wasm.oauth_pep.reason:PLAIN)%\n"


def with_access_log(path):
    def customize(bootstrap):
        hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["access_log"] = [{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(path),
                "log_format": {"text_format_source": {"inline_string": ACCESS_FORMAT}},
            },
        }]
    return customize


def access_lines(path, prefix, n, timeout=10):
    """The access log lines of the requests whose x-request-id starts with `prefix`, without it."""
    def enough():
        try:
            lines = [l.split(" ", 1)[1] for l in path.read_text().splitlines() if l.startswith(prefix)]
        except FileNotFoundError:
            return None
        return lines if len(lines) >= n else None
    return harness.wait_until(enough, timeout, what="%d access log lines" % n)


def test_the_access_log_shows_the_denial_reason(start_envoy, filter_config, authserver, tmp_path):
    log = tmp_path / "access.log"
    env = start_envoy(filter_config(top={"policy": {"GET /api/??": "read"}}), customize=with_access_log(log))
    token = authserver.token()
    env.wait_status("/api/x", token=token)
    expired = authserver.mint(authserver.claims(iat=int(time.time()) - 900, nbf=int(time.time()) - 900,
                                                exp=int(time.time()) - 600))
    cases = ((dict(), 401), (dict(token=expired), 401), (dict(token=token), 403), (dict(token=token), 200))
    for i, (kw, status) in enumerate(cases):
        path = "/admin" if status == 403 else "/api/x"
        assert env.get(path, headers={"x-request-id": "t-%d" % i}, **kw).status_code == status
    assert access_lines(log, "t-", 4) == ["401 token_missing", "401 token_expired", "403 no_rule", "200 -"]


def test_one_key_value_log_line_per_denial(start_envoy, filter_config, authserver):
    env = start_envoy(filter_config())
    env.wait_status("/", token=authserver.token())
    r = env.get("/orders?x=1", headers={"x-request-id": "req-42"})
    assert r.status_code == 401 and r.json()["request_id"] == "req-42" and r.json()["reason"] == "token_missing"
    line = harness.wait_until(lambda: [l for l in env.log_text().splitlines() if "request_id=req-42" in l], 10,
                              what="the denial log line")[0]
    assert 'denied status=401 reason=token_missing request_id=req-42 method=GET path="/orders?x=1"' in line, line
    assert "Bearer" not in line


def test_log_level_warn_keeps_refused_callers_out_of_the_log(start_envoy, filter_config, authserver):
    env = start_envoy(filter_config(top={"log_level": "warn"}))
    env.wait_status("/", token=authserver.token())
    assert env.get("/", headers={"x-request-id": "quiet"}).status_code == 401
    authserver.set_jwks_mode("error500")
    rotated = authserver.mint(kid="rotated")
    assert env.get("/", token=rotated, headers={"x-request-id": "loud"}).status_code == 503
    harness.wait_until(lambda: "request_id=loud" in env.log_text(), 10, what="the 503 line at warn")
    assert "request_id=quiet" not in env.log_text()


def test_a_tls_cluster_in_front_of_a_plain_server_gets_a_true_log_line(start_envoy, filter_config, authserver):
    """Before: the log said `answered HTTP 503`, as if the server had answered."""
    def tls_to_plain(bootstrap):
        for cluster in bootstrap["static_resources"]["clusters"]:
            if cluster["name"] == "authserver":
                cluster["transport_socket"] = {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}}
    env = start_envoy(filter_config(fetch_timeout_ms=1000), customize=tls_to_plain)
    r = env.get("/", token=authserver.token())
    assert r.status_code == 503 and r.json()["reason"] == "keys_unavailable"
    harness.wait_until(lambda: "no upstream answered" in env.log_text(), 10, what="the true log line")
    assert "TLS transport socket" in env.log_text()


def test_503_bodies_do_not_name_internal_clusters(start_envoy, filter_config, authserver):
    env = start_envoy(filter_config(upstream="authsever"))
    r = env.get("/", token=authserver.token())
    assert r.status_code == 503, r.text
    assert "authsever" not in r.text and r.json()["reason"] == "keys_unavailable", r.text
    harness.wait_until(lambda: "authsever" in env.log_text(), 10, what="the cluster named in the log")
