//! Applying a worker's result: at most once per task id.
//!
//! The attempt row is re-read under the run's row lock. Only an attempt that
//! is still open (`dispatched` or `running`) and is the current attempt of
//! its step (or of its compensation) accepts a result; a duplicate delivery,
//! a result for an attempt that timed out or was cancelled, or one that
//! arrives after the run ended, is recorded in history as `result.ignored`
//! and changes nothing else.

use fulfil_spec::StepStatus;
use fulfil_spec::dag::CompensationStatus;
use fulfil_spec::wire::{Outcome, ResultMessage, TaskKind};
use serde_json::json;
use uuid::Uuid;

use super::advance::{advance, attempt_failed, set_compensation, set_step};
use super::event::{self, AttemptEvent, attempt_event};
use super::{CommitSummary, RunError, RunTxn};
use crate::Engine;
use sqlx::{Postgres, Transaction};

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

/// Locks the run owning `task_id` in `tx` and reads the attempt; `None` if
/// unknown.
pub(super) async fn lock_attempt<'a>(
    engine: &Engine,
    tx: Transaction<'a, Postgres>,
    task_id: Uuid,
    actor: String,
) -> Result<Option<(RunTxn<'a>, AttemptRow)>, RunError> {
    RunTxn::lock_for_task(engine, tx, task_id, actor).await
}

/// An attempt row, read under the run lock.
pub(super) type AttemptRow = super::LockedAttempt;

/// Why a report about `attempt` must not change the run, if it must not.
pub(super) fn stale_reason(run: &RunTxn<'_>, attempt: &AttemptRow) -> Option<String> {
    let current = run
        .steps
        .get(&attempt.step_id)
        .map(|s| s.current_attempt(attempt.task_kind()));
    if !attempt.is_open() {
        Some(format!(
            "attempt {} is already {}",
            attempt.attempt, attempt.status
        ))
    } else if current != Some(attempt.attempt) {
        Some(format!(
            "attempt {} is stale; the current attempt is {}",
            attempt.attempt,
            current.unwrap_or(0)
        ))
    } else if run.status.is_terminal() {
        Some(format!("the run is already {}", run.status.as_str()))
    } else {
        None
    }
}

/// Applies `result` in its own transaction; see the module docs.
pub async fn apply_result(engine: &Engine, result: &ResultMessage) -> Result<Applied, ApplyError> {
    let tx = engine.pool().begin().await?;
    let (applied, committed) = apply_result_in(engine, tx, result).await?;
    engine.after_commit(committed.outbox_rows);
    Ok(applied)
}

/// Applies `result` in `tx` (a transaction or a savepoint of one) and
/// commits it. The caller hands the summary's outbox rows to
/// [`Engine::after_commit`] once the outermost transaction committed.
pub async fn apply_result_in<'a>(
    engine: &Engine,
    tx: Transaction<'a, Postgres>,
    result: &ResultMessage,
) -> Result<(Applied, CommitSummary), ApplyError> {
    let actor = format!("worker:{}", result.worker_id);
    let (mut run, attempt) = lock_attempt(engine, tx, result.task_id, actor)
        .await?
        .ok_or(ApplyError::UnknownTask(result.task_id))?;
    let kind = attempt.task_kind();
    let step_id = attempt.step_id.clone();
    if let Some(reason) = stale_reason(&run, &attempt) {
        run.record(
            event::RESULT_IGNORED,
            Some(&step_id),
            Some(attempt.attempt),
            json!({ "task_id": result.task_id, "kind": kind.as_str(), "reason": reason,
                    "worker": result.worker_id, "outcome": result.outcome }),
        );
        let committed = run.commit().await?;
        return Ok((Applied::Ignored(reason), committed));
    }
    // Only an attempt that reported its start, or waits under a
    // schedule-to-start limit, has timers armed.
    let may_have_timers = attempt.status == "running"
        || run
            .promise
            .step(&step_id)
            .is_some_and(|s| run.promise.schedule_to_start_of(s).is_some());
    if may_have_timers {
        run.clear_attempt_timers(result.task_id, None).await?;
    }

    let duration_ms = (result.finished_at - result.started_at).num_milliseconds();
    let (status, error) = match &result.outcome {
        Outcome::Ok { .. } => ("succeeded", None),
        Outcome::Error(failure) => (
            "failed",
            Some(serde_json::to_value(failure).map_err(|e| RunError::Corrupt(e.to_string()))?),
        ),
    };
    sqlx::query(
        "UPDATE fulfil.attempts SET status = $2, worker = $3, started_at = COALESCE(started_at, $4),
                finished_at = $5, error = $6
         WHERE task_id = $1",
    )
    .bind(result.task_id)
    .bind(status)
    .bind(&result.worker_id)
    .bind(result.started_at)
    .bind(result.finished_at)
    .bind(&error)
    .execute(run.conn())
    .await?;

    match &result.outcome {
        Outcome::Ok { output } => {
            match kind {
                TaskKind::Action => {
                    set_step(
                        &mut run,
                        &step_id,
                        StepStatus::Succeeded,
                        None,
                        Some(output.clone()),
                        None,
                    )
                    .await?;
                }
                TaskKind::Compensation => {
                    set_compensation(
                        &mut run,
                        &step_id,
                        CompensationStatus::Succeeded,
                        None,
                        None,
                    )
                    .await?;
                    set_step(
                        &mut run,
                        &step_id,
                        StepStatus::Compensated,
                        None,
                        None,
                        None,
                    )
                    .await?;
                    sqlx::query("UPDATE fulfil.steps SET compensation_outputs = $3 WHERE run_id = $1 AND step_id = $2")
                        .bind(run.run_id)
                        .bind(&step_id)
                        .bind(output)
                        .execute(run.conn())
                        .await?;
                }
            }
            run.record(
                attempt_event(kind, AttemptEvent::Succeeded),
                Some(&step_id),
                Some(attempt.attempt),
                json!({ "task_id": result.task_id, "worker": result.worker_id, "duration_ms": duration_ms,
                        "engine": engine.id() }),
            );
        }
        Outcome::Error(failure) => {
            attempt_failed(
                &mut run,
                &step_id,
                kind,
                attempt.attempt,
                failure,
                Some(&result.worker_id),
            )
            .await?;
        }
    }
    advance(&mut run).await?;
    let committed = run.commit().await?;
    Ok((Applied::Applied, committed))
}
