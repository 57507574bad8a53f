//! Route table and the small helpers shared by the handlers.

mod approvals;
mod events;
mod health;
mod promises;
mod requests;
mod runs;
mod schedules;

use axum::Router;
use axum::routing::{get, post, put};

use crate::{ApiState, Problem};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(crate::metrics::render))
        .route("/v1/promises", get(promises::list))
        .route(
            "/v1/promises/{name}",
            put(promises::apply).get(promises::get),
        )
        .route("/v1/promises/{name}/requests", post(requests::create))
        .route("/v1/requests", get(requests::list))
        .route(
            "/v1/requests/{id}",
            get(requests::get).delete(requests::delete),
        )
        .route("/v1/requests/{id}/reconcile", post(requests::reconcile))
        .route("/v1/runs", get(runs::list))
        .route("/v1/runs/{id}", get(runs::get))
        .route("/v1/runs/{id}/history", get(runs::history))
        .route("/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/v1/runs/{id}/retry", post(runs::retry))
        .route(
            "/v1/runs/{id}/steps/{step}/approve",
            post(approvals::approve),
        )
        .route("/v1/runs/{id}/steps/{step}/reject", post(approvals::reject))
        .route("/v1/events", post(events::send).get(events::list))
        .route("/v1/events/{id}", get(events::get))
        .route("/v1/dead-letters", get(events::dead_letters))
        .route("/v1/dead-letters/{id}/replay", post(events::replay))
        .route("/v1/schedules", get(schedules::list))
        .route(
            "/v1/schedules/{name}",
            put(schedules::apply)
                .get(schedules::get)
                .delete(schedules::delete),
        )
        .route("/v1/schedules/{name}/ticks", get(schedules::ticks))
        .route("/v1/schedules/{name}/pause", post(schedules::pause))
        .route("/v1/schedules/{name}/resume", post(schedules::resume))
        .fallback(|| async { crate::problem::not_a_route() })
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
