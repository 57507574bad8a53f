//! `for_each` steps: one step run once per item of a list (see
//! [`fulfil_core::for_each`] for the language side).
//!
//! The DAG planner sees a `for_each` step as one step. When it starts
//! ([`start`]), its list is evaluated once and recorded as the step's
//! `input`, and one pending row per item, `<step>[<index>]`, is added to the
//! run, all in the change that starts it: a crash before that change
//! commits plans the step again from scratch, and after it every engine
//! reads the recorded list and the same instance rows, so no instance is
//! lost or doubled and the list is never evaluated a second time (a retry
//! of the run keeps it too). The step is `running` while its instances are.
//!
//! Before each round of forward planning, [`settle`] moves every running
//! `for_each` step on: it dispatches pending instances, in index order,
//! while fewer than `max_parallel` are in flight and nothing stops the run
//! (a step or an instance failed for good, a cancel, the run timeout, a
//! delete). Once none is in flight, the step succeeds with its instances'
//! outputs as a list in index order, or fails naming the first instance
//! that failed (its pending instances are cancelled). While an instance has
//! failed and others are still in flight, nothing new starts anywhere in
//! the run: the step is about to fail, and other steps would only have to
//! be undone.
//!
//! Compensation mirrors it. A `for_each` step that declares `compensate` is
//! undone when any of its instances succeeded, whatever the step itself
//! ended as (an instance that failed leaves its succeeded siblings to
//! undo). Its compensation ([`start_compensation`], then
//! [`settle_compensation`]) runs the step's `compensate` once per succeeded
//! instance, at most `max_parallel` at once, each over its own `item`,
//! `index` and outputs (`steps.<step>` reads the instance there), and
//! succeeds once every one did, or fails once one failed for good and none
//! is in flight.
//!
//! A Promise without `for_each` never gets here
//! ([`fulfil_core::Promise::has_for_each`]).

use fulfil_core::dag::CompensationStatus;
use fulfil_core::expr::{ItemContext, RenderContext};
use fulfil_core::for_each::{INSTANCE_FAILED, instance_id, items_of, parse_instance};
use fulfil_core::wire::TaskKind;
use fulfil_core::{Step, StepStatus};
use serde_json::{Value, json};

use super::advance::{
    AttemptSpec, TASK_TOO_LARGE, dispatch, fail_step, not_compiled, render_context,
    set_compensation, set_step, step_variables, too_large,
};
use super::compensate::fail_compensation;
use super::event::{self, AttemptEvent, attempt_event};
use super::{NewInstance, Run, RunError};

/// Starts a `for_each` step whose needs are met (and whose `if` held):
/// evaluates and records its list, adds its instances and dispatches the
/// first of them; see the module docs.
pub(super) fn start(run: &mut Run, step: &Step) -> Result<(), RunError> {
    let promise = run.promise.clone();
    let row = run
        .steps
        .get(&step.id)
        .ok_or_else(|| RunError::Corrupt(format!("run has no step {}", step.id)))?;
    let attempt = row.attempt + 1;
    // A retried run runs over the list it recorded the first time.
    let items = match &row.input {
        Some(Value::Array(items)) => items.clone(),
        _ => {
            let template = promise
                .for_each_of(step)
                .ok_or_else(|| not_compiled(&step.id))?;
            let evaluated = template
                .render(&render_context(run))
                .map_err(|e| ("render_error", e.to_string()))
                .and_then(|value| items_of(&step.id, value).map_err(|e| (e.code(), e.to_string())));
            match evaluated {
                Ok(items) => items,
                Err((code, message)) => {
                    return fail_step(run, &step.id, Some(attempt), code, &message);
                }
            }
        }
    };
    let row = run.set_step_status(&step.id, StepStatus::Ready)?;
    row.attempt = attempt;
    row.error = None;
    row.input = Some(Value::Array(items.clone()));
    run.set_step_status(&step.id, StepStatus::Running)?;
    let position = promise
        .spec
        .workflow
        .steps
        .iter()
        .position(|s| s.id == step.id)
        .unwrap_or(0);
    for (index, item) in items.iter().enumerate() {
        run.add_instance(NewInstance {
            step_id: instance_id(&step.id, index),
            instance_of: step.id.clone(),
            index: i32::try_from(index).unwrap_or(i32::MAX),
            item: item.clone(),
            position: i32::try_from(position).unwrap_or(i32::MAX),
        });
    }
    run.record(
        event::FOR_EACH_EXPANDED,
        Some(&step.id),
        Some(attempt),
        json!({ "count": items.len(), "max_parallel": promise.max_parallel_of(step),
                "items": items }),
    );
    let stopping = stopping(run);
    settle_step(run, step, stopping).map(|_| ())
}

/// Moves every running `for_each` step on (see the module docs). Returns
/// whether one of them is failing: an instance failed for good while
/// others are still in flight, so nothing new may start.
pub(super) fn settle(run: &mut Run) -> Result<bool, RunError> {
    let promise = run.promise.clone();
    let mut failing = false;
    for step in promise.spec.workflow.steps.iter() {
        let running = run
            .steps
            .get(&step.id)
            .is_some_and(|row| row.status == StepStatus::Running);
        if step.for_each.is_some() && running {
            let stopping = stopping(run);
            failing |= settle_step(run, step, stopping)?;
        }
    }
    Ok(failing)
}

/// Whether `row_id` is an instance of a `for_each` step of the run.
pub(super) fn is_instance(run: &Run, row_id: &str) -> bool {
    run.promise.has_for_each() && parse_instance(row_id).is_some()
}

/// Whether nothing new may start: a step or an instance failed for good,
/// or the run is being stopped (cancel, run timeout, delete).
fn stopping(run: &Run) -> bool {
    run.cancel_requested
        || run.stop_reason.is_some()
        || run.handoff.is_some()
        || run.steps.values().any(|s| s.status == StepStatus::Failed)
}

/// The list a started `for_each` step recorded.
fn items<'r>(run: &'r Run, step_id: &str) -> Result<&'r [Value], RunError> {
    match run.steps.get(step_id).and_then(|row| row.input.as_ref()) {
        Some(Value::Array(items)) => Ok(items),
        _ => Err(RunError::Corrupt(format!(
            "for_each step {step_id} has started without a recorded list"
        ))),
    }
}

/// Item `index` of a started `for_each` step.
fn item(run: &Run, step_id: &str, index: usize) -> Result<Value, RunError> {
    items(run, step_id)?.get(index).cloned().ok_or_else(|| {
        RunError::Corrupt(format!(
            "for_each step {step_id} has no item {index} in its recorded list"
        ))
    })
}

/// Where one instance's action (or compensation) stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Pending,
    InFlight,
    Succeeded,
    Failed,
    /// Cancelled or skipped: it will not run.
    Over,
}

fn phase(run: &Run, step_id: &str, index: usize, kind: TaskKind) -> Phase {
    let row = run.steps.get(&instance_id(step_id, index));
    match kind {
        TaskKind::Action => match row.map_or(StepStatus::Pending, |row| row.status) {
            StepStatus::Pending => Phase::Pending,
            StepStatus::Succeeded => Phase::Succeeded,
            StepStatus::Failed => Phase::Failed,
            s if s.is_in_flight() => Phase::InFlight,
            _ => Phase::Over,
        },
        TaskKind::Compensation => match row
            .and_then(|row| row.compensation)
            .unwrap_or(CompensationStatus::Pending)
        {
            CompensationStatus::Pending => Phase::Pending,
            CompensationStatus::Succeeded => Phase::Succeeded,
            CompensationStatus::Failed => Phase::Failed,
            c if c.is_in_flight() => Phase::InFlight,
            _ => Phase::Over,
        },
    }
}

/// Where some instances of a `for_each` step stand: their actions, or
/// their compensations.
#[derive(Default)]
struct Tally {
    succeeded: usize,
    in_flight: usize,
    /// Not started, in index order.
    pending: Vec<usize>,
    /// The first that failed for good, and how many did.
    failed: Option<usize>,
    failures: usize,
}

impl Tally {
    fn of(
        run: &Run,
        step_id: &str,
        indexes: impl IntoIterator<Item = usize>,
        kind: TaskKind,
    ) -> Tally {
        let mut tally = Tally::default();
        for index in indexes {
            match phase(run, step_id, index, kind) {
                Phase::Succeeded => tally.succeeded += 1,
                Phase::Failed => {
                    tally.failed.get_or_insert(index);
                    tally.failures += 1;
                }
                Phase::Pending => tally.pending.push(index),
                Phase::InFlight => tally.in_flight += 1,
                Phase::Over => {}
            }
        }
        tally
    }
}

/// Dispatches `tally`'s pending instances (their actions, or their
/// compensations), in index order, while fewer than `max_parallel` are in
/// flight; stops at the first that fails before it is sent.
fn fill(run: &mut Run, step: &Step, tally: &Tally, kind: TaskKind) -> Result<(), RunError> {
    let room = run
        .promise
        .max_parallel_of(step)
        .saturating_sub(tally.in_flight);
    // Instances never change what the run's expressions see: one context
    // serves every dispatch of this round.
    let context = render_context(run);
    for &index in tally.pending.iter().take(room) {
        let attempt = run
            .steps
            .get(&instance_id(&step.id, index))
            .map_or(0, |row| row.current_attempt(kind))
            + 1;
        match kind {
            TaskKind::Action => dispatch_instance_with(run, step, index, attempt, &context)?,
            TaskKind::Compensation => {
                dispatch_instance_compensation_with(run, step, index, attempt, &context)?;
            }
        }
        if phase(run, &step.id, index, kind) == Phase::Failed {
            break;
        }
    }
    Ok(())
}

/// Moves one running `for_each` step on; returns whether it is failing.
fn settle_step(run: &mut Run, step: &Step, stopping: bool) -> Result<bool, RunError> {
    let count = items(run, &step.id)?.len();
    let tally = Tally::of(run, &step.id, 0..count, TaskKind::Action);
    if !stopping && tally.failed.is_none() {
        fill(run, step, &tally, TaskKind::Action)?;
    }
    let tally = Tally::of(run, &step.id, 0..count, TaskKind::Action);
    if tally.in_flight > 0 {
        return Ok(tally.failed.is_some());
    }
    let attempt = run.steps.get(&step.id).map_or(0, |row| row.attempt);
    if tally.succeeded == count {
        let outputs: Vec<Value> = (0..count)
            .map(|index| {
                run.steps
                    .get(&instance_id(&step.id, index))
                    .and_then(|row| row.outputs.clone())
                    .unwrap_or(Value::Null)
            })
            .collect();
        set_step(
            run,
            &step.id,
            StepStatus::Succeeded,
            None,
            Some(Value::Array(outputs)),
            None,
        )?;
        run.record(
            attempt_event(TaskKind::Action, AttemptEvent::Succeeded),
            Some(&step.id),
            Some(attempt),
            json!({ "instances": count }),
        );
        return Ok(false);
    }
    // Nothing in flight and not every instance succeeded: the step is over.
    let why = "the for_each step stopped before this instance started";
    for &index in &tally.pending {
        set_step(
            run,
            &instance_id(&step.id, index),
            StepStatus::Cancelled,
            None,
            None,
            Some(why),
        )?;
    }
    match tally.failed {
        Some(index) => {
            let failed = instance_id(&step.id, index);
            let error = run
                .steps
                .get(&failed)
                .and_then(|row| row.error.clone())
                .unwrap_or_default();
            let more = match tally.failures {
                1 => String::new(),
                n => format!(" ({n} of {count} instances failed)"),
            };
            let message = format!(
                "instance {failed} (item {}) failed: {error}{more}",
                item(run, &step.id, index)?
            );
            fail_step(run, &step.id, Some(attempt), INSTANCE_FAILED, &message)?;
        }
        None => {
            let reason = run
                .stop_reason
                .clone()
                .unwrap_or_else(|| "the run stopped before every instance ran".to_string());
            set_step(
                run,
                &step.id,
                StepStatus::Cancelled,
                None,
                None,
                Some(&reason),
            )?;
            run.record(
                event::STEP_CANCELLED,
                Some(&step.id),
                Some(attempt),
                json!({ "kind": TaskKind::Action.as_str(), "reason": reason,
                        "succeeded": tally.succeeded, "instances": count }),
            );
        }
    }
    Ok(false)
}

/// Renders the input of instance `index`'s action (or compensation) and
/// queues attempt `attempt` of it: what a retry timer of an instance does.
pub fn dispatch_instance(
    run: &mut Run,
    step: &Step,
    index: usize,
    kind: TaskKind,
    attempt: i32,
) -> Result<(), RunError> {
    let context = render_context(run);
    match kind {
        TaskKind::Action => dispatch_instance_with(run, step, index, attempt, &context),
        TaskKind::Compensation => {
            dispatch_instance_compensation_with(run, step, index, attempt, &context)
        }
    }
}

fn dispatch_instance_with(
    run: &mut Run,
    step: &Step,
    index: usize,
    attempt: i32,
    context: &RenderContext,
) -> Result<(), RunError> {
    let promise = run.promise.clone();
    let id = instance_id(&step.id, index);
    let item = item(run, &step.id, index)?;
    let with = promise
        .with_of(step)
        .ok_or_else(|| not_compiled(&step.id))?;
    let scope = ItemContext {
        run: context,
        item: &item,
        index,
    };
    let (input, secrets) = match with.render_with_secrets(&scope) {
        Ok(rendered) => rendered,
        Err(e) => return fail_step(run, &id, Some(attempt), "render_error", &e.to_string()),
    };
    if let Some(message) = too_large(&input) {
        return fail_step(run, &id, Some(attempt), TASK_TOO_LARGE, &message);
    }
    let spec = AttemptSpec {
        instance: Some((index, &item)),
        ..AttemptSpec::action(&promise, step)
    };
    let row = run.set_step_status(&id, StepStatus::Ready)?;
    row.attempt = attempt;
    row.error = None;
    row.input = Some(input.clone());
    dispatch(run, &id, attempt, input, secrets, spec)
}

/// The instances of `step` a saga must undo: those that succeeded (or were
/// undone already, once their compensation ran), in index order.
fn instances_to_undo(run: &Run, step_id: &str) -> Vec<usize> {
    let Ok(items) = items(run, step_id) else {
        return Vec::new();
    };
    (0..items.len())
        .filter(|&index| {
            run.steps
                .get(&instance_id(step_id, index))
                .is_some_and(|row| {
                    row.status == StepStatus::Succeeded
                        || (row.status == StepStatus::Compensated && row.compensation.is_some())
                })
        })
        .collect()
}

/// Whether a saga must undo the `for_each` step `step_id`: some instance
/// of it succeeded.
pub(super) fn has_instances_to_undo(run: &Run, step_id: &str) -> bool {
    !instances_to_undo(run, step_id).is_empty()
}

/// Starts undoing a `for_each` step once everything downstream of it is
/// undone: its succeeded instances' compensations.
pub(super) fn start_compensation(run: &mut Run, step: &Step) -> Result<(), RunError> {
    let attempt = run
        .steps
        .get(&step.id)
        .map_or(0, |row| row.compensation_attempt)
        + 1;
    set_compensation(
        run,
        &step.id,
        CompensationStatus::Ready,
        Some(attempt),
        None,
    )?;
    set_compensation(run, &step.id, CompensationStatus::Running, None, None)?;
    settle_compensation_step(run, step)
}

/// Moves every `for_each` step being undone on (see the module docs).
pub(super) fn settle_compensation(run: &mut Run) -> Result<(), RunError> {
    let promise = run.promise.clone();
    for step in promise.spec.workflow.steps.iter() {
        let undoing = run
            .steps
            .get(&step.id)
            .and_then(|row| row.compensation)
            .is_some_and(CompensationStatus::is_in_flight);
        if step.for_each.is_some() && undoing {
            settle_compensation_step(run, step)?;
        }
    }
    Ok(())
}

fn settle_compensation_step(run: &mut Run, step: &Step) -> Result<(), RunError> {
    let undo = instances_to_undo(run, &step.id);
    let tally = Tally::of(run, &step.id, undo.iter().copied(), TaskKind::Compensation);
    // A saga handed off to a delete starts no more undos.
    if tally.failed.is_none() && run.handoff.is_none() {
        fill(run, step, &tally, TaskKind::Compensation)?;
    }
    let tally = Tally::of(run, &step.id, undo.iter().copied(), TaskKind::Compensation);
    if tally.in_flight > 0 {
        return Ok(());
    }
    let attempt = run
        .steps
        .get(&step.id)
        .map_or(0, |row| row.compensation_attempt);
    if tally.succeeded == undo.len() {
        set_compensation(run, &step.id, CompensationStatus::Succeeded, None, None)?;
        if run
            .steps
            .get(&step.id)
            .is_some_and(|row| row.status == StepStatus::Succeeded)
        {
            set_step(run, &step.id, StepStatus::Compensated, None, None, None)?;
        }
        run.record(
            attempt_event(TaskKind::Compensation, AttemptEvent::Succeeded),
            Some(&step.id),
            Some(attempt),
            json!({ "instances": undo.len() }),
        );
        return Ok(());
    }
    match tally.failed {
        Some(index) => {
            let failed = instance_id(&step.id, index);
            let error = run
                .steps
                .get(&failed)
                .and_then(|row| row.compensation_error.clone())
                .unwrap_or_default();
            let message = format!(
                "compensation of instance {failed} (item {}) failed: {error}",
                item(run, &step.id, index)?
            );
            fail_compensation(run, &step.id, attempt, INSTANCE_FAILED, &message)
        }
        None => set_compensation(
            run,
            &step.id,
            CompensationStatus::Cancelled,
            None,
            Some("the run's request is being deleted"),
        ),
    }
}

/// Renders the compensation input of instance `index` and queues attempt
/// `attempt` of it: over the instance's `item` and `index`, with
/// `steps.<step>` reading the instance's own status, inputs and outputs.
fn dispatch_instance_compensation_with(
    run: &mut Run,
    step: &Step,
    index: usize,
    attempt: i32,
    context: &RenderContext,
) -> Result<(), RunError> {
    let Some(compensation) = &step.compensate else {
        return Err(RunError::Corrupt(format!(
            "step {} has no compensation",
            step.id
        )));
    };
    let promise = run.promise.clone();
    let id = instance_id(&step.id, index);
    let item = item(run, &step.id, index)?;
    let with = promise
        .compensation_with_of(step)
        .ok_or_else(|| not_compiled(&step.id))?;
    let mut context = context.clone();
    if let (Some(steps), Some(row)) = (context.steps.as_object_mut(), run.steps.get(&id)) {
        steps.insert(step.id.clone(), step_variables(row));
    }
    let scope = ItemContext {
        run: &context,
        item: &item,
        index,
    };
    let (input, secrets) = match with.render_with_secrets(&scope) {
        Ok(rendered) => rendered,
        Err(e) => return fail_compensation(run, &id, attempt, "render_error", &e.to_string()),
    };
    if let Some(message) = too_large(&input) {
        return fail_compensation(run, &id, attempt, TASK_TOO_LARGE, &message);
    }
    let spec = AttemptSpec {
        instance: Some((index, &item)),
        ..AttemptSpec::compensation(&promise, step, compensation)
    };
    set_compensation(run, &id, CompensationStatus::Ready, Some(attempt), None)?;
    dispatch(run, &id, attempt, input, secrets, spec)
}
