//! The metrics the bus plumbing records (names beside the engine's, in
//! `fulfil_engine::metrics`).

/// Messages moved to the dead-letter stream, by `source` (the dead-letter
/// subject's last token: `tasks`, `results`, `inbound`) and `reason`.
pub const DEAD_LETTERS: &str = "fulfil_dead_letters_total";

/// Why a message was dead-lettered: a closed set, so the metric's labels
/// stay bounded (the full reason travels in the dead letter's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The payload is not the message it should be.
    Unparseable,
    /// It names a task no attempt has.
    UnknownTask,
    /// It parsed but can never be applied.
    Unappliable,
    /// It failed for a transient reason on every delivery allowed.
    TooManyDeliveries,
}

impl DeadLetterReason {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unparseable => "unparseable",
            Self::UnknownTask => "unknown_task",
            Self::Unappliable => "unappliable",
            Self::TooManyDeliveries => "too_many_deliveries",
        }
    }
}
