//! Running one child process for a built-in (`exec`, `git.*`), so that
//! nothing it starts outlives the step.
//!
//! Contract:
//!
//! * The child is the leader of its **own process group**; whatever it
//!   starts (a shell's pipeline, terraform's providers) joins that group
//!   unless it leaves on purpose (`setsid`).
//! * The group is sent `SIGKILL` when the child exits (leftover background
//!   processes), at the deadline, when stdout grows past its limit, and
//!   when the future running it is dropped (the runtime's own deadline, a
//!   worker abandoning its tasks at shutdown). The child itself is always
//!   reaped: waited for here, or by tokio's background reaper when the
//!   future was dropped; its orphaned descendants go to init.
//! * Memory is bounded: stdout up to [`Limits::max_stdout`] (beyond, the
//!   group is killed and the run fails), stderr keeps only its last
//!   [`Limits::stderr_tail`] bytes, however much the child writes.
//! * stdin gets the given bytes, then end of file; a child that does not
//!   read them is not an error.

use std::{io, os::unix::process::ExitStatusExt as _, process::ExitStatus, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    process::Command,
    time::Instant,
};
use tokio_util::task::AbortOnDropHandle;

use crate::handler::TaskContext;

/// How long the pipes may stay open once the group is dead: only a process
/// that left the group (and so escaped the kill) can hold them longer.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// Bounds of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most stdout bytes kept; more fails the run.
    pub max_stdout: usize,
    /// Bytes kept from the end of stderr.
    pub stderr_tail: usize,
}

/// A child that ran to its exit.
#[derive(Debug)]
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: StderrTail,
    pub elapsed: Duration,
}

/// The end of a child's stderr.
#[derive(Debug, Default, Clone)]
pub(crate) struct StderrTail {
    /// The last bytes, as text (invalid UTF-8 replaced).
    pub text: String,
    /// Whether earlier bytes were dropped.
    pub truncated: bool,
}

impl StderrTail {
    /// `: stderr (last N bytes): ...`, or nothing when stderr was empty.
    pub fn describe(&self, limit: usize) -> String {
        let text = self.text.trim();
        if text.is_empty() {
            String::new()
        } else if self.truncated {
            format!("; stderr (last {limit} bytes): {text}")
        } else {
            format!("; stderr: {text}")
        }
    }
}

/// Why a run did not produce a [`Finished`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// The program could not be started (missing, not executable).
    #[error("cannot start it: {0}")]
    Spawn(#[source] io::Error),
    /// Still running at the deadline: its group was killed.
    #[error("still running after {}: its process group was killed", humantime::format_duration(*.after))]
    Deadline { after: Duration, stderr: StderrTail },
    /// It wrote more than [`Limits::max_stdout`] to stdout: its group was
    /// killed.
    #[error("it wrote more than {limit} bytes to stdout: its process group was killed")]
    StdoutTooLarge { limit: usize, stderr: StderrTail },
    /// Waiting for it or reading its output failed.
    #[error("lost track of it: {0}")]
    Io(#[source] io::Error),
}

/// Kills a process group when dropped, unless it was killed already.
struct GroupKiller {
    group: Option<rustix::process::Pid>,
}

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(group) = self.group.take() {
            // ESRCH: every member has exited already, nothing to do.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `command` (program, arguments, environment and directory set) in its
/// own process group with `stdin` as its input, until it exits or
/// `deadline`. While it runs, `heartbeat` (when the step has a heartbeat
/// timeout) is told the step is alive.
pub(crate) async fn run(
    mut command: Command,
    stdin: Vec<u8>,
    limits: Limits,
    deadline: Instant,
    heartbeat: Option<&TaskContext>,
) -> Result<Finished, RunError> {
    let started = Instant::now();
    command
        .process_group(0)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(RunError::Spawn)?;
    // The group's id is the leader's pid: `process_group(0)`.
    let mut killer = GroupKiller {
        group: child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw),
    };
    let (Some(mut input), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(RunError::Io(io::Error::other(
            "the child's pipes are missing",
        )));
    };
    let _writer = AbortOnDropHandle::new(tokio::spawn(async move {
        // A child that exits without reading its input closes the pipe:
        // not an error of the run.
        let _ = input.write_all(&stdin).await;
        let _ = input.shutdown().await;
    }));
    let mut out = AbortOnDropHandle::new(tokio::spawn(read_bounded(stdout, limits.max_stdout)));
    let mut err = AbortOnDropHandle::new(tokio::spawn(read_tail(stderr, limits.stderr_tail)));

    let beat_every = heartbeat
        .and_then(|ctx| ctx.heartbeat_timeout)
        .map(|timeout| (timeout / 3).max(Duration::from_millis(100)));
    let mut beats = tokio::time::interval(beat_every.unwrap_or(Duration::from_secs(3600)));
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let expiry = tokio::time::sleep_until(deadline);
    tokio::pin!(expiry);

    let mut stdout_read: Option<Vec<u8>> = None;
    // Ends at the child's exit or the deadline, whichever is first.
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(RunError::Io)?,
            read = &mut out, if stdout_read.is_none() => match read {
                Ok(Some(bytes)) => stdout_read = Some(bytes),
                Ok(None) => {
                    killer.kill();
                    let _ = child.wait().await;
                    let stderr = finish_tail(&mut err).await;
                    return Err(RunError::StdoutTooLarge { limit: limits.max_stdout, stderr });
                }
                Err(join) => return Err(RunError::Io(io::Error::other(join))),
            },
            () = &mut expiry => {
                killer.kill();
                let _ = child.wait().await;
                let stderr = finish_tail(&mut err).await;
                return Err(RunError::Deadline { after: started.elapsed(), stderr });
            }
            _ = beats.tick(), if beat_every.is_some() => {
                if let Some(ctx) = heartbeat {
                    ctx.heartbeat(None);
                }
            }
        }
    };
    // Background processes it left behind go with it; once they are gone
    // the pipes reach end of file.
    killer.kill();
    let stdout = match stdout_read {
        Some(bytes) => bytes,
        None => match tokio::time::timeout(PIPE_GRACE, &mut out).await {
            Ok(Ok(Some(bytes))) => bytes,
            Ok(Ok(None)) => {
                let stderr = finish_tail(&mut err).await;
                return Err(RunError::StdoutTooLarge {
                    limit: limits.max_stdout,
                    stderr,
                });
            }
            Ok(Err(join)) => return Err(RunError::Io(io::Error::other(join))),
            Err(_) => {
                return Err(RunError::Io(io::Error::other(
                    "a process it started outside its process group still holds stdout open",
                )));
            }
        },
    };
    let stderr = finish_tail(&mut err).await;
    Ok(Finished {
        status,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    })
}

/// `exited with code 3`, or `was killed by signal 9`.
pub(crate) fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// All of `pipe`, or `None` once it holds more than `limit` bytes (reading
/// stops there).
async fn read_bounded(mut pipe: impl AsyncRead + Unpin, limit: usize) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return Some(bytes),
            Ok(n) => {
                if bytes.len().saturating_add(n) > limit {
                    return None;
                }
                bytes.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// The last `limit` bytes of `pipe`, read to its end.
async fn read_tail(mut pipe: impl AsyncRead + Unpin, limit: usize) -> StderrTail {
    let mut kept: Vec<u8> = Vec::new();
    let mut truncated = false;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&chunk[..n]);
                // Trimmed in batches, so a chatty child costs amortized
                // O(1) per byte.
                if kept.len() > limit.saturating_mul(2) {
                    kept.drain(..kept.len() - limit);
                    truncated = true;
                }
            }
        }
    }
    if kept.len() > limit {
        kept.drain(..kept.len() - limit);
        truncated = true;
    }
    StderrTail {
        text: String::from_utf8_lossy(&kept).into_owned(),
        truncated,
    }
}

/// The stderr reader's result, once the group is dead (bounded wait).
async fn finish_tail(err: &mut AbortOnDropHandle<StderrTail>) -> StderrTail {
    match tokio::time::timeout(PIPE_GRACE, err).await {
        Ok(Ok(tail)) => tail,
        _ => StderrTail::default(),
    }
}
