//! Dispatching: which steps start, with which attempt, deadline and timers.

use super::*;

#[test]
fn start_dispatches_roots_with_attempt_deadline_and_queue_timer() {
    let before = Utc::now();
    let (h, writes) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    let after = Utc::now();

    assert_eq!(h.run.status, RunStatus::Running);
    assert!(writes.created.is_some(), "a new run is inserted");
    assert_eq!(
        events(&writes),
        vec![
            (event::REQUEST_ACCEPTED, None, None),
            (event::RUN_STARTED, None, None),
            ("step.dispatched", Some("reserve"), Some(1)),
        ]
    );
    // Only the root starts; its input is rendered from the params.
    let sent = tasks(&writes);
    assert_eq!(sent.len(), 1);
    let task = &sent[0];
    assert_eq!(
        (task.step_id.as_str(), task.attempt, task.kind),
        ("reserve", 1, TaskKind::Action)
    );
    assert_eq!(task.handler, "inventory.reserve");
    assert_eq!(task.input, json!({ "sku": "A-1" }));
    assert_eq!(task.idempotency_key, format!("{}/reserve", h.run.run_id));
    assert_eq!(task.timeout_ms, Some(30_000));
    assert_eq!(writes.outbox[0].subject, "test.tasks.stock");
    // The deadline allows the queue wait plus the attempt's timeout.
    assert_after(task.deadline, before, after, ChronoDuration::seconds(90));
    assert_eq!(armed(&writes), vec![("schedule_to_start", "reserve")]);
    assert_eq!(writes.new_timers[0].task_id, Some(task.task_id));
    assert_after(
        writes.new_timers[0].fire_at,
        before,
        after,
        ChronoDuration::seconds(60),
    );
    assert_eq!(h.step("reserve").status, StepStatus::Ready);
    assert_eq!(h.step("reserve").attempt, 1);
    assert_eq!(h.step("charge").status, StepStatus::Pending);
    assert_eq!(h.step("ship").status, StepStatus::Pending);
}

/// The example Promise that `fulfil dev` and the README use.
const POSTGRES_DATABASE: &str = include_str!("../../../../workflows/postgres-database.yaml");

#[test]
fn example_promise_runs_its_chain_skips_a_false_condition_and_succeeds() {
    let params = json!({ "name": "orders", "size": "small", "team": "payments",
                          "environment": "development" });
    let (mut h, writes) = Harness::start(POSTGRES_DATABASE, params);
    let sent = tasks(&writes);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].step_id, "provision");
    assert_eq!(sent[0].handler, "exec");
    // The secret stays a reference; the task says where the worker puts it.
    let admin = json!({ "PGURL": "${{ secrets.postgres_admin_url }}" });
    assert_eq!(
        sent[0].input,
        json!({ "command": "postgres-database.sh", "args": ["create", "orders", "orders_owner"],
                "env": admin })
    );
    assert_eq!(sent[0].secrets.len(), 1);
    assert_eq!(sent[0].secrets[0].pointer, "/env/PGURL");
    assert_eq!(writes.outbox[0].subject, "test.tasks.default");
    assert_eq!(sent[0].timeout_ms, Some(120_000), "the step's own timeout");

    let created = json!({ "database": "orders", "owner_role": "orders_owner", "created": true,
                          "endpoint": "127.0.0.1:5432/orders" });
    let writes = h.succeed("provision", TaskKind::Action, created);
    let sent = tasks(&writes);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].step_id, "configure");
    assert_eq!(sent[0].timeout_ms, Some(300_000), "the Promise's default");
    assert_eq!(
        sent[0].input,
        json!({ "command": "postgres-database.sh",
                "args": ["configure", "orders", 20, "small database of payments (development)"],
                "env": admin })
    );

    // alert's condition is false for a small database: skipped, and the
    // run succeeds with its outputs rendered.
    let writes = h.succeed(
        "configure",
        TaskKind::Action,
        json!({ "database": "orders" }),
    );
    assert_eq!(
        events(&writes),
        vec![
            ("step.succeeded", Some("configure"), Some(1)),
            (event::STEP_SKIPPED, Some("alert"), None),
            (event::RUN_SUCCEEDED, None, None),
        ]
    );
    assert!(tasks(&writes).is_empty());
    assert_eq!(h.step("alert").status, StepStatus::Skipped);
    assert_eq!(h.run.status, RunStatus::Succeeded);
    let outputs = json!({ "endpoint": "127.0.0.1:5432/orders", "owner_role": "orders_owner" });
    let ending = writes.ending.as_ref().expect("the run ends");
    assert!(ending.finished && ending.error.is_none());
    assert_eq!(ending.outputs, Some(outputs.clone()));
    let request = writes
        .request
        .as_ref()
        .expect("the request follows its run");
    assert_eq!(
        (request.status, request.outputs.clone()),
        (RequestStatus::Succeeded, Some(outputs))
    );
    assert_eq!(run_events(&writes), vec!["test.events.run.succeeded"]);
    assert!(writes.cleared_run_timers);
}

#[test]
fn a_step_moves_only_along_its_legal_transitions() {
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    let before = h.state();

    // `ship` waits for its needs: it cannot have succeeded or be undone.
    for next in [StepStatus::Succeeded, StepStatus::Compensated] {
        match h.run.set_step_status("ship", next) {
            Err(RunError::IllegalStepTransition { step, from, to }) => {
                assert_eq!(
                    (step.as_str(), from, to),
                    ("ship", StepStatus::Pending, next)
                );
            }
            other => panic!(
                "pending -> {next} was not refused: {:?}",
                other.map(|r| r.status)
            ),
        }
    }
    assert!(matches!(
        h.run.set_step_status("nope", StepStatus::Ready),
        Err(RunError::Corrupt(_))
    ));
    assert_eq!(h.state(), before, "a refused change changes nothing");
    assert!(h.run.writes.is_empty(), "and marks nothing for writing");

    // A legal one moves the step and marks it for writing.
    h.run
        .set_step_status("ship", StepStatus::Cancelled)
        .expect("pending -> cancelled is legal");
    assert_eq!(h.step("ship").status, StepStatus::Cancelled);
    assert!(h.run.writes.steps.contains("ship"));
}

/// Expressions are compiled once, when the Promise is parsed: running it —
/// conditions, step inputs, outputs, compensation inputs — parses none.
#[test]
fn running_a_promise_parses_no_expression() {
    use fulfil_core::expr::parses_on_this_thread;

    let parses_of = |yaml: &str| {
        let before = parses_on_this_thread();
        Promise::parse(yaml).expect("a valid Promise");
        parses_on_this_thread() - before
    };

    // A large database: the condition is true and every step runs.
    let parse = parses_of(POSTGRES_DATABASE);
    assert!(parse > 0);
    let before = parses_on_this_thread();
    let params = json!({ "name": "orders", "size": "large", "team": "payments",
                          "environment": "production" });
    let (mut h, mut writes) = Harness::start(POSTGRES_DATABASE, params);
    for step in ["provision", "configure", "alert"] {
        let sent = tasks(&writes);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].step_id, step, "the condition held");
        let output = json!({ "endpoint": "127.0.0.1:5432/orders", "owner_role": "orders_owner" });
        writes = h.succeed(step, TaskKind::Action, output);
    }
    assert_eq!(h.run.status, RunStatus::Succeeded);
    assert!(writes.ending.as_ref().is_some_and(|e| e.outputs.is_some()));
    assert_eq!(
        parses_on_this_thread() - before,
        parse,
        "only parsing parsed"
    );

    // A saga that fails: its compensation's input is rendered too.
    let parse = parses_of(SAGA);
    let before = parses_on_this_thread();
    let (mut h, _) = Harness::start(SAGA, json!({ "sku": "A-1" }));
    h.succeed("reserve", TaskKind::Action, json!({ "reservation": "r-1" }));
    let writes = h.fail("charge", TaskKind::Action, permanent("declined"));
    let undo = tasks(&writes);
    assert_eq!(undo.len(), 1);
    assert_eq!(undo[0].kind, TaskKind::Compensation);
    assert_eq!(undo[0].input, json!({ "reservation": "r-1" }));
    assert_eq!(
        parses_on_this_thread() - before,
        parse,
        "only parsing parsed"
    );
}
