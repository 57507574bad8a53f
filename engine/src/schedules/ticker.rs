//! The ticker: the loop every engine runs to decide due ticks (see the
//! module docs of [`crate::schedules`] for the guarantees).
//!
//! What to do with a schedule's due ticks is decided in memory by
//! [`plan`], from the row and the database's clock, so the rules are unit
//! tested without Postgres; [`tick`] claims a batch, plans each schedule,
//! prepares the requests and writes everything in one transaction.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use fulfil_core::Promise;
use fulfil_core::ids::RequestId;
use fulfil_core::params::ParamsError;
use fulfil_core::schedule::Timing;
use fulfil_core::status::{OverlapPolicy, RequestStatus, TickOutcome};
use serde_json::Value;
use sqlx::Arguments;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};
use uuid::Uuid;

use super::ScheduleError;
use crate::promises::PromiseError;
use crate::requests::{RequestError, ValidRequest, prepare, stage_requests};
use crate::{Engine, EngineConfig};

/// Schedules claimed per transaction.
const CLAIM_BATCH: i64 = 500;

/// Ticks of one schedule filed or skipped per transaction; the rest stay
/// due for the next (an `allow` schedule catching up an hour of seconds).
const MAX_DECIDED_PER_ROUND: usize = 1_000;

/// Most `missed` (or `paused`) rows written for one stretch of passed
/// ticks; past it, one more row counts the rest.
pub const MAX_PASSED_ROWS: usize = 1_000;

/// Most ticks counted, beyond [`MAX_PASSED_ROWS`], for that last row's
/// reason; past it the count says "at least".
const MAX_COUNTED: u64 = 1_000_000;

/// Runs ticks until `shutdown`: a batch at once while batches come full,
/// otherwise sleeping until the earliest `next_fire_at`, a wake-up from
/// this process (a PUT or a resume) or `poll_interval`, whichever is first.
pub async fn run_ticker(engine: Engine, config: EngineConfig, shutdown: CancellationToken) {
    loop {
        let wait = match tick(&engine, config.schedule_grace).await {
            Ok(claimed) if claimed as i64 >= CLAIM_BATCH => Duration::ZERO,
            Ok(_) => next_wait(&engine, config.poll_interval).await,
            Err(e) => {
                if e.is_transient() {
                    warn!(error = %e, "deciding schedule ticks failed; retrying");
                } else {
                    error!(error = %e, "deciding schedule ticks failed; retrying");
                }
                config.poll_interval
            }
        };
        if shutdown.is_cancelled() {
            return;
        }
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = engine.schedules_woken() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Until the earliest `next_fire_at`, at most `poll`: another process may
/// apply an earlier schedule meanwhile.
async fn next_wait(engine: &Engine, poll: Duration) -> Duration {
    let next: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT min(next_fire_at) FROM fulfil.schedules")
            .fetch_one(engine.pool())
            .await
            .unwrap_or(None);
    match next {
        // A millisecond at least: tokio's timer would otherwise wake a
        // hair early and find nothing due, over and over.
        Some(at) => (at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .clamp(Duration::from_millis(1), poll),
        None => poll,
    }
}

/// A schedule as claimed: what deciding its ticks needs.
#[derive(Debug, Clone)]
pub(crate) struct Due {
    pub name: String,
    pub promise: String,
    pub overlap: OverlapPolicy,
    pub catch_up: Duration,
    pub params: Value,
    pub paused: bool,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub buffered_at: Option<DateTime<Utc>>,
    pub last_request_id: Option<RequestId>,
    /// The request of the last filed tick is `accepted` or `running`.
    pub in_flight: bool,
}

#[derive(sqlx::FromRow)]
struct DueRow {
    name: String,
    promise: String,
    cron: String,
    timezone: String,
    overlap: String,
    catch_up_ms: i64,
    params: Value,
    paused: bool,
    next_fire_at: Option<DateTime<Utc>>,
    buffered_at: Option<DateTime<Utc>>,
    last_request_id: Option<Uuid>,
    in_flight: bool,
    now: DateTime<Utc>,
    /// The Schedule's `metadata.owner`: the team its ticks file for.
    owner: Option<String>,
}

/// What one tick does, decided before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// File a request (also for a buffered tick whose wait ended).
    File,
    /// Kept from filing by the request in flight.
    Skip,
    /// `buffer_one`: waits for the request in flight.
    Buffer,
    /// Passed without filing: `missed` or `paused`; `count` ticks from
    /// this one on (more than one for the row that counts the rest, which
    /// is a floor when `at_least`), the last at `until`.
    Passed {
        outcome: TickOutcome,
        count: u64,
        at_least: bool,
        until: DateTime<Utc>,
    },
}

/// Everything [`plan`] decided for one schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// In nominal order (a buffered tick filed now comes first).
    pub ticks: Vec<(DateTime<Utc>, Decision)>,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub buffered_at: Option<DateTime<Utc>>,
}

/// Decides the due ticks of `due` at `now` (the database's clock): see the
/// module docs of [`crate::schedules`].
pub(crate) fn plan(due: &Due, timing: &Timing, now: DateTime<Utc>, grace: Duration) -> Plan {
    let mut ticks = Vec::new();
    let mut in_flight = due.in_flight;
    let mut buffered_at = due.buffered_at;
    if let Some(at) = buffered_at
        && !in_flight
        && !due.paused
    {
        ticks.push((at, Decision::File));
        buffered_at = None;
        in_flight = true;
    }
    let mut next = due.next_fire_at;
    if due.paused {
        next = pass(
            timing,
            next,
            |at| at <= now,
            TickOutcome::Paused,
            timing.next_after(now),
            &mut ticks,
        );
        return Plan {
            ticks,
            next_fire_at: next,
            buffered_at,
        };
    }
    let window = fulfil_core::time::to_time_delta(due.catch_up.max(grace));
    let cutoff = now
        .checked_sub_signed(window)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    next = pass(
        timing,
        next,
        |at| at < cutoff,
        TickOutcome::Missed,
        timing.first_from(cutoff),
        &mut ticks,
    );
    let mut decided = 0;
    while let Some(at) = next
        && at <= now
        && decided < MAX_DECIDED_PER_ROUND
    {
        let decision = match due.overlap {
            OverlapPolicy::Allow => Decision::File,
            _ if !in_flight => Decision::File,
            OverlapPolicy::Skip => Decision::Skip,
            OverlapPolicy::BufferOne if buffered_at.is_none() => {
                buffered_at = Some(at);
                Decision::Buffer
            }
            OverlapPolicy::BufferOne => Decision::Skip,
        };
        if decision == Decision::File {
            in_flight = true;
        }
        ticks.push((at, decision));
        next = timing.next_after(at);
        decided += 1;
    }
    Plan {
        ticks,
        next_fire_at: next,
        buffered_at,
    }
}

/// Passes the ticks from `next` on while `passing` holds, as `outcome`:
/// one row each for the first [`MAX_PASSED_ROWS`], then one row counting
/// the rest. Returns the first tick not passed; `jump` is where counting
/// gives up (the first tick after the stretch).
pub(super) fn pass(
    timing: &Timing,
    mut next: Option<DateTime<Utc>>,
    passing: impl Fn(DateTime<Utc>) -> bool,
    outcome: TickOutcome,
    jump: Option<DateTime<Utc>>,
    ticks: &mut Vec<(DateTime<Utc>, Decision)>,
) -> Option<DateTime<Utc>> {
    let mut rows = 0;
    while let Some(at) = next
        && passing(at)
    {
        if rows == MAX_PASSED_ROWS {
            let first = at;
            let mut count = 0_u64;
            let mut until = at;
            while let Some(at) = next
                && passing(at)
                && count < MAX_COUNTED
            {
                count += 1;
                until = at;
                next = timing.next_after(at);
            }
            let at_least = next.is_some_and(&passing);
            if at_least {
                next = jump;
            }
            ticks.push((
                first,
                Decision::Passed {
                    outcome,
                    count,
                    at_least,
                    until,
                },
            ));
            return next;
        }
        ticks.push((
            at,
            Decision::Passed {
                outcome,
                count: 1,
                at_least: false,
                until: at,
            },
        ));
        rows += 1;
        next = timing.next_after(at);
    }
    next
}

/// The idempotency key of a tick's request.
pub fn idempotency_key(schedule: &str, nominal: DateTime<Utc>) -> String {
    format!(
        "schedule:{schedule}:{}",
        nominal.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    )
}

/// A ledger row to write.
struct TickWrite {
    nominal: DateTime<Utc>,
    outcome: TickOutcome,
    /// Index into the batch's requests, for a tick that files.
    request: Option<usize>,
    request_id: Option<RequestId>,
    reason: Option<String>,
}

/// A schedule's new position.
struct ScheduleWrite {
    name: String,
    next_fire_at: Option<DateTime<Utc>>,
    buffered_at: Option<DateTime<Utc>>,
    last_request: Option<usize>,
}

/// Claims one batch of due schedules and decides their ticks in one
/// transaction; returns how many schedules it claimed.
pub async fn tick(engine: &Engine, grace: Duration) -> Result<usize, ScheduleError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match tick_once(engine, grace).await {
            Err(ScheduleError::HeadKeptMoving(name)) if tries < 3 => {
                engine.promises().forget_head(&name);
            }
            outcome => return outcome,
        }
    }
}

async fn tick_once(engine: &Engine, grace: Duration) -> Result<usize, ScheduleError> {
    let mut tx = engine.pool().begin().await?;
    let in_flight: Vec<&str> = [RequestStatus::Accepted, RequestStatus::Running]
        .iter()
        .map(|s| s.as_str())
        .collect();
    // A buffered schedule is due only once its request has ended, so one
    // waiting on a long run is not claimed at every round. The first
    // condition alone selects by the two indexes (due, buffered); the
    // request is read only for the rows it selects.
    let rows: Vec<DueRow> = sqlx::query_as(
        "SELECT s.name, s.promise, s.cron, s.timezone, s.overlap, s.catch_up_ms, s.params,
                s.paused, s.next_fire_at, s.buffered_at, s.last_request_id,
                COALESCE(r.status = ANY($2), false) AS in_flight, now() AS now,
                s.document #>> '{metadata,owner}' AS owner
         FROM fulfil.schedules s LEFT JOIN fulfil.requests r ON r.id = s.last_request_id
         WHERE (s.next_fire_at <= now() OR s.buffered_at IS NOT NULL)
           AND (s.next_fire_at <= now() OR NOT COALESCE(r.status = ANY($2), false))
         ORDER BY s.next_fire_at
         LIMIT $1
         FOR UPDATE OF s SKIP LOCKED",
    )
    .bind(CLAIM_BATCH)
    .bind(&in_flight)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let claimed = rows.len();

    let mut requests: Vec<ValidRequest> = Vec::new();
    let mut ticks: Vec<(usize, TickWrite)> = Vec::new();
    let mut moves: Vec<ScheduleWrite> = Vec::with_capacity(claimed);
    for (index, row) in rows.into_iter().enumerate() {
        let (writes, position) = decide(engine, row, grace, &mut requests).await?;
        ticks.extend(writes.into_iter().map(|w| (index, w)));
        moves.push(position);
    }

    let staged = if requests.is_empty() {
        None
    } else {
        Some(stage_requests(engine, &mut tx, &requests).await?)
    };
    let outcomes = staged.as_ref().map(|s| s.outcomes()).unwrap_or_default();
    if let Some(Err(RequestError::HeadMoved(name))) = outcomes
        .iter()
        .find(|o| matches!(o, Err(RequestError::HeadMoved(_))))
    {
        return Err(ScheduleError::HeadKeptMoving(name.clone()));
    }
    // A filing that failed in the transaction (an idempotency key already
    // holding other params) turns its tick into `failed`.
    for (_, tick) in &mut ticks {
        let Some(index) = tick.request else { continue };
        match outcomes.get(index) {
            Some(Ok(accepted)) => {
                tick.request_id = Some(accepted.request_id);
                if accepted.replayed {
                    tick.reason = Some(
                        "a request with this tick's idempotency key existed already; it is the \
                         tick's request"
                            .to_string(),
                    );
                }
            }
            Some(Err(e)) => {
                tick.outcome = TickOutcome::Failed;
                tick.reason = Some(format!("the request could not be filed: {e}"));
            }
            None => {
                tick.outcome = TickOutcome::Failed;
                tick.reason = Some("the request was not filed".to_string());
            }
        }
    }
    let last_request = |m: &ScheduleWrite| {
        m.last_request
            .and_then(|i| outcomes.get(i))
            .and_then(|o| o.as_ref().ok())
            .map(|a| a.request_id.as_uuid())
    };

    let mut arguments = sqlx::postgres::PgArguments::default();
    let names: Vec<&str> = ticks.iter().map(|(i, _)| moves[*i].name.as_str()).collect();
    let nominals: Vec<DateTime<Utc>> = ticks.iter().map(|(_, t)| t.nominal).collect();
    let outcome_texts: Vec<&str> = ticks.iter().map(|(_, t)| t.outcome.as_str()).collect();
    let request_ids: Vec<Option<Uuid>> = ticks
        .iter()
        .map(|(_, t)| t.request_id.map(|id| id.as_uuid()))
        .collect();
    let reasons: Vec<Option<&str>> = ticks.iter().map(|(_, t)| t.reason.as_deref()).collect();
    let bind = |a: &mut sqlx::postgres::PgArguments| -> Result<(), sqlx::error::BoxDynError> {
        a.add(&names)?;
        a.add(&nominals)?;
        a.add(&outcome_texts)?;
        a.add(&request_ids)?;
        a.add(&reasons)
    };
    bind(&mut arguments).map_err(sqlx::Error::Encode)?;
    // A `buffered` row is the one row a later transaction may change: to
    // `filed` when its tick files.
    sqlx::query_with(
        "INSERT INTO fulfil.schedule_ticks (schedule, nominal_at, fired_at, outcome, request_id, reason)
         SELECT u.schedule, u.nominal, clock_timestamp(), u.outcome, u.request_id, u.reason
         FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::uuid[], $5::text[])
              AS u(schedule, nominal, outcome, request_id, reason)
         ON CONFLICT (schedule, nominal_at) DO UPDATE
            SET outcome = EXCLUDED.outcome, request_id = EXCLUDED.request_id,
                reason = EXCLUDED.reason, fired_at = EXCLUDED.fired_at
            WHERE fulfil.schedule_ticks.outcome = 'buffered'",
        arguments,
    )
    .execute(&mut *tx)
    .await?;

    let names: Vec<&str> = moves.iter().map(|m| m.name.as_str()).collect();
    let nexts: Vec<Option<DateTime<Utc>>> = moves.iter().map(|m| m.next_fire_at).collect();
    let buffered: Vec<Option<DateTime<Utc>>> = moves.iter().map(|m| m.buffered_at).collect();
    let lasts: Vec<Option<Uuid>> = moves.iter().map(last_request).collect();
    sqlx::query(
        "UPDATE fulfil.schedules s
         SET next_fire_at = u.next_fire_at, buffered_at = u.buffered_at,
             last_request_id = COALESCE(u.last_request_id, s.last_request_id)
         FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[], $4::uuid[])
              AS u(name, next_fire_at, buffered_at, last_request_id)
         WHERE s.name = u.name",
    )
    .bind(&names)
    .bind(&nexts)
    .bind(&buffered)
    .bind(&lasts)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if let Some(staged) = staged {
        staged.committed(engine);
    }
    Ok(claimed)
}

/// The ledger rows and new position of one claimed schedule; the requests
/// its filing ticks need are appended to `requests`.
async fn decide(
    engine: &Engine,
    row: DueRow,
    grace: Duration,
    requests: &mut Vec<ValidRequest>,
) -> Result<(Vec<TickWrite>, ScheduleWrite), ScheduleError> {
    let overlap = OverlapPolicy::parse(&row.overlap);
    let timing = Timing::new(&row.cron, &row.timezone);
    let (overlap, timing) = match (overlap, timing) {
        (Ok(overlap), Ok(timing)) => (overlap, timing),
        (Err(e), _) => return Ok(parked(row, &e.to_string())),
        (_, Err(e)) => return Ok(parked(row, &e.to_string())),
    };
    let owner = row.owner;
    let due = Due {
        name: row.name,
        promise: row.promise,
        overlap,
        catch_up: Duration::from_millis(u64::try_from(row.catch_up_ms).unwrap_or(0)),
        params: row.params,
        paused: row.paused,
        next_fire_at: row.next_fire_at,
        buffered_at: row.buffered_at,
        last_request_id: row.last_request_id.map(RequestId::from),
        in_flight: row.in_flight,
    };
    let plan = plan(&due, &timing, row.now, grace);

    // The Promise and the params are the same for every tick of the round.
    let mut filing: Option<Filing> = None;
    let mut writes = Vec::with_capacity(plan.ticks.len());
    let mut last_request = None;
    let mut holder = due.last_request_id.map(|id| id.to_string());
    let actor = format!("schedule:{}", due.name);
    for (nominal, decision) in plan.ticks {
        let (outcome, reason) = match decision {
            Decision::File => {
                if filing.is_none() {
                    filing = Some(filing_for(engine, &due, &actor, owner.as_deref()).await?);
                }
                match &filing {
                    Some(Ok((promise, params))) => {
                        let request = prepare(
                            engine,
                            promise.clone(),
                            params.clone(),
                            Some(idempotency_key(&due.name, nominal)),
                            actor.clone(),
                            None,
                        );
                        holder = Some(request.request_id.to_string());
                        last_request = Some(requests.len());
                        writes.push(TickWrite {
                            nominal,
                            outcome: TickOutcome::Filed,
                            request: Some(requests.len()),
                            request_id: None,
                            reason: None,
                        });
                        requests.push(request);
                        continue;
                    }
                    Some(Err((outcome, reason))) => (*outcome, Some(reason.clone())),
                    None => (TickOutcome::Failed, None),
                }
            }
            Decision::Skip => (
                TickOutcome::SkippedOverlap,
                Some(format!(
                    "request {} of an earlier tick was still in flight (overlap: {})",
                    holder.as_deref().unwrap_or("-"),
                    due.overlap
                )),
            ),
            Decision::Buffer => (
                TickOutcome::Buffered,
                Some(format!(
                    "waiting for request {} of an earlier tick to end (overlap: buffer_one)",
                    holder.as_deref().unwrap_or("-")
                )),
            ),
            Decision::Passed {
                outcome,
                count,
                at_least,
                until,
            } => (
                outcome,
                Some(passed_reason(outcome, count, at_least, until, &due, grace)),
            ),
        };
        writes.push(TickWrite {
            nominal,
            outcome,
            request: None,
            request_id: None,
            reason,
        });
    }
    Ok((
        writes,
        ScheduleWrite {
            name: due.name,
            next_fire_at: plan.next_fire_at,
            buffered_at: plan.buffered_at,
            last_request,
        },
    ))
}

fn passed_reason(
    outcome: TickOutcome,
    count: u64,
    at_least: bool,
    until: DateTime<Utc>,
    due: &Due,
    grace: Duration,
) -> String {
    let why = match outcome {
        TickOutcome::Paused => "the schedule was paused".to_string(),
        _ => format!(
            "no engine decided the tick within {} of its time (the catch-up window, or the \
             grace when it is shorter); were the engines down?",
            humantime::format_duration(due.catch_up.max(grace))
        ),
    };
    if count <= 1 {
        return why;
    }
    let more = if at_least { "at least " } else { "" };
    format!(
        "{why}; this row stands for {more}{count} ticks, up to {} (only the first {MAX_PASSED_ROWS} \
         of a stretch get a row each)",
        until.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    )
}

/// A stored schedule the engine cannot read (its time zone is no longer
/// known, say): one `failed` row says why, and it stops ticking instead of
/// failing every round.
fn parked(row: DueRow, reason: &str) -> (Vec<TickWrite>, ScheduleWrite) {
    error!(schedule = %row.name, reason, "schedule cannot tick; stopped");
    let writes = row
        .next_fire_at
        .map(|nominal| TickWrite {
            nominal,
            outcome: TickOutcome::Failed,
            request: None,
            request_id: None,
            reason: Some(format!(
                "the stored schedule cannot be read ({reason}); it stops until applied again"
            )),
        })
        .into_iter()
        .collect();
    (
        writes,
        ScheduleWrite {
            name: row.name,
            next_fire_at: None,
            buffered_at: None,
            last_request: None,
        },
    )
}

/// The Promise head and the params with its defaults applied, or why a
/// tick cannot file; a database failure is an error of the whole round.
/// What a schedule's filing ticks file: the Promise and the params, or
/// the outcome (`failed`, `denied`) and reason of every such tick.
type Filing = Result<(Arc<Promise>, Value), (TickOutcome, String)>;

async fn filing_for(
    engine: &Engine,
    due: &Due,
    actor: &str,
    owner: Option<&str>,
) -> Result<Filing, ScheduleError> {
    let failed = |reason: String| Ok(Err((TickOutcome::Failed, reason)));
    let promise = match engine
        .promises()
        .load_head(engine.pool(), &due.promise)
        .await
    {
        Ok(promise) => promise,
        Err(PromiseError::NotFound(_)) => {
            return failed(format!(
                "no Promise named {:?}: apply it, and the next ticks file",
                due.promise
            ));
        }
        Err(e @ PromiseError::Db(_)) => return Err(e.into()),
        Err(e) => return failed(e.to_string()),
    };
    let bytes = crate::run::json_size(&due.params);
    if bytes > crate::run::MAX_TASK_INPUT_BYTES {
        return failed(format!(
            "the params are {bytes} bytes; at most {} are accepted",
            crate::run::MAX_TASK_INPUT_BYTES
        ));
    }
    let params = engine
        .promises()
        .params_schema(&promise)
        .and_then(|schema| schema.validate(due.params.clone()));
    let params = match params {
        Ok(params) => params,
        Err(ParamsError::Invalid(violations)) => {
            return failed(format!(
                "the params break the schema of Promise {}: {}",
                due.promise,
                fulfil_core::params::describe_violations(&violations)
            ));
        }
        Err(ParamsError::Schema(message)) => {
            return failed(format!(
                "the schema of Promise {} does not compile: {message}",
                due.promise
            ));
        }
    };
    // A schedule files for its own owner (see
    // `crate::policies::engine_principal`); a denied tick is recorded and
    // the schedule moves on, like a failed one.
    let principal = crate::policies::engine_principal(actor, owner);
    let violations = crate::policies::admit(engine, &promise, &params, &principal).await?;
    if !violations.is_empty() {
        return Ok(Err((
            TickOutcome::Denied,
            format!(
                "the request for Promise {} was denied by admission policy: {}",
                due.promise,
                fulfil_core::policy::describe_violations(&violations)
            ),
        )));
    }
    Ok(Ok((promise, params)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("an RFC 3339 time")
            .with_timezone(&Utc)
    }

    fn every_second() -> Timing {
        Timing::new("* * * * * *", "UTC").expect("valid")
    }

    fn due(overlap: OverlapPolicy, next: &str) -> Due {
        Due {
            name: "s".into(),
            promise: "p".into(),
            overlap,
            catch_up: Duration::ZERO,
            params: serde_json::json!({}),
            paused: false,
            next_fire_at: Some(at(next)),
            buffered_at: None,
            last_request_id: None,
            in_flight: false,
        }
    }

    fn decisions(plan: &Plan) -> Vec<&Decision> {
        plan.ticks.iter().map(|(_, d)| d).collect()
    }

    #[test]
    fn overlap_policies_decide_ticks_while_a_request_is_in_flight() {
        let now = at("2026-06-01T00:00:02.100Z");
        let grace = Duration::from_secs(30);
        let allow = plan(
            &due(OverlapPolicy::Allow, "2026-06-01T00:00:00Z"),
            &every_second(),
            now,
            grace,
        );
        assert_eq!(decisions(&allow), vec![&Decision::File; 3]);
        assert_eq!(allow.next_fire_at, Some(at("2026-06-01T00:00:03Z")));

        let skip = plan(
            &due(OverlapPolicy::Skip, "2026-06-01T00:00:00Z"),
            &every_second(),
            now,
            grace,
        );
        assert_eq!(
            decisions(&skip),
            vec![&Decision::File, &Decision::Skip, &Decision::Skip]
        );

        let buffer = plan(
            &due(OverlapPolicy::BufferOne, "2026-06-01T00:00:00Z"),
            &every_second(),
            now,
            grace,
        );
        assert_eq!(
            decisions(&buffer),
            vec![&Decision::File, &Decision::Buffer, &Decision::Skip]
        );
        assert_eq!(buffer.buffered_at, Some(at("2026-06-01T00:00:01Z")));

        // The in-flight request ends: the buffered tick files first, and a
        // new due tick meets it in flight.
        let mut waiting = due(OverlapPolicy::BufferOne, "2026-06-01T00:00:03Z");
        waiting.buffered_at = Some(at("2026-06-01T00:00:01Z"));
        let later = plan(
            &waiting,
            &every_second(),
            at("2026-06-01T00:00:03.5Z"),
            grace,
        );
        assert_eq!(
            later.ticks,
            vec![
                (at("2026-06-01T00:00:01Z"), Decision::File),
                (at("2026-06-01T00:00:03Z"), Decision::Buffer),
            ]
        );
        // Still in flight: nothing moves for the buffered tick.
        waiting.in_flight = true;
        let still = plan(
            &waiting,
            &every_second(),
            at("2026-06-01T00:00:03.5Z"),
            grace,
        );
        assert_eq!(decisions(&still), vec![&Decision::Skip]);
        assert_eq!(still.buffered_at, Some(at("2026-06-01T00:00:01Z")));
    }

    #[test]
    fn ticks_older_than_the_window_are_missed_and_long_stretches_are_counted() {
        let mut down = due(OverlapPolicy::Allow, "2026-06-01T00:00:00Z");
        down.catch_up = Duration::from_secs(3);
        // Found at 00:00:10.5 with a 3 s window: 00..07 missed (< 07.5),
        // 08, 09, 10 fire.
        let found = plan(
            &down,
            &every_second(),
            at("2026-06-01T00:00:10.5Z"),
            Duration::from_secs(1),
        );
        let missed = found
            .ticks
            .iter()
            .filter(|(_, d)| matches!(d, Decision::Passed { .. }))
            .count();
        assert_eq!(missed, 8);
        assert_eq!(
            found.ticks.last(),
            Some(&(at("2026-06-01T00:00:10Z"), Decision::File))
        );
        assert_eq!(found.next_fire_at, Some(at("2026-06-01T00:00:11Z")));

        // A day down, every second, no catch-up: 1000 rows, then one row
        // counting the other 85,370, then the tick inside the grace fires.
        let day = plan(
            &due(OverlapPolicy::Skip, "2026-06-01T00:00:00Z"),
            &every_second(),
            at("2026-06-02T00:00:00Z"),
            Duration::from_secs(30),
        );
        assert_eq!(day.ticks.len(), MAX_PASSED_ROWS + 1 + 31);
        assert_eq!(
            day.ticks[MAX_PASSED_ROWS],
            (
                at("2026-06-01T00:16:40Z"),
                Decision::Passed {
                    outcome: TickOutcome::Missed,
                    count: 86_400 - 30 - MAX_PASSED_ROWS as u64,
                    at_least: false,
                    until: at("2026-06-01T23:59:29Z"),
                }
            )
        );
        assert_eq!(
            day.ticks[MAX_PASSED_ROWS + 1],
            (at("2026-06-01T23:59:30Z"), Decision::File)
        );
        // Every tick of the day is accounted for, once.
        let accounted: u64 = day
            .ticks
            .iter()
            .map(|(_, d)| match d {
                Decision::Passed { count, .. } => *count,
                _ => 1,
            })
            .sum();
        assert_eq!(accounted, 86_401);
    }

    #[test]
    fn a_paused_schedule_passes_its_ticks_as_paused_and_files_nothing() {
        let mut paused = due(OverlapPolicy::BufferOne, "2026-06-01T00:00:00Z");
        paused.paused = true;
        paused.buffered_at = Some(at("2026-05-31T23:59:59Z"));
        let found = plan(
            &paused,
            &every_second(),
            at("2026-06-01T00:00:01.2Z"),
            Duration::from_secs(30),
        );
        assert_eq!(found.ticks.len(), 2);
        assert!(found.ticks.iter().all(|(_, d)| matches!(
            d,
            Decision::Passed {
                outcome: TickOutcome::Paused,
                ..
            }
        )));
        assert_eq!(found.next_fire_at, Some(at("2026-06-01T00:00:02Z")));
        assert_eq!(
            idempotency_key("nightly", at("2026-06-01T02:00:00Z")),
            "schedule:nightly:2026-06-01T02:00:00Z"
        );
    }
}
