//! Transactional outbox: tasks and events are inserted in the same
//! transaction as the state change that caused them, then relayed to
//! JetStream.
//!
//! The relay claims rows with `FOR UPDATE SKIP LOCKED` (so several engines
//! share the work), publishes them with `Nats-Msg-Id` = the row's message id,
//! waits for every stream acknowledgement, and only then deletes the rows by
//! committing. A crash between publish and commit republishes the batch; the
//! stream's duplicate window drops the copies. The relay wakes on a Postgres
//! `NOTIFY` (or an in-process signal), and polls as a fallback.

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use futures::future::try_join_all;
use sqlx::PgConnection;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::run::OutboxMessage;
use crate::{Engine, EngineConfig};

/// The `NOTIFY` channel committed outbox rows are announced on.
pub const CHANNEL: &str = "fulfil_outbox";

/// Why a relay batch failed; its rows stay in the outbox for the next try.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Postgres failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// JetStream did not acknowledge a publish.
    #[error("publishing {subject} failed: {message}")]
    Publish { subject: String, message: String },
}

/// Inserts `messages` in the caller's transaction and announces them.
pub(crate) async fn enqueue(
    conn: &mut PgConnection,
    messages: Vec<OutboxMessage>,
) -> Result<(), sqlx::Error> {
    let mut subjects = Vec::with_capacity(messages.len());
    let mut ids = Vec::with_capacity(messages.len());
    let mut payloads = Vec::with_capacity(messages.len());
    for m in messages {
        subjects.push(m.subject);
        ids.push(m.msg_id);
        payloads.push(m.payload);
    }
    sqlx::query(
        "WITH rows AS (
             INSERT INTO fulfil.outbox (subject, msg_id, payload)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::jsonb[]) RETURNING 1)
         SELECT pg_notify('fulfil_outbox', '') FROM (SELECT 1) AS once WHERE EXISTS (SELECT 1 FROM rows)",
    )
    .bind(&subjects)
    .bind(&ids)
    .bind(&payloads)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(crate) async fn run_relay(
    engine: Engine,
    js: jetstream::Context,
    config: EngineConfig,
    shutdown: CancellationToken,
) {
    let mut listener = match PgListener::connect_with(engine.pool()).await {
        Ok(mut l) => match l.listen(CHANNEL).await {
            Ok(()) => Some(l),
            Err(e) => {
                warn!(error = %e, "LISTEN failed; the outbox relay falls back to polling");
                None
            }
        },
        Err(e) => {
            warn!(error = %e, "LISTEN connection failed; the outbox relay falls back to polling");
            None
        }
    };
    loop {
        let drained = match relay_batch(&engine, &js, config.outbox_batch).await {
            Ok(n) => {
                if n > 0 {
                    debug!(messages = n, "outbox relayed");
                }
                n < config.outbox_batch as usize
            }
            Err(e) => {
                warn!(error = %e, "outbox relay failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(config.poll_interval) => {}
                }
                true
            }
        };
        if !drained {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = engine.outbox_woken() => {}
            () = tokio::time::sleep(config.poll_interval) => {}
            notification = recv(&mut listener) => {
                if let Err(e) = notification {
                    warn!(error = %e, "LISTEN connection lost; polling until it is back");
                    listener = None;
                }
            }
        }
    }
}

async fn recv(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(l) => l.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

/// Publishes up to `limit` outbox rows; returns how many.
pub async fn relay_batch(
    engine: &Engine,
    js: &jetstream::Context,
    limit: i64,
) -> Result<usize, RelayError> {
    let mut tx = engine.pool().begin().await?;
    let rows: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
        "DELETE FROM fulfil.outbox WHERE id IN (
             SELECT id FROM fulfil.outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING subject, msg_id, payload",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    // Send every message first, then await the acks: one round trip's worth
    // of latency for the whole batch instead of one per message.
    let mut acks = Vec::with_capacity(rows.len());
    for (subject, msg_id, payload) in &rows {
        let body = Bytes::from(payload.to_string());
        let ack = js
            .send_publish(
                subject.clone(),
                PublishMessage::build()
                    .payload(body)
                    .message_id(msg_id.as_str()),
            )
            .await
            .map_err(|e| RelayError::Publish {
                subject: subject.clone(),
                message: e.to_string(),
            })?;
        acks.push(async move {
            ack.await.map_err(|e| RelayError::Publish {
                subject: subject.clone(),
                message: e.to_string(),
            })
        });
    }
    try_join_all(acks).await?;
    tx.commit().await?;
    Ok(rows.len())
}
