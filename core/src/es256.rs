//! ES256 (ECDSA over P-256 with SHA-256, FIPS 186-5 §6.4.2) verification in
//! pure Rust with comb tables: the verifier Kong always uses and Envoy uses
//! with `crypto: "wasm"`.
//!
//! Why: p256's own verification (a wNAF double-scalar multiplication) costs
//! 256 point doublings and about 100 additions per signature, and a field
//! multiplication in wasm is slow (64-bit limbs, and wasm has no 64×64→128-bit
//! multiply): 690–830 µs per check in V8. Here `u1·G + u2·Q` is a
//! Lim–Lee comb with 8 teeth over a table of the 255 non-empty sums of
//! `2^(32·i)·P` for each of G and the key Q: 32 doublings and at most 64
//! mixed additions, about a fifth of the work.
//!
//! A table is 255 affine points (about 18 KB) and takes about as long to build
//! as a few verifications, so only the first
//! [`crate::jwks::MAX_P256_TABLES`] P-256 keys of a document get one; other
//! keys (and DPoP proof keys, used once) go through p256's verification. A
//! key's table is built by its first pure-Rust check (none where the host
//! checks ES256), the generator's once per VM, by the first check.
//!
//! Everything here is public (the key, the signature, the message), so
//! variable time is fine; the group arithmetic is p256's.

use std::sync::OnceLock;

use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::group::{Curve as _, Group as _};
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::point::AffineCoordinates as _;
use p256::{AffinePoint, FieldBytes, ProjectivePoint, Scalar};

/// Teeth of the comb: the scalar's 256 bits are read as 8 rows of 32.
const TEETH: usize = 8;
const COLUMNS: usize = 32;

/// `T[j - 1] = Σ 2^(32·i)·P` over the bits i set in j, for j in 1..256.
pub struct KeyTable {
    points: Box<[AffinePoint]>,
}

impl KeyTable {
    pub fn new(key: &VerifyingKey) -> KeyTable {
        comb(ProjectivePoint::from(*key.as_affine()))
    }

    /// The table entry for the bits `index` (0: nothing to add).
    fn entry(&self, index: usize) -> Option<&AffinePoint> {
        self.points.get(index.checked_sub(1)?)
    }
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyTable")
    }
}

fn comb(point: ProjectivePoint) -> KeyTable {
    let mut bases = [ProjectivePoint::IDENTITY; TEETH];
    let mut base = point;
    for slot in bases.iter_mut() {
        *slot = base;
        for _ in 0..COLUMNS {
            base = base.double();
        }
    }
    // Entry j is entry j-without-its-lowest-bit plus the base of that bit.
    let mut sums: Vec<ProjectivePoint> = Vec::with_capacity((1 << TEETH) - 1);
    for j in 1usize..1 << TEETH {
        let rest = j & (j - 1);
        let lowest = bases
            .get(j.trailing_zeros() as usize)
            .copied()
            .unwrap_or(ProjectivePoint::IDENTITY);
        let sum = match rest.checked_sub(1).and_then(|r| sums.get(r)) {
            Some(earlier) => *earlier + lowest,
            None => lowest,
        };
        sums.push(sum);
    }
    let mut points = vec![AffinePoint::IDENTITY; sums.len()];
    ProjectivePoint::batch_normalize(&sums, &mut points);
    KeyTable {
        points: points.into_boxed_slice(),
    }
}

fn generator() -> &'static KeyTable {
    static TABLE: OnceLock<KeyTable> = OnceLock::new();
    TABLE.get_or_init(|| comb(ProjectivePoint::GENERATOR))
}

/// The comb index of `column` in a big-endian scalar: bit `32·i + column`
/// of the scalar is bit i of the index.
fn index(scalar: &[u8; 32], column: usize) -> usize {
    (0..TEETH).fold(0, |acc, tooth| {
        let bit = tooth * COLUMNS + column;
        let byte = scalar.get(31 - bit / 8).copied().unwrap_or(0);
        acc | (usize::from((byte >> (bit % 8)) & 1) << tooth)
    })
}

/// Verifies a 64-byte `r || s` ES256 signature of `message` with the key and
/// its table. Same acceptance as p256's `VerifyingKey::verify`: 0 < r, s < n
/// (any s, high or low), R = u1·G + u2·Q not the identity, x(R) mod n = r.
pub fn verify(table: &KeyTable, message: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(signature) = Signature::from_slice(signature) else {
        return false;
    };
    let (r, s) = signature.split_scalars();
    let digest = FieldBytes::from(hmac_sha256::Hash::hash(message));
    let z = <Scalar as Reduce<FieldBytes>>::reduce(&digest);
    let Some(s_inv) = Option::<Scalar>::from(s.invert_vartime()) else {
        return false;
    };
    let u1: [u8; 32] = (z * s_inv).to_bytes().into();
    let u2: [u8; 32] = (*r * s_inv).to_bytes().into();
    let g = generator();
    let mut sum = ProjectivePoint::IDENTITY;
    for column in (0..COLUMNS).rev() {
        sum = sum.double();
        if let Some(point) = g.entry(index(&u1, column)) {
            sum += point;
        }
        if let Some(point) = table.entry(index(&u2, column)) {
            sum += point;
        }
    }
    if bool::from(sum.is_identity()) {
        return false;
    }
    let x = sum.to_affine().x();
    <Scalar as Reduce<FieldBytes>>::reduce(&x) == *r
}

#[cfg(test)]
mod tests {
    //! Against p256's own verification, on signatures made by p256's signer
    //! over many keys and messages, good and tampered.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use p256::ecdsa::signature::{Signer as _, Verifier as _};
    use p256::ecdsa::SigningKey;

    #[test]
    fn agrees_with_p256_on_good_and_tampered_signatures() {
        for seed in 1u8..=6 {
            let mut secret = [0u8; 32];
            secret.iter_mut().enumerate().for_each(|(i, b)| {
                *b = seed
                    .wrapping_mul(37)
                    .wrapping_add(i as u8)
                    .wrapping_mul(101)
            });
            let signing = SigningKey::from_slice(&secret).unwrap();
            let verifying = *signing.verifying_key();
            let table = KeyTable::new(&verifying);
            for m in 0..8u8 {
                let message = vec![m.wrapping_mul(seed); usize::from(m) * 17];
                let signature: Signature = signing.sign(&message);
                let bytes: [u8; 64] = signature.to_bytes().into();
                assert!(verifying.verify(&message, &signature).is_ok());
                assert!(verify(&table, &message, &bytes), "seed {seed} message {m}");
                // The high-s twin is valid for p256's verifier too.
                let (r, s) = signature.split_scalars();
                let twin = Signature::from_scalars(*r, -*s).unwrap();
                let twin_bytes: [u8; 64] = twin.to_bytes().into();
                assert_eq!(
                    verifying.verify(&message, &twin).is_ok(),
                    verify(&table, &message, &twin_bytes)
                );
                for flip in [0usize, 17, 31, 32, 50, 63] {
                    let mut bad = bytes;
                    bad[flip] ^= 0x40;
                    let theirs = Signature::from_slice(&bad)
                        .map(|sig| verifying.verify(&message, &sig).is_ok())
                        .unwrap_or(false);
                    assert!(!theirs);
                    assert!(!verify(&table, &message, &bad), "flip {flip}");
                }
                let mut other = message.clone();
                other.push(1);
                assert!(!verify(&table, &other, &bytes));
            }
        }
    }

    #[test]
    fn refuses_zero_and_out_of_range_scalars() {
        let signing = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let table = KeyTable::new(signing.verifying_key());
        let signature: Signature = signing.sign(b"m");
        let good: [u8; 64] = signature.to_bytes().into();
        assert!(verify(&table, b"m", &good));
        let mut zero_r = good;
        zero_r[..32].fill(0);
        assert!(!verify(&table, b"m", &zero_r));
        let mut zero_s = good;
        zero_s[32..].fill(0);
        assert!(!verify(&table, b"m", &zero_s));
        let mut big_s = good;
        big_s[32..].fill(0xff);
        assert!(!verify(&table, b"m", &big_s));
    }

    #[test]
    fn a_table_is_255_points() {
        let signing = SigningKey::from_slice(&[9u8; 32]).unwrap();
        let table = KeyTable::new(signing.verifying_key());
        assert_eq!(table.points.len(), 255);
        assert!(std::mem::size_of::<AffinePoint>() * 255 <= 20 * 1024);
    }
}
