//! Attempt and run timeouts, fired as durable timers.

use super::*;

#[test]
fn schedule_to_start_timeout_retries_an_attempt_no_worker_took() {
    let before = Utc::now();
    let (mut h, writes) = Harness::start(PROBE, json!({}));
    let after = Utc::now();
    assert_eq!(armed(&writes), vec![("run_timeout", "")]);
    assert_after(
        writes.new_timers[0].fire_at,
        before,
        after,
        ChronoDuration::minutes(10),
    );

    let before = Utc::now();
    let writes = h.succeed("lease", TaskKind::Action, json!({}));
    let after = Utc::now();
    let sent = tasks(&writes);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].step_id, "probe");
    assert_eq!(sent[0].timeout_ms, Some(60_000));
    assert_eq!(sent[0].heartbeat_timeout_ms, Some(10_000));
    assert_after(sent[0].deadline, before, after, ChronoDuration::seconds(90));
    assert_eq!(armed(&writes), vec![("schedule_to_start", "probe")]);
    let first = sent[0].task_id;

    // No worker takes it in time: a retryable timeout, retried.
    let writes = h.fire("schedule_to_start", "probe");
    assert_eq!(
        events(&writes),
        vec![
            ("step.timed_out", Some("probe"), Some(1)),
            ("step.retry_scheduled", Some("probe"), Some(1)),
        ]
    );
    let timed_out = &event_of(&writes, "step.timed_out").data;
    assert_eq!(timed_out["code"], "schedule_to_start_timeout");
    assert_eq!(timed_out["task_id"], json!(first));
    assert_eq!(
        event_of(&writes, "step.retry_scheduled").data["delay_ms"],
        1000
    );
    assert_eq!(writes.attempt_updates.len(), 1);
    assert_eq!(writes.attempt_updates[0].0, first);
    assert_eq!(h.attempts[&first].status, AttemptStatus::TimedOut);
    assert_eq!(h.step("probe").status, StepStatus::Retrying);
    assert_eq!(
        h.step("probe").error.as_deref(),
        Some("no worker of the step's queue started the attempt in time")
    );

    let writes = h.fire("retry", "probe");
    assert_eq!(
        dispatched(&writes),
        vec![("probe".into(), TaskKind::Action, 2)]
    );
    assert_eq!(h.run.status, RunStatus::Running);
}

#[test]
fn heartbeats_push_the_heartbeat_timer_until_one_is_missed() {
    let (mut h, _) = Harness::start(PROBE, json!({}));
    h.succeed("lease", TaskKind::Action, json!({}));
    let task = h.latest("probe", TaskKind::Action);

    let before = Utc::now();
    let writes = h.started(task);
    let after = Utc::now();
    assert_eq!(
        events(&writes),
        vec![("step.started", Some("probe"), Some(1))]
    );
    assert_eq!(
        armed(&writes),
        vec![("attempt_timeout", "probe"), ("heartbeat_timeout", "probe")]
    );
    // The attempt timeout allows a grace after the worker's own.
    assert_after(
        writes.new_timers[0].fire_at,
        before,
        after,
        ChronoDuration::seconds(61),
    );
    assert_after(
        writes.new_timers[1].fire_at,
        before,
        after,
        ChronoDuration::seconds(10),
    );
    assert_eq!(h.step("probe").status, StepStatus::Running);
    assert_eq!(h.attempts[&task].status, AttemptStatus::Running);
    let kinds =
        |h: &Harness| -> Vec<&'static str> { h.timers.iter().map(|t| t.kind.as_str()).collect() };
    assert_eq!(
        kinds(&h),
        vec!["run_timeout", "attempt_timeout", "heartbeat_timeout"],
        "the queue timer is disarmed on start"
    );

    // A heartbeat replaces the heartbeat timer and nothing else.
    let (applied, writes) = h.progress(task, Progress::Heartbeat);
    assert_eq!(applied, Applied::Applied);
    assert!(writes.events.is_empty() && writes.steps.is_empty());
    assert_eq!(
        writes.cleared_attempt_timers,
        vec![(task, Some(TimerKind::HeartbeatTimeout))]
    );
    assert_eq!(armed(&writes), vec![("heartbeat_timeout", "probe")]);
    assert_eq!(
        kinds(&h),
        vec!["run_timeout", "attempt_timeout", "heartbeat_timeout"]
    );

    // The queue timer, had it been claimed before the start, is stale now.
    let writes = h.fire_timer("schedule_to_start", "probe", Some(task));
    assert!(
        writes.is_empty(),
        "a started attempt did not time out in the queue"
    );

    // Heartbeats stop: the attempt times out and is retried.
    let writes = h.fire("heartbeat_timeout", "probe");
    assert_eq!(
        event_of(&writes, "step.timed_out").data["code"],
        "heartbeat_timeout"
    );
    assert_eq!(armed(&writes), vec![("retry", "probe")]);
    assert_eq!(h.attempts[&task].status, AttemptStatus::TimedOut);
    assert_eq!(
        kinds(&h),
        vec!["run_timeout", "retry"],
        "its other timers go"
    );
}

#[test]
fn run_timeout_stops_in_flight_steps_then_compensates() {
    let (mut h, _) = Harness::start(PROBE, json!({}));
    h.succeed("lease", TaskKind::Action, json!({ "lease": "l-1" }));
    let probe = h.latest("probe", TaskKind::Action);
    h.started(probe);

    let writes = h.fire("run_timeout", "");
    assert_eq!(
        events(&writes),
        vec![
            (event::RUN_TIMED_OUT, None, None),
            (event::STEP_CANCELLED, Some("probe"), Some(1)),
            (event::RUN_COMPENSATING, None, None),
            ("compensation.dispatched", Some("lease"), Some(1)),
        ]
    );
    assert_eq!(writes.cancels.len(), 1);
    assert_eq!(writes.cancels[0].step_id, "probe");
    assert_eq!(
        h.run.stop_reason.as_deref(),
        Some("run timed out after 10m")
    );
    assert!(!h.run.cancel_requested);
    assert_eq!(h.step("probe").status, StepStatus::Cancelled);
    assert_eq!(h.attempts[&probe].status, AttemptStatus::Cancelled);
    let undo = tasks(&writes);
    assert_eq!(undo.len(), 1);
    assert_eq!(undo[0].handler, "h.unlease");
    assert_eq!(undo[0].timeout_ms, Some(20_000));
    assert_eq!(h.run.status, RunStatus::Compensating);

    // The cancelled attempt's result comes too late.
    let (applied, writes) = h.report(probe, Outcome::Ok { output: json!({}) });
    assert!(matches!(applied, Applied::Ignored(_)));
    assert_only_ignored(&writes);

    let writes = h.succeed("lease", TaskKind::Compensation, json!({}));
    assert_eq!(h.run.status, RunStatus::Compensated);
    assert_eq!(
        writes.ending.as_ref().and_then(|e| e.error.as_deref()),
        Some("run timed out after 10m; compensated lease")
    );
    assert!(h.timers.is_empty(), "an ended run has no timers");
}
