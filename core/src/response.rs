//! Every denial, and the one exhaustive mapping from it to what the client sees:
//! status, `WWW-Authenticate` (RFC 6750 §3) and a JSON body.

use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No credentials at all: a bare challenge, no error code (RFC 6750 §3.1).
    NoToken,
    /// The request itself is malformed (token twice, bad syntax, bad path).
    InvalidRequest(String),
    InvalidToken(String),
    InsufficientScope {
        rule: String,
        scopes: Vec<String>,
    },
    /// Valid token, but no rule grants this request (or the PDP said no).
    Forbidden(String),
    /// The authorization server or PDP could not be used: not the client's fault.
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Denial {
    pub fn status(&self) -> u32 {
        match self {
            Denial::NoToken | Denial::InvalidToken(_) => 401,
            Denial::InvalidRequest(_) => 400,
            Denial::InsufficientScope { .. } | Denial::Forbidden(_) => 403,
            Denial::Unavailable(_) => 503,
        }
    }

    /// A short, stable label for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Denial::NoToken => "no_token",
            Denial::InvalidRequest(_) => "invalid_request",
            Denial::InvalidToken(_) => "invalid_token",
            Denial::InsufficientScope { .. } => "insufficient_scope",
            Denial::Forbidden(_) => "forbidden",
            Denial::Unavailable(_) => "unavailable",
        }
    }

    pub fn render(&self, realm: &str) -> HttpResponse {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        let challenge = |error: &str, description: &str, extra: &str| {
            format!(
                "Bearer realm=\"{}\", error=\"{error}\", error_description=\"{}\"{extra}",
                quotable(realm),
                quotable(description)
            )
        };
        let body = match self {
            Denial::NoToken => {
                headers.push((
                    "www-authenticate".into(),
                    format!("Bearer realm=\"{}\"", quotable(realm)),
                ));
                json!({"error": "unauthorized", "error_description": "an access token is required"})
            }
            Denial::InvalidRequest(why) => {
                headers.push((
                    "www-authenticate".into(),
                    challenge("invalid_request", why, ""),
                ));
                json!({"error": "invalid_request", "error_description": why})
            }
            Denial::InvalidToken(why) => {
                headers.push((
                    "www-authenticate".into(),
                    challenge("invalid_token", why, ""),
                ));
                json!({"error": "invalid_token", "error_description": why})
            }
            Denial::InsufficientScope { rule, scopes } => {
                let scope = scopes.join(" ");
                let description =
                    format!("the token lacks the scopes this request needs (rule \"{rule}\")");
                let extra = format!(", scope=\"{}\"", quotable(&scope));
                headers.push((
                    "www-authenticate".into(),
                    challenge("insufficient_scope", &description, &extra),
                ));
                json!({"error": "insufficient_scope", "error_description": description, "scope": scope, "rule": rule})
            }
            Denial::Forbidden(why) => json!({"error": "forbidden", "error_description": why}),
            Denial::Unavailable(why) => {
                headers.push(("retry-after".into(), "5".into()));
                json!({"error": "temporarily_unavailable", "error_description": why})
            }
        };
        HttpResponse {
            status: self.status(),
            headers,
            body: body.to_string().into_bytes(),
        }
    }
}

/// The inside of an RFC 9110 §5.6.4 quoted-string: `\\` and `"` escaped, so
/// the header says what the body says. Characters a header cannot carry
/// (controls, non-ASCII) become `?`; the JSON body keeps them.
fn quotable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn header<'r>(r: &'r HttpResponse, name: &str) -> Option<&'r str> {
        r.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn each_denial_has_its_status_challenge_and_body() {
        let r = Denial::NoToken.render("api");
        assert_eq!(
            (r.status, header(&r, "www-authenticate")),
            (401, Some("Bearer realm=\"api\""))
        );

        let r = Denial::InvalidToken("the token has \"expired\"".into()).render("api");
        assert_eq!(r.status, 401);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"api\", error=\"invalid_token\", error_description=\"the token has \\\"expired\\\"\"")
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["error_description"], "the token has \"expired\"");

        let r = Denial::InsufficientScope {
            rule: "GET /a".into(),
            scopes: vec!["read".into(), "otp".into()],
        }
        .render("api");
        assert_eq!(r.status, 403);
        assert!(header(&r, "www-authenticate")
            .unwrap()
            .ends_with(", scope=\"read otp\""));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["rule"], "GET /a");

        let r = Denial::Unavailable("keys".into()).render("api");
        assert_eq!((r.status, header(&r, "www-authenticate")), (503, None));
        assert_eq!(Denial::InvalidRequest("x".into()).render("api").status, 400);
        assert_eq!(Denial::Forbidden("x".into()).render("api").status, 403);
    }

    #[test]
    fn challenge_text_stays_within_the_quoted_string_grammar() {
        // A scope regex hint keeps its backslashes: `^orders:\d+$` is sent as
        // `^orders:\\d+$` and unquotes to what the body says.
        assert_eq!(quotable("a\"b\\c\u{e9}\n"), "a\\\"b\\\\c??");
        assert_eq!(quotable(r"^orders:\d+$"), r"^orders:\\d+$");
    }
}
