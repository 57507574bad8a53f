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

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fulfil_integration_tests::node::{repo_root, run_logged};

/// The harness bounds each scenario; this bounds the whole, in case the
/// harness itself hangs.
const WHOLE_RUN: Duration = Duration::from_secs(15 * 60);

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

#[test]
fn the_console_works_in_a_real_browser() -> anyhow::Result<()> {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
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
    let mut command = Command::new("node");
    command
        .arg(e2e.join("run.mjs"))
        .current_dir(&root)
        .env("FULFIL_BIN", env!("CARGO_BIN_EXE_fulfil"))
        .env("E2E_ARTIFACTS", &artifacts)
        .env("CHROMIUM", chromium())
        // The console under test is the one built into the binary.
        .env_remove("FULFIL_CONSOLE_DIR");
    let (status, _) = run_logged(command, &artifacts.join("run.log"), WHOLE_RUN)?;
    anyhow::ensure!(
        status.success(),
        "the console's browser tests failed ({status}); the log above names the scenario, \
         screenshots and the server log are in {}",
        artifacts.display()
    );
    Ok(())
}
