//! `GET /metrics` after real runs: a success, a retry, a failure, a dead
//! letter and an inbound event each move their counters and histograms,
//! with the right labels (issue 15, item 5). One test per binary: the
//! Prometheus recorder is process-wide.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_trait::async_trait;
use fulfil_integration_tests::{StackOptions, TestStack};
use fulfil_worker::{Handler, StepError, TaskContext};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// `fail: once` fails the first attempt (retryable), `fail: always` fails
/// for good; anything else succeeds.
struct Fickle;

#[async_trait]
impl Handler for Fickle {
    async fn handle(&self, task: &TaskContext, input: Value) -> Result<Value, StepError> {
        match input["fail"].as_str() {
            Some("once") if task.attempt == 1 => Err(StepError::retryable("first try fails")),
            Some("always") => Err(StepError::permanent("never works").with_code("nope")),
            _ => Ok(json!({ "attempt": task.attempt })),
        }
    }
}

/// The sum of the samples of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            (metric == name && all).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

async fn scrape(stack: &TestStack) -> anyhow::Result<(String, String)> {
    let response = stack
        .http
        .get(format!("{}/metrics", stack.api))
        .send()
        .await?;
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((content_type, response.text().await?))
}

/// Scrapes until `ready` holds, for at most [`WAIT`]: some counters move
/// only after an acknowledgement or a background count.
async fn scrape_until(stack: &TestStack, ready: impl Fn(&str) -> bool) -> anyhow::Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, text) = scrape(stack).await?;
        if ready(&text) {
            return Ok(text);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "metrics never got there:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn metrics_move_with_runs_retries_failures_dead_letters_and_events() -> anyhow::Result<()> {
    fulfil_api::metrics::install()?;
    let stack = TestStack::start_with(StackOptions {
        handlers: Box::new(|h| {
            h.register("fickle", Fickle);
        }),
        ..StackOptions::default()
    })
    .await?;
    let prefix = stack.names.prefix().to_string();
    stack
        .apply(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: metered, version: "1" }
spec:
  api: { type: object, properties: { fail: { type: string } } }
  workflow:
    steps:
      - id: call
        uses: fickle
        with: "${{ params }}"
        retry: { max_attempts: 3, initial: 50ms, max: 100ms, multiplier: 2, jitter: 0 }
"#,
        )
        .await?;
    stack
        .apply(&format!(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: metered-events, version: "1" }}
spec:
  api: {{ type: object, properties: {{ thing: {{ type: string }} }} }}
  triggers:
    - name: on-thing
      subject: acme.{prefix}.things.>
      type: com.acme.thing
      params: {{ thing: "${{{{ event.data.thing }}}}" }}
  workflow:
    steps:
      - {{ id: note, uses: echo, with: {{ thing: "${{{{ params.thing }}}}" }} }}
"#
        ))
        .await?;

    let ok = stack.request("metered", json!({})).await?;
    let retried = stack.request("metered", json!({ "fail": "once" })).await?;
    let failed = stack
        .request("metered", json!({ "fail": "always" }))
        .await?;
    assert_eq!(stack.wait_finished(ok, WAIT).await?["status"], "succeeded");
    assert_eq!(
        stack.wait_finished(retried, WAIT).await?["status"],
        "succeeded"
    );
    assert_eq!(stack.wait_finished(failed, WAIT).await?["status"], "failed");

    // A result that is not JSON: dead-lettered as unparseable.
    stack
        .js
        .publish(stack.names.results_subject(), "not a result".into())
        .await?
        .await?;
    // An inbound event that files a request.
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/cloudevents+json");
    let event = json!({ "specversion": "1.0", "id": "thing-1", "source": "/acme",
                        "type": "com.acme.thing", "data": { "thing": "lamp" } });
    stack
        .nats
        .publish_with_headers(
            format!("acme.{prefix}.things.made"),
            headers,
            serde_json::to_vec(&event)?.into(),
        )
        .await?;
    stack.nats.flush().await?;

    let metered = [("promise", "metered")];
    let text = scrape_until(&stack, |t| {
        sample(t, "fulfil_dead_letters_total", &[]) >= 1.0
            && sample(t, "fulfil_events_received_total", &[("outcome", "filed")]) >= 1.0
            && sample(
                t,
                "fulfil_runs_finished_total",
                &[("promise", "metered-events")],
            ) >= 1.0
            && t.contains("fulfil_runs_in_flight{promise=\"metered\"} 0")
    })
    .await?;

    let (content_type, _) = scrape(&stack).await?;
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(
        sample(&text, "fulfil_requests_accepted_total", &metered),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "fulfil_requests_accepted_total",
            &[("promise", "metered-events")]
        ),
        1.0,
        "a request filed by an event is accepted too"
    );
    let finished = |status| {
        sample(
            &text,
            "fulfil_runs_finished_total",
            &[("promise", "metered"), ("status", status)],
        )
    };
    assert_eq!(finished("succeeded"), 2.0, "{text}");
    assert_eq!(finished("failed"), 1.0, "{text}");
    assert_eq!(
        sample(
            &text,
            "fulfil_step_retries_total",
            &[("promise", "metered"), ("step", "call")]
        ),
        1.0,
        "one retry, of the run that failed once; the permanent failure is not retried"
    );
    // Four attempts applied: ok, failed + ok, failed.
    let step = [
        ("promise", "metered"),
        ("step", "call"),
        ("queue", "default"),
    ];
    let ok_step = [step.as_slice(), &[("outcome", "ok")]].concat();
    let error_step = [step.as_slice(), &[("outcome", "error")]].concat();
    assert_eq!(
        sample(&text, "fulfil_step_duration_seconds_count", &ok_step),
        2.0
    );
    assert_eq!(
        sample(&text, "fulfil_step_duration_seconds_count", &error_step),
        2.0
    );
    let buckets = [ok_step.as_slice(), &[("le", "+Inf")]].concat();
    assert_eq!(
        sample(&text, "fulfil_step_duration_seconds_bucket", &buckets),
        2.0,
        "a histogram with buckets, not a summary"
    );
    assert!(
        text.contains("fulfil_step_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(!text.contains("quantile="), "no summaries:\n{text}");
    assert_eq!(
        sample(&text, "fulfil_step_schedule_to_start_seconds_count", &step),
        4.0
    );
    assert!(sample(&text, "fulfil_step_schedule_to_start_seconds_sum", &step) >= 0.0);
    assert_eq!(
        sample(
            &text,
            "fulfil_dead_letters_total",
            &[("source", "results"), ("reason", "unparseable")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "fulfil_events_received_total",
            &[("outcome", "filed")]
        ),
        1.0
    );
    assert!(
        sample(&text, "fulfil_steps_applied_total", &[]) >= 5.0,
        "{text}"
    );
    assert!(
        sample(&text, "fulfil_tasks_dispatched_total", &[]) >= 5.0,
        "{text}"
    );
    assert!(
        sample(&text, "fulfil_pg_transactions_total", &[("path", "apply")]) >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "fulfil_pg_transactions_total", &[("path", "intake")]) >= 3.0,
        "{text}"
    );
    assert!(text.contains("fulfil_outbox_depth "), "{text}");
    assert!(!text.contains(&ok.to_string()), "never a run id as a label");
    stack.stop().await
}
