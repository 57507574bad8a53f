//! `fulfil request reconcile` against a real stack: a reconcile run started
//! and followed with --wait, shown on the request, and refused (non-zero,
//! with the problem) once the request is deleted.

use std::process::Output;

use fulfil_integration_tests::{TestStack, output_text as text};

fn fulfil(stack: &TestStack, args: &[&str]) -> std::io::Result<Output> {
    std::process::Command::new(env!("CARGO_BIN_EXE_fulfil"))
        .args(args)
        .env("FULFIL_API_URL", &stack.api)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
}

#[tokio::test]
async fn cli_reconciles_a_request_and_waits_for_the_run() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let stack = tokio::task::spawn_blocking(move || -> anyhow::Result<TestStack> {
        let applied = fulfil(
            &stack,
            &["promise", "apply", "-f", "workflows/postgres-database.yaml"],
        )?;
        assert!(applied.status.success(), "{}", text(&applied));
        let created = fulfil(
            &stack,
            &[
                "request",
                "create",
                "postgres-database",
                "-p",
                "name=ledger",
                "--wait",
                "-o",
                "json",
            ],
        )?;
        assert!(created.status.success(), "{}", text(&created));
        let run: serde_json::Value = serde_json::from_slice(&created.stdout)?;
        let request_id = run["request_id"].as_str().unwrap_or_default().to_string();

        let reconciled = fulfil(&stack, &["request", "reconcile", &request_id, "--wait"])?;
        let out = text(&reconciled);
        assert!(reconciled.status.success(), "{out}");
        assert!(out.contains("reconcile run"), "{out}");
        assert!(out.contains("started"), "{out}");
        assert!(out.contains("succeeded"), "{out}");

        let got = fulfil(&stack, &["request", "get", &request_id, "-o", "json"])?;
        assert!(got.status.success(), "{}", text(&got));
        let request: serde_json::Value = serde_json::from_slice(&got.stdout)?;
        assert_eq!(request["status"], "succeeded");
        assert!(request["reconcile_run_id"].is_string(), "{request}");
        let runs = fulfil(&stack, &["run", "list", "--kind", "reconcile"])?;
        assert!(runs.status.success(), "{}", text(&runs));
        assert_eq!(
            text(&runs).matches("reconcile ").count(),
            1,
            "{}",
            text(&runs)
        );

        let deleted = fulfil(&stack, &["request", "delete", &request_id, "--wait"])?;
        assert!(deleted.status.success(), "{}", text(&deleted));
        let refused = fulfil(&stack, &["request", "reconcile", &request_id])?;
        let out = text(&refused);
        assert!(!refused.status.success(), "{out}");
        assert!(out.contains("is deleted"), "{out}");
        Ok(stack)
    })
    .await??;
    stack.stop().await
}
