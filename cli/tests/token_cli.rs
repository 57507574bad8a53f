//! `fulfil token`: a first admin token written straight into a fresh
//! database with `--bootstrap`, then `create`, `list` and `revoke` through
//! a running `fulfil serve` (auth on by default), and a revoked token
//! refused with the problem's detail.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fulfil_integration_tests::{TestStack, output_text as text};
use serde_json::Value;

fn fulfil(
    stack: &TestStack,
    token: Option<&str>,
    api: &str,
    args: &[&str],
) -> std::io::Result<Output> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fulfil"));
    command
        .args(args)
        .env("DATABASE_URL", &stack.database_url)
        .env("FULFIL_API_URL", api)
        .env_remove("FULFIL_TOKEN");
    if let Some(token) = token {
        command.env("FULFIL_TOKEN", token);
    }
    command.output()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bootstrap_then_create_list_and_revoke_through_serve() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let api = format!("http://127.0.0.1:{port}");
    let (s, a) = (&stack, api.clone());
    let boot = tokio::task::block_in_place(|| {
        fulfil(
            s,
            None,
            &a,
            &["token", "create", "--bootstrap", "-o", "json"],
        )
    })?;
    assert!(boot.status.success(), "{}", text(&boot));
    let created: Value = serde_json::from_slice(&boot.stdout)?;
    let admin = created["token"].as_str().unwrap_or_default().to_string();
    assert!(admin.starts_with("fulfil_"), "{created}");
    assert_eq!(created["roles"], serde_json::json!(["admin"]));
    assert_eq!(
        (created["name"].as_str(), created["team"].as_str()),
        (Some("admin"), Some("platform"))
    );

    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_fulfil"))
        .args([
            "serve",
            "--roles",
            "api",
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .env("DATABASE_URL", &stack.database_url)
        .env("NATS_URL", &stack.nats_url)
        .env("FULFIL_NATS_PREFIX", stack.names.prefix())
        .env_remove("FULFIL_AUTH")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = stack.http.get(format!("{api}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        anyhow::ensure!(server.try_wait()?.is_none(), "serve exited while starting");
        anyhow::ensure!(Instant::now() < deadline, "serve was not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let outcome = tokio::task::block_in_place(|| -> anyhow::Result<()> {
        // serve defaults to tokens: no token, no answer.
        let refused = fulfil(&stack, None, &api, &["run", "list"])?;
        assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
        assert!(
            text(&refused).contains("FULFIL_TOKEN"),
            "{}",
            text(&refused)
        );

        let made = fulfil(
            &stack,
            Some(&admin),
            &api,
            &[
                "token",
                "create",
                "--name",
                "ci",
                "--team",
                "team-a",
                "--role",
                "viewer,requester",
                "--expires",
                "90d",
                "-o",
                "json",
            ],
        )?;
        assert!(made.status.success(), "{}", text(&made));
        let made: Value = serde_json::from_slice(&made.stdout)?;
        let ci = made["token"].as_str().unwrap_or_default().to_string();
        assert_eq!(made["roles"], serde_json::json!(["viewer", "requester"]));
        assert!(made["expires_at"].is_string(), "{made}");

        let listed = fulfil(&stack, Some(&admin), &api, &["token", "list"])?;
        let out = text(&listed);
        assert!(listed.status.success(), "{out}");
        assert!(
            out.contains("ci") && out.contains("team-a") && out.contains("live"),
            "{out}"
        );
        assert!(
            !out.contains(&ci) && !out.contains(&admin),
            "a secret listed: {out}"
        );

        let viewer = fulfil(&stack, Some(&ci), &api, &["run", "list"])?;
        assert!(viewer.status.success(), "{}", text(&viewer));
        let not_admin = fulfil(&stack, Some(&ci), &api, &["token", "list"])?;
        assert_eq!(not_admin.status.code(), Some(1));
        assert!(
            text(&not_admin).contains("admin role"),
            "{}",
            text(&not_admin)
        );

        let revoked = fulfil(&stack, Some(&admin), &api, &["token", "revoke", "ci"])?;
        assert!(revoked.status.success(), "{}", text(&revoked));
        let after = fulfil(&stack, Some(&ci), &api, &["run", "list"])?;
        assert_eq!(after.status.code(), Some(1));
        assert!(text(&after).contains("revoked"), "{}", text(&after));
        Ok(())
    });
    server.kill().await?;
    outcome?;
    stack.stop().await
}
