//! Failed attempts: retried under the step's policy, or failed for good.

use super::*;

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
    assert_eq!(h.attempts[&first_task].status, AttemptStatus::Failed);
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
        Some(RequestStatus::Failed)
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
fn input_that_cannot_render_fails_the_step_without_dispatching_it() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    // reserve succeeds without the output charge's input reads.
    let writes = h.succeed("reserve", TaskKind::Action, json!({}));
    assert_eq!(
        events(&writes),
        vec![
            ("step.succeeded", Some("reserve"), Some(1)),
            ("step.failed", Some("charge"), Some(1)),
            (event::RUN_COMPENSATING, None, None),
            ("compensation.failed", Some("reserve"), Some(1)),
            (event::RUN_FAILED, None, None),
        ]
    );
    assert!(
        tasks(&writes).is_empty(),
        "neither charge nor the undo is sent"
    );
    assert!(writes.new_attempts.is_empty());
    let failed = &event_of(&writes, "step.failed").data;
    assert_eq!(failed["code"], "render_error");
    assert_eq!(failed["final"], true);
    assert_eq!(h.step("charge").status, StepStatus::Failed);
    // The undo reads the same missing output, and fails the same way.
    assert_eq!(
        event_of(&writes, "compensation.failed").data["code"],
        "render_error"
    );
    assert_eq!(h.run.status, RunStatus::Failed);
    let error = writes
        .ending
        .as_ref()
        .and_then(|e| e.error.clone())
        .expect("a failed run says why");
    assert!(
        error.starts_with("compensation of step reserve failed: "),
        "{error}"
    );
}
