//! Finding the access token in a request: the `Authorization: Bearer` header by
//! default, or a configured header, query parameter or cookie. A token offered
//! twice (two headers, or two places) is refused, as RFC 6750 §2 requires.

use std::fmt;

use crate::request::normalize_target;

/// The longest access token read: a longer JWT is refused before any
/// decoding work ([`crate::jwt`]), a longer opaque token before any callout
/// ([`crate::introspection`]).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `prefix` is an auth scheme (e.g. `Bearer`), matched case-insensitively.
    Header {
        name: String,
        prefix: Option<String>,
    },
    Query(String),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken {
    pub token: String,
    pub source: TokenSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtractError {
    Repeated(String),
    SeveralPlaces,
    BadSyntax(String),
}

impl fmt::Display for ExtractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtractError::Repeated(place) => write!(f, "the request carries more than one {place}"),
            ExtractError::SeveralPlaces => write!(
                f,
                "the request carries an access token in more than one place"
            ),
            ExtractError::BadSyntax(place) => write!(f, "the {place} is not a valid bearer token"),
        }
    }
}

/// Looks in every configured place; `headers` names are lowercase (as proxies give them).
pub fn find_token(
    sources: &[TokenSource],
    headers: &[(String, String)],
    path: &str,
) -> Result<Option<FoundToken>, ExtractError> {
    let mut found: Option<FoundToken> = None;
    for source in sources {
        let Some(token) = look(source, headers, path)? else {
            continue;
        };
        if found.is_some() {
            return Err(ExtractError::SeveralPlaces);
        }
        if !is_b64token(&token) {
            return Err(ExtractError::BadSyntax(describe(source)));
        }
        found = Some(FoundToken {
            token,
            source: source.clone(),
        });
    }
    Ok(found)
}

fn describe(source: &TokenSource) -> String {
    match source {
        TokenSource::Header { name, .. } => format!("{name} header"),
        TokenSource::Query(name) => format!("query parameter \"{name}\""),
        TokenSource::Cookie(name) => format!("cookie \"{name}\""),
    }
}

fn look(
    source: &TokenSource,
    headers: &[(String, String)],
    path: &str,
) -> Result<Option<String>, ExtractError> {
    match source {
        TokenSource::Header { name, prefix } => {
            let mut values = headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str());
            let (first, second) = (values.next(), values.next());
            // Envoy joins a repeated Authorization header into one value with
            // commas; a b64token never holds a comma, so that is a repeat too.
            let value = match (first, second) {
                (None, _) => return Ok(None),
                (Some(value), None) if !value.contains(',') => value,
                _ => return Err(ExtractError::Repeated(describe(source))),
            };
            match prefix {
                // Another scheme (e.g. Basic) is not a bearer token: not ours.
                Some(scheme) => Ok(strip_scheme(value, scheme).map(str::to_string)),
                None => Ok(Some(value.trim().to_string())),
            }
        }
        TokenSource::Query(name) => {
            let query = path.split_once('?').map_or("", |(_, q)| q);
            let query = query.split_once('#').map_or(query, |(q, _)| q);
            single(query.split('&').filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k) == *name).then(|| percent_decode(v))
            }))
            .map_err(|()| ExtractError::Repeated(describe(source)))
        }
        TokenSource::Cookie(name) => single(
            cookies(headers)
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.to_string()),
        )
        .map_err(|()| ExtractError::Repeated(describe(source))),
    }
}

fn single(mut values: impl Iterator<Item = String>) -> Result<Option<String>, ()> {
    match (values.next(), values.next()) {
        (first, None) => Ok(first),
        _ => Err(()),
    }
}

/// `Bearer <token>` with the scheme matched case-insensitively (RFC 7235 §2.1);
/// the scheme must start the value, unlike jwt_authn which finds it anywhere.
fn strip_scheme<'v>(value: &'v str, scheme: &str) -> Option<&'v str> {
    let value = value.trim_start();
    let (word, rest) = value.split_once(' ').unwrap_or((value, ""));
    word.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// RFC 6750 b64token: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

fn cookies(headers: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    headers
        .iter()
        .filter(|(n, _)| n == "cookie")
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|c| {
            c.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
        })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `:path` without the query parameter that carried the token.
pub fn path_without_param(path: &str, name: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| percent_decode(pair.split_once('=').map_or(pair, |(k, _)| k)) != name)
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// The request target as a log shows it: the judged path (the raw one if it
/// cannot be judged), and the query with the value of every parameter a
/// token may come in replaced, so that no log line ever holds a token.
pub fn target_for_log(raw: &str, sources: &[TokenSource]) -> String {
    let (path, query) = raw.split_once('?').unwrap_or((raw, ""));
    let mut out = normalize_target(path).map_or_else(|_| path.to_string(), |t| t.path);
    if raw.contains('?') {
        let secret = |pair: &str| {
            let name = percent_decode(pair.split_once('=').map_or(pair, |(k, _)| k));
            sources
                .iter()
                .any(|s| matches!(s, TokenSource::Query(n) if *n == name))
        };
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if secret(pair) => format!("{key}=REDACTED"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// The `cookie` header value without the cookie that carried the token
/// (None when nothing is left).
pub fn cookies_without(headers: &[(String, String)], name: &str) -> Option<String> {
    let kept: Vec<String> = cookies(headers)
        .filter(|(k, _)| *k != name)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
pub(crate) mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn a_logged_target_holds_no_token_in_any_spelling_of_its_parameter() {
        let sources = [
            TokenSource::Query("access_token".into()),
            TokenSource::Header {
                name: "authorization".into(),
                prefix: None,
            },
        ];
        for (raw, logged) in [
            (
                "/a/../b?x=1&access_token=secret",
                "/b?x=1&access_token=REDACTED",
            ),
            (
                "/b?access%5Ftoken=secret&access_token=again",
                "/b?access%5Ftoken=REDACTED&access_token=REDACTED",
            ),
            ("//b/./c?q", "/b/c?q"),
            ("/plain", "/plain"),
            (
                "no-slash?access_token=secret",
                "no-slash?access_token=REDACTED",
            ),
        ] {
            let out = target_for_log(raw, &sources);
            assert_eq!(out, logged, "{raw}");
            assert!(!out.contains("secret") && !out.contains("again"), "{raw}");
        }
    }

    /// Request headers from literal pairs.
    pub(crate) fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn bearer() -> TokenSource {
        TokenSource::Header {
            name: "authorization".into(),
            prefix: Some("Bearer".into()),
        }
    }

    fn all() -> Vec<TokenSource> {
        vec![
            bearer(),
            TokenSource::Header {
                name: "x-token".into(),
                prefix: None,
            },
            TokenSource::Query("access_token".into()),
            TokenSource::Cookie("at".into()),
        ]
    }

    fn token(
        sources: &[TokenSource],
        headers: &[(&str, &str)],
        path: &str,
    ) -> Result<Option<String>, ExtractError> {
        find_token(sources, &h(headers), path).map(|f| f.map(|f| f.token))
    }

    #[test]
    fn finds_the_token_in_each_configured_place() {
        let s = all();
        let some = |t: &str| Ok(Some(t.to_string()));
        assert_eq!(
            token(&s, &[("authorization", "Bearer abc.def.ghi")], "/"),
            some("abc.def.ghi")
        );
        assert_eq!(
            token(&s, &[("authorization", "bEaReR   abc")], "/"),
            some("abc")
        );
        assert_eq!(token(&s, &[("x-token", "abc")], "/"), some("abc"));
        assert_eq!(token(&s, &[], "/p?x=1&access_token=a%2Bb"), some("a+b"));
        assert_eq!(token(&s, &[("cookie", "x=1; at=abc")], "/"), some("abc"));
        assert_eq!(
            token(&s, &[("authorization", "Basic dXNlcjpwdw==")], "/"),
            Ok(None)
        );
        assert_eq!(token(&s, &[("authorization", "Bearerabc")], "/"), Ok(None));
        assert_eq!(token(&s, &[], "/"), Ok(None));
        assert_eq!(
            token(&[bearer()], &[], "/p?access_token=abc"),
            Ok(None),
            "query not configured"
        );
    }

    #[test]
    fn a_token_offered_twice_is_refused() {
        let s = all();
        assert!(matches!(
            token(&s, &[("authorization", "Bearer a,Bearer b")], "/"),
            Err(ExtractError::Repeated(_))
        ));
        assert!(matches!(
            token(
                &s,
                &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
                "/"
            ),
            Err(ExtractError::Repeated(_))
        ));
        assert_eq!(
            token(&s, &[("authorization", "Bearer a")], "/?access_token=a"),
            Err(ExtractError::SeveralPlaces)
        );
        assert!(matches!(
            token(&s, &[], "/?access_token=a&access_token=b"),
            Err(ExtractError::Repeated(_))
        ));
        assert!(matches!(
            token(&s, &[("cookie", "at=a"), ("cookie", "at=b")], "/"),
            Err(ExtractError::Repeated(_))
        ));
    }

    #[test]
    fn token_syntax_is_b64token() {
        let s = all();
        for bad in ["Bearer ", "Bearer a b", "Bearer =="] {
            assert!(
                matches!(
                    token(&s, &[("authorization", bad)], "/"),
                    Err(ExtractError::BadSyntax(_))
                ),
                "{bad}"
            );
        }
        assert!(token(&s, &[("authorization", "Bearer a-b_c.d~e+f/g==")], "/").is_ok());
    }

    #[test]
    fn credentials_can_be_removed_from_query_and_cookie() {
        assert_eq!(
            path_without_param("/p?a=1&access_token=t&b=2", "access_token"),
            "/p?a=1&b=2"
        );
        assert_eq!(
            path_without_param("/p?access_token=t", "access_token"),
            "/p"
        );
        assert_eq!(path_without_param("/p", "access_token"), "/p");
        assert_eq!(
            cookies_without(&h(&[("cookie", "x=1; at=t; y=2")]), "at"),
            Some("x=1; y=2".into())
        );
        assert_eq!(cookies_without(&h(&[("cookie", "at=t")]), "at"), None);
    }

    #[test]
    fn percent_decoding_never_panics_on_truncated_escapes() {
        for input in ["%", "%4", "%zz", "a%", "%e2%82", "+"] {
            let _ = percent_decode(input);
        }
        assert_eq!(percent_decode("%41%42"), "AB");
    }
}
