//! The configuration deserialized with the path of every value, so that a
//! serde error (an unknown or missing field, a wrong type, an unknown
//! variant) names where it is: ``issuers[0].introspection`: unknown field
//! `cache_ttl_seconds` …``, not only the field. Objects and arrays are walked
//! here, each key and index extending the path; scalars go to the visitor as
//! `Value`'s own deserializer gives them. The innermost place an error passes
//! is the one named. Nothing is handed to `Value`'s deserializer where it
//! could walk an object or array itself: that would compile every
//! configuration struct's visitor a second time into the `.wasm` (as it is,
//! the `.wasm` is some 13 KB smaller than with `serde_json::from_value`).

use std::cell::Cell;

use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess};
use serde::de::{Error as _, Expected, Unexpected, Visitor};
use serde_json::{Error, Value};

use crate::config_error::ConfigError;

/// `value` as a `T`, or the error at the path where serde found it (empty:
/// the document itself).
pub(super) fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ConfigError> {
    let at = Spot::default();
    T::deserialize(Located {
        value,
        path: String::new(),
        at: &at,
    })
    .map_err(|e| ConfigError::new(at.0.take().unwrap_or_default(), e.to_string()))
}

/// Where the first (innermost) error was seen.
#[derive(Default)]
struct Spot(Cell<Option<String>>);

impl Spot {
    #[inline]
    fn mark<T>(&self, result: Result<T, Error>, path: &str) -> Result<T, Error> {
        if result.is_err() {
            self.note(path);
        }
        result
    }

    /// Not generic, so each place that may fail costs one call.
    #[cold]
    #[inline(never)]
    fn note(&self, path: &str) {
        let first = self.0.take().unwrap_or_else(|| path.to_string());
        self.0.set(Some(first));
    }
}

/// How serde's "invalid type" errors name what was found.
fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Unexpected::Unsigned(u),
            (None, Some(i)) => Unexpected::Signed(i),
            (None, None) => Unexpected::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

fn field_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

struct Located<'a> {
    value: Value,
    path: String,
    at: &'a Spot,
}

/// serde's "invalid type: …, expected …", at `path`.
fn refuse<T>(value: &Value, path: &str, at: &Spot, expected: &dyn Expected) -> Result<T, Error> {
    at.note(path);
    Err(Error::invalid_type(unexpected(value), expected))
}

/// An object's members for `visitor`, each at `path.key`; an error in the
/// visitor itself (a missing field) at `path`.
fn walk_map<'de, V: Visitor<'de>>(
    map: serde_json::Map<String, Value>,
    path: String,
    at: &Spot,
    visitor: V,
) -> Result<V::Value, Error> {
    let mut fields = Fields {
        entries: map.into_iter(),
        pending: None,
        path: &path,
        at,
    };
    let result = visitor.visit_map(&mut fields);
    at.mark(result, &path)
}

/// An array's items for `visitor`, each at `path[i]`.
fn walk_seq<'de, V: Visitor<'de>>(
    items: Vec<Value>,
    path: String,
    at: &Spot,
    visitor: V,
) -> Result<V::Value, Error> {
    let result = visitor.visit_seq(Items {
        items: items.into_iter().enumerate(),
        path: &path,
        at,
    });
    at.mark(result, &path)
}

/// Methods `Value` answers as well as we would (for a scalar, or an
/// "invalid type"): only errors are located.
macro_rules! handed_to_value {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.at.mark(self.value.$method(visitor), &self.path)
        }
    )*};
}

impl<'de> Deserializer<'de> for Located<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let Located { value, path, at } = self;
        let result = match value {
            Value::Object(map) => return walk_map(map, path, at, visitor),
            Value::Array(items) => return walk_seq(items, path, at, visitor),
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Number(n) => n.deserialize_any(visitor),
            Value::String(s) => visitor.visit_string(s),
        };
        at.mark(result, &path)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Array(items) => walk_seq(items, self.path, self.at, visitor),
            value => refuse(&value, &self.path, self.at, &visitor),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Object(map) => walk_map(map, self.path, self.at, visitor),
            value => refuse(&value, &self.path, self.at, &visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.value {
            Value::Object(map) => walk_map(map, self.path, self.at, visitor),
            value => refuse(&value, &self.path, self.at, &visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let result = self.value.deserialize_enum(name, variants, visitor);
        self.at.mark(result, &self.path)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let result = self.value.deserialize_unit_struct(name, visitor);
        self.at.mark(result, &self.path)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    handed_to_value! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32
        deserialize_f64 deserialize_char deserialize_str deserialize_string deserialize_bytes
        deserialize_byte_buf deserialize_unit deserialize_identifier deserialize_ignored_any
    }
}

/// An object's members, each value at `path.key`.
struct Fields<'p, 'a> {
    entries: serde_json::map::IntoIter,
    pending: Option<(String, Value)>,
    /// The object's own path: where an unknown or missing field is reported.
    path: &'p str,
    at: &'a Spot,
}

impl<'de> MapAccess<'de> for Fields<'_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.pending = Some((field_path(self.path, &key), value));
        let key = seed.deserialize(Value::String(key)).map(Some);
        self.at.mark(key, self.path)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((path, value)) = self.pending.take() else {
            return self
                .at
                .mark(Err(Error::custom("a value without its key")), self.path);
        };
        let result = seed.deserialize(Located {
            value,
            path: path.clone(),
            at: self.at,
        });
        // Also what the seed decides after the value was read (an untagged
        // enum that none of its variants fit).
        self.at.mark(result, &path)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// An array's items, each at `path[i]`.
struct Items<'p, 'a> {
    items: std::iter::Enumerate<std::vec::IntoIter<Value>>,
    path: &'p str,
    at: &'a Spot,
}

impl<'de> SeqAccess<'de> for Items<'_, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some((index, value)) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{index}]", self.path);
        let result = seed.deserialize(Located {
            value,
            path: path.clone(),
            at: self.at,
        });
        self.at.mark(result.map(Some), &path)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crate::config::tests::{err, SECRET};

    /// Every error serde finds names its place, however deep.
    #[test]
    fn serde_errors_name_the_field_they_are_in() {
        let issuer =
            format!(r#""issuer":"https://as.test","audiences":"any","shared_secret":"{SECRET}""#);
        let table: Vec<(String, &str)> = vec![
            (
                format!(
                    r#"{{"issuers":[{{{issuer},"introspection":{{"endpoint":"https://as.test/i","client_id":"pep","client_secret":"s","cache_ttl_seconds":60}}}}]}}"#
                ),
                "`issuers[0].introspection`: unknown field `cache_ttl_seconds`, expected one of",
            ),
            (
                format!(r#"{{"issuers":[{{{issuer}}},{{{issuer},"refresh":5}}]}}"#),
                "`issuers[1]`: unknown field `refresh`",
            ),
            (
                format!(r#"{{"issuers":[{{{issuer},"refresh_seconds":"300"}}]}}"#),
                "`issuers[0].refresh_seconds`: invalid type: string \"300\", expected u64",
            ),
            (
                format!(r#"{{"issuers":[{{{issuer},"mode":"jwtt"}}]}}"#),
                "`issuers[0].mode`: unknown variant `jwtt`",
            ),
            (
                format!(r#"{{"issuers":[{{{issuer},"discovery":1}}]}}"#),
                "`issuers[0].discovery`: data did not match any variant",
            ),
            (
                format!(
                    r#"{{"issuers":[{{{issuer}}}],"clients":{{"pat":{{"client_id":"x","client_secrt":"s"}}}}}}"#
                ),
                "`clients.pat`: unknown field `client_secrt`",
            ),
            (
                format!(
                    r#"{{"issuers":[{{{issuer}}}],"forward":{{"headers":[{{"header":"x-a","clam":"sub"}}]}}}}"#
                ),
                "`forward.headers[0]`: unknown field `clam`",
            ),
            (
                format!(
                    r#"{{"issuers":[{{{issuer}}}],"uma":{{"issuer":"https://as.test","client":"pat","resources":[{{"resource_id":"r"}}]}}}}"#
                ),
                "`uma.resources[0]`: missing field `policy`",
            ),
            (
                format!(r#"{{"issuers":[{{{issuer}}}],"token_sources":[{{"header":5}}]}}"#),
                "`token_sources[0].header`: invalid type: integer `5`, expected a string",
            ),
            (
                format!(r#"{{"issuers":{{{issuer}}}}}"#),
                "`issuers`: invalid type: map, expected a sequence",
            ),
            (
                r#"{"issuers":[{"audiences":"any"}]}"#.to_string(),
                "`issuers[0]`: missing field `issuer`",
            ),
        ];
        for (json, expected) in &table {
            let e = err(json);
            assert!(
                e.contains(expected),
                "{json}\n  gave: {e}\n  expected: {expected}"
            );
        }
    }
}
