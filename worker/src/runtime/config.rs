//! How a worker process runs: [`WorkerConfig`], its defaults, and the checks
//! [`Worker::run`](super::Worker::run) makes before it starts.
//!
//! A configuration that passes [`WorkerConfig::validate`] serves at least one
//! queue with valid names, runs at least one handler at a time and has an
//! `ack_wait` long enough for progress to keep tasks from being redelivered.
//! The pull sizes derived from it (batch, outstanding acks) are always at
//! least one.

use std::time::Duration;

use fulfil_core::wire::is_valid_queue_name;

use super::WorkerError;

/// Default redelivery delay of an unacked task, set on consumers this worker
/// creates ([`WorkerConfig::ack_wait`]).
pub const ACK_WAIT: Duration = Duration::from_secs(60);
/// Shortest `ack_wait` accepted: progress goes out every `ack_wait / 2`, but
/// at most once a second.
const MIN_ACK_WAIT: Duration = Duration::from_secs(2);

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
    pub(super) fn validate(&self) -> Result<(), WorkerError> {
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
    pub(super) fn pull_batch(&self) -> usize {
        (self.concurrency / 2).clamp(1, 128)
    }

    /// Outstanding unacked tasks the consumer allows, for every worker of
    /// the queue together.
    pub(super) fn max_ack_pending(&self) -> i64 {
        i64::try_from(self.concurrency.saturating_mul(4))
            .unwrap_or(i64::MAX)
            .max(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
