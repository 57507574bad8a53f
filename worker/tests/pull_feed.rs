//! `PullFeed` against a real NATS server (`NATS_URL`, default
//! `nats://127.0.0.1:4222`), each test on streams of its own.

use std::{collections::HashSet, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull};
use fulfil_bus::NatsNames;
use fulfil_bus::pull::PullFeed;

/// Bound on every wait; the waits below end in milliseconds when all is well.
const WAIT: Duration = Duration::from_secs(30);

struct Fixture {
    js: jetstream::Context,
    names: NatsNames,
    consumer: PullConsumer,
}

impl Fixture {
    async fn new() -> anyhow::Result<Self> {
        let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let client = tokio::time::timeout(WAIT, async_nats::connect(&url))
            .await
            .context("connecting to NATS timed out")?
            .with_context(|| format!("cannot connect to NATS at {url}"))?;
        let js = jetstream::new(client);
        let names = NatsNames::new(format!("pf_{}", uuid::Uuid::now_v7().simple()))?;
        fulfil_bus::streams::ensure_streams(&js, &names).await?;
        let consumer = js
            .get_stream(names.tasks_stream())
            .await?
            .create_consumer(pull::Config {
                durable_name: Some("feed".into()),
                filter_subject: names.task_subject("default"),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await?;
        Ok(Self {
            js,
            names,
            consumer,
        })
    }

    async fn publish(&self, payload: String) -> anyhow::Result<()> {
        self.js
            .publish(self.names.task_subject("default"), payload.into())
            .await?
            .await?;
        Ok(())
    }

    async fn feed(
        &self,
        batch: usize,
        expires: Duration,
        heartbeat: Duration,
    ) -> anyhow::Result<PullFeed> {
        Ok(PullFeed::open(&self.js, self.consumer.clone(), batch, expires, heartbeat).await?)
    }
}

/// Runs `test` on streams of its own, deleted afterwards whatever the outcome.
async fn with_fixture(
    test: impl AsyncFnOnce(&Fixture) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let fixture = Fixture::new().await?;
    let outcome = test(&fixture).await;
    fulfil_bus::streams::delete_streams(&fixture.js, &fixture.names).await;
    outcome
}

#[tokio::test]
async fn a_feed_drains_a_backlog_two_at_a_time_and_then_owes_one_request() -> anyhow::Result<()> {
    with_fixture(async |fixture| {
        const BACKLOG: usize = 300;
        for i in 0..BACKLOG {
            fixture.publish(format!("task {i}")).await?;
        }
        let mut feed = fixture
            .feed(2, Duration::from_secs(30), Duration::from_secs(5))
            .await?;
        let mut seen = HashSet::new();
        tokio::time::timeout(WAIT, async {
            while seen.len() < BACKLOG {
                let message = feed.next().await?;
                message.ack().await.map_err(anyhow::Error::from_boxed)?;
                seen.insert(String::from_utf8(message.payload.to_vec())?);
            }
            anyhow::Ok(())
        })
        .await
        .with_context(|| format!("only {} of {BACKLOG} messages arrived", seen.len()))??;
        assert_eq!(seen.len(), BACKLOG, "every message once");
        // Nothing left, and exactly what the last request still waits for is
        // owed: never more, or the feed would wait for messages that never come.
        let idle = tokio::time::timeout(Duration::from_millis(300), feed.next()).await;
        assert!(idle.is_err(), "no message beyond the backlog");
        assert!(feed.owed() <= 2, "owed {} with batch 2", feed.owed());
        assert!(feed.owed() >= 1, "a request stays outstanding while idle");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn expired_requests_are_replaced_so_a_late_message_still_arrives() -> anyhow::Result<()> {
    with_fixture(async |fixture| {
        // No heartbeats: only the expiries' 408s can tell the feed that its
        // requests are gone. If it did not count them, it would think four
        // messages still owed and never ask again.
        let mut feed = fixture
            .feed(4, Duration::from_secs(1), Duration::ZERO)
            .await?;
        let waited = tokio::time::timeout(Duration::from_millis(2500), feed.next()).await;
        assert!(waited.is_err(), "nothing was published yet");
        fixture.publish("late".into()).await?;
        let message = tokio::time::timeout(Duration::from_secs(5), feed.next())
            .await
            .context("a message published after two expiries never arrived")??;
        assert_eq!(&message.payload[..], b"late");
        message.ack().await.map_err(anyhow::Error::from_boxed)?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_deleted_consumer_stops_the_feed_with_a_clear_error() -> anyhow::Result<()> {
    with_fixture(async |fixture| {
        let mut feed = fixture
            .feed(2, Duration::from_secs(30), Duration::from_secs(5))
            .await?;
        let pending = tokio::spawn(async move { feed.next().await.map(|_| ()) });
        // Let the first request reach the server before the consumer goes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        fixture
            .js
            .get_stream(fixture.names.tasks_stream())
            .await?
            .delete_consumer("feed")
            .await?;
        let ended = tokio::time::timeout(WAIT, pending)
            .await
            .context("the feed did not notice its consumer was deleted")??;
        let error = ended.err().context("the feed returned a message")?;
        assert!(
            error.to_string().contains("deleted"),
            "unexpected error: {error}"
        );
        Ok(())
    })
    .await
}
