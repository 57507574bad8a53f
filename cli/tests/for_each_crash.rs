//! A `for_each` fan-out survives its engine being SIGKILLed: the engine is
//! a real `fulfil serve --roles engine` child process, killed while the
//! instances of four runs are being dispatched and run, and restarted. The
//! list each step recorded when it started is what the new engine runs
//! over: no instance is lost, none is created twice, and each run's outputs
//! are its instances' in index order.
//!
//! Side effects are counted by a local HTTP server the instances' `http`
//! steps call with `{run: request id, step: item-<item>}`. The machine's
//! shared Postgres and NATS are never stopped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use fulfil_integration_tests::processes::{
    EffectServer, RoleSpawner, ScratchDir, dead_letters, diagnose, double_applied, file_requests,
    ignored_results, not_completed_once, wait_finished_runs,
};
use fulfil_integration_tests::{StackOptions, TestStack};
use serde_json::{Value, json};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_fulfil");
const RUNS: usize = 4;
const ITEMS: usize = 30;

fn promise(effects: &str) -> String {
    format!(
        r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: fan-crash, version: "1" }}
spec:
  api:
    type: object
    properties:
      items: {{ type: array, items: {{ type: integer }}, default: {items:?} }}
  workflow:
    steps:
      - id: each
        uses: http
        for_each: "${{{{ params.items }}}}"
        max_parallel: 4
        with:
          method: POST
          url: "{effects}/slow"
          body: {{ run: "${{{{ request.id }}}}", step: "item-${{{{ item }}}}", index: "${{{{ index }}}}" }}
          expect_status: 200
      - id: after
        needs: [each]
        uses: noop
"#,
        items = (0..ITEMS).collect::<Vec<_>>()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_engine_neither_loses_nor_doubles_the_instances_of_a_for_each_step()
-> anyhow::Result<()> {
    let effects = EffectServer::start(Duration::from_millis(300)).await?;
    let stack = TestStack::start_with(StackOptions {
        in_process_engines: false,
        ..StackOptions::default()
    })
    .await?;
    stack.apply(&promise(&effects.url)).await?;
    let mut logs = ScratchDir::new("for-each-crash")?;
    let roles = RoleSpawner::new(BIN, &stack, logs.path());
    let mut engine = roles.spawn("engine-1", "engine", &[])?;

    let filed = file_requests(&stack, "fan-crash", "fc", RUNS, RUNS, Duration::ZERO).await?;
    // Killed once a quarter of the instances have called the service:
    // every run is mid fan-out, with instances done, in flight and pending.
    let deadline = Instant::now() + Duration::from_secs(60);
    while effects.calls() < RUNS * ITEMS / 4 {
        engine.ensure_running()?;
        ensure!(
            Instant::now() < deadline,
            "only {} instances called the service in 60s",
            effects.calls()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let calls_at_kill = effects.calls();
    engine.sigkill().await?;
    let restarted = Instant::now();
    let mut engine = roles.spawn("engine-2", "engine", &[])?;

    // Results the killed engine held come back after its consumer's ack
    // wait (30 s).
    let statuses = wait_finished_runs(&stack.pool, RUNS as i64, Duration::from_secs(120)).await?;
    let finished_after = restarted.elapsed();
    let succeeded = statuses.get("succeeded").copied().unwrap_or(0);
    if succeeded != RUNS as i64 {
        anyhow::bail!(
            "{succeeded} of {RUNS} runs succeeded: {statuses:?}\n{}\n--- engine-2 log ---\n{}",
            diagnose(&stack.pool).await,
            engine.log_tail(40)
        );
    }
    engine.ensure_running()?;

    // Each run recorded its list once and has exactly its 30 instances.
    let expanded: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT run_id, count(*) FROM fulfil.history WHERE type = 'for_each.expanded'
         GROUP BY 1",
    )
    .fetch_all(&stack.pool)
    .await?;
    ensure!(
        expanded.len() == RUNS && expanded.iter().all(|(_, n)| *n == 1),
        "for_each.expanded per run: {expanded:?}"
    );
    let instances: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "SELECT run_id, count(*), count(DISTINCT instance_index) FROM fulfil.steps
         WHERE instance_of = 'each' GROUP BY 1",
    )
    .fetch_all(&stack.pool)
    .await?;
    ensure!(
        instances.len() == RUNS
            && instances
                .iter()
                .all(|(_, n, distinct)| *n == ITEMS as i64 && *distinct == ITEMS as i64),
        "instance rows per run (run, rows, distinct indexes): {instances:?}"
    );
    // Every result applied once: one step.succeeded per step row.
    let doubles = double_applied(&stack.pool).await?;
    ensure!(doubles.is_empty(), "results applied twice: {doubles:?}");
    let odd = not_completed_once(&stack.pool).await?;
    ensure!(
        odd.is_empty(),
        "steps without exactly one step.succeeded: {odd:?}"
    );
    ensure!(dead_letters(&stack).await? == 0, "dead letters");

    // Every instance called the service at least once (none lost), at most
    // twice (once more for a task redelivered across the crash).
    let counts = effects.counts();
    let mut histogram: BTreeMap<u32, usize> = BTreeMap::new();
    for f in &filed {
        for item in 0..ITEMS {
            let n = counts
                .get(&(f.request_id.to_string(), format!("item-{item}")))
                .copied()
                .unwrap_or(0);
            ensure!(
                (1..=2).contains(&n),
                "item {item} of request {} called the service {n} times",
                f.request_id
            );
            *histogram.entry(n).or_default() += 1;
        }
        let run = stack.run(f.run_id).await?;
        let outputs = run["steps"]
            .as_array()
            .and_then(|steps| steps.iter().find(|s| s["id"] == "each"))
            .map(|s| s["outputs"].clone())
            .unwrap_or(Value::Null);
        let indexes: Vec<Value> = outputs
            .as_array()
            .map(|o| o.iter().map(|out| out["body"]["ok"].clone()).collect())
            .unwrap_or_default();
        ensure!(
            indexes.len() == ITEMS && indexes.iter().all(|ok| *ok == json!(true)),
            "run {}'s outputs are not its {ITEMS} instances' results: {outputs}",
            f.run_id
        );
    }
    ensure!(
        counts.len() == RUNS * ITEMS,
        "{} (run, item) pairs called the service, expected {}",
        counts.len(),
        RUNS * ITEMS
    );

    eprintln!(
        "== for_each under an engine crash: {RUNS} runs x {ITEMS} instances (max_parallel 4), \
         killed after {calls_at_kill} calls; all succeeded {:.1}s after the restart; calls per \
         instance (calls -> instances): {histogram:?}; result.ignored: {}",
        finished_after.as_secs_f64(),
        ignored_results(&stack.pool).await?
    );
    engine.sigkill().await?;
    stack.stop().await?;
    logs.finish();
    Ok(())
}
