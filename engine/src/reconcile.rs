//! Reconcile: re-running the configure workflow of live requests.
//!
//! A Promise with `spec.reconcile: {every, max_concurrent}` re-runs the
//! configure workflow of each of its live requests once per `every`, as a
//! run of kind `reconcile`; `POST /v1/requests/{id}/reconcile`
//! ([`reconcile_now`]) does it for one request now, for any Promise.
//!
//! Contract:
//!
//! * **Live** means request status `succeeded` or `failed`: its configure
//!   run ended. `accepted`/`running` have a run in flight;
//!   `deleting`/`deleted`/`delete_failed` are being or have been torn down
//!   and are never reconciled.
//! * **Policy and workflow.** Whether and how often a Promise reconciles is
//!   its head version's `spec.reconcile` (applying a version with or without
//!   it turns reconcile on or off for every request of the Promise), but a
//!   reconcile run follows the request's own Promise version, with its
//!   configure run's context (params, captured vars) and the request's
//!   outputs as `request.outputs`: a request is never moved to another
//!   version behind its owner's back.
//! * **Spread.** Each request has a stable phase in `[0, every)` derived from
//!   the bits of its id (a fixed mixing function, the same in every
//!   process); it is due at the instants `t` with
//!   `(t - epoch) mod every == phase`. Requests created together therefore
//!   reconcile spread evenly over the interval, and a changed `every` only
//!   re-phases them.
//! * **Never two runs of a request at once.** A request with any run in
//!   flight is not reconciled: its reconcile stays due and is checked again
//!   a second later, so it starts once that run has ended. A reconcile
//!   never interrupts a step.
//! * **`max_concurrent`** bounds the Promise's reconcile runs in flight
//!   across every engine: they are counted, and the new ones started, under
//!   a per-Promise transaction-scoped advisory lock, so two engines cannot
//!   both start the one over the limit. A run asked for by hand counts
//!   towards the limit but is not held back by it.
//! * **A reconcile run undoes nothing.** When a step fails for good the run
//!   ends `failed`, naming the step; nothing is compensated (undoing a live
//!   database because drift correction failed would be a disaster).
//! * **The request after a reconcile run**: succeeded, the request is
//!   `succeeded` with the run's outputs; otherwise `failed` (the run holds
//!   the error) with the outputs it had. While the run is in flight the
//!   request's status does not move. `requests.reconcile_run_id` is its
//!   latest reconcile run, or its latest upgrade run (`crate::rollout`),
//!   whichever started last: the re-run of its configure workflow a
//!   delete must stop.
//! * **Delete** during a reconcile run stops that run at its step boundary,
//!   as for a configure run, then starts the delete run
//!   (`crate::deletion`); the request leaves the queue.
//!
//! Durability: the queue is `fulfil.reconcile_due`, one row per enrolled
//! request, claimed with `FOR UPDATE SKIP LOCKED`; a reconcile run is
//! created in the transaction that moves its row to the next phase
//! instant, so a reconcile is started at most once per due instant however
//! many engines run, and a queued one survives any restart. Requests are
//! enrolled by a sweep every few seconds (live requests of Promises whose
//! head reconciles, not yet in the queue); a row whose request is no
//! longer live, or whose Promise stopped reconciling, is removed when it
//! comes due.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fulfil_core::Promise;
use fulfil_core::ids::{RequestId, RunId};
use fulfil_core::promise::ReconcilePolicy;
use fulfil_core::status::{RequestStatus, RunKind, TimerKind, UnknownValue};
use serde_json::{Value, json};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

use crate::Engine;
use crate::promises::PromiseError;
use crate::run::deleting::delete_context;
use crate::run::{NewRun, Run, RunError, advance, event, flush};

/// History kinds of reconcile, as stored in `history.type`.
pub mod kinds {
    /// The first event of a reconcile run: data `{request_id,
    /// configure_run_id, manual, requested_by, requested_at}`; its actor is
    /// whoever asked (the `Fulfil-Actor` of a manual reconcile, the engine
    /// for one on the clock).
    pub const RECONCILE_REQUESTED: &str = "reconcile.requested";
}

/// How often the loop looks for due reconciles.
const POLL: Duration = Duration::from_secs(1);
/// How often the loop enrols requests that became live.
const ENROL_EVERY: Duration = Duration::from_secs(5);
/// How long a due reconcile that cannot start yet waits to be checked again.
const RECHECK: Duration = Duration::from_secs(1);
/// Most due rows one transaction claims.
const CLAIM_BATCH: i64 = 64;
/// Most requests one sweep enrols (or re-phases) per Promise.
const ENROL_BATCH: i64 = 1000;
/// First key of the per-Promise advisory lock (`pg_advisory_xact_lock(int,
/// int)`); the second is `hashtext(promise)`.
const LOCK_CLASS: i32 = 0x5245_4331; // "REC1"

/// The statuses of a run in flight, as stored.
pub(crate) const IN_FLIGHT: [&str; 3] = ["pending", "running", "compensating"];

/// The request's phase within `every`: the bits of its id, mixed by a fixed
/// function so ids minted in the same millisecond (UUID v7: timestamp and
/// counter in the high bits) still spread over the whole interval.
pub fn phase_of(request_id: RequestId, every: Duration) -> Duration {
    let bits = request_id.as_uuid().as_u128();
    let folded = (bits >> 64) as u64 ^ bits as u64;
    let every_ms = every_ms(every);
    Duration::from_millis(mix(folded) % every_ms)
}

/// The first instant strictly after `after` at which the request is due.
pub fn next_due(request_id: RequestId, every: Duration, after: DateTime<Utc>) -> DateTime<Utc> {
    let every_ms = i64::try_from(every_ms(every)).unwrap_or(i64::MAX);
    let phase = i64::try_from(phase_of(request_id, every).as_millis()).unwrap_or(0);
    let now = after.timestamp_millis();
    // Instants phase + k * every; the first one after `now`.
    let since = now.saturating_sub(phase).rem_euclid(every_ms);
    let due = now.saturating_sub(since).saturating_add(every_ms);
    DateTime::from_timestamp_millis(due).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn every_ms(every: Duration) -> u64 {
    u64::try_from(every.as_millis())
        .unwrap_or(u64::MAX)
        .max(1000)
}

/// splitmix64's finaliser: a fixed bijection, the same in every process.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What [`reconcile_now`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileNow {
    /// Nothing of the request was in flight: the reconcile run started.
    Started(RunId),
    /// Another run of the request is in flight: the reconcile is queued
    /// (durably) and starts once no run of the request is in flight.
    Queued {
        /// The run in flight now.
        waiting_for: RunId,
    },
}

/// Why [`reconcile_now`] refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// There is no such request.
    #[error("no request {0}")]
    NotFound(RequestId),
    /// The request is being deleted or is deleted: it has nothing to
    /// reconcile.
    #[error("request {request_id} is {status}; only a succeeded or failed request is reconciled")]
    NotLive {
        /// The request.
        request_id: RequestId,
        /// Its status.
        status: RequestStatus,
    },
    /// Stored state this version does not understand, or Postgres failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

impl From<sqlx::Error> for ReconcileError {
    fn from(e: sqlx::Error) -> Self {
        Self::Run(RunError::Db(e))
    }
}

impl From<UnknownValue> for ReconcileError {
    fn from(e: UnknownValue) -> Self {
        Self::Run(RunError::from(e))
    }
}

impl From<PromiseError> for ReconcileError {
    fn from(e: PromiseError) -> Self {
        Self::Run(RunError::from(e))
    }
}

/// A request as a reconcile (or a rollout, `crate::rollout`) reads it,
/// under its row lock.
#[derive(sqlx::FromRow)]
pub(crate) struct RequestRow {
    #[sqlx(try_from = "Uuid")]
    pub(crate) id: RequestId,
    pub(crate) promise: String,
    pub(crate) promise_version: String,
    pub(crate) status: String,
    #[sqlx(try_from = "crate::db::NullableUuid")]
    pub(crate) run_id: Option<RunId>,
    pub(crate) outputs: Option<Value>,
    /// Pinned to its version: no rollout upgrades it.
    pub(crate) pinned: bool,
}

/// Reads [`RequestRow`]s by id (`$1`); the caller appends its lock clause.
pub(crate) const LOCK_REQUESTS: &str =
    "SELECT id, promise, promise_version, status, run_id, outputs, pinned
     FROM fulfil.requests WHERE id = ANY($1)";

/// Who asked for a reconcile run, recorded in its history.
struct Asked {
    actor: String,
    manual: bool,
    requested_at: Option<DateTime<Utc>>,
}

/// Starts a reconcile of `request_id` now on behalf of `actor`, or queues
/// it behind the run of the request in flight; see the module docs.
pub async fn reconcile_now(
    engine: &Engine,
    request_id: RequestId,
    actor: &str,
) -> Result<ReconcileNow, ReconcileError> {
    let mut tx = engine.pool().begin().await?;
    let request: Option<RequestRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{LOCK_REQUESTS} FOR UPDATE")))
            .bind(vec![request_id.as_uuid()])
            .fetch_optional(&mut *tx)
            .await?;
    let Some(request) = request else {
        return Err(ReconcileError::NotFound(request_id));
    };
    let status = RequestStatus::parse(&request.status)?;
    if !is_live(status) && !matches!(status, RequestStatus::Accepted | RequestStatus::Running) {
        return Err(ReconcileError::NotLive { request_id, status });
    }
    let in_flight = in_flight_runs(&mut tx, &[request_id]).await?;
    let waiting_for = in_flight
        .get(&request_id)
        .copied()
        .or_else(|| (!is_live(status)).then_some(request.run_id).flatten());
    if let Some(waiting_for) = waiting_for {
        // Queued: the loop starts it once the request has nothing in
        // flight, whichever engine is up then.
        sqlx::query(
            "INSERT INTO fulfil.reconcile_due
                 (request_id, promise, due_at, manual, requested_by, requested_at, waiting_for)
             VALUES ($1, $2, now(), true, $3, now(), $4)
             ON CONFLICT (request_id) DO UPDATE
                SET due_at = now(), manual = true, requested_by = EXCLUDED.requested_by,
                    requested_at = EXCLUDED.requested_at, waiting_for = EXCLUDED.waiting_for",
        )
        .bind(request_id.as_uuid())
        .bind(&request.promise)
        .bind(actor)
        .bind(waiting_for.as_uuid())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(ReconcileNow::Queued { waiting_for });
    }

    let promise = engine
        .promises()
        .load(engine.pool(), &request.promise, &request.promise_version)
        .await?;
    let contexts = configure_contexts(&mut tx, std::iter::once(&request)).await?;
    let asked = Asked {
        actor: actor.to_string(),
        manual: true,
        requested_at: Some(Utc::now()),
    };
    let mut run = start_run(engine, &request, promise, &contexts, asked)?;
    let run_id = run.run_id();
    // A row on the clock moves to its next phase instant (this run is the
    // one it would have started); a one-off row is done.
    let row: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT every_ms FROM fulfil.reconcile_due WHERE request_id = $1 FOR UPDATE",
    )
    .bind(request_id.as_uuid())
    .fetch_optional(&mut *tx)
    .await?;
    let mut changes = QueueChanges::default();
    match row {
        Some(Some(every)) => {
            let every = Duration::from_millis(u64::try_from(every).unwrap_or(1000));
            changes.reschedule(request_id, next_due(request_id, every, Utc::now()), every);
        }
        Some(None) => changes.remove(request_id),
        None => {}
    }
    changes.started(request_id, run_id);
    changes.store(&mut tx).await?;
    let rows = flush(&mut tx, std::slice::from_mut(&mut run)).await?;
    tx.commit().await?;
    engine.after_commit(rows);
    Ok(ReconcileNow::Started(run_id))
}

/// Removes the request from the queue: it is being deleted.
pub(crate) async fn forget(conn: &mut PgConnection, request_id: RequestId) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM fulfil.reconcile_due WHERE request_id = $1")
        .bind(request_id.as_uuid())
        .execute(conn)
        .await?;
    Ok(())
}

/// The run a delete must stop or follow: the request's latest reconcile run
/// while it is in flight, else its configure run. Read without a lock; the
/// caller locks the run, then the request, and checks that
/// `requests.reconcile_run_id` did not move meanwhile.
pub(crate) async fn current_run(
    conn: &mut PgConnection,
    configure: RunId,
    reconcile: Option<RunId>,
) -> sqlx::Result<RunId> {
    let Some(reconcile) = reconcile else {
        return Ok(configure);
    };
    let in_flight: Option<bool> =
        sqlx::query_scalar("SELECT status = ANY($2) FROM fulfil.runs WHERE id = $1")
            .bind(reconcile.as_uuid())
            .bind(&IN_FLIGHT[..])
            .fetch_optional(conn)
            .await?;
    Ok(if in_flight == Some(true) {
        reconcile
    } else {
        configure
    })
}

/// Whether a request in `status` is live: its configure run ended and it
/// is not being deleted.
pub(crate) fn is_live(status: RequestStatus) -> bool {
    matches!(status, RequestStatus::Succeeded | RequestStatus::Failed)
}

/// The run in flight of each of `requests` that has one.
pub(crate) async fn in_flight_runs(
    conn: &mut PgConnection,
    requests: &[RequestId],
) -> sqlx::Result<HashMap<RequestId, RunId>> {
    let ids: Vec<Uuid> = requests.iter().map(RequestId::as_uuid).collect();
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT request_id, id FROM fulfil.runs
         WHERE request_id = ANY($1) AND status = ANY($2)",
    )
    .bind(&ids)
    .bind(&IN_FLIGHT[..])
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(request, run)| (RequestId::from(request), RunId::from(run)))
        .collect())
}

/// The context of each request's configure run, by configure run id.
pub(crate) async fn configure_contexts<'a>(
    conn: &mut PgConnection,
    requests: impl Iterator<Item = &'a RequestRow>,
) -> sqlx::Result<HashMap<RunId, Value>> {
    let ids: Vec<Uuid> = requests
        .filter_map(|r| r.run_id.as_ref().map(RunId::as_uuid))
        .collect();
    let rows: Vec<(Uuid, Value)> =
        sqlx::query_as("SELECT id, context FROM fulfil.runs WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, context)| (RunId::from(id), context))
        .collect())
}

/// The reconcile run of `request`, started in memory: its first events,
/// its run timeout, its root tasks. The caller flushes it.
fn start_run(
    engine: &Engine,
    request: &RequestRow,
    promise: Arc<Promise>,
    contexts: &HashMap<RunId, Value>,
    asked: Asked,
) -> Result<Run, RunError> {
    let configure = request.run_id;
    start_rerun(
        engine,
        request,
        contexts,
        Rerun {
            kind: RunKind::Reconcile,
            promise,
            actor: asked.actor.clone(),
            requested: kinds::RECONCILE_REQUESTED,
            data: json!({ "request_id": request.id, "configure_run_id": configure,
                          "manual": asked.manual, "requested_by": asked.actor,
                          "requested_at": asked.requested_at }),
        },
    )
}

/// A re-run of a live request's configure workflow: what it is, the
/// Promise version it follows, and its first history event.
pub(crate) struct Rerun {
    /// `reconcile` or `upgrade`.
    pub(crate) kind: RunKind,
    /// The version it follows: the request's own for a reconcile, the
    /// rollout's for an upgrade.
    pub(crate) promise: Arc<Promise>,
    /// Who asked, recorded in history.
    pub(crate) actor: String,
    /// The kind of its first history event, and that event's data.
    pub(crate) requested: &'static str,
    pub(crate) data: Value,
}

/// The re-run of `request`'s configure workflow, started in memory with
/// its configure run's context (params, captured vars) and the request's
/// outputs as `request.outputs`: its first events, its run timeout, its
/// root tasks. The caller flushes it.
pub(crate) fn start_rerun(
    engine: &Engine,
    request: &RequestRow,
    contexts: &HashMap<RunId, Value>,
    rerun: Rerun,
) -> Result<Run, RunError> {
    let configure = request
        .run_id
        .ok_or_else(|| RunError::Corrupt(format!("request {} has no run", request.id)))?;
    let configure_context = contexts.get(&configure).ok_or_else(|| {
        RunError::Corrupt(format!(
            "run {configure} of request {} is missing",
            request.id
        ))
    })?;
    // The configure run's inputs, and the request's live outputs as
    // `request.outputs` (as a teardown sees them).
    let context = delete_context(configure_context, request.outputs.as_ref());
    let promise = rerun.promise;
    let mut run = Run::new(NewRun {
        kind: rerun.kind,
        run_id: RunId::generate(),
        request_id: request.id,
        context,
        promise: promise.clone(),
        names: engine.names().clone(),
        actor: rerun.actor,
        fast_publish: engine.has_fast_publisher(),
    });
    run.record(rerun.requested, None, None, rerun.data);
    run.record(
        event::RUN_STARTED,
        None,
        None,
        json!({ "kind": run.kind() }),
    );
    if let Some(limit) = promise.run_timeout() {
        let fire_at = fulfil_core::time::deadline_after(Utc::now(), limit);
        run.add_timer(TimerKind::RunTimeout, "", None, fire_at);
    }
    advance(&mut run)?;
    Ok(run)
}

/// Changes to the queue and to `requests.reconcile_run_id` decided in one
/// transaction, stored in a fixed number of statements.
#[derive(Default)]
struct QueueChanges {
    /// Rows that stay, column by column: request, its next due instant,
    /// the interval its phase is for (NULL: a one-off row), the run it
    /// waits for.
    keep: Vec<Uuid>,
    keep_due: Vec<DateTime<Utc>>,
    keep_every: Vec<Option<i64>>,
    keep_waiting: Vec<Option<Uuid>>,
    /// Rows put back on the clock (a manual reconcile done).
    back_on_clock: Vec<Uuid>,
    remove: Vec<Uuid>,
    /// (request, its new reconcile run).
    started: Vec<(Uuid, Uuid)>,
}

impl QueueChanges {
    fn reschedule(&mut self, request: RequestId, due_at: DateTime<Utc>, every: Duration) {
        let every = i64::try_from(every_ms(every)).unwrap_or(i64::MAX);
        self.back_on_clock.push(request.as_uuid());
        self.keep_row(request, due_at, Some(every), None);
    }

    fn keep_row(
        &mut self,
        request: RequestId,
        due_at: DateTime<Utc>,
        every_ms: Option<i64>,
        waiting_for: Option<RunId>,
    ) {
        self.keep.push(request.as_uuid());
        self.keep_due.push(due_at);
        self.keep_every.push(every_ms);
        self.keep_waiting.push(waiting_for.map(|r| r.as_uuid()));
    }

    /// Checked again shortly, as it is (manual or on the clock).
    fn recheck(&mut self, row: &DueRow, waiting_for: Option<RunId>) {
        self.keep_row(
            row.request_id,
            Utc::now() + RECHECK,
            row.every_ms,
            waiting_for,
        );
    }

    fn remove(&mut self, request: RequestId) {
        self.remove.push(request.as_uuid());
    }

    fn started(&mut self, request: RequestId, run: RunId) {
        self.started.push((request.as_uuid(), run.as_uuid()));
    }

    async fn store(self, conn: &mut PgConnection) -> sqlx::Result<()> {
        if !self.keep.is_empty() {
            sqlx::query(
                "UPDATE fulfil.reconcile_due d
                    SET due_at = u.due_at, every_ms = u.every_ms, waiting_for = u.waiting_for,
                        manual = d.manual AND NOT (d.request_id = ANY($5)),
                        requested_by = CASE WHEN d.request_id = ANY($5) THEN NULL
                                            ELSE d.requested_by END,
                        requested_at = CASE WHEN d.request_id = ANY($5) THEN NULL
                                            ELSE d.requested_at END
                   FROM UNNEST($1::uuid[], $2::timestamptz[], $3::bigint[], $4::uuid[])
                        AS u(request_id, due_at, every_ms, waiting_for)
                  WHERE d.request_id = u.request_id",
            )
            .bind(&self.keep)
            .bind(&self.keep_due)
            .bind(&self.keep_every)
            .bind(&self.keep_waiting)
            .bind(&self.back_on_clock)
            .execute(&mut *conn)
            .await?;
        }
        if !self.remove.is_empty() {
            sqlx::query("DELETE FROM fulfil.reconcile_due WHERE request_id = ANY($1)")
                .bind(&self.remove)
                .execute(&mut *conn)
                .await?;
        }
        if !self.started.is_empty() {
            record_reruns(conn, self.started).await?;
        }
        Ok(())
    }
}

/// Stores each (request, run) as the request's latest re-run of its
/// configure workflow (`requests.reconcile_run_id`): how a delete finds it
/// in flight to stop it at its step boundary.
pub(crate) async fn record_reruns(
    conn: &mut PgConnection,
    started: Vec<(Uuid, Uuid)>,
) -> sqlx::Result<()> {
    let (requests, runs): (Vec<Uuid>, Vec<Uuid>) = started.into_iter().unzip();
    sqlx::query(
        "UPDATE fulfil.requests q SET reconcile_run_id = u.run_id
           FROM UNNEST($1::uuid[], $2::uuid[]) AS u(request_id, run_id)
          WHERE q.id = u.request_id",
    )
    .bind(&requests)
    .bind(&runs)
    .execute(conn)
    .await?;
    Ok(())
}

/// A claimed row of the queue.
#[derive(sqlx::FromRow)]
struct DueRow {
    #[sqlx(try_from = "Uuid")]
    request_id: RequestId,
    promise: String,
    every_ms: Option<i64>,
    manual: bool,
    requested_by: Option<String>,
    requested_at: Option<DateTime<Utc>>,
}

/// The `spec.reconcile` of each Promise's head version (`None`: it does not
/// reconcile on a clock). Read from the store, not this process's head
/// cache, so a version applied through another process counts at once;
/// versions are immutable, so loading them goes through the cache.
async fn head_policies(
    engine: &Engine,
    names: Option<&[String]>,
) -> Result<BTreeMap<String, Option<ReconcilePolicy>>, RunError> {
    let heads: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, version FROM fulfil.promise_heads
          WHERE $1::text[] IS NULL OR name = ANY($1)",
    )
    .bind(names)
    .fetch_all(engine.pool())
    .await?;
    let mut policies = BTreeMap::new();
    for (name, version) in heads {
        let promise = engine
            .promises()
            .load(engine.pool(), &name, &version)
            .await?;
        policies.insert(name, promise.reconcile());
    }
    Ok(policies)
}

/// Enrols the live requests of every Promise whose head reconciles that are
/// not in the queue yet, each at its next phase instant, and re-phases the
/// rows of a Promise whose `every` changed. Returns how many rows it wrote.
pub async fn enrol(engine: &Engine) -> Result<u64, RunError> {
    let mut written = 0;
    for (promise, policy) in head_policies(engine, None).await? {
        let Some(policy) = policy else { continue };
        let every = i64::try_from(every_ms(policy.every)).unwrap_or(i64::MAX);
        let now = Utc::now();
        let live: Vec<Uuid> = sqlx::query_scalar(
            "SELECT q.id FROM fulfil.requests q
              WHERE q.promise = $1 AND q.status IN ('succeeded', 'failed')
                AND NOT EXISTS (SELECT 1 FROM fulfil.reconcile_due d WHERE d.request_id = q.id)
              LIMIT $2",
        )
        .bind(&promise)
        .bind(ENROL_BATCH)
        .fetch_all(engine.pool())
        .await?;
        if !live.is_empty() {
            let due: Vec<DateTime<Utc>> = live
                .iter()
                .map(|id| next_due(RequestId::from(*id), policy.every, now))
                .collect();
            written += sqlx::query(
                "INSERT INTO fulfil.reconcile_due (request_id, promise, due_at, every_ms)
                 SELECT u.id, $3, u.due_at, $4
                   FROM UNNEST($1::uuid[], $2::timestamptz[]) AS u(id, due_at)
                 ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(&live)
            .bind(&due)
            .bind(&promise)
            .bind(every)
            .execute(engine.pool())
            .await?
            .rows_affected();
        }
        // A changed interval: each row moves to its phase in the new one.
        let stale: Vec<Uuid> = sqlx::query_scalar(
            "SELECT request_id FROM fulfil.reconcile_due
              WHERE promise = $1 AND NOT manual AND every_ms IS DISTINCT FROM $2
              LIMIT $3",
        )
        .bind(&promise)
        .bind(every)
        .bind(ENROL_BATCH)
        .fetch_all(engine.pool())
        .await?;
        if !stale.is_empty() {
            let due: Vec<DateTime<Utc>> = stale
                .iter()
                .map(|id| next_due(RequestId::from(*id), policy.every, now))
                .collect();
            written += sqlx::query(
                "UPDATE fulfil.reconcile_due d SET due_at = u.due_at, every_ms = $3
                   FROM UNNEST($1::uuid[], $2::timestamptz[]) AS u(id, due_at)
                  WHERE d.request_id = u.id AND NOT d.manual",
            )
            .bind(&stale)
            .bind(&due)
            .bind(every)
            .execute(engine.pool())
            .await?
            .rows_affected();
        }
    }
    Ok(written)
}

/// Claims the due rows and starts what may start, in one transaction; see
/// the module docs. Returns how many rows it dealt with (started, moved or
/// removed); a row whose request was locked is left due, uncounted, so a
/// batch of such rows does not make the loop spin.
pub async fn start_due(engine: &Engine) -> Result<usize, RunError> {
    let mut tx = engine.pool().begin().await?;
    let due: Vec<DueRow> = sqlx::query_as(
        "SELECT request_id, promise, every_ms, manual, requested_by, requested_at
           FROM fulfil.reconcile_due WHERE due_at <= now()
          ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(CLAIM_BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let claimed = due.len();
    let ids: Vec<RequestId> = due.iter().map(|r| r.request_id).collect();
    // A request locked by someone else (a delete, a manual reconcile, a run
    // ending) is skipped this round rather than waited for: this
    // transaction holds queue rows those may be waiting on.
    let requests: Vec<RequestRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{LOCK_REQUESTS} FOR UPDATE SKIP LOCKED"
    )))
    .bind(ids.iter().map(RequestId::as_uuid).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    let requests: HashMap<RequestId, RequestRow> =
        requests.into_iter().map(|r| (r.id, r)).collect();
    let in_flight = in_flight_runs(&mut tx, &ids).await?;
    let mut names: Vec<String> = due.iter().map(|r| r.promise.clone()).collect();
    names.sort();
    names.dedup();
    let policies = head_policies(engine, Some(&names)).await?;
    let contexts = configure_contexts(&mut tx, requests.values()).await?;

    let mut changes = QueueChanges::default();
    let mut runs: Vec<Run> = Vec::new();
    // Promises in name order, so engines take their advisory locks in one
    // order and never wait on each other in a cycle.
    let mut by_promise: BTreeMap<&str, Vec<&DueRow>> = BTreeMap::new();
    for row in &due {
        by_promise.entry(&row.promise).or_default().push(row);
    }
    let now = Utc::now();
    let mut skipped = 0;
    for (promise, rows) in by_promise {
        let policy = policies.get(promise).copied().flatten();
        let mut counted: Option<i64> = None;
        for row in rows {
            let Some(request) = requests.get(&row.request_id) else {
                skipped += 1;
                continue;
            };
            let status = RequestStatus::parse(&request.status)?;
            if !is_live(status)
                && !matches!(status, RequestStatus::Accepted | RequestStatus::Running)
            {
                changes.remove(row.request_id);
                continue;
            }
            let scheduled = match (row.manual, policy) {
                (true, _) => policy,
                (false, None) => {
                    // The Promise stopped reconciling on a clock.
                    changes.remove(row.request_id);
                    continue;
                }
                (false, Some(policy)) => {
                    let every = i64::try_from(every_ms(policy.every)).unwrap_or(i64::MAX);
                    if row.every_ms != Some(every) {
                        changes.reschedule(
                            row.request_id,
                            next_due(row.request_id, policy.every, now),
                            policy.every,
                        );
                        continue;
                    }
                    Some(policy)
                }
            };
            let waiting_for = in_flight
                .get(&row.request_id)
                .copied()
                .or_else(|| (!is_live(status)).then_some(request.run_id).flatten());
            if waiting_for.is_some() {
                changes.recheck(row, waiting_for);
                continue;
            }
            if let Some(policy) = policy {
                let in_flight = match counted {
                    Some(n) => n,
                    None => {
                        let n = count_in_flight(&mut tx, promise).await?;
                        counted = Some(n);
                        n
                    }
                };
                if !row.manual && in_flight >= i64::from(policy.max_concurrent) {
                    changes.recheck(row, None);
                    continue;
                }
            }
            let asked = Asked {
                actor: row
                    .requested_by
                    .clone()
                    .unwrap_or_else(|| engine.id().to_string()),
                manual: row.manual,
                requested_at: row.requested_at,
            };
            let started = match engine
                .promises()
                .load(engine.pool(), &request.promise, &request.promise_version)
                .await
                .map_err(RunError::from)
                .and_then(|promise| start_run(engine, request, promise, &contexts, asked))
            {
                Ok(run) => run,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    // Never starts the same way: it waits for its next
                    // instant instead of holding the head of the queue.
                    warn!(request = %row.request_id, error = %e, "a reconcile run cannot be created");
                    match scheduled {
                        Some(p) => changes.reschedule(
                            row.request_id,
                            next_due(row.request_id, p.every, now),
                            p.every,
                        ),
                        None => changes.remove(row.request_id),
                    }
                    continue;
                }
            };
            if let Some(n) = counted.as_mut() {
                *n += 1;
            }
            changes.started(row.request_id, started.run_id());
            runs.push(started);
            match scheduled {
                Some(p) => changes.reschedule(
                    row.request_id,
                    next_due(row.request_id, p.every, now),
                    p.every,
                ),
                None => changes.remove(row.request_id),
            }
        }
    }
    changes.store(&mut tx).await?;
    let rows = flush(&mut tx, &mut runs).await?;
    tx.commit().await?;
    engine.after_commit(rows);
    Ok(claimed - skipped)
}

/// The Promise's reconcile runs in flight, counted under its advisory lock
/// (held to the end of the transaction, which starts the new ones): an
/// engine that counts after this one sees the runs it started.
async fn count_in_flight(conn: &mut PgConnection, promise: &str) -> sqlx::Result<i64> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(LOCK_CLASS)
        .bind(promise)
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar(
        "SELECT count(*) FROM fulfil.runs
          WHERE status = ANY($1) AND kind = 'reconcile' AND promise = $2",
    )
    .bind(&IN_FLIGHT[..])
    .bind(promise)
    .fetch_one(conn)
    .await
}

/// The reconcile role every engine runs: enrols live requests every few
/// seconds and starts due reconciles every second, until `shutdown`.
pub(crate) async fn run_loop(engine: Engine, shutdown: CancellationToken) {
    let mut enrolled_at: Option<tokio::time::Instant> = None;
    loop {
        if enrolled_at.is_none_or(|at| at.elapsed() >= ENROL_EVERY) {
            match enrol(&engine).await {
                Ok(_) => enrolled_at = Some(tokio::time::Instant::now()),
                Err(e) => warn!(error = %e, "enrolling requests for reconcile failed; retrying"),
            }
        }
        let wait = match start_due(&engine).await {
            // A full batch: more may be due now.
            Ok(claimed) if claimed as i64 >= CLAIM_BATCH => Duration::ZERO,
            Ok(_) => POLL,
            Err(e) => {
                warn!(error = %e, "starting due reconciles failed; retrying");
                POLL
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_stable_spread_and_due_on_the_phase() {
        let every = Duration::from_secs(3600);
        // Ids minted together (same millisecond, consecutive counters).
        let ids: Vec<RequestId> = (0..1000).map(|_| RequestId::generate()).collect();
        let phases: Vec<Duration> = ids.iter().map(|id| phase_of(*id, every)).collect();
        assert!(phases.iter().all(|p| *p < every));
        // Spread: each tenth of the interval holds about a tenth of them.
        let mut buckets = [0usize; 10];
        for p in &phases {
            buckets[(p.as_secs() / 360) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (50..=150).contains(&n)),
            "{buckets:?}"
        );
        // Stable: the id alone decides.
        let id: RequestId = "0193a1c2-7b3e-7c1a-9f00-3d2e1a4b5c6d"
            .parse()
            .expect("a uuid");
        // Pinned: another function would re-phase every enrolled request
        // on upgrade.
        assert_eq!(phase_of(id, every), Duration::from_millis(682_220));

        // Due strictly after `after`, on the phase, within one interval.
        let after = DateTime::from_timestamp_millis(1_800_000_000_123).expect("a time");
        let due = next_due(id, every, after);
        assert!(due > after && due <= after + every);
        let every_ms = i64::try_from(every.as_millis()).expect("fits");
        assert_eq!(
            due.timestamp_millis().rem_euclid(every_ms),
            i64::try_from(phase_of(id, every).as_millis()).expect("fits")
        );
        // At the due instant itself, the next one is a whole interval on.
        assert_eq!(next_due(id, every, due), due + every);
        // Under a second is held to a second.
        assert!(next_due(id, Duration::ZERO, after) <= after + Duration::from_secs(1));
    }
}
