use std::{path::Path, process::Command};

use serde_json::{Value, json};

use super::*;
use crate::builtin::scratch::ScratchDir;
use crate::handler::RetryDecision;

fn task() -> TaskContext {
    TaskContext::from_task(&crate::test_support::task_message(
        GitCommit::NAME,
        "publish",
        chrono::Duration::seconds(60),
    ))
}

/// Runs git in `dir`, failing the test unless it succeeds; its stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository with `main` holding `apps/orders/keep.txt`.
fn bare_repo(scratch: &ScratchDir) -> String {
    let bare = scratch.path().join("gitops.git");
    std::fs::create_dir(&bare).expect("mkdir");
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let seed = scratch.path().join("seed");
    std::fs::create_dir(&seed).expect("mkdir");
    git(&seed, &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(seed.join("apps/orders")).expect("mkdir");
    std::fs::write(seed.join("apps/orders/keep.txt"), "hand-written\n").expect("write");
    std::os::unix::fs::symlink("/etc", seed.join("apps/escape")).expect("symlink");
    git(&seed, &["add", "-A"]);
    git(
        &seed,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            "seed",
        ],
    );
    let url = bare.to_string_lossy().into_owned();
    git(&seed, &["push", "-q", &url, "main"]);
    url
}

fn count(bare: &str, branch: &str) -> usize {
    git(Path::new(bare), &["rev-list", "--count", branch])
        .parse()
        .unwrap_or(0)
}

fn show(bare: &str, spec: &str) -> Option<String> {
    let out = Command::new("git")
        .current_dir(bare)
        .args(["show", spec])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn commit_is_idempotent_and_remove_undoes_only_its_files() {
    let scratch = ScratchDir::create("git-test").expect("temp dir");
    let bare = bare_repo(&scratch);
    let input = json!({
        "repo": bare,
        "branch": "main",
        "path": "apps/orders",
        "files": {
            "namespace.yaml": "apiVersion: v1\nkind: Namespace\n",
            "config/values.json": {"replicas": 2, "labels": {"team": "data"}},
        },
        "message": "orders: two replicas",
        "author": {"name": "Platform Bot", "email": "bot@example.com"},
    });
    let ctx = task();
    let first = GitCommit
        .handle(&ctx, input.clone())
        .await
        .expect("committed");
    assert_eq!(first["changed"], true);
    assert_eq!(first["branch"], "main");
    assert_eq!(
        first["files"],
        json!([
            "apps/orders/config/values.json",
            "apps/orders/namespace.yaml"
        ])
    );
    let commit = first["commit"].as_str().unwrap_or_default().to_string();
    assert_eq!(commit, git(Path::new(&bare), &["rev-parse", "main"]));
    assert_eq!(count(&bare, "main"), 2);
    assert_eq!(
        show(&bare, "main:apps/orders/namespace.yaml").as_deref(),
        Some("apiVersion: v1\nkind: Namespace\n")
    );
    let values = show(&bare, "main:apps/orders/config/values.json").unwrap_or_default();
    assert_eq!(
        serde_json::from_str::<Value>(&values).ok(),
        Some(json!({"replicas": 2, "labels": {"team": "data"}}))
    );
    assert!(
        values.ends_with("}\n") && values.contains("\n  "),
        "pretty JSON: {values}"
    );
    let log = git(
        Path::new(&bare),
        &["log", "-1", "--format=%an <%ae>%n%B", "main"],
    );
    assert!(
        log.starts_with("Platform Bot <bot@example.com>\norders: two replicas"),
        "{log}"
    );
    assert!(
        log.contains(&format!("Fulfil-Run: {}", ctx.run_id)),
        "{log}"
    );
    assert!(log.contains("Fulfil-Step: publish"), "{log}");

    // Again, the same content: nothing new.
    let again = GitCommit
        .handle(&task(), input.clone())
        .await
        .expect("no-op");
    assert_eq!(again["changed"], false);
    assert_eq!(again["commit"], commit.as_str());
    assert_eq!(count(&bare, "main"), 2);

    // Removed with the same input: only the step's files go.
    let removed = GitRemove
        .handle(&task(), input.clone())
        .await
        .expect("removed");
    assert_eq!(removed["changed"], true);
    assert_ne!(removed["commit"], commit.as_str());
    assert_eq!(count(&bare, "main"), 3);
    assert_eq!(show(&bare, "main:apps/orders/namespace.yaml"), None);
    assert_eq!(show(&bare, "main:apps/orders/config/values.json"), None);
    assert_eq!(
        show(&bare, "main:apps/orders/keep.txt").as_deref(),
        Some("hand-written\n")
    );
    let gone = GitRemove.handle(&task(), input).await.expect("no-op");
    assert_eq!(gone["changed"], false);
    assert_eq!(count(&bare, "main"), 3);

    // A branch the repository lacks is created; removing from one that
    // does not exist changes nothing and names no commit.
    let branch = json!({"repo": bare, "branch": "env/staging", "files": {"a.txt": "a"}});
    let created = GitCommit.handle(&task(), branch).await.expect("new branch");
    assert_eq!(created["changed"], true);
    assert_eq!(count(&bare, "env/staging"), 1);
    let nothing = GitRemove
        .handle(
            &task(),
            json!({"repo": bare, "branch": "nope", "files": ["a.txt"]}),
        )
        .await
        .expect("nothing to remove");
    assert_eq!(nothing["changed"], false);
    assert_eq!(nothing["commit"], Value::Null);
}

#[tokio::test]
async fn concurrent_writers_all_land_after_refetching() {
    let scratch = ScratchDir::create("git-race").expect("temp dir");
    let bare = bare_repo(&scratch);
    let writers = (0..4).map(|i| {
        let input = json!({
            "repo": bare,
            "path": format!("apps/team-{i}"),
            "files": {"values.yaml": format!("index: {i}\n")},
        });
        async move { GitCommit.handle(&task(), input).await }
    });
    let results = futures::future::join_all(writers).await;
    for result in &results {
        let output = result.as_ref().expect("every writer lands");
        assert_eq!(output["changed"], true);
    }
    assert_eq!(count(&bare, "main"), 1 + 4);
    for i in 0..4 {
        assert_eq!(
            show(&bare, &format!("main:apps/team-{i}/values.yaml")),
            Some(format!("index: {i}\n"))
        );
    }
}

#[tokio::test]
async fn paths_that_leave_the_directory_and_bad_remotes_are_refused() {
    let scratch = ScratchDir::create("git-refuse").expect("temp dir");
    let bare = bare_repo(&scratch);
    let with = |field: &str, value: Value| {
        let mut input = json!({"repo": bare, "path": "apps/orders", "files": {"a.yaml": "a"}});
        input[field] = value;
        input
    };
    for (input, field) in [
        (
            with("files", json!({"../../etc/passwd": "x"})),
            "files.../../etc/passwd",
        ),
        (
            with("files", json!({"/etc/passwd": "x"})),
            "files./etc/passwd",
        ),
        (
            with("files", json!({"sub/.git/config": "x"})),
            "files.sub/.git/config",
        ),
        (with("files", json!({})), "files"),
        (with("files", json!(["a.yaml"])), "files"),
        (with("path", json!("/srv")), "path"),
        (with("path", json!("apps/../..")), "path"),
        (with("branch", json!("--force")), "branch"),
        (with("branch", json!("a..b")), "branch"),
        (with("repo", json!("relative/repo")), "repo"),
        (with("repo", json!("ext::sh -c touch% /tmp/pwned")), "repo"),
        (with("repo", json!("--upload-pack=touch /tmp/x")), "repo"),
        (
            with("author", json!({"name": "a>b", "email": "e"})),
            "author.name",
        ),
    ] {
        let refused = GitCommit
            .handle(&task(), input.clone())
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), Some("invalid_input"), "{input}: {refused}");
        assert_eq!(refused.decision(), RetryDecision::Permanent);
        assert!(refused.message().contains(field), "{field}: {refused}");
    }
    // The repository's own symbolic link does not lead out of it.
    let through_link = json!({"repo": bare, "path": "apps/escape", "files": {"x": "x"}});
    let refused = GitCommit
        .handle(&task(), through_link)
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Some("git_path_refused"), "{refused}");
    assert!(refused.message().contains("symbolic link"), "{refused}");
    assert_eq!(count(&bare, "main"), 1, "nothing was pushed");
}

#[tokio::test]
async fn credentials_in_the_url_never_show() {
    // Nothing listens on port 1: the fetch fails at once, and git names
    // the URL in its message.
    let input = json!({
        "repo": "https://deploy:s3cr3t-t0ken-value@127.0.0.1:1/org/gitops.git",
        "files": {"a.yaml": "a"},
    });
    let failed = GitCommit
        .handle(&task(), input)
        .await
        .expect_err("unreachable");
    assert_eq!(failed.code(), Some("git_fetch_failed"), "{failed}");
    assert!(failed.is_retryable());
    assert!(!failed.message().contains("s3cr3t"), "{failed}");
    assert!(
        failed
            .message()
            .contains("https://***@127.0.0.1:1/org/gitops.git"),
        "{failed}"
    );
    let remote = Remote::parse("https://ghp_abcdefghijkl@github.com/o/r.git").expect("url");
    assert_eq!(
        remote.scrub("fatal: Authentication failed for ghp_abcdefghijkl"),
        "fatal: Authentication failed for ***"
    );
    assert_eq!(format!("{remote:?}"), "https://***@github.com/o/r.git");
}
