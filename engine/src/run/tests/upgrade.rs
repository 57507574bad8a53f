//! An upgrade run (a rollout's, `crate::rollout`), as the state machine
//! sees it: it follows the new version, undoes nothing, and as it ends
//! moves its request (to the new version only when it succeeded) and its
//! rollout target in the same change.

use fulfil_core::status::RolloutTargetState;

use super::reconcile::DATABASE;
use super::*;
use crate::run::deleting::{Handoff, hand_off};

/// An upgrade run to `database` 1.0.0 (reconcile's test Promise) of a
/// request whose live outputs are `{db: db-1}`, started as the rollout
/// driver starts one.
fn start_upgrade() -> (Harness, Writes) {
    Harness::rerun(RunKind::Upgrade, DATABASE)
}

#[test]
fn a_succeeded_upgrade_moves_the_request_to_its_version_and_its_target() {
    let (mut h, writes) = start_upgrade();
    assert!(writes.request.is_none() && writes.rollout_target.is_none());
    let writes = h.succeed("create", TaskKind::Action, json!({ "db": "db-2" }));
    assert!(writes.request.is_none(), "in flight, the request stays put");
    let writes = h.succeed("grant", TaskKind::Action, json!({}));
    assert_eq!(h.run.status, RunStatus::Succeeded);
    let request = writes.request.as_ref().expect("the request moves");
    assert_eq!(request.status, RequestStatus::Succeeded);
    assert_eq!(request.outputs, Some(json!({ "db": "db-2" })));
    assert_eq!(request.promise_version.as_deref(), Some("1.0.0"));
    let target = writes.rollout_target.as_ref().expect("the target moves");
    assert_eq!(target.state, RolloutTargetState::Succeeded);
    assert_eq!(target.error, None);
}

#[test]
fn a_failed_upgrade_undoes_nothing_and_keeps_the_version_and_outputs() {
    let (mut h, _) = start_upgrade();
    h.succeed("create", TaskKind::Action, json!({ "db": "db-2" }));
    let writes = h.fail("grant", TaskKind::Action, permanent("grant refused"));
    assert_eq!(h.run.status, RunStatus::Failed);
    assert!(tasks(&writes).is_empty(), "no compensation is dispatched");
    assert_eq!(h.step("create").compensation, None, "create is not undone");
    let request = writes.request.as_ref().expect("the request moves");
    assert_eq!(request.status, RequestStatus::Failed);
    assert_eq!(request.outputs, Some(json!({ "db": "db-1" })));
    assert_eq!(request.promise_version, None, "it keeps its version");
    let target = writes.rollout_target.as_ref().expect("the target moves");
    assert_eq!(target.state, RolloutTargetState::Failed);
    assert!(
        target.error.as_deref().is_some_and(|e| e.contains("grant")),
        "{target:?}"
    );
}

#[test]
fn a_delete_during_an_upgrade_skips_its_target() {
    let (mut h, _) = start_upgrade();
    hand_off(
        &mut h.run,
        Handoff {
            delete_run_id: None,
            actor: "user:dev".into(),
            forced: false,
        },
    )
    .expect("an upgrade run in flight is handed off");
    let writes = h.succeed("create", TaskKind::Action, json!({ "db": "db-2" }));
    assert_eq!(h.run.status, RunStatus::Cancelled);
    let request = writes.request.as_ref().expect("the request is deleted");
    assert_eq!(request.status, RequestStatus::Deleted);
    assert_eq!(request.promise_version, None);
    let target = writes.rollout_target.as_ref().expect("the target moves");
    assert_eq!(target.state, RolloutTargetState::Skipped);
    assert!(
        target
            .error
            .as_deref()
            .is_some_and(|e| e.contains("user:dev")),
        "{target:?}"
    );
}
