//! `fulfil promise rollout ... --wait`, `fulfil rollout list|pause` and
//! `fulfil request pin|unpin` against a real stack: a pinned request stays
//! on its version, the others move, progress is printed until the end.

use std::path::Path;
use std::process::Output;

use fulfil_integration_tests::{TestStack, output_text as text};
use serde_json::Value;

fn fulfil(stack: &TestStack, args: &[&str]) -> std::io::Result<Output> {
    std::process::Command::new(env!("CARGO_BIN_EXE_fulfil"))
        .args(args)
        .env("FULFIL_API_URL", &stack.api)
        .env_remove("FULFIL_TOKEN")
        .output()
}

fn json_of(output: &Output) -> anyhow::Result<Value> {
    anyhow::ensure!(output.status.success(), "{}", text(output));
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn promise(dir: &Path, version: &str) -> anyhow::Result<String> {
    let path = dir.join(format!("greeter-{version}.yaml"));
    std::fs::write(
        &path,
        format!(
            r#"apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: greeter, version: "{version}" }}
spec:
  api:
    type: object
    required: [name]
    properties:
      name: {{ type: string }}
  workflow:
    steps:
      - id: greet
        uses: echo
        with: {{ hello: "${{{{ params.name }}}}", version: "{version}" }}
  outputs:
    version: "${{{{ steps.greet.outputs.version }}}}"
"#
        ),
    )?;
    Ok(path.to_string_lossy().into_owned())
}

#[tokio::test]
async fn cli_rolls_out_a_version_and_leaves_pinned_requests() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let stack = tokio::task::spawn_blocking(move || -> anyhow::Result<TestStack> {
        let dir = std::env::temp_dir().join(format!("fulfil-rollout-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let applied = fulfil(&stack, &["promise", "apply", "-f", &promise(&dir, "1")?])?;
        assert!(applied.status.success(), "{}", text(&applied));
        let mut ids = Vec::new();
        for name in ["ada", "bob", "cy"] {
            let run = json_of(&fulfil(
                &stack,
                &[
                    "request",
                    "create",
                    "greeter",
                    "-p",
                    &format!("name={name}"),
                    "--wait",
                    "-o",
                    "json",
                ],
            )?)?;
            ids.push(run["request_id"].as_str().unwrap_or_default().to_string());
        }
        let pinned = json_of(&fulfil(&stack, &["request", "pin", &ids[0], "-o", "json"])?)?;
        assert_eq!(pinned["pinned"], true, "{pinned}");
        let table = fulfil(&stack, &["request", "get", &ids[0]])?;
        assert!(
            text(&table).contains("pinned           true"),
            "{}",
            text(&table)
        );

        let applied = fulfil(&stack, &["promise", "apply", "-f", &promise(&dir, "2")?])?;
        assert!(applied.status.success(), "{}", text(&applied));
        let rolled = fulfil(
            &stack,
            &[
                "promise",
                "rollout",
                "greeter",
                "--to-version",
                "2",
                "--max-concurrent",
                "1",
                "--wait",
            ],
        )?;
        let out = text(&rolled);
        assert!(rolled.status.success(), "{out}");
        assert!(
            out.contains("2 request(s) to upgrade, at most 1 at once"),
            "{out}"
        );
        assert!(
            out.contains("succeeded: 2/2 done: 2 succeeded, 0 failed"),
            "{out}"
        );
        assert!(out.contains("status          succeeded"), "{out}");

        let kept = json_of(&fulfil(&stack, &["request", "get", &ids[0], "-o", "json"])?)?;
        assert_eq!(kept["promise_version"], "1", "{kept}");
        for id in &ids[1..] {
            let moved = json_of(&fulfil(&stack, &["request", "get", id, "-o", "json"])?)?;
            assert_eq!(moved["promise_version"], "2", "{moved}");
            assert_eq!(moved["outputs"]["version"], "2", "{moved}");
        }
        let unpinned = json_of(&fulfil(
            &stack,
            &["request", "unpin", &ids[0], "-o", "json"],
        )?)?;
        assert_eq!(unpinned["pinned"], false, "{unpinned}");

        let listed = fulfil(&stack, &["rollout", "list", "greeter"])?;
        let out = text(&listed);
        assert!(listed.status.success(), "{out}");
        assert!(out.contains("succeeded"), "{out}");
        let rollouts = json_of(&fulfil(
            &stack,
            &["rollout", "list", "greeter", "-o", "json"],
        )?)?;
        let id = rollouts["items"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let refused = fulfil(&stack, &["rollout", "pause", &id])?;
        assert!(!refused.status.success(), "{}", text(&refused));
        assert!(
            text(&refused).contains("is succeeded"),
            "{}",
            text(&refused)
        );

        // The unpinned request moves with the next rollout.
        let again = fulfil(
            &stack,
            &[
                "promise",
                "rollout",
                "greeter",
                "--to-version",
                "2",
                "--wait",
                "-o",
                "json",
            ],
        )?;
        let done = json_of(&again)?;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["progress"]["total"], 1, "{done}");
        let _ = std::fs::remove_dir_all(&dir);
        Ok(stack)
    })
    .await??;
    stack.stop().await
}
