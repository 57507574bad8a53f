//! Status events: every history event of a status kind carries one, with
//! the history's sequence number, and its `data` reports the run or step as
//! the event left it.

use fulfil_core::status::StatusEventKind;

use super::super::writes::status::envelope;
use super::*;

/// The CloudEvents a change publishes, as the flush wraps them: the
/// history event's sequence number (the harness already counted the change
/// in `next_seq`), then the event.
fn published(h: &Harness, writes: &Writes) -> Vec<(i64, Value)> {
    let first = h.run.next_seq - writes.events.len() as i64;
    writes
        .events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let status = e.status.clone()?;
            let message = envelope(&h.run, status, first + i as i64);
            assert_eq!(
                message.subject,
                format!("test.events.{}", message.kind),
                "published on <prefix>.events.<kind>"
            );
            assert_eq!(message.payload["id"], message.msg_id, "deduplicated by id");
            Some((first + i as i64, message.payload))
        })
        .collect()
}

/// (fulfilseq, type) of published events.
fn seq_and_types(events: &[(i64, Value)]) -> Vec<(i64, String)> {
    events
        .iter()
        .map(|(seq, e)| {
            assert_eq!(e["fulfilseq"], *seq, "fulfilseq is the history seq");
            (*seq, e["type"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

#[test]
fn a_run_publishes_accepted_started_each_step_and_succeeded_in_history_order() {
    let (mut h, created) = Harness::start(CHAIN, json!({}));
    let sent = published(&h, &created);
    assert_eq!(
        seq_and_types(&sent),
        vec![
            (1, "dev.fulfil.request.accepted".to_string()),
            (2, "dev.fulfil.run.started".to_string()),
        ]
    );
    let accepted = &sent[0].1;
    assert_eq!(accepted["specversion"], "1.0");
    assert_eq!(accepted["source"], "fulfil/test");
    assert_eq!(accepted["subject"], json!(h.run.run_id));
    assert_eq!(accepted["datacontenttype"], "application/json");
    assert!(accepted.get("time").is_some_and(Value::is_string));
    assert!(accepted.get("traceparent").is_none(), "no trace to carry");
    let data = &accepted["data"];
    assert_eq!(data["request_id"], json!(h.run.request_id));
    assert_eq!(data["run_id"], json!(h.run.run_id));
    assert_eq!(data["run_kind"], "configure");
    assert_eq!(data["promise"], "chain");
    assert_eq!(data["promise_version"], "1.0.0");
    assert_eq!(data["status"], "running");

    // The worker starts `first`: step.started, about the step.
    let writes = h.started(h.latest("first", TaskKind::Action));
    let sent = published(&h, &writes);
    assert_eq!(
        seq_and_types(&sent),
        vec![(4, "dev.fulfil.step.started".to_string())],
        "seq 3 was the dispatch, which publishes nothing"
    );
    assert_eq!(sent[0].1["data"]["step"], "first");
    assert_eq!(sent[0].1["data"]["status"], "running");

    // `first` succeeds: its outputs go out with it; dispatching `second`
    // publishes nothing.
    let writes = h.succeed("first", TaskKind::Action, json!({ "n": 7 }));
    let sent = published(&h, &writes);
    assert_eq!(
        seq_and_types(&sent),
        vec![(5, "dev.fulfil.step.succeeded".to_string())]
    );
    assert_eq!(sent[0].1["data"]["outputs"], json!({ "n": 7 }));
    assert_eq!(sent[0].1["data"]["status"], "succeeded");
    assert!(sent[0].1["data"].get("error").is_none());

    // `second` succeeds and the run with it: step then run, in order.
    let writes = h.succeed("second", TaskKind::Action, json!({ "n": 8 }));
    let sent = published(&h, &writes);
    assert_eq!(
        status_kinds(&writes),
        vec![
            StatusEventKind::StepSucceeded,
            StatusEventKind::RunSucceeded
        ]
    );
    let (step_seq, run_seq) = (sent[0].0, sent[1].0);
    assert!(step_seq < run_seq, "the step before the run");
    let done = &sent[1].1["data"];
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["outputs"], json!({ "n": 8 }), "the Promise's outputs");
    assert!(done.get("step").is_none(), "a run event names no step");
    assert_eq!(run_events(&writes), vec!["test.events.run.succeeded"]);
}

#[test]
fn a_retried_attempt_publishes_nothing_and_a_final_failure_publishes_step_failed_then_run_compensated()
 {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    h.succeed("reserve", TaskKind::Action, json!({ "reservation": "r-1" }));

    // charge fails retryably: retry scheduled, no status event.
    let writes = h.fail("charge", TaskKind::Action, retryable("503 from bank"));
    assert!(status_kinds(&writes).is_empty(), "{:?}", events(&writes));
    h.fire("retry", "charge");

    // Then for good: step.failed with the reason, and compensation starts
    // (compensating is no status kind).
    let writes = h.fail("charge", TaskKind::Action, permanent("card refused"));
    let sent = published(&h, &writes);
    assert_eq!(status_kinds(&writes), vec![StatusEventKind::StepFailed]);
    let failed = &sent[0].1["data"];
    assert_eq!(failed["step"], "charge");
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"], "card refused");
    assert_eq!(failed["error_code"], "invalid_input");

    // reserve's undo succeeds: the run ends compensated, naming why.
    let writes = h.succeed("reserve", TaskKind::Compensation, json!({}));
    let sent = published(&h, &writes);
    assert_eq!(status_kinds(&writes), vec![StatusEventKind::RunCompensated]);
    let ended = &sent[0].1["data"];
    assert_eq!(ended["status"], "compensated");
    assert!(
        ended["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{ended}"
    );
    assert!(ended.get("outputs").is_none());
    assert!(
        sent[0].0 > 0 && sent[0].0 < h.run.next_seq,
        "numbered within the history"
    );
}

#[test]
fn a_run_filed_from_an_event_carries_its_traceparent_on_every_status_event() {
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (mut h, _) = Harness::start(CHAIN, json!({}));
    h.run.context["request"]["traceparent"] = json!(traceparent);
    let writes = h.started(h.latest("first", TaskKind::Action));
    let writes_2 = h.succeed("first", TaskKind::Action, json!({ "n": 1 }));
    let mut sent = published(&h, &writes_2);
    // `published` numbers from the latest change; the first one's events are
    // checked for their envelope only.
    sent.extend(
        writes
            .events
            .iter()
            .filter_map(|e| e.status.clone())
            .map(|s| (0, envelope(&h.run, s, 4).payload)),
    );
    assert_eq!(sent.len(), 2);
    for (_, event) in &sent {
        assert_eq!(event["traceparent"], traceparent, "{event}");
        assert_eq!(event["subject"], json!(h.run.run_id));
    }
}

#[test]
fn an_operator_cancel_publishes_run_cancelled_with_the_reason() {
    let (mut h, _) = Harness::start(CHAIN, json!({}));
    let writes = h.cancel(false).expect("a running run cancels");
    assert!(
        status_kinds(&writes).contains(&StatusEventKind::RunCancelled),
        "{:?}",
        events(&writes)
    );
    let sent = published(&h, &writes);
    let (_, cancelled) = sent
        .iter()
        .find(|(_, e)| e["type"] == "dev.fulfil.run.cancelled")
        .expect("run.cancelled is published");
    assert_eq!(cancelled["data"]["status"], "cancelled");
    assert!(cancelled["data"]["error"].is_string(), "{cancelled}");
    assert_eq!(
        sent.iter()
            .filter(|(_, e)| e["type"] == "dev.fulfil.run.cancelled")
            .count(),
        1,
        "emitted once"
    );
}

#[test]
fn status_events_carry_the_actor_of_their_history_event() {
    let (h, created) = Harness::start(CHAIN, json!({}));
    let sent = published(&h, &created);
    assert!(!sent.is_empty());
    let actors: Vec<&str> = created
        .events
        .iter()
        .filter(|e| e.status.is_some())
        .map(|e| e.actor.as_str())
        .collect();
    for ((_, event), actor) in sent.iter().zip(&actors) {
        assert_eq!(event["data"]["actor"], *actor, "{event}");
    }
    assert_eq!(sent[0].1["data"]["actor"], "api:test");
}
