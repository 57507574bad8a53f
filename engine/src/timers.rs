//! Durable timers: retry backoffs, attempt timeouts (schedule-to-start,
//! start-to-finish, heartbeat) and run timeouts live in `fulfil.timers`, so
//! they survive any engine crash. Every engine fires due timers; `FOR UPDATE SKIP LOCKED`
//! hands each timer to exactly one of them, and the timer is deleted in the
//! same transaction that dispatches the next attempt. A timer that can never
//! fire (its run is missing or cannot be loaded) is parked in
//! `fulfil.parked_timers` with the reason, never left at the head of the
//! queue; a transient database failure ends the round, to be retried.

use std::time::Duration;

use chrono::Utc;
use fulfil_core::dag::CompensationStatus;
use fulfil_core::ids::{RunId, TaskId};
use fulfil_core::status::{AttemptStatus, TimerKind};
use fulfil_core::wire::{StepFailure, TaskKind};
use fulfil_core::{RunStatus, StepStatus};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span, warn};
use uuid::Uuid;

use crate::run::event::{self, AttemptEvent, attempt_event};
use crate::run::{
    AttemptUpdate, Run, RunError, advance, attempt_failed, dispatch_action, dispatch_compensation,
    dispatch_instance, lock_run, stop_in_flight,
};
use crate::{Engine, EngineConfig};

/// Timers fired per wake-up, so one busy engine cannot starve its other loops.
const MAX_FIRED_PER_ROUND: usize = 256;

/// The Postgres channel a commit notifies when it arms a timer other
/// engines should fire now rather than at their next poll (a promise
/// step's, see `crate::run::child`).
pub(crate) const CHANNEL: &str = "fulfil_timers";

pub(crate) async fn run_timers(engine: Engine, config: EngineConfig, shutdown: CancellationToken) {
    let mut listener = crate::outbox::listen(&engine, CHANNEL, "the timer loop").await;
    loop {
        let wait = match fire_due(&engine).await {
            Ok(_) => next_wait(&engine, config.poll_interval).await,
            Err(e) => {
                warn!(error = %e, "firing timers failed; retrying");
                config.poll_interval
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = engine.timers_woken() => {}
            notification = crate::outbox::recv(&mut listener) => {
                if let Err(e) = notification {
                    warn!(error = %e, "LISTEN connection lost; the timer loop polls until it is back");
                    listener = None;
                }
            }
        }
    }
}

/// Sleeps until the next timer is due, at most `poll`: another engine may
/// add an earlier one meanwhile.
async fn next_wait(engine: &Engine, poll: Duration) -> Duration {
    let next: Option<chrono::DateTime<Utc>> =
        sqlx::query_scalar("SELECT min(fire_at) FROM fulfil.timers")
            .fetch_one(engine.pool())
            .await
            .unwrap_or(None);
    match next {
        Some(at) => (at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(poll),
        None => poll,
    }
}

/// A timer claimed for firing.
#[derive(sqlx::FromRow)]
pub(crate) struct DueTimer {
    pub(crate) id: i64,
    #[sqlx(try_from = "Uuid")]
    pub(crate) run_id: RunId,
    pub(crate) step_id: String,
    pub(crate) kind: String,
    #[sqlx(try_from = "crate::db::NullableUuid")]
    pub(crate) task_id: Option<TaskId>,
}

/// Fires every due timer; returns how many fired (or were parked). A timer
/// that can never fire (its run is missing or cannot be loaded, its row is
/// corrupt) is moved to `fulfil.parked_timers` with the reason, so it never
/// stays at the head of the queue in front of the timers due after it. A
/// transient database failure ends the round, to be tried again.
pub async fn fire_due(engine: &Engine) -> Result<usize, RunError> {
    let mut fired = 0;
    while fired < MAX_FIRED_PER_ROUND {
        let mut tx = engine.pool().begin().await?;
        let due: Option<DueTimer> = sqlx::query_as(
            "SELECT id, run_id, step_id, kind, task_id FROM fulfil.timers WHERE fire_at <= now()
             ORDER BY fire_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(timer) = due else {
            break;
        };
        let span = info_span!("timer", timer_id = timer.id, run_id = %timer.run_id,
                              step_id = %timer.step_id, kind = %timer.kind, task_id = ?timer.task_id);
        let outcome = fire_one(engine, &mut tx, &timer)
            .instrument(span.clone())
            .await;
        fired += 1;
        let failure = match outcome {
            Ok(Some((run, also))) => match run.commit(tx).instrument(span.clone()).await {
                Ok(rows) => {
                    engine.after_commit(rows);
                    also.committed(engine);
                    continue;
                }
                Err(e) => e,
            },
            Ok(None) => {
                drop(tx);
                let reason = format!("run {} does not exist", timer.run_id);
                park(engine, &timer, &reason).instrument(span).await?;
                continue;
            }
            Err(e) => {
                // The transaction may be aborted by the failure: park in another.
                drop(tx);
                e
            }
        };
        if failure.is_transient() {
            return Err(failure);
        }
        park(engine, &timer, &failure.to_string())
            .instrument(span)
            .await?;
    }
    Ok(fired)
}

/// What a fired timer wrote besides its run's changes (a child request
/// filed or deleted), handed to this process once the transaction commits.
#[derive(Default)]
struct AlsoWritten {
    staged: Option<crate::requests::Staged>,
    rows: Vec<crate::outbox::OutboxRow>,
}

impl AlsoWritten {
    fn committed(self, engine: &Engine) {
        if let Some(staged) = self.staged {
            staged.committed(engine);
        }
        if !self.rows.is_empty() {
            engine.after_commit(self.rows);
        }
    }
}

/// Deletes `timer`, fires it on its locked run and advances the run; the
/// run, with its changes not yet stored, or `None` if there is no such run.
async fn fire_one(
    engine: &Engine,
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    timer: &DueTimer,
) -> Result<Option<(Run, AlsoWritten)>, RunError> {
    sqlx::query("DELETE FROM fulfil.timers WHERE id = $1")
        .bind(timer.id)
        .execute(&mut **tx)
        .await?;
    let actor = format!("engine:{}", engine.id());
    let Some(mut run) = lock_run(engine, tx, timer.run_id, actor).await? else {
        return Ok(None);
    };
    let kind = TimerKind::parse(&timer.kind)?;
    let also = if kind.is_child_timer() {
        fire_child_timer(engine, tx, &mut run, timer, kind).await?
    } else {
        fire(tx, &mut run, timer).await?;
        AlsoWritten::default()
    };
    advance(&mut run)?;
    Ok(Some((run, also)))
}

/// Fires a promise step's timer (see `crate::run::child`): files its
/// child, reads it, or deletes it, on the timer's transaction.
async fn fire_child_timer(
    engine: &Engine,
    conn: &mut sqlx::PgConnection,
    run: &mut Run,
    timer: &DueTimer,
    kind: TimerKind,
) -> Result<AlsoWritten, RunError> {
    use crate::run::child;
    let Some(task_id) = timer.task_id else {
        return Err(RunError::Corrupt(format!(
            "{} timer without a task id",
            timer.kind
        )));
    };
    // The attempt is gone only if its run was retried from scratch: stale.
    let Some(attempt) = crate::children::timer_attempt(conn, task_id).await? else {
        return Ok(AlsoWritten::default());
    };
    let step = timer.step_id.as_str();
    let mut also = AlsoWritten::default();
    match kind {
        TimerKind::ChildFile => {
            if child::waits_on(run, step, &attempt) {
                let (filed, staged) =
                    crate::children::file(engine, conn, run, step, &attempt).await?;
                also.staged = staged;
                child::filed(run, step, &attempt, filed)?;
            }
        }
        TimerKind::ChildDone => {
            // A child of an earlier attempt of the step ended: stale, and
            // nothing is read for it.
            let current = run
                .step(step)
                .is_some_and(|row| row.attempt == attempt.attempt);
            let child = match current {
                true => {
                    crate::children::child_of(conn, run.run_id(), step, attempt.attempt).await?
                }
                false => None,
            };
            if let Some(child) = child {
                let compensation =
                    crate::children::compensation_attempt(conn, run.run_id(), step).await?;
                child::child_changed(run, step, &attempt, compensation.as_ref(), &child)?;
            }
        }
        TimerKind::ChildDelete => {
            if child::compensates(run, step, &attempt) {
                let (outcome, rows) = crate::children::delete(engine, conn, run, step).await?;
                also.rows = rows;
                child::delete_requested(run, step, &attempt, outcome)?;
            }
        }
        _ => {
            return Err(RunError::Corrupt(format!(
                "{} is not a promise step's timer",
                timer.kind
            )));
        }
    }
    Ok(also)
}

/// Moves a timer that can never fire to `fulfil.parked_timers`.
async fn park(engine: &Engine, timer: &DueTimer, reason: &str) -> Result<(), RunError> {
    error!(
        reason,
        "timer can never fire; parked in fulfil.parked_timers"
    );
    sqlx::query(
        "WITH moved AS (
             DELETE FROM fulfil.timers WHERE id = $1
             RETURNING id, run_id, step_id, kind, task_id, fire_at)
         INSERT INTO fulfil.parked_timers (id, run_id, step_id, kind, task_id, fire_at, reason)
         SELECT id, run_id, step_id, kind, task_id, fire_at, $2 FROM moved
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(timer.id)
    .bind(reason)
    .execute(engine.pool())
    .await?;
    Ok(())
}

/// Applies one timer to its locked run. A timer whose condition no longer
/// holds (the step moved on, the run ended) does nothing: it is stale.
async fn fire(
    conn: &mut sqlx::PgConnection,
    run: &mut Run,
    timer: &DueTimer,
) -> Result<(), RunError> {
    // Read before deciding, so the decision itself needs no Postgres.
    let kind = TimerKind::parse(&timer.kind)?;
    if kind.is_wait_timer() {
        let Some(task_id) = timer.task_id else {
            return Err(RunError::Corrupt(format!(
                "{} timer without a task id",
                timer.kind
            )));
        };
        // Under the wait's row lock: an event matching it now either
        // committed before (and wins) or waits for this decision.
        let wait = crate::waits::lock_wait(conn, task_id).await?;
        return crate::run::fire_wait_timer(run, kind, &timer.step_id, task_id, wait.as_ref());
    }
    let attempt: Option<AttemptState> = match timer.task_id {
        Some(task_id) if kind.is_attempt_timer() => Some(
            sqlx::query_as("SELECT attempt, status, kind FROM fulfil.attempts WHERE task_id = $1")
                .bind(task_id.as_uuid())
                .fetch_one(conn)
                .await?,
        ),
        _ => None,
    };
    fire_on(run, timer, attempt.as_ref())
}

/// [`fire`]'s decision, in memory: `attempt` is the state of the timer's
/// attempt, read for attempt timeouts.
pub(crate) fn fire_on(
    run: &mut Run,
    timer: &DueTimer,
    attempt: Option<&AttemptState>,
) -> Result<(), RunError> {
    let promise = run.promise().clone();
    let row = run.step(&timer.step_id).cloned();
    let timer_kind = TimerKind::parse(&timer.kind)?;
    match timer_kind {
        TimerKind::Retry => {
            if let (Some(row), Some((step, instance))) = (row, promise.step_of_row(&timer.step_id))
                && row.status == StepStatus::Retrying
                && run.status() == RunStatus::Running
                && !run.cancel_requested()
                && run.stop_reason().is_none()
            {
                match instance {
                    None => dispatch_action(run, step, row.attempt + 1)?,
                    Some(index) => {
                        dispatch_instance(run, step, index, TaskKind::Action, row.attempt + 1)?;
                    }
                }
            }
        }
        TimerKind::CompensationRetry => {
            if let (Some(row), Some((step, instance))) = (row, promise.step_of_row(&timer.step_id))
                && row.compensation == Some(CompensationStatus::Retrying)
                && run.status() == RunStatus::Compensating
            {
                let attempt = row.compensation_attempt + 1;
                match instance {
                    None => dispatch_compensation(run, step, attempt)?,
                    Some(index) => {
                        dispatch_instance(run, step, index, TaskKind::Compensation, attempt)?;
                    }
                }
            }
        }
        TimerKind::ScheduleToStart | TimerKind::AttemptTimeout | TimerKind::HeartbeatTimeout => {
            let Some(task_id) = timer.task_id else {
                return Err(RunError::Corrupt(format!(
                    "{} timer without a task id",
                    timer.kind
                )));
            };
            let Some(attempt) = attempt else {
                return Err(RunError::Corrupt(format!(
                    "{} timer's attempt was not read",
                    timer.kind
                )));
            };
            let kind = TaskKind::parse(&attempt.kind)?;
            let status = AttemptStatus::parse(&attempt.status)?;
            let current = row.map(|r| r.current_attempt(kind)) == Some(attempt.attempt);
            let open = match timer_kind {
                TimerKind::ScheduleToStart => status == AttemptStatus::Dispatched,
                _ => status.is_open(),
            };
            if !current || !open || run.status().is_terminal() {
                return Ok(());
            }
            let (code, message) = match timer_kind {
                TimerKind::ScheduleToStart => (
                    "schedule_to_start_timeout",
                    "no worker of the step's queue started the attempt in time".to_string(),
                ),
                TimerKind::HeartbeatTimeout => (
                    "heartbeat_timeout",
                    "the handler stopped sending heartbeats".to_string(),
                ),
                _ => (
                    "timeout",
                    "the attempt did not finish within its timeout".to_string(),
                ),
            };
            let failure = StepFailure {
                message,
                code: Some(code.to_string()),
                retryable: true,
                retry_after_ms: None,
            };
            let error =
                serde_json::to_value(&failure).map_err(|e| RunError::Corrupt(e.to_string()))?;
            run.update_attempt(
                task_id,
                AttemptUpdate {
                    status: Some(AttemptStatus::TimedOut),
                    finished_at: Some(Utc::now()),
                    error: Some(error),
                    ..AttemptUpdate::default()
                },
            );
            run.clear_attempt_timers(task_id, None);
            run.record(
                attempt_event(kind, AttemptEvent::TimedOut),
                Some(&timer.step_id),
                Some(attempt.attempt),
                json!({ "task_id": task_id, "timeout": timer.kind, "code": code }),
            );
            attempt_failed(run, &timer.step_id, kind, attempt.attempt, &failure, None)?;
        }
        TimerKind::WaitMatched
        | TimerKind::WaitTimeout
        | TimerKind::SleepDone
        | TimerKind::ChildFile
        | TimerKind::ChildDone
        | TimerKind::ChildDelete => {
            return Err(RunError::Corrupt(format!(
                "{} timer fired without its wait",
                timer.kind
            )));
        }
        TimerKind::RunTimeout => {
            if run.status() == RunStatus::Running {
                let limit = promise
                    .spec
                    .timeout
                    .clone()
                    .unwrap_or_else(|| "its timeout".to_string());
                let reason = format!("run timed out after {limit}");
                run.stop_for(reason.clone());
                run.record(
                    event::RUN_TIMED_OUT,
                    None,
                    None,
                    json!({ "timeout": limit }),
                );
                stop_in_flight(run, TaskKind::Action, &reason)?;
            }
        }
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
pub(crate) struct AttemptState {
    pub(crate) attempt: i32,
    pub(crate) status: String,
    pub(crate) kind: String,
}
