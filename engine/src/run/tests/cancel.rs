//! An operator's cancel, with and without compensation.

use super::*;

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
        ("charge", TaskKind::Action, 1)
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
    assert_eq!(h.attempts[&charge].status, AttemptStatus::Cancelled);

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
    assert_eq!(
        writes.request.as_ref().map(|r| r.status),
        Some(RequestStatus::Failed)
    );
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
fn cancel_drops_a_scheduled_retry() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    h.succeed(
        "reserve",
        TaskKind::Action,
        json!({ "reservation": "r-42" }),
    );
    h.fail("charge", TaskKind::Action, retryable("gateway down"));
    assert_eq!(h.step("charge").status, StepStatus::Retrying);

    // The retrying step is cancelled with the pending ones; what succeeded
    // is undone at once, since nothing is in flight.
    let writes = h.cancel(true).expect("a running run can be cancelled");
    assert_eq!(
        events(&writes),
        vec![
            (event::RUN_CANCEL_REQUESTED, None, None),
            (event::RUN_COMPENSATING, None, None),
            ("compensation.dispatched", Some("reserve"), Some(1)),
        ]
    );
    assert_eq!(h.step("charge").status, StepStatus::Cancelled);
    assert_eq!(
        h.step("charge").error.as_deref(),
        Some("cancelled by user:ops: no longer needed")
    );

    // The retry timer fires anyway: it finds nothing to retry.
    let writes = h.fire("retry", "charge");
    assert!(writes.is_empty(), "no second attempt of a cancelled step");
    assert_eq!(h.step("charge").attempt, 1);

    h.succeed("reserve", TaskKind::Compensation, json!({}));
    assert_eq!(h.run.status, RunStatus::Cancelled);
}

#[test]
fn failure_after_a_cancel_is_final() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    h.succeed(
        "reserve",
        TaskKind::Action,
        json!({ "reservation": "r-42" }),
    );
    h.cancel(true).expect("a running run can be cancelled");

    // charge had attempts left, but the run is stopping.
    let writes = h.fail("charge", TaskKind::Action, retryable("gateway down"));
    assert_eq!(
        events(&writes),
        vec![
            ("step.failed", Some("charge"), Some(1)),
            (event::RUN_COMPENSATING, None, None),
            ("compensation.dispatched", Some("reserve"), Some(1)),
        ]
    );
    assert!(armed(&writes).iter().all(|(kind, _)| *kind != "retry"));
    assert_eq!(h.step("charge").status, StepStatus::Failed);

    let writes = h.succeed("reserve", TaskKind::Compensation, json!({}));
    assert_eq!(h.run.status, RunStatus::Cancelled);
    assert_eq!(
        writes.ending.as_ref().and_then(|e| e.error.as_deref()),
        Some("cancelled by user:ops: no longer needed; compensated reserve")
    );
}

#[test]
fn cancel_without_compensation_stops_a_compensation_in_progress() {
    let (mut h, _) = Harness::start(DIAMOND, json!({}));
    h.succeed("a", TaskKind::Action, json!({}));
    h.succeed("b", TaskKind::Action, json!({}));
    h.succeed("c", TaskKind::Action, json!({}));
    h.fail("d", TaskKind::Action, permanent("cannot"));
    assert_eq!(h.run.status, RunStatus::Compensating);
    let undo_b = h.task("b", TaskKind::Compensation, 1);

    let writes = h
        .cancel(false)
        .expect("a compensating run can be cancelled");
    let mut recorded = events(&writes);
    // stop_in_flight walks the run's step map, so the cancelled attempts
    // come in no fixed order; compare them as a set.
    recorded[1..3].sort_unstable();
    assert_eq!(
        recorded,
        vec![
            (event::RUN_CANCEL_REQUESTED, None, None),
            (event::STEP_CANCELLED, Some("b"), Some(1)),
            (event::STEP_CANCELLED, Some("c"), Some(1)),
            (event::RUN_CANCELLED, None, None),
        ]
    );
    let kinds: Vec<TaskKind> = writes.cancels.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, vec![TaskKind::Compensation, TaskKind::Compensation]);
    assert!(tasks(&writes).is_empty(), "a is never undone");
    assert_eq!(h.run.status, RunStatus::Cancelled);
    assert_eq!(
        h.step("b").compensation,
        Some(CompensationStatus::Cancelled)
    );
    assert_eq!(
        h.step("c").compensation,
        Some(CompensationStatus::Cancelled)
    );
    assert_eq!(h.step("a").compensation, None);
    assert_eq!(h.attempts[&undo_b].status, AttemptStatus::Cancelled);

    // The abandoned undo reports anyway: ignored.
    let before = h.state();
    let (applied, writes) = h.report(undo_b, Outcome::Ok { output: json!({}) });
    assert!(matches!(applied, Applied::Ignored(_)), "{applied:?}");
    assert_only_ignored(&writes);
    assert_eq!(h.state(), before);
}

#[test]
fn cancel_with_compensation_undoes_even_when_the_last_steps_then_succeed() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    h.succeed(
        "reserve",
        TaskKind::Action,
        json!({ "reservation": "r-42" }),
    );
    h.succeed("charge", TaskKind::Action, json!({}));
    // Nothing is pending any more: ship, the last step, is in flight.
    assert_eq!(h.step("ship").status, StepStatus::Ready);
    h.cancel(true).expect("a running run can be cancelled");
    assert_eq!(h.run.status, RunStatus::Running);

    // ship succeeds after the cancel: the run must still stop and undo
    // what succeeded, as `cancel_run` promises, not end succeeded.
    let writes = h.succeed("ship", TaskKind::Action, json!({}));
    assert_eq!(
        events(&writes),
        vec![
            ("step.succeeded", Some("ship"), Some(1)),
            (event::RUN_COMPENSATING, None, None),
            ("compensation.dispatched", Some("charge"), Some(1)),
        ]
    );
    assert_eq!(h.run.status, RunStatus::Compensating);
    h.succeed("charge", TaskKind::Compensation, json!({}));
    let writes = h.succeed("reserve", TaskKind::Compensation, json!({}));
    assert_eq!(h.run.status, RunStatus::Cancelled);
    assert_eq!(
        writes.ending.as_ref().and_then(|e| e.error.as_deref()),
        Some("cancelled by user:ops: no longer needed; compensated charge, reserve")
    );
    assert_eq!(
        writes.request.as_ref().map(|r| r.status),
        Some(RequestStatus::Failed)
    );
}
