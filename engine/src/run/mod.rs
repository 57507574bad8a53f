//! A run's state machine.
//!
//! Changes to one run are serialized across every engine process in one of
//! two ways. Timers and operator actions hold the run's row lock
//! (`SELECT ... FOR UPDATE`, see `load`) from reading the run to
//! committing. Worker reports take the optimistic path first: the run is
//! read without a lock, and the statement that stores the change does so
//! only if the run's version is still the one read (`apply`). Every
//! change bumps the version, so either way a decision is stored only if it
//! was made on the run's latest committed state. The state machine
//! itself never waits on Postgres: a [`Run`] is the locked run's state in
//! memory, every decision changes that copy and buffers what must be stored
//! (`writes`), and `flush` stores the changes of one run or of a whole
//! batch of runs in a fixed number of statements.

mod advance;
mod apply;
mod cache;
pub(crate) mod child;
mod compensate;
pub mod deleting;
mod for_each;
mod forward;
mod load;
mod operator;
mod progress;
#[cfg(test)]
mod tests;
mod waiting;
mod writes;

#[cfg(test)]
mod deadline_tests;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use fulfil_bus::NatsNames;
use fulfil_core::dag::CompensationStatus;
use fulfil_core::ids::{RequestId, RunId, TaskId};
use fulfil_core::status::{RunKind, StatusEventKind, TimerKind};
use fulfil_core::wire::TaskKind;
use fulfil_core::{RunStatus, StepStatus};
use serde_json::Value;
use sqlx::{PgConnection, Postgres, Transaction};

use crate::outbox::OutboxRow;

pub(crate) use advance::json_size;
pub use advance::{MAX_TASK_INPUT_BYTES, TASK_TOO_LARGE, advance, attempt_failed, stop_in_flight};
pub use apply::{
    Applied, ApplyError, BatchOutcome, Report, ReportBatch, apply_committed, apply_progress,
    apply_result, apply_single,
};
pub(crate) use cache::{RunCache, Stored};
pub use compensate::dispatch_compensation;
pub use for_each::dispatch_instance;
pub use forward::dispatch_action;
pub use load::{KnownAttempt, lock_run};
pub use operator::{OperatorError, RetryPlan, cancel_run, retry_run};
pub(crate) use waiting::{ENGINE_QUEUE, complete_wait, fail_wait, fire_wait_timer};
pub(crate) use writes::{
    AttemptUpdate, LeadingPart, NewInstance, RequestUpdate, RunEnding, TargetEnding,
    fits_one_statement, flush, flush_with,
};
pub use writes::{NewWait, OutboxMessage, PendingEvent, PendingStatus};

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
    /// An engine-run step began waiting (a status event too).
    pub const STEP_WAITING: &str = "step.waiting";
    /// An event matched a waiting `wait.event` step.
    pub const WAIT_MATCHED: &str = "wait.matched";
    /// Someone approved or rejected an approval step.
    pub const APPROVAL_DECIDED: &str = "approval.decided";
    /// A `for_each` step's list was evaluated and its instances created;
    /// data `{count, max_parallel, items}`.
    pub const FOR_EACH_EXPANDED: &str = "for_each.expanded";
    /// A promise step filed its child request (or found it filed);
    /// data `{request_id, run_id, promise, replayed}`.
    pub const CHILD_FILED: &str = "child.filed";
    /// A promise step's compensation asked to delete its child request;
    /// data `{request_id, promise, status}`.
    pub const CHILD_DELETE_REQUESTED: &str = "child.delete_requested";

    use fulfil_core::wire::TaskKind;

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

/// A step as the state machine sees it: its row in `fulfil.steps`.
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
    pub compensation_outputs: Option<Value>,
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
            compensation_outputs: None,
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

/// A locked run's state, and the changes made to it that are not stored yet.
/// Cloning it is how a batch takes a snapshot to fall back to when one
/// report cannot be applied.
///
/// Its fields are private to the state machine (this module): the rest of
/// the engine reads them through accessors, and every change goes through
/// a method that keeps the rules (legal transitions) and marks what the
/// flush must store.
#[derive(Clone)]
pub struct Run {
    run_id: RunId,
    request_id: RequestId,
    /// What the run does for its request; fixed at creation.
    kind: RunKind,
    status: RunStatus,
    /// params, request and env, as expressions see them.
    context: Value,
    promise: std::sync::Arc<fulfil_core::Promise>,
    steps: HashMap<String, StepRow>,
    names: NatsNames,
    /// Who is acting, recorded in history.
    actor: String,
    /// An operator asked to cancel the run.
    cancel_requested: bool,
    /// Why the run is stopping when no step failed (cancel, run timeout).
    stop_reason: Option<String>,
    /// The committing process publishes this run's outbox rows itself.
    fast_publish: bool,
    /// The history sequence number the next stored event gets.
    next_seq: i64,
    /// For a run read without its row lock, the version it was read at:
    /// its changes are stored only if no one changed the run meanwhile.
    read_version: Option<i64>,
    /// Its request is being deleted: what its end does instead of moving
    /// the request's status (see [`deleting`]).
    handoff: Option<deleting::Handoff>,
    /// A run this change created (the delete run a handed-off run starts
    /// as it ends), stored by the same flush.
    spawned: Option<Box<Run>>,
    writes: writes::Writes,
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
    /// A change would break a step's state machine (a bug, never user input).
    #[error("illegal transition of step {step}: {from:?} -> {to:?}")]
    IllegalStepTransition {
        step: String,
        from: StepStatus,
        to: StepStatus,
    },
    /// A change would break a compensation's state machine (a bug, never
    /// user input).
    #[error("illegal transition of the compensation of step {step}: {from:?} -> {to:?}")]
    IllegalCompensationTransition {
        step: String,
        from: CompensationStatus,
        to: CompensationStatus,
    },
}

impl From<fulfil_core::status::UnknownValue> for RunError {
    fn from(unknown: fulfil_core::status::UnknownValue) -> Self {
        RunError::Corrupt(unknown.to_string())
    }
}

/// What a run being created starts from.
pub struct NewRun {
    pub kind: RunKind,
    pub run_id: RunId,
    pub request_id: RequestId,
    /// params, request and env, as expressions see them.
    pub context: Value,
    pub promise: std::sync::Arc<fulfil_core::Promise>,
    pub names: NatsNames,
    /// Who creates it, recorded in history.
    pub actor: String,
    /// The committing process publishes the run's outbox rows itself.
    pub fast_publish: bool,
}

impl RunError {
    /// Whether trying again may succeed: only a transient database failure
    /// ([`crate::db::is_transient`]); a corrupt state or a refused value
    /// fails the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            RunError::Db(e) | RunError::Promise(crate::promises::PromiseError::Db(e)) => {
                crate::db::is_transient(e)
            }
            _ => false,
        }
    }
}

impl Run {
    /// A run being created: every step pending. Its run and step rows are
    /// inserted by the flush; its request row must exist by then.
    pub fn new(new: NewRun) -> Self {
        let NewRun {
            kind,
            run_id,
            request_id,
            context,
            promise,
            names,
            actor,
            fast_publish,
        } = new;
        let steps = promise
            .spec
            .workflow
            .steps
            .iter()
            .map(|s| (s.id.clone(), StepRow::new(s.id.clone())))
            .collect();
        let promise_name = promise.metadata.name.clone();
        let promise_version = promise.metadata.version.clone();
        Run {
            run_id,
            request_id,
            kind,
            status: RunStatus::Running,
            context,
            promise,
            steps,
            names,
            actor,
            cancel_requested: false,
            stop_reason: None,
            fast_publish,
            next_seq: 1,
            read_version: None,
            handoff: None,
            spawned: None,
            writes: writes::Writes {
                created: Some(writes::CreatedRun {
                    promise: promise_name,
                    version: promise_version,
                }),
                ..writes::Writes::default()
            },
        }
    }

    pub fn run_id(&self) -> RunId {
        self.run_id
    }

    pub fn request_id(&self) -> RequestId {
        self.request_id
    }

    /// What the run does for its request.
    pub fn kind(&self) -> RunKind {
        self.kind
    }

    pub fn status(&self) -> RunStatus {
        self.status
    }

    /// params, request and env, as expressions see them.
    pub fn context(&self) -> &Value {
        &self.context
    }

    /// The Promise version the run follows.
    pub fn promise(&self) -> &std::sync::Arc<fulfil_core::Promise> {
        &self.promise
    }

    /// The step `step_id`'s row, if the run has such a step.
    pub fn step(&self, step_id: &str) -> Option<&StepRow> {
        self.steps.get(step_id)
    }

    /// Every step's row, in no particular order.
    pub fn steps(&self) -> impl Iterator<Item = &StepRow> {
        self.steps.values()
    }

    /// Who is acting, recorded in history.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// Records `actor` as the one making the next changes.
    pub fn set_actor(&mut self, actor: String) {
        self.actor = actor;
    }

    /// An operator asked to cancel the run.
    pub fn cancel_requested(&self) -> bool {
        self.cancel_requested
    }

    /// Why the run is stopping when no step failed (cancel, run timeout).
    pub fn stop_reason(&self) -> Option<&str> {
        self.stop_reason.as_deref()
    }

    /// What the run's end does for its request's deletion, if it was
    /// handed off.
    pub fn handoff(&self) -> Option<&deleting::Handoff> {
        self.handoff.as_ref()
    }

    /// The run this change created, for the flush that stores this one.
    pub(crate) fn take_spawned(&mut self) -> Option<Run> {
        self.spawned.take().map(|run| *run)
    }

    /// Moves the run to `next`, refusing a transition the state machine
    /// does not allow.
    pub fn set_status(&mut self, next: RunStatus) -> Result<(), RunError> {
        if !self.status.can_become(next) {
            return Err(RunError::IllegalTransition {
                from: self.status,
                to: next,
            });
        }
        self.status = next;
        self.writes.run = true;
        Ok(())
    }

    /// An operator asked to cancel the run: nothing new starts, and `why`
    /// becomes its error.
    pub(crate) fn request_cancel(&mut self, why: String) {
        self.cancel_requested = true;
        self.stop_reason = Some(why);
        self.writes.run = true;
    }

    /// The run stops for `why` although no step failed (its deadline
    /// passed): nothing new starts.
    pub(crate) fn stop_for(&mut self, why: String) {
        self.stop_reason = Some(why);
        self.writes.run = true;
    }

    /// Forgets a cancel or stop: an operator re-opened the run.
    pub(crate) fn clear_stop(&mut self) {
        self.cancel_requested = false;
        self.stop_reason = None;
        self.writes.run = true;
    }

    /// Moves step `step_id` to `next`, refusing a transition the step state
    /// machine does not allow ([`StepStatus::can_become`]), and marks the
    /// step for writing. Every change of a step's status goes through here;
    /// the returned row is for the caller to update what goes with it.
    pub(crate) fn set_step_status(
        &mut self,
        step_id: &str,
        next: StepStatus,
    ) -> Result<&mut StepRow, RunError> {
        let Some(row) = self.steps.get_mut(step_id) else {
            return Err(RunError::Corrupt(format!("run has no step {step_id}")));
        };
        if !row.status.can_become(next) {
            return Err(RunError::IllegalStepTransition {
                step: step_id.to_string(),
                from: row.status,
                to: next,
            });
        }
        row.status = next;
        self.writes.steps.insert(step_id.to_string());
        Ok(row)
    }

    /// Sets (on finishing) or clears (on re-opening) the run's end columns.
    pub(crate) fn set_ending(&mut self, ending: RunEnding) {
        self.writes.ending = Some(ending);
    }

    /// Keeps the request's status in step with the run.
    pub(crate) fn set_request_status(&mut self, update: RequestUpdate) {
        self.writes.request = Some(update);
    }

    /// Moves the rollout target of this (upgrade) run as it ends.
    pub(crate) fn set_rollout_target(&mut self, ending: writes::TargetEnding) {
        self.writes.rollout_target = Some(ending);
    }

    /// Adds a pending instance of a `for_each` step: its row, in memory and
    /// to insert. An instance the run already has (a retried run's) is kept
    /// as it is.
    pub(crate) fn add_instance(&mut self, instance: NewInstance) {
        if self.steps.contains_key(&instance.step_id) {
            return;
        }
        self.steps.insert(
            instance.step_id.clone(),
            StepRow::new(instance.step_id.clone()),
        );
        self.writes.new_instances.push(instance);
    }

    /// Marks a step's in-memory row for writing back.
    pub(crate) fn step_changed(&mut self, step_id: &str) {
        self.writes.steps.insert(step_id.to_string());
    }

    /// Arms a durable timer for this run.
    pub fn add_timer(
        &mut self,
        kind: TimerKind,
        step_id: &str,
        task_id: Option<TaskId>,
        fire_at: DateTime<Utc>,
    ) {
        self.writes.wake_timers |= kind.is_child_timer();
        self.writes.new_timers.push(writes::NewTimer {
            for_run: None,
            step_id: step_id.to_string(),
            kind,
            task_id,
            fire_at,
        });
    }

    /// Arms a timer of another run, due now: how a child request's run
    /// tells its parent's that it ended (see [`child`]).
    pub(crate) fn add_timer_for(
        &mut self,
        run_id: RunId,
        kind: TimerKind,
        step_id: &str,
        task_id: TaskId,
    ) {
        self.writes.wake_timers = true;
        self.writes.new_timers.push(writes::NewTimer {
            for_run: Some(run_id),
            step_id: step_id.to_string(),
            kind,
            task_id: Some(task_id),
            fire_at: Utc::now(),
        });
    }

    /// Disarms the timers of one attempt (all of them, or one kind).
    pub fn clear_attempt_timers(&mut self, task_id: TaskId, kind: Option<TimerKind>) {
        self.writes.clear_attempt_timers(task_id, kind);
    }

    /// Disarms every timer of the run.
    pub fn clear_run_timers(&mut self) {
        self.writes.clear_run_timers();
    }

    pub(crate) fn update_attempt(&mut self, task_id: TaskId, update: AttemptUpdate) {
        self.writes.update_attempt(task_id, update);
    }

    pub(crate) fn insert_attempt(&mut self, attempt: writes::NewAttempt) {
        self.writes.new_attempts.push(attempt);
    }

    pub(crate) fn cancel_attempt(&mut self, cancel: writes::AttemptCancel) {
        self.writes.cancels.push(cancel);
    }

    /// Records history event `kind`. When `kind` is a status kind
    /// ([`StatusEventKind::for_history`]) the event also publishes a status
    /// event, its `data` taken from the run as it stands now: record after
    /// the change the event reports (the step's or the run's new status).
    pub fn record(
        &mut self,
        kind: &'static str,
        step_id: Option<&str>,
        attempt: Option<i32>,
        data: Value,
    ) {
        let status = StatusEventKind::for_history(kind).map(|status| PendingStatus {
            kind: status,
            data: writes::status::status_data(self, status, step_id, &data),
        });
        self.writes.events.push(PendingEvent {
            kind,
            step_id: step_id.map(str::to_string),
            attempt,
            actor: self.actor.clone(),
            data,
            status,
        });
    }

    /// The run's durable trace context: the `traceparent` its request was
    /// filed with, else one derived from the run id (see
    /// [`fulfil_bus::trace`]).
    pub fn trace_parent(&self) -> fulfil_bus::trace::TraceParent {
        self.context
            .get("request")
            .and_then(|r| r.get("traceparent"))
            .and_then(Value::as_str)
            .and_then(fulfil_bus::trace::TraceParent::parse)
            .unwrap_or_else(|| {
                fulfil_bus::trace::TraceParent::for_run(self.run_id.as_uuid().as_u128())
            })
    }

    /// Buffers a metric observation, recorded once this change committed.
    pub(crate) fn observe(&mut self, observed: crate::metrics::Observed) {
        self.writes.observed.push(observed);
    }

    pub fn publish(&mut self, subject: String, msg_id: String, payload: Value) {
        self.writes.outbox.push(OutboxMessage {
            subject,
            msg_id,
            payload,
        });
    }

    /// Stores this run's changes in `tx` and commits it. Hand the returned
    /// rows to [`crate::Engine::after_commit`].
    pub async fn commit(
        mut self,
        mut tx: Transaction<'_, Postgres>,
    ) -> Result<Vec<OutboxRow>, RunError> {
        let rows = flush(&mut tx, std::slice::from_mut(&mut self)).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Stores this run's changes on `conn` without committing.
    pub async fn flush(&mut self, conn: &mut PgConnection) -> Result<Vec<OutboxRow>, RunError> {
        Ok(flush(conn, std::slice::from_mut(self)).await?)
    }
}
