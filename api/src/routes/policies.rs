//! `PUT/GET/DELETE /v1/policies[/{name}]`: admission policies (see
//! `fulfil_engine::policies` and `docs/policies.md`).
//!
//! A Policy arrives as YAML or JSON, like a Promise, and is parsed and
//! compiled on a blocking thread; a document that is not valid answers 422
//! `invalid-policy` with every problem at its path and stores nothing.
//! A request a Policy refuses answers 403 `policy-denied` (see
//! [`denied`]).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fulfil_core::policy::{Policy, Violation};
use fulfil_core::{SpecError, SpecErrors};
use fulfil_engine::policies::{self, PolicyError, PutOutcome};
use serde_json::json;

use crate::auth::Caller;
use crate::extract::{Path, Text};
use crate::model::{self, PolicyApplied, PolicyView, PolicyViolation};
use crate::{ApiState, Problem, ProblemCode};

/// 403 `policy-denied`: every broken rule under `violations`, every
/// message in the detail. Nothing was stored.
pub fn denied(violations: Vec<Violation>) -> Problem {
    let detail = format!(
        "denied by admission policy: {}; nothing was stored",
        violations
            .iter()
            .map(|v| v.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    );
    let violations: Vec<PolicyViolation> = violations.into_iter().map(Into::into).collect();
    Problem::new(
        StatusCode::FORBIDDEN,
        ProblemCode::PolicyDenied,
        "Denied by policy",
        detail,
    )
    .with("violations", json!(violations))
}

fn invalid(errors: &SpecErrors) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        ProblemCode::InvalidPolicy,
        "Invalid Policy",
        format!(
            "the Policy has {} problem(s); each is listed under errors",
            errors.0.len()
        ),
    )
    .with("errors", json!(errors.0))
}

fn policy_error(e: PolicyError) -> Problem {
    match e {
        PolicyError::NotFound(name) => Problem::not_found("policy", &name),
        PolicyError::Db(e) => crate::problem::from_db(&e),
        e @ PolicyError::Encode(_) => Problem::internal(&e),
    }
}

/// Creates or replaces a Policy from a YAML or JSON body: 201 when it is
/// new, 200 otherwise. New requests are checked against it at once in this
/// process, and within `fulfil_engine::policies::CACHE_TTL` in others.
#[utoipa::path(
    put,
    path = "/v1/policies/{name}",
    operation_id = "apply_policy",
    tag = "policies",
    params(("name" = String, Path, description = "The Policy")),
    request_body(
        description = "The Policy document, as YAML or JSON",
        content(
            (String = "application/yaml"),
            (Object = "application/json"),
        ),
    ),
    responses(
        (status = 201, description = "A new Policy", body = PolicyApplied),
        (status = 200, description = "Updated, or unchanged", body = PolicyApplied),
        (status = 422, description = "`invalid-policy`: every problem under `errors[].path`", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn apply(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Text(body): Text,
) -> Result<(StatusCode, Json<PolicyApplied>), Problem> {
    if body.trim().is_empty() {
        return Err(Problem::bad_request(
            "empty body: send the Policy as YAML or JSON",
        ));
    }
    let policy = tokio::task::spawn_blocking(move || Policy::parse(&body))
        .await
        .map_err(|e| Problem::internal(&e))?
        .map_err(|e| invalid(&e))?;
    let document = serde_json::to_value(policy.document()).map_err(|e| Problem::internal(&e))?;
    crate::extract::refuse_nul(&document, "the Policy")?;
    if policy.name() != name {
        return Err(invalid(&SpecErrors::one(SpecError::new(
            "metadata.name",
            "invalid_value",
            format!(
                "metadata.name is {:?} but the URL names {name:?}; they must match",
                policy.name()
            ),
        ))));
    }
    let outcome = policies::put(&state.engine, &policy, &caller.id)
        .await
        .map_err(policy_error)?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Updated | PutOutcome::Unchanged => StatusCode::OK,
    };
    let outcome = serde_json::to_value(outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    Ok((status, Json(PolicyApplied { name, outcome })))
}

/// Every Policy, by name, on one page (Policies are few: each runs on
/// every request it governs).
#[utoipa::path(
    get,
    path = "/v1/policies",
    operation_id = "list_policies",
    tag = "policies",
    responses((status = 200, description = "Every Policy, by name", body = model::Page<PolicyView>))
)]
pub async fn list(State(state): State<ApiState>) -> Result<Json<model::Page<PolicyView>>, Problem> {
    let rows = policies::list(&state.engine).await.map_err(policy_error)?;
    Ok(Json(model::Page {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor: None,
    }))
}

/// One Policy, with its document.
#[utoipa::path(
    get,
    path = "/v1/policies/{name}",
    operation_id = "get_policy",
    tag = "policies",
    params(("name" = String, Path, description = "The Policy")),
    responses((status = 200, description = "The Policy", body = PolicyView), (status = 404, description = "No such Policy", body = crate::Problem, content_type = "application/problem+json"))
)]
pub async fn get(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<PolicyView>, Problem> {
    policies::get(&state.engine, &name)
        .await
        .map(|row| Json(row.into()))
        .map_err(policy_error)
}

/// Deletes a Policy: new requests are no longer checked against it.
#[utoipa::path(
    delete,
    path = "/v1/policies/{name}",
    operation_id = "delete_policy",
    tag = "policies",
    params(("name" = String, Path, description = "The Policy")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such Policy", body = crate::Problem, content_type = "application/problem+json"))
)]
pub async fn delete(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    policies::delete(&state.engine, &name)
        .await
        .map_err(policy_error)?;
    Ok(StatusCode::NO_CONTENT)
}
