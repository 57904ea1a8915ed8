//! Upstream OAuth (Kong's `upstream-oauth`): the gateway sends its own
//! access token, got by client credentials ([`crate::token_client`]), to the
//! upstream a rule names, on the paths and methods it names. The client's own
//! token is still checked first wherever the policy needs one.
//!
//! # Where the token may go
//!
//! The filter runs for every virtual host of its HTTP connection manager, and
//! the caller chooses the virtual host (and so the upstream) with `Host` or an
//! absolute-form target. So every rule says where its token may go: the
//! `:authority` it applies to, and/or the virtual host, route or cluster the
//! host picked ([`Routing`]); a rule without any of them is refused at load.
//! A rule covers callers let through without a verified token (public paths,
//! the anonymous consumer) only when it says `anonymous: true`.

use serde::Deserialize;

use crate::config_error::ConfigError;
use crate::exchange::{Exchange, RawExchange};
use crate::headers::{header_name, HeaderUse};
use crate::policy::PathSet;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamOAuth {
    /// A name from `clients`.
    client: String,
    /// The request `:authority` values (`host` or `host:port`) the rule
    /// applies to, compared as the host routes them.
    #[serde(default)]
    authorities: Vec<String>,
    /// Envoy virtual host names (`xds.virtual_host_name`).
    #[serde(default)]
    virtual_hosts: Vec<String>,
    /// Envoy route names (`xds.route_name`).
    #[serde(default)]
    routes: Vec<String>,
    /// Envoy cluster names (`xds.cluster_name`).
    #[serde(default)]
    clusters: Vec<String>,
    /// Whether callers without a verified token (public paths, the anonymous
    /// consumer) get the gateway's token too.
    #[serde(default)]
    anonymous: bool,
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
    /// Send a token exchanged for the caller's (RFC 8693) instead of the
    /// client's own.
    exchange: Option<RawExchange>,
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

/// Where the host routes a request, as it reports it (Envoy's `xds.*`
/// attributes, read before the filter's own path rewrite): what rules bound
/// to a virtual host, a route or a cluster are compared with. `None` where
/// the host did not say (or was not asked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Routing<'a> {
    pub virtual_host: Option<&'a str>,
    pub route: Option<&'a str>,
    pub cluster: Option<&'a str>,
}

/// Which of [`Routing`]'s facts some rule compares, so that the glue asks
/// the host for those only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoutingNeeds {
    pub virtual_host: bool,
    pub route: bool,
    pub cluster: bool,
}

impl RoutingNeeds {
    pub fn any(&self) -> bool {
        self.virtual_host || self.route || self.cluster
    }
}

/// Where one rule's token may go; every list given must match (each by any
/// of its entries).
#[derive(Debug)]
struct Destination {
    /// Lowercase, port as written.
    authorities: Vec<String>,
    virtual_hosts: Vec<String>,
    routes: Vec<String>,
    clusters: Vec<String>,
}

impl Destination {
    fn admits(&self, authority: Option<&str>, routing: Routing) -> bool {
        let listed = |list: &[String], fact: Option<&str>| {
            list.is_empty() || fact.is_some_and(|f| list.iter().any(|l| l == f))
        };
        let authority_listed = self.authorities.is_empty()
            || authority
                .is_some_and(|a| self.authorities.iter().any(|l| l.eq_ignore_ascii_case(a)));
        authority_listed
            && listed(&self.virtual_hosts, routing.virtual_host)
            && listed(&self.routes, routing.route)
            && listed(&self.clusters, routing.cluster)
    }
}

#[derive(Debug)]
pub struct UpstreamOAuth {
    /// Index into `Config::clients`.
    pub client: usize,
    destination: Destination,
    /// Whether callers let through without a verified token get it too.
    pub anonymous: bool,
    paths: Option<PathSet>,
    methods: Vec<String>,
    /// Gets `Bearer <token>`.
    pub header: String,
    pub credential: ClientCredential,
    /// The token sent is exchanged for the caller's (RFC 8693), not the
    /// client's own.
    pub exchange: Option<Exchange>,
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
        let destination = destination(&raw, field)?;
        let exchange = match raw.exchange {
            Some(_) if raw.anonymous => {
                return Err(ConfigError::new(
                    f("exchange"),
                    "cannot go with `anonymous: true`: a caller without a verified token has none to exchange",
                ))
            }
            Some(x) => Some(Exchange::compile(x, &f("exchange"))?),
            None => None,
        };
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
            destination,
            anonymous: raw.anonymous,
            paths,
            methods,
            header,
            credential,
            exchange,
        })
    }

    /// Whether this rule covers the request: its `authority` (the
    /// `:authority` as the host routes on it) and `routing` are where the
    /// rule's token may go, and its method and (normalised) `path` are the
    /// rule's. A rule for `GET` covers `HEAD` too, as the policy does:
    /// servers answer `HEAD` with their `GET` handler, so it must not reach
    /// them with the caller's token where `GET` gets the gateway's.
    pub fn applies(
        &self,
        method: &str,
        path: &str,
        authority: Option<&str>,
        routing: Routing,
    ) -> bool {
        let lists = |m: &str| {
            self.methods
                .iter()
                .any(|listed| listed.eq_ignore_ascii_case(m))
        };
        let method_covered = self.methods.is_empty()
            || lists(method)
            || (method.eq_ignore_ascii_case("HEAD") && lists("GET"));
        self.destination.admits(authority, routing)
            && method_covered
            && self.paths.as_ref().is_none_or(|p| p.matches(path))
    }

    /// Whether the rule is bound to what Envoy picks again once the filter
    /// rewrites `:path` (the route, and with it the cluster); the virtual
    /// host and the authority do not change with the path.
    pub fn bound_to_route(&self) -> bool {
        !self.destination.routes.is_empty() || !self.destination.clusters.is_empty()
    }

    /// The [`Routing`] facts this rule compares.
    pub fn routing_needs(&self) -> RoutingNeeds {
        RoutingNeeds {
            virtual_host: !self.destination.virtual_hosts.is_empty(),
            route: !self.destination.routes.is_empty(),
            cluster: !self.destination.clusters.is_empty(),
        }
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

/// Where a rule's token may go, checked: at least one of the four lists,
/// each entry usable.
fn destination(raw: &RawUpstreamOAuth, field: &str) -> Result<Destination, ConfigError> {
    if raw.authorities.is_empty()
        && raw.virtual_hosts.is_empty()
        && raw.routes.is_empty()
        && raw.clusters.is_empty()
    {
        return Err(ConfigError::new(
            field,
            "must say where the gateway's token may go: `authorities` (the request's `:authority`), or Envoy's `virtual_hosts`, `routes` or `clusters`; the filter runs for every virtual host of its HTTP connection manager, and without one a caller sends the token to any upstream by choosing `Host`",
        ));
    }
    let mut authorities = Vec::with_capacity(raw.authorities.len());
    for (i, authority) in raw.authorities.iter().enumerate() {
        check_authority(authority)
            .map_err(|why| ConfigError::new(format!("{field}.authorities[{i}]"), why))?;
        authorities.push(authority.to_ascii_lowercase());
    }
    let names = |list: &[String], name: &str| -> Result<Vec<String>, ConfigError> {
        match list.iter().position(|n| n.is_empty()) {
            Some(i) => Err(ConfigError::new(
                format!("{field}.{name}[{i}]"),
                "must not be empty",
            )),
            None => Ok(list.to_vec()),
        }
    };
    Ok(Destination {
        authorities,
        virtual_hosts: names(&raw.virtual_hosts, "virtual_hosts")?,
        routes: names(&raw.routes, "routes")?,
        clusters: names(&raw.clusters, "clusters")?,
    })
}

/// `host` or `host:port` as a request's `:authority` carries it: a DNS name
/// or IPv4 address (letters, digits, `-`, `.`), or an IPv6 literal in
/// brackets, then optionally `:` and a port (1–65535). No scheme, path,
/// user info or wildcard: the comparison is exact.
fn check_authority(authority: &str) -> Result<(), String> {
    let bad = || {
        format!("{authority:?} is not an authority (`host` or `host:port`, e.g. \"backend.internal\" or \"backend.internal:8443\")")
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
            if inside.is_empty()
                || !inside
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return Err(bad());
            }
            match after {
                "" => (inside, None),
                _ => (inside, Some(after.strip_prefix(':').ok_or_else(bad)?)),
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let host_ok = authority.starts_with('[')
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65_535).contains(&n))
    });
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The first rule that covers the request.
pub fn rule_for<'a>(
    rules: &'a [UpstreamOAuth],
    method: &str,
    path: &str,
    authority: Option<&str>,
    routing: Routing,
) -> Option<&'a UpstreamOAuth> {
    rules
        .iter()
        .find(|r| r.applies(method, path, authority, routing))
}

/// The [`Routing`] facts some rule compares.
pub fn routing_needs(rules: &[UpstreamOAuth]) -> RoutingNeeds {
    rules
        .iter()
        .map(UpstreamOAuth::routing_needs)
        .fold(RoutingNeeds::default(), |a, b| RoutingNeeds {
            virtual_host: a.virtual_host || b.virtual_host,
            route: a.route || b.route,
            cluster: a.cluster || b.cluster,
        })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn compiled(json: &str) -> Result<UpstreamOAuth, ConfigError> {
        let raw: RawUpstreamOAuth = serde_json::from_str(json).unwrap();
        UpstreamOAuth::compile(raw, "upstream_oauth[0]", &["backend"], &["authorization"])
    }

    fn rule(json: &str) -> UpstreamOAuth {
        compiled(json).unwrap()
    }

    const BACKEND: Option<&str> = Some("backend.internal");

    #[test]
    fn a_get_rule_covers_head_and_nothing_else_it_does_not_list() {
        let get = rule(
            r#"{"client":"backend","authorities":["backend.internal"],"paths":["/backend/??"],"methods":["GET"]}"#,
        );
        let at = |r: &UpstreamOAuth, m: &str, p: &str| r.applies(m, p, BACKEND, Routing::default());
        assert!(at(&get, "GET", "/backend/reports"));
        assert!(
            at(&get, "HEAD", "/backend/reports"),
            "HEAD runs GET's handler"
        );
        assert!(at(&get, "head", "/backend/reports"));
        assert!(!at(&get, "POST", "/backend/reports"));
        assert!(!at(&get, "GET", "/other"));
        let post =
            rule(r#"{"client":"backend","authorities":["backend.internal"],"methods":["POST"]}"#);
        assert!(!at(&post, "HEAD", "/x"), "only GET lends its rule to HEAD");
        assert!(at(
            &rule(r#"{"client":"backend","authorities":["backend.internal"]}"#),
            "OPTIONS",
            "/x"
        ));
    }

    #[test]
    fn a_rule_must_say_where_its_token_may_go() {
        let e = compiled(r#"{"client":"backend","paths":["/backend/??"]}"#)
            .err()
            .unwrap();
        assert_eq!(e.field, "upstream_oauth[0]");
        assert!(e.problem.contains("`authorities`"), "{}", e.problem);
        for (json, field) in [
            (
                r#"{"client":"backend","authorities":["https://b"]}"#,
                "upstream_oauth[0].authorities[0]",
            ),
            (
                r#"{"client":"backend","authorities":["b/x"]}"#,
                "upstream_oauth[0].authorities[0]",
            ),
            (
                r#"{"client":"backend","authorities":["a","*.b"]}"#,
                "upstream_oauth[0].authorities[1]",
            ),
            (
                r#"{"client":"backend","authorities":["b:0"]}"#,
                "upstream_oauth[0].authorities[0]",
            ),
            (
                r#"{"client":"backend","authorities":["b:65536"]}"#,
                "upstream_oauth[0].authorities[0]",
            ),
            (
                r#"{"client":"backend","authorities":["b:"]}"#,
                "upstream_oauth[0].authorities[0]",
            ),
            (
                r#"{"client":"backend","authorities":["u@b"]}"#,
                "upstream_oauth[0].authorities[0]",
            ),
            (
                r#"{"client":"backend","authorities":[""]}"#,
                "upstream_oauth[0].authorities[0]",
            ),
            (
                r#"{"client":"backend","authorities":["[::1"]}"#,
                "upstream_oauth[0].authorities[0]",
            ),
            (
                r#"{"client":"backend","routes":["r",""]}"#,
                "upstream_oauth[0].routes[1]",
            ),
            (
                r#"{"client":"backend","clusters":[""]}"#,
                "upstream_oauth[0].clusters[0]",
            ),
            (
                r#"{"client":"backend","virtual_hosts":[""]}"#,
                "upstream_oauth[0].virtual_hosts[0]",
            ),
        ] {
            let e = compiled(json)
                .err()
                .unwrap_or_else(|| panic!("{json} accepted"));
            assert_eq!(e.field, field, "{json}");
        }
        for ok in [
            "backend.internal",
            "Backend.Internal:8443",
            "10.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
        ] {
            assert!(
                compiled(&format!(r#"{{"client":"backend","authorities":["{ok}"]}}"#)).is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn the_authority_is_compared_as_envoy_routes_it() {
        let r = rule(r#"{"client":"backend","authorities":["Backend.Internal"]}"#);
        let at = |authority: Option<&str>| r.applies("GET", "/", authority, Routing::default());
        assert!(at(Some("backend.internal")));
        assert!(
            at(Some("BACKEND.internal")),
            "host names are case-insensitive"
        );
        // Envoy picks virtual hosts by the authority as it is, port included
        // (unless its HCM strips ports first, which the filter then sees).
        for other in [
            "backend.internal:80",
            "backend.internal:443",
            "backend.internal.",
            "www.example.com",
            "backend.internal.evil",
            "",
        ] {
            assert!(!at(Some(other)), "{other}");
        }
        assert!(!at(None));
        let with_port = rule(r#"{"client":"backend","authorities":["backend.internal:8443"]}"#);
        assert!(with_port.applies(
            "GET",
            "/",
            Some("backend.internal:8443"),
            Routing::default()
        ));
        assert!(!with_port.applies("GET", "/", BACKEND, Routing::default()));
    }

    #[test]
    fn routing_facts_must_all_match_and_be_known() {
        let r = rule(
            r#"{"client":"backend","authorities":["backend.internal"],"virtual_hosts":["backend"],"clusters":["backend","backend-canary"]}"#,
        );
        let routing = |vh: &'static str, cluster: &'static str| Routing {
            virtual_host: Some(vh),
            route: Some("any"),
            cluster: Some(cluster),
        };
        assert!(r.applies("GET", "/", BACKEND, routing("backend", "backend")));
        assert!(r.applies("GET", "/", BACKEND, routing("backend", "backend-canary")));
        assert!(!r.applies("GET", "/", BACKEND, routing("www", "backend")));
        assert!(!r.applies("GET", "/", BACKEND, routing("backend", "www")));
        assert!(!r.applies("GET", "/", Some("www"), routing("backend", "backend")));
        assert!(
            !r.applies("GET", "/", BACKEND, Routing::default()),
            "a fact the host did not tell never matches"
        );
        assert!(r.bound_to_route());
        assert_eq!(
            r.routing_needs(),
            RoutingNeeds {
                virtual_host: true,
                route: false,
                cluster: true
            }
        );
        let by_vhost = rule(r#"{"client":"backend","virtual_hosts":["backend"]}"#);
        assert!(
            !by_vhost.bound_to_route(),
            "a new path keeps the virtual host"
        );
        assert!(by_vhost.applies("GET", "/", None, routing("backend", "x")));
        assert!(
            !by_vhost.anonymous,
            "token-less callers are left out by default"
        );
    }
}
