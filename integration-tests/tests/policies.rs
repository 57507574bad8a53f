//! Admission policies against the real Postgres and NATS: the example
//! Policy (workflows/policies/database-guardrails.yaml) admits or denies
//! requests for the example database Promise; a denied request stores
//! nothing (no request, run or outbox row); a rule that cannot be
//! evaluated denies; invalid documents are refused at their paths; a
//! deleted Policy stops denying; a trigger's or schedule tick's denied
//! request is recorded with the policy's reason.

use std::time::Duration;

use anyhow::Context;
use fulfil_core::access::{Principal, Role};
use fulfil_engine::requests::{NewRequest, RequestError, create_request};
use fulfil_integration_tests::{StackOptions, TestStack};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// A stack whose `exec` runs nothing: admission is what these tests check,
/// and the example's steps would otherwise create databases on the shared
/// server while the tests stop their stacks under them.
async fn admission_stack() -> anyhow::Result<TestStack> {
    TestStack::start_with(StackOptions {
        exec_allow: fulfil_worker::builtin::ExecAllowList::new(),
        ..StackOptions::default()
    })
    .await
}

fn example(path: &str) -> anyhow::Result<String> {
    let file = format!("{}/../workflows/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))
}

async fn put_policy(stack: &TestStack, name: &str, yaml: &str) -> anyhow::Result<(u16, Value)> {
    let response = stack
        .http
        .put(format!("{}/v1/policies/{name}", stack.api))
        .header("content-type", "application/yaml")
        .body(yaml.to_string())
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

async fn delete_policy(stack: &TestStack, name: &str) -> anyhow::Result<u16> {
    let response = stack
        .http
        .delete(format!("{}/v1/policies/{name}", stack.api))
        .send()
        .await?;
    Ok(response.status().as_u16())
}

/// Files a request for the example database as a member of `team`.
async fn request_as(
    stack: &TestStack,
    team: &str,
    params: Value,
) -> Result<fulfil_engine::requests::Accepted, RequestError> {
    create_request(
        &stack.engine,
        NewRequest {
            promise: "postgres-database".into(),
            params,
            actor: format!("user:{team}-member"),
            principal: Some(Principal::new(
                format!("user:{team}-member"),
                team,
                &[Role::Requester],
            )),
            ..NewRequest::default()
        },
    )
    .await
}

/// Requests, runs and history events: what a stored request leaves behind.
/// Outbox rows are not counted: the admitted run keeps adding and relaying
/// them while the test runs, and a denied request could add none without
/// a run of its own.
async fn stored(stack: &TestStack) -> anyhow::Result<[i64; 2]> {
    Ok([stack.count("requests").await?, stack.count("runs").await?])
}

fn broken_rules(violations: &[fulfil_core::policy::Violation]) -> Vec<&str> {
    violations.iter().map(|v| v.rule.as_str()).collect()
}

#[tokio::test]
async fn the_example_policy_admits_team_data_and_denies_the_rest_storing_nothing()
-> anyhow::Result<()> {
    let stack = admission_stack().await?;
    stack.apply(&example("postgres-database.yaml")?).await?;
    let policy = example("policies/database-guardrails.yaml")?;
    let (status, applied) = put_policy(&stack, "database-guardrails", &policy).await?;
    assert_eq!(status, 201, "{applied}");
    let (status, again) = put_policy(&stack, "database-guardrails", &policy).await?;
    assert_eq!((status, &again["outcome"]), (200, &json!("unchanged")));
    let (status, listed) = stack.get("/v1/policies").await?;
    assert_eq!(status, 200);
    assert_eq!(listed["items"][0]["name"], "database-guardrails");
    assert_eq!(listed["items"][0]["promises"], json!(["postgres-database"]));

    // team-data may ask for a large database.
    let large = json!({"name": "orders", "size": "large"});
    request_as(&stack, "team-data", large.clone())
        .await
        .context("team-data asks for large")?;

    // Another team may not, and nothing of its request is stored.
    let before = stored(&stack).await?;
    let denied = request_as(&stack, "team-web", large.clone()).await;
    let Err(RequestError::PolicyDenied { violations }) = denied else {
        anyhow::bail!("team-web large was not denied: {denied:?}");
    };
    assert_eq!(broken_rules(&violations), vec!["large-is-for-data"]);
    assert_eq!(
        violations[0].message,
        "only team-data may request size large"
    );
    assert_eq!(
        stored(&stack).await?,
        before,
        "a denied request stores nothing"
    );

    // Both rules broken: both messages.
    let both = json!({"name": "orders", "size": "large", "environment": "production"});
    let denied = request_as(&stack, "team-web", both).await;
    let Err(RequestError::PolicyDenied { violations }) = denied else {
        anyhow::bail!("not denied: {denied:?}");
    };
    assert_eq!(
        broken_rules(&violations),
        vec!["large-is-for-data", "production-needs-owner"]
    );

    // Over HTTP: production without an owner label is a 403 naming it.
    let (status, _, problem) = stack
        .post_request(
            "postgres-database",
            json!({"params": {"name": "orders", "environment": "production"}}),
            None,
        )
        .await?;
    assert_eq!(status, 403, "{problem:#}");
    assert_eq!(problem["type"], "https://fulfil.dev/problems/policy-denied");
    assert_eq!(
        problem["violations"],
        json!([{"policy": "database-guardrails", "rule": "production-needs-owner",
                "message": "production databases need an owner label"}])
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("production databases need an owner label"),
        "{problem:#}"
    );
    assert_eq!(
        stored(&stack).await?,
        before,
        "a denied request stores nothing"
    );
    // With the label it is admitted.
    stack
        .request(
            "postgres-database",
            json!({"name": "orders", "environment": "production", "labels": {"owner": "ana"}}),
        )
        .await?;

    // Deleted, the Policy denies nothing any more.
    assert_eq!(delete_policy(&stack, "database-guardrails").await?, 204);
    assert_eq!(delete_policy(&stack, "database-guardrails").await?, 404);
    let (status, _) = stack.get("/v1/policies/database-guardrails").await?;
    assert_eq!(status, 404);
    request_as(&stack, "team-web", large)
        .await
        .context("team-web large once the policy is gone")?;
    stack.stop().await
}

#[tokio::test]
async fn a_rule_that_cannot_be_evaluated_denies_with_the_error() -> anyhow::Result<()> {
    let stack = admission_stack().await?;
    stack.apply(&example("postgres-database.yaml")?).await?;
    let unguarded = r#"
apiVersion: fulfil.dev/v1
kind: Policy
metadata: { name: unguarded }
spec:
  rules:
    - name: owner-is-ana
      expression: "params.labels.owner == 'ana'"
      message: "the owner label must be ana"
"#;
    let (status, body) = put_policy(&stack, "unguarded", unguarded).await?;
    assert_eq!(status, 201, "{body}");
    let before = stored(&stack).await?;
    let (status, _, problem) = stack
        .post_request(
            "postgres-database",
            json!({"params": {"name": "orders"}}),
            None,
        )
        .await?;
    assert_eq!(status, 403, "{problem:#}");
    let violation = &problem["violations"][0];
    assert_eq!(violation["rule"], "owner-is-ana");
    assert!(
        violation["error"].as_str().is_some_and(|e| !e.is_empty()),
        "the evaluation error is part of the answer: {problem:#}"
    );
    assert_eq!(stored(&stack).await?, before);
    // The guarded value passes.
    stack
        .request(
            "postgres-database",
            json!({"name": "orders", "labels": {"owner": "ana"}}),
        )
        .await?;
    stack.stop().await
}

#[tokio::test]
async fn invalid_policy_documents_are_refused_at_their_paths_and_store_nothing()
-> anyhow::Result<()> {
    let stack = admission_stack().await?;
    let invalid = r#"
apiVersion: fulfil.dev/v1
kind: Policy
metadata: { name: broken }
spec:
  rules:
    - { name: ok, expression: "true", message: "m" }
    - { name: ok, expression: "params.size ==", message: "m" }
    - { name: reads-env, expression: "env.HOME == ''", message: "" }
"#;
    let (status, problem) = put_policy(&stack, "broken", invalid).await?;
    assert_eq!(status, 422, "{problem:#}");
    assert_eq!(
        problem["type"],
        "https://fulfil.dev/problems/invalid-policy"
    );
    let paths: Vec<&str> = problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        vec![
            "spec.rules[1].name",
            "spec.rules[1].expression",
            "spec.rules[2].message",
            "spec.rules[2].expression",
        ],
        "{problem:#}"
    );

    let no_rules =
        "apiVersion: fulfil.dev/v1\nkind: Policy\nmetadata: {name: empty}\nspec: {rules: []}\n";
    let (status, problem) = put_policy(&stack, "empty", no_rules).await?;
    assert_eq!(status, 422);
    assert_eq!(problem["errors"][0]["path"], "spec.rules");

    let valid = "apiVersion: fulfil.dev/v1\nkind: Policy\nmetadata: {name: other}\nspec: {rules: [{name: r, expression: 'true', message: m}]}\n";
    let (status, problem) = put_policy(&stack, "not-other", valid).await?;
    assert_eq!(status, 422);
    assert_eq!(problem["errors"][0]["path"], "metadata.name");

    assert_eq!(stack.count("policies").await?, 0, "nothing was stored");
    stack.stop().await
}

/// A Promise filed by an HTTP event of type `com.acme.db.wanted`, owned by
/// team-web.
const WANTED: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: wanted-db, version: "1", owner: team-web }
spec:
  api:
    type: object
    properties:
      tier: { type: string }
  workflow:
    steps:
      - { id: provision, uses: echo, with: { tier: "${{ params.tier }}" } }
  triggers:
    - name: on-wanted
      type: com.acme.db.wanted
      params: { tier: "${{ event.data.tier }}" }
"#;

const GOLD_FOR_PLATFORM: &str = r#"
apiVersion: fulfil.dev/v1
kind: Policy
metadata: { name: gold-guard }
spec:
  promises: [wanted-db]
  rules:
    - name: gold-is-for-platform
      expression: "params.tier != 'gold' || team == 'team-platform'"
      message: "only team-platform may have gold"
"#;

#[tokio::test]
async fn a_trigger_whose_request_is_denied_is_invalid_in_the_ledger_with_the_reason()
-> anyhow::Result<()> {
    let stack = admission_stack().await?;
    stack.apply(WANTED).await?;
    let (status, body) = put_policy(&stack, "gold-guard", GOLD_FOR_PLATFORM).await?;
    assert_eq!(status, 201, "{body}");
    let post = |id: &'static str, tier: &'static str| {
        stack
            .http
            .post(format!("{}/v1/events", stack.api))
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/acme/portal")
            .header("ce-type", "com.acme.db.wanted")
            .header("content-type", "application/json")
            .body(json!({ "tier": tier }).to_string())
            .send()
    };
    // The trigger files for the Promise's owner, team-web: no gold.
    let receipt: Value = post("w-1", "gold").await?.json().await?;
    let outcome = &receipt["outcomes"][0];
    assert_eq!(outcome["outcome"], "invalid", "{receipt:#}");
    let reason = outcome["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("gold-guard") && reason.contains("only team-platform may have gold"),
        "{receipt:#}"
    );
    assert_eq!(stack.count("requests").await?, 0);
    assert_eq!(
        stack.count("dead_letters").await?,
        1,
        "invalid is a dead letter"
    );

    let receipt: Value = post("w-2", "silver").await?.json().await?;
    assert_eq!(receipt["outcomes"][0]["outcome"], "filed", "{receipt:#}");
    assert_eq!(stack.count("requests").await?, 1);
    stack.stop().await
}

#[tokio::test]
async fn a_schedule_tick_whose_request_is_denied_is_recorded_denied_and_the_schedule_moves_on()
-> anyhow::Result<()> {
    let stack = admission_stack().await?;
    stack.apply(WANTED).await?;
    let (status, body) = put_policy(&stack, "gold-guard", GOLD_FOR_PLATFORM).await?;
    assert_eq!(status, 201, "{body}");
    // The schedule files for its own owner, team-data: no gold.
    let schedule = r#"
apiVersion: fulfil.dev/v1
kind: Schedule
metadata: { name: gold-every-second, owner: team-data }
spec:
  promise: wanted-db
  cron: "* * * * * *"
  params: { tier: gold }
  overlap: allow
"#;
    let response = stack
        .http
        .put(format!("{}/v1/schedules/gold-every-second", stack.api))
        .header("content-type", "application/yaml")
        .body(schedule)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 201);
    let started = tokio::time::Instant::now();
    let ticks = loop {
        let (_, page) = stack
            .get("/v1/schedules/gold-every-second/ticks?limit=10")
            .await?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= 2 {
            break items;
        }
        anyhow::ensure!(
            started.elapsed() < WAIT,
            "no two ticks in {WAIT:?}: {page:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for tick in &ticks {
        assert_eq!(tick["outcome"], "denied", "{ticks:#?}");
        let reason = tick["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("only team-platform may have gold"),
            "{tick}"
        );
    }
    assert_eq!(stack.count("requests").await?, 0);
    stack.stop().await
}
