//! The bus side of inbound events: the inbound stream that captures every
//! subject a trigger listens on, and the consumer that files from it.
//!
//! The stream (`<prefix>_inbound`, work-queue retention) is created or
//! widened when a Promise with triggers is applied, and again by every
//! engine from the Promise heads it finds, so events published by any plain
//! NATS client are kept while no engine runs and processed when one starts.
//! Subjects are only ever added: an event on a subject no trigger wants any
//! more is recorded in the ledger as matching nothing.
//!
//! The consumer takes messages in batches, commits each batch's outcome in
//! one transaction ([`super::receive`]) and only then acknowledges its
//! messages. A transient database failure leaves the batch to be
//! redelivered; a message that keeps failing is dead-lettered (on the bus,
//! since Postgres is what fails) on its last delivery. A message that is
//! not a CloudEvent is a dead letter at once and never stops the consumer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use fulfil_bus::NatsNames;
use fulfil_bus::pull::{PULL_EXPIRES, PULL_HEARTBEAT, PullFeed};
use fulfil_core::status::EventVia;
use fulfil_core::trigger::subject_matches;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::cloudevent::ReceivedEvent;
use super::receive::{Arrival, RawMessage, Received, receive};
use crate::Engine;

/// Most deliveries of one inbound message; the last one dead-letters it.
pub const MAX_DELIVER: i64 = 20;
/// Messages decided in one transaction.
const BATCH: usize = 256;
/// Batches decided at once.
const CONCURRENCY: usize = 2;
/// How often an engine checks that the stream captures every trigger's
/// subject (a Promise may have been applied by a process without NATS),
/// beside the consumer.
const RECONCILE_EVERY: Duration = Duration::from_secs(10);

/// The inbound stream could not capture a subject.
#[derive(Debug, thiserror::Error)]
pub enum InboundStreamError {
    /// NATS refused the stream's new subjects, e.g. because another stream
    /// already captures one of them.
    #[error("NATS refused to capture subjects {subjects:?} in stream {stream}: {message}")]
    Refused {
        stream: String,
        subjects: Vec<String>,
        message: String,
    },
    /// NATS could not be asked.
    #[error("cannot reach JetStream to update stream {stream}: {message}")]
    Unavailable { stream: String, message: String },
}

fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// The subjects of `subjects` that no other one of them covers: NATS
/// refuses a stream whose own subjects overlap.
fn minimal_cover(subjects: BTreeSet<String>) -> Vec<String> {
    subjects
        .iter()
        .filter(|s| {
            !subjects
                .iter()
                .any(|other| other != *s && subject_matches(other, s))
        })
        .cloned()
        .collect()
}

/// Makes the inbound stream capture `wanted` as well as what it captures
/// already; creates it on first use. Does nothing when nothing is new.
pub async fn capture_subjects(
    js: &jetstream::Context,
    names: &NatsNames,
    wanted: &[String],
) -> Result<(), InboundStreamError> {
    if wanted.is_empty() {
        return Ok(());
    }
    let stream_name = names.inbound_stream();
    let unavailable = |e: &dyn std::fmt::Display| InboundStreamError::Unavailable {
        stream: stream_name.clone(),
        message: e.to_string(),
    };
    let existing = match js.get_stream(&stream_name).await {
        Ok(mut s) => Some(s.info().await.map_err(|e| unavailable(&e))?.config.clone()),
        Err(e) if is_stream_not_found(&e) => None,
        Err(e) => return Err(unavailable(&e)),
    };
    let current: BTreeSet<String> = existing
        .as_ref()
        .map(|c| c.subjects.iter().cloned().collect())
        .unwrap_or_default();
    let new: Vec<&String> = wanted
        .iter()
        .filter(|w| !current.iter().any(|c| subject_matches(c, w)))
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    let subjects = minimal_cover(
        current
            .into_iter()
            .chain(new.iter().map(|s| s.to_string()))
            .collect(),
    );
    let refused = |e: &dyn std::fmt::Display| InboundStreamError::Refused {
        stream: stream_name.clone(),
        subjects: new.iter().map(|s| s.to_string()).collect(),
        message: e.to_string(),
    };
    match existing {
        Some(mut config) => {
            config.subjects = subjects;
            js.update_stream(config).await.map_err(|e| refused(&e))?;
        }
        None => {
            js.create_stream(stream::Config {
                name: stream_name.clone(),
                subjects,
                retention: stream::RetentionPolicy::WorkQueue,
                // A publisher that sets Nats-Msg-Id is deduplicated here too.
                duplicate_window: Duration::from_secs(120),
                // Bounded for an installation whose engines stay down.
                max_age: super::ledger::DEFAULT_RETENTION,
                ..Default::default()
            })
            .await
            .map_err(|e| refused(&e))?;
        }
    }
    debug!(stream = %stream_name, "inbound stream captures new trigger subjects");
    Ok(())
}

/// Every subject the triggers of the Promise heads listen on.
async fn trigger_subjects(engine: &Engine) -> Result<Vec<String>, super::ReceiveError> {
    Ok(super::receive::promise_heads(engine)
        .await?
        .iter()
        .flat_map(|p| {
            p.inbound_subjects()
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect())
}

/// The consumer loop of one engine process; runs until `shutdown`.
pub(crate) async fn run_consumer(
    engine: Engine,
    js: jetstream::Context,
    shutdown: CancellationToken,
) {
    // Widening the stream runs beside the consumer, never interrupting it:
    // leaving the feed to do it held events back for a second each time.
    let widen = async {
        loop {
            capture_trigger_subjects(&engine, &js).await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
        }
    };
    let consume_until_shutdown = async {
        while !shutdown.is_cancelled() {
            let wait = match consume(&engine, &js, &shutdown).await {
                Ok(()) => return,
                // The first Promise with triggers creates the stream.
                Err(Stopped::NoStream) => {
                    capture_trigger_subjects(&engine, &js).await;
                    Duration::from_millis(250)
                }
                Err(Stopped::Failed(e)) => {
                    warn!(error = %e, "inbound consumer failed; rebuilding it");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    };
    tokio::join!(widen, consume_until_shutdown);
}

/// Makes the inbound stream capture the subjects of every Promise head's
/// triggers; a failure is logged and tried again on the next round.
async fn capture_trigger_subjects(engine: &Engine, js: &jetstream::Context) {
    match trigger_subjects(engine).await {
        Ok(subjects) => {
            if let Err(e) = capture_subjects(js, engine.names(), &subjects).await {
                warn!(error = %e, "the inbound stream does not capture every trigger subject");
            }
        }
        Err(e) => warn!(error = %e, "cannot read the triggers of the Promise heads"),
    }
}

enum Stopped {
    /// No Promise has triggers yet.
    NoStream,
    Failed(async_nats::Error),
}

async fn consume(
    engine: &Engine,
    js: &jetstream::Context,
    shutdown: &CancellationToken,
) -> Result<(), Stopped> {
    let names = engine.names();
    let stream = match js.get_stream(names.inbound_stream()).await {
        Ok(stream) => stream,
        Err(e) if is_stream_not_found(&e) => {
            return Err(Stopped::NoStream);
        }
        Err(e) => return Err(Stopped::Failed(e.into())),
    };
    let consumer_config = pull::Config {
        durable_name: Some(names.inbound_consumer()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: MAX_DELIVER,
        max_ack_pending: (BATCH * CONCURRENCY * 4) as i64,
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(&names.inbound_consumer(), consumer_config)
        .await
        .map_err(|e| Stopped::Failed(e.into()))?;
    let feed = PullFeed::open(
        js,
        consumer,
        BATCH * CONCURRENCY,
        PULL_EXPIRES,
        PULL_HEARTBEAT,
    )
    .await
    .map_err(|e| Stopped::Failed(e.into()))?;
    feed.for_each_batch(BATCH, CONCURRENCY, shutdown.cancelled(), |batch| {
        decide_batch(engine, js, batch)
    })
    .await
    .map_err(|e| Stopped::Failed(e.into()))
}

/// Headers of a NATS message, each name with its values.
pub(crate) fn raw_headers(
    headers: Option<&async_nats::HeaderMap>,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, values) in headers.iter().flat_map(|h| h.iter()) {
        out.entry(name.to_string())
            .or_default()
            .extend(values.iter().map(|v| v.as_str().to_string()));
    }
    out
}

fn arrival(message: &jetstream::Message) -> Arrival {
    Arrival {
        via: EventVia::Bus,
        raw: RawMessage {
            subject: Some(message.subject.to_string()),
            headers: raw_headers(message.headers.as_ref()),
            payload: message.payload.to_vec(),
        },
        event: ReceivedEvent::from_nats(message.headers.as_ref(), &message.payload),
        replay_of: None,
        received_by: None,
    }
}

/// Decides a batch in one transaction; if that fails for a reason other
/// than a transient one, each message in a transaction of its own, so one
/// message Postgres refuses cannot hold back the others.
async fn decide_batch(engine: &Engine, js: &jetstream::Context, batch: Vec<jetstream::Message>) {
    let arrivals: Vec<Arrival> = batch.iter().map(arrival).collect();
    match receive(engine, &arrivals).await {
        Ok(received) => {
            log_received(&received);
            for message in &batch {
                ack(message).await;
            }
        }
        Err(e) if e.is_transient() || batch.len() == 1 => {
            for message in &batch {
                retry_later(engine, js, message, &e.to_string()).await;
            }
        }
        Err(e) => {
            warn!(error = %e, events = batch.len(), "deciding a batch of events failed; deciding them one by one");
            for (message, arrival) in batch.iter().zip(arrivals) {
                match receive(engine, std::slice::from_ref(&arrival)).await {
                    Ok(received) => {
                        log_received(&received);
                        ack(message).await;
                    }
                    Err(e) => retry_later(engine, js, message, &e.to_string()).await,
                }
            }
        }
    }
}

fn log_received(received: &[Received]) {
    for r in received {
        if let Received::NotAnEvent {
            dead_letter_id,
            reason,
        } = r
        {
            debug!(%dead_letter_id, %reason, "a bus message that is not a CloudEvent was dead-lettered");
        }
    }
}

async fn ack(message: &jetstream::Message) {
    if let Err(e) = message.ack().await {
        // Its outcome is committed: a redelivery is recorded as a duplicate.
        debug!(error = %e, "acknowledging an inbound event failed");
    }
}

/// Leaves `message` to be redelivered, or on its last delivery moves it to
/// the bus's dead letters with the reason: it never spins.
async fn retry_later(
    engine: &Engine,
    js: &jetstream::Context,
    message: &jetstream::Message,
    reason: &str,
) {
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
    if delivered >= MAX_DELIVER {
        let reason = format!("not decided after {delivered} deliveries: {reason}");
        if fulfil_bus::dead_letter(
            js,
            engine.names(),
            "inbound",
            message,
            fulfil_bus::DeadLetterReason::TooManyDeliveries,
            &reason,
        )
        .await
        {
            ack(message).await;
        }
        return;
    }
    let delay = Duration::from_millis(200 * (1u64 << delivered.clamp(0, 6) as u32));
    if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
        debug!(error = %e, "nak of an inbound event failed; it is redelivered after ack_wait");
    }
}
