//! The request target as the filter judges and forwards it.
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

use std::fmt;

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
pub(crate) fn check_segment_end(segment: &str) -> Result<(), PathError> {
    if segment.ends_with('.') || segment.ends_with("%20") {
        Err(PathError::TrailingDotOrSpace)
    } else {
        Ok(())
    }
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
pub(crate) fn normalize_segment(raw: &str, out: &mut String) -> Result<(), PathError> {
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
}
