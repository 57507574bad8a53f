//! Locking runs and reading their state.
//!
//! Runs are locked with `SELECT ... ORDER BY id FOR UPDATE`: a batch locks
//! all its runs in one statement, and because every locker takes rows in id
//! order, concurrent batches cannot deadlock on each other. Steps and
//! attempts are read by statements that start after the locks are held, so
//! they see whatever the previous holder committed.
//!
//! [`read_runs_of_tasks`] reads the same state without any lock, for the
//! optimistic path: each run remembers the version it was read at, and its
//! changes are stored only if that is still the run's version. The steps
//! are read by a later statement than the run, so a change committed
//! between the two has bumped the version and the store refuses the mix.

use std::collections::HashMap;

use fulfil_core::RunStatus;
use fulfil_core::StepStatus;
use fulfil_core::dag::CompensationStatus;
use fulfil_core::ids::{RequestId, RunId, TaskId};
use fulfil_core::status::{AttemptStatus, RunKind};
use fulfil_core::wire::TaskKind;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Run, RunError, StepRow, writes::Writes};
use crate::Engine;

/// An attempt as the state machine knows it: read with its run (under the
/// run's lock or at the run's version), or dispatched by a change this
/// process stored, and as changed since within the same batch.
#[derive(Debug, Clone)]
pub struct KnownAttempt {
    pub task_id: TaskId,
    pub run_id: RunId,
    pub step_id: String,
    pub attempt: i32,
    pub status: AttemptStatus,
    pub kind: TaskKind,
}

impl KnownAttempt {
    pub fn task_kind(&self) -> TaskKind {
        self.kind
    }

    /// Dispatched or running: a result may still be applied.
    pub fn is_open(&self) -> bool {
        self.status.is_open()
    }
}

/// Locks one run and reads its steps. `None` if there is no such run.
pub async fn lock_run(
    engine: &Engine,
    conn: &mut PgConnection,
    run_id: RunId,
    actor: String,
) -> Result<Option<Run>, RunError> {
    let rows: Vec<RunRow> = sqlx::query_as(
        "SELECT id, request_id, promise, promise_version, kind, status, context, history_seq,
                cancel_requested, stop_reason, version, delete_run_id, delete_requested_by,
                delete_forced
         FROM fulfil.runs WHERE id = $1 FOR UPDATE",
    )
    .bind(run_id.as_uuid())
    .fetch_all(&mut *conn)
    .await?;
    let (mut runs, _) = load_runs(engine, conn, rows, &[], Locking::Locked).await?;
    Ok(runs.remove(&run_id).map(|mut run| {
        run.set_actor(actor);
        run
    }))
}

/// Locks every run that owns one of `task_ids`, and reads those attempts.
/// Task ids without an attempt are simply absent from the answer.
pub(crate) async fn lock_runs_of_tasks(
    engine: &Engine,
    conn: &mut PgConnection,
    task_ids: &[TaskId],
) -> Result<(HashMap<RunId, Run>, HashMap<TaskId, KnownAttempt>), RunError> {
    runs_of_tasks(engine, conn, task_ids, Locking::Locked).await
}

/// Reads every run that owns one of `task_ids`, and those attempts, without
/// locking anything; see the module docs.
pub(crate) async fn read_runs_of_tasks(
    engine: &Engine,
    conn: &mut PgConnection,
    task_ids: &[TaskId],
) -> Result<(HashMap<RunId, Run>, HashMap<TaskId, KnownAttempt>), RunError> {
    runs_of_tasks(engine, conn, task_ids, Locking::Optimistic).await
}

macro_rules! runs_of_tasks_sql {
    () => {
        "SELECT id, request_id, promise, promise_version, kind, status, context, history_seq,
                cancel_requested, stop_reason, version, delete_run_id, delete_requested_by,
                delete_forced
         FROM fulfil.runs
         WHERE id IN (SELECT run_id FROM fulfil.attempts WHERE task_id = ANY($1))"
    };
}

async fn runs_of_tasks(
    engine: &Engine,
    conn: &mut PgConnection,
    task_ids: &[TaskId],
    locking: Locking,
) -> Result<(HashMap<RunId, Run>, HashMap<TaskId, KnownAttempt>), RunError> {
    // An attempt's run id never changes, so finding the runs through their
    // attempts before the lock is held is safe.
    let sql = match locking {
        Locking::Locked => concat!(runs_of_tasks_sql!(), " ORDER BY id FOR UPDATE"),
        Locking::Optimistic => runs_of_tasks_sql!(),
    };
    let task_uuids: Vec<Uuid> = task_ids.iter().map(TaskId::as_uuid).collect();
    let rows: Vec<RunRow> = sqlx::query_as(sql)
        .bind(&task_uuids)
        .fetch_all(&mut *conn)
        .await?;
    load_runs(engine, conn, rows, task_ids, locking).await
}

/// How the runs being loaded are protected from concurrent changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Locking {
    /// Their row locks are held until the transaction ends.
    Locked,
    /// Nothing is held; their changes are stored only at the version read.
    Optimistic,
}

/// Reads the steps of the runs in `rows`, and the attempts `task_ids`, in
/// one statement, and builds the runs' in-memory state. Under `Locked`, the
/// statement runs after the locks are held, and attempts only change under
/// their run's lock or at a new version of it, so what it reads is current;
/// under `Optimistic` it may not be, and the version check at the store
/// decides (see the module docs).
async fn load_runs(
    engine: &Engine,
    conn: &mut PgConnection,
    rows: Vec<RunRow>,
    task_ids: &[TaskId],
    locking: Locking,
) -> Result<(HashMap<RunId, Run>, HashMap<TaskId, KnownAttempt>), RunError> {
    if rows.is_empty() {
        return Ok((HashMap::new(), HashMap::new()));
    }
    let run_ids: Vec<Uuid> = rows.iter().map(|r| r.id.as_uuid()).collect();
    let task_uuids: Vec<Uuid> = task_ids.iter().map(TaskId::as_uuid).collect();
    let state_rows: Vec<StateRow> = sqlx::query_as(
        "SELECT run_id, step_id, status, attempt, outputs, input, error, compensation_status,
                compensation_attempt, compensation_outputs, compensation_error, NULL::uuid AS task_id,
                NULL::text AS kind
         FROM fulfil.steps WHERE run_id = ANY($1)
         UNION ALL
         SELECT run_id, step_id, status, attempt, NULL, NULL, NULL, NULL, 0, NULL, NULL, task_id, kind
         FROM fulfil.attempts WHERE task_id = ANY($2)",
    )
    .bind(&run_ids)
    .bind(&task_uuids)
    .fetch_all(&mut *conn)
    .await?;
    let mut steps_by_run: HashMap<RunId, HashMap<String, StepRow>> = HashMap::new();
    let mut attempts = HashMap::new();
    for r in state_rows {
        if let (Some(task_id), Some(kind)) = (r.task_id, r.kind) {
            attempts.insert(
                task_id,
                KnownAttempt {
                    task_id,
                    run_id: r.run_id,
                    step_id: r.step_id,
                    attempt: r.attempt,
                    status: AttemptStatus::parse(&r.status)?,
                    kind: TaskKind::parse(&kind)?,
                },
            );
            continue;
        }
        let status = StepStatus::parse(&r.status)?;
        let compensation = match r.compensation_status.as_deref() {
            None => None,
            Some(c) => Some(CompensationStatus::parse(c)?),
        };
        steps_by_run.entry(r.run_id).or_default().insert(
            r.step_id.clone(),
            StepRow {
                step_id: r.step_id,
                status,
                attempt: r.attempt,
                outputs: r.outputs,
                input: r.input,
                error: r.error,
                compensation,
                compensation_attempt: r.compensation_attempt,
                compensation_outputs: r.compensation_outputs,
                compensation_error: r.compensation_error,
            },
        );
    }
    let mut runs = HashMap::with_capacity(rows.len());
    for row in rows {
        if locking == Locking::Locked {
            // This change is made under the lock, and the copy would be stale.
            engine.run_cache().forget(row.id);
        }
        let status = RunStatus::parse(&row.status)?;
        let kind = RunKind::parse(&row.kind)?;
        // Versions are immutable, so the cache answers without a query once
        // this process has seen the version.
        let promise = engine
            .promises()
            .load(engine.pool(), &row.promise, &row.promise_version)
            .await?;
        let promise = super::deleting::promise_for(kind, promise)?;
        let handoff = row
            .delete_requested_by
            .map(|actor| super::deleting::Handoff {
                delete_run_id: row.delete_run_id,
                actor,
                forced: row.delete_forced,
            });
        runs.insert(
            row.id,
            Run {
                run_id: row.id,
                request_id: row.request_id,
                kind,
                status,
                context: row.context,
                promise,
                steps: steps_by_run.remove(&row.id).unwrap_or_default(),
                names: engine.names().clone(),
                actor: String::new(),
                cancel_requested: row.cancel_requested,
                stop_reason: row.stop_reason,
                fast_publish: engine.has_fast_publisher(),
                next_seq: row.history_seq + 1,
                read_version: (locking == Locking::Optimistic).then_some(row.version),
                handoff,
                spawned: None,
                writes: Writes::default(),
            },
        );
    }
    Ok((runs, attempts))
}

#[derive(sqlx::FromRow)]
struct RunRow {
    #[sqlx(try_from = "Uuid")]
    id: RunId,
    #[sqlx(try_from = "Uuid")]
    request_id: RequestId,
    promise: String,
    promise_version: String,
    kind: String,
    status: String,
    context: Value,
    history_seq: i64,
    cancel_requested: bool,
    stop_reason: Option<String>,
    version: i64,
    #[sqlx(try_from = "crate::db::NullableUuid")]
    delete_run_id: Option<RunId>,
    delete_requested_by: Option<String>,
    delete_forced: bool,
}

/// A step of a locked run or, with `task_id` and `kind` set, one of the
/// reported attempts (its status and attempt number in the step's columns).
#[derive(sqlx::FromRow)]
struct StateRow {
    #[sqlx(try_from = "Uuid")]
    run_id: RunId,
    step_id: String,
    status: String,
    attempt: i32,
    outputs: Option<Value>,
    input: Option<Value>,
    error: Option<String>,
    compensation_status: Option<String>,
    compensation_attempt: i32,
    compensation_outputs: Option<Value>,
    compensation_error: Option<String>,
    #[sqlx(try_from = "crate::db::NullableUuid")]
    task_id: Option<TaskId>,
    kind: Option<String>,
}
