#!/usr/bin/env python3
"""Writes deploy/schemas/: the openAPIV3Schema of each CRD the manifests under
deploy/ use, taken from the platforms' own CRD files at a released tag, and
sources.json saying where each came from.

    python3 deploy/schemas/vendor.py istio/istio=DIR envoyproxy/gateway=DIR

Each DIR is a git clone (or bare mirror) of that repository holding the commit in
SOURCES; files are read with `git show COMMIT:PATH`, so the working tree's
checkout does not matter. To move to a newer release, change the tag and commit
here, rerun, and run tests/test_deploy.py.

What is kept: the served, storage version's openAPIV3Schema, with the schemas'
`description` texts removed (they are most of the bytes: EnvoyProxy's is 650 kB
with them, 190 kB without) and nothing else changed: types, enums, patterns,
required, x-kubernetes-* markers and the CEL rules (x-kubernetes-validations)
are as upstream. Both projects are Apache-2.0 licensed; so is the Gateway API
(Kubernetes Authors), whose CRDs Envoy Gateway's chart ships.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent

SOURCES = [
    {
        "repo": "istio/istio", "tag": "1.30.3", "commit": "56df41f63e513f834c9a3af33d8aed82d1d961f2",
        "path": "manifests/charts/base/files/crd-all.gen.yaml", "licence": "Apache-2.0",
        "crds": [
            ("wasmplugins.extensions.istio.io", "v1alpha1", "istio/wasmplugin.json"),
            ("serviceentries.networking.istio.io", "v1", "istio/serviceentry.json"),
            ("destinationrules.networking.istio.io", "v1", "istio/destinationrule.json"),
        ],
    },
    {
        "repo": "envoyproxy/gateway", "tag": "v1.9.0", "commit": "39763b1c07ec30a5526fe70434a2cfe4181de642",
        "path": "charts/gateway-helm/charts/crds/crds/generated/gateway.envoyproxy.io_envoyextensionpolicies.yaml",
        "licence": "Apache-2.0",
        "crds": [("envoyextensionpolicies.gateway.envoyproxy.io", "v1alpha1", "envoy-gateway/envoyextensionpolicy.json")],
    },
    {
        "repo": "envoyproxy/gateway", "tag": "v1.9.0", "commit": "39763b1c07ec30a5526fe70434a2cfe4181de642",
        "path": "charts/gateway-helm/charts/crds/crds/generated/gateway.envoyproxy.io_envoyproxies.yaml",
        "licence": "Apache-2.0",
        "crds": [("envoyproxies.gateway.envoyproxy.io", "v1alpha1", "envoy-gateway/envoyproxy.json")],
    },
    {
        # The Gateway API release Envoy Gateway v1.9.0 installs (its chart's copy).
        "repo": "envoyproxy/gateway", "tag": "v1.9.0", "commit": "39763b1c07ec30a5526fe70434a2cfe4181de642",
        "path": "charts/gateway-helm/charts/crds/crds/gatewayapi-crds.yaml",
        "licence": "Apache-2.0 (Kubernetes Authors, Gateway API)",
        "crds": [
            ("gateways.gateway.networking.k8s.io", "v1", "gateway-api/gateway.json"),
            ("httproutes.gateway.networking.k8s.io", "v1", "gateway-api/httproute.json"),
        ],
    },
]

# Keys whose value maps names to schemas, lists schemas, or is one schema.
NAMED = ("properties", "patternProperties", "definitions")
LISTS = ("allOf", "anyOf", "oneOf")
SINGLE = ("items", "additionalProperties", "not")


def strip_descriptions(node):
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key in NAMED and isinstance(value, dict):
            out[key] = {name: strip_descriptions(sub) for name, sub in value.items()}
        elif key in LISTS and isinstance(value, list):
            out[key] = [strip_descriptions(sub) for sub in value]
        elif key in SINGLE:
            out[key] = [strip_descriptions(s) for s in value] if isinstance(value, list) else strip_descriptions(value)
        else:
            out[key] = value
    return out


def main(argv):
    dirs = dict(a.split("=", 1) for a in argv)
    index = []
    for src in SOURCES:
        if src["repo"] not in dirs:
            raise SystemExit("give %s=DIR (a clone holding commit %s)" % (src["repo"], src["commit"]))
        text = subprocess.run(["git", "-C", dirs[src["repo"]], "show", "%s:%s" % (src["commit"], src["path"])],
                              check=True, capture_output=True).stdout
        docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(text) if d}
        for crd_name, version, out in src["crds"]:
            crd = docs[crd_name]
            (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
            assert v.get("served"), "%s %s is not served" % (crd_name, version)
            schema = strip_descriptions(v["schema"]["openAPIV3Schema"])
            path = HERE / out
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
            index.append({
                "file": out, "crd": crd_name, "group": crd["spec"]["group"], "kind": crd["spec"]["names"]["kind"],
                "version": version, "storage": bool(v.get("storage")),
                "repo": src["repo"], "tag": src["tag"], "commit": src["commit"], "path": src["path"],
                "upstream_sha256": hashlib.sha256(text).hexdigest(), "licence": src["licence"],
                "changed": "description texts removed",
            })
            print("wrote %s (%s %s from %s@%s)" % (out, crd_name, version, src["repo"], src["tag"]))
    (HERE / "sources.json").write_text(json.dumps(index, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
