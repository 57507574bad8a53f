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
    /// With `--auth tokens`: the API runs with authentication on and this
    /// secret installed as its bootstrap admin token.
    pub bootstrap_token: Option<&'a str>,
}

pub fn spawn(name: &str, roles: &str, env: &Env<'_>) -> anyhow::Result<Role> {
    let exe = std::env::current_exe().context("locating the fulfil binary")?;
    let child = Command::new(exe)
        .args(["serve", "--roles", roles])
        .env(
            "FULFIL_AUTH",
            if env.bootstrap_token.is_some() {
                "tokens"
            } else {
                "none"
            },
        )
        .env(
            "FULFIL_BOOTSTRAP_TOKEN",
            env.bootstrap_token.unwrap_or_default(),
        )
        .env("DATABASE_URL", env.database_url)
        .env("NATS_URL", env.nats_url)
        .env("FULFIL_NATS_PREFIX", env.prefix)
        .env("FULFIL_HTTP_ADDR", env.http_addr)
        // Any free port: benches start several API processes at once.
        .env("FULFIL_GRPC_ADDR", "127.0.0.1:0")
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

/// The command name and CPU time (user + system, seconds) in a
/// `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Option<(&str, f64)> {
    let (head, after) = stat.rsplit_once(')')?;
    let (_, comm) = head.split_once('(')?;
    // utime and stime are the 14th and 15th fields of the whole line, the
    // 12th and 13th after the parenthesised command name.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    Some((comm, (ticks(11)? + ticks(12)?) / TICKS_PER_SECOND))
}

/// CPU seconds used so far by every live process named `comm` (all of
/// Postgres's backends, say). A process that exits takes its time with it,
/// so this is a floor; the services' own long-lived processes and the
/// Fulfil processes' pooled connections do the work that matters here.
pub fn cpu_of_processes_named(comm: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| parse_stat(&stat).and_then(|(name, cpu)| (name == comm).then_some(cpu)))
        .sum()
}

/// Reads CPU time (user + system) and peak RSS (VmHWM) of a live process.
pub fn figures(role: &Role) -> anyhow::Result<ProcessFigures> {
    let pid = role.child.id().context("the process has exited")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let cpu_s = parse_stat(&stat).map(|(_, cpu)| cpu).unwrap_or(0.0);
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

#[cfg(test)]
mod tests {
    use super::parse_stat;

    #[test]
    fn stat_lines_give_the_command_and_its_cpu_seconds() {
        let line =
            "4242 (postgres) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 25 0 0 20 0 1 0 99 0 0";
        assert_eq!(parse_stat(line), Some(("postgres", 1.75)));
        // A command name may itself hold spaces and parentheses.
        let odd = "7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0";
        assert_eq!(parse_stat(odd), Some(("a (b) c", 0.07)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
