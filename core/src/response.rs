//! Every denial, with its typed evidence and a stable reason code, and the one
//! exhaustive mapping from it to what the client sees (status,
//! `WWW-Authenticate` per RFC 6750 §3, a JSON body) and what the log says.
//! Strings are made here, when rendering, and nowhere earlier.

use std::fmt;

use serde::Deserialize;
use serde_json::json;

use crate::dpop::DpopProblem;
use crate::extract::ExtractError;
use crate::grant::GrantError;
use crate::jwks::KeyLookupError;
use crate::jwt::TokenError;
use crate::mtls::CertificateProblem;
use crate::policy::jsonrpc::BodyProblem;
use crate::policy::StepUp;
use crate::request::PathError;
use crate::wait::Bound;

/// Why a request was refused: a stable machine code for logs, metrics,
/// access logs and tests. Codes never change meaning once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    TokenMissing,
    RequestInvalid,
    TokenMalformed,
    TokenExpired,
    TokenNotYetValid,
    IssuerUnknown,
    AlgorithmNotAllowed,
    AudienceMismatch,
    LifetimeTooLong,
    KidUnknown,
    SignatureInvalid,
    ClaimUnusable,
    ClientUnknown,
    InsufficientScope,
    NoRule,
    PdpDenied,
    KeysUnavailable,
    PdpUnavailable,
    TokenInactive,
    IntrospectionUnavailable,
    UmaTicket,
    UmaUnavailable,
    ClientTokenUnavailable,
    Overloaded,
    DpopProofInvalid,
    DpopProofReplayed,
    DpopDowngrade,
    DpopUnbound,
    DpopKeyMismatch,
    DpopUnavailable,
    CertificateMissing,
    CertificateMismatch,
    CertificateUnbound,
    InsufficientUserAuthentication,
    BodyTooLarge,
    BodyInvalid,
    BodyTimeout,
    ExchangeRefused,
    ExchangeForbidden,
    ExchangeUnavailable,
    TokenRevoked,
}

impl Reason {
    /// Every reason, for metrics defined up front.
    pub const ALL: [Reason; 41] = [
        Reason::TokenMissing,
        Reason::RequestInvalid,
        Reason::TokenMalformed,
        Reason::TokenExpired,
        Reason::TokenNotYetValid,
        Reason::IssuerUnknown,
        Reason::AlgorithmNotAllowed,
        Reason::AudienceMismatch,
        Reason::LifetimeTooLong,
        Reason::KidUnknown,
        Reason::SignatureInvalid,
        Reason::ClaimUnusable,
        Reason::ClientUnknown,
        Reason::InsufficientScope,
        Reason::NoRule,
        Reason::PdpDenied,
        Reason::KeysUnavailable,
        Reason::PdpUnavailable,
        Reason::TokenInactive,
        Reason::IntrospectionUnavailable,
        Reason::UmaTicket,
        Reason::UmaUnavailable,
        Reason::ClientTokenUnavailable,
        Reason::Overloaded,
        Reason::DpopProofInvalid,
        Reason::DpopProofReplayed,
        Reason::DpopDowngrade,
        Reason::DpopUnbound,
        Reason::DpopKeyMismatch,
        Reason::DpopUnavailable,
        Reason::CertificateMissing,
        Reason::CertificateMismatch,
        Reason::CertificateUnbound,
        Reason::InsufficientUserAuthentication,
        Reason::BodyTooLarge,
        Reason::BodyInvalid,
        Reason::BodyTimeout,
        Reason::ExchangeRefused,
        Reason::ExchangeForbidden,
        Reason::ExchangeUnavailable,
        Reason::TokenRevoked,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::TokenMissing => "token_missing",
            Reason::RequestInvalid => "request_invalid",
            Reason::TokenMalformed => "token_malformed",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::IssuerUnknown => "issuer_unknown",
            Reason::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reason::AudienceMismatch => "audience_mismatch",
            Reason::LifetimeTooLong => "lifetime_too_long",
            Reason::KidUnknown => "kid_unknown",
            Reason::SignatureInvalid => "signature_invalid",
            Reason::ClaimUnusable => "claim_unusable",
            Reason::ClientUnknown => "client_unknown",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::NoRule => "no_rule",
            Reason::PdpDenied => "pdp_denied",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::PdpUnavailable => "pdp_unavailable",
            Reason::TokenInactive => "token_inactive",
            Reason::IntrospectionUnavailable => "introspection_unavailable",
            Reason::UmaTicket => "uma_ticket",
            Reason::UmaUnavailable => "uma_unavailable",
            Reason::ClientTokenUnavailable => "client_token_unavailable",
            Reason::Overloaded => "overloaded",
            Reason::DpopProofInvalid => "dpop_proof_invalid",
            Reason::DpopProofReplayed => "dpop_proof_replayed",
            Reason::DpopDowngrade => "dpop_downgrade",
            Reason::DpopUnbound => "dpop_unbound",
            Reason::DpopKeyMismatch => "dpop_key_mismatch",
            Reason::DpopUnavailable => "dpop_unavailable",
            Reason::CertificateMissing => "certificate_missing",
            Reason::CertificateMismatch => "certificate_mismatch",
            Reason::CertificateUnbound => "certificate_unbound",
            Reason::InsufficientUserAuthentication => "insufficient_user_authentication",
            Reason::BodyTooLarge => "body_too_large",
            Reason::BodyInvalid => "body_invalid",
            Reason::BodyTimeout => "body_timeout",
            Reason::ExchangeRefused => "exchange_refused",
            Reason::ExchangeForbidden => "exchange_forbidden",
            Reason::ExchangeUnavailable => "exchange_unavailable",
            Reason::TokenRevoked => "token_revoked",
        }
    }
}

#[cfg(test)]
impl Reason {
    /// Its place in [`Reason::ALL`]: a new reason does not compile (in the
    /// tests) until it has one, and a test checks that `ALL` holds it there.
    fn index(self) -> usize {
        match self {
            Reason::TokenMissing => 0,
            Reason::RequestInvalid => 1,
            Reason::TokenMalformed => 2,
            Reason::TokenExpired => 3,
            Reason::TokenNotYetValid => 4,
            Reason::IssuerUnknown => 5,
            Reason::AlgorithmNotAllowed => 6,
            Reason::AudienceMismatch => 7,
            Reason::LifetimeTooLong => 8,
            Reason::KidUnknown => 9,
            Reason::SignatureInvalid => 10,
            Reason::ClaimUnusable => 11,
            Reason::ClientUnknown => 12,
            Reason::InsufficientScope => 13,
            Reason::NoRule => 14,
            Reason::PdpDenied => 15,
            Reason::KeysUnavailable => 16,
            Reason::PdpUnavailable => 17,
            Reason::TokenInactive => 18,
            Reason::IntrospectionUnavailable => 19,
            Reason::UmaTicket => 20,
            Reason::UmaUnavailable => 21,
            Reason::ClientTokenUnavailable => 22,
            Reason::Overloaded => 23,
            Reason::DpopProofInvalid => 24,
            Reason::DpopProofReplayed => 25,
            Reason::DpopDowngrade => 26,
            Reason::DpopUnbound => 27,
            Reason::DpopKeyMismatch => 28,
            Reason::DpopUnavailable => 29,
            Reason::CertificateMissing => 30,
            Reason::CertificateMismatch => 31,
            Reason::CertificateUnbound => 32,
            Reason::InsufficientUserAuthentication => 33,
            Reason::BodyTooLarge => 34,
            Reason::BodyInvalid => 35,
            Reason::BodyTimeout => 36,
            Reason::ExchangeRefused => 37,
            Reason::ExchangeForbidden => 38,
            Reason::ExchangeUnavailable => 39,
            Reason::TokenRevoked => 40,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Why a token that was found cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenProblem {
    Jwt(TokenError),
    Claim(GrantError),
    /// Consumers are configured and this client is not among them.
    ClientUnknown,
    /// The introspection endpoint says the token is not active (RFC 7662
    /// §2.2): unknown, expired, revoked, or not for this server.
    Inactive,
    /// A certificate-bound token (RFC 8705) without its certificate.
    Certificate(CertificateProblem),
    /// Its subject or session was revoked after it was issued (a security
    /// event pushed to the receiver, or a deny entry in the fleet store).
    Revoked,
}

impl TokenProblem {
    fn reason(&self) -> Reason {
        match self {
            TokenProblem::Jwt(e) => match e {
                TokenError::Expired => Reason::TokenExpired,
                TokenError::NotYetValid | TokenError::IssuedInFuture => Reason::TokenNotYetValid,
                TokenError::UnknownIssuer(_) => Reason::IssuerUnknown,
                TokenError::UnsupportedAlg(_) | TokenError::AlgNotAllowed(_) => {
                    Reason::AlgorithmNotAllowed
                }
                TokenError::WrongAudience => Reason::AudienceMismatch,
                TokenError::LifetimeTooLong { .. } => Reason::LifetimeTooLong,
                TokenError::Key(KeyLookupError::UnknownKid(_)) => Reason::KidUnknown,
                TokenError::Key(KeyLookupError::AlgNotForKey { .. }) => Reason::AlgorithmNotAllowed,
                TokenError::Key(_) | TokenError::BadSignature | TokenError::Signature(_) => {
                    Reason::SignatureInvalid
                }
                TokenError::Malformed(_)
                | TokenError::MissingIssuer
                | TokenError::MissingExp
                | TokenError::NotAnAccessToken(_) => Reason::TokenMalformed,
            },
            TokenProblem::Claim(_) => Reason::ClaimUnusable,
            TokenProblem::ClientUnknown => Reason::ClientUnknown,
            TokenProblem::Inactive => Reason::TokenInactive,
            TokenProblem::Revoked => Reason::TokenRevoked,
            TokenProblem::Certificate(CertificateProblem::Missing) => Reason::CertificateMissing,
            TokenProblem::Certificate(CertificateProblem::Mismatch) => Reason::CertificateMismatch,
            TokenProblem::Certificate(CertificateProblem::Unbound) => Reason::CertificateUnbound,
        }
    }
}

impl fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenProblem::Jwt(e) => write!(f, "{e}"),
            TokenProblem::Claim(e) => write!(f, "{e}"),
            TokenProblem::ClientUnknown => write!(f, "unknown client"),
            TokenProblem::Inactive => write!(f, "the token is not active"),
            TokenProblem::Revoked => {
                write!(f, "the token's subject or session has been revoked")
            }
            TokenProblem::Certificate(e) => write!(f, "{e}"),
        }
    }
}

/// Why the request itself cannot be judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestProblem {
    Path(PathError),
    Token(ExtractError),
    /// The path must be normalised where an upstream OAuth rule is bound to
    /// Envoy's route or cluster: Envoy would route the normalised path again,
    /// after the rule was matched against the route of the path received.
    Rerouted,
}

impl fmt::Display for RequestProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestProblem::Path(e) => write!(f, "{e}"),
            RequestProblem::Token(e) => write!(f, "{e}"),
            RequestProblem::Rerouted => {
                f.write_str("path not in normal form where the gateway's token is bound to a route")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No credentials at all: a bare challenge, no error code (RFC 6750 §3.1).
    NoToken,
    /// The request itself is malformed (token twice, bad syntax, bad path).
    InvalidRequest(RequestProblem),
    InvalidToken(TokenProblem),
    InsufficientScope {
        rule: String,
        scopes: Vec<String>,
    },
    /// The token's authentication does not meet the rule's step-up (RFC
    /// 9470): 401 `insufficient_user_authentication` with `acr_values` and
    /// `max_age`, and `scope` when `scopes` (also missing) is not empty.
    StepUp {
        rule: String,
        step_up: StepUp,
        scopes: Vec<String>,
    },
    /// The JSON-RPC body a selector reads cannot be judged: answered with a
    /// JSON-RPC error body.
    Body(BodyProblem),
    /// Valid token, but no policy rule names this method and path.
    NoRule {
        method: String,
        path: String,
    },
    PdpDenied {
        method: String,
        path: String,
    },
    /// The issuer's keys cannot be had. `cause` is for the log only: it may
    /// name clusters and URLs the caller has no business knowing.
    KeysUnavailable {
        issuer: String,
        cause: String,
    },
    /// The policy decision point could not be used. `cause` is for the log only.
    PdpUnavailable {
        cause: String,
    },
    /// The issuer's introspection endpoint gave no usable answer. `cause`
    /// is for the log only.
    IntrospectionUnavailable {
        issuer: String,
        cause: String,
    },
    /// A UMA-protected resource without an RPT that covers the request: the
    /// permission ticket for the client to take to the authorization server
    /// (UMA 2.0 Grant §3.2). `why` says what was missing, for the log.
    UmaTicket {
        as_uri: String,
        ticket: String,
        resource_id: String,
        why: String,
    },
    /// No permission ticket could be had (the permission endpoint failed, or
    /// the PAT). `cause` is for the log only.
    UmaUnavailable {
        cause: String,
    },
    /// The gateway's own token (upstream OAuth) cannot be had. `cause` is
    /// for the log only.
    ClientTokenUnavailable {
        client: String,
        cause: String,
    },
    /// The authorization server refused to exchange the caller's token for
    /// upstream OAuth rule `rule` (RFC 8693): `invalid_request` or
    /// `invalid_grant`, the caller's token is not acceptable as a subject
    /// token (401).
    ExchangeRefused {
        rule: String,
        error: &'static str,
    },
    /// It refused the rule's audience or scope to this caller
    /// (`invalid_target`, `invalid_scope`: 403).
    ExchangeForbidden {
        rule: String,
        error: &'static str,
    },
    /// No exchanged token can be had (the server failed, or answered what
    /// the gateway cannot use). `cause` is for the log only.
    ExchangeUnavailable {
        rule: String,
        cause: String,
    },
    /// A bound on waiting or on callouts refused the request before any
    /// work (parked requests, callouts in flight, a callout budget): the
    /// caller may retry in a second.
    Overloaded {
        bound: Bound,
    },
    /// A DPoP-bound token without a good proof, a proof without a bound
    /// token, or a downgrade (RFC 9449). `algs` is what the challenge offers.
    Dpop {
        problem: DpopProblem,
        algs: String,
    },
}

impl crate::cache::Weigh for Denial {
    fn weight(&self) -> usize {
        std::mem::size_of::<Denial>().saturating_add(self.description().len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// How one denial goes on the wire. Every part of every answer (status,
/// reason, RFC 6750 code, challenge, `retry-after`, Gluu's message) comes
/// from [`Denial::wire`], one exhaustive match: a new denial cannot be
/// mapped in one place and forgotten in another.
struct Wire {
    reason: Reason,
    status: u32,
    /// The body's `error`, and the challenge's where it has one.
    error: &'static str,
    challenge: Challenge,
    retry_after: Option<&'static str>,
    /// What Gluu Gateway's plugins answered for this case; the description
    /// where Gluu had none.
    gluu_message: Option<&'static str>,
}

enum Challenge {
    None,
    /// `Bearer realm` alone: no credentials were sent (RFC 6750 §3.1).
    Bare,
    /// `Bearer realm, error, error_description` (and `scope` for scope).
    Bearer,
    /// UMA 2.0 Grant §3.2: `UMA realm, as_uri, ticket`.
    Uma,
    /// RFC 9449 §7.1: `DPoP realm, algs, error, error_description`.
    Dpop,
}

/// Gluu answered its outages 502 with this text (its spelling kept, as
/// clients may compare it); the status here stays 503.
const GLUU_OUTAGE: &str = "An unexpected error ocurred";

impl Denial {
    fn wire(&self) -> Wire {
        let wire = |reason, status, error, challenge, gluu_message| Wire {
            reason,
            status,
            error,
            challenge,
            retry_after: None,
            gluu_message,
        };
        let outage = |reason, retry_after| Wire {
            retry_after: Some(retry_after),
            ..wire(
                reason,
                503,
                "temporarily_unavailable",
                Challenge::None,
                Some(GLUU_OUTAGE),
            )
        };
        match self {
            Denial::NoToken => wire(
                Reason::TokenMissing,
                401,
                "unauthorized",
                Challenge::Bare,
                Some("Failed to get bearer token from Authorization header"),
            ),
            Denial::InvalidRequest(_) => wire(
                Reason::RequestInvalid,
                400,
                "invalid_request",
                Challenge::Bearer,
                None,
            ),
            Denial::InvalidToken(problem) => wire(
                problem.reason(),
                401,
                "invalid_token",
                Challenge::Bearer,
                match problem {
                    TokenProblem::Inactive | TokenProblem::Revoked => {
                        Some("Invalid access token provided in Authorization header")
                    }
                    TokenProblem::ClientUnknown => Some("Unknown consumer"),
                    TokenProblem::Jwt(_)
                    | TokenProblem::Claim(_)
                    | TokenProblem::Certificate(_) => None,
                },
            ),
            Denial::InsufficientScope { .. } => wire(
                Reason::InsufficientScope,
                403,
                "insufficient_scope",
                Challenge::Bearer,
                Some("You are not authorized to access this resource"),
            ),
            Denial::StepUp { .. } => wire(
                Reason::InsufficientUserAuthentication,
                401,
                "insufficient_user_authentication",
                Challenge::Bearer,
                None,
            ),
            Denial::Body(problem) => match problem {
                BodyProblem::TooLarge { .. } => wire(
                    Reason::BodyTooLarge,
                    413,
                    "invalid_request",
                    Challenge::None,
                    None,
                ),
                BodyProblem::TooSlow => wire(
                    Reason::BodyTimeout,
                    408,
                    "invalid_request",
                    Challenge::None,
                    None,
                ),
                BodyProblem::Encoded { .. } => wire(
                    Reason::BodyInvalid,
                    415,
                    "invalid_request",
                    Challenge::None,
                    None,
                ),
                BodyProblem::NotJson { .. }
                | BodyProblem::NotJsonRpc { .. }
                | BodyProblem::NoName { .. } => wire(
                    Reason::BodyInvalid,
                    400,
                    "invalid_request",
                    Challenge::None,
                    None,
                ),
            },
            Denial::NoRule { .. } => wire(
                Reason::NoRule,
                403,
                "forbidden",
                Challenge::None,
                Some("Unprotected path/method are not allowed"),
            ),
            Denial::PdpDenied { .. } => wire(
                Reason::PdpDenied,
                403,
                "forbidden",
                Challenge::None,
                Some("You are not authorized to access this resource"),
            ),
            Denial::UmaTicket { .. } => wire(
                Reason::UmaTicket,
                401,
                "uma_ticket",
                Challenge::Uma,
                Some("Unauthorized"),
            ),
            Denial::KeysUnavailable { .. } => outage(Reason::KeysUnavailable, "5"),
            Denial::PdpUnavailable { .. } => outage(Reason::PdpUnavailable, "5"),
            Denial::IntrospectionUnavailable { .. } => {
                outage(Reason::IntrospectionUnavailable, "5")
            }
            Denial::UmaUnavailable { .. } => outage(Reason::UmaUnavailable, "5"),
            Denial::ClientTokenUnavailable { .. } => outage(Reason::ClientTokenUnavailable, "5"),
            Denial::ExchangeRefused { .. } => wire(
                Reason::ExchangeRefused,
                401,
                "invalid_token",
                Challenge::Bearer,
                None,
            ),
            Denial::ExchangeForbidden { .. } => wire(
                Reason::ExchangeForbidden,
                403,
                "insufficient_scope",
                Challenge::Bearer,
                Some("You are not authorized to access this resource"),
            ),
            Denial::ExchangeUnavailable { .. } => outage(Reason::ExchangeUnavailable, "5"),
            // A bound refused it before any work: soon is fine.
            Denial::Overloaded { .. } => outage(Reason::Overloaded, "1"),
            Denial::Dpop { problem, .. } => {
                let reason = match problem {
                    DpopProblem::Replayed => Reason::DpopProofReplayed,
                    DpopProblem::Downgrade => Reason::DpopDowngrade,
                    DpopProblem::Unbound | DpopProblem::NotAccepted => Reason::DpopUnbound,
                    DpopProblem::KeyMismatch => Reason::DpopKeyMismatch,
                    DpopProblem::ReplayUnavailable => Reason::DpopUnavailable,
                    DpopProblem::NoProof
                    | DpopProblem::SeveralProofs
                    | DpopProblem::Malformed(_)
                    | DpopProblem::WrongType
                    | DpopProblem::AlgNotAllowed(_)
                    | DpopProblem::BadKey(_)
                    | DpopProblem::PrivateKey
                    | DpopProblem::BadSignature
                    | DpopProblem::MethodMismatch
                    | DpopProblem::UriMismatch
                    | DpopProblem::Stale
                    | DpopProblem::TokenHashMismatch => Reason::DpopProofInvalid,
                };
                match problem {
                    // Not the client's fault: a second later the slot has room.
                    DpopProblem::ReplayUnavailable => outage(reason, "1"),
                    p if p.is_token_problem() => {
                        wire(reason, 401, "invalid_token", Challenge::Dpop, None)
                    }
                    _ => wire(reason, 401, "invalid_dpop_proof", Challenge::Dpop, None),
                }
            }
        }
    }

    pub fn reason(&self) -> Reason {
        self.wire().reason
    }

    /// The stable reason code (see [`Reason::code`]).
    pub fn code(&self) -> &'static str {
        self.reason().code()
    }

    pub fn status(&self) -> u32 {
        self.wire().status
    }

    /// What the caller is told. Outages are described generically.
    pub fn description(&self) -> String {
        match self {
            Denial::NoToken => "an access token is required".into(),
            Denial::InvalidRequest(problem) => problem.to_string(),
            Denial::InvalidToken(problem) => problem.to_string(),
            Denial::InsufficientScope { rule, .. } => {
                format!("the token lacks the scopes this request needs (rule \"{rule}\")")
            }
            Denial::StepUp { rule, .. } => format!(
                "the token's authentication does not meet what this request needs (rule \"{rule}\"); authenticate again as the challenge says"
            ),
            Denial::Body(problem) => problem.to_string(),
            Denial::NoRule { method, path } => format!("no policy rule allows {method} {path}"),
            Denial::PdpDenied { method, path } => {
                format!("the policy decision point denied {method} {path}")
            }
            Denial::KeysUnavailable { .. } => {
                "the authorization server's signing keys are not available right now".into()
            }
            Denial::PdpUnavailable { .. } => {
                "the policy decision point is not available right now".into()
            }
            Denial::IntrospectionUnavailable { .. } => {
                "the authorization server cannot check this token right now".into()
            }
            Denial::UmaTicket { .. } => {
                "a requesting party token with permission for this resource is required; obtain one from the authorization server with the ticket".into()
            }
            Denial::UmaUnavailable { .. } => {
                "the authorization server cannot issue a permission ticket right now".into()
            }
            Denial::ClientTokenUnavailable { .. } => {
                "the gateway cannot obtain its credentials for the upstream right now".into()
            }
            Denial::ExchangeRefused { .. } => {
                "the authorization server does not accept this token for the upstream".into()
            }
            Denial::ExchangeForbidden { .. } => {
                "the authorization server does not issue this caller a token for the upstream"
                    .into()
            }
            Denial::ExchangeUnavailable { .. } => {
                "the gateway cannot obtain a token for the upstream right now".into()
            }
            Denial::Overloaded { .. } => {
                "too many requests are waiting for the authorization server; retry shortly".into()
            }
            Denial::Dpop { problem, .. } => problem.to_string(),
        }
    }

    /// `key=value` facts for the log line beyond the reason: never a token
    /// or a secret, only what the configuration and the server told us.
    pub fn log_fields(&self) -> Vec<(&'static str, String)> {
        match self {
            Denial::InsufficientScope { rule, .. } | Denial::StepUp { rule, .. } => {
                vec![("rule", rule.clone())]
            }
            Denial::Body(_) => vec![("detail", self.description())],
            Denial::KeysUnavailable { issuer, cause }
            | Denial::IntrospectionUnavailable { issuer, cause } => {
                vec![("issuer", issuer.clone()), ("cause", cause.clone())]
            }
            Denial::PdpUnavailable { cause } | Denial::UmaUnavailable { cause } => {
                vec![("cause", cause.clone())]
            }
            Denial::ClientTokenUnavailable { client, cause } => {
                vec![("client", client.clone()), ("cause", cause.clone())]
            }
            Denial::ExchangeRefused { rule, error } | Denial::ExchangeForbidden { rule, error } => {
                vec![("rule", rule.clone()), ("error", (*error).to_string())]
            }
            Denial::ExchangeUnavailable { rule, cause } => {
                vec![("rule", rule.clone()), ("cause", cause.clone())]
            }
            Denial::Overloaded { bound } => vec![("bound", bound.label().to_string())],
            // Never the ticket: it is the client's to redeem.
            Denial::UmaTicket {
                resource_id, why, ..
            } => vec![
                ("resource_id", resource_id.clone()),
                ("detail", why.clone()),
            ],
            Denial::NoToken
            | Denial::InvalidRequest(_)
            | Denial::InvalidToken(_)
            | Denial::NoRule { .. }
            | Denial::PdpDenied { .. }
            | Denial::Dpop { .. } => vec![("detail", self.description())],
        }
    }

    /// The local reply. `request_id` (Envoy's `x-request-id`), when known,
    /// goes in every body so a caller can quote it to the operator. `hints`
    /// are what the request's protected resource adds to the challenge.
    pub fn render(
        &self,
        realm: &str,
        hints: &ChallengeHints,
        request_id: Option<&str>,
        shape: ErrorBody,
    ) -> HttpResponse {
        let wire = self.wire();
        let description = self.description();
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(seconds) = wire.retry_after {
            headers.push(("retry-after".into(), seconds.into()));
        }
        let realm = quotable(realm);
        let challenge = match (&wire.challenge, self) {
            (Challenge::None, _) => None,
            (Challenge::Bare, _) => Some(format!("Bearer realm=\"{realm}\"")),
            (Challenge::Uma, Denial::UmaTicket { as_uri, ticket, .. }) => Some(format!(
                "UMA realm=\"{realm}\", as_uri=\"{}\", ticket=\"{}\"",
                quotable(as_uri),
                quotable(ticket)
            )),
            (Challenge::Dpop, _) => Some(format!(
                "DPoP realm=\"{realm}\", algs=\"{}\", error=\"{}\", error_description=\"{}\"",
                match self {
                    Denial::Dpop { algs, .. } => quotable(algs),
                    _ => String::new(),
                },
                wire.error,
                quotable(&description)
            )),
            (Challenge::Bearer | Challenge::Uma, _) => {
                let mut scope = match self {
                    Denial::InsufficientScope { scopes, .. } => {
                        format!(", scope=\"{}\"", quotable(&scopes.join(" ")))
                    }
                    _ => String::new(),
                };
                if let Denial::StepUp {
                    step_up, scopes, ..
                } = self
                {
                    // RFC 9470 §3: what the next authorization request asks for.
                    if !step_up.acr_values.is_empty() {
                        scope.push_str(&format!(
                            ", acr_values=\"{}\"",
                            quotable(&step_up.acr_values.join(" "))
                        ));
                    }
                    if let Some(max_age) = step_up.max_age {
                        scope.push_str(&format!(", max_age=\"{max_age}\""));
                    }
                    if !scopes.is_empty() {
                        scope.push_str(&format!(", scope=\"{}\"", quotable(&scopes.join(" "))));
                    }
                }
                Some(format!(
                    "Bearer realm=\"{realm}\", error=\"{}\", error_description=\"{}\"{scope}",
                    wire.error,
                    quotable(&description)
                ))
            }
        };
        // The scopes the request needs, for a client that has no token or
        // must get another (RFC 6750 §3): never beside a scope already said.
        let challenge = match (challenge, &hints.scope) {
            (Some(challenge), Some(scope))
                if wire.status == 401
                    && matches!(wire.challenge, Challenge::Bare | Challenge::Bearer)
                    && !scope.is_empty()
                    && !matches!(self, Denial::StepUp { scopes, .. } if !scopes.is_empty()) =>
            {
                Some(format!("{challenge}, scope=\"{}\"", quotable(scope)))
            }
            (challenge, _) => challenge,
        };
        let challenge = match (challenge, hints.resource_metadata) {
            (challenge, None) => challenge,
            (Some(challenge), Some(url)) => Some(format!(
                "{challenge}, resource_metadata=\"{}\"",
                quotable(url)
            )),
            (None, Some(url)) if matches!(wire.status, 401 | 403) => Some(format!(
                "Bearer realm=\"{realm}\", resource_metadata=\"{}\"",
                quotable(url)
            )),
            (None, Some(_)) => None,
        };
        if let Some(challenge) = challenge {
            headers.push(("www-authenticate".into(), challenge));
        }
        let mut body = serde_json::Map::new();
        if let Denial::Body(problem) = self {
            // A JSON-RPC client reads this shape; `id` is the offending
            // entry's when one was read.
            let id = problem
                .id()
                .and_then(|id| serde_json::from_str::<serde_json::Value>(id).ok())
                .unwrap_or(serde_json::Value::Null);
            let mut data = serde_json::Map::new();
            data.insert("reason".into(), json!(wire.reason.code()));
            if let Some(request_id) = request_id {
                data.insert("request_id".into(), json!(request_id));
            }
            let answer = json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {"code": problem.jsonrpc_code(), "message": description, "data": data},
            });
            return HttpResponse {
                status: wire.status,
                headers,
                body: answer.to_string().into_bytes(),
            };
        }
        if shape == ErrorBody::Kong {
            let message = wire.gluu_message.map_or(description, str::to_string);
            body.insert("message".into(), json!(message));
        } else {
            body.insert("error".into(), json!(wire.error));
            body.insert("error_description".into(), json!(description));
            body.insert("reason".into(), json!(wire.reason.code()));
            if let Denial::InsufficientScope { rule, scopes } = self {
                body.insert("scope".into(), json!(scopes.join(" ")));
                body.insert("rule".into(), json!(rule));
            }
            if let Denial::StepUp {
                rule,
                step_up,
                scopes,
            } = self
            {
                if !step_up.acr_values.is_empty() {
                    body.insert("acr_values".into(), json!(step_up.acr_values.join(" ")));
                }
                if let Some(max_age) = step_up.max_age {
                    body.insert("max_age".into(), json!(max_age));
                }
                if !scopes.is_empty() {
                    body.insert("scope".into(), json!(scopes.join(" ")));
                }
                body.insert("rule".into(), json!(rule));
            }
            if let Denial::UmaTicket { as_uri, ticket, .. } = self {
                body.insert("ticket".into(), json!(ticket));
                body.insert("as_uri".into(), json!(as_uri));
            }
        }
        if let Some(id) = request_id {
            body.insert("request_id".into(), json!(id));
        }
        HttpResponse {
            status: wire.status,
            headers,
            body: serde_json::Value::Object(body).to_string().into_bytes(),
        }
    }
}

/// What a protected resource (RFC 9728) adds to the challenges of the
/// requests on its paths; nothing elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChallengeHints<'a> {
    /// The resource's metadata URL (RFC 9728 §5.1): every challenge of a
    /// 401 or 403 names it, and a 403 that had none gets a bare `Bearer`
    /// one to carry it.
    pub resource_metadata: Option<&'a str>,
    /// The scopes the policy wants for this request (space-separated), for
    /// a 401's `Bearer` challenge: what a client without a usable token
    /// should ask for.
    pub scope: Option<String>,
}

/// The shape of denial bodies. Status codes and `WWW-Authenticate` are the
/// same in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorBody {
    /// `{"error", "error_description", "reason", …}`: RFC 6750's codes and
    /// the filter's reason.
    #[default]
    Rfc6750,
    /// `{"message": …}` as Kong (and so Gluu Gateway) answered, with Gluu's
    /// own messages where Gluu had the case, plus `request_id`.
    Kong,
}

/// The inside of an RFC 9110 §5.6.4 quoted-string: `\` and `"` escaped, so
/// the header says what the body says. Characters a header cannot carry
/// (controls, non-ASCII) become `?`; the JSON body keeps them.
fn quotable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn every_reason_is_listed_once_in_its_place() {
        for (place, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), place, "{reason}");
        }
        let codes: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
    }

    fn header<'r>(r: &'r HttpResponse, name: &str) -> Option<&'r str> {
        r.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn body(r: &HttpResponse) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn each_denial_has_its_status_challenge_body_and_code() {
        let r = Denial::NoToken.render("api", &ChallengeHints::default(), None, ErrorBody::Rfc6750);
        assert_eq!(
            (r.status, header(&r, "www-authenticate")),
            (401, Some("Bearer realm=\"api\""))
        );
        assert_eq!(body(&r)["reason"], "token_missing");

        let r = Denial::InvalidToken(TokenProblem::Jwt(TokenError::UnknownIssuer("x\"y".into())))
            .render(
                "api",
                &ChallengeHints::default(),
                Some("req-1"),
                ErrorBody::Rfc6750,
            );
        assert_eq!(r.status, 401);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"api\", error=\"invalid_token\", error_description=\"the token issuer \\\"x\\\"y\\\" is not trusted\"")
        );
        let b = body(&r);
        assert_eq!(
            (&b["error"], &b["reason"], &b["request_id"]),
            (
                &json!("invalid_token"),
                &json!("issuer_unknown"),
                &json!("req-1")
            )
        );
        assert_eq!(
            b["error_description"],
            "the token issuer \"x\"y\" is not trusted"
        );

        let r = Denial::InsufficientScope {
            rule: "GET /a".into(),
            scopes: vec!["read".into(), "otp".into()],
        }
        .render("api", &ChallengeHints::default(), None, ErrorBody::Rfc6750);
        assert_eq!(r.status, 403);
        assert!(header(&r, "www-authenticate")
            .unwrap()
            .ends_with(", scope=\"read otp\""));
        assert_eq!(body(&r)["rule"], "GET /a");

        let r = Denial::NoRule {
            method: "GET".into(),
            path: "/b".into(),
        }
        .render("api", &ChallengeHints::default(), None, ErrorBody::Rfc6750);
        assert_eq!((r.status, header(&r, "www-authenticate")), (403, None));
        assert_eq!(body(&r)["reason"], "no_rule");
    }

    #[test]
    fn on_a_protected_resource_every_401_and_403_names_its_metadata() {
        let hints = ChallengeHints {
            resource_metadata: Some("https://api.example/.well-known/oauth-protected-resource/mcp"),
            scope: None,
        };
        let www = |d: Denial| {
            let r = d.render("api", &hints, None, ErrorBody::Rfc6750);
            (r.status, header(&r, "www-authenticate").map(str::to_string))
        };
        let suffix =
            ", resource_metadata=\"https://api.example/.well-known/oauth-protected-resource/mcp\"";
        assert_eq!(
            www(Denial::NoToken),
            (401, Some(format!("Bearer realm=\"api\"{suffix}"))),
            "no error code for a missing token (RFC 6750 §3.1)"
        );
        let (status, challenge) = www(Denial::InsufficientScope {
            rule: "POST /mcp".into(),
            scopes: vec!["admin".into()],
        });
        assert_eq!(status, 403);
        assert!(challenge
            .unwrap()
            .ends_with(&format!("error=\"insufficient_scope\", error_description=\"the token lacks the scopes this request needs (rule \\\"POST /mcp\\\")\", scope=\"admin\"{suffix}")));
        let (status, challenge) = www(Denial::InvalidToken(TokenProblem::Jwt(
            TokenError::WrongAudience,
        )));
        assert_eq!(status, 401);
        assert!(challenge.unwrap().ends_with(suffix));
        assert_eq!(
            www(Denial::NoRule {
                method: "GET".into(),
                path: "/mcp/x".into()
            }),
            (403, Some(format!("Bearer realm=\"api\"{suffix}")))
        );
        let (_, challenge) = www(Denial::Dpop {
            problem: DpopProblem::NoProof,
            algs: "ES256".into(),
        });
        assert!(challenge
            .unwrap()
            .starts_with("DPoP realm=\"api\", algs=\"ES256\""));
        assert_eq!(
            www(Denial::PdpUnavailable { cause: "x".into() }),
            (503, None),
            "an outage is no challenge"
        );
        let hints = ChallengeHints {
            scope: Some("mcp:read".into()),
            ..hints
        };
        let www = |d: Denial| {
            let r = d.render("api", &hints, None, ErrorBody::Rfc6750);
            header(&r, "www-authenticate").map(str::to_string)
        };
        assert_eq!(
            www(Denial::NoToken),
            Some(format!("Bearer realm=\"api\", scope=\"mcp:read\"{suffix}"))
        );
        assert!(www(Denial::InvalidToken(TokenProblem::Inactive))
            .unwrap()
            .ends_with(&format!("scope=\"mcp:read\"{suffix}")));
        let insufficient = www(Denial::InsufficientScope {
            rule: "r".into(),
            scopes: vec!["admin".into()],
        })
        .unwrap();
        assert!(
            insufficient.contains("scope=\"admin\"") && !insufficient.contains("mcp:read"),
            "{insufficient}"
        );
    }

    #[test]
    fn outages_tell_the_caller_nothing_internal_and_the_log_everything() {
        let d = Denial::KeysUnavailable {
            issuer: "https://as".into(),
            cause: "JWKS fetch: callout could not be dispatched: BadArgument (cluster `authsever`)"
                .into(),
        };
        let r = d.render(
            "api",
            &ChallengeHints::default(),
            Some("abc"),
            ErrorBody::Rfc6750,
        );
        assert_eq!(r.status, 503);
        assert_eq!(header(&r, "retry-after"), Some("5"));
        let text = String::from_utf8(r.body.clone()).unwrap();
        assert!(
            !text.contains("authsever") && !text.contains("https://as"),
            "{text}"
        );
        assert_eq!(body(&r)["reason"], "keys_unavailable");
        assert_eq!(body(&r)["request_id"], "abc");
        let fields = d.log_fields();
        assert!(fields
            .iter()
            .any(|(k, v)| *k == "cause" && v.contains("authsever")));
        assert_eq!(
            Denial::PdpUnavailable { cause: "x".into() }.code(),
            "pdp_unavailable"
        );
    }

    #[test]
    fn token_errors_map_to_distinct_codes() {
        let code = |e: TokenError| Denial::InvalidToken(TokenProblem::Jwt(e)).code();
        assert_eq!(code(TokenError::Expired), "token_expired");
        assert_eq!(code(TokenError::NotYetValid), "token_not_yet_valid");
        assert_eq!(code(TokenError::WrongAudience), "audience_mismatch");
        assert_eq!(code(TokenError::BadSignature), "signature_invalid");
        assert_eq!(
            code(TokenError::Key(KeyLookupError::UnknownKid("k".into()))),
            "kid_unknown"
        );
        assert_eq!(code(TokenError::MissingExp), "token_malformed");
        assert_eq!(
            Denial::InvalidToken(TokenProblem::ClientUnknown).code(),
            "client_unknown"
        );
        let codes: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Reason::ALL.len(), "codes are distinct");
    }

    #[test]
    fn challenge_text_stays_within_the_quoted_string_grammar() {
        // A scope regex hint keeps its backslashes: `^orders:\d+$` is sent as
        // `^orders:\\d+$` and unquotes to what the body says.
        assert_eq!(quotable("a\"b\\c\u{e9}\n"), "a\\\"b\\\\c??");
        assert_eq!(quotable(r"^orders:\d+$"), r"^orders:\\d+$");
    }

    #[test]
    fn kong_bodies_carry_gluus_messages_and_keep_status_and_challenge() {
        let kong = |d: &Denial| {
            let r = d.render(
                "api",
                &ChallengeHints::default(),
                Some("r-1"),
                ErrorBody::Kong,
            );
            (
                r.status,
                body(&r),
                header(&r, "www-authenticate").map(str::to_string),
            )
        };
        let (status, b, www) = kong(&Denial::NoToken);
        assert_eq!(
            (status, www.as_deref()),
            (401, Some("Bearer realm=\"api\""))
        );
        assert_eq!(
            b,
            json!({"message": "Failed to get bearer token from Authorization header", "request_id": "r-1"})
        );
        let (status, b, www) = kong(&Denial::InsufficientScope {
            rule: "GET /a".into(),
            scopes: vec!["read".into()],
        });
        assert_eq!(
            (status, &b["message"]),
            (
                403,
                &json!("You are not authorized to access this resource")
            )
        );
        assert!(www.unwrap().contains("error=\"insufficient_scope\""));
        let (_, b, _) = kong(&Denial::NoRule {
            method: "GET".into(),
            path: "/b".into(),
        });
        assert_eq!(b["message"], "Unprotected path/method are not allowed");
        let (status, b, _) = kong(&Denial::InvalidToken(TokenProblem::Inactive));
        assert_eq!(
            (status, &b["message"]),
            (
                401,
                &json!("Invalid access token provided in Authorization header")
            )
        );
        let (status, b, _) = kong(&Denial::IntrospectionUnavailable {
            issuer: "i".into(),
            cause: "c".into(),
        });
        assert_eq!(
            (status, &b["message"]),
            (503, &json!("An unexpected error ocurred"))
        );
        let (_, b, _) = kong(&Denial::InvalidToken(TokenProblem::ClientUnknown));
        assert_eq!(b["message"], "Unknown consumer");
    }

    #[test]
    fn step_up_challenge_and_json_rpc_error_bodies() {
        let header = |r: &HttpResponse, name: &str| {
            r.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let denial = Denial::StepUp {
            rule: "GET /a".into(),
            step_up: StepUp {
                acr_values: vec!["urn:mfa".into(), "urn:hw".into()],
                max_age: Some(300),
            },
            scopes: vec!["read".into()],
        };
        let r = denial.render(
            "api",
            &ChallengeHints::default(),
            Some("r-1"),
            ErrorBody::Rfc6750,
        );
        assert_eq!(r.status, 401);
        assert_eq!(
            header(&r, "www-authenticate").unwrap(),
            "Bearer realm=\"api\", error=\"insufficient_user_authentication\", error_description=\"the token's authentication does not meet what this request needs (rule \\\"GET /a\\\"); authenticate again as the challenge says\", acr_values=\"urn:mfa urn:hw\", max_age=\"300\", scope=\"read\""
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["reason"], "insufficient_user_authentication");
        assert_eq!(body["acr_values"], "urn:mfa urn:hw");
        assert_eq!(body["max_age"], 300);
        // On a protected resource: its metadata URL added, the scope said once.
        let hints = ChallengeHints {
            resource_metadata: Some("https://api/.well-known/oauth-protected-resource"),
            scope: Some("read".into()),
        };
        let challenge = header(
            &denial.render("api", &hints, None, ErrorBody::Rfc6750),
            "www-authenticate",
        )
        .unwrap();
        assert_eq!(challenge.matches("scope=").count(), 1, "{challenge}");
        assert!(
            challenge.ends_with(
                ", scope=\"read\", resource_metadata=\"https://api/.well-known/oauth-protected-resource\""
            ),
            "{challenge}"
        );
        // Only max_age, no scope missing.
        let only_age = Denial::StepUp {
            rule: "GET /a".into(),
            step_up: StepUp {
                acr_values: vec![],
                max_age: Some(0),
            },
            scopes: vec![],
        };
        let challenge = header(
            &only_age.render("api", &ChallengeHints::default(), None, ErrorBody::Rfc6750),
            "www-authenticate",
        )
        .unwrap();
        assert!(
            challenge.ends_with("authenticate again as the challenge says\", max_age=\"0\""),
            "{challenge}"
        );
        // A body that is not JSON-RPC: a JSON-RPC error, with the entry's id.
        for (problem, status, code, id) in [
            (
                BodyProblem::TooLarge { max: 10 },
                413,
                -32600,
                serde_json::Value::Null,
            ),
            (
                BodyProblem::NotJson { error: "x".into() },
                400,
                -32700,
                serde_json::Value::Null,
            ),
            (
                BodyProblem::NotJsonRpc {
                    problem: "p".into(),
                    id: Some("\"q\"".into()),
                },
                400,
                -32600,
                serde_json::json!("q"),
            ),
            (
                BodyProblem::NoName {
                    method: "tools/call".into(),
                    member: "name",
                    id: Some("7".into()),
                },
                400,
                -32602,
                serde_json::json!(7),
            ),
            (
                BodyProblem::Encoded {
                    encoding: "gzip".into(),
                },
                415,
                -32600,
                serde_json::Value::Null,
            ),
            (BodyProblem::TooSlow, 408, -32600, serde_json::Value::Null),
        ] {
            for shape in [ErrorBody::Rfc6750, ErrorBody::Kong] {
                let r = Denial::Body(problem.clone()).render(
                    "api",
                    &ChallengeHints::default(),
                    Some("r-2"),
                    shape,
                );
                assert_eq!(r.status, status, "{problem:?}");
                assert_eq!(header(&r, "www-authenticate"), None);
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(body["jsonrpc"], "2.0");
                assert_eq!(body["id"], id, "{problem:?}");
                assert_eq!(body["error"]["code"], code, "{problem:?}");
                assert_eq!(body["error"]["data"]["request_id"], "r-2");
                assert!(body["error"]["message"].as_str().unwrap().len() > 5);
            }
        }
    }
}
