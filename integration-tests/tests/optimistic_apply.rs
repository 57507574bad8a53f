//! Results are applied without locking their run: each engine decides from
//! the run as it last stored it (or reads it), and the store succeeds only
//! if the run is still at that version. These tests drive the engine's
//! apply path directly, on the real Postgres, with no worker and no
//! applier consuming NATS, so every interleaving is the test's own.

use std::time::Duration;

use chrono::Utc;
use fulfil_core::ids::{RunId, StepId, TaskId};
use fulfil_core::wire::{Outcome, ResultMessage};
use fulfil_engine::Engine;
use fulfil_engine::run::{Applied, apply_result, cancel_run};
use fulfil_integration_tests::{StackOptions, TestStack};
use serde_json::json;
use uuid::Uuid;

/// Two steps, the second after the first.
const PAIR: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: pair, version: "1" }
spec:
  workflow:
    steps:
      - { id: first, uses: noop }
      - { id: second, uses: noop, needs: [first] }
"#;

async fn quiet_stack() -> anyhow::Result<TestStack> {
    TestStack::start_with(StackOptions {
        worker: false,
        in_process_engines: false,
        ..StackOptions::default()
    })
    .await
}

/// The open attempt of `step`, waiting for the run to dispatch it.
async fn task_of(stack: &TestStack, run_id: RunId, step: &str) -> anyhow::Result<(Uuid, i32)> {
    for _ in 0..100 {
        let row: Option<(Uuid, i32)> = sqlx::query_as(
            "SELECT task_id, attempt FROM fulfil.attempts
             WHERE run_id = $1 AND step_id = $2 AND status = 'dispatched'",
        )
        .bind(run_id.as_uuid())
        .bind(step)
        .fetch_optional(&stack.pool)
        .await?;
        if let Some(row) = row {
            return Ok(row);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("step {step} of run {run_id} was never dispatched")
}

async fn succeeded(stack: &TestStack, run_id: RunId, step: &str) -> anyhow::Result<ResultMessage> {
    let (task_id, attempt) = task_of(stack, run_id, step).await?;
    Ok(ResultMessage {
        task_id: TaskId::from(task_id),
        run_id,
        step_id: StepId::from(step),
        attempt: attempt as u32,
        worker_id: "test".into(),
        outcome: Outcome::Ok {
            output: json!({ "step": step }),
        },
        started_at: Utc::now(),
        finished_at: Utc::now(),
    })
}

async fn history_types(stack: &TestStack, run_id: RunId) -> anyhow::Result<Vec<(i64, String)>> {
    Ok(sqlx::query_as(
        "SELECT seq, type || coalesce(' ' || step_id, '') FROM fulfil.history
         WHERE run_id = $1 ORDER BY seq",
    )
    .bind(run_id.as_uuid())
    .fetch_all(&stack.pool)
    .await?)
}

#[tokio::test]
async fn a_copy_made_stale_by_another_engine_is_refused_and_read_again() -> anyhow::Result<()> {
    let stack = quiet_stack().await?;
    stack.apply(PAIR).await?;
    let run_id = stack.request("pair", json!({})).await?;
    let engine_a = stack.engine.clone();
    let engine_b = Engine::new(stack.pool.clone(), stack.names.clone(), "engine-b");

    // Engine A applies the first result and keeps the run, with `second`
    // dispatched, as it stored it.
    let first = succeeded(&stack, run_id, "first").await?;
    assert_eq!(apply_result(&engine_a, &first).await?, Applied::Applied);
    let second = succeeded(&stack, run_id, "second").await?;

    // Engine B cancels the run: `second`'s attempt is cancelled behind A's back.
    cancel_run(&engine_b, run_id, "operator:test", false, Some("test")).await?;

    // A's copy still shows `second` open; deciding from it would succeed the
    // step of a cancelled run. The store must refuse it and A must read again.
    let outcome = apply_result(&engine_a, &second).await?;
    let Applied::Ignored(reason) = outcome else {
        panic!("a result for a cancelled attempt was applied: {outcome:?}");
    };
    assert!(reason.contains("cancelled"), "reason: {reason}");

    let second_status: String = sqlx::query_scalar(
        "SELECT status FROM fulfil.steps WHERE run_id = $1 AND step_id = 'second'",
    )
    .bind(run_id.as_uuid())
    .fetch_one(&stack.pool)
    .await?;
    assert_ne!(second_status, "succeeded");
    let history = history_types(&stack, run_id).await?;
    assert!(
        !history.iter().any(|(_, t)| t == "step.succeeded second"),
        "{history:?}"
    );
    assert!(
        history.iter().any(|(_, t)| t == "result.ignored second"),
        "{history:?}"
    );
    stack.stop().await
}

#[tokio::test]
async fn racing_results_for_one_run_each_apply_once() -> anyhow::Result<()> {
    let stack = quiet_stack().await?;
    const BRANCHES: usize = 8;
    let mut yaml = String::from(
        "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: { name: race, version: \"1\" }\nspec:\n  workflow:\n    steps:\n",
    );
    let branches: Vec<String> = (1..=BRANCHES).map(|i| format!("b{i}")).collect();
    for id in &branches {
        yaml.push_str(&format!("      - {{ id: {id}, uses: noop }}\n"));
    }
    yaml.push_str(&format!(
        "      - {{ id: join, uses: noop, needs: [{}] }}\n",
        branches.join(", ")
    ));
    stack.apply(&yaml).await?;
    let run_id = stack.request("race", json!({})).await?;
    let engines = [
        stack.engine.clone(),
        Engine::new(stack.pool.clone(), stack.names.clone(), "engine-b"),
    ];

    // Every branch's result twice, from two engines at once: each result
    // must be applied exactly once and its duplicate ignored, however the
    // stores interleave.
    let mut racing = tokio::task::JoinSet::new();
    for (i, id) in branches.iter().enumerate() {
        let result = succeeded(&stack, run_id, id).await?;
        for copy in 0..2 {
            let (engine, result) = (engines[(i + copy) % 2].clone(), result.clone());
            racing.spawn(async move { apply_result(&engine, &result).await });
        }
    }
    let (mut applied, mut ignored) = (0, 0);
    while let Some(outcome) = racing.join_next().await {
        match outcome?? {
            Applied::Applied => applied += 1,
            Applied::Ignored(_) => ignored += 1,
        }
    }
    assert_eq!((applied, ignored), (BRANCHES, BRANCHES));

    let history = history_types(&stack, run_id).await?;
    let seqs: Vec<i64> = history.iter().map(|(seq, _)| *seq).collect();
    let expected: Vec<i64> = (1..=history.len() as i64).collect();
    assert_eq!(seqs, expected, "history numbered without gaps or repeats");
    let count = |t: &str| history.iter().filter(|(_, h)| h == t).count();
    for id in &branches {
        assert_eq!(count(&format!("step.succeeded {id}")), 1, "{history:?}");
    }
    assert_eq!(count("step.dispatched join"), 1, "{history:?}");
    let join_attempts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fulfil.attempts WHERE run_id = $1 AND step_id = 'join'",
    )
    .bind(run_id.as_uuid())
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(join_attempts, 1);
    let (history_seq, version): (i64, i64) =
        sqlx::query_as("SELECT history_seq, version FROM fulfil.runs WHERE id = $1")
            .bind(run_id.as_uuid())
            .fetch_one(&stack.pool)
            .await?;
    assert_eq!(history_seq, history.len() as i64);
    // Created at 0; every stored report (applied or ignored) bumped it once.
    assert_eq!(version, 2 * BRANCHES as i64);
    stack.stop().await
}

#[tokio::test]
async fn a_report_naming_the_wrong_run_is_applied_to_its_task_s_run() -> anyhow::Result<()> {
    let stack = quiet_stack().await?;
    stack.apply(PAIR).await?;
    let real = stack.request("pair", json!({})).await?;
    let other = stack.request("pair", json!({})).await?;
    let engine = stack.engine.clone();

    // Both runs are in the engine's cache (the intake keeps new runs). The
    // report's run id is only where to look; the task id decides.
    let mut first = succeeded(&stack, real, "first").await?;
    first.run_id = other;
    assert_eq!(apply_result(&engine, &first).await?, Applied::Applied);
    let mut second = succeeded(&stack, real, "second").await?;
    second.run_id = RunId::generate();
    assert_eq!(apply_result(&engine, &second).await?, Applied::Applied);

    let status = |run: RunId| {
        sqlx::query_scalar::<_, String>("SELECT status FROM fulfil.runs WHERE id = $1")
            .bind(run.as_uuid())
            .fetch_one(&stack.pool)
    };
    assert_eq!(status(real).await?, "succeeded");
    assert_eq!(status(other).await?, "running");
    let other_history = history_types(&stack, other).await?;
    assert!(
        !other_history
            .iter()
            .any(|(_, t)| t.starts_with("step.succeeded")),
        "{other_history:?}"
    );
    stack.stop().await
}
