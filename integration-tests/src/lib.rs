//! Test harness: a whole Fulfil stack (API, engines, workers) in this process,
//! against the real Postgres and NATS named by `DATABASE_URL` and `NATS_URL`
//! (loopback defaults). Every stack gets its own database and NATS prefix, so
//! tests run in parallel on one server, and removes both when stopped.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fulfil_bus::NatsNames;
use fulfil_core::ids::RunId;
use fulfil_engine::{Engine, EngineConfig, db};
use fulfil_worker::builtin::{Exec, ExecAllowList};
use fulfil_worker::{Handlers, SecretSources, SecretValue, StaticSecrets, Worker, WorkerConfig};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod auth;
pub mod node;
pub mod processes;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_string())
}

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| DEFAULT_NATS_URL.to_string())
}

pub use fulfil_engine::db::with_database;

/// Shape of the stack a test wants.
pub struct StackOptions {
    pub engines: usize,
    pub engine_config: EngineConfig,
    pub worker_concurrency: usize,
    /// Adds the test's own handlers to the built-ins.
    pub handlers: Box<dyn Fn(&mut Handlers) + Send>,
    /// Run an in-process worker (false when the test runs its own).
    pub worker: bool,
    /// Run in-process engines (false when the test runs engine processes).
    pub in_process_engines: bool,
    /// NATS server to use instead of [`nats_url`] (a test's private server).
    pub nats_url: Option<String>,
    /// Vars the stack's Promises may read (none by default).
    pub vars: fulfil_core::Vars,
    /// What the in-process worker's `exec` may run: by default what `fulfil
    /// dev` allows (see [`example_exec_allow`]), so the examples in
    /// `workflows/` run as they do there.
    pub exec_allow: ExecAllowList,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            engines: 1,
            engine_config: EngineConfig {
                poll_interval: Duration::from_millis(200),
                ..EngineConfig::default()
            },
            worker_concurrency: 32,
            handlers: Box::new(|_| {}),
            worker: true,
            in_process_engines: true,
            nats_url: None,
            vars: fulfil_core::Vars::default(),
            exec_allow: example_exec_allow(),
        }
    }
}

/// The secret the `postgres-database` example reads its server from; a
/// stack's worker has it as the stack's own database URL, as `fulfil dev`
/// has its own.
pub const POSTGRES_ADMIN_SECRET: &str = "postgres_admin_url";

/// `workflows/` of this repository.
pub fn workflows_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows")
}

/// Runs the `fulfil` binary `bin` (a CLI test's `CARGO_BIN_EXE_fulfil`)
/// with `args` against the stack's API, from the repository root (where
/// the README's commands run), without blocking the test's runtime (which
/// runs the stack's engine).
pub async fn run_cli(
    bin: &str,
    stack: &TestStack,
    args: &[&str],
) -> std::io::Result<std::process::Output> {
    tokio::process::Command::new(bin)
        .args(args)
        .env("FULFIL_API_URL", &stack.api)
        .current_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .kill_on_drop(true)
        .output()
        .await
}

/// A command's stdout then stderr, as text.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// What `fulfil dev` lets `exec` run: `psql`, and the scripts of
/// `workflows/scripts/`.
pub fn example_exec_allow() -> ExecAllowList {
    let mut allowed = ExecAllowList::new();
    allowed.allow_if_found("psql");
    // The scripts are part of this repository: missing, the examples could
    // not run, which the tests using them report.
    let _ = allowed.allow_scripts_in(&workflows_dir().join("scripts"));
    allowed
}

/// A running stack; call [`TestStack::stop`] at the end of the test.
pub struct TestStack {
    pub database: String,
    pub database_url: String,
    pub pool: PgPool,
    pub names: NatsNames,
    /// The NATS server this stack uses (for child processes).
    pub nats_url: String,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    /// Handle of the first engine; the API uses it.
    pub engine: Engine,
    pub engine_ids: Vec<String>,
    pub api: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    engine_config: EngineConfig,
}

impl TestStack {
    /// Starts one more in-process engine (its loops: relay, result applier,
    /// inbound events, timers) on the stack's database and NATS, as an
    /// engine process started later would; it stops with the stack.
    pub fn start_engine(&mut self) {
        let id = format!("engine-{}", self.engine_ids.len());
        let engine = Engine::with_vars(
            self.pool.clone(),
            self.names.clone(),
            id.clone(),
            fulfil_core::Vars::default(),
        );
        engine.start_fast_publisher(self.js.clone());
        self.engine_ids.push(id);
        let (js, config, stop) = (
            self.js.clone(),
            self.engine_config.clone(),
            self.shutdown.clone(),
        );
        self.tasks
            .spawn(async move { Ok(engine.run(js, config, stop).await?) });
    }

    /// The run's history once it holds an event of type `kind`, polling
    /// for at most `wait`.
    pub async fn wait_for_event(
        &self,
        run: fulfil_core::ids::RunId,
        kind: &str,
        wait: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + wait;
        loop {
            let history = self.history(run).await?;
            if history.iter().any(|e| e["type"] == kind) {
                return Ok(history);
            }
            anyhow::ensure!(Instant::now() < deadline, "no {kind} in {history:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes the next task of `queue` as a worker the test controls would,
    /// waiting at most `wait`, and acknowledges it.
    pub async fn take_task(
        &self,
        queue: &str,
        wait: Duration,
    ) -> anyhow::Result<fulfil_core::wire::TaskMessage> {
        use futures::StreamExt;
        let consumer = self
            .js
            .get_stream(self.names.tasks_stream())
            .await?
            .get_or_create_consumer(
                &format!("rogue_{queue}"),
                async_nats::jetstream::consumer::pull::Config {
                    durable_name: Some(format!("rogue_{queue}")),
                    filter_subject: self.names.task_subject(queue),
                    ..Default::default()
                },
            )
            .await?;
        let mut messages = consumer.messages().await?;
        let message = tokio::time::timeout(wait, messages.next())
            .await
            .with_context(|| format!("no task on queue {queue} within {wait:?}"))?
            .ok_or_else(|| anyhow::anyhow!("task stream ended"))?
            .map_err(|e| anyhow::anyhow!("pulling a task: {e}"))?;
        message.ack().await.map_err(anyhow::Error::from_boxed)?;
        Ok(serde_json::from_slice(&message.payload)?)
    }

    /// Publishes `body` as JSON on `subject` and waits for the stream to
    /// store it: how a test plays a worker or a rogue peer.
    pub async fn publish_json(
        &self,
        subject: String,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<()> {
        self.js
            .publish(subject, serde_json::to_vec(body)?.into())
            .await?
            .await?;
        Ok(())
    }

    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let suffix = Uuid::now_v7().simple().to_string();
        let database = format!("fulfil_test_{}", &suffix[suffix.len() - 16..]);
        let database_url = with_database(&database_url(), &database);
        db::ensure_database(&database_url).await.with_context(|| {
            format!(
                "creating test database (is Postgres up at {}?)",
                database_url
            )
        })?;
        let pool = db::connect(&database_url, 20).await?;
        db::migrate(&pool).await?;
        let names = NatsNames::new(format!("t{}", &suffix[suffix.len() - 12..]))?;
        let nats_url = options.nats_url.clone().unwrap_or_else(nats_url);
        let nats = async_nats::connect(&nats_url)
            .await
            .with_context(|| format!("connecting to NATS at {nats_url} (is it up?)"))?;
        let js = async_nats::jetstream::new(nats.clone());
        fulfil_bus::streams::ensure_streams(&js, &names).await?;

        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut engine_ids = Vec::new();
        let engine = Engine::with_vars(
            pool.clone(),
            names.clone(),
            "engine-0",
            options.vars.clone(),
        );
        engine.start_fast_publisher(js.clone());
        if options.in_process_engines {
            for i in 0..options.engines.max(1) {
                // Each engine has its own pool and NATS connection, as a
                // separate process would.
                let (e, js_i) = if i == 0 {
                    (engine.clone(), js.clone())
                } else {
                    let pool_i = db::connect(&database_url, 10).await?;
                    let nats_i = async_nats::connect(&nats_url).await?;
                    let js_i = async_nats::jetstream::new(nats_i);
                    let engine_i = Engine::with_vars(
                        pool_i,
                        names.clone(),
                        format!("engine-{i}"),
                        options.vars.clone(),
                    );
                    engine_i.start_fast_publisher(js_i.clone());
                    (engine_i, js_i)
                };
                engine_ids.push(e.id().to_string());
                let (config, stop) = (options.engine_config.clone(), shutdown.clone());
                tasks.spawn(async move { Ok(e.run(js_i, config, stop).await?) });
            }
        }
        if options.worker {
            let mut handlers = Handlers::with_builtins(nats.clone());
            handlers.register(Exec::NAME, Exec::new(options.exec_allow.clone()));
            (options.handlers)(&mut handlers);
            let secrets =
                SecretSources::standard(None).then(StaticSecrets::new("the test stack").with(
                    POSTGRES_ADMIN_SECRET,
                    SecretValue::new(database_url.clone()),
                ));
            let worker = Worker::new(
                js.clone(),
                names.clone(),
                handlers,
                WorkerConfig {
                    worker_id: "test-worker".into(),
                    concurrency: options.worker_concurrency,
                    drain_timeout: Duration::from_secs(5),
                    ..WorkerConfig::default()
                },
            )
            .with_secrets(secrets);
            let stop = shutdown.clone();
            tasks.spawn(async move { Ok(worker.run(stop).await?) });
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api = format!("http://{}", listener.local_addr()?);
        let state = fulfil_api::ApiState::new(engine.clone(), Some(nats.clone()));
        let stop = shutdown.clone();
        tasks.spawn(async move {
            fulfil_api::serve(listener, state, async move { stop.cancelled().await }).await?;
            Ok(())
        });
        Ok(Self {
            database,
            database_url,
            pool,
            names,
            nats_url,
            nats,
            js,
            engine,
            engine_ids,
            api,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            shutdown,
            tasks,
            engine_config: options.engine_config,
        })
    }

    /// Stops every role, then drops what its runs of the `postgres-database`
    /// example created on the server, deletes the streams and drops the
    /// database.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let deadline = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(joined) = self.tasks.join_next().await {
                joined??;
            }
            anyhow::Ok(())
        })
        .await;
        self.drop_example_databases().await;
        fulfil_bus::streams::delete_streams(&self.js, &self.names).await;
        self.pool.close().await;
        db::drop_database(&database_url(), &self.database).await?;
        deadline.context("roles did not stop within 15s")??;
        Ok(())
    }

    /// Databases are the server's, not this stack's: those the
    /// `postgres-database` example created in this stack's runs (its
    /// `provision` step says `created: true`) are dropped by the example's
    /// own script, which drops only a database its role owns. Best effort:
    /// a failure leaves a database behind, never fails the test.
    async fn drop_example_databases(&self) {
        let created: Vec<(String, String)> = sqlx::query_as(
            "SELECT s.outputs->>'database', s.outputs->>'owner_role' \
               FROM fulfil.steps s JOIN fulfil.runs r ON r.id = s.run_id \
              WHERE r.promise = 'postgres-database' AND s.step_id = 'provision' \
                AND s.outputs->>'created' = 'true' \
                AND s.outputs->>'database' IS NOT NULL AND s.outputs->>'owner_role' IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        let script = workflows_dir().join("scripts/postgres-database.sh");
        for (database, role) in created {
            let dropped = tokio::process::Command::new(&script)
                .args(["drop", &database, &role])
                .env("PGURL", &self.database_url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status();
            let _ = tokio::time::timeout(Duration::from_secs(30), dropped).await;
        }
    }

    /// `PUT /v1/promises/{name}` with a YAML body; returns status and body.
    pub async fn put_promise(&self, yaml: &str) -> anyhow::Result<(u16, Value)> {
        let name = serde_json::from_value::<Value>(yaml_name(yaml)).unwrap_or(Value::Null);
        let name = name.as_str().unwrap_or("unnamed");
        let response = self
            .http
            .put(format!("{}/v1/promises/{name}", self.api))
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// Applies a Promise and fails unless it was accepted.
    pub async fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        let (status, body) = self.put_promise(yaml).await?;
        if status != 200 && status != 201 {
            bail!("Promise refused with {status}: {body}");
        }
        Ok(())
    }

    /// `POST /v1/promises/{name}/requests`; returns status, headers and body.
    pub async fn post_request(
        &self,
        promise: &str,
        body: Value,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Value)> {
        let mut request = self
            .http
            .post(format!("{}/v1/promises/{promise}/requests", self.api))
            .json(&body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Ok((status, headers, response.json().await?))
    }

    /// Files a request and returns its run id, failing unless it was accepted.
    pub async fn request(&self, promise: &str, params: Value) -> anyhow::Result<RunId> {
        let (status, _, body) = self
            .post_request(promise, json!({ "params": params }), None)
            .await?;
        if status != 202 {
            bail!("request refused with {status}: {body}");
        }
        Ok(body["run_id"].as_str().unwrap_or_default().parse()?)
    }

    /// `DELETE /v1/requests/{id}`; returns status and body.
    pub async fn delete_request(&self, request_id: &str) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .delete(format!("{}/v1/requests/{request_id}", self.api))
            .send()
            .await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let response = self.http.get(format!("{}{path}", self.api)).send().await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    pub async fn run(&self, run_id: RunId) -> anyhow::Result<Value> {
        let (status, body) = self.get(&format!("/v1/runs/{run_id}")).await?;
        if status != 200 {
            bail!("GET run {run_id}: {status} {body}");
        }
        Ok(body)
    }

    /// Polls until the run is in a terminal status; returns the run.
    pub async fn wait_finished(&self, run_id: RunId, timeout: Duration) -> anyhow::Result<Value> {
        let started = Instant::now();
        loop {
            let run = self.run(run_id).await?;
            if matches!(
                run["status"].as_str(),
                Some("succeeded" | "failed" | "compensated" | "cancelled")
            ) {
                return Ok(run);
            }
            if started.elapsed() > timeout {
                bail!("run {run_id} not finished after {timeout:?}: {run:#}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The run's whole history.
    pub async fn history(&self, run_id: RunId) -> anyhow::Result<Vec<Value>> {
        let (status, body) = self.get(&format!("/v1/runs/{run_id}/history")).await?;
        if status != 200 {
            bail!("GET history {run_id}: {status} {body}");
        }
        Ok(body["items"].as_array().cloned().unwrap_or_default())
    }

    /// Rows of a table in this stack's database, for "nothing stored" checks.
    pub async fn count(&self, table: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM fulfil.{table}"
        )))
        .fetch_one(&self.pool)
        .await?)
    }
}

fn yaml_name(yaml: &str) -> Value {
    fulfil_core::document::read(yaml)
        .ok()
        .map(|v| v["metadata"]["name"].clone())
        .unwrap_or(Value::Null)
}

/// Step ids of a run in the order they finished (by `finished_at`).
pub fn finish_order(run: &Value) -> Vec<String> {
    let mut steps: Vec<(String, String)> = run["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let last = s["attempts"].as_array()?.last()?;
            Some((
                last["finished_at"].as_str()?.to_string(),
                s["id"].as_str()?.to_string(),
            ))
        })
        .collect();
    steps.sort();
    steps.into_iter().map(|(_, id)| id).collect()
}
