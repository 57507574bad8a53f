//! Team scoping in the handlers: the ownership lookups of
//! `fulfil_engine::ownership` run before the action, and a refusal becomes
//! a 403 `forbidden` problem naming the caller's team and the owner. The
//! route's role was checked before the handler ran; this is what needs the
//! stored data.
//!
//! Existence is checked first: a missing run or request is a 404 whatever
//! the caller's team (every authenticated principal reads everything, so
//! a 404 tells nothing a read would not).

use fulfil_core::access::Principal;
use fulfil_core::ids::{RequestId, RunId};
use fulfil_engine::ownership::{self, Refusal};
use serde_json::json;

use crate::{ApiState, Problem, ProblemCode};

/// The 403 for a refusal; `forbidden`, with `team` (the caller's) and
/// `owner`, and for `spec.access` the Promise and its allowed teams.
pub(crate) fn refused(refusal: Refusal) -> Problem {
    let detail = refusal.to_string();
    match refusal {
        Refusal::MissingOwner { team, .. } => Problem::new(
            axum::http::StatusCode::FORBIDDEN,
            ProblemCode::Forbidden,
            "Forbidden",
            detail,
        )
        .with("team", json!(team))
        .with("owner", json!(null)),
        Refusal::OutsideTeam { team, owner, .. } => {
            Problem::outside_team(detail, team.as_deref(), owner.as_deref())
        }
        Refusal::NotOpenToTeam {
            promise,
            allowed,
            team,
        } => Problem::outside_team(detail, team.as_deref(), None)
            .with("promise", json!(promise))
            .with("allowed_teams", json!(allowed)),
    }
}

/// May `caller` act on run `id` (`action`, e.g. `cancel`)? 404 if there is
/// no such run.
pub(crate) async fn run(
    state: &ApiState,
    caller: &Principal,
    id: RunId,
    action: &str,
) -> Result<(), Problem> {
    if !caller.authenticated {
        return Ok(());
    }
    let owners = ownership::run_owners(state.engine.pool(), id)
        .await
        .map_err(|e| crate::problem::from_db(&e))?
        .ok_or_else(|| Problem::not_found("run", &id.to_string()))?;
    ownership::may_act(caller, &format!("{action} run {id}"), &owners).map_err(refused)
}

/// May `caller` act on request `id`? 404 if there is no such request.
pub(crate) async fn request(
    state: &ApiState,
    caller: &Principal,
    id: RequestId,
    action: &str,
) -> Result<(), Problem> {
    if !caller.authenticated {
        return Ok(());
    }
    let owners = ownership::request_owners(state.engine.pool(), id)
        .await
        .map_err(|e| crate::problem::from_db(&e))?
        .ok_or_else(|| Problem::not_found("request", &id.to_string()))?;
    ownership::may_act(caller, &format!("{action} request {id}"), &owners).map_err(refused)
}
