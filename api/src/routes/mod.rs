//! Route table and the small helpers shared by the handlers.

mod approvals;
mod events;
mod health;
mod policies;
mod promises;
mod requests;
mod rollouts;
mod runs;
mod schedules;
mod scope;
mod tokens;
mod watch;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{ApiState, Problem};

/// The route table and, from the same calls, the OpenAPI document: each
/// `routes!` serves handlers and adds their `#[utoipa::path]`, so what is
/// served and what is described are one list. Add a route here with
/// `.routes(routes!(...))`, never `.route(...)`, which would serve it
/// undescribed.
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(<crate::openapi::ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(crate::metrics::render))
        .routes(routes!(crate::openapi::serve))
        .routes(routes!(promises::list))
        .routes(routes!(promises::apply, promises::get))
        .routes(routes!(requests::create))
        .routes(routes!(requests::list))
        .routes(routes!(requests::get, requests::delete))
        .routes(routes!(requests::reconcile))
        .routes(routes!(requests::pin, requests::unpin))
        .routes(routes!(rollouts::create))
        .routes(routes!(rollouts::list))
        .routes(routes!(rollouts::get))
        .routes(routes!(rollouts::pause))
        .routes(routes!(rollouts::resume))
        .routes(routes!(rollouts::cancel))
        .routes(routes!(runs::list))
        .routes(routes!(runs::get))
        .routes(routes!(runs::history))
        .routes(routes!(watch::events))
        .routes(routes!(runs::cancel))
        .routes(routes!(runs::retry))
        .routes(routes!(approvals::approve))
        .routes(routes!(approvals::reject))
        .routes(routes!(events::send, events::list))
        .routes(routes!(events::get))
        .routes(routes!(events::dead_letters))
        .routes(routes!(events::replay))
        .routes(routes!(schedules::list))
        .routes(routes!(schedules::apply, schedules::get, schedules::delete))
        .routes(routes!(schedules::ticks))
        .routes(routes!(schedules::pause))
        .routes(routes!(schedules::resume))
        .routes(routes!(tokens::create, tokens::list))
        .routes(routes!(tokens::revoke))
        .routes(routes!(policies::list))
        .routes(routes!(policies::apply, policies::get, policies::delete))
}

/// An id from the path; one that is not a UUID is a 400 naming it.
pub(crate) fn parse_id<T: std::str::FromStr>(what: &str, id: &str) -> Result<T, Problem> {
    id.parse()
        .map_err(|_| Problem::bad_request(format!("{what} id {id:?} is not a UUID")))
}

pub(crate) fn inspect_error(e: fulfil_engine::inspect::InspectError) -> Problem {
    match e {
        fulfil_engine::inspect::InspectError::InvalidCursor(c) => Problem::bad_request(format!(
            "invalid cursor {c:?}: pass next_cursor from the previous page"
        )),
        fulfil_engine::inspect::InspectError::Db(e) => crate::problem::from_db(&e),
    }
}

/// Refuses a page size below one: clamping `-1` to a page of one would
/// answer something the caller did not ask for.
pub(crate) fn check_limit(limit: Option<i64>) -> Result<Option<i64>, Problem> {
    match limit {
        Some(n) if n < 1 => Err(Problem::bad_request(format!(
            "limit: {n} is not a page size; pass a number from 1 to {}",
            fulfil_engine::inspect::MAX_PAGE
        ))
        .with("parameter", serde_json::json!("limit"))),
        other => Ok(other),
    }
}
