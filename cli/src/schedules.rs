//! `fulfil apply -f FILE|DIR` (Promises, Policies and Schedules alike) and `fulfil
//! schedule list|get|ticks|pause|resume`: thin clients of `/v1/promises`
//! and `/v1/schedules`.
//!
//! `apply` reads each file's `kind` only to pick the route; the server
//! validates everything. Promises are applied first and Schedules last, so
//! a directory holding a Schedule and the Promise it files applies in one
//! go, and a Policy beside them governs the Schedule's first tick.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use fulfil_api::model::{Page, Schedule, Tick};
use fulfil_core::status::TickOutcome;
use serde_json::Value;

use crate::client::{Api, model, promise_files, query};
use crate::output::{at, opt, print_structured, print_table};
use crate::{ClientArgs, Format};

#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// List schedules with their next fire time.
    List {
        /// Most schedules on one page.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue a previous listing (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a schedule: its document, state and next fire time.
    Get {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a schedule's tick ledger, newest first: what each tick did and why.
    #[command(
        long_about = "Show the tick ledger of a schedule, newest first: for every tick, its \
        nominal time, when it was decided, the outcome (filed, skipped_overlap, missed, paused, \
        buffered, failed), the request it filed and the reason it did not.\n\n\
        Example:\n  fulfil schedule ticks nightly-backup --outcome missed"
    )]
    Ticks {
        name: String,
        /// Only ticks with this outcome.
        #[arg(long, value_parser = TickOutcome::parse)]
        outcome: Option<TickOutcome>,
        /// Most ticks on one page.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue a previous listing (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pause a schedule: its ticks are recorded `paused` and file nothing.
    Pause {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume a paused schedule from its first tick after now.
    Resume {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run_schedule(command: ScheduleCommand) -> anyhow::Result<ExitCode> {
    match command {
        ScheduleCommand::List {
            limit,
            cursor,
            client,
        } => {
            let q = query(&[("cursor", cursor), ("limit", Some(limit.to_string()))]);
            let body = Api::new(&client)?.get(&format!("/v1/schedules{q}")).await?;
            if client.output != Format::Table {
                return print_structured(client.output, &body);
            }
            let page: Page<Schedule> = model(&body, "list of schedules")?;
            print_table(
                &[
                    "NAME",
                    "PROMISE",
                    "CRON",
                    "TIMEZONE",
                    "OVERLAP",
                    "PAUSED",
                    "NEXT_FIRE",
                ],
                page.items
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.promise.clone(),
                            s.cron.clone(),
                            s.timezone.clone(),
                            s.overlap.to_string(),
                            s.paused.to_string(),
                            at(s.next_fire_at),
                        ]
                    })
                    .collect(),
            );
            more(page.next_cursor);
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::Get { name, client } => {
            let body = Api::new(&client)?
                .get(&format!("/v1/schedules/{name}"))
                .await?;
            print_schedule(&client, &body)
        }
        ScheduleCommand::Ticks {
            name,
            outcome,
            limit,
            cursor,
            client,
        } => {
            let q = query(&[
                ("outcome", outcome.map(|o| o.as_str().to_string())),
                ("cursor", cursor),
                ("limit", Some(limit.to_string())),
            ]);
            let body = Api::new(&client)?
                .get(&format!("/v1/schedules/{name}/ticks{q}"))
                .await?;
            if client.output != Format::Table {
                return print_structured(client.output, &body);
            }
            let page: Page<Tick> = model(&body, "tick ledger")?;
            if page.items.is_empty() {
                eprintln!("no ticks yet");
            }
            print_table(
                &["NOMINAL", "FIRED", "OUTCOME", "REQUEST", "REASON"],
                page.items
                    .iter()
                    .map(|t| {
                        vec![
                            at(Some(t.nominal_at)),
                            at(Some(t.fired_at)),
                            t.outcome.to_string(),
                            opt(t.request_id),
                            t.reason.clone().unwrap_or_default(),
                        ]
                    })
                    .collect(),
            );
            more(page.next_cursor);
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::Pause { name, client } => switch(&client, &name, "pause").await,
        ScheduleCommand::Resume { name, client } => switch(&client, &name, "resume").await,
    }
}

fn more(cursor: Option<String>) {
    if let Some(cursor) = cursor {
        eprintln!("more: add --cursor {cursor}");
    }
}

/// Who the CLI acts as when it pauses or resumes: `cli:<user>`, as for
/// run operations.
fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

async fn switch(client: &ClientArgs, name: &str, action: &str) -> anyhow::Result<ExitCode> {
    let api = Api::new(client)?;
    let request = api
        .http
        .post(format!("{}/v1/schedules/{name}/{action}", api.base))
        .header("Fulfil-Actor", actor());
    let (_, body) = api.send(request).await?;
    print_schedule(client, &body)
}

fn print_schedule(client: &ClientArgs, body: &Value) -> anyhow::Result<ExitCode> {
    if client.output != Format::Table {
        return print_structured(client.output, body);
    }
    let s: Schedule = model(body, "schedule")?;
    for (key, value) in [
        ("name", s.name.clone()),
        ("owner", opt(s.owner.as_deref())),
        ("promise", s.promise.clone()),
        ("cron", s.cron.clone()),
        ("timezone", s.timezone.clone()),
        ("overlap", s.overlap.to_string()),
        ("catch_up", s.catch_up.clone()),
        ("params", s.params.to_string()),
        ("paused", s.paused.to_string()),
        ("next_fire_at", at(s.next_fire_at)),
        ("buffered_at", at(s.buffered_at)),
        ("last_request", opt(s.last_request_id)),
        ("paused_by", opt(s.paused_by.as_deref())),
        ("paused_at", at(s.paused_at)),
        ("resumed_by", opt(s.resumed_by.as_deref())),
        ("resumed_at", at(s.resumed_at)),
        ("updated_at", at(Some(s.updated_at))),
    ] {
        println!("{key:<14} {value}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The kind and name of a document, read without validating it.
fn kind_and_name(text: &str) -> Option<(String, String)> {
    let value = fulfil_core::document::read(text).ok()?;
    Some((
        value["kind"].as_str()?.to_string(),
        value["metadata"]["name"].as_str()?.to_string(),
    ))
}

/// `fulfil apply -f FILE|DIR`: every Promise, then every Schedule.
pub async fn apply(client: &ClientArgs, path: &Path) -> anyhow::Result<ExitCode> {
    let api = Api::new(client)?;
    let mut documents: Vec<(u8, PathBuf, String, String, String)> = Vec::new();
    let mut failed = 0;
    for file in promise_files(path)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        match kind_and_name(&text) {
            Some((kind, name)) if ["Promise", "Policy", "Schedule"].contains(&kind.as_str()) => {
                // Policies before Schedules, so a first tick is checked.
                let order = match kind.as_str() {
                    "Promise" => 0,
                    "Policy" => 1,
                    _ => 2,
                };
                documents.push((order, file, kind, name, text));
            }
            Some((kind, _)) => {
                eprintln!(
                    "{}: kind {kind:?} is not one fulfil applies; use Promise, Policy or Schedule",
                    file.display()
                );
                failed += 1;
            }
            None => {
                eprintln!(
                    "{}: not a Promise, Policy or Schedule: kind or metadata.name is missing",
                    file.display()
                );
                failed += 1;
            }
        }
    }
    documents.sort_by_key(|a| a.0);
    for (_, file, kind, name, text) in documents {
        let route = match kind.as_str() {
            "Promise" => "promises",
            "Policy" => "policies",
            _ => "schedules",
        };
        let request = api
            .http
            .put(format!("{}/v1/{route}/{name}", api.base))
            .header("content-type", "application/yaml")
            .header("Fulfil-Actor", actor())
            .body(text);
        match api.send(request).await {
            Ok((_, body)) if kind == "Promise" => println!(
                "{}: promise {name} version {} {}",
                file.display(),
                body["version"].as_str().unwrap_or("?"),
                body["outcome"].as_str().unwrap_or("applied")
            ),
            Ok((_, body)) if kind == "Policy" => println!(
                "{}: policy {name} {}",
                file.display(),
                body["outcome"].as_str().unwrap_or("applied")
            ),
            Ok((_, body)) => println!(
                "{}: schedule {name} {}, next fire at {}",
                file.display(),
                body["outcome"].as_str().unwrap_or("applied"),
                body["next_fire_at"].as_str().unwrap_or("never")
            ),
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                failed += 1;
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    #[test]
    fn schedule_commands_parse_with_outcomes_and_output_formats() {
        let cli = Cli::try_parse_from([
            "fulfil",
            "schedule",
            "ticks",
            "nightly",
            "--outcome",
            "skipped_overlap",
            "-o",
            "yaml",
        ])
        .expect("parses");
        match cli.command {
            Command::Schedule(ScheduleCommand::Ticks {
                name,
                outcome,
                client,
                ..
            }) => {
                assert_eq!(name, "nightly");
                assert_eq!(outcome, Some(TickOutcome::SkippedOverlap));
                assert!(client.output == Format::Yaml);
            }
            _ => panic!("not schedule ticks"),
        }
        assert!(
            Cli::try_parse_from(["fulfil", "schedule", "ticks", "n", "--outcome", "late"]).is_err()
        );
        assert!(Cli::try_parse_from(["fulfil", "apply", "-f", "workflows"]).is_ok());
        assert_eq!(
            kind_and_name("kind: Schedule\nmetadata: { name: nightly }\n"),
            Some(("Schedule".to_string(), "nightly".to_string()))
        );
        assert_eq!(kind_and_name("metadata: { name: x }\n"), None);
    }
}
