//! The result applier: consumes `<prefix>.results` through one durable
//! consumer shared by every engine process, applies the reports in batches
//! (see [`crate::run::ReportBatch`]), and acknowledges each message only
//! after its batch's transaction committed. A message that cannot be
//! parsed, or names a task that does not exist, goes to the dead-letter
//! stream with the reason and is acknowledged; a database failure leaves it
//! to be redelivered.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use fulfil_bus::pull::{PULL_EXPIRES, PULL_HEARTBEAT, PullError, PullFeed};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::run::{Applied, ApplyError, Report, RunError, apply_committed, apply_single};
use crate::{Engine, EngineConfig};

pub(crate) async fn run_applier(
    engine: Engine,
    js: jetstream::Context,
    config: EngineConfig,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        if let Err(e) = consume(&engine, &js, &config, &shutdown).await {
            warn!(error = %e, "result consumer failed; rebuilding it");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn consume(
    engine: &Engine,
    js: &jetstream::Context,
    config: &EngineConfig,
    shutdown: &CancellationToken,
) -> Result<(), async_nats::Error> {
    let names = engine.names();
    let stream = js.get_stream(names.results_stream()).await?;
    let consumer = stream
        .get_or_create_consumer(
            &names.engine_consumer(),
            pull::Config {
                durable_name: Some(names.engine_consumer()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                // A crashed engine's unacknowledged reports come back this fast; a
                // report that takes longer is redelivered and then ignored as applied.
                ack_wait: Duration::from_secs(10),
                max_ack_pending: (config.result_concurrency * config.result_batch * 4) as i64,
                ..Default::default()
            },
        )
        .await?;
    let feed = PullFeed::open(
        js,
        consumer,
        config.result_concurrency * config.result_batch,
        PULL_EXPIRES,
        PULL_HEARTBEAT,
    )
    .await?;
    // The feed's first error ends it; the caller then builds a new one.
    let messages = futures::stream::unfold(Some(feed), |feed| async move {
        let mut feed = feed?;
        match feed.next().await {
            Ok(message) => Some((Ok(message), Some(feed))),
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut failed: Option<PullError> = None;
    messages
        .take_until(shutdown.cancelled())
        .filter_map(|message| {
            let message = match message {
                Ok(message) => Some(message),
                Err(e) => {
                    failed.get_or_insert(e);
                    None
                }
            };
            std::future::ready(message)
        })
        .ready_chunks(config.result_batch)
        .for_each_concurrent(config.result_concurrency, |batch| {
            apply_batch(engine, js, batch)
        })
        .await;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Applies every report of `batch` in one transaction (group commit), then
/// acknowledges each. If the transaction fails for a reason other than a
/// lost connection, every report is tried again in a transaction of its
/// own, so one report that Postgres refuses cannot hold back the others.
async fn apply_batch(engine: &Engine, js: &jetstream::Context, batch: Vec<jetstream::Message>) {
    let mut messages = Vec::with_capacity(batch.len());
    let mut reports = Vec::with_capacity(batch.len());
    for message in batch {
        let is_progress = message.subject.as_str() == engine.names().progress_subject();
        let parsed = if is_progress {
            serde_json::from_slice(&message.payload).map(Report::Progress)
        } else {
            serde_json::from_slice(&message.payload).map(Report::Result)
        };
        match parsed {
            Ok(report) => {
                messages.push(message);
                reports.push(report);
            }
            Err(e) => {
                let what = if is_progress {
                    "progress report"
                } else {
                    "result"
                };
                let reason = format!("unparseable {what}: {e}");
                fulfil_bus::dead_letter(js, engine.names(), "results", &message, &reason).await;
            }
        }
    }
    if reports.is_empty() {
        return;
    }
    match apply_committed(engine, &reports).await {
        Ok(outcomes) => {
            for (message, outcome) in messages.into_iter().zip(outcomes) {
                acknowledge(js, engine, message, outcome).await;
            }
        }
        Err(e) if reports.len() > 1 && !is_connection_loss(&e) => {
            warn!(error = %e, reports = reports.len(),
                  "applying a batch failed; applying its reports one by one");
            for (message, report) in messages.into_iter().zip(reports) {
                let outcome = apply_single(engine, report).await;
                acknowledge(js, engine, message, outcome).await;
            }
        }
        Err(e) => {
            warn!(error = %e, reports = reports.len(), "applying a batch failed; it will be redelivered");
            for message in &messages {
                ack(message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }
}

/// Whether the failure says nothing about the reports themselves.
fn is_connection_loss(e: &RunError) -> bool {
    matches!(
        e,
        RunError::Db(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
    )
}

/// Acks what was applied or ignored, dead-letters orphans, naks failures.
async fn acknowledge(
    js: &jetstream::Context,
    engine: &Engine,
    message: jetstream::Message,
    outcome: Result<Applied, ApplyError>,
) {
    match outcome {
        Ok(Applied::Applied) => ack(&message, AckKind::Ack).await,
        Ok(Applied::Ignored(reason)) => {
            debug!(%reason, "report ignored");
            ack(&message, AckKind::Ack).await;
        }
        Err(ApplyError::UnknownTask(task_id)) => {
            let reason = format!("no attempt with task id {task_id}");
            fulfil_bus::dead_letter(js, engine.names(), "results", &message, &reason).await;
        }
        Err(ApplyError::Run(e)) => {
            warn!(error = %e, "applying a worker report failed; it will be redelivered");
            ack(&message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
        }
    }
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        // The message is redelivered after ack_wait, and applying it again is
        // recorded as ignored: nothing is lost or applied twice.
        warn!(error = %e, "acknowledging a result failed");
    }
}
