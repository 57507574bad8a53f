//! An operator's retry of a finished run.

use super::*;

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
    assert_eq!(
        writes.request.as_ref().map(|r| r.status),
        Some(RequestStatus::Running)
    );
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

#[test]
fn operator_retry_of_a_compensated_run_reruns_the_undone_steps() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    h.succeed(
        "reserve",
        TaskKind::Action,
        json!({ "reservation": "r-42" }),
    );
    h.fail("charge", TaskKind::Action, permanent("bad card number"));
    h.succeed("reserve", TaskKind::Compensation, json!({}));
    assert_eq!(h.run.status, RunStatus::Compensated);

    let unknown = h.retry(Some("refund"), false);
    match unknown {
        Err(OperatorError::UnknownStep { step, known }) => {
            assert_eq!(step, "refund");
            assert_eq!(known, "reserve, charge, ship");
        }
        other => panic!("expected an unknown step, got {other:?}"),
    }
    assert!(h.run.writes.is_empty());
    assert_eq!(h.run.status, RunStatus::Compensated);

    // An undone step is not kept: its effect is gone, so it runs again.
    let (plan, writes) = h
        .retry(None, false)
        .expect("a compensated run can be retried");
    assert_eq!(plan.rerun, vec!["reserve", "charge", "ship"]);
    assert!(plan.kept.is_empty());
    assert_eq!(
        events(&writes),
        vec![
            (event::RUN_RETRIED, None, None),
            ("step.dispatched", Some("reserve"), Some(2)),
        ]
    );
    assert_eq!(h.run.status, RunStatus::Running);
    assert_eq!(h.step("reserve").status, StepStatus::Ready);
    assert_eq!(h.step("reserve").compensation, None);
    assert_eq!(h.step("reserve").compensation_outputs, None);
    assert_eq!(h.step("charge").status, StepStatus::Pending);
    assert_eq!(h.step("charge").error, None);
    assert_eq!(h.step("ship").status, StepStatus::Pending);
}

#[test]
fn operator_retry_after_a_failed_compensation_reruns_the_half_undone_step() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    h.succeed(
        "reserve",
        TaskKind::Action,
        json!({ "reservation": "r-42" }),
    );
    h.fail("charge", TaskKind::Action, permanent("bad card number"));
    h.fail(
        "reserve",
        TaskKind::Compensation,
        permanent("stock offline"),
    );
    assert_eq!(h.run.status, RunStatus::Failed);
    // Its action succeeded, but its undo may have half run: not kept.
    assert_eq!(h.step("reserve").status, StepStatus::Succeeded);
    assert_eq!(
        h.step("reserve").compensation,
        Some(CompensationStatus::Failed)
    );

    let (plan, writes) = h.retry(None, false).expect("a failed run can be retried");
    assert_eq!(plan.rerun, vec!["reserve", "charge", "ship"]);
    assert!(plan.kept.is_empty());
    assert_eq!(
        dispatched(&writes),
        vec![("reserve".into(), TaskKind::Action, 2)]
    );
    assert_eq!(h.step("reserve").compensation, None);
    assert_eq!(h.step("reserve").compensation_error, None);
    assert_eq!(
        h.step("reserve").outputs,
        None,
        "its old outputs are dropped"
    );
}
