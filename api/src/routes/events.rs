//! Inbound events over HTTP, the event ledger and the dead letters.
//!
//! `POST /v1/events` reads a CloudEvent in either binding from headers and
//! bytes itself: the SDK's axum extractor reads bodies without the router's
//! limit (STACK-turn2.md §1), this route keeps it.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use fulfil_core::status::EventOutcome;
use fulfil_engine::events::{
    self, DeadLetter, EventReceipt, HttpEventError, LedgerEntry, LedgerFilter, ReceiveError,
    Received, ReplayError,
};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use uuid::Uuid;

use super::{check_limit, inspect_error, parse_id};
use crate::auth::Caller;
use crate::extract::{Body, Path, Query};
use crate::{ApiState, Problem, ProblemCode, model};

fn receive_error(e: &ReceiveError) -> Problem {
    if e.is_transient() {
        Problem::unavailable(e)
    } else {
        Problem::internal(e)
    }
}

/// Decides an event (structured or binary mode) and answers each trigger's
/// outcome once it is committed.
#[utoipa::path(
    post,
    path = "/v1/events",
    operation_id = "send_event",
    tag = "events",
    request_body(
        description = "A CloudEvent 1.0: structured (`application/cloudevents+json`), or binary (the data as the body, attributes as `ce-*` headers)",
        content(
            (crate::openapi::views::CloudEvent = "application/cloudevents+json"),
            (Object = "application/json"),
        ),
    ),
    responses(
        (status = 202, description = "Decided: what each trigger did with it", body = crate::openapi::views::EventReceipt),
        (status = 422, description = "`invalid-event`: not a CloudEvent 1.0", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn send(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<(StatusCode, Json<EventReceipt>), Problem> {
    // Not team-scoped: an event is a fact about the world offered to every
    // Promise's triggers, which decide for themselves (docs/access.md).
    match events::receive_http(&state.engine, &headers, &body, &caller.id).await {
        Ok(receipt) => Ok((StatusCode::ACCEPTED, Json(receipt))),
        Err(HttpEventError::NotACloudEvent(e)) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidEvent,
            "Not a CloudEvent",
            format!(
                "{e}; send a CloudEvent 1.0 as JSON with Content-Type: application/cloudevents+json, or its data with ce-specversion, ce-id, ce-source and ce-type headers"
            ),
        )),
        Err(HttpEventError::Receive(e)) => Err(receive_error(&e)),
        Err(e @ HttpEventError::NoReceipt) => Err(Problem::internal(&e)),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only events of this CloudEvent `type`.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// Only events from this CloudEvent `source`.
    source: Option<String>,
    /// Only events a trigger gave this outcome: `filed`, `duplicate`,
    /// `filtered` or `invalid`.
    #[param(schema_with = crate::openapi::schemas::event_outcome)]
    outcome: Option<String>,
    /// Only events received at or after this time (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Page size, at least 1.
    #[param(minimum = 1)]
    limit: Option<i64>,
}

/// The ledger, newest first.
#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "list_events",
    tag = "events",
    params(ListQuery),
    responses((status = 200, description = "A page of the event ledger", body = model::Page<crate::openapi::views::LedgerEntry>))
)]
pub async fn list(
    State(state): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<model::Page<LedgerEntry>>, Problem> {
    let outcome = q
        .outcome
        .as_deref()
        .map(EventOutcome::parse)
        .transpose()
        .map_err(|e| {
            Problem::bad_request(format!("outcome: {e}")).with("parameter", json!("outcome"))
        })?;
    let limit = check_limit(q.limit)?;
    let page = events::list_events(
        state.engine.pool(),
        &LedgerFilter {
            event_type: q.event_type,
            source: q.source,
            outcome,
            since: q.since,
            cursor: q.cursor,
            limit,
        },
    )
    .await
    .map_err(inspect_error)?;
    Ok(Json(model::Page {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// One ledger entry: the event and what each trigger did with it.
#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    operation_id = "get_event",
    tag = "events",
    params(("id" = uuid::Uuid, Path, description = "The ledger entry (`ledger_id`)")),
    responses(
        (status = 200, description = "The ledger entry", body = crate::openapi::views::LedgerEntry),
        (status = 404, description = "No such ledger entry", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<LedgerEntry>, Problem> {
    let ledger_id: Uuid = parse_id("ledger entry", &id)?;
    events::get_event(state.engine.pool(), ledger_id)
        .await
        .map_err(inspect_error)?
        .map(Json)
        .ok_or_else(|| Problem::not_found("event", &id))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Page size, at least 1.
    #[param(minimum = 1)]
    limit: Option<i64>,
}

/// `GET /v1/dead-letters`: the inbound dead letters, and a summary of what
/// workers and the result applier dead-lettered on the bus.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetters {
    #[schema(value_type = Vec<crate::openapi::views::DeadLetter>)]
    items: Vec<DeadLetter>,
    next_cursor: Option<String>,
    /// `{stream, count, subjects}` of the bus's dead-letter stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    bus: Option<serde_json::Value>,
}

/// Dead letters, newest first, each with its reason and original bytes.
#[utoipa::path(
    get,
    path = "/v1/dead-letters",
    operation_id = "list_dead_letters",
    tag = "events",
    params(DeadLetterQuery),
    responses((status = 200, description = "A page of inbound dead letters, and the bus's dead-letter counts under `bus`", body = DeadLetters))
)]
pub async fn dead_letters(
    State(state): State<ApiState>,
    Query(q): Query<DeadLetterQuery>,
) -> Result<Json<DeadLetters>, Problem> {
    let limit = check_limit(q.limit)?;
    let page = events::list_dead_letters(state.engine.pool(), q.cursor.as_deref(), limit)
        .await
        .map_err(inspect_error)?;
    Ok(Json(DeadLetters {
        items: page.items,
        next_cursor: page.next_cursor,
        bus: super::health::bus_dead_letters(&state).await?,
    }))
}

/// Sends a dead letter through the normal path again and answers what it
/// did this time.
#[utoipa::path(
    post,
    path = "/v1/dead-letters/{id}/replay",
    operation_id = "replay_dead_letter",
    tag = "events",
    params(("id" = uuid::Uuid, Path, description = "The dead letter")),
    responses(
        (status = 200, description = "What the triggers did with it this time", body = crate::openapi::views::EventReceipt),
        (status = 404, description = "No such dead letter", body = crate::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid-event`: it is still not a CloudEvent", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replay(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, Problem> {
    let dead_letter: Uuid = parse_id("dead letter", &id)?;
    match events::replay_dead_letter(&state.engine, dead_letter).await {
        Ok(Received::Event(receipt)) => Ok(Json(json!(receipt))),
        Ok(Received::NotAnEvent { reason, .. }) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidEvent,
            "Still not a CloudEvent",
            format!("dead letter {id} was replayed: {reason}"),
        )),
        Err(ReplayError::NotFound(_)) => Err(Problem::not_found("dead letter", &id)),
        Err(ReplayError::Inspect(e)) => Err(inspect_error(e)),
        Err(ReplayError::Receive(e)) => Err(receive_error(&e)),
    }
}
