//! The configuration schema (`schema/oauth_pep.schema.json`, shipped to Kong
//! as `oauth_pep.meta.json`) against the filter's own load-time checks:
//!
//! - the cases of `tests/schema_cases.json`, which `tests/test_schema.py`
//!   feeds to the schema: the filter accepts the valid ones and refuses the
//!   invalid and `filter_only` ones, each for the reason named;
//! - every object of the schema has exactly the fields of the serde struct it
//!   describes, and every string enum exactly the variants of its Rust enum.
//!   The Rust names are read from serde's own errors (an unknown field or
//!   variant at that place lists the expected ones), so a field added in Rust
//!   and not in the schema fails here.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::collections::BTreeSet;

use oauth_pep_core::config::Config;
use serde_json::{json, Map, Value};

const SCHEMA: &str = include_str!("../../schema/oauth_pep.schema.json");
const CASES: &str = include_str!("../../tests/schema_cases.json");

fn cases(kind: &str) -> Vec<Value> {
    let all: Value = serde_json::from_str(CASES).expect("tests/schema_cases.json is JSON");
    let list = all[kind].as_array().expect("a list of cases").clone();
    assert!(!list.is_empty(), "no {kind} cases");
    list
}

fn load(config: &Value) -> Result<Config, String> {
    let bytes = serde_json::to_vec(config).expect("serialisable");
    Config::from_json(&bytes, &|_| None).map_err(|e| e.to_string())
}

#[test]
fn the_filter_accepts_every_valid_case() {
    for case in cases("valid") {
        if let Err(e) = load(&case["config"]) {
            panic!("{}: refused: {e}", case["name"]);
        }
    }
}

#[test]
fn the_filter_refuses_every_invalid_case_for_the_reason_named() {
    let mut failures = Vec::new();
    for kind in ["invalid", "filter_only"] {
        for case in cases(kind) {
            let expected = case["filter_error"].as_str().expect("filter_error");
            match load(&case["config"]) {
                Ok(_) => failures.push(format!("{kind} {}: accepted", case["name"])),
                Err(e) if !e.contains(expected) => failures.push(format!(
                    "{kind} {}: refused with {e:?}, expected {expected:?}",
                    case["name"]
                )),
                Err(_) => {}
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// `issuers/0/introspection` (where the schema reports a case) as the filter
/// names it: `issuers[0].introspection`.
fn field_of(pointer: &str) -> String {
    let mut field = String::new();
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        if segment.bytes().all(|b| b.is_ascii_digit()) {
            field.push_str(&format!("[{segment}]"));
        } else {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(segment);
        }
    }
    field
}

/// What serde finds (an unknown or missing field, a wrong type, an unknown
/// variant) is named at the place the schema names, however deep: every
/// configuration error names its field.
#[test]
fn serde_errors_name_the_field_the_schema_names() {
    const SERDE: [&str; 5] = [
        "unknown field",
        "missing field",
        "invalid type",
        "unknown variant",
        "did not match any variant",
    ];
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases("invalid") {
        let expected = case["filter_error"].as_str().expect("filter_error");
        let at = case["schema_error_at"].as_str().expect("schema_error_at");
        // The top level's unknown fields get hints before serde runs; the
        // policy language is read by hand and names `policy` and the rule.
        if at.is_empty()
            || at.split('/').any(|s| s == "policy")
            || !SERDE.iter().any(|kind| expected.contains(kind))
        {
            continue;
        }
        let named = format!("`{}`: ", field_of(at));
        match load(&case["config"]) {
            Err(e) if e.contains(&named) => checked += 1,
            Err(e) => failures.push(format!("{}: {e:?} does not name {named}", case["name"])),
            Ok(_) => failures.push(format!("{}: accepted", case["name"])),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(checked >= 40, "only {checked} cases checked");
}

/// One step from a schema node to a part of the configuration.
#[derive(Clone, Debug)]
enum Step {
    Property(String),
    Item,
    MapValue,
}

fn resolve<'a>(schema: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(pointer) => {
            let target = schema
                .pointer(pointer.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("unresolved $ref {pointer}"));
            resolve(schema, target)
        }
        None => node,
    }
}

/// A configuration with `leaf` at `path` (and nothing else that serde would
/// look at before it).
fn config_with(path: &[Step], leaf: Value) -> Value {
    let mut value = leaf;
    for step in path.iter().rev() {
        value = match step {
            Step::Property(name) => {
                let mut map = Map::new();
                map.insert(name.clone(), value);
                Value::Object(map)
            }
            Step::Item => json!([value]),
            Step::MapValue => json!({ "some-name": value }),
        };
    }
    if let Some(root) = value.as_object_mut() {
        root.entry("issuers").or_insert(json!([]));
    }
    value
}

/// The backticked names after "expected" in a serde error: the fields of a
/// struct or the variants of an enum.
fn expected_names(error: &str) -> BTreeSet<String> {
    let (_, list) = error
        .split_once("expected")
        .unwrap_or_else(|| panic!("not a serde list: {error}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn describe(path: &[Step]) -> String {
    let mut text = String::new();
    for step in path {
        match step {
            Step::Property(name) if text.is_empty() => text.push_str(name),
            Step::Property(name) => text.push_str(&format!(".{name}")),
            Step::Item => text.push_str("[]"),
            Step::MapValue => text.push_str(".*"),
        }
    }
    if text.is_empty() {
        "(the configuration)".into()
    } else {
        text
    }
}

/// Walks the schema's objects (properties, items, map values; not the
/// alternatives of `anyOf`, and not the policy language, which the policy
/// compiler reads by hand) and compares each with serde.
fn check(schema: &Value, node: &Value, path: &mut Vec<Step>, checked: &mut Vec<String>) {
    if node.get("$ref").and_then(Value::as_str) == Some("#/definitions/policy") {
        return;
    }
    let node = resolve(schema, node);
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        let in_schema: BTreeSet<String> = properties.keys().cloned().collect();
        let error = load(&config_with(path, json!({ "zz_not_a_field": 1 })))
            .err()
            .unwrap_or_else(|| panic!("{}: an unknown field was accepted", describe(path)));
        assert!(
            error.contains("unknown field `zz_not_a_field`"),
            "{}: {error}",
            describe(path)
        );
        assert_eq!(
            in_schema,
            expected_names(&error),
            "{}: the schema's properties (left) differ from the Rust fields (right)",
            describe(path)
        );
        checked.push(describe(path));
        for (name, property) in properties {
            path.push(Step::Property(name.clone()));
            let resolved = resolve(schema, property);
            if let Some(values) = resolved.get("enum").and_then(Value::as_array) {
                if values.iter().all(Value::is_string) {
                    let in_schema: BTreeSet<String> = values
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect();
                    let error = load(&config_with(path, json!("zz_not_a_variant")))
                        .err()
                        .unwrap_or_else(|| panic!("{}: accepted", describe(path)));
                    assert!(
                        error.contains("unknown variant `zz_not_a_variant`"),
                        "{}: {error}",
                        describe(path)
                    );
                    assert_eq!(
                        in_schema,
                        expected_names(&error),
                        "{}: the schema's enum (left) differs from the Rust variants (right)",
                        describe(path)
                    );
                    checked.push(describe(path));
                }
            }
            check(schema, property, path, checked);
            path.pop();
        }
    }
    if let Some(items) = node.get("items").filter(|i| i.is_object()) {
        path.push(Step::Item);
        check(schema, items, path, checked);
        path.pop();
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        path.push(Step::MapValue);
        check(schema, values, path, checked);
        path.pop();
    }
}

#[test]
fn schema_objects_and_enums_match_the_rust_fields_and_variants() {
    let schema: Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
    let mut checked = Vec::new();
    check(&schema, &schema, &mut Vec::new(), &mut checked);
    // The walk really reached every section (a broken walk would pass empty).
    for place in [
        "(the configuration)",
        "issuers[]",
        "issuers[].introspection",
        "issuers[].introspection.auth_method",
        "token_sources[]",
        "forward",
        "identity_headers",
        "consumers.*",
        "anonymous",
        "pdp",
        "pdp.kind",
        "clients.*",
        "upstream_oauth[]",
        "uma",
        "uma.resources[]",
    ] {
        assert!(
            checked.iter().any(|c| c == place),
            "{place} not checked: {checked:?}"
        );
    }
}
