//! `PUT/GET/DELETE /v1/schedules[/{name}]`, the tick ledger, pause and
//! resume (see `fulfil_engine::schedules`).
//!
//! A Schedule arrives as YAML or JSON, like a Promise, and is parsed on a
//! blocking thread; a document that is not valid answers 422
//! `invalid-schedule` with every problem at its path and stores nothing;
//! so do params that break the schema of the Promise as it is applied now.
//! Who applied, deleted, paused or resumed a schedule is the caller's
//! principal id. With access control on, an author applies and deletes
//! only Schedules whose `metadata.owner` is its team, and an operator
//! pauses and resumes only those (`fulfil_engine::ownership`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fulfil_core::params::ParamsError;
use fulfil_core::schedule::Schedule;
use fulfil_core::status::TickOutcome;
use fulfil_core::{SpecError, SpecErrors};
use fulfil_engine::promises::PromiseError;
use fulfil_engine::schedules::{self, PutOutcome, ScheduleError, TickFilter};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use super::check_limit;
use crate::auth::Caller;
use crate::extract::{Path, Query, Text};
use crate::{ApiState, Problem, ProblemCode, model};
use fulfil_core::access::Principal;
use fulfil_engine::ownership::{self, DocumentKind};

fn invalid(errors: &SpecErrors) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        ProblemCode::InvalidSchedule,
        "Invalid Schedule",
        format!(
            "the Schedule has {} problem(s); each is listed under errors",
            errors.0.len()
        ),
    )
    .with("errors", json!(errors.0))
}

fn schedule_error(e: ScheduleError) -> Problem {
    match e {
        ScheduleError::InvalidCursor(_) => {
            Problem::bad_request(e.to_string()).with("parameter", json!("cursor"))
        }
        ScheduleError::Db(e) => crate::problem::from_db(&e),
        e if e.is_transient() => Problem::unavailable(&e),
        e => Problem::internal(&e),
    }
}

/// Creates or replaces a Schedule from a YAML or JSON body: 201 when it
/// is new, 200 otherwise.
#[utoipa::path(
    put,
    path = "/v1/schedules/{name}",
    operation_id = "apply_schedule",
    tag = "schedules",
    params(("name" = String, Path, description = "The Schedule"), ("Fulfil-Actor" = Option<String>, Header, description = "Who does it, recorded on the Schedule")),
    request_body(
        description = "The Schedule document, as YAML or JSON",
        content(
            (String = "application/yaml"),
            (Object = "application/json"),
        ),
    ),
    responses(
        (status = 201, description = "A new Schedule", body = model::ScheduleApplied),
        (status = 200, description = "Updated, or unchanged", body = model::ScheduleApplied),
        (status = 403, description = "`forbidden`: no `metadata.owner`, another team named as owner, or another team's Schedule of that name", body = crate::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid-schedule`: every problem under `errors[].path`", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn apply(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Text(body): Text,
) -> Result<(StatusCode, Json<model::ScheduleApplied>), Problem> {
    if body.trim().is_empty() {
        return Err(Problem::bad_request(
            "empty body: send the Schedule as YAML or JSON",
        ));
    }
    let schedule = tokio::task::spawn_blocking(move || Schedule::parse(&body))
        .await
        .map_err(|e| Problem::internal(&e))?
        .map_err(|e| invalid(&e))?;
    let document = serde_json::to_value(schedule.document()).map_err(|e| Problem::internal(&e))?;
    crate::extract::refuse_nul(&document, "the Schedule")?;
    if schedule.name() != name {
        return Err(invalid(&SpecErrors::one(SpecError::new(
            "metadata.name",
            "invalid_value",
            format!(
                "metadata.name is {:?} but the URL names {name:?}; they must match",
                schedule.name()
            ),
        ))));
    }
    if caller.authenticated {
        let stored = ownership::schedule_owner(state.engine.pool(), &name)
            .await
            .map_err(|e| crate::problem::from_db(&e))?;
        ownership::may_apply(
            &caller,
            DocumentKind::Schedule,
            &name,
            schedule.document().metadata.owner.as_deref(),
            stored.as_ref().map(Option::as_deref),
        )
        .map_err(super::scope::refused)?;
    }
    check_params(&state, &schedule).await?;
    let applied = schedules::put(&state.engine, &schedule, &caller.id)
        .await
        .map_err(schedule_error)?;
    let status = match applied.outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Updated | PutOutcome::Unchanged => StatusCode::OK,
    };
    let outcome = serde_json::to_value(applied.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    Ok((
        status,
        Json(model::ScheduleApplied {
            name: applied.name,
            outcome,
            next_fire_at: applied.next_fire_at,
        }),
    ))
}

/// With access control on, the caller must act for the stored Schedule's
/// owner team; a missing Schedule is the 404 it always was.
async fn owned_by_caller(state: &ApiState, caller: &Principal, name: &str) -> Result<(), Problem> {
    if !caller.authenticated {
        return Ok(());
    }
    let owner = ownership::schedule_owner(state.engine.pool(), name)
        .await
        .map_err(|e| crate::problem::from_db(&e))?
        .ok_or_else(|| Problem::not_found("schedule", name))?;
    ownership::may_change(caller, DocumentKind::Schedule, name, owner.as_deref())
        .map_err(super::scope::refused)
}

/// Params that break the schema of the Promise as it is now are refused
/// at once, each violation at its path; a Promise not applied yet is no
/// error (each tick checks again, and records `failed` while it is absent).
async fn check_params(state: &ApiState, schedule: &Schedule) -> Result<(), Problem> {
    let engine = &state.engine;
    let promise = match engine
        .promises()
        .load_head(engine.pool(), schedule.promise())
        .await
    {
        Ok(promise) => promise,
        Err(PromiseError::NotFound(_)) => return Ok(()),
        Err(PromiseError::Db(e)) => return Err(crate::problem::from_db(&e)),
        Err(e) => return Err(Problem::internal(&e)),
    };
    let checked = engine
        .promises()
        .params_schema(&promise)
        .and_then(|schema| schema.validate(schedule.params().clone()));
    match checked {
        Ok(_) => Ok(()),
        Err(ParamsError::Invalid(violations)) => Err(invalid(&SpecErrors(
            violations
                .into_iter()
                .map(|v| {
                    SpecError::new(
                        format!("spec.params{}", v.pointer.replace('/', ".")),
                        "invalid_value",
                        format!(
                            "{}; the params break the schema of Promise {}",
                            v.message,
                            schedule.promise()
                        ),
                    )
                })
                .collect(),
        ))),
        Err(ParamsError::Schema(message)) => Err(Problem::internal(&message)),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, at least 1.
    #[param(minimum = 1)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

/// Schedules by name, each with its `next_fire_at`.
#[utoipa::path(
    get,
    path = "/v1/schedules",
    operation_id = "list_schedules",
    tag = "schedules",
    params(ListQuery),
    responses((status = 200, description = "A page of Schedules, by name", body = model::Page<model::Schedule>))
)]
pub async fn list(
    State(state): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<model::Page<model::Schedule>>, Problem> {
    let limit = check_limit(q.limit)?;
    let page = schedules::list(state.engine.pool(), limit, q.cursor.as_deref())
        .await
        .map_err(schedule_error)?;
    Ok(Json(model::Page::from(page)))
}

/// One schedule, with its document.
#[utoipa::path(
    get,
    path = "/v1/schedules/{name}",
    operation_id = "get_schedule",
    tag = "schedules",
    params(("name" = String, Path, description = "The Schedule")),
    responses((status = 200, description = "The Schedule", body = model::Schedule), (status = 404, description = "No such Schedule", body = crate::Problem, content_type = "application/problem+json"))
)]
pub async fn get(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<model::Schedule>, Problem> {
    schedules::get(state.engine.pool(), &name)
        .await
        .map_err(schedule_error)?
        .map(|s| Json(s.into()))
        .ok_or_else(|| Problem::not_found("schedule", &name))
}

/// Deletes a schedule; its tick ledger is kept.
#[utoipa::path(
    delete,
    path = "/v1/schedules/{name}",
    operation_id = "delete_schedule",
    tag = "schedules",
    params(("name" = String, Path, description = "The Schedule"), ("Fulfil-Actor" = Option<String>, Header, description = "Who does it, recorded on the Schedule")),
    responses((status = 204, description = "Deleted"), (status = 403, description = "`forbidden`: the Schedule is another team's", body = crate::Problem, content_type = "application/problem+json"), (status = 404, description = "No such Schedule", body = crate::Problem, content_type = "application/problem+json"))
)]
pub async fn delete(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    owned_by_caller(&state, &caller, &name).await?;
    if schedules::delete(&state.engine, &name, &caller.id)
        .await
        .map_err(schedule_error)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found("schedule", &name))
    }
}

/// Pauses a schedule: its ticks pass as `paused` until it is resumed.
#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/pause",
    operation_id = "pause_schedule",
    tag = "schedules",
    params(("name" = String, Path, description = "The Schedule"), ("Fulfil-Actor" = Option<String>, Header, description = "Who does it, recorded on the Schedule")),
    responses((status = 200, description = "The paused Schedule", body = model::Schedule), (status = 403, description = "`forbidden`: the Schedule is another team's", body = crate::Problem, content_type = "application/problem+json"), (status = 404, description = "No such Schedule", body = crate::Problem, content_type = "application/problem+json"))
)]
pub async fn pause(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<model::Schedule>, Problem> {
    owned_by_caller(&state, &caller, &name).await?;
    schedules::pause(&state.engine, &name, &caller.id)
        .await
        .map_err(schedule_error)?
        .map(|s| Json(s.into()))
        .ok_or_else(|| Problem::not_found("schedule", &name))
}

/// Resumes a schedule from its first tick after now.
#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/resume",
    operation_id = "resume_schedule",
    tag = "schedules",
    params(("name" = String, Path, description = "The Schedule"), ("Fulfil-Actor" = Option<String>, Header, description = "Who does it, recorded on the Schedule")),
    responses((status = 200, description = "The resumed Schedule", body = model::Schedule), (status = 403, description = "`forbidden`: the Schedule is another team's", body = crate::Problem, content_type = "application/problem+json"), (status = 404, description = "No such Schedule", body = crate::Problem, content_type = "application/problem+json"))
)]
pub async fn resume(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<model::Schedule>, Problem> {
    owned_by_caller(&state, &caller, &name).await?;
    schedules::resume(&state.engine, &name, &caller.id)
        .await
        .map_err(schedule_error)?
        .map(|s| Json(s.into()))
        .ok_or_else(|| Problem::not_found("schedule", &name))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TickQuery {
    /// Only ticks with this outcome.
    #[param(schema_with = crate::openapi::schemas::tick_outcome)]
    outcome: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Page size, at least 1.
    #[param(minimum = 1)]
    limit: Option<i64>,
}

/// The tick ledger, newest first.
#[utoipa::path(
    get,
    path = "/v1/schedules/{name}/ticks",
    operation_id = "list_ticks",
    tag = "schedules",
    params(("name" = String, Path, description = "The Schedule"), TickQuery),
    responses((status = 200, description = "A page of the tick ledger", body = model::Page<model::Tick>), (status = 404, description = "No such Schedule", body = crate::Problem, content_type = "application/problem+json"))
)]
pub async fn ticks(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<TickQuery>,
) -> Result<Json<model::Page<model::Tick>>, Problem> {
    let outcome = q
        .outcome
        .as_deref()
        .map(TickOutcome::parse)
        .transpose()
        .map_err(|e| {
            Problem::bad_request(format!("outcome: {e}")).with("parameter", json!("outcome"))
        })?;
    let filter = TickFilter {
        outcome,
        cursor: q.cursor,
        limit: check_limit(q.limit)?,
    };
    schedules::ticks(state.engine.pool(), &name, &filter)
        .await
        .map_err(schedule_error)?
        .map(|page| Json(model::Page::from(page)))
        .ok_or_else(|| Problem::not_found("schedule", &name))
}
