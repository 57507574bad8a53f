//! `for_each` steps: instances bounded by `max_parallel`, outputs as a list,
//! failure, compensation per instance, retries and operator retry.

use super::*;

/// plan -> deploy (once per region, two at a time, each undone) -> report.
/// An instance, and an instance's undo, retries once, 1s later.
const FAN_OUT: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: fan-out, version: 1.0.0 }
spec:
  workflow:
    steps:
      - id: plan
        uses: h.plan
      - id: deploy
        needs: [plan]
        uses: h.deploy
        for_each: "${{ params.regions }}"
        max_parallel: 2
        with: { region: "${{ item }}", slot: "${{ index }}", after: "${{ steps.plan.outputs.v }}" }
        retry: { max_attempts: 2, initial: 1s }
        compensate:
          uses: h.undeploy
          with: { region: "${{ item }}", slot: "${{ index }}", id: "${{ steps.deploy.outputs.id }}" }
          retry: { max_attempts: 2, initial: 1s }
      - id: report
        needs: [deploy]
        uses: h.report
        with: { all: "${{ steps.deploy.outputs }}", regions: "${{ steps.deploy.inputs }}" }
  outputs:
    count: "${{ size(steps.deploy.outputs) }}"
"#;

fn regions(list: &[&str]) -> Value {
    json!({ "regions": list })
}

fn ok(id: &str) -> Value {
    json!({ "id": id })
}

#[test]
fn instances_run_at_most_max_parallel_at_once_and_their_outputs_are_a_list_in_index_order() {
    let (mut h, _) = Harness::start(FAN_OUT, regions(&["eu", "us", "ap", "sa", "af"]));
    let writes = h.succeed("plan", TaskKind::Action, json!({ "v": 7 }));
    // The list is recorded with the step, its five instances created, and
    // only two of them dispatched.
    assert_eq!(
        dispatched(&writes),
        vec![
            ("deploy[0]".into(), TaskKind::Action, 1),
            ("deploy[1]".into(), TaskKind::Action, 1),
        ]
    );
    let created: Vec<(String, i32, Value)> = writes
        .new_instances
        .iter()
        .map(|i| (i.step_id.clone(), i.index, i.item.clone()))
        .collect();
    assert_eq!(created.len(), 5);
    assert_eq!(created[4], ("deploy[4]".into(), 4, json!("af")));
    assert!(
        writes
            .new_instances
            .iter()
            .all(|i| i.instance_of == "deploy")
    );
    let expanded = event_of(&writes, event::FOR_EACH_EXPANDED);
    assert_eq!(expanded.step_id.as_deref(), Some("deploy"));
    assert_eq!(expanded.data["count"], 5);
    assert_eq!(expanded.data["max_parallel"], 2);
    assert_eq!(h.step("deploy").status, StepStatus::Running);
    assert_eq!(
        h.step("deploy").input,
        Some(json!(["eu", "us", "ap", "sa", "af"]))
    );
    let task = &tasks(&writes)[1];
    assert_eq!(task.input, json!({ "region": "us", "slot": 1, "after": 7 }));
    assert_eq!(task.idempotency_key, format!("{}/deploy[1]", h.run.run_id));
    let dispatch = writes
        .events
        .iter()
        .find(|e| e.kind == "step.dispatched" && e.step_id.as_deref() == Some("deploy[1]"))
        .expect("deploy[1] dispatched");
    assert_eq!(
        (
            dispatch.data["index"].clone(),
            dispatch.data["item"].clone()
        ),
        (json!(1), json!("us"))
    );

    // Each instance that ends makes room for the next, in index order.
    let writes = h.succeed("deploy[1]", TaskKind::Action, ok("b"));
    assert_eq!(
        dispatched(&writes),
        vec![("deploy[2]".into(), TaskKind::Action, 1)]
    );
    let writes = h.succeed("deploy[2]", TaskKind::Action, ok("c"));
    assert_eq!(
        dispatched(&writes),
        vec![("deploy[3]".into(), TaskKind::Action, 1)]
    );
    // A retryable failure keeps its slot: the retry timer, not a new instance.
    let writes = h.fail("deploy[0]", TaskKind::Action, retryable("flaky"));
    assert!(tasks(&writes).is_empty(), "{:?}", dispatched(&writes));
    assert_eq!(armed(&writes), vec![("retry", "deploy[0]")]);
    let writes = h.fire("retry", "deploy[0]");
    assert_eq!(
        dispatched(&writes),
        vec![("deploy[0]".into(), TaskKind::Action, 2)]
    );
    assert_eq!(tasks(&writes)[0].input["region"], "eu");
    let writes = h.succeed("deploy[3]", TaskKind::Action, ok("d"));
    assert_eq!(
        dispatched(&writes),
        vec![("deploy[4]".into(), TaskKind::Action, 1)]
    );
    h.succeed("deploy[4]", TaskKind::Action, ok("e"));
    assert_eq!(
        h.step("deploy").status,
        StepStatus::Running,
        "deploy[0] is in flight"
    );

    // The last instance finishes the step; its dependent reads the list.
    let writes = h.succeed("deploy[0]", TaskKind::Action, ok("a"));
    assert_eq!(h.step("deploy").status, StepStatus::Succeeded);
    assert_eq!(
        h.step("deploy").outputs,
        Some(json!([ok("a"), ok("b"), ok("c"), ok("d"), ok("e")]))
    );
    assert_eq!(
        dispatched(&writes),
        vec![("report".into(), TaskKind::Action, 1)]
    );
    assert_eq!(
        tasks(&writes)[0].input,
        json!({ "all": [ok("a"), ok("b"), ok("c"), ok("d"), ok("e")],
                "regions": ["eu", "us", "ap", "sa", "af"] })
    );
    let succeeded: Vec<Option<&str>> = writes
        .events
        .iter()
        .filter(|e| e.kind == "step.succeeded")
        .map(|e| e.step_id.as_deref())
        .collect();
    assert_eq!(succeeded, vec![Some("deploy[0]"), Some("deploy")]);
    let writes = h.succeed("report", TaskKind::Action, json!({}));
    assert_eq!(h.run.status, RunStatus::Succeeded);
    assert_eq!(
        writes.ending.and_then(|e| e.outputs),
        Some(json!({ "count": 5 }))
    );
}

#[test]
fn a_failed_instance_stops_new_ones_fails_the_step_and_each_succeeded_instance_is_undone() {
    let (mut h, _) = Harness::start(FAN_OUT, regions(&["eu", "us", "ap", "sa"]));
    h.succeed("plan", TaskKind::Action, json!({ "v": 1 }));
    h.succeed("deploy[0]", TaskKind::Action, ok("a"));
    // deploy[1] fails for good while deploy[2] is in flight: nothing new
    // starts, and the step waits for deploy[2].
    let writes = h.fail("deploy[1]", TaskKind::Action, permanent("quota"));
    assert!(tasks(&writes).is_empty(), "{:?}", dispatched(&writes));
    assert_eq!(h.step("deploy").status, StepStatus::Running);
    assert_eq!(h.step("deploy[3]").status, StepStatus::Pending);
    assert_eq!(h.run.status, RunStatus::Running);

    // deploy[2] succeeds: the step fails naming the instance, deploy[3]
    // never starts, and the succeeded instances are undone, each with its
    // own item and outputs, two at a time.
    let writes = h.succeed("deploy[2]", TaskKind::Action, ok("c"));
    assert_eq!(h.step("deploy").status, StepStatus::Failed);
    assert_eq!(
        h.step("deploy").error.as_deref(),
        Some("instance deploy[1] (item \"us\") failed: quota")
    );
    assert_eq!(h.step("deploy[3]").status, StepStatus::Cancelled);
    assert_eq!(h.step("report").status, StepStatus::Cancelled);
    assert_eq!(h.run.status, RunStatus::Compensating);
    assert_eq!(
        dispatched(&writes),
        vec![
            ("deploy[0]".into(), TaskKind::Compensation, 1),
            ("deploy[2]".into(), TaskKind::Compensation, 1),
        ]
    );
    let undo: Vec<Value> = tasks(&writes).into_iter().map(|t| t.input).collect();
    assert_eq!(
        undo,
        vec![
            json!({ "region": "eu", "slot": 0, "id": "a" }),
            json!({ "region": "ap", "slot": 2, "id": "c" }),
        ]
    );
    assert_eq!(
        event_of(&writes, event::RUN_COMPENSATING).data["undo"],
        json!(["deploy"])
    );
    // An undo that fails retries under the compensation's policy, with the
    // same instance's input.
    let writes = h.fail("deploy[2]", TaskKind::Compensation, retryable("busy"));
    assert_eq!(armed(&writes), vec![("compensation_retry", "deploy[2]")]);
    let writes = h.fire("compensation_retry", "deploy[2]");
    assert_eq!(
        dispatched(&writes),
        vec![("deploy[2]".into(), TaskKind::Compensation, 2)]
    );
    assert_eq!(
        tasks(&writes)[0].input,
        json!({ "region": "ap", "slot": 2, "id": "c" })
    );
    h.succeed("deploy[2]", TaskKind::Compensation, json!({}));
    assert_eq!(
        h.run.status,
        RunStatus::Compensating,
        "deploy[0]'s undo is in flight"
    );
    let writes = h.succeed("deploy[0]", TaskKind::Compensation, json!({}));
    assert_eq!(h.run.status, RunStatus::Compensated);
    assert_eq!(
        h.step("deploy").compensation,
        Some(CompensationStatus::Succeeded)
    );
    assert_eq!(h.step("deploy[0]").status, StepStatus::Compensated);
    assert_eq!(
        h.step("deploy[1]").compensation,
        None,
        "a failed instance is not undone"
    );
    assert_eq!(
        writes.ending.and_then(|e| e.error),
        Some(
            "step deploy failed: instance deploy[1] (item \"us\") failed: quota; compensated deploy"
                .into()
        )
    );
}

#[test]
fn an_empty_list_succeeds_at_once_and_a_non_list_fails_the_step_for_good() {
    let (mut h, _) = Harness::start(FAN_OUT, regions(&[]));
    let writes = h.succeed("plan", TaskKind::Action, json!({ "v": 1 }));
    assert_eq!(h.step("deploy").status, StepStatus::Succeeded);
    assert_eq!(h.step("deploy").outputs, Some(json!([])));
    assert!(writes.new_instances.is_empty());
    assert_eq!(
        dispatched(&writes),
        vec![("report".into(), TaskKind::Action, 1)]
    );
    assert_eq!(tasks(&writes)[0].input, json!({ "all": [], "regions": [] }));

    let (mut h, _) = Harness::start(FAN_OUT, json!({ "regions": "eu-west" }));
    let writes = h.succeed("plan", TaskKind::Action, json!({ "v": 1 }));
    assert_eq!(h.step("deploy").status, StepStatus::Failed);
    let failed = event_of(&writes, "step.failed");
    assert_eq!(failed.data["code"], "for_each_not_list");
    let message = failed.data["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("step deploy") && message.contains("a string \"eu-west\""),
        "{message}"
    );
    assert!(armed(&writes).is_empty(), "never retried");
    assert_eq!(h.run.status, RunStatus::Failed);
}

#[test]
fn a_retried_run_reruns_the_instances_that_did_not_succeed_over_the_recorded_list() {
    let (mut h, _) = Harness::start(FAN_OUT, regions(&["eu", "us", "ap"]));
    h.succeed("plan", TaskKind::Action, json!({ "v": 1 }));
    h.succeed("deploy[0]", TaskKind::Action, ok("a"));
    h.fail("deploy[1]", TaskKind::Action, permanent("quota"));
    // Cancel without compensation: deploy[2] is abandoned.
    h.cancel(false).expect("the run is cancelled");
    assert_eq!(h.run.status, RunStatus::Cancelled);
    assert_eq!(h.step("deploy[2]").status, StepStatus::Cancelled);

    // Downstream of a re-run step, the step re-runs whole.
    let (plan, _) = h.retry(Some("plan"), true).expect("a dry run");
    assert_eq!(
        plan.rerun,
        vec![
            "plan",
            "deploy",
            "deploy[0]",
            "deploy[1]",
            "deploy[2]",
            "report"
        ]
    );
    let (plan, writes) = h.retry(None, false).expect("the run is retried");
    assert_eq!(
        plan.rerun,
        vec!["deploy", "deploy[1]", "deploy[2]", "report"]
    );
    assert_eq!(plan.kept, vec!["plan", "deploy[0]"]);
    assert!(
        writes.new_instances.is_empty(),
        "the instances are the same rows"
    );
    assert!(
        writes
            .events
            .iter()
            .all(|e| e.kind != event::FOR_EACH_EXPANDED
                || e.data["items"] == json!(["eu", "us", "ap"])),
        "the recorded list is kept"
    );
    assert_eq!(
        dispatched(&writes),
        vec![
            ("deploy[1]".into(), TaskKind::Action, 2),
            ("deploy[2]".into(), TaskKind::Action, 2),
        ]
    );
    assert_eq!(h.step("deploy[0]").outputs, Some(ok("a")), "kept");
    h.succeed("deploy[1]", TaskKind::Action, ok("b"));
    h.succeed("deploy[2]", TaskKind::Action, ok("c"));
    assert_eq!(
        h.step("deploy").outputs,
        Some(json!([ok("a"), ok("b"), ok("c")]))
    );
    h.succeed("report", TaskKind::Action, json!({}));
    assert_eq!(h.run.status, RunStatus::Succeeded);
}
