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
//!
//! Fast path: a process with a NATS connection marks the rows it writes
//! `fast` and publishes them itself right after its commit, from memory, then
//! deletes them in the background (`run_fast_publisher`); no extra
//! transaction sits between a commit and the next task reaching a worker.
//! The relay sweeps fast rows only once they are older than
//! [`FAST_PATH_GRACE_SECS`], i.e. when their writer died or could not
//! publish.
//!
//! A message the NATS server refuses for good (larger than its
//! `max_payload`) is moved to `fulfil.parked_outbox` with the reason, in the
//! transaction that deletes the rows published with it: it never holds the
//! messages behind it in the outbox.

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use fulfil_bus::trace::{TRACEPARENT_HEADER, TraceParent};
use futures::future::try_join_all;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info_span, warn};

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

/// An outbox row as committed: what to publish, and the row to delete after.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub subject: String,
    pub msg_id: String,
    pub payload: serde_json::Value,
}

/// How long the relay leaves fast-path rows to the process that wrote them.
pub const FAST_PATH_GRACE_SECS: f64 = 2.0;

/// Publishes rows committed by this process as soon as they are handed
/// over; rows it cannot publish stay for the relay. Deleting what was
/// published is left to [`delete_published`], so the next tasks never wait
/// for that cleanup.
///
/// Runs as a supervised role (see [`crate::roles`]): the receiver is shared
/// so that a restarted publisher takes over the queue of the one that
/// panicked.
pub(crate) async fn run_fast_publisher(
    pool: sqlx::PgPool,
    js: jetstream::Context,
    committed: std::sync::Arc<
        tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Vec<OutboxRow>>>,
    >,
) {
    let mut committed = committed.lock().await;
    let (mut published, to_delete) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(delete_published(pool.clone(), to_delete));
    while let Some(mut rows) = committed.recv().await {
        // Coalesce whatever else is already waiting into one round of publishes.
        while let Ok(more) = committed.try_recv() {
            rows.extend(more);
            if rows.len() >= 1024 {
                break;
            }
        }
        match publish_all(&js, &rows).await {
            Ok(refused) => {
                // Refused rows stay for the relay, which parks them.
                let ids: Vec<i64> = rows
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !refused.iter().any(|(r, _)| r == i))
                    .map(|(_, r)| r.id)
                    .collect();
                if let Err(tokio::sync::mpsc::error::SendError(ids)) = published.send(ids) {
                    // The deleter panicked. Its rows are left to the relay,
                    // which republishes and deletes them; a new one takes
                    // over from here.
                    error!("the deleter of published outbox rows stopped; starting another");
                    let (sender, to_delete) = tokio::sync::mpsc::unbounded_channel();
                    tokio::spawn(delete_published(pool.clone(), to_delete));
                    published = sender;
                    let _ = published.send(ids);
                }
            }
            Err(e) => {
                warn!(error = %e, rows = rows.len(), "fast publish failed; the relay will retry")
            }
        }
    }
}

/// How long the deleter gathers published rows before deleting them. At
/// low load every commit is a batch of its own; deleting each in its own
/// statement cost a transaction per step. Rows left a little longer are
/// harmless: the relay leaves them alone for [`FAST_PATH_GRACE_SECS`].
const DELETE_GATHER: std::time::Duration = std::time::Duration::from_millis(50);
/// Most rows deleted by one statement.
const DELETE_BATCH: usize = 4096;

/// Deletes published outbox rows, gathered for [`DELETE_GATHER`], on a
/// connection of its own whose commits do not wait for the WAL to reach
/// disk: if a crash loses the delete, the rows are published again by the
/// relay and the stream drops the copies by their message id, so nothing
/// is lost or doubled. Each delete is one statement, committed on its own.
async fn delete_published(
    pool: sqlx::PgPool,
    mut published: tokio::sync::mpsc::UnboundedReceiver<Vec<i64>>,
) {
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("synchronous_commit", "off")]);
    let mut conn: Option<sqlx::PgConnection> = None;
    while let Some(mut ids) = published.recv().await {
        let gathered_by = tokio::time::Instant::now() + DELETE_GATHER;
        while ids.len() < DELETE_BATCH {
            match tokio::time::timeout_at(gathered_by, published.recv()).await {
                Ok(Some(more)) => ids.extend(more),
                Ok(None) | Err(_) => break,
            }
        }
        let deleted = async {
            let conn = match &mut conn {
                Some(conn) => conn,
                None => conn.insert(sqlx::ConnectOptions::connect(&options).await?),
            };
            sqlx::query("DELETE FROM fulfil.outbox WHERE id = ANY($1)")
                .bind(&ids)
                .execute(conn)
                .await
        }
        .await;
        if deleted.is_ok() {
            crate::metrics::transaction("outbox_delete");
        }
        if let Err(e) = deleted {
            // Published but not deleted: the relay republishes them later
            // and the stream drops the duplicates. The connection may be
            // what failed; the next batch opens a new one.
            conn = None;
            warn!(error = %e, rows = ids.len(), "deleting published outbox rows failed");
        }
    }
}

/// Sends every row, then awaits every stream acknowledgement. Returns the
/// rows the server refuses for good (by index, with the reason): they can
/// never be published, so they must not hold back the others. Any other
/// failure fails the whole call, to be tried again.
async fn publish_all(
    js: &jetstream::Context,
    rows: &[OutboxRow],
) -> Result<Vec<(usize, String)>, RelayError> {
    let mut acks = Vec::with_capacity(rows.len());
    let mut refused = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let body = Bytes::from(row.payload.to_string());
        let size = body.len();
        let mut message = PublishMessage::build()
            .payload(body)
            .message_id(row.msg_id.as_str());
        if let Some(traceparent) = dispatch_trace(row) {
            message = message.header(TRACEPARENT_HEADER, traceparent.to_string().as_str());
        }
        let sent = js.send_publish(row.subject.clone(), message).await;
        let ack = match sent {
            Ok(ack) => ack,
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                refused.push((
                    index,
                    format!("{size} bytes is over the NATS server's max_payload: {e}"),
                ));
                continue;
            }
            Err(e) => {
                return Err(RelayError::Publish {
                    subject: row.subject.clone(),
                    message: e.to_string(),
                });
            }
        };
        let subject = row.subject.clone();
        acks.push(async move {
            ack.await.map_err(|e| RelayError::Publish {
                subject,
                message: e.to_string(),
            })
        });
    }
    try_join_all(acks).await?;
    crate::metrics::tasks_dispatched(rows.len() - refused.len());
    Ok(refused)
}

/// The trace context a task message carries: its run's (stored in the
/// task's `traceparent` field when it was planned), or, when spans are
/// exported, that of a `dispatch` span joined to the run's trace, so the
/// worker's span hangs under it. `None` for rows that are not tasks.
fn dispatch_trace(row: &OutboxRow) -> Option<TraceParent> {
    let run = row
        .payload
        .get("traceparent")
        .and_then(serde_json::Value::as_str)
        .and_then(TraceParent::parse)?;
    let field = |name: &str| row.payload.get(name).and_then(serde_json::Value::as_str);
    let span = info_span!("dispatch", run_id = field("run_id"), step_id = field("step_id"),
                          attempt = row.payload.get("attempt").and_then(serde_json::Value::as_u64),
                          subject = %row.subject);
    run.adopt(&span);
    Some(TraceParent::of_span(&span).unwrap_or(run))
}

pub(crate) async fn run_relay(
    engine: Engine,
    js: jetstream::Context,
    config: EngineConfig,
    shutdown: CancellationToken,
) {
    let mut listener = listen(&engine, CHANNEL, "the outbox relay").await;
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

/// A connection listening on `channel` for `who`; `None` (`who` polls)
/// if it cannot be had.
pub(crate) async fn listen(engine: &Engine, channel: &str, who: &str) -> Option<PgListener> {
    match PgListener::connect_with(engine.pool()).await {
        Ok(mut l) => match l.listen(channel).await {
            Ok(()) => Some(l),
            Err(e) => {
                warn!(error = %e, "LISTEN failed; {who} falls back to polling");
                None
            }
        },
        Err(e) => {
            warn!(error = %e, "LISTEN connection failed; {who} falls back to polling");
            None
        }
    }
}

/// The next notification on `listener`; never, without one.
pub(crate) async fn recv(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(l) => l.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

/// Publishes up to `limit` outbox rows; returns how many. Fast-path rows
/// are left to their writer for a grace period.
pub async fn relay_batch(
    engine: &Engine,
    js: &jetstream::Context,
    limit: i64,
) -> Result<usize, RelayError> {
    let mut tx = engine.pool().begin().await?;
    let rows: Vec<(i64, String, String, serde_json::Value)> = sqlx::query_as(
        "DELETE FROM fulfil.outbox WHERE id IN (
             SELECT id FROM fulfil.outbox
             WHERE NOT fast OR created_at < now() - make_interval(secs => $2)
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING id, subject, msg_id, payload",
    )
    .bind(limit)
    .bind(FAST_PATH_GRACE_SECS)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let rows: Vec<OutboxRow> = rows
        .into_iter()
        .map(|(id, subject, msg_id, payload)| OutboxRow {
            id,
            subject,
            msg_id,
            payload,
        })
        .collect();
    let refused = publish_all(js, &rows).await?;
    for (index, reason) in &refused {
        let row = &rows[*index];
        error!(id = row.id, subject = %row.subject, msg_id = %row.msg_id, %reason,
               "outbox message can never be published; parked in fulfil.parked_outbox");
        sqlx::query(
            "INSERT INTO fulfil.parked_outbox (id, subject, msg_id, payload, reason)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(row.id)
        .bind(&row.subject)
        .bind(&row.msg_id)
        .bind(&row.payload)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    crate::metrics::transaction("relay");
    Ok(rows.len())
}
