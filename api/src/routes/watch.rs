//! `GET /v1/runs/{id}/events`: a run's history as Server-Sent Events, live
//! (see [`crate::watch`] for what a watcher is guaranteed).
//!
//! Each event has `id:` = its seq, `event:` = its history type and `data:`
//! = the same JSON as an item of `GET /v1/runs/{id}/history`. A client that
//! reconnects with `Last-Event-ID` (or `?after=seq`) gets what follows that
//! seq, with no gap and no duplicate. The stream ends after the run's
//! final event; if the watch cannot go on, a last `event: error` says why.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;

use crate::extract::{Path, Query};
use crate::watch::{WatchItem, watch_run};
use crate::{ApiState, Problem};

/// Comment lines that keep proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/runs/{id}/events",
    operation_id = "watch_run",
    tag = "runs",
    params(
        ("id" = uuid::Uuid, Path, description = "The run"),
        ("after" = Option<i64>, Query, description = "Only events after this history `seq`"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this `seq` (sent by EventSource on reconnect)"),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
         description = "History events as Server-Sent Events, `id:` = seq, `data:` = the history event as JSON; the stream closes after the run's terminal event"),
        (status = 404, description = "No such run", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn events(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    // A reconnecting EventSource repeats the first URL's `after`: the
    // header it adds is the newer position.
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| Problem::bad_request("Last-Event-ID is not text"))
        })
        .transpose()?;
    let after = match (last_event_id, q.after.as_deref()) {
        (Some(v), _) => parse_after("Last-Event-ID", v)?,
        (None, Some(v)) => parse_after("after", v)?,
        (None, None) => 0,
    };
    let stream = watch_run(&state, &id, after).await?;
    let events = stream.map(|item| {
        Ok(match item {
            WatchItem::Event(event) => Event::default()
                .id(event.seq.to_string())
                .event(event.kind.as_str())
                .json_data(&*event)
                .unwrap_or_else(|_| Event::default().comment("unserializable event")),
            WatchItem::Failed(e) => Event::default()
                .event("error")
                .data(json!({ "detail": e.to_string() }).to_string()),
        })
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

fn parse_after(what: &str, value: &str) -> Result<i64, Problem> {
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|seq| *seq >= 0)
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "{what} {value:?} is not a history seq: pass a whole number >= 0"
            ))
        })
}
