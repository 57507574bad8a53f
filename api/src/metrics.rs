//! `GET /metrics`: the process's metrics in the Prometheus text format.
//!
//! [`install`] sets the process-wide Prometheus recorder (with explicit
//! buckets for every histogram of `fulfil_engine::metrics`, so they render
//! as histograms, not summaries) once; the route renders it. A process that
//! installed none answers 404 with a problem saying so.

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::Problem;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Installs the process-wide Prometheus recorder, once; later calls return
/// the same handle. Call [`PrometheusHandle::run_upkeep`] on it every few
/// seconds: with the exporter's default features off, nothing else does,
/// and its histogram buffers grow.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let mut builder =
        PrometheusBuilder::new().set_buckets(fulfil_engine::metrics::HISTOGRAM_BUCKETS)?;
    for name in fulfil_engine::metrics::HISTOGRAMS {
        builder = builder.set_buckets_for_metric(
            Matcher::Full((*name).to_string()),
            fulfil_engine::metrics::HISTOGRAM_BUCKETS,
        )?;
    }
    let handle = builder.install_recorder()?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The recorder's handle, if [`install`] ran in this process.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE.get()
}

/// Prometheus text exposition of the `fulfil_*` metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses(
        (status = 200, content_type = "text/plain; version=0.0.4", body = String,
         description = "Prometheus text exposition of the `fulfil_*` metrics"),
        (status = 404, description = "This process records no metrics", body = crate::Problem,
         content_type = "application/problem+json"),
    )
)]
pub async fn render() -> Response {
    match handle() {
        Some(handle) => ([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], handle.render()).into_response(),
        None => Problem::new(
            axum::http::StatusCode::NOT_FOUND,
            crate::ProblemCode::NotFound,
            "Not found",
            "this process records no metrics: it was started without a metrics recorder",
        )
        .into_response(),
    }
}

/// A router serving only `GET /metrics`, for a process without the API
/// role (`--metrics-addr`).
pub fn router() -> axum::Router {
    axum::Router::new().route("/metrics", axum::routing::get(render))
}
