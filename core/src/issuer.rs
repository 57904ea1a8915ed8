//! The compiled settings of one trusted issuer: who it is, the audiences
//! and algorithms its tokens may have, where its keys come from and how
//! often they are fetched, and which of its tokens are introspected and how.
//! Key fetching ([`crate::keys`]), token checks ([`crate::jwt`]) and the
//! engine read it; configuration ([`crate::config`]) builds it.

use std::rc::Rc;

use crate::alg::Alg;
use crate::cache::{digest, Digest};
use crate::callout::Url;
use crate::introspection::{Introspection, Mode};
use crate::jwks::{JwksError, KeyAlgs, KeySet};

/// How the keys of an issuer are obtained.
#[derive(Clone)]
pub enum KeySource {
    /// Inline JWKS and/or a shared secret: ready at configure time.
    Static(Rc<KeySet>),
    JwksUri(Url),
    Discovery(Url),
    /// No keys: every token of the issuer is introspected.
    None,
}

/// Which JWT `typ` header values an issuer's access tokens may carry
/// (compared as media types: without case, `application/` optional), and
/// whether RFC 9068's claims are required.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessTokenProfile {
    /// No `typ`, `JWT`, `JOSE` or any `+jwt` type (what the filter always
    /// accepted).
    #[default]
    Jwt,
    /// RFC 9068: `at+jwt` only, and `sub`, `client_id`, `iat`, `jti` present.
    Rfc9068,
    /// Exactly these types, lower case without `application/`; `""` is a
    /// token without `typ`.
    Typ(Vec<String>),
}

impl AccessTokenProfile {
    /// `typ` as compared: lower case, without the `application/` prefix
    /// (RFC 7515 §4.1.9).
    pub fn media_type(typ: &str) -> String {
        let lower = typ.to_ascii_lowercase();
        match lower.strip_prefix("application/") {
            Some(rest) => rest.to_string(),
            None => lower,
        }
    }
}

#[derive(Clone)]
pub struct Issuer {
    pub issuer: String,
    /// Accepted `aud` values outside every protected resource; empty only
    /// when configured as `"any"`.
    pub audiences: Vec<String>,
    /// The `aud` values its tokens may have on some path: `audiences` and
    /// those of the resources it serves (empty: any). A token naming none
    /// is refused before any key work; the request's own list is checked
    /// per request (see `crate::resource`).
    pub audiences_anywhere: Vec<String>,
    /// The `typ` its JWTs may carry and the claims they must have.
    pub profile: AccessTokenProfile,
    pub algorithms: Vec<Alg>,
    /// The RSA algorithms a JWK without `alg` verifies: RS* of `algorithms`
    /// unless `algorithms` was written out, then every RSA one listed.
    pub undeclared_rsa: Vec<Alg>,
    pub source: KeySource,
    /// Envoy cluster (or Kong `host:port`) that fetches go through.
    pub upstream: String,
    pub shared_secret: Option<Vec<u8>>,
    pub refresh_seconds: u64,
    pub fetch_timeout_ms: u64,
    pub unknown_kid_refetch_seconds: u64,
    pub mode: Mode,
    pub introspection: Option<Introspection>,
    /// Whether its tokens may or must be DPoP-bound.
    pub dpop: crate::dpop::DpopMode,
    /// Whether its tokens may or must be certificate-bound (RFC 8705).
    pub certificate_bound: crate::mtls::CertificateBound,
}

impl Issuer {
    /// Names where this issuer's keys and discovery document come from (the
    /// issuer, its key URL and the cluster they are fetched through): what
    /// two configurations must agree on to share them in shared data. Two
    /// listeners that name the same issuer but fetch it from different
    /// servers never adopt each other's keys.
    pub fn fetch_fingerprint(&self) -> Digest {
        let source = match &self.source {
            KeySource::JwksUri(url) => {
                format!("jwks_uri {}://{}{}", url.scheme, url.authority, url.path)
            }
            KeySource::Discovery(url) => {
                format!("discovery {}://{}{}", url.scheme, url.authority, url.path)
            }
            KeySource::Static(_) | KeySource::None => String::new(),
        };
        digest(&[
            self.issuer.as_bytes(),
            source.as_bytes(),
            self.upstream.as_bytes(),
        ])
    }

    /// The algorithms this issuer's keys may serve.
    pub fn key_algs(&self) -> KeyAlgs<'_> {
        KeyAlgs {
            allowed: &self.algorithms,
            undeclared_rsa: &self.undeclared_rsa,
        }
    }

    /// Turns a fetched JWKS into this issuer's key set (plus its shared secret).
    pub fn keys_from_jwks(&self, jwks: &[u8]) -> Result<(KeySet, Vec<String>), JwksError> {
        let (mut keys, skipped) = KeySet::from_jwks(jwks, self.key_algs())?;
        if let Some(secret) = &self.shared_secret {
            keys.add_secret(secret, &self.algorithms);
        }
        Ok((keys, skipped))
    }

    #[cfg(test)]
    pub fn for_tests(issuer: &str, audiences: &[&str], algorithms: &[Alg]) -> Issuer {
        Issuer {
            issuer: issuer.into(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            audiences_anywhere: audiences.iter().map(|a| a.to_string()).collect(),
            profile: AccessTokenProfile::Jwt,
            algorithms: algorithms.to_vec(),
            undeclared_rsa: algorithms.to_vec(),
            source: KeySource::Static(Rc::new(KeySet::default())),
            upstream: String::new(),
            shared_secret: None,
            refresh_seconds: 300,
            fetch_timeout_ms: 1000,
            unknown_kid_refetch_seconds: 30,
            mode: Mode::Jwt,
            introspection: None,
            dpop: crate::dpop::DpopMode::Allowed,
            certificate_bound: crate::mtls::CertificateBound::Allowed,
        }
    }
}
