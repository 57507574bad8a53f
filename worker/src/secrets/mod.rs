//! Secrets: resolved here, by the worker that runs a step, and nowhere else.
//!
//! A Promise writes `${{ secrets.NAME }}` in a worker step's `with`; the
//! engine renders it to that text and lists, in the task's
//! [`secrets`](fulfil_core::wire::TaskMessage::secrets), which strings of
//! `input` hold references and how to build each
//! ([`SecretSlot`]). Contract:
//!
//! * **Only slots are resolved.** `${{ secrets.x }}` text anywhere else in
//!   `input` came from a requester's params or a step's output and stays as
//!   it is: resolving it would hand the secret to whoever wrote it.
//! * **Sources** are tried in order, the first that has the name wins.
//!   [`SecretSources::standard`] is a directory ([`DirSecrets`], as
//!   Kubernetes mounts a Secret) first, then the environment
//!   ([`EnvSecrets`], `FULFIL_SECRET_<NAME>`), which is always on. Custom
//!   sources implement [`SecretSource`].
//! * **A missing secret** fails the attempt for good with code
//!   `secret_missing`, naming the secret and the places looked in; a source
//!   that cannot answer fails it retryably (`secret_unavailable`). Neither
//!   message holds a value.
//! * **Redaction.** Once the handler returns, every value resolved for the
//!   attempt is replaced by `[redacted:NAME]` in its output (strings and
//!   object keys, at any depth), its error message and code, its heartbeat
//!   details and a panic message, before anything is published or logged.
//!   An empty value is not redacted: it would match everywhere. Redaction
//!   catches a value echoed verbatim, not one transformed (base64, hashed).
//! * A [`SecretValue`] never prints its value (`Debug` is `[redacted]`),
//!   and the runtime never logs a task's input.

mod sources;

use std::{collections::BTreeMap, fmt, sync::Arc};

use serde_json::Value;

use fulfil_core::wire::{SecretPart, SecretSlot, StepFailure, is_valid_secret_name};

use crate::handler::StepError;

pub use sources::{DirSecrets, ENV_PREFIX, EnvSecrets, StaticSecrets};

/// A secret's value. Formatting it never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that needs it: the input handed
    /// to the handler.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why a source could not say whether it has a secret (as opposed to not
/// having it, which is `Ok(None)`). Never carries a value.
#[derive(Debug, thiserror::Error)]
#[error("cannot read secret {name:?} from {source_name}: {reason}")]
pub struct SecretSourceError {
    pub name: String,
    /// The source, as [`SecretSource::describe`] says it.
    pub source_name: String,
    pub reason: String,
}

/// Where a worker looks secrets up.
#[async_trait::async_trait]
pub trait SecretSource: Send + Sync {
    /// The value of `name` (a valid secret name: `[A-Za-z_][A-Za-z0-9_]*`),
    /// `Ok(None)` if this source does not have it.
    async fn lookup(&self, name: &str) -> Result<Option<SecretValue>, SecretSourceError>;

    /// Where this source would look for `name`, for a `secret_missing`
    /// message: `environment variable FULFIL_SECRET_API_TOKEN`.
    fn describe(&self, name: &str) -> String;
}

/// The sources a worker tries, in order.
#[derive(Clone)]
pub struct SecretSources(Vec<Arc<dyn SecretSource>>);

impl Default for SecretSources {
    /// The environment only.
    fn default() -> Self {
        Self::standard(None)
    }
}

impl fmt::Debug for SecretSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let places: Vec<String> = self.0.iter().map(|s| s.describe("<NAME>")).collect();
        f.debug_tuple("SecretSources").field(&places).finish()
    }
}

impl SecretSources {
    /// No sources: every reference is missing.
    pub fn empty() -> Self {
        Self(Vec::new())
    }

    /// `dir` (as Kubernetes mounts a Secret volume) when given, then the
    /// environment: a mounted file wins over a variable of the same name.
    pub fn standard(dir: Option<std::path::PathBuf>) -> Self {
        let mut sources = Self::empty();
        if let Some(dir) = dir {
            sources = sources.then(DirSecrets::new(dir));
        }
        sources.then(EnvSecrets::new())
    }

    /// Adds `source`, tried after those already here.
    pub fn then(mut self, source: impl SecretSource + 'static) -> Self {
        self.0.push(Arc::new(source));
        self
    }

    /// The first value any source has for `name`. A source that fails stops
    /// the search: a later source could hold a stale or different value.
    async fn lookup(&self, name: &str) -> Result<SecretValue, StepError> {
        for source in &self.0 {
            match source.lookup(name).await {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(err) => {
                    return Err(StepError::retryable(err.to_string()).with_code(SECRET_UNAVAILABLE));
                }
            }
        }
        let places: Vec<String> = self.0.iter().map(|s| s.describe(name)).collect();
        let looked = if places.is_empty() {
            "this worker has no secret sources".to_string()
        } else {
            format!("looked in: {}", places.join(", "))
        };
        Err(StepError::permanent(format!(
            "secret {name:?} is not set on this worker; {looked}"
        ))
        .with_code(SECRET_MISSING))
    }

    /// Builds every slot of a task into `input` from these sources, and
    /// returns what must be redacted afterwards. Text outside the slots is
    /// left alone.
    pub async fn resolve(
        &self,
        input: &mut Value,
        slots: &[SecretSlot],
    ) -> Result<Redactor, StepError> {
        let mut values: BTreeMap<String, SecretValue> = BTreeMap::new();
        let mut built = Vec::with_capacity(slots.len());
        for slot in slots {
            let mut text = String::new();
            for part in &slot.parts {
                match part {
                    SecretPart::Text(t) => text.push_str(t),
                    SecretPart::Secret(name) => {
                        // The name comes off the wire: it must not walk out
                        // of a secrets directory or name another variable.
                        if !is_valid_secret_name(name) {
                            return Err(StepError::permanent(format!(
                                "the task names secret {name:?}, which is not a valid secret \
                                 name ([A-Za-z_][A-Za-z0-9_]*)"
                            ))
                            .with_code(INVALID_SECRET_SLOT));
                        }
                        if !values.contains_key(name) {
                            let value = self.lookup(name).await?;
                            values.insert(name.clone(), value);
                        }
                        if let Some(value) = values.get(name) {
                            text.push_str(value.expose());
                        }
                    }
                }
            }
            built.push((slot.pointer.as_str(), text));
        }
        for (pointer, text) in built {
            match input.pointer_mut(pointer) {
                Some(target @ Value::String(_)) => *target = Value::String(text),
                _ => {
                    return Err(StepError::permanent(format!(
                        "the task's secret slot {pointer:?} does not point at a string of its input"
                    ))
                    .with_code(INVALID_SECRET_SLOT));
                }
            }
        }
        Ok(Redactor::new(values))
    }
}

/// Code of an attempt that names a secret no source has.
pub const SECRET_MISSING: &str = "secret_missing";
/// Code of an attempt whose secret source could not answer (retryable).
pub const SECRET_UNAVAILABLE: &str = "secret_unavailable";
/// Code of a task whose secret slots do not fit its input.
pub const INVALID_SECRET_SLOT: &str = "invalid_secret_slot";

/// Replaces the values resolved for one attempt by `[redacted:NAME]`.
#[derive(Debug, Default)]
pub struct Redactor {
    /// Longest value first, so a value containing another is replaced whole.
    values: Vec<(String, SecretValue)>,
}

impl Redactor {
    fn new(values: BTreeMap<String, SecretValue>) -> Self {
        let mut values: Vec<(String, SecretValue)> = values
            .into_iter()
            .filter(|(_, v)| !v.expose().is_empty())
            .collect();
        values.sort_by_key(|(_, v)| std::cmp::Reverse(v.expose().len()));
        Self { values }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every value replaced.
    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (name, value) in &self.values {
            if out.contains(value.expose()) {
                out = out.replace(value.expose(), &format!("[redacted:{name}]"));
            }
        }
        out
    }

    /// `value` with every string and object key redacted, at any depth.
    pub fn value(&self, value: Value) -> Value {
        if self.is_empty() {
            return value;
        }
        match value {
            Value::String(s) => Value::String(self.text(&s)),
            Value::Array(items) => Value::Array(items.into_iter().map(|v| self.value(v)).collect()),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (self.text(&k), self.value(v)))
                    .collect(),
            ),
            other => other,
        }
    }

    /// A failure's message and code, redacted.
    pub fn failure(&self, mut failure: StepFailure) -> StepFailure {
        if !self.is_empty() {
            failure.message = self.text(&failure.message);
            failure.code = failure.code.map(|c| self.text(&c));
        }
        failure
    }
}

#[cfg(test)]
mod tests;
