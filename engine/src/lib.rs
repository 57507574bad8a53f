//! The Fulfil engine: turns Promise requests into durable DAG runs.
//!
//! Postgres is the system of record; NATS JetStream carries tasks, results and
//! events. The guarantees this crate keeps (see `docs/architecture.md`):
//!
//! * a request is acknowledged only after its request, run, steps, first
//!   history events and first tasks committed in one transaction
//!   ([`requests::create_request`]);
//! * tasks reach NATS through the transactional [`outbox`], published with
//!   `Nats-Msg-Id` = task id, so a republish after a crash is deduplicated;
//! * status events leave through their own outbox, one publisher at a time,
//!   in each run's history order ([`status_events`]);
//! * a result is applied at most once, keyed by task id, under the run's row
//!   lock ([`run::apply_result`]);
//! * any number of engine processes may run against one database.

pub mod children;
pub mod db;
pub mod deletion;
pub mod engine;
pub mod events;
pub mod inspect;
mod intake;
pub mod metrics;
pub mod outbox;
pub mod ownership;
pub mod policies;
pub mod promises;
pub mod reconcile;
pub mod requests;
pub mod results;
pub mod retention;
pub mod roles;
pub mod rollout;
pub mod run;
pub mod schedules;
pub mod status_events;
pub mod timers;
pub mod tokens;
pub mod waits;

pub use engine::{Engine, EngineConfig};
