//! Hostile and malformed input at the HTTP edge: every answer is a 4xx
//! `application/problem+json` naming what was wrong, nothing is stored, no
//! answer carries database text, and the server keeps answering.

use fulfil_integration_tests::TestStack;
use proptest::prelude::*;
use reqwest::Method;
use serde_json::{Value, json};
use tower::ServiceExt;

const PROMISE: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: db, version: "1" }
spec:
  api:
    type: object
    properties:
      name: { type: string }
  workflow:
    steps:
      - { id: provision, uses: noop }
"#;

const RUN: &str = "0190a0c4-7a1e-7000-8000-000000000001";

/// What came back for one request.
struct Answer {
    status: u16,
    content_type: String,
    allow: Option<String>,
    body: Value,
}

async fn send(
    stack: &TestStack,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> anyhow::Result<Answer> {
    let mut request = stack
        .http
        .request(method, format!("{}{path}", stack.api))
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (status, content_type, allow) = (
        response.status().as_u16(),
        header("content-type").unwrap_or_default(),
        header("allow"),
    );
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Answer {
        status,
        content_type,
        allow,
        body,
    })
}

/// Asserts a problem answer of `status` whose `type` ends with `code`, that
/// carries no database text; returns its body.
fn assert_problem(answer: &Answer, status: u16, code: &str, case: &str) -> Value {
    assert_eq!(answer.status, status, "{case}: {:#}", answer.body);
    assert_eq!(
        answer.content_type, "application/problem+json",
        "{case}: {:#}",
        answer.body
    );
    assert_eq!(
        answer.body["type"],
        format!("https://fulfil.dev/problems/{code}"),
        "{case}: {:#}",
        answer.body
    );
    let text = answer.body.to_string();
    for leak in ["UTF8", "SQLSTATE", "sqlx", "Failed to"] {
        assert!(!text.contains(leak), "{case} leaks {leak:?}: {text}");
    }
    answer.body.clone()
}

async fn assert_nothing_stored(stack: &TestStack) -> anyhow::Result<()> {
    for table in ["requests", "runs", "steps", "history", "outbox"] {
        assert_eq!(stack.count(table).await?, 0, "{table} must stay empty");
    }
    Ok(())
}

#[tokio::test]
async fn nul_characters_are_refused_naming_where_and_nothing_is_stored() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack.apply(PROMISE).await?;
    let json = Some("application/json");

    // JSON bodies: the pointer of the string or key holding the NUL.
    let bodies = [
        (
            "/v1/promises/db/requests",
            json!({ "params": { "name": "a\u{0}b" } }),
            "/params/name",
        ),
        (
            "/v1/promises/db/requests",
            json!({ "params": { "na\u{0}me": "x" } }),
            "/params/na\\0me",
        ),
        (
            "/v1/promises/db/requests",
            json!({ "params": { "name": "x" }, "idempotency_key": "k\u{0}" }),
            "/idempotency_key",
        ),
        (
            &format!("/v1/runs/{RUN}/cancel"),
            json!({ "reason": "\u{0}" }),
            "/reason",
        ),
        (
            &format!("/v1/runs/{RUN}/retry"),
            json!({ "step": "\u{0}" }),
            "/step",
        ),
    ];
    for (path, body, pointer) in bodies {
        let answer = send(&stack, Method::POST, path, json, body.to_string()).await?;
        let problem = assert_problem(&answer, 400, "nul-character", path);
        assert_eq!(problem["pointer"], pointer, "{problem:#}");
    }

    // A Promise: the NUL is escaped in the text and there once parsed, in
    // YAML and in JSON.
    let yaml = PROMISE
        .replace(
            "version: \"1\" }",
            "version: \"2\", description: \"a\\0b\" }",
        )
        .replace("uses: noop", "uses: echo, with: { v: 1 }");
    let answer = send(&stack, Method::PUT, "/v1/promises/db", None, yaml).await?;
    let problem = assert_problem(&answer, 400, "nul-character", "YAML description");
    assert_eq!(problem["pointer"], "/metadata/description", "{problem:#}");
    let promise = json!({
        "apiVersion": "fulfil.dev/v1", "kind": "Promise",
        "metadata": { "name": "db", "version": "3" },
        "spec": { "workflow": { "steps": [
            { "id": "provision", "uses": "echo", "with": { "v": "\u{0}" } }
        ] } }
    });
    let answer = send(
        &stack,
        Method::PUT,
        "/v1/promises/db",
        json,
        promise.to_string(),
    )
    .await?;
    let problem = assert_problem(&answer, 400, "nul-character", "JSON with");
    assert_eq!(
        problem["pointer"], "/spec/workflow/steps/0/with/v",
        "{problem:#}"
    );
    // A raw NUL byte in the text: refused before parsing, at its position.
    let raw = PROMISE.replace("noop", "no\0op");
    let answer = send(&stack, Method::PUT, "/v1/promises/db", None, raw).await?;
    let problem = assert_problem(&answer, 400, "nul-character", "raw NUL byte");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("line 12, column 34"),
        "{problem:#}"
    );

    // %00 in a path or a query: the parameter holding it.
    let urls = [
        (Method::GET, "/v1/promises/d%00b", "name"),
        (Method::PUT, "/v1/promises/d%00b", "name"),
        (Method::POST, "/v1/promises/d%00b/requests", "name"),
        (Method::GET, "/v1/promises/db?version=%00", "version"),
        (Method::GET, "/v1/requests?promise=a%00", "promise"),
        (Method::GET, "/v1/requests?status=%00", "status"),
        (Method::GET, "/v1/runs?promise=%00", "promise"),
        (Method::GET, "/v1/runs?cursor=%00", "cursor"),
        (
            Method::GET,
            &format!("/v1/runs/{RUN}/history?cursor=%00"),
            "cursor",
        ),
    ];
    for (method, url, parameter) in urls {
        let body = if method == Method::GET {
            String::new()
        } else {
            json!({ "params": { "name": "x" } }).to_string()
        };
        let answer = send(&stack, method, url, json, body).await?;
        let problem = assert_problem(&answer, 400, "nul-character", url);
        assert_eq!(problem["parameter"], parameter, "{url}: {problem:#}");
    }

    assert_nothing_stored(&stack).await?;
    let (_, head) = stack.get("/v1/promises/db").await?;
    assert_eq!(head["versions"], json!(["1"]), "no version stored");
    let (status, _) = stack.get("/healthz").await?;
    assert_eq!(status, 200);
    stack.stop().await
}

/// Method, path, content type, body, and the status and problem code expected.
type Case<'a> = (Method, String, Option<&'a str>, Vec<u8>, u16, &'a str);

#[tokio::test]
async fn every_route_answers_bad_input_with_a_problem() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack.apply(PROMISE).await?;
    let json = Some("application/json");
    let huge = vec![b' '; 3 * 1024 * 1024];
    let deep = format!(
        "{{\"params\": {{\"name\": {}1{}}}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let cancel = format!("/v1/runs/{RUN}/cancel");
    let retry = format!("/v1/runs/{RUN}/retry");
    let cases: Vec<Case> = vec![
        // Bodies that are not JSON, or not UTF-8.
        (
            Method::POST,
            "/v1/promises/db/requests".into(),
            json,
            b"{\"params\": ".to_vec(),
            400,
            "invalid-json",
        ),
        (
            Method::POST,
            "/v1/promises/db/requests".into(),
            json,
            b"{\"params\": {\"name\": \"\xff\"}}".to_vec(),
            400,
            "invalid-json",
        ),
        (
            Method::POST,
            "/v1/promises/db/requests".into(),
            json,
            deep.clone().into_bytes(),
            400,
            "invalid-json",
        ),
        (
            Method::POST,
            cancel.clone(),
            json,
            b"{\"reason\": ".to_vec(),
            400,
            "invalid-json",
        ),
        (
            Method::POST,
            retry.clone(),
            json,
            b"[".to_vec(),
            400,
            "invalid-json",
        ),
        (
            Method::PUT,
            "/v1/promises/db".into(),
            None,
            b"metadata: \xff\xfe".to_vec(),
            400,
            "bad-request",
        ),
        // JSON of the wrong shape: the pointer.
        (
            Method::POST,
            "/v1/promises/db/requests".into(),
            json,
            br#"{"params": {}, "idempotency_key": 7}"#.to_vec(),
            422,
            "invalid-body",
        ),
        (
            Method::POST,
            "/v1/promises/db/requests".into(),
            json,
            br#"{"params": {}, "colour": 1}"#.to_vec(),
            422,
            "invalid-body",
        ),
        (
            Method::POST,
            retry.clone(),
            json,
            br#"{"dry_run": "yes"}"#.to_vec(),
            422,
            "invalid-body",
        ),
        (
            Method::POST,
            cancel.clone(),
            json,
            br#"{"compensate": 1}"#.to_vec(),
            422,
            "invalid-body",
        ),
        // Wrong or missing content types.
        (
            Method::POST,
            "/v1/promises/db/requests".into(),
            Some("text/plain"),
            b"{}".to_vec(),
            415,
            "unsupported-media-type",
        ),
        (
            Method::POST,
            "/v1/promises/db/requests".into(),
            None,
            b"{}".to_vec(),
            415,
            "unsupported-media-type",
        ),
        (
            Method::POST,
            retry.clone(),
            Some("text/plain"),
            b"{}".to_vec(),
            415,
            "unsupported-media-type",
        ),
        (
            Method::POST,
            cancel.clone(),
            Some("application/x-www-form-urlencoded"),
            b"reason=x".to_vec(),
            415,
            "unsupported-media-type",
        ),
        // Query strings: wrong types, unknown parameters.
        (
            Method::GET,
            "/v1/runs?limit=abc".into(),
            None,
            vec![],
            400,
            "invalid-query",
        ),
        (
            Method::GET,
            "/v1/runs?since=yesterday".into(),
            None,
            vec![],
            400,
            "invalid-query",
        ),
        (
            Method::GET,
            "/v1/runs?colour=red".into(),
            None,
            vec![],
            400,
            "invalid-query",
        ),
        (
            Method::GET,
            "/v1/requests?limit=1e99".into(),
            None,
            vec![],
            400,
            "invalid-query",
        ),
        (
            Method::GET,
            "/v1/requests?limit=1&limit=2".into(),
            None,
            vec![],
            400,
            "invalid-query",
        ),
        (
            Method::GET,
            format!("/v1/runs/{RUN}/history?limit=-x"),
            None,
            vec![],
            400,
            "invalid-query",
        ),
        (
            Method::GET,
            "/v1/promises/db?versoin=1".into(),
            None,
            vec![],
            400,
            "invalid-query",
        ),
        // Paths: not UTF-8, not a UUID, no route, wrong method.
        (
            Method::GET,
            "/v1/promises/%FF".into(),
            None,
            vec![],
            400,
            "invalid-path",
        ),
        (
            Method::GET,
            "/v1/runs/not-a-uuid".into(),
            None,
            vec![],
            400,
            "bad-request",
        ),
        (
            Method::GET,
            "/v1/requests/not-a-uuid".into(),
            None,
            vec![],
            400,
            "bad-request",
        ),
        (
            Method::GET,
            "/v1/nope".into(),
            None,
            vec![],
            404,
            "not-found",
        ),
        (
            Method::DELETE,
            "/v1/runs".into(),
            None,
            vec![],
            405,
            "method-not-allowed",
        ),
        (
            Method::GET,
            retry.clone(),
            None,
            vec![],
            405,
            "method-not-allowed",
        ),
        // Oversized bodies: one limit, one answer, on every route.
        (
            Method::POST,
            "/v1/promises/db/requests".into(),
            json,
            huge.clone(),
            413,
            "payload-too-large",
        ),
        (
            Method::PUT,
            "/v1/promises/db".into(),
            None,
            huge.clone(),
            413,
            "payload-too-large",
        ),
        (
            Method::POST,
            cancel.clone(),
            json,
            huge.clone(),
            413,
            "payload-too-large",
        ),
        (
            Method::POST,
            retry.clone(),
            json,
            huge.clone(),
            413,
            "payload-too-large",
        ),
    ];
    for (method, path, content_type, body, status, code) in cases {
        let case = format!("{method} {path} ({content_type:?}, {} bytes)", body.len());
        let answer = send(&stack, method, &path, content_type, body).await?;
        let problem = assert_problem(&answer, status, code, &case);
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{case}: {problem:#}"
        );
        if status == 405 {
            assert!(answer.allow.is_some(), "{case}: Allow is kept");
        }
    }

    // Wrong shapes name their pointer; wrong query types their parameter.
    let answer = send(
        &stack,
        Method::POST,
        "/v1/promises/db/requests",
        json,
        r#"{"params": {}, "idempotency_key": 7}"#,
    )
    .await?;
    assert_eq!(answer.body["errors"][0]["pointer"], "/idempotency_key");
    let answer = send(&stack, Method::GET, "/v1/runs?limit=abc", None, "").await?;
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("limit"),
        "{:#}",
        answer.body
    );
    // An empty body still means the defaults for cancel (here: no such run).
    let answer = send(&stack, Method::POST, &cancel, None, "").await?;
    assert_problem(&answer, 404, "not-found", "cancel without body");

    assert_nothing_stored(&stack).await?;
    let (status, _) = stack.get("/healthz").await?;
    assert_eq!(status, 200);
    stack.stop().await
}

/// A body: arbitrary bytes, or JSON whose strings are arbitrary (NULs and
/// all), in the shapes the routes take.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        (any::<String>(), any::<String>()).prop_map(|(key, value)| {
            json!({ "params": { key: value.clone() }, "idempotency_key": value })
                .to_string()
                .into_bytes()
        }),
        any::<String>().prop_map(|reason| json!({ "reason": reason, "step": reason })
            .to_string()
            .into_bytes()),
        any::<String>().prop_map(|text| PROMISE.replace("noop", &text).into_bytes()),
    ]
}

/// Arbitrary bodies, path parameters and query values, sent to the router
/// in process, never get a 5xx, and every error is a problem.
#[test]
fn arbitrary_bodies_paths_and_queries_never_get_a_server_error() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let stack = runtime.block_on(async {
        let stack = TestStack::start().await?;
        stack.apply(PROMISE).await?;
        anyhow::Ok(stack)
    })?;
    let router = fulfil_api::router(fulfil_api::ApiState::new(
        stack.engine.clone(),
        Some(stack.nats.clone()),
    ));
    let cancel = format!("/v1/runs/{RUN}/cancel");
    let retry = format!("/v1/runs/{RUN}/retry");
    let routes = [
        ("POST", "/v1/promises/db/requests"),
        ("PUT", "/v1/promises/db"),
        ("POST", cancel.as_str()),
        ("POST", retry.as_str()),
    ];
    let config = ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config.clone(), |(route in 0..routes.len(), json in any::<bool>(), body in body())| {
        let (method, path) = routes[route];
        let mut request = axum::http::Request::builder().method(method).uri(path);
        if json {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(axum::body::Body::from(body.clone()))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let response = runtime
            .block_on(router.clone().oneshot(request))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let status = response.status();
        prop_assert!(!status.is_server_error(), "{method} {path}: {status} for {:?}", String::from_utf8_lossy(&body));
        if !status.is_success() {
            prop_assert_eq!(
                response.headers().get("content-type").and_then(|v| v.to_str().ok()),
                Some("application/problem+json")
            );
        }
    });
    // Arbitrary bytes, percent-encoded, as a path parameter and as the value
    // of each query parameter.
    let paths = [
        "/v1/promises/{}",
        "/v1/promises/db?version={}",
        "/v1/promises/{}/requests",
        "/v1/requests?promise={}&status={}&cursor={}",
        "/v1/requests/{}",
        "/v1/runs?status={}&promise={}&cursor={}",
        "/v1/runs?since={}&limit={}",
        "/v1/runs/{}",
        "/v1/runs/{}/history?cursor={}&limit={}",
    ];
    proptest!(config, |(path in 0..paths.len(), bytes in proptest::collection::vec(any::<u8>(), 0..64))| {
        let encoded: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
        let uri = paths[path].replace("{}", &encoded);
        let method = if uri.ends_with("/requests") { "POST" } else { "GET" };
        let request = axum::http::Request::builder()
            .method(method)
            .uri(&uri)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(r#"{"params": {"name": "x"}}"#))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let response = runtime
            .block_on(router.clone().oneshot(request))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let status = response.status();
        prop_assert!(!status.is_server_error(), "{method} {uri}: {status}");
        if !status.is_success() {
            prop_assert_eq!(
                response.headers().get("content-type").and_then(|v| v.to_str().ok()),
                Some("application/problem+json"),
                "{} {}", method, uri
            );
        }
    });
    runtime.block_on(stack.stop())
}
