//! Deadline arithmetic at the bounds: a Promise stating the longest
//! durations there are (a stored Promise over the bound no longer
//! deserializes at all), and reports off the wire asking for more. Every
//! deadline saturates and every duration sent on is clamped; nothing panics.

use std::sync::Arc;

use chrono::Utc;
use fulfil_bus::NatsNames;
use fulfil_core::Promise;
use fulfil_core::ids::{RequestId, RunId};
use fulfil_core::status::{RunKind, TimerKind};
use fulfil_core::time::{MAX_DURATION, as_millis_u64, to_time_delta};
use fulfil_core::wire::{StepFailure, TaskKind, TaskMessage};
use serde_json::json;

use super::{NewRun, Run, advance, attempt_failed};

/// Every duration at the bound, deserialized as a stored Promise is.
fn longest_promise() -> Arc<Promise> {
    let huge = "366d";
    let promise: Promise = serde_json::from_value(json!({
        "apiVersion": "fulfil.dev/v1",
        "kind": "Promise",
        "metadata": { "name": "huge", "version": "1.0.0" },
        "spec": {
            "timeout": huge,
            "workflow": { "steps": [{
                "id": "a",
                "uses": "echo",
                "timeout": huge,
                "schedule_to_start": huge,
                "heartbeat_timeout": huge,
                "retry": { "max_attempts": 3, "initial": huge, "max": huge },
                "compensate": { "uses": "echo", "timeout": huge },
            }]},
        },
    }))
    .expect("the document deserializes");
    Arc::new(promise)
}

#[test]
fn huge_durations_saturate_instead_of_panicking() {
    let over: Result<Promise, _> = serde_json::from_value(json!({
        "apiVersion": "fulfil.dev/v1", "kind": "Promise",
        "metadata": { "name": "huge", "version": "1.0.0" },
        "spec": { "timeout": "300000y", "workflow": { "steps": [{ "id": "a", "uses": "echo" }] } },
    }));
    assert!(over.is_err(), "a stored duration over the bound is refused");
    let promise = longest_promise();
    let names = NatsNames::new("t").expect("valid prefix");
    let mut run = Run::new(NewRun {
        kind: RunKind::Configure,
        run_id: RunId::generate(),
        request_id: RequestId::generate(),
        context: json!({ "params": {} }),
        promise,
        names,
        actor: "test".into(),
        fast_publish: false,
    });
    advance(&mut run).expect("the root step is dispatched");

    let latest = Utc::now() + to_time_delta(MAX_DURATION) * 3;
    let task: TaskMessage = serde_json::from_value(
        run.writes
            .outbox
            .first()
            .expect("a task in the outbox")
            .payload
            .clone(),
    )
    .expect("a task message");
    assert_eq!(task.timeout_ms, Some(as_millis_u64(MAX_DURATION)));
    assert_eq!(task.heartbeat_timeout_ms, Some(as_millis_u64(MAX_DURATION)));
    assert!(task.deadline <= latest, "deadline {}", task.deadline);

    // A worker asking for the longest wait there is.
    let failure = StepFailure {
        message: "slow down".into(),
        code: Some("http_status_429".into()),
        retryable: true,
        retry_after_ms: Some(u64::MAX),
    };
    attempt_failed(&mut run, "a", TaskKind::Action, 1, &failure, Some("w"))
        .expect("the retry is scheduled");
    let retry = run
        .writes
        .new_timers
        .iter()
        .find(|t| t.kind == TimerKind::Retry)
        .expect("a retry timer");
    assert!(retry.fire_at <= latest, "retry at {}", retry.fire_at);
    let scheduled = run
        .writes
        .events
        .iter()
        .find(|e| e.kind.ends_with("retry_scheduled"))
        .expect("a retry_scheduled event");
    assert_eq!(
        scheduled.data["delay_ms"],
        json!(as_millis_u64(MAX_DURATION))
    );
}
