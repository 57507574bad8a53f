//! The OpenAPI document against the live API: every route it describes is
//! served with exactly the methods it names (so nothing is served that it
//! does not describe on those paths), and real answers (a request, a run,
//! its history, lists, events, schedules, problems) match the schemas it
//! gives them.

use std::time::Duration;

use fulfil_integration_tests::TestStack;
use reqwest::Method;
use serde_json::{Value, json};

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// A concrete URL for a documented path: a nil UUID for ids, a name that
/// exists nowhere for the rest.
fn concrete(path: &str) -> String {
    path.replace("{id}", "00000000-0000-0000-0000-000000000000")
        .replace("{name}", "no-such-thing")
        .replace("{step}", "no-such-step")
}

fn is_fallback(status: u16, body: &Value) -> bool {
    status == 404
        && body["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("no such route"))
}

#[tokio::test]
async fn every_documented_route_is_served_with_exactly_its_methods() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let (status, served) = stack.get("/openapi.json").await?;
    assert_eq!(status, 200, "{served}");
    let document = serde_json::to_value(fulfil_api::openapi::document())?;
    assert_eq!(served, document, "the served document is the built one");
    assert_eq!(served["openapi"], "3.1.0");

    let paths = served["paths"].as_object().cloned().unwrap_or_default();
    assert!(paths.len() >= 25, "{} paths", paths.len());
    let mut probed = 0;
    for (path, item) in &paths {
        let documented: Vec<&str> = METHODS
            .into_iter()
            .filter(|m| item.get(*m).is_some())
            .collect();
        let not_served_here = fulfil_api::openapi::NOT_SERVED_HERE
            .iter()
            .any(|(_, p)| p == path);
        for method in METHODS {
            let url = format!("{}{}", stack.api, concrete(path));
            let response = stack
                .http
                .request(Method::from_bytes(method.to_uppercase().as_bytes())?, &url)
                .send()
                .await?;
            let status = response.status().as_u16();
            let allow = response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .map(str::to_lowercase);
            let body: Value = response.json().await.unwrap_or(Value::Null);
            probed += 1;
            if not_served_here {
                // Described for a handler wired elsewhere: once this router
                // serves it, take it off `NOT_SERVED_HERE`.
                assert!(
                    is_fallback(status, &body),
                    "{method} {path} is served now: remove it from NOT_SERVED_HERE ({status} {body})"
                );
                continue;
            }
            if documented.contains(&method) {
                assert!(
                    !is_fallback(status, &body) && status != 405,
                    "{method} {path} is documented but not served: {status} {body}"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path} is served but not documented: {body}"
                );
                assert_eq!(body["code"], "method-not-allowed", "{body}");
                // What the router serves on this path is what is documented.
                let mut allowed: Vec<String> = allow
                    .unwrap_or_default()
                    .split(',')
                    .map(|m| m.trim().to_string())
                    .filter(|m| m != "head" && !m.is_empty())
                    .collect();
                allowed.sort();
                let mut expected: Vec<String> = documented.iter().map(|m| m.to_string()).collect();
                expected.sort();
                assert_eq!(allowed, expected, "Allow of {path}");
            }
        }
    }
    assert_eq!(probed, paths.len() * METHODS.len());

    // A path nobody documents is the fallback, a problem like the rest.
    let (status, body) = stack.get("/v1/nothing-here").await?;
    assert!(is_fallback(status, &body), "{status} {body}");
    stack.stop().await
}

/// Validates answers against the document's schemas, resolving its refs.
struct Schemas {
    document: Value,
}

impl Schemas {
    /// The schema of the answer `status` to `method path` as
    /// `media_type`, following a response `$ref`.
    fn response_schema(&self, method: &str, path: &str, status: u16, media: &str) -> Value {
        let mut response =
            self.document["paths"][path][method]["responses"][status.to_string()].clone();
        if let Some(reference) = response["$ref"].as_str() {
            let name = reference.rsplit('/').next().unwrap_or_default();
            response = self.document["components"]["responses"][name].clone();
        }
        assert!(
            !response.is_null(),
            "{method} {path} does not document {status}"
        );
        let schema = response["content"][media]["schema"].clone();
        assert!(
            !schema.is_null(),
            "{method} {path} {status} has no {media} schema: {response}"
        );
        schema
    }

    /// Fails naming every violation unless `body` matches.
    fn check(&self, method: &str, path: &str, status: u16, media: &str, body: &Value) {
        let mut schema = self.response_schema(method, path, status, media);
        if let Value::Object(map) = &mut schema {
            map.insert("components".into(), self.document["components"].clone());
        }
        let validator = match jsonschema::validator_for(&schema) {
            Ok(v) => v,
            Err(e) => panic!("{method} {path} {status}: the schema does not compile: {e}"),
        };
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: {errors:?}\n{body:#}"
        );
    }
}

const PROMISE: &str = r#"apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: shaped, version: "1", owner: team-api }
spec:
  api:
    type: object
    required: [name]
    properties:
      name: { type: string }
  workflow:
    steps:
      - { id: provision, uses: echo, with: { db: "${{ params.name }}" } }
      - { id: check, uses: noop, needs: [provision] }
  outputs:
    db: "${{ steps.provision.outputs.db }}"
"#;

const SCHEDULE: &str = "apiVersion: fulfil.dev/v1\nkind: Schedule\nmetadata: { name: nightly, owner: team-api }\nspec:\n  promise: shaped\n  cron: \"0 2 * * *\"\n  params: { name: nightly-db }\n";

#[tokio::test]
async fn real_answers_match_their_schemas() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let schemas = Schemas {
        document: serde_json::to_value(fulfil_api::openapi::document())?,
    };
    const JSON: &str = "application/json";
    const PROBLEM: &str = "application/problem+json";
    let api = &stack.api;
    let http = &stack.http;

    let (status, body) = stack.get("/healthz").await?;
    schemas.check("get", "/healthz", status, JSON, &body);
    let (status, body) = stack.get("/readyz").await?;
    schemas.check("get", "/readyz", status, JSON, &body);

    let (status, body) = stack.put_promise(PROMISE).await?;
    assert_eq!(status, 201, "{body}");
    schemas.check("put", "/v1/promises/{name}", status, JSON, &body);
    let (status, body) = stack.put_promise(PROMISE).await?;
    assert_eq!((status, &body["outcome"]), (200, &json!("unchanged")));
    schemas.check("put", "/v1/promises/{name}", status, JSON, &body);
    let (status, body) = stack.get("/v1/promises/shaped").await?;
    assert!(body["promise"].is_object(), "{body}");
    schemas.check("get", "/v1/promises/{name}", status, JSON, &body);
    let (status, body) = stack.get("/v1/promises").await?;
    assert_eq!(body["items"][0]["name"], "shaped", "{body}");
    schemas.check("get", "/v1/promises", status, JSON, &body);

    let (status, _, accepted) = stack
        .post_request("shaped", json!({ "params": { "name": "orders" } }), None)
        .await?;
    schemas.check(
        "post",
        "/v1/promises/{name}/requests",
        status,
        JSON,
        &accepted,
    );
    let run_id = accepted["run_id"].as_str().unwrap_or_default().parse()?;
    let run = stack.wait_finished(run_id, Duration::from_secs(30)).await?;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["steps"].as_array().map(Vec::len), Some(2), "{run}");
    schemas.check("get", "/v1/runs/{id}", 200, JSON, &run);
    let request_id = accepted["request_id"].as_str().unwrap_or_default();
    for (path, url) in [
        ("/v1/requests/{id}", format!("/v1/requests/{request_id}")),
        ("/v1/requests", "/v1/requests".to_string()),
        ("/v1/runs", "/v1/runs?status=succeeded".to_string()),
        (
            "/v1/runs/{id}/history",
            format!("/v1/runs/{run_id}/history"),
        ),
    ] {
        let (status, body) = stack.get(&url).await?;
        assert_eq!(status, 200, "{url}: {body}");
        schemas.check("get", path, status, JSON, &body);
    }
    let (status, body) = stack.get(&format!("/v1/runs/{run_id}/history")).await?;
    assert!(
        body["items"].as_array().is_some_and(|i| i.len() >= 4),
        "{status} {body}"
    );

    // Problems: each answer is the documented problem for its status.
    let invalid_params = stack
        .post_request("shaped", json!({ "params": { "name": 7 } }), None)
        .await?;
    assert_eq!(invalid_params.2["code"], "invalid-params");
    schemas.check(
        "post",
        "/v1/promises/{name}/requests",
        invalid_params.0,
        PROBLEM,
        &invalid_params.2,
    );
    let (status, body) = stack.get("/v1/runs/not-a-uuid").await?;
    assert_eq!((status, &body["code"]), (400, &json!("bad-request")));
    schemas.check("get", "/v1/runs/{id}", status, PROBLEM, &body);
    let (status, body) = stack
        .get(&format!("/v1/runs/{}", uuid::Uuid::nil()))
        .await?;
    assert_eq!((status, &body["code"]), (404, &json!("not-found")));
    schemas.check("get", "/v1/runs/{id}", status, PROBLEM, &body);
    // Filters the document bounds are refused, not answered as empty pages.
    // A closed vocabulary is refused by the query's own type, a bound by
    // the handler.
    for (url, code) in [
        ("/v1/requests?status=finished", "invalid-query"),
        ("/v1/runs?waiting_for=coffee", "invalid-query"),
        ("/v1/promises?limit=0", "bad-request"),
        ("/v1/runs?limit=0", "bad-request"),
    ] {
        let (status, body) = stack.get(url).await?;
        assert_eq!((status, &body["code"]), (400, &json!(code)), "{url}");
        let path = url.split('?').next().unwrap_or_default();
        schemas.check("get", path, status, PROBLEM, &body);
    }
    let (status, body) = stack.get("/v1/runs?colour=blue").await?;
    assert_eq!((status, &body["code"]), (400, &json!("invalid-query")));
    schemas.check("get", "/v1/runs", status, PROBLEM, &body);
    let response = http
        .post(format!("{api}/v1/runs/{run_id}/cancel"))
        .json(&json!({ "reason": "done already" }))
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await?;
    assert_eq!((status, &body["code"]), (409, &json!("run-state-conflict")));
    schemas.check("post", "/v1/runs/{id}/cancel", status, PROBLEM, &body);
    let response = http
        .post(format!("{api}/v1/runs/{run_id}/retry"))
        .header("content-type", "text/plain")
        .body("step=check")
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await?;
    assert_eq!(
        (status, &body["code"]),
        (415, &json!("unsupported-media-type"))
    );
    schemas.check("post", "/v1/runs/{id}/retry", status, PROBLEM, &body);
    let response = http
        .post(format!("{api}/v1/runs/{run_id}/retry"))
        .json(&json!({ "step": "check", "dry_run": true }))
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await?;
    assert_eq!((status, &body["code"]), (409, &json!("run-state-conflict")));
    schemas.check("post", "/v1/runs/{id}/retry", status, PROBLEM, &body);

    // A JSON null is no body: the defaults, as a generated client sends
    // an optional body it was given none for.
    let response = http
        .post(format!("{api}/v1/runs/{run_id}/cancel"))
        .header("content-type", "application/json")
        .body("null")
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await?;
    assert_eq!((status, &body["code"]), (409, &json!("run-state-conflict")));

    // Events: a CloudEvent no trigger wants, the ledger, the dead letters.
    let event = json!({
        "specversion": "1.0", "id": "e-1", "source": "/tests/openapi",
        "type": "com.example.nothing", "data": { "a": 1 },
    });
    let response = http
        .post(format!("{api}/v1/events"))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .await?;
    let status = response.status().as_u16();
    let receipt: Value = response.json().await?;
    assert_eq!(status, 202, "{receipt}");
    schemas.check("post", "/v1/events", status, JSON, &receipt);
    let ledger_id = receipt["ledger_id"].as_str().unwrap_or_default();
    for (path, url) in [
        ("/v1/events", "/v1/events".to_string()),
        ("/v1/events/{id}", format!("/v1/events/{ledger_id}")),
        ("/v1/dead-letters", "/v1/dead-letters".to_string()),
    ] {
        let (status, body) = stack.get(&url).await?;
        assert_eq!(status, 200, "{url}: {body}");
        schemas.check("get", path, status, JSON, &body);
    }
    let response = http
        .post(format!("{api}/v1/events"))
        .header("content-type", "application/cloudevents+json")
        .body("{\"specversion\": \"1.0\"}")
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await?;
    assert_eq!((status, &body["code"]), (422, &json!("invalid-event")));
    schemas.check("post", "/v1/events", status, PROBLEM, &body);

    // Schedules: applied, read, paused, its (empty) tick ledger.
    let response = http
        .put(format!("{api}/v1/schedules/nightly"))
        .header("content-type", "application/yaml")
        .body(SCHEDULE)
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await?;
    assert_eq!(status, 201, "{body}");
    schemas.check("put", "/v1/schedules/{name}", status, JSON, &body);
    let response = http
        .post(format!("{api}/v1/schedules/nightly/pause"))
        .header("fulfil-actor", "user:alice")
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await?;
    assert_eq!((status, &body["paused"]), (200, &json!(true)), "{body}");
    schemas.check("post", "/v1/schedules/{name}/pause", status, JSON, &body);
    for (path, url) in [
        ("/v1/schedules", "/v1/schedules"),
        ("/v1/schedules/{name}", "/v1/schedules/nightly"),
        ("/v1/schedules/{name}/ticks", "/v1/schedules/nightly/ticks"),
    ] {
        let (status, body) = stack.get(url).await?;
        assert_eq!(status, 200, "{url}: {body}");
        schemas.check("get", path, status, JSON, &body);
    }

    // Deleting the request: the 202 answer and the request as it is then.
    let response = http
        .delete(format!("{api}/v1/requests/{request_id}"))
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await?;
    assert_eq!(status, 202, "{body}");
    schemas.check("delete", "/v1/requests/{id}", status, JSON, &body);

    // A body of the wrong shape is refused as documented, and the schema
    // check itself refuses a body that breaks it.
    let broken = json!({ "id": "not-a-run" });
    let mut schema = schemas.response_schema("get", "/v1/runs/{id}", 200, JSON);
    if let Value::Object(map) = &mut schema {
        map.insert("components".into(), schemas.document["components"].clone());
    }
    assert!(!jsonschema::is_valid(&schema, &broken));
    stack.stop().await
}

/// Every body the API reads can be malformed, and every one answers 422
/// `invalid-body` then: an operation taking a body must say so, or a
/// client generated from the document (and schemathesis) meets an
/// undocumented status.
#[test]
fn every_operation_that_reads_a_body_documents_its_422() -> anyhow::Result<()> {
    let document = serde_json::to_value(fulfil_api::openapi::document())?;
    let paths = document["paths"].as_object().cloned().unwrap_or_default();
    let mut undocumented = Vec::new();
    let mut with_body = 0;
    for (path, operations) in &paths {
        for method in METHODS {
            let operation = &operations[method];
            if operation.is_null() || operation["requestBody"].is_null() {
                continue;
            }
            with_body += 1;
            if operation["responses"]["422"].is_null() {
                undocumented.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    assert!(with_body >= 10, "{with_body} operations read a body");
    assert!(
        undocumented.is_empty(),
        "no 422 documented: {undocumented:?}"
    );
    Ok(())
}
