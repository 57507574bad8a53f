//! A reconcile run, as the state machine sees it: it re-runs the configure
//! workflow, moves its request only as it ends, never compensates, and a
//! delete stops it at its step boundary as it stops a configure run.

use super::*;
use crate::run::deleting::{Handoff, hand_off};

/// create (with an undo) -> grant (with an undo, no retry); outputs read
/// both steps.
pub(super) const DATABASE: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: database, version: 1.0.0 }
spec:
  workflow:
    steps:
      - id: create
        uses: db.create
        with: { name: "${{ params.name }}", had: "${{ request.outputs }}" }
        compensate: { uses: db.drop }
      - id: grant
        needs: [create]
        uses: db.grant
        compensate: { uses: db.revoke }
  delete:
    steps:
      - id: drop
        uses: db.drop
        with: { db: "${{ request.outputs.db }}" }
  outputs:
    db: "${{ steps.create.outputs.db }}"
"#;

/// A reconcile run of a request whose live outputs are `{db: db-1}`,
/// started as `crate::reconcile` starts one.
fn start_reconcile() -> (Harness, Writes) {
    Harness::rerun(RunKind::Reconcile, DATABASE)
}

#[test]
fn a_failed_reconcile_run_ends_failed_and_undoes_nothing() {
    let (mut h, writes) = start_reconcile();
    assert_eq!(
        dispatched(&writes),
        vec![("create".into(), TaskKind::Action, 1)]
    );
    assert_eq!(
        tasks(&writes)[0].input,
        json!({ "name": "orders", "had": { "db": "db-1" } }),
        "it sees the configure inputs and the request's live outputs"
    );
    assert!(writes.request.is_none(), "starting moves no request");

    let writes = h.succeed("create", TaskKind::Action, json!({ "db": "db-1" }));
    assert!(writes.request.is_none(), "in flight, the request stays put");
    let writes = h.fail("grant", TaskKind::Action, permanent("grant refused"));

    assert_eq!(h.run.status, RunStatus::Failed);
    assert!(tasks(&writes).is_empty(), "no compensation is dispatched");
    assert_eq!(h.step("create").status, StepStatus::Succeeded);
    assert_eq!(h.step("create").compensation, None, "create is not undone");
    assert!(
        !h.history_kinds().contains(&event::RUN_COMPENSATING),
        "{:?}",
        h.history_kinds()
    );
    assert_eq!(h.history_kinds().last(), Some(&event::RUN_FAILED));
    let error = writes.ending.as_ref().and_then(|e| e.error.clone());
    assert!(
        error.as_deref().is_some_and(|e| e.contains("grant")),
        "the failing step is named: {error:?}"
    );
    let request = writes
        .request
        .as_ref()
        .expect("the request moves as it ends");
    assert_eq!(request.status, RequestStatus::Failed);
    assert_eq!(
        request.outputs,
        Some(json!({ "db": "db-1" })),
        "the live resources' outputs are kept"
    );

    // An operator's retry re-runs it; the request does not move meanwhile.
    let (plan, writes) = h.retry(None, false).expect("a failed run is retried");
    assert!(plan.applied);
    let request = writes
        .request
        .as_ref()
        .expect("a retry restates the request");
    assert_eq!(request.status, RequestStatus::Failed);
    assert_eq!(request.outputs, Some(json!({ "db": "db-1" })));
    h.succeed("grant", TaskKind::Action, json!({}));
    assert_eq!(h.run.status, RunStatus::Succeeded);
}

#[test]
fn a_succeeded_reconcile_run_replaces_the_outputs_and_a_cancel_undoes_nothing() {
    let (mut h, _) = start_reconcile();
    h.succeed("create", TaskKind::Action, json!({ "db": "db-2" }));
    let writes = h.succeed("grant", TaskKind::Action, json!({}));
    assert_eq!(h.run.status, RunStatus::Succeeded);
    let request = writes
        .request
        .as_ref()
        .expect("the request moves as it ends");
    assert_eq!(request.status, RequestStatus::Succeeded);
    assert_eq!(request.outputs, Some(json!({ "db": "db-2" })));

    // Cancelled with compensation asked for: still nothing is undone.
    let (mut h, _) = start_reconcile();
    h.succeed("create", TaskKind::Action, json!({ "db": "db-1" }));
    h.cancel(true).expect("a running run is cancelled");
    let writes = h.fail("grant", TaskKind::Action, permanent("stopped"));
    assert_eq!(h.run.status, RunStatus::Cancelled);
    assert!(tasks(&writes).is_empty(), "no compensation is dispatched");
    assert_eq!(h.step("create").compensation, None);
    assert_eq!(
        writes.request.as_ref().map(|r| r.status),
        Some(RequestStatus::Failed)
    );
}

#[test]
fn a_delete_stops_a_reconcile_run_at_its_step_boundary_and_the_teardown_sees_the_outputs() {
    let (mut h, _) = start_reconcile();
    let create = h.latest("create", TaskKind::Action);
    h.started(create);
    let delete_run_id = RunId::generate();
    hand_off(
        &mut h.run,
        Handoff {
            delete_run_id: Some(delete_run_id),
            actor: "user:dba".into(),
            forced: false,
        },
    )
    .expect("a running run is handed off");
    let writes = h.store();
    assert!(writes.cancels.is_empty(), "the in-flight attempt finishes");
    assert_eq!(h.step("grant").status, StepStatus::Cancelled);

    let writes = h.succeed("create", TaskKind::Action, json!({ "db": "db-1" }));
    assert_eq!(h.run.status, RunStatus::Cancelled);
    assert!(tasks(&writes).is_empty(), "nothing is undone");
    assert!(writes.request.is_none(), "the request stays deleting");
    let delete = h.run.take_spawned().expect("the delete run starts");
    assert_eq!(delete.kind(), RunKind::Delete);
    let mut d = Harness {
        run: delete,
        attempts: HashMap::new(),
        timers: Vec::new(),
        history: Vec::new(),
    };
    let writes = d.store();
    assert_eq!(
        tasks(&writes)[0].input,
        json!({ "db": "db-1" }),
        "the teardown reads the request's live outputs"
    );
}
