//! The Backstage integration end to end: `npm test` in deploy/backstage
//! runs the `fulfil:request:create` action with the scaffolder's own test
//! utilities, and `fulfil backstage export` with the catalog model's
//! validators, each against this build's `fulfil serve` (tokens on) over
//! the real Postgres and NATS (deploy/backstage/test/harness.ts).
//!
//! Needs `node`, `npm` and `deploy/backstage/node_modules`: `bash
//! .ci/backstage-deps` installs them (`.ci/test` runs it first). A machine
//! without them fails here with that command, never skips.

use std::process::Command;
use std::time::Duration;

use fulfil_integration_tests::node::{repo_root, run_logged};

/// jest bounds each test; this bounds the whole, in case jest hangs.
const WHOLE_RUN: Duration = Duration::from_secs(10 * 60);

#[test]
fn the_backstage_action_and_export_work_against_a_real_fulfil() -> anyhow::Result<()> {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let package = root.join("deploy/backstage");
    let missing: Vec<&str> = [
        (
            Command::new("npm").arg("--version").output().is_err(),
            "npm (Node.js 20+)",
        ),
        (
            !package
                .join("node_modules/@backstage/plugin-scaffolder-node-test-utils")
                .exists(),
            "deploy/backstage/node_modules (npm ci)",
        ),
    ]
    .into_iter()
    .filter_map(|(absent, what)| absent.then_some(what))
    .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "the Backstage tests need {}: run `bash .ci/backstage-deps` from the repository root",
        missing.join(", ")
    );

    let artifacts = root.join("target/backstage-tests");
    std::fs::create_dir_all(&artifacts)?;
    let mut command = Command::new("npm");
    command
        .args(["test", "--silent"])
        .current_dir(&package)
        .env("FULFIL_BIN", env!("CARGO_BIN_EXE_fulfil"))
        .env("BACKSTAGE_TEST_ARTIFACTS", &artifacts)
        .env("CI", "true");
    let (status, output) = run_logged(command, &artifacts.join("npm-test.log"), WHOLE_RUN)?;
    anyhow::ensure!(
        status.success(),
        "the Backstage tests failed ({status}); jest's report is above, fulfil's logs are in {}",
        artifacts.display()
    );
    // A run that found no test passes jest only with --passWithNoTests,
    // which the script does not give; still, say what ran.
    anyhow::ensure!(
        output.contains("Tests:") && !output.contains("Tests:       0 total"),
        "jest ran no test:\n{output}"
    );
    Ok(())
}
