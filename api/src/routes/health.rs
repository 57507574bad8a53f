//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::ApiState;

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "The process is up", body = crate::openapi::views::Health))
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Postgres answers a query, NATS is connected and every role of the
/// process (see `fulfil_engine::roles`) is running.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: Postgres, NATS and every role are up", body = crate::openapi::views::Readiness),
        (status = 503, description = "Not ready; the body names what is down", body = crate::openapi::views::Readiness),
    )
)]
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
    // A loop of this process that stopped (or waits to restart after a
    // panic) makes it not ready, named with its reason.
    let down = state.engine.roles().down();
    let roles =
        json!({ "ok": down.is_empty(), "down": down, "all": state.engine.roles().snapshot() });
    let ready = postgres["ok"] == true && nats["ok"] == true && roles["ok"] == true;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({ "status": if ready { "ready" } else { "not ready" }, "postgres": postgres, "nats": nats, "roles": roles }),
        ),
    )
}

/// Messages the workers and the result applier moved to the bus's
/// dead-letter stream, in total and per subject (`bus` in
/// `GET /v1/dead-letters`, beside the inbound dead letters kept in
/// Postgres). `None` when this process has no NATS connection.
pub(crate) async fn bus_dead_letters(state: &ApiState) -> Result<Option<Value>, crate::Problem> {
    let Some(client) = &state.nats else {
        return Ok(None);
    };
    let js = async_nats::jetstream::new(client.clone());
    let names = state.engine.names();
    let stream = js
        .get_stream(names.dead_letter_stream())
        .await
        .map_err(|e| crate::Problem::unavailable(&e))?;
    let mut subjects = serde_json::Map::new();
    let mut per_subject = stream
        .info_with_subjects(names.all_dead_letter_subject())
        .await
        .map_err(|e| crate::Problem::unavailable(&e))?;
    use futures::TryStreamExt;
    while let Some((subject, count)) = per_subject
        .try_next()
        .await
        .map_err(|e| crate::Problem::unavailable(&e))?
    {
        subjects.insert(subject, json!(count));
    }
    // Both figures from one server answer, so they always agree.
    let count: u64 = subjects.values().filter_map(Value::as_u64).sum();
    Ok(Some(json!({
        "stream": names.dead_letter_stream(),
        "count": count,
        "subjects": subjects,
    })))
}
