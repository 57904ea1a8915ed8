//! Certificate-bound access tokens (RFC 8705 §3): a token whose
//! `cnf.x5t#S256` names the SHA-256 of a client certificate is only good on
//! a connection authenticated with that certificate. The glue reads the
//! connection's certificate digest (Envoy's
//! `connection.sha256_peer_certificate_digest`, hex); behind a TLS
//! terminator the digest may come from `x-forwarded-client-cert`, only when
//! configured to trust it.

use std::fmt;

use ct_codecs::{Base64UrlSafeNoPadding, Encoder as _};
use serde::Deserialize;

/// What an issuer's tokens may or must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateBound {
    /// `cnf.x5t#S256` is ignored.
    Off,
    /// A token with `cnf.x5t#S256` needs the certificate it names;
    /// unbound tokens pass.
    #[default]
    Allowed,
    /// Every token of the issuer must be certificate-bound.
    Required,
}

/// Where the client certificate's digest comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateSource {
    /// The TLS connection to this Envoy (`connection.sha256_peer_certificate_digest`).
    #[default]
    Connection,
    /// The `Hash` of the one element of `x-forwarded-client-cert`, set by a
    /// trusted proxy in front that terminates TLS (Envoy with
    /// `forward_client_cert_details: SANITIZE_SET`); never the connection's.
    Xfcc,
}

/// The `client_certificate` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificate {
    #[serde(default)]
    pub source: CertificateSource,
}

/// Why a certificate-bound token cannot be used here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateProblem {
    /// No client certificate (plain HTTP, none presented, no trusted XFCC).
    Missing,
    /// The certificate is not the one the token is bound to.
    Mismatch,
    /// The issuer requires bound tokens and this one is not.
    Unbound,
}

impl fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertificateProblem::Missing => {
                "the token is bound to a client certificate and the connection presented none"
            }
            CertificateProblem::Mismatch => {
                "the token is bound to another client certificate than the connection's"
            }
            CertificateProblem::Unbound => "the token is not bound to a client certificate",
        })
    }
}

/// `x5t#S256` of the hex SHA-256 digest the host gives (64 hex digits).
pub fn x5t_s256(hex: &str) -> Option<String> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut bytes = Vec::with_capacity(32);
    let digits = hex.as_bytes();
    for pair in digits.chunks_exact(2) {
        let text = std::str::from_utf8(pair).ok()?;
        bytes.push(u8::from_str_radix(text, 16).ok()?);
    }
    Base64UrlSafeNoPadding::encode_to_string(bytes).ok()
}

/// The `Hash` of `x-forwarded-client-cert` when the request has exactly one
/// such header holding exactly one element (one hop: what a trusted proxy
/// with `SANITIZE_SET` sends); anything else is no certificate.
pub fn xfcc_hash(headers: &[(String, String)]) -> Option<&str> {
    let mut values = headers
        .iter()
        .filter(|(n, _)| n == "x-forwarded-client-cert")
        .map(|(_, v)| v.as_str());
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    // Quoted values (Subject, URI) may hold `,` and `;`: split outside quotes.
    let mut elements = 1;
    let mut pairs = Vec::new();
    let (mut quoted, mut start) = (false, 0);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => elements += 1,
            ';' if !quoted => {
                pairs.push(value.get(start..i)?);
                start = i + 1;
            }
            _ => {}
        }
    }
    if elements != 1 || quoted {
        return None;
    }
    pairs.push(value.get(start..)?);
    let mut hashes = pairs.into_iter().filter_map(|pair| {
        let (key, v) = pair.split_once('=')?;
        key.trim().eq_ignore_ascii_case("hash").then(|| v.trim())
    });
    match (hashes.next(), hashes.next()) {
        (Some(hash), None) => Some(hash),
        _ => None,
    }
}

/// Whether a token bound to `x5t` (None: unbound) may be used by a client
/// whose certificate digest (hex) is `presented`.
pub fn check(
    mode: CertificateBound,
    x5t: Option<&str>,
    presented: Option<&str>,
) -> Result<(), CertificateProblem> {
    match (mode, x5t) {
        (CertificateBound::Off, _) | (CertificateBound::Allowed, None) => Ok(()),
        (CertificateBound::Required, None) => Err(CertificateProblem::Unbound),
        (_, Some(x5t)) => match presented.and_then(x5t_s256) {
            None => Err(CertificateProblem::Missing),
            Some(ours) if ours == x5t => Ok(()),
            Some(_) => Err(CertificateProblem::Mismatch),
        },
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const HEX: &str = "ac9b3e2ea6f2a1b2a8a2e2c4ffd3c4ba9b2e3f1e2d3c4b5a69788796a5b4c3d2";

    #[test]
    fn the_binding_compares_base64url_with_the_hosts_hex() {
        let x5t = x5t_s256(HEX).unwrap();
        assert_eq!(x5t.len(), 43);
        let ok = check(CertificateBound::Allowed, Some(&x5t), Some(HEX));
        assert_eq!(ok, Ok(()));
        let other = HEX.replace("ac", "ad");
        assert_eq!(
            check(CertificateBound::Allowed, Some(&x5t), Some(&other)),
            Err(CertificateProblem::Mismatch)
        );
        assert_eq!(
            check(CertificateBound::Allowed, Some(&x5t), None),
            Err(CertificateProblem::Missing)
        );
        assert_eq!(check(CertificateBound::Off, Some(&x5t), None), Ok(()));
        assert_eq!(check(CertificateBound::Allowed, None, None), Ok(()));
        assert_eq!(
            check(CertificateBound::Required, None, Some(HEX)),
            Err(CertificateProblem::Unbound)
        );
        assert_eq!(x5t_s256("zz"), None);
    }

    #[test]
    fn kong_refuses_what_it_cannot_check() {
        let json = |extra: &str| {
            format!(
                r#"{{"issuers":[{{"issuer":"x","audiences":"any","shared_secret":"0123456789abcdef0123456789abcdef","certificate_bound":"required"}}]{extra}}}"#
            )
        };
        let c = crate::config::Config::from_json(json("").as_bytes(), &|_| None).unwrap();
        assert!(c.check_host(true).is_ok());
        let e = c.check_host(false).unwrap_err().to_string();
        assert!(e.contains("issuers[0].certificate_bound"), "{e}");
        let xfcc = json(r#","client_certificate":{"source":"xfcc"}"#);
        let c = crate::config::Config::from_json(xfcc.as_bytes(), &|_| None).unwrap();
        assert!(c.check_host(false).is_ok());
    }

    #[test]
    fn xfcc_is_read_from_one_element_only() {
        let h = |v: &str| vec![("x-forwarded-client-cert".to_string(), v.to_string())];
        assert_eq!(
            xfcc_hash(&h(r#"By=spiffe://a;Hash=abc;Subject="CN=x,O=y;z""#)),
            Some("abc")
        );
        assert_eq!(xfcc_hash(&h("Hash=abc,Hash=def")), None, "two hops");
        assert_eq!(xfcc_hash(&h("Hash=abc;hash=def")), None);
        assert_eq!(xfcc_hash(&h("By=x")), None);
        let mut two = h("Hash=abc");
        two.extend(h("Hash=abc"));
        assert_eq!(xfcc_hash(&two), None);
    }
}
