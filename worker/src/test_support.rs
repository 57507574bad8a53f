//! What the worker's unit tests share: a task as the engine would send it.

use chrono::Utc;
use fulfil_core::ids::{RunId, TaskId};
use fulfil_core::wire::TaskMessage;
use serde_json::Value;

/// The first attempt of step `step` for `handler`, due `deadline_in` from
/// now, with no input; its idempotency key is `<step>-key`.
pub(crate) fn task_message(
    handler: &str,
    step: &str,
    deadline_in: chrono::Duration,
) -> TaskMessage {
    TaskMessage {
        task_id: TaskId::generate(),
        run_id: RunId::generate(),
        step_id: step.into(),
        attempt: 1,
        handler: handler.into(),
        input: Value::Null,
        deadline: Utc::now() + deadline_in,
        idempotency_key: format!("{step}-key"),
        traceparent: None,
        kind: Default::default(),
        timeout_ms: None,
        heartbeat_timeout_ms: None,
        secrets: Vec::new(),
    }
}
