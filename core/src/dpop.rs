//! DPoP (RFC 9449): sender-constrained access tokens. A token whose `cnf.jkt`
//! names a key (from its claims, or from the introspection answer) is only
//! good with a proof, a JWT signed by that key over this request, in exactly
//! one `DPoP` header, sent with `Authorization: DPoP <token>`.
//!
//! Here: the configuration ([`DpopMode`] per issuer, [`DpopSettings`] for
//! every proof), finding the token and the proof, the proof checks (cheapest
//! first; the signature through the engine's [`SignatureVerifier`], so host
//! crypto where the host has it), the RFC 7638 thumbprint and the replay
//! table ([`ReplayTable`]) in shared data. The engine decides when they run.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use ct_codecs::{Base64UrlSafeNoPadding, Decoder as _, Encoder as _};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::alg::Alg;
use crate::cache::Digest;
use crate::config_error::ConfigError;
use crate::extract::ExtractError;
use crate::request::normalize_target;
use crate::services::{CasMismatch, SharedStore};
use crate::verify::{KeyMaterial, SignatureVerifier};

/// The longest proof read: a proof is a header, a small public key and five
/// short claims; an RSA-4096 key and its signature stay well under this.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// The longest `jti` accepted (RFC 9449 asks for 96 bits of randomness).
const MAX_JTI_BYTES: usize = 256;
/// JWK members that only a private key has: a proof carrying one gave its
/// secret away and is refused.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// What an issuer's tokens may or must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpopMode {
    /// `cnf.jkt` is ignored and the `DPoP` scheme refused: bearer tokens only
    /// (what the filter did before DPoP).
    Off,
    /// Bound tokens need their proof (a bound token sent as `Bearer` is a
    /// downgrade and refused); unbound tokens pass as bearer tokens.
    #[default]
    Allowed,
    /// Every token of the issuer must be DPoP-bound and come with its proof.
    Required,
}

/// The `dpop` block as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDpop {
    pub algorithms: Option<Vec<String>>,
    #[serde(default = "default_max_age")]
    pub max_age_seconds: u64,
    #[serde(default = "default_replay_bytes")]
    pub replay_cache_bytes: usize,
    #[serde(default)]
    pub forward_proof: bool,
    pub external_base_url: Option<String>,
}

impl Default for RawDpop {
    fn default() -> Self {
        RawDpop {
            algorithms: None,
            max_age_seconds: default_max_age(),
            replay_cache_bytes: default_replay_bytes(),
            forward_proof: false,
            external_base_url: None,
        }
    }
}

fn default_max_age() -> u64 {
    60
}
fn default_replay_bytes() -> usize {
    4 << 20
}

const MAX_AGE_LIMIT: u64 = 600;

/// The compiled `dpop` block: how every proof is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopSettings {
    /// Proof algorithms accepted (asymmetric only), as `algs` names them.
    pub algorithms: Vec<Alg>,
    /// A proof's `iat` may be this old (plus the clock skew), and at most the
    /// clock skew in the future; its `jti` is remembered as long.
    pub max_age_seconds: u64,
    pub replay: ReplayTable,
    /// Send the `DPoP` header upstream (removed by default).
    pub forward_proof: bool,
    /// `https://api.example.com` (no path, no trailing slash): the origin the
    /// client sees when TLS ends before Envoy; `htu` is compared with it.
    pub external_base_url: Option<String>,
}

impl Default for DpopSettings {
    fn default() -> Self {
        DpopSettings {
            algorithms: default_algorithms(),
            max_age_seconds: default_max_age(),
            replay: ReplayTable::new(default_replay_bytes()),
            forward_proof: false,
            external_base_url: None,
        }
    }
}

fn default_algorithms() -> Vec<Alg> {
    Alg::ASYMMETRIC.to_vec()
}

impl DpopSettings {
    pub fn compile(raw: RawDpop) -> Result<DpopSettings, ConfigError> {
        let algorithms = match raw.algorithms {
            None => default_algorithms(),
            Some(names) if names.is_empty() => {
                return Err(ConfigError::new("dpop.algorithms", "must not be empty"))
            }
            Some(names) => {
                let mut algs = Vec::new();
                for name in names {
                    match Alg::parse(&name) {
                        Some(alg) if Alg::ASYMMETRIC.contains(&alg) => {
                            if !algs.contains(&alg) {
                                algs.push(alg)
                            }
                        }
                        _ => {
                            return Err(ConfigError::new(
                                "dpop.algorithms",
                                format!("\"{name}\" is not an asymmetric JWS algorithm (a proof is signed with the client's private key)"),
                            ))
                        }
                    }
                }
                algs
            }
        };
        if !(1..=MAX_AGE_LIMIT).contains(&raw.max_age_seconds) {
            return Err(ConfigError::new(
                "dpop.max_age_seconds",
                format!("must be 1 to {MAX_AGE_LIMIT}"),
            ));
        }
        if raw.replay_cache_bytes < SLOT_BYTES {
            return Err(ConfigError::new(
                "dpop.replay_cache_bytes",
                format!(
                    "must be at least {SLOT_BYTES} (one slot): every proof's jti is remembered"
                ),
            ));
        }
        let external_base_url = raw
            .external_base_url
            .map(|url| base_url(&url))
            .transpose()?;
        Ok(DpopSettings {
            algorithms,
            max_age_seconds: raw.max_age_seconds,
            replay: ReplayTable::new(raw.replay_cache_bytes),
            forward_proof: raw.forward_proof,
            external_base_url,
        })
    }

    /// The `algs` of a `WWW-Authenticate: DPoP` challenge.
    pub fn algs(&self) -> String {
        let mut names: Vec<&str> = self.algorithms.iter().map(|a| a.name()).collect();
        if self.algorithms.contains(&Alg::EdDSA) {
            names.push("Ed25519");
        }
        names.join(" ")
    }
}

fn base_url(url: &str) -> Result<String, ConfigError> {
    let field = "dpop.external_base_url";
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(ConfigError::new(
            field,
            "must be an absolute URL such as https://api.example.com",
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return Err(ConfigError::new(field, "the scheme must be https or http"));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(ConfigError::new(
            field,
            "must be scheme://host[:port] with no path, query, fragment or user info",
        ));
    }
    Ok(origin(&scheme, authority))
}

/// `scheme://host[:port]` as compared: lowercase, the default port dropped
/// (RFC 3986 §6.2.3).
fn origin(scheme: &str, authority: &str) -> String {
    let scheme = scheme.to_ascii_lowercase();
    let authority = authority.to_ascii_lowercase();
    let authority = match scheme.as_str() {
        "https" => authority.strip_suffix(":443").unwrap_or(&authority),
        "http" => authority.strip_suffix(":80").unwrap_or(&authority),
        _ => &authority,
    };
    format!("{scheme}://{authority}")
}

/// Why a DPoP request is refused. The proof problems are `invalid_dpop_proof`;
/// the binding problems (`Downgrade`, `Unbound`, `KeyMismatch`) are
/// `invalid_token`, since the token is what does not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DpopProblem {
    /// `DPoP` scheme without a `DPoP` header.
    NoProof,
    /// More than one `DPoP` header (or one holding a list).
    SeveralProofs,
    /// Not a compact JWS, not base64url JSON, too long, or a claim missing
    /// or of the wrong type (what is said).
    Malformed(&'static str),
    /// `typ` is not `dpop+jwt`.
    WrongType,
    /// `alg` missing, symmetric, `none` or not configured.
    AlgNotAllowed(String),
    /// `jwk` missing, unusable for `alg`, or not a public key (what is said).
    BadKey(String),
    /// `jwk` carries a private member.
    PrivateKey,
    /// The signature does not verify with `jwk`.
    BadSignature,
    /// `htm` is not the request's method.
    MethodMismatch,
    /// `htu` is not the request's URI.
    UriMismatch,
    /// `iat` too old or in the future.
    Stale,
    /// `ath` is not the hash of the access token.
    TokenHashMismatch,
    /// The proof's `jti` was seen within the window.
    Replayed,
    /// The replay table could not be written (its slot is full, or other
    /// workers kept writing it): refused rather than unchecked.
    ReplayUnavailable,
    /// A bound token (`cnf.jkt`) sent as a bearer token.
    Downgrade,
    /// A token without `cnf.jkt` sent with the `DPoP` scheme, or from an
    /// issuer whose tokens must be bound.
    Unbound,
    /// The proof's key is not the one the token is bound to.
    KeyMismatch,
    /// The `DPoP` scheme for an issuer whose `dpop` is `off`.
    NotAccepted,
}

impl DpopProblem {
    /// Whether the token rather than the proof is at fault.
    pub fn is_token_problem(&self) -> bool {
        matches!(
            self,
            DpopProblem::Downgrade
                | DpopProblem::Unbound
                | DpopProblem::KeyMismatch
                | DpopProblem::NotAccepted
        )
    }
}

impl fmt::Display for DpopProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DpopProblem::NoProof => f.write_str("the DPoP scheme needs a DPoP proof header"),
            DpopProblem::SeveralProofs => {
                f.write_str("the request carries more than one DPoP proof")
            }
            DpopProblem::Malformed(what) => write!(f, "the DPoP proof is malformed: {what}"),
            DpopProblem::WrongType => f.write_str("the DPoP proof's typ is not dpop+jwt"),
            DpopProblem::AlgNotAllowed(alg) => {
                write!(f, "the DPoP proof's algorithm {alg} is not accepted")
            }
            DpopProblem::BadKey(why) => write!(f, "the DPoP proof's jwk is unusable: {why}"),
            DpopProblem::PrivateKey => f.write_str("the DPoP proof's jwk holds a private key"),
            DpopProblem::BadSignature => f.write_str("the DPoP proof's signature does not verify"),
            DpopProblem::MethodMismatch => {
                f.write_str("the DPoP proof's htm is not this request's method")
            }
            DpopProblem::UriMismatch => {
                f.write_str("the DPoP proof's htu is not this request's URI")
            }
            DpopProblem::Stale => {
                f.write_str("the DPoP proof's iat is outside the accepted window")
            }
            DpopProblem::TokenHashMismatch => {
                f.write_str("the DPoP proof's ath is not the hash of this access token")
            }
            DpopProblem::Replayed => f.write_str("the DPoP proof was already used"),
            DpopProblem::ReplayUnavailable => {
                f.write_str("the DPoP proof cannot be checked for replay right now")
            }
            DpopProblem::Downgrade => f.write_str(
                "the token is DPoP-bound and must be sent with the DPoP scheme and a proof",
            ),
            DpopProblem::Unbound => f.write_str("the token is not DPoP-bound"),
            DpopProblem::KeyMismatch => {
                f.write_str("the DPoP proof's key is not the key the token is bound to")
            }
            DpopProblem::NotAccepted => {
                f.write_str("this issuer's tokens are not accepted with the DPoP scheme")
            }
        }
    }
}

/// `Authorization: DPoP <token>` (scheme case-insensitive): the token, if the
/// request uses that scheme; an error when the scheme comes with a second
/// `Authorization` header (a token offered twice).
pub fn dpop_token(headers: &[(String, String)]) -> Result<Option<&str>, ExtractError> {
    let mut values = headers
        .iter()
        .filter(|(n, _)| n == "authorization")
        .map(|(_, v)| v.trim_start());
    let (Some(value), second) = (values.next(), values.next()) else {
        return Ok(None);
    };
    let Some((scheme, rest)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("DPoP") {
        return Ok(None);
    }
    match second {
        Some(_) => Err(ExtractError::Repeated("authorization header".into())),
        None => Ok(Some(rest.trim())),
    }
}

/// The one `DPoP` header's value.
pub fn proof_header(headers: &[(String, String)]) -> Result<&str, DpopProblem> {
    let mut values = headers
        .iter()
        .filter(|(n, _)| n == "dpop")
        .map(|(_, v)| v.trim());
    match (values.next(), values.next()) {
        (None, _) => Err(DpopProblem::NoProof),
        // A compact JWS never holds a comma: a comma is a joined repeat.
        (Some(v), None) if !v.contains(',') => Ok(v),
        _ => Err(DpopProblem::SeveralProofs),
    }
}

/// What the checks need of the request.
pub struct ProofContext<'a> {
    pub method: &'a str,
    /// The URI the client asked for, as [`request_uri`] builds it.
    pub uri: &'a str,
    pub access_token: &'a str,
    /// The thumbprint the token is bound to.
    pub jkt: &'a str,
    pub now: u64,
    pub clock_skew: u64,
}

/// A proof that passed every check but the replay check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedProof {
    /// SHA-256 over the thumbprint and `jti`: the replay table's key.
    pub replay_key: Digest,
    /// Until when the `jti` must be remembered.
    pub remember_until: u64,
}

/// The request URI a proof's `htu` must name: `scheme://authority` (or the
/// configured external base URL) and the path as judged, without query.
/// `None` when the request lacks what it takes (no `:authority`).
pub fn request_uri(
    settings: &DpopSettings,
    headers: &[(String, String)],
    raw_path: &str,
) -> Option<String> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let base = match &settings.external_base_url {
        Some(base) => base.clone(),
        None => origin(header(":scheme").unwrap_or("https"), header(":authority")?),
    };
    let path = normalize_target(raw_path).ok()?.forwarded_path();
    Some(format!("{base}{path}"))
}

/// `htu` as compared: origin lowercased without its default port, path
/// normalised as request paths are, query and fragment dropped.
fn normal_htu(htu: &str) -> Option<String> {
    let htu = htu.split(['?', '#']).next().unwrap_or(htu);
    let (scheme, rest) = htu.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i)?, rest.get(i..)?),
        None => (rest, "/"),
    };
    let path = normalize_target(path).ok()?.forwarded_path();
    Some(format!("{}{path}", origin(scheme, authority)))
}

fn b64_json(segment: &str, what: &'static str) -> Result<Map<String, Value>, DpopProblem> {
    let bytes = Base64UrlSafeNoPadding::decode_to_vec(segment, None)
        .map_err(|_| DpopProblem::Malformed(what))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(DpopProblem::Malformed(what)),
    }
}

/// Every check of one proof but the replay check, cheapest first: shape,
/// `typ`, `alg`, the `jwk` (public, fit for `alg`), the claims (`htm`,
/// `htu`, `iat`, `ath`), the thumbprint against `cnf.jkt`, and last the
/// signature, the only costly one: a proof for another request, another
/// token or another key costs no signature work.
pub fn check_proof(
    settings: &DpopSettings,
    verifier: &dyn SignatureVerifier,
    proof: &str,
    request: &ProofContext,
) -> Result<CheckedProof, DpopProblem> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(DpopProblem::Malformed("longer than 8 KiB"));
    }
    let mut parts = proof.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(DpopProblem::Malformed("not a compact JWS"));
    };
    let header = b64_json(header_b64, "the header is not base64url JSON")?;
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(DpopProblem::WrongType);
    }
    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
    // RFC 9864's fully-specified name for EdDSA over Ed25519, which the npm
    // `dpop` client library signs with; `key_material` holds it to Ed25519.
    let parsed = if alg_name == "Ed25519" {
        Some(Alg::EdDSA)
    } else {
        Alg::parse(alg_name)
    };
    let alg = parsed
        .filter(|a| settings.algorithms.contains(a))
        .ok_or_else(|| DpopProblem::AlgNotAllowed(alg_name.chars().take(16).collect()))?;
    let Some(Value::Object(jwk)) = header.get("jwk") else {
        return Err(DpopProblem::BadKey("no jwk in the header".into()));
    };
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(DpopProblem::PrivateKey);
    }
    let claims = b64_json(payload_b64, "the payload is not base64url JSON")?;
    let text = |name: &'static str| match claims.get(name) {
        Some(Value::String(s)) => Ok(s.as_str()),
        _ => Err(DpopProblem::Malformed(name)),
    };
    let jti = text("jti")?;
    if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
        return Err(DpopProblem::Malformed("jti"));
    }
    if text("htm")? != request.method {
        return Err(DpopProblem::MethodMismatch);
    }
    if normal_htu(text("htu")?).as_deref() != Some(request.uri) {
        return Err(DpopProblem::UriMismatch);
    }
    let iat = match claims.get("iat") {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or(DpopProblem::Malformed("iat"))?,
        _ => return Err(DpopProblem::Malformed("iat")),
    };
    let oldest = request
        .now
        .saturating_sub(settings.max_age_seconds.saturating_add(request.clock_skew));
    if iat < oldest || iat > request.now.saturating_add(request.clock_skew) {
        return Err(DpopProblem::Stale);
    }
    let ath = Base64UrlSafeNoPadding::encode_to_string(hmac_sha256::Hash::hash(
        request.access_token.as_bytes(),
    ))
    .map_err(|_| DpopProblem::Malformed("ath"))?;
    if text("ath")? != ath {
        return Err(DpopProblem::TokenHashMismatch);
    }
    let jkt = thumbprint(jwk).map_err(DpopProblem::BadKey)?;
    if jkt != request.jkt {
        return Err(DpopProblem::KeyMismatch);
    }
    let key = key_material(jwk, alg).map_err(DpopProblem::BadKey)?;
    let signature = Base64UrlSafeNoPadding::decode_to_vec(signature_b64, None)
        .map_err(|_| DpopProblem::Malformed("the signature is not base64url"))?;
    let signing_input_len = header_b64
        .len()
        .saturating_add(1)
        .saturating_add(payload_b64.len());
    let signing_input = proof.get(..signing_input_len).unwrap_or_default();
    verifier
        .verify(alg, &key, signing_input.as_bytes(), &signature)
        .map_err(|_| DpopProblem::BadSignature)?;
    Ok(CheckedProof {
        replay_key: crate::cache::digest(&[jkt.as_bytes(), jti.as_bytes()]),
        remember_until: iat
            .saturating_add(settings.max_age_seconds)
            .saturating_add(request.clock_skew)
            .saturating_add(1),
    })
}

fn member<'j>(jwk: &'j Map<String, Value>, name: &str) -> Result<&'j str, String> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing \"{name}\""))
}

/// The RFC 7638 thumbprint of a public JWK: base64url(SHA-256) of its
/// required members in lexicographic order, without whitespace.
pub fn thumbprint(jwk: &Map<String, Value>) -> Result<String, String> {
    let quote = |s: &str| Value::String(s.to_string()).to_string();
    let canonical = match member(jwk, "kty")? {
        "EC" => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            quote(member(jwk, "crv")?),
            quote(member(jwk, "x")?),
            quote(member(jwk, "y")?)
        ),
        "RSA" => format!(
            r#"{{"e":{},"kty":"RSA","n":{}}}"#,
            quote(member(jwk, "e")?),
            quote(member(jwk, "n")?)
        ),
        "OKP" => format!(
            r#"{{"crv":{},"kty":"OKP","x":{}}}"#,
            quote(member(jwk, "crv")?),
            quote(member(jwk, "x")?)
        ),
        other => {
            return Err(format!(
                "kty \"{}\" is not a public key type",
                other.chars().take(16).collect::<String>()
            ))
        }
    };
    Base64UrlSafeNoPadding::encode_to_string(hmac_sha256::Hash::hash(canonical.as_bytes()))
        .map_err(|_| "cannot encode the thumbprint".to_string())
}

fn key_material(jwk: &Map<String, Value>, alg: Alg) -> Result<KeyMaterial, String> {
    let b64 = |name: &str| {
        Base64UrlSafeNoPadding::decode_to_vec(member(jwk, name)?, None)
            .map_err(|_| format!("\"{name}\" is not base64url"))
    };
    let kty = member(jwk, "kty")?;
    let crv = jwk.get("crv").and_then(Value::as_str);
    match (alg, kty, crv) {
        (Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512, "RSA", _) => {
            KeyMaterial::rsa(&b64("n")?, &b64("e")?)
        }
        (Alg::ES256, "EC", Some("P-256")) => KeyMaterial::p256(&b64("x")?, &b64("y")?),
        (Alg::ES384, "EC", Some("P-384")) => KeyMaterial::p384(&b64("x")?, &b64("y")?),
        (Alg::EdDSA, "OKP", Some("Ed25519")) => KeyMaterial::ed25519(&b64("x")?),
        _ => Err(format!("a {kty} key cannot verify {alg}")),
    }
}

/// Proofs remembered per slot; a slot with this many live ones refuses more.
/// Wide slots because proofs land in them unevenly: at README's sizing (50
/// bytes per proof) slots of 8 refused ~0.8% of proofs, slots of 32 in the
/// same bytes almost none (`a_table_at_its_documented_load_refuses_almost_nothing`).
const PER_SLOT: usize = 32;
/// A remembered proof: 16 bytes of its replay key, and until when (seconds).
const REMEMBERED_BYTES: usize = 16 + 8;
const MAGIC: &[u8; 4] = b"OPD1";
/// The bytes of one slot in shared data.
pub const SLOT_BYTES: usize = 4 + PER_SLOT * REMEMBERED_BYTES;
const MAX_SLOTS: u64 = 1 << 20;
const PREFIX: &str = "oauth_pep.dpop_jti";
const CAS_ATTEMPTS: usize = 4;

/// The proofs seen within their window, shared by every worker of the
/// process: a fixed table of `slots` keys in shared data (which has neither
/// expiry nor deletion, so the table never grows), each holding at most
/// [`PER_SLOT`] proofs. A proof's slot is its replay key modulo `slots`;
/// entries past their time are dropped when their slot is next written. A
/// slot full of live proofs refuses a new one (503 with `retry-after`) rather
/// than forget one that could then be replayed. Writes use the store's
/// compare-and-swap, so two workers never both accept one `jti`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayTable {
    slots: u64,
    /// Where its slots are in shared data (DPoP proofs, security events).
    prefix: &'static str,
}

/// Why [`ReplayTable::remember_key`] did not take an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayRefusal {
    /// The id is remembered and live.
    Replayed,
    /// Its slot is full of live ids, or other workers kept winning the write.
    Unavailable,
}

impl ReplayTable {
    pub fn new(bytes: usize) -> ReplayTable {
        ReplayTable::named(PREFIX, bytes)
    }

    /// A table of its own in shared data, under `prefix`.
    pub fn named(prefix: &'static str, bytes: usize) -> ReplayTable {
        ReplayTable {
            slots: ((bytes / SLOT_BYTES) as u64).clamp(1, MAX_SLOTS),
            prefix,
        }
    }

    fn key(&self, digest: &Digest) -> String {
        let mut first = [0u8; 8];
        first.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
        format!("{}.{}", self.prefix, u64::from_be_bytes(first) % self.slots)
    }

    /// Accepts the proof once: `Replayed` if its key is remembered and live.
    pub fn remember(
        &self,
        store: &dyn SharedStore,
        proof: &CheckedProof,
        now: u64,
    ) -> Result<(), DpopProblem> {
        self.remember_key(store, &proof.replay_key, proof.remember_until, now)
            .map_err(|refusal| match refusal {
                ReplayRefusal::Replayed => DpopProblem::Replayed,
                ReplayRefusal::Unavailable => DpopProblem::ReplayUnavailable,
            })
    }

    /// Whether `replay_key` is remembered and live (nothing written).
    pub fn seen(&self, store: &dyn SharedStore, replay_key: &Digest, now: u64) -> bool {
        let id = replay_key.get(..16).unwrap_or_default();
        store.get(&self.key(replay_key)).is_some_and(|(bytes, _)| {
            bytes
                .get(MAGIC.len()..)
                .filter(|_| bytes.starts_with(MAGIC))
                .unwrap_or_default()
                .chunks_exact(REMEMBERED_BYTES)
                .any(|entry| {
                    entry.split_at_checked(16).is_some_and(|(held, until)| {
                        held == id
                            && <[u8; 8]>::try_from(until).is_ok_and(|u| u64::from_be_bytes(u) > now)
                    })
                })
        })
    }

    /// Accepts `replay_key` once until `until`.
    ///
    /// Shared data cannot create a key only if it is absent: a slot's first
    /// write is unconditional, so two workers writing one never-used slot at
    /// the same instant may lose the other's entry. Every later write of the
    /// slot is a compare-and-swap.
    pub fn remember_key(
        &self,
        store: &dyn SharedStore,
        replay_key: &Digest,
        until: u64,
        now: u64,
    ) -> Result<(), ReplayRefusal> {
        let key = self.key(replay_key);
        let id = replay_key.get(..16).unwrap_or_default();
        for _ in 0..CAS_ATTEMPTS {
            let Some((bytes, cas)) = store.get(&key) else {
                // Made first, so the write below always has a version to check.
                let _ = store.set(&key, MAGIC, None);
                continue;
            };
            let mut live: Vec<(&[u8], u64)> = bytes
                .get(MAGIC.len()..)
                .filter(|_| bytes.starts_with(MAGIC))
                .unwrap_or_default()
                .chunks_exact(REMEMBERED_BYTES)
                .filter_map(|entry| {
                    let (held, until) = entry.split_at_checked(16)?;
                    let until = u64::from_be_bytes(until.try_into().ok()?);
                    (until > now).then_some((held, until))
                })
                .collect();
            if live.iter().any(|(held, _)| *held == id) {
                return Err(ReplayRefusal::Replayed);
            }
            if live.len() >= PER_SLOT {
                return Err(ReplayRefusal::Unavailable);
            }
            live.push((id, until));
            let mut out = Vec::with_capacity(SLOT_BYTES);
            out.extend_from_slice(MAGIC);
            for (held, until) in &live {
                out.extend_from_slice(held);
                out.extend_from_slice(&until.to_be_bytes());
            }
            match store.set(&key, &out, Some(cas)) {
                Ok(()) => return Ok(()),
                Err(CasMismatch) => continue,
            }
        }
        Err(ReplayRefusal::Unavailable)
    }
}

/// The replay table of a worker that shares no data with the others (Kong
/// without a shared-memory zone, `shared_data: off`): the same slots, in the
/// worker's memory. A proof is then accepted once per worker.
#[derive(Default)]
pub struct LocalStore {
    values: RefCell<HashMap<String, (Vec<u8>, u32)>>,
}

impl SharedStore for LocalStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.values.borrow().get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        let mut values = self.values.borrow_mut();
        let version = values.get(key).map_or(0, |(_, v)| *v);
        if let Some(cas) = cas {
            if cas != 0 && version != 0 && cas != version {
                return Err(CasMismatch);
            }
        }
        values.insert(
            key.to_string(),
            (value.to_vec(), version.wrapping_add(1).max(1)),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    #[test]
    fn thumbprint_is_rfc_7638s_example() {
        // RFC 7638 §3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let Value::Object(jwk) = jwk else { panic!() };
        assert_eq!(
            thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn htu_is_compared_as_normalised() {
        assert_eq!(
            normal_htu("HTTPS://Api.Example.com:443/a/./b?x=1#f").as_deref(),
            Some("https://api.example.com/a/b")
        );
        assert_eq!(
            normal_htu("http://h:8080").as_deref(),
            Some("http://h:8080/")
        );
        let settings = DpopSettings::default();
        let headers = vec![
            (":scheme".to_string(), "http".to_string()),
            (":authority".to_string(), "H:80".to_string()),
        ];
        assert_eq!(
            request_uri(&settings, &headers, "/x//y?q").as_deref(),
            Some("http://h/x/y")
        );
    }

    #[test]
    fn a_proof_is_remembered_once_within_its_window_and_slots_are_bounded() {
        let table = ReplayTable::new(SLOT_BYTES);
        let store = LocalStore::default();
        let proof = |i: u8, until| CheckedProof {
            replay_key: [i; 32],
            remember_until: until,
        };
        assert_eq!(table.remember(&store, &proof(1, 100), 10), Ok(()));
        assert_eq!(
            table.remember(&store, &proof(1, 100), 11),
            Err(DpopProblem::Replayed)
        );
        let last = PER_SLOT as u8;
        for i in 2..=last {
            assert_eq!(table.remember(&store, &proof(i, 100), 12), Ok(()));
        }
        assert_eq!(
            table.remember(&store, &proof(last + 1, 100), 12),
            Err(DpopProblem::ReplayUnavailable),
            "a full slot refuses rather than forgets"
        );
        assert_eq!(
            table.remember(&store, &proof(last + 1, 200), 100),
            Ok(()),
            "expired entries make room"
        );
        assert_eq!(
            table.remember(&store, &proof(1, 300), 100),
            Ok(()),
            "after its window a jti is forgotten (its iat no longer passes)"
        );
        let (bytes, _) = store.get("oauth_pep.dpop_jti.0").unwrap();
        assert!(bytes.len() <= SLOT_BYTES);
    }

    /// README's sizing: 50 bytes per proof remembered. A table at that load
    /// (1 MiB, to stay quick) refuses almost nothing; slots of 8 proofs in
    /// the same bytes refused ~0.8% of them.
    #[test]
    fn a_table_at_its_documented_load_refuses_almost_nothing() {
        let bytes = 1 << 20;
        let table = ReplayTable::new(bytes);
        let store = LocalStore::default();
        let proofs = bytes / 50;
        let refused = (0..proofs)
            .filter(|i| {
                let proof = CheckedProof {
                    replay_key: crate::cache::digest(&[&i.to_be_bytes()]),
                    remember_until: 1_000,
                };
                table.remember(&store, &proof, 10).is_err()
            })
            .count();
        assert!(refused * 2_000 <= proofs, "{refused} of {proofs} refused");
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = DpopSettings::compile(RawDpop {
            algorithms: Some(vec!["HS256".into()]),
            ..RawDpop::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("dpop.algorithms"), "{e}");
        let e = DpopSettings::compile(RawDpop {
            external_base_url: Some("https://a/b".into()),
            ..RawDpop::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("dpop.external_base_url"), "{e}");
        let e = DpopSettings::compile(RawDpop {
            max_age_seconds: 0,
            ..RawDpop::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("dpop.max_age_seconds"), "{e}");
    }
}
