//! Protected resources (RFC 9728): the identifiers clients ask tokens for
//! (RFC 8707), the paths each covers, the audiences its tokens must name,
//! and its metadata document, built once when the configuration loads and
//! served as it is, without a token, at
//! `/.well-known/oauth-protected-resource` plus the identifier's path.
//!
//! The identifier is always written in the configuration, never built from
//! the request: the caller chooses `:authority`, and a document or challenge
//! that echoed it would send a client's token wherever the caller pointed.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::alg::Alg;
use crate::callout::Url;
use crate::config_error::ConfigError;
use crate::dpop::DpopMode;
use crate::extract::TokenSource;
use crate::mtls::CertificateBound;
use crate::policy::{PathSet, Policy};
use crate::request::normalize_target;
use crate::response::HttpResponse;

/// RFC 9728 §3: the well-known URI suffix.
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// How long clients and caches may keep the document: it changes only when
/// the configuration does.
const CACHE_CONTROL: &str = "max-age=300";

/// One entry of `resources` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResource {
    pub resource: String,
    pub paths: Option<Vec<String>>,
    pub authorization_servers: Option<Vec<String>>,
    pub audiences: Option<Vec<String>>,
    pub scopes_supported: Option<Vec<String>>,
    pub resource_name: Option<String>,
    pub resource_documentation: Option<String>,
}

/// What a resource needs to know of one issuer of the configuration.
pub struct IssuerFacts<'a> {
    pub issuer: &'a str,
    pub dpop: DpopMode,
    pub certificate_bound: CertificateBound,
}

/// The rest of the configuration a resource's document is derived from.
pub struct Context<'a> {
    pub issuers: &'a [IssuerFacts<'a>],
    pub token_sources: &'a [TokenSource],
    pub policy: Option<&'a Policy>,
    /// `dpop.algorithms`.
    pub dpop_algorithms: &'a [Alg],
}

#[derive(Debug)]
pub struct Resource {
    /// The identifier exactly as configured (and as the document says it).
    pub identifier: String,
    paths: PathSet,
    /// `/.well-known/oauth-protected-resource[/path]`.
    pub metadata_path: String,
    /// The metadata URL a challenge points to (RFC 9728 §5.1).
    pub metadata_url: String,
    /// Indexes into the configuration's issuers: whose tokens it accepts.
    pub issuers: Vec<usize>,
    /// The `aud` values its tokens must name one of (RFC 8707).
    pub audiences: Vec<String>,
    /// The metadata document, serialised once.
    document: Vec<u8>,
}

/// Every configured resource, in configuration order.
#[derive(Debug, Default)]
pub struct Resources {
    list: Vec<Resource>,
}

impl Resources {
    pub fn compile(raw: Vec<RawResource>, context: &Context) -> Result<Resources, ConfigError> {
        let mut list: Vec<Resource> = Vec::with_capacity(raw.len());
        for (i, r) in raw.into_iter().enumerate() {
            let field = format!("resources[{i}]");
            let resource = Resource::compile(r, &field, context)?;
            if let Some(first) = list
                .iter()
                .position(|o| o.metadata_path == resource.metadata_path)
            {
                return Err(ConfigError::new(
                    format!("{field}.resource"),
                    format!(
                        "has the metadata path {} of resources[{first}]; one filter serves one document per path, whatever the host",
                        resource.metadata_path
                    ),
                ));
            }
            list.push(resource);
        }
        Ok(Resources { list })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.list.iter()
    }

    /// The resource a normalised path belongs to: the first whose `paths`
    /// match it.
    pub fn for_path(&self, path: &str) -> Option<&Resource> {
        self.list.iter().find(|r| r.paths.matches(path))
    }

    /// The resource whose metadata document is at this normalised path.
    pub fn by_metadata_path(&self, path: &str) -> Option<&Resource> {
        self.list.iter().find(|r| r.metadata_path == path)
    }
}

impl Resource {
    fn compile(raw: RawResource, field: &str, context: &Context) -> Result<Resource, ConfigError> {
        let identifier = raw.resource;
        let url = identifier_url(&identifier)
            .map_err(|problem| ConfigError::new(format!("{field}.resource"), problem))?;
        let (paths, paths_field) = match raw.paths {
            Some(paths) if paths.is_empty() => {
                return Err(ConfigError::new(
                    format!("{field}.paths"),
                    "must list at least one path pattern; leave it out to cover the identifier's path and below",
                ))
            }
            Some(paths) => (paths, format!("{field}.paths")),
            None => {
                let base = url.path.trim_end_matches('/');
                (vec![format!("{base}/??")], format!("{field}.resource"))
            }
        };
        let paths =
            PathSet::compile(&paths).map_err(|e| ConfigError::new(paths_field, e.to_string()))?;
        // RFC 9728 §3.1: the well-known path goes between the host and the
        // identifier's path, a lone `/` dropped.
        let written = match url.path.as_str() {
            "" | "/" => WELL_KNOWN.to_string(),
            path => format!("{WELL_KNOWN}{path}"),
        };
        let metadata_url = format!("{}://{}{written}", url.scheme, url.authority);
        // Matched against requests' normalised paths (a trailing `/` dropped).
        let metadata_path = normalize_target(&written)
            .map(|t| t.path)
            .unwrap_or(written);

        let issuers = issuer_indexes(raw.authorization_servers, field, context)?;
        let audiences = match raw.audiences {
            None => vec![identifier.clone()],
            Some(list) if list.is_empty() || list.iter().any(String::is_empty) => {
                return Err(ConfigError::new(
                    format!("{field}.audiences"),
                    "must list non-empty audiences; leave it out for the resource identifier",
                ))
            }
            Some(list) => list,
        };
        let scopes = scopes(raw.scopes_supported, field, context.policy, &paths)?;
        if let Some(doc) = &raw.resource_documentation {
            Url::parse(doc).map_err(|problem| {
                ConfigError::new(format!("{field}.resource_documentation"), problem)
            })?;
        }
        if raw.resource_name.as_deref() == Some("") {
            return Err(ConfigError::new(
                format!("{field}.resource_name"),
                "must not be empty; leave it out instead",
            ));
        }

        let of_issuers = || issuers.iter().filter_map(|&i| context.issuers.get(i));
        let mut document = Map::new();
        document.insert("resource".into(), json!(identifier));
        document.insert(
            "authorization_servers".into(),
            json!(of_issuers().map(|i| i.issuer).collect::<Vec<_>>()),
        );
        if !scopes.is_empty() {
            document.insert("scopes_supported".into(), json!(scopes));
        }
        document.insert(
            "bearer_methods_supported".into(),
            json!(bearer_methods(context.token_sources)),
        );
        if let Some(name) = &raw.resource_name {
            document.insert("resource_name".into(), json!(name));
        }
        if let Some(doc) = &raw.resource_documentation {
            document.insert("resource_documentation".into(), json!(doc));
        }
        if of_issuers().any(|i| i.dpop != DpopMode::Off) {
            document.insert(
                "dpop_signing_alg_values_supported".into(),
                json!(context
                    .dpop_algorithms
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>()),
            );
        }
        document.insert(
            "dpop_bound_access_tokens_required".into(),
            json!(of_issuers().all(|i| i.dpop == DpopMode::Required)),
        );
        document.insert(
            "tls_client_certificate_bound_access_tokens".into(),
            json!(of_issuers().any(|i| i.certificate_bound == CertificateBound::Required)),
        );
        Ok(Resource {
            identifier,
            paths,
            metadata_path,
            metadata_url,
            issuers,
            audiences,
            document: Value::Object(document).to_string().into_bytes(),
        })
    }

    /// The answer to a request for this resource's metadata: the document
    /// for `GET` and `HEAD` (the host drops a `HEAD` answer's body), 405
    /// otherwise.
    pub fn metadata_reply(&self, method: &str) -> HttpResponse {
        let json = ("content-type".to_string(), "application/json".to_string());
        match method {
            "GET" | "HEAD" => HttpResponse {
                status: 200,
                headers: vec![json, ("cache-control".into(), CACHE_CONTROL.into())],
                body: self.document.clone(),
            },
            _ => HttpResponse {
                status: 405,
                headers: vec![json, ("allow".into(), "GET, HEAD".into())],
                body: br#"{"error":"method_not_allowed","error_description":"the protected resource metadata is read with GET or HEAD"}"#.to_vec(),
            },
        }
    }

    /// Whether a token with these `aud` values is for this resource.
    pub fn accepts_audience(&self, aud: &[String]) -> bool {
        aud.iter().any(|a| self.audiences.contains(a))
    }
}

/// `authorization_servers`: indexes into the configuration's issuers, each
/// once; every issuer when not given.
fn issuer_indexes(
    raw: Option<Vec<String>>,
    field: &str,
    context: &Context,
) -> Result<Vec<usize>, ConfigError> {
    let list = match raw {
        None => return Ok((0..context.issuers.len()).collect()),
        Some(list) if list.is_empty() => {
            return Err(ConfigError::new(
                format!("{field}.authorization_servers"),
                "must name at least one issuer; leave it out for every issuer",
            ))
        }
        Some(list) => list,
    };
    let mut indexes = Vec::with_capacity(list.len());
    for (j, name) in list.iter().enumerate() {
        let index = context
            .issuers
            .iter()
            .position(|i| i.issuer == name)
            .ok_or_else(|| {
                ConfigError::new(
                    format!("{field}.authorization_servers[{j}]"),
                    format!("\"{name}\" is not the `issuer` of an entry of `issuers`"),
                )
            })?;
        if !indexes.contains(&index) {
            indexes.push(index);
        }
    }
    Ok(indexes)
}

/// `scopes_supported` as written (each an RFC 6749 §3.3 scope token), or
/// the plain scopes of the policy's rules over `paths`, sorted.
fn scopes(
    raw: Option<Vec<String>>,
    field: &str,
    policy: Option<&Policy>,
    paths: &PathSet,
) -> Result<Vec<String>, ConfigError> {
    let Some(list) = raw else {
        let mut scopes = policy.map(|p| p.scopes_on(paths)).unwrap_or_default();
        scopes.sort();
        return Ok(scopes);
    };
    let bad = |s: &String| {
        s.is_empty() || s.contains(|c: char| c == ' ' || c == '"' || c == '\\' || c.is_control())
    };
    match list.iter().position(bad) {
        Some(j) => Err(ConfigError::new(
            format!("{field}.scopes_supported[{j}]"),
            "a scope is non-empty text without spaces, quotes, backslashes or control characters (RFC 6749 §3.3)",
        )),
        None => Ok(list),
    }
}

/// The identifier: an absolute http(s) URL without query or fragment (RFC
/// 8707 §2, RFC 9728 §1.2), whose path (if any) is a normal one, so that the
/// well-known path built from it is the path a client requests.
fn identifier_url(identifier: &str) -> Result<Url, String> {
    if identifier.contains(['?', '#']) {
        return Err("must not have a query or a fragment (RFC 8707 §2)".into());
    }
    if identifier.contains(|c: char| c.is_whitespace() || c.is_control() || c == '"' || c == '\\') {
        return Err("must not contain spaces, quotes, backslashes or control characters".into());
    }
    let url = Url::parse(identifier)?;
    if !identifier.starts_with(&format!("{}://", url.scheme)) {
        return Err("the scheme must be written in lower case (clients compare the identifier byte for byte)".into());
    }
    if !url.path.is_empty() {
        let normal = normalize_target(&url.path).map_err(|e| e.to_string())?;
        if normal.path.trim_end_matches('/') != url.path.trim_end_matches('/') {
            return Err(format!(
                "its path must be in normal form ({} here), as requests are judged",
                normal.path
            ));
        }
    }
    Ok(url)
}

/// RFC 9728 §2 `bearer_methods_supported` from the token sources: `header`
/// for the `Authorization` header with the `Bearer` scheme, `query` for the
/// `access_token` parameter (RFC 6750 §2.1, §2.3); other sources are not
/// RFC 6750 methods and the body is never read for a token.
fn bearer_methods(sources: &[TokenSource]) -> Vec<&'static str> {
    let mut methods = Vec::new();
    for source in sources {
        let method = match source {
            TokenSource::Header { name, prefix }
                if name == "authorization"
                    && prefix
                        .as_deref()
                        .is_some_and(|p| p.eq_ignore_ascii_case("bearer")) =>
            {
                "header"
            }
            TokenSource::Query(name) if name == "access_token" => "query",
            _ => continue,
        };
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    methods
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn raw(json: Value) -> Vec<RawResource> {
        serde_json::from_value(json).unwrap()
    }

    const ISSUERS: [IssuerFacts; 2] = [
        IssuerFacts {
            issuer: "https://as.one",
            dpop: DpopMode::Allowed,
            certificate_bound: CertificateBound::Allowed,
        },
        IssuerFacts {
            issuer: "https://as.two",
            dpop: DpopMode::Off,
            certificate_bound: CertificateBound::Required,
        },
    ];

    fn compile_with(json: Value, policy: Option<&Policy>) -> Result<Resources, ConfigError> {
        let sources = vec![
            TokenSource::Header {
                name: "authorization".into(),
                prefix: Some("Bearer".into()),
            },
            TokenSource::Query("access_token".into()),
            TokenSource::Cookie("session".into()),
        ];
        Resources::compile(
            raw(json),
            &Context {
                issuers: &ISSUERS,
                token_sources: &sources,
                policy,
                dpop_algorithms: &[Alg::ES256, Alg::EdDSA],
            },
        )
    }

    fn document(r: &Resource) -> Value {
        serde_json::from_slice(&r.document).unwrap()
    }

    #[test]
    fn a_root_and_a_path_resource_have_their_documents_and_urls() {
        let policy = Policy::compile(&json!({
            "GET /mcp/??": "mcp:read", "POST /mcp": "mcp:read and mcp:write",
            "GET /orders/??": "orders", "GET /x/{^n:\\d+$}": "^n:\\d+$"
        }))
        .unwrap();
        let resources = compile_with(
            json!([
                {"resource": "https://api.example/mcp", "resource_name": "MCP",
                 "resource_documentation": "https://docs.example/mcp"},
                {"resource": "https://api.example/", "authorization_servers": ["https://as.two"],
                 "audiences": ["api"]}
            ]),
            Some(&policy),
        )
        .unwrap();
        let mcp = resources.for_path("/mcp/tools").unwrap();
        assert_eq!(
            mcp.metadata_path,
            "/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            mcp.metadata_url,
            "https://api.example/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(mcp.audiences, vec!["https://api.example/mcp".to_string()]);
        assert_eq!(
            document(mcp),
            json!({
                "resource": "https://api.example/mcp",
                "authorization_servers": ["https://as.one", "https://as.two"],
                "scopes_supported": ["mcp:read", "mcp:write"],
                "bearer_methods_supported": ["header", "query"],
                "resource_name": "MCP",
                "resource_documentation": "https://docs.example/mcp",
                "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
                "dpop_bound_access_tokens_required": false,
                "tls_client_certificate_bound_access_tokens": true
            })
        );
        assert!(std::ptr::eq(resources.for_path("/mcp").unwrap(), mcp));
        let root = resources.for_path("/orders/1").unwrap();
        assert_eq!(root.metadata_path, WELL_KNOWN);
        assert_eq!(root.issuers, vec![1]);
        assert_eq!(
            document(root),
            json!({
                "resource": "https://api.example/",
                "authorization_servers": ["https://as.two"],
                "scopes_supported": ["mcp:read", "mcp:write", "orders"],
                "bearer_methods_supported": ["header", "query"],
                "dpop_bound_access_tokens_required": false,
                "tls_client_certificate_bound_access_tokens": true
            })
        );
        assert!(std::ptr::eq(
            resources.by_metadata_path(WELL_KNOWN).unwrap(),
            root
        ));
        assert!(root.accepts_audience(&["x".into(), "api".into()]));
        assert!(!root.accepts_audience(&["https://api.example/".into()]));
    }

    #[test]
    fn get_and_head_get_the_document_other_methods_405() {
        let resources =
            compile_with(json!([{"resource": "https://api.example/mcp"}]), None).unwrap();
        let r = resources.by_metadata_path("/.well-known/oauth-protected-resource/mcp");
        let r = r.unwrap();
        for method in ["GET", "HEAD"] {
            let reply = r.metadata_reply(method);
            assert_eq!(reply.status, 200);
            assert!(reply
                .headers
                .contains(&("cache-control".into(), "max-age=300".into())));
            assert_eq!(
                serde_json::from_slice::<Value>(&reply.body).unwrap()["resource"],
                "https://api.example/mcp"
            );
        }
        let reply = r.metadata_reply("POST");
        assert_eq!(reply.status, 405);
        assert!(reply
            .headers
            .contains(&("allow".into(), "GET, HEAD".into())));
    }

    #[test]
    fn bad_resources_are_refused_naming_the_field() {
        let table = [
            (json!([{"resource": "api"}]), "resources[0].resource"),
            (json!([{"resource": "ftp://x/y"}]), "resources[0].resource"),
            (
                json!([{"resource": "https://x/y?a=b"}]),
                "resources[0].resource",
            ),
            (
                json!([{"resource": "https://x/y#f"}]),
                "resources[0].resource",
            ),
            (
                json!([{"resource": "HTTPS://x/y"}]),
                "resources[0].resource",
            ),
            (
                json!([{"resource": "https://x/a/../b"}]),
                "resources[0].resource",
            ),
            (
                json!([{"resource": "https://a/mcp"}, {"resource": "https://b/mcp"}]),
                "resources[1].resource",
            ),
            (
                json!([{"resource": "https://a/", "paths": []}]),
                "resources[0].paths",
            ),
            (
                json!([{"resource": "https://a/", "paths": ["x"]}]),
                "resources[0].paths",
            ),
            (
                json!([{"resource": "https://a/", "authorization_servers": ["https://as.three"]}]),
                "resources[0].authorization_servers[0]",
            ),
            (
                json!([{"resource": "https://a/", "authorization_servers": []}]),
                "resources[0].authorization_servers",
            ),
            (
                json!([{"resource": "https://a/", "audiences": []}]),
                "resources[0].audiences",
            ),
            (
                json!([{"resource": "https://a/", "scopes_supported": ["a b"]}]),
                "resources[0].scopes_supported[0]",
            ),
            (
                json!([{"resource": "https://a/", "resource_documentation": "docs"}]),
                "resources[0].resource_documentation",
            ),
            (
                json!([{"resource": "https://a/", "resource_name": ""}]),
                "resources[0].resource_name",
            ),
        ];
        for (json, field) in table {
            let e = compile_with(json.clone(), None).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }

    #[test]
    fn the_identifier_is_kept_byte_for_byte() {
        for id in [
            "https://api.example",
            "https://api.example/",
            "http://127.0.0.1:8080/mcp/",
        ] {
            let r = compile_with(json!([{ "resource": id }]), None).unwrap();
            let only = r.iter().next().unwrap();
            assert_eq!(document(only)["resource"], id);
        }
        let r = compile_with(json!([{"resource": "http://127.0.0.1:8080/mcp/"}]), None).unwrap();
        assert_eq!(
            r.iter().next().unwrap().metadata_url,
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp/"
        );
        assert!(r.for_path("/mcp").is_some() && r.for_path("/other").is_none());
    }
}
