//! Run retention: finished runs older than a configured age are removed with
//! every row keyed by their id (steps, attempts, history, timers, waits,
//! parked timers and parked status events).
//!
//! Contract:
//! - Only terminal runs (`succeeded`, `failed`, `compensated`, `cancelled`)
//!   whose `finished_at` is older than the cutoff are removed; running,
//!   waiting and recent runs are never touched. A run whose status events are
//!   not yet published (`fulfil.status_outbox`) waits for the publisher.
//! - Batches are small and each is one short transaction that locks its
//!   runs with `FOR UPDATE SKIP LOCKED`: a run an engine holds (an operator
//!   retrying it, say) is skipped this round and re-checked next round, and
//!   the engine's hot path never waits for retention.
//! - Requests are the record of what exists, so they stay when their runs
//!   go: `GET /v1/requests/{id}` keeps answering, with a `run_id` that may
//!   then answer 404. A request in status `deleted` whose last run is
//!   removed is removed too (with its reconcile row): nothing it describes
//!   exists any more.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

/// How long finished runs are kept unless configured otherwise.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// Runs one batch removes.
pub const DEFAULT_BATCH: i64 = 500;

/// How retention runs.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Finished runs older than this are removed.
    pub keep: Duration,
    /// Runs removed per transaction.
    pub batch: i64,
    /// Pause between two batches, so a backlog drains without hogging
    /// Postgres.
    pub pause: Duration,
    /// Pause once nothing is left to remove.
    pub every: Duration,
}

impl RetentionConfig {
    /// Keep finished runs for `keep`, with the default batch and pauses.
    pub fn keeping(keep: Duration) -> Self {
        Self {
            keep,
            batch: DEFAULT_BATCH,
            pause: Duration::from_millis(200),
            every: Duration::from_secs(60),
        }
    }
}

/// Why a retention batch failed.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// Postgres failed; the batch rolled back and is tried again later.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// What one batch removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub runs: u64,
    pub requests: u64,
}

/// Removes up to `batch` runs that finished before `cutoff`, in one
/// transaction, with their rows and with the `deleted` requests left
/// without runs.
pub async fn remove_batch(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<Removed, RetentionError> {
    let mut tx = pool.begin().await?;
    // Every child table lost its foreign key to runs (migration
    // `..._hot_path_without_foreign_keys.sql`), so one statement removes a
    // run and its rows in any order.
    let requests: Vec<Uuid> = sqlx::query_scalar(
        "WITH doomed AS (
             SELECT r.id, r.request_id FROM fulfil.runs r
             WHERE r.finished_at IS NOT NULL AND r.finished_at < $1
               AND r.status IN ('succeeded', 'failed', 'compensated', 'cancelled')
               AND NOT EXISTS (SELECT 1 FROM fulfil.status_outbox o WHERE o.run_id = r.id)
             ORDER BY r.finished_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         ),
         history AS (DELETE FROM fulfil.history WHERE run_id IN (SELECT id FROM doomed)),
         attempts AS (DELETE FROM fulfil.attempts WHERE run_id IN (SELECT id FROM doomed)),
         steps AS (DELETE FROM fulfil.steps WHERE run_id IN (SELECT id FROM doomed)),
         timers AS (DELETE FROM fulfil.timers WHERE run_id IN (SELECT id FROM doomed)),
         waits AS (DELETE FROM fulfil.waits WHERE run_id IN (SELECT id FROM doomed)),
         parked_timers AS (
             DELETE FROM fulfil.parked_timers WHERE run_id IN (SELECT id FROM doomed)),
         parked_status AS (
             DELETE FROM fulfil.parked_status_outbox WHERE run_id IN (SELECT id FROM doomed)),
         runs AS (
             DELETE FROM fulfil.runs WHERE id IN (SELECT id FROM doomed) RETURNING request_id)
         SELECT request_id FROM runs",
    )
    .bind(cutoff)
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let runs = requests.len() as u64;
    let gone = if requests.is_empty() {
        0
    } else {
        sqlx::query(
            "WITH gone AS (
                 SELECT q.id FROM fulfil.requests q
                 WHERE q.id = ANY($1) AND q.status = 'deleted'
                   AND NOT EXISTS (SELECT 1 FROM fulfil.runs r WHERE r.request_id = q.id)
                 FOR UPDATE SKIP LOCKED
             ),
             due AS (DELETE FROM fulfil.reconcile_due WHERE request_id IN (SELECT id FROM gone))
             DELETE FROM fulfil.requests WHERE id IN (SELECT id FROM gone)",
        )
        .bind(&requests)
        .execute(&mut *tx)
        .await?
        .rows_affected()
    };
    tx.commit().await?;
    Ok(Removed {
        runs,
        requests: gone,
    })
}

/// Removes old finished runs in batches until none is left, then sleeps
/// `config.every`; runs until `stop` is cancelled. A failed batch is logged
/// and tried again after the pause.
pub async fn keep_runs(pool: PgPool, config: RetentionConfig, stop: CancellationToken) {
    let keep = chrono::Duration::from_std(config.keep).unwrap_or(chrono::Duration::MAX);
    info!(keep = ?config.keep, "run retention on");
    loop {
        let cutoff = Utc::now()
            .checked_sub_signed(keep)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut total = Removed::default();
        loop {
            match remove_batch(&pool, cutoff, config.batch).await {
                Ok(removed) => {
                    total.runs += removed.runs;
                    total.requests += removed.requests;
                    if removed.runs < config.batch.unsigned_abs() {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "run retention could not remove a batch; trying later");
                    break;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(config.pause) => {}
            }
        }
        if total.runs > 0 {
            debug!(
                runs = total.runs,
                requests = total.requests,
                "run retention removed old runs"
            );
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(config.every) => {}
        }
    }
}
