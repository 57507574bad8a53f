//! The API's edge against abuse (issue 16, hardening): bodies over the
//! limit answer 413 naming it and store nothing, on every route that takes
//! a body; and no cross-origin browser call is allowed (no CORS headers at
//! all, so a browser refuses to hand another site's script the answer).

use fulfil_integration_tests::TestStack;
use reqwest::Method;
use serde_json::{Value, json};

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

/// The default limit: 1 MiB.
const LIMIT: usize = fulfil_api::extract::MAX_BODY_BYTES;

/// A Promise document of exactly `len` bytes (a YAML comment pads it).
fn promise_of(name: &str, len: usize) -> Vec<u8> {
    let doc = PROMISE.replace("name: db,", &format!("name: {name},"));
    let mut body = doc.into_bytes();
    body.extend_from_slice(b"# ");
    body.resize(len - 1, b'x');
    body.push(b'\n');
    body
}

/// A JSON object of exactly `len` bytes (whitespace pads it).
fn json_of(value: &Value, len: usize) -> Vec<u8> {
    let mut body = serde_json::to_vec(value).expect("json");
    body.resize(len, b' ');
    body
}

async fn send(
    stack: &TestStack,
    method: Method,
    path: &str,
    headers: Headers<'_>,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = stack
        .http
        .request(method, format!("{}{path}", stack.api))
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

type Headers<'a> = &'a [(&'a str, &'a str)];
/// A write over the limit: (case, method, path, headers, body).
type OverCase<'a> = (&'a str, Method, &'a str, Headers<'a>, Vec<u8>);
/// A cross-origin call: (case, method, headers).
type CorsCase<'a> = (&'a str, Method, Vec<(&'a str, &'a str)>);

async fn stored(stack: &TestStack) -> anyhow::Result<Vec<i64>> {
    let mut counts = Vec::new();
    for table in [
        "promises",
        "requests",
        "runs",
        "event_ledger",
        "dead_letters",
    ] {
        counts.push(stack.count(table).await?);
    }
    Ok(counts)
}

#[tokio::test]
async fn a_body_one_byte_over_one_mib_answers_413_on_every_write_route_and_stores_nothing()
-> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack.apply(PROMISE).await?;
    let before = stored(&stack).await?;

    let yaml = [("content-type", "application/yaml")];
    let json_type = [("content-type", "application/json")];
    let event = [("content-type", "application/cloudevents+json")];
    let cloud_event = json!({
        "specversion": "1.0", "id": "e-1", "source": "/acme/teams",
        "type": "com.acme.team.created", "data": {}
    });
    let cases: [OverCase; 3] = [
        (
            "PUT promise",
            Method::PUT,
            "/v1/promises/big",
            &yaml,
            promise_of("big", LIMIT + 1),
        ),
        (
            "POST request",
            Method::POST,
            "/v1/promises/db/requests",
            &json_type,
            json_of(&json!({"params": {"name": "orders"}}), LIMIT + 1),
        ),
        (
            "POST event",
            Method::POST,
            "/v1/events",
            &event,
            json_of(&cloud_event, LIMIT + 1),
        ),
    ];
    for (case, method, path, headers, body) in cases {
        let (status, problem) = send(&stack, method, path, headers, body).await?;
        assert_eq!(status, 413, "{case}: {problem}");
        assert_eq!(problem["code"], "payload-too-large", "{case}: {problem}");
        assert_eq!(problem["limit_bytes"], LIMIT, "{case}: {problem}");
    }
    assert_eq!(
        stored(&stack).await?,
        before,
        "a refused body stores nothing"
    );

    // The limit is inclusive: a Promise of exactly 1 MiB is read and stored.
    let (status, answer) = send(
        &stack,
        Method::PUT,
        "/v1/promises/at-limit",
        &yaml,
        promise_of("at-limit", LIMIT),
    )
    .await?;
    assert!(status == 200 || status == 201, "{status}: {answer}");
    stack.stop().await
}

#[tokio::test]
async fn cross_origin_calls_get_no_cors_headers_at_all() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let evil = "https://evil.example";
    let cases: [CorsCase; 3] = [
        ("GET with an Origin", Method::GET, vec![("origin", evil)]),
        (
            "preflight for a POST",
            Method::OPTIONS,
            vec![
                ("origin", evil),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
            ],
        ),
        (
            "preflight for a GET",
            Method::OPTIONS,
            vec![("origin", evil), ("access-control-request-method", "GET")],
        ),
    ];
    for (case, method, headers) in cases {
        let mut request = stack
            .http
            .request(method, format!("{}/v1/promises", stack.api));
        for (k, v) in &headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        assert!(status < 500, "{case}: {status}");
        let cors: Vec<_> = response
            .headers()
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{case}: {cors:?}");
    }
    stack.stop().await
}
