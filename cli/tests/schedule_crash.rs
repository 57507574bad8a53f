//! Crash test of schedules: two real `fulfil serve --roles engine` child
//! processes decide the ticks of an every-second schedule; one is
//! SIGKILLed mid-way and another started, then the other is killed too.
//! Every tick between the first and the last has exactly one ledger row,
//! and every filed tick exactly one request keyed by it: no tick filed
//! twice, none lost.
//!
//! The API and the worker run in the test process; the machine's shared
//! Postgres and NATS are never stopped. Every wait is bounded.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use chrono::{DateTime, Utc};
use fulfil_core::schedule::Timing;
use fulfil_integration_tests::processes::{RoleProcess, RoleSpawner, ScratchDir};
use fulfil_integration_tests::{StackOptions, TestStack};

const BIN: &str = env!("CARGO_BIN_EXE_fulfil");

const PROMISE: &str = r#"apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: beat, version: "1" }
spec:
  workflow:
    steps:
      - { id: pulse, uses: noop }
"#;

const SCHEDULE: &str = r#"apiVersion: fulfil.dev/v1
kind: Schedule
metadata: { name: crashy }
spec:
  promise: beat
  cron: "* * * * * *"
  overlap: allow
"#;

async fn ticks(
    stack: &TestStack,
) -> anyhow::Result<Vec<(DateTime<Utc>, String, Option<uuid::Uuid>)>> {
    Ok(sqlx::query_as(
        "SELECT nominal_at, outcome, request_id FROM fulfil.schedule_ticks
         WHERE schedule = 'crashy' ORDER BY nominal_at",
    )
    .fetch_all(&stack.pool)
    .await?)
}

/// Waits, at most 30 s, until the ledger holds `count` rows, checking
/// that `engine` stays up meanwhile.
async fn until_ticks(
    stack: &TestStack,
    count: usize,
    engine: &mut RoleProcess,
) -> anyhow::Result<()> {
    let since = Instant::now();
    loop {
        if ticks(stack).await?.len() >= count {
            return Ok(());
        }
        engine.ensure_running()?;
        ensure!(
            since.elapsed() < Duration::from_secs(30),
            "only {} ticks after 30 s; {} log:\n{}",
            ticks(stack).await?.len(),
            engine.name,
            engine.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn engines_killed_mid_schedule_neither_lose_nor_repeat_a_tick() -> anyhow::Result<()> {
    let mut scratch = ScratchDir::new("schedule-crash")?;
    let stack = TestStack::start_with(StackOptions {
        in_process_engines: false,
        ..StackOptions::default()
    })
    .await?;
    stack.apply(PROMISE).await?;
    let spawner = RoleSpawner::new(BIN, &stack, scratch.path());
    let engine_flags = ["--schedule-grace", "10s"];
    let mut first = spawner.spawn("engine-1", "engine", &engine_flags)?;
    let mut second = spawner.spawn("engine-2", "engine", &engine_flags)?;
    let answer = stack
        .http
        .put(format!("{}/v1/schedules/crashy", stack.api))
        .body(SCHEDULE)
        .send()
        .await?;
    ensure!(answer.status().as_u16() == 201, "{}", answer.text().await?);

    until_ticks(&stack, 3, &mut first).await?;
    first.sigkill().await?;
    let before = ticks(&stack).await?.len();
    until_ticks(&stack, before + 3, &mut second).await?;
    let mut third = spawner.spawn("engine-3", "engine", &engine_flags)?;
    second.sigkill().await?;
    let before = ticks(&stack).await?.len();
    until_ticks(&stack, before + 3, &mut third).await?;
    third.sigkill().await?;

    let ledger = ticks(&stack).await?;
    let every_second = Timing::new("* * * * * *", "UTC")?;
    for pair in ledger.windows(2) {
        ensure!(
            every_second.next_after(pair[0].0) == Some(pair[1].0),
            "a gap between {} and {}",
            pair[0].0,
            pair[1].0
        );
    }
    ensure!(
        ledger.iter().all(|(_, outcome, _)| outcome == "filed"),
        "{ledger:?}"
    );
    let keys: Vec<(String, i64)> = sqlx::query_as(
        "SELECT idempotency_key, count(*) FROM fulfil.requests
         WHERE created_by = 'schedule:crashy' GROUP BY idempotency_key ORDER BY 1",
    )
    .fetch_all(&stack.pool)
    .await?;
    ensure!(keys.iter().all(|(_, n)| *n == 1), "{keys:?}");
    let expected: Vec<String> = ledger
        .iter()
        .map(|(at, _, _)| {
            format!(
                "schedule:crashy:{}",
                at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            )
        })
        .collect();
    let filed: Vec<String> = keys.into_iter().map(|(key, _)| key).collect();
    ensure!(
        filed == expected,
        "requests {filed:?} for ticks {expected:?}"
    );
    for (at, _, request) in &ledger {
        request.with_context(|| format!("tick {at} names no request"))?;
    }
    stack.stop().await?;
    scratch.finish();
    Ok(())
}
