//! Deciding approval steps: `POST /v1/runs/{id}/steps/{step}/approve` and
//! `.../reject`, body `{comment?}` (the body may be absent).
//!
//! The principal who decides is the caller ([`Caller`]): with access
//! control on, the authenticated principal, whose id, team and roles the
//! step's `approvers` entries (`user:`, `team:`, `role:`) match; with it
//! off, the `Fulfil-Actor` header's value as given (`user:alice`), matched
//! literally. Without that header (access control off) the answer is a
//! 400: an approval by nobody in particular cannot count toward a quorum
//! of distinct principals, nor be refused to the requester.
//!
//! Admins do not bypass the approvers list: it is the Promise author's
//! four-eyes control, and an admin decides only where an entry names it.
//!
//! Everything else is the engine's (`fulfil_engine::waits::decide_approval`):
//! it records the decision in history and, once the quorum is reached or on
//! a reject, completes or fails the step, all in one transaction. A refused
//! decision changes nothing and answers a problem naming why.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use fulfil_core::ids::RunId;
use fulfil_core::status::Decision;
use fulfil_core::wait::Principal;
use fulfil_engine::waits::{ApprovalError, ApprovalOutcome, ApprovalRequest, decide_approval};
use serde_json::json;

use super::parse_id;
use crate::auth::Caller;
use crate::extract::{self, Path};
use crate::{ApiState, Problem, ProblemCode, model};

/// `POST /v1/runs/{id}/steps/{step}/approve`
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/steps/{step}/approve",
    operation_id = "approve_step",
    tag = "runs",
    params(
        ("id" = uuid::Uuid, Path, description = "The run"),
        ("step" = String, Path, description = "The approval step"),
        ("Fulfil-Actor" = Option<String>, Header, description = "Where access control is off: the principal who approves (`user:alice`), as the step's approvers name them; with it on, the authenticated principal decides"),
    ),
    request_body(content = Option<model::DecideApproval>, description = "May be absent"),
    responses(
        (status = 200, description = "The decision recorded, and where the step stands", body = model::ApprovalOutcome),
        (status = 400, description = "No `Fulfil-Actor` (access control off), or a malformed request", body = crate::Problem, content_type = "application/problem+json"),
        (status = 403, description = "`not-an-approver` or `requester-cannot-approve`", body = crate::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = crate::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`step-not-waiting`, `not-an-approval` or `already-decided`", body = crate::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`unknown-step` or `invalid-body`", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn approve(
    state: State<ApiState>,
    path: Path<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: Option<extract::Json<model::DecideApproval>>,
) -> Result<Json<model::ApprovalOutcome>, Problem> {
    decide(state, path, caller, &headers, body, Decision::Approve).await
}

/// `POST /v1/runs/{id}/steps/{step}/reject`
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/steps/{step}/reject",
    operation_id = "reject_step",
    tag = "runs",
    params(
        ("id" = uuid::Uuid, Path, description = "The run"),
        ("step" = String, Path, description = "The approval step"),
        ("Fulfil-Actor" = Option<String>, Header, description = "Where access control is off: the principal who rejects (`user:alice`), as the step's approvers name them; with it on, the authenticated principal decides"),
    ),
    request_body(content = Option<model::DecideApproval>, description = "May be absent"),
    responses(
        (status = 200, description = "The decision recorded, and where the step stands", body = model::ApprovalOutcome),
        (status = 400, description = "No `Fulfil-Actor` (access control off), or a malformed request", body = crate::Problem, content_type = "application/problem+json"),
        (status = 403, description = "`not-an-approver` or `requester-cannot-approve`", body = crate::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = crate::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`step-not-waiting`, `not-an-approval` or `already-decided`", body = crate::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`unknown-step` or `invalid-body`", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn reject(
    state: State<ApiState>,
    path: Path<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: Option<extract::Json<model::DecideApproval>>,
) -> Result<Json<model::ApprovalOutcome>, Problem> {
    decide(state, path, caller, &headers, body, Decision::Reject).await
}

async fn decide(
    State(state): State<ApiState>,
    Path((id, step)): Path<(String, String)>,
    Caller(caller): Caller,
    headers: &HeaderMap,
    body: Option<extract::Json<model::DecideApproval>>,
    decision: Decision,
) -> Result<Json<model::ApprovalOutcome>, Problem> {
    let run_id: RunId = parse_id("run", &id)?;
    let principal = principal(caller, headers, decision)?;
    let comment = body
        .and_then(|extract::Json(b)| b.comment)
        .filter(|c| !c.trim().is_empty());
    let outcome = decide_approval(
        &state.engine,
        ApprovalRequest {
            run_id,
            step_id: step,
            principal,
            decision,
            comment,
        },
    )
    .await
    .map_err(|e| approval_error(e, &id))?;
    Ok(Json(outcome_model(outcome)))
}

/// The principal deciding: the authenticated caller, or (access control
/// off) the `Fulfil-Actor` header's word, where none is a 400 that says how
/// to give one (the middleware's stand-in `api` names nobody).
fn principal(
    caller: Principal,
    headers: &HeaderMap,
    decision: Decision,
) -> Result<Principal, Problem> {
    if caller.authenticated {
        return Ok(caller);
    }
    let verb = match decision {
        Decision::Approve => "approve",
        Decision::Reject => "reject",
    };
    let missing = || {
        Problem::bad_request(format!(
            "an approval decision needs a principal: send the Fulfil-Actor header naming who \
             decides, as the step's approvers name them (Fulfil-Actor: user:alice), or use \
             `fulfil run {verb} RUN --step STEP --as user:alice` (or FULFIL_ACTOR)"
        ))
    };
    let value = headers.get("fulfil-actor").ok_or_else(missing)?;
    let text = value
        .to_str()
        .map_err(|_| Problem::bad_request("the Fulfil-Actor header is not valid text"))?;
    let text = fulfil_bus::header_text(text);
    if text.trim().is_empty() {
        return Err(missing());
    }
    Ok(caller)
}

fn approval_error(e: ApprovalError, run: &str) -> Problem {
    let detail = e.to_string();
    match e {
        ApprovalError::RunNotFound(_) => Problem::not_found("run", run),
        ApprovalError::UnknownStep { ref step } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::UnknownStep,
            "Unknown step",
            detail,
        )
        .with("step", json!(step)),
        ApprovalError::NotWaiting { ref step, status } => Problem::new(
            StatusCode::CONFLICT,
            ProblemCode::StepNotWaiting,
            "Step not waiting",
            detail,
        )
        .with("step", json!(step))
        .with("step_status", json!(status.as_str())),
        ApprovalError::NotAnApproval { ref step } => Problem::new(
            StatusCode::CONFLICT,
            ProblemCode::NotAnApproval,
            "Not an approval step",
            detail,
        )
        .with("step", json!(step)),
        ApprovalError::NotAnApprover {
            ref principal,
            ref approvers,
        } => Problem::new(
            StatusCode::FORBIDDEN,
            ProblemCode::NotAnApprover,
            "Not an approver",
            detail,
        )
        .with("principal", json!(principal))
        .with("approvers", json!(approvers)),
        ApprovalError::RequesterRefused { ref principal } => Problem::new(
            StatusCode::FORBIDDEN,
            ProblemCode::RequesterCannotApprove,
            "Requester cannot approve",
            detail,
        )
        .with("principal", json!(principal)),
        ApprovalError::AlreadyDecided { ref principal } => Problem::new(
            StatusCode::CONFLICT,
            ProblemCode::AlreadyDecided,
            "Already decided",
            detail,
        )
        .with("principal", json!(principal)),
        ApprovalError::Run(fulfil_engine::run::RunError::Db(e)) => crate::problem::from_db(&e),
        ApprovalError::Run(e) => Problem::internal(&e),
    }
}

fn outcome_model(o: ApprovalOutcome) -> model::ApprovalOutcome {
    model::ApprovalOutcome {
        run_id: o.run_id,
        step: o.step,
        decision: o.decision.as_str().to_string(),
        by: o.by,
        approvals: o.approvals,
        quorum: o.quorum,
        step_status: o.step_status.as_str().to_string(),
        decisions: o.decisions,
    }
}
