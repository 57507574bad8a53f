//! A run's state machine, advanced inside Postgres transactions.
//!
//! Every change to a run happens in a transaction that holds the run's row
//! lock (`SELECT ... FOR UPDATE`), so results, timers and operator actions on
//! the same run are serialized across every engine process, and planning
//! always sees committed state. A [`RunTxn`] gathers the history events and
//! outbox messages a change produces and writes them in one statement each.

mod advance;
mod apply;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use fulfil_spec::wire::NatsNames;
use fulfil_spec::{RunStatus, StepStatus};
use serde_json::{Value, json};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::Engine;

pub use advance::{advance, dispatch_attempt};
pub use apply::{Applied, ApplyError, apply_result};

/// Kinds of history event, as stored in `history.type`.
pub mod event {
    pub const REQUEST_ACCEPTED: &str = "request.accepted";
    pub const RUN_STARTED: &str = "run.started";
    pub const RUN_SUCCEEDED: &str = "run.succeeded";
    pub const RUN_FAILED: &str = "run.failed";
    pub const STEP_DISPATCHED: &str = "step.dispatched";
    pub const STEP_SUCCEEDED: &str = "step.succeeded";
    pub const STEP_FAILED: &str = "step.failed";
    pub const STEP_RETRY_SCHEDULED: &str = "step.retry_scheduled";
    pub const STEP_SKIPPED: &str = "step.skipped";
    pub const RESULT_IGNORED: &str = "result.ignored";
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
            .map(|s| {
                (
                    s.id.clone(),
                    StepRow {
                        step_id: s.id.clone(),
                        status: StepStatus::Pending,
                        attempt: 0,
                        outputs: None,
                    },
                )
            })
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
            next_seq: 1,
            events: Vec::new(),
            outbox: Vec::new(),
        }
    }

    /// Locks the run's row and loads its steps. `None` if there is no such run.
    pub async fn lock(
        engine: &Engine,
        mut tx: Transaction<'a, Postgres>,
        run_id: Uuid,
        actor: String,
    ) -> Result<Option<Self>, RunError> {
        let row: Option<(Uuid, String, String, String, Value, i64)> = sqlx::query_as(
            "SELECT request_id, promise, promise_version, status, context, history_seq
             FROM fulfil.runs WHERE id = $1 FOR UPDATE",
        )
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((request_id, promise, version, status, context, seq)) = row else {
            return Ok(None);
        };
        let status = RunStatus::parse(&status)
            .ok_or_else(|| RunError::Corrupt(format!("run status {status:?}")))?;
        let rows: Vec<(String, String, i32, Option<Value>)> = sqlx::query_as(
            "SELECT step_id, status, attempt, outputs FROM fulfil.steps WHERE run_id = $1",
        )
        .bind(run_id)
        .fetch_all(&mut *tx)
        .await?;
        let mut steps = HashMap::with_capacity(rows.len());
        for (step_id, status, attempt, outputs) in rows {
            let status = StepStatus::parse(&status)
                .ok_or_else(|| RunError::Corrupt(format!("step status {status:?}")))?;
            steps.insert(
                step_id.clone(),
                StepRow {
                    step_id,
                    status,
                    attempt,
                    outputs,
                },
            );
        }
        // Versions are immutable, so the cache answers without a query once
        // this process has seen the version.
        let promise = engine
            .promises()
            .load(engine.pool(), &promise, &version)
            .await?;
        Ok(Some(RunTxn {
            tx,
            run_id,
            request_id,
            status,
            context,
            promise,
            steps,
            names: engine.names().clone(),
            actor,
            next_seq: seq + 1,
            events: Vec::new(),
            outbox: Vec::new(),
        }))
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
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

    /// Whether this transaction queued messages for the outbox relay.
    pub fn has_outbox(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Writes gathered history and outbox rows, bumps the run's history
    /// sequence, and commits.
    pub async fn commit(mut self) -> Result<CommitSummary, RunError> {
        let summary = CommitSummary {
            events: self.events.len(),
            outbox: self.outbox.len(),
        };
        if !self.events.is_empty() {
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
            sqlx::query(
                "INSERT INTO fulfil.history (run_id, seq, type, step_id, attempt, actor, data)
                 SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::int[], $6::text[], $7::jsonb[])",
            )
            .bind(self.run_id)
            .bind(&seqs)
            .bind(&kinds)
            .bind(&steps)
            .bind(&attempts)
            .bind(&actors)
            .bind(&datas)
            .execute(&mut *self.tx)
            .await?;
            sqlx::query("UPDATE fulfil.runs SET history_seq = $2 WHERE id = $1")
                .bind(self.run_id)
                .bind(self.next_seq + n as i64 - 1)
                .execute(&mut *self.tx)
                .await?;
        }
        if !self.outbox.is_empty() {
            crate::outbox::enqueue(&mut self.tx, std::mem::take(&mut self.outbox)).await?;
        }
        self.tx.commit().await?;
        Ok(summary)
    }
}

/// What a commit wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommitSummary {
    pub events: usize,
    pub outbox: usize,
}

/// Time as stored by the engine.
pub type Timestamp = DateTime<Utc>;
