//! `fulfil run watch` against a real stack: follows a run to its end and
//! exits 0 with its outputs; `-o json` prints exactly the run's history as
//! JSON lines; a failed run exits 1 with its error; an unknown run is
//! refused.

use std::process::Output;

use fulfil_integration_tests::{TestStack, output_text as text};
use serde_json::{Value, json};

fn fulfil(stack: &TestStack, args: &[&str]) -> std::io::Result<Output> {
    std::process::Command::new(env!("CARGO_BIN_EXE_fulfil"))
        .args(args)
        .env("FULFIL_API_URL", &stack.api)
        .output()
}

/// Fails for good: nothing listens on port 1.
const BROKEN: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: broken, version: 1.0.0 }
spec:
  workflow:
    steps:
      - id: call
        uses: http
        with: { method: GET, url: "http://127.0.0.1:1/" }
        retry: { max_attempts: 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_watch_follows_a_run_to_its_result_and_exits_by_it() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack
        .apply(include_str!("../../workflows/postgres-database.yaml"))
        .await?;
    stack.apply(BROKEN).await?;
    let run = stack
        .request("postgres-database", json!({"name": "ledger"}))
        .await?;
    let broken = stack.request("broken", json!({})).await?;
    let (stack, run_id, broken_id) = (stack, run.to_string(), broken.to_string());

    let stack = tokio::task::spawn_blocking(move || -> anyhow::Result<TestStack> {
        // Started at once: it follows the run live.
        let watched = fulfil(&stack, &["run", "watch", &run_id])?;
        let out = text(&watched);
        assert!(watched.status.success(), "{out}");
        assert!(out.contains(&format!("run {run_id} succeeded")), "{out}");
        assert!(out.contains("outputs:"), "{out}");
        assert!(out.contains(":5432/ledger"), "{out}");
        // Not a terminal: a line per event, the last the run's end.
        assert!(out.contains("run.succeeded"), "{out}");

        let json_lines = fulfil(&stack, &["run", "watch", &run_id, "-o", "json"])?;
        assert!(json_lines.status.success(), "{}", text(&json_lines));
        let events: Vec<Value> = String::from_utf8_lossy(&json_lines.stdout)
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        let history = fulfil(&stack, &["run", "history", &run_id, "-o", "json"])?;
        let history: Value = serde_json::from_slice(&history.stdout)?;
        assert_eq!(
            json!({ "items": events }),
            history,
            "JSON lines are the history"
        );

        let failed = fulfil(&stack, &["run", "watch", &broken_id])?;
        let out = text(&failed);
        assert_eq!(failed.status.code(), Some(1), "{out}");
        assert!(out.contains(&format!("run {broken_id} failed")), "{out}");
        assert!(out.contains("error:"), "{out}");

        let unknown = fulfil(
            &stack,
            &["run", "watch", "01a23769-0000-7000-8000-000000000000"],
        )?;
        assert_eq!(unknown.status.code(), Some(1));
        assert!(text(&unknown).contains("404"), "{}", text(&unknown));
        Ok(stack)
    })
    .await??;
    stack.stop().await
}

/// `fulfil bench --scenario watch` at a small size: every watcher gets the
/// whole run, and the hub reads far fewer times than it delivers.
#[test]
fn bench_watch_reports_deliveries_and_hub_reads() -> anyhow::Result<()> {
    let json = std::env::temp_dir().join(format!("fulfil-bench-watch-{}.json", std::process::id()));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulfil"))
        .args([
            "bench",
            "--scenario",
            "watch",
            "--watchers",
            "50",
            "--steps",
            "4",
            "--json",
        ])
        .arg(&json)
        .env("DATABASE_URL", fulfil_integration_tests::database_url())
        .env("NATS_URL", fulfil_integration_tests::nats_url())
        .output()?;
    assert!(output.status.success(), "{}", text(&output));
    let report: Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    std::fs::remove_file(&json)?;
    assert_eq!(report["scenario"], "watch");
    assert_eq!(report["watchers"], 50);
    assert_eq!(report["complete_watchers"], 50, "{report:#}");
    let delivered = report["delivered"].as_u64().unwrap_or_default();
    let live = report["live_events"].as_u64().unwrap_or_default();
    assert_eq!(delivered, live * 50, "{report:#}");
    let reads = report["feed_reads_live"].as_u64().unwrap_or(u64::MAX);
    assert!(live > 0 && reads <= live + 3, "{report:#}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("hub reads per event"));
    Ok(())
}
