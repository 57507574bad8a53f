//! The worker against a real NATS server (`NATS_URL`, default
//! `nats://127.0.0.1:4222`), isolated by a unique subject and stream prefix.

use std::{collections::HashMap, time::Duration};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer::pull, message::PublishMessage};
use async_trait::async_trait;
use chrono::Utc;
use fulfil_bus::{DEAD_LETTER_REASON_HEADER, NatsNames};
use fulfil_core::ids::{RunId, TaskId};
use fulfil_core::wire::{Outcome, ResultMessage, StepFailure, TaskMessage};
use fulfil_worker::{Handler, Handlers, StepError, TaskContext, Worker, WorkerConfig};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

struct Panics;

#[async_trait]
impl Handler for Panics {
    async fn handle(&self, _: &TaskContext, _: Value) -> Result<Value, StepError> {
        panic!("configure-db exploded");
    }
}

struct Sleeps;

#[async_trait]
impl Handler for Sleeps {
    async fn handle(&self, _: &TaskContext, _: Value) -> Result<Value, StepError> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(Value::Null)
    }
}

fn task(handler: &str, input: Value, deadline: Duration) -> TaskMessage {
    TaskMessage {
        task_id: TaskId::generate(),
        run_id: RunId::generate(),
        step_id: format!("{handler}-step").into(),
        attempt: 2,
        handler: handler.into(),
        input,
        deadline: Utc::now() + deadline,
        idempotency_key: "idem".into(),
        traceparent: None,
        kind: Default::default(),
        timeout_ms: None,
        heartbeat_timeout_ms: None,
        secrets: Vec::new(),
    }
}

fn failure(result: &ResultMessage) -> &StepFailure {
    match &result.outcome {
        Outcome::Error(failure) => failure,
        Outcome::Ok { output } => panic!("expected a failure, got {output}"),
    }
}

#[tokio::test]
async fn worker_reports_results_and_dead_letters_garbage() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "fulfil_worker=debug".into()),
        )
        .with_test_writer()
        .try_init();

    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = tokio::time::timeout(WAIT, async_nats::connect(&url))
        .await
        .context("connecting to NATS timed out")?
        .with_context(|| format!("cannot connect to NATS at {url}"))?;
    let js = jetstream::new(client.clone());
    let names = NatsNames::new(format!("wt_{}", Uuid::now_v7().simple()))?;

    let outcome = scenario(&client, &js, &names).await;

    fulfil_bus::streams::delete_streams(&js, &names).await;
    outcome
}

async fn scenario(
    client: &async_nats::Client,
    js: &jetstream::Context,
    names: &NatsNames,
) -> anyhow::Result<()> {
    fulfil_worker::ensure_streams(js, names).await?;
    // A second call (another process starting) is a no-op.
    fulfil_worker::ensure_streams(js, names).await?;

    let mut handlers = Handlers::with_builtins(client.clone());
    handlers
        .register("panics", Panics)
        .register("sleeps", Sleeps);
    let shutdown = CancellationToken::new();
    let worker = Worker::new(
        js.clone(),
        names.clone(),
        handlers,
        WorkerConfig {
            worker_id: "test-worker".into(),
            concurrency: 4,
            drain_timeout: Duration::from_secs(5),
            ..Default::default()
        },
    );
    let running = tokio::spawn(worker.run(shutdown.clone()));

    let input = json!({"name": "db1", "nested": {"size": "small", "tags": [1, 2]}});
    let tasks = [
        task("echo", input.clone(), Duration::from_secs(60)),
        task("no-such-handler", json!({}), Duration::from_secs(60)),
        task("panics", json!({}), Duration::from_secs(60)),
        task("sleeps", json!({}), Duration::from_millis(500)),
    ];
    let subject = names.task_subject("default");
    for task in &tasks {
        let payload = serde_json::to_vec(task)?;
        for _ in 0..2 {
            // Published twice with the same Nats-Msg-Id: stored once.
            js.send_publish(
                subject.clone(),
                PublishMessage::build()
                    .payload(payload.clone().into())
                    .message_id(task.task_id.to_string()),
            )
            .await?
            .await?;
        }
    }
    let garbage = b"{not a task".to_vec();
    js.publish(subject.clone(), garbage.clone().into())
        .await?
        .await?;

    // Read results as the engine would.
    let results_consumer = js
        .get_stream(names.results_stream())
        .await?
        .create_consumer(pull::Config {
            durable_name: Some("test_engine".into()),
            // Progress reports share the stream; this test reads results only.
            filter_subject: names.results_subject(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let mut results: HashMap<TaskId, ResultMessage> = HashMap::new();
    tokio::time::timeout(WAIT, async {
        while results.len() < tasks.len() {
            let mut batch = results_consumer
                .fetch()
                .max_messages(10)
                .expires(Duration::from_secs(1))
                .messages()
                .await?;
            while let Some(message) = batch.next().await {
                let message = message.map_err(anyhow::Error::from_boxed)?;
                let result: ResultMessage = serde_json::from_slice(&message.payload)?;
                message.ack().await.map_err(anyhow::Error::from_boxed)?;
                results.insert(result.task_id, result);
            }
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("only {} of {} results arrived", results.len(), tasks.len()))??;

    let [echo, unknown, panics, sleeps] = &tasks;
    let echoed = &results[&echo.task_id];
    assert_eq!(echoed.outcome, Outcome::Ok { output: input });
    assert_eq!(echoed.worker_id, "test-worker");
    assert_eq!(echoed.run_id, echo.run_id);
    assert_eq!(echoed.step_id.as_str(), "echo-step");
    assert_eq!(echoed.attempt, 2);
    assert!(echoed.started_at <= echoed.finished_at);

    let unknown = failure(&results[&unknown.task_id]);
    assert_eq!(unknown.code.as_deref(), Some("unknown_handler"));
    assert!(!unknown.retryable);
    assert!(unknown.message.contains("echo"), "{}", unknown.message);

    let panicked = failure(&results[&panics.task_id]);
    assert_eq!(panicked.code.as_deref(), Some("handler_panic"));
    assert!(panicked.retryable);
    assert!(
        panicked.message.contains("configure-db exploded"),
        "{}",
        panicked.message
    );

    let timed_out = failure(&results[&sleeps.task_id]);
    assert_eq!(timed_out.code.as_deref(), Some("timeout"));
    assert!(timed_out.retryable);

    // The garbage went to the dead-letter subject with the reason.
    let dead_letters = js
        .get_stream(names.dead_letter_stream())
        .await?
        .create_consumer(pull::Config {
            filter_subject: names.dead_letter_subject("tasks"),
            ..Default::default()
        })
        .await?;
    let dead = tokio::time::timeout(WAIT, async {
        loop {
            let mut batch = dead_letters
                .fetch()
                .max_messages(1)
                .expires(Duration::from_secs(1))
                .messages()
                .await?;
            if let Some(message) = batch.next().await {
                break anyhow::Ok(message.map_err(anyhow::Error::from_boxed)?);
            }
        }
    })
    .await
    .context("no dead letter arrived")??;
    assert_eq!(dead.payload.as_ref(), garbage.as_slice());
    let headers = dead.headers.as_ref().context("dead letter has headers")?;
    let reason = headers
        .get(DEAD_LETTER_REASON_HEADER)
        .context("dead letter has a reason")?
        .as_str();
    assert!(reason.contains("not a valid task message"), "{reason}");
    assert_eq!(
        headers
            .get("Fulfil-Dead-Letter-Subject")
            .map(|v| v.as_str()),
        Some(subject.as_str())
    );

    // Every task, garbage included, was acked or terminated: the work queue
    // is empty, and the duplicates were never stored.
    let mut tasks_stream = js.get_stream(names.tasks_stream()).await?;
    let info = tasks_stream.info().await?;
    assert_eq!(info.state.last_sequence, 5, "duplicates were not stored");
    tokio::time::timeout(WAIT, async {
        loop {
            if tasks_stream.info().await?.state.messages == 0 {
                break anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .context("the tasks stream never emptied")??;

    shutdown.cancel();
    match tokio::time::timeout(WAIT, running).await {
        Ok(joined) => joined??,
        Err(_) => bail!("the worker did not stop after shutdown"),
    }
    Ok(())
}
