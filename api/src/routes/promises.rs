//! `PUT /v1/promises/{name}` and reading Promises back.
//!
//! Parsing and validating a Promise is CPU work bounded by the document's
//! limits ([`fulfil_core::document`]); it runs on a blocking thread so that
//! a large Promise never stalls the async workers serving other requests.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fulfil_core::{Promise, SpecError, SpecErrors};
use fulfil_engine::events::InboundStreamError;
use fulfil_engine::promises::{self, ApplyOutcome, PromiseError, PromiseRecord};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::extract::{Path, Query, Text};
use crate::{ApiState, Problem, ProblemCode, model};

fn invalid(errors: &SpecErrors) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        ProblemCode::InvalidPromise,
        "Invalid Promise",
        format!(
            "the Promise has {} problem(s); each is listed under errors",
            errors.0.len()
        ),
    )
    .with("errors", json!(errors.0))
}

pub(crate) fn promise_error(e: PromiseError) -> Problem {
    match e {
        PromiseError::Invalid(errors) => invalid(&errors),
        PromiseError::VersionConflict { .. } => Problem::new(
            StatusCode::CONFLICT,
            ProblemCode::VersionConflict,
            "Version conflict",
            e.to_string(),
        ),
        PromiseError::NotFound(name) => Problem::not_found("Promise", &name),
        PromiseError::Corrupt { .. } => Problem::internal(&e),
        PromiseError::Db(e) => crate::problem::from_db(&e),
    }
}

/// Makes the inbound stream capture the subjects of the Promise's triggers
/// before the Promise is stored, so an event published right after the
/// answer is kept; a subject NATS cannot capture refuses the Promise with
/// nothing stored. A process without NATS leaves it to the engines, which
/// widen the stream from the Promise heads within seconds.
async fn capture_trigger_subjects(state: &ApiState, promise: &Promise) -> Result<(), Problem> {
    let subjects: Vec<String> = promise
        .inbound_subjects()
        .into_iter()
        .map(str::to_string)
        .collect();
    let Some(client) = state.nats.as_ref().filter(|_| !subjects.is_empty()) else {
        return Ok(());
    };
    let js = async_nats::jetstream::new(client.clone());
    fulfil_engine::events::capture_subjects(&js, state.engine.names(), &subjects)
        .await
        .map_err(|e| match e {
            InboundStreamError::Refused { .. } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ProblemCode::TriggerSubjectRefused,
                "Trigger subject refused",
                format!(
                    "{e}; choose trigger subjects no other JetStream stream captures (Fulfil's own subjects under its prefix are taken)"
                ),
            ),
            InboundStreamError::Unavailable { .. } => Problem::unavailable(&e),
        })
}

/// Creates or updates a Promise from a YAML or JSON body.
#[utoipa::path(
    put,
    path = "/v1/promises/{name}",
    operation_id = "apply_promise",
    tag = "promises",
    params(("name" = String, Path, description = "The Promise's `metadata.name`")),
    request_body(
        description = "The Promise document, as YAML or JSON (see workflows/ for examples)",
        content(
            (String = "application/yaml"),
            (Object = "application/json"),
        ),
    ),
    responses(
        (status = 201, description = "A new Promise or version, now the head", body = model::PromiseApplied),
        (status = 200, description = "This version was applied before with the same spec; it is the head again", body = model::PromiseApplied),
        (status = 403, description = "`forbidden`: no `metadata.owner`, another team named as owner, or another team's Promise of that name", body = crate::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`version-conflict`: this version exists with other content", body = crate::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid-promise` (every problem under `errors[].path`) or `trigger-subject-refused`", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn apply(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Text(body): Text,
) -> Result<(StatusCode, Json<model::PromiseApplied>), Problem> {
    if body.trim().is_empty() {
        return Err(Problem::bad_request(
            "empty body: send the Promise as YAML or JSON",
        ));
    }
    let context = state.engine.validation_context();
    let promise = tokio::task::spawn_blocking(move || Promise::parse_with(&body, &context))
        .await
        .map_err(|e| Problem::internal(&e))?
        .map_err(|e| invalid(&e))?;
    // A NUL escaped in the text ("\0" in YAML, "\u0000" in JSON) is only
    // there once parsed; Postgres would refuse to store it.
    let document = serde_json::to_value(&promise).map_err(|e| Problem::internal(&e))?;
    crate::extract::refuse_nul(&document, "the Promise")?;
    if promise.metadata.name != name {
        return Err(invalid(&SpecErrors::one(SpecError::new(
            "metadata.name",
            "invalid_value",
            format!(
                "metadata.name is {:?} but the URL names {name:?}; they must match",
                promise.metadata.name
            ),
        ))));
    }
    if caller.authenticated {
        // Checked before anything is stored (the trigger subjects
        // included); a Promise applied meanwhile by another team is the
        // race this leaves, and its author would see the version conflict.
        let stored = fulfil_engine::ownership::promise_owner(state.engine.pool(), &name)
            .await
            .map_err(|e| crate::problem::from_db(&e))?;
        fulfil_engine::ownership::may_apply(
            &caller,
            fulfil_engine::ownership::DocumentKind::Promise,
            &name,
            promise.metadata.owner.as_deref(),
            stored.as_ref().map(Option::as_deref),
        )
        .map_err(super::scope::refused)?;
    }
    capture_trigger_subjects(&state, &promise).await?;
    let outcome = promises::apply(state.engine.pool(), &promise)
        .await
        .map_err(promise_error)?;
    // Requests this process takes next use the new head without waiting
    // for a storing transaction to find the cached one stale.
    state.engine.promises().forget_head(&name);
    let status = match outcome {
        ApplyOutcome::Created => StatusCode::CREATED,
        ApplyOutcome::Unchanged => StatusCode::OK,
    };
    let outcome = match outcome {
        ApplyOutcome::Created => "created",
        ApplyOutcome::Unchanged => "unchanged",
    };
    Ok((
        status,
        Json(model::PromiseApplied {
            name,
            version: promise.metadata.version.clone(),
            outcome: outcome.to_string(),
        }),
    ))
}

fn summary(record: &PromiseRecord) -> model::PromiseSummary {
    model::PromiseSummary {
        name: record.name.clone(),
        version: record.version.clone(),
        owner: record.owner.clone(),
        description: record.promise.metadata.description.clone(),
        current: record.current,
        versions: record.versions.clone(),
        steps: record.promise.spec.workflow.steps.len(),
        created_at: record.created_at,
        promise: None,
    }
}

/// Promises per page of `GET /v1/promises` unless `limit` says otherwise.
const DEFAULT_PAGE: i64 = 100;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, clamped to 1..=500; default 100.
    #[param(minimum = 1)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

/// The head version of each Promise, by name, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/promises",
    operation_id = "list_promises",
    tag = "promises",
    params(ListQuery),
    responses((status = 200, description = "A page of Promises (head versions), by name", body = model::Page<model::PromiseSummary>))
)]
pub async fn list(
    State(state): State<ApiState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<model::Page<model::PromiseSummary>>, Problem> {
    // The cursor is the last name of the previous page; anything that is
    // not a name did not come from us.
    if let Some(cursor) = &query.cursor
        && (cursor.is_empty()
            || cursor.len() > 63
            || !cursor
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    {
        return Err(Problem::bad_request(format!(
            "invalid cursor {cursor:?}: pass next_cursor from the previous page"
        )));
    }
    let limit = super::check_limit(query.limit)?
        .unwrap_or(DEFAULT_PAGE)
        .clamp(1, i64::from(promises::MAX_PAGE));
    let limit = u32::try_from(limit).unwrap_or(promises::MAX_PAGE);
    let page = promises::list(state.engine.pool(), limit, query.cursor.as_deref())
        .await
        .map_err(promise_error)?;
    Ok(Json(model::Page {
        items: page.items.iter().map(summary).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VersionQuery {
    /// A version other than the head.
    version: Option<String>,
}

/// The head version, or `?version=`; includes the full Promise document.
#[utoipa::path(
    get,
    path = "/v1/promises/{name}",
    operation_id = "get_promise",
    tag = "promises",
    params(("name" = String, Path, description = "The Promise", example = "postgres-database"), VersionQuery),
    responses(
        (status = 200, description = "The Promise version with its document under `promise`", body = model::PromiseSummary),
        (status = 404, description = "No such Promise or version", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(query): Query<VersionQuery>,
) -> Result<Json<model::PromiseSummary>, Problem> {
    let record = promises::get(state.engine.pool(), &name, query.version.as_deref())
        .await
        .map_err(promise_error)?;
    let mut body = summary(&record);
    body.promise = Some(serde_json::to_value(&*record.promise).map_err(|e| Problem::internal(&e))?);
    Ok(Json(body))
}
