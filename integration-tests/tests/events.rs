//! Inbound events against the real Postgres and NATS: triggers file
//! requests from CloudEvents published by a plain NATS client (structured
//! and binary mode) or posted over HTTP, exactly once per event and
//! trigger; the ledger says what each trigger did and why; what cannot be
//! used is a dead letter with its reason, replayable once fixed.

use std::time::Duration;

use anyhow::Context;
use async_nats::HeaderMap;
use fulfil_integration_tests::{StackOptions, TestStack};
use serde_json::{Value, json};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);

/// A Promise whose trigger listens on a subject of this stack only (the
/// NATS server is shared by parallel tests and streams cannot overlap).
fn team_db(stack: &TestStack, version: &str, name_pattern: &str) -> String {
    let prefix = stack.names.prefix();
    format!(
        r#"apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: team-db, version: "{version}", owner: team-data }}
spec:
  api:
    type: object
    required: [name]
    properties:
      name: {{ type: string, pattern: "{name_pattern}" }}
      tier: {{ type: string }}
  workflow:
    steps:
      - {{ id: provision, uses: echo, with: {{ db: "${{{{ params.name }}}}" }} }}
  outputs:
    db: "${{{{ steps.provision.outputs.db }}}}"
  triggers:
    - name: on-team-created
      subject: acme.{prefix}.teams.>
      type: com.acme.team.created
      filter: "event.data.tier == 'gold'"
      params: {{ name: "${{{{ event.data.team }}}}-db", tier: "${{{{ event.data.tier }}}}" }}
"#
    )
}

fn subject(stack: &TestStack, leaf: &str) -> String {
    format!("acme.{}.teams.{leaf}", stack.names.prefix())
}

fn structured(id: &str, team: &str, tier: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "/acme/teams",
        "type": "com.acme.team.created",
        "datacontenttype": "application/json",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "data": { "team": team, "tier": tier },
    })
}

/// Publishes with a plain NATS client, as any other system would.
async fn publish(
    stack: &TestStack,
    subject: String,
    headers: HeaderMap,
    body: Vec<u8>,
) -> anyhow::Result<()> {
    stack
        .nats
        .publish_with_headers(subject, headers, body.into())
        .await?;
    stack.nats.flush().await?;
    Ok(())
}

async fn publish_structured(stack: &TestStack, leaf: &str, event: &Value) -> anyhow::Result<()> {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/cloudevents+json");
    publish(
        stack,
        subject(stack, leaf),
        headers,
        serde_json::to_vec(event)?,
    )
    .await
}

/// The ledger entries of event `id`, waiting until there are `count`.
async fn ledger_of(stack: &TestStack, id: &str, count: usize) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, page) = stack.get("/v1/events?limit=500").await?;
        anyhow::ensure!(status == 200, "GET /v1/events: {status} {page}");
        let entries: Vec<Value> = page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["id"] == id)
            .cloned()
            .collect();
        if entries.len() >= count {
            return Ok(entries);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "event {id}: {} ledger entries, wanted {count}: {page:#}",
            entries.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_event(
    stack: &TestStack,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = stack
        .http
        .post(format!("{}/v1/events", stack.api))
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await?;
    Ok((response.status().as_u16(), response.json().await?))
}

#[tokio::test]
async fn bus_and_http_events_file_one_request_per_event_and_the_ledger_says_why()
-> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack.apply(&team_db(&stack, "1", "^[a-z-]+$")).await?;

    // Structured mode from a plain NATS client.
    publish_structured(&stack, "created", &structured("e-1", "data", "gold")).await?;
    let first = ledger_of(&stack, "e-1", 1).await?;
    let outcome = &first[0]["outcomes"][0];
    assert_eq!(outcome["outcome"], "filed", "{first:#?}");
    assert_eq!(outcome["trigger"], "on-team-created");
    assert_eq!(outcome["promise"], "team-db");
    assert_eq!(first[0]["via"], "bus");
    assert_eq!(first[0]["nats_subject"], subject(&stack, "created"));
    let run_id = outcome["run_id"].as_str().context("run id")?.parse()?;
    let run = stack.wait_finished(run_id, WAIT).await?;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["outputs"]["db"], "data-db");
    let request_id = outcome["request_id"].as_str().context("request id")?;
    let (_, request) = stack.get(&format!("/v1/requests/{request_id}")).await?;
    assert_eq!(
        request["idempotency_key"],
        "event:on-team-created:/acme/teams:e-1"
    );
    assert_eq!(request["created_by"], "event:/acme/teams");
    let traceparent: Option<String> = sqlx::query_scalar(
        "SELECT context->'request'->>'traceparent' FROM fulfil.runs WHERE id = $1",
    )
    .bind(uuid::Uuid::parse_str(&run_id.to_string())?)
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(
        traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        "the inbound traceparent is kept with the run"
    );
    // ... and carried onto the status events of the run it started.
    let status_events = stack
        .js
        .get_stream(stack.names.events_stream())
        .await?
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: stack.names.event_subject("run.succeeded"),
            ..Default::default()
        })
        .await?;
    let mut messages = status_events.fetch().max_messages(10).messages().await?;
    let mut succeeded = None;
    while let Some(message) = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut messages))
        .await
        .context("no run.succeeded status event")?
    {
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        let event: Value = serde_json::from_slice(&message.payload)?;
        if event["subject"] == run_id.to_string() {
            succeeded = Some(event);
            break;
        }
    }
    let succeeded = succeeded.context("the run's run.succeeded status event")?;
    assert_eq!(
        succeeded["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "{succeeded:#}"
    );
    assert_eq!(succeeded["data"]["run_kind"], "configure", "{succeeded:#}");

    // Binary mode: ce-* headers, the data as the body.
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "e-2"),
        ("ce-source", "/acme/teams"),
        ("ce-type", "com.acme.team.created"),
        ("content-type", "application/json"),
    ] {
        headers.insert(k, v);
    }
    publish(
        &stack,
        subject(&stack, "created"),
        headers,
        br#"{"team":"web","tier":"gold"}"#.to_vec(),
    )
    .await?;
    let binary = ledger_of(&stack, "e-2", 1).await?;
    assert_eq!(binary[0]["outcomes"][0]["outcome"], "filed", "{binary:#?}");

    // The same event again on the bus, then over HTTP: nothing new filed.
    publish_structured(&stack, "created", &structured("e-1", "data", "gold")).await?;
    let again = ledger_of(&stack, "e-1", 2).await?;
    let duplicate = again
        .iter()
        .find(|e| e["outcomes"][0]["outcome"] == "duplicate")
        .context("a duplicate entry")?;
    assert_eq!(duplicate["outcomes"][0]["request_id"], request_id);
    let (status, receipt) = post_event(
        &stack,
        &[("content-type", "application/cloudevents+json")],
        serde_json::to_vec(&structured("e-1", "data", "gold"))?,
    )
    .await?;
    assert_eq!(status, 202, "{receipt:#}");
    assert_eq!(
        receipt["outcomes"][0]["outcome"], "duplicate",
        "{receipt:#}"
    );
    assert_eq!(receipt["outcomes"][0]["request_id"], request_id);
    assert_eq!(receipt["id"], "e-1");
    assert_eq!(receipt["source"], "/acme/teams");

    // A filter that is false: recorded with the trigger that said no.
    publish_structured(&stack, "created", &structured("e-3", "ops", "silver")).await?;
    let filtered = ledger_of(&stack, "e-3", 1).await?;
    let outcome = &filtered[0]["outcomes"][0];
    assert_eq!(outcome["outcome"], "filtered", "{filtered:#?}");
    assert!(
        outcome["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("on-team-created"),
        "{outcome}"
    );
    let ledger_id = filtered[0]["ledger_id"].as_str().context("ledger id")?;
    let (status, entry) = stack.get(&format!("/v1/events/{ledger_id}")).await?;
    assert_eq!(status, 200);
    assert_eq!(entry["event"]["data"]["tier"], "silver");
    let (_, only_filtered) = stack.get("/v1/events?outcome=filtered").await?;
    let ids: Vec<&Value> = only_filtered["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["id"])
        .collect();
    assert_eq!(ids, vec![&json!("e-3")], "{only_filtered:#}");

    // An event no trigger wants is still kept, with no outcome.
    let mut other = structured("e-4", "x", "gold");
    other["type"] = json!("com.acme.team.renamed");
    publish_structured(&stack, "renamed", &other).await?;
    let unmatched = ledger_of(&stack, "e-4", 1).await?;
    assert_eq!(unmatched[0]["outcomes"], json!([]));

    // Over HTTP, binary mode, a new event files (matched by type alone).
    let (status, receipt) = post_event(
        &stack,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "h-1"),
            ("ce-source", "/acme/portal"),
            ("ce-type", "com.acme.team.created"),
            ("content-type", "application/json"),
        ],
        br#"{"team":"api","tier":"gold"}"#.to_vec(),
    )
    .await?;
    assert_eq!(status, 202, "{receipt:#}");
    assert_eq!(receipt["outcomes"][0]["outcome"], "filed", "{receipt:#}");

    // Not a CloudEvent over HTTP: 422, nothing stored.
    let ledger_before = stack.count("event_ledger").await?;
    let (status, problem) = post_event(
        &stack,
        &[("content-type", "application/json")],
        br#"{"hello":1}"#.to_vec(),
    )
    .await?;
    assert_eq!(status, 422, "{problem:#}");
    assert_eq!(problem["type"], "https://fulfil.dev/problems/invalid-event");
    assert_eq!(stack.count("event_ledger").await?, ledger_before);

    let requests = stack.count("requests").await?;
    assert_eq!(requests, 3, "e-1, e-2 and h-1 filed, nothing else");
    stack.stop().await
}

#[tokio::test]
async fn malformed_and_invalid_events_are_dead_letters_and_a_fixed_promise_files_on_replay()
-> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    // Names must be digits only: the trigger's "<team>-db" breaks it.
    stack.apply(&team_db(&stack, "1", "^[0-9]+$")).await?;

    publish(
        &stack,
        subject(&stack, "created"),
        HeaderMap::new(),
        b"\x00\xffnot an event".to_vec(),
    )
    .await?;
    publish_structured(&stack, "created", &structured("bad-1", "data", "gold")).await?;
    // The consumer goes on after both.
    publish_structured(&stack, "created", &structured("later", "x", "silver")).await?;
    ledger_of(&stack, "later", 1).await?;

    let invalid = ledger_of(&stack, "bad-1", 1).await?;
    let outcome = &invalid[0]["outcomes"][0];
    assert_eq!(outcome["outcome"], "invalid", "{invalid:#?}");
    assert_eq!(outcome["violations"][0]["pointer"], "/name", "{outcome}");
    let dead_letter_id = invalid[0]["dead_letter_id"]
        .as_str()
        .context("dead letter")?
        .to_string();

    let (status, dead) = stack.get("/v1/dead-letters").await?;
    assert_eq!(status, 200, "{dead:#}");
    let items = dead["items"].as_array().context("items")?;
    assert_eq!(items.len(), 2, "{dead:#}");
    let garbage = items
        .iter()
        .find(|d| d["id"] != dead_letter_id.as_str())
        .context("garbage")?;
    assert!(
        garbage["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not a CloudEvent"),
        "{garbage}"
    );
    assert_eq!(garbage["payload_encoding"], "base64");
    assert_eq!(garbage["subject"], subject(&stack, "created"));
    let schema = items
        .iter()
        .find(|d| d["id"] == dead_letter_id.as_str())
        .context("invalid")?;
    assert!(
        schema["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("/name"),
        "{schema}"
    );
    assert_eq!(
        schema["headers"]["content-type"],
        json!(["application/cloudevents+json"])
    );
    assert_eq!(stack.count("requests").await?, 0);

    // Replayed before the fix: still invalid, nothing filed, replay counted.
    let replay = format!("{}/v1/dead-letters/{dead_letter_id}/replay", stack.api);
    let answer: Value = stack.http.post(&replay).send().await?.json().await?;
    assert_eq!(answer["outcomes"][0]["outcome"], "invalid", "{answer:#}");
    assert_eq!(stack.count("requests").await?, 0);
    assert_eq!(
        stack.count("dead_letters").await?,
        2,
        "a replay writes no new dead letter"
    );

    // Fixed: the schema takes the names the trigger makes.
    stack.apply(&team_db(&stack, "2", "^[a-z-]+$")).await?;
    let response = stack.http.post(&replay).send().await?;
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await?;
    assert_eq!(answer["outcomes"][0]["outcome"], "filed", "{answer:#}");
    let run_id = answer["run_id"]
        .as_str()
        .or(answer["outcomes"][0]["run_id"].as_str())
        .context("run")?
        .parse()?;
    assert_eq!(
        stack.wait_finished(run_id, WAIT).await?["status"],
        "succeeded"
    );
    let (_, dead) = stack.get("/v1/dead-letters").await?;
    let replayed = dead["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["id"] == dead_letter_id.as_str())
        .context("still listed")?;
    assert_eq!(replayed["replays"], 2, "{replayed}");
    assert_eq!(replayed["last_replay"]["outcomes"][0]["outcome"], "filed");
    // Replaying again files nothing new: the event's key is taken.
    let answer: Value = stack.http.post(&replay).send().await?.json().await?;
    assert_eq!(answer["outcomes"][0]["outcome"], "duplicate", "{answer:#}");
    assert_eq!(stack.count("requests").await?, 1);

    // The garbage is still not a CloudEvent: 422, and it stays listed.
    let garbage_id = garbage["id"].as_str().context("id")?;
    let response = stack
        .http
        .post(format!("{}/v1/dead-letters/{garbage_id}/replay", stack.api))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 422);
    let (status, _) = stack.get("/v1/dead-letters/not-a-uuid/replay").await?;
    assert_eq!(status, 405, "replay is a POST");
    let response = stack
        .http
        .post(format!(
            "{}/v1/dead-letters/{}/replay",
            stack.api,
            uuid::Uuid::now_v7()
        ))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 404);
    stack.stop().await
}

#[tokio::test]
async fn events_published_while_no_engine_runs_are_filed_when_one_starts() -> anyhow::Result<()> {
    let mut stack = TestStack::start_with(StackOptions {
        in_process_engines: false,
        ..StackOptions::default()
    })
    .await?;
    // Applying the Promise makes the stream capture the trigger's subject.
    stack.apply(&team_db(&stack, "1", "^[a-z0-9-]+$")).await?;
    for i in 0..5 {
        publish_structured(
            &stack,
            "created",
            &structured(&format!("down-{i}"), &format!("t{i}"), "gold"),
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stack.count("event_ledger").await?,
        0,
        "no engine, nothing decided yet"
    );

    stack.start_engine();
    for i in 0..5 {
        let entry = ledger_of(&stack, &format!("down-{i}"), 1).await?;
        assert_eq!(entry[0]["outcomes"][0]["outcome"], "filed", "{entry:#?}");
    }
    assert_eq!(stack.count("requests").await?, 5);
    stack.stop().await
}

#[tokio::test]
async fn the_ledger_and_dead_letters_keep_only_their_retention_window() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack.apply(&team_db(&stack, "1", "^[0-9]+$")).await?;
    for i in 0..4 {
        publish_structured(
            &stack,
            "created",
            &structured(&format!("old-{i}"), "x", "gold"),
        )
        .await?;
    }
    publish_structured(&stack, "created", &structured("new", "x", "gold")).await?;
    ledger_of(&stack, "new", 1).await?;
    assert_eq!(
        stack.count("dead_letters").await?,
        5,
        "each broke the schema"
    );
    // Age the first four by eight days.
    for table in ["event_ledger", "dead_letters"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE fulfil.{table} SET received_at = now() - interval '8 days'
             WHERE ledger_id IN (SELECT ledger_id FROM fulfil.event_ledger WHERE event_id LIKE 'old-%')"
        )))
        .execute(&stack.pool)
        .await?;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let retention = tokio::spawn(fulfil_engine::events::keep_retention(
        stack.pool.clone(),
        fulfil_engine::events::DEFAULT_RETENTION,
        Duration::from_secs(3600),
        stop.clone(),
    ));
    let deadline = Instant::now() + WAIT;
    while stack.count("event_ledger").await? > 1 || stack.count("dead_letters").await? > 1 {
        anyhow::ensure!(Instant::now() < deadline, "old entries were not removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    retention.await?;
    let (_, page) = stack.get("/v1/events").await?;
    let ids: Vec<&Value> = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["id"])
        .collect();
    assert_eq!(
        ids,
        vec![&json!("new")],
        "the entry within the window stays"
    );
    assert_eq!(stack.count("dead_letters").await?, 1);
    stack.stop().await
}

#[tokio::test]
async fn a_posted_event_keeps_its_cloudevent_headers_and_never_the_callers_credentials()
-> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack.apply(&team_db(&stack, "1", "^[0-9]+$")).await?;
    let (status, receipt) = post_event(
        &stack,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "h-credentials"),
            ("ce-source", "/acme/teams"),
            ("ce-type", "com.acme.team.created"),
            ("content-type", "application/json"),
            (
                "authorization",
                "Bearer fulfil_caller-credential-never-stored",
            ),
            ("cookie", "session=caller-cookie-never-stored"),
            ("x-api-key", "caller-key-never-stored"),
        ],
        br#"{"team": "letters", "tier": "gold"}"#.to_vec(),
    )
    .await?;
    assert_eq!(status, 202, "{receipt:#}");
    let entry = ledger_of(&stack, "h-credentials", 1).await?;
    assert_eq!(entry[0]["outcomes"][0]["outcome"], "invalid", "{entry:#?}");
    let (_, dead) = stack.get("/v1/dead-letters").await?;
    let letter = &dead["items"][0];
    assert_eq!(
        letter["headers"]["ce-id"],
        json!(["h-credentials"]),
        "{letter:#}"
    );
    assert_eq!(
        letter["headers"]["content-type"],
        json!(["application/json"])
    );
    for table in ["dead_letters", "event_ledger"] {
        let leaked: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM fulfil.{table} t
             WHERE row_to_json(t)::text ~ 'never-stored|authorization|cookie|x-api-key'"
        )))
        .fetch_one(&stack.pool)
        .await?;
        assert_eq!(leaked, 0, "{table} holds a caller credential header");
    }

    // What was kept is enough to decode it again: fixed, the replay files.
    stack.apply(&team_db(&stack, "2", "^[a-z-]+$")).await?;
    let id = letter["id"].as_str().context("dead letter id")?;
    let replay = format!("{}/v1/dead-letters/{id}/replay", stack.api);
    let answer: Value = stack.http.post(&replay).send().await?.json().await?;
    assert_eq!(answer["outcomes"][0]["outcome"], "filed", "{answer:#}");
    stack.stop().await
}
