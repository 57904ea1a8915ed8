//! The request body a policy reads (JSON-RPC selectors, see
//! `policy/jsonrpc.rs`): its bounds as configured (`jsonrpc`), and what the
//! headers already tell before a byte of it is read.

use serde::Deserialize;

use crate::config_error::ConfigError;
use crate::policy::jsonrpc::BodyProblem;

/// The `jsonrpc` block as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBodyLimits {
    max_body_bytes: Option<usize>,
    body_timeout_seconds: Option<u64>,
}

/// How much of a body the filter reads, and for how long it waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// A body over this is refused (413); the filter holds at most this
    /// many bytes plus one chunk (in Envoy's buffer, not its own).
    pub max_body_bytes: usize,
    /// From the request's headers to its body's end; a slower body gets 408.
    /// A request that waited before (keys, introspection) keeps its first
    /// deadline if that comes sooner.
    pub body_timeout_seconds: u64,
}

/// Envoy's default per-connection buffer is 1 MiB; a bound above 16 MiB is
/// a mistake for a JSON-RPC call.
const MAX_BODY_BYTES: usize = 16 << 20;
const MAX_BODY_TIMEOUT_SECONDS: u64 = 300;

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            max_body_bytes: 64 << 10,
            body_timeout_seconds: 10,
        }
    }
}

impl BodyLimits {
    pub fn compile(raw: Option<RawBodyLimits>) -> Result<BodyLimits, ConfigError> {
        let defaults = BodyLimits::default();
        let raw = raw.unwrap_or_default();
        let max_body_bytes = raw.max_body_bytes.unwrap_or(defaults.max_body_bytes);
        if !(1..=MAX_BODY_BYTES).contains(&max_body_bytes) {
            return Err(ConfigError::new(
                "jsonrpc.max_body_bytes",
                format!("must be from 1 to {MAX_BODY_BYTES}"),
            ));
        }
        let body_timeout_seconds = raw
            .body_timeout_seconds
            .unwrap_or(defaults.body_timeout_seconds);
        if !(1..=MAX_BODY_TIMEOUT_SECONDS).contains(&body_timeout_seconds) {
            return Err(ConfigError::new(
                "jsonrpc.body_timeout_seconds",
                format!("must be from 1 to {MAX_BODY_TIMEOUT_SECONDS}"),
            ));
        }
        Ok(BodyLimits {
            max_body_bytes,
            body_timeout_seconds,
        })
    }

    /// What the headers already refuse: a `content-length` over the bound,
    /// or a `content-encoding` (the filter would judge other bytes than the
    /// upstream decodes).
    pub fn precheck(&self, headers: &[(String, String)]) -> Result<(), BodyProblem> {
        let over = |length: &str| {
            length
                .trim()
                .parse::<u64>()
                .is_ok_and(|n| usize::try_from(n).map_or(true, |n| n > self.max_body_bytes))
        };
        for (name, value) in headers {
            match name.as_str() {
                // Envoy refuses a malformed length before any filter.
                "content-length" if over(value) => {
                    return Err(BodyProblem::TooLarge {
                        max: self.max_body_bytes,
                    })
                }
                "content-encoding" if !value.trim().eq_ignore_ascii_case("identity") => {
                    return Err(BodyProblem::Encoded {
                        encoding: value.chars().take(64).collect(),
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn compile(json: &str) -> Result<BodyLimits, ConfigError> {
        BodyLimits::compile(Some(serde_json::from_str(json).unwrap()))
    }

    #[test]
    fn defaults_and_bounds_with_the_field_named() {
        assert_eq!(BodyLimits::compile(None).unwrap(), BodyLimits::default());
        assert_eq!(
            compile(r#"{"max_body_bytes": 100}"#)
                .unwrap()
                .max_body_bytes,
            100
        );
        for (json, field) in [
            (r#"{"max_body_bytes": 0}"#, "jsonrpc.max_body_bytes"),
            (r#"{"max_body_bytes": 99999999}"#, "jsonrpc.max_body_bytes"),
            (
                r#"{"body_timeout_seconds": 0}"#,
                "jsonrpc.body_timeout_seconds",
            ),
            (
                r#"{"body_timeout_seconds": 301}"#,
                "jsonrpc.body_timeout_seconds",
            ),
        ] {
            let error = compile(json).unwrap_err().to_string();
            assert!(error.contains(field), "{json}: {error}");
        }
        assert!(serde_json::from_str::<RawBodyLimits>(r#"{"max": 1}"#).is_err());
    }

    #[test]
    fn headers_refuse_before_the_body() {
        let limits = BodyLimits {
            max_body_bytes: 10,
            body_timeout_seconds: 1,
        };
        let h = |n: &str, v: &str| vec![(n.to_string(), v.to_string())];
        assert_eq!(limits.precheck(&h("content-length", "10")), Ok(()));
        assert_eq!(
            limits.precheck(&h("content-length", "11")),
            Err(BodyProblem::TooLarge { max: 10 })
        );
        assert_eq!(
            limits.precheck(&h("content-length", "99999999999999999999")),
            Ok(()),
            "not a u64: Envoy refuses it first"
        );
        assert_eq!(limits.precheck(&h("content-encoding", "identity")), Ok(()));
        assert!(matches!(
            limits.precheck(&h("content-encoding", "gzip")),
            Err(BodyProblem::Encoded { .. })
        ));
    }
}
