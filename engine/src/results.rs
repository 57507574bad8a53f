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

use crate::run::{Applied, ApplyError, apply_progress_in, apply_result_in};
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
    let messages = consumer
        .stream()
        .max_messages_per_batch(config.result_concurrency * config.result_batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    let mut failed: Option<async_nats::Error> = None;
    messages
        .take_until(shutdown.cancelled())
        .filter_map(|message| {
            let message = match message {
                Ok(message) => Some(message),
                Err(e) => {
                    failed.get_or_insert(Box::new(e));
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
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A parsed message from the results stream.
enum Report {
    Result(ResultMessage),
    Progress(ProgressMessage),
}

impl Report {
    fn run_id(&self) -> uuid::Uuid {
        match self {
            Report::Result(r) => r.run_id,
            Report::Progress(p) => p.run_id,
        }
    }
}

/// Applies every report of `batch` in one transaction (group commit), each
/// in its own savepoint so one bad report cannot spoil the others, then
/// acknowledges them. Runs are locked in run id order, so concurrent
/// batches cannot deadlock on each other.
async fn apply_batch(engine: &Engine, js: &jetstream::Context, batch: Vec<jetstream::Message>) {
    let mut reports = Vec::with_capacity(batch.len());
    for message in batch {
        let is_progress = message.subject.as_str() == engine.names().progress_subject();
        let parsed = if is_progress {
            serde_json::from_slice(&message.payload).map(Report::Progress)
        } else {
            serde_json::from_slice(&message.payload).map(Report::Result)
        };
        match parsed {
            Ok(report) => reports.push((message, report)),
            Err(e) => {
                let what = if is_progress {
                    "progress report"
                } else {
                    "result"
                };
                let reason = format!("unparseable {what}: {e}");
                dead_letter_then_ack(js, engine.names(), &message, &reason).await;
            }
        }
    }
    if reports.is_empty() {
        return;
    }
    if reports.len() == 1 {
        // Nothing to group: skip the savepoint round trips.
        if let Some((message, report)) = reports.pop() {
            let started = std::time::Instant::now();
            let outcome = async {
                let tx = engine.pool().begin().await?;
                apply_report(engine, tx, &report).await
            }
            .await;
            debug!(
                reports = 1,
                elapsed_us = started.elapsed().as_micros() as u64,
                "batch applied"
            );
            let outcome = outcome.map(|(applied, committed)| {
                engine.after_commit(committed.outbox_rows);
                applied
            });
            acknowledge(js, engine, message, outcome).await;
        }
        return;
    }
    let started = std::time::Instant::now();
    reports.sort_by_key(|(_, report)| report.run_id());
    let mut outer = match engine.pool().begin().await {
        Ok(tx) => tx,
        Err(e) => {
            warn!(error = %e, "cannot begin a transaction; the batch will be redelivered");
            for (message, _) in &reports {
                ack(message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
            return;
        }
    };
    let mut rows = Vec::new();
    let mut outcomes = Vec::with_capacity(reports.len());
    let mut reports = reports.into_iter();
    while let Some((message, report)) = reports.next() {
        let savepoint = match sqlx::Acquire::begin(&mut *outer).await {
            Ok(savepoint) => savepoint,
            Err(e) => {
                // When a SAVEPOINT fails, sqlx rolls back the enclosing
                // transaction, and `outer.commit()` would then return Ok
                // without committing anything (its depth is 0): nothing of
                // this batch will be applied, so give every report back.
                warn!(error = %e, "cannot open a savepoint; the batch will be redelivered");
                let given_back = outcomes
                    .into_iter()
                    .map(|(message, _)| message)
                    .chain(std::iter::once(message))
                    .chain(reports.map(|(message, _)| message));
                for message in given_back {
                    ack(&message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
                return;
            }
        };
        let outcome = apply_report(engine, savepoint, &report).await;
        let outcome = outcome.map(|(applied, committed)| {
            rows.extend(committed.outbox_rows);
            applied
        });
        outcomes.push((message, outcome));
    }
    if let Err(e) = outer.commit().await {
        warn!(error = %e, reports = outcomes.len(), "committing a batch failed; it will be redelivered");
        for (message, _) in &outcomes {
            ack(message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
        }
        return;
    }
    debug!(
        reports = outcomes.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "batch applied"
    );
    engine.after_commit(rows);
    for (message, outcome) in outcomes {
        acknowledge(js, engine, message, outcome).await;
    }
}

/// Applies one report in `tx` (a transaction or a savepoint) and commits it.
async fn apply_report<'a>(
    engine: &Engine,
    tx: sqlx::Transaction<'a, sqlx::Postgres>,
    report: &Report,
) -> Result<(Applied, crate::run::CommitSummary), ApplyError> {
    match report {
        Report::Result(r) => {
            let span = info_span!("apply_result", run_id = %r.run_id, step_id = %r.step_id,
                                  attempt = r.attempt, task_id = %r.task_id);
            apply_result_in(engine, tx, r).instrument(span).await
        }
        Report::Progress(p) => {
            let span = info_span!("apply_progress", run_id = %p.run_id, step_id = %p.step_id,
                                  attempt = p.attempt, task_id = %p.task_id);
            apply_progress_in(engine, tx, p).instrument(span).await
        }
    }
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
            dead_letter_then_ack(js, engine.names(), &message, &reason).await;
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
