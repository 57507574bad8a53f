//! The [`Handler`] trait step implementations provide, the [`StepError`] they
//! fail with, and the [`Handlers`] registry a worker dispatches by name.
//!
//! Contract for handler authors:
//!
//! * Delivery is **at least once**. The same attempt may run more than once
//!   (a worker crashed after the side effect but before its result was
//!   published, or the result was published but the task ack was lost), and
//!   later attempts of the same step run the same side effect again. Use
//!   [`TaskContext::idempotency_key`], which is stable for the step across
//!   attempts, to make side effects idempotent (for example as a provider's
//!   request token).
//! * A handler must finish before [`TaskContext::deadline`]; the runtime stops
//!   waiting at the deadline, drops the handler's future and reports a
//!   retryable `timeout` error.
//! * The error says what happens next: [`RetryDecision::Retryable`],
//!   [`RetryDecision::Permanent`] or [`RetryDecision::RetryAfter`]. The engine
//!   still applies the step's retry policy (attempt limit, backoff); a
//!   permanent error ends the step at once.

use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fulfil_core::ids::{RunId, StepId, TaskId};
use fulfil_core::time;
use fulfil_core::wire::{StepFailure, TaskMessage};
use serde_json::Value;

/// A named step implementation: `uses: <name>` in a Promise resolves to one.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt of a step. `input` is the step's `with`, every
    /// `${{ }}` expression already rendered; the returned value becomes
    /// `steps.<id>.outputs`.
    async fn handle(&self, task: &TaskContext, input: Value) -> Result<Value, StepError>;
}

/// Forwards a running handler's heartbeats to the engine.
#[derive(Clone, Default)]
pub struct Heartbeat(Option<tokio::sync::mpsc::UnboundedSender<Option<Value>>>);

impl Heartbeat {
    pub(crate) fn new(sender: tokio::sync::mpsc::UnboundedSender<Option<Value>>) -> Self {
        Self(Some(sender))
    }
}

impl fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Heartbeat(connected)"
        } else {
            "Heartbeat(none)"
        })
    }
}

impl PartialEq for Heartbeat {
    /// Heartbeat channels carry no data worth comparing.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What a handler knows about the attempt it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskContext {
    /// Unique per (run, step, attempt).
    pub task_id: TaskId,
    pub run_id: RunId,
    pub step_id: StepId,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The handler name the task asked for.
    pub handler: String,
    /// Stable for the step across attempts.
    pub idempotency_key: String,
    /// The runtime gives up on the attempt at this instant.
    pub deadline: DateTime<Utc>,
    /// W3C `traceparent` of the engine span that dispatched the task.
    pub traceparent: Option<String>,
    /// Set when the step has a `heartbeat_timeout`: call
    /// [`TaskContext::heartbeat`] more often than that.
    pub heartbeat_timeout: Option<Duration>,
    heartbeat: Heartbeat,
}

impl TaskContext {
    /// The context of `task`, starting now: the deadline is the task's
    /// absolute deadline or now + its timeout, whichever comes first.
    pub fn from_task(task: &TaskMessage) -> Self {
        // Both durations come off the wire: clamped, and the deadline
        // saturates, so no value a task carries can panic the worker.
        let deadline = match task.timeout_ms {
            Some(ms) => task
                .deadline
                .min(time::deadline_after(Utc::now(), time::clamp_millis(ms))),
            None => task.deadline,
        };
        Self {
            task_id: task.task_id,
            run_id: task.run_id,
            step_id: task.step_id.clone(),
            attempt: task.attempt,
            handler: task.handler.clone(),
            idempotency_key: task.idempotency_key.clone(),
            deadline,
            traceparent: task.traceparent.clone(),
            heartbeat_timeout: task.heartbeat_timeout_ms.map(time::clamp_millis),
            heartbeat: Heartbeat::default(),
        }
    }

    pub(crate) fn with_heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Tells the engine the handler is alive (and keeps the task from being
    /// redelivered), with optional progress details shown to operators.
    /// Cheap: the runtime forwards at most a few per heartbeat timeout.
    pub fn heartbeat(&self, details: Option<Value>) {
        if let Some(sender) = &self.heartbeat.0 {
            let _ = sender.send(details);
        }
    }

    /// Time left until the deadline; zero once it has passed.
    pub fn remaining(&self) -> Duration {
        (self.deadline - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
    }
}

/// Whether another attempt of a failed step may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// A transient failure: retry according to the step's retry policy.
    Retryable,
    /// Retrying cannot help (bad input, refused by the provider): fail the
    /// step now.
    Permanent,
    /// Retryable, but not before this delay (for example from `Retry-After`).
    RetryAfter(Duration),
}

/// A failed attempt: what went wrong, a stable code, and whether to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", .code.as_ref().map(|code| format!(" [{code}]")).unwrap_or_default())]
pub struct StepError {
    message: String,
    code: Option<String>,
    decision: RetryDecision,
}

impl StepError {
    /// A transient failure the step's retry policy may retry.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(message, RetryDecision::Retryable)
    }

    /// A failure no retry can fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(message, RetryDecision::Permanent)
    }

    /// A transient failure that should not be retried before `after`.
    pub fn retry_after(message: impl Into<String>, after: Duration) -> Self {
        Self::new(message, RetryDecision::RetryAfter(after))
    }

    /// A failure with an explicit decision.
    pub fn new(message: impl Into<String>, decision: RetryDecision) -> Self {
        Self {
            message: message.into(),
            code: None,
            decision,
        }
    }

    /// Attaches a stable, searchable code such as `http_status_503`.
    #[must_use]
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    pub fn decision(&self) -> RetryDecision {
        self.decision
    }

    /// True unless the error is [`RetryDecision::Permanent`].
    pub fn is_retryable(&self) -> bool {
        self.decision != RetryDecision::Permanent
    }

    /// The `invalid_input` error for a handler's input, naming the field.
    pub fn invalid_input(field: &str, problem: impl fmt::Display) -> Self {
        let message = if field.is_empty() || field == "." {
            format!("invalid input: {problem}")
        } else {
            format!("invalid input at `{field}`: {problem}")
        };
        Self::permanent(message).with_code("invalid_input")
    }
}

/// Deserializes a handler's input, turning a mismatch into the permanent
/// `invalid_input` error that names the offending field.
pub fn parse_input<T: serde::de::DeserializeOwned>(input: Value) -> Result<T, StepError> {
    serde_path_to_error::deserialize(input).map_err(|err| {
        let field = err.path().to_string();
        StepError::invalid_input(&field, err.into_inner())
    })
}

impl From<StepError> for StepFailure {
    fn from(err: StepError) -> Self {
        let (retryable, retry_after_ms) = match err.decision {
            RetryDecision::Retryable => (true, None),
            RetryDecision::Permanent => (false, None),
            RetryDecision::RetryAfter(after) => (true, Some(time::as_millis_u64(after))),
        };
        StepFailure {
            message: err.message,
            code: err.code,
            retryable,
            retry_after_ms,
        }
    }
}

/// Handlers by name. Cheap to clone: handlers are shared.
#[derive(Clone, Default)]
pub struct Handlers {
    by_name: BTreeMap<String, Arc<dyn Handler>>,
}

impl Handlers {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding the built-in handlers: `noop`, `echo`, `http`,
    /// `nats.publish` (which publishes with `nats`), `git.commit`,
    /// `git.remove`, and `exec` allowing no command (register
    /// [`Exec::new`](crate::builtin::Exec::new) with an allow-list to
    /// replace it).
    pub fn with_builtins(nats: async_nats::Client) -> Self {
        let mut handlers = Self::new();
        crate::builtin::register_all(&mut handlers, nats);
        handlers
    }

    /// Registers `handler` under `name`, replacing any handler of that name.
    pub fn register(&mut self, name: impl Into<String>, handler: impl Handler) -> &mut Self {
        self.by_name.insert(name.into(), Arc::new(handler));
        self
    }

    /// The handler registered under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Handler>> {
        self.by_name.get(name).cloned()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The handler registered under `name`, or the permanent
    /// `unknown_handler` error naming it and the handlers this worker has.
    pub fn resolve(&self, name: &str) -> Result<Arc<dyn Handler>, StepError> {
        self.get(name).ok_or_else(|| {
            let known = self.names().collect::<Vec<_>>().join(", ");
            StepError::permanent(format!(
                "no handler named {name:?} on this worker; known handlers: [{known}]"
            ))
            .with_code("unknown_handler")
        })
    }
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    #[async_trait]
    impl Handler for Fixed {
        async fn handle(&self, _: &TaskContext, _: Value) -> Result<Value, StepError> {
            Ok(Value::Bool(true))
        }
    }

    #[test]
    fn step_error_maps_decision_onto_the_wire() {
        let failure = StepFailure::from(StepError::permanent("bad").with_code("invalid_input"));
        assert_eq!(
            failure,
            StepFailure {
                message: "bad".into(),
                code: Some("invalid_input".into()),
                retryable: false,
                retry_after_ms: None,
            }
        );

        let failure = StepFailure::from(StepError::retryable("flaky"));
        assert!(failure.retryable);
        assert_eq!(failure.code, None);
        assert_eq!(failure.retry_after_ms, None);

        let err = StepError::retry_after("slow down", Duration::from_millis(1500))
            .with_code("http_status_429");
        assert!(err.is_retryable());
        assert_eq!(err.to_string(), "slow down [http_status_429]");
        let failure = StepFailure::from(err);
        assert!(failure.retryable);
        assert_eq!(failure.retry_after_ms, Some(1500));

        let huge = StepFailure::from(StepError::retry_after("x", Duration::MAX));
        assert_eq!(huge.retry_after_ms, Some(u64::MAX));

        let err = StepError::invalid_input("url", "missing");
        assert_eq!(err.code(), Some("invalid_input"));
        assert_eq!(err.decision(), RetryDecision::Permanent);
        assert!(err.message().contains("`url`"), "{}", err.message());
    }

    #[test]
    fn durations_off_the_wire_are_clamped_not_panicking() {
        let deadline = Utc::now() + chrono::Duration::seconds(60);
        let task = TaskMessage {
            task_id: TaskId::generate(),
            run_id: RunId::generate(),
            step_id: "s".into(),
            attempt: 1,
            handler: "h".into(),
            input: Value::Null,
            idempotency_key: "k".into(),
            deadline,
            traceparent: None,
            kind: Default::default(),
            timeout_ms: Some(u64::MAX),
            heartbeat_timeout_ms: Some(u64::MAX),
            secrets: Vec::new(),
        };
        let ctx = TaskContext::from_task(&task);
        assert_eq!(ctx.deadline, deadline, "the absolute deadline is nearer");
        assert_eq!(ctx.heartbeat_timeout, Some(time::MAX_DURATION));
        let far = TaskMessage {
            deadline: DateTime::<Utc>::MAX_UTC,
            ..task
        };
        let ctx = TaskContext::from_task(&far);
        assert!(ctx.deadline < DateTime::<Utc>::MAX_UTC);
        assert!(ctx.remaining() <= time::MAX_DURATION);
    }

    #[test]
    fn unknown_handler_is_permanent_and_names_known_ones() {
        let mut handlers = Handlers::new();
        handlers.register("b", Fixed).register("a", Fixed);
        assert!(handlers.get("a").is_some());
        assert_eq!(handlers.names().collect::<Vec<_>>(), ["a", "b"]);

        let err = handlers.resolve("nope").err().expect("unknown handler");
        assert_eq!(err.code(), Some("unknown_handler"));
        assert!(!err.is_retryable());
        assert!(err.message().contains("\"nope\""), "{}", err.message());
        assert!(err.message().contains("[a, b]"), "{}", err.message());
    }
}
