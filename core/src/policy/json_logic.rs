//! Gluu Gateway's scope expressions: a JsonLogic rule over the condition's
//! `data` scopes, compiled into a [`Check`].

use serde_json::Value;

use super::expr::{Check, Expr, Lit, MAX_DEPTH};
use super::scope::Scope;
use super::PolicyError;

impl Check {
    /// Gluu's `scope_expression`: a JsonLogic `rule` over `data`.
    pub(crate) fn from_json_logic(
        rule: &Value,
        data: &[String],
        captures: usize,
        name: &str,
    ) -> Result<Check, PolicyError> {
        let scopes = data
            .iter()
            .map(|d| Scope::compile(d, captures, name))
            .collect::<Result<Vec<_>, _>>()?;
        let expr = parse_logic(rule, data.len(), name, 0)?;
        Ok(Check::new(expr, scopes))
    }
}

fn parse_logic(v: &Value, data_len: usize, name: &str, depth: usize) -> Result<Expr, PolicyError> {
    let bad = |problem: &str| PolicyError::BadExpression {
        rule: name.to_string(),
        expression: v.to_string(),
        problem: problem.to_string(),
    };
    if depth > MAX_DEPTH {
        return Err(bad("nested too deeply"));
    }
    let map = match v {
        Value::Null => return Ok(Expr::Lit(Lit::Null)),
        Value::Bool(b) => return Ok(Expr::Lit(Lit::Bool(*b))),
        Value::Number(n) => return Ok(Expr::Lit(Lit::Num(n.as_f64().unwrap_or(f64::NAN)))),
        Value::String(s) => return Ok(Expr::Lit(Lit::Str(s.clone()))),
        Value::Array(_) => return Err(bad("an array is only allowed as operator arguments")),
        Value::Object(map) => map,
    };
    let mut entries = map.iter();
    let (Some((op, args)), None) = (entries.next(), entries.next()) else {
        return Err(bad("an operation must be an object with exactly one key"));
    };
    // JsonLogic lets a single argument be given without the array.
    let args: Vec<&Value> = match args {
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    let sub = |a: &Value| parse_logic(a, data_len, name, depth + 1);
    let arity = |n: usize| -> Result<(), PolicyError> {
        if args.len() == n {
            Ok(())
        } else {
            Err(bad(&format!(
                "`{op}` takes {n} argument(s), got {}",
                args.len()
            )))
        }
    };
    match op.as_str() {
        "var" => {
            arity(1)?;
            let index = match args.first() {
                Some(Value::Number(n)) => n.as_u64().and_then(|i| usize::try_from(i).ok()),
                Some(Value::String(s)) => s.parse::<usize>().ok(),
                _ => None,
            }
            .ok_or_else(|| bad("`var` takes a non-negative integer index into `data`"))?;
            if index >= data_len {
                return Err(PolicyError::VarOutOfRange {
                    rule: name.to_string(),
                    index,
                    data_len,
                });
            }
            Ok(Expr::Var(index))
        }
        "and" | "or" => {
            if args.is_empty() {
                return Err(bad(&format!("`{op}` needs at least one argument")));
            }
            let items = args.into_iter().map(sub).collect::<Result<Vec<_>, _>>()?;
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
                return Err(bad("`if` needs at least one argument"));
            }
            Ok(Expr::If(
                args.into_iter().map(sub).collect::<Result<Vec<_>, _>>()?,
            ))
        }
        "==" | "!=" => {
            arity(2)?;
            let mut items = args.into_iter().map(sub);
            let (Some(a), Some(b)) = (items.next(), items.next()) else {
                return Err(bad("`==` takes 2 arguments"));
            };
            Ok(Expr::Eq(Box::new(a?), Box::new(b?), op == "!="))
        }
        other => Err(PolicyError::UnknownOperator {
            rule: name.to_string(),
            operator: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::policy::expr::tests::strings;
    use serde_json::json;

    #[test]
    fn json_logic_errors() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"in": ["a", "b"]}), "UnknownOperator"),
            (json!({"var": 3}), "VarOutOfRange"),
            (json!({"var": -1}), "BadExpression"),
            (json!({"var": [0, 1]}), "BadExpression"),
            (json!({"var": ""}), "BadExpression"),
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
            let err =
                Check::from_json_logic(&rule, &strings(&["a", "b", "c"]), 0, "GET /r").unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{rule}: {err:?}");
        }
        let mut deep = json!({"var": 0});
        for _ in 0..100 {
            deep = json!({"!": deep});
        }
        assert!(matches!(
            Check::from_json_logic(&deep, &strings(&["a"]), 0, "r"),
            Err(PolicyError::BadExpression { .. })
        ));
    }
}
