//! Operator commands for inbound events and dead letters: `fulfil event
//! send|list|get` and `fulfil dead-letter list|replay`, thin clients of
//! `/v1/events` and `/v1/dead-letters`.
//!
//! `event send` posts one CloudEvent in structured mode
//! (`application/cloudevents+json`), built from flags; nothing here decides
//! what an event does: the server matches triggers and answers with each
//! trigger's outcome, which is printed as it came. `event get` is the view
//! that answers "why did my event not start anything?", in words when no
//! trigger matched at all.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use fulfil_api::model::Page;
use fulfil_core::status::{EventOutcome, EventVia};
use fulfil_engine::events::{DeadLetter, EventReceipt, LedgerEntry, TriggerOutcome};
use serde_json::{Map, Value};

use crate::client::{Api, model, query};
use crate::output::{at, opt, print_structured, print_table};
use crate::{ClientArgs, Format};

/// The media type of a CloudEvent in JSON structured mode.
const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// CloudEvents attributes an `--extension` may not set: the spec's own.
const RESERVED: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

#[derive(Subcommand)]
pub enum EventCommand {
    /// Send a CloudEvent to the API and show what each trigger did with it.
    #[command(long_about = "Send a CloudEvent to POST /v1/events (structured mode, \
        application/cloudevents+json) and show what each matching trigger did with it: \
        filed a request, found the one filed earlier (duplicate), was filtered out, or \
        could not map it (invalid, with the reason).\n\n\
        Over HTTP an event has no NATS subject, so triggers match it by `type` alone. The \
        event's `time` is now; `id` defaults to a new UUID v7.\n\n\
        Example:\n  fulfil event send --type com.acme.team.created --source /hr \\\n    \
        --data '{\"team\": \"vision\", \"tier\": \"gold\", \"lead\": \"ada@acme.dev\"}'")]
    Send(SendArgs),
    /// List received events, newest first.
    #[command(
        long_about = "List the events in the ledger, newest first, with what their \
        triggers did. Filters combine.\n\n\
        Example:\n  fulfil event list --type com.acme.team.created --outcome filtered --since 1h"
    )]
    List {
        /// Only events of this CloudEvent type.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        /// Only events from this CloudEvent source.
        #[arg(long)]
        source: Option<String>,
        /// Only events for which a trigger had this outcome: filed,
        /// duplicate, filtered or invalid.
        #[arg(long, value_parser = EventOutcome::parse)]
        outcome: Option<EventOutcome>,
        /// Only events received since: a duration ago (`90s`, `1h`, `2d`) or
        /// an RFC 3339 time (`2026-12-01T09:00:00Z`).
        #[arg(long, value_parser = parse_since)]
        since: Option<DateTime<Utc>>,
        /// Most entries on one page.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue a previous listing (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one received event and, per trigger, what happened and why.
    #[command(
        long_about = "Show one event of the ledger: the CloudEvent as received and, \
        for each trigger it matched, the outcome and why (the filter that was false, the \
        template that failed, the schema violations of the rendered params). When no \
        trigger matched, it says so and why that can be.\n\n\
        Example:\n  fulfil event get 0193a1c2-7d4e-7c3a-9f0e-5b1d2c3e4f50"
    )]
    Get {
        /// The ledger id (`ledger_id` in `event send` and `event list`).
        ledger_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
pub struct SendArgs {
    /// CloudEvent `type`, e.g. com.acme.team.created.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: String,
    /// CloudEvent `source`, e.g. `/hr` or `https://hr.acme.dev`.
    #[arg(long)]
    pub source: String,
    /// CloudEvent `id`; with `source` it identifies the event, so sending
    /// the same id twice files nothing new. Default: a new UUID v7.
    #[arg(long)]
    pub id: Option<String>,
    /// CloudEvent `subject` (not a NATS subject: HTTP events have none).
    #[arg(long)]
    pub subject: Option<String>,
    /// The event's `data`, as JSON (a string is quoted: '"text"').
    #[arg(long, value_name = "JSON", conflicts_with = "data_file")]
    pub data: Option<String>,
    /// Read `data` as JSON from a file; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub data_file: Option<PathBuf>,
    /// An extension attribute as name=value (name: lowercase letters and
    /// digits); the value is sent as a string. Repeatable.
    #[arg(long = "extension", short = 'e', value_name = "NAME=VALUE", value_parser = parse_extension)]
    pub extensions: Vec<(String, String)>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand)]
pub enum DeadLetterCommand {
    /// List dead letters: bus events that could not be used, with why.
    #[command(
        long_about = "List dead letters, newest first: bus messages that were not \
        CloudEvents, and events that matched a trigger but could not be mapped or broke the \
        Promise's schema. Each keeps its reason, headers and payload (see --output json).\n\n\
        Example:\n  fulfil dead-letter list --limit 20"
    )]
    List {
        /// Most entries on one page.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue a previous listing (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send a dead letter through again, after fixing what refused it.
    #[command(
        long_about = "Send a dead letter through the triggers again, as it was \
        received, and show what each trigger did. Fix the cause first (apply a corrected \
        Promise, expose a var); a trigger that already filed a request for the event \
        answers `duplicate`.\n\n\
        Example:\n  fulfil dead-letter replay 0193a1c2-7d4e-7c3a-9f0e-5b1d2c3e4f50"
    )]
    Replay {
        /// The dead letter's id (`ID` in `dead-letter list`).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run_event(command: EventCommand) -> anyhow::Result<ExitCode> {
    match command {
        EventCommand::Send(args) => send(args).await,
        EventCommand::List {
            event_type,
            source,
            outcome,
            since,
            limit,
            cursor,
            client,
        } => {
            let q = query(&[
                ("type", event_type),
                ("source", source),
                ("outcome", outcome.map(|o| o.as_str().to_string())),
                ("since", since.map(|s| s.to_rfc3339())),
                ("cursor", cursor),
                ("limit", Some(limit.to_string())),
            ]);
            list(
                &client,
                &format!("/v1/events{q}"),
                ledger_row,
                &LEDGER_HEADERS,
            )
            .await
        }
        EventCommand::Get { ledger_id, client } => get(&client, &ledger_id).await,
    }
}

pub async fn run_dead_letter(command: DeadLetterCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeadLetterCommand::List {
            limit,
            cursor,
            client,
        } => {
            let q = query(&[("cursor", cursor), ("limit", Some(limit.to_string()))]);
            list(
                &client,
                &format!("/v1/dead-letters{q}"),
                dead_letter_row,
                &["ID", "RECEIVED", "SUBJECT", "REPLAYS", "REASON"],
            )
            .await
        }
        DeadLetterCommand::Replay { id, client } => {
            let api = Api::new(&client)?;
            let request = api
                .http
                .post(format!("{}/v1/dead-letters/{id}/replay", api.base));
            let (_, body) = api.send(request).await?;
            print_receipt(&client, &body)
        }
    }
}

async fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    let data = match (&args.data, &args.data_file) {
        (Some(text), _) => Some(parse_data(text, "--data")?),
        (None, Some(path)) => Some(read_data_file(path)?),
        (None, None) => None,
    };
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let event = cloud_event(&args, id, data)?;
    let api = Api::new(&args.client)?;
    let request = api
        .http
        .post(format!("{}/v1/events", api.base))
        .header("content-type", CLOUDEVENTS_JSON)
        .body(serde_json::to_vec(&event).context("encoding the event")?);
    let (_, body) = api.send(request).await?;
    print_receipt(&args.client, &body)
}

/// The CloudEvent `event send` posts, in JSON structured mode.
pub fn cloud_event(args: &SendArgs, id: String, data: Option<Value>) -> anyhow::Result<Value> {
    let mut event = Map::new();
    event.insert("specversion".into(), "1.0".into());
    event.insert("id".into(), id.into());
    event.insert("source".into(), args.source.clone().into());
    event.insert("type".into(), args.event_type.clone().into());
    if let Some(subject) = &args.subject {
        event.insert("subject".into(), subject.clone().into());
    }
    event.insert("time".into(), Utc::now().to_rfc3339().into());
    if let Some(data) = data {
        event.insert("datacontenttype".into(), "application/json".into());
        event.insert("data".into(), data);
    }
    for (name, value) in &args.extensions {
        if event.insert(name.clone(), value.clone().into()).is_some() {
            bail!("--extension {name} is given twice");
        }
    }
    Ok(Value::Object(event))
}

/// `--data` text as JSON, with a hint for the usual mistake.
pub fn parse_data(text: &str, flag: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).map_err(|e| {
        anyhow!(
            "{flag} is not JSON ({e}); data is sent as JSON, so text is quoted: \
             --data '\"hello\"', an object: --data '{{\"team\": \"vision\"}}'"
        )
    })
}

fn read_data_file(path: &PathBuf) -> anyhow::Result<Value> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading data from standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    parse_data(&text, &format!("--data-file {}", path.display()))
}

/// `--extension name=value`: a CloudEvents extension attribute.
pub fn parse_extension(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(format!(
            "{name:?} is not an extension name: CloudEvents allows lowercase letters and digits only"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!(
            "{name:?} is a CloudEvents attribute, not an extension: use --{} instead",
            match name {
                "type" | "source" | "id" | "subject" => name,
                _ => "data",
            }
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// `--since`: a duration before `now` (`1h`, `30m`) or an RFC 3339 time.
pub fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    since_at(text, Utc::now())
}

fn since_at(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(duration) = fulfil_core::time::parse_duration(text) {
        return now
            .checked_sub_signed(fulfil_core::time::to_time_delta(duration))
            .ok_or_else(|| format!("{text} before now is not a representable time"));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            format!(
                "{text:?} is neither a duration (90s, 1h, 2d) nor an RFC 3339 time \
                 (2026-12-01T09:00:00Z)"
            )
        })
}

fn print_receipt(client: &ClientArgs, body: &Value) -> anyhow::Result<ExitCode> {
    if client.output != Format::Table {
        return print_structured(client.output, body);
    }
    let receipt: EventReceipt = model(body, "event receipt")?;
    println!(
        "event {} from {} (ledger {})",
        receipt.id, receipt.source, receipt.ledger_id
    );
    if receipt.outcomes.is_empty() && receipt.waits_completed.is_empty() {
        println!("no trigger matched: nothing was filed");
        println!(
            "  over HTTP a trigger matches by `type` alone; a trigger with only a `subject` hears \
             bus events only (see `fulfil promise get NAME`)"
        );
    }
    print_outcomes(&receipt.outcomes);
    for wait in &receipt.waits_completed {
        println!("completed wait: run {} step {}", wait.run_id, wait.step);
    }
    if let Some(id) = receipt.dead_letter_id {
        println!("kept as dead letter {id}: `fulfil dead-letter replay {id}` once fixed");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_outcomes(outcomes: &[TriggerOutcome]) {
    if outcomes.is_empty() {
        return;
    }
    let rows = outcomes
        .iter()
        .map(|o| {
            vec![
                o.trigger.clone(),
                o.promise.clone(),
                o.outcome.to_string(),
                opt(o.request_id),
                opt(o.run_id),
                // The reason spells every violation on one line; they are
                // listed one per line below instead.
                if o.violations.is_empty() {
                    o.reason.clone().unwrap_or_default()
                } else {
                    "params break the schema (below)".to_string()
                },
            ]
        })
        .collect();
    print_table(
        &["TRIGGER", "PROMISE", "OUTCOME", "REQUEST", "RUN", "REASON"],
        rows,
    );
    for o in outcomes.iter().filter(|o| !o.violations.is_empty()) {
        println!(
            "trigger {}: params break the schema of Promise {}:",
            o.trigger, o.promise
        );
        for v in &o.violations {
            let at = if v.pointer.is_empty() {
                "(params)"
            } else {
                &v.pointer
            };
            println!("  - {at}: {}", v.message);
        }
    }
}

async fn get(client: &ClientArgs, ledger_id: &str) -> anyhow::Result<ExitCode> {
    let body = Api::new(client)?
        .get(&format!("/v1/events/{ledger_id}"))
        .await?;
    if client.output != Format::Table {
        return print_structured(client.output, &body);
    }
    let entry: LedgerEntry = model(&body, "ledger entry")?;
    for (key, value) in [
        ("ledger_id", entry.ledger_id.to_string()),
        ("received_at", at(Some(entry.received_at))),
        ("via", entry.via.to_string()),
        ("nats_subject", opt(entry.nats_subject.as_deref())),
        ("id", entry.id.clone()),
        ("source", entry.source.clone()),
        ("type", entry.event_type.clone()),
        ("dead_letter", opt(entry.dead_letter_id)),
    ] {
        println!("{key:<14} {value}");
    }
    println!("event          {}", entry.event);
    println!();
    match explain_unmatched(&entry) {
        Some(why) => println!("{why}"),
        None => print_outcomes(&entry.outcomes),
    }
    for wait in &entry.waits_completed {
        println!("completed wait: run {} step {}", wait.run_id, wait.step);
    }
    Ok(ExitCode::SUCCESS)
}

/// In words, why an event that no trigger matched started nothing; `None`
/// when some trigger matched or a wait took it.
fn explain_unmatched(entry: &LedgerEntry) -> Option<String> {
    if !entry.outcomes.is_empty() || !entry.waits_completed.is_empty() {
        return None;
    }
    let how = match (entry.via, entry.nats_subject.as_deref()) {
        (EventVia::Bus, Some(subject)) => format!(
            "no Promise has a trigger whose `subject` (if set) matches {subject:?} and whose \
             `type` (if set) matches {:?}",
            entry.event_type
        ),
        _ => format!(
            "it came over HTTP, where a trigger matches by `type` alone, and no Promise has a \
             trigger whose `type` matches {:?} (a trigger with only a `subject` hears bus \
             events only)",
            entry.event_type
        ),
    };
    Some(format!(
        "No trigger matched this event, so nothing was filed: {how}. The triggers in force \
         when it arrived decided; `fulfil promise get NAME` shows a Promise's triggers."
    ))
}

const LEDGER_HEADERS: [&str; 6] = ["LEDGER_ID", "RECEIVED", "VIA", "TYPE", "SOURCE", "OUTCOMES"];

fn ledger_row(entry: &LedgerEntry) -> Vec<String> {
    vec![
        entry.ledger_id.to_string(),
        at(Some(entry.received_at)),
        entry.via.to_string(),
        entry.event_type.clone(),
        entry.source.clone(),
        outcome_summary(&entry.outcomes, entry.waits_completed.len()),
    ]
}

/// `filed 2, filtered 1`, or `no trigger matched`.
fn outcome_summary(outcomes: &[TriggerOutcome], waits: usize) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes {
        *counts.entry(o.outcome.as_str()).or_default() += 1;
    }
    let mut parts: Vec<String> = EventOutcome::ALL
        .iter()
        .filter_map(|o| counts.get(o.as_str()).map(|n| format!("{o} {n}")))
        .collect();
    if waits > 0 {
        parts.push(format!("waits {waits}"));
    }
    if parts.is_empty() {
        "no trigger matched".into()
    } else {
        parts.join(", ")
    }
}

fn dead_letter_row(letter: &DeadLetter) -> Vec<String> {
    vec![
        letter.id.to_string(),
        at(Some(letter.received_at)),
        opt(letter.subject.as_deref()),
        letter.replays.to_string(),
        shorten(&letter.reason, 100),
    ]
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() > max {
        format!("{}...", text.chars().take(max - 3).collect::<String>())
    } else {
        text.to_string()
    }
}

/// One page of a list endpoint as a table, or the whole answer as asked;
/// a further page is named on stderr.
async fn list<T: serde::de::DeserializeOwned>(
    client: &ClientArgs,
    path: &str,
    row: fn(&T) -> Vec<String>,
    headers: &[&str],
) -> anyhow::Result<ExitCode> {
    let body = Api::new(client)?.get(path).await?;
    if client.output != Format::Table {
        return print_structured(client.output, &body);
    }
    let page: Page<T> = model(&body, "list")?;
    if page.items.is_empty() {
        eprintln!("nothing found");
    }
    print_table(headers, page.items.iter().map(row).collect());
    if let Some(cursor) = page.next_cursor {
        eprintln!("more: add --cursor {cursor}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use clap::Parser;
    use fulfil_core::params::Violation;
    use serde_json::json;

    use super::*;
    use crate::{Cli, Command};

    fn send_args(argv: &[&str]) -> SendArgs {
        let mut full = vec!["fulfil", "event", "send"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).expect("parses").command {
            Command::Event(EventCommand::Send(args)) => args,
            _ => panic!("not event send"),
        }
    }

    #[test]
    fn send_builds_a_structured_cloud_event_from_flags() {
        let args = send_args(&[
            "--type",
            "com.acme.team.created",
            "--source",
            "/hr",
            "--subject",
            "vision",
            "--data",
            r#"{"team": "vision", "tier": "gold"}"#,
            "-e",
            "tenant=acme",
            "--extension",
            "traceparent=00-abc-01",
            "-o",
            "yaml",
        ]);
        assert!(args.client.output == Format::Yaml);
        let data = parse_data(args.data.as_deref().unwrap(), "--data").unwrap();
        let event = cloud_event(&args, "e1".into(), Some(data)).unwrap();
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["id"], "e1");
        assert_eq!(event["type"], "com.acme.team.created");
        assert_eq!(event["source"], "/hr");
        assert_eq!(event["subject"], "vision");
        assert_eq!(event["datacontenttype"], "application/json");
        assert_eq!(event["data"], json!({"team": "vision", "tier": "gold"}));
        assert_eq!(event["tenant"], "acme");
        assert_eq!(event["traceparent"], "00-abc-01");
        assert!(DateTime::parse_from_rfc3339(event["time"].as_str().unwrap()).is_ok());

        // Without data there is no datacontenttype either.
        let bare = send_args(&["--type", "t", "--source", "s"]);
        let event = cloud_event(&bare, "e2".into(), None).unwrap();
        assert!(event.get("data").is_none() && event.get("datacontenttype").is_none());
        assert!(event.get("subject").is_none());

        // --data and --data-file exclude each other; type and source are required.
        let both = ["fulfil", "event", "send", "--type", "t", "--source", "s"];
        let mut conflicting = both.to_vec();
        conflicting.extend(["--data", "1", "--data-file", "x.json"]);
        assert!(Cli::try_parse_from(conflicting).is_err());
        assert!(Cli::try_parse_from(["fulfil", "event", "send", "--type", "t"]).is_err());
    }

    #[test]
    fn data_must_be_json_and_says_how_to_quote_text() {
        assert_eq!(parse_data("\"hello\"", "--data").unwrap(), json!("hello"));
        assert_eq!(parse_data("[1, 2]", "--data").unwrap(), json!([1, 2]));
        let error = parse_data("hello", "--data").unwrap_err().to_string();
        assert!(error.starts_with("--data is not JSON"), "{error}");
        assert!(error.contains("--data '\"hello\"'"), "{error}");

        let dir = std::env::temp_dir().join(format!("fulfil-event-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("data.json");
        std::fs::write(&file, r#"{"team": "vision"}"#).unwrap();
        assert_eq!(read_data_file(&file).unwrap(), json!({"team": "vision"}));
        std::fs::write(&file, "team: vision").unwrap();
        let error = read_data_file(&file).unwrap_err().to_string();
        assert!(
            error.contains("--data-file") && error.contains("not JSON"),
            "{error}"
        );
        assert!(read_data_file(&dir.join("missing.json")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn extensions_are_lowercase_names_that_are_not_attributes() {
        assert_eq!(
            parse_extension("tenant=acme=1").unwrap(),
            ("tenant".to_string(), "acme=1".to_string())
        );
        assert_eq!(
            parse_extension("n2=").unwrap(),
            ("n2".into(), String::new())
        );
        assert!(
            parse_extension("tenant")
                .unwrap_err()
                .contains("NAME=VALUE")
        );
        assert!(
            parse_extension("Tenant=x")
                .unwrap_err()
                .contains("lowercase")
        );
        assert!(
            parse_extension("my-ext=x")
                .unwrap_err()
                .contains("lowercase")
        );
        assert!(parse_extension("=x").is_err());
        assert!(parse_extension("type=x").unwrap_err().contains("--type"));
        assert!(
            parse_extension("datacontenttype=x")
                .unwrap_err()
                .contains("--data")
        );
        // Given twice, the event is refused rather than one value winning.
        let args = send_args(&["--type", "t", "--source", "s", "-e", "a=1", "-e", "a=2"]);
        let error = cloud_event(&args, "e".into(), None).unwrap_err();
        assert!(error.to_string().contains("twice"), "{error}");
    }

    #[test]
    fn since_is_a_duration_ago_or_an_rfc3339_time() {
        let now = DateTime::parse_from_rfc3339("2026-12-02T07:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let an_hour_ago = since_at("1h", now).unwrap();
        assert_eq!(an_hour_ago.to_rfc3339(), "2026-12-02T06:00:00+00:00");
        assert_eq!(
            since_at("1h30m", now).unwrap().to_rfc3339(),
            "2026-12-02T05:30:00+00:00"
        );
        assert_eq!(
            since_at("2026-12-01T09:00:00+01:00", now)
                .unwrap()
                .to_rfc3339(),
            "2026-12-01T08:00:00+00:00"
        );
        let error = since_at("yesterday", now).unwrap_err();
        assert!(error.contains("neither a duration"), "{error}");
        assert!(since_at("400d", now).is_err(), "beyond the duration bound");

        let parsed = Cli::try_parse_from([
            "fulfil",
            "event",
            "list",
            "--since",
            "2h",
            "--outcome",
            "filtered",
        ]);
        assert!(parsed.is_ok());
        let bad = Cli::try_parse_from(["fulfil", "event", "list", "--outcome", "lost"]);
        let text = bad.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            text.contains("filed, duplicate, filtered, invalid"),
            "{text}"
        );
    }

    /// A stand-in for the API's event routes (the real ones are the
    /// engine's): it keeps what it was sent and answers as the contract
    /// says, so the commands' requests and readings of answers are checked.
    async fn stub_api() -> anyhow::Result<(String, Arc<Mutex<Vec<(String, Value)>>>)> {
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, post};
        let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let kept = seen.clone();
        let app = axum::Router::new()
            .route(
                "/v1/events",
                post(move |headers: HeaderMap, body: String| {
                    let kept = kept.clone();
                    async move {
                        let content_type = headers
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        let event: Value = serde_json::from_str(&body).unwrap_or_default();
                        kept.lock().expect("lock").push((content_type, event.clone()));
                        let receipt = json!({
                            "id": event["id"], "source": event["source"],
                            "ledger_id": "0193a1c2-7d4e-7c3a-9f0e-5b1d2c3e4f50",
                            "outcomes": [{"trigger": "on-team-created", "promise": "team-onboarding",
                                "outcome": "filed", "request_id": null, "run_id": null, "reason": null}],
                            "waits_completed": [],
                        });
                        (StatusCode::ACCEPTED, receipt.to_string())
                    }
                }),
            )
            .route(
                "/v1/events/{id}",
                get(|| async {
                    (StatusCode::NOT_FOUND, r#"{"title":"Not found","detail":"no event 42"}"#)
                }),
            )
            .route(
                "/v1/dead-letters",
                get(|| async { r#"{"items": [], "next_cursor": "c2"}"# }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((base, seen))
    }

    #[tokio::test]
    async fn commands_speak_the_event_routes_contract() -> anyhow::Result<()> {
        let (base, seen) = stub_api().await?;
        let args = send_args(&[
            "--type",
            "com.acme.team.created",
            "--source",
            "/hr",
            "--data",
            r#"{"tier": "gold"}"#,
            "--api-url",
            &base,
        ]);
        assert_eq!(send(args).await?, ExitCode::SUCCESS);
        let json_out = send_args(&[
            "--type",
            "t",
            "--source",
            "s",
            "--id",
            "fixed",
            "--api-url",
            &base,
            "-o",
            "json",
        ]);
        assert_eq!(send(json_out).await?, ExitCode::SUCCESS);
        {
            let seen = seen.lock().expect("lock");
            assert_eq!(seen.len(), 2);
            assert_eq!(seen[0].0, CLOUDEVENTS_JSON);
            assert_eq!(seen[0].1["data"], json!({"tier": "gold"}));
            // The default id is a UUID v7, new per send.
            let id = seen[0].1["id"].as_str().unwrap_or_default();
            assert_eq!(uuid::Uuid::parse_str(id)?.get_version_num(), 7);
            assert_eq!(seen[1].1["id"], "fixed");
        }
        let client = |output: &str| -> ClientArgs {
            match Cli::try_parse_from([
                "fulfil",
                "event",
                "get",
                "x",
                "--api-url",
                &base,
                "-o",
                output,
            ])
            .expect("parses")
            .command
            {
                Command::Event(EventCommand::Get { client, .. }) => client,
                _ => panic!("not event get"),
            }
        };
        let missing = get(&client("table"), "42").await.expect_err("404");
        assert!(missing.to_string().contains("no event 42"), "{missing}");
        assert!(missing.to_string().contains("(404)"), "{missing}");
        let empty = run_dead_letter(DeadLetterCommand::List {
            limit: 5,
            cursor: None,
            client: client("table"),
        })
        .await?;
        assert_eq!(empty, ExitCode::SUCCESS);
        Ok(())
    }

    fn entry(via: EventVia, subject: Option<&str>, outcomes: Vec<TriggerOutcome>) -> LedgerEntry {
        LedgerEntry {
            ledger_id: uuid::Uuid::now_v7(),
            received_at: Utc::now(),
            via,
            nats_subject: subject.map(str::to_string),
            id: "e1".into(),
            source: "/hr".into(),
            event_type: "com.acme.team.created".into(),
            event: json!({}),
            outcomes,
            waits_completed: Vec::new(),
            dead_letter_id: None,
            received_by: None,
        }
    }

    #[test]
    fn an_event_that_matched_nothing_is_explained_in_words() {
        let http = explain_unmatched(&entry(EventVia::Http, None, Vec::new())).unwrap();
        assert!(http.starts_with("No trigger matched"), "{http}");
        assert!(http.contains("over HTTP") && http.contains("com.acme.team.created"));
        let bus = explain_unmatched(&entry(
            EventVia::Bus,
            Some("acme.teams.created"),
            Vec::new(),
        ))
        .unwrap();
        assert!(bus.contains("\"acme.teams.created\""), "{bus}");
        assert!(!bus.contains("over HTTP"), "{bus}");

        let filtered = TriggerOutcome {
            trigger: "on-team-created".into(),
            promise: "team-onboarding".into(),
            outcome: EventOutcome::Filtered,
            request_id: None,
            run_id: None,
            reason: Some("filter \"event.data.tier == 'gold'\" was false".into()),
            violations: vec![Violation {
                pointer: "/team".into(),
                message: "required".into(),
            }],
        };
        let matched = entry(EventVia::Http, None, vec![filtered.clone(), filtered]);
        assert!(explain_unmatched(&matched).is_none());
        assert_eq!(
            outcome_summary(&matched.outcomes, 0),
            "filtered 2".to_string()
        );
        assert_eq!(outcome_summary(&[], 1), "waits 1");
        assert_eq!(outcome_summary(&[], 0), "no trigger matched");
        assert_eq!(shorten(&"x".repeat(200), 10), "xxxxxxx...");
    }
}
