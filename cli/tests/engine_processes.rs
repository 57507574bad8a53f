//! Two `fulfil serve --roles engine` processes against one database and one
//! NATS prefix finish 100 runs, and every step's result is applied once.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fulfil_integration_tests::{StackOptions, TestStack, nats_url};
use serde_json::json;
use tokio::process::{Child, Command};

fn engine_process(stack: &TestStack) -> std::io::Result<Child> {
    Command::new(env!("CARGO_BIN_EXE_fulfil"))
        .args(["serve", "--roles", "engine", "--db-pool", "8"])
        .env("DATABASE_URL", &stack.database_url)
        .env("NATS_URL", nats_url())
        .env("FULFIL_NATS_PREFIX", stack.names.prefix())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
}

#[tokio::test]
async fn two_engine_processes_finish_100_runs_applying_each_result_once() -> anyhow::Result<()> {
    let stack = TestStack::start_with(StackOptions {
        in_process_engines: false,
        ..StackOptions::default()
    })
    .await?;
    stack
        .apply(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: three, version: "1" }
spec:
  workflow:
    steps:
      - { id: provision, uses: noop }
      - { id: configure, uses: noop, needs: [provision] }
      - { id: alert, uses: noop, needs: [configure] }
"#,
        )
        .await?;
    let mut engines = vec![engine_process(&stack)?, engine_process(&stack)?];

    let mut run_ids = Vec::new();
    for _ in 0..100 {
        run_ids.push(stack.request("three", json!({})).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    for run_id in &run_ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let run = stack.wait_finished(*run_id, left).await?;
        assert_eq!(run["status"], "succeeded", "{run:#}");
    }

    let attempts: Vec<(String, i32)> =
        sqlx::query_as("SELECT status, attempt FROM fulfil.attempts")
            .fetch_all(&stack.pool)
            .await?;
    assert_eq!(attempts.len(), 300, "one attempt per step");
    assert!(attempts.iter().all(|(s, a)| s == "succeeded" && *a == 1));
    let applied_twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT run_id, step_id FROM fulfil.history WHERE type = 'step.succeeded'
                               GROUP BY run_id, step_id HAVING count(*) > 1) AS dup",
    )
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(applied_twice, 0, "a result was applied twice");
    let completions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM fulfil.history WHERE type = 'step.succeeded'")
            .fetch_one(&stack.pool)
            .await?;
    assert_eq!(completions, 300);
    let engines_seen: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT data->>'engine' FROM fulfil.history WHERE type = 'step.succeeded'",
    )
    .fetch_all(&stack.pool)
    .await?;
    let engines_seen: BTreeSet<String> = engines_seen.into_iter().collect();
    assert_eq!(
        engines_seen.len(),
        2,
        "both engine processes applied results: {engines_seen:?}"
    );
    // Published rows are deleted in the background, in gathered batches.
    let mut outbox_left = stack.count("outbox").await?;
    for _ in 0..50 {
        if outbox_left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        outbox_left = stack.count("outbox").await?;
    }
    assert_eq!(outbox_left, 0, "every task and event was relayed");

    for engine in &mut engines {
        engine.start_kill()?;
        let _ = tokio::time::timeout(Duration::from_secs(10), engine.wait()).await;
    }
    stack.stop().await
}
