//! Engine-run steps in the state machine: starting a wait, and ending it
//! when its event, its approvals or its time come, or its timeout passes.
//!
//! A waiting step has an attempt row like any step (handler `wait.event`,
//! `approval` or `sleep`, queue `engine`), but no task is published: the
//! step's attempt task id names its row in `fulfil.waits` instead, where
//! [`crate::waits`] files it so events and approvers can find it. Every end
//! of a wait arrives here on the run's row lock, as a timer (`wait_matched`,
//! `wait_timeout`, `sleep_done`) or an approval decision, and is applied
//! only if the step is still waiting on that same attempt: so an event and
//! a timeout racing for one step record exactly one outcome, and a step
//! completes once however many events match it.

use chrono::Utc;
use fulfil_core::ids::TaskId;
use fulfil_core::status::{AttemptStatus, TaskKind, TimerKind, WaitKind};
use fulfil_core::wait::{APPROVAL_EXPIRED, EngineStep, WAIT_TIMEOUT, WaitSpec};
use fulfil_core::{RunStatus, Step, StepStatus};
use serde_json::{Value, json};

use super::advance::{fail_step, render_context, set_step};
use super::event::{self, AttemptEvent, attempt_event};
use super::writes::{NewAttempt, NewWait};
use super::{AttemptUpdate, Run, RunError};
use crate::waits::{EventFiling, WaitState};

/// Queue name shown on the attempts of engine-run steps.
pub const ENGINE_QUEUE: &str = "engine";

/// Error code of an engine step whose `with` cannot start it.
const INVALID_WAIT: &str = "invalid_wait";

/// Starts attempt `attempt` of engine-run step `step`: renders its `with`,
/// marks it `waiting`, arms its timer and files its wait.
pub(super) fn start_wait(
    run: &mut Run,
    step: &Step,
    engine_step: &EngineStep,
    attempt: i32,
) -> Result<(), RunError> {
    let promise = run.promise.clone();
    let now = Utc::now();
    let context = render_context(run);
    let with = promise
        .with_of(step)
        .ok_or_else(|| super::advance::not_compiled(&step.id))?;
    let input = match with.render(&context) {
        Ok(input) => input,
        Err(e) => return fail_step(run, &step.id, Some(attempt), "render_error", &e.to_string()),
    };
    let spec = match WaitSpec::from_rendered(engine_step.kind, input.clone(), now) {
        Ok(spec) => spec,
        Err(e) => return fail_step(run, &step.id, Some(attempt), INVALID_WAIT, &e.to_string()),
    };
    let until = match &spec {
        WaitSpec::Sleep { until } => Some(*until),
        WaitSpec::Event { .. } | WaitSpec::Approval(_) => promise
            .wait_timeout_of(step)
            .map(|timeout| fulfil_core::time::deadline_after(now, timeout)),
    };
    let event = match &spec {
        WaitSpec::Event { spec, lookback } => {
            match EventFiling::new(spec, *lookback, engine_step, &context) {
                Ok(filing) => Some(filing),
                Err(message) => {
                    return fail_step(run, &step.id, Some(attempt), "match_error", &message);
                }
            }
        }
        WaitSpec::Approval(_) | WaitSpec::Sleep { .. } => None,
    };
    let mut waiting_for = spec.waiting_for();
    if let Value::Object(map) = &mut waiting_for {
        if let Some(until) = until {
            map.insert("until".into(), json!(until));
        }
        // `match` is compiled with the Promise, not rendered with `with`.
        if let Some(condition) = &engine_step.condition {
            map.insert("match".into(), json!(condition.expression().source()));
        }
    }

    let task_id = insert_engine_attempt(run, step, attempt, TaskKind::Action, &input, until);
    let row = run.set_step_status(&step.id, StepStatus::Waiting)?;
    row.attempt = attempt;
    row.error = None;
    row.input = Some(input);
    if let Some(until) = until {
        let kind = match spec.kind() {
            WaitKind::Sleep => TimerKind::SleepDone,
            WaitKind::Event | WaitKind::Approval => TimerKind::WaitTimeout,
        };
        run.add_timer(kind, &step.id, Some(task_id), until);
    }
    run.record(
        event::STEP_WAITING,
        Some(&step.id),
        Some(attempt),
        json!({ "task_id": task_id, "waiting_for": waiting_for }),
    );
    run.writes.new_waits.push(NewWait {
        task_id,
        step_id: step.id.clone(),
        attempt,
        kind: spec.kind(),
        until,
        waiting_for,
        event,
    });
    Ok(())
}

/// Inserts attempt `attempt` of `kind` of an engine-run `step`, on the
/// engine's queue, open until `until` (none: for as long as it takes);
/// its task id.
pub(super) fn insert_engine_attempt(
    run: &mut Run,
    step: &Step,
    attempt: i32,
    kind: TaskKind,
    input: &Value,
    until: Option<chrono::DateTime<Utc>>,
) -> TaskId {
    let task_id = TaskId::generate();
    run.insert_attempt(NewAttempt {
        task_id,
        step_id: step.id.clone(),
        attempt,
        kind,
        handler: step.uses.clone(),
        queue: ENGINE_QUEUE.into(),
        input: input.clone(),
        deadline: until.unwrap_or_else(|| {
            fulfil_core::time::deadline_after(Utc::now(), fulfil_core::time::MAX_DURATION)
        }),
    });
    task_id
}

/// Applies a wait's timer (`wait_matched`, `wait_timeout`, `sleep_done`)
/// to the locked run, given the wait's row as it stands under its lock
/// (`None`: the wait is gone, the timer is stale).
pub(crate) fn fire_wait_timer(
    run: &mut Run,
    kind: TimerKind,
    step_id: &str,
    task_id: TaskId,
    wait: Option<&WaitState>,
) -> Result<(), RunError> {
    let Some(wait) = wait else {
        return Ok(());
    };
    let current = run
        .step(step_id)
        .is_some_and(|row| row.status == StepStatus::Waiting && row.attempt == wait.attempt);
    if !current || run.status() != RunStatus::Running {
        return Ok(());
    }
    let wait_kind = WaitKind::parse(&wait.kind)?;
    // An event that matched first wins over a timeout that fires after it.
    if let Some(event) = &wait.matched_event
        && matches!(kind, TimerKind::WaitMatched | TimerKind::WaitTimeout)
    {
        run.record(
            event::WAIT_MATCHED,
            Some(step_id),
            Some(wait.attempt),
            json!({ "ledger_id": wait.matched_ledger_id, "event_id": event.get("id"),
                    "source": event.get("source"), "type": event.get("type") }),
        );
        return complete_wait(run, step_id, wait.attempt, task_id, event.clone());
    }
    match (kind, wait_kind) {
        (TimerKind::SleepDone, WaitKind::Sleep) => {
            let outputs = json!({ "slept_until": wait.until });
            complete_wait(run, step_id, wait.attempt, task_id, outputs)
        }
        (TimerKind::WaitTimeout, WaitKind::Event) => fail_wait(
            run,
            step_id,
            wait.attempt,
            task_id,
            WAIT_TIMEOUT,
            "no matching event arrived before the step's timeout",
        ),
        (TimerKind::WaitTimeout, WaitKind::Approval) => fail_wait(
            run,
            step_id,
            wait.attempt,
            task_id,
            APPROVAL_EXPIRED,
            &format!(
                "the approval expired before its quorum was reached ({} decision(s) recorded)",
                wait.decisions.as_array().map_or(0, Vec::len)
            ),
        ),
        // A matched timer without a match, or a timer of another kind's
        // wait: nothing to do.
        _ => Ok(()),
    }
}

/// The wait of `step_id`'s attempt `attempt` ended well: the step
/// succeeds with `outputs`.
pub(crate) fn complete_wait(
    run: &mut Run,
    step_id: &str,
    attempt: i32,
    task_id: TaskId,
    outputs: Value,
) -> Result<(), RunError> {
    let now = Utc::now();
    run.update_attempt(
        task_id,
        AttemptUpdate {
            status: Some(AttemptStatus::Succeeded),
            finished_at: Some(now),
            ..AttemptUpdate::default()
        },
    );
    run.clear_attempt_timers(task_id, None);
    set_step(
        run,
        step_id,
        StepStatus::Succeeded,
        Some(attempt),
        Some(outputs),
        None,
    )?;
    run.writes.ended_waits.push(step_id.to_string());
    run.record(
        attempt_event(TaskKind::Action, AttemptEvent::Succeeded),
        Some(step_id),
        Some(attempt),
        json!({ "task_id": task_id, "worker": ENGINE_QUEUE }),
    );
    Ok(())
}

/// The wait of `step_id`'s attempt `attempt` ended badly: the step fails
/// for good with `code` (no retry: a rejection or an expiry is final), and
/// the run then compensates as after any permanent failure.
pub(crate) fn fail_wait(
    run: &mut Run,
    step_id: &str,
    attempt: i32,
    task_id: TaskId,
    code: &str,
    message: &str,
) -> Result<(), RunError> {
    run.update_attempt(
        task_id,
        AttemptUpdate {
            status: Some(AttemptStatus::Failed),
            finished_at: Some(Utc::now()),
            error: Some(json!({ "code": code, "message": message, "retryable": false })),
            ..AttemptUpdate::default()
        },
    );
    run.clear_attempt_timers(task_id, None);
    run.writes.ended_waits.push(step_id.to_string());
    fail_step(run, step_id, Some(attempt), code, message)
}

/// The step's wait is over because the step was cancelled.
pub(super) fn end_wait(run: &mut Run, step_id: &str) {
    run.writes.ended_waits.push(step_id.to_string());
}

/// Cancels every waiting step: a wait holds no work that could finish, so
/// a run that stops (an operator's cancel, its request's delete) does not
/// wait for an event or an approval that may never come.
pub(super) fn cancel_waiting(run: &mut Run, why: &str) -> Result<(), RunError> {
    let waiting: Vec<(String, i32)> = run
        .steps
        .values()
        .filter(|s| s.status == StepStatus::Waiting)
        .map(|s| (s.step_id.clone(), s.attempt))
        .collect();
    for (step_id, attempt) in waiting {
        run.cancel_attempt(super::writes::AttemptCancel {
            step_id: step_id.clone(),
            kind: TaskKind::Action,
            attempt,
            reason: why.to_string(),
        });
        set_step(run, &step_id, StepStatus::Cancelled, None, None, Some(why))?;
        end_wait(run, &step_id);
        run.record(
            event::STEP_CANCELLED,
            Some(&step_id),
            Some(attempt),
            json!({ "kind": TaskKind::Action.as_str(), "reason": why }),
        );
    }
    Ok(())
}
