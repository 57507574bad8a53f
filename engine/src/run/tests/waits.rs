//! Engine-run steps in the state machine: a wait starts without a task,
//! and exactly one of its ends (a match, a timeout, a cancel) is applied.

use super::*;
use crate::run::fire_wait_timer;
use crate::waits::WaitState;

/// book (with an undo) -> ready (an event wait, 1m) -> done.
const WAITING: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: waiting, version: 1.0.0 }
spec:
  workflow:
    steps:
      - id: book
        uses: noop
        compensate: { uses: noop }
      - id: ready
        needs: [book]
        uses: wait.event
        with: { type: com.acme.ready, match: "event.data.name == params.name", lookback: 5m }
        timeout: 1m
      - { id: done, needs: [ready], uses: noop }
"#;

impl Harness {
    /// Fires the wait timer of `kind` for `step_id` with the wait's row as
    /// the store holds it then (`matched`: the event that matched it).
    fn fire_wait(&mut self, kind: TimerKind, step_id: &str, matched: Option<Value>) -> Writes {
        let task_id = self.latest(step_id, TaskKind::Action);
        let wait = WaitState {
            attempt: self.step(step_id).attempt,
            kind: "event".into(),
            until: None,
            matched_event: matched,
            matched_ledger_id: None,
            decisions: json!([]),
        };
        self.run.actor = format!("engine:{ENGINE}");
        fire_wait_timer(&mut self.run, kind, step_id, task_id, Some(&wait)).expect("fires");
        advance(&mut self.run).expect("the run advances");
        self.store()
    }
}

#[test]
fn a_wait_starts_without_a_task_and_its_first_end_wins() {
    let (mut h, _) = Harness::start(WAITING, json!({"name": "orders"}));
    let writes = h.succeed("book", TaskKind::Action, json!({}));
    // No task: the engine keeps the step waiting, filed with its key.
    assert!(
        tasks(&writes).is_empty(),
        "an engine step publishes no task"
    );
    assert_eq!(h.step("ready").status, StepStatus::Waiting);
    assert_eq!(writes.new_attempts.len(), 1);
    assert_eq!(writes.new_attempts[0].queue, "engine");
    assert_eq!(armed(&writes), vec![("wait_timeout", "ready")]);
    let wait = &writes.new_waits[0];
    assert_eq!(wait.task_id, writes.new_attempts[0].task_id);
    let filing = wait.event.as_ref().expect("an event wait");
    assert_eq!(filing.path, "data.name");
    assert_eq!(filing.value, "\"orders\"");
    assert_eq!(filing.lookback, Some(std::time::Duration::from_secs(300)));
    let waiting = &event_of(&writes, "step.waiting").data["waiting_for"];
    assert_eq!(waiting["kind"], "event");
    assert_eq!(waiting["type"], "com.acme.ready");
    assert!(waiting["until"].is_string(), "{waiting}");
    assert!(status_kinds(&writes).contains(&fulfil_core::status::StatusEventKind::StepWaiting));

    // The event matched: the step succeeds with it, once.
    let event = json!({"id": "e-1", "source": "db", "type": "com.acme.ready"});
    let writes = h.fire_wait(TimerKind::WaitMatched, "ready", Some(event.clone()));
    assert_eq!(h.step("ready").status, StepStatus::Succeeded);
    assert_eq!(h.step("ready").outputs, Some(event.clone()));
    assert_eq!(writes.ended_waits, vec!["ready".to_string()]);
    assert!(
        h.timers.iter().all(|t| t.step_id != "ready"),
        "its timeout is disarmed"
    );
    assert_eq!(
        events(&writes)[..2],
        [
            ("wait.matched", Some("ready"), Some(1)),
            ("step.succeeded", Some("ready"), Some(1)),
        ]
    );
    // A timeout claimed before that change finds the step no longer waiting.
    let late = h.fire_wait(TimerKind::WaitTimeout, "ready", None);
    assert!(late.events.is_empty(), "a stale timeout records nothing");
    h.succeed("done", TaskKind::Action, json!({}));
    assert_eq!(h.run.status, RunStatus::Succeeded);
}

#[test]
fn a_wait_that_times_out_fails_into_compensation_unless_an_event_matched_first() {
    let (mut h, _) = Harness::start(WAITING, json!({"name": "orders"}));
    h.succeed("book", TaskKind::Action, json!({}));
    // The event matched just before the timeout fired: the event wins.
    let event = json!({"id": "e-2"});
    h.fire_wait(TimerKind::WaitTimeout, "ready", Some(event.clone()));
    assert_eq!(h.step("ready").status, StepStatus::Succeeded);
    assert_eq!(h.step("ready").outputs, Some(event));

    let (mut h, _) = Harness::start(WAITING, json!({"name": "orders"}));
    h.succeed("book", TaskKind::Action, json!({}));
    let writes = h.fire_wait(TimerKind::WaitTimeout, "ready", None);
    assert_eq!(h.step("ready").status, StepStatus::Failed);
    assert_eq!(
        event_of(&writes, "step.failed").data["code"],
        "wait_timeout"
    );
    assert_eq!(writes.ended_waits, vec!["ready".to_string()]);
    assert_eq!(h.run.status, RunStatus::Compensating);
    assert_eq!(
        dispatched(&writes),
        vec![("book".into(), TaskKind::Compensation, 1)]
    );
    h.succeed("book", TaskKind::Compensation, json!({}));
    assert_eq!(h.run.status, RunStatus::Compensated);
    assert!(h.history_kinds().contains(&"run.compensated"));
}

#[test]
fn cancelling_a_run_ends_its_waits_at_once() {
    let (mut h, _) = Harness::start(WAITING, json!({"name": "orders"}));
    h.succeed("book", TaskKind::Action, json!({}));
    let ready = h.latest("ready", TaskKind::Action);
    let writes = h.cancel(true).expect("cancels");
    // A wait holds no work that could finish: it is cancelled, not awaited.
    assert_eq!(h.step("ready").status, StepStatus::Cancelled);
    assert!(writes.ended_waits.contains(&"ready".to_string()));
    assert_eq!(h.attempts[&ready].status, AttemptStatus::Cancelled);
    assert_eq!(h.run.status, RunStatus::Compensating);
    h.succeed("book", TaskKind::Compensation, json!({}));
    assert_eq!(h.run.status, RunStatus::Cancelled);
    // The end of the run clears whatever waits it still had.
    assert!(h.history_kinds().contains(&"run.cancelled"));
}
