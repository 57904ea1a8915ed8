//! Mutation tests: every input the filter takes from outside (configuration,
//! request, token, JWKS, discovery and PDP replies) is mangled many times over
//! and fed to the code that parses it. A panic here would be a dead wasm VM in
//! production; the assertion is simply that each call returns.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use crate::callout::CalloutReply;
use crate::config::Config;
use crate::engine::{resume, verdict_for, Request, Resume, State, Verdict};
use crate::jwt::test_vectors::vectors;
use crate::keys::FetchStep;
use crate::policy::Policy;
use crate::request::normalize_path;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Flips, deletes, duplicates or inserts a few bytes, or truncates.
    fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        const INTERESTING: &[u8] = b"\"{}[],:./%?;\\\0\xff\xc3aZ09 =";
        let mut out = input.to_vec();
        for _ in 0..=self.below(4) {
            let at = self.below(out.len() + 1);
            match self.below(5) {
                0 if at < out.len() => out[at] ^= 1 << self.below(8),
                1 if at < out.len() => {
                    out.remove(at);
                }
                2 => out.insert(at, INTERESTING[self.below(INTERESTING.len())]),
                3 => out.truncate(at),
                _ => {
                    let end = (at + self.below(16)).min(out.len());
                    let copy = out[at.min(end)..end].to_vec();
                    out.splice(at..at, copy);
                }
            }
        }
        out
    }
}

const ROUNDS: usize = 400;

fn full_config() -> String {
    let jwks = String::from_utf8(vectors().jwks).unwrap();
    format!(
        r#"{{"realm":"r","issuers":[{{"issuer":"https://issuer.test","audiences":["api"],"jwks":{jwks}}},
        {{"issuer":"https://as.test","audiences":"any","discovery":true,"upstream":"as","shared_secret":"0123456789abcdef0123456789abcdef"}}],
        "token_sources":[{{"header":"authorization"}},{{"query":"at"}},{{"cookie":"at"}}],
        "forward":{{"claims":{{"sub":"x-sub"}},"payload_header":"x-payload","hide_credentials":true}},
        "policy":{{"GET /a/{{^[0-9]+$}}":"^a:(?<PC1>[0-9]+)$ or admin","* /b/??":"read and not write"}},
        "public_paths":["/health"],"consumers":{{"client-1":{{"id":"c1","issuer":"https://issuer.test"}}}},
        "anonymous":{{"id":"anon","paths":["/open/??"],"on_invalid_token":true}},
        "pdp":{{"kind":"authzen","upstream":"pdp","url":"http://pdp/access/v1/evaluation","cache_seconds":5}}}}"#
    )
}

#[test]
fn mangled_configurations_are_refused_or_accepted_never_a_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let config = full_config();
    assert!(Config::from_json(config.as_bytes(), &|_| None).is_ok());
    for _ in 0..ROUNDS {
        let _ = Config::from_json(&rng.mutate(config.as_bytes()), &|_| None);
    }
    let gluu = br#"[{"path":"/posts/??","conditions":[{"httpMethods":["GET","POST"],"scope_expression":{"rule":{"and":[{"var":0},{"or":[{"var":1},{"if":[{"var":2},true,false]}]}]},"data":["admin","^posts:(?<PC1>.+)$","email"]}}]}]"#;
    for _ in 0..ROUNDS {
        if let Ok(value) = serde_json::from_slice(&rng.mutate(gluu)) {
            if let Ok(policy) = Policy::compile(&value) {
                let _ = policy.decide("GET", "/posts/1", &["admin".to_string()]);
            }
        }
    }
}

#[test]
fn mangled_requests_and_tokens_get_an_answer() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let config = Config::from_json(full_config().as_bytes(), &|_| None).unwrap();
    let mut state = State::new(&config);
    let v = vectors();
    let good = format!("Bearer {}", v.token("good_RS256"));
    let paths: [&[u8]; 4] = [b"/a/17?at=x", b"/b/c/../d", b"/open/x%2e%2e/y", b"/health"];
    for round in 0..ROUNDS {
        let path = String::from_utf8_lossy(&rng.mutate(paths[round % paths.len()])).into_owned();
        let token = String::from_utf8_lossy(&rng.mutate(good.as_bytes())).into_owned();
        let cookie = String::from_utf8_lossy(&rng.mutate(b"at=abc; x=\"y\"")).into_owned();
        let headers = vec![
            ("authorization".to_string(), token),
            ("cookie".to_string(), cookie),
        ];
        let request = Request {
            method: "GET",
            path: &path,
            headers: &headers,
            client: None,
            peer_certificate: None,
            routing: Default::default(),
            body: None,
        };
        let _ = normalize_path(&path);
        if let Verdict::Call {
            resume: pending @ Resume::Pdp(_),
            ..
        } = verdict_for(&config, &mut state, &request, v.now)
        {
            let body = rng.mutate(br#"{"decision":true}"#);
            let reply = CalloutReply {
                status: Some(200),
                body,
                ..CalloutReply::default()
            };
            let metrics = crate::metrics::testing::FakeMetrics::default();
            let _ = resume(&config, &mut state, &metrics, pending, Ok(&reply), v.now);
        }
    }
}

#[test]
fn mangled_json_rpc_bodies_get_an_answer() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let jwks = String::from_utf8(vectors().jwks).unwrap();
    let config = Config::from_json(
        format!(
            r#"{{"issuers":[{{"issuer":"https://issuer.test","audiences":["api"],"jwks":{jwks}}}],
            "jsonrpc":{{"max_body_bytes":512}},
            "policy":{{"POST /mcp":"read","POST /mcp tools/call admin_*":{{"scope":"admin","max_age":5}},
                       "POST /mcp resources/read file:///*":"files"}}}}"#
        )
        .as_bytes(),
        &|_| None,
    )
    .unwrap();
    let mut state = State::new(&config);
    let v = vectors();
    let headers = vec![(
        "authorization".to_string(),
        format!("Bearer {}", v.token("good_RS256")),
    )];
    let bodies: [&[u8]; 3] = [
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"admin_x","arguments":{"a":[1,{"b":"c"}]}}}"#,
        br#"[{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":"x","method":"resources/read","params":{"uri":"file:///etc"}}]"#,
        br#"{"jsonrpc":"2.0","id":2,"result":{"content":[]}}"#,
    ];
    let mut answers = std::collections::HashSet::new();
    for round in 0..ROUNDS * 4 {
        let body = rng.mutate(bodies[round % bodies.len()]);
        let request = Request {
            method: "POST",
            path: "/mcp",
            headers: &headers,
            client: None,
            peer_certificate: None,
            routing: Default::default(),
            body: Some(&body),
        };
        match verdict_for(&config, &mut state, &request, v.now) {
            Verdict::Allow(_) => answers.insert(200),
            Verdict::Deny(denial) => answers.insert(denial.status()),
            other => panic!("a body in hand is decided: {other:?}"),
        };
    }
    // Some mangled bodies still pass, some are refused as bodies, some by scope.
    assert!(
        answers.contains(&200) && answers.contains(&400) && answers.contains(&403),
        "{answers:?}"
    );
}

#[test]
fn mangled_key_server_replies_are_failures_never_a_panic() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let config = Config::from_json(full_config().as_bytes(), &|_| None).unwrap();
    let mut state = State::new(&config);
    let jwks = vectors().jwks;
    let discovery = br#"{"issuer":"https://as.test","jwks_uri":"https://as.test/jwks"}"#;
    for round in 0..ROUNDS {
        let (step, input): (FetchStep, &[u8]) = if round % 2 == 0 {
            (FetchStep::Jwks, &jwks)
        } else {
            (FetchStep::Discovery, discovery)
        };
        let status = [200, 200, 200, 404, 500][rng.below(5)];
        let reply = CalloutReply {
            status: Some(status),
            body: rng.mutate(input),
            ..CalloutReply::default()
        };
        let _ = state.keys.on_reply(1, step, &reply, 1_700_000_000);
    }
}
