//! The `exec` and `git.commit` built-ins in whole runs against the real
//! Postgres and NATS: a Promise renders values with `exec`, commits them to
//! a local bare repository, commits nothing new when asked again for the
//! same content, and its compensation (`git.remove`) takes the files out in
//! a new commit; the `postgres-database` example creates a real database
//! and role, and deleting the request drops both.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use fulfil_integration_tests::{StackOptions, TestStack, workflows_dir};
use fulfil_worker::builtin::ExecAllowList;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

const GITOPS: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: gitops-app, version: 1.0.0, owner: team-platform }
spec:
  api:
    type: object
    required: [app, replicas]
    properties:
      app: { type: string, pattern: "^[a-z][a-z0-9-]{2,30}$" }
      replicas: { type: integer, minimum: 1 }
      verify: { type: string, enum: [pass, fail], default: pass }
  workflow:
    steps:
      - id: render
        uses: exec
        with:
          command: cat
          input: { name: "${{ params.app }}", replicas: "${{ params.replicas }}" }
      - id: publish
        needs: [render]
        uses: git.commit
        with: &publish
          repo: "${{ vars.gitops_repo }}"
          branch: main
          path: "apps/${{ params.app }}"
          files:
            values.json: "${{ steps.render.outputs }}"
            README.md: "Deployed by Fulfil for ${{ params.app }}.\n"
          message: "${{ params.app }}: ${{ params.replicas }} replicas"
        compensate: { uses: git.remove, with: *publish }
      - id: verify
        needs: [publish]
        uses: exec
        with:
          command: sh
          args: ["-c", "if [ \"$VERIFY\" = pass ]; then echo '{\"ok\": true}'; else echo \"replicas never became ready\" >&2; exit 1; fi"]
          env: { VERIFY: "${{ params.verify }}" }
        retry: { max_attempts: 1 }
"#;

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn commits(bare: &Path) -> anyhow::Result<u32> {
    Ok(git(bare, &["rev-list", "--count", "main"])?.parse()?)
}

/// The files of `dir` on `main`, with their contents.
fn tree(bare: &Path, dir: &str) -> anyhow::Result<Vec<(String, String)>> {
    let names = git(bare, &["ls-tree", "-r", "--name-only", "main", "--", dir])?;
    names
        .lines()
        .map(|name| {
            Ok((
                name.to_string(),
                git(bare, &["show", &format!("main:{name}")])?,
            ))
        })
        .collect()
}

async fn finished(stack: &TestStack, params: Value) -> anyhow::Result<Value> {
    let run = stack.request("gitops-app", params).await?;
    stack.wait_finished(run, WAIT).await
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"] == id))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_renders_git_commit_publishes_once_and_compensation_removes_the_files()
-> anyhow::Result<()> {
    let scratch = std::env::temp_dir().join(format!("fulfil-gitops-{}", uuid::Uuid::now_v7()));
    let bare = scratch.join("gitops.git");
    std::fs::create_dir_all(&bare)?;
    git(&bare, &["init", "-q", "--bare", "-b", "main"])?;
    let stack = TestStack::start_with(StackOptions {
        exec_allow: ExecAllowList::from_entries(["cat", "sh"])?,
        vars: fulfil_core::Vars::from_file_text(&format!("gitops_repo: {}", bare.display()))?,
        ..StackOptions::default()
    })
    .await?;
    stack.apply(GITOPS).await?;

    // First request: rendered by exec, committed and pushed.
    let params = json!({"app": "orders", "replicas": 2});
    let run = finished(&stack, params.clone()).await?;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        step(&run, "render")["outputs"],
        json!({"name": "orders", "replicas": 2}),
        "stdin's JSON came back from stdout"
    );
    let published = &step(&run, "publish")["outputs"];
    assert_eq!(published["changed"], true, "{published}");
    let head = git(&bare, &["rev-parse", "main"])?;
    assert_eq!(published["commit"], head.as_str());
    assert_eq!(
        published["files"],
        json!(["apps/orders/README.md", "apps/orders/values.json"])
    );
    assert_eq!(commits(&bare)?, 1);
    let files = tree(&bare, "apps/orders")?;
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files[0].1, "Deployed by Fulfil for orders.");
    assert_eq!(
        serde_json::from_str::<Value>(&files[1].1)?,
        json!({"name": "orders", "replicas": 2})
    );
    let subject = git(&bare, &["log", "-1", "--format=%s", "main"])?;
    assert_eq!(subject, "orders: 2 replicas");

    // The same content again: no new commit, the current one reported.
    let run = finished(&stack, params.clone()).await?;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let published = &step(&run, "publish")["outputs"];
    assert_eq!(published["changed"], false, "{published}");
    assert_eq!(published["commit"], head.as_str());
    assert_eq!(commits(&bare)?, 1, "nothing new was committed");

    // A later step fails for good: the compensation removes the files in
    // a new commit, and the run ends compensated.
    let run = finished(
        &stack,
        json!({"app": "orders", "replicas": 2, "verify": "fail"}),
    )
    .await?;
    assert_eq!(run["status"], "compensated", "{run:#}");
    assert_eq!(step(&run, "publish")["status"], "compensated", "{run:#}");
    let verify = &step(&run, "verify");
    let error = verify["attempts"][0]["error"].to_string();
    assert!(error.contains("exec_failed"), "{error}");
    assert!(
        error.contains("replicas never became ready"),
        "stderr's tail: {error}"
    );
    assert_eq!(commits(&bare)?, 2, "the removal is a new commit");
    assert!(tree(&bare, "apps/orders")?.is_empty(), "the files are gone");
    let removal = git(&bare, &["log", "-1", "--format=%B", "main"])?;
    assert!(
        removal.contains(&format!(
            "Fulfil-Run: {}",
            run["id"].as_str().unwrap_or("?")
        )),
        "{removal}"
    );

    stack.stop().await?;
    let _ = std::fs::remove_dir_all(scratch);
    Ok(())
}

async fn request_status(stack: &TestStack, id: &str, want: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = stack.get(&format!("/v1/requests/{id}")).await?;
        if body["status"] == want {
            return Ok(body);
        }
        anyhow::ensure!(Instant::now() < deadline, "request never {want}: {body:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The database's owner, connection limit and comment, if it exists.
async fn database(
    stack: &TestStack,
    name: &str,
) -> anyhow::Result<Option<(String, i32, Option<String>)>> {
    Ok(sqlx::query_as(
        "SELECT pg_get_userbyid(datdba)::text, datconnlimit, \
                shobj_description(oid, 'pg_database') \
           FROM pg_database WHERE datname = $1",
    )
    .bind(name)
    .fetch_optional(&stack.pool)
    .await?)
}

async fn role_exists(stack: &TestStack, name: &str) -> anyhow::Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)")
            .bind(name)
            .fetch_one(&stack.pool)
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_database_example_creates_a_real_database_and_delete_drops_it()
-> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let yaml = std::fs::read_to_string(workflows_dir().join("postgres-database.yaml"))?;
    stack.apply(&yaml).await?;
    // Databases are the server's, not the test database's: a name of its
    // own, so parallel runs of this test never meet.
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let name = format!("ex-{}", &suffix[suffix.len() - 10..]);
    let role = format!("{name}_owner");

    let (status, _, accepted) = stack
        .post_request(
            "postgres-database",
            json!({"params": {"name": name, "team": "payments"}}),
            None,
        )
        .await?;
    assert_eq!(status, 202, "{accepted}");
    let request_id = accepted["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let run = stack
        .wait_finished(
            accepted["run_id"].as_str().unwrap_or_default().parse()?,
            WAIT,
        )
        .await?;
    let outcome = async {
        assert_eq!(run["status"], "succeeded", "{run:#}");
        let endpoint = run["outputs"]["endpoint"].as_str().unwrap_or_default();
        assert!(endpoint.ends_with(&format!(":5432/{name}")), "{run:#}");
        assert_eq!(run["outputs"]["owner_role"], role.as_str());
        assert_eq!(
            database(&stack, &name).await?,
            Some((
                role.clone(),
                20,
                Some("small database of payments (development)".to_string())
            )),
            "created, owned by its role, configured by size"
        );
        assert!(role_exists(&stack, &role).await?);

        let (status, deletion) = stack.delete_request(&request_id).await?;
        assert_eq!(status, 202, "{deletion}");
        request_status(&stack, &request_id, "deleted").await?;
        assert_eq!(
            database(&stack, &name).await?,
            None,
            "the database is dropped"
        );
        assert!(!role_exists(&stack, &role).await?, "and its role");
        anyhow::Ok(())
    }
    .await;
    // Whatever happened, leave the shared server as found.
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&stack.pool)
    .await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP ROLE IF EXISTS \"{role}\""
    )))
    .execute(&stack.pool)
    .await;
    outcome?;
    stack.stop().await
}
