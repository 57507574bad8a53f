//! Crash test of inbound events: the engine runs as a real `fulfil serve
//! --roles engine` child process and is SIGKILLed twice while a plain NATS
//! client publishes CloudEvents (some of them twice) on a trigger's subject.
//! Every distinct event files exactly one request (durability contract 9:
//! acknowledged only after its outcome is committed, never filed twice), and
//! every run succeeds.
//!
//! The API and the worker run in the test process; the machine's shared
//! Postgres and NATS are never stopped. Every wait is bounded. Run with
//! `--nocapture` to see the figures.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use fulfil_integration_tests::processes::{
    RoleProcess, RoleSpawner, ScratchDir, diagnose, finished, wait_finished_runs,
};
use fulfil_integration_tests::{StackOptions, TestStack};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_fulfil");
const TRIGGER: &str = "on-order";
const SOURCE: &str = "/acme/shop";

fn promise(stack: &TestStack) -> String {
    format!(
        r#"apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: order, version: "1" }}
spec:
  api:
    type: object
    required: [n]
    properties:
      n: {{ type: integer }}
  workflow:
    steps:
      - {{ id: ship, uses: echo, with: {{ n: "${{{{ params.n }}}}" }} }}
  triggers:
    - name: {TRIGGER}
      subject: shop.{}.orders.>
      type: com.acme.order.created
      params: {{ n: "${{{{ event.data.n }}}}" }}
"#,
        stack.names.prefix()
    )
}

fn event_bytes(n: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "specversion": "1.0",
        "id": format!("order-{n}"),
        "source": SOURCE,
        "type": "com.acme.order.created",
        "data": { "n": n },
    }))
    .unwrap_or_default()
}

async fn ledger_entries(stack: &TestStack) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM fulfil.event_ledger")
            .fetch_one(&stack.pool)
            .await?,
    )
}

/// Waits, at most 60 s, until the ledger holds `count` entries, checking
/// that `engine` stays up meanwhile.
async fn until_ledger_reaches(
    stack: &TestStack,
    count: i64,
    engine: &mut RoleProcess,
) -> anyhow::Result<()> {
    let since = Instant::now();
    loop {
        if ledger_entries(stack).await? >= count {
            return Ok(());
        }
        engine.ensure_running()?;
        ensure!(
            since.elapsed() < Duration::from_secs(60),
            "the ledger did not reach {count} entries within 60s;\n{}",
            engine.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// 400 distinct events and 40 re-sent copies published over ~4.5 s while
/// the engine process is SIGKILLed (at a third and two thirds of the
/// ledger) and restarted at once. Every distinct event files exactly one
/// request (the set of idempotency keys equals the set published), every
/// run succeeds, and each event has at least one ledger entry with exactly
/// one `filed` outcome among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_while_events_arrive_files_each_event_exactly_once() -> anyhow::Result<()> {
    const EVENTS: usize = 400;
    const CRASHES: i64 = 2;
    let stack = TestStack::start_with(StackOptions {
        in_process_engines: false,
        ..StackOptions::default()
    })
    .await?;
    // Applying the Promise makes the inbound stream capture its subject.
    stack.apply(&promise(&stack)).await?;
    let mut logs = ScratchDir::new("crash-events")?;
    let roles = RoleSpawner::new(BIN, &stack, logs.path());
    let engine = roles.spawn("engine-1", "engine", &[])?;
    let started = Instant::now();
    let subject = format!("shop.{}.orders.created", stack.names.prefix());

    let publishing = async {
        let mut published = 0usize;
        let mut resent = 0usize;
        for n in 0..EVENTS {
            stack
                .nats
                .publish(subject.clone(), event_bytes(n).into())
                .await?;
            published += 1;
            // Every tenth event is sent again a few events later.
            if n >= 7 && (n - 7) % 10 == 0 {
                stack
                    .nats
                    .publish(subject.clone(), event_bytes(n - 7).into())
                    .await?;
                resent += 1;
            }
            if n % 20 == 0 {
                stack.nats.flush().await?;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stack.nats.flush().await?;
        anyhow::Ok((published, resent))
    };
    let crashing = async {
        let mut engine = engine;
        let mut kills = Vec::new();
        for k in 1..=CRASHES {
            let threshold = EVENTS as i64 * k / (CRASHES + 1);
            until_ledger_reaches(&stack, threshold, &mut engine).await?;
            engine.sigkill().await?;
            let at_kill = ledger_entries(&stack).await?;
            let held = inbound_ack_pending(&stack).await?;
            kills.push((at_kill, held, started.elapsed()));
            engine = roles.spawn(&format!("engine-{}", k + 1), "engine", &[])?;
        }
        anyhow::Ok((engine, kills))
    };
    let (published, crashed) = tokio::join!(publishing, crashing);
    let (published, resent) = published?;
    let (mut engine, kills) = crashed?;
    ensure!(published == EVENTS, "{published} published");

    // Events a killed engine pulled and did not acknowledge come back after
    // the inbound consumer's ack wait (30 s).
    let statuses = wait_finished_runs(&stack.pool, EVENTS as i64, Duration::from_secs(120)).await?;
    let all_done = started.elapsed();
    let succeeded = statuses.get("succeeded").copied().unwrap_or(0);
    if succeeded != EVENTS as i64 || finished(&statuses) != succeeded {
        anyhow::bail!(
            "{succeeded} of {EVENTS} runs succeeded; statuses {statuses:?}\n{}\n--- engine log ---\n{}",
            diagnose(&stack.pool).await,
            engine.log_tail(40)
        );
    }
    engine.ensure_running()?;

    let keys: Vec<Option<String>> =
        sqlx::query_scalar("SELECT idempotency_key FROM fulfil.requests")
            .fetch_all(&stack.pool)
            .await?;
    let expected: BTreeSet<String> = (0..EVENTS)
        .map(|n| format!("event:{TRIGGER}:{SOURCE}:order-{n}"))
        .collect();
    let filed: BTreeSet<String> = keys.iter().flatten().cloned().collect();
    assert_eq!(
        keys.len(),
        EVENTS,
        "one request per distinct event, none doubled"
    );
    assert_eq!(filed.len(), EVENTS, "no key twice, none missing");
    let lost: Vec<_> = expected.difference(&filed).take(5).collect();
    let strange: Vec<_> = filed.difference(&expected).take(5).collect();
    assert!(lost.is_empty(), "events filed nothing: {lost:?}");
    assert!(
        strange.is_empty(),
        "requests no event asked for: {strange:?}"
    );
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM fulfil.runs")
        .fetch_one(&stack.pool)
        .await?;
    assert_eq!(runs, EVENTS as i64, "one run per request");

    // The ledger: each event at least once, `filed` exactly once, anything
    // else a duplicate naming the request filed first.
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT event_id,
                count(*),
                count(*) FILTER (WHERE outcomes->0->>'outcome' = 'filed'),
                count(*) FILTER (WHERE outcomes->0->>'outcome' = 'duplicate')
         FROM fulfil.event_ledger GROUP BY event_id",
    )
    .fetch_all(&stack.pool)
    .await?;
    let per_event: BTreeMap<String, (i64, i64, i64)> = rows
        .into_iter()
        .map(|(id, all, filed, duplicate)| (id, (all, filed, duplicate)))
        .collect();
    assert_eq!(per_event.len(), EVENTS, "every event has a ledger entry");
    let mut entries = 0;
    for n in 0..EVENTS {
        let id = format!("order-{n}");
        let (all, filed, duplicate) = per_event.get(&id).copied().context(id.clone())?;
        assert_eq!(filed, 1, "{id}: {all} entries, {filed} filed");
        assert_eq!(
            all,
            filed + duplicate,
            "{id}: every other entry is a duplicate"
        );
        entries += all;
    }
    assert!(
        entries >= (EVENTS + resent) as i64,
        "{entries} ledger entries for {} messages",
        EVENTS + resent
    );
    let dead_letters: i64 = sqlx::query_scalar("SELECT count(*) FROM fulfil.dead_letters")
        .fetch_one(&stack.pool)
        .await?;
    assert_eq!(dead_letters, 0, "every message was a valid event");

    eprintln!(
        "== engine SIGKILLed {CRASHES} times while {EVENTS} events and {resent} re-sent copies were published"
    );
    for (i, (at_kill, held, at)) in kills.iter().enumerate() {
        eprintln!(
            "   kill {} at {:.1}s: {at_kill} ledger entries committed, {held} messages pulled and not acknowledged",
            i + 1,
            at.as_secs_f64()
        );
    }
    eprintln!(
        "   {EVENTS} requests filed, none twice; {entries} ledger entries: {} duplicates, of which {resent} re-sent and {} redelivered after their outcome was committed; all runs succeeded {:.1}s after the start",
        entries - EVENTS as i64,
        entries - (EVENTS + resent) as i64,
        all_done.as_secs_f64()
    );

    engine.sigkill().await?;
    stack.stop().await?;
    logs.finish();
    Ok(())
}

/// Inbound messages pulled and not yet acknowledged.
async fn inbound_ack_pending(stack: &TestStack) -> anyhow::Result<usize> {
    let stream = stack.js.get_stream(stack.names.inbound_stream()).await?;
    let mut consumer = stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
            &stack.names.inbound_consumer(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("getting the inbound consumer: {e}"))?;
    Ok(consumer.info().await?.num_ack_pending)
}
