//! `vars`: non-secret configuration an operator exposes to Promises by name.
//!
//! A Promise reads `${{ vars.provisioner_url }}`; it never reads the engine's
//! environment. An operator exposes each var explicitly, either as an
//! environment variable `FULFIL_VAR_<NAME>` (the name after the prefix,
//! lower-cased: `FULFIL_VAR_PROVISIONER_URL` is `provisioner_url`) or in a
//! vars file, a YAML or JSON mapping of names to strings. Where both name a
//! var, the environment wins, so one deployment can override a shared file.
//!
//! Names are 1-63 lowercase letters, digits and `_`, starting with a letter,
//! so that `vars.<name>` is a plain CEL member access. Values are strings.
//! Vars are not for secrets: their values are copied into every run that
//! reads them (captured when the request is accepted, so every engine
//! renders the same input), and shown with the run.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Prefix of the environment variables that expose a var.
pub const ENV_PREFIX: &str = "FULFIL_VAR_";

/// Why a set of vars could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VarsError {
    /// A name that `vars.<name>` could not read.
    #[error(
        "{origin}: {name:?} is not a valid var name: use 1-63 lowercase letters, digits and '_', starting with a letter"
    )]
    InvalidName {
        /// Where the name came from: an environment variable or a file.
        origin: String,
        /// The name as given.
        name: String,
    },
    /// The vars file is not a mapping of names to strings.
    #[error("the vars file is not a YAML or JSON mapping of names to strings: {0}")]
    File(String),
}

/// The vars of a deployment: names to values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars(BTreeMap<String, String>);

/// Whether `name` can be a var's name.
pub fn is_var_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Vars {
    /// The vars exposed by `FULFIL_VAR_*` among `environment` (pass
    /// `std::env::vars()`); other variables are ignored.
    pub fn from_env(
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Vars, VarsError> {
        let mut vars = BTreeMap::new();
        for (key, value) in environment {
            let Some(suffix) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let name = suffix.to_ascii_lowercase();
            if !is_var_name(&name) {
                return Err(VarsError::InvalidName {
                    origin: format!("environment variable {key}"),
                    name,
                });
            }
            vars.insert(name, value);
        }
        Ok(Vars(vars))
    }

    /// The vars of a file's text: a YAML or JSON mapping of names to strings.
    pub fn from_file_text(text: &str) -> Result<Vars, VarsError> {
        let value = crate::document::read(text).map_err(|e| VarsError::File(e.message))?;
        let map: BTreeMap<String, String> = match value {
            // An empty file exposes nothing.
            Value::Null => BTreeMap::new(),
            other => serde_json::from_value(other).map_err(|e| VarsError::File(e.to_string()))?,
        };
        for name in map.keys() {
            if !is_var_name(name) {
                return Err(VarsError::InvalidName {
                    origin: "vars file".into(),
                    name: name.clone(),
                });
            }
        }
        Ok(Vars(map))
    }

    /// `self` with every var of `overrides` added or replacing its own.
    pub fn overridden_by(mut self, overrides: Vars) -> Vars {
        self.0.extend(overrides.0);
        self
    }

    /// The value of var `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The names of every var, what validation lets a Promise read.
    pub fn names(&self) -> BTreeSet<String> {
        self.0.keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The object `vars` is in a run's expressions: the vars among `names`
    /// (those the Promise reads); one no longer exposed is left out, so
    /// reading it fails that expression, not the request.
    pub fn capture<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Value {
        let mut captured = serde_json::Map::new();
        for name in names {
            if let Some(value) = self.0.get(name) {
                captured.insert(name.to_string(), Value::String(value.clone()));
            }
        }
        Value::Object(captured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_come_from_prefixed_environment_and_a_file() {
        let env = Vars::from_env([
            ("FULFIL_VAR_PROVISIONER_URL".into(), "http://p".into()),
            ("FULFIL_VARS_FILE".into(), "/etc/vars.yaml".into()),
            ("DATABASE_URL".into(), "postgres://secret".into()),
        ])
        .unwrap();
        assert_eq!(env.names(), BTreeSet::from(["provisioner_url".to_string()]));
        let file = Vars::from_file_text("provisioner_url: http://file\nregion: eu-1\n").unwrap();
        let vars = file.overridden_by(env);
        assert_eq!(vars.get("provisioner_url"), Some("http://p"));
        assert_eq!(vars.get("region"), Some("eu-1"));
        assert_eq!(
            vars.capture(["region", "gone"]),
            serde_json::json!({ "region": "eu-1" })
        );

        assert!(matches!(
            Vars::from_env([("FULFIL_VAR_".into(), "x".into())]),
            Err(VarsError::InvalidName { .. })
        ));
        assert!(matches!(
            Vars::from_file_text("Region: eu"),
            Err(VarsError::InvalidName { .. })
        ));
        assert!(matches!(
            Vars::from_file_text("region: { nested: 1 }"),
            Err(VarsError::File(_))
        ));
        assert!(matches!(
            Vars::from_file_text("region: a\nregion: b\n"),
            Err(VarsError::File(message)) if message.contains("region")
        ));
        assert_eq!(Vars::from_file_text(""), Ok(Vars::default()));
    }
}
