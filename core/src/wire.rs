//! Wire messages exchanged over NATS JetStream, and the names of the subjects,
//! streams and consumers they travel on.
//!
//! These types are the whole contract between the engine and a worker; a worker
//! in another language only needs `docs/wire.md`, which describes the same JSON.
//!
//! * A [`TaskMessage`] is published on `<prefix>.tasks.<queue>` with the header
//!   `Nats-Msg-Id` set to its task id, so a republish after a crash is
//!   deduplicated by the stream.
//! * A [`ResultMessage`] is published on `<prefix>.results`. The engine applies
//!   a result at most once, keyed by its task id; a result for an attempt that
//!   is no longer current is recorded in the run's history and otherwise ignored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{RunId, StepId, TaskId};

/// One attempt of one step, handed to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    /// Unique per (run, step, attempt); the key results are applied by.
    pub task_id: TaskId,
    pub run_id: RunId,
    pub step_id: StepId,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Handler name from the step's `uses`.
    pub handler: String,
    /// The step's `with`, every `${{ }}` expression already rendered.
    pub input: Value,
    /// The worker gives up on the attempt at this instant and reports a
    /// retryable `timeout` error.
    pub deadline: DateTime<Utc>,
    /// Stable for the step across attempts, so a handler can make its side
    /// effect idempotent (for example as the provider's request token).
    pub idempotency_key: String,
    /// W3C `traceparent` of the engine span that dispatched the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The step's action, or the compensation that undoes it.
    #[serde(default, skip_serializing_if = "TaskKind::is_action")]
    pub kind: TaskKind,
    /// Per-attempt timeout measured from the worker's start; the worker stops
    /// at `min(deadline, start + timeout_ms)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// When set, the handler must heartbeat at least this often, and the
    /// worker forwards heartbeats to the engine as [`ProgressMessage`]s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// The strings of `input` the Promise wrote with `${{ secrets.NAME }}`,
    /// and how the worker builds each one from its own secret sources. Only
    /// these are resolved: a `${{ secrets.x }}` anywhere else in `input`
    /// came from a requester's `params` (or a step's output) and is plain
    /// text, so resolving it would hand a secret to whoever wrote it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretSlot>,
}

/// A string of a task's `input` that holds secret references.
///
/// `input` carries the display text (`Bearer ${{ secrets.api_token }}`);
/// the worker replaces the string at `pointer` by `parts` joined, each
/// secret part looked up in its own sources. No engine ever sees a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretSlot {
    /// RFC 6901 JSON pointer to the string inside `input` (`""` is the
    /// whole input; `~` and `/` in keys are written `~0` and `~1`).
    pub pointer: String,
    /// The string's pieces, in order.
    pub parts: Vec<SecretPart>,
}

/// A piece of a [`SecretSlot`]'s string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretPart {
    /// Rendered text around the references, used verbatim: never
    /// interpreted, even if it looks like `${{ secrets.x }}`.
    Text(String),
    /// The value of the secret with this name.
    Secret(String),
}

/// Whether `name` is a valid secret name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_valid_secret_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub use crate::status::TaskKind;

/// A worker's report that an attempt started, or is still alive, published
/// on `<prefix>.progress`. Best effort: the engine copes with lost ones
/// (a lost `started` only delays the attempt's timeout clock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressMessage {
    pub task_id: TaskId,
    pub run_id: RunId,
    pub step_id: StepId,
    pub attempt: u32,
    pub worker_id: String,
    pub progress: Progress,
    pub at: DateTime<Utc>,
    /// Whatever the handler reported with its heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// Kind of [`ProgressMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    Started,
    Heartbeat,
}

/// What a worker reports once a handler has finished with a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMessage {
    pub task_id: TaskId,
    /// Copied from the task, for dead-lettering and debugging; the engine
    /// trusts only `task_id`.
    pub run_id: RunId,
    pub step_id: StepId,
    pub attempt: u32,
    /// Free-form identity of the worker process, shown to operators.
    pub worker_id: String,
    pub outcome: Outcome,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// How a handler finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The step succeeded; `output` becomes `steps.<id>.outputs`.
    Ok {
        #[serde(default)]
        output: Value,
    },
    /// The attempt failed.
    Error(StepFailure),
}

/// A failed attempt, carrying the handler's decision about retrying.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepFailure {
    pub message: String,
    /// Stable, searchable code such as `http_status_503`, `timeout`,
    /// `unknown_handler`, `invalid_input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// When retryable, the earliest time the handler wants the next attempt,
    /// in milliseconds from `finished_at` (for example from `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// The queue a step runs on when it does not name one.
pub const DEFAULT_QUEUE: &str = "default";

/// Queue names share the subject-token rules of prefixes.
pub fn is_valid_queue_name(queue: &str) -> bool {
    !queue.is_empty()
        && queue
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids are newtypes, but the JSON is what docs/wire.md describes:
    /// plain strings, byte for byte.
    #[test]
    fn typed_ids_keep_the_wire_json() {
        let task_id = "0190a0b0-0000-7000-8000-000000000001";
        let run_id = "0190a0b0-0000-7000-8000-000000000002";
        let text = format!(
            r#"{{"task_id":"{task_id}","run_id":"{run_id}","step_id":"provision","attempt":1,"worker_id":"w","outcome":{{"status":"ok","output":null}},"started_at":"2026-01-01T00:00:00Z","finished_at":"2026-01-01T00:00:01Z"}}"#
        );
        let result: ResultMessage = serde_json::from_str(&text).unwrap();
        assert_eq!(result.task_id.to_string(), task_id);
        assert_eq!(result.run_id.to_string(), run_id);
        assert_eq!(result.step_id, "provision");
        assert_eq!(serde_json::to_string(&result).unwrap(), text);
    }

    #[test]
    fn secret_slots_are_externally_tagged_and_omitted_when_empty() {
        let slot = SecretSlot {
            pointer: "/headers/authorization".into(),
            parts: vec![
                SecretPart::Text("Bearer ".into()),
                SecretPart::Secret("api_token".into()),
            ],
        };
        assert_eq!(
            serde_json::to_value(&slot).unwrap(),
            serde_json::json!({"pointer": "/headers/authorization",
                "parts": [{"text": "Bearer "}, {"secret": "api_token"}]})
        );
        assert!(is_valid_secret_name("_a1"));
        assert!(!is_valid_secret_name("1a"));
        assert!(!is_valid_secret_name("a-b"));
        assert!(!is_valid_secret_name(""));
    }

    #[test]
    fn outcome_json_is_tagged_by_status() {
        let ok = serde_json::to_value(Outcome::Ok {
            output: serde_json::json!({"a": 1}),
        })
        .unwrap();
        assert_eq!(ok, serde_json::json!({"status": "ok", "output": {"a": 1}}));
        let err: Outcome = serde_json::from_value(serde_json::json!({
            "status": "error", "message": "boom", "retryable": true
        }))
        .unwrap();
        assert_eq!(
            err,
            Outcome::Error(StepFailure {
                message: "boom".into(),
                code: None,
                retryable: true,
                retry_after_ms: None
            })
        );
    }
}
