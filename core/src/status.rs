//! The status vocabulary: every state and kind Fulfil stores or sends, as
//! enums, each written once by one macro (`vocabulary!`).
//!
//! Each enum has one spelling per variant, used by the database, the wire,
//! the API and the CLI alike: [`as_str`](RunStatus::as_str) writes it,
//! [`parse`](RunStatus::parse) reads it back, and a value that no variant
//! spells is an [`UnknownValue`] error, never a silent default. The
//! database columns holding these values carry CHECK constraints listing the
//! same spellings (migration `..._typed_states.sql`); a test below keeps the
//! two in step. Legal transitions live beside each state machine's enum.

use std::fmt;

/// A stored or received value that the vocabulary does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}; expected one of: {expected}")]
pub struct UnknownValue {
    /// Which vocabulary: "run status", "timer kind", ...
    pub what: &'static str,
    /// The value as read.
    pub value: String,
    /// The accepted spellings, comma-separated.
    pub expected: String,
}

/// Declares a closed vocabulary: the enum, its spellings, `ALL`, `as_str`,
/// `parse`, `Display`, `FromStr` and serde, all from one list.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident as $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$( $name::$variant, )+];

            /// The one spelling of this value, stored and sent.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// Reads a spelling back; anything else is an error.
            pub fn parse(text: &str) -> Result<Self, UnknownValue> {
                match text {
                    $( $text => Ok($name::$variant), )+
                    _ => Err(UnknownValue {
                        what: $what,
                        value: text.to_owned(),
                        expected: [$( $text, )+].join(", "),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownValue;

            fn from_str(text: &str) -> Result<Self, UnknownValue> {
                Self::parse(text)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

vocabulary! {
    /// Status of a run (`fulfil.runs.status`).
    pub enum RunStatus as "run status" {
        Pending = "pending",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Compensating = "compensating",
        Compensated = "compensated",
        Cancelled = "cancelled",
    }
}

impl RunStatus {
    /// Nothing more happens to the run unless an operator retries it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Compensated | Self::Cancelled
        )
    }

    /// The legal transitions, in one place. Terminal runs move only by an
    /// operator's retry (back to `running`).
    pub fn can_become(self, next: RunStatus) -> bool {
        use RunStatus::*;
        matches!(
            (self, next),
            (Pending, Running | Cancelled)
                | (Running, Succeeded | Failed | Compensating | Cancelled)
                | (Compensating, Compensated | Failed | Cancelled)
                | (Failed | Compensated | Cancelled, Running)
        )
    }
}

vocabulary! {
    /// Status of a step within a run (`fulfil.steps.status`).
    pub enum StepStatus as "step status" {
        /// Waiting for its needs.
        Pending = "pending",
        /// Task dispatched, not yet reported by a worker.
        Ready = "ready",
        /// A worker reported it started.
        Running = "running",
        /// Failed, next attempt scheduled.
        Retrying = "retrying",
        /// Waiting for an event, an approval or a time.
        Waiting = "waiting",
        Succeeded = "succeeded",
        Failed = "failed",
        /// Its `if` condition was false.
        Skipped = "skipped",
        Cancelled = "cancelled",
        Compensated = "compensated",
    }
}

impl StepStatus {
    /// Whether dependents may start.
    pub fn satisfies_needs(self) -> bool {
        matches!(self, Self::Succeeded | Self::Skipped)
    }

    /// Dispatched or scheduled, and not finished.
    pub fn is_in_flight(self) -> bool {
        matches!(
            self,
            Self::Ready | Self::Running | Self::Retrying | Self::Waiting
        )
    }

    /// The legal transitions of a step, in one place. A finished step moves
    /// again only by compensation (`succeeded` → `compensated`) or an
    /// operator's retry (back to `pending`).
    pub fn can_become(self, next: StepStatus) -> bool {
        use StepStatus::*;
        matches!(
            (self, next),
            (Pending, Ready | Waiting | Skipped | Cancelled | Failed)
                | (
                    Ready | Running | Retrying | Waiting,
                    Ready | Running | Retrying | Waiting | Succeeded | Failed | Cancelled
                )
                | (Succeeded, Compensated)
                | (
                    Failed | Cancelled | Skipped | Compensated | Succeeded,
                    Pending
                )
        )
    }
}

vocabulary! {
    /// Progress of a step's compensation (`fulfil.steps.compensation_status`).
    pub enum CompensationStatus as "compensation status" {
        /// Will run once every dependent has been compensated.
        Pending = "pending",
        /// Task dispatched.
        Ready = "ready",
        /// A worker started it.
        Running = "running",
        Retrying = "retrying",
        Succeeded = "succeeded",
        Failed = "failed",
        /// Abandoned by an operator's cancel without compensation.
        Cancelled = "cancelled",
    }
}

impl CompensationStatus {
    /// Dispatched or scheduled, and not finished.
    pub fn is_in_flight(self) -> bool {
        matches!(self, Self::Ready | Self::Running | Self::Retrying)
    }

    /// The legal transitions of a step's compensation, in one place. A step
    /// with no compensation status yet counts as `pending`; a finished
    /// compensation moves again only when an operator's retry clears it.
    pub fn can_become(self, next: CompensationStatus) -> bool {
        use CompensationStatus::*;
        matches!(
            (self, next),
            (Pending, Ready | Failed | Cancelled)
                | (
                    Ready | Running | Retrying,
                    Ready | Running | Retrying | Succeeded | Failed | Cancelled
                )
        )
    }
}

vocabulary! {
    /// Status of a request (`fulfil.requests.status`).
    pub enum RequestStatus as "request status" {
        Accepted = "accepted",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Deleting = "deleting",
        Deleted = "deleted",
        DeleteFailed = "delete_failed",
    }
}

impl RequestStatus {
    /// A request's status while its configure run has `run` status: the
    /// request's vocabulary is coarser, and the run says the rest (why it
    /// failed, whether it was compensated or cancelled).
    pub fn following(run: RunStatus) -> Self {
        match run {
            RunStatus::Pending | RunStatus::Running | RunStatus::Compensating => Self::Running,
            RunStatus::Succeeded => Self::Succeeded,
            RunStatus::Failed | RunStatus::Compensated | RunStatus::Cancelled => Self::Failed,
        }
    }
}

vocabulary! {
    /// Status of one attempt at a task (`fulfil.attempts.status`).
    pub enum AttemptStatus as "attempt status" {
        /// Published to the workers' queue, not yet started.
        Dispatched = "dispatched",
        /// A worker reported it started.
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        /// Its deadline passed before a result arrived.
        TimedOut = "timed_out",
        /// Abandoned by a cancel or a stop.
        Cancelled = "cancelled",
    }
}

impl AttemptStatus {
    /// Whether a result for the attempt may still be applied.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Dispatched | Self::Running)
    }
}

vocabulary! {
    /// What a run does for its request (`fulfil.runs.kind`).
    pub enum RunKind as "run kind" {
        /// Builds or changes what the request asks for.
        Configure = "configure",
        /// Tears it down.
        Delete = "delete",
        /// Re-runs configure to correct drift.
        Reconcile = "reconcile",
        /// Re-runs configure on another version of the Promise, for a
        /// rollout; like a reconcile run it undoes nothing.
        Upgrade = "upgrade",
    }
}

impl RunKind {
    /// Whether the run re-runs the configure workflow of a live request
    /// (`reconcile`, `upgrade`): it undoes nothing when it fails, and its
    /// request's status does not move while it is in flight.
    pub fn reruns_configure(self) -> bool {
        matches!(self, Self::Reconcile | Self::Upgrade)
    }
}

vocabulary! {
    /// Where a rollout stands (docs/rollouts.md). `running` and `paused`
    /// are active (at most one per Promise); the others are final.
    pub enum RolloutStatus as "rollout status" {
        /// Starting targets, at most `max_concurrent` at once.
        Running = "running",
        /// Starts nothing new; upgrade runs in flight finish.
        Paused = "paused",
        /// Every target succeeded (or was skipped).
        Succeeded = "succeeded",
        /// Every target ended, and at least one failed.
        CompletedWithFailures = "completed_with_failures",
        /// Cancelled: its pending targets were skipped.
        Cancelled = "cancelled",
    }
}

impl RolloutStatus {
    /// Whether the rollout is still active (running or paused).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }
}

vocabulary! {
    /// Where one request of a rollout stands.
    pub enum RolloutTargetState as "rollout target state" {
        /// Not started yet.
        Pending = "pending",
        /// Its upgrade run is in flight.
        Running = "running",
        /// Its upgrade run succeeded: the request is on the new version.
        Succeeded = "succeeded",
        /// Its upgrade run did not succeed: the request kept its version.
        Failed = "failed",
        /// Never started: the request was deleted, or the rollout cancelled.
        Skipped = "skipped",
    }
}

vocabulary! {
    /// The kind of a status event Fulfil publishes on `<prefix>.events.<kind>`
    /// (CloudEvent `type` `dev.fulfil.<kind>`). Each is also the history
    /// kind it is emitted for: a history event whose kind this vocabulary
    /// spells is published, any other history event is not.
    pub enum StatusEventKind as "status event kind" {
        /// A request was filed and its run created.
        RequestAccepted = "request.accepted",
        /// A run began.
        RunStarted = "run.started",
        /// A worker reported it started a step's action.
        StepStarted = "step.started",
        /// A step's action succeeded; `data.outputs` holds its outputs.
        StepSucceeded = "step.succeeded",
        /// A step failed for good (no retry follows); `data.error` says why.
        StepFailed = "step.failed",
        /// A step waits for something outside the run (event, approval).
        StepWaiting = "step.waiting",
        /// The run succeeded; `data.outputs` holds the Promise's outputs.
        RunSucceeded = "run.succeeded",
        /// The run failed; `data.error` says why.
        RunFailed = "run.failed",
        /// The run failed and every completed step was undone.
        RunCompensated = "run.compensated",
        /// An operator cancelled the run.
        RunCancelled = "run.cancelled",
        /// The request's resources are gone and the request deleted.
        RequestDeleted = "request.deleted",
        /// The delete run of a request failed.
        RequestDeleteFailed = "request.delete_failed",
    }
}

impl StatusEventKind {
    /// The status event a history event of kind `history_kind` publishes,
    /// if any. The one place the two vocabularies meet: a status kind is
    /// spelled as the history kind it follows, and history kinds that are
    /// not status kinds (dispatches, retries scheduled, compensation
    /// attempts, ignored results) publish nothing.
    pub fn for_history(history_kind: &str) -> Option<Self> {
        Self::parse(history_kind).ok()
    }

    /// Whether the event is about one step (`data.step` names it, and
    /// `data.status` is the step's status rather than the run's).
    pub fn is_about_a_step(self) -> bool {
        matches!(
            self,
            Self::StepStarted | Self::StepSucceeded | Self::StepFailed | Self::StepWaiting
        )
    }
}

vocabulary! {
    /// What one trigger did with a received event (the event ledger's
    /// `outcomes[].outcome`, `POST /v1/events`' answer).
    pub enum EventOutcome as "event outcome" {
        /// A new request was filed.
        Filed = "filed",
        /// The event was seen before through this trigger: the request it
        /// filed then is named, nothing new was filed.
        Duplicate = "duplicate",
        /// The trigger's `filter` was false.
        Filtered = "filtered",
        /// The trigger's `params` could not be rendered, or broke the
        /// Promise's schema; the event is also a dead letter.
        Invalid = "invalid",
    }
}

vocabulary! {
    /// How an event reached Fulfil (`fulfil.event_ledger.via`).
    pub enum EventVia as "event route" {
        /// Consumed from JetStream.
        Bus = "bus",
        /// `POST /v1/events`.
        Http = "http",
        /// A dead letter sent through again by an operator.
        Replay = "replay",
    }
}

vocabulary! {
    /// What a task does for its step (`fulfil.attempts.kind`, wire `kind`).
    pub enum TaskKind as "task kind" {
        Action = "action",
        Compensation = "compensation",
    }
}

impl Default for TaskKind {
    /// Tasks from before compensation existed carry no kind.
    fn default() -> Self {
        TaskKind::Action
    }
}

impl TaskKind {
    /// Whether this is the step's action (not its undo).
    pub fn is_action(&self) -> bool {
        *self == TaskKind::Action
    }
}

vocabulary! {
    /// Why a durable timer exists (`fulfil.timers.kind`).
    pub enum TimerKind as "timer kind" {
        /// A step's next attempt after a retryable failure.
        Retry = "retry",
        /// A compensation's next attempt.
        CompensationRetry = "compensation_retry",
        /// An attempt no worker started in time.
        ScheduleToStart = "schedule_to_start",
        /// An attempt that ran past its timeout.
        AttemptTimeout = "attempt_timeout",
        /// A running attempt that stopped sending heartbeats.
        HeartbeatTimeout = "heartbeat_timeout",
        /// The whole run's deadline.
        RunTimeout = "run_timeout",
        /// An event matched a waiting `wait.event` step: complete it now.
        WaitMatched = "wait_matched",
        /// A `wait.event` or `approval` step waited past its `timeout`.
        WaitTimeout = "wait_timeout",
        /// A `sleep` step's time came.
        SleepDone = "sleep_done",
        /// A promise step started: file its child request.
        ChildFile = "child_file",
        /// A promise step's child request's run (or its delete) ended.
        ChildDone = "child_done",
        /// A promise step is compensated: delete its child request.
        ChildDelete = "child_delete",
    }
}

impl TimerKind {
    /// Timers that end an engine-run step's wait; they name its attempt's
    /// task id, which is also its wait's.
    pub fn is_wait_timer(self) -> bool {
        matches!(
            self,
            Self::WaitMatched | Self::WaitTimeout | Self::SleepDone
        )
    }

    /// Timers of a promise step, which cross to its child request; they
    /// name the step's attempt's task id.
    pub fn is_child_timer(self) -> bool {
        matches!(self, Self::ChildFile | Self::ChildDone | Self::ChildDelete)
    }

    /// Timers about one attempt name its task id.
    pub fn is_attempt_timer(self) -> bool {
        matches!(
            self,
            Self::ScheduleToStart | Self::AttemptTimeout | Self::HeartbeatTimeout
        )
    }
}

vocabulary! {
    /// What an engine-run step waits for (`fulfil.waits.kind`, a waiting
    /// step's `waiting_for.kind`).
    pub enum WaitKind as "wait kind" {
        /// An inbound event (`wait.event`).
        Event = "event",
        /// Approvals from people (`approval`).
        Approval = "approval",
        /// A time (`sleep`).
        Sleep = "sleep",
    }
}

vocabulary! {
    /// What a Schedule does with a tick while the request its last tick
    /// filed is still in flight (`fulfil.schedules.overlap`).
    pub enum OverlapPolicy as "overlap policy" {
        /// The tick files nothing and is recorded `skipped_overlap`.
        Skip = "skip",
        /// One tick waits (`buffered`) and files when the run in flight
        /// ends; further ticks meanwhile are `skipped_overlap`.
        BufferOne = "buffer_one",
        /// Every tick files, whatever is in flight.
        Allow = "allow",
    }
}

vocabulary! {
    /// A decision on an approval step.
    pub enum Decision as "approval decision" {
        Approve = "approve",
        Reject = "reject",
    }
}

vocabulary! {
    /// What became of one tick of a Schedule (`fulfil.schedule_ticks.outcome`).
    pub enum TickOutcome as "tick outcome" {
        /// A request was filed (`request_id`).
        Filed = "filed",
        /// The overlap policy kept the tick from filing while an earlier
        /// request was in flight.
        SkippedOverlap = "skipped_overlap",
        /// The tick was found later than its catch-up window (engines were
        /// down); nothing was filed.
        Missed = "missed",
        /// The Schedule was paused at the tick.
        Paused = "paused",
        /// `buffer_one`: waiting for the run in flight to end; becomes
        /// `filed` when it files.
        Buffered = "buffered",
        /// The tick could not file (its Promise is missing, its params
        /// break the Promise's schema); `reason` says why.
        Failed = "failed",
        /// An admission policy refused the tick's request (see
        /// `fulfil_core::policy`); `reason` names the policies and their
        /// messages.
        Denied = "denied",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip_and_unknown_values_are_errors() {
        for status in RunStatus::ALL {
            assert_eq!(RunStatus::parse(status.as_str()), Ok(*status));
            let json = serde_json::to_value(status).expect("serializes");
            assert_eq!(json, status.as_str());
            assert_eq!(
                serde_json::from_value::<RunStatus>(json).ok(),
                Some(*status)
            );
        }
        assert_eq!(RequestStatus::DeleteFailed.as_str(), "delete_failed");
        assert_eq!(TimerKind::parse("run_timeout"), Ok(TimerKind::RunTimeout));
        let unknown = StepStatus::parse("done").expect_err("not a step status");
        assert_eq!(unknown.what, "step status");
        assert!(unknown.to_string().contains("pending, ready, running"));
        assert!(serde_json::from_str::<TaskKind>("\"undo\"").is_err());
    }

    #[test]
    fn only_status_kinds_of_history_publish_a_status_event() {
        assert_eq!(
            StatusEventKind::for_history("step.succeeded"),
            Some(StatusEventKind::StepSucceeded)
        );
        assert_eq!(
            StatusEventKind::for_history("request.delete_failed"),
            Some(StatusEventKind::RequestDeleteFailed)
        );
        // A retried attempt is `step.retry_scheduled`, never `step.failed`.
        for quiet in [
            "step.dispatched",
            "step.retry_scheduled",
            "step.timed_out",
            "compensation.failed",
            "run.compensating",
            "result.ignored",
        ] {
            assert_eq!(StatusEventKind::for_history(quiet), None, "{quiet}");
        }
        assert_eq!(
            StatusEventKind::ALL.len(),
            12,
            "the contract lists twelve kinds"
        );
        assert!(StatusEventKind::StepFailed.is_about_a_step());
        assert!(!StatusEventKind::RunFailed.is_about_a_step());
    }

    #[test]
    fn finished_compensations_stay_finished() {
        use CompensationStatus::*;
        assert!(Pending.can_become(Ready));
        assert!(Retrying.can_become(Ready));
        for finished in [Succeeded, Failed, Cancelled] {
            for next in CompensationStatus::ALL {
                assert!(!finished.can_become(*next), "{finished} -> {next}");
            }
        }
    }

    #[test]
    fn run_transitions_are_closed() {
        use RunStatus::*;
        assert!(Running.can_become(Compensating));
        assert!(Compensating.can_become(Compensated));
        assert!(!Succeeded.can_become(Running));
        assert!(!Compensated.can_become(Succeeded));
        for status in RunStatus::ALL {
            assert!(!status.can_become(Pending), "{status} -> pending");
        }
    }
}
