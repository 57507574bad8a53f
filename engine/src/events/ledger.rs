//! Reading the event ledger and the dead letters, and keeping both within
//! their retention window.
//!
//! Lists are newest first, paged by keyset cursors on the UUIDv7 ids, so a
//! page never repeats or skips an entry while new events arrive.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fulfil_core::status::{EventOutcome, EventVia};
use serde_json::Value;
use sqlx::PgPool;
use tracing::{debug, warn};
use uuid::Uuid;

use super::model::{DeadLetter, LedgerEntry, TriggerOutcome, WaitCompleted};
use crate::inspect::{InspectError, Page, page_size, paged, uuid_cursor};

/// How long received events and dead letters are kept, unless configured.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Filters of `GET /v1/events`; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct LedgerFilter {
    pub event_type: Option<String>,
    pub source: Option<String>,
    /// Events where at least one trigger had this outcome.
    pub outcome: Option<EventOutcome>,
    pub since: Option<DateTime<Utc>>,
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

type LedgerRow = (
    Uuid,
    DateTime<Utc>,
    String,
    Option<String>,
    String,
    String,
    String,
    Value,
    Value,
    Value,
    Option<Uuid>,
    Option<String>,
);

const LEDGER_COLUMNS: &str = "ledger_id, received_at, via, nats_subject, event_id, source, type, event, outcomes, waits_completed, dead_letter_id, received_by";

fn entry(row: LedgerRow) -> Result<LedgerEntry, InspectError> {
    let (
        ledger_id,
        received_at,
        via,
        nats_subject,
        id,
        source,
        event_type,
        event,
        outcomes,
        waits,
        dead_letter_id,
        received_by,
    ) = row;
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        InspectError::Db(sqlx::Error::Decode(
            format!("ledger entry {ledger_id}: {what}: {e}").into(),
        ))
    };
    Ok(LedgerEntry {
        ledger_id,
        received_at,
        via: EventVia::parse(&via).map_err(|e| corrupt("via", &e))?,
        nats_subject,
        id,
        source,
        event_type,
        event,
        outcomes: serde_json::from_value::<Vec<TriggerOutcome>>(outcomes)
            .map_err(|e| corrupt("outcomes", &e))?,
        waits_completed: serde_json::from_value::<Vec<WaitCompleted>>(waits)
            .map_err(|e| corrupt("waits_completed", &e))?,
        dead_letter_id,
        received_by,
    })
}

/// A page of the ledger, newest first.
pub async fn list_events(
    pool: &PgPool,
    filter: &LedgerFilter,
) -> Result<Page<LedgerEntry>, InspectError> {
    let limit = page_size(filter.limit);
    // Containment on the outcomes array is served by its GIN index.
    let outcome = filter
        .outcome
        .map(|o| serde_json::json!([{ "outcome": o.as_str() }]));
    let rows: Vec<LedgerRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LEDGER_COLUMNS} FROM fulfil.event_ledger
         WHERE ($1::text IS NULL OR type = $1) AND ($2::text IS NULL OR source = $2)
           AND ($3::jsonb IS NULL OR outcomes @> $3)
           AND ($4::timestamptz IS NULL OR received_at >= $4)
           AND ($5::uuid IS NULL OR ledger_id < $5)
         ORDER BY ledger_id DESC LIMIT $6"
    )))
    .bind(&filter.event_type)
    .bind(&filter.source)
    .bind(outcome)
    .bind(filter.since)
    .bind(uuid_cursor(filter.cursor.as_deref())?)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let items = rows.into_iter().map(entry).collect::<Result<Vec<_>, _>>()?;
    Ok(paged(items, limit, |e| e.ledger_id.to_string()))
}

/// One ledger entry.
pub async fn get_event(
    pool: &PgPool,
    ledger_id: Uuid,
) -> Result<Option<LedgerEntry>, InspectError> {
    let row: Option<LedgerRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LEDGER_COLUMNS} FROM fulfil.event_ledger WHERE ledger_id = $1"
    )))
    .bind(ledger_id)
    .fetch_optional(pool)
    .await?;
    row.map(entry).transpose()
}

#[derive(sqlx::FromRow)]
struct DeadLetterRow {
    id: Uuid,
    received_at: DateTime<Utc>,
    subject: Option<String>,
    reason: String,
    headers: Value,
    payload: Vec<u8>,
    ledger_id: Option<Uuid>,
    replays: i32,
    replayed_at: Option<DateTime<Utc>>,
    last_replay: Option<Value>,
}

const DEAD_LETTER_COLUMNS: &str = "id, received_at, subject, reason, headers, payload, ledger_id, replays, replayed_at, last_replay";

fn dead_letter(row: DeadLetterRow) -> Result<DeadLetter, InspectError> {
    let id = row.id;
    let headers: BTreeMap<String, Vec<String>> =
        serde_json::from_value(row.headers).map_err(|e| {
            InspectError::Db(sqlx::Error::Decode(
                format!("dead letter {id}: headers: {e}").into(),
            ))
        })?;
    let (payload, payload_encoding) = match String::from_utf8(row.payload) {
        Ok(text) => (text, "utf8"),
        Err(e) => (super::cloudevent::base64(e.as_bytes()), "base64"),
    };
    Ok(DeadLetter {
        id,
        received_at: row.received_at,
        subject: row.subject,
        reason: row.reason,
        headers,
        payload,
        payload_encoding: payload_encoding.to_string(),
        ledger_id: row.ledger_id,
        replays: row.replays,
        replayed_at: row.replayed_at,
        last_replay: row.last_replay,
    })
}

/// A page of dead letters, newest first.
pub async fn list_dead_letters(
    pool: &PgPool,
    cursor: Option<&str>,
    limit: Option<i64>,
) -> Result<Page<DeadLetter>, InspectError> {
    let limit = page_size(limit);
    let rows: Vec<DeadLetterRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DEAD_LETTER_COLUMNS} FROM fulfil.dead_letters
         WHERE ($1::uuid IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"
    )))
    .bind(uuid_cursor(cursor)?)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let items = rows
        .into_iter()
        .map(dead_letter)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(paged(items, limit, |d| d.id.to_string()))
}

/// One dead letter, with its original bytes.
pub(crate) async fn load_dead_letter(
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<(Option<String>, BTreeMap<String, Vec<String>>, Vec<u8>)>, InspectError> {
    let row: Option<(Option<String>, Value, Vec<u8>)> =
        sqlx::query_as("SELECT subject, headers, payload FROM fulfil.dead_letters WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    row.map(|(subject, headers, payload)| {
        let headers = serde_json::from_value(headers).map_err(|e| {
            InspectError::Db(sqlx::Error::Decode(
                format!("dead letter {id}: headers: {e}").into(),
            ))
        })?;
        Ok((subject, headers, payload))
    })
    .transpose()
}

/// Most rows one retention statement deletes, so it never holds locks long.
const RETENTION_BATCH: i64 = 1000;

/// Deletes ledger entries and dead letters older than `retention`, in small
/// batches, until none is left; then sleeps `every`. Runs until cancelled.
pub async fn keep_retention(
    pool: PgPool,
    retention: Duration,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    loop {
        let cutoff = Utc::now()
            .checked_sub_signed(retention)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        for (table, column) in [
            ("fulfil.event_ledger", "ledger_id"),
            ("fulfil.dead_letters", "id"),
        ] {
            loop {
                let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE {column} IN
                       (SELECT {column} FROM {table} WHERE received_at < $1 LIMIT $2)"
                )))
                .bind(cutoff)
                .bind(RETENTION_BATCH)
                .execute(&pool)
                .await;
                match deleted {
                    Ok(done) if done.rows_affected() > 0 => {
                        debug!(
                            table,
                            rows = done.rows_affected(),
                            "retention removed old rows"
                        );
                    }
                    Ok(_) => break,
                    Err(e) => {
                        warn!(table, error = %e, "retention could not remove old rows; trying later");
                        break;
                    }
                }
                if stop.is_cancelled() {
                    return;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
