//! The operator's read commands against a real server (issue 15, part 7):
//! `run list` filters and its table, `run get` saying why a run waits,
//! `run history` as a timeline, and `--output json|yaml` on every read
//! command.

use std::process::Output;
use std::time::Duration;

use anyhow::Context;
use fulfil_integration_tests::{TestStack, output_text as text};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn fulfil(stack: &TestStack, args: &[&str]) -> std::io::Result<Output> {
    std::process::Command::new(env!("CARGO_BIN_EXE_fulfil"))
        .args(args)
        .env("FULFIL_API_URL", &stack.api)
        .output()
}

/// Runs `fulfil args` and returns its stdout, failing unless it succeeded.
fn ok(stack: &TestStack, args: &[&str]) -> anyhow::Result<String> {
    let out = fulfil(stack, args)?;
    anyhow::ensure!(
        out.status.success(),
        "fulfil {args:?} failed: {}",
        text(&out)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `provision` succeeds, `configure` names a handler no worker has (a
/// permanent failure), so the run compensates `provision`.
const FAILING: &str = r#"apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: op-fail, version: "1", owner: team-ops }
spec:
  workflow:
    steps:
      - id: provision
        uses: echo
        with: { db: orders }
        compensate: { uses: noop }
      - id: configure
        needs: [provision]
        uses: no-such-handler
"#;

const APPROVAL: &str = r#"apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: op-approval, version: "1", owner: team-sre }
spec:
  workflow:
    steps:
      - id: approve-prod
        uses: approval
        with: { approvers: ["team:sre"], quorum: 2 }
        timeout: 3h
"#;

#[tokio::test]
async fn operator_reads_list_explain_and_print_timelines() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack.apply(FAILING).await?;
    stack.apply(APPROVAL).await?;
    let failed = stack.request("op-fail", json!({})).await?;
    let waiting = stack.request("op-approval", json!({})).await?;
    let run = stack.wait_finished(failed, WAIT).await?;
    assert_eq!(run["status"], "compensated", "{run:#}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while stack.run(waiting).await?["steps"][0]["status"] != "waiting" {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "approval never waited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let request_id = run["request_id"]
        .as_str()
        .context("request_id")?
        .to_string();
    let (failed, waiting) = (failed.to_string(), waiting.to_string());

    let stack = tokio::task::spawn_blocking(move || -> anyhow::Result<TestStack> {
        // `run list`: a readable table, each filter narrowing it.
        let table = ok(&stack, &["run", "list", "--status", "compensated"])?;
        let header = table.lines().next().unwrap_or_default();
        for column in [
            "ID",
            "PROMISE",
            "KIND",
            "STATUS",
            "OWNER",
            "WAITING FOR",
            "AGE",
            "DURATION",
        ] {
            assert!(header.contains(column), "{table}");
        }
        assert!(table.contains(&failed), "{table}");
        assert!(table.contains("team-ops"), "{table}");
        assert!(!table.contains(&waiting), "{table}");
        let table = ok(
            &stack,
            &[
                "run",
                "list",
                "--owner",
                "team-sre",
                "--waiting-for",
                "approval",
                "--since",
                "1h",
            ],
        )?;
        let row = table
            .lines()
            .find(|l| l.contains(&waiting))
            .with_context(|| format!("no approval run: {table}"))?;
        assert!(row.contains("approval") && row.contains("running"), "{row}");
        assert!(!table.contains(&failed), "{table}");
        let none = ok(&stack, &["run", "list", "--until", "1h"])?;
        assert_eq!(none.lines().count(), 1, "only the header: {none}");
        let by_request = ok(&stack, &["run", "list", "--request", &request_id])?;
        assert!(by_request.contains(&failed) && !by_request.contains(&waiting));
        let paged = ok(&stack, &["run", "list", "--limit", "1"])?;
        let next = paged
            .lines()
            .find_map(|l| l.strip_prefix("next: --cursor "))
            .with_context(|| format!("no cursor: {paged}"))?
            .to_string();
        let second = ok(&stack, &["run", "list", "--limit", "1", "--cursor", &next])?;
        assert!(second.contains(&failed), "newest first: {paged}\n{second}");
        // Bad values are refused before any call, naming what is accepted.
        let refused = fulfil(&stack, &["run", "list", "--waiting-for", "human"])?;
        assert!(!refused.status.success());
        assert!(
            text(&refused).contains("retry, event, approval, sleep, child, worker"),
            "{}",
            text(&refused)
        );

        // `run get` says in plain words why a run waits.
        let got = ok(&stack, &["run", "get", &waiting])?;
        assert!(
            got.contains(
                "waiting: step approve-prod waits for approval by team:sre (0 of 2), expires in 2h5"
            ) || got.contains(
                "waiting: step approve-prod waits for approval by team:sre (0 of 2), expires in 3h00m"
            ),
            "{got}"
        );
        let waiting_get = got;
        let got = ok(&stack, &["run", "get", &failed])?;
        assert!(got.contains("compensated") && got.contains("DURATION"), "{got}");
        assert!(!got.contains("waiting:"), "{got}");
        eprintln!("$ fulfil run get {waiting}\n{waiting_get}");

        // `run history` is a timeline from the run's start.
        let history = ok(&stack, &["run", "history", &failed])?;
        let header = history
            .lines()
            .find(|l| l.starts_with("TIME"))
            .with_context(|| format!("no header: {history}"))?;
        assert!(header.contains("+OFFSET") && header.contains("EVENT"), "{history}");
        assert!(history.contains("+0ms"), "{history}");
        assert!(history.contains("unknown_handler"), "{history}");
        assert!(history.contains("run.compensated"), "{history}");
        // Shown with --nocapture: what an operator sees for a failed,
        // compensated run.
        let list = ok(&stack, &["run", "list", "--promise", "op-fail"])?;
        eprintln!("$ fulfil run list --promise op-fail\n{list}\n$ fulfil run get {failed}\n{got}\n$ fulfil run history {failed}\n{history}");

        // Every read command honours --output json and yaml.
        for args in [
            vec!["promise", "list"],
            vec!["promise", "get", "op-fail"],
            vec!["request", "get", &request_id],
            vec!["request", "list"],
            vec!["run", "list"],
            vec!["run", "get", &failed],
            vec!["run", "history", &failed],
            vec!["event", "list"],
            vec!["dead-letter", "list"],
            vec!["schedule", "list"],
        ] {
            let mut json_args = args.clone();
            json_args.extend(["-o", "json"]);
            let out = ok(&stack, &json_args)?;
            let parsed: Value = serde_json::from_str(&out)
                .with_context(|| format!("{args:?} -o json printed {out}"))?;
            assert!(parsed.is_object(), "{args:?}: {parsed}");
            let mut yaml_args = args.clone();
            yaml_args.extend(["-o", "yaml"]);
            let out = ok(&stack, &yaml_args)?;
            assert!(
                !out.trim_start().starts_with('{') && out.contains(':'),
                "{args:?} -o yaml printed {out}"
            );
        }
        Ok(stack)
    })
    .await??;
    stack.stop().await
}
