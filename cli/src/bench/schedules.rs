//! `fulfil bench --scenario schedules`: `--schedules` Schedules (default
//! 10,000) all due in the same minute, decided by two engine processes.
//!
//! Schedule `i` ticks every minute at second `i % --spread` (`--spread 60`,
//! the default, spreads them over the minute; `--spread 1` makes them all
//! due at the same second, the worst case). They file a one-step `noop`
//! Promise with overlap `allow`, through one `api,engine` process and one
//! `engine` process. Once every schedule is applied, the bench takes the
//! next whole minute and reads its ticks from the ledger: lateness is
//! `fired_at - nominal_at` (the deciding transaction's clock), a schedule
//! with no tick in the minute is missing, and duplicates are idempotency
//! keys held by more than one request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use fulfil_engine::db;
use serde::Serialize;
use uuid::Uuid;

use super::BenchArgs;
use super::drive::SERVICES;
use super::procs::{self, ProcessFigures, Role};
use super::report::{Percentiles, ServiceCpu};

const PROMISE: &str = "bench";

const PROMISE_YAML: &str = "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: { name: bench, version: \"1\" }\nspec:\n  workflow:\n    steps:\n      - { id: tick, uses: noop }\n";

/// PUTs of schedules in flight at once while setting up.
const APPLY_CONCURRENCY: usize = 32;

#[derive(Debug, Clone, Serialize)]
pub struct SchedulesReport {
    pub scenario: &'static str,
    pub schedules: usize,
    /// Seconds of the minute the ticks are spread over.
    pub spread_s: u32,
    pub engines: usize,
    /// The measured minute's first instant.
    pub minute: DateTime<Utc>,
    /// Ticks of the minute in the ledger, and of them filed.
    pub ticks: usize,
    pub filed: usize,
    /// Schedules without a tick in the minute (must be 0).
    pub missing: usize,
    /// Idempotency keys held by more than one request (must be 0).
    pub duplicates: i64,
    /// `fired_at - nominal_at` of the minute's ticks.
    pub late_ms: Percentiles,
    /// Applying every schedule through the API.
    pub apply_s: f64,
    pub processes: Vec<ProcessFigures>,
    pub services: Vec<ServiceCpu>,
}

impl SchedulesReport {
    pub fn table(&self) -> String {
        let p = &self.late_ms;
        let mut out = format!(
            "scenario schedules: {} schedules due in the minute from {}, spread over {} s, {} engine processes\n",
            self.schedules,
            self.minute.to_rfc3339(),
            self.spread_s,
            self.engines
        );
        let rows = [
            (
                "fired - nominal ms p50/p99/max",
                format!("{:.1} / {:.1} / {:.1}", p.p50, p.p99, p.max),
            ),
            ("ticks in the minute", self.ticks.to_string()),
            ("ticks filed", self.filed.to_string()),
            ("missing ticks", self.missing.to_string()),
            ("duplicate requests", self.duplicates.to_string()),
            ("applying the schedules s", format!("{:.1}", self.apply_s)),
        ];
        for (name, value) in rows {
            out.push_str(&format!("  {name:<42} {value}\n"));
        }
        for process in &self.processes {
            out.push_str(&format!(
                "  {:<42} {:.1} s CPU, {:.0} MiB peak RSS\n",
                process.role, process.cpu_s, process.peak_rss_mib
            ));
        }
        for service in &self.services {
            out.push_str(&format!(
                "  {:<42} {:.1} s CPU\n",
                service.name, service.cpu_s
            ));
        }
        out
    }
}

/// Sets up a scratch database and prefix, measures, and removes both.
pub async fn run(args: &BenchArgs) -> anyhow::Result<SchedulesReport> {
    anyhow::ensure!(args.schedules > 0, "--schedules must be at least 1");
    anyhow::ensure!(
        (1..=60).contains(&args.spread),
        "--spread must be 1 to 60 seconds"
    );
    let suffix = Uuid::now_v7().simple().to_string();
    let suffix = &suffix[suffix.len() - 12..];
    let database = format!("fulfil_bench_{suffix}");
    let database_url = db::with_database(&args.database_url, &database);
    let prefix = format!("bench{suffix}");
    db::ensure_database(&database_url)
        .await
        .context("creating the scratch database")?;
    let result = measure(args, &database_url, &prefix).await;
    if let Err(e) = db::drop_database(&args.database_url, &database).await {
        eprintln!("warning: could not drop {database}: {e}");
    }
    if let Ok(nats) = async_nats::connect(&args.nats_url).await {
        let js = async_nats::jetstream::new(nats);
        if let Ok(names) = fulfil_bus::NatsNames::new(prefix.clone()) {
            fulfil_bus::streams::delete_streams(&js, &names).await;
        }
    }
    result
}

async fn measure(
    args: &BenchArgs,
    database_url: &str,
    prefix: &str,
) -> anyhow::Result<SchedulesReport> {
    let pool = db::connect(database_url, 2).await?;
    db::migrate(&pool).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let http_addr = format!("127.0.0.1:{port}");
    let api = format!("http://{http_addr}");
    let env = procs::Env {
        database_url,
        nats_url: &args.nats_url,
        prefix,
        http_addr: &http_addr,
        worker_concurrency: args.worker_concurrency,
        bootstrap_token: None,
    };
    let mut roles = vec![
        procs::spawn("api+engine", "api,engine", &env)?,
        procs::spawn("engine", "engine", &env)?,
    ];
    let outcome = drive(args, &pool, &api, &mut roles).await;
    for role in &mut roles {
        procs::stop(role).await;
    }
    pool.close().await;
    outcome
}

async fn drive(
    args: &BenchArgs,
    pool: &sqlx::PgPool,
    api: &str,
    roles: &mut [Role],
) -> anyhow::Result<SchedulesReport> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(APPLY_CONCURRENCY)
        .build()?;
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{api}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        for role in roles.iter_mut() {
            if let Some(status) = role.child.try_wait()? {
                bail!(
                    "the {} process exited with {status} while starting",
                    role.name
                );
            }
        }
        if Instant::now() > ready_by {
            bail!("the API at {api} was not ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let applied = http
        .put(format!("{api}/v1/promises/{PROMISE}"))
        .body(PROMISE_YAML)
        .send()
        .await?;
    if !applied.status().is_success() {
        bail!("the bench Promise was refused: {}", applied.text().await?);
    }

    let started = Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(APPLY_CONCURRENCY));
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..args.schedules {
        let permit = slots.clone().acquire_owned().await?;
        let (http, api, spread) = (http.clone(), api.to_string(), args.spread);
        puts.spawn(async move {
            let _permit = permit;
            let name = format!("tick-{i:05}");
            let body = format!(
                "apiVersion: fulfil.dev/v1\nkind: Schedule\nmetadata: {{ name: {name} }}\nspec:\n  promise: {PROMISE}\n  cron: \"{} * * * * *\"\n  overlap: allow\n",
                i % spread as usize
            );
            let answer = http
                .put(format!("{api}/v1/schedules/{name}"))
                .body(body)
                .send()
                .await?;
            if !answer.status().is_success() {
                bail!("schedule {name} was refused: {}", answer.text().await?);
            }
            anyhow::Ok(())
        });
        while let Some(done) = puts.try_join_next() {
            done??;
        }
    }
    while let Some(done) = puts.join_next().await {
        done??;
    }
    let apply_s = started.elapsed().as_secs_f64();

    // The first whole minute starting at least 2 s from now: every
    // schedule's next tick is in it, decided by engines already running.
    let minute = (Utc::now() + TimeDelta::seconds(62))
        .duration_trunc(TimeDelta::minutes(1))
        .context("truncating to the minute")?;
    let end = minute + TimeDelta::minutes(1);
    eprintln!(
        "{} schedules applied in {apply_s:.1} s; measuring the minute from {minute}",
        args.schedules
    );
    let before: Vec<f64> = roles
        .iter()
        .filter_map(|r| procs::figures(r).ok())
        .map(|f| f.cpu_s)
        .collect();
    let services_before = SERVICES.map(procs::cpu_of_processes_named);
    // Until the minute is over and its last ticks had time to be decided.
    let settle = (end + TimeDelta::seconds(10) - Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    if settle > args.timeout {
        bail!("the measured minute ends after --timeout");
    }
    tokio::time::sleep(settle).await;
    let services_after = SERVICES.map(procs::cpu_of_processes_named);
    let mut processes = Vec::new();
    for (role, before) in roles.iter().zip(before) {
        let mut figures = procs::figures(role)?;
        figures.cpu_s -= before;
        processes.push(figures);
    }

    let ticks: Vec<(String, DateTime<Utc>, DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT schedule, nominal_at, fired_at, outcome FROM fulfil.schedule_ticks
         WHERE nominal_at >= $1 AND nominal_at < $2",
    )
    .bind(minute)
    .bind(end)
    .fetch_all(pool)
    .await?;
    let mut scheduled: Vec<&str> = ticks.iter().map(|t| t.0.as_str()).collect();
    scheduled.sort_unstable();
    scheduled.dedup();
    let late: Vec<f64> = ticks
        .iter()
        .map(|(_, nominal, fired, _)| (*fired - *nominal).as_seconds_f64() * 1000.0)
        .collect();
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT idempotency_key FROM fulfil.requests
                               WHERE created_by LIKE 'schedule:%'
                               GROUP BY idempotency_key HAVING count(*) > 1) d",
    )
    .fetch_one(pool)
    .await?;
    Ok(SchedulesReport {
        scenario: "schedules",
        schedules: args.schedules,
        spread_s: args.spread,
        engines: roles.len(),
        minute,
        ticks: ticks.len(),
        filed: ticks.iter().filter(|t| t.3 == "filed").count(),
        missing: args.schedules.saturating_sub(scheduled.len()),
        duplicates,
        late_ms: Percentiles::of(&late),
        apply_s,
        processes,
        services: SERVICES
            .iter()
            .zip(services_before.iter().zip(services_after))
            .map(|(name, (before, after))| ServiceCpu {
                name: name.to_string(),
                cpu_s: after - before,
                cpu_ms_per_step: 0.0,
            })
            .collect(),
    })
}
