//! The worker runtime: pulls tasks from JetStream, runs their handlers and
//! reports results.
//!
//! Guarantees and assumptions:
//!
//! * **At least once.** Each queue is served by one durable pull consumer
//!   (`<prefix>_worker_<queue>`) shared by every worker process, with explicit
//!   acks. A task is acked only **after** its [`ResultMessage`] has been
//!   stored by the results stream (publish ack received). If the worker dies
//!   in between, or the result cannot be published, the task is redelivered
//!   after the consumer's `ack_wait` and runs again; the engine applies the
//!   first result per task id and ignores the rest.
//! * **Long steps are not redelivered while they run**: once a handler has run
//!   for `ack_wait / 2`, the runtime sends `+WPI` (progress) every
//!   `ack_wait / 2` until the result is published.
//! * **Deadline.** A handler still running at the task's deadline is dropped
//!   and the attempt reported as a retryable `timeout` error. A handler that
//!   panics is reported as a retryable `handler_panic` error; the worker
//!   carries on.
//! * **Nothing is silently dropped.** A message that is not a
//!   [`TaskMessage`] is copied to `<prefix>.deadletter.tasks` with the reason
//!   in the `Fulfil-Dead-Letter-Reason` header, then terminated.
//! * **Bounded concurrency**: at most `concurrency` handlers run at once,
//!   across all queues; a message is pulled only when a slot is free.
//! * **Shutdown** stops pulling, waits up to `drain_timeout` for running
//!   handlers to finish and report, then abandons the rest, unacked, to be
//!   redelivered to another worker.
//! * Transient NATS failures never stop the worker: a broken pull stream is
//!   rebuilt after a backoff.

use std::{any::Any, future::Future, sync::Arc, time::Duration};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, PullConsumer, pull},
    message::PublishMessage,
    stream::ConsumerError,
};
use bytes::Bytes;
use chrono::Utc;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_util::{
    sync::CancellationToken,
    task::{AbortOnDropHandle, TaskTracker},
};
use tracing::{Instrument, debug, error, info, info_span, warn};

use fulfil_bus::{
    Backoff, NatsNames, PULL_EXPIRES, PULL_HEARTBEAT, PublishError, PullFeed, StreamError,
    ensure_streams, publish_with_retry,
};
use fulfil_core::wire::{
    Outcome, Progress, ProgressMessage, ResultMessage, StepFailure, TaskMessage,
    is_valid_queue_name,
};

use serde_json::Value;

use crate::handler::{Handlers, Heartbeat, StepError, TaskContext};

/// Default redelivery delay of an unacked task, set on consumers this worker
/// creates ([`WorkerConfig::ack_wait`]).
pub const ACK_WAIT: Duration = Duration::from_secs(60);
/// Shortest `ack_wait` accepted: progress goes out every `ack_wait / 2`, but
/// at most once a second.
const MIN_ACK_WAIT: Duration = Duration::from_secs(2);

/// Steps finishing sooner than this send no `started` report.
const STARTED_REPORT_DELAY: Duration = Duration::from_millis(250);

/// Room left for headers and protocol overhead when checking a result
/// against the server's maximum payload.
const PAYLOAD_MARGIN: usize = 4 * 1024;

/// How a worker process runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Identity shown to operators in each attempt (`worker` in the API).
    pub worker_id: String,
    /// Queues to serve; a step's `queue` (default `default`) picks one.
    pub queues: Vec<String>,
    /// Handlers running at once, across all queues.
    pub concurrency: usize,
    /// How long shutdown waits for running handlers.
    pub drain_timeout: Duration,
    /// Redelivery delay of a task left unacked (say, by a crashed worker),
    /// set on the queue consumers this worker creates; progress (`+WPI`) is
    /// sent every half of it. An existing consumer keeps its own setting.
    pub ack_wait: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            worker_id: default_worker_id(),
            queues: vec![fulfil_core::wire::DEFAULT_QUEUE.to_owned()],
            concurrency: 16,
            drain_timeout: Duration::from_secs(30),
            ack_wait: ACK_WAIT,
        }
    }
}

/// `<host>-<pid>`, with the host from `HOSTNAME` when set.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

impl WorkerConfig {
    fn validate(&self) -> Result<(), WorkerError> {
        if self.queues.is_empty() {
            return Err(WorkerError::InvalidConfig(
                "no queues to serve; name at least one, such as \"default\"".into(),
            ));
        }
        if let Some(bad) = self.queues.iter().find(|q| !is_valid_queue_name(q)) {
            return Err(WorkerError::InvalidConfig(format!(
                "queue name {bad:?} is invalid: use letters, digits, '-' and '_' only"
            )));
        }
        if self.concurrency == 0 {
            return Err(WorkerError::InvalidConfig(
                "concurrency must be at least 1".into(),
            ));
        }
        if self.ack_wait < MIN_ACK_WAIT {
            return Err(WorkerError::InvalidConfig(format!(
                "ack_wait must be at least {}",
                humantime::format_duration(MIN_ACK_WAIT)
            )));
        }
        Ok(())
    }

    /// Messages asked for per pull request: half the concurrency, so the
    /// next tasks are already here when slots free up (the client asks for
    /// more as the batch drains), yet a busy worker holds at most about its
    /// concurrency of unstarted tasks that an idle one could run.
    fn pull_batch(&self) -> usize {
        (self.concurrency / 2).clamp(1, 128)
    }

    /// Outstanding unacked tasks the consumer allows, for every worker of
    /// the queue together.
    fn max_ack_pending(&self) -> i64 {
        i64::try_from(self.concurrency.saturating_mul(4))
            .unwrap_or(i64::MAX)
            .max(1000)
    }
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The [`WorkerConfig`] cannot work; the message says what to change.
    #[error("invalid worker configuration: {0}")]
    InvalidConfig(String),
    /// The tasks, results, events or dead-letter stream could not be opened
    /// or created (is JetStream enabled on the server?).
    #[error(transparent)]
    Streams(#[from] StreamError),
    /// The durable pull consumer of a queue could not be opened or created.
    #[error("cannot open or create the consumer of queue {queue:?}: {source}")]
    Consumer {
        queue: String,
        #[source]
        source: ConsumerError,
    },
}

/// A worker process: serves the configured queues until shut down.
pub struct Worker {
    js: jetstream::Context,
    names: NatsNames,
    handlers: Handlers,
    config: WorkerConfig,
}

impl Worker {
    pub fn new(
        js: jetstream::Context,
        names: NatsNames,
        handlers: Handlers,
        config: WorkerConfig,
    ) -> Self {
        Self {
            js,
            names,
            handlers,
            config,
        }
    }

    /// Creates the streams and consumers if needed, then serves tasks until
    /// `shutdown` is cancelled and in-flight handlers have drained (or
    /// `drain_timeout` has passed). Errors only at start; once running, NATS
    /// failures are retried.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        self.config.validate()?;
        ensure_streams(&self.js, &self.names).await?;

        let mut consumers = Vec::with_capacity(self.config.queues.len());
        for queue in &self.config.queues {
            let consumer = open_consumer(&self.js, &self.names, queue, &self.config)
                .await
                .map_err(|source| WorkerError::Consumer {
                    queue: queue.clone(),
                    source,
                })?;
            consumers.push((queue.clone(), consumer));
        }

        let shared = Arc::new(Shared {
            js: self.js,
            handlers: self.handlers,
            worker_id: self.config.worker_id.clone(),
            results_subject: self.names.results_subject(),
            progress_subject: self.names.progress_subject(),
            names: self.names.clone(),
            abandon: CancellationToken::new(),
        });
        // If this future is dropped rather than shut down, stop the handlers
        // too instead of leaving them running detached.
        let _abandon_on_drop = shared.abandon.clone().drop_guard();
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let tracker = TaskTracker::new();

        info!(
            worker_id = %self.config.worker_id,
            queues = ?self.config.queues,
            concurrency = self.config.concurrency,
            handlers = ?shared.handlers,
            "worker started"
        );

        let pullers = consumers.into_iter().map(|(queue, consumer)| {
            Puller {
                queue,
                names: &self.names,
                config: &self.config,
                shared: &shared,
                slots: &slots,
                tracker: &tracker,
                shutdown: &shutdown,
            }
            .run(consumer)
        });
        futures::future::join_all(pullers).await;

        tracker.close();
        info!(
            in_flight = tracker.len(),
            drain_timeout = %humantime::format_duration(self.config.drain_timeout),
            "worker stopped pulling; draining"
        );
        if tokio::time::timeout(self.config.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                in_flight = tracker.len(),
                "drain timeout reached; abandoning running tasks, they will be redelivered"
            );
            shared.abandon.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        }
        info!("worker stopped");
        Ok(())
    }
}

/// What every task of a worker needs.
struct Shared {
    js: jetstream::Context,
    handlers: Handlers,
    worker_id: String,
    results_subject: String,
    progress_subject: String,
    names: NatsNames,
    /// Cancelled when the drain timeout passes: running tasks give up.
    abandon: CancellationToken,
}

async fn open_consumer(
    js: &jetstream::Context,
    names: &NatsNames,
    queue: &str,
    config: &WorkerConfig,
) -> Result<PullConsumer, ConsumerError> {
    let name = names.worker_consumer(queue);
    let stream = js.get_stream(names.tasks_stream()).await.map_err(|err| {
        ConsumerError::with_source(jetstream::stream::ConsumerErrorKind::Other, err)
    })?;
    stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: names.task_subject(queue),
                ack_policy: AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_ack_pending: config.max_ack_pending(),
                ..Default::default()
            },
        )
        .await
}

/// The pull loop of one queue.
struct Puller<'a> {
    queue: String,
    names: &'a NatsNames,
    config: &'a WorkerConfig,
    shared: &'a Arc<Shared>,
    slots: &'a Arc<Semaphore>,
    tracker: &'a TaskTracker,
    shutdown: &'a CancellationToken,
}

impl Puller<'_> {
    /// Pulls until shutdown, rebuilding the pull stream (and reopening the
    /// consumer) whenever it fails.
    async fn run(self, consumer: PullConsumer) {
        let span = info_span!("queue", queue = %self.queue);
        async {
            let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
            let mut consumer = Some(consumer);
            while !self.shutdown.is_cancelled() {
                let current = match consumer.take() {
                    Some(consumer) => consumer,
                    None => {
                        match open_consumer(&self.shared.js, self.names, &self.queue, self.config)
                            .await
                        {
                            Ok(consumer) => consumer,
                            Err(err) => {
                                warn!(error = %err, "cannot open the queue's consumer; retrying");
                                self.pause(backoff.next_delay()).await;
                                continue;
                            }
                        }
                    }
                };
                self.pull(&current, &mut backoff).await;
                self.pause(backoff.next_delay()).await;
            }
            debug!("stopped pulling");
        }
        .instrument(span)
        .await;
    }

    /// Runs one pull feed until it fails or shutdown.
    async fn pull(&self, consumer: &PullConsumer, backoff: &mut Backoff) {
        let ack_wait = consumer.cached_info().config.ack_wait;
        let feed = PullFeed::open(
            &self.shared.js,
            consumer.clone(),
            self.config.pull_batch(),
            PULL_EXPIRES,
            PULL_HEARTBEAT,
        )
        .await;
        let mut feed = match feed {
            Ok(feed) => feed,
            Err(err) => {
                warn!(error = %err, "cannot start pulling; retrying");
                return;
            }
        };
        loop {
            // Take a slot before pulling, so no message waits on this worker
            // while another could run it.
            let slot = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                slot = self.slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
            };
            let next = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                next = feed.next() => next,
            };
            match next {
                Ok(message) => {
                    backoff.reset();
                    self.tracker
                        .spawn(process(Arc::clone(self.shared), message, ack_wait, slot));
                }
                Err(err) => {
                    warn!(error = %err, "pull feed failed; rebuilding it");
                    return;
                }
            }
        }
    }

    /// Sleeps, unless shutdown comes first.
    async fn pause(&self, delay: Duration) {
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Handles one delivered message, holding a concurrency slot throughout.
async fn process(
    shared: Arc<Shared>,
    message: jetstream::Message,
    ack_wait: Duration,
    _slot: OwnedSemaphorePermit,
) {
    let abandon = shared.abandon.clone();
    tokio::select! {
        biased;
        () = abandon.cancelled() => {
            debug!(subject = %message.subject, "abandoned at shutdown; it will be redelivered");
        }
        () = handle_message(&shared, &message, ack_wait) => {}
    }
}

async fn handle_message(shared: &Shared, message: &jetstream::Message, ack_wait: Duration) {
    let task: TaskMessage = match serde_json::from_slice(&message.payload) {
        Ok(task) => task,
        Err(err) => {
            fulfil_bus::dead_letter(
                &shared.js,
                &shared.names,
                "tasks",
                message,
                &format!("not a valid task message: {err}"),
            )
            .await;
            return;
        }
    };
    let span = info_span!(
        "task",
        run_id = %task.run_id,
        step_id = %task.step_id,
        attempt = task.attempt,
        task_id = %task.task_id,
        handler = %task.handler,
    );
    async {
        let delivered = message.info().map(|info| info.delivered).ok();
        debug!(?delivered, "task received");
        let work = async {
            let started_at = Utc::now();
            let clock = Instant::now();
            let (beats, heartbeats) = tokio::sync::mpsc::unbounded_channel();
            let handler = async {
                let handler = run_handler(&shared.handlers, &task, Heartbeat::new(beats));
                tokio::pin!(handler);
                // Quick steps report nothing but their result; a step still
                // running after a moment says it started, so the engine shows
                // it running and arms its timeout and heartbeat clocks.
                tokio::select! {
                    outcome = &mut handler => outcome,
                    () = tokio::time::sleep(started_report_delay(&task)) => {
                        report_progress(shared, &task, Progress::Started, None).await;
                        handler.await
                    }
                }
            };
            let (outcome, ()) = tokio::join!(
                handler,
                forward_heartbeats(shared, message, &task, heartbeats)
            );
            match &outcome {
                Outcome::Ok { .. } => info!(elapsed = ?clock.elapsed(), "step attempt succeeded"),
                Outcome::Error(failure) => info!(
                    elapsed = ?clock.elapsed(),
                    code = failure.code.as_deref().unwrap_or(""),
                    retryable = failure.retryable,
                    error = %failure.message,
                    "step attempt failed"
                ),
            }
            let result = ResultMessage {
                task_id: task.task_id,
                run_id: task.run_id,
                step_id: task.step_id.clone(),
                attempt: task.attempt,
                worker_id: shared.worker_id.clone(),
                outcome,
                started_at,
                finished_at: Utc::now(),
            };
            publish_result(shared, result).await
        };
        match with_progress(message, ack_wait, work).await {
            Ok(()) => {
                if let Err(err) = message.ack().await {
                    // The result is stored; redelivery would only produce a
                    // duplicate result, which the engine ignores.
                    warn!(error = %err, "result published but the task ack failed");
                }
            }
            Err(err) => error!(
                error = %err,
                "cannot publish the result; leaving the task unacked so it is redelivered"
            ),
        }
    }
    .instrument(span)
    .await;
}

/// Runs the task's handler in its own task, so a panic is caught, and
/// gives up at the task's deadline.
async fn run_handler(handlers: &Handlers, task: &TaskMessage, heartbeat: Heartbeat) -> Outcome {
    let handler = match handlers.resolve(&task.handler) {
        Ok(handler) => handler,
        Err(err) => return Outcome::Error(err.into()),
    };
    let ctx = TaskContext::from_task(task).with_heartbeat(heartbeat);
    let remaining = ctx.remaining();
    let timeout = || {
        StepError::retryable(format!(
            "handler {:?} did not finish before the task deadline {}",
            task.handler,
            task.deadline.to_rfc3339()
        ))
        .with_code("timeout")
    };
    if remaining.is_zero() {
        return Outcome::Error(timeout().into());
    }
    let input = task.input.clone();
    // Dropping the handle (on timeout or abandon) aborts the handler.
    let running = AbortOnDropHandle::new(tokio::spawn(
        async move { handler.handle(&ctx, input).await }.in_current_span(),
    ));
    match tokio::time::timeout(remaining, running).await {
        Err(_) => Outcome::Error(timeout().into()),
        Ok(Ok(Ok(output))) => Outcome::Ok { output },
        Ok(Ok(Err(err))) => Outcome::Error(err.into()),
        Ok(Err(join)) if join.is_panic() => {
            let message = panic_message(join.into_panic());
            error!(panic = %message, "handler panicked");
            Outcome::Error(
                StepError::retryable(format!("handler {:?} panicked: {message}", task.handler))
                    .with_code("handler_panic")
                    .into(),
            )
        }
        Ok(Err(join)) => Outcome::Error(
            StepError::retryable(format!("handler {:?} was cancelled: {join}", task.handler))
                .with_code("handler_cancelled")
                .into(),
        ),
    }
}

/// How long a handler runs before the worker reports it started.
fn started_report_delay(task: &TaskMessage) -> Duration {
    let quarter = |ms: u64| Duration::from_millis(ms / 4);
    [
        Some(STARTED_REPORT_DELAY),
        task.timeout_ms.map(quarter),
        task.heartbeat_timeout_ms.map(quarter),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(STARTED_REPORT_DELAY)
}

/// Publishes a progress report, best effort: the engine tolerates a lost
/// one, so a failure is logged and the task goes on.
async fn report_progress(
    shared: &Shared,
    task: &TaskMessage,
    progress: Progress,
    details: Option<Value>,
) {
    let report = ProgressMessage {
        task_id: task.task_id,
        run_id: task.run_id,
        step_id: task.step_id.clone(),
        attempt: task.attempt,
        worker_id: shared.worker_id.clone(),
        progress,
        at: Utc::now(),
        details,
    };
    let payload = match serde_json::to_vec(&report) {
        Ok(p) => Bytes::from(p),
        Err(err) => {
            warn!(error = %err, "cannot encode a progress report");
            return;
        }
    };
    // Not waiting for the stream's ack keeps the report off the step's path.
    if let Err(err) = shared
        .js
        .publish(shared.progress_subject.clone(), payload)
        .await
    {
        warn!(error = %err, ?progress, "progress report not sent");
    }
}

/// Forwards the handler's heartbeats to the engine, at most one per third
/// of the heartbeat timeout, and keeps the task message alive meanwhile.
/// Ends when the handler has finished (its sender is dropped).
async fn forward_heartbeats(
    shared: &Shared,
    message: &jetstream::Message,
    task: &TaskMessage,
    mut heartbeats: tokio::sync::mpsc::UnboundedReceiver<Option<Value>>,
) {
    let min_gap = task
        .heartbeat_timeout_ms
        .map(|ms| Duration::from_millis(ms / 3))
        .unwrap_or(Duration::from_secs(1));
    let mut last_sent: Option<Instant> = None;
    while let Some(details) = heartbeats.recv().await {
        if last_sent.is_some_and(|at| at.elapsed() < min_gap) {
            continue;
        }
        last_sent = Some(Instant::now());
        report_progress(shared, task, Progress::Heartbeat, details).await;
        if let Err(err) = message.ack_with(AckKind::Progress).await {
            debug!(error = %err, "progress ack failed");
        }
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Drives `work` while telling the server, every `ack_wait / 2`, that the
/// message is still being worked on.
async fn with_progress<F: Future>(
    message: &jetstream::Message,
    ack_wait: Duration,
    work: F,
) -> F::Output {
    let period = (ack_wait / 2).max(Duration::from_secs(1));
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = ticker.tick() => {
                match message.ack_with(AckKind::Progress).await {
                    Ok(()) => debug!("still working; sent progress"),
                    Err(err) => warn!(error = %err, "cannot send progress"),
                }
            }
        }
    }
}

/// A result could not be stored.
#[derive(Debug, thiserror::Error)]
enum PublishFailure {
    /// The message could not be encoded.
    #[error("cannot encode the result: {0}")]
    Encode(#[from] serde_json::Error),
    /// Every attempt failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Publishes `result` with `Nats-Msg-Id` = task id and waits for the stream
/// to store it. A result too large for the server is replaced by a permanent
/// `result_too_large` error, which always fits.
async fn publish_result(shared: &Shared, mut result: ResultMessage) -> Result<(), PublishFailure> {
    let max_payload = shared
        .js
        .client()
        .server_info()
        .max_payload
        .saturating_sub(PAYLOAD_MARGIN);
    let mut payload = serde_json::to_vec(&result)?;
    if payload.len() > max_payload {
        warn!(
            bytes = payload.len(),
            max_payload, "result too large for the server; reporting an error instead"
        );
        result.outcome = Outcome::Error(StepFailure {
            message: format!(
                "the step's output is {} bytes, more than the {max_payload} bytes NATS accepts",
                payload.len()
            ),
            code: Some("result_too_large".into()),
            retryable: false,
            retry_after_ms: None,
        });
        payload = serde_json::to_vec(&result)?;
    }
    let payload = Bytes::from(payload);
    let message_id = result.task_id.to_string();
    publish_with_retry(&shared.js, &shared.results_subject, || {
        PublishMessage::build()
            .payload(payload.clone())
            .message_id(&message_id)
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use serde_json::{Value, json};
    use uuid::Uuid;

    use super::*;
    use crate::handler::Handler;

    struct Panics;

    #[async_trait]
    impl Handler for Panics {
        async fn handle(&self, _: &TaskContext, _: Value) -> Result<Value, StepError> {
            panic!("boom at step");
        }
    }

    struct Sleeps;

    #[async_trait]
    impl Handler for Sleeps {
        async fn handle(&self, _: &TaskContext, _: Value) -> Result<Value, StepError> {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(Value::Null)
        }
    }

    fn task(handler: &str, deadline_in: chrono::Duration) -> TaskMessage {
        TaskMessage {
            task_id: Uuid::now_v7(),
            run_id: Uuid::now_v7(),
            step_id: "s".into(),
            attempt: 1,
            handler: handler.into(),
            input: json!({"a": 1}),
            deadline: Utc::now() + deadline_in,
            idempotency_key: "k".into(),
            traceparent: None,
            kind: Default::default(),
            timeout_ms: None,
            heartbeat_timeout_ms: None,
        }
    }

    fn failure(outcome: Outcome) -> StepFailure {
        match outcome {
            Outcome::Error(failure) => failure,
            Outcome::Ok { output } => panic!("expected a failure, got output {output}"),
        }
    }

    #[tokio::test]
    async fn handler_outcomes_cover_success_panic_timeout_and_unknown() {
        let mut handlers = Handlers::new();
        handlers
            .register("echo", crate::builtin::Echo)
            .register("panics", Panics)
            .register("sleeps", Sleeps);
        let minute = chrono::Duration::seconds(60);

        let ok = run_handler(&handlers, &task("echo", minute), Heartbeat::default()).await;
        assert_eq!(
            ok,
            Outcome::Ok {
                output: json!({"a": 1})
            }
        );

        let panicked =
            failure(run_handler(&handlers, &task("panics", minute), Heartbeat::default()).await);
        assert_eq!(panicked.code.as_deref(), Some("handler_panic"));
        assert!(panicked.retryable);
        assert!(
            panicked.message.contains("boom at step"),
            "{}",
            panicked.message
        );

        let started = Instant::now();
        let late = task("sleeps", chrono::Duration::milliseconds(200));
        let timed_out = failure(run_handler(&handlers, &late, Heartbeat::default()).await);
        assert_eq!(timed_out.code.as_deref(), Some("timeout"));
        assert!(timed_out.retryable);
        assert!(started.elapsed() < Duration::from_secs(5));

        let expired = failure(
            run_handler(
                &handlers,
                &task("echo", chrono::Duration::seconds(-1)),
                Heartbeat::default(),
            )
            .await,
        );
        assert_eq!(expired.code.as_deref(), Some("timeout"));

        let unknown =
            failure(run_handler(&handlers, &task("nope", minute), Heartbeat::default()).await);
        assert_eq!(unknown.code.as_deref(), Some("unknown_handler"));
        assert!(!unknown.retryable);
    }

    #[test]
    fn config_is_validated_and_sizes_pulls() {
        assert!(WorkerConfig::default().validate().is_ok());
        let bad = |config: WorkerConfig| config.validate().unwrap_err().to_string();
        assert!(
            bad(WorkerConfig {
                queues: vec![],
                ..Default::default()
            })
            .contains("no queues")
        );
        assert!(
            bad(WorkerConfig {
                queues: vec!["a.b".into()],
                ..Default::default()
            })
            .contains("\"a.b\"")
        );
        assert!(
            bad(WorkerConfig {
                concurrency: 0,
                ..Default::default()
            })
            .contains("concurrency")
        );
        assert!(
            bad(WorkerConfig {
                ack_wait: Duration::from_millis(500),
                ..Default::default()
            })
            .contains("ack_wait")
        );

        let sized = |concurrency| WorkerConfig {
            concurrency,
            ..Default::default()
        };
        assert_eq!(sized(1).pull_batch(), 1);
        assert_eq!(sized(16).pull_batch(), 8);
        assert_eq!(sized(1000).pull_batch(), 128);
        assert!(sized(16).max_ack_pending() >= 16);
        assert!(sized(10_000).max_ack_pending() >= 10_000);
    }
}
