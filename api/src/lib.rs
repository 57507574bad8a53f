//! Fulfil's HTTP/JSON API (`/v1`), mounted by `fulfil serve --roles api`.
//!
//! Every error is `application/problem+json`: handlers and the extractors of
//! [`extract`] answer problems, and [`problem::every_error_a_problem`] turns
//! whatever else answers an error (a wrong method, the timeout) into one.
//! A handler that panics answers a 500 problem too, instead of dropping the
//! connection.
//! A 500 never carries the error's text, only an id it is logged under.
//! `POST .../requests` answers 202 only after the request's transaction
//! committed (see `fulfil_engine::requests`).

pub mod auth;
pub mod console;
pub mod extract;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod problem;
pub(crate) mod routes;
pub mod sse;
pub mod watch;

use std::time::Duration;

use axum::Router;
use fulfil_engine::Engine;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::trace::TraceLayer;

pub use problem::{Problem, ProblemCode};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub engine: Engine,
    /// Checked by `/readyz`; `None` when this process has no NATS connection.
    pub nats: Option<async_nats::Client>,
    /// Live run history for SSE and gRPC watchers; `Default` is a hub that
    /// starts on first use.
    pub watch: watch::WatchHub,
    /// How callers are authenticated; off unless set.
    pub auth: auth::Auth,
    /// The largest request body any route reads; over it, a 413.
    pub max_body_bytes: usize,
    /// Where `/ui` reads the web console from.
    pub console: console::ConsoleFiles,
}

impl ApiState {
    /// The API over `engine`, with access control off and default limits.
    pub fn new(engine: Engine, nats: Option<async_nats::Client>) -> ApiState {
        ApiState {
            engine,
            nats,
            watch: watch::WatchHub::default(),
            auth: auth::Auth::off(),
            max_body_bytes: extract::MAX_BODY_BYTES,
            console: console::ConsoleFiles::Embedded,
        }
    }
}

/// The whole API.
pub fn router(state: ApiState) -> Router {
    let (routes, _) = routes::router().split_for_parts();
    // A route layer, so a path that is no route answers 404 to anyone and
    // the layer sees which route matched.
    let routes = routes.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::authenticate,
    ));
    let max_body_bytes = state.max_body_bytes;
    let console = console::router(state.console.clone());
    edge(
        routes.fallback(|| async { problem::not_a_route() }),
        max_body_bytes,
    )
    .with_state(state)
    // Outside the authentication layer: the console's files hold no data.
    .merge(edge(console, max_body_bytes))
}

/// The layers every route sits behind, innermost first; apart from the
/// routes so a test can put them around a handler of its own.
fn edge<S: Clone + Send + Sync + 'static>(routes: Router<S>, max_body_bytes: usize) -> Router<S> {
    routes
        // One limit for every route's body, read by the extractors of
        // `extract`, which answer 413 over it and name it.
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::Extension(extract::BodyLimit(max_body_bytes)))
        // Inside the trace, so a panic's 500 is traced and logged as a
        // failure like any other.
        .layer(CatchPanicLayer::custom(problem::from_panic))
        .layer(TraceLayer::new_for_http().on_failure(log_failure))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(30),
        ))
        // Outermost, so the timeout's answer passes through it too.
        .layer(axum::middleware::map_response(move |response| {
            problem::every_error_a_problem(response, max_body_bytes)
        }))
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
    let hub = state.watch.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Open event streams would hold the shutdown until their runs end.
            hub.close();
        })
        .await
}

/// One log capture for the whole test process, installed as the global
/// subscriber by the first test that asks for it. A subscriber scoped to
/// one test's thread is not enough: a callsite that another test's thread
/// registers at the same moment keeps the interest it computed without it,
/// and its lines are lost (seen under load in CI).
#[cfg(test)]
pub(crate) mod test_logs {
    use std::sync::{Arc, Mutex, OnceLock};

    use tracing_subscriber::fmt::MakeWriter;

    /// Collects what the subscriber logs.
    #[derive(Clone, Default)]
    pub struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        /// Everything logged so far, by every test.
        pub fn text(&self) -> String {
            let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut bytes) = self.0.lock() {
                bytes.extend_from_slice(buf);
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// The capture, installed on first use; every test that may log at
    /// ERROR calls this before doing so.
    pub fn installed() -> Captured {
        static LOGS: OnceLock<Captured> = OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Captured::default();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(logs.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::ERROR)
                .finish();
            // Fails only if another global subscriber exists; then lines go there.
            let _ = tracing::subscriber::set_global_default(subscriber);
            tracing::callsite::rebuild_interest_cache();
            logs
        })
        .clone()
    }
}

#[cfg(test)]
mod tests {

    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use axum::routing::get;
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;

    async fn panics() -> &'static str {
        panic!("boom: secret detail");
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_a_500_problem_logged_under_its_id() {
        let logs = test_logs::installed();
        let app = edge(
            Router::new().route("/boom", get(panics)),
            extract::MAX_BODY_BYTES,
        );
        let request = Request::get("/boom")
            .body(Body::empty())
            .expect("a valid request");
        let answer = app.oneshot(request).await.expect("an answer, not an error");

        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            answer.headers().get(header::CONTENT_TYPE),
            Some(&header::HeaderValue::from_static(
                "application/problem+json"
            ))
        );
        let body = axum::body::to_bytes(answer.into_body(), 64 * 1024)
            .await
            .expect("the body");
        let body: Value = serde_json::from_slice(&body).expect("a JSON body");
        assert_eq!(body["type"], "https://fulfil.dev/problems/internal");
        assert_eq!(body["status"], 500);
        assert!(!body.to_string().contains("secret"), "{body}");
        let error_id = body["error_id"].as_str().expect("an error_id");

        let logs = logs.text();
        let line = logs
            .lines()
            .find(|line| line.contains(error_id))
            .unwrap_or_else(|| panic!("no log line names {error_id}: {logs}"));
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains("boom: secret detail"), "{line}");
    }

    async fn echo(extract::Json(body): extract::Json<Value>) -> axum::Json<Value> {
        axum::Json(body)
    }

    /// A JSON body of exactly `len` bytes: a string padded to fit.
    fn body_of(len: usize) -> Vec<u8> {
        format!("\"{}\"", "x".repeat(len - 2)).into_bytes()
    }

    #[tokio::test]
    async fn the_configured_body_limit_is_enforced_and_named_in_the_413() {
        let app = edge(
            Router::new().route("/echo", axum::routing::post(echo)),
            4096,
        );
        let post = |len: usize| {
            Request::post("/echo")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body_of(len)))
                .expect("a valid request")
        };
        let at_limit = app.clone().oneshot(post(4096)).await.expect("an answer");
        assert_eq!(at_limit.status(), StatusCode::OK);

        let over = app.oneshot(post(4097)).await.expect("an answer");
        assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = axum::body::to_bytes(over.into_body(), 64 * 1024)
            .await
            .expect("the body");
        let body: Value = serde_json::from_slice(&body).expect("a JSON body");
        assert_eq!(body["code"], "payload-too-large", "{body}");
        assert_eq!(body["limit_bytes"], 4096, "{body}");
    }
}
