//! The status publisher: status events leave `fulfil.status_outbox` for
//! `<prefix>.events.<kind>`, complete and, per run, in history order.
//!
//! Contract (DESIGN.md "Events"): every committed status event is published
//! (at least once; with `Nats-Msg-Id` = its CloudEvent id, so a republish
//! within the stream's duplicate window is dropped), and a subscriber of a
//! run's events receives them with `fulfilseq` strictly increasing.
//!
//! How order is kept:
//!
//! * One publisher at a time across every process: the one whose dedicated
//!   connection holds the session advisory lock [`PUBLISHER_LOCK`]. Others
//!   try to take it every [`LOCK_RETRY`]; a holder that dies loses it with
//!   its connection.
//! * Rows are read in `id` order. A run's rows take increasing ids in
//!   `seq` order: the flush inserts one change's rows in history order, and
//!   a run's next change is stored only on its latest committed state (row
//!   lock or version check, see [`crate::run`]), so its rows are inserted
//!   after the previous change's rows committed. Rows of different runs may
//!   commit out of id order; that reorders nothing within a run.
//! * Within a batch, a run's second row is sent only once its first was
//!   acknowledged ("waves": wave `k` holds the `k`-th row of every run in
//!   the batch, all pipelined on one connection). So a failed publish never
//!   leaves a later event of a run stored without an earlier one; the batch
//!   is retried whole, and what was already stored is deduplicated.
//! * Rows are deleted only after their acknowledgement (by the next round's
//!   statement, which also reads the next batch: one round trip); a message the
//!   server refuses for good (over `max_payload`) is moved to
//!   `fulfil.parked_status_outbox` in the same statement, so it never holds
//!   back the rest (its run shows a gap in `fulfilseq`, never a reordering).
//!
//! Known limit: a row published but not deleted (the publisher's database
//! connection died between the two) is published again by the next holder;
//! past the stream's duplicate window (120 s) a subscriber sees it twice,
//! with the same `id` and `fulfilseq`, and should drop what it has seen.
//!
//! The publisher is woken by this process's commits
//! ([`crate::Engine::after_commit`]) and polls every [`POLL`] for rows
//! other processes committed.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use futures::future::join_all;
use sqlx::{ConnectOptions, PgConnection};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::Engine;

/// The advisory lock (database-scoped) whose holder is the one status
/// publisher. Tests take it to stop publication.
pub const PUBLISHER_LOCK: i64 = 0x0046_756c_6669_6c53; // "FulfilS"
/// How often a process without the lock tries to take it.
pub const LOCK_RETRY: Duration = Duration::from_secs(2);
/// How often the holder looks for rows no commit of its own announced.
pub const POLL: Duration = Duration::from_millis(100);
/// How long a round waits after a commit woke it, for the commits landing
/// with it: a round per commit cost a statement per commit at low load.
const GATHER: Duration = Duration::from_millis(2);
/// Longest wait between tries while NATS refuses publishes.
const MAX_PUBLISH_RETRY: Duration = Duration::from_secs(5);
/// Most rows read, published and deleted in one round.
const BATCH: i64 = 1024;

/// Why a round of publication failed; its rows stay for the next round.
#[derive(Debug, thiserror::Error)]
pub enum StatusPublishError {
    /// Postgres failed; the connection (and with it the lock) is dropped.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// JetStream did not acknowledge a publish.
    #[error("publishing {subject} failed: {message}")]
    Publish { subject: String, message: String },
}

/// A status event as stored in `fulfil.status_outbox`.
struct Row {
    id: i64,
    run_id: Uuid,
    subject: String,
    msg_id: String,
    /// The CloudEvent as stored, sent as it is.
    payload: String,
}

/// Runs the status publisher role until `shutdown`: takes the lock when it
/// can, then publishes whatever is committed, in order (see module docs).
pub(crate) async fn run_status_publisher(
    engine: Engine,
    js: jetstream::Context,
    shutdown: CancellationToken,
) {
    // Deletes on this connection need not wait for the WAL: a lost delete
    // republishes rows the stream drops as duplicates.
    let options = engine
        .pool()
        .connect_options()
        .as_ref()
        .clone()
        .options([("synchronous_commit", "off")]);
    loop {
        match hold_and_publish(&engine, &js, &options, &shutdown).await {
            Ok(()) => return,
            Err(e) => warn!(error = %e, "status publisher lost its connection; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(LOCK_RETRY) => {}
        }
    }
}

/// Connects, waits until this process holds [`PUBLISHER_LOCK`], then
/// publishes until shutdown (`Ok`) or until the connection fails (`Err`:
/// the lock went with it).
async fn hold_and_publish(
    engine: &Engine,
    js: &jetstream::Context,
    options: &sqlx::postgres::PgConnectOptions,
    shutdown: &CancellationToken,
) -> Result<(), StatusPublishError> {
    let mut conn = options.connect().await?;
    loop {
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(PUBLISHER_LOCK)
            .fetch_one(&mut conn)
            .await?;
        if held {
            break;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(LOCK_RETRY) => {}
        }
    }
    info!(engine = engine.id(), "this process publishes status events");
    // NATS refusing every publish (stream gone, server down) is retried
    // soon, then less often, so an outage is not a storm of warnings.
    let mut backoff = fulfil_bus::Backoff::new(POLL, MAX_PUBLISH_RETRY);
    let mut published = Published::default();
    loop {
        let drained = match publish_round(&mut conn, js, &mut published).await {
            Ok(n) => {
                backoff.reset();
                if n > 0 {
                    debug!(events = n, "status events published");
                }
                n < BATCH as usize
            }
            Err(StatusPublishError::Db(e)) => return Err(e.into()),
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "publishing status events failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                true
            }
        };
        // Rows published by the last round are deleted by the next one,
        // which waits for the next commit (or the poll): deleting them in a
        // round of their own cost a second statement per commit. Commits
        // that land within [`GATHER`] of the wake-up share one round.
        if drained {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = engine.status_woken() => {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(GATHER) => {}
                    }
                }
                () = tokio::time::sleep(POLL) => {}
            }
        } else if shutdown.is_cancelled() {
            break;
        }
    }
    // Best effort: what is not deleted here is published again by the next
    // holder and dropped by the stream as a duplicate.
    if let Err(e) = settle(&mut conn, &mut published, 0).await {
        warn!(error = %e, "deleting published status events at shutdown failed");
    }
    Ok(())
}

/// Rows the last round published (or parked), to delete in the next one.
#[derive(Default)]
struct Published {
    ids: Vec<i64>,
    /// Refused for good: (id, reason), moved to `fulfil.parked_status_outbox`.
    parked: Vec<i64>,
    reasons: Vec<String>,
}

/// One statement, one round trip: deletes (or parks) what the last round
/// published, and reads the oldest of the rest, up to `limit`.
async fn settle(
    conn: &mut PgConnection,
    published: &mut Published,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    // The read sees the table as the statement began, so it skips the rows
    // the statement deletes by their ids.
    let rows: Vec<(i64, Uuid, String, String, String)> = sqlx::query_as(
        "WITH gone AS (DELETE FROM fulfil.status_outbox WHERE id = ANY($1::bigint[])
                       RETURNING id, run_id, seq, subject, msg_id, payload),
              parked AS (INSERT INTO fulfil.parked_status_outbox
                                (id, run_id, seq, subject, msg_id, payload, reason)
                         SELECT g.id, g.run_id, g.seq, g.subject, g.msg_id, g.payload, r.reason
                         FROM gone g JOIN UNNEST($2::bigint[], $3::text[]) AS r(id, reason)
                              ON r.id = g.id
                         ON CONFLICT (id) DO NOTHING)
         SELECT id, run_id, subject, msg_id, payload::text FROM fulfil.status_outbox
         WHERE id <> ALL($1::bigint[]) ORDER BY id LIMIT $4",
    )
    .bind(&published.ids)
    .bind(&published.parked)
    .bind(&published.reasons)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    *published = Published::default();
    Ok(rows
        .into_iter()
        .map(|(id, run_id, subject, msg_id, payload)| Row {
            id,
            run_id,
            subject,
            msg_id,
            payload,
        })
        .collect())
}

/// Deletes what the last round published, then publishes the oldest
/// committed rows (up to [`BATCH`]), leaving them in `published` for the
/// next round to delete; returns how many it published.
async fn publish_round(
    conn: &mut PgConnection,
    js: &jetstream::Context,
    published: &mut Published,
) -> Result<usize, StatusPublishError> {
    let rows = settle(conn, published, BATCH).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let refused = publish_in_waves(js, &rows).await?;
    for (id, reason) in &refused {
        error!(id, %reason, "status event can never be published; parked in fulfil.parked_status_outbox");
    }
    published.ids = rows.iter().map(|r| r.id).collect();
    (published.parked, published.reasons) = refused.into_iter().unzip();
    Ok(rows.len())
}

/// Publishes `rows` (in id order) so that a run's row is sent only after
/// its previous one was acknowledged; rows of different runs are pipelined.
/// Returns the rows the server refuses for good (id, reason). Any other
/// failure fails the whole call, before a later row of the failed row's
/// run was sent.
async fn publish_in_waves(
    js: &jetstream::Context,
    rows: &[Row],
) -> Result<Vec<(i64, String)>, StatusPublishError> {
    // wave[k] = the k-th row of each run, in id order.
    let mut waves: Vec<Vec<&Row>> = Vec::new();
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    for row in rows {
        let k = seen.entry(row.run_id).or_insert(0);
        if waves.len() <= *k {
            waves.push(Vec::new());
        }
        waves[*k].push(row);
        *k += 1;
    }
    let mut refused = Vec::new();
    for wave in waves {
        let mut acks = Vec::with_capacity(wave.len());
        for row in wave {
            let body = Bytes::from(row.payload.clone());
            let size = body.len();
            let sent = js
                .send_publish(
                    row.subject.clone(),
                    PublishMessage::build()
                        .payload(body)
                        .message_id(row.msg_id.as_str()),
                )
                .await;
            match sent {
                Ok(ack) => acks.push((row, ack)),
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => refused.push((
                    row.id,
                    format!("{size} bytes is over the NATS server's max_payload: {e}"),
                )),
                Err(e) => {
                    return Err(StatusPublishError::Publish {
                        subject: row.subject.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
        // Every ack of the wave is awaited (none is left dangling), then the
        // first failure fails the round.
        let results = join_all(
            acks.into_iter()
                .map(|(row, ack)| async move { (row, ack.await) }),
        )
        .await;
        for (row, result) in results {
            if let Err(e) = result {
                return Err(StatusPublishError::Publish {
                    subject: row.subject.clone(),
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(refused)
}
