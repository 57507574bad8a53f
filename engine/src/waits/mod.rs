//! Durable waits: engine-run steps filed in `fulfil.waits` until their
//! event, their approvals or their time come (DESIGN.md "Waits").
//!
//! The run state machine ([`crate::run`]) starts and ends waits; this
//! module stores them (`write`, called by the run flush) and finds them:
//! an arriving event looks up the waits it completes (`match_events`),
//! and an approver's decision ends an approval ([`decide_approval`]).
//!
//! **No event slips between "not yet waiting" and "waiting".** An event
//! wait is filed under a match key, `(type, correlation path, correlation
//! value)` (see [`fulfil_core::expr::Correlation`]). Filing a wait takes
//! the key's advisory lock exclusively, then inserts the wait and, with
//! `lookback`, searches the event ledger; receiving an event takes the
//! shared lock of every key it could complete, then searches the waits, and
//! writes its ledger entry in the same transaction. Whichever of the two
//! takes the lock second starts its search after the first committed, so it
//! sees the first: the event finds the wait, or the wait finds the event
//! (if it arrived within `lookback`). Events do not block each other; the
//! first to commit a match on a wait wins (`matched_at IS NULL` under the
//! row lock), so a step completes once and later matches are not recorded.
//!
//! **Matching stays indexed.** An event computes its candidate keys from
//! its own fields (one per correlation path some wait of its type was
//! filed under, from `fulfil.wait_paths`) and reads only the waits filed
//! under those keys: 100,000 runs waiting on other values cost it nothing.
//!
//! **Completion is durable and applied once.** A match is committed with
//! the event (the wait row's `matched_*` columns and a `wait_matched`
//! timer, due at once); the timer then completes the step on the run's row
//! lock. A timeout racing the event reads the wait row under its row lock:
//! if an event matched first, the event wins; if the timeout deleted the
//! wait first, the event's update finds nothing to match.

mod approval;
mod matching;
mod store;

use chrono::{DateTime, Utc};
use fulfil_core::expr::{
    CompiledCondition, MatchContext, RenderContext, correlation_text, value_at,
};
use fulfil_core::wait::{EngineStep, EventWait};
use serde_json::{Value, json};
use uuid::Uuid;

pub use approval::{ApprovalError, ApprovalOutcome, ApprovalRequest, decide_approval};
pub(crate) use matching::{ArrivedEvent, match_events};
pub(crate) use store::{WaitWrites, write};

/// Longest correlation value (as JSON text) a wait is indexed by; a longer
/// one files the wait unindexed, found through its type alone.
const MAX_CORRELATION_BYTES: usize = 256;

/// The key events look waits up by.
fn match_key(event_type: &str, path: &str, value: &str) -> String {
    format!("{event_type}\u{1f}{path}\u{1f}{value}")
}

/// What an event wait is filed under and checked against.
#[derive(Debug, Clone)]
pub struct EventFiling {
    pub event_type: Option<String>,
    pub subject: Option<String>,
    pub source: Option<String>,
    /// The `match` condition, compiled with the run's Promise.
    pub condition: Option<CompiledCondition>,
    /// The run's variables the condition reads besides `event`.
    pub context: Value,
    /// The correlation path, `data.name`, or empty when unindexed.
    pub path: String,
    /// The correlation value's JSON text, or empty when unindexed.
    pub value: String,
    pub match_key: String,
    pub lookback: Option<std::time::Duration>,
}

impl EventFiling {
    /// The filing of a wait whose rendered `with` is `spec`, over the run's
    /// variables `context` as they stand when it begins.
    pub fn new(
        spec: &EventWait,
        lookback: Option<std::time::Duration>,
        engine_step: &EngineStep,
        context: &RenderContext,
    ) -> Result<EventFiling, String> {
        // A correlated side that fails to evaluate (it may sit behind a
        // conjunct that guards it) leaves the wait unindexed; the whole
        // condition is still evaluated for every candidate.
        let (path, value) = engine_step
            .correlation
            .as_ref()
            .and_then(|c| {
                let value = correlation_text(&c.value(context).ok()?);
                (value.len() <= MAX_CORRELATION_BYTES).then(|| (c.path_text(), value))
            })
            .unwrap_or_default();
        let event_type = spec.event_type.clone();
        Ok(EventFiling {
            match_key: match_key(event_type.as_deref().unwrap_or(""), &path, &value),
            event_type,
            subject: spec.subject.clone(),
            source: spec.source.clone(),
            condition: engine_step.condition.clone(),
            context: json!({
                "params": context.params, "request": context.request,
                "vars": context.vars, "steps": context.steps,
            }),
            path,
            value,
            lookback,
        })
    }
}

/// A wait as a candidate for an event: what [`satisfies`] checks.
#[derive(Debug)]
pub(crate) struct Candidate {
    pub task_id: Uuid,
    pub subject: Option<String>,
    pub source: Option<String>,
    /// From the run's Promise; `None` when the wait has no `match`.
    pub condition: Option<CompiledCondition>,
    pub context: Option<Value>,
}

/// Whether an event (as JSON, arrived on `nats_subject`) satisfies a wait's
/// `subject`, `source` and `match`. A `match` that fails to evaluate on
/// this event is false for it: another event may still match.
fn satisfies(
    subject: Option<&str>,
    source: Option<&str>,
    condition: Option<&CompiledCondition>,
    context: Option<&Value>,
    nats_subject: Option<&str>,
    event: &Value,
) -> bool {
    if let Some(pattern) = subject
        && !nats_subject.is_some_and(|s| fulfil_core::trigger::subject_matches(pattern, s))
    {
        return false;
    }
    if let Some(source) = source
        && event.get("source").and_then(Value::as_str) != Some(source)
    {
        return false;
    }
    let Some(condition) = condition else {
        return true;
    };
    let empty = Value::Null;
    let context = context.unwrap_or(&empty);
    let run = RenderContext {
        params: context.get("params").cloned().unwrap_or(Value::Null),
        request: context.get("request").cloned().unwrap_or(Value::Null),
        vars: context.get("vars").cloned().unwrap_or(Value::Null),
        steps: context.get("steps").cloned().unwrap_or(Value::Null),
    };
    condition
        .evaluate(&MatchContext { event, run: &run })
        .unwrap_or(false)
}

/// The keys an event of `event_type` could complete waits under, given
/// the correlation paths waits of its type (and of no type) were filed
/// under: `paths` holds `(type, path)` pairs.
fn event_keys(event_type: &str, event: &Value, paths: &[(String, String)]) -> Vec<String> {
    let mut keys = Vec::new();
    for (wait_type, path) in paths {
        if !(wait_type.is_empty() || wait_type == event_type) {
            continue;
        }
        if path.is_empty() {
            keys.push(match_key(wait_type, "", ""));
            continue;
        }
        let fields: Vec<String> = path.split('.').map(str::to_string).collect();
        if let Some(value) = value_at(event, &fields) {
            let value = correlation_text(value);
            if value.len() <= MAX_CORRELATION_BYTES {
                keys.push(match_key(wait_type, path, &value));
            }
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// The lock guarding the list of correlation paths of `event_type` in
/// `fulfil.wait_paths`: an event holds it shared while it reads the list
/// and until it commits; filing the first wait under a path new to the
/// type takes it exclusively. Without it, an event reading the list just
/// before a new path is committed would compute no key for that path, and
/// the first wait of its kind could miss it.
fn paths_lock_key(event_type: &str) -> String {
    format!("paths\u{1f}{event_type}")
}

/// How a transaction holds the advisory locks of match keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyLock {
    /// Filing waits: excludes events of the key until the filing commits.
    Exclusive,
    /// Receiving events: excludes only filings, not other events.
    Shared,
}

/// Takes the transaction-scoped advisory locks of `keys`, in hash order:
/// every transaction takes them in the same order, so two cannot wait for
/// each other's keys.
async fn lock_keys(
    conn: &mut sqlx::PgConnection,
    keys: &[&str],
    lock: KeyLock,
) -> Result<(), sqlx::Error> {
    let sql = match lock {
        KeyLock::Exclusive => {
            "SELECT pg_advisory_xact_lock(h) FROM (
                 SELECT DISTINCT hashtextextended(k, 0) AS h FROM UNNEST($1::text[]) AS k
                 ORDER BY h) AS keys"
        }
        KeyLock::Shared => {
            "SELECT pg_advisory_xact_lock_shared(h) FROM (
                 SELECT DISTINCT hashtextextended(k, 0) AS h FROM UNNEST($1::text[]) AS k
                 ORDER BY h) AS keys"
        }
    };
    sqlx::query(sql).bind(keys).execute(conn).await?;
    Ok(())
}

/// A wait's row as its timers and decisions read it, under its row lock.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WaitState {
    pub attempt: i32,
    pub kind: String,
    pub until: Option<DateTime<Utc>>,
    pub matched_event: Option<Value>,
    pub matched_ledger_id: Option<Uuid>,
    pub decisions: Value,
}

/// Reads and locks the wait of attempt `task_id`, if it still exists.
pub(crate) async fn lock_wait(
    conn: &mut sqlx::PgConnection,
    task_id: fulfil_core::ids::TaskId,
) -> Result<Option<WaitState>, sqlx::Error> {
    sqlx::query_as(
        "SELECT attempt, kind, until, matched_event, matched_ledger_id, decisions
         FROM fulfil.waits WHERE task_id = $1 FOR UPDATE",
    )
    .bind(task_id.as_uuid())
    .fetch_optional(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_keyed_by_its_values_at_the_paths_waits_of_its_type_use() {
        let event = json!({"type": "t", "source": "s", "data": {"name": "orders", "n": 5.0}});
        let paths = vec![
            ("t".to_string(), "data.name".to_string()),
            ("t".to_string(), "data.n".to_string()),
            ("t".to_string(), "data.missing".to_string()),
            ("t".to_string(), String::new()),
            ("other".to_string(), "data.name".to_string()),
            (String::new(), "source".to_string()),
        ];
        let keys = event_keys("t", &event, &paths);
        assert_eq!(
            keys,
            vec![
                match_key("", "source", "\"s\""),
                match_key("t", "", ""),
                match_key("t", "data.n", "5"),
                match_key("t", "data.name", "\"orders\""),
            ]
        );
    }

    #[test]
    fn a_candidate_must_meet_subject_source_and_match() {
        let event = json!({"type": "t", "source": "ci", "data": {"name": "orders"}});
        let context = json!({"params": {"name": "orders"}});
        let compiled = compiled_condition("event.data.name == params.name");
        let condition = Some(&compiled);
        let check = |subject, source, nats: Option<&str>| {
            satisfies(subject, source, condition, Some(&context), nats, &event)
        };
        assert!(check(None, None, None));
        assert!(check(Some("acme.>"), Some("ci"), Some("acme.db.ready")));
        assert!(!check(Some("acme.>"), None, None), "HTTP has no subject");
        assert!(!check(None, Some("cd"), None));
        let other = json!({"params": {"name": "billing"}});
        assert!(!satisfies(
            None,
            None,
            condition,
            Some(&other),
            None,
            &event
        ));
        // A condition that fails to evaluate is false, not an error.
        let broken = compiled_condition("event.data.nothing.deeper == 1");
        assert!(!satisfies(None, None, Some(&broken), None, None, &event));
    }

    /// A condition compiled as a Promise compiles it.
    fn compiled_condition(source: &str) -> CompiledCondition {
        let promise = fulfil_core::Promise::parse(&format!(
            "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: {{ name: w, version: 1.0.0 }}\n\
             spec:\n  workflow:\n    steps:\n      - id: w\n        uses: wait.event\n        with: {{ match: {source:?} }}\n"
        ))
        .expect("a valid Promise");
        let step = promise.step("w").expect("the step");
        promise
            .engine_step_of(step)
            .and_then(|e| e.condition.clone())
            .expect("a condition")
    }
}
