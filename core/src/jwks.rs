//! Verification keys: JWKS documents turned into typed keys, and the lookup that
//! picks exactly one key for a token (by `kid` and algorithm, never "try them all").

use std::fmt;

use jwt_simple::prelude::*;
use serde::Deserialize;

/// The signature algorithms we verify. `none` is deliberately absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Alg {
    pub const ASYMMETRIC: [Alg; 9] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];
    pub const HMAC: [Alg; 3] = [Alg::HS256, Alg::HS384, Alg::HS512];

    pub fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "EdDSA" => Alg::EdDSA,
            "HS256" => Alg::HS256,
            "HS384" => Alg::HS384,
            "HS512" => Alg::HS512,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
        }
    }

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

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
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
    key: TypedKey,
}

enum TypedKey {
    RS256(RS256PublicKey),
    RS384(RS384PublicKey),
    RS512(RS512PublicKey),
    PS256(PS256PublicKey),
    PS384(PS384PublicKey),
    PS512(PS512PublicKey),
    ES256(ES256PublicKey),
    ES384(ES384PublicKey),
    EdDSA(Ed25519PublicKey),
    HS256(HS256Key),
    HS384(HS384Key),
    HS512(HS512Key),
}

impl KeyEntry {
    /// Checks the signature, and lets jwt-simple re-check the header `alg`
    /// against the key type (a second line against algorithm confusion) and the
    /// time claims with our skew. Claims were already checked by the caller.
    pub fn verify_signature(
        &self,
        token: &str,
        options: VerificationOptions,
    ) -> Result<(), String> {
        let o = Some(options);
        let result = match &self.key {
            TypedKey::RS256(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            TypedKey::RS384(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            TypedKey::RS512(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            TypedKey::PS256(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            TypedKey::PS384(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            TypedKey::PS512(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            TypedKey::ES256(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            TypedKey::ES384(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            TypedKey::EdDSA(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            TypedKey::HS256(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            TypedKey::HS384(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            TypedKey::HS512(k) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
        };
        result.map_err(|e| e.to_string())
    }
}

/// The keys of one issuer.
#[derive(Default)]
pub struct KeySet {
    entries: Vec<KeyEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLookupError {
    /// The token names a `kid` we do not have (for this alg): maybe a rotation.
    UnknownKid(String),
    /// No `kid` and zero or several keys fit the algorithm.
    Ambiguous { alg: Alg, candidates: usize },
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
                .ok_or_else(|| KeyLookupError::UnknownKid(kid.to_string())),
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

    /// Parses a JWKS document. Keys we cannot use (other `use`, unknown `kty`
    /// or curve, an `alg` the issuer does not allow) are skipped with a note;
    /// a key that claims to be usable but is broken or too weak is an error,
    /// so a misconfigured authorization server is noticed rather than ignored.
    pub fn from_jwks(json: &[u8], allowed: &[Alg]) -> Result<(KeySet, Vec<String>), JwksError> {
        let doc: JwksDoc =
            serde_json::from_slice(json).map_err(|e| JwksError::NotJwks(e.to_string()))?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (i, jwk) in doc.keys.iter().enumerate() {
            let name = match &jwk.kid {
                Some(kid) => format!("keys[{i}] (kid \"{kid}\")"),
                None => format!("keys[{i}]"),
            };
            if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
                skipped.push(format!("{name}: use is not \"sig\""));
                continue;
            }
            match set.add_jwk(jwk, allowed) {
                Ok(0) => skipped.push(format!("{name}: no allowed algorithm fits kty {}", jwk.kty)),
                Ok(_) => {}
                Err(problem) => return Err(JwksError::BadKey { key: name, problem }),
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
            let key = match alg {
                Alg::HS256 => TypedKey::HS256(HS256Key::from_bytes(secret)),
                Alg::HS384 => TypedKey::HS384(HS384Key::from_bytes(secret)),
                _ => TypedKey::HS512(HS512Key::from_bytes(secret)),
            };
            self.entries.push(KeyEntry {
                kid: None,
                alg,
                key,
            });
        }
    }

    fn add_jwk(&mut self, jwk: &Jwk, allowed: &[Alg]) -> Result<usize, String> {
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
        let algs: Vec<Alg> = allowed
            .iter()
            .copied()
            .filter(|a| a.key_kind() == kind && declared.is_none_or(|d| d == *a))
            .collect();
        for alg in &algs {
            let key = typed_key(jwk, *alg)?;
            self.entries.push(KeyEntry {
                kid: jwk.kid.clone(),
                alg: *alg,
                key,
            });
        }
        Ok(algs.len())
    }
}

fn b64(field: &str, value: Option<&String>) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("missing \"{field}\""))?;
    Base64UrlSafeNoPadding::decode_to_vec(value, None)
        .map_err(|_| format!("\"{field}\" is not base64url"))
}

fn typed_key(jwk: &Jwk, alg: Alg) -> Result<TypedKey, String> {
    let weak = |e: jwt_simple::Error| {
        format!("unusable {alg} key: {e} (RSA keys must be 2048-4096 bits with e = 65537)")
    };
    let bad = |e: jwt_simple::Error| format!("unusable {alg} key: {e}");
    Ok(match alg.key_kind() {
        KeyKind::Rsa => {
            let (n, e) = (b64("n", jwk.n.as_ref())?, b64("e", jwk.e.as_ref())?);
            match alg {
                Alg::RS256 => {
                    TypedKey::RS256(RS256PublicKey::from_components(&n, &e).map_err(weak)?)
                }
                Alg::RS384 => {
                    TypedKey::RS384(RS384PublicKey::from_components(&n, &e).map_err(weak)?)
                }
                Alg::RS512 => {
                    TypedKey::RS512(RS512PublicKey::from_components(&n, &e).map_err(weak)?)
                }
                Alg::PS256 => {
                    TypedKey::PS256(PS256PublicKey::from_components(&n, &e).map_err(weak)?)
                }
                Alg::PS384 => {
                    TypedKey::PS384(PS384PublicKey::from_components(&n, &e).map_err(weak)?)
                }
                _ => TypedKey::PS512(PS512PublicKey::from_components(&n, &e).map_err(weak)?),
            }
        }
        KeyKind::P256 | KeyKind::P384 => {
            let (x, y) = (b64("x", jwk.x.as_ref())?, b64("y", jwk.y.as_ref())?);
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            if alg == Alg::ES256 {
                TypedKey::ES256(ES256PublicKey::from_bytes(&point).map_err(bad)?)
            } else {
                TypedKey::ES384(ES384PublicKey::from_bytes(&point).map_err(bad)?)
            }
        }
        KeyKind::Ed25519 => {
            TypedKey::EdDSA(Ed25519PublicKey::from_bytes(&b64("x", jwk.x.as_ref())?).map_err(bad)?)
        }
        KeyKind::Secret => return Err("symmetric keys come from `shared_secret` only".into()),
    })
}

#[derive(Deserialize)]
struct JwksDoc {
    keys: Vec<Jwk>,
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
        let (set, skipped) = KeySet::from_jwks(&vectors().jwks, &Alg::ASYMMETRIC).unwrap();
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
        assert_eq!(
            set.find(Some("rsa1"), Alg::PS256).err(),
            Some(KeyLookupError::UnknownKid("rsa1".into()))
        );
        assert_eq!(
            set.find(Some("rsa1"), Alg::ES256).err(),
            Some(KeyLookupError::UnknownKid("rsa1".into()))
        );
    }

    #[test]
    fn allowed_algorithms_restrict_the_keys() {
        let (set, skipped) = KeySet::from_jwks(&vectors().jwks, &[Alg::ES256]).unwrap();
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
        let (set, _) = KeySet::from_jwks(&vectors().jwks, &Alg::ASYMMETRIC).unwrap();
        assert!(matches!(
            set.find(None, Alg::RS256),
            Err(KeyLookupError::Ambiguous { candidates: 2, .. })
        ));
        assert!(set.find(None, Alg::EdDSA).is_ok());
    }

    #[test]
    fn broken_and_weak_keys_are_refused_with_the_key_named() {
        let weak = br#"{"keys":[{"kty":"RSA","kid":"small","n":"AQAB","e":"AQAB"}]}"#;
        let err = KeySet::from_jwks(weak, &Alg::ASYMMETRIC)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("kid \"small\"") && err.contains("2048-4096"),
            "{err}"
        );
        let oct = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#;
        assert!(KeySet::from_jwks(oct, &Alg::ASYMMETRIC).is_err());
        let mismatch = br#"{"keys":[{"kty":"EC","crv":"P-256","alg":"RS256","x":"AA","y":"AA"}]}"#;
        assert!(KeySet::from_jwks(mismatch, &Alg::ASYMMETRIC).is_err());
        let bad_point = br#"{"keys":[{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}]}"#;
        assert!(KeySet::from_jwks(bad_point, &Alg::ASYMMETRIC).is_err());
        assert!(KeySet::from_jwks(b"<html>", &Alg::ASYMMETRIC).is_err());
        assert!(KeySet::from_jwks(b"{}", &Alg::ASYMMETRIC).is_err());
    }

    #[test]
    fn encryption_keys_and_unknown_types_are_skipped() {
        let doc = br#"{"keys":[{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"},{"kty":"EC","crv":"secp256k1","x":"AA","y":"AA"},{"kty":"RSA","alg":"RSA-OAEP","n":"AQAB","e":"AQAB"}]}"#;
        let (set, skipped) = KeySet::from_jwks(doc, &Alg::ASYMMETRIC).unwrap();
        assert!(set.is_empty());
        assert_eq!(skipped.len(), 3);
    }
}
