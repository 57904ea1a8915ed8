//! Path patterns and the segment-trie matcher.
//!
//! Requests are matched in the form [`crate::request::normalize_target`]
//! gives them (see `request.rs` for the normalisation).
//!
//! # Patterns
//!
//! A pattern is split on `/` (not inside `{}`), with empty segments dropped as in
//! requests. Each segment is one of:
//!
//! * a literal, normalised like a request segment (`.`/`..` are refused);
//! * `?`: exactly one segment, captured;
//! * `{name}` where name is `[A-Za-z_][A-Za-z0-9_]*`: the same as `?`;
//! * `{regex}`: one segment that the regex matches as a whole; a leading `^`
//!   and trailing `$` are stripped and the regex is wrapped as `^(?:regex)$`,
//!   so `{[0-9]+}` does not match `abc123x` (Gluu matched unanchored, which
//!   was a bug);
//! * `??`: zero or more segments, at most one per pattern. So `/x/??` matches
//!   `/x`, `/x/y` and `/x/y/z`.
//!
//! # Captures
//!
//! Captures are numbered `PC1`, `PC2`, … left to right, as Gluu documented:
//! `?` and `{name}` capture their segment; `{regex}` captures one value per
//! capture group of the regex (`(?:…)` is not a capture group), or the whole
//! segment if it has none. So `/todos/?/command/{^(\d\d\d)-([a-d]{4})$}`
//! on `/todos/hh/command/123-abcd` captures `hh`, `123`, `abcd`. A group that
//! did not take part in the match (`b` in `{(a)|(b)}` on `a`) keeps its number
//! and is *absent*: a scope that names it is never satisfied.
//!
//! `??` captures the segments it consumed joined by `/` (empty when none), so
//! `/x/??` captures ``, `y`, `y/z` above. Gluu's format gives no capture for
//! `??` nor for anything after it; since those come last, Gluu's numbering is
//! this numbering cut at the `??` ([`Pattern::gluu_captures`]), and the walk
//! records the same captures for both formats.
//!
//! # Match order
//!
//! All patterns are compiled into one trie of segments. A request is matched by
//! a depth-first walk over its segments, left to right. At each trie node the
//! candidates for the next request segment are tried in this order:
//!
//! 1. the literal child equal to the segment;
//! 2. each `{regex}` child matching the segment, in the order the patterns were
//!    declared (different regexes at the same position should not overlap);
//! 3. the `?` / `{name}` child;
//! 4. the `??` child, consuming 0, 1, 2, … segments, fewest first.
//!
//! When the request segments run out, the node's own pattern is tried before a
//! `??` child consuming nothing (so `/x` beats `/x/??` for `/x`).
//!
//! A pattern that matches the whole path is accepted only if the caller's
//! `accept` check passes (for a policy: the pattern has a condition for the
//! request method); otherwise, and whenever a branch dead-ends further down, the
//! walk backtracks to the next candidate. The first accepted pattern wins. This
//! makes the winner the most specific pattern, comparing segment by segment from
//! the left, for example:
//!
//! * `/a/b/c` beats `/a/?/c` for `/a/b/c`;
//! * with `/a/b/c` and `/a/?/d`, `/a/b/d` matches `/a/?/d` (the literal `b`
//!   branch dead-ends, so the walk backtracks to `?`);
//! * with `/??` and `/posts`, `/posts/1` matches `/??`;
//! * with `GET /x/?` and `POST /x/{[0-9]+}`, `GET /x/1` matches `/x/?`.
//!
//! Each trie node is visited at most once per starting position of a `??`, and
//! a pattern has at most one `??`, so the walk is bounded by (trie nodes) ×
//! (request segments) regex tests in the worst case and is typically a handful
//! of hash lookups.

use std::collections::HashMap;

use regex_lite::Regex;

use super::PolicyError;
use crate::request::{check_segment_end, normalize_segment};

/// Splits an already normalised path into its segments.
pub(crate) fn split_path(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// One compiled pattern segment.
#[derive(Debug, Clone)]
pub(crate) enum Seg {
    Literal(String),
    /// `source` is the regex as written minus `^`/`$`: equal sources share a trie node.
    Regex {
        source: String,
        regex: Regex,
        /// Its capture groups (0: the whole segment is the capture).
        groups: usize,
    },
    Single,
    Multi,
}

/// A parsed path pattern.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    pub(crate) segments: Vec<Seg>,
    /// How many captures a match makes (see the module documentation).
    pub(crate) captures: usize,
    /// How many of them Gluu's format numbers: those before a `??`.
    pub(crate) gluu_captures: usize,
    /// Whether the pattern has a `??`.
    pub(crate) multi: bool,
}

impl Pattern {
    /// Whether some path matches both patterns. Two regex segments are taken
    /// to overlap (regexes are not intersected), so this may say yes where no
    /// path exists; it never says no where one does.
    pub(crate) fn may_overlap(&self, other: &Pattern) -> bool {
        let (a, b) = (&self.segments, &other.segments);
        let mut dead_ends = vec![false; (a.len() + 1) * (b.len() + 1)];
        overlap(a, b, 0, 0, &mut dead_ends)
    }

    /// A spelling that is equal for two patterns exactly when they match the
    /// same paths segment for segment (`{id}` and `?` are the same).
    pub(crate) fn canonical(&self) -> String {
        let mut out = String::new();
        for seg in &self.segments {
            out.push('/');
            match seg {
                Seg::Literal(s) => out.push_str(s),
                Seg::Regex { source, .. } => {
                    out.push('{');
                    out.push_str(source);
                    out.push('}');
                }
                Seg::Single => out.push('?'),
                Seg::Multi => out.push_str("??"),
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }
}

/// Whether `a[i..]` and `b[j..]` match a common path; `dead_ends` remembers
/// the `(i, j)` already found not to, so the walk is O(|a|·|b|).
fn overlap(a: &[Seg], b: &[Seg], i: usize, j: usize, dead_ends: &mut [bool]) -> bool {
    let slot = i * (b.len() + 1) + j;
    if dead_ends.get(slot).copied().unwrap_or(true) {
        return false;
    }
    let found = match (a.get(i), b.get(j)) {
        (None, None) => true,
        (Some(Seg::Multi), _) => {
            overlap(a, b, i + 1, j, dead_ends)
                || (j < b.len() && overlap(a, b, i, j + 1, dead_ends))
        }
        (_, Some(Seg::Multi)) => {
            overlap(a, b, i, j + 1, dead_ends)
                || (i < a.len() && overlap(a, b, i + 1, j, dead_ends))
        }
        (Some(x), Some(y)) => segments_overlap(x, y) && overlap(a, b, i + 1, j + 1, dead_ends),
        _ => false,
    };
    if !found {
        if let Some(d) = dead_ends.get_mut(slot) {
            *d = true;
        }
    }
    found
}

fn segments_overlap(x: &Seg, y: &Seg) -> bool {
    match (x, y) {
        (Seg::Literal(p), Seg::Literal(q)) => p == q,
        (Seg::Literal(l), Seg::Regex { regex, .. })
        | (Seg::Regex { regex, .. }, Seg::Literal(l)) => regex.is_match(l),
        _ => true,
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits on `/` outside braces, so `{[^/]+}` or `{a{2}}` stay one segment.
fn split_pattern<'p>(pattern: &'p str, rule: &str) -> Result<Vec<&'p str>, PolicyError> {
    let unbalanced = || PolicyError::BadPathSegment {
        rule: rule.to_string(),
        segment: pattern.to_string(),
        problem: "unbalanced `{` `}`".to_string(),
    };
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut escaped = false;
    let mut start = 0usize;
    for (i, c) in pattern.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if depth > 0 => escaped = true,
            '{' => depth += 1,
            '}' => depth = depth.checked_sub(1).ok_or_else(unbalanced)?,
            '/' if depth == 0 => {
                parts.push(pattern.get(start..i).unwrap_or_default());
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(unbalanced());
    }
    parts.push(pattern.get(start..).unwrap_or_default());
    Ok(parts)
}

/// The inside of `{...}` if the whole segment is one braced group.
fn braced(segment: &str) -> Option<&str> {
    let inner = segment.strip_prefix('{')?.strip_suffix('}')?;
    let mut depth = 0usize;
    let mut escaped = false;
    for c in inner.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '{' => depth += 1,
            '}' => depth = depth.checked_sub(1)?,
            _ => {}
        }
    }
    (depth == 0).then_some(inner)
}

/// Removes the user's own anchors; a `$` preceded by an odd number of
/// backslashes is a literal dollar and stays.
pub(crate) fn strip_anchors(regex: &str) -> &str {
    let body = regex.strip_prefix('^').unwrap_or(regex);
    match body.strip_suffix('$') {
        Some(rest) if rest.chars().rev().take_while(|&c| c == '\\').count() % 2 == 0 => rest,
        _ => body,
    }
}

/// Parses a path pattern. `rule` names it in errors.
pub(crate) fn parse_pattern(pattern: &str, rule: &str) -> Result<Pattern, PolicyError> {
    if pattern.is_empty() {
        return Err(PolicyError::EmptyPath {
            rule: rule.to_string(),
        });
    }
    if !pattern.starts_with('/') {
        return Err(PolicyError::PathNotAbsolute {
            rule: rule.to_string(),
        });
    }
    let bad = |segment: &str, problem: &str| PolicyError::BadPathSegment {
        rule: rule.to_string(),
        segment: segment.to_string(),
        problem: problem.to_string(),
    };
    let mut segments = Vec::new();
    let mut captures = 0usize;
    let mut gluu_captures = None;
    let mut seen_multi = false;
    for part in split_pattern(pattern, rule)? {
        let seg = match part {
            "" => continue,
            "??" => {
                if seen_multi {
                    return Err(PolicyError::MultipleMultiSegment {
                        rule: rule.to_string(),
                    });
                }
                seen_multi = true;
                gluu_captures = Some(captures);
                captures += 1;
                Seg::Multi
            }
            "?" => {
                captures += 1;
                Seg::Single
            }
            _ => {
                if let Some(inner) = braced(part) {
                    if inner.is_empty() {
                        return Err(bad(part, "empty `{}`"));
                    }
                    if is_identifier(inner) {
                        captures += 1;
                        Seg::Single
                    } else {
                        let source = strip_anchors(inner).to_string();
                        let bad_regex = |e: regex_lite::Error| PolicyError::BadPathRegex {
                            rule: rule.to_string(),
                            regex: inner.to_string(),
                            error: e.to_string(),
                        };
                        // Alone first: `a)|(b` is only valid once wrapped, and
                        // wrapped it would escape the anchors.
                        Regex::new(&source).map_err(bad_regex)?;
                        let regex = Regex::new(&format!("^(?:{source})$")).map_err(bad_regex)?;
                        // The wrapper adds no group; group 0 is the whole match.
                        let groups = regex.captures_len().saturating_sub(1);
                        captures += groups.max(1);
                        Seg::Regex {
                            source,
                            regex,
                            groups,
                        }
                    }
                } else if part.contains(['{', '}']) {
                    return Err(bad(part, "`{...}` must be a whole segment"));
                } else if part.contains('?') {
                    return Err(bad(part, "`?` and `??` must be a whole segment"));
                } else {
                    let mut literal = String::new();
                    normalize_segment(part, &mut literal).map_err(|e| bad(part, &e.to_string()))?;
                    if literal == "." || literal == ".." {
                        return Err(bad(part, "dot segments are not allowed in patterns"));
                    }
                    // A request with such a segment is refused, so the
                    // pattern could never match.
                    check_segment_end(&literal).map_err(|e| bad(part, &e.to_string()))?;
                    Seg::Literal(literal)
                }
            }
        };
        segments.push(seg);
    }
    Ok(Pattern {
        segments,
        captures,
        gluu_captures: gluu_captures.unwrap_or(captures),
        multi: seen_multi,
    })
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<String, Node>,
    regex: Vec<RegexChild>,
    single: Option<Box<Node>>,
    multi: Option<Box<Node>>,
    /// The value of the pattern ending here.
    terminal: Option<usize>,
}

#[derive(Debug)]
struct RegexChild {
    source: String,
    regex: Regex,
    groups: usize,
    node: Node,
}

/// One path capture: `None` for a regex group that took no part in the match.
pub(crate) type Capture<'p> = Option<&'p str>;

/// Patterns compiled into a segment trie; each pattern carries a `usize` value
/// (an index into the caller's rules).
#[derive(Debug, Default)]
pub(crate) struct Trie {
    root: Node,
}

impl Trie {
    /// Adds a pattern. If the same pattern is already present, returns the value
    /// stored for it and changes nothing.
    pub(crate) fn insert(&mut self, pattern: Pattern, value: usize) -> Result<(), usize> {
        insert(&mut self.root, pattern.segments.into_iter(), value)
    }

    /// Finds the first pattern, in the order documented at the top of this
    /// module, that matches `segments` and for whose value `accept` returns
    /// `Some`. Returns that and the captured segments.
    pub(crate) fn find<'p, T>(
        &self,
        path: &'p str,
        accept: impl FnMut(usize) -> Option<T>,
    ) -> Option<(T, Vec<Capture<'p>>)> {
        let segments = split_path(path);
        let mut walk = Walk {
            path,
            segments: &segments,
            captures: Vec::new(),
            accept,
        };
        let found = walk.node(&self.root, 0)?;
        Some((found, walk.captures))
    }
}

fn insert(node: &mut Node, mut rest: std::vec::IntoIter<Seg>, value: usize) -> Result<(), usize> {
    let Some(seg) = rest.next() else {
        return match node.terminal {
            Some(existing) => Err(existing),
            None => {
                node.terminal = Some(value);
                Ok(())
            }
        };
    };
    match seg {
        Seg::Literal(s) => insert(node.literal.entry(s).or_default(), rest, value),
        Seg::Single => insert(node.single.get_or_insert_with(Box::default), rest, value),
        Seg::Multi => insert(node.multi.get_or_insert_with(Box::default), rest, value),
        Seg::Regex {
            source,
            regex,
            groups,
        } => {
            for child in node.regex.iter_mut() {
                if child.source == source {
                    return insert(&mut child.node, rest, value);
                }
            }
            let mut child = RegexChild {
                source,
                regex,
                groups,
                node: Node::default(),
            };
            insert(&mut child.node, rest, value)?;
            node.regex.push(child);
            Ok(())
        }
    }
}

struct Walk<'s, 'p, F> {
    path: &'p str,
    segments: &'s [&'p str],
    captures: Vec<Capture<'p>>,
    accept: F,
}

impl<'p, T, F: FnMut(usize) -> Option<T>> Walk<'_, 'p, F> {
    fn node(&mut self, node: &Node, pos: usize) -> Option<T> {
        if let Some(&segment) = self.segments.get(pos) {
            if let Some(child) = node.literal.get(segment) {
                if let Some(found) = self.node(child, pos + 1) {
                    return Some(found);
                }
            }
            for child in &node.regex {
                if let Some(found) = self.regex(child, pos, segment) {
                    return Some(found);
                }
            }
            if let Some(child) = &node.single {
                self.captures.push(Some(segment));
                if let Some(found) = self.node(child, pos + 1) {
                    return Some(found);
                }
                self.captures.pop();
            }
        } else if let Some(value) = node.terminal {
            if let Some(found) = (self.accept)(value) {
                return Some(found);
            }
        }
        if let Some(child) = &node.multi {
            for next in pos..=self.segments.len() {
                self.captures.push(Some(self.span(pos, next)));
                if let Some(found) = self.node(child, next) {
                    return Some(found);
                }
                self.captures.pop();
            }
        }
        None
    }

    /// The text of segments `from..to` as one capture (`""` when empty). The
    /// segments are slices of `path`, so the text from the first to the last
    /// is one slice of it too, separators included.
    fn span(&self, from: usize, to: usize) -> &'p str {
        let (Some(first), Some(last)) = (
            self.segments.get(from),
            to.checked_sub(1).and_then(|i| self.segments.get(i)),
        ) else {
            return "";
        };
        if to <= from {
            return "";
        }
        let base = self.path.as_ptr() as usize;
        let start = (first.as_ptr() as usize).wrapping_sub(base);
        let end = (last.as_ptr() as usize)
            .wrapping_sub(base)
            .saturating_add(last.len());
        self.path.get(start..end).unwrap_or("")
    }

    /// Tries a `{regex}` child; its captures are its groups, or the segment.
    fn regex(&mut self, child: &RegexChild, pos: usize, segment: &'p str) -> Option<T> {
        let before = self.captures.len();
        if child.groups == 0 {
            if !child.regex.is_match(segment) {
                return None;
            }
            self.captures.push(Some(segment));
        } else {
            let found = child.regex.captures(segment)?;
            self.captures
                .extend((1..=child.groups).map(|g| found.get(g).map(|m| m.as_str())));
        }
        let found = self.node(&child.node, pos + 1);
        if found.is_none() {
            self.captures.truncate(before);
        }
        found
    }
}

/// A set of path patterns without methods or scopes (for public and anonymous
/// paths). Same pattern syntax and normalisation as policy rules.
#[derive(Debug, Default)]
pub struct PathSet {
    trie: Trie,
    len: usize,
    patterns: Vec<(String, Pattern)>,
}

impl PathSet {
    /// Compiles the patterns; a pattern listed twice is accepted once.
    pub fn compile(patterns: &[String]) -> Result<PathSet, PolicyError> {
        let mut set = PathSet::default();
        for pattern in patterns {
            let parsed = parse_pattern(pattern, pattern)?;
            set.patterns.push((pattern.clone(), parsed.clone()));
            if set.trie.insert(parsed, set.len).is_ok() {
                set.len += 1;
            }
        }
        Ok(set)
    }

    /// Whether a normalised path (see [`crate::request::normalize_path`])
    /// matches any pattern.
    pub fn matches(&self, path: &str) -> bool {
        self.trie.find(path, |_| Some(())).is_some()
    }

    pub(crate) fn patterns(&self) -> &[(String, Pattern)] {
        &self.patterns
    }

    /// The number of distinct patterns.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn set(patterns: &[&str]) -> PathSet {
        let owned: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        PathSet::compile(&owned).unwrap()
    }

    #[test]
    fn path_set_matching() {
        // (patterns, path, matches)
        let cases: &[(&[&str], &str, bool)] = &[
            (&["/"], "/", true),
            (&["/"], "/a", false),
            (&["/??"], "/", true),
            (&["/??"], "/a/b/c", true),
            (&["/x/??"], "/x", true),
            (&["/x/??"], "/x/y/z", true),
            (&["/x/??"], "/xy", false),
            (&["/x/??/z"], "/x/z", true),
            (&["/x/??/z"], "/x/a/b/z", true),
            (&["/x/??/z"], "/x/a/b/z/q", false),
            (&["/a/?"], "/a", false),
            (&["/a/?"], "/a/b", true),
            (&["/a/?"], "/a/b/c", false),
            (&["/a/{id}"], "/a/b", true),
            (&["/a/{id}/c"], "/a/b/c", true),
            (&["/a/{[0-9]+}"], "/a/123", true),
            (&["/a/{[0-9]+}"], "/a/abc123x", false),
            (&["/a/{^[0-9]+$}"], "/a/123", true),
            (&["/a/{^[0-9]+$}"], "/a/12a", false),
            (&["/a/{[0-9]{2}}"], "/a/12", true),
            (&["/a/{[0-9]{2}}"], "/a/123", false),
            (&["/a/{x|y}"], "/a/xy", false),
            (&["/a/{x|y}"], "/a/y", true),
            (&["/a/{[^/]+}"], "/a/q", true),
            (&["/a/{\\$}"], "/a/$", true),
            (&["/a/{a\\}}"], "/a/a%7D", false),
            (&["/a/{a%7D|a\\}}"], "/a/a%7D", true),
            (&["/a/b/"], "/a/b", true),
            (&["//a//b"], "/a/b", true),
            (&["/%41"], "/A", true),
            (&["/a%2d"], "/a-", true),
            (&["/caf%c3%a9"], "/caf%C3%A9", true),
            (&["/Admin"], "/admin", false),
            (&[], "/", false),
        ];
        for (patterns, path, want) in cases {
            assert_eq!(set(patterns).matches(path), *want, "{patterns:?} {path}");
        }
    }

    #[test]
    fn path_set_duplicates_are_merged() {
        let s = set(&["/a/?", "/a/{id}", "/a/?/"]);
        assert_eq!(s.len(), 1);
        assert!(!s.is_empty());
    }

    #[test]
    fn pattern_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "EmptyPath"),
            ("a/b", "PathNotAbsolute"),
            ("/??/x/??", "MultipleMultiSegment"),
            ("/a/{[0-9}", "BadPathRegex"),
            ("/a/{x)|(y}", "BadPathRegex"),
            ("/a/{x\\}", "BadPathSegment"),
            ("/a/{}", "BadPathSegment"),
            ("/a/{x", "BadPathSegment"),
            ("/a/x}", "BadPathSegment"),
            ("/a/b{x}", "BadPathSegment"),
            ("/a/{x}{y}", "BadPathSegment"),
            ("/a/b?", "BadPathSegment"),
            ("/a/???", "BadPathSegment"),
            ("/a/%2F", "BadPathSegment"),
            ("/a/..", "BadPathSegment"),
            ("/a/%2e", "BadPathSegment"),
            // Requests with these are refused, so they could never match.
            ("/a;v=1/b", "BadPathSegment"),
            ("/a./b", "BadPathSegment"),
        ];
        for (pattern, want) in cases {
            let err = parse_pattern(pattern, pattern).unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{pattern}: {err:?}");
        }
    }

    #[test]
    fn captures_and_canonical() {
        let p = parse_pattern("/a/?/{id}/{^[0-9]+$}/??/b", "r").unwrap();
        assert_eq!((p.captures, p.gluu_captures, p.multi), (4, 3, true));
        assert_eq!(p.canonical(), "/a/?/?/{[0-9]+}/??/b");
        assert_eq!(parse_pattern("/", "r").unwrap().canonical(), "/");
        // (pattern, captures, Gluu's numbering): one per regex group, else one.
        let cases: &[(&str, usize, usize)] = &[
            ("/todos/?/command/{^(\\d\\d\\d)-([a-d]{4})$}", 3, 3),
            ("/images/?/{(.+)\\.(jpg|png)}", 3, 3),
            ("/comments/{\\d\\d\\d}", 1, 1),
            ("/c/{(?:a|b)c}", 1, 1),
            ("/c/{(?:a|b)(c)}", 1, 1),
            ("/c/{(?<name>a)(b)}", 2, 2),
            ("/posts/?/??", 2, 1),
            ("/users/??/?", 2, 0),
            ("/??", 1, 0),
            ("/x/{(a)}/??/{(b)(c)}", 4, 1),
        ];
        for (pattern, captures, gluu) in cases {
            let p = parse_pattern(pattern, pattern).unwrap();
            assert_eq!(
                (p.captures, p.gluu_captures),
                (*captures, *gluu),
                "{pattern}"
            );
        }
    }

    #[test]
    fn anchors() {
        assert_eq!(strip_anchors("^a$"), "a");
        assert_eq!(strip_anchors("a\\$"), "a\\$");
        assert_eq!(strip_anchors("a\\\\$"), "a\\\\");
        assert_eq!(strip_anchors("a"), "a");
    }

    fn trie(patterns: &[&str]) -> Trie {
        let mut t = Trie::default();
        for (i, p) in patterns.iter().enumerate() {
            t.insert(parse_pattern(p, p).unwrap(), i).unwrap();
        }
        t
    }

    #[test]
    fn trie_order_and_backtracking() {
        // (patterns, path, index of the winner, captures)
        type Case<'a> = (&'a [&'a str], &'a str, Option<usize>, &'a [&'a str]);
        // (Captures here all took part; `regex_group_captures` has absent ones.)
        let cases: &[Case<'_>] = &[
            (&["/??", "/posts"], "/posts/1", Some(0), &["posts/1"]),
            (&["/??", "/posts"], "/posts", Some(1), &[]),
            (&["/a/b/c", "/a/?/d"], "/a/b/d", Some(1), &["b"]),
            (&["/a/?/c", "/a/b/c"], "/a/b/c", Some(1), &[]),
            (&["/a/?", "/a/{[a-z]+}"], "/a/b", Some(1), &["b"]),
            (&["/a/?", "/a/{[a-z]+}"], "/a/1", Some(0), &["1"]),
            (&["/a/??", "/a/?"], "/a/b", Some(1), &["b"]),
            (&["/a/??", "/a/?"], "/a/b/c", Some(0), &["b/c"]),
            (&["/x/??", "/x"], "/x", Some(1), &[]),
            (&["/x/??"], "/x", Some(0), &[""]),
            (&["/??/z", "/??"], "/a/z", Some(0), &["a"]),
            (&["/??/z/?"], "/z/z/z", Some(0), &["z", "z"]),
            (
                &["/a/{[0-9]+}/b", "/a/{[0-9]+}/c"],
                "/a/1/c",
                Some(1),
                &["1"],
            ),
            (&["/a/{[0-9]+}/b", "/a/{[0-9]+}/c"], "/a/x/c", None, &[]),
            (&["/?/?/x", "/?/y/q"], "/a/y/x", Some(0), &["a", "y"]),
            (&["/?/?/q", "/?/y/?"], "/a/y/x", Some(1), &["a", "x"]),
        ];
        for (patterns, path, want, caps) in cases {
            let t = trie(patterns);
            let got = t.find(path, Some);
            match want {
                None => assert!(got.is_none(), "{patterns:?} {path}: {got:?}"),
                Some(w) => {
                    let (i, c) = got.unwrap();
                    let c: Vec<&str> = c.into_iter().map(Option::unwrap).collect();
                    assert_eq!((i, c.as_slice()), (*w, *caps), "{patterns:?} {path}");
                }
            }
        }
    }

    #[test]
    fn trie_duplicate_returns_existing() {
        let mut t = trie(&["/a/{[0-9]+}/b"]);
        let again = parse_pattern("/a/{^[0-9]+$}/b/", "r").unwrap();
        assert_eq!(t.insert(again, 7), Err(0));
    }

    #[test]
    fn accept_rejection_backtracks() {
        let t = trie(&["/a/b", "/a/?", "/??"]);
        // Pretend only pattern 1 and 2 have a condition for this method.
        let got = t.find("/a/b", |v| (v != 0).then_some(v));
        assert_eq!(got, Some((1, vec![Some("b")])));
        let got = t.find("/a/b", |v| (v == 2).then_some(v));
        assert_eq!(got, Some((2, vec![Some("a/b")])));
    }

    /// Gluu Gateway's own path tables: the "Dynamic Resource Protection"
    /// examples of its docs (docs-gg-prod `plugin/common-features.md`, all
    /// paths registered in one plugin) and its `t/specs/path-wildcard-tree`
    /// test, which adds paths one at a time. Each case has Gluu's documented
    /// winner, or ours with the reason where Gluu differs on purpose.
    #[test]
    fn gluu_path_tables() {
        let docs = [
            "/??",
            "/folder/file.ext",
            "/folder/file",
            "/folder/?/file",
            "/path/??",
            "/path/??/image.jpg",
            "/path/?/image.jpg",
            "/path/{abc|xyz}/image.jpg",
            "/users/?/{todos|photos}",
            "/users/?/{todos|photos}/?",
        ];
        let docs_cases: &[(&str, &str)] = &[
            ("/folder/file.ext", "/folder/file.ext"),
            ("/folder/file2", "/??"),
            ("/folder/file", "/folder/file"),
            ("/folder/file/123", "/??"),
            ("/folder/123/file", "/folder/?/file"),
            ("/folder/xxx/file", "/folder/?/file"),
            ("/path", "/path/??"),
            ("/path/", "/path/??"),
            ("/path/xxx", "/path/??"),
            ("/path/xxx/yyy/file", "/path/??"),
            ("/path/one/two/image.jpg", "/path/??/image.jpg"),
            ("/path/image.jpg", "/path/??/image.jpg"),
            ("/path/xxx/image.jpg", "/path/?/image.jpg"),
            ("/path/abc/image.jpg", "/path/{abc|xyz}/image.jpg"),
            ("/path/xyz/image.jpg", "/path/{abc|xyz}/image.jpg"),
            ("/users/123/todos", "/users/?/{todos|photos}"),
            ("/users/xxx/photos", "/users/?/{todos|photos}"),
            ("/users/123/todos/321", "/users/?/{todos|photos}/?"),
            ("/users/123/photos/321", "/users/?/{todos|photos}/?"),
            // Ours, not Gluu's: a trailing `/` does not make another path
            // here (Gluu matched `/folder/file/` as `/??` and let the last
            // `?` of `/users/?/{todos|photos}/?` match the empty segment).
            ("/folder/file/", "/folder/file"),
            ("/users/123/todos/", "/users/?/{todos|photos}"),
            // Ours: the regex must match the whole segment (Gluu's `abc|xyz`
            // matched `abcd` and `xxyzz`).
            ("/path/abcd/image.jpg", "/path/?/image.jpg"),
            ("/users/1/todosx", "/??"),
        ];
        let t = trie(&docs);
        for (raw, want) in docs_cases {
            let path = crate::request::normalize_path(raw).unwrap();
            let got = t.find(&path, Some).map(|(i, _)| docs[i]);
            assert_eq!(got, Some(*want), "{raw}");
        }

        // The test script: (paths added so far, request, winner).
        let script: &[(usize, &str, Option<&str>)] = &[
            (1, "/folder/file.ext", Some("/folder/file.ext")),
            (1, "/folder/file", None),
            (2, "/folder/xxx/file", Some("/folder/?/file")),
            (3, "/path/xxx/file", Some("/path/??")),
            (3, "/path/", Some("/path/??")),
            // Gluu's test said "slash is required before multiple wildcards"
            // (no match); its later docs list `/path` as matched, as here.
            (3, "/path", Some("/path/??")),
            (4, "/path/one/two/image.jpg", Some("/path/??/image.jpg")),
            (4, "/path/image.jpg", Some("/path/??/image.jpg")),
            // "ensure wildcard has a priority on multiple wildcard"
            (5, "/path/xxx/image.jpg", Some("/path/?/image.jpg")),
            (6, "/path/abc/image.jpg", Some("/path/{abc|xyz}/image.jpg")),
            (6, "/path/xyz/image.jpg", Some("/path/{abc|xyz}/image.jpg")),
            // "regexp doesn't match, wildcard does"
            (6, "/path/123/image.jpg", Some("/path/?/image.jpg")),
            (7, "/users/123/todos", Some("/users/?/{todos|photos}")),
            (9, "/users/123/todos/321", Some("/users/?/{todos|photos}/?")),
            (
                9,
                "/users/123/todos/123",
                Some("/users/?/{todos|photos}/123"),
            ),
            // Gluu: `/users/?/{todos|photos}/?` (empty last segment); ours
            // ignores the trailing `/`, as above.
            (9, "/users/123/todos/", Some("/users/?/{todos|photos}")),
        ];
        // (Gluu's script also sent each pattern itself as a request, e.g.
        // `/folder/?/file`; in a URL `?` starts the query, so that request is
        // `/folder/` here and is not repeated.)
        let added = [
            "/folder/file.ext",
            "/folder/?/file",
            "/path/??",
            "/path/??/image.jpg",
            "/path/?/image.jpg",
            "/path/{abc|xyz}/image.jpg",
            "/users/?/{todos|photos}",
            "/users/?/{todos|photos}/?",
            "/users/?/{todos|photos}/123",
        ];
        for (n, raw, want) in script {
            let patterns = added.get(..*n).unwrap();
            let path = crate::request::normalize_path(raw).unwrap();
            let got = trie(patterns).find(&path, Some).map(|(i, _)| added[i]);
            assert_eq!(got, *want, "{n} patterns, {raw}");
        }
    }

    #[test]
    fn regex_group_captures() {
        // (patterns, path, winner, captures): Gluu's documented examples first.
        type Case<'a> = (&'a [&'a str], &'a str, Option<usize>, &'a [Option<&'a str>]);
        let cases: &[Case<'_>] = &[
            (
                &["/todos/?/command/{^(\\d\\d\\d)-([a-d]{4})$}"],
                "/todos/hh/command/123-abcd",
                Some(0),
                &[Some("hh"), Some("123"), Some("abcd")],
            ),
            (
                &["/images/?/{(.+)\\.(jpg|png)}"],
                "/images/me/cat.png",
                Some(0),
                &[Some("me"), Some("cat"), Some("png")],
            ),
            // Greedy `(.+)` takes all it can, as PCRE does.
            (
                &["/images/?/{(.+)\\.(jpg|png)}"],
                "/images/me/a.b.jpg",
                Some(0),
                &[Some("me"), Some("a.b"), Some("jpg")],
            ),
            (
                &["/images/?/{(.+)\\.(jpg|png)}"],
                "/images/me/cat.gif",
                None,
                &[],
            ),
            // Anchored (Gluu was not): `abcde` is not `[a-d]{4}` as a whole.
            (
                &["/todos/?/command/{^(\\d\\d\\d)-([a-d]{4})$}"],
                "/todos/hh/command/123-abcde",
                None,
                &[],
            ),
            (
                &["/comments/{\\d\\d\\d}"],
                "/comments/123",
                Some(0),
                &[Some("123")],
            ),
            (&["/c/{(?:a|b)c}"], "/c/bc", Some(0), &[Some("bc")]),
            // A group that takes no part keeps its number and is absent
            // (Gluu's Lua took a first absent group for "no groups" and
            // captured the whole segment instead, shifting the numbers).
            (
                &["/c/{(a)|(b)}/?"],
                "/c/b/x",
                Some(0),
                &[None, Some("b"), Some("x")],
            ),
            (
                &["/c/{(a)|(b)}/?"],
                "/c/a/x",
                Some(0),
                &[Some("a"), None, Some("x")],
            ),
            (&["/c/{x(y)?}"], "/c/x", Some(0), &[None]),
            // A regex branch that dead-ends gives its captures back.
            (
                &["/r/{(a)(b)}/z", "/r/?/y"],
                "/r/ab/y",
                Some(1),
                &[Some("ab")],
            ),
            (
                &["/posts/?/??"],
                "/posts/1/a/b",
                Some(0),
                &[Some("1"), Some("a/b")],
            ),
        ];
        for (patterns, path, want, caps) in cases {
            let got = trie(patterns).find(path, Some);
            match want {
                None => assert!(got.is_none(), "{patterns:?} {path}: {got:?}"),
                Some(w) => assert_eq!(got, Some((*w, caps.to_vec())), "{patterns:?} {path}"),
            }
        }
    }
}
