//! The result applier: consumes `<prefix>.results` through one durable
//! consumer shared by every engine process, applies each result (see
//! [`crate::run::apply_result`]), and acknowledges the message only after the
//! transaction committed. A message that cannot be parsed, or names a task
//! that does not exist, goes to the dead-letter stream with the reason and is
//! acknowledged; a database failure leaves it to be redelivered.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use bytes::Bytes;
use fulfil_spec::wire::{
    DEAD_LETTER_REASON_HEADER, NatsNames, ProgressMessage, ResultMessage, header_text,
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::run::{Applied, ApplyError, apply_progress, apply_result};
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
                ack_wait: Duration::from_secs(30),
                max_ack_pending: (config.result_concurrency * 8) as i64,
                ..Default::default()
            },
        )
        .await?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(config.result_concurrency * 2)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    let mut failed: Option<async_nats::Error> = None;
    messages
        .take_until(shutdown.cancelled())
        .for_each_concurrent(config.result_concurrency, |message| {
            let engine = engine.clone();
            let js = js.clone();
            let outcome = match message {
                Ok(message) => Some(message),
                Err(e) => {
                    failed.get_or_insert(Box::new(e));
                    None
                }
            };
            async move {
                if let Some(message) = outcome {
                    handle(&engine, &js, message).await;
                }
            }
        })
        .await;
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn handle(engine: &Engine, js: &jetstream::Context, message: jetstream::Message) {
    let is_progress = message.subject.as_str() == engine.names().progress_subject();
    let (applied, span) = if is_progress {
        let report: ProgressMessage = match serde_json::from_slice(&message.payload) {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("unparseable progress report: {e}");
                dead_letter_then_ack(js, engine.names(), &message, &reason).await;
                return;
            }
        };
        let span = info_span!("apply_progress", run_id = %report.run_id, step_id = %report.step_id,
                              attempt = report.attempt, task_id = %report.task_id);
        (
            apply_progress(engine, &report)
                .instrument(span.clone())
                .await,
            span,
        )
    } else {
        let result: ResultMessage = match serde_json::from_slice(&message.payload) {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("unparseable result: {e}");
                dead_letter_then_ack(js, engine.names(), &message, &reason).await;
                return;
            }
        };
        let span = info_span!("apply_result", run_id = %result.run_id, step_id = %result.step_id,
                              attempt = result.attempt, task_id = %result.task_id);
        (
            apply_result(engine, &result).instrument(span.clone()).await,
            span,
        )
    };
    match applied {
        Ok(Applied::Applied) => {
            engine.wake_outbox();
            ack(&message, AckKind::Ack).await;
        }
        Ok(Applied::Ignored(reason)) => {
            debug!(parent: &span, %reason, "report ignored");
            ack(&message, AckKind::Ack).await;
        }
        Err(ApplyError::UnknownTask(task_id)) => {
            let reason = format!("no attempt with task id {task_id}");
            dead_letter_then_ack(js, engine.names(), &message, &reason).await;
        }
        Err(ApplyError::Run(e)) => {
            warn!(parent: &span, error = %e, "applying a worker report failed; it will be redelivered");
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

/// Moves a result message to the dead-letter stream, and terminates it only
/// once the dead letter is stored; otherwise it is redelivered later, so a
/// message is never silently dropped.
async fn dead_letter_then_ack(
    js: &jetstream::Context,
    names: &NatsNames,
    message: &jetstream::Message,
    reason: &str,
) {
    if dead_letter(js, names, "results", message.payload.clone(), reason).await {
        ack(message, AckKind::Term).await;
    } else {
        ack(message, AckKind::Nak(Some(Duration::from_secs(5)))).await;
    }
}

/// Publishes `payload` to `<prefix>.deadletter.<what>` with the reason;
/// returns whether the stream stored it.
pub async fn dead_letter(
    js: &jetstream::Context,
    names: &NatsNames,
    what: &str,
    payload: Bytes,
    reason: &str,
) -> bool {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(DEAD_LETTER_REASON_HEADER, header_text(reason).as_str());
    let subject = names.dead_letter_subject(what);
    warn!(%subject, %reason, "dead-lettering a message");
    match js
        .publish_with_headers(subject.clone(), headers, payload)
        .await
    {
        Ok(ack) => match ack.await {
            Ok(_) => true,
            Err(e) => {
                warn!(%subject, error = %e, "dead-letter publish was not acknowledged");
                false
            }
        },
        Err(e) => {
            warn!(%subject, error = %e, "dead-letter publish failed");
            false
        }
    }
}
