//! `fulfil bench --scenario events`: CloudEvents published by a plain NATS
//! client at an offered rate into the trigger of a 3-step Promise.
//!
//! Each event is stamped with the wall-clock instant it was handed to the
//! client; the run it started is found by its request's idempotency key
//! (`event:<trigger>:<source>:<id>`), so "published → run started" is
//! `runs.created_at` minus that stamp and "→ run succeeded" is
//! `runs.finished_at` minus it (one machine, one clock). A share of the
//! events is published a second time (`--resend`); every one of them must
//! file nothing, which the report counts as `duplicates_filed`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;

use super::BenchArgs;
use super::drive::{SERVICES, settled_xact_commits};
use super::procs::{self, ProcessFigures, Role};
use super::report::{Percentiles, ServiceCpu};

const PROMISE: &str = "bench";
const TRIGGER: &str = "bench-event";
const SOURCE: &str = "/bench/publisher";
const EVENT_TYPE: &str = "dev.fulfil.bench.requested";

/// The subject events are published on: outside Fulfil's own prefix, as
/// another system's would be.
fn subject(prefix: &str) -> String {
    format!("ext{prefix}.requests")
}

pub(super) fn promise_yaml(prefix: &str) -> String {
    format!(
        "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: {{ name: {PROMISE}, version: \"1\" }}\nspec:\n  api: {{ type: object, required: [n], properties: {{ n: {{ type: integer }} }} }}\n  workflow:\n    steps:\n      - {{ id: provision, uses: noop }}\n      - {{ id: configure, uses: noop, needs: [provision] }}\n      - {{ id: alert, uses: noop, needs: [configure] }}\n  triggers:\n    - name: {TRIGGER}\n      subject: {}\n      type: {EVENT_TYPE}\n      params: {{ n: \"${{{{ event.data.n }}}}\" }}\n",
        subject(prefix)
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct EventsReport {
    pub scenario: &'static str,
    /// Distinct events published.
    pub events: usize,
    /// Of those, published a second time.
    pub resent: usize,
    pub offered_rate: f64,
    /// Publishing as achieved by the client.
    pub published_per_s: f64,
    /// Requests filed beyond one per distinct event (must be 0).
    pub duplicates_filed: i64,
    /// Runs that did not end `succeeded`.
    pub failed: usize,
    /// Event published → its run created.
    pub published_to_started_ms: Percentiles,
    /// Event published → its run succeeded.
    pub published_to_succeeded_ms: Percentiles,
    /// Distinct events per second, first published to last run finished.
    pub events_per_s: f64,
    pub duration_s: f64,
    pub pg_xact: i64,
    /// Postgres transactions per distinct event, everything included
    /// (filing, the three steps, outbox, ledger).
    pub pg_xact_per_event: f64,
    /// Ledger entries written per published message (resent ones too).
    pub ledger_entries_per_message: f64,
    /// Transactions that decided events (filed requests and wrote ledger
    /// entries together), per published message. Every entry a transaction
    /// writes has that transaction's `now()` as `received_at`, so they are
    /// counted exactly as distinct `received_at` values.
    pub decision_xact_per_message: f64,
    pub processes: Vec<ProcessFigures>,
    pub services: Vec<ServiceCpu>,
}

impl EventsReport {
    pub fn table(&self) -> String {
        let p = |p: &Percentiles| format!("{:.2} / {:.2} / {:.2}", p.p50, p.p99, p.max);
        let mut out = format!(
            "scenario events (3 steps), {} events + {} re-sent, offered {}/s\n",
            self.events, self.resent, self.offered_rate
        );
        let rows = [
            ("published/s", format!("{:.1}", self.published_per_s)),
            (
                "events/s (into succeeded runs)",
                format!("{:.1}", self.events_per_s),
            ),
            (
                "published → run started ms p50/p99/max",
                p(&self.published_to_started_ms),
            ),
            (
                "published → run succeeded ms p50/p99/max",
                p(&self.published_to_succeeded_ms),
            ),
            ("duplicates filed", self.duplicates_filed.to_string()),
            ("runs not succeeded", self.failed.to_string()),
            (
                "pg transactions/event",
                format!("{:.2} ({} in all)", self.pg_xact_per_event, self.pg_xact),
            ),
            (
                "ledger entries/message",
                format!("{:.2}", self.ledger_entries_per_message),
            ),
            (
                "deciding transactions/message",
                format!("{:.3}", self.decision_xact_per_message),
            ),
        ];
        for (name, value) in rows {
            out.push_str(&format!("  {name:<42} {value}\n"));
        }
        for process in &self.processes {
            out.push_str(&format!(
                "  {:<42} cpu {:.1} s, peak rss {:.0} MiB\n",
                process.role, process.cpu_s, process.peak_rss_mib
            ));
        }
        for service in &self.services {
            out.push_str(&format!(
                "  {:<42} cpu {:.1} s\n",
                service.name, service.cpu_s
            ));
        }
        out
    }
}

/// Publishes `count` events (ids `offset..offset+count`) at `rate`, every
/// `resend_every`-th one a second time right after; returns when each was
/// handed over, by id.
async fn publish(
    js: &async_nats::jetstream::Context,
    subject: &str,
    offset: usize,
    count: usize,
    rate: f64,
    resend_every: Option<usize>,
) -> anyhow::Result<(HashMap<String, DateTime<Utc>>, usize, Duration)> {
    let every = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut sent_at = HashMap::with_capacity(count);
    let mut acks = futures::stream::FuturesUnordered::new();
    let mut resent = 0;
    for i in 0..count {
        tokio::time::sleep_until((started + every.mul_f64(i as f64)).into()).await;
        let id = format!("ev-{}", offset + i);
        let event = json!({
            "specversion": "1.0", "id": id, "source": SOURCE, "type": EVENT_TYPE,
            "datacontenttype": "application/json", "data": { "n": offset + i },
        });
        let body = serde_json::to_vec(&event)?;
        let copies = match resend_every {
            Some(k) if i % k == 0 => {
                resent += 1;
                2
            }
            _ => 1,
        };
        sent_at.insert(id, Utc::now());
        for _ in 0..copies {
            let ack = js.publish(subject.to_string(), body.clone().into()).await?;
            acks.push(std::future::IntoFuture::into_future(ack));
        }
        // Keep the acknowledgements drained so none waits long.
        while let Some(Some(ack)) = futures::FutureExt::now_or_never(acks.next()) {
            ack.context("the inbound stream did not store an event")?;
        }
    }
    while let Some(ack) = acks.next().await {
        ack.context("the inbound stream did not store an event")?;
    }
    Ok((sent_at, resent, started.elapsed()))
}

/// Waits until `expected` runs of the scratch database have finished.
async fn wait_finished(
    pool: &sqlx::PgPool,
    expected: i64,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        let finished: i64 =
            sqlx::query_scalar("SELECT count(*) FROM fulfil.runs WHERE finished_at IS NOT NULL")
                .fetch_one(pool)
                .await?;
        if finished >= expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {finished} of {expected} runs finished before the timeout");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A filed request's idempotency key, and its run's start, end and status.
type RunTimes = (String, DateTime<Utc>, Option<DateTime<Utc>>, String);

pub(super) async fn measure(
    args: &BenchArgs,
    pool: &sqlx::PgPool,
    database: &str,
    prefix: &str,
    roles: &mut [Role],
) -> anyhow::Result<EventsReport> {
    let rate = args.rate.unwrap_or(1000.0);
    let nats = async_nats::connect(&args.nats_url).await?;
    let js = async_nats::jetstream::new(nats);
    let subject = subject(prefix);
    let resend_every = (args.resend > 0.0).then(|| (1.0 / args.resend).round().max(1.0) as usize);
    let deadline = Instant::now() + args.timeout;

    if args.warmup > 0 {
        publish(&js, &subject, 0, args.warmup, rate.min(200.0), None).await?;
        wait_finished(pool, args.warmup as i64, deadline).await?;
    }
    let xact_before = settled_xact_commits(pool, database, args.stats_settle).await?;
    let ledger_before: i64 = sqlx::query_scalar("SELECT count(*) FROM fulfil.event_ledger")
        .fetch_one(pool)
        .await?;
    let measured_from = Utc::now();
    let cpu_before: Vec<ProcessFigures> =
        roles.iter().map(procs::figures).collect::<Result<_, _>>()?;
    let services_before = SERVICES.map(procs::cpu_of_processes_named);

    let (sent_at, resent, publish_wall) = publish(
        &js,
        &subject,
        args.warmup,
        args.workflows,
        rate,
        resend_every,
    )
    .await?;
    let expected = (args.warmup + args.workflows) as i64;
    wait_finished(pool, expected, deadline).await?;
    // Re-sent copies may still be in flight behind the last run: wait for
    // the ledger to hold every published message.
    let messages = (args.workflows + resent) as i64;
    loop {
        let ledger: i64 = sqlx::query_scalar("SELECT count(*) FROM fulfil.event_ledger")
            .fetch_one(pool)
            .await?;
        if ledger - ledger_before >= messages || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let cpu_after: Vec<ProcessFigures> =
        roles.iter().map(procs::figures).collect::<Result<_, _>>()?;
    let services_after = SERVICES.map(procs::cpu_of_processes_named);
    let xact_after = settled_xact_commits(pool, database, args.stats_settle).await?;
    let ledger_after: i64 = sqlx::query_scalar("SELECT count(*) FROM fulfil.event_ledger")
        .fetch_one(pool)
        .await?;

    let decisions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT received_at) FROM fulfil.event_ledger WHERE received_at >= $1",
    )
    .bind(measured_from)
    .fetch_one(pool)
    .await?;
    let key_prefix = format!("event:{TRIGGER}:{SOURCE}:");
    let rows: Vec<RunTimes> = sqlx::query_as(
        "SELECT q.idempotency_key, r.created_at, r.finished_at, r.status
         FROM fulfil.requests q JOIN fulfil.runs r ON r.id = q.run_id",
    )
    .fetch_all(pool)
    .await?;
    let filed = rows.len() as i64;
    let mut started_ms = Vec::new();
    let mut succeeded_ms = Vec::new();
    let mut failed = 0;
    let (mut first, mut last) = (None::<DateTime<Utc>>, None::<DateTime<Utc>>);
    for (key, created, finished, status) in &rows {
        let Some(sent) = key.strip_prefix(&key_prefix).and_then(|id| sent_at.get(id)) else {
            continue;
        };
        let ms =
            |later: DateTime<Utc>| (later - *sent).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        started_ms.push(ms(*created));
        if status != "succeeded" {
            failed += 1;
        }
        if let Some(finished) = finished {
            succeeded_ms.push(ms(*finished));
            last = last.max(Some(*finished));
        }
        first = Some(first.map_or(*sent, |f| f.min(*sent)));
    }
    let span_s = match (first, last) {
        (Some(f), Some(l)) => ((l - f).num_microseconds().unwrap_or(0) as f64 / 1e6).max(1e-6),
        _ => 1e-6,
    };
    let events = args.workflows;
    Ok(EventsReport {
        scenario: "events",
        events,
        resent,
        offered_rate: rate,
        published_per_s: (events + resent) as f64 / publish_wall.as_secs_f64().max(1e-6),
        duplicates_filed: filed - expected,
        failed,
        published_to_started_ms: Percentiles::of(&started_ms),
        published_to_succeeded_ms: Percentiles::of(&succeeded_ms),
        events_per_s: started_ms.len() as f64 / span_s,
        duration_s: span_s,
        pg_xact: xact_after - xact_before,
        pg_xact_per_event: (xact_after - xact_before) as f64 / events as f64,
        ledger_entries_per_message: (ledger_after - ledger_before) as f64 / messages as f64,
        decision_xact_per_message: decisions as f64 / messages as f64,
        processes: cpu_before
            .iter()
            .zip(&cpu_after)
            .map(|(before, after)| ProcessFigures {
                role: after.role.clone(),
                cpu_s: after.cpu_s - before.cpu_s,
                peak_rss_mib: after.peak_rss_mib,
            })
            .collect(),
        services: SERVICES
            .iter()
            .zip(services_before.iter().zip(&services_after))
            .map(|(name, (before, after))| ServiceCpu {
                name: name.to_string(),
                cpu_s: after - before,
                cpu_ms_per_step: (after - before) * 1000.0 / events as f64,
            })
            .collect(),
    })
}
