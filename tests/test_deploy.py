"""The Kubernetes manifests under deploy/ (Istio, Envoy Gateway), checked without
a cluster (none can run here):

- Each resource against its platform's own CRD schema, vendored in deploy/schemas/
  (deploy/schemas/README.md: which release, which commit, the licence), as the API
  server checks it: the structural schema with unknown fields refused (kubectl's
  default --validate=strict), defaults applied, and the CRD's CEL rules
  (x-kubernetes-validations) evaluated with cel-python, with the few Kubernetes CEL
  functions they use (isURL, url) written here.
- The filter's configuration inside (WasmPlugin.pluginConfig, EnvoyExtensionPolicy
  wasm[].config) against schema/oauth_pep.schema.json, then through real Envoy
  (`--mode validate`, which runs the filter's on_configure) as each platform hands
  it over: the JSON text in a StringValue, next to a cluster of the name its
  `upstream` gives (Istio's outbound|443||idp.example.com; Envoy Gateway's bootstrap
  cluster from the EnvoyProxy), with the secret's variable as host_env_keys.
- The pieces meet: each `upstream` is a cluster the other resources make; each
  `*_env` variable reaches the filter from the Secret; the policy targets the route.
"""

import copy
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import celpy
import jsonschema
import pytest
import yaml

import examples
import harness

ROOT = harness.ROOT
DEPLOY = ROOT / "deploy"
SCHEMAS = DEPLOY / "schemas"
SOURCES = json.loads((SCHEMAS / "sources.json").read_text())
FILTER_SCHEMA = jsonschema.Draft4Validator(json.loads((ROOT / "schema" / "oauth_pep.schema.json").read_text()))
PLATFORMS = ("istio", "envoy-gateway")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SECRET_VALUE = "test-introspection-secret"


def documents(platform):
    """[(file name, resource)] of deploy/<platform>/*.yaml."""
    out = []
    for path in sorted((DEPLOY / platform).glob("*.yaml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return out


ALL = [(p, name, d) for p in PLATFORMS for name, d in documents(p)]


def resource_id(item):
    platform, name, d = item
    return "%s/%s:%s/%s" % (platform, name, d.get("kind"), d.get("metadata", {}).get("name"))


def one(platform, kind):
    (d,) = [d for _, d in documents(platform) if d["kind"] == kind]
    return d


# ---------------------------------------------------------------- the CRD schemas as the API server reads them

def crd_entry(api_version, kind):
    group, _, version = api_version.rpartition("/")
    found = [s for s in SOURCES if (s["group"], s["version"], s["kind"]) == (group, version, kind)]
    return found[0] if found else None


def strict(node):
    """A structural schema as a draft 4 JSON Schema that refuses unknown fields
    (unless x-kubernetes-preserve-unknown-fields) and takes `nullable`."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = strict(value)
        else:
            out[key] = value
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    return out


def root_schema(entry):
    schema = json.loads((SCHEMAS / entry["file"]).read_text())
    schema = copy.deepcopy(schema)
    # Every object has these; some CRDs (Istio's) leave them to the API server.
    schema["properties"].setdefault("apiVersion", {"type": "string"})
    schema["properties"].setdefault("kind", {"type": "string"})
    schema["properties"].setdefault("metadata", {"type": "object"})
    return schema


def with_defaults(schema, value):
    """`value` with the schema's defaults filled in, as the API server does before
    validating (CEL rules see defaulted fields)."""
    if isinstance(value, dict):
        value = dict(value)
        props = schema.get("properties", {})
        for name, sub in props.items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
        for name in list(value):
            if name in props:
                value[name] = with_defaults(props[name], value[name])
            elif isinstance(schema.get("additionalProperties"), dict):
                value[name] = with_defaults(schema["additionalProperties"], value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [with_defaults(schema["items"], v) for v in value]
    return value


# Kubernetes' CEL URL library (k8s.io/apiserver/pkg/cel/library/urls.go), the part these
# CRDs use: isURL is Go's url.ParseRequestURI succeeding; url() the parsed URL.
def _is_url(s):
    s = str(s)
    if not s or " " in s:
        return celpy.celtypes.BoolType(False)
    if s.startswith("/"):
        return celpy.celtypes.BoolType(True)
    parts = urlsplit(s)
    return celpy.celtypes.BoolType(bool(parts.scheme) and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", parts.scheme)
                                   is not None)


def _url(s):
    if not _is_url(s):
        raise ValueError("url(%r): not a URL" % s)
    return celpy.celtypes.StringType(s)


CEL_FUNCTIONS = {
    "isURL": _is_url,
    "url": _url,
    "getScheme": lambda u: celpy.celtypes.StringType(urlsplit(str(u)).scheme),
    "getHostname": lambda u: celpy.celtypes.StringType(urlsplit(str(u)).hostname or ""),
    "getHost": lambda u: celpy.celtypes.StringType(urlsplit(str(u)).netloc),
    "getEscapedPath": lambda u: celpy.celtypes.StringType(urlsplit(str(u)).path),
}
CEL = celpy.Environment()


def cel_checks(schema, value, path=()):
    """(path, rule, value) for each CEL rule on a schema node that `value` reaches."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule, value
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name, sub in value.items():
            if name in props:
                yield from cel_checks(props[name], sub, path + (name,))
            elif isinstance(schema.get("additionalProperties"), dict):
                yield from cel_checks(schema["additionalProperties"], sub, path + (name,))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            yield from cel_checks(schema["items"], sub, path + (i,))


def cel_results(schema, resource):
    """[(path, rule text, outcome)]: True, False or the evaluation error."""
    out = []
    for path, rule, value in cel_checks(schema, resource):
        text = rule["rule"]
        if "oldSelf" in text:  # transition rules only run on update
            continue
        prog = CEL.program(CEL.compile(text), functions=CEL_FUNCTIONS)
        try:
            result = prog.evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as e:
            result = e
        outcome = bool(result) if isinstance(result, celpy.celtypes.BoolType) else result
        out.append(("/".join(map(str, path)), text, outcome, rule.get("message")))
    return out


# ---------------------------------------------------------------- the vendored schemas

def test_every_vendored_schema_names_its_source():
    files = {p.relative_to(SCHEMAS).as_posix() for p in SCHEMAS.rglob("*.json") if p.name != "sources.json"}
    assert files == {s["file"] for s in SOURCES}
    readme = (SCHEMAS / "README.md").read_text()
    for s in SOURCES:
        assert re.fullmatch(r"[0-9a-f]{40}", s["commit"]) and s["licence"].startswith("Apache-2.0"), s
        assert "%s" % s["repo"] in readme and s["tag"] in readme and s["commit"] in readme, s["file"]
        schema = json.loads((SCHEMAS / s["file"]).read_text())
        assert schema["type"] == "object" and "spec" in schema["properties"], s["file"]


def test_every_manifest_is_a_known_kind():
    kinds = {(d["apiVersion"], d["kind"]) for _, _, d in ALL}
    unknown = {k for k in kinds if k != ("v1", "Secret") and not crd_entry(*k)}
    assert not unknown, "no vendored schema for %s (deploy/schemas/vendor.py)" % unknown


@pytest.mark.parametrize("item", ALL, ids=resource_id)
def test_manifest_validates_against_its_crd(item):
    _, _, d = item
    meta = d["metadata"]
    assert DNS_SUBDOMAIN.match(meta["name"]) and len(meta["name"]) <= 253, meta
    assert DNS_LABEL.match(meta["namespace"]) and len(meta["namespace"]) <= 63, meta
    if (d["apiVersion"], d["kind"]) == ("v1", "Secret"):
        assert set(d) == {"apiVersion", "kind", "metadata", "type", "stringData"} and d["type"] == "Opaque"
        assert all(isinstance(v, str) for v in d["stringData"].values())
        return
    entry = crd_entry(d["apiVersion"], d["kind"])
    schema = root_schema(entry)
    errors = sorted(jsonschema.Draft4Validator(strict(schema)).iter_errors(d), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join("%s: %s" % ("/".join(map(str, e.absolute_path)), e.message) for e in errors)
    results = cel_results(schema, with_defaults(schema, d))
    failed = [r for r in results if r[2] is False]
    unevaluated = [r for r in results if r[2] is not True and r[2] is not False]
    assert not failed, failed
    assert not unevaluated, unevaluated


def test_cel_checks_refuse_what_the_api_server_refuses():
    """The CEL evaluation is no rubber stamp: rules these manifests pass fail on broken copies."""
    wp = copy.deepcopy(one("istio", "WasmPlugin"))
    wp["spec"]["url"] = "ftp://registry.example.com/oauth-pep:0.1.0"
    wp["spec"]["targetRefs"] = [{"kind": "Gateway", "name": "x"}]  # with selector: one of them only
    schema = root_schema(crd_entry(wp["apiVersion"], wp["kind"]))
    failed = {r[3] for r in cel_results(schema, with_defaults(schema, wp)) if r[2] is False}
    assert failed >= {"url must have schema one of [http, https, file, oci]",
                      "only one of targetRefs or selector can be set"}, failed
    eep = copy.deepcopy(one("envoy-gateway", "EnvoyExtensionPolicy"))
    eep["spec"]["wasm"][0]["code"]["type"] = "HTTP"
    schema = root_schema(crd_entry(eep["apiVersion"], eep["kind"]))
    failed = {r[3] for r in cel_results(schema, with_defaults(schema, eep)) if r[2] is False}
    assert "If type is HTTP, http field needs to be set." in failed, failed
    ep = copy.deepcopy(one("envoy-gateway", "EnvoyProxy"))
    del ep["spec"]["bootstrap"]["value"]
    schema = root_schema(crd_entry(ep["apiVersion"], ep["kind"]))
    failed = {r[3] for r in cel_results(schema, with_defaults(schema, ep)) if r[2] is False}
    assert "provided bootstrap patch doesn't match the configured patch type" in failed, failed


def test_strict_schema_refuses_unknown_fields():
    wp = copy.deepcopy(one("istio", "WasmPlugin"))
    wp["spec"]["failStrategyy"] = "FAIL_CLOSE"
    schema = strict(root_schema(crd_entry(wp["apiVersion"], wp["kind"])))
    assert [e.message for e in jsonschema.Draft4Validator(schema).iter_errors(wp)]


# ---------------------------------------------------------------- the filter's configuration inside

def plugin_config(platform):
    if platform == "istio":
        return one("istio", "WasmPlugin")["spec"]["pluginConfig"]
    (w,) = one("envoy-gateway", "EnvoyExtensionPolicy")["spec"]["wasm"]
    return w["config"]


def values_of(node, key):
    """Every value of `key` anywhere in a JSON document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from values_of(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from values_of(v, key)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_filter_config_validates_against_the_filters_schema(platform):
    errors = list(FILTER_SCHEMA.iter_errors(plugin_config(platform)))
    assert not errors, [e.message for e in errors]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_both_platforms_run_one_configuration(platform):
    """The two manifests differ only in the cluster name."""
    def without_upstreams(node):
        if isinstance(node, dict):
            return {k: without_upstreams(v) for k, v in node.items() if k != "upstream"}
        if isinstance(node, list):
            return [without_upstreams(v) for v in node]
        return node
    assert without_upstreams(plugin_config("istio")) == without_upstreams(plugin_config("envoy-gateway"))


def test_istio_upstream_is_a_service_entry_cluster_with_tls():
    se = one("istio", "ServiceEntry")
    dr = one("istio", "DestinationRule")
    cfg = plugin_config("istio")
    for upstream in set(values_of(cfg, "upstream")):
        m = re.fullmatch(r"outbound\|(\d+)\|([^|]*)\|(.+)", upstream)
        assert m, "%r is not an Istio outbound cluster name" % upstream
        port, subset, host = int(m.group(1)), m.group(2), m.group(3)
        assert subset == "" and host in se["spec"]["hosts"]
        assert port in [p["number"] for p in se["spec"]["ports"]]
        # https issuers: the filter speaks HTTP to the cluster, the cluster originates TLS.
        assert dr["spec"]["host"] == host
        (pls,) = [p for p in dr["spec"]["trafficPolicy"]["portLevelSettings"] if p["port"]["number"] == port]
        assert pls["tls"]["mode"] == "SIMPLE" and pls["tls"]["sni"] == host
        assert pls["tls"]["subjectAltNames"] == [host]
    issuers = [urlsplit(i["issuer"]) for i in cfg["issuers"]]
    assert all(u.scheme == "https" and u.hostname in se["spec"]["hosts"] for u in issuers)
    # The gateway pods the plugin selects are the ones the DestinationRule applies to.
    wp = one("istio", "WasmPlugin")
    assert dr["spec"]["workloadSelector"] == wp["spec"]["selector"]
    assert wp["metadata"]["namespace"] == se["metadata"]["namespace"] == dr["metadata"]["namespace"]


def bootstrap_clusters():
    ep = one("envoy-gateway", "EnvoyProxy")
    assert ep["spec"]["bootstrap"]["type"] == "Merge"
    return yaml.safe_load(ep["spec"]["bootstrap"]["value"])["static_resources"]["clusters"]


def test_envoy_gateway_upstream_is_a_bootstrap_cluster_and_the_pieces_meet():
    names = {c["name"] for c in bootstrap_clusters()}
    assert set(values_of(plugin_config("envoy-gateway"), "upstream")) <= names
    gw, route = one("envoy-gateway", "Gateway"), one("envoy-gateway", "HTTPRoute")
    ep, eep = one("envoy-gateway", "EnvoyProxy"), one("envoy-gateway", "EnvoyExtensionPolicy")
    assert gw["spec"]["infrastructure"]["parametersRef"] == {
        "group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": ep["metadata"]["name"]}
    assert ep["metadata"]["namespace"] == gw["metadata"]["namespace"]
    assert route["spec"]["parentRefs"] == [{"name": gw["metadata"]["name"]}]
    assert eep["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                           "name": route["metadata"]["name"]}]
    assert eep["metadata"]["namespace"] == route["metadata"]["namespace"]


def test_secrets_reach_the_filter():
    for platform in PLATFORMS:
        wanted = set(values_of(plugin_config(platform), "client_secret_env"))
        assert wanted, platform
        secret = one(platform, "Secret")
        if platform == "istio":
            # vmConfig.env HOST entries; `kubectl set env --from=secret/NAME` names each variable after its key.
            env = one("istio", "WasmPlugin")["spec"]["vmConfig"]["env"]
            assert wanted <= {e["name"] for e in env if e.get("valueFrom") == "HOST"}
            assert wanted <= set(secret["stringData"])
            assert secret["metadata"]["namespace"] == one("istio", "WasmPlugin")["metadata"]["namespace"]
        else:
            (w,) = one("envoy-gateway", "EnvoyExtensionPolicy")["spec"]["wasm"]
            assert wanted <= set(w["env"]["hostKeys"])
            container_env = one("envoy-gateway", "EnvoyProxy")["spec"]["provider"]["kubernetes"][
                "envoyDeployment"]["container"]["env"]
            for e in container_env:
                if e["name"] in wanted:
                    ref = e["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
            assert wanted <= {e["name"] for e in container_env}


def test_image_references_are_pinned_by_manifest_digest():
    wp = one("istio", "WasmPlugin")["spec"]
    assert wp["url"].startswith("oci://") and re.fullmatch(r"[0-9a-f]{64}", wp["sha256"])
    (w,) = one("envoy-gateway", "EnvoyExtensionPolicy")["spec"]["wasm"]
    assert w["code"]["type"] == "Image" and not w["code"]["image"]["url"].startswith(("http:", "https:"))
    # Envoy Gateway's CRD does not enforce the hex form (its kubebuilder marker lacks the `+`).
    assert re.fullmatch(r"[0-9a-f]{64}", w["code"]["image"]["sha256"])
    assert w["failOpen"] is False
    assert one("istio", "WasmPlugin")["spec"]["failStrategy"] == "FAIL_RELOAD"


# ---------------------------------------------------------------- what Envoy gets

def istio_cluster(upstream):
    """The cluster Istio makes from the ServiceEntry and DestinationRule (its name,
    DNS resolution, port, TLS origination), enough for Envoy to accept the filter's
    `upstream`; Istio adds more (metadata, stats names, its own CA handling)."""
    _, port, _, host = upstream.split("|")
    dr = one("istio", "DestinationRule")
    (pls,) = dr["spec"]["trafficPolicy"]["portLevelSettings"]
    return {
        "name": upstream, "type": "STRICT_DNS", "connect_timeout": pls["connectionPool"]["tcp"]["connectTimeout"],
        "load_assignment": {"cluster_name": upstream, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": host, "port_value": int(port)}}}}]}]},
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": pls["tls"]["sni"],
            "common_tls_context": {"validation_context": {
                "trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"},
                "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": n}}
                                                  for n in pls["tls"]["subjectAltNames"]]}}}},
    }


def rendered(platform, wasm):
    """The Envoy bootstrap (as JSON text) with the wasm filter as the platform renders it."""
    cfg = plugin_config(platform)
    if platform == "istio":
        spec = one("istio", "WasmPlugin")["spec"]
        clusters = {u: istio_cluster(u) for u in set(values_of(cfg, "upstream"))}
        root_id, env_keys = spec["pluginName"], [e["name"] for e in spec["vmConfig"]["env"]]
        # pilot/pkg/model/extensions.go: FAIL_RELOAD -> PluginConfig.failure_policy FAIL_RELOAD.
        policy = {"failure_policy": "FAIL_RELOAD"}
    else:
        (w,) = one("envoy-gateway", "EnvoyExtensionPolicy")["spec"]["wasm"]
        clusters = {c["name"]: c for c in bootstrap_clusters()}
        root_id, env_keys = w["rootID"], w["env"]["hostKeys"]
        policy = {"fail_open": w["failOpen"]}

    def customize(b):
        wasm_cfg = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
            "http_filters"][0]["typed_config"]["config"]
        wasm_cfg["root_id"] = root_id
        wasm_cfg.pop("fail_open", None)
        wasm_cfg.update(policy)

    # Both hand the filter the JSON text of the object (Istio: protojson of the Struct;
    # Envoy Gateway: the raw JSON) in a google.protobuf.StringValue.
    b = harness.bootstrap(json.dumps(cfg), harness.free_port(), harness.free_port(), harness.free_port(),
                          clusters=clusters, wasm_path=wasm, customize=customize, host_env_keys=env_keys)
    return json.dumps(b, indent=1), env_keys


@pytest.mark.parametrize("platform", PLATFORMS)
def test_envoy_accepts_the_filter_as_the_platform_renders_it(platform, wasm, tmp_path):
    text, env_keys = rendered(platform, wasm)
    path = tmp_path / "envoy.json"
    path.write_text(text)
    ok, out = examples.validate(path, env={k: SECRET_VALUE for k in env_keys})
    assert ok, out[-3000:]
    # on_configure ran: without the secret's variable the filter refuses to start.
    ok, out = examples.validate(path, env={k: None for k in env_keys})
    assert not ok and env_keys[0] in out, out[-3000:]


def test_envoy_refuses_an_unknown_field_in_the_plugin_config(wasm, tmp_path):
    """What the CRD cannot check (pluginConfig is free-form there), Envoy does at load."""
    wp = copy.deepcopy(one("istio", "WasmPlugin"))
    wp["spec"]["pluginConfig"]["issuers"][0]["audience"] = "orders-api"
    b = harness.bootstrap(json.dumps(wp["spec"]["pluginConfig"]), harness.free_port(), harness.free_port(),
                          harness.free_port(), clusters={"outbound|443||idp.example.com": 1}, wasm_path=wasm)
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(b))
    ok, out = examples.validate(path, env={"OAUTH_PEP_INTROSPECTION_SECRET": SECRET_VALUE})
    assert not ok and "audience" in out, out[-3000:]
