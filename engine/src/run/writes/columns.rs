//! The buffered writes of many runs, gathered into one array per column
//! and written by one statement of data-modifying CTEs.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use fulfil_core::ids::RunId;
use fulfil_core::status::{AttemptStatus, TimerKind};
use serde_json::Value;
use sqlx::{Arguments, PgConnection};
use uuid::Uuid;

use super::statement::Statement;
use super::{AttemptCancel, CreatedRun, LeadingPart, RunEnding, Writes};
use crate::outbox::OutboxRow;
use crate::run::Run;

/// The buffered writes of many runs, as one array per column.
#[derive(Default)]
pub(super) struct Columns {
    // created runs
    c_run: Vec<Uuid>,
    c_request: Vec<Uuid>,
    c_promise: Vec<String>,
    c_version: Vec<String>,
    c_status: Vec<&'static str>,
    c_context: Vec<Value>,
    c_seq: Vec<i64>,
    c_outputs: Vec<Option<Value>>,
    c_error: Vec<Option<String>>,
    c_finished: Vec<bool>,
    c_kind: Vec<&'static str>,
    // their steps
    cs_run: Vec<Uuid>,
    cs_step: Vec<String>,
    cs_position: Vec<i32>,
    cs_status: Vec<&'static str>,
    cs_attempt: Vec<i32>,
    cs_outputs: Vec<Option<Value>>,
    cs_input: Vec<Option<Value>>,
    cs_error: Vec<Option<String>>,
    // instances of for_each steps, inserted with their state
    ni_run: Vec<Uuid>,
    ni_step: Vec<String>,
    ni_position: Vec<i32>,
    ni_status: Vec<&'static str>,
    ni_attempt: Vec<i32>,
    ni_input: Vec<Option<Value>>,
    ni_error: Vec<Option<String>>,
    ni_instance_of: Vec<String>,
    ni_index: Vec<i32>,
    ni_item: Vec<Value>,
    // history
    h_run: Vec<Uuid>,
    h_seq: Vec<i64>,
    h_type: Vec<&'static str>,
    h_step: Vec<Option<String>>,
    h_attempt: Vec<Option<i32>>,
    h_actor: Vec<String>,
    h_data: Vec<Value>,
    // status events, beside their history events
    st_run: Vec<Uuid>,
    st_seq: Vec<i64>,
    st_kind: Vec<&'static str>,
    st_subject: Vec<String>,
    st_msg_id: Vec<String>,
    st_payload: Vec<Value>,
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
    /// The version each run was read at, for runs read without their lock.
    r_read_version: Vec<Option<i64>>,
    // requests
    q_id: Vec<Uuid>,
    q_status: Vec<&'static str>,
    q_outputs: Vec<Option<Value>>,
    q_version: Vec<Option<String>>,
    // rollout targets of ended upgrade runs
    rt_run: Vec<Uuid>,
    rt_state: Vec<&'static str>,
    rt_error: Vec<Option<String>>,
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
pub(super) struct RunCancel {
    run_id: RunId,
    cancel: AttemptCancel,
}

impl Columns {
    pub(super) fn is_empty(&self) -> bool {
        self.c_run.is_empty()
            && self.ni_run.is_empty()
            && self.h_run.is_empty()
            && self.st_run.is_empty()
            && self.outbox_subject.is_empty()
            && self.r_id.is_empty()
            && self.q_id.is_empty()
            && self.s_run.is_empty()
            && self.n_task.is_empty()
            && self.u_task.is_empty()
            && self.td_task.is_empty()
            && self.td_run.is_empty()
            && self.t_run.is_empty()
            && self.rt_run.is_empty()
    }

    /// The outbox rows this process publishes itself, with the ids the
    /// statement gave them (`inserted`: id and message id of each row).
    pub(super) fn into_fast_outbox_rows(self, inserted: &[(i64, String)]) -> Vec<OutboxRow> {
        let ids: HashMap<&str, i64> = inserted
            .iter()
            .map(|(id, msg_id)| (msg_id.as_str(), *id))
            .collect();
        self.outbox_fast
            .iter()
            .zip(self.outbox_subject)
            .zip(self.outbox_msg_id)
            .zip(self.outbox_payload)
            .filter(|(((fast, _), _), _)| **fast)
            .filter_map(|(((_, subject), msg_id), payload)| {
                Some(OutboxRow {
                    id: *ids.get(msg_id.as_str())?,
                    subject,
                    msg_id,
                    payload,
                })
            })
            .collect()
    }

    pub(super) fn add(&mut self, run: &mut Run, writes: Writes, cancels: &mut Vec<RunCancel>) {
        let run_id = run.run_id;
        let first_seq = run.next_seq;
        let events = writes.events.len() as i64;
        run.next_seq += events;
        for (offset, e) in writes.events.into_iter().enumerate() {
            let seq = first_seq + offset as i64;
            if let Some(status) = e.status {
                let message = super::status::envelope(run, status, seq);
                self.st_run.push(run_id.as_uuid());
                self.st_seq.push(seq);
                self.st_kind.push(message.kind.as_str());
                self.st_subject.push(message.subject);
                self.st_msg_id.push(message.msg_id);
                self.st_payload.push(message.payload);
            }
            self.h_run.push(run_id.as_uuid());
            self.h_seq.push(seq);
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
        let is_new = writes.created.is_some();
        if let Some(created) = writes.created {
            self.add_created(run, created, writes.ending.as_ref());
        } else {
            // Every change to an existing run writes its row, if only to
            // bump the version that writers without the lock check.
            self.r_id.push(run_id.as_uuid());
            self.r_read_version.push(run.read_version);
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
            self.q_id.push(run.request_id.as_uuid());
            self.q_status.push(request.status.as_str());
            self.q_outputs.push(request.outputs);
            self.q_version.push(request.promise_version);
        }
        if let Some(target) = writes.rollout_target {
            self.rt_run.push(run_id.as_uuid());
            self.rt_state.push(target.state.as_str());
            self.rt_error.push(target.error);
        }
        // A new run's steps are inserted with their state.
        let mut changed_steps = if is_new {
            BTreeSet::new()
        } else {
            writes.steps
        };
        // So are new instances: a sibling part's update would not see them.
        for instance in writes.new_instances {
            changed_steps.remove(&instance.step_id);
            let Some(row) = run.steps.get(&instance.step_id) else {
                continue;
            };
            self.ni_run.push(run_id.as_uuid());
            self.ni_status.push(row.status.as_str());
            self.ni_attempt.push(row.attempt);
            self.ni_input.push(row.input.clone());
            self.ni_error.push(row.error.clone());
            self.ni_step.push(instance.step_id);
            self.ni_position.push(instance.position);
            self.ni_instance_of.push(instance.instance_of);
            self.ni_index.push(instance.index);
            self.ni_item.push(instance.item);
        }
        for step_id in changed_steps {
            let Some(row) = run.steps.get(&step_id) else {
                continue;
            };
            self.s_run.push(run_id.as_uuid());
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
            self.n_task.push(a.task_id.as_uuid());
            self.n_run.push(run_id.as_uuid());
            self.n_step.push(a.step_id);
            self.n_attempt.push(a.attempt);
            self.n_kind.push(a.kind.as_str());
            self.n_handler.push(a.handler);
            self.n_queue.push(a.queue);
            self.n_input.push(a.input);
            self.n_deadline.push(a.deadline);
        }
        for (task_id, u) in writes.attempt_updates {
            self.u_task.push(task_id.as_uuid());
            self.u_status.push(u.status.map(AttemptStatus::as_str));
            self.u_worker.push(u.worker);
            self.u_started.push(u.started_at);
            self.u_started_if_unset.push(u.started_at_if_unset);
            self.u_finished.push(u.finished_at);
            self.u_error.push(u.error);
            self.u_heartbeat_at.push(u.heartbeat_at);
            self.u_heartbeat_details.push(u.heartbeat_details);
        }
        for (task_id, kind) in writes.cleared_attempt_timers {
            self.td_task.push(task_id.as_uuid());
            self.td_kind.push(kind.map(TimerKind::as_str));
        }
        if writes.cleared_run_timers {
            self.td_run.push(run_id.as_uuid());
        }
        for t in writes.new_timers {
            self.t_run.push(t.for_run.unwrap_or(run_id).as_uuid());
            self.t_step.push(t.step_id);
            self.t_kind.push(t.kind.as_str());
            self.t_task.push(t.task_id.map(Uuid::from));
            self.t_fire_at.push(t.fire_at);
        }
        cancels.extend(
            writes
                .cancels
                .into_iter()
                .map(|cancel| RunCancel { run_id, cancel }),
        );
    }

    fn add_created(&mut self, run: &Run, created: CreatedRun, ending: Option<&RunEnding>) {
        self.c_run.push(run.run_id.as_uuid());
        self.c_request.push(run.request_id.as_uuid());
        self.c_promise.push(created.promise);
        self.c_version.push(created.version);
        self.c_status.push(run.status.as_str());
        self.c_context.push(run.context.clone());
        self.c_seq.push(run.next_seq - 1);
        self.c_outputs.push(ending.and_then(|e| e.outputs.clone()));
        self.c_error.push(ending.and_then(|e| e.error.clone()));
        self.c_finished.push(ending.is_some_and(|e| e.finished));
        self.c_kind.push(run.kind.as_str());
        for (position, step) in run.promise.spec.workflow.steps.iter().enumerate() {
            let Some(row) = run.steps.get(&step.id) else {
                continue;
            };
            self.cs_run.push(run.run_id.as_uuid());
            self.cs_step.push(step.id.clone());
            self.cs_position.push(position as i32);
            self.cs_status.push(row.status.as_str());
            self.cs_attempt.push(row.attempt);
            self.cs_outputs.push(row.outputs.clone());
            self.cs_input.push(row.input.clone());
            self.cs_error.push(row.error.clone());
        }
    }

    /// One statement for every table that has rows to write: a
    /// data-modifying CTE each. Each CTE touches rows that existed before
    /// the statement (updates, deletes) or rows it creates (inserts), never
    /// both for the same row: the buffer has already folded every change to
    /// one row into one entry, and timers armed then cleared in the same
    /// change were never buffered. Foreign keys between rows inserted by
    /// sibling CTEs hold: they are checked once the whole statement ran.
    pub(super) async fn write(
        &self,
        conn: &mut PgConnection,
        leading: Option<LeadingPart<'_>>,
    ) -> Result<Vec<(i64, String)>, sqlx::Error> {
        let mut statement = Statement::default();
        if let Some(part) = leading {
            statement.part(part.name, part.sql, part.bind);
        }
        if !self.c_run.is_empty() {
            statement.part(
                "created_runs",
                "INSERT INTO fulfil.runs (id, request_id, promise, promise_version, kind, status,
                                          context, history_seq, outputs, error, finished_at, owner)
                 SELECT id, request_id, promise, version, kind, status, context, seq,
                        outputs, error, CASE WHEN finished THEN now() END,
                        (SELECT p.owner FROM fulfil.promises p
                         WHERE p.name = u.promise AND p.version = u.version)
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                             $6::jsonb[], $7::bigint[], $8::jsonb[], $9::text[], $10::bool[],
                             $11::text[])
                      AS u(id, request_id, promise, version, status, context, seq, outputs, error,
                           finished, kind)",
                |a| {
                    a.add(&self.c_run)?;
                    a.add(&self.c_request)?;
                    a.add(&self.c_promise)?;
                    a.add(&self.c_version)?;
                    a.add(&self.c_status)?;
                    a.add(&self.c_context)?;
                    a.add(&self.c_seq)?;
                    a.add(&self.c_outputs)?;
                    a.add(&self.c_error)?;
                    a.add(&self.c_finished)?;
                    a.add(&self.c_kind)
                },
            );
        }
        if !self.cs_run.is_empty() {
            statement.part(
                "created_steps",
                "INSERT INTO fulfil.steps (run_id, step_id, position, status, attempt, outputs, input,
                                           error)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::text[], $5::int[],
                                      $6::jsonb[], $7::jsonb[], $8::text[])",
                |a| {
                    a.add(&self.cs_run)?;
                    a.add(&self.cs_step)?;
                    a.add(&self.cs_position)?;
                    a.add(&self.cs_status)?;
                    a.add(&self.cs_attempt)?;
                    a.add(&self.cs_outputs)?;
                    a.add(&self.cs_input)?;
                    a.add(&self.cs_error)
                },
            );
        }
        if !self.ni_run.is_empty() {
            statement.part(
                "new_instances",
                "INSERT INTO fulfil.steps (run_id, step_id, position, status, attempt, input, error,
                                           instance_of, instance_index, item)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::text[], $5::int[],
                                      $6::jsonb[], $7::text[], $8::text[], $9::int[], $10::jsonb[])",
                |a| {
                    a.add(&self.ni_run)?;
                    a.add(&self.ni_step)?;
                    a.add(&self.ni_position)?;
                    a.add(&self.ni_status)?;
                    a.add(&self.ni_attempt)?;
                    a.add(&self.ni_input)?;
                    a.add(&self.ni_error)?;
                    a.add(&self.ni_instance_of)?;
                    a.add(&self.ni_index)?;
                    a.add(&self.ni_item)
                },
            );
        }
        if !self.h_run.is_empty() {
            statement.part(
                "history",
                "INSERT INTO fulfil.history (run_id, seq, type, step_id, attempt, actor, data)
                 SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::int[],
                                      $6::text[], $7::jsonb[])",
                |a| {
                    a.add(&self.h_run)?;
                    a.add(&self.h_seq)?;
                    a.add(&self.h_type)?;
                    a.add(&self.h_step)?;
                    a.add(&self.h_attempt)?;
                    a.add(&self.h_actor)?;
                    a.add(&self.h_data)
                },
            );
        }
        if !self.st_run.is_empty() {
            // In array order (runs in batch order, each run's events in
            // history order), so each run's rows take increasing ids: the
            // status publisher sends in id order.
            statement.part(
                "status_outbox",
                "INSERT INTO fulfil.status_outbox (run_id, seq, kind, subject, msg_id, payload)
                 SELECT r, s, k, j, m, p
                 FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                             $6::jsonb[]) WITH ORDINALITY AS u(r, s, k, j, m, p, ord)
                 ORDER BY ord",
                |a| {
                    a.add(&self.st_run)?;
                    a.add(&self.st_seq)?;
                    a.add(&self.st_kind)?;
                    a.add(&self.st_subject)?;
                    a.add(&self.st_msg_id)?;
                    a.add(&self.st_payload)
                },
            );
        }
        if !self.r_id.is_empty() {
            statement.part(
                "runs",
                "UPDATE fulfil.runs r SET status = u.status, history_seq = u.seq,
                        version = r.version + 1,
                        cancel_requested = u.cancel_requested, stop_reason = u.stop_reason,
                        outputs = CASE WHEN u.ending THEN u.outputs ELSE r.outputs END,
                        error = CASE WHEN u.ending THEN u.error ELSE r.error END,
                        finished_at = CASE WHEN NOT u.ending THEN r.finished_at
                                           WHEN u.finished THEN now() END
                 FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bool[], $5::text[],
                             $6::bool[], $7::bool[], $8::jsonb[], $9::text[], $10::bigint[])
                      AS u(id, status, seq, cancel_requested, stop_reason, ending, finished, outputs,
                           error, read_version)
                 WHERE r.id = u.id AND (u.read_version IS NULL OR r.version = u.read_version)
                 RETURNING r.id",
                |a| {
                    a.add(&self.r_id)?;
                    a.add(&self.r_status)?;
                    a.add(&self.r_seq)?;
                    a.add(&self.r_cancel_requested)?;
                    a.add(&self.r_stop_reason)?;
                    a.add(&self.r_ending)?;
                    a.add(&self.r_finished)?;
                    a.add(&self.r_outputs)?;
                    a.add(&self.r_error)?;
                    a.add(&self.r_read_version)
                },
            );
        }
        if !self.q_id.is_empty() {
            statement.part(
                "requests",
                "UPDATE fulfil.requests q SET status = u.status, outputs = u.outputs,
                        promise_version = COALESCE(u.version, q.promise_version), updated_at = now()
                 FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::text[])
                      AS u(id, status, outputs, version)
                 WHERE q.id = u.id",
                |a| {
                    a.add(&self.q_id)?;
                    a.add(&self.q_status)?;
                    a.add(&self.q_outputs)?;
                    a.add(&self.q_version)
                },
            );
        }
        if !self.rt_run.is_empty() {
            // A target skipped meanwhile (its rollout cancelled) stays so.
            statement.part(
                "rollout_targets",
                "UPDATE fulfil.rollout_targets t SET state = u.state, error = u.error,
                        updated_at = now()
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS u(run_id, state, error)
                 WHERE t.run_id = u.run_id AND t.state <> 'skipped'",
                |a| {
                    a.add(&self.rt_run)?;
                    a.add(&self.rt_state)?;
                    a.add(&self.rt_error)
                },
            );
        }
        if !self.s_run.is_empty() {
            statement.part(
                "steps",
                "UPDATE fulfil.steps s SET status = u.status, attempt = u.attempt, outputs = u.outputs,
                        input = u.input, error = u.error, compensation_status = u.comp_status,
                        compensation_attempt = u.comp_attempt, compensation_outputs = u.comp_outputs,
                        compensation_error = u.comp_error, updated_at = now()
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int[], $5::jsonb[],
                             $6::jsonb[], $7::text[], $8::text[], $9::int[], $10::jsonb[], $11::text[])
                      AS u(run_id, step_id, status, attempt, outputs, input, error, comp_status,
                           comp_attempt, comp_outputs, comp_error)
                 WHERE s.run_id = u.run_id AND s.step_id = u.step_id",
                |a| {
                    a.add(&self.s_run)?;
                    a.add(&self.s_step)?;
                    a.add(&self.s_status)?;
                    a.add(&self.s_attempt)?;
                    a.add(&self.s_outputs)?;
                    a.add(&self.s_input)?;
                    a.add(&self.s_error)?;
                    a.add(&self.s_comp_status)?;
                    a.add(&self.s_comp_attempt)?;
                    a.add(&self.s_comp_outputs)?;
                    a.add(&self.s_comp_error)
                },
            );
        }
        if !self.n_task.is_empty() {
            statement.part(
                "new_attempts",
                "INSERT INTO fulfil.attempts (task_id, run_id, step_id, attempt, kind, status, handler,
                                              queue, input, deadline)
                 SELECT t, r, s, a, k, $10::text, h, q, i, d
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int[], $5::text[],
                             $6::text[], $7::text[], $8::jsonb[], $9::timestamptz[])
                      AS n(t, r, s, a, k, h, q, i, d)",
                |a| {
                    a.add(&self.n_task)?;
                    a.add(&self.n_run)?;
                    a.add(&self.n_step)?;
                    a.add(&self.n_attempt)?;
                    a.add(&self.n_kind)?;
                    a.add(&self.n_handler)?;
                    a.add(&self.n_queue)?;
                    a.add(&self.n_input)?;
                    a.add(&self.n_deadline)?;
                    a.add(AttemptStatus::Dispatched.as_str())
                },
            );
        }
        if !self.u_task.is_empty() {
            statement.part(
                "attempts",
                "UPDATE fulfil.attempts a SET status = COALESCE(u.status, a.status),
                        worker = COALESCE(u.worker, a.worker),
                        started_at = COALESCE(u.started_at, a.started_at, u.started_if_unset),
                        finished_at = COALESCE(u.finished_at, a.finished_at),
                        error = COALESCE(u.error, a.error),
                        heartbeat_at = COALESCE(u.heartbeat_at, a.heartbeat_at),
                        heartbeat_details = COALESCE(u.heartbeat_details, a.heartbeat_details)
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[],
                             $5::timestamptz[], $6::timestamptz[], $7::jsonb[], $8::timestamptz[],
                             $9::jsonb[])
                      AS u(task_id, status, worker, started_at, started_if_unset, finished_at, error,
                           heartbeat_at, heartbeat_details)
                 WHERE a.task_id = u.task_id",
                |a| {
                    a.add(&self.u_task)?;
                    a.add(&self.u_status)?;
                    a.add(&self.u_worker)?;
                    a.add(&self.u_started)?;
                    a.add(&self.u_started_if_unset)?;
                    a.add(&self.u_finished)?;
                    a.add(&self.u_error)?;
                    a.add(&self.u_heartbeat_at)?;
                    a.add(&self.u_heartbeat_details)
                },
            );
        }
        if !self.td_task.is_empty() {
            statement.part(
                "cleared_attempt_timers",
                "DELETE FROM fulfil.timers t USING UNNEST($1::uuid[], $2::text[]) AS u(task_id, kind)
                 WHERE t.task_id = u.task_id AND (u.kind IS NULL OR t.kind = u.kind)",
                |a| {
                    a.add(&self.td_task)?;
                    a.add(&self.td_kind)
                },
            );
        }
        if !self.td_run.is_empty() {
            statement.part(
                "cleared_run_timers",
                "DELETE FROM fulfil.timers WHERE run_id = ANY($1::uuid[])",
                |a| a.add(&self.td_run),
            );
        }
        if !self.t_run.is_empty() {
            statement.part(
                "new_timers",
                "INSERT INTO fulfil.timers (run_id, step_id, kind, task_id, fire_at)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[],
                                      $5::timestamptz[])",
                |a| {
                    a.add(&self.t_run)?;
                    a.add(&self.t_step)?;
                    a.add(&self.t_kind)?;
                    a.add(&self.t_task)?;
                    a.add(&self.t_fire_at)
                },
            );
        }
        let guarded = self.r_read_version.iter().any(Option::is_some);
        if guarded {
            // Every run in the update is expected to change; one that moved
            // on since it was read aborts the statement, and with it every
            // other part.
            statement.part(
                "stale_guard",
                "SELECT fulfil.refuse_stale_runs((SELECT count(*) FROM runs), $1::int) AS refused",
                |a| a.add(self.r_id.len() as i32),
            );
        }
        let has_outbox = !self.outbox_subject.is_empty();
        if has_outbox {
            statement.part(
                "outbox",
                "INSERT INTO fulfil.outbox (subject, msg_id, payload, fast)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::jsonb[], $4::bool[])
                 RETURNING id, msg_id",
                |a| {
                    a.add(&self.outbox_subject)?;
                    a.add(&self.outbox_msg_id)?;
                    a.add(&self.outbox_payload)?;
                    a.add(&self.outbox_fast)
                },
            );
        }
        // The guard's branch returns no row; it is there to be evaluated, and
        // first: reading it runs the update of the runs, so their row locks
        // are taken (in the order of the runs, which the caller sorts by id)
        // before any other row is touched, as a locking writer takes them.
        let returning = match (has_outbox, guarded) {
            (true, true) => {
                "SELECT 0::bigint, refused FROM stale_guard WHERE refused IS NOT NULL
                 UNION ALL SELECT id, msg_id FROM outbox"
            }
            (true, false) => "SELECT id, msg_id FROM outbox",
            (false, true) => "SELECT 0::bigint, refused FROM stale_guard WHERE refused IS NOT NULL",
            (false, false) => "SELECT 0::bigint, ''::text WHERE false",
        };
        statement.fetch(conn, returning).await
    }
}

/// Cancels open attempts and disarms their timers. Runs after the main
/// statement, so it also sees attempts that statement inserted.
pub(super) async fn write_cancels(
    conn: &mut PgConnection,
    cancels: &[RunCancel],
) -> Result<(), sqlx::Error> {
    let run_ids: Vec<Uuid> = cancels.iter().map(|c| c.run_id.as_uuid()).collect();
    let step_ids: Vec<&str> = cancels.iter().map(|c| c.cancel.step_id.as_str()).collect();
    let kinds: Vec<&str> = cancels.iter().map(|c| c.cancel.kind.as_str()).collect();
    let attempts: Vec<i32> = cancels.iter().map(|c| c.cancel.attempt).collect();
    let reasons: Vec<&str> = cancels.iter().map(|c| c.cancel.reason.as_str()).collect();
    let open: Vec<&str> = AttemptStatus::ALL
        .iter()
        .filter(|s| s.is_open())
        .map(|s| s.as_str())
        .collect();
    sqlx::query(
        "WITH cancelled AS (
             UPDATE fulfil.attempts a SET status = $6::text, finished_at = now(),
                    error = jsonb_build_object('code', 'cancelled', 'message', u.reason, 'retryable', false)
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[])
                  AS u(run_id, step_id, kind, attempt, reason)
             WHERE a.run_id = u.run_id AND a.step_id = u.step_id AND a.kind = u.kind
               AND a.attempt = u.attempt AND a.status = ANY($7::text[])
             RETURNING a.task_id)
         DELETE FROM fulfil.timers WHERE task_id IN (SELECT task_id FROM cancelled)",
    )
    .bind(&run_ids)
    .bind(&step_ids)
    .bind(&kinds)
    .bind(&attempts)
    .bind(&reasons)
    .bind(AttemptStatus::Cancelled.as_str())
    .bind(open)
    .execute(conn)
    .await?;
    Ok(())
}
