//! Signature checks over the JWS signing input (`header_b64 "." payload_b64`),
//! behind [`SignatureVerifier`] so the engine can be given another
//! implementation (tests, or the host's own crypto). No token is parsed here:
//! [`crate::jwt::precheck`] reads header and claims exactly once.
//!
//! [`KeyMaterial`] is a key checked once, when it is loaded: RSA 2048-4096
//! bits with e = 65537, EC points on their curve, Ed25519 points canonical and
//! not of small order.

use std::fmt;

use ed25519_compact as ed25519;
use p256::ecdsa::signature::Verifier as _;
use superboring::bn::BigNum;
use superboring::hash::MessageDigest;
use superboring::pkey::{PKey, Public};
use superboring::rsa::{Padding, Rsa};
use superboring::sign::Verifier;

use crate::alg::Alg;

const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 4096;

/// A verification key, validated at load.
#[derive(Clone)]
pub enum KeyMaterial {
    Rsa(Box<PKey<Public>>),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519::PublicKey),
    /// An HMAC secret (from `shared_secret` only).
    Secret(Vec<u8>),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret, not even in a test failure.
        f.write_str(match self {
            KeyMaterial::Rsa(_) => "KeyMaterial::Rsa",
            KeyMaterial::P256(_) => "KeyMaterial::P256",
            KeyMaterial::P384(_) => "KeyMaterial::P384",
            KeyMaterial::Ed25519(_) => "KeyMaterial::Ed25519",
            KeyMaterial::Secret(_) => "KeyMaterial::Secret",
        })
    }
}

impl KeyMaterial {
    /// An RSA public key from its big-endian modulus and exponent.
    pub fn rsa(n: &[u8], e: &[u8]) -> Result<KeyMaterial, String> {
        let n = trim_leading_zeros(n);
        let bits = n.first().map_or(0, |top| {
            (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize)
        });
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(format!(
                "the RSA modulus has {bits} bits; {MIN_RSA_BITS} to {MAX_RSA_BITS} are accepted"
            ));
        }
        if n.last().is_none_or(|low| low & 1 == 0) {
            return Err("the RSA modulus is even".into());
        }
        if trim_leading_zeros(e) != [1, 0, 1] {
            return Err("the RSA exponent must be 65537".into());
        }
        let bad = |e: superboring::error::ErrorStack| format!("unusable RSA key: {e}");
        let (n, e) = (
            BigNum::from_slice(n).map_err(bad)?,
            BigNum::from_slice(e).map_err(bad)?,
        );
        let rsa = Rsa::from_public_components(n, e).map_err(bad)?;
        Ok(KeyMaterial::Rsa(Box::new(
            PKey::from_rsa(rsa).map_err(bad)?,
        )))
    }

    /// A P-256 point from its affine coordinates.
    pub fn p256(x: &[u8], y: &[u8]) -> Result<KeyMaterial, String> {
        let point = uncompressed_point(x, y, 32)?;
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
            .map(KeyMaterial::P256)
            .map_err(|_| "the point is not on the P-256 curve".into())
    }

    /// A P-384 point from its affine coordinates.
    pub fn p384(x: &[u8], y: &[u8]) -> Result<KeyMaterial, String> {
        let point = uncompressed_point(x, y, 48)?;
        p384::ecdsa::VerifyingKey::from_sec1_bytes(&point)
            .map(KeyMaterial::P384)
            .map_err(|_| "the point is not on the P-384 curve".into())
    }

    /// An Ed25519 public key (32 bytes).
    pub fn ed25519(x: &[u8]) -> Result<KeyMaterial, String> {
        let key = ed25519::PublicKey::from_slice(x)
            .map_err(|_| format!("an Ed25519 key is 32 bytes, not {}", x.len()))?;
        key.validate()
            .map_err(|_| "not a usable Ed25519 point (non-canonical or small order)")?;
        Ok(KeyMaterial::Ed25519(key))
    }
}

fn trim_leading_zeros(x: &[u8]) -> &[u8] {
    let first = x.iter().position(|&b| b != 0).unwrap_or(x.len());
    x.get(first..).unwrap_or_default()
}

fn uncompressed_point(x: &[u8], y: &[u8], size: usize) -> Result<Vec<u8>, String> {
    if x.len() != size || y.len() != size {
        return Err(format!(
            "x and y must be {size} bytes each, not {} and {}",
            x.len(),
            y.len()
        ));
    }
    let mut point = Vec::with_capacity(1 + 2 * size);
    point.push(0x04);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    Ok(point)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// The key cannot verify this algorithm (a key lookup bug, or algorithm
    /// confusion): never a reason to try another key.
    WrongKey(Alg),
    /// The signature cannot be one of this algorithm, whatever the key.
    Length {
        alg: Alg,
        expected: usize,
        got: usize,
    },
    /// The signature does not match the signing input and key.
    Mismatch,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::WrongKey(alg) => write!(f, "the selected key cannot verify {alg}"),
            VerifyError::Length { alg, expected, got } => {
                write!(
                    f,
                    "{alg} signatures are {expected} bytes, this one is {got}"
                )
            }
            VerifyError::Mismatch => f.write_str("the signature does not match"),
        }
    }
}

pub trait SignatureVerifier {
    fn verify(
        &self,
        alg: Alg,
        key: &KeyMaterial,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), VerifyError>;
}

/// Verification in pure Rust (RustCrypto's P-256/P-384 and RSA, ed25519-compact,
/// constant-time HMAC comparison from hmac-sha256/hmac-sha512).
pub struct PureRustVerifier;

impl SignatureVerifier for PureRustVerifier {
    fn verify(
        &self,
        alg: Alg,
        key: &KeyMaterial,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), VerifyError> {
        let ok = match (alg, key) {
            (
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512,
                KeyMaterial::Rsa(pkey),
            ) => rsa_verify(alg, pkey, signing_input, signature),
            (Alg::ES256, KeyMaterial::P256(key)) => {
                let sig = p256::ecdsa::Signature::from_slice(fixed::<64>(alg, signature)?)
                    .map_err(|_| VerifyError::Mismatch)?;
                key.verify(signing_input, &sig).is_ok()
            }
            (Alg::ES384, KeyMaterial::P384(key)) => {
                let sig = p384::ecdsa::Signature::from_slice(fixed::<96>(alg, signature)?)
                    .map_err(|_| VerifyError::Mismatch)?;
                key.verify(signing_input, &sig).is_ok()
            }
            (Alg::EdDSA, KeyMaterial::Ed25519(key)) => {
                let sig = ed25519::Signature::new(*fixed::<64>(alg, signature)?);
                key.verify(signing_input, &sig).is_ok()
            }
            // The crates compare the MACs in constant time.
            (Alg::HS256, KeyMaterial::Secret(secret)) => {
                hmac_sha256::HMAC::verify(signing_input, secret, fixed::<32>(alg, signature)?)
            }
            (Alg::HS384, KeyMaterial::Secret(secret)) => hmac_sha512::sha384::HMAC::verify(
                signing_input,
                secret,
                fixed::<48>(alg, signature)?,
            ),
            (Alg::HS512, KeyMaterial::Secret(secret)) => {
                hmac_sha512::HMAC::verify(signing_input, secret, fixed::<64>(alg, signature)?)
            }
            _ => return Err(VerifyError::WrongKey(alg)),
        };
        if ok {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

fn fixed<const N: usize>(alg: Alg, signature: &[u8]) -> Result<&[u8; N], VerifyError> {
    signature.try_into().map_err(|_| VerifyError::Length {
        alg,
        expected: N,
        got: signature.len(),
    })
}

fn rsa_verify(alg: Alg, pkey: &PKey<Public>, signing_input: &[u8], signature: &[u8]) -> bool {
    let (digest, padding) = match alg {
        Alg::RS256 => (MessageDigest::sha256(), Padding::PKCS1),
        Alg::RS384 => (MessageDigest::sha384(), Padding::PKCS1),
        Alg::RS512 => (MessageDigest::sha512(), Padding::PKCS1),
        Alg::PS256 => (MessageDigest::sha256(), Padding::PKCS1_PSS),
        Alg::PS384 => (MessageDigest::sha384(), Padding::PKCS1_PSS),
        _ => (MessageDigest::sha512(), Padding::PKCS1_PSS),
    };
    // The default PSS salt length is the digest length, as RFC 7518 §3.5 requires.
    let Ok(mut verifier) = Verifier::new(digest, pkey) else {
        return false;
    };
    verifier.set_rsa_padding(padding).is_ok()
        && verifier.update(signing_input).is_ok()
        && verifier.verify(signature).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use ct_codecs::{Base64UrlSafeNoPadding, Decoder as _};

    use super::*;
    use crate::jwks::KeySet;
    use crate::jwt::test_vectors::vectors;

    fn all_algs() -> Vec<Alg> {
        Alg::ASYMMETRIC.iter().chain(&Alg::HMAC).copied().collect()
    }

    fn keys() -> KeySet {
        let v = vectors();
        let (mut set, _) = KeySet::from_jwks(&v.jwks, &all_algs()).unwrap();
        set.add_secret(v.hs_secret.as_bytes(), &Alg::HMAC);
        set
    }

    /// (signing input, signature bytes, key) of the good vector for `alg`.
    fn good(alg: Alg) -> (String, Vec<u8>, KeyMaterial) {
        let v = vectors();
        let token = v.token(&format!("good_{alg}"));
        let (input, sig) = token.rsplit_once('.').unwrap();
        let header = input.split('.').next().unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&Base64UrlSafeNoPadding::decode_to_vec(header, None).unwrap())
                .unwrap();
        let kid = header["kid"].as_str();
        let keys = keys();
        let key = keys.find(kid, alg).unwrap().key.clone();
        let sig = Base64UrlSafeNoPadding::decode_to_vec(sig, None).unwrap();
        (input.to_string(), sig, key)
    }

    #[test]
    fn each_algorithm_verifies_and_a_changed_input_or_signature_does_not() {
        for alg in all_algs() {
            let (input, sig, key) = good(alg);
            let v = PureRustVerifier;
            assert_eq!(v.verify(alg, &key, input.as_bytes(), &sig), Ok(()), "{alg}");
            let mut other = input.clone().into_bytes();
            other.push(b'x');
            assert_eq!(
                v.verify(alg, &key, &other, &sig),
                Err(VerifyError::Mismatch),
                "{alg}"
            );
            let mut flipped = sig.clone();
            *flipped.last_mut().unwrap() ^= 1;
            assert_eq!(
                v.verify(alg, &key, input.as_bytes(), &flipped),
                Err(VerifyError::Mismatch),
                "{alg}"
            );
        }
    }

    fn family(alg: Alg) -> &'static str {
        match alg {
            Alg::ES256 => "P-256",
            Alg::ES384 => "P-384",
            Alg::EdDSA => "Ed25519",
            a if Alg::HMAC.contains(&a) => "secret",
            _ => "RSA",
        }
    }

    #[test]
    fn a_key_never_verifies_an_algorithm_of_another_kind() {
        let materials: Vec<(Alg, KeyMaterial)> =
            all_algs().into_iter().map(|a| (a, good(a).2)).collect();
        for alg in all_algs() {
            let (input, sig, _) = good(alg);
            for (owner, key) in &materials {
                let same_kind = family(*owner) == family(alg);
                if !same_kind {
                    assert_eq!(
                        PureRustVerifier.verify(alg, key, input.as_bytes(), &sig),
                        Err(VerifyError::WrongKey(alg)),
                        "{alg} with the key of {owner}"
                    );
                }
            }
        }
    }

    #[test]
    fn fixed_size_signatures_of_the_wrong_length_are_refused_by_length() {
        for (alg, size) in [
            (Alg::ES256, 64),
            (Alg::ES384, 96),
            (Alg::EdDSA, 64),
            (Alg::HS256, 32),
            (Alg::HS384, 48),
            (Alg::HS512, 64),
        ] {
            let (input, sig, key) = good(alg);
            assert_eq!(sig.len(), size);
            for got in [0, size - 1, size + 1] {
                let mut wrong = sig.clone();
                wrong.resize(got, 0);
                assert_eq!(
                    PureRustVerifier.verify(alg, &key, input.as_bytes(), &wrong),
                    Err(VerifyError::Length {
                        alg,
                        expected: size,
                        got
                    })
                );
            }
        }
    }

    #[test]
    fn degenerate_signatures_are_mismatches_not_panics() {
        for alg in all_algs() {
            let (input, sig, key) = good(alg);
            for fill in [0x00, 0xff] {
                let odd = vec![fill; sig.len()];
                assert_eq!(
                    PureRustVerifier.verify(alg, &key, input.as_bytes(), &odd),
                    Err(VerifyError::Mismatch),
                    "{alg} {fill}"
                );
            }
        }
        // RSA signatures have the modulus length; anything else is a mismatch.
        let (input, sig, key) = good(Alg::RS256);
        for len in [0, 1, sig.len() - 1, sig.len() + 1] {
            assert_eq!(
                PureRustVerifier.verify(Alg::RS256, &key, input.as_bytes(), &vec![1; len]),
                Err(VerifyError::Mismatch)
            );
        }
    }

    #[test]
    fn key_material_debug_never_shows_a_secret() {
        let shown = format!("{:?}", KeyMaterial::Secret(b"hunter2-hunter2".to_vec()));
        assert!(
            !shown.contains("hunter2") && !shown.contains("104"),
            "{shown}"
        );
    }
}
