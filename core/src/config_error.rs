//! The error a refused configuration gives: the field (e.g. `issuers[0].jwks`,
//! empty for the document as a whole) and the problem. Its own module so that
//! the modules `config` compiles from (consumers, PDP, headers) can return it
//! without importing `config`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// Several problems found in one pass (unknown fields, the `gluu`
    /// block), reported together so a pasted configuration is fixed in one
    /// round rather than one field at a time. One problem stays itself.
    pub fn many(mut errors: Vec<ConfigError>) -> Option<ConfigError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            n => Some(ConfigError::new(
                "",
                format!(
                    "{n} problems: {}",
                    errors
                        .iter()
                        .map(|e| format!("`{}`: {}", e.field, e.problem))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            )),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid configuration: {}", self.problem)
        } else {
            write!(
                f,
                "invalid configuration: `{}`: {}",
                self.field, self.problem
            )
        }
    }
}

impl std::error::Error for ConfigError {}
