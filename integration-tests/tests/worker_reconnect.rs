//! The worker survives a NATS restart and the deletion of its consumer: it
//! keeps its pull loop and serves tasks published afterwards.
//!
//! Kills and restarts a private `nats-server` (found as
//! [`NatsServer`] finds it) on a free port, never the machine's shared one;
//! the test fails when no binary is found.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer::pull, message::PublishMessage};
use chrono::Utc;
use fulfil_bus::NatsNames;
use fulfil_core::ids::{RunId, TaskId};
use fulfil_core::wire::{Outcome, ResultMessage, TaskMessage};
use fulfil_integration_tests::processes::NatsServer;
use fulfil_worker::{Handlers, Worker, WorkerConfig};
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Publishes an echo task, retrying while the server is still recovering,
/// and waits for its result.
async fn round_trip(
    js: &jetstream::Context,
    names: &NatsNames,
    results: &jetstream::consumer::PullConsumer,
    label: &str,
) -> anyhow::Result<()> {
    let task = TaskMessage {
        task_id: TaskId::generate(),
        run_id: RunId::generate(),
        step_id: label.into(),
        attempt: 1,
        handler: "echo".into(),
        input: json!({ "label": label }),
        deadline: Utc::now() + Duration::from_secs(120),
        idempotency_key: label.into(),
        traceparent: None,
        kind: Default::default(),
        timeout_ms: None,
        heartbeat_timeout_ms: None,
        secrets: Vec::new(),
    };
    let payload = serde_json::to_vec(&task)?;
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let published = async {
                js.send_publish(
                    names.task_subject("default"),
                    PublishMessage::build()
                        .payload(payload.clone().into())
                        .message_id(task.task_id.to_string()),
                )
                .await?
                .await
            };
            match published.await {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        loop {
            let Ok(mut batch) = results
                .fetch()
                .max_messages(10)
                .expires(Duration::from_secs(1))
                .messages()
                .await
            else {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            };
            while let Some(Ok(message)) = batch.next().await {
                let result: ResultMessage = serde_json::from_slice(&message.payload)?;
                let _ = message.ack().await;
                if result.task_id == task.task_id {
                    assert_eq!(
                        result.outcome,
                        Outcome::Ok {
                            output: json!({ "label": label })
                        }
                    );
                    return anyhow::Ok(());
                }
            }
        }
    })
    .await
    .with_context(|| format!("no result for the {label} task"))?
}

#[tokio::test]
async fn worker_keeps_serving_across_nats_restart_and_consumer_deletion() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "fulfil_worker=debug".into()),
        )
        .with_test_writer()
        .try_init();
    let dir = std::env::temp_dir().join(format!("fulfil-worker-reconnect-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let outcome = scenario(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn scenario(dir: &Path) -> anyhow::Result<()> {
    // A private server this test may kill: never the machine's shared one.
    let mut server = NatsServer::start(dir).await?;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(server.url())
        .await?;
    let js = jetstream::new(client.clone());
    let names = NatsNames::new("rc")?;
    fulfil_worker::ensure_streams(&js, &names).await?;
    let results = js
        .get_stream(names.results_stream())
        .await?
        .create_consumer(pull::Config {
            durable_name: Some("test_engine".into()),
            ..Default::default()
        })
        .await?;

    let shutdown = CancellationToken::new();
    let worker = Worker::new(
        js.clone(),
        names.clone(),
        Handlers::with_builtins(client.clone()),
        WorkerConfig {
            drain_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    );
    let running = tokio::spawn(worker.run(shutdown.clone()));

    round_trip(&js, &names, &results, "before").await?;

    server.kill().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.restart().await?;

    round_trip(&js, &names, &results, "after-restart").await?;

    // An operator deletes the queue's consumer: the worker recreates it.
    js.get_stream(names.tasks_stream())
        .await?
        .delete_consumer(&names.worker_consumer("default"))
        .await?;
    round_trip(&js, &names, &results, "after-consumer-deleted").await?;

    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(15), running).await {
        Ok(joined) => joined??,
        Err(_) => bail!("the worker did not stop after shutdown"),
    }
    Ok(())
}
