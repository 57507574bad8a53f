//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::ApiState;

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Postgres answers a query and NATS is connected.
pub async fn readyz(State(state): State<ApiState>) -> (StatusCode, Json<Value>) {
    let postgres = match sqlx::query("SELECT 1").execute(state.engine.pool()).await {
        Ok(_) => json!({ "ok": true }),
        Err(e) => json!({ "ok": false, "error": e.to_string() }),
    };
    let nats = match &state.nats {
        Some(client) => {
            let connected = client.connection_state() == async_nats::connection::State::Connected;
            json!({ "ok": connected, "state": client.connection_state().to_string() })
        }
        None => json!({ "ok": true, "state": "not used by this process" }),
    };
    let ready = postgres["ok"] == true && nats["ok"] == true;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({ "status": if ready { "ready" } else { "not ready" }, "postgres": postgres, "nats": nats }),
        ),
    )
}
