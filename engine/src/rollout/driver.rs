//! The engine's side of rollouts: start pending targets of running
//! rollouts, at most `max_concurrent` in flight each, and end the rollouts
//! that have nothing left (see the module docs of `crate::rollout`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fulfil_core::ids::{RequestId, RolloutId};
use fulfil_core::status::{RequestStatus, RolloutStatus, RolloutTargetState, RunKind};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, warn};
use uuid::Uuid;

use super::{kinds, try_lock_promise};
use crate::Engine;
use crate::reconcile::{
    LOCK_REQUESTS, RequestRow, Rerun, configure_contexts, in_flight_runs, is_live, record_reruns,
    start_rerun,
};
use crate::run::{Run, RunError, flush};

/// How often the loop looks at running rollouts while there are some.
const BUSY_POLL: Duration = Duration::from_millis(250);
/// How often it looks while there are none.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Most pending targets one round of a rollout looks at beyond the free
/// slots: those whose request has a run in flight are passed over.
const LOOK_AHEAD: i64 = 256;

/// A target's new state decided this round.
struct Moved {
    request: Uuid,
    state: RolloutTargetState,
    run: Option<Uuid>,
    error: Option<String>,
}

/// One round over every running rollout; returns how many there were.
pub async fn drive(engine: &Engine) -> Result<usize, RunError> {
    // Promises in name order, so engines take their locks in one order.
    let running: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, promise FROM fulfil.rollouts WHERE status = 'running' ORDER BY promise, id",
    )
    .fetch_all(engine.pool())
    .await?;
    for (id, promise) in &running {
        let id = RolloutId::from(*id);
        let span = tracing::info_span!("rollout", rollout_id = %id, promise = %promise);
        match drive_one(engine, id, promise).instrument(span).await {
            Ok(()) => {}
            Err(e) if e.is_transient() => return Err(e),
            // One rollout that cannot be driven holds up no other.
            Err(e) => warn!(rollout_id = %id, error = %e, "a rollout cannot be driven"),
        }
    }
    Ok(running.len())
}

/// One round of rollout `id`, in one transaction under the Promise's lock.
async fn drive_one(engine: &Engine, id: RolloutId, promise: &str) -> Result<(), RunError> {
    let mut tx = engine.pool().begin().await?;
    // Another engine driving the Promise's rollouts now does this round;
    // waiting for it would only count what it has just counted.
    if !try_lock_promise(&mut tx, promise).await? {
        return Ok(());
    }
    // The row lock orders this round with a pause, resume or cancel.
    let row: Option<(String, String, i32, String)> = sqlx::query_as(
        "SELECT status, to_version, max_concurrent, created_by FROM fulfil.rollouts
          WHERE id = $1 FOR UPDATE",
    )
    .bind(id.as_uuid())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((status, to_version, max_concurrent, created_by)) = row else {
        return Ok(());
    };
    if RolloutStatus::parse(&status)? != RolloutStatus::Running {
        return Ok(());
    }
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fulfil.rollout_targets WHERE rollout_id = $1 AND state = 'running'",
    )
    .bind(id.as_uuid())
    .fetch_one(&mut *tx)
    .await?;
    let mut free = i64::from(max_concurrent) - running;
    let mut moved: Vec<Moved> = Vec::new();
    let mut deferred: Vec<Uuid> = Vec::new();
    let mut runs: Vec<Run> = Vec::new();
    if free > 0 {
        // Least recently looked at first: a target passed over goes to the
        // back, so one request busy for long holds up no other.
        let pending: Vec<Uuid> = sqlx::query_scalar(
            "SELECT request_id FROM fulfil.rollout_targets
              WHERE rollout_id = $1 AND state = 'pending'
              ORDER BY updated_at, request_id LIMIT $2",
        )
        .bind(id.as_uuid())
        .bind(free + LOOK_AHEAD)
        .fetch_all(&mut *tx)
        .await?;
        // A request locked by someone else (a delete, a run ending) is
        // passed over this round rather than waited for.
        let requests: Vec<RequestRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{LOCK_REQUESTS} FOR UPDATE SKIP LOCKED"
        )))
        .bind(&pending)
        .fetch_all(&mut *tx)
        .await?;
        let requests: HashMap<RequestId, RequestRow> =
            requests.into_iter().map(|r| (r.id, r)).collect();
        let unlocked: Vec<Uuid> = pending
            .iter()
            .filter(|r| !requests.contains_key(&RequestId::from(**r)))
            .copied()
            .collect();
        let existing: HashSet<Uuid> = if unlocked.is_empty() {
            HashSet::new()
        } else {
            sqlx::query_scalar::<_, Uuid>("SELECT id FROM fulfil.requests WHERE id = ANY($1)")
                .bind(&unlocked)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect()
        };
        let ids: Vec<RequestId> = requests.keys().copied().collect();
        let in_flight = in_flight_runs(&mut tx, &ids).await?;
        let contexts = configure_contexts(&mut tx, requests.values()).await?;
        let target = engine
            .promises()
            .load(engine.pool(), promise, &to_version)
            .await?;
        for request_id in pending {
            if free == 0 {
                break;
            }
            let Some(request) = requests.get(&RequestId::from(request_id)) else {
                if existing.contains(&request_id) {
                    deferred.push(request_id);
                } else {
                    moved.push(skip(request_id, "the request no longer exists".into()));
                }
                continue;
            };
            let status = RequestStatus::parse(&request.status)?;
            if matches!(
                status,
                RequestStatus::Deleting | RequestStatus::Deleted | RequestStatus::DeleteFailed
            ) {
                moved.push(skip(request_id, format!("the request is {status}")));
                continue;
            }
            if request.pinned {
                moved.push(skip(
                    request_id,
                    format!(
                        "the request was pinned to version {} after the rollout was created",
                        request.promise_version
                    ),
                ));
                continue;
            }
            if request.promise_version == to_version {
                moved.push(skip(
                    request_id,
                    format!("the request is already on version {to_version}"),
                ));
                continue;
            }
            // Never two runs of a request at once: checked again later.
            if in_flight.contains_key(&request.id) || !is_live(status) {
                deferred.push(request_id);
                continue;
            }
            let rerun = Rerun {
                kind: RunKind::Upgrade,
                promise: target.clone(),
                actor: created_by.clone(),
                requested: kinds::UPGRADE_REQUESTED,
                data: json!({ "rollout_id": id, "request_id": request.id,
                              "configure_run_id": request.run_id,
                              "from_version": request.promise_version,
                              "to_version": to_version }),
            };
            match start_rerun(engine, request, &contexts, rerun) {
                Ok(run) => {
                    moved.push(Moved {
                        request: request_id,
                        state: RolloutTargetState::Running,
                        run: Some(run.run_id().as_uuid()),
                        error: None,
                    });
                    runs.push(run);
                    free -= 1;
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    // Never starts the same way: the target fails, naming why.
                    warn!(request = %request_id, error = %e, "an upgrade run cannot be created");
                    moved.push(Moved {
                        request: request_id,
                        state: RolloutTargetState::Failed,
                        run: None,
                        error: Some(format!("the upgrade run cannot be created: {e}")),
                    });
                }
            }
        }
    }
    store(&mut tx, id, &moved, &deferred).await?;
    let started: Vec<(Uuid, Uuid)> = runs
        .iter()
        .map(|r| (r.request_id().as_uuid(), r.run_id().as_uuid()))
        .collect();
    if !started.is_empty() {
        record_reruns(&mut tx, started).await?;
    }
    let rows = flush(&mut tx, &mut runs).await?;
    let (open, failed): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state IN ('pending', 'running')),
                count(*) FILTER (WHERE state = 'failed')
           FROM fulfil.rollout_targets WHERE rollout_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_one(&mut *tx)
    .await?;
    let ended = (open == 0).then_some(if failed > 0 {
        RolloutStatus::CompletedWithFailures
    } else {
        RolloutStatus::Succeeded
    });
    if let Some(ended) = ended {
        sqlx::query(
            "UPDATE fulfil.rollouts SET status = $2, finished_at = now(), updated_at = now()
              WHERE id = $1",
        )
        .bind(id.as_uuid())
        .bind(ended.as_str())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    engine.after_commit(rows);
    if !runs.is_empty() {
        tracing::debug!(started = runs.len(), "upgrade runs started");
    }
    if let Some(ended) = ended {
        tracing::info!(status = %ended, failed, "rollout ended");
    }
    Ok(())
}

fn skip(request: Uuid, why: String) -> Moved {
    Moved {
        request,
        state: RolloutTargetState::Skipped,
        run: None,
        error: Some(why),
    }
}

/// Stores the targets' new states, and sends those passed over to the back.
async fn store(
    conn: &mut sqlx::PgConnection,
    id: RolloutId,
    moved: &[Moved],
    deferred: &[Uuid],
) -> sqlx::Result<()> {
    if !moved.is_empty() {
        let requests: Vec<Uuid> = moved.iter().map(|m| m.request).collect();
        let states: Vec<&str> = moved.iter().map(|m| m.state.as_str()).collect();
        let runs: Vec<Option<Uuid>> = moved.iter().map(|m| m.run).collect();
        let errors: Vec<Option<String>> = moved.iter().map(|m| m.error.clone()).collect();
        sqlx::query(
            "UPDATE fulfil.rollout_targets t
                SET state = u.state, run_id = u.run_id, error = u.error, updated_at = now()
               FROM UNNEST($2::uuid[], $3::text[], $4::uuid[], $5::text[])
                    AS u(request_id, state, run_id, error)
              WHERE t.rollout_id = $1 AND t.request_id = u.request_id",
        )
        .bind(id.as_uuid())
        .bind(&requests)
        .bind(&states)
        .bind(&runs)
        .bind(&errors)
        .execute(&mut *conn)
        .await?;
    }
    if !deferred.is_empty() {
        sqlx::query(
            "UPDATE fulfil.rollout_targets SET updated_at = now()
              WHERE rollout_id = $1 AND request_id = ANY($2)",
        )
        .bind(id.as_uuid())
        .bind(deferred)
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// The rollout role every engine runs: drives running rollouts until
/// `shutdown`.
pub(crate) async fn run_loop(engine: Engine, shutdown: CancellationToken) {
    loop {
        let wait = match drive(&engine).await {
            Ok(0) => IDLE_POLL,
            Ok(_) => BUSY_POLL,
            Err(e) => {
                warn!(error = %e, "driving rollouts failed; retrying");
                IDLE_POLL
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
