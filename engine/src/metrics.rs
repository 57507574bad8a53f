//! Every metric the engine and the worker record, named in one place.
//!
//! Recording goes through the `metrics` facade: without an installed
//! recorder (tests, tools linking the engine) each call is a no-op. The
//! `fulfil` binary installs a Prometheus recorder with the buckets of
//! [`HISTOGRAM_BUCKETS`] and serves it at `GET /metrics`
//! (`docs/observability.md`).
//!
//! Labels are bounded: Promise, step and queue names come from applied
//! Promises, outcomes and statuses from closed enums. Never a run, request
//! or task id.
//!
//! Step observations are recorded only once what they describe committed:
//! the state machine buffers them with the run's writes
//! (`Observed`) and the flush records them after its statement
//! succeeded, so a decision taken again after a stale read counts once.

use fulfil_core::RunStatus;
use metrics::{counter, gauge, histogram};

/// Requests accepted (filed and committed), by `promise`.
pub const REQUESTS_ACCEPTED: &str = "fulfil_requests_accepted_total";
/// Runs that reached a terminal status, by `promise` and `status`.
pub const RUNS_FINISHED: &str = "fulfil_runs_finished_total";
/// Runs not yet finished, by `promise`, counted in Postgres periodically.
pub const RUNS_IN_FLIGHT: &str = "fulfil_runs_in_flight";
/// Worker-reported duration of an attempt (`finished_at - started_at`), by
/// `promise`, `step`, `queue` and `outcome` (`ok`, `error`).
pub const STEP_DURATION: &str = "fulfil_step_duration_seconds";
/// Time from an attempt's dispatch (its task id is a UUIDv7 minted then)
/// to the worker's start, by `promise`, `step` and `queue`.
pub const SCHEDULE_TO_START: &str = "fulfil_step_schedule_to_start_seconds";
/// Retries scheduled after a failed attempt, by `promise` and `step`.
pub const RETRIES: &str = "fulfil_step_retries_total";
/// Messages moved to the dead-letter stream, by `source` (`tasks`,
/// `results`, `inbound`) and `reason`. Recorded by `fulfil_bus`.
pub const DEAD_LETTERS: &str = fulfil_bus::metrics::DEAD_LETTERS;
/// Inbound events decided, by `outcome`: one per trigger (`filed`,
/// `duplicate`, `filtered`, `invalid`), or `wait` / `unmatched` for an
/// event no trigger took, `not_an_event` for a message that is no
/// CloudEvent.
pub const EVENTS_RECEIVED: &str = "fulfil_events_received_total";
/// Rows waiting in the task outbox, counted in Postgres periodically.
pub const OUTBOX_DEPTH: &str = "fulfil_outbox_depth";
/// Postgres transactions committed by the engine's hot paths, by `path`
/// (`intake`, `apply`, `relay`, `outbox_delete`). Divided by
/// [`STEPS_APPLIED`], the transactions each step costs.
pub const PG_TRANSACTIONS: &str = "fulfil_pg_transactions_total";
/// Worker results applied to their runs (not ignored ones).
pub const STEPS_APPLIED: &str = "fulfil_steps_applied_total";
/// Task messages handed to NATS by the outbox (fast path or relay).
pub const TASKS_DISPATCHED: &str = "fulfil_tasks_dispatched_total";

/// Histograms and their buckets (seconds): from a few milliseconds (an
/// `echo` step, a warm queue) to minutes (a provisioning call). Without
/// buckets the exporter renders summaries, which cannot be aggregated.
pub const HISTOGRAM_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The histograms recorded, for the exporter's bucket configuration.
pub const HISTOGRAMS: &[&str] = &[STEP_DURATION, SCHEDULE_TO_START];

/// What a committed change of a run observed, recorded by the flush.
#[derive(Debug, Clone)]
pub(crate) enum Observed {
    /// A worker's result was applied.
    StepFinished {
        step: String,
        queue: String,
        ok: bool,
        duration_secs: Option<f64>,
        schedule_to_start_secs: Option<f64>,
    },
    /// A failed attempt will be tried again.
    Retry { step: String },
    /// A new request was accepted and its run started.
    Accepted,
}

/// Records what one run's committed change observed.
pub(crate) fn record_committed(
    promise: &str,
    finished: Option<RunStatus>,
    observed: Vec<Observed>,
) {
    if let Some(status) = finished {
        counter!(RUNS_FINISHED, "promise" => promise.to_owned(), "status" => status.as_str())
            .increment(1);
    }
    for o in observed {
        match o {
            Observed::StepFinished {
                step,
                queue,
                ok,
                duration_secs,
                schedule_to_start_secs,
            } => {
                counter!(STEPS_APPLIED).increment(1);
                if let Some(secs) = schedule_to_start_secs {
                    histogram!(SCHEDULE_TO_START, "promise" => promise.to_owned(),
                               "step" => step.clone(), "queue" => queue.clone())
                    .record(secs);
                }
                if let Some(secs) = duration_secs {
                    let outcome = if ok { "ok" } else { "error" };
                    histogram!(STEP_DURATION, "promise" => promise.to_owned(), "step" => step,
                               "queue" => queue, "outcome" => outcome)
                    .record(secs);
                }
            }
            Observed::Retry { step } => {
                counter!(RETRIES, "promise" => promise.to_owned(), "step" => step).increment(1);
            }
            Observed::Accepted => {
                counter!(REQUESTS_ACCEPTED, "promise" => promise.to_owned()).increment(1);
            }
        }
    }
}

/// The hot path of `path` committed a transaction.
pub(crate) fn transaction(path: &'static str) {
    counter!(PG_TRANSACTIONS, "path" => path).increment(1);
}

/// The outbox handed `n` tasks to NATS.
pub(crate) fn tasks_dispatched(n: usize) {
    counter!(TASKS_DISPATCHED).increment(n as u64);
}

/// An inbound event was decided with `outcome`.
pub(crate) fn event_received(outcome: &'static str) {
    counter!(EVENTS_RECEIVED, "outcome" => outcome).increment(1);
}

/// How often the gauges counted in Postgres are refreshed.
pub const GAUGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Refreshes [`RUNS_IN_FLIGHT`] and [`OUTBOX_DEPTH`] from Postgres every
/// `every`, until `shutdown`.
///
/// Counted, not maintained from transitions: a count is right after a
/// restart, and with several engines (each reports the same installation
/// wide figure: aggregate with `max`, not `sum`). Both queries are served
/// by indexes (`runs_status_idx`; the outbox is small), so the cost is two
/// index scans every few seconds, off the hot path.
pub async fn count_periodically(
    pool: sqlx::PgPool,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        match count(&pool).await {
            Ok((in_flight, idle, outbox)) => set_counted(&in_flight, &idle, outbox),
            Err(e) => tracing::debug!(error = %e, "counting runs in flight failed; trying later"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Runs in flight by Promise, the applied Promises with none, and the
/// outbox depth.
async fn count(pool: &sqlx::PgPool) -> Result<(Vec<(String, i64)>, Vec<String>, i64), sqlx::Error> {
    let in_flight: Vec<(String, i64)> = sqlx::query_as(
        "SELECT promise, count(*) FROM fulfil.runs
         WHERE status IN ('pending', 'running', 'compensating') GROUP BY promise",
    )
    .fetch_all(pool)
    .await?;
    let applied: Vec<String> = sqlx::query_scalar("SELECT name FROM fulfil.promise_heads")
        .fetch_all(pool)
        .await?;
    let idle = applied
        .into_iter()
        .filter(|name| !in_flight.iter().any(|(p, _)| p == name))
        .collect();
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM fulfil.outbox")
        .fetch_one(pool)
        .await?;
    Ok((in_flight, idle, outbox))
}

/// Sets the gauges counted in Postgres: runs in flight by Promise, and
/// the outbox depth. Every applied Promise without runs in flight reads 0,
/// so a gauge never sticks at its last non-zero value.
fn set_counted(in_flight: &[(String, i64)], idle: &[String], outbox: i64) {
    for (promise, n) in in_flight {
        gauge!(RUNS_IN_FLIGHT, "promise" => promise.clone()).set(*n as f64);
    }
    for promise in idle {
        gauge!(RUNS_IN_FLIGHT, "promise" => promise.clone()).set(0.0);
    }
    gauge!(OUTBOX_DEPTH).set(outbox as f64);
}

/// Seconds from `from` to `to`; `None` when the clocks disagree so much
/// that the span is negative (an engine and a worker on skewed hosts).
pub(crate) fn seconds_between(
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Option<f64> {
    let micros = (to - from).num_microseconds()?;
    (micros >= 0).then(|| micros as f64 / 1e6)
}
