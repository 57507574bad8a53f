//! A standalone worker: the built-in handlers plus a custom `configure-db`,
//! serving the `default` queue.
//!
//! ```sh
//! NATS_URL=nats://127.0.0.1:4222 FULFIL_NATS_PREFIX=fulfil \
//!     cargo run -p fulfil-worker --example custom_worker
//! ```
//!
//! Ctrl-C or SIGTERM stops pulling and drains running steps.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use fulfil_bus::NatsNames;
use fulfil_worker::{Handler, Handlers, StepError, TaskContext, Worker, WorkerConfig, parse_input};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Applies settings to a freshly provisioned database (simulated here).
struct ConfigureDb;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigureDbInput {
    endpoint: String,
    #[serde(default)]
    extensions: Vec<String>,
}

#[async_trait]
impl Handler for ConfigureDb {
    async fn handle(&self, task: &TaskContext, input: Value) -> Result<Value, StepError> {
        let input: ConfigureDbInput = parse_input(input)?;
        if !input.endpoint.starts_with("postgres://") {
            return Err(StepError::invalid_input(
                "endpoint",
                format!("{:?} is not a postgres:// URL", input.endpoint),
            ));
        }
        tracing::info!(endpoint = %input.endpoint, attempt = task.attempt, "configuring database");
        // A real handler connects here. Delivery is at least once, so the
        // work must be safe to repeat: `CREATE EXTENSION IF NOT EXISTS`, or
        // the idempotency key as the provider's request token. A connection
        // failure would be `StepError::retryable(..).with_code("db_connect")`.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(json!({
            "endpoint": input.endpoint,
            "extensions": input.extensions,
            "configured_by": task.idempotency_key,
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let prefix = std::env::var("FULFIL_NATS_PREFIX").unwrap_or_else(|_| "fulfil".into());
    let names = NatsNames::new(prefix)?;
    let client = async_nats::connect(&url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))?;

    let mut handlers = Handlers::with_builtins(client.clone());
    handlers.register("configure-db", ConfigureDb);

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let config = WorkerConfig {
        queues: vec!["default".into()],
        ..WorkerConfig::default()
    };
    Worker::new(async_nats::jetstream::new(client), names, handlers, config)
        .run(shutdown)
        .await?;
    Ok(())
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
