//! `fulfil promise rollout`, `fulfil rollout get|list|pause|resume|cancel`
//! and `fulfil request pin|unpin`: thin clients of the rollout routes
//! (docs/rollouts.md).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use fulfil_api::model::{Rollout, RolloutProgress};
use fulfil_core::status::RolloutStatus;
use serde_json::{Value, json};

use crate::client::{Api, actor, encode, model, print_list, print_request, query};
use crate::output::{at, opt, print_structured, print_table};
use crate::{ClientArgs, Format, humantime_duration};

/// `fulfil promise rollout NAME --to-version V ...`.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  fulfil promise rollout postgres-database --to-version 1.1.0 --wait\n  \
    fulfil promise rollout postgres-database --to-version 1.1.0 --max-concurrent 2 \\\n      \
    --selector \"params.size == 'small'\""
)]
pub struct RolloutArgs {
    /// The Promise whose live requests are upgraded.
    pub name: String,
    /// The version to move them to (applied already).
    #[arg(long)]
    pub to_version: String,
    /// Most upgrade runs in flight at once (1 to 1000).
    #[arg(long, default_value_t = 10)]
    pub max_concurrent: i64,
    /// CEL over `params` and `request`: only the requests it selects are
    /// upgraded, e.g. "params.size == 'small'".
    #[arg(long)]
    pub selector: Option<String>,
    /// Print progress until the rollout ends; exit non-zero unless it
    /// succeeded.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "1h", value_parser = humantime_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Show a rollout: its status, progress and failures.
    Get {
        id: String,
        /// Print progress until the rollout ends; exit non-zero unless it
        /// succeeded.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "1h", value_parser = humantime_duration)]
        timeout: Duration,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a Promise's rollouts, newest first.
    List {
        /// The Promise.
        promise: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue a previous listing (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pause a rollout: no new upgrade starts; those in flight finish.
    Pause {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume a paused rollout.
    Resume {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a rollout: its pending requests are skipped (left on their
    /// version); upgrades in flight finish.
    Cancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `fulfil promise rollout`: creates the rollout; with `--wait`, follows it.
pub async fn create(args: &RolloutArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.client)?;
    let mut body = json!({ "to_version": args.to_version, "max_concurrent": args.max_concurrent });
    if let Some(selector) = &args.selector {
        body["selector"] = json!(selector);
    }
    let request = api
        .http
        .post(format!(
            "{}/v1/promises/{}/rollout",
            api.base,
            encode(&args.name)
        ))
        .header("Fulfil-Actor", actor())
        .json(&body);
    let (_, answer) = api.send(request).await?;
    let rollout: Rollout = model(&answer, "rollout")?;
    if !args.wait {
        return print_rollout(&args.client, &answer);
    }
    eprintln!(
        "rollout {} of {} to version {}: {} request(s) to upgrade, at most {} at once",
        rollout.id,
        rollout.promise,
        rollout.to_version,
        rollout.progress.total,
        rollout.max_concurrent
    );
    follow(&api, &args.client, &rollout.id.to_string(), args.timeout).await
}

pub async fn run(command: RolloutCommand) -> anyhow::Result<ExitCode> {
    match command {
        RolloutCommand::Get {
            id,
            wait,
            timeout,
            client,
        } => {
            let api = Api::new(&client)?;
            if wait {
                return follow(&api, &client, &id, timeout).await;
            }
            let body = api.get(&format!("/v1/rollouts/{}", encode(&id))).await?;
            print_rollout(&client, &body)
        }
        RolloutCommand::List {
            promise,
            limit,
            cursor,
            client,
        } => {
            let q = query(&[("cursor", cursor), ("limit", Some(limit.to_string()))]);
            print_list::<Rollout>(
                &client,
                &format!("/v1/promises/{}/rollouts{q}", encode(&promise)),
                &[
                    "ID", "TO", "STATUS", "TOTAL", "PENDING", "RUNNING", "OK", "FAILED", "SKIPPED",
                    "CREATED",
                ],
                |r| {
                    let p = r.progress;
                    vec![
                        r.id.to_string(),
                        r.to_version.clone(),
                        r.status.to_string(),
                        p.total.to_string(),
                        p.pending.to_string(),
                        p.running.to_string(),
                        p.succeeded.to_string(),
                        p.failed.to_string(),
                        p.skipped.to_string(),
                        at(Some(r.created_at)),
                    ]
                },
            )
            .await
        }
        RolloutCommand::Pause { id, client } => control(&client, &id, "pause").await,
        RolloutCommand::Resume { id, client } => control(&client, &id, "resume").await,
        RolloutCommand::Cancel { id, client } => control(&client, &id, "cancel").await,
    }
}

async fn control(client: &ClientArgs, id: &str, action: &str) -> anyhow::Result<ExitCode> {
    let api = Api::new(client)?;
    let request = api
        .http
        .post(format!("{}/v1/rollouts/{}/{action}", api.base, encode(id)))
        .header("Fulfil-Actor", actor());
    let (_, body) = api.send(request).await?;
    print_rollout(client, &body)
}

/// `fulfil request pin|unpin ID`.
pub async fn pin(client: &ClientArgs, id: &str, pinned: bool) -> anyhow::Result<ExitCode> {
    let api = Api::new(client)?;
    let url = format!("{}/v1/requests/{}/pin", api.base, encode(id));
    let request = if pinned {
        api.http.post(url)
    } else {
        api.http.delete(url)
    };
    let (_, body) = api.send(request.header("Fulfil-Actor", actor())).await?;
    print_request(client, &body)
}

fn progress_line(p: &RolloutProgress) -> String {
    format!(
        "{}/{} done: {} succeeded, {} failed, {} skipped, {} running, {} pending",
        p.succeeded + p.failed + p.skipped,
        p.total,
        p.succeeded,
        p.failed,
        p.skipped,
        p.running,
        p.pending
    )
}

fn print_rollout(client: &ClientArgs, body: &Value) -> anyhow::Result<ExitCode> {
    if client.output != Format::Table {
        return print_structured(client.output, body);
    }
    let r: Rollout = model(body, "rollout")?;
    for (key, value) in [
        ("id", r.id.to_string()),
        ("promise", r.promise.clone()),
        ("to_version", r.to_version.clone()),
        ("status", r.status.to_string()),
        ("max_concurrent", r.max_concurrent.to_string()),
        ("selector", opt(r.selector.as_deref())),
        ("created_by", r.created_by.clone()),
        ("created_at", at(Some(r.created_at))),
        ("finished_at", at(r.finished_at)),
        ("progress", progress_line(&r.progress)),
    ] {
        println!("{key:<15} {value}");
    }
    if !r.failures.is_empty() {
        println!();
        print_table(
            &["REQUEST", "KEPT", "RUN", "ERROR"],
            r.failures
                .iter()
                .map(|f| {
                    vec![
                        f.request_id.to_string(),
                        f.from_version.clone(),
                        opt(f.run_id),
                        f.error.clone().unwrap_or_default(),
                    ]
                })
                .collect(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Polls the rollout, printing a progress line whenever it changes, until
/// it ends; exit 0 only if it succeeded.
async fn follow(
    api: &Api,
    client: &ClientArgs,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut last: Option<(RolloutStatus, RolloutProgress)> = None;
    loop {
        let body = api.get(&format!("/v1/rollouts/{}", encode(id))).await?;
        let rollout: Rollout = model(&body, "rollout")?;
        let now = (rollout.status, rollout.progress);
        if last != Some(now) {
            eprintln!(
                "[{:>5.1}s] {}: {}",
                started.elapsed().as_secs_f64(),
                rollout.status,
                progress_line(&rollout.progress)
            );
            last = Some(now);
        }
        if !rollout.status.is_active() {
            print_rollout(client, &body)?;
            return Ok(if rollout.status == RolloutStatus::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        if started.elapsed() > timeout {
            eprintln!(
                "rollout {id} still {} after {timeout:?}; stopped waiting",
                rollout.status
            );
            return Ok(ExitCode::from(2));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
