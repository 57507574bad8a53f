//! The operator CLI against a real stack: apply the example Promises, file a
//! request with --wait, inspect it, and see refusals as non-zero exits.

use std::process::Output;

use fulfil_integration_tests::TestStack;

fn fulfil(stack: &TestStack, args: &[&str]) -> std::io::Result<Output> {
    std::process::Command::new(env!("CARGO_BIN_EXE_fulfil"))
        .args(args)
        .env("FULFIL_API_URL", &stack.api)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn cli_applies_examples_runs_them_and_reports_failures() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let stack = tokio::task::spawn_blocking(move || -> anyhow::Result<TestStack> {
        let applied = fulfil(&stack, &["promise", "apply", "-f", "workflows"])?;
        assert!(applied.status.success(), "{}", text(&applied));
        assert!(
            text(&applied).contains("promise postgres-database version 1.0.0 created"),
            "{}",
            text(&applied)
        );
        assert!(
            text(&applied).contains("promise ml-environment"),
            "{}",
            text(&applied)
        );

        let listed = fulfil(&stack, &["promise", "list"])?;
        assert!(
            text(&listed).contains("postgres-database"),
            "{}",
            text(&listed)
        );

        let created = fulfil(
            &stack,
            &[
                "request",
                "create",
                "postgres-database",
                "--param",
                "name=orders",
                "--param",
                "size=large",
                "--wait",
            ],
        )?;
        let out = text(&created);
        assert!(created.status.success(), "{out}");
        assert!(
            out.contains("\"endpoint\": \"orders.db.internal:5432\""),
            "{out}"
        );
        assert!(out.contains("alert"), "progress lists each step: {out}");

        let ml = fulfil(
            &stack,
            &[
                "request",
                "create",
                "ml-environment",
                "-p",
                "team=vision",
                "-p",
                "gpus=2",
                "--wait",
                "-o",
                "json",
            ],
        )?;
        assert!(ml.status.success(), "{}", text(&ml));
        let run: serde_json::Value = serde_json::from_slice(&ml.stdout)?;
        assert_eq!(run["outputs"]["gpu_pool"], "gpu-vision");
        let run_id = run["id"].as_str().unwrap_or_default().to_string();

        let history = fulfil(&stack, &["run", "history", &run_id])?;
        assert!(history.status.success());
        assert!(
            text(&history).contains("run.succeeded"),
            "{}",
            text(&history)
        );
        let got = fulfil(&stack, &["run", "get", &run_id])?;
        assert!(text(&got).contains("wire-up"), "{}", text(&got));
        let runs = fulfil(&stack, &["run", "list", "--status", "succeeded"])?;
        assert_eq!(
            text(&runs).matches("succeeded").count(),
            2,
            "{}",
            text(&runs)
        );

        let refused = fulfil(
            &stack,
            &[
                "request",
                "create",
                "postgres-database",
                "--param",
                "name=X",
            ],
        )?;
        assert!(!refused.status.success());
        assert!(
            text(&refused).contains("/params/name"),
            "{}",
            text(&refused)
        );
        let unknown = fulfil(&stack, &["run", "get", "not-a-uuid"])?;
        assert!(!unknown.status.success());
        assert!(text(&unknown).contains("not a UUID"), "{}", text(&unknown));
        let bad_param = fulfil(
            &stack,
            &[
                "request",
                "create",
                "postgres-database",
                "--param",
                "novalue",
            ],
        )?;
        assert!(
            text(&bad_param).contains("not KEY=VALUE"),
            "{}",
            text(&bad_param)
        );
        Ok(stack)
    })
    .await??;

    let (status, health) = stack.get("/healthz").await?;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, ready) = stack.get("/readyz").await?;
    assert_eq!(status, 200, "{ready:#}");
    assert_eq!(ready["postgres"]["ok"], true);
    assert_eq!(ready["nats"]["ok"], true);
    stack.stop().await
}
