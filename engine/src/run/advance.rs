//! Planning and dispatching: after any change to a run, start the steps whose
//! needs are met, skip those whose `if` is false, switch to compensation
//! when a step failed for good, and finish the run when nothing is left.
//!
//! Forward: once a step has failed (or the run is stopping), nothing new
//! starts; in-flight steps finish or time out. Then, if any succeeded step
//! declares `compensate`, the run becomes `compensating` and the saga planner
//! ([`fulfil_core::Graph::plan_compensation`]) undoes them in reverse
//! dependency order. The run ends `succeeded`, `compensated`, `cancelled`
//! (an operator stopped it) or `failed` (with the failing step, or the
//! failing compensation, named in its error).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::Utc;
use fulfil_core::dag::{CompensationOutcome, CompensationStatus, Outcome};
use fulfil_core::expr::{RenderContext, evaluate_condition, render_value};
use fulfil_core::wire::{StepFailure, TaskKind, TaskMessage};
use fulfil_core::{Graph, RunStatus, Step, StepStatus};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::event::{self, AttemptEvent, attempt_event};
use super::writes::{AttemptCancel, NewAttempt};
use super::{RequestStatus, Run, RunEnding, RunError};

/// An attempt may wait this long for a worker when its step sets no
/// `schedule_to_start`; only the task's absolute deadline uses it.
const UNBOUNDED_QUEUE_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The variables a step's expressions see at this point of the run.
pub fn render_context(run: &Run) -> RenderContext {
    let mut steps = Map::new();
    for step in run.steps.values() {
        if step.status.satisfies_needs() {
            steps.insert(
                step.step_id.clone(),
                json!({
                    "status": step.status.as_str(),
                    "outputs": step.outputs.clone().unwrap_or_else(|| json!({})),
                    "inputs": step.input.clone().unwrap_or_else(|| json!({})),
                }),
            );
        }
    }
    RenderContext {
        params: run.context.get("params").cloned().unwrap_or(Value::Null),
        request: run.context.get("request").cloned().unwrap_or(Value::Null),
        vars: run.context.get("vars").cloned().unwrap_or(Value::Null),
        steps: Value::Object(steps),
    }
}

/// Succeeded steps that declare a compensation: what a saga must undo.
fn to_undo(run: &Run) -> BTreeSet<String> {
    run.promise
        .spec
        .workflow
        .steps
        .iter()
        .filter(|s| s.compensate.is_some())
        .filter(|s| {
            run.steps.get(&s.id).is_some_and(|row| {
                row.status == StepStatus::Succeeded
                    || (row.status == StepStatus::Compensated && row.compensation.is_some())
            })
        })
        .map(|s| s.id.clone())
        .collect()
}

/// Drives the run as far as it can go now; see the module docs.
pub fn advance(run: &mut Run) -> Result<(), RunError> {
    let promise = run.promise.clone();
    let graph = Graph::from_workflow(&promise.spec.workflow);
    loop {
        match run.status {
            RunStatus::Running => {
                let statuses: HashMap<String, StepStatus> = run
                    .steps
                    .iter()
                    .map(|(id, s)| (id.clone(), s.status))
                    .collect();
                let plan = graph.plan(&statuses);
                match plan.outcome {
                    Some(Outcome::Succeeded) => {
                        return finish(run, RunStatus::Succeeded, None);
                    }
                    Some(Outcome::Failed { failed_steps }) => {
                        cancel_pending(run);
                        let reason = failure_reason(run, &failed_steps);
                        if to_undo(run).is_empty() {
                            let status = if run.cancel_requested {
                                RunStatus::Cancelled
                            } else {
                                RunStatus::Failed
                            };
                            return finish(run, status, Some(reason));
                        }
                        run.set_status(RunStatus::Compensating)?;
                        run.record(
                            event::RUN_COMPENSATING,
                            None,
                            None,
                            json!({ "reason": reason, "undo": to_undo(run) }),
                        );
                        continue;
                    }
                    None => {}
                }
                if plan.start.is_empty() {
                    return Ok(());
                }
                for step_id in plan.start {
                    let Some(step) = promise.step(&step_id) else {
                        return Err(RunError::Corrupt(format!(
                            "step {step_id} is not in the Promise"
                        )));
                    };
                    if let Some(condition) = &step.condition {
                        match evaluate_condition(condition, &render_context(run)) {
                            Ok(true) => {}
                            Ok(false) => {
                                set_step(
                                    run,
                                    &step_id,
                                    StepStatus::Skipped,
                                    None,
                                    Some(json!({})),
                                    None,
                                );
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
                    let attempt = run.steps.get(&step_id).map_or(0, |s| s.attempt) + 1;
                    dispatch_action(run, step, attempt)?;
                }
            }
            RunStatus::Compensating => {
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
                        let failed: Vec<String> = run
                            .steps
                            .values()
                            .filter(|s| s.status == StepStatus::Failed)
                            .map(|s| s.step_id.clone())
                            .collect();
                        let reason = format!(
                            "{}; compensated {}",
                            failure_reason(run, &failed),
                            undo.iter().cloned().collect::<Vec<_>>().join(", ")
                        );
                        return finish(run, status, Some(reason));
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
                        return finish(run, RunStatus::Failed, Some(reasons.join("; ")));
                    }
                    None => {}
                }
                if plan.start.is_empty() {
                    return Ok(());
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
                    dispatch_compensation(run, step, attempt)?;
                }
            }
            _ => return Ok(()),
        }
    }
}

/// What failed, in words, for the run's error.
fn failure_reason(run: &Run, failed_steps: &[String]) -> String {
    if let Some(reason) = &run.stop_reason {
        return reason.clone();
    }
    let mut parts: Vec<String> = failed_steps
        .iter()
        .filter(|id| {
            run.steps
                .get(*id)
                .is_some_and(|s| s.status == StepStatus::Failed)
        })
        .map(
            |id| match run.steps.get(id).and_then(|s| s.error.as_deref()) {
                Some(error) => format!("step {id} failed: {error}"),
                None => format!("step {id} failed"),
            },
        )
        .collect();
    if parts.is_empty() {
        parts.push(format!("steps did not finish: {}", failed_steps.join(", ")));
    }
    parts.join("; ")
}

/// Steps that never started will not: say so instead of leaving them pending.
fn cancel_pending(run: &mut Run) {
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
        );
    }
}

/// Cancels every in-flight attempt of `kind` (their results will be
/// ignored), recording why; used by run timeouts and operator cancels.
pub fn stop_in_flight(run: &mut Run, kind: TaskKind, reason: &str) {
    let in_flight: Vec<(String, i32)> = run
        .steps
        .values()
        .filter(|s| match kind {
            TaskKind::Action => s.status.is_in_flight(),
            TaskKind::Compensation => s.compensation.is_some_and(CompensationStatus::is_in_flight),
        })
        .map(|s| (s.step_id.clone(), s.current_attempt(kind)))
        .collect();
    for (step_id, attempt) in in_flight {
        run.cancel_attempt(AttemptCancel {
            step_id: step_id.clone(),
            kind: kind.as_str(),
            attempt,
            reason: reason.to_string(),
        });
        match kind {
            TaskKind::Action => {
                set_step(
                    run,
                    &step_id,
                    StepStatus::Cancelled,
                    None,
                    None,
                    Some(reason),
                );
            }
            TaskKind::Compensation => {
                set_compensation(
                    run,
                    &step_id,
                    CompensationStatus::Cancelled,
                    None,
                    Some(reason),
                );
            }
        }
        run.record(
            event::STEP_CANCELLED,
            Some(&step_id),
            Some(attempt),
            json!({ "kind": kind.as_str(), "reason": reason }),
        );
    }
}

/// Renders the step's input and queues attempt `attempt` of its action.
pub fn dispatch_action(run: &mut Run, step: &Step, attempt: i32) -> Result<(), RunError> {
    let input = match render_value(&step.with, &render_context(run)) {
        Ok(input) => input,
        Err(e) => {
            return fail_step(run, &step.id, Some(attempt), "render_error", &e.to_string());
        }
    };
    let promise = run.promise.clone();
    let spec = AttemptSpec {
        kind: TaskKind::Action,
        handler: &step.uses,
        queue: promise.queue_of(step),
        timeout: promise.timeout_of(step),
        schedule_to_start: promise.schedule_to_start_of(step),
        heartbeat_timeout: promise.heartbeat_timeout_of(step),
    };
    if let Some(row) = run.steps.get_mut(&step.id) {
        row.status = StepStatus::Ready;
        row.attempt = attempt;
        row.error = None;
        row.input = Some(input.clone());
    }
    run.step_changed(&step.id);
    dispatch(run, &step.id, attempt, input, spec)
}

/// Renders the step's compensation input and queues attempt `attempt` of it.
pub fn dispatch_compensation(run: &mut Run, step: &Step, attempt: i32) -> Result<(), RunError> {
    let Some(compensation) = &step.compensate else {
        return Err(RunError::Corrupt(format!(
            "step {} has no compensation",
            step.id
        )));
    };
    let input = match render_value(&compensation.with, &render_context(run)) {
        Ok(input) => input,
        Err(e) => {
            let message = e.to_string();
            set_compensation(
                run,
                &step.id,
                CompensationStatus::Failed,
                Some(attempt),
                Some(&message),
            );
            run.record(
                attempt_event(TaskKind::Compensation, AttemptEvent::Failed),
                Some(&step.id),
                Some(attempt),
                json!({ "code": "render_error", "message": message, "final": true }),
            );
            return Ok(());
        }
    };
    let promise = run.promise.clone();
    let spec = AttemptSpec {
        kind: TaskKind::Compensation,
        handler: &compensation.uses,
        queue: promise.queue_of(step),
        timeout: promise.compensation_timeout_of(compensation),
        schedule_to_start: promise.schedule_to_start_of(step),
        heartbeat_timeout: promise.heartbeat_timeout_of(step),
    };
    set_compensation(
        run,
        &step.id,
        CompensationStatus::Ready,
        Some(attempt),
        None,
    );
    dispatch(run, &step.id, attempt, input, spec)
}

struct AttemptSpec<'a> {
    kind: TaskKind,
    handler: &'a str,
    queue: &'a str,
    timeout: Duration,
    schedule_to_start: Option<Duration>,
    heartbeat_timeout: Option<Duration>,
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Inserts the attempt, arms its schedule-to-start timer, and puts its task
/// in the outbox.
fn dispatch(
    run: &mut Run,
    step_id: &str,
    attempt: i32,
    input: Value,
    spec: AttemptSpec<'_>,
) -> Result<(), RunError> {
    let task_id = Uuid::now_v7();
    let now = Utc::now();
    let deadline = now
        + chrono_duration(spec.schedule_to_start.unwrap_or(UNBOUNDED_QUEUE_WAIT))
        + chrono_duration(spec.timeout);
    run.insert_attempt(NewAttempt {
        task_id,
        step_id: step_id.to_string(),
        attempt,
        kind: spec.kind.as_str(),
        handler: spec.handler.to_string(),
        queue: spec.queue.to_string(),
        input: input.clone(),
        deadline,
    });
    if let Some(wait) = spec.schedule_to_start {
        run.add_timer(
            "schedule_to_start",
            step_id,
            Some(task_id),
            now + chrono_duration(wait),
        );
    }
    run.record(
        attempt_event(spec.kind, AttemptEvent::Dispatched),
        Some(step_id),
        Some(attempt),
        json!({ "task_id": task_id, "handler": spec.handler, "queue": spec.queue }),
    );
    let idempotency_key = match spec.kind {
        TaskKind::Action => format!("{}/{step_id}", run.run_id),
        TaskKind::Compensation => format!("{}/{step_id}/compensate", run.run_id),
    };
    let task = TaskMessage {
        task_id,
        run_id: run.run_id,
        step_id: step_id.to_string(),
        attempt: attempt as u32,
        handler: spec.handler.to_string(),
        input,
        deadline,
        idempotency_key,
        traceparent: None,
        kind: spec.kind,
        timeout_ms: Some(spec.timeout.as_millis() as u64),
        heartbeat_timeout_ms: spec.heartbeat_timeout.map(|d| d.as_millis() as u64),
    };
    let payload = serde_json::to_value(&task).map_err(|e| RunError::Corrupt(e.to_string()))?;
    run.publish(
        run.names.task_subject(spec.queue),
        task_id.to_string(),
        payload,
    );
    Ok(())
}

/// A failed attempt: schedule the next one under the retry policy, or fail
/// the step (or its compensation) for good.
pub fn attempt_failed(
    run: &mut Run,
    step_id: &str,
    kind: TaskKind,
    attempt: i32,
    failure: &StepFailure,
    worker: Option<&str>,
) -> Result<(), RunError> {
    let promise = run.promise.clone();
    let Some(step) = promise.step(step_id) else {
        return Err(RunError::Corrupt(format!(
            "step {step_id} is not in the Promise"
        )));
    };
    let policy = match (kind, &step.compensate) {
        (TaskKind::Compensation, Some(c)) => promise.compensation_retry_of(c),
        _ => promise.retry_of(step),
    };
    let stopping = kind == TaskKind::Action && (run.cancel_requested || run.stop_reason.is_some());
    let error = serde_json::to_value(failure).map_err(|e| RunError::Corrupt(e.to_string()))?;
    if !stopping && policy.allows_retry(attempt as u32, failure.retryable, failure.code.as_deref())
    {
        let random = (Uuid::now_v7().as_u128() as u64 & 0xFFFF_FFFF) as f64 / f64::from(u32::MAX);
        let mut delay = policy.backoff(attempt as u32 + 1, random);
        if let Some(after) = failure.retry_after_ms {
            delay = delay.max(Duration::from_millis(after));
        }
        let fire_at = Utc::now() + chrono_duration(delay);
        match kind {
            TaskKind::Action => {
                run.add_timer("retry", step_id, None, fire_at);
                set_step(
                    run,
                    step_id,
                    StepStatus::Retrying,
                    Some(attempt),
                    None,
                    Some(&failure.message),
                );
            }
            TaskKind::Compensation => {
                run.add_timer("compensation_retry", step_id, None, fire_at);
                set_compensation(
                    run,
                    step_id,
                    CompensationStatus::Retrying,
                    Some(attempt),
                    Some(&failure.message),
                );
            }
        }
        run.record(
            attempt_event(kind, AttemptEvent::RetryScheduled),
            Some(step_id),
            Some(attempt),
            json!({ "error": error, "worker": worker, "next_attempt": attempt + 1,
                    "delay_ms": delay.as_millis() as u64, "fire_at": fire_at }),
        );
        return Ok(());
    }
    let code = failure.code.as_deref().unwrap_or("step_error");
    let message =
        if failure.retryable && attempt as u32 >= policy.max_attempts && policy.max_attempts > 1 {
            format!("{} (gave up after {attempt} attempts)", failure.message)
        } else {
            failure.message.clone()
        };
    match kind {
        TaskKind::Action => fail_step(run, step_id, Some(attempt), code, &message),
        TaskKind::Compensation => {
            set_compensation(
                run,
                step_id,
                CompensationStatus::Failed,
                Some(attempt),
                Some(&message),
            );
            run.record(
                attempt_event(kind, AttemptEvent::Failed),
                Some(step_id),
                Some(attempt),
                json!({ "code": code, "message": message, "worker": worker, "final": true }),
            );
            Ok(())
        }
    }
}

/// Updates a step's row and the in-memory copy the planner reads.
pub(super) fn set_step(
    run: &mut Run,
    step_id: &str,
    status: StepStatus,
    attempt: Option<i32>,
    outputs: Option<Value>,
    error: Option<&str>,
) {
    if let Some(row) = run.steps.get_mut(step_id) {
        row.status = status;
        if let Some(attempt) = attempt {
            row.attempt = attempt;
        }
        if outputs.is_some() {
            row.outputs = outputs;
        }
        row.error = error.map(str::to_string);
    }
    run.step_changed(step_id);
}

/// Updates a step's compensation state.
pub(super) fn set_compensation(
    run: &mut Run,
    step_id: &str,
    status: CompensationStatus,
    attempt: Option<i32>,
    error: Option<&str>,
) {
    if let Some(row) = run.steps.get_mut(step_id) {
        row.compensation = Some(status);
        if let Some(attempt) = attempt {
            row.compensation_attempt = attempt;
        }
        row.compensation_error = error.map(str::to_string);
    }
    run.step_changed(step_id);
}

/// Marks a step failed for good, recording why.
pub(super) fn fail_step(
    run: &mut Run,
    step_id: &str,
    attempt: Option<i32>,
    code: &str,
    message: &str,
) -> Result<(), RunError> {
    set_step(
        run,
        step_id,
        StepStatus::Failed,
        attempt,
        None,
        Some(message),
    );
    run.record(
        attempt_event(TaskKind::Action, AttemptEvent::Failed),
        Some(step_id),
        attempt,
        json!({ "code": code, "message": message, "final": true }),
    );
    Ok(())
}

/// Ends the run: outputs on success, the reason otherwise.
fn finish(run: &mut Run, status: RunStatus, reason: Option<String>) -> Result<(), RunError> {
    let (status, outputs, error) = if status == RunStatus::Succeeded {
        match render_outputs(run) {
            Ok(outputs) => (status, Some(outputs), None),
            Err(message) => (RunStatus::Failed, None, Some(message)),
        }
    } else {
        (status, None, reason)
    };
    run.set_status(status)?;
    run.clear_run_timers();
    run.set_ending(RunEnding {
        finished: true,
        outputs: outputs.clone(),
        error: error.clone(),
    });
    run.set_request_status(RequestStatus {
        status: status.as_str(),
        outputs: outputs.clone(),
    });
    let kind = match status {
        RunStatus::Succeeded => event::RUN_SUCCEEDED,
        RunStatus::Compensated => event::RUN_COMPENSATED,
        RunStatus::Cancelled => event::RUN_CANCELLED,
        _ => event::RUN_FAILED,
    };
    run.record(
        kind,
        None,
        None,
        json!({ "outputs": outputs, "error": error }),
    );
    run.emit_event(
        kind,
        json!({
            "run_id": run.run_id,
            "request_id": run.request_id,
            "promise": run.promise.metadata.name,
            "promise_version": run.promise.metadata.version,
            "status": status.as_str(),
            "outputs": outputs,
            "error": error,
        }),
    );
    Ok(())
}

fn render_outputs(run: &Run) -> Result<Value, String> {
    let context = render_context(run);
    let mut outputs = Map::new();
    for (name, template) in &run.promise.spec.outputs {
        let value = render_value(template, &context).map_err(|e| format!("output {name}: {e}"))?;
        outputs.insert(name.clone(), value);
    }
    Ok(Value::Object(outputs))
}
