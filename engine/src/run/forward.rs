//! Forward planning: start the steps whose needs are met, skip those whose
//! `if` is false, and once a step has failed for good (or the run is
//! stopping) start nothing new; when nothing is in flight any more, end the
//! run, or switch it to compensation if a succeeded step declares an undo.

use std::collections::HashMap;

use fulfil_core::dag::Outcome;
use fulfil_core::{Graph, RunStatus, Step, StepStatus};
use serde_json::json;

use super::advance::{
    AttemptSpec, Next, TASK_TOO_LARGE, dispatch, fail_step, failure_reason, finish, not_compiled,
    render_context, set_step, too_large,
};
use super::compensate::to_undo;
use super::event;
use super::{Run, RunError};

/// One round of forward planning: finish the run, switch it to
/// compensation, or start the steps whose needs are met.
pub(super) fn plan_forward(run: &mut Run, graph: &Graph) -> Result<Next, RunError> {
    let promise = run.promise.clone();
    // Instances move first: they may finish their step, which this round
    // then plans from.
    let failing = promise.has_for_each() && super::for_each::settle(run)?;
    let statuses: HashMap<String, StepStatus> = run
        .steps
        .iter()
        .map(|(id, s)| (id.clone(), s.status))
        .collect();
    let plan = graph.plan(&statuses);
    let outcome = match plan.outcome {
        // The last steps finished after an operator's cancel: the
        // run still stops and undoes what succeeded (`cancel_run`).
        Some(Outcome::Succeeded) if run.cancel_requested => Some(Outcome::Failed {
            failed_steps: Vec::new(),
        }),
        other => other,
    };
    match outcome {
        Some(Outcome::Succeeded) => {
            return finish(run, RunStatus::Succeeded, None).map(|()| Next::Done);
        }
        Some(Outcome::Failed { failed_steps }) => {
            cancel_pending(run)?;
            let reason = failure_reason(run, &failed_steps);
            // A run handed off to its request's delete undoes nothing: the
            // teardown owns what it built.
            if run.handoff.is_some() {
                return finish(run, RunStatus::Cancelled, Some(reason)).map(|()| Next::Done);
            }
            // A reconcile or upgrade run undoes nothing either: what it
            // would undo is the request's live resources, which a failed
            // drift correction or upgrade must leave as they are
            // (`crate::reconcile`, `crate::rollout`).
            if run.kind.reruns_configure() {
                let status = if run.cancel_requested {
                    RunStatus::Cancelled
                } else {
                    RunStatus::Failed
                };
                return finish(run, status, Some(reason)).map(|()| Next::Done);
            }
            if to_undo(run).is_empty() {
                let status = if run.cancel_requested {
                    RunStatus::Cancelled
                } else {
                    RunStatus::Failed
                };
                return finish(run, status, Some(reason)).map(|()| Next::Done);
            }
            run.set_status(RunStatus::Compensating)?;
            run.record(
                event::RUN_COMPENSATING,
                None,
                None,
                json!({ "reason": reason, "undo": to_undo(run) }),
            );
            return Ok(Next::Again);
        }
        None => {}
    }
    // A for_each step about to fail (an instance failed, others are still
    // in flight) stops new work as a failed step does.
    if plan.start.is_empty() || failing {
        return Ok(Next::Done);
    }
    for step_id in plan.start {
        let Some(step) = promise.step(&step_id) else {
            return Err(RunError::Corrupt(format!(
                "step {step_id} is not in the Promise"
            )));
        };
        if let Some(condition) = &step.condition {
            let compiled = promise
                .condition_of(step)
                .ok_or_else(|| not_compiled(&step.id))?;
            match compiled.evaluate(&render_context(run)) {
                Ok(true) => {}
                Ok(false) => {
                    set_step(
                        run,
                        &step_id,
                        StepStatus::Skipped,
                        None,
                        Some(json!({})),
                        None,
                    )?;
                    run.record(
                        event::STEP_SKIPPED,
                        Some(&step_id),
                        None,
                        json!({ "condition": condition }),
                    );
                    continue;
                }
                Err(e) => {
                    fail_step(run, &step_id, None, "condition_error", &e.to_string())?;
                    continue;
                }
            }
        }
        if step.for_each.is_some() {
            super::for_each::start(run, step)?;
            continue;
        }
        let attempt = run.steps.get(&step_id).map_or(0, |s| s.attempt) + 1;
        dispatch_action(run, step, attempt)?;
    }
    Ok(Next::Again)
}

/// Steps that never started will not: say so instead of leaving them pending.
fn cancel_pending(run: &mut Run) -> Result<(), RunError> {
    let pending: Vec<String> = run
        .steps
        .values()
        .filter(|s| s.status == StepStatus::Pending)
        .map(|s| s.step_id.clone())
        .collect();
    for step_id in pending {
        set_step(
            run,
            &step_id,
            StepStatus::Cancelled,
            None,
            None,
            Some("the run stopped before this step started"),
        )?;
    }
    Ok(())
}

/// Renders the step's input and queues attempt `attempt` of its action.
pub fn dispatch_action(run: &mut Run, step: &Step, attempt: i32) -> Result<(), RunError> {
    let promise = run.promise.clone();
    if fulfil_core::child::is_promise_step(&step.uses) {
        return super::child::start(run, step, attempt);
    }
    if let Some(engine_step) = promise.engine_step_of(step) {
        return super::waiting::start_wait(run, step, engine_step, attempt);
    }
    let with = promise
        .with_of(step)
        .ok_or_else(|| not_compiled(&step.id))?;
    let (input, secrets) = match with.render_with_secrets(&render_context(run)) {
        Ok(rendered) => rendered,
        Err(e) => {
            return fail_step(run, &step.id, Some(attempt), "render_error", &e.to_string());
        }
    };
    if let Some(message) = too_large(&input) {
        return fail_step(run, &step.id, Some(attempt), TASK_TOO_LARGE, &message);
    }
    let spec = AttemptSpec::action(&promise, step);
    let row = run.set_step_status(&step.id, StepStatus::Ready)?;
    row.attempt = attempt;
    row.error = None;
    row.input = Some(input.clone());
    dispatch(run, &step.id, attempt, input, secrets, spec)
}
