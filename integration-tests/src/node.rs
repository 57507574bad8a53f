//! Node.js test suites run from `cargo test` (the console's browser tests,
//! the Backstage action's jest tests): the command's output goes to a log
//! file, printed when it ends, so it shows with a failure (libtest shows a
//! failed test's output), and the whole run is bounded in time in case the
//! suite itself hangs.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The repository's root (the parent of the crate whose test runs).
pub fn repo_root(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs `command` with stdout and stderr into `log`, for at most `limit`
/// (then it is killed and this fails); prints what it wrote and returns
/// its exit status with that output.
pub fn run_logged(
    mut command: Command,
    log: &Path,
    limit: Duration,
) -> anyhow::Result<(ExitStatus, String)> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = command
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            println!("{}", std::fs::read_to_string(log).unwrap_or_default());
            bail!("{command:?} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = std::fs::read_to_string(log).unwrap_or_default();
    println!("{output}");
    Ok((status, output))
}
