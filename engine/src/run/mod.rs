//! A run's state machine, advanced inside Postgres transactions.
//!
//! Every change to a run happens in a transaction that holds the run's row
//! lock (`SELECT ... FOR UPDATE`), so results, timers and operator actions on
//! the same run are serialized across every engine process, and planning
//! always sees committed state. A [`RunTxn`] gathers the history events and
//! outbox messages a change produces and writes them in one statement each.

mod advance;
mod apply;
mod operator;
mod progress;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use fulfil_spec::dag::CompensationStatus;
use fulfil_spec::wire::NatsNames;
use fulfil_spec::wire::TaskKind;
use fulfil_spec::{RunStatus, StepStatus};
use serde_json::{Value, json};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::Engine;

pub use advance::{
    advance, attempt_failed, dispatch_action, dispatch_compensation, stop_in_flight,
};
pub use apply::{Applied, ApplyError, apply_result, apply_result_in};
pub use operator::{OperatorError, RetryPlan, cancel_run, retry_run};
pub use progress::{apply_progress, apply_progress_in};

/// Kinds of history event, as stored in `history.type`.
pub mod event {
    pub const REQUEST_ACCEPTED: &str = "request.accepted";
    pub const RUN_STARTED: &str = "run.started";
    pub const RUN_SUCCEEDED: &str = "run.succeeded";
    pub const RUN_FAILED: &str = "run.failed";
    pub const RUN_COMPENSATING: &str = "run.compensating";
    pub const RUN_COMPENSATED: &str = "run.compensated";
    pub const RUN_CANCEL_REQUESTED: &str = "run.cancel_requested";
    pub const RUN_CANCELLED: &str = "run.cancelled";
    pub const RUN_TIMED_OUT: &str = "run.timed_out";
    pub const RUN_RETRIED: &str = "run.retried";
    pub const STEP_SKIPPED: &str = "step.skipped";
    pub const STEP_CANCELLED: &str = "step.cancelled";
    pub const RESULT_IGNORED: &str = "result.ignored";

    use fulfil_spec::wire::TaskKind;

    /// What can happen to an attempt; the event type names the task kind:
    /// `step.started` for an action, `compensation.started` for its undo.
    #[derive(Debug, Clone, Copy)]
    pub enum AttemptEvent {
        Dispatched,
        Started,
        Succeeded,
        Failed,
        RetryScheduled,
        TimedOut,
    }

    pub fn attempt_event(kind: TaskKind, what: AttemptEvent) -> &'static str {
        use AttemptEvent::*;
        match (kind, what) {
            (TaskKind::Action, Dispatched) => "step.dispatched",
            (TaskKind::Action, Started) => "step.started",
            (TaskKind::Action, Succeeded) => "step.succeeded",
            (TaskKind::Action, Failed) => "step.failed",
            (TaskKind::Action, RetryScheduled) => "step.retry_scheduled",
            (TaskKind::Action, TimedOut) => "step.timed_out",
            (TaskKind::Compensation, Dispatched) => "compensation.dispatched",
            (TaskKind::Compensation, Started) => "compensation.started",
            (TaskKind::Compensation, Succeeded) => "compensation.succeeded",
            (TaskKind::Compensation, Failed) => "compensation.failed",
            (TaskKind::Compensation, RetryScheduled) => "compensation.retry_scheduled",
            (TaskKind::Compensation, TimedOut) => "compensation.timed_out",
        }
    }
}

/// A history event waiting to be written.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    pub kind: &'static str,
    pub step_id: Option<String>,
    pub attempt: Option<i32>,
    pub actor: String,
    pub data: Value,
}

/// A message waiting in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub subject: String,
    pub msg_id: String,
    pub payload: Value,
}

/// A step as the state machine sees it.
#[derive(Debug, Clone)]
pub struct StepRow {
    pub step_id: String,
    pub status: StepStatus,
    pub attempt: i32,
    pub outputs: Option<Value>,
    /// Rendered input of the latest action attempt.
    pub input: Option<Value>,
    pub error: Option<String>,
    pub compensation: Option<CompensationStatus>,
    pub compensation_attempt: i32,
    pub compensation_error: Option<String>,
}

impl StepRow {
    fn new(step_id: String) -> Self {
        StepRow {
            step_id,
            status: StepStatus::Pending,
            attempt: 0,
            outputs: None,
            input: None,
            error: None,
            compensation: None,
            compensation_attempt: 0,
            compensation_error: None,
        }
    }

    /// The attempt number current for tasks of `kind`.
    pub fn current_attempt(&self, kind: TaskKind) -> i32 {
        match kind {
            TaskKind::Action => self.attempt,
            TaskKind::Compensation => self.compensation_attempt,
        }
    }
}

/// One locked run and the changes made to it in this transaction.
pub struct RunTxn<'a> {
    pub tx: Transaction<'a, Postgres>,
    pub run_id: Uuid,
    pub request_id: Uuid,
    pub status: RunStatus,
    /// params, request and env, as expressions see them.
    pub context: Value,
    pub promise: std::sync::Arc<fulfil_spec::Promise>,
    pub steps: HashMap<String, StepRow>,
    pub names: NatsNames,
    /// Who is acting, recorded in history.
    pub actor: String,
    /// An operator asked to cancel the run.
    pub cancel_requested: bool,
    /// Why the run is stopping when no step failed (cancel, run timeout).
    pub stop_reason: Option<String>,
    /// The committing process publishes this transaction's outbox rows itself.
    fast_publish: bool,
    next_seq: i64,
    events: Vec<PendingEvent>,
    outbox: Vec<OutboxMessage>,
}

/// Why a run could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Postgres failed; the transaction is rolled back and nothing changed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored row holds a value this version does not know.
    #[error("stored run state is corrupt: {0}")]
    Corrupt(String),
    /// The run's Promise version could not be loaded.
    #[error(transparent)]
    Promise(#[from] crate::promises::PromiseError),
    /// A change would break the run state machine (a bug, never user input).
    #[error("illegal run transition {from:?} -> {to:?}")]
    IllegalTransition { from: RunStatus, to: RunStatus },
}

impl<'a> RunTxn<'a> {
    /// Starts a transaction on a run that was just inserted in `tx`.
    pub fn for_new_run(
        tx: Transaction<'a, Postgres>,
        run_id: Uuid,
        request_id: Uuid,
        context: Value,
        promise: std::sync::Arc<fulfil_spec::Promise>,
        names: NatsNames,
        actor: String,
    ) -> Self {
        let steps = promise
            .spec
            .workflow
            .steps
            .iter()
            .map(|s| (s.id.clone(), StepRow::new(s.id.clone())))
            .collect();
        RunTxn {
            tx,
            run_id,
            request_id,
            status: RunStatus::Running,
            context,
            promise,
            steps,
            names,
            actor,
            cancel_requested: false,
            stop_reason: None,
            fast_publish: false,
            next_seq: 1,
            events: Vec::new(),
            outbox: Vec::new(),
        }
    }

    /// Locks the run's row and loads its steps. `None` if there is no such run.
    pub async fn lock(
        engine: &Engine,
        tx: Transaction<'a, Postgres>,
        run_id: Uuid,
        actor: String,
    ) -> Result<Option<Self>, RunError> {
        Ok(Self::lock_by(engine, tx, LockKey::Run(run_id), actor)
            .await?
            .map(|(run, _)| run))
    }

    /// Locks the run that owns `task_id` and reads that attempt as it is
    /// once the lock is held. `None` if there is no such attempt.
    pub async fn lock_for_task(
        engine: &Engine,
        tx: Transaction<'a, Postgres>,
        task_id: Uuid,
        actor: String,
    ) -> Result<Option<(Self, LockedAttempt)>, RunError> {
        match Self::lock_by(engine, tx, LockKey::Task(task_id), actor).await? {
            Some((run, Some(attempt))) => Ok(Some((run, attempt))),
            _ => Ok(None),
        }
    }

    async fn lock_by(
        engine: &Engine,
        mut tx: Transaction<'a, Postgres>,
        key: LockKey,
        actor: String,
    ) -> Result<Option<(Self, Option<LockedAttempt>)>, RunError> {
        // Two round trips: lock the run row, then read its steps (and the
        // attempt) in a statement that starts after the lock is held, so it
        // sees whatever the previous holder committed. An attempt's run id
        // never changes, so finding the run through it is safe.
        let (lock_sql, key_id, task_id) = match key {
            LockKey::Run(id) => (
                "SELECT id, request_id, promise, promise_version, status, context, history_seq,
                        cancel_requested, stop_reason
                 FROM fulfil.runs WHERE id = $1 FOR UPDATE",
                id,
                None,
            ),
            LockKey::Task(task) => (
                "SELECT id, request_id, promise, promise_version, status, context, history_seq,
                        cancel_requested, stop_reason
                 FROM fulfil.runs WHERE id = (SELECT run_id FROM fulfil.attempts WHERE task_id = $1)
                 FOR UPDATE",
                task,
                Some(task),
            ),
        };
        let row: Option<LockedRun> = sqlx::query_as(lock_sql)
            .bind(key_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let run_id = row.id;
        let status = RunStatus::parse(&row.status)
            .ok_or_else(|| RunError::Corrupt(format!("run status {:?}", row.status)))?;
        let rows: Vec<LockedStep> = sqlx::query_as(
            "SELECT s.step_id, s.status, s.attempt, s.outputs, s.input, s.error, s.compensation_status,
                    s.compensation_attempt, s.compensation_error,
                    a.step_id AS task_step_id, a.attempt AS task_attempt, a.status AS task_status,
                    a.kind AS task_kind
             FROM fulfil.steps s LEFT JOIN fulfil.attempts a ON a.task_id = $2
             WHERE s.run_id = $1",
        )
        .bind(run_id)
        .bind(task_id)
        .fetch_all(&mut *tx)
        .await?;
        let attempt = rows.first().and_then(|r| {
            Some(LockedAttempt {
                step_id: r.task_step_id.clone()?,
                attempt: r.task_attempt?,
                status: r.task_status.clone()?,
                kind: r.task_kind.clone()?,
            })
        });
        let mut steps = HashMap::with_capacity(rows.len());
        for r in rows {
            let status = StepStatus::parse(&r.status)
                .ok_or_else(|| RunError::Corrupt(format!("step status {:?}", r.status)))?;
            let compensation = match r.compensation_status.as_deref() {
                None => None,
                Some(c) => Some(
                    CompensationStatus::parse(c)
                        .ok_or_else(|| RunError::Corrupt(format!("compensation status {c:?}")))?,
                ),
            };
            steps.insert(
                r.step_id.clone(),
                StepRow {
                    step_id: r.step_id,
                    status,
                    attempt: r.attempt,
                    outputs: r.outputs,
                    input: r.input,
                    error: r.error,
                    compensation,
                    compensation_attempt: r.compensation_attempt,
                    compensation_error: r.compensation_error,
                },
            );
        }
        let (request_id, promise, version, context, seq) = (
            row.request_id,
            row.promise,
            row.promise_version,
            row.context,
            row.history_seq,
        );
        // Versions are immutable, so the cache answers without a query once
        // this process has seen the version.
        let promise = engine
            .promises()
            .load(engine.pool(), &promise, &version)
            .await?;
        Ok(Some((
            RunTxn {
                tx,
                run_id,
                request_id,
                status,
                context,
                promise,
                steps,
                names: engine.names().clone(),
                actor,
                cancel_requested: row.cancel_requested,
                stop_reason: row.stop_reason,
                fast_publish: engine.has_fast_publisher(),
                next_seq: seq + 1,
                events: Vec::new(),
                outbox: Vec::new(),
            },
            attempt,
        )))
    }

    /// Whether this process publishes the outbox rows itself after commit.
    pub fn set_fast_publish(&mut self, fast: bool) {
        self.fast_publish = fast;
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Moves the run to `next`, refusing a transition the state machine
    /// does not allow.
    pub async fn set_status(&mut self, next: RunStatus) -> Result<(), RunError> {
        if !self.status.can_become(next) {
            return Err(RunError::IllegalTransition {
                from: self.status,
                to: next,
            });
        }
        sqlx::query("UPDATE fulfil.runs SET status = $2 WHERE id = $1")
            .bind(self.run_id)
            .bind(next.as_str())
            .execute(&mut *self.tx)
            .await?;
        self.status = next;
        Ok(())
    }

    /// Arms a durable timer for this run.
    pub async fn add_timer(
        &mut self,
        kind: &str,
        step_id: &str,
        task_id: Option<Uuid>,
        fire_at: DateTime<Utc>,
    ) -> Result<(), RunError> {
        sqlx::query("INSERT INTO fulfil.timers (run_id, step_id, kind, fire_at, task_id) VALUES ($1, $2, $3, $4, $5)")
            .bind(self.run_id)
            .bind(step_id)
            .bind(kind)
            .bind(fire_at)
            .bind(task_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Disarms the timers of one attempt (all of them, or one kind).
    pub async fn clear_attempt_timers(
        &mut self,
        task_id: Uuid,
        kind: Option<&str>,
    ) -> Result<(), RunError> {
        sqlx::query(
            "DELETE FROM fulfil.timers WHERE task_id = $1 AND ($2::text IS NULL OR kind = $2)",
        )
        .bind(task_id)
        .bind(kind)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Disarms every timer of the run.
    pub async fn clear_run_timers(&mut self) -> Result<(), RunError> {
        sqlx::query("DELETE FROM fulfil.timers WHERE run_id = $1")
            .bind(self.run_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    pub fn record(
        &mut self,
        kind: &'static str,
        step_id: Option<&str>,
        attempt: Option<i32>,
        data: Value,
    ) {
        self.events.push(PendingEvent {
            kind,
            step_id: step_id.map(str::to_string),
            attempt,
            actor: self.actor.clone(),
            data,
        });
    }

    pub fn publish(&mut self, subject: String, msg_id: String, payload: Value) {
        self.outbox.push(OutboxMessage {
            subject,
            msg_id,
            payload,
        });
    }

    /// Publishes a CloudEvent about this run on `<prefix>.events.<kind>`.
    pub fn emit_event(&mut self, kind: &str, data: Value) {
        let id = Uuid::now_v7();
        let event = json!({
            "specversion": "1.0",
            "id": id,
            "source": format!("fulfil/{}", self.names.prefix()),
            "type": format!("dev.fulfil.{kind}"),
            "subject": self.run_id,
            "time": Utc::now(),
            "datacontenttype": "application/json",
            "data": data,
        });
        self.publish(self.names.event_subject(kind), id.to_string(), event);
    }

    /// Writes gathered history and outbox rows, bumps the run's history
    /// sequence, and commits.
    pub async fn commit(mut self) -> Result<CommitSummary, RunError> {
        let summary = CommitSummary {
            events: self.events.len(),
            outbox: self.outbox.len(),
            outbox_rows: Vec::new(),
        };
        if self.events.is_empty() && self.outbox.is_empty() {
            self.tx.commit().await?;
            return Ok(summary);
        }
        let n = self.events.len();
        let seqs: Vec<i64> = (self.next_seq..self.next_seq + n as i64).collect();
        let mut kinds = Vec::with_capacity(n);
        let mut steps = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut actors = Vec::with_capacity(n);
        let mut datas = Vec::with_capacity(n);
        for e in self.events.drain(..) {
            kinds.push(e.kind.to_string());
            steps.push(e.step_id);
            attempts.push(e.attempt);
            actors.push(e.actor);
            datas.push(e.data);
        }
        let outbox = std::mem::take(&mut self.outbox);
        let mut subjects = Vec::with_capacity(outbox.len());
        let mut msg_ids = Vec::with_capacity(outbox.len());
        let mut payloads = Vec::with_capacity(outbox.len());
        for m in outbox {
            subjects.push(m.subject);
            msg_ids.push(m.msg_id);
            payloads.push(m.payload);
        }
        // History, the run's sequence counter and the outbox in one round trip.
        let inserted: Vec<(i64, String)> = sqlx::query_as(
            "WITH history AS (
                 INSERT INTO fulfil.history (run_id, seq, type, step_id, attempt, actor, data)
                 SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::int[], $6::text[], $7::jsonb[])),
             seq AS (
                 UPDATE fulfil.runs SET history_seq = $8 WHERE id = $1 AND cardinality($2::bigint[]) > 0),
             outbox AS (
                 INSERT INTO fulfil.outbox (subject, msg_id, payload, fast)
                 SELECT s, m, p, $12 FROM UNNEST($9::text[], $10::text[], $11::jsonb[]) AS t(s, m, p)
                 RETURNING id, msg_id)
             SELECT id, msg_id FROM outbox",
        )
        .bind(self.run_id)
        .bind(&seqs)
        .bind(&kinds)
        .bind(&steps)
        .bind(&attempts)
        .bind(&actors)
        .bind(&datas)
        .bind(self.next_seq + n as i64 - 1)
        .bind(&subjects)
        .bind(&msg_ids)
        .bind(&payloads)
        .bind(self.fast_publish)
        .fetch_all(&mut *self.tx)
        .await?;
        if !inserted.is_empty() && !self.fast_publish {
            sqlx::query("SELECT pg_notify('fulfil_outbox', '')")
                .execute(&mut *self.tx)
                .await?;
        }
        let ids: HashMap<String, i64> = inserted
            .into_iter()
            .map(|(id, msg_id)| (msg_id, id))
            .collect();
        let rows: Vec<crate::outbox::OutboxRow> = subjects
            .into_iter()
            .zip(msg_ids)
            .zip(payloads)
            .filter_map(|((subject, msg_id), payload)| {
                Some(crate::outbox::OutboxRow {
                    id: *ids.get(&msg_id)?,
                    subject,
                    msg_id,
                    payload,
                })
            })
            .collect();
        self.tx.commit().await?;
        Ok(CommitSummary {
            outbox_rows: rows,
            ..summary
        })
    }
}

/// How [`RunTxn::lock_by`] finds the run.
enum LockKey {
    Run(Uuid),
    Task(Uuid),
}

/// An attempt as read under its run's lock.
#[derive(Debug, Clone)]
pub struct LockedAttempt {
    pub step_id: String,
    pub attempt: i32,
    pub status: String,
    pub kind: String,
}

impl LockedAttempt {
    pub fn task_kind(&self) -> TaskKind {
        if self.kind == "compensation" {
            TaskKind::Compensation
        } else {
            TaskKind::Action
        }
    }

    /// Dispatched or running: a result may still be applied.
    pub fn is_open(&self) -> bool {
        self.status == "dispatched" || self.status == "running"
    }
}

#[derive(sqlx::FromRow)]
struct LockedRun {
    id: Uuid,
    request_id: Uuid,
    promise: String,
    promise_version: String,
    status: String,
    context: Value,
    history_seq: i64,
    cancel_requested: bool,
    stop_reason: Option<String>,
}

#[derive(sqlx::FromRow)]
struct LockedStep {
    step_id: String,
    status: String,
    attempt: i32,
    outputs: Option<Value>,
    input: Option<Value>,
    error: Option<String>,
    compensation_status: Option<String>,
    compensation_attempt: i32,
    compensation_error: Option<String>,
    task_step_id: Option<String>,
    task_attempt: Option<i32>,
    task_status: Option<String>,
    task_kind: Option<String>,
}

/// What a commit wrote. Hand `outbox_rows` to [`Engine::after_commit`] once
/// the outermost transaction has committed.
#[derive(Debug, Clone, Default)]
#[must_use = "outbox rows must be handed to Engine::after_commit"]
pub struct CommitSummary {
    pub events: usize,
    pub outbox: usize,
    pub outbox_rows: Vec<crate::outbox::OutboxRow>,
}
