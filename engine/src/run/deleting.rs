//! How runs take part in a request's deletion.
//!
//! A run of kind `delete` follows the Promise's `spec.delete` workflow: it
//! is given a Promise whose `spec.workflow` is that teardown ([`teardown`]),
//! so planning, dispatch, retries, timeouts, compensation and operator
//! repair are those of any run. Its expressions see the configure run's
//! `params`, `request` and `vars`, with the request's outputs as
//! `request.outputs`. When it ends, the request becomes `deleted` (it
//! succeeded) or `delete_failed` (anything else); an operator's retry moves
//! the request back to `deleting`.
//!
//! A configure (or reconcile) run still going when its request is deleted is handed off
//! ([`Handoff`]): it starts nothing new (no new steps, no new
//! compensations), attempts in flight finish and their results are applied,
//! nothing is compensated, and it ends `cancelled`. Its end then never
//! touches the request's status the way a configure run's end does; it
//! starts the delete run in the same change (the run is
//! spawned and stored by the same flush), or, with no
//! teardown to run, marks the request `deleted`.
//!
//! Invariant: a request's status moves to `deleted` or `delete_failed`
//! only at the end of a run that records `request.deleted` or
//! `request.delete_failed` in the same change (or in the transaction of
//! the delete itself, see `crate::deletion`).

use std::sync::Arc;

use fulfil_core::dag::CompensationStatus;
use fulfil_core::ids::RunId;
use fulfil_core::status::{RequestStatus, RolloutTargetState, RunKind, TimerKind};
use fulfil_core::wire::TaskKind;
use fulfil_core::{Promise, RunStatus, StepStatus};
use serde_json::{Value, json};

use super::advance::{advance, finish, set_compensation, set_step, stop_in_flight};
use super::{NewRun, RequestUpdate, Run, RunError, TargetEnding, event};

/// History kinds of the delete lifecycle, as stored in `history.type`.
pub mod kinds {
    /// Someone asked to delete the request; data `{request_id, forced}`.
    pub const REQUEST_DELETE_REQUESTED: &str = "request.delete_requested";
    /// The request is deleted; data `{request_id, reason?, forced?}`.
    pub const REQUEST_DELETED: &str = "request.deleted";
    /// The delete run did not succeed; data `{request_id, reason}`.
    pub const REQUEST_DELETE_FAILED: &str = "request.delete_failed";
}

/// What a configure run does when it ends because its request is being
/// deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// The delete run to start; `None` when the Promise has no teardown
    /// (or the delete was forced): the request is then `deleted`.
    pub delete_run_id: Option<RunId>,
    /// Who asked for the delete, recorded in history.
    pub actor: String,
    /// `?force=true`: no teardown, recorded as forced.
    pub forced: bool,
}

/// The Promise a run of the Promise's `delete` workflow follows: the same
/// metadata, defaults and run timeout, `spec.delete` as its workflow, and
/// no outputs (a teardown's outputs are not the request's). `None` when
/// the Promise declares no `delete`.
pub fn teardown(promise: &Promise) -> Result<Option<Arc<Promise>>, RunError> {
    let Some(delete) = &promise.spec.delete else {
        return Ok(None);
    };
    let mut spec = promise.spec.clone();
    spec.workflow = delete.clone();
    spec.delete = None;
    spec.outputs.clear();
    // Through the stored form, which compiles it: the compiled settings are
    // keyed by the steps' place in `spec.workflow`, so a patched clone would
    // keep the configure workflow's. The teardown compiled once already, as
    // part of the Promise, so this does not fail for a stored Promise.
    let document = json!({
        "apiVersion": promise.api_version,
        "kind": promise.kind,
        "metadata": promise.metadata,
        "spec": spec,
    });
    Promise::from_stored(document)
        .map(|p| Some(Arc::new(p)))
        .map_err(|e| RunError::Corrupt(format!("the Promise's delete workflow: {e}")))
}

/// The Promise a run of `kind` follows, given its request's Promise.
pub(crate) fn promise_for(kind: RunKind, promise: Arc<Promise>) -> Result<Arc<Promise>, RunError> {
    match kind {
        RunKind::Delete => teardown(&promise)?.ok_or_else(|| {
            RunError::Corrupt(format!(
                "a delete run of Promise {} {}, which has no delete workflow",
                promise.metadata.name, promise.metadata.version
            ))
        }),
        RunKind::Configure | RunKind::Reconcile | RunKind::Upgrade => Ok(promise),
    }
}

/// A configure run's context as a delete run's expressions see it: the
/// same, with the request's outputs as `request.outputs` (`{}` when it has
/// none, as when its configure run was stopped: a teardown tests
/// `has(request.outputs.x)` instead of failing to render).
pub fn delete_context(configure_context: &Value, outputs: Option<&Value>) -> Value {
    let mut context = configure_context.clone();
    if let Some(object) = context.as_object_mut() {
        let request = object
            .entry("request")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(request) = request.as_object_mut() {
            request.insert(
                "outputs".to_string(),
                outputs
                    .filter(|v| !v.is_null())
                    .cloned()
                    .unwrap_or_else(|| Value::Object(serde_json::Map::new())),
            );
        }
    }
    context
}

/// What the teardown starts from.
pub struct NewDeleteRun {
    pub delete_run_id: RunId,
    /// The request's Promise (not the teardown view).
    pub promise: Arc<Promise>,
    /// The delete run's context ([`delete_context`]).
    pub context: Value,
    pub actor: String,
}

/// Creates the delete run of `of`'s request in memory, started: its first
/// events, its run timeout, its root tasks. Its rows are inserted by the
/// flush that stores it.
pub(crate) fn start_delete_run(of: &Run, new: NewDeleteRun) -> Result<Run, RunError> {
    let promise = promise_for(RunKind::Delete, new.promise)?;
    let mut run = Run::new(NewRun {
        kind: RunKind::Delete,
        run_id: new.delete_run_id,
        request_id: of.request_id,
        context: new.context,
        promise: promise.clone(),
        names: of.names.clone(),
        actor: new.actor,
        fast_publish: of.fast_publish,
    });
    run.record(
        kinds::REQUEST_DELETE_REQUESTED,
        None,
        None,
        json!({ "request_id": of.request_id, "configure_run_id": of.run_id, "forced": false }),
    );
    run.record(event::RUN_STARTED, None, None, json!({ "kind": run.kind }));
    if let Some(limit) = promise.run_timeout() {
        let fire_at = fulfil_core::time::deadline_after(chrono::Utc::now(), limit);
        run.add_timer(TimerKind::RunTimeout, "", None, fire_at);
    }
    advance(&mut run)?;
    Ok(run)
}

/// The request's outputs as a delete or reconcile run keeps them: the ones
/// it was given in `request.outputs`, so a teardown's end (or a failed
/// reconcile's) leaves them as they were (`{}` stood for none).
fn kept_outputs(run: &Run) -> Option<Value> {
    run.context
        .get("request")
        .and_then(|r| r.get("outputs"))
        .filter(|v| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()))
        .cloned()
}

/// Keeps the request's status in step with a run that ends with `status`:
/// a configure run's request follows it ([`RequestStatus::following`]); a
/// reconcile or upgrade run's becomes `succeeded` with the run's outputs
/// (an upgrade's also on the run's version) or `failed` with its outputs
/// and version kept, and an upgrade run's rollout target follows; a
/// delete run's becomes `deleted` or `delete_failed`; a handed-off run's is
/// left to the delete (which it starts now, or which ends with it).
pub(super) fn settle_request(
    run: &mut Run,
    status: RunStatus,
    outputs: Option<Value>,
    error: Option<&str>,
) -> Result<(), RunError> {
    super::child::notify_parent(run);
    if run.kind == RunKind::Upgrade {
        // The rollout's target moves with the run's end, in its change.
        run.set_rollout_target(upgrade_target(run, status, error));
    }
    if let Some(handoff) = run.handoff.clone() {
        match handoff.delete_run_id {
            Some(delete_run_id) => {
                let delete = start_delete_run(
                    run,
                    NewDeleteRun {
                        delete_run_id,
                        promise: run.promise.clone(),
                        // A configure run's context holds no outputs; a
                        // reconcile run's holds the request's live ones.
                        context: delete_context(&run.context, kept_outputs(run).as_ref()),
                        actor: handoff.actor,
                    },
                )?;
                run.spawned = Some(Box::new(delete));
            }
            None => {
                run.set_request_status(RequestUpdate {
                    status: RequestStatus::Deleted,
                    outputs: None,
                    promise_version: None,
                });
                let data = json!({ "request_id": run.request_id, "forced": handoff.forced,
                                   "reason": if handoff.forced { "forced" } else { "the Promise has no delete workflow" } });
                let actor = std::mem::replace(&mut run.actor, handoff.actor);
                run.record(kinds::REQUEST_DELETED, None, None, data);
                run.actor = actor;
            }
        }
        return Ok(());
    }
    match run.kind {
        RunKind::Delete => {
            let outputs = kept_outputs(run);
            if status == RunStatus::Succeeded {
                run.set_request_status(RequestUpdate {
                    status: RequestStatus::Deleted,
                    outputs,
                    promise_version: None,
                });
                run.record(
                    kinds::REQUEST_DELETED,
                    None,
                    None,
                    json!({ "request_id": run.request_id }),
                );
            } else {
                run.set_request_status(RequestUpdate {
                    status: RequestStatus::DeleteFailed,
                    outputs,
                    promise_version: None,
                });
                run.record(
                    kinds::REQUEST_DELETE_FAILED,
                    None,
                    None,
                    json!({ "request_id": run.request_id, "reason": error }),
                );
            }
        }
        RunKind::Configure => {
            run.set_request_status(RequestUpdate {
                status: RequestStatus::following(status),
                outputs,
                promise_version: None,
            });
        }
        // Succeeded: the request's outputs are the run's. Otherwise the
        // request is `failed` (the run says why) and keeps the outputs it
        // had, which still describe its live resources: a reconcile run
        // undoes nothing (see `crate::reconcile`).
        // An upgrade run's succeeded request also moves to the version the
        // run followed (`crate::rollout`); a failed one keeps its own.
        RunKind::Reconcile | RunKind::Upgrade => {
            let update = if status == RunStatus::Succeeded {
                RequestUpdate {
                    status: RequestStatus::Succeeded,
                    outputs,
                    promise_version: (run.kind == RunKind::Upgrade)
                        .then(|| run.promise.metadata.version.clone()),
                }
            } else {
                RequestUpdate {
                    status: RequestStatus::Failed,
                    outputs: kept_outputs(run),
                    promise_version: None,
                }
            };
            run.set_request_status(update);
        }
    }
    Ok(())
}

/// Where an upgrade run ending with `status` leaves its rollout target:
/// `succeeded`, `failed` with the run's error, or `skipped` when the run
/// stopped because its request is being deleted.
fn upgrade_target(run: &Run, status: RunStatus, error: Option<&str>) -> TargetEnding {
    let (state, error) = match (&run.handoff, status) {
        (Some(handoff), _) => (
            RolloutTargetState::Skipped,
            Some(format!(
                "the request was deleted by {} during its upgrade",
                handoff.actor
            )),
        ),
        (None, RunStatus::Succeeded) => (RolloutTargetState::Succeeded, None),
        (None, other) => (
            RolloutTargetState::Failed,
            Some(
                error
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("the upgrade run ended {other}")),
            ),
        ),
    };
    TargetEnding { state, error }
}

/// The request's status while an operator's retry re-opens `run`.
pub(super) fn reopened_request(run: &Run) -> RequestUpdate {
    match run.kind {
        RunKind::Delete => RequestUpdate {
            status: RequestStatus::Deleting,
            outputs: kept_outputs(run),
            promise_version: None,
        },
        RunKind::Configure => RequestUpdate {
            status: RequestStatus::Running,
            outputs: None,
            promise_version: None,
        },
        // A reconcile or upgrade run in flight never moves its request: it
        // stays as the run's failure left it, with its outputs (and its
        // version).
        RunKind::Reconcile | RunKind::Upgrade => RequestUpdate {
            status: RequestStatus::Failed,
            outputs: kept_outputs(run),
            promise_version: None,
        },
    }
}

/// Hands a configure run that has not ended off to its request's delete
/// (see the module docs), in memory; the caller stores it. Without
/// `forced`, it stops at its step boundary: steps not started are
/// cancelled, attempts in flight are left to finish (their results are
/// applied; a failure is not retried), and it ends once nothing is in
/// flight, which may be now. `forced` ends it now: in-flight attempts are
/// abandoned (their results ignored) and nothing is undone.
pub(crate) fn hand_off(run: &mut Run, handoff: Handoff) -> Result<(), RunError> {
    if run.status.is_terminal() {
        return Err(RunError::Corrupt(format!(
            "run {} is already {}; only a run that has not ended is handed off",
            run.run_id,
            run.status.as_str()
        )));
    }
    let why = match (&handoff.delete_run_id, handoff.forced) {
        (_, true) => format!("stopped: request force-deleted by {}", handoff.actor),
        (Some(delete), false) => format!(
            "stopped: request deleted by {}; delete run {delete} follows",
            handoff.actor
        ),
        (None, false) => format!("stopped: request deleted by {}", handoff.actor),
    };
    let forced = handoff.forced;
    run.handoff = Some(handoff);
    run.request_cancel(why.clone());
    run.record(
        event::RUN_CANCEL_REQUESTED,
        None,
        None,
        json!({ "compensate": false, "reason": why, "request_deleted": true, "forced": forced }),
    );
    // Nothing runs these now: a retry's backoff, a step not started, an
    // approval no one gave. Their timers find them cancelled and do nothing.
    super::waiting::cancel_waiting(run, &why)?;
    let idle: Vec<String> = run
        .steps
        .values()
        .filter(|s| matches!(s.status, StepStatus::Pending | StepStatus::Retrying))
        .map(|s| s.step_id.clone())
        .collect();
    for step_id in idle {
        set_step(run, &step_id, StepStatus::Cancelled, None, None, Some(&why))?;
    }
    let idle_undos: Vec<String> = run
        .steps
        .values()
        .filter(|s| {
            matches!(
                s.compensation,
                Some(CompensationStatus::Pending | CompensationStatus::Retrying)
            )
        })
        .map(|s| s.step_id.clone())
        .collect();
    for step_id in idle_undos {
        set_compensation(
            run,
            &step_id,
            CompensationStatus::Cancelled,
            None,
            Some(&why),
        )?;
    }
    if forced {
        stop_in_flight(run, TaskKind::Action, &why)?;
        stop_in_flight(run, TaskKind::Compensation, &why)?;
        return finish(run, RunStatus::Cancelled, Some(why));
    }
    advance(run)
}
