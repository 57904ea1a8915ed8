//! The decision core of oauth-pep: everything that decides, nothing that does I/O.
//!
//! This crate never names proxy-wasm. The filter glue feeds it request facts, the
//! time and callout replies, and executes what it returns, so every rule here is
//! testable natively and under wasm-bindgen-test.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented,
        clippy::string_slice
    )
)]

pub mod alg;
pub mod body;
pub mod budget;
pub mod cache;
pub mod callout;
pub mod client_auth;
pub mod config;
pub mod config_error;
pub mod consumer;
pub mod dpop;
pub mod ed25519;
pub mod engine;
pub mod es256;
pub mod etcd;
pub mod exchange;
pub mod extract;
pub mod fleet_cache;
pub mod flight;
pub mod gluu;
pub mod grant;
pub mod headers;
pub mod introspection;
pub mod introspection_jwt;
pub mod issuer;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod metrics;
pub mod mtls;
pub mod pdp;
pub mod policy;
pub mod request;
pub mod resource;
pub mod response;
pub mod revocation;
pub mod rsa;
pub mod sealed;
pub mod services;
pub mod shared_cache;
pub mod token_client;
pub mod uma;
pub mod upstream_oauth;
pub mod verify;
pub mod wait;

#[cfg(test)]
mod robustness;
