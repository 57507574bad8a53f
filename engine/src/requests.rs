//! Accepting a Promise request.
//!
//! [`create_request`] validates the parameters against the Promise's schema
//! (defaults applied) and then, in one transaction, inserts the request, its
//! run, every step, the first history events and the tasks of the root
//! steps. Only after that transaction commits does the caller acknowledge the
//! request (HTTP 202), so nothing acknowledged can be lost. Invalid input is
//! refused before anything is written.

use std::sync::Arc;

use fulfil_spec::Promise;
use fulfil_spec::params::{ParamsError, Violation};
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::Engine;
use crate::promises::PromiseError;
use crate::run::{Run, RunError, advance, event};

/// What the caller asked for.
#[derive(Debug, Clone, Default)]
pub struct NewRequest {
    pub promise: String,
    pub params: Value,
    pub idempotency_key: Option<String>,
    /// Who asked, recorded in history (`api`, `cli:alice`, `event:<source>`).
    pub actor: String,
}

/// The accepted request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accepted {
    pub request_id: Uuid,
    pub run_id: Uuid,
    /// True when an earlier request with the same idempotency key and the
    /// same parameters was returned instead of creating a new one.
    pub replayed: bool,
}

/// Why a request was refused. Nothing was stored for any of these.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No Promise of that name has been applied.
    #[error("no Promise named {0:?}")]
    UnknownPromise(String),
    /// The parameters break the Promise's schema; every violation is listed.
    #[error("invalid parameters for Promise {promise}: {} violation(s)", violations.len())]
    InvalidParams {
        promise: String,
        violations: Vec<Violation>,
    },
    /// The idempotency key was used before with different parameters.
    #[error(
        "idempotency key {key:?} was already used for request {request_id} with different parameters"
    )]
    IdempotencyConflict { key: String, request_id: Uuid },
    /// The idempotency key is empty or too long.
    #[error("invalid idempotency key: {0}")]
    InvalidIdempotencyKey(String),
    /// The Promise could not be loaded.
    #[error(transparent)]
    Promise(PromiseError),
    /// The run could not be created; the transaction rolled back.
    #[error(transparent)]
    Run(#[from] RunError),
}

impl From<sqlx::Error> for RequestError {
    fn from(e: sqlx::Error) -> Self {
        Self::Run(RunError::Db(e))
    }
}

const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Validates and durably records a request; see the module docs.
pub async fn create_request(
    engine: &Engine,
    request: NewRequest,
) -> Result<Accepted, RequestError> {
    if let Some(key) = &request.idempotency_key
        && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN)
    {
        return Err(RequestError::InvalidIdempotencyKey(format!(
            "must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes, got {}",
            key.len()
        )));
    }
    let promise = match engine
        .promises()
        .load_head(engine.pool(), &request.promise)
        .await
    {
        Ok(p) => p,
        Err(PromiseError::NotFound(_)) => {
            return Err(RequestError::UnknownPromise(request.promise));
        }
        Err(e) => return Err(RequestError::Promise(e)),
    };
    let params = engine
        .promises()
        .params_schema(&promise)
        .and_then(|schema| schema.validate(request.params))
        .map_err(|e| match e {
            ParamsError::Invalid(violations) => RequestError::InvalidParams {
                promise: request.promise.clone(),
                violations,
            },
            ParamsError::Schema(message) => RequestError::Promise(PromiseError::Corrupt {
                name: promise.metadata.name.clone(),
                version: promise.metadata.version.clone(),
                message,
            }),
        })?;

    let request_id = Uuid::now_v7();
    let run_id = Uuid::now_v7();
    let mut tx = engine.pool().begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO fulfil.requests (id, promise, promise_version, params, idempotency_key, status, run_id, created_by)
         VALUES ($1, $2, $3, $4, $5, 'running', $6, $7)
         ON CONFLICT (promise, idempotency_key) DO NOTHING",
    )
    .bind(request_id)
    .bind(&promise.metadata.name)
    .bind(&promise.metadata.version)
    .bind(&params)
    .bind(&request.idempotency_key)
    .bind(run_id)
    .bind(&request.actor)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        // Only an idempotency key can conflict; the other transaction has
        // committed by now, so its row is visible.
        let key = request.idempotency_key.unwrap_or_default();
        let (existing_id, existing_run, existing_params): (Uuid, Option<Uuid>, Value) = sqlx::query_as(
            "SELECT id, run_id, params FROM fulfil.requests WHERE promise = $1 AND idempotency_key = $2",
        )
        .bind(&promise.metadata.name)
        .bind(&key)
        .fetch_one(&mut *tx)
        .await?;
        tx.rollback().await?;
        return match existing_run {
            Some(run_id) if existing_params == params => Ok(Accepted {
                request_id: existing_id,
                run_id,
                replayed: true,
            }),
            _ => Err(RequestError::IdempotencyConflict {
                key,
                request_id: existing_id,
            }),
        };
    }

    let context = json!({
        "params": params,
        "request": {
            "id": request_id,
            "promise": promise.metadata.name,
            "promise_version": promise.metadata.version,
            "created_by": request.actor,
        },
        "env": captured_env(&promise),
    });
    let mut run = Run::new(
        run_id,
        request_id,
        context,
        promise.clone(),
        engine.names().clone(),
        request.actor.clone(),
        engine.has_fast_publisher(),
    );
    run.record(
        event::REQUEST_ACCEPTED,
        None,
        None,
        json!({ "request_id": request_id, "promise": promise.metadata.name,
                "promise_version": promise.metadata.version, "idempotency_key": request.idempotency_key }),
    );
    run.record(
        event::RUN_STARTED,
        None,
        None,
        json!({ "kind": "configure" }),
    );
    if let Some(limit) = promise.run_timeout() {
        let fire_at =
            chrono::Utc::now() + chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::MAX);
        run.add_timer("run_timeout", "", None, fire_at);
    }
    advance(&mut run)?;
    let rows = run.commit(tx).await?;
    engine.after_commit(rows);
    Ok(Accepted {
        request_id,
        run_id,
        replayed: false,
    })
}

/// The environment variables the Promise reads, captured at request time so
/// every engine renders identical inputs for the run. Unset ones are null.
fn captured_env(promise: &Arc<Promise>) -> Value {
    let mut env = Map::new();
    for name in promise.env_references() {
        env.insert(
            name.clone(),
            std::env::var(&name)
                .map(Value::String)
                .unwrap_or(Value::Null),
        );
    }
    Value::Object(env)
}
