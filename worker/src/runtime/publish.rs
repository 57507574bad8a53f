//! What a worker tells the engine: results, stored before the task is acked,
//! and progress reports, sent best effort.
//!
//! A result is published with `Nats-Msg-Id` = task id through
//! `fulfil_bus::publish_with_retry`, so a retried or repeated publish is
//! stored once. A result too large for the server is replaced by a permanent
//! `result_too_large` failure, so a step can never wedge its task by
//! producing an unpublishable result. A lost progress report costs the
//! engine nothing but freshness, so its failures are only logged.

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use chrono::Utc;
use serde_json::Value;
use tracing::warn;

use fulfil_bus::{PublishError, publish_with_retry};
use fulfil_core::wire::{
    Outcome, Progress, ProgressMessage, ResultMessage, StepFailure, TaskMessage,
};

use super::Shared;

/// Room left for headers and protocol overhead when checking a result
/// against the server's maximum payload.
const PAYLOAD_MARGIN: usize = 4 * 1024;

/// Publishes a progress report, best effort: the engine tolerates a lost
/// one, so a failure is logged and the task goes on.
pub(super) async fn report_progress(
    shared: &Shared,
    task: &TaskMessage,
    progress: Progress,
    details: Option<Value>,
) {
    let report = ProgressMessage {
        task_id: task.task_id,
        run_id: task.run_id,
        step_id: task.step_id.clone(),
        attempt: task.attempt,
        worker_id: shared.worker_id.clone(),
        progress,
        at: Utc::now(),
        details,
    };
    let payload = match serde_json::to_vec(&report) {
        Ok(p) => Bytes::from(p),
        Err(err) => {
            warn!(error = %err, "cannot encode a progress report");
            return;
        }
    };
    // Not waiting for the stream's ack keeps the report off the step's path.
    if let Err(err) = shared
        .js
        .publish(shared.progress_subject.clone(), payload)
        .await
    {
        warn!(error = %err, ?progress, "progress report not sent");
    }
}

/// A result could not be stored.
#[derive(Debug, thiserror::Error)]
pub(super) enum PublishFailure {
    /// The message could not be encoded.
    #[error("cannot encode the result: {0}")]
    Encode(#[from] serde_json::Error),
    /// Every attempt failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Publishes `result` with `Nats-Msg-Id` = task id and waits for the stream
/// to store it. A result too large for the server is replaced by a permanent
/// `result_too_large` error, which always fits.
pub(super) async fn publish_result(
    shared: &Shared,
    mut result: ResultMessage,
) -> Result<(), PublishFailure> {
    let max_payload = shared
        .js
        .client()
        .server_info()
        .max_payload
        .saturating_sub(PAYLOAD_MARGIN);
    let mut payload = serde_json::to_vec(&result)?;
    if payload.len() > max_payload {
        warn!(
            bytes = payload.len(),
            max_payload, "result too large for the server; reporting an error instead"
        );
        result.outcome = Outcome::Error(StepFailure {
            message: format!(
                "the step's output is {} bytes, more than the {max_payload} bytes NATS accepts",
                payload.len()
            ),
            code: Some("result_too_large".into()),
            retryable: false,
            retry_after_ms: None,
        });
        payload = serde_json::to_vec(&result)?;
    }
    let payload = Bytes::from(payload);
    let message_id = result.task_id.to_string();
    publish_with_retry(&shared.js, &shared.results_subject, || {
        PublishMessage::build()
            .payload(payload.clone())
            .message_id(&message_id)
    })
    .await?;
    Ok(())
}
