//! The watch hub: live history of runs for many watchers (SSE
//! `GET /v1/runs/{id}/events`, gRPC `WatchRun`), at the cost of one
//! history read per notification per watched run, however many watch it.
//!
//! One hub per API process. It holds one core NATS subscription to the
//! status events (`<prefix>.events.>`; each carries the run id as
//! `subject` and its history seq as `fulfilseq`) and, per watched run, one
//! *feed*: a task that reads the run's history after the last seq it has
//! (`seq > last`, so the events that publish nothing come with the next
//! one that does) whenever a status event of the run arrives with a seq it
//! has not read, and every [`SAFETY_POLL`] otherwise (history that emits
//! no status event, a lost notification, a process without NATS). What a
//! feed reads goes to every watcher of the run through one bounded
//! broadcast channel, and into a bounded buffer of recent events that new
//! and lagging watchers replay from.
//!
//! Guarantees to a watcher: every history event with `seq > after`, once,
//! in seq order, then the end of the stream once the run is finished
//! (its status is terminal and everything up to that status was sent).
//! A slow watcher never grows memory: when the broadcast moves past it, it
//! starts again from its last seq (from the buffer, or from Postgres for
//! what the buffer no longer holds).
//!
//! Reads are counted ([`WatchHub::stats`]): `feed_reads` are the shared
//! per-notification reads, `replay_reads` the reads a watcher makes alone
//! (checking the run exists, or history older than the buffer).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fulfil_core::RunStatus;
use fulfil_core::ids::RunId;
use fulfil_engine::Engine;
use futures::{Stream, StreamExt};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Notify, broadcast, mpsc};
use uuid::Uuid;

use crate::model::HistoryEvent;

/// How often a watched run's history is read when no notification came.
pub const SAFETY_POLL: Duration = Duration::from_secs(2);
/// Most history events one read returns.
const PAGE: i64 = 500;
/// Recent events a feed keeps for watchers that join or fall behind.
const RECENT: usize = 1024;
/// Events in flight per run before a slow watcher lags (and re-reads).
const CHANNEL: usize = 256;
/// Events queued per watcher between its task and its connection.
const WATCHER_QUEUE: usize = 32;

/// Why a watch could not start or went on.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// No run has this id.
    #[error("run {0} not found")]
    NotFound(RunId),
    /// Postgres failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The store holds a run status this build does not know.
    #[error("run {run_id} has an unknown status {status:?}")]
    UnknownStatus { run_id: RunId, status: String },
}

/// What a watcher receives.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// The next history event.
    Event(Arc<HistoryEvent>),
    /// The watch cannot go on (the database failed while catching up).
    Failed(Arc<WatchError>),
}

/// Reads the hub made, for tests and `fulfil bench watch`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Status events received on the subscription.
    pub notifications: u64,
    /// Feeds started: each starts with one read, shared by the watchers
    /// that join it (a run's feed starts again after all its watchers left).
    pub feed_starts: u64,
    /// Further history reads of the feeds, shared by all watchers of a
    /// run: at most one per notification, plus the next page of a long
    /// history.
    pub feed_reads: u64,
    /// Shared reads made because [`SAFETY_POLL`] passed with no
    /// notification: one per watched run per interval, so they grow with
    /// time, never with watchers or events.
    pub poll_reads: u64,
    /// Reads made for one watcher (existence check, old history).
    pub replay_reads: u64,
    /// Times a watcher fell behind the broadcast and started again from
    /// its last seq.
    pub lagged: u64,
}

/// The hub. Cheap to clone; clones share it. Starts on first use.
#[derive(Clone, Default)]
pub struct WatchHub {
    inner: Arc<Hub>,
}

#[derive(Default)]
struct Hub {
    feeds: Mutex<HashMap<Uuid, Arc<Feed>>>,
    /// Set once the NATS subscription is started (or found impossible).
    listening: OnceLock<()>,
    notifications: AtomicU64,
    feed_starts: AtomicU64,
    feed_reads: AtomicU64,
    poll_reads: AtomicU64,
    replay_reads: AtomicU64,
    lagged: AtomicU64,
    /// Set by [`WatchHub::close`]: every watch ends.
    closed: std::sync::atomic::AtomicBool,
    closing: Notify,
}

/// One watched run.
struct Feed {
    run_id: RunId,
    wake: Notify,
    state: Mutex<FeedState>,
}

struct FeedState {
    /// Every event with `covered_from < seq <= last`, oldest first.
    recent: VecDeque<Arc<HistoryEvent>>,
    covered_from: i64,
    last: i64,
    /// The highest seq a notification announced.
    announced: i64,
    /// The feed read the run once (it exists).
    known: bool,
    /// The run is finished and `recent`/`last` hold its last event.
    finished: bool,
    /// The feed gave up (the run is gone, or the database kept failing).
    stopped: Option<Arc<WatchError>>,
    sender: broadcast::Sender<FeedMessage>,
}

#[derive(Clone)]
enum FeedMessage {
    Event(Arc<HistoryEvent>),
    /// The run finished (after the events already sent).
    Finished,
    /// The feed gave up on this error.
    Stopped(Arc<WatchError>),
}

/// What a watcher takes from the feed in one step, under its lock.
struct Snapshot {
    events: Vec<Arc<HistoryEvent>>,
    covered_from: i64,
    known: bool,
    finished: bool,
    stopped: Option<Arc<WatchError>>,
    receiver: broadcast::Receiver<FeedMessage>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data, still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl WatchHub {
    /// Reads made so far.
    pub fn stats(&self) -> WatchStats {
        WatchStats {
            notifications: self.inner.notifications.load(Ordering::Relaxed),
            feed_starts: self.inner.feed_starts.load(Ordering::Relaxed),
            feed_reads: self.inner.feed_reads.load(Ordering::Relaxed),
            poll_reads: self.inner.poll_reads.load(Ordering::Relaxed),
            replay_reads: self.inner.replay_reads.load(Ordering::Relaxed),
            lagged: self.inner.lagged.load(Ordering::Relaxed),
        }
    }

    /// Ends every watch (now and to come): the streams end as if the runs
    /// had, and their clients resume elsewhere with their last seq. Called
    /// at shutdown, which would otherwise wait for every watched run to
    /// finish.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.closing.notify_waiters();
    }

    async fn closed(&self) {
        loop {
            // Registered before the check, so a close between the two is seen.
            let notified = self.inner.closing.notified();
            if self.inner.closed.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Runs watched now.
    pub fn watched_runs(&self) -> usize {
        lock(&self.inner.feeds).len()
    }

    /// Watches `run_id` from after `after`: the stream yields every history
    /// event with a greater seq, in order, and ends once the run finished.
    /// Fails with [`WatchError::NotFound`] for an unknown run.
    pub async fn watch(
        &self,
        engine: &Engine,
        nats: Option<&async_nats::Client>,
        run_id: RunId,
        after: i64,
    ) -> Result<impl Stream<Item = WatchItem> + Send + use<>, WatchError> {
        if let Some(nats) = nats {
            self.listen(nats, engine.names().all_events_subject());
        }
        let pool = engine.pool().clone();
        let (feed, snapshot) = self.join(&pool, run_id, after);
        if !snapshot.known {
            self.inner.replay_reads.fetch_add(1, Ordering::Relaxed);
            if read(&pool, run_id, i64::MAX, 1).await?.is_none() {
                return Err(WatchError::NotFound(run_id));
            }
        }
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        let watcher = Watcher {
            hub: self.clone(),
            pool,
            feed,
            sent: after,
            out: tx,
        };
        let hub = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = watcher.run(snapshot) => {}
                () = hub.closed() => {}
            }
        });
        Ok(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }

    /// Starts the subscription to status events, once.
    fn listen(&self, nats: &async_nats::Client, subject: String) {
        if self.inner.listening.set(()).is_err() {
            return;
        }
        let hub = Arc::downgrade(&self.inner);
        let nats = nats.clone();
        tokio::spawn(async move {
            match nats.subscribe(subject.clone()).await {
                Ok(subscription) => listen(hub, subscription).await,
                // Feeds still poll; a watch is slower, not wrong.
                Err(e) => tracing::warn!(%subject, error = %e,
                    "watch hub cannot subscribe to status events; polling only"),
            }
        });
    }

    /// The run's feed (started if none runs) and a snapshot of it after
    /// `after`, taken under the hub's lock so the feed cannot end between
    /// the two unseen (see [`Hub::forget`]).
    fn join(&self, pool: &PgPool, run_id: RunId, after: i64) -> (Arc<Feed>, Snapshot) {
        let mut feeds = lock(&self.inner.feeds);
        if let Some(feed) = feeds.get(&run_id.as_uuid()) {
            let snapshot = feed.snapshot(after);
            return (feed.clone(), snapshot);
        }
        let (sender, _) = broadcast::channel(CHANNEL);
        let feed = Arc::new(Feed {
            run_id,
            wake: Notify::new(),
            state: Mutex::new(FeedState {
                recent: VecDeque::new(),
                covered_from: 0,
                last: 0,
                announced: 0,
                known: false,
                finished: false,
                stopped: None,
                sender,
            }),
        });
        feeds.insert(run_id.as_uuid(), feed.clone());
        let snapshot = feed.snapshot(after);
        tokio::spawn(run_feed(
            Arc::downgrade(&self.inner),
            pool.clone(),
            feed.clone(),
        ));
        (feed, snapshot)
    }
}

/// Opens a watch for a caller of the API (SSE and gRPC): `id` must be a
/// run id, `after` a seq (0 for all of the history); an unknown run is a
/// 404 problem.
pub async fn watch_run(
    state: &crate::ApiState,
    id: &str,
    after: i64,
) -> Result<impl Stream<Item = WatchItem> + Send + use<>, crate::Problem> {
    let run_id: RunId = crate::routes::parse_id("run", id)?;
    if after < 0 {
        return Err(crate::Problem::bad_request(format!(
            "after {after} is negative: pass the seq of the last event seen, or 0"
        )));
    }
    state
        .watch
        .watch(&state.engine, state.nats.as_ref(), run_id, after)
        .await
        .map_err(|e| match e {
            WatchError::NotFound(_) => crate::Problem::not_found("run", id),
            WatchError::Db(e) => crate::problem::from_db(&e),
            e @ WatchError::UnknownStatus { .. } => crate::Problem::internal(&e),
        })
}

/// Wakes the feed of each run a status event announces new history of.
async fn listen(hub: Weak<Hub>, mut subscription: async_nats::Subscriber) {
    while let Some(message) = subscription.next().await {
        let Some(hub) = hub.upgrade() else { return };
        hub.notifications.fetch_add(1, Ordering::Relaxed);
        let Some((run, seq)) = announced(&message.payload) else {
            continue;
        };
        let feed = lock(&hub.feeds).get(&run).cloned();
        if let Some(feed) = feed {
            let mut state = lock(&feed.state);
            if seq > state.last && seq > state.announced {
                state.announced = seq;
                drop(state);
                feed.wake.notify_one();
            }
        }
    }
}

/// The run id and history seq of a status event, if the payload is one.
fn announced(payload: &[u8]) -> Option<(Uuid, i64)> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        subject: Uuid,
        fulfilseq: i64,
    }
    let envelope: Envelope = serde_json::from_slice(payload).ok()?;
    Some((envelope.subject, envelope.fulfilseq))
}

/// A feed's loop: read what is new, hand it out, wait for the next
/// notification or the safety poll; ends when the run finished or nobody
/// watches it any more.
async fn run_feed(hub: Weak<Hub>, pool: PgPool, feed: Arc<Feed>) {
    let mut failures = 0u32;
    let mut started = false;
    let mut polled = false;
    loop {
        let Some(strong) = hub.upgrade() else { return };
        let last = lock(&feed.state).last;
        let counter = match (started, polled) {
            (false, _) => &strong.feed_starts,
            (true, true) => &strong.poll_reads,
            (true, false) => &strong.feed_reads,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        started = true;
        let outcome = read(&pool, feed.run_id, last, PAGE).await;
        let more = match outcome {
            Ok(Some((status, events))) => {
                failures = 0;
                let full = events.len() as i64 >= PAGE;
                let finished = !full && status.is_terminal();
                feed.publish(events, finished);
                if finished {
                    strong.forget(&feed, true);
                    return;
                }
                full
            }
            Ok(None) => {
                feed.stop(WatchError::NotFound(feed.run_id));
                strong.forget(&feed, true);
                return;
            }
            Err(e) => {
                tracing::warn!(run_id = %feed.run_id, error = %e, "watch feed read failed");
                failures += 1;
                // A database down for long: watchers are told, and may
                // watch again from their last seq.
                if failures >= 5 {
                    feed.stop(e);
                    strong.forget(&feed, true);
                    return;
                }
                false
            }
        };
        if strong.forget(&feed, false) {
            return;
        }
        drop(strong);
        polled = false;
        if !more {
            tokio::select! {
                () = feed.wake.notified() => {}
                () = tokio::time::sleep(SAFETY_POLL) => polled = true,
            }
        }
    }
}

impl Hub {
    /// Removes `feed` from the hub if `always` or nobody watches it;
    /// answers whether it was removed. Under both locks, so a watcher
    /// either subscribed before (and keeps it) or finds no feed.
    fn forget(&self, feed: &Arc<Feed>, always: bool) -> bool {
        let mut feeds = lock(&self.feeds);
        let state = lock(&feed.state);
        if always || state.sender.receiver_count() == 0 {
            if feeds
                .get(&feed.run_id.as_uuid())
                .is_some_and(|f| Arc::ptr_eq(f, feed))
            {
                feeds.remove(&feed.run_id.as_uuid());
            }
            return true;
        }
        false
    }
}

impl Feed {
    fn publish(&self, events: Vec<HistoryEvent>, finished: bool) {
        let mut state = lock(&self.state);
        state.known = true;
        for event in events {
            if event.seq <= state.last {
                continue;
            }
            let event = Arc::new(event);
            state.last = event.seq;
            state.recent.push_back(event.clone());
            if state.recent.len() > RECENT
                && let Some(old) = state.recent.pop_front()
            {
                state.covered_from = old.seq;
            }
            // No receiver is not an error: watchers come and go.
            let _ = state.sender.send(FeedMessage::Event(event));
        }
        if finished {
            state.finished = true;
            let _ = state.sender.send(FeedMessage::Finished);
        }
    }

    fn stop(&self, error: WatchError) {
        let error = Arc::new(error);
        let mut state = lock(&self.state);
        state.stopped = Some(error.clone());
        let _ = state.sender.send(FeedMessage::Stopped(error));
    }

    fn snapshot(&self, after: i64) -> Snapshot {
        let state = lock(&self.state);
        Snapshot {
            events: state
                .recent
                .iter()
                .filter(|e| e.seq > after)
                .cloned()
                .collect(),
            covered_from: state.covered_from,
            known: state.known,
            finished: state.finished,
            stopped: state.stopped.clone(),
            receiver: state.sender.subscribe(),
        }
    }
}

/// One watcher's task: replays, then follows the feed, into its queue.
struct Watcher {
    hub: WatchHub,
    pool: PgPool,
    feed: Arc<Feed>,
    /// The highest seq sent.
    sent: i64,
    out: mpsc::Sender<WatchItem>,
}

/// Why a watcher stops.
enum Stop {
    /// Its connection is gone.
    Gone,
    /// Everything was sent.
    Done,
    /// The feed gave up.
    Failed(Arc<WatchError>),
}

impl Watcher {
    async fn run(mut self, mut snapshot: Snapshot) {
        let mut rejoined = false;
        loop {
            let outcome = match self.catch_up(snapshot, rejoined).await {
                Ok(receiver) => self.follow(receiver).await,
                Err(stop) => Err(stop),
            };
            match outcome {
                Err(Stop::Gone | Stop::Done) => return,
                Err(Stop::Failed(e)) => {
                    let _ = self.out.send(WatchItem::Failed(e)).await;
                    return;
                }
                // Lagged: start again from `sent`, on the run's feed.
                Ok(()) => {
                    self.hub.inner.lagged.fetch_add(1, Ordering::Relaxed);
                    let (feed, next) = self.hub.join(&self.pool, self.feed.run_id, self.sent);
                    self.feed = feed;
                    snapshot = next;
                    rejoined = true;
                }
            }
        }
    }

    /// Sends what happened before the snapshot: history older than the
    /// feed's buffer from Postgres, then the buffer.
    async fn catch_up(
        &mut self,
        snapshot: Snapshot,
        rejoined: bool,
    ) -> Result<broadcast::Receiver<FeedMessage>, Stop> {
        if let Some(e) = snapshot.stopped {
            return Err(Stop::Failed(e));
        }
        let run_id = self.feed.run_id;
        if rejoined && !snapshot.known && self.replay_to_end().await? {
            return Err(Stop::Done);
        }
        while self.sent < snapshot.covered_from {
            self.hub.inner.replay_reads.fetch_add(1, Ordering::Relaxed);
            let read = read(&self.pool, run_id, self.sent, PAGE).await;
            let events = match read {
                Ok(Some((_, events))) => events,
                Ok(None) => return Err(Stop::Failed(Arc::new(WatchError::NotFound(run_id)))),
                Err(e) => return Err(Stop::Failed(Arc::new(e))),
            };
            if events.is_empty() {
                break;
            }
            for event in events {
                if event.seq > snapshot.covered_from {
                    break;
                }
                self.send(Arc::new(event)).await?;
            }
        }
        for event in snapshot.events {
            self.send(event).await?;
        }
        if snapshot.finished {
            return Err(Stop::Done);
        }
        Ok(snapshot.receiver)
    }

    /// Sends everything after `sent` from Postgres; answers whether the
    /// run is finished and all of it was sent.
    ///
    /// For a watcher that fell behind and found its run's feed gone (the
    /// run finished meanwhile, or the feed saw no receiver while this one
    /// rejoined): the new feed reads from the run's first event and
    /// publishes a page at a time, more than the broadcast holds, so
    /// following it would lag again and again, each time on a new feed.
    /// Reading alone costs one read per page and always moves forward.
    async fn replay_to_end(&mut self) -> Result<bool, Stop> {
        let run_id = self.feed.run_id;
        loop {
            self.hub.inner.replay_reads.fetch_add(1, Ordering::Relaxed);
            let (status, events) = match read(&self.pool, run_id, self.sent, PAGE).await {
                Ok(Some(read)) => read,
                Ok(None) => return Err(Stop::Failed(Arc::new(WatchError::NotFound(run_id)))),
                Err(e) => return Err(Stop::Failed(Arc::new(e))),
            };
            let full = events.len() as i64 >= PAGE;
            for event in events {
                self.send(Arc::new(event)).await?;
            }
            if !full {
                return Ok(status.is_terminal());
            }
        }
    }

    /// Follows the feed; `Ok` asks for a fresh snapshot.
    async fn follow(&mut self, mut receiver: broadcast::Receiver<FeedMessage>) -> Result<(), Stop> {
        loop {
            tokio::select! {
                message = receiver.recv() => match message {
                    Ok(FeedMessage::Event(event)) => self.send(event).await?,
                    Ok(FeedMessage::Finished) => return Err(Stop::Done),
                    Ok(FeedMessage::Stopped(e)) => return Err(Stop::Failed(e)),
                    Err(broadcast::error::RecvError::Lagged(_)
                        | broadcast::error::RecvError::Closed) => return Ok(()),
                },
                () = self.out.closed() => return Err(Stop::Gone),
            }
        }
    }

    async fn send(&mut self, event: Arc<HistoryEvent>) -> Result<(), Stop> {
        if event.seq <= self.sent {
            return Ok(());
        }
        self.sent = event.seq;
        self.out
            .send(WatchItem::Event(event))
            .await
            .map_err(|_| Stop::Gone)
    }
}

type Row = (
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<Value>,
);

/// The run's status and up to `limit` history events after `after`, read
/// in one statement (one snapshot: the status matches the events); `None`
/// for an unknown run.
async fn read(
    pool: &PgPool,
    run_id: RunId,
    after: i64,
    limit: i64,
) -> Result<Option<(RunStatus, Vec<HistoryEvent>)>, WatchError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT r.status, h.seq, h.type, h.step_id, h.attempt, h.actor, h.at, h.data
         FROM fulfil.runs r
         LEFT JOIN LATERAL (SELECT seq, type, step_id, attempt, actor, at, data
                            FROM fulfil.history
                            WHERE run_id = r.id AND seq > $2 ORDER BY seq LIMIT $3) h ON true
         WHERE r.id = $1 ORDER BY h.seq",
    )
    .bind(run_id.as_uuid())
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let status = RunStatus::parse(&first.0).map_err(|_| WatchError::UnknownStatus {
        run_id,
        status: first.0.clone(),
    })?;
    let events = rows
        .into_iter()
        .filter_map(|(_, seq, kind, step_id, attempt, actor, at, data)| {
            Some(HistoryEvent {
                seq: seq?,
                kind: kind?,
                step_id,
                attempt,
                actor: actor?,
                at: at?,
                data: data.unwrap_or(Value::Null),
            })
        })
        .collect();
    Ok(Some((status, events)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_event_announces_its_run_and_seq_and_anything_else_nothing() {
        let run = Uuid::now_v7();
        let event =
            format!(r#"{{"subject":"{run}","fulfilseq":7,"type":"dev.fulfil.run.started"}}"#);
        assert_eq!(announced(event.as_bytes()), Some((run, 7)));
        assert_eq!(announced(br#"{"subject":"x","fulfilseq":7}"#), None);
        assert_eq!(announced(br#"{"type":"inbound"}"#), None);
        assert_eq!(announced(b"\xff not json"), None);
    }
}
