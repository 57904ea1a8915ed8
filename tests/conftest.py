"""pytest fixtures for the oauth-pep integration tests (see tests/harness.py).

Fixtures:
  wasm              path of the built filter; fails (not skips) if it is missing
  echo              the echo upstream (one per session)               -> harness.Echo
  authserver        the authorization server, reset before each test   -> harness.AuthServer
                    (one process per test module: authserver_module; a module's
                    AUTHSERVER_CLIENTS / AUTHSERVER_INTROSPECTION_CLIENTS name its clients)
  mint              authserver.mint: sign arbitrary claims
  start_envoy       factory: start_envoy(filter_config, clusters=..., routes=..., ...) -> harness.Envoy
                    (stopped after the test; its log is printed if the test failed)
  envoy_failure     factory: envoy_failure(filter_config, ...) -> harness.EnvoyFailure
  module_envoy      like start_envoy, but Envoys live for the whole module
  filter_config     factory: filter_config(issuer overrides..., **top-level keys) -> dict
  fake_pdp          tests/fake_pdp.py (one per module); .port, .stats()
  oidc_provider     oidc-provider on Node (tests/oidc/server.mjs, one per module)
                    -> oidc_provider.OidcProvider; fails if `make setup` did not install it
"""

import sys
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import oidc_provider as oidc_op  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request):
    node = request.node
    return any(getattr(getattr(node, "rep_" + w, None), "failed", False) for w in ("setup", "call"))


@pytest.fixture(scope="session")
def wasm():
    try:
        return harness.require_wasm()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def echo(tmp_path_factory):
    e = harness.Echo.start(tmp_path_factory.mktemp("echo"))
    yield e
    e.stop()


@pytest.fixture(scope="module")
def authserver_module(request, tmp_path_factory):
    """One authorization server per test module. A module may name the server's clients:
    AUTHSERVER_CLIENTS ({id: (secret, scopes)}, default harness.DEFAULT_CLIENTS) and
    AUTHSERVER_INTROSPECTION_CLIENTS ({id: secret}, default pep / pep-secret)."""
    module = request.module
    a = harness.AuthServer.start(tmp_path_factory.mktemp("authserver"),
                                 clients=getattr(module, "AUTHSERVER_CLIENTS", None),
                                 introspection_clients=getattr(module, "AUTHSERVER_INTROSPECTION_CLIENTS", None))
    yield a
    a.stop()


@pytest.fixture
def authserver(authserver_module):
    """The module's authorization server, reset (JWKS mode ok, default keys, zero counts)."""
    if not authserver_module.proc.alive():
        pytest.fail("authserver died:\n" + authserver_module.proc.log_text()[-4000:], pytrace=False)
    authserver_module.reset()
    return authserver_module


@pytest.fixture
def mint(authserver):
    return authserver.mint


@pytest.fixture
def filter_config(authserver):
    """filter_config(**issuer_overrides) -> a complete filter config dict with
    one issuer (discovery through cluster `authserver`). Top-level keys can be
    given as top={"token_sources": [...]}."""

    def make(top=None, **issuer_overrides):
        cfg = {
            "realm": "test",
            "issuers": [authserver.issuer_config(**issuer_overrides)],
            # client_id and scopes reach the upstream as identity headers
            # (x-oauth-client-id, x-authenticated-scope) without configuration.
            "forward": {"claims": {"sub": "x-jwt-sub"}},
        }
        cfg.update(top or {})
        return cfg

    return make


def _envoy_factory(request, workdir_factory, echo, authserver):
    started = []

    def start(filter_config, **kw):
        kw.setdefault("upstream_port", echo.port)
        kw.setdefault("authserver_port", authserver.port)
        env = harness.Envoy.start(filter_config, workdir_factory(), **kw)
        started.append(env)
        return env

    def fin():
        for env in started:
            if _failed(request):
                print("\n--- envoy log %s (tail) ---\n%s" % (env.proc.log_path_envoy, env.log_text()[-8000:]))
            env.stop()

    request.addfinalizer(fin)
    return start


@pytest.fixture
def start_envoy(request, wasm, tmp_path, echo, authserver):
    counter = iter(range(1000))
    return _envoy_factory(request, lambda: tmp_path / ("envoy%d" % next(counter)), echo, authserver)


@pytest.fixture(scope="module")
def module_envoy(request, wasm, tmp_path_factory, echo, authserver_module):
    return _envoy_factory(request, lambda: tmp_path_factory.mktemp("envoy"), echo, authserver_module)


@pytest.fixture
def envoy_failure(wasm, tmp_path, echo, authserver):
    def run(filter_config, **kw):
        kw.setdefault("upstream_port", echo.port)
        kw.setdefault("authserver_port", authserver.port)
        return harness.Envoy.start_expecting_failure(filter_config, tmp_path / "envoy-fail", **kw)

    return run


@pytest.fixture(scope="module")
def fake_pdp(tmp_path_factory):
    port = harness.free_port()
    proc = harness.Proc("fake_pdp", [harness.PYTHON, harness.TESTS / "fake_pdp.py", "--port", port],
                        Path(tmp_path_factory.mktemp("pdp")) / "fake_pdp.log")
    proc.wait_ready_line()
    proc.port = port
    proc.stats = lambda: requests.get("http://127.0.0.1:%d/stats" % port, timeout=5).json()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def oidc_provider(tmp_path_factory):
    try:
        op = oidc_op.OidcProvider.start(tmp_path_factory.mktemp("oidc"))
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield op
    op.stop()
