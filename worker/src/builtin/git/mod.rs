//! `git.commit` and `git.remove`: the GitOps hand-off. A step writes files
//! rendered from the run into a directory of a Git repository's branch and
//! pushes, for Argo CD, Flux or a reviewer to pick up; its compensation (or
//! the Promise's `delete` workflow) removes them again.
//!
//! Input (the same for both; unknown fields are refused):
//!
//! ```yaml
//! repo: https://git.example.com/platform/gitops.git   # or ssh://, git@host:path, file://, /abs/path
//! branch: main                  # default main; created if the repository lacks it
//! path: apps/orders             # directory in the repository; default: its root
//! files:                        # name (may hold '/') -> content
//!   namespace.yaml: "apiVersion: v1\nkind: Namespace\n..."   # strings as they are
//!   values.json: { replicas: 2 }                             # other JSON: pretty JSON (valid YAML too)
//! message: "orders: 2 replicas" # optional first line; trailers name the run and step
//! author: { name: Fulfil, email: fulfil@example.com }        # optional
//! ```
//!
//! `git.remove` ignores the contents (and also takes `files` as a list of
//! names), so its `with` can be the very `with` of the `git.commit` it
//! undoes: `compensate: { uses: git.remove, with: *same }` with a YAML
//! anchor.
//!
//! Output: `{commit, changed, branch, files}`: the branch's commit after the
//! step (`null` only when removing from a branch that does not exist),
//! whether this attempt pushed a new commit, and the files' paths in the
//! repository.
//!
//! Contract:
//!
//! * **Idempotent.** Files already as asked make no commit (`changed:
//!   false`), so a redelivered or retried attempt, or a reconcile run,
//!   pushes nothing new.
//! * **Only the named files** are touched; file names cannot leave `path`
//!   (`..`, absolute names, `.git` and symbolic links in the work tree are
//!   refused), so a Promise cannot write elsewhere in the repository.
//! * **Concurrent writers**: a push refused because the branch moved is
//!   redone on a fresh fetch of the branch (the step's files written again
//!   over the new tip, the same as a rebase), at most
//!   [`MAX_PUSH_ATTEMPTS`] times within the step's deadline.
//! * **The git binary** does the work, in a fresh shallow clone per attempt
//!   in a private temporary directory removed afterwards. It runs with a
//!   short list of the worker's variables (`PATH`, `HOME`, ssh agent, proxy
//!   and CA settings), never prompts, runs no hooks, signs nothing and
//!   speaks only `https`, `http`, `ssh`, `git` and `file`.
//! * **Credentials** in the URL (`https://user:${{ secrets.token }}@...`)
//!   never appear in the output, errors or logs: the URL is shown with its
//!   user information replaced by `***`, and git's messages are scrubbed
//!   the same way.
//! * **Errors**: bad input is `invalid_input`; a path the work tree does
//!   not allow is `git_path_refused`; both permanent. Failing to reach the
//!   remote (`git_fetch_failed`), to push (`git_push_failed`,
//!   `git_push_rejected` once the attempts are spent) or any other git
//!   failure (`git_failed`) is retryable.

mod worktree;

use std::collections::BTreeSet;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::handler::{Handler, StepError, TaskContext, parse_input};

pub use worktree::MAX_PUSH_ATTEMPTS;

/// Most files one step may write or remove.
const MAX_FILES: usize = 1000;

/// The `git.commit` handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct GitCommit;

impl GitCommit {
    pub const NAME: &'static str = "git.commit";
}

/// The `git.remove` handler: undoes a `git.commit` with the same input.
#[derive(Debug, Clone, Copy, Default)]
pub struct GitRemove;

impl GitRemove {
    pub const NAME: &'static str = "git.remove";
}

#[async_trait]
impl Handler for GitCommit {
    async fn handle(&self, task: &TaskContext, input: Value) -> Result<Value, StepError> {
        let change = Change::from_input(input, Mode::Write, task)?;
        change.apply(task).await
    }
}

#[async_trait]
impl Handler for GitRemove {
    async fn handle(&self, task: &TaskContext, input: Value) -> Result<Value, StepError> {
        let change = Change::from_input(input, Mode::Remove, task)?;
        change.apply(task).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Write,
    Remove,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    repo: String,
    #[serde(default = "default_branch")]
    branch: String,
    #[serde(default)]
    path: String,
    files: Value,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    author: Option<Author>,
}

fn default_branch() -> String {
    "main".to_string()
}

/// Who the commit is by (author and committer).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Author {
    name: String,
    email: String,
}

/// A remote: the URL git is given, and the one shown to people.
#[derive(Clone)]
pub(crate) struct Remote {
    url: String,
    shown: String,
    /// The URL's user information (`user:token`), scrubbed from git's
    /// messages.
    userinfo: Option<String>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Remote {
    fn parse(repo: &str) -> Result<Self, StepError> {
        let refuse = |problem: &str| StepError::invalid_input("repo", problem.to_string());
        if repo.is_empty() {
            return Err(refuse("must not be empty"));
        }
        if repo.chars().any(char::is_control) {
            return Err(refuse("must not contain control characters"));
        }
        if repo.starts_with('-') {
            return Err(refuse("must not start with '-'"));
        }
        if repo.contains("::") {
            // `<transport>::<address>` runs a remote helper (`ext::` runs
            // any command).
            return Err(refuse(
                "remote helpers (`<transport>::...`) are not supported",
            ));
        }
        if let Some((scheme, rest)) = repo.split_once("://") {
            if !matches!(scheme, "https" | "http" | "ssh" | "git" | "file") {
                return Err(StepError::invalid_input(
                    "repo",
                    format!(
                        "scheme {scheme:?} is not supported; use https, http, ssh, git or file"
                    ),
                ));
            }
            let authority = rest.split('/').next().unwrap_or_default();
            let userinfo = authority
                .rsplit_once('@')
                .map(|(userinfo, _)| userinfo.to_string())
                .filter(|u| !u.is_empty());
            let shown = match &userinfo {
                Some(userinfo) => repo.replacen(&format!("{userinfo}@"), "***@", 1),
                None => repo.to_string(),
            };
            return Ok(Self {
                url: repo.to_string(),
                shown,
                userinfo,
            });
        }
        let scp_like = repo
            .split_once(':')
            .is_some_and(|(host, _)| !host.is_empty() && !host.contains('/'));
        if repo.starts_with('/') || scp_like {
            // scp-like `git@host:org/repo.git` names a user, never a secret.
            return Ok(Self {
                url: repo.to_string(),
                shown: repo.to_string(),
                userinfo: None,
            });
        }
        Err(StepError::invalid_input(
            "repo",
            format!(
                "{repo:?} is neither a URL (https://, ssh://, git://, file://), an scp-like \
                 user@host:path nor an absolute path"
            ),
        ))
    }

    /// `text` (git's output) without the URL's credentials.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = text.replace(&self.url, &self.shown);
        if let Some(userinfo) = &self.userinfo {
            text = text.replace(&format!("{userinfo}@"), "***@");
            // A token alone (`https://TOKEN@host`, or the password of
            // `user:TOKEN`) is scrubbed wherever git quotes it; a short one
            // is a user name (`git`, `oauth2`), and replacing it everywhere
            // would garble the message.
            let secret = userinfo
                .split_once(':')
                .map_or(userinfo.as_str(), |(_, password)| password);
            if secret.len() >= 8 {
                text = text.replace(secret, "***");
            }
        }
        text
    }
}

/// One step's change to a branch, every input field checked.
#[derive(Debug)]
pub(crate) struct Change {
    remote: Remote,
    branch: String,
    /// Repository-relative paths, sorted; contents when writing.
    files: Vec<(String, Option<Vec<u8>>)>,
    message: String,
    author: (String, String),
}

impl Change {
    fn from_input(input: Value, mode: Mode, task: &TaskContext) -> Result<Self, StepError> {
        let input: Input = parse_input(input)?;
        let remote = Remote::parse(&input.repo)?;
        check_branch(&input.branch)?;
        let dir = directory(&input.path)?;
        let named: Vec<(String, Option<&Value>)> = match (&input.files, mode) {
            (Value::Object(files), _) => files.iter().map(|(k, v)| (k.clone(), Some(v))).collect(),
            (Value::Array(names), Mode::Remove) => names
                .iter()
                .enumerate()
                .map(|(i, name)| match name {
                    Value::String(name) => Ok((name.clone(), None)),
                    _ => Err(StepError::invalid_input(
                        &format!("files[{i}]"),
                        "expected a file name",
                    )),
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(StepError::invalid_input(
                    "files",
                    match mode {
                        Mode::Write => "expected a mapping of file names to contents",
                        Mode::Remove => {
                            "expected a mapping of file names to contents, or a list of names"
                        }
                    },
                ));
            }
        };
        if named.is_empty() {
            return Err(StepError::invalid_input("files", "names no file"));
        }
        if named.len() > MAX_FILES {
            return Err(StepError::invalid_input(
                "files",
                format!("names {} files; at most {MAX_FILES}", named.len()),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut files = Vec::with_capacity(named.len());
        for (name, content) in named {
            let field = format!("files.{name}");
            let path = file_path(&dir, &name, &field)?;
            if !seen.insert(path.clone()) {
                return Err(StepError::invalid_input(
                    &field,
                    format!("names {path:?} again"),
                ));
            }
            let content = match (mode, content) {
                (Mode::Remove, _) => None,
                (Mode::Write, Some(Value::String(text))) => Some(text.clone().into_bytes()),
                (Mode::Write, Some(value)) => {
                    let mut text = serde_json::to_string_pretty(value).map_err(|err| {
                        StepError::invalid_input(&field, format!("cannot write it as JSON: {err}"))
                    })?;
                    text.push('\n');
                    Some(text.into_bytes())
                }
                (Mode::Write, None) => None,
            };
            files.push((path, content));
        }
        files.sort();
        let author = match input.author {
            None => ("Fulfil".to_string(), "fulfil@localhost".to_string()),
            Some(author) => {
                for (field, value) in [
                    ("author.name", &author.name),
                    ("author.email", &author.email),
                ] {
                    if value.trim().is_empty()
                        || value
                            .chars()
                            .any(|c| c.is_control() || c == '<' || c == '>')
                    {
                        return Err(StepError::invalid_input(
                            field,
                            "must be non-empty, without '<', '>' or control characters",
                        ));
                    }
                }
                (author.name, author.email)
            }
        };
        let shown_dir = if dir.is_empty() { "/" } else { dir.as_str() };
        let subject = match input.message {
            Some(message) if !message.trim().is_empty() => message.trim().to_string(),
            _ => match mode {
                Mode::Write => format!("Update {shown_dir}"),
                Mode::Remove => format!("Remove files from {shown_dir}"),
            },
        };
        let message = format!(
            "{subject}\n\nFulfil-Run: {}\nFulfil-Step: {}",
            task.run_id, task.step_id
        );
        Ok(Self {
            remote,
            branch: input.branch,
            files,
            message,
            author,
        })
    }

    async fn apply(self, task: &TaskContext) -> Result<Value, StepError> {
        let applied = worktree::apply(&self, task).await?;
        Ok(json!({
            "commit": applied.commit,
            "changed": applied.changed,
            "branch": self.branch,
            "files": self.files.iter().map(|(path, _)| path).collect::<Vec<_>>(),
        }))
    }
}

/// A branch name git accepts and that cannot pass for an option.
fn check_branch(branch: &str) -> Result<(), StepError> {
    let ok = !branch.is_empty()
        && branch.len() <= 200
        && !branch.starts_with(['-', '/', '.'])
        && !branch.ends_with(['/', '.'])
        && !branch.ends_with(".lock")
        && !branch.contains("..")
        && !branch.contains("//")
        && !branch.contains("/.")
        && !branch.contains("@{")
        && branch
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(StepError::invalid_input(
            "branch",
            format!(
                "{branch:?} is not a branch name this handler accepts: letters, digits, \
                 '-', '_', '.', '/', not starting with '-', '/' or '.', no '..'"
            ),
        ))
    }
}

/// `path` as repository-relative components joined by `/`; `""` is the
/// root.
fn directory(path: &str) -> Result<String, StepError> {
    if path.starts_with('/') {
        return Err(StepError::invalid_input(
            "path",
            format!("{path:?} is absolute; give a directory inside the repository"),
        ));
    }
    let parts = components(path).map_err(|problem| StepError::invalid_input("path", problem))?;
    Ok(parts.join("/"))
}

/// `name` inside `dir`, refused if it would leave it.
fn file_path(dir: &str, name: &str, field: &str) -> Result<String, StepError> {
    if name.starts_with('/') {
        return Err(StepError::invalid_input(
            field,
            format!("{name:?} is absolute; file names are relative to `path`"),
        ));
    }
    let parts = components(name).map_err(|problem| StepError::invalid_input(field, problem))?;
    if parts.is_empty() {
        return Err(StepError::invalid_input(field, "is not a file name"));
    }
    let name = parts.join("/");
    Ok(if dir.is_empty() {
        name
    } else {
        format!("{dir}/{name}")
    })
}

/// The non-empty components of a relative path, none of them `..` or
/// `.git`.
fn components(path: &str) -> Result<Vec<&str>, String> {
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err(format!("{path:?} contains a control character or '\\'"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("{path:?} leaves its directory ('..')")),
            _ if part.eq_ignore_ascii_case(".git") => {
                return Err(format!("{path:?} names Git's own directory (.git)"));
            }
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests;
