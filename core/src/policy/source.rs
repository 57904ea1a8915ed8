//! Reading the two JSON policy formats into one list of rules, before any
//! pattern or expression is compiled.

use serde_json::{Map, Value};

use super::PolicyError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Gluu Gateway's `oauth_scope_expression`: one entry per path, so a path
    /// given twice is a mistake.
    Gluu,
    /// `{"METHODS PATH": "expression"}`: one entry per method set, so entries
    /// for the same path are merged.
    Readable,
}

#[derive(Debug)]
pub(crate) enum CheckSource {
    /// Any valid token.
    Anything,
    Logic {
        rule: Value,
        data: Vec<String>,
        /// `data` was left out (or `null`): Gluu failed on such a condition
        /// at request time (a Lua error, so Kong answered 500).
        no_data: bool,
    },
    Readable(String),
}

#[derive(Debug)]
pub(crate) struct ConditionSource {
    /// As written, trimmed; validated when compiled.
    pub(crate) methods: Vec<String>,
    pub(crate) check: CheckSource,
    /// The path as written where this condition was given; it names the
    /// condition, since readable keys for one pattern may spell it differently.
    pub(crate) path: String,
    /// A JSON-RPC method and optional name glob (validated when compiled).
    pub(crate) selector: Option<(String, Option<String>)>,
    /// Step-up (RFC 9470) as written, validated when compiled.
    pub(crate) acr_values: Option<Value>,
    pub(crate) max_age: Option<Value>,
}

#[derive(Debug)]
pub(crate) struct RuleSource {
    pub(crate) path: String,
    /// How errors about the path name it: the path, or the entry's position
    /// when the path itself is unusable as a name.
    pub(crate) name: String,
    pub(crate) conditions: Vec<ConditionSource>,
}

fn malformed(rule: &str, problem: impl Into<String>) -> PolicyError {
    PolicyError::Malformed {
        rule: rule.to_string(),
        problem: problem.into(),
    }
}

/// Unknown fields are refused: a misspelt `scope_expression` would otherwise
/// silently mean "no scope needed".
fn only_fields(map: &Map<String, Value>, allowed: &[&str], rule: &str) -> Result<(), PolicyError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(malformed(
            rule,
            format!(
                "unknown field `{unknown}` (expected {})",
                allowed.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn strings(value: &Value, field: &str, rule: &str) -> Result<Vec<String>, PolicyError> {
    let problem = || malformed(rule, format!("`{field}` must be an array of strings"));
    value
        .as_array()
        .ok_or_else(problem)?
        .iter()
        .map(|v| v.as_str().map(str::to_string).ok_or_else(problem))
        .collect()
}

/// JSON's insignificant whitespace (RFC 8259 §2), as the schema's `pattern` has it.
const JSON_SPACE: [char; 4] = [' ', '\t', '\n', '\r'];

pub(crate) fn read(value: &Value) -> Result<(Format, Vec<RuleSource>), PolicyError> {
    match value {
        Value::Array(items) => Ok((Format::Gluu, gluu(items)?)),
        // The schema says the same (`pattern`): the JSON text of an array,
        // so it starts with `[`. A plain string is not a rule of any format.
        Value::String(text) if !text.trim_start_matches(JSON_SPACE).starts_with('[') => {
            Err(malformed(
                "policy",
                "a policy string must be the JSON text of a Gluu oauth_scope_expression array (starting with `[`); write the readable form as an object, e.g. {\"GET /photos/??\": \"view\"}",
            ))
        }
        Value::String(text) => match serde_json::from_str(text) {
            Ok(Value::Array(items)) => Ok((Format::Gluu, gluu(&items)?)),
            Ok(_) => Err(malformed("policy", "a policy string must hold a JSON array")),
            Err(e) => Err(malformed(
                "policy",
                format!("invalid JSON in policy string: {e}"),
            )),
        },
        Value::Object(map) => Ok((Format::Readable, readable(map)?)),
        Value::Null => Ok((Format::Gluu, Vec::new())),
        _ => Err(malformed(
            "policy",
            "expected an array (Gluu format), a string holding one, or an object (readable form)",
        )),
    }
}

fn gluu(items: &[Value]) -> Result<Vec<RuleSource>, PolicyError> {
    let mut rules = Vec::with_capacity(items.len());
    for (n, item) in items.iter().enumerate() {
        let entry = format!("policy[{n}]");
        let map = item
            .as_object()
            .ok_or_else(|| malformed(&entry, "expected an object with `path` and `conditions`"))?;
        let path = match map.get("path") {
            Some(Value::String(p)) => p.clone(),
            Some(_) => return Err(malformed(&entry, "`path` must be a string")),
            None => return Err(malformed(&entry, "missing `path`")),
        };
        let name = if path.is_empty() { entry } else { path.clone() };
        only_fields(map, &["path", "conditions"], &name)?;
        let conditions = match map.get("conditions") {
            Some(Value::Array(c)) => c,
            Some(_) => return Err(malformed(&name, "`conditions` must be an array")),
            None => return Err(malformed(&name, "missing `conditions`")),
        };
        if conditions.is_empty() {
            return Err(PolicyError::NoConditions { rule: name });
        }
        let conditions = conditions
            .iter()
            .map(|c| gluu_condition(c, &path, &name))
            .collect::<Result<Vec<_>, _>>()?;
        rules.push(RuleSource {
            path,
            name,
            conditions,
        });
    }
    Ok(rules)
}

fn gluu_condition(value: &Value, path: &str, rule: &str) -> Result<ConditionSource, PolicyError> {
    let map = value
        .as_object()
        .ok_or_else(|| malformed(rule, "a condition must be an object with `httpMethods`"))?;
    only_fields(
        map,
        &[
            "httpMethods",
            "scope_expression",
            "jsonrpc",
            "acr_values",
            "max_age",
        ],
        rule,
    )?;
    let methods = strings(
        map.get("httpMethods")
            .ok_or_else(|| malformed(rule, "a condition is missing `httpMethods`"))?,
        "httpMethods",
        rule,
    )?;
    let check = match map.get("scope_expression") {
        None | Some(Value::Null) => CheckSource::Anything,
        Some(Value::Object(expr)) => {
            only_fields(expr, &["rule", "data"], rule)?;
            let logic = expr
                .get("rule")
                .ok_or_else(|| malformed(rule, "`scope_expression` is missing `rule`"))?;
            let (data, no_data) = match expr.get("data") {
                None | Some(Value::Null) => (Vec::new(), true),
                Some(d) => (strings(d, "data", rule)?, false),
            };
            CheckSource::Logic {
                rule: logic.clone(),
                data,
                no_data,
            }
        }
        Some(_) => {
            return Err(malformed(
                rule,
                "`scope_expression` must be an object with `rule` and `data`",
            ))
        }
    };
    let selector = match map.get("jsonrpc") {
        None | Some(Value::Null) => None,
        Some(Value::Object(sel)) => {
            only_fields(sel, &["method", "name"], rule)?;
            let method = match sel.get("method") {
                Some(Value::String(m)) => m.clone(),
                _ => return Err(malformed(rule, "`jsonrpc.method` must be a string")),
            };
            let name = match sel.get("name") {
                None | Some(Value::Null) => None,
                Some(Value::String(n)) => Some(n.clone()),
                Some(_) => return Err(malformed(rule, "`jsonrpc.name` must be a string")),
            };
            Some((method, name))
        }
        Some(_) => {
            return Err(malformed(
                rule,
                "`jsonrpc` must be an object with `method` and optional `name`",
            ))
        }
    };
    Ok(ConditionSource {
        methods,
        check,
        path: path.to_string(),
        selector,
        acr_values: map.get("acr_values").cloned(),
        max_age: map.get("max_age").cloned(),
    })
}

/// Where a readable key's path ends: at the first whitespace outside a
/// `{regex}` segment; the JSON-RPC method and name glob may follow.
fn split_path(rest: &str) -> (&str, &str) {
    let mut depth = 0usize;
    for (i, c) in rest.char_indices() {
        match c {
            '{' => depth = depth.saturating_add(1),
            '}' => depth = depth.saturating_sub(1),
            c if c.is_whitespace() && depth == 0 => {
                return (
                    rest.get(..i).unwrap_or_default(),
                    rest.get(i..).unwrap_or_default(),
                )
            }
            _ => {}
        }
    }
    (rest, "")
}

fn readable(map: &Map<String, Value>) -> Result<Vec<RuleSource>, PolicyError> {
    let mut rules = Vec::with_capacity(map.len());
    for (key, value) in map {
        let shape = || malformed(key, "expected a key like \"GET,POST /items/{id}\"");
        let slash = key.find('/').ok_or_else(shape)?;
        let methods_text = key.get(..slash).unwrap_or_default().trim();
        let (path, tail) = split_path(key.get(slash..).unwrap_or_default().trim());
        let path = path.to_string();
        let words: Vec<&str> = tail.split_whitespace().collect();
        let selector = match words.as_slice() {
            [] => None,
            [method] => Some((method.to_string(), None)),
            [method, name] => Some((method.to_string(), Some(name.to_string()))),
            _ => {
                return Err(malformed(
                    key,
                    "expected \"METHODS PATH [JSONRPC_METHOD [NAME_GLOB]]\"",
                ))
            }
        };
        let methods: Vec<String> = if methods_text.is_empty() {
            vec!["*".to_string()]
        } else {
            methods_text
                .split(',')
                .map(|m| m.trim().to_string())
                .collect()
        };
        if methods.iter().any(|m| m.contains(char::is_whitespace)) {
            return Err(shape());
        }
        let (check, acr_values, max_age) = match value {
            Value::String(expression) => (CheckSource::Readable(expression.clone()), None, None),
            Value::Object(fields) => {
                only_fields(fields, &["scope", "acr_values", "max_age"], key)?;
                let check = match fields.get("scope") {
                    None | Some(Value::Null) => CheckSource::Anything,
                    Some(Value::String(expression)) => CheckSource::Readable(expression.clone()),
                    Some(_) => return Err(malformed(key, "`scope` must be an expression string")),
                };
                (
                    check,
                    fields.get("acr_values").cloned(),
                    fields.get("max_age").cloned(),
                )
            }
            _ => {
                return Err(malformed(
                    key,
                    "the value must be an expression string such as \"read and write\" or \"true\", or an object with `scope`, `acr_values`, `max_age`",
                ))
            }
        };
        rules.push(RuleSource {
            name: path.clone(),
            conditions: vec![ConditionSource {
                methods,
                check,
                path: path.clone(),
                selector,
                acr_values,
                max_age,
            }],
            path,
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    /// A string is the JSON text of a Gluu array, as the schema's `pattern`
    /// says; a plain string, which the schema refuses, names what to write.
    #[test]
    fn a_policy_string_is_the_json_text_of_a_gluu_array() {
        let gluu = r#"[{"path": "/x", "conditions": [{"httpMethods": ["GET"]}]}]"#;
        for text in [gluu.to_string(), format!(" \n\t{gluu}")] {
            let (format, rules) = read(&json!(text)).unwrap();
            assert_eq!((format, rules.len()), (Format::Gluu, 1), "{text}");
        }
        for plain in ["view", "GET /x: read", "", "  {\"GET /x\": \"read\"}"] {
            let e = read(&json!(plain)).unwrap_err().to_string();
            assert!(
                e.contains("a policy string must be the JSON text of a Gluu oauth_scope_expression array (starting with `[`); write the readable form as an object"),
                "{plain:?}: {e}"
            );
        }
        let e = read(&json!("[{\"path\": ")).unwrap_err().to_string();
        assert!(e.contains("invalid JSON in policy string: "), "{e}");
    }
}
