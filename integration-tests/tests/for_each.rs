//! `for_each` steps on the real Postgres and NATS: a fan-out of 50 items
//! bounded by `max_parallel`, its outputs read by a dependent as a list in
//! index order, each instance visible with its item and index, an instance
//! failing and every succeeded instance undone, an empty list and a list
//! that is not one.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fulfil_integration_tests::{StackOptions, TestStack};
use fulfil_worker::{Handler, StepError, TaskContext};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// What the test handlers saw.
#[derive(Default)]
struct Seen {
    /// `test.deploy` calls running now, and the most at once.
    in_flight: AtomicUsize,
    most: AtomicUsize,
    /// (index, region) of every `test.deploy` call that succeeded.
    deployed: Mutex<Vec<(u64, String)>>,
    /// (index, region, id) of every `test.undeploy` call.
    undeployed: Mutex<Vec<(u64, String, String)>>,
}

/// Holds its slot for a while, so instances overlap, and fails for good
/// when told to.
struct Deploy(Arc<Seen>);

#[async_trait]
impl Handler for Deploy {
    async fn handle(&self, _: &TaskContext, input: Value) -> Result<Value, StepError> {
        let now = self.0.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        let region = input["region"].as_str().unwrap_or_default().to_string();
        let index = input["index"].as_u64().unwrap_or(u64::MAX);
        if input["fail"] == true {
            return Err(
                StepError::permanent(format!("no capacity in {region}")).with_code("no_capacity")
            );
        }
        self.0
            .deployed
            .lock()
            .map_err(|_| StepError::permanent("poisoned"))?
            .push((index, region.clone()));
        Ok(json!({ "id": format!("dep-{region}"), "index": index }))
    }
}

struct Undeploy(Arc<Seen>);

#[async_trait]
impl Handler for Undeploy {
    async fn handle(&self, _: &TaskContext, input: Value) -> Result<Value, StepError> {
        self.0
            .undeployed
            .lock()
            .map_err(|_| StepError::permanent("poisoned"))?
            .push((
                input["index"].as_u64().unwrap_or(u64::MAX),
                input["region"].as_str().unwrap_or_default().to_string(),
                input["id"].as_str().unwrap_or_default().to_string(),
            ));
        Ok(json!({}))
    }
}

const FAN_OUT: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: fan-out, version: 1.0.0 }
spec:
  api:
    type: object
    properties:
      regions: { type: array, items: { type: string } }
      bad: { type: string, default: "" }
      parallel: { type: integer }
  workflow:
    steps:
      - id: deploy
        uses: test.deploy
        for_each: "${{ params.regions }}"
        max_parallel: 5
        with: { region: "${{ item }}", index: "${{ index }}", fail: "${{ item == params.bad }}" }
        compensate:
          uses: test.undeploy
          with: { region: "${{ item }}", index: "${{ index }}", id: "${{ steps.deploy.outputs.id }}" }
      - id: summary
        needs: [deploy]
        uses: echo
        with: { deployments: "${{ steps.deploy.outputs }}", count: "${{ size(steps.deploy.outputs) }}" }
  outputs:
    deployments: "${{ steps.summary.outputs.deployments }}"
    count: "${{ steps.summary.outputs.count }}"
"#;

const NOT_A_LIST: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: not-a-list, version: 1.0.0 }
spec:
  api: { type: object, properties: { target: { type: string } } }
  workflow:
    steps:
      - id: deploy
        uses: test.deploy
        for_each: "${{ params.target }}"
        with: { region: "${{ item }}" }
"#;

async fn stack(seen: Arc<Seen>) -> anyhow::Result<TestStack> {
    TestStack::start_with(StackOptions {
        handlers: Box::new(move |h| {
            h.register("test.deploy", Deploy(seen.clone()))
                .register("test.undeploy", Undeploy(seen.clone()));
        }),
        worker_concurrency: 32,
        ..StackOptions::default()
    })
    .await
}

fn regions(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("r{i:02}")).collect()
}

fn steps_of<'a>(run: &'a Value, of: &str) -> Vec<&'a Value> {
    run["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["instance_of"] == of)
        .collect()
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"] == id))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn fifty_items_run_at_most_five_at_once_and_a_dependent_reads_their_outputs_in_order()
-> anyhow::Result<()> {
    let seen = Arc::new(Seen::default());
    let stack = stack(seen.clone()).await?;
    stack.apply(FAN_OUT).await?;
    let regions = regions(50);
    let run_id = stack
        .request("fan-out", json!({ "regions": regions }))
        .await?;
    let run = stack.wait_finished(run_id, WAIT).await?;
    assert_eq!(run["status"], "succeeded", "{run:#}");

    // Never more than five at once, and five were reached.
    let most = seen.most.load(Ordering::SeqCst);
    assert_eq!(most, 5, "most instances in flight at once");
    assert_eq!(seen.deployed.lock().map(|d| d.len()).unwrap_or(0), 50);

    // The dependent read the instances' outputs as a list in index order.
    let expected: Vec<Value> = regions
        .iter()
        .enumerate()
        .map(|(i, r)| json!({ "id": format!("dep-{r}"), "index": i }))
        .collect();
    assert_eq!(
        run["outputs"]["deployments"],
        Value::Array(expected.clone())
    );
    assert_eq!(run["outputs"]["count"], 50);
    assert_eq!(step(&run, "deploy")["outputs"], Value::Array(expected));

    // GET /v1/runs/{id}: each instance with its step, index and item, in
    // index order after its step, and the step's counts.
    let ids: Vec<&str> = run["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids.first(), Some(&"deploy"));
    assert_eq!(ids.get(1), Some(&"deploy[0]"));
    assert_eq!(ids.get(50), Some(&"deploy[49]"));
    assert_eq!(ids.last(), Some(&"summary"));
    let instances = steps_of(&run, "deploy");
    assert_eq!(instances.len(), 50);
    for (i, instance) in instances.iter().enumerate() {
        assert_eq!(instance["id"], format!("deploy[{i}]"));
        assert_eq!(instance["index"], i);
        assert_eq!(instance["item"], regions[i]);
        assert_eq!(instance["status"], "succeeded");
        assert_eq!(instance["attempts"][0]["input"]["region"], regions[i]);
    }
    assert_eq!(
        step(&run, "deploy")["instances"],
        json!({ "total": 50, "succeeded": 50, "failed": 0, "running": 0, "pending": 0,
                "cancelled": 0, "compensated": 0 })
    );
    assert!(
        step(&run, "summary").get("instance_of").is_none(),
        "only instances say so"
    );

    // History: the list, expanded once, and each instance's dispatch with
    // its item and index.
    let history = stack.history(run_id).await?;
    let expanded: Vec<&Value> = history
        .iter()
        .filter(|e| e["type"] == "for_each.expanded")
        .collect();
    assert_eq!(expanded.len(), 1);
    assert_eq!(expanded[0]["step"], "deploy");
    assert_eq!(expanded[0]["data"]["count"], 50);
    assert_eq!(expanded[0]["data"]["max_parallel"], 5);
    let dispatch = history
        .iter()
        .find(|e| e["type"] == "step.dispatched" && e["step"] == "deploy[7]")
        .ok_or_else(|| anyhow::anyhow!("no dispatch of deploy[7]"))?;
    assert_eq!(dispatch["data"]["item"], "r07");
    assert_eq!(dispatch["data"]["index"], 7);
    stack.stop().await
}

#[tokio::test]
async fn a_failed_instance_fails_the_run_and_each_succeeded_instance_is_compensated()
-> anyhow::Result<()> {
    let seen = Arc::new(Seen::default());
    let stack = stack(seen.clone()).await?;
    stack.apply(FAN_OUT).await?;
    let run_id = stack
        .request("fan-out", json!({ "regions": regions(12), "bad": "r06" }))
        .await?;
    let run = stack.wait_finished(run_id, WAIT).await?;
    assert_eq!(run["status"], "compensated", "{run:#}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(
            "step deploy failed: instance deploy[6] (item \"r06\") failed: no capacity in r06"
        ),
        "{error}"
    );
    assert!(seen.most.load(Ordering::SeqCst) <= 5);

    // Every instance that succeeded was undone once, with its own item,
    // index and outputs; nothing else was.
    let deployed: BTreeSet<(u64, String)> = seen
        .deployed
        .lock()
        .map(|d| d.iter().cloned().collect())
        .unwrap_or_default();
    let undeployed = seen
        .undeployed
        .lock()
        .map(|u| u.clone())
        .unwrap_or_default();
    assert!(!deployed.is_empty(), "instances before r06 succeeded");
    assert_eq!(
        undeployed.len(),
        deployed.len(),
        "one compensation per succeeded instance"
    );
    let undone: BTreeSet<(u64, String)> = undeployed
        .iter()
        .map(|(index, region, id)| {
            assert_eq!(id, &format!("dep-{region}"), "its own outputs");
            (*index, region.clone())
        })
        .collect();
    assert_eq!(undone, deployed);
    assert!(
        !undone.iter().any(|(i, _)| *i == 6),
        "the failed instance is not undone"
    );

    // The run view agrees: compensated instances, the failed one, and
    // those that never started.
    let instances = steps_of(&run, "deploy");
    let with_status = |status: &str| -> BTreeSet<u64> {
        instances
            .iter()
            .filter(|s| s["status"] == status)
            .filter_map(|s| s["index"].as_u64())
            .collect()
    };
    assert_eq!(
        with_status("compensated"),
        deployed.iter().map(|(i, _)| *i).collect()
    );
    assert_eq!(with_status("failed"), BTreeSet::from([6]));
    let never = with_status("cancelled");
    assert_eq!(
        deployed.len() + 1 + never.len(),
        12,
        "every instance is accounted for"
    );
    assert!(
        never.iter().all(|i| *i > 6),
        "later instances never started"
    );
    assert_eq!(step(&run, "summary")["status"], "cancelled");
    let compensations = stack
        .history(run_id)
        .await?
        .into_iter()
        .filter(|e| e["type"] == "compensation.succeeded")
        .filter_map(|e| e["step"].as_str().map(str::to_string))
        .collect::<Vec<_>>();
    assert_eq!(compensations.last().map(String::as_str), Some("deploy"));
    assert_eq!(compensations.len(), deployed.len() + 1);
    stack.stop().await
}

#[tokio::test]
async fn an_empty_list_succeeds_at_once_and_a_value_that_is_not_a_list_fails_clearly()
-> anyhow::Result<()> {
    let seen = Arc::new(Seen::default());
    let stack = stack(seen.clone()).await?;
    stack.apply(FAN_OUT).await?;
    stack.apply(NOT_A_LIST).await?;

    let empty = stack.request("fan-out", json!({ "regions": [] })).await?;
    let run = stack.wait_finished(empty, WAIT).await?;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["outputs"], json!({ "deployments": [], "count": 0 }));
    assert!(steps_of(&run, "deploy").is_empty(), "no instance");

    let scalar = stack
        .request("not-a-list", json!({ "target": "eu-west" }))
        .await?;
    let run = stack.wait_finished(scalar, WAIT).await?;
    assert_eq!(run["status"], "failed", "{run:#}");
    let error = step(&run, "deploy")["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("for_each of step deploy evaluated to a string \"eu-west\", not a list"),
        "{error}"
    );
    let failed = stack
        .history(scalar)
        .await?
        .into_iter()
        .find(|e| e["type"] == "step.failed")
        .ok_or_else(|| anyhow::anyhow!("no step.failed"))?;
    assert_eq!(failed["data"]["code"], "for_each_not_list");
    assert!(seen.deployed.lock().map(|d| d.is_empty()).unwrap_or(false));

    // A Promise that reads item outside a for_each step is refused at apply.
    let (status, body) = stack
        .put_promise(&NOT_A_LIST.replace("for_each: \"${{ params.target }}\"", "if: \"item == 1\""))
        .await?;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string().contains("spec.workflow.steps[0].if"),
        "{body}"
    );
    stack.stop().await
}
