//! Publishing that waits for the stream to store the message, with bounded
//! retries, and the one way a message that can never be processed leaves
//! its stream: a dead letter carrying the reason.
//!
//! A dead letter is stored before the original is terminated. If the dead
//! letter cannot be stored, the original is left to be redelivered, so a
//! message is never dropped silently (DESIGN.md, durability clause 10).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, message::PublishMessage};
use bytes::Bytes;
use tracing::{debug, error, warn};

use crate::names::{DEAD_LETTER_REASON_HEADER, NatsNames, header_text};

/// Header on a dead letter naming the subject the message arrived on.
pub const DEAD_LETTER_SUBJECT_HEADER: &str = "Fulfil-Dead-Letter-Subject";

/// Largest message Fulfil writes to NATS: the server's default
/// `max_payload`. The engine refuses a request or a task that would not fit,
/// where the cause is known, rather than storing a message it can never
/// publish; a server configured lower still gets such messages parked by the
/// outbox relay, never retried forever.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Attempts at publishing before giving up and leaving the caller's message
/// to be redelivered.
pub const PUBLISH_ATTEMPTS: u32 = 5;

/// Bound on one publish, including the wait for the stream's ack.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a message whose dead letter could not be stored waits before
/// it is redelivered and tried again.
const DEAD_LETTER_RETRY_DELAY: Duration = Duration::from_secs(5);

/// A message could not be stored by its stream.
#[derive(Debug, thiserror::Error)]
#[error("gave up after {attempts} attempts: {last_error}")]
pub struct PublishError {
    /// How many publishes were tried.
    pub attempts: u32,
    /// What the last attempt failed with.
    pub last_error: String,
}

/// Publishes via JetStream and waits for the stream's ack, retrying up to
/// [`PUBLISH_ATTEMPTS`] times with backoff. `build` makes the message anew
/// for each attempt (a `PublishMessage` is consumed by sending it).
pub async fn publish_with_retry(
    js: &jetstream::Context,
    subject: &str,
    build: impl Fn() -> PublishMessage,
) -> Result<(), PublishError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut last_error = String::new();
    for attempt in 1..=PUBLISH_ATTEMPTS {
        let publish = async {
            let ack = js.send_publish(subject.to_owned(), build()).await?;
            ack.await
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(ack)) => {
                debug!(
                    subject,
                    sequence = ack.sequence,
                    duplicate = ack.duplicate,
                    "published"
                );
                return Ok(());
            }
            Ok(Err(err)) => last_error = err.to_string(),
            Err(_) => {
                last_error = format!(
                    "no ack within {}",
                    humantime::format_duration(PUBLISH_TIMEOUT)
                );
            }
        }
        warn!(subject, attempt, error = %last_error, "publish failed");
        if attempt < PUBLISH_ATTEMPTS {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
    Err(PublishError {
        attempts: PUBLISH_ATTEMPTS,
        last_error,
    })
}

/// Copies `message` to `<prefix>.deadletter.<what>` with `reason` and the
/// subject it arrived on, then terminates it; counts it under `kind`. If the dead letter cannot be
/// stored, the message is nak'ed with a delay to be tried again. Returns
/// whether the dead letter was stored.
pub async fn dead_letter(
    js: &jetstream::Context,
    names: &NatsNames,
    what: &str,
    message: &jetstream::Message,
    kind: crate::DeadLetterReason,
    reason: &str,
) -> bool {
    let subject = names.dead_letter_subject(what);
    warn!(%subject, from = %message.subject, reason, "dead-lettering a message");
    let mut headers = HeaderMap::new();
    headers.insert(DEAD_LETTER_REASON_HEADER, header_text(reason));
    headers.insert(
        DEAD_LETTER_SUBJECT_HEADER,
        header_text(message.subject.as_str()),
    );
    // Keep the publisher's id, so a redelivered copy is deduplicated.
    if let Some(id) = message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
    {
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.clone());
    }
    let payload: Bytes = message.payload.clone();
    let stored = publish_with_retry(js, &subject, || {
        PublishMessage::build()
            .payload(payload.clone())
            .headers(headers.clone())
    })
    .await;
    match stored {
        Ok(()) => {
            metrics::counter!(crate::metrics::DEAD_LETTERS, "source" => what.to_owned(),
                              "reason" => kind.as_str())
            .increment(1);
            if let Err(err) = message.ack_with(AckKind::Term).await {
                // Redelivered later and dead-lettered again under the same
                // message id, which the stream deduplicates.
                warn!(error = %err, "dead letter stored but the message could not be terminated");
            }
            true
        }
        Err(err) => {
            error!(error = %err, "cannot store the dead letter; the message will be redelivered");
            if let Err(err) = message
                .ack_with(AckKind::Nak(Some(DEAD_LETTER_RETRY_DELAY)))
                .await
            {
                warn!(error = %err, "nak of an undeliverable message failed");
            }
            false
        }
    }
}

/// Exponential backoff with a cap.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay to wait now; the following one doubles, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<_> = (0..4).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }
}
