//! Fulfil's HTTP/JSON API (`/v1`), mounted by `fulfil serve --roles api`.
//!
//! Every error is `application/problem+json`: handlers and the extractors of
//! [`extract`] answer problems, and [`problem::every_error_a_problem`] turns
//! whatever else answers an error (a wrong method, the timeout) into one.
//! A 500 never carries the error's text, only an id it is logged under.
//! `POST .../requests` answers 202 only after the request's transaction
//! committed (see `fulfil_engine::requests`).

pub mod extract;
pub mod model;
pub mod problem;
mod routes;

use std::time::Duration;

use axum::Router;
use fulfil_engine::Engine;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::trace::TraceLayer;

pub use problem::{Problem, ProblemCode};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub engine: Engine,
    /// Checked by `/readyz`; `None` when this process has no NATS connection.
    pub nats: Option<async_nats::Client>,
}

/// The whole API.
pub fn router(state: ApiState) -> Router {
    routes::router()
        // One limit for every route's body, read by the extractors of
        // `extract`, which answer 413 over it.
        .layer(axum::extract::DefaultBodyLimit::max(
            extract::MAX_BODY_BYTES,
        ))
        .layer(TraceLayer::new_for_http().on_failure(log_failure))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(30),
        ))
        // Outermost, so the timeout's answer passes through it too.
        .layer(axum::middleware::map_response(
            problem::every_error_a_problem,
        ))
        .with_state(state)
}

/// Logs a 5xx answer. A 503 is the intake shedding load on purpose (the
/// caller is told when to retry and nothing was stored): under overload
/// there are thousands of them, and at ERROR they drowned the log.
fn log_failure(class: ServerErrorsFailureClass, latency: Duration, _: &tracing::Span) {
    let latency_ms = latency.as_millis() as u64;
    match class {
        ServerErrorsFailureClass::StatusCode(status)
            if status == axum::http::StatusCode::SERVICE_UNAVAILABLE =>
        {
            tracing::debug!(%status, latency_ms, "request shed")
        }
        class => tracing::error!(%class, latency_ms, "request failed"),
    }
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
