//! Types shared by the Fulfil engine and workers: the Promise spec and its
//! validation, the DAG planner, template expressions, and the wire messages.
//!
//! A worker depends on this crate for [`wire`] and, with the `nats`
//! feature, the JetStream streams and the pull feed; it never links the
//! engine or a database driver.

pub mod dag;
pub mod expr;
pub mod params;
pub mod promise;
#[cfg(feature = "nats")]
pub mod pull;
#[cfg(feature = "nats")]
pub mod streams;
pub mod validate;
pub mod wire;

pub use dag::{Graph, Plan, RunStatus, StepStatus};
pub use promise::{Promise, RetryPolicy, Step};
pub use validate::{SpecError, SpecErrors};
