//! Fulfil's worker runtime and the [`Handler`] trait custom workers implement.
//!
//! A worker pulls [`TaskMessage`](fulfil_core::wire::TaskMessage)s from the
//! JetStream tasks stream, runs the handler each names, and publishes a
//! [`ResultMessage`](fulfil_core::wire::ResultMessage) for the engine. The
//! contract, in short (details in [`runtime`] and `docs/wire.md`):
//!
//! * delivery is **at least once**: a task may run more than once, so
//!   handlers use [`TaskContext::idempotency_key`] to make side effects
//!   idempotent;
//! * a task is acked only **after its result has been stored** by the
//!   results stream; a crash in between means redelivery, never a lost
//!   result;
//! * errors carry the retry decision ([`StepError`]); the engine owns the
//!   retry policy and applies each task's first result only.
//!
//! ```no_run
//! # async fn start(nats: async_nats::Client) -> Result<(), fulfil_worker::WorkerError> {
//! use fulfil_worker::{Handlers, Worker, WorkerConfig};
//!
//! let names = fulfil_bus::NatsNames::new("fulfil").expect("valid prefix");
//! let handlers = Handlers::with_builtins(nats.clone());
//! let js = async_nats::jetstream::new(nats);
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! Worker::new(js, names, handlers, WorkerConfig::default())
//!     .run(shutdown)
//!     .await
//! # }
//! ```

pub mod builtin;
pub mod handler;
pub mod runtime;
pub mod secrets;
#[cfg(test)]
mod test_support;

/// The streams every process creates at start; re-exported so a custom worker
/// needs no direct dependency on `fulfil-core`'s `nats` feature.
pub use fulfil_bus::streams::{StreamError, ensure_streams};
pub use fulfil_core::ids::{RunId, StepId, TaskId};
pub use handler::{Handler, Handlers, RetryDecision, StepError, TaskContext, parse_input};
pub use runtime::{Worker, WorkerConfig, WorkerError, default_worker_id};
pub use secrets::{
    DirSecrets, EnvSecrets, Redactor, SecretSource, SecretSourceError, SecretSources, SecretValue,
    StaticSecrets,
};
