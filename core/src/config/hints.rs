//! Unknown fields, all at once: before serde (which stops at the first),
//! every unknown top-level field is reported with a hint (where a Gluu field
//! goes, or the closest known name), together with every problem of the
//! `gluu` block, so a pasted configuration is fixed in one round. Deeper
//! down, serde's first error names its place ([`located`]).

use serde_json::Value;

use super::located;
use super::raw::RawConfig;
use crate::config_error::ConfigError;
use crate::gluu;

/// The top-level fields of [`RawConfig`] plus `gluu` (merged away before
/// serde sees the document).
const TOP_FIELDS: &[&str] = &[
    "realm",
    "log_level",
    "issuers",
    "clock_skew_seconds",
    "max_lifetime_seconds",
    "require_exp",
    "token_sources",
    "forward",
    "token_cache_entries",
    "token_cache_bytes",
    "rejected_cache_bytes",
    "shared_data",
    "waits",
    "jsonrpc",
    "crypto",
    "introspection_cache_bytes",
    "introspection_cache_entry_bytes",
    "policy",
    "deny_by_default",
    "public_paths",
    "scope_claims",
    "identity_headers",
    "consumers",
    "allow_unregistered_clients",
    "anonymous",
    "pdp",
    "clients",
    "upstream_oauth",
    "uma",
    "error_body",
    "dpop",
    "client_certificate",
    "resources",
    "revocation",
    "fleet_cache",
    "gluu",
];

/// Before serde: every unknown top-level field (with a hint) and every
/// problem of the `gluu` block at once, then the block merged into the
/// document's own fields.
pub(super) fn prepare(document: Value) -> Result<(RawConfig, Vec<String>), ConfigError> {
    let Value::Object(mut doc) = document else {
        return Err(ConfigError::new(
            "",
            "the configuration must be a JSON object",
        ));
    };
    let mut errors: Vec<ConfigError> = doc
        .keys()
        .filter(|k| !TOP_FIELDS.contains(&k.as_str()))
        .map(|k| ConfigError::new(k.as_str(), gluu::top_level_hint(k, TOP_FIELDS)))
        .collect();
    let notes = match gluu::merge(&mut doc) {
        Ok(notes) => notes,
        Err(more) => {
            errors.extend(more);
            Vec::new()
        }
    };
    if let Some(e) = ConfigError::many(errors) {
        return Err(e);
    }
    let raw = located::from_value(Value::Object(doc))?;
    Ok((raw, notes))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::tests::err;

    #[test]
    fn the_top_level_field_list_is_serdes() {
        // serde names its fields in the unknown-field error: the pre-pass
        // list must be exactly those plus `gluu`.
        let e = match serde_json::from_str::<RawConfig>(r#"{"zz":1}"#) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        };
        let listed: Vec<&str> = e.split('`').skip(3).step_by(2).collect();
        let mut expected: Vec<&str> = TOP_FIELDS
            .iter()
            .copied()
            .filter(|f| *f != "gluu")
            .collect();
        let mut listed = listed;
        listed.sort_unstable();
        expected.sort_unstable();
        assert_eq!(listed, expected, "{e}");
    }

    #[test]
    fn unknown_fields_are_reported_together_with_hints() {
        let e = err(
            r#"{"oxd_id":"x","oauth_scope_expression":"[]","pass_credentials":"hide","realmm":"a",
                "gluu":{"upstream":"as","gluu-oauth-auth":{"op_url":"https://op","consumer_mapping":false,"bogus":1},"extra":2}}"#,
        );
        for expected in [
            "6 problems",
            "`oxd_id`: unknown field `oxd_id`; `oxd_id` only served oxd: put the Gluu plugin config inside `gluu`",
            "`oauth_scope_expression`: unknown field `oauth_scope_expression`; `oauth_scope_expression` goes under `policy` or inside `gluu`",
            "`pass_credentials`: unknown field `pass_credentials`; `pass_credentials` is `forward.hide_credentials`",
            "`realmm`: unknown field `realmm`; did you mean `realm`?",
            "`gluu.gluu-oauth-auth.bogus`: unknown field",
            "`gluu.extra`: unknown field",
        ] {
            assert!(e.contains(expected), "{expected}\n in {e}");
        }
    }
}
