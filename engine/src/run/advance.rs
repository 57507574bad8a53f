//! Planning and dispatching: after any change to a run, start the steps whose
//! needs are met, skip those whose `if` is false, and finish the run when
//! nothing is left to do.

use chrono::Utc;
use fulfil_spec::dag::Outcome;
use fulfil_spec::expr::{RenderContext, evaluate_condition, render_value};
use fulfil_spec::wire::TaskMessage;
use fulfil_spec::{Graph, RunStatus, Step, StepStatus};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{RunError, RunTxn, event};

/// The variables a step's expressions see at this point of the run.
pub fn render_context(run: &RunTxn<'_>) -> RenderContext {
    let mut steps = Map::new();
    for step in run.steps.values() {
        if step.status.satisfies_needs() {
            steps.insert(
                step.step_id.clone(),
                json!({
                    "status": step.status.as_str(),
                    "outputs": step.outputs.clone().unwrap_or_else(|| json!({})),
                }),
            );
        }
    }
    RenderContext {
        params: run.context.get("params").cloned().unwrap_or(Value::Null),
        request: run.context.get("request").cloned().unwrap_or(Value::Null),
        env: run.context.get("env").cloned().unwrap_or(Value::Null),
        steps: Value::Object(steps),
    }
}

/// Starts whatever can start, until the plan stops changing; finishes the
/// run when the planner says it is over.
pub async fn advance(run: &mut RunTxn<'_>) -> Result<(), RunError> {
    if run.status.is_terminal() {
        return Ok(());
    }
    let promise = run.promise.clone();
    let graph = Graph::from_workflow(&promise.spec.workflow);
    loop {
        let statuses = run
            .steps
            .iter()
            .map(|(id, s)| (id.clone(), s.status))
            .collect();
        let plan = graph.plan(&statuses);
        if let Some(outcome) = plan.outcome {
            return finish(run, outcome).await;
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
                        set_step(run, &step_id, StepStatus::Skipped, 0, Some(json!({})), None)
                            .await?;
                        run.record(
                            event::STEP_SKIPPED,
                            Some(&step_id),
                            None,
                            json!({ "condition": condition }),
                        );
                        continue;
                    }
                    Err(e) => {
                        fail_step(run, &step_id, 0, "condition_error", &e.to_string()).await?;
                        continue;
                    }
                }
            }
            dispatch_attempt(run, step, 1).await?;
        }
    }
}

/// Renders the step's input and queues attempt `attempt` for a worker.
pub async fn dispatch_attempt(
    run: &mut RunTxn<'_>,
    step: &Step,
    attempt: i32,
) -> Result<(), RunError> {
    let input = match render_value(&step.with, &render_context(run)) {
        Ok(input) => input,
        Err(e) => return fail_step(run, &step.id, attempt, "render_error", &e.to_string()).await,
    };
    let task_id = Uuid::now_v7();
    let queue = run.promise.queue_of(step).to_string();
    let timeout = run.promise.timeout_of(step);
    let deadline =
        Utc::now() + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
    sqlx::query(
        "INSERT INTO fulfil.attempts (task_id, run_id, step_id, attempt, status, handler, queue, input, deadline)
         VALUES ($1, $2, $3, $4, 'dispatched', $5, $6, $7, $8)",
    )
    .bind(task_id)
    .bind(run.run_id)
    .bind(&step.id)
    .bind(attempt)
    .bind(&step.uses)
    .bind(&queue)
    .bind(&input)
    .bind(deadline)
    .execute(run.conn())
    .await?;
    set_step(run, &step.id, StepStatus::Ready, attempt, None, None).await?;
    run.record(
        event::STEP_DISPATCHED,
        Some(&step.id),
        Some(attempt),
        json!({ "task_id": task_id, "handler": step.uses, "queue": queue, "deadline": deadline }),
    );
    let task = TaskMessage {
        task_id,
        run_id: run.run_id,
        step_id: step.id.clone(),
        attempt: attempt as u32,
        handler: step.uses.clone(),
        input,
        deadline,
        idempotency_key: format!("{}/{}", run.run_id, step.id),
        traceparent: None,
    };
    let payload = serde_json::to_value(&task).map_err(|e| RunError::Corrupt(e.to_string()))?;
    run.publish(run.names.task_subject(&queue), task_id.to_string(), payload);
    Ok(())
}

/// Updates a step's row and the in-memory copy the planner reads.
pub(super) async fn set_step(
    run: &mut RunTxn<'_>,
    step_id: &str,
    status: StepStatus,
    attempt: i32,
    outputs: Option<Value>,
    error: Option<&str>,
) -> Result<(), RunError> {
    sqlx::query(
        "UPDATE fulfil.steps SET status = $3, attempt = $4, outputs = COALESCE($5, outputs), error = $6, updated_at = now()
         WHERE run_id = $1 AND step_id = $2",
    )
    .bind(run.run_id)
    .bind(step_id)
    .bind(status.as_str())
    .bind(attempt)
    .bind(&outputs)
    .bind(error)
    .execute(run.conn())
    .await?;
    if let Some(row) = run.steps.get_mut(step_id) {
        row.status = status;
        row.attempt = attempt;
        if outputs.is_some() {
            row.outputs = outputs;
        }
    }
    Ok(())
}

/// Marks a step failed for good, recording why.
pub(super) async fn fail_step(
    run: &mut RunTxn<'_>,
    step_id: &str,
    attempt: i32,
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
    )
    .await?;
    run.record(
        event::STEP_FAILED,
        Some(step_id),
        (attempt > 0).then_some(attempt),
        json!({ "code": code, "message": message, "final": true }),
    );
    Ok(())
}

async fn finish(run: &mut RunTxn<'_>, outcome: Outcome) -> Result<(), RunError> {
    let (status, outputs, error) = match outcome {
        Outcome::Succeeded => match render_outputs(run) {
            Ok(outputs) => (RunStatus::Succeeded, Some(outputs), None),
            Err(message) => (RunStatus::Failed, None, Some(message)),
        },
        Outcome::Failed { failed_steps } => {
            let reasons: Vec<String> = failed_steps
                .iter()
                .map(|id| format!("step {id} failed"))
                .collect();
            (RunStatus::Failed, None, Some(reasons.join("; ")))
        }
    };
    if status == RunStatus::Failed {
        // Steps that never started will not: say so instead of leaving them pending.
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
                0,
                None,
                Some("run failed before this step started"),
            )
            .await?;
        }
    }
    sqlx::query(
        "UPDATE fulfil.runs SET status = $2, outputs = $3, error = $4, finished_at = now() WHERE id = $1",
    )
    .bind(run.run_id)
    .bind(status.as_str())
    .bind(&outputs)
    .bind(&error)
    .execute(run.conn())
    .await?;
    sqlx::query(
        "UPDATE fulfil.requests SET status = $2, outputs = $3, updated_at = now() WHERE id = $1",
    )
    .bind(run.request_id)
    .bind(status.as_str())
    .bind(&outputs)
    .execute(run.conn())
    .await?;
    run.status = status;
    let kind = if status == RunStatus::Succeeded {
        event::RUN_SUCCEEDED
    } else {
        event::RUN_FAILED
    };
    let data = json!({ "outputs": outputs, "error": error });
    run.record(kind, None, None, data.clone());
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

fn render_outputs(run: &RunTxn<'_>) -> Result<Value, String> {
    let context = render_context(run);
    let mut outputs = Map::new();
    for (name, template) in &run.promise.spec.outputs {
        let value = render_value(template, &context).map_err(|e| format!("output {name}: {e}"))?;
        outputs.insert(name.clone(), value);
    }
    Ok(Value::Object(outputs))
}
