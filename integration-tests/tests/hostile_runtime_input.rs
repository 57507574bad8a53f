//! What comes from outside (worker reports, task messages, HTTP answers,
//! oversized requests, unstorable outputs, broken rows) can fail a step or
//! be parked with its reason; it never panics a role, spins a loop or holds
//! back other work. Real Postgres and NATS.

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use chrono::Utc;
use fulfil_core::time::{MAX_DURATION, as_millis_u64};
use fulfil_core::wire::{Outcome, ResultMessage, StepFailure, TaskMessage};
use fulfil_integration_tests::TestStack;
use futures::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

fn events<'a>(history: &'a [Value], kind: &str) -> Vec<&'a Value> {
    history.iter().filter(|e| e["type"] == kind).collect()
}

/// An HTTP endpoint the test's steps call: `/busy` answers 429 with an
/// absurd `Retry-After`.
async fn endpoint() -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/busy",
        get(|| async {
            (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "10000000000000")],
                "slow down",
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((base, server))
}

/// The engine and the worker are still doing work.
async fn still_working(stack: &TestStack) -> anyhow::Result<()> {
    let run = stack.request("still", json!({})).await?;
    let run = stack.wait_finished(run, WAIT).await?;
    anyhow::ensure!(run["status"] == "succeeded", "the loops stopped: {run:#}");
    Ok(())
}

const STILL: &str = "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: { name: still, version: \"1\" }\nspec:\n  workflow:\n    steps:\n      - { id: a, uses: echo, with: { x: 1 } }\n";

#[tokio::test]
async fn durations_from_outside_are_clamped_and_nothing_panics() -> anyhow::Result<()> {
    let (base, server) = endpoint().await?;
    let stack = TestStack::start().await?;
    stack.apply(STILL).await?;
    stack
        .apply(&format!(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: outside, version: "1" }}
spec:
  api: {{ type: object, properties: {{ kind: {{ type: string }} }} }}
  workflow:
    steps:
      - id: manual
        if: "params.kind == 'manual'"
        uses: echo
        queue: manual
        retry: {{ max_attempts: 2, initial: 100ms }}
      - id: busy
        if: "params.kind == 'busy'"
        uses: http
        with: {{ url: "{base}/busy" }}
        retry: {{ max_attempts: 2, initial: 100ms }}
"#
        ))
        .await?;
    let max_ms = as_millis_u64(MAX_DURATION);

    // A worker report asking for the longest wait a u64 can say.
    let run = stack
        .request("outside", json!({ "kind": "manual" }))
        .await?;
    let task = stack.take_task("manual", WAIT).await?;
    let result = ResultMessage {
        task_id: task.task_id,
        run_id: task.run_id,
        step_id: task.step_id.clone(),
        attempt: task.attempt,
        worker_id: "rogue".into(),
        outcome: Outcome::Error(StepFailure {
            message: "slow down".into(),
            code: Some("busy".into()),
            retryable: true,
            retry_after_ms: Some(u64::MAX),
        }),
        started_at: Utc::now(),
        finished_at: Utc::now(),
    };
    stack
        .publish_json(stack.names.results_subject(), &result)
        .await?;
    let history = stack
        .wait_for_event(run, "step.retry_scheduled", WAIT)
        .await?;
    let scheduled = events(&history, "step.retry_scheduled")[0];
    assert_eq!(scheduled["data"]["delay_ms"], max_ms, "{scheduled:#}");

    // A task whose timeout no clock can hold: the worker runs it anyway
    // (bounded by the task's deadline) and the run succeeds.
    let run = stack
        .request("outside", json!({ "kind": "manual" }))
        .await?;
    let task = stack.take_task("manual", WAIT).await?;
    let huge = TaskMessage {
        timeout_ms: Some(u64::MAX),
        heartbeat_timeout_ms: Some(u64::MAX),
        secrets: Vec::new(),
        ..task
    };
    stack
        .publish_json(stack.names.task_subject("default"), &huge)
        .await?;
    let finished = stack.wait_finished(run, WAIT).await?;
    assert_eq!(finished["status"], "succeeded", "{finished:#}");

    // An HTTP endpoint's Retry-After of 10^13 seconds.
    let run = stack.request("outside", json!({ "kind": "busy" })).await?;
    let history = stack
        .wait_for_event(run, "step.retry_scheduled", WAIT)
        .await?;
    let scheduled = events(&history, "step.retry_scheduled")[0];
    assert_eq!(scheduled["data"]["delay_ms"], max_ms, "{scheduled:#}");
    assert_eq!(
        scheduled["data"]["error"]["code"], "http_status_429",
        "{scheduled:#}"
    );

    still_working(&stack).await?;
    let (status, ready) = stack.get("/readyz").await?;
    assert_eq!(status, 200, "{ready:#}");
    for role in [
        "outbox relay",
        "result applier",
        "timers",
        "intake writer 0",
    ] {
        assert_eq!(ready["roles"]["all"][role]["running"], true, "{ready:#}");
        assert_eq!(ready["roles"]["all"][role]["restarts"], 0, "{ready:#}");
    }
    server.abort();
    stack.stop().await
}

/// Takes the next raw message of `queue`'s task subject.
async fn take_raw(stack: &TestStack, queue: &str) -> anyhow::Result<Value> {
    let consumer = stack
        .js
        .get_stream(stack.names.tasks_stream())
        .await?
        .get_or_create_consumer(
            &format!("raw_{queue}"),
            pull::Config {
                durable_name: Some(format!("raw_{queue}")),
                filter_subject: stack.names.task_subject(queue),
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    let message = tokio::time::timeout(WAIT, messages.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("task stream ended"))?
        .map_err(|e| anyhow::anyhow!("pulling a message: {e}"))?;
    message.ack().await.map_err(anyhow::Error::from_boxed)?;
    Ok(serde_json::from_slice(&message.payload)?)
}

#[tokio::test]
async fn what_can_never_be_published_is_refused_or_parked_and_blocks_nothing() -> anyhow::Result<()>
{
    let stack = TestStack::start().await?;
    stack.apply(STILL).await?;
    stack
        .apply(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: doubler, version: "1" }
spec:
  api: { type: object, properties: { x: { type: string } } }
  workflow:
    steps:
      - id: twice
        uses: echo
        with: { a: "${{ params.x }}", b: "${{ params.x }}" }
"#,
        )
        .await?;

    // Parameters no task could carry: refused with 413, nothing stored.
    // Within the 1 MiB body limit, over the task input limit (1 MiB - 8 KiB).
    let huge = "x".repeat(1_045_000);
    let (status, _, body) = stack
        .post_request("doubler", json!({ "params": { "x": huge } }), None)
        .await?;
    assert_eq!(status, 413, "{body:#}");
    assert_eq!(
        body["type"]
            .as_str()
            .map(|t| t.ends_with("request-too-large")),
        Some(true),
        "{body:#}"
    );
    assert_eq!(stack.count("requests").await?, 0);

    // Accepted parameters rendered into a task over the limit: the step
    // fails with a permanent, named error instead of reaching the outbox.
    let run = stack
        .request("doubler", json!({ "x": "y".repeat(600_000) }))
        .await?;
    let finished = stack.wait_finished(run, WAIT).await?;
    assert_eq!(finished["status"], "failed", "{finished:#}");
    let history = stack.history(run).await?;
    let failed = events(&history, "step.failed");
    assert_eq!(failed.len(), 1, "{history:#?}");
    assert_eq!(failed[0]["data"]["code"], "task_too_large", "{history:#?}");
    assert!(events(&history, "step.dispatched").is_empty());

    // A row the server refuses (over its max_payload) ahead of a good one:
    // the bad one is parked with its reason, the good one is published.
    let subject = stack.names.task_subject("probe");
    for payload in [
        json!({ "big": "z".repeat(2 * 1024 * 1024) }),
        json!({ "probe": 1 }),
    ] {
        sqlx::query("INSERT INTO fulfil.outbox (subject, msg_id, payload) VALUES ($1, $2, $3)")
            .bind(&subject)
            .bind(Uuid::now_v7().to_string())
            .bind(payload)
            .execute(&stack.pool)
            .await?;
    }
    stack.engine.wake_outbox();
    assert_eq!(take_raw(&stack, "probe").await?, json!({ "probe": 1 }));
    let deadline = tokio::time::Instant::now() + WAIT;
    let reason: String = loop {
        let parked: Option<String> = sqlx::query_scalar("SELECT reason FROM fulfil.parked_outbox")
            .fetch_optional(&stack.pool)
            .await?;
        if let Some(reason) = parked {
            break reason;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "nothing parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reason.contains("max_payload"), "{reason}");
    assert_eq!(stack.count("outbox").await?, 0);

    still_working(&stack).await?;
    stack.stop().await
}

/// The reasons of the first `count` dead letters, waiting for them (bounded).
async fn dead_letter_reasons(stack: &TestStack, count: usize) -> anyhow::Result<Vec<String>> {
    let consumer = stack
        .js
        .get_stream(stack.names.dead_letter_stream())
        .await?
        .get_or_create_consumer(
            "inspect",
            pull::Config {
                durable_name: Some("inspect".into()),
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    let mut reasons = Vec::new();
    while reasons.len() < count {
        let message = tokio::time::timeout(WAIT, messages.next())
            .await
            .map_err(|_| anyhow::anyhow!("only {} dead letters: {reasons:?}", reasons.len()))?
            .ok_or_else(|| anyhow::anyhow!("dead-letter stream ended"))?
            .map_err(|e| anyhow::anyhow!("pulling a dead letter: {e}"))?;
        let reason = message
            .headers
            .as_ref()
            .and_then(|h| h.get(fulfil_bus::DEAD_LETTER_REASON_HEADER))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        reasons.push(reason);
        message.ack().await.map_err(anyhow::Error::from_boxed)?;
    }
    Ok(reasons)
}

#[tokio::test]
async fn reports_postgres_cannot_store_fail_the_attempt_or_are_parked() -> anyhow::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/nul",
        get(|| async {
            (
                [("content-type", "application/json")],
                r#"{"name":"a\u0000b"}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let stack = TestStack::start().await?;
    stack.apply(STILL).await?;
    stack
        .apply(&format!(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: unstorable, version: "1" }}
spec:
  api: {{ type: object, properties: {{ kind: {{ type: string }} }} }}
  workflow:
    steps:
      - id: nul
        if: "params.kind == 'nul'"
        uses: http
        with: {{ url: "{base}/nul" }}
        retry: {{ max_attempts: 3, initial: 100ms }}
      - id: manual
        if: "params.kind == 'manual'"
        uses: echo
        queue: manual
        heartbeat_timeout: 1h
"#
        ))
        .await?;

    // An output jsonb cannot hold: the attempt fails for good with a named
    // error (not retried: the handler would answer the same), the run ends.
    let run = stack
        .request("unstorable", json!({ "kind": "nul" }))
        .await?;
    let finished = stack.wait_finished(run, WAIT).await?;
    assert_eq!(finished["status"], "failed", "{finished:#}");
    let history = stack.history(run).await?;
    let failed = events(&history, "step.failed");
    assert_eq!(failed.len(), 1, "{history:#?}");
    assert_eq!(
        failed[0]["data"]["code"], "output_not_storable",
        "{history:#?}"
    );
    assert!(events(&history, "step.retry_scheduled").is_empty());

    // A progress report Postgres refuses cannot fail anything: it is parked
    // as a dead letter with the reason, and nothing is redelivered.
    let run = stack
        .request("unstorable", json!({ "kind": "manual" }))
        .await?;
    let task = stack.take_task("manual", WAIT).await?;
    let beat = fulfil_core::wire::ProgressMessage {
        task_id: task.task_id,
        run_id: task.run_id,
        step_id: task.step_id.clone(),
        attempt: task.attempt,
        worker_id: "rogue".into(),
        progress: fulfil_core::wire::Progress::Heartbeat,
        at: Utc::now(),
        details: Some(json!({ "note": "a\u{0}b" })),
    };
    stack
        .publish_json(stack.names.progress_subject(), &beat)
        .await?;
    let reasons = dead_letter_reasons(&stack, 1).await?;
    assert!(
        reasons[0].contains("progress report cannot be applied"),
        "{reasons:?}"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while fulfil_integration_tests::processes::engine_ack_pending(&stack).await? > 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "reports still pending"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stack.run(run).await?["status"], "running");

    still_working(&stack).await?;
    server.abort();
    stack.stop().await
}

#[tokio::test]
async fn a_timer_that_cannot_fire_is_parked_and_the_others_fire() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack
        .apply(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: waits, version: "1" }
spec:
  workflow:
    steps:
      - id: unserved
        uses: noop
        queue: nobody
        schedule_to_start: 300ms
"#,
        )
        .await?;
    let run = stack.request("waits", json!({})).await?;
    // Two timers at the head of the queue that can never fire: one whose
    // run does not exist, one naming an attempt that does not exist.
    let ghost = Uuid::now_v7();
    for (run_id, kind, task_id) in [
        (ghost, "retry", None),
        (run.as_uuid(), "attempt_timeout", Some(Uuid::now_v7())),
    ] {
        sqlx::query(
            "INSERT INTO fulfil.timers (run_id, step_id, kind, task_id, fire_at)
             VALUES ($1, 'unserved', $2, $3, now() - interval '1 hour')",
        )
        .bind(run_id)
        .bind(kind)
        .bind(task_id)
        .execute(&stack.pool)
        .await?;
    }

    let finished = stack.wait_finished(run, WAIT).await?;
    assert_eq!(finished["status"], "failed", "{finished:#}");
    let history = stack.history(run).await?;
    let failed = events(&history, "step.failed");
    assert_eq!(
        failed[0]["data"]["code"], "schedule_to_start_timeout",
        "{history:#?}"
    );

    let parked: Vec<(Uuid, String, String)> =
        sqlx::query_as("SELECT run_id, kind, reason FROM fulfil.parked_timers ORDER BY kind DESC")
            .fetch_all(&stack.pool)
            .await?;
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert_eq!(parked[0].0, ghost);
    assert!(parked[0].2.contains("does not exist"), "{parked:?}");
    assert_eq!(parked[1].1, "attempt_timeout");
    assert!(!parked[1].2.is_empty(), "{parked:?}");
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fulfil.timers WHERE fire_at < now() - interval '1 minute'",
    )
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(left, 0);
    stack.stop().await
}

#[tokio::test]
async fn readyz_names_the_roles_that_stopped() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    // A second engine with its own loops and its own API, whose loops the
    // test stops while its API keeps answering.
    let engine = fulfil_engine::Engine::new(stack.pool.clone(), stack.names.clone(), "engine-b");
    let stop_loops = tokio_util::sync::CancellationToken::new();
    let loops = tokio::spawn({
        let (engine, js, stop) = (engine.clone(), stack.js.clone(), stop_loops.clone());
        async move {
            engine
                .run(js, fulfil_engine::EngineConfig::default(), stop)
                .await
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}/readyz", listener.local_addr()?);
    let stop_api = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let state = fulfil_api::ApiState::new(engine.clone(), Some(stack.nats.clone()));
        let stop = stop_api.clone();
        async move { fulfil_api::serve(listener, state, async move { stop.cancelled().await }).await }
    });
    let readyz = || async {
        let response = stack.http.get(&api).send().await?;
        let status = response.status().as_u16();
        anyhow::Ok((status, response.json::<Value>().await?))
    };

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = readyz().await?;
        if status == 200 && body["roles"]["all"]["timers"]["running"] == true {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "never ready: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stop_loops.cancel();
    tokio::time::timeout(WAIT, loops).await???;
    let (status, body) = readyz().await?;
    assert_eq!(status, 503, "{body:#}");
    assert_eq!(body["status"], "not ready");
    for role in ["outbox relay", "result applier", "timers"] {
        assert_eq!(body["roles"]["down"][role], "shut down", "{body:#}");
    }
    assert_eq!(body["postgres"]["ok"], true);

    stop_api.cancel();
    tokio::time::timeout(WAIT, server).await???;
    stack.stop().await
}
