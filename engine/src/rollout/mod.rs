//! Rollouts: controlled upgrades of a Promise's live requests to another
//! version (issue 18 item 7; docs/rollouts.md is the operator's guide).
//!
//! Contract:
//!
//! * **A rollout** (`fulfil.rollouts`) names a Promise, the version to
//!   move to (`to_version`, which must exist), `max_concurrent` (1 to
//!   1000) and an optional `selector` (CEL over `params` and `request`,
//!   [`fulfil_core::selector`]). At most one rollout of a Promise is
//!   active (`running` or `paused`): creating another is refused
//!   ([`RolloutError::InProgress`]), decided under the Promise's rollout
//!   lock and backed by a unique index.
//! * **Targets are fixed at creation** (`fulfil.rollout_targets`, one row
//!   each, `pending`): the live requests (status `succeeded` or `failed`,
//!   as `crate::reconcile` defines live) of the Promise whose version is
//!   not `to_version`, that are not pinned and that the selector selects.
//!   A selector that cannot be evaluated for one of them refuses the
//!   rollout ([`RolloutError::SelectorFailed`]): nothing is stored. A
//!   rollout with no targets is `succeeded` at once.
//! * **Pinning** ([`set_pinned`]) keeps a request on its version: a pinned
//!   request is never a target, and one pinned after its rollout was
//!   created is skipped when its turn comes.
//! * **Driving** ([`drive`]) is the engine's: for each `running` rollout,
//!   under the Promise's transaction-scoped advisory lock (an engine that
//!   finds it taken leaves the round to the one holding it) and the
//!   rollout's row lock, it counts the targets `running` and starts pending
//!   ones up to `max_concurrent`, across every engine. A target whose
//!   request has any run in flight (configure, reconcile, upgrade, delete)
//!   is not started now but checked again later, after the other pending
//!   ones: a rollout never interrupts a step. Starting a target creates, in
//!   the same transaction, a run of kind `upgrade` that follows
//!   `to_version` with the request's params and its configure run's
//!   context (the run-building code of reconcile, [`crate::reconcile`]),
//!   and marks the target `running` with that run. A request deleted or
//!   being deleted meanwhile makes its target `skipped`.
//! * **An upgrade run undoes nothing** when it fails (like a reconcile
//!   run). Its end, in the transaction that ends the run
//!   (`crate::run::deleting`): succeeded, the request is `succeeded` with
//!   the run's outputs and moves to `to_version`; otherwise it is `failed`
//!   and keeps its version and outputs. Its target becomes `succeeded` or
//!   `failed` (with the run's error) in the same statement, so progress is
//!   exact; a delete that stops the run at its step boundary makes the
//!   target `skipped`. `requests.reconcile_run_id` names the upgrade run
//!   while it is the request's latest re-run, which is how a delete finds
//!   it in flight.
//! * **The end.** Once no target is `pending` or `running`, the rollout
//!   ends `succeeded`, or `completed_with_failures` if any failed.
//! * **Pause** stops starting targets (upgrade runs in flight finish);
//!   **resume** continues; **cancel** skips every pending target and ends
//!   the rollout `cancelled` (runs in flight finish, their targets still
//!   move). Pausing a paused rollout or resuming a running one changes
//!   nothing; a finished rollout refuses all three
//!   ([`RolloutError::Finished`]).
//! * An operator's retry of a failed upgrade run re-opens it; if it then
//!   succeeds its target becomes `succeeded`, but a rollout that already
//!   ended keeps its final status.
//!
//! Durability: everything is rows in Postgres, so a rollout survives any
//! restart and is driven by whichever engines are up; the advisory lock
//! makes the count and the starts one decision however many there are.

mod driver;
mod view;

use fulfil_core::ids::{RequestId, RolloutId};
use fulfil_core::selector::{Selector, SelectorError};
use fulfil_core::status::{RolloutStatus, UnknownValue};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Engine;
use crate::run::RunError;

pub use driver::drive;
pub(crate) use driver::run_loop;
pub use view::{
    ListError, MAX_FAILURES, RolloutFailure, RolloutFilter, RolloutProgress, RolloutView, get, list,
};

/// History kinds of rollouts, as stored in `history.type`.
pub mod kinds {
    /// The first event of an upgrade run: data `{rollout_id, request_id,
    /// configure_run_id, from_version, to_version}`; its actor is whoever
    /// created the rollout.
    pub const UPGRADE_REQUESTED: &str = "upgrade.requested";
}

/// The most upgrade runs one rollout may have in flight.
pub const MAX_CONCURRENT: i32 = 1000;
/// `max_concurrent` when none is given.
pub const DEFAULT_MAX_CONCURRENT: i32 = 10;

/// First key of the per-Promise rollout lock (`pg_advisory_xact_lock(int,
/// int)`); the second is `hashtext(promise)`.
const LOCK_CLASS: i32 = 0x524F_4C31; // "ROL1"

/// Takes the Promise's rollout lock until the transaction ends, waiting
/// for it.
async fn lock_promise(conn: &mut PgConnection, promise: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(LOCK_CLASS)
        .bind(promise)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes the Promise's rollout lock until the transaction ends if no one
/// holds it; `false` if someone does.
async fn try_lock_promise(conn: &mut PgConnection, promise: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2))")
        .bind(LOCK_CLASS)
        .bind(promise)
        .fetch_one(conn)
        .await
}

/// What a rollout is created from.
#[derive(Debug, Clone)]
pub struct NewRollout {
    pub promise: String,
    pub to_version: String,
    /// 1 to [`MAX_CONCURRENT`].
    pub max_concurrent: i32,
    /// CEL over `params` and `request`; `None` (or blank): every live
    /// request.
    pub selector: Option<String>,
    /// Who creates it (the principal), kept as `created_by` and recorded
    /// as the actor of its upgrade runs.
    pub actor: String,
}

/// Why a rollout operation was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// There is no Promise of that name.
    #[error("no Promise named {0:?}")]
    UnknownPromise(String),
    /// The Promise has no such version.
    #[error("Promise {promise} has no version {version:?}; apply it first")]
    UnknownVersion {
        /// The Promise.
        promise: String,
        /// The version asked for.
        version: String,
    },
    /// `max_concurrent` is out of range.
    #[error("max_concurrent is {0}; it must be from 1 to {MAX_CONCURRENT}")]
    MaxConcurrent(i64),
    /// The selector does not compile or reads another variable.
    #[error(transparent)]
    Selector(#[from] SelectorError),
    /// The selector failed (or was not a boolean) for one live request.
    #[error(
        "selector {selector:?} cannot be evaluated for request {request_id}: {message}; guard optional fields with has(), e.g. has(params.size) && params.size == 'large'"
    )]
    SelectorFailed {
        /// The selector.
        selector: String,
        /// The request it failed for.
        request_id: RequestId,
        /// Why.
        message: String,
    },
    /// Another rollout of the Promise is running or paused.
    #[error("rollout {rollout_id} of Promise {promise} is {status}; finish or cancel it first")]
    InProgress {
        /// The Promise.
        promise: String,
        /// The active rollout.
        rollout_id: RolloutId,
        /// Its status.
        status: RolloutStatus,
    },
    /// There is no such rollout.
    #[error("no rollout {0}")]
    NotFound(RolloutId),
    /// The rollout ended; it cannot be paused, resumed or cancelled.
    #[error("rollout {rollout_id} is {status}; only a running or paused rollout can be {action}")]
    Finished {
        /// The rollout.
        rollout_id: RolloutId,
        /// Its final status.
        status: RolloutStatus,
        /// What was asked: `paused`, `resumed`, `cancelled`.
        action: &'static str,
    },
    /// Stored state this version does not understand, or Postgres failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

impl From<sqlx::Error> for RolloutError {
    fn from(e: sqlx::Error) -> Self {
        Self::Run(RunError::Db(e))
    }
}

impl From<UnknownValue> for RolloutError {
    fn from(e: UnknownValue) -> Self {
        Self::Run(RunError::from(e))
    }
}

/// A live request as the selector sees it.
#[derive(sqlx::FromRow)]
struct Candidate {
    id: Uuid,
    promise_version: String,
    params: Value,
    status: String,
    created_by: Option<String>,
    team: Option<String>,
    outputs: Option<Value>,
}

/// Creates a rollout and fixes its targets (see the module docs); returns
/// it as stored.
pub async fn create(engine: &Engine, new: NewRollout) -> Result<RolloutView, RolloutError> {
    if !(1..=MAX_CONCURRENT).contains(&new.max_concurrent) {
        return Err(RolloutError::MaxConcurrent(i64::from(new.max_concurrent)));
    }
    let selector = new
        .selector
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Selector::compile)
        .transpose()?;
    let mut tx = engine.pool().begin().await?;
    let known: Option<bool> = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM fulfil.promises WHERE name = $1 AND version = $2)
           FROM fulfil.promise_heads WHERE name = $1",
    )
    .bind(&new.promise)
    .bind(&new.to_version)
    .fetch_optional(&mut *tx)
    .await?;
    match known {
        None => return Err(RolloutError::UnknownPromise(new.promise)),
        Some(false) => {
            return Err(RolloutError::UnknownVersion {
                promise: new.promise,
                version: new.to_version,
            });
        }
        Some(true) => {}
    }
    lock_promise(&mut tx, &new.promise).await?;
    let active: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT id, status FROM fulfil.rollouts
          WHERE promise = $1 AND status IN ('running', 'paused')",
    )
    .bind(&new.promise)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((id, status)) = active {
        return Err(RolloutError::InProgress {
            promise: new.promise,
            rollout_id: RolloutId::from(id),
            status: RolloutStatus::parse(&status)?,
        });
    }
    let live: Vec<Candidate> = sqlx::query_as(
        "SELECT id, promise_version, params, status, created_by, team, outputs
           FROM fulfil.requests
          WHERE promise = $1 AND status IN ('succeeded', 'failed') AND NOT pinned
            AND promise_version <> $2
          ORDER BY id",
    )
    .bind(&new.promise)
    .bind(&new.to_version)
    .fetch_all(&mut *tx)
    .await?;
    let mut targets: Vec<Uuid> = Vec::with_capacity(live.len());
    let mut from: Vec<String> = Vec::with_capacity(live.len());
    for candidate in live {
        if let Some(selector) = &selector {
            let request = json!({
                "id": candidate.id,
                "promise": new.promise,
                "promise_version": candidate.promise_version,
                "status": candidate.status,
                "created_by": candidate.created_by,
                "team": candidate.team,
                "outputs": candidate.outputs,
            });
            match selector.matches(&candidate.params, &request) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    return Err(RolloutError::SelectorFailed {
                        selector: selector.source().to_string(),
                        request_id: RequestId::from(candidate.id),
                        message: e.to_string(),
                    });
                }
            }
        }
        targets.push(candidate.id);
        from.push(candidate.promise_version);
    }
    let id = RolloutId::generate();
    let status = if targets.is_empty() {
        RolloutStatus::Succeeded
    } else {
        RolloutStatus::Running
    };
    sqlx::query(
        "INSERT INTO fulfil.rollouts
             (id, promise, to_version, max_concurrent, selector, status, created_by, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $8 THEN now() END)",
    )
    .bind(id.as_uuid())
    .bind(&new.promise)
    .bind(&new.to_version)
    .bind(new.max_concurrent)
    .bind(selector.as_ref().map(Selector::source))
    .bind(status.as_str())
    .bind(&new.actor)
    .bind(targets.is_empty())
    .execute(&mut *tx)
    .await?;
    if !targets.is_empty() {
        sqlx::query(
            "INSERT INTO fulfil.rollout_targets (rollout_id, request_id, from_version, state)
             SELECT $1, u.request_id, u.from_version, 'pending'
               FROM UNNEST($2::uuid[], $3::text[]) AS u(request_id, from_version)",
        )
        .bind(id.as_uuid())
        .bind(&targets)
        .bind(&from)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    tracing::info!(rollout_id = %id, promise = %new.promise, to_version = %new.to_version,
                   targets = targets.len(), "rollout created");
    get(engine.pool(), id)
        .await?
        .ok_or(RolloutError::NotFound(id))
}

/// What an operator asks of an active rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Start no new targets.
    Pause,
    /// Start targets again.
    Resume,
    /// Skip every pending target and end the rollout `cancelled`.
    Cancel,
}

impl Control {
    fn done(self) -> &'static str {
        match self {
            Control::Pause => "paused",
            Control::Resume => "resumed",
            Control::Cancel => "cancelled",
        }
    }
}

/// Pauses, resumes or cancels rollout `id` on behalf of `actor` (see the
/// module docs); returns it as it now stands.
pub async fn control(
    engine: &Engine,
    id: RolloutId,
    what: Control,
    actor: &str,
) -> Result<RolloutView, RolloutError> {
    let mut tx = engine.pool().begin().await?;
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM fulfil.rollouts WHERE id = $1 FOR UPDATE")
            .bind(id.as_uuid())
            .fetch_optional(&mut *tx)
            .await?;
    let status = RolloutStatus::parse(&status.ok_or(RolloutError::NotFound(id))?)?;
    if !status.is_active() {
        return Err(RolloutError::Finished {
            rollout_id: id,
            status,
            action: what.done(),
        });
    }
    let next = match what {
        Control::Pause => RolloutStatus::Paused,
        Control::Resume => RolloutStatus::Running,
        Control::Cancel => RolloutStatus::Cancelled,
    };
    if next != status {
        if what == Control::Cancel {
            sqlx::query(
                "UPDATE fulfil.rollout_targets SET state = 'skipped', error = $2, updated_at = now()
                  WHERE rollout_id = $1 AND state = 'pending'",
            )
            .bind(id.as_uuid())
            .bind(format!("the rollout was cancelled by {actor}"))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE fulfil.rollouts SET status = $2, updated_at = now(),
                    finished_at = CASE WHEN $3 THEN now() END
              WHERE id = $1",
        )
        .bind(id.as_uuid())
        .bind(next.as_str())
        .bind(next == RolloutStatus::Cancelled)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    tracing::info!(rollout_id = %id, actor, status = %next, "rollout {}", what.done());
    get(engine.pool(), id)
        .await?
        .ok_or(RolloutError::NotFound(id))
}

/// Pins request `id` to its version (`pinned`) or unpins it; `false` when
/// there is no such request.
pub async fn set_pinned(engine: &Engine, id: RequestId, pinned: bool) -> Result<bool, sqlx::Error> {
    let changed =
        sqlx::query("UPDATE fulfil.requests SET pinned = $2, updated_at = now() WHERE id = $1")
            .bind(id.as_uuid())
            .bind(pinned)
            .execute(engine.pool())
            .await?
            .rows_affected();
    Ok(changed == 1)
}
