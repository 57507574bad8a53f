//! Child requests of compound Promises, against Postgres: filing a promise
//! step's child, reading where it stands, deleting it to compensate, and
//! the parent ↔ child links the API shows.
//!
//! The decisions are the state machine's (`crate::run::child`); this module
//! does the reads and writes they need, on the transaction of the timer
//! being fired, so a child is filed or deleted exactly when the timer that
//! asked for it is consumed.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use fulfil_core::child::ChildWith;
use fulfil_core::ids::{RequestId, RunId, TaskId};
use fulfil_core::status::{AttemptStatus, RequestStatus, RunKind};
use fulfil_core::wire::TaskKind;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::Engine;
use crate::promises::PromiseError;
use crate::requests::{RequestError, Staged};
use crate::run::child::{ChildState, TimerAttempt};
use crate::run::{Run, RunError};

/// The attempt a child timer names, as stored; `None` if it is gone.
pub(crate) async fn timer_attempt(
    conn: &mut PgConnection,
    task_id: TaskId,
) -> Result<Option<TimerAttempt>, RunError> {
    let row: Option<(i32, String, String)> =
        sqlx::query_as("SELECT attempt, kind, status FROM fulfil.attempts WHERE task_id = $1")
            .bind(task_id.as_uuid())
            .fetch_optional(conn)
            .await?;
    row.map(|(attempt, kind, status)| {
        Ok(TimerAttempt {
            task_id,
            attempt,
            kind: TaskKind::parse(&kind)?,
            status: AttemptStatus::parse(&status)?,
        })
    })
    .transpose()
}

/// The latest compensation attempt of `step_id` of `run_id`, if any.
pub(crate) async fn compensation_attempt(
    conn: &mut PgConnection,
    run_id: RunId,
    step_id: &str,
) -> Result<Option<TimerAttempt>, RunError> {
    let task: Option<Uuid> = sqlx::query_scalar(
        "SELECT task_id FROM fulfil.attempts
         WHERE run_id = $1 AND step_id = $2 AND kind = 'compensation'
         ORDER BY attempt DESC LIMIT 1",
    )
    .bind(run_id.as_uuid())
    .bind(step_id)
    .fetch_optional(&mut *conn)
    .await?;
    match task {
        Some(task) => timer_attempt(conn, TaskId::from(task)).await,
        None => Ok(None),
    }
}

/// A child request as [`ChildRow`] reads it: with the error of its latest
/// run (its delete run's, once deleting).
const CHILD_ROW: &str = "SELECT r.id, r.run_id, r.promise, r.status, r.outputs,
                COALESCE(d.error, c.error) AS error
         FROM fulfil.requests r
              LEFT JOIN fulfil.runs c ON c.id = COALESCE(r.reconcile_run_id, r.run_id)
              LEFT JOIN fulfil.runs d ON d.id = r.delete_run_id";

#[derive(sqlx::FromRow)]
struct ChildRow {
    id: Uuid,
    run_id: Option<Uuid>,
    promise: String,
    status: String,
    outputs: Option<Value>,
    error: Option<String>,
}

/// The child filed by attempt `attempt` of `step_id` of run `run_id`, with
/// the error of its latest run (its delete run's, once deleting).
pub(crate) async fn child_of(
    conn: &mut PgConnection,
    run_id: RunId,
    step_id: &str,
    attempt: i32,
) -> Result<Option<ChildState>, RunError> {
    let key = fulfil_core::child::idempotency_key(run_id, step_id, attempt);
    let row: Option<ChildRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{CHILD_ROW} WHERE r.parent_run_id = $1 AND r.idempotency_key = $2"
    )))
    .bind(run_id.as_uuid())
    .bind(&key)
    .fetch_optional(conn)
    .await?;
    row.map(ChildRow::into_state).transpose()
}

impl ChildRow {
    fn into_state(self) -> Result<ChildState, RunError> {
        let run_id = self
            .run_id
            .map(RunId::from)
            .ok_or_else(|| RunError::Corrupt(format!("child request {} has no run", self.id)))?;
        Ok(ChildState {
            request_id: RequestId::from(self.id),
            run_id,
            promise: self.promise,
            status: RequestStatus::parse(&self.status)?,
            outputs: self.outputs,
            error: self.error,
            replayed: true,
        })
    }
}

/// Arms the `child_done` timer of `parent`'s step, due now, and wakes the
/// engines' timer loops: for a child whose change no run of its own ends
/// with (a forced delete). A timer that finds nothing to do is harmless.
pub(crate) async fn tell_parent(
    conn: &mut PgConnection,
    parent: &fulfil_core::child::ParentLink,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO fulfil.timers (run_id, step_id, kind, task_id, fire_at)
         VALUES ($1, $2, 'child_done', $3, now())",
    )
    .bind(parent.run_id.as_uuid())
    .bind(&parent.step)
    .bind(parent.task_id.as_uuid())
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(crate::timers::CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The child a reconcile (or upgrade) run's promise step stands for: the
/// latest child its request's runs filed at that step that is not being
/// deleted. Such runs re-run the configure workflow over live resources;
/// they take the child's outputs rather than file a second child (the
/// child's own Promise reconciles it).
async fn live_child_of_request(
    conn: &mut PgConnection,
    request_id: RequestId,
    step_id: &str,
) -> Result<Option<ChildState>, RunError> {
    let row: Option<ChildRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{CHILD_ROW} WHERE r.parent_request_id = $1 AND r.parent_step = $2
               AND r.status NOT IN ('deleting', 'deleted')
         ORDER BY r.created_at DESC, r.id DESC LIMIT 1"
    )))
    .bind(request_id.as_uuid())
    .bind(step_id)
    .fetch_optional(conn)
    .await?;
    row.map(ChildRow::into_state).transpose()
}

/// Files the child of `attempt` of promise step `step_id` of the locked
/// `run`, on `conn` (the firing timer's transaction): the child as filed
/// (or as found, if the attempt filed it before), or why it could not be
/// filed. A filed child's run is stored on `conn` too; the [`Staged`]
/// hands it to this process once the transaction commits.
pub(crate) async fn file(
    engine: &Engine,
    conn: &mut PgConnection,
    run: &Run,
    step_id: &str,
    attempt: &TimerAttempt,
) -> Result<(Result<ChildState, String>, Option<Staged>), RunError> {
    if let Some(child) = child_of(conn, run.run_id(), step_id, attempt.attempt).await? {
        return Ok((Ok(child), None));
    }
    if !matches!(run.kind(), RunKind::Configure | RunKind::Delete)
        && let Some(child) = live_child_of_request(conn, run.request_id(), step_id).await?
    {
        return Ok((Ok(child), None));
    }
    let input = run.step(step_id).and_then(|row| row.input.clone());
    let with = match input.map(ChildWith::from_rendered) {
        Some(Ok(with)) => with,
        Some(Err(message)) => return Ok((Err(message), None)),
        None => {
            return Err(RunError::Corrupt(format!(
                "promise step {step_id} of run {} waits without its input",
                run.run_id()
            )));
        }
    };
    let link = crate::run::child::link(run, step_id, attempt.attempt, attempt.task_id);
    let promise = match engine
        .promises()
        .load_head(engine.pool(), &with.promise)
        .await
    {
        Ok(promise) => promise,
        Err(PromiseError::NotFound(_)) => {
            return Ok((
                Err(format!("no Promise named {:?} is applied", with.promise)),
                None,
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let team: Option<String> = sqlx::query_scalar("SELECT team FROM fulfil.requests WHERE id = $1")
        .bind(run.request_id().as_uuid())
        .fetch_optional(&mut *conn)
        .await?
        .flatten();
    // The engine files for the parent request's team: admission policies
    // judge the child as they judged the parent's filer's team.
    let actor = format!("run:{}", run.run_id());
    let principal = crate::policies::engine_principal(&actor, team.as_deref());
    let params =
        match crate::requests::admit_params(engine, &promise, with.params, &principal).await {
            Ok(params) => params,
            Err(e) => return refused(e).map(|message| (Err(message), None)),
        };
    let mut request = crate::requests::prepare(
        engine,
        Arc::clone(&promise),
        params,
        Some(link.idempotency_key()),
        actor,
        run.context()
            .get("request")
            .and_then(|r| r.get("traceparent"))
            .and_then(Value::as_str),
    );
    request.team = team;
    if let Some(about) = request.context.get_mut("request") {
        about["parent"] = json!(link);
    }
    let staged =
        crate::requests::stage_requests(engine, conn, std::slice::from_ref(&request)).await?;
    let accepted = match staged.outcomes().first() {
        Some(Ok(accepted)) => accepted.clone(),
        Some(Err(e)) => return Ok((Err(e.to_string()), None)),
        None => return Err(RunError::Corrupt("staging a child answered nothing".into())),
    };
    sqlx::query(
        "UPDATE fulfil.requests
         SET parent_request_id = $2, parent_run_id = $3, parent_step = $4
         WHERE id = $1",
    )
    .bind(accepted.request_id.as_uuid())
    .bind(link.request_id.as_uuid())
    .bind(link.run_id.as_uuid())
    .bind(&link.step)
    .execute(&mut *conn)
    .await?;
    let child = ChildState {
        request_id: accepted.request_id,
        run_id: accepted.run_id,
        promise: promise.metadata.name.clone(),
        status: RequestStatus::Running,
        outputs: None,
        error: None,
        replayed: false,
    };
    Ok((Ok(child), Some(staged)))
}

/// Why a child request was refused, for its parent step's error; a
/// failure that is not the request's fault stays an error, to be retried.
fn refused(e: RequestError) -> Result<String, RunError> {
    match e {
        RequestError::InvalidParams {
            promise,
            violations,
        } => Ok(format!(
            "invalid parameters for Promise {promise}: {}",
            fulfil_core::params::describe_violations(&violations)
        )),
        RequestError::Run(e) => Err(e),
        other => Ok(other.to_string()),
    }
}

/// Deletes the child filed by the latest attempt of promise step `step_id`
/// of the locked `run`, on `conn`, as its compensation: the child as it
/// stands after (`None`: no child was filed), or why it could not be
/// deleted.
pub(crate) async fn delete(
    engine: &Engine,
    conn: &mut PgConnection,
    run: &Run,
    step_id: &str,
) -> Result<
    (
        Result<Option<ChildState>, String>,
        Vec<crate::outbox::OutboxRow>,
    ),
    RunError,
> {
    let Some(attempt) = run.step(step_id).map(|row| row.attempt) else {
        return Ok((Ok(None), Vec::new()));
    };
    let Some(child) = child_of(conn, run.run_id(), step_id, attempt).await? else {
        return Ok((Ok(None), Vec::new()));
    };
    let actor = format!("run:{}", run.run_id());
    match crate::deletion::delete_on(engine, conn, child.request_id, &actor).await {
        Ok((_, rows)) => {
            let after = child_of(conn, run.run_id(), step_id, attempt).await?;
            Ok((Ok(after), rows))
        }
        Err(crate::deletion::DeleteError::NotFound(_)) => Ok((Ok(None), Vec::new())),
        Err(crate::deletion::DeleteError::Run(e)) => Err(e),
    }
}

/// A child request as its parent shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ChildLink {
    #[sqlx(try_from = "Uuid")]
    pub request_id: RequestId,
    #[sqlx(try_from = "crate::db::NullableUuid")]
    pub run_id: Option<RunId>,
    pub promise: String,
    pub step: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// Where a child request comes from, as it shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ParentRef {
    #[sqlx(try_from = "Uuid")]
    pub request_id: RequestId,
    #[sqlx(try_from = "Uuid")]
    pub run_id: RunId,
    pub step: String,
}

/// Every child request the runs `run_ids` filed, oldest first, with the
/// run that filed it.
pub async fn children_of_runs(
    pool: &PgPool,
    run_ids: &[RunId],
) -> Result<Vec<(RunId, ChildLink)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(try_from = "Uuid")]
        parent_run_id: RunId,
        #[sqlx(flatten)]
        child: ChildLink,
    }
    let ids: Vec<Uuid> = run_ids.iter().map(RunId::as_uuid).collect();
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT parent_run_id, id AS request_id, run_id, promise, parent_step AS step, status,
                created_at
         FROM fulfil.requests WHERE parent_run_id = ANY($1) ORDER BY created_at, id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.parent_run_id, r.child))
        .collect())
}

/// Every child request the runs of request `request_id` filed, oldest
/// first.
pub async fn children_of_request(
    pool: &PgPool,
    request_id: RequestId,
) -> Result<Vec<ChildLink>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id AS request_id, run_id, promise, parent_step AS step, status, created_at
         FROM fulfil.requests WHERE parent_request_id = $1 ORDER BY created_at, id",
    )
    .bind(request_id.as_uuid())
    .fetch_all(pool)
    .await
}

/// The parent of request `request_id`, if it is a child.
pub async fn parent_of(
    pool: &PgPool,
    request_id: RequestId,
) -> Result<Option<ParentRef>, sqlx::Error> {
    sqlx::query_as(
        "SELECT parent_request_id AS request_id, parent_run_id AS run_id, parent_step AS step
         FROM fulfil.requests WHERE id = $1 AND parent_run_id IS NOT NULL",
    )
    .bind(request_id.as_uuid())
    .fetch_optional(pool)
    .await
}
