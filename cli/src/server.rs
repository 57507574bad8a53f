//! `fulfil dev`, `serve` and `migrate`: wiring the roles together.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use fulfil_bus::NatsNames;
use fulfil_core::Vars;
use fulfil_engine::{Engine, EngineConfig, db, promises};
use fulfil_worker::builtin::{Exec, ExecAllowList};
use fulfil_worker::{Handlers, SecretSources, SecretValue, StaticSecrets, Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::ServerArgs;
use crate::report::Reaching;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/fulfil";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Api,
    Engine,
    Worker,
}

/// `--auth`: whether callers need a bearer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthChoice {
    /// API tokens (and OIDC JWTs where configured) on every `/v1` route.
    Tokens,
    /// No authentication: callers are who `Fulfil-Actor` says.
    None,
}

/// Refuses to serve without authentication on an address other machines
/// can reach: `dev` is for one machine.
pub fn check_dev_binds(args: &ServerArgs) -> anyhow::Result<()> {
    for (flag, addr) in [
        ("--http-addr", &args.http_addr),
        ("--grpc-addr", &args.grpc_addr),
    ] {
        let loopback = match addr.parse::<std::net::SocketAddr>() {
            Ok(addr) => addr.ip().is_loopback(),
            Err(_) => addr
                .rsplit_once(':')
                .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost")),
        };
        if !loopback {
            bail!(
                "{flag} {addr} is not a loopback address, and `dev` runs with --auth none: \
                 anyone who can reach it could act as anyone. Bind 127.0.0.1, or pass --auth tokens"
            );
        }
    }
    Ok(())
}

/// The API's authentication, and the bootstrap admin token installed from
/// `FULFIL_BOOTSTRAP_TOKEN` (read here, never logged).
async fn api_auth(
    choice: AuthChoice,
    engine: &Engine,
    oidc: &crate::oidc_args::OidcArgs,
) -> anyhow::Result<fulfil_api::auth::Auth> {
    // Checked whatever the mode, so half-given OIDC flags are an error,
    // not silently nothing.
    let oidc = oidc.config()?;
    // An empty value is unset, as for every variable Fulfil reads.
    if let Some(secret) = std::env::var("FULFIL_BOOTSTRAP_TOKEN")
        .ok()
        .filter(|s| !s.is_empty())
    {
        let info = fulfil_engine::tokens::bootstrap(engine.pool(), &secret)
            .await
            .context("installing FULFIL_BOOTSTRAP_TOKEN")?;
        info!(name = %info.name, team = %info.team, "bootstrap admin token installed");
    }
    Ok(match choice {
        AuthChoice::None => {
            if oidc.is_some() {
                tracing::warn!("--auth none: the OIDC flags are ignored, callers are not checked");
            }
            fulfil_api::auth::Auth::off()
        }
        AuthChoice::Tokens => {
            let verifier = match oidc {
                None => None,
                Some(config) => {
                    let (issuer, jwks) = (config.issuer.clone(), config.jwks.to_string());
                    let verifier = fulfil_api::auth::oidc::OidcVerifier::new(config)
                        .await
                        .context("starting OIDC (--oidc-*)")?;
                    info!(%issuer, %jwks, "OIDC JWTs accepted");
                    Some(std::sync::Arc::new(verifier))
                }
            };
            fulfil_api::auth::Auth::tokens(engine.pool().clone(), verifier)
        }
    })
}

pub async fn migrate(database_url: &str, create: bool) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let telemetry = crate::telemetry::init(false);
    let migrated = migrate_database(database_url, create).await;
    telemetry.shutdown().await;
    migrated
}

async fn migrate_database(database_url: &str, create: bool) -> anyhow::Result<()> {
    let reaching = || Reaching::Postgres(redact(database_url));
    if create {
        if db::ensure_database(database_url)
            .await
            .with_context(reaching)?
        {
            info!("created database");
        }
    } else {
        probe_postgres(database_url).await.with_context(reaching)?;
    }
    let pool = db::connect(database_url, 2).await.with_context(reaching)?;
    db::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}

pub async fn dev(mut args: ServerArgs) -> anyhow::Result<()> {
    if args.workflows.is_none() && Path::new("workflows").is_dir() {
        args.workflows = Some("workflows".into());
    }
    if args.auth.is_none() {
        args.auth = Some(AuthChoice::None);
    }
    if args.auth == Some(AuthChoice::None) {
        check_dev_binds(&args)?;
    }
    start(args, &[Role::Api, Role::Engine, Role::Worker], true).await
}

pub async fn serve(mut args: ServerArgs, roles: &[Role]) -> anyhow::Result<()> {
    args.auth = args.auth.or(Some(AuthChoice::Tokens));
    if roles.is_empty() {
        bail!("--roles is empty; name at least one of api, engine, worker");
    }
    start(args, roles, false).await
}

async fn start(args: ServerArgs, roles: &[Role], create_database: bool) -> anyhow::Result<()> {
    // Before telemetry: the OTLP exporter's HTTP client needs the provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let telemetry = crate::telemetry::init(args.log_json);
    let outcome = start_roles(args, roles, create_database).await;
    // Spans of the last moments (a failed start included) reach the collector.
    telemetry.shutdown().await;
    outcome
}

async fn start_roles(
    args: ServerArgs,
    roles: &[Role],
    create_database: bool,
) -> anyhow::Result<()> {
    let names = NatsNames::new(args.nats_prefix.clone())?;
    let auth = args.auth.unwrap_or(AuthChoice::Tokens);
    if auth == AuthChoice::None && roles.contains(&Role::Api) {
        if create_database {
            info!("authentication is off (dev): callers are who Fulfil-Actor says");
        } else {
            tracing::warn!(
                "authentication is OFF (--auth none): anyone who reaches the API can act as anyone"
            );
        }
    }
    for queue in &args.queues {
        if !fulfil_core::wire::is_valid_queue_name(queue) {
            bail!("invalid queue name {queue:?}: use letters, digits, '-' and '_'");
        }
    }
    let reaching = || Reaching::Postgres(redact(&args.database_url));
    if create_database {
        if db::ensure_database(&args.database_url)
            .await
            .with_context(reaching)?
        {
            info!(database = %redact(&args.database_url), "created database");
        }
    } else {
        probe_postgres(&args.database_url)
            .await
            .with_context(reaching)?;
    }
    let pool = db::connect(&args.database_url, args.db_pool)
        .await
        .with_context(reaching)?;
    db::migrate(&pool).await.context("applying migrations")?;
    let nats = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| Reaching::Nats(redact(&args.nats_url)))?;
    let js = async_nats::jetstream::new(nats.clone());
    fulfil_bus::streams::ensure_streams(&js, &names)
        .await
        .context("creating JetStream streams")?;

    let vars = read_vars(args.vars_file.as_deref())?;
    info!(vars = ?vars.names(), "vars exposed to Promises");
    let engine_id = format!("{}-{}", hostname(), std::process::id());
    let engine = Engine::with_vars(pool, names.clone(), engine_id.clone(), vars);
    // Tasks this process commits (requests in the API, results in the
    // engine) go to NATS straight after commit; the relay only sweeps.
    engine.start_fast_publisher(js.clone());
    if let Some(dir) = &args.workflows {
        apply_workflows(&engine, &js, dir).await?;
    }

    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    // Served on the API port by the API role; elsewhere only if asked.
    crate::telemetry::start_metrics(args.metrics_addr, shutdown.clone()).await?;
    let mut tasks = tokio::task::JoinSet::new();
    if roles.contains(&Role::Api) {
        let listener = tokio::net::TcpListener::bind(&args.http_addr)
            .await
            .with_context(|| format!("binding the HTTP API to {}", args.http_addr))?;
        info!(addr = %args.http_addr, "API listening");
        info!("web console at http://{}/ui", args.http_addr);
        let state = fulfil_api::ApiState {
            auth: api_auth(auth, &engine, &args.oidc).await?,
            max_body_bytes: args.max_body,
            console: match &args.console_dir {
                Some(dir) => fulfil_api::console::ConsoleFiles::Directory(dir.clone()),
                None => fulfil_api::console::ConsoleFiles::Embedded,
            },
            ..fulfil_api::ApiState::new(engine.clone(), Some(nats.clone()))
        };
        let grpc_listener = tokio::net::TcpListener::bind(&args.grpc_addr)
            .await
            .with_context(|| format!("binding the gRPC API to {}", args.grpc_addr))?;
        info!(addr = %args.grpc_addr, "gRPC API listening");
        let (grpc_state, stop) = (state.clone(), shutdown.clone());
        tasks.spawn(async move {
            fulfil_grpc::serve(
                grpc_listener,
                grpc_state,
                async move { stop.cancelled().await },
            )
            .await
            .context("gRPC API")
        });
        let stop = shutdown.clone();
        tasks.spawn(async move {
            fulfil_api::serve(listener, state, async move { stop.cancelled().await })
                .await
                .context("HTTP API")
        });
    }
    if roles.contains(&Role::Engine) {
        let (engine, js, stop) = (engine.clone(), js.clone(), shutdown.clone());
        let event_retention = args.event_retention;
        let schedule_grace = args.schedule_grace;
        let run_retention = args.retention;
        tasks.spawn(async move {
            engine
                .run(
                    js,
                    EngineConfig {
                        event_retention,
                        schedule_grace,
                        run_retention,
                        ..EngineConfig::default()
                    },
                    stop,
                )
                .await
                .context("engine")
        });
    }
    if roles.contains(&Role::Worker) {
        // `create_database` is `dev`: it alone adds the examples' defaults.
        let (exec_allow, secrets) = worker_exec_and_secrets(&args, create_database)?;
        info!(commands = ?exec_allow.names().collect::<Vec<_>>(), "exec may run");
        let mut handlers = Handlers::with_builtins(nats.clone());
        handlers.register(Exec::NAME, Exec::new(exec_allow));
        let config = WorkerConfig {
            worker_id: engine_id,
            queues: args.queues.clone(),
            concurrency: args.worker_concurrency,
            drain_timeout: Duration::from_secs(30),
            ack_wait: args.worker_ack_wait,
        };
        let worker = Worker::new(js.clone(), names.clone(), handlers, config).with_secrets(secrets);
        let stop = shutdown.clone();
        tasks.spawn(async move { worker.run(stop).await.context("worker") });
    }
    info!(?roles, prefix = %names.prefix(), "fulfil running; Ctrl-C to stop");
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.context("a role panicked").and_then(|r| r);
        if let Err(e) = result {
            error!(error = %format!("{e:#}"), "a role stopped; shutting down the others");
            first_error.get_or_insert(e);
        }
        shutdown.cancel();
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The secret `fulfil dev` supplies when the operator does not: the
/// Postgres server Fulfil itself runs on, where the `postgres-database`
/// example creates its databases.
pub const DEV_POSTGRES_SECRET: &str = "postgres_admin_url";

/// What a worker's `exec` steps may run (`--exec-allow`; under `dev` also
/// `psql` and `<workflows>/scripts/*`) and where its secrets come from
/// (`--secrets-dir`, the environment, then under `dev` its defaults).
fn worker_exec_and_secrets(
    args: &ServerArgs,
    dev: bool,
) -> anyhow::Result<(ExecAllowList, SecretSources)> {
    let mut secrets = SecretSources::standard(args.secrets_dir.clone());
    let mut allowed = ExecAllowList::new();
    if dev {
        allowed.allow_if_found("psql");
        if let Some(scripts) = args
            .workflows
            .as_ref()
            .map(|dir| dir.join("scripts"))
            .filter(|dir| dir.is_dir())
        {
            allowed.allow_scripts_in(&scripts)?;
        }
        secrets = secrets.then(StaticSecrets::new("the defaults of `fulfil dev`").with(
            DEV_POSTGRES_SECRET,
            SecretValue::new(args.database_url.clone()),
        ));
    }
    // The operator's entries win over the defaults of the same name.
    let entries = args.exec_allow.iter().filter(|e| !e.trim().is_empty());
    allowed.extend(ExecAllowList::from_entries(entries).context("--exec-allow")?);
    Ok((allowed, secrets))
}

/// One direct connection: a pool only says "timed out" after 10 s when the
/// server is down, this says why at once. (`ensure_database` connects
/// directly already, so it stands in for this where the database is made.)
async fn probe_postgres(url: &str) -> anyhow::Result<()> {
    use sqlx::ConnectOptions;
    let connection = db::options(url)?.connect().await?;
    let _ = sqlx::Connection::close(connection).await;
    Ok(())
}

/// The vars of `--vars-file`, overridden by `FULFIL_VAR_*` variables.
fn read_vars(file: Option<&Path>) -> anyhow::Result<Vars> {
    let from_file = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the vars file {}", path.display()))?;
            Vars::from_file_text(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => Vars::default(),
    };
    Ok(from_file.overridden_by(Vars::from_env(std::env::vars())?))
}

/// Applies every Promise file of `dir`. An invalid file stops the start;
/// a Promise whose trigger subject NATS cannot capture (another stream on
/// the server holds it, e.g. a second installation) is not applied and
/// said so, and the others are.
async fn apply_workflows(
    engine: &Engine,
    js: &async_nats::jetstream::Context,
    dir: &Path,
) -> anyhow::Result<()> {
    let files = crate::client::promise_files(dir)?;
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let context = engine.validation_context();
        let parsed =
            tokio::task::spawn_blocking(move || fulfil_core::Promise::parse_with(&text, &context))
                .await
                .context("validating a Promise")?;
        match parsed {
            Ok(promise) => {
                let subjects: Vec<String> = promise
                    .inbound_subjects()
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                if let Err(e) =
                    fulfil_engine::events::capture_subjects(js, engine.names(), &subjects).await
                {
                    error!(file = %file.display(), name = %promise.metadata.name, error = %e,
                           "Promise not applied: its trigger subjects cannot be consumed");
                    continue;
                }
                let outcome = promises::apply(engine.pool(), &promise)
                    .await
                    .with_context(|| format!("applying {}", file.display()))?;
                engine.promises().forget_head(&promise.metadata.name);
                info!(file = %file.display(), name = %promise.metadata.name,
                      version = %promise.metadata.version, ?outcome, "Promise applied");
            }
            Err(errors) => problems.push(format!("{}: {errors}", file.display())),
        }
    }
    if !problems.is_empty() {
        bail!("invalid Promise files:\n{}", problems.join("\n"));
    }
    Ok(())
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        error!(error = %e, "cannot listen for SIGTERM");
                        let _ = tokio::signal::ctrl_c().await;
                        shutdown.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        info!("shutting down");
        shutdown.cancel();
    });
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "fulfil".into())
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((auth, host)) => match auth.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => url.to_string(),
            },
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}
