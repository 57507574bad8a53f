//! Applying a [`Change`] with the git binary: a fresh shallow clone of the
//! branch per push attempt, the files written or removed, one commit if
//! anything differs, and a plain (never forced) push.

use std::{path::Path, time::Duration};

use tokio::time::Instant;

use super::{Change, Remote};
use crate::builtin::process::{self, Finished, Limits, RunError};
use crate::builtin::scratch::ScratchDir;
use crate::handler::{StepError, TaskContext};

/// Push attempts per step attempt; between them the branch is fetched
/// again and the files re-applied on its new tip.
pub const MAX_PUSH_ATTEMPTS: u32 = 5;

/// Variables of the worker's environment git may use: where it and ssh
/// live, their configuration and credentials (ssh agent, credential
/// helpers in `~/.gitconfig`), proxies and CAs. Nothing else (a worker's
/// own secrets) reaches git or what it runs.
const GIT_ENV: [&str; 18] = [
    "PATH",
    "HOME",
    "TMPDIR",
    "XDG_CONFIG_HOME",
    "SSH_AUTH_SOCK",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
];

const LIMITS: Limits = Limits {
    max_stdout: 1024 * 1024,
    stderr_tail: 4 * 1024,
};

/// What a step did to its branch.
pub(super) struct Applied {
    pub commit: Option<String>,
    pub changed: bool,
}

pub(super) async fn apply(change: &Change, task: &TaskContext) -> Result<Applied, StepError> {
    let deadline = Instant::now() + task.remaining();
    for attempt in 1..=MAX_PUSH_ATTEMPTS {
        let scratch = ScratchDir::create("git").map_err(|err| {
            StepError::retryable(format!("cannot create a work tree directory: {err}"))
                .with_code("git_failed")
        })?;
        let git = Git {
            dir: scratch.path(),
            remote: &change.remote,
            deadline,
            task,
        };
        let outcome = push_once(&git, change).await;
        scratch.remove().await;
        match outcome? {
            Pushed::Done(applied) => return Ok(applied),
            Pushed::Rejected(stderr) if attempt == MAX_PUSH_ATTEMPTS => {
                return Err(StepError::retryable(format!(
                    "the push to {} branch {:?} was refused {MAX_PUSH_ATTEMPTS} times because \
                     the branch kept moving: {stderr}",
                    change.remote.shown, change.branch
                ))
                .with_code("git_push_rejected"));
            }
            Pushed::Rejected(_) => {
                // Others push too: wait a little, more each time, so the
                // writers do not keep colliding.
                let jitter = u64::from(uuid::Uuid::now_v7().as_u128() as u8);
                let pause = Duration::from_millis(100 * u64::from(attempt) + jitter);
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
        }
    }
    Err(StepError::retryable("no push attempt was made").with_code("git_failed"))
}

enum Pushed {
    Done(Applied),
    /// The branch moved since the fetch; git's message.
    Rejected(String),
}

async fn push_once(git: &Git<'_>, change: &Change) -> Result<Pushed, StepError> {
    git.ok(&["init", "-q", "-b", &change.branch, "."], "git_failed")
        .await?;
    git.ok(&["remote", "add", "origin", &git.remote.url], "git_failed")
        .await?;
    let branch_ref = format!("refs/heads/{}", change.branch);
    let fetched = git
        .run(&[
            "fetch",
            "-q",
            "--depth",
            "1",
            "--no-tags",
            "origin",
            &branch_ref,
        ])
        .await?;
    let exists = if fetched.status.success() {
        true
    } else if fetched.stderr.text.contains("couldn't find remote ref") {
        false
    } else {
        return Err(git.failure("fetch", &fetched, "git_fetch_failed"));
    };
    if exists {
        git.ok(
            &["checkout", "-q", "-B", &change.branch, "FETCH_HEAD"],
            "git_failed",
        )
        .await?;
    }
    write_files(git.dir, change).await?;
    git.ok(&["add", "-A", "."], "git_failed").await?;
    let diff = git.run(&["diff", "--cached", "--quiet"]).await?;
    match diff.status.code() {
        Some(0) => {
            let commit = if exists {
                Some(git.head().await?)
            } else {
                None
            };
            return Ok(Pushed::Done(Applied {
                commit,
                changed: false,
            }));
        }
        Some(1) => {}
        _ => return Err(git.failure("diff", &diff, "git_failed")),
    }
    let (name, email) = &change.author;
    let name = format!("user.name={name}");
    let email = format!("user.email={email}");
    git.ok(
        &[
            "-c",
            &name,
            "-c",
            &email,
            "commit",
            "-q",
            "--no-verify",
            "-m",
            &change.message,
        ],
        "git_failed",
    )
    .await?;
    let refspec = format!("HEAD:{branch_ref}");
    let pushed = git.run(&["push", "-q", "origin", &refspec]).await?;
    if pushed.status.success() {
        return Ok(Pushed::Done(Applied {
            commit: Some(git.head().await?),
            changed: true,
        }));
    }
    let stderr = git.remote.scrub(pushed.stderr.text.trim());
    if [
        "[rejected]",
        "non-fast-forward",
        "fetch first",
        "cannot lock ref",
    ]
    .iter()
    .any(|sign| stderr.contains(sign))
    {
        return Ok(Pushed::Rejected(stderr));
    }
    Err(git.failure("push", &pushed, "git_push_failed"))
}

/// Writes or removes the change's files in the work tree at `dir`, never
/// through a symbolic link (the repository's content decides where those
/// point).
async fn write_files(dir: &Path, change: &Change) -> Result<(), StepError> {
    let dir = dir.to_path_buf();
    let files = change.files.clone();
    tokio::task::spawn_blocking(move || {
        for (path, content) in &files {
            let refused = |problem: String| {
                StepError::permanent(format!("cannot write {path:?}: {problem}"))
                    .with_code("git_path_refused")
            };
            let mut at = dir.clone();
            let parts: Vec<&str> = path.split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                at.push(part);
                let last = i + 1 == parts.len();
                match std::fs::symlink_metadata(&at) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        return Err(refused(format!(
                            "{} is a symbolic link in the repository",
                            parts[..=i].join("/")
                        )));
                    }
                    Ok(meta) if !last && !meta.is_dir() => {
                        return Err(refused(format!(
                            "{} is a file in the repository, not a directory",
                            parts[..=i].join("/")
                        )));
                    }
                    Ok(meta) if last && meta.is_dir() => {
                        return Err(refused("it is a directory in the repository".into()));
                    }
                    _ => {}
                }
            }
            let io = |err: std::io::Error| refused(err.to_string());
            match content {
                Some(bytes) => {
                    if let Some(parent) = at.parent() {
                        std::fs::create_dir_all(parent).map_err(io)?;
                    }
                    std::fs::write(&at, bytes).map_err(io)?;
                }
                None => match std::fs::remove_file(&at) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(io(err)),
                    _ => {}
                },
            }
        }
        Ok(())
    })
    .await
    .map_err(|err| {
        StepError::retryable(format!("writing the files: {err}")).with_code("git_failed")
    })?
}

/// Runs git in one work tree, within the step's deadline.
struct Git<'a> {
    dir: &'a Path,
    remote: &'a Remote,
    deadline: Instant,
    task: &'a TaskContext,
}

impl Git<'_> {
    async fn run(&self, args: &[&str]) -> Result<Finished, StepError> {
        let mut command = tokio::process::Command::new("git");
        command.current_dir(self.dir).env_clear();
        for name in GIT_ENV {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            // Messages in English, to recognise a refused push.
            .env("LC_ALL", "C")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ALLOW_PROTOCOL", "https:http:ssh:git:file")
            .args([
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "commit.gpgSign=false",
                "-c",
                "core.autocrlf=false",
            ])
            .args(args);
        let what = args.first().copied().unwrap_or("git");
        process::run(command, Vec::new(), LIMITS, self.deadline, Some(self.task))
            .await
            .map_err(|err| match err {
                RunError::Spawn(err) => StepError::retryable(format!(
                    "cannot run git (is it installed on this worker?): {err}"
                ))
                .with_code("git_failed"),
                RunError::Deadline { stderr, .. } => StepError::retryable(format!(
                    "git {what} with {} was still running at the step's deadline{}",
                    self.remote.shown,
                    self.remote.scrub(&stderr.describe(LIMITS.stderr_tail))
                ))
                .with_code("timeout"),
                other => StepError::retryable(format!(
                    "git {what} with {}: {}",
                    self.remote.shown,
                    self.remote.scrub(&other.to_string())
                ))
                .with_code("git_failed"),
            })
    }

    /// Runs git and fails with `code` unless it succeeded.
    async fn ok(&self, args: &[&str], code: &str) -> Result<Finished, StepError> {
        let finished = self.run(args).await?;
        if finished.status.success() {
            Ok(finished)
        } else {
            Err(self.failure(args.first().copied().unwrap_or("git"), &finished, code))
        }
    }

    async fn head(&self) -> Result<String, StepError> {
        let head = self.ok(&["rev-parse", "HEAD"], "git_failed").await?;
        Ok(String::from_utf8_lossy(&head.stdout).trim().to_string())
    }

    fn failure(&self, what: &str, finished: &Finished, code: &str) -> StepError {
        StepError::retryable(format!(
            "git {what} with {} {}{}",
            self.remote.shown,
            process::describe_status(finished.status),
            self.remote
                .scrub(&finished.stderr.describe(LIMITS.stderr_tail))
        ))
        .with_code(code)
    }
}
