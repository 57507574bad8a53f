//! What the engine and every worker share about NATS JetStream: the names of
//! an installation's subjects, streams and consumers ([`names`]), the streams
//! themselves ([`streams`]), the pull feed that consumes them ([`pull`]), and
//! publishing with retry and dead letters ([`publish`]).
//!
//! The messages themselves are in `fulfil_core::wire`; this crate is the
//! plumbing they travel through.

pub mod metrics;
pub mod names;
pub mod publish;
pub mod pull;
pub mod streams;
pub mod trace;

pub use metrics::DeadLetterReason;
pub use names::{DEAD_LETTER_REASON_HEADER, InvalidPrefix, NatsNames, header_text};
pub use publish::{
    Backoff, DEAD_LETTER_SUBJECT_HEADER, MAX_MESSAGE_BYTES, PublishError, dead_letter,
    publish_with_retry,
};
pub use pull::{PULL_EXPIRES, PULL_HEARTBEAT, PullFeed};
pub use streams::{StreamError, ensure_streams};
