//! The worker runtime: pulls tasks from JetStream, runs their handlers and
//! reports results.
//!
//! Guarantees and assumptions:
//!
//! * **At least once.** Each queue is served by one durable pull consumer
//!   (`<prefix>_worker_<queue>`) shared by every worker process, with explicit
//!   acks. A task is acked only **after** its [`ResultMessage`](fulfil_core::wire::ResultMessage) has been
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
//!   [`TaskMessage`](fulfil_core::wire::TaskMessage) is copied to `<prefix>.deadletter.tasks` with the reason
//!   in the `Fulfil-Dead-Letter-Reason` header, then terminated.
//! * **Bounded concurrency**: at most `concurrency` handlers run at once,
//!   across all queues; a message is pulled only when a slot is free.
//! * **Shutdown** stops pulling, waits up to `drain_timeout` for running
//!   handlers to finish and report, then abandons the rest, unacked, to be
//!   redelivered to another worker.
//! * Transient NATS failures never stop the worker: a broken pull stream is
//!   rebuilt after a backoff.
//!
//! The runtime's parts, one file each: `config` ([`WorkerConfig`], its
//! defaults and checks), `pull` (consumers and the pull loop), `execute`
//! (running one task to its result) and `publish` (results and progress
//! reports). Dead letters and publish-with-retry are `fulfil-bus`'s.

mod config;
mod execute;
mod publish;
mod pull;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, stream::ConsumerError};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use fulfil_bus::{NatsNames, StreamError, ensure_streams};

pub use config::{ACK_WAIT, WorkerConfig, default_worker_id};

use crate::handler::Handlers;
use crate::secrets::SecretSources;
use pull::{Puller, open_consumer};

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
    secrets: SecretSources,
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
            secrets: SecretSources::default(),
        }
    }

    /// Where this worker looks up the secrets its tasks reference
    /// (default: the environment only; see [`crate::secrets`]).
    pub fn with_secrets(mut self, secrets: SecretSources) -> Self {
        self.secrets = secrets;
        self
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
            secrets: self.secrets,
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
            secrets = ?shared.secrets,
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
    secrets: SecretSources,
    worker_id: String,
    results_subject: String,
    progress_subject: String,
    names: NatsNames,
    /// Cancelled when the drain timeout passes: running tasks give up.
    abandon: CancellationToken,
}
