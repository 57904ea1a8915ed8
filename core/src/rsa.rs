//! RSA signature verification (RFC 8017 RSASSA-PKCS1-v1_5 and RSASSA-PSS),
//! public-key operations only, for the pure-Rust verifier.
//!
//! Why not the `rsa` crate: its public operation took 1.3 ms per RSA-2048
//! verify in V8 (a generic `modpow` over `num-bigint-dig`); here the
//! Montgomery parameters are computed once, when the key is loaded, and the
//! fixed exponent 65537 (the only one [`crate::verify::KeyMaterial::rsa`]
//! accepts) is 16 squarings and one multiplication. Nothing here is secret:
//! the signature, the key and the message are all public, so variable time is
//! fine.

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};

/// A public key ready for verification. The modulus is odd and 2048 to 4096
/// bits, and e = 65537: checked by the caller before [`RsaKey::new`].
#[derive(Clone)]
pub struct RsaKey {
    /// The modulus, big-endian, without leading zeros: `k` bytes.
    modulus: Box<[u8]>,
    bits: u32,
    params: BoxedMontyParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Pkcs1v15,
    /// The salt is as long as the digest (RFC 7518 §3.5).
    Pss,
}

impl RsaKey {
    /// `modulus` big-endian without leading zeros, odd.
    pub fn new(modulus: &[u8]) -> Option<RsaKey> {
        let bits = precision(modulus.len())?;
        let n = BoxedUint::from_be_slice(modulus, bits).ok()?;
        let odd = Option::<Odd<BoxedUint>>::from(Odd::new(n))?;
        let top = modulus.first()?;
        Some(RsaKey {
            modulus: modulus.into(),
            bits: (modulus.len() as u32 - 1) * 8 + (8 - top.leading_zeros()),
            params: BoxedMontyParams::new_vartime(odd),
        })
    }

    pub fn verify(&self, hash: Hash, padding: Padding, message: &[u8], signature: &[u8]) -> bool {
        let Some(encoded) = self.public_operation(signature) else {
            return false;
        };
        let digest = hash.digest(&[message]);
        match padding {
            Padding::Pkcs1v15 => pkcs1v15_matches(hash, &digest, &encoded),
            Padding::Pss => pss_matches(hash, &digest, &encoded, self.bits - 1),
        }
    }

    /// RSAVP1 with e = 65537: `signature^e mod n`, as `k` big-endian bytes.
    fn public_operation(&self, signature: &[u8]) -> Option<Vec<u8>> {
        let k = self.modulus.len();
        // RFC 8017 §8.2.2 step 1 and RSAVP1 step 1: exactly k bytes, below n.
        if signature.len() != k || signature >= &self.modulus[..] {
            return None;
        }
        let s = BoxedUint::from_be_slice(signature, self.params.bits_precision()).ok()?;
        let base = BoxedMontyForm::new(s, &self.params);
        let mut power = base.clone();
        for _ in 0..16 {
            power = power.square();
        }
        let m = power.mul(&base).retrieve().to_be_bytes();
        let skip = m.len().checked_sub(k)?;
        let (high, low) = m.split_at(skip);
        high.iter().all(|&b| b == 0).then(|| low.to_vec())
    }
}

/// Bits of precision for a modulus of `bytes` bytes, rounded up to whole limbs.
fn precision(bytes: usize) -> Option<u32> {
    let bits = u32::try_from(bytes.checked_mul(8)?).ok()?;
    Some(bits.div_ceil(64) * 64)
}

impl Hash {
    fn len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Hash::Sha256 => {
                let mut h = hmac_sha256::Hash::new();
                parts.iter().for_each(|p| h.update(p));
                h.finalize().to_vec()
            }
            Hash::Sha384 => {
                let mut h = hmac_sha512::sha384::Hash::new();
                parts.iter().for_each(|p| h.update(p));
                h.finalize().to_vec()
            }
            Hash::Sha512 => {
                let mut h = hmac_sha512::Hash::new();
                parts.iter().for_each(|p| h.update(p));
                h.finalize().to_vec()
            }
        }
    }

    /// The DER `DigestInfo` before the digest (RFC 8017 §9.2, note 1).
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

/// EMSA-PKCS1-v1_5 (RFC 8017 §9.2), compared whole: `00 01 FF… 00 DigestInfo`.
/// Building the one valid encoding and comparing it leaves no parser for a
/// forged signature to fool (Bleichenbacher's 2006 attack on lax parsers).
fn pkcs1v15_matches(hash: Hash, digest: &[u8], encoded: &[u8]) -> bool {
    let prefix = hash.digest_info_prefix();
    let t_len = prefix.len() + digest.len();
    let Some(padding) = encoded.len().checked_sub(t_len + 3) else {
        return false;
    };
    if padding < 8 {
        return false;
    }
    let mut expected = Vec::with_capacity(encoded.len());
    expected.extend_from_slice(&[0x00, 0x01]);
    expected.resize(2 + padding, 0xff);
    expected.push(0x00);
    expected.extend_from_slice(prefix);
    expected.extend_from_slice(digest);
    expected == encoded
}

/// EMSA-PSS-VERIFY (RFC 8017 §9.1.2) with MGF1 over the same hash and a salt
/// as long as the digest. `k_bytes` is the public operation's output; the
/// encoded message is its last `ceil(em_bits / 8)` bytes.
fn pss_matches(hash: Hash, digest: &[u8], k_bytes: &[u8], em_bits: u32) -> bool {
    let h_len = hash.len();
    let salt_len = h_len;
    let em_len = em_bits.div_ceil(8) as usize;
    let Some(skip) = k_bytes.len().checked_sub(em_len) else {
        return false;
    };
    let (high, em) = k_bytes.split_at(skip);
    if high.iter().any(|&b| b != 0) || em_len < h_len + salt_len + 2 {
        return false;
    }
    let Some((&last, body)) = em.split_last() else {
        return false;
    };
    if last != 0xbc {
        return false;
    }
    let (masked_db, h) = body.split_at(em_len - h_len - 1);
    let unused_bits = 8 * em_len as u32 - em_bits;
    let top_mask = 0xffu8.checked_shr(unused_bits).unwrap_or(0);
    if masked_db.first().is_none_or(|&b| b & !top_mask != 0) {
        return false;
    }
    let mut db = mgf1(hash, h, masked_db.len());
    db.iter_mut().zip(masked_db).for_each(|(d, m)| *d ^= m);
    if let Some(first) = db.first_mut() {
        *first &= top_mask;
    }
    let zeros = em_len - h_len - salt_len - 2;
    let (padding, rest) = db.split_at(zeros);
    let Some((&separator, salt)) = rest.split_first() else {
        return false;
    };
    if padding.iter().any(|&b| b != 0) || separator != 0x01 {
        return false;
    }
    hash.digest(&[&[0u8; 8], digest, salt]) == h
}

fn mgf1(hash: Hash, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + hash.len());
    let mut counter = 0u32;
    while out.len() < len {
        out.extend_from_slice(&hash.digest(&[seed, &counter.to_be_bytes()]));
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    //! The public operation is checked against `core/tests/vectors.json`
    //! (signatures made by Python's `cryptography`); here, the two encodings
    //! are checked on hand-built encoded messages, the way a forger would
    //! build them.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const K: usize = 256;

    fn pkcs1(hash: Hash, digest: &[u8]) -> Vec<u8> {
        let t_len = hash.digest_info_prefix().len() + digest.len();
        let mut em = vec![0x00, 0x01];
        em.resize(K - t_len - 1, 0xff);
        em.push(0x00);
        em.extend_from_slice(hash.digest_info_prefix());
        em.extend_from_slice(digest);
        em
    }

    /// EMSA-PSS-ENCODE (RFC 8017 §9.1.1) for a 2048-bit modulus.
    fn pss(hash: Hash, digest: &[u8], salt: &[u8]) -> Vec<u8> {
        let em_len = K;
        let h = hash.digest(&[&[0u8; 8], digest, salt]);
        let mut db = vec![0u8; em_len - salt.len() - h.len() - 2];
        db.push(0x01);
        db.extend_from_slice(salt);
        let mask = mgf1(hash, &h, db.len());
        db.iter_mut().zip(mask).for_each(|(d, m)| *d ^= m);
        if let Some(first) = db.first_mut() {
            *first &= 0x7f;
        }
        let mut em = db;
        em.extend_from_slice(&h);
        em.push(0xbc);
        em
    }

    #[test]
    fn pkcs1v15_accepts_only_the_one_encoding() {
        let digest = Hash::Sha256.digest(&[b"payload"]);
        let good = pkcs1(Hash::Sha256, &digest);
        assert!(pkcs1v15_matches(Hash::Sha256, &digest, &good));

        let other_digest = Hash::Sha256.digest(&[b"another payload"]);
        assert!(!pkcs1v15_matches(Hash::Sha256, &other_digest, &good));
        // The right digest under another hash's DigestInfo.
        assert!(!pkcs1v15_matches(Hash::Sha384, &digest, &good));
        // A forger's favourite: garbage after the digest, padding shortened.
        let mut garbage = good.clone();
        garbage.drain(2..10);
        garbage.extend_from_slice(&[0u8; 8]);
        assert!(!pkcs1v15_matches(Hash::Sha256, &digest, &garbage));
        let mut block_type_2 = good.clone();
        block_type_2[1] = 0x02;
        assert!(!pkcs1v15_matches(Hash::Sha256, &digest, &block_type_2));
        assert!(!pkcs1v15_matches(Hash::Sha256, &digest, &good[1..]));
    }

    #[test]
    fn pss_accepts_a_salt_as_long_as_the_digest_only() {
        let digest = Hash::Sha256.digest(&[b"payload"]);
        let good = pss(Hash::Sha256, &digest, &[7u8; 32]);
        assert!(pss_matches(Hash::Sha256, &digest, &good, 2047));

        let other_digest = Hash::Sha256.digest(&[b"another payload"]);
        assert!(!pss_matches(Hash::Sha256, &other_digest, &good, 2047));
        // RFC 7518 §3.5: the salt is as long as the digest; an empty one is refused.
        let unsalted = pss(Hash::Sha256, &digest, &[]);
        assert!(!pss_matches(Hash::Sha256, &digest, &unsalted, 2047));
        let mut trailer = good.clone();
        if let Some(last) = trailer.last_mut() {
            *last = 0xbd;
        }
        assert!(!pss_matches(Hash::Sha256, &digest, &trailer, 2047));
        // The bit above em_bits must be clear.
        let mut top_bit = good.clone();
        top_bit[0] |= 0x80;
        assert!(!pss_matches(Hash::Sha256, &digest, &top_bit, 2047));
    }

    #[test]
    fn pss_with_sha512_has_room_in_a_2048_bit_modulus() {
        let digest = Hash::Sha512.digest(&[b"payload"]);
        let good = pss(Hash::Sha512, &digest, &[9u8; 64]);
        assert!(pss_matches(Hash::Sha512, &digest, &good, 2047));
    }

    #[test]
    fn the_public_operation_refuses_a_signature_not_below_the_modulus() {
        let mut modulus = vec![0xc5u8; K];
        modulus[K - 1] = 0x01;
        let Some(key) = RsaKey::new(&modulus) else {
            panic!("an odd 2048-bit modulus loads");
        };
        assert!(key.public_operation(&modulus).is_none());
        assert!(key.public_operation(&[0xffu8; K]).is_none());
        assert!(key.public_operation(&[0x01u8; K - 1]).is_none());
        assert!(key.public_operation(&[0x01u8; K]).is_some());
    }
}
