//! Errors as `application/problem+json` (RFC 9457), with a stable `type` per
//! kind of problem so scripts and people can search for it.
//!
//! Every answer carries `code` too, the last segment of `type`, so a script
//! can match on it without parsing a URI; the OpenAPI document's `Problem`
//! schema lists them all.
//!
//! The codes (`type: https://fulfil.dev/problems/<code>`), one
//! [`ProblemCode`] each; a new one is added to the enum, its `ALL` and this
//! table together (a test checks they agree), and a spelling never changes:
//!
//! | code | status | meaning |
//! |---|---|---|
//! | `bad-request` | 400 | the request is wrong in a way the detail names |
//! | `invalid-json` | 400 | the body is not JSON (syntax, nesting over 128, not UTF-8) |
//! | `invalid-body` | 422 | JSON of the wrong shape; `errors[].pointer` says where |
//! | `invalid-query` | 400 | a query parameter is unknown, repeated or of the wrong type |
//! | `invalid-path` | 400 | a path parameter is not UTF-8 |
//! | `nul-character` | 400 | a NUL (U+0000) in a body, path or query; `pointer`, `parameter` or `offset` says where |
//! | `unsupported-media-type` | 415 | the route takes JSON and the body is labelled otherwise |
//! | `payload-too-large` | 413 | the body is over the limit (`limit_bytes`), on every route |
//! | `request-too-large` | 413 | the request's parameters could never travel in a task message |
//! | `not-found` | 404 | no such route, Promise, request or run |
//! | `method-not-allowed` | 405 | the route takes other methods (`Allow`, `allowed`) |
//! | `invalid-params` | 422 | the parameters break the Promise's schema; `errors[].pointer` |
//! | `invalid-promise` | 422 | the Promise does not compile; `errors[].path` |
//! | `idempotency-conflict` | 409 | the key was used with other parameters |
//! | `version-conflict` | 409 | a Promise version's content is immutable |
//! | `run-state-conflict` | 409 | the run's status does not allow the operation |
//! | `request-not-live` | 409 | the request is being deleted or deleted; `status` says which |
//! | `unknown-step` | 422 | the run's Promise has no such step |
//! | `invalid-event` | 422 | the body is not a CloudEvent 1.0 (structured or binary mode) |
//! | `trigger-subject-refused` | 422 | NATS cannot capture a trigger's subject (another stream holds it) |
//! | `invalid-schedule` | 422 | the Schedule document is not valid; `errors[].path` |
//! | `overloaded` | 503 | shed before anything was stored; `Retry-After` |
//! | `unavailable` | 503 | a dependency failed; `error_id`, `Retry-After` |
//! | `timeout` | 504 | no answer within 30 s; the outcome is unknown |
//! | `internal` | 500 | a server bug; `error_id` names its log line, the text is never sent |
//! | `step-not-waiting` | 409 | the step is not waiting (not started, or already decided); `step_status` |
//! | `not-an-approval` | 409 | the step is not an `approval` step, so nobody decides it |
//! | `not-an-approver` | 403 | the principal is none of the step's `approvers` (`principal`, `approvers`) |
//! | `requester-cannot-approve` | 403 | the principal filed the request and the step does not `allow_requester` |
//! | `already-decided` | 409 | the principal already decided this step; a second decision does not count |
//! | `unauthenticated` | 401 | no bearer token, or one that is unknown, revoked or expired; `WWW-Authenticate: Bearer` |
//! | `forbidden` | 403 | the caller lacks a role (`missing_role`) or acts outside its team (`team`, `owner`) |
//! | `policy-denied` | 403 | admission policies refused the request; `violations[]` gives each rule's message |
//! | `invalid-policy` | 422 | the Policy document is not valid; `errors[].path` |
//! | `token-name-taken` | 409 | a live API token already has this name |
//! | `unknown-version` | 422 | the Promise has no such version (`promise`, `version`) |
//! | `invalid-selector` | 422 | a rollout's selector does not compile, or fails for a request (`selector`, `request_id`) |
//! | `rollout-in-progress` | 409 | another rollout of the Promise is running or paused (`rollout_id`) |
//! | `rollout-finished` | 409 | the rollout ended; it cannot be paused, resumed or cancelled (`rollout_status`) |

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The closed set of problem codes: each answer's `type` is
/// `https://fulfil.dev/problems/<code>`. The spellings are a public
/// contract that scripts match on; none ever changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemCode {
    /// 400: the request is wrong in a way the detail names.
    BadRequest,
    /// 400: the body is not JSON (syntax, nesting over 128, not UTF-8).
    InvalidJson,
    /// 422: JSON of the wrong shape; `errors[].pointer` says where.
    InvalidBody,
    /// 400: a query parameter is unknown, repeated or of the wrong type.
    InvalidQuery,
    /// 400: a path parameter is not UTF-8.
    InvalidPath,
    /// 400: a NUL (U+0000) in a body, path or query.
    NulCharacter,
    /// 415: the route takes JSON and the body is labelled otherwise.
    UnsupportedMediaType,
    /// 413: the body is over the limit (`limit_bytes`).
    PayloadTooLarge,
    /// 413: the request's parameters could never travel in a task message.
    RequestTooLarge,
    /// 404: no such route, Promise, request or run.
    NotFound,
    /// 405: the route takes other methods (`Allow`, `allowed`).
    MethodNotAllowed,
    /// 422: the parameters break the Promise's schema.
    InvalidParams,
    /// 422: the Promise does not compile; `errors[].path`.
    InvalidPromise,
    /// 409: the idempotency key was used with other parameters.
    IdempotencyConflict,
    /// 409: a Promise version's content is immutable.
    VersionConflict,
    /// 409: the run's status does not allow the operation.
    RunStateConflict,
    /// 409: the request is being deleted or deleted.
    RequestNotLive,
    /// 422: the run's Promise has no such step.
    UnknownStep,
    /// 422: the body is not a CloudEvent 1.0.
    InvalidEvent,
    /// 422: NATS cannot capture a trigger's subject.
    TriggerSubjectRefused,
    /// 422: the Schedule document is not valid; `errors[].path`.
    InvalidSchedule,
    /// 503: shed before anything was stored.
    Overloaded,
    /// 503: a dependency failed; `error_id`.
    Unavailable,
    /// 504: no answer in time; the outcome is unknown.
    Timeout,
    /// 500: a server bug; `error_id` names its log line.
    Internal,
    /// 409: the step is not waiting (not started, or already decided).
    StepNotWaiting,
    /// 409: the step is not an `approval` step.
    NotAnApproval,
    /// 403: the principal is none of the step's approvers.
    NotAnApprover,
    /// 403: the requester may not approve their own request.
    RequesterCannotApprove,
    /// 409: the principal already decided this step.
    AlreadyDecided,
    /// 401: no valid bearer token.
    Unauthenticated,
    /// 403: a missing role, or an action outside the caller's team.
    Forbidden,
    /// 403: admission policies refused the request.
    PolicyDenied,
    /// 422: the Policy document is not valid.
    InvalidPolicy,
    /// 409: a live API token already has this name.
    TokenNameTaken,
    /// 422: the Promise has no such version.
    UnknownVersion,
    /// 422: a rollout's selector does not compile, or fails for a request.
    InvalidSelector,
    /// 409: another rollout of the Promise is running or paused.
    RolloutInProgress,
    /// 409: the rollout ended.
    RolloutFinished,
}

impl ProblemCode {
    /// Every code, in the order of the module's table.
    pub const ALL: [ProblemCode; 39] = [
        Self::BadRequest,
        Self::InvalidJson,
        Self::InvalidBody,
        Self::InvalidQuery,
        Self::InvalidPath,
        Self::NulCharacter,
        Self::UnsupportedMediaType,
        Self::PayloadTooLarge,
        Self::RequestTooLarge,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::InvalidParams,
        Self::InvalidPromise,
        Self::IdempotencyConflict,
        Self::VersionConflict,
        Self::RunStateConflict,
        Self::RequestNotLive,
        Self::UnknownStep,
        Self::InvalidEvent,
        Self::TriggerSubjectRefused,
        Self::InvalidSchedule,
        Self::Overloaded,
        Self::Unavailable,
        Self::Timeout,
        Self::Internal,
        Self::StepNotWaiting,
        Self::NotAnApproval,
        Self::NotAnApprover,
        Self::RequesterCannotApprove,
        Self::AlreadyDecided,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::PolicyDenied,
        Self::InvalidPolicy,
        Self::TokenNameTaken,
        Self::UnknownVersion,
        Self::InvalidSelector,
        Self::RolloutInProgress,
        Self::RolloutFinished,
    ];

    /// The code as it appears on the wire, the last segment of `type`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::InvalidJson => "invalid-json",
            Self::InvalidBody => "invalid-body",
            Self::InvalidQuery => "invalid-query",
            Self::InvalidPath => "invalid-path",
            Self::NulCharacter => "nul-character",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::PayloadTooLarge => "payload-too-large",
            Self::RequestTooLarge => "request-too-large",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::InvalidParams => "invalid-params",
            Self::InvalidPromise => "invalid-promise",
            Self::IdempotencyConflict => "idempotency-conflict",
            Self::VersionConflict => "version-conflict",
            Self::RunStateConflict => "run-state-conflict",
            Self::RequestNotLive => "request-not-live",
            Self::UnknownStep => "unknown-step",
            Self::InvalidEvent => "invalid-event",
            Self::TriggerSubjectRefused => "trigger-subject-refused",
            Self::InvalidSchedule => "invalid-schedule",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Internal => "internal",
            Self::StepNotWaiting => "step-not-waiting",
            Self::NotAnApproval => "not-an-approval",
            Self::NotAnApprover => "not-an-approver",
            Self::RequesterCannotApprove => "requester-cannot-approve",
            Self::AlreadyDecided => "already-decided",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::PolicyDenied => "policy-denied",
            Self::InvalidPolicy => "invalid-policy",
            Self::TokenNameTaken => "token-name-taken",
            Self::UnknownVersion => "unknown-version",
            Self::InvalidSelector => "invalid-selector",
            Self::RolloutInProgress => "rollout-in-progress",
            Self::RolloutFinished => "rollout-finished",
        }
    }

    /// The problem's `type` URI.
    pub fn type_uri(self) -> String {
        format!("https://fulfil.dev/problems/{}", self.as_str())
    }
}

impl std::fmt::Display for ProblemCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Written as its wire spelling, as in `type`.
impl serde::Serialize for ProblemCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The codes as a string enum, so a client generated from the OpenAPI
/// document knows every one.
impl utoipa::PartialSchema for ProblemCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Self::ALL.iter().map(|c| c.as_str())))
            .description(Some(
                "The problem's stable code, the last segment of `type`; see docs/api.md",
            ))
            .into()
    }
}

impl utoipa::ToSchema for ProblemCode {}

/// An `application/problem+json` body as sent: the RFC 9457 members, the
/// `code`, and the extension members some problems add. More may be added,
/// so the schema allows other members.
impl utoipa::PartialSchema for Problem {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
        let string = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
        };
        let integer = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .description(Some(description))
        };
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "An error (RFC 9457); `code` says which, the other members where and why",
            ))
            .property(
                "type",
                string("https://fulfil.dev/problems/<code>")
                    .enum_values(Some(ProblemCode::ALL.iter().map(|c| c.type_uri()))),
            )
            .required("type")
            .property(
                "code",
                utoipa::openapi::Ref::from_schema_name("ProblemCode"),
            )
            .required("code")
            .property("title", string("A short summary of the kind of problem"))
            .required("title")
            .property(
                "status",
                integer("The HTTP status")
                    .minimum(Some(400))
                    .maximum(Some(599)),
            )
            .required("status")
            .property(
                "detail",
                string("What was wrong with this request, in words"),
            )
            .required("detail")
            .property(
                "errors",
                ArrayBuilder::new()
                    .items(ObjectBuilder::new().schema_type(Type::Object))
                    .description(Some(
                        "Every validation problem, each at its `pointer` (JSON) or `path` (YAML)",
                    )),
            )
            .property(
                "error_id",
                string("Where a server failure is logged (500, 503)").format(Some(
                    utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Uuid),
                )),
            )
            .property("limit_bytes", integer("The body limit (413)"))
            .property("allowed", string("The methods the route takes (405)"))
            .property("parameter", string("The query or path parameter at fault"))
            .property("pointer", string("The JSON pointer of the value at fault"))
            .property(
                "offset",
                integer("The byte offset of the fault in a text body"),
            )
            .into()
    }
}

impl utoipa::ToSchema for Problem {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        schemas.push(("ProblemCode".to_string(), ProblemCode::schema()));
    }
}

/// One problem answer.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// Rendered as `type: https://fulfil.dev/problems/<code>`.
    pub code: ProblemCode,
    pub title: &'static str,
    pub detail: String,
    /// Extra members, e.g. `errors` with every validation problem.
    pub extra: Map<String, Value>,
    /// Seconds to wait before retrying, sent as `Retry-After`.
    pub retry_after_s: Option<u32>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        code: ProblemCode,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
            extra: Map::new(),
            retry_after_s: None,
        }
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ProblemCode::NotFound,
            "Not found",
            format!("no {what} {id:?}"),
        )
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ProblemCode::BadRequest,
            "Bad request",
            detail,
        )
    }

    /// A failure of the server, not of the request. The answer never carries
    /// the error's text (it can hold SQL, hostnames or the caller's own input
    /// echoed by a driver); it carries an `error_id` under which the text is
    /// logged at ERROR, so an operator can find it from a user's report.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        let error_id = uuid::Uuid::now_v7();
        tracing::error!(%error_id, %error, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ProblemCode::Internal,
            "Internal error",
            format!("the server failed; the error is logged under error_id {error_id}"),
        )
        .with("error_id", json!(error_id))
    }

    /// A dependency (Postgres, NATS) failed in a way worth retrying. As for
    /// [`Problem::internal`], its text is logged under an `error_id`, not sent.
    pub fn unavailable(error: &dyn std::fmt::Display) -> Self {
        let error_id = uuid::Uuid::now_v7();
        tracing::warn!(%error_id, %error, "dependency unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ProblemCode::Unavailable,
            "Service unavailable",
            format!(
                "a dependency of the server is unavailable; retry later (logged under error_id {error_id})"
            ),
        )
        .with("error_id", json!(error_id))
        .retry_after(1)
    }

    /// Load shedding: the request was turned away unstored.
    pub fn overloaded(error: &dyn std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ProblemCode::Overloaded,
            "Overloaded",
            error.to_string(),
        )
        .retry_after(1)
    }

    /// 401: the caller did not prove who it is; `detail` says what was
    /// wrong with what it sent (never the token itself).
    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ProblemCode::Unauthenticated,
            "Unauthenticated",
            detail,
        )
    }

    /// 403: the caller lacks `role` for what it asked.
    pub fn missing_role(role: fulfil_core::access::Role, action: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ProblemCode::Forbidden,
            "Forbidden",
            format!("{action} needs the {role} role, which this caller does not hold"),
        )
        .with("missing_role", json!(role.as_str()))
    }

    /// 403: the caller holds the role but acts outside its team.
    pub fn outside_team(
        detail: impl Into<String>,
        team: Option<&str>,
        owner: Option<&str>,
    ) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ProblemCode::Forbidden,
            "Forbidden",
            detail,
        )
        .with("team", json!(team))
        .with("owner", json!(owner))
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": self.code.type_uri(),
            "code": self.code,
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Value::Object(map) = &mut body {
            map.extend(self.extra);
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.code == ProblemCode::Unauthenticated {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Makes any error answer without a JSON body into a problem, keeping its
/// status and headers (`Allow` on a 405, `Retry-After`): axum's own answers
/// (a wrong method, a path no route takes) and the timeout's are
/// `text/plain` or empty. Their body is dropped, so no text of unknown
/// origin reaches the caller. JSON answers were written by a handler on
/// purpose and pass: problems, and `/readyz`'s 503 listing what is down.
/// A 413 names `max_body_bytes`, the router's body limit.
pub async fn every_error_a_problem(response: Response, max_body_bytes: usize) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim())
        .is_some_and(|v| v == "application/json" || v.ends_with("+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let problem = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string();
            Problem::new(
                status,
                ProblemCode::MethodNotAllowed,
                "Method not allowed",
                format!("this route does not take that method; it takes: {allowed}"),
            )
            .with("allowed", json!(allowed))
        }
        StatusCode::NOT_FOUND => not_a_route(),
        StatusCode::PAYLOAD_TOO_LARGE => crate::extract::too_large(max_body_bytes),
        StatusCode::GATEWAY_TIMEOUT => Problem::new(
            status,
            ProblemCode::Timeout,
            "Timeout",
            "the server did not answer within 30 s; what the request changed, if anything, is unknown: read it back before retrying",
        ),
        status if status.is_server_error() => {
            Problem::internal(&format!("a layer answered {status} without a problem body"))
        }
        status => Problem::new(
            status,
            ProblemCode::BadRequest,
            "Bad request",
            format!(
                "the request was refused ({})",
                status.canonical_reason().unwrap_or("client error")
            ),
        ),
    };
    let mut answer = problem.into_response();
    // The problem's own headers (content type, Retry-After) over the
    // original's, which keep the rest (Allow).
    for (name, value) in answer.headers() {
        parts.headers.insert(name, value.clone());
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = std::mem::take(answer.body_mut());
    Response::from_parts(parts, body)
}

/// The answer to a handler that panicked, for tower-http's
/// `CatchPanicLayer`; without it the connection drops with no answer. As
/// for [`Problem::internal`], the panic message is logged at ERROR under an
/// `error_id` the caller gets, and never sent: it can hold anything.
pub fn from_panic(payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = if let Some(text) = payload.downcast_ref::<&str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.as_str()
    } else {
        "non-string panic payload"
    };
    Problem::internal(&format!("handler panicked: {message}")).into_response()
}

/// The answer to a path no route takes.
pub fn not_a_route() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        ProblemCode::NotFound,
        "Not found",
        "no such route; see the README for the /v1 routes",
    )
}

/// Database errors that mean "try again" (503) rather than "bug" (500): the
/// transient ones, as `fulfil_engine::db::is_transient` classifies them for
/// the whole system. Nothing was committed in any of these.
pub fn from_db(error: &sqlx::Error) -> Problem {
    if fulfil_engine::db::is_transient(error) {
        Problem::unavailable(error)
    } else {
        Problem::internal(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_keep_their_spelling_and_the_table_lists_them_all() {
        // The spellings are a public contract: pinned here, not derived.
        let spelled: Vec<&str> = ProblemCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            spelled,
            [
                "bad-request",
                "invalid-json",
                "invalid-body",
                "invalid-query",
                "invalid-path",
                "nul-character",
                "unsupported-media-type",
                "payload-too-large",
                "request-too-large",
                "not-found",
                "method-not-allowed",
                "invalid-params",
                "invalid-promise",
                "idempotency-conflict",
                "version-conflict",
                "run-state-conflict",
                "request-not-live",
                "unknown-step",
                "invalid-event",
                "trigger-subject-refused",
                "invalid-schedule",
                "overloaded",
                "unavailable",
                "timeout",
                "internal",
                "step-not-waiting",
                "not-an-approval",
                "not-an-approver",
                "requester-cannot-approve",
                "already-decided",
                "unauthenticated",
                "forbidden",
                "policy-denied",
                "invalid-policy",
                "token-name-taken",
                "unknown-version",
                "invalid-selector",
                "rollout-in-progress",
                "rollout-finished",
            ]
        );
        assert_eq!(
            serde_json::to_value(ProblemCode::RunStateConflict).ok(),
            Some(json!("run-state-conflict"))
        );

        // The module doc's table, in the enum's order, so neither drifts.
        let table: Vec<&str> = include_str!("problem.rs")
            .lines()
            .take_while(|line| line.starts_with("//!"))
            .filter_map(|line| line.strip_prefix("//! | `"))
            .filter_map(|row| row.split('`').next())
            .collect();
        assert_eq!(table, spelled);

        assert_eq!(
            ProblemCode::VersionConflict.type_uri(),
            "https://fulfil.dev/problems/version-conflict"
        );
    }

    #[test]
    fn retryable_problems_say_when_to_retry() {
        let shed = Problem::overloaded(&"queue full").into_response();
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            shed.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from_static("1"))
        );
        let bug = Problem::internal(&"boom").into_response();
        assert_eq!(bug.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(bug.headers().get(header::RETRY_AFTER).is_none());
    }

    #[tokio::test]
    async fn bare_error_answers_become_problems_and_json_ones_pass() {
        let _logs = crate::test_logs::installed();
        let mut bare = (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed").into_response();
        bare.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
        let answer = every_error_a_problem(bare, crate::extract::MAX_BODY_BYTES).await;
        assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            answer.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/problem+json"))
        );
        assert_eq!(
            answer.headers().get(header::ALLOW),
            Some(&HeaderValue::from_static("GET,HEAD"))
        );

        let not_ready = (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not ready" })),
        )
            .into_response();
        let answer = every_error_a_problem(not_ready, crate::extract::MAX_BODY_BYTES).await;
        assert_eq!(
            answer.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/json"))
        );
    }

    #[test]
    fn server_failures_carry_an_error_id_and_never_the_error_text() {
        let _logs = crate::test_logs::installed();
        let secret = r#"invalid byte sequence for encoding "UTF8": 0x00"#;
        for problem in [Problem::internal(&secret), Problem::unavailable(&secret)] {
            assert!(!problem.detail.contains("UTF8"), "{}", problem.detail);
            let id = problem.extra["error_id"].as_str().unwrap_or_default();
            assert!(uuid::Uuid::parse_str(id).is_ok(), "{:?}", problem.extra);
            assert!(problem.detail.contains(id), "{}", problem.detail);
        }
    }
}
