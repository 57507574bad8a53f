//! Worker progress: `started` and `heartbeat` reports.
//!
//! `started` moves the attempt to `running`, records which worker took it,
//! disarms its schedule-to-start timer and arms the attempt timeout (measured
//! from the start, plus a grace so a worker's own timeout report normally
//! wins) and, for steps with a `heartbeat_timeout`, the heartbeat timer.
//! A `heartbeat` pushes the heartbeat timer forward. Reports about attempts
//! that are no longer open are dropped: they cannot change anything.

use std::time::Duration;

use chrono::Utc;
use fulfil_spec::StepStatus;
use fulfil_spec::dag::CompensationStatus;
use fulfil_spec::wire::{Progress, ProgressMessage, TaskKind};
use serde_json::json;

use super::advance::{set_compensation, set_step};
use super::apply::{Applied, ApplyError, lock_attempt, stale_reason};
use super::event::{AttemptEvent, attempt_event};
use super::{CommitSummary, RunError};
use crate::Engine;
use sqlx::{Postgres, Transaction};

/// Added to an attempt's timeout before the engine declares it timed out:
/// the worker enforces the same timeout and reports it with more detail.
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(1);

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Applies one progress report in its own transaction.
pub async fn apply_progress(
    engine: &Engine,
    report: &ProgressMessage,
) -> Result<Applied, ApplyError> {
    let tx = engine.pool().begin().await?;
    let (applied, committed) = apply_progress_in(engine, tx, report).await?;
    engine.after_commit(committed.outbox_rows);
    Ok(applied)
}

/// Applies one progress report in `tx` (or a savepoint) and commits it.
pub async fn apply_progress_in<'a>(
    engine: &Engine,
    tx: Transaction<'a, Postgres>,
    report: &ProgressMessage,
) -> Result<(Applied, CommitSummary), ApplyError> {
    let actor = format!("worker:{}", report.worker_id);
    let (mut run, attempt) = lock_attempt(engine, tx, report.task_id, actor)
        .await?
        .ok_or(ApplyError::UnknownTask(report.task_id))?;
    if let Some(reason) = stale_reason(&run, &attempt) {
        let committed = run.commit().await?;
        return Ok((Applied::Ignored(reason), committed));
    }
    let kind = attempt.task_kind();
    let promise = run.promise.clone();
    let step = promise.step(&attempt.step_id).ok_or_else(|| {
        RunError::Corrupt(format!("step {} is not in the Promise", attempt.step_id))
    })?;
    let heartbeat_timeout = promise.heartbeat_timeout_of(step);
    let now = Utc::now();
    match report.progress {
        Progress::Started => {
            let timeout = match (kind, &step.compensate) {
                (TaskKind::Compensation, Some(c)) => promise.compensation_timeout_of(c),
                _ => promise.timeout_of(step),
            };
            sqlx::query(
                "UPDATE fulfil.attempts SET status = 'running', started_at = $2, worker = $3, heartbeat_at = $2
                 WHERE task_id = $1",
            )
            .bind(report.task_id)
            .bind(now)
            .bind(&report.worker_id)
            .execute(run.conn())
            .await?;
            match kind {
                TaskKind::Action => {
                    set_step(
                        &mut run,
                        &attempt.step_id,
                        StepStatus::Running,
                        None,
                        None,
                        None,
                    )
                    .await?;
                }
                TaskKind::Compensation => {
                    set_compensation(
                        &mut run,
                        &attempt.step_id,
                        CompensationStatus::Running,
                        None,
                        None,
                    )
                    .await?;
                }
            }
            // A redelivered task starts again on another worker: its clocks restart.
            run.clear_attempt_timers(report.task_id, None).await?;
            run.add_timer(
                "attempt_timeout",
                &attempt.step_id,
                Some(report.task_id),
                now + chrono_duration(timeout + TIMEOUT_GRACE),
            )
            .await?;
            if let Some(heartbeat) = heartbeat_timeout {
                run.add_timer(
                    "heartbeat_timeout",
                    &attempt.step_id,
                    Some(report.task_id),
                    now + chrono_duration(heartbeat),
                )
                .await?;
            }
            run.record(
                attempt_event(kind, AttemptEvent::Started),
                Some(&attempt.step_id),
                Some(attempt.attempt),
                json!({ "task_id": report.task_id, "worker": report.worker_id }),
            );
        }
        Progress::Heartbeat => {
            sqlx::query("UPDATE fulfil.attempts SET heartbeat_at = $2, heartbeat_details = $3 WHERE task_id = $1")
                .bind(report.task_id)
                .bind(now)
                .bind(&report.details)
                .execute(run.conn())
                .await?;
            if let Some(heartbeat) = heartbeat_timeout {
                run.clear_attempt_timers(report.task_id, Some("heartbeat_timeout"))
                    .await?;
                run.add_timer(
                    "heartbeat_timeout",
                    &attempt.step_id,
                    Some(report.task_id),
                    now + chrono_duration(heartbeat),
                )
                .await?;
            }
        }
    }
    let committed = run.commit().await?;
    Ok((Applied::Applied, committed))
}
