//! Sender-constrained tokens: whether the token found may be used by this
//! sender. For DPoP (RFC 9449) that is the scheme it came with, its
//! `cnf.jkt` and the issuer's `dpop` mode, then the proof, checked on every
//! request (a grant may come from the cache; a proof never does).

use crate::config::Config;
use crate::dpop::{self, DpopMode, DpopProblem, ProofContext};
use crate::extract::{ExtractError, FoundToken, TokenSource};
use crate::grant::Grant;
use crate::mtls::{self, CertificateBound, CertificateSource};
use crate::response::{Denial, TokenProblem};

use super::{Request, State};

/// How the token was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scheme {
    /// Any configured token source (`Bearer`, a header, query, cookie).
    Bearer,
    /// `Authorization: DPoP <token>`.
    Dpop,
}

/// The `DPoP`-scheme token, when no configured source found one (a token in
/// a configured place and a `DPoP` one is a token offered twice).
pub(super) fn dpop_token(
    config: &Config,
    request: &Request,
    found: Option<&FoundToken>,
) -> Result<Option<FoundToken>, ExtractError> {
    if config
        .issuers
        .iter()
        .all(|issuer| issuer.dpop == DpopMode::Off)
    {
        return Ok(None);
    }
    // A configured `authorization` source with the DPoP prefix: that is the scheme.
    if let Some(found) = found {
        if let TokenSource::Header {
            name,
            prefix: Some(prefix),
        } = &found.source
        {
            if name == "authorization" && prefix.eq_ignore_ascii_case("DPoP") {
                return Ok(Some(found.clone()));
            }
        }
    }
    let place = || "authorization header".to_string();
    let Some(token) = dpop::dpop_token(request.headers)? else {
        return Ok(None);
    };
    if found.is_some() {
        return Err(ExtractError::SeveralPlaces);
    }
    if token.is_empty()
        || token.contains(',')
        || !token
            .trim_end_matches('=')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
    {
        return Err(ExtractError::BadSyntax(place()));
    }
    Ok(Some(FoundToken {
        token: token.to_string(),
        source: TokenSource::Header {
            name: "authorization".into(),
            prefix: Some("DPoP".into()),
        },
    }))
}

/// Whether a certificate-bound token (RFC 8705 §3) comes on a connection
/// authenticated with its certificate: from the connection, or from a
/// trusted proxy's `x-forwarded-client-cert` when so configured.
pub(super) fn check_certificate(
    config: &Config,
    request: &Request,
    grant: &Grant,
) -> Result<(), Denial> {
    let mode = config
        .issuers
        .get(grant.issuer)
        .map_or(CertificateBound::Off, |issuer| issuer.certificate_bound);
    let presented = match config.client_certificate.source {
        CertificateSource::Connection => request.peer_certificate,
        CertificateSource::Xfcc => mtls::xfcc_hash(request.headers),
    };
    mtls::check(mode, grant.cnf_x5t.as_deref(), presented)
        .map_err(|problem| Denial::InvalidToken(TokenProblem::Certificate(problem)))
}

/// Whether `grant`'s token may be used as it was presented: the thumbprint
/// of the key it is bound to when a proof was checked, `None` for a bearer
/// token, or the denial.
pub(super) fn check_binding(
    config: &Config,
    state: &State,
    request: &Request,
    token: &str,
    scheme: Scheme,
    grant: &Grant,
    now: u64,
) -> Result<Option<String>, Denial> {
    let deny = |problem| Denial::Dpop {
        problem,
        algs: config.dpop.algs(),
    };
    let mode = config
        .issuers
        .get(grant.issuer)
        .map_or(DpopMode::Off, |issuer| issuer.dpop);
    let jkt = match (mode, scheme, grant.cnf_jkt.as_deref()) {
        (DpopMode::Off, Scheme::Bearer, _) => return Ok(None),
        (DpopMode::Off, Scheme::Dpop, _) => return Err(deny(DpopProblem::NotAccepted)),
        (_, Scheme::Bearer, Some(_)) => return Err(deny(DpopProblem::Downgrade)),
        (DpopMode::Allowed, Scheme::Bearer, None) => return Ok(None),
        (DpopMode::Required, Scheme::Bearer, None) | (_, Scheme::Dpop, None) => {
            return Err(deny(DpopProblem::Unbound))
        }
        (_, Scheme::Dpop, Some(jkt)) => jkt,
    };
    let proof = dpop::proof_header(request.headers).map_err(deny)?;
    let uri = dpop::request_uri(&config.dpop, request.headers, request.path)
        .ok_or(deny(DpopProblem::UriMismatch))?;
    let context = ProofContext {
        method: request.method,
        uri: &uri,
        access_token: token,
        jkt,
        now,
        clock_skew: config.rules.clock_skew_seconds,
    };
    let checked =
        dpop::check_proof(&config.dpop, state.verifier.as_ref(), proof, &context).map_err(deny)?;
    config
        .dpop
        .replay
        .remember(state.replay.as_ref(), &checked, now)
        .map_err(deny)?;
    Ok(Some(jkt.to_string()))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use ct_codecs::{Base64UrlSafeNoPadding, Encoder as _};
    use serde_json::{json, Map, Value};

    use super::super::test_support::{count_signature_checks, hs_claims, hs_config, hs_token};
    use super::super::{verdict_for, Allow, Request, State, Verdict};
    use crate::dpop::{thumbprint, DpopProblem};
    use crate::extract::tests::h;
    use crate::jwt::test_vectors::vectors;
    use crate::response::Denial;

    const HTU: &str = "https://api.test/read";

    fn enc(b: &[u8]) -> String {
        Base64UrlSafeNoPadding::encode_to_string(b).unwrap()
    }

    /// A client's Ed25519 key, from a fixed seed.
    fn client_key(seed: u8) -> (ed25519_compact::KeyPair, Map<String, Value>) {
        let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]));
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": enc(pair.pk.as_ref())});
        let Value::Object(jwk) = jwk else { panic!() };
        (pair, jwk)
    }

    fn proof(seed: u8, claims: Value, header: Value) -> String {
        let (pair, jwk) = client_key(seed);
        let mut h = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk});
        for (k, v) in header.as_object().unwrap() {
            h[k] = v.clone();
        }
        let mut c = json!({"jti": format!("j-{}", vectors().now), "htm": "GET", "htu": HTU, "iat": vectors().now});
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        let input = format!(
            "{}.{}",
            enc(h.to_string().as_bytes()),
            enc(c.to_string().as_bytes())
        );
        let signature = pair.sk.sign(input.as_bytes(), None);
        format!("{input}.{}", enc(signature.as_ref()))
    }

    fn ath(token: &str) -> String {
        enc(&hmac_sha256::Hash::hash(token.as_bytes()))
    }

    fn bound_token(seed: u8) -> String {
        let jkt = thumbprint(&client_key(seed).1).unwrap();
        hs_token(hs_claims(json!({"cnf": {"jkt": jkt}})))
    }

    fn at(
        c: &crate::config::Config,
        s: &mut State,
        headers: &[(String, String)],
        method: &str,
    ) -> Verdict {
        let mut headers = headers.to_vec();
        headers.push((":scheme".into(), "https".into()));
        headers.push((":authority".into(), "api.test".into()));
        let request = Request {
            method,
            path: "/read",
            headers: &headers,
            client: None,
            peer_certificate: None,
            routing: Default::default(),
            body: None,
        };
        verdict_for(c, s, &request, vectors().now)
    }

    fn problem(verdict: Verdict) -> DpopProblem {
        match verdict {
            Verdict::Deny(Denial::Dpop { problem, .. }) => problem,
            other => panic!("not a DPoP denial: {other:?}"),
        }
    }

    #[test]
    fn a_bound_token_passes_with_its_proof_once_and_never_as_bearer() {
        let c = hs_config("");
        let mut s = State::new(&c);
        let token = bound_token(1);
        let good = proof(1, json!({"ath": ath(&token)}), json!({}));
        let headers = h(&[("authorization", &format!("DPoP {token}")), ("dpop", &good)]);
        let Verdict::Allow(Allow {
            set_headers,
            remove_headers,
            ..
        }) = at(&c, &mut s, &headers, "GET")
        else {
            panic!("refused")
        };
        let jkt = thumbprint(&client_key(1).1).unwrap();
        assert!(set_headers.contains(&("x-oauth-dpop-jkt".into(), jkt)));
        assert!(remove_headers.contains(&"dpop".to_string()));
        assert_eq!(s.tokens.len(), 1, "the grant is cached");
        assert_eq!(
            problem(at(&c, &mut s, &headers, "GET")),
            DpopProblem::Replayed,
            "the proof is not"
        );
        let bearer = h(&[("authorization", &format!("Bearer {token}"))]);
        assert_eq!(
            problem(at(&c, &mut s, &bearer, "GET")),
            DpopProblem::Downgrade
        );
    }

    #[test]
    fn a_proof_for_another_request_token_or_key_costs_no_signature_check() {
        let c = hs_config("");
        let mut s = State::new(&c);
        let checks = count_signature_checks(&mut s);
        let token = bound_token(1);
        let a = ath(&token);
        let cases = [
            (
                proof(1, json!({"ath": a, "htm": "POST"}), json!({})),
                DpopProblem::MethodMismatch,
            ),
            (
                proof(
                    1,
                    json!({"ath": a, "htu": "https://api.test/other"}),
                    json!({}),
                ),
                DpopProblem::UriMismatch,
            ),
            (
                proof(1, json!({"ath": a, "iat": vectors().now - 200}), json!({})),
                DpopProblem::Stale,
            ),
            (
                proof(1, json!({"ath": ath("another")}), json!({})),
                DpopProblem::TokenHashMismatch,
            ),
            (
                proof(2, json!({"ath": a}), json!({})),
                DpopProblem::KeyMismatch,
            ),
            (
                proof(1, json!({"ath": a}), json!({"typ": "JWT"})),
                DpopProblem::WrongType,
            ),
            (
                proof(1, json!({"ath": a}), json!({"alg": "HS256"})),
                DpopProblem::AlgNotAllowed("HS256".into()),
            ),
            (
                proof(
                    1,
                    json!({"ath": a}),
                    json!({"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AA", "d": "AA"}}),
                ),
                DpopProblem::PrivateKey,
            ),
        ];
        for (p, expected) in cases {
            let headers = h(&[("authorization", &format!("DPoP {token}")), ("dpop", &p)]);
            assert_eq!(problem(at(&c, &mut s, &headers, "GET")), expected);
        }
        assert_eq!(
            checks.get(),
            1,
            "only the token's own signature was checked"
        );
        // A forged signature is checked, and refused.
        let good = proof(1, json!({"ath": a}), json!({}));
        let forged = format!("{}A", good.get(..good.len() - 1).unwrap());
        let forged = if forged == good {
            format!("{}B", good.get(..good.len() - 1).unwrap())
        } else {
            forged
        };
        let headers = h(&[
            ("authorization", &format!("DPoP {token}")),
            ("dpop", &forged),
        ]);
        assert!(matches!(
            problem(at(&c, &mut s, &headers, "GET")),
            DpopProblem::BadSignature | DpopProblem::Malformed(_)
        ));
    }

    #[test]
    fn the_dpop_scheme_twice_is_a_token_offered_twice_whatever_the_sources() {
        let c = hs_config(r#","token_sources":[{"cookie":"at"}]"#);
        let mut s = State::new(&c);
        let token = bound_token(1);
        let headers = h(&[
            ("authorization", &format!("DPoP {token}")),
            ("authorization", "DPoP other"),
        ]);
        assert!(matches!(
            at(&c, &mut s, &headers, "GET"),
            Verdict::Deny(Denial::InvalidRequest(_))
        ));
    }

    #[test]
    fn issuer_modes() {
        let allowed = hs_config("");
        let required = {
            let json = format!(
                r#"{{"issuers":[{{"issuer":"https://hs.test","audiences":["api"],"shared_secret":"{}","dpop":"required"}}]}}"#,
                vectors().hs_secret
            );
            crate::config::Config::from_json(json.as_bytes(), &|_| None).unwrap()
        };
        let unbound = hs_token(hs_claims(json!({})));
        let bearer = h(&[("authorization", &format!("Bearer {unbound}"))]);
        let mut s = State::new(&allowed);
        assert!(matches!(
            at(&allowed, &mut s, &bearer, "GET"),
            Verdict::Allow(_)
        ));
        let dpop = h(&[
            ("authorization", &format!("DPoP {unbound}")),
            ("dpop", &proof(1, json!({"ath": ath(&unbound)}), json!({}))),
        ]);
        assert_eq!(
            problem(at(&allowed, &mut s, &dpop, "GET")),
            DpopProblem::Unbound
        );
        let mut s = State::new(&required);
        assert_eq!(
            problem(at(&required, &mut s, &bearer, "GET")),
            DpopProblem::Unbound
        );
    }
}
