//! From [`RawConfig`] to [`Config`], one section at a time. The sections are
//! compiled in a fixed order, so of several problems the same one is always
//! reported first.

use std::collections::BTreeMap;

use super::issuer;
use super::raw::{RawClaimFormat, RawConfig, RawForward, RawForwardHeader, RawTokenSource};
use super::{
    CacheLimits, ClaimFormat, Config, Forward, ForwardClaim, Issuer, JwtRules, KeySource,
    PhantomFormat, TokenSource,
};
use crate::config_error::ConfigError;
use crate::consumer::{Consumers, ConsumersConfig, IdentityHeaderNames};
use crate::headers::{header_name, is_header_value, spelling_key, HeaderUse, METHOD_OVERRIDES};
use crate::pdp::Pdp;
use crate::policy::{PathSet, Policy};
use crate::resource::{Context as ResourceContext, IssuerFacts, Resources};
use crate::shared_cache::{Scope, SharedCache};
use crate::token_client::{IssuerRef, RawTokenClient, TokenClient};
use crate::uma::{RawUma, Uma, UmaIssuer};
use crate::upstream_oauth::{RawUpstreamOAuth, UpstreamOAuth};
use crate::wait::Waits;

const MAX_CLOCK_SKEW_SECONDS: u64 = 300;

/// `env` reads the filter's environment (`client_secret_env`).
pub(super) fn compile(
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    check_realm(&raw.realm)?;
    let rules = jwt_rules(&raw)?;
    let issuers = issuer::compile_all(raw.issuers, env)?;
    let fleet_cache = {
        let names: Vec<&str> = issuers.iter().map(|i| i.issuer.as_str()).collect();
        raw.fleet_cache
            .map(|f| crate::fleet_cache::FleetCache::compile(f, &names, env))
            .transpose()?
    };
    let shared_cache = shared_cache(
        raw.introspection_cache_bytes,
        raw.introspection_cache_entry_bytes,
    )?;
    let token_sources = token_sources(raw.token_sources)?;
    let (forward, claim_fields) = forward(raw.forward)?;

    let policy = raw
        .policy
        .as_ref()
        .map(Policy::compile)
        .transpose()
        .map_err(|e| ConfigError::new("policy", e.to_string()))?;
    let public_paths = PathSet::compile(&raw.public_paths)
        .map_err(|e| ConfigError::new("public_paths", e.to_string()))?;
    let scope_claims = scope_claims(raw.scope_claims)?;
    let identity = raw
        .identity_headers
        .compile()
        .map_err(|e| ConfigError::new(format!("identity_headers.{}", e.field), e.problem))?;
    let issuer_names: Vec<&str> = issuers.iter().map(|i| i.issuer.as_str()).collect();
    let consumers = Consumers::compile(
        &ConsumersConfig {
            consumers: raw.consumers,
            allow_unregistered_clients: raw.allow_unregistered_clients,
            anonymous: raw.anonymous,
        },
        &issuer_names,
    )?;
    let anonymous_paths = match consumers.anonymous() {
        Some(anonymous) => PathSet::compile(&anonymous.paths)
            .map_err(|e| ConfigError::new("anonymous.paths", e.to_string()))?,
        None => PathSet::default(),
    };
    let pdp = raw.pdp.as_ref().map(Pdp::compile).transpose()?;

    let clients = clients(raw.clients, &issuers, env)?;
    let client_names: Vec<&str> = clients.iter().map(|c| c.name.as_str()).collect();
    let upstream_oauth = upstream_oauth(raw.upstream_oauth, &client_names, &token_sources)?;
    let uma = raw
        .uma
        .map(|uma| compile_uma(uma, &issuers, &client_names))
        .transpose()?;

    let waits = Waits::compile(raw.waits)?;
    let jsonrpc = crate::body::BodyLimits::compile(raw.jsonrpc)?;
    let dpop = crate::dpop::DpopSettings::compile(raw.dpop.unwrap_or_default())?;
    let strip_headers = strip_headers(&forward, &claim_fields, &upstream_oauth, &identity)?;
    let (resources, mut issuers) = resources(
        raw.resources,
        issuers,
        &token_sources,
        policy.as_ref(),
        &dpop,
    )?;
    for issuer in &mut issuers {
        let scope = answer_scope(issuer, &rules);
        if let Some(introspection) = issuer.introspection.as_mut() {
            introspection.scope = scope;
        }
    }
    let mut warnings = warnings(policy.as_ref(), &public_paths, uma.as_ref());
    let revocation = match raw.revocation {
        Some(raw) => {
            let (revocation, warning) = crate::revocation::Revocation::compile(
                raw,
                &issuers,
                rules.max_lifetime_seconds,
                fleet_cache.as_ref(),
                env,
            )?;
            warnings.extend(warning);
            Some(revocation)
        }
        None => None,
    };

    Ok(Config {
        warnings,
        notes: Vec::new(),
        // A configuration with a `gluu` block defaults to Kong's bodies
        // (gluu::merge sets it); others to RFC 6750's.
        error_body: raw.error_body.unwrap_or_default(),
        strip_headers,
        realm: raw.realm,
        log_level: raw.log_level,
        issuers,
        rules,
        token_sources,
        forward,
        rejected_cache_bytes: raw.rejected_cache_bytes,
        shared_cache,
        fleet_cache,
        shared_data: raw.shared_data,
        waits,
        jsonrpc,
        crypto: raw.crypto,
        token_cache: CacheLimits {
            max_bytes: raw.token_cache_bytes,
            max_entries: raw.token_cache_entries,
        },
        policy,
        deny_by_default: raw.deny_by_default,
        public_paths,
        scope_claims,
        identity,
        consumers,
        anonymous_paths,
        pdp,
        clients,
        upstream_oauth,
        uma,
        dpop,
        client_certificate: raw.client_certificate,
        resources,
        revocation,
    })
}

/// `resources`, and the issuers with the audiences their tokens may have
/// anywhere (their own and those of the resources they serve).
fn resources(
    raw: Vec<crate::resource::RawResource>,
    mut issuers: Vec<Issuer>,
    token_sources: &[TokenSource],
    policy: Option<&Policy>,
    dpop: &crate::dpop::DpopSettings,
) -> Result<(Resources, Vec<Issuer>), ConfigError> {
    let facts: Vec<IssuerFacts> = issuers
        .iter()
        .map(|i| IssuerFacts {
            issuer: &i.issuer,
            dpop: i.dpop,
            certificate_bound: i.certificate_bound,
        })
        .collect();
    let resources = Resources::compile(
        raw,
        &ResourceContext {
            issuers: &facts,
            token_sources,
            policy,
            dpop_algorithms: &dpop.algorithms,
        },
    )?;
    for resource in resources.iter() {
        for &i in &resource.issuers {
            let Some(issuer) = issuers.get_mut(i) else {
                continue;
            };
            // "any" stays any.
            if issuer.audiences_anywhere.is_empty() {
                continue;
            }
            for aud in &resource.audiences {
                if !issuer.audiences_anywhere.contains(aud) {
                    issuer.audiences_anywhere.push(aud.clone());
                }
            }
        }
    }
    Ok((resources, issuers))
}

/// The realm is written into `WWW-Authenticate` as a quoted string.
fn check_realm(realm: &str) -> Result<(), ConfigError> {
    if realm.is_empty() || realm.contains(['"', '\\']) || realm.chars().any(char::is_control) {
        return Err(ConfigError::new(
            "realm",
            "must be non-empty text without quotes, backslashes or control characters",
        ));
    }
    Ok(())
}

fn jwt_rules(raw: &RawConfig) -> Result<JwtRules, ConfigError> {
    if raw.clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
        return Err(ConfigError::new(
            "clock_skew_seconds",
            format!(
                "{} is too lenient; at most {MAX_CLOCK_SKEW_SECONDS}",
                raw.clock_skew_seconds
            ),
        ));
    }
    if raw.max_lifetime_seconds == Some(0) {
        return Err(ConfigError::new(
            "max_lifetime_seconds",
            "must be positive when set",
        ));
    }
    Ok(JwtRules {
        clock_skew_seconds: raw.clock_skew_seconds,
        max_lifetime_seconds: raw.max_lifetime_seconds,
        require_exp: raw.require_exp,
    })
}

/// What accepting an introspection answer of `issuer` depends on: two
/// configurations share shared-data answers and in-flight markers for its
/// tokens exactly when these agree. The issuer, where its keys come from
/// (a signed answer's), its mode, the audiences its tokens may have
/// anywhere, the endpoint, the introspecting client and the answer's format
/// and lifetimes (`Introspection::answer_fingerprint`), and the claim rules
/// (skew, lifetime). Not the policy, forwarding, identity or waits: a reader
/// re-derives its grant from the stored answer with its own settings.
pub(crate) fn answer_scope(issuer: &Issuer, rules: &JwtRules) -> Scope {
    let mode: &[u8] = match issuer.mode {
        crate::introspection::Mode::Jwt => b"jwt",
        crate::introspection::Mode::Introspect => b"introspect",
        crate::introspection::Mode::JwtThenIntrospect => b"jwt_then_introspect",
    };
    let audiences = crate::cache::digest(
        &issuer
            .audiences_anywhere
            .iter()
            .map(|a| a.as_bytes())
            .collect::<Vec<_>>(),
    );
    let introspection = issuer
        .introspection
        .as_ref()
        .map(|x| x.answer_fingerprint())
        .unwrap_or_default();
    let max_lifetime = rules
        .max_lifetime_seconds
        .map_or([0xff; 8], u64::to_be_bytes);
    Scope::from_digest(&crate::cache::digest(&[
        b"oauth_pep answer scope 1",
        issuer.issuer.as_bytes(),
        &issuer.fetch_fingerprint(),
        mode,
        &audiences,
        &introspection,
        &rules.clock_skew_seconds.to_be_bytes(),
        &max_lifetime,
        &[u8::from(rules.require_exp)],
    ]))
}

fn shared_cache(max_bytes: usize, entry_bytes: usize) -> Result<SharedCache, ConfigError> {
    if !(SharedCache::min_entry_bytes()..=65_536).contains(&entry_bytes) {
        return Err(ConfigError::new(
            "introspection_cache_entry_bytes",
            format!(
                "must be between {} and 65536",
                SharedCache::min_entry_bytes()
            ),
        ));
    }
    Ok(SharedCache::new(max_bytes, entry_bytes))
}

fn token_sources(raw: Option<Vec<RawTokenSource>>) -> Result<Vec<TokenSource>, ConfigError> {
    match raw {
        None => Ok(vec![TokenSource::Header {
            name: "authorization".into(),
            prefix: Some("Bearer".into()),
        }]),
        Some(sources) if sources.is_empty() => Err(ConfigError::new(
            "token_sources",
            "must list at least one place to find the token",
        )),
        Some(sources) => sources
            .into_iter()
            .enumerate()
            .map(|(i, s)| token_source(s, &format!("token_sources[{i}]")))
            .collect(),
    }
}

fn token_source(raw: RawTokenSource, field: &str) -> Result<TokenSource, ConfigError> {
    match (raw.header, raw.query, raw.cookie) {
        (Some(header), None, None) => {
            let name = header_name(&header, &format!("{field}.header"), HeaderUse::Read)?;
            let prefix = match raw.prefix {
                Some(p) if p.trim().is_empty() => None,
                Some(p) => Some(p.trim().to_string()),
                None if name == "authorization" => Some("Bearer".to_string()),
                None => None,
            };
            Ok(TokenSource::Header { name, prefix })
        }
        (None, Some(q), None) if raw.prefix.is_none() && !q.is_empty() => Ok(TokenSource::Query(q)),
        (None, None, Some(c)) if raw.prefix.is_none() && !c.is_empty() => Ok(TokenSource::Cookie(c)),
        _ => Err(ConfigError::new(
            field,
            "must be exactly one of {\"header\": name[, \"prefix\": scheme]}, {\"query\": name}, {\"cookie\": name}",
        )),
    }
}

/// `forward`, and the field each of its claims came from (for
/// [`strip_headers`]'s errors).
fn forward(raw: RawForward) -> Result<(Forward, Vec<String>), ConfigError> {
    let mut claims = Vec::with_capacity(raw.claims.len() + raw.headers.len());
    let mut claim_fields = Vec::with_capacity(claims.capacity());
    for (claim, header) in raw.claims {
        let field = format!("forward.claims.{claim}");
        let header = header_name(&header, &field, HeaderUse::Upstream)?;
        claims.push(ForwardClaim {
            claim: Some(claim),
            header,
            format: ClaimFormat::Text,
        });
        claim_fields.push(field);
    }
    for (i, h) in raw.headers.into_iter().enumerate() {
        let field = format!("forward.headers[{i}]");
        claims.push(forward_header(h, &field)?);
        claim_fields.push(field);
    }
    let payload_header = raw
        .payload_header
        .map(|h| header_name(&h, "forward.payload_header", HeaderUse::Upstream))
        .transpose()?;
    let phantom_token_format = raw.phantom_token_format;
    let phantom_token_header = raw
        .phantom_token_header
        .map(|h| match phantom_token_format {
            // Gluu's phantom token replaces the caller's token upstream.
            PhantomFormat::Jwt if h.eq_ignore_ascii_case("authorization") => {
                Ok("authorization".to_string())
            }
            _ => header_name(&h, "forward.phantom_token_header", HeaderUse::Upstream),
        })
        .transpose()?;
    if phantom_token_header.is_none() && phantom_token_format != PhantomFormat::Json {
        return Err(ConfigError::new(
            "forward.phantom_token_format",
            "needs `forward.phantom_token_header`",
        ));
    }
    let forward = Forward {
        claims,
        payload_header,
        phantom_token_header,
        phantom_token_format,
        hide_credentials: raw.hide_credentials,
    };
    Ok((forward, claim_fields))
}

fn forward_header(raw: RawForwardHeader, field: &str) -> Result<ForwardClaim, ConfigError> {
    let header = header_name(&raw.header, &format!("{field}.header"), HeaderUse::Upstream)?;
    if raw.claim.as_deref() == Some("") {
        return Err(ConfigError::new(
            format!("{field}.claim"),
            "must name a claim; leave it out to send the whole payload",
        ));
    }
    let format = match (raw.format, raw.separator) {
        (Some(RawClaimFormat::List), sep) => ClaimFormat::List(sep.unwrap_or_else(|| ",".into())),
        (_, Some(_)) => {
            return Err(ConfigError::new(
                format!("{field}.separator"),
                "only goes with `\"format\": \"list\"`",
            ))
        }
        (None, None) => ClaimFormat::Auto,
        (Some(RawClaimFormat::String), None) => ClaimFormat::String,
        (Some(RawClaimFormat::Base64), None) => ClaimFormat::Base64,
        (Some(RawClaimFormat::Jwt), None) => ClaimFormat::Jwt,
        (Some(RawClaimFormat::Urlencoded), None) => ClaimFormat::Urlencoded,
    };
    if let ClaimFormat::List(sep) = &format {
        if !is_header_value(sep) {
            return Err(ConfigError::new(
                format!("{field}.separator"),
                "cannot be carried in a header",
            ));
        }
    }
    Ok(ForwardClaim {
        claim: raw.claim,
        header,
        format,
    })
}

fn scope_claims(raw: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    match raw {
        None => Ok(vec!["scope".to_string(), "scp".to_string()]),
        Some(claims) if claims.is_empty() || claims.iter().any(String::is_empty) => Err(
            ConfigError::new("scope_claims", "must list non-empty claim names"),
        ),
        Some(claims) => Ok(claims),
    }
}

/// `clients`, in name order; each may take its token endpoint from an issuer.
fn clients(
    raw: BTreeMap<String, RawTokenClient>,
    issuers: &[Issuer],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<TokenClient>, ConfigError> {
    let issuer_refs: Vec<IssuerRef> = issuers
        .iter()
        .map(|i| IssuerRef {
            issuer: &i.issuer,
            discovery: matches!(i.source, KeySource::Discovery(_)),
            upstream: (!i.upstream.is_empty()).then_some(i.upstream.as_str()),
            fetched_from: i.fetch_fingerprint(),
        })
        .collect();
    let mut clients = Vec::with_capacity(raw.len());
    for (name, client) in raw {
        let field = format!("clients.{name}");
        clients.push(TokenClient::compile(
            &name,
            client,
            &field,
            &issuer_refs,
            env,
        )?);
    }
    Ok(clients)
}

/// Rules may name a client (by `client_names`) and must not take a header
/// the token is read from.
fn upstream_oauth(
    raw: Vec<RawUpstreamOAuth>,
    client_names: &[&str],
    token_sources: &[TokenSource],
) -> Result<Vec<UpstreamOAuth>, ConfigError> {
    let token_headers: Vec<&str> = token_sources
        .iter()
        .filter_map(|s| match s {
            TokenSource::Header { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    raw.into_iter()
        .enumerate()
        .map(|(i, rule)| {
            UpstreamOAuth::compile(
                rule,
                &format!("upstream_oauth[{i}]"),
                client_names,
                &token_headers,
            )
        })
        .collect()
}

fn compile_uma(raw: RawUma, issuers: &[Issuer], client_names: &[&str]) -> Result<Uma, ConfigError> {
    let issuers: Vec<UmaIssuer> = issuers
        .iter()
        .map(|i| UmaIssuer {
            issuer: &i.issuer,
            upstream: (!i.upstream.is_empty()).then_some(i.upstream.as_str()),
            uma2_discovery: matches!(&i.source, KeySource::Discovery(url)
                if url.path.ends_with("/.well-known/uma2-configuration")),
        })
        .collect();
    Uma::compile(raw, &issuers, client_names)
}

/// Every header this filter may set upstream, as spelling keys. Two sources
/// for one header would leave its value to ordering, so they are refused.
fn strip_headers(
    forward: &Forward,
    claim_fields: &[String],
    upstream_oauth: &[UpstreamOAuth],
    identity: &IdentityHeaderNames,
) -> Result<Vec<String>, ConfigError> {
    let identity_names = identity.all();
    let mut forwarded: Vec<(String, &str)> = claim_fields
        .iter()
        .zip(&forward.claims)
        .map(|(field, c)| (field.clone(), c.header.as_str()))
        .collect();
    forwarded.extend(
        forward
            .payload_header
            .as_deref()
            .map(|h| ("forward.payload_header".to_string(), h)),
    );
    // `authorization` carries the caller's token in: never stripped.
    forwarded.extend(
        forward
            .phantom_token_header
            .as_deref()
            .filter(|h| *h != "authorization")
            .map(|h| ("forward.phantom_token_header".to_string(), h)),
    );
    for (i, rule) in upstream_oauth.iter().enumerate() {
        for header in rule.owned_headers() {
            // `authorization` is replaced where a rule applies, never stripped
            // elsewhere: it carries the client's own token.
            if header != "authorization" {
                forwarded.push((format!("upstream_oauth[{i}]"), header));
            }
        }
    }
    for (i, (field, header)) in forwarded.iter().enumerate() {
        if identity_names
            .iter()
            .any(|name| spelling_key(name) == spelling_key(header))
        {
            return Err(ConfigError::new(
                field.as_str(),
                format!("\"{header}\" is already set by `identity_headers`; pick another name or rename the identity header"),
            ));
        }
        if forwarded
            .iter()
            .skip(i + 1)
            .any(|(_, other)| spelling_key(other) == spelling_key(header))
        {
            return Err(ConfigError::new(
                field.as_str(),
                format!("\"{header}\" is used twice"),
            ));
        }
    }
    let mut strip_headers: Vec<String> = forwarded.iter().map(|(_, h)| spelling_key(h)).collect();
    strip_headers.extend(identity_names.into_iter().map(spelling_key));
    strip_headers.extend(METHOD_OVERRIDES.iter().copied().map(spelling_key));
    strip_headers.sort_unstable();
    strip_headers.dedup();
    Ok(strip_headers)
}

fn warnings(policy: Option<&Policy>, public_paths: &PathSet, uma: Option<&Uma>) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(policy) = policy {
        warnings.extend(policy.warnings().iter().cloned());
        for (public, rule) in policy.shadowed_by(public_paths) {
            warnings.push(format!(
                "`public_paths` entry \"{public}\" overlaps the policy rule \"{rule}\": on the paths both match, the public path wins and the rule is never checked"
            ));
        }
    }
    if let Some(uma) = uma {
        warnings.extend(uma.warnings());
    }
    warnings
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crate::config::tests::{err, refused_with, SECRET};
    use crate::config::{ClaimFormat, Config};

    const SCOPED: &str = r#"{"issuers":[{"issuer":"https://as.test","audiences":["api"],"mode":"introspect",
        "introspection":{"endpoint":"https://as.test/introspect","upstream":"as",
        "client_id":"pep","client_secret":"s3cret-of-the-pep"}}]}"#;

    /// The answer scope of the issuer `https://as.test` in [`SCOPED`] with
    /// `from` replaced by `to`.
    fn scope_of(from: &str, to: &str) -> crate::shared_cache::Scope {
        assert!(SCOPED.contains(from), "{from}");
        let json = SCOPED.replacen(from, to, 1);
        let c = Config::from_json(json.as_bytes(), &|_| None).unwrap();
        let issuer = c
            .issuers
            .iter()
            .find(|i| i.issuer == "https://as.test")
            .unwrap();
        issuer.introspection.as_ref().unwrap().scope
    }

    #[test]
    fn answers_are_shared_across_configurations_that_accept_them_alike() {
        let base = scope_of("", "");
        assert_ne!(base, crate::shared_cache::Scope::default());
        // Nothing an answer's acceptance depends on: the same scope.
        for (from, to) in [
            (
                r#""upstream":"as","#,
                r#""upstream":"as","timeout_ms":1500,"#,
            ),
            (
                r#""upstream":"as","#,
                r#""upstream":"as","budget":{"per_second":5},"#,
            ),
            (
                r#""upstream":"as","#,
                r#""upstream":"as","token_prefix":"op_","#,
            ),
            (
                "]}",
                r#"],"policy":{"GET /a":"read"},"public_paths":["/health"],"deny_by_default":false}"#,
            ),
            ("]}", r#"],"forward":{"claims":{"sub":"x-sub"}}}"#),
            (
                "]}",
                r#"],"waits":{"max_per_key":8},"introspection_cache_bytes":65536}"#,
            ),
            // Another issuer listed first: this one's index changes, its
            // scope does not (entries no longer name issuers by index).
            (
                r#"{"issuers":["#,
                r#"{"issuers":[{"issuer":"https://other.test","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"},"#,
            ),
        ] {
            assert_eq!(scope_of(from, to), base, "{to}");
        }
    }

    #[test]
    fn configurations_that_accept_answers_differently_never_share_them() {
        let mut seen = vec![scope_of("", "")];
        for (from, to) in [
            ("https://as.test/introspect", "https://as.test/other"),
            (r#""upstream":"as","#, r#""upstream":"as2","#),
            (
                r#""upstream":"as","#,
                r#""upstream":"as","authority":"as.internal","#,
            ),
            ("s3cret-of-the-pep", "another-secret-here"),
            (r#""client_id":"pep""#, r#""client_id":"pep2""#),
            (
                r#""upstream":"as","#,
                r#""upstream":"as","max_ttl_seconds":60,"#,
            ),
            (
                r#""upstream":"as","#,
                r#""upstream":"as","negative_ttl_seconds":0,"#,
            ),
            (
                r#""upstream":"as","#,
                r#""upstream":"as","failure_mode":"serve_stale","#,
            ),
            (
                r#""upstream":"as","#,
                r#""upstream":"as","token_type_hint":"","#,
            ),
            (r#"["api"]"#, r#"["api","other"]"#),
            (
                r#""mode":"introspect""#,
                r#""mode":"jwt_then_introspect","shared_secret":"0123456789abcdef0123456789abcdef""#,
            ),
            (
                r#""issuer":"https://as.test""#,
                r#""issuer":"https://as.test","jwks_uri":"https://as.test/jwks","upstream":"as""#,
            ),
            ("]}", r#"],"clock_skew_seconds":5}"#),
            ("]}", r#"],"max_lifetime_seconds":600}"#),
        ] {
            let scope = scope_of(from, to);
            assert!(!seen.contains(&scope), "{to}");
            seen.push(scope);
        }
        // The answer format (signed answers need the issuer's keys).
        let keys = (
            r#""mode":"introspect""#,
            r#""mode":"introspect","shared_secret":"0123456789abcdef0123456789abcdef""#,
        );
        let json = SCOPED.replacen(keys.0, keys.1, 1);
        let signed = json.replacen(
            r#""upstream":"as","#,
            r#""upstream":"as","response":"jwt","#,
            1,
        );
        let scope = |json: &str| {
            let c = Config::from_json(json.as_bytes(), &|_| None).unwrap();
            c.issuers[0].introspection.as_ref().unwrap().scope
        };
        assert_ne!(scope(&json), scope(&signed));
        // And another issuer's name.
        let json = SCOPED.replace("https://as.test\"", "https://as2.test\"");
        let c = Config::from_json(json.as_bytes(), &|_| None).unwrap();
        assert!(!seen.contains(&c.issuers[0].introspection.as_ref().unwrap().scope));
    }

    #[test]
    fn method_override_headers_are_stripped_in_every_spelling() {
        let json = format!(
            r#"{{"issuers":[{{"issuer":"https://a","audiences":["api"],"shared_secret":"{SECRET}"}}]}}"#
        );
        let c = Config::from_json(json.as_bytes(), &|_| None).unwrap();
        for name in [
            "x-http-method-override",
            "X_HTTP_Method_Override",
            "x-http-method",
            "x_method-override",
        ] {
            assert!(
                c.strip_headers
                    .binary_search_by(|key| crate::headers::cmp_spelling(key, name))
                    .is_ok(),
                "{name}"
            );
        }
    }

    #[test]
    fn errors_name_the_field_and_the_problem() {
        let table: &[(&str, &str)] = &[
            ("", "the configuration is empty"),
            ("{", "EOF"),
            (
                r#"{"issuers":[],"bogus":1}"#,
                "`bogus`: unknown field `bogus`",
            ),
            (
                r#"{"clock_skew_seconds":3600,"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`clock_skew_seconds`: 3600 is too lenient",
            ),
            (
                r#"{"token_sources":[{"query":"a","cookie":"b"}],"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`token_sources[0]`: must be exactly one",
            ),
            (
                r#"{"forward":{"claims":{"sub":"bad header"}},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`forward.claims.sub`: \"bad header\" is not a valid",
            ),
            (
                r#"{"forward":{"claims":{"scope":"x-authenticated-scope"}},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`forward.claims.scope`: \"x-authenticated-scope\" is already set",
            ),
            (
                r#"{"forward":{"claims":{"sub":"x-a","cid":"x-a"}},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "is used twice",
            ),
            (
                r#"{"forward":{"payload_header":"content-length"},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`forward.payload_header`: \"content-length\" is reserved",
            ),
            (
                r#"{"forward":{"claims":{"sub":"host"}},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`forward.claims.sub`: \"host\" is reserved",
            ),
            (
                r#"{"forward":{"claims":{"sub":"X_Forwarded_For"}},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`forward.claims.sub`: \"X_Forwarded_For\" is reserved",
            ),
            (
                r#"{"identity_headers":{"client_id":"x-envoy-client"},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`identity_headers.client_id`: \"x-envoy-client\" is reserved",
            ),
            (
                r#"{"identity_headers":{"client_id":"x-request-id"},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "\"x-request-id\" is reserved",
            ),
            (
                r#"{"forward":{"claims":{"sub":"x_authenticated_scope"}},"issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "is already set by `identity_headers`",
            ),
            (
                r#"{"realm":"a\"b","issuers":[{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`realm`",
            ),
        ];
        refused_with(table);
    }

    #[test]
    fn forwarded_header_names_are_lowercased_and_listed_for_stripping() {
        let json = format!(
            r#"{{"forward":{{"claims":{{"sub":"X-Jwt-Sub","client_id":"x-client"}},"payload_header":"x-jwt-payload"}},"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}]}}"#
        );
        let c = Config::from_json(json.as_bytes(), &|_| None).unwrap();
        for name in [
            "x-client",
            "x-jwt-payload",
            "x-jwt-sub",
            "x-authenticated-scope",
            "x-anonymous-consumer",
        ] {
            assert!(c.strip_headers.iter().any(|h| h == name), "{name}");
        }
    }

    #[test]
    fn public_paths_that_shadow_policy_rules_are_warned_about() {
        let json = format!(
            r#"{{"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}],
                "public_paths":["/health","/docs/??"],
                "policy":{{"GET /docs/{{^v[0-9]+$}}":"read","GET /api/??":"read","GET /health/deep":"admin"}}}}"#
        );
        let c = Config::from_json(json.as_bytes(), &|_| None).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let w = c.warnings.first().unwrap();
        assert!(
            w.contains("\"/docs/??\"") && w.contains("/docs/{^v[0-9]+$}"),
            "{w}"
        );
        let json = format!(
            r#"{{"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}],
                "public_paths":["/health"],"policy":{{"* /??":"read"}}}}"#
        );
        let c = Config::from_json(json.as_bytes(), &|_| None).unwrap();
        assert_eq!(
            c.warnings.len(),
            1,
            "a catch-all rule overlaps every public path"
        );
    }

    #[test]
    fn forward_headers_formats_are_checked() {
        let with = |headers: &str| {
            format!(
                r#"{{"forward":{{"headers":{headers}}},"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}]}}"#
            )
        };
        let c = Config::from_json(
            with(r#"[{"header":"X-G","claim":"groups","format":"list","separator":";"}]"#)
                .as_bytes(),
            &|_| None,
        )
        .unwrap();
        assert_eq!(
            c.forward.claims.first().unwrap().format,
            ClaimFormat::List(";".into())
        );
        assert!(
            err(&with(r#"[{"header":"x-g","claim":"g","separator":";"}]"#))
                .contains("`forward.headers[0].separator`: only goes with")
        );
        assert!(err(&with(r#"[{"header":"host","claim":"g"}]"#))
            .contains("`forward.headers[0].header`: \"host\" is reserved"));
        let phantom = format!(
            r#"{{"forward":{{"phantom_token_header":"authorization"}},"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}]}}"#
        );
        assert!(
            err(&phantom).contains("\"authorization\" is reserved"),
            "only the jwt format may replace authorization"
        );
    }
}
