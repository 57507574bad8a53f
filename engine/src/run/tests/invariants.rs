//! Random schedules: many runs, each fed a random sequence of what can
//! happen next (a result of any open attempt, a start, any armed timer
//! firing, a stale report, an operator's cancel), checking after every
//! decision the rules that must hold whatever the order. Seeded, so a
//! failure names the seed that reproduces it.

use std::collections::BTreeMap;

use fulfil_core::Graph;

use super::*;

/// Schedules tried; each is a few dozen decisions.
const SCHEDULES: u64 = 400;

/// No schedule needs more: each attempt ends within a few decisions, and
/// retries are bounded by the policies.
const MAX_DECISIONS: usize = 300;

/// Operator retries per schedule, at most.
const MAX_RETRIES: usize = 2;

/// a -> (b, c) -> d, and c -> e, within an hour: retries and undos at
/// every level, a queue limit on b, heartbeats and an undo with its own
/// retries on c, and e, which may become ready after a cousin failed.
const MIXED: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: mixed, version: 1.0.0 }
spec:
  timeout: 1h
  workflow:
    steps:
      - id: a
        uses: h.a
        retry: { max_attempts: 2, initial: 1s }
        compensate: { uses: undo.a }
      - id: b
        uses: h.b
        needs: [a]
        schedule_to_start: 30s
        retry: { max_attempts: 3, initial: 1s, non_retryable: [fatal] }
        compensate: { uses: undo.b }
      - id: c
        uses: h.c
        needs: [a]
        heartbeat_timeout: 10s
        compensate: { uses: undo.c, retry: { max_attempts: 3, initial: 1s } }
      - id: d
        uses: h.d
        needs: [b, c]
        retry: { max_attempts: 2, initial: 1s }
      - id: e
        uses: h.e
        needs: [c]
"#;

/// xorshift64*: enough randomness for schedules, and no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

/// Something that can happen next to a run.
#[derive(Debug, Clone)]
enum Happening {
    Succeed(TaskId),
    Fail(TaskId, StepFailure),
    Start(TaskId),
    Heartbeat(TaskId),
    /// The armed timer at this index fires.
    Fire(usize),
    /// A report about an attempt that is no longer open.
    Stale(TaskId),
    Cancel {
        compensate: bool,
    },
}

fn choices(h: &Harness, rng: &mut Rng) -> Vec<Happening> {
    let mut open: Vec<&KnownAttempt> = h.attempts.values().filter(|a| a.is_open()).collect();
    open.sort_by_key(|a| a.task_id);
    let mut closed: Vec<&KnownAttempt> = h.attempts.values().filter(|a| !a.is_open()).collect();
    closed.sort_by_key(|a| a.task_id);
    let mut all = Vec::new();
    for a in open {
        // Mostly successes and retryable failures, so that schedules reach
        // the later steps and their undos.
        for _ in 0..3 {
            all.push(Happening::Succeed(a.task_id));
        }
        let failure = match rng.below(6) {
            0 => permanent("no"),
            1 => StepFailure {
                code: Some("fatal".to_string()),
                ..retryable("fatal")
            },
            _ => retryable("busy"),
        };
        all.push(Happening::Fail(a.task_id, failure));
        if a.status == AttemptStatus::Dispatched {
            all.push(Happening::Start(a.task_id));
        } else {
            all.push(Happening::Heartbeat(a.task_id));
        }
    }
    for (at, timer) in h.timers.iter().enumerate() {
        // The run's deadline is rare: most runs should get to finish.
        if timer.kind != TimerKind::RunTimeout || rng.below(15) == 0 {
            all.push(Happening::Fire(at));
        }
    }
    if let Some(a) = closed.first() {
        all.push(Happening::Stale(a.task_id));
    }
    if !h.run.status.is_terminal() && rng.below(20) == 0 {
        all.push(Happening::Cancel {
            compensate: rng.below(2) == 0,
        });
    }
    all
}

#[test]
fn random_schedules_keep_the_state_machine_rules() {
    for seed in 0..SCHEDULES {
        run_schedule(seed);
    }
}

fn run_schedule(seed: u64) {
    let mut rng = Rng::new(seed);
    let (mut h, _) = Harness::start(MIXED, json!({}));
    let graph = Graph::from_workflow(&h.run.promise.spec.workflow);
    let mut log: Vec<String> = Vec::new();
    let mut retries = 0;
    for _ in 0..MAX_DECISIONS {
        if h.run.status.is_terminal() {
            check_ending(seed, &h, &log);
            // Sometimes an operator retries a run that did not succeed.
            let done = h.run.status == RunStatus::Succeeded || retries == MAX_RETRIES;
            if done || rng.below(2) == 0 {
                break;
            }
            retries += 1;
            log.push("Retry".to_string());
            let attempts_before = latest_attempts(&h);
            let (plan, writes) = h
                .retry(None, false)
                .unwrap_or_else(|e| panic!("seed {seed}: retry refused: {e}\n{log:#?}"));
            assert!(
                plan.applied && !plan.rerun.is_empty(),
                "seed {seed}: {plan:?}"
            );
            assert_eq!(h.run.status, RunStatus::Running, "seed {seed}: retried");
            assert!(!h.run.cancel_requested && h.run.stop_reason.is_none());
            for kept in &plan.kept {
                assert!(
                    h.step(kept).status.satisfies_needs() && h.step(kept).compensation.is_none(),
                    "seed {seed}: kept {kept} though it did not stay done\n{log:#?}"
                );
            }
            check(seed, &h, &writes, &log);
            check_dispatches(seed, &h, &graph, &writes, &attempts_before, &log);
            continue;
        }
        let all = choices(&h, &mut rng);
        assert!(
            !all.is_empty(),
            "seed {seed}: run {:?} is stuck: nothing open, no timer armed\n{log:#?}",
            h.run.status
        );
        let happening = all[rng.below(all.len())].clone();
        log.push(format!("{happening:?}"));
        let failed_before = h.run.steps.values().any(|s| s.status == StepStatus::Failed);
        let stopping_before = h.run.cancel_requested || h.run.stop_reason.is_some();
        let attempts_before: BTreeMap<(String, TaskKind), i32> = latest_attempts(&h);
        let writes = match happening {
            Happening::Succeed(task) => h.report(task, Outcome::Ok { output: json!({}) }).1,
            Happening::Fail(task, failure) => h.report(task, Outcome::Error(failure)).1,
            Happening::Start(task) => h.started(task),
            Happening::Heartbeat(task) => {
                let (applied, writes) = h.progress(task, Progress::Heartbeat);
                assert_eq!(
                    applied,
                    Applied::Applied,
                    "seed {seed}: heartbeat\n{log:#?}"
                );
                writes
            }
            Happening::Fire(at) => {
                let timer = h.timers.remove(at);
                h.fire_timer(timer.kind.as_str(), &timer.step_id, timer.task_id)
            }
            Happening::Stale(task) => {
                let before = h.state();
                let (applied, writes) = h.report(task, Outcome::Ok { output: json!({}) });
                assert!(
                    matches!(applied, Applied::Ignored(_)),
                    "seed {seed}: a closed attempt's result applied\n{log:#?}"
                );
                assert_only_ignored(&writes);
                assert_eq!(
                    h.state(),
                    before,
                    "seed {seed}: a stale result changed the run"
                );
                writes
            }
            Happening::Cancel { compensate } => match h.cancel(compensate) {
                Ok(writes) => writes,
                Err(OperatorError::Conflict(_)) => {
                    assert!(
                        h.run.cancel_requested && compensate,
                        "seed {seed}: cancel refused\n{log:#?}"
                    );
                    assert!(h.run.writes.is_empty(), "a refused cancel buffers nothing");
                    continue;
                }
                Err(e) => panic!("seed {seed}: cancel failed: {e}"),
            },
        };
        check(seed, &h, &writes, &log);
        check_dispatches(seed, &h, &graph, &writes, &attempts_before, &log);
        // Once a step failed for good nothing new starts (steps already
        // in flight may still retry); once the run is stopping, no action
        // runs again at all.
        for task in tasks(&writes).iter().filter(|t| t.kind == TaskKind::Action) {
            let allowed = if stopping_before {
                false
            } else {
                !failed_before || task.attempt > 1
            };
            assert!(
                allowed,
                "seed {seed}: {} attempt {} started after a failure or a stop\n{log:#?}",
                task.step_id, task.attempt
            );
        }
    }
    assert!(
        h.run.status.is_terminal(),
        "seed {seed}: the run did not end within {MAX_DECISIONS} decisions\n{log:#?}"
    );
    check_ending(seed, &h, &log);

    // Whatever arrives after the end is ignored and changes nothing.
    let before = h.state();
    let mut task_ids: Vec<TaskId> = h.attempts.keys().copied().collect();
    task_ids.sort();
    for task in task_ids {
        let (applied, writes) = h.report(task, Outcome::Ok { output: json!({}) });
        assert!(
            matches!(applied, Applied::Ignored(_)),
            "seed {seed}: applied after the end"
        );
        assert_only_ignored(&writes);
    }
    assert_eq!(
        h.state(),
        before,
        "seed {seed}: a late report changed an ended run"
    );
}

/// The latest attempt number of each (step, kind).
fn latest_attempts(h: &Harness) -> BTreeMap<(String, TaskKind), i32> {
    let mut latest = BTreeMap::new();
    for a in h.attempts.values() {
        let entry = latest.entry((a.step_id.clone(), a.kind)).or_insert(0);
        *entry = (*entry).max(a.attempt);
    }
    latest
}

/// Rules that hold after every decision.
fn check(seed: u64, h: &Harness, writes: &Writes, log: &[String]) {
    // History numbering has no gaps.
    assert_eq!(
        h.run.next_seq - 1,
        h.history.len() as i64,
        "seed {seed}: history sequence"
    );
    // At most one open attempt per step and kind, and it is the current one.
    let mut open: BTreeMap<(&str, TaskKind), i32> = BTreeMap::new();
    for a in h.attempts.values().filter(|a| a.is_open()) {
        assert!(
            open.insert((&a.step_id, a.kind), a.attempt).is_none(),
            "seed {seed}: two open attempts of {} {}\n{log:#?}",
            a.step_id,
            a.kind
        );
        assert_eq!(
            h.step(&a.step_id).current_attempt(a.task_kind()),
            a.attempt,
            "seed {seed}: open attempt {} of {} is not current\n{log:#?}",
            a.attempt,
            a.step_id
        );
    }
    // An attempt's timers go with it: none outlives its attempt.
    for timer in &h.timers {
        if let Some(task_id) = timer.task_id {
            assert!(
                h.attempts.get(&task_id).is_some_and(KnownAttempt::is_open),
                "seed {seed}: a {} timer outlived its attempt\n{log:#?}",
                timer.kind
            );
        }
    }
    if h.run.status.is_terminal() {
        assert!(
            open.is_empty(),
            "seed {seed}: an ended run has open attempts {open:?}\n{log:#?}"
        );
        assert!(
            h.timers.is_empty(),
            "seed {seed}: an ended run has timers\n{log:#?}"
        );
        assert!(
            writes.ending.as_ref().is_some_and(|e| e.finished),
            "seed {seed}: the decision that ended the run stores its ending"
        );
    }
}

/// Rules about the attempts a decision dispatched.
fn check_dispatches(
    seed: u64,
    h: &Harness,
    graph: &Graph,
    writes: &Writes,
    before: &BTreeMap<(String, TaskKind), i32>,
    log: &[String],
) {
    for task in tasks(writes) {
        let key = (task.step_id.to_string(), task.kind);
        let previous = before.get(&key).copied().unwrap_or(0);
        assert_eq!(
            task.attempt as i32,
            previous + 1,
            "seed {seed}: attempts of {key:?} are numbered in order\n{log:#?}"
        );
        match task.kind {
            TaskKind::Action => {
                // Its needs are met.
                let step = h
                    .run
                    .promise
                    .step(task.step_id.as_str())
                    .expect("a known step");
                for need in &step.needs {
                    assert!(
                        h.step(need).status.satisfies_needs(),
                        "seed {seed}: {} started before {need}\n{log:#?}",
                        task.step_id
                    );
                }
            }
            TaskKind::Compensation => {
                // Everything downstream that needed undoing is undone.
                for dependent in graph.descendants(task.step_id.as_str()) {
                    let row = h.step(&dependent);
                    let declares = h
                        .run
                        .promise
                        .step(&dependent)
                        .is_some_and(|s| s.compensate.is_some());
                    let undone = row.compensation == Some(CompensationStatus::Succeeded);
                    let needed = declares
                        && (row.status == StepStatus::Succeeded || row.compensation.is_some());
                    assert!(
                        undone || !needed,
                        "seed {seed}: {} undone before its dependent {dependent}\n{log:#?}",
                        task.step_id
                    );
                }
            }
        }
    }
}

/// Rules about how the run ended.
fn check_ending(seed: u64, h: &Harness, log: &[String]) {
    let declares = |id: &str| {
        h.run
            .promise
            .step(id)
            .is_some_and(|s| s.compensate.is_some())
    };
    match h.run.status {
        RunStatus::Succeeded => {
            assert!(
                !h.run.cancel_requested,
                "seed {seed}: succeeded though cancelled\n{log:#?}"
            );
            for row in h.run.steps.values() {
                assert!(
                    row.status.satisfies_needs() && row.compensation.is_none(),
                    "seed {seed}: succeeded with {row:?}\n{log:#?}"
                );
            }
        }
        RunStatus::Compensated => {
            assert!(
                !h.run.cancel_requested,
                "seed {seed}: compensated though cancelled\n{log:#?}"
            );
            assert!(
                h.run.stop_reason.is_some()
                    || h.run.steps.values().any(|s| s.status == StepStatus::Failed),
                "seed {seed}: compensated though nothing failed"
            );
            // Nothing that succeeded and declares an undo was left done.
            for row in h.run.steps.values() {
                assert!(
                    !(row.status == StepStatus::Succeeded && declares(&row.step_id)),
                    "seed {seed}: compensated but {} is still done\n{log:#?}",
                    row.step_id
                );
            }
        }
        RunStatus::Cancelled => {
            assert!(h.run.cancel_requested, "seed {seed}: cancelled by no one");
        }
        RunStatus::Failed => {
            assert!(
                !h.run.cancel_requested
                    || h.run
                        .steps
                        .values()
                        .any(|s| s.compensation == Some(CompensationStatus::Failed)),
                "seed {seed}: a cancelled run failed, but no undo did\n{log:#?}"
            );
        }
        other => panic!("seed {seed}: ended {other:?}"),
    }
    let last = h.history.last().map(|e| e.kind);
    let expected = match h.run.status {
        RunStatus::Succeeded => event::RUN_SUCCEEDED,
        RunStatus::Compensated => event::RUN_COMPENSATED,
        RunStatus::Cancelled => event::RUN_CANCELLED,
        _ => event::RUN_FAILED,
    };
    assert_eq!(
        last,
        Some(expected),
        "seed {seed}: the last event names the ending"
    );
}
