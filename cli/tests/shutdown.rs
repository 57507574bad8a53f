//! SIGTERM drains a worker: it stops taking tasks, lets in-flight steps
//! finish and report, then exits cleanly.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fulfil_integration_tests::{StackOptions, TestStack, nats_url};
use serde_json::json;

#[tokio::test]
async fn sigterm_lets_in_flight_steps_finish_before_the_worker_exits() -> anyhow::Result<()> {
    let started = Arc::new(AtomicUsize::new(0));
    let seen = started.clone();
    let app = axum::Router::new().route(
        "/slow",
        axum::routing::post(move || {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                axum::Json(json!({ "ok": true }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/slow", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let stack = TestStack::start_with(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await?;
    stack
        .apply(&format!(
            "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: {{ name: slow, version: \"1\" }}\nspec:\n  workflow:\n    steps:\n      - {{ id: call, uses: http, with: {{ method: POST, url: \"{url}\" }} }}\n"
        ))
        .await?;
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_fulfil"))
        .args(["serve", "--roles", "worker"])
        .env("DATABASE_URL", &stack.database_url)
        .env("NATS_URL", nats_url())
        .env("FULFIL_NATS_PREFIX", stack.names.prefix())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(stack.request("slow", json!({})).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while started.load(Ordering::SeqCst) < 5 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the worker never took all 5 steps"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = worker
        .id()
        .ok_or_else(|| anyhow::anyhow!("worker has no pid"))?;
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(term.success());
    let signalled = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(20), worker.wait()).await??;
    assert!(status.success(), "worker exited with {status}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(500),
        "the worker exited before its in-flight steps could finish"
    );
    // Every step finished on the drained worker: one attempt, one call each.
    for run in runs {
        let view = stack.wait_finished(run, Duration::from_secs(10)).await?;
        assert_eq!(view["status"], "succeeded", "{view:#}");
        assert_eq!(
            view["steps"][0]["attempts"].as_array().map(Vec::len),
            Some(1)
        );
    }
    assert_eq!(started.load(Ordering::SeqCst), 5, "no step ran twice");
    server.abort();
    stack.stop().await
}
