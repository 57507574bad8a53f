//! `fulfil`: every server role and the operator CLI in one binary.
//!
//! Server commands (`dev`, `serve`, `migrate`) talk to Postgres and NATS;
//! operator commands (`apply`, `promise`, `request`, `run`, `event`,
//! `dead-letter`, `schedule`, `rollout`, `backstage`) talk to the HTTP API.

mod backstage;
mod bench;
mod client;
mod events;
mod oidc_args;
mod output;
mod policies;
mod report;
mod rollouts;
mod schedules;
mod server;
mod telemetry;
mod tokens;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// glibc's allocator spent a third of the engine's CPU under load (perf:
/// `_int_malloc`, `unlink_chunk`, `malloc_consolidate` across the runtime's
/// threads); mimalloc's per-thread heaps do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "fulfil",
    version,
    about = "Durable workflow engine for platform orchestration",
    long_about = "Fulfil turns requests against platform Promises into durable DAG workflows on \
                  Postgres and NATS JetStream.\n\nStart everything locally with `fulfil dev`, then \
                  file a request with `fulfil request create postgres-database --param name=orders --wait`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run API, engine and worker in one process, with the Promises under
    /// ./workflows applied; creates the database if it does not exist.
    Dev(ServerArgs),
    /// Run the chosen roles against shared Postgres and NATS.
    Serve {
        /// Comma-separated roles: api, engine, worker.
        #[arg(
            long,
            env = "FULFIL_ROLES",
            value_delimiter = ',',
            default_value = "api,engine,worker"
        )]
        roles: Vec<server::Role>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long, env = "DATABASE_URL", default_value = server::DEFAULT_DATABASE_URL)]
        database_url: String,
        /// Create the database first if it does not exist.
        #[arg(long)]
        create_database: bool,
    },
    /// Measure throughput, latency and cost on the real stack (creates and
    /// drops its own scratch database and NATS prefix).
    Bench(bench::BenchArgs),
    /// Publish and inspect Promises.
    #[command(subcommand)]
    Promise(PromiseCommand),
    /// File and inspect requests against Promises.
    #[command(subcommand)]
    Request(RequestCommand),
    /// Inspect workflow runs.
    #[command(subcommand)]
    Run(RunCommand),
    /// Send CloudEvents and see what the Promises' triggers did with them.
    #[command(subcommand)]
    Event(events::EventCommand),
    /// Inspect and replay bus events that could not be used.
    #[command(subcommand)]
    DeadLetter(events::DeadLetterCommand),
    /// Create or update Promises, Policies and Schedules from a file or every
    /// .yaml/.yml/.json file of a directory (by each document's `kind`).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Inspect, pause and resume Schedules and read their tick ledger.
    #[command(subcommand)]
    Schedule(schedules::ScheduleCommand),
    /// Follow, pause, resume and cancel rollouts (controlled upgrades to
    /// another Promise version; start one with `fulfil promise rollout`).
    #[command(subcommand)]
    Rollout(rollouts::RolloutCommand),
    /// Create, list and revoke API tokens (admin); `create --bootstrap`
    /// writes a first admin token straight into the database.
    #[command(subcommand)]
    Token(tokens::TokenCommand),
    /// List, show and delete admission policies (apply them with `fulfil apply -f`).
    #[command(subcommand)]
    Policy(policies::PolicyCommand),
    /// Backstage: Templates and catalog entities for a developer portal.
    #[command(subcommand)]
    Backstage(backstage::BackstageCommand),
}

/// Connection and tuning flags of the server roles.
#[derive(Args, Clone)]
pub struct ServerArgs {
    #[arg(long, env = "DATABASE_URL", default_value = server::DEFAULT_DATABASE_URL)]
    database_url: String,
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Prefix of every NATS subject and stream, so installations can share a server.
    #[arg(long, env = "FULFIL_NATS_PREFIX", default_value = "fulfil")]
    nats_prefix: String,
    #[arg(long, env = "FULFIL_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: String,
    /// Where the api role serves gRPC (`fulfil.v1.Fulfil`, with reflection).
    #[arg(long, env = "FULFIL_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    grpc_addr: String,
    /// Directory of Promise files applied at start (`dev` defaults to ./workflows).
    #[arg(long, env = "FULFIL_WORKFLOWS")]
    workflows: Option<PathBuf>,
    /// YAML or JSON file of vars Promises may read as `vars.<name>` (a
    /// mapping of names to strings); `FULFIL_VAR_<NAME>` variables add to
    /// and override it.
    #[arg(long, env = "FULFIL_VARS_FILE")]
    vars_file: Option<PathBuf>,
    /// Worker queues to serve.
    #[arg(
        long,
        env = "FULFIL_QUEUES",
        value_delimiter = ',',
        default_value = "default"
    )]
    queues: Vec<String>,
    /// Steps a worker runs at once.
    #[arg(long, env = "FULFIL_WORKER_CONCURRENCY", default_value_t = 32)]
    worker_concurrency: usize,
    /// How long a task taken by a worker that then vanished waits before it
    /// is redelivered (set when the worker creates its queue's consumer).
    #[arg(
        long,
        env = "FULFIL_WORKER_ACK_WAIT",
        default_value = "60s",
        value_parser = humantime_duration
    )]
    worker_ack_wait: std::time::Duration,
    /// Directory of secret files (one per secret, named as it, as
    /// Kubernetes mounts a Secret), tried before the environment's
    /// `FULFIL_SECRET_<NAME>`; worker role only. See docs/secrets.md.
    #[arg(long, env = "FULFIL_SECRETS_DIR")]
    secrets_dir: Option<std::path::PathBuf>,
    /// A command `exec` steps may run on this worker: `NAME` (looked up on
    /// PATH at start) or `NAME=PATH`; repeat it, or separate entries with
    /// commas. None by default: `exec` refuses every command. `dev` also
    /// allows `psql` and the executable files of `<workflows>/scripts/`.
    /// See docs/promises.md.
    #[arg(long = "exec-allow", env = "FULFIL_EXEC_ALLOW", value_delimiter = ',')]
    exec_allow: Vec<String>,
    /// Postgres connections of this process.
    #[arg(long, env = "FULFIL_DB_POOL", default_value_t = 20)]
    db_pool: u32,
    /// How long the event ledger and the dead letters keep what they
    /// received (engine role), e.g. `7d`, `12h`.
    #[arg(
        long,
        env = "FULFIL_EVENT_RETENTION",
        default_value = "7d",
        value_parser = humantime_duration
    )]
    event_retention: std::time::Duration,
    /// How late a schedule's tick may be decided and still fire when its
    /// `catch_up` is shorter (engine role); older ticks are recorded
    /// `missed`.
    #[arg(
        long,
        env = "FULFIL_SCHEDULE_GRACE",
        default_value = "30s",
        value_parser = humantime_duration
    )]
    schedule_grace: std::time::Duration,
    /// How long finished runs are kept with their steps and history (engine
    /// role), e.g. `30d`, `12h`; `0` or `off` keeps them for ever.
    #[arg(
        long,
        env = "FULFIL_RETENTION",
        default_value = "30d",
        value_parser = retention_duration
    )]
    retention: Retention,
    /// Log as JSON lines instead of text: one object per line, with the
    /// fields of the spans it happened in (run_id, step_id, attempt).
    #[arg(long, env = "FULFIL_LOG_JSON")]
    log_json: bool,
    /// Also serve Prometheus metrics at http://ADDR/metrics (the API role
    /// serves them on its own port); for engine- or worker-only processes.
    #[arg(long, env = "FULFIL_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// The largest request body the API reads, e.g. `1MiB`, `512KiB`,
    /// `2000000`; larger bodies answer 413.
    #[arg(
        long,
        env = "FULFIL_MAX_BODY",
        default_value = "1MiB",
        value_parser = byte_size
    )]
    max_body: usize,
    /// Serve the web console (`/ui`) from this directory, re-read on every
    /// request, instead of the copy built into the binary: for working on
    /// the console (`console/` in the repository) without rebuilding.
    #[arg(long, env = "FULFIL_CONSOLE_DIR")]
    console_dir: Option<std::path::PathBuf>,
    /// Whether callers need a bearer token: `tokens` (API tokens, and OIDC
    /// JWTs where configured) or `none` (callers are who `Fulfil-Actor`
    /// says). `serve` defaults to tokens, `dev` to none (and then binds
    /// loopback only). A first admin token comes from the environment
    /// variable FULFIL_BOOTSTRAP_TOKEN (never a flag) or `fulfil token create --bootstrap`.
    #[arg(long, env = "FULFIL_AUTH", value_enum)]
    auth: Option<server::AuthChoice>,
    /// OIDC JWTs accepted alongside API tokens (with `--auth tokens`).
    #[command(flatten)]
    oidc: oidc_args::OidcArgs,
}

/// Where the operator commands find the API.
#[derive(Args, Clone)]
pub struct ClientArgs {
    #[arg(
        long,
        env = "FULFIL_API_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    api_url: String,
    /// Bearer token sent as `Authorization: Bearer <token>` on every call
    /// (`fulfil token create` makes one).
    #[arg(long, env = "FULFIL_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table, global = true)]
    output: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum PromiseCommand {
    /// Create or update Promises from a file or every .yaml/.yml/.json file of a directory.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List Promises (their current versions).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a Promise.
    Get {
        name: String,
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Upgrade the Promise's live requests to another version, at bounded
    /// concurrency (a rollout; see `fulfil rollout --help`).
    ///
    /// Their configure workflow is re-run on that version (runs of kind
    /// `upgrade`), at most --max-concurrent at once, never while another
    /// run of the same request is in flight. A request whose upgrade fails
    /// keeps its version and outputs (nothing is undone). Pinned requests
    /// (`fulfil request pin`) are left out. Follow it with `fulfil rollout
    /// get ID --wait`, pause it with `fulfil rollout pause ID`.
    Rollout(rollouts::RolloutArgs),
}

#[derive(Subcommand)]
enum RequestCommand {
    /// File a request against a Promise.
    Create {
        promise: String,
        /// A parameter as key=value; the value is read as JSON when it parses
        /// (3, true, {"a":1}) and as a string otherwise. Repeatable.
        #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// All parameters as one JSON object (merged under --param).
        #[arg(long, value_name = "JSON")]
        params_json: Option<String>,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Follow the run until it finishes; exit non-zero unless it succeeded.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "10m", value_parser = humantime_duration)]
        timeout: std::time::Duration,
        /// Who files it, sent as the Fulfil-Actor header and kept as the
        /// request's created_by (an approval step that does not
        /// allow_requester refuses this principal); unset, the API records
        /// `api`.
        #[arg(long = "as", env = "FULFIL_ACTOR", value_name = "PRINCIPAL")]
        principal: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a request.
    Get {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a request: run its Promise's `delete` workflow (a run of kind
    /// `delete`), after stopping a configure run still going at its step
    /// boundary. Deleting twice answers with the same delete run.
    #[command(
        after_help = "Examples:\n  fulfil request delete 0193a1c2-7b3e-7c1a-9f00-3d2e1a4b5c6d --wait\n  fulfil request delete 0193a1c2-7b3e-7c1a-9f00-3d2e1a4b5c6d --force"
    )]
    Delete {
        id: String,
        /// Mark the request deleted now, without a teardown (recorded in
        /// history with who did it).
        #[arg(long)]
        force: bool,
        /// Follow the delete until the request is `deleted` or
        /// `delete_failed`; exit non-zero unless it was deleted.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "10m", value_parser = humantime_duration)]
        timeout: std::time::Duration,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reconcile a request now: re-run its configure workflow as a run of
    /// kind `reconcile` (nothing is undone if it fails). Queued behind a
    /// run of the request still in flight, which it never interrupts.
    #[command(
        after_help = "Examples:\n  fulfil request reconcile 0193a1c2-7b3e-7c1a-9f00-3d2e1a4b5c6d --wait"
    )]
    Reconcile {
        id: String,
        /// Follow the reconcile run (once started) until it finishes; exit
        /// non-zero unless it succeeded.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "10m", value_parser = humantime_duration)]
        timeout: std::time::Duration,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pin a request to its current Promise version: no rollout upgrades
    /// it until it is unpinned.
    Pin {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Unpin a request: the next rollout of its Promise may upgrade it.
    Unpin {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List requests, newest first.
    List {
        #[arg(long)]
        promise: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum RunCommand {
    /// Show a run with its steps and attempts.
    Get {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List runs, newest first; filters combine.
    #[command(
        after_help = "Examples:\n  fulfil run list --status failed --since 24h\n  fulfil run list --owner team-data --waiting-for approval\n  fulfil run list --promise postgres-database --kind delete -o json"
    )]
    List {
        #[command(flatten)]
        filters: RunListArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a run's history in order.
    History {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow a run live: each step's status and a bar of finished steps,
    /// then the run's result (exit code 0 only if it succeeded). With
    /// `-o json`, every history event as a JSON line instead.
    Watch {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a run: nothing new starts, in-flight steps finish, and succeeded
    /// steps are compensated (unless --no-compensate) before it ends `cancelled`.
    Cancel {
        id: String,
        /// End at once: abandon in-flight steps and compensate nothing.
        #[arg(long)]
        no_compensate: bool,
        /// Recorded in the run's history.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-run a failed, compensated or cancelled run from what did not
    /// succeed; succeeded steps keep their outputs.
    Retry {
        id: String,
        /// Also re-run this step and everything that depends on it.
        #[arg(long)]
        step: Option<String>,
        /// Show what would be re-run without doing it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve a waiting approval step; it succeeds once `quorum` distinct
    /// principals approved.
    #[command(
        after_help = "Examples:\n  fulfil run approve RUN_ID --step approve --as user:alice --comment \"sized right\"\n  FULFIL_ACTOR=user:bob fulfil run approve RUN_ID --step approve"
    )]
    Approve(DecideArgs),
    /// Reject a waiting approval step: it fails with code `rejected` and
    /// the run compensates as after any permanent failure.
    #[command(
        after_help = "Example:\n  fulfil run reject RUN_ID --step approve --as user:alice --comment \"too large\""
    )]
    Reject(DecideArgs),
}

/// Filters of `fulfil run list` (the query of `GET /v1/runs`).
#[derive(Args)]
struct RunListArgs {
    /// pending, running, succeeded, failed, compensating, compensated or cancelled.
    #[arg(long)]
    status: Option<fulfil_core::RunStatus>,
    /// Runs of this Promise.
    #[arg(long)]
    promise: Option<String>,
    /// Runs of this request (its id).
    #[arg(long)]
    request: Option<uuid::Uuid>,
    /// configure, delete or reconcile.
    #[arg(long)]
    kind: Option<fulfil_core::status::RunKind>,
    /// Runs of Promises this team owns (`metadata.owner`).
    #[arg(long)]
    owner: Option<String>,
    /// Runs with a step waiting for: retry, event, approval, sleep or worker.
    #[arg(long)]
    waiting_for: Option<fulfil_engine::inspect::WaitingFor>,
    /// Created at or after: an RFC 3339 time or an age (`2h`, `7d`).
    #[arg(long, value_parser = time_or_age)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Created before: an RFC 3339 time or an age (`2h`, `7d`).
    #[arg(long, value_parser = time_or_age)]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// Where to continue: the `next` cursor a previous page printed.
    #[arg(long)]
    cursor: Option<String>,
    /// Runs per page (at most 500).
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

/// An RFC 3339 time, or an age such as `2h` meaning that long ago.
fn time_or_age(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    let age = humantime_duration(s)
        .map_err(|e| format!("{s:?} is neither an RFC 3339 time nor an age like 2h: {e}"))?;
    let age = chrono::Duration::from_std(age).map_err(|e| e.to_string())?;
    chrono::Utc::now()
        .checked_sub_signed(age)
        .ok_or_else(|| format!("{s:?} reaches before any time"))
}

/// A decision on an approval step: `fulfil run approve|reject`.
#[derive(Args)]
struct DecideArgs {
    /// The run.
    id: String,
    /// The approval step to decide.
    #[arg(long)]
    step: String,
    /// Kept with the decision in the run's history and the step's outputs.
    #[arg(long)]
    comment: Option<String>,
    /// Who decides, sent as the Fulfil-Actor header (default: user:$USER).
    /// Until access control lands, a step's approver entries (team:T,
    /// user:U, role:R) match this value literally: `--as user:alice`
    /// counts for an approver entry `user:alice` and for no team or role.
    #[arg(long = "as", env = "FULFIL_ACTOR", value_name = "PRINCIPAL")]
    principal: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

fn humantime_duration(s: &str) -> Result<std::time::Duration, String> {
    fulfil_core::promise::parse_duration(s)
}

/// A size as an operator writes it: bytes, or a number with `KiB`, `MiB`,
/// `GiB` (powers of 1024) or `kB`, `MB`, `GB` (powers of 1000); between
/// 1 KiB and 1 GiB, since a smaller limit refuses every Promise and a
/// larger one is memory for the taking.
fn byte_size(s: &str) -> Result<usize, String> {
    const UNITS: [(&str, u64); 7] = [
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("kB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("B", 1),
    ];
    let text = s.trim();
    let (number, unit) = UNITS
        .iter()
        .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|n| (n.trim(), *unit)))
        .unwrap_or((text, 1));
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{s:?} is not a size like 1MiB, 512KiB or 1048576"))?;
    if !(1 << 10..=1 << 30).contains(&bytes) {
        return Err(format!("{s:?} is outside 1KiB..1GiB"));
    }
    usize::try_from(bytes).map_err(|_| format!("{s:?} is too large for this machine"))
}

/// `--retention`: how long finished runs are kept; `None` for ever.
type Retention = Option<std::time::Duration>;

fn retention_duration(s: &str) -> Result<Retention, String> {
    match s.trim() {
        "0" | "off" => Ok(None),
        other => humantime_duration(other).map(Some),
    }
}

/// DESIGN: "An empty value is unset", for every environment fallback. clap
/// takes `FULFIL_WORKFLOWS=` as an empty value given (refused, or used as
/// an empty URL), so every argument whose variable is set but empty is
/// unlinked from it before parsing: one rule for all flags, present and
/// future, instead of a parser per flag. (Removing the variables from the
/// environment instead would need `unsafe`, which the workspace forbids.)
fn without_empty_env(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| {
            let empty = arg
                .get_env()
                .and_then(std::env::var_os)
                .is_some_and(|value| value.is_empty());
            if empty {
                arg.env(None::<&'static str>)
            } else {
                arg
            }
        })
        .mut_subcommands(without_empty_env)
}

fn main() -> ExitCode {
    let matches = without_empty_env(Cli::command()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", report::render(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Dev(args) => server::dev(args).await.map(|()| ExitCode::SUCCESS),
        Command::Serve {
            roles,
            server: args,
        } => server::serve(args, &roles)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Migrate {
            database_url,
            create_database,
        } => server::migrate(&database_url, create_database)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Promise(cmd) => match cmd {
            PromiseCommand::Apply { file, client } => client::promise_apply(&client, &file).await,
            PromiseCommand::List { client } => client::promise_list(&client).await,
            PromiseCommand::Get {
                name,
                version,
                client,
            } => client::promise_get(&client, &name, version.as_deref()).await,
            PromiseCommand::Rollout(args) => rollouts::create(&args).await,
        },
        Command::Request(cmd) => match cmd {
            RequestCommand::Create {
                promise,
                params,
                params_json,
                idempotency_key,
                wait,
                timeout,
                principal,
                client,
            } => {
                let params = client::parse_params(&params, params_json.as_deref())?;
                client::request_create(
                    &client,
                    &promise,
                    params,
                    idempotency_key,
                    principal,
                    wait,
                    timeout,
                )
                .await
            }
            RequestCommand::Get { id, client } => client::request_get(&client, &id).await,
            RequestCommand::Delete {
                id,
                force,
                wait,
                timeout,
                client,
            } => client::request_delete(&client, &id, force, wait, timeout).await,
            RequestCommand::Reconcile {
                id,
                wait,
                timeout,
                client,
            } => client::request_reconcile(&client, &id, wait, timeout).await,
            RequestCommand::Pin { id, client } => rollouts::pin(&client, &id, true).await,
            RequestCommand::Unpin { id, client } => rollouts::pin(&client, &id, false).await,
            RequestCommand::List {
                promise,
                status,
                limit,
                client,
            } => client::request_list(&client, promise, status, limit).await,
        },
        Command::Run(cmd) => match cmd {
            RunCommand::Get { id, client } => client::run_get(&client, &id).await,
            RunCommand::List { filters, client } => client::run_list(&client, &filters).await,
            RunCommand::History { id, client } => client::run_history(&client, &id).await,
            RunCommand::Watch { id, client } => watch::run_watch(&client, &id).await,
            RunCommand::Cancel {
                id,
                no_compensate,
                reason,
                client,
            } => client::run_cancel(&client, &id, !no_compensate, reason).await,
            RunCommand::Retry {
                id,
                step,
                dry_run,
                client,
            } => client::run_retry(&client, &id, step, dry_run).await,
            RunCommand::Approve(args) => {
                client::run_decide(
                    &args.client,
                    &args.id,
                    &args.step,
                    "approve",
                    args.comment,
                    args.principal,
                )
                .await
            }
            RunCommand::Reject(args) => {
                client::run_decide(
                    &args.client,
                    &args.id,
                    &args.step,
                    "reject",
                    args.comment,
                    args.principal,
                )
                .await
            }
        },
        Command::Event(cmd) => events::run_event(cmd).await,
        Command::DeadLetter(cmd) => events::run_dead_letter(cmd).await,
        Command::Apply { file, client } => schedules::apply(&client, &file).await,
        Command::Schedule(cmd) => schedules::run_schedule(cmd).await,
        Command::Rollout(cmd) => rollouts::run(cmd).await,
        Command::Token(cmd) => tokens::run_token(cmd).await,
        Command::Policy(cmd) => policies::run_policy(cmd).await,
        Command::Backstage(cmd) => backstage::run(cmd).await,
    }
}

#[cfg(test)]
mod tests {
    use super::byte_size;

    #[test]
    fn sizes_read_as_operators_write_them() {
        assert_eq!(byte_size("1MiB"), Ok(1 << 20));
        assert_eq!(byte_size("512KiB"), Ok(512 << 10));
        assert_eq!(byte_size("2 MB"), Ok(2_000_000));
        assert_eq!(byte_size("1048576"), Ok(1 << 20));
        assert_eq!(byte_size("4096B"), Ok(4096));
    }

    #[test]
    fn nonsense_and_extreme_sizes_are_refused() {
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "-1",
            "1TiB",
            "12",
            "2GiB",
            "99999999999999999999GiB",
        ] {
            assert!(byte_size(bad).is_err(), "{bad:?}");
        }
    }
}
