//! Scope expressions: which granted scopes satisfy a rule.
//!
//! A condition has a list of scopes (`data`) and an expression over "does the
//! token have scope *i*". Both policy formats compile to the same [`Check`]:
//! the Gluu format gives a JsonLogic rule plus `data`, the readable form gives
//! `read and (fido or otp)` and the scope list is collected from the text.
//!
//! Scopes themselves (plain or spontaneous) are in `scope.rs`, the two parsers
//! in `json_logic.rs` and `readable.rs`.

use super::scope::Scope;

/// Deeper expressions are refused so that compiling and evaluating them cannot
/// exhaust the wasm stack.
pub(super) const MAX_DEPTH: usize = 64;

/// A JsonLogic literal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Lit(Lit),
    /// Whether scope `data[i]` is granted.
    Var(usize),
    Not(Box<Expr>),
    Truthy(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    /// JsonLogic `if`: `[cond1, then1, cond2, then2, …, else]`, else optional.
    If(Vec<Expr>),
    /// Loose equality; `true` for `!=`.
    Eq(Box<Expr>, Box<Expr>, bool),
}

/// What an expression evaluates to, as in JsonLogic (`and` yields an operand,
/// not a boolean).
#[derive(Debug, Clone, Copy)]
enum Val<'e> {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'e str),
}

impl Val<'_> {
    fn truthy(self) -> bool {
        match self {
            Val::Null => false,
            Val::Bool(b) => b,
            Val::Num(n) => n != 0.0 && !n.is_nan(),
            Val::Str(s) => !s.is_empty(),
        }
    }

    fn number(self) -> Option<f64> {
        match self {
            Val::Null => None,
            Val::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
            Val::Num(n) => Some(n),
            Val::Str(s) if s.trim().is_empty() => Some(0.0),
            Val::Str(s) => s.trim().parse().ok(),
        }
    }

    /// JavaScript `==`, which is what JsonLogic `==` means, minus objects.
    fn loose_eq(self, other: Val<'_>) -> bool {
        match (self, other) {
            (Val::Null, Val::Null) => true,
            (Val::Null, _) | (_, Val::Null) => false,
            (Val::Str(a), Val::Str(b)) => a == b,
            (Val::Bool(a), Val::Bool(b)) => a == b,
            (a, b) => matches!((a.number(), b.number()), (Some(x), Some(y)) if x == y),
        }
    }
}

impl Expr {
    fn eval<'e>(&'e self, var: &mut impl FnMut(usize) -> bool) -> Val<'e> {
        match self {
            Expr::Lit(Lit::Null) => Val::Null,
            Expr::Lit(Lit::Bool(b)) => Val::Bool(*b),
            Expr::Lit(Lit::Num(n)) => Val::Num(*n),
            Expr::Lit(Lit::Str(s)) => Val::Str(s),
            Expr::Var(i) => Val::Bool(var(*i)),
            Expr::Not(e) => Val::Bool(!e.eval(var).truthy()),
            Expr::Truthy(e) => Val::Bool(e.eval(var).truthy()),
            Expr::And(items) => {
                let mut last = Val::Bool(true);
                for item in items {
                    last = item.eval(var);
                    if !last.truthy() {
                        break;
                    }
                }
                last
            }
            Expr::Or(items) => {
                let mut last = Val::Bool(false);
                for item in items {
                    last = item.eval(var);
                    if last.truthy() {
                        break;
                    }
                }
                last
            }
            Expr::If(items) => {
                let mut rest = items.as_slice();
                loop {
                    match rest {
                        [] => return Val::Null,
                        [otherwise] => return otherwise.eval(var),
                        [cond, then, tail @ ..] => {
                            if cond.eval(var).truthy() {
                                return then.eval(var);
                            }
                            rest = tail;
                        }
                    }
                }
            }
            Expr::Eq(a, b, negated) => {
                let (a, b) = (a.eval(var), b.eval(var));
                Val::Bool(a.loose_eq(b) != *negated)
            }
        }
    }

    /// The data indices of the simplest way to satisfy this expression, `None`
    /// if it cannot be satisfied. Negated parts need nothing: a missing scope
    /// is not something a client can ask for.
    fn need(&self) -> Option<Vec<usize>> {
        match self {
            Expr::Lit(l) => {
                let v = match l {
                    Lit::Null => Val::Null,
                    Lit::Bool(b) => Val::Bool(*b),
                    Lit::Num(n) => Val::Num(*n),
                    Lit::Str(s) => Val::Str(s),
                };
                v.truthy().then(Vec::new)
            }
            Expr::Var(i) => Some(vec![*i]),
            Expr::Not(_) => Some(Vec::new()),
            Expr::Truthy(e) => e.need(),
            Expr::And(items) => {
                let mut all = Vec::new();
                for item in items {
                    union(&mut all, item.need()?);
                }
                Some(all)
            }
            Expr::Or(items) => simplest(items.iter().map(Expr::need)),
            Expr::If(items) => {
                let mut options = Vec::new();
                let mut rest = items.as_slice();
                loop {
                    match rest {
                        [] => break,
                        [otherwise] => {
                            options.push(otherwise.need());
                            break;
                        }
                        [cond, then, tail @ ..] => {
                            options.push(cond.need().and_then(|mut c| {
                                union(&mut c, then.need()?);
                                Some(c)
                            }));
                            rest = tail;
                        }
                    }
                }
                simplest(options.into_iter())
            }
            Expr::Eq(a, b, negated) => match (a.as_ref(), b.as_ref()) {
                (Expr::Lit(Lit::Bool(want)), e) | (e, Expr::Lit(Lit::Bool(want)))
                    if *want != *negated =>
                {
                    e.need()
                }
                _ => Some(Vec::new()),
            },
        }
    }
}

fn union(into: &mut Vec<usize>, more: Vec<usize>) {
    for i in more {
        if !into.contains(&i) {
            into.push(i);
        }
    }
}

fn simplest(options: impl Iterator<Item = Option<Vec<usize>>>) -> Option<Vec<usize>> {
    options
        .flatten()
        .fold(None, |best: Option<Vec<usize>>, o| match best {
            Some(b) if b.len() <= o.len() => Some(b),
            _ => Some(o),
        })
}

/// A compiled scope requirement of one condition.
#[derive(Debug)]
pub(crate) struct Check {
    expr: Expr,
    data: Vec<Scope>,
    /// Precomputed [`Expr::need`].
    need: Option<Vec<usize>>,
}

impl Check {
    pub(super) fn new(expr: Expr, data: Vec<Scope>) -> Check {
        let need = expr.need();
        Check { expr, data, need }
    }

    /// Whether a token with `scopes` satisfies this check for a request whose
    /// path produced `captures`.
    pub(crate) fn allows(&self, scopes: &[String], captures: &[&str]) -> bool {
        // A scope may be referenced many times; its regex runs at most once.
        let mut memo: Vec<Option<bool>> = vec![None; self.data.len()];
        let mut var = |i: usize| -> bool {
            if let Some(Some(known)) = memo.get(i) {
                return *known;
            }
            let granted = self
                .data
                .get(i)
                .is_some_and(|s| s.granted(scopes, captures));
            if let Some(slot) = memo.get_mut(i) {
                *slot = Some(granted);
            }
            granted
        };
        self.expr.eval(&mut var).truthy()
    }

    /// The scopes of the simplest way to satisfy this check, with path captures
    /// filled into spontaneous scopes where possible.
    pub(crate) fn required(&self, captures: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for i in self.need.iter().flatten() {
            if let Some(scope) = self.data.get(*i) {
                let hint = scope.hint(captures);
                if !out.contains(&hint) {
                    out.push(hint);
                }
            }
        }
        out
    }
}

#[cfg(test)]
pub(super) mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::{json, Value};

    pub(crate) fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    pub(crate) fn logic(rule: Value, data: &[&str], captures: usize) -> Check {
        Check::from_json_logic(&rule, &strings(data), captures, "GET /r").unwrap()
    }

    #[test]
    fn json_logic_evaluation() {
        let data = ["admin", "read", "write"];
        // (rule, granted scopes, allowed)
        let cases: Vec<(Value, &[&str], bool)> = vec![
            (json!({"var": 0}), &["admin"], true),
            (json!({"var": 0}), &["read"], false),
            (json!({"var": [1]}), &["read"], true),
            (json!({"var": "2"}), &["write"], true),
            (json!({"and": [{"var": 0}, {"var": 1}]}), &["admin"], false),
            (
                json!({"and": [{"var": 0}, {"var": 1}]}),
                &["read", "admin"],
                true,
            ),
            (json!({"or": [{"var": 0}, {"var": 1}]}), &["read"], true),
            (json!({"or": [{"var": 0}, {"var": 1}]}), &[], false),
            (json!({"!": {"var": 0}}), &[], true),
            (json!({"!": [{"var": 0}]}), &["admin"], false),
            (json!({"!!": [{"var": 0}]}), &["admin"], true),
            (json!(true), &[], true),
            (json!(false), &["admin"], false),
            (
                json!({"if": [{"var": 0}, true, {"var": 1}]}),
                &["admin"],
                true,
            ),
            (
                json!({"if": [{"var": 0}, true, {"var": 1}]}),
                &["read"],
                true,
            ),
            (
                json!({"if": [{"var": 0}, true, {"var": 1}]}),
                &["write"],
                false,
            ),
            (
                json!({"if": [{"var": 0}, false, {"var": 1}, true, {"var": 2}]}),
                &["read", "admin"],
                false,
            ),
            (
                json!({"if": [{"var": 0}, false, {"var": 1}, true, {"var": 2}]}),
                &["write"],
                true,
            ),
            (json!({"if": [{"var": 0}, true]}), &["write"], false),
            (json!({"==": [{"var": 0}, true]}), &["admin"], true),
            (json!({"==": [{"var": 0}, false]}), &["admin"], false),
            (json!({"!=": [{"var": 0}, {"var": 1}]}), &["admin"], true),
            (
                json!({"!=": [{"var": 0}, {"var": 1}]}),
                &["admin", "read"],
                false,
            ),
            (json!({"==": [{"var": 0}, 1]}), &["admin"], true),
            (json!({"==": [1, "1"]}), &[], true),
            (json!({"==": [null, false]}), &[], false),
            (json!({"and": [true, "x"]}), &[], true),
            (json!({"and": [true, ""]}), &[], false),
            (json!({"or": [0, null]}), &[], false),
        ];
        for (rule, granted, want) in cases {
            let check = logic(rule.clone(), &data, 0);
            assert_eq!(
                check.allows(&strings(granted), &[]),
                want,
                "{rule} with {granted:?}"
            );
        }
    }

    #[test]
    fn required_hints() {
        // (readable expression, captures, hint)
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("read", &[], &["read"]),
            ("read and (fido or otp)", &[], &["read", "fido"]),
            ("(a and b) or c", &[], &["c"]),
            ("(a and b) or (c and d)", &[], &["a", "b"]),
            ("a and not b", &[], &["a"]),
            ("not a", &[], &[]),
            ("false or a", &[], &["a"]),
            ("false", &[], &[]),
            ("a and a and (a or b)", &[], &["a"]),
            (
                "^transactions:(?<PC1>[0-9]+)$",
                &["124"],
                &["transactions:124"],
            ),
            ("^t:(?<PC1>[0-9]+)", &["7"], &["t:7"]),
            (
                "^t\\.x:(?P<PC1>[a-z]+):(?<PC2>[0-9]+)$",
                &["ab", "1"],
                &["t.x:ab:1"],
            ),
            // The capture cannot satisfy the group: emit the regex itself.
            (
                "^transactions:(?<PC1>[0-9]+)$",
                &["abc"],
                &["^transactions:(?<PC1>[0-9]+)$"],
            ),
            ("^admin$", &[], &["admin"]),
            ("^posts:.+$", &[], &["^posts:.+$"]),
            ("^a(?<PC1>[)])$", &[")"], &["a)"]),
        ];
        for (text, caps, want) in cases {
            let check = Check::from_readable(text, caps.len(), "r").unwrap();
            assert_eq!(check.required(caps), strings(want), "{text}");
        }
        // JsonLogic shapes the readable form cannot express.
        let logic_cases: Vec<(Value, &[&str])> = vec![
            (
                json!({"if": [{"var": 0}, {"var": 1}, {"and": [{"var": 1}, {"var": 2}]}]}),
                &["a", "b"],
            ),
            (json!({"if": [{"var": 0}, {"var": 1}, {"var": 2}]}), &["c"]),
            (json!({"if": [{"var": 0}, {"var": 1}]}), &["a", "b"]),
            (json!({"==": [{"var": 2}, true]}), &["c"]),
            (json!({"!=": [{"var": 2}, true]}), &[]),
            (json!({"!!": {"var": 1}}), &["b"]),
        ];
        for (rule, want) in logic_cases {
            let check = logic(rule.clone(), &["a", "b", "c"], 0);
            assert_eq!(check.required(&[]), strings(want), "{rule}");
        }
    }
}
