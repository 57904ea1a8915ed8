//! Gluu Gateway's scope expressions: a JsonLogic rule over the condition's
//! `data` scopes, compiled into a [`Check`].
//!
//! Gluu evaluated the rule with a full JsonLogic (rucciva's Lua port of
//! json-logic-js) over `data` turned into booleans, one per scope. Every
//! operator that means something over booleans is accepted, with
//! json-logic-js's semantics (see `expr.rs`); the numeric, string and
//! array-building ones (`+`, `<`, `cat`, `map`, `merge`, …) are refused at
//! load, naming the rule and the operator.

use serde_json::Value;

use super::expr::{Check, Expr, Lit, Quantifier, MAX_DEPTH};
use super::scope::{Captures, Scope};
use super::PolicyError;

/// The operators accepted, for error messages.
pub(super) const SUPPORTED: &str =
    "var, missing, missing_some, and, or, !, !!, if, ?:, ==, ===, !=, !==, in, some, all, none";

/// JsonLogic operators that only make sense on numbers, strings or arrays
/// built at run time: refused with that reason rather than as unknown.
const NOT_ON_BOOLEANS: &[&str] = &[
    ">", ">=", "<", "<=", "max", "min", "+", "-", "*", "/", "%", "map", "filter", "reduce",
    "merge", "cat", "substr", "log",
];

impl Check {
    /// Gluu's `scope_expression`: a JsonLogic `rule` over `data`.
    pub(crate) fn from_json_logic(
        rule: &Value,
        data: &[String],
        captures: Captures,
        name: &str,
    ) -> Result<Check, PolicyError> {
        let scopes = data
            .iter()
            .map(|d| Scope::compile(d, captures, name))
            .collect::<Result<Vec<_>, _>>()?;
        let parser = Parser {
            data_len: data.len(),
            name,
        };
        // A non-empty array is truthy: as the whole rule it would allow every
        // token (as it did in Gluu), which is never what `[{"var": 0}]` meant.
        if rule.is_array() {
            return Err(parser.bad(
                rule,
                "a rule that is an array is always true; combine conditions with `and` / `or`",
            ));
        }
        let expr = parser.parse(rule, 0, false)?;
        Ok(Check::new(expr, scopes))
    }
}

struct Parser<'n> {
    data_len: usize,
    name: &'n str,
}

/// A `var` / `missing` key: an index into the data (`0`, `"0"`), or `None`
/// for the data itself (`""`, `null`, no key).
fn key(v: Option<&Value>) -> Result<Option<usize>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .map(Some)
            .ok_or(()),
        Some(Value::String(s)) if s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map(Some).map_err(|_| ())
        }
        Some(_) => Err(()),
    }
}

impl Parser<'_> {
    fn bad(&self, v: &Value, problem: &str) -> PolicyError {
        PolicyError::BadExpression {
            rule: self.name.to_string(),
            expression: v.to_string(),
            problem: problem.to_string(),
        }
    }

    /// `in_element`: inside a `some`/`all`/`none` predicate, where `var`
    /// reads the element instead of `data`.
    fn parse(&self, v: &Value, depth: usize, in_element: bool) -> Result<Expr, PolicyError> {
        if depth > MAX_DEPTH {
            return Err(self.bad(v, "nested too deeply"));
        }
        let map = match v {
            Value::Null => return Ok(Expr::Lit(Lit::Null)),
            Value::Bool(b) => return Ok(Expr::Lit(Lit::Bool(*b))),
            Value::Number(n) => return Ok(Expr::Lit(Lit::Num(n.as_f64().unwrap_or(f64::NAN)))),
            Value::String(s) => return Ok(Expr::Lit(Lit::Str(s.clone()))),
            Value::Array(items) => {
                return Ok(Expr::Array(
                    items
                        .iter()
                        .map(|i| self.parse(i, depth + 1, in_element))
                        .collect::<Result<_, _>>()?,
                ))
            }
            Value::Object(map) => map,
        };
        let mut entries = map.iter();
        let (Some((op, args)), None) = (entries.next(), entries.next()) else {
            return Err(self.bad(v, "an operation must be an object with exactly one key"));
        };
        // JsonLogic lets a single argument be given without the array.
        let args: Vec<&Value> = match args {
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        let sub = |a: &Value| self.parse(a, depth + 1, in_element);
        let all = |args: &[&Value]| args.iter().map(|a| sub(a)).collect::<Result<Vec<_>, _>>();
        let arity = |n: usize| -> Result<(), PolicyError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(self.bad(
                    v,
                    &format!("`{op}` takes {n} argument(s), got {}", args.len()),
                ))
            }
        };
        let two = || -> Result<(Box<Expr>, Box<Expr>), PolicyError> {
            arity(2)?;
            match args.as_slice() {
                [a, b] => Ok((Box::new(sub(a)?), Box::new(sub(b)?))),
                _ => Err(self.bad(v, &format!("`{op}` takes 2 arguments"))),
            }
        };
        match op.as_str() {
            "var" => self.var(v, &args, depth, in_element),
            "missing" => {
                // `{"missing": [0, 1]}`, or the keys as one array.
                let keys = match args.as_slice() {
                    [Value::Array(inner)] => inner.iter().collect(),
                    _ => args,
                };
                self.missing(v, &keys, None, in_element)
            }
            "missing_some" => {
                arity(2)?;
                let (Some(Value::Number(need)), Some(Value::Array(keys))) =
                    (args.first(), args.get(1))
                else {
                    return Err(self.bad(
                        v,
                        "`missing_some` takes a number and an array of keys: [1, [0, 1]]",
                    ));
                };
                let keys: Vec<&Value> = keys.iter().collect();
                self.missing(v, &keys, need.as_f64(), in_element)
            }
            "and" | "or" => {
                if args.is_empty() {
                    return Err(self.bad(v, &format!("`{op}` needs at least one argument")));
                }
                let items = all(&args)?;
                Ok(if op == "and" {
                    Expr::And(items)
                } else {
                    Expr::Or(items)
                })
            }
            "!" | "!!" => {
                arity(1)?;
                let inner = Box::new(args.first().map_or(Ok(Expr::Lit(Lit::Null)), |a| sub(a))?);
                Ok(if op == "!" {
                    Expr::Not(inner)
                } else {
                    Expr::Truthy(inner)
                })
            }
            "if" => {
                if args.is_empty() {
                    return Err(self.bad(v, "`if` needs at least one argument"));
                }
                Ok(Expr::If(all(&args)?))
            }
            "?:" => {
                arity(3)?;
                Ok(Expr::If(all(&args)?))
            }
            "==" | "!=" | "===" | "!==" => {
                let (a, b) = two()?;
                Ok(Expr::Eq {
                    a,
                    b,
                    strict: op.len() == 3,
                    negated: op.starts_with('!'),
                })
            }
            "in" => {
                let (a, b) = two()?;
                Ok(Expr::In(a, b))
            }
            "some" | "all" | "none" => {
                arity(2)?;
                let (Some(array), Some(predicate)) = (args.first(), args.get(1)) else {
                    return Err(self.bad(v, &format!("`{op}` takes 2 arguments")));
                };
                Ok(Expr::Each {
                    kind: match op.as_str() {
                        "some" => Quantifier::Some,
                        "all" => Quantifier::All,
                        _ => Quantifier::None,
                    },
                    array: Box::new(sub(array)?),
                    predicate: Box::new(self.parse(predicate, depth + 1, true)?),
                })
            }
            other if NOT_ON_BOOLEANS.contains(&other) => Err(PolicyError::UnsupportedOperator {
                rule: self.name.to_string(),
                operator: other.to_string(),
            }),
            other => Err(PolicyError::UnknownOperator {
                rule: self.name.to_string(),
                operator: other.to_string(),
            }),
        }
    }

    fn var(
        &self,
        v: &Value,
        args: &[&Value],
        depth: usize,
        in_element: bool,
    ) -> Result<Expr, PolicyError> {
        if args.len() > 2 {
            return Err(self.bad(v, "`var` takes a key and optionally a default"));
        }
        let index = key(args.first().copied()).map_err(|()| {
            self.bad(
                v,
                "`var` takes an index into `data` (0, 1, … or \"0\", …), or \"\" for all of it",
            )
        })?;
        let default = args
            .get(1)
            .map(|d| self.parse(d, depth + 1, in_element))
            .transpose()?;
        if in_element {
            return Ok(Expr::Elem {
                index,
                default: default.map(Box::new),
            });
        }
        match (index, default) {
            // `data` and its entries are never null: a default cannot apply.
            (None, _) => Ok(Expr::AllData),
            (Some(i), _) if i < self.data_len => Ok(Expr::Var(i)),
            (Some(_), Some(default)) => Ok(default),
            (Some(index), None) => Err(PolicyError::VarOutOfRange {
                rule: self.name.to_string(),
                index,
                data_len: self.data_len,
            }),
        }
    }

    fn missing(
        &self,
        v: &Value,
        keys: &[&Value],
        need: Option<f64>,
        in_element: bool,
    ) -> Result<Expr, PolicyError> {
        let keys = keys
            .iter()
            .map(|k| match (key(Some(k)), k) {
                (Ok(Some(i)), Value::Number(n)) => {
                    Ok((i, Lit::Num(n.as_f64().unwrap_or(f64::NAN))))
                }
                (Ok(Some(i)), Value::String(s)) => Ok((i, Lit::Str(s.clone()))),
                _ => Err(self.bad(
                    v,
                    "`missing` keys are indices into `data` (0, 1, … or \"0\", …)",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Expr::Missing {
            keys,
            need,
            in_element,
        })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::policy::expr::tests::strings;
    use crate::policy::scope::Captures;
    use serde_json::json;

    #[test]
    fn json_logic_errors() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"+": [{"var": 0}, 1]}), "UnsupportedOperator"),
            (json!({"merge": [[true]]}), "UnsupportedOperator"),
            (json!({"var": [0, 1, 2]}), "BadExpression"),
            (json!({"var": "0.1"}), "BadExpression"),
            (json!({"var": {"var": 0}}), "BadExpression"),
            (json!({"var": [4]}), "VarOutOfRange"),
            (json!({"missing": ["a"]}), "BadExpression"),
            (json!({"missing_some": [1, 0]}), "BadExpression"),
            (json!({"?:": [true, false]}), "BadExpression"),
            (json!({"in": [true]}), "BadExpression"),
            (json!({"some": [{"var": ""}]}), "BadExpression"),
            (json!({"===": [1, 2, 3]}), "BadExpression"),
            (json!({"var": 3}), "VarOutOfRange"),
            (json!({"var": -1}), "BadExpression"),
            (json!({"and": []}), "BadExpression"),
            (json!({"!": [true, false]}), "BadExpression"),
            (json!({"==": [true]}), "BadExpression"),
            (json!({"if": []}), "BadExpression"),
            (json!({"var": 0, "and": []}), "BadExpression"),
            (json!({}), "BadExpression"),
            (json!([{"var": 0}]), "BadExpression"),
            (json!({"or": [{"var": 0}, {"xor": [1]}]}), "UnknownOperator"),
        ];
        for (rule, want) in cases {
            let err = Check::from_json_logic(
                &rule,
                &strings(&["a", "b", "c"]),
                Captures::up_to(0),
                "GET /r",
            )
            .unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{rule}: {err:?}");
        }
        let mut deep = json!({"var": 0});
        for _ in 0..100 {
            deep = json!({"!": deep});
        }
        assert!(matches!(
            Check::from_json_logic(&deep, &strings(&["a"]), Captures::up_to(0), "r"),
            Err(PolicyError::BadExpression { .. })
        ));
    }
}
