//! `fulfil bench --scenario waits`: many runs parked on a correlated
//! `wait.event`, and the latency of waking some of them.
//!
//! `--waiting N` requests (default 100,000) are filed through the HTTP API,
//! each a run whose only step waits for an event with
//! `event.data.name == params.name`; once `fulfil.waits` holds N rows the
//! engine process's resident memory (VmRSS) is read. Then events for
//! `--wake M` distinct waiting runs (default 2,000) are published by a
//! plain NATS client at `--rate` per second (default 200), and each one's
//! latency is the time from handing it to the client to receiving its
//! run's `step.succeeded` status event on `<prefix>.events.step.succeeded`
//! (both instants taken in this process), broken down by the system's own
//! records into published → its ledger entry's `received_at` (the inbound
//! batch that matched it), → the step's `step.succeeded` in history (the
//! `wait_matched` timer that completed it), → the status event received
//! (the status outbox). An event must look up its waits
//! by the correlated value, so neither figure may grow with N: the targets
//! are RSS ≤ 256 MiB and p50 ≤ 10 ms at N = 100,000.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use fulfil_core::ids::RunId;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use super::BenchArgs;
use super::procs::{self, ProcessFigures, Role};
use super::report::Percentiles;
use crate::client::retry_after;

const PROMISE: &str = "bench";
const EVENT_TYPE: &str = "dev.fulfil.bench.ready";
const SOURCE: &str = "/bench/provisioner";
/// Requests in flight at once while filing the waiting runs.
const FILING_CONCURRENCY: usize = 64;

/// The subject events are published on: outside Fulfil's own prefix, as
/// another system's would be.
fn subject(prefix: &str) -> String {
    format!("ext{prefix}.ready")
}

/// One step, a correlated `wait.event` on a subject of its own (applying
/// the Promise makes the inbound stream capture it).
pub(super) fn promise_yaml(prefix: &str) -> String {
    let subject = subject(prefix);
    format!(
        "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: {{ name: {PROMISE}, version: \"1\" }}\nspec:\n  api: {{ type: object, required: [name], properties: {{ name: {{ type: string }} }} }}\n  workflow:\n    steps:\n      - id: ready\n        uses: wait.event\n        with: {{ subject: {subject}, type: {EVENT_TYPE}, match: \"event.data.name == params.name\" }}\n"
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct WaitsReport {
    pub scenario: &'static str,
    /// Runs parked on a wait at once.
    pub waiting: usize,
    /// Requests filed per second while parking them.
    pub filed_per_s: f64,
    /// First request filed to the last wait stored.
    pub parking_s: f64,
    /// The engine process's VmRSS with every run parked.
    pub engine_rss_parked_mib: f64,
    /// Distinct waiting runs an event was published for.
    pub woken: usize,
    pub offered_rate: f64,
    /// Event handed to the NATS client → its run's `step.succeeded`
    /// status event received.
    pub published_to_succeeded_ms: Percentiles,
    /// Where that time went.
    pub stages_ms: WaitStages,
    /// Events whose step did not succeed before the timeout (must be 0).
    pub not_woken: usize,
    /// The engine process's VmRSS at the end.
    pub engine_rss_end_mib: f64,
    pub processes: Vec<ProcessFigures>,
}

/// Published → step.succeeded status event, by stage (wall clocks of this
/// machine: the bench's, and Postgres's `now()` in the engine's commits).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WaitStages {
    /// Handed to the NATS client → the ledger entry of the batch that
    /// matched it (`received_at`, its transaction's start).
    pub published_to_matched: Percentiles,
    /// → `step.succeeded` in the run's history.
    pub matched_to_succeeded: Percentiles,
    /// → its status event received by the bench.
    pub succeeded_to_status_event: Percentiles,
}

impl WaitsReport {
    pub fn table(&self) -> String {
        let p = &self.published_to_succeeded_ms;
        let mut out = format!(
            "scenario waits: {} runs waiting on a correlated wait.event, {} woken at {}/s\n",
            self.waiting, self.woken, self.offered_rate
        );
        let rows = [
            (
                "filed/s (parking)",
                format!("{:.0} ({:.1} s in all)", self.filed_per_s, self.parking_s),
            ),
            (
                "engine rss with all parked MiB (target ≤ 256)",
                format!("{:.1}", self.engine_rss_parked_mib),
            ),
            (
                "published → step.succeeded ms p50/p99/max (target p50 ≤ 10)",
                format!("{:.2} / {:.2} / {:.2}", p.p50, p.p99, p.max),
            ),
            (
                "  published → matched (ledger) p50/p99",
                format!(
                    "{:.2} / {:.2}",
                    self.stages_ms.published_to_matched.p50,
                    self.stages_ms.published_to_matched.p99
                ),
            ),
            (
                "  matched → step.succeeded (history) p50/p99",
                format!(
                    "{:.2} / {:.2}",
                    self.stages_ms.matched_to_succeeded.p50,
                    self.stages_ms.matched_to_succeeded.p99
                ),
            ),
            (
                "  step.succeeded → status event received p50/p99",
                format!(
                    "{:.2} / {:.2}",
                    self.stages_ms.succeeded_to_status_event.p50,
                    self.stages_ms.succeeded_to_status_event.p99
                ),
            ),
            ("not woken", self.not_woken.to_string()),
            (
                "engine rss at the end MiB",
                format!("{:.1}", self.engine_rss_end_mib),
            ),
        ];
        for (name, value) in rows {
            out.push_str(&format!("  {name:<62} {value}\n"));
        }
        for process in &self.processes {
            out.push_str(&format!(
                "  {:<62} cpu {:.1} s, peak rss {:.0} MiB\n",
                process.role, process.cpu_s, process.peak_rss_mib
            ));
        }
        out
    }
}

/// Resident memory (VmRSS) of a live process, in MiB.
fn rss_mib(role: &Role) -> anyhow::Result<f64> {
    let pid = role.child.id().context("the process has exited")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .context("no VmRSS in /proc/<pid>/status")?;
    Ok(kib / 1024.0)
}

/// The process that runs the engine role.
fn engine_role(roles: &[Role]) -> anyhow::Result<&Role> {
    roles
        .iter()
        .find(|r| r.name.contains("engine"))
        .context("no engine process")
}

/// Files request `name`, filing it again after the wait a shed answer
/// (503 with `Retry-After`) names; returns its run.
async fn file(
    http: &reqwest::Client,
    url: &str,
    name: String,
    deadline: Instant,
) -> anyhow::Result<(String, RunId)> {
    let body = json!({ "params": { "name": name } });
    loop {
        let response = http.post(url).json(&body).send().await?;
        let status = response.status();
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && let Some(wait) = retry_after(&response)
            && Instant::now() + wait < deadline
        {
            tokio::time::sleep(wait).await;
            continue;
        }
        let answer: Value = response.json().await?;
        if status.as_u16() != 202 {
            bail!("request refused with {status}: {answer}");
        }
        let run: RunId = answer["run_id"].as_str().unwrap_or_default().parse()?;
        return Ok((name, run));
    }
}

/// When each run's `step.succeeded` status event reached the bench, by
/// this process's monotonic clock and by the wall clock.
type Arrivals = HashMap<RunId, (Instant, DateTime<Utc>)>;

/// Milliseconds from `from` to `to`.
fn ms(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(0) as f64 / 1000.0
}

/// The stages of each woken run's latency, from the ledger and history.
async fn stages(
    pool: &sqlx::PgPool,
    chosen: &[(String, RunId)],
    sent: &HashMap<RunId, DateTime<Utc>>,
    received: &Arrivals,
) -> anyhow::Result<WaitStages> {
    let matched: HashMap<String, DateTime<Utc>> = sqlx::query_as(
        "SELECT event_id, received_at FROM fulfil.event_ledger WHERE event_id LIKE 'ready-%'",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let runs: Vec<uuid::Uuid> = chosen.iter().map(|(_, run)| run.as_uuid()).collect();
    let succeeded: HashMap<uuid::Uuid, DateTime<Utc>> = sqlx::query_as(
        "SELECT run_id, at FROM fulfil.history
         WHERE run_id = ANY($1) AND step_id = 'ready' AND type = 'step.succeeded'",
    )
    .bind(&runs)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let (mut first, mut second, mut third) = (Vec::new(), Vec::new(), Vec::new());
    for (name, run) in chosen {
        let (Some(sent), Some(matched), Some(done), Some((_, got))) = (
            sent.get(run),
            matched.get(&format!("ready-{name}")),
            succeeded.get(&run.as_uuid()),
            received.get(run),
        ) else {
            continue;
        };
        first.push(ms(*sent, *matched));
        second.push(ms(*matched, *done));
        third.push(ms(*done, *got));
    }
    Ok(WaitStages {
        published_to_matched: Percentiles::of(&first),
        matched_to_succeeded: Percentiles::of(&second),
        succeeded_to_status_event: Percentiles::of(&third),
    })
}

async fn waits_stored(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM fulfil.waits")
        .fetch_one(pool)
        .await?)
}

pub(super) async fn measure(
    args: &BenchArgs,
    http: &reqwest::Client,
    pool: &sqlx::PgPool,
    prefix: &str,
    api: &str,
    roles: &mut [Role],
) -> anyhow::Result<WaitsReport> {
    let waiting = args.waiting;
    let woken = args.wake.min(waiting);
    anyhow::ensure!(woken > 0, "--wake must be at least 1");
    let rate = args.rate.unwrap_or(200.0);
    let deadline = Instant::now() + args.timeout;

    // Park N runs.
    let url = format!("{api}/v1/promises/{PROMISE}/requests");
    let parking = Instant::now();
    let mut runs: Vec<(String, RunId)> = futures::stream::iter(0..waiting)
        .map(|i| file(http, &url, format!("w{i}"), deadline))
        .buffer_unordered(FILING_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let filed_s = parking.elapsed().as_secs_f64().max(1e-6);
    let mut last_report = Instant::now();
    loop {
        let stored = waits_stored(pool).await?;
        if stored >= waiting as i64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {stored} of {waiting} waits stored before the timeout");
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("{stored} of {waiting} waits stored");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let parking_s = parking.elapsed().as_secs_f64();
    let engine_rss_parked_mib = rss_mib(engine_role(roles)?)?;
    eprintln!(
        "{waiting} runs waiting after {parking_s:.1} s; engine rss {engine_rss_parked_mib:.1} MiB"
    );

    // Wake M distinct runs, spread over the N.
    runs.sort_by_key(|(name, _)| name[1..].parse::<usize>().unwrap_or(0));
    let stride = (waiting / woken).max(1);
    let chosen: Vec<(String, RunId)> = runs.into_iter().step_by(stride).take(woken).collect();
    let nats = async_nats::connect(&args.nats_url).await?;
    let mut succeeded = nats
        .subscribe(format!("{prefix}.events.step.succeeded"))
        .await?;
    let received: Arc<Mutex<Arrivals>> = Arc::default();
    let sink = received.clone();
    let listener = tokio::spawn(async move {
        while let Some(message) = succeeded.next().await {
            let at = (Instant::now(), Utc::now());
            let Ok(event) = serde_json::from_slice::<Value>(&message.payload) else {
                continue;
            };
            let Some(run) = event["data"]["run_id"]
                .as_str()
                .and_then(|s| s.parse::<RunId>().ok())
            else {
                continue;
            };
            if let Ok(mut seen) = sink.lock() {
                seen.entry(run).or_insert(at);
            }
        }
    });
    // The subscription is in place before the first event.
    nats.flush().await?;

    let js = async_nats::jetstream::new(nats.clone());
    let subject = subject(prefix);
    let every = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut sent_at: HashMap<RunId, Instant> = HashMap::with_capacity(woken);
    let mut sent_wall: HashMap<RunId, DateTime<Utc>> = HashMap::with_capacity(woken);
    let mut acks = futures::stream::FuturesUnordered::new();
    for (i, (name, run)) in chosen.iter().enumerate() {
        tokio::time::sleep_until((started + every.mul_f64(i as f64)).into()).await;
        let event = json!({
            "specversion": "1.0", "id": format!("ready-{name}"), "source": SOURCE,
            "type": EVENT_TYPE, "datacontenttype": "application/json",
            "data": { "name": name },
        });
        let body = serde_json::to_vec(&event)?;
        sent_at.insert(*run, Instant::now());
        sent_wall.insert(*run, Utc::now());
        let ack = js.publish(subject.clone(), body.into()).await?;
        acks.push(std::future::IntoFuture::into_future(ack));
        while let Some(Some(ack)) = futures::FutureExt::now_or_never(acks.next()) {
            ack.context("the inbound stream did not store an event")?;
        }
    }
    while let Some(ack) = acks.next().await {
        ack.context("the inbound stream did not store an event")?;
    }
    loop {
        let seen = received
            .lock()
            .map(|r| sent_at.keys().filter(|run| r.contains_key(run)).count())
            .unwrap_or(0);
        if seen >= woken || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    listener.abort();
    let received = received
        .lock()
        .map(|r| r.clone())
        .map_err(|_| anyhow::anyhow!("the listener panicked"))?;
    let latencies: Vec<f64> = sent_at
        .iter()
        .filter_map(|(run, sent)| {
            received
                .get(run)
                .map(|(got, _)| got.saturating_duration_since(*sent).as_secs_f64() * 1000.0)
        })
        .collect();
    let engine_rss_end_mib = rss_mib(engine_role(roles)?)?;
    let stages = stages(pool, &chosen, &sent_wall, &received).await?;
    Ok(WaitsReport {
        scenario: "waits",
        waiting,
        filed_per_s: waiting as f64 / filed_s,
        parking_s,
        engine_rss_parked_mib,
        woken,
        offered_rate: rate,
        published_to_succeeded_ms: Percentiles::of(&latencies),
        stages_ms: stages,
        not_woken: woken - latencies.len(),
        engine_rss_end_mib,
        processes: roles.iter().map(procs::figures).collect::<Result<_, _>>()?,
    })
}
