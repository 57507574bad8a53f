//! Crash tests: the roles under test run as real `fulfil serve` child
//! processes that are SIGKILLed mid-load (or lose their NATS server, or their
//! Postgres sessions), and nothing acknowledged is lost or applied twice.
//!
//! Side effects are counted by a local HTTP server that the Promises' `http`
//! steps call with `{run: request id, step}`. Everything is on loopback; the
//! machine's shared Postgres and NATS are never stopped (the NATS-restart
//! test runs a private `nats-server`, and the Postgres test terminates only
//! the sessions of its own database). Run with `--nocapture` to see the
//! figures each test prints.
//!
//! The tests take a shared lock so they run one after another: they are
//! timing-sensitive and the figures they print mean more on a quiet machine.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use fulfil_integration_tests::processes::{
    EffectServer, Filed, NatsServer, RoleProcess, RoleSpawner, ScratchDir, dead_letters, diagnose,
    double_applied, engine_ack_pending, file_requests, finished, http_chain_promise,
    ignored_results, not_completed_once, run_statuses, wait_finished_runs,
};
use fulfil_integration_tests::{StackOptions, TestStack, database_url};
use sqlx::Connection;

const BIN: &str = env!("CARGO_BIN_EXE_fulfil");
const THREE_STEPS: [&str; 3] = ["provision", "configure", "alert"];

/// One crash test at a time (see the module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fails, with what the unfinished runs wait for and the children's logs,
/// unless every filed run finished `succeeded`.
async fn assert_all_succeeded(
    stack: &TestStack,
    filed: &[Filed],
    statuses: &BTreeMap<String, i64>,
    children: &[&RoleProcess],
) -> anyhow::Result<()> {
    let succeeded = statuses.get("succeeded").copied().unwrap_or(0);
    if succeeded == filed.len() as i64 && finished(statuses) == succeeded {
        return Ok(());
    }
    let dead = match dead_letters(stack).await {
        Ok(n) => n.to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    let mut message = format!(
        "{succeeded} of {} runs succeeded; statuses {statuses:?}; dead letters: {dead}\n{}",
        filed.len(),
        diagnose(&stack.pool).await
    );
    for child in children {
        message.push_str(&format!(
            "--- {} log (tail) ---\n{}\n",
            child.name,
            child.log_tail(40)
        ));
    }
    anyhow::bail!(message)
}

/// Fails unless every step's result was applied exactly once.
async fn assert_applied_once(stack: &TestStack, steps: usize) -> anyhow::Result<i64> {
    let doubles = double_applied(&stack.pool).await?;
    ensure!(
        doubles.is_empty(),
        "results applied more than once (run, step, attempt, count): {doubles:?}"
    );
    let odd = not_completed_once(&stack.pool).await?;
    ensure!(
        odd.is_empty(),
        "steps without exactly one step.succeeded (run, step, count): {odd:?}"
    );
    let completions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM fulfil.history WHERE type = 'step.succeeded'")
            .fetch_one(&stack.pool)
            .await?;
    ensure!(
        completions == steps as i64,
        "{completions} step completions, expected {steps}"
    );
    // Every message was valid: a dead letter here is a result for a task
    // the database does not know (dispatched by a transaction that did not
    // commit).
    let dead = dead_letters(stack).await?;
    ensure!(dead == 0, "{dead} messages were dead-lettered");
    Ok(completions)
}

/// Side-effect calls per step of the filed runs, as a histogram
/// `calls -> steps`; fails if a step made none or more than `max`.
fn side_effects(
    effects: &EffectServer,
    filed: &[Filed],
    steps: &[&str],
    max: u32,
) -> anyhow::Result<BTreeMap<u32, usize>> {
    let counts = effects.counts();
    let mut histogram = BTreeMap::new();
    for f in filed {
        for step in steps {
            let n = counts
                .get(&(f.request_id.to_string(), (*step).to_string()))
                .copied()
                .unwrap_or(0);
            ensure!(
                (1..=max).contains(&n),
                "step {step} of request {} called the service {n} times (expected 1..={max})",
                f.request_id
            );
            *histogram.entry(n).or_insert(0) += 1;
        }
    }
    let expected = filed.len() * steps.len();
    ensure!(
        counts.len() == expected,
        "calls for {} (run, step) pairs, expected {expected}",
        counts.len()
    );
    Ok(histogram)
}

/// Steps called more than once, from a histogram of [`side_effects`].
fn duplicated(histogram: &BTreeMap<u32, usize>) -> usize {
    histogram
        .iter()
        .filter(|(calls, _)| **calls > 1)
        .map(|(_, steps)| steps)
        .sum()
}

/// Waits, at most `timeout`, until more than `baseline` runs are finished;
/// returns how long that took, or `None`.
async fn until_finished_exceeds(
    stack: &TestStack,
    baseline: i64,
    timeout: Duration,
) -> anyhow::Result<Option<Duration>> {
    let since = Instant::now();
    while since.elapsed() < timeout {
        if finished(&run_statuses(&stack.pool).await?) > baseline {
            return Ok(Some(since.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(None)
}

/// Waits, at most `timeout`, until at least `count` runs are finished,
/// checking that `child` stays up meanwhile.
async fn until_finished_reaches(
    stack: &TestStack,
    count: i64,
    timeout: Duration,
    child: &mut RoleProcess,
) -> anyhow::Result<i64> {
    let since = Instant::now();
    loop {
        let done = finished(&run_statuses(&stack.pool).await?);
        if done >= count {
            return Ok(done);
        }
        child.ensure_running()?;
        ensure!(
            since.elapsed() < timeout,
            "only {done} runs finished after {timeout:?} (waiting for {count})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// (a) A worker process holding 20 in-flight steps is SIGKILLed; a second
/// worker picks them up after the consumer's ack wait (3 s). Every run
/// succeeds, and each step called its service once or twice (once plus once
/// for the crash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_s_in_flight_steps_finish_on_another_worker() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let effects = EffectServer::start(Duration::from_secs(2)).await?;
    let stack = TestStack::start_with(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await?;
    stack
        .apply(&http_chain_promise(
            "slow-one",
            &effects.url,
            "slow",
            &["call"],
        ))
        .await?;
    let mut logs = ScratchDir::new("crash-worker")?;
    let roles = RoleSpawner::new(BIN, &stack, logs.path());
    let worker_args = ["--worker-concurrency", "32", "--worker-ack-wait", "3s"];
    let mut first = roles.spawn("worker-1", "worker", &worker_args)?;

    let filed = file_requests(&stack, "slow-one", "a", 20, 20, Duration::ZERO).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while effects.calls() < 20 {
        first.ensure_running()?;
        ensure!(
            Instant::now() < deadline,
            "worker-1 took only {} of 20 steps in 30s",
            effects.calls()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let answered_before_kill = effects.answered();
    let first_pid = first.pid().unwrap_or(0);
    first.sigkill().await?;
    let killed = Instant::now();
    let mut second = roles.spawn("worker-2", "worker", &worker_args)?;
    let second_pid = second.pid().unwrap_or(0);

    let statuses = wait_finished_runs(&stack.pool, 20, Duration::from_secs(60)).await?;
    let all_done_after = killed.elapsed();
    assert_all_succeeded(&stack, &filed, &statuses, &[&first, &second]).await?;
    second.ensure_running()?;
    assert_applied_once(&stack, 20).await?;
    let histogram = side_effects(&effects, &filed, &["call"], 2)?;
    let attempts: Vec<(i32, i64)> =
        sqlx::query_as("SELECT attempt, count(*) FROM fulfil.attempts GROUP BY 1 ORDER BY 1")
            .fetch_all(&stack.pool)
            .await?;
    let workers: Vec<(String, i64)> = sqlx::query_as(
        "SELECT coalesce(worker, '?'), count(*) FROM fulfil.attempts GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&stack.pool)
    .await?;
    let ignored = ignored_results(&stack.pool).await?;

    eprintln!("== (a) worker crash with 20 steps in flight (slow service: 2s, ack wait: 3s)");
    eprintln!(
        "   runs: 20 filed, {} succeeded, {} lost",
        statuses.get("succeeded").copied().unwrap_or(0),
        20 - finished(&statuses)
    );
    eprintln!(
        "   calls answered before the SIGKILL: {answered_before_kill}; side effects per step (calls -> steps): {histogram:?}"
    );
    eprintln!(
        "   all runs finished {:.1}s after the kill; attempts per attempt number: {attempts:?}; workers recorded on the attempts (worker-1 pid {first_pid}, worker-2 pid {second_pid}): {workers:?}; result.ignored events: {ignored}",
        all_done_after.as_secs_f64()
    );

    second.sigkill().await?;
    stack.stop().await?;
    logs.finish();
    Ok(())
}

/// What one engine crash of test (b) measured.
#[derive(Debug)]
struct EngineCrash {
    /// Runs finished when the engine was killed (after it was gone).
    finished_at_kill: i64,
    /// Results the killed engine had pulled and not acknowledged: they come
    /// back only after the engine consumer's ack wait (30 s).
    held: usize,
    /// From spawning the new engine process until the first run finished
    /// after it: the time to recover (process start, migrations check, NATS
    /// consumer, then the first result batch applied).
    recovery: Duration,
}

/// (b) 300 runs of a three-step `http` Promise, the API and worker in this
/// process and the engine a child process, SIGKILLed three times during the
/// load (when a quarter, half and three quarters of the runs have finished)
/// and restarted at once. No run is lost and every result is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_three_times_loses_no_run_and_applies_each_result_once() -> anyhow::Result<()>
{
    const RUNS: usize = 300;
    const CRASHES: usize = 3;
    let _serial = SERIAL.lock().await;
    let effects = EffectServer::start(Duration::from_secs(1)).await?;
    let stack = TestStack::start_with(StackOptions {
        in_process_engines: false,
        ..StackOptions::default()
    })
    .await?;
    stack
        .apply(&http_chain_promise(
            "three-http",
            &effects.url,
            "effect",
            &THREE_STEPS,
        ))
        .await?;
    let mut logs = ScratchDir::new("crash-engine")?;
    let roles = RoleSpawner::new(BIN, &stack, logs.path());
    let engine = roles.spawn("engine-1", "engine", &[])?;
    let started = Instant::now();

    // Requests are filed over ~6 s while the engine is killed and restarted.
    let filing = file_requests(
        &stack,
        "three-http",
        "b",
        RUNS,
        16,
        Duration::from_millis(20),
    );
    let crashing = async {
        let mut engine = engine;
        let mut crashes = Vec::new();
        let mut last_restart = Instant::now();
        for k in 1..=CRASHES {
            let threshold = (RUNS * k / (CRASHES + 1)) as i64;
            until_finished_reaches(&stack, threshold, Duration::from_secs(60), &mut engine).await?;
            engine.sigkill().await?;
            // The engine is gone: nothing more commits until the restart.
            let finished_at_kill = finished(&run_statuses(&stack.pool).await?);
            let held = engine_ack_pending(&stack).await?;
            last_restart = Instant::now();
            engine = roles.spawn(&format!("engine-{}", k + 1), "engine", &[])?;
            let recovery =
                until_finished_exceeds(&stack, finished_at_kill, Duration::from_secs(60))
                    .await?
                    .with_context(|| {
                        format!(
                            "no run finished within 60s of restarting the engine (crash {k});\n{}",
                            engine.log_tail(40)
                        )
                    })?;
            crashes.push(EngineCrash {
                finished_at_kill,
                held,
                recovery,
            });
        }
        anyhow::Ok((engine, crashes, last_restart))
    };
    let (filed, crashed) = tokio::join!(filing, crashing);
    let filed = filed?;
    let (mut engine, crashes, last_restart) = crashed?;
    // Runs not finished 5 s after the last restart wait for results a killed
    // engine held.
    tokio::time::sleep_until((last_restart + Duration::from_secs(5)).into()).await;
    let unfinished_after_5s = RUNS as i64 - finished(&run_statuses(&stack.pool).await?);

    let statuses = wait_finished_runs(&stack.pool, RUNS as i64, Duration::from_secs(90)).await?;
    let elapsed = started.elapsed();
    let tail = last_restart.elapsed();
    assert_all_succeeded(&stack, &filed, &statuses, &[&engine]).await?;
    engine.ensure_running()?;
    let completions = assert_applied_once(&stack, RUNS * THREE_STEPS.len()).await?;
    // A step's side effect repeats only when a crash interrupted it; at most
    // once per crash.
    let histogram = side_effects(&effects, &filed, &THREE_STEPS, 1 + CRASHES as u32)?;
    let ignored = ignored_results(&stack.pool).await?;
    let attempts_over_1: i64 =
        sqlx::query_scalar("SELECT count(*) FROM fulfil.attempts WHERE attempt > 1")
            .fetch_one(&stack.pool)
            .await?;

    eprintln!(
        "== (b) engine SIGKILLed {CRASHES} times during {RUNS} runs of 3 http steps (API and worker in the test process)"
    );
    eprintln!(
        "   runs: {} started (202), {} finished, {} succeeded, {} lost; {completions} step completions, none applied twice",
        filed.len(),
        finished(&statuses),
        statuses.get("succeeded").copied().unwrap_or(0),
        RUNS as i64 - finished(&statuses),
    );
    for (i, crash) in crashes.iter().enumerate() {
        eprintln!(
            "   crash {}: killed with {} runs finished and {} results pulled but unacked; first run finished {} ms after the restart (spawn of the new process)",
            i + 1,
            crash.finished_at_kill,
            crash.held,
            crash.recovery.as_millis()
        );
    }
    eprintln!(
        "   side effects per step (calls -> steps): {histogram:?}; duplicated: {}; retried attempts: {attempts_over_1}; result.ignored events: {ignored}",
        duplicated(&histogram)
    );
    eprintln!(
        "   all runs finished {:.1}s after the start, {:.1}s after the last restart; {unfinished_after_5s} runs were still unfinished 5s after it (results a killed engine had pulled come back after the engine consumer's ack wait (10 s))",
        elapsed.as_secs_f64(),
        tail.as_secs_f64()
    );

    engine.sigkill().await?;
    stack.stop().await?;
    logs.finish();
    Ok(())
}

/// (c) The NATS server (a private one) is SIGKILLed during a load of 100
/// runs and restarted on the same port and store a second later; the engine
/// and the worker are child processes. Every run succeeds, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_killed_and_restarted_loses_no_run() -> anyhow::Result<()> {
    const RUNS: usize = 100;
    let _serial = SERIAL.lock().await;
    let mut scratch = ScratchDir::new("crash-nats")?;
    let mut nats = NatsServer::start(scratch.path()).await?;
    let effects = EffectServer::start(Duration::from_secs(1)).await?;
    let stack = TestStack::start_with(StackOptions {
        in_process_engines: false,
        worker: false,
        nats_url: Some(nats.url()),
        ..StackOptions::default()
    })
    .await?;
    stack
        .apply(&http_chain_promise(
            "three-http",
            &effects.url,
            "effect",
            &THREE_STEPS,
        ))
        .await?;
    let roles = RoleSpawner::new(BIN, &stack, scratch.path());
    let mut engine = roles.spawn("engine", "engine", &[])?;
    let mut worker = roles.spawn("worker", "worker", &["--worker-ack-wait", "5s"])?;
    let started = Instant::now();

    let filing = file_requests(
        &stack,
        "three-http",
        "c",
        RUNS,
        8,
        Duration::from_millis(30),
    );
    let outage = async {
        until_finished_reaches(
            &stack,
            RUNS as i64 / 4,
            Duration::from_secs(60),
            &mut engine,
        )
        .await?;
        nats.kill().await?;
        let killed = Instant::now();
        let finished_at_kill = finished(&run_statuses(&stack.pool).await?);
        tokio::time::sleep(Duration::from_secs(1)).await;
        nats.restart().await?;
        let down_for = killed.elapsed();
        let finished_at_restart = finished(&run_statuses(&stack.pool).await?);
        let recovery = until_finished_exceeds(&stack, finished_at_restart, Duration::from_secs(60))
            .await?
            .context("no run finished within 60s of restarting NATS")?;
        anyhow::Ok((finished_at_kill, finished_at_restart, down_for, recovery))
    };
    let (filed, outage) = tokio::join!(filing, outage);
    let filed = filed?;
    let (finished_at_kill, finished_at_restart, down_for, recovery) = outage?;

    let statuses = wait_finished_runs(&stack.pool, RUNS as i64, Duration::from_secs(60)).await?;
    let elapsed = started.elapsed();
    assert_all_succeeded(&stack, &filed, &statuses, &[&engine, &worker]).await?;
    engine.ensure_running()?;
    worker.ensure_running()?;
    let completions = assert_applied_once(&stack, RUNS * THREE_STEPS.len()).await?;
    // Tasks can run twice (a result not yet stored when the server died);
    // twice at most for one outage.
    let histogram = side_effects(&effects, &filed, &THREE_STEPS, 2)?;
    let ignored = ignored_results(&stack.pool).await?;
    let post_retries: u32 = filed.iter().map(|f| f.tries - 1).sum();

    eprintln!("== (c) private nats-server SIGKILLed during {RUNS} runs, restarted after 1s");
    eprintln!(
        "   runs: {} started, {} finished, {} succeeded, {} lost; {completions} step completions, none applied twice; {post_retries} request POSTs retried",
        filed.len(),
        finished(&statuses),
        statuses.get("succeeded").copied().unwrap_or(0),
        RUNS as i64 - finished(&statuses),
    );
    eprintln!(
        "   killed with {finished_at_kill} runs finished ({finished_at_restart} at the restart, {:.1}s later); first run finished {} ms after the restart",
        down_for.as_secs_f64(),
        recovery.as_millis()
    );
    eprintln!(
        "   side effects per step (calls -> steps): {histogram:?}; duplicated: {}; result.ignored events: {ignored}; all runs finished {:.1}s after the start",
        duplicated(&histogram),
        elapsed.as_secs_f64()
    );

    engine.sigkill().await?;
    worker.sigkill().await?;
    stack.stop().await?;
    nats.kill().await?;
    scratch.finish();
    Ok(())
}

/// (d) During a load of 100 runs, every session of the test's database (the
/// API's, the engine's, the worker's) is terminated four times from a
/// separate connection. Every run succeeds and every result is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sessions_terminated_lose_no_run_and_apply_each_result_once() -> anyhow::Result<()>
{
    const RUNS: usize = 100;
    const TERMINATIONS: usize = 4;
    let _serial = SERIAL.lock().await;
    let effects = EffectServer::start(Duration::from_secs(1)).await?;
    let stack = TestStack::start_with(StackOptions {
        in_process_engines: false,
        worker: false,
        ..StackOptions::default()
    })
    .await?;
    stack
        .apply(&http_chain_promise(
            "three-http",
            &effects.url,
            "effect",
            &THREE_STEPS,
        ))
        .await?;
    let mut logs = ScratchDir::new("crash-postgres")?;
    let roles = RoleSpawner::new(BIN, &stack, logs.path());
    let mut engine = roles.spawn("engine", "engine", &[])?;
    let mut worker = roles.spawn("worker", "worker", &["--worker-ack-wait", "5s"])?;
    // The terminating session is on the server's `postgres` database, so it
    // is never among the sessions it terminates.
    let mut admin = sqlx::PgConnection::connect(&database_url()).await?;
    let started = Instant::now();

    let filing = file_requests(
        &stack,
        "three-http",
        "d",
        RUNS,
        8,
        Duration::from_millis(30),
    );
    let terminating = async {
        let mut terminated = Vec::new();
        for _ in 0..TERMINATIONS {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let killed: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&stack.database)
            .fetch_all(&mut admin)
            .await?;
            let at = finished(&run_statuses(&stack.pool).await?);
            terminated.push((killed.iter().filter(|k| **k).count(), at));
        }
        anyhow::Ok(terminated)
    };
    let (filed, terminated) = tokio::join!(filing, terminating);
    let filed = filed?;
    let terminated = terminated?;

    let statuses = wait_finished_runs(&stack.pool, RUNS as i64, Duration::from_secs(60)).await?;
    let elapsed = started.elapsed();
    assert_all_succeeded(&stack, &filed, &statuses, &[&engine, &worker]).await?;
    engine.ensure_running()?;
    worker.ensure_running()?;
    let completions = assert_applied_once(&stack, RUNS * THREE_STEPS.len()).await?;
    let histogram = side_effects(&effects, &filed, &THREE_STEPS, 2)?;
    let ignored = ignored_results(&stack.pool).await?;
    let post_retries: u32 = filed.iter().map(|f| f.tries - 1).sum();

    eprintln!(
        "== (d) the test database's Postgres sessions terminated {TERMINATIONS} times during {RUNS} runs"
    );
    eprintln!(
        "   sessions terminated each time (sessions, runs finished just after): {terminated:?}"
    );
    eprintln!(
        "   runs: {} started, {} finished, {} succeeded, {} lost; {completions} step completions, none applied twice; {post_retries} request POSTs retried",
        filed.len(),
        finished(&statuses),
        statuses.get("succeeded").copied().unwrap_or(0),
        RUNS as i64 - finished(&statuses),
    );
    eprintln!(
        "   side effects per step (calls -> steps): {histogram:?}; duplicated: {}; result.ignored events: {ignored}; all runs finished {:.1}s after the start",
        duplicated(&histogram),
        elapsed.as_secs_f64()
    );

    engine.sigkill().await?;
    worker.sigkill().await?;
    admin.close().await?;
    stack.stop().await?;
    logs.finish();
    Ok(())
}
