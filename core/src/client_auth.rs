//! How the gateway authenticates itself to the authorization server, as a
//! client (RFC 6749 §2.3): client_secret_basic, client_secret_post or
//! private_key_jwt (RFC 7523). Shared by introspection and the token client;
//! secrets and private keys live only here and in the callouts.

use std::fmt;
use std::rc::Rc;

use ct_codecs::{Base64, Base64UrlSafeNoPadding, Decoder as _, Encoder as _};
use ed25519_compact as ed25519;
use p256::ecdsa::signature::Signer as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cache::{digest, Digest};
use crate::callout::{form_urlencode, Callout, Url};
use crate::config_error::ConfigError;
use crate::services::{Random, RandomError};

/// How long a client assertion (RFC 7523) is valid after it is signed.
pub const ASSERTION_LIFETIME_SECONDS: u64 = 60;
/// The client assertion type of RFC 7523 §2.2.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
}

/// A JWK given as JSON text (`private_key_env`, or `private_key` as a
/// string). The error never quotes the text.
fn parse_jwk(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|_| "is not the JSON text of a private JWK".to_string())
}

/// The client secret of `client_secret_basic` and `client_secret_post`.
fn client_secret(
    secret: Option<String>,
    secret_env: Option<String>,
    field: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let secret = match (secret, secret_env) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                field,
                "give only one of `client_secret` and `client_secret_env`",
            ))
        }
        (Some(secret), None) => secret,
        (None, Some(name)) => env(&name).ok_or_else(|| {
            ConfigError::new(
                format!("{field}.client_secret_env"),
                format!("the environment variable {name:?} is not set for the filter (on Envoy, list it in vm_config.environment_variables.host_env_keys)"),
            )
        })?,
        (None, None) => {
            return Err(ConfigError::new(
                field,
                "needs the client secret: `client_secret` or `client_secret_env`",
            ))
        }
    };
    if secret.is_empty() {
        return Err(ConfigError::new(
            format!("{field}.client_secret"),
            "must not be empty",
        ));
    }
    Ok(secret)
}

/// How the gateway authenticates to an endpoint of the authorization server. The secret
/// (or private key) lives only here and in the callout; `Debug` never shows
/// it.
#[derive(Clone)]
pub struct ClientAuth(Method);

#[derive(Clone)]
enum Method {
    /// The whole `Authorization: Basic …` value (RFC 6749 §2.3.1).
    Basic(String),
    Post {
        client_id: String,
        secret: String,
    },
    /// RFC 7523 §2.2: a JWT signed with this key for each callout.
    PrivateKeyJwt {
        client_id: String,
        key: Rc<AssertionKey>,
    },
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Method::Basic(_) => f.write_str("Basic(<secret>)"),
            Method::Post { client_id, .. } => write!(f, "Post({client_id}, <secret>)"),
            Method::PrivateKeyJwt { client_id, key } => {
                write!(f, "PrivateKeyJwt({client_id}, {key:?})")
            }
        }
    }
}

#[derive(Clone)]
enum SigningKey {
    Es256(p256::ecdsa::SigningKey),
    EdDsa(ed25519::KeyPair),
}

/// The private key that signs client assertions, with the `kid` of its JWK.
#[derive(Clone)]
pub struct AssertionKey {
    key: SigningKey,
    kid: Option<String>,
}

impl fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private key, not even in a test failure.
        write!(f, "{} key {:?} <private>", self.alg(), self.kid)
    }
}

impl AssertionKey {
    /// A private JWK: EC P-256 (ES256) or OKP Ed25519 (EdDSA), with `d` and
    /// the public part that goes with it. Errors never quote key material.
    pub fn from_jwk(jwk: &Value) -> Result<AssertionKey, String> {
        let Value::Object(jwk) = jwk else {
            return Err("must be a private JWK: a JSON object".into());
        };
        let text = |name: &str| -> Result<Option<&str>, String> {
            match jwk.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(format!("the JWK's `{name}` must be a string")),
            }
        };
        let bytes = |name: &str, len: usize| -> Result<Vec<u8>, String> {
            let value = text(name)?.ok_or_else(|| {
                format!("the JWK has no `{name}` (a private key needs `d` and its public part)")
            })?;
            let decoded = Base64UrlSafeNoPadding::decode_to_vec(value, None)
                .map_err(|_| format!("the JWK's `{name}` is not base64url"))?;
            if decoded.len() != len {
                return Err(format!(
                    "the JWK's `{name}` must be {len} bytes, not {}",
                    decoded.len()
                ));
            }
            Ok(decoded)
        };
        if let Some(usage) = text("use")? {
            if usage != "sig" {
                return Err(format!("the JWK is for `use: {usage:?}`, not `sig`"));
            }
        }
        let kty = text("kty")?.ok_or("the JWK has no `kty`")?;
        let crv = text("crv")?;
        let (key, alg) = match (kty, crv) {
            ("EC", Some("P-256")) => {
                let d = bytes("d", 32)?;
                let key = p256::ecdsa::SigningKey::from_slice(&d)
                    .map_err(|_| "the JWK's `d` is not a P-256 private key".to_string())?;
                let point = key.verifying_key().to_sec1_point(false);
                let mut public = bytes("x", 32)?;
                public.extend(bytes("y", 32)?);
                if point.as_bytes().get(1..) != Some(public.as_slice()) {
                    return Err("the JWK's `x` and `y` are not the public key of its `d`".into());
                }
                (SigningKey::Es256(key), "ES256")
            }
            ("OKP", Some("Ed25519")) => {
                let seed = ed25519::Seed::from_slice(&bytes("d", 32)?)
                    .map_err(|_| "the JWK's `d` is not an Ed25519 private key".to_string())?;
                let pair = ed25519::KeyPair::from_seed(seed);
                if pair.pk.as_slice() != bytes("x", 32)?.as_slice() {
                    return Err("the JWK's `x` is not the public key of its `d`".into());
                }
                (SigningKey::EdDsa(pair), "EdDSA")
            }
            ("RSA", _) => {
                return Err(
                    "RSA keys are not supported for private_key_jwt; use an EC P-256 (ES256) or OKP Ed25519 (EdDSA) key"
                        .into(),
                )
            }
            (kty, crv) => {
                return Err(format!(
                    "kty {kty:?} with crv {crv:?} is not supported; use EC P-256 (ES256) or OKP Ed25519 (EdDSA)"
                ))
            }
        };
        if let Some(declared) = text("alg")? {
            if declared != alg {
                return Err(format!(
                    "the JWK says alg {declared:?}, but its key signs {alg}"
                ));
            }
        }
        let kid = text("kid")?.map(str::to_string);
        Ok(AssertionKey { key, kid })
    }

    pub fn alg(&self) -> &'static str {
        match self.key {
            SigningKey::Es256(_) => "ES256",
            SigningKey::EdDsa(_) => "EdDSA",
        }
    }

    fn sign(&self, input: &[u8]) -> Result<Vec<u8>, AssertionError> {
        match &self.key {
            SigningKey::Es256(key) => {
                let signature: p256::ecdsa::Signature =
                    key.try_sign(input).map_err(|_| AssertionError::Signing)?;
                Ok(signature.to_bytes().to_vec())
            }
            // No noise: deterministic (RFC 8032), like RFC 6979 for ES256.
            SigningKey::EdDsa(pair) => Ok(pair.sk.sign(input, None).to_vec()),
        }
    }

    /// A client assertion (RFC 7523 §3): `iss` and `sub` the client,
    /// `aud` the endpoint, valid for [`ASSERTION_LIFETIME_SECONDS`] from
    /// `now`, with a `jti` of 16 random bytes. No random bytes, no assertion.
    pub fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        now: u64,
        random: &dyn Random,
    ) -> Result<String, AssertionError> {
        let mut nonce = [0u8; 16];
        random.fill(&mut nonce).map_err(AssertionError::Random)?;
        let jti: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let mut header = json!({"alg": self.alg(), "typ": "JWT"});
        if let (Some(kid), Value::Object(header)) = (&self.kid, &mut header) {
            header.insert("kid".into(), Value::from(kid.as_str()));
        }
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "iat": now,
            "exp": now.saturating_add(ASSERTION_LIFETIME_SECONDS),
            "jti": jti,
        });
        let encode = |bytes: &[u8]| {
            Base64UrlSafeNoPadding::encode_to_string(bytes).map_err(|_| AssertionError::Signing)
        };
        let input = format!(
            "{}.{}",
            encode(header.to_string().as_bytes())?,
            encode(claims.to_string().as_bytes())?
        );
        let signature = encode(&self.sign(input.as_bytes())?)?;
        Ok(format!("{input}.{signature}"))
    }
}

/// Why no request to the authorization server could be made: a 503, never
/// a request without proper client authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssertionError {
    Random(RandomError),
    Signing,
}

impl fmt::Display for AssertionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssertionError::Random(e) => write!(f, "no client assertion (its jti needs them): {e}"),
            AssertionError::Signing => f.write_str("the client assertion could not be signed"),
        }
    }
}
/// The client credentials as configured, before they are checked.
pub struct RawCredentials {
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_secret_env: Option<String>,
    /// A private JWK (an object, or its JSON text), for `private_key_jwt`.
    pub private_key: Option<Value>,
    /// The environment variable holding the private JWK's JSON text.
    pub private_key_env: Option<String>,
    pub auth_method: AuthMethod,
}

impl ClientAuth {
    /// Checks the credentials of the config object at `field`; `env` reads
    /// the filter's environment variables.
    pub fn compile(
        raw: RawCredentials,
        field: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ClientAuth, ConfigError> {
        let f = |name: &str| format!("{field}.{name}");
        if raw.client_id.is_empty() || raw.client_id.chars().any(char::is_control) {
            return Err(ConfigError::new(
                f("client_id"),
                "must be non-empty text without control characters",
            ));
        }
        let method = match raw.auth_method {
            AuthMethod::PrivateKeyJwt => {
                if raw.client_secret.is_some() || raw.client_secret_env.is_some() {
                    return Err(ConfigError::new(
                        field,
                        "private_key_jwt signs with `private_key` (or `private_key_env`); leave out `client_secret` and `client_secret_env`",
                    ));
                }
                let (jwk, key_field) = match (raw.private_key, raw.private_key_env) {
                    (Some(_), Some(_)) => {
                        return Err(ConfigError::new(
                            field,
                            "give only one of `private_key` and `private_key_env`",
                        ))
                    }
                    (Some(Value::String(text)), None) => (parse_jwk(&text), f("private_key")),
                    (Some(jwk), None) => (Ok(jwk), f("private_key")),
                    (None, Some(name)) => {
                        let text = env(&name).ok_or_else(|| {
                            ConfigError::new(
                                f("private_key_env"),
                                format!("the environment variable {name:?} is not set for the filter (on Envoy, list it in vm_config.environment_variables.host_env_keys)"),
                            )
                        })?;
                        (parse_jwk(&text), f("private_key_env"))
                    }
                    (None, None) => {
                        return Err(ConfigError::new(
                            f("private_key"),
                            "is required with `auth_method: \"private_key_jwt\"`: a private JWK (EC P-256 or OKP Ed25519, with `d`), or `private_key_env`",
                        ))
                    }
                };
                let key = jwk
                    .and_then(|jwk| AssertionKey::from_jwk(&jwk))
                    .map_err(|e| ConfigError::new(key_field, e))?;
                Method::PrivateKeyJwt {
                    client_id: raw.client_id,
                    key: Rc::new(key),
                }
            }
            method => {
                if raw.private_key.is_some() || raw.private_key_env.is_some() {
                    return Err(ConfigError::new(
                        f("auth_method"),
                        "must be \"private_key_jwt\" when a `private_key` or `private_key_env` is given",
                    ));
                }
                let secret = client_secret(raw.client_secret, raw.client_secret_env, field, env)?;
                if method == AuthMethod::ClientSecretBasic {
                    let pair = format!(
                        "{}:{}",
                        form_urlencode(&raw.client_id),
                        form_urlencode(&secret)
                    );
                    let encoded = Base64::encode_to_string(pair)
                        .map_err(|e| ConfigError::new(f("client_secret"), e.to_string()))?;
                    Method::Basic(format!("Basic {encoded}"))
                } else {
                    Method::Post {
                        client_id: raw.client_id,
                        secret,
                    }
                }
            }
        };
        Ok(ClientAuth(method))
    }

    /// Names these credentials among others (the method, the client, and the
    /// secret or the public key), e.g. so that two configurations naming the
    /// same client with different credentials never share a token. A digest:
    /// the secret itself is not in it.
    pub fn fingerprint(&self) -> Digest {
        match &self.0 {
            Method::Basic(value) => digest(&[b"client_secret_basic", value.as_bytes()]),
            Method::Post { client_id, secret } => digest(&[
                b"client_secret_post",
                client_id.as_bytes(),
                secret.as_bytes(),
            ]),
            Method::PrivateKeyJwt { client_id, key } => {
                let public = match &key.key {
                    SigningKey::Es256(k) => {
                        k.verifying_key().to_sec1_point(false).as_bytes().to_vec()
                    }
                    SigningKey::EdDsa(pair) => pair.pk.as_slice().to_vec(),
                };
                digest(&[
                    b"private_key_jwt",
                    client_id.as_bytes(),
                    key.kid.as_deref().unwrap_or_default().as_bytes(),
                    &public,
                ])
            }
        }
    }

    /// A form POST of `fields` to `endpoint`, authenticated as this client,
    /// sent to `upstream` (with `authority` instead of the endpoint's, if
    /// given). With `private_key_jwt`, a fresh client assertion signed at
    /// `now` with a jti from `random` (servers such as oidc-provider refuse
    /// a jti they have seen).
    #[allow(clippy::too_many_arguments)]
    pub fn form_post(
        &self,
        upstream: &str,
        endpoint: &Url,
        authority: Option<&str>,
        fields: &[(&str, &str)],
        timeout_ms: u64,
        now: u64,
        random: &dyn Random,
    ) -> Result<Callout, AssertionError> {
        let mut fields = fields.to_vec();
        let assertion;
        match &self.0 {
            Method::Basic(_) => {}
            Method::Post { client_id, secret } => {
                fields.push(("client_id", client_id));
                fields.push(("client_secret", secret));
            }
            Method::PrivateKeyJwt { client_id, key } => {
                // The endpoint as configured or discovered, before any
                // `authority` override: the URL the server knows itself by.
                let audience = format!(
                    "{}://{}{}",
                    endpoint.scheme, endpoint.authority, endpoint.path
                );
                assertion = key.assertion(client_id, &audience, now, random)?;
                fields.push(("client_id", client_id));
                fields.push(("client_assertion_type", JWT_BEARER));
                fields.push(("client_assertion", &assertion));
            }
        }
        let mut url = endpoint.clone();
        if let Some(authority) = authority {
            url.authority = authority.to_string();
        }
        let mut callout = Callout::post_form(upstream, url, &fields, timeout_ms);
        if let Method::Basic(value) = &self.0 {
            callout
                .headers
                .push(("authorization".to_string(), value.clone()));
        }
        Ok(callout)
    }
}
