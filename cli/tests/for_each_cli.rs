//! The README's `for_each` walkthrough with the real binary: apply
//! `workflows/multi-region.yaml`, file a request with a list parameter,
//! and read each instance's item in `fulfil run get` and `run history`.

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
async fn run_get_shows_each_instance_with_its_item() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let stack = tokio::task::spawn_blocking(move || -> anyhow::Result<TestStack> {
        let applied = fulfil(&stack, &["apply", "-f", "workflows/multi-region.yaml"])?;
        assert!(applied.status.success(), "{}", text(&applied));
        let created = fulfil(
            &stack,
            &[
                "request",
                "create",
                "multi-region",
                "--param",
                "app=shop",
                "--param",
                r#"regions=["eu-west","us-east","ap-south"]"#,
                "--wait",
                "-o",
                "json",
            ],
        )?;
        assert!(created.status.success(), "{}", text(&created));
        let run: serde_json::Value = serde_json::from_slice(&created.stdout)?;
        assert_eq!(run["status"], "succeeded", "{run:#}");
        let urls: Vec<&str> = run["outputs"]["deployments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["url"].as_str())
            .collect();
        assert_eq!(
            urls,
            vec![
                "https://shop.eu-west.example.com",
                "https://shop.us-east.example.com",
                "https://shop.ap-south.example.com",
            ]
        );
        let run_id = run["id"].as_str().unwrap_or_default().to_string();

        let got = fulfil(&stack, &["run", "get", &run_id])?;
        let out = text(&got);
        assert!(got.status.success(), "{out}");
        assert!(out.contains("ITEM"), "{out}");
        assert!(out.contains("3/3 succeeded"), "{out}");
        let line = out
            .lines()
            .find(|l| l.starts_with("deploy[2]"))
            .unwrap_or_default();
        assert!(
            line.contains("\"ap-south\"") && line.contains("succeeded"),
            "{out}"
        );

        let history = fulfil(&stack, &["run", "history", &run_id])?;
        let out = text(&history);
        assert!(out.contains("for_each.expanded"), "{out}");
        assert!(out.contains("3 instances, max_parallel 2"), "{out}");
        assert!(out.contains("item \"us-east\""), "{out}");
        Ok(stack)
    })
    .await??;
    stack.stop().await
}
