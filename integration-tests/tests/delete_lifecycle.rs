//! The delete lifecycle on the real Postgres and NATS: `DELETE
//! /v1/requests/{id}` runs the Promise's `delete` workflow as a run of
//! kind `delete`; a failed delete is retried; `force` deletes without a
//! teardown; a configure run still going stops at its step boundary first;
//! a Promise without `delete` deletes at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use fulfil_core::ids::RunId;
use fulfil_core::wire::{Outcome, Progress, ProgressMessage, ResultMessage};
use fulfil_integration_tests::{StackOptions, TestStack};
use fulfil_worker::{Handler, StepError, TaskContext};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Fails permanently until the test opens the gate.
struct Gate(Arc<AtomicBool>);

#[async_trait]
impl Handler for Gate {
    async fn handle(&self, _: &TaskContext, _: Value) -> Result<Value, StepError> {
        if self.0.load(Ordering::SeqCst) {
            Ok(json!({ "passed": true }))
        } else {
            Err(StepError::permanent("the gate is closed").with_code("gate_closed"))
        }
    }
}

/// A database: created by `echo`, torn down by a guard (the gate) and a
/// drop that reads the request's outputs.
const DATABASE: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: database, version: "1" }
spec:
  api: { type: object, properties: { name: { type: string } } }
  workflow:
    steps:
      - id: create
        uses: echo
        with: { db: "${{ params.name }}" }
  delete:
    steps:
      - id: guard
        uses: gate
      - id: drop
        needs: [guard]
        uses: echo
        with: { dropping: "${{ request.outputs.db }}", name: "${{ params.name }}" }
  outputs:
    db: "${{ steps.create.outputs.db }}"
"#;

/// A configure step held by the test (queue `held`), one after it, and a
/// teardown on the ordinary queue.
const HELD: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: held, version: "1" }
spec:
  workflow:
    steps:
      - id: hold
        uses: slow
        queue: held
        compensate: { uses: echo }
      - id: after
        needs: [hold]
        uses: echo
  delete:
    steps:
      - id: teardown
        uses: echo
        with: { had: "${{ request.outputs }}" }
"#;

/// No teardown.
const PLAIN: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: plain, version: "1" }
spec:
  workflow:
    steps:
      - { id: only, uses: echo }
"#;

async fn stack(gate: Arc<AtomicBool>) -> anyhow::Result<TestStack> {
    TestStack::start_with(StackOptions {
        handlers: Box::new(move |h| {
            h.register("gate", Gate(gate.clone()));
        }),
        ..StackOptions::default()
    })
    .await
}

/// Files a request; returns (request id, configure run id).
async fn file(stack: &TestStack, promise: &str, params: Value) -> anyhow::Result<(String, RunId)> {
    let (status, _, body) = stack
        .post_request(promise, json!({ "params": params }), None)
        .await?;
    anyhow::ensure!(status == 202, "request refused with {status}: {body}");
    Ok((
        body["request_id"].as_str().unwrap_or_default().to_string(),
        body["run_id"].as_str().unwrap_or_default().parse()?,
    ))
}

/// `DELETE /v1/requests/{id}`; returns status, `Location` and body.
async fn delete(
    stack: &TestStack,
    request: &str,
    force: bool,
    actor: Option<&str>,
) -> anyhow::Result<(u16, Option<String>, Value)> {
    let mut call = stack.http.delete(format!(
        "{}/v1/requests/{request}{}",
        stack.api,
        if force { "?force=true" } else { "" }
    ));
    if let Some(actor) = actor {
        call = call.header("Fulfil-Actor", actor);
    }
    let response = call.send().await?;
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((status, location, response.json().await?))
}

async fn request(stack: &TestStack, id: &str) -> anyhow::Result<Value> {
    let (status, body) = stack.get(&format!("/v1/requests/{id}")).await?;
    anyhow::ensure!(status == 200, "GET request {id}: {status} {body}");
    Ok(body)
}

/// Polls the request until its status is `want`.
async fn wait_request(stack: &TestStack, id: &str, want: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = request(stack, id).await?;
        if body["status"] == want {
            return Ok(body);
        }
        anyhow::ensure!(Instant::now() < deadline, "request never {want}: {body:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn kinds(history: &[Value]) -> Vec<&str> {
    history.iter().filter_map(|e| e["type"].as_str()).collect()
}

fn id_of(body: &Value, field: &str) -> anyhow::Result<RunId> {
    Ok(body[field]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no {field} in {body}"))?
        .parse()?)
}

#[tokio::test]
async fn delete_runs_the_teardown_and_a_failed_delete_is_retried() -> anyhow::Result<()> {
    let gate = Arc::new(AtomicBool::new(false));
    let stack = stack(gate.clone()).await?;
    stack.apply(DATABASE).await?;
    let (request_id, configure) = file(&stack, "database", json!({ "name": "orders" })).await?;
    assert_eq!(
        stack.wait_finished(configure, WAIT).await?["status"],
        "succeeded"
    );
    assert_eq!(
        request(&stack, &request_id).await?["delete_run_id"],
        Value::Null
    );

    // The gate is closed: the teardown fails and the request says so.
    let (status, location, body) = delete(&stack, &request_id, false, Some("user:dba")).await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "deleting");
    assert_eq!(body["forced"], false);
    let delete_run = id_of(&body, "run_id")?;
    assert_eq!(location, Some(format!("/v1/runs/{delete_run}")));

    // Deleting twice answers the same delete run and starts nothing.
    let (status, _, again) = delete(&stack, &request_id, false, None).await?;
    assert_eq!(status, 202);
    assert_eq!(id_of(&again, "run_id")?, delete_run);
    assert_eq!(again["replayed"], true);

    let run = stack.wait_finished(delete_run, WAIT).await?;
    assert_eq!(run["kind"], "delete");
    assert_eq!(run["status"], "failed");
    assert_eq!(run["steps"][0]["id"], "guard");
    let failed = wait_request(&stack, &request_id, "delete_failed").await?;
    assert_eq!(id_of(&failed, "delete_run_id")?, delete_run);
    assert_eq!(
        failed["outputs"],
        json!({ "db": "orders" }),
        "outputs are kept"
    );
    let history = stack.history(delete_run).await?;
    let delete_failed = history
        .iter()
        .find(|e| e["type"] == "request.delete_failed")
        .ok_or_else(|| anyhow::anyhow!("no request.delete_failed in {history:#?}"))?;
    assert_eq!(delete_failed["data"]["request_id"], json!(request_id));
    assert!(
        delete_failed["data"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the gate is closed")),
        "{delete_failed}"
    );
    assert_eq!(history[0]["type"], "request.delete_requested");
    assert_eq!(history[0]["actor"], "user:dba");

    // Retried, the request is deleting again, then deleted.
    gate.store(true, Ordering::SeqCst);
    let response = stack
        .http
        .post(format!("{}/v1/runs/{delete_run}/retry", stack.api))
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    let deleted = wait_request(&stack, &request_id, "deleted").await?;
    assert_eq!(deleted["outputs"], json!({ "db": "orders" }));
    let run = stack.wait_finished(delete_run, WAIT).await?;
    assert_eq!(run["status"], "succeeded");
    let drop = &run["steps"][1];
    assert_eq!(drop["id"], "drop");
    assert_eq!(drop["status"], "succeeded");
    assert_eq!(
        drop["outputs"],
        json!({ "dropping": "orders", "name": "orders" }),
        "the teardown saw the request's outputs and params"
    );
    let history = stack.history(delete_run).await?;
    let kinds = kinds(&history);
    assert!(kinds.contains(&"run.retried"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"run.succeeded"), "{kinds:?}");
    assert!(kinds.contains(&"request.deleted"), "{kinds:?}");

    // The runs list filters by kind, and refuses a kind it does not know.
    let (status, list) = stack.get("/v1/runs?kind=delete").await?;
    assert_eq!(status, 200);
    let items = list["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{list:#}");
    assert_eq!(id_of(&items[0], "id")?, delete_run);
    let (status, list) = stack.get("/v1/runs?kind=configure").await?;
    assert_eq!(status, 200);
    assert!(
        list["items"]
            .as_array()
            .is_some_and(|i| i.iter().all(|r| r["kind"] == "configure"))
    );
    let (status, problem) = stack.get("/v1/runs?kind=teardown").await?;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("configure, delete, reconcile"))
    );

    // A request that does not exist is a 404 problem.
    let (status, _, problem) =
        delete(&stack, "0193a1c2-7b3e-7c1a-9f00-3d2e1a4b5c6d", false, None).await?;
    assert_eq!(status, 404, "{problem}");
    stack.stop().await
}

#[tokio::test]
async fn force_and_a_promise_without_delete_delete_at_once() -> anyhow::Result<()> {
    let stack = stack(Arc::default()).await?;
    stack.apply(DATABASE).await?;
    stack.apply(PLAIN).await?;

    // Forced: deleted now, no teardown dispatched, the actor in history.
    let (request_id, configure) = file(&stack, "database", json!({ "name": "x" })).await?;
    stack.wait_finished(configure, WAIT).await?;
    let (status, location, body) = delete(&stack, &request_id, true, Some("user:root")).await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "deleted");
    assert_eq!(body["forced"], true);
    assert_eq!(body["run_id"], Value::Null);
    assert_eq!(location, None);
    let deleted = request(&stack, &request_id).await?;
    assert_eq!(deleted["status"], "deleted");
    assert_eq!(deleted["delete_run_id"], Value::Null);
    let history = stack.history(configure).await?;
    let event = history
        .iter()
        .find(|e| e["type"] == "request.deleted")
        .ok_or_else(|| anyhow::anyhow!("no request.deleted in {history:#?}"))?;
    assert_eq!(event["actor"], "user:root");
    assert_eq!(event["data"]["forced"], true);
    let (_, delete_runs) = stack.get("/v1/runs?kind=delete").await?;
    assert_eq!(delete_runs["items"], json!([]), "no delete run");
    let teardown_tasks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM fulfil.attempts WHERE handler = 'gate'")
            .fetch_one(&stack.pool)
            .await?;
    assert_eq!(teardown_tasks, 0, "no delete task was dispatched");
    let (status, _, again) = delete(&stack, &request_id, false, None).await?;
    assert_eq!((status, again["status"].clone()), (202, json!("deleted")));

    // A Promise without `delete`: deleted at once, no run.
    let (request_id, configure) = file(&stack, "plain", json!({})).await?;
    stack.wait_finished(configure, WAIT).await?;
    let (status, _, body) = delete(&stack, &request_id, false, None).await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "deleted");
    assert_eq!(body["run_id"], Value::Null);
    assert_eq!(body["forced"], false);
    let history = stack.history(configure).await?;
    let event = history
        .iter()
        .find(|e| e["type"] == "request.deleted")
        .ok_or_else(|| anyhow::anyhow!("no request.deleted in {history:#?}"))?;
    assert_eq!(event["actor"], "api");
    assert_eq!(event["data"]["forced"], false);
    // A configure run of a deleted request is not retried.
    let response = stack
        .http
        .post(format!("{}/v1/runs/{configure}/retry", stack.api))
        .json(&json!({ "step": "only" }))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 409);

    // Concurrent deletes serialise on the request: one delete run.
    let (request_id, configure) = file(&stack, "database", json!({ "name": "y" })).await?;
    stack.wait_finished(configure, WAIT).await?;
    let (first, second) = tokio::join!(
        delete(&stack, &request_id, false, None),
        delete(&stack, &request_id, false, None)
    );
    let (first, second) = (first?, second?);
    assert_eq!((first.0, second.0), (202, 202));
    assert_eq!(id_of(&first.2, "run_id")?, id_of(&second.2, "run_id")?);
    assert_ne!(
        first.2["replayed"], second.2["replayed"],
        "one of them started it"
    );
    let (_, delete_runs) = stack.get("/v1/runs?kind=delete").await?;
    assert_eq!(delete_runs["items"].as_array().map(Vec::len), Some(1));
    stack.stop().await
}

#[tokio::test]
async fn delete_during_a_configure_run_stops_it_at_its_step_boundary() -> anyhow::Result<()> {
    let stack = stack(Arc::default()).await?;
    stack.apply(HELD).await?;
    let (request_id, configure) = file(&stack, "held", json!({})).await?;
    let task = stack.take_task("held", WAIT).await?;
    let started = ProgressMessage {
        task_id: task.task_id,
        run_id: task.run_id,
        step_id: task.step_id.clone(),
        attempt: task.attempt,
        worker_id: "held-worker".into(),
        progress: Progress::Started,
        at: Utc::now(),
        details: None,
    };
    stack
        .publish_json(stack.names.progress_subject(), &started)
        .await?;
    stack
        .wait_for_event(configure, "step.started", WAIT)
        .await?;

    let (status, _, body) = delete(&stack, &request_id, false, None).await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "deleting");
    let delete_run = id_of(&body, "run_id")?;
    let run = stack.run(configure).await?;
    assert_eq!(run["status"], "running", "the in-flight step is not killed");
    assert_eq!(run["steps"][0]["status"], "running");
    assert_eq!(run["steps"][0]["attempts"][0]["status"], "running");
    assert_eq!(run["steps"][1]["status"], "cancelled", "no new step starts");
    let (status, _) = stack.get(&format!("/v1/runs/{delete_run}")).await?;
    assert_eq!(status, 404, "the delete run waits for the configure run");
    assert_eq!(request(&stack, &request_id).await?["status"], "deleting");

    // The held attempt finishes: its result is applied, nothing is undone,
    // and the delete run starts.
    let result = ResultMessage {
        task_id: task.task_id,
        run_id: task.run_id,
        step_id: task.step_id.clone(),
        attempt: task.attempt,
        worker_id: "held-worker".into(),
        outcome: Outcome::Ok {
            output: json!({ "held": true }),
        },
        started_at: Utc::now(),
        finished_at: Utc::now(),
    };
    stack
        .publish_json(stack.names.results_subject(), &result)
        .await?;
    let run = stack.wait_finished(configure, WAIT).await?;
    assert_eq!(run["status"], "cancelled");
    assert!(
        run["error"]
            .as_str()
            .is_some_and(|e| e.contains("request deleted") && e.contains(&delete_run.to_string())),
        "{run:#}"
    );
    assert_eq!(run["steps"][0]["status"], "succeeded");
    assert_eq!(run["steps"][0]["outputs"], json!({ "held": true }));
    assert_eq!(run["steps"][0]["attempts"][0]["status"], "succeeded");
    assert_eq!(
        run["steps"][1]["attempts"],
        json!([]),
        "after never started"
    );
    let history = stack.history(configure).await?;
    let kinds = kinds(&history);
    assert!(
        !kinds
            .iter()
            .any(|k| k.starts_with("compensation.") || *k == "run.compensating"),
        "nothing is compensated: {kinds:?}"
    );
    assert!(kinds.contains(&"step.succeeded"), "{kinds:?}");

    let deleted = wait_request(&stack, &request_id, "deleted").await?;
    assert_eq!(id_of(&deleted, "delete_run_id")?, delete_run);
    let teardown = stack.wait_finished(delete_run, WAIT).await?;
    assert_eq!(teardown["kind"], "delete");
    assert_eq!(teardown["status"], "succeeded");
    assert_eq!(teardown["steps"][0]["id"], "teardown");
    assert_eq!(teardown["steps"][0]["outputs"], json!({ "had": {} }));
    let (status, _, again) = delete(&stack, &request_id, false, None).await?;
    assert_eq!(status, 202);
    assert_eq!(id_of(&again, "run_id")?, delete_run);
    stack.stop().await
}
