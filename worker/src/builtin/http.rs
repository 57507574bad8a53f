//! `http`: one HTTP request, for plain HTTP APIs below the platform
//! (provisioners, Crossplane or Terraform front ends, ticketing systems).
//!
//! Input (unknown fields are refused, so a typo is an error, not a silent
//! default):
//!
//! ```yaml
//! method: POST                   # default GET
//! url: https://provisioner/databases
//! headers: { Authorization: "Bearer ..." }
//! body: { name: db1 }            # any JSON, sent as JSON; omitted: no body
//! expect_status: [200, 201]      # or a single code; default: any 2xx
//! timeout: 30s                   # humantime; default 30s, capped by the task deadline
//! ```
//!
//! Output: `{status, headers, body}`. `body` is the parsed JSON when the
//! response says it is JSON, has no content type, or holds a JSON object or
//! array; otherwise the text; `null` when empty.
//!
//! Errors: connection failures (`http_connect`), timeouts (`http_timeout`),
//! 5xx, 408 and 429 (`http_status_<code>`) are retryable, with the delay of a
//! `Retry-After: <seconds>` on 429 and 503; any other unexpected status is
//! permanent; bad input is permanent `invalid_input` naming the field.
//!
//! The request is sent at least once per attempt and again on every retry:
//! pass [`TaskContext::idempotency_key`] to the API (for example in a
//! header) when it supports request deduplication.

use std::{collections::BTreeMap, fmt::Write as _, sync::Once, time::Duration};

use async_trait::async_trait;
use reqwest::{
    Method, StatusCode, Url,
    header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::handler::{Handler, StepError, TaskContext, parse_input};

/// Responses larger than this fail the step rather than exhaust memory or
/// the result message's size limit.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// How much of an unexpected response's body an error message quotes.
const BODY_SNIPPET_CHARS: usize = 512;

/// The `http` handler. Holds one connection-pooling client.
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
}

/// The HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// reqwest refused the client configuration (for example, no usable TLS
    /// root certificates).
    #[error("cannot build the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

impl Http {
    pub const NAME: &'static str = "http";

    /// Used when the input names no `timeout`.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// Builds the handler's client, installing the `ring` TLS provider as the
    /// process default if no provider is installed yet.
    pub fn new() -> Result<Self, HttpClientError> {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .user_agent(concat!("fulfil-worker/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { client })
    }
}

/// reqwest is built without a crypto provider (`rustls-no-provider`), so one
/// must be installed before the first client is built.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another part of the process installed one first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    method: Option<String>,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, Value>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    expect_status: Option<Value>,
    #[serde(default)]
    timeout: Option<String>,
}

/// A request ready to send, every input field checked.
#[derive(Debug)]
struct Request {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Value>,
    expect: Vec<StatusCode>,
    timeout: Duration,
}

impl Request {
    fn from_input(input: Value) -> Result<Self, StepError> {
        let input: Input = parse_input(input)?;

        let method = match input.method.as_deref() {
            None => Method::GET,
            Some(method) => Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .map_err(|_| {
                    StepError::invalid_input(
                        "method",
                        format!("{method:?} is not an HTTP method; use GET, POST, PUT, PATCH, DELETE, ..."),
                    )
                })?,
        };

        let url = Url::parse(&input.url)
            .map_err(|err| StepError::invalid_input("url", format!("{:?}: {err}", input.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(StepError::invalid_input(
                "url",
                format!(
                    "scheme {:?} is not supported; use http or https",
                    url.scheme()
                ),
            ));
        }

        let mut headers = HeaderMap::new();
        for (name, value) in &input.headers {
            let field = format!("headers.{name}");
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| StepError::invalid_input(&field, "not a valid header name"))?;
            let text = super::header_value_text(&field, value)?;
            let header_value = HeaderValue::from_str(&text).map_err(|_| {
                StepError::invalid_input(&field, "not a valid header value (control characters?)")
            })?;
            headers.append(header_name, header_value);
        }

        let expect = match &input.expect_status {
            None => Vec::new(),
            Some(Value::Array(codes)) => codes
                .iter()
                .enumerate()
                .map(|(i, code)| status_code(code, &format!("expect_status[{i}]")))
                .collect::<Result<_, _>>()?,
            Some(code) => vec![status_code(code, "expect_status")?],
        };

        let timeout = match &input.timeout {
            None => Http::DEFAULT_TIMEOUT,
            Some(text) => humantime::parse_duration(text).map_err(|err| {
                StepError::invalid_input(
                    "timeout",
                    format!("{text:?}: {err}; expected a duration such as \"30s\" or \"2m\""),
                )
            })?,
        };

        Ok(Self {
            method,
            url,
            headers,
            body: input.body,
            expect,
            timeout,
        })
    }

    fn expects(&self, status: StatusCode) -> bool {
        if self.expect.is_empty() {
            status.is_success()
        } else {
            self.expect.contains(&status)
        }
    }

    /// Method and URL without the query string, which may carry secrets.
    fn describe(&self) -> String {
        let mut url = self.url.clone();
        url.set_query(None);
        url.set_fragment(None);
        let _ = url.set_password(None);
        format!("{} {url}", self.method)
    }
}

fn status_code(value: &Value, field: &str) -> Result<StatusCode, StepError> {
    value
        .as_u64()
        .and_then(|code| u16::try_from(code).ok())
        .filter(|code| (100..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| {
            StepError::invalid_input(
                field,
                format!("{value} is not an HTTP status code; expected a number from 100 to 599 or a list of them"),
            )
        })
}

#[async_trait]
impl Handler for Http {
    async fn handle(&self, task: &TaskContext, input: Value) -> Result<Value, StepError> {
        let request = Request::from_input(input)?;
        let what = request.describe();
        let timeout = request.timeout.min(task.remaining());

        let mut builder = self
            .client
            .request(request.method.clone(), request.url.clone())
            .timeout(timeout);
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        builder = builder.headers(request.headers.clone());

        let mut response = builder
            .send()
            .await
            .map_err(|err| transport_error(&what, timeout, err))?;
        let status = response.status();
        let headers = response.headers().clone();

        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| transport_error(&what, timeout, err))?
        {
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(StepError::permanent(format!(
                    "{what}: response body exceeds {MAX_BODY_BYTES} bytes"
                ))
                .with_code("http_body_too_large"));
            }
            bytes.extend_from_slice(&chunk);
        }

        if !request.expects(status) {
            return Err(status_error(&what, status, &headers, &bytes));
        }

        Ok(json!({
            "status": status.as_u16(),
            "headers": headers_json(&headers),
            "body": decode_body(&headers, &bytes),
        }))
    }
}

/// Decides what an unexpected status means for the next attempt.
fn status_error(what: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> StepError {
    let mut message = format!("{what} returned {status}");
    let snippet: String = String::from_utf8_lossy(body)
        .chars()
        .take(BODY_SNIPPET_CHARS)
        .collect();
    if !snippet.trim().is_empty() {
        let _ = write!(message, ": {}", snippet.trim());
    }
    let code = format!("http_status_{}", status.as_u16());

    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        // The server's word, clamped: any number must yield a usable delay.
        .map(|secs| fulfil_core::time::clamp(Duration::from_secs(secs)));
    let error = match (status, retry_after) {
        (StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE, Some(after)) => {
            StepError::retry_after(message, after)
        }
        (StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS, _) => {
            StepError::retryable(message)
        }
        (status, _) if status.is_server_error() => StepError::retryable(message),
        _ => StepError::permanent(message),
    };
    error.with_code(code)
}

/// Maps a failure to send or read into a retry decision.
fn transport_error(what: &str, timeout: Duration, err: reqwest::Error) -> StepError {
    let timed_out = err.is_timeout();
    let connect = err.is_connect();
    let builder = err.is_builder();
    let redirect = err.is_redirect();
    // The URL may carry secrets in its query; `what` already names the target.
    let detail = error_chain(&err.without_url());
    if timed_out {
        StepError::retryable(format!(
            "{what} timed out after {}: {detail}",
            humantime::format_duration(timeout)
        ))
        .with_code("http_timeout")
    } else if connect {
        StepError::retryable(format!("{what}: cannot connect: {detail}")).with_code("http_connect")
    } else if builder {
        StepError::invalid_input("", format!("{what}: {detail}"))
    } else if redirect {
        StepError::permanent(format!("{what}: {detail}")).with_code("http_redirect")
    } else {
        StepError::retryable(format!("{what}: {detail}")).with_code("http_request")
    }
}

/// The error and its sources, most general first: reqwest's own message
/// rarely says what actually failed.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            let _ = write!(text, ": {cause_text}");
        }
        source = cause.source();
    }
    text
}

fn headers_json(headers: &HeaderMap) -> Value {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        out.entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    json!(out)
}

fn decode_body(headers: &HeaderMap, bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_ascii_lowercase);
    let says_json = content_type
        .as_deref()
        .is_none_or(|ct| ct.contains("/json") || ct.contains("+json"));
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value) if says_json || value.is_object() || value.is_array() => value,
        _ => Value::String(String::from_utf8_lossy(bytes).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::RetryDecision;
    use axum::{
        Json, Router,
        http::{HeaderMap as AxumHeaders, StatusCode as AxumStatus},
        response::IntoResponse,
        routing::{get, post},
    };

    fn task() -> TaskContext {
        TaskContext::from_task(&crate::test_support::task_message(
            "http",
            "provision",
            chrono::Duration::seconds(60),
        ))
    }

    async fn serve() -> String {
        let app = Router::new()
            .route(
                "/things",
                post(|headers: AxumHeaders, Json(body): Json<Value>| async move {
                    let token = headers
                        .get("x-token")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    (
                        AxumStatus::CREATED,
                        Json(json!({"got": body, "token": token})),
                    )
                }),
            )
            .route(
                "/missing",
                get(|| async { (AxumStatus::NOT_FOUND, "no such thing") }),
            )
            .route(
                "/down",
                get(|| async { (AxumStatus::SERVICE_UNAVAILABLE, "try later") }),
            )
            .route(
                "/busy",
                get(|| async {
                    (
                        AxumStatus::TOO_MANY_REQUESTS,
                        [("retry-after", "7")],
                        "slow down",
                    )
                        .into_response()
                }),
            )
            .route("/text", get(|| async { "hello" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    "late"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[test]
    fn a_huge_retry_after_is_clamped() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "10000000000000".parse().unwrap());
        let err = status_error("GET x", StatusCode::TOO_MANY_REQUESTS, &headers, b"");
        assert_eq!(
            err.decision(),
            RetryDecision::RetryAfter(fulfil_core::time::MAX_DURATION)
        );
        let failure = fulfil_core::wire::StepFailure::from(err);
        assert_eq!(
            failure.retry_after_ms,
            Some(fulfil_core::time::as_millis_u64(
                fulfil_core::time::MAX_DURATION
            ))
        );
    }

    async fn call(input: Value) -> Result<Value, StepError> {
        let http = Http::new().unwrap();
        tokio::time::timeout(Duration::from_secs(20), http.handle(&task(), input))
            .await
            .expect("the handler finished in time")
    }

    #[tokio::test]
    async fn success_parses_json_and_statuses_map_to_retry_decisions() {
        let base = serve().await;

        let out = call(json!({
            "method": "post",
            "url": format!("{base}/things?secret=s3"),
            "headers": {"X-Token": "abc"},
            "body": {"name": "db1", "size": "small"},
        }))
        .await
        .unwrap();
        assert_eq!(out["status"], 201);
        assert_eq!(
            out["body"],
            json!({"got": {"name": "db1", "size": "small"}, "token": "abc"})
        );
        assert_eq!(out["headers"]["content-type"], "application/json");

        let out = call(json!({"url": format!("{base}/text")})).await.unwrap();
        assert_eq!(out["status"], 200);
        assert_eq!(out["body"], "hello");

        // An explicitly expected status is a success, whatever its class.
        let out = call(json!({"url": format!("{base}/missing"), "expect_status": 404}))
            .await
            .unwrap();
        assert_eq!(out["status"], 404);

        let err = call(json!({"url": format!("{base}/missing?secret=s3")}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("http_status_404"));
        assert_eq!(err.decision(), RetryDecision::Permanent);
        assert!(err.message().contains("no such thing"), "{}", err.message());
        assert!(
            !err.message().contains("s3"),
            "query leaked: {}",
            err.message()
        );

        let err = call(json!({"url": format!("{base}/down")}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("http_status_503"));
        assert_eq!(err.decision(), RetryDecision::Retryable);

        let err = call(json!({"url": format!("{base}/busy")}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("http_status_429"));
        assert_eq!(
            err.decision(),
            RetryDecision::RetryAfter(Duration::from_secs(7))
        );

        // 2xx is not enough when the step expects a specific code.
        let err = call(json!({"url": format!("{base}/text"), "expect_status": [201, 204]}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("http_status_200"));
        assert!(!err.is_retryable());

        let err = call(json!({"url": format!("{base}/slow"), "timeout": "200ms"}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("http_timeout"));
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn connection_refused_is_retryable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);

        let err = call(json!({"url": format!("http://{addr}/x")}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("http_connect"), "{err}");
        assert_eq!(err.decision(), RetryDecision::Retryable);
    }

    #[tokio::test]
    async fn bad_input_is_permanent_and_names_the_field() {
        let cases = [
            (json!({}), "url"),
            (json!({"url": "not a url"}), "`url`"),
            (json!({"url": "ftp://example.com/x"}), "`url`"),
            (json!({"url": "http://x", "method": "GE T"}), "`method`"),
            (json!({"url": "http://x", "timeout": "soon"}), "`timeout`"),
            (
                json!({"url": "http://x", "expect_status": [200, 9000]}),
                "`expect_status[1]`",
            ),
            (
                json!({"url": "http://x", "headers": {"bad name": "v"}}),
                "`headers.bad name`",
            ),
            (
                json!({"url": "http://x", "headers": {"X-A": {"no": 1}}}),
                "`headers.X-A`",
            ),
            (json!({"url": "http://x", "header": {}}), "header"),
        ];
        for (input, field) in cases {
            let err = call(input.clone()).await.unwrap_err();
            assert_eq!(err.code(), Some("invalid_input"), "{input}: {err}");
            assert!(!err.is_retryable(), "{input}");
            assert!(err.message().contains(field), "{input}: {}", err.message());
        }
    }
}
