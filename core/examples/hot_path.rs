//! Where the cached path's time goes inside the VM: one cached-token decision
//! (`verdict_for` with a token the cache holds) and its parts, repeated.
//!
//! `make profile-hot-path` builds this for wasm32-wasip1 and runs it in Node's
//! V8 (the engine Envoy embeds), then natively. Not a test: the figures
//! depend on the machine; compare them with `make bench`'s Envoy CPU per
//! request, whose remainder is the host calls and Envoy itself.

use std::hint::black_box;
use std::time::Instant;

use ct_codecs::{Base64UrlSafeNoPadding, Encoder as _};
use oauth_pep_core::cache::digest;
use oauth_pep_core::config::Config;
use oauth_pep_core::engine::{verdict_for, Request, State, Verdict};
use oauth_pep_core::extract::find_token;
use oauth_pep_core::request::normalize_target;

const SECRET: &str = "a-32-byte-or-longer-shared-secret-for-hs256";
const NOW: u64 = 1_700_000_000;
const ROUNDS: u32 = 200_000;

fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap_or_default()
}

/// An HS256 token about the size of a typical RS256 access token's claims.
fn token() -> String {
    let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = format!(
        r#"{{"iss":"https://as.example.com","aud":"api","sub":"user-4711","client_id":"orders-app","scope":"read write orders:read","iat":{NOW},"exp":{},"jti":"{}"}}"#,
        NOW + 86_400,
        "x".repeat(400)
    );
    let input = format!("{header}.{}", b64(claims.as_bytes()));
    let mac = hmac_sha256::HMAC::mac(input.as_bytes(), SECRET.as_bytes());
    format!("{input}.{}", b64(&mac))
}

fn time(name: &str, mut f: impl FnMut()) {
    for _ in 0..1_000 {
        f();
    }
    let start = Instant::now();
    for _ in 0..ROUNDS {
        f();
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);
    println!("{name:<44} {us:>7.2} µs");
}

fn main() {
    let json = format!(
        r#"{{"issuers":[{{"issuer":"https://as.example.com","audiences":["api"],"shared_secret":"{SECRET}","algorithms":["HS256"]}}],
            "policy":{{"GET /orders/??":"orders:read"}},"forward":{{"claims":{{"sub":"x-jwt-sub"}}}}}}"#
    );
    let Ok(config) = Config::from_json(json.as_bytes(), &|_| None) else {
        eprintln!("the example's configuration does not load");
        return;
    };
    let mut state = State::new(&config);
    let token = token();
    let headers: Vec<(String, String)> = [
        (":method", "GET"),
        (":path", "/orders/42?x=1"),
        (":authority", "api.example.com"),
        ("user-agent", "curl/8"),
        ("accept", "*/*"),
        ("x-request-id", "7d3c0f4e-8a2b-4c1d-9e6f-0a1b2c3d4e5f"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([("authorization".to_string(), format!("Bearer {token}"))])
    .collect();
    let request = Request {
        method: "GET",
        path: "/orders/42?x=1",
        headers: &headers,
        client: None,
        peer_certificate: None,
        routing: Default::default(),
        body: None,
    };
    match verdict_for(&config, &mut state, &request, NOW) {
        Verdict::Allow(_) => {}
        other => {
            eprintln!("the token is not let through: {other:?}");
            return;
        }
    }
    println!("token: {} bytes; {ROUNDS} rounds each", token.len());
    time("verdict_for, cached token (the whole decision)", || {
        black_box(verdict_for(&config, &mut state, black_box(&request), NOW));
    });
    time("  normalize_target", || {
        black_box(normalize_target(black_box(request.path)).ok());
    });
    time("  find_token", || {
        black_box(find_token(&config.token_sources, &headers, request.path).ok());
    });
    time("  SHA-256 of the token (the cache key)", || {
        black_box(digest(&[black_box(token.as_bytes())]));
    });
    time("  policy decision", || {
        if let Some(policy) = &config.policy {
            black_box(policy.decide("GET", "/orders/42", &["orders:read".to_string()]));
        }
    });
}
