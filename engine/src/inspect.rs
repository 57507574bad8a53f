//! Read models for operators: requests, runs with their steps and attempts,
//! and run history. Lists are newest first and paged by keyset cursors (ids
//! are UUIDv7, so id order is creation order).

use chrono::{DateTime, Utc};
use fulfil_core::ids::{RequestId, RunId, TaskId};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// Largest page a list returns.
pub const MAX_PAGE: i64 = 500;
pub const DEFAULT_PAGE: i64 = 50;

/// A page of a list.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RequestView {
    #[sqlx(try_from = "Uuid")]
    pub id: RequestId,
    pub promise: String,
    pub promise_version: String,
    pub params: Value,
    pub status: String,
    #[sqlx(try_from = "crate::db::NullableUuid")]
    pub run_id: Option<RunId>,
    /// The delete run, once the request is being deleted (none when it was
    /// deleted without one).
    #[sqlx(try_from = "crate::db::NullableUuid")]
    pub delete_run_id: Option<RunId>,
    /// The latest reconcile run, if any (see [`crate::reconcile`]).
    #[sqlx(try_from = "crate::db::NullableUuid")]
    pub reconcile_run_id: Option<RunId>,
    pub outputs: Option<Value>,
    pub idempotency_key: Option<String>,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunSummary {
    #[sqlx(try_from = "Uuid")]
    pub id: RunId,
    #[sqlx(try_from = "Uuid")]
    pub request_id: RequestId,
    pub promise: String,
    pub promise_version: String,
    pub kind: String,
    pub status: String,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    #[serde(flatten)]
    pub run: RunSummary,
    pub steps: Vec<StepView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub id: String,
    pub status: String,
    pub attempt: i32,
    pub attempts: Vec<AttemptView>,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    /// For a waiting engine-run step, what it waits for:
    /// `{kind: event|approval|sleep, ..., until}` (an approval's decisions
    /// so far included).
    pub waiting_for: Option<Value>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AttemptView {
    pub attempt: i32,
    pub status: String,
    #[sqlx(try_from = "Uuid")]
    pub task_id: TaskId,
    pub handler: String,
    pub queue: String,
    pub input: Value,
    pub dispatched_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub worker: Option<String>,
    pub error: Option<Value>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct HistoryEvent {
    pub seq: i64,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: String,
    #[serde(rename = "step")]
    pub step_id: Option<String>,
    pub attempt: Option<i32>,
    pub actor: String,
    pub at: DateTime<Utc>,
    pub data: Value,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The cursor was not produced by this API.
    #[error("invalid cursor {0:?}")]
    InvalidCursor(String),
    /// Postgres failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

pub(crate) fn page_size(limit: Option<i64>) -> i64 {
    limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

pub(crate) fn uuid_cursor(cursor: Option<&str>) -> Result<Option<Uuid>, InspectError> {
    cursor
        .map(|c| Uuid::parse_str(c).map_err(|_| InspectError::InvalidCursor(c.to_string())))
        .transpose()
}

pub(crate) fn paged<T>(mut items: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> Page<T> {
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(cursor_of)
    } else {
        None
    };
    Page { items, next_cursor }
}

pub async fn get_request(
    pool: &PgPool,
    id: RequestId,
) -> Result<Option<RequestView>, InspectError> {
    Ok(sqlx::query_as(
        "SELECT id, promise, promise_version, params, status, run_id, delete_run_id, reconcile_run_id, outputs, idempotency_key, created_by,
                created_at, updated_at
         FROM fulfil.requests WHERE id = $1",
    )
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await?)
}

/// Filters of a request list; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    pub promise: Option<String>,
    pub status: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

pub async fn list_requests(
    pool: &PgPool,
    filter: &RequestFilter,
) -> Result<Page<RequestView>, InspectError> {
    let limit = page_size(filter.limit);
    let items: Vec<RequestView> = sqlx::query_as(
        "SELECT id, promise, promise_version, params, status, run_id, delete_run_id, reconcile_run_id, outputs, idempotency_key, created_by,
                created_at, updated_at
         FROM fulfil.requests
         WHERE ($1::text IS NULL OR promise = $1) AND ($2::text IS NULL OR status = $2)
           AND ($3::uuid IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4",
    )
    .bind(&filter.promise)
    .bind(&filter.status)
    .bind(uuid_cursor(filter.cursor.as_deref())?)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(paged(items, limit, |r| r.id.to_string()))
}

/// Filters of a run list; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub promise: Option<String>,
    pub status: Option<String>,
    /// A run kind's spelling (`configure`, `delete`, ...).
    pub kind: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

const RUN_COLUMNS: &str = "id, request_id, promise, promise_version, kind, status, outputs, error, created_at, finished_at";

pub async fn list_runs(
    pool: &PgPool,
    filter: &RunFilter,
) -> Result<Page<RunSummary>, InspectError> {
    let limit = page_size(filter.limit);
    let items: Vec<RunSummary> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM fulfil.runs
         WHERE ($1::text IS NULL OR promise = $1) AND ($2::text IS NULL OR status = $2)
           AND ($3::timestamptz IS NULL OR created_at >= $3) AND ($4::uuid IS NULL OR id < $4)
           AND ($6::text IS NULL OR kind = $6)
         ORDER BY id DESC LIMIT $5"
    )))
    .bind(&filter.promise)
    .bind(&filter.status)
    .bind(filter.since)
    .bind(uuid_cursor(filter.cursor.as_deref())?)
    .bind(limit + 1)
    .bind(&filter.kind)
    .fetch_all(pool)
    .await?;
    Ok(paged(items, limit, |r| r.id.to_string()))
}

/// A run with every step and every attempt.
pub async fn get_run(pool: &PgPool, id: RunId) -> Result<Option<RunView>, InspectError> {
    let run: Option<RunSummary> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM fulfil.runs WHERE id = $1"
    )))
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await?;
    let Some(run) = run else {
        return Ok(None);
    };
    let steps: Vec<StepRow> = sqlx::query_as(
        "SELECT s.step_id, s.status, s.attempt, s.outputs, s.error,
                CASE WHEN s.status = 'waiting' THEN
                    CASE WHEN w.kind = 'approval'
                         THEN w.waiting_for || jsonb_build_object('decisions', w.decisions)
                         ELSE w.waiting_for END
                END AS waiting_for
         FROM fulfil.steps s
              LEFT JOIN fulfil.waits w ON w.run_id = s.run_id AND w.step_id = s.step_id
         WHERE s.run_id = $1 ORDER BY s.position",
    )
    .bind(id.as_uuid())
    .fetch_all(pool)
    .await?;
    let attempts: Vec<(String, AttemptView)> = sqlx::query_as::<_, AttemptRow>(
        "SELECT step_id, attempt, status, task_id, handler, queue, input, dispatched_at, deadline, started_at,
                finished_at, worker, error
         FROM fulfil.attempts WHERE run_id = $1 ORDER BY step_id, attempt",
    )
    .bind(id.as_uuid())
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.step_id, row.attempt))
    .collect();
    let steps = steps
        .into_iter()
        .map(|row| StepView {
            attempts: attempts
                .iter()
                .filter(|(s, _)| *s == row.step_id)
                .map(|(_, a)| a.clone())
                .collect(),
            id: row.step_id,
            status: row.status,
            attempt: row.attempt,
            outputs: row.outputs,
            error: row.error,
            waiting_for: row.waiting_for,
        })
        .collect();
    Ok(Some(RunView { run, steps }))
}

#[derive(sqlx::FromRow)]
struct StepRow {
    step_id: String,
    status: String,
    attempt: i32,
    outputs: Option<Value>,
    error: Option<String>,
    waiting_for: Option<Value>,
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    step_id: String,
    #[sqlx(flatten)]
    attempt: AttemptView,
}

/// History of a run in order, after sequence number `cursor`.
pub async fn history(
    pool: &PgPool,
    run_id: RunId,
    cursor: Option<&str>,
    limit: Option<i64>,
) -> Result<Option<Page<HistoryEvent>>, InspectError> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM fulfil.runs WHERE id = $1)")
            .bind(run_id.as_uuid())
            .fetch_one(pool)
            .await?;
    if !exists {
        return Ok(None);
    }
    let after: i64 = match cursor {
        Some(c) => c
            .parse()
            .map_err(|_| InspectError::InvalidCursor(c.to_string()))?,
        None => 0,
    };
    let limit = page_size(limit.or(Some(MAX_PAGE)));
    let items: Vec<HistoryEvent> = sqlx::query_as(
        "SELECT seq, type, step_id, attempt, actor, at, data FROM fulfil.history
         WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(run_id.as_uuid())
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(Some(paged(items, limit, |e| e.seq.to_string())))
}
