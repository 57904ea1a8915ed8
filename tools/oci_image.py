#!/usr/bin/env python3
"""Builds the filter's OCI image (`make image`) as an OCI image layout directory,
with no container engine and nothing that depends on the clock or the machine:
the same .wasm and meta.json give the same bytes, so the same digests.

The layout is the Wasm "compat" image (solo-io/wasm spec/spec-compat.md): an
ordinary OCI image whose single layer (application/vnd.oci.image.layer.v1.tar+gzip)
holds

    plugin.wasm         the filter (the name Istio and Envoy Gateway look for)
    plugin.meta.json    Kong's config schema ({"config_schema": …}), named after
                        the .wasm beside it as Kong expects (<name>.meta.json)

Istio (pkg/wasm/imagefetcher.go) and Envoy Gateway (internal/wasm/imagefetcher.go,
the same code) try this variant first: the last layer, of that media type, read
as tar.gz for a file whose base name is plugin.wasm. Both pin an `oci://` module
by the image's *manifest* digest (their `sha256` field), which this script prints.

Reproducible: tar entries in a fixed order with mtime 0, uid/gid 0, mode 0644 and
no user names; gzip with mtime 0 and no file name, its deflate stream made of
stored (uncompressed) blocks written here, so no compressor implementation or
level can change a byte; JSON with sorted keys and no whitespace; no `created`
time unless SOURCE_DATE_EPOCH is set.

    python3 tools/oci_image.py --wasm W --meta M --out target/oci --tag 0.1.0
    skopeo copy oci:target/oci:0.1.0 docker://REGISTRY/oauth-pep:0.1.0

Standard library only.
"""

import argparse
import datetime
import hashlib
import io
import json
import os
import shutil
import struct
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_NAME = "plugin.wasm"
META_NAME = "plugin.meta.json"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def layer_tar(files):
    """A tar of (name, bytes) in the given order, every varying field fixed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzip_stored(data):
    """gzip (RFC 1952) around a deflate stream (RFC 1951) of stored blocks:
    header with mtime 0, no name, OS 255 (unknown); blocks of at most 65535
    bytes; CRC-32 and size. Every gzip reader reads it; nothing here depends on
    a compressor's version or level."""
    out = bytearray(b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff")
    step = 65535
    chunks = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
    for i, chunk in enumerate(chunks):
        final = 1 if i == len(chunks) - 1 else 0
        out += bytes([final]) + struct.pack("<HH", len(chunk), len(chunk) ^ 0xFFFF) + chunk
    out += struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return bytes(out)


def build(wasm, meta, tag, version=None, created=None):
    """The image's blobs: {digest: bytes}, and the manifest's descriptor."""
    if wasm[:4] != b"\0asm":
        raise ValueError("not a wasm module (no \\0asm magic)")
    json.loads(meta)  # must be JSON
    tar = layer_tar([(WASM_NAME, wasm), (META_NAME, meta)])
    layer = gzip_stored(tar)
    config = {
        # The platform the Wasm OCI artifact work (CNCF TAG Runtime) gives wasm
        # images; Istio and Envoy Gateway do not read the config.
        "architecture": "wasm",
        "os": "wasip1",
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
    }
    if created:
        config["created"] = created
    config_blob = canonical_json(config)
    annotations = {
        "org.opencontainers.image.title": "oauth-pep",
        "org.opencontainers.image.description":
            "OAuth 2.0 / UMA 2.0 policy enforcement point, a proxy-wasm filter "
            "(plugin.wasm; plugin.meta.json is its config schema for Kong)",
        "org.opencontainers.image.licenses": "Apache-2.0",
    }
    if version:
        annotations["org.opencontainers.image.version"] = version
    if created:
        annotations["org.opencontainers.image.created"] = created
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": sha256(config_blob), "size": len(config_blob)},
        "layers": [{"mediaType": LAYER, "digest": sha256(layer), "size": len(layer)}],
        "annotations": annotations,
    }
    manifest_blob = canonical_json(manifest)
    blobs = {sha256(b): b for b in (layer, config_blob, manifest_blob)}
    descriptor = {"mediaType": MANIFEST, "digest": sha256(manifest_blob), "size": len(manifest_blob),
                  "annotations": {"org.opencontainers.image.ref.name": tag}}
    return blobs, descriptor


def write_layout(out, blobs, descriptor):
    """An OCI image layout at `out` (replaced whole: no stale blobs or tags)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        (tmp / "blobs" / "sha256").mkdir(parents=True)
        for digest, data in sorted(blobs.items()):
            (tmp / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
        (tmp / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
        (tmp / "index.json").write_bytes(canonical_json({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [descriptor]}))
        for d in [tmp] + [p for p in tmp.rglob("*")]:
            os.chmod(d, 0o755 if d.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def created_from_env():
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return None
    t = datetime.datetime.fromtimestamp(int(epoch), tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", required=True)
    ap.add_argument("--meta", required=True, help="Kong's <name>.meta.json (make build writes it)")
    ap.add_argument("--out", required=True, help="the OCI image layout directory to write")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--version", help="org.opencontainers.image.version")
    args = ap.parse_args(argv)
    wasm = Path(args.wasm).read_bytes()
    blobs, desc = build(wasm, Path(args.meta).read_bytes(), args.tag, args.version, created_from_env())
    write_layout(args.out, blobs, desc)
    print("%s: OCI image layout, tag %s (skopeo copy oci:%s:%s docker://REGISTRY/oauth-pep:%s)"
          % (args.out, args.tag, args.out, args.tag, args.tag))
    print("  manifest %s  <- the pin: WasmPlugin / EnvoyExtensionPolicy sha256 (hex part), or url …@%s"
          % (desc["digest"], desc["digest"]))
    print("  %s %s" % (WASM_NAME, sha256(wasm)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
