//! The README's compound Promise walkthrough with the real binary:
//! `workflows/web-service.yaml` files a `postgres-database` request as a
//! child, which creates a real database on this Postgres; `fulfil run get`
//! and `fulfil request get` show the link both ways; deleting the parent
//! deletes the child, whose teardown drops the database.

use std::time::Duration;

use fulfil_integration_tests::{TestStack, output_text, run_cli};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_fulfil");
const WAIT: Duration = Duration::from_secs(60);

async fn database_exists(stack: &TestStack, name: &str) -> anyhow::Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&stack.pool)
            .await?,
    )
}

async fn request_status(stack: &TestStack, id: &str) -> anyhow::Result<Value> {
    let (_, body) = stack.get(&format!("/v1/requests/{id}")).await?;
    Ok(body["status"].clone())
}

#[tokio::test]
async fn a_web_service_files_a_real_database_as_its_child_and_deleting_it_drops_both()
-> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    // The database lives on the shared server: a name of its own.
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let service = format!("ws-{}", &suffix[suffix.len() - 8..]);
    let database = format!("{service}-db");
    let outcome = walkthrough(&stack, &service, &database).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    )))
    .execute(&stack.pool)
    .await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP ROLE IF EXISTS \"{database}_owner\""
    )))
    .execute(&stack.pool)
    .await;
    outcome?;
    stack.stop().await
}

/// `fulfil ARGS`: whether it succeeded, its text, its stdout.
async fn cli(stack: &TestStack, args: &[&str]) -> anyhow::Result<(bool, String, Vec<u8>)> {
    let output = tokio::time::timeout(WAIT, run_cli(BIN, stack, args)).await??;
    Ok((output.status.success(), output_text(&output), output.stdout))
}

async fn walkthrough(stack: &TestStack, service: &str, database: &str) -> anyhow::Result<()> {
    for file in [
        "workflows/postgres-database.yaml",
        "workflows/web-service.yaml",
    ] {
        let (ok, out, _) = cli(stack, &["apply", "-f", file]).await?;
        anyhow::ensure!(ok, "apply {file}: {out}");
    }
    let name = format!("name={service}");
    let (ok, out, stdout) = cli(
        stack,
        &[
            "request",
            "create",
            "web-service",
            "--param",
            &name,
            "--wait",
            "-o",
            "json",
        ],
    )
    .await?;
    anyhow::ensure!(ok, "request create: {out}");
    let run: Value = serde_json::from_slice(&stdout)?;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        run["outputs"]["url"],
        format!("https://{service}.apps.internal")
    );
    let endpoint = run["outputs"]["database"].as_str().unwrap_or_default();
    assert!(endpoint.ends_with(&format!("/{database}")), "{run:#}");
    assert!(
        database_exists(stack, database).await?,
        "the child made the database"
    );
    let run_id = run["id"].as_str().unwrap_or_default().to_string();
    let parent_request = run["request_id"].as_str().unwrap_or_default().to_string();
    let child = &run["children"][0];
    assert_eq!(child["promise"], "postgres-database", "{run:#}");
    let child_request = child["request_id"].as_str().unwrap_or_default().to_string();

    // `run get`: the child under CHILD OF; `request get` of the child: its
    // parent; of the parent: its child.
    let (ok, out, _) = cli(stack, &["run", "get", &run_id]).await?;
    anyhow::ensure!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("database ") && l.contains(&child_request))
        .unwrap_or_default();
    assert!(
        out.contains("CHILD OF")
            && line.contains("postgres-database")
            && line.contains("succeeded"),
        "{out}"
    );
    let (ok, out, _) = cli(stack, &["request", "get", &child_request]).await?;
    anyhow::ensure!(ok, "{out}");
    let parent_line =
        format!("parent           request {parent_request} (run {run_id}, step database)");
    assert!(out.contains(&parent_line), "{out}");
    let (ok, out, _) = cli(stack, &["request", "get", &parent_request]).await?;
    anyhow::ensure!(ok, "{out}");
    assert!(
        out.contains("CHILD OF") && out.contains(&child_request),
        "{out}"
    );

    // Deleting the parent deletes the child, whose teardown drops the
    // database.
    let (ok, out, _) = cli(stack, &["request", "delete", &parent_request, "--wait"]).await?;
    anyhow::ensure!(ok, "request delete: {out}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while request_status(stack, &child_request).await? != "deleted" {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the child request was never deleted: {}",
            request_status(stack, &child_request).await?
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(request_status(stack, &parent_request).await?, "deleted");
    assert!(
        !database_exists(stack, database).await?,
        "the child's teardown dropped it"
    );
    Ok(())
}
