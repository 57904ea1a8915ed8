//! Outgoing HTTP calls as data: the core describes a callout, the glue dispatches
//! it and hands back the reply. Shared by key fetching, the PDP and (later)
//! introspection and UMA.

use std::fmt;

use crate::config_error::ConfigError;

/// Where a callout goes: an Envoy cluster name, or `host:port` on Kong.
/// The URL supplies `:scheme`, `:authority` and `:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    pub upstream: String,
    pub method: &'static str,
    pub url: Url,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
}

impl Callout {
    pub fn get(upstream: &str, url: Url, timeout_ms: u64) -> Self {
        Callout {
            upstream: upstream.to_string(),
            method: "GET",
            url,
            headers: vec![("accept".to_string(), "application/json".to_string())],
            body: None,
            timeout_ms,
        }
    }

    pub fn post_json(upstream: &str, url: Url, body: Vec<u8>, timeout_ms: u64) -> Self {
        Callout::post(upstream, url, "application/json", body, timeout_ms)
    }

    fn post(upstream: &str, url: Url, content_type: &str, body: Vec<u8>, timeout_ms: u64) -> Self {
        Callout {
            upstream: upstream.to_string(),
            method: "POST",
            url,
            headers: vec![
                ("accept".to_string(), "application/json".to_string()),
                ("content-type".to_string(), content_type.to_string()),
            ],
            body: Some(body),
            timeout_ms,
        }
    }

    /// An `application/x-www-form-urlencoded` POST (RFC 6749 §3.2, RFC 7662 §2.1).
    pub fn post_form(upstream: &str, url: Url, fields: &[(&str, &str)], timeout_ms: u64) -> Self {
        let mut body = String::new();
        for (i, (name, value)) in fields.iter().enumerate() {
            if i > 0 {
                body.push('&');
            }
            body.push_str(&form_urlencode(name));
            body.push('=');
            body.push_str(&form_urlencode(value));
        }
        Callout::post(
            upstream,
            url,
            "application/x-www-form-urlencoded",
            body.into_bytes(),
            timeout_ms,
        )
    }

    /// The pseudo and regular headers in the order a proxy-wasm host wants them.
    pub fn all_headers(&self) -> Vec<(&str, &str)> {
        let mut all = vec![
            (":method", self.method),
            (":scheme", self.url.scheme.as_str()),
            (":authority", self.url.authority.as_str()),
            (":path", self.url.path.as_str()),
        ];
        all.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        all
    }
}

/// The longest timeout a callout may be given.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// Checks a callout's `timeout_ms` (1 to [`MAX_TIMEOUT_MS`]) at `field`.
pub fn check_timeout_ms(timeout_ms: u64, field: &str) -> Result<(), ConfigError> {
    if (1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("must be between 1 and {MAX_TIMEOUT_MS}"),
        ))
    }
}

/// The Envoy cluster (on Kong, `host:port`) a callout to `endpoint` goes
/// through: the block's own `upstream`, else `fallback` (its issuer's).
pub fn upstream_or(
    own: Option<&str>,
    fallback: Option<&str>,
    field: &str,
    endpoint: &str,
) -> Result<String, ConfigError> {
    match own.or(fallback) {
        Some(u) if !u.trim().is_empty() => Ok(u.to_string()),
        _ => Err(ConfigError::new(
            field,
            format!("is required: the Envoy cluster (or Kong host:port) of the {endpoint}"),
        )),
    }
}

/// Checks an `authority` that replaces an endpoint's in the callout.
pub fn check_authority(authority: Option<&str>, field: &str) -> Result<(), ConfigError> {
    match authority {
        Some(a) if a.is_empty() || a.contains(['/', ' ', '@']) => {
            Err(ConfigError::new(field, "must be a host[:port]"))
        }
        _ => Ok(()),
    }
}

/// `application/x-www-form-urlencoded` encoding (the WHATWG URL rules, which
/// RFC 6749 Appendix B uses for client credentials too): unreserved bytes as
/// they are, space as `+`, everything else `%XX`.
pub fn form_urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(byte))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// What came back. `status: None` means the call never produced an HTTP answer:
/// Envoy reports a reset or timeout as a reply without headers, and Kong does
/// the same for a failed callout. That is a failure, never an empty success.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CalloutReply {
    pub status: Option<u16>,
    pub body: Vec<u8>,
    /// The size of a body larger than [`MAX_REPLY_BYTES`], which was not read.
    pub oversized: Option<usize>,
}

/// The most a callout answer may hold (a JWKS, a discovery document, a PDP
/// decision): a larger one is a failure, never read into memory.
pub const MAX_REPLY_BYTES: usize = 1 << 20;

/// The most an answer that describes one token or one decision may hold (an
/// introspection answer, a token response, a permission ticket): anything
/// larger is not what the server meant to send, and is not parsed.
pub const MAX_SMALL_REPLY_BYTES: usize = 64 * 1024;

impl CalloutReply {
    /// [`CalloutReply::success_body`], for answers that are never large
    /// ([`MAX_SMALL_REPLY_BYTES`]).
    pub fn small_success_body(&self) -> Result<&[u8], CalloutError> {
        let body = self.success_body()?;
        if body.len() > MAX_SMALL_REPLY_BYTES {
            return Err(CalloutError::TooLarge {
                bytes: body.len(),
                limit: MAX_SMALL_REPLY_BYTES,
            });
        }
        Ok(body)
    }

    /// The body of a 2xx answer, or why there is none.
    pub fn success_body(&self) -> Result<&[u8], CalloutError> {
        if let Some(bytes) = self.oversized {
            return Err(CalloutError::TooLarge {
                bytes,
                limit: MAX_REPLY_BYTES,
            });
        }
        match self.status {
            None => Err(CalloutError::NoResponse),
            Some(s) if (200..300).contains(&s) => Ok(&self.body),
            Some(s) => match envoy_local_reply(s, &self.body) {
                Some(text) => Err(CalloutError::NoUpstream(text)),
                None => Err(CalloutError::Status(s)),
            },
        }
    }
}

/// What Envoy's router says in the local reply it makes when no upstream
/// answered (connect failure, reset, TLS mismatch, no healthy host, timeout),
/// or `None` when the answer came from the server itself.
fn envoy_local_reply(status: u16, body: &[u8]) -> Option<String> {
    const ENVOY_TEXTS: [&str; 4] = [
        "upstream connect error or disconnect/reset before headers",
        "no healthy upstream",
        "upstream request timeout",
        "no cluster match",
    ];
    if !(500..600).contains(&status) || body.len() > 1024 {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?.trim();
    ENVOY_TEXTS
        .iter()
        .any(|t| text.starts_with(t))
        .then(|| text.chars().filter(|c| !c.is_control()).take(300).collect())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutError {
    /// Dispatch refused by the host (unknown cluster, bad headers).
    Dispatch(String),
    /// No HTTP answer: connection failure, reset or timeout.
    NoResponse,
    Status(u16),
    /// The host answered for the cluster (Envoy's router local reply): no
    /// upstream answered at all. Carries the host's text.
    NoUpstream(String),
    /// A body of `bytes`, more than the `limit` for its kind of answer
    /// ([`MAX_REPLY_BYTES`], or [`MAX_SMALL_REPLY_BYTES`]).
    TooLarge {
        bytes: usize,
        limit: usize,
    },
}

/// What to look at when Envoy says no upstream answered.
const CHECK_CLUSTER: &str = "check the cluster's address, and its TLS transport socket: an https URL needs one, a plain http server must not have one";

/// Envoy's text for a callout the server was reached for and did not answer in time.
fn is_timeout(text: &str) -> bool {
    text.starts_with("upstream request timeout")
}

impl CalloutError {
    /// The error as a sentence about `what` (e.g. "the permission
    /// endpoint"), for causes that name the endpoint first.
    pub fn of(&self, what: &str) -> String {
        match self {
            CalloutError::Status(_) | CalloutError::TooLarge { .. } => format!("{what} {self}"),
            CalloutError::Dispatch(why) => {
                format!("the callout to {what} could not be dispatched: {why}")
            }
            CalloutError::NoResponse => {
                format!("no response from {what} (connection failed or timed out)")
            }
            CalloutError::NoUpstream(text) if is_timeout(text) => {
                format!("no answer from {what} within the timeout; Envoy replied \"{text}\"")
            }
            CalloutError::NoUpstream(text) => format!(
                "{what} was not reached: no upstream answered; Envoy replied \"{text}\" ({CHECK_CLUSTER})"
            ),
        }
    }
}

impl fmt::Display for CalloutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalloutError::Dispatch(why) => write!(f, "callout could not be dispatched: {why}"),
            CalloutError::NoResponse => write!(f, "no response (connection failed or timed out)"),
            CalloutError::Status(s) => write!(f, "answered HTTP {s}"),
            // A timeout means the server was reached and did not answer in
            // time; anything else, that no connection was made or kept.
            CalloutError::NoUpstream(text) if is_timeout(text) => {
                write!(f, "no answer within the timeout; Envoy replied \"{text}\"")
            }
            CalloutError::NoUpstream(text) => write!(
                f,
                "no upstream answered; Envoy replied \"{text}\" ({CHECK_CLUSTER})"
            ),
            CalloutError::TooLarge { bytes, limit } => {
                write!(f, "answered {bytes} bytes, more than the {limit} accepted")
            }
        }
    }
}

/// An absolute http(s) URL split the way a callout needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: String,
    pub authority: String,
    pub path: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("`{url}` is not an absolute URL"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("`{url}` must use http or https"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("`{url}` has no usable host"));
        }
        if path.contains('#') {
            return Err(format!("`{url}` must not contain a fragment"));
        }
        Ok(Url {
            scheme,
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    /// The same host with another path: `/.well-known/...` next to the issuer.
    pub fn join_path(&self, suffix: &str) -> Url {
        let base = self.path.trim_end_matches('/');
        Url {
            scheme: self.scheme.clone(),
            authority: self.authority.clone(),
            path: format!("{base}{suffix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn parses_urls_for_callouts() {
        let u = Url::parse("https://as.example:8443/oauth/jwks?x=1").unwrap();
        assert_eq!(u.scheme, "https");
        assert_eq!(u.authority, "as.example:8443");
        assert_eq!(u.path, "/oauth/jwks?x=1");
        assert_eq!(Url::parse("http://as").unwrap().path, "/");
        assert!(Url::parse("ftp://as/x").is_err());
        assert!(Url::parse("/jwks").is_err());
        assert!(Url::parse("http:///x").is_err());
        assert_eq!(
            Url::parse("http://as/realm/")
                .unwrap()
                .join_path("/.well-known/openid-configuration")
                .path,
            "/realm/.well-known/openid-configuration"
        );
    }

    #[test]
    fn reply_without_status_is_a_failure() {
        let r = CalloutReply {
            status: None,
            body: vec![],
            ..CalloutReply::default()
        };
        assert_eq!(r.success_body(), Err(CalloutError::NoResponse));
        let r = CalloutReply {
            status: Some(500),
            body: b"{}".to_vec(),
            ..CalloutReply::default()
        };
        assert_eq!(r.success_body(), Err(CalloutError::Status(500)));
        let r = CalloutReply {
            status: Some(503),
            body: b"upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: TLS_error".to_vec(),
            ..CalloutReply::default()
        };
        let Err(CalloutError::NoUpstream(text)) = r.success_body() else {
            panic!("an Envoy local reply is not the server's answer")
        };
        assert!(text.contains("TLS_error"), "{text}");
        let r = CalloutReply {
            status: Some(503),
            body: b"upstream connect error: our own maintenance page".to_vec(),
            ..CalloutReply::default()
        };
        assert_eq!(r.success_body(), Err(CalloutError::Status(503)));
        let r = CalloutReply {
            status: Some(200),
            oversized: Some(MAX_REPLY_BYTES + 1),
            ..CalloutReply::default()
        };
        assert_eq!(
            r.success_body(),
            Err(CalloutError::TooLarge {
                bytes: MAX_REPLY_BYTES + 1,
                limit: MAX_REPLY_BYTES
            })
        );
    }

    /// A cause that names its endpoint first reads as a sentence whatever
    /// went wrong (before: "the permission endpoint no upstream answered").
    #[test]
    fn a_callout_error_of_an_endpoint_reads_as_a_sentence() {
        let of = |e: CalloutError| e.of("the permission endpoint");
        assert_eq!(
            of(CalloutError::Status(500)),
            "the permission endpoint answered HTTP 500"
        );
        assert_eq!(
            of(CalloutError::NoResponse),
            "no response from the permission endpoint (connection failed or timed out)"
        );
        assert!(of(CalloutError::NoUpstream("no healthy upstream".into())).starts_with(
            "the permission endpoint was not reached: no upstream answered; Envoy replied \"no healthy upstream\" (check the cluster's address"
        ));
        assert_eq!(
            of(CalloutError::NoUpstream("upstream request timeout".into())),
            "no answer from the permission endpoint within the timeout; Envoy replied \"upstream request timeout\""
        );
        assert_eq!(
            of(CalloutError::TooLarge {
                bytes: 9000,
                limit: 8192
            }),
            "the permission endpoint answered 9000 bytes, more than the 8192 accepted"
        );
        assert_eq!(
            of(CalloutError::Dispatch("BadArgument".into())),
            "the callout to the permission endpoint could not be dispatched: BadArgument"
        );
    }
}
