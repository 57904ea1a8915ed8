//! Rough timing of policy matching on a 1000-rule policy.
//!
//! `cargo run --release -p oauth-pep-core --example policy_bench`
//!
//! Not a test: the figures depend on the machine. Native timings; inside the
//! wasm VM expect a small constant factor more.

use std::hint::black_box;
use std::time::Instant;

use oauth_pep_core::policy::{Policy, PolicyDecision};
use oauth_pep_core::request::normalize_path;
use serde_json::{json, Value};

const SERVICES: usize = 250;

/// 4 patterns per service: a literal, `?`, `{regex}` with a spontaneous scope
/// bound to the capture, and `??`.
fn policy() -> Value {
    let mut rules = Vec::new();
    for i in 0..SERVICES {
        rules.push(json!({"path": format!("/svc{i}/status"), "conditions": [
            {"httpMethods": ["GET"], "scope_expression": {"rule": {"var": 0}, "data": ["status"]}}
        ]}));
        rules.push(json!({"path": format!("/svc{i}/items/?"), "conditions": [
            {"httpMethods": ["GET"], "scope_expression": {
                "rule": {"and": [{"var": 0}, {"or": [{"var": 1}, {"var": 2}]}]},
                "data": ["read", "fido", "otp"]}},
            {"httpMethods": ["?"], "scope_expression": {"rule": {"var": 0}, "data": ["admin"]}}
        ]}));
        rules.push(
            json!({"path": format!("/svc{i}/orders/{{^[0-9]+$}}"), "conditions": [
                {"httpMethods": ["GET"], "scope_expression": {
                    "rule": {"or": [{"var": 0}, {"var": 1}]},
                    "data": ["^orders:(?<PC1>[0-9]+)$", "admin"]}}
            ]}),
        );
        rules.push(json!({"path": format!("/svc{i}/files/??"), "conditions": [
            {"httpMethods": ["GET", "HEAD"]}
        ]}));
    }
    Value::Array(rules)
}

fn time<F: FnMut() -> PolicyDecision>(label: &str, iterations: u32, mut f: F) {
    let first = f();
    let start = Instant::now();
    for _ in 0..iterations {
        black_box(f());
    }
    let ns = start.elapsed().as_nanos() / u128::from(iterations);
    println!("{label:<48} {ns:>6} ns/decide   ({first:?})");
}

fn main() {
    let value = policy();
    let start = Instant::now();
    let policy = match Policy::compile(&value) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("policy does not compile: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "compiled {} conditions on {} paths in {:?}",
        policy.rule_count(),
        SERVICES * 4,
        start.elapsed()
    );

    let scopes: Vec<String> = ["read", "otp", "status", "orders:12345", "email", "profile"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let n = 200_000;
    let cases: &[(&str, &str, &str)] = &[
        ("hit literal", "GET", "/svc137/status"),
        ("hit ? (read and (fido or otp))", "GET", "/svc137/items/abc"),
        (
            "hit ? via any-method condition",
            "DELETE",
            "/svc137/items/abc",
        ),
        (
            "hit {regex} + spontaneous scope",
            "GET",
            "/svc249/orders/12345",
        ),
        (
            "hit {regex}, insufficient (hint filled)",
            "GET",
            "/svc249/orders/777",
        ),
        ("hit ?? (4 segments consumed)", "GET", "/svc0/files/a/b/c/d"),
        ("miss: unknown first segment", "GET", "/nosuch/path"),
        (
            "miss: known service, unknown branch",
            "GET",
            "/svc137/unknown/x",
        ),
        ("miss: method has no condition", "POST", "/svc137/status"),
        ("miss: regex does not match", "GET", "/svc137/orders/12a"),
    ];
    for (label, method, path) in cases {
        time(label, n, || policy.decide(method, path, &scopes));
    }

    let raw = "/svc137//items/./abc/../abc%7e?filter=x&limit=10";
    let start = Instant::now();
    for _ in 0..n {
        let _ = black_box(normalize_path(black_box(raw)));
    }
    let ns = start.elapsed().as_nanos() / u128::from(n);
    println!(
        "{:<48} {ns:>6} ns/call",
        "normalize_path (dot segments, query)"
    );
}
