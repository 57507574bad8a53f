//! `GET /v1/runs/{id}`: a run with every step, every attempt, durations and
//! what each unfinished step waits for.
//!
//! Four index reads whatever the run's size (the run by id; its steps,
//! attempts and timers by run id), joined in memory by step id, so a run
//! of thousands of steps answers in one round of queries.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use fulfil_core::ids::{RunId, TaskId};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::InspectError;
use super::run_list::{RUN_COLUMNS, RunSummary};

/// A run with its steps.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    #[serde(flatten)]
    pub run: RunSummary,
    pub steps: Vec<StepView>,
    /// The child requests the run's promise steps filed, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<crate::children::ChildLink>,
    /// Where the run's request comes from, if a promise step filed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::children::ParentRef>,
}

/// A step of a run.
#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub id: String,
    pub status: String,
    pub attempt: i32,
    pub attempts: Vec<AttemptView>,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    /// From its first attempt's dispatch to its last attempt's end (to now
    /// while one is open); absent before the first attempt.
    pub duration_ms: Option<i64>,
    /// What an unfinished step waits for: a waiting engine-run step
    /// `{kind: event|approval|sleep, ..., until}` (an approval's decisions
    /// so far included); a retrying step `{kind: retry, attempt,
    /// next_attempt_at}`; a step on a worker `{kind: worker, queue, worker,
    /// since}` (`worker` null until one started it).
    pub waiting_for: Option<Value>,
    /// For an instance of a `for_each` step (`<step>[<index>]`): that step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_of: Option<String>,
    /// For an instance: its index in the step's list, from 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<i32>,
    /// For an instance: the item it runs over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<Value>,
    /// For a `for_each` step that started: where its instances stand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<InstanceCounts>,
    /// For a promise step: the child request its latest attempt filed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child: Option<crate::children::ChildLink>,
}

/// How many instances of a `for_each` step are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InstanceCounts {
    pub total: u32,
    pub succeeded: u32,
    pub failed: u32,
    /// Dispatched, running or waiting to retry.
    pub running: u32,
    pub pending: u32,
    pub cancelled: u32,
    pub compensated: u32,
}

impl InstanceCounts {
    fn add(&mut self, status: &str) {
        self.total += 1;
        match status {
            "succeeded" => self.succeeded += 1,
            "failed" => self.failed += 1,
            "pending" => self.pending += 1,
            "cancelled" | "skipped" => self.cancelled += 1,
            "compensated" => self.compensated += 1,
            _ => self.running += 1,
        }
    }
}

/// One attempt at a step (its action or its compensation).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AttemptView {
    pub attempt: i32,
    /// `action` or `compensation`.
    pub kind: String,
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
    /// From start (or dispatch, if never started) to end; absent while open.
    #[sqlx(skip)]
    pub duration_ms: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct StepRow {
    step_id: String,
    status: String,
    attempt: i32,
    outputs: Option<Value>,
    error: Option<String>,
    waiting_for: Option<Value>,
    instance_of: Option<String>,
    instance_index: Option<i32>,
    item: Option<Value>,
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    step_id: String,
    #[sqlx(flatten)]
    attempt: AttemptView,
}

fn millis_between(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (to - from).num_milliseconds().max(0)
}

/// A run with every step and every attempt; `None` when there is no such run.
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
                END AS waiting_for,
                s.instance_of, s.instance_index, s.item
         FROM fulfil.steps s
              LEFT JOIN fulfil.waits w ON w.run_id = s.run_id AND w.step_id = s.step_id
         WHERE s.run_id = $1 ORDER BY s.position, s.instance_index NULLS FIRST",
    )
    .bind(id.as_uuid())
    .fetch_all(pool)
    .await?;
    let mut attempts: HashMap<String, Vec<AttemptView>> = HashMap::new();
    for row in sqlx::query_as::<_, AttemptRow>(
        "SELECT step_id, attempt, kind, status, task_id, handler, queue, input, dispatched_at,
                deadline, started_at, finished_at, worker, error
         FROM fulfil.attempts WHERE run_id = $1 ORDER BY step_id, dispatched_at, attempt",
    )
    .bind(id.as_uuid())
    .fetch_all(pool)
    .await?
    {
        let mut attempt = row.attempt;
        attempt.duration_ms = attempt
            .finished_at
            .map(|end| millis_between(attempt.started_at.unwrap_or(attempt.dispatched_at), end));
        attempts.entry(row.step_id).or_default().push(attempt);
    }
    let retries: HashMap<String, DateTime<Utc>> = sqlx::query_as(
        "SELECT step_id, min(fire_at) FROM fulfil.timers
         WHERE run_id = $1 AND kind IN ('retry', 'compensation_retry') GROUP BY step_id",
    )
    .bind(id.as_uuid())
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let children: Vec<crate::children::ChildLink> = crate::children::children_of_runs(pool, &[id])
        .await?
        .into_iter()
        .map(|(_, child)| child)
        .collect();
    let parent = crate::children::parent_of(pool, run.request_id).await?;
    let now = Utc::now();
    let mut instances: HashMap<String, InstanceCounts> = HashMap::new();
    for row in &steps {
        if let Some(of) = &row.instance_of {
            instances.entry(of.clone()).or_default().add(&row.status);
        }
    }
    let steps = steps
        .into_iter()
        .map(|row| {
            let attempts = attempts.remove(&row.step_id).unwrap_or_default();
            // Children come oldest first: the last is the latest attempt's.
            let child = children
                .iter()
                .rev()
                .find(|c| c.step == row.step_id)
                .cloned();
            let waiting_for = match row.waiting_for.clone() {
                Some(wait) => Some(wait),
                None => waiting_for(&row, &attempts, retries.get(&row.step_id), child.as_ref()),
            };
            StepView {
                duration_ms: step_duration(&attempts, now),
                waiting_for,
                instances: instances.remove(&row.step_id),
                child,
                instance_of: row.instance_of,
                index: row.instance_index,
                item: row.item,
                attempts,
                id: row.step_id,
                status: row.status,
                attempt: row.attempt,
                outputs: row.outputs,
                error: row.error,
            }
        })
        .collect();
    Ok(Some(RunView {
        run,
        steps,
        children,
        parent,
    }))
}

/// What a step that is not an engine-run wait waits for: its retry timer,
/// its child request (a promise step), or the worker holding its open
/// attempt.
fn waiting_for(
    row: &StepRow,
    attempts: &[AttemptView],
    retry_at: Option<&DateTime<Utc>>,
    child: Option<&crate::children::ChildLink>,
) -> Option<Value> {
    if let Some(at) = retry_at {
        return Some(json!({
            "kind": "retry",
            "attempt": row.attempt.saturating_add(1),
            "next_attempt_at": at,
        }));
    }
    let open = attempts
        .iter()
        .rev()
        .find(|a| a.status == "dispatched" || a.status == "running")?;
    if open.queue == crate::run::ENGINE_QUEUE && fulfil_core::child::is_promise_step(&open.handler)
    {
        // Before the child is filed (a moment), only its Promise is known.
        let filed = child.filter(|c| c.created_at >= open.dispatched_at);
        return Some(json!({
            "kind": "child",
            "promise": open.input.get("promise"),
            "request_id": filed.map(|c| c.request_id),
            "run_id": filed.and_then(|c| c.run_id),
            "status": filed.map(|c| c.status.as_str()),
            "since": open.dispatched_at,
        }));
    }
    Some(json!({
        "kind": "worker",
        "queue": open.queue,
        "worker": open.worker,
        "since": open.started_at.unwrap_or(open.dispatched_at),
    }))
}

fn step_duration(attempts: &[AttemptView], now: DateTime<Utc>) -> Option<i64> {
    let first = attempts.iter().map(|a| a.dispatched_at).min()?;
    let last = if attempts.iter().any(|a| a.finished_at.is_none()) {
        now
    } else {
        attempts.iter().filter_map(|a| a.finished_at).max()?
    };
    Some(millis_between(first, last))
}
