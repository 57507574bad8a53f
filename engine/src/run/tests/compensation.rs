//! Compensation: succeeded steps undone in reverse dependency order.

use super::*;

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
    assert_eq!(
        writes.request.as_ref().map(|r| r.status),
        Some(RequestStatus::Failed)
    );
    assert_eq!(run_events(&writes), vec!["test.events.run.failed"]);
}

#[test]
fn compensation_retries_under_its_own_policy_then_fails_the_run() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    h.succeed(
        "reserve",
        TaskKind::Action,
        json!({ "reservation": "r-42" }),
    );
    h.fail("charge", TaskKind::Action, permanent("bad card number"));
    let first = h.task("reserve", TaskKind::Compensation, 1);

    // The undo's own policy: two attempts, 5s apart.
    let before = Utc::now();
    let writes = h.fail("reserve", TaskKind::Compensation, retryable("stock busy"));
    let after = Utc::now();
    assert_eq!(
        events(&writes),
        vec![("compensation.retry_scheduled", Some("reserve"), Some(1))]
    );
    assert_eq!(
        event_of(&writes, "compensation.retry_scheduled").data["delay_ms"],
        5000
    );
    assert_eq!(armed(&writes), vec![("compensation_retry", "reserve")]);
    assert_after(
        writes.new_timers[0].fire_at,
        before,
        after,
        ChronoDuration::seconds(5),
    );
    assert_eq!(
        h.step("reserve").compensation,
        Some(CompensationStatus::Retrying)
    );
    assert_eq!(h.attempts[&first].status, AttemptStatus::Failed);
    assert_eq!(h.run.status, RunStatus::Compensating);

    let writes = h.fire("compensation_retry", "reserve");
    let sent = tasks(&writes);
    assert_eq!(
        dispatched(&writes),
        vec![("reserve".into(), TaskKind::Compensation, 2)]
    );
    assert_eq!(
        sent[0].idempotency_key,
        format!("{}/reserve/compensate", h.run.run_id)
    );
    assert_eq!(h.step("reserve").compensation_attempt, 2);

    let writes = h.fail("reserve", TaskKind::Compensation, retryable("stock busy"));
    assert_eq!(
        events(&writes),
        vec![
            ("compensation.failed", Some("reserve"), Some(2)),
            (event::RUN_FAILED, None, None),
        ]
    );
    assert_eq!(h.run.status, RunStatus::Failed);
    assert_eq!(
        writes.ending.as_ref().and_then(|e| e.error.as_deref()),
        Some("compensation of step reserve failed: stock busy (gave up after 2 attempts)")
    );
    // The step itself stays succeeded: its effect was not undone.
    assert_eq!(h.step("reserve").status, StepStatus::Succeeded);
}
