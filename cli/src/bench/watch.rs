//! `fulfil bench --scenario watch`: many watchers of one run, and what the
//! watch hub costs them.
//!
//! Everything runs in this process, so the hub's read counters can be
//! read: an engine, a worker and the HTTP API over a scratch database and
//! NATS prefix. One run is filed whose first step sleeps [`GATE`] so
//! `--watchers` SSE connections (default 1,000) can join; then `--steps` noop steps (default 20) run one
//! after another. Once every watcher has its first event, the figures
//! start: events delivered, the hub's history reads per new event (the
//! claim: about one per status event, whatever the number of watchers),
//! and latency from the event's history `at` (its transaction's start, so a
//! little more than commit) to its arrival at a watcher.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use fulfil_api::sse::SseParser;
use fulfil_api::watch::{WatchHub, WatchStats};
use fulfil_bus::NatsNames;
use fulfil_engine::{Engine, EngineConfig, db};
use fulfil_worker::{Handlers, Worker, WorkerConfig};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::BenchArgs;
use super::report::Percentiles;

#[derive(Debug, Clone, Serialize)]
pub struct WatchReport {
    pub scenario: &'static str,
    pub watchers: usize,
    /// Watchers that received the run's whole history, in order, and the end.
    pub complete_watchers: usize,
    /// History events of the run after every watcher joined.
    pub live_events: usize,
    /// Of those, the ones that publish a status event.
    pub live_status_events: usize,
    /// Events delivered to watchers after every watcher joined.
    pub delivered: usize,
    /// The hub's shared history reads while live, on notifications.
    pub feed_reads_live: u64,
    /// The hub's safety-poll reads while live (per run and interval).
    pub poll_reads_live: u64,
    /// Shared reads (notification and poll) per live event (the claim:
    /// about 1 per status event, never per watcher).
    pub reads_per_event: f64,
    /// Reads watchers made alone when joining (before the feed had read).
    pub join_reads: u64,
    /// History `at` → received by a watcher.
    pub latency_ms: Percentiles,
    pub wall_s: f64,
}

impl WatchReport {
    pub fn table(&self) -> String {
        let l = &self.latency_ms;
        let rows = [
            (
                "watchers (complete)",
                format!("{} ({})", self.watchers, self.complete_watchers),
            ),
            (
                "live events (status events)",
                format!("{} ({})", self.live_events, self.live_status_events),
            ),
            ("events delivered", self.delivered.to_string()),
            ("hub reads while live", self.feed_reads_live.to_string()),
            (
                "hub safety polls while live",
                self.poll_reads_live.to_string(),
            ),
            (
                "hub reads per event",
                format!("{:.2}", self.reads_per_event),
            ),
            (
                "reads at join (per watcher, once)",
                self.join_reads.to_string(),
            ),
            (
                "at → watcher ms p50/p99/max",
                format!("{:.2} / {:.2} / {:.2}", l.p50, l.p99, l.max),
            ),
            ("wall s", format!("{:.1}", self.wall_s)),
        ];
        let mut out = format!(
            "scenario watch: {} SSE watchers of one run\n",
            self.watchers
        );
        for (name, value) in rows {
            out.push_str(&format!("  {name:<40} {value}\n"));
        }
        out
    }
}

/// The first step's sleep, while the watchers join.
const GATE: &str = "3s";

fn promise(steps: usize) -> String {
    let mut yaml = format!(
        "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: {{ name: watched, version: \"1\" }}\nspec:\n  workflow:\n    steps:\n      - {{ id: gate, uses: sleep, with: {{ for: {GATE} }} }}\n"
    );
    let mut previous = "gate".to_string();
    for i in 1..=steps {
        yaml.push_str(&format!(
            "      - {{ id: s{i}, uses: noop, needs: [{previous}] }}\n"
        ));
        previous = format!("s{i}");
    }
    yaml
}

/// Sets up a scratch database and prefix, measures, and removes both.
pub async fn run(args: &BenchArgs) -> anyhow::Result<WatchReport> {
    anyhow::ensure!(args.watchers > 0, "--watchers must be at least 1");
    let suffix = Uuid::now_v7().simple().to_string();
    let suffix = &suffix[suffix.len() - 12..];
    let database = format!("fulfil_bench_{suffix}");
    let database_url = db::with_database(&args.database_url, &database);
    let names = NatsNames::new(format!("bench{suffix}"))?;
    db::ensure_database(&database_url)
        .await
        .context("creating the scratch database")?;
    let nats = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| crate::report::Reaching::Nats(args.nats_url.clone()))?;
    let js = async_nats::jetstream::new(nats.clone());
    let result = measure(args, &database_url, &names, &nats, &js).await;
    fulfil_bus::streams::delete_streams(&js, &names).await;
    if let Err(e) = db::drop_database(&args.database_url, &database).await {
        eprintln!("warning: could not drop {database}: {e}");
    }
    result
}

async fn measure(
    args: &BenchArgs,
    database_url: &str,
    names: &NatsNames,
    nats: &async_nats::Client,
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<WatchReport> {
    let pool = db::connect(database_url, 16).await?;
    db::migrate(&pool).await?;
    fulfil_bus::streams::ensure_streams(js, names).await?;
    let engine = Engine::new(pool.clone(), names.clone(), "bench-engine");
    engine.start_fast_publisher(js.clone());
    let stop = CancellationToken::new();
    let mut roles = tokio::task::JoinSet::new();
    {
        let (engine, js, stop) = (engine.clone(), js.clone(), stop.clone());
        roles.spawn(async move {
            let _ = engine.run(js, EngineConfig::default(), stop).await;
        });
    }
    let worker = Worker::new(
        js.clone(),
        names.clone(),
        Handlers::with_builtins(nats.clone()),
        WorkerConfig {
            worker_id: "bench-worker".into(),
            ..WorkerConfig::default()
        },
    );
    {
        let stop = stop.clone();
        roles.spawn(async move {
            let _ = worker.run(stop).await;
        });
    }
    let hub = WatchHub::default();
    let state = fulfil_api::ApiState {
        watch: hub.clone(),
        ..fulfil_api::ApiState::new(engine.clone(), Some(nats.clone()))
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    {
        let stop = stop.clone();
        roles.spawn(async move {
            let _ = fulfil_api::serve(listener, state, async move { stop.cancelled().await }).await;
        });
    }
    let outcome = drive(args, &api, &hub).await;
    stop.cancel();
    while tokio::time::timeout(Duration::from_secs(15), roles.join_next())
        .await
        .ok()
        .flatten()
        .is_some()
    {}
    pool.close().await;
    outcome
}

/// What one watcher saw: (seq, history `at`, received at).
type Seen = Vec<(i64, DateTime<Utc>, DateTime<Utc>)>;

async fn drive(args: &BenchArgs, api: &str, hub: &WatchHub) -> anyhow::Result<WatchReport> {
    let started = Instant::now();
    let http = reqwest::Client::builder()
        .timeout(args.timeout)
        .pool_max_idle_per_host(0)
        .build()?;
    let steps = args.steps.unwrap_or(20).max(1);
    let applied = http
        .put(format!("{api}/v1/promises/watched"))
        .header("content-type", "application/yaml")
        .body(promise(steps))
        .send()
        .await?;
    if !applied.status().is_success() {
        bail!("the bench Promise was refused: {}", applied.text().await?);
    }
    let accepted: Value = http
        .post(format!("{api}/v1/promises/watched/requests"))
        .json(&json!({}))
        .send()
        .await?
        .json()
        .await?;
    let run_id = accepted["run_id"]
        .as_str()
        .with_context(|| format!("no run_id in {accepted}"))?
        .to_string();
    // Everyone joined: the bench's side of the barrier records the moment.
    let joined = Arc::new(Barrier::new(args.watchers + 1));
    let mut watchers = tokio::task::JoinSet::new();
    for _ in 0..args.watchers {
        let (http, url, joined) = (
            http.clone(),
            format!("{api}/v1/runs/{run_id}/events"),
            joined.clone(),
        );
        watchers.spawn(async move { watch(&http, &url, &joined).await });
    }
    tokio::time::timeout(args.timeout, joined.wait())
        .await
        .context("the watchers did not all join in time")?;
    let live_from = Utc::now();
    let at_join: WatchStats = hub.stats();

    let mut seen: Vec<Seen> = Vec::with_capacity(args.watchers);
    while let Some(watched) = watchers.join_next().await {
        seen.push(watched??);
    }
    let live_stats = hub.stats();
    let history: Value = http
        .get(format!("{api}/v1/runs/{run_id}/history?limit=1000"))
        .send()
        .await?
        .json()
        .await?;
    let items = history["items"].as_array().cloned().unwrap_or_default();
    let seqs: Vec<i64> = items.iter().filter_map(|e| e["seq"].as_i64()).collect();
    let live: Vec<&Value> = items
        .iter()
        .filter(|e| {
            e["at"]
                .as_str()
                .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                .is_some_and(|at| at > live_from)
        })
        .collect();
    let live_status = live
        .iter()
        .filter(|e| {
            e["type"]
                .as_str()
                .and_then(fulfil_core::status::StatusEventKind::for_history)
                .is_some()
        })
        .count();
    let complete = seen
        .iter()
        .filter(|s| s.iter().map(|(seq, _, _)| *seq).collect::<Vec<_>>() == seqs)
        .count();
    let mut latency = Vec::new();
    let mut delivered = 0;
    for watcher in &seen {
        for (_, at, received) in watcher.iter().filter(|(_, at, _)| *at > live_from) {
            delivered += 1;
            latency.push((*received - *at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    let feed_reads_live = (live_stats.feed_starts + live_stats.feed_reads)
        - (at_join.feed_starts + at_join.feed_reads);
    let poll_reads_live = live_stats.poll_reads - at_join.poll_reads;
    Ok(WatchReport {
        scenario: "watch",
        watchers: args.watchers,
        complete_watchers: complete,
        live_events: live.len(),
        live_status_events: live_status,
        delivered,
        feed_reads_live,
        poll_reads_live,
        reads_per_event: (feed_reads_live + poll_reads_live) as f64 / live.len().max(1) as f64,
        join_reads: at_join.replay_reads,
        latency_ms: Percentiles::of(&latency),
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// One SSE watcher: waits at `joined` after its first event, then reads to
/// the end of the stream.
async fn watch(http: &reqwest::Client, url: &str, joined: &Barrier) -> anyhow::Result<Seen> {
    let mut response = http.get(url).send().await?;
    if !response.status().is_success() {
        bail!("GET {url}: {}", response.status());
    }
    let mut parser = SseParser::default();
    let mut seen = Seen::new();
    let mut waited = false;
    while let Some(chunk) = response.chunk().await? {
        let received = Utc::now();
        for event in parser.push(&chunk)? {
            let data: Value = serde_json::from_str(&event.data)?;
            let (Some(seq), Some(at)) = (
                data["seq"].as_i64(),
                data["at"].as_str().and_then(|t| t.parse().ok()),
            ) else {
                bail!("not a history event: {}", event.data);
            };
            seen.push((seq, at, received));
        }
        if !waited && !seen.is_empty() {
            waited = true;
            joined.wait().await;
        }
    }
    if !waited {
        joined.wait().await;
    }
    Ok(seen)
}
