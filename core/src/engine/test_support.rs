//! What the engine's tests share: configurations over the test vectors'
//! keys, requests with a bearer token, and a callout's answer.

use crate::callout::CalloutReply;
use crate::config::Config;
use crate::extract::tests::h;
use crate::jwt::test_vectors::vectors;
use crate::metrics::testing::FakeMetrics;

use super::{verdict_for, Request, Resume, Resumed, State, Verdict};

/// The PDP's answer to a request that asked it.
pub(super) fn answer_pdp(
    c: &Config,
    s: &mut State,
    asked: Verdict,
    reply: &CalloutReply,
) -> Verdict {
    let Verdict::Call {
        resume: resume @ Resume::Pdp(_),
        ..
    } = asked
    else {
        panic!("the PDP was not asked: {asked:?}")
    };
    let Resumed::Decided(verdict) = super::resume(
        c,
        s,
        &FakeMetrics::default(),
        resume,
        Ok(reply),
        vectors().now,
    ) else {
        panic!("a PDP answer decides its request")
    };
    verdict
}

pub(super) fn inline_config(extra: &str) -> Config {
    let v = vectors();
    let jwks = String::from_utf8(v.jwks).unwrap();
    let json = format!(
        r#"{{"issuers":[{{"issuer":"https://issuer.test","audiences":["api"],"jwks":{jwks}}}]{extra}}}"#
    );
    Config::from_json(json.as_bytes(), &|_| None).unwrap()
}

/// A GET of `path` with `headers`, from `client` when given, with no
/// certificate, routing or body: the request most engine tests ask about,
/// built in one place so a new `Request` field gets its test default once.
pub(crate) fn get<'a>(
    path: &'a str,
    headers: &'a [(String, String)],
    client: Option<&'a str>,
) -> Request<'a> {
    Request {
        method: "GET",
        path,
        headers,
        client,
        peer_certificate: None,
        routing: Default::default(),
        body: None,
    }
}

pub(crate) fn bearer(token: &str) -> Vec<(String, String)> {
    h(&[("authorization", &format!("Bearer {token}"))])
}

pub(super) fn run(
    config: &Config,
    state: &mut State,
    headers: &[(String, String)],
    path: &str,
) -> Verdict {
    verdict_for(config, state, &get(path, headers, None), vectors().now)
}

pub(super) fn reply(status: u16, body: &str) -> CalloutReply {
    CalloutReply {
        status: Some(status),
        body: body.as_bytes().to_vec(),
        ..CalloutReply::default()
    }
}

pub(super) fn method_run(
    c: &Config,
    s: &mut State,
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> Verdict {
    let request = Request {
        method,
        ..get(path, headers, None)
    };
    verdict_for(c, s, &request, vectors().now)
}

pub(super) fn good() -> Vec<(String, String)> {
    bearer(vectors().token("good_RS256"))
}

/// An HS256 token over `claims`, signed with the vectors' shared secret.
pub(super) fn hs_token(claims: serde_json::Value) -> String {
    use ct_codecs::{Base64UrlSafeNoPadding, Encoder as _};
    let enc = |b: &[u8]| Base64UrlSafeNoPadding::encode_to_string(b).unwrap();
    let input = format!(
        "{}.{}",
        enc(br#"{"alg":"HS256","typ":"JWT"}"#),
        enc(claims.to_string().as_bytes())
    );
    let mac = hmac_sha256::HMAC::mac(input.as_bytes(), vectors().hs_secret.as_bytes());
    format!("{input}.{}", enc(&mac))
}

pub(super) fn hs_config(extra: &str) -> Config {
    let json = format!(
        r#"{{"issuers":[{{"issuer":"https://hs.test","audiences":["api"],"shared_secret":"{}"}}]{extra}}}"#,
        vectors().hs_secret
    );
    Config::from_json(json.as_bytes(), &|_| None).unwrap()
}

pub(super) fn hs_claims(extra: serde_json::Value) -> serde_json::Value {
    let mut claims = serde_json::json!({"iss": "https://hs.test", "aud": "api",
        "sub": "alice", "client_id": "app", "scope": "read", "exp": vectors().now + 600});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

/// Makes `state` count its signature checks, in the returned cell: tests
/// assert which refusals cost no signature work.
pub(super) fn count_signature_checks(state: &mut State) -> std::rc::Rc<std::cell::Cell<usize>> {
    use crate::verify::{KeyMaterial, PureRustVerifier, SignatureVerifier, VerifyError};
    struct Counting(std::rc::Rc<std::cell::Cell<usize>>);
    impl SignatureVerifier for Counting {
        fn verify(
            &self,
            alg: crate::alg::Alg,
            key: &KeyMaterial,
            input: &[u8],
            signature: &[u8],
        ) -> Result<(), VerifyError> {
            self.0.set(self.0.get() + 1);
            PureRustVerifier.verify(alg, key, input, signature)
        }
    }
    let checks = std::rc::Rc::new(std::cell::Cell::new(0));
    state.verifier = Box::new(Counting(std::rc::Rc::clone(&checks)));
    checks
}
