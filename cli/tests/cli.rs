//! The operator CLI against a real stack: apply the example Promises, file a
//! request with --wait, inspect it, and see refusals as non-zero exits.

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
            out.contains("\"endpoint\": \"127.0.0.1:5432/orders\""),
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

/// A loopback address nothing listens on: bound, then released.
#[tokio::test]
async fn cli_deletes_a_request_and_waits_for_the_teardown() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let stack = tokio::task::spawn_blocking(move || -> anyhow::Result<TestStack> {
        // Not the whole of workflows/: team-onboarding's trigger subject
        // can be captured by one stream of the NATS server only, and the
        // test above applies it at the same time.
        let promise = "workflows/postgres-database.yaml";
        let applied = fulfil(&stack, &["promise", "apply", "-f", promise])?;
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

        let deleted = fulfil(&stack, &["request", "delete", &request_id, "--wait"])?;
        let out = text(&deleted);
        assert!(deleted.status.success(), "{out}");
        assert!(out.contains("deleting; delete run"), "{out}");
        assert!(
            out.contains(&format!("request {request_id} deleted")),
            "{out}"
        );

        let got = fulfil(&stack, &["request", "get", &request_id])?;
        let out = text(&got);
        assert!(out.contains("deleted"), "{out}");
        assert!(out.contains("delete_run_id"), "{out}");
        let runs = fulfil(&stack, &["run", "list", "--kind", "delete"])?;
        let out = text(&runs);
        assert!(runs.status.success(), "{out}");
        assert_eq!(out.matches("delete ").count(), 1, "{out}");
        assert!(out.contains("succeeded"), "{out}");

        let again = fulfil(&stack, &["request", "delete", &request_id])?;
        assert!(again.status.success(), "{}", text(&again));
        assert!(text(&again).contains("request") && text(&again).contains("deleted"));
        let bad_kind = fulfil(&stack, &["run", "list", "--kind", "teardown"])?;
        assert!(!bad_kind.status.success());
        assert!(
            text(&bad_kind).contains("configure, delete, reconcile"),
            "{}",
            text(&bad_kind)
        );
        Ok(stack)
    })
    .await??;
    stack.stop().await
}

fn closed_address() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// `fulfil` with `vars` set (and nothing of the caller's FULFIL_* kept from
/// the test's own environment beyond them).
fn fulfil_with(vars: &[(&str, &str)], args: &[&str]) -> std::io::Result<Output> {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fulfil"));
    command.args(args).current_dir(std::env::temp_dir());
    for (name, _) in std::env::vars() {
        if name.starts_with("FULFIL_") || name == "DATABASE_URL" || name == "NATS_URL" {
            command.env_remove(name);
        }
    }
    command.envs(vars.iter().copied());
    command.output()
}

/// Every environment fallback set to "" counts as unset (DESIGN: "An empty
/// value is unset"): `serve` parses and gets as far as connecting.
#[test]
fn empty_environment_values_are_unset() -> anyhow::Result<()> {
    let postgres = format!("postgres://postgres@{}/fulfil", closed_address()?);
    let mut vars = vec![("DATABASE_URL", postgres.as_str())];
    for empty in [
        "NATS_URL",
        "FULFIL_ROLES",
        "FULFIL_NATS_PREFIX",
        "FULFIL_HTTP_ADDR",
        "FULFIL_WORKFLOWS",
        "FULFIL_QUEUES",
        "FULFIL_WORKER_CONCURRENCY",
        "FULFIL_WORKER_ACK_WAIT",
        "FULFIL_DB_POOL",
        "FULFIL_LOG_JSON",
    ] {
        vars.push((empty, ""));
    }
    let served = fulfil_with(&vars, &["serve"])?;
    let out = text(&served);
    assert_eq!(
        served.status.code(),
        Some(1),
        "not a usage error (2): {out}"
    );
    assert!(out.contains("cannot connect to Postgres"), "{out}");

    // An operator command with an empty API URL takes the default one.
    let api = closed_address()?;
    let listed = fulfil_with(
        &[("FULFIL_API_URL", "")],
        &["run", "list", "--api-url", &format!("http://{api}")],
    )?;
    assert_eq!(listed.status.code(), Some(1), "{}", text(&listed));
    let listed = fulfil_with(&[("FULFIL_API_URL", "")], &["run", "list"])?;
    assert_ne!(listed.status.code(), Some(2), "{}", text(&listed));
    assert!(
        !text(&listed).contains("a value is required"),
        "{}",
        text(&listed)
    );
    Ok(())
}

/// A service that does not answer is reported once, with how to start it;
/// the exit code is 1.
#[tokio::test]
async fn unreachable_services_are_named_once_with_how_to_start_them() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let (postgres, nats, api) = (
        format!("postgres://postgres@{}/fulfil", closed_address()?),
        format!("nats://{}", closed_address()?),
        format!("http://{}", closed_address()?),
    );
    let database_url = stack.database_url.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let cases = [
            (
                vec![("DATABASE_URL", postgres.as_str())],
                vec!["serve"],
                "cannot connect to Postgres",
                "hint: is Postgres running",
            ),
            (
                vec![("DATABASE_URL", postgres.as_str())],
                vec!["migrate"],
                "cannot connect to Postgres",
                "pg_ctlcluster",
            ),
            (
                vec![
                    ("DATABASE_URL", database_url.as_str()),
                    ("NATS_URL", nats.as_str()),
                ],
                vec!["serve", "--roles", "api", "--http-addr", "127.0.0.1:0"],
                "cannot connect to NATS",
                "nats-server -js",
            ),
            (
                vec![("FULFIL_API_URL", api.as_str())],
                vec!["run", "list"],
                "cannot reach the Fulfil API",
                "is `fulfil dev` or `fulfil serve` running at",
            ),
        ];
        for (vars, args, what, hint) in cases {
            let output = fulfil_with(&vars, &args)?;
            let stderr = String::from_utf8_lossy(&output.stderr).to_string();
            assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(stderr.contains(what), "{args:?}: {stderr}");
            assert!(stderr.contains(hint), "{args:?}: {stderr}");
            assert_eq!(
                stderr.matches("Connection refused").count(),
                1,
                "{args:?}: the cause once: {stderr}"
            );
        }
        Ok(())
    })
    .await??;
    stack.stop().await
}

/// workflows/team-onboarding.yaml at `version`, with the team name pattern
/// `pattern`, in a fresh directory: the Promise file `promise apply` reads.
/// Its trigger listens on a subject of this stack's own: one NATS server
/// lets only one stream capture a subject, and tests run side by side.
fn team_onboarding(
    stack: &TestStack,
    version: &str,
    pattern: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let yaml = std::fs::read_to_string(format!("{root}/workflows/team-onboarding.yaml"))?
        .replace("version: 1.0.0", &format!("version: {version}"))
        .replace("^[a-z][a-z0-9-]{1,30}$", pattern)
        .replace(
            "subject: acme.teams.created",
            &format!("subject: acme.{}.teams.created", stack.names.prefix()),
        );
    let dir = std::env::temp_dir().join(format!("fulfil-cli-events-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("team-onboarding.yaml");
    std::fs::write(&file, yaml)?;
    Ok(file)
}

/// The OUTCOME column of the trigger table `event send`, `event get` and
/// `dead-letter replay` print (the lines after it, violations, are not rows).
fn outcome_column(out: &str) -> Vec<String> {
    out.lines()
        .skip_while(|line| !line.starts_with("TRIGGER"))
        .skip(1)
        .filter_map(|row| row.split_whitespace().nth(2))
        .filter(|word| ["filed", "duplicate", "filtered", "invalid"].contains(word))
        .map(str::to_string)
        .collect()
}

/// The ledger id `event send -o json` answered.
fn ledger_id(output: &Output) -> anyhow::Result<String> {
    let receipt: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    receipt["ledger_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no ledger_id in {receipt}"))
}

/// The event commands against the real API: a trigger files once per
/// event, the ledger says why an event filed nothing, and a dead letter
/// files on replay once the Promise is fixed.
#[tokio::test]
async fn cli_sends_events_explains_the_ledger_and_replays_dead_letters() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let stack = tokio::task::spawn_blocking(move || -> anyhow::Result<TestStack> {
        let strict = team_onboarding(&stack, "1.0.0", "^[a-z][a-z0-9-]{1,30}$")?;
        let applied = fulfil(
            &stack,
            &["promise", "apply", "-f", &strict.to_string_lossy()],
        )?;
        assert!(applied.status.success(), "{}", text(&applied));

        let gold = [
            "event",
            "send",
            "--type",
            "com.acme.team.created",
            "--source",
            "/hr",
            "--id",
            "team-1",
            "--data",
            r#"{"team": "vision", "tier": "gold", "lead": "ada@acme.dev"}"#,
        ];
        let sent = fulfil(&stack, &gold)?;
        let out = text(&sent);
        assert!(sent.status.success(), "{out}");
        assert!(out.contains("event team-1 from /hr"), "{out}");
        assert!(out.contains("on-team-created"), "{out}");
        assert!(out.contains("team-onboarding"), "{out}");
        assert_eq!(outcome_column(&out), ["filed"], "{out}");

        let again = fulfil(&stack, &gold)?;
        let out = text(&again);
        assert!(again.status.success(), "{out}");
        assert_eq!(outcome_column(&out), ["duplicate"], "{out}");
        assert!(out.contains("filed before"), "names the first: {out}");

        // -o json is the receipt as the API answered it.
        let silver = fulfil(
            &stack,
            &[
                "event",
                "send",
                "--type",
                "com.acme.team.created",
                "--source",
                "/hr",
                "--id",
                "team-2",
                "--data",
                r#"{"team": "sales", "tier": "silver", "lead": "bo@acme.dev"}"#,
                "-o",
                "json",
            ],
        )?;
        assert!(silver.status.success(), "{}", text(&silver));
        let receipt: serde_json::Value = serde_json::from_slice(&silver.stdout)?;
        assert_eq!(receipt["id"], "team-2", "{receipt:#}");
        assert_eq!(receipt["outcomes"][0]["outcome"], "filtered", "{receipt:#}");
        assert!(
            receipt["outcomes"][0]["request_id"].is_null(),
            "{receipt:#}"
        );
        let filtered_ledger = ledger_id(&silver)?;

        let unheard = fulfil(
            &stack,
            &[
                "event",
                "send",
                "--type",
                "com.acme.team.renamed",
                "--source",
                "/hr",
                "-o",
                "json",
            ],
        )?;
        assert!(unheard.status.success(), "{}", text(&unheard));
        let unheard_ledger = ledger_id(&unheard)?;

        let listed = fulfil(&stack, &["event", "list", "--outcome", "filtered"])?;
        let out = text(&listed);
        assert!(listed.status.success(), "{out}");
        assert!(out.contains(&filtered_ledger), "{out}");
        assert!(out.contains("filtered 1"), "{out}");
        assert!(!out.contains("duplicate"), "only filtered events: {out}");
        let all = fulfil(&stack, &["event", "list", "--since", "1h"])?;
        let out = text(&all);
        assert_eq!(out.matches("com.acme.team.").count(), 4, "{out}");
        assert!(out.contains("no trigger matched"), "{out}");

        let got = fulfil(&stack, &["event", "get", &filtered_ledger])?;
        let out = text(&got);
        assert!(got.status.success(), "{out}");
        assert!(out.contains("on-team-created"), "{out}");
        assert_eq!(outcome_column(&out), ["filtered"], "{out}");
        assert!(
            out.contains("event.data.tier == 'gold'"),
            "the reason: {out}"
        );
        let got = fulfil(&stack, &["event", "get", &unheard_ledger])?;
        let out = text(&got);
        assert!(got.status.success(), "{out}");
        assert!(out.contains("No trigger matched this event"), "{out}");
        assert!(out.contains("com.acme.team.renamed"), "{out}");
        let missing = fulfil(&stack, &["event", "get", &uuid::Uuid::now_v7().to_string()])?;
        assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
        assert!(text(&missing).contains("(404)"), "{}", text(&missing));

        // An uppercase team name breaks the schema: invalid, a dead letter.
        let broken = fulfil(
            &stack,
            &[
                "event",
                "send",
                "--type",
                "com.acme.team.created",
                "--source",
                "/hr",
                "--id",
                "team-3",
                "--data",
                r#"{"team": "Vision", "tier": "gold", "lead": "ada@acme.dev"}"#,
            ],
        )?;
        let out = text(&broken);
        assert!(broken.status.success(), "{out}");
        assert_eq!(outcome_column(&out), ["invalid"], "{out}");
        assert!(out.contains("/team"), "the violation: {out}");
        assert!(out.contains("fulfil dead-letter replay"), "{out}");

        let dead = fulfil(&stack, &["dead-letter", "list", "-o", "json"])?;
        assert!(dead.status.success(), "{}", text(&dead));
        let dead: serde_json::Value = serde_json::from_slice(&dead.stdout)?;
        let items = dead["items"].as_array().cloned().unwrap_or_default();
        assert_eq!(items.len(), 1, "{dead:#}");
        let dead_id = items[0]["id"].as_str().unwrap_or_default().to_string();
        let table = fulfil(&stack, &["dead-letter", "list"])?;
        let out = text(&table);
        assert!(table.status.success(), "{out}");
        assert!(out.contains(&dead_id), "{out}");
        assert!(out.contains("on-team-created"), "the reason: {out}");

        let fixed = team_onboarding(&stack, "1.0.1", "^[A-Za-z][A-Za-z0-9-]{1,30}$")?;
        let applied = fulfil(
            &stack,
            &["promise", "apply", "-f", &fixed.to_string_lossy()],
        )?;
        assert!(applied.status.success(), "{}", text(&applied));
        let replayed = fulfil(&stack, &["dead-letter", "replay", &dead_id])?;
        let out = text(&replayed);
        assert!(replayed.status.success(), "{out}");
        assert_eq!(outcome_column(&out), ["filed"], "{out}");
        let replayed = fulfil(&stack, &["dead-letter", "replay", &dead_id])?;
        let out = text(&replayed);
        assert_eq!(outcome_column(&out), ["duplicate"], "{out}");
        let listed = fulfil(&stack, &["dead-letter", "list"])?;
        assert!(text(&listed).contains(&dead_id), "{}", text(&listed));

        for dir in [strict, fixed].iter().filter_map(|f| f.parent()) {
            std::fs::remove_dir_all(dir)?;
        }
        Ok(stack)
    })
    .await??;
    assert_eq!(stack.count("requests").await?, 2, "vision and Vision");
    stack.stop().await
}

/// `serve` lets `exec` run only what `--exec-allow` names, and a name it
/// cannot resolve stops the worker at start, named, rather than failing
/// every step later.
#[tokio::test]
async fn serve_stops_at_an_exec_allow_entry_it_cannot_resolve() -> anyhow::Result<()> {
    use fulfil_integration_tests::StackOptions;
    use fulfil_integration_tests::processes::{RoleSpawner, ScratchDir};

    let stack = TestStack::start_with(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await?;
    let mut logs = ScratchDir::new("exec-allow")?;
    let roles = RoleSpawner::new(env!("CARGO_BIN_EXE_fulfil"), &stack, logs.path());
    let mut worker = roles.spawn(
        "worker",
        "worker",
        &["--exec-allow", "sh,no-such-command-xyz"],
    )?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let stopped = loop {
        if let Err(stopped) = worker.ensure_running() {
            break format!("{stopped:#}");
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the worker still runs: {}",
            worker.log_tail(20)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(stopped.contains("--exec-allow"), "{stopped}");
    assert!(
        stopped.contains("no executable \"no-such-command-xyz\" on PATH"),
        "{stopped}"
    );
    logs.finish();
    stack.stop().await
}
