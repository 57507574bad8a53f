//! A request's delete, as the runs see it: a configure run handed off at
//! its step boundary, the delete run it starts, and how both settle the
//! request's status.

use super::*;
use crate::run::deleting::{Handoff, hand_off, kinds};

/// create -> grant, each with an undo; a two-step teardown that reads the
/// configure run's params and the request's outputs.
const DATABASE: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: database, version: 1.0.0 }
spec:
  workflow:
    steps:
      - id: create
        uses: db.create
        with: { name: "${{ params.name }}" }
        compensate: { uses: db.drop }
      - id: grant
        needs: [create]
        uses: db.grant
        retry: { max_attempts: 3, initial: 1s }
        compensate: { uses: db.revoke }
  delete:
    steps:
      - id: revoke
        uses: db.revoke
        with: { name: "${{ params.name }}" }
      - id: drop
        needs: [revoke]
        uses: db.drop
        with:
          outputs: "${{ request.outputs }}"
          db: "${{ has(request.outputs.db) ? request.outputs.db : 'none' }}"

  outputs:
    db: "${{ steps.create.outputs.db }}"
"#;

const DELETER: &str = "user:dba";

/// Hands the harness's run off to a delete, as `deletion::delete_request`
/// does, and stores the change.
fn hand_off_run(h: &mut Harness, delete_run_id: Option<RunId>, forced: bool) -> Writes {
    h.run.actor = DELETER.to_string();
    hand_off(
        &mut h.run,
        Handoff {
            delete_run_id,
            actor: DELETER.to_string(),
            forced,
        },
    )
    .expect("a running run is handed off");
    h.store()
}

#[test]
fn delete_stops_a_configure_run_at_its_step_boundary_then_starts_the_delete_run() {
    let (mut h, _) = Harness::start(DATABASE, json!({ "name": "orders" }));
    let create = h.latest("create", TaskKind::Action);
    h.started(create);

    let delete_run_id = RunId::generate();
    let writes = hand_off_run(&mut h, Some(delete_run_id), false);
    assert_eq!(
        events(&writes),
        vec![(event::RUN_CANCEL_REQUESTED, None, None)],
        "nothing ends yet: create is in flight"
    );
    assert!(
        writes.cancels.is_empty(),
        "the in-flight attempt is not killed"
    );
    assert!(tasks(&writes).is_empty(), "nothing new starts");
    assert!(writes.request.is_none() && writes.ending.is_none());
    assert_eq!(h.run.status, RunStatus::Running);
    assert_eq!(h.step("create").status, StepStatus::Running);
    assert_eq!(h.step("grant").status, StepStatus::Cancelled);
    assert!(h.run.spawned.is_none(), "the delete run waits for the stop");
    assert_eq!(h.attempts[&create].status, AttemptStatus::Running);

    // The in-flight attempt finishes: its result is applied and recorded,
    // nothing is compensated, and the delete run starts in the same change.
    let writes = h.succeed("create", TaskKind::Action, json!({ "db": "db-7" }));
    assert_eq!(h.step("create").status, StepStatus::Succeeded);
    assert_eq!(h.step("create").outputs, Some(json!({ "db": "db-7" })));
    assert_eq!(h.step("create").compensation, None, "nothing is undone");
    assert_eq!(h.run.status, RunStatus::Cancelled);
    assert!(
        events(&writes).contains(&("step.succeeded", Some("create"), Some(1))),
        "{:?}",
        events(&writes)
    );
    assert_eq!(
        events(&writes).last().map(|e| e.0),
        Some(event::RUN_CANCELLED)
    );
    assert!(tasks(&writes).is_empty(), "no undo is dispatched");
    let error = writes.ending.as_ref().and_then(|e| e.error.clone());
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("request deleted by user:dba")
                && e.contains(&delete_run_id.to_string())),
        "{error:?}"
    );
    assert!(
        writes.request.is_none(),
        "a handed-off run leaves the request deleting"
    );

    let delete = h.run.take_spawned().expect("the delete run starts");
    assert_eq!(delete.run_id, delete_run_id);
    assert_eq!(delete.kind, RunKind::Delete);
    assert_eq!(delete.request_id, h.run.request_id);
    assert_eq!(delete.actor, DELETER);
    let (d, writes) = Harness::of(delete);
    assert!(writes.created.is_some(), "its rows are inserted");
    assert_eq!(
        events(&writes)[..2],
        [
            (kinds::REQUEST_DELETE_REQUESTED, None, None),
            (event::RUN_STARTED, None, None)
        ]
    );
    let sent = tasks(&writes);
    assert_eq!(
        dispatched(&writes),
        vec![("revoke".into(), TaskKind::Action, 1)]
    );
    assert_eq!(sent[0].handler, "db.revoke");
    assert_eq!(
        sent[0].input,
        json!({ "name": "orders" }),
        "the teardown sees the configure run's params"
    );
    assert_eq!(d.run.status, RunStatus::Running);
    assert_eq!(d.step("drop").status, StepStatus::Pending);
    assert!(
        d.run.step("create").is_none(),
        "the configure steps are not its"
    );

    // The handed-off run is not retried: its delete run is.
    assert!(matches!(
        h.retry(None, false),
        Err(OperatorError::Conflict(_))
    ));
}

#[test]
fn a_failed_attempt_of_a_stopping_run_is_not_retried_and_the_run_ends_without_undo() {
    let (mut h, _) = Harness::start(DATABASE, json!({ "name": "orders" }));
    h.succeed("create", TaskKind::Action, json!({ "db": "db-7" }));
    let grant = h.latest("grant", TaskKind::Action);
    h.started(grant);

    let writes = hand_off_run(&mut h, None, false);
    assert!(writes.cancels.is_empty());
    assert_eq!(h.run.status, RunStatus::Running);

    // grant could retry (three attempts), but a stopping run starts nothing.
    let writes = h.fail("grant", TaskKind::Action, retryable("timeout"));
    assert!(tasks(&writes).is_empty(), "no retry, no undo");
    assert!(armed(&writes).is_empty(), "no retry timer");
    assert_eq!(h.step("grant").status, StepStatus::Failed);
    assert_eq!(h.step("create").status, StepStatus::Succeeded);
    assert_eq!(h.step("create").compensation, None);
    assert_eq!(h.run.status, RunStatus::Cancelled);
    assert!(h.run.spawned.is_none(), "no teardown to start");
    // Without a delete run, the request is deleted as the run ends, and the
    // history names who asked.
    assert_eq!(
        writes.request.as_ref().map(|r| r.status),
        Some(RequestStatus::Deleted)
    );
    let deleted = event_of(&writes, kinds::REQUEST_DELETED);
    assert_eq!(deleted.actor, DELETER);
    assert_eq!(deleted.data["forced"], json!(false));
    assert_eq!(deleted.data["request_id"], json!(h.run.request_id));
}

#[test]
fn forced_delete_abandons_in_flight_work_and_deletes_at_once() {
    let (mut h, _) = Harness::start(DATABASE, json!({ "name": "orders" }));
    h.succeed("create", TaskKind::Action, json!({ "db": "db-7" }));
    let grant = h.latest("grant", TaskKind::Action);

    let writes = hand_off_run(&mut h, None, true);
    assert_eq!(
        writes.cancels.len(),
        1,
        "the in-flight attempt is abandoned"
    );
    assert_eq!(writes.cancels[0].step_id, "grant");
    assert!(tasks(&writes).is_empty(), "no teardown, no undo");
    assert_eq!(h.run.status, RunStatus::Cancelled);
    assert_eq!(h.step("create").compensation, None);
    assert_eq!(
        writes.request.as_ref().map(|r| r.status),
        Some(RequestStatus::Deleted)
    );
    let deleted = event_of(&writes, kinds::REQUEST_DELETED);
    assert_eq!(deleted.actor, DELETER);
    assert_eq!(deleted.data["forced"], json!(true));
    assert!(h.run.spawned.is_none());

    let (applied, writes) = h.report(grant, Outcome::Ok { output: json!({}) });
    assert!(matches!(applied, Applied::Ignored(_)), "{applied:?}");
    assert_only_ignored(&writes);
}

#[test]
fn delete_run_settles_the_request_and_an_operator_retry_reopens_it() {
    let (mut h, _) = Harness::start(DATABASE, json!({ "name": "orders" }));
    h.succeed("create", TaskKind::Action, json!({ "db": "db-7" }));
    let grant = h.latest("grant", TaskKind::Action);
    h.started(grant);
    hand_off_run(&mut h, Some(RunId::generate()), false);
    h.succeed("grant", TaskKind::Action, json!({}));
    let delete = h.run.take_spawned().expect("the delete run starts");
    let (mut d, _) = Harness::of(delete);

    let writes = d.fail("revoke", TaskKind::Action, permanent("role in use"));
    assert_eq!(d.run.status, RunStatus::Failed);
    assert_eq!(d.step("drop").status, StepStatus::Cancelled);
    assert_eq!(
        writes.request.as_ref().map(|r| r.status),
        Some(RequestStatus::DeleteFailed)
    );
    let failed = event_of(&writes, kinds::REQUEST_DELETE_FAILED);
    assert_eq!(
        failed.data["reason"],
        json!("step revoke failed: role in use")
    );
    assert!(
        writes
            .events
            .iter()
            .all(|e| e.kind != kinds::REQUEST_DELETED)
    );

    let (plan, writes) = d
        .retry(None, false)
        .expect("a failed delete run is retried");
    assert_eq!(plan.rerun, vec!["revoke", "drop"]);
    assert_eq!(
        writes.request.as_ref().map(|r| r.status),
        Some(RequestStatus::Deleting)
    );
    assert_eq!(
        dispatched(&writes),
        vec![("revoke".into(), TaskKind::Action, 2)]
    );

    let writes = d.succeed("revoke", TaskKind::Action, json!({}));
    assert_eq!(
        tasks(&writes)[0].input,
        json!({ "outputs": {}, "db": "none" }),
        "a stopped configure run left the request no outputs"
    );
    let writes = d.succeed("drop", TaskKind::Action, json!({}));
    assert_eq!(d.run.status, RunStatus::Succeeded);
    assert_eq!(
        writes.request.as_ref().map(|r| r.status),
        Some(RequestStatus::Deleted)
    );
    assert_eq!(
        writes.request.as_ref().and_then(|r| r.outputs.clone()),
        None,
        "the request had no outputs to keep"
    );
    event_of(&writes, kinds::REQUEST_DELETED);
    assert_eq!(
        d.history_kinds().last(),
        Some(&event::RUN_SUCCEEDED),
        "{:?}",
        d.history_kinds()
    );
}

#[test]
fn a_compensating_run_finishes_the_undo_in_flight_then_hands_off() {
    let (mut h, _) = Harness::start(DATABASE, json!({ "name": "orders" }));
    h.succeed("create", TaskKind::Action, json!({ "db": "db-7" }));
    let writes = h.fail("grant", TaskKind::Action, permanent("no such role"));
    assert_eq!(h.run.status, RunStatus::Compensating);
    assert_eq!(
        dispatched(&writes),
        vec![("create".into(), TaskKind::Compensation, 1)]
    );

    let writes = hand_off_run(&mut h, Some(RunId::generate()), false);
    assert!(
        writes.cancels.is_empty(),
        "the undo in flight is not killed"
    );
    assert!(tasks(&writes).is_empty());
    assert_eq!(h.run.status, RunStatus::Compensating);
    assert!(h.run.spawned.is_none());

    let writes = h.succeed("create", TaskKind::Compensation, json!({}));
    assert_eq!(
        h.step("create").compensation,
        Some(CompensationStatus::Succeeded),
        "its result is applied"
    );
    assert_eq!(
        h.run.status,
        RunStatus::Cancelled,
        "not compensated: stopped"
    );
    assert!(writes.request.is_none());
    let delete = h.run.take_spawned().expect("the delete run starts");
    assert_eq!(delete.kind, RunKind::Delete);
    assert_eq!(delete.status, RunStatus::Running);
}
