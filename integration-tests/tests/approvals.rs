//! `approval` steps against the real Postgres and NATS, through the HTTP
//! API (DESIGN.md "Waits"): a quorum of distinct principals completes the
//! step (the same principal twice does not count), the requester may not
//! approve their own request unless `allow_requester`, someone who is not
//! an approver is refused, a reject fails the step `rejected` and an
//! expiry `approval_expired`, both compensated as any permanent failure;
//! every decision is in history with who, when and the comment.
//!
//! The principal is the `Fulfil-Actor` header until access control lands;
//! the request's `created_by` is the same header on the request that filed
//! it.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use fulfil_core::ids::RunId;
use fulfil_integration_tests::TestStack;
use serde_json::{Value, json};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);

/// `provision` (undone by `compensate`) → `approve` → `done`.
fn promise(name: &str, approval: &str, timeout: &str) -> String {
    format!(
        r#"apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: {name}, version: "1" }}
spec:
  api:
    type: object
    required: [name]
    properties:
      name: {{ type: string }}
  workflow:
    steps:
      - id: provision
        uses: echo
        with: {{ db: "${{{{ params.name }}}}" }}
        compensate: {{ uses: noop }}
      - id: approve
        needs: [provision]
        uses: approval
        with: {approval}
{timeout}
      - id: done
        needs: [approve]
        uses: echo
        with: {{ decisions: "${{{{ steps.approve.outputs.decisions }}}}" }}
"#
    )
}

const QUORUM_TWO: &str = r#"{ approvers: ["user:alice", "user:bob", "team:dba"], quorum: 2, message: "Large DB ${{ params.name }}" }"#;

/// Files a request as `requester` (the `Fulfil-Actor` header).
async fn file(
    stack: &TestStack,
    promise: &str,
    name: &str,
    requester: &str,
) -> anyhow::Result<RunId> {
    let response = stack
        .http
        .post(format!("{}/v1/promises/{promise}/requests", stack.api))
        .header("Fulfil-Actor", requester)
        .json(&json!({ "params": { "name": name } }))
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await?;
    anyhow::ensure!(status == 202, "request refused with {status}: {body}");
    Ok(body["run_id"].as_str().unwrap_or_default().parse()?)
}

/// `POST /v1/runs/{run}/steps/{step}/{verb}` as `principal` (none: no
/// header), with `body` (none: no body at all).
async fn decide(
    stack: &TestStack,
    run: &str,
    step: &str,
    verb: &str,
    principal: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = stack
        .http
        .post(format!("{}/v1/runs/{run}/steps/{step}/{verb}", stack.api));
    if let Some(principal) = principal {
        request = request.header("Fulfil-Actor", principal);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body: Value = response.json().await?;
    if status >= 400 {
        assert_eq!(content_type, "application/problem+json", "{body}");
    }
    Ok((status, body))
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"] == id))
        .unwrap_or(&Value::Null)
}

async fn until_waiting(stack: &TestStack, run: RunId) -> anyhow::Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = stack.run(run).await?;
        if step(&body, "approve")["status"] == "waiting" {
            return Ok(body);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "approve of {run} not waiting within {WAIT:?}: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn problem_type(body: &Value) -> &str {
    body["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("https://fulfil.dev/problems/"))
        .unwrap_or("?")
}

fn of_type<'a>(history: &'a [Value], kind: &str) -> Vec<&'a Value> {
    history.iter().filter(|e| e["type"] == kind).collect()
}

#[tokio::test]
async fn a_quorum_of_two_distinct_principals_approves_and_every_decision_is_in_history()
-> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack
        .apply(&promise("big-db", QUORUM_TWO, "        timeout: 10m"))
        .await?;
    let run = file(&stack, "big-db", "orders", "user:carol").await?;
    let id = run.to_string();
    let body = until_waiting(&stack, run).await?;
    let waiting_for = &step(&body, "approve")["waiting_for"];
    assert_eq!(waiting_for["kind"], "approval", "{body:#}");
    assert_eq!(
        waiting_for["approvers"],
        json!(["user:alice", "user:bob", "team:dba"])
    );
    assert_eq!(waiting_for["quorum"], 2);
    assert_eq!(waiting_for["allow_requester"], false);
    assert_eq!(
        waiting_for["message"], "Large DB orders",
        "rendered from the run"
    );
    assert_eq!(waiting_for["decisions"], json!([]));
    assert!(waiting_for["until"].is_string(), "{waiting_for}");
    let (_, request) = stack
        .get(&format!(
            "/v1/requests/{}",
            body["request_id"].as_str().unwrap_or("")
        ))
        .await?;
    assert_eq!(request["created_by"], "user:carol", "{request:#}");

    // No principal: a 400 that says how to give one; nothing recorded.
    let (status, problem) = decide(&stack, &id, "approve", "approve", None, None).await?;
    assert_eq!(status, 400, "{problem:#}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("principal") && d.contains("Fulfil-Actor")),
        "{problem:#}"
    );
    // Not an approver.
    let (status, problem) = decide(
        &stack,
        &id,
        "approve",
        "approve",
        Some("user:mallory"),
        None,
    )
    .await?;
    assert_eq!(status, 403, "{problem:#}");
    assert_eq!(problem_type(&problem), "not-an-approver", "{problem:#}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("user:mallory")),
        "{problem:#}"
    );
    // Wrong step, wrong run.
    let (status, problem) =
        decide(&stack, &id, "nope", "approve", Some("user:alice"), None).await?;
    assert_eq!(
        (status, problem_type(&problem)),
        (422, "unknown-step"),
        "{problem:#}"
    );
    let (status, problem) = decide(
        &stack,
        &id,
        "provision",
        "approve",
        Some("user:alice"),
        None,
    )
    .await?;
    assert_eq!(status, 409, "{problem:#}");
    assert!(
        ["not-an-approval", "step-not-waiting"].contains(&problem_type(&problem)),
        "{problem:#}"
    );
    let (status, _) = decide(
        &stack,
        &RunId::generate().to_string(),
        "approve",
        "approve",
        Some("user:alice"),
        None,
    )
    .await?;
    assert_eq!(status, 404);
    let (status, problem) = decide(
        &stack,
        "not-a-uuid",
        "approve",
        "approve",
        Some("user:alice"),
        None,
    )
    .await?;
    assert_eq!(status, 400, "{problem:#}");
    let (status, problem) = decide(
        &stack,
        &id,
        "approve",
        "approve",
        Some("user:alice"),
        Some(json!({ "comment": "ok", "by": "user:bob" })),
    )
    .await?;
    assert_eq!(
        status, 422,
        "the principal never comes from the body: {problem:#}"
    );
    let history = stack.history(run).await?;
    assert!(
        of_type(&history, "approval.decided").is_empty(),
        "{history:#?}"
    );

    // The first approval counts one of two.
    let (status, outcome) = decide(
        &stack,
        &id,
        "approve",
        "approve",
        Some("user:alice"),
        Some(json!({ "comment": "sized right" })),
    )
    .await?;
    assert_eq!(status, 200, "{outcome:#}");
    assert_eq!(outcome["run_id"], id);
    assert_eq!(outcome["step"], "approve");
    assert_eq!(outcome["decision"], "approve");
    assert_eq!(outcome["by"], "user:alice");
    assert_eq!(outcome["approvals"], 1);
    assert_eq!(outcome["quorum"], 2);
    assert_eq!(outcome["step_status"], "waiting");
    // The same principal again does not count.
    let (status, problem) = decide(
        &stack,
        &id,
        "approve",
        "approve",
        Some("user:alice"),
        Some(json!({ "comment": "really" })),
    )
    .await?;
    assert_eq!(
        (status, problem_type(&problem)),
        (409, "already-decided"),
        "{problem:#}"
    );
    let body = stack.run(run).await?;
    assert_eq!(step(&body, "approve")["status"], "waiting", "{body:#}");
    let decisions = &step(&body, "approve")["waiting_for"]["decisions"];
    assert_eq!(decisions.as_array().map(Vec::len), Some(1), "{body:#}");
    assert_eq!(decisions[0]["by"], "user:alice");
    assert_eq!(decisions[0]["comment"], "sized right");

    // A second, distinct principal reaches the quorum (no body at all).
    let (status, outcome) =
        decide(&stack, &id, "approve", "approve", Some("user:bob"), None).await?;
    assert_eq!(status, 200, "{outcome:#}");
    assert_eq!(outcome["approvals"], 2);
    assert_eq!(outcome["step_status"], "succeeded", "{outcome:#}");
    assert_eq!(outcome["decisions"].as_array().map(Vec::len), Some(2));
    let body = stack.wait_finished(run, WAIT).await?;
    assert_eq!(body["status"], "succeeded", "{body:#}");
    let decisions = &step(&body, "approve")["outputs"]["decisions"];
    assert_eq!(decisions.as_array().map(Vec::len), Some(2), "{body:#}");
    assert_eq!(decisions[0]["by"], "user:alice");
    assert_eq!(decisions[0]["decision"], "approve");
    assert_eq!(decisions[0]["comment"], "sized right");
    assert_eq!(decisions[1]["by"], "user:bob");
    assert!(decisions[1]["comment"].is_null(), "{decisions}");
    assert_eq!(
        &step(&body, "done")["outputs"]["decisions"],
        decisions,
        "the next step reads the decisions"
    );

    // History: each decision with who (the actor), when and the comment.
    let history = stack.history(run).await?;
    let decided = of_type(&history, "approval.decided");
    assert_eq!(decided.len(), 2, "{history:#?}");
    for (event, (who, comment)) in decided.iter().zip([
        ("user:alice", json!("sized right")),
        ("user:bob", Value::Null),
    ]) {
        assert_eq!(event["step"], "approve");
        assert_eq!(event["actor"], who, "{event}");
        assert_eq!(event["data"]["by"], who);
        assert_eq!(event["data"]["decision"], "approve");
        assert_eq!(event["data"]["comment"], comment, "{event}");
        let at: DateTime<Utc> = event["data"]["at"].as_str().context("at")?.parse()?;
        assert!((Utc::now() - at).num_seconds() < 60, "{event}");
    }
    assert_eq!(
        history
            .iter()
            .filter(|e| e["step"] == "approve" && e["type"] == "step.succeeded")
            .count(),
        1
    );
    // Decided: a third approver is too late.
    let (status, problem) =
        decide(&stack, &id, "approve", "approve", Some("team:dba"), None).await?;
    assert_eq!(
        (status, problem_type(&problem)),
        (409, "step-not-waiting"),
        "{problem:#}"
    );
    assert_eq!(
        of_type(&stack.history(run).await?, "approval.decided").len(),
        2
    );

    // The requester may not approve their own request...
    let own = file(&stack, "big-db", "ledger", "user:alice").await?;
    until_waiting(&stack, own).await?;
    let (status, problem) = decide(
        &stack,
        &own.to_string(),
        "approve",
        "approve",
        Some("user:alice"),
        None,
    )
    .await?;
    assert_eq!(
        (status, problem_type(&problem)),
        (403, "requester-cannot-approve"),
        "{problem:#}"
    );
    assert!(of_type(&stack.history(own).await?, "approval.decided").is_empty());
    // ... unless the step allows it.
    stack
        .apply(&promise(
            "self-serve",
            r#"{ approvers: ["user:alice"], allow_requester: true }"#,
            "",
        ))
        .await?;
    let allowed = file(&stack, "self-serve", "scratch", "user:alice").await?;
    until_waiting(&stack, allowed).await?;
    let (status, outcome) = decide(
        &stack,
        &allowed.to_string(),
        "approve",
        "approve",
        Some("user:alice"),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{outcome:#}");
    assert_eq!(outcome["step_status"], "succeeded", "quorum 1 by default");
    assert_eq!(
        stack.wait_finished(allowed, WAIT).await?["status"],
        "succeeded"
    );
    stack.stop().await
}

#[tokio::test]
async fn a_rejection_and_an_expiry_fail_the_step_and_the_run_compensates() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack
        .apply(&promise("big-db", QUORUM_TWO, "        timeout: 10m"))
        .await?;
    stack
        .apply(&promise(
            "hurried-db",
            r#"{ approvers: ["team:dba"] }"#,
            "        timeout: 2s",
        ))
        .await?;
    let rejected = file(&stack, "big-db", "orders", "user:carol").await?;
    let expired = file(&stack, "hurried-db", "billing", "user:carol").await?;
    until_waiting(&stack, rejected).await?;

    // One approval, then a reject: the reject fails the step at once.
    let id = rejected.to_string();
    let (status, _) = decide(&stack, &id, "approve", "approve", Some("user:alice"), None).await?;
    assert_eq!(status, 200);
    let (status, outcome) = decide(
        &stack,
        &id,
        "approve",
        "reject",
        Some("user:bob"),
        Some(json!({ "comment": "too large" })),
    )
    .await?;
    assert_eq!(status, 200, "{outcome:#}");
    assert_eq!(outcome["decision"], "reject");
    assert_eq!(outcome["by"], "user:bob");
    assert_eq!(outcome["step_status"], "failed", "{outcome:#}");
    let body = stack.wait_finished(rejected, WAIT).await?;
    assert_eq!(body["status"], "compensated", "{body:#}");
    assert_eq!(step(&body, "approve")["status"], "failed");
    assert_eq!(step(&body, "provision")["status"], "compensated");
    assert_eq!(step(&body, "done")["attempts"], json!([]), "{body:#}");
    let history = stack.history(rejected).await?;
    let failed: Vec<&Value> = of_type(&history, "step.failed")
        .into_iter()
        .filter(|e| e["step"] == "approve")
        .collect();
    assert_eq!(failed.len(), 1, "{history:#?}");
    assert_eq!(failed[0]["data"]["code"], "rejected", "{history:#?}");
    let decided = of_type(&history, "approval.decided");
    assert_eq!(decided.len(), 2, "{history:#?}");
    assert_eq!(decided[1]["actor"], "user:bob");
    assert_eq!(decided[1]["data"]["decision"], "reject");
    assert_eq!(decided[1]["data"]["comment"], "too large");
    assert!(decided[1]["data"]["at"].is_string());
    assert!(
        of_type(&history, "step.retrying").is_empty(),
        "a reject is never retried: {history:#?}"
    );
    let (status, problem) =
        decide(&stack, &id, "approve", "approve", Some("team:dba"), None).await?;
    assert_eq!(
        (status, problem_type(&problem)),
        (409, "step-not-waiting"),
        "{problem:#}"
    );

    // Nobody decides within 2 s: the approval expires.
    let body = stack.wait_finished(expired, WAIT).await?;
    assert_eq!(body["status"], "compensated", "{body:#}");
    assert_eq!(step(&body, "approve")["status"], "failed");
    assert_eq!(step(&body, "provision")["status"], "compensated");
    let history = stack.history(expired).await?;
    let failed: Vec<&Value> = of_type(&history, "step.failed")
        .into_iter()
        .filter(|e| e["step"] == "approve")
        .collect();
    assert_eq!(failed.len(), 1, "{history:#?}");
    assert_eq!(
        failed[0]["data"]["code"], "approval_expired",
        "{history:#?}"
    );
    assert!(of_type(&history, "approval.decided").is_empty());
    let (status, problem) = decide(
        &stack,
        &expired.to_string(),
        "approve",
        "approve",
        Some("team:dba"),
        None,
    )
    .await?;
    assert_eq!(
        (status, problem_type(&problem)),
        (409, "step-not-waiting"),
        "expired: too late to approve: {problem:#}"
    );
    stack.stop().await
}
