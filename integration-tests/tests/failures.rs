//! Failure semantics on the real Postgres and NATS: retries and backoff,
//! permanent errors, retry-after, every timeout kind, late results,
//! compensation order, cancel, retry, and poison messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fulfil_core::ids::{RunId, TaskId};
use fulfil_core::wire::{Outcome, Progress, ProgressMessage, ResultMessage, TaskMessage};
use fulfil_integration_tests::{StackOptions, TestStack};
use fulfil_worker::{Handler, StepError, TaskContext};
use futures::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// Fails `fail_times` times per step (counted by idempotency key), then succeeds.
#[derive(Default)]
struct Flaky {
    calls: Mutex<HashMap<String, u64>>,
}

#[async_trait]
impl Handler for Flaky {
    async fn handle(&self, task: &TaskContext, input: Value) -> Result<Value, StepError> {
        let seen = {
            let mut calls = self
                .calls
                .lock()
                .map_err(|_| StepError::permanent("poisoned"))?;
            let n = calls.entry(task.idempotency_key.clone()).or_default();
            *n += 1;
            *n
        };
        let fail_times = input["fail_times"].as_u64().unwrap_or(0);
        let code = input["code"].as_str().unwrap_or("flaky");
        if seen <= fail_times {
            return Err(match input["retry_after_ms"].as_u64() {
                Some(ms) => StepError::retry_after("throttled", Duration::from_millis(ms)),
                None if input["permanent"] == true => StepError::permanent("rejected"),
                None => StepError::retryable(format!("failure {seen}")),
            }
            .with_code(code));
        }
        Ok(json!({ "calls": seen }))
    }
}

/// Sleeps `ms`, heartbeating every `beat_ms` when given.
struct Sleep;

#[async_trait]
impl Handler for Sleep {
    async fn handle(&self, task: &TaskContext, input: Value) -> Result<Value, StepError> {
        let total = Duration::from_millis(input["ms"].as_u64().unwrap_or(0));
        let beat = input["beat_ms"].as_u64().map(Duration::from_millis);
        let started = tokio::time::Instant::now();
        while started.elapsed() < total {
            let step = beat
                .unwrap_or(total)
                .min(total.saturating_sub(started.elapsed()));
            tokio::time::sleep(step).await;
            task.heartbeat(Some(
                json!({ "elapsed_ms": started.elapsed().as_millis() as u64 }),
            ));
        }
        Ok(json!({ "slept_ms": total.as_millis() as u64 }))
    }
}

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

async fn stack_with(gate: Arc<AtomicBool>) -> anyhow::Result<TestStack> {
    TestStack::start_with(StackOptions {
        handlers: Box::new(move |h| {
            h.register("flaky", Flaky::default())
                .register("test.sleep", Sleep)
                .register("gate", Gate(gate.clone()));
        }),
        ..StackOptions::default()
    })
    .await
}

fn events<'a>(history: &'a [Value], kind: &str) -> Vec<&'a Value> {
    history.iter().filter(|e| e["type"] == kind).collect()
}

fn at(event: &Value) -> DateTime<Utc> {
    event["at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_default()
}

fn run_id(run: &Value) -> RunId {
    run["id"]
        .as_str()
        .and_then(|s| s.parse::<Uuid>().ok())
        .unwrap_or_default()
        .into()
}

#[tokio::test]
async fn retry_backs_off_then_succeeds_and_permanent_errors_are_not_retried() -> anyhow::Result<()>
{
    let stack = stack_with(Arc::default()).await?;
    stack
        .apply(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: retries, version: "1" }
spec:
  api: { type: object, properties: { fail_times: { type: integer }, permanent: { type: boolean },
         code: { type: string }, retry_after_ms: { type: integer } } }
  workflow:
    steps:
      - id: call
        uses: flaky
        with: "${{ params }}"
        retry: { max_attempts: 4, initial: 200ms, max: 1s, multiplier: 2, jitter: 0.2, non_retryable: [quota_exceeded] }
"#,
        )
        .await?;

    // Fails twice, then succeeds: 3 attempts, backoffs 200ms and 400ms ±20%.
    let run = stack.request("retries", json!({ "fail_times": 2 })).await?;
    let run = stack.wait_finished(run, WAIT).await?;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][0]["attempt"], 3);
    assert_eq!(run["steps"][0]["outputs"]["calls"], 3);
    let attempts = run["steps"][0]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let statuses: Vec<&str> = attempts
        .iter()
        .filter_map(|a| a["status"].as_str())
        .collect();
    assert_eq!(statuses, vec!["failed", "failed", "succeeded"]);
    assert_eq!(attempts[0]["error"]["code"], "flaky");
    let history = stack.history(run_id(&run)).await?;
    let scheduled = events(&history, "step.retry_scheduled");
    assert_eq!(scheduled.len(), 2);
    let dispatched = events(&history, "step.dispatched");
    for (i, (lo, hi)) in [(160u64, 240u64), (320, 480)].into_iter().enumerate() {
        let delay = scheduled[i]["data"]["delay_ms"].as_u64().unwrap_or(0);
        assert!(
            (lo..=hi).contains(&delay),
            "backoff {i} = {delay} ms not in [{lo}, {hi}]"
        );
        // The retry's due time is set when the failure is decided; the
        // events' own times are when their rows were written, which on a
        // busy machine can be late by more than any fixed margin.
        let due: DateTime<Utc> = scheduled[i]["data"]["fire_at"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no fire_at in {:#}", scheduled[i]))?;
        assert!(
            at(dispatched[i + 1]) >= due,
            "attempt {} dispatched at {}, before its backoff ended at {due}",
            i + 2,
            at(dispatched[i + 1])
        );
        assert_eq!(scheduled[i]["data"]["next_attempt"], i as u64 + 2);
    }

    // A permanent error, and a retryable one whose code the policy lists as
    // non-retryable, fail at once.
    for params in [
        json!({ "fail_times": 9, "permanent": true }),
        json!({ "fail_times": 9, "code": "quota_exceeded" }),
    ] {
        let run = stack.request("retries", params.clone()).await?;
        let run = stack.wait_finished(run, WAIT).await?;
        assert_eq!(run["status"], "failed", "{params}: {run:#}");
        assert_eq!(
            run["steps"][0]["attempts"].as_array().map(Vec::len),
            Some(1),
            "{params}"
        );
        assert!(
            run["error"]
                .as_str()
                .unwrap_or("")
                .contains("step call failed"),
            "{run:#}"
        );
    }

    // Retry-after beats the policy's 200 ms.
    let run = stack
        .request(
            "retries",
            json!({ "fail_times": 1, "retry_after_ms": 1200 }),
        )
        .await?;
    let run = stack.wait_finished(run, WAIT).await?;
    assert_eq!(run["status"], "succeeded");
    let history = stack.history(run_id(&run)).await?;
    let scheduled = events(&history, "step.retry_scheduled");
    assert!(
        scheduled[0]["data"]["delay_ms"].as_u64().unwrap_or(0) >= 1200,
        "{:#}",
        scheduled[0]
    );
    let dispatched = events(&history, "step.dispatched");
    assert!((at(dispatched[1]) - at(dispatched[0])).num_milliseconds() >= 1200);
    stack.stop().await
}

async fn report_started(stack: &TestStack, task: &TaskMessage) -> anyhow::Result<()> {
    let report = ProgressMessage {
        task_id: task.task_id,
        run_id: task.run_id,
        step_id: task.step_id.clone(),
        attempt: task.attempt,
        worker_id: "rogue".into(),
        progress: Progress::Started,
        at: Utc::now(),
        details: None,
    };
    stack
        .publish_json(stack.names.progress_subject(), &report)
        .await
}

#[tokio::test]
async fn every_timeout_kind_fires_and_late_results_are_ignored() -> anyhow::Result<()> {
    let stack = stack_with(Arc::default()).await?;
    stack
        .apply(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: timeouts, version: "1" }
spec:
  api: { type: object, properties: { kind: { type: string } } }
  workflow:
    steps:
      - id: attempt-timeout
        if: "params.kind == 'attempt'"
        uses: slow
        queue: rogue
        timeout: 600ms
      - id: heartbeat-timeout
        if: "params.kind == 'heartbeat'"
        uses: slow
        queue: rogue2
        timeout: 30s
        heartbeat_timeout: 500ms
      - id: never-started
        if: "params.kind == 'schedule'"
        uses: noop
        queue: nobody
        schedule_to_start: 300ms
      - id: heartbeats-keep-it-alive
        if: "params.kind == 'alive'"
        uses: test.sleep
        with: { ms: 1500, beat_ms: 100 }
        heartbeat_timeout: 400ms
"#,
        )
        .await?;

    // Start-to-finish: the rogue worker starts the attempt and answers late.
    let run = stack
        .request("timeouts", json!({ "kind": "attempt" }))
        .await?;
    let task = stack.take_task("rogue", WAIT).await?;
    report_started(&stack, &task).await?;
    let history = stack.wait_for_event(run, "step.timed_out", WAIT).await?;
    let timed_out = events(&history, "step.timed_out")[0];
    assert_eq!(timed_out["data"]["timeout"], "attempt_timeout");
    let started = events(&history, "step.started")[0];
    let after = (at(timed_out) - at(started)).num_milliseconds();
    assert!(
        (600..5000).contains(&after),
        "timed out {after} ms after start"
    );
    let late = ResultMessage {
        task_id: task.task_id,
        run_id: task.run_id,
        step_id: task.step_id.clone(),
        attempt: task.attempt,
        worker_id: "rogue".into(),
        outcome: Outcome::Ok {
            output: json!({ "late": true }),
        },
        started_at: Utc::now(),
        finished_at: Utc::now(),
    };
    stack
        .publish_json(stack.names.results_subject(), &late)
        .await?;
    let history = stack.wait_for_event(run, "result.ignored", WAIT).await?;
    let ignored = events(&history, "result.ignored")[0];
    assert!(
        ignored["data"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("timed_out"),
        "{ignored:#}"
    );
    let run_view = stack.wait_finished(run, WAIT).await?;
    assert_eq!(run_view["status"], "failed");
    assert_eq!(run_view["steps"][0]["attempts"][0]["status"], "timed_out");
    assert_eq!(
        run_view["steps"][0]["outputs"],
        Value::Null,
        "the late output was not applied"
    );

    // Heartbeat: started, then silence.
    let run = stack
        .request("timeouts", json!({ "kind": "heartbeat" }))
        .await?;
    let task = stack.take_task("rogue2", WAIT).await?;
    report_started(&stack, &task).await?;
    let history = stack.wait_for_event(run, "step.timed_out", WAIT).await?;
    assert_eq!(
        events(&history, "step.timed_out")[0]["data"]["timeout"],
        "heartbeat_timeout"
    );
    assert_eq!(stack.wait_finished(run, WAIT).await?["status"], "failed");

    // Schedule-to-start: no worker serves the queue.
    let run = stack
        .request("timeouts", json!({ "kind": "schedule" }))
        .await?;
    let run_view = stack.wait_finished(run, WAIT).await?;
    assert_eq!(run_view["status"], "failed");
    let attempt = &run_view["steps"][2]["attempts"][0];
    assert_eq!(attempt["status"], "timed_out");
    assert_eq!(attempt["error"]["code"], "schedule_to_start_timeout");

    // A handler that heartbeats outlives its heartbeat timeout many times over.
    let run = stack
        .request("timeouts", json!({ "kind": "alive" }))
        .await?;
    let run_view = stack.wait_finished(run, WAIT).await?;
    assert_eq!(run_view["status"], "succeeded", "{run_view:#}");
    assert_eq!(
        run_view["steps"][3]["attempts"].as_array().map(Vec::len),
        Some(1)
    );
    stack.stop().await
}

#[tokio::test]
async fn run_timeout_stops_the_run() -> anyhow::Result<()> {
    let stack = stack_with(Arc::default()).await?;
    stack
        .apply(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: slow-run, version: "1" }
spec:
  timeout: 800ms
  workflow:
    steps:
      - { id: first, uses: echo }
      - { id: slow, uses: test.sleep, needs: [first], with: { ms: 5000 }, timeout: 30s }
      - { id: after, uses: echo, needs: [slow] }
"#,
        )
        .await?;
    let run = stack.request("slow-run", json!({})).await?;
    let run = stack.wait_finished(run, WAIT).await?;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(
        run["error"]
            .as_str()
            .unwrap_or("")
            .contains("run timed out after 800ms"),
        "{run:#}"
    );
    let statuses: Vec<&str> = run["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["status"].as_str())
        .collect();
    assert_eq!(statuses, vec!["succeeded", "cancelled", "cancelled"]);
    let history = stack.history(run_id(&run)).await?;
    assert_eq!(events(&history, "run.timed_out").len(), 1);
    stack.stop().await
}

/// Records the compensation calls it receives, in order.
async fn undo_server()
-> anyhow::Result<(String, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>)> {
    use axum::extract::Path;
    use axum::routing::post;
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorded = calls.clone();
    let app = axum::Router::new()
        .route(
            "/undo/{step}",
            post(move |Path(step): Path<String>| {
                let recorded = recorded.clone();
                async move {
                    if let Ok(mut calls) = recorded.lock() {
                        calls.push(step);
                    }
                    // Slow enough that parallel compensations overlap.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    axum::Json(json!({ "undone": true }))
                }
            }),
        )
        .route(
            "/broken/{step}",
            post(|| async { (axum::http::StatusCode::BAD_REQUEST, "cannot delete") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((base, calls, server))
}

fn saga_promise(name: &str, base: &str, undo_path: &str) -> String {
    format!(
        r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: {name}, version: "1" }}
spec:
  defaults:
    retry: {{ max_attempts: 2, initial: 100ms }}
  workflow:
    steps:
      - id: network
        uses: echo
        with: {{ vpc: vpc-1 }}
        compensate: {{ uses: http, with: {{ method: POST, url: "{base}/{undo_path}/network", body: {{ vpc: "${{{{ steps.network.outputs.vpc }}}}" }} }} }}
      - id: database
        needs: [network]
        uses: echo
        with: {{ db: db-1 }}
        compensate: {{ uses: http, with: {{ method: POST, url: "{base}/undo/database", body: {{ input: "${{{{ steps.database.inputs.db }}}}" }} }} }}
      - id: cache
        needs: [network]
        uses: echo
        compensate: {{ uses: http, with: {{ method: POST, url: "{base}/undo/cache" }} }}
      - id: register
        needs: [database, cache]
        uses: flaky
        with: {{ fail_times: 99, permanent: true }}
"#
    )
}

#[tokio::test]
async fn failed_diamond_compensates_in_reverse_dependency_order() -> anyhow::Result<()> {
    let (base, calls, server) = undo_server().await?;
    let stack = stack_with(Arc::default()).await?;
    stack.apply(&saga_promise("saga", &base, "undo")).await?;
    let run = stack.request("saga", json!({})).await?;
    let run = stack.wait_finished(run, WAIT).await?;
    assert_eq!(run["status"], "compensated", "{run:#}");
    let order = calls.lock().map(|c| c.clone()).unwrap_or_default();
    assert_eq!(order.len(), 3, "{order:?}");
    assert_eq!(
        order[2], "network",
        "network is undone after database and cache: {order:?}"
    );
    let mut first_two = order[..2].to_vec();
    first_two.sort();
    assert_eq!(first_two, vec!["cache", "database"]);
    let steps: Vec<(&str, &str)> = run["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["id"].as_str()?, s["status"].as_str()?)))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("network", "compensated"),
            ("database", "compensated"),
            ("cache", "compensated"),
            ("register", "failed")
        ]
    );
    let error = run["error"].as_str().unwrap_or("");
    assert!(
        error.contains("step register failed") && error.contains("compensated"),
        "{error}"
    );
    let history = stack.history(run_id(&run)).await?;
    assert_eq!(events(&history, "run.compensating").len(), 1);
    assert_eq!(events(&history, "compensation.succeeded").len(), 3);
    // The compensation read the original step's input.
    let database_undo = run["steps"][1]["attempts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["handler"] == "http"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(database_undo["input"]["body"], json!({ "input": "db-1" }));

    // A compensation that fails for good fails the run, naming it.
    calls.lock().map(|mut c| c.clear()).ok();
    stack
        .apply(&saga_promise("saga-broken", &base, "broken"))
        .await?;
    let run = stack.request("saga-broken", json!({})).await?;
    let run = stack.wait_finished(run, WAIT).await?;
    assert_eq!(run["status"], "failed", "{run:#}");
    let error = run["error"].as_str().unwrap_or("");
    assert!(
        error.contains("compensation of step network failed"),
        "{error}"
    );
    assert_eq!(
        run["steps"][0]["status"], "succeeded",
        "network was not undone"
    );
    let history = stack.history(run_id(&run)).await?;
    let failed = events(&history, "compensation.failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["step"], "network");
    server.abort();
    stack.stop().await
}

#[tokio::test]
async fn cancel_compensates_and_retry_reruns_only_what_failed() -> anyhow::Result<()> {
    let (base, calls, server) = undo_server().await?;
    let gate = Arc::new(AtomicBool::new(false));
    let stack = stack_with(gate.clone()).await?;
    stack
        .apply(&format!(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: long, version: "1" }}
spec:
  workflow:
    steps:
      - id: create
        uses: echo
        with: {{ id: res-1 }}
        compensate: {{ uses: http, with: {{ method: POST, url: "{base}/undo/create" }} }}
      - id: wait
        needs: [create]
        uses: test.sleep
        with: {{ ms: 1500 }}
        compensate: {{ uses: http, with: {{ method: POST, url: "{base}/undo/wait" }} }}
      - id: never
        needs: [wait]
        uses: echo
"#
        ))
        .await?;
    let cancel = |run: RunId, body: Value| {
        stack
            .http
            .post(format!("{}/v1/runs/{run}/cancel", stack.api))
            .header("Fulfil-Actor", "cli:alice")
            .json(&body)
            .send()
    };

    // Cancel with compensation: `wait` finishes, then both are undone.
    let run = stack.request("long", json!({})).await?;
    stack.wait_for_event(run, "step.started", WAIT).await?;
    let response = cancel(run, json!({ "reason": "wrong region" })).await?;
    assert_eq!(response.status().as_u16(), 200);
    let view = stack.wait_finished(run, WAIT).await?;
    assert_eq!(view["status"], "cancelled", "{view:#}");
    assert_eq!(
        calls.lock().map(|c| c.clone()).unwrap_or_default(),
        vec!["wait", "create"]
    );
    assert_eq!(view["steps"][2]["status"], "cancelled");
    assert!(
        view["error"]
            .as_str()
            .unwrap_or("")
            .contains("cancelled by cli:alice: wrong region")
    );
    let history = stack.history(run).await?;
    let requested = events(&history, "run.cancel_requested");
    assert_eq!(requested[0]["actor"], "cli:alice");
    let again = cancel(run, json!({})).await?;
    assert_eq!(
        again.status().as_u16(),
        409,
        "a finished run cannot be cancelled"
    );

    // Cancel without compensation ends at once and undoes nothing.
    calls.lock().map(|mut c| c.clear()).ok();
    let run = stack.request("long", json!({})).await?;
    stack.wait_for_event(run, "step.started", WAIT).await?;
    let body: Value = cancel(run, json!({ "compensate": false }))
        .await?
        .json()
        .await?;
    assert_eq!(body["status"], "cancelled");
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let view = stack.run(run).await?;
    assert_eq!(view["steps"][1]["status"], "cancelled", "{view:#}");
    assert!(calls.lock().map(|c| c.is_empty()).unwrap_or(false));
    let history = stack.history(run).await?;
    assert_eq!(
        events(&history, "result.ignored").len(),
        1,
        "the abandoned step's result is ignored"
    );

    // Retry: a failed run re-runs the failed step and its dependents only.
    stack
        .apply(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: gated, version: "1" }
spec:
  workflow:
    steps:
      - { id: prepare, uses: echo, with: { n: 1 } }
      - { id: side, uses: echo, needs: [prepare] }
      - { id: check, uses: gate, needs: [prepare] }
      - { id: finish, uses: echo, needs: [check, side], with: { n: "${{ steps.prepare.outputs.n }}" } }
"#,
        )
        .await?;
    let run = stack.request("gated", json!({})).await?;
    let failed = stack.wait_finished(run, WAIT).await?;
    assert_eq!(failed["status"], "failed");
    let retry = |body: Value| {
        stack
            .http
            .post(format!("{}/v1/runs/{run}/retry", stack.api))
            .header("Fulfil-Actor", "cli:bob")
            .json(&body)
            .send()
    };
    let dry: Value = retry(json!({ "dry_run": true })).await?.json().await?;
    assert_eq!(dry["rerun"], json!(["check", "finish"]));
    assert_eq!(dry["kept"], json!(["prepare", "side"]));
    assert_eq!(dry["applied"], false);
    assert_eq!(
        stack.run(run).await?["status"],
        "failed",
        "a dry run changes nothing"
    );
    gate.store(true, Ordering::SeqCst);
    let plan: Value = retry(json!({})).await?.json().await?;
    assert_eq!(plan["applied"], true);
    let done = stack.wait_finished(run, WAIT).await?;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(
        done["steps"][0]["attempts"].as_array().map(Vec::len),
        Some(1),
        "prepare not re-run"
    );
    assert_eq!(
        done["steps"][1]["attempts"].as_array().map(Vec::len),
        Some(1),
        "side not re-run"
    );
    assert_eq!(
        done["steps"][2]["attempts"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(done["steps"][2]["attempt"], 2);
    assert_eq!(
        done["steps"][3]["outputs"],
        json!({ "n": 1 }),
        "kept outputs flow into re-run steps"
    );
    let history = stack.history(run).await?;
    assert_eq!(events(&history, "run.retried")[0]["actor"], "cli:bob");
    let conflict = retry(json!({})).await?;
    assert_eq!(
        conflict.status().as_u16(),
        409,
        "a succeeded run cannot be retried"
    );
    let (status, request) = stack
        .get(&format!(
            "/v1/requests/{}",
            done["request_id"].as_str().unwrap_or("")
        ))
        .await?;
    assert_eq!(
        (status, request["status"].as_str()),
        (200, Some("succeeded"))
    );

    // --step also re-runs a succeeded step and its dependents.
    gate.store(false, Ordering::SeqCst);
    let run = stack.request("gated", json!({})).await?;
    assert_eq!(stack.wait_finished(run, WAIT).await?["status"], "failed");
    let retry_step = |step: &str| {
        stack
            .http
            .post(format!("{}/v1/runs/{run}/retry", stack.api))
            .json(&json!({ "step": step }))
            .send()
    };
    let unknown = retry_step("ghost").await?;
    assert_eq!(unknown.status().as_u16(), 422);
    gate.store(true, Ordering::SeqCst);
    let plan: Value = retry_step("side").await?.json().await?;
    assert_eq!(plan["rerun"], json!(["side", "check", "finish"]));
    assert_eq!(plan["kept"], json!(["prepare"]));
    let done = stack.wait_finished(run, WAIT).await?;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(
        done["steps"][1]["attempts"].as_array().map(Vec::len),
        Some(2),
        "side re-ran"
    );
    assert_eq!(
        done["steps"][0]["attempts"].as_array().map(Vec::len),
        Some(1),
        "prepare kept"
    );
    server.abort();
    stack.stop().await
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_counted_without_stopping_the_engine()
-> anyhow::Result<()> {
    let stack = stack_with(Arc::default()).await?;
    let before: Value = stack.get("/v1/dead-letters").await?.1;
    assert_eq!(before["bus"]["count"], 0);
    stack
        .publish_json(stack.names.results_subject(), &json!({ "not": "a result" }))
        .await?;
    let orphan = ResultMessage {
        task_id: TaskId::generate(),
        run_id: RunId::generate(),
        step_id: "ghost".into(),
        attempt: 1,
        worker_id: "nobody".into(),
        outcome: Outcome::Ok { output: json!({}) },
        started_at: Utc::now(),
        finished_at: Utc::now(),
    };
    stack
        .publish_json(stack.names.results_subject(), &orphan)
        .await?;
    stack
        .js
        .publish(stack.names.task_subject("default"), "{garbage".into())
        .await?
        .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let after = loop {
        let (_, body) = stack.get("/v1/dead-letters").await?;
        let results = body["bus"]["subjects"][&stack.names.dead_letter_subject("results")].as_u64();
        let tasks = body["bus"]["subjects"][&stack.names.dead_letter_subject("tasks")].as_u64();
        if (results == Some(2) && tasks == Some(1)) || tokio::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(after["bus"]["count"], 3, "{after:#}");
    let results_subject = stack.names.dead_letter_subject("results");
    assert_eq!(after["bus"]["subjects"][&results_subject], 2, "{after:#}");
    assert_eq!(
        after["bus"]["subjects"][&stack.names.dead_letter_subject("tasks")],
        1,
        "{after:#}"
    );

    stack
        .apply("apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: { name: still, version: \"1\" }\nspec:\n  workflow:\n    steps:\n      - { id: a, uses: noop }\n")
        .await?;
    let run = stack.request("still", json!({})).await?;
    assert_eq!(
        stack.wait_finished(run, WAIT).await?["status"],
        "succeeded",
        "the loops kept running"
    );
    stack.stop().await
}

#[tokio::test]
async fn run_cancelled_has_one_shape_whichever_way_the_run_ends() -> anyhow::Result<()> {
    let stack = stack_with(Arc::default()).await?;
    stack
        .apply(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: stuck, version: "1" }
spec:
  workflow:
    steps:
      - id: unserved
        uses: noop
        queue: nobody
        schedule_to_start: 500ms
"#,
        )
        .await?;
    let mut published = stack
        .nats
        .subscribe(stack.names.event_subject("run.cancelled"))
        .await?;
    let mut shapes = Vec::new();
    // At once without compensation (the operator ends the run), and with
    // compensation (the run ends once its in-flight step gave up).
    for compensate in [false, true] {
        let run = stack.request("stuck", json!({})).await?;
        let response = stack
            .http
            .post(format!("{}/v1/runs/{run}/cancel", stack.api))
            .json(&json!({ "compensate": compensate }))
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 200);
        let view = stack.wait_finished(run, WAIT).await?;
        assert_eq!(view["status"], "cancelled", "{view:#}");
        let history = stack.history(run).await?;
        let cancelled = events(&history, "run.cancelled");
        assert_eq!(cancelled.len(), 1, "{history:#?}");
        let message = tokio::time::timeout(WAIT, published.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("event subscription ended"))?;
        let event: Value = serde_json::from_slice(&message.payload)?;
        let keys = |value: &Value| -> Vec<String> {
            value
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(event["data"]["run_id"], json!(run));
        shapes.push((keys(&cancelled[0]["data"]), keys(&event["data"])));
    }
    assert_eq!(shapes[0], shapes[1], "{shapes:#?}");
    assert!(shapes[0].1.contains(&"promise".to_string()), "{shapes:#?}");
    stack.stop().await
}
