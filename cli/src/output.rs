//! Human-readable tables for the operator commands.

use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use fulfil_api::model::{HistoryEvent, Run};
use serde_json::Value;

use crate::Format;

/// The whole answer, as `--output json` or `--output yaml` asked.
pub fn print_structured(format: Format, value: &Value) -> anyhow::Result<ExitCode> {
    if format == Format::Yaml {
        print!(
            "{}",
            serde_saphyr::to_string(value).context("rendering YAML")?
        );
    } else {
        println!("{}", serde_json::to_string_pretty(value)?);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// An optional value as text; `-` when absent.
pub fn opt(value: Option<impl std::fmt::Display>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// A time as the API writes it (RFC 3339, UTC); `-` when absent.
pub fn at(time: Option<DateTime<Utc>>) -> String {
    opt(time.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
}

pub fn print_run(run: &Run) {
    for (key, value) in [
        ("id", run.id.to_string()),
        ("promise", run.promise.clone()),
        ("promise_version", run.promise_version.clone()),
        ("kind", run.kind.clone()),
        ("status", run.status.clone()),
        ("request_id", run.request_id.to_string()),
        ("created_at", at(Some(run.created_at))),
        ("finished_at", at(run.finished_at)),
    ] {
        println!("{key:<16} {value}");
    }
    if let Some(error) = &run.error {
        println!("error            {error}");
    }
    if let Some(outputs) = &run.outputs {
        println!("outputs          {outputs}");
    }
    println!();
    let rows = run
        .steps()
        .iter()
        .map(|s| {
            let last = s.attempts.last();
            vec![
                s.id.clone(),
                s.status.clone(),
                s.attempt.to_string(),
                opt(last.and_then(|a| a.worker.as_deref())),
                at(last.and_then(|a| a.finished_at)),
                s.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &["STEP", "STATUS", "ATTEMPT", "WORKER", "FINISHED", "ERROR"],
        rows,
    );
    let waiting: Vec<Vec<String>> = run
        .steps()
        .iter()
        .filter_map(|s| {
            let waiting_for = s.waiting_for.as_ref()?;
            Some(vec![
                s.id.clone(),
                text_of(&waiting_for["kind"]),
                waiting_what(waiting_for),
                waiting_for["until"]
                    .as_str()
                    .map_or_else(|| "no timeout".to_string(), str::to_string),
            ])
        })
        .collect();
    if !waiting.is_empty() {
        println!();
        print_table(&["WAITING", "FOR", "WHAT", "UNTIL"], waiting);
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What a waiting step waits for, in a line: the event it would match,
/// who may approve and how far the quorum is, or nothing more for a sleep
/// (its `until` says it all).
pub fn waiting_what(waiting_for: &Value) -> String {
    let mut parts = Vec::new();
    match waiting_for["kind"].as_str() {
        Some("event") => {
            for (key, label) in [
                ("type", "type"),
                ("source", "source"),
                ("subject", "subject"),
                ("match", "match"),
                ("lookback", "lookback"),
            ] {
                if let Some(value) = waiting_for[key].as_str() {
                    parts.push(format!("{label} {value}"));
                }
            }
        }
        Some("approval") => {
            let approvers: Vec<String> = waiting_for["approvers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text_of)
                .collect();
            parts.push(format!("by {}", approvers.join(", ")));
            let decisions = waiting_for["decisions"].as_array();
            let approved = decisions
                .into_iter()
                .flatten()
                .filter(|d| d["decision"] == "approve")
                .count();
            parts.push(format!(
                "{approved} of {} approvals",
                waiting_for["quorum"].as_u64().unwrap_or(1)
            ));
            if waiting_for["allow_requester"] != Value::Bool(true) {
                parts.push("not the requester".into());
            }
            if let Some(message) = waiting_for["message"].as_str() {
                parts.push(format!("{message:?}"));
            }
        }
        _ => {}
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

pub fn print_history(events: &[HistoryEvent]) {
    let rows = events
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                at(Some(e.at)),
                e.kind.clone(),
                opt(e.step_id.as_deref()),
                opt(e.attempt),
                e.actor.clone(),
                compact(&e.data),
            ]
        })
        .collect();
    print_table(
        &["SEQ", "AT", "TYPE", "STEP", "ATTEMPT", "ACTOR", "DATA"],
        rows,
    );
}

fn compact(data: &Value) -> String {
    let s = data.to_string();
    if s.chars().count() > 100 {
        format!("{}...", s.chars().take(97).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::waiting_what;

    #[test]
    fn waiting_steps_say_what_they_wait_for() {
        let event = json!({"kind": "event", "type": "com.acme.db.ready",
            "match": "event.data.name == params.name", "lookback": "10m"});
        assert_eq!(
            waiting_what(&event),
            "type com.acme.db.ready; match event.data.name == params.name; lookback 10m"
        );
        let approval = json!({"kind": "approval", "approvers": ["team:dba", "user:alice"],
            "quorum": 2, "allow_requester": false, "message": "Large DB orders",
            "decisions": [{"by": "user:alice", "decision": "approve"}]});
        assert_eq!(
            waiting_what(&approval),
            "by team:dba, user:alice; 1 of 2 approvals; not the requester; \"Large DB orders\""
        );
        assert_eq!(
            waiting_what(&json!({"kind": "sleep", "until": "2026-12-02T12:00:00Z"})),
            "-"
        );
    }
}
