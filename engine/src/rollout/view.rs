//! Reading rollouts: one with its progress and failures, or a Promise's
//! rollouts newest first, a page at a time.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use fulfil_core::ids::{RequestId, RolloutId, RunId};
use fulfil_core::status::RolloutStatus;
use sqlx::PgPool;
use uuid::Uuid;

use super::RolloutError;
use crate::inspect::{InspectError, Page, page_size, paged, uuid_cursor};

/// How many targets are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct RolloutProgress {
    pub total: i64,
    pub pending: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub skipped: i64,
}

/// A target whose upgrade run did not succeed (or could not be created).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutFailure {
    pub request_id: RequestId,
    /// The version the request kept.
    pub from_version: String,
    /// Its upgrade run; `None` when none could be created.
    pub run_id: Option<RunId>,
    pub error: Option<String>,
}

/// A rollout as stored, with its progress and failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutView {
    pub id: RolloutId,
    pub promise: String,
    pub to_version: String,
    pub max_concurrent: i32,
    pub selector: Option<String>,
    pub status: RolloutStatus,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub progress: RolloutProgress,
    /// The failed targets, oldest failure first (at most
    /// [`MAX_FAILURES`]; `progress.failed` counts them all).
    pub failures: Vec<RolloutFailure>,
}

/// Most failures one rollout lists.
pub const MAX_FAILURES: i64 = 1000;

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    promise: String,
    to_version: String,
    max_concurrent: i32,
    selector: Option<String>,
    status: String,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    #[sqlx(flatten)]
    progress: RolloutProgress,
}

#[derive(sqlx::FromRow)]
struct FailureRow {
    rollout_id: Uuid,
    request_id: Uuid,
    from_version: String,
    run_id: Option<Uuid>,
    error: Option<String>,
}

const SELECT: &str = "SELECT r.id, r.promise, r.to_version, r.max_concurrent, r.selector, r.status,
        r.created_by, r.created_at, r.updated_at, r.finished_at,
        c.total, c.pending, c.running, c.succeeded, c.failed, c.skipped
   FROM fulfil.rollouts r
   CROSS JOIN LATERAL (
       SELECT count(*) AS total,
              count(*) FILTER (WHERE t.state = 'pending') AS pending,
              count(*) FILTER (WHERE t.state = 'running') AS running,
              count(*) FILTER (WHERE t.state = 'succeeded') AS succeeded,
              count(*) FILTER (WHERE t.state = 'failed') AS failed,
              count(*) FILTER (WHERE t.state = 'skipped') AS skipped
         FROM fulfil.rollout_targets t WHERE t.rollout_id = r.id) c";

/// Rollout `id`, or `None`.
pub async fn get(pool: &PgPool, id: RolloutId) -> Result<Option<RolloutView>, RolloutError> {
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE r.id = $1")))
        .bind(id.as_uuid())
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let mut views = with_failures(pool, vec![row]).await?;
    Ok(views.pop())
}

/// Filters of a rollout list.
#[derive(Debug, Clone, Default)]
pub struct RolloutFilter {
    /// The Promise whose rollouts are listed.
    pub promise: String,
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

/// The Promise's rollouts, newest first.
pub async fn list(pool: &PgPool, filter: &RolloutFilter) -> Result<Page<RolloutView>, ListError> {
    let limit = page_size(filter.limit);
    let cursor = uuid_cursor(filter.cursor.as_deref())?;
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE r.promise = $1 AND ($2::uuid IS NULL OR r.id < $2)
          ORDER BY r.id DESC LIMIT $3"
    )))
    .bind(&filter.promise)
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(pool)
    .await
    .map_err(InspectError::Db)?;
    let views = with_failures(pool, rows).await?;
    Ok(paged(views, limit, |r| r.id.to_string()))
}

/// Why a rollout list failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// A bad cursor, or Postgres failed.
    #[error(transparent)]
    Inspect(#[from] InspectError),
    /// A stored value this version does not know, or Postgres failed.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
}

async fn with_failures(pool: &PgPool, rows: Vec<Row>) -> Result<Vec<RolloutView>, RolloutError> {
    let ids: Vec<Uuid> = rows
        .iter()
        .filter(|r| r.progress.failed > 0)
        .map(|r| r.id)
        .collect();
    let mut failures: HashMap<Uuid, Vec<RolloutFailure>> = HashMap::new();
    if !ids.is_empty() {
        let found: Vec<FailureRow> = sqlx::query_as(
            "SELECT rollout_id, request_id, from_version, run_id, error
               FROM (SELECT t.*, row_number() OVER (PARTITION BY rollout_id
                                                    ORDER BY updated_at, request_id) AS n
                       FROM fulfil.rollout_targets t
                      WHERE rollout_id = ANY($1) AND state = 'failed') f
              WHERE n <= $2
              ORDER BY rollout_id, n",
        )
        .bind(&ids)
        .bind(MAX_FAILURES)
        .fetch_all(pool)
        .await?;
        for f in found {
            failures
                .entry(f.rollout_id)
                .or_default()
                .push(RolloutFailure {
                    request_id: RequestId::from(f.request_id),
                    from_version: f.from_version,
                    run_id: f.run_id.map(RunId::from),
                    error: f.error,
                });
        }
    }
    rows.into_iter()
        .map(|row| {
            Ok(RolloutView {
                id: RolloutId::from(row.id),
                status: RolloutStatus::parse(&row.status)?,
                failures: failures.remove(&row.id).unwrap_or_default(),
                promise: row.promise,
                to_version: row.to_version,
                max_concurrent: row.max_concurrent,
                selector: row.selector,
                created_by: row.created_by,
                created_at: row.created_at,
                updated_at: row.updated_at,
                finished_at: row.finished_at,
                progress: row.progress,
            })
        })
        .collect()
}
