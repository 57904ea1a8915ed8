//! Request path normalisation, path patterns and the segment-trie matcher.
//!
//! # Normalisation
//!
//! [`normalize_target`] turns the raw `:path` into the one spelling that
//! patterns are compared against, so that no two spellings of the same resource
//! can be routed to different rules, and into the request target to forward, so
//! that the upstream gets the path that was judged:
//!
//! 1. everything from the first `?` (query) on is not part of the path; a `#`
//!    is an error (a fragment is never part of a request target, and Envoy
//!    refuses it by default);
//! 2. the rest must start with `/`;
//! 3. each segment is percent-decoded for the unreserved characters only
//!    (`A-Z a-z 0-9 - . _ ~`); every other `%XX` stays encoded with its hex
//!    upper-cased (`%2f` is not decoded, `%c3%a9` becomes `%C3%A9`); a `%` not
//!    followed by two hex digits is an error;
//! 4. `%2F`, `%5C` (encoded `/` and `\`), `%00`, a raw NUL, a raw backslash and
//!    any other raw control character are errors: the upstream may decode them
//!    into a path separator or terminator that we never saw; so are `;` and
//!    `%3B`: Java servers (Tomcat, Spring) strip `;` path parameters, so
//!    `/admin;x/secret` would be `/admin/secret` to them;
//! 5. raw bytes that are not allowed in a path segment (non-ASCII, space,
//!    `"<>[]^{|}` and backtick) are percent-encoded, so that `/café` and
//!    `/caf%C3%A9` are the same path;
//! 6. empty segments (`//` runs) and `.` segments are dropped, `..` removes the
//!    previous segment and is an error at the root (including `%2e%2e`, which
//!    step 3 has already decoded); any other segment ending in `.` or in a space
//!    (`%20`) is an error, since Windows servers (IIS) strip those, so
//!    `/admin./secret` would be `/admin/secret` to them;
//! 7. the judged path is `/` followed by the segments joined with `/`: it always
//!    starts with `/` and never ends with one, except the root `/` itself. The
//!    forwarded path is the same plus a trailing `/` when the raw path ended in
//!    `/`, `/.` or `/..` (as Envoy's `normalize_path` and `merge_slashes` keep
//!    it): many servers route `/x/` and `/x` differently, and an upstream that
//!    redirects one to the other must not be sent into a loop. The policy
//!    never tells them apart.
//!
//! So `/a/../admin`, `/a/%2e%2e/admin` and `//admin?x=1` are all judged as
//! `/admin`. Matching compares these normalised segments byte for byte
//! (case-sensitively, as Envoy's routes do), and path captures are these
//! normalised segments.
//!
//! # Patterns
//!
//! A pattern is split on `/` (not inside `{}`), with empty segments dropped as in
//! requests. Each segment is one of:
//!
//! * a literal, normalised like a request segment (`.`/`..` are refused);
//! * `?`: exactly one segment, captured;
//! * `{name}` where name is `[A-Za-z_][A-Za-z0-9_]*`: the same as `?`;
//! * `{regex}`: one segment that the regex matches as a whole, captured; a
//!   leading `^` and trailing `$` are stripped and the regex is wrapped as
//!   `^(?:regex)$`, so `{[0-9]+}` does not match `abc123x`;
//! * `??`: zero or more segments, at most one per pattern, captured as the
//!   segments it consumed joined by `/` (empty when none). So `/x/??` matches
//!   `/x`, `/x/y` and `/x/y/z` (capturing ``, `y`, `y/z`), and Gluu's
//!   `/posts/??` with `^posts:(?<PC1>.+)$` needs `posts:1` for `/posts/1`.
//!
//! Captures are numbered `PC1`, `PC2`, … left to right.
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
use std::fmt;

use regex_lite::Regex;

use super::PolicyError;

/// Why a request path cannot be matched against the policy. The request should
/// be refused: an upstream may interpret such a path differently from us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// The path (before any query) does not start with `/`, e.g. `*` or a full URL.
    NotAbsolute,
    /// A raw NUL or `%00`.
    Nul,
    /// A raw control character other than NUL (its byte value).
    ControlChar(u8),
    /// A raw `\`, which some servers treat as `/`.
    Backslash,
    /// `%2F` or `%2f`: a `/` hidden from segment matching.
    EncodedSlash,
    /// `%5C` or `%5c`: a `\` hidden from segment matching.
    EncodedBackslash,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// A `..` segment that would climb above `/`.
    AboveRoot,
    /// A `;` or `%3B`: servers such as Tomcat strip `;` path parameters
    /// (`/admin;x/secret` is `/admin/secret` to them, `..;x` is `..`).
    PathParameters,
    /// A segment ending in `.` or a space, which Windows servers strip.
    TrailingDotOrSpace,
    /// A `#`: a fragment is never part of a request target.
    Fragment,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::NotAbsolute => f.write_str("path does not start with `/`"),
            PathError::Nul => f.write_str("path contains a NUL byte"),
            PathError::ControlChar(b) => write!(f, "path contains control character 0x{b:02X}"),
            PathError::Backslash => f.write_str("path contains a backslash"),
            PathError::EncodedSlash => f.write_str("path contains an encoded slash (%2F)"),
            PathError::EncodedBackslash => f.write_str("path contains an encoded backslash (%5C)"),
            PathError::BadPercentEncoding => {
                f.write_str("path contains `%` not followed by two hex digits")
            }
            PathError::AboveRoot => f.write_str("path has a `..` segment above the root"),
            PathError::PathParameters => f.write_str("path contains `;` (path parameters)"),
            PathError::TrailingDotOrSpace => {
                f.write_str("path has a segment ending in `.` or a space")
            }
            PathError::Fragment => f.write_str("path contains `#` (a fragment)"),
        }
    }
}

impl std::error::Error for PathError {}

/// A request path after [`normalize_target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalTarget {
    /// What patterns are matched against.
    pub path: String,
    trailing_slash: bool,
}

impl NormalTarget {
    /// The path to send upstream: the judged path, with the raw path's
    /// trailing `/` kept (see the module documentation, step 7).
    pub fn forwarded_path(&self) -> String {
        if self.trailing_slash && self.path != "/" {
            format!("{}/", self.path)
        } else {
            self.path.clone()
        }
    }
}

/// Normalises a request `:path` (query included) as described in the module
/// documentation.
pub fn normalize_target(raw: &str) -> Result<NormalTarget, PathError> {
    let end = raw.find('?').unwrap_or(raw.len());
    let path = raw.get(..end).unwrap_or(raw);
    if raw.contains('#') {
        return Err(PathError::Fragment);
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Built in place: each segment is appended as `/segment`, then dropped
    // again (`.`, empty) or dropped with its predecessor (`..`).
    let mut out = String::with_capacity(path.len());
    let mut trailing_slash = false;
    for raw_segment in path.split('/').skip(1) {
        let start = out.len();
        out.push('/');
        normalize_segment(raw_segment, &mut out)?;
        // A path ending in an empty or dot segment ends in `/` once resolved
        // (`/a/b/..` is `/a/`, RFC 3986 §5.2.4).
        trailing_slash = true;
        match out.get(start + 1..).unwrap_or_default() {
            "" | "." => out.truncate(start),
            ".." => {
                out.truncate(start);
                let previous = out.rfind('/').ok_or(PathError::AboveRoot)?;
                out.truncate(previous);
            }
            segment => {
                check_segment_end(segment)?;
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(NormalTarget {
        path: out,
        trailing_slash,
    })
}

/// The judged path of [`normalize_target`].
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    normalize_target(raw).map(|target| target.path)
}

/// Step 6 for a normalised segment other than `.` and `..`.
fn check_segment_end(segment: &str) -> Result<(), PathError> {
    if segment.ends_with('.') || segment.ends_with("%20") {
        Err(PathError::TrailingDotOrSpace)
    } else {
        Ok(())
    }
}

/// Splits an already normalised path into its segments.
pub(crate) fn split_path(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters RFC 3986 allows raw in a segment besides unreserved, `%` and
/// `;` (refused before this is asked).
fn is_raw_allowed(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_encoded(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    for nibble in [b >> 4, b & 0x0f] {
        if let Some(&h) = HEX.get(usize::from(nibble)) {
            out.push(char::from(h));
        }
    }
}

/// Appends one segment (no `/` inside), per steps 3–5 of the module
/// documentation. The output is always ASCII.
fn normalize_segment(raw: &str, out: &mut String) -> Result<(), PathError> {
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = bytes.next().and_then(hex_value);
                let lo = bytes.next().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadPercentEncoding);
                };
                let decoded = (hi << 4) | lo;
                match decoded {
                    0 => return Err(PathError::Nul),
                    b';' => return Err(PathError::PathParameters),
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    d if is_unreserved(d) => out.push(char::from(d)),
                    d => push_encoded(out, d),
                }
            }
            0 => return Err(PathError::Nul),
            b';' => return Err(PathError::PathParameters),
            b'\\' => return Err(PathError::Backslash),
            b if b.is_ascii_control() => return Err(PathError::ControlChar(b)),
            b if is_raw_allowed(b) => out.push(char::from(b)),
            b => push_encoded(out, b),
        }
    }
    Ok(())
}

/// One compiled pattern segment.
#[derive(Debug, Clone)]
pub(crate) enum Seg {
    Literal(String),
    /// `source` is the regex as written minus `^`/`$`: equal sources share a trie node.
    Regex {
        source: String,
        regex: Regex,
    },
    Single,
    Multi,
}

/// A parsed path pattern.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    pub(crate) segments: Vec<Seg>,
    pub(crate) captures: usize,
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
                captures += 1;
                Seg::Multi
            }
            "?" => {
                captures += 1;
                Seg::Single
            }
            _ => {
                if let Some(inner) = braced(part) {
                    captures += 1;
                    if inner.is_empty() {
                        return Err(bad(part, "empty `{}`"));
                    }
                    if is_identifier(inner) {
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
                        Seg::Regex { source, regex }
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
    Ok(Pattern { segments, captures })
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
    node: Node,
}

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
    ) -> Option<(T, Vec<&'p str>)> {
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
        Seg::Regex { source, regex } => {
            for child in node.regex.iter_mut() {
                if child.source == source {
                    return insert(&mut child.node, rest, value);
                }
            }
            let mut child = RegexChild {
                source,
                regex,
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
    captures: Vec<&'p str>,
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
                if child.regex.is_match(segment) {
                    if let Some(found) = self.captured(&child.node, pos, segment) {
                        return Some(found);
                    }
                }
            }
            if let Some(child) = &node.single {
                if let Some(found) = self.captured(child, pos, segment) {
                    return Some(found);
                }
            }
        } else if let Some(value) = node.terminal {
            if let Some(found) = (self.accept)(value) {
                return Some(found);
            }
        }
        if let Some(child) = &node.multi {
            for next in pos..=self.segments.len() {
                self.captures.push(self.span(pos, next));
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

    fn captured(&mut self, child: &Node, pos: usize, segment: &'p str) -> Option<T> {
        self.captures.push(segment);
        let found = self.node(child, pos + 1);
        if found.is_none() {
            self.captures.pop();
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

    /// Whether a normalised path (see [`normalize_path`]) matches any pattern.
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

    #[test]
    fn normalisation() {
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/a/b", Ok("/a/b")),
            ("/a/b/", Ok("/a/b")),
            ("/a/../admin", Ok("/admin")),
            ("/public/..;/admin", Err(PathError::PathParameters)),
            ("/public/%2e%2e;x=1/admin", Err(PathError::PathParameters)),
            ("/public/.;/admin", Err(PathError::PathParameters)),
            ("/a/b;v=1/c", Err(PathError::PathParameters)),
            ("/admin;x/secret", Err(PathError::PathParameters)),
            ("/admin%3bx/secret", Err(PathError::PathParameters)),
            ("/a?b;c", Ok("/a")),
            ("/admin./secret", Err(PathError::TrailingDotOrSpace)),
            ("/admin%2E/secret", Err(PathError::TrailingDotOrSpace)),
            ("/admin.../secret", Err(PathError::TrailingDotOrSpace)),
            ("/admin%20/secret", Err(PathError::TrailingDotOrSpace)),
            ("/a/b.", Err(PathError::TrailingDotOrSpace)),
            ("/a/.b/b.c/%20b", Ok("/a/.b/b.c/%20b")),
            ("/a/%2e%2e/admin", Ok("/admin")),
            ("/a/%2E%2E/admin", Ok("/admin")),
            ("/a/.%2e/admin", Ok("/admin")),
            ("/a/./b/.", Ok("/a/b")),
            ("/a/b/..", Ok("/a")),
            ("/a/..", Ok("/")),
            ("/%41dmin", Ok("/Admin")),
            ("/%7e%5f%2D%30", Ok("/~_-0")),
            ("//a///b//", Ok("/a/b")),
            ("//", Ok("/")),
            ("/a?x=/../..", Ok("/a")),
            ("/a/?x", Ok("/a")),
            ("/a#frag", Err(PathError::Fragment)),
            ("/a?x#frag", Err(PathError::Fragment)),
            ("/?", Ok("/")),
            ("/a%20b", Ok("/a%20b")),
            ("/a%3a%40", Ok("/a%3A%40")),
            ("/a%25", Ok("/a%25")),
            ("/a%252F", Ok("/a%252F")),
            ("/a b", Ok("/a%20b")),
            ("/caf\u{e9}", Ok("/caf%C3%A9")),
            ("/caf%c3%a9", Ok("/caf%C3%A9")),
            ("/a:b@c=e,f!$&'()*+", Ok("/a:b@c=e,f!$&'()*+")),
            ("/a/%2F/b", Err(PathError::EncodedSlash)),
            ("/a%2fb", Err(PathError::EncodedSlash)),
            ("/a%5Cb", Err(PathError::EncodedBackslash)),
            ("/a%5cb", Err(PathError::EncodedBackslash)),
            ("/a\\b", Err(PathError::Backslash)),
            ("/a%00", Err(PathError::Nul)),
            ("/a\0b", Err(PathError::Nul)),
            ("/a\tb", Err(PathError::ControlChar(9))),
            ("/a\u{7f}", Err(PathError::ControlChar(0x7f))),
            ("/a%", Err(PathError::BadPercentEncoding)),
            ("/a%4", Err(PathError::BadPercentEncoding)),
            ("/a%zz", Err(PathError::BadPercentEncoding)),
            ("/..", Err(PathError::AboveRoot)),
            ("/a/../..", Err(PathError::AboveRoot)),
            ("/%2e%2e/x", Err(PathError::AboveRoot)),
            ("a/b", Err(PathError::NotAbsolute)),
            ("*", Err(PathError::NotAbsolute)),
            ("", Err(PathError::NotAbsolute)),
            ("?/a", Err(PathError::NotAbsolute)),
            ("http://h/a", Err(PathError::NotAbsolute)),
        ];
        for (raw, want) in cases {
            let got = normalize_path(raw);
            assert_eq!(
                got.as_deref().map_err(Clone::clone),
                want.clone(),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn the_forwarded_path_keeps_a_trailing_slash() {
        // (raw, judged, forwarded)
        let cases = [
            ("/", "/", "/"),
            ("//", "/", "/"),
            ("/a/..", "/", "/"),
            ("/a", "/a", "/a"),
            ("/a/", "/a", "/a/"),
            ("/a//", "/a", "/a/"),
            ("/a/.", "/a", "/a/"),
            ("/a/b/..", "/a", "/a/"),
            ("/a/b/%2e%2e", "/a", "/a/"),
            ("/a/./b", "/a/b", "/a/b"),
            ("/x/../a/?q=/", "/a", "/a/"),
            ("/admin/x/../../health", "/health", "/health"),
            ("/caf\u{e9}/%7e", "/caf%C3%A9/~", "/caf%C3%A9/~"),
        ];
        for (raw, judged, forwarded) in cases {
            let target = normalize_target(raw).unwrap();
            assert_eq!(target.path, judged, "{raw:?}");
            assert_eq!(target.forwarded_path(), forwarded, "{raw:?}");
            // What is forwarded is judged the same way again.
            assert_eq!(normalize_path(forwarded).unwrap(), judged, "{raw:?}");
        }
    }

    #[test]
    fn path_error_messages() {
        assert_eq!(
            PathError::EncodedSlash.to_string(),
            "path contains an encoded slash (%2F)"
        );
        assert_eq!(
            PathError::AboveRoot.to_string(),
            "path has a `..` segment above the root"
        );
        assert_eq!(PathError::Nul.to_string(), "path contains a NUL byte");
    }

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
        assert_eq!(p.captures, 4);
        assert_eq!(p.canonical(), "/a/?/?/{[0-9]+}/??/b");
        assert_eq!(parse_pattern("/", "r").unwrap().canonical(), "/");
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
        assert_eq!(got, Some((1, vec!["b"])));
        let got = t.find("/a/b", |v| (v == 2).then_some(v));
        assert_eq!(got, Some((2, vec!["a/b"])));
    }
}
