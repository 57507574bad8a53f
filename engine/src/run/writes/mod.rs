//! The writes a change to a run produces, buffered in memory and written
//! for any number of runs at once.
//!
//! The state machine never talks to Postgres while it decides: it changes
//! its in-memory copy of the run and records here what must be stored.
//! [`flush`] then writes the changes of every run of a batch in one
//! statement (one data-modifying CTE per table, each fed by `UNNEST`ed
//! arrays), so the cost of a batch is a fixed handful of round trips
//! however many results it holds. That is what makes group commit pay.
//!
//! This module holds the buffer (what one run's change must store);
//! [`flush`](flush::flush) writes it, gathering every run's buffer into
//! per-column arrays ([`columns`]) that feed one assembled `WITH`
//! statement ([`statement`]).
//!
//! A history event whose kind is a status kind carries its status event
//! ([`PendingStatus`]); the flush numbers the event and writes the status
//! event beside it, in `fulfil.status_outbox`, with the same sequence number
//! ([`status`]). So a status event exists if and only if its history event
//! was committed, and carries the history's order.

mod columns;
mod flush;
mod statement;
pub(crate) mod status;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use fulfil_core::ids::TaskId;
use fulfil_core::status::{AttemptStatus, RequestStatus, StatusEventKind, TaskKind, TimerKind};
use serde_json::Value;

pub(crate) use flush::{LeadingPart, fits_one_statement, flush, flush_with};

/// A history event waiting to be written.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    pub kind: &'static str,
    pub step_id: Option<String>,
    pub attempt: Option<i32>,
    pub actor: String,
    pub data: Value,
    /// The status event this history event publishes, if its kind is a
    /// status kind.
    pub status: Option<PendingStatus>,
}

/// A status event waiting for its history event's sequence number: its
/// kind and CloudEvent `data`, fixed when the history event was recorded
/// (the run's state then is what it reports). The flush wraps it in its
/// envelope (`status::envelope`).
#[derive(Debug, Clone)]
pub struct PendingStatus {
    pub kind: StatusEventKind,
    pub data: Value,
}

/// A message waiting to be put in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub subject: String,
    pub msg_id: String,
    pub payload: Value,
}

/// An attempt to insert, as dispatched.
#[derive(Debug, Clone)]
pub(crate) struct NewAttempt {
    pub task_id: TaskId,
    pub step_id: String,
    pub attempt: i32,
    pub kind: TaskKind,
    pub handler: String,
    pub queue: String,
    pub input: Value,
    pub deadline: DateTime<Utc>,
}

/// Changes to an existing attempt row; `None` leaves a column as it is.
#[derive(Debug, Clone, Default)]
pub(crate) struct AttemptUpdate {
    pub status: Option<AttemptStatus>,
    pub worker: Option<String>,
    /// Overwrites `started_at` (a start report: the attempt's clocks restart).
    pub started_at: Option<DateTime<Utc>>,
    /// Sets `started_at` only if nothing set it before (a result's own clock).
    pub started_at_if_unset: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<Value>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub heartbeat_details: Option<Value>,
}

impl AttemptUpdate {
    /// Folds a later update of the same attempt into this one.
    fn merge(&mut self, later: AttemptUpdate) {
        macro_rules! later_wins {
            ($($field:ident),*) => { $( if later.$field.is_some() { self.$field = later.$field; } )* };
        }
        later_wins!(
            status,
            worker,
            started_at,
            finished_at,
            error,
            heartbeat_at,
            heartbeat_details
        );
        if self.started_at_if_unset.is_none() {
            self.started_at_if_unset = later.started_at_if_unset;
        }
    }
}

/// Cancels the open attempt `attempt` of a step's action or compensation,
/// and disarms its timers.
#[derive(Debug, Clone)]
pub(crate) struct AttemptCancel {
    pub step_id: String,
    pub kind: TaskKind,
    pub attempt: i32,
    pub reason: String,
}

/// A durable timer to arm.
#[derive(Debug, Clone)]
pub(crate) struct NewTimer {
    /// The run it fires on, when not the run that arms it: a child request's
    /// run telling its parent's that it ended.
    pub for_run: Option<fulfil_core::ids::RunId>,
    pub step_id: String,
    pub kind: TimerKind,
    pub task_id: Option<TaskId>,
    pub fire_at: DateTime<Utc>,
}

/// A waiting engine-run step to file in `fulfil.waits` (see
/// [`crate::waits`]).
#[derive(Debug, Clone)]
pub struct NewWait {
    pub task_id: TaskId,
    pub step_id: String,
    pub attempt: i32,
    pub kind: fulfil_core::status::WaitKind,
    pub until: Option<DateTime<Utc>>,
    pub waiting_for: Value,
    /// Event waits: what an arriving event is looked up and checked by.
    pub event: Option<crate::waits::EventFiling>,
}

/// An instance of a `for_each` step to insert (see [`crate::run`]'s
/// `for_each`); its state is taken from the run's in-memory row when the
/// change is stored, so an instance dispatched by the change that created
/// it is inserted as dispatched.
#[derive(Debug, Clone)]
pub(crate) struct NewInstance {
    /// `<step>[<index>]`.
    pub step_id: String,
    /// The `for_each` step.
    pub instance_of: String,
    pub index: i32,
    pub item: Value,
    /// The `for_each` step's place in the workflow.
    pub position: i32,
}

/// The run row's end-of-run columns: set when it finishes, cleared when an
/// operator re-opens it.
#[derive(Debug, Clone)]
pub(crate) struct RunEnding {
    pub finished: bool,
    pub outputs: Option<Value>,
    pub error: Option<String>,
}

/// The request row's status, kept in step with its run.
#[derive(Debug, Clone)]
pub(crate) struct RequestUpdate {
    pub status: RequestStatus,
    pub outputs: Option<Value>,
    /// The request's new Promise version (a succeeded upgrade run's);
    /// `None` keeps the one it has.
    pub promise_version: Option<String>,
}

/// Where an upgrade run's end leaves its rollout target (see
/// `crate::rollout`): written by the statement that ends the run.
#[derive(Debug, Clone)]
pub(crate) struct TargetEnding {
    pub state: fulfil_core::status::RolloutTargetState,
    pub error: Option<String>,
}

/// What a new run's row holds beyond its state.
#[derive(Debug, Clone)]
pub(crate) struct CreatedRun {
    pub promise: String,
    pub version: String,
}

/// Everything one run's change must store.
#[derive(Debug, Clone, Default)]
pub(crate) struct Writes {
    /// The run is new: its row and its steps are inserted, not updated.
    pub created: Option<CreatedRun>,
    pub events: Vec<PendingEvent>,
    pub outbox: Vec<OutboxMessage>,
    /// Steps whose in-memory row must be written back.
    pub steps: BTreeSet<String>,
    /// Instances of `for_each` steps whose rows are new: inserted, not
    /// updated.
    pub new_instances: Vec<NewInstance>,
    /// The run row's status, flags or history sequence changed.
    pub run: bool,
    pub ending: Option<RunEnding>,
    pub request: Option<RequestUpdate>,
    /// An upgrade run ended: its rollout target's new state.
    pub rollout_target: Option<TargetEnding>,
    pub new_attempts: Vec<NewAttempt>,
    pub attempt_updates: Vec<(TaskId, AttemptUpdate)>,
    pub cancels: Vec<AttemptCancel>,
    /// Disarm the timers of these attempts: all of them, or one kind.
    pub cleared_attempt_timers: Vec<(TaskId, Option<TimerKind>)>,
    /// Disarm every timer the run had before this change.
    pub cleared_run_timers: bool,
    pub new_timers: Vec<NewTimer>,
    /// A timer due now that another run or engine waits on (a promise
    /// step's): the flush wakes every engine's timer loop rather than let
    /// it find the timer at its next poll.
    pub wake_timers: bool,
    /// Engine-run steps that began waiting.
    pub new_waits: Vec<NewWait>,
    /// Steps whose wait is over (completed, failed or cancelled).
    pub ended_waits: Vec<String>,
    /// The run ended: every wait it still has is over.
    pub cleared_run_waits: bool,
    /// Metrics of this change, recorded once it committed; nothing to
    /// store, so [`Writes::is_empty`] ignores them.
    pub observed: Vec<crate::metrics::Observed>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.created.is_none()
            && self.events.is_empty()
            && self.outbox.is_empty()
            && self.steps.is_empty()
            && self.new_instances.is_empty()
            && !self.run
            && self.ending.is_none()
            && self.request.is_none()
            && self.rollout_target.is_none()
            && self.new_attempts.is_empty()
            && self.attempt_updates.is_empty()
            && self.cancels.is_empty()
            && self.cleared_attempt_timers.is_empty()
            && !self.cleared_run_timers
            && self.new_timers.is_empty()
            && !self.has_wait_writes()
    }

    /// Whether the change files or ends waits: stored by a statement of
    /// their own (see [`crate::waits`]), so the flush needs a transaction.
    pub fn has_wait_writes(&self) -> bool {
        !self.new_waits.is_empty() || !self.ended_waits.is_empty() || self.cleared_run_waits
    }

    pub fn update_attempt(&mut self, task_id: TaskId, update: AttemptUpdate) {
        match self
            .attempt_updates
            .iter_mut()
            .find(|(id, _)| *id == task_id)
        {
            Some((_, earlier)) => earlier.merge(update),
            None => self.attempt_updates.push((task_id, update)),
        }
    }

    /// Timers armed earlier in this change are dropped here; timers stored
    /// before it are deleted by the flush.
    pub fn clear_attempt_timers(&mut self, task_id: TaskId, kind: Option<TimerKind>) {
        self.new_timers
            .retain(|t| t.task_id != Some(task_id) || kind.is_some_and(|k| k != t.kind));
        self.cleared_attempt_timers.push((task_id, kind));
    }

    pub fn clear_run_timers(&mut self) {
        self.new_timers.clear();
        self.cleared_run_timers = true;
    }
}
