//! Schedules against the real Postgres and NATS: every tick of a schedule
//! leaves exactly one ledger row and files at most one request, with two
//! engines deciding ticks at once, through an engine stopping and another
//! starting, after every engine was down (catch-up and missed ticks), with
//! a run in flight (skip and buffer_one) and across a pause; documents
//! that are not valid answer 422 and store nothing.
//!
//! Engines run in this process, each on its own Postgres pool and NATS
//! connection as separate processes would, so a test can stop one and
//! start another.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, Utc};
use fulfil_core::schedule::Timing;
use fulfil_engine::{Engine, EngineConfig, db};
use fulfil_integration_tests::{StackOptions, TestStack};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// An engine of the test: its loops run until [`TestEngine::stop`].
struct TestEngine {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestEngine {
    async fn start(stack: &TestStack, id: &str, grace: Duration) -> anyhow::Result<Self> {
        let pool = db::connect(&stack.database_url, 5).await?;
        let nats = async_nats::connect(&stack.nats_url).await?;
        let js = async_nats::jetstream::new(nats);
        let engine = Engine::new(pool, stack.names.clone(), id);
        engine.start_fast_publisher(js.clone());
        let stop = CancellationToken::new();
        let config = EngineConfig {
            poll_interval: Duration::from_millis(200),
            schedule_grace: grace,
            ..EngineConfig::default()
        };
        let token = stop.clone();
        let task = tokio::spawn(async move { Ok(engine.run(js, config, token).await?) });
        Ok(Self { stop, task })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .context("the engine did not stop within 15 s")???;
        Ok(())
    }
}

async fn stack() -> anyhow::Result<TestStack> {
    TestStack::start_with(StackOptions {
        in_process_engines: false,
        ..StackOptions::default()
    })
    .await
}

const BEAT: &str = r#"apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: beat, version: "1" }
spec:
  api: { type: object, properties: { n: { type: integer } } }
  workflow:
    steps:
      - { id: pulse, uses: noop }
"#;

/// A Promise whose one step waits on a queue no worker serves, so its
/// requests stay in flight.
const STUCK: &str = r#"apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: stuck, version: "1" }
spec:
  workflow:
    steps:
      - { id: wait, uses: noop, queue: nobody }
"#;

fn schedule(name: &str, promise: &str, extra: &str) -> String {
    format!(
        "apiVersion: fulfil.dev/v1\nkind: Schedule\nmetadata: {{ name: {name}, owner: team-test }}\nspec:\n  promise: {promise}\n  cron: \"* * * * * *\"\n{extra}"
    )
}

async fn put_schedule(stack: &TestStack, name: &str, body: &str) -> anyhow::Result<(u16, Value)> {
    let response = stack
        .http
        .put(format!("{}/v1/schedules/{name}", stack.api))
        .header("content-type", "application/yaml")
        .body(body.to_string())
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

async fn post(stack: &TestStack, path: &str, actor: &str) -> anyhow::Result<(u16, Value)> {
    let response = stack
        .http
        .post(format!("{}{path}", stack.api))
        .header("Fulfil-Actor", actor)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

/// The whole ledger of `name`, oldest first, read page by page.
async fn ledger(stack: &TestStack, name: &str) -> anyhow::Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut path = format!("/v1/schedules/{name}/ticks?limit=7");
    for _ in 0..1000 {
        let (status, page) = stack.get(&path).await?;
        ensure!(status == 200, "ticks of {name}: {status} {page}");
        all.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!(
                    "/v1/schedules/{name}/ticks?limit=7&cursor={}",
                    cursor.replace('+', "%2B").replace(':', "%3A")
                )
            }
            None => {
                all.reverse();
                return Ok(all);
            }
        }
    }
    bail!("the ledger of {name} did not end")
}

fn nominal(tick: &Value) -> anyhow::Result<DateTime<Utc>> {
    Ok(
        DateTime::parse_from_rfc3339(tick["nominal_at"].as_str().context("nominal_at")?)?
            .with_timezone(&Utc),
    )
}

fn outcomes(ticks: &[Value]) -> Vec<&str> {
    ticks
        .iter()
        .map(|t| t["outcome"].as_str().unwrap_or("?"))
        .collect()
}

/// Polls the ledger of `name` until `done` holds for it, at most [`WAIT`].
async fn wait_for_ledger(
    stack: &TestStack,
    name: &str,
    done: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let ticks = ledger(stack, name).await?;
        if done(&ticks) {
            return Ok(ticks);
        }
        ensure!(
            Instant::now() < deadline,
            "ledger of {name} never got there: {:?}",
            outcomes(&ticks)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn count(ticks: &[Value], outcome: &str) -> usize {
    ticks.iter().filter(|t| t["outcome"] == outcome).count()
}

/// Each tick is the one after the previous by the cron expression: no
/// tick passed without a row, none has two.
fn assert_contiguous(ticks: &[Value]) -> anyhow::Result<()> {
    let every_second = Timing::new("* * * * * *", "UTC")?;
    for pair in ticks.windows(2) {
        let (a, b) = (nominal(&pair[0])?, nominal(&pair[1])?);
        ensure!(
            every_second.next_after(a) == Some(b),
            "ticks {a} and {b} are not consecutive: {:?}",
            outcomes(ticks)
        );
    }
    Ok(())
}

/// The requests the schedule filed, checked against its ledger: one per
/// filed tick, keyed by the tick, filed by the schedule, no key twice.
async fn assert_requests_match_ledger(
    stack: &TestStack,
    name: &str,
    ticks: &[Value],
) -> anyhow::Result<usize> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT idempotency_key, count(*) FROM fulfil.requests WHERE created_by = $1
         GROUP BY idempotency_key",
    )
    .bind(format!("schedule:{name}"))
    .fetch_all(&stack.pool)
    .await?;
    ensure!(
        rows.iter().all(|(_, n)| *n == 1),
        "duplicate keys: {rows:?}"
    );
    let filed: Vec<&Value> = ticks.iter().filter(|t| t["outcome"] == "filed").collect();
    ensure!(
        rows.len() == filed.len(),
        "{} requests for {} filed ticks",
        rows.len(),
        filed.len()
    );
    for tick in filed {
        let id: uuid::Uuid = tick["request_id"]
            .as_str()
            .context("a filed tick names its request")?
            .parse()?;
        let (key, by): (String, String) =
            sqlx::query_as("SELECT idempotency_key, created_by FROM fulfil.requests WHERE id = $1")
                .bind(id)
                .fetch_one(&stack.pool)
                .await?;
        let at = nominal(tick)?.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        ensure!(key == format!("schedule:{name}:{at}"), "{key} for {at}");
        ensure!(by == format!("schedule:{name}"), "{by}");
    }
    Ok(rows.len())
}

#[tokio::test]
async fn a_schedule_files_once_per_tick_with_two_engines_and_through_a_restart()
-> anyhow::Result<()> {
    let stack = stack().await?;
    stack.apply(BEAT).await?;
    let grace = Duration::from_secs(10);
    let first = TestEngine::start(&stack, "engine-a", grace).await?;
    let second = TestEngine::start(&stack, "engine-b", grace).await?;

    let (status, body) = put_schedule(
        &stack,
        "heartbeat",
        &schedule(
            "heartbeat",
            "beat",
            "  params: { n: 7 }\n  overlap: allow\n",
        ),
    )
    .await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["outcome"], "created");
    assert!(body["next_fire_at"].is_string(), "{body}");
    // The same document again changes nothing.
    let (status, body) = put_schedule(
        &stack,
        "heartbeat",
        &schedule(
            "heartbeat",
            "beat",
            "  params: { n: 7 }\n  overlap: allow\n",
        ),
    )
    .await?;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("unchanged")));

    wait_for_ledger(&stack, "heartbeat", |t| t.len() >= 4).await?;
    // One engine goes away and another comes: the ticks go on, none twice.
    first.stop().await?;
    let third = TestEngine::start(&stack, "engine-c", grace).await?;
    let before = ledger(&stack, "heartbeat").await?.len();
    wait_for_ledger(&stack, "heartbeat", |t| t.len() >= before + 4).await?;
    second.stop().await?;
    third.stop().await?;

    let ticks = ledger(&stack, "heartbeat").await?;
    assert!(ticks.len() >= 8, "{:?}", outcomes(&ticks));
    assert_eq!(count(&ticks, "filed"), ticks.len(), "{ticks:#?}");
    assert_contiguous(&ticks)?;
    let filed = assert_requests_match_ledger(&stack, "heartbeat", &ticks).await?;
    assert_eq!(filed, ticks.len());
    // Each tick decided within the second it was due.
    for tick in &ticks {
        let fired = DateTime::parse_from_rfc3339(tick["fired_at"].as_str().unwrap_or_default())?;
        let late = fired.with_timezone(&Utc) - nominal(tick)?;
        assert!(late < chrono::TimeDelta::seconds(2), "{tick}");
    }
    // The requests carry the schedule's params.
    let params: Vec<Value> =
        sqlx::query_scalar("SELECT DISTINCT params FROM fulfil.requests WHERE created_by = $1")
            .bind("schedule:heartbeat")
            .fetch_all(&stack.pool)
            .await?;
    assert_eq!(params, vec![json!({ "n": 7 })]);

    let (status, list) = stack.get("/v1/schedules").await?;
    assert_eq!(status, 200);
    assert_eq!(list["next_cursor"], Value::Null);
    let item = &list["items"][0];
    assert_eq!(item["name"], "heartbeat");
    assert_eq!(item["owner"], "team-test");
    let next = DateTime::parse_from_rfc3339(item["next_fire_at"].as_str().unwrap_or_default())?;
    let last = nominal(ticks.last().context("ticks")?)?;
    assert!(next.with_timezone(&Utc) > last, "{item}");
    stack.stop().await
}

#[tokio::test]
async fn ticks_inside_the_catch_up_window_fire_on_recovery_and_older_ones_are_missed()
-> anyhow::Result<()> {
    let stack = stack().await?;
    stack.apply(BEAT).await?;
    // No engine runs: the ticks fall due and wait.
    let (status, body) = put_schedule(
        &stack,
        "catchup",
        &schedule("catchup", "beat", "  overlap: allow\n  catch_up: 3s\n"),
    )
    .await?;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let recovered_at = Utc::now();
    let engine = TestEngine::start(&stack, "engine-late", Duration::from_millis(500)).await?;
    let ticks = wait_for_ledger(&stack, "catchup", |t| {
        t.iter()
            .filter(|t| t["outcome"] == "filed")
            .filter_map(|t| nominal(t).ok())
            .any(|at| at > recovered_at + chrono::TimeDelta::seconds(1))
    })
    .await?;
    engine.stop().await?;

    assert_contiguous(&ticks)?;
    let kinds = outcomes(&ticks);
    let missed = count(&ticks, "missed");
    // Missed first, then filed: the boundary is the window.
    assert!(missed >= 2, "{kinds:?}");
    assert!(kinds[..missed].iter().all(|k| *k == "missed"), "{kinds:?}");
    assert!(kinds[missed..].iter().all(|k| *k == "filed"), "{kinds:?}");
    for tick in &ticks[..missed] {
        assert!(tick["request_id"].is_null(), "{tick}");
        let reason = tick["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("catch-up window"), "{reason}");
        assert!(nominal(tick)? < recovered_at, "{tick}");
    }
    // Ticks due while everything was down, but inside the window, filed late.
    let caught_up: Vec<&Value> = ticks[missed..]
        .iter()
        .filter(|t| nominal(t).is_ok_and(|at| at < recovered_at))
        .collect();
    assert!(!caught_up.is_empty(), "{kinds:?}");
    let mut latest = chrono::TimeDelta::zero();
    for tick in caught_up {
        let fired = DateTime::parse_from_rfc3339(tick["fired_at"].as_str().unwrap_or_default())?
            .with_timezone(&Utc);
        assert!(fired >= recovered_at, "{tick}");
        latest = latest.max(fired - nominal(tick)?);
    }
    // Later than the 500 ms grace: the catch-up window let it fire.
    assert!(latest > chrono::TimeDelta::milliseconds(1500), "{latest}");
    assert_requests_match_ledger(&stack, "catchup", &ticks).await?;
    stack.stop().await
}

#[tokio::test]
async fn overlap_skip_and_buffer_one_hold_ticks_while_a_run_is_in_flight() -> anyhow::Result<()> {
    let stack = stack().await?;
    stack.apply(STUCK).await?;
    let engine = TestEngine::start(&stack, "engine-a", Duration::from_secs(10)).await?;
    for (name, overlap) in [("skipper", "skip"), ("bufferer", "buffer_one")] {
        let (status, body) = put_schedule(
            &stack,
            name,
            &schedule(name, "stuck", &format!("  overlap: {overlap}\n")),
        )
        .await?;
        assert_eq!(status, 201, "{body}");
    }
    let skipped = wait_for_ledger(&stack, "skipper", |t| t.len() >= 4).await?;
    assert_contiguous(&skipped)?;
    let kinds = outcomes(&skipped);
    assert_eq!(kinds[0], "filed", "{kinds:?}");
    assert!(
        kinds[1..].iter().all(|k| *k == "skipped_overlap"),
        "{kinds:?}"
    );
    let holder = skipped[0]["request_id"].as_str().context("request")?;
    let reason = skipped[1]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(holder), "{reason}");
    assert_eq!(
        assert_requests_match_ledger(&stack, "skipper", &skipped).await?,
        1
    );

    let buffered = wait_for_ledger(&stack, "bufferer", |t| t.len() >= 4).await?;
    assert_contiguous(&buffered)?;
    let kinds = outcomes(&buffered);
    assert_eq!(
        &kinds[..3],
        ["filed", "buffered", "skipped_overlap"],
        "{kinds:?}"
    );
    let waiting_at = buffered[1]["nominal_at"].clone();
    let (_, schedule) = stack.get("/v1/schedules/bufferer").await?;
    assert_eq!(schedule["buffered_at"], waiting_at, "{schedule}");

    // The run in flight ends (cancelled): the buffered tick files.
    let first: uuid::Uuid = buffered[0]["request_id"]
        .as_str()
        .context("request")?
        .parse()?;
    let (_, request) = stack.get(&format!("/v1/requests/{first}")).await?;
    let run = request["run_id"].as_str().context("run")?;
    let cancelled = stack
        .http
        .post(format!("{}/v1/runs/{run}/cancel", stack.api))
        .json(&json!({ "compensate": false, "reason": "test" }))
        .send()
        .await?;
    assert!(
        cancelled.status().is_success(),
        "{}",
        cancelled.text().await?
    );
    let after = wait_for_ledger(&stack, "bufferer", |t| {
        t.iter()
            .any(|t| t["nominal_at"] == waiting_at && t["outcome"] == "filed")
    })
    .await?;
    assert_contiguous(&after)?;
    let refiled = after
        .iter()
        .find(|t| t["nominal_at"] == waiting_at)
        .context("the buffered tick")?;
    assert!(refiled["request_id"].is_string(), "{refiled}");
    assert!(refiled["reason"].is_null(), "{refiled}");
    engine.stop().await?;
    let after = ledger(&stack, "bufferer").await?;
    assert_eq!(
        assert_requests_match_ledger(&stack, "bufferer", &after).await?,
        2
    );
    stack.stop().await
}

#[tokio::test]
async fn paused_ticks_are_recorded_and_resume_files_again() -> anyhow::Result<()> {
    let stack = stack().await?;
    stack.apply(BEAT).await?;
    let engine = TestEngine::start(&stack, "engine-a", Duration::from_secs(10)).await?;
    let body = schedule("pulse", "beat", "  overlap: allow\n");
    assert_eq!(put_schedule(&stack, "pulse", &body).await?.0, 201);
    wait_for_ledger(&stack, "pulse", |t| count(t, "filed") >= 2).await?;

    let (status, paused) = post(&stack, "/v1/schedules/pulse/pause", "alice").await?;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["paused_by"], "alice");
    assert_eq!(paused["document"]["spec"]["paused"], true);
    wait_for_ledger(&stack, "pulse", |t| count(t, "paused") >= 2).await?;
    let (status, resumed) = post(&stack, "/v1/schedules/pulse/resume", "bob").await?;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["paused"], false);
    assert_eq!(resumed["resumed_by"], "bob");
    let filed_before = count(&ledger(&stack, "pulse").await?, "filed");
    wait_for_ledger(&stack, "pulse", |t| count(t, "filed") >= filed_before + 2).await?;
    engine.stop().await?;

    let ticks = ledger(&stack, "pulse").await?;
    assert_contiguous(&ticks)?;
    // filed..., paused..., filed...: one stretch of paused ticks.
    let kinds = outcomes(&ticks);
    let first_paused = kinds
        .iter()
        .position(|k| *k == "paused")
        .context("paused")?;
    let after_paused = kinds[first_paused..]
        .iter()
        .position(|k| *k != "paused")
        .map(|i| i + first_paused)
        .context("filed after resume")?;
    assert!(
        kinds[..first_paused].iter().all(|k| *k == "filed"),
        "{kinds:?}"
    );
    assert!(
        kinds[after_paused..].iter().all(|k| *k == "filed"),
        "{kinds:?}"
    );
    for tick in &ticks[first_paused..after_paused] {
        assert!(tick["request_id"].is_null(), "{tick}");
        assert_eq!(tick["reason"], "the schedule was paused");
    }
    assert_requests_match_ledger(&stack, "pulse", &ticks).await?;
    let (status, only_paused) = stack
        .get("/v1/schedules/pulse/ticks?outcome=paused")
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        only_paused["items"].as_array().map(Vec::len),
        Some(after_paused - first_paused)
    );

    // Deleted: gone, its ledger kept.
    let deleted = stack
        .http
        .delete(format!("{}/v1/schedules/pulse", stack.api))
        .send()
        .await?;
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(stack.get("/v1/schedules/pulse").await?.0, 404);
    assert_eq!(ledger(&stack, "pulse").await?.len(), ticks.len());
    for path in ["/v1/schedules/nothing/ticks", "/v1/schedules/nothing"] {
        let (status, problem) = stack.get(path).await?;
        assert_eq!(status, 404, "{path}: {problem}");
        assert_eq!(problem["type"], "https://fulfil.dev/problems/not-found");
    }
    assert_eq!(
        post(&stack, "/v1/schedules/nothing/pause", "x").await?.0,
        404
    );
    stack.stop().await
}

#[tokio::test]
async fn bad_schedule_documents_answer_422_at_their_paths_and_store_nothing() -> anyhow::Result<()>
{
    let stack = stack().await?;
    stack.apply(BEAT).await?;
    let cases = [
        (
            "nightly",
            "apiVersion: fulfil.dev/v1\nkind: Schedule\nmetadata: { name: nightly }\nspec: { promise: beat, cron: \"0 2 * * *\", params: { n: seven } }\n",
            vec!["spec.params.n"],
            "schema of Promise beat",
        ),
        (
            "nightly",
            "apiVersion: fulfil.dev/v1\nkind: Schedule\nmetadata: { name: nightly }\nspec:\n  promise: beat\n  cron: \"0 2 * *\"\n  timezone: Mars/Olympus\n  overlap: queue\n  catch_up: soon\n",
            vec![
                "spec.cron",
                "spec.timezone",
                "spec.overlap",
                "spec.catch_up",
            ],
            "5 fields",
        ),
        (
            "nightly",
            "apiVersion: fulfil.dev/v1\nkind: Schedule\nmetadata: { name: nightly }\nspec: { promise: beat, cron: \"0 0 30 2 *\" }\n",
            vec!["spec.cron"],
            "never fires",
        ),
        (
            "nightly",
            "apiVersion: fulfil.dev/v1\nkind: Schedule\nmetadata: { name: other }\nspec: { promise: beat, cron: \"0 2 * * *\" }\n",
            vec!["metadata.name"],
            "must match",
        ),
        (
            "nightly",
            "{\"apiVersion\": \"fulfil.dev/v1\", \"kind\": \"Schedule\", \"metadata\": {\"name\": \"nightly\"}, \"spec\": {\"promise\": \"beat\", \"cron\": \"0 2 * * *\", \"jitter\": \"5s\"}}",
            vec!["spec.jitter"],
            "unknown field",
        ),
        (
            "Bad_Name",
            "apiVersion: fulfil.dev/v1\nkind: Schedule\nmetadata: { name: Bad_Name }\nspec: { promise: beat, cron: \"0 2 * * *\" }\n",
            vec!["metadata.name"],
            "not a valid name",
        ),
    ];
    for (name, body, paths, needle) in cases {
        let (status, problem) = put_schedule(&stack, name, body).await?;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(
            problem["type"], "https://fulfil.dev/problems/invalid-schedule",
            "{problem}"
        );
        let errors = problem["errors"].as_array().context("errors")?;
        let at: Vec<&str> = errors
            .iter()
            .map(|e| e["path"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(at, paths, "{problem}");
        assert!(problem.to_string().contains(needle), "{needle}: {problem}");
    }
    let (status, problem) = put_schedule(&stack, "nightly", "").await?;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(stack.count("schedules").await?, 0);
    assert_eq!(stack.count("schedule_ticks").await?, 0);
    let (status, list) = stack.get("/v1/schedules").await?;
    assert_eq!(
        (status, list),
        (200, json!({ "items": [], "next_cursor": null }))
    );
    let (status, problem) = stack.get("/v1/schedules?limit=0").await?;
    assert_eq!(status, 400, "{problem}");
    stack.stop().await
}

/// A Schedule with `field` replaced by arbitrary text, or arbitrary bytes:
/// hostile input for the document parser and the cron and zone readers.
fn hostile_schedule() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let valid = "apiVersion: fulfil.dev/v1\nkind: Schedule\nmetadata: { name: fuzz }\nspec: { promise: beat, cron: \"CRON\", timezone: \"ZONE\", catch_up: \"WINDOW\", overlap: OVERLAP, params: { n: 1 } }\n";
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        "[0-9*/,@LW#A-Z -]{0,40}".prop_map(move |cron| valid
            .replace("CRON", &cron)
            .replace("ZONE", "UTC")
            .replace("WINDOW", "1h")
            .replace("OVERLAP", "skip")
            .into_bytes()),
        any::<String>().prop_map(move |text| {
            let text = text.replace(['"', '\\'], "");
            valid
                .replace("CRON", "* * * * *")
                .replace("ZONE", &text)
                .replace("WINDOW", &text)
                .replace("OVERLAP", "allow")
                .into_bytes()
        }),
    ]
}

/// Arbitrary documents, names, cursors and filters sent to the schedule
/// routes in process never get a 5xx, and every error is a problem.
#[test]
fn arbitrary_schedule_input_never_gets_a_server_error() -> anyhow::Result<()> {
    use proptest::prelude::*;
    use tower::ServiceExt;

    let runtime = tokio::runtime::Runtime::new()?;
    let stack = runtime.block_on(async {
        let stack = stack().await?;
        stack.apply(BEAT).await?;
        anyhow::Ok(stack)
    })?;
    let router = fulfil_api::router(fulfil_api::ApiState::new(
        stack.engine.clone(),
        Some(stack.nats.clone()),
    ));
    let send = |method: &str, uri: &str, body: Vec<u8>| -> Result<u16, TestCaseError> {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/yaml")
            .body(axum::body::Body::from(body))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let response = runtime
            .block_on(router.clone().oneshot(request))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let status = response.status();
        prop_assert!(!status.is_server_error(), "{method} {uri}: {status}");
        if !status.is_success() && status.as_u16() != 204 {
            prop_assert_eq!(
                response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok()),
                Some("application/problem+json")
            );
        }
        Ok(status.as_u16())
    };
    let config = ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config.clone(), |(body in hostile_schedule())| {
        send("PUT", "/v1/schedules/fuzz", body)?;
    });
    let paths = [
        "/v1/schedules/{}",
        "/v1/schedules?cursor={}&limit={}",
        "/v1/schedules/fuzz/ticks?cursor={}",
        "/v1/schedules/{}/ticks?outcome={}&limit={}",
        "/v1/schedules/{}/pause",
        "/v1/schedules/{}/resume",
    ];
    proptest!(config, |(path in 0..paths.len(), bytes in proptest::collection::vec(any::<u8>(), 0..48))| {
        let encoded: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
        let uri = paths[path].replace("{}", &encoded);
        let method = if uri.ends_with("/pause") || uri.ends_with("/resume") { "POST" } else { "GET" };
        send(method, &uri, Vec::new())?;
    });
    runtime.block_on(stack.stop())
}
