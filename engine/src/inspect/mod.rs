//! Read models for operators: requests, runs with their steps and attempts,
//! and run history. Lists are newest first and paged by keyset cursors (ids
//! are UUIDv7, so id order is creation order): a page is one index range
//! scan below the cursor, so pages never repeat or skip a row, and rows
//! created while a client pages sort before its first page.
//!
//! The run list ([`list_runs`]) and a run's detail ([`get_run`]) live in
//! their own modules; every filter of the list is served by an index
//! (migration `..._queries.sql`).

mod run_list;
mod run_view;

pub use run_list::{RunFilter, RunSummary, WaitingFor, explain_list_runs, list_runs};
pub use run_view::{AttemptView, InstanceCounts, RunView, StepView, get_run};

use chrono::{DateTime, Utc};
use fulfil_core::ids::{RequestId, RunId};
use fulfil_core::status::RequestStatus;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// Largest page a list returns.
pub const MAX_PAGE: i64 = 500;
/// The page a list returns when no `limit` is given.
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
    /// The filing principal's team; `None` for requests the engine filed
    /// (triggers, schedules) or filed with access control off.
    pub team: Option<String>,
    /// For a child request (filed by a promise step): its parent request,
    /// run and step (the API nests them as `parent`).
    #[sqlx(try_from = "crate::db::NullableUuid")]
    #[serde(skip)]
    pub parent_request_id: Option<RequestId>,
    #[sqlx(try_from = "crate::db::NullableUuid")]
    #[serde(skip)]
    pub parent_run_id: Option<RunId>,
    #[serde(skip)]
    pub parent_step: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Pinned to its version: no rollout upgrades it (`crate::rollout`).
    pub pinned: bool,
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
        "SELECT id, promise, promise_version, params, status, run_id, delete_run_id, reconcile_run_id, outputs, idempotency_key, created_by, team,
                parent_request_id, parent_run_id, parent_step,
                created_at, updated_at, pinned
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
    pub status: Option<RequestStatus>,
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

pub async fn list_requests(
    pool: &PgPool,
    filter: &RequestFilter,
) -> Result<Page<RequestView>, InspectError> {
    let limit = page_size(filter.limit);
    let mut query = sqlx::QueryBuilder::new(
        "SELECT id, promise, promise_version, params, status, run_id, delete_run_id, reconcile_run_id, outputs, idempotency_key, created_by, team,
                parent_request_id, parent_run_id, parent_step,
                created_at, updated_at, pinned
         FROM fulfil.requests WHERE true",
    );
    if let Some(promise) = &filter.promise {
        query.push(" AND promise = ").push_bind(promise.clone());
    }
    if let Some(status) = filter.status {
        // A closed vocabulary, spelled as a literal so the plan is chosen for
        // this value (`requests_status_idx`).
        query.push(format_args!(" AND status = '{}'", status.as_str()));
    }
    if let Some(cursor) = uuid_cursor(filter.cursor.as_deref())? {
        query.push(" AND id < ").push_bind(cursor);
    }
    query.push(" ORDER BY id DESC LIMIT ").push_bind(limit + 1);
    let items: Vec<RequestView> = query.build_query_as().fetch_all(pool).await?;
    Ok(paged(items, limit, |r| r.id.to_string()))
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
