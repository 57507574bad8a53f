//! Applying, reading, pausing, resuming and deleting schedules, and
//! reading the tick ledger.
//!
//! Every change takes the schedule's row lock (the ticker's claim waits
//! for it, and it for the ticker), so a change and a tick decision never
//! interleave. A change that moves `next_fire_at` (a resume, a new `cron`
//! or `timezone`) first records the ticks it passes, so no tick is ever
//! skipped without a ledger row: ticks passed while paused are `paused`,
//! ticks of an old expression not yet decided when it was replaced are
//! `missed`, with the reason.

use chrono::{DateTime, SecondsFormat, Utc};
use fulfil_core::ids::RequestId;
use fulfil_core::schedule::{Schedule, Timing};
use fulfil_core::status::{OverlapPolicy, TickOutcome};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::ScheduleError;
use super::ticker::{Decision, pass};
use crate::Engine;
use crate::inspect::{Page, page_size};

/// A stored schedule, as `GET /v1/schedules[/{name}]` answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleRow {
    pub name: String,
    pub owner: Option<String>,
    pub promise: String,
    pub cron: String,
    pub timezone: String,
    pub overlap: OverlapPolicy,
    /// As written (`1h`); `0s` when the document sets none.
    pub catch_up: String,
    pub params: Value,
    pub paused: bool,
    /// The next tick not yet decided; null when the expression has no more
    /// (or the stored schedule could not be read: see its last tick).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// `buffer_one`: the tick waiting for the request in flight.
    pub buffered_at: Option<DateTime<Utc>>,
    /// The request the last filed tick filed.
    pub last_request_id: Option<RequestId>,
    pub paused_by: Option<String>,
    pub paused_at: Option<DateTime<Utc>>,
    pub resumed_by: Option<String>,
    pub resumed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The document as applied, defaults filled in.
    pub document: Value,
}

#[derive(sqlx::FromRow)]
struct StoredRow {
    name: String,
    document: Value,
    promise: String,
    cron: String,
    timezone: String,
    overlap: String,
    params: Value,
    paused: bool,
    next_fire_at: Option<DateTime<Utc>>,
    buffered_at: Option<DateTime<Utc>>,
    last_request_id: Option<Uuid>,
    paused_by: Option<String>,
    paused_at: Option<DateTime<Utc>>,
    resumed_by: Option<String>,
    resumed_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "name, document, promise, cron, timezone, overlap, params, paused, \
     next_fire_at, buffered_at, last_request_id, paused_by, paused_at, resumed_by, resumed_at, \
     created_at, updated_at";

impl TryFrom<StoredRow> for ScheduleRow {
    type Error = ScheduleError;

    fn try_from(row: StoredRow) -> Result<Self, ScheduleError> {
        let overlap = OverlapPolicy::parse(&row.overlap)
            .map_err(|e| ScheduleError::Corrupt(format!("schedule {}: {e}", row.name)))?;
        let text = |pointer: &str| {
            row.document
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Ok(Self {
            owner: text("/metadata/owner"),
            catch_up: text("/spec/catch_up").unwrap_or_else(|| "0s".to_string()),
            name: row.name,
            promise: row.promise,
            cron: row.cron,
            timezone: row.timezone,
            overlap,
            params: row.params,
            paused: row.paused,
            next_fire_at: row.next_fire_at,
            buffered_at: row.buffered_at,
            last_request_id: row.last_request_id.map(RequestId::from),
            paused_by: row.paused_by,
            paused_at: row.paused_at,
            resumed_by: row.resumed_by,
            resumed_at: row.resumed_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            document: row.document,
        })
    }
}

/// One row of the tick ledger.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TickRow {
    pub schedule: String,
    /// When the tick was due by the cron expression.
    pub nominal_at: DateTime<Utc>,
    /// When it was decided: the deciding transaction's clock.
    pub fired_at: DateTime<Utc>,
    pub outcome: TickOutcome,
    /// The request filed (`filed`).
    pub request_id: Option<RequestId>,
    /// Why it did not file, or anything unusual about how it filed.
    pub reason: Option<String>,
}

#[derive(sqlx::FromRow)]
struct StoredTick {
    schedule: String,
    nominal_at: DateTime<Utc>,
    fired_at: DateTime<Utc>,
    outcome: String,
    request_id: Option<Uuid>,
    reason: Option<String>,
}

/// What applying a schedule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PutOutcome {
    /// A new schedule.
    Created,
    /// The document changed.
    Updated,
    /// The same document was applied before; nothing changed.
    Unchanged,
}

/// The answer to applying a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub name: String,
    pub outcome: PutOutcome,
    pub next_fire_at: Option<DateTime<Utc>>,
}

/// Creates or replaces the schedule `schedule.name()`; see the module docs
/// for what a change of `cron`, `timezone` or `paused` does to its ticks.
/// `actor` is recorded when the document pauses or resumes it.
pub async fn put(
    engine: &Engine,
    schedule: &Schedule,
    actor: &str,
) -> Result<Applied, ScheduleError> {
    let document = serde_json::to_value(schedule.document())
        .map_err(|e| ScheduleError::Corrupt(e.to_string()))?;
    let catch_up_ms = i64::try_from(schedule.catch_up().as_millis()).unwrap_or(i64::MAX);
    // Two first PUTs of one name race on the insert; the loser finds the
    // winner's row the second time round.
    for _ in 0..2 {
        let mut tx = engine.pool().begin().await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&mut *tx)
            .await?;
        let old: Option<StoredRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM fulfil.schedules WHERE name = $1 FOR UPDATE"
        )))
        .bind(schedule.name())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(old) = old else {
            let next = schedule.next_after(now);
            let inserted = sqlx::query(
                "INSERT INTO fulfil.schedules
                    (name, document, promise, cron, timezone, overlap, catch_up_ms, params,
                     paused, next_fire_at, paused_by, paused_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                         CASE WHEN $9 THEN $11 END, CASE WHEN $9 THEN now() END)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(schedule.name())
            .bind(&document)
            .bind(schedule.promise())
            .bind(schedule.cron())
            .bind(schedule.timezone())
            .bind(schedule.overlap().as_str())
            .bind(catch_up_ms)
            .bind(schedule.params())
            .bind(schedule.paused())
            .bind(next)
            .bind(actor)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                continue;
            }
            tx.commit().await?;
            engine.wake_schedules();
            return Ok(Applied {
                name: schedule.name().to_string(),
                outcome: PutOutcome::Created,
                next_fire_at: next,
            });
        };
        if old.document == document {
            return Ok(Applied {
                name: old.name,
                outcome: PutOutcome::Unchanged,
                next_fire_at: old.next_fire_at,
            });
        }
        let retimed = old.cron != schedule.cron()
            || old.timezone != schedule.timezone()
            || (old.paused && !schedule.paused());
        let mut next = old.next_fire_at;
        if retimed {
            // The old expression's ticks up to now are decided now, by
            // the old expression; the new one starts after now.
            if let Ok(timing) = Timing::new(&old.cron, &old.timezone) {
                let (outcome, why) = if old.paused {
                    (TickOutcome::Paused, "the schedule was paused".to_string())
                } else {
                    (
                        TickOutcome::Missed,
                        "the schedule was applied with a new cron or timezone before this tick \
                         was decided"
                            .to_string(),
                    )
                };
                pass_until(&mut tx, &timing, &old, now, outcome, &why).await?;
            }
            next = schedule.next_after(now);
        }
        let pausing = schedule.paused() && !old.paused;
        if pausing {
            unbuffer(&mut tx, &old, TickOutcome::Paused, actor).await?;
        }
        sqlx::query(
            "UPDATE fulfil.schedules SET document = $2, promise = $3, cron = $4, timezone = $5,
                overlap = $6, catch_up_ms = $7, params = $8, paused = $9, next_fire_at = $10,
                buffered_at = CASE WHEN $11 THEN NULL ELSE buffered_at END,
                paused_by = CASE WHEN $11 THEN $12 ELSE paused_by END,
                paused_at = CASE WHEN $11 THEN now() ELSE paused_at END,
                resumed_by = CASE WHEN $13 THEN $12 ELSE resumed_by END,
                resumed_at = CASE WHEN $13 THEN now() ELSE resumed_at END,
                updated_at = now()
             WHERE name = $1",
        )
        .bind(schedule.name())
        .bind(&document)
        .bind(schedule.promise())
        .bind(schedule.cron())
        .bind(schedule.timezone())
        .bind(schedule.overlap().as_str())
        .bind(catch_up_ms)
        .bind(schedule.params())
        .bind(schedule.paused())
        .bind(next)
        .bind(pausing)
        .bind(actor)
        .bind(old.paused && !schedule.paused())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        engine.wake_schedules();
        return Ok(Applied {
            name: old.name,
            outcome: PutOutcome::Updated,
            next_fire_at: next,
        });
    }
    Err(ScheduleError::Corrupt(format!(
        "schedule {} was created and deleted while being applied; apply it again",
        schedule.name()
    )))
}

/// Records the ticks of `old` from its `next_fire_at` up to `now` as
/// `outcome` (bounded as the ticker bounds them).
async fn pass_until(
    conn: &mut sqlx::PgConnection,
    timing: &Timing,
    old: &StoredRow,
    now: DateTime<Utc>,
    outcome: TickOutcome,
    why: &str,
) -> Result<(), ScheduleError> {
    let mut ticks = Vec::new();
    pass(
        timing,
        old.next_fire_at,
        |at| at <= now,
        outcome,
        timing.next_after(now),
        &mut ticks,
    );
    let mut nominals = Vec::with_capacity(ticks.len());
    let mut reasons = Vec::with_capacity(ticks.len());
    for (at, decision) in ticks {
        let Decision::Passed {
            count,
            at_least,
            until,
            ..
        } = decision
        else {
            continue;
        };
        nominals.push(at);
        reasons.push(if count <= 1 {
            why.to_string()
        } else {
            format!(
                "{why}; this row stands for {}{count} ticks, up to {}",
                if at_least { "at least " } else { "" },
                until.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            )
        });
    }
    if nominals.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO fulfil.schedule_ticks (schedule, nominal_at, fired_at, outcome, reason)
         SELECT $1, u.nominal, clock_timestamp(), $2, u.reason
         FROM UNNEST($3::timestamptz[], $4::text[]) AS u(nominal, reason)
         ON CONFLICT (schedule, nominal_at) DO NOTHING",
    )
    .bind(&old.name)
    .bind(outcome.as_str())
    .bind(&nominals)
    .bind(&reasons)
    .execute(conn)
    .await?;
    Ok(())
}

/// The buffered tick of `old`, if any, will never file: it becomes
/// `outcome` with the reason.
async fn unbuffer(
    conn: &mut sqlx::PgConnection,
    old: &StoredRow,
    outcome: TickOutcome,
    actor: &str,
) -> Result<(), ScheduleError> {
    let Some(buffered_at) = old.buffered_at else {
        return Ok(());
    };
    let reason = match outcome {
        TickOutcome::Paused => format!("the schedule was paused by {actor} while this tick waited"),
        _ => format!("the schedule was deleted by {actor} while this tick waited"),
    };
    sqlx::query(
        "UPDATE fulfil.schedule_ticks SET outcome = $3, reason = $4, fired_at = clock_timestamp()
         WHERE schedule = $1 AND nominal_at = $2 AND outcome = 'buffered'",
    )
    .bind(&old.name)
    .bind(buffered_at)
    .bind(outcome.as_str())
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// The schedule named `name`.
pub async fn get(pool: &PgPool, name: &str) -> Result<Option<ScheduleRow>, ScheduleError> {
    let row: Option<StoredRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM fulfil.schedules WHERE name = $1"
    )))
    .bind(name)
    .fetch_optional(pool)
    .await?;
    row.map(ScheduleRow::try_from).transpose()
}

/// Schedules by name, a page at a time; `cursor` is the last name of the
/// previous page.
pub async fn list(
    pool: &PgPool,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<Page<ScheduleRow>, ScheduleError> {
    let limit = page_size(limit);
    let rows: Vec<StoredRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM fulfil.schedules WHERE $1::text IS NULL OR name > $1
         ORDER BY name LIMIT $2"
    )))
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let items = rows
        .into_iter()
        .map(ScheduleRow::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(crate::inspect::paged(items, limit, |s| s.name.clone()))
}

/// Pauses the schedule: its ticks pass as `paused` until it is resumed;
/// a buffered tick becomes `paused`. `None` when there is no such schedule.
pub async fn pause(
    engine: &Engine,
    name: &str,
    actor: &str,
) -> Result<Option<ScheduleRow>, ScheduleError> {
    let mut tx = engine.pool().begin().await?;
    let old: Option<StoredRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM fulfil.schedules WHERE name = $1 FOR UPDATE"
    )))
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(old) = old else { return Ok(None) };
    if !old.paused {
        unbuffer(&mut tx, &old, TickOutcome::Paused, actor).await?;
        sqlx::query(
            "UPDATE fulfil.schedules SET paused = true, paused_by = $2, paused_at = now(),
                buffered_at = NULL, document = jsonb_set(document, '{spec,paused}', 'true'),
                updated_at = now()
             WHERE name = $1",
        )
        .bind(name)
        .bind(actor)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    get(engine.pool(), name).await
}

/// Resumes a paused schedule: the ticks passed while paused are recorded
/// `paused`, and it next fires at its first tick after now. `None` when
/// there is no such schedule.
pub async fn resume(
    engine: &Engine,
    name: &str,
    actor: &str,
) -> Result<Option<ScheduleRow>, ScheduleError> {
    let mut tx = engine.pool().begin().await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *tx)
        .await?;
    let old: Option<StoredRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM fulfil.schedules WHERE name = $1 FOR UPDATE"
    )))
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(old) = old else { return Ok(None) };
    if old.paused {
        let timing = Timing::new(&old.cron, &old.timezone)
            .map_err(|e| ScheduleError::Corrupt(format!("schedule {name}: {e}")))?;
        pass_until(
            &mut tx,
            &timing,
            &old,
            now,
            TickOutcome::Paused,
            "the schedule was paused",
        )
        .await?;
        sqlx::query(
            "UPDATE fulfil.schedules SET paused = false, resumed_by = $2, resumed_at = now(),
                next_fire_at = $3, document = jsonb_set(document, '{spec,paused}', 'false'),
                updated_at = now()
             WHERE name = $1",
        )
        .bind(name)
        .bind(actor)
        .bind(timing.next_after(now))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    engine.wake_schedules();
    get(engine.pool(), name).await
}

/// Deletes the schedule; its ticks stay in the ledger (a buffered one
/// becomes `skipped_overlap`). Whether there was one.
pub async fn delete(engine: &Engine, name: &str, actor: &str) -> Result<bool, ScheduleError> {
    let mut tx = engine.pool().begin().await?;
    let old: Option<StoredRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "DELETE FROM fulfil.schedules WHERE name = $1 RETURNING {COLUMNS}"
    )))
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(old) = old else { return Ok(false) };
    unbuffer(&mut tx, &old, TickOutcome::SkippedOverlap, actor).await?;
    tx.commit().await?;
    Ok(true)
}

/// Which ticks to list.
#[derive(Debug, Clone, Default)]
pub struct TickFilter {
    pub outcome: Option<TickOutcome>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

/// The ledger of `name`, newest first; `None` when there is neither such a
/// schedule nor any tick of one (ticks outlive a deleted schedule).
pub async fn ticks(
    pool: &PgPool,
    name: &str,
    filter: &TickFilter,
) -> Result<Option<Page<TickRow>>, ScheduleError> {
    let cursor = filter
        .cursor
        .as_deref()
        .map(|c| {
            DateTime::parse_from_rfc3339(c)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| ScheduleError::InvalidCursor(c.to_string()))
        })
        .transpose()?;
    let limit = page_size(filter.limit);
    let rows: Vec<StoredTick> = sqlx::query_as(
        "SELECT schedule, nominal_at, fired_at, outcome, request_id, reason
         FROM fulfil.schedule_ticks
         WHERE schedule = $1 AND ($2::timestamptz IS NULL OR nominal_at < $2)
           AND ($3::text IS NULL OR outcome = $3)
         ORDER BY nominal_at DESC LIMIT $4",
    )
    .bind(name)
    .bind(cursor)
    .bind(filter.outcome.map(|o| o.as_str()))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() && cursor.is_none() {
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM fulfil.schedules WHERE name = $1)
                 OR EXISTS (SELECT 1 FROM fulfil.schedule_ticks WHERE schedule = $1)",
        )
        .bind(name)
        .fetch_one(pool)
        .await?;
        if !known {
            return Ok(None);
        }
    }
    let items = rows
        .into_iter()
        .map(|t| {
            Ok(TickRow {
                outcome: TickOutcome::parse(&t.outcome)
                    .map_err(|e| ScheduleError::Corrupt(format!("schedule {name}: {e}")))?,
                schedule: t.schedule,
                nominal_at: t.nominal_at,
                fired_at: t.fired_at,
                request_id: t.request_id.map(RequestId::from),
                reason: t.reason,
            })
        })
        .collect::<Result<Vec<_>, ScheduleError>>()?;
    Ok(Some(crate::inspect::paged(items, limit, |t| {
        t.nominal_at.to_rfc3339_opts(SecondsFormat::Nanos, true)
    })))
}
