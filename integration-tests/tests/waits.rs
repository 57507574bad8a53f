//! `wait.event` steps against the real Postgres and NATS (DESIGN.md
//! "Waits"): a waiting step holds no worker, shows `waiting_for` in the run
//! and in the `step.waiting` status event, and completes with the first
//! event that matches it (its output is the CloudEvent); `lookback` also
//! matches an event received before the wait began, so an event published
//! as the upstream step finishes is never missed; one event completes every
//! wait it matches, each step once; a timeout fails the step `wait_timeout`
//! and the run compensates; an event racing the timeout leaves exactly one
//! outcome.
//!
//! Bus events are published by a plain NATS client on the subject the
//! waits name: applying a Promise whose waits name a subject makes the
//! inbound stream capture it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use chrono::{DateTime, Utc};
use fulfil_core::ids::RunId;
use fulfil_core::wire::{Outcome, ResultMessage};
use fulfil_integration_tests::TestStack;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);
const READY: &str = "com.acme.db.ready";
const SOURCE: &str = "/acme/provisioner";

/// Where this stack's bus events go.
fn subject(stack: &TestStack, leaf: &str) -> String {
    format!("acme.{}.db.{leaf}", stack.names.prefix())
}

/// `provision` (undone by `compensate`) → `ready` (a `wait.event` with
/// `with` and `timeout`) → `use`, which echoes the event's data.
fn waiting_promise(name: &str, first: &str, with: &str, timeout: &str) -> String {
    format!(
        r#"apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: {name}, version: "1" }}
spec:
  api:
    type: object
    required: [name]
    properties:
      name: {{ type: string }}
  workflow:
    steps:
      - id: provision
{first}
        compensate: {{ uses: noop }}
      - id: ready
        needs: [provision]
        uses: wait.event
        with: {with}
{timeout}
      - id: use
        needs: [ready]
        uses: echo
        with: {{ name: "${{{{ steps.ready.outputs.data.name }}}}", event: "${{{{ steps.ready.outputs.id }}}}" }}
"#
    )
}

const ECHO_FIRST: &str = "        uses: echo\n        with: { db: \"${{ params.name }}\" }";

fn event(id: &str, name: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": SOURCE,
        "type": READY,
        "datacontenttype": "application/json",
        "data": { "name": name },
    })
}

/// Publishes `event` in structured mode and waits for the inbound stream
/// to store it.
async fn publish(stack: &TestStack, leaf: &str, event: &Value) -> anyhow::Result<()> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("content-type", "application/cloudevents+json");
    stack
        .js
        .publish_with_headers(
            subject(stack, leaf),
            headers,
            serde_json::to_vec(event)?.into(),
        )
        .await?
        .await
        .context("the inbound stream did not store the event")?;
    Ok(())
}

/// `POST /v1/events` in structured mode.
async fn post_event(stack: &TestStack, event: &Value) -> anyhow::Result<(u16, Value)> {
    let response = stack
        .http
        .post(format!("{}/v1/events", stack.api))
        .header("content-type", "application/cloudevents+json")
        .body(serde_json::to_vec(event)?)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"] == id))
        .unwrap_or(&Value::Null)
}

/// The run once its step `id` is `waiting`, polling for at most [`WAIT`].
async fn until_waiting(stack: &TestStack, run: RunId, id: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = stack.run(run).await?;
        if step(&body, id)["status"] == "waiting" {
            return Ok(body);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "step {id} of {run} not waiting within {WAIT:?}: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits, at most [`WAIT`], until the ledger holds the event `id`.
async fn until_in_ledger(stack: &TestStack, id: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, page) = stack.get("/v1/events?limit=500").await?;
        anyhow::ensure!(status == 200, "GET /v1/events: {status} {page}");
        if let Some(entry) = page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["id"] == id)
        {
            return Ok(entry.clone());
        }
        anyhow::ensure!(Instant::now() < deadline, "event {id} not in the ledger");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Outcomes of step `id` in `history`: each `step.succeeded` or
/// `step.failed`, with its data.
fn outcomes<'a>(history: &'a [Value], id: &str) -> Vec<(&'a str, &'a Value)> {
    history
        .iter()
        .filter(|e| e["step"] == id)
        .filter_map(|e| match e["type"].as_str() {
            Some(kind @ ("step.succeeded" | "step.failed")) => Some((kind, &e["data"])),
            _ => None,
        })
        .collect()
}

fn of_type<'a>(history: &'a [Value], kind: &str) -> Vec<&'a Value> {
    history.iter().filter(|e| e["type"] == kind).collect()
}

/// A pull consumer of this stack's `step.waiting` status events, from the
/// stream's start.
async fn waiting_events(
    stack: &TestStack,
) -> anyhow::Result<async_nats::jetstream::consumer::pull::Stream> {
    Ok(stack
        .js
        .get_stream(stack.names.events_stream())
        .await?
        .create_consumer(pull::Config {
            filter_subject: stack.names.event_subject("step.waiting"),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await?
        .messages()
        .await?)
}

/// The `step.waiting` status event of `run`, reading at most [`WAIT`].
async fn waiting_event_of(
    messages: &mut async_nats::jetstream::consumer::pull::Stream,
    run: RunId,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, messages.next())
            .await
            .with_context(|| format!("no step.waiting status event for {run}"))?
            .context("the status events ended")?
            .map_err(|e| anyhow::anyhow!("reading status events: {e}"))?;
        let event: Value = serde_json::from_slice(&message.payload)?;
        if event["subject"] == json!(run) {
            return Ok(event);
        }
    }
}

#[tokio::test]
async fn a_correlated_event_completes_its_wait_an_uncorrelated_one_nothing_and_a_timeout_compensates()
-> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let with = format!(
        "{{ subject: \"acme.{}.db.>\", type: {READY}, source: \"{SOURCE}\", match: \"event.data.name == params.name\" }}",
        stack.names.prefix()
    );
    stack
        .apply(&waiting_promise(
            "db",
            ECHO_FIRST,
            &with,
            "        timeout: 1m",
        ))
        .await?;
    stack
        .apply(&waiting_promise(
            "db-hurried",
            ECHO_FIRST,
            &with,
            "        timeout: 2s",
        ))
        .await?;
    let mut status_events = waiting_events(&stack).await?;

    let orders = stack.request("db", json!({ "name": "orders" })).await?;
    let billing = stack.request("db", json!({ "name": "billing" })).await?;
    let never = stack
        .request("db-hurried", json!({ "name": "never" }))
        .await?;

    // Waiting: shown in the run, in history and as a status event.
    let run = until_waiting(&stack, orders, "ready").await?;
    let waiting_for = &step(&run, "ready")["waiting_for"];
    assert_eq!(waiting_for["kind"], "event", "{run:#}");
    assert_eq!(waiting_for["type"], READY);
    assert_eq!(waiting_for["source"], SOURCE);
    assert_eq!(waiting_for["subject"], subject(&stack, ">"));
    let until: DateTime<Utc> = waiting_for["until"]
        .as_str()
        .context("an event wait with a timeout shows until")?
        .parse()?;
    let from_now = (until - Utc::now()).num_seconds();
    assert!(
        (40..=60).contains(&from_now),
        "until {until} for a 1m timeout"
    );
    assert_eq!(run["status"], "running");
    assert!(
        step(&run, "ready")["attempts"]
            .as_array()
            .is_none_or(|a| a.iter().all(|a| a["worker"] != "test-worker")),
        "no worker holds a waiting step (the stack's only worker is test-worker): {run:#}"
    );
    let history = stack.history(orders).await?;
    let waiting = of_type(&history, "step.waiting");
    assert_eq!(waiting.len(), 1, "{history:#?}");
    assert_eq!(waiting[0]["step"], "ready");
    assert_eq!(waiting[0]["data"]["waiting_for"]["kind"], "event");
    let published = waiting_event_of(&mut status_events, orders).await?;
    assert_eq!(
        published["type"], "dev.fulfil.step.waiting",
        "{published:#}"
    );
    assert_eq!(published["data"]["step"], "ready", "{published:#}");
    assert_eq!(published["data"]["status"], "waiting", "{published:#}");
    assert_eq!(
        published["data"]["waiting_for"]["kind"], "event",
        "{published:#}"
    );
    until_waiting(&stack, billing, "ready").await?;

    // Another name completes nothing.
    publish(&stack, "ready", &event("e-other", "inventory")).await?;
    until_in_ledger(&stack, "e-other").await?;
    // An HTTP event has no subject: it never matches a wait that sets one.
    let (status, receipt) = post_event(&stack, &event("e-http", "orders")).await?;
    assert_eq!(status, 202, "{receipt:#}");
    assert_eq!(receipt["waits_completed"], json!([]), "{receipt:#}");
    for run in [orders, billing] {
        let body = stack.run(run).await?;
        assert_eq!(step(&body, "ready")["status"], "waiting", "{body:#}");
        assert!(of_type(&stack.history(run).await?, "wait.matched").is_empty());
    }

    // The correlated one completes `orders` only; its output is the event.
    publish(&stack, "ready", &event("e-orders", "orders")).await?;
    let run = stack.wait_finished(orders, WAIT).await?;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let output = &step(&run, "ready")["outputs"];
    assert_eq!(output["id"], "e-orders", "{run:#}");
    assert_eq!(output["type"], READY);
    assert_eq!(output["source"], SOURCE);
    assert_eq!(output["data"], json!({ "name": "orders" }));
    assert_eq!(
        step(&run, "use")["outputs"],
        json!({ "name": "orders", "event": "e-orders" })
    );
    assert!(step(&run, "ready")["waiting_for"].is_null(), "{run:#}");
    let history = stack.history(orders).await?;
    let matched = of_type(&history, "wait.matched");
    assert_eq!(matched.len(), 1, "{history:#?}");
    assert_eq!(matched[0]["step"], "ready");
    assert_eq!(matched[0]["data"]["event_id"], "e-orders");
    assert_eq!(matched[0]["data"]["source"], SOURCE);
    assert_eq!(matched[0]["data"]["type"], READY);
    let ledger = until_in_ledger(&stack, "e-orders").await?;
    assert_eq!(matched[0]["data"]["ledger_id"], ledger["ledger_id"]);
    assert_eq!(outcomes(&history, "ready").len(), 1, "{history:#?}");
    let body = stack.run(billing).await?;
    assert_eq!(step(&body, "ready")["status"], "waiting", "{body:#}");

    // The same event again completes nothing more.
    publish(&stack, "ready", &event("e-orders", "orders")).await?;
    publish(&stack, "ready", &event("e-after", "nobody")).await?;
    until_in_ledger(&stack, "e-after").await?;
    let history = stack.history(orders).await?;
    assert_eq!(of_type(&history, "wait.matched").len(), 1, "{history:#?}");
    assert_eq!(outcomes(&history, "ready").len(), 1);

    // Nothing comes for `never`: after 2 s the wait fails for good and
    // `provision` is undone.
    let run = stack.wait_finished(never, WAIT).await?;
    assert_eq!(run["status"], "compensated", "{run:#}");
    assert_eq!(step(&run, "ready")["status"], "failed");
    assert_eq!(step(&run, "provision")["status"], "compensated");
    assert_eq!(
        step(&run, "use")["attempts"],
        json!([]),
        "nothing after the wait ran: {run:#}"
    );
    let history = stack.history(never).await?;
    let ready = outcomes(&history, "ready");
    assert_eq!(ready.len(), 1, "{history:#?}");
    assert_eq!(ready[0].0, "step.failed");
    assert_eq!(ready[0].1["code"], "wait_timeout", "{history:#?}");
    assert_eq!(
        history
            .iter()
            .filter(|e| e["step"] == "ready" && e["type"] == "step.retrying")
            .count(),
        0,
        "a wait is not retried"
    );
    stack.stop().await
}

#[tokio::test]
async fn one_event_completes_every_wait_on_its_key_and_lookback_reaches_back_for_it()
-> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    // No subject: HTTP events match it by type alone.
    let keyed = format!("{{ type: {READY}, match: \"event.data.name == params.name\" }}");
    stack
        .apply(&waiting_promise("db", ECHO_FIRST, &keyed, ""))
        .await?;
    let looking_back =
        format!("{{ type: {READY}, match: \"event.data.name == params.name\", lookback: 1m }}");
    stack
        .apply(&waiting_promise("db-late", ECHO_FIRST, &looking_back, ""))
        .await?;

    let mut shared = Vec::new();
    for _ in 0..3 {
        shared.push(stack.request("db", json!({ "name": "shared" })).await?);
    }
    let other = stack.request("db", json!({ "name": "other" })).await?;
    for run in shared.iter().chain([&other]) {
        let body = until_waiting(&stack, *run, "ready").await?;
        assert!(
            step(&body, "ready")["waiting_for"]["until"].is_null(),
            "no timeout, no until: {body:#}"
        );
    }
    let (status, receipt) = post_event(&stack, &event("e-shared", "shared")).await?;
    assert_eq!(status, 202, "{receipt:#}");
    let mut completed: Vec<(String, String)> = receipt["waits_completed"]
        .as_array()
        .context("waits_completed")?
        .iter()
        .map(|w| (text(&w["run_id"]), text(&w["step"])))
        .collect();
    completed.sort();
    let mut expected: Vec<(String, String)> = shared
        .iter()
        .map(|r| (r.to_string(), "ready".to_string()))
        .collect();
    expected.sort();
    assert_eq!(completed, expected, "{receipt:#}");
    for run in &shared {
        let body = stack.wait_finished(*run, WAIT).await?;
        assert_eq!(body["status"], "succeeded", "{body:#}");
        assert_eq!(step(&body, "ready")["outputs"]["id"], "e-shared");
    }
    // Sent again, it completes nothing: each step completes once.
    let (_, receipt) = post_event(&stack, &event("e-shared-2", "shared")).await?;
    assert_eq!(receipt["waits_completed"], json!([]), "{receipt:#}");
    let body = stack.run(other).await?;
    assert_eq!(step(&body, "ready")["status"], "waiting", "{body:#}");

    // Received before the wait began: found through lookback, and only
    // by a wait that looks back; the most recent one wins.
    post_event(&stack, &event("early-1", "early")).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    post_event(&stack, &event("early-2", "early")).await?;
    let late = stack.request("db-late", json!({ "name": "early" })).await?;
    let blind = stack.request("db", json!({ "name": "early" })).await?;
    let body = stack.wait_finished(late, WAIT).await?;
    assert_eq!(body["status"], "succeeded", "{body:#}");
    assert_eq!(step(&body, "ready")["outputs"]["id"], "early-2", "{body:#}");
    let history = stack.history(late).await?;
    let waiting_at = of_type(&history, "step.waiting")
        .first()
        .and_then(|e| e["at"].as_str())
        .context("step.waiting")?
        .parse::<DateTime<Utc>>()?;
    let matched = of_type(&history, "wait.matched");
    assert_eq!(matched.len(), 1, "{history:#?}");
    assert_eq!(matched[0]["data"]["event_id"], "early-2");
    let ledger = until_in_ledger(&stack, "early-2").await?;
    let received: DateTime<Utc> = ledger["received_at"]
        .as_str()
        .context("received_at")?
        .parse()?;
    assert!(received < waiting_at, "{received} < {waiting_at}");
    let body = until_waiting(&stack, blind, "ready").await?;
    assert_eq!(
        step(&body, "ready")["status"],
        "waiting",
        "without lookback an earlier event does not match"
    );
    stack.stop().await
}

/// The first step of each run is held by the test, as a worker; the test
/// then publishes the run's matching event on the bus and reports the
/// step's result at the same instant. With `lookback` every run completes
/// whichever commits first: none is left waiting. Waits of this shape
/// were filed before (one run completed first), as in any running system.
#[tokio::test]
async fn an_event_published_as_the_upstream_step_finishes_is_never_missed() -> anyhow::Result<()> {
    race_upstream_and_event(true).await
}

/// The same race for the very first waits of their (type, correlation
/// path): before the fix the engine missed some (an event found no
/// `wait_paths` row yet, so took no key lock, while the first wait's
/// lookback could not see the event's uncommitted ledger entry).
#[tokio::test]
async fn an_event_published_as_the_first_wait_of_its_kind_begins_is_never_missed()
-> anyhow::Result<()> {
    race_upstream_and_event(false).await
}

async fn race_upstream_and_event(warm: bool) -> anyhow::Result<()> {
    const RUNS: usize = 40;
    let stack = TestStack::start().await?;
    let with = format!(
        "{{ subject: \"acme.{}.db.>\", type: {READY}, match: \"event.data.name == params.name\", lookback: 1m }}",
        stack.names.prefix()
    );
    let held = "        uses: held\n        queue: held";
    stack
        .apply(&waiting_promise("db", held, &with, "        timeout: 2m"))
        .await?;
    if warm {
        stack
            .apply(&waiting_promise("db-warm", ECHO_FIRST, &with, ""))
            .await?;
        let warm = stack.request("db-warm", json!({ "name": "warm" })).await?;
        until_waiting(&stack, warm, "ready").await?;
        publish(&stack, "ready", &event("e-warm", "warm")).await?;
        let body = stack.wait_finished(warm, WAIT).await?;
        assert_eq!(body["status"], "succeeded", "{body:#}");
    }
    let mut names = BTreeMap::new();
    for i in 0..RUNS {
        let run = stack
            .request("db", json!({ "name": format!("race-{i}") }))
            .await?;
        names.insert(run, format!("race-{i}"));
    }

    let consumer = stack
        .js
        .get_stream(stack.names.tasks_stream())
        .await?
        .create_consumer(pull::Config {
            durable_name: Some("race".into()),
            filter_subject: stack.names.task_subject("held"),
            ..Default::default()
        })
        .await?;
    let mut tasks = consumer.messages().await?;
    let mut held_tasks = Vec::new();
    let deadline = Instant::now() + WAIT;
    while held_tasks.len() < RUNS {
        let message = tokio::time::timeout_at(deadline, tasks.next())
            .await
            .with_context(|| format!("{} of {RUNS} tasks taken", held_tasks.len()))?
            .context("the task stream ended")?
            .map_err(|e| anyhow::anyhow!("pulling a task: {e}"))?;
        message.ack().await.map_err(anyhow::Error::from_boxed)?;
        let task: fulfil_core::wire::TaskMessage = serde_json::from_slice(&message.payload)?;
        held_tasks.push(task);
    }

    let races = held_tasks.iter().map(|task| {
        let stack = &stack;
        let name = names.get(&task.run_id).cloned().unwrap_or_default();
        async move {
            let result = ResultMessage {
                task_id: task.task_id,
                run_id: task.run_id,
                step_id: task.step_id.clone(),
                attempt: task.attempt,
                worker_id: "race-worker".into(),
                outcome: Outcome::Ok {
                    output: json!({ "held": true }),
                },
                started_at: Utc::now(),
                finished_at: Utc::now(),
            };
            let event = event(&format!("e-{name}"), &name);
            let (published, reported) = tokio::join!(
                publish(stack, "ready", &event),
                stack.publish_json(stack.names.results_subject(), &result)
            );
            published.and(reported)
        }
    });
    for raced in futures::future::join_all(races).await {
        raced?;
    }

    let mut stuck = Vec::new();
    for (run, name) in &names {
        let body = stack.wait_finished(*run, WAIT).await;
        match body {
            Ok(body) if body["status"] == "succeeded" => {
                assert_eq!(step(&body, "ready")["outputs"]["data"]["name"], *name);
                let history = stack.history(*run).await?;
                assert_eq!(outcomes(&history, "ready").len(), 1, "{history:#?}");
                assert_eq!(of_type(&history, "wait.matched").len(), 1, "{history:#?}");
            }
            Ok(body) => stuck.push(format!("{name} ({run}): {}", body["status"])),
            Err(_) => stuck.push(format!(
                "{name} ({run}): {:?}",
                step(&stack.run(*run).await?, "ready")["status"]
            )),
        }
    }
    assert!(
        stuck.is_empty(),
        "{} of {RUNS} runs: {stuck:#?}",
        stuck.len()
    );
    stack.stop().await
}

/// An event published at the instant a wait's timeout ends: either the
/// event completes the step or the timeout fails it, never both, and the
/// run ends accordingly.
#[tokio::test]
async fn an_event_racing_the_timeout_leaves_exactly_one_outcome() -> anyhow::Result<()> {
    const RUNS: usize = 12;
    let stack = TestStack::start().await?;
    let with = format!(
        "{{ subject: \"acme.{}.db.>\", type: {READY}, match: \"event.data.name == params.name\" }}",
        stack.names.prefix()
    );
    stack
        .apply(&waiting_promise(
            "db",
            ECHO_FIRST,
            &with,
            "        timeout: 2s",
        ))
        .await?;
    let mut runs = Vec::new();
    for i in 0..RUNS {
        let name = format!("edge-{i}");
        runs.push((stack.request("db", json!({ "name": name })).await?, name));
    }
    // Read from history, which keeps it after the step ended.
    let mut untils = Vec::new();
    for (run, _) in &runs {
        let history = stack.wait_for_event(*run, "step.waiting", WAIT).await?;
        let until: DateTime<Utc> =
            of_type(&history, "step.waiting")[0]["data"]["waiting_for"]["until"]
                .as_str()
                .context("until")?
                .parse()?;
        untils.push(until);
    }
    // Each event is published at its wait's `until`, give or take up to
    // 60 ms, so both sides win some of the races.
    let publishing = runs
        .iter()
        .zip(&untils)
        .enumerate()
        .map(|(i, ((_, name), until))| {
            let stack = &stack;
            let offset = chrono::Duration::milliseconds(i as i64 * 10 - 60);
            let at = *until + offset;
            async move {
                let delay = (at - Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(delay).await;
                publish(stack, "ready", &event(&format!("e-{name}"), name)).await
            }
        });
    for published in futures::future::join_all(publishing).await {
        published?;
    }

    let mut tally = BTreeMap::new();
    for (run, name) in &runs {
        let body = stack.wait_finished(*run, WAIT).await?;
        let history = stack.history(*run).await?;
        let ready = outcomes(&history, "ready");
        assert_eq!(ready.len(), 1, "{name}: exactly one outcome: {history:#?}");
        match ready[0].0 {
            "step.succeeded" => {
                assert_eq!(body["status"], "succeeded", "{body:#}");
                assert_eq!(step(&body, "ready")["outputs"]["data"]["name"], *name);
            }
            _ => {
                assert_eq!(ready[0].1["code"], "wait_timeout", "{history:#?}");
                assert_eq!(body["status"], "compensated", "{body:#}");
            }
        }
        *tally.entry(ready[0].0.to_string()).or_insert(0) += 1;
    }
    eprintln!("event vs timeout at the same instant, {RUNS} runs: {tally:?}");
    stack.stop().await
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}
