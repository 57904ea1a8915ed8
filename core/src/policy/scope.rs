//! Scopes a condition refers to.
//!
//! A scope is either plain (granted when the token has exactly that scope) or,
//! when it starts with `^`, a regex (a "spontaneous scope", granted when some
//! token scope matches it). A named group `PCn` in such a regex (any case)
//! must capture exactly the n-th path capture of the request (in Gluu's
//! format, a `PCn` at or after the `??`, which captures nothing there, is
//! never satisfied, as in Gluu, and warned about at load); regex-lite
//! accepts both `(?<PC1>..)` and `(?P<PC1>..)`. The regex is used as written:
//! without a trailing `$` it may match a prefix of the token's scope. The first
//! (leftmost-first) match of each token scope is the one whose groups count.

use regex_lite::Regex;

use super::path::Capture;
use super::PolicyError;

/// The `PCn` groups a rule's scopes may name, checked at load.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Captures {
    /// `PC1` … `PC{available}` exist.
    pub(crate) available: usize,
    /// Gluu's format on a pattern with `??`: the numbers stop at the `??`,
    /// which the error then says.
    pub(crate) cut_at_multi: bool,
}

impl Captures {
    /// `PC1` … `PC{n}`, with nothing more to say when a higher one is named.
    pub(crate) fn up_to(n: usize) -> Captures {
        Captures {
            available: n,
            cut_at_multi: false,
        }
    }
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
    /// (regex group index, path capture index) pairs that must be equal; no
    /// index: a group naming a capture the path does not make, which nothing
    /// equals (Gluu's format past its `??`).
    groups: Vec<(usize, Option<usize>)>,
    /// Those groups' names, for the load-time warning.
    unbound: Vec<String>,
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
    fn accepts(&self, scope: &str, captures: &[Capture<'_>]) -> bool {
        if !scope.starts_with(self.prefix.as_str()) {
            return false;
        }
        if self.groups.is_empty() {
            return self.regex.is_match(scope);
        }
        let Some(found) = self.regex.captures(scope) else {
            return false;
        };
        // An absent path capture (a regex group that took no part) is never
        // equal to anything, not even to a scope group that is absent too.
        self.groups.iter().all(|&(group, capture)| {
            let capture = capture.and_then(|c| captures.get(c).copied().flatten());
            match (found.get(group), capture) {
                (Some(m), Some(c)) => m.as_str() == c,
                _ => false,
            }
        })
    }

    /// The concrete scope this regex asks for given the path captures, if it
    /// is a template and the result really is accepted.
    fn fill(&self, captures: &[Capture<'_>]) -> Option<String> {
        let mut out = String::new();
        for piece in self.template.as_ref()? {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Capture(i) => out.push_str(captures.get(*i).copied().flatten()?),
            }
        }
        self.accepts(&out, captures).then_some(out)
    }
}

impl Scope {
    /// `captures` says which `PCn` the rule's path pattern makes.
    pub(crate) fn compile(
        text: &str,
        captures: Captures,
        rule: &str,
    ) -> Result<Scope, PolicyError> {
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
        let mut unbound = Vec::new();
        for (index, name) in regex.capture_names().enumerate() {
            let Some(n) = name.and_then(capture_number) else {
                continue;
            };
            // Gluu loaded a `PCn` past its `??` and never let it pass: so
            // here, with a warning (its documented `/posts/??` example has one).
            if captures.cut_at_multi && n > captures.available {
                groups.push((index, None));
                unbound.push(name.unwrap_or_default().to_string());
                continue;
            }
            if n == 0 || n > captures.available {
                return Err(PolicyError::CaptureOutOfRange {
                    rule: rule.to_string(),
                    scope: text.to_string(),
                    group: name.unwrap_or_default().to_string(),
                    captures: captures.available,
                });
            }
            groups.push((index, Some(n - 1)));
        }
        Ok(Scope::Pattern(ScopePattern {
            source: text.to_string(),
            // A scope that is never satisfied is no hint.
            template: template(text).filter(|_| unbound.is_empty()),
            prefix: literal_prefix(text),
            regex,
            groups,
            unbound,
        }))
    }

    /// The `PCn` groups that name a capture the path does not make (Gluu's
    /// format past its `??`): the scope is never satisfied.
    pub(crate) fn unbound(&self) -> &[String] {
        match self {
            Scope::Plain(_) => &[],
            Scope::Pattern(p) => &p.unbound,
        }
    }

    /// The source as written.
    pub(crate) fn text(&self) -> &str {
        match self {
            Scope::Plain(p) => p,
            Scope::Pattern(p) => &p.source,
        }
    }

    pub(super) fn granted(&self, scopes: &[String], captures: &[Capture<'_>]) -> bool {
        match self {
            Scope::Plain(p) => scopes.iter().any(|s| s == p),
            Scope::Pattern(p) => scopes.iter().any(|s| p.accepts(s, captures)),
        }
    }

    pub(super) fn hint(&self, captures: &[Capture<'_>]) -> String {
        match self {
            Scope::Plain(p) => p.clone(),
            Scope::Pattern(p) => p.fill(captures).unwrap_or_else(|| p.source.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::policy::expr::tests::{caps, logic, strings};
    use serde_json::json;

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
        let limit = Captures::up_to;
        for (scope, captures, want) in cases {
            let err = Scope::compile(scope, limit(*captures), "r").unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{scope}: {err:?}");
        }
        assert!(Scope::compile("^t:(?<PC2>.+)$", limit(2), "r").is_ok());
        assert!(Scope::compile("^t:(?<other>.+)$", limit(0), "r").is_ok());
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
        for (granted, path, want) in cases {
            assert_eq!(
                check.allows(&strings(granted), &caps(path)),
                *want,
                "{granted:?} {path:?}"
            );
        }
        let p_spelling = logic(json!({"var": 0}), &["^t:(?P<PC2>.+)$"], 2);
        assert!(p_spelling.allows(&strings(&["t:b"]), &caps(&["a", "b"])));
        assert!(!p_spelling.allows(&strings(&["t:a"]), &caps(&["a", "b"])));
        let no_groups = logic(json!({"var": 0}), &["^posts:.+$"], 0);
        assert!(no_groups.allows(&strings(&["posts:1"]), &[]));
        assert!(!no_groups.allows(&strings(&["posts:"]), &[]));
        // An absent capture (a regex group that took no part) satisfies
        // nothing, not even an optional scope group that is absent too.
        let optional = logic(json!({"var": 0}), &["^t:x(?<PC1>y)?$"], 1);
        assert!(!optional.allows(&strings(&["t:x"]), &[None]));
        assert!(!optional.allows(&strings(&["t:xy"]), &[None]));
        assert!(optional.allows(&strings(&["t:xy"]), &[Some("y")]));
        assert_eq!(optional.required(&[None]), strings(&["^t:x(?<PC1>y)?$"]));
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
