//! Header names and values: the one validator for every header name in the
//! configuration, and the spelling rule that decides which incoming headers a
//! client could use to forge the ones the filter sets.

use crate::config_error::ConfigError;

/// What a configured header name is for; it decides which names are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderUse {
    /// Read from the request (a token source): any valid name.
    Read,
    /// Set on the upstream request and stripped from incoming ones.
    Upstream,
    /// Sent on the filter's own callouts (e.g. to a PDP), where an
    /// `authorization` header is the point.
    Callout,
    /// Carries the gateway's own token upstream (upstream OAuth), where
    /// `authorization` is the usual place.
    UpstreamToken,
}

/// Headers the filter must never set or strip: doing so would break framing or
/// routing, let a token choose where the request goes, erase the credential
/// being checked, or forge what Envoy itself vouches for.
const RESERVED: &[&str] = &[
    "authorization",
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "cookie",
    "expect",
    "forwarded",
    "host",
    "keep-alive",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "via",
    "x-request-id",
];
/// Headers that make a framework run a request as another method (Rails and
/// Rack, Laravel, Express's method-override, ASP.NET Core, Symfony): the
/// policy judged the request's own method, so the upstream must not see
/// them. Stripped from every request, in every spelling.
pub const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

const RESERVED_PREFIXES: &[&str] = &["x-forwarded-", "x-envoy-", "proxy-"];

/// Validates a configured header name and returns it lowercased (Envoy and
/// HTTP/2 compare names in lowercase). `field` names it in the error.
pub fn header_name(name: &str, field: &str, role: HeaderUse) -> Result<String, ConfigError> {
    let problem = |p: String| Err(ConfigError::new(field, p));
    if name.starts_with(':') {
        return problem(format!(
            "\"{name}\" is a pseudo-header; the filter cannot own it"
        ));
    }
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return problem(format!(
            "\"{name}\" is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
        ));
    }
    let lower = name.to_ascii_lowercase();
    let key = spelling_key(&lower);
    let reserved =
        RESERVED.iter().any(|r| *r == key) || RESERVED_PREFIXES.iter().any(|p| key.starts_with(p));
    let allowed = match role {
        HeaderUse::Read => true,
        HeaderUse::Upstream => !reserved,
        HeaderUse::Callout | HeaderUse::UpstreamToken => !reserved || key == "authorization",
    };
    if !allowed {
        return problem(format!(
            "\"{name}\" is reserved: the filter must not set or strip it (it carries framing, routing, credentials or Envoy's own facts)"
        ));
    }
    Ok(lower)
}

/// The name as a backend may read it: CGI/WSGI (and so most Python, PHP and
/// Ruby servers) map `x_a` and `X-A` to the same `HTTP_X_A`, so every spelling
/// with this key is the same header to them.
pub fn spelling_key(name: &str) -> String {
    spelling(name).map(char::from).collect()
}

fn spelling(name: &str) -> impl Iterator<Item = u8> + '_ {
    name.bytes().map(|b| match b {
        b'_' => b'-',
        b => b.to_ascii_lowercase(),
    })
}

/// Orders a spelling key against the key `name` would have, without making
/// that key: for a sorted list searched once per request header.
pub fn cmp_spelling(key: &str, name: &str) -> std::cmp::Ordering {
    key.bytes().cmp(spelling(name))
}

/// Whether `value` can be sent as a header value: no control characters
/// (CR, LF and NUL would split or truncate the header; Envoy answers 503 to
/// any of them), tab excepted.
pub fn is_header_value(value: &str) -> bool {
    !value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn names_are_lowercased_and_reserved_ones_refused_in_every_spelling() {
        assert_eq!(
            header_name("X-Jwt-Sub", "f", HeaderUse::Upstream).unwrap(),
            "x-jwt-sub"
        );
        for reserved in [
            "host",
            "Content-Length",
            "content_length",
            "authorization",
            "x-forwarded-for",
            "X_Forwarded_Proto",
            "x-envoy-original-path",
            "x-request-id",
            ":path",
            "transfer-encoding",
        ] {
            let e =
                header_name(reserved, "forward.payload_header", HeaderUse::Upstream).unwrap_err();
            assert_eq!(e.field, "forward.payload_header");
        }
        assert!(header_name("authorization", "f", HeaderUse::Read).is_ok());
        assert!(header_name("authorization", "f", HeaderUse::Callout).is_ok());
        assert!(header_name("host", "f", HeaderUse::Callout).is_err());
        assert!(header_name("bad header", "f", HeaderUse::Read).is_err());
        assert!(header_name("", "f", HeaderUse::Read).is_err());
    }

    #[test]
    fn spellings_that_a_cgi_server_merges_share_a_key() {
        assert_eq!(
            spelling_key("x_authenticated_scope"),
            "x-authenticated-scope"
        );
        assert_eq!(
            spelling_key("X-Authenticated_Scope"),
            "x-authenticated-scope"
        );
        assert_ne!(
            spelling_key("x-authenticated-scopes"),
            "x-authenticated-scope"
        );
    }

    #[test]
    fn control_characters_are_not_header_values() {
        assert!(is_header_value("alice\tsmith é"));
        for bad in ["a\r\nx-admin: 1", "a\nb", "a\0", "a\x7f", "a\x1b"] {
            assert!(!is_header_value(bad), "{bad:?}");
        }
    }
}
