//! `fulfil bench --scenario queries`: operator queries over `--runs` runs
//! (default 100,000; the target is 1,000,000).
//!
//! The runs are seeded with SQL (`generate_series`, in batches), spread over
//! 60 days with UUIDv7 ids of their creation time: 20 Promises of a skewed
//! popularity owned by 8 teams; 97 % configure, 2 % reconcile, 1 % delete
//! runs; 0.5 % of the runs live (running, some of them retrying, waiting
//! for an event, an approval or a time, or on a worker), the rest finished
//! (mostly succeeded, some failed, compensated or cancelled). Live runs and
//! 5 % of the finished ones have three steps with attempts and history; one
//! run has 2,000 steps. After `ANALYZE`, an in-process API (no engine loops)
//! answers each query shape `--samples` times (default 50) over HTTP; the
//! report gives p50/p99 per shape and the `EXPLAIN ANALYZE` plan of its
//! page: the node chain from the top and every index it reads. Targets: a
//! list ≤ 50 ms p99, the 2,000-step run ≤ 100 ms p99.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{TimeDelta, Utc};
use fulfil_core::ids::RunId;
use fulfil_core::status::{RunKind, RunStatus, WaitKind};
use fulfil_engine::db;
use fulfil_engine::inspect::{RunFilter, WaitingFor};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::BenchArgs;
use super::report::Percentiles;

/// Runs seeded per statement.
const SEED_BATCH: usize = 100_000;
const PROMISES: usize = 20;
const TEAMS: usize = 8;
/// Steps of the one large run.
const LARGE_RUN_STEPS: i32 = 2000;

#[derive(Debug, Clone, Serialize)]
pub struct QueriesReport {
    pub scenario: &'static str,
    pub runs: usize,
    pub seed_s: f64,
    pub samples: usize,
    pub shapes: Vec<Shape>,
}

/// One query shape: its timings and the plan of its page.
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    pub name: String,
    pub path: String,
    pub rows: usize,
    pub ms: Percentiles,
    /// Node chain from the top of the plan, with every index it reads;
    /// empty for reads that are not a run list.
    pub plan: String,
    /// Postgres' own execution time of the page, in ms.
    pub plan_ms: Option<f64>,
}

impl QueriesReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "queries over {} runs (seeded in {:.1} s), {} samples per shape, ms (HTTP round trip; pg: Postgres execution of the page)\n{:<38} {:>5} {:>7} {:>7} {:>6}  plan\n",
            self.runs, self.seed_s, self.samples, "shape", "rows", "p50", "p99", "pg"
        );
        for s in &self.shapes {
            let pg = s
                .plan_ms
                .map_or_else(|| "-".to_string(), |ms| format!("{ms:.2}"));
            let _ = writeln!(
                out,
                "{:<38} {:>5} {:>7.2} {:>7.2} {:>6}  {}",
                s.name, s.rows, s.ms.p50, s.ms.p99, pg, s.plan
            );
        }
        out
    }

    /// The slowest list p99 and the slowest run read p99.
    pub fn worst(&self) -> (f64, f64) {
        let worst = |list: bool| {
            self.shapes
                .iter()
                .filter(|s| s.path.starts_with("/v1/runs?") == list)
                .map(|s| s.ms.p99)
                .fold(0.0, f64::max)
        };
        (worst(true), worst(false))
    }
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<QueriesReport> {
    anyhow::ensure!(args.runs >= 1000, "--runs must be at least 1000");
    anyhow::ensure!(args.samples > 0, "--samples must be at least 1");
    let suffix = Uuid::now_v7().simple().to_string();
    let database = format!("fulfil_bench_{}", &suffix[suffix.len() - 12..]);
    let database_url = db::with_database(&args.database_url, &database);
    db::ensure_database(&database_url)
        .await
        .context("creating the scratch database")?;
    let result = measure(args, &database_url).await;
    if let Err(e) = db::drop_database(&args.database_url, &database).await {
        eprintln!("warning: could not drop {database}: {e}");
    }
    result
}

async fn measure(args: &BenchArgs, database_url: &str) -> anyhow::Result<QueriesReport> {
    let pool = db::connect(database_url, 8).await?;
    db::migrate(&pool).await?;
    let started = Instant::now();
    let large = seed(&pool, args.runs).await?;
    let seed_s = started.elapsed().as_secs_f64();
    eprintln!("seeded {} runs in {seed_s:.1} s", args.runs);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    let names = fulfil_bus::NatsNames::new("benchqueries")?;
    let state = fulfil_api::ApiState::new(
        fulfil_engine::engine::Engine::new(pool.clone(), names, "bench-queries"),
        None,
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let server = {
        let stop = stop.clone();
        tokio::spawn(fulfil_api::serve(listener, state, async move {
            stop.cancelled().await
        }))
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let result = shapes(args, &pool, &http, &api, large).await;
    stop.cancel();
    let _ = server.await;
    Ok(QueriesReport {
        scenario: "queries",
        runs: args.runs,
        seed_s,
        samples: args.samples,
        shapes: result?,
    })
}

/// Seeds `runs` runs and their rows; returns the 2,000-step run.
async fn seed(pool: &PgPool, runs: usize) -> anyhow::Result<RunId> {
    // A UUIDv7 of `at`: gen_random_uuid() (v4) with the millisecond
    // timestamp over its first 48 bits and the version nibble set to 7.
    sqlx::query(
        "CREATE FUNCTION public.bench_uuid7(at timestamptz) RETURNS uuid LANGUAGE sql VOLATILE AS $$
           SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                  placing substring(int8send(floor(extract(epoch FROM at) * 1000)::bigint) FROM 3)
                  FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid $$",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO fulfil.promises (name, version, spec, digest, owner)
         SELECT 'svc-' || lpad(p::text, 2, '0'), '1', '{}', 'bench', 'team-' || (p % $2)
         FROM generate_series(0, $1 - 1) p",
    )
    .bind(PROMISES as i32)
    .bind(TEAMS as i32)
    .execute(pool)
    .await?;
    let total = runs as i64;
    let mut from = 0i64;
    while from < total {
        let to = (from + SEED_BATCH as i64).min(total);
        // Run i was created at now - 60 days * (total - i) / total. `r` is a
        // per-run random draw that decides promise, kind and status.
        sqlx::query(
            "WITH src AS (
                 SELECT i, now() - interval '60 days' * (($3 - i)::float8 / $3) AS at,
                        floor(20 * power(random(), 2))::int AS p, random() AS r, random() AS k
                 FROM generate_series($1, $2 - 1) i
             ), shaped AS (
                 SELECT i, at, bench_uuid7(at) AS run_id, bench_uuid7(at) AS request_id,
                        'svc-' || lpad(p::text, 2, '0') AS promise, 'team-' || (p % 8) AS owner,
                        CASE WHEN k < 0.97 THEN 'configure' WHEN k < 0.99 THEN 'reconcile'
                             ELSE 'delete' END AS kind,
                        CASE WHEN r < 0.005 THEN 'running' WHEN r < 0.045 THEN 'failed'
                             WHEN r < 0.055 THEN 'compensated' WHEN r < 0.06 THEN 'cancelled'
                             ELSE 'succeeded' END AS status
                 FROM src
             ), requests AS (
                 INSERT INTO fulfil.requests (id, promise, promise_version, params, status, run_id,
                                              created_at, updated_at)
                 SELECT request_id, promise, '1', '{}',
                        CASE status WHEN 'running' THEN 'running' WHEN 'succeeded' THEN 'succeeded'
                             ELSE 'failed' END,
                        run_id, at, at
                 FROM shaped
             )
             INSERT INTO fulfil.runs (id, request_id, promise, promise_version, kind, status,
                                      context, owner, history_seq, created_at, finished_at)
             SELECT run_id, request_id, promise, '1', kind, status, '{}', owner, 8, at,
                    CASE WHEN status <> 'running' THEN at + interval '40 seconds' END
             FROM shaped",
        )
        .bind(from)
        .bind(to)
        .bind(total)
        .execute(pool)
        .await?;
        from = to;
        eprintln!("  {to} runs");
    }
    // Steps, attempts and history: every live run and 5 % of the others.
    // A live run's step is retrying (a retry timer), waiting for an event,
    // an approval or a time (a wait row), or on a worker, by its id's hash.
    // Temporary tables live on one connection: do the rest there.
    let mut conn = pool.acquire().await?;
    sqlx::query(
        "CREATE TEMPORARY TABLE detailed AS
         SELECT id, status, created_at, abs(hashtext(id::text)) % 10 AS shape
         FROM fulfil.runs WHERE status = 'running' OR random() < 0.05",
    )
    .execute(&mut *conn)
    .await?;
    for statement in [
        "INSERT INTO fulfil.steps (run_id, step_id, position, status, attempt)
         SELECT d.id, s.step_id, s.position,
                CASE WHEN d.status <> 'running' OR s.position < 2 THEN 'succeeded'
                     WHEN d.shape < 2 THEN 'retrying'
                     WHEN d.shape < 6 THEN 'waiting'
                     ELSE 'running' END,
                1
         FROM detailed d,
              (VALUES ('plan', 0), ('provision', 1), ('verify', 2)) AS s(step_id, position)",
        "INSERT INTO fulfil.attempts (task_id, run_id, step_id, attempt, status, handler, queue, input,
                                      dispatched_at, started_at, finished_at, worker, deadline)
         SELECT gen_random_uuid(), s.run_id, s.step_id, 1,
                CASE s.status WHEN 'succeeded' THEN 'succeeded' WHEN 'retrying' THEN 'failed'
                     ELSE 'running' END,
                'noop', 'default', '{}', d.created_at + s.position * interval '10 s',
                d.created_at + s.position * interval '10 s' + interval '1 s',
                CASE WHEN s.status IN ('succeeded', 'retrying')
                     THEN d.created_at + s.position * interval '10 s' + interval '9 s' END,
                'worker-' || (abs(hashtext(s.run_id::text)) % 16),
                d.created_at + interval '1 hour'
         FROM fulfil.steps s JOIN detailed d ON d.id = s.run_id",
        "INSERT INTO fulfil.timers (run_id, step_id, kind, fire_at)
         SELECT run_id, step_id, 'retry', now() + interval '5 minutes'
         FROM fulfil.steps WHERE status = 'retrying'",
        "INSERT INTO fulfil.waits (task_id, run_id, step_id, attempt, kind, waiting_for)
         SELECT a.task_id, a.run_id, a.step_id, 1,
                (ARRAY['event', 'event', 'approval', 'sleep'])[d.shape - 1],
                jsonb_build_object('kind', (ARRAY['event', 'event', 'approval', 'sleep'])[d.shape - 1])
         FROM fulfil.steps s JOIN detailed d ON d.id = s.run_id
              JOIN fulfil.attempts a ON a.run_id = s.run_id AND a.step_id = s.step_id
         WHERE s.status = 'waiting'",
        "INSERT INTO fulfil.history (run_id, seq, type, step_id, attempt, actor, at)
         SELECT d.id, h.seq, h.type, h.step_id, h.attempt, 'engine', d.created_at + h.seq * interval '3 s'
         FROM detailed d,
              (VALUES (1, 'run.started', NULL, NULL), (2, 'step.dispatched', 'plan', 1),
                      (3, 'step.started', 'plan', 1), (4, 'step.succeeded', 'plan', 1),
                      (5, 'step.dispatched', 'provision', 1), (6, 'step.started', 'provision', 1),
                      (7, 'step.succeeded', 'provision', 1), (8, 'step.dispatched', 'verify', 1))
              AS h(seq, type, step_id, attempt)",
    ] {
        sqlx::query(statement).execute(&mut *conn).await?;
    }
    drop(conn);
    // The large run: the newest succeeded run gets 2,000 steps, each with
    // an attempt and two history events.
    let large: Uuid = sqlx::query_scalar(
        "SELECT id FROM fulfil.runs WHERE status = 'succeeded' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(pool)
    .await?;
    for statement in [
        "DELETE FROM fulfil.steps WHERE run_id = $1",
        "DELETE FROM fulfil.attempts WHERE run_id = $1",
        "DELETE FROM fulfil.history WHERE run_id = $1",
        "INSERT INTO fulfil.steps (run_id, step_id, position, status, attempt, outputs)
         SELECT $1, 'step-' || lpad(i::text, 4, '0'), i, 'succeeded', 1, '{\"ok\": true}'
         FROM generate_series(1, $2) i",
        "INSERT INTO fulfil.attempts (task_id, run_id, step_id, attempt, status, handler, queue, input,
                                      dispatched_at, started_at, finished_at, worker, deadline)
         SELECT gen_random_uuid(), $1, 'step-' || lpad(i::text, 4, '0'), 1, 'succeeded', 'noop',
                'default', '{\"n\": 1}', now(), now(), now(), 'worker-1', now()
         FROM generate_series(1, $2) i",
        "INSERT INTO fulfil.history (run_id, seq, type, step_id, attempt, actor)
         SELECT $1, i, CASE WHEN i % 2 = 1 THEN 'step.started' ELSE 'step.succeeded' END,
                'step-' || lpad(((i + 1) / 2)::text, 4, '0'), 1, 'engine'
         FROM generate_series(1, 2 * $2) i",
    ] {
        sqlx::query(statement)
            .bind(large)
            .bind(LARGE_RUN_STEPS)
            .execute(pool)
            .await?;
    }
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(RunId::from(large))
}

/// The query shapes, each measured `--samples` times.
async fn shapes(
    args: &BenchArgs,
    pool: &PgPool,
    http: &reqwest::Client,
    api: &str,
    large: RunId,
) -> anyhow::Result<Vec<Shape>> {
    let some_request: Uuid = sqlx::query_scalar(
        "SELECT request_id FROM fulfil.runs WHERE id < (SELECT id FROM fulfil.runs ORDER BY id DESC
         OFFSET $1 LIMIT 1) ORDER BY id DESC LIMIT 1",
    )
    .bind((args.runs / 2) as i64)
    .fetch_one(pool)
    .await?;
    let now = Utc::now();
    let day = |d: i64| now - TimeDelta::days(d);
    let filter = RunFilter::default;
    let waiting = |w| RunFilter {
        waiting_for: Some(w),
        ..filter()
    };
    let mut list: Vec<(&str, RunFilter, usize)> = vec![
        ("all", filter(), 0),
        (
            "status=running",
            RunFilter {
                status: Some(RunStatus::Running),
                ..filter()
            },
            0,
        ),
        (
            "status=failed",
            RunFilter {
                status: Some(RunStatus::Failed),
                ..filter()
            },
            0,
        ),
        (
            "status=cancelled",
            RunFilter {
                status: Some(RunStatus::Cancelled),
                ..filter()
            },
            0,
        ),
        (
            "promise=svc-07",
            RunFilter {
                promise: Some("svc-07".into()),
                ..filter()
            },
            0,
        ),
        (
            "request=<id>",
            RunFilter {
                request: Some(some_request.into()),
                ..filter()
            },
            0,
        ),
        (
            "kind=configure",
            RunFilter {
                kind: Some(RunKind::Configure),
                ..filter()
            },
            0,
        ),
        (
            "kind=delete",
            RunFilter {
                kind: Some(RunKind::Delete),
                ..filter()
            },
            0,
        ),
        (
            "owner=team-3",
            RunFilter {
                owner: Some("team-3".into()),
                ..filter()
            },
            0,
        ),
        ("waiting_for=retry", waiting(WaitingFor::Retry), 0),
        (
            "waiting_for=event",
            waiting(WaitingFor::Wait(WaitKind::Event)),
            0,
        ),
        (
            "waiting_for=approval",
            waiting(WaitingFor::Wait(WaitKind::Approval)),
            0,
        ),
        (
            "waiting_for=sleep",
            waiting(WaitingFor::Wait(WaitKind::Sleep)),
            0,
        ),
        ("waiting_for=worker", waiting(WaitingFor::Worker), 0),
        (
            "since=10d&until=9d",
            RunFilter {
                since: Some(day(10)),
                until: Some(day(9)),
                ..filter()
            },
            0,
        ),
        (
            "since=59d&until=58d (oldest)",
            RunFilter {
                since: Some(day(59)),
                until: Some(day(58)),
                ..filter()
            },
            0,
        ),
        (
            "status=failed&promise=svc-03",
            RunFilter {
                status: Some(RunStatus::Failed),
                promise: Some("svc-03".into()),
                ..filter()
            },
            0,
        ),
        (
            "owner=team-2&status=running",
            RunFilter {
                owner: Some("team-2".into()),
                status: Some(RunStatus::Running),
                ..filter()
            },
            0,
        ),
        (
            "promise=svc-19&kind=reconcile",
            RunFilter {
                promise: Some("svc-19".into()),
                kind: Some(RunKind::Reconcile),
                ..filter()
            },
            0,
        ),
        (
            "owner=team-1&waiting_for=approval",
            RunFilter {
                owner: Some("team-1".into()),
                ..waiting(WaitingFor::Wait(WaitKind::Approval))
            },
            0,
        ),
        (
            "status=cancelled&since=30d&until=29d",
            RunFilter {
                status: Some(RunStatus::Cancelled),
                since: Some(day(30)),
                until: Some(day(29)),
                ..filter()
            },
            0,
        ),
        ("all, page 20", filter(), 20),
        (
            "status=succeeded, page 20",
            RunFilter {
                status: Some(RunStatus::Succeeded),
                ..filter()
            },
            20,
        ),
        (
            "owner=team-3, page 10",
            RunFilter {
                owner: Some("team-3".into()),
                ..filter()
            },
            10,
        ),
    ];
    let mut shapes = Vec::new();
    for (name, mut filter, page) in list.drain(..) {
        // Deep pages: follow the cursor to the page, then time that page.
        for _ in 1..page {
            let (_, next) = list_page(http, api, &filter).await?;
            let Some(next) = next else { break };
            filter.cursor = Some(next);
        }
        let path = list_path(&filter);
        let (rows, _) = list_page(http, api, &filter).await?;
        let ms = time(args.samples, http, &format!("{api}{path}")).await?;
        let plan = fulfil_engine::inspect::explain_list_runs(pool, &filter).await?;
        let (chain, plan_ms) = describe(&plan);
        shapes.push(Shape {
            name: name.to_string(),
            path,
            rows,
            ms,
            plan: chain,
            plan_ms,
        });
    }
    for (name, path) in [
        ("run with 2,000 steps", format!("/v1/runs/{large}")),
        (
            "its history, first page (500)",
            format!("/v1/runs/{large}/history"),
        ),
    ] {
        let ms = time(args.samples, http, &format!("{api}{path}")).await?;
        shapes.push(Shape {
            name: name.to_string(),
            path,
            rows: 0,
            ms,
            plan: String::new(),
            plan_ms: None,
        });
    }
    Ok(shapes)
}

fn list_path(filter: &RunFilter) -> String {
    let mut query = url_pairs(filter);
    query.push(("limit", "50".into()));
    let pairs: Vec<String> = query
        .into_iter()
        .map(|(k, v)| format!("{k}={}", v.replace('+', "%2B").replace(':', "%3A")))
        .collect();
    format!("/v1/runs?{}", pairs.join("&"))
}

fn url_pairs(filter: &RunFilter) -> Vec<(&'static str, String)> {
    let time = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut pairs = Vec::new();
    if let Some(v) = filter.status {
        pairs.push(("status", v.to_string()));
    }
    if let Some(v) = &filter.promise {
        pairs.push(("promise", v.clone()));
    }
    if let Some(v) = filter.request {
        pairs.push(("request", v.to_string()));
    }
    if let Some(v) = filter.kind {
        pairs.push(("kind", v.to_string()));
    }
    if let Some(v) = &filter.owner {
        pairs.push(("owner", v.clone()));
    }
    if let Some(v) = filter.waiting_for {
        pairs.push(("waiting_for", v.to_string()));
    }
    if let Some(v) = filter.since {
        pairs.push(("since", time(v)));
    }
    if let Some(v) = filter.until {
        pairs.push(("until", time(v)));
    }
    if let Some(v) = &filter.cursor {
        pairs.push(("cursor", v.clone()));
    }
    pairs
}

/// One page through the API: its row count and next cursor.
async fn list_page(
    http: &reqwest::Client,
    api: &str,
    filter: &RunFilter,
) -> anyhow::Result<(usize, Option<String>)> {
    let url = format!("{api}{}", list_path(filter));
    let response = http.get(&url).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        bail!("GET {url}: {status} {body}");
    }
    Ok((
        body["items"].as_array().map_or(0, Vec::len),
        body["next_cursor"].as_str().map(str::to_string),
    ))
}

/// `samples` sequential GETs of `url` (after two unmeasured ones), in ms.
async fn time(samples: usize, http: &reqwest::Client, url: &str) -> anyhow::Result<Percentiles> {
    let mut ms = Vec::with_capacity(samples);
    for i in 0..samples + 2 {
        let started = Instant::now();
        let response = http.get(url).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            bail!("GET {url}: {status} {}", String::from_utf8_lossy(&body));
        }
        if i >= 2 {
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(Percentiles::of(&ms))
}

/// The node chain from the top of an `EXPLAIN (FORMAT JSON)` plan (first
/// children) and every index read anywhere in it; and the execution time.
fn describe(explain: &Value) -> (String, Option<f64>) {
    let root = &explain[0];
    let mut chain = Vec::new();
    let mut node = &root["Plan"];
    while let Some(kind) = node["Node Type"].as_str() {
        chain.push(kind.to_string());
        // Follow the rows, not an InitPlan (the array a waiting_for filter
        // reads first), which Postgres lists among the children too.
        let children = node["Plans"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        node = children
            .iter()
            .find(|c| {
                c["Parent Relationship"] != "InitPlan" && c["Parent Relationship"] != "SubPlan"
            })
            .unwrap_or(&Value::Null);
    }
    let mut indexes = Vec::new();
    collect_indexes(&root["Plan"], &mut indexes);
    let text = if indexes.is_empty() {
        chain.join(" > ")
    } else {
        format!("{} [{}]", chain.join(" > "), indexes.join(", "))
    };
    (text, root["Execution Time"].as_f64())
}

fn collect_indexes(node: &Value, out: &mut Vec<String>) {
    if let Some(index) = node["Index Name"].as_str()
        && !out.iter().any(|i| i == index)
    {
        out.push(index.to_string());
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        collect_indexes(child, out);
    }
}
