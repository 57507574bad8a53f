//! Operator repair: cancel and retry, each recorded in history with who did it.

use std::collections::BTreeSet;

use fulfil_core::dag::CompensationStatus;
use fulfil_core::for_each::{instance_id, parse_instance};
use fulfil_core::ids::RunId;
use fulfil_core::wire::TaskKind;
use fulfil_core::{Graph, RunStatus, StepStatus};
use serde::Serialize;
use serde_json::json;

use super::advance::{advance, stop_in_flight};
use super::event;
use super::{Run, RunEnding, RunError, lock_run};
use crate::Engine;
use fulfil_core::status::{RequestStatus, RunKind, TimerKind};
use sqlx::{Postgres, Transaction};

/// Why an operator action was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// There is no such run.
    #[error("no run {0}")]
    NotFound(RunId),
    /// The run is in a status the action does not apply to.
    #[error("{0}")]
    Conflict(String),
    /// `--step` names a step the run does not have.
    #[error("run has no step {step:?}; its steps: {known}")]
    UnknownStep { step: String, known: String },
    /// The change failed and rolled back.
    #[error(transparent)]
    Run(#[from] RunError),
}

impl From<sqlx::Error> for OperatorError {
    fn from(e: sqlx::Error) -> Self {
        Self::Run(RunError::Db(e))
    }
}

async fn lock(
    engine: &Engine,
    run_id: RunId,
    actor: &str,
) -> Result<(Transaction<'static, Postgres>, Run), OperatorError> {
    let mut tx = engine.pool().begin().await?;
    let run = lock_run(engine, &mut tx, run_id, actor.to_string())
        .await?
        .ok_or(OperatorError::NotFound(run_id))?;
    Ok((tx, run))
}

/// Cancels a run: nothing new starts; with `compensate`, in-flight steps
/// finish and every succeeded step is compensated before the run ends
/// `cancelled`; without, in-flight attempts are abandoned (their results
/// ignored) and the run ends `cancelled` at once. Returns the run's status.
pub async fn cancel_run(
    engine: &Engine,
    run_id: RunId,
    actor: &str,
    compensate: bool,
    reason: Option<&str>,
) -> Result<RunStatus, OperatorError> {
    let (tx, mut run) = lock(engine, run_id, actor).await?;
    cancel_locked(&mut run, actor, compensate, reason)?;
    let status = run.status;
    let rows = run.commit(tx).await?;
    engine.after_commit(rows);
    Ok(status)
}

/// [`cancel_run`]'s decision on the locked run, in memory; the caller
/// stores it. On an error nothing must be stored.
pub(super) fn cancel_locked(
    run: &mut Run,
    actor: &str,
    compensate: bool,
    reason: Option<&str>,
) -> Result<(), OperatorError> {
    let run_id = run.run_id;
    if run.status.is_terminal() {
        return Err(OperatorError::Conflict(format!(
            "run {run_id} is already {}; nothing to cancel",
            run.status.as_str()
        )));
    }
    if run.cancel_requested && compensate {
        return Err(OperatorError::Conflict(format!(
            "run {run_id} is already being cancelled; use --no-compensate to stop its compensation"
        )));
    }
    let why = match reason {
        Some(r) if !r.trim().is_empty() => format!("cancelled by {actor}: {r}"),
        _ => format!("cancelled by {actor}"),
    };
    run.request_cancel(why.clone());
    run.record(
        event::RUN_CANCEL_REQUESTED,
        None,
        None,
        json!({ "compensate": compensate, "reason": reason }),
    );
    let pending: Vec<String> = run
        .steps
        .values()
        .filter(|s| s.status == StepStatus::Pending || s.status == StepStatus::Retrying)
        .map(|s| s.step_id.clone())
        .collect();
    for step_id in pending {
        super::advance::set_step(run, &step_id, StepStatus::Cancelled, None, None, Some(&why))?;
    }
    super::waiting::cancel_waiting(run, &why)?;
    if !compensate {
        stop_in_flight(run, TaskKind::Action, &why)?;
        stop_in_flight(run, TaskKind::Compensation, &why)?;
        // Nothing is left to wait for: without compensation the run ends now.
        let undone: Vec<String> = run
            .steps
            .values()
            .filter(|s| s.compensation == Some(CompensationStatus::Pending))
            .map(|s| s.step_id.clone())
            .collect();
        for step_id in undone {
            super::advance::set_compensation(
                run,
                &step_id,
                CompensationStatus::Cancelled,
                None,
                Some(&why),
            )?;
        }
        // The one way a run ends, so `run.cancelled` has one shape
        // whichever way the run got there.
        super::advance::finish(run, RunStatus::Cancelled, Some(why))?;
    } else {
        advance(run)?;
    }
    Ok(())
}

/// The ids of the instances a `for_each` step has in `run`, in index
/// order; none before it started.
fn instance_ids(run: &Run, step_id: &str) -> Vec<String> {
    let count = match run.steps.get(step_id).and_then(|row| row.input.as_ref()) {
        Some(serde_json::Value::Array(items)) => items.len(),
        _ => 0,
    };
    (0..count)
        .map(|index| instance_id(step_id, index))
        .filter(|id| run.steps.contains_key(id))
        .collect()
}

/// What a retry re-runs and what it keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryPlan {
    /// Steps reset to pending, in workflow order (a `for_each` step's
    /// instances after it, in index order).
    pub rerun: Vec<String>,
    /// Steps whose outputs are kept.
    pub kept: Vec<String>,
    /// False for a dry run.
    pub applied: bool,
}

/// Re-runs a finished run that did not succeed: every step that did not
/// succeed (failed, cancelled, compensated) and every step downstream of one,
/// plus `step` and its dependents when given. Succeeded steps outside that
/// set keep their outputs. With `dry_run` nothing changes.
pub async fn retry_run(
    engine: &Engine,
    run_id: RunId,
    actor: &str,
    step: Option<&str>,
    dry_run: bool,
) -> Result<RetryPlan, OperatorError> {
    let (mut tx, mut run) = lock(engine, run_id, actor).await?;
    if run.kind != RunKind::Delete {
        // A delete locks the configure run before the request, so the
        // request's status read under this run's lock stays as read.
        let status: String = sqlx::query_scalar("SELECT status FROM fulfil.requests WHERE id = $1")
            .bind(run.request_id.as_uuid())
            .fetch_one(&mut *tx)
            .await?;
        let status = RequestStatus::parse(&status).map_err(RunError::from)?;
        if matches!(
            status,
            RequestStatus::Deleting | RequestStatus::Deleted | RequestStatus::DeleteFailed
        ) {
            return Err(OperatorError::Conflict(format!(
                "run {run_id}'s request is {status}; a {} run of a deleted request is not retried",
                run.kind
            )));
        }
    }
    let plan = retry_locked(&mut run, step, dry_run)?;
    if plan.applied {
        let rows = run.commit(tx).await?;
        engine.after_commit(rows);
    }
    Ok(plan)
}

/// [`retry_run`]'s decision on the locked run, in memory; the caller stores
/// it when the plan is `applied` (otherwise nothing changed).
pub(super) fn retry_locked(
    run: &mut Run,
    step: Option<&str>,
    dry_run: bool,
) -> Result<RetryPlan, OperatorError> {
    let run_id = run.run_id;
    if run.handoff.is_some() {
        return Err(OperatorError::Conflict(format!(
            "run {run_id} was stopped because its request is being deleted; retry the delete run instead"
        )));
    }
    if !run.status.can_become(RunStatus::Running) {
        return Err(OperatorError::Conflict(format!(
            "run {run_id} is {}; only failed, compensated or cancelled runs can be retried",
            run.status.as_str()
        )));
    }
    let promise = run.promise.clone();
    let graph = Graph::from_workflow(&promise.spec.workflow);
    let mut reset: BTreeSet<String> = BTreeSet::new();
    for row in run.steps.values() {
        let undone = row.compensation.is_some();
        if !row.status.satisfies_needs() || undone {
            reset.insert(row.step_id.clone());
        }
    }
    if let Some(step) = step {
        if !run.steps.contains_key(step) {
            let known: Vec<&str> = promise
                .spec
                .workflow
                .steps
                .iter()
                .map(|s| s.id.as_str())
                .collect();
            return Err(OperatorError::UnknownStep {
                step: step.to_string(),
                known: known.join(", "),
            });
        }
        reset.insert(step.to_string());
    }
    // An instance of a for_each step re-runs within its step.
    let steps_of_instances: Vec<String> = reset
        .iter()
        .filter_map(|id| parse_instance(id).map(|(step, _)| step.to_string()))
        .collect();
    reset.extend(steps_of_instances);
    // Steps re-run whole: downstream of a re-run step, or named.
    let mut whole: BTreeSet<String> = step.map(str::to_string).into_iter().collect();
    for id in reset.clone() {
        let downstream = graph.descendants(&id);
        whole.extend(downstream.iter().cloned());
        reset.extend(downstream);
    }
    // A for_each step re-run whole re-runs every instance (what they read
    // may change); one re-run because some instances did not succeed
    // re-runs just those, keeping the others' outputs.
    let mut order: Vec<String> = Vec::with_capacity(run.steps.len());
    for s in &promise.spec.workflow.steps {
        order.push(s.id.clone());
        if s.for_each.is_some() {
            let instances = instance_ids(run, &s.id);
            if whole.contains(&s.id) {
                reset.extend(instances.iter().cloned());
            }
            order.extend(instances);
        }
    }
    let plan = RetryPlan {
        rerun: order
            .iter()
            .filter(|id| reset.contains(*id))
            .cloned()
            .collect(),
        kept: order
            .iter()
            .filter(|id| !reset.contains(*id))
            .cloned()
            .collect(),
        applied: !dry_run,
    };
    if dry_run || plan.rerun.is_empty() {
        return Ok(RetryPlan {
            applied: false,
            ..plan
        });
    }
    for id in &plan.rerun {
        if run
            .steps
            .get(id)
            .is_some_and(|row| row.status != StepStatus::Pending)
        {
            run.set_step_status(id, StepStatus::Pending)?;
        }
        // A for_each step keeps the list it recorded: its instances re-run
        // over the same items.
        let keeps_list = promise.step(id).is_some_and(|s| s.for_each.is_some());
        if let Some(row) = run.steps.get_mut(id) {
            row.outputs = None;
            row.error = None;
            if !keeps_list {
                row.input = None;
            }
            row.compensation = None;
            row.compensation_outputs = None;
            row.compensation_error = None;
        }
    }
    run.set_status(RunStatus::Running)?;
    run.clear_stop();
    run.clear_run_timers();
    run.set_ending(RunEnding {
        finished: false,
        outputs: None,
        error: None,
    });
    run.set_request_status(super::deleting::reopened_request(run));
    if let Some(limit) = promise.run_timeout() {
        let fire_at = fulfil_core::time::deadline_after(chrono::Utc::now(), limit);
        run.add_timer(TimerKind::RunTimeout, "", None, fire_at);
    }
    run.record(
        event::RUN_RETRIED,
        None,
        None,
        json!({ "rerun": plan.rerun, "kept": plan.kept, "step": step }),
    );
    advance(run)?;
    Ok(plan)
}
