"""The filter's OCI image (`make image`, tools/oci_image.py).

- Reproducible: the same .wasm and meta.json give byte-identical layouts (so the
  same manifest digest, the pin), whatever the tag or the directory.
- The layout is what Istio and Envoy Gateway read: `istio_extract` does what their
  image fetchers do with an OCI image (istio/istio pkg/wasm/imagefetcher.go,
  envoyproxy/gateway internal/wasm/imagefetcher.go: the "compat" variant, the last
  layer as application/vnd.oci.image.layer.v1.tar+gzip, the file whose base name is
  plugin.wasm), and both compare their `sha256` with the manifest's digest.
- Through a real registry: Debian's docker-registry (the CNCF distribution
  registry) on 127.0.0.1 with its config in a temporary directory, skopeo pushes
  the layout and pulls it back by digest, the wasm taken out of the pulled image
  is the build's, and Envoy runs it: 401 without a token, 200 with one.

The registry tests skip only when docker-registry or skopeo is not installed
(`make setup` installs both: `make image-tools`).
"""

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest
import requests

import harness

TOOL = harness.ROOT / "tools" / "oci_image.py"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def meta_path():
    return harness.require_wasm().with_name("oauth_pep.meta.json")


def build_layout(out, wasm_path=None, meta=None, tag="test"):
    r = subprocess.run([harness.PYTHON, str(TOOL), "--wasm", str(wasm_path or harness.require_wasm()),
                        "--meta", str(meta or meta_path()), "--out", str(out), "--tag", tag,
                        "--version", "0.0.0-test"],
                       capture_output=True, text=True, timeout=60, env=_without("SOURCE_DATE_EPOCH"))
    assert r.returncode == 0, r.stdout + r.stderr
    return Layout(out)


def _without(*names):
    env = dict(os.environ)
    for n in names:
        env.pop(n, None)
    return env


class Layout:
    """An OCI image layout directory (index.json, blobs/sha256/…)."""

    def __init__(self, path):
        self.path = Path(path)
        self.index = json.loads((self.path / "index.json").read_text())

    def blob(self, digest):
        data = (self.path / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
        assert sha256(data) == digest, "blob %s does not hash to its name" % digest
        return data

    def descriptor(self, ref):
        (d,) = [m for m in self.index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref]
        return d

    def manifest(self, ref):
        d = self.descriptor(ref)
        raw = self.blob(d["digest"])
        assert len(raw) == d["size"]
        return d["digest"], json.loads(raw)

    def files(self):
        return {p.relative_to(self.path).as_posix(): p.read_bytes() for p in sorted(self.path.rglob("*")) if p.is_file()}


def istio_extract(layout, ref):
    """plugin.wasm out of an image as Istio's and Envoy Gateway's fetchers take it:
    not a Docker manifest, so the OCI "compat" variant: the last layer must be
    application/vnd.oci.image.layer.v1.tar+gzip, read as tar.gz, first entry whose
    base name is plugin.wasm. Returns (manifest digest, the tar's {name: bytes})."""
    digest, manifest = layout.manifest(ref)
    assert manifest.get("mediaType") == OCI_MANIFEST
    assert manifest["layers"], "no layers"
    last = manifest["layers"][-1]
    assert last["mediaType"] == OCI_LAYER, last
    blob = layout.blob(last["digest"])
    assert len(blob) == last["size"]
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert [n for n in files if os.path.basename(n) == "plugin.wasm"], "no plugin.wasm in %s" % sorted(files)
    return digest, files


# ---------------------------------------------------------------- the layout, no registry

def test_same_input_same_bytes_whatever_the_tag_or_place(wasm, tmp_path):
    a = build_layout(tmp_path / "a", tag="one")
    b = build_layout(tmp_path / "elsewhere" / "b", tag="one")
    assert a.files() == b.files()
    c = build_layout(tmp_path / "c", tag="two")
    assert a.manifest("one")[0] == c.manifest("two")[0], "the tag is in index.json only, not in the digest"
    # A different input is a different image.
    meta = tmp_path / "other.meta.json"
    meta.write_text(json.dumps({"config_schema": {}}))
    d = build_layout(tmp_path / "d", meta=meta, tag="one")
    assert d.manifest("one")[0] != a.manifest("one")[0]


def test_rebuilding_replaces_the_layout(wasm, tmp_path):
    out = tmp_path / "oci"
    meta = tmp_path / "other.meta.json"
    meta.write_text("{}")
    first = set(build_layout(out, meta=meta).files())
    second = build_layout(out)
    assert set(second.files()) != first and len(second.index["manifests"]) == 1
    assert len(list((out / "blobs" / "sha256").iterdir())) == 3, "stale blobs left behind"


def test_the_layout_is_what_istio_and_envoy_gateway_read(wasm, tmp_path):
    layout = build_layout(tmp_path / "oci", tag="0.0.0-test")
    assert json.loads((layout.path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    digest, manifest = layout.manifest("0.0.0-test")
    assert len(manifest["layers"]) == 1
    _, files = istio_extract(layout, "0.0.0-test")
    assert files == {"plugin.wasm": wasm.read_bytes(), "plugin.meta.json": meta_path().read_bytes()}
    # Kong's convention: <name>.meta.json beside <name>.wasm, {"config_schema": the schema}.
    assert json.loads(files["plugin.meta.json"])["config_schema"] == json.loads(
        (harness.ROOT / "schema" / "oauth_pep.schema.json").read_text())
    # The config names the uncompressed layer; nothing varying in the tar or the gzip header.
    config = json.loads(layout.blob(manifest["config"]["digest"]))
    layer = layout.blob(manifest["layers"][0]["digest"])
    tar = zlib.decompress(layer, 16 + zlib.MAX_WBITS)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [sha256(tar)]}
    assert (config["architecture"], config["os"]) == ("wasm", "wasip1")
    assert "created" not in config
    assert layer[4:8] == b"\0\0\0\0", "gzip mtime"
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        for m in t.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644), m.name


def test_make_image_writes_target_oci_with_the_crates_version():
    out = subprocess.run(["make", "-n", "image"], cwd=str(harness.ROOT), capture_output=True, text=True,
                         timeout=60).stdout
    version = next(line.split('"')[1] for line in (harness.ROOT / "Cargo.toml").read_text().splitlines()
                   if line.startswith("version = "))
    assert "tools/oci_image.py" in out and "--out target/oci" in out, out
    assert "--tag %s" % version in out, out


# ---------------------------------------------------------------- through a registry

def _need(tool):
    path = shutil.which(tool)
    if not path:
        pytest.skip("%s is not installed (`make setup` installs it: make image-tools)" % tool)
    return path


class Registry:
    def __init__(self, proc, port):
        self.proc, self.port = proc, port
        self.host = "127.0.0.1:%d" % port
        self.url = "http://" + self.host


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Debian's docker-registry on 127.0.0.1, filesystem storage in a temp dir, no auth."""
    binary = _need("docker-registry")
    d = tmp_path_factory.mktemp("registry")
    port = harness.free_port()
    (d / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: %s\n"
        "http:\n  addr: 127.0.0.1:%d\n" % (d / "data", port))
    proc = harness.Proc("docker-registry", [binary, "serve", d / "config.yml"], d / "registry.log")
    reg = Registry(proc, port)
    try:
        harness.wait_until(lambda: proc.alive() and requests.get(reg.url + "/v2/", timeout=1).status_code == 200,
                           20, interval=0.1, what="docker-registry /v2/")
    except TimeoutError:
        proc.stop()
        pytest.fail("docker-registry did not start:\n" + proc.log_text()[-4000:], pytrace=False)
    yield reg
    proc.stop()


def skopeo(args, home):
    """skopeo with a private HOME (no user auth files or policies read), no
    signature policy (--insecure-policy), plain HTTP to the local registry."""
    home.mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    r = subprocess.run([_need("skopeo"), "--insecure-policy"] + args, capture_output=True, text=True,
                       timeout=90, env=env)
    assert r.returncode == 0, "skopeo %s:\n%s%s" % (" ".join(args), r.stdout, r.stderr)
    return r.stdout


def test_round_trip_through_a_registry_then_envoy_runs_it(registry, tmp_path, start_envoy, filter_config,
                                                          authserver, wasm):
    _need("skopeo")
    tag = "0.0.0-test"
    layout = build_layout(tmp_path / "oci", tag=tag)
    digest = layout.descriptor(tag)["digest"]
    ref = "%s/oauth-pep" % registry.host

    skopeo(["copy", "--dest-tls-verify=false", "oci:%s:%s" % (layout.path, tag), "docker://%s:%s" % (ref, tag)],
           tmp_path / "home")
    # The registry serves the manifest byte for byte: its digest is the one `make image` prints,
    # the value WasmPlugin's and EnvoyExtensionPolicy's sha256 compare with.
    r = requests.get("%s/v2/oauth-pep/manifests/%s" % (registry.url, tag),
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == digest == sha256(r.content)
    assert r.content == layout.blob(digest)

    # Pulled back by digest, as a pinned `oci://…@sha256:…` URL would be.
    skopeo(["copy", "--src-tls-verify=false", "docker://%s@%s" % (ref, digest), "oci:%s:pulled" % (tmp_path / "pulled")],
           tmp_path / "home")
    pulled_digest, files = istio_extract(Layout(tmp_path / "pulled"), "pulled")
    assert pulled_digest == digest
    assert sha256(files["plugin.wasm"]) == sha256(wasm.read_bytes())
    assert files["plugin.meta.json"] == meta_path().read_bytes()

    extracted = tmp_path / "extracted" / "plugin.wasm"
    extracted.parent.mkdir()
    extracted.write_bytes(files["plugin.wasm"])
    envoy = start_envoy(filter_config(), wasm_path=extracted)
    assert str(extracted) in envoy.config_path.read_text()
    r = envoy.get("/api/hello")
    assert r.status_code == 401, (r.status_code, r.text)
    r = envoy.wait_status("/api/hello", 200, token=authserver.token("demo-client"), timeout=20)
    assert r.json()["path"] == "/api/hello"
