//! The result applier: consumes `<prefix>.results` through one durable
//! consumer shared by every engine process, applies the reports in batches
//! (see [`crate::run::ReportBatch`]), and acknowledges each message only
//! after its batch's transaction committed. A message that cannot be
//! parsed, names a task that does not exist, or can never be applied goes
//! to the dead-letter stream with the reason; a result Postgres refuses to
//! store fails its attempt (`output_not_storable`); a transient database
//! failure leaves it to be redelivered, at most [`MAX_DELIVER`] times.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use fulfil_bus::pull::{PULL_EXPIRES, PULL_HEARTBEAT, PullFeed};
use fulfil_core::wire::{Outcome, ResultMessage, StepFailure};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

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
    let consumer_config = pull::Config {
        durable_name: Some(names.engine_consumer()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        // A crashed engine's unacknowledged reports come back this fast; a
        // report that takes longer is redelivered and then ignored as applied.
        ack_wait: Duration::from_secs(10),
        // Bounded, so nothing spins forever; the applier parks a report on
        // its last delivery (see `retry_later`).
        max_deliver: MAX_DELIVER,
        max_ack_pending: (config.result_concurrency * config.result_batch * 4) as i64,
        ..Default::default()
    };
    let mut consumer = stream
        .get_or_create_consumer(&names.engine_consumer(), consumer_config.clone())
        .await?;
    if consumer.cached_info().config.max_deliver != MAX_DELIVER {
        // Created by a version without the bound: give it the bound.
        consumer = stream.update_consumer(consumer_config).await?;
    }
    let feed = PullFeed::open(
        js,
        consumer,
        config.result_concurrency * config.result_batch,
        PULL_EXPIRES,
        PULL_HEARTBEAT,
    )
    .await?;
    feed.for_each_batch(
        config.result_batch,
        config.result_concurrency,
        shutdown.cancelled(),
        |batch| apply_batch(engine, js, batch),
    )
    .await?;
    Ok(())
}

/// Applies every report of `batch` in one transaction (group commit), then
/// settles each message. If the transaction fails for a reason other than a
/// transient one ([`crate::db::is_transient`]), every report is tried again
/// in a transaction of its own, so one report that Postgres refuses cannot
/// hold back the others.
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
                let kind = fulfil_bus::DeadLetterReason::Unparseable;
                fulfil_bus::dead_letter(js, engine.names(), "results", &message, kind, &reason)
                    .await;
            }
        }
    }
    if reports.is_empty() {
        return;
    }
    match apply_committed(engine, &reports).await {
        Ok(outcomes) => {
            for ((message, report), outcome) in messages.into_iter().zip(reports).zip(outcomes) {
                settle(js, engine, message, report, outcome).await;
            }
        }
        Err(e) if !e.is_transient() && reports.len() == 1 => {
            if let (Some(message), Some(report)) = (messages.pop(), reports.pop()) {
                settle(js, engine, message, report, Err(ApplyError::Run(e))).await;
            }
        }
        Err(e) if !e.is_transient() => {
            warn!(error = %e, reports = reports.len(),
                  "applying a batch failed; applying its reports one by one");
            for (message, report) in messages.into_iter().zip(reports) {
                let outcome = apply_single(engine, report.clone()).await;
                settle(js, engine, message, report, outcome).await;
            }
        }
        Err(e) => {
            warn!(error = %e, reports = reports.len(), "applying a batch failed; it will be redelivered");
            for message in messages {
                retry_later(js, engine, message, &e).await;
            }
        }
    }
}

/// Error code of an attempt whose report Postgres refuses to store (say, a
/// handler output holding a `\u0000`, which `jsonb` cannot hold).
pub const OUTPUT_NOT_STORABLE: &str = "output_not_storable";

/// Acks what was applied or ignored, retries what failed for a transient
/// reason, and parks what can never be applied. A result Postgres refuses
/// fails its attempt with the permanent [`OUTPUT_NOT_STORABLE`] instead: the
/// output is the handler's fault, and failing the attempt lets the run go
/// on (retry policy aside, compensate or fail) rather than hang on a result
/// that never lands. What cannot be stored even so goes to the dead letters
/// with the reason (DESIGN.md, durability clause 10).
async fn settle(
    js: &jetstream::Context,
    engine: &Engine,
    message: jetstream::Message,
    report: Report,
    outcome: Result<Applied, ApplyError>,
) {
    let (run_id, step_id, attempt) = match &report {
        Report::Result(r) => (r.run_id, r.step_id.clone(), r.attempt),
        Report::Progress(p) => (p.run_id, p.step_id.clone(), p.attempt),
    };
    let span = info_span!("report", task_id = %report.task_id(), %run_id, %step_id, attempt);
    async {
        match outcome {
            Ok(Applied::Applied) => ack(&message, AckKind::Ack).await,
            Ok(Applied::Ignored(reason)) => {
                debug!(%reason, "report ignored");
                ack(&message, AckKind::Ack).await;
            }
            Err(ApplyError::UnknownTask(task_id)) => {
                let reason = format!("no attempt with task id {task_id}");
                let kind = fulfil_bus::DeadLetterReason::UnknownTask;
                fulfil_bus::dead_letter(js, engine.names(), "results", &message, kind, &reason)
                    .await;
            }
            Err(ApplyError::Run(e)) if e.is_transient() => {
                retry_later(js, engine, message, &e).await
            }
            Err(ApplyError::Run(e)) => {
                let Report::Result(result) = report else {
                    let reason = format!("progress report cannot be applied: {e}");
                    let kind = fulfil_bus::DeadLetterReason::Unappliable;
                    fulfil_bus::dead_letter(js, engine.names(), "results", &message, kind, &reason)
                        .await;
                    return;
                };
                warn!(error = %e, "a result cannot be applied; failing its attempt instead");
                let failed = Report::Result(ResultMessage {
                    outcome: Outcome::Error(StepFailure {
                        message: format!("the worker's report cannot be stored: {e}"),
                        code: Some(OUTPUT_NOT_STORABLE.to_string()),
                        retryable: false,
                        retry_after_ms: None,
                    }),
                    ..result
                });
                match apply_single(engine, failed).await {
                    Ok(_) => ack(&message, AckKind::Ack).await,
                    Err(ApplyError::Run(again)) if again.is_transient() => {
                        retry_later(js, engine, message, &again).await;
                    }
                    Err(again) => {
                        let reason =
                            format!("result cannot be applied: {e}; nor its failure: {again}");
                        let kind = fulfil_bus::DeadLetterReason::Unappliable;
                        fulfil_bus::dead_letter(
                            js,
                            engine.names(),
                            "results",
                            &message,
                            kind,
                            &reason,
                        )
                        .await;
                    }
                }
            }
        }
    }
    .instrument(span)
    .await;
}

/// Deliveries of one report before it is dead-lettered. With
/// `retry_delay`'s backoff that is over an hour of a database refusing
/// it for a transient reason; then it is parked, never spun on forever.
pub const MAX_DELIVER: i64 = 100;

/// Wait before redelivery `delivered` + 1 of a report that failed for a
/// transient reason: doubling from 1s, at most 60s.
fn retry_delay(delivered: i64) -> Duration {
    let exponent = u32::try_from(delivered.clamp(1, 7) - 1).unwrap_or(6);
    Duration::from_secs(2u64.pow(exponent)).min(Duration::from_secs(60))
}

/// Naks a report that failed for a transient reason, to be redelivered
/// after a backoff; on its last delivery, parks it with the reason instead,
/// as the consumer would not deliver it again.
async fn retry_later(
    js: &jetstream::Context,
    engine: &Engine,
    message: jetstream::Message,
    e: &RunError,
) {
    let delivered = message.info().map_or(1, |info| info.delivered);
    if delivered >= MAX_DELIVER {
        let reason = format!("still failing after {delivered} deliveries: {e}");
        let kind = fulfil_bus::DeadLetterReason::TooManyDeliveries;
        fulfil_bus::dead_letter(js, engine.names(), "results", &message, kind, &reason).await;
        return;
    }
    warn!(error = %e, delivered, "applying a worker report failed; it will be redelivered");
    ack(&message, AckKind::Nak(Some(retry_delay(delivered)))).await;
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        // The message is redelivered after ack_wait, and applying it again is
        // recorded as ignored: nothing is lost or applied twice.
        warn!(error = %e, "acknowledging a result failed");
    }
}
