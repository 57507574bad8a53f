//! Applying worker reports (results and progress): at most once per task id,
//! a whole batch at a time.
//!
//! [`apply_committed`] reads every run the batch touches, their steps and
//! the reported attempts, applies each report to the runs in memory, and
//! stores every change in one flush: a fixed number of round trips per
//! batch, whatever its size.
//!
//! It reads optimistically first, without a lock or a transaction: two
//! reads and one statement that stores the batch and commits on its own,
//! provided every run is still at the version read (see [`super::load`]).
//! When every report's run is in this process's cache of runs it stored
//! ([`super::cache`]), the reads are skipped: one round trip per batch.
//! A batch whose runs changed meanwhile is decided again from a fresh read;
//! after [`OPTIMISTIC_TRIES`] such misses it takes the runs' row locks
//! ([`ReportBatch::apply`]), which always succeeds. Unlocked, a batch costs
//! one or three round trips instead of five, and no row lock is written.
//!
//! The attempt is read with its run's state. Only an attempt that is still
//! open (`dispatched` or `running`) and is the current attempt of its step
//! (or of its compensation) accepts a result; a duplicate delivery, a result
//! for an attempt that timed out or was cancelled, or one that arrives after
//! the run ended, is recorded in history as `result.ignored` and changes
//! nothing else.

use std::collections::HashMap;

use fulfil_core::StepStatus;
use fulfil_core::dag::CompensationStatus;
use fulfil_core::ids::{RunId, TaskId};
use fulfil_core::status::AttemptStatus;
use fulfil_core::wire::{Outcome, ProgressMessage, ResultMessage, TaskKind};
use serde_json::json;
use sqlx::PgConnection;
use tracing::{debug, info_span, trace};

use super::advance::{advance, attempt_failed, set_compensation, set_step};
use super::event::{self, AttemptEvent, attempt_event};
use super::load::{KnownAttempt, lock_runs_of_tasks, read_runs_of_tasks};
use super::{AttemptUpdate, Run, RunError, Stored, fits_one_statement, flush};
use crate::Engine;
use crate::outbox::OutboxRow;

/// Why one report could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// No attempt has this task id: the message is orphaned (dead-letter it).
    #[error("no attempt with task id {0}")]
    UnknownTask(TaskId),
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
    pub fn task_id(&self) -> TaskId {
        match self {
            Report::Result(r) => r.task_id,
            Report::Progress(p) => p.task_id,
        }
    }

    /// The run the worker says the task belongs to: where to look in the
    /// cache, never trusted further (the cached run must hold the task).
    fn run_hint(&self) -> RunId {
        match self {
            Report::Result(r) => r.run_id,
            Report::Progress(p) => p.run_id,
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
        let task_ids = sorted_task_ids(self.reports);
        let started = std::time::Instant::now();
        let (mut runs, mut attempts) = lock_runs_of_tasks(engine, conn, &task_ids).await?;
        let loaded = started.elapsed();
        let outcomes = decide(engine, &mut runs, &mut attempts, self.reports);
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

/// Applies `reports` to their runs in memory, one outcome each.
fn decide(
    engine: &Engine,
    runs: &mut HashMap<RunId, Run>,
    attempts: &mut HashMap<TaskId, KnownAttempt>,
    reports: &[Report],
) -> Vec<Result<Applied, ApplyError>> {
    reports
        .iter()
        .map(|report| apply_one(engine, runs, attempts, report))
        .collect()
}

/// Applies one report to its run in memory; on failure the run and the
/// attempt are restored to what they were before it.
fn apply_one(
    engine: &Engine,
    runs: &mut HashMap<RunId, Run>,
    attempts: &mut HashMap<TaskId, KnownAttempt>,
    report: &Report,
) -> Result<Applied, ApplyError> {
    let task_id = report.task_id();
    let attempt = attempts
        .get_mut(&task_id)
        .ok_or(ApplyError::UnknownTask(task_id))?;
    let run = runs
        .get_mut(&attempt.run_id)
        .ok_or(ApplyError::UnknownTask(task_id))?;
    let span = info_span!("apply", run_id = %run.run_id, step_id = %attempt.step_id,
                          attempt = attempt.attempt, %task_id);
    run.trace_parent().adopt(&span);
    let _span = span.entered();
    run.set_actor(format!("worker:{}", report.worker_id()));
    let run_before = run.clone();
    let attempt_before = attempt.clone();
    let outcome = match report {
        Report::Result(result) => apply_result_to(engine.id(), run, attempt, result),
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

/// Optimistic reads of a batch before it takes its runs' locks. A miss
/// means another writer changed one of the batch's runs between the read
/// and the write; two misses in a row are rare outside fan-ins, where
/// sibling results race for the same run.
pub const OPTIMISTIC_TRIES: usize = 3;

/// Applies `reports`, commits them and hands their outbox rows on; one
/// outcome per report. See the module docs for how.
pub async fn apply_committed(
    engine: &Engine,
    reports: &[Report],
) -> Result<Vec<Result<Applied, ApplyError>>, RunError> {
    for attempt in 0..OPTIMISTIC_TRIES {
        // A refused store may have decided from a stale cached copy; the
        // retry reads.
        let use_cache = attempt == 0;
        match apply_optimistically(engine, reports, use_cache).await {
            Err(RunError::Db(e)) if is_stale_read(&e) => {
                debug!(error = %e, reports = reports.len(),
                       "runs changed while their batch was decided; deciding again");
            }
            outcome => return outcome,
        }
    }
    apply_locked(engine, reports).await
}

/// Whether Postgres refused a statement because the runs it was written
/// for had moved on since they were read (or it lost a lock-order race
/// to a writer that moved them): reading again resolves it.
fn is_stale_read(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    match db.code().as_deref() {
        // serialization_failure (`fulfil.refuse_stale_runs`), deadlock_detected
        Some("40001" | "40P01") => true,
        // Two writers of the same run numbered the same history event.
        Some("23505") => db.constraint() == Some("history_pkey"),
        _ => false,
    }
}

/// Reads without locks, decides, and stores the batch only if none of its
/// runs changed meanwhile.
async fn apply_optimistically(
    engine: &Engine,
    reports: &[Report],
    use_cache: bool,
) -> Result<Vec<Result<Applied, ApplyError>>, RunError> {
    let started = std::time::Instant::now();
    let mut conn = engine.pool().acquire().await?;
    let cached = if use_cache {
        take_cached(engine, reports)
    } else {
        None
    };
    let from_cache = cached.is_some();
    let (mut runs, mut attempts) = match cached {
        Some(state) => state,
        None => read_runs_of_tasks(engine, &mut conn, &sorted_task_ids(reports)).await?,
    };
    let loaded = started.elapsed();
    let outcomes = decide(engine, &mut runs, &mut attempts, reports);
    let decided = started.elapsed();
    let mut runs: Vec<Run> = runs.into_values().collect();
    // Row locks in id order, as every locking writer takes them.
    runs.sort_unstable_by_key(|run| run.run_id);
    let notes: Vec<Option<Stored>> = runs.iter().map(Stored::note).collect();
    let outbox_rows = if fits_one_statement(&runs) {
        flush(&mut conn, &mut runs).await?
    } else {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let rows = flush(&mut tx, &mut runs).await?;
        tx.commit().await?;
        rows
    };
    crate::metrics::transaction("apply");
    engine.run_cache().keep_stored(runs, notes, attempts);
    debug!(
        reports = reports.len(),
        from_cache,
        read_us = loaded.as_micros() as u64,
        decide_us = (decided - loaded).as_micros() as u64,
        write_us = (started.elapsed() - decided).as_micros() as u64,
        elapsed_us = started.elapsed().as_micros() as u64,
        "batch applied optimistically"
    );
    engine.after_commit(outbox_rows);
    Ok(outcomes)
}

/// The runs and attempts of `reports` from the cache, if every report's run
/// is there and holds its attempt; the copies are taken out of the cache.
/// On a miss, the copies already taken are dropped: the batch reads them.
fn take_cached(
    engine: &Engine,
    reports: &[Report],
) -> Option<(HashMap<RunId, Run>, HashMap<TaskId, KnownAttempt>)> {
    let mut runs = HashMap::new();
    let mut attempts: HashMap<TaskId, KnownAttempt> = HashMap::new();
    for report in reports {
        let (run_id, task_id) = (report.run_hint(), report.task_id());
        if attempts.get(&task_id).is_some_and(|a| a.run_id == run_id) {
            continue;
        }
        if runs.contains_key(&run_id) {
            return None;
        }
        let cached = engine.run_cache().take_holding(run_id, task_id)?;
        attempts.extend(cached.attempts);
        runs.insert(run_id, cached.run);
    }
    Some((runs, attempts))
}

fn sorted_task_ids(reports: &[Report]) -> Vec<TaskId> {
    let mut task_ids: Vec<TaskId> = reports.iter().map(Report::task_id).collect();
    task_ids.sort_unstable();
    task_ids.dedup();
    task_ids
}

/// Applies `reports` in one transaction that holds their runs' row locks.
async fn apply_locked(
    engine: &Engine,
    reports: &[Report],
) -> Result<Vec<Result<Applied, ApplyError>>, RunError> {
    let started = std::time::Instant::now();
    let mut tx = engine.pool().begin().await?;
    let begun = started.elapsed();
    let done = ReportBatch { reports }.apply(engine, &mut tx).await?;
    let applied = started.elapsed();
    tx.commit().await?;
    crate::metrics::transaction("apply");
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

/// Buffers the metrics of an applied result: the step's duration by the
/// worker's clock, and its wait from dispatch (the instant its UUIDv7 task
/// id was minted) to the worker's start.
fn observe_result(run: &mut Run, step_id: &str, result: &ResultMessage) {
    // An instance of a for_each step counts as its step: labels stay
    // bounded.
    let (step, queue) = run
        .promise
        .step_of_row(step_id)
        .map_or((step_id.to_string(), String::new()), |(step, _)| {
            (step.id.clone(), run.promise.queue_of(step).to_string())
        });
    let dispatched_at = result.task_id.as_uuid().get_timestamp().and_then(|t| {
        let (secs, nanos) = t.to_unix();
        chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
    });
    run.observe(crate::metrics::Observed::StepFinished {
        step,
        queue,
        ok: matches!(result.outcome, Outcome::Ok { .. }),
        duration_secs: crate::metrics::seconds_between(result.started_at, result.finished_at),
        schedule_to_start_secs: dispatched_at
            .and_then(|at| crate::metrics::seconds_between(at, result.started_at)),
    });
}

/// Why a report about `attempt` must not change the run, if it must not.
pub(super) fn stale_reason(run: &Run, attempt: &KnownAttempt) -> Option<String> {
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

/// Applies one result to its run, in memory; `engine_id` is recorded as the
/// engine that applied it. Takes no [`Engine`] so the decision is testable
/// without Postgres.
pub(super) fn apply_result_to(
    engine_id: &str,
    run: &mut Run,
    attempt: &mut KnownAttempt,
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
    let may_have_timers = attempt.status == AttemptStatus::Running
        || run
            .promise
            .step_of_row(&step_id)
            .is_some_and(|(s, _)| run.promise.schedule_to_start_of(s).is_some());
    if may_have_timers {
        run.clear_attempt_timers(result.task_id, None);
    }

    let duration_ms = (result.finished_at - result.started_at).num_milliseconds();
    let (status, error) = match &result.outcome {
        Outcome::Ok { .. } => (AttemptStatus::Succeeded, None),
        Outcome::Error(failure) => (
            AttemptStatus::Failed,
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
    attempt.status = status;
    observe_result(run, &step_id, result);

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
                    )?;
                }
                TaskKind::Compensation => {
                    set_compensation(run, &step_id, CompensationStatus::Succeeded, None, None)?;
                    set_step(run, &step_id, StepStatus::Compensated, None, None, None)?;
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
                        "engine": engine_id }),
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
