//! Hostile inbound events against the real Postgres and NATS: whatever a
//! plain NATS client publishes on a trigger's subject, or anyone posts to
//! `POST /v1/events`, ends as a ledger entry with a reason or a dead letter
//! with a reason (bus), or a 4xx problem / a 202 with reasons (HTTP). Nothing
//! is filed from it, no answer is a 5xx, and the consumer goes on at once
//! with the next valid event: it never stops, spins or retries a message
//! that can never be decided.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use async_nats::HeaderMap;
use fulfil_integration_tests::TestStack;
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// A trigger on this stack's subjects whose filter reads `event.data.tier`
/// and whose params must make a short lower-case name.
fn team_db(stack: &TestStack) -> String {
    let prefix = stack.names.prefix();
    format!(
        r#"apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: team-db, version: "1", owner: team-data }}
spec:
  api:
    type: object
    required: [name]
    properties:
      name: {{ type: string, pattern: "^[a-z-]+$", maxLength: 63 }}
  workflow:
    steps:
      - {{ id: provision, uses: echo, with: {{ db: "${{{{ params.name }}}}" }} }}
  triggers:
    - name: on-team-created
      subject: acme.{prefix}.teams.>
      type: com.acme.team.created
      filter: "event.data.tier == 'gold'"
      params: {{ name: "${{{{ event.data.team }}}}-db" }}
"#
    )
}

fn subject(stack: &TestStack, leaf: &str) -> String {
    format!("acme.{}.teams.{leaf}", stack.names.prefix())
}

fn event(id: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "/acme/teams",
        "type": "com.acme.team.created",
        "datacontenttype": "application/json",
        "data": data,
    })
}

fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// What a hostile message must become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Not a CloudEvent: a dead letter with the reason, no ledger entry.
    DeadLetter,
    /// A CloudEvent the trigger cannot use: a ledger entry whose outcome is
    /// `invalid` with a reason, and a dead letter pointing at it.
    Invalid,
    /// A CloudEvent the trigger's filter turned down: a ledger entry with
    /// the reason, no dead letter.
    Filtered,
}

/// One hostile message, published on its own subject leaf so that what it
/// became can be found by subject.
struct Hostile {
    leaf: &'static str,
    headers: Vec<(&'static str, String)>,
    payload: Vec<u8>,
    expect: Expect,
    /// A word the reason must hold (it names the problem).
    reason_mentions: &'static str,
}

fn hostile(
    leaf: &'static str,
    payload: Vec<u8>,
    expect: Expect,
    reason_mentions: &'static str,
) -> Hostile {
    Hostile {
        leaf,
        headers: Vec::new(),
        payload,
        expect,
        reason_mentions,
    }
}

fn binary_headers(time: &str, content_type: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ce-specversion", "1.0".into()),
        ("ce-id", format!("binary-{time}")),
        ("ce-source", "/acme/teams".into()),
        ("ce-type", "com.acme.team.created".into()),
        ("ce-time", time.into()),
        ("content-type", content_type.into()),
    ]
}

fn hostile_messages(max_payload: usize) -> Vec<Hostile> {
    // Pseudo-random bytes (a fixed LCG: the failure is reproducible).
    let mut x: u32 = 0x2545_f491;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect();
    let missing = |attribute: &str| {
        let mut e = event(
            &format!("missing-{attribute}"),
            json!({"team": "x", "tier": "gold"}),
        );
        e.as_object_mut().map(|o| o.remove(attribute));
        to_bytes(&e)
    };
    let version = |v: &str| {
        let mut e = event(
            &format!("version-{v}"),
            json!({"team": "x", "tier": "gold"}),
        );
        e["specversion"] = json!(v);
        to_bytes(&e)
    };
    // Just under the server's limit, the subject and headers aside.
    let huge_team = "a".repeat(max_payload.saturating_sub(4096));
    let too_deep = format!(
        r#"{{"specversion":"1.0","id":"too-deep","source":"/acme/teams","type":"com.acme.team.created","data":{}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let mut deep = json!({"tier": "silver"});
    for _ in 0..100 {
        deep = json!({ "d": deep });
    }
    let mut deep_data = deep.clone();
    deep_data["tier"] = json!("silver");
    let mut long_source = event("long-source", json!({"team": "x", "tier": "gold"}));
    long_source["source"] = json!(format!("/{}", "s".repeat(300)));
    let mut huge_type = event("huge-type", json!({"team": "x", "tier": "gold"}));
    huge_type["type"] = json!("t".repeat(50_000));
    let mut binary_bad_json = binary_headers("2026-12-02T10:00:00Z", "application/json");
    binary_bad_json[1].1 = "binary-bad-json".into();
    vec![
        hostile(
            "random",
            random.clone(),
            Expect::DeadLetter,
            "not a CloudEvent",
        ),
        hostile("empty", Vec::new(), Expect::DeadLetter, "not a CloudEvent"),
        hostile(
            "array",
            b"[1,2,3]".to_vec(),
            Expect::DeadLetter,
            "not a CloudEvent",
        ),
        hostile(
            "string",
            br#""an event""#.to_vec(),
            Expect::DeadLetter,
            "not a CloudEvent",
        ),
        hostile(
            "number",
            b"42".to_vec(),
            Expect::DeadLetter,
            "not a CloudEvent",
        ),
        hostile(
            "null",
            b"null".to_vec(),
            Expect::DeadLetter,
            "not a CloudEvent",
        ),
        hostile("no-id", missing("id"), Expect::DeadLetter, "id"),
        hostile("no-source", missing("source"), Expect::DeadLetter, "source"),
        hostile("no-type", missing("type"), Expect::DeadLetter, "type"),
        hostile("version-03", version("0.3"), Expect::DeadLetter, "0.3"),
        hostile("version-20", version("2.0"), Expect::DeadLetter, "2.0"),
        Hostile {
            leaf: "binary-bad-time",
            headers: binary_headers("yesterday at noon", "application/json"),
            payload: br#"{"team":"x","tier":"gold"}"#.to_vec(),
            expect: Expect::DeadLetter,
            reason_mentions: "not a CloudEvent",
        },
        Hostile {
            leaf: "binary-not-json",
            headers: binary_bad_json,
            payload: b"{\"team\": \"x\", tier: gold".to_vec(),
            // The data is kept as text; the filter cannot read a field of it.
            expect: Expect::Invalid,
            reason_mentions: "tier",
        },
        hostile(
            "near-max",
            to_bytes(&event(
                "near-max",
                json!({"team": huge_team, "tier": "gold"}),
            )),
            Expect::Invalid,
            "/name",
        ),
        hostile(
            "random-near-max",
            random.repeat(max_payload.saturating_sub(4096) / random.len()),
            Expect::DeadLetter,
            "not a CloudEvent",
        ),
        hostile(
            "too-deep",
            too_deep.into_bytes(),
            Expect::DeadLetter,
            "not a CloudEvent",
        ),
        hostile(
            "deep",
            to_bytes(&event("deep", deep_data)),
            Expect::Filtered,
            "filter",
        ),
        hostile(
            "filter-errors",
            to_bytes(&event("filter-errors", json!({"team": "x"}))),
            Expect::Invalid,
            "tier",
        ),
        hostile(
            "nul",
            to_bytes(&event("nul\u{0}id", json!({"team": "x", "tier": "gold"}))),
            Expect::DeadLetter,
            "NUL",
        ),
        hostile(
            "long-source",
            to_bytes(&long_source),
            Expect::Invalid,
            "idempotency key",
        ),
        hostile(
            "huge-type",
            to_bytes(&huge_type),
            Expect::DeadLetter,
            "type attribute",
        ),
    ]
}

#[derive(Debug, sqlx::FromRow)]
struct DeadLetterRow {
    id: Uuid,
    subject: Option<String>,
    reason: String,
    ledger_id: Option<Uuid>,
    payload_bytes: i32,
}

#[derive(Debug, sqlx::FromRow)]
struct LedgerRow {
    ledger_id: Uuid,
    nats_subject: Option<String>,
    outcomes: Value,
    dead_letter_id: Option<Uuid>,
}

async fn ready(stack: &TestStack) -> anyhow::Result<()> {
    let (status, body) = stack.get("/readyz").await?;
    ensure!(status == 200, "not ready: {status} {body:#}");
    ensure!(body["status"] == "ready", "{body:#}");
    Ok(())
}

#[tokio::test]
async fn hostile_bus_messages_end_as_dead_letters_or_ledger_entries_and_the_consumer_goes_on()
-> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack.apply(&team_db(&stack)).await?;
    ready(&stack).await?;
    let max_payload = stack.nats.server_info().max_payload;
    let messages = hostile_messages(max_payload);

    for m in &messages {
        let mut headers = HeaderMap::new();
        for (k, v) in &m.headers {
            headers.insert(*k, v.as_str());
        }
        stack
            .nats
            .publish_with_headers(subject(&stack, m.leaf), headers, m.payload.clone().into())
            .await
            .with_context(|| format!("publishing {} ({} bytes)", m.leaf, m.payload.len()))?;
    }
    stack.nats.flush().await?;
    // Then a valid event: it is filed promptly, behind all of them.
    let published = Instant::now();
    stack
        .nats
        .publish(
            subject(&stack, "valid"),
            to_bytes(&event("valid", json!({"team": "data", "tier": "gold"}))).into(),
        )
        .await?;
    stack.nats.flush().await?;

    let expected_dead = messages
        .iter()
        .filter(|m| m.expect != Expect::Filtered)
        .count() as i64;
    let expected_ledger = messages
        .iter()
        .filter(|m| m.expect != Expect::DeadLetter)
        .count() as i64
        + 1;
    let deadline = Instant::now() + WAIT;
    loop {
        let dead = stack.count("dead_letters").await?;
        let ledger = stack.count("event_ledger").await?;
        if dead >= expected_dead && ledger >= expected_ledger {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "after {WAIT:?}: {dead} dead letters (want {expected_dead}), {ledger} ledger entries (want {expected_ledger})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let decided_after = published.elapsed();
    ensure!(
        decided_after < Duration::from_secs(15),
        "the valid event took {decided_after:?}"
    );

    let dead: Vec<DeadLetterRow> = sqlx::query_as(
        "SELECT id, subject, reason, ledger_id, length(payload) AS payload_bytes FROM fulfil.dead_letters",
    )
    .fetch_all(&stack.pool)
    .await?;
    let ledger: Vec<LedgerRow> = sqlx::query_as(
        "SELECT ledger_id, nats_subject, outcomes, dead_letter_id FROM fulfil.event_ledger",
    )
    .fetch_all(&stack.pool)
    .await?;
    let mut dead_by_subject: BTreeMap<String, Vec<&DeadLetterRow>> = BTreeMap::new();
    for d in &dead {
        dead_by_subject
            .entry(d.subject.clone().unwrap_or_default())
            .or_default()
            .push(d);
    }
    let mut ledger_by_subject: BTreeMap<String, Vec<&LedgerRow>> = BTreeMap::new();
    for l in &ledger {
        ledger_by_subject
            .entry(l.nats_subject.clone().unwrap_or_default())
            .or_default()
            .push(l);
    }

    for m in &messages {
        let s = subject(&stack, m.leaf);
        let dead = dead_by_subject.get(&s).cloned().unwrap_or_default();
        let entries = ledger_by_subject.get(&s).cloned().unwrap_or_default();
        let case = m.leaf;
        match m.expect {
            Expect::DeadLetter => {
                ensure!(entries.is_empty(), "{case}: ledger entries {entries:?}");
                ensure!(dead.len() == 1, "{case}: dead letters {dead:?}");
                let d = dead[0];
                ensure!(
                    d.reason.contains(m.reason_mentions),
                    "{case}: the reason {:?} does not mention {:?}",
                    d.reason,
                    m.reason_mentions
                );
                ensure!(d.ledger_id.is_none(), "{case}: {d:?}");
                ensure!(
                    d.payload_bytes as usize == m.payload.len(),
                    "{case}: the dead letter keeps {} of {} bytes",
                    d.payload_bytes,
                    m.payload.len()
                );
            }
            Expect::Invalid | Expect::Filtered => {
                ensure!(entries.len() == 1, "{case}: ledger entries {entries:?}");
                let entry = entries[0];
                let outcome = &entry.outcomes[0];
                let want = if m.expect == Expect::Invalid {
                    "invalid"
                } else {
                    "filtered"
                };
                ensure!(outcome["outcome"] == want, "{case}: {:#}", entry.outcomes);
                let reason = outcome["reason"].as_str().unwrap_or_default();
                ensure!(
                    reason.contains(m.reason_mentions),
                    "{case}: the reason {reason:?} does not mention {:?}",
                    m.reason_mentions
                );
                ensure!(outcome["request_id"].is_null(), "{case}: {outcome}");
                if m.expect == Expect::Invalid {
                    ensure!(dead.len() == 1, "{case}: dead letters {dead:?}");
                    ensure!(
                        dead[0].ledger_id == Some(entry.ledger_id)
                            && entry.dead_letter_id == Some(dead[0].id),
                        "{case}: the dead letter and the ledger entry name each other: {:?} {entry:?}",
                        dead[0]
                    );
                    ensure!(!dead[0].reason.is_empty(), "{case}");
                } else {
                    ensure!(dead.is_empty(), "{case}: dead letters {dead:?}");
                }
            }
        }
    }

    // Only the valid event filed, and its run succeeds.
    let valid = ledger_by_subject
        .get(&subject(&stack, "valid"))
        .and_then(|v| v.first())
        .context("the valid event's ledger entry")?;
    ensure!(
        valid.outcomes[0]["outcome"] == "filed",
        "{:#}",
        valid.outcomes
    );
    assert_eq!(
        stack.count("requests").await?,
        1,
        "only the valid event filed"
    );
    let run_id = valid.outcomes[0]["run_id"]
        .as_str()
        .context("run id")?
        .parse()?;
    assert_eq!(
        stack.wait_finished(run_id, WAIT).await?["status"],
        "succeeded"
    );

    // Every message was decided the first time: none waits for redelivery,
    // none went to the bus's dead letters after retries.
    let stream = stack.js.get_stream(stack.names.inbound_stream()).await?;
    let mut consumer = stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
            &stack.names.inbound_consumer(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("the inbound consumer: {e}"))?;
    let info = consumer.info().await?;
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    assert_eq!(info.num_pending, 0, "{info:?}");
    assert_eq!(info.num_redelivered, 0, "nothing was retried: {info:?}");
    let (status, listed) = stack.get("/v1/dead-letters?limit=500").await?;
    assert_eq!(status, 200, "{listed:#}");
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(expected_dead as usize)
    );
    assert_eq!(
        listed["bus"]["count"].as_u64().unwrap_or(0),
        0,
        "{:#}",
        listed["bus"]
    );
    ready(&stack).await?;
    eprintln!(
        "{} hostile messages decided and the valid event filed {decided_after:?} after it was published",
        messages.len()
    );
    stack.stop().await
}

/// What `POST /v1/events` (or a GET) answered.
struct Answer {
    status: u16,
    content_type: String,
    body: Value,
}

async fn call(
    stack: &TestStack,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> anyhow::Result<Answer> {
    let mut request = stack
        .http
        .request(method, format!("{}{path}", stack.api))
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, v.as_bytes());
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Answer {
        status,
        content_type,
        body,
    })
}

/// Rows that a refused event must not have added.
async fn stored(stack: &TestStack) -> anyhow::Result<[i64; 4]> {
    Ok([
        stack.count("event_ledger").await?,
        stack.count("dead_letters").await?,
        stack.count("requests").await?,
        stack.count("runs").await?,
    ])
}

type Headers = Vec<(&'static str, String)>;
/// A body refused: (case, headers, body, expected status).
type RefusedCase = (&'static str, Headers, Vec<u8>, u16);
/// An event taken with reasons: (case, headers, body, outcome, a word of
/// the reason).
type AcceptedCase = (&'static str, Headers, Vec<u8>, &'static str, &'static str);

fn ce(id: &str, source: &str, content_type: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ce-specversion", "1.0".into()),
        ("ce-id", id.into()),
        ("ce-source", source.into()),
        ("ce-type", "com.acme.team.created".into()),
        ("content-type", content_type.into()),
    ]
}

#[tokio::test]
async fn hostile_http_events_get_a_problem_or_reasons_never_a_server_error_and_store_nothing_when_refused()
-> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack.apply(&team_db(&stack)).await?;
    let structured = || vec![("content-type", "application/cloudevents+json".to_string())];
    let gold = |id: &str| to_bytes(&event(id, json!({"team": "x", "tier": "gold"})));
    let mut with_nul = gold("nul-data");
    let at = with_nul
        .windows(4)
        .position(|w| w == b"gold")
        .context("gold")?;
    with_nul.splice(at..at, b"\\u0000".iter().copied());
    let mut raw_nul = gold("raw-nul");
    raw_nul.splice(at..at, [0u8]);
    let mut not_utf8 = gold("not-utf8");
    not_utf8.splice(at..at, [0xff, 0xfe]);
    let big_header = "v".repeat(16 * 1024);

    // (case, headers, body, expected status: a refusal stores nothing)
    let refused: Vec<RefusedCase> = vec![
        (
            "over the body limit",
            structured(),
            vec![b' '; 3 * 1024 * 1024],
            413,
        ),
        ("escaped NUL in data", structured(), with_nul, 422),
        ("raw NUL byte", structured(), raw_nul, 422),
        ("invalid UTF-8", structured(), not_utf8, 422),
        (
            "random bytes as cloudevents+json",
            structured(),
            vec![0xff, 0x00, 0x13, 0x37],
            422,
        ),
        (
            "text/plain junk",
            vec![("content-type", "text/plain".into())],
            b"hello".to_vec(),
            422,
        ),
        (
            "xml",
            vec![("content-type", "application/xml".into())],
            b"<event id='1'/>".to_vec(),
            422,
        ),
        (
            "a batch",
            vec![("content-type", "application/cloudevents-batch+json".into())],
            format!("[{}]", String::from_utf8_lossy(&gold("batched"))).into_bytes(),
            422,
        ),
        (
            "form",
            vec![("content-type", "application/x-www-form-urlencoded".into())],
            b"id=1&source=2".to_vec(),
            422,
        ),
        ("empty body", Vec::new(), Vec::new(), 422),
        ("empty cloudevents+json body", structured(), Vec::new(), 422),
        (
            "JSON that is not an object",
            structured(),
            b"[1]".to_vec(),
            422,
        ),
        (
            "huge ce-source",
            ce("big-source", &big_header, "application/json"),
            br#"{"team":"x","tier":"gold"}"#.to_vec(),
            422,
        ),
        (
            "huge ce-id",
            ce(&big_header, "/acme/teams", "application/json"),
            br#"{"team":"x","tier":"gold"}"#.to_vec(),
            422,
        ),
        (
            "invalid ce-time",
            {
                let mut h = ce("bad-time", "/acme/teams", "application/json");
                h.push(("ce-time", "noon".into()));
                h
            },
            br#"{"team":"x","tier":"gold"}"#.to_vec(),
            422,
        ),
        (
            "ce-specversion 0.3",
            {
                let mut h = ce("v03", "/acme/teams", "application/json");
                h[0].1 = "0.3".into();
                h
            },
            br#"{"team":"x","tier":"gold"}"#.to_vec(),
            422,
        ),
    ];
    for (case, headers, body, status) in refused {
        let before = stored(&stack).await?;
        let answer = call(&stack, reqwest::Method::POST, "/v1/events", &headers, body).await?;
        assert_eq!(answer.status, status, "{case}: {:#}", answer.body);
        assert_eq!(answer.content_type, "application/problem+json", "{case}");
        assert!(
            !answer.body["detail"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{case}: the problem names what is wrong: {:#}",
            answer.body
        );
        assert_eq!(stored(&stack).await?, before, "{case}: nothing is stored");
    }

    // Headers past hyper's limits (about 400 KiB in all, 100 of them) are
    // refused by hyper before any route runs: a 431 without a problem body
    // (the router never sees the request), and nothing is stored.
    let mut many: Headers = ce("many-headers", "/acme/teams", "application/json");
    const NAMES: [&str; 8] = ["x-a", "x-b", "x-c", "x-d", "x-e", "x-f", "x-g", "x-h"];
    for i in 0..200 {
        many.push((NAMES[i % NAMES.len()], format!("value-{i}")));
    }
    for (case, headers) in [
        (
            "a 1 MiB ce-id header",
            ce(&"i".repeat(1024 * 1024), "/acme/teams", "application/json"),
        ),
        ("200 headers", many),
    ] {
        let before = stored(&stack).await?;
        let answer = call(
            &stack,
            reqwest::Method::POST,
            "/v1/events",
            &headers,
            br#"{"team":"x","tier":"gold"}"#.to_vec(),
        )
        .await?;
        assert_eq!(answer.status, 431, "{case}: {:#}", answer.body);
        assert_eq!(stored(&stack).await?, before, "{case}: nothing is stored");
    }

    // CloudEvents the trigger cannot use: 202 with the reason, nothing filed.
    let long_id = "i".repeat(300);
    let mut big_extension = ce("big-extension", "/acme/teams", "application/json");
    big_extension.push(("ce-bigext", "x".repeat(64 * 1024)));
    let accepted: Vec<AcceptedCase> = vec![
        (
            "ce-id longer than the idempotency key allows",
            ce(&long_id, "/acme/teams", "application/json"),
            br#"{"team":"x","tier":"gold"}"#.to_vec(),
            "invalid",
            "idempotency key",
        ),
        (
            "binary data with NUL bytes",
            ce("nul-bytes", "/acme/teams", "application/octet-stream"),
            vec![0, 0, 0xff, 0],
            "invalid",
            "tier",
        ),
        (
            "binary data that is not JSON under application/json",
            ce("not-json", "/acme/teams", "application/json"),
            b"{tier: gold".to_vec(),
            "invalid",
            "tier",
        ),
        (
            "a 64 KiB extension header",
            big_extension,
            br#"{"team":"x","tier":"silver"}"#.to_vec(),
            "filtered",
            "filter",
        ),
    ];
    for (case, headers, body, outcome, mentions) in accepted {
        let answer = call(&stack, reqwest::Method::POST, "/v1/events", &headers, body).await?;
        assert_eq!(answer.status, 202, "{case}: {:#}", answer.body);
        let got = &answer.body["outcomes"][0];
        assert_eq!(got["outcome"], outcome, "{case}: {:#}", answer.body);
        assert!(
            got["reason"]
                .as_str()
                .unwrap_or_default()
                .contains(mentions),
            "{case}: the reason names the problem: {got:#}"
        );
        assert!(got["request_id"].is_null(), "{case}: {got:#}");
        let ledger_id = answer.body["ledger_id"].as_str().context("ledger id")?;
        let (status, entry) = stack.get(&format!("/v1/events/{ledger_id}")).await?;
        assert_eq!(status, 200, "{case}: {entry:#}");
        assert_eq!(entry["outcomes"][0]["outcome"], outcome, "{case}");
    }
    assert_eq!(stack.count("requests").await?, 0, "nothing was filed");

    // Bad query and path parameters: 400 naming the parameter.
    let gets = [
        ("/v1/events?outcome=bogus", "outcome"),
        ("/v1/events?since=notatime", "since"),
        ("/v1/events?cursor=junk", "cursor"),
        ("/v1/events?limit=0", "limit"),
        ("/v1/events?limit=many", "limit"),
        ("/v1/events/not-a-uuid", "not-a-uuid"),
        ("/v1/dead-letters?limit=-1", "limit"),
        ("/v1/dead-letters?cursor=junk", "cursor"),
    ];
    for (path, names) in gets {
        let answer = call(&stack, reqwest::Method::GET, path, &[], Vec::new()).await?;
        assert_eq!(answer.status, 400, "{path}: {:#}", answer.body);
        assert_eq!(answer.content_type, "application/problem+json", "{path}");
        let detail = answer.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(names), "{path}: {detail:?} names {names:?}");
    }
    ready(&stack).await?;
    stack.stop().await
}

/// The same event several times in one batch (published while no engine
/// runs, so the engine that starts pulls them all at once and decides them
/// in one or two batches) files once; every other copy is a duplicate
/// naming the request filed.
#[tokio::test]
async fn copies_of_an_event_decided_in_one_batch_file_once() -> anyhow::Result<()> {
    let mut stack =
        fulfil_integration_tests::TestStack::start_with(fulfil_integration_tests::StackOptions {
            in_process_engines: false,
            ..Default::default()
        })
        .await?;
    stack.apply(&team_db(&stack)).await?;
    const EVENTS: usize = 20;
    const COPIES: usize = 3;
    for copy in 0..COPIES {
        for n in 0..EVENTS {
            let team = "abcdefghijklmnopqrstuvwxyz"
                .chars()
                .nth(n)
                .context("letter")?
                .to_string();
            let body = to_bytes(&event(
                &format!("copy-{n}"),
                json!({"team": team, "tier": "gold"}),
            ));
            stack
                .nats
                .publish(subject(&stack, &format!("copy{copy}")), body.into())
                .await?;
        }
    }
    stack.nats.flush().await?;
    stack.start_engine();
    let deadline = Instant::now() + WAIT;
    while stack.count("event_ledger").await? < (EVENTS * COPIES) as i64 {
        ensure!(
            Instant::now() < deadline,
            "not all copies decided in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT event_id, outcomes->0->>'outcome', outcomes->0->>'request_id'
         FROM fulfil.event_ledger ORDER BY ledger_id",
    )
    .fetch_all(&stack.pool)
    .await?;
    let mut per_event: BTreeMap<String, Vec<(String, Option<String>)>> = BTreeMap::new();
    for (id, outcome, request) in rows {
        per_event.entry(id).or_default().push((outcome, request));
    }
    assert_eq!(per_event.len(), EVENTS);
    for (id, entries) in &per_event {
        assert_eq!(entries.len(), COPIES, "{id}: {entries:?}");
        let filed: Vec<_> = entries.iter().filter(|(o, _)| o == "filed").collect();
        assert_eq!(filed.len(), 1, "{id}: {entries:?}");
        assert!(
            entries
                .iter()
                .all(|(o, r)| (o == "filed" || o == "duplicate") && *r == filed[0].1),
            "{id}: every copy names the one request: {entries:?}"
        );
    }
    assert_eq!(stack.count("requests").await?, EVENTS as i64);
    assert_eq!(stack.count("dead_letters").await?, 0);
    stack.stop().await
}

/// Header names a sender might use (CloudEvents ones most of all) with
/// plausible or arbitrary printable values; NATS and HTTP both carry them.
fn fuzz_headers() -> impl proptest::strategy::Strategy<Value = Vec<(String, String)>> {
    use proptest::prelude::*;
    let name = prop_oneof![
        Just("ce-specversion".to_string()),
        Just("ce-id".to_string()),
        Just("ce-source".to_string()),
        Just("ce-type".to_string()),
        Just("ce-time".to_string()),
        Just("ce-dataschema".to_string()),
        Just("content-type".to_string()),
        "ce-[a-z]{1,8}",
        "x-[a-z]{1,8}",
    ];
    let value = prop_oneof![
        Just("1.0".to_string()),
        Just("0.3".to_string()),
        Just("com.acme.team.created".to_string()),
        Just("application/json".to_string()),
        Just("application/cloudevents+json".to_string()),
        Just("2026-12-02T10:00:00Z".to_string()),
        "[ -~]{0,40}",
    ];
    proptest::collection::vec((name, value), 0..8)
}

/// Structured events with attributes of any JSON kind, and raw bytes.
fn fuzz_body() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        Just(json!("gold")),
        Just(json!("com.acme.team.created")),
    ];
    let value = leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            proptest::collection::btree_map("[a-z]{1,5}|tier|team", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let attribute = prop_oneof![
        Just("specversion"),
        Just("id"),
        Just("source"),
        Just("type"),
        Just("time"),
        Just("datacontenttype"),
        Just("data"),
        Just("data_base64"),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..128),
        proptest::collection::btree_map(attribute, value, 0..8).prop_map(|m| {
            let mut object: serde_json::Map<String, Value> =
                m.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            object.entry("specversion").or_insert_with(|| json!("1.0"));
            object
                .entry("type")
                .or_insert_with(|| json!("com.acme.team.created"));
            to_bytes(&Value::Object(object))
        }),
    ]
}

/// Arbitrary messages on a trigger's subject are each accounted for exactly
/// once (one ledger entry, or one dead letter saying it is not a CloudEvent),
/// none is retried, and arbitrary events posted over HTTP never get a 5xx;
/// every refusal there is a problem.
#[test]
fn arbitrary_bus_messages_and_http_events_are_each_decided_once_and_never_a_server_error()
-> anyhow::Result<()> {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use tower::ServiceExt;

    const MESSAGES: usize = 200;
    let runtime = tokio::runtime::Runtime::new()?;
    let stack = runtime.block_on(async {
        let stack = TestStack::start().await?;
        stack.apply(&team_db(&stack)).await?;
        anyhow::Ok(stack)
    })?;

    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (fuzz_headers(), fuzz_body());
    let mut messages = Vec::with_capacity(MESSAGES);
    for _ in 0..MESSAGES {
        let tree = strategy
            .new_tree(&mut runner)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        messages.push(tree.current());
    }
    runtime.block_on(async {
        for (i, (headers, body)) in messages.iter().enumerate() {
            let mut map = HeaderMap::new();
            for (k, v) in headers {
                map.append(k.as_str(), v.as_str());
            }
            stack
                .nats
                .publish_with_headers(
                    subject(&stack, &format!("fuzz{i}")),
                    map,
                    body.clone().into(),
                )
                .await?;
        }
        stack.nats.flush().await?;
        let deadline = Instant::now() + WAIT;
        loop {
            let accounted: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM fulfil.event_ledger)
                      + (SELECT count(*) FROM fulfil.dead_letters WHERE ledger_id IS NULL)",
            )
            .fetch_one(&stack.pool)
            .await?;
            if accounted >= MESSAGES as i64 {
                ensure!(
                    accounted == MESSAGES as i64,
                    "{accounted} outcomes for {MESSAGES} messages"
                );
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{accounted} of {MESSAGES} messages decided after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let subjects: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT s) FROM (SELECT nats_subject AS s FROM fulfil.event_ledger
             UNION ALL SELECT subject FROM fulfil.dead_letters WHERE ledger_id IS NULL) u",
        )
        .fetch_one(&stack.pool)
        .await?;
        assert_eq!(subjects, MESSAGES as i64, "each message decided once");
        let stream = stack.js.get_stream(stack.names.inbound_stream()).await?;
        let mut consumer = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
                &stack.names.inbound_consumer(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("the inbound consumer: {e}"))?;
        let info = consumer.info().await?;
        assert_eq!(info.num_redelivered, 0, "nothing was retried: {info:?}");
        assert_eq!(info.num_ack_pending, 0, "{info:?}");
        ready(&stack).await
    })?;

    let router = fulfil_api::router(fulfil_api::ApiState::new(
        stack.engine.clone(),
        Some(stack.nats.clone()),
    ));
    let config = ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(headers in fuzz_headers(), body in fuzz_body())| {
        let mut request = axum::http::Request::builder().method("POST").uri("/v1/events");
        for (k, v) in &headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let request = request
            .body(axum::body::Body::from(body.clone()))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let response = runtime
            .block_on(router.clone().oneshot(request))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let status = response.status();
        prop_assert!(
            status == 202 || status.is_client_error(),
            "{status} for {headers:?} {:?}",
            String::from_utf8_lossy(&body)
        );
        if status != 202 {
            prop_assert_eq!(
                response.headers().get("content-type").and_then(|v| v.to_str().ok()),
                Some("application/problem+json")
            );
        }
    });
    runtime.block_on(stack.stop())
}
