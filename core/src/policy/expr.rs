//! Scope expressions: which granted scopes satisfy a rule.
//!
//! A condition has a list of scopes (`data`) and an expression over "does the
//! token have scope *i*". Both policy formats compile to the same [`Check`]:
//! the Gluu format gives a JsonLogic rule plus `data`, the readable form gives
//! `read and (fido or otp)` and the scope list is collected from the text.
//!
//! A scope is either plain (granted when the token has exactly that scope) or,
//! when it starts with `^`, a regex (a "spontaneous scope", granted when some
//! token scope matches it). A named group `PCn` in such a regex (any case)
//! must capture exactly the n-th path capture of the request; regex-lite
//! accepts both `(?<PC1>..)` and `(?P<PC1>..)`. The regex is used as written:
//! without a trailing `$` it may match a prefix of the token's scope. The first
//! (leftmost-first) match of each token scope is the one whose groups count.

use regex_lite::Regex;
use serde_json::Value;

use super::PolicyError;

/// Deeper expressions are refused so that compiling and evaluating them cannot
/// exhaust the wasm stack.
const MAX_DEPTH: usize = 64;

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

/// A piece of a scope regex that [`ScopePattern::fill`] can turn back into a scope.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    /// Index into the path captures.
    Capture(usize),
}

#[derive(Debug)]
pub(crate) struct ScopePattern {
    source: String,
    regex: Regex,
    /// (regex group index, path capture index) pairs that must be equal.
    groups: Vec<(usize, usize)>,
    /// Set when the regex is a plain text with `PCn` groups, e.g.
    /// `^transactions:(?<PC1>[0-9]+)$`.
    template: Option<Vec<Piece>>,
    /// Text every matching scope starts with: regex-lite has no literal
    /// optimisations, so token scopes without it are skipped cheaply.
    prefix: String,
}

#[derive(Debug)]
pub(crate) enum Scope {
    Plain(String),
    Pattern(ScopePattern),
}

/// `PCn` (any case) → n.
fn capture_number(name: &str) -> Option<usize> {
    let mut chars = name.chars();
    let (p, c) = (chars.next()?, chars.next()?);
    let digits = chars.as_str();
    if !p.eq_ignore_ascii_case(&'p')
        || !c.eq_ignore_ascii_case(&'c')
        || digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    digits.parse().ok()
}

/// The rest of a regex after the `)` closing the group whose body starts `s`.
fn skip_group(s: &str) -> Option<&str> {
    let mut depth = 1usize;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next()?;
            }
            '[' => {
                let mut class = chars.clone();
                if class.clone().next() == Some('^') {
                    class.next();
                }
                if class.clone().next() == Some(']') {
                    class.next();
                }
                loop {
                    match class.next()? {
                        '\\' => {
                            class.next()?;
                        }
                        ']' => break,
                        _ => {}
                    }
                }
                chars = class;
            }
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(chars.as_str());
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits `^text(?<PC1>...)text$` into pieces; `None` for anything else.
fn template(source: &str) -> Option<Vec<Piece>> {
    let body = super::path::strip_anchors(source);
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = body;
    while !rest.is_empty() {
        if let Some(after) = rest
            .strip_prefix("(?<")
            .or_else(|| rest.strip_prefix("(?P<"))
        {
            let (name, group) = after.split_once('>')?;
            let n = capture_number(name)?;
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Capture(n.checked_sub(1)?));
            rest = skip_group(group)?;
            continue;
        }
        let mut chars = rest.chars();
        match chars.next()? {
            '\\' => {
                let escaped = chars.next()?;
                if !escaped.is_ascii_punctuation() {
                    return None;
                }
                text.push(escaped);
            }
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' => {
                return None
            }
            c => text.push(c),
        }
        rest = chars.as_str();
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Some(pieces)
}

/// Whether the regex has a `|` outside any group or class, which would make
/// the text after `^` only one of the alternatives.
fn has_top_level_alternation(source: &str) -> bool {
    let mut depth = 0usize;
    let mut chars = source.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '[' => {
                // Skip the class, including a leading `]` or `^]`.
                let mut first = true;
                for k in chars.by_ref() {
                    match k {
                        '^' | ']' if first => {}
                        ']' => break,
                        _ => {}
                    }
                    first = first && k == '^';
                }
            }
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '|' if depth == 0 => return true,
            _ => {}
        }
    }
    false
}

/// The literal text right after `^` that every match must start with; empty
/// when unsure (a wrong prefix would wrongly refuse scopes).
fn literal_prefix(source: &str) -> String {
    let Some(body) = source.strip_prefix('^') else {
        return String::new();
    };
    if has_top_level_alternation(body) {
        return String::new();
    }
    let mut prefix = String::new();
    let mut chars = body.chars().peekable();
    while let Some(&c) = chars.peek() {
        let literal = match c {
            '\\' => {
                chars.next();
                match chars.peek() {
                    Some(&e) if e.is_ascii_punctuation() => e,
                    _ => break,
                }
            }
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' => break,
            c => c,
        };
        chars.next();
        // A quantifier makes the character it follows optional or repeated.
        if matches!(chars.peek(), Some('?' | '*' | '+' | '{')) {
            break;
        }
        prefix.push(literal);
    }
    prefix
}

impl ScopePattern {
    fn accepts(&self, scope: &str, captures: &[&str]) -> bool {
        if !scope.starts_with(self.prefix.as_str()) {
            return false;
        }
        if self.groups.is_empty() {
            return self.regex.is_match(scope);
        }
        let Some(found) = self.regex.captures(scope) else {
            return false;
        };
        self.groups.iter().all(|&(group, capture)| {
            found.get(group).map(|m| m.as_str()) == captures.get(capture).copied()
        })
    }

    /// The concrete scope this regex asks for given the path captures, if it
    /// is a template and the result really is accepted.
    fn fill(&self, captures: &[&str]) -> Option<String> {
        let mut out = String::new();
        for piece in self.template.as_ref()? {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Capture(i) => out.push_str(captures.get(*i)?),
            }
        }
        self.accepts(&out, captures).then_some(out)
    }
}

impl Scope {
    /// `captures` is how many captures the rule's path pattern makes.
    pub(crate) fn compile(text: &str, captures: usize, rule: &str) -> Result<Scope, PolicyError> {
        let bad = |problem: String| PolicyError::BadScope {
            rule: rule.to_string(),
            scope: text.to_string(),
            problem,
        };
        if text.is_empty() {
            return Err(bad("empty scope".to_string()));
        }
        if !text.starts_with('^') {
            if text.chars().any(char::is_whitespace) {
                return Err(bad("a scope cannot contain whitespace".to_string()));
            }
            return Ok(Scope::Plain(text.to_string()));
        }
        let regex = Regex::new(text).map_err(|e| bad(e.to_string()))?;
        let mut groups = Vec::new();
        for (index, name) in regex.capture_names().enumerate() {
            let Some(n) = name.and_then(capture_number) else {
                continue;
            };
            if n == 0 || n > captures {
                return Err(PolicyError::CaptureOutOfRange {
                    rule: rule.to_string(),
                    scope: text.to_string(),
                    group: name.unwrap_or_default().to_string(),
                    captures,
                });
            }
            groups.push((index, n - 1));
        }
        Ok(Scope::Pattern(ScopePattern {
            source: text.to_string(),
            template: template(text),
            prefix: literal_prefix(text),
            regex,
            groups,
        }))
    }

    fn granted(&self, scopes: &[String], captures: &[&str]) -> bool {
        match self {
            Scope::Plain(p) => scopes.iter().any(|s| s == p),
            Scope::Pattern(p) => scopes.iter().any(|s| p.accepts(s, captures)),
        }
    }

    fn hint(&self, captures: &[&str]) -> String {
        match self {
            Scope::Plain(p) => p.clone(),
            Scope::Pattern(p) => p.fill(captures).unwrap_or_else(|| p.source.clone()),
        }
    }
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
    fn new(expr: Expr, data: Vec<Scope>) -> Check {
        let need = expr.need();
        Check { expr, data, need }
    }

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

    /// The readable form, e.g. `read and (fido or otp)`.
    pub(crate) fn from_readable(
        text: &str,
        captures: usize,
        name: &str,
    ) -> Result<Check, PolicyError> {
        let mut parser = Parser {
            tokens: tokenize(text),
            pos: 0,
            scopes: Vec::new(),
            text,
            name,
        };
        let expr = parser.expression()?;
        let scopes = parser
            .scopes
            .iter()
            .map(|s| Scope::compile(s, captures, name))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Check::new(expr, scopes))
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

#[derive(Debug, Clone, Copy, PartialEq)]
enum Token<'t> {
    Open,
    Close,
    Word(&'t str),
}

fn tokenize(text: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut rest = text.trim_start();
    while let Some(c) = rest.chars().next() {
        let len = match c {
            '(' | ')' => c.len_utf8(),
            // A regex scope may contain parentheses: it runs to the next space.
            '^' => rest.find(char::is_whitespace).unwrap_or(rest.len()),
            _ => rest
                .find(|c: char| c.is_whitespace() || c == '(' || c == ')')
                .unwrap_or(rest.len()),
        };
        let word = rest.get(..len).unwrap_or_default();
        tokens.push(match word {
            "(" => Token::Open,
            ")" => Token::Close,
            w => Token::Word(w),
        });
        rest = rest.get(len..).unwrap_or_default().trim_start();
    }
    tokens
}

fn is_keyword(word: &str) -> bool {
    matches!(word, "and" | "or" | "not" | "true" | "false")
}

/// Precedence: `not` binds tighter than `and`, which binds tighter than `or`.
struct Parser<'t> {
    tokens: Vec<Token<'t>>,
    pos: usize,
    scopes: Vec<String>,
    text: &'t str,
    name: &'t str,
}

impl<'t> Parser<'t> {
    fn error(&self, problem: String) -> PolicyError {
        PolicyError::BadExpression {
            rule: self.name.to_string(),
            expression: self.text.to_string(),
            problem,
        }
    }

    fn peek(&self) -> Option<Token<'t>> {
        self.tokens.get(self.pos).copied()
    }

    fn expression(&mut self) -> Result<Expr, PolicyError> {
        if self.tokens.is_empty() {
            return Err(self.error("empty expression".to_string()));
        }
        let expr = self.or(0)?;
        match self.peek() {
            None => Ok(expr),
            Some(Token::Close) => Err(self.error("unbalanced `)`".to_string())),
            Some(Token::Open) => Err(self.error("missing `and`/`or` before `(`".to_string())),
            Some(Token::Word(w)) => Err(self.error(format!(
                "missing `and`/`or` before `{w}` (operators are lower-case)"
            ))),
        }
    }

    fn or(&mut self, depth: usize) -> Result<Expr, PolicyError> {
        let mut items = vec![self.and(depth)?];
        while self.peek() == Some(Token::Word("or")) {
            self.pos += 1;
            items.push(self.and(depth)?);
        }
        Ok(match items.pop() {
            Some(only) if items.is_empty() => only,
            Some(last) => {
                items.push(last);
                Expr::Or(items)
            }
            None => Expr::Or(items),
        })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, PolicyError> {
        let mut items = vec![self.unary(depth)?];
        while self.peek() == Some(Token::Word("and")) {
            self.pos += 1;
            items.push(self.unary(depth)?);
        }
        Ok(match items.pop() {
            Some(only) if items.is_empty() => only,
            Some(last) => {
                items.push(last);
                Expr::And(items)
            }
            None => Expr::And(items),
        })
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, PolicyError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply".to_string()));
        }
        let previous = self
            .pos
            .checked_sub(1)
            .and_then(|p| self.tokens.get(p))
            .copied();
        let token = self.peek();
        self.pos += 1;
        match token {
            None => Err(self.error(match previous {
                Some(Token::Word(op)) => format!("dangling operator `{op}` at the end"),
                _ => "unbalanced `(`".to_string(),
            })),
            Some(Token::Word("not")) => Ok(Expr::Not(Box::new(self.unary(depth + 1)?))),
            Some(Token::Word("true")) => Ok(Expr::Lit(Lit::Bool(true))),
            Some(Token::Word("false")) => Ok(Expr::Lit(Lit::Bool(false))),
            Some(Token::Word(op @ ("and" | "or"))) => {
                Err(self.error(format!("operator `{op}` is missing its left operand")))
            }
            Some(Token::Open) => {
                let inner = self.or(depth + 1)?;
                if self.peek() == Some(Token::Close) {
                    self.pos += 1;
                    Ok(inner)
                } else {
                    Err(self.error("unbalanced `(`".to_string()))
                }
            }
            Some(Token::Close) => Err(self.error(match previous {
                Some(Token::Open) => "empty `()`".to_string(),
                Some(Token::Word(op)) if is_keyword(op) => {
                    format!("dangling operator `{op}` before `)`")
                }
                _ => "unbalanced `)`".to_string(),
            })),
            Some(Token::Word(scope)) => {
                let index = match self.scopes.iter().position(|s| s == scope) {
                    Some(i) => i,
                    None => {
                        self.scopes.push(scope.to_string());
                        self.scopes.len() - 1
                    }
                };
                Ok(Expr::Var(index))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn logic(rule: Value, data: &[&str], captures: usize) -> Check {
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

    #[test]
    fn readable_parsing() {
        // (text, expected expression, collected scopes)
        let v = |i| Expr::Var(i);
        let cases: Vec<(&str, Expr, &[&str])> = vec![
            ("read", v(0), &["read"]),
            (
                "read and write",
                Expr::And(vec![v(0), v(1)]),
                &["read", "write"],
            ),
            (
                "a or b and c",
                Expr::Or(vec![v(0), Expr::And(vec![v(1), v(2)])]),
                &["a", "b", "c"],
            ),
            (
                "(a or b) and c",
                Expr::And(vec![Expr::Or(vec![v(0), v(1)]), v(2)]),
                &["a", "b", "c"],
            ),
            (
                "READ and (FIDO or OTP)",
                Expr::And(vec![v(0), Expr::Or(vec![v(1), v(2)])]),
                &["READ", "FIDO", "OTP"],
            ),
            (
                "not a and b",
                Expr::And(vec![Expr::Not(Box::new(v(0))), v(1)]),
                &["a", "b"],
            ),
            (
                "not not a",
                Expr::Not(Box::new(Expr::Not(Box::new(v(0))))),
                &["a"],
            ),
            ("a or a", Expr::Or(vec![v(0), v(0)]), &["a"]),
            ("true", Expr::Lit(Lit::Bool(true)), &[]),
            ("  false  ", Expr::Lit(Lit::Bool(false)), &[]),
            ("(read)", v(0), &["read"]),
            (
                "x:y/z and a.b",
                Expr::And(vec![v(0), v(1)]),
                &["x:y/z", "a.b"],
            ),
            ("(a)or(b)", Expr::Or(vec![v(0), v(1)]), &["a", "b"]),
            (
                "^transactions:(?<PC1>[0-9]+)$ or admin",
                Expr::Or(vec![v(0), v(1)]),
                &["^transactions:(?<PC1>[0-9]+)$", "admin"],
            ),
            ("(^a(b)c )", v(0), &["^a(b)c"]),
        ];
        for (text, want, scopes) in cases {
            let mut p = Parser {
                tokens: tokenize(text),
                pos: 0,
                scopes: Vec::new(),
                text,
                name: "r",
            };
            assert_eq!(p.expression().unwrap(), want, "{text}");
            assert_eq!(p.scopes, strings(scopes), "{text}");
        }
    }

    #[test]
    fn readable_errors() {
        // (text, fragment of the problem)
        let cases: &[(&str, &str)] = &[
            ("", "empty expression"),
            ("   ", "empty expression"),
            ("(a and b", "unbalanced `(`"),
            ("a and b)", "unbalanced `)`"),
            ("a and", "dangling operator `and`"),
            ("a or", "dangling operator `or`"),
            ("not", "dangling operator `not`"),
            ("and a", "missing its left operand"),
            ("a or or b", "missing its left operand"),
            ("(a and) or b", "dangling operator `and` before `)`"),
            ("()", "empty `()`"),
            ("a b", "missing `and`/`or` before `b`"),
            ("read AND write", "missing `and`/`or` before `AND`"),
            ("a (b)", "missing `and`/`or` before `(`"),
            (")", "unbalanced `)`"),
            ("((a)", "unbalanced `(`"),
        ];
        for (text, fragment) in cases {
            let err = Check::from_readable(text, 0, "GET /r").unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(err, PolicyError::BadExpression { .. }) && message.contains(fragment),
                "{text:?}: {message}"
            );
            assert!(message.contains("GET /r"), "{message}");
        }
        let deep = format!("{}a{}", "(".repeat(100), ")".repeat(100));
        assert!(Check::from_readable(&deep, 0, "r")
            .unwrap_err()
            .to_string()
            .contains("nested too deeply"));
    }

    #[test]
    fn scope_errors() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 0, "BadScope"),
            ("a b", 0, "BadScope"),
            ("^a(", 0, "BadScope"),
            ("^t:(?<PC1>[0-9]+)$", 0, "CaptureOutOfRange"),
            ("^t:(?<PC2>[0-9]+)$", 1, "CaptureOutOfRange"),
            ("^t:(?<PC0>[0-9]+)$", 1, "CaptureOutOfRange"),
            ("^t:(?<pc3>[0-9]+)$", 2, "CaptureOutOfRange"),
        ];
        for (scope, captures, want) in cases {
            let err = Scope::compile(scope, *captures, "r").unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{scope}: {err:?}");
        }
        assert!(Scope::compile("^t:(?<PC2>.+)$", 2, "r").is_ok());
        assert!(Scope::compile("^t:(?<other>.+)$", 0, "r").is_ok());
    }

    #[test]
    fn spontaneous_scopes_with_captures() {
        let check = logic(json!({"var": 0}), &["^transactions:(?<PC1>[0-9]+)$"], 1);
        // (granted, path captures, allowed)
        let cases: &[(&[&str], &[&str], bool)] = &[
            (&["transactions:45"], &["45"], true),
            (&["transactions:123"], &["124"], false),
            (&["transactions:1234"], &["123"], false),
            (&["transactions:123"], &["123"], true),
            (
                &["read", "transactions:9", "transactions:124"],
                &["124"],
                true,
            ),
            (&["transactions:"], &[""], false),
            (&["xtransactions:45"], &["45"], false),
        ];
        for (granted, caps, want) in cases {
            assert_eq!(
                check.allows(&strings(granted), caps),
                *want,
                "{granted:?} {caps:?}"
            );
        }
        let p_spelling = logic(json!({"var": 0}), &["^t:(?P<PC2>.+)$"], 2);
        assert!(p_spelling.allows(&strings(&["t:b"]), &["a", "b"]));
        assert!(!p_spelling.allows(&strings(&["t:a"]), &["a", "b"]));
        let no_groups = logic(json!({"var": 0}), &["^posts:.+$"], 0);
        assert!(no_groups.allows(&strings(&["posts:1"]), &[]));
        assert!(!no_groups.allows(&strings(&["posts:"]), &[]));
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

    #[test]
    fn literal_prefixes() {
        let cases: &[(&str, &str)] = &[
            ("^orders:(?<PC1>[0-9]+)$", "orders:"),
            ("^orders:.+$", "orders:"),
            ("^a\\.b:x", "a.b:x"),
            ("^ab?c", "a"),
            ("^ab*", "a"),
            ("^ab{2}", "a"),
            ("^ab+", "a"),
            ("^a|b", ""),
            ("^a(b|c)", "a"),
            ("^a[|]b", "a"),
            ("^a[]|]b|c", ""),
            ("^(?i)abc", ""),
            ("^\\d+", ""),
            ("^caf\u{e9}:", "caf\u{e9}:"),
        ];
        for (source, want) in cases {
            assert_eq!(literal_prefix(source), *want, "{source}");
        }
        // The prefix never hides a scope the regex accepts.
        let check = logic(json!({"var": 0}), &["^ab?c|x"], 0);
        assert!(check.allows(&strings(&["ac"]), &[]));
        assert!(check.allows(&strings(&["zx"]), &[]));
    }

    #[test]
    fn templates() {
        assert_eq!(
            template("^x:(?<PC1>[0-9]+)$"),
            Some(vec![Piece::Text("x:".into()), Piece::Capture(0)])
        );
        assert_eq!(template("^x:(?<name>.+)$"), None);
        assert_eq!(template("^x\\d$"), None);
        assert_eq!(
            template("^(?<PC1>a(b)[)(])-$"),
            Some(vec![Piece::Capture(0), Piece::Text("-".into())])
        );
        assert_eq!(template("^(?<PC1>a"), None);
    }
}
