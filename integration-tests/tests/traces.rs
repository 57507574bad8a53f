//! Traces across the engine and the worker (issue 15, item 6): a worker's
//! `execute` span joins its run's trace through the task's `traceparent`,
//! and an inbound event's `traceparent` is the parent of the run it
//! started. Spans are caught by the SDK's in-memory exporter, with engine,
//! worker and API in this process. One test per binary: the subscriber is
//! process-wide.

use std::time::{Duration, Instant};

use anyhow::Context;
use fulfil_integration_tests::TestStack;
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::{Value, json};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const WAIT: Duration = Duration::from_secs(30);
const EVENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const EVENT_SPAN: &str = "00f067aa0ba902b7";

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// The finished spans named `name` about `run_id`, waiting until there
/// is at least one.
async fn spans_of(
    exporter: &InMemorySpanExporter,
    name: &str,
    run_id: &str,
) -> anyhow::Result<Vec<SpanData>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let spans: Vec<SpanData> = exporter
            .get_finished_spans()?
            .into_iter()
            .filter(|s| s.name == name && attribute(s, "run_id").as_deref() == Some(run_id))
            .collect();
        if !spans.is_empty() {
            return Ok(spans);
        }
        anyhow::ensure!(Instant::now() < deadline, "no {name} span of run {run_id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stored_traceparent(stack: &TestStack, run_id: &str) -> anyhow::Result<String> {
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT context->'request'->>'traceparent' FROM fulfil.runs WHERE id = $1",
    )
    .bind(uuid::Uuid::parse_str(run_id)?)
    .fetch_one(&stack.pool)
    .await?;
    stored.context("the run keeps its trace context")
}

#[tokio::test]
async fn a_workers_span_joins_its_runs_trace_and_an_event_parents_the_run_it_started()
-> anyhow::Result<()> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(tracing_subscriber::EnvFilter::new(
                    "info,sqlx=warn,async_nats=warn,h2=warn,hyper=warn",
                )),
        )
        .try_init()?;

    let stack = TestStack::start().await?;
    let prefix = stack.names.prefix().to_string();
    stack
        .apply(&format!(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: traced, version: "1" }}
spec:
  api: {{ type: object, properties: {{ who: {{ type: string }} }} }}
  triggers:
    - name: on-hello
      subject: acme.{prefix}.hello.>
      type: com.acme.hello
      params: {{ who: "${{{{ event.data.who }}}}" }}
  workflow:
    steps:
      - {{ id: first, uses: echo, with: {{ who: "${{{{ params.who }}}}" }} }}
      - {{ id: second, uses: echo, needs: [first], with: {{ x: 1 }} }}
"#
        ))
        .await?;

    // A request through the API: its accept span starts the run's trace.
    let run = stack.request("traced", json!({ "who": "api" })).await?;
    assert_eq!(stack.wait_finished(run, WAIT).await?["status"], "succeeded");
    let run_id = run.to_string();
    let stored = stored_traceparent(&stack, &run_id).await?;
    let accept = exporter
        .get_finished_spans()?
        .into_iter()
        .find(|s| s.name == "accept")
        .context("an accept span")?;
    let trace = accept.span_context.trace_id();
    assert_eq!(
        stored,
        format!("00-{trace}-{}-01", accept.span_context.span_id()),
        "the run keeps its accept span's context"
    );
    let executes = spans_of(&exporter, "execute", &run_id).await?;
    assert_eq!(executes.len(), 2, "one execute span per step");
    let dispatches = spans_of(&exporter, "dispatch", &run_id).await?;
    for execute in &executes {
        assert_eq!(execute.span_context.trace_id(), trace, "{execute:?}");
        assert!(execute.parent_span_is_remote, "parented across NATS");
        assert!(
            dispatches
                .iter()
                .any(|d| d.span_context.span_id() == execute.parent_span_id),
            "the worker's span hangs under the engine's dispatch span"
        );
        assert!(attribute(execute, "step_id").is_some());
        assert_eq!(attribute(execute, "attempt").as_deref(), Some("1"));
    }
    for dispatch in &dispatches {
        assert_eq!(dispatch.span_context.trace_id(), trace);
    }
    // The result applied, and the next step planned, in the same trace.
    let applies = spans_of(&exporter, "apply", &run_id).await?;
    assert!(applies.iter().all(|s| s.span_context.trace_id() == trace));

    // An inbound event with a traceparent: the run it files is in the
    // event's trace, under the event's span.
    let event = json!({ "specversion": "1.0", "id": "hello-1", "source": "/acme",
                        "type": "com.acme.hello", "data": { "who": "bus" },
                        "traceparent": format!("00-{EVENT_TRACE}-{EVENT_SPAN}-01") });
    let response = stack
        .http
        .post(format!("{}/v1/events", stack.api))
        .header("content-type", "application/cloudevents+json")
        .body(serde_json::to_vec(&event)?)
        .send()
        .await?;
    let status = response.status().as_u16();
    let receipt: Value = response.json().await?;
    assert!(status < 300, "{status} {receipt}");
    let event_run = receipt["outcomes"][0]["run_id"]
        .as_str()
        .with_context(|| format!("a run filed: {receipt}"))?
        .to_string();
    assert_eq!(
        stack.wait_finished(event_run.parse()?, WAIT).await?["status"],
        "succeeded"
    );
    let event_trace = TraceId::from_hex(EVENT_TRACE)?;
    let event_span = SpanId::from_hex(EVENT_SPAN)?;
    let executes = spans_of(&exporter, "execute", &event_run).await?;
    assert_eq!(executes.len(), 2);
    assert!(
        executes
            .iter()
            .all(|s| s.span_context.trace_id() == event_trace),
        "{executes:?}"
    );
    let dispatches = spans_of(&exporter, "dispatch", &event_run).await?;
    assert!(
        dispatches
            .iter()
            .all(|d| d.span_context.trace_id() == event_trace && d.parent_span_id == event_span),
        "the event's span is the parent of the run's dispatches: {dispatches:?}"
    );
    stack.stop().await?;
    provider.shutdown()?;
    Ok(())
}
