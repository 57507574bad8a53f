//! Applying a worker's result: at most once per task id.
//!
//! The attempt row is re-read under the run's row lock. Only an attempt still
//! `dispatched` accepts a result; a duplicate delivery, or a result for an
//! attempt that is no longer current, is recorded in history as
//! `result.ignored` and changes nothing else.

use chrono::Utc;
use fulfil_spec::StepStatus;
use fulfil_spec::wire::{Outcome, ResultMessage};
use serde_json::json;
use uuid::Uuid;

use super::advance::{advance, fail_step, set_step};
use super::{RunError, RunTxn, event};
use crate::Engine;

/// Why a result could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// No attempt has this task id: the message is orphaned (dead-letter it).
    #[error("no attempt with task id {0}")]
    UnknownTask(Uuid),
    /// Applying failed and rolled back; the message should be redelivered.
    #[error(transparent)]
    Run(#[from] RunError),
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        Self::Run(RunError::Db(e))
    }
}

/// What applying did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The result changed the run.
    Applied,
    /// Recorded as ignored, with the reason.
    Ignored(String),
}

/// Applies `result` in one transaction; see the module docs.
pub async fn apply_result(engine: &Engine, result: &ResultMessage) -> Result<Applied, ApplyError> {
    let mut tx = engine.pool().begin().await?;
    let run_id: Option<Uuid> =
        sqlx::query_scalar("SELECT run_id FROM fulfil.attempts WHERE task_id = $1")
            .bind(result.task_id)
            .fetch_optional(&mut *tx)
            .await?;
    let run_id = run_id.ok_or(ApplyError::UnknownTask(result.task_id))?;
    let actor = format!("worker:{}", result.worker_id);
    let mut run = RunTxn::lock(engine, tx, run_id, actor)
        .await?
        .ok_or(ApplyError::UnknownTask(result.task_id))?;

    let (step_id, attempt, status): (String, i32, String) =
        sqlx::query_as("SELECT step_id, attempt, status FROM fulfil.attempts WHERE task_id = $1")
            .bind(result.task_id)
            .fetch_one(run.conn())
            .await?;
    let current_attempt = run.steps.get(&step_id).map(|s| s.attempt);
    let ignore_reason = if status != "dispatched" {
        Some(format!("attempt {attempt} already finished as {status}"))
    } else if current_attempt != Some(attempt) {
        Some(format!(
            "attempt {attempt} is stale; the step is on attempt {}",
            current_attempt.unwrap_or(0)
        ))
    } else if run.status.is_terminal() {
        Some(format!("run already {}", run.status.as_str()))
    } else {
        None
    };
    if let Some(reason) = ignore_reason {
        run.record(
            event::RESULT_IGNORED,
            Some(&step_id),
            Some(attempt),
            json!({ "task_id": result.task_id, "reason": reason, "worker": result.worker_id }),
        );
        run.commit().await?;
        return Ok(Applied::Ignored(reason));
    }

    let duration_ms = (result.finished_at - result.started_at).num_milliseconds();
    match &result.outcome {
        Outcome::Ok { output } => {
            finish_attempt(&mut run, result, "succeeded", None).await?;
            set_step(
                &mut run,
                &step_id,
                StepStatus::Succeeded,
                attempt,
                Some(output.clone()),
                None,
            )
            .await?;
            run.record(
                event::STEP_SUCCEEDED,
                Some(&step_id),
                Some(attempt),
                json!({ "task_id": result.task_id, "worker": result.worker_id, "duration_ms": duration_ms,
                        "engine": engine.id() }),
            );
        }
        Outcome::Error(failure) => {
            let error =
                serde_json::to_value(failure).map_err(|e| RunError::Corrupt(e.to_string()))?;
            finish_attempt(&mut run, result, "failed", Some(error.clone())).await?;
            let promise = run.promise.clone();
            let policy = promise
                .step(&step_id)
                .map(|s| promise.retry_of(s))
                .unwrap_or(fulfil_spec::RetryPolicy::NONE);
            if failure.retryable && (attempt as u32) < policy.max_attempts {
                let mut delay = policy.backoff(attempt as u32 + 1);
                if let Some(after) = failure.retry_after_ms {
                    delay = delay.max(std::time::Duration::from_millis(after));
                }
                let fire_at =
                    Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                sqlx::query("INSERT INTO fulfil.timers (run_id, step_id, kind, fire_at) VALUES ($1, $2, 'retry', $3)")
                    .bind(run.run_id)
                    .bind(&step_id)
                    .bind(fire_at)
                    .execute(run.conn())
                    .await?;
                set_step(
                    &mut run,
                    &step_id,
                    StepStatus::Retrying,
                    attempt,
                    None,
                    Some(&failure.message),
                )
                .await?;
                run.record(
                    event::STEP_RETRY_SCHEDULED,
                    Some(&step_id),
                    Some(attempt),
                    json!({ "error": error, "worker": result.worker_id, "next_attempt": attempt + 1,
                            "delay_ms": delay.as_millis() as u64, "fire_at": fire_at }),
                );
            } else {
                let code = failure.code.as_deref().unwrap_or("step_error");
                let message = if failure.retryable {
                    format!("{} (gave up after {attempt} attempt(s))", failure.message)
                } else {
                    failure.message.clone()
                };
                fail_step(&mut run, &step_id, attempt, code, &message).await?;
            }
        }
    }
    advance(&mut run).await?;
    run.commit().await?;
    Ok(Applied::Applied)
}

async fn finish_attempt(
    run: &mut RunTxn<'_>,
    result: &ResultMessage,
    status: &str,
    error: Option<serde_json::Value>,
) -> Result<(), RunError> {
    sqlx::query(
        "UPDATE fulfil.attempts SET status = $2, worker = $3, started_at = $4, finished_at = $5, error = $6
         WHERE task_id = $1",
    )
    .bind(result.task_id)
    .bind(status)
    .bind(&result.worker_id)
    .bind(result.started_at)
    .bind(result.finished_at)
    .bind(error)
    .execute(run.conn())
    .await?;
    Ok(())
}
