//! `exec`: runs a command the worker's operator allowed (terraform, kubectl,
//! psql, a team's script), with the step's input as JSON on stdin and its
//! stdout, parsed as JSON, as the step's output.
//!
//! Input (unknown fields are refused):
//!
//! ```yaml
//! command: psql                 # a name on this worker's allow-list, nothing else
//! args: ["-X", "-c", "select 1"]  # strings (numbers and booleans as their text)
//! input: { any: JSON }          # written to stdin as JSON; omitted: empty stdin
//! env: { PGURL: "${{ secrets.admin_url }}" }
//! cwd: /srv/infra               # absolute; default: a fresh empty directory
//! ```
//!
//! Contract:
//!
//! * **Only allowed commands run.** The operator names them when starting
//!   the worker ([`ExecAllowList`]: `--exec-allow NAME[=PATH]`); a name is
//!   resolved on `PATH` once, at start. A step naming anything else fails
//!   for good with `exec_not_allowed`, which lists what is allowed. There
//!   is no shell: `args` reach the program as they are.
//! * **A clean environment**: `PATH`, `HOME`, `LANG`, `LC_ALL`, `TZ` and
//!   `TMPDIR` from the worker, `FULFIL_RUN_ID`, `FULFIL_STEP_ID`,
//!   `FULFIL_ATTEMPT`, `FULFIL_IDEMPOTENCY_KEY` (stable across attempts:
//!   make side effects idempotent with it) and `FULFIL_DEADLINE`, then
//!   `env`. Nothing else of the worker's environment (its secrets, its
//!   database URL) reaches the command.
//! * **Output**: stdout is parsed as one JSON value; empty stdout is
//!   `null`. Anything else fails for good (`exec_output_not_json`, quoting
//!   its start), and so does stdout over 1 MiB (`exec_output_too_large`).
//!   Secrets the step resolved are redacted from the output and errors by
//!   the runtime, as for every handler.
//! * **Failure**: a non-zero exit is retryable (`exec_failed`), with the
//!   exit code and the last 4 KiB of stderr; list `exec_failed` in the
//!   step's `retry.non_retryable` for a command whose failures are final.
//!   Killed by a signal: `exec_killed`, retryable.
//! * **Time**: at the step's deadline the command's whole process group is
//!   killed (`timeout`, retryable), and so it is when the attempt is
//!   abandoned; see `process`.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::process::{self, Limits, RunError};
use super::scratch::ScratchDir;
use crate::handler::{Handler, StepError, TaskContext, parse_input};

/// Most stdout bytes an `exec` step may produce.
pub const MAX_STDOUT_BYTES: usize = 1024 * 1024;
/// Bytes of stderr an `exec_failed` error quotes, from its end.
pub const STDERR_TAIL_BYTES: usize = 4 * 1024;
/// How much of non-JSON stdout an error quotes.
const STDOUT_SNIPPET_CHARS: usize = 200;
/// Variables of the worker's environment a command inherits.
const INHERITED_ENV: [&str; 7] = ["PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"];

/// Why an allow-list entry was refused at start.
#[derive(Debug, thiserror::Error)]
pub enum ExecConfigError {
    /// The name could not be written as `command:` or is ambiguous.
    #[error(
        "exec allow-list entry {entry:?}: {name:?} is not a valid command name (letters, digits, '.', '_', '+', '-'; not starting with '-')"
    )]
    InvalidName { entry: String, name: String },
    /// The name is not on `PATH`.
    #[error(
        "exec allow-list entry {name:?}: no executable {name:?} on PATH; give its path as {name}=PATH"
    )]
    NotOnPath { name: String },
    /// The given path is not an executable file.
    #[error("exec allow-list entry {name:?}: {} is not an executable file", .path.display())]
    NotExecutable { name: String, path: PathBuf },
    /// A directory of scripts could not be listed.
    #[error("cannot list the scripts in {}: {source}", .dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The commands an `exec` step may run on this worker: names to absolute
/// paths, fixed when the worker starts. Empty by default: `exec` refuses
/// everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecAllowList {
    commands: BTreeMap<String, PathBuf>,
}

impl ExecAllowList {
    /// Nothing allowed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `--exec-allow` entries: `NAME` (found on `PATH` now) or
    /// `NAME=PATH` (a path to an executable, made absolute now).
    pub fn from_entries<S: AsRef<str>>(
        entries: impl IntoIterator<Item = S>,
    ) -> Result<Self, ExecConfigError> {
        let mut list = Self::new();
        for entry in entries {
            list.allow_entry(entry.as_ref())?;
        }
        Ok(list)
    }

    /// Adds one `NAME` or `NAME=PATH` entry (see [`Self::from_entries`]).
    pub fn allow_entry(&mut self, entry: &str) -> Result<&mut Self, ExecConfigError> {
        let entry = entry.trim();
        let (name, path) = match entry.split_once('=') {
            Some((name, path)) => (name.trim(), Some(path.trim())),
            None => (entry, None),
        };
        if !is_command_name(name) {
            return Err(ExecConfigError::InvalidName {
                entry: entry.to_string(),
                name: name.to_string(),
            });
        }
        let path = match path {
            Some(path) => {
                let path = std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path));
                if !is_executable(&path) {
                    return Err(ExecConfigError::NotExecutable {
                        name: name.to_string(),
                        path,
                    });
                }
                path
            }
            None => find_on_path(name, std::env::var_os("PATH")).ok_or_else(|| {
                ExecConfigError::NotOnPath {
                    name: name.to_string(),
                }
            })?,
        };
        self.commands.insert(name.to_string(), path);
        Ok(self)
    }

    /// Adds `name`, found on `PATH`, if it is there; says whether it was.
    pub fn allow_if_found(&mut self, name: &str) -> bool {
        match find_on_path(name, std::env::var_os("PATH")) {
            Some(path) if is_command_name(name) => {
                self.commands.insert(name.to_string(), path);
                true
            }
            _ => false,
        }
    }

    /// Adds every executable file directly in `dir`, by its file name: a
    /// team's scripts next to its Promises.
    pub fn allow_scripts_in(&mut self, dir: &Path) -> Result<&mut Self, ExecConfigError> {
        let failed = |source| ExecConfigError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        };
        let dir = std::path::absolute(dir).map_err(failed)?;
        for entry in std::fs::read_dir(&dir).map_err(failed)? {
            let path = entry.map_err(failed)?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if is_command_name(name) && is_executable(&path) {
                self.commands.insert(name.to_string(), path.clone());
            }
        }
        Ok(self)
    }

    /// Merges `other` in; its paths win for names in both.
    pub fn extend(&mut self, other: ExecAllowList) {
        self.commands.extend(other.commands);
    }

    /// The allowed names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.commands.keys().map(String::as_str)
    }

    /// The path `name` runs, if allowed.
    pub fn path_of(&self, name: &str) -> Option<&Path> {
        self.commands.get(name).map(PathBuf::as_path)
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}

/// A name a step can write as `command:`: no path separators, no option
/// look-alike.
fn is_command_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('-')
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_on_path(name: &str, path: Option<OsString>) -> Option<PathBuf> {
    std::env::split_paths(&path?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// The `exec` handler.
#[derive(Debug, Clone, Default)]
pub struct Exec {
    allowed: ExecAllowList,
}

impl Exec {
    pub const NAME: &'static str = "exec";

    /// Runs the commands of `allowed`, and nothing else.
    pub fn new(allowed: ExecAllowList) -> Self {
        Self { allowed }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    command: String,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    env: BTreeMap<String, Value>,
    #[serde(default)]
    cwd: Option<String>,
}

/// An invocation with every field checked.
struct Invocation {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    stdin: Vec<u8>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
}

impl Exec {
    fn invocation(&self, input: Value) -> Result<Invocation, StepError> {
        let input: Input = parse_input(input)?;
        let program = self
            .allowed
            .path_of(&input.command)
            .ok_or_else(|| self.not_allowed(&input.command))?
            .to_path_buf();
        let args = input
            .args
            .iter()
            .enumerate()
            .map(|(i, arg)| argument_text(&format!("args[{i}]"), arg))
            .collect::<Result<_, _>>()?;
        let mut env = Vec::with_capacity(input.env.len());
        for (name, value) in &input.env {
            let field = format!("env.{name}");
            if !is_env_name(name) {
                return Err(StepError::invalid_input(
                    &field,
                    "not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)",
                ));
            }
            env.push((name.clone(), argument_text(&field, value)?));
        }
        let cwd = match input.cwd {
            None => None,
            Some(cwd) => {
                let path = PathBuf::from(&cwd);
                if !path.is_absolute() {
                    return Err(StepError::invalid_input(
                        "cwd",
                        format!("{cwd:?} is not an absolute path"),
                    ));
                }
                Some(path)
            }
        };
        let stdin = match input.input {
            None => Vec::new(),
            Some(value) => {
                let mut bytes = serde_json::to_vec(&value).map_err(|err| {
                    StepError::invalid_input("input", format!("cannot write it as JSON: {err}"))
                })?;
                bytes.push(b'\n');
                bytes
            }
        };
        Ok(Invocation {
            name: input.command,
            program,
            args,
            stdin,
            env,
            cwd,
        })
    }

    fn not_allowed(&self, command: &str) -> StepError {
        let allowed = if self.allowed.is_empty() {
            "this worker allows no commands".to_string()
        } else {
            format!(
                "allowed: [{}]",
                self.allowed.names().collect::<Vec<_>>().join(", ")
            )
        };
        StepError::permanent(format!(
            "command {command:?} is not on this worker's exec allow-list ({allowed}); \
             an operator allows it with --exec-allow {command}[=PATH] or FULFIL_EXEC_ALLOW"
        ))
        .with_code("exec_not_allowed")
    }
}

/// Text of an argument or variable: strings as they are, numbers and
/// booleans as their JSON text; no NUL (the OS cannot pass one).
fn argument_text(field: &str, value: &Value) -> Result<String, StepError> {
    let text = super::header_value_text(field, value)?;
    if text.contains('\0') {
        return Err(StepError::invalid_input(field, "contains a NUL character"));
    }
    Ok(text)
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// How long before the task's deadline the command is killed, so this
/// handler (not the runtime dropping it) reports the timeout, with stderr.
fn kill_margin(remaining: Duration) -> Duration {
    (remaining / 20).min(Duration::from_secs(1))
}

#[async_trait]
impl Handler for Exec {
    async fn handle(&self, task: &TaskContext, input: Value) -> Result<Value, StepError> {
        let call = self.invocation(input)?;
        // The default working directory is new and empty: what a command
        // writes there (terraform's .terraform, kubectl's cache) is gone
        // with the attempt instead of piling up on the worker.
        let scratch = match call.cwd {
            Some(_) => None,
            None => Some(ScratchDir::create("exec").map_err(|err| {
                StepError::retryable(format!(
                    "cannot create a working directory for {:?}: {err}",
                    call.name
                ))
                .with_code("exec_spawn_failed")
            })?),
        };
        let cwd = match (&call.cwd, &scratch) {
            (Some(cwd), _) => cwd.clone(),
            (None, Some(scratch)) => scratch.path().to_path_buf(),
            (None, None) => std::env::temp_dir(),
        };
        let mut command = tokio::process::Command::new(&call.program);
        command.args(&call.args).current_dir(&cwd).env_clear();
        for name in INHERITED_ENV {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .env("FULFIL_RUN_ID", task.run_id.to_string())
            .env("FULFIL_STEP_ID", task.step_id.to_string())
            .env("FULFIL_ATTEMPT", task.attempt.to_string())
            .env("FULFIL_IDEMPOTENCY_KEY", &task.idempotency_key)
            .env("FULFIL_DEADLINE", task.deadline.to_rfc3339())
            .envs(call.env.iter().map(|(k, v)| (k, v)));

        let remaining = task.remaining();
        let deadline =
            tokio::time::Instant::now() + remaining.saturating_sub(kill_margin(remaining));
        let limits = Limits {
            max_stdout: MAX_STDOUT_BYTES,
            stderr_tail: STDERR_TAIL_BYTES,
        };
        let name = &call.name;
        let result = process::run(command, call.stdin, limits, deadline, Some(task)).await;
        if let Some(scratch) = scratch {
            scratch.remove().await;
        }
        let finished = match result {
            Ok(finished) => finished,
            Err(RunError::Spawn(err)) => {
                return Err(StepError::retryable(format!(
                    "cannot start {name:?} ({}): {err}",
                    call.program.display()
                ))
                .with_code("exec_spawn_failed"));
            }
            Err(RunError::Deadline { after, stderr }) => {
                return Err(StepError::retryable(format!(
                    "{name:?} was still running at the step's deadline, after {}: its process group was killed{}",
                    humantime::format_duration(round_ms(after)),
                    stderr.describe(STDERR_TAIL_BYTES)
                ))
                .with_code("timeout"));
            }
            Err(RunError::StdoutTooLarge { limit, stderr }) => {
                return Err(StepError::permanent(format!(
                    "{name:?} wrote more than {limit} bytes to stdout: its process group was killed{}",
                    stderr.describe(STDERR_TAIL_BYTES)
                ))
                .with_code("exec_output_too_large"));
            }
            Err(err @ RunError::Io(_)) => {
                return Err(StepError::retryable(format!("running {name:?}: {err}"))
                    .with_code("exec_failed"));
            }
        };
        let stderr = finished.stderr.describe(STDERR_TAIL_BYTES);
        if !finished.status.success() {
            let how = process::describe_status(finished.status);
            let code = if finished.status.code().is_some() {
                "exec_failed"
            } else {
                "exec_killed"
            };
            return Err(StepError::retryable(format!(
                "{name:?} {how} after {}{stderr}",
                humantime::format_duration(round_ms(finished.elapsed))
            ))
            .with_code(code));
        }
        parse_stdout(name, &finished.stdout)
    }
}

fn round_ms(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// The step's output: stdout as one JSON value, `null` when empty.
fn parse_stdout(name: &str, stdout: &[u8]) -> Result<Value, StepError> {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(stdout).map_err(|err| {
        let text = String::from_utf8_lossy(stdout);
        let mut start: String = text.trim().chars().take(STDOUT_SNIPPET_CHARS).collect();
        if text.trim().chars().count() > STDOUT_SNIPPET_CHARS {
            start.push_str("...");
        }
        StepError::permanent(format!(
            "{name:?} succeeded but its stdout is not JSON ({err}); it starts: {start:?}"
        ))
        .with_code("exec_output_not_json")
    })
}

#[cfg(test)]
mod tests;
