//! `fulfil run watch ID`: follows `GET /v1/runs/{id}/events` (SSE) and shows
//! the run's steps live, then its result.
//!
//! On a terminal, a line per step with its status and a bar of finished
//! steps (indicatif, on stderr); otherwise one line per event on stdout.
//! `--output json` prints each event as a JSON line, as the API sends it.
//! A dropped connection is resumed with `Last-Event-ID`, so no event is
//! shown twice or skipped. Exit code 0 only if the run succeeded.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use fulfil_api::model::{HistoryEvent, Run};
use fulfil_api::sse::SseParser;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::client::{Api, model};
use crate::{ClientArgs, Format};

/// Reconnections after the stream dropped before the run finished.
const RECONNECTS: u32 = 20;
/// No byte for this long (the API sends a keep-alive every 15 s): the
/// connection is dead, reconnect.
const SILENCE: Duration = Duration::from_secs(45);

pub async fn run_watch(args: &ClientArgs, id: &str) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let run: Run = model(&api.get(&format!("/v1/runs/{id}")).await?, "run")?;
    // No overall timeout: the stream lasts as long as the run.
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(SILENCE)
        .default_headers(crate::client::auth_headers(args)?)
        .build()
        .context("building the HTTP client")?;
    let mut view = View::new(args.output, &run);
    let mut last_seq = 0i64;
    let mut tries = 0;
    loop {
        let ended = follow(&http, &api.base, id, &mut last_seq, &mut view).await;
        let run: Run = model(&api.get(&format!("/v1/runs/{id}")).await?, "run")?;
        if run.is_finished() {
            view.finish();
            return Ok(result(args.output, &run));
        }
        tries += 1;
        if tries > RECONNECTS {
            let why = ended.err().map(|e| format!(": {e:#}")).unwrap_or_default();
            bail!("lost the event stream of run {id} {RECONNECTS} times{why}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Reads the stream from after `last_seq` until the server ends it.
async fn follow(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    last_seq: &mut i64,
    view: &mut View,
) -> anyhow::Result<()> {
    let mut response = http
        .get(format!("{base}/v1/runs/{id}/events"))
        .header("Last-Event-ID", last_seq.to_string())
        .header("Accept", "text/event-stream")
        .send()
        .await
        .with_context(|| crate::report::Reaching::Api(base.to_string()))?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        bail!("watching run {id}: {status}: {body}");
    }
    let mut parser = SseParser::default();
    while let Some(chunk) = response.chunk().await? {
        for event in parser.push(&chunk)? {
            if event.event.as_deref() == Some("error") {
                return Err(anyhow!("the API stopped the watch: {}", event.data));
            }
            let history: HistoryEvent = serde_json::from_str(&event.data)
                .with_context(|| format!("an event that is not a history event: {}", event.data))?;
            if history.seq <= *last_seq {
                continue;
            }
            *last_seq = history.seq;
            view.show(&history, &event.data);
        }
    }
    Ok(())
}

/// How events are shown.
enum View {
    Json,
    Lines,
    Bars {
        _multi: MultiProgress,
        overall: ProgressBar,
        steps: BTreeMap<String, (ProgressBar, bool)>,
    },
}

impl View {
    fn new(format: Format, run: &Run) -> Self {
        if format != Format::Table {
            return View::Json;
        }
        if !std::io::stderr().is_terminal() {
            return View::Lines;
        }
        let multi = MultiProgress::new();
        let step_style = ProgressStyle::with_template("{prefix:>20} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        // The watch replays the history from its start, so each step
        // begins pending and the events bring it to where it is.
        let mut steps = BTreeMap::new();
        for step in run.steps() {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(step_style.clone());
            bar.set_prefix(step.id.clone());
            bar.set_message("pending");
            steps.insert(step.id.clone(), (bar, false));
        }
        let overall = multi.add(ProgressBar::new(steps.len() as u64));
        overall.set_style(
            ProgressStyle::with_template("{prefix:>20} [{bar:30}] {pos}/{len} steps {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        overall.set_prefix(format!("run {}", short(&run.id.to_string())));
        overall.set_message("pending");
        View::Bars {
            _multi: multi,
            overall,
            steps,
        }
    }

    fn show(&mut self, event: &HistoryEvent, raw: &str) {
        match self {
            View::Json => println!("{raw}"),
            View::Lines => println!(
                "{:>4} {:<28} {}",
                event.seq,
                event.kind,
                event.step_id.as_deref().unwrap_or("")
            ),
            View::Bars { overall, steps, .. } => {
                if let (Some(step), Some(status)) = (&event.step_id, step_status(&event.kind)) {
                    if let Some((bar, finished)) = steps.get_mut(step) {
                        bar.set_message(status.to_string());
                        let now = step_finished(status);
                        if now && !*finished {
                            overall.inc(1);
                        } else if !now && *finished {
                            overall.dec(1);
                        }
                        *finished = now;
                    }
                } else if let Some(status) = event.kind.strip_prefix("run.") {
                    overall.set_message(status.to_string());
                }
            }
        }
    }

    fn finish(&self) {
        if let View::Bars { overall, steps, .. } = self {
            for (bar, _) in steps.values() {
                bar.finish();
            }
            overall.finish();
        }
    }
}

/// A step's status after a history event of `kind`, if it is about one.
fn step_status(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "step.dispatched" => "dispatched",
        "step.started" => "running",
        "step.retry_scheduled" | "step.timed_out" => "retrying",
        "step.waiting" => "waiting",
        "step.succeeded" => "succeeded",
        "step.failed" => "failed",
        "step.skipped" => "skipped",
        "step.cancelled" => "cancelled",
        "compensation.dispatched" | "compensation.started" => "compensating",
        "compensation.succeeded" => "compensated",
        "compensation.failed" => "compensation failed",
        _ => return None,
    })
}

fn step_finished(status: &str) -> bool {
    matches!(
        status,
        "succeeded" | "failed" | "skipped" | "cancelled" | "compensated"
    )
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Prints the run's result; exit code 0 only if it succeeded.
fn result(format: Format, run: &Run) -> ExitCode {
    let succeeded = run.status == "succeeded";
    // JSON lines on stdout are the events only; the result goes to stderr.
    let mut out = format!("run {} {}", run.id, run.status);
    if let Some(error) = &run.error {
        out.push_str(&format!("\nerror: {error}"));
    }
    if let Some(outputs) = run.outputs.as_ref().filter(|o| !o.is_null()) {
        let pretty =
            serde_json::to_string_pretty(outputs).unwrap_or_else(|_| Value::to_string(outputs));
        out.push_str(&format!("\noutputs: {pretty}"));
    }
    if format == Format::Table {
        println!("{out}");
    } else {
        eprintln!("{out}");
    }
    if succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
