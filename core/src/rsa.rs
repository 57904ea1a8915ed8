//! RSA signature verification (RFC 8017 RSASSA-PKCS1-v1_5 and RSASSA-PSS),
//! public-key operations only, for the pure-Rust verifier.
//!
//! Why not the `rsa` crate: its public operation took 1.3 ms per RSA-2048
//! verify in V8 (a generic `modpow` over `num-bigint-dig`). Why not
//! `crypto-bigint` (used here until December 2026, 152–170 µs per verify in
//! V8): its limbs are 64 bits on wasm32, and wasm has no 64×64→128-bit
//! multiply, so each limb product is a call to `__multi3` (a third of the
//! time in a V8 profile). Here the limbs are 32 bits, each product is one
//! native `i64.mul`, and the Montgomery parameters are computed once, when the
//! key is loaded; the fixed exponent 65537 (the only one
//! [`crate::verify::KeyMaterial::rsa`] accepts) is 16 squarings and one
//! multiplication. Nothing here is secret: the signature, the key and the
//! message are all public, so variable time is fine.

/// A public key ready for verification. The modulus is odd and 2048 to 4096
/// bits, and e = 65537: checked by the caller before [`RsaKey::new`].
#[derive(Clone)]
pub struct RsaKey {
    /// The modulus, big-endian, without leading zeros: `k` bytes.
    modulus: Box<[u8]>,
    bits: u32,
    params: Montgomery,
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
        let top = modulus.first()?;
        if *top == 0 {
            return None;
        }
        let bits = (u32::try_from(modulus.len()).ok()? - 1) * 8 + (8 - top.leading_zeros());
        Some(RsaKey {
            modulus: modulus.into(),
            bits,
            params: Montgomery::new(&limbs(modulus), bits)?,
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
        let m = &self.params;
        let s = limbs(signature);
        let mut scratch = Vec::new();
        let base = m.mul(&s, &m.r2, &mut scratch);
        let mut power = base;
        for _ in 0..16 {
            power = m.square(&power, &mut scratch);
        }
        // (s^65536·R)·s·R⁻¹: the last multiplication also leaves the
        // Montgomery domain.
        let result = m.mul(&power, &s, &mut scratch);
        let mut out: Vec<u8> = result.iter().rev().flat_map(|l| l.to_be_bytes()).collect();
        let skip = out.len().checked_sub(k)?;
        if out.iter().take(skip).any(|&b| b != 0) {
            return None;
        }
        out.drain(..skip);
        Some(out)
    }
}

/// Big-endian bytes as little-endian 32-bit limbs (the first limb the least
/// significant), `ceil(len / 4)` of them.
fn limbs(be: &[u8]) -> Vec<u32> {
    be.rchunks(4)
        .map(|chunk| chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
        .collect()
}

/// Montgomery arithmetic modulo an odd `n` of `L` 32-bit limbs, R = 2^(32·L).
/// 32-bit limbs because a 32×32→64-bit product is one `i64.mul` in wasm.
#[derive(Clone)]
struct Montgomery {
    n: Vec<u32>,
    /// -n⁻¹ mod 2^32.
    n0_inv: u32,
    /// R² mod n: multiplying by it enters the Montgomery domain.
    r2: Vec<u32>,
}

impl Montgomery {
    /// `n` odd, little-endian limbs, the top limb non-zero, `bits` its length.
    fn new(n: &[u32], bits: u32) -> Option<Montgomery> {
        let n0 = *n.first()?;
        if n0 & 1 == 0 || n.last().is_none_or(|&top| top == 0) {
            return None;
        }
        // Newton's iteration doubles the correct low bits each step: 1 → 32.
        let mut inv = 1u32;
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u32.wrapping_sub(n0.wrapping_mul(inv)));
        }
        // R² mod n: start at 2^(bits-1) (below n) and double mod n up to
        // 2^(64·L). A few thousand doublings, once per key.
        let width = u32::try_from(n.len()).ok()?.checked_mul(64)?;
        let top = bits.checked_sub(1)?;
        let mut x = vec![0u32; n.len()];
        *x.get_mut((top / 32) as usize)? = 1 << (top % 32);
        for _ in top..width {
            let carry = x.iter_mut().fold(0u32, |carry, limb| {
                let out = *limb >> 31;
                *limb = (*limb << 1) | carry;
                out
            });
            if carry == 1 || !less_than(&x, n) {
                subtract(&mut x, n);
            }
        }
        Some(Montgomery {
            n: n.to_vec(),
            n0_inv: inv.wrapping_neg(),
            r2: x,
        })
    }

    /// a·b·R⁻¹ mod n, for a, b < n of `L` limbs (shorter inputs are
    /// zero-extended).
    fn mul(&self, a: &[u32], b: &[u32], t: &mut Vec<u32>) -> Vec<u32> {
        self.start(t);
        for (i, &b_i) in b.iter().enumerate() {
            if let Some(window) = t.get_mut(i..) {
                mul_add(window, a, b_i);
            }
        }
        self.reduce(t)
    }

    /// a²·R⁻¹ mod n: each cross product a_i·a_j (i < j) once, doubled, then
    /// the squares a_i² added: about half the products of [`Self::mul`].
    fn square(&self, a: &[u32], t: &mut Vec<u32>) -> Vec<u32> {
        self.start(t);
        for (i, &a_i) in a.iter().enumerate() {
            if let (Some(window), Some(rest)) = (t.get_mut(2 * i + 1..), a.get(i + 1..)) {
                mul_add(window, rest, a_i);
            }
        }
        t.iter_mut().fold(0u32, |carry, limb| {
            let out = *limb >> 31;
            *limb = (*limb << 1) | carry;
            out
        });
        let mut carry = 0u64;
        for (pair, &a_i) in t.chunks_exact_mut(2).zip(a) {
            let square = u64::from(a_i) * u64::from(a_i);
            for (limb, add) in pair.iter_mut().zip([square & 0xffff_ffff, square >> 32]) {
                let sum = u64::from(*limb) + add + carry;
                *limb = sum as u32;
                carry = sum >> 32;
            }
        }
        if let Some(top) = t.last_mut() {
            *top = top.wrapping_add(carry as u32);
        }
        self.reduce(t)
    }

    /// Zeroed scratch of `2L + 1` limbs for a product.
    fn start(&self, t: &mut Vec<u32>) {
        t.clear();
        t.resize(2 * self.n.len() + 1, 0);
    }

    /// Montgomery reduction of a product t < n·R: t·R⁻¹ mod n, one step per
    /// limb of n (each makes the lowest limb zero), then the upper half,
    /// below 2n, brought below n by at most one subtraction.
    fn reduce(&self, t: &mut [u32]) -> Vec<u32> {
        let l = self.n.len();
        for i in 0..l {
            if let Some(window) = t.get_mut(i..) {
                let m = window
                    .first()
                    .map_or(0, |&t_i| t_i.wrapping_mul(self.n0_inv));
                mul_add(window, &self.n, m);
            }
        }
        let mut result: Vec<u32> = t.iter().skip(l).copied().collect();
        let high = result.pop().unwrap_or(0);
        if high != 0 || !less_than(&result, &self.n) {
            subtract(&mut result, &self.n);
        }
        result
    }
}

/// t += x·y, the carry run up through the rest of `t`.
#[inline]
fn mul_add(t: &mut [u32], x: &[u32], y: u32) {
    let y = u64::from(y);
    let mut carry = 0u64;
    let mut rest = t.iter_mut();
    // `x` first: when it ends, `zip` does not take another limb of `rest`.
    for (&x_j, t_j) in x.iter().zip(rest.by_ref()) {
        let sum = u64::from(*t_j) + u64::from(x_j) * y + carry;
        *t_j = sum as u32;
        carry = sum >> 32;
    }
    for t_j in rest {
        if carry == 0 {
            break;
        }
        let sum = u64::from(*t_j) + carry;
        *t_j = sum as u32;
        carry = sum >> 32;
    }
}

/// a < b, both little-endian and of the same length.
fn less_than(a: &[u32], b: &[u32]) -> bool {
    a.iter().rev().cmp(b.iter().rev()) == std::cmp::Ordering::Less
}

/// a -= b mod 2^(32·len): the borrow out of the top is dropped (callers
/// subtract n from a value in [n, 2n) whose top bit went out as a carry).
fn subtract(a: &mut [u32], b: &[u32]) {
    let mut borrow = 0u64;
    for (a_j, &b_j) in a.iter_mut().zip(b) {
        let diff = u64::from(*a_j)
            .wrapping_sub(u64::from(b_j))
            .wrapping_sub(borrow);
        *a_j = diff as u32;
        borrow = (diff >> 63) & 1;
    }
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

    /// The public operation against crypto-bigint's, on moduli of several
    /// shapes (a whole number of limbs or not, 2048 to 4096 bits) and
    /// pseudo-random signatures below them.
    #[test]
    fn the_public_operation_matches_crypto_bigint() {
        use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
        use crypto_bigint::{BoxedUint, Odd};

        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        };
        for (len, top) in [
            (256, 0xffu8),
            (256, 0x80),
            (255, 0x01),
            (384, 0xc3),
            (512, 0xa5),
            (257, 0x01),
        ] {
            for _ in 0..3 {
                let mut modulus: Vec<u8> = (0..len).map(|_| next()).collect();
                modulus[0] = top;
                modulus[len - 1] |= 1;
                let mut signature: Vec<u8> = (0..len).map(|_| next()).collect();
                signature[0] = top.saturating_sub(1);
                let Some(key) = RsaKey::new(&modulus) else {
                    panic!("an odd {len}-byte modulus loads");
                };
                let ours = key.public_operation(&signature);

                let precision = (len as u32 * 8).div_ceil(64) * 64;
                let n = BoxedUint::from_be_slice(&modulus, precision).unwrap();
                let params = BoxedMontyParams::new_vartime(Odd::new(n).unwrap());
                let s = BoxedUint::from_be_slice(&signature, precision).unwrap();
                let base = BoxedMontyForm::new(s, &params);
                let mut power = base.clone();
                for _ in 0..16 {
                    power = power.square();
                }
                let theirs = power.mul(&base).retrieve().to_be_bytes();
                let theirs = theirs[theirs.len() - len..].to_vec();
                assert_eq!(ours, Some(theirs), "{len} bytes, top {top:#x}");
            }
        }
    }
}
