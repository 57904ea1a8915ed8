//! etcd's v3 JSON gateway as callouts: request builders and reply parsers,
//! no I/O. A proxy-wasm filter cannot open sockets, but etcd answers plain
//! HTTP/JSON on `/v3/...` (its gRPC gateway), so the same callouts reach it
//! from Envoy (a cluster) and from Kong (`host:port`).
//!
//! The gateway's JSON is protobuf's: keys and values are base64, int64s are
//! strings, and fields at their zero value are left out (`kvs` of an empty
//! range, `succeeded` of a failed transaction, `count: 0`). An error is a
//! non-2xx status with `{"error": .., "message": .., "code": <gRPC code>}`.
//! With auth on, every call but `authenticate` carries the token etcd issued
//! in the `authorization` header (no scheme).

use ct_codecs::{Base64, Decoder as _, Encoder as _};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::callout::{Callout, CalloutError, CalloutReply, Url};

/// Where etcd's gateway is reached: the base URL (scheme, authority and an
/// optional path prefix before `/v3`), and the Envoy cluster (or Kong
/// `host:port`) the callouts go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub base: Url,
    pub upstream: String,
}

/// One key and its value, as a range returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The lease the key is attached to, 0 for none.
    pub lease: i64,
}

/// A range's answer: the keys found (at most the limit asked), how many
/// matched in all, and the store's revision it was read at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Range {
    pub kvs: Vec<Kv>,
    pub count: i64,
    pub more: bool,
    pub revision: i64,
}

/// A lease granted: its id and its TTL in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
}

/// A transaction's answer: whether the compares held, and the ranges its
/// chosen branch read (in order; puts leave nothing here).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub succeeded: bool,
    pub ranges: Vec<Range>,
    pub revision: i64,
}

/// Why an etcd call gave nothing usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// No HTTP answer, or the host's own (connection refused, timeout).
    Unreachable(CalloutError),
    /// The auth token is missing, expired or unknown (HTTP 401, gRPC 16):
    /// authenticate again.
    Unauthenticated(String),
    /// The user may not touch that key (HTTP 403, gRPC 7): a role confines
    /// the gateway's user to its prefix.
    PermissionDenied(String),
    /// etcd is shedding load (HTTP 429, gRPC 8).
    Throttled(String),
    /// Any other refusal, with etcd's gRPC code when it gave one.
    Refused {
        status: u16,
        code: Option<i64>,
        message: String,
    },
    /// A 2xx answer that is not what the call returns.
    Malformed(String),
}

impl EtcdError {
    /// A stable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            EtcdError::Unreachable(_) => "unreachable",
            EtcdError::Unauthenticated(_) => "unauthenticated",
            EtcdError::PermissionDenied(_) => "permission_denied",
            EtcdError::Throttled(_) => "throttled",
            EtcdError::Refused { .. } => "refused",
            EtcdError::Malformed(_) => "malformed",
        }
    }
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Unreachable(e) => write!(f, "{}", e.of("etcd")),
            EtcdError::Unauthenticated(m) => write!(f, "etcd refused the auth token: {m}"),
            EtcdError::PermissionDenied(m) => write!(
                f,
                "etcd refused the gateway's user (is the key outside its role's prefix?): {m}"
            ),
            EtcdError::Throttled(m) => write!(f, "etcd is throttling: {m}"),
            EtcdError::Refused {
                status,
                code,
                message,
            } => match code {
                Some(code) => write!(f, "etcd answered HTTP {status} (code {code}): {message}"),
                None => write!(f, "etcd answered HTTP {status}"),
            },
            EtcdError::Malformed(m) => write!(f, "etcd's answer is malformed: {m}"),
        }
    }
}

/// etcd's auth token as one worker holds it: used until `renew_after`
/// seconds after it was obtained (etcd's simple tokens live 300 s unless
/// `--auth-token-ttl` says otherwise), dropped when etcd refuses it
/// ([`EtcdError::Unauthenticated`]), then obtained again with
/// [`Endpoint::authenticate`] before the next call.
#[derive(Debug, Default)]
pub struct Session {
    token: Option<(std::rc::Rc<str>, u64)>,
}

impl Session {
    /// The token to send, if one is held and not due for renewal.
    pub fn token(&self, renew_after: u64, now: u64) -> Option<std::rc::Rc<str>> {
        self.token
            .as_ref()
            .filter(|(_, at)| now < at.saturating_add(renew_after))
            .map(|(t, _)| std::rc::Rc::clone(t))
    }

    /// Whether a token should be obtained: none held, or one `renew_after`
    /// seconds old.
    pub fn needs_renewal(&self, renew_after: u64, now: u64) -> bool {
        self.token(renew_after, now).is_none()
    }

    /// Keeps the token an authenticate call returned.
    pub fn obtained(&mut self, token: String, now: u64) {
        self.token = Some((std::rc::Rc::from(token), now));
    }

    /// etcd refused the token: the next call authenticates first.
    pub fn refused(&mut self) {
        self.token = None;
    }
}

/// The most of an etcd message kept for a log line.
const MAX_MESSAGE_CHARS: usize = 200;

pub fn b64(bytes: &[u8]) -> String {
    Base64::encode_to_string(bytes).unwrap_or_default()
}

/// etcd's `range_end` for every key that starts with `prefix`: the prefix
/// with its last byte below 0xff incremented (and the rest dropped); `\0`
/// (every key) for a prefix of 0xff bytes only.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Endpoint {
    fn call(&self, path: &str, body: &Value, auth: Option<&str>, timeout_ms: u64) -> Callout {
        let mut callout = Callout::post_json(
            &self.upstream,
            self.base.join_path(path),
            body.to_string().into_bytes(),
            timeout_ms,
        );
        if let Some(token) = auth {
            callout
                .headers
                .push(("authorization".to_string(), token.to_string()));
        }
        callout
    }

    /// `POST /v3/auth/authenticate`: an auth token for `name`.
    pub fn authenticate(&self, name: &str, password: &str, timeout_ms: u64) -> Callout {
        let body = json!({"name": name, "password": password});
        self.call("/v3/auth/authenticate", &body, None, timeout_ms)
    }

    /// `POST /v3/kv/range` of one key.
    pub fn get(&self, key: &[u8], auth: Option<&str>, timeout_ms: u64) -> Callout {
        let body = json!({"key": b64(key)});
        self.call("/v3/kv/range", &body, auth, timeout_ms)
    }

    /// `POST /v3/kv/range` of the keys under `prefix` changed at or after
    /// `min_mod_revision` (0: all), at most `limit`, oldest change first.
    pub fn scan(
        &self,
        prefix: &[u8],
        min_mod_revision: i64,
        limit: i64,
        auth: Option<&str>,
        timeout_ms: u64,
    ) -> Callout {
        let mut body = serde_json::Map::new();
        body.insert("key".into(), b64(prefix).into());
        body.insert("range_end".into(), b64(&prefix_end(prefix)).into());
        body.insert("limit".into(), limit.to_string().into());
        body.insert("sort_order".into(), "ASCEND".into());
        body.insert("sort_target".into(), "MOD".into());
        if min_mod_revision > 0 {
            body.insert(
                "min_mod_revision".into(),
                min_mod_revision.to_string().into(),
            );
        }
        let body = Value::Object(body);
        self.call("/v3/kv/range", &body, auth, timeout_ms)
    }

    /// `POST /v3/kv/put`, attached to `lease` when given.
    pub fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<i64>,
        auth: Option<&str>,
        timeout_ms: u64,
    ) -> Callout {
        let body = put_request(key, value, lease);
        self.call("/v3/kv/put", &body, auth, timeout_ms)
    }

    /// `POST /v3/kv/txn`: puts `key` only if it does not exist
    /// (`create_revision == 0`); otherwise reads `or_read` (in the same
    /// transaction, so nothing happens between the compare and the read).
    pub fn create(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<i64>,
        or_read: &[u8],
        auth: Option<&str>,
        timeout_ms: u64,
    ) -> Callout {
        let body = json!({
            "compare": [{"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": put_request(key, value, lease)}],
            "failure": [{"request_range": {"key": b64(or_read)}}],
        });
        self.call("/v3/kv/txn", &body, auth, timeout_ms)
    }

    /// `POST /v3/lease/grant` of `ttl` seconds.
    pub fn grant(&self, ttl: i64, auth: Option<&str>, timeout_ms: u64) -> Callout {
        let body = json!({"TTL": ttl.to_string(), "ID": "0"});
        self.call("/v3/lease/grant", &body, auth, timeout_ms)
    }
}

fn put_request(key: &[u8], value: &[u8], lease: Option<i64>) -> Value {
    let mut put = serde_json::Map::new();
    put.insert("key".into(), b64(key).into());
    put.insert("value".into(), b64(value).into());
    if let Some(lease) = lease {
        put.insert("lease".into(), lease.to_string().into());
    }
    Value::Object(put)
}

/// The 2xx body of an etcd answer as JSON, or the error it stands for.
fn body(reply: &CalloutReply) -> Result<Value, EtcdError> {
    match reply.small_success_body() {
        Ok(body) => {
            serde_json::from_slice(body).map_err(|e| EtcdError::Malformed(format!("not JSON: {e}")))
        }
        Err(CalloutError::Status(status)) => Err(refusal(status, &reply.body)),
        Err(e) => Err(EtcdError::Unreachable(e)),
    }
}

/// What a non-2xx answer says: etcd's `{"error", "message", "code"}`.
fn refusal(status: u16, body: &[u8]) -> EtcdError {
    #[derive(Deserialize)]
    struct Error {
        error: Option<String>,
        message: Option<String>,
        code: Option<i64>,
    }
    let parsed: Option<Error> = serde_json::from_slice(body).ok().or_else(|| {
        // The gateway appends its gRPC trailer after the JSON object.
        let text = std::str::from_utf8(body).ok()?;
        let end = text.rfind('}')?;
        serde_json::from_str(text.get(..=end)?).ok()
    });
    let (code, message) = match parsed {
        Some(e) => (
            e.code,
            e.message
                .or(e.error)
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_MESSAGE_CHARS)
                .collect(),
        ),
        None => (None, String::new()),
    };
    match (status, code) {
        (401, _) | (_, Some(16)) => EtcdError::Unauthenticated(message),
        (403, _) | (_, Some(7)) => EtcdError::PermissionDenied(message),
        (429, _) | (_, Some(8)) => EtcdError::Throttled(message),
        _ => EtcdError::Refused {
            status,
            code,
            message,
        },
    }
}

/// An int64 as the gateway writes it: a string (or, leniently, a number);
/// absent is 0.
fn int64(value: Option<&Value>, what: &str) -> Result<i64, EtcdError> {
    match value {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| EtcdError::Malformed(format!("{what} is not an int64"))),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| EtcdError::Malformed(format!("{what} is not an int64"))),
        Some(_) => Err(EtcdError::Malformed(format!("{what} is not an int64"))),
    }
}

fn bytes(value: Option<&Value>, what: &str) -> Result<Vec<u8>, EtcdError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Base64::decode_to_vec(s, None)
            .map_err(|_| EtcdError::Malformed(format!("{what} is not base64"))),
        Some(_) => Err(EtcdError::Malformed(format!("{what} is not base64"))),
    }
}

fn revision(body: &Value) -> Result<i64, EtcdError> {
    int64(
        body.get("header").and_then(|h| h.get("revision")),
        "revision",
    )
}

fn range_of(body: &Value) -> Result<Range, EtcdError> {
    let kvs = match body.get("kvs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(kvs)) => kvs
            .iter()
            .map(|kv| {
                Ok(Kv {
                    key: bytes(kv.get("key"), "a key")?,
                    value: bytes(kv.get("value"), "a value")?,
                    create_revision: int64(kv.get("create_revision"), "create_revision")?,
                    mod_revision: int64(kv.get("mod_revision"), "mod_revision")?,
                    lease: int64(kv.get("lease"), "lease")?,
                })
            })
            .collect::<Result<_, EtcdError>>()?,
        Some(_) => return Err(EtcdError::Malformed("kvs is not a list".into())),
    };
    Ok(Range {
        count: int64(body.get("count"), "count")?,
        more: body.get("more").and_then(Value::as_bool).unwrap_or(false),
        revision: revision(body).unwrap_or(0),
        kvs,
    })
}

/// A `/v3/kv/range` answer.
pub fn read_range(reply: &CalloutReply) -> Result<Range, EtcdError> {
    let body = body(reply)?;
    if !body.is_object() {
        return Err(EtcdError::Malformed("not a JSON object".into()));
    }
    range_of(&body)
}

/// A `/v3/kv/put` answer: the revision it made.
pub fn read_put(reply: &CalloutReply) -> Result<i64, EtcdError> {
    let body = body(reply)?;
    if !body.is_object() {
        return Err(EtcdError::Malformed("not a JSON object".into()));
    }
    revision(&body)
}

/// A `/v3/kv/txn` answer.
pub fn read_txn(reply: &CalloutReply) -> Result<Txn, EtcdError> {
    let body = body(reply)?;
    if !body.is_object() {
        return Err(EtcdError::Malformed("not a JSON object".into()));
    }
    let succeeded = match body.get("succeeded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(EtcdError::Malformed("succeeded is not a boolean".into())),
    };
    let ranges = match body.get("responses") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(responses)) => responses
            .iter()
            .filter_map(|r| r.get("response_range"))
            .map(range_of)
            .collect::<Result<_, EtcdError>>()?,
        Some(_) => return Err(EtcdError::Malformed("responses is not a list".into())),
    };
    Ok(Txn {
        succeeded,
        ranges,
        revision: revision(&body).unwrap_or(0),
    })
}

/// A `/v3/lease/grant` answer.
pub fn read_grant(reply: &CalloutReply) -> Result<Lease, EtcdError> {
    let body = body(reply)?;
    if let Some(error) = body.get("error").and_then(Value::as_str) {
        return Err(EtcdError::Refused {
            status: 200,
            code: None,
            message: error.chars().take(MAX_MESSAGE_CHARS).collect(),
        });
    }
    let id = int64(body.get("ID"), "ID")?;
    let ttl = int64(body.get("TTL"), "TTL")?;
    if id == 0 || ttl <= 0 {
        return Err(EtcdError::Malformed("no lease granted".into()));
    }
    Ok(Lease { id, ttl })
}

/// The longest auth token accepted (etcd's simple tokens are ~20 bytes,
/// its JWT tokens a few hundred).
const MAX_AUTH_TOKEN_BYTES: usize = 4096;

/// A `/v3/auth/authenticate` answer: the auth token.
pub fn read_authenticate(reply: &CalloutReply) -> Result<String, EtcdError> {
    let body = body(reply)?;
    match body.get("token").and_then(Value::as_str) {
        Some(token)
            if !token.is_empty()
                && token.len() <= MAX_AUTH_TOKEN_BYTES
                && crate::headers::is_header_value(token) =>
        {
            Ok(token.to_string())
        }
        _ => Err(EtcdError::Malformed("no usable token".into())),
    }
}

#[cfg(test)]
mod tests {
    //! Canned answers of etcd 3.4's gateway (copied from a real one).

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint {
            base: Url::parse("http://etcd.test:2379").unwrap(),
            upstream: "etcd".into(),
        }
    }

    fn reply(status: u16, body: &str) -> CalloutReply {
        CalloutReply {
            status: Some(status),
            body: body.as_bytes().to_vec(),
            oversized: None,
        }
    }

    fn body_of(c: &Callout) -> Value {
        serde_json::from_slice(c.body.as_deref().unwrap()).unwrap()
    }

    const HEADER: &str = r#""header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"3","raft_term":"2"}"#;

    #[test]
    fn requests_carry_base64_keys_string_int64s_and_the_token() {
        let e = endpoint();
        let c = e.put(b"/pep/a", b"hello", Some(42), Some("tok.15"), 200);
        assert_eq!((c.method, c.url.path.as_str()), ("POST", "/v3/kv/put"));
        assert_eq!(c.upstream, "etcd");
        assert_eq!(c.timeout_ms, 200);
        assert!(c
            .headers
            .contains(&("authorization".into(), "tok.15".into())));
        assert_eq!(
            body_of(&c),
            json!({"key": "L3BlcC9h", "value": "aGVsbG8=", "lease": "42"})
        );
        let c = e.get(b"/pep/a", None, 100);
        assert!(!c.headers.iter().any(|(n, _)| n == "authorization"));
        assert_eq!(body_of(&c), json!({"key": "L3BlcC9h"}));
        let c = e.create(b"/pep/c", b"1", Some(7), b"/pep/a", Some("t"), 100);
        assert_eq!(c.url.path, "/v3/kv/txn");
        assert_eq!(
            body_of(&c)["compare"][0],
            json!({"key": "L3BlcC9j", "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
        );
        assert_eq!(
            body_of(&c)["failure"][0]["request_range"]["key"],
            "L3BlcC9h"
        );
        assert_eq!(body_of(&e.grant(30, None, 100))["TTL"], "30");
        let c = e.scan(b"/pep/d/", 12, 100, None, 100);
        assert_eq!(body_of(&c)["range_end"], b64(b"/pep/d0"));
        assert_eq!(body_of(&c)["min_mod_revision"], "12");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
        let c = Endpoint {
            base: Url::parse("https://gw.test/etcd/").unwrap(),
            upstream: "10.0.0.1:2379".into(),
        }
        .authenticate("pep", "pw", 100);
        assert_eq!(c.url.path, "/etcd/v3/auth/authenticate");
        assert_eq!(body_of(&c), json!({"name": "pep", "password": "pw"}));
    }

    #[test]
    fn a_range_reads_kvs_and_an_empty_one_has_none() {
        let hit = format!(
            r#"{{{HEADER},"kvs":[{{"key":"L3BlcC9h","create_revision":"2","mod_revision":"2","version":"1","value":"aGVsbG8="}}],"count":"1"}}"#
        );
        let r = read_range(&reply(200, &hit)).unwrap();
        assert_eq!(r.count, 1);
        assert_eq!(r.revision, 3);
        assert_eq!(
            r.kvs,
            [Kv {
                key: b"/pep/a".to_vec(),
                value: b"hello".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                lease: 0
            }]
        );
        let miss = format!("{{{HEADER}}}");
        assert_eq!(read_range(&reply(200, &miss)).unwrap().kvs, []);
        // A value at its zero value (empty) is left out too.
        let empty = r#"{"kvs":[{"key":"L3BlcC9h","create_revision":"2","mod_revision":"2"}]}"#;
        assert_eq!(read_range(&reply(200, empty)).unwrap().kvs[0].value, b"");
        for bad in [
            "[]",
            "not json",
            r#"{"kvs":{}}"#,
            r#"{"kvs":[{"key":"%%%"}]}"#,
            r#"{"count":"x"}"#,
            r#"{"kvs":[{"key":"YQ==","lease":true}]}"#,
        ] {
            assert!(
                matches!(read_range(&reply(200, bad)), Err(EtcdError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_txn_without_succeeded_failed_and_its_failure_branch_is_read() {
        let won = format!(
            r#"{{{HEADER},"succeeded":true,"responses":[{{"response_put":{{"header":{{"revision":"3"}}}}}}]}}"#
        );
        let t = read_txn(&reply(200, &won)).unwrap();
        assert!(t.succeeded && t.ranges.is_empty());
        let lost = format!("{{{HEADER}}}");
        assert_eq!(
            read_txn(&reply(200, &lost)).unwrap(),
            Txn {
                succeeded: false,
                ranges: vec![],
                revision: 3
            }
        );
        let read = format!(
            r#"{{{HEADER},"responses":[{{"response_range":{{"header":{{"revision":"3"}},"kvs":[{{"key":"YQ==","value":"Yg==","create_revision":"3","mod_revision":"3","lease":"99"}}],"count":"1"}}}}]}}"#
        );
        let t = read_txn(&reply(200, &read)).unwrap();
        assert!(!t.succeeded);
        assert_eq!(t.ranges[0].kvs[0].value, b"b");
        assert_eq!(t.ranges[0].kvs[0].lease, 99);
    }

    #[test]
    fn leases_and_auth_tokens() {
        let g = format!(r#"{{{HEADER},"ID":"4111120496733859096","TTL":"10"}}"#);
        assert_eq!(
            read_grant(&reply(200, &g)).unwrap(),
            Lease {
                id: 4111120496733859096,
                ttl: 10
            }
        );
        assert!(read_grant(&reply(200, &format!("{{{HEADER}}}"))).is_err());
        assert!(read_grant(&reply(200, r#"{"ID":"1","TTL":"5","error":"too many"}"#)).is_err());
        let a = format!(r#"{{{HEADER},"token":"wXPKGHSGazZzbBzZ.14"}}"#);
        assert_eq!(
            read_authenticate(&reply(200, &a)).unwrap(),
            "wXPKGHSGazZzbBzZ.14"
        );
        assert!(read_authenticate(&reply(200, r#"{"token":"a\nb"}"#)).is_err());
        assert!(read_authenticate(&reply(200, r#"{"token":""}"#)).is_err());
    }

    #[test]
    fn errors_by_status_and_grpc_code() {
        let trailer = "Grpc-Trailer-Content-Type: application/grpc\r\n";
        let cases = [
            (
                401,
                r#"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#,
                "unauthenticated",
            ),
            (
                403,
                r#"{"error":"etcdserver: permission denied","message":"etcdserver: permission denied","code":7}"#,
                "permission_denied",
            ),
            (
                429,
                r#"{"error":"etcdserver: too many requests","code":8}"#,
                "throttled",
            ),
            (
                400,
                r#"{"error":"etcdserver: user name is empty","message":"etcdserver: user name is empty","code":3}"#,
                "refused",
            ),
            (500, "oops", "refused"),
        ];
        for (status, body, code) in cases {
            let with_trailer = format!("{body}{trailer}");
            for body in [body, with_trailer.as_str()] {
                let e = read_range(&reply(status, body)).unwrap_err();
                assert_eq!(e.code(), code, "{status} {body}");
            }
        }
        let e = read_put(&reply(403, cases[1].1)).unwrap_err();
        assert!(e.to_string().contains("permission denied"), "{e}");
        let none = CalloutReply::default();
        assert_eq!(read_txn(&none).unwrap_err().code(), "unreachable");
        let envoy = reply(
            503,
            "upstream connect error or disconnect/reset before headers",
        );
        assert_eq!(read_range(&envoy).unwrap_err().code(), "unreachable");
    }
}
