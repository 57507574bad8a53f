//! Filing and ending waits, as part of a run's flush: the statements run in
//! the flush's transaction, after the main statement (so the waits'
//! attempt rows exist).
//!
//! Filing an event wait takes its match key's advisory lock exclusively
//! before the insert and the lookback search (see the module docs of
//! [`crate::waits`] for why that closes the race with arriving events).

use std::collections::BTreeSet;

use fulfil_core::ids::RunId;
use fulfil_core::status::{AttemptStatus, TimerKind};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{EventFiling, KeyLock, lock_keys, paths_lock_key, satisfies};
use crate::run::{ENGINE_QUEUE, NewWait};

/// The waits a batch of runs files and ends, gathered from their buffers.
#[derive(Debug, Default)]
pub(crate) struct WaitWrites {
    new: Vec<(RunId, NewWait)>,
    ended: Vec<(RunId, String)>,
    cleared: Vec<RunId>,
}

impl WaitWrites {
    /// Adds one run's wait writes.
    pub(crate) fn add(
        &mut self,
        run_id: RunId,
        new: Vec<NewWait>,
        ended: Vec<String>,
        cleared: bool,
    ) {
        self.ended
            .extend(ended.into_iter().map(|step| (run_id, step)));
        self.new.extend(new.into_iter().map(|wait| (run_id, wait)));
        if cleared {
            self.cleared.push(run_id);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.new.is_empty() && self.ended.is_empty() && self.cleared.is_empty()
    }
}

/// Ends and files the waits of a flush. Ended first: a step that fails and
/// is retried in one change ends its old wait and files a new one.
pub(crate) async fn write(conn: &mut PgConnection, waits: WaitWrites) -> Result<(), sqlx::Error> {
    if !waits.ended.is_empty() {
        let (runs, steps): (Vec<Uuid>, Vec<&str>) = waits
            .ended
            .iter()
            .map(|(run, step)| (run.as_uuid(), step.as_str()))
            .unzip();
        sqlx::query(
            "DELETE FROM fulfil.waits w USING UNNEST($1::uuid[], $2::text[]) AS u(run_id, step_id)
             WHERE w.run_id = u.run_id AND w.step_id = u.step_id",
        )
        .bind(&runs)
        .bind(&steps)
        .execute(&mut *conn)
        .await?;
    }
    if !waits.cleared.is_empty() {
        let runs: Vec<Uuid> = waits.cleared.iter().map(|r| r.as_uuid()).collect();
        sqlx::query("DELETE FROM fulfil.waits WHERE run_id = ANY($1::uuid[])")
            .bind(&runs)
            .execute(&mut *conn)
            .await?;
    }
    if waits.new.is_empty() {
        return Ok(());
    }
    let filings: Vec<(&RunId, &NewWait, &EventFiling)> = waits
        .new
        .iter()
        .filter_map(|(run, wait)| wait.event.as_ref().map(|e| (run, wait, e)))
        .collect();
    if !filings.is_empty() {
        let keys: Vec<&str> = filings
            .iter()
            .map(|(_, _, e)| e.match_key.as_str())
            .collect();
        let pairs: BTreeSet<(&str, &str)> = filings
            .iter()
            .map(|(_, _, e)| (e.event_type.as_deref().unwrap_or(""), e.path.as_str()))
            .collect();
        let (types, paths): (Vec<&str>, Vec<&str>) = pairs.into_iter().unzip();
        // A path new to its type: wait for the events reading the type's
        // paths now, so the ones after see it (see `paths_lock_key`).
        let new_types: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT u.t FROM UNNEST($1::text[], $2::text[]) AS u(t, p)
             WHERE NOT EXISTS (SELECT 1 FROM fulfil.wait_paths w
                               WHERE w.event_type = u.t AND w.path = u.p)",
        )
        .bind(&types)
        .bind(&paths)
        .fetch_all(&mut *conn)
        .await?;
        if !new_types.is_empty() {
            let guards: Vec<String> = new_types.iter().map(|t| paths_lock_key(t)).collect();
            let guards: Vec<&str> = guards.iter().map(String::as_str).collect();
            lock_keys(conn, &guards, KeyLock::Exclusive).await?;
        }
        // Exclusive: an event holding the shared lock of this key commits
        // before the lookback below reads the ledger, or waits for this
        // transaction and then sees the wait.
        lock_keys(conn, &keys, KeyLock::Exclusive).await?;
        sqlx::query(
            "INSERT INTO fulfil.wait_paths (event_type, path)
             SELECT * FROM UNNEST($1::text[], $2::text[]) ORDER BY 1, 2
             ON CONFLICT DO NOTHING",
        )
        .bind(&types)
        .bind(&paths)
        .execute(&mut *conn)
        .await?;
    }
    insert(conn, &waits.new).await?;
    for (_, wait, filing) in filings {
        let Some(lookback) = filing.lookback else {
            continue;
        };
        if let Some((ledger_id, event)) = lookback_match(conn, filing, lookback).await? {
            mark_matched(conn, wait, ledger_id, &event).await?;
        }
    }
    Ok(())
}

async fn insert(conn: &mut PgConnection, new: &[(RunId, NewWait)]) -> Result<(), sqlx::Error> {
    let mut tasks = Vec::new();
    let mut runs = Vec::new();
    let mut steps = Vec::new();
    let mut attempts = Vec::new();
    let mut kinds = Vec::new();
    let mut untils = Vec::new();
    let mut waiting_for = Vec::new();
    let mut keys = Vec::new();
    let mut subjects = Vec::new();
    let mut sources = Vec::new();
    let mut conditions = Vec::new();
    let mut contexts = Vec::new();
    for (run_id, wait) in new {
        tasks.push(wait.task_id.as_uuid());
        runs.push(run_id.as_uuid());
        steps.push(wait.step_id.as_str());
        attempts.push(wait.attempt);
        kinds.push(wait.kind.as_str());
        untils.push(wait.until);
        waiting_for.push(&wait.waiting_for);
        let event = wait.event.as_ref();
        keys.push(event.map(|e| e.match_key.as_str()));
        subjects.push(event.and_then(|e| e.subject.as_deref()));
        sources.push(event.and_then(|e| e.source.as_deref()));
        conditions.push(
            event
                .and_then(|e| e.condition.as_ref())
                .map(|c| c.expression().source()),
        );
        contexts.push(event.map(|e| &e.context));
    }
    sqlx::query(
        "INSERT INTO fulfil.waits (task_id, run_id, step_id, attempt, kind, until, waiting_for,
                                   match_key, subject, source, condition, context)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int[], $5::text[],
                              $6::timestamptz[], $7::jsonb[], $8::text[], $9::text[], $10::text[],
                              $11::text[], $12::jsonb[])
         ON CONFLICT (run_id, step_id) DO UPDATE SET
             task_id = excluded.task_id, attempt = excluded.attempt, kind = excluded.kind,
             began_at = now(), until = excluded.until, waiting_for = excluded.waiting_for,
             match_key = excluded.match_key, subject = excluded.subject,
             source = excluded.source, condition = excluded.condition,
             context = excluded.context, matched_at = NULL, matched_ledger_id = NULL,
             matched_event = NULL, decisions = '[]'",
    )
    .bind(&tasks)
    .bind(&runs)
    .bind(&steps)
    .bind(&attempts)
    .bind(&kinds)
    .bind(&untils)
    .bind(&waiting_for)
    .bind(&keys)
    .bind(&subjects)
    .bind(&sources)
    .bind(&conditions)
    .bind(&contexts)
    .execute(&mut *conn)
    .await?;
    // The attempt of a waiting step is running from the moment it waits.
    sqlx::query(
        "UPDATE fulfil.attempts SET status = $2, started_at = now(), worker = $3
         WHERE task_id = ANY($1::uuid[])",
    )
    .bind(&tasks)
    .bind(AttemptStatus::Running.as_str())
    .bind(ENGINE_QUEUE)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Ledger rows read per round of a lookback search.
const LOOKBACK_PAGE: i64 = 256;

/// The most recent event received within `lookback` that satisfies the
/// wait, if any: its ledger id and its CloudEvent.
async fn lookback_match(
    conn: &mut PgConnection,
    filing: &EventFiling,
    lookback: std::time::Duration,
) -> Result<Option<(Uuid, Value)>, sqlx::Error> {
    // The correlation narrows the search in SQL; jsonb equality treats 5
    // and 5.0 alike, as the key's text does.
    let (path, value): (Option<Vec<&str>>, Option<Value>) = if filing.path.is_empty() {
        (None, None)
    } else {
        (
            Some(filing.path.split('.').collect()),
            serde_json::from_str(&filing.value).ok(),
        )
    };
    let mut before: Option<(chrono::DateTime<chrono::Utc>, Uuid)> = None;
    loop {
        let rows: Vec<(Uuid, chrono::DateTime<chrono::Utc>, Option<String>, Value)> =
            sqlx::query_as(
                "SELECT ledger_id, received_at, nats_subject, event FROM fulfil.event_ledger
                 WHERE ($1::text IS NULL OR type = $1)
                   AND received_at >= now() - make_interval(secs => $2)
                   AND ($3::text[] IS NULL OR event #> $3 = $4::jsonb)
                   AND ($5::timestamptz IS NULL OR (received_at, ledger_id) < ($5, $6))
                 ORDER BY received_at DESC, ledger_id DESC
                 LIMIT $7",
            )
            .bind(filing.event_type.as_deref())
            .bind(lookback.as_secs_f64())
            .bind(&path)
            .bind(&value)
            .bind(before.map(|(at, _)| at))
            .bind(before.map(|(_, id)| id))
            .bind(LOOKBACK_PAGE)
            .fetch_all(&mut *conn)
            .await?;
        let full = rows.len() as i64 == LOOKBACK_PAGE;
        for (ledger_id, received_at, nats_subject, event) in rows {
            before = Some((received_at, ledger_id));
            if satisfies(
                filing.subject.as_deref(),
                filing.source.as_deref(),
                filing.condition.as_ref(),
                Some(&filing.context),
                nats_subject.as_deref(),
                &event,
            ) {
                return Ok(Some((ledger_id, event)));
            }
        }
        if !full {
            return Ok(None);
        }
    }
}

/// Records that `event` matched `wait`, and arms the timer that completes
/// the step at once.
pub(super) async fn mark_matched(
    conn: &mut PgConnection,
    wait: &NewWait,
    ledger_id: Uuid,
    event: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH matched AS (
             UPDATE fulfil.waits SET matched_at = now(), matched_ledger_id = $2, matched_event = $3
             WHERE task_id = $1 AND matched_at IS NULL RETURNING run_id, step_id, task_id)
         INSERT INTO fulfil.timers (run_id, step_id, kind, task_id, fire_at)
         SELECT run_id, step_id, $4, task_id, now() FROM matched",
    )
    .bind(wait.task_id.as_uuid())
    .bind(ledger_id)
    .bind(event)
    .bind(TimerKind::WaitMatched.as_str())
    .execute(conn)
    .await?;
    Ok(())
}
