//! `issuers`: each trusted authorization server, with where its keys come
//! from, what its tokens must say, and whether they are introspected.

use std::rc::Rc;

use ct_codecs::{Base64UrlSafeNoPadding, Decoder as _};
use serde_json::Value;

use super::raw::{RawAudiences, RawDiscovery, RawIssuer, RawProfile};
use super::{Issuer, KeySource};
use crate::callout::Url;
use crate::config_error::ConfigError;
use crate::introspection::{Introspection, Mode};
use crate::issuer::AccessTokenProfile;
use crate::jwks::{default_undeclared_rsa, Alg, KeyAlgs, KeySet};

const MIN_SECRET_BYTES: usize = 32;

const SECRET_FORMS: &str = "must be a string or {\"base64url\": \"…\"}";

pub(super) fn compile_all(
    raw: Vec<RawIssuer>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Issuer>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::new(
            "issuers",
            "at least one issuer is required: list it in `issuers`, or give a `gluu` block",
        ));
    }
    let mut issuers = Vec::with_capacity(raw.len());
    for (i, issuer) in raw.into_iter().enumerate() {
        let field = format!("issuers[{i}]");
        let compiled = compile(issuer, &field, env)?;
        if issuers
            .iter()
            .any(|other: &Issuer| other.issuer == compiled.issuer)
        {
            return Err(ConfigError::new(
                format!("{field}.issuer"),
                format!("\"{}\" is listed twice", compiled.issuer),
            ));
        }
        issuers.push(compiled);
    }
    let unprefixed: Vec<usize> = issuers
        .iter()
        .enumerate()
        .filter(|(_, i)| {
            i.introspection
                .as_ref()
                .is_some_and(|x| x.token_prefix.is_none())
        })
        .map(|(index, _)| index)
        .collect();
    if let [_, second, ..] = unprefixed.as_slice() {
        return Err(ConfigError::new(
            format!("issuers[{second}].introspection.token_prefix"),
            "is required: another issuer already introspects every opaque token without a prefix, so which one asks would be a guess",
        ));
    }
    Ok(issuers)
}

fn compile(
    mut raw: RawIssuer,
    field: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Issuer, ConfigError> {
    let f = |name: &str| format!("{field}.{name}");
    if raw.issuer.is_empty() {
        return Err(ConfigError::new(f("issuer"), "must not be empty"));
    }
    let shared_secret = raw
        .shared_secret
        .take()
        .map(|s| secret_bytes(s).map_err(|e| ConfigError::new(f("shared_secret"), e)))
        .transpose()?;
    let listed = raw.algorithms.is_some();
    let algorithms = algorithms(
        raw.algorithms.take(),
        shared_secret.is_some(),
        &f("algorithms"),
    )?;
    // PS* is checked in wasm: an RSA key without `alg` serves it only where
    // the configuration asks for it (see `KeyAlgs`).
    let undeclared_rsa = if listed {
        algorithms.clone()
    } else {
        default_undeclared_rsa(&algorithms)
    };
    let discovery = raw.discovery.document(&f("discovery"))?;
    let keyless = keyless(&raw, discovery.is_some(), shared_secret.is_some(), field)?;
    // Without keys, every token of the issuer is introspected.
    let mode = if keyless { Mode::Introspect } else { raw.mode };
    let source = if keyless {
        KeySource::None
    } else if let Some(uri) = raw.jwks_uri {
        KeySource::JwksUri(Url::parse(&uri).map_err(|e| ConfigError::new(f("jwks_uri"), e))?)
    } else if let Some(document) = discovery {
        let base = Url::parse(&raw.issuer).map_err(|e| {
            ConfigError::new(
                f("issuer"),
                format!("discovery needs the issuer to be a URL: {e}"),
            )
        })?;
        KeySource::Discovery(base.join_path(&format!("/.well-known/{document}")))
    } else {
        let algs = KeyAlgs {
            allowed: &algorithms,
            undeclared_rsa: &undeclared_rsa,
        };
        static_keys(raw.jwks, shared_secret.as_deref(), algs, &f("jwks"))?
    };
    let upstream = upstream(&source, raw.upstream, &f("upstream"))?;
    // Every callout block of the issuer (introspection here; `uma` and the
    // `clients` that name it in `compile`) defaults to the issuer's
    // `upstream`, whether or not the issuer fetches keys through it.
    let introspection = raw
        .introspection
        .map(|x| {
            Introspection::compile(
                x,
                &f("introspection"),
                (!upstream.is_empty()).then_some(upstream.as_str()),
                discovery.is_some(),
                env,
            )
        })
        .transpose()?;
    if matches!(source, KeySource::None)
        && introspection
            .as_ref()
            .is_some_and(|x| x.response == crate::introspection::ResponseFormat::Jwt)
    {
        return Err(ConfigError::new(
            f("introspection.response"),
            "\"jwt\" needs the issuer's keys, which sign its answers (RFC 9701): give `discovery`, `jwks_uri`, `jwks` or `shared_secret`",
        ));
    }
    if raw.refresh_seconds == 0 {
        return Err(ConfigError::new(f("refresh_seconds"), "must be positive"));
    }
    // The allowance protects the authorization server from a flood of
    // made-up kids; below a second it protects nothing.
    if raw.unknown_kid_refetch_seconds < 1 {
        return Err(ConfigError::new(
            f("unknown_kid_refetch_seconds"),
            "must be at least 1",
        ));
    }
    crate::callout::check_timeout_ms(raw.fetch_timeout_ms, &f("fetch_timeout_ms"))?;
    let audiences = audiences(raw.audiences, field)?;
    let profile = profile(raw.access_token_profile, &f("access_token_profile"))?;
    Ok(Issuer {
        issuer: raw.issuer,
        audiences_anywhere: audiences.clone(),
        audiences,
        profile,
        algorithms,
        undeclared_rsa,
        source,
        upstream,
        shared_secret,
        refresh_seconds: raw.refresh_seconds,
        fetch_timeout_ms: raw.fetch_timeout_ms,
        unknown_kid_refetch_seconds: raw.unknown_kid_refetch_seconds,
        mode,
        introspection,
        dpop: raw.dpop,
        certificate_bound: raw.certificate_bound,
    })
}

/// `"jwt"` (the default), `"rfc9068"`, or a list of `typ` values.
fn profile(raw: Option<RawProfile>, field: &str) -> Result<AccessTokenProfile, ConfigError> {
    match raw {
        None => Ok(AccessTokenProfile::Jwt),
        Some(RawProfile::Keyword(k)) if k == "jwt" => Ok(AccessTokenProfile::Jwt),
        Some(RawProfile::Keyword(k)) if k == "rfc9068" => Ok(AccessTokenProfile::Rfc9068),
        Some(RawProfile::Keyword(k)) => Err(ConfigError::new(
            field,
            format!("must be \"jwt\", \"rfc9068\" or a list of `typ` values, not \"{k}\""),
        )),
        Some(RawProfile::Typ(list)) if list.is_empty() => Err(ConfigError::new(
            field,
            "must list at least one `typ` value (\"\" for none)",
        )),
        Some(RawProfile::Typ(list)) => Ok(AccessTokenProfile::Typ(
            list.iter()
                .map(|t| AccessTokenProfile::media_type(t))
                .collect(),
        )),
    }
}

/// Without a list: every asymmetric algorithm, and HMAC when there is a
/// secret to check it with.
fn algorithms(
    names: Option<Vec<String>>,
    has_secret: bool,
    field: &str,
) -> Result<Vec<Alg>, ConfigError> {
    let Some(names) = names else {
        let mut algs = Alg::ASYMMETRIC.to_vec();
        if has_secret {
            algs.extend(Alg::HMAC);
        }
        return Ok(algs);
    };
    if names.is_empty() {
        return Err(ConfigError::new(field, "must not be empty"));
    }
    let mut algs = Vec::with_capacity(names.len());
    for name in names {
        let alg = Alg::parse(&name).ok_or_else(|| {
            ConfigError::new(
                field,
                format!("\"{name}\" is not supported (RS256/384/512, PS256/384/512, ES256/384, EdDSA, HS256/384/512)"),
            )
        })?;
        if Alg::HMAC.contains(&alg) && !has_secret {
            return Err(ConfigError::new(
                field,
                format!("{alg} needs `shared_secret` for this issuer"),
            ));
        }
        algs.push(alg);
    }
    Ok(algs)
}

/// Whether the issuer has no keys at all, so that only introspection can
/// check its tokens; refuses key sources and a `mode` that contradict.
fn keyless(
    raw: &RawIssuer,
    discovery: bool,
    has_secret: bool,
    field: &str,
) -> Result<bool, ConfigError> {
    let f = |name: &str| format!("{field}.{name}");
    let sources = usize::from(raw.jwks.is_some())
        + usize::from(raw.jwks_uri.is_some())
        + usize::from(discovery);
    if sources > 1 {
        return Err(ConfigError::new(
            field,
            "give only one of `jwks`, `jwks_uri` and `discovery`",
        ));
    }
    let keyless = sources == 0 && !has_secret;
    if keyless && raw.introspection.is_none() {
        return Err(ConfigError::new(
            field,
            "needs keys (one of `jwks`, `jwks_uri`, `discovery: true` or `shared_secret`) or an `introspection` endpoint",
        ));
    }
    if keyless && raw.mode == Mode::JwtThenIntrospect {
        return Err(ConfigError::new(
            f("mode"),
            "\"jwt_then_introspect\" verifies JWTs locally first, so the issuer needs keys: one of `jwks`, `jwks_uri`, `discovery: true` or `shared_secret`",
        ));
    }
    if raw.mode != Mode::Jwt && raw.introspection.is_none() {
        return Err(ConfigError::new(
            f("mode"),
            "introspects tokens, so the issuer needs an `introspection` block",
        ));
    }
    Ok(keyless)
}

/// Keys given in the configuration: inline `jwks`, the shared secret, or both.
fn static_keys(
    jwks: Option<Value>,
    shared_secret: Option<&[u8]>,
    algorithms: KeyAlgs,
    field: &str,
) -> Result<KeySource, ConfigError> {
    let (mut keys, _) = match jwks {
        Some(jwks) => {
            let bytes =
                serde_json::to_vec(&jwks).map_err(|e| ConfigError::new(field, e.to_string()))?;
            KeySet::from_inline_jwks(&bytes, algorithms)
                .map_err(|e| ConfigError::new(field, e.to_string()))?
        }
        None => (KeySet::default(), Vec::new()),
    };
    if let Some(secret) = shared_secret {
        keys.add_secret(secret, algorithms.allowed);
    }
    if keys.is_empty() {
        return Err(ConfigError::new(
            field,
            "holds no key usable with the allowed algorithms",
        ));
    }
    Ok(KeySource::Static(Rc::new(keys)))
}

/// The issuer's cluster: what keys are fetched through, and the default of
/// every callout block of the issuer (empty: none given). Required only to
/// fetch keys; static keys and keyless issuers fetch none, yet keep it for
/// their introspection, UMA and client blocks.
fn upstream(
    source: &KeySource,
    upstream: Option<String>,
    field: &str,
) -> Result<String, ConfigError> {
    match (source, upstream) {
        (_, Some(u)) if !u.trim().is_empty() => Ok(u),
        (KeySource::Static(_) | KeySource::None, _) => Ok(String::new()),
        _ => Err(ConfigError::new(
            field,
            "is required to fetch keys: the Envoy cluster (or Kong host:port) of the authorization server",
        )),
    }
}

/// Without an audience check, a token the same server minted for any other
/// API would pass here too, so "any" must be written out.
fn audiences(raw: Option<RawAudiences>, field: &str) -> Result<Vec<String>, ConfigError> {
    let audiences = match raw {
        None => {
            return Err(ConfigError::new(
                format!("{field}.audiences"),
                "is required: list the `aud` values of this API, or write \"any\" to accept tokens minted for any audience",
            ))
        }
        Some(RawAudiences::Keyword(k)) if k == "any" => Vec::new(),
        Some(RawAudiences::Keyword(k)) => {
            return Err(ConfigError::new(
                format!("{field}.audiences"),
                format!("must be a list of audiences or \"any\", not \"{k}\""),
            ))
        }
        Some(RawAudiences::List(list)) if list.is_empty() => {
            return Err(ConfigError::new(
                format!("{field}.audiences"),
                "must not be empty; write \"any\" to accept tokens minted for any audience",
            ))
        }
        Some(RawAudiences::List(list)) => list,
    };
    for (i, aud) in audiences.iter().enumerate() {
        if aud.is_empty() {
            return Err(ConfigError::new(
                format!("{field}.audiences[{i}]"),
                "must not be empty",
            ));
        }
    }
    Ok(audiences)
}

/// A secret is a string (its UTF-8 bytes) or `{"base64url": "…"}` for bytes
/// that are not text, e.g. 32 random bytes.
fn secret_bytes(value: Value) -> Result<Vec<u8>, String> {
    let bytes = match value {
        Value::String(text) => text.into_bytes(),
        Value::Object(map) => match (map.get("base64url"), map.len()) {
            (Some(Value::String(encoded)), 1) => {
                // Padding is optional, as many encoders add it.
                Base64UrlSafeNoPadding::decode_to_vec(encoded.trim_end_matches('='), None)
                    .map_err(|_| "`base64url` is not base64url (A-Z a-z 0-9 - _)".to_string())?
            }
            _ => return Err(SECRET_FORMS.into()),
        },
        _ => return Err(SECRET_FORMS.into()),
    };
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "is {} bytes; HMAC secrets must be at least {MIN_SECRET_BYTES} bytes",
            bytes.len()
        ));
    }
    Ok(bytes)
}

impl RawDiscovery {
    fn document(&self, field: &str) -> Result<Option<&str>, ConfigError> {
        match self {
            RawDiscovery::Flag(false) => Ok(None),
            RawDiscovery::Flag(true) => Ok(Some("openid-configuration")),
            RawDiscovery::Document(name)
                if ["openid-configuration", "uma2-configuration", "oauth-authorization-server"]
                    .contains(&name.as_str()) =>
            {
                Ok(Some(name))
            }
            RawDiscovery::Document(_) => Err(ConfigError::new(
                field,
                "must be true, \"openid-configuration\", \"uma2-configuration\" or \"oauth-authorization-server\"",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crate::config::tests::{err, refused_with, SECRET};
    use crate::config::Config;
    use crate::jwks::Alg;

    #[test]
    fn issuer_errors_name_the_field_and_the_problem() {
        let table: &[(&str, &str)] = &[
            (r#"{"issuers":[]}"#, "`issuers`: at least one issuer"),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any"}]}"#,
                "`issuers[0]`: needs keys",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","jwks_uri":"http://a/j"}]}"#,
                "`issuers[0].upstream`: is required",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","jwks_uri":"/j","upstream":"a"}]}"#,
                "`issuers[0].jwks_uri`",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","discovery":true,"upstream":"a"}]}"#,
                "`issuers[0].issuer`: discovery needs",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","shared_secret":"short"}]}"#,
                "`issuers[0].shared_secret`: is 5 bytes",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","introspection":{"endpoint":"http://a/i","upstream":"a","client_id":"c","client_secret":"s","response":"jwt"}}]}"#,
                "`issuers[0].introspection.response`: \"jwt\" needs the issuer's keys",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","shared_secret":{"base64url":"c2hvcnQ"}}]}"#,
                "`issuers[0].shared_secret`: is 5 bytes",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","shared_secret":{"base64url":"not+base64/url"}}]}"#,
                "`issuers[0].shared_secret`: `base64url` is not base64url",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","shared_secret":{"hex":"00"}}]}"#,
                "`issuers[0].shared_secret`: must be a string or {\"base64url\"",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","shared_secret":42}]}"#,
                "`issuers[0].shared_secret`: must be a string or",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","discovery":true,"jwks_uri":"http://a/j","upstream":"a"}]}"#,
                "only one of",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","jwks_uri":"http://a/j","upstream":"a","algorithms":["none"]}]}"#,
                "`issuers[0].algorithms`: \"none\" is not supported",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","jwks_uri":"http://a/j","upstream":"a","algorithms":["HS256"]}]}"#,
                "HS256 needs `shared_secret`",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","jwks":{"keys":[{"kty":"RSA","kid":"k","n":"AQAB","e":"AQAB"}]}}]}"#,
                "`issuers[0].jwks`: keys[0] (kid \"k\"): the RSA modulus has 17 bits",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","jwks":{"keys":[]}}]}"#,
                "`issuers[0].jwks`: holds no key",
            ),
            (
                r#"{"issuers":[{"issuer":"x","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`issuers[0].audiences`: is required",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":[],"shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`issuers[0].audiences`: must not be empty; write \"any\"",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"all","shared_secret":"0123456789abcdef0123456789abcdef"}]}"#,
                "`issuers[0].audiences`: must be a list of audiences or \"any\"",
            ),
            (
                r#"{"issuers":[{"issuer":"x","audiences":"any","discovery":true,"upstream":"a","unknown_kid_refetch_seconds":0}]}"#,
                "`issuers[0].issuer`: discovery needs",
            ),
            (
                r#"{"issuers":[{"issuer":"http://x","audiences":"any","discovery":true,"upstream":"a","unknown_kid_refetch_seconds":0}]}"#,
                "`issuers[0].unknown_kid_refetch_seconds`: must be at least 1",
            ),
        ];
        refused_with(table);
    }

    #[test]
    fn shared_secret_enables_hmac_and_duplicate_issuers_are_refused() {
        let json = format!(
            r#"{{"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}]}}"#
        );
        let c = Config::from_json(json.as_bytes(), &|_| None).unwrap();
        assert!(c.issuers.first().unwrap().algorithms.contains(&Alg::HS512));
        let twice = format!(
            r#"{{"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}},{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}]}}"#
        );
        assert!(err(&twice).contains("`issuers[1].issuer`: \"x\" is listed twice"));
    }

    #[test]
    fn shared_secret_may_be_bytes_given_as_base64url() {
        use ct_codecs::{Base64UrlSafe, Base64UrlSafeNoPadding, Encoder as _};
        // 0xff..0xe0: not UTF-8, so not expressible as a JSON string.
        let secret: Vec<u8> = (0..32u8).map(|i| 0xff - i).collect();
        assert!(std::str::from_utf8(&secret).is_err());
        for encoded in [
            Base64UrlSafeNoPadding::encode_to_string(&secret).unwrap(),
            Base64UrlSafe::encode_to_string(&secret).unwrap(),
        ] {
            let json = format!(
                r#"{{"issuers":[{{"issuer":"x","audiences":"any","shared_secret":{{"base64url":"{encoded}"}}}}]}}"#
            );
            let c = Config::from_json(json.as_bytes(), &|_| None).unwrap();
            let issuer = c.issuers.first().unwrap();
            assert_eq!(issuer.shared_secret.as_deref(), Some(secret.as_slice()));
            assert!(issuer.algorithms.contains(&Alg::HS256));
        }
        // The text form still means the UTF-8 bytes of the string.
        let json = format!(
            r#"{{"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"{SECRET}"}}]}}"#
        );
        let c = Config::from_json(json.as_bytes(), &|_| None).unwrap();
        assert_eq!(
            c.issuers.first().unwrap().shared_secret.as_deref(),
            Some(SECRET.as_bytes())
        );
    }

    /// One rule for every callout block: its `upstream` defaults to the
    /// issuer's, whether or not the issuer fetches keys through it (before,
    /// `uma.upstream` was "is required" for an issuer with static keys or
    /// none, while `introspection.upstream` inherited).
    #[test]
    fn every_callout_block_inherits_the_issuers_upstream_keys_or_not() {
        for keys in [
            String::new(),
            format!(r#","shared_secret":"{SECRET}""#),
            r#","discovery":"uma2-configuration""#.to_string(),
        ] {
            let json = format!(
                r#"{{"issuers":[{{"issuer":"https://as.test","audiences":"any","upstream":"as"{keys},
                    "introspection":{{"endpoint":"https://as.test/introspect","client_id":"pep","client_secret":"s"}}}}],
                  "clients":{{"pat":{{"token_endpoint":"https://as.test/token","upstream":"as","client_id":"rs","client_secret":"s"}}}},
                  "uma":{{"issuer":"https://as.test","client":"pat","permission_endpoint":"https://as.test/perm",
                    "resources":[{{"resource_id":"r","policy":{{"GET /r":"view"}}}}]}}}}"#
            );
            let c = Config::from_json(json.as_bytes(), &|_| None)
                .unwrap_or_else(|e| panic!("{keys}: {e}"));
            let issuer = c.issuers.first().unwrap();
            assert_eq!(issuer.upstream, "as", "{keys}");
            assert_eq!(
                issuer.introspection.as_ref().map(|i| i.upstream.as_str()),
                Some("as"),
                "{keys}"
            );
            assert_eq!(
                c.uma.as_ref().map(|u| u.upstream.as_str()),
                Some("as"),
                "{keys}"
            );
        }
        // Without one anywhere, each block names its own field.
        let json = format!(
            r#"{{"issuers":[{{"issuer":"https://as.test","audiences":"any","shared_secret":"{SECRET}"}}],
              "clients":{{"pat":{{"token_endpoint":"https://as.test/token","upstream":"as","client_id":"rs","client_secret":"s"}}}},
              "uma":{{"issuer":"https://as.test","client":"pat","permission_endpoint":"https://as.test/perm",
                "resources":[{{"resource_id":"r","policy":{{"GET /r":"view"}}}}]}}}}"#
        );
        assert!(
            err(&json).contains("`uma.upstream`: is required"),
            "{}",
            err(&json)
        );
    }
}
