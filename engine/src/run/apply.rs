//! Applying worker reports (results and progress): at most once per task id,
//! a whole batch at a time.
//!
//! [`ReportBatch::apply`] locks every run the batch touches in one statement,
//! reads their steps and the reported attempts, applies each report to the
//! runs in memory, and stores every change in one flush: a fixed number of
//! round trips per batch, whatever its size.
//!
//! The attempt is read under the run's lock. Only an attempt that is still
//! open (`dispatched` or `running`) and is the current attempt of its step
//! (or of its compensation) accepts a result; a duplicate delivery, a result
//! for an attempt that timed out or was cancelled, or one that arrives after
//! the run ended, is recorded in history as `result.ignored` and changes
//! nothing else.

use std::collections::HashMap;

use fulfil_spec::StepStatus;
use fulfil_spec::dag::CompensationStatus;
use fulfil_spec::wire::{Outcome, ProgressMessage, ResultMessage, TaskKind};
use serde_json::json;
use sqlx::PgConnection;
use tracing::{debug, info_span, trace};
use uuid::Uuid;

use super::advance::{advance, attempt_failed, set_compensation, set_step};
use super::event::{self, AttemptEvent, attempt_event};
use super::load::{LockedAttempt, lock_runs_of_tasks};
use super::{AttemptUpdate, Run, RunError, flush};
use crate::Engine;
use crate::outbox::OutboxRow;

/// Why one report could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// No attempt has this task id: the message is orphaned (dead-letter it).
    #[error("no attempt with task id {0}")]
    UnknownTask(Uuid),
    /// Applying failed and was undone; the message should be redelivered.
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
    /// The report changed the run.
    Applied,
    /// Recorded as ignored, with the reason.
    Ignored(String),
}

/// A report from a worker about one attempt.
#[derive(Debug, Clone)]
pub enum Report {
    Result(ResultMessage),
    Progress(ProgressMessage),
}

impl Report {
    pub fn task_id(&self) -> Uuid {
        match self {
            Report::Result(r) => r.task_id,
            Report::Progress(p) => p.task_id,
        }
    }

    fn worker_id(&self) -> &str {
        match self {
            Report::Result(r) => &r.worker_id,
            Report::Progress(p) => &p.worker_id,
        }
    }
}

/// Reports applied together in one transaction (group commit).
pub struct ReportBatch<'a> {
    pub reports: &'a [Report],
}

/// What a batch did: one outcome per report, in order, and the outbox rows
/// to hand to [`Engine::after_commit`] once the transaction committed.
pub struct BatchOutcome {
    pub outcomes: Vec<Result<Applied, ApplyError>>,
    pub outbox_rows: Vec<OutboxRow>,
}

impl ReportBatch<'_> {
    /// Applies every report on `conn`, inside a transaction the caller
    /// commits. A report that cannot be applied (its run's state is corrupt,
    /// its task is unknown) gets an error outcome and leaves its run as it
    /// was; the others still apply. An `Err` means Postgres failed and the
    /// transaction must be rolled back.
    pub async fn apply(
        &self,
        engine: &Engine,
        conn: &mut PgConnection,
    ) -> Result<BatchOutcome, RunError> {
        let mut task_ids: Vec<Uuid> = self.reports.iter().map(Report::task_id).collect();
        task_ids.sort_unstable();
        task_ids.dedup();
        let started = std::time::Instant::now();
        let (mut runs, mut attempts) = lock_runs_of_tasks(engine, conn, &task_ids).await?;
        let loaded = started.elapsed();
        let outcomes = self
            .reports
            .iter()
            .map(|report| apply_one(engine, &mut runs, &mut attempts, report))
            .collect();
        let decided = started.elapsed();
        let mut runs: Vec<Run> = runs.into_values().collect();
        let outbox_rows = flush(conn, &mut runs).await?;
        trace!(
            lock_and_read_us = loaded.as_micros() as u64,
            decide_us = (decided - loaded).as_micros() as u64,
            flush_us = (started.elapsed() - decided).as_micros() as u64,
            "batch decided and written"
        );
        Ok(BatchOutcome {
            outcomes,
            outbox_rows,
        })
    }
}

/// Applies one report to its run in memory; on failure the run and the
/// attempt are restored to what they were before it.
fn apply_one(
    engine: &Engine,
    runs: &mut HashMap<Uuid, Run>,
    attempts: &mut HashMap<Uuid, LockedAttempt>,
    report: &Report,
) -> Result<Applied, ApplyError> {
    let task_id = report.task_id();
    let attempt = attempts
        .get_mut(&task_id)
        .ok_or(ApplyError::UnknownTask(task_id))?;
    let run = runs
        .get_mut(&attempt.run_id)
        .ok_or(ApplyError::UnknownTask(task_id))?;
    let _span = info_span!("apply_report", run_id = %run.run_id, step_id = %attempt.step_id,
                           attempt = attempt.attempt, %task_id)
    .entered();
    run.actor = format!("worker:{}", report.worker_id());
    let run_before = run.clone();
    let attempt_before = attempt.clone();
    let outcome = match report {
        Report::Result(result) => apply_result_to(engine, run, attempt, result),
        Report::Progress(progress) => super::progress::apply_progress_to(run, attempt, progress),
    };
    if outcome.is_err() {
        *run = run_before;
        *attempt = attempt_before;
    }
    Ok(outcome?)
}

/// Applies `result` in its own transaction.
pub async fn apply_result(engine: &Engine, result: &ResultMessage) -> Result<Applied, ApplyError> {
    apply_single(engine, Report::Result(result.clone())).await
}

/// Applies one progress report in its own transaction.
pub async fn apply_progress(
    engine: &Engine,
    report: &ProgressMessage,
) -> Result<Applied, ApplyError> {
    apply_single(engine, Report::Progress(report.clone())).await
}

/// Applies one report in its own transaction.
pub async fn apply_single(engine: &Engine, report: Report) -> Result<Applied, ApplyError> {
    let reports = [report];
    apply_committed(engine, &reports)
        .await?
        .pop()
        .unwrap_or(Err(ApplyError::UnknownTask(reports[0].task_id())))
}

/// Applies `reports` in one transaction, commits it and hands its outbox
/// rows on; one outcome per report.
pub async fn apply_committed(
    engine: &Engine,
    reports: &[Report],
) -> Result<Vec<Result<Applied, ApplyError>>, RunError> {
    let started = std::time::Instant::now();
    let mut tx = engine.pool().begin().await?;
    let begun = started.elapsed();
    let done = ReportBatch { reports }.apply(engine, &mut tx).await?;
    let applied = started.elapsed();
    tx.commit().await?;
    // Where a batch's time goes, for profiling the result path.
    debug!(
        reports = reports.len(),
        begin_us = begun.as_micros() as u64,
        apply_us = (applied - begun).as_micros() as u64,
        commit_us = (started.elapsed() - applied).as_micros() as u64,
        elapsed_us = started.elapsed().as_micros() as u64,
        "batch applied"
    );
    engine.after_commit(done.outbox_rows);
    Ok(done.outcomes)
}

/// Why a report about `attempt` must not change the run, if it must not.
pub(super) fn stale_reason(run: &Run, attempt: &LockedAttempt) -> Option<String> {
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

fn apply_result_to(
    engine: &Engine,
    run: &mut Run,
    attempt: &mut LockedAttempt,
    result: &ResultMessage,
) -> Result<Applied, RunError> {
    let kind = attempt.task_kind();
    let step_id = attempt.step_id.clone();
    if let Some(reason) = stale_reason(run, attempt) {
        run.record(
            event::RESULT_IGNORED,
            Some(&step_id),
            Some(attempt.attempt),
            json!({ "task_id": result.task_id, "kind": kind.as_str(), "reason": reason,
                    "worker": result.worker_id, "outcome": result.outcome }),
        );
        return Ok(Applied::Ignored(reason));
    }
    // Only an attempt that reported its start, or waits under a
    // schedule-to-start limit, has timers armed.
    let may_have_timers = attempt.status == "running"
        || run
            .promise
            .step(&step_id)
            .is_some_and(|s| run.promise.schedule_to_start_of(s).is_some());
    if may_have_timers {
        run.clear_attempt_timers(result.task_id, None);
    }

    let duration_ms = (result.finished_at - result.started_at).num_milliseconds();
    let (status, error) = match &result.outcome {
        Outcome::Ok { .. } => ("succeeded", None),
        Outcome::Error(failure) => (
            "failed",
            Some(serde_json::to_value(failure).map_err(|e| RunError::Corrupt(e.to_string()))?),
        ),
    };
    run.update_attempt(
        result.task_id,
        AttemptUpdate {
            status: Some(status),
            worker: Some(result.worker_id.clone()),
            started_at_if_unset: Some(result.started_at),
            finished_at: Some(result.finished_at),
            error,
            ..AttemptUpdate::default()
        },
    );
    attempt.status = status.to_string();

    match &result.outcome {
        Outcome::Ok { output } => {
            match kind {
                TaskKind::Action => {
                    set_step(
                        run,
                        &step_id,
                        StepStatus::Succeeded,
                        None,
                        Some(output.clone()),
                        None,
                    );
                }
                TaskKind::Compensation => {
                    set_compensation(run, &step_id, CompensationStatus::Succeeded, None, None);
                    set_step(run, &step_id, StepStatus::Compensated, None, None, None);
                    if let Some(row) = run.steps.get_mut(&step_id) {
                        row.compensation_outputs = Some(output.clone());
                    }
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
                run,
                &step_id,
                kind,
                attempt.attempt,
                failure,
                Some(&result.worker_id),
            )?;
        }
    }
    advance(run)?;
    Ok(Applied::Applied)
}
