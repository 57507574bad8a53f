//! The JetStream streams of one installation, created idempotently by every
//! process that publishes or consumes, so start-up order does not matter.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::names::NatsNames;

/// A stream could not be created or looked up.
#[derive(Debug, thiserror::Error)]
#[error("cannot create JetStream stream {stream}: {message}")]
pub struct StreamError {
    pub stream: String,
    pub message: String,
}

/// Configurations of the tasks, results, events and dead-letter streams.
pub fn stream_configs(names: &NatsNames) -> Vec<stream::Config> {
    vec![
        stream::Config {
            name: names.tasks_stream(),
            subjects: vec![names.all_tasks_subject()],
            retention: stream::RetentionPolicy::WorkQueue,
            // Window in which a republished task (same Nats-Msg-Id) is dropped.
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        },
        stream::Config {
            name: names.results_stream(),
            subjects: vec![names.results_subject(), names.progress_subject()],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        },
        stream::Config {
            name: names.events_stream(),
            subjects: vec![names.all_events_subject()],
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(24 * 3600),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        },
        stream::Config {
            name: names.dead_letter_stream(),
            subjects: vec![names.all_dead_letter_subject()],
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..Default::default()
        },
    ]
}

/// Creates every stream that does not exist yet.
pub async fn ensure_streams(js: &jetstream::Context, names: &NatsNames) -> Result<(), StreamError> {
    for config in stream_configs(names) {
        let name = config.name.clone();
        js.get_or_create_stream(config)
            .await
            .map_err(|e| StreamError {
                stream: name,
                message: e.to_string(),
            })?;
    }
    Ok(())
}

/// Deletes every stream of the installation (tests and `bench` clean up with it).
pub async fn delete_streams(js: &jetstream::Context, names: &NatsNames) {
    for config in stream_configs(names) {
        let _ = js.delete_stream(&config.name).await;
    }
    // Created on demand, when a Promise with triggers is applied.
    let _ = js.delete_stream(names.inbound_stream()).await;
}
