//! DAG runs end to end on the real Postgres and NATS: chains, joins,
//! fan-out/fan-in, data flow, conditions and the http handler.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulfil_integration_tests::{StackOptions, TestStack, finish_order};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn types(history: &[Value]) -> Vec<String> {
    history
        .iter()
        .map(|e| match e["step"].as_str() {
            Some(step) => format!("{} {step}", e["type"].as_str().unwrap_or("?")),
            None => e["type"].as_str().unwrap_or("?").to_string(),
        })
        .collect()
}

#[tokio::test]
async fn linear_chain_flows_outputs_into_next_step_and_run_outputs() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack
        .apply(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: chain, version: "1" }
spec:
  api:
    type: object
    required: [name]
    properties:
      name: { type: string }
      size: { type: string, default: small }
  workflow:
    steps:
      - id: provision
        uses: echo
        with: { endpoint: "${{ params.name }}.db:5432", size: "${{ params.size }}" }
      - id: configure
        needs: [provision]
        uses: echo
        with: { url: "postgres://${{ steps.provision.outputs.endpoint }}/${{ params.name }}", request: "${{ request.id }}" }
      - id: alert
        needs: [configure]
        uses: noop
  outputs:
    url: "${{ steps.configure.outputs.url }}"
    size: "${{ steps.provision.outputs.size }}"
"#,
        )
        .await?;
    let run_id = stack.request("chain", json!({ "name": "orders" })).await?;
    let run = stack.wait_finished(run_id, WAIT).await?;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        run["outputs"],
        json!({ "url": "postgres://orders.db:5432/orders", "size": "small" })
    );
    assert_eq!(finish_order(&run), vec!["provision", "configure", "alert"]);
    let configure = &run["steps"][1];
    assert_eq!(
        configure["attempts"][0]["input"]["request"],
        run["request_id"]
    );
    assert_eq!(configure["attempts"][0]["worker"], "test-worker");

    let history = stack.history(run_id).await?;
    assert_eq!(
        types(&history),
        vec![
            "request.accepted",
            "run.started",
            "step.dispatched provision",
            "step.succeeded provision",
            "step.dispatched configure",
            "step.succeeded configure",
            "step.dispatched alert",
            "step.succeeded alert",
            "run.succeeded",
        ]
    );
    let seqs: Vec<i64> = history.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(
        seqs,
        (1..=9).collect::<Vec<_>>(),
        "history is gap-free and ordered"
    );

    let (status, request) = stack
        .get(&format!(
            "/v1/requests/{}",
            run["request_id"].as_str().unwrap_or_default()
        ))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(request["status"], "succeeded");
    assert_eq!(
        request["params"],
        json!({ "name": "orders", "size": "small" }),
        "defaults applied"
    );
    assert_eq!(request["outputs"], run["outputs"]);
    stack.stop().await
}

#[tokio::test]
async fn diamond_joins_after_both_branches() -> anyhow::Result<()> {
    let stack = TestStack::start_with(StackOptions {
        vars: fulfil_core::Vars::from_file_text("greeting: hello from the operator")?,
        ..StackOptions::default()
    })
    .await?;
    stack
        .apply(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: diamond, version: "1" }
spec:
  workflow:
    steps:
      - { id: a, uses: echo, with: { v: 1, greeting: "${{ vars.greeting }}" } }
      - { id: b, uses: echo, needs: [a], with: { v: "${{ steps.a.outputs.v + 1 }}" } }
      - { id: c, uses: echo, needs: [a], with: { v: "${{ steps.a.outputs.v + 10 }}" } }
      - { id: d, uses: echo, needs: [b, c], with: { sum: "${{ steps.b.outputs.v + steps.c.outputs.v }}" } }
  outputs:
    sum: "${{ steps.d.outputs.sum }}"
"#,
        )
        .await?;
    let run_id = stack.request("diamond", json!({})).await?;
    let run = stack.wait_finished(run_id, WAIT).await?;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["outputs"]["sum"], 13);
    // vars: what the operator exposed, captured when the request was accepted.
    assert_eq!(
        run["steps"][0]["outputs"]["greeting"],
        "hello from the operator"
    );
    let history = types(&stack.history(run_id).await?);
    let pos = |t: &str| history.iter().position(|h| h == t).unwrap_or(usize::MAX);
    assert!(
        pos("step.dispatched d") > pos("step.succeeded b"),
        "{history:?}"
    );
    assert!(
        pos("step.dispatched d") > pos("step.succeeded c"),
        "{history:?}"
    );
    assert!(
        pos("step.dispatched b") > pos("step.succeeded a"),
        "{history:?}"
    );
    assert_eq!(
        history
            .iter()
            .filter(|h| h.starts_with("step.dispatched"))
            .count(),
        4
    );
    stack.stop().await
}

#[tokio::test]
async fn fan_out_of_twenty_then_fan_in() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let mut yaml = String::from(
        "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: { name: fan, version: \"1\" }\nspec:\n  workflow:\n    steps:\n      - { id: start, uses: echo, with: { n: 0 } }\n",
    );
    let branches: Vec<String> = (1..=20).map(|i| format!("b{i:02}")).collect();
    for (i, id) in branches.iter().enumerate() {
        yaml.push_str(&format!(
            "      - {{ id: {id}, uses: echo, needs: [start], with: {{ n: {} }} }}\n",
            i + 1
        ));
    }
    let sum = branches
        .iter()
        .map(|id| format!("steps.{id}.outputs.n"))
        .collect::<Vec<_>>()
        .join(" + ");
    yaml.push_str(&format!(
        "      - {{ id: join, uses: echo, needs: [{}], with: {{ total: \"${{{{ {sum} }}}}\" }} }}\n  outputs:\n    total: \"${{{{ steps.join.outputs.total }}}}\"\n",
        branches.join(", ")
    ));
    stack.apply(&yaml).await?;
    let run_id = stack.request("fan", json!({})).await?;
    let run = stack.wait_finished(run_id, WAIT).await?;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["outputs"]["total"], (1..=20).sum::<i64>());
    let order = finish_order(&run);
    assert_eq!(order.len(), 22);
    assert_eq!(order.first().map(String::as_str), Some("start"));
    assert_eq!(order.last().map(String::as_str), Some("join"));
    let history = types(&stack.history(run_id).await?);
    let join_dispatch = history
        .iter()
        .position(|h| h == "step.dispatched join")
        .unwrap_or(0);
    let last_branch = history
        .iter()
        .rposition(|h| h.starts_with("step.succeeded b"))
        .unwrap_or(usize::MAX);
    assert!(
        join_dispatch > last_branch,
        "join dispatched before every branch finished"
    );
    stack.stop().await
}

#[tokio::test]
async fn false_condition_skips_step_and_dependents_still_run() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack
        .apply(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: cond, version: "1" }
spec:
  api: { type: object, properties: { size: { type: string, default: small } } }
  workflow:
    steps:
      - { id: provision, uses: echo, with: { ok: true } }
      - id: alert
        needs: [provision]
        if: "params.size == 'large'"
        uses: echo
        with: { sent: true }
      - id: report
        needs: [alert]
        uses: echo
        with: { alert_status: "${{ steps.alert.status }}", alert_outputs: "${{ steps.alert.outputs }}" }
  outputs:
    alert: "${{ steps.report.outputs.alert_status }}"
"#,
        )
        .await?;
    let small = stack.request("cond", json!({})).await?;
    let large = stack.request("cond", json!({ "size": "large" })).await?;
    let small = stack.wait_finished(small, WAIT).await?;
    let large = stack.wait_finished(large, WAIT).await?;
    assert_eq!(small["status"], "succeeded");
    assert_eq!(small["steps"][1]["status"], "skipped");
    assert_eq!(
        small["steps"][1]["attempts"],
        json!([]),
        "a skipped step dispatches nothing"
    );
    assert_eq!(
        small["steps"][2]["outputs"],
        json!({ "alert_status": "skipped", "alert_outputs": {} })
    );
    assert_eq!(small["outputs"]["alert"], "skipped");
    assert_eq!(large["steps"][1]["status"], "succeeded");
    assert_eq!(large["outputs"]["alert"], "succeeded");
    let history = types(
        &stack
            .history(small["id"].as_str().unwrap_or_default().parse()?)
            .await?,
    );
    assert!(
        history.contains(&"step.skipped alert".to_string()),
        "{history:?}"
    );
    stack.stop().await
}

#[tokio::test]
async fn http_step_calls_a_local_server_and_failures_fail_the_run() -> anyhow::Result<()> {
    use axum::routing::post;
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let recorded = seen.clone();
    let app = axum::Router::new()
        .route(
            "/databases",
            post(move |axum::Json(body): axum::Json<Value>| {
                let recorded = recorded.clone();
                async move {
                    let name = body["name"].as_str().unwrap_or("").to_string();
                    if let Ok(mut seen) = recorded.lock() {
                        seen.push(body);
                    }
                    (
                        axum::http::StatusCode::CREATED,
                        axum::Json(json!({ "endpoint": format!("{name}.db:5432") })),
                    )
                }
            }),
        )
        .route(
            "/broken",
            post(|| async { (axum::http::StatusCode::BAD_REQUEST, "no such plan") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let provider = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let stack = TestStack::start().await?;
    stack
        .apply(&format!(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: http-db, version: "1" }}
spec:
  api: {{ type: object, required: [name, path], properties: {{ name: {{ type: string }}, path: {{ type: string }} }} }}
  workflow:
    steps:
      - id: provision
        uses: http
        with:
          method: POST
          url: "{provider}${{{{ params.path }}}}"
          body: {{ name: "${{{{ params.name }}}}" }}
          expect_status: 201
      - id: configure
        needs: [provision]
        uses: echo
        with: {{ endpoint: "${{{{ steps.provision.outputs.body.endpoint }}}}" }}
  outputs:
    endpoint: "${{{{ steps.configure.outputs.endpoint }}}}"
    status: "${{{{ steps.provision.outputs.status }}}}"
"#
        ))
        .await?;
    let ok = stack
        .request("http-db", json!({ "name": "orders", "path": "/databases" }))
        .await?;
    let ok = stack.wait_finished(ok, WAIT).await?;
    assert_eq!(ok["status"], "succeeded", "{ok:#}");
    assert_eq!(
        ok["outputs"],
        json!({ "endpoint": "orders.db:5432", "status": 201 })
    );
    assert_eq!(
        seen.lock().map(|s| s.clone()).unwrap_or_default(),
        vec![json!({ "name": "orders" })]
    );

    let broken = stack
        .request("http-db", json!({ "name": "x", "path": "/broken" }))
        .await?;
    let broken = stack.wait_finished(broken, WAIT).await?;
    assert_eq!(broken["status"], "failed");
    assert_eq!(broken["steps"][0]["status"], "failed");
    assert_eq!(
        broken["steps"][0]["attempts"].as_array().map(Vec::len),
        Some(1),
        "4xx is not retried"
    );
    assert_eq!(
        broken["steps"][0]["attempts"][0]["error"]["code"],
        "http_status_400"
    );
    assert_eq!(broken["steps"][1]["status"], "cancelled");
    assert!(
        broken["error"].as_str().unwrap_or("").contains("provision"),
        "{broken:#}"
    );
    server.abort();
    stack.stop().await
}
