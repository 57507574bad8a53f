//! Logs, traces and metrics of a `fulfil` server process
//! (`docs/observability.md`).
//!
//! * Logs: text or JSON lines (`--log-json`) on stderr, filtered by
//!   `RUST_LOG`.
//! * Traces: an OpenTelemetry layer exporting spans over OTLP/HTTP
//!   (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, as service
//!   `OTEL_SERVICE_NAME` (default `fulfil`). Without it there is no layer:
//!   the only cost left is the `traceparent` the engine puts on each task.
//!   The exporter uses the blocking HTTP client with the SDK's batch
//!   processor (its own thread), the pairing the OTLP crate supports.
//! * Metrics: a Prometheus recorder, rendered at `GET /metrics` on the API
//!   port, or on `--metrics-addr` for a process without the API role.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How often the metrics recorder's histogram buffers are drained.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Spans exported over OTLP: Fulfil's own at `info` (accept, plan,
/// dispatch, execute, apply), not the libraries' internals.
const SPAN_FILTER: &str =
    "info,sqlx=warn,async_nats=warn,h2=warn,hyper=warn,hyper_util=warn,tower=warn,reqwest=warn";

/// What must be flushed when the process ends.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter. Blocking
    /// (the exporter's HTTP client is), so it runs off the async threads.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = done {
                warn!(error = %e, "flushing the trace exporter failed");
            }
        }
    }
}

/// Installs the process's log and trace subscriber. A second call (tests)
/// leaves the first in place.
pub fn init(json: bool) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,async_nats=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let (otel, provider, problem) = match otlp_provider() {
        Ok(Some(provider)) => {
            let tracer = provider.tracer("fulfil");
            // Its own filter: `RUST_LOG=warn` quiets the log, not the trace.
            let spans = EnvFilter::new(SPAN_FILTER);
            (
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(spans),
                ),
                Some(provider),
                None,
            )
        }
        Ok(None) => (None, None, None),
        Err(e) => (None, None, Some(e)),
    };
    let exporting = otel.is_some();
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    if let Some(e) = problem {
        warn!(error = %format!("{e:#}"), "OTLP trace export is off");
    } else if exporting {
        info!(service = %service_name(), "exporting traces over OTLP");
    }
    Telemetry { provider }
}

/// The OTLP trace pipeline, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or its
/// traces-only variant) names a collector.
fn otlp_provider() -> anyhow::Result<Option<SdkTracerProvider>> {
    let set = |name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .context("building the OTLP/HTTP span exporter")?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name())
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

fn service_name() -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "fulfil".into())
}

/// Installs the Prometheus recorder, keeps it drained, and serves
/// `GET /metrics` on `addr` when given, until `shutdown`.
pub async fn start_metrics(
    addr: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let handle = fulfil_api::metrics::install().context("installing the metrics recorder")?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(UPKEEP_INTERVAL) => handle.run_upkeep(),
            }
        }
    });
    if let Some(addr) = addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint to {addr}"))?;
        info!(%addr, "metrics at /metrics");
        tokio::spawn(async move {
            let served = axum::serve(listener, fulfil_api::metrics::router())
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                warn!(error = %e, "the metrics endpoint stopped");
            }
        });
    }
    Ok(())
}
