//! Filing and reading Promise requests.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fulfil_engine::deletion::{DeleteError, delete_request};
use fulfil_engine::inspect::{self, RequestFilter};
use fulfil_engine::reconcile::{ReconcileError, reconcile_now};
use fulfil_engine::requests::{NewRequest, RequestError, create_request};
use serde::Deserialize;
use serde_json::{Value, json};

use fulfil_core::ids::RequestId;
use fulfil_core::status::RequestStatus;

use super::{inspect_error, parse_id};
use crate::extract::{self, Path, Query};
use crate::{ApiState, Problem, ProblemCode, model};

fn request_error(e: RequestError) -> Problem {
    match e {
        RequestError::UnknownPromise(name) => Problem::not_found("Promise", &name),
        RequestError::InvalidParams { promise, violations } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidParams,
            "Invalid parameters",
            format!(
                "the parameters do not match Promise {promise}'s schema ({} violation(s)); nothing was stored",
                violations.len()
            ),
        )
        .with(
            "errors",
            Value::Array(
                violations
                    .iter()
                    .map(|v| json!({ "pointer": format!("/params{}", v.pointer), "detail": v.message }))
                    .collect(),
            ),
        ),
        RequestError::IdempotencyConflict { ref key, request_id } => Problem::new(
            StatusCode::CONFLICT,
            ProblemCode::IdempotencyConflict,
            "Idempotency key reused",
            e.to_string(),
        )
        .with("idempotency_key", json!(key))
        .with("request_id", json!(request_id)),
        RequestError::InvalidIdempotencyKey(_) => Problem::bad_request(e.to_string()),
        RequestError::Promise(e) => super::promises::promise_error(e),
        RequestError::IntakeStopped => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ProblemCode::Unavailable,
            "Service unavailable",
            e.to_string(),
        )
        .retry_after(1),
        RequestError::Overloaded(_) | RequestError::HeadMoved(_) => Problem::overloaded(&e),
        RequestError::Run(fulfil_engine::run::RunError::Db(e)) => crate::problem::from_db(&e),
        RequestError::Run(e) => Problem::internal(&e),
        RequestError::Internal(_) => Problem::internal(&e),
        RequestError::TooLarge { .. } => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ProblemCode::RequestTooLarge,
            "Request too large",
            e.to_string(),
        ),
    }
}

/// `POST /v1/promises/{name}/requests`: 202 once the request is durable.
pub async fn create(
    State(state): State<ApiState>,
    Path(promise): Path<String>,
    headers: HeaderMap,
    extract::Json(body): extract::Json<model::CreateRequest>,
) -> Result<Response, Problem> {
    let header_key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Problem::bad_request("Idempotency-Key header is not valid text"))?
                .to_string(),
        ),
        None => None,
    };
    let idempotency_key = match (header_key, body.idempotency_key) {
        (Some(h), Some(b)) if h != b => {
            return Err(Problem::bad_request(
                "the Idempotency-Key header and the idempotency_key field differ; send one",
            ));
        }
        (h, b) => h.or(b),
    };
    if !body.params.is_object() && !body.params.is_null() {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidParams,
            "Invalid parameters",
            "params must be a JSON object",
        ));
    }
    let accepted = create_request(
        &state.engine,
        NewRequest {
            promise,
            params: body.params,
            idempotency_key,
            // Whoever filed it, as `allow_requester: false` compares it
            // with an approval's principal (DESIGN.md "Waits").
            actor: super::runs::actor(&headers),
            traceparent: None,
        },
    )
    .await
    .map_err(request_error)?;
    let (request_id, replayed) = (accepted.request_id, accepted.replayed);
    let mut response =
        (StatusCode::ACCEPTED, Json(model::Accepted::from(accepted))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/requests/{request_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

pub async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<model::Request>, Problem> {
    let request_id: RequestId = parse_id("request", &id)?;
    let request = inspect::get_request(state.engine.pool(), request_id)
        .await
        .map_err(inspect_error)?
        .ok_or_else(|| Problem::not_found("request", &id))?;
    Ok(Json(request.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

/// `DELETE /v1/requests/{id}[?force=true]`: 202 with the delete run (see
/// `fulfil_engine::deletion`); deleting twice answers the same run.
pub async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let request_id: RequestId = parse_id("request", &id)?;
    let actor = super::runs::actor(&headers);
    let deletion = delete_request(&state.engine, request_id, &actor, q.force)
        .await
        .map_err(|e| match e {
            DeleteError::NotFound(_) => Problem::not_found("request", &id),
            DeleteError::Run(fulfil_engine::run::RunError::Db(e)) => crate::problem::from_db(&e),
            DeleteError::Run(e) => Problem::internal(&e),
        })?;
    let run_id = deletion.run_id;
    let mut response =
        (StatusCode::ACCEPTED, Json(model::Deletion::from(deletion))).into_response();
    if let Some(run_id) = run_id
        && let Ok(location) = HeaderValue::from_str(&format!("/v1/runs/{run_id}"))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `POST /v1/requests/{id}/reconcile`: 202 with the reconcile run started
/// now, or queued behind the request's run in flight (see
/// `fulfil_engine::reconcile`); 404 for an unknown request, 409 for one
/// being deleted or deleted. Who asked (`Fulfil-Actor`) is recorded in the
/// run's history.
pub async fn reconcile(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let request_id: RequestId = parse_id("request", &id)?;
    let actor = super::runs::actor(&headers);
    let outcome = reconcile_now(&state.engine, request_id, &actor)
        .await
        .map_err(|e| match e {
            ReconcileError::NotFound(_) => Problem::not_found("request", &id),
            ReconcileError::NotLive { status, .. } => Problem::new(
                StatusCode::CONFLICT,
                ProblemCode::RequestNotLive,
                "Request not live",
                e.to_string(),
            )
            .with("request_status", json!(status.as_str())),
            ReconcileError::Run(fulfil_engine::run::RunError::Db(e)) => crate::problem::from_db(&e),
            ReconcileError::Run(e) => Problem::internal(&e),
        })?;
    let body = model::Reconcile::new(request_id, outcome);
    let run_id = body.run_id;
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Some(run_id) = run_id
        && let Ok(location) = HeaderValue::from_str(&format!("/v1/runs/{run_id}"))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    promise: Option<String>,
    status: Option<RequestStatus>,
    cursor: Option<String>,
    limit: Option<i64>,
}

pub async fn list(
    State(state): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<model::Page<model::Request>>, Problem> {
    let page = inspect::list_requests(
        state.engine.pool(),
        &RequestFilter {
            promise: q.promise,
            status: q.status,
            cursor: q.cursor,
            limit: q.limit,
        },
    )
    .await
    .map_err(inspect_error)?;
    Ok(Json(page.into()))
}
