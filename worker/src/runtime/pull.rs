//! The pull side of the worker: opening each queue's durable consumer and
//! the loop that pulls its tasks.
//!
//! A message is pulled only once a concurrency slot is free, and the slot
//! travels with the message into [`execute::process`](super::execute), so no
//! task waits on this worker while another could run it. A failing pull
//! feed or consumer is rebuilt after a backoff; only shutdown ends the loop.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, PullConsumer, pull},
    stream::ConsumerError,
};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, info_span, warn};

use fulfil_bus::{Backoff, NatsNames, PULL_EXPIRES, PULL_HEARTBEAT, PullFeed};

use super::{Shared, WorkerConfig, execute::process};

/// Opens the queue's durable consumer, creating it with this worker's
/// `ack_wait` and `max_ack_pending` when missing; an existing consumer keeps
/// its own settings.
pub(super) async fn open_consumer(
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
pub(super) struct Puller<'a> {
    pub(super) queue: String,
    pub(super) names: &'a NatsNames,
    pub(super) config: &'a WorkerConfig,
    pub(super) shared: &'a Arc<Shared>,
    pub(super) slots: &'a Arc<Semaphore>,
    pub(super) tracker: &'a TaskTracker,
    pub(super) shutdown: &'a CancellationToken,
}

impl Puller<'_> {
    /// Pulls until shutdown, rebuilding the pull stream (and reopening the
    /// consumer) whenever it fails.
    pub(super) async fn run(self, consumer: PullConsumer) {
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
