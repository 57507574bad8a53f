//! The web console end to end: `console/e2e/run.mjs` drives Debian's
//! Chromium with `playwright-core` against this build's `fulfil serve`
//! (tokens on) over the real Postgres and NATS, through every page and the
//! scenarios of docs/console.md (file through the generated form and watch
//! the graph go green, retry a compensated run from its failed step,
//! approve, replay a dead letter, filter the runs, a 2,000-step run).
//! Screenshots land in `target/console-e2e/`.
//!
//! Needs `node`, `/usr/bin/chromium` and `console/e2e/node_modules`:
//! `bash .ci/console-deps` installs them (`.ci/test` runs it first). A
//! machine without them fails here with that command, never skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The harness bounds each scenario; this bounds the whole, in case the
/// harness itself hangs.
const WHOLE_RUN: Duration = Duration::from_secs(15 * 60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

#[test]
fn the_console_works_in_a_real_browser() -> anyhow::Result<()> {
    let root = repo_root();
    let e2e = root.join("console/e2e");
    let missing: Vec<String> = [
        (
            Command::new("node").arg("--version").output().is_err(),
            "node (Node.js 20+)".to_string(),
        ),
        (
            !chromium().exists(),
            format!("Chromium at {}", chromium().display()),
        ),
        (
            !e2e.join("node_modules/playwright-core").exists(),
            "console/e2e/node_modules (npm ci)".to_string(),
        ),
    ]
    .into_iter()
    .filter_map(|(absent, what)| absent.then_some(what))
    .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "the console's browser tests need {}: run `bash .ci/console-deps` from the repository root",
        missing.join(", ")
    );

    let artifacts = root.join("target/console-e2e");
    std::fs::create_dir_all(&artifacts)?;
    // The harness's lines go to a file and are printed after it ends, so
    // they show with the failure (libtest shows a failed test's output).
    let log_path = artifacts.join("run.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = Command::new("node")
        .arg(e2e.join("run.mjs"))
        .current_dir(&root)
        .env("FULFIL_BIN", env!("CARGO_BIN_EXE_fulfil"))
        .env("E2E_ARTIFACTS", &artifacts)
        .env("CHROMIUM", chromium())
        // The console under test is the one built into the binary.
        .env_remove("FULFIL_CONSOLE_DIR")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > WHOLE_RUN {
            let _ = child.kill();
            let _ = child.wait();
            println!("{}", std::fs::read_to_string(&log_path).unwrap_or_default());
            anyhow::bail!("the console's browser tests ran past {WHOLE_RUN:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("{}", std::fs::read_to_string(&log_path).unwrap_or_default());
    anyhow::ensure!(
        status.success(),
        "the console's browser tests failed ({status}); the log above names the scenario, \
         screenshots and the server log are in {}",
        artifacts.display()
    );
    Ok(())
}
