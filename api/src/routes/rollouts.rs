//! Controlled upgrades: `POST /v1/promises/{name}/rollout`, the rollouts of
//! a Promise, one rollout, and pause, resume and cancel (see
//! `fulfil_engine::rollout` and docs/rollouts.md).
//!
//! Creating, pausing, resuming and cancelling need the author role and,
//! with access control on, the Promise's owner team (as applying it does);
//! reads are every principal's. Who created a rollout is the caller's
//! principal id.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fulfil_core::access::Principal;
use fulfil_core::ids::RolloutId;
use fulfil_core::selector::SelectorError;
use fulfil_engine::ownership::{self, DocumentKind};
use fulfil_engine::rollout::{
    self, Control, DEFAULT_MAX_CONCURRENT, ListError, NewRollout, RolloutError, RolloutFilter,
};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use super::{check_limit, inspect_error, parse_id};
use crate::auth::Caller;
use crate::extract::{self, Path, Query};
use crate::{ApiState, Problem, ProblemCode, model};

fn rollout_error(e: RolloutError) -> Problem {
    let detail = e.to_string();
    match e {
        RolloutError::UnknownPromise(name) => Problem::not_found("Promise", &name),
        RolloutError::NotFound(id) => Problem::not_found("rollout", &id.to_string()),
        RolloutError::UnknownVersion { promise, version } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::UnknownVersion,
            "Unknown version",
            detail,
        )
        .with("promise", json!(promise))
        .with("version", json!(version)),
        RolloutError::MaxConcurrent(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody,
            "Invalid body",
            detail,
        )
        .with(
            "errors",
            json!([{ "pointer": "/max_concurrent", "detail": "must be from 1 to 1000" }]),
        ),
        RolloutError::Selector(ref refused) => {
            let expression = match refused {
                SelectorError::Parse { expression, .. }
                | SelectorError::Variable { expression, .. } => expression.clone(),
            };
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ProblemCode::InvalidSelector,
                "Invalid selector",
                detail,
            )
            .with("selector", json!(expression))
        }
        RolloutError::SelectorFailed {
            selector,
            request_id,
            ..
        } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidSelector,
            "Invalid selector",
            detail,
        )
        .with("selector", json!(selector))
        .with("request_id", json!(request_id)),
        RolloutError::InProgress { rollout_id, .. } => Problem::new(
            StatusCode::CONFLICT,
            ProblemCode::RolloutInProgress,
            "Rollout in progress",
            detail,
        )
        .with("rollout_id", json!(rollout_id)),
        RolloutError::Finished { status, .. } => Problem::new(
            StatusCode::CONFLICT,
            ProblemCode::RolloutFinished,
            "Rollout finished",
            detail,
        )
        .with("rollout_status", json!(status.as_str())),
        RolloutError::Run(fulfil_engine::run::RunError::Db(e)) => crate::problem::from_db(&e),
        RolloutError::Run(e) => Problem::internal(&e),
    }
}

/// With access control on, the caller must act for the Promise's owner
/// team; 404 if there is no such Promise either way.
async fn owned_by_caller(state: &ApiState, caller: &Principal, name: &str) -> Result<(), Problem> {
    let owner = ownership::promise_owner(state.engine.pool(), name)
        .await
        .map_err(|e| crate::problem::from_db(&e))?
        .ok_or_else(|| Problem::not_found("Promise", name))?;
    if !caller.authenticated {
        return Ok(());
    }
    ownership::may_change(caller, DocumentKind::Promise, name, owner.as_deref())
        .map_err(super::scope::refused)
}

/// `POST /v1/promises/{name}/rollout`: 202 with the rollout, its targets
/// fixed; the engines start them.
#[utoipa::path(
    post,
    path = "/v1/promises/{name}/rollout",
    operation_id = "create_rollout",
    tag = "rollouts",
    params(
        ("name" = String, Path, description = "The Promise whose live requests are upgraded", example = "postgres-database"),
        ("Fulfil-Actor" = Option<String>, Header, description = "Who creates it, kept as `created_by`"),
    ),
    request_body = model::CreateRollout,
    responses(
        (status = 202, description = "Created, its targets fixed (`succeeded` at once when there are none); `Location` names it", body = model::Rollout),
        (status = 403, description = "`forbidden`: the Promise is another team's", body = crate::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such Promise", body = crate::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`rollout-in-progress`: another rollout of the Promise is running or paused (`rollout_id`)", body = crate::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`unknown-version` (no such version of the Promise), `invalid-selector` (the selector does not compile, reads something but `params` and `request`, or fails for a request), or `invalid-body` (`max_concurrent` outside 1..=1000)", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Caller(caller): Caller,
    extract::Json(body): extract::Json<model::CreateRollout>,
) -> Result<Response, Problem> {
    owned_by_caller(&state, &caller, &name).await?;
    let max_concurrent = match body.max_concurrent {
        None => DEFAULT_MAX_CONCURRENT,
        Some(n) => i32::try_from(n).map_err(|_| rollout_error(RolloutError::MaxConcurrent(n)))?,
    };
    let created = rollout::create(
        &state.engine,
        NewRollout {
            promise: name,
            to_version: body.to_version,
            max_concurrent,
            selector: body.selector,
            actor: caller.id.clone(),
        },
    )
    .await
    .map_err(rollout_error)?;
    let id = created.id;
    let mut response = (StatusCode::ACCEPTED, Json(model::Rollout::from(created))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/rollouts/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Page size.
    #[param(minimum = 1)]
    limit: Option<i64>,
}

/// The Promise's rollouts, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/promises/{name}/rollouts",
    operation_id = "list_rollouts",
    tag = "rollouts",
    params(("name" = String, Path, description = "The Promise"), ListQuery),
    responses(
        (status = 200, description = "A page of rollouts", body = model::Page<model::Rollout>),
        (status = 404, description = "No such Promise", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<model::Page<model::Rollout>>, Problem> {
    ownership::promise_owner(state.engine.pool(), &name)
        .await
        .map_err(|e| crate::problem::from_db(&e))?
        .ok_or_else(|| Problem::not_found("Promise", &name))?;
    let page = rollout::list(
        state.engine.pool(),
        &RolloutFilter {
            promise: name,
            cursor: q.cursor,
            limit: check_limit(q.limit)?,
        },
    )
    .await
    .map_err(|e| match e {
        ListError::Inspect(e) => inspect_error(e),
        ListError::Rollout(e) => rollout_error(e),
    })?;
    Ok(Json(model::Page {
        items: page.items.into_iter().map(model::Rollout::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One rollout with its progress and failures.
#[utoipa::path(
    get,
    path = "/v1/rollouts/{id}",
    operation_id = "get_rollout",
    tag = "rollouts",
    params(("id" = uuid::Uuid, Path, description = "The rollout")),
    responses(
        (status = 200, description = "The rollout", body = model::Rollout),
        (status = 404, description = "No such rollout", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<model::Rollout>, Problem> {
    let id: RolloutId = parse_id("rollout", &id)?;
    rollout::get(state.engine.pool(), id)
        .await
        .map_err(rollout_error)?
        .map(|r| Json(r.into()))
        .ok_or_else(|| Problem::not_found("rollout", &id.to_string()))
}

/// Pause, resume or cancel: the rollout must exist (404) and, with access
/// control on, be of a Promise the caller's team owns.
async fn control(
    state: &ApiState,
    caller: &Principal,
    id: &str,
    what: Control,
) -> Result<Json<model::Rollout>, Problem> {
    let id: RolloutId = parse_id("rollout", id)?;
    let found = rollout::get(state.engine.pool(), id)
        .await
        .map_err(rollout_error)?
        .ok_or_else(|| Problem::not_found("rollout", &id.to_string()))?;
    owned_by_caller(state, caller, &found.promise).await?;
    rollout::control(&state.engine, id, what, &caller.id)
        .await
        .map(|r| Json(r.into()))
        .map_err(rollout_error)
}

/// Pauses a rollout: no new target starts; upgrade runs in flight finish.
#[utoipa::path(
    post,
    path = "/v1/rollouts/{id}/pause",
    operation_id = "pause_rollout",
    tag = "rollouts",
    params(("id" = uuid::Uuid, Path, description = "The rollout"), ("Fulfil-Actor" = Option<String>, Header, description = "Who does it")),
    responses(
        (status = 200, description = "The paused rollout (pausing a paused one changes nothing)", body = model::Rollout),
        (status = 403, description = "`forbidden`: the Promise is another team's", body = crate::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rollout", body = crate::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`rollout-finished`: the rollout ended", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn pause(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<model::Rollout>, Problem> {
    control(&state, &caller, &id, Control::Pause).await
}

/// Resumes a paused rollout.
#[utoipa::path(
    post,
    path = "/v1/rollouts/{id}/resume",
    operation_id = "resume_rollout",
    tag = "rollouts",
    params(("id" = uuid::Uuid, Path, description = "The rollout"), ("Fulfil-Actor" = Option<String>, Header, description = "Who does it")),
    responses(
        (status = 200, description = "The running rollout (resuming a running one changes nothing)", body = model::Rollout),
        (status = 403, description = "`forbidden`: the Promise is another team's", body = crate::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rollout", body = crate::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`rollout-finished`: the rollout ended", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn resume(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<model::Rollout>, Problem> {
    control(&state, &caller, &id, Control::Resume).await
}

/// Cancels a rollout: its pending targets are skipped and it ends
/// `cancelled`; upgrade runs in flight finish.
#[utoipa::path(
    post,
    path = "/v1/rollouts/{id}/cancel",
    operation_id = "cancel_rollout",
    tag = "rollouts",
    params(("id" = uuid::Uuid, Path, description = "The rollout"), ("Fulfil-Actor" = Option<String>, Header, description = "Who does it, named in the skipped targets' error")),
    responses(
        (status = 200, description = "The cancelled rollout", body = model::Rollout),
        (status = 403, description = "`forbidden`: the Promise is another team's", body = crate::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rollout", body = crate::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`rollout-finished`: the rollout ended", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<model::Rollout>, Problem> {
    control(&state, &caller, &id, Control::Cancel).await
}
