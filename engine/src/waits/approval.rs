//! Deciding an approval step: who may, how the quorum is counted, and what
//! a decision does to the run.
//!
//! A decision is applied on the run's row lock and the wait's row lock, in
//! one transaction with its history event, so concurrent decisions are
//! counted one after the other: the quorum is reached once, by distinct
//! principals, and a decision arriving after the step ended is refused
//! rather than lost in silence.

use chrono::Utc;
use fulfil_core::ids::{RunId, TaskId};
use fulfil_core::status::{Decision, WaitKind};
use fulfil_core::wait::{Approval, ApprovalDecision, Principal, REJECTED};
use fulfil_core::{RunStatus, StepStatus};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::Engine;
use crate::run::{RunError, advance, complete_wait, event, fail_wait, lock_run};

/// A decision someone takes on an approval step.
#[derive(Debug, Clone)]
pub struct ApprovalRequest {
    pub run_id: RunId,
    pub step_id: String,
    pub principal: Principal,
    pub decision: Decision,
    pub comment: Option<String>,
}

/// What the decision did.
#[derive(Debug, Clone)]
pub struct ApprovalOutcome {
    pub run_id: RunId,
    pub step: String,
    pub decision: Decision,
    pub by: String,
    /// Distinct principals who approved so far, this one included.
    pub approvals: u32,
    pub quorum: u32,
    /// The step's status after the decision: still `waiting`, or
    /// `succeeded` (quorum reached), or `failed` (rejected).
    pub step_status: StepStatus,
    pub decisions: Vec<ApprovalDecision>,
}

/// Why a decision was refused; nothing was recorded.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// There is no such run.
    #[error("run {0} not found")]
    RunNotFound(RunId),
    /// The run's Promise has no such step.
    #[error("the run has no step {step:?}")]
    UnknownStep { step: String },
    /// The step is not waiting for decisions (not started, or over).
    #[error(
        "step {step} is {status}, not waiting for an approval; decisions are taken only while it waits"
    )]
    NotWaiting { step: String, status: StepStatus },
    /// The step is not an approval step.
    #[error("step {step} is not an approval step")]
    NotAnApproval { step: String },
    /// The principal is none of the step's approvers.
    #[error("{principal} is not an approver of this step; its approvers are: {}", approvers.join(", "))]
    NotAnApprover {
        principal: String,
        approvers: Vec<String>,
    },
    /// The principal filed the request, and the step does not allow that.
    #[error(
        "{principal} filed this request and cannot approve it (the step sets allow_requester: false)"
    )]
    RequesterRefused { principal: String },
    /// The principal decided on this step before; the quorum counts
    /// distinct principals.
    #[error("{principal} has already decided on this step; the quorum counts distinct principals")]
    AlreadyDecided { principal: String },
    /// The run could not be read or changed.
    #[error(transparent)]
    Run(#[from] RunError),
}

impl From<sqlx::Error> for ApprovalError {
    fn from(e: sqlx::Error) -> Self {
        ApprovalError::Run(RunError::Db(e))
    }
}

/// An approval wait's row, under its lock.
#[derive(sqlx::FromRow)]
struct ApprovalRow {
    task_id: Uuid,
    attempt: i32,
    kind: String,
    waiting_for: Value,
    decisions: Value,
    created_by: Option<String>,
}

/// Records `request`'s decision on its approval step, and moves the step
/// on if the decision ends it: a reject fails it with `rejected` (and the
/// run compensates), an approval that reaches the quorum completes it.
pub async fn decide_approval(
    engine: &Engine,
    request: ApprovalRequest,
) -> Result<ApprovalOutcome, ApprovalError> {
    let ApprovalRequest {
        run_id,
        step_id,
        principal,
        decision,
        comment,
    } = request;
    let mut tx = engine.pool().begin().await?;
    let Some(mut run) = lock_run(engine, &mut tx, run_id, principal.id.clone()).await? else {
        return Err(ApprovalError::RunNotFound(run_id));
    };
    let promise = run.promise().clone();
    let Some(step) = promise.step(&step_id) else {
        return Err(ApprovalError::UnknownStep { step: step_id });
    };
    if WaitKind::of_handler(&step.uses) != Some(WaitKind::Approval) {
        return Err(ApprovalError::NotAnApproval { step: step_id });
    }
    let status = run.step(&step_id).map_or(StepStatus::Pending, |s| s.status);
    if status != StepStatus::Waiting || run.status() != RunStatus::Running {
        return Err(ApprovalError::NotWaiting {
            step: step_id,
            status,
        });
    }
    let row: ApprovalRow = sqlx::query_as(
        "SELECT w.task_id, w.attempt, w.kind, w.waiting_for, w.decisions, q.created_by
         FROM fulfil.waits w JOIN fulfil.runs r ON r.id = w.run_id
              JOIN fulfil.requests q ON q.id = r.request_id
         WHERE w.run_id = $1 AND w.step_id = $2 FOR UPDATE OF w",
    )
    .bind(run_id.as_uuid())
    .bind(&step_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| RunError::Corrupt(format!("waiting step {step_id} has no wait")))?;
    if WaitKind::parse(&row.kind).map_err(RunError::from)? != WaitKind::Approval {
        return Err(ApprovalError::NotAnApproval { step: step_id });
    }
    let approval = approval_of(&row.waiting_for)?;
    let mut decisions: Vec<ApprovalDecision> = serde_json::from_value(row.decisions)
        .map_err(|e| RunError::Corrupt(format!("decisions of step {step_id}: {e}")))?;
    if !principal.matches(&approval.approvers) {
        return Err(ApprovalError::NotAnApprover {
            principal: principal.id,
            approvers: approval.approvers,
        });
    }
    if !approval.allow_requester && row.created_by.as_deref().map(str::trim) == Some(&principal.id)
    {
        return Err(ApprovalError::RequesterRefused {
            principal: principal.id,
        });
    }
    if decisions.iter().any(|d| d.by == principal.id) {
        return Err(ApprovalError::AlreadyDecided {
            principal: principal.id,
        });
    }
    let taken = ApprovalDecision {
        by: principal.id.clone(),
        decision,
        comment: comment.filter(|c| !c.trim().is_empty()),
        at: Utc::now(),
    };
    decisions.push(taken.clone());
    let stored = serde_json::to_value(&decisions).map_err(|e| RunError::Corrupt(e.to_string()))?;
    sqlx::query("UPDATE fulfil.waits SET decisions = $2 WHERE task_id = $1")
        .bind(row.task_id)
        .bind(&stored)
        .execute(&mut *tx)
        .await?;
    run.record(
        event::APPROVAL_DECIDED,
        Some(&step_id),
        Some(row.attempt),
        serde_json::to_value(&taken).map_err(|e| RunError::Corrupt(e.to_string()))?,
    );
    let approvals = decisions
        .iter()
        .filter(|d| d.decision == Decision::Approve)
        .count() as u32;
    let task_id = TaskId::from(row.task_id);
    match decision {
        Decision::Reject => {
            let message = match &taken.comment {
                Some(comment) => format!("rejected by {}: {comment}", taken.by),
                None => format!("rejected by {}", taken.by),
            };
            fail_wait(&mut run, &step_id, row.attempt, task_id, REJECTED, &message)?;
        }
        Decision::Approve if approvals >= approval.quorum => {
            complete_wait(
                &mut run,
                &step_id,
                row.attempt,
                task_id,
                json!({ "decisions": stored }),
            )?;
        }
        Decision::Approve => {}
    }
    advance(&mut run)?;
    let step_status = run.step(&step_id).map_or(status, |s| s.status);
    let rows = run.commit(tx).await?;
    engine.after_commit(rows);
    Ok(ApprovalOutcome {
        run_id,
        step: step_id,
        decision,
        by: taken.by,
        approvals,
        quorum: approval.quorum,
        step_status,
        decisions,
    })
}

/// The approval settings a waiting step shows, read back.
fn approval_of(waiting_for: &Value) -> Result<Approval, RunError> {
    let mut settings = waiting_for.clone();
    if let Value::Object(map) = &mut settings {
        map.remove("kind");
        map.remove("until");
    }
    serde_json::from_value(settings)
        .map_err(|e| RunError::Corrupt(format!("approval settings of a waiting step: {e}")))
}
