//! Schedules: Promises filed on a clock, and the tick ledger that says
//! what became of every tick.
//!
//! A Schedule ([`fulfil_core::schedule`]) is stored in `fulfil.schedules`
//! with its next tick not yet decided (`next_fire_at`). Every engine runs
//! the ticker ([`run_ticker`]); it claims due schedules in batches with
//! `FOR UPDATE SKIP LOCKED` and, in **one transaction per batch**, writes a
//! ledger row for every tick it decides (`fulfil.schedule_ticks`, primary
//! key `(schedule, nominal_at)`), files the requests of the ticks that fire
//! and advances `next_fire_at`. So:
//!
//! * **at most one request per tick**, whatever the number of engines and
//!   restarts: the row lock hands a schedule to one engine at a time, a
//!   tick is decided only in the transaction that moves `next_fire_at`
//!   past it, and the request's idempotency key
//!   `schedule:<name>:<nominal RFC 3339 UTC>` would meet the earlier
//!   request if anything ever decided a tick twice;
//! * **no tick passes without a ledger row**: `next_fire_at` moves only
//!   with the rows of the ticks it passes (`filed`, `skipped_overlap`,
//!   `buffered`, `missed`, `paused`, `failed`, `denied`, each with a `reason` unless
//!   filed). A crash before the commit leaves the ticks due, to be decided
//!   by whichever engine claims them next.
//!
//! Decisions, per tick in nominal order:
//!
//! * a tick found more than `max(catch_up, grace)` after its nominal time
//!   is `missed` (engines were down); at most [`MAX_PASSED_ROWS`] such rows
//!   are written per recovery, then one row whose reason counts the rest;
//! * a paused schedule's ticks are `paused` (bounded the same way);
//! * otherwise the overlap policy decides while the request of the last
//!   filed tick is `accepted` or `running`: `skip` records
//!   `skipped_overlap`, `allow` files, `buffer_one` buffers one tick
//!   (`buffered`, filed when that request ends) and skips the rest;
//! * a tick that cannot file (no such Promise, params breaking its schema)
//!   is `failed` with the reason, and the schedule moves on;
//! * a tick whose request an admission policy refuses
//!   ([`crate::policies`]) is `denied`, the policies and their messages as
//!   its reason, and the schedule moves on.
//!
//! `fired_at` is the deciding transaction's `clock_timestamp()`. Pausing,
//! resuming and applying a changed `cron` or `timezone` ([`pause`],
//! [`resume`], [`put`]) take the same row lock; resuming and retiming
//! recompute `next_fire_at` from now, recording the ticks passed meanwhile.

mod store;
mod ticker;

pub use store::{
    Applied, PutOutcome, ScheduleRow, TickFilter, TickRow, delete, get, list, pause, put, resume,
    ticks,
};
pub use ticker::{MAX_PASSED_ROWS, idempotency_key, run_ticker, tick};

use crate::promises::PromiseError;
use crate::run::RunError;

/// Why a schedule operation failed; nothing of it was committed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// Postgres failed; [`crate::db::is_transient`] says whether to retry.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Filing the ticks' requests failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A Promise could not be read.
    #[error(transparent)]
    Promise(#[from] PromiseError),
    /// A Promise kept getting new versions while ticks were filed; retry.
    #[error("Promise {0:?} kept changing while schedule ticks were filed; retry")]
    HeadKeptMoving(String),
    /// A stored schedule or tick the code cannot read back (a value its
    /// vocabulary does not know), or a document that would not serialize.
    #[error("corrupt schedule: {0}")]
    Corrupt(String),
    /// The list cursor was not produced by this API.
    #[error("invalid cursor {0:?}: pass next_cursor from the previous page")]
    InvalidCursor(String),
}

impl ScheduleError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Db(e) | Self::Run(RunError::Db(e)) | Self::Promise(PromiseError::Db(e)) => {
                crate::db::is_transient(e)
            }
            Self::HeadKeptMoving(_) => true,
            _ => false,
        }
    }
}
