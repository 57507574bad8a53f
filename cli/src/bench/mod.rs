//! `fulfil bench`: drives the real stack and reports what it measured.
//!
//! The bench creates a scratch database on the server named by
//! `--database-url` and a private NATS prefix, starts Fulfil as child
//! processes of this binary (`--topology split`: API + engine in one
//! process, workers in another; `single`: all roles in one), applies a
//! generated Promise of no-op steps, files workflows through the HTTP API at
//! a fixed concurrency or offered rate, and waits for each run's completion
//! event. Figures come from the system's own records: request→done latency
//! is `runs.finished_at - requests.created_at` in Postgres, transactions are
//! `pg_stat_database.xact_commit`, CPU and peak memory come from `/proc` of
//! each child. Everything is removed afterwards.

mod drive;
mod events;
mod procs;
mod queries;
mod report;
mod schedules;
mod waits;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// provision -> configure -> alert
    ThreeStep,
    /// N sequential steps (--steps, default 40)
    Chain,
    /// 1 -> N parallel -> 1 (--steps is N, default 10)
    Fanout,
    /// CloudEvents published by a plain NATS client (--rate per second,
    /// default 1000; --workflows events) into the trigger of a 3-step
    /// Promise; --resend of them published twice
    Events,
    /// --waiting runs parked on a correlated wait.event (default 100000),
    /// then events for --wake of them (default 2000) at --rate per second
    /// (default 200): engine RSS and event → step.succeeded latency
    Waits,
    /// --schedules Schedules (default 10,000) due in the same minute,
    /// spread over --spread seconds, decided by two engine processes
    Schedules,
    /// --watchers SSE watchers (default 1000) of one run of --steps noop
    /// steps (default 20) after a 3 s sleep (they join during it): events
    /// delivered, the watch hub's reads per event, latency
    Watch,
    /// Operator queries over `--runs` seeded runs (see `queries.rs`).
    Queries,
    /// provision -> configure -> alert where configure is a promise step
    /// filing a one-step child request: three-step's figures plus the cost
    /// of a child request
    Compound,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Topology {
    /// API and engine in one process, workers in another.
    Split,
    /// Every role in one process.
    Single,
}

/// `fulfil bench --auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchAuth {
    Tokens,
    None,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = Scenario::ThreeStep)]
    pub scenario: Scenario,
    /// `tokens`: the bench's API runs with authentication on and the
    /// driver sends a bearer token (A/B the token check); `none`: off.
    #[arg(long, value_enum, default_value_t = BenchAuth::None)]
    pub auth: BenchAuth,
    /// Workflows to run.
    #[arg(long, default_value_t = 1000)]
    pub workflows: usize,
    /// Workflows in flight at once (closed loop). Ignored with --rate.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Offered load in workflows per second (open loop) instead of --concurrency.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Chain length, or fan-out width.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Bytes of payload each step carries (0: `noop` steps).
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    #[arg(long, value_enum, default_value_t = Topology::Split)]
    pub topology: Topology,
    /// Concurrency of the worker process.
    #[arg(long, default_value_t = 64)]
    pub worker_concurrency: usize,
    /// Workflows run (and discarded) before measuring, to warm caches.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Give up waiting for completions after this long.
    #[arg(long, default_value = "10m", value_parser = crate::humantime_duration)]
    pub timeout: Duration,
    /// A server on which the bench creates and drops its own scratch database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// How long to let Postgres publish its statistics before reading
    /// transaction counts: Postgres 15 holds an idle backend's counts for
    /// up to 10 s, so less undercounts them (`0s` for a quick smoke run).
    #[arg(long, default_value = "10500ms", value_parser = crate::humantime_duration)]
    pub stats_settle: Duration,
    /// Share of events published a second time (`events` scenario); each
    /// must file nothing new.
    #[arg(long, default_value_t = 0.1)]
    pub resend: f64,
    /// Runs parked on a wait at once (`waits` scenario).
    #[arg(long, default_value_t = 100_000)]
    pub waiting: usize,
    /// Of those, how many an event wakes (`waits` scenario).
    #[arg(long, default_value_t = 2000)]
    pub wake: usize,
    /// Schedules applied (`schedules` scenario).
    #[arg(long, default_value_t = 10_000)]
    pub schedules: usize,
    /// Seconds of the minute the schedules' ticks are spread over
    /// (`schedules` scenario): 60 spreads them over the whole minute, 1
    /// makes them all due at the same second.
    #[arg(long, default_value_t = 60)]
    pub spread: u32,
    /// SSE watchers of one run (`watch` scenario).
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// `--scenario queries`: runs seeded before the queries are timed.
    #[arg(long, default_value_t = 100_000)]
    pub runs: usize,
    /// `--scenario queries`: times each query shape is measured.
    #[arg(long, default_value_t = 50)]
    pub samples: usize,
}

impl BenchArgs {
    /// Steps per workflow, and steps on its critical path.
    pub fn shape(&self) -> (usize, usize) {
        match self.scenario {
            Scenario::ThreeStep | Scenario::Events => (3, 3),
            // The child's one step runs on the parent's critical path.
            Scenario::Compound => (4, 4),
            Scenario::Waits | Scenario::Schedules | Scenario::Queries => (1, 1),
            Scenario::Watch => {
                let n = self.steps.unwrap_or(20).max(1) + 1;
                (n, n)
            }
            Scenario::Chain => {
                let n = self.steps.unwrap_or(40).max(1);
                (n, n)
            }
            Scenario::Fanout => {
                let n = self.steps.unwrap_or(10).max(1);
                (n + 2, 3)
            }
        }
    }
}

/// Runs the bench and prints its report; `--json` also writes it.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.workflows > 0, "--workflows must be at least 1");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    if let Some(rate) = args.rate {
        anyhow::ensure!(
            rate > 0.0 && rate.is_finite(),
            "--rate must be a positive number"
        );
    }
    anyhow::ensure!(
        (0.0..1.0).contains(&args.resend),
        "--resend must be a share from 0 to below 1"
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.scenario == Scenario::Watch {
        let report = watch::run(&args).await?;
        print_report(&args, &report.table(), &report)?;
        anyhow::ensure!(
            report.complete_watchers == report.watchers,
            "{} of {} watchers missed events",
            report.watchers - report.complete_watchers,
            report.watchers
        );
        return Ok(());
    }
    if args.scenario == Scenario::Queries {
        let report = queries::run(&args).await?;
        print_report(&args, &report.table(), &report)?;
        let (list, run) = report.worst();
        eprintln!(
            "slowest list p99 {list:.1} ms (target 50), run read p99 {run:.1} ms (target 100)"
        );
        return Ok(());
    }
    if args.scenario == Scenario::Schedules {
        let report = schedules::run(&args).await?;
        print_report(&args, &report.table(), &report)?;
        anyhow::ensure!(report.missing == 0, "{} ticks are missing", report.missing);
        anyhow::ensure!(
            report.duplicates == 0,
            "{} duplicate requests were filed",
            report.duplicates
        );
        return Ok(());
    }
    let (table, json, failed, duplicates) = match drive::bench(&args).await? {
        drive::Measured::Workflows(report) => (
            report.table(),
            serde_json::to_vec_pretty(&report)?,
            report.failed,
            0,
        ),
        drive::Measured::Events(report) => (
            report.table(),
            serde_json::to_vec_pretty(&report)?,
            report.failed,
            report.duplicates_filed,
        ),
        drive::Measured::Waits(report) => (
            report.table(),
            serde_json::to_vec_pretty(&report)?,
            report.not_woken,
            0,
        ),
    };
    println!("{table}");
    if let Some(path) = &args.json {
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} workflows did not succeed",
        args.workflows
    );
    anyhow::ensure!(
        duplicates == 0,
        "{duplicates} duplicate requests were filed"
    );
    Ok(())
}

/// Prints a scenario's table and writes its JSON where `--json` asks.
fn print_report(
    args: &BenchArgs,
    table: &str,
    report: &impl serde::Serialize,
) -> anyhow::Result<()> {
    println!("{table}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
