//! Calling a REST operation in process, and a REST problem as a gRPC
//! status: the one path by which gRPC answers what REST answers.
//!
//! The call carries the caller's `authorization` and `fulfil-actor`
//! metadata as headers, so whatever the REST edge checks applies to gRPC.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::Value;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tower::ServiceExt;

/// Metadata passed on as headers of the same name.
const FORWARDED: [&str; 2] = ["authorization", "fulfil-actor"];
/// The metadata key holding a problem's code.
pub const PROBLEM_CODE: &str = "fulfil-problem-code";
/// Most bytes of a REST answer read.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// One REST call: method, path (segments already escaped with
/// [`segment`]), query and body.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Content type and bytes.
    pub body: Option<(&'static str, Vec<u8>)>,
}

impl Call {
    pub fn new(method: Method, path: String) -> Self {
        Self {
            method,
            path,
            query: Vec::new(),
            body: None,
        }
    }

    pub fn query(mut self, name: &str, value: impl ToString) -> Self {
        self.query.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds `name=value` unless `value` is empty (proto3's "not given").
    pub fn query_if(self, name: &str, value: &str) -> Self {
        if value.is_empty() {
            self
        } else {
            self.query(name, value)
        }
    }

    pub fn json(mut self, body: &Value) -> Self {
        self.body = Some(("application/json", body.to_string().into_bytes()));
        self
    }

    pub fn text(mut self, content_type: &'static str, body: String) -> Self {
        self.body = Some((content_type, body.into_bytes()));
        self
    }

    /// Sends the call through `router`; the answer's JSON, or its problem
    /// as a status.
    pub async fn send(
        self,
        router: &axum::Router,
        metadata: &MetadataMap,
    ) -> Result<Value, Status> {
        let mut uri = self.path;
        if !self.query.is_empty() {
            let pairs: Vec<String> = self
                .query
                .iter()
                .map(|(k, v)| format!("{}={}", segment(k), segment(v)))
                .collect();
            uri.push('?');
            uri.push_str(&pairs.join("&"));
        }
        let mut request = Request::builder().method(self.method).uri(&uri);
        for name in FORWARDED {
            if let Some(value) = metadata.get(name).and_then(|v| v.to_str().ok()) {
                request = request.header(name, value);
            }
        }
        let body = match self.body {
            Some((content_type, bytes)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                Body::from(bytes)
            }
            None => Body::empty(),
        };
        let request = request
            .body(body)
            .map_err(|e| Status::invalid_argument(format!("bad-request: {e}")))?;
        let answer = router
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| Status::internal(format!("internal: {e}")))?;
        let status = answer.status();
        let bytes = axum::body::to_bytes(answer.into_body(), MAX_ANSWER)
            .await
            .map_err(|e| Status::internal(format!("internal: reading the answer: {e}")))?;
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| Status::internal(format!("internal: answer is not JSON: {e}")))?
        };
        if status.is_success() {
            Ok(json)
        } else {
            Err(problem_status(status, &json))
        }
    }
}

/// `text` percent-encoded for a path segment or query part: everything but
/// RFC 3986's unreserved characters, so a name cannot reach another route.
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A problem+json answer as a status: the code leads the message and is
/// the metadata [`PROBLEM_CODE`].
pub fn problem_status(status: StatusCode, problem: &Value) -> Status {
    let code = problem["type"]
        .as_str()
        .and_then(|t| t.rsplit('/').next())
        .unwrap_or("internal");
    let detail = problem["detail"]
        .as_str()
        .or_else(|| problem["title"].as_str())
        .unwrap_or_default();
    status_of(status, code, detail)
}

/// A [`Problem`](fulfil_api::Problem) made in process as a status.
pub fn from_problem(problem: &fulfil_api::Problem) -> Status {
    status_of(problem.status, problem.code.as_str(), &problem.detail)
}

fn status_of(status: StatusCode, code: &str, detail: &str) -> Status {
    let mut out = Status::new(grpc_code(status, code), format!("{code}: {detail}"));
    if let Ok(value) = MetadataValue::try_from(code) {
        out.metadata_mut().insert(PROBLEM_CODE, value);
    }
    out
}

/// The gRPC code of an HTTP status (and, for 409, of the problem code).
pub fn grpc_code(status: StatusCode, code: &str) -> Code {
    match status.as_u16() {
        400 | 405 | 415 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 if matches!(
            code,
            "idempotency-conflict" | "version-conflict" | "already-decided"
        ) =>
        {
            Code::AlreadyExists
        }
        409 => Code::FailedPrecondition,
        413 => Code::OutOfRange,
        429 | 503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn problems_map_to_codes_with_their_code_in_message_and_metadata() {
        let problem = json!({"type": "https://fulfil.dev/problems/invalid-params",
                             "status": 422, "detail": "/size: must be >= 1"});
        let status = problem_status(StatusCode::UNPROCESSABLE_ENTITY, &problem);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "invalid-params: /size: must be >= 1");
        assert_eq!(
            status
                .metadata()
                .get(PROBLEM_CODE)
                .and_then(|v| v.to_str().ok()),
            Some("invalid-params")
        );
        assert_eq!(
            grpc_code(StatusCode::CONFLICT, "run-state-conflict"),
            Code::FailedPrecondition
        );
        assert_eq!(
            grpc_code(StatusCode::CONFLICT, "idempotency-conflict"),
            Code::AlreadyExists
        );
        assert_eq!(
            grpc_code(StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Code::Unavailable
        );
        assert_eq!(segment("a/b c?d"), "a%2Fb%20c%3Fd");
    }
}
