//! The `gluu` block: a Gluu Gateway user's plugin configurations
//! (gluu-oauth-auth, gluu-oauth-pep, gluu-uma-auth, gluu-uma-pep) taken as
//! they are, pasted from Kong's admin API or keyed by plugin name, and
//! rewritten into this filter's own fields before the configuration is
//! parsed. So a Gluu configuration runs through the same code as any other
//! (issuers, keys, caches, policy, metrics), and everything it does can be
//! written without the block too. What Gluu got from oxd (the cluster to the
//! authorization server, credentials for introspection) is asked for here.
//!
//! Every problem of the block is collected, not only the first: a pasted
//! configuration is fixed in one round.

use serde_json::{json, Map, Value};

use crate::config_error::ConfigError;

const OAUTH_AUTH: &str = "gluu-oauth-auth";
const OAUTH_PEP: &str = "gluu-oauth-pep";
const UMA_AUTH: &str = "gluu-uma-auth";
const UMA_PEP: &str = "gluu-uma-pep";
pub const PLUGINS: [&str; 4] = [OAUTH_AUTH, OAUTH_PEP, UMA_AUTH, UMA_PEP];

/// The block's own fields besides the plugin names.
pub const BLOCK_FIELDS: [&str; 6] = [
    "upstream",
    "audiences",
    "introspection",
    "consumers",
    "uma_resources",
    "plugins",
];

/// Fields that configured oxd, the middleware Gluu called for discovery,
/// keys, introspection and UMA; this filter makes those calls itself.
const OXD_FIELDS: [&str; 4] = ["oxd_id", "oxd_url", "client_id", "client_secret"];

/// Fields of the auth plugins across Gluu Gateway 3.x and 4.x schemas
/// (`hide_credentials` is 3.x's form of `pass_credentials: hide`).
const AUTH_FIELDS: [&str; 5] = [
    "op_url",
    "anonymous",
    "pass_credentials",
    "consumer_mapping",
    "custom_headers",
];
const AUTH_FIELDS_OLD: [&str; 1] = ["hide_credentials"];
const OAUTH_PEP_FIELDS: [&str; 4] = [
    "op_url",
    "deny_by_default",
    "oauth_scope_expression",
    "method_path_tree",
];
/// `redirect_claim_gatering_url` and `pct_id_token_jwt` are 3.x spellings.
const UMA_PEP_FIELDS: [&str; 10] = [
    "op_url",
    "deny_by_default",
    "uma_scope_expression",
    "method_path_tree",
    "require_id_token",
    "obtain_rpt",
    "claims_redirect_path",
    "redirect_claim_gathering_url",
    "redirect_claim_gatering_url",
    "pct_id_token_jwt",
];

/// Fields of a plugin object as Kong's admin API returns it, besides `name`
/// and `config`: scoping and bookkeeping that have no meaning inside one
/// filter configuration (Envoy's routes choose where it applies).
const KONG_OBJECT_FIELDS: [&str; 12] = [
    "id",
    "name",
    "config",
    "route",
    "service",
    "consumer",
    "created_at",
    "updated_at",
    "enabled",
    "protocols",
    "tags",
    "run_on",
];

/// The client that gets the UMA protection API token (PAT) in `clients`.
pub const PAT_CLIENT: &str = "gluu-pat";

fn known_fields(plugin: &str) -> Vec<&'static str> {
    let mut fields: Vec<&'static str> = OXD_FIELDS.to_vec();
    match plugin {
        OAUTH_AUTH | UMA_AUTH => {
            fields.extend(AUTH_FIELDS);
            fields.extend(AUTH_FIELDS_OLD);
        }
        OAUTH_PEP => fields.extend(OAUTH_PEP_FIELDS),
        _ => fields.extend(UMA_PEP_FIELDS),
    }
    fields
}

/// A hint for an unknown field of the document's top level: where a Gluu
/// field goes, else the closest known field.
pub fn top_level_hint(field: &str, known: &[&str]) -> String {
    format!("unknown field `{field}`{}", top_level_tail(field, known))
}

fn top_level_tail(field: &str, known: &[&str]) -> String {
    if OXD_FIELDS.contains(&field) {
        return format!(
            "; `{field}` only served oxd: put the Gluu plugin config inside `gluu` (e.g. `\"gluu\": {{\"{OAUTH_AUTH}\": {{…}}}}`)"
        );
    }
    match field {
        "oauth_scope_expression" => {
            return "; `oauth_scope_expression` goes under `policy` or inside `gluu`"
                .into()
        }
        "uma_scope_expression" => {
            return "; `uma_scope_expression` goes under `uma.resources[].policy` or inside `gluu`".into()
        }
        "pass_credentials" => {
            return "; `pass_credentials` is `forward.hide_credentials` / `forward.phantom_token_header`, or goes inside `gluu`".into()
        }
        "op_url" => {
            return "; `op_url` is `issuers[].issuer` with `discovery: true`, or goes inside `gluu`".into()
        }
        "hide_credentials" => {
            return "; `hide_credentials` goes under `forward`".into()
        }
        "consumer_mapping" | "custom_headers" | "method_path_tree" | "obtain_rpt"
        | "require_id_token" | "claims_redirect_path" | "redirect_claim_gathering_url" => {
            return format!("; `{field}` is a Gluu plugin field: it goes inside `gluu`")
        }
        "name" | "config" | "data" => {
            return format!("; a Kong plugin object (`{field}`) goes inside `gluu.plugins`")
        }
        _ => {}
    }
    if PLUGINS.contains(&field) {
        return format!("; the `{field}` plugin config goes inside `gluu`");
    }
    closest_tail(field, known)
}

/// "unknown field", with the nearest known name when one is near, else the
/// known ones (as serde words it).
pub fn closest(field: &str, known: &[&str]) -> String {
    format!("unknown field `{field}`{}", closest_tail(field, known))
}

fn closest_tail(field: &str, known: &[&str]) -> String {
    let best = known
        .iter()
        .map(|k| (distance(field, k), *k))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, k)) if d <= 2 || (d <= 4 && field.len() > 8) => {
            format!("; did you mean `{k}`?")
        }
        _ => format!(
            ", expected one of {}",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Levenshtein distance over chars (field names are short).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row.first().copied().unwrap_or(0);
        if let Some(first) = row.first_mut() {
            *first = i + 1;
        }
        for (j, cb) in b.iter().enumerate() {
            let above = row.get(j + 1).copied().unwrap_or(usize::MAX);
            let left = row.get(j).copied().unwrap_or(usize::MAX);
            let next = (prev + usize::from(ca != *cb))
                .min(above.saturating_add(1))
                .min(left.saturating_add(1));
            prev = above;
            if let Some(cell) = row.get_mut(j + 1) {
                *cell = next;
            }
        }
    }
    row.last().copied().unwrap_or(0)
}

/// One Gluu plugin's config and where it came from (for error fields).
struct Plugin {
    name: String,
    field: String,
    config: Map<String, Value>,
}

impl Plugin {
    /// A field's value; `null` (what Kong's admin API shows for an unset
    /// field) counts as absent.
    fn get(&self, key: &str) -> Option<&Value> {
        self.config.get(key).filter(|v| !v.is_null())
    }
    fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.field)
    }
}

/// Rewrites `doc["gluu"]` (removed) into the document's own fields. Returns
/// the info lines to log at start (what was ignored and why), or every
/// problem found.
pub fn merge(doc: &mut Map<String, Value>) -> Result<Vec<String>, Vec<ConfigError>> {
    let Some(block) = doc.remove("gluu") else {
        return Ok(Vec::new());
    };
    let mut errors = Vec::new();
    let mut notes = Vec::new();
    let Value::Object(block) = block else {
        return Err(vec![ConfigError::new(
            "gluu",
            "must be an object: the Gluu plugin configs keyed by plugin name, or `plugins` with Kong's admin API output, and `upstream`",
        )]);
    };
    for key in block.keys() {
        if !BLOCK_FIELDS.contains(&key.as_str()) && !PLUGINS.contains(&key.as_str()) {
            let mut known: Vec<&str> = BLOCK_FIELDS.to_vec();
            known.extend(PLUGINS);
            let hint = match key.as_str() {
                k if OXD_FIELDS.contains(&k) || k == "op_url" => format!(
                    "unknown field `{k}`; it is a field of a plugin's config: put it under the plugin's name (e.g. `gluu.{OAUTH_AUTH}.{k}`)"
                ),
                k @ ("data" | "name" | "config") => {
                    format!("unknown field `{k}`; Kong's admin API output goes under `gluu.plugins`")
                }
                _ => closest(key, &known),
            };
            errors.push(ConfigError::new(format!("gluu.{key}"), hint));
        }
    }
    let plugins = collect_plugins(&block, &mut errors, &mut notes);
    if plugins.is_empty() && errors.is_empty() {
        errors.push(ConfigError::new(
            "gluu",
            format!("names no Gluu plugin: give `{OAUTH_AUTH}` and `{OAUTH_PEP}` (or `{UMA_AUTH}` and `{UMA_PEP}`), keyed by name or in `plugins`"),
        ));
    }
    for plugin in &plugins {
        let known = known_fields(&plugin.name);
        for key in plugin.config.keys() {
            if !known.contains(&key.as_str()) {
                let hint = if key == "ignore_scope" {
                    "unknown field `ignore_scope`; not supported: every path is judged by the policy".to_string()
                } else {
                    closest(key, &known)
                };
                errors.push(ConfigError::new(plugin.at(key), hint));
            }
        }
    }

    let upstream = match block.get("upstream") {
        Some(Value::String(u)) if !u.trim().is_empty() => Some(u.clone()),
        Some(_) => {
            errors.push(ConfigError::new("gluu.upstream", "must be the name of the Envoy cluster (on Kong: host:port) through which `op_url` is reached"));
            None
        }
        None => {
            errors.push(ConfigError::new("gluu.upstream", "is required: the Envoy cluster (on Kong: host:port) through which the filter fetches `op_url`'s discovery document, keys and introspection (Gluu went through oxd for these)"));
            None
        }
    };

    // One authorization server for the block: Gluu's plugins of one service
    // name the same OP.
    let mut op_url: Option<(String, String)> = None;
    for plugin in &plugins {
        match plugin.get("op_url") {
            Some(Value::String(url)) if !url.is_empty() => match &op_url {
                Some((first, field)) if first.trim_end_matches('/') != url.trim_end_matches('/') => {
                    errors.push(ConfigError::new(
                        plugin.at("op_url"),
                        format!("\"{url}\" differs from `{field}` (\"{first}\"): one `gluu` block is one authorization server"),
                    ))
                }
                Some(_) => {}
                None => op_url = Some((url.clone(), plugin.at("op_url"))),
            },
            Some(_) => errors.push(ConfigError::new(plugin.at("op_url"), "must be the OP's URL, e.g. \"https://op.example.com\"")),
            None => errors.push(ConfigError::new(plugin.at("op_url"), "is required (as in Gluu): the URL of the OP, whose discovery document the filter fetches")),
        }
    }

    let oxd: Vec<&str> = OXD_FIELDS
        .iter()
        .copied()
        .filter(|f| plugins.iter().any(|p| p.config.contains_key(*f)))
        .collect();
    if !oxd.is_empty() {
        notes.push(format!(
            "gluu: {} ignored: they configured oxd, which the filter does not use: it fetches op_url's discovery document, keys and introspection itself, through `gluu.upstream`, with the credentials of `gluu.introspection`",
            oxd.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    if plugins
        .iter()
        .any(|p| p.config.contains_key("method_path_tree"))
    {
        notes.push("gluu: `method_path_tree` ignored: Gluu derived it from the scope expression for its own matching; the filter compiles the expression itself".into());
    }

    let uma = plugins
        .iter()
        .any(|p| p.name == UMA_PEP || p.name == UMA_AUTH);
    let introspection = block.get("introspection").filter(|v| !v.is_null());
    if let (Some((op, op_field)), Some(upstream)) = (&op_url, &upstream) {
        let mut issuer = Map::new();
        issuer.insert("issuer".into(), json!(op));
        // uma2-configuration names the permission endpoint as well as the
        // keys, introspection and token endpoints.
        issuer.insert(
            "discovery".into(),
            if uma {
                json!("uma2-configuration")
            } else {
                json!(true)
            },
        );
        issuer.insert("upstream".into(), json!(upstream));
        // Gluu checked no `aud` (neither oxd's introspection nor its JWT
        // check), and Gluu's client-credential tokens carry none.
        issuer.insert(
            "audiences".into(),
            block.get("audiences").cloned().unwrap_or(json!("any")),
        );
        match introspection {
            Some(x) => {
                issuer.insert("introspection".into(), x.clone());
            }
            None => notes.push(format!(
                "gluu: no `gluu.introspection`: opaque (non-JWT) tokens of {op} cannot be checked and are refused (401); Gluu introspected them through oxd. Give the gateway's client at the OP there to accept them"
            )),
        }
        let issuers = doc.entry("issuers").or_insert_with(|| json!([]));
        match issuers {
            Value::Array(list) => {
                if let Some(i) = list.iter().position(|i| {
                    i.get("issuer")
                        .and_then(Value::as_str)
                        .map(|s| s.trim_end_matches('/'))
                        == Some(op.trim_end_matches('/'))
                }) {
                    errors.push(both(&format!("issuers[{i}]"), op_field));
                } else {
                    list.push(Value::Object(issuer));
                }
            }
            _ => errors.push(ConfigError::new("issuers", "must be a list")),
        }
    }

    map_pep(
        doc,
        &plugins,
        &block,
        op_url.as_ref().map(|(u, _)| u.as_str()),
        introspection,
        &mut errors,
        &mut notes,
    );
    map_auth(
        doc,
        &plugins,
        &block,
        op_url.as_ref().map(|(u, _)| u.as_str()),
        &mut errors,
        &mut notes,
    );

    // Kong-style `{"message": …}` bodies unless said otherwise: the clients
    // of a Gluu-protected API read those.
    doc.entry("error_body").or_insert_with(|| json!("kong"));

    if errors.is_empty() {
        Ok(notes)
    } else {
        Err(errors)
    }
}

fn both(top: &str, gluu: &str) -> ConfigError {
    ConfigError::new(
        top,
        format!("is set both here and by `{gluu}`; keep one of them"),
    )
}

/// Sets `doc[key] = value` unless the document already has it.
fn put(
    doc: &mut Map<String, Value>,
    key: &str,
    value: Value,
    from: &str,
    errors: &mut Vec<ConfigError>,
) {
    if doc.contains_key(key) {
        errors.push(both(key, from));
    } else {
        doc.insert(key.into(), value);
    }
}

/// Sets `doc[outer][inner] = value` unless it is already set.
fn put_in(
    doc: &mut Map<String, Value>,
    outer: &str,
    inner: &str,
    value: Value,
    from: &str,
    errors: &mut Vec<ConfigError>,
) {
    match doc.entry(outer).or_insert_with(|| json!({})) {
        Value::Object(map) if map.contains_key(inner) => {
            errors.push(both(&format!("{outer}.{inner}"), from))
        }
        Value::Object(map) => {
            map.insert(inner.into(), value);
        }
        _ => errors.push(ConfigError::new(outer, "must be an object")),
    }
}

fn collect_plugins(
    block: &Map<String, Value>,
    errors: &mut Vec<ConfigError>,
    notes: &mut Vec<String>,
) -> Vec<Plugin> {
    let mut found: Vec<Plugin> = Vec::new();
    let mut add = |name: &str, field: String, object: &Value, errors: &mut Vec<ConfigError>| {
        // A Kong plugin object (`{"name", "config", …}`) or the config itself.
        let (config, config_field) = match object {
            Value::Object(o) if o.contains_key("config") => {
                for key in o.keys() {
                    if !KONG_OBJECT_FIELDS.contains(&key.as_str()) {
                        errors.push(ConfigError::new(
                            format!("{field}.{key}"),
                            closest(key, &KONG_OBJECT_FIELDS),
                        ));
                    }
                }
                if o.get("enabled") == Some(&Value::Bool(false)) {
                    notes.push(format!(
                        "gluu: {field} (`{name}`) is disabled in Kong (`enabled: false`): skipped"
                    ));
                    return;
                }
                (o.get("config"), format!("{field}.config"))
            }
            other => (Some(other), field.clone()),
        };
        let Some(Value::Object(config)) = config else {
            errors.push(ConfigError::new(
                config_field,
                "must be the plugin's config object",
            ));
            return;
        };
        if let Some(first) = found.iter().find(|p| p.name == name) {
            errors.push(ConfigError::new(
                field,
                format!("`{name}` is given twice (also at `{}`): one filter configuration holds one of each plugin; give each Envoy route its own filter configuration", first.field),
            ));
            return;
        }
        found.push(Plugin {
            name: name.to_string(),
            field: config_field,
            config: config.clone(),
        });
    };
    for name in PLUGINS {
        if let Some(object) = block.get(name) {
            add(name, format!("gluu.{name}"), object, errors);
        }
    }
    let listed = match block.get("plugins") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list.iter().enumerate().collect(),
        Some(Value::Object(o)) if o.contains_key("data") => match o.get("data") {
            Some(Value::Array(list)) => list.iter().enumerate().collect(),
            _ => {
                errors.push(ConfigError::new(
                    "gluu.plugins.data",
                    "must be a list of plugin objects",
                ));
                Vec::new()
            }
        },
        Some(one @ Value::Object(_)) => vec![(0, one)],
        Some(_) => {
            errors.push(ConfigError::new(
                "gluu.plugins",
                "must be Kong's plugin objects: a list, `{\"data\": [...]}` or one object",
            ));
            Vec::new()
        }
    };
    let in_data = matches!(block.get("plugins"), Some(Value::Object(o)) if o.contains_key("data"));
    for (i, object) in listed {
        let field = if in_data {
            format!("gluu.plugins.data[{i}]")
        } else {
            format!("gluu.plugins[{i}]")
        };
        match object.get("name").and_then(Value::as_str) {
            Some(name) if PLUGINS.contains(&name) => add(name, field, object, errors),
            Some(name) => errors.push(ConfigError::new(
                format!("{field}.name"),
                format!("\"{name}\" is not one of the Gluu plugins this block maps ({}): configure it with Envoy's own filters, or leave it out", PLUGINS.join(", ")),
            )),
            None => errors.push(ConfigError::new(format!("{field}.name"), "is required: a Kong plugin object names its plugin")),
        }
    }
    found
}

/// A scope expression as Gluu stored it: a JSON string, or already parsed.
fn expression(plugin: &Plugin, key: &str, errors: &mut Vec<ConfigError>) -> Option<Value> {
    match plugin.get(key)? {
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(ConfigError::new(
                    plugin.at(key),
                    format!("is not JSON: {e}"),
                ));
                None
            }
        },
        other => Some(other.clone()),
    }
}

fn map_pep(
    doc: &mut Map<String, Value>,
    plugins: &[Plugin],
    block: &Map<String, Value>,
    op_url: Option<&str>,
    introspection: Option<&Value>,
    errors: &mut Vec<ConfigError>,
    notes: &mut Vec<String>,
) {
    let mut deny: Option<(bool, String)> = None;
    for plugin in plugins
        .iter()
        .filter(|p| p.name == OAUTH_PEP || p.name == UMA_PEP)
    {
        // Gluu's default is true, as ours.
        let value = match plugin.get("deny_by_default") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                errors.push(ConfigError::new(
                    plugin.at("deny_by_default"),
                    "must be true or false",
                ));
                continue;
            }
        };
        match &deny {
            Some((first, field)) if *first != value => errors.push(ConfigError::new(
                plugin.at("deny_by_default"),
                format!(
                    "is {value} but `{field}` is {first}: the filter has one `deny_by_default`"
                ),
            )),
            Some(_) => {}
            None => deny = Some((value, plugin.at("deny_by_default"))),
        }
    }
    if let Some((value, field)) = deny {
        put(doc, "deny_by_default", json!(value), &field, errors);
    }

    if let Some(pep) = plugins.iter().find(|p| p.name == OAUTH_PEP) {
        if let Some(policy) = expression(pep, "oauth_scope_expression", errors) {
            put(
                doc,
                "policy",
                policy,
                &pep.at("oauth_scope_expression"),
                errors,
            );
        }
    }

    let Some(pep) = plugins.iter().find(|p| p.name == UMA_PEP) else {
        if block.contains_key("uma_resources") {
            errors.push(ConfigError::new(
                "gluu.uma_resources",
                format!("needs `{UMA_PEP}`"),
            ));
        }
        return;
    };
    for (key, why) in [
        ("obtain_rpt", "the filter is a resource server only: the client obtains the RPT with the ticket"),
        ("redirect_claim_gathering_url", "the filter is a resource server only: claims are gathered between the client and the OP"),
        ("redirect_claim_gatering_url", "the filter is a resource server only: claims are gathered between the client and the OP"),
        ("require_id_token", "the filter does not obtain RPTs, so it pushes no id_token as a claim token"),
        ("pct_id_token_jwt", "the filter does not obtain RPTs, so it pushes no id_token as a claim token"),
    ] {
        // Kong shows the defaults (false) of a plugin it returns: those load.
        match pep.get(key) {
            None | Some(Value::Bool(false)) => {}
            Some(_) => errors.push(ConfigError::new(pep.at(key), format!("not supported: {why}"))),
        }
    }
    if let Some(Value::String(path)) = pep.get("claims_redirect_path") {
        if !path.is_empty() {
            errors.push(ConfigError::new(pep.at("claims_redirect_path"), "not supported: the filter is a resource server only: claims are gathered between the client and the OP"));
        }
    }
    let Some(expression) = expression(pep, "uma_scope_expression", errors) else {
        errors.push(ConfigError::new(
            pep.at("uma_scope_expression"),
            "is required: the UMA resources and their scopes",
        ));
        return;
    };
    let ids = match block.get("uma_resources") {
        Some(Value::Object(ids)) => ids.clone(),
        Some(_) => {
            errors.push(ConfigError::new(
                "gluu.uma_resources",
                "must map each `path` of `uma_scope_expression` to its UMA resource id",
            ));
            return;
        }
        None => Map::new(),
    };
    let Value::Array(entries) = expression else {
        errors.push(ConfigError::new(
            pep.at("uma_scope_expression"),
            "must be a list of {\"path\", \"conditions\"} (Gluu's format)",
        ));
        return;
    };
    let mut resources = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let Some(path) = entry.get("path").and_then(Value::as_str) else {
            errors.push(ConfigError::new(
                format!("{}[{i}].path", pep.at("uma_scope_expression")),
                "is required",
            ));
            continue;
        };
        match ids.get(path) {
            Some(Value::String(id)) if !id.is_empty() => resources.push(json!({
                "resource_id": id,
                "policy": [entry],
            })),
            _ => errors.push(ConfigError::new(
                "gluu.uma_resources",
                format!("has no resource id for \"{path}\": oxd registered each path of `uma_scope_expression` as a UMA resource for Gluu; give the id the OP holds for it (`\"uma_resources\": {{\"{path}\": \"<resource id>\"}}`)"),
            )),
        }
    }
    for path in ids.keys() {
        if !entries
            .iter()
            .any(|e| e.get("path").and_then(Value::as_str) == Some(path.as_str()))
        {
            errors.push(ConfigError::new(
                format!("gluu.uma_resources.{path}"),
                "names no `path` of `uma_scope_expression`",
            ));
        }
    }
    let Some(op) = op_url else { return };
    // The PAT client: the gateway's client at the OP, the one that introspects.
    let Some(Value::Object(x)) = introspection else {
        errors.push(ConfigError::new("gluu.introspection", format!("is required with `{UMA_PEP}`: the gateway's client at the OP introspects RPTs and gets the protection API token (PAT) for permission tickets, as oxd's client did")));
        return;
    };
    let mut pat = Map::new();
    pat.insert("issuer".into(), json!(op));
    for key in [
        "client_id",
        "client_secret",
        "client_secret_env",
        "private_key",
        "private_key_env",
        "auth_method",
    ] {
        if let Some(v) = x.get(key) {
            pat.insert(key.into(), v.clone());
        }
    }
    pat.insert("scopes".into(), json!(["uma_protection"]));
    put_in(
        doc,
        "clients",
        PAT_CLIENT,
        Value::Object(pat),
        "gluu.introspection",
        errors,
    );
    put(
        doc,
        "uma",
        json!({"issuer": op, "client": PAT_CLIENT, "resources": resources}),
        &pep.at("uma_scope_expression"),
        errors,
    );
    notes.push(format!("gluu: the UMA protection API token is requested by the client of `gluu.introspection` (as `clients.{PAT_CLIENT}`, scope uma_protection)"));
}

fn map_auth(
    doc: &mut Map<String, Value>,
    plugins: &[Plugin],
    block: &Map<String, Value>,
    op: Option<&str>,
    errors: &mut Vec<ConfigError>,
    notes: &mut Vec<String>,
) {
    let auths: Vec<&Plugin> = plugins
        .iter()
        .filter(|p| p.name == OAUTH_AUTH || p.name == UMA_AUTH)
        .collect();
    let Some(auth) = auths.first() else {
        return;
    };
    // Both auth plugins of one block must say the same: the filter has one
    // answer for each of these.
    for other in auths.iter().skip(1) {
        for key in [
            "anonymous",
            "pass_credentials",
            "consumer_mapping",
            "custom_headers",
            "hide_credentials",
        ] {
            if auth.get(key) != other.get(key) {
                errors.push(ConfigError::new(
                    other.at(key),
                    format!(
                        "differs from `{}`: the filter applies one value to every token",
                        auth.at(key)
                    ),
                ));
            }
        }
    }

    let consumers = kong_consumers(block, errors);

    // pass_credentials (4.x) or hide_credentials (3.x).
    if auth.get("pass_credentials").is_some() && auth.get("hide_credentials").is_some() {
        errors.push(ConfigError::new(
            auth.at("hide_credentials"),
            "give `pass_credentials` (4.x) or `hide_credentials` (3.x), not both",
        ));
    }
    match auth.get("pass_credentials") {
        None => {}
        Some(Value::String(p)) if p == "pass" => {}
        Some(Value::String(p)) if p == "hide" => put_in(
            doc,
            "forward",
            "hide_credentials",
            json!(true),
            &auth.at("pass_credentials"),
            errors,
        ),
        Some(Value::String(p)) if p == "phantom_token" => {
            // Gluu replaced the Authorization header with `Bearer` and an
            // unsigned JWT of the introspection answer.
            put_in(
                doc,
                "forward",
                "phantom_token_header",
                json!("authorization"),
                &auth.at("pass_credentials"),
                errors,
            );
            put_in(
                doc,
                "forward",
                "phantom_token_format",
                json!("jwt"),
                &auth.at("pass_credentials"),
                errors,
            );
        }
        Some(_) => errors.push(ConfigError::new(
            auth.at("pass_credentials"),
            "must be \"pass\", \"hide\" or \"phantom_token\"",
        )),
    }
    match auth.get("hide_credentials") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => put_in(
            doc,
            "forward",
            "hide_credentials",
            json!(true),
            &auth.at("hide_credentials"),
            errors,
        ),
        Some(_) => errors.push(ConfigError::new(
            auth.at("hide_credentials"),
            "must be true or false",
        )),
    }

    // consumer_mapping (default true): Gluu looked up the Kong consumer
    // whose custom_id is the token's client_id and refused unknown clients.
    let mapping = match auth.get("consumer_mapping") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(ConfigError::new(
                auth.at("consumer_mapping"),
                "must be true or false",
            ));
            true
        }
    };
    if mapping {
        match &consumers {
            Some(list) => {
                let mut map = Map::new();
                for c in list {
                    if let Some(Value::String(client)) = c.get("custom_id") {
                        let mut entry = Map::new();
                        for key in ["id", "username", "custom_id"] {
                            if let Some(v @ Value::String(_)) = c.get(key) {
                                entry.insert(key.into(), v.clone());
                            }
                        }
                        // Gluu's consumers are clients of the OP: a token
                        // of another issuer with the same client_id is not
                        // theirs.
                        if let Some(op) = op {
                            entry.insert("issuer".into(), json!(op));
                        }
                        map.insert(client.clone(), Value::Object(entry));
                    }
                }
                put(doc, "consumers", Value::Object(map), "gluu.consumers", errors);
            }
            None if doc.contains_key("consumers") => {}
            None => errors.push(ConfigError::new(
                auth.at("consumer_mapping"),
                "is true (Gluu's default): Gluu refused every client without a Kong consumer whose custom_id is its client_id; list the consumers in `gluu.consumers` (Kong's /consumers output) or in `consumers`, or set `consumer_mapping: false`",
            )),
        }
    } else {
        if consumers.is_some() {
            errors.push(ConfigError::new(
                "gluu.consumers",
                format!(
                    "is given but `{}` is false: Gluu mapped no consumer then",
                    auth.at("consumer_mapping")
                ),
            ));
        }
        if doc.contains_key("consumers") {
            put(
                doc,
                "allow_unregistered_clients",
                json!(true),
                &auth.at("consumer_mapping"),
                errors,
            );
        }
    }

    // anonymous: a Kong consumer id; " " (4.x's default) or "" means none.
    match auth.get("anonymous") {
        None => {}
        Some(Value::String(id)) if id.trim().is_empty() => {}
        Some(Value::String(id)) => {
            let mut anonymous = Map::new();
            anonymous.insert("id".into(), json!(id));
            if let Some(c) = consumers
                .iter()
                .flatten()
                .find(|c| c.get("id") == Some(&json!(id)))
            {
                for key in ["username", "custom_id"] {
                    if let Some(v @ Value::String(_)) = c.get(key) {
                        anonymous.insert(key.into(), v.clone());
                    }
                }
            }
            // Gluu let the anonymous consumer stand in everywhere, also for a
            // token that failed; the policy still binds it (no scopes).
            anonymous.insert("paths".into(), json!(["/??"]));
            anonymous.insert("on_invalid_token".into(), json!(true));
            put(
                doc,
                "anonymous",
                Value::Object(anonymous),
                &auth.at("anonymous"),
                errors,
            );
        }
        Some(_) => errors.push(ConfigError::new(
            auth.at("anonymous"),
            "must be a Kong consumer id (a string)",
        )),
    }

    if let Some(headers) = auth.get("custom_headers") {
        map_custom_headers(doc, auth, headers, errors, notes);
    }
}

/// Kong's consumers: a list or `{"data": [...]}`.
fn kong_consumers(
    block: &Map<String, Value>,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<Map<String, Value>>> {
    let list = match block.get("consumers")? {
        Value::Array(list) => list,
        Value::Object(o) => match o.get("data") {
            Some(Value::Array(list)) => list,
            _ => {
                errors.push(ConfigError::new(
                    "gluu.consumers",
                    "must be Kong's consumers: a list or `{\"data\": [...]}`",
                ));
                return None;
            }
        },
        Value::Null => return None,
        _ => {
            errors.push(ConfigError::new(
                "gluu.consumers",
                "must be Kong's consumers: a list or `{\"data\": [...]}`",
            ));
            return None;
        }
    };
    let mut out = Vec::new();
    for (i, c) in list.iter().enumerate() {
        match c {
            Value::Object(o) if o.get("id").is_some_and(Value::is_string) => out.push(o.clone()),
            _ => errors.push(ConfigError::new(format!("gluu.consumers[{i}]"), "must be a Kong consumer object with `id` (and `custom_id`: the client id it stands for)")),
        }
    }
    Some(out)
}

/// What a `value_lua_exp` names, among the few expressions the filter
/// understands without running Lua.
enum Source {
    /// The whole introspection answer (or JWT payload).
    Whole,
    Claim(String),
    Consumer(&'static str),
}

fn lua_source(exp: &str) -> Result<Source, String> {
    let exp = exp.trim();
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == ':' || c == '.')
    };
    if exp == "introspect_data" {
        return Ok(Source::Whole);
    }
    if let Some(rest) = exp.strip_prefix("introspect_data.") {
        if ident(rest) && !rest.contains('.') {
            return Ok(Source::Claim(rest.into()));
        }
    }
    for (open, close) in [("introspect_data[\"", "\"]"), ("introspect_data['", "']")] {
        if let Some(name) = exp.strip_prefix(open).and_then(|r| r.strip_suffix(close)) {
            if ident(name) {
                return Ok(Source::Claim(name.into()));
            }
        }
    }
    match exp {
        "consumer.id" => return Ok(Source::Consumer("consumer_id")),
        "consumer.username" => return Ok(Source::Consumer("consumer_username")),
        "consumer.custom_id" => return Ok(Source::Consumer("consumer_custom_id")),
        _ => {}
    }
    if exp.len() >= 2
        && (exp.starts_with('"') && exp.ends_with('"')
            || exp.starts_with('\'') && exp.ends_with('\''))
    {
        return Err("is a fixed value: set it with Envoy's `request_headers_to_add` on the route; the filter sends only values from the token or the consumer".into());
    }
    Err(format!("`{exp}` is a Lua expression the filter cannot run (it runs no code from its configuration): only `introspect_data`, `introspect_data.<claim>` and `consumer.id`, `consumer.username`, `consumer.custom_id` are understood"))
}

fn map_custom_headers(
    doc: &mut Map<String, Value>,
    auth: &Plugin,
    headers: &Value,
    errors: &mut Vec<ConfigError>,
    notes: &mut Vec<String>,
) {
    let Value::Array(list) = headers else {
        errors.push(ConfigError::new(auth.at("custom_headers"), "must be a list of {\"header_name\", \"value_lua_exp\", \"format\", \"sep\", \"iterate\"}"));
        return;
    };
    let mut forward_headers = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let field = format!("{}[{i}]", auth.at("custom_headers"));
        let Value::Object(entry) = entry else {
            errors.push(ConfigError::new(field, "must be an object"));
            continue;
        };
        for key in entry.keys() {
            if !["header_name", "value_lua_exp", "format", "sep", "iterate"].contains(&key.as_str())
            {
                errors.push(ConfigError::new(
                    format!("{field}.{key}"),
                    closest(
                        key,
                        &["header_name", "value_lua_exp", "format", "sep", "iterate"],
                    ),
                ));
            }
        }
        let text = |key: &str| entry.get(key).and_then(Value::as_str).map(str::to_string);
        if entry.get("iterate") == Some(&Value::Bool(true)) {
            errors.push(ConfigError::new(format!("{field}.iterate"), "not supported: it makes header names from the token's claim names, so the token would choose which headers the upstream gets; list the claims one by one"));
            continue;
        }
        let Some(name) = text("header_name") else {
            errors.push(ConfigError::new(
                format!("{field}.header_name"),
                "is required",
            ));
            continue;
        };
        if name.contains("{*}") {
            errors.push(ConfigError::new(format!("{field}.header_name"), "`{*}` needs `iterate`, which is not supported: header names come from the configuration only"));
            continue;
        }
        // Gluu sent `_` as `-`.
        let header = name.replace('_', "-");
        let Some(exp) = text("value_lua_exp") else {
            errors.push(ConfigError::new(
                format!("{field}.value_lua_exp"),
                "is required",
            ));
            continue;
        };
        let format = text("format");
        if let Some(f) = &format {
            if !["string", "list", "base64", "jwt", "urlencoded"].contains(&f.as_str()) {
                errors.push(ConfigError::new(
                    format!("{field}.format"),
                    "must be string, list, base64, jwt or urlencoded",
                ));
                continue;
            }
        }
        let source = match lua_source(&exp) {
            Ok(s) => s,
            Err(why) => {
                errors.push(ConfigError::new(format!("{field}.value_lua_exp"), why));
                continue;
            }
        };
        let plain = matches!(format.as_deref(), None | Some("string"));
        // The identity headers already carry these; the Gluu header name
        // becomes the identity header's name.
        let identity = match (&source, format.as_deref()) {
            (Source::Consumer(key), _) if plain => Some(*key),
            (Source::Claim(c), _) if c == "client_id" && plain => Some("client_id"),
            (Source::Claim(c), _) if c == "exp" && plain => Some("expiration"),
            (Source::Claim(c), Some("list")) if c == "scope" => {
                if text("sep").is_some_and(|s| s != ",") {
                    notes.push(format!("gluu: {field}: the scopes are sent comma-separated without spaces (`{header}: read,write`), as the filter's scope header always is"));
                }
                Some("scope")
            }
            (Source::Consumer(_), _) => {
                errors.push(ConfigError::new(
                    format!("{field}.format"),
                    "consumer values are sent as they are (format string)",
                ));
                continue;
            }
            _ => None,
        };
        if let Some(key) = identity {
            put_in(doc, "identity_headers", key, json!(header), &field, errors);
            continue;
        }
        let mut out = Map::new();
        out.insert("header".into(), json!(header));
        if let Source::Claim(c) = &source {
            out.insert("claim".into(), json!(c));
        }
        if let Some(f) = format {
            out.insert("format".into(), json!(f));
        }
        if let Some(sep) = text("sep") {
            out.insert("separator".into(), json!(sep));
        }
        forward_headers.push(Value::Object(out));
    }
    if !forward_headers.is_empty() {
        put_in(
            doc,
            "forward",
            "headers",
            Value::Array(forward_headers),
            &auth.at("custom_headers"),
            errors,
        );
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    type Merged = Result<(Map<String, Value>, Vec<String>), Vec<ConfigError>>;

    fn merged(block: Value) -> Merged {
        let mut doc = Map::new();
        doc.insert("gluu".into(), block);
        merge(&mut doc).map(|notes| (doc, notes))
    }

    fn errors(block: Value) -> Vec<String> {
        match merged(block) {
            Ok(_) => panic!("accepted"),
            Err(e) => e
                .iter()
                .map(|e| format!("{}: {}", e.field, e.problem))
                .collect(),
        }
    }

    const OP: &str = "https://op.example.com";

    fn oauth(pep: Value) -> Value {
        json!({
            "upstream": "op",
            "gluu-oauth-auth": {"oxd_id": "x", "oxd_url": "https://oxd:8443", "client_id": "c", "client_secret": "s",
                                "op_url": OP, "anonymous": " ", "pass_credentials": "pass", "consumer_mapping": false},
            "gluu-oauth-pep": pep,
        })
    }

    #[test]
    fn an_oauth_pair_becomes_an_issuer_a_policy_and_deny_by_default() {
        let expr = r#"[{"path":"/images","conditions":[{"httpMethods":["GET"],"scope_expression":{"rule":{"and":[{"var":0}]},"data":["read"]}}]}]"#;
        let (doc, notes) = merged(oauth(
            json!({"op_url": OP, "oxd_id": "x", "deny_by_default": false,
            "oauth_scope_expression": expr, "method_path_tree": "{}"}),
        ))
        .unwrap();
        assert_eq!(
            doc["issuers"],
            json!([{"issuer": OP, "discovery": true, "upstream": "op", "audiences": "any"}])
        );
        assert_eq!(doc["policy"], serde_json::from_str::<Value>(expr).unwrap());
        assert_eq!(doc["deny_by_default"], json!(false));
        assert_eq!(doc["error_body"], json!("kong"));
        assert!(!doc.contains_key("anonymous") && !doc.contains_key("consumers"));
        let oxd: Vec<_> = notes
            .iter()
            .filter(|n| n.contains("configured oxd"))
            .collect();
        assert_eq!(oxd.len(), 1, "{notes:?}");
        assert!(
            oxd[0].contains("`oxd_id`, `oxd_url`, `client_id`, `client_secret`"),
            "{}",
            oxd[0]
        );
        assert!(notes.iter().any(|n| n.contains("method_path_tree")));
        assert!(notes
            .iter()
            .any(|n| n.contains("opaque") && n.contains("cannot be checked")));
    }

    #[test]
    fn kong_admin_output_loads_in_each_shape() {
        let auth = json!({"name": "gluu-oauth-auth", "id": "p1", "enabled": true, "route": {"id": "r"},
                          "config": {"op_url": OP, "oxd_id": "x", "oxd_url": "u", "client_id": "c", "client_secret": "s",
                                     "consumer_mapping": false, "custom_headers": null}});
        let pep = json!({"name": "gluu-oauth-pep", "config": {"op_url": OP, "oauth_scope_expression": "[]", "deny_by_default": true}});
        for plugins in [
            json!([auth, pep]),
            json!({"data": [auth, pep], "next": null}),
            json!([auth]),
        ] {
            let (doc, _) = merged(json!({"upstream": "op", "plugins": plugins})).unwrap();
            assert_eq!(doc["issuers"][0]["issuer"], json!(OP));
        }
        let e = errors(
            json!({"upstream": "op", "plugins": [auth, {"name": "rate-limiting", "config": {}}]}),
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("gluu.plugins[1].name: \"rate-limiting\" is not one")),
            "{e:?}"
        );
        let e =
            errors(json!({"upstream": "op", "plugins": [auth], "gluu-oauth-auth": {"op_url": OP}}));
        assert!(e.iter().any(|e| e.contains("is given twice")), "{e:?}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = errors(json!({
            "upstrem": "op",
            "gluu-oauth-auth": {"op_url": OP, "pass_credentials": "mask", "consumer_mapping": false, "oxd_idd": "x"},
            "gluu-oauth-pep": {"op_url": "https://other.example.com", "oauth_scope_expression": "[{"},
        }));
        for expected in [
            "gluu.upstrem: unknown field `upstrem`; did you mean `upstream`?",
            "gluu.upstream: is required",
            "gluu.gluu-oauth-auth.oxd_idd: unknown field `oxd_idd`; did you mean `oxd_id`?",
            "gluu.gluu-oauth-pep.op_url: \"https://other.example.com\" differs",
            "gluu.gluu-oauth-pep.oauth_scope_expression: is not JSON",
            "gluu.gluu-oauth-auth.pass_credentials: must be \"pass\", \"hide\" or \"phantom_token\"",
        ] {
            assert!(e.iter().any(|x| x.starts_with(expected)), "{expected}\n in {e:#?}");
        }
    }

    #[test]
    fn pass_credentials_anonymous_and_consumer_mapping() {
        let block = |auth: Value| {
            let mut b = oauth(json!({"op_url": OP}));
            b["gluu-oauth-auth"] = auth;
            b["consumers"] = json!({"data": [{"id": "uuid-1", "username": "app", "custom_id": "client-1"},
                                             {"id": "uuid-anon", "username": "anonymous"}]});
            b
        };
        let (doc, _) = merged(block(
            json!({"op_url": OP, "pass_credentials": "hide", "anonymous": "uuid-anon"}),
        ))
        .unwrap();
        assert_eq!(doc["forward"], json!({"hide_credentials": true}));
        assert_eq!(
            doc["consumers"],
            json!({"client-1": {"id": "uuid-1", "username": "app", "custom_id": "client-1",
                                "issuer": OP}}),
            "Gluu's consumers are clients of the OP"
        );
        assert_eq!(
            doc["anonymous"],
            json!({"id": "uuid-anon", "username": "anonymous", "paths": ["/??"], "on_invalid_token": true})
        );
        let (doc, _) = merged(block(
            json!({"op_url": OP, "pass_credentials": "phantom_token"}),
        ))
        .unwrap();
        assert_eq!(
            doc["forward"],
            json!({"phantom_token_header": "authorization", "phantom_token_format": "jwt"})
        );
        let e = errors(block(json!({"op_url": OP, "consumer_mapping": false})));
        assert!(
            e.iter()
                .any(|e| e.starts_with("gluu.consumers: is given but")),
            "{e:?}"
        );
        let e = errors(oauth_with_auth(json!({"op_url": OP})));
        assert!(
            e.iter()
                .any(|e| e.contains("consumer_mapping: is true (Gluu's default)")),
            "{e:?}"
        );
    }

    fn oauth_with_auth(auth: Value) -> Value {
        let mut b = oauth(json!({"op_url": OP}));
        b["gluu-oauth-auth"] = auth;
        b
    }

    #[test]
    fn a_field_set_twice_names_both_places() {
        let mut doc = Map::new();
        doc.insert("policy".into(), json!({"GET /a": "read"}));
        doc.insert("forward".into(), json!({"hide_credentials": false}));
        let mut block = oauth(json!({"op_url": OP, "oauth_scope_expression": []}));
        block["gluu-oauth-auth"]["pass_credentials"] = json!("hide");
        doc.insert("gluu".into(), block);
        let e: Vec<String> = merge(&mut doc)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(
            e.iter().any(|e| e.contains(
                "`policy`: is set both here and by `gluu.gluu-oauth-pep.oauth_scope_expression`"
            )),
            "{e:?}"
        );
        assert!(e.iter().any(|e| e.contains("`forward.hide_credentials`: is set both here and by `gluu.gluu-oauth-auth.pass_credentials`")), "{e:?}");
    }

    #[test]
    fn custom_headers_the_safe_subset_maps_and_the_rest_is_refused_with_a_reason() {
        let headers = json!([
            {"header_name": "x-consumer-id", "value_lua_exp": "consumer.id", "format": "string"},
            {"header_name": "x_oauth_client_id", "value_lua_exp": "introspect_data.client_id"},
            {"header_name": "x-authenticated-scope", "value_lua_exp": "introspect_data.scope", "format": "list", "sep": ", "},
            {"header_name": "x-token-data", "value_lua_exp": "introspect_data", "format": "jwt"},
            {"header_name": "x-user", "value_lua_exp": "introspect_data[\"sub\"]", "format": "base64"},
            {"header_name": "x-groups", "value_lua_exp": "introspect_data.groups", "format": "list", "sep": ";"},
        ]);
        let (doc, notes) = merged(oauth_with_auth(
            json!({"op_url": OP, "consumer_mapping": false, "custom_headers": headers}),
        ))
        .unwrap();
        assert_eq!(
            doc["identity_headers"],
            json!({"consumer_id": "x-consumer-id", "client_id": "x-oauth-client-id", "scope": "x-authenticated-scope"})
        );
        assert_eq!(
            doc["forward"]["headers"],
            json!([{"header": "x-token-data", "format": "jwt"},
                   {"header": "x-user", "claim": "sub", "format": "base64"},
                   {"header": "x-groups", "claim": "groups", "format": "list", "separator": ";"}])
        );
        assert!(notes
            .iter()
            .any(|n| n.contains("comma-separated without spaces")));
        let refused = json!([
            {"header_name": "x-oauth-token-{*}", "value_lua_exp": "introspect_data", "iterate": true},
            {"header_name": "kong-version", "value_lua_exp": "\"version 1.3\""},
            {"header_name": "x-a", "value_lua_exp": "introspect_data.sub .. 'x'"},
            {"header_name": "x-b", "value_lua_exp": "introspect_data.sub", "format": "xml"},
        ]);
        let e = errors(oauth_with_auth(
            json!({"op_url": OP, "consumer_mapping": false, "custom_headers": refused}),
        ));
        for expected in [
            "custom_headers[0].iterate: not supported: it makes header names from the token's claim names",
            "custom_headers[1].value_lua_exp: is a fixed value: set it with Envoy's `request_headers_to_add`",
            "custom_headers[2].value_lua_exp: `introspect_data.sub .. 'x'` is a Lua expression the filter cannot run",
            "custom_headers[3].format: must be string, list, base64, jwt or urlencoded",
        ] {
            assert!(e.iter().any(|x| x.contains(expected)), "{expected}\n in {e:#?}");
        }
    }

    #[test]
    fn uma_needs_a_resource_id_per_path_and_the_gateway_client() {
        let expr = json!([{"path": "/photos/??", "conditions": [{"httpMethods": ["GET"], "scope_expression": {"rule": {"and": [{"var": 0}]}, "data": ["view"]}}]}]);
        let pep = json!({"op_url": OP, "oxd_id": "x", "uma_scope_expression": expr.to_string(), "deny_by_default": true,
                         "obtain_rpt": false, "require_id_token": false, "redirect_claim_gathering_url": false, "claims_redirect_path": null});
        let auth = json!({"op_url": OP, "consumer_mapping": false});
        let x = json!({"client_id": "gw", "client_secret_env": "GW_SECRET"});
        let e = errors(
            json!({"upstream": "op", "introspection": x, "gluu-uma-auth": auth, "gluu-uma-pep": pep}),
        );
        assert!(e.iter().any(|e| e.starts_with("gluu.uma_resources: has no resource id for \"/photos/??\"")), "{e:?}");
        let (doc, _) = merged(
            json!({"upstream": "op", "introspection": x, "gluu-uma-auth": auth, "gluu-uma-pep": pep,
                                     "uma_resources": {"/photos/??": "rid-1"}}),
        )
        .unwrap();
        assert_eq!(doc["issuers"][0]["discovery"], json!("uma2-configuration"));
        assert_eq!(
            doc["uma"],
            json!({"issuer": OP, "client": PAT_CLIENT, "resources": [{"resource_id": "rid-1", "policy": expr}]})
        );
        assert_eq!(
            doc["clients"][PAT_CLIENT],
            json!({"issuer": OP, "client_id": "gw", "client_secret_env": "GW_SECRET", "scopes": ["uma_protection"]})
        );
        let mut with_rpt = pep.clone();
        with_rpt["obtain_rpt"] = json!(true);
        let e = errors(
            json!({"upstream": "op", "introspection": x, "gluu-uma-pep": with_rpt, "uma_resources": {"/photos/??": "rid-1"}}),
        );
        assert!(
            e.iter().any(|e| e.starts_with(
                "gluu.gluu-uma-pep.obtain_rpt: not supported: the filter is a resource server only"
            )),
            "{e:?}"
        );
    }

    #[test]
    fn hints_for_gluu_fields_at_the_top_level() {
        let known = ["issuers", "policy"];
        assert!(top_level_hint("oxd_id", &known)
            .contains("only served oxd: put the Gluu plugin config inside `gluu`"));
        assert!(top_level_hint("oauth_scope_expression", &known)
            .contains("goes under `policy` or inside `gluu`"));
        assert_eq!(
            top_level_hint("polcy", &known),
            "unknown field `polcy`; did you mean `policy`?"
        );
        assert!(top_level_hint("zzz", &known)
            .contains("unknown field `zzz`, expected one of `issuers`, `policy`"));
    }
}
