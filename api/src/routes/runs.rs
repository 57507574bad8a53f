//! Reading runs and their history.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use fulfil_core::RunStatus;
use fulfil_core::status::RunKind;
use fulfil_engine::inspect::{self, RunFilter, WaitingFor};
use fulfil_engine::run::{OperatorError, cancel_run, retry_run};
use serde::Deserialize;
use utoipa::IntoParams;

use fulfil_core::ids::{RequestId, RunId};

use super::{inspect_error, parse_id};
use crate::auth::Caller;
use crate::extract::{self, Path, Query};
use crate::{ApiState, Problem, ProblemCode, model};

/// `GET /v1/runs` filters. Closed vocabularies deserialize into their enums,
/// so an unknown value answers 400 naming it and the accepted ones.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only runs in this status.
    #[param(schema_with = crate::openapi::schemas::run_status)]
    status: Option<RunStatus>,
    /// Only runs of this Promise.
    promise: Option<String>,
    /// Only runs of this request.
    #[param(value_type = Option<uuid::Uuid>)]
    request: Option<String>,
    /// Only runs of this kind: `configure`, `delete` or `reconcile`.
    #[param(schema_with = crate::openapi::schemas::run_kind)]
    kind: Option<RunKind>,
    /// Only runs of Promises owned by this team (`metadata.owner`).
    owner: Option<String>,
    /// Only live runs with a step waiting for this: a `retry`, an `event`,
    /// an `approval`, a `sleep`, or a `worker` (dispatched or running).
    #[param(schema_with = crate::openapi::schemas::waiting_for)]
    waiting_for: Option<WaitingFor>,
    /// Only runs created at or after this time (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Only runs created before this time (RFC 3339).
    until: Option<DateTime<Utc>>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Page size.
    #[param(minimum = 1)]
    limit: Option<i64>,
}

/// Runs, newest first, a page at a time; the items carry no steps.
#[utoipa::path(
    get,
    path = "/v1/runs",
    operation_id = "list_runs",
    tag = "runs",
    params(ListQuery),
    responses((status = 200, description = "A page of runs (without `steps`)", body = model::Page<model::Run>))
)]
pub async fn list(
    State(state): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<model::Page<model::Run>>, Problem> {
    let request = q
        .request
        .as_deref()
        .map(|id| parse_id::<RequestId>("request", id))
        .transpose()?;
    // Postgres stores years 4713 BC to 294276 AD; chrono reads wider.
    for (name, time) in [("since", q.since), ("until", q.until)] {
        if let Some(time) = time
            && !(1..=9999).contains(&chrono::Datelike::year(&time))
        {
            return Err(Problem::bad_request(format!(
                "{name} {time} is out of range: give a time in the years 1 to 9999"
            )));
        }
    }
    if let (Some(since), Some(until)) = (q.since, q.until)
        && since > until
    {
        return Err(Problem::bad_request(format!(
            "since ({since}) is after until ({until}); nothing could match"
        )));
    }
    let page = inspect::list_runs(
        state.engine.pool(),
        &RunFilter {
            status: q.status,
            promise: q.promise,
            request,
            kind: q.kind,
            owner: q.owner,
            waiting_for: q.waiting_for,
            since: q.since,
            until: q.until,
            cursor: q.cursor,
            limit: super::check_limit(q.limit)?,
        },
    )
    .await
    .map_err(inspect_error)?;
    Ok(Json(page.into()))
}

/// One run with its steps and their attempts.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    operation_id = "get_run",
    tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "The run")),
    responses(
        (status = 200, description = "The run, with `steps`", body = model::Run),
        (status = 404, description = "No such run", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<model::Run>, Problem> {
    let run_id: RunId = parse_id("run", &id)?;
    let run = inspect::get_run(state.engine.pool(), run_id)
        .await
        .map_err(inspect_error)?
        .ok_or_else(|| Problem::not_found("run", &id))?;
    Ok(Json(run.into()))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Page size.
    #[param(minimum = 1)]
    limit: Option<i64>,
}

/// The run's history, oldest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/history",
    operation_id = "run_history",
    tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "The run"), HistoryQuery),
    responses(
        (status = 200, description = "A page of history events", body = model::Page<model::HistoryEvent>),
        (status = 404, description = "No such run", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn history(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<model::Page<model::HistoryEvent>>, Problem> {
    let run_id: RunId = parse_id("run", &id)?;
    let page = inspect::history(state.engine.pool(), run_id, q.cursor.as_deref(), q.limit)
        .await
        .map_err(inspect_error)?
        .ok_or_else(|| Problem::not_found("run", &id))?;
    Ok(Json(page.into()))
}

fn operator_error(e: OperatorError) -> Problem {
    match e {
        OperatorError::NotFound(id) => Problem::not_found("run", &id.to_string()),
        OperatorError::Conflict(message) => Problem::new(
            StatusCode::CONFLICT,
            ProblemCode::RunStateConflict,
            "Run state conflict",
            message,
        ),
        OperatorError::UnknownStep { .. } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::UnknownStep,
            "Unknown step",
            e.to_string(),
        ),
        OperatorError::Run(fulfil_engine::run::RunError::Db(e)) => crate::problem::from_db(&e),
        OperatorError::Run(e) => Problem::internal(&e),
    }
}

/// `POST /v1/runs/{id}/cancel`
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancel",
    operation_id = "cancel_run",
    tag = "runs",
    params(
        ("id" = uuid::Uuid, Path, description = "The run"),
        ("Fulfil-Actor" = Option<String>, Header, description = "Who cancels, recorded in history, where access control is off; with it on, the authenticated principal is recorded"),
    ),
    request_body(content = Option<model::CancelRun>, description = "May be absent: compensate, no reason"),
    responses(
        (status = 200, description = "Cancelled, or compensating first", body = model::Cancelled),
        (status = 403, description = "`forbidden`: the caller acts for neither the run's owner team nor its request's team", body = crate::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = crate::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`run-state-conflict`: the run has ended", body = crate::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid-body`", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Caller(caller): Caller,
    body: Option<extract::Json<model::CancelRun>>,
) -> Result<Json<model::Cancelled>, Problem> {
    let run_id: RunId = parse_id("run", &id)?;
    let body = body.map(|extract::Json(b)| b).unwrap_or_default();
    let compensate = body.compensate.unwrap_or(true);
    super::scope::run(&state, &caller, run_id, "cancel").await?;
    let status = cancel_run(
        &state.engine,
        run_id,
        &caller.id,
        compensate,
        body.reason.as_deref(),
    )
    .await
    .map_err(operator_error)?;
    Ok(Json(model::Cancelled {
        run_id,
        status: status.as_str().to_string(),
        compensate,
    }))
}

/// `POST /v1/runs/{id}/retry`
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/retry",
    operation_id = "retry_run",
    tag = "runs",
    params(
        ("id" = uuid::Uuid, Path, description = "The run"),
        ("Fulfil-Actor" = Option<String>, Header, description = "Who retries, recorded in history, where access control is off; with it on, the authenticated principal is recorded"),
    ),
    request_body(content = Option<model::RetryRun>, description = "May be absent: re-run the failed steps"),
    responses(
        (status = 200, description = "What is re-run and what is kept", body = model::Retried),
        (status = 403, description = "`forbidden`: the caller acts for neither the run's owner team nor its request's team", body = crate::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = crate::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`run-state-conflict`: the run's status does not allow a retry", body = crate::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`unknown-step` or `invalid-body`", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn retry(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Caller(caller): Caller,
    body: Option<extract::Json<model::RetryRun>>,
) -> Result<Json<model::Retried>, Problem> {
    let run_id: RunId = parse_id("run", &id)?;
    let body = body.map(|extract::Json(b)| b).unwrap_or_default();
    super::scope::run(&state, &caller, run_id, "retry").await?;
    let plan = retry_run(
        &state.engine,
        run_id,
        &caller.id,
        body.step.as_deref(),
        body.dry_run,
    )
    .await
    .map_err(operator_error)?;
    Ok(Json(model::Retried {
        run_id,
        rerun: plan.rerun,
        kept: plan.kept,
        applied: plan.applied,
    }))
}
