//! Setting up the stack, offering the load, collecting the figures.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fulfil_core::ids::{RequestId, RunId};
use fulfil_engine::db;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::procs::{self, ProcessFigures, Role};
use super::report::{self, Percentiles, PgWrites, Report, ServiceCpu, Stages, TableWrites};
use super::{BenchArgs, BenchAuth, Scenario, Topology};
use crate::client::retry_after;

const PROMISE: &str = "bench";
/// The Promise of `--scenario compound`'s child requests: one noop step.
const CHILD_PROMISE: &str = "bench-child";
const CHILD_PROMISE_YAML: &str = "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: { name: bench-child, version: \"1\" }\nspec:\n  api: { type: object }\n  workflow:\n    steps:\n      - { id: create, uses: noop }\n";

/// The services whose CPU the bench reports beside Fulfil's own processes,
/// by process name; only meaningful when they run on this machine.
pub(super) const SERVICES: [&str; 2] = ["postgres", "nats-server"];

/// The generated Promise of the scenario.
fn promise_yaml(args: &BenchArgs) -> String {
    let (uses, with) = if args.payload_bytes > 0 {
        ("echo", " with: { data: \"${{ params.data }}\" },")
    } else {
        ("noop", "")
    };
    let step = |id: &str, needs: &[String]| {
        let needs = if needs.is_empty() {
            String::new()
        } else {
            format!(" needs: [{}],", needs.join(", "))
        };
        format!("      - {{ id: {id}, uses: {uses},{with}{needs} }}\n")
    };
    let mut steps = String::new();
    match args.scenario {
        Scenario::ThreeStep
        | Scenario::Events
        | Scenario::Waits
        | Scenario::Schedules
        | Scenario::Watch
        | Scenario::Queries => {
            steps.push_str(&step("provision", &[]));
            steps.push_str(&step("configure", &["provision".into()]));
            steps.push_str(&step("alert", &["configure".into()]));
        }
        Scenario::Compound => {
            steps.push_str(&step("provision", &[]));
            steps.push_str(&format!(
                "      - {{ id: configure, uses: promise, needs: [provision], \
                 with: {{ promise: {CHILD_PROMISE} }} }}\n"
            ));
            steps.push_str(&step("alert", &["configure".into()]));
        }
        Scenario::Chain => {
            let n = args.shape().0;
            for i in 0..n {
                let needs: Vec<String> = if i == 0 {
                    vec![]
                } else {
                    vec![format!("s{:03}", i - 1)]
                };
                steps.push_str(&step(&format!("s{i:03}"), &needs));
            }
        }
        Scenario::Fanout => {
            let width = args.shape().0 - 2;
            steps.push_str(&step("split", &[]));
            let branches: Vec<String> = (0..width).map(|i| format!("b{i:03}")).collect();
            for b in &branches {
                steps.push_str(&step(b, &["split".into()]));
            }
            steps.push_str(&step("join", &branches));
        }
    }
    format!(
        "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: {{ name: {PROMISE}, version: \"1\" }}\nspec:\n  api: {{ type: object, properties: {{ data: {{ type: string }} }} }}\n  workflow:\n    steps:\n{steps}"
    )
}

/// Completion bookkeeping shared by the submitter and the event listener.
#[derive(Default)]
struct Tracker {
    /// Runs in flight, each holding a concurrency slot (closed loop).
    pending: HashMap<RunId, Option<OwnedSemaphorePermit>>,
    /// Completions seen before their submission was recorded.
    early: HashSet<RunId>,
    finished: usize,
    failed: usize,
}

struct Load {
    tracker: Mutex<Tracker>,
    changed: Notify,
}

impl Load {
    fn finished(&self) -> usize {
        self.tracker.lock().map(|t| t.finished).unwrap_or(0)
    }

    fn complete(&self, run: RunId, succeeded: bool) {
        if let Ok(mut t) = self.tracker.lock() {
            if t.pending.remove(&run).is_none() {
                t.early.insert(run);
            }
            t.finished += 1;
            if !succeeded {
                t.failed += 1;
            }
        }
        self.changed.notify_waiters();
    }

    fn submitted(&self, run: RunId, permit: Option<OwnedSemaphorePermit>) {
        if let Ok(mut t) = self.tracker.lock()
            && !t.early.remove(&run)
        {
            t.pending.insert(run, permit);
        }
    }
}

struct Submitted {
    request_id: RequestId,
    /// Round trip of the POST that was accepted.
    accept: Duration,
    /// Earlier POSTs of it that were turned away (503 with Retry-After).
    shed: usize,
}

/// Files `count` requests at the configured concurrency or rate and waits
/// until each has finished.
async fn offer(
    args: &BenchArgs,
    http: &reqwest::Client,
    api: &str,
    load: &Arc<Load>,
    count: usize,
    deadline: Instant,
) -> anyhow::Result<Vec<Submitted>> {
    let start_finished = load.finished();
    let body = json!({ "params": { "data": "x".repeat(args.payload_bytes) } });
    let url = format!("{api}/v1/promises/{PROMISE}/requests");
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let interval = args.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let started = Instant::now();
    for i in 0..count {
        let permit = match interval {
            Some(every) => {
                let due = started + every.mul_f64(i as f64);
                tokio::time::sleep_until(due.into()).await;
                None
            }
            None => Some(
                tokio::time::timeout_at(deadline.into(), slots.clone().acquire_owned())
                    .await
                    .context("timed out waiting for a free slot")??,
            ),
        };
        let (http, url, body, load) = (http.clone(), url.clone(), body.clone(), load.clone());
        tasks.spawn(async move {
            let mut shed = 0;
            loop {
                let sent = Instant::now();
                let response = http.post(&url).json(&body).send().await?;
                let accept = sent.elapsed();
                let status = response.status();
                // Turned away unstored: wait as told and file it again.
                if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    && let Some(wait) = retry_after(&response)
                    && Instant::now() + wait < deadline
                {
                    shed += 1;
                    tokio::time::sleep(wait).await;
                    continue;
                }
                let answer: Value = response.json().await?;
                if status.as_u16() != 202 {
                    bail!("request refused with {status}: {answer}");
                }
                let run_id: RunId = answer["run_id"].as_str().unwrap_or_default().parse()?;
                let request_id: RequestId =
                    answer["request_id"].as_str().unwrap_or_default().parse()?;
                load.submitted(run_id, permit);
                return anyhow::Ok(Submitted {
                    request_id,
                    accept,
                    shed,
                });
            }
        });
    }
    let mut submitted = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        submitted.push(joined??);
    }
    while load.finished() < start_finished + count {
        let notified = load.changed.notified();
        if load.finished() >= start_finished + count {
            break;
        }
        if tokio::time::timeout_at(deadline.into(), notified)
            .await
            .is_err()
        {
            bail!(
                "only {} of {count} workflows finished before the timeout",
                load.finished() - start_finished
            );
        }
    }
    Ok(submitted)
}

async fn xact_commits(pool: &sqlx::PgPool, database: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
            .bind(database)
            .fetch_one(pool)
            .await?,
    )
}

/// Waits until Postgres has published the statistics of finished work. A
/// busy backend flushes its counts about once a second, but one that went
/// idle holds them for up to 10 s (`PGSTAT_IDLE_INTERVAL`, Postgres 15):
/// read after `settle` (`--stats-settle`), then until two readings agree.
/// Reading sooner undercounted the events bench's transactions.
pub(super) async fn settled_xact_commits(
    pool: &sqlx::PgPool,
    database: &str,
    settle: Duration,
) -> anyhow::Result<i64> {
    tokio::time::sleep(settle).await;
    let mut last = xact_commits(pool, database).await?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let now = xact_commits(pool, database).await?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// Postgres's cumulative write counters for the scratch database: rows
/// written to each of Fulfil's tables, and the WAL position (cluster-wide:
/// nothing else writes while the bench runs).
async fn write_counters(pool: &sqlx::PgPool) -> anyhow::Result<WriteCounters> {
    let tables: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del
         FROM pg_stat_user_tables WHERE schemaname = 'fulfil'",
    )
    .fetch_all(pool)
    .await?;
    let wal_lsn: i64 =
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8")
            .fetch_one(pool)
            .await?;
    Ok(WriteCounters {
        tables: tables
            .into_iter()
            .map(|(name, ins, upd, hot, del)| (name, [ins, upd, hot, del]))
            .collect(),
        wal_lsn,
    })
}

struct WriteCounters {
    /// Rows inserted, updated, HOT-updated and deleted, by table.
    tables: HashMap<String, [i64; 4]>,
    wal_lsn: i64,
}

impl WriteCounters {
    /// What was written between `self` and `later`, per step.
    fn per_step(&self, later: &WriteCounters, steps: f64) -> PgWrites {
        let mut writes = PgWrites {
            wal_bytes: (later.wal_lsn - self.wal_lsn) as f64 / steps,
            ..PgWrites::default()
        };
        for (table, after) in &later.tables {
            let before = self.tables.get(table).copied().unwrap_or_default();
            let per = |i: usize| (after[i] - before[i]) as f64 / steps;
            let rows = TableWrites {
                inserted: per(0),
                updated: per(1),
                hot_updated: per(2),
                deleted: per(3),
            };
            if rows.inserted + rows.updated + rows.deleted == 0.0 {
                continue;
            }
            writes.rows_inserted += rows.inserted;
            writes.rows_updated += rows.updated;
            writes.rows_hot_updated += rows.hot_updated;
            writes.rows_deleted += rows.deleted;
            writes.tables.insert(table.clone(), rows);
        }
        writes
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// What a scenario measured.
pub enum Measured {
    Workflows(Box<Report>),
    Events(Box<super::events::EventsReport>),
    Waits(Box<super::waits::WaitsReport>),
}

pub async fn bench(args: &BenchArgs) -> anyhow::Result<Measured> {
    let suffix = Uuid::now_v7().simple().to_string();
    let suffix = &suffix[suffix.len() - 12..];
    let database = format!("fulfil_bench_{suffix}");
    let database_url = db::with_database(&args.database_url, &database);
    let prefix = format!("bench{suffix}");
    db::ensure_database(&database_url)
        .await
        .context("creating the scratch database")?;
    let result = bench_in(args, &database, &database_url, &prefix).await;
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

async fn bench_in(
    args: &BenchArgs,
    database: &str,
    database_url: &str,
    prefix: &str,
) -> anyhow::Result<Measured> {
    let pool = db::connect(database_url, 2).await?;
    db::migrate(&pool).await?;
    let http_addr = format!("127.0.0.1:{}", free_port()?);
    let api = format!("http://{http_addr}");
    // `--auth tokens`: a bootstrap admin token of the bench's own making,
    // sent by the driver on every call.
    let token = match args.auth {
        BenchAuth::Tokens => Some(
            fulfil_engine::tokens::TokenSecret::generate()
                .map_err(|e| anyhow::anyhow!("no randomness for the bench's token: {e}"))?,
        ),
        BenchAuth::None => None,
    };
    let env = procs::Env {
        bootstrap_token: token.as_ref().map(|t| t.expose()),
        database_url,
        nats_url: &args.nats_url,
        prefix,
        http_addr: &http_addr,
        worker_concurrency: args.worker_concurrency,
    };
    let mut roles: Vec<Role> = match args.topology {
        Topology::Split => vec![
            procs::spawn("api+engine", "api,engine", &env)?,
            procs::spawn("worker", "worker", &env)?,
        ],
        Topology::Single => vec![procs::spawn(
            "api+engine+worker",
            "api,engine,worker",
            &env,
        )?],
    };
    let outcome = match ready(args, &api, prefix, &mut roles, token.as_ref()).await {
        Err(e) => Err(e),
        Ok(_) if args.scenario == Scenario::Events => {
            super::events::measure(args, &pool, database, prefix, &mut roles)
                .await
                .map(|r| Measured::Events(Box::new(r)))
        }
        Ok(http) if args.scenario == Scenario::Waits => {
            super::waits::measure(args, &http, &pool, prefix, &api, &mut roles)
                .await
                .map(|r| Measured::Waits(Box::new(r)))
        }
        Ok(http) => measure(args, &http, &pool, database, prefix, &api, &mut roles)
            .await
            .map(|r| Measured::Workflows(Box::new(r))),
    };
    for role in &mut roles {
        procs::stop(role).await;
    }
    outcome
}

/// Waits until the API answers ready, then applies the scenario's
/// Promise; returns the HTTP client the load uses.
async fn ready(
    args: &BenchArgs,
    api: &str,
    prefix: &str,
    roles: &mut [Role],
    token: Option<&fulfil_engine::tokens::TokenSecret>,
) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))?,
        );
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .pool_max_idle_per_host(args.concurrency.max(8))
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
    if args.scenario == Scenario::Compound {
        let applied = http
            .put(format!("{api}/v1/promises/{CHILD_PROMISE}"))
            .body(CHILD_PROMISE_YAML)
            .send()
            .await?;
        if !applied.status().is_success() {
            bail!(
                "the bench's child Promise was refused: {}",
                applied.text().await?
            );
        }
    }
    let promise = match args.scenario {
        Scenario::Events => super::events::promise_yaml(prefix),
        Scenario::Waits => super::waits::promise_yaml(prefix),
        _ => promise_yaml(args),
    };
    let applied = http
        .put(format!("{api}/v1/promises/{PROMISE}"))
        .body(promise)
        .send()
        .await?;
    if !applied.status().is_success() {
        bail!("the bench Promise was refused: {}", applied.text().await?);
    }
    Ok(http)
}

async fn measure(
    args: &BenchArgs,
    http: &reqwest::Client,
    pool: &sqlx::PgPool,
    database: &str,
    prefix: &str,
    api: &str,
    roles: &mut [Role],
) -> anyhow::Result<Report> {
    // Completions arrive as run events on NATS.
    let nats = async_nats::connect(&args.nats_url).await?;
    let mut events = nats.subscribe(format!("{prefix}.events.run.>")).await?;
    let load = Arc::new(Load {
        tracker: Mutex::new(Tracker::default()),
        changed: Notify::new(),
    });
    let listener_load = load.clone();
    let listener = tokio::spawn(async move {
        while let Some(message) = events.next().await {
            let Ok(event) = serde_json::from_slice::<Value>(&message.payload) else {
                continue;
            };
            let Some(run) = event["data"]["run_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
            else {
                continue;
            };
            // Child requests' runs (`--scenario compound`) are not the
            // bench's workflows.
            if event["data"]["promise"] != PROMISE {
                continue;
            }
            // `run.started` is a run event too; only a run's end completes it.
            let Some(status) = event["data"]["status"]
                .as_str()
                .and_then(|s| fulfil_core::RunStatus::parse(s).ok())
                .filter(|s| s.is_terminal())
            else {
                continue;
            };
            listener_load.complete(run, status == fulfil_core::RunStatus::Succeeded);
        }
    });

    let deadline = Instant::now() + args.timeout;
    if args.warmup > 0 {
        offer(args, http, api, &load, args.warmup, deadline).await?;
    }
    let xact_before = settled_xact_commits(pool, database, args.stats_settle).await?;
    let writes_before = write_counters(pool).await?;
    let cpu_before: Vec<ProcessFigures> =
        roles.iter().map(procs::figures).collect::<Result<_, _>>()?;
    let services_before = SERVICES.map(procs::cpu_of_processes_named);
    let failed_before = load.tracker.lock().map(|t| t.failed).unwrap_or(0);
    let wall = Instant::now();
    let submitted = offer(args, http, api, &load, args.workflows, deadline).await?;
    let wall = wall.elapsed();
    let cpu_after: Vec<ProcessFigures> =
        roles.iter().map(procs::figures).collect::<Result<_, _>>()?;
    let services_after = SERVICES.map(procs::cpu_of_processes_named);
    let xact_after = settled_xact_commits(pool, database, args.stats_settle).await?;
    let writes_after = write_counters(pool).await?;
    listener.abort();
    let failed = load.tracker.lock().map(|t| t.failed).unwrap_or(0) - failed_before;

    let ids: Vec<Uuid> = submitted.iter().map(|s| s.request_id.as_uuid()).collect();
    let rows: Vec<(f64, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT (extract(epoch FROM r.finished_at - q.created_at) * 1000)::float8, q.created_at, r.finished_at
         FROM fulfil.requests q JOIN fulfil.runs r ON r.id = q.run_id
         WHERE q.id = ANY($1) AND r.finished_at IS NOT NULL",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    anyhow::ensure!(
        rows.len() == ids.len(),
        "{} of {} runs have no finish time",
        ids.len() - rows.len(),
        ids.len()
    );
    let latencies: Vec<f64> = rows.iter().map(|r| r.0).collect();
    let first = rows.iter().map(|r| r.1).min().unwrap_or_default();
    let last = rows.iter().map(|r| r.2).max().unwrap_or_default();
    let span_s = ((last - first).num_microseconds().unwrap_or(0) as f64 / 1e6).max(1e-6);
    let accepts: Vec<f64> = submitted
        .iter()
        .map(|s| s.accept.as_secs_f64() * 1000.0)
        .collect();
    let (steps, critical_path) = args.shape();
    let total_steps = (args.workflows * steps) as f64;
    let processes = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|(before, after)| ProcessFigures {
            role: after.role.clone(),
            cpu_s: after.cpu_s - before.cpu_s,
            peak_rss_mib: after.peak_rss_mib,
        })
        .collect();
    let latency = Percentiles::of(&latencies);
    let stages = stage_breakdown(pool, &ids).await?;
    Ok(Report {
        scenario: format!("{:?}", args.scenario)
            .to_lowercase()
            .replace("threestep", "three-step"),
        workflows: args.workflows,
        steps_per_workflow: steps,
        concurrency: args.rate.is_none().then_some(args.concurrency),
        rate: args.rate,
        payload_bytes: args.payload_bytes,
        topology: format!("{:?}", args.topology).to_lowercase(),
        failed,
        duration_s: span_s,
        client_wall_s: wall.as_secs_f64(),
        workflows_per_s: args.workflows as f64 / span_s,
        steps_per_s: total_steps / span_s,
        per_step_overhead_ms: latency.p50 / critical_path as f64,
        latency_ms: latency,
        accept_ms: Percentiles::of(&accepts),
        shed_requests: submitted.iter().map(|s| s.shed).sum(),
        pg_xact: xact_after - xact_before,
        pg_xact_per_step: (xact_after - xact_before) as f64 / total_steps,
        pg_writes_per_step: writes_before.per_step(&writes_after, total_steps),
        peak_runs_in_flight: report::peak_overlap(rows.iter().map(|r| (r.1, r.2))),
        processes,
        services: SERVICES
            .iter()
            .zip(services_before.iter().zip(&services_after))
            .map(|(name, (before, after))| ServiceCpu {
                name: name.to_string(),
                cpu_s: after - before,
                cpu_ms_per_step: (after - before) * 1000.0 / total_steps,
            })
            .collect(),
        stages_ms: stages,
    })
}

/// Where a step's time goes, from the attempt rows and history: dispatch
/// (the dispatching transaction) to the worker's start, the handler, and
/// the worker's finish to the commit that applied the result.
async fn stage_breakdown(pool: &sqlx::PgPool, request_ids: &[Uuid]) -> anyhow::Result<Stages> {
    // The tables grew from empty during the run and autovacuum may not
    // have seen them yet: without fresh statistics this join is planned
    // as nested scans and took 30 s for 12,000 workflows (0.1 s after).
    sqlx::query("ANALYZE fulfil.requests, fulfil.attempts, fulfil.history")
        .execute(pool)
        .await?;
    let rows: Vec<(f64, f64, f64)> = sqlx::query_as(
        "SELECT (extract(epoch FROM a.started_at - a.dispatched_at) * 1000)::float8,
                (extract(epoch FROM a.finished_at - a.started_at) * 1000)::float8,
                (extract(epoch FROM h.at - a.finished_at) * 1000)::float8
         FROM fulfil.requests q
         JOIN fulfil.attempts a ON a.run_id = q.run_id AND a.queue <> 'engine'
         JOIN fulfil.history h ON h.run_id = a.run_id AND h.step_id = a.step_id AND h.attempt = a.attempt
                               AND h.type = 'step.succeeded'
         WHERE q.id = ANY($1)",
    )
    .bind(request_ids)
    .fetch_all(pool)
    .await?;
    let column =
        |f: fn(&(f64, f64, f64)) -> f64| Percentiles::of(&rows.iter().map(f).collect::<Vec<_>>());
    Ok(Stages {
        dispatch_to_worker_start: column(|r| r.0),
        handler: column(|r| r.1),
        worker_finish_to_applied: column(|r| r.2),
    })
}
