//! Inbound events: CloudEvents received on the bus or over HTTP, matched
//! against the triggers of every Promise, each trigger's outcome kept in the
//! event ledger, and what cannot be used kept as a dead letter.
//!
//! Guarantees (DESIGN.md, durability contract 9): an event is acknowledged
//! on the bus only after its outcome (requests filed, ledger entry, dead
//! letter) is committed; the same event (`source` + `id`) never files a
//! second request through the same trigger, because the request carries the
//! idempotency key `event:<trigger>:<source>:<id>`.

mod model;

pub use model::{DeadLetter, EventReceipt, LedgerEntry, TriggerOutcome, WaitCompleted};
