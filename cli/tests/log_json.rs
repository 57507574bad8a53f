//! `--log-json`: every line the binary writes is a JSON object, and a line
//! about a step carries its run id, step id and attempt (issue 15, item
//! 8). A worker-only process also serves `/metrics` on `--metrics-addr`.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use fulfil_integration_tests::{StackOptions, TestStack, nats_url};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn json_log_lines_about_a_step_carry_run_step_and_attempt() -> anyhow::Result<()> {
    let stack = TestStack::start_with(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await?;
    stack
        .apply(
            "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: { name: logged, version: \"1\" }\nspec:\n  workflow:\n    steps:\n      - { id: call, uses: echo, with: { x: 1 } }\n",
        )
        .await?;
    let metrics_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?
    };
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_fulfil"))
        .args(["serve", "--roles", "worker", "--log-json"])
        .arg("--metrics-addr")
        .arg(metrics_addr.to_string())
        .env("DATABASE_URL", &stack.database_url)
        .env("NATS_URL", nats_url())
        .env("FULFIL_NATS_PREFIX", stack.names.prefix())
        .env("RUST_LOG", "info")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = worker.stderr.take().context("stderr")?;
    let run = stack.request("logged", json!({})).await?;
    let run_id = run.to_string();

    let mut lines = BufReader::new(stderr).lines();
    let step_line = tokio::time::timeout(WAIT, async {
        let mut read = 0;
        while let Some(line) = lines.next_line().await? {
            read += 1;
            let parsed: Value = serde_json::from_str(&line)
                .with_context(|| format!("log line {read} is not JSON: {line}"))?;
            anyhow::ensure!(parsed["level"].is_string(), "no level: {line}");
            if parsed["fields"]["message"] == "step attempt succeeded" {
                return Ok(parsed);
            }
        }
        anyhow::bail!("the worker's log ended before the step's line")
    })
    .await
    .context("no step line within 30 s")??;
    let span = &step_line["span"];
    assert_eq!(span["name"], "execute", "{step_line}");
    assert_eq!(span["run_id"], run_id, "{step_line}");
    assert_eq!(span["step_id"], "call", "{step_line}");
    assert_eq!(span["attempt"], 1, "{step_line}");
    assert_eq!(stack.wait_finished(run, WAIT).await?["status"], "succeeded");

    let response = stack
        .http
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");

    worker.start_kill()?;
    let _ = worker.wait().await;
    stack.stop().await
}
