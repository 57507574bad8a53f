//! Planning and dispatching: after any change to a run, start the steps whose
//! needs are met, skip those whose `if` is false, switch to compensation
//! when a step failed for good, and finish the run when nothing is left.
//!
//! [`advance`] plans in rounds until nothing more can happen now: forward
//! planning while the run is `running` ([`super::forward`]), the saga while
//! it is `compensating` ([`super::compensate`]). This module holds what
//! both share: dispatching an attempt, a failed attempt's retry or final
//! failure, stopping what is in flight, and ending the run.
//!
//! Forward: once a step has failed (or the run is stopping), nothing new
//! starts; in-flight steps finish or time out. Then, if any succeeded step
//! declares `compensate`, the run becomes `compensating` and the saga planner
//! ([`fulfil_core::Graph::plan_compensation`]) undoes them in reverse
//! dependency order. The run ends `succeeded`, `compensated`, `cancelled`
//! (an operator stopped it) or `failed` (with the failing step, or the
//! failing compensation, named in its error).

use std::time::Duration;

use chrono::Utc;
use fulfil_core::dag::CompensationStatus;
use fulfil_core::expr::RenderContext;
use fulfil_core::ids::{StepId, TaskId};
use fulfil_core::promise::Compensation;
use fulfil_core::time;
use fulfil_core::wire::{SecretSlot, StepFailure, TaskKind, TaskMessage};
use fulfil_core::{Graph, Promise, RunStatus, Step, StepStatus};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::compensate::plan_compensation;
use super::event::{self, AttemptEvent, attempt_event};
use super::forward::plan_forward;
use super::writes::{AttemptCancel, NewAttempt};
use super::{Run, RunEnding, RunError};
use fulfil_core::status::TimerKind;

/// An attempt may wait this long for a worker when its step sets no
/// `schedule_to_start`; only the task's absolute deadline uses it.
const UNBOUNDED_QUEUE_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The variables a step's expressions see at this point of the run.
pub fn render_context(run: &Run) -> RenderContext {
    let mut steps = Map::new();
    // Instances are read through their step (its outputs are theirs, as a
    // list), never by their own ids.
    for step in run.steps.values() {
        if super::for_each::is_instance(run, &step.step_id) {
            continue;
        }
        if step.status.satisfies_needs() {
            steps.insert(step.step_id.clone(), step_variables(step));
        }
    }
    RenderContext {
        params: run.context.get("params").cloned().unwrap_or(Value::Null),
        request: run.context.get("request").cloned().unwrap_or(Value::Null),
        vars: run.context.get("vars").cloned().unwrap_or(Value::Null),
        steps: Value::Object(steps),
    }
}

/// What `steps.<id>` holds for a step row: its status, outputs and inputs.
pub(super) fn step_variables(row: &super::StepRow) -> Value {
    json!({
        "status": row.status.as_str(),
        "outputs": row.outputs.clone().unwrap_or_else(|| json!({})),
        "inputs": row.input.clone().unwrap_or_else(|| json!({})),
    })
}

/// A step whose compiled expressions its run's Promise does not hold: the
/// step is not that Promise's.
pub(super) fn not_compiled(step_id: &str) -> RunError {
    RunError::Corrupt(format!(
        "step {step_id} has no compiled expressions in the Promise"
    ))
}

/// What a round of planning leaves to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// The run changed in a way that may let more happen: plan again.
    Again,
    /// Nothing more happens until something is reported or fires.
    Done,
}

/// Drives the run as far as it can go now; see the module docs.
pub fn advance(run: &mut Run) -> Result<(), RunError> {
    // Under the span of whatever changed the run (accept, apply, a timer).
    let _span = tracing::info_span!("plan", run_id = %run.run_id).entered();
    let promise = run.promise.clone();
    let graph = Graph::from_workflow(&promise.spec.workflow);
    loop {
        let next = match run.status {
            RunStatus::Running => plan_forward(run, &graph)?,
            RunStatus::Compensating => plan_compensation(run, &graph)?,
            _ => Next::Done,
        };
        if next == Next::Done {
            return Ok(());
        }
    }
}

/// What failed, in words, for the run's error.
pub(super) fn failure_reason(run: &Run, failed_steps: &[String]) -> String {
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

/// Cancels every in-flight attempt of `kind` (their results will be
/// ignored), recording why; used by run timeouts and operator cancels.
pub fn stop_in_flight(run: &mut Run, kind: TaskKind, reason: &str) -> Result<(), RunError> {
    let in_flight: Vec<(String, i32, bool)> = run
        .steps
        .values()
        .filter(|s| match kind {
            TaskKind::Action => s.status.is_in_flight(),
            TaskKind::Compensation => s.compensation.is_some_and(CompensationStatus::is_in_flight),
        })
        .map(|s| {
            (
                s.step_id.clone(),
                s.current_attempt(kind),
                s.status == StepStatus::Waiting,
            )
        })
        .collect();
    for (step_id, attempt, waiting) in in_flight {
        if waiting && kind == TaskKind::Action {
            super::waiting::end_wait(run, &step_id);
        }
        run.cancel_attempt(AttemptCancel {
            step_id: step_id.clone(),
            kind,
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
                )?;
            }
            TaskKind::Compensation => {
                set_compensation(
                    run,
                    &step_id,
                    CompensationStatus::Cancelled,
                    None,
                    Some(reason),
                )?;
            }
        }
        run.record(
            event::STEP_CANCELLED,
            Some(&step_id),
            Some(attempt),
            json!({ "kind": kind.as_str(), "reason": reason }),
        );
    }
    Ok(())
}

pub(super) struct AttemptSpec<'a> {
    pub(super) kind: TaskKind,
    pub(super) handler: &'a str,
    pub(super) queue: &'a str,
    pub(super) timeout: Duration,
    pub(super) schedule_to_start: Option<Duration>,
    pub(super) heartbeat_timeout: Option<Duration>,
    /// For an instance of a `for_each` step, its index and item, recorded
    /// with its dispatch.
    pub(super) instance: Option<(usize, &'a Value)>,
}

impl<'a> AttemptSpec<'a> {
    /// An attempt of `step`'s action, under its settings.
    pub(super) fn action(promise: &'a Promise, step: &'a Step) -> Self {
        AttemptSpec {
            kind: TaskKind::Action,
            handler: &step.uses,
            queue: promise.queue_of(step),
            timeout: promise.timeout_of(step),
            schedule_to_start: promise.schedule_to_start_of(step),
            heartbeat_timeout: promise.heartbeat_timeout_of(step),
            instance: None,
        }
    }

    /// An attempt of `step`'s compensation, under its settings.
    pub(super) fn compensation(
        promise: &'a Promise,
        step: &'a Step,
        compensation: &'a Compensation,
    ) -> Self {
        AttemptSpec {
            kind: TaskKind::Compensation,
            handler: &compensation.uses,
            queue: promise.queue_of(step),
            timeout: promise.compensation_timeout_of(compensation),
            schedule_to_start: promise.schedule_to_start_of(step),
            heartbeat_timeout: promise.heartbeat_timeout_of(step),
            instance: None,
        }
    }
}

/// Error code of a step whose task could never be published.
pub const TASK_TOO_LARGE: &str = "task_too_large";

/// Largest input a task carries: a NATS message ([`fulfil_bus::MAX_MESSAGE_BYTES`])
/// less room for everything else in the task (ids, handler, queue,
/// idempotency key, deadline, trace context: bounded names and fixed-size
/// values).
pub const MAX_TASK_INPUT_BYTES: usize = fulfil_bus::MAX_MESSAGE_BYTES - 8 * 1024;

/// Bytes `value` takes as JSON, counted without building the text.
pub(crate) fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        // A Value always serializes; if not, it cannot be sent either.
        Err(_) => usize::MAX,
    }
}

/// Why a task carrying `input` could never be published, if it could not:
/// a message stored in the outbox that NATS refuses would never reach a
/// worker, so the attempt fails now with a permanent, named error.
pub(super) fn too_large(input: &Value) -> Option<String> {
    let size = json_size(input);
    (size > MAX_TASK_INPUT_BYTES).then(|| {
        format!(
            "the rendered input is {size} bytes; a task's input must be at most {MAX_TASK_INPUT_BYTES} bytes to fit in a NATS message of {} bytes",
            fulfil_bus::MAX_MESSAGE_BYTES
        )
    })
}

/// Inserts the attempt, arms its schedule-to-start timer, and puts its task
/// in the outbox.
pub(super) fn dispatch(
    run: &mut Run,
    step_id: &str,
    attempt: i32,
    input: Value,
    secrets: Vec<SecretSlot>,
    spec: AttemptSpec<'_>,
) -> Result<(), RunError> {
    let task_id = TaskId::generate();
    let now = Utc::now();
    // Saturating: a stored Promise may state durations no bound checked.
    let deadline = time::deadline_after(
        now,
        spec.schedule_to_start
            .unwrap_or(UNBOUNDED_QUEUE_WAIT)
            .saturating_add(spec.timeout),
    );
    run.insert_attempt(NewAttempt {
        task_id,
        step_id: step_id.to_string(),
        attempt,
        kind: spec.kind,
        handler: spec.handler.to_string(),
        queue: spec.queue.to_string(),
        input: input.clone(),
        deadline,
    });
    if let Some(wait) = spec.schedule_to_start {
        run.add_timer(
            TimerKind::ScheduleToStart,
            step_id,
            Some(task_id),
            time::deadline_after(now, wait),
        );
    }
    let mut data = json!({ "task_id": task_id, "handler": spec.handler, "queue": spec.queue });
    if let (Some((index, item)), Some(fields)) = (spec.instance, data.as_object_mut()) {
        fields.insert("index".into(), json!(index));
        fields.insert("item".into(), item.clone());
    }
    run.record(
        attempt_event(spec.kind, AttemptEvent::Dispatched),
        Some(step_id),
        Some(attempt),
        data,
    );
    let idempotency_key = match spec.kind {
        TaskKind::Action => format!("{}/{step_id}", run.run_id),
        TaskKind::Compensation => format!("{}/{step_id}/compensate", run.run_id),
    };
    let task = TaskMessage {
        task_id,
        run_id: run.run_id,
        step_id: StepId::from(step_id),
        attempt: attempt as u32,
        handler: spec.handler.to_string(),
        input,
        deadline,
        idempotency_key,
        traceparent: Some(run.trace_parent().to_string()),
        kind: spec.kind,
        timeout_ms: Some(time::as_millis_u64(time::clamp(spec.timeout))),
        heartbeat_timeout_ms: spec
            .heartbeat_timeout
            .map(|d| time::as_millis_u64(time::clamp(d))),
        // Where the worker puts secret values; the input holds references.
        secrets,
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
    // An instance of a for_each step retries under its step's policy.
    let Some((step, _)) = promise.step_of_row(step_id) else {
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
            // From a worker's report: clamped, so any value yields a timer.
            delay = delay.max(time::clamp_millis(after));
        }
        let delay = time::clamp(delay);
        let fire_at = time::deadline_after(Utc::now(), delay);
        match kind {
            TaskKind::Action => {
                run.add_timer(TimerKind::Retry, step_id, None, fire_at);
                set_step(
                    run,
                    step_id,
                    StepStatus::Retrying,
                    Some(attempt),
                    None,
                    Some(&failure.message),
                )?;
            }
            TaskKind::Compensation => {
                run.add_timer(TimerKind::CompensationRetry, step_id, None, fire_at);
                set_compensation(
                    run,
                    step_id,
                    CompensationStatus::Retrying,
                    Some(attempt),
                    Some(&failure.message),
                )?;
            }
        }
        // Labelled by the step, not the instance: labels stay bounded.
        run.observe(crate::metrics::Observed::Retry {
            step: step.id.clone(),
        });
        run.record(
            attempt_event(kind, AttemptEvent::RetryScheduled),
            Some(step_id),
            Some(attempt),
            json!({ "error": error, "worker": worker, "next_attempt": attempt + 1,
                    "delay_ms": time::as_millis_u64(delay), "fire_at": fire_at }),
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
            )?;
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

/// Moves a step to `status` ([`Run::set_step_status`]) and updates the
/// rest of its row.
pub(super) fn set_step(
    run: &mut Run,
    step_id: &str,
    status: StepStatus,
    attempt: Option<i32>,
    outputs: Option<Value>,
    error: Option<&str>,
) -> Result<(), RunError> {
    let row = run.set_step_status(step_id, status)?;
    if let Some(attempt) = attempt {
        row.attempt = attempt;
    }
    if outputs.is_some() {
        row.outputs = outputs;
    }
    row.error = error.map(str::to_string);
    Ok(())
}

/// Updates a step's compensation state.
pub(super) fn set_compensation(
    run: &mut Run,
    step_id: &str,
    status: CompensationStatus,
    attempt: Option<i32>,
    error: Option<&str>,
) -> Result<(), RunError> {
    if let Some(row) = run.steps.get_mut(step_id) {
        let from = row.compensation.unwrap_or(CompensationStatus::Pending);
        if !from.can_become(status) {
            return Err(RunError::IllegalCompensationTransition {
                step: step_id.to_string(),
                from,
                to: status,
            });
        }
        row.compensation = Some(status);
        if let Some(attempt) = attempt {
            row.compensation_attempt = attempt;
        }
        row.compensation_error = error.map(str::to_string);
    }
    run.step_changed(step_id);
    Ok(())
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
    )?;
    run.record(
        attempt_event(TaskKind::Action, AttemptEvent::Failed),
        Some(step_id),
        attempt,
        json!({ "code": code, "message": message, "final": true }),
    );
    Ok(())
}

/// Ends the run: outputs on success, the reason otherwise.
pub(super) fn finish(
    run: &mut Run,
    status: RunStatus,
    reason: Option<String>,
) -> Result<(), RunError> {
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
    if run.promise.has_engine_steps() {
        run.writes.cleared_run_waits = true;
    }
    run.set_ending(RunEnding {
        finished: true,
        outputs: outputs.clone(),
        error: error.clone(),
    });
    super::deleting::settle_request(run, status, outputs.clone(), error.as_deref())?;
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
    Ok(())
}

fn render_outputs(run: &Run) -> Result<Value, String> {
    let context = render_context(run);
    let mut outputs = Map::new();
    for (name, template) in run.promise.compiled_outputs() {
        let value = template
            .render(&context)
            .map_err(|e| format!("output {name}: {e}"))?;
        outputs.insert(name.clone(), value);
    }
    Ok(Value::Object(outputs))
}
