//! The core of Fulfil, pure and without I/O: the Promise language (spec,
//! validation, expressions), the DAG planner, the status vocabulary and the
//! wire messages exchanged with workers.
//!
//! A worker depends on this crate for [`wire`] and on `fulfil-bus` for the
//! JetStream plumbing; it never links the engine or a database driver.

pub mod access;
pub mod child;
pub mod compiled;
pub mod dag;
pub mod document;
pub mod expr;
pub mod for_each;
pub mod ids;
pub mod params;
pub mod pointer;
pub mod policy;
pub mod promise;
pub mod schedule;
pub mod selector;
pub mod status;
pub mod time;
pub mod trigger;
pub mod validate;
pub mod vars;
pub mod wait;
pub mod wire;

pub use dag::{Graph, Plan, RunStatus, StepStatus};
pub use promise::{Promise, RetryPolicy, Step};
pub use validate::{SpecError, SpecErrors, ValidationContext, VarNames};
pub use vars::Vars;
