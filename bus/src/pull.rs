//! A pull consumer's messages, with exact accounting of what the server
//! still owes.
//!
//! async-nats's own pull stream (`Consumer::stream().messages()`, 0.51)
//! sends each pull request from a background task and adds the request's
//! batch to its count of owed messages only when that task reports the
//! request sent. When the server answers first (a backlog, a busy core),
//! the answer's messages are counted against the earlier request, the count
//! saturates at zero, and the late addition leaves it claiming messages the
//! server will never send. The stream then asks for nothing more, the
//! server holds no request to send heartbeats for, and it sits idle until
//! two heartbeat periods pass. With a small batch (a worker of concurrency
//! 4 pulls two at a time) that happened every few thousand messages, 10 s
//! each time.
//!
//! [`PullFeed`] counts a request as owed before sending it, so no answer can
//! overtake its own request, and subtracts what each expired or terminated
//! request reports it left unfilled (`Nats-Pending-Messages`). Silence for
//! two heartbeat periods still means the server holds none of its requests
//! (a restarted server, a reconnect): it forgets the count and asks again.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull::BatchConfig};
use async_nats::{StatusCode, Subscriber};
use futures::StreamExt;
use tracing::{debug, warn};

/// Lifetime of one pull request: an idle consumer sends one every 30 s.
pub const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// Idle heartbeat asked for on pull requests; silence for two of them means
/// the server lost the requests, and the feed asks again.
pub const PULL_HEARTBEAT: Duration = Duration::from_secs(5);

/// Header on an expired or terminated pull request: how many of its
/// messages were never sent.
const PENDING_MESSAGES_HEADER: &str = "Nats-Pending-Messages";

/// Why a feed stopped; the caller opens a new one.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot subscribe to the pull inbox: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("cannot send a pull request: {0}")]
    Request(#[from] jetstream::consumer::pull::BatchRequestError),
    #[error("the consumer was deleted")]
    ConsumerDeleted,
    #[error("no JetStream server answered the pull request")]
    NoResponders,
    /// The server refused the request itself (a batch or expiry above the
    /// consumer's limits, a push consumer); asking again would not help.
    #[error("the server refused the pull request: {0}")]
    Refused(String),
    #[error("the pull inbox subscription closed")]
    Closed,
}

/// The messages a feed's requests asked for and the server has not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owed {
    batch: usize,
    owed: usize,
}

impl Owed {
    fn new(batch: usize) -> Self {
        Self {
            batch: batch.max(1),
            owed: 0,
        }
    }

    /// Another request keeps the next messages coming before these run out.
    fn request_due(&self) -> bool {
        self.owed <= self.batch / 2
    }

    /// Counted before the request goes out: its answer may arrive before
    /// the send returns.
    fn requested(&mut self) {
        self.owed += self.batch;
    }

    /// The request could not be sent after all.
    fn unrequested(&mut self) {
        self.owed = self.owed.saturating_sub(self.batch);
    }

    fn delivered(&mut self) {
        self.owed = self.owed.saturating_sub(1);
    }

    /// A request expired or was terminated with `unfilled` messages unsent;
    /// without the header, the whole batch is assumed unsent, since
    /// counting too few owed only asks for more, while too many stalls.
    fn ended(&mut self, unfilled: Option<usize>) {
        let unfilled = unfilled.unwrap_or(self.batch).min(self.batch);
        self.owed = self.owed.saturating_sub(unfilled);
    }

    /// The server holds none of the feed's requests.
    fn forget(&mut self) {
        self.owed = 0;
    }
}

/// Messages of one pull consumer, fetched `batch` at a time on one inbox
/// subscription, the next request sent when half a batch is still owed.
pub struct PullFeed {
    consumer: PullConsumer,
    context: jetstream::Context,
    inbox: async_nats::Subject,
    subscriber: Subscriber,
    owed: Owed,
    expires: Duration,
    heartbeat: Duration,
}

impl PullFeed {
    /// Subscribes to a fresh inbox; the first request goes out on the first
    /// [`PullFeed::next`]. `heartbeat` must be at most half of `expires`;
    /// zero asks for no heartbeats and never takes silence for lost requests.
    pub async fn open(
        context: &jetstream::Context,
        consumer: PullConsumer,
        batch: usize,
        expires: Duration,
        heartbeat: Duration,
    ) -> Result<Self, PullError> {
        let client = context.client();
        let inbox = async_nats::Subject::from(client.new_inbox());
        let subscriber = client.subscribe(inbox.clone()).await?;
        Ok(Self {
            consumer,
            context: context.clone(),
            inbox,
            subscriber,
            owed: Owed::new(batch),
            expires,
            heartbeat,
        })
    }

    /// Hands the feed's messages to `handle` in batches of what has arrived
    /// (never waiting to fill one, at most `batch`), `concurrency` batches
    /// at a time, until `stop` completes (`Ok`) or the feed fails (`Err`:
    /// the caller opens a new feed). Batches already handed over finish
    /// either way.
    pub async fn for_each_batch<Handled>(
        self,
        batch: usize,
        concurrency: usize,
        stop: impl std::future::Future<Output = ()>,
        handle: impl FnMut(Vec<jetstream::Message>) -> Handled,
    ) -> Result<(), PullError>
    where
        Handled: std::future::Future<Output = ()>,
    {
        // The feed's first error ends the stream and is kept to return.
        let messages = futures::stream::unfold(Some(self), |feed| async move {
            let mut feed = feed?;
            match feed.next().await {
                Ok(message) => Some((Ok(message), Some(feed))),
                Err(e) => Some((Err(e), None)),
            }
        });
        let mut failed: Option<PullError> = None;
        messages
            .take_until(stop)
            .filter_map(|message| {
                let message = match message {
                    Ok(message) => Some(message),
                    Err(e) => {
                        failed.get_or_insert(e);
                        None
                    }
                };
                std::future::ready(message)
            })
            .ready_chunks(batch)
            .for_each_concurrent(concurrency, handle)
            .await;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Messages this feed's requests asked for that the server has not sent.
    pub fn owed(&self) -> usize {
        self.owed.owed
    }

    /// The next message, asking the server for more as needed.
    pub async fn next(&mut self) -> Result<jetstream::Message, PullError> {
        loop {
            if self.owed.request_due() {
                self.request().await?;
            }
            let received = if self.heartbeat.is_zero() {
                Ok(self.subscriber.next().await)
            } else {
                tokio::time::timeout(self.heartbeat * 2, self.subscriber.next()).await
            };
            let message = match received {
                Ok(Some(message)) => message,
                Ok(None) => return Err(PullError::Closed),
                Err(_silence) => {
                    warn!(
                        owed = self.owed.owed,
                        "no message or heartbeat for two heartbeat periods; the server holds none of this feed's pull requests, asking again"
                    );
                    self.owed.forget();
                    continue;
                }
            };
            match message.status {
                None | Some(StatusCode::OK) => {
                    self.owed.delivered();
                    return Ok(jetstream::Message {
                        message,
                        context: self.context.clone(),
                    });
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                Some(StatusCode::TIMEOUT) | Some(StatusCode::REQUEST_TERMINATED) => {
                    self.request_ended(&message)?;
                }
                Some(StatusCode::NO_RESPONDERS) => return Err(PullError::NoResponders),
                Some(status) => {
                    return Err(PullError::Refused(format!(
                        "status {status}: {}",
                        message.description.as_deref().unwrap_or("no description")
                    )));
                }
            }
        }
    }

    async fn request(&mut self) -> Result<(), PullError> {
        self.owed.requested();
        let request = BatchConfig {
            batch: self.owed.batch,
            expires: Some(self.expires),
            idle_heartbeat: self.heartbeat,
            ..Default::default()
        };
        if let Err(e) = self
            .consumer
            .request_batch(request, self.inbox.clone())
            .await
        {
            self.owed.unrequested();
            return Err(e.into());
        }
        Ok(())
    }

    /// Accounts for a request the server ended (408 on expiry, 409 when
    /// terminated), or stops the feed when asking again cannot help.
    fn request_ended(&mut self, message: &async_nats::Message) -> Result<(), PullError> {
        let description = message.description.as_deref().unwrap_or("");
        if description.eq_ignore_ascii_case("consumer deleted") {
            return Err(PullError::ConsumerDeleted);
        }
        if description.starts_with("Exceeded MaxRequest")
            || description.eq_ignore_ascii_case("consumer is push based")
        {
            return Err(PullError::Refused(description.to_owned()));
        }
        let unfilled = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(PENDING_MESSAGES_HEADER))
            .and_then(|value| value.as_str().parse().ok());
        debug!(
            status = ?message.status,
            description,
            ?unfilled,
            "pull request ended"
        );
        self.owed.ended(unfilled);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_that_overtakes_its_request_is_still_counted() {
        // The sequence that stalled async-nats's stream: half a batch left,
        // a request goes out, and its two messages arrive before anything
        // else happens. Counting first leaves nothing owed, so the next
        // call asks again.
        let mut owed = Owed::new(2);
        owed.requested();
        owed.delivered();
        assert!(owed.request_due());
        owed.requested();
        owed.delivered();
        owed.delivered();
        owed.delivered();
        assert_eq!(owed.owed, 0);
        assert!(owed.request_due());
    }

    #[test]
    fn the_next_request_goes_out_at_half_a_batch() {
        let mut owed = Owed::new(8);
        assert!(owed.request_due());
        owed.requested();
        for _ in 0..3 {
            owed.delivered();
        }
        assert!(!owed.request_due(), "5 of 8 still owed");
        owed.delivered();
        assert!(owed.request_due(), "4 of 8 still owed");
    }

    #[test]
    fn an_ended_request_subtracts_what_it_left_unfilled() {
        let mut owed = Owed::new(8);
        owed.requested();
        owed.requested();
        owed.delivered();
        owed.ended(Some(7));
        assert_eq!(owed.owed, 8);
        owed.ended(None);
        assert_eq!(owed.owed, 0, "without the header the whole batch is unsent");
        owed.ended(Some(100));
        assert_eq!(owed.owed, 0);
    }

    #[test]
    fn an_unsent_request_is_not_owed() {
        let mut owed = Owed::new(4);
        owed.requested();
        owed.unrequested();
        assert_eq!(owed.owed, 0);
        owed.requested();
        owed.forget();
        assert!(owed.request_due());
    }

    #[test]
    fn a_batch_of_zero_asks_for_one() {
        let mut owed = Owed::new(0);
        owed.requested();
        assert_eq!(owed.owed, 1);
    }
}
