//! Status events: what a history event of a status kind publishes, and the
//! CloudEvent that carries it (DESIGN.md "Events"; docs/wire.md "Status
//! events").
//!
//! Contract: one status event per committed history event of a status kind
//! ([`StatusEventKind::for_history`]), with the CloudEvent extension
//! `fulfilseq` equal to that history event's `seq`. `data` is fixed when the
//! history event is recorded, from the run as it stands then; the envelope
//! (id, time, `fulfilseq`) is added by the flush, the only place that knows
//! the sequence number.

use chrono::Utc;
use fulfil_core::status::StatusEventKind;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::PendingStatus;
use crate::run::Run;

/// A status event ready for `fulfil.status_outbox`.
#[derive(Debug, Clone)]
pub(crate) struct StatusMessage {
    pub kind: StatusEventKind,
    pub subject: String,
    /// The CloudEvent `id`, also its `Nats-Msg-Id`.
    pub msg_id: String,
    /// The CloudEvent, structured mode.
    pub payload: Value,
}

/// The `data` of a status event of `kind`, recorded with history event
/// `history` (the `data` of the history event) about step `step_id`.
///
/// `status` is the step's status for step events and the run's for run and
/// request events; `actor` is the history event's actor; `outputs` and `error` appear where they apply, taken from
/// the step row or from the history event that ended the run.
pub(crate) fn status_data(
    run: &Run,
    kind: StatusEventKind,
    step_id: Option<&str>,
    history: &Value,
) -> Value {
    let mut data = Map::new();
    data.insert("request_id".into(), json!(run.request_id));
    data.insert("run_id".into(), json!(run.run_id));
    data.insert("run_kind".into(), json!(run.kind));
    data.insert("promise".into(), json!(run.promise.metadata.name));
    data.insert(
        "promise_version".into(),
        json!(run.promise.metadata.version),
    );
    // Who caused it: the history event's actor (a principal id for an API
    // action, `engine`, `worker:<id>`, `event:<source>` otherwise).
    data.insert("actor".into(), json!(run.actor));
    let step = step_id.and_then(|id| run.steps.get(id));
    if kind.is_about_a_step() {
        data.insert("step".into(), json!(step_id));
        data.insert("status".into(), json!(step.map(|row| row.status)));
    } else {
        data.insert("status".into(), json!(run.status));
    }
    use StatusEventKind::*;
    match kind {
        StepSucceeded => {
            data.insert(
                "outputs".into(),
                json!(step.and_then(|r| r.outputs.clone())),
            );
        }
        StepFailed => {
            let message = history
                .get("message")
                .cloned()
                .or_else(|| step.and_then(|r| r.error.clone()).map(Value::String));
            data.insert("error".into(), message.unwrap_or(Value::Null));
            if let Some(code) = history.get("code") {
                data.insert("error_code".into(), code.clone());
            }
        }
        RunSucceeded => {
            data.insert(
                "outputs".into(),
                history.get("outputs").cloned().unwrap_or(Value::Null),
            );
        }
        RunFailed | RunCompensated | RunCancelled | RequestDeleteFailed => {
            let error = history
                .get("error")
                .filter(|e| !e.is_null())
                .cloned()
                .or_else(|| run.stop_reason.clone().map(Value::String));
            data.insert("error".into(), error.unwrap_or(Value::Null));
        }
        StepWaiting => {
            data.insert(
                "waiting_for".into(),
                history.get("waiting_for").cloned().unwrap_or(Value::Null),
            );
        }
        RequestAccepted | RunStarted | StepStarted | RequestDeleted => {}
    }
    Value::Object(data)
}

/// The status event `status` of `run`, numbered `seq` in the run's
/// history: a CloudEvent 1.0 in structured mode, on
/// `<prefix>.events.<kind>`, carrying the run's `traceparent` (from the
/// inbound event that filed its request) when it has one.
pub(crate) fn envelope(run: &Run, status: PendingStatus, seq: i64) -> StatusMessage {
    let id = Uuid::now_v7();
    let mut event = json!({
        "specversion": "1.0",
        "id": id,
        "source": format!("fulfil/{}", run.names.prefix()),
        "type": format!("dev.fulfil.{}", status.kind),
        "subject": run.run_id,
        "time": Utc::now(),
        "datacontenttype": "application/json",
        "fulfilseq": seq,
        "data": status.data,
    });
    if let Some(traceparent) = traceparent(run) {
        event["traceparent"] = json!(traceparent);
    }
    StatusMessage {
        kind: status.kind,
        subject: run.names.event_subject(status.kind.as_str()),
        msg_id: id.to_string(),
        payload: event,
    }
}

/// The W3C `traceparent` the run was filed with (`request.traceparent` in
/// its context), if any.
fn traceparent(run: &Run) -> Option<&str> {
    run.context
        .get("request")?
        .get("traceparent")?
        .as_str()
        .filter(|t| !t.is_empty())
}
