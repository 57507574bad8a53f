//! The Fulfil processes under test, and their CPU and memory from `/proc`.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::process::{Child, Command};

/// A child `fulfil serve` process.
pub struct Role {
    pub name: String,
    pub child: Child,
}

/// CPU time and peak memory of one process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessFigures {
    pub role: String,
    pub cpu_s: f64,
    pub peak_rss_mib: f64,
}

pub struct Env<'a> {
    pub database_url: &'a str,
    pub nats_url: &'a str,
    pub prefix: &'a str,
    pub http_addr: &'a str,
    pub worker_concurrency: usize,
}

pub fn spawn(name: &str, roles: &str, env: &Env<'_>) -> anyhow::Result<Role> {
    let exe = std::env::current_exe().context("locating the fulfil binary")?;
    let child = Command::new(exe)
        .args(["serve", "--roles", roles])
        .env("DATABASE_URL", env.database_url)
        .env("NATS_URL", env.nats_url)
        .env("FULFIL_NATS_PREFIX", env.prefix)
        .env("FULFIL_HTTP_ADDR", env.http_addr)
        .env(
            "FULFIL_WORKER_CONCURRENCY",
            env.worker_concurrency.to_string(),
        )
        .env(
            "RUST_LOG",
            std::env::var("FULFIL_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting the {name} process"))?;
    Ok(Role {
        name: name.to_string(),
        child,
    })
}

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads CPU time (user + system) and peak RSS (VmHWM) of a live process.
pub fn figures(role: &Role) -> anyhow::Result<ProcessFigures> {
    let pid = role.child.id().context("the process has exited")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu_s = (ticks(11) + ticks(12)) / TICKS_PER_SECOND;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok(ProcessFigures {
        role: role.name.clone(),
        cpu_s,
        peak_rss_mib: peak_kib / 1024.0,
    })
}

/// Stops a process with SIGTERM, then SIGKILL if it lingers.
pub async fn stop(role: &mut Role) {
    if let Some(pid) = role.child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(10), role.child.wait())
        .await
        .is_err()
    {
        let _ = role.child.kill().await;
    }
}
