//! The REST bodies of requests and runs as types, shared by the server
//! (which writes and reads them) and the CLI (which reads and writes them),
//! so neither side goes through `json["field"]`.
//!
//! Field names are the public contract of DESIGN.md ("add fields freely;
//! never rename these"): the tests at the bottom pin them. Readers ignore
//! fields they do not know, so a newer server can add some.

use chrono::{DateTime, Utc};
use fulfil_core::ids::{RequestId, RolloutId, RunId, TaskId};
use fulfil_engine::inspect;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::openapi::schemas;

pub mod tokens;

/// A page of a list: `{items, next_cursor}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// The same page with its items converted.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

/// `POST /v1/promises/{name}/requests`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({ "params": { "name": "orders-db", "size": "small" } }))]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// A JSON object (or absent, read as null: the Promise's defaults).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub params: Value,
    /// Also accepted as the `Idempotency-Key` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 255)]
    pub idempotency_key: Option<String>,
}

/// The 202 answer to [`CreateRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    #[schema(value_type = uuid::Uuid)]
    pub request_id: RequestId,
    #[schema(value_type = uuid::Uuid)]
    pub run_id: RunId,
    /// True when an earlier request with the same idempotency key and the
    /// same parameters was returned instead of a new one.
    pub replayed: bool,
}

/// A request: `GET /v1/requests/{id}`, items of `GET /v1/requests`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Request {
    #[schema(value_type = uuid::Uuid)]
    pub id: RequestId,
    pub promise: String,
    pub promise_version: String,
    pub params: Value,
    #[schema(schema_with = schemas::request_status)]
    pub status: String,
    #[schema(value_type = Option<uuid::Uuid>)]
    pub run_id: Option<RunId>,
    /// The delete run, once the request is being deleted; null before, and
    /// when it was deleted without one.
    #[serde(default)]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub delete_run_id: Option<RunId>,
    /// The request's latest reconcile run; null before its first.
    #[serde(default)]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub reconcile_run_id: Option<RunId>,
    pub outputs: Option<Value>,
    pub idempotency_key: Option<String>,
    /// Who filed it (a principal id, `user:alice`; `event:<source>` or
    /// `schedule:<name>` where the engine filed it).
    pub created_by: Option<String>,
    /// The filing principal's team, which (with the Promise's owner team)
    /// may delete, reconcile, cancel and retry it; null where the engine
    /// filed it or access control was off.
    #[serde(default)]
    pub team: Option<String>,
    /// For a child request, filed by a promise step of another request's
    /// run: that request, run and step; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
    /// `GET /v1/requests/{id}` only: the child requests its runs' promise
    /// steps filed, oldest first; absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildLink>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Pinned to its `promise_version`: no rollout upgrades it
    /// (`POST`/`DELETE /v1/requests/{id}/pin`).
    #[serde(default)]
    pub pinned: bool,
}

/// Where a child request comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ParentLink {
    #[schema(value_type = uuid::Uuid)]
    pub request_id: RequestId,
    #[schema(value_type = uuid::Uuid)]
    pub run_id: RunId,
    /// The promise step that filed it.
    pub step: String,
}

/// A child request, as its parent shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChildLink {
    #[schema(value_type = uuid::Uuid)]
    pub request_id: RequestId,
    /// The child's configure run.
    #[schema(value_type = Option<uuid::Uuid>)]
    pub run_id: Option<RunId>,
    pub promise: String,
    /// The parent's promise step that filed it.
    pub step: String,
    #[schema(schema_with = schemas::request_status)]
    pub status: String,
    pub created_at: DateTime<Utc>,
}

impl From<fulfil_engine::children::ChildLink> for ChildLink {
    fn from(c: fulfil_engine::children::ChildLink) -> Self {
        Self {
            request_id: c.request_id,
            run_id: c.run_id,
            promise: c.promise,
            step: c.step,
            status: c.status,
            created_at: c.created_at,
        }
    }
}

impl From<fulfil_engine::children::ParentRef> for ParentLink {
    fn from(p: fulfil_engine::children::ParentRef) -> Self {
        Self {
            request_id: p.request_id,
            run_id: p.run_id,
            step: p.step,
        }
    }
}

/// The 202 answer to `DELETE /v1/requests/{id}[?force=true]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Deletion {
    #[schema(value_type = uuid::Uuid)]
    pub request_id: RequestId,
    /// `deleting`, or `deleted` when nothing was left to run.
    #[schema(schema_with = schemas::request_status)]
    pub status: String,
    /// The delete run; null when the request was deleted without one (no
    /// `delete` workflow, or `force`).
    #[schema(value_type = Option<uuid::Uuid>)]
    pub run_id: Option<RunId>,
    /// This call deleted the request without a teardown.
    pub forced: bool,
    /// The request was already being deleted: nothing new started.
    #[serde(default)]
    pub replayed: bool,
}

impl From<fulfil_engine::deletion::Deletion> for Deletion {
    fn from(d: fulfil_engine::deletion::Deletion) -> Self {
        Self {
            request_id: d.request_id,
            status: d.status.as_str().to_string(),
            run_id: d.run_id,
            forced: d.forced,
            replayed: d.replayed,
        }
    }
}

/// The 202 answer to `POST /v1/requests/{id}/reconcile`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Reconcile {
    #[schema(value_type = uuid::Uuid)]
    pub request_id: RequestId,
    /// The reconcile run; null while it is queued.
    #[schema(value_type = Option<uuid::Uuid>)]
    pub run_id: Option<RunId>,
    /// `started`, or `queued` behind the run in flight.
    pub status: ReconcileStatus,
    /// The run of the request in flight that a queued reconcile waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub waiting_for_run: Option<RunId>,
}

/// What `POST /v1/requests/{id}/reconcile` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReconcileStatus {
    /// The reconcile run started.
    Started,
    /// Queued: it starts once the run in flight has ended.
    Queued,
}

impl Reconcile {
    pub fn new(request_id: RequestId, outcome: fulfil_engine::reconcile::ReconcileNow) -> Self {
        use fulfil_engine::reconcile::ReconcileNow;
        match outcome {
            ReconcileNow::Started(run_id) => Self {
                request_id,
                run_id: Some(run_id),
                status: ReconcileStatus::Started,
                waiting_for_run: None,
            },
            ReconcileNow::Queued { waiting_for } => Self {
                request_id,
                run_id: None,
                status: ReconcileStatus::Queued,
                waiting_for_run: Some(waiting_for),
            },
        }
    }
}

/// A run: `GET /v1/runs/{id}` (with its steps), items of `GET /v1/runs`
/// (without: `steps` is absent and reads as empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Run {
    #[schema(value_type = uuid::Uuid)]
    pub id: RunId,
    #[schema(value_type = uuid::Uuid)]
    pub request_id: RequestId,
    pub promise: String,
    pub promise_version: String,
    /// `configure`, `delete` or `reconcile`.
    #[schema(schema_with = schemas::run_kind)]
    pub kind: String,
    #[schema(schema_with = schemas::run_status)]
    pub status: String,
    /// The team owning the run's Promise (`metadata.owner`) when it was created.
    #[serde(default)]
    pub owner: Option<String>,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// List items only: what the run's unfinished steps wait for (`retry`,
    /// `event`, `approval`, `sleep`, `worker`), one entry per step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Step>>,
    /// `GET /v1/runs/{id}` only: the child requests the run's promise steps
    /// filed, oldest first; absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildLink>,
    /// `GET /v1/runs/{id}` only: where the run's request comes from, if a
    /// promise step of another run filed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
}

impl Run {
    /// Whether the run has ended (nothing more will happen unless retried).
    pub fn is_finished(&self) -> bool {
        matches!(
            self.status.as_str(),
            "succeeded" | "failed" | "compensated" | "cancelled"
        )
    }

    /// Its steps; none for a run read from a list.
    pub fn steps(&self) -> &[Step] {
        self.steps.as_deref().unwrap_or_default()
    }
}

/// A step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Step {
    pub id: String,
    #[schema(schema_with = schemas::step_status)]
    pub status: String,
    /// The current attempt number (0 before the first).
    pub attempt: i32,
    pub attempts: Vec<Attempt>,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    /// From the first attempt's dispatch to the last one's end (to now while
    /// one is open); null before the first attempt.
    #[serde(default)]
    pub duration_ms: Option<i64>,
    /// What an unfinished step waits for: `{kind: "event" | "approval" |
    /// "sleep", ..., until}` for a waiting step (DESIGN.md "Waits"),
    /// `{kind: "child", promise, request_id, run_id, status, since}` for a
    /// promise step waiting for its child request,
    /// `{kind: "retry", attempt, next_attempt_at}` for a retrying one,
    /// `{kind: "worker", queue, worker, since}` for one on a worker; null
    /// otherwise.
    #[serde(default)]
    pub waiting_for: Option<Value>,
    /// For an instance of a `for_each` step (its id is `<step>[<index>]`):
    /// that step; absent on other steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_of: Option<String>,
    /// For an instance: its index in the step's list, from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<i32>,
    /// For an instance: the item it runs over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Value>,
    /// For a `for_each` step that started: how many of its instances are in
    /// each state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<InstanceCounts>,
    /// For a promise step: the child request its latest attempt filed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<ChildLink>,
}

/// How many instances of a `for_each` step are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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

impl From<inspect::InstanceCounts> for InstanceCounts {
    fn from(c: inspect::InstanceCounts) -> Self {
        Self {
            total: c.total,
            succeeded: c.succeeded,
            failed: c.failed,
            running: c.running,
            pending: c.pending,
            cancelled: c.cancelled,
            compensated: c.compensated,
        }
    }
}

/// One dispatched attempt of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    pub attempt: i32,
    /// `action` or `compensation`.
    #[serde(default)]
    #[schema(schema_with = schemas::attempt_kind)]
    pub kind: String,
    #[schema(schema_with = schemas::attempt_status)]
    pub status: String,
    #[schema(value_type = uuid::Uuid)]
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
    /// From start (or dispatch, if never started) to end; null while open.
    #[serde(default)]
    pub duration_ms: Option<i64>,
}

/// One entry of `GET /v1/runs/{id}/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryEvent {
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(rename = "step")]
    pub step_id: Option<String>,
    pub attempt: Option<i32>,
    pub actor: String,
    pub at: DateTime<Utc>,
    pub data: Value,
}

/// `POST /v1/runs/{id}/cancel` (the body may be absent: the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRun {
    /// Compensate succeeded steps before ending (default true).
    #[serde(default)]
    pub compensate: Option<bool>,
    /// Recorded in the run's history.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The answer to [`CancelRun`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cancelled {
    #[schema(value_type = uuid::Uuid)]
    pub run_id: RunId,
    /// `cancelled`, or `compensating` while succeeded steps are undone.
    #[schema(schema_with = schemas::run_status)]
    pub status: String,
    pub compensate: bool,
}

/// `POST /v1/runs/{id}/retry` (the body may be absent: the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRun {
    /// Also re-run this step and what depends on it.
    #[serde(default)]
    pub step: Option<String>,
    /// Only say what would be re-run.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to [`RetryRun`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Retried {
    #[schema(value_type = uuid::Uuid)]
    pub run_id: RunId,
    /// Steps reset to pending, in workflow order.
    pub rerun: Vec<String>,
    /// Steps whose outputs are kept.
    pub kept: Vec<String>,
    /// False for a dry run.
    pub applied: bool,
}

/// `POST /v1/runs/{id}/steps/{step}/approve` and `.../reject` (the body
/// may be absent). Who decides is the `Fulfil-Actor` header (the
/// authenticated principal once access control lands), never the body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideApproval {
    /// Kept with the decision in history and in the step's outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// The answer to [`DecideApproval`]: the decision recorded and where the
/// step stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalOutcome {
    #[schema(value_type = uuid::Uuid)]
    pub run_id: RunId,
    pub step: String,
    /// `approve` or `reject`.
    #[schema(schema_with = schemas::decision)]
    pub decision: String,
    /// The principal who decided.
    pub by: String,
    /// Distinct principals who approved so far.
    pub approvals: u32,
    pub quorum: u32,
    /// `waiting` until the quorum is reached; `succeeded` when this
    /// decision reached it; `failed` on a reject.
    #[schema(schema_with = schemas::step_status)]
    pub step_status: String,
    /// Every decision on the step so far, in order.
    #[schema(schema_with = schemas::approval_decisions)]
    pub decisions: Vec<fulfil_core::wait::ApprovalDecision>,
}

impl From<fulfil_engine::requests::Accepted> for Accepted {
    fn from(a: fulfil_engine::requests::Accepted) -> Self {
        Self {
            request_id: a.request_id,
            run_id: a.run_id,
            replayed: a.replayed,
        }
    }
}

impl From<inspect::RequestView> for Request {
    fn from(r: inspect::RequestView) -> Self {
        Self {
            id: r.id,
            promise: r.promise,
            promise_version: r.promise_version,
            params: r.params,
            status: r.status,
            run_id: r.run_id,
            delete_run_id: r.delete_run_id,
            reconcile_run_id: r.reconcile_run_id,
            outputs: r.outputs,
            idempotency_key: r.idempotency_key,
            created_by: r.created_by,
            team: r.team,
            parent: match (r.parent_request_id, r.parent_run_id, r.parent_step) {
                (Some(request_id), Some(run_id), Some(step)) => Some(ParentLink {
                    request_id,
                    run_id,
                    step,
                }),
                _ => None,
            },
            children: Vec::new(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            pinned: r.pinned,
        }
    }
}

impl From<inspect::RunSummary> for Run {
    fn from(r: inspect::RunSummary) -> Self {
        Self {
            id: r.id,
            request_id: r.request_id,
            promise: r.promise,
            promise_version: r.promise_version,
            kind: r.kind,
            status: r.status,
            owner: r.owner,
            outputs: r.outputs,
            error: r.error,
            created_at: r.created_at,
            finished_at: r.finished_at,
            waiting_for: r.waiting_for.iter().map(|w| w.to_string()).collect(),
            steps: None,
            children: Vec::new(),
            parent: None,
        }
    }
}

impl From<inspect::RunView> for Run {
    fn from(r: inspect::RunView) -> Self {
        Self {
            steps: Some(r.steps.into_iter().map(Step::from).collect()),
            children: r.children.into_iter().map(ChildLink::from).collect(),
            parent: r.parent.map(ParentLink::from),
            ..Self::from(r.run)
        }
    }
}

impl From<inspect::StepView> for Step {
    fn from(s: inspect::StepView) -> Self {
        Self {
            id: s.id,
            status: s.status,
            attempt: s.attempt,
            attempts: s.attempts.into_iter().map(Attempt::from).collect(),
            outputs: s.outputs,
            error: s.error,
            duration_ms: s.duration_ms,
            waiting_for: s.waiting_for,
            instance_of: s.instance_of,
            index: s.index,
            item: s.item,
            instances: s.instances.map(InstanceCounts::from),
            child: s.child.map(ChildLink::from),
        }
    }
}

impl From<inspect::AttemptView> for Attempt {
    fn from(a: inspect::AttemptView) -> Self {
        Self {
            attempt: a.attempt,
            kind: a.kind,
            status: a.status,
            task_id: a.task_id,
            handler: a.handler,
            queue: a.queue,
            input: a.input,
            dispatched_at: a.dispatched_at,
            deadline: a.deadline,
            started_at: a.started_at,
            finished_at: a.finished_at,
            worker: a.worker,
            error: a.error,
            duration_ms: a.duration_ms,
        }
    }
}

impl From<inspect::HistoryEvent> for HistoryEvent {
    fn from(e: inspect::HistoryEvent) -> Self {
        Self {
            seq: e.seq,
            kind: e.kind,
            step_id: e.step_id,
            attempt: e.attempt,
            actor: e.actor,
            at: e.at,
            data: e.data,
        }
    }
}

impl<T, U: From<T>> From<inspect::Page<T>> for Page<U> {
    fn from(p: inspect::Page<T>) -> Self {
        Page {
            items: p.items.into_iter().map(U::from).collect(),
            next_cursor: p.next_cursor,
        }
    }
}

/// `POST /v1/promises/{name}/rollout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "to_version": "2", "max_concurrent": 10, "selector": "params.size == 'small'" }))]
pub struct CreateRollout {
    /// The version to move the requests to; it must exist.
    #[schema(min_length = 1)]
    pub to_version: String,
    /// Most upgrade runs in flight at once, 1 to 1000; 10 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_concurrent: Option<i64>,
    /// CEL over `params` and `request` (`id`, `promise`,
    /// `promise_version`, `status`, `created_by`, `team`, `outputs`): only
    /// the live requests it selects are upgraded. Absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// How many targets of a rollout are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolloutProgress {
    pub total: i64,
    pub pending: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub skipped: i64,
}

/// A target of a rollout whose upgrade did not succeed; the request kept
/// its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolloutFailure {
    #[schema(value_type = uuid::Uuid)]
    pub request_id: RequestId,
    /// The version the request kept.
    pub from_version: String,
    /// The upgrade run; null when none could be created.
    #[schema(value_type = Option<uuid::Uuid>)]
    pub run_id: Option<RunId>,
    pub error: Option<String>,
}

/// A rollout: `GET /v1/rollouts/{id}`, items of `GET
/// /v1/promises/{name}/rollouts`, and the answer to creating, pausing,
/// resuming and cancelling one (docs/rollouts.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rollout {
    #[schema(value_type = uuid::Uuid)]
    pub id: RolloutId,
    pub promise: String,
    pub to_version: String,
    pub max_concurrent: i32,
    pub selector: Option<String>,
    #[schema(schema_with = schemas::rollout_status)]
    pub status: fulfil_core::status::RolloutStatus,
    /// Who created it.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When it ended (succeeded, completed with failures or cancelled).
    pub finished_at: Option<DateTime<Utc>>,
    pub progress: RolloutProgress,
    /// The failed targets, oldest failure first (at most 1000).
    pub failures: Vec<RolloutFailure>,
}

impl From<fulfil_engine::rollout::RolloutView> for Rollout {
    fn from(r: fulfil_engine::rollout::RolloutView) -> Self {
        let p = r.progress;
        Self {
            id: r.id,
            promise: r.promise,
            to_version: r.to_version,
            max_concurrent: r.max_concurrent,
            selector: r.selector,
            status: r.status,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
            progress: RolloutProgress {
                total: p.total,
                pending: p.pending,
                running: p.running,
                succeeded: p.succeeded,
                failed: p.failed,
                skipped: p.skipped,
            },
            failures: r
                .failures
                .into_iter()
                .map(|f| RolloutFailure {
                    request_id: f.request_id,
                    from_version: f.from_version,
                    run_id: f.run_id,
                    error: f.error,
                })
                .collect(),
        }
    }
}

/// A schedule: `GET /v1/schedules/{name}`, items of `GET /v1/schedules`,
/// and the answer to pausing and resuming one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Schedule {
    pub name: String,
    pub owner: Option<String>,
    pub promise: String,
    pub cron: String,
    /// IANA name.
    pub timezone: String,
    #[schema(schema_with = schemas::overlap_policy)]
    pub overlap: fulfil_core::status::OverlapPolicy,
    /// As written (`1h`); `0s` by default.
    pub catch_up: String,
    pub params: Value,
    pub paused: bool,
    /// The next tick not yet decided; null when there is none.
    pub next_fire_at: Option<DateTime<Utc>>,
    /// `buffer_one`: the tick waiting for the request in flight.
    pub buffered_at: Option<DateTime<Utc>>,
    /// The request the last filed tick filed.
    #[schema(value_type = Option<uuid::Uuid>)]
    pub last_request_id: Option<RequestId>,
    pub paused_by: Option<String>,
    pub paused_at: Option<DateTime<Utc>>,
    pub resumed_by: Option<String>,
    pub resumed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The document as applied, defaults filled in.
    #[serde(default)]
    pub document: Value,
}

impl From<fulfil_engine::schedules::ScheduleRow> for Schedule {
    fn from(s: fulfil_engine::schedules::ScheduleRow) -> Self {
        Self {
            name: s.name,
            owner: s.owner,
            promise: s.promise,
            cron: s.cron,
            timezone: s.timezone,
            overlap: s.overlap,
            catch_up: s.catch_up,
            params: s.params,
            paused: s.paused,
            next_fire_at: s.next_fire_at,
            buffered_at: s.buffered_at,
            last_request_id: s.last_request_id,
            paused_by: s.paused_by,
            paused_at: s.paused_at,
            resumed_by: s.resumed_by,
            resumed_at: s.resumed_at,
            created_at: s.created_at,
            updated_at: s.updated_at,
            document: s.document,
        }
    }
}

/// One row of a schedule's tick ledger (`GET /v1/schedules/{name}/ticks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Tick {
    pub schedule: String,
    /// When the tick was due by the cron expression.
    pub nominal_at: DateTime<Utc>,
    /// When it was decided.
    pub fired_at: DateTime<Utc>,
    /// `filed`, `skipped_overlap`, `missed`, `paused`, `buffered` or `failed`.
    #[schema(schema_with = schemas::tick_outcome)]
    pub outcome: fulfil_core::status::TickOutcome,
    /// The request filed (`filed`).
    #[schema(value_type = Option<uuid::Uuid>)]
    pub request_id: Option<RequestId>,
    /// Why it did not file.
    pub reason: Option<String>,
}

impl From<fulfil_engine::schedules::TickRow> for Tick {
    fn from(t: fulfil_engine::schedules::TickRow) -> Self {
        Self {
            schedule: t.schedule,
            nominal_at: t.nominal_at,
            fired_at: t.fired_at,
            outcome: t.outcome,
            request_id: t.request_id,
            reason: t.reason,
        }
    }
}

/// The answer to `PUT /v1/schedules/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleApplied {
    pub name: String,
    /// `created`, `updated` or `unchanged`.
    #[schema(schema_with = schemas::schedule_outcome)]
    pub outcome: String,
    pub next_fire_at: Option<DateTime<Utc>>,
}

/// The answer to `PUT /v1/promises/{name}`: 201 when the version is new,
/// 200 when the same version was applied before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PromiseApplied {
    pub name: String,
    pub version: String,
    /// `created` or `unchanged`.
    #[schema(schema_with = schemas::promise_outcome)]
    pub outcome: String,
}

/// A Promise version: items of `GET /v1/promises` (without `promise`) and
/// `GET /v1/promises/{name}` (with it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PromiseSummary {
    pub name: String,
    pub version: String,
    pub owner: Option<String>,
    pub description: Option<String>,
    /// Whether new requests use this version.
    pub current: bool,
    /// Every stored version of the Promise.
    pub versions: Vec<String>,
    /// How many steps its workflow has.
    pub steps: usize,
    pub created_at: DateTime<Utc>,
    /// The whole Promise document, defaults filled in; only on a get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub promise: Option<Value>,
}

/// A stored Policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PolicyView {
    pub name: String,
    pub owner: Option<String>,
    /// The Promises it governs; null governs every Promise.
    pub promises: Option<Vec<String>>,
    /// Who applied the current document.
    pub applied_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The document as applied.
    pub document: Value,
}

impl From<fulfil_engine::policies::PolicyRow> for PolicyView {
    fn from(row: fulfil_engine::policies::PolicyRow) -> Self {
        Self {
            name: row.name,
            owner: row.owner,
            promises: row.promises,
            applied_by: row.applied_by,
            created_at: row.created_at,
            updated_at: row.updated_at,
            document: row.document,
        }
    }
}

/// The answer to `PUT /v1/policies/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyApplied {
    pub name: String,
    /// `created`, `updated` or `unchanged`.
    #[schema(schema_with = schemas::schedule_outcome)]
    pub outcome: String,
}

/// One broken rule of a `policy-denied` answer (`violations[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyViolation {
    pub policy: String,
    pub rule: String,
    pub message: String,
    /// Why the rule's expression could not be evaluated, when it could
    /// not (the rule then counts as broken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<fulfil_core::policy::Violation> for PolicyViolation {
    fn from(v: fulfil_core::policy::Violation) -> Self {
        Self {
            policy: v.policy,
            rule: v.rule,
            message: v.message,
            error: v.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The field names are a public contract: the model and the engine's
    /// read models serialize to the same JSON, key for key.
    #[test]
    fn models_serialize_as_the_engine_views_did() -> Result<(), serde_json::Error> {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let (run_id, request_id, task_id) =
            (RunId::generate(), RequestId::generate(), TaskId::generate());
        let summary = inspect::RunSummary {
            id: run_id,
            request_id,
            promise: "db".into(),
            promise_version: "1".into(),
            kind: "configure".into(),
            status: "running".into(),
            owner: Some("team-data".into()),
            outputs: None,
            error: Some("boom".into()),
            created_at: at,
            finished_at: None,
            waiting_for: Vec::new(),
        };
        let view = inspect::RunView {
            run: summary.clone(),
            steps: vec![inspect::StepView {
                id: "provision".into(),
                status: "running".into(),
                attempt: 1,
                duration_ms: None,
                waiting_for: None,
                instance_of: None,
                index: None,
                item: None,
                instances: None,
                child: None,
                attempts: vec![inspect::AttemptView {
                    attempt: 1,
                    kind: "action".into(),
                    status: "running".into(),
                    task_id,
                    handler: "noop".into(),
                    queue: "default".into(),
                    input: json!({ "a": 1 }),
                    dispatched_at: at,
                    deadline: at,
                    started_at: Some(at),
                    finished_at: None,
                    worker: Some("w".into()),
                    error: None,
                    duration_ms: None,
                }],
                outputs: None,
                error: None,
            }],
            children: Vec::new(),
            parent: None,
        };
        let engine = serde_json::to_value(&view)?;
        let model = serde_json::to_value(Run::from(view))?;
        assert_eq!(model, engine);
        assert_eq!(serde_json::from_value::<Run>(engine)?.steps().len(), 1);
        assert_eq!(
            serde_json::to_value(Run::from(summary.clone()))?,
            serde_json::to_value(&summary)?
        );

        let request = inspect::RequestView {
            id: request_id,
            promise: "db".into(),
            promise_version: "1".into(),
            params: json!({ "name": "x" }),
            status: "accepted".into(),
            run_id: Some(run_id),
            delete_run_id: None,
            reconcile_run_id: Some(RunId::generate()),
            outputs: None,
            idempotency_key: None,
            created_by: Some("api".into()),
            team: None,
            parent_request_id: None,
            parent_run_id: None,
            parent_step: None,
            created_at: at,
            updated_at: at,
            pinned: false,
        };
        assert_eq!(
            serde_json::to_value(Request::from(request.clone()))?,
            serde_json::to_value(&request)?
        );
        let event = inspect::HistoryEvent {
            seq: 1,
            kind: "run_created".into(),
            step_id: None,
            attempt: None,
            actor: "api".into(),
            at,
            data: json!({}),
        };
        let page = inspect::Page {
            items: vec![event],
            next_cursor: Some("c".into()),
        };
        assert_eq!(
            serde_json::to_value(Page::<HistoryEvent>::from(page.clone()))?,
            serde_json::to_value(&page)?
        );
        Ok(())
    }
}
