//! Deleting a request (`DELETE /v1/requests/{id}`).
//!
//! [`delete_request`] decides in one transaction that holds the request's
//! configure run and the request itself locked (in that order: the order
//! in which a run's change writes its run and then its request), so
//! concurrent deletes, and a delete and the configure run's end, serialise:
//!
//! * a request already `deleting`, `deleted` or `delete_failed` answers
//!   with the delete run it has (deleting twice starts nothing new);
//! * a finished configure run: the delete run (kind `delete`, the
//!   Promise's `spec.delete` workflow) is created and started now;
//! * a configure run (or the request's reconcile run, see
//!   `crate::reconcile`) still going is handed off
//!   (`run::deleting::hand_off`): it stops at its step boundary
//!   and, when its in-flight attempts have finished, ends `cancelled` and
//!   starts the delete run in the same change. The delete run's id is
//!   chosen and answered now;
//! * a Promise without a `delete` workflow: the request is `deleted` at
//!   once (once its configure run has stopped, if one was going), with no
//!   run;
//! * `force`: the request is `deleted` now without any teardown; a run
//!   still going (configure or delete) is cancelled without compensation,
//!   its in-flight attempts abandoned.
//!
//! History: `request.delete_requested` and `request.deleted` /
//! `request.delete_failed` (data `{request_id, reason?, forced?}`), recorded
//! on the run whose end decides them, with the actor who asked.

use fulfil_core::ids::{RequestId, RunId};
use fulfil_core::status::{RequestStatus, UnknownValue};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Engine;
use crate::run::deleting::{
    Handoff, NewDeleteRun, delete_context, hand_off, kinds, start_delete_run, teardown,
};
use crate::run::{Run, RunError, flush, lock_run};

/// What a delete did, or found done.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deletion {
    pub request_id: RequestId,
    /// The request's status once the delete committed: `deleting`, or
    /// `deleted` when nothing was left to run.
    pub status: RequestStatus,
    /// The delete run; `None` when the request was deleted without one (a
    /// Promise with no `delete` workflow, or `force`).
    pub run_id: Option<RunId>,
    /// This call deleted the request without a teardown.
    pub forced: bool,
    /// The request was already being deleted (or deleted): nothing new was
    /// started, and `run_id` is the delete run it had.
    pub replayed: bool,
}

/// Why a delete was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// There is no such request.
    #[error("no request {0}")]
    NotFound(RequestId),
    /// Stored state this version does not understand, or Postgres failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

impl From<sqlx::Error> for DeleteError {
    fn from(e: sqlx::Error) -> Self {
        Self::Run(RunError::Db(e))
    }
}

impl From<UnknownValue> for DeleteError {
    fn from(e: UnknownValue) -> Self {
        Self::Run(RunError::from(e))
    }
}

impl DeleteError {
    /// Whether trying again may succeed ([`RunError::is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::NotFound(_) => false,
            Self::Run(e) => e.is_transient(),
        }
    }
}

#[derive(sqlx::FromRow)]
struct RequestRow {
    status: String,
    outputs: Option<Value>,
    #[sqlx(try_from = "crate::db::NullableUuid")]
    delete_run_id: Option<RunId>,
    #[sqlx(try_from = "crate::db::NullableUuid")]
    reconcile_run_id: Option<RunId>,
}

/// How many times a delete starts over when a reconcile run started
/// between its first read and its locks.
const TRIES: usize = 3;

/// Deletes request `request_id` on behalf of `actor`; see the module docs.
pub async fn delete_request(
    engine: &Engine,
    request_id: RequestId,
    actor: &str,
    force: bool,
) -> Result<Deletion, DeleteError> {
    for _ in 0..TRIES {
        if let Some(deletion) = try_delete(engine, request_id, actor, force).await? {
            return Ok(deletion);
        }
    }
    // Each retry needs a new reconcile run to have started and its
    // predecessor to have ended within the few milliseconds between two
    // reads: not seen in practice, and refused rather than racing one.
    Err(RunError::Corrupt(format!(
        "request {request_id} kept starting reconcile runs while being deleted; nothing changed, try again"
    ))
    .into())
}

/// One attempt of [`delete_request`]; `None` when a reconcile run of the
/// request started meanwhile (nothing changed: try again).
async fn try_delete(
    engine: &Engine,
    request_id: RequestId,
    actor: &str,
    force: bool,
) -> Result<Option<Deletion>, DeleteError> {
    let mut tx = engine.pool().begin().await?;
    let Some((deletion, rows)) = try_delete_on(engine, &mut tx, request_id, actor, force).await?
    else {
        return Ok(None);
    };
    tx.commit().await?;
    engine.after_commit(rows);
    Ok(Some(deletion))
}

/// Deletes request `request_id` (not forced) on `conn`, a transaction the
/// caller commits, then hands the rows to [`Engine::after_commit`]: how a
/// parent's compensation deletes its child request in the transaction that
/// consumes the timer asking for it.
pub(crate) async fn delete_on(
    engine: &Engine,
    conn: &mut PgConnection,
    request_id: RequestId,
    actor: &str,
) -> Result<(Deletion, Vec<crate::outbox::OutboxRow>), DeleteError> {
    for _ in 0..TRIES {
        // A try that returns `None` wrote nothing: trying again on the same
        // transaction is safe.
        if let Some(done) = try_delete_on(engine, conn, request_id, actor, false).await? {
            return Ok(done);
        }
    }
    Err(RunError::Corrupt(format!(
        "request {request_id} kept starting reconcile runs while being deleted; nothing changed, try again"
    ))
    .into())
}

/// [`try_delete`] on `tx`, without committing.
async fn try_delete_on(
    engine: &Engine,
    tx: &mut PgConnection,
    request_id: RequestId,
    actor: &str,
    force: bool,
) -> Result<Option<(Deletion, Vec<crate::outbox::OutboxRow>)>, DeleteError> {
    // A request's configure run never changes; its latest reconcile run
    // may, and is read again under the request's lock below.
    let ids: Option<(Option<Uuid>, Option<Uuid>)> =
        sqlx::query_as("SELECT run_id, reconcile_run_id FROM fulfil.requests WHERE id = $1")
            .bind(request_id.as_uuid())
            .fetch_optional(&mut *tx)
            .await?;
    let Some((run_id, reconcile_run_id)) = ids else {
        return Err(DeleteError::NotFound(request_id));
    };
    let Some(run_id) = run_id.map(RunId::from) else {
        return Err(RunError::Corrupt(format!("request {request_id} has no run")).into());
    };
    let reconcile_run_id = reconcile_run_id.map(RunId::from);
    // The run that stops or that the teardown follows: a reconcile run in
    // flight is stopped at its step boundary as a configure run is.
    let run_id = crate::reconcile::current_run(&mut *tx, run_id, reconcile_run_id).await?;
    let Some(mut configure) = lock_run(engine, &mut *tx, run_id, actor.to_string()).await? else {
        return Err(
            RunError::Corrupt(format!("run {run_id} of request {request_id} is missing")).into(),
        );
    };
    // A child request tells its parent when it is deleted here and now
    // (forced, or without a teardown): no run of it ends to say so.
    let parent = fulfil_core::child::ParentLink::of_context(configure.context());
    let row: RequestRow = sqlx::query_as(
        "SELECT status, outputs, delete_run_id, reconcile_run_id
         FROM fulfil.requests WHERE id = $1 FOR UPDATE",
    )
    .bind(request_id.as_uuid())
    .fetch_one(&mut *tx)
    .await?;
    if row.reconcile_run_id != reconcile_run_id {
        return Ok(None);
    }
    let status = RequestStatus::parse(&row.status)?;

    let mut runs: Vec<Run> = Vec::with_capacity(2);
    let mut delete_run_id = None;
    // The request's status as this transaction leaves it before the runs'
    // changes are stored (which may end one of them, and set it again).
    let mut settled = RequestStatus::Deleting;
    match status {
        RequestStatus::Deleted => {
            return Ok(Some((
                replay(request_id, status, row.delete_run_id),
                Vec::new(),
            )));
        }
        RequestStatus::Deleting | RequestStatus::DeleteFailed if !force => {
            return Ok(Some((
                replay(request_id, status, row.delete_run_id),
                Vec::new(),
            )));
        }
        RequestStatus::Deleting | RequestStatus::DeleteFailed => {
            // Forced over a delete in progress or failed: whatever is still
            // going stops now, and the request is deleted.
            let delete = match row.delete_run_id {
                Some(id) => lock_run(engine, &mut *tx, id, actor.to_string()).await?,
                None => None,
            };
            delete_run_id = delete.as_ref().map(Run::run_id);
            let forced = Handoff {
                delete_run_id: None,
                actor: actor.to_string(),
                forced: true,
            };
            // The one run whose end decides: the delete run if it is going
            // or ended, else the configure run (still stopping, its delete
            // run not started).
            let target = match delete {
                Some(delete) if !delete.status().is_terminal() => delete,
                _ if !configure.status().is_terminal() => configure,
                Some(delete) => delete,
                None => configure,
            };
            let (run, now) = force_on(&mut *tx, target, forced, request_id).await?;
            runs.push(run);
            settled = now;
        }
        RequestStatus::Accepted
        | RequestStatus::Running
        | RequestStatus::Succeeded
        | RequestStatus::Failed => {
            let teardown = if force {
                None
            } else {
                teardown(configure.promise())?
            };
            if teardown.is_some() {
                let id = RunId::generate();
                delete_run_id = Some(id);
                if configure.status().is_terminal() {
                    let context = delete_context(configure.context(), row.outputs.as_ref());
                    let delete = start_delete_run(
                        &configure,
                        NewDeleteRun {
                            delete_run_id: id,
                            promise: configure.promise().clone(),
                            context,
                            actor: actor.to_string(),
                        },
                    )?;
                    runs.push(configure);
                    runs.push(delete);
                } else {
                    let handoff = Handoff {
                        delete_run_id: Some(id),
                        actor: actor.to_string(),
                        forced: false,
                    };
                    hand_off(&mut configure, handoff.clone())?;
                    persist_handoff(&mut *tx, configure.run_id(), &handoff).await?;
                    runs.push(configure);
                }
            } else {
                let handoff = Handoff {
                    delete_run_id: None,
                    actor: actor.to_string(),
                    forced: force,
                };
                let (run, now) = force_on(&mut *tx, configure, handoff, request_id).await?;
                runs.push(run);
                settled = now;
            }
        }
    }

    // The request moves first; a run that ended in this change (a delete
    // run with nothing to do, a handed-off run with nothing in flight)
    // then sets its final status in the flush below.
    sqlx::query(
        "UPDATE fulfil.requests SET status = $2, delete_run_id = $3, updated_at = now()
         WHERE id = $1",
    )
    .bind(request_id.as_uuid())
    .bind(settled.as_str())
    .bind(delete_run_id.as_ref().map(RunId::as_uuid))
    .execute(&mut *tx)
    .await?;
    crate::reconcile::forget(&mut *tx, request_id).await?;
    let mut rows = flush(&mut *tx, &mut runs).await?;
    rows.extend(delete_children(engine, &mut *tx, request_id, actor, force).await?);
    let status: String = sqlx::query_scalar("SELECT status FROM fulfil.requests WHERE id = $1")
        .bind(request_id.as_uuid())
        .fetch_one(&mut *tx)
        .await?;
    let status = RequestStatus::parse(&status)?;
    if let Some(parent) = parent.filter(|_| status == RequestStatus::Deleted) {
        crate::children::tell_parent(&mut *tx, &parent).await?;
    }
    let deletion = Deletion {
        request_id,
        status,
        run_id: delete_run_id,
        forced: force,
        replayed: false,
    };
    Ok(Some((deletion, rows)))
}

/// Deletes the child requests of `request_id` (filed by its runs' promise
/// steps, see `crate::run::child`) that are not being deleted already, on
/// `tx`, as their parent is (forced or not), each with its own teardown and
/// its own children: a compound request leaves nothing behind. A parent's
/// compensation has deleted the children of the steps it undid.
async fn delete_children(
    engine: &Engine,
    tx: &mut PgConnection,
    request_id: RequestId,
    actor: &str,
    force: bool,
) -> Result<Vec<crate::outbox::OutboxRow>, DeleteError> {
    let children: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM fulfil.requests
         WHERE parent_request_id = $1 AND status NOT IN ('deleting', 'deleted')
         ORDER BY created_at, id",
    )
    .bind(request_id.as_uuid())
    .fetch_all(&mut *tx)
    .await?;
    let mut rows = Vec::new();
    for child in children {
        let child = RequestId::from(child);
        // Boxed: a child's delete deletes its own children in turn (depth
        // bounded by `fulfil_core::child::MAX_DEPTH`).
        let deleted = Box::pin(try_delete_on(engine, tx, child, actor, force)).await?;
        match deleted {
            Some((_, child_rows)) => rows.extend(child_rows),
            None => {
                return Err(RunError::Corrupt(format!(
                    "child request {child} started a reconcile run while its parent \
                     {request_id} was being deleted; nothing changed, try again"
                ))
                .into());
            }
        }
    }
    Ok(rows)
}

fn replay(request_id: RequestId, status: RequestStatus, run_id: Option<RunId>) -> Deletion {
    Deletion {
        request_id,
        status,
        run_id,
        forced: false,
        replayed: true,
    }
}

/// Deletes without a teardown through `run`: a run still going is handed
/// off (forced: it ends now; otherwise at its step boundary, and its end
/// marks the request deleted); a finished one records the deletion now.
/// Returns the run and the request's status this leaves it in before the
/// run's change is stored.
async fn force_on(
    conn: &mut PgConnection,
    mut run: Run,
    handoff: Handoff,
    request_id: RequestId,
) -> Result<(Run, RequestStatus), DeleteError> {
    if run.status().is_terminal() {
        let reason = if handoff.forced {
            "forced"
        } else {
            "the Promise has no delete workflow"
        };
        run.record(
            kinds::REQUEST_DELETE_REQUESTED,
            None,
            None,
            json!({ "request_id": request_id, "forced": handoff.forced }),
        );
        run.record(
            kinds::REQUEST_DELETED,
            None,
            None,
            json!({ "request_id": request_id, "forced": handoff.forced, "reason": reason }),
        );
        return Ok((run, RequestStatus::Deleted));
    }
    hand_off(&mut run, handoff.clone())?;
    persist_handoff(conn, run.run_id(), &handoff).await?;
    Ok((run, RequestStatus::Deleting))
}

/// Stores what a handed-off run's end must do, read back by every engine
/// that loads the run (`run::load`).
async fn persist_handoff(
    conn: &mut PgConnection,
    run_id: RunId,
    handoff: &Handoff,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE fulfil.runs SET delete_run_id = $2, delete_requested_by = $3, delete_forced = $4
         WHERE id = $1",
    )
    .bind(run_id.as_uuid())
    .bind(handoff.delete_run_id.as_ref().map(RunId::as_uuid))
    .bind(&handoff.actor)
    .bind(handoff.forced)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
