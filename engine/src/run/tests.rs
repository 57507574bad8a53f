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
use fulfil_core::ids::{RequestId, RunId, StepId, TaskId};
use fulfil_core::status::{AttemptStatus, RequestStatus, RunKind, TimerKind};
use fulfil_core::wire::{
    Outcome, Progress, ProgressMessage, ResultMessage, StepFailure, TaskKind, TaskMessage,
};
use fulfil_core::{Promise, RunStatus, StepStatus};
use serde_json::{Value, json};

use super::apply::{Applied, apply_result_to};
use super::load::KnownAttempt;
use super::operator::{OperatorError, RetryPlan, cancel_locked, retry_locked};
use super::progress::apply_progress_to;
use super::writes::{NewTimer, PendingEvent, Writes};
use super::{NewRun, Run, RunError, advance, event};
use crate::timers::{AttemptState, DueTimer, fire_on};

mod cancel;
mod compensation;
mod deleting;
mod dispatch;
mod for_each;
mod invariants;
mod operator;
mod reconcile;
mod retry;
mod stale;
mod status_events;
mod timeouts;
mod upgrade;
mod waits;

const ENGINE: &str = "engine-test";
const WORKER: &str = "worker-1";
const OPERATOR: &str = "user:ops";

/// reserve -> charge -> ship. `reserve` waits at most a minute for a worker
/// and retries three times (2s, then 6s); `charge` twice, and never on
/// `card_declined`; both declare an undo, and reserve's undo runs twice at
/// most (5s apart). `ship` runs once.
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
          retry: { max_attempts: 2, initial: 5s }
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
      - id: second
        uses: h.second
        needs: [first]
        with: { from: "${{ steps.first.outputs.n }}" }
  outputs:
    n: "${{ steps.second.outputs.n }}"
"#;

/// lease -> probe, within ten minutes. `probe` must be taken by a worker
/// within 30s, heartbeat every 10s and finish within a minute; it runs at
/// most three times, 1s apart at first.
const PROBE: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: probe, version: 1.0.0 }
spec:
  timeout: 10m
  workflow:
    steps:
      - id: lease
        uses: h.lease
        compensate: { uses: h.unlease, timeout: 20s }
      - id: probe
        needs: [lease]
        uses: h.probe
        timeout: 1m
        schedule_to_start: 30s
        heartbeat_timeout: 10s
        retry: { max_attempts: 3, initial: 1s }
"#;

/// One run and a fake of its stored state.
struct Harness {
    run: Run,
    /// Attempts by task id, with the status the store holds.
    attempts: HashMap<TaskId, KnownAttempt>,
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
        let mut run = Run::new(NewRun {
            kind: RunKind::Configure,
            run_id: RunId::generate(),
            request_id: RequestId::generate(),
            context: json!({ "params": params, "request": {}, "env": {} }),
            promise,
            names: NatsNames::new("test").expect("a valid prefix"),
            actor: "api:test".to_string(),
            fast_publish: true,
        });
        run.record(event::REQUEST_ACCEPTED, None, None, json!({}));
        run.record(event::RUN_STARTED, None, None, json!({}));
        if let Some(limit) = run.promise.run_timeout() {
            let fire_at =
                Utc::now() + ChronoDuration::from_std(limit).expect("a test timeout fits");
            run.add_timer(TimerKind::RunTimeout, "", None, fire_at);
        }
        advance(&mut run).expect("a new run advances");
        Harness::of(run)
    }

    /// A harness over `run`, not stored yet; returns the writes it has
    /// buffered.
    fn of(run: Run) -> (Harness, Writes) {
        let mut harness = Harness {
            run,
            attempts: HashMap::new(),
            timers: Vec::new(),
            history: Vec::new(),
        };
        let writes = harness.store();
        (harness, writes)
    }

    /// A re-run of kind `kind` (reconcile, upgrade) of `yaml`'s workflow
    /// for a request filed with `{name: orders}` whose live outputs are
    /// `{db: db-1}`, started as `crate::reconcile::start_rerun` starts one.
    fn rerun(kind: RunKind, yaml: &str) -> (Harness, Writes) {
        let promise = Arc::new(Promise::parse(yaml).expect("the test Promise is valid"));
        let mut run = Run::new(NewRun {
            kind,
            run_id: RunId::generate(),
            request_id: RequestId::generate(),
            context: json!({ "params": { "name": "orders" },
                             "request": { "outputs": { "db": "db-1" } } }),
            promise,
            names: NatsNames::new("test").expect("a valid prefix"),
            actor: "user:ops".to_string(),
            fast_publish: true,
        });
        run.record(event::RUN_STARTED, None, None, json!({}));
        advance(&mut run).expect("a new run advances");
        Harness::of(run)
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
                    status: AttemptStatus::Dispatched,
                    kind: a.kind,
                },
            );
        }
        for (task_id, update) in &writes.attempt_updates {
            let attempt = self
                .attempts
                .get_mut(task_id)
                .expect("an update is for a stored attempt");
            if let Some(status) = update.status {
                attempt.status = status;
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
                    a.status = AttemptStatus::Cancelled;
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
    fn task(&self, step_id: &str, kind: TaskKind, attempt: i32) -> TaskId {
        self.attempts
            .values()
            .find(|a| a.step_id == step_id && a.kind == kind && a.attempt == attempt)
            .map(|a| a.task_id)
            .unwrap_or_else(|| panic!("no {kind:?} attempt {attempt} of {step_id}"))
    }

    /// The latest attempt of `step_id`'s `kind`.
    fn latest(&self, step_id: &str, kind: TaskKind) -> TaskId {
        self.attempts
            .values()
            .filter(|a| a.step_id == step_id && a.kind == kind)
            .max_by_key(|a| a.attempt)
            .map(|a| a.task_id)
            .unwrap_or_else(|| panic!("no {kind:?} attempt of {step_id}"))
    }

    /// A worker reports `outcome` for the task `task_id`.
    fn report(&mut self, task_id: TaskId, outcome: Outcome) -> (Applied, Writes) {
        let mut attempt = self
            .attempts
            .get(&task_id)
            .expect("the task was dispatched")
            .clone();
        let now = Utc::now();
        let result = ResultMessage {
            task_id,
            run_id: self.run.run_id,
            step_id: StepId::from(attempt.step_id.as_str()),
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
    fn started(&mut self, task_id: TaskId) -> Writes {
        let (applied, writes) = self.progress(task_id, Progress::Started);
        assert_eq!(applied, Applied::Applied);
        writes
    }

    /// A worker reports `progress` about `task_id`.
    fn progress(&mut self, task_id: TaskId, progress: Progress) -> (Applied, Writes) {
        let mut attempt = self
            .attempts
            .get(&task_id)
            .expect("the task was dispatched")
            .clone();
        let report = ProgressMessage {
            task_id,
            run_id: self.run.run_id,
            step_id: StepId::from(attempt.step_id.as_str()),
            attempt: attempt.attempt as u32,
            worker_id: WORKER.to_string(),
            progress,
            at: Utc::now(),
            details: None,
        };
        self.run.actor = format!("worker:{WORKER}");
        let applied =
            apply_progress_to(&mut self.run, &mut attempt, &report).expect("progress applies");
        (applied, self.store())
    }

    /// Fires the armed timer of `kind` for `step_id`, as `timers::fire_due`
    /// does: the timer's decision, then the run advances.
    fn fire(&mut self, kind: &str, step_id: &str) -> Writes {
        let at = self
            .timers
            .iter()
            .position(|t| t.kind.as_str() == kind && t.step_id == step_id)
            .unwrap_or_else(|| panic!("no {kind} timer armed for {step_id}"));
        let timer = self.timers.remove(at);
        self.fire_timer(kind, step_id, timer.task_id)
    }

    /// Fires a timer whether or not one is armed (a timer claimed just
    /// before the change that made it stale).
    fn fire_timer(&mut self, kind: &str, step_id: &str, task_id: Option<TaskId>) -> Writes {
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
                status: a.status.as_str().to_string(),
                kind: a.kind.as_str().to_string(),
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

    /// The run's state (status, flags, every step's row) in a form two
    /// moments can be compared by.
    fn state(&self) -> String {
        let mut steps: Vec<String> = self.run.steps.values().map(|s| format!("{s:?}")).collect();
        steps.sort();
        format!(
            "{:?} cancel={} stop={:?} {steps:?}",
            self.run.status, self.run.cancel_requested, self.run.stop_reason
        )
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
        .map(|t| (t.step_id.to_string(), t.kind, t.attempt))
        .collect()
}

/// Subjects of the run-level status events (CloudEvents) a change
/// publishes: `run.*`, not request or step events.
fn run_events(writes: &Writes) -> Vec<String> {
    use fulfil_core::status::StatusEventKind::*;
    let names = NatsNames::new("test").expect("a valid prefix");
    status_kinds(writes)
        .into_iter()
        .filter(|kind| {
            matches!(
                kind,
                RunStarted | RunSucceeded | RunFailed | RunCompensated | RunCancelled
            )
        })
        .map(|kind| names.event_subject(kind.as_str()))
        .collect()
}

/// The status events a change publishes, in history order.
fn status_kinds(writes: &Writes) -> Vec<fulfil_core::status::StatusEventKind> {
    writes
        .events
        .iter()
        .filter_map(|e| e.status.as_ref().map(|s| s.kind))
        .collect()
}

/// Timers a change arms: (kind, step).
fn armed(writes: &Writes) -> Vec<(&'static str, &str)> {
    writes
        .new_timers
        .iter()
        .map(|t| (t.kind.as_str(), t.step_id.as_str()))
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
    assert!(status_kinds(writes).is_empty(), "no status event");
    assert!(writes.steps.is_empty(), "no step changed");
    assert!(!writes.run, "the run row is untouched");
    assert!(writes.ending.is_none() && writes.request.is_none());
    assert!(writes.new_attempts.is_empty() && writes.attempt_updates.is_empty());
    assert!(writes.cancels.is_empty());
    assert!(writes.new_timers.is_empty() && writes.cleared_attempt_timers.is_empty());
    assert!(!writes.cleared_run_timers);
}
