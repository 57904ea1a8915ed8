//! JSON-RPC selectors (MCP's `tools/call admin_*`): what a policy condition
//! names of a JSON-RPC request body, and reading a body into the calls a
//! policy judges. The body is the caller's: it is read within a byte bound,
//! duplicate members are refused (two parsers must not disagree on which
//! `method` or `name` counts), and every problem is an answer, never a guess.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::PolicyError;

/// A condition's selector: a JSON-RPC method and, optionally, a glob on the
/// name it acts on (see [`name_member`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selector {
    pub(crate) method: String,
    pub(crate) name: Option<Glob>,
}

/// A name pattern whose only wildcard is `*` (any run of characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    pub(crate) text: String,
}

impl Glob {
    pub(crate) fn matches(&self, name: &str) -> bool {
        let mut parts = self.text.split('*');
        let first = parts.next().unwrap_or_default();
        let Some(mut rest) = name.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            // No `*`: the whole name.
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(at) => {
                    rest = rest
                        .get(at.saturating_add(part.len())..)
                        .unwrap_or_default()
                }
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(glob) => write!(f, "{} {}", self.method, glob.text),
            None => f.write_str(&self.method),
        }
    }
}

/// A JSON-RPC method name or name glob as written in a policy: printable
/// ASCII or any non-ASCII character, no whitespace, not empty.
fn check_word(word: &str, what: &str, rule: &str) -> Result<(), PolicyError> {
    if word.is_empty() || word.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(PolicyError::Malformed {
            rule: rule.to_string(),
            problem: format!("JSON-RPC {what} `{word}` must be non-empty, without spaces"),
        });
    }
    Ok(())
}

impl Selector {
    pub(crate) fn new(
        method: &str,
        name: Option<&str>,
        rule: &str,
    ) -> Result<Selector, PolicyError> {
        check_word(method, "method", rule)?;
        if let Some(name) = name {
            check_word(name, "name", rule)?;
        }
        Ok(Selector {
            method: method.to_string(),
            name: name.map(|n| Glob {
                text: n.to_string(),
            }),
        })
    }

    pub(crate) fn matches(&self, call: &Call) -> bool {
        call.method.as_deref() == Some(self.method.as_str())
            && match (&self.name, &call.name) {
                (None, _) => true,
                (Some(glob), Some(name)) => glob.matches(name),
                (Some(_), None) => false,
            }
    }
}

/// The params member a method's name is read from: `uri` for MCP's
/// resource methods, `name` for every other (`tools/call`, `prompts/get`).
pub(crate) fn name_member(method: &str) -> &'static str {
    match method {
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => "uri",
        _ => "name",
    }
}

/// One JSON-RPC entry of a body, as far as a policy reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// None for a response (an entry without `method`).
    pub method: Option<String>,
    /// The `params.name` / `params.uri` (see [`name_member`]), when a string.
    pub name: Option<String>,
    /// Whether `params` has that member at all (a non-string one is refused
    /// where a selector reads it).
    pub has_name_member: bool,
    /// The entry's `id` as JSON text (a string or a number), for an error.
    pub id: Option<String>,
}

/// Why a body cannot be judged. The caller's fault, answered 400 (413 for
/// the bound) with a JSON-RPC-shaped error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyProblem {
    /// More than `max` bytes (announced by `content-length`, or received).
    TooLarge { max: usize },
    /// A `content-encoding` the filter cannot read (gzip, …): the upstream
    /// would judge other bytes than the filter.
    Encoded { encoding: String },
    /// Not JSON, or not UTF-8.
    NotJson { error: String },
    /// JSON, but not a JSON-RPC 2.0 request (or batch of them).
    NotJsonRpc { problem: String, id: Option<String> },
    /// A method a selector reads the name of, without that name as a string.
    NoName {
        method: String,
        member: &'static str,
        id: Option<String>,
    },
    /// The body did not arrive by the request's deadline.
    TooSlow,
}

impl BodyProblem {
    /// The JSON text of the offending entry's `id`, if one was read.
    pub fn id(&self) -> Option<&str> {
        match self {
            BodyProblem::NotJsonRpc { id, .. } | BodyProblem::NoName { id, .. } => id.as_deref(),
            _ => None,
        }
    }

    /// JSON-RPC's error code: -32700 parse error, -32600 invalid request,
    /// -32602 invalid params.
    pub fn jsonrpc_code(&self) -> i64 {
        match self {
            BodyProblem::NotJson { .. } => -32700,
            BodyProblem::NoName { .. } => -32602,
            _ => -32600,
        }
    }
}

impl fmt::Display for BodyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyProblem::TooLarge { max } => {
                write!(
                    f,
                    "the request body is over {max} bytes, the most this gateway reads"
                )
            }
            BodyProblem::Encoded { encoding } => write!(
                f,
                "the request body has content-encoding `{encoding}`; send it unencoded"
            ),
            BodyProblem::NotJson { error } => write!(f, "the request body is not JSON: {error}"),
            BodyProblem::NotJsonRpc { problem, .. } => {
                write!(f, "the request body is not JSON-RPC 2.0: {problem}")
            }
            BodyProblem::NoName { method, member, .. } => {
                write!(f, "`{method}` without a string `params.{member}`")
            }
            BodyProblem::TooSlow => f.write_str("the request body did not arrive in time"),
        }
    }
}

/// The members of an entry a policy reads. Serde's derive refuses a member
/// given twice (`duplicate field`), which is the point.
#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    params: Option<Params>,
}

/// `params` when it is an object: its `name` and `uri` (any JSON), the rest
/// skipped; a member given twice refused. By-position params (an array) read
/// as none.
#[derive(Default)]
struct Params {
    name: Option<Value>,
    uri: Option<Value>,
}

impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Params, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Params;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object or an array")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Params, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Params::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Params, A::Error> {
                let mut params = Params::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let slot = match key.as_ref() {
                        "name" => &mut params.name,
                        "uri" => &mut params.uri,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(de::Error::custom(format!("duplicate field `params.{key}`")));
                    }
                    *slot = Some(map.next_value()?);
                }
                Ok(params)
            }
        }
        deserializer.deserialize_any(V)
    }
}

fn entry_problem(problem: impl Into<String>, id: Option<String>) -> BodyProblem {
    BodyProblem::NotJsonRpc {
        problem: problem.into(),
        id,
    }
}

fn read_entry(raw: &RawValue) -> Result<Call, BodyProblem> {
    let text = raw.get();
    if !text.starts_with('{') {
        return Err(entry_problem("an entry is not an object", None));
    }
    let entry: Entry =
        serde_json::from_str(text).map_err(|e| entry_problem(format!("{e}"), None))?;
    // The id as the client wrote it, for the error's `id` (a string or a number).
    let id = entry.id.map(|raw| raw.get().to_string()).filter(|id| {
        id.starts_with('"') || id.starts_with(|c: char| c == '-' || c.is_ascii_digit())
    });
    if entry.jsonrpc.map(RawValue::get) != Some("\"2.0\"") {
        return Err(entry_problem("`jsonrpc` must be \"2.0\"", id));
    }
    let method = match entry.method {
        None => None,
        Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::String(method)) => Some(method),
            _ => return Err(entry_problem("`method` must be a string", id)),
        },
    };
    let params = entry.params.unwrap_or_default();
    let member = method.as_deref().map(name_member).unwrap_or("name");
    let value = if member == "uri" {
        params.uri
    } else {
        params.name
    };
    Ok(Call {
        id,
        has_name_member: value.is_some(),
        name: match value {
            Some(Value::String(name)) => Some(name),
            _ => None,
        },
        method,
    })
}

/// The calls of a JSON-RPC body: one for a request, notification or
/// response, one per entry for a batch (an array, never empty).
pub fn read_calls(body: &[u8], max: usize) -> Result<(Vec<Call>, bool), BodyProblem> {
    if body.len() > max {
        return Err(BodyProblem::TooLarge { max });
    }
    let text = std::str::from_utf8(body).map_err(|e| BodyProblem::NotJson {
        error: e.to_string(),
    })?;
    let raw: &RawValue = serde_json::from_str(text).map_err(|e| BodyProblem::NotJson {
        error: e.to_string(),
    })?;
    let trimmed = raw.get();
    if trimmed.starts_with('[') {
        let entries: Vec<&RawValue> =
            serde_json::from_str(trimmed).map_err(|e| entry_problem(e.to_string(), None))?;
        if entries.is_empty() {
            return Err(entry_problem("an empty batch", None));
        }
        let calls = entries
            .into_iter()
            .map(read_entry)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((calls, true))
    } else {
        Ok((vec![read_entry(raw)?], false))
    }
}

/// A selector needs the name of `call`, which it lacks (or has as another
/// type than a string): the caller's request is malformed for this policy.
pub(crate) fn missing_name(selector: &Selector, call: &Call) -> bool {
    selector.name.is_some()
        && call.method.as_deref() == Some(selector.method.as_str())
        && call.name.is_none()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn glob(text: &str) -> Glob {
        Glob {
            text: text.to_string(),
        }
    }

    #[test]
    fn globs() {
        for (pattern, name, want) in [
            ("admin_*", "admin_users", true),
            ("admin_*", "admin_", true),
            ("admin_*", "xadmin_users", false),
            ("*", "", true),
            ("*_write", "db_write", true),
            ("*_write", "db_writer", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "a-b-b-c", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
            ("deploy", "deploy", true),
            ("deploy", "deploy2", false),
            ("file:///secret/*", "file:///secret/a/b", true),
        ] {
            assert_eq!(glob(pattern).matches(name), want, "{pattern} {name}");
        }
    }

    fn call(method: &str, name: Option<&str>) -> Call {
        Call {
            method: Some(method.to_string()),
            name: name.map(str::to_string),
            has_name_member: name.is_some(),
            id: None,
        }
    }

    #[test]
    fn reads_requests_batches_and_notifications() {
        let (calls, batch) = read_calls(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"admin_x","arguments":{"name":"y"}}}"#,
            1024,
        )
        .unwrap();
        let want = Call {
            id: Some("1".into()),
            ..call("tools/call", Some("admin_x"))
        };
        assert_eq!((calls, batch), (vec![want], false));
        let (calls, batch) = read_calls(
            br#"[{"jsonrpc":"2.0","method":"notifications/initialized"},
                 {"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"file:///a","name":"x"}},
                 {"jsonrpc":"2.0","id":2,"result":{}}]"#,
            1024,
        )
        .unwrap();
        assert!(batch);
        assert_eq!(
            calls,
            vec![
                call("notifications/initialized", None),
                Call {
                    id: Some("\"a\"".into()),
                    ..call("resources/read", Some("file:///a"))
                },
                Call {
                    method: None,
                    name: None,
                    has_name_member: false,
                    id: Some("2".into()),
                },
            ]
        );
        // By-position params name nothing.
        let (calls, _) = read_calls(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["x"]}"#,
            99,
        )
        .unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls.first().and_then(|c| c.name.clone()), None);
    }

    #[test]
    fn refuses_what_it_cannot_judge() {
        let cases: &[(&[u8], &str, Option<&str>)] = &[
            (b"not json", "NotJson", None),
            (b"", "NotJson", None),
            (b"\xff\xfe", "NotJson", None),
            (b"[]", "NotJsonRpc", None),
            (b"3", "NotJsonRpc", None),
            (b"[1]", "NotJsonRpc", None),
            (br#"{"id":7,"method":"x"}"#, "NotJsonRpc", Some("7")),
            (br#"{"jsonrpc":"1.0","id":"q","method":"x"}"#, "NotJsonRpc", Some("\"q\"")),
            (br#"{"jsonrpc":"2.0","id":1,"method":3}"#, "NotJsonRpc", Some("1")),
            // Two parsers could disagree on which one counts.
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}"#,
                "NotJsonRpc",
                None,
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"admin_b"}}"#,
                "NotJsonRpc",
                None,
            ),
            (b"{\"jsonrpc\":\"2.0\"} x", "NotJson", None),
        ];
        for (body, variant, id) in cases {
            let e = read_calls(body, 1024).unwrap_err();
            assert!(format!("{e:?}").starts_with(variant), "{body:?}: {e:?}");
            assert_eq!(e.id(), *id, "{body:?}");
        }
        assert_eq!(
            read_calls(&[b' '; 11], 10).unwrap_err(),
            BodyProblem::TooLarge { max: 10 }
        );
    }

    #[test]
    fn selectors() {
        let admin = Selector::new("tools/call", Some("admin_*"), "r").unwrap();
        let any_tool = Selector::new("tools/call", None, "r").unwrap();
        assert!(admin.matches(&call("tools/call", Some("admin_x"))));
        assert!(!admin.matches(&call("tools/call", Some("read"))));
        assert!(!admin.matches(&call("tools/list", None)));
        assert!(any_tool.matches(&call("tools/call", None)));
        assert!(missing_name(&admin, &call("tools/call", None)));
        assert!(!missing_name(&any_tool, &call("tools/call", None)));
        assert!(Selector::new("tools call", None, "r").is_err());
        assert!(Selector::new("", None, "r").is_err());
        assert_eq!(admin.to_string(), "tools/call admin_*");
    }
}
