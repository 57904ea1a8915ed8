//! Scope expressions: which granted scopes satisfy a rule.
//!
//! A condition has a list of scopes (`data`) and an expression over "does the
//! token have scope *i*". Both policy formats compile to the same [`Check`]:
//! the Gluu format gives a JsonLogic rule plus `data`, the readable form gives
//! `read and (fido or otp)` and the scope list is collected from the text.
//!
//! The expression is evaluated as JsonLogic (json-logic-js, which Gluu's Lua
//! evaluator ported) over `data` = one boolean per scope: operators return
//! values, not just booleans (`and` yields an operand, `var ""` the whole
//! array), equality is JavaScript's, and the rule passes when its value is
//! truthy (`false`, `null`, `0`, `""` and `[]` are not).
//!
//! Scopes themselves (plain or spontaneous) are in `scope.rs`, the two parsers
//! in `json_logic.rs` and `readable.rs`.

use super::path::Capture;
use super::scope::Scope;

/// Deeper expressions are refused so that compiling and evaluating them cannot
/// exhaust the wasm stack.
pub(super) const MAX_DEPTH: usize = 64;

/// Up to this many scopes the required-scope hint is the true smallest set
/// (2^n evaluations at load); beyond, scopes are dropped one at a time.
const EXACT_HINT_SCOPES: usize = 12;

/// A JsonLogic literal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
}

/// How `some`, `all` and `none` judge the elements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Quantifier {
    Some,
    All,
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Lit(Lit),
    /// A JSON array inside a rule: its elements, each evaluated.
    Array(Vec<Expr>),
    /// Whether scope `data[i]` is granted (`var` outside `some`/`all`/`none`).
    Var(usize),
    /// `{"var": ""}` outside `some`/`all`/`none`: the whole `data`.
    AllData,
    /// `var` inside a `some`/`all`/`none` predicate: the element (`index`
    /// `None`) or its `index`-th item; `default` (else `null`) when absent.
    Elem {
        index: Option<usize>,
        default: Option<Box<Expr>>,
    },
    /// `missing` (`need: None`) and `missing_some`: the keys, as written,
    /// that have no value (`null` or `""`) in the current data.
    Missing {
        keys: Vec<(usize, Lit)>,
        need: Option<f64>,
        in_element: bool,
    },
    Not(Box<Expr>),
    Truthy(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    /// JsonLogic `if`: `[cond1, then1, cond2, then2, …, else]`, else optional.
    If(Vec<Expr>),
    /// `==` / `!=` (loose) and `===` / `!==` (strict).
    Eq {
        a: Box<Expr>,
        b: Box<Expr>,
        strict: bool,
        negated: bool,
    },
    /// `in`: `a` is an element of the array `b` (strictly equal), or a
    /// substring of the string `b`.
    In(Box<Expr>, Box<Expr>),
    /// `some` / `all` / `none` over an array, the predicate seeing each element.
    Each {
        kind: Quantifier,
        array: Box<Expr>,
        predicate: Box<Expr>,
    },
}

/// What an expression evaluates to, as in JsonLogic.
#[derive(Debug, Clone, PartialEq)]
enum Val<'e> {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'e str),
    Arr(Vec<Val<'e>>),
}

impl Lit {
    fn val(&self) -> Val<'_> {
        match self {
            Lit::Null => Val::Null,
            Lit::Bool(b) => Val::Bool(*b),
            Lit::Num(n) => Val::Num(*n),
            Lit::Str(s) => Val::Str(s),
        }
    }
}

/// JavaScript's `Number(text)` for the decimal forms JSON configs use; `NaN`
/// for anything else (Rust would also read `inf` and `nan`).
fn str_number(text: &str) -> f64 {
    let t = text.trim();
    if t.is_empty() {
        return 0.0;
    }
    if t.bytes()
        .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E')
    {
        return f64::NAN;
    }
    t.parse().unwrap_or(f64::NAN)
}

impl Val<'_> {
    fn truthy(&self) -> bool {
        match self {
            Val::Null => false,
            Val::Bool(b) => *b,
            Val::Num(n) => *n != 0.0 && !n.is_nan(),
            Val::Str(s) => !s.is_empty(),
            Val::Arr(items) => !items.is_empty(),
        }
    }

    /// JavaScript's `String(value)`.
    fn js_string(&self) -> String {
        match self {
            Val::Null => "null".to_string(),
            Val::Arr(items) => {
                // `Array.prototype.join`: `null` elements are empty.
                let parts: Vec<String> = items
                    .iter()
                    .map(|v| match v {
                        Val::Null => String::new(),
                        v => v.js_string(),
                    })
                    .collect();
                parts.join(",")
            }
            Val::Bool(b) => b.to_string(),
            Val::Num(n) => n.to_string(),
            Val::Str(s) => s.to_string(),
        }
    }

    /// JavaScript `===`: arrays are distinct objects, never equal.
    fn strict_eq(&self, other: &Val<'_>) -> bool {
        match (self, other) {
            (Val::Null, Val::Null) => true,
            (Val::Bool(a), Val::Bool(b)) => a == b,
            (Val::Num(a), Val::Num(b)) => a == b,
            (Val::Str(a), Val::Str(b)) => a == b,
            _ => false,
        }
    }

    /// JavaScript `==` (the abstract equality algorithm, for these types).
    fn loose_eq(&self, other: &Val<'_>) -> bool {
        match (self, other) {
            (Val::Null, Val::Null) => true,
            (Val::Null, _) | (_, Val::Null) => false,
            (Val::Arr(_), Val::Arr(_)) => false,
            (Val::Bool(a), Val::Bool(b)) => a == b,
            (Val::Bool(b), o) | (o, Val::Bool(b)) => Val::Num(f64::from(u8::from(*b))).loose_eq(o),
            (Val::Num(a), Val::Num(b)) => a == b,
            (Val::Str(a), Val::Str(b)) => a == b,
            (Val::Num(n), Val::Str(s)) | (Val::Str(s), Val::Num(n)) => *n == str_number(s),
            // An array against a string or number is compared as its text.
            (Val::Arr(_), o) | (o, Val::Arr(_)) => {
                let text = if matches!(self, Val::Arr(_)) {
                    self.js_string()
                } else {
                    other.js_string()
                };
                match o {
                    Val::Num(n) => *n == str_number(&text),
                    Val::Str(s) => *s == text,
                    _ => false,
                }
            }
        }
    }
}

/// The evaluation environment: scope `i` granted, and how many there are.
struct Env<'f, F> {
    var: &'f mut F,
    len: usize,
}

impl Expr {
    fn eval<'e, F: FnMut(usize) -> bool>(
        &'e self,
        env: &mut Env<'_, F>,
        elem: Option<&Val<'e>>,
    ) -> Val<'e> {
        match self {
            Expr::Lit(l) => l.val(),
            Expr::Array(items) => Val::Arr(items.iter().map(|e| e.eval(env, elem)).collect()),
            Expr::Var(i) => Val::Bool((env.var)(*i)),
            Expr::AllData => Val::Arr((0..env.len).map(|i| Val::Bool((env.var)(i))).collect()),
            Expr::Elem { index, default } => match lookup(elem, *index) {
                Some(v) => v,
                None => default.as_ref().map_or(Val::Null, |d| d.eval(env, elem)),
            },
            Expr::Missing {
                keys,
                need,
                in_element,
            } => {
                let missing: Vec<Val<'e>> = keys
                    .iter()
                    .filter(|(index, _)| {
                        if *in_element {
                            matches!(
                                lookup(elem, Some(*index)),
                                None | Some(Val::Null) | Some(Val::Str(""))
                            )
                        } else {
                            // Every scope of `data` has a boolean value.
                            *index >= env.len
                        }
                    })
                    .map(|(_, written)| written.val())
                    .collect();
                match need {
                    // `missing_some`: nothing is missing once enough are there.
                    Some(n) if (keys.len() - missing.len()) as f64 >= *n => Val::Arr(Vec::new()),
                    _ => Val::Arr(missing),
                }
            }
            Expr::Not(e) => Val::Bool(!e.eval(env, elem).truthy()),
            Expr::Truthy(e) => Val::Bool(e.eval(env, elem).truthy()),
            Expr::And(items) => {
                let mut last = Val::Bool(true);
                for item in items {
                    last = item.eval(env, elem);
                    if !last.truthy() {
                        break;
                    }
                }
                last
            }
            Expr::Or(items) => {
                let mut last = Val::Bool(false);
                for item in items {
                    last = item.eval(env, elem);
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
                        [otherwise] => return otherwise.eval(env, elem),
                        [cond, then, tail @ ..] => {
                            if cond.eval(env, elem).truthy() {
                                return then.eval(env, elem);
                            }
                            rest = tail;
                        }
                    }
                }
            }
            Expr::Eq {
                a,
                b,
                strict,
                negated,
            } => {
                let (a, b) = (a.eval(env, elem), b.eval(env, elem));
                let equal = if *strict {
                    a.strict_eq(&b)
                } else {
                    a.loose_eq(&b)
                };
                Val::Bool(equal != *negated)
            }
            Expr::In(needle, haystack) => {
                let needle = needle.eval(env, elem);
                Val::Bool(match haystack.eval(env, elem) {
                    Val::Arr(items) => items.iter().any(|v| v.strict_eq(&needle)),
                    Val::Str(s) => s.contains(needle.js_string().as_str()),
                    _ => false,
                })
            }
            Expr::Each {
                kind,
                array,
                predicate,
            } => {
                // Anything but an array is an empty one.
                let items = match array.eval(env, elem) {
                    Val::Arr(items) => items,
                    _ => Vec::new(),
                };
                let mut passing = items
                    .iter()
                    .map(|item| predicate.eval(env, Some(item)).truthy());
                Val::Bool(match kind {
                    Quantifier::Some => passing.any(|p| p),
                    Quantifier::None => !passing.any(|p| p),
                    // json-logic-js: `all` of an empty array is false.
                    Quantifier::All => !items.is_empty() && passing.all(|p| p),
                })
            }
        }
    }

    /// Whether the expression passes when exactly the scopes in `granted`
    /// (indices into `data`, of which there are `len`) are granted.
    pub(super) fn passes_with(&self, granted: &[usize], len: usize) -> bool {
        let mut var = |i: usize| granted.contains(&i);
        let mut env = Env { var: &mut var, len };
        self.eval(&mut env, None).truthy()
    }
}

/// The element itself (`index` `None`), or its `index`-th item.
fn lookup<'e>(elem: Option<&Val<'e>>, index: Option<usize>) -> Option<Val<'e>> {
    let elem = elem?;
    match index {
        None => Some(elem.clone()),
        Some(i) => match elem {
            Val::Arr(items) => items.get(i).cloned(),
            _ => None,
        },
    }
}

/// The data indices of the smallest set of scopes that satisfies `expr` when
/// only those are granted (the first such set in `data` order on a tie),
/// `None` if there is none. Negated scopes are simply left out: a missing
/// scope is not something a client can ask for; nor is one of `never`, the
/// scopes nothing satisfies.
fn simplest(expr: &Expr, len: usize, never: &[usize]) -> Option<Vec<usize>> {
    if len <= EXACT_HINT_SCOPES {
        for size in 0..=len {
            // Combinations of `size` indices in lexicographic order.
            let mut combo: Vec<usize> = (0..size).collect();
            loop {
                if !combo.iter().any(|i| never.contains(i)) && expr.passes_with(&combo, len) {
                    return Some(combo);
                }
                let Some(i) = (0..size)
                    .rev()
                    .find(|&i| combo.get(i) != Some(&(len - size + i)))
                else {
                    break;
                };
                if let Some(first) = combo.get(i).copied() {
                    for (k, slot) in combo.iter_mut().enumerate().skip(i) {
                        *slot = first + 1 + (k - i);
                    }
                }
            }
        }
        return None;
    }
    if expr.passes_with(&[], len) {
        return Some(Vec::new());
    }
    let mut set: Vec<usize> = (0..len).filter(|i| !never.contains(i)).collect();
    if !expr.passes_with(&set, len) {
        return None;
    }
    let mut i = 0;
    while i < set.len() {
        let removed = set.remove(i);
        if !expr.passes_with(&set, len) {
            set.insert(i, removed);
            i += 1;
        }
    }
    Some(set)
}

/// A compiled scope requirement of one condition.
#[derive(Debug)]
pub(crate) struct Check {
    expr: Expr,
    data: Vec<Scope>,
    /// Precomputed [`simplest`].
    need: Option<Vec<usize>>,
}

impl Check {
    pub(super) fn new(expr: Expr, data: Vec<Scope>) -> Check {
        let never: Vec<usize> = (0..data.len())
            .filter(|&i| data.get(i).is_some_and(|s| !s.unbound().is_empty()))
            .collect();
        let need = simplest(&expr, data.len(), &never);
        Check { expr, data, need }
    }

    /// `(scope, group)` for each `PCn` group naming a capture the path does
    /// not make (Gluu's format past its `??`): that scope is never satisfied.
    pub(super) fn unbound(&self) -> Vec<(&str, &str)> {
        self.data
            .iter()
            .flat_map(|s| s.unbound().iter().map(move |g| (s.text(), g.as_str())))
            .collect()
    }

    /// The plain scopes this check names (regex scopes left out).
    pub(crate) fn plain_scopes(&self) -> impl Iterator<Item = &str> {
        self.data.iter().filter_map(|s| match s {
            Scope::Plain(p) => Some(p.as_str()),
            Scope::Pattern(_) => None,
        })
    }

    /// For a check over no scopes at all: whether it always passes.
    pub(super) fn constant(&self) -> Option<bool> {
        self.data.is_empty().then(|| self.expr.passes_with(&[], 0))
    }

    /// Whether a token with `scopes` satisfies this check for a request whose
    /// path produced `captures`.
    pub(crate) fn allows(&self, scopes: &[String], captures: &[Capture<'_>]) -> bool {
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
        let mut env = Env {
            var: &mut var,
            len: self.data.len(),
        };
        self.expr.eval(&mut env, None).truthy()
    }

    /// The scopes of the simplest way to satisfy this check, with path captures
    /// filled into spontaneous scopes where possible.
    pub(crate) fn required(&self, captures: &[Capture<'_>]) -> Vec<String> {
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
    use crate::policy::scope::Captures;
    use serde_json::{json, Value};

    pub(crate) fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    /// Path captures that all took part in the match.
    pub(crate) fn caps<'a>(c: &[&'a str]) -> Vec<Capture<'a>> {
        c.iter().map(|x| Some(*x)).collect()
    }

    pub(crate) fn logic(rule: Value, data: &[&str], captures: usize) -> Check {
        Check::from_json_logic(&rule, &strings(data), Captures::up_to(captures), "GET /r").unwrap()
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
            // The rest of JsonLogic that means something on booleans, with
            // json-logic-js's results.
            (
                json!({"?:": [{"var": 0}, true, {"var": 1}]}),
                &["read"],
                true,
            ),
            (json!({"===": [{"var": 0}, true]}), &["admin"], true),
            (json!({"===": [{"var": 0}, 1]}), &["admin"], false),
            (json!({"!==": [{"var": 0}, 1]}), &["admin"], true),
            (json!({"==": [[], false]}), &[], true),
            (json!({"==": [[true], "true"]}), &[], true),
            (json!({"==": [[true, false], "true,false"]}), &[], true),
            (
                json!({"==": [{"var": ""}, "true,false,false"]}),
                &["admin"],
                true,
            ),
            (json!({"==": [[], []]}), &[], false),
            (json!({"==": [null, 0]}), &[], false),
            (json!({"==": ["", 0]}), &[], true),
            (json!({"==": ["1e0", true]}), &[], true),
            (json!({"==": ["inf", "inf"]}), &[], true),
            (json!({"==": ["inf", 0]}), &[], false),
            (json!({"==": [" 12 ", 12]}), &[], true),
            // `in`: strict membership in an array, substring of a string.
            (
                json!({"in": [true, [{"var": 0}, {"var": 1}]]}),
                &["read"],
                true,
            ),
            (
                json!({"in": [true, [{"var": 0}, {"var": 1}]]}),
                &["write"],
                false,
            ),
            (json!({"in": [true, {"var": ""}]}), &["write"], true),
            (
                json!({"in": [false, {"var": ""}]}),
                &["admin", "read", "write"],
                false,
            ),
            (json!({"in": [1, [true]]}), &[], false),
            (json!({"in": [true, "it is true"]}), &[], true),
            (json!({"in": ["x", null]}), &[], false),
            // some / all / none: `var` in the predicate reads the element.
            (
                json!({"some": [{"var": ""}, {"var": ""}]}),
                &["write"],
                true,
            ),
            (json!({"some": [{"var": ""}, {"var": ""}]}), &[], false),
            (
                json!({"all": [{"var": ""}, {"var": ""}]}),
                &["admin", "read"],
                false,
            ),
            (
                json!({"all": [{"var": ""}, {"==": [{"var": ""}, true]}]}),
                &["admin", "read", "write"],
                true,
            ),
            (json!({"all": [[], true]}), &[], false),
            (
                json!({"none": [[{"var": 0}, {"var": 2}], {"var": ""}]}),
                &["read"],
                true,
            ),
            (
                json!({"none": [[{"var": 0}, {"var": 2}], {"var": ""}]}),
                &["write"],
                false,
            ),
            (json!({"some": [{"var": 0}, true]}), &["admin"], false),
            (json!({"none": [{"var": 0}, true]}), &["admin"], true),
            (
                json!({"some": [[[{"var": 0}, true], [false, false]], {"var": 0}]}),
                &["admin"],
                true,
            ),
            (
                json!({"some": [[[false, false]], {"var": [5, true]}]}),
                &[],
                true,
            ),
            (json!({"some": [[[false]], {"var": [0, true]}]}), &[], false),
            (json!({"some": [[null], {"var": ["", true]}]}), &[], false),
            // missing: every scope of `data` has a value; past its end, none.
            (json!({"missing": [0, 2]}), &[], false),
            (json!({"missing": [0, 7]}), &[], true),
            (json!({"!": {"missing": [[0, 1]]}}), &[], true),
            (json!({"missing_some": [1, [0, 9]]}), &[], false),
            (json!({"missing_some": [2, [0, 9]]}), &[], true),
            (
                json!({"some": [[[1, null], [1, 2]], {"missing": [1]}]}),
                &[],
                true,
            ),
            (json!({"all": [[[1, ""]], {"missing": [1]}]}), &[], true),
            // `var` with a default: scopes of `data` always have a value.
            (json!({"var": [0, true]}), &[], false),
            (json!({"var": [9, true]}), &[], true),
            (json!({"var": []}), &[], true),
            (json!({"!!": [{"var": null}]}), &[], true),
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
        for (text, path, want) in cases {
            let check = Check::from_readable(text, Captures::up_to(path.len()), "r").unwrap();
            assert_eq!(check.required(&caps(path)), strings(want), "{text}");
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
            (json!({"in": [true, [{"var": 2}, {"var": 1}]]}), &["b"]),
            (
                json!({"all": [[{"var": 2}, {"var": 0}], {"var": ""}]}),
                &["a", "c"],
            ),
            (json!({"none": [{"var": ""}, {"var": ""}]}), &[]),
            (json!({"some": [[], true]}), &[]),
        ];
        for (rule, want) in logic_cases {
            let check = logic(rule.clone(), &["a", "b", "c"], 0);
            assert_eq!(check.required(&[]), strings(want), "{rule}");
        }
    }
}
