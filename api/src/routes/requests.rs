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
use utoipa::IntoParams;

use fulfil_core::access::Role;
use fulfil_core::ids::RequestId;
use fulfil_core::status::RequestStatus;

use super::{check_limit, inspect_error, parse_id};
use crate::auth::Caller;
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
        RequestError::Refused(refusal) => super::scope::refused(refusal),
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
        RequestError::PolicyDenied { violations } => super::policies::denied(violations),
        RequestError::TooLarge { .. } => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ProblemCode::RequestTooLarge,
            "Request too large",
            e.to_string(),
        ),
    }
}

/// `POST /v1/promises/{name}/requests`: 202 once the request is durable.
#[utoipa::path(
    post,
    path = "/v1/promises/{name}/requests",
    operation_id = "create_request",
    tag = "promises",
    params(
        ("name" = String, Path, description = "The Promise to file a request for", example = "postgres-database"),
        ("Idempotency-Key" = Option<String>, Header, description = "Same as `idempotency_key` in the body", min_length = 1, max_length = 255),
        ("Fulfil-Actor" = Option<String>, Header, description = "Who files it (`user:alice`), recorded as `created_by`"),
    ),
    request_body = model::CreateRequest,
    responses(
        (status = 202, description = "Stored and started (or, `replayed`, an earlier request with the same key and params); `Location` names the request", body = model::Accepted),
        (status = 403, description = "`forbidden`: the Promise's `spec.access` does not list the caller's team; names `promise`, `allowed_teams` and `team`", body = crate::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such Promise", body = crate::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency-conflict`: the key was used with other parameters", body = crate::Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload-too-large` or `request-too-large`", body = crate::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid-body`, or `invalid-params` with every violation under `errors[].pointer`", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<ApiState>,
    Path(promise): Path<String>,
    Caller(caller): Caller,
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
            actor: caller.id.clone(),
            // Its team is kept on the request, and `spec.access` is
            // checked against it.
            principal: Some(caller),
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

/// One request.
#[utoipa::path(
    get,
    path = "/v1/requests/{id}",
    operation_id = "get_request",
    tag = "requests",
    params(("id" = uuid::Uuid, Path, description = "The request")),
    responses(
        (status = 200, description = "The request", body = model::Request),
        (status = 404, description = "No such request", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<model::Request>, Problem> {
    let request_id: RequestId = parse_id("request", &id)?;
    let request = inspect::get_request(state.engine.pool(), request_id)
        .await
        .map_err(inspect_error)?
        .ok_or_else(|| Problem::not_found("request", &id))?;
    let children = fulfil_engine::children::children_of_request(state.engine.pool(), request_id)
        .await
        .map_err(|e| inspect_error(e.into()))?;
    let mut request: model::Request = request.into();
    request.children = children.into_iter().map(model::ChildLink::from).collect();
    Ok(Json(request))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete without running the Promise's `delete` workflow.
    #[serde(default)]
    force: bool,
}

/// `DELETE /v1/requests/{id}[?force=true]`: 202 with the delete run (see
/// `fulfil_engine::deletion`); deleting twice answers the same run.
#[utoipa::path(
    delete,
    path = "/v1/requests/{id}",
    operation_id = "delete_request",
    tag = "requests",
    params(
        ("id" = uuid::Uuid, Path, description = "The request"),
        DeleteQuery,
        ("Fulfil-Actor" = Option<String>, Header, description = "Who deletes it, recorded in history"),
    ),
    responses(
        (status = 202, description = "Deleting (the delete run is named, and in `Location`), or deleted", body = model::Deletion),
        (status = 403, description = "`forbidden`: the caller acts for neither the Promise's owner team nor the request's team, or `force=true` without the operator role (`missing_role`)", body = crate::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such request", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
    Caller(caller): Caller,
) -> Result<Response, Problem> {
    let request_id: RequestId = parse_id("request", &id)?;
    super::scope::request(&state, &caller, request_id, "delete").await?;
    // Skipping the Promise's delete workflow leaves whatever it made in
    // place: an operator's call, on top of the requester's role.
    if q.force && !caller.has(Role::Operator) {
        return Err(Problem::missing_role(
            Role::Operator,
            "deleting a request with force=true",
        ));
    }
    let deletion = delete_request(&state.engine, request_id, &caller.id, q.force)
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
#[utoipa::path(
    post,
    path = "/v1/requests/{id}/reconcile",
    operation_id = "reconcile_request",
    tag = "requests",
    params(
        ("id" = uuid::Uuid, Path, description = "The request"),
        ("Fulfil-Actor" = Option<String>, Header, description = "Who asks, recorded in history"),
    ),
    responses(
        (status = 202, description = "The reconcile run started, or is queued behind the run in flight", body = model::Reconcile),
        (status = 403, description = "`forbidden`: the caller acts for neither the Promise's owner team nor the request's team", body = crate::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such request", body = crate::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`request-not-live`: the request is being deleted or deleted", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn reconcile(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Caller(caller): Caller,
) -> Result<Response, Problem> {
    let request_id: RequestId = parse_id("request", &id)?;
    super::scope::request(&state, &caller, request_id, "reconcile").await?;
    let outcome = reconcile_now(&state.engine, request_id, &caller.id)
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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only requests for this Promise.
    promise: Option<String>,
    /// Only requests in this status.
    #[param(schema_with = crate::openapi::schemas::request_status)]
    status: Option<RequestStatus>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Page size.
    #[param(minimum = 1)]
    limit: Option<i64>,
}

/// Requests, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/requests",
    operation_id = "list_requests",
    tag = "requests",
    params(ListQuery),
    responses((status = 200, description = "A page of requests", body = model::Page<model::Request>))
)]
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
            limit: check_limit(q.limit)?,
        },
    )
    .await
    .map_err(inspect_error)?;
    Ok(Json(page.into()))
}

/// Pins or unpins request `id`, then answers it as it now stands.
async fn set_pinned(
    state: &ApiState,
    caller: &fulfil_core::access::Principal,
    id: &str,
    pinned: bool,
) -> Result<Json<model::Request>, Problem> {
    let request_id: RequestId = parse_id("request", id)?;
    super::scope::request(
        state,
        caller,
        request_id,
        if pinned { "pin" } else { "unpin" },
    )
    .await?;
    if !fulfil_engine::rollout::set_pinned(&state.engine, request_id, pinned)
        .await
        .map_err(|e| crate::problem::from_db(&e))?
    {
        return Err(Problem::not_found("request", id));
    }
    let request = inspect::get_request(state.engine.pool(), request_id)
        .await
        .map_err(inspect_error)?
        .ok_or_else(|| Problem::not_found("request", id))?;
    Ok(Json(request.into()))
}

/// `POST /v1/requests/{id}/pin`: pins the request to its current version;
/// no rollout upgrades it until it is unpinned (docs/rollouts.md).
#[utoipa::path(
    post,
    path = "/v1/requests/{id}/pin",
    operation_id = "pin_request",
    tag = "requests",
    params(("id" = uuid::Uuid, Path, description = "The request")),
    responses(
        (status = 200, description = "The request, `pinned: true` (pinning twice changes nothing)", body = model::Request),
        (status = 403, description = "`forbidden`: the caller acts for neither the Promise's owner team nor the request's team", body = crate::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such request", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn pin(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Caller(caller): Caller,
) -> Result<Json<model::Request>, Problem> {
    set_pinned(&state, &caller, &id, true).await
}

/// `DELETE /v1/requests/{id}/pin`: unpins the request; the next rollout
/// of its Promise may upgrade it.
#[utoipa::path(
    delete,
    path = "/v1/requests/{id}/pin",
    operation_id = "unpin_request",
    tag = "requests",
    params(("id" = uuid::Uuid, Path, description = "The request")),
    responses(
        (status = 200, description = "The request, `pinned: false`", body = model::Request),
        (status = 403, description = "`forbidden`: the caller acts for neither the Promise's owner team nor the request's team", body = crate::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such request", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn unpin(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Caller(caller): Caller,
) -> Result<Json<model::Request>, Problem> {
    set_pinned(&state, &caller, &id, false).await
}
