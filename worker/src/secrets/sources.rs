//! The built-in secret sources: the process environment and a directory of
//! files.

use std::path::PathBuf;

use super::{SecretSource, SecretSourceError, SecretValue};

/// Prefix of the environment variables [`EnvSecrets`] reads.
pub const ENV_PREFIX: &str = "FULFIL_SECRET_";

/// Secrets from environment variables: `api_token` is
/// `FULFIL_SECRET_API_TOKEN` (the prefix, then the name uppercased).
#[derive(Debug, Clone)]
pub struct EnvSecrets {
    prefix: String,
}

impl Default for EnvSecrets {
    fn default() -> Self {
        Self::with_prefix(ENV_PREFIX)
    }
}

impl EnvSecrets {
    /// Reads `FULFIL_SECRET_<NAME>`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `<prefix><NAME>`: for a worker embedded in a process whose
    /// variables are named otherwise.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    fn variable(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name.to_ascii_uppercase())
    }
}

#[async_trait::async_trait]
impl SecretSource for EnvSecrets {
    async fn lookup(&self, name: &str) -> Result<Option<SecretValue>, SecretSourceError> {
        match std::env::var(self.variable(name)) {
            Ok(value) => Ok(Some(SecretValue::new(value))),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(SecretSourceError {
                name: name.to_string(),
                source_name: self.describe(name),
                reason: "the value is not UTF-8".into(),
            }),
        }
    }

    fn describe(&self, name: &str) -> String {
        format!("environment variable {}", self.variable(name))
    }
}

/// Secrets from a directory holding one file per secret, named as the
/// secret, as Kubernetes mounts a Secret volume (its `..data` symlinks are
/// followed by reading `dir/NAME`). One trailing newline (`\n` or `\r\n`)
/// is trimmed, as editors and `echo` add one.
#[derive(Debug, Clone)]
pub struct DirSecrets {
    dir: PathBuf,
}

impl DirSecrets {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

#[async_trait::async_trait]
impl SecretSource for DirSecrets {
    async fn lookup(&self, name: &str) -> Result<Option<SecretValue>, SecretSourceError> {
        let failed = |reason: String| SecretSourceError {
            name: name.to_string(),
            source_name: self.describe(name),
            reason,
        };
        // Names are checked before any lookup ([A-Za-z_][A-Za-z0-9_]*), so
        // this path stays inside the directory.
        let path = self.dir.join(name);
        // A mounted volume can block (NFS, FUSE): off the async threads.
        let read = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(|e| failed(format!("the read did not finish: {e}")))?;
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(failed(err.to_string())),
        };
        let mut text =
            String::from_utf8(bytes).map_err(|_| failed("the file is not UTF-8".into()))?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        Ok(Some(SecretValue::new(text)))
    }

    fn describe(&self, name: &str) -> String {
        format!("file {}", self.dir.join(name).display())
    }
}

/// Secrets a process supplies itself, from a fixed map: defaults such as
/// `fulfil dev` naming its own Postgres `postgres_admin_url`, tried after
/// the operator's sources so those win.
#[derive(Debug, Clone)]
pub struct StaticSecrets {
    origin: String,
    values: std::collections::BTreeMap<String, SecretValue>,
}

impl StaticSecrets {
    /// No values yet; `origin` says where they come from in a
    /// `secret_missing` message (`the defaults of fulfil dev`).
    pub fn new(origin: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            values: Default::default(),
        }
    }

    /// Adds (or replaces) the value of `name`.
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: SecretValue) -> Self {
        self.values.insert(name.into(), value);
        self
    }
}

#[async_trait::async_trait]
impl SecretSource for StaticSecrets {
    async fn lookup(&self, name: &str) -> Result<Option<SecretValue>, SecretSourceError> {
        Ok(self.values.get(name).cloned())
    }

    fn describe(&self, _: &str) -> String {
        self.origin.clone()
    }
}
