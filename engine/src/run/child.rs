//! Promise steps in the state machine: a step `uses: promise` files a
//! child request and waits for its run (see [`fulfil_core::child`]).
//!
//! The step crosses runs, and every crossing is a timer, so each change is
//! made on the run it belongs to, under that run's lock, in a transaction
//! of its own:
//!
//! * Starting the step marks it `waiting` and arms a `child_file` timer on
//!   its run. Firing it files the child request, in the transaction that
//!   deletes the timer ([`crate::children::file`]): its idempotency key
//!   `parent:<run>:<step>:<attempt>` keeps it to one child per attempt,
//!   however often the engine restarts.
//! * The child's runs carry `request.parent` in their context. When one of
//!   them ends (its configure run, or the delete run a compensation
//!   started), it arms a `child_done` timer on the parent run
//!   ([`notify_parent`]), which reads the child and moves the step:
//!   succeeded with the child's outputs, or failed naming the child.
//! * Compensating the step deletes the child request: `child_delete`
//!   starts the child's delete run (its own teardown workflow), and the
//!   compensation succeeds once the child is `deleted`. A step whose
//!   child never came to be has nothing to undo.
//!
//! Every handler checks that the step is still where the timer expects it
//! (the same attempt, still waiting or compensating): a late or repeated
//! timer does nothing.

use chrono::Utc;
use fulfil_core::child::{CHILD_DELETED, CHILD_FAILED, ChildWith, ParentLink, TOO_DEEP};
use fulfil_core::dag::CompensationStatus;
use fulfil_core::ids::{RequestId, RunId, TaskId};
use fulfil_core::status::{AttemptStatus, RequestStatus, RunKind, TimerKind};
use fulfil_core::wire::TaskKind;
use fulfil_core::{RunStatus, Step, StepStatus};
use serde_json::{Value, json};

use super::advance::{fail_step, not_compiled, render_context, set_compensation, set_step};
use super::compensate::fail_compensation;
use super::event::{self, AttemptEvent, attempt_event};
use super::waiting::{ENGINE_QUEUE, complete_wait, fail_wait, insert_engine_attempt};
use super::{AttemptUpdate, Run, RunError};

/// Error code of a promise step whose `with` does not say what to file.
const INVALID_CHILD: &str = "invalid_child";

/// Starts attempt `attempt` of promise step `step`: renders its `with`,
/// marks it `waiting` and arms the timer that files the child.
pub(super) fn start(run: &mut Run, step: &Step, attempt: i32) -> Result<(), RunError> {
    let promise = run.promise.clone();
    let with = promise
        .with_of(step)
        .ok_or_else(|| not_compiled(&step.id))?;
    let input = match with.render(&render_context(run)) {
        Ok(input) => input,
        Err(e) => return fail_step(run, &step.id, Some(attempt), "render_error", &e.to_string()),
    };
    let child = match ChildWith::from_rendered(input.clone()) {
        Ok(child) => child,
        Err(message) => return fail_step(run, &step.id, Some(attempt), INVALID_CHILD, &message),
    };
    let depth = fulfil_core::child::child_depth(&run.context);
    if depth > fulfil_core::child::MAX_DEPTH {
        let message = format!(
            "this request is nested {} deep; a promise step may not file deeper than {}",
            depth - 1,
            fulfil_core::child::MAX_DEPTH
        );
        return fail_step(run, &step.id, Some(attempt), TOO_DEEP, &message);
    }
    let task_id = insert_engine_attempt(run, step, attempt, TaskKind::Action, &input, None);
    let row = run.set_step_status(&step.id, StepStatus::Waiting)?;
    row.attempt = attempt;
    row.error = None;
    row.input = Some(input);
    run.record(
        event::STEP_WAITING,
        Some(&step.id),
        Some(attempt),
        json!({ "task_id": task_id,
                "waiting_for": { "kind": "promise", "promise": child.promise } }),
    );
    run.add_timer(TimerKind::ChildFile, &step.id, Some(task_id), Utc::now());
    Ok(())
}

/// The link a child filed by attempt `attempt` of `step_id` (task
/// `task_id`) of `run` carries.
pub(crate) fn link(run: &Run, step_id: &str, attempt: i32, task_id: TaskId) -> ParentLink {
    ParentLink {
        request_id: run.request_id,
        run_id: run.run_id,
        step: step_id.to_string(),
        attempt,
        task_id,
        depth: fulfil_core::child::child_depth(&run.context),
    }
}

/// A child request as its parent's timers see it.
#[derive(Debug, Clone)]
pub(crate) struct ChildState {
    pub request_id: RequestId,
    pub run_id: RunId,
    pub promise: String,
    pub status: RequestStatus,
    pub outputs: Option<Value>,
    /// Why its run failed, when it did.
    pub error: Option<String>,
    /// Found under the idempotency key instead of filed now.
    pub replayed: bool,
}

/// The attempt a child timer names, as stored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimerAttempt {
    pub task_id: TaskId,
    pub attempt: i32,
    pub kind: TaskKind,
    pub status: AttemptStatus,
}

/// Whether `attempt` is still the open action attempt of a waiting step.
pub(crate) fn waits_on(run: &Run, step_id: &str, attempt: &TimerAttempt) -> bool {
    attempt.kind == TaskKind::Action
        && attempt.status.is_open()
        && run.status == RunStatus::Running
        && run
            .steps
            .get(step_id)
            .is_some_and(|row| row.status == StepStatus::Waiting && row.attempt == attempt.attempt)
}

/// A `child_file` timer fired and filing came out as `filed`: the step
/// waits for that child (or ends now, if a replayed child already ended),
/// or fails naming why nothing could be filed.
pub(crate) fn filed(
    run: &mut Run,
    step_id: &str,
    attempt: &TimerAttempt,
    filed: Result<ChildState, String>,
) -> Result<(), RunError> {
    if !waits_on(run, step_id, attempt) {
        return Ok(());
    }
    match filed {
        Ok(child) => {
            run.record(
                event::CHILD_FILED,
                Some(step_id),
                Some(attempt.attempt),
                json!({ "request_id": child.request_id, "run_id": child.run_id,
                        "promise": child.promise, "replayed": child.replayed }),
            );
            settle_action(run, step_id, attempt, &child)
        }
        Err(message) => fail_wait(
            run,
            step_id,
            attempt.attempt,
            attempt.task_id,
            fulfil_core::child::CHILD_REFUSED,
            &message,
        ),
    }
}

/// A `child_done` timer fired: the step's child, as it now stands, may end
/// the step's wait or its compensation.
pub(crate) fn child_changed(
    run: &mut Run,
    step_id: &str,
    attempt: &TimerAttempt,
    compensation: Option<&TimerAttempt>,
    child: &ChildState,
) -> Result<(), RunError> {
    if waits_on(run, step_id, attempt) {
        return settle_action(run, step_id, attempt, child);
    }
    if let Some(compensation) = compensation {
        return settle_compensation(run, step_id, compensation, Some(child));
    }
    Ok(())
}

/// Ends the step's wait if its child ended.
fn settle_action(
    run: &mut Run,
    step_id: &str,
    attempt: &TimerAttempt,
    child: &ChildState,
) -> Result<(), RunError> {
    let about = format!(
        "child request {} (Promise {})",
        child.request_id, child.promise
    );
    match child.status {
        // A reconcile run's step stands for a child its configure run
        // filed, whose end is told to that run, not this one.
        RequestStatus::Accepted | RequestStatus::Running
            if child.replayed && !matches!(run.kind, RunKind::Configure | RunKind::Delete) =>
        {
            let message = format!("{about} is still running; reconcile again once it ended");
            fail_wait(
                run,
                step_id,
                attempt.attempt,
                attempt.task_id,
                CHILD_FAILED,
                &message,
            )
        }
        RequestStatus::Accepted | RequestStatus::Running => Ok(()),
        RequestStatus::Succeeded => {
            let outputs = child.outputs.clone().unwrap_or_else(|| json!({}));
            complete_wait(run, step_id, attempt.attempt, attempt.task_id, outputs)
        }
        RequestStatus::Failed => {
            let why = child.error.as_deref().unwrap_or("its run did not succeed");
            let message = format!("{about} failed: {why}");
            fail_wait(
                run,
                step_id,
                attempt.attempt,
                attempt.task_id,
                CHILD_FAILED,
                &message,
            )
        }
        RequestStatus::Deleting | RequestStatus::Deleted | RequestStatus::DeleteFailed => {
            let message = format!("{about} was deleted before its run succeeded");
            fail_wait(
                run,
                step_id,
                attempt.attempt,
                attempt.task_id,
                CHILD_DELETED,
                &message,
            )
        }
    }
}

/// Starts compensation attempt `attempt` of promise step `step`: deleting
/// its child, by a `child_delete` timer.
pub(super) fn start_compensation(run: &mut Run, step: &Step, attempt: i32) -> Result<(), RunError> {
    let input = json!({ "delete_child_of_attempt": run.steps.get(&step.id).map(|s| s.attempt) });
    let task_id = insert_engine_attempt(run, step, attempt, TaskKind::Compensation, &input, None);
    set_compensation(
        run,
        &step.id,
        CompensationStatus::Ready,
        Some(attempt),
        None,
    )?;
    set_compensation(run, &step.id, CompensationStatus::Running, None, None)?;
    run.record(
        attempt_event(TaskKind::Compensation, AttemptEvent::Dispatched),
        Some(&step.id),
        Some(attempt),
        json!({ "task_id": task_id, "handler": step.uses, "queue": ENGINE_QUEUE }),
    );
    run.add_timer(TimerKind::ChildDelete, &step.id, Some(task_id), Utc::now());
    Ok(())
}

/// Whether `compensation` is still the open compensation attempt of a
/// compensating run's step.
pub(crate) fn compensates(run: &Run, step_id: &str, compensation: &TimerAttempt) -> bool {
    compensation.kind == TaskKind::Compensation
        && compensation.status.is_open()
        && run.status == RunStatus::Compensating
        && run.steps.get(step_id).is_some_and(|row| {
            row.compensation == Some(CompensationStatus::Running)
                && row.compensation_attempt == compensation.attempt
        })
}

/// A `child_delete` timer fired and the child's delete was asked for
/// (`Ok(Some)`: the child as it stands after; `Ok(None)`: there was no
/// child) or refused (`Err`).
pub(crate) fn delete_requested(
    run: &mut Run,
    step_id: &str,
    compensation: &TimerAttempt,
    outcome: Result<Option<ChildState>, String>,
) -> Result<(), RunError> {
    if !compensates(run, step_id, compensation) {
        return Ok(());
    }
    match outcome {
        Ok(child) => {
            if let Some(child) = &child {
                run.record(
                    event::CHILD_DELETE_REQUESTED,
                    Some(step_id),
                    Some(compensation.attempt),
                    json!({ "request_id": child.request_id, "promise": child.promise,
                            "status": child.status }),
                );
            }
            settle_compensation(run, step_id, compensation, child.as_ref())
        }
        Err(message) => end_compensation(run, step_id, compensation, Err(&message)),
    }
}

/// Ends the compensation once its child is deleted (or was never filed).
fn settle_compensation(
    run: &mut Run,
    step_id: &str,
    compensation: &TimerAttempt,
    child: Option<&ChildState>,
) -> Result<(), RunError> {
    if !compensates(run, step_id, compensation) {
        return Ok(());
    }
    let Some(child) = child else {
        return end_compensation(
            run,
            step_id,
            compensation,
            Ok(json!({ "deleted": null, "note": "no child request was filed" })),
        );
    };
    match child.status {
        RequestStatus::Deleted => end_compensation(
            run,
            step_id,
            compensation,
            Ok(json!({ "deleted": child.request_id, "promise": child.promise })),
        ),
        RequestStatus::DeleteFailed => {
            let why = child.error.as_deref().unwrap_or("its delete run failed");
            let message = format!(
                "deleting child request {} (Promise {}) failed: {why}",
                child.request_id, child.promise
            );
            end_compensation(run, step_id, compensation, Err(&message))
        }
        _ => Ok(()),
    }
}

fn end_compensation(
    run: &mut Run,
    step_id: &str,
    compensation: &TimerAttempt,
    outcome: Result<Value, &str>,
) -> Result<(), RunError> {
    let now = Utc::now();
    match outcome {
        Ok(outputs) => {
            run.update_attempt(
                compensation.task_id,
                AttemptUpdate {
                    status: Some(AttemptStatus::Succeeded),
                    finished_at: Some(now),
                    ..AttemptUpdate::default()
                },
            );
            set_compensation(run, step_id, CompensationStatus::Succeeded, None, None)?;
            if run.steps.get(step_id).map(|s| s.status) == Some(StepStatus::Succeeded) {
                set_step(run, step_id, StepStatus::Compensated, None, None, None)?;
            }
            if let Some(row) = run.steps.get_mut(step_id) {
                row.compensation_outputs = Some(outputs);
            }
            run.record(
                attempt_event(TaskKind::Compensation, AttemptEvent::Succeeded),
                Some(step_id),
                Some(compensation.attempt),
                json!({ "task_id": compensation.task_id, "worker": ENGINE_QUEUE }),
            );
            Ok(())
        }
        Err(message) => {
            run.update_attempt(
                compensation.task_id,
                AttemptUpdate {
                    status: Some(AttemptStatus::Failed),
                    finished_at: Some(now),
                    error: Some(json!({ "code": "child_delete_failed", "message": message,
                                        "retryable": false })),
                    ..AttemptUpdate::default()
                },
            );
            fail_compensation(
                run,
                step_id,
                compensation.attempt,
                "child_delete_failed",
                message,
            )
        }
    }
}

/// Tells the parent run, if this run's request is a child, that this run
/// ended: a configure run's end may end the parent's step, a delete run's
/// may end its compensation. Called as the run settles its request.
pub(super) fn notify_parent(run: &mut Run) {
    if !matches!(run.kind, RunKind::Configure | RunKind::Delete) {
        return;
    }
    if let Some(parent) = ParentLink::of_context(&run.context) {
        run.add_timer_for(
            parent.run_id,
            TimerKind::ChildDone,
            &parent.step,
            parent.task_id,
        );
    }
}
