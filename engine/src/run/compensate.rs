//! Compensation (the saga): once a run that cannot succeed has nothing in
//! flight, every succeeded step that declares `compensate` is undone, in
//! reverse dependency order ([`fulfil_core::Graph::plan_compensation`]).
//! The run ends `compensated` (or `cancelled`, when an operator stopped it)
//! once every undo succeeded, and `failed` when one failed for good.

use std::collections::{BTreeSet, HashMap};

use fulfil_core::dag::{CompensationOutcome, CompensationStatus};
use fulfil_core::wire::TaskKind;
use fulfil_core::{Graph, RunStatus, Step, StepStatus};
use serde_json::json;

use super::advance::{
    AttemptSpec, Next, TASK_TOO_LARGE, dispatch, failure_reason, finish, not_compiled,
    render_context, set_compensation, too_large,
};
use super::event::{AttemptEvent, attempt_event};
use super::{Run, RunError};

/// Succeeded steps that declare a compensation: what a saga must undo.
pub(super) fn to_undo(run: &Run) -> BTreeSet<String> {
    run.promise
        .spec
        .workflow
        .steps
        .iter()
        .filter(|s| s.compensate.is_some() || fulfil_core::child::is_promise_step(&s.uses))
        .filter(|s| {
            // A promise step that started may have filed a child, which
            // is deleted whatever the step ended as (a failed child still
            // holds what its teardown removes); one that filed none has
            // nothing to undo, and its compensation says so.
            if fulfil_core::child::is_promise_step(&s.uses) {
                return run.steps.get(&s.id).is_some_and(|row| {
                    let ended = matches!(
                        row.status,
                        StepStatus::Succeeded | StepStatus::Failed | StepStatus::Cancelled
                    );
                    row.compensation.is_some() || (row.attempt > 0 && ended)
                });
            }
            // A for_each step is undone instance by instance, whatever it
            // ended as: an instance that failed leaves its siblings to undo.
            if s.for_each.is_some() {
                return super::for_each::has_instances_to_undo(run, &s.id);
            }
            run.steps.get(&s.id).is_some_and(|row| {
                row.status == StepStatus::Succeeded
                    || (row.status == StepStatus::Compensated && row.compensation.is_some())
            })
        })
        .map(|s| s.id.clone())
        .collect()
}

/// One round of saga planning: finish the run once every undo is done
/// (or one failed for good), or start the undos that may run now.
pub(super) fn plan_compensation(run: &mut Run, graph: &Graph) -> Result<Next, RunError> {
    // Instance compensations move first: they may finish their step's.
    if run.promise.has_for_each() {
        super::for_each::settle_compensation(run)?;
    }
    if run.handoff.is_some() {
        return stop_for_delete(run);
    }
    let promise = run.promise.clone();
    let undo = to_undo(run);
    let compensations: HashMap<String, CompensationStatus> = run
        .steps
        .iter()
        .filter_map(|(id, s)| s.compensation.map(|c| (id.clone(), c)))
        .collect();
    let plan = graph.plan_compensation(&undo, &compensations);
    match plan.outcome {
        Some(CompensationOutcome::Compensated) => {
            let status = if run.cancel_requested {
                RunStatus::Cancelled
            } else {
                RunStatus::Compensated
            };
            // A failed instance is named by its step's error.
            let failed: Vec<String> = run
                .steps
                .values()
                .filter(|s| s.status == StepStatus::Failed)
                .filter(|s| !super::for_each::is_instance(run, &s.step_id))
                .map(|s| s.step_id.clone())
                .collect();
            let reason = format!(
                "{}; compensated {}",
                failure_reason(run, &failed),
                undo.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            return finish(run, status, Some(reason)).map(|()| Next::Done);
        }
        Some(CompensationOutcome::Failed { steps }) => {
            let reasons: Vec<String> = steps
                .iter()
                .map(|id| {
                    let error = run
                        .steps
                        .get(id)
                        .and_then(|s| s.compensation_error.clone())
                        .unwrap_or_default();
                    format!("compensation of step {id} failed: {error}")
                })
                .collect();
            return finish(run, RunStatus::Failed, Some(reasons.join("; "))).map(|()| Next::Done);
        }
        None => {}
    }
    if plan.start.is_empty() {
        return Ok(Next::Done);
    }
    for step_id in plan.start {
        let Some(step) = promise.step(&step_id) else {
            return Err(RunError::Corrupt(format!(
                "step {step_id} is not in the Promise"
            )));
        };
        let attempt = run
            .steps
            .get(&step_id)
            .map_or(0, |s| s.compensation_attempt)
            + 1;
        if step.for_each.is_some() {
            super::for_each::start_compensation(run, step)?;
            continue;
        }
        if fulfil_core::child::is_promise_step(&step.uses) {
            super::child::start_compensation(run, step, attempt)?;
            continue;
        }
        dispatch_compensation(run, step, attempt)?;
    }
    Ok(Next::Again)
}

/// A saga handed off to its request's delete starts no more undos: once
/// those in flight have finished, the run ends `cancelled`.
fn stop_for_delete(run: &mut Run) -> Result<Next, RunError> {
    let in_flight = run
        .steps
        .values()
        .any(|s| s.compensation.is_some_and(CompensationStatus::is_in_flight));
    if in_flight {
        return Ok(Next::Done);
    }
    let reason = run.stop_reason.clone();
    finish(run, RunStatus::Cancelled, reason).map(|()| Next::Done)
}

/// Renders the step's compensation input and queues attempt `attempt` of it.
pub fn dispatch_compensation(run: &mut Run, step: &Step, attempt: i32) -> Result<(), RunError> {
    let Some(compensation) = &step.compensate else {
        return Err(RunError::Corrupt(format!(
            "step {} has no compensation",
            step.id
        )));
    };
    let promise = run.promise.clone();
    let with = promise
        .compensation_with_of(step)
        .ok_or_else(|| not_compiled(&step.id))?;
    let (input, secrets) = match with.render_with_secrets(&render_context(run)) {
        Ok(rendered) => rendered,
        Err(e) => {
            return fail_compensation(run, &step.id, attempt, "render_error", &e.to_string());
        }
    };
    if let Some(message) = too_large(&input) {
        return fail_compensation(run, &step.id, attempt, TASK_TOO_LARGE, &message);
    }
    let spec = AttemptSpec::compensation(&promise, step, compensation);
    set_compensation(
        run,
        &step.id,
        CompensationStatus::Ready,
        Some(attempt),
        None,
    )?;
    dispatch(run, &step.id, attempt, input, secrets, spec)
}

/// Fails a compensation for good before it is dispatched: its input could
/// not be rendered or could never be sent. The saga then ends `failed`
/// naming it, as for any compensation that failed.
pub(super) fn fail_compensation(
    run: &mut Run,
    step_id: &str,
    attempt: i32,
    code: &str,
    message: &str,
) -> Result<(), RunError> {
    set_compensation(
        run,
        step_id,
        CompensationStatus::Failed,
        Some(attempt),
        Some(message),
    )?;
    run.record(
        attempt_event(TaskKind::Compensation, AttemptEvent::Failed),
        Some(step_id),
        Some(attempt),
        json!({ "code": code, "message": message, "final": true }),
    );
    Ok(())
}
