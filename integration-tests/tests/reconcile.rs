//! Reconcile on the real Postgres and NATS: `spec.reconcile` re-runs the
//! configure workflow of live requests, spread over the interval and at
//! most `max_concurrent` at once across engines; `POST
//! /v1/requests/{id}/reconcile` starts one now or queues it behind the run
//! in flight; a failing reconcile run undoes nothing; a delete stops a
//! reconcile run at its step boundary.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fulfil_core::ids::{RequestId, RunId};
use fulfil_core::wire::{Outcome, Progress, ProgressMessage, ResultMessage, TaskMessage};
use fulfil_integration_tests::{StackOptions, TestStack};
use fulfil_worker::{Handler, StepError, TaskContext};
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// Takes a while, and says how many times it ran.
struct Slow(Arc<AtomicU64>);

#[async_trait]
impl Handler for Slow {
    async fn handle(&self, _: &TaskContext, _: Value) -> Result<Value, StepError> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        Ok(json!({ "n": n }))
    }
}

/// Fails permanently while the test keeps it closed.
struct Gate(Arc<AtomicBool>);

#[async_trait]
impl Handler for Gate {
    async fn handle(&self, _: &TaskContext, _: Value) -> Result<Value, StepError> {
        if self.0.load(Ordering::SeqCst) {
            Ok(json!({ "checked": true }))
        } else {
            Err(StepError::permanent("drift check refused").with_code("drift"))
        }
    }
}

/// Reconciled every 3 s, at most two at once; each run takes 1.2 s, so six
/// requests ask for more than two runs' worth of time per interval.
const FLEET: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: fleet, version: "1" }
spec:
  workflow:
    steps:
      - { id: converge, uses: slow }
  outputs:
    n: "${{ steps.converge.outputs.n }}"
  reconcile: { every: 3s, max_concurrent: 2 }
"#;

/// A step the test serves by hand (queue `held`), then one more; no
/// `spec.reconcile`: reconciled only when asked.
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
  outputs:
    held: "${{ steps.hold.outputs.held }}"
  delete:
    steps:
      - id: teardown
        uses: echo
        with: { had: "${{ request.outputs }}" }
"#;

/// create (undone by echo) -> check (the gate, undone by echo).
const DATABASE: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: database, version: "1" }
spec:
  workflow:
    steps:
      - id: create
        uses: echo
        with: { db: "${{ params.name }}" }
        compensate: { uses: echo }
      - id: check
        needs: [create]
        uses: gate
        compensate: { uses: echo }
  outputs:
    db: "${{ steps.create.outputs.db }}"
"#;

async fn stack(
    engines: usize,
    gate: Arc<AtomicBool>,
) -> anyhow::Result<(TestStack, Arc<AtomicU64>)> {
    let calls = Arc::new(AtomicU64::new(0));
    let slow = calls.clone();
    let stack = TestStack::start_with(StackOptions {
        engines,
        handlers: Box::new(move |h| {
            h.register("slow", Slow(slow.clone()));
            h.register("gate", Gate(gate.clone()));
        }),
        ..StackOptions::default()
    })
    .await?;
    Ok((stack, calls))
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

/// `POST /v1/requests/{id}/reconcile`; returns status, `Location` and body.
async fn reconcile(
    stack: &TestStack,
    request: &str,
    actor: Option<&str>,
) -> anyhow::Result<(u16, Option<String>, Value)> {
    let mut call = stack
        .http
        .post(format!("{}/v1/requests/{request}/reconcile", stack.api));
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

fn id_of(body: &Value, field: &str) -> anyhow::Result<RunId> {
    Ok(body[field]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no {field} in {body}"))?
        .parse()?)
}

/// The reconcile runs of `request`, oldest first.
async fn reconcile_runs(stack: &TestStack, request: &str) -> anyhow::Result<Vec<RunId>> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM fulfil.runs WHERE kind = 'reconcile' AND request_id = $1 ORDER BY id",
    )
    .bind(request.parse::<Uuid>()?)
    .fetch_all(&stack.pool)
    .await?;
    Ok(ids.into_iter().map(RunId::from).collect())
}

/// Plays the worker of queue `held`: reports `task` started.
async fn started(stack: &TestStack, task: &TaskMessage) -> anyhow::Result<()> {
    let message = ProgressMessage {
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
        .publish_json(stack.names.progress_subject(), &message)
        .await
}

/// Plays the worker of queue `held`: `task` succeeds with `output`.
async fn finish(stack: &TestStack, task: &TaskMessage, output: Value) -> anyhow::Result<()> {
    let result = ResultMessage {
        task_id: task.task_id,
        run_id: task.run_id,
        step_id: task.step_id.clone(),
        attempt: task.attempt,
        worker_id: "held-worker".into(),
        outcome: Outcome::Ok { output },
        started_at: Utc::now(),
        finished_at: Utc::now(),
    };
    stack
        .publish_json(stack.names.results_subject(), &result)
        .await
}

/// A run's id, start and end as its history records them.
type Span = (Uuid, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
/// A run's created and finished times.
type Interval = (DateTime<Utc>, DateTime<Utc>);

fn spread(version: &str, every: &str) -> String {
    format!(
        r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: spread, version: "{version}" }}
spec:
  workflow:
    steps:
      - {{ id: converge, uses: echo }}
  reconcile: {{ every: {every}, max_concurrent: 1 }}
"#
    )
}

/// Waits until the `spread` Promise's `count` requests are queued for
/// `every`, then checks each is due on its own phase, and that the phases
/// differ.
async fn assert_phased(stack: &TestStack, every: Duration, count: usize) -> anyhow::Result<()> {
    let every_ms = i64::try_from(every.as_millis())?;
    let deadline = Instant::now() + WAIT;
    let due: Vec<(Uuid, DateTime<Utc>)> = loop {
        let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
            "SELECT request_id, due_at FROM fulfil.reconcile_due
              WHERE promise = 'spread' AND every_ms = $1",
        )
        .bind(every_ms)
        .fetch_all(&stack.pool)
        .await?;
        if rows.len() == count {
            break rows;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {count} queued for {every:?}",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let now = Utc::now();
    let mut phases = Vec::new();
    for (request_id, due_at) in &due {
        let phase = fulfil_engine::reconcile::phase_of(RequestId::from(*request_id), every);
        assert_eq!(
            due_at.timestamp_millis().rem_euclid(every_ms),
            i64::try_from(phase.as_millis())?,
            "due on the request's phase"
        );
        assert!(*due_at > now - chrono::Duration::seconds(10) && *due_at <= now + every);
        phases.push(phase);
    }
    phases.sort();
    phases.dedup();
    assert_eq!(phases.len(), count, "spread over the interval: {phases:?}");
    Ok(())
}

#[tokio::test]
async fn reconcile_reruns_live_requests_spread_out_and_never_more_than_max_concurrent()
-> anyhow::Result<()> {
    // Two engines: the limit holds across processes, not by one loop's luck.
    let (stack, calls) = stack(2, Arc::default()).await?;
    stack.apply(FLEET).await?;
    let mut requests = Vec::new();
    for i in 0..6 {
        let (request_id, configure) = file(&stack, "fleet", json!({ "i": i })).await?;
        assert_eq!(
            stack.wait_finished(configure, WAIT).await?["status"],
            "succeeded"
        );
        requests.push(request_id);
    }

    // Enrolled, each due on its own phase: shown on a Promise whose
    // interval is too long for anything to come due during the test; a
    // changed interval re-phases its rows.
    stack.apply(&spread("1", "1h")).await?;
    let mut spread_requests = Vec::new();
    for i in 0..6 {
        let (request_id, configure) = file(&stack, "spread", json!({ "i": i })).await?;
        stack.wait_finished(configure, WAIT).await?;
        spread_requests.push(request_id);
    }
    assert_phased(&stack, Duration::from_secs(3600), spread_requests.len()).await?;
    stack.apply(&spread("2", "2h")).await?;
    assert_phased(&stack, Duration::from_secs(7200), spread_requests.len()).await?;

    // Every request is reconciled, repeatedly.
    let deadline = Instant::now() + Duration::from_secs(45);
    for request_id in &requests {
        loop {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM fulfil.runs
                  WHERE kind = 'reconcile' AND status = 'succeeded' AND request_id = $1",
            )
            .bind(request_id.parse::<Uuid>()?)
            .fetch_one(&stack.pool)
            .await?;
            if done >= 2 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "request {request_id} reconciled {done} time(s)"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // In flight at once, from the runs' own start and end in history:
    // at most two, and two were reached (the load asks for more).
    let spans: Vec<Span> = sqlx::query_as(
        "SELECT r.id,
                min(h.at) FILTER (WHERE h.type = 'run.started'),
                max(h.at) FILTER (WHERE h.type IN ('run.succeeded', 'run.failed',
                                                   'run.cancelled', 'run.compensated'))
           FROM fulfil.runs r JOIN fulfil.history h ON h.run_id = r.id
          WHERE r.kind = 'reconcile' AND r.promise = 'fleet'
          GROUP BY r.id",
    )
    .fetch_all(&stack.pool)
    .await?;
    assert!(spans.len() >= 12, "{} reconcile runs", spans.len());
    let mut most = 0;
    for (_, start, _) in &spans {
        let Some(start) = start else { continue };
        let open = spans
            .iter()
            .filter(|(_, s, e)| s.is_some_and(|s| s <= *start) && e.is_none_or(|e| e > *start))
            .count();
        most = most.max(open);
    }
    assert!(most <= 2, "{most} reconcile runs in flight at once");
    assert_eq!(most, 2, "the limit was reached, and held");

    // Never two runs of one request at once; each moves its request.
    let mut by_request: BTreeMap<String, Vec<Interval>> = BTreeMap::new();
    let rows: Vec<(Uuid, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT request_id, created_at, finished_at FROM fulfil.runs
          WHERE promise = 'fleet' ORDER BY created_at",
    )
    .fetch_all(&stack.pool)
    .await?;
    for (request_id, created, finished) in rows {
        by_request
            .entry(request_id.to_string())
            .or_default()
            .push((created, finished.unwrap_or(DateTime::<Utc>::MAX_UTC)));
    }
    for (request_id, runs) in &by_request {
        for pair in runs.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "request {request_id}: a run began before the one before it ended: {runs:?}"
            );
        }
    }
    let body = request(&stack, &requests[0]).await?;
    assert_eq!(body["status"], "succeeded");
    let latest = id_of(&body, "reconcile_run_id")?;
    let run = stack.run(latest).await?;
    assert_eq!(run["kind"], "reconcile");
    if run["status"] == "succeeded" {
        assert_eq!(
            body["outputs"], run["outputs"],
            "outputs are the latest run's"
        );
    }
    let history = stack.history(latest).await?;
    assert_eq!(history[0]["type"], "reconcile.requested");
    assert_eq!(history[0]["data"]["manual"], false);
    assert!(
        stack.engine_ids.iter().any(|e| history[0]["actor"] == **e),
        "started by an engine: {}",
        history[0]
    );
    assert!(calls.load(Ordering::SeqCst) >= 18);
    stack.stop().await
}

#[tokio::test]
async fn a_reconcile_asked_during_a_run_waits_for_it_then_starts_once() -> anyhow::Result<()> {
    let (stack, _) = stack(1, Arc::default()).await?;
    stack.apply(HELD).await?;
    let (request_id, configure) = file(&stack, "held", json!({})).await?;
    let task = stack.take_task("held", WAIT).await?;

    // The configure run is in flight: queued behind it, durably.
    let (status, location, body) = reconcile(&stack, &request_id, Some("user:alice")).await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["run_id"], Value::Null);
    assert_eq!(id_of(&body, "waiting_for_run")?, configure);
    assert_eq!(location, None);
    let (status, _, again) = reconcile(&stack, &request_id, Some("user:alice")).await?;
    assert_eq!((status, again["status"].clone()), (202, json!("queued")));
    let queued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fulfil.reconcile_due WHERE manual AND requested_by = 'user:alice'",
    )
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(queued, 1, "one queued row, however often asked");

    // Nothing starts while the run is in flight (the loop checks every
    // second; give it a few rounds).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reconcile_runs(&stack, &request_id).await?, vec![]);
    assert_eq!(stack.run(configure).await?["status"], "running");

    // The configure run ends: exactly one reconcile run starts.
    finish(&stack, &task, json!({ "held": "first" })).await?;
    assert_eq!(
        stack.wait_finished(configure, WAIT).await?["status"],
        "succeeded"
    );
    let task = stack.take_task("held", WAIT).await?;
    let runs = reconcile_runs(&stack, &request_id).await?;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let reconcile_run = runs[0];
    assert_eq!(task.run_id, reconcile_run);
    let history = stack.history(reconcile_run).await?;
    assert_eq!(history[0]["type"], "reconcile.requested");
    assert_eq!(history[0]["actor"], "user:alice", "who asked is recorded");
    assert_eq!(history[0]["data"]["manual"], true);
    assert_eq!(history[0]["data"]["configure_run_id"], json!(configure));
    // In flight, the request does not move.
    let body = request(&stack, &request_id).await?;
    assert_eq!(body["status"], "succeeded");
    assert_eq!(id_of(&body, "reconcile_run_id")?, reconcile_run);
    assert_eq!(body["outputs"], json!({ "held": "first" }));

    finish(&stack, &task, json!({ "held": "second" })).await?;
    let run = stack.wait_finished(reconcile_run, WAIT).await?;
    assert_eq!(run["kind"], "reconcile");
    assert_eq!(run["status"], "succeeded");
    let body = request(&stack, &request_id).await?;
    assert_eq!(body["status"], "succeeded");
    assert_eq!(
        body["outputs"],
        json!({ "held": "second" }),
        "outputs replaced"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        reconcile_runs(&stack, &request_id).await?.len(),
        1,
        "started once"
    );
    assert_eq!(
        stack.count("reconcile_due").await?,
        0,
        "a Promise without spec.reconcile keeps no row"
    );

    // Nothing in flight: started now.
    let (status, location, body) = reconcile(&stack, &request_id, None).await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "started");
    let now = id_of(&body, "run_id")?;
    assert_eq!(location, Some(format!("/v1/runs/{now}")));
    assert_eq!(body.get("waiting_for_run"), None);
    assert_eq!(stack.history(now).await?[0]["actor"], "api");
    let task = stack.take_task("held", WAIT).await?;
    assert_eq!(task.run_id, now);
    finish(&stack, &task, json!({ "held": "third" })).await?;
    stack.wait_finished(now, WAIT).await?;

    // Unknown and malformed ids.
    let (status, _, problem) =
        reconcile(&stack, "0193a1c2-7b3e-7c1a-9f00-3d2e1a4b5c6d", None).await?;
    assert_eq!(status, 404, "{problem}");
    let (status, _, problem) = reconcile(&stack, "not-a-uuid", None).await?;
    assert_eq!(status, 400, "{problem}");
    stack.stop().await
}

#[tokio::test]
async fn a_failing_reconcile_undoes_nothing_and_a_delete_stops_a_reconcile_run()
-> anyhow::Result<()> {
    let gate = Arc::new(AtomicBool::new(true));
    let (stack, _) = stack(1, gate.clone()).await?;
    stack.apply(DATABASE).await?;
    stack.apply(HELD).await?;

    // A failing reconcile run: failed, naming the step; nothing undone; the
    // request failed with its live outputs.
    let (request_id, configure) = file(&stack, "database", json!({ "name": "orders" })).await?;
    assert_eq!(
        stack.wait_finished(configure, WAIT).await?["status"],
        "succeeded"
    );
    gate.store(false, Ordering::SeqCst);
    let (status, _, body) = reconcile(&stack, &request_id, Some("user:ops")).await?;
    assert_eq!((status, body["status"].clone()), (202, json!("started")));
    let run = stack.wait_finished(id_of(&body, "run_id")?, WAIT).await?;
    assert_eq!(run["status"], "failed");
    assert!(
        run["error"]
            .as_str()
            .is_some_and(|e| e.contains("check") && e.contains("drift check refused")),
        "{run:#}"
    );
    let steps: Vec<(&str, &str)> = run["steps"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| {
                    (
                        s["id"].as_str().unwrap_or(""),
                        s["status"].as_str().unwrap_or(""),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(steps, vec![("create", "succeeded"), ("check", "failed")]);
    let undone: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fulfil.attempts WHERE run_id = $1 AND kind = 'compensation'",
    )
    .bind(id_of(&body, "run_id")?.as_uuid())
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(undone, 0, "no compensation dispatched");
    let kinds: Vec<String> = stack
        .history(id_of(&body, "run_id")?)
        .await?
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_string))
        .collect();
    assert!(
        !kinds
            .iter()
            .any(|k| k.starts_with("compensation.") || k == "run.compensating"),
        "{kinds:?}"
    );
    let failed = request(&stack, &request_id).await?;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["outputs"], json!({ "db": "orders" }), "outputs kept");
    // A failed request is live: reconciled again once the gate opens.
    gate.store(true, Ordering::SeqCst);
    let (_, _, body) = reconcile(&stack, &request_id, None).await?;
    stack.wait_finished(id_of(&body, "run_id")?, WAIT).await?;
    assert_eq!(request(&stack, &request_id).await?["status"], "succeeded");

    // A delete during a reconcile run stops it at its step boundary.
    let (request_id, configure) = file(&stack, "held", json!({})).await?;
    let task = stack.take_task("held", WAIT).await?;
    finish(&stack, &task, json!({ "held": "v1" })).await?;
    stack.wait_finished(configure, WAIT).await?;
    let (_, _, body) = reconcile(&stack, &request_id, None).await?;
    let reconcile_run = id_of(&body, "run_id")?;
    let task = stack.take_task("held", WAIT).await?;
    assert_eq!(task.run_id, reconcile_run);
    started(&stack, &task).await?;
    stack
        .wait_for_event(reconcile_run, "step.started", WAIT)
        .await?;
    let (status, deletion) = stack.delete_request(&request_id).await?;
    assert_eq!(status, 202, "{deletion}");
    assert_eq!(deletion["status"], "deleting");
    let delete_run = id_of(&deletion, "run_id")?;
    let run = stack.run(reconcile_run).await?;
    assert_eq!(run["status"], "running", "the in-flight step is not killed");
    assert_eq!(run["steps"][0]["status"], "running");
    assert_eq!(run["steps"][1]["status"], "cancelled", "no new step starts");
    let (status, _) = stack.get(&format!("/v1/runs/{delete_run}")).await?;
    assert_eq!(status, 404, "the delete run waits for the reconcile run");
    let (status, _, problem) = reconcile(&stack, &request_id, None).await?;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(
        problem["type"],
        "https://fulfil.dev/problems/request-not-live"
    );
    assert_eq!(problem["request_status"], "deleting");

    finish(&stack, &task, json!({ "held": "v2" })).await?;
    let run = stack.wait_finished(reconcile_run, WAIT).await?;
    assert_eq!(run["status"], "cancelled");
    assert!(
        run["error"]
            .as_str()
            .is_some_and(|e| e.contains("request deleted")),
        "{run:#}"
    );
    let teardown = stack.wait_finished(delete_run, WAIT).await?;
    assert_eq!(teardown["status"], "succeeded");
    assert_eq!(
        teardown["steps"][0]["outputs"],
        json!({ "had": { "held": "v1" } }),
        "the teardown sees the request's live outputs"
    );
    let deleted = request(&stack, &request_id).await?;
    assert_eq!(deleted["status"], "deleted");
    let (status, _, problem) = reconcile(&stack, &request_id, None).await?;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["request_status"], "deleted");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("is deleted")),
        "{problem}"
    );
    assert_eq!(stack.count("reconcile_due").await?, 0);
    stack.stop().await
}
