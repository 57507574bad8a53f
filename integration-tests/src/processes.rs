//! Helpers for crash tests: Fulfil roles as child processes (to SIGKILL and
//! restart), a private `nats-server`, an HTTP server that counts the side
//! effects of `http` steps, and robust reads of the test database.
//!
//! Everything listens on loopback only, and every wait is bounded in time.
//! Child processes are killed when their handle is dropped, so a failing test
//! leaves nothing running.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fulfil_core::ids::{RequestId, RunId};
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::TestStack;

/// A scratch directory (child logs, a NATS store). Removed by
/// [`ScratchDir::finish`]; kept, with its path printed, when the test fails
/// before that.
pub struct ScratchDir {
    path: PathBuf,
    keep: bool,
}

impl ScratchDir {
    pub fn new(label: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("fulfil-{label}-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep: true })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The test passed: remove the directory when dropped.
    pub fn finish(&mut self) {
        self.keep = false;
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {} for inspection", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A free TCP port on 127.0.0.1 (free when this returns; good enough for
/// tests).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(StdTcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The last `lines` lines of a log file, for failure messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Launches `fulfil serve --roles ...` children against a [`TestStack`]'s
/// database, NATS server and prefix, logging each to its own file.
pub struct RoleSpawner {
    bin: PathBuf,
    env: Vec<(String, String)>,
    logs: PathBuf,
}

impl RoleSpawner {
    /// `bin` is the `fulfil` binary (`env!("CARGO_BIN_EXE_fulfil")` in the
    /// cli package's tests); logs go to `logs`.
    pub fn new(bin: impl Into<PathBuf>, stack: &TestStack, logs: &Path) -> Self {
        let log_filter = std::env::var("FULFIL_CHILD_LOG").unwrap_or_else(|_| "warn".into());
        Self {
            bin: bin.into(),
            env: vec![
                ("DATABASE_URL".into(), stack.database_url.clone()),
                ("NATS_URL".into(), stack.nats_url.clone()),
                (
                    "FULFIL_NATS_PREFIX".into(),
                    stack.names.prefix().to_string(),
                ),
                ("RUST_LOG".into(), log_filter),
            ],
            logs: logs.to_path_buf(),
        }
    }

    /// Starts `fulfil serve --roles <roles> <extra...>` as `name`.
    pub fn spawn(&self, name: &str, roles: &str, extra: &[&str]) -> anyhow::Result<RoleProcess> {
        let log = self.logs.join(format!("{name}.log"));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(&self.bin);
        command
            // Access control is what `auth_tokens` and `rbac_matrix` test,
            // in process; these role processes serve without it.
            .args([
                "serve",
                "--roles",
                roles,
                "--db-pool",
                "6",
                "--auth",
                "none",
            ])
            .args(extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            // `fulfil` logs to stdout (tracing-subscriber's default).
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        Ok(RoleProcess {
            name: name.to_string(),
            child,
            log,
        })
    }
}

/// A child `fulfil` process; SIGKILLed when dropped.
pub struct RoleProcess {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl RoleProcess {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fails if the process has exited (a bad flag, a start-up error...),
    /// quoting its log.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; its log ends with:\n{}",
                self.name,
                log_tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// SIGKILL, then wait (at most 10 s) until the process is gone.
    pub async fn sigkill(&mut self) -> anyhow::Result<ExitStatus> {
        self.ensure_running()?;
        self.child.start_kill()?;
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .with_context(|| format!("{} did not die within 10s of SIGKILL", self.name))?
            .map_err(Into::into)
    }

    /// The last lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

/// `nats-server` from `NATS_SERVER_BIN`, `PATH`, or `/usr/sbin`.
pub fn nats_server_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return Some(bin.into());
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nats-server"))
                .find(|bin| bin.is_file())
        })
        .or_else(|| {
            ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"]
                .into_iter()
                .map(PathBuf::from)
                .find(|bin| bin.is_file())
        })
}

/// A private JetStream-enabled `nats-server` on 127.0.0.1 and a free port,
/// with its store in a directory of its own, that a test may kill and
/// restart (on the same port and store). Never the machine's shared server.
pub struct NatsServer {
    bin: PathBuf,
    pub port: u16,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl NatsServer {
    /// Starts the server; `dir` holds its store and logs.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = nats_server_bin().context("nats-server not found (set NATS_SERVER_BIN)")?;
        let mut server = Self {
            bin,
            port: free_port()?,
            store: dir.join("nats-store"),
            log: dir.join("nats-server.log"),
            child: None,
            starts: 0,
        };
        server.launch().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        // Ready once it accepts connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!(
                    "nats-server (start {}) did not listen on {} within 10s:\n{}",
                    self.starts,
                    self.port,
                    log_tail(&self.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .context("nats-server did not die within 10s of SIGKILL")??;
        }
        Ok(())
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.launch().await
    }
}

/// Counts, per `(run, step)` taken from the JSON body `{run, step}`, the
/// calls `http` steps make. `POST /effect` answers at once, `POST /slow`
/// after the configured delay.
#[derive(Clone)]
pub struct EffectServer {
    /// `http://127.0.0.1:<port>`
    pub url: String,
    state: Arc<EffectState>,
    _server: Arc<AbortOnDropHandle<()>>,
}

struct EffectState {
    slow: Duration,
    counts: Mutex<HashMap<(String, String), u32>>,
    calls: AtomicUsize,
    answered: AtomicUsize,
}

impl EffectState {
    fn record(&self, body: &[u8]) {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let key = (
            body["run"].as_str().unwrap_or("?").to_string(),
            body["step"].as_str().unwrap_or("?").to_string(),
        );
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default() += 1;
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

impl EffectServer {
    pub async fn start(slow: Duration) -> anyhow::Result<Self> {
        let state = Arc::new(EffectState {
            slow,
            counts: Mutex::default(),
            calls: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
        });
        let (fast_state, slow_state) = (state.clone(), state.clone());
        let app = axum::Router::new()
            .route(
                "/effect",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let state = fast_state.clone();
                    async move {
                        state.record(&body);
                        state.answered.fetch_add(1, Ordering::SeqCst);
                        axum::Json(json!({ "ok": true }))
                    }
                }),
            )
            .route(
                "/slow",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let state = slow_state.clone();
                    async move {
                        state.record(&body);
                        tokio::time::sleep(state.slow).await;
                        state.answered.fetch_add(1, Ordering::SeqCst);
                        axum::Json(json!({ "ok": true }))
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url,
            state,
            _server: Arc::new(AbortOnDropHandle::new(server)),
        })
    }

    /// Calls received so far.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Calls answered so far (a slow call whose caller died may never be).
    pub fn answered(&self) -> usize {
        self.state.answered.load(Ordering::SeqCst)
    }

    /// Calls per `(run, step)`.
    pub fn counts(&self) -> HashMap<(String, String), u32> {
        self.state
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A request the API accepted (202).
#[derive(Debug, Clone, Copy)]
pub struct Filed {
    pub request_id: RequestId,
    pub run_id: RunId,
    /// POSTs it took (more than one when the API failed meanwhile).
    pub tries: u32,
}

/// Files request `index` with `Idempotency-Key: <label>-<index>`, retrying
/// (same key, so never twice) on transport errors and 5xx for up to 60 s.
pub async fn file_request(
    stack: &TestStack,
    promise: &str,
    label: &str,
    index: usize,
) -> anyhow::Result<Filed> {
    let key = format!("{label}-{index}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let mut tries = 0;
    while Instant::now() < deadline {
        tries += 1;
        match stack
            .post_request(promise, json!({ "params": {} }), Some(&key))
            .await
        {
            Ok((202, _, body)) => {
                let id = |field: &str| body[field].as_str().unwrap_or_default().to_owned();
                return Ok(Filed {
                    request_id: id("request_id").parse()?,
                    run_id: id("run_id").parse()?,
                    tries,
                });
            }
            Ok((status, _, body)) if status >= 500 => last = format!("{status} {body}"),
            Ok((status, _, body)) => bail!("request {key} refused with {status}: {body}"),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("request {key} not accepted within 60s; last answer: {last}")
}

/// Files `n` requests, `concurrency` at a time, starting one every `pace`
/// at most; returns them in index order.
pub async fn file_requests(
    stack: &TestStack,
    promise: &str,
    label: &str,
    n: usize,
    concurrency: usize,
    pace: Duration,
) -> anyhow::Result<Vec<Filed>> {
    let started = Instant::now();
    let mut filed: Vec<(usize, Filed)> = futures::stream::iter(0..n)
        .map(|i| async move {
            let due = started + pace * u32::try_from(i).unwrap_or(u32::MAX);
            tokio::time::sleep_until(due.into()).await;
            file_request(stack, promise, label, i).await.map(|f| (i, f))
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    filed.sort_by_key(|(i, _)| *i);
    Ok(filed.into_iter().map(|(_, f)| f).collect())
}

/// Runs per status, retried through transient failures (such as a test
/// that terminates the database's sessions) for up to 10 s.
pub async fn run_statuses(pool: &PgPool) -> anyhow::Result<BTreeMap<String, i64>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows: Result<Vec<(String, i64)>, _> =
            sqlx::query_as("SELECT status, count(*) FROM fulfil.runs GROUP BY status")
                .fetch_all(pool)
                .await;
        match rows {
            Ok(rows) => return Ok(rows.into_iter().collect()),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub const TERMINAL: [&str; 4] = ["succeeded", "failed", "compensated", "cancelled"];

/// Runs in a terminal status.
pub fn finished(statuses: &BTreeMap<String, i64>) -> i64 {
    TERMINAL
        .iter()
        .filter_map(|s| statuses.get(*s))
        .copied()
        .sum()
}

/// Waits until `expected` runs are in a terminal status, or `timeout`;
/// returns the last statuses either way.
pub async fn wait_finished_runs(
    pool: &PgPool,
    expected: i64,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, i64>> {
    let deadline = Instant::now() + timeout;
    loop {
        let statuses = run_statuses(pool).await?;
        if finished(&statuses) >= expected || Instant::now() > deadline {
            return Ok(statuses);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Results applied more than once: `(run, step, attempt, count)` with more
/// than one `step.succeeded` event.
pub async fn double_applied(pool: &PgPool) -> anyhow::Result<Vec<(Uuid, String, i32, i64)>> {
    Ok(sqlx::query_as(
        "SELECT run_id, step_id, attempt, count(*) FROM fulfil.history
         WHERE type = 'step.succeeded' GROUP BY 1, 2, 3 HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await?)
}

/// Steps whose number of `step.succeeded` events is not exactly one:
/// `(run, step, count)`.
pub async fn not_completed_once(pool: &PgPool) -> anyhow::Result<Vec<(Uuid, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT s.run_id, s.step_id, count(h.seq) FROM fulfil.steps s
         LEFT JOIN fulfil.history h ON h.run_id = s.run_id AND h.step_id = s.step_id
                                    AND h.type = 'step.succeeded'
         GROUP BY 1, 2 HAVING count(h.seq) <> 1",
    )
    .fetch_all(pool)
    .await?)
}

/// `result.ignored` events per reason (duplicates the engine saw and
/// refused), for the report.
pub async fn ignored_results(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM fulfil.history WHERE type = 'result.ignored'")
            .fetch_one(pool)
            .await?,
    )
}

/// What unfinished runs are waiting for, for a failure message.
pub async fn diagnose(pool: &PgPool) -> String {
    let mut out = String::new();
    let queries = [
        (
            "unfinished runs' steps (status, attempt, count)",
            "SELECT s.status || ' attempt ' || s.attempt || ': ' || count(*) FROM fulfil.steps s
             JOIN fulfil.runs r ON r.id = s.run_id
             WHERE r.status NOT IN ('succeeded', 'failed', 'compensated', 'cancelled')
             GROUP BY s.status, s.attempt",
        ),
        (
            "their attempts (status, count)",
            "SELECT a.status || ': ' || count(*) FROM fulfil.attempts a
             JOIN fulfil.runs r ON r.id = a.run_id
             WHERE r.status NOT IN ('succeeded', 'failed', 'compensated', 'cancelled')
             GROUP BY a.status",
        ),
        (
            "outbox rows (fast, count)",
            "SELECT fast::text || ': ' || count(*) FROM fulfil.outbox GROUP BY fast",
        ),
        (
            "timers (kind, count)",
            "SELECT kind || ': ' || count(*) FROM fulfil.timers GROUP BY kind",
        ),
        (
            "a few unfinished runs",
            "SELECT id::text || ' ' || status FROM fulfil.runs
             WHERE status NOT IN ('succeeded', 'failed', 'compensated', 'cancelled') LIMIT 5",
        ),
    ];
    for (label, sql) in queries {
        let rows: Result<Vec<String>, _> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await;
        match rows {
            Ok(rows) => out.push_str(&format!("{label}: {rows:?}\n")),
            Err(e) => out.push_str(&format!("{label}: error {e}\n")),
        }
    }
    out
}

/// A Promise of `steps` sequential `http` steps, each `POST`ing
/// `{run: request id, step}` to `<effects>/<route>` (`effect` or `slow`).
pub fn http_chain_promise(name: &str, effects: &str, route: &str, steps: &[&str]) -> String {
    let mut yaml = format!(
        "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: {{ name: {name}, version: \"1\" }}\nspec:\n  workflow:\n    steps:\n"
    );
    for (i, step) in steps.iter().enumerate() {
        yaml.push_str(&format!(
            "      - id: {step}\n        uses: http\n        with:\n          method: POST\n          url: \"{effects}/{route}\"\n          body: {{ run: \"${{{{ request.id }}}}\", step: {step} }}\n          expect_status: 200\n"
        ));
        if i > 0 {
            yaml.push_str(&format!("        needs: [{}]\n", steps[i - 1]));
        }
    }
    yaml
}

/// Messages in the stack's dead-letter stream (a result naming no known
/// task lands there, for one).
pub async fn dead_letters(stack: &TestStack) -> anyhow::Result<u64> {
    let mut stream = stack
        .js
        .get_stream(stack.names.dead_letter_stream())
        .await?;
    Ok(stream.info().await?.state.messages)
}

/// Results pulled by engines and not yet acknowledged (after an engine was
/// killed: the results it held, which come back after the consumer's
/// `ack_wait`).
pub async fn engine_ack_pending(stack: &TestStack) -> anyhow::Result<usize> {
    let stream = stack.js.get_stream(stack.names.results_stream()).await?;
    let mut consumer = stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
            &stack.names.engine_consumer(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("getting the engine consumer: {e}"))?;
    Ok(consumer.info().await?.num_ack_pending)
}
