"""The configuration schema, schema/oauth_pep.schema.json, against what else
describes the configuration. No Envoy is started here.

- Kong reads it as `oauth_pep.meta.json` next to the .wasm ({"config_schema": …}),
  which `make build` writes, and validates it as JSON Schema draft 4 (Kong sets
  `$schema` to draft 4 whatever the file says; lua-resty-ljsonschema is a draft 4
  validator), so that is the draft used here too.
- Every filter configuration in the repository validates: the Envoy files
  (envoy/*.yaml, demo/*.yaml), kong/*.yml and the Markdown code blocks (how they
  are found: `repo_configs`).
- The filter agrees: tests/schema_cases.json holds configurations both accept, ones
  both refuse and ones only the filter refuses; core/tests/schema.rs runs the same
  file through Config::from_json, and also checks the schema's objects and enums
  against the Rust fields and variants.
- README's reference tables and the schema name the same fields (`reference_rows`).
"""

import copy
import json
import re
import subprocess

import jsonschema
import pytest
import yaml

import harness

ROOT = harness.ROOT
SCHEMA_PATH = ROOT / "schema" / "oauth_pep.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
META = harness.WASM.with_name("oauth_pep.meta.json")
CASES = json.loads((ROOT / "tests" / "schema_cases.json").read_text())
VALIDATOR = jsonschema.Draft4Validator(SCHEMA)
# The policy language has its own reference (README "Scope policies", docs/policy.md).
POLICY_REF = "#/definitions/policy"


def errors(config, validator=VALIDATOR):
    return sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))


def where(error):
    return "/".join(str(p) for p in error.absolute_path)


# ---------------------------------------------------------------- the schema and meta.json

def test_the_schema_is_draft_4_and_kong_shaped():
    jsonschema.Draft4Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-04/schema#"
    # Kong's string form (`config: |` in kong.yml) must stay valid with the schema present.
    assert SCHEMA["type"] == ["object", "string"]
    # Keywords newer than draft 4 would be ignored by Kong's validator: none are used.
    newer = {"const", "contains", "propertyNames", "if", "then", "else", "$defs",
             "dependentRequired", "dependentSchemas", "unevaluatedProperties", "examples"}

    def walk(node):
        if isinstance(node, dict):
            assert not newer & set(node) - {"properties"}, newer & set(node)
            for key, value in node.items():
                if key != "properties":
                    walk(value)
                else:
                    for sub in value.values():
                        walk(sub)
        elif isinstance(node, list):
            for item in node:
                walk(item)
    walk(SCHEMA)


def test_make_build_ships_the_schema_as_kong_meta_json(wasm):
    assert META.is_file(), "%s missing: `make build` writes it next to the .wasm" % META
    assert json.loads(META.read_text()) == {"config_schema": SCHEMA}


def test_make_build_writes_meta_json():
    # The rule that writes it, so a plain `cargo build` user knows where it comes from.
    out = subprocess.run(["make", "-n", "build"], cwd=str(ROOT), capture_output=True, text=True,
                         check=True).stdout
    assert "oauth_pep.meta.json" in out and "schema/oauth_pep.schema.json" in out


# ---------------------------------------------------------------- every config in the repository

FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def filter_configs(doc):
    """The oauth-pep configurations in a parsed YAML document, wherever they are:
    an Envoy wasm filter whose vm_config loads oauth_pep.wasm (its
    configuration.value), or a Kong filter named oauth_pep (its config)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            code = node.get("vm_config", {}).get("code", {}).get("local", {})
            if str(code.get("filename", "")).endswith("oauth_pep.wasm"):
                found.append(node["configuration"]["value"])
            elif node.get("name") == "oauth_pep" and "config" in node:
                found.append(node["config"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
    walk(doc)
    return found


FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!--\s*schema:\s*(\S+)\s*-->\s*\Z")


def markdown_blocks():
    """Every fenced block of every tracked Markdown file: (file, line, language,
    text, marker). A marker is a `<!-- schema: PATH -->` comment right before the
    block (blank lines allowed)."""
    files = subprocess.run(["git", "ls-files", "*.md"], cwd=str(ROOT), capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        text = (ROOT / name).read_text()
        for m in FENCE.finditer(text):
            before = text[:m.start()].rstrip()
            marker = MARKER.search(before)
            yield name, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2), \
                marker and marker.group(1)


def subschema(path):
    """The schema of the configuration part at `path` (`.` the whole; `a.b`,
    `a[]` an item of the array a, `a.*` a value of the map a)."""
    node = SCHEMA
    for segment in ([] if path == "." else path.split(".")):
        name, items = (segment[:-2], True) if segment.endswith("[]") else (segment, False)
        node = resolve(node)
        node = node["additionalProperties"] if name == "*" else node["properties"][name]
        if items:
            node = resolve(node)["items"]
    return dict(resolve(node), definitions=SCHEMA["definitions"])


def resolve(node):
    while "$ref" in node:
        node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def repo_configs():
    """(where, config, schema path) for every filter configuration in the repository.

    - YAML files envoy/*.yaml, demo/*.yaml, kong/*.yml and ```yaml blocks in Markdown:
      `filter_configs` finds them; a string is parsed as JSON, as the filter does.
    - ```json blocks in Markdown: a whole configuration when it is an object with
      `issuers` (or `gluu`); otherwise the block must be marked `<!-- schema: PATH -->` with the
      part of the configuration it shows (`policy`, `issuers[]`, `.` for top-level
      members shown without their braces), or `<!-- schema: none -->` when it is no
      configuration at all. An unmarked fragment fails the test, so a new example
      cannot slip by unchecked.
    """
    out = []
    files = sorted(ROOT.glob("envoy/*.yaml")) + sorted(ROOT.glob("demo/*.yaml")) + \
        sorted(ROOT.glob("kong/*.yml"))
    for path in files:
        found = filter_configs(yaml.safe_load(path.read_text()))
        if path.parent.name in ("envoy", "kong"):
            assert found, "%s holds no oauth-pep configuration" % path
        for n, config in enumerate(found):
            out.append(("%s#%d" % (path.relative_to(ROOT), n), config, ".", False))
    for name, line, lang, text, marker in markdown_blocks():
        at = "%s:%d" % (name, line)
        if lang == "yaml":
            for n, config in enumerate(filter_configs(yaml.safe_load(text))):
                out.append(("%s#%d" % (at, n), config, ".", False))
        elif lang == "json" and marker != "none":
            members = False
            try:
                value = json.loads(text)
            except ValueError:
                assert marker, "%s: a JSON fragment without a <!-- schema: PATH --> marker" % at
                value, members = json.loads("{%s}" % text), True
            if marker is None:
                assert isinstance(value, dict) and ("issuers" in value or "gluu" in value), \
                    "%s: not a whole configuration; mark it <!-- schema: PATH --> or none" % at
            out.append((at, value, marker or ".", members))
    return out


REPO_CONFIGS = repo_configs()


def test_the_repository_has_configs_in_every_kind_of_place():
    places = {where.split("#")[0].split(":")[0] for where, _, _, _ in REPO_CONFIGS}
    assert {"README.md", "docs/policy.md", "kong/kong.yml", "envoy/demo.yaml",
            "demo/envoy-compose.yaml"} <= places, places
    assert len(REPO_CONFIGS) >= 20


@pytest.mark.parametrize("where,config,path,members", REPO_CONFIGS,
                         ids=[c[0] for c in REPO_CONFIGS])
def test_every_config_in_the_repository_is_schema_valid(where, config, path, members):
    if isinstance(config, str):
        assert not errors(config)       # Kong's string form
        config = json.loads(config)
    schema = subschema(path)
    if members:
        # Some members of the object, shown without their braces: not all it requires.
        schema.pop("required", None)
        schema.pop("anyOf", None)  # `issuers` or `gluu`: also a requirement
    found = errors(config, jsonschema.Draft4Validator(schema))
    assert not found, "%s: %s" % (where, "; ".join("%s: %s" % (e.json_path, e.message)
                                                    for e in found))


# ---------------------------------------------------------------- the filter agrees (tests/schema_cases.json)

def case_ids(kind):
    return [c["name"] for c in CASES[kind]]


@pytest.mark.parametrize("case", CASES["valid"], ids=case_ids("valid"))
def test_valid_cases_are_schema_valid(case):
    found = errors(case["config"])
    assert not found, [(where(e), e.message) for e in found]


@pytest.mark.parametrize("case", CASES["invalid"], ids=case_ids("invalid"))
def test_invalid_cases_are_refused_by_the_schema_where_named(case):
    found = errors(case["config"])
    assert found, "the schema accepts it"
    assert case["schema_error_at"] in [where(e) for e in found], \
        [(where(e), e.message) for e in found]


@pytest.mark.parametrize("case", CASES["filter_only"], ids=case_ids("filter_only"))
def test_filter_only_cases_are_what_the_schema_cannot_say(case):
    # If the schema learns to refuse one, move it to "invalid" with its schema_error_at.
    assert not errors(case["config"])


def test_the_cases_cover_every_section():
    # Every top-level field has an invalid case reported at it or inside it.
    at = [c["schema_error_at"] for c in CASES["invalid"]]
    missing = [p for p in SCHEMA["properties"] if not any(a == p or a.startswith(p + "/") for a in at)]
    assert not missing, missing
    assert len(CASES["invalid"]) >= 30


def test_a_string_config_is_the_json_text_kong_passes_as_is():
    text = json.dumps(CASES["valid"][0]["config"])
    assert not errors(text)
    assert errors(5) and errors(["issuers"])


# ---------------------------------------------------------------- README's reference tables

REFERENCE = re.compile(r"<!--\s*reference:\s*(\S+)\s*-->\s*\n((?:\|.*\n)+)")


def schema_fields():
    """{path: (schema, required)} of every configuration field: properties of
    objects, through arrays (`a[]`) and maps (`a.*`), not into `anyOf`
    alternatives (value forms described in their field's row) or the policy
    language."""
    fields = {}

    def walk(node, prefix):
        if node.get("$ref") == POLICY_REF:
            return
        node = resolve(node)
        for name, prop in node.get("properties", {}).items():
            path = prefix + name
            fields[path] = (resolve(prop), name in node.get("required", []))
            walk(prop, path + ".")
        if isinstance(node.get("items"), dict):
            walk(node["items"], prefix[:-1] + "[].")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], prefix + "*.")
    walk(SCHEMA, "")
    return fields


def reference_rows():
    """(path, default cell, scope) of every row of README's reference tables.

    A reference table follows a `<!-- reference: SCOPE -->` comment (`.` for the
    top level, `issuers[]`, `clients.*`, …); its first column names fields relative
    to SCOPE in backticks (`a` / `b` for two, `forward.claims` for a nested one), its
    second gives the default. Any other table whose first header cell ends in
    "field" is an unmarked reference table and fails the test."""
    text = (ROOT / "README.md").read_text()
    rows = []
    for m in REFERENCE.finditer(text):
        scope = "" if m.group(1) == "." else m.group(1) + "."
        lines = m.group(2).strip("\n").split("\n")
        assert re.match(r"^\|[\s|:-]+\|$", lines[1]), "not a table after %s" % m.group(0)
        for line in lines[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            names = re.findall(r"`([^`]+)`", cells[0])
            assert names, line
            for name in names:
                rows.append((scope + name, cells[1], m.group(1)))
    marked = {m.start(2) for m in REFERENCE.finditer(text)}
    for m in re.finditer(r"^\|([^|\n]*)\|.*\n\|[-| :]+\|\n", text, re.M):
        if m.group(1).strip().endswith("field"):
            assert m.start() in marked, "an unmarked reference table: %s" % m.group(0)
    return rows


def test_readme_reference_and_schema_name_the_same_fields():
    fields = schema_fields()
    rows = reference_rows()
    documented = {path for path, _, _ in rows}
    unknown = sorted(documented - set(fields))
    assert not unknown, "README reference rows the schema does not have: %s" % unknown
    # Objects may be documented through their fields alone.
    leaves = {p for p, (node, _) in fields.items()
              if not any(q.startswith(p + ".") or q.startswith(p + "[].") for q in fields)}
    missing = sorted(leaves - documented)
    assert not missing, "schema fields missing from README's reference: %s" % missing
    assert len(rows) == len(documented), "a field documented twice"


def default_matches(cell, default):
    candidates = re.findall(r"`([^`]+)`", cell) + [cell]
    for text in candidates:
        if isinstance(default, str) and text == default:
            return True
        try:
            if json.loads(text) == default and type(json.loads(text)) is type(default):
                return True
        except ValueError:
            pass
    return False


def test_readme_reference_defaults_and_required_agree_with_the_schema():
    fields = schema_fields()
    wrong = []
    for path, cell, _ in reference_rows():
        node, required = fields[path]
        if "default" in node and not default_matches(cell, node["default"]):
            wrong.append("%s: README says %r, the schema %s" % (path, cell, json.dumps(node["default"])))
        if (cell == "required") != required:
            wrong.append("%s: README says %r, the schema %s" % (
                path, cell, "requires it" if required else "does not require it"))
    assert not wrong, "\n".join(wrong)


def test_the_reference_check_would_catch_drift():
    # A field the schema gained but README lacks, and a README row the schema lacks.
    global SCHEMA
    saved = SCHEMA
    try:
        SCHEMA = copy.deepcopy(saved)
        SCHEMA["properties"]["zz_new_field"] = {"type": "boolean"}
        with pytest.raises(AssertionError, match="zz_new_field"):
            test_readme_reference_and_schema_name_the_same_fields()
        SCHEMA = copy.deepcopy(saved)
        del SCHEMA["properties"]["realm"]
        with pytest.raises(AssertionError, match="realm"):
            test_readme_reference_and_schema_name_the_same_fields()
        SCHEMA = copy.deepcopy(saved)
        SCHEMA["properties"]["clock_skew_seconds"]["default"] = 61
        with pytest.raises(AssertionError, match="clock_skew_seconds"):
            test_readme_reference_defaults_and_required_agree_with_the_schema()
    finally:
        SCHEMA = saved
