//! Crash test of `sleep` steps: the engine runs as a real `fulfil serve
//! --roles engine` child process and is SIGKILLed while a run sleeps; no
//! engine runs while the sleep's time passes; another engine started later
//! wakes the step, once, and the run goes on (durability contract 5: a
//! sleep is a row in Postgres, not a timer in a process).
//!
//! The API and the worker run in the test process; the machine's shared
//! Postgres and NATS are never stopped. Every wait is bounded.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use chrono::{DateTime, Utc};
use fulfil_core::ids::RunId;
use fulfil_integration_tests::processes::{RoleProcess, RoleSpawner, ScratchDir};
use fulfil_integration_tests::{StackOptions, TestStack};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_fulfil");
const WAIT: Duration = Duration::from_secs(30);

const NAPPING: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: napping, version: "1" }
spec:
  workflow:
    steps:
      - { id: before, uses: echo, with: { v: 1 } }
      - { id: nap, uses: sleep, needs: [before], with: { for: 4s } }
      - { id: after, uses: echo, needs: [nap], with: { woke: "${{ steps.nap.outputs.slept_until }}" } }
"#;

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"] == id))
        .unwrap_or(&Value::Null)
}

/// The run once `nap` is waiting, checking the engine stays up.
async fn until_napping(
    stack: &TestStack,
    run: RunId,
    engine: &mut RoleProcess,
) -> anyhow::Result<Value> {
    let since = Instant::now();
    loop {
        let body = stack.run(run).await?;
        if step(&body, "nap")["status"] == "waiting" {
            return Ok(body);
        }
        engine.ensure_running()?;
        ensure!(
            since.elapsed() < WAIT,
            "nap not waiting within {WAIT:?}: {body:#}\n{}",
            engine.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleep_survives_an_engine_kill_and_wakes_once_in_another() -> anyhow::Result<()> {
    let stack = TestStack::start_with(StackOptions {
        in_process_engines: false,
        ..StackOptions::default()
    })
    .await?;
    stack.apply(NAPPING).await?;
    let mut logs = ScratchDir::new("crash-sleep")?;
    let roles = RoleSpawner::new(BIN, &stack, logs.path());
    let mut first = roles.spawn("engine-1", "engine", &[])?;
    let run = stack.request("napping", json!({})).await?;

    let body = until_napping(&stack, run, &mut first).await?;
    let waiting_for = &step(&body, "nap")["waiting_for"];
    assert_eq!(waiting_for["kind"], "sleep", "{body:#}");
    let until: DateTime<Utc> = waiting_for["until"]
        .as_str()
        .context("a sleep shows until")?
        .parse()?;
    let left = (until - Utc::now()).num_milliseconds();
    assert!(
        (1000..=4500).contains(&left),
        "{left} ms left of a 4s sleep"
    );

    // Killed mid-sleep; nothing runs while the sleep's time passes.
    first.sigkill().await?;
    let past_due = (until - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
    tokio::time::sleep(past_due).await;
    let body = stack.run(run).await?;
    assert_eq!(
        step(&body, "nap")["status"],
        "waiting",
        "no engine, no wake-up: {body:#}"
    );

    // Another engine wakes it, once.
    let mut second = roles.spawn("engine-2", "engine", &[])?;
    let started = Instant::now();
    let second_started = Utc::now();
    let body = loop {
        let body = stack.run(run).await?;
        if body["status"] == "succeeded" || body["status"] == "failed" {
            break body;
        }
        second.ensure_running()?;
        ensure!(
            started.elapsed() < WAIT,
            "the run did not finish within {WAIT:?} of engine-2 starting: {body:#}\n{}",
            second.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(body["status"], "succeeded", "{body:#}");
    let slept_until: DateTime<Utc> = step(&body, "nap")["outputs"]["slept_until"]
        .as_str()
        .context("slept_until")?
        .parse()?;
    assert!(
        (slept_until - until).num_milliseconds().abs() < 1,
        "slept until {slept_until}, due {until}: {body:#}"
    );
    assert_eq!(
        step(&body, "after")["outputs"]["woke"],
        step(&body, "nap")["outputs"]["slept_until"]
    );
    let history = stack.history(run).await?;
    let of_nap = |kind: &str| {
        history
            .iter()
            .filter(|e| e["step"] == "nap" && e["type"] == kind)
            .count()
    };
    assert_eq!(of_nap("step.waiting"), 1, "{history:#?}");
    assert_eq!(of_nap("step.succeeded"), 1, "woke once: {history:#?}");
    assert_eq!(of_nap("step.failed"), 0, "{history:#?}");
    let woke_at: DateTime<Utc> = history
        .iter()
        .find(|e| e["step"] == "nap" && e["type"] == "step.succeeded")
        .and_then(|e| e["at"].as_str())
        .context("step.succeeded at")?
        .parse()?;
    assert!(
        woke_at >= until,
        "never before its time: {woke_at} < {until}"
    );
    eprintln!(
        "== sleep of 4s: engine SIGKILLed mid-sleep, another started {:.1}s after it was due; it woke the step {:.2}s after starting",
        (second_started - until).num_milliseconds() as f64 / 1000.0,
        (woke_at - second_started).num_milliseconds() as f64 / 1000.0
    );

    second.sigkill().await?;
    stack.stop().await?;
    logs.finish();
    Ok(())
}
