//! Compound Promises on the real Postgres and NATS: a parent Promise's
//! `uses: promise` step files a child request and succeeds with its
//! outputs; a child that fails is compensated by its own saga and then
//! deleted by its parent's; a parent failing after its child succeeded
//! deletes the child (its teardown runs); links both ways in the API;
//! cycles refused when applied; a child the schema refuses fails the step
//! and stores nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fulfil_integration_tests::{StackOptions, TestStack};
use fulfil_worker::{Handler, StepError, TaskContext};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// Every call a test handler got: (handler, name); and whether
/// `test.verify` fails every call (an outage the operator then fixes).
#[derive(Default)]
struct Calls {
    seen: Mutex<Vec<(String, String)>>,
    verify_down: AtomicBool,
}

impl Calls {
    fn push(&self, handler: &str, name: &str) {
        if let Ok(mut calls) = self.seen.lock() {
            calls.push((handler.to_string(), name.to_string()));
        }
    }

    fn of(&self, handler: &str) -> Vec<String> {
        self.seen
            .lock()
            .map(|calls| {
                calls
                    .iter()
                    .filter(|(h, _)| h == handler)
                    .map(|(_, n)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Records its call by `input.name`; fails for good when `input.fail` is true.
struct Recording {
    handler: &'static str,
    calls: Arc<Calls>,
}

#[async_trait]
impl Handler for Recording {
    async fn handle(&self, _: &TaskContext, input: Value) -> Result<Value, StepError> {
        let name = input["name"].as_str().unwrap_or_default().to_string();
        self.calls.push(self.handler, &name);
        let down = self.handler == "test.verify" && self.calls.verify_down.load(Ordering::SeqCst);
        if input["fail"] == true || down {
            return Err(
                StepError::permanent(format!("{} refused {name}", self.handler))
                    .with_code("refused"),
            );
        }
        Ok(json!({ "endpoint": format!("{name}.db.internal:5432"), "by": self.handler }))
    }
}

/// The child: creates (undone by drop), then verifies; its own teardown.
const DATABASE: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: test-database, version: 1.0.0 }
spec:
  api:
    type: object
    required: [name]
    properties:
      name: { type: string, pattern: "^[a-z][a-z0-9-]*$" }
      broken: { type: boolean, default: false }
  workflow:
    steps:
      - id: create
        uses: test.create
        with: { name: "${{ params.name }}" }
        compensate: { uses: test.drop, with: { name: "${{ params.name }}" } }
      - id: verify
        needs: [create]
        uses: test.verify
        with: { name: "${{ params.name }}", fail: "${{ params.broken }}" }
  outputs:
    endpoint: "${{ steps.create.outputs.endpoint }}"
  delete:
    steps:
      - { id: teardown, uses: test.teardown, with: { name: "${{ params.name }}" } }
"#;

/// The parent: prepares (undone by unprepare), files a database, deploys
/// against its endpoint.
const APP: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: test-app, version: 1.0.0 }
spec:
  api:
    type: object
    required: [app]
    properties:
      app: { type: string }
      broken_db: { type: boolean, default: false }
      broken_deploy: { type: boolean, default: false }
  workflow:
    steps:
      - id: prepare
        uses: test.prepare
        with: { name: "${{ params.app }}" }
        compensate: { uses: test.unprepare, with: { name: "${{ params.app }}" } }
      - id: database
        needs: [prepare]
        uses: promise
        with:
          promise: test-database
          params: { name: "${{ params.app }}-db", broken: "${{ params.broken_db }}" }
      - id: deploy
        needs: [database]
        uses: test.deploy
        with:
          name: "${{ params.app }}"
          endpoint: "${{ steps.database.outputs.endpoint }}"
          fail: "${{ params.broken_deploy }}"
  outputs:
    endpoint: "${{ steps.database.outputs.endpoint }}"
"#;

async fn stack(calls: Arc<Calls>) -> anyhow::Result<TestStack> {
    let stack = TestStack::start_with(StackOptions {
        handlers: Box::new(move |h| {
            for handler in [
                "test.create",
                "test.drop",
                "test.verify",
                "test.teardown",
                "test.prepare",
                "test.unprepare",
                "test.deploy",
            ] {
                h.register(
                    handler,
                    Recording {
                        handler,
                        calls: calls.clone(),
                    },
                );
            }
        }),
        ..StackOptions::default()
    })
    .await?;
    stack.apply(DATABASE).await?;
    stack.apply(APP).await?;
    Ok(stack)
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"] == id))
        .unwrap_or(&Value::Null)
}

/// Waits (bounded) until `GET path` shows `field` == `want`.
async fn wait_for(stack: &TestStack, path: &str, field: &str, want: &str) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = stack.get(path).await?;
        if status == 200 && body[field] == want {
            return Ok(body);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{path}: {field} never became {want}: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn the_child(run: &Value) -> anyhow::Result<(String, String)> {
    let children = run["children"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("run has no children: {run:#}"))?;
    anyhow::ensure!(children.len() == 1, "one child expected: {run:#}");
    let child = &children[0];
    Ok((
        child["request_id"].as_str().unwrap_or_default().to_string(),
        child["run_id"].as_str().unwrap_or_default().to_string(),
    ))
}

#[tokio::test]
async fn a_promise_step_files_a_child_and_succeeds_with_its_outputs_linked_both_ways()
-> anyhow::Result<()> {
    let calls = Arc::new(Calls::default());
    let stack = stack(calls.clone()).await?;
    let run_id = stack.request("test-app", json!({ "app": "shop" })).await?;
    let run = stack.wait_finished(run_id, WAIT).await?;
    assert_eq!(run["status"], "succeeded", "{run:#}");

    // The parent's step succeeded with the child run's outputs, which the
    // next step read.
    let database = step(&run, "database");
    assert_eq!(database["status"], "succeeded");
    assert_eq!(
        database["outputs"],
        json!({ "endpoint": "shop-db.db.internal:5432" })
    );
    assert_eq!(run["outputs"]["endpoint"], "shop-db.db.internal:5432");
    assert_eq!(calls.of("test.deploy"), vec!["shop"]);
    assert_eq!(calls.of("test.create"), vec!["shop-db"]);

    // Parent -> child: the run lists it, its step names it.
    let (child_request, child_run) = the_child(&run)?;
    assert_eq!(database["child"]["request_id"], child_request.as_str());
    assert_eq!(database["child"]["promise"], "test-database");
    assert_eq!(database["child"]["status"], "succeeded");
    assert_eq!(database["attempts"][0]["handler"], "promise");
    let request_id = run["request_id"].as_str().unwrap_or_default();
    let (_, parent_request) = stack.get(&format!("/v1/requests/{request_id}")).await?;
    assert_eq!(
        parent_request["children"][0]["request_id"],
        child_request.as_str()
    );
    assert_eq!(parent_request["children"][0]["step"], "database");

    // Child -> parent: the child request and its run name the parent.
    let (_, child) = stack.get(&format!("/v1/requests/{child_request}")).await?;
    assert_eq!(child["promise"], "test-database");
    assert_eq!(child["status"], "succeeded");
    assert_eq!(
        child["params"],
        json!({ "name": "shop-db", "broken": false })
    );
    assert_eq!(
        child["parent"],
        json!({ "request_id": request_id, "run_id": run_id.to_string(), "step": "database" })
    );
    assert_eq!(child["run_id"], child_run.as_str());
    let (_, child_run_view) = stack.get(&format!("/v1/runs/{child_run}")).await?;
    assert_eq!(child_run_view["parent"]["run_id"], run_id.to_string());

    // History records the filing once.
    let history = stack.history(run_id).await?;
    let filed: Vec<&Value> = history
        .iter()
        .filter(|e| e["type"] == "child.filed")
        .collect();
    assert_eq!(filed.len(), 1, "{history:#?}");
    assert_eq!(filed[0]["data"]["request_id"], child_request.as_str());
    assert_eq!(filed[0]["data"]["replayed"], false);
    assert_eq!(stack.count("requests").await?, 2);

    // A reconcile of the parent re-runs its configure workflow over the
    // live child: it takes the child's outputs and files no second child.
    let reconcile = stack
        .http
        .post(format!("{}/v1/requests/{request_id}/reconcile", stack.api))
        .send()
        .await?;
    assert_eq!(reconcile.status().as_u16(), 202);
    let reconcile: Value = reconcile.json().await?;
    let reconcile_run = reconcile["run_id"].as_str().unwrap_or_default().parse()?;
    let reconciled = stack.wait_finished(reconcile_run, WAIT).await?;
    assert_eq!(reconciled["status"], "succeeded", "{reconciled:#}");
    assert_eq!(reconciled["kind"], "reconcile");
    assert_eq!(
        step(&reconciled, "database")["outputs"],
        json!({ "endpoint": "shop-db.db.internal:5432" })
    );
    assert_eq!(stack.count("requests").await?, 2);
    assert_eq!(calls.of("test.create"), vec!["shop-db"]);
    stack.stop().await
}

#[tokio::test]
async fn a_failed_child_is_compensated_by_its_own_saga_then_deleted_by_its_parents()
-> anyhow::Result<()> {
    let calls = Arc::new(Calls::default());
    let stack = stack(calls.clone()).await?;
    let run_id = stack
        .request("test-app", json!({ "app": "crm", "broken_db": true }))
        .await?;
    let run = stack.wait_finished(run_id, WAIT).await?;
    assert_eq!(run["status"], "compensated", "{run:#}");

    // The step failed naming the child and why it failed.
    let database = step(&run, "database");
    assert_eq!(database["status"], "failed", "{run:#}");
    let error = database["error"].as_str().unwrap_or_default();
    assert!(error.contains("child request"), "{error}");
    assert!(error.contains("test.verify refused crm-db"), "{error}");
    assert_eq!(database["attempts"][0]["error"]["code"], "child_failed");

    // The child's own saga undid its create ...
    let (child_request, child_run) = the_child(&run)?;
    let (_, child_run_view) = stack.get(&format!("/v1/runs/{child_run}")).await?;
    assert_eq!(
        child_run_view["status"], "compensated",
        "{child_run_view:#}"
    );
    assert_eq!(calls.of("test.drop"), vec!["crm-db"]);
    // ... then the parent's saga deleted it (its teardown ran) and undid
    // its own prepare; nothing was deployed.
    let child = wait_for(
        &stack,
        &format!("/v1/requests/{child_request}"),
        "status",
        "deleted",
    )
    .await?;
    assert_eq!(child["parent"]["step"], "database");
    assert_eq!(calls.of("test.teardown"), vec!["crm-db"]);
    assert_eq!(calls.of("test.unprepare"), vec!["crm"]);
    assert!(calls.of("test.deploy").is_empty());
    let database = step(&run, "database");
    assert_eq!(database["child"]["status"], "deleted");
    let undo = database["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["kind"] == "compensation")
        .ok_or_else(|| anyhow::anyhow!("no compensation attempt: {run:#}"))?;
    assert_eq!(undo["status"], "succeeded");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(error.contains("compensated"), "{error}");
    let history = stack.history(run_id).await?;
    assert!(
        history
            .iter()
            .any(|e| e["type"] == "child.delete_requested" && e["step"] == "database"),
        "{history:#?}"
    );
    stack.stop().await
}

#[tokio::test]
async fn a_parent_failing_after_its_child_succeeded_deletes_the_child() -> anyhow::Result<()> {
    let calls = Arc::new(Calls::default());
    let stack = stack(calls.clone()).await?;
    let run_id = stack
        .request("test-app", json!({ "app": "blog", "broken_deploy": true }))
        .await?;
    let run = stack.wait_finished(run_id, WAIT).await?;
    assert_eq!(run["status"], "compensated", "{run:#}");
    assert_eq!(step(&run, "deploy")["status"], "failed");
    assert_eq!(step(&run, "database")["status"], "compensated");
    let (child_request, child_run) = the_child(&run)?;
    let child = wait_for(
        &stack,
        &format!("/v1/requests/{child_request}"),
        "status",
        "deleted",
    )
    .await?;
    assert!(child["delete_run_id"].is_string(), "{child:#}");
    // The child's configure run had succeeded: its create is removed by its
    // teardown, not by its saga.
    let (_, child_run_view) = stack.get(&format!("/v1/runs/{child_run}")).await?;
    assert_eq!(child_run_view["status"], "succeeded");
    assert!(calls.of("test.drop").is_empty());
    assert_eq!(calls.of("test.teardown"), vec!["blog-db"]);
    assert_eq!(calls.of("test.unprepare"), vec!["blog"]);
    stack.stop().await
}

#[tokio::test]
async fn a_child_the_schema_refuses_fails_the_step_and_stores_no_request() -> anyhow::Result<()> {
    let calls = Arc::new(Calls::default());
    let stack = stack(calls.clone()).await?;
    // "Bad_Name-db" breaks the child's name pattern.
    let run_id = stack
        .request("test-app", json!({ "app": "Bad_Name" }))
        .await?;
    let run = stack.wait_finished(run_id, WAIT).await?;
    assert_eq!(run["status"], "compensated", "{run:#}");
    let database = step(&run, "database");
    assert_eq!(database["attempts"][0]["error"]["code"], "child_refused");
    let error = database["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("invalid parameters for Promise test-database") && error.contains("/name"),
        "{error}"
    );
    assert!(run.get("children").is_none(), "{run:#}");
    assert_eq!(stack.count("requests").await?, 1);
    assert!(calls.of("test.create").is_empty());
    // Its compensation had nothing to delete, and said so.
    let undo = database["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["kind"] == "compensation")
        .ok_or_else(|| anyhow::anyhow!("no compensation attempt: {run:#}"))?;
    assert_eq!(undo["status"], "succeeded", "{run:#}");
    assert_eq!(calls.of("test.unprepare"), vec!["Bad_Name"]);
    stack.stop().await
}

#[tokio::test]
async fn promises_that_would_file_each_other_are_refused_when_applied() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let a = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: loop-a, version: 1.0.0 }
spec:
  api: { type: object }
  workflow:
    steps:
      - { id: b, uses: promise, with: { promise: loop-b } }
"#;
    let b = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: loop-b, version: 1.0.0 }
spec:
  api: { type: object }
  workflow:
    steps:
      - { id: first, uses: noop }
      - { id: a, needs: [first], uses: promise, with: { promise: loop-a } }
"#;
    let selfish = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: loop-self, version: 1.0.0 }
spec:
  api: { type: object }
  workflow:
    steps:
      - { id: again, uses: promise, with: { promise: loop-self } }
"#;
    // A child that is not applied yet is fine: it is looked up when filed.
    let (status, body) = stack.put_promise(a).await?;
    assert_eq!(status, 201, "{body:#}");
    let (status, body) = stack.put_promise(b).await?;
    assert_eq!(status, 422, "{body:#}");
    let text = body.to_string();
    assert!(text.contains("loop-b -> loop-a -> loop-b"), "{text}");
    assert!(
        text.contains("spec.workflow.steps[1].with.promise"),
        "{text}"
    );
    let (status, body) = stack.put_promise(selfish).await?;
    assert_eq!(status, 422, "{body:#}");
    assert!(
        body.to_string().contains("loop-self -> loop-self"),
        "{body:#}"
    );
    // Nothing of either was stored.
    let (status, _) = stack.get("/v1/promises/loop-b").await?;
    assert_eq!(status, 404);
    assert_eq!(stack.count("promises").await?, 1);

    // A computed child Promise cannot be checked, so it is refused.
    let computed = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: computed, version: 1.0.0 }
spec:
  api: { type: object, properties: { which: { type: string } } }
  workflow:
    steps:
      - { id: c, uses: promise, retry: { max_attempts: 3 }, with: { promise: "${{ params.which }}" } }
"#;
    let (status, body) = stack.put_promise(computed).await?;
    assert_eq!(status, 422, "{body:#}");
    let text = body.to_string();
    assert!(text.contains("named literally"), "{text}");
    assert!(text.contains("takes no retry"), "{text}");
    stack.stop().await
}

#[tokio::test]
async fn retrying_a_compensated_parent_files_a_new_child_for_the_new_attempt() -> anyhow::Result<()>
{
    let calls = Arc::new(Calls::default());
    calls.verify_down.store(true, Ordering::SeqCst);
    let stack = stack(calls.clone()).await?;
    let run_id = stack.request("test-app", json!({ "app": "wiki" })).await?;
    let run = stack.wait_finished(run_id, WAIT).await?;
    assert_eq!(run["status"], "compensated", "{run:#}");
    let (first_child, _) = the_child(&run)?;
    wait_for(
        &stack,
        &format!("/v1/requests/{first_child}"),
        "status",
        "deleted",
    )
    .await?;

    // The outage is over; the operator retries the run.
    calls.verify_down.store(false, Ordering::SeqCst);
    let response = stack
        .http
        .post(format!("{}/v1/runs/{run_id}/retry", stack.api))
        .header("Fulfil-Actor", "cli:ops")
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(
        response.status().as_u16(),
        200,
        "{}",
        response.text().await?
    );
    let run = stack.wait_finished(run_id, WAIT).await?;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    // A new attempt of the step, a new child; the deleted one stays deleted.
    let children = run["children"].as_array().cloned().unwrap_or_default();
    assert_eq!(children.len(), 2, "{run:#}");
    assert_eq!(children[0]["request_id"], first_child.as_str());
    assert_eq!(children[0]["status"], "deleted");
    assert_eq!(children[1]["status"], "succeeded");
    let database = step(&run, "database");
    assert_eq!(database["child"]["request_id"], children[1]["request_id"]);
    assert_eq!(database["outputs"]["endpoint"], "wiki-db.db.internal:5432");
    assert_eq!(calls.of("test.create"), vec!["wiki-db", "wiki-db"]);
    stack.stop().await
}

/// A child that waits for an approval, so its parent's step stays waiting.
const GATED: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: test-gated, version: 1.0.0 }
spec:
  api: { type: object }
  workflow:
    steps:
      - { id: approve, uses: approval, with: { approvers: ["user:alice"] } }
  outputs:
    approved: "yes"
"#;

const WAITER: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: test-waiter, version: 1.0.0 }
spec:
  api: { type: object }
  workflow:
    steps:
      - { id: gated, uses: promise, with: { promise: test-gated } }
"#;

#[tokio::test]
async fn a_filing_timer_fired_again_finds_the_child_it_filed_and_files_no_other()
-> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack.apply(GATED).await?;
    stack.apply(WAITER).await?;
    let run_id = stack.request("test-waiter", json!({})).await?;
    // Wait (bounded) until the child is filed and waits for its approval.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (child_request, child_run) = loop {
        let run = stack.run(run_id).await?;
        if let (Some(child), Some("child")) = (
            run["children"].as_array().and_then(|c| c.first()),
            step(&run, "gated")["waiting_for"]["kind"].as_str(),
        ) {
            let waiting = step(&run, "gated")["waiting_for"].clone();
            assert_eq!(waiting["promise"], "test-gated", "{run:#}");
            assert_eq!(waiting["request_id"], child["request_id"], "{run:#}");
            break (
                child["request_id"].as_str().unwrap_or_default().to_string(),
                child["run_id"].as_str().unwrap_or_default().to_string(),
            );
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "never filed: {run:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (status, list) = stack.get("/v1/runs?waiting_for=child").await?;
    assert_eq!(status, 200);
    assert!(list.to_string().contains(&run_id.to_string()), "{list:#}");

    // The same attempt's filing timer, fired a second time (as a replay
    // after a crash would): it finds the child and files nothing.
    sqlx::query(
        "INSERT INTO fulfil.timers (run_id, step_id, kind, task_id, fire_at)
         SELECT run_id, step_id, 'child_file', task_id, now() FROM fulfil.attempts
         WHERE run_id = $1 AND step_id = 'gated' AND kind = 'action'",
    )
    .bind(run_id.as_uuid())
    .execute(&stack.pool)
    .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let filed = stack
            .history(run_id)
            .await?
            .into_iter()
            .filter(|e| e["type"] == "child.filed")
            .collect::<Vec<_>>();
        if filed.len() == 2 {
            assert_eq!(filed[0]["data"]["replayed"], false);
            assert_eq!(filed[1]["data"]["replayed"], true);
            assert_eq!(filed[1]["data"]["request_id"], child_request.as_str());
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{filed:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stack.count("requests").await?, 2);

    let approved = stack
        .http
        .post(format!(
            "{}/v1/runs/{child_run}/steps/approve/approve",
            stack.api
        ))
        .header("Fulfil-Actor", "user:alice")
        .send()
        .await?;
    assert_eq!(
        approved.status().as_u16(),
        200,
        "{}",
        approved.text().await?
    );
    let run = stack.wait_finished(run_id, WAIT).await?;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(step(&run, "gated")["outputs"], json!({ "approved": "yes" }));
    assert_eq!(stack.count("requests").await?, 2);
    stack.stop().await
}
