//! Signature checks over the JWS signing input (`header_b64 "." payload_b64`),
//! behind [`SignatureVerifier`] so the engine can be given another
//! implementation (tests, or the host's own crypto). No token is parsed here:
//! [`crate::jwt::precheck`] reads header and claims exactly once.
//!
//! [`KeyMaterial`] is a key checked once, when it is loaded: RSA 2048-4096
//! bits with e = 65537, EC points on their curve, Ed25519 points canonical and
//! not of small order.

use std::fmt;
use std::sync::{Arc, OnceLock};

use p256::ecdsa::signature::Verifier as _;

use crate::alg::Alg;
use crate::ed25519::{self, Ed25519Key};
use crate::es256::{self, KeyTable};
use crate::rsa::{self, RsaKey};

const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 4096;

/// A verification key, validated at load. RSA and EC keys also carry their
/// DER SubjectPublicKeyInfo, built once, for the host's crypto.
#[derive(Clone)]
pub enum KeyMaterial {
    Rsa {
        key: Box<RsaKey>,
        spki: Box<[u8]>,
    },
    P256 {
        key: p256::ecdsa::VerifyingKey,
        spki: Box<[u8]>,
        /// The slot of the comb table for the pure-Rust check
        /// ([`crate::es256`]), for the first few keys of a JWKS only. Built
        /// by the first pure-Rust ES256 check with the key, so never where
        /// the host checks ES256 (`crypto: "host"` or `"auto"` on Envoy).
        table: Option<Arc<OnceLock<KeyTable>>>,
    },
    P384 {
        key: p384::ecdsa::VerifyingKey,
        spki: Box<[u8]>,
    },
    Ed25519(Box<Ed25519Key>),
    /// An HMAC secret (from `shared_secret` only).
    Secret(Vec<u8>),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret, not even in a test failure.
        f.write_str(match self {
            KeyMaterial::Rsa { .. } => "KeyMaterial::Rsa",
            KeyMaterial::P256 { .. } => "KeyMaterial::P256",
            KeyMaterial::P384 { .. } => "KeyMaterial::P384",
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
        let key = RsaKey::new(n).ok_or("unusable RSA key")?;
        Ok(KeyMaterial::Rsa {
            key: Box::new(key),
            spki: der::rsa_spki(n, trim_leading_zeros(e)).into_boxed_slice(),
        })
    }

    /// A P-256 point from its affine coordinates.
    pub fn p256(x: &[u8], y: &[u8]) -> Result<KeyMaterial, String> {
        let point = uncompressed_point(x, y, 32)?;
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
            .map_err(|_| "the point is not on the P-256 curve".to_string())?;
        Ok(KeyMaterial::P256 {
            key,
            spki: der::ec_spki(der::OID_P256, &point).into_boxed_slice(),
            table: None,
        })
    }

    /// The same key with room for a comb table for [`crate::es256`] if it
    /// is a P-256 key (about 18 KB once built, by the first pure-Rust check;
    /// see [`crate::jwks::MAX_P256_TABLES`]).
    pub fn with_table(self) -> KeyMaterial {
        match self {
            KeyMaterial::P256 { key, spki, .. } => {
                let table = Some(Arc::new(OnceLock::new()));
                KeyMaterial::P256 { key, spki, table }
            }
            other => other,
        }
    }

    /// A P-384 point from its affine coordinates.
    pub fn p384(x: &[u8], y: &[u8]) -> Result<KeyMaterial, String> {
        let point = uncompressed_point(x, y, 48)?;
        let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point)
            .map_err(|_| "the point is not on the P-384 curve".to_string())?;
        Ok(KeyMaterial::P384 {
            key,
            spki: der::ec_spki(der::OID_P384, &point).into_boxed_slice(),
        })
    }

    /// An Ed25519 public key (32 bytes).
    pub fn ed25519(x: &[u8]) -> Result<KeyMaterial, String> {
        match Ed25519Key::from_bytes(x) {
            Ok(key) => Ok(KeyMaterial::Ed25519(Box::new(key))),
            Err(ed25519::KeyError::Length(len)) => {
                Err(format!("an Ed25519 key is 32 bytes, not {len}"))
            }
            Err(ed25519::KeyError::Unusable) => {
                Err("not a usable Ed25519 point (non-canonical or small order)".into())
            }
        }
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

/// Verification in pure Rust (RustCrypto's P-256/P-384, with comb tables
/// for ES256 where the key has one ([`crate::es256`]), our own RSA in
/// [`crate::rsa`], Ed25519 over curve25519-dalek in [`crate::ed25519`],
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
                KeyMaterial::Rsa { key, .. },
            ) => rsa_verify(alg, key, signing_input, signature),
            (
                Alg::ES256,
                KeyMaterial::P256 {
                    key,
                    table: Some(table),
                    ..
                },
            ) => es256::verify(
                table.get_or_init(|| KeyTable::new(key)),
                signing_input,
                fixed::<64>(alg, signature)?,
            ),
            (Alg::ES256, KeyMaterial::P256 { key, .. }) => {
                let sig = p256::ecdsa::Signature::from_slice(fixed::<64>(alg, signature)?)
                    .map_err(|_| VerifyError::Mismatch)?;
                key.verify(signing_input, &sig).is_ok()
            }
            (Alg::ES384, KeyMaterial::P384 { key, .. }) => {
                let sig = p384::ecdsa::Signature::from_slice(fixed::<96>(alg, signature)?)
                    .map_err(|_| VerifyError::Mismatch)?;
                key.verify(signing_input, &sig).is_ok()
            }
            (Alg::EdDSA, KeyMaterial::Ed25519(key)) => {
                key.verify(signing_input, fixed::<64>(alg, signature)?)
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

fn rsa_verify(alg: Alg, key: &RsaKey, signing_input: &[u8], signature: &[u8]) -> bool {
    use rsa::{Hash, Padding};
    let (hash, padding) = match alg {
        Alg::RS256 => (Hash::Sha256, Padding::Pkcs1v15),
        Alg::RS384 => (Hash::Sha384, Padding::Pkcs1v15),
        Alg::RS512 => (Hash::Sha512, Padding::Pkcs1v15),
        Alg::PS256 => (Hash::Sha256, Padding::Pss),
        Alg::PS384 => (Hash::Sha384, Padding::Pss),
        _ => (Hash::Sha512, Padding::Pss),
    };
    key.verify(hash, padding, signing_input, signature)
}

/// Verification by the host's crypto (Envoy's BoringSSL, through the
/// `verify_signature` foreign function) for RS256/384/512 and ES256/384;
/// everything else, and any call the host cannot answer, in pure Rust. A
/// host error is never a pass: it falls back to checking here.
///
/// `call` sends a serialized `VerifySignatureArguments` and returns the
/// serialized `VerifySignatureResult` (Envoy's
/// `source/extensions/common/wasm/ext/verify_signature.proto`).
pub struct HostVerifier<F> {
    call: F,
}

impl<F: Fn(&[u8]) -> Result<Vec<u8>, String>> HostVerifier<F> {
    pub fn new(call: F) -> Self {
        HostVerifier { call }
    }
}

impl<F: Fn(&[u8]) -> Result<Vec<u8>, String>> SignatureVerifier for HostVerifier<F> {
    fn verify(
        &self,
        alg: Alg,
        key: &KeyMaterial,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), VerifyError> {
        let (hash, spki, der_signature) = match (alg, key) {
            (Alg::RS256, KeyMaterial::Rsa { spki, .. }) => ("sha256", spki, None),
            (Alg::RS384, KeyMaterial::Rsa { spki, .. }) => ("sha384", spki, None),
            (Alg::RS512, KeyMaterial::Rsa { spki, .. }) => ("sha512", spki, None),
            // JOSE's r || s becomes the DER the host's EVP verify expects.
            (Alg::ES256, KeyMaterial::P256 { spki, .. }) => (
                "sha256",
                spki,
                Some(der::ecdsa_signature(fixed::<64>(alg, signature)?)),
            ),
            (Alg::ES384, KeyMaterial::P384 { spki, .. }) => (
                "sha384",
                spki,
                Some(der::ecdsa_signature(fixed::<96>(alg, signature)?)),
            ),
            _ => return PureRustVerifier.verify(alg, key, signing_input, signature),
        };
        let arguments = host_arguments(
            hash,
            spki,
            der_signature.as_deref().unwrap_or(signature),
            signing_input,
        );
        match (self.call)(&arguments).and_then(|reply| host_result(&reply)) {
            Ok(true) => Ok(()),
            Ok(false) => Err(VerifyError::Mismatch),
            Err(_) => PureRustVerifier.verify(alg, key, signing_input, signature),
        }
    }
}

/// `VerifySignatureArguments { hash_function = 1; public_key = 2 (DER);
/// signature = 3; text = 4 }`, protobuf wire format.
fn host_arguments(hash: &str, spki: &[u8], signature: &[u8], text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + hash.len() + spki.len() + signature.len() + text.len());
    for (field, bytes) in [(1u8, hash.as_bytes()), (2, spki), (3, signature), (4, text)] {
        out.push(field << 3 | 2);
        let mut len = bytes.len();
        loop {
            let low = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(low);
                break;
            }
            out.push(low | 0x80);
        }
        out.extend_from_slice(bytes);
    }
    out
}

/// `VerifySignatureResult { bool result = 1; string error = 2 }`: the
/// verdict, or the host's error.
fn host_result(reply: &[u8]) -> Result<bool, String> {
    let mut rest = reply;
    let mut result = false;
    let mut error = None;
    while let Some((&key, tail)) = rest.split_first() {
        let (value, tail) = varint(tail).ok_or("a truncated answer")?;
        match (key >> 3, key & 7) {
            (1, 0) => {
                result = value == 1;
                rest = tail;
            }
            (field, 2) => {
                let len = usize::try_from(value).map_err(|_| "a field too long")?;
                let (bytes, tail) = (tail.get(..len), tail.get(len..));
                let (Some(bytes), Some(tail)) = (bytes, tail) else {
                    return Err("a truncated answer".into());
                };
                if field == 2 && !bytes.is_empty() {
                    error = Some(String::from_utf8_lossy(bytes).into_owned());
                }
                rest = tail;
            }
            (_, 0) => rest = tail,
            _ => return Err("an answer that is not a VerifySignatureResult".into()),
        }
    }
    match error {
        // Envoy's words for a signature that does not match (its
        // `UtilityImpl::verifySignature`): an answer, not a failure to give one.
        Some(e) if e.starts_with(MISMATCH_TEXT) => Ok(false),
        Some(e) => Err(e),
        None => Ok(result),
    }
}

const MISMATCH_TEXT: &str = "Failed to verify digest.";

fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, bytes.get(i + 1..)?));
        }
    }
    None
}

/// Checks a verifier on fixed RS256 and ES256 vectors: each good signature
/// passes, and the same signature over other text fails (a host that says
/// yes to everything is caught here, at load).
pub fn self_test(verifier: &dyn SignatureVerifier) -> Result<(), String> {
    use ct_codecs::{Base64UrlSafeNoPadding, Decoder as _};
    let b64 = |s: &str| Base64UrlSafeNoPadding::decode_to_vec(s, None).unwrap_or_default();
    let rsa = KeyMaterial::rsa(&b64(SELF_TEST_RSA_N), &[1, 0, 1])?;
    let ec = KeyMaterial::p256(&b64(SELF_TEST_EC_X), &b64(SELF_TEST_EC_Y))?;
    for (alg, key, signature) in [
        (Alg::RS256, &rsa, b64(SELF_TEST_RSA_SIG)),
        (Alg::ES256, &ec, b64(SELF_TEST_EC_SIG)),
    ] {
        verifier
            .verify(alg, key, SELF_TEST_TEXT, &signature)
            .map_err(|e| format!("{alg} self-test: a good signature failed ({e})"))?;
        if verifier
            .verify(alg, key, b"another text", &signature)
            .is_ok()
        {
            return Err(format!("{alg} self-test: a wrong signature passed"));
        }
    }
    Ok(())
}

const SELF_TEST_TEXT: &[u8] = b"oauth-pep host crypto self-test";
const SELF_TEST_RSA_N: &str = "qyToITBHdppCNpVpYiKD7pKqgom5TOQKYxMVlbJMCTq7lB3fJGs9b2iGkVlDI9sBQTM7i7kw6lUl-EfS4yAESYo2BQY6vMP2iXfq0JdE2WkaSwsRFghrp8ZqjBWk1VFasTiUU8EouZ0GF4u7hCpqQuUWdPWHecRStDXcjlmFtCxHvqpzmRAZYxkD91xxHI3jhjNlmAMr6Cu6b96_J_wPa1X-akT8uwADgjtqgVGLTLDCPy47j4InE7F3xz9ZqEc7LMfGHpV8Fst_I6WOXqqEc34IqR9OdcQful661vTkl7NOLCrc3lE7ewC0e-w9gUM4D-k0jIuX6o-cHlq_b7aW4w";
const SELF_TEST_RSA_SIG: &str = "nQXe-na9XvfBSp49ZluGqPG6iyc8i_gSONTRN5zGjl-cwxOprqfBrxYLpi7aM1d6-y1fSK1jPbzqIQo6qqPm4rFi5psNAq9CnGvd5u-aUqA4pd_e5bNiXivK89JE_qW-vBDAq0XriIzSMCG-UUwqkEGFt4g-Wq-Ifa1vIvsEqt7RXp_D8ps8M4XJI25nr3cbUpFbw5CdaRTRPWUeleoDDC3tBP6H9P56nyvifKml-HJQPPD7SBFA0zQ2czgVAwHT45eeZoQmaAmqSWbTb7NDU2V8IkeW7qRStp04--8mDDSIqV4qRhvwXUQtowCPIk9ulxV9X-zTF23dk9niHKCT3Q";
const SELF_TEST_EC_X: &str = "FlJm2-OfbXrHQbu-79EZq77njXFtiesFaGCGpdBPhtM";
const SELF_TEST_EC_Y: &str = "auBCQdgcpCyG7IITPxEVSvVST2hPJ8JkoyUdQSGN3jM";
const SELF_TEST_EC_SIG: &str =
    "lmmvSiCfFnykEowjDBHDBASOgGWIq_ipoC3UAQWVjaKqiTXGucrNTdQ4S1WajaE3C0qe6shaWyYuO_fgMxvK4Q";

/// The few DER structures the host's crypto needs: SubjectPublicKeyInfo for
/// RSA and EC keys (RFC 5280, RFC 3279, RFC 5480) and ECDSA signatures.
mod der {
    /// 1.2.840.10045.3.1.7 (prime256v1) and 1.3.132.0.34 (secp384r1).
    pub const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    pub const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    /// 1.2.840.10045.2.1 (id-ecPublicKey) and 1.2.840.113549.1.1.1 (rsaEncryption).
    const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let first = bytes
                .iter()
                .position(|&b| b != 0)
                .unwrap_or(bytes.len() - 1);
            let significant = bytes.get(first..).unwrap_or_default();
            out.push(0x80 | significant.len() as u8);
            out.extend_from_slice(significant);
        }
        out.extend_from_slice(content);
        out
    }

    /// A non-negative INTEGER from big-endian bytes: minimal, with a 0 byte
    /// in front when the top bit is set.
    fn unsigned(bytes: &[u8]) -> Vec<u8> {
        let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        let trimmed = bytes.get(first..).unwrap_or_default();
        let mut content = Vec::with_capacity(trimmed.len() + 1);
        if trimmed.first().is_none_or(|&b| b & 0x80 != 0) {
            content.push(0);
        }
        content.extend_from_slice(trimmed);
        tlv(0x02, &content)
    }

    fn bit_string(content: &[u8]) -> Vec<u8> {
        let mut bits = vec![0u8];
        bits.extend_from_slice(content);
        tlv(0x03, &bits)
    }

    pub fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
        let algorithm = tlv(0x30, &[tlv(0x06, OID_RSA), vec![0x05, 0x00]].concat());
        let key = tlv(0x30, &[unsigned(n), unsigned(e)].concat());
        tlv(0x30, &[algorithm, bit_string(&key)].concat())
    }

    pub fn ec_spki(curve: &[u8], point: &[u8]) -> Vec<u8> {
        let algorithm = tlv(
            0x30,
            &[tlv(0x06, OID_EC_PUBLIC_KEY), tlv(0x06, curve)].concat(),
        );
        tlv(0x30, &[algorithm, bit_string(point)].concat())
    }

    /// JOSE's fixed-size `r || s` as a DER `SEQUENCE { r, s }`.
    pub fn ecdsa_signature(rs: &[u8]) -> Vec<u8> {
        let (r, s) = rs.split_at(rs.len() / 2);
        tlv(0x30, &[unsigned(r), unsigned(s)].concat())
    }
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
        let (mut set, _) =
            KeySet::from_jwks(&v.jwks, crate::jwks::KeyAlgs::listed(&all_algs())).unwrap();
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

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn b64(s: &str) -> Vec<u8> {
        Base64UrlSafeNoPadding::decode_to_vec(s, None).unwrap()
    }

    #[test]
    fn keys_carry_the_der_spki_the_host_parses() {
        let ec = KeyMaterial::p256(&b64(SELF_TEST_EC_X), &b64(SELF_TEST_EC_Y)).unwrap();
        let KeyMaterial::P256 { spki, .. } = &ec else {
            panic!()
        };
        // What Python's cryptography encodes for the same key.
        assert_eq!(hex(spki), "3059301306072a8648ce3d020106082a8648ce3d03010703420004165266dbe39f6d7ac741bbbeefd119abbee78d716d89eb05686086a5d04f86d36ae04241d81ca42c86ec82133f11154af5524f684f27c264a3251d41218dde33");
        let rsa = KeyMaterial::rsa(&b64(SELF_TEST_RSA_N), &[1, 0, 1]).unwrap();
        let KeyMaterial::Rsa { spki, .. } = &rsa else {
            panic!()
        };
        assert_eq!(
            hex(&hmac_sha256::Hash::hash(spki)),
            "e1f323ecc93f3ebcc48bbc0b49601ef23799559eb20c3c739e6bc85a048dc95e"
        );
    }

    #[test]
    fn ecdsa_signatures_become_minimal_der_integers() {
        let mut rs = [0u8; 64];
        rs[0] = 0x80; // r with its top bit set: a 0 byte in front
        rs[63] = 1; // s = 1: one byte
        let der = der::ecdsa_signature(&rs);
        assert_eq!(&der[..4], &[0x30, 38, 0x02, 33]);
        assert_eq!(&der[4..6], &[0x00, 0x80]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 1]);
    }

    /// A host whose verdict is fixed, that records what it was asked.
    fn host(
        verdict: Result<Vec<u8>, String>,
    ) -> HostVerifier<impl Fn(&[u8]) -> Result<Vec<u8>, String>> {
        HostVerifier::new(move |args: &[u8]| {
            assert_eq!(&args[..8], b"\x0a\x06sha256", "hash_function first");
            verdict.clone()
        })
    }

    #[test]
    fn the_hosts_verdict_counts_and_its_errors_fall_back_to_pure_rust() {
        let ec = KeyMaterial::p256(&b64(SELF_TEST_EC_X), &b64(SELF_TEST_EC_Y)).unwrap();
        let good = b64(SELF_TEST_EC_SIG);
        let yes = vec![0x08, 0x01];
        let no = vec![0x08, 0x00];
        let error = [vec![0x12, 0x03], b"bad".to_vec()].concat();
        assert_eq!(
            host(Ok(yes.clone())).verify(Alg::ES256, &ec, SELF_TEST_TEXT, &good),
            Ok(())
        );
        assert_eq!(
            host(Ok(no)).verify(Alg::ES256, &ec, SELF_TEST_TEXT, &good),
            Err(VerifyError::Mismatch)
        );
        // A host error is re-checked here: the good signature passes, a bad one does not.
        for failing in [Ok(error), Ok(vec![0xff]), Err("NotFound".to_string())] {
            let h = host(failing);
            assert_eq!(h.verify(Alg::ES256, &ec, SELF_TEST_TEXT, &good), Ok(()));
            assert_eq!(
                h.verify(Alg::ES256, &ec, b"other", &good),
                Err(VerifyError::Mismatch)
            );
        }
        // Envoy's own "no" comes with an error text: still a no, not re-checked.
        let envoy_no = [
            vec![0x12, 38],
            b"Failed to verify digest. Error code: 0".to_vec(),
        ]
        .concat();
        assert_eq!(
            host(Ok(envoy_no)).verify(Alg::ES256, &ec, SELF_TEST_TEXT, &good),
            Err(VerifyError::Mismatch)
        );
        // The length is checked before the host is asked.
        assert!(matches!(
            host(Ok(yes)).verify(Alg::ES256, &ec, SELF_TEST_TEXT, &good[..63]),
            Err(VerifyError::Length { .. })
        ));
    }

    /// A key with a table slot: the host's checks leave it empty, the first
    /// pure-Rust check fills it.
    #[test]
    fn the_comb_table_is_built_by_the_first_pure_rust_check_only() {
        let ec = KeyMaterial::p256(&b64(SELF_TEST_EC_X), &b64(SELF_TEST_EC_Y))
            .unwrap()
            .with_table();
        let built = |key: &KeyMaterial| match key {
            KeyMaterial::P256 {
                table: Some(slot), ..
            } => slot.get().is_some(),
            _ => panic!("no table slot"),
        };
        let good = b64(SELF_TEST_EC_SIG);
        assert!(!built(&ec), "loading builds no table");
        for _ in 0..3 {
            assert_eq!(
                host(Ok(vec![0x08, 0x01])).verify(Alg::ES256, &ec, SELF_TEST_TEXT, &good),
                Ok(())
            );
        }
        assert!(!built(&ec), "the host's checks build no table");
        let copy = ec.clone();
        assert_eq!(
            PureRustVerifier.verify(Alg::ES256, &ec, SELF_TEST_TEXT, &good),
            Ok(())
        );
        assert!(
            built(&ec) && built(&copy),
            "one table, shared by the copies"
        );
    }

    #[test]
    fn the_self_test_catches_a_host_that_says_yes_to_everything() {
        assert_eq!(self_test(&PureRustVerifier), Ok(()));
        let liar = HostVerifier::new(|_: &[u8]| Ok(vec![0x08, 0x01]));
        assert!(self_test(&liar)
            .unwrap_err()
            .contains("a wrong signature passed"));
        let broken = HostVerifier::new(|_: &[u8]| Ok(vec![0x08, 0x00]));
        assert!(self_test(&broken)
            .unwrap_err()
            .contains("a good signature failed"));
    }

    #[test]
    fn the_arguments_are_the_protobuf_envoy_reads() {
        let args = host_arguments("sha384", &[1, 2], &[3; 200], b"t");
        assert_eq!(
            args,
            [
                &b"\x0a\x06sha384\x12\x02\x01\x02\x1a\xc8\x01"[..],
                &[3; 200][..],
                b"\x22\x01t"
            ]
            .concat()
        );
        assert_eq!(host_result(&[]), Ok(false));
        assert_eq!(host_result(&[0x08, 0x01]), Ok(true));
    }
}
