//! Rollouts on the real Postgres and NATS (docs/rollouts.md): `POST
//! /v1/promises/{name}/rollout` re-runs the configure workflow of live
//! requests on another version as `upgrade` runs, never more than
//! `max_concurrent` at once across engines, pausable and resumable;
//! pinned requests are left out; a failed upgrade keeps the request's
//! version; a request with a run in flight waits for it; bad input changes
//! nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fulfil_integration_tests::{StackOptions, TestStack};
use fulfil_worker::{Handler, StepError, TaskContext};
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// Sleeps `ms` (from its input) and counts how many of its calls for
/// generation 2 run at once, keeping the highest count seen.
#[derive(Clone, Default)]
struct Nap {
    now: Arc<AtomicI64>,
    most: Arc<AtomicI64>,
}

#[async_trait]
impl Handler for Nap {
    async fn handle(&self, _: &TaskContext, input: Value) -> Result<Value, StepError> {
        let upgrade = input["gen"] == 2;
        if upgrade {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(input["ms"].as_u64().unwrap_or(100))).await;
        if upgrade {
            self.now.fetch_sub(1, Ordering::SeqCst);
        }
        if input["name"].as_str().is_some_and(|n| n.starts_with("bad")) && upgrade {
            return Err(
                StepError::permanent(format!("generation 2 refuses {}", input["name"]))
                    .with_code("refused"),
            );
        }
        Ok(json!({ "gen": input["gen"], "name": input["name"] }))
    }
}

/// Waits while the test keeps it closed (at most a minute).
struct Gate(Arc<AtomicBool>);

#[async_trait]
impl Handler for Gate {
    async fn handle(&self, _: &TaskContext, _: Value) -> Result<Value, StepError> {
        let until = Instant::now() + Duration::from_secs(60);
        while !self.0.load(Ordering::SeqCst) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(json!({ "opened": true }))
    }
}

/// Two steps of generation `gen`, each sleeping `ms`; the first of
/// version 1 may wait at the gate (`gated`).
fn promise(name: &str, version: &str, gen_: u8, ms: u64, gated: bool) -> String {
    let first = if gated { "gate" } else { "nap" };
    format!(
        r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: {name}, version: "{version}" }}
spec:
  api:
    type: object
    required: [name]
    properties:
      name: {{ type: string }}
      tier: {{ type: string, default: std }}
  workflow:
    steps:
      - id: prepare
        uses: {first}
        with: {{ gen: {gen_}, ms: {ms}, name: "${{{{ params.name }}}}" }}
      - id: converge
        needs: [prepare]
        uses: nap
        with: {{ gen: {gen_}, ms: {ms}, name: "${{{{ params.name }}}}" }}
  outputs:
    gen: "${{{{ steps.converge.outputs.gen }}}}"
    name: "${{{{ steps.converge.outputs.name }}}}"
"#
    )
}

async fn stack(engines: usize, nap: Nap, gate: Arc<AtomicBool>) -> anyhow::Result<TestStack> {
    TestStack::start_with(StackOptions {
        engines,
        worker_concurrency: 64,
        handlers: Box::new(move |h| {
            h.register("nap", nap.clone());
            h.register("gate", Gate(gate.clone()));
        }),
        ..StackOptions::default()
    })
    .await
}

/// Files requests named `names` (a `name:tier` names its tier too) and
/// waits until each is `succeeded`; returns their ids in the same order.
async fn file_all(
    stack: &TestStack,
    promise: &str,
    names: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for name in names {
        let params = match name.split_once(':') {
            Some((name, tier)) => json!({ "name": name, "tier": tier }),
            None => json!({ "name": name }),
        };
        let (status, _, body) = stack
            .post_request(promise, json!({ "params": params }), None)
            .await?;
        anyhow::ensure!(status == 202, "request refused with {status}: {body}");
        ids.push(body["request_id"].as_str().unwrap_or_default().to_string());
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM fulfil.requests WHERE promise = $1 AND status = 'succeeded'",
        )
        .bind(promise)
        .fetch_one(&stack.pool)
        .await?;
        if done as usize >= ids.len() {
            return Ok(ids);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {done} of {} succeeded",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `POST /v1/promises/{promise}/rollout`; returns status and body.
async fn rollout(stack: &TestStack, promise: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    let response = stack
        .http
        .post(format!("{}/v1/promises/{promise}/rollout", stack.api))
        .header("Fulfil-Actor", "user:rolling")
        .json(&body)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

/// `POST /v1/rollouts/{id}/{action}`; returns status and body.
async fn control(stack: &TestStack, id: &str, action: &str) -> anyhow::Result<(u16, Value)> {
    let response = stack
        .http
        .post(format!("{}/v1/rollouts/{id}/{action}", stack.api))
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

async fn get_rollout(stack: &TestStack, id: &str) -> anyhow::Result<Value> {
    let (status, body) = stack.get(&format!("/v1/rollouts/{id}")).await?;
    anyhow::ensure!(status == 200, "GET rollout {id}: {status} {body}");
    Ok(body)
}

/// Polls the rollout until `done` holds for it, for at most `wait`.
async fn wait_rollout(
    stack: &TestStack,
    id: &str,
    wait: Duration,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + wait;
    loop {
        let body = get_rollout(stack, id).await?;
        if done(&body) {
            return Ok(body);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "rollout never got there: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn upgrade_runs_in_flight(stack: &TestStack, promise: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM fulfil.runs WHERE promise = $1 AND kind = 'upgrade'
            AND status IN ('pending', 'running', 'compensating')",
    )
    .bind(promise)
    .fetch_one(&stack.pool)
    .await?)
}

async fn upgrade_runs(stack: &TestStack, promise: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM fulfil.runs WHERE promise = $1 AND kind = 'upgrade'",
    )
    .bind(promise)
    .fetch_one(&stack.pool)
    .await?)
}

async fn pin(stack: &TestStack, id: &str) -> anyhow::Result<Value> {
    let response = stack
        .http
        .post(format!("{}/v1/requests/{id}/pin", stack.api))
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await?;
    anyhow::ensure!(status == 200, "pin {id}: {status} {body}");
    Ok(body)
}

/// The most intervals `[start, end)` that overlap at one instant.
fn max_overlap(intervals: &[(DateTime<Utc>, DateTime<Utc>)]) -> usize {
    let mut edges: Vec<(DateTime<Utc>, i32)> = intervals
        .iter()
        .flat_map(|(start, end)| [(*start, 1), (*end, -1)])
        .collect();
    // An end before a start at the same instant: the slot was freed first.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_upgrades_unpinned_requests_at_bounded_concurrency_and_pauses() -> anyhow::Result<()>
{
    let nap = Nap::default();
    let stack = stack(2, nap.clone(), Arc::new(AtomicBool::new(true))).await?;
    stack.apply(&promise("fleet", "1", 1, 120, false)).await?;
    let names: Vec<String> = (0..100).map(|i| format!("svc-{i:03}")).collect();
    let ids = file_all(&stack, "fleet", &names).await?;
    let pinned: Vec<String> = ids[..3].to_vec();
    for id in &pinned {
        let body = pin(&stack, id).await?;
        assert_eq!(body["pinned"], true, "{body}");
        assert_eq!(body["promise_version"], "1");
    }
    stack.apply(&promise("fleet", "2", 2, 120, false)).await?;

    let started = Instant::now();
    let (status, created) = rollout(
        &stack,
        "fleet",
        json!({ "to_version": "2", "max_concurrent": 10 }),
    )
    .await?;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(created["status"], "running");
    assert_eq!(created["created_by"], "user:rolling");
    assert_eq!(created["max_concurrent"], 10);
    assert_eq!(created["progress"]["total"], 97, "{created}");

    // While it runs: never more than ten upgrade runs in flight.
    let mut most_sampled = 0;
    let paused = loop {
        let in_flight = upgrade_runs_in_flight(&stack, "fleet").await?;
        most_sampled = most_sampled.max(in_flight);
        let body = get_rollout(&stack, &id).await?;
        assert!(
            body["progress"]["running"].as_i64().unwrap_or(99) <= 10,
            "{body}"
        );
        if body["progress"]["succeeded"].as_i64().unwrap_or(0) >= 25 {
            let (status, paused) = control(&stack, &id, "pause").await?;
            assert_eq!(status, 200, "{paused}");
            break paused;
        }
        anyhow::ensure!(started.elapsed() < WAIT, "too slow: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(paused["status"], "paused");
    assert!(most_sampled <= 10, "{most_sampled} upgrade runs in flight");

    // Paused: the runs in flight finish, and nothing new starts.
    let drained = wait_rollout(&stack, &id, WAIT, |r| r["progress"]["running"] == 0).await?;
    let after_drain = upgrade_runs(&stack, "fleet").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(upgrade_runs(&stack, "fleet").await?, after_drain);
    let still = get_rollout(&stack, &id).await?;
    assert_eq!(still["status"], "paused");
    assert_eq!(still["progress"], drained["progress"]);
    assert!(
        still["progress"]["pending"].as_i64().unwrap_or(0) > 0,
        "{still}"
    );
    assert_eq!(
        still["progress"]["succeeded"].as_i64().unwrap_or(0),
        after_drain,
        "{still}"
    );

    let (status, resumed) = control(&stack, &id, "resume").await?;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["status"], "running");
    let done = wait_rollout(&stack, &id, WAIT, |r| r["status"] != "running").await?;
    let took = started.elapsed();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["finished_at"].is_string());
    assert_eq!(
        done["progress"],
        json!({"total": 97, "pending": 0, "running": 0, "succeeded": 97, "failed": 0, "skipped": 0})
    );
    assert_eq!(done["failures"], json!([]));

    // 97 requests on version 2 with its outputs, the 3 pinned on 1.
    let versions: Vec<(Uuid, String, String, Value, bool)> = sqlx::query_as(
        "SELECT id, promise_version, status, outputs, pinned FROM fulfil.requests
          WHERE promise = 'fleet'",
    )
    .fetch_all(&stack.pool)
    .await?;
    let pinned_ids: HashSet<Uuid> = pinned.iter().map(|p| p.parse()).collect::<Result<_, _>>()?;
    for (request, version, status, outputs, is_pinned) in &versions {
        assert_eq!(status, "succeeded", "{request}");
        if pinned_ids.contains(request) {
            assert!(is_pinned);
            assert_eq!(version, "1", "{request}");
            assert_eq!(outputs["gen"], 1);
        } else {
            assert_eq!(version, "2", "{request}");
            assert_eq!(outputs["gen"], 2, "{request}: {outputs}");
        }
    }
    assert_eq!(versions.len(), 100);
    let never: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fulfil.rollout_targets WHERE request_id = ANY($1)",
    )
    .bind(pinned_ids.iter().copied().collect::<Vec<_>>())
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(never, 0, "a pinned request was a target");

    // Every upgrade run succeeded, one per target, on version 2.
    let runs: Vec<(String, String)> = sqlx::query_as(
        "SELECT status, promise_version FROM fulfil.runs
          WHERE promise = 'fleet' AND kind = 'upgrade'",
    )
    .fetch_all(&stack.pool)
    .await?;
    assert_eq!(runs.len(), 97);
    assert!(runs.iter().all(|r| r.0 == "succeeded" && r.1 == "2"));
    // Afterwards, from the timestamps: each upgrade run worked from its
    // first step's start to its last step's end (the times the worker
    // reports, inside the time the run was in flight); those spans never
    // overlap more than ten deep. (A run row's created_at and finished_at
    // are transaction start times, which a concurrent transaction can
    // order either way, so they cannot tell.)
    let intervals: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT min(a.started_at), max(a.finished_at)
           FROM fulfil.attempts a JOIN fulfil.runs r ON r.id = a.run_id
          WHERE r.promise = 'fleet' AND r.kind = 'upgrade'
          GROUP BY r.id",
    )
    .fetch_all(&stack.pool)
    .await?;
    assert_eq!(intervals.len(), 97);
    let overlap = max_overlap(&intervals);
    assert!(overlap <= 10, "runs overlapped {overlap} deep");
    let handler_most = nap.most.load(Ordering::SeqCst);
    assert!(handler_most <= 10, "{handler_most} upgrade steps at once");
    let (status, list) = stack.get("/v1/promises/fleet/rollouts").await?;
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["id"], id.as_str());
    println!(
        "rollout of 97 requests, max_concurrent 10, two engines: {:.1} s with a 2 s pause; \
         most in flight: sampled {most_sampled}, by step timestamps {overlap}, in the handler {handler_most}",
        took.as_secs_f64()
    );
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_upgrades_keep_their_version_and_are_listed() -> anyhow::Result<()> {
    let stack = stack(1, Nap::default(), Arc::new(AtomicBool::new(true))).await?;
    stack.apply(&promise("shop", "1", 1, 20, false)).await?;
    // gold-f is of another tier: the selector leaves it out.
    let names: Vec<String> = ["ok-a", "ok-b", "bad-c", "ok-d", "bad-e", "gold-f:gold"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let ids = file_all(&stack, "shop", &names).await?;
    stack.apply(&promise("shop", "2", 2, 20, false)).await?;
    let (status, created) = rollout(
        &stack,
        "shop",
        json!({ "to_version": "2", "max_concurrent": 2, "selector": "params.tier == 'std'" }),
    )
    .await?;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["progress"]["total"], 5, "{created}");
    assert_eq!(created["selector"], "params.tier == 'std'");
    let id = created["id"].as_str().unwrap_or_default().to_string();
    let done = wait_rollout(&stack, &id, WAIT, |r| r["status"] != "running").await?;
    assert_eq!(done["status"], "completed_with_failures", "{done}");
    assert_eq!(done["progress"]["succeeded"], 3);
    assert_eq!(done["progress"]["failed"], 2);
    let failures = done["failures"].as_array().cloned().unwrap_or_default();
    let failed: HashSet<&str> = failures
        .iter()
        .filter_map(|f| f["request_id"].as_str())
        .collect();
    assert_eq!(failed, HashSet::from([ids[2].as_str(), ids[4].as_str()]));
    for failure in &failures {
        assert_eq!(failure["from_version"], "1");
        let error = failure["error"].as_str().unwrap_or_default();
        assert!(error.contains("generation 2 refuses"), "{failure}");
        let run: Uuid = failure["run_id"].as_str().unwrap_or_default().parse()?;
        let (status, body) = stack.get(&format!("/v1/runs/{run}")).await?;
        assert_eq!(status, 200);
        assert_eq!(body["kind"], "upgrade");
        assert_eq!(body["status"], "failed", "{body}");
        assert_eq!(body["promise_version"], "2");
    }
    for (i, id) in ids.iter().enumerate() {
        let (_, request) = stack.get(&format!("/v1/requests/{id}")).await?;
        let (version, status, gen_) = match i {
            2 | 4 => ("1", "failed", 1),
            5 => ("1", "succeeded", 1),
            _ => ("2", "succeeded", 2),
        };
        assert_eq!(request["promise_version"], version, "{request}");
        assert_eq!(request["status"], status, "{request}");
        // A failed upgrade keeps the outputs the request had.
        assert_eq!(request["outputs"]["gen"], gen_, "{request}");
    }
    // Finished: pause, resume and cancel are refused.
    let (status, body) = control(&stack, &id, "pause").await?;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "rollout-finished");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_rollouts_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let stack = stack(1, Nap::default(), Arc::new(AtomicBool::new(true))).await?;
    stack.apply(&promise("api", "1", 1, 20, false)).await?;
    let names: Vec<String> = (0..4).map(|i| format!("api-{i}")).collect();
    file_all(&stack, "api", &names).await?;
    stack.apply(&promise("api", "2", 2, 20, false)).await?;
    let rollouts = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM fulfil.rollouts) + (SELECT count(*) FROM fulfil.rollout_targets)",
        )
        .fetch_one(&stack.pool)
        .await?;
        anyhow::Ok(n)
    };
    for (body, status, code, names) in [
        (json!({"to_version": "9"}), 422, "unknown-version", "\"9\""),
        (
            json!({"to_version": "2", "selector": "params.name =="}),
            422,
            "invalid-selector",
            "params.name ==",
        ),
        (
            json!({"to_version": "2", "selector": "vars.region == 'eu'"}),
            422,
            "invalid-selector",
            "vars",
        ),
        (
            json!({"to_version": "2", "selector": "params.size == 'large'"}),
            422,
            "invalid-selector",
            "has(",
        ),
        (
            json!({"to_version": "2", "max_concurrent": 0}),
            422,
            "invalid-body",
            "max_concurrent",
        ),
    ] {
        let before = rollouts().await?;
        let (got, problem) = rollout(&stack, "api", body.clone()).await?;
        assert_eq!(got, status, "{body}: {problem}");
        assert_eq!(problem["code"], code, "{problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(names), "{detail}");
        assert_eq!(rollouts().await?, before, "{body} changed something");
    }
    let (got, problem) = rollout(&stack, "nope", json!({"to_version": "1"})).await?;
    assert_eq!(got, 404, "{problem}");

    // One rollout at a time: a second while the first is paused is a 409.
    let (status, first) = rollout(
        &stack,
        "api",
        json!({"to_version": "2", "max_concurrent": 1}),
    )
    .await?;
    assert_eq!(status, 202, "{first}");
    let first_id = first["id"].as_str().unwrap_or_default().to_string();
    let (status, _) = control(&stack, &first_id, "pause").await?;
    assert_eq!(status, 200);
    let before = rollouts().await?;
    let (status, problem) = rollout(&stack, "api", json!({"to_version": "2"})).await?;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["code"], "rollout-in-progress");
    assert_eq!(problem["rollout_id"], first_id.as_str());
    assert_eq!(rollouts().await?, before);

    // Unknown rollouts are 404, for reads and for changes alike.
    let unknown = Uuid::now_v7();
    let (status, _) = stack.get(&format!("/v1/rollouts/{unknown}")).await?;
    assert_eq!(status, 404);
    for action in ["pause", "resume", "cancel"] {
        let (status, problem) = control(&stack, &unknown.to_string(), action).await?;
        assert_eq!(status, 404, "{problem}");
        assert_eq!(problem["code"], "not-found");
    }
    assert_eq!(rollouts().await?, before);

    // Cancel skips what is pending; then a new rollout may start.
    let (status, cancelled) = control(&stack, &first_id, "cancel").await?;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["progress"]["pending"], 0, "{cancelled}");
    let (status, second) = rollout(&stack, "api", json!({"to_version": "2"})).await?;
    assert_eq!(status, 202, "{second}");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_with_a_run_in_flight_is_upgraded_after_it() -> anyhow::Result<()> {
    let gate = Arc::new(AtomicBool::new(true));
    let stack = stack(1, Nap::default(), gate.clone()).await?;
    stack.apply(&promise("cache", "1", 1, 20, true)).await?;
    let ids = file_all(&stack, "cache", &["busy".to_string(), "idle".to_string()]).await?;
    let (busy, idle) = (ids[0].clone(), ids[1].clone());
    // busy's reconcile run waits at the gate.
    gate.store(false, Ordering::SeqCst);
    let response = stack
        .http
        .post(format!("{}/v1/requests/{busy}/reconcile", stack.api))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 202);
    let reconcile: Value = response.json().await?;
    let reconcile_run: Uuid = reconcile["run_id"].as_str().unwrap_or_default().parse()?;

    stack.apply(&promise("cache", "2", 2, 20, false)).await?;
    let (status, created) = rollout(&stack, "cache", json!({"to_version": "2"})).await?;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["progress"]["total"], 2);
    let id = created["id"].as_str().unwrap_or_default().to_string();
    // idle is upgraded; busy waits for its reconcile run.
    let partway = wait_rollout(&stack, &id, WAIT, |r| r["progress"]["succeeded"] == 1).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = get_rollout(&stack, &id).await?;
    assert_eq!(still["progress"]["pending"], 1, "{still}");
    assert_eq!(still["progress"], partway["progress"]);
    let busy_upgrades: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fulfil.runs WHERE request_id = $1 AND kind = 'upgrade'",
    )
    .bind(busy.parse::<Uuid>()?)
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(busy_upgrades, 0, "an upgrade ran beside the reconcile run");
    let (_, run) = stack.get(&format!("/v1/runs/{reconcile_run}")).await?;
    assert_eq!(run["status"], "running", "{run}");
    let (_, idle_request) = stack.get(&format!("/v1/requests/{idle}")).await?;
    assert_eq!(idle_request["promise_version"], "2");

    gate.store(true, Ordering::SeqCst);
    let done = wait_rollout(&stack, &id, WAIT, |r| r["status"] != "running").await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    let (reconcile_end, upgrade_start): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "SELECT (SELECT finished_at FROM fulfil.runs WHERE id = $1),
                (SELECT created_at FROM fulfil.runs WHERE request_id = $2 AND kind = 'upgrade')",
    )
    .bind(reconcile_run)
    .bind(busy.parse::<Uuid>()?)
    .fetch_one(&stack.pool)
    .await?;
    assert!(
        upgrade_start >= reconcile_end,
        "{upgrade_start} < {reconcile_end}"
    );
    let (_, busy_request) = stack.get(&format!("/v1/requests/{busy}")).await?;
    assert_eq!(busy_request["promise_version"], "2");
    assert_eq!(busy_request["outputs"]["gen"], 2);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_deleted_during_its_upgrade_is_skipped() -> anyhow::Result<()> {
    let gate = Arc::new(AtomicBool::new(true));
    let stack = stack(1, Nap::default(), gate.clone()).await?;
    stack.apply(&promise("blob", "1", 1, 20, false)).await?;
    let ids = file_all(&stack, "blob", &["kept".to_string(), "gone".to_string()]).await?;
    // Version 2's first step waits at the gate.
    gate.store(false, Ordering::SeqCst);
    stack.apply(&promise("blob", "2", 2, 20, true)).await?;
    let (status, created) = rollout(&stack, "blob", json!({"to_version": "2"})).await?;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap_or_default().to_string();
    wait_rollout(&stack, &id, WAIT, |r| r["progress"]["running"] == 2).await?;
    // The delete finds the upgrade run in flight (the request's latest
    // re-run) and stops it at its step boundary.
    let (status, deletion) = stack.delete_request(&ids[1]).await?;
    assert_eq!(status, 202, "{deletion}");
    gate.store(true, Ordering::SeqCst);
    let done = wait_rollout(&stack, &id, WAIT, |r| r["status"] != "running").await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["progress"]["succeeded"], 1, "{done}");
    assert_eq!(done["progress"]["skipped"], 1, "{done}");
    let (state, error, run): (String, Option<String>, Uuid) = sqlx::query_as(
        "SELECT state, error, run_id FROM fulfil.rollout_targets WHERE request_id = $1",
    )
    .bind(ids[1].parse::<Uuid>()?)
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(state, "skipped");
    assert!(
        error.as_deref().unwrap_or_default().contains("deleted"),
        "{error:?}"
    );
    let (_, upgrade) = stack.get(&format!("/v1/runs/{run}")).await?;
    assert_eq!(upgrade["kind"], "upgrade");
    assert_eq!(upgrade["status"], "cancelled", "{upgrade}");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, request) = stack.get(&format!("/v1/requests/{}", ids[1])).await?;
        if request["status"] == "deleted" {
            assert_eq!(request["promise_version"], "1");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "never deleted: {request}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, kept) = stack.get(&format!("/v1/requests/{}", ids[0])).await?;
    assert_eq!(kept["promise_version"], "2", "{kept}");
    stack.stop().await
}
