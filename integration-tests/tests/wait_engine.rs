//! The engine side of durable waits, end to end on the real services: an
//! event wait matched by correlation (and one event completing several
//! waits), a lookback match, an approval reaching its quorum through the
//! engine's decision API, a sleep, and the indexed lookup that keeps an
//! event from reading waits filed under other values.

use std::time::Duration;

use fulfil_core::ids::RunId;
use fulfil_core::status::Decision;
use fulfil_core::wait::Principal;
use fulfil_engine::waits::{ApprovalError, ApprovalRequest, decide_approval};
use fulfil_integration_tests::TestStack;
use serde_json::{Value, json};

const PROMISE: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: gated-db, version: 1.0.0 }
spec:
  api:
    type: object
    required: [name]
    properties: { name: { type: string } }
  workflow:
    steps:
      - { id: prep, uses: noop }
      - id: ready
        needs: [prep]
        uses: wait.event
        with: { type: com.acme.db.ready, lookback: 1m,
                match: "event.data.name == params.name" }
        timeout: 1m
      - id: approve
        needs: [ready]
        uses: approval
        with: { approvers: ["user:alice", "user:bob", "user:carol"], quorum: 2,
                message: "Create ${{ params.name }}?" }
        timeout: 1m
      - id: nap
        needs: [approve]
        uses: sleep
        with: { for: 1s }
  outputs:
    ready_from: "${{ steps.ready.outputs.source }}"
"#;

async fn post_event(stack: &TestStack, id: &str, name: &str) -> anyhow::Result<Value> {
    let response = stack
        .http
        .post(format!("{}/v1/events", stack.api))
        .header("content-type", "application/cloudevents+json")
        .body(serde_json::to_vec(&json!({
            "specversion": "1.0", "id": id, "source": "provisioner",
            "type": "com.acme.db.ready", "data": { "name": name }
        }))?)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 202,
        "POST /v1/events: {}",
        response.status()
    );
    Ok(response.json().await?)
}

/// The step as the engine shows it (`fulfil_engine::inspect`, what the
/// API serves).
async fn step_status(stack: &TestStack, run: RunId, step: &str) -> anyhow::Result<Value> {
    let view = fulfil_engine::inspect::get_run(&stack.pool, run)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no run {run}"))?;
    let run = serde_json::to_value(view)?;
    let found = run["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"] == step))
        .cloned();
    found.ok_or_else(|| anyhow::anyhow!("no step {step} in {run}"))
}

async fn until_waiting(stack: &TestStack, run: RunId, step: &str) -> anyhow::Result<Value> {
    for _ in 0..200 {
        let view = step_status(stack, run, step).await?;
        if view["status"] == "waiting" {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("step {step} of {run} never waited")
}

fn decide(run_id: RunId, who: &str, decision: Decision) -> ApprovalRequest {
    ApprovalRequest {
        run_id,
        step_id: "approve".into(),
        principal: Principal::from_actor(who),
        decision,
        comment: Some(format!("{who} says {decision}")),
    }
}

#[tokio::test]
async fn waits_complete_by_correlated_event_lookback_quorum_and_time() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack.apply(PROMISE).await?;
    let orders = stack.request("gated-db", json!({"name": "orders"})).await?;
    let orders_twin = stack.request("gated-db", json!({"name": "orders"})).await?;
    let billing = stack
        .request("gated-db", json!({"name": "billing"}))
        .await?;
    let waiting = until_waiting(&stack, orders, "ready").await?;
    assert_eq!(waiting["waiting_for"]["kind"], "event");
    assert_eq!(waiting["waiting_for"]["type"], "com.acme.db.ready");
    assert!(waiting["waiting_for"]["until"].is_string(), "{waiting}");
    until_waiting(&stack, orders_twin, "ready").await?;
    until_waiting(&stack, billing, "ready").await?;

    // An event for another name completes nothing; the one for "orders"
    // completes both runs waiting on it, and only those.
    let receipt = post_event(&stack, "e-1", "payments").await?;
    assert_eq!(receipt["waits_completed"], json!([]), "{receipt}");
    let receipt = post_event(&stack, "e-2", "orders").await?;
    let mut completed: Vec<String> = receipt["waits_completed"]
        .as_array()
        .map(|w| {
            w.iter()
                .map(|c| c["run_id"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    completed.sort();
    let mut expected = vec![orders.to_string(), orders_twin.to_string()];
    expected.sort();
    assert_eq!(completed, expected, "{receipt}");
    let approval = until_waiting(&stack, orders, "approve").await?;
    assert_eq!(approval["waiting_for"]["message"], "Create orders?");
    assert_eq!(approval["waiting_for"]["quorum"], 2);
    let ready = step_status(&stack, orders, "ready").await?;
    assert_eq!(
        ready["outputs"]["id"], "e-2",
        "the step's output is the event"
    );
    assert_eq!(
        step_status(&stack, billing, "ready").await?["status"],
        "waiting"
    );

    // Approvals: an outsider and a second decision by the same principal
    // are refused; two distinct approvers reach the quorum.
    let outsider = decide_approval(
        &stack.engine,
        decide(orders, "user:mallory", Decision::Approve),
    )
    .await;
    assert!(
        matches!(outsider, Err(ApprovalError::NotAnApprover { .. })),
        "{outsider:?}"
    );
    let first = decide_approval(
        &stack.engine,
        decide(orders, "user:alice", Decision::Approve),
    )
    .await?;
    assert_eq!((first.approvals, first.quorum), (1, 2));
    assert_eq!(first.step_status, fulfil_core::StepStatus::Waiting);
    let again = decide_approval(
        &stack.engine,
        decide(orders, "user:alice", Decision::Approve),
    )
    .await;
    assert!(
        matches!(again, Err(ApprovalError::AlreadyDecided { .. })),
        "{again:?}"
    );
    let second =
        decide_approval(&stack.engine, decide(orders, "user:bob", Decision::Approve)).await?;
    assert_eq!(second.step_status, fulfil_core::StepStatus::Succeeded);
    let late = decide_approval(
        &stack.engine,
        decide(orders, "user:carol", Decision::Approve),
    )
    .await;
    assert!(
        matches!(late, Err(ApprovalError::NotWaiting { .. })),
        "{late:?}"
    );

    // The sleep ends the run.
    let finished = stack.wait_finished(orders, Duration::from_secs(20)).await?;
    assert_eq!(finished["status"], "succeeded", "{finished}");
    assert_eq!(finished["outputs"]["ready_from"], "provisioner");
    let history = stack.history(orders).await?;
    let kinds: Vec<&str> = history.iter().filter_map(|e| e["type"].as_str()).collect();
    for kind in ["step.waiting", "wait.matched", "approval.decided"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let decided: Vec<&Value> = history
        .iter()
        .filter(|e| e["type"] == "approval.decided")
        .collect();
    assert_eq!(decided.len(), 2);
    assert_eq!(decided[0]["actor"], "user:alice");
    assert_eq!(decided[0]["data"]["comment"], "user:alice says approve");

    // Rejecting fails the step with `rejected`.
    let rejected = decide_approval(
        &stack.engine,
        decide(orders_twin, "user:carol", Decision::Reject),
    )
    .await;
    match rejected {
        Ok(outcome) => assert_eq!(outcome.step_status, fulfil_core::StepStatus::Failed),
        // The twin may still be between its event and its approval step.
        Err(ApprovalError::NotWaiting { .. }) => {
            until_waiting(&stack, orders_twin, "approve").await?;
            let outcome = decide_approval(
                &stack.engine,
                decide(orders_twin, "user:carol", Decision::Reject),
            )
            .await?;
            assert_eq!(outcome.step_status, fulfil_core::StepStatus::Failed);
        }
        Err(e) => return Err(e.into()),
    }
    let failed = stack
        .wait_finished(orders_twin, Duration::from_secs(20))
        .await?;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("rejected by user:carol")),
        "{failed}"
    );

    // Lookback: the event came first, the wait finds it when it begins.
    post_event(&stack, "e-3", "invoices").await?;
    let invoices = stack
        .request("gated-db", json!({"name": "invoices"}))
        .await?;
    until_waiting(&stack, invoices, "approve").await?;
    let ready = step_status(&stack, invoices, "ready").await?;
    assert_eq!(ready["outputs"]["id"], "e-3", "{ready}");

    // Waits left behind by finished runs are gone; billing still waits.
    let left: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT run_id, step_id FROM fulfil.waits ORDER BY run_id, step_id")
            .fetch_all(&stack.pool)
            .await?;
    assert!(
        left.iter()
            .any(|(r, s)| *r == billing.as_uuid() && s == "ready"),
        "{left:?}"
    );
    assert!(
        !left
            .iter()
            .any(|(r, _)| *r == orders.as_uuid() || *r == orders_twin.as_uuid()),
        "{left:?}"
    );
    stack.stop().await
}
