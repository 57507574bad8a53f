//! Human-readable tables for the operator commands.

use std::process::ExitCode;

use serde_json::Value;

use crate::client::text;

pub fn print_json(value: &Value) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(value)?);
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

pub fn print_run(run: &Value) {
    for key in [
        "id",
        "promise",
        "promise_version",
        "kind",
        "status",
        "request_id",
        "created_at",
        "finished_at",
    ] {
        println!("{key:<16} {}", text(&run[key]));
    }
    if let Some(error) = run["error"].as_str() {
        println!("error            {error}");
    }
    if !run["outputs"].is_null() {
        println!("outputs          {}", run["outputs"]);
    }
    println!();
    let rows = run["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let last = s["attempts"]
                .as_array()
                .and_then(|a| a.last())
                .cloned()
                .unwrap_or(Value::Null);
            vec![
                text(&s["id"]),
                text(&s["status"]),
                text(&s["attempt"]),
                text(&last["worker"]),
                text(&last["finished_at"]),
                s["error"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    print_table(
        &["STEP", "STATUS", "ATTEMPT", "WORKER", "FINISHED", "ERROR"],
        rows,
    );
}

pub fn print_history(events: &[Value]) {
    let rows = events
        .iter()
        .map(|e| {
            vec![
                text(&e["seq"]),
                text(&e["at"]),
                text(&e["type"]),
                text(&e["step"]),
                text(&e["attempt"]),
                text(&e["actor"]),
                compact(&e["data"]),
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
