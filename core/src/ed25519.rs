//! Ed25519 verification (RFC 8032 §5.1.7) over curve25519-dalek's group
//! arithmetic.
//!
//! Why not ed25519-compact (still the signer of `private_key_jwt` assertions,
//! [`crate::client_auth`]): its field has 51-bit limbs with `u128` products,
//! and wasm32 has no 64×64→128-bit multiply, so every limb product is a
//! `__multi3` call. curve25519-dalek picks its 32-bit serial backend on wasm32
//! (10 limbs of 25.5 bits, each product one `i64.mul`) and has the
//! variable-time double-base multiplication `k·P + s·B` with a precomputed
//! table of B. The decoded key is kept, so a check decodes R only.
//!
//! The acceptance is ed25519-compact's, checked against it in the tests:
//! - S canonical (S < L), else no;
//! - A and R canonical encodings (y < p; x = 0 with the sign bit set is of
//!   small order, below), points on the curve, not of small order;
//! - k = SHA-512(R ‖ A ‖ M) mod L, and the **cofactored** equation
//!   [8](S·B − k·A − R) = 0 (as ed25519-compact, which accepts when
//!   S·B − k·A − R has small order).

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity as _;

/// A validated Ed25519 public key: its encoding (hashed into k) and −A.
#[derive(Clone)]
pub struct Ed25519Key {
    encoded: [u8; 32],
    minus_a: EdwardsPoint,
}

/// Why a key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Not 32 bytes; the length.
    Length(usize),
    /// Non-canonical, not on the curve, or of small order.
    Unusable,
}

impl Ed25519Key {
    /// The key from its 32-byte encoding (a JWK's `x`).
    pub fn from_bytes(x: &[u8]) -> Result<Ed25519Key, KeyError> {
        let encoded: [u8; 32] = x.try_into().map_err(|_| KeyError::Length(x.len()))?;
        let a = decode(&encoded).ok_or(KeyError::Unusable)?;
        Ok(Ed25519Key {
            encoded,
            minus_a: -a,
        })
    }

    /// The key's encoding.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.encoded
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let (r_bytes, s_bytes) = signature.split_at(32);
        let (Ok(r_bytes), Ok(s_bytes)) =
            (<[u8; 32]>::try_from(r_bytes), <[u8; 32]>::try_from(s_bytes))
        else {
            return false;
        };
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
            return false;
        };
        let Some(r) = decode(&r_bytes) else {
            return false;
        };
        let mut hash = hmac_sha512::Hash::new();
        hash.update(r_bytes);
        hash.update(self.encoded);
        hash.update(message);
        let k = Scalar::from_bytes_mod_order_wide(&hash.finalize());
        // S·B − k·A, then − R; compared projectively (no inversion).
        let sb_minus_ka = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &self.minus_a, &s);
        small_order(&(sb_minus_ka - r))
    }
}

/// A canonical encoding of a point on the curve that is not of small order.
fn decode(encoded: &[u8; 32]) -> Option<EdwardsPoint> {
    if !canonical_y(encoded) {
        return None;
    }
    let point = CompressedEdwardsY(*encoded).decompress()?;
    // x = 0 (then the sign bit must be clear to be canonical) only at the
    // identity and (0, −1), both of small order: refused here either way.
    (!small_order(&point)).then_some(point)
}

/// y < p = 2^255 − 19 (the sign bit aside). curve25519-dalek reduces y
/// silently; RFC 8032 §5.1.3 and ed25519-compact refuse it.
fn canonical_y(encoded: &[u8; 32]) -> bool {
    let mut y = *encoded;
    if let Some(top) = y.last_mut() {
        *top &= 0x7f;
    }
    // The non-canonical values are p .. 2^255 − 1: bytes 1..=30 all 0xff,
    // the top 0x7f, the lowest ≥ 0xed.
    let all_ones = y
        .get(1..31)
        .is_some_and(|mid| mid.iter().all(|&b| b == 0xff));
    !(all_ones && y[31] == 0x7f && y[0] >= 0xed)
}

/// [8]P = 0, without converting to affine coordinates.
fn small_order(point: &EdwardsPoint) -> bool {
    point.mul_by_cofactor() == EdwardsPoint::identity()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_compact as compact;

    /// ed25519-compact's verdict, the reference.
    fn reference(key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
        let key = compact::PublicKey::new(*key);
        key.verify(message, &compact::Signature::new(*signature))
            .is_ok()
    }

    fn ours(key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> Option<bool> {
        Ed25519Key::from_bytes(key)
            .ok()
            .map(|k| k.verify(message, signature))
    }

    /// Both agree; a key we refuse never verifies with ed25519-compact.
    fn agree(key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
        let expected = reference(key, message, signature);
        let got = ours(key, message, signature);
        assert_eq!(
            got.unwrap_or(false),
            expected,
            "key {key:02x?} sig {signature:02x?}"
        );
        assert_eq!(
            got.is_some(),
            compact::PublicKey::new(*key).validate().is_ok(),
            "key validity {key:02x?}"
        );
        expected
    }

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    fn vhex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    fn add_le(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = a[i] as u16 + b[i] as u16 + carry;
            out[i] = sum as u8;
            carry = sum >> 8;
        }
        out
    }

    /// RFC 8032 §7.1, tests 1, 2 and 3.
    #[test]
    fn rfc8032_vectors() {
        let vectors = [
            (
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
            (
                "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
                "af82",
                "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
            ),
        ];
        for (key, message, signature) in vectors {
            let key: [u8; 32] = unhex(key);
            let message = vhex(message);
            let signature: [u8; 64] = unhex(signature);
            assert!(agree(&key, &message, &signature));
            let mut other = message.clone();
            other.push(0);
            assert!(!agree(&key, &other, &signature));
        }
    }

    /// Valid signatures from ed25519-compact's signer, every bit of the
    /// signature and of the key flipped, and wrong messages.
    #[test]
    fn cross_check_flips_and_messages() {
        for seed in 1..=2u8 {
            let pair = compact::KeyPair::from_seed(compact::Seed::new([seed; 32]));
            let key: [u8; 32] = *pair.pk;
            let message = format!("header.payload-{seed}");
            let signature: [u8; 64] = *pair.sk.sign(message.as_bytes(), None);
            assert!(agree(&key, message.as_bytes(), &signature));
            assert!(!agree(&key, b"header.payload-x", &signature));
            assert!(!agree(&key, b"", &signature));
            for bit in 0..512 {
                let mut bad = signature;
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(!agree(&key, message.as_bytes(), &bad), "bit {bit}");
            }
            for bit in 0..256 {
                let mut bad = key;
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    !agree(&bad, message.as_bytes(), &signature),
                    "key bit {bit}"
                );
            }
        }
    }

    /// S + L (the same point equation, S ≥ L) and S = L, S = 2^256 − 1: refused
    /// by both.
    #[test]
    fn non_canonical_s() {
        let pair = compact::KeyPair::from_seed(compact::Seed::new([9; 32]));
        let key: [u8; 32] = *pair.pk;
        let signature: [u8; 64] = *pair.sk.sign(b"m", None);
        let mut s = [0u8; 32];
        s.copy_from_slice(&signature[32..]);
        for bad_s in [add_le(&s, &L), L, [0xff; 32]] {
            let mut bad = signature;
            bad[32..].copy_from_slice(&bad_s);
            assert!(!agree(&key, b"m", &bad));
        }
    }

    /// The eight small-order points, as keys and as R, canonical and with
    /// the sign bit set on x = 0; non-canonical y (p .. 2^255 − 1).
    #[test]
    fn small_order_and_non_canonical_encodings() {
        let small_order: [[u8; 32]; 8] = [
            unhex("0100000000000000000000000000000000000000000000000000000000000000"),
            unhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
            unhex("0000000000000000000000000000000000000000000000000000000000000080"),
            unhex("0000000000000000000000000000000000000000000000000000000000000000"),
            unhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
            unhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
            unhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
            unhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
        ];
        let mut with_sign = small_order;
        with_sign[0][31] |= 0x80;
        with_sign[1][31] |= 0x80;
        let mut non_canonical = Vec::new();
        for low in [0xedu8, 0xee, 0xef, 0xf0, 0xff] {
            let mut y = [0xffu8; 32];
            y[0] = low;
            y[31] = 0x7f;
            non_canonical.push(y);
            y[31] = 0xff;
            non_canonical.push(y);
        }
        let pair = compact::KeyPair::from_seed(compact::Seed::new([3; 32]));
        let good_key: [u8; 32] = *pair.pk;
        let signature: [u8; 64] = *pair.sk.sign(b"m", None);
        for point in small_order
            .iter()
            .chain(with_sign.iter())
            .chain(non_canonical.iter())
        {
            assert!(Ed25519Key::from_bytes(point).is_err(), "{point:02x?}");
            // As the key, with any signature; as R, with the real S.
            assert!(!agree(point, b"m", &signature));
            let mut bad = signature;
            bad[..32].copy_from_slice(point);
            assert!(!agree(&good_key, b"m", &bad));
            // The trivial forgery: A small order, R = identity, S = 0.
            let mut forged = [0u8; 64];
            forged[0] = 1;
            assert!(!agree(point, b"m", &forged));
        }
        // y = p + 1 would decode as y = 1 (the identity) if reduced; y = 2^255 - 20
        // (= p - 1, canonical) is (0, -1): small order. Both refused.
        assert_eq!(
            Ed25519Key::from_bytes(&[1; 31]).err(),
            Some(KeyError::Length(31))
        );
    }

    /// A torsion component in R (R' = R + T, T of order 2 or 4..8) passes
    /// the cofactored equation in both, as today.
    #[test]
    fn cofactored_like_ed25519_compact() {
        let pair = compact::KeyPair::from_seed(compact::Seed::new([5; 32]));
        let key: [u8; 32] = *pair.pk;
        let torsion = CompressedEdwardsY(unhex(
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        ))
        .decompress()
        .unwrap();
        // A signature with R = r·B + T and S = r + k·a, where k hashes the new R:
        // built from the secret scalar, so the test signs by hand.
        let az = hmac_sha512::Hash::hash([5u8; 32]);
        let mut a_bytes = [0u8; 32];
        a_bytes.copy_from_slice(&az[..32]);
        a_bytes[0] &= 248;
        a_bytes[31] &= 127;
        a_bytes[31] |= 64;
        let a = Scalar::from_bytes_mod_order(a_bytes);
        let r = Scalar::from_bytes_mod_order([42; 32]);
        let big_r = EdwardsPoint::mul_base(&r) + torsion;
        let r_enc = big_r.compress().to_bytes();
        let mut h = hmac_sha512::Hash::new();
        h.update(r_enc);
        h.update(key);
        h.update(b"m");
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize());
        let s = r + k * a;
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&r_enc);
        signature[32..].copy_from_slice(s.as_bytes());
        // Cofactored: both accept (a cofactorless check would refuse).
        assert!(agree(&key, b"m", &signature));
    }
}
