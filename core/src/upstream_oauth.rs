//! Upstream OAuth (Kong's `upstream-oauth`): the gateway sends its own
//! access token, got by client credentials ([`crate::token_client`]), to the
//! upstream, on every path or on the paths a rule names. The client's own
//! token is still checked first wherever the policy needs one.

use serde::Deserialize;

use crate::config_error::ConfigError;
use crate::headers::{header_name, HeaderUse};
use crate::policy::PathSet;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamOAuth {
    /// A name from `clients`.
    client: String,
    /// Path patterns (as in `public_paths`); none: every path.
    #[serde(default)]
    paths: Vec<String>,
    /// None: every method.
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default = "default_header")]
    header: String,
    #[serde(default)]
    client_credential: RawCredentialHandling,
    /// With `client_credential: "move"`: where the client's credential goes.
    move_to: Option<String>,
}

fn default_header() -> String {
    "authorization".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawCredentialHandling {
    #[default]
    Replace,
    Keep,
    Move,
}

/// What happens to the credential the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCredential {
    /// Removed (the gateway's token takes its place).
    Replace,
    /// Left where it was (the gateway's token goes in another header).
    Keep,
    /// Removed from where it was and sent in this header, as it came.
    MoveTo(String),
}

#[derive(Debug)]
pub struct UpstreamOAuth {
    /// Index into `Config::clients`.
    pub client: usize,
    paths: Option<PathSet>,
    methods: Vec<String>,
    /// Gets `Bearer <token>`.
    pub header: String,
    pub credential: ClientCredential,
}

impl UpstreamOAuth {
    /// `clients` are the configured client names, in index order;
    /// `token_headers` the request headers tokens are read from.
    pub fn compile(
        raw: RawUpstreamOAuth,
        field: &str,
        clients: &[&str],
        token_headers: &[&str],
    ) -> Result<UpstreamOAuth, ConfigError> {
        let f = |n: &str| format!("{field}.{n}");
        let client = clients
            .iter()
            .position(|c| *c == raw.client)
            .ok_or_else(|| {
                ConfigError::new(
                    f("client"),
                    format!("{:?} is not one of `clients`", raw.client),
                )
            })?;
        let header = header_name(&raw.header, &f("header"), HeaderUse::UpstreamToken)?;
        let credential = match (raw.client_credential, raw.move_to) {
            (RawCredentialHandling::Move, Some(to)) => {
                let to = header_name(&to, &f("move_to"), HeaderUse::Upstream)?;
                if to == header {
                    return Err(ConfigError::new(
                        f("move_to"),
                        "must differ from `header`, which gets the gateway's token",
                    ));
                }
                ClientCredential::MoveTo(to)
            }
            (RawCredentialHandling::Move, None) => {
                return Err(ConfigError::new(
                    f("move_to"),
                    "is required with `client_credential: \"move\"`: the header the client's credential goes to",
                ))
            }
            (_, Some(_)) => {
                return Err(ConfigError::new(
                    f("move_to"),
                    "applies only with `client_credential: \"move\"`",
                ))
            }
            (RawCredentialHandling::Keep, None) => {
                if token_headers.contains(&header.as_str()) {
                    return Err(ConfigError::new(
                        f("client_credential"),
                        format!("cannot be \"keep\": the gateway's token goes in {header:?}, where the client's is read from; use \"replace\" or \"move\""),
                    ));
                }
                ClientCredential::Keep
            }
            (RawCredentialHandling::Replace, None) => ClientCredential::Replace,
        };
        let paths = if raw.paths.is_empty() {
            None
        } else {
            Some(
                PathSet::compile(&raw.paths)
                    .map_err(|e| ConfigError::new(f("paths"), e.to_string()))?,
            )
        };
        let mut methods = Vec::with_capacity(raw.methods.len());
        for method in raw.methods {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(ConfigError::new(
                    f("methods"),
                    format!("{method:?} is not an HTTP method"),
                ));
            }
            methods.push(method.to_ascii_uppercase());
        }
        Ok(UpstreamOAuth {
            client,
            paths,
            methods,
            header,
            credential,
        })
    }

    /// Whether this rule covers the request (`path` normalised). A rule for
    /// `GET` covers `HEAD` too, as the policy does: servers answer `HEAD`
    /// with their `GET` handler, so it must not reach them with the caller's
    /// token where `GET` gets the gateway's.
    pub fn applies(&self, method: &str, path: &str) -> bool {
        let lists = |m: &str| {
            self.methods
                .iter()
                .any(|listed| listed.eq_ignore_ascii_case(m))
        };
        let method_covered = self.methods.is_empty()
            || lists(method)
            || (method.eq_ignore_ascii_case("HEAD") && lists("GET"));
        method_covered && self.paths.as_ref().is_none_or(|p| p.matches(path))
    }

    /// The headers this rule may set upstream (stripped from requests).
    pub fn owned_headers(&self) -> Vec<&str> {
        let mut owned = vec![self.header.as_str()];
        if let ClientCredential::MoveTo(to) = &self.credential {
            owned.push(to);
        }
        owned
    }
}

/// The first rule that covers the request.
pub fn rule_for<'a>(
    rules: &'a [UpstreamOAuth],
    method: &str,
    path: &str,
) -> Option<&'a UpstreamOAuth> {
    rules.iter().find(|r| r.applies(method, path))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn rule(json: &str) -> UpstreamOAuth {
        let raw: RawUpstreamOAuth = serde_json::from_str(json).unwrap();
        UpstreamOAuth::compile(raw, "upstream_oauth[0]", &["backend"], &["authorization"]).unwrap()
    }

    #[test]
    fn a_get_rule_covers_head_and_nothing_else_it_does_not_list() {
        let get = rule(r#"{"client":"backend","paths":["/backend/??"],"methods":["GET"]}"#);
        assert!(get.applies("GET", "/backend/reports"));
        assert!(
            get.applies("HEAD", "/backend/reports"),
            "HEAD runs GET's handler"
        );
        assert!(get.applies("head", "/backend/reports"));
        assert!(!get.applies("POST", "/backend/reports"));
        assert!(!get.applies("GET", "/other"));
        let post = rule(r#"{"client":"backend","methods":["POST"]}"#);
        assert!(
            !post.applies("HEAD", "/x"),
            "only GET lends its rule to HEAD"
        );
        assert!(rule(r#"{"client":"backend"}"#).applies("OPTIONS", "/x"));
    }
}
