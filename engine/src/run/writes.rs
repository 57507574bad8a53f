//! The writes a change to a run produces, buffered in memory and written
//! for any number of runs at once.
//!
//! The state machine never talks to Postgres while it decides: it changes
//! its in-memory copy of the run and records here what must be stored.
//! [`flush`] then writes the changes of every run of a batch in one
//! statement (one data-modifying CTE per table, each fed by `UNNEST`ed
//! arrays), so the cost of a batch is a fixed handful of round trips
//! however many results it holds. That is what makes group commit pay.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::Run;
use crate::outbox::OutboxRow;

/// A history event waiting to be written.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    pub kind: &'static str,
    pub step_id: Option<String>,
    pub attempt: Option<i32>,
    pub actor: String,
    pub data: Value,
}

/// A message waiting to be put in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub subject: String,
    pub msg_id: String,
    pub payload: Value,
}

/// An attempt to insert, as dispatched.
#[derive(Debug, Clone)]
pub(crate) struct NewAttempt {
    pub task_id: Uuid,
    pub step_id: String,
    pub attempt: i32,
    pub kind: &'static str,
    pub handler: String,
    pub queue: String,
    pub input: Value,
    pub deadline: DateTime<Utc>,
}

/// Changes to an existing attempt row; `None` leaves a column as it is.
#[derive(Debug, Clone, Default)]
pub(crate) struct AttemptUpdate {
    pub status: Option<&'static str>,
    pub worker: Option<String>,
    /// Overwrites `started_at` (a start report: the attempt's clocks restart).
    pub started_at: Option<DateTime<Utc>>,
    /// Sets `started_at` only if nothing set it before (a result's own clock).
    pub started_at_if_unset: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<Value>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub heartbeat_details: Option<Value>,
}

impl AttemptUpdate {
    /// Folds a later update of the same attempt into this one.
    fn merge(&mut self, later: AttemptUpdate) {
        macro_rules! later_wins {
            ($($field:ident),*) => { $( if later.$field.is_some() { self.$field = later.$field; } )* };
        }
        later_wins!(
            status,
            worker,
            started_at,
            finished_at,
            error,
            heartbeat_at,
            heartbeat_details
        );
        if self.started_at_if_unset.is_none() {
            self.started_at_if_unset = later.started_at_if_unset;
        }
    }
}

/// Cancels the open attempt `attempt` of a step's action or compensation,
/// and disarms its timers.
#[derive(Debug, Clone)]
pub(crate) struct AttemptCancel {
    pub step_id: String,
    pub kind: &'static str,
    pub attempt: i32,
    pub reason: String,
}

/// A durable timer to arm.
#[derive(Debug, Clone)]
pub(crate) struct NewTimer {
    pub step_id: String,
    pub kind: &'static str,
    pub task_id: Option<Uuid>,
    pub fire_at: DateTime<Utc>,
}

/// The run row's end-of-run columns: set when it finishes, cleared when an
/// operator re-opens it.
#[derive(Debug, Clone)]
pub(crate) struct RunEnding {
    pub finished: bool,
    pub outputs: Option<Value>,
    pub error: Option<String>,
}

/// The request row's status, kept in step with its run.
#[derive(Debug, Clone)]
pub(crate) struct RequestStatus {
    pub status: &'static str,
    pub outputs: Option<Value>,
}

/// Everything one run's change must store.
#[derive(Debug, Clone, Default)]
pub(crate) struct Writes {
    pub events: Vec<PendingEvent>,
    pub outbox: Vec<OutboxMessage>,
    /// Steps whose in-memory row must be written back.
    pub steps: BTreeSet<String>,
    /// The run row's status, flags or history sequence changed.
    pub run: bool,
    pub ending: Option<RunEnding>,
    pub request: Option<RequestStatus>,
    pub new_attempts: Vec<NewAttempt>,
    pub attempt_updates: Vec<(Uuid, AttemptUpdate)>,
    pub cancels: Vec<AttemptCancel>,
    /// Disarm the timers of these attempts: all of them, or one kind.
    pub cleared_attempt_timers: Vec<(Uuid, Option<&'static str>)>,
    /// Disarm every timer the run had before this change.
    pub cleared_run_timers: bool,
    pub new_timers: Vec<NewTimer>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.outbox.is_empty()
            && self.steps.is_empty()
            && !self.run
            && self.ending.is_none()
            && self.request.is_none()
            && self.new_attempts.is_empty()
            && self.attempt_updates.is_empty()
            && self.cancels.is_empty()
            && self.cleared_attempt_timers.is_empty()
            && !self.cleared_run_timers
            && self.new_timers.is_empty()
    }

    pub fn update_attempt(&mut self, task_id: Uuid, update: AttemptUpdate) {
        match self
            .attempt_updates
            .iter_mut()
            .find(|(id, _)| *id == task_id)
        {
            Some((_, earlier)) => earlier.merge(update),
            None => self.attempt_updates.push((task_id, update)),
        }
    }

    /// Timers armed earlier in this change are dropped here; timers stored
    /// before it are deleted by the flush.
    pub fn clear_attempt_timers(&mut self, task_id: Uuid, kind: Option<&'static str>) {
        self.new_timers
            .retain(|t| t.task_id != Some(task_id) || kind.is_some_and(|k| k != t.kind));
        self.cleared_attempt_timers.push((task_id, kind));
    }

    pub fn clear_run_timers(&mut self) {
        self.new_timers.clear();
        self.cleared_run_timers = true;
    }
}

/// Writes the buffered changes of `runs` in one statement (plus one for
/// cancelled attempts, when there are any), leaving each run's buffer empty.
/// Returns the outbox rows written, for the fast publisher. The caller
/// commits.
pub(crate) async fn flush(
    conn: &mut PgConnection,
    runs: &mut [Run],
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let mut columns = Columns::default();
    let mut cancels = Vec::new();
    let mut slow_outbox = false;
    for run in runs.iter_mut() {
        let writes = std::mem::take(&mut run.writes);
        if writes.is_empty() {
            continue;
        }
        if !run.fast_publish && !writes.outbox.is_empty() {
            slow_outbox = true;
        }
        columns.add(run, writes, &mut cancels);
    }
    if columns.is_empty() && cancels.is_empty() {
        return Ok(Vec::new());
    }
    let inserted: Vec<(i64, String)> = columns.write(conn).await?;
    if !cancels.is_empty() {
        write_cancels(conn, &cancels).await?;
    }
    if slow_outbox {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(crate::outbox::CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    let ids: HashMap<&str, i64> = inserted
        .iter()
        .map(|(id, msg_id)| (msg_id.as_str(), *id))
        .collect();
    let rows = columns
        .outbox_fast
        .iter()
        .zip(columns.outbox_subject)
        .zip(columns.outbox_msg_id)
        .zip(columns.outbox_payload)
        .filter(|(((fast, _), _), _)| **fast)
        .filter_map(|(((_, subject), msg_id), payload)| {
            Some(OutboxRow {
                id: *ids.get(msg_id.as_str())?,
                subject,
                msg_id,
                payload,
            })
        })
        .collect();
    Ok(rows)
}

/// The buffered writes of many runs, as one array per column.
#[derive(Default)]
struct Columns {
    // history
    h_run: Vec<Uuid>,
    h_seq: Vec<i64>,
    h_type: Vec<&'static str>,
    h_step: Vec<Option<String>>,
    h_attempt: Vec<Option<i32>>,
    h_actor: Vec<String>,
    h_data: Vec<Value>,
    // outbox
    outbox_subject: Vec<String>,
    outbox_msg_id: Vec<String>,
    outbox_payload: Vec<Value>,
    outbox_fast: Vec<bool>,
    // runs
    r_id: Vec<Uuid>,
    r_status: Vec<&'static str>,
    r_seq: Vec<i64>,
    r_cancel_requested: Vec<bool>,
    r_stop_reason: Vec<Option<String>>,
    r_ending: Vec<bool>,
    r_finished: Vec<bool>,
    r_outputs: Vec<Option<Value>>,
    r_error: Vec<Option<String>>,
    // requests
    q_id: Vec<Uuid>,
    q_status: Vec<&'static str>,
    q_outputs: Vec<Option<Value>>,
    // steps
    s_run: Vec<Uuid>,
    s_step: Vec<String>,
    s_status: Vec<&'static str>,
    s_attempt: Vec<i32>,
    s_outputs: Vec<Option<Value>>,
    s_input: Vec<Option<Value>>,
    s_error: Vec<Option<String>>,
    s_comp_status: Vec<Option<&'static str>>,
    s_comp_attempt: Vec<i32>,
    s_comp_outputs: Vec<Option<Value>>,
    s_comp_error: Vec<Option<String>>,
    // new attempts
    n_task: Vec<Uuid>,
    n_run: Vec<Uuid>,
    n_step: Vec<String>,
    n_attempt: Vec<i32>,
    n_kind: Vec<&'static str>,
    n_handler: Vec<String>,
    n_queue: Vec<String>,
    n_input: Vec<Value>,
    n_deadline: Vec<DateTime<Utc>>,
    // attempt updates
    u_task: Vec<Uuid>,
    u_status: Vec<Option<&'static str>>,
    u_worker: Vec<Option<String>>,
    u_started: Vec<Option<DateTime<Utc>>>,
    u_started_if_unset: Vec<Option<DateTime<Utc>>>,
    u_finished: Vec<Option<DateTime<Utc>>>,
    u_error: Vec<Option<Value>>,
    u_heartbeat_at: Vec<Option<DateTime<Utc>>>,
    u_heartbeat_details: Vec<Option<Value>>,
    // timers
    td_task: Vec<Uuid>,
    td_kind: Vec<Option<&'static str>>,
    td_run: Vec<Uuid>,
    t_run: Vec<Uuid>,
    t_step: Vec<String>,
    t_kind: Vec<&'static str>,
    t_task: Vec<Option<Uuid>>,
    t_fire_at: Vec<DateTime<Utc>>,
}

/// A cancel with the run it belongs to.
struct RunCancel {
    run_id: Uuid,
    cancel: AttemptCancel,
}

impl Columns {
    fn is_empty(&self) -> bool {
        self.h_run.is_empty()
            && self.outbox_subject.is_empty()
            && self.r_id.is_empty()
            && self.q_id.is_empty()
            && self.s_run.is_empty()
            && self.n_task.is_empty()
            && self.u_task.is_empty()
            && self.td_task.is_empty()
            && self.td_run.is_empty()
            && self.t_run.is_empty()
    }

    fn add(&mut self, run: &mut Run, writes: Writes, cancels: &mut Vec<RunCancel>) {
        let run_id = run.run_id;
        let first_seq = run.next_seq;
        let events = writes.events.len() as i64;
        run.next_seq += events;
        for (offset, e) in writes.events.into_iter().enumerate() {
            self.h_run.push(run_id);
            self.h_seq.push(first_seq + offset as i64);
            self.h_type.push(e.kind);
            self.h_step.push(e.step_id);
            self.h_attempt.push(e.attempt);
            self.h_actor.push(e.actor);
            self.h_data.push(e.data);
        }
        for m in writes.outbox {
            self.outbox_subject.push(m.subject);
            self.outbox_msg_id.push(m.msg_id);
            self.outbox_payload.push(m.payload);
            self.outbox_fast.push(run.fast_publish);
        }
        if writes.run || events > 0 || writes.ending.is_some() {
            self.r_id.push(run_id);
            self.r_status.push(run.status.as_str());
            self.r_seq.push(run.next_seq - 1);
            self.r_cancel_requested.push(run.cancel_requested);
            self.r_stop_reason.push(run.stop_reason.clone());
            let ending = writes.ending.as_ref();
            self.r_ending.push(ending.is_some());
            self.r_finished.push(ending.is_some_and(|e| e.finished));
            self.r_outputs.push(ending.and_then(|e| e.outputs.clone()));
            self.r_error.push(ending.and_then(|e| e.error.clone()));
        }
        if let Some(request) = writes.request {
            self.q_id.push(run.request_id);
            self.q_status.push(request.status);
            self.q_outputs.push(request.outputs);
        }
        for step_id in writes.steps {
            let Some(row) = run.steps.get(&step_id) else {
                continue;
            };
            self.s_run.push(run_id);
            self.s_step.push(step_id);
            self.s_status.push(row.status.as_str());
            self.s_attempt.push(row.attempt);
            self.s_outputs.push(row.outputs.clone());
            self.s_input.push(row.input.clone());
            self.s_error.push(row.error.clone());
            self.s_comp_status
                .push(row.compensation.map(|c| c.as_str()));
            self.s_comp_attempt.push(row.compensation_attempt);
            self.s_comp_outputs.push(row.compensation_outputs.clone());
            self.s_comp_error.push(row.compensation_error.clone());
        }
        for a in writes.new_attempts {
            self.n_task.push(a.task_id);
            self.n_run.push(run_id);
            self.n_step.push(a.step_id);
            self.n_attempt.push(a.attempt);
            self.n_kind.push(a.kind);
            self.n_handler.push(a.handler);
            self.n_queue.push(a.queue);
            self.n_input.push(a.input);
            self.n_deadline.push(a.deadline);
        }
        for (task_id, u) in writes.attempt_updates {
            self.u_task.push(task_id);
            self.u_status.push(u.status);
            self.u_worker.push(u.worker);
            self.u_started.push(u.started_at);
            self.u_started_if_unset.push(u.started_at_if_unset);
            self.u_finished.push(u.finished_at);
            self.u_error.push(u.error);
            self.u_heartbeat_at.push(u.heartbeat_at);
            self.u_heartbeat_details.push(u.heartbeat_details);
        }
        for (task_id, kind) in writes.cleared_attempt_timers {
            self.td_task.push(task_id);
            self.td_kind.push(kind);
        }
        if writes.cleared_run_timers {
            self.td_run.push(run_id);
        }
        for t in writes.new_timers {
            self.t_run.push(run_id);
            self.t_step.push(t.step_id);
            self.t_kind.push(t.kind);
            self.t_task.push(t.task_id);
            self.t_fire_at.push(t.fire_at);
        }
        cancels.extend(
            writes
                .cancels
                .into_iter()
                .map(|cancel| RunCancel { run_id, cancel }),
        );
    }

    /// One statement for every table. Each CTE touches rows that existed
    /// before the statement (updates, deletes) or rows it creates (inserts),
    /// never both for the same row: the buffer has already folded every
    /// change to one row into one entry, and timers armed then cleared in
    /// the same change were never buffered.
    async fn write(&self, conn: &mut PgConnection) -> Result<Vec<(i64, String)>, sqlx::Error> {
        sqlx::query_as(
            "WITH
             history AS (
                 INSERT INTO fulfil.history (run_id, seq, type, step_id, attempt, actor, data)
                 SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::int[],
                                      $6::text[], $7::jsonb[])),
             runs AS (
                 UPDATE fulfil.runs r SET status = u.status, history_seq = u.seq,
                        cancel_requested = u.cancel_requested, stop_reason = u.stop_reason,
                        outputs = CASE WHEN u.ending THEN u.outputs ELSE r.outputs END,
                        error = CASE WHEN u.ending THEN u.error ELSE r.error END,
                        finished_at = CASE WHEN NOT u.ending THEN r.finished_at
                                           WHEN u.finished THEN now() END
                 FROM UNNEST($8::uuid[], $9::text[], $10::bigint[], $11::bool[], $12::text[],
                             $13::bool[], $14::bool[], $15::jsonb[], $16::text[])
                      AS u(id, status, seq, cancel_requested, stop_reason, ending, finished, outputs, error)
                 WHERE r.id = u.id),
             requests AS (
                 UPDATE fulfil.requests q SET status = u.status, outputs = u.outputs, updated_at = now()
                 FROM UNNEST($17::uuid[], $18::text[], $19::jsonb[]) AS u(id, status, outputs)
                 WHERE q.id = u.id),
             steps AS (
                 UPDATE fulfil.steps s SET status = u.status, attempt = u.attempt, outputs = u.outputs,
                        input = u.input, error = u.error, compensation_status = u.comp_status,
                        compensation_attempt = u.comp_attempt, compensation_outputs = u.comp_outputs,
                        compensation_error = u.comp_error, updated_at = now()
                 FROM UNNEST($20::uuid[], $21::text[], $22::text[], $23::int[], $24::jsonb[],
                             $25::jsonb[], $26::text[], $27::text[], $28::int[], $29::jsonb[], $30::text[])
                      AS u(run_id, step_id, status, attempt, outputs, input, error, comp_status,
                           comp_attempt, comp_outputs, comp_error)
                 WHERE s.run_id = u.run_id AND s.step_id = u.step_id),
             new_attempts AS (
                 INSERT INTO fulfil.attempts (task_id, run_id, step_id, attempt, kind, status, handler,
                                              queue, input, deadline)
                 SELECT t, r, s, a, k, 'dispatched', h, q, i, d
                 FROM UNNEST($31::uuid[], $32::uuid[], $33::text[], $34::int[], $35::text[],
                             $36::text[], $37::text[], $38::jsonb[], $39::timestamptz[])
                      AS n(t, r, s, a, k, h, q, i, d)),
             attempts AS (
                 UPDATE fulfil.attempts a SET status = COALESCE(u.status, a.status),
                        worker = COALESCE(u.worker, a.worker),
                        started_at = COALESCE(u.started_at, a.started_at, u.started_if_unset),
                        finished_at = COALESCE(u.finished_at, a.finished_at),
                        error = COALESCE(u.error, a.error),
                        heartbeat_at = COALESCE(u.heartbeat_at, a.heartbeat_at),
                        heartbeat_details = COALESCE(u.heartbeat_details, a.heartbeat_details)
                 FROM UNNEST($40::uuid[], $41::text[], $42::text[], $43::timestamptz[],
                             $44::timestamptz[], $45::timestamptz[], $46::jsonb[], $47::timestamptz[],
                             $48::jsonb[])
                      AS u(task_id, status, worker, started_at, started_if_unset, finished_at, error,
                           heartbeat_at, heartbeat_details)
                 WHERE a.task_id = u.task_id),
             cleared_attempt_timers AS (
                 DELETE FROM fulfil.timers t USING UNNEST($49::uuid[], $50::text[]) AS u(task_id, kind)
                 WHERE t.task_id = u.task_id AND (u.kind IS NULL OR t.kind = u.kind)),
             cleared_run_timers AS (
                 DELETE FROM fulfil.timers WHERE run_id = ANY($51::uuid[])),
             new_timers AS (
                 INSERT INTO fulfil.timers (run_id, step_id, kind, task_id, fire_at)
                 SELECT * FROM UNNEST($52::uuid[], $53::text[], $54::text[], $55::uuid[],
                                      $56::timestamptz[])),
             outbox AS (
                 INSERT INTO fulfil.outbox (subject, msg_id, payload, fast)
                 SELECT * FROM UNNEST($57::text[], $58::text[], $59::jsonb[], $60::bool[])
                 RETURNING id, msg_id)
             SELECT id, msg_id FROM outbox",
        )
        .bind(&self.h_run)
        .bind(&self.h_seq)
        .bind(&self.h_type)
        .bind(&self.h_step)
        .bind(&self.h_attempt)
        .bind(&self.h_actor)
        .bind(&self.h_data)
        .bind(&self.r_id)
        .bind(&self.r_status)
        .bind(&self.r_seq)
        .bind(&self.r_cancel_requested)
        .bind(&self.r_stop_reason)
        .bind(&self.r_ending)
        .bind(&self.r_finished)
        .bind(&self.r_outputs)
        .bind(&self.r_error)
        .bind(&self.q_id)
        .bind(&self.q_status)
        .bind(&self.q_outputs)
        .bind(&self.s_run)
        .bind(&self.s_step)
        .bind(&self.s_status)
        .bind(&self.s_attempt)
        .bind(&self.s_outputs)
        .bind(&self.s_input)
        .bind(&self.s_error)
        .bind(&self.s_comp_status)
        .bind(&self.s_comp_attempt)
        .bind(&self.s_comp_outputs)
        .bind(&self.s_comp_error)
        .bind(&self.n_task)
        .bind(&self.n_run)
        .bind(&self.n_step)
        .bind(&self.n_attempt)
        .bind(&self.n_kind)
        .bind(&self.n_handler)
        .bind(&self.n_queue)
        .bind(&self.n_input)
        .bind(&self.n_deadline)
        .bind(&self.u_task)
        .bind(&self.u_status)
        .bind(&self.u_worker)
        .bind(&self.u_started)
        .bind(&self.u_started_if_unset)
        .bind(&self.u_finished)
        .bind(&self.u_error)
        .bind(&self.u_heartbeat_at)
        .bind(&self.u_heartbeat_details)
        .bind(&self.td_task)
        .bind(&self.td_kind)
        .bind(&self.td_run)
        .bind(&self.t_run)
        .bind(&self.t_step)
        .bind(&self.t_kind)
        .bind(&self.t_task)
        .bind(&self.t_fire_at)
        .bind(&self.outbox_subject)
        .bind(&self.outbox_msg_id)
        .bind(&self.outbox_payload)
        .bind(&self.outbox_fast)
        .fetch_all(conn)
        .await
    }
}

/// Cancels open attempts and disarms their timers. Runs after the main
/// statement, so it also sees attempts that statement inserted.
async fn write_cancels(conn: &mut PgConnection, cancels: &[RunCancel]) -> Result<(), sqlx::Error> {
    let run_ids: Vec<Uuid> = cancels.iter().map(|c| c.run_id).collect();
    let step_ids: Vec<&str> = cancels.iter().map(|c| c.cancel.step_id.as_str()).collect();
    let kinds: Vec<&str> = cancels.iter().map(|c| c.cancel.kind).collect();
    let attempts: Vec<i32> = cancels.iter().map(|c| c.cancel.attempt).collect();
    let reasons: Vec<&str> = cancels.iter().map(|c| c.cancel.reason.as_str()).collect();
    sqlx::query(
        "WITH cancelled AS (
             UPDATE fulfil.attempts a SET status = 'cancelled', finished_at = now(),
                    error = jsonb_build_object('code', 'cancelled', 'message', u.reason, 'retryable', false)
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[])
                  AS u(run_id, step_id, kind, attempt, reason)
             WHERE a.run_id = u.run_id AND a.step_id = u.step_id AND a.kind = u.kind
               AND a.attempt = u.attempt AND a.status IN ('dispatched', 'running')
             RETURNING a.task_id)
         DELETE FROM fulfil.timers WHERE task_id IN (SELECT task_id FROM cancelled)",
    )
    .bind(&run_ids)
    .bind(&step_ids)
    .bind(&kinds)
    .bind(&attempts)
    .bind(&reasons)
    .execute(conn)
    .await?;
    Ok(())
}
