//! Verification keys: JWKS documents turned into typed keys, and the lookup that
//! picks exactly one key for a token (by `kid` and algorithm, never "try them all").

use std::fmt;

use ct_codecs::{Base64UrlSafeNoPadding, Decoder as _};
use serde::Deserialize;
use serde_json::Value;

use crate::verify::KeyMaterial;

pub use crate::alg::Alg;

impl Alg {
    fn key_kind(self) -> KeyKind {
        match self {
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                KeyKind::Rsa
            }
            Alg::ES256 => KeyKind::P256,
            Alg::ES384 => KeyKind::P384,
            Alg::EdDSA => KeyKind::Ed25519,
            Alg::HS256 | Alg::HS384 | Alg::HS512 => KeyKind::Secret,
        }
    }
}

/// Which algorithms an issuer's keys may serve: those it allows, and of
/// those the ones an RSA key that does not declare its `alg` may serve.
/// RFC 7517 makes `alg` optional, and an RSA key fits RS* and PS* alike; but
/// PS* signatures are checked in wasm (Envoy's `verify_signature` has no PSS
/// padding), so an attacker who may pick PS512 for such a key makes every
/// forgery cost a pure-Rust check. Such a key serves PS* only where the
/// configuration lists them ([`KeyAlgs::listed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAlgs<'a> {
    pub allowed: &'a [Alg],
    /// RSA algorithms a key without `alg` serves (a subset of `allowed`).
    pub undeclared_rsa: &'a [Alg],
}

impl<'a> KeyAlgs<'a> {
    /// Algorithms the configuration lists: a key without `alg` serves every
    /// one of them that fits it.
    pub fn listed(allowed: &'a [Alg]) -> KeyAlgs<'a> {
        KeyAlgs {
            allowed,
            undeclared_rsa: allowed,
        }
    }

    fn serves(&self, declared: Option<Alg>, kind: KeyKind, alg: Alg) -> bool {
        if alg.key_kind() != kind {
            return false;
        }
        match declared {
            Some(declared) => declared == alg,
            None if kind == KeyKind::Rsa => self.undeclared_rsa.contains(&alg),
            None => true,
        }
    }
}

/// The RSA algorithms of `allowed` a key without `alg` serves when the
/// configuration does not list them: RS* only.
pub fn default_undeclared_rsa(allowed: &[Alg]) -> Vec<Alg> {
    allowed
        .iter()
        .copied()
        .filter(|a| matches!(a, Alg::RS256 | Alg::RS384 | Alg::RS512))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
    Secret,
}

/// A key bound to one algorithm: an RSA JWK without `alg` becomes one entry per
/// RSA algorithm the issuer allows, so lookup is a plain (kid, alg) match.
pub struct KeyEntry {
    pub kid: Option<String>,
    pub alg: Alg,
    pub key: KeyMaterial,
}

/// The keys of one issuer.
#[derive(Default)]
pub struct KeySet {
    entries: Vec<KeyEntry>,
    /// P-256 keys given a comb table so far (at most [`MAX_P256_TABLES`]).
    p256_tables: usize,
}

/// P-256 keys of one key set that get a comb table for the pure-Rust ES256
/// check ([`crate::es256`], about 18 KB each): a JWKS rarely has more than
/// two or three; the others are checked without one, about 4× slower in wasm.
pub const MAX_P256_TABLES: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLookupError {
    /// The token names a `kid` we do not have (for this alg): maybe a rotation.
    UnknownKid(String),
    /// No `kid` and zero or several keys fit the algorithm.
    Ambiguous { alg: Alg, candidates: usize },
    /// The key named by `kid` is known but does not verify this algorithm
    /// (another key type, its own `alg`, or an RSA key without `alg` and a
    /// PS* the issuer does not list). Not a rotation: no refetch.
    AlgNotForKey { kid: String, alg: Alg },
}

impl fmt::Display for KeyLookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyLookupError::UnknownKid(kid) => {
                write!(f, "no key with kid \"{kid}\" fits the token")
            }
            KeyLookupError::Ambiguous { alg, candidates: 0 } => {
                write!(f, "the token has no kid and no {alg} key is known")
            }
            KeyLookupError::Ambiguous { alg, candidates } => write!(
                f,
                "the token has no kid and {candidates} {alg} keys fit; a kid is required"
            ),
            KeyLookupError::AlgNotForKey { kid, alg } => {
                write!(f, "the key with kid \"{kid}\" does not verify {alg}")
            }
        }
    }
}

/// A JWK that did not become a key.
enum Skip {
    /// Meant for something else: another `use`, an algorithm or key type we
    /// do not verify, or none the issuer allows.
    NotForUs { key: String, why: String },
    /// Claims to be a signing key we could use, but is broken or too weak.
    Broken { key: String, problem: String },
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::NotForUs { key, why } => write!(f, "{key}: {why}"),
            Skip::Broken { key, problem } => write!(f, "{key}: {problem}"),
        }
    }
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.entries.iter().any(|e| e.kid.as_deref() == Some(kid))
    }

    /// Whether a key has a kid with this digest ([`crate::cache::digest`] of the kid).
    pub fn has_kid_digest(&self, kid: &crate::cache::Digest) -> bool {
        self.entries
            .iter()
            .filter_map(|e| e.kid.as_deref())
            .any(|k| crate::cache::digest(&[k.as_bytes()]) == *kid)
    }

    pub fn find(&self, kid: Option<&str>, alg: Alg) -> Result<&KeyEntry, KeyLookupError> {
        match kid {
            // The one shared secret of an issuer serves whatever kid its
            // tokens carry; asymmetric keys must match the kid exactly.
            Some(kid) => self
                .entries
                .iter()
                .find(|e| e.alg == alg && e.kid.as_deref() == Some(kid))
                .or_else(|| {
                    self.entries.iter().find(|e| {
                        e.alg == alg && e.kid.is_none() && e.alg.key_kind() == KeyKind::Secret
                    })
                })
                .ok_or_else(|| {
                    if self.has_kid(kid) {
                        KeyLookupError::AlgNotForKey {
                            kid: kid.to_string(),
                            alg,
                        }
                    } else {
                        KeyLookupError::UnknownKid(kid.to_string())
                    }
                }),
            None => {
                let mut fitting = self.entries.iter().filter(|e| e.alg == alg);
                match (fitting.next(), fitting.count()) {
                    (Some(only), 0) => Ok(only),
                    (first, rest) => Err(KeyLookupError::Ambiguous {
                        alg,
                        candidates: rest + usize::from(first.is_some()),
                    }),
                }
            }
        }
    }

    /// Parses a fetched JWKS document. Every key we cannot use is skipped
    /// with a note naming it and why (the glue logs the notes): one broken
    /// or weak key among good ones must not take the good ones down with it,
    /// at first load or at a refresh. Whether anything usable is left is the
    /// caller's question.
    pub fn from_jwks(json: &[u8], algs: KeyAlgs) -> Result<(KeySet, Vec<String>), JwksError> {
        let (set, skipped) = Self::parse(json, algs)?;
        Ok((set, skipped.iter().map(Skip::to_string).collect()))
    }

    /// Parses a JWKS from the configuration: keys meant for something else
    /// are skipped as in [`KeySet::from_jwks`], but a broken or weak key is an
    /// error naming it, as a typo in a config is better refused than ignored.
    pub fn from_inline_jwks(
        json: &[u8],
        algs: KeyAlgs,
    ) -> Result<(KeySet, Vec<String>), JwksError> {
        let (set, skipped) = Self::parse(json, algs)?;
        let mut notes = Vec::with_capacity(skipped.len());
        for skip in skipped {
            match skip {
                Skip::Broken { key, problem } => return Err(JwksError::BadKey { key, problem }),
                other => notes.push(other.to_string()),
            }
        }
        Ok((set, notes))
    }

    fn parse(json: &[u8], algs: KeyAlgs) -> Result<(KeySet, Vec<Skip>), JwksError> {
        let doc: JwksDoc =
            serde_json::from_slice(json).map_err(|e| JwksError::NotJwks(e.to_string()))?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (i, value) in doc.keys.iter().enumerate() {
            let kid = value.get("kid").and_then(Value::as_str);
            let key = match kid {
                Some(kid) => format!("keys[{i}] (kid \"{kid}\")"),
                None => format!("keys[{i}]"),
            };
            let jwk = match Jwk::deserialize(value) {
                Ok(jwk) => jwk,
                Err(e) => {
                    skipped.push(Skip::Broken {
                        key,
                        problem: format!("not a usable JWK: {e}"),
                    });
                    continue;
                }
            };
            if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
                skipped.push(Skip::NotForUs {
                    key,
                    why: "use is not \"sig\"".into(),
                });
                continue;
            }
            match set.add_jwk(&jwk, algs) {
                Ok(0) => skipped.push(Skip::NotForUs {
                    key,
                    why: format!("no allowed algorithm fits kty {}", jwk.kty),
                }),
                Ok(_) => {}
                Err(problem) => skipped.push(Skip::Broken { key, problem }),
            }
        }
        Ok((set, skipped))
    }

    /// Adds the issuer's shared secret for the HS algorithms it allows.
    pub fn add_secret(&mut self, secret: &[u8], allowed: &[Alg]) {
        for alg in allowed
            .iter()
            .copied()
            .filter(|a| a.key_kind() == KeyKind::Secret)
        {
            self.entries.push(KeyEntry {
                kid: None,
                alg,
                key: KeyMaterial::Secret(secret.to_vec()),
            });
        }
    }

    fn add_jwk(&mut self, jwk: &Jwk, algs: KeyAlgs) -> Result<usize, String> {
        let declared = match &jwk.alg {
            Some(name) => match Alg::parse(name) {
                Some(alg) => Some(alg),
                // An alg we do not verify (e.g. RSA-OAEP) means "not for us".
                None => return Ok(0),
            },
            None => None,
        };
        let kind = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("RSA", _) => KeyKind::Rsa,
            ("EC", Some("P-256")) => KeyKind::P256,
            ("EC", Some("P-384")) => KeyKind::P384,
            ("OKP", Some("Ed25519")) => KeyKind::Ed25519,
            ("oct", _) => return Err("symmetric (oct) keys are not accepted from a JWKS; configure `shared_secret` instead".into()),
            _ => return Ok(0),
        };
        if let Some(alg) = declared {
            if alg.key_kind() != kind {
                return Err(format!("alg {alg} does not fit kty {}", jwk.kty));
            }
        }
        let serves: Vec<Alg> = algs
            .allowed
            .iter()
            .copied()
            .filter(|a| algs.serves(declared, kind, *a))
            .collect();
        if serves.is_empty() {
            return Ok(0);
        }
        let mut key = key_material(jwk, kind)?;
        if kind == KeyKind::P256
            && serves.contains(&Alg::ES256)
            && self.p256_tables < MAX_P256_TABLES
        {
            key = key.with_table();
            self.p256_tables += 1;
        }
        for alg in &serves {
            self.entries.push(KeyEntry {
                kid: jwk.kid.clone(),
                alg: *alg,
                key: key.clone(),
            });
        }
        Ok(serves.len())
    }
}

fn b64(field: &str, value: Option<&String>) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("missing \"{field}\""))?;
    Base64UrlSafeNoPadding::decode_to_vec(value, None)
        .map_err(|_| format!("\"{field}\" is not base64url"))
}

fn key_material(jwk: &Jwk, kind: KeyKind) -> Result<KeyMaterial, String> {
    let x = || b64("x", jwk.x.as_ref());
    let y = || b64("y", jwk.y.as_ref());
    match kind {
        KeyKind::Rsa => KeyMaterial::rsa(&b64("n", jwk.n.as_ref())?, &b64("e", jwk.e.as_ref())?),
        KeyKind::P256 => KeyMaterial::p256(&x()?, &y()?),
        KeyKind::P384 => KeyMaterial::p384(&x()?, &y()?),
        KeyKind::Ed25519 => KeyMaterial::ed25519(&x()?),
        KeyKind::Secret => Err("symmetric keys come from `shared_secret` only".into()),
    }
}

#[derive(Deserialize)]
struct JwksDoc {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    NotJwks(String),
    BadKey { key: String, problem: String },
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::NotJwks(why) => write!(f, "not a JWKS document: {why}"),
            JwksError::BadKey { key, problem } => write!(f, "{key}: {problem}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::jwt::test_vectors::vectors;

    #[test]
    fn rsa_key_without_alg_serves_every_allowed_rsa_algorithm() {
        let (set, skipped) =
            KeySet::from_jwks(&vectors().jwks, KeyAlgs::listed(&Alg::ASYMMETRIC)).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        for alg in [
            Alg::RS256,
            Alg::RS384,
            Alg::RS512,
            Alg::PS256,
            Alg::PS384,
            Alg::PS512,
        ] {
            assert!(set.find(Some("rsa1-any"), alg).is_ok(), "{alg}");
        }
        assert!(set.find(Some("rsa1"), Alg::RS256).is_ok());
        // A known kid that does not fit is no rotation: no refetch for it.
        assert_eq!(
            set.find(Some("rsa1"), Alg::PS256).err(),
            Some(KeyLookupError::AlgNotForKey {
                kid: "rsa1".into(),
                alg: Alg::PS256
            })
        );
        assert_eq!(
            set.find(Some("rsa1"), Alg::ES256).err(),
            Some(KeyLookupError::AlgNotForKey {
                kid: "rsa1".into(),
                alg: Alg::ES256
            })
        );
        assert_eq!(
            set.find(Some("nope"), Alg::RS256).err(),
            Some(KeyLookupError::UnknownKid("nope".into()))
        );
    }

    #[test]
    fn rsa_key_without_alg_serves_ps_only_where_listed() {
        // Issue 18: PS* is checked in wasm, so an RSA key without `alg` let
        // an attacker pick PS512 and pay ~5x RS256's rejection cost.
        let by_default = default_undeclared_rsa(&Alg::ASYMMETRIC);
        assert_eq!(by_default, vec![Alg::RS256, Alg::RS384, Alg::RS512]);
        let algs = KeyAlgs {
            allowed: &Alg::ASYMMETRIC,
            undeclared_rsa: &by_default,
        };
        let (set, _) = KeySet::from_jwks(&vectors().jwks, algs).unwrap();
        for alg in [Alg::RS256, Alg::RS384, Alg::RS512] {
            assert!(set.find(Some("rsa1-any"), alg).is_ok(), "{alg}");
        }
        for alg in [Alg::PS256, Alg::PS384, Alg::PS512] {
            assert_eq!(
                set.find(Some("rsa1-any"), alg).err(),
                Some(KeyLookupError::AlgNotForKey {
                    kid: "rsa1-any".into(),
                    alg
                }),
                "{alg}"
            );
        }
        // A key that declares PS256 keeps it.
        let n = b64u(&[0xc3; 256]);
        let doc = serde_json::json!({"keys": [{"kty": "RSA", "kid": "ps", "alg": "PS256", "n": n, "e": "AQAB"}]});
        let (set, skipped) = KeySet::from_jwks(doc.to_string().as_bytes(), algs).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        assert!(set.find(Some("ps"), Alg::PS256).is_ok());
        // Listed explicitly, PS256 is served by a key without `alg`.
        let listed = [Alg::RS256, Alg::PS256];
        let (set, _) = KeySet::from_jwks(&vectors().jwks, KeyAlgs::listed(&listed)).unwrap();
        assert!(set.find(Some("rsa1-any"), Alg::PS256).is_ok());
        assert!(set.find(Some("rsa1-any"), Alg::PS512).is_err());
    }

    #[test]
    fn allowed_algorithms_restrict_the_keys() {
        let (set, skipped) =
            KeySet::from_jwks(&vectors().jwks, KeyAlgs::listed(&[Alg::ES256])).unwrap();
        assert_eq!(set.len(), 1);
        assert!(!skipped.is_empty());
        assert!(set.find(Some("ec256"), Alg::ES256).is_ok());
        assert!(
            set.find(None, Alg::ES256).is_ok(),
            "exactly one key fits without kid"
        );
    }

    #[test]
    fn a_token_without_kid_needs_exactly_one_fitting_key() {
        let (set, _) =
            KeySet::from_jwks(&vectors().jwks, KeyAlgs::listed(&Alg::ASYMMETRIC)).unwrap();
        assert!(matches!(
            set.find(None, Alg::RS256),
            Err(KeyLookupError::Ambiguous { candidates: 2, .. })
        ));
        assert!(set.find(None, Alg::EdDSA).is_ok());
    }

    /// Only the first [`MAX_P256_TABLES`] P-256 keys of a document get a
    /// comb table; every key still verifies.
    #[test]
    fn comb_tables_for_the_first_p256_keys_only() {
        use crate::verify::SignatureVerifier as _;
        use p256::ecdsa::signature::Signer as _;
        use p256::ecdsa::{Signature, SigningKey};
        let signers: Vec<SigningKey> = (1..=MAX_P256_TABLES as u8 + 2)
            .map(|i| SigningKey::from_slice(&[i; 32]).unwrap())
            .collect();
        let keys: Vec<serde_json::Value> = signers
            .iter()
            .enumerate()
            .map(|(i, signer)| {
                let point = signer.verifying_key().to_sec1_point(false);
                let bytes = point.as_bytes();
                serde_json::json!({"kty":"EC","crv":"P-256","kid":format!("ec{i}"),
                    "x":b64u(&bytes[1..33]),"y":b64u(&bytes[33..65])})
            })
            .collect();
        let doc = serde_json::json!({ "keys": keys }).to_string();
        let (set, _) = KeySet::from_jwks(doc.as_bytes(), KeyAlgs::listed(&[Alg::ES256])).unwrap();
        let tabled: Vec<bool> = set
            .entries
            .iter()
            .map(|e| matches!(&e.key, KeyMaterial::P256 { table: Some(_), .. }))
            .collect();
        assert_eq!(tabled.len(), MAX_P256_TABLES + 2);
        assert!(tabled[..MAX_P256_TABLES].iter().all(|&t| t));
        assert!(tabled[MAX_P256_TABLES..].iter().all(|&t| !t));
        for (entry, signer) in set.entries.iter().zip(&signers) {
            let signature: Signature = signer.sign(b"input");
            let bytes = signature.to_bytes();
            assert!(crate::verify::PureRustVerifier
                .verify(Alg::ES256, &entry.key, b"input", &bytes)
                .is_ok());
            assert!(crate::verify::PureRustVerifier
                .verify(Alg::ES256, &entry.key, b"other", &bytes)
                .is_err());
        }
    }

    fn b64u(bytes: &[u8]) -> String {
        use ct_codecs::{Base64UrlSafeNoPadding, Encoder as _};
        Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
    }

    /// Keys that claim to be usable but are not, each with its reason.
    fn bad_keys() -> Vec<(serde_json::Value, &'static str)> {
        use serde_json::json;
        let odd = |len: usize| b64u(&vec![0xc3; len]);
        vec![
            (
                json!({"kty":"RSA","kid":"rsa-1024","n":odd(128),"e":"AQAB"}),
                "the RSA modulus has 1024 bits; 2048 to 4096 are accepted",
            ),
            (
                json!({"kty":"RSA","kid":"rsa-e3","n":odd(256),"e":"Aw"}),
                "the RSA exponent must be 65537",
            ),
            (
                json!({"kty":"RSA","kid":"rsa-16384","n":odd(2048),"e":"AQAB"}),
                "the RSA modulus has 16384 bits",
            ),
            (
                json!({"kty":"RSA","kid":"rsa-even","n":b64u(&[0xc2; 256]),"e":"AQAB"}),
                "the RSA modulus is even",
            ),
            (
                json!({"kty":"EC","crv":"P-256","kid":"ec-off-curve","x":b64u(&[1; 32]),"y":b64u(&[1; 32])}),
                "the point is not on the P-256 curve",
            ),
            (
                json!({"kty":"EC","crv":"P-384","kid":"ec-short","x":b64u(&[1; 32]),"y":b64u(&[1; 32])}),
                "x and y must be 48 bytes each, not 32 and 32",
            ),
            (
                json!({"kty":"OKP","crv":"Ed25519","kid":"ed-31","x":b64u(&[7; 31])}),
                "an Ed25519 key is 32 bytes, not 31",
            ),
            (
                json!({"kty":"OKP","crv":"Ed25519","kid":"ed-identity","x":b64u(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])}),
                "not a usable Ed25519 point",
            ),
            (
                json!({"kty":"EC","crv":"P-256","kid":"ec-as-rsa","alg":"RS256","x":"AA","y":"AA"}),
                "alg RS256 does not fit kty EC",
            ),
            (
                json!({"kty":"RSA","kid":"rsa-no-n","e":"AQAB"}),
                "missing \"n\"",
            ),
            (
                json!({"kty":"RSA","kid":"rsa-bad-b64","n":"***","e":"AQAB"}),
                "\"n\" is not base64url",
            ),
            (
                json!({"kty":"oct","kid":"hmac","k":"c2VjcmV0"}),
                "symmetric (oct) keys are not accepted",
            ),
            (json!({"kty":"RSA","kid":7}), "not a usable JWK"),
            (json!("not an object"), "not a usable JWK"),
        ]
    }

    #[test]
    fn broken_and_weak_keys_in_a_fetched_jwks_are_skipped_and_the_rest_used() {
        let good: serde_json::Value = serde_json::from_slice(&vectors().jwks).unwrap();
        let good = good["keys"].as_array().unwrap().clone();
        let bad = bad_keys();
        // Bad keys first and last: skipping one must not stop at it.
        let mut keys: Vec<serde_json::Value> = bad.iter().map(|(k, _)| k.clone()).collect();
        keys.extend(good.iter().cloned());
        keys.push(bad.first().unwrap().0.clone());
        let doc = serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap();

        let (set, skipped) = KeySet::from_jwks(&doc, KeyAlgs::listed(&Alg::ASYMMETRIC)).unwrap();
        let (clean, _) =
            KeySet::from_jwks(&vectors().jwks, KeyAlgs::listed(&Alg::ASYMMETRIC)).unwrap();
        assert_eq!(set.len(), clean.len());
        for kid in ["rsa1", "rsa1-any", "ec256", "ec384", "ed25519"] {
            assert!(set.has_kid(kid), "{kid}");
        }
        assert_eq!(skipped.len(), bad.len() + 1, "{skipped:#?}");
        for (i, ((key, why), note)) in bad.iter().zip(&skipped).enumerate() {
            let name = match key.get("kid").and_then(|k| k.as_str()) {
                Some(kid) => format!("keys[{i}] (kid \"{kid}\")"),
                None => format!("keys[{i}]"),
            };
            assert!(
                note.starts_with(&name) && note.contains(why),
                "{note:?} should name {name} and say {why:?}"
            );
        }
    }

    #[test]
    fn a_jwks_of_only_bad_keys_gives_an_empty_set_and_the_reasons() {
        let keys: Vec<serde_json::Value> = bad_keys().into_iter().map(|(k, _)| k).collect();
        let doc = serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap();
        let (set, skipped) = KeySet::from_jwks(&doc, KeyAlgs::listed(&Alg::ASYMMETRIC)).unwrap();
        assert!(set.is_empty());
        assert_eq!(skipped.len(), keys.len());
    }

    #[test]
    fn inline_jwks_refuses_a_broken_or_weak_key_with_the_key_named() {
        for (key, why) in bad_keys() {
            let doc = serde_json::to_vec(&serde_json::json!({ "keys": [key] })).unwrap();
            let err = KeySet::from_inline_jwks(&doc, KeyAlgs::listed(&Alg::ASYMMETRIC))
                .err()
                .unwrap_or_else(|| panic!("{key} was accepted"))
                .to_string();
            assert!(err.starts_with("keys[0]") && err.contains(why), "{err}");
        }
        // Keys meant for something else are skipped there too.
        let enc = br#"{"keys":[{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}]}"#;
        let (set, skipped) =
            KeySet::from_inline_jwks(enc, KeyAlgs::listed(&Alg::ASYMMETRIC)).unwrap();
        assert!(set.is_empty() && skipped.len() == 1);
    }

    #[test]
    fn documents_that_are_not_a_jwks_are_refused_whole() {
        for doc in [&b"<html>"[..], b"{}", br#"{"keys":{}}"#, b"[]"] {
            assert!(
                matches!(
                    KeySet::from_jwks(doc, KeyAlgs::listed(&Alg::ASYMMETRIC)),
                    Err(JwksError::NotJwks(_))
                ),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
    }

    #[test]
    fn a_key_not_allowed_for_the_issuer_is_not_parsed() {
        // A weak RSA key, but the issuer only takes ES256: not for us, not broken.
        let doc = br#"{"keys":[{"kty":"RSA","kid":"small","n":"AQAB","e":"AQAB"}]}"#;
        let (set, skipped) = KeySet::from_inline_jwks(doc, KeyAlgs::listed(&[Alg::ES256])).unwrap();
        assert!(set.is_empty());
        assert!(skipped[0].contains("no allowed algorithm"), "{skipped:?}");
    }

    #[test]
    fn encryption_keys_and_unknown_types_are_skipped() {
        let doc = br#"{"keys":[{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"},{"kty":"EC","crv":"secp256k1","x":"AA","y":"AA"},{"kty":"RSA","alg":"RSA-OAEP","n":"AQAB","e":"AQAB"}]}"#;
        let (set, skipped) = KeySet::from_jwks(doc, KeyAlgs::listed(&Alg::ASYMMETRIC)).unwrap();
        assert!(set.is_empty());
        assert_eq!(skipped.len(), 3);
    }
}
