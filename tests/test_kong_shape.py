"""Kong's form of the configuration, run under Envoy: the `config` string of
kong/kong.yml's filter chain, whose callout target is `host:port` (Kong's
form) rather than a cluster name. An Envoy cluster *named* `127.0.0.1:PORT`
stands in for Kong's target, so the same string behaves the same here:
discovery and JWKS fetched through it, 200 with a good token, 401 without."""

import json

import pytest
import yaml

import harness

KONG_YML = harness.ROOT / "kong" / "kong.yml"


def kong_filter():
    doc = yaml.safe_load(KONG_YML.read_text())
    (chain,) = doc["services"][0]["routes"][0]["filter_chains"]
    (f,) = chain["filters"]
    return f


def test_kong_yml_names_the_wasm_file_and_gives_config_as_a_string():
    f = kong_filter()
    # Kong names a filter after its file in wasm_filters_path.
    assert f["name"] + ".wasm" == harness.WASM.name
    assert isinstance(f["config"], str)
    cfg = json.loads(f["config"])
    assert cfg["issuers"][0]["upstream"] == "as.example.com:443"


@pytest.fixture(scope="module")
def orders_as(tmp_path_factory):
    a = harness.AuthServer.start(tmp_path_factory.mktemp("as"), audience="orders-api",
                                 clients={"orders-app": ("app-secret", "orders.read")})
    yield a
    a.stop()


def config_for(server, target):
    """kong.yml's config string, its https issuer and target moved to the test server
    (textually: the string is what Kong would pass)."""
    text = kong_filter()["config"]
    assert "https://as.example.com" in text and "as.example.com:443" in text
    return (text.replace("as.example.com:443", target)
                .replace("https://as.example.com", server.issuer))


def test_host_port_target_under_envoy(tmp_path, wasm, echo, orders_as):
    target = "127.0.0.1:%d" % orders_as.port
    env = harness.Envoy.start(config_for(orders_as, target), tmp_path, upstream_port=echo.port,
                              clusters={target: harness.static_cluster(target, orders_as.port)})
    try:
        token = orders_as.token("orders-app")
        r = env.wait_status("/orders/17", 200, token=token)
        assert json.loads(r.text)["path"] == "/orders/17"
        stats = orders_as.stats()
        assert stats["discovery"] >= 1 and stats["jwks"] >= 1
        r = env.get("/orders/17")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer realm="orders-api"'
        r = env.post("/orders", token=token)
        assert r.status_code == 403
        assert harness.bearer_params(r.headers["www-authenticate"])["scope"] == "orders.write"
    finally:
        env.stop()


def test_the_target_is_the_cluster_name(tmp_path, wasm, echo, orders_as):
    """Control: with no cluster of that name, the keys cannot be fetched (503),
    so the 200 above came through the cluster named `host:port`."""
    target = "127.0.0.1:%d" % orders_as.port
    env = harness.Envoy.start(config_for(orders_as, target), tmp_path, upstream_port=echo.port,
                              clusters={"elsewhere": harness.static_cluster("elsewhere", orders_as.port)})
    try:
        r = env.get("/orders/17", token=orders_as.token("orders-app"))
        assert r.status_code == 503
        assert r.json()["reason"] == "keys_unavailable"
    finally:
        env.stop()
