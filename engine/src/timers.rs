//! Durable timers: retry backoffs live in `fulfil.timers`, so a retry survives
//! any engine crash. Every engine fires due timers; `FOR UPDATE SKIP LOCKED`
//! hands each timer to exactly one of them, and the timer is deleted in the
//! same transaction that dispatches the next attempt.

use std::time::Duration;

use chrono::Utc;
use fulfil_spec::StepStatus;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};
use uuid::Uuid;

use crate::run::{RunError, RunTxn, dispatch_attempt};
use crate::{Engine, EngineConfig};

/// Timers fired per wake-up, so one busy engine cannot starve its other loops.
const MAX_FIRED_PER_ROUND: usize = 256;

pub(crate) async fn run_timers(engine: Engine, config: EngineConfig, shutdown: CancellationToken) {
    loop {
        let wait = match fire_due(&engine).await {
            Ok(_) => next_wait(&engine, config.poll_interval).await,
            Err(e) => {
                warn!(error = %e, "firing timers failed; retrying");
                config.poll_interval
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Sleeps until the next timer is due, at most `poll`: another engine may
/// add an earlier one meanwhile.
async fn next_wait(engine: &Engine, poll: Duration) -> Duration {
    let next: Option<chrono::DateTime<Utc>> =
        sqlx::query_scalar("SELECT min(fire_at) FROM fulfil.timers")
            .fetch_one(engine.pool())
            .await
            .unwrap_or(None);
    match next {
        Some(at) => (at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(poll),
        None => poll,
    }
}

/// Fires every due timer; returns how many fired.
pub async fn fire_due(engine: &Engine) -> Result<usize, RunError> {
    let mut fired = 0;
    while fired < MAX_FIRED_PER_ROUND {
        let mut tx = engine.pool().begin().await?;
        let due: Option<(i64, Uuid, String, String)> = sqlx::query_as(
            "SELECT id, run_id, step_id, kind FROM fulfil.timers WHERE fire_at <= now()
             ORDER BY fire_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some((timer_id, run_id, step_id, kind)) = due else {
            break;
        };
        sqlx::query("DELETE FROM fulfil.timers WHERE id = $1")
            .bind(timer_id)
            .execute(&mut *tx)
            .await?;
        let actor = format!("engine:{}", engine.id());
        let span = info_span!("timer", %run_id, step_id = %step_id, kind = %kind);
        let Some(mut run) = RunTxn::lock(engine, tx, run_id, actor)
            .instrument(span.clone())
            .await?
        else {
            continue;
        };
        let step = run.steps.get(&step_id).cloned();
        let promise = run.promise.clone();
        match (kind.as_str(), step, promise.step(&step_id)) {
            ("retry", Some(row), Some(spec))
                if row.status == StepStatus::Retrying && !run.status.is_terminal() =>
            {
                dispatch_attempt(&mut run, spec, row.attempt + 1)
                    .instrument(span)
                    .await?;
            }
            // The step moved on (cancelled, retried by hand): the timer is stale.
            _ => {}
        }
        let wrote_outbox = run.has_outbox();
        run.commit().await?;
        if wrote_outbox {
            engine.wake_outbox();
        }
        fired += 1;
    }
    Ok(fired)
}
