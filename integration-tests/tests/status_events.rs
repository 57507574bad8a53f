//! Status events on the real Postgres and NATS, read by a plain JetStream
//! consumer (no Fulfil code): every kind a run goes through, in history
//! order (`fulfilseq` strictly increasing), with the `data` a portal needs,
//! and nothing lost or reordered while NATS cannot take them.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_trait::async_trait;
use fulfil_core::ids::RunId;
use fulfil_integration_tests::{StackOptions, TestStack};
use fulfil_worker::{Handler, StepError, TaskContext};
use futures::StreamExt;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Echoes its input after 400ms: long enough for the worker to report the
/// step started (it does for steps still running after 250ms).
struct SlowEcho;

#[async_trait]
impl Handler for SlowEcho {
    async fn handle(&self, _: &TaskContext, input: Value) -> Result<Value, StepError> {
        tokio::time::sleep(Duration::from_millis(400)).await;
        Ok(input)
    }
}

/// Always fails for good.
struct Refuse;

#[async_trait]
impl Handler for Refuse {
    async fn handle(&self, _: &TaskContext, _: Value) -> Result<Value, StepError> {
        Err(StepError::permanent("quota exhausted").with_code("quota"))
    }
}

const THREE_STEPS: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: three, version: 1.2.0 }
spec:
  workflow:
    steps:
      - { id: a, uses: slow_echo, with: { n: 1 } }
      - { id: b, uses: slow_echo, needs: [a], with: { n: "${{ steps.a.outputs.n + 1 }}" } }
      - { id: c, uses: slow_echo, needs: [b], with: { n: "${{ steps.b.outputs.n + 1 }}" } }
  outputs:
    total: "${{ steps.c.outputs.n }}"
"#;

/// `a` fails for good; nothing to undo.
const FAILS: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: fails, version: 1.0.0 }
spec:
  workflow:
    steps:
      - { id: a, uses: refuse }
"#;

/// `made` succeeds and is undone when `broken` fails.
const UNDONE: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: undone, version: 1.0.0 }
spec:
  workflow:
    steps:
      - { id: made, uses: echo, with: { v: 1 }, compensate: { uses: noop } }
      - { id: broken, uses: refuse, needs: [made] }
"#;

async fn stack(engines: usize) -> anyhow::Result<TestStack> {
    TestStack::start_with(StackOptions {
        engines,
        handlers: Box::new(|h| {
            h.register("slow_echo", SlowEcho).register("refuse", Refuse);
        }),
        ..StackOptions::default()
    })
    .await
}

/// The status events of `run` on `<prefix>.events.>`, in the order the
/// stream holds them, once one of type `dev.fulfil.<last>` arrived (at most
/// `wait`). Reads with an ephemeral consumer from the stream's start.
async fn follow(
    stack: &TestStack,
    run: RunId,
    last: &str,
    wait: Duration,
) -> anyhow::Result<Vec<Value>> {
    let consumer = stack
        .js
        .get_stream(stack.names.events_stream())
        .await?
        .create_consumer(pull::Config {
            filter_subject: format!("{}.events.>", stack.names.prefix()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let last_type = format!("dev.fulfil.{last}");
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let next = tokio::time::timeout_at(deadline, messages.next()).await;
        let Ok(Some(message)) = next else {
            anyhow::bail!("no {last_type} for {run} within {wait:?}; got {seen:#?}");
        };
        let message = message.map_err(|e| anyhow::anyhow!("reading events: {e}"))?;
        let event: Value = serde_json::from_slice(&message.payload)?;
        anyhow::ensure!(
            message.subject.as_str()
                == format!(
                    "{}.events.{}",
                    stack.names.prefix(),
                    event["type"]
                        .as_str()
                        .and_then(|t| t.strip_prefix("dev.fulfil."))
                        .unwrap_or("?")
                ),
            "{} carries {event}",
            message.subject
        );
        if event["subject"] != json!(run) {
            continue;
        }
        let done = event["type"] == last_type;
        seen.push(event);
        if done {
            return Ok(seen);
        }
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| {
            e["type"]
                .as_str()
                .and_then(|t| t.strip_prefix("dev.fulfil."))
                .unwrap_or("?")
        })
        .collect()
}

/// `fulfilseq` of each event, checked strictly increasing.
fn assert_in_order(events: &[Value]) {
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e["fulfilseq"].as_i64().unwrap_or(-1))
        .collect();
    assert!(seqs.iter().all(|s| *s > 0), "{seqs:?}");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "fulfilseq strictly increasing: {seqs:?}"
    );
}

/// The data every event carries, and the CloudEvent attributes.
fn assert_envelope(event: &Value, stack: &TestStack, run: RunId, promise: &str) {
    assert_eq!(event["specversion"], "1.0", "{event}");
    assert_eq!(event["source"], format!("fulfil/{}", stack.names.prefix()));
    assert_eq!(event["subject"], json!(run));
    assert_eq!(event["datacontenttype"], "application/json");
    assert!(
        event["id"].as_str().is_some_and(|id| id.len() == 36),
        "{event}"
    );
    assert!(event["time"].is_string(), "{event}");
    let data = &event["data"];
    assert_eq!(data["run_id"], json!(run));
    assert!(data["request_id"].is_string(), "{event}");
    assert_eq!(data["run_kind"], "configure");
    assert_eq!(data["promise"], promise);
    assert!(data["promise_version"].is_string(), "{event}");
    assert!(data["status"].is_string(), "{event}");
}

#[tokio::test]
async fn a_three_step_run_is_followed_from_accepted_to_succeeded_with_outputs() -> anyhow::Result<()>
{
    let stack = stack(1).await?;
    stack.apply(THREE_STEPS).await?;
    let run = stack.request("three", json!({})).await?;
    let events = follow(&stack, run, "run.succeeded", WAIT).await?;
    assert_eq!(
        types(&events),
        vec![
            "request.accepted",
            "run.started",
            "step.started",
            "step.succeeded",
            "step.started",
            "step.succeeded",
            "step.started",
            "step.succeeded",
            "run.succeeded",
        ]
    );
    assert_in_order(&events);
    for event in &events {
        assert_envelope(event, &stack, run, "three");
    }
    let steps: Vec<Option<&str>> = events.iter().map(|e| e["data"]["step"].as_str()).collect();
    assert_eq!(
        steps,
        vec![
            None,
            None,
            Some("a"),
            Some("a"),
            Some("b"),
            Some("b"),
            Some("c"),
            Some("c"),
            None
        ]
    );
    assert_eq!(events[3]["data"]["outputs"], json!({ "n": 1 }));
    assert_eq!(events[3]["data"]["status"], "succeeded");
    assert_eq!(events[2]["data"]["status"], "running");
    let done = &events[8]["data"];
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["outputs"], json!({ "total": 3 }));
    assert_eq!(done["promise_version"], "1.2.0");
    // fulfilseq is the history's seq: the same numbers, same kinds.
    let history = stack.history(run).await?;
    for event in &events {
        let seq = event["fulfilseq"].as_i64().unwrap_or(-1);
        let recorded = history
            .iter()
            .find(|h| h["seq"].as_i64() == Some(seq))
            .unwrap_or_else(|| panic!("history holds seq {seq}"));
        assert_eq!(
            format!("dev.fulfil.{}", recorded["type"].as_str().unwrap_or("?")),
            event["type"].as_str().unwrap_or("")
        );
    }
    // Everything published was deleted from the status outbox.
    for _ in 0..100 {
        if stack.count("status_outbox").await? == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stack.count("status_outbox").await?, 0);
    stack.stop().await
}

#[tokio::test]
async fn failed_and_compensated_runs_publish_step_failed_then_their_end_with_the_error()
-> anyhow::Result<()> {
    let stack = stack(1).await?;
    stack.apply(FAILS).await?;
    stack.apply(UNDONE).await?;

    let failed = stack.request("fails", json!({})).await?;
    let events = follow(&stack, failed, "run.failed", WAIT).await?;
    assert_eq!(
        types(&events),
        vec![
            "request.accepted",
            "run.started",
            "step.failed",
            "run.failed"
        ]
    );
    assert_in_order(&events);
    for event in &events {
        assert_envelope(event, &stack, failed, "fails");
    }
    assert_eq!(events[2]["data"]["step"], "a");
    assert_eq!(events[2]["data"]["status"], "failed");
    assert_eq!(events[2]["data"]["error"], "quota exhausted");
    assert_eq!(events[2]["data"]["error_code"], "quota");
    let end = &events[3]["data"];
    assert_eq!(end["status"], "failed");
    assert!(
        end["error"]
            .as_str()
            .is_some_and(|e| e.contains("step a failed") && e.contains("quota exhausted")),
        "{end}"
    );

    let undone = stack.request("undone", json!({})).await?;
    let events = follow(&stack, undone, "run.compensated", WAIT).await?;
    assert_eq!(
        types(&events),
        vec![
            "request.accepted",
            "run.started",
            "step.succeeded",
            "step.failed",
            "run.compensated",
        ],
        "a quick step reports no start; compensation attempts are history only"
    );
    assert_in_order(&events);
    assert_eq!(events[2]["data"]["outputs"], json!({ "v": 1 }));
    assert_eq!(events[3]["data"]["step"], "broken");
    let end = &events[4]["data"];
    assert_eq!(end["status"], "compensated");
    assert!(end["error"].is_string(), "{end}");
    stack.stop().await
}

#[tokio::test]
async fn events_held_back_while_nats_refuses_them_arrive_later_complete_and_in_order()
-> anyhow::Result<()> {
    // Two engines: one of them publishes status events, never both.
    let stack = stack(2).await?;
    stack.apply(THREE_STEPS).await?;
    // Each engine tries for the lock as it starts; give them a moment.
    let mut holders: i64 = 0;
    for _ in 0..50 {
        holders = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND ((classid::bigint << 32) | objid::bigint) = $1",
        )
        .bind(fulfil_engine::status_events::PUBLISHER_LOCK)
        .fetch_one(&stack.pool)
        .await?;
        if holders > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(holders, 1, "one status publisher across the engines");

    // The events stream goes away: every publish fails (no stream answers).
    stack
        .js
        .delete_stream(stack.names.events_stream())
        .await
        .map_err(|e| anyhow::anyhow!("deleting the events stream: {e}"))?;
    let runs = [
        stack.request("three", json!({})).await?,
        stack.request("three", json!({})).await?,
    ];
    for run in runs {
        stack.wait_for_event(run, "run.succeeded", WAIT).await?;
    }
    // Every event waits in the status outbox meanwhile.
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fulfil.status_outbox WHERE run_id = ANY($1::uuid[])",
    )
    .bind(runs.iter().map(|r| r.as_uuid()).collect::<Vec<_>>())
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(waiting, 18, "nine events per run, none lost");

    // The stream is back: the publisher catches up, in order, complete.
    fulfil_bus::streams::ensure_streams(&stack.js, &stack.names).await?;
    for run in runs {
        let events = follow(&stack, run, "run.succeeded", WAIT).await?;
        assert_eq!(events.len(), 9, "{:?}", types(&events));
        assert_eq!(types(&events)[0], "request.accepted");
        assert_in_order(&events);
        assert_eq!(events[8]["data"]["outputs"], json!({ "total": 3 }));
    }
    stack.stop().await
}

#[tokio::test]
async fn a_request_filed_with_a_traceparent_carries_it_on_every_status_event_of_its_run()
-> anyhow::Result<()> {
    let stack = stack(1).await?;
    stack.apply(UNDONE).await?;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    // As the event intake files a request for a trigger.
    let accepted = fulfil_engine::requests::create_request(
        &stack.engine,
        fulfil_engine::requests::NewRequest {
            promise: "undone".into(),
            params: json!({}),
            actor: "event:test".into(),
            traceparent: Some(traceparent.into()),
            ..Default::default()
        },
    )
    .await?;
    let events = follow(&stack, accepted.run_id, "run.compensated", WAIT).await?;
    assert_eq!(events.len(), 5, "{:?}", types(&events));
    for event in &events {
        assert_eq!(event["traceparent"], traceparent, "{event}");
        assert_eq!(event["data"]["request_id"], json!(accepted.request_id));
    }
    // A request filed without one carries none.
    let plain = stack.request("undone", json!({})).await?;
    let events = follow(&stack, plain, "run.compensated", WAIT).await?;
    assert!(events.iter().all(|e| e.get("traceparent").is_none()));
    stack.stop().await
}
