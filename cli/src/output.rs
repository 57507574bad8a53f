//! Human-readable tables for the operator commands.

use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use fulfil_api::model::{ChildLink, HistoryEvent, Page, ParentLink, Run, Step};
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
    let now = Utc::now();
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
    if let Some(parent) = &run.parent {
        println!("{}", parent_line(parent));
    }
    for line in run.steps().iter().filter_map(|s| why_waiting(s, now)) {
        println!("{line}");
    }
    println!();
    // Runs with for_each steps show each instance's item, and how far each
    // for_each step is.
    let fan_out = run
        .steps()
        .iter()
        .any(|s| s.instances.is_some() || s.instance_of.is_some());
    let rows = run
        .steps()
        .iter()
        .map(|s| {
            let last = s.attempts.last();
            let mut row = vec![
                s.id.clone(),
                s.status.clone(),
                s.attempt.to_string(),
                opt(last.and_then(|a| a.worker.as_deref())),
                opt(s.duration_ms.map(human_ms)),
                at(last.and_then(|a| a.finished_at)),
                s.error.clone().unwrap_or_default(),
            ];
            if fan_out {
                row.insert(2, item_column(s));
            }
            row
        })
        .collect();
    let mut headers = vec![
        "STEP", "STATUS", "ATTEMPT", "WORKER", "DURATION", "FINISHED", "ERROR",
    ];
    if fan_out {
        headers.insert(2, "ITEM");
    }
    print_table(&headers, rows);
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
    print_children(&run.children);
}

/// Where a child request comes from, as one line.
pub fn parent_line(parent: &ParentLink) -> String {
    format!(
        "parent           request {} (run {}, step {})",
        parent.request_id, parent.run_id, parent.step
    )
}

/// The child requests a run's promise steps filed, as a table after a
/// blank line; nothing when there are none.
pub fn print_children(children: &[ChildLink]) {
    if children.is_empty() {
        return;
    }
    println!();
    let rows = children
        .iter()
        .map(|c| {
            vec![
                c.step.clone(),
                c.promise.clone(),
                c.request_id.to_string(),
                opt(c.run_id),
                c.status.clone(),
            ]
        })
        .collect();
    print_table(&["CHILD OF", "PROMISE", "REQUEST", "RUN", "STATUS"], rows);
}

/// An instance's item, or how many instances of a for_each step
/// succeeded; `-` for other steps.
fn item_column(step: &Step) -> String {
    if let Some(counts) = &step.instances {
        return format!("{}/{} succeeded", counts.succeeded, counts.total);
    }
    step.item.as_ref().map_or_else(|| "-".to_string(), compact)
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
        Some("child") => {
            parts.push(format!("Promise {}", text_of(&waiting_for["promise"])));
            match waiting_for["request_id"].as_str() {
                Some(request) => parts.push(format!(
                    "request {request} ({})",
                    text_of(&waiting_for["status"])
                )),
                None => parts.push("being filed".into()),
            }
        }
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

/// A run's history as a timeline: each event's time, its offset from the
/// first event, the step and attempt it is about, and a short detail.
pub fn print_history(events: &[HistoryEvent]) {
    let start = events.first().map(|e| e.at);
    let rows = events
        .iter()
        .map(|e| {
            let offset = start.map_or(0, |s| (e.at - s).num_milliseconds());
            vec![
                e.at.format("%H:%M:%S%.3f").to_string(),
                format!("+{}", human_ms(offset)),
                opt(e.step_id.as_deref()),
                opt(e.attempt),
                e.kind.clone(),
                detail(e),
            ]
        })
        .collect();
    if let Some(start) = start {
        println!("started {}", at(Some(start)));
    }
    print_table(
        &["TIME", "+OFFSET", "STEP", "ATTEMPT", "EVENT", "DETAIL"],
        rows,
    );
}

/// The few words of an event's data worth a timeline column: an error's
/// code and message, a worker, a retry's time, who decided; else the data.
fn detail(event: &HistoryEvent) -> String {
    let data = &event.data;
    let mut parts = Vec::new();
    // The engine's own actors say nothing a reader needs; a person or a
    // tool acting on the run does.
    let routine =
        matches!(event.actor.as_str(), "" | "api" | "engine") || event.actor.starts_with("worker:");
    if !routine {
        parts.push(format!("by {}", event.actor));
    }
    if let Value::String(text) = data {
        parts.push(text.clone());
    }
    for key in [
        "worker",
        "queue",
        "code",
        "message",
        "reason",
        "next_attempt_at",
        "comment",
    ] {
        if let Some(value) = data[key].as_str() {
            parts.push(format!("{key} {value}"));
        }
    }
    // An instance of a for_each step says which item it runs.
    if let Some(item) = data.get("item") {
        parts.push(format!("item {}", compact(item)));
    }
    if let Some(count) = data.get("count").filter(|_| data.get("items").is_some()) {
        parts.push(format!(
            "{count} instances, max_parallel {}",
            data["max_parallel"]
        ));
    }
    if let Some(error) = data.get("error").filter(|e| !e.is_null()) {
        let code = error["code"].as_str();
        let message = error["message"].as_str();
        match (code, message, error.as_str()) {
            (_, _, Some(text)) => parts.push(text.to_string()),
            (Some(c), Some(m), _) => parts.push(format!("{c}: {m}")),
            (None, Some(m), _) => parts.push(m.to_string()),
            _ => parts.push(compact(error)),
        }
    }
    if parts.is_empty() && data.as_object().is_some_and(|o| !o.is_empty()) {
        parts.push(compact(data));
    }
    let line = parts.join("; ");
    if line.chars().count() > 80 {
        format!("{}...", line.chars().take(77).collect::<String>())
    } else {
        line
    }
}

/// A page of runs: id, promise, kind, status, owner, what it waits for, its
/// age and duration; and how to get the next page.
pub fn print_run_list(page: &Page<Run>, now: DateTime<Utc>) {
    let rows = page
        .items
        .iter()
        .map(|r| {
            let duration = r.finished_at.unwrap_or(now) - r.created_at;
            vec![
                r.id.to_string(),
                r.promise.clone(),
                r.kind.clone(),
                r.status.clone(),
                opt(r.owner.as_deref()),
                if r.waiting_for.is_empty() {
                    "-".to_string()
                } else {
                    r.waiting_for.join(",")
                },
                human_ms((now - r.created_at).num_milliseconds()),
                human_ms(duration.num_milliseconds()),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "PROMISE",
            "KIND",
            "STATUS",
            "OWNER",
            "WAITING FOR",
            "AGE",
            "DURATION",
        ],
        rows,
    );
    if let Some(next) = &page.next_cursor {
        println!("next: --cursor {next}");
    }
}

/// Milliseconds the way people read them: `450ms`, `1.2s`, `3m05s`, `2h07m`, `3d04h`.
pub fn human_ms(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Why a step waits, in plain words, or `None` when it does not wait:
/// "waiting: step approve waits for approval by team:sre (1 of 2), expires
/// in 3h00m"; "retry: step provision attempt 3 at 12:01:05 (in 2m05s)".
pub fn why_waiting(step: &Step, now: DateTime<Utc>) -> Option<String> {
    let w = step.waiting_for.as_ref()?;
    let time = |key: &str| {
        w[key]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let until = |t: Option<DateTime<Utc>>| match t {
        Some(t) if t > now => format!(", expires in {}", human_ms((t - now).num_milliseconds())),
        Some(_) => ", expired".to_string(),
        None => ", no timeout".to_string(),
    };
    let id = &step.id;
    Some(match w["kind"].as_str()? {
        "approval" => {
            let approvers: Vec<String> = w["approvers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text_of)
                .collect();
            let approved = w["decisions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["decision"] == "approve")
                .count();
            format!(
                "waiting: step {id} waits for approval by {} ({approved} of {}){}",
                approvers.join(", "),
                w["quorum"].as_u64().unwrap_or(1),
                until(time("until"))
            )
        }
        "event" => format!(
            "waiting: step {id} waits for an event ({}){}",
            waiting_what(w),
            until(time("until"))
        ),
        "sleep" => match time("until") {
            Some(t) => format!(
                "waiting: step {id} sleeps until {} (in {})",
                t.format("%Y-%m-%d %H:%M:%S"),
                human_ms((t - now).num_milliseconds())
            ),
            None => format!("waiting: step {id} sleeps"),
        },
        "retry" => {
            let next = time("next_attempt_at");
            format!(
                "retry: step {id} attempt {} at {} (in {})",
                w["attempt"].as_i64().unwrap_or(0),
                opt(next.map(|t| t.format("%H:%M:%S"))),
                human_ms(next.map_or(0, |t| (t - now).num_milliseconds()))
            )
        }
        "worker" => {
            let since = time("since")
                .map(|t| human_ms((now - t).num_milliseconds()))
                .unwrap_or_default();
            match w["worker"].as_str() {
                Some(worker) => format!(
                    "running: step {id} on worker {worker} (queue {}) for {since}",
                    text_of(&w["queue"])
                ),
                None => format!(
                    "queued: step {id} waits for a worker on queue {} for {since}",
                    text_of(&w["queue"])
                ),
            }
        }
        other => format!("waiting: step {id} waits for {other}"),
    })
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

    use chrono::{TimeDelta, Utc};
    use fulfil_api::model::Step;

    use super::{human_ms, waiting_what, why_waiting};

    fn step(waiting_for: serde_json::Value) -> Step {
        serde_json::from_value(json!({"id": "s", "status": "waiting", "attempt": 1,
            "attempts": [], "outputs": null, "error": null, "waiting_for": waiting_for}))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_waiting_step_says_why_in_plain_words() {
        let now = Utc::now();
        let in_3h = (now + TimeDelta::hours(3)).to_rfc3339();
        let approval = step(
            json!({"kind": "approval", "approvers": ["team:sre"], "quorum": 2,
            "decisions": [{"by": "user:a", "decision": "approve"}], "until": in_3h}),
        );
        let line = why_waiting(&approval, now).unwrap_or_default();
        assert!(
            line.starts_with(
                "waiting: step s waits for approval by team:sre (1 of 2), expires in 2h59m"
            ) || line.starts_with(
                "waiting: step s waits for approval by team:sre (1 of 2), expires in 3h00m"
            ),
            "{line}"
        );
        let next = (now + TimeDelta::seconds(125)).to_rfc3339();
        let retry = step(json!({"kind": "retry", "attempt": 3, "next_attempt_at": next}));
        let line = why_waiting(&retry, now).unwrap_or_default();
        assert!(line.starts_with("retry: step s attempt 3 at "), "{line}");
        assert!(
            line.ends_with("(in 2m05s)") || line.ends_with("(in 2m04s)"),
            "{line}"
        );
        let queued = step(json!({"kind": "worker", "queue": "gpu", "worker": null,
            "since": now.to_rfc3339()}));
        assert_eq!(
            why_waiting(&queued, now).unwrap_or_default(),
            "queued: step s waits for a worker on queue gpu for 0ms"
        );
        assert_eq!(why_waiting(&step(serde_json::Value::Null), now), None);
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human_ms(450), "450ms");
        assert_eq!(human_ms(1_250), "1.2s");
        assert_eq!(human_ms(125_000), "2m05s");
        assert_eq!(human_ms(7_620_000), "2h07m");
        assert_eq!(human_ms(273_600_000), "3d04h");
        assert_eq!(human_ms(-5), "0ms");
    }

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
