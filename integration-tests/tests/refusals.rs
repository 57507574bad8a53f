//! Bad input is refused with a problem+json naming what is wrong, and
//! nothing is stored; idempotency keys return the first request.

use fulfil_integration_tests::TestStack;
use serde_json::json;

const PROMISE: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: db, version: "1" }
spec:
  api:
    type: object
    required: [name]
    additionalProperties: false
    properties:
      name: { type: string, pattern: "^[a-z][a-z0-9-]{2,30}$" }
      size: { type: string, enum: [small, large], default: small }
  workflow:
    steps:
      - { id: provision, uses: noop }
"#;

#[tokio::test]
async fn cyclic_promise_is_refused_naming_the_cycle_and_nothing_is_stored() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let (status, body) = stack
        .put_promise(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: cyclic, version: "1" }
spec:
  workflow:
    steps:
      - { id: provision, uses: noop, needs: [alert] }
      - { id: configure, uses: noop, needs: [provision] }
      - { id: alert, uses: noop, needs: [configure] }
      - { id: extra, uses: noop, timeout: forever }
"#,
        )
        .await?;
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(body["type"], "https://fulfil.dev/problems/invalid-promise");
    let errors = body["errors"].as_array().cloned().unwrap_or_default();
    let cycle = errors
        .iter()
        .find(|e| e["code"] == "cycle")
        .and_then(|e| e["message"].as_str())
        .unwrap_or_default();
    for step in ["provision", "configure", "alert"] {
        assert!(
            cycle.contains(step),
            "cycle message {cycle:?} misses {step}"
        );
    }
    assert!(
        errors
            .iter()
            .any(|e| e["code"] == "invalid_duration"
                && e["path"] == "spec.workflow.steps[3].timeout"),
        "every problem in one answer: {errors:?}"
    );
    assert_eq!(stack.count("promises").await?, 0);
    assert_eq!(stack.count("promise_heads").await?, 0);
    let (status, _) = stack.get("/v1/promises/cyclic").await?;
    assert_eq!(status, 404);

    // The URL and the document must agree on the name.
    let mismatch = stack
        .http
        .put(format!("{}/v1/promises/other", stack.api))
        .body(PROMISE)
        .send()
        .await?;
    assert_eq!(mismatch.status().as_u16(), 422);
    assert_eq!(stack.count("promises").await?, 0);
    stack.stop().await
}

#[tokio::test]
async fn invalid_params_are_refused_with_every_violation_and_nothing_is_stored()
-> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack.apply(PROMISE).await?;
    let (status, headers, body) = stack
        .post_request(
            "db",
            json!({ "params": { "name": "X", "size": "huge", "extra": 1 } }),
            None,
        )
        .await?;
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let pointers: Vec<&str> = body["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["pointer"].as_str())
        .collect();
    assert_eq!(
        pointers,
        vec!["/params", "/params/name", "/params/size"],
        "{body:#}"
    );

    let (status, _, body) = stack
        .post_request("db", json!({ "params": {} }), None)
        .await?;
    assert_eq!(status, 422);
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("name"),
        "{body:#}"
    );

    let (status, _, _) = stack
        .post_request("nope", json!({ "params": { "name": "abc" } }), None)
        .await?;
    assert_eq!(status, 404);
    let malformed = stack
        .http
        .post(format!("{}/v1/promises/db/requests", stack.api))
        .header("content-type", "application/json")
        .body("{\"params\": ")
        .send()
        .await?;
    assert_eq!(malformed.status().as_u16(), 400);
    let (status, _, _) = stack
        .post_request("db", json!({ "params": [1, 2] }), None)
        .await?;
    assert_eq!(status, 422);

    for table in ["requests", "runs", "steps", "attempts", "history", "outbox"] {
        assert_eq!(stack.count(table).await?, 0, "{table} must stay empty");
    }
    stack.stop().await
}

#[tokio::test]
async fn idempotency_key_returns_the_first_request_and_conflicts_on_other_params()
-> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack.apply(PROMISE).await?;
    let (first_status, _, first) = stack
        .post_request(
            "db",
            json!({ "params": { "name": "orders" } }),
            Some("deploy-42"),
        )
        .await?;
    assert_eq!(first_status, 202, "{first:#}");
    assert_eq!(first["replayed"], false);

    // Same key, same parameters (defaults make {size: small} the same request).
    let (status, headers, again) = stack
        .post_request(
            "db",
            json!({ "params": { "name": "orders", "size": "small" }, "idempotency_key": "deploy-42" }),
            None,
        )
        .await?;
    assert_eq!(status, 202);
    assert_eq!(again["request_id"], first["request_id"]);
    assert_eq!(again["run_id"], first["run_id"]);
    assert_eq!(again["replayed"], true);
    assert_eq!(
        headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );

    let (status, _, conflict) = stack
        .post_request(
            "db",
            json!({ "params": { "name": "payments" } }),
            Some("deploy-42"),
        )
        .await?;
    assert_eq!(status, 409, "{conflict:#}");
    assert_eq!(conflict["request_id"], first["request_id"]);

    // Header and body disagreeing is a client bug, not a new request.
    let (status, _, _) = stack
        .post_request(
            "db",
            json!({ "params": { "name": "orders" }, "idempotency_key": "other" }),
            Some("deploy-42"),
        )
        .await?;
    assert_eq!(status, 400);

    assert_eq!(stack.count("requests").await?, 1);
    assert_eq!(stack.count("runs").await?, 1);

    // Concurrent first use of one key still creates one request.
    let attempts = (0..8).map(|_| {
        stack.post_request(
            "db",
            json!({ "params": { "name": "race" } }),
            Some("race-key"),
        )
    });
    let answers = futures::future::join_all(attempts).await;
    let mut ids = Vec::new();
    for answer in answers {
        let (status, _, body) = answer?;
        assert_eq!(status, 202, "{body:#}");
        ids.push(body["request_id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one request for one key: {ids:?}");
    assert_eq!(stack.count("requests").await?, 2);
    stack.stop().await
}

#[tokio::test]
async fn promise_versions_are_kept_for_runs_that_use_them() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let v1 = PROMISE;
    let v2 = PROMISE.replace("version: \"1\"", "version: \"2\"").replace(
        "{ id: provision, uses: noop }",
        "{ id: provision, uses: echo, with: { v: 2 } }",
    );
    let (status, body) = stack.put_promise(v1).await?;
    assert_eq!((status, body["outcome"].as_str()), (201, Some("created")));
    let (status, body) = stack.put_promise(v1).await?;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("unchanged")));
    let run_v1 = stack.request("db", json!({ "name": "first" })).await?;
    stack.apply(&v2).await?;
    let run_v2 = stack.request("db", json!({ "name": "second" })).await?;
    let run_v1 = stack
        .wait_finished(run_v1, std::time::Duration::from_secs(30))
        .await?;
    let run_v2 = stack
        .wait_finished(run_v2, std::time::Duration::from_secs(30))
        .await?;
    assert_eq!(run_v1["promise_version"], "1");
    assert_eq!(run_v2["promise_version"], "2");
    assert_eq!(run_v2["steps"][0]["outputs"], json!({ "v": 2 }));

    // A version's content is immutable.
    let changed_v1 = v1.replace("uses: noop", "uses: echo");
    let (status, body) = stack.put_promise(&changed_v1).await?;
    assert_eq!(status, 409, "{body:#}");
    let (_, current) = stack.get("/v1/promises/db").await?;
    assert_eq!(current["version"], "2");
    assert_eq!(current["versions"], json!(["1", "2"]));
    let (_, old) = stack.get("/v1/promises/db?version=1").await?;
    assert_eq!(
        old["promise"]["spec"]["workflow"]["steps"][0]["uses"],
        "noop"
    );
    stack.stop().await
}

/// Another process moves the head while this API still has the old one
/// cached: the next request is validated against, and bound to, the new head.
#[tokio::test]
async fn a_head_moved_by_another_process_is_used_by_the_next_request() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack.apply(PROMISE).await?;
    let first = stack.request("db", json!({ "name": "first" })).await?;
    // v2 renames the default size; applied straight to the store, as a
    // second API process would, so this API's cached head is not told.
    let v2 = PROMISE.replace("version: \"1\"", "version: \"2\"").replace(
        "enum: [small, large], default: small",
        "enum: [medium, large], default: medium",
    );
    let v2 = fulfil_core::Promise::parse(&v2).map_err(|e| anyhow::anyhow!("{e}"))?;
    fulfil_engine::promises::apply(&stack.pool, &v2).await?;

    let second = stack.request("db", json!({ "name": "second" })).await?;
    assert_eq!(stack.run(first).await?["promise_version"], "1");
    assert_eq!(stack.run(second).await?["promise_version"], "2");
    let (params,): (serde_json::Value,) =
        sqlx::query_as("SELECT params FROM fulfil.requests WHERE run_id = $1")
            .bind(second.as_uuid())
            .fetch_one(&stack.pool)
            .await?;
    assert_eq!(params, json!({ "name": "second", "size": "medium" }));

    // Under v2, v1's size is refused, and nothing more is stored.
    let (status, _, body) = stack
        .post_request(
            "db",
            json!({ "params": { "name": "third", "size": "small" } }),
            None,
        )
        .await?;
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(stack.count("requests").await?, 2);
    stack.stop().await
}
