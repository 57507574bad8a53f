//! Reading runs and their history.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use fulfil_engine::inspect::{self, RunFilter};
use fulfil_spec::RunStatus;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{inspect_error, parse_id};
use crate::{ApiState, Problem};

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    promise: Option<String>,
    since: Option<DateTime<Utc>>,
    cursor: Option<String>,
    limit: Option<i64>,
}

pub async fn list(
    State(state): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, Problem> {
    if let Some(status) = &q.status
        && RunStatus::parse(status).is_none()
    {
        let known: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
        return Err(Problem::bad_request(format!(
            "unknown run status {status:?}; one of: {}",
            known.join(", ")
        )));
    }
    let page = inspect::list_runs(
        state.engine.pool(),
        &RunFilter {
            promise: q.promise,
            status: q.status,
            since: q.since,
            cursor: q.cursor,
            limit: q.limit,
        },
    )
    .await
    .map_err(inspect_error)?;
    Ok(Json(json!(page)))
}

pub async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let uuid = parse_id("run", &id)?;
    let run = inspect::get_run(state.engine.pool(), uuid)
        .await
        .map_err(inspect_error)?
        .ok_or_else(|| Problem::not_found("run", &id))?;
    Ok(Json(json!(run)))
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    cursor: Option<String>,
    limit: Option<i64>,
}

pub async fn history(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Value>, Problem> {
    let uuid = parse_id("run", &id)?;
    let page = inspect::history(state.engine.pool(), uuid, q.cursor.as_deref(), q.limit)
        .await
        .map_err(inspect_error)?
        .ok_or_else(|| Problem::not_found("run", &id))?;
    Ok(Json(json!(page)))
}
