//! `PUT /v1/promises/{name}` and reading Promises back.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fulfil_core::{Promise, SpecError, SpecErrors};
use fulfil_engine::promises::{self, ApplyOutcome, PromiseError, PromiseRecord};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::extract::{Path, Query, Text};
use crate::{ApiState, Problem, ProblemCode};

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

/// Creates or updates a Promise from a YAML or JSON body.
pub async fn apply(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Text(body): Text,
) -> Result<(StatusCode, Json<Value>), Problem> {
    if body.trim().is_empty() {
        return Err(Problem::bad_request(
            "empty body: send the Promise as YAML or JSON",
        ));
    }
    let promise = Promise::parse(&body).map_err(|e| invalid(&e))?;
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
    Ok((
        status,
        Json(json!({ "name": name, "version": promise.metadata.version, "outcome": outcome })),
    ))
}

fn summary(record: &PromiseRecord) -> Value {
    json!({
        "name": record.name,
        "version": record.version,
        "owner": record.owner,
        "description": record.promise.metadata.description,
        "current": record.current,
        "versions": record.versions,
        "steps": record.promise.spec.workflow.steps.len(),
        "created_at": record.created_at,
    })
}

pub async fn list(State(state): State<ApiState>) -> Result<Json<Value>, Problem> {
    let records = promises::list(state.engine.pool())
        .await
        .map_err(promise_error)?;
    Ok(Json(json!({
        "items": records.iter().map(summary).collect::<Vec<_>>(),
        "next_cursor": null,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    version: Option<String>,
}

/// The head version, or `?version=`; includes the full Promise document.
pub async fn get(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(query): Query<VersionQuery>,
) -> Result<Json<Value>, Problem> {
    let record = promises::get(state.engine.pool(), &name, query.version.as_deref())
        .await
        .map_err(promise_error)?;
    let mut body = summary(&record);
    body["promise"] = serde_json::to_value(&*record.promise).map_err(|e| Problem::internal(&e))?;
    Ok(Json(body))
}
