//! What one signature check costs in pure Rust, per algorithm, inside the VM:
//! the verifier Kong always uses (it has no host crypto) and Envoy uses for
//! PS*, EdDSA and when the host cannot answer.
//!
//! `make profile-crypto` builds this for wasm32-wasip1 and runs it in Node's V8
//! (the engine Envoy embeds), then natively. Not a test: the figures depend on
//! the machine; `make bench`'s distinct-token rows are the end-to-end view.

use std::hint::black_box;
use std::time::Instant;

use ct_codecs::{Base64UrlSafeNoPadding, Decoder as _};
use oauth_pep_core::alg::Alg;
use oauth_pep_core::jwks::{KeyAlgs, KeySet};
use oauth_pep_core::verify::{PureRustVerifier, SignatureVerifier as _};

const VECTORS: &str = include_str!("../tests/vectors.json");

fn main() {
    let Ok(vectors) = serde_json::from_str::<serde_json::Value>(VECTORS) else {
        eprintln!("core/tests/vectors.json does not parse");
        return;
    };
    let jwks = vectors["jwks"].to_string();
    // `crypto_bench ES256 EdDSA` runs only those algorithms (for profiling one).
    let only: Vec<String> = std::env::args().skip(1).collect();
    let algs = [Alg::RS256, Alg::PS256, Alg::ES256, Alg::ES384, Alg::EdDSA];
    let Ok((keys, _)) = KeySet::from_jwks(jwks.as_bytes(), KeyAlgs::listed(&algs)) else {
        eprintln!("the vectors' JWKS does not load");
        return;
    };
    for (alg, name, rounds) in [
        (Alg::RS256, "good_RS256", 200),
        (Alg::PS256, "good_PS256", 200),
        (Alg::ES256, "good_ES256", 200),
        (Alg::ES384, "good_ES384", 100),
        (Alg::EdDSA, "good_EdDSA", 500),
    ] {
        if !only.is_empty() && !only.iter().any(|o| o.as_str() == alg.name()) {
            continue;
        }
        let token = vectors["tokens"][name].as_str().unwrap_or_default();
        let Some((input, signature_b64)) = token.rsplit_once('.') else {
            eprintln!("{name}: not a JWS");
            continue;
        };
        let Ok(signature) = Base64UrlSafeNoPadding::decode_to_vec(signature_b64, None) else {
            eprintln!("{name}: bad signature encoding");
            continue;
        };
        let kid = token_kid(token);
        let Ok(entry) = keys.find(kid.as_deref(), alg) else {
            eprintln!("{name}: no key");
            continue;
        };
        let mut bad = signature.clone();
        if let Some(last) = bad.last_mut() {
            *last ^= 1;
        }
        let check = |sig: &[u8]| {
            PureRustVerifier
                .verify(alg, &entry.key, black_box(input.as_bytes()), black_box(sig))
                .is_ok()
        };
        if !check(&signature) || check(&bad) {
            eprintln!("{name}: the verifier disagrees with the vector");
            continue;
        }
        let good = time(rounds, || {
            black_box(check(&signature));
        });
        let rejected = time(rounds, || {
            black_box(check(&bad));
        });
        println!("{alg:<6} good {good:>8.1} µs   bad {rejected:>8.1} µs");
    }
}

fn token_kid(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let json = Base64UrlSafeNoPadding::decode_to_vec(header, None).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&json).ok()?;
    value["kid"].as_str().map(str::to_string)
}

/// The fastest of several batches: on a shared machine the minimum is the
/// figure least disturbed by other work.
fn time(rounds: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..rounds / 10 + 1 {
        f();
    }
    let batch = rounds / 10 + 1;
    (0..10)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..batch {
                f();
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(batch)
        })
        .fold(f64::INFINITY, f64::min)
}
