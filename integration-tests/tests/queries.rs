//! Operator queries against the real Postgres and NATS (issue 15, part 1):
//! every filter of `GET /v1/runs` finds the runs it names and nothing else,
//! bad values answer 400 naming the value and the accepted ones, pages stay
//! complete and free of duplicates while runs are created, a run of 2,000
//! steps answers whole, and retention removes old finished runs with their
//! rows while running and recent ones stay.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use chrono::Utc;
use fulfil_core::ids::RunId;
use fulfil_integration_tests::{StackOptions, TestStack};
use fulfil_worker::{Handler, StepError, TaskContext};
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// Always fails, retryably: with a one-hour backoff its step stays retrying.
struct Broken;

#[async_trait]
impl Handler for Broken {
    async fn handle(&self, _: &TaskContext, _: Value) -> Result<Value, StepError> {
        Err(StepError::retryable("the backend is down").with_code("backend_down"))
    }
}

fn promise(name: &str, owner: &str, steps: &str, delete: &str) -> String {
    format!(
        "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: {{ name: {name}, version: \"1\", owner: {owner} }}\nspec:\n  workflow:\n    steps:\n{steps}{delete}"
    )
}

/// Promises covering each thing a run can wait for, owned by three teams.
fn promises() -> Vec<String> {
    vec![
        promise(
            "q-ok",
            "team-a",
            "      - id: make\n        uses: echo\n",
            "  delete:\n    steps:\n      - id: unmake\n        uses: echo\n",
        ),
        promise(
            "q-approval",
            "team-b",
            "      - id: approve\n        uses: approval\n        with: { approvers: [\"team:sre\"] }\n",
            "",
        ),
        promise(
            "q-sleep",
            "team-b",
            "      - id: nap\n        uses: sleep\n        with: { for: 1h }\n",
            "",
        ),
        promise(
            "q-retry",
            "team-c",
            "      - id: call\n        uses: broken\n        retry: { max_attempts: 5, initial: 1h, max: 1h }\n",
            "",
        ),
        // No worker serves queue `nobody`: the task stays dispatched.
        promise(
            "q-worker",
            "team-c",
            "      - id: provision\n        uses: echo\n        queue: nobody\n",
            "",
        ),
    ]
}

async fn stack() -> anyhow::Result<TestStack> {
    let stack = TestStack::start_with(StackOptions {
        handlers: Box::new(|h| {
            h.register("broken", Broken);
        }),
        ..StackOptions::default()
    })
    .await?;
    for yaml in promises() {
        stack.apply(&yaml).await?;
    }
    Ok(stack)
}

/// Polls the run until `check` holds, for at most [`WAIT`].
async fn wait_run(
    stack: &TestStack,
    run: RunId,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = stack.run(run).await?;
        if check(&body) {
            return Ok(body);
        }
        if Instant::now() > deadline {
            bail!("run {run} never became {what}: {body:#}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn step_waits(run: &Value, kind: &str) -> bool {
    run["steps"][0]["waiting_for"]["kind"] == kind
}

/// Run ids of `GET /v1/runs?{query}` (one page of up to 500).
async fn ids(stack: &TestStack, query: &str) -> anyhow::Result<BTreeSet<String>> {
    let (status, body) = stack.get(&format!("/v1/runs?limit=500&{query}")).await?;
    if status != 200 {
        bail!("GET /v1/runs?{query}: {status} {body}");
    }
    Ok(body["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect())
}

fn set(ids: &[&RunId]) -> BTreeSet<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

#[tokio::test]
async fn each_run_filter_finds_its_runs_and_bad_values_answer_400() -> anyhow::Result<()> {
    let stack = stack().await?;
    let before = Utc::now() - chrono::TimeDelta::seconds(1);

    let ok = stack.request("q-ok", json!({})).await?;
    let approval = stack.request("q-approval", json!({})).await?;
    let sleep = stack.request("q-sleep", json!({})).await?;
    let retry = stack.request("q-retry", json!({})).await?;
    let worker = stack.request("q-worker", json!({})).await?;
    let ok_run = stack.wait_finished(ok, WAIT).await?;
    assert_eq!(ok_run["status"], "succeeded");
    assert_eq!(ok_run["owner"], "team-a");
    wait_run(&stack, approval, "waiting for approval", |r| {
        step_waits(r, "approval")
    })
    .await?;
    wait_run(&stack, sleep, "asleep", |r| step_waits(r, "sleep")).await?;
    let retry_run = wait_run(&stack, retry, "retrying", |r| step_waits(r, "retry")).await?;
    let worker_run = wait_run(&stack, worker, "on a worker", |r| step_waits(r, "worker")).await?;

    // What `GET /v1/runs/{id}` says a step waits for, and its attempts' timings.
    let retrying = &retry_run["steps"][0];
    assert_eq!(retrying["status"], "retrying");
    assert_eq!(retrying["waiting_for"]["attempt"], 2);
    let next: chrono::DateTime<Utc> =
        serde_json::from_value(retrying["waiting_for"]["next_attempt_at"].clone())?;
    assert!(next > Utc::now() + chrono::TimeDelta::minutes(30), "{next}");
    assert_eq!(retrying["attempts"][0]["status"], "failed");
    assert!(
        retrying["attempts"][0]["duration_ms"].is_i64(),
        "{retrying}"
    );
    assert_eq!(worker_run["steps"][0]["waiting_for"]["queue"], "nobody");
    assert_eq!(worker_run["steps"][0]["waiting_for"]["worker"], Value::Null);
    assert!(ok_run["steps"][0]["duration_ms"].is_i64(), "{ok_run}");
    assert_eq!(ok_run["steps"][0]["waiting_for"], Value::Null);

    // A delete run for the succeeded request: kind `delete`.
    let request_id = ok_run["request_id"].as_str().context("request_id")?;
    let (status, deletion) = stack.delete_request(request_id).await?;
    assert_eq!(status, 202, "{deletion}");
    let delete_run: RunId = deletion["run_id"]
        .as_str()
        .context("delete run_id")?
        .parse()?;
    stack.wait_finished(delete_run, WAIT).await?;

    let all = set(&[&ok, &approval, &sleep, &retry, &worker, &delete_run]);
    let live = set(&[&approval, &sleep, &retry, &worker]);
    assert_eq!(ids(&stack, "").await?, all);
    assert_eq!(ids(&stack, "status=running").await?, live);
    assert_eq!(
        ids(&stack, "status=succeeded").await?,
        set(&[&ok, &delete_run])
    );
    assert!(ids(&stack, "status=cancelled").await?.is_empty());
    assert_eq!(ids(&stack, "promise=q-ok").await?, set(&[&ok, &delete_run]));
    assert!(ids(&stack, "promise=q-nothing").await?.is_empty());
    assert_eq!(
        ids(&stack, &format!("request={request_id}")).await?,
        set(&[&ok, &delete_run])
    );
    assert!(
        ids(&stack, &format!("request={}", Uuid::now_v7()))
            .await?
            .is_empty()
    );
    assert_eq!(ids(&stack, "kind=delete").await?, set(&[&delete_run]));
    assert_eq!(
        ids(&stack, "kind=configure").await?,
        set(&[&ok, &approval, &sleep, &retry, &worker])
    );
    assert!(ids(&stack, "kind=reconcile").await?.is_empty());
    assert_eq!(
        ids(&stack, "owner=team-b").await?,
        set(&[&approval, &sleep])
    );
    assert!(ids(&stack, "owner=team-z").await?.is_empty());
    assert_eq!(ids(&stack, "waiting_for=retry").await?, set(&[&retry]));
    assert_eq!(
        ids(&stack, "waiting_for=approval").await?,
        set(&[&approval])
    );
    assert_eq!(ids(&stack, "waiting_for=sleep").await?, set(&[&sleep]));
    assert_eq!(ids(&stack, "waiting_for=worker").await?, set(&[&worker]));
    assert!(ids(&stack, "waiting_for=event").await?.is_empty());
    // Combinations narrow.
    assert_eq!(
        ids(&stack, "owner=team-c&waiting_for=worker").await?,
        set(&[&worker])
    );
    assert!(
        ids(&stack, "owner=team-b&waiting_for=worker")
            .await?
            .is_empty()
    );
    assert_eq!(
        ids(&stack, "status=succeeded&kind=configure").await?,
        set(&[&ok])
    );
    // Time ranges: created_at in [since, until).
    let since = before.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let later = (Utc::now() + chrono::TimeDelta::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let earlier =
        (before - chrono::TimeDelta::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let enc = |t: &str| t.replace('+', "%2B");
    assert_eq!(ids(&stack, &format!("since={}", enc(&since))).await?, all);
    assert!(
        ids(&stack, &format!("since={}", enc(&later)))
            .await?
            .is_empty()
    );
    assert!(
        ids(&stack, &format!("until={}", enc(&since)))
            .await?
            .is_empty()
    );
    assert_eq!(
        ids(
            &stack,
            &format!("since={}&until={}", enc(&earlier), enc(&later))
        )
        .await?,
        all
    );

    // Bad values: 400 naming the value and what is accepted; nothing else.
    for (query, names) in [
        ("status=bogus", vec!["bogus", "running", "compensated"]),
        ("kind=destroy", vec!["destroy", "configure", "reconcile"]),
        (
            "waiting_for=human",
            vec!["human", "retry", "approval", "worker"],
        ),
        ("request=not-a-uuid", vec!["not-a-uuid"]),
        ("cursor=zzz", vec!["zzz"]),
        ("since=yesterday", vec!["since"]),
        ("colour=red", vec!["colour"]),
    ] {
        let (status, body) = stack.get(&format!("/v1/runs?{query}")).await?;
        assert_eq!(status, 400, "{query}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        for name in names {
            assert!(detail.contains(name), "{query}: {detail:?} lacks {name:?}");
        }
    }
    let (status, body) = stack
        .get(&format!(
            "/v1/runs?since={}&until={}",
            enc(&later),
            enc(&earlier)
        ))
        .await?;
    assert_eq!(status, 400, "{body}");
    // Times at the ends of what chrono reads answer, never overflow.
    for edge in ["-262143-01-01T00:00:00Z", "+262142-12-31T23:59:59Z"] {
        for param in ["since", "until"] {
            let (status, body) = stack
                .get(&format!("/v1/runs?{param}={}", enc(edge)))
                .await?;
            assert!(
                status == 200 || status == 400,
                "{param}={edge}: {status} {body}"
            );
        }
    }
    let (status, body) = stack.get("/v1/requests?status=lost").await?;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap_or_default().contains("lost"));

    stack.stop().await
}

/// Inserts `n` finished runs of `q-ok` directly (one request each),
/// `age` ago; returns their ids.
async fn seed_runs(
    stack: &TestStack,
    n: usize,
    status: &str,
    finished_ago: Option<chrono::TimeDelta>,
) -> anyhow::Result<Vec<RunId>> {
    let mut runs = Vec::with_capacity(n);
    for _ in 0..n {
        let (request, run) = (Uuid::now_v7(), Uuid::now_v7());
        let finished = finished_ago.map(|ago| Utc::now() - ago);
        sqlx::query(
            "WITH q AS (
                 INSERT INTO fulfil.requests (id, promise, promise_version, params, status, run_id)
                 VALUES ($1, 'q-ok', '1', '{}', CASE WHEN $4::timestamptz IS NULL THEN 'running' ELSE 'succeeded' END, $2)
                 RETURNING id)
             INSERT INTO fulfil.runs (id, request_id, promise, promise_version, kind, status, context,
                                      owner, history_seq, finished_at)
             SELECT $2, id, 'q-ok', '1', 'configure', $3, '{}', 'team-a', 1, $4 FROM q",
        )
        .bind(request)
        .bind(run)
        .bind(status)
        .bind(finished)
        .execute(&stack.pool)
        .await?;
        sqlx::query(
            "INSERT INTO fulfil.steps (run_id, step_id, position, status, attempt)
             VALUES ($1, 'make', 0, 'succeeded', 1)",
        )
        .bind(run)
        .execute(&stack.pool)
        .await?;
        sqlx::query(
            "INSERT INTO fulfil.attempts (task_id, run_id, step_id, attempt, status, handler, queue,
                                          input, deadline)
             VALUES ($2, $1, 'make', 1, 'succeeded', 'echo', 'default', '{}', now())",
        )
        .bind(run)
        .bind(Uuid::now_v7())
        .execute(&stack.pool)
        .await?;
        sqlx::query(
            "INSERT INTO fulfil.history (run_id, seq, type, actor) VALUES ($1, 1, 'run.started', 'test')",
        )
        .bind(run)
        .execute(&stack.pool)
        .await?;
        runs.push(RunId::from(run));
    }
    Ok(runs)
}

#[tokio::test]
async fn pages_have_no_gap_and_no_duplicate_while_runs_arrive() -> anyhow::Result<()> {
    let stack = stack().await?;
    for _ in 0..40 {
        stack.request("q-ok", json!({})).await?;
    }
    seed_runs(&stack, 80, "succeeded", Some(chrono::TimeDelta::minutes(5))).await?;

    // Runs keep arriving through the API while the client pages.
    let stop = Arc::new(AtomicBool::new(false));
    let inserter = {
        let (stop, http, api) = (stop.clone(), stack.http.clone(), stack.api.clone());
        tokio::spawn(async move {
            let mut filed = 0u32;
            while !stop.load(Ordering::SeqCst) && filed < 500 {
                let response = http
                    .post(format!("{api}/v1/promises/q-ok/requests"))
                    .json(&json!({ "params": {} }))
                    .send()
                    .await?;
                anyhow::ensure!(response.status().as_u16() == 202, "request refused");
                filed += 1;
            }
            Ok::<u32, anyhow::Error>(filed)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let existing: HashSet<String> = sqlx::query_scalar::<_, Uuid>("SELECT id FROM fulfil.runs")
        .fetch_all(&stack.pool)
        .await?
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    let newest_existing = existing.iter().max().cloned().context("no runs")?;

    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 200, "paging never ended");
        let path = match &cursor {
            Some(c) => format!("/v1/runs?limit=7&cursor={c}"),
            None => "/v1/runs?limit=7".to_string(),
        };
        let (status, body) = stack.get(&path).await?;
        assert_eq!(status, 200, "{body}");
        for item in body["items"].as_array().context("items")? {
            seen.push(item["id"].as_str().context("id")?.to_string());
        }
        // Give the inserter room between pages.
        tokio::time::sleep(Duration::from_millis(10)).await;
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    stop.store(true, Ordering::SeqCst);
    let filed = inserter.await??;
    assert!(filed > 0, "nothing was filed while paging");

    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a run was listed twice");
    let missing: Vec<&String> = existing.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "runs missing from the pages: {missing:?}"
    );
    // Anything else listed arrived before the first page was read: newer
    // than every run that existed, so it sorted ahead of them.
    for extra in unique.iter().filter(|id| !existing.contains(**id)) {
        assert!(**extra > newest_existing, "{extra} listed among old runs");
    }
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "pages are not newest first");
    stack.stop().await
}

#[tokio::test]
async fn a_run_of_2000_steps_answers_whole() -> anyhow::Result<()> {
    let stack = stack().await?;
    let run = seed_runs(&stack, 1, "succeeded", Some(chrono::TimeDelta::minutes(1)))
        .await?
        .remove(0);
    sqlx::query(
        "WITH s AS (
             INSERT INTO fulfil.steps (run_id, step_id, position, status, attempt)
             SELECT $1, 'step-' || lpad(i::text, 4, '0'), i, 'succeeded', 1
             FROM generate_series(1, 2000) i RETURNING step_id)
         INSERT INTO fulfil.attempts (task_id, run_id, step_id, attempt, status, handler, queue, input,
                                      dispatched_at, started_at, finished_at, worker, deadline)
         SELECT gen_random_uuid(), $1, step_id, 1, 'succeeded', 'echo', 'default', '{}',
                now() - interval '2 s', now() - interval '1500 ms', now(), 'worker-1', now()
         FROM s",
    )
    .bind(run.as_uuid())
    .execute(&stack.pool)
    .await?;
    let body = stack.run(run).await?;
    let steps = body["steps"].as_array().context("steps")?;
    assert_eq!(steps.len(), 2001);
    assert_eq!(steps[1]["id"], "step-0001");
    assert_eq!(steps[2000]["id"], "step-2000");
    for step in &steps[1..] {
        let attempts = step["attempts"].as_array().context("attempts")?;
        assert_eq!(attempts.len(), 1, "{step}");
        assert_eq!(attempts[0]["worker"], "worker-1");
        assert_eq!(attempts[0]["duration_ms"], 1500, "{step}");
        assert_eq!(step["duration_ms"], 2000, "{step}");
    }
    stack.stop().await
}

#[tokio::test]
async fn retention_removes_old_finished_runs_with_their_rows_only() -> anyhow::Result<()> {
    let stack = stack().await?;
    let month = chrono::TimeDelta::days(31);
    let old = seed_runs(&stack, 7, "succeeded", Some(month)).await?;
    let recent = seed_runs(&stack, 2, "failed", Some(chrono::TimeDelta::hours(1))).await?;
    let running = seed_runs(&stack, 2, "running", None).await?;
    // Old, but still running: finished_at is what counts, not created_at.
    sqlx::query("UPDATE fulfil.runs SET created_at = now() - interval '90 days' WHERE id = $1")
        .bind(running[0].as_uuid())
        .execute(&stack.pool)
        .await?;
    // A deleted request whose only run is old goes with it.
    let deleted = old[0];
    sqlx::query(
        "UPDATE fulfil.requests SET status = 'deleted'
         WHERE id = (SELECT request_id FROM fulfil.runs WHERE id = $1)",
    )
    .bind(deleted.as_uuid())
    .execute(&stack.pool)
    .await?;
    let kept_request: Uuid = sqlx::query_scalar("SELECT request_id FROM fulfil.runs WHERE id = $1")
        .bind(old[1].as_uuid())
        .fetch_one(&stack.pool)
        .await?;

    let cutoff = Utc::now() - chrono::TimeDelta::days(30);
    let mut removed = 0;
    let mut requests = 0;
    for _ in 0..10 {
        let batch = fulfil_engine::retention::remove_batch(&stack.pool, cutoff, 3).await?;
        assert!(batch.runs <= 3);
        removed += batch.runs;
        requests += batch.requests;
        if batch.runs == 0 {
            break;
        }
    }
    assert_eq!(removed, 7);
    assert_eq!(requests, 1);

    let old_ids: Vec<Uuid> = old.iter().map(|r| r.as_uuid()).collect();
    for table in ["runs", "steps", "attempts", "history"] {
        let column = if table == "runs" { "id" } else { "run_id" };
        let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM fulfil.{table} WHERE {column} = ANY($1)"
        )))
        .bind(&old_ids)
        .fetch_one(&stack.pool)
        .await?;
        assert_eq!(left, 0, "{table} keeps rows of removed runs");
    }
    for run in recent.iter().chain(&running) {
        let (status, _) = stack.get(&format!("/v1/runs/{run}")).await?;
        assert_eq!(status, 200, "run {run} was removed");
        let (_, history) = stack.get(&format!("/v1/runs/{run}/history")).await?;
        assert_eq!(history["items"].as_array().map(Vec::len), Some(1));
    }
    let (status, _) = stack.get(&format!("/v1/runs/{}", old[1])).await?;
    assert_eq!(status, 404);
    // The request of a removed run stays (what it made still exists) ...
    let (status, request) = stack.get(&format!("/v1/requests/{kept_request}")).await?;
    assert_eq!(status, 200, "{request}");
    // ... unless it was deleted.
    let requests_left: i64 = sqlx::query_scalar("SELECT count(*) FROM fulfil.requests")
        .fetch_one(&stack.pool)
        .await?;
    assert_eq!(requests_left, 10);
    stack.stop().await
}
