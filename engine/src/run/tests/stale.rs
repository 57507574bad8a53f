//! Reports and timers about attempts that are no longer current.

use super::*;

#[test]
fn result_for_an_older_attempt_is_ignored_and_changes_nothing() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    let first = h.task("reserve", TaskKind::Action, 1);
    let writes = h.started(first);
    // Started: the queue timer is disarmed, the attempt's timeout armed.
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
    assert_eq!(event_of(&writes, "step.timed_out").data["code"], "timeout");
    assert_eq!(h.attempts[&first].status, AttemptStatus::TimedOut);
    assert_eq!(h.step("reserve").status, StepStatus::Retrying);
    h.fire("retry", "reserve");
    assert_eq!(h.step("reserve").attempt, 2);
    let before = h.state();
    let timers_before = h.timers.len();

    // The timed-out attempt's result arrives late.
    let (applied, writes) = h.report(first, Outcome::Ok { output: json!({}) });
    assert_eq!(
        applied,
        Applied::Ignored("attempt 1 is already timed_out".to_string())
    );
    assert_only_ignored(&writes);
    let ignored = &event_of(&writes, event::RESULT_IGNORED).data;
    assert_eq!(ignored["task_id"], json!(first));
    assert_eq!(ignored["worker"], WORKER);
    assert_eq!(h.state(), before);

    // An older attempt still open (as a stale copy of the store would
    // have it) is refused by its number.
    h.attempts.get_mut(&first).expect("stored").status = AttemptStatus::Dispatched;
    let (applied, writes) = h.report(first, Outcome::Error(retryable("late")));
    assert_eq!(
        applied,
        Applied::Ignored("attempt 1 is stale; the current attempt is 2".to_string())
    );
    assert_only_ignored(&writes);
    assert_eq!(h.state(), before);

    // So is its progress: a late start arms no timers.
    let (applied, writes) = h.progress(first, Progress::Started);
    assert!(matches!(applied, Applied::Ignored(_)), "{applied:?}");
    assert!(writes.is_empty(), "ignored progress is not even recorded");

    // A timer of the old attempt that fires late does nothing either.
    let writes = h.fire_timer("attempt_timeout", "reserve", Some(first));
    assert!(writes.is_empty(), "a stale timer writes nothing");
    assert_eq!(h.state(), before);
    assert_eq!(h.timers.len(), timers_before);
}

#[test]
fn redelivered_result_of_an_applied_task_is_ignored() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    let task = h.task("reserve", TaskKind::Action, 1);
    h.succeed(
        "reserve",
        TaskKind::Action,
        json!({ "reservation": "r-42" }),
    );
    assert_eq!(h.attempts[&task].status, AttemptStatus::Succeeded);
    let before = h.state();
    let history = h.history.len();

    // The same task reported again, even with another outcome.
    let (applied, writes) = h.report(task, Outcome::Error(permanent("dup")));
    assert_eq!(
        applied,
        Applied::Ignored("attempt 1 is already succeeded".to_string())
    );
    assert_only_ignored(&writes);
    assert_eq!(h.state(), before);
    assert_eq!(
        h.step("reserve").outputs,
        Some(json!({ "reservation": "r-42" }))
    );
    assert_eq!(
        h.history.len(),
        history + 1,
        "only the ignored report is recorded"
    );

    // And once more as a success: charge is not dispatched twice.
    let (applied, writes) = h.report(task, Outcome::Ok { output: json!({}) });
    assert!(matches!(applied, Applied::Ignored(_)));
    assert!(tasks(&writes).is_empty());
    assert_eq!(
        h.attempts
            .values()
            .filter(|a| a.step_id == "charge")
            .count(),
        1
    );
}
