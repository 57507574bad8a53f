//! The run state machine, decided in memory: no Postgres, no NATS.
//!
//! A [`Harness`] holds one [`Run`] and a fake of what the store would hold
//! for it (its attempts, armed timers and history). A test feeds the run
//! what happens through the functions the engine itself calls
//! (`apply_result_to`, `apply_progress_to`, `timers::fire_on`,
//! `cancel_locked`, `retry_locked`), then stores the change: the writes that
//! one decision buffered are handed back for assertions and folded into the
//! fake store the way [`super::flush`] writes them. Assertions are on those
//! writes (tasks in the outbox, timers, history events in order) and on the
//! run's state.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use fulfil_bus::NatsNames;
use fulfil_core::dag::CompensationStatus;
use fulfil_core::wire::{
    Outcome, Progress, ProgressMessage, ResultMessage, StepFailure, TaskKind, TaskMessage,
};
use fulfil_core::{Promise, RunStatus, StepStatus};
use serde_json::{Value, json};
use uuid::Uuid;

use super::apply::{Applied, apply_result_to};
use super::load::KnownAttempt;
use super::operator::{OperatorError, RetryPlan, cancel_locked, retry_locked};
use super::progress::apply_progress_to;
use super::writes::{NewTimer, PendingEvent, Writes};
use super::{Run, advance, event};
use crate::timers::{AttemptState, DueTimer, fire_on};

const ENGINE: &str = "engine-test";
const WORKER: &str = "worker-1";
const OPERATOR: &str = "user:ops";

/// reserve -> charge -> ship. `reserve` waits at most a minute for a worker
/// and retries three times (2s, then 6s); `charge` twice, and never on
/// `card_declined`; both declare an undo. `ship` runs once.
const SAGA: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: saga, version: 1.0.0 }
spec:
  workflow:
    steps:
      - id: reserve
        uses: inventory.reserve
        queue: stock
        with: { sku: "${{ params.sku }}" }
        timeout: 30s
        schedule_to_start: 1m
        retry: { max_attempts: 3, initial: 2s, max: 1m, multiplier: 3 }
        compensate:
          uses: inventory.release
          with: { reservation: "${{ steps.reserve.outputs.reservation }}" }
      - id: charge
        needs: [reserve]
        uses: payment.charge
        with: { reservation: "${{ steps.reserve.outputs.reservation }}" }
        retry: { max_attempts: 2, initial: 1s, max: 10s, non_retryable: [card_declined] }
        compensate: { uses: payment.refund }
      - id: ship
        needs: [charge]
        uses: shipping.create
  outputs:
    reservation: "${{ steps.reserve.outputs.reservation }}"
"#;

/// a -> (b, c) -> d: every step but `d` declares an undo; nothing retries.
const DIAMOND: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: diamond, version: 1.0.0 }
spec:
  workflow:
    steps:
      - { id: a, uses: h.a, compensate: { uses: undo.a } }
      - { id: b, uses: h.b, needs: [a], compensate: { uses: undo.b } }
      - { id: c, uses: h.c, needs: [a], compensate: { uses: undo.c } }
      - { id: d, uses: h.d, needs: [b, c] }
"#;

/// first -> second, no undo, no retry.
const CHAIN: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: chain, version: 1.0.0 }
spec:
  workflow:
    steps:
      - { id: first, uses: h.first }
      - { id: second, uses: h.second, needs: [first], with: { from: "${{ steps.first.outputs.n }}" } }
  outputs:
    n: "${{ steps.second.outputs.n }}"
"#;

/// One run and a fake of its stored state.
struct Harness {
    run: Run,
    /// Attempts by task id, with the status the store holds.
    attempts: HashMap<Uuid, KnownAttempt>,
    /// Armed timers.
    timers: Vec<NewTimer>,
    /// Every history event stored, in order.
    history: Vec<PendingEvent>,
}

impl Harness {
    /// Creates a run of `yaml` and starts it, as `requests::start_run` does;
    /// returns the writes of its creation.
    fn start(yaml: &str, params: Value) -> (Harness, Writes) {
        let promise = Arc::new(Promise::parse(yaml).expect("the test Promise is valid"));
        let mut run = Run::new(
            Uuid::now_v7(),
            Uuid::now_v7(),
            json!({ "params": params, "request": {}, "env": {} }),
            promise,
            NatsNames::new("test").expect("a valid prefix"),
            "api:test".to_string(),
            true,
        );
        run.record(event::REQUEST_ACCEPTED, None, None, json!({}));
        run.record(event::RUN_STARTED, None, None, json!({}));
        advance(&mut run).expect("a new run advances");
        let mut harness = Harness {
            run,
            attempts: HashMap::new(),
            timers: Vec::new(),
            history: Vec::new(),
        };
        let writes = harness.store();
        (harness, writes)
    }

    /// Takes the writes buffered by the last decision and applies them to
    /// the fake store, as the flush would.
    fn store(&mut self) -> Writes {
        let writes = std::mem::take(&mut self.run.writes);
        self.run.next_seq += writes.events.len() as i64;
        self.history.extend(writes.events.iter().cloned());
        for a in &writes.new_attempts {
            self.attempts.insert(
                a.task_id,
                KnownAttempt {
                    task_id: a.task_id,
                    run_id: self.run.run_id,
                    step_id: a.step_id.clone(),
                    attempt: a.attempt,
                    status: "dispatched".to_string(),
                    kind: a.kind.to_string(),
                },
            );
        }
        for (task_id, update) in &writes.attempt_updates {
            let attempt = self
                .attempts
                .get_mut(task_id)
                .expect("an update is for a stored attempt");
            if let Some(status) = update.status {
                attempt.status = status.to_string();
            }
        }
        // As the flush's statement: deletes see the timers stored before
        // the change, inserts add the change's own.
        if writes.cleared_run_timers {
            self.timers.clear();
        }
        for (task_id, kind) in &writes.cleared_attempt_timers {
            self.timers
                .retain(|t| t.task_id != Some(*task_id) || kind.is_some_and(|k| k != t.kind));
        }
        self.timers.extend(writes.new_timers.iter().cloned());
        // Cancels run after the main statement, so they see its attempts.
        for cancel in &writes.cancels {
            for a in self.attempts.values_mut() {
                if a.step_id == cancel.step_id
                    && a.kind == cancel.kind
                    && a.attempt == cancel.attempt
                    && a.is_open()
                {
                    a.status = "cancelled".to_string();
                    let task_id = a.task_id;
                    self.timers.retain(|t| t.task_id != Some(task_id));
                }
            }
        }
        writes
    }

    fn step(&self, step_id: &str) -> &super::StepRow {
        self.run.steps.get(step_id).expect("the step exists")
    }

    /// The task id of attempt `attempt` of `step_id`'s `kind`.
    fn task(&self, step_id: &str, kind: TaskKind, attempt: i32) -> Uuid {
        self.attempts
            .values()
            .find(|a| a.step_id == step_id && a.kind == kind.as_str() && a.attempt == attempt)
            .map(|a| a.task_id)
            .unwrap_or_else(|| panic!("no {kind:?} attempt {attempt} of {step_id}"))
    }

    /// The latest attempt of `step_id`'s `kind`.
    fn latest(&self, step_id: &str, kind: TaskKind) -> Uuid {
        self.attempts
            .values()
            .filter(|a| a.step_id == step_id && a.kind == kind.as_str())
            .max_by_key(|a| a.attempt)
            .map(|a| a.task_id)
            .unwrap_or_else(|| panic!("no {kind:?} attempt of {step_id}"))
    }

    /// A worker reports `outcome` for the task `task_id`.
    fn report(&mut self, task_id: Uuid, outcome: Outcome) -> (Applied, Writes) {
        let mut attempt = self
            .attempts
            .get(&task_id)
            .expect("the task was dispatched")
            .clone();
        let now = Utc::now();
        let result = ResultMessage {
            task_id,
            run_id: self.run.run_id,
            step_id: attempt.step_id.clone(),
            attempt: attempt.attempt as u32,
            worker_id: WORKER.to_string(),
            outcome,
            started_at: now - ChronoDuration::milliseconds(20),
            finished_at: now,
        };
        self.run.actor = format!("worker:{WORKER}");
        let applied = apply_result_to(ENGINE, &mut self.run, &mut attempt, &result)
            .expect("a result applies");
        (applied, self.store())
    }

    /// The latest attempt of `step_id`'s `kind` succeeds with `output`.
    fn succeed(&mut self, step_id: &str, kind: TaskKind, output: Value) -> Writes {
        let task_id = self.latest(step_id, kind);
        let (applied, writes) = self.report(task_id, Outcome::Ok { output });
        assert_eq!(applied, Applied::Applied, "{step_id} {kind:?} succeeds");
        writes
    }

    /// The latest attempt of `step_id`'s `kind` fails with `failure`.
    fn fail(&mut self, step_id: &str, kind: TaskKind, failure: StepFailure) -> Writes {
        let task_id = self.latest(step_id, kind);
        let (applied, writes) = self.report(task_id, Outcome::Error(failure));
        assert_eq!(applied, Applied::Applied, "{step_id} {kind:?} fails");
        writes
    }

    /// A worker reports it started `task_id`.
    fn started(&mut self, task_id: Uuid) -> Writes {
        let mut attempt = self
            .attempts
            .get(&task_id)
            .expect("the task was dispatched")
            .clone();
        let report = ProgressMessage {
            task_id,
            run_id: self.run.run_id,
            step_id: attempt.step_id.clone(),
            attempt: attempt.attempt as u32,
            worker_id: WORKER.to_string(),
            progress: Progress::Started,
            at: Utc::now(),
            details: None,
        };
        let applied =
            apply_progress_to(&mut self.run, &mut attempt, &report).expect("a start applies");
        assert_eq!(applied, Applied::Applied);
        self.store()
    }

    /// Fires the armed timer of `kind` for `step_id`, as `timers::fire_due`
    /// does: the timer's decision, then the run advances.
    fn fire(&mut self, kind: &str, step_id: &str) -> Writes {
        let at = self
            .timers
            .iter()
            .position(|t| t.kind == kind && t.step_id == step_id)
            .unwrap_or_else(|| panic!("no {kind} timer armed for {step_id}"));
        let timer = self.timers.remove(at);
        self.fire_timer(kind, step_id, timer.task_id)
    }

    /// Fires a timer whether or not one is armed (a timer claimed just
    /// before the change that made it stale).
    fn fire_timer(&mut self, kind: &str, step_id: &str, task_id: Option<Uuid>) -> Writes {
        let due = DueTimer {
            id: 1,
            run_id: self.run.run_id,
            step_id: step_id.to_string(),
            kind: kind.to_string(),
            task_id,
        };
        let attempt = task_id
            .and_then(|id| self.attempts.get(&id))
            .map(|a| AttemptState {
                attempt: a.attempt,
                status: a.status.clone(),
                kind: a.kind.clone(),
            });
        self.run.actor = format!("engine:{ENGINE}");
        fire_on(&mut self.run, &due, attempt.as_ref()).expect("the timer fires");
        advance(&mut self.run).expect("the run advances");
        self.store()
    }

    /// An operator cancels the run.
    fn cancel(&mut self, compensate: bool) -> Result<Writes, OperatorError> {
        self.run.actor = OPERATOR.to_string();
        cancel_locked(
            &mut self.run,
            OPERATOR,
            compensate,
            Some("no longer needed"),
        )?;
        Ok(self.store())
    }

    /// An operator retries the run.
    fn retry(
        &mut self,
        step: Option<&str>,
        dry_run: bool,
    ) -> Result<(RetryPlan, Writes), OperatorError> {
        self.run.actor = OPERATOR.to_string();
        let plan = retry_locked(&mut self.run, step, dry_run)?;
        Ok((plan, self.store()))
    }

    /// Kinds of every stored history event, in order.
    fn history_kinds(&self) -> Vec<&'static str> {
        self.history.iter().map(|e| e.kind).collect()
    }
}

/// Events of one change: (kind, step, attempt), in order.
fn events(writes: &Writes) -> Vec<(&'static str, Option<&str>, Option<i32>)> {
    writes
        .events
        .iter()
        .map(|e| (e.kind, e.step_id.as_deref(), e.attempt))
        .collect()
}

/// The one event of `kind` in a change.
fn event_of<'a>(writes: &'a Writes, kind: &str) -> &'a PendingEvent {
    let found: Vec<&PendingEvent> = writes.events.iter().filter(|e| e.kind == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} event in {:?}", events(writes));
    found[0]
}

/// Tasks a change put in the outbox, in order.
fn tasks(writes: &Writes) -> Vec<TaskMessage> {
    writes
        .outbox
        .iter()
        .filter(|m| m.subject.starts_with("test.tasks."))
        .map(|m| {
            let task: TaskMessage =
                serde_json::from_value(m.payload.clone()).expect("a task message");
            assert_eq!(
                m.msg_id,
                task.task_id.to_string(),
                "deduplicated by task id"
            );
            task
        })
        .collect()
}

/// (step, kind, attempt) of the tasks of a change.
fn dispatched(writes: &Writes) -> Vec<(String, TaskKind, u32)> {
    tasks(writes)
        .into_iter()
        .map(|t| (t.step_id, t.kind, t.attempt))
        .collect()
}

/// Subjects of the run events (CloudEvents) a change publishes.
fn run_events(writes: &Writes) -> Vec<&str> {
    writes
        .outbox
        .iter()
        .filter(|m| m.subject.starts_with("test.events."))
        .map(|m| m.subject.as_str())
        .collect()
}

/// Timers a change arms: (kind, step).
fn armed(writes: &Writes) -> Vec<(&'static str, &str)> {
    writes
        .new_timers
        .iter()
        .map(|t| (t.kind, t.step_id.as_str()))
        .collect()
}

fn retryable(message: &str) -> StepFailure {
    StepFailure {
        message: message.to_string(),
        code: Some("http_status_503".to_string()),
        retryable: true,
        retry_after_ms: None,
    }
}

fn permanent(message: &str) -> StepFailure {
    StepFailure {
        message: message.to_string(),
        code: Some("invalid_input".to_string()),
        retryable: false,
        retry_after_ms: None,
    }
}

/// Asserts `at` lies in `[from + delay, to + delay]`: a time computed as
/// "now + delay" by a decision made between `from` and `to`.
fn assert_after(at: DateTime<Utc>, from: DateTime<Utc>, to: DateTime<Utc>, delay: ChronoDuration) {
    assert!(
        at >= from + delay && at <= to + delay,
        "{at} is not {delay} after a decision made between {from} and {to}"
    );
}

/// A change that only records that a report was ignored.
fn assert_only_ignored(writes: &Writes) {
    assert_eq!(
        events(writes).iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![event::RESULT_IGNORED]
    );
    assert!(writes.outbox.is_empty(), "nothing published");
    assert!(writes.steps.is_empty(), "no step changed");
    assert!(!writes.run, "the run row is untouched");
    assert!(writes.ending.is_none() && writes.request.is_none());
    assert!(writes.new_attempts.is_empty() && writes.attempt_updates.is_empty());
    assert!(writes.cancels.is_empty());
    assert!(writes.new_timers.is_empty() && writes.cleared_attempt_timers.is_empty());
    assert!(!writes.cleared_run_timers);
}

#[test]
fn start_dispatches_roots_with_attempt_deadline_and_queue_timer() {
    let before = Utc::now();
    let (h, writes) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    let after = Utc::now();

    assert_eq!(h.run.status, RunStatus::Running);
    assert!(writes.created.is_some(), "a new run is inserted");
    assert_eq!(
        events(&writes),
        vec![
            (event::REQUEST_ACCEPTED, None, None),
            (event::RUN_STARTED, None, None),
            ("step.dispatched", Some("reserve"), Some(1)),
        ]
    );
    // Only the root starts; its input is rendered from the params.
    let sent = tasks(&writes);
    assert_eq!(sent.len(), 1);
    let task = &sent[0];
    assert_eq!(
        (task.step_id.as_str(), task.attempt, task.kind),
        ("reserve", 1, TaskKind::Action)
    );
    assert_eq!(task.handler, "inventory.reserve");
    assert_eq!(task.input, json!({ "sku": "A-1" }));
    assert_eq!(task.idempotency_key, format!("{}/reserve", h.run.run_id));
    assert_eq!(task.timeout_ms, Some(30_000));
    assert_eq!(writes.outbox[0].subject, "test.tasks.stock");
    // The deadline allows the queue wait plus the attempt's timeout.
    assert_after(task.deadline, before, after, ChronoDuration::seconds(90));
    assert_eq!(armed(&writes), vec![("schedule_to_start", "reserve")]);
    assert_eq!(writes.new_timers[0].task_id, Some(task.task_id));
    assert_after(
        writes.new_timers[0].fire_at,
        before,
        after,
        ChronoDuration::seconds(60),
    );
    assert_eq!(h.step("reserve").status, StepStatus::Ready);
    assert_eq!(h.step("reserve").attempt, 1);
    assert_eq!(h.step("charge").status, StepStatus::Pending);
    assert_eq!(h.step("ship").status, StepStatus::Pending);
}

#[test]
fn retry_backs_off_then_succeeds() {
    let (mut h, first) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    let first_task = tasks(&first)[0].task_id;

    // Attempt 1 fails retryably: no task, a retry timer at the first backoff.
    let before = Utc::now();
    let writes = h.fail("reserve", TaskKind::Action, retryable("503 from stock"));
    let after = Utc::now();
    assert_eq!(
        events(&writes),
        vec![("step.retry_scheduled", Some("reserve"), Some(1))]
    );
    let scheduled = &event_of(&writes, "step.retry_scheduled").data;
    assert_eq!(scheduled["next_attempt"], 2);
    assert_eq!(scheduled["delay_ms"], 2000);
    assert!(
        tasks(&writes).is_empty(),
        "nothing dispatched before the backoff"
    );
    assert_eq!(armed(&writes), vec![("retry", "reserve")]);
    assert_after(
        writes.new_timers[0].fire_at,
        before,
        after,
        ChronoDuration::seconds(2),
    );
    // The failed attempt's queue timer is disarmed with it.
    assert!(writes.cleared_attempt_timers.contains(&(first_task, None)));
    assert_eq!(h.step("reserve").status, StepStatus::Retrying);
    assert_eq!(h.step("reserve").error.as_deref(), Some("503 from stock"));
    assert_eq!(h.attempts[&first_task].status, "failed");
    assert_eq!(h.run.status, RunStatus::Running);

    // The timer dispatches attempt 2: a new task id, the same idempotency key.
    let writes = h.fire("retry", "reserve");
    assert_eq!(
        events(&writes),
        vec![("step.dispatched", Some("reserve"), Some(2))]
    );
    let second = tasks(&writes);
    assert_eq!(
        dispatched(&writes),
        vec![("reserve".into(), TaskKind::Action, 2)]
    );
    assert_ne!(second[0].task_id, first_task);
    assert_eq!(
        second[0].idempotency_key,
        format!("{}/reserve", h.run.run_id)
    );
    assert_eq!(h.step("reserve").status, StepStatus::Ready);
    assert_eq!(h.step("reserve").attempt, 2);

    // Attempt 2 fails too: the next delay is multiplied (2s * 3).
    let writes = h.fail("reserve", TaskKind::Action, retryable("503 again"));
    let scheduled = &event_of(&writes, "step.retry_scheduled").data;
    assert_eq!(scheduled["next_attempt"], 3);
    assert_eq!(scheduled["delay_ms"], 6000);
    let writes = h.fire("retry", "reserve");
    assert_eq!(
        dispatched(&writes),
        vec![("reserve".into(), TaskKind::Action, 3)]
    );

    // Attempt 3 succeeds, and the next step starts with its output.
    let writes = h.succeed(
        "reserve",
        TaskKind::Action,
        json!({ "reservation": "r-42" }),
    );
    assert_eq!(
        events(&writes),
        vec![
            ("step.succeeded", Some("reserve"), Some(3)),
            ("step.dispatched", Some("charge"), Some(1)),
        ]
    );
    let next = tasks(&writes);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].step_id, "charge");
    assert_eq!(next[0].input, json!({ "reservation": "r-42" }));
    assert_eq!(h.step("reserve").status, StepStatus::Succeeded);
    assert_eq!(h.step("reserve").error, None);
    assert!(h.timers.iter().all(|t| t.step_id != "reserve"));
}

#[test]
fn retry_after_from_the_worker_delays_past_the_backoff() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    let mut failure = retryable("rate limited");
    failure.retry_after_ms = Some(45_000);
    let before = Utc::now();
    let writes = h.fail("reserve", TaskKind::Action, failure);
    let after = Utc::now();
    assert_eq!(
        event_of(&writes, "step.retry_scheduled").data["delay_ms"],
        45_000
    );
    assert_after(
        writes.new_timers[0].fire_at,
        before,
        after,
        ChronoDuration::seconds(45),
    );

    // A retry_after shorter than the backoff does not shorten it.
    h.fire("retry", "reserve");
    let mut failure = retryable("rate limited");
    failure.retry_after_ms = Some(10);
    let writes = h.fail("reserve", TaskKind::Action, failure);
    assert_eq!(
        event_of(&writes, "step.retry_scheduled").data["delay_ms"],
        6000
    );
    assert_eq!(h.step("reserve").status, StepStatus::Retrying);
}

#[test]
fn exhausting_max_attempts_fails_the_step_then_the_run_compensates() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    h.succeed(
        "reserve",
        TaskKind::Action,
        json!({ "reservation": "r-42" }),
    );
    let writes = h.fail("charge", TaskKind::Action, retryable("gateway down"));
    assert_eq!(armed(&writes), vec![("retry", "charge")]);
    assert_eq!(
        event_of(&writes, "step.retry_scheduled").data["delay_ms"],
        1000
    );
    h.fire("retry", "charge");

    // charge allows two attempts: the second failure is final.
    let writes = h.fail("charge", TaskKind::Action, retryable("gateway down"));
    assert_eq!(
        events(&writes),
        vec![
            ("step.failed", Some("charge"), Some(2)),
            (event::RUN_COMPENSATING, None, None),
            ("compensation.dispatched", Some("reserve"), Some(1)),
        ]
    );
    let failed = &event_of(&writes, "step.failed").data;
    assert_eq!(failed["final"], true);
    assert_eq!(failed["code"], "http_status_503");
    assert_eq!(
        h.step("charge").error.as_deref(),
        Some("gateway down (gave up after 2 attempts)")
    );
    assert!(armed(&writes).iter().all(|(kind, _)| *kind != "retry"));
    assert_eq!(h.step("charge").status, StepStatus::Failed);
    assert_eq!(h.step("ship").status, StepStatus::Cancelled);
    assert_eq!(h.run.status, RunStatus::Compensating);
    let undo = &event_of(&writes, event::RUN_COMPENSATING).data;
    assert_eq!(undo["undo"], json!(["reserve"]));

    // The undo gets the output of the step it undoes, under its own key.
    let sent = tasks(&writes);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].kind, TaskKind::Compensation);
    assert_eq!(sent[0].handler, "inventory.release");
    assert_eq!(sent[0].input, json!({ "reservation": "r-42" }));
    assert_eq!(
        sent[0].idempotency_key,
        format!("{}/reserve/compensate", h.run.run_id)
    );
    assert_eq!(
        h.step("reserve").compensation,
        Some(CompensationStatus::Ready)
    );
    assert_eq!(h.step("reserve").compensation_attempt, 1);

    let writes = h.succeed(
        "reserve",
        TaskKind::Compensation,
        json!({ "released": true }),
    );
    assert_eq!(
        events(&writes),
        vec![
            ("compensation.succeeded", Some("reserve"), Some(1)),
            (event::RUN_COMPENSATED, None, None),
        ]
    );
    assert_eq!(h.run.status, RunStatus::Compensated);
    assert_eq!(h.step("reserve").status, StepStatus::Compensated);
    assert_eq!(
        h.step("reserve").compensation_outputs,
        Some(json!({ "released": true }))
    );
    let ending = writes.ending.as_ref().expect("the run ends");
    assert!(ending.finished);
    assert_eq!(
        ending.error.as_deref(),
        Some("step charge failed: gateway down (gave up after 2 attempts); compensated reserve")
    );
    assert_eq!(
        writes.request.as_ref().map(|r| r.status),
        Some("compensated")
    );
    assert!(writes.cleared_run_timers);
    assert_eq!(run_events(&writes), vec!["test.events.run.compensated"]);
}

#[test]
fn permanent_failure_fails_without_retry_then_compensates() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    h.succeed(
        "reserve",
        TaskKind::Action,
        json!({ "reservation": "r-42" }),
    );
    let writes = h.fail("charge", TaskKind::Action, permanent("bad card number"));
    assert_eq!(
        events(&writes),
        vec![
            ("step.failed", Some("charge"), Some(1)),
            (event::RUN_COMPENSATING, None, None),
            ("compensation.dispatched", Some("reserve"), Some(1)),
        ]
    );
    // Attempts were left (max 2), but the handler said no retry can help.
    assert!(armed(&writes).iter().all(|(kind, _)| *kind != "retry"));
    assert_eq!(h.step("charge").attempt, 1);
    assert_eq!(h.step("charge").error.as_deref(), Some("bad card number"));
    assert_eq!(
        event_of(&writes, "step.failed").data["code"],
        "invalid_input"
    );
    assert_eq!(
        dispatched(&writes),
        vec![("reserve".into(), TaskKind::Compensation, 1)]
    );
    assert_eq!(h.run.status, RunStatus::Compensating);
    // The step that failed is not undone: it has nothing to undo.
    assert_eq!(h.step("charge").compensation, None);

    h.succeed("reserve", TaskKind::Compensation, json!({}));
    assert_eq!(h.run.status, RunStatus::Compensated);
    assert_eq!(
        h.history_kinds(),
        vec![
            event::REQUEST_ACCEPTED,
            event::RUN_STARTED,
            "step.dispatched",
            "step.succeeded",
            "step.dispatched",
            "step.failed",
            event::RUN_COMPENSATING,
            "compensation.dispatched",
            "compensation.succeeded",
            event::RUN_COMPENSATED,
        ]
    );
}

#[test]
fn non_retryable_code_fails_at_once_whatever_the_worker_says() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    h.succeed(
        "reserve",
        TaskKind::Action,
        json!({ "reservation": "r-42" }),
    );
    let declined = StepFailure {
        message: "declined".to_string(),
        code: Some("card_declined".to_string()),
        retryable: true,
        retry_after_ms: Some(1000),
    };
    let writes = h.fail("charge", TaskKind::Action, declined);
    assert!(armed(&writes).iter().all(|(kind, _)| *kind != "retry"));
    assert_eq!(
        event_of(&writes, "step.failed").data["code"],
        "card_declined"
    );
    // Not exhausted, so the message does not claim it gave up after retries.
    assert_eq!(h.step("charge").error.as_deref(), Some("declined"));
    assert_eq!(h.step("charge").status, StepStatus::Failed);
    assert_eq!(h.run.status, RunStatus::Compensating);
}

#[test]
fn compensation_undoes_succeeded_steps_in_reverse_dependency_order() {
    let (mut h, _) = Harness::start(DIAMOND, json!({}));
    let writes = h.succeed("a", TaskKind::Action, json!({}));
    assert_eq!(
        dispatched(&writes),
        vec![
            ("b".into(), TaskKind::Action, 1),
            ("c".into(), TaskKind::Action, 1),
        ]
    );
    h.succeed("b", TaskKind::Action, json!({}));
    let writes = h.succeed("c", TaskKind::Action, json!({}));
    assert_eq!(dispatched(&writes), vec![("d".into(), TaskKind::Action, 1)]);

    // d fails: b and c, the dependents of a, are undone first, together.
    let writes = h.fail("d", TaskKind::Action, permanent("cannot"));
    assert_eq!(
        dispatched(&writes),
        vec![
            ("b".into(), TaskKind::Compensation, 1),
            ("c".into(), TaskKind::Compensation, 1),
        ]
    );
    assert_eq!(
        event_of(&writes, event::RUN_COMPENSATING).data["undo"],
        json!(["a", "b", "c"])
    );
    assert_eq!(h.step("a").compensation, None, "a waits for b and c");

    // a waits while any of its dependents is not undone yet.
    let writes = h.succeed("b", TaskKind::Compensation, json!({}));
    assert!(tasks(&writes).is_empty(), "a waits for c");
    assert_eq!(h.run.status, RunStatus::Compensating);
    let writes = h.succeed("c", TaskKind::Compensation, json!({}));
    assert_eq!(
        dispatched(&writes),
        vec![("a".into(), TaskKind::Compensation, 1)]
    );
    let writes = h.succeed("a", TaskKind::Compensation, json!({}));
    assert_eq!(h.run.status, RunStatus::Compensated);
    assert_eq!(
        writes.ending.as_ref().and_then(|e| e.error.as_deref()),
        Some("step d failed: cannot; compensated a, b, c")
    );
    let undone: Vec<&str> = h
        .history
        .iter()
        .filter(|e| e.kind == "compensation.succeeded")
        .filter_map(|e| e.step_id.as_deref())
        .collect();
    assert_eq!(undone, vec!["b", "c", "a"]);
    for step in ["a", "b", "c"] {
        assert_eq!(h.step(step).status, StepStatus::Compensated);
    }
    assert_eq!(h.step("d").status, StepStatus::Failed);
}

#[test]
fn failed_compensation_fails_the_run_naming_it_and_stops_the_undo() {
    let (mut h, _) = Harness::start(DIAMOND, json!({}));
    h.succeed("a", TaskKind::Action, json!({}));
    h.succeed("b", TaskKind::Action, json!({}));
    h.succeed("c", TaskKind::Action, json!({}));
    h.fail("d", TaskKind::Action, permanent("cannot"));

    // b's undo fails for good (no retry policy) while c's is in flight:
    // the run waits for c before it ends.
    let writes = h.fail("b", TaskKind::Compensation, permanent("refund rejected"));
    assert_eq!(
        events(&writes),
        vec![("compensation.failed", Some("b"), Some(1))]
    );
    assert_eq!(event_of(&writes, "compensation.failed").data["final"], true);
    assert!(armed(&writes).is_empty(), "no compensation retry");
    assert_eq!(h.step("b").compensation, Some(CompensationStatus::Failed));
    assert_eq!(
        h.step("b").compensation_error.as_deref(),
        Some("refund rejected")
    );
    assert_eq!(h.run.status, RunStatus::Compensating);
    assert!(writes.ending.is_none());

    let writes = h.succeed("c", TaskKind::Compensation, json!({}));
    assert_eq!(
        events(&writes),
        vec![
            ("compensation.succeeded", Some("c"), Some(1)),
            (event::RUN_FAILED, None, None),
        ]
    );
    assert!(tasks(&writes).is_empty(), "a is never undone");
    assert_eq!(h.run.status, RunStatus::Failed);
    assert_eq!(h.step("a").compensation, None);
    assert_eq!(
        writes.ending.as_ref().and_then(|e| e.error.as_deref()),
        Some("compensation of step b failed: refund rejected")
    );
    assert_eq!(writes.request.as_ref().map(|r| r.status), Some("failed"));
    assert_eq!(run_events(&writes), vec!["test.events.run.failed"]);
}

#[test]
fn cancel_without_compensation_abandons_in_flight_work_and_ends_at_once() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    h.succeed(
        "reserve",
        TaskKind::Action,
        json!({ "reservation": "r-42" }),
    );
    let charge = h.latest("charge", TaskKind::Action);
    let writes = h.started(charge);
    assert_eq!(armed(&writes), vec![("attempt_timeout", "charge")]);
    assert_eq!(h.step("charge").status, StepStatus::Running);

    let writes = h.cancel(false).expect("a running run can be cancelled");
    assert_eq!(
        events(&writes),
        vec![
            (event::RUN_CANCEL_REQUESTED, None, None),
            (event::STEP_CANCELLED, Some("charge"), Some(1)),
            (event::RUN_CANCELLED, None, None),
        ]
    );
    assert_eq!(writes.cancels.len(), 1);
    assert_eq!(
        (
            writes.cancels[0].step_id.as_str(),
            writes.cancels[0].kind,
            writes.cancels[0].attempt
        ),
        ("charge", "action", 1)
    );
    assert!(tasks(&writes).is_empty(), "nothing is undone");
    assert_eq!(run_events(&writes), vec!["test.events.run.cancelled"]);
    assert_eq!(h.run.status, RunStatus::Cancelled);
    assert!(h.run.cancel_requested);
    assert_eq!(h.step("charge").status, StepStatus::Cancelled);
    assert_eq!(h.step("ship").status, StepStatus::Cancelled);
    assert_eq!(h.step("reserve").status, StepStatus::Succeeded);
    assert_eq!(h.step("reserve").compensation, None);
    let ending = writes.ending.as_ref().expect("the run ends");
    assert_eq!(
        ending.error.as_deref(),
        Some("cancelled by user:ops: no longer needed")
    );
    assert!(writes.cleared_run_timers);
    assert!(h.timers.is_empty(), "the attempt timeout is disarmed");
    assert_eq!(h.attempts[&charge].status, "cancelled");

    // The abandoned attempt's late result changes nothing.
    let (applied, writes) = h.report(charge, Outcome::Ok { output: json!({}) });
    assert_eq!(
        applied,
        Applied::Ignored("attempt 1 is already cancelled".to_string())
    );
    assert_only_ignored(&writes);
    assert_eq!(h.step("charge").status, StepStatus::Cancelled);

    // A second cancel is refused and buffers nothing.
    let refused = h.cancel(false);
    assert!(
        matches!(refused, Err(OperatorError::Conflict(_))),
        "{refused:?}"
    );
    assert!(h.run.writes.is_empty());
}

#[test]
fn cancel_with_compensation_lets_in_flight_steps_finish_then_undoes_them() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    h.succeed(
        "reserve",
        TaskKind::Action,
        json!({ "reservation": "r-42" }),
    );

    let writes = h.cancel(true).expect("a running run can be cancelled");
    assert_eq!(
        events(&writes),
        vec![(event::RUN_CANCEL_REQUESTED, None, None)]
    );
    assert!(writes.cancels.is_empty(), "in-flight charge finishes");
    assert!(writes.outbox.is_empty());
    assert_eq!(h.run.status, RunStatus::Running);
    assert_eq!(h.step("charge").status, StepStatus::Ready);
    assert_eq!(h.step("ship").status, StepStatus::Cancelled);
    // Asking again with compensation is refused: it is already happening.
    assert!(matches!(h.cancel(true), Err(OperatorError::Conflict(_))));
    assert!(h.run.writes.is_empty());

    // charge succeeds; nothing new starts, and the undo begins with it.
    let writes = h.succeed("charge", TaskKind::Action, json!({ "payment": "p-1" }));
    assert_eq!(
        events(&writes),
        vec![
            ("step.succeeded", Some("charge"), Some(1)),
            (event::RUN_COMPENSATING, None, None),
            ("compensation.dispatched", Some("charge"), Some(1)),
        ]
    );
    assert_eq!(
        dispatched(&writes),
        vec![("charge".into(), TaskKind::Compensation, 1)]
    );
    assert_eq!(h.run.status, RunStatus::Compensating);

    let writes = h.succeed("charge", TaskKind::Compensation, json!({}));
    assert_eq!(
        dispatched(&writes),
        vec![("reserve".into(), TaskKind::Compensation, 1)]
    );
    let writes = h.succeed("reserve", TaskKind::Compensation, json!({}));
    assert_eq!(
        events(&writes),
        vec![
            ("compensation.succeeded", Some("reserve"), Some(1)),
            (event::RUN_CANCELLED, None, None),
        ]
    );
    // A cancelled run ends cancelled, not compensated, with the cancel as reason.
    assert_eq!(h.run.status, RunStatus::Cancelled);
    assert_eq!(
        writes.ending.as_ref().and_then(|e| e.error.as_deref()),
        Some("cancelled by user:ops: no longer needed; compensated charge, reserve")
    );
    assert_eq!(writes.request.as_ref().map(|r| r.status), Some("cancelled"));
    // Nothing new started after the cancel: only reserve and charge ran.
    let started: Vec<&str> = h
        .history
        .iter()
        .filter(|e| e.kind == "step.dispatched")
        .filter_map(|e| e.step_id.as_deref())
        .collect();
    assert_eq!(started, vec!["reserve", "charge"]);
    assert_eq!(h.step("ship").status, StepStatus::Cancelled);
}

#[test]
fn stale_results_are_recorded_as_ignored_and_change_nothing() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    let first = h.task("reserve", TaskKind::Action, 1);
    let writes = h.started(first);
    // Started: the queue timer is disarmed, the attempt's timeout armed
    // (its timeout plus a grace).
    assert!(writes.cleared_attempt_timers.contains(&(first, None)));
    assert_eq!(armed(&writes), vec![("attempt_timeout", "reserve")]);

    // The attempt times out: a retryable failure like any other.
    let writes = h.fire("attempt_timeout", "reserve");
    assert_eq!(
        events(&writes),
        vec![
            ("step.timed_out", Some("reserve"), Some(1)),
            ("step.retry_scheduled", Some("reserve"), Some(1)),
        ]
    );
    assert_eq!(h.attempts[&first].status, "timed_out");
    assert_eq!(h.step("reserve").status, StepStatus::Retrying);
    h.fire("retry", "reserve");
    let second = h.task("reserve", TaskKind::Action, 2);

    // The timed-out attempt's result arrives late.
    let steps_before = h.run.steps.clone();
    let (applied, writes) = h.report(first, Outcome::Ok { output: json!({}) });
    assert_eq!(
        applied,
        Applied::Ignored("attempt 1 is already timed_out".to_string())
    );
    assert_only_ignored(&writes);
    let ignored = &event_of(&writes, event::RESULT_IGNORED).data;
    assert_eq!(ignored["task_id"], json!(first));
    assert_eq!(h.step("reserve").status, StepStatus::Ready);
    assert_eq!(h.step("reserve").attempt, 2);

    // An older attempt still open (a stale copy of the store): ignored by
    // its number.
    h.attempts.get_mut(&first).expect("stored").status = "dispatched".to_string();
    let (applied, writes) = h.report(first, Outcome::Error(retryable("late")));
    assert_eq!(
        applied,
        Applied::Ignored("attempt 1 is stale; the current attempt is 2".to_string())
    );
    assert_only_ignored(&writes);

    // A timer of the old attempt that fires late does nothing either.
    let writes = h.fire_timer("attempt_timeout", "reserve", Some(first));
    assert!(writes.is_empty(), "a stale timer writes nothing");

    // The current attempt's result applies once; its redelivery is ignored.
    h.succeed(
        "reserve",
        TaskKind::Action,
        json!({ "reservation": "r-42" }),
    );
    let (applied, writes) = h.report(second, Outcome::Error(permanent("dup")));
    assert_eq!(
        applied,
        Applied::Ignored("attempt 2 is already succeeded".to_string())
    );
    assert_only_ignored(&writes);
    assert_eq!(h.step("reserve").status, StepStatus::Succeeded);
    assert_eq!(h.step("charge").status, StepStatus::Ready);
    // Every step other than reserve is as it was before the stale reports.
    assert_eq!(
        steps_before["ship"].status,
        h.step("ship").status,
        "ship untouched"
    );
}

#[test]
fn operator_retry_reruns_what_failed_and_keeps_what_succeeded() {
    let (mut h, _) = Harness::start(CHAIN, json!({}));
    h.succeed("first", TaskKind::Action, json!({ "n": 7 }));
    let writes = h.fail("second", TaskKind::Action, permanent("no"));
    assert_eq!(h.run.status, RunStatus::Failed, "nothing to undo: it fails");
    assert_eq!(
        writes.ending.as_ref().and_then(|e| e.error.as_deref()),
        Some("step second failed: no")
    );

    // A dry run plans and changes nothing.
    let (plan, writes) = h.retry(None, true).expect("a failed run can be retried");
    assert_eq!(plan.rerun, vec!["second"]);
    assert_eq!(plan.kept, vec!["first"]);
    assert!(!plan.applied);
    assert!(writes.is_empty());
    assert_eq!(h.run.status, RunStatus::Failed);

    let (plan, writes) = h.retry(None, false).expect("a failed run can be retried");
    assert!(plan.applied);
    assert_eq!(
        events(&writes),
        vec![
            (event::RUN_RETRIED, None, None),
            ("step.dispatched", Some("second"), Some(2)),
        ]
    );
    assert_eq!(h.history.last().map(|e| e.actor.as_str()), Some(OPERATOR));
    let sent = tasks(&writes);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].input,
        json!({ "from": 7 }),
        "kept outputs still feed it"
    );
    assert_eq!(h.run.status, RunStatus::Running);
    let ending = writes.ending.as_ref().expect("the ending is cleared");
    assert!(!ending.finished && ending.error.is_none());
    assert_eq!(writes.request.as_ref().map(|r| r.status), Some("running"));
    assert_eq!(h.step("first").status, StepStatus::Succeeded);

    // Only a finished run that did not succeed can be retried.
    assert!(matches!(
        h.retry(None, false),
        Err(OperatorError::Conflict(_))
    ));
    assert!(h.run.writes.is_empty());

    let writes = h.succeed("second", TaskKind::Action, json!({ "n": 8 }));
    assert_eq!(h.run.status, RunStatus::Succeeded);
    assert_eq!(
        writes.ending.as_ref().and_then(|e| e.outputs.clone()),
        Some(json!({ "n": 8 }))
    );
    assert_eq!(run_events(&writes), vec!["test.events.run.succeeded"]);
}
