//! The event side of waits: which waiting steps a batch of received events
//! completes, decided and recorded in the batch's transaction (see
//! [`crate::events`]), so a match is committed exactly when the event's
//! ledger entry is.

use std::collections::HashMap;
use std::sync::Arc;

use fulfil_core::Promise;
use fulfil_core::ids::RunId;
use fulfil_core::status::{RunKind, TimerKind};
use serde_json::Value;
use sqlx::PgConnection;
use tracing::error;
use uuid::Uuid;

use super::{Candidate, KeyLock, event_keys, lock_keys, paths_lock_key, satisfies};
use crate::Engine;
use crate::events::WaitCompleted;
use crate::promises::PromiseError;

/// A received event, as matching reads it.
#[derive(Debug, Clone, Copy)]
pub struct ArrivedEvent<'a> {
    pub ledger_id: Uuid,
    pub event_type: &'a str,
    /// The NATS subject it arrived on; none over HTTP.
    pub nats_subject: Option<&'a str>,
    /// The CloudEvent as JSON.
    pub event: &'a Value,
}

/// Matches `events` (in order: the first event that satisfies a wait
/// completes it) against the waits filed under their keys, records each
/// match with a `wait_matched` timer due now, and answers, per event, the
/// waits it completed.
pub(crate) async fn match_events(
    engine: &Engine,
    conn: &mut PgConnection,
    events: &[ArrivedEvent<'_>],
) -> Result<Vec<Vec<WaitCompleted>>, sqlx::Error> {
    let mut completed = vec![Vec::new(); events.len()];
    if events.is_empty() {
        return Ok(completed);
    }
    let mut types: Vec<&str> = events.iter().map(|e| e.event_type).collect();
    types.push("");
    types.sort_unstable();
    types.dedup();
    let guards: Vec<String> = types.iter().map(|t| paths_lock_key(t)).collect();
    let guards: Vec<&str> = guards.iter().map(String::as_str).collect();
    lock_keys(conn, &guards, KeyLock::Shared).await?;
    let paths: Vec<(String, String)> =
        sqlx::query_as("SELECT event_type, path FROM fulfil.wait_paths WHERE event_type = ANY($1)")
            .bind(&types)
            .fetch_all(&mut *conn)
            .await?;
    if paths.is_empty() {
        // No wait of these types was ever filed: nothing to look up.
        return Ok(completed);
    }
    let keys: Vec<Vec<String>> = events
        .iter()
        .map(|e| event_keys(e.event_type, e.event, &paths))
        .collect();
    let mut all: Vec<&str> = keys.iter().flatten().map(String::as_str).collect();
    all.sort_unstable();
    all.dedup();
    if all.is_empty() {
        return Ok(completed);
    }
    // Shared: events do not wait for each other, only for a wait being
    // filed under one of their keys (see the module docs of `waits`).
    lock_keys(conn, &all, KeyLock::Shared).await?;
    let rows: Vec<KeyedCandidate> = sqlx::query_as(
        "SELECT w.match_key, w.task_id, w.step_id, w.subject, w.source, w.context,
                r.promise, r.promise_version, r.kind
         FROM fulfil.waits w JOIN fulfil.runs r ON r.id = w.run_id
         WHERE w.match_key = ANY($1) AND w.matched_at IS NULL",
    )
    .bind(&all)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(completed);
    }
    let candidates = with_conditions(engine, rows).await?;
    let mut by_key: HashMap<&str, Vec<&Candidate>> = HashMap::new();
    for (key, candidate) in &candidates {
        by_key.entry(key.as_str()).or_default().push(candidate);
    }

    let mut claimed: HashMap<Uuid, usize> = HashMap::new();
    for (index, (event, keys)) in events.iter().zip(&keys).enumerate() {
        for key in keys {
            for candidate in by_key.get(key.as_str()).into_iter().flatten() {
                if claimed.contains_key(&candidate.task_id) {
                    continue;
                }
                if satisfies(
                    candidate.subject.as_deref(),
                    candidate.source.as_deref(),
                    candidate.condition.as_ref(),
                    candidate.context.as_ref(),
                    event.nats_subject,
                    event.event,
                ) {
                    claimed.insert(candidate.task_id, index);
                }
            }
        }
    }
    if claimed.is_empty() {
        return Ok(completed);
    }
    let (tasks, ledger_ids, bodies): (Vec<Uuid>, Vec<Uuid>, Vec<&Value>) = claimed
        .iter()
        .map(|(task, &i)| (*task, events[i].ledger_id, events[i].event))
        .fold(
            (Vec::new(), Vec::new(), Vec::new()),
            |mut acc, (t, l, e)| {
                acc.0.push(t);
                acc.1.push(l);
                acc.2.push(e);
                acc
            },
        );
    // `matched_at IS NULL` is checked again under the row lock: another
    // batch's event that matched first keeps the wait, and a timeout that
    // deleted it leaves nothing to update.
    let matched: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "WITH matched AS (
             UPDATE fulfil.waits w SET matched_at = now(), matched_ledger_id = u.ledger_id,
                                      matched_event = u.event
             FROM UNNEST($1::uuid[], $2::uuid[], $3::jsonb[]) AS u(task_id, ledger_id, event)
             WHERE w.task_id = u.task_id AND w.matched_at IS NULL
             RETURNING w.task_id, w.run_id, w.step_id),
         armed AS (
             INSERT INTO fulfil.timers (run_id, step_id, kind, task_id, fire_at)
             SELECT run_id, step_id, $4, task_id, now() FROM matched)
         SELECT task_id, run_id, step_id FROM matched",
    )
    .bind(&tasks)
    .bind(&ledger_ids)
    .bind(&bodies)
    .bind(TimerKind::WaitMatched.as_str())
    .fetch_all(&mut *conn)
    .await?;
    for (task_id, run_id, step) in matched {
        if let Some(&index) = claimed.get(&task_id) {
            completed[index].push(WaitCompleted {
                run_id: RunId::from(run_id),
                step,
            });
        }
    }
    for waits in &mut completed {
        waits.sort_by(|a, b| (a.run_id, &a.step).cmp(&(b.run_id, &b.step)));
    }
    Ok(completed)
}

#[derive(sqlx::FromRow)]
struct KeyedCandidate {
    match_key: String,
    task_id: Uuid,
    step_id: String,
    subject: Option<String>,
    source: Option<String>,
    context: Option<Value>,
    promise: String,
    promise_version: String,
    kind: String,
}

/// The candidates with their `match` conditions, compiled with their
/// runs' Promises (from the cache; nothing is compiled here). A candidate
/// whose Promise or step cannot be found can never be checked: it is left
/// out, with an error in the log, rather than failing every event of its
/// key.
async fn with_conditions(
    engine: &Engine,
    rows: Vec<KeyedCandidate>,
) -> Result<Vec<(String, Candidate)>, sqlx::Error> {
    let mut promises: HashMap<(String, String, String), Option<Arc<Promise>>> = HashMap::new();
    let mut candidates = Vec::with_capacity(rows.len());
    for row in rows {
        let key = (
            row.promise.clone(),
            row.promise_version.clone(),
            row.kind.clone(),
        );
        if !promises.contains_key(&key) {
            let loaded = match engine
                .promises()
                .load(engine.pool(), &row.promise, &row.promise_version)
                .await
            {
                Ok(promise) => RunKind::parse(&row.kind)
                    .ok()
                    .and_then(|kind| crate::run::deleting::promise_for(kind, promise).ok()),
                Err(PromiseError::Db(e)) => return Err(e),
                Err(_) => None,
            };
            promises.insert(key.clone(), loaded);
        }
        let engine_step = promises
            .get(&key)
            .and_then(Option::as_ref)
            .and_then(|p| p.step(&row.step_id).and_then(|s| p.engine_step_of(s)));
        let Some(engine_step) = engine_step else {
            error!(task_id = %row.task_id, step_id = %row.step_id, promise = %row.promise,
                   version = %row.promise_version, "a waiting step's Promise or step cannot be loaded; it is not matched");
            continue;
        };
        candidates.push((
            row.match_key,
            Candidate {
                task_id: row.task_id,
                subject: row.subject,
                source: row.source,
                condition: engine_step.condition.clone(),
                context: row.context,
            },
        ));
    }
    Ok(candidates)
}
