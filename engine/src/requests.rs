//! Accepting a Promise request.
//!
//! [`create_request`] validates the parameters against the Promise's schema
//! (defaults applied) and then hands the request to the intake
//! (`crate::intake`), which stores it together with whatever other
//! requests arrived meanwhile: in one transaction, the request, its run,
//! every step, the first history events and the tasks of the root steps.
//! Only after that transaction commits is the request answered (HTTP 202),
//! so nothing acknowledged can be lost. Invalid input, and a request an
//! admission policy denies ([`crate::policies::admit`]), is refused before
//! anything is written.
//!
//! The Promise's head version comes from a per-process cache, so a request
//! costs no read of its own; the storing transaction inserts a request only
//! if the version it was validated against is still the head, and one that
//! lost the head is validated again against the new one.
//!
//! A batch without idempotency keys is written by a single statement,
//! committed on its own (one round trip instead of four); a batch with keys
//! takes a transaction that looks up the requests holding them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fulfil_bus::trace::TraceParent;
use fulfil_core::Promise;
use fulfil_core::ids::{RequestId, RunId};
use fulfil_core::params::{ParamsError, Violation};
use fulfil_core::status::{RunKind, TimerKind};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Arguments;
use tracing::Instrument;
use uuid::Uuid;

use crate::Engine;
use crate::promises::PromiseError;
use crate::run::{NewRun, Run, RunError, advance, event};

/// What the caller asked for.
#[derive(Debug, Clone, Default)]
pub struct NewRequest {
    pub promise: String,
    pub params: Value,
    pub idempotency_key: Option<String>,
    /// Who asked, recorded in history (`api`, `cli:alice`, `event:<source>`).
    pub actor: String,
    /// The authenticated caller who files it; `None` for the engine's own
    /// callers (triggers, schedules), which admission policies see by their
    /// `actor` and the Promise's owner team.
    pub principal: Option<fulfil_core::access::Principal>,
    /// W3C `traceparent` of what caused the request (an inbound event's
    /// extension): kept in the run's `request.traceparent` and carried onto
    /// the run's status events.
    pub traceparent: Option<String>,
}

/// The accepted request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accepted {
    pub request_id: RequestId,
    pub run_id: RunId,
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
    IdempotencyConflict { key: String, request_id: RequestId },
    /// The idempotency key is empty or too long.
    #[error("invalid idempotency key: {0}")]
    InvalidIdempotencyKey(String),
    /// The Promise could not be loaded.
    #[error(transparent)]
    Promise(PromiseError),
    /// The filing principal's team may not file for this Promise
    /// (`spec.access`).
    #[error(transparent)]
    Refused(crate::ownership::Refusal),
    /// This process is shutting down and stored nothing; try again.
    #[error("the engine is shutting down; the request was not stored")]
    IntakeStopped,
    /// More requests are waiting to be stored than the intake holds; this
    /// one was turned away before anything was stored. Retry shortly.
    #[error(
        "the engine is taking in more requests than it can store ({0} waiting); the request was not stored, retry shortly"
    )]
    Overloaded(usize),
    /// The Promise's head version kept moving while the request was being
    /// stored; nothing was stored. Retry.
    #[error(
        "Promise {0:?} got a new version while the request was being stored; the request was not stored, retry"
    )]
    HeadMoved(String),
    /// The run could not be created; the transaction rolled back.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The parameters are larger than any task can carry, so no step could
    /// ever receive them; nothing was stored.
    #[error(
        "the parameters are {bytes} bytes; at most {limit} bytes are accepted, the most a task can carry"
    )]
    TooLarge { bytes: usize, limit: usize },
    /// An admission policy refused the request (see [`crate::policies`]);
    /// every broken rule is listed. Nothing was stored.
    #[error(
        "denied by admission policy: {}",
        fulfil_core::policy::describe_violations(violations)
    )]
    PolicyDenied {
        violations: Vec<fulfil_core::policy::Violation>,
    },
    /// A bug in the engine stopped the request being stored (a panic,
    /// logged); nothing was stored. Not the caller's fault.
    #[error("internal error; the request was not stored: {0}")]
    Internal(String),
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
    // Refused before anything else: such parameters would be stored, then
    // fail every step that reads them, or worse, sit in the outbox.
    let bytes = crate::run::json_size(&request.params);
    if bytes > crate::run::MAX_TASK_INPUT_BYTES {
        return Err(RequestError::TooLarge {
            bytes,
            limit: crate::run::MAX_TASK_INPUT_BYTES,
        });
    }
    // The head is a cached guess; the storing transaction checks it, and a
    // request validated against a version that lost the head is validated
    // again against the new head.
    let span = tracing::info_span!("accept", promise = %request.promise);
    if let Some(parent) = request.traceparent.as_deref().and_then(TraceParent::parse) {
        // An inbound event's context: the run joins the event's trace.
        parent.adopt(&span);
    }
    async {
        let mut tries = 0;
        loop {
            tries += 1;
            match validate_and_store(engine, &request).await {
                Err(RequestError::HeadMoved(name)) if tries < 3 => {
                    engine.promises().forget_head(&name);
                }
                outcome => return outcome,
            }
        }
    }
    .instrument(span)
    .await
}

async fn validate_and_store(
    engine: &Engine,
    request: &NewRequest,
) -> Result<Accepted, RequestError> {
    let promise = match engine
        .promises()
        .load_head(engine.pool(), &request.promise)
        .await
    {
        Ok(p) => p,
        Err(PromiseError::NotFound(_)) => {
            return Err(RequestError::UnknownPromise(request.promise.clone()));
        }
        Err(e) => return Err(RequestError::Promise(e)),
    };
    if let Some(principal) = &request.principal {
        crate::ownership::may_file(principal, &promise).map_err(RequestError::Refused)?;
    }
    // The engine's own callers act for the Promise's owner (see
    // `crate::policies::engine_principal`).
    let engine_caller;
    let principal = match &request.principal {
        Some(principal) => principal,
        None => {
            engine_caller = crate::policies::engine_principal(
                &request.actor,
                promise.metadata.owner.as_deref(),
            );
            &engine_caller
        }
    };
    let params = admit_params(engine, &promise, request.params.clone(), principal).await?;

    let mut prepared = prepare(
        engine,
        promise,
        params,
        request.idempotency_key.clone(),
        request.actor.clone(),
        request.traceparent.as_deref(),
    );
    prepared.team = request.principal.as_ref().and_then(|p| p.team.clone());
    crate::intake::submit(engine, prepared).await
}

/// `params` as `promise`'s schema makes them (defaults applied), if they
/// pass it and every admission policy admits them for `principal`.
pub(crate) async fn admit_params(
    engine: &Engine,
    promise: &Promise,
    params: Value,
    principal: &fulfil_core::access::Principal,
) -> Result<Value, RequestError> {
    let params = engine
        .promises()
        .params_schema(promise)
        .and_then(|schema| schema.validate(params))
        .map_err(|e| match e {
            ParamsError::Invalid(violations) => RequestError::InvalidParams {
                promise: promise.metadata.name.clone(),
                violations,
            },
            ParamsError::Schema(message) => RequestError::Promise(PromiseError::Corrupt {
                name: promise.metadata.name.clone(),
                version: promise.metadata.version.clone(),
                message,
            }),
        })?;
    let violations = crate::policies::admit(engine, promise, &params, principal).await?;
    if !violations.is_empty() {
        return Err(RequestError::PolicyDenied { violations });
    }
    Ok(params)
}

/// A request for `promise` whose `params` passed its schema (defaults
/// applied), with the context its run's expressions will see.
pub(crate) fn prepare(
    engine: &Engine,
    promise: Arc<Promise>,
    params: Value,
    idempotency_key: Option<String>,
    actor: String,
    traceparent: Option<&str>,
) -> ValidRequest {
    let request_id = RequestId::generate();
    let mut context = json!({
        "params": params,
        "request": {
            "id": request_id,
            "promise": promise.metadata.name,
            "promise_version": promise.metadata.version,
            "created_by": actor,
        },
        "vars": engine.vars().capture(promise.var_references().iter().map(String::as_str)),
    });
    // Without a context of its own, a request exported by an OpenTelemetry
    // layer keeps its accept span's: the run's spans join that trace.
    let accepting = || TraceParent::of_span(&tracing::Span::current()).map(|t| t.to_string());
    let traceparent = traceparent.map(str::to_string).or_else(accepting);
    if let (Some(traceparent), Some(about)) = (traceparent, context.get_mut("request")) {
        about["traceparent"] = json!(traceparent);
    }
    ValidRequest {
        request_id,
        run_id: RunId::generate(),
        promise,
        params,
        context,
        idempotency_key,
        actor,
        team: None,
    }
}

/// A request whose parameters passed validation, ready to be stored.
#[derive(Debug, Clone)]
pub(crate) struct ValidRequest {
    pub request_id: RequestId,
    pub run_id: RunId,
    pub promise: Arc<Promise>,
    /// With defaults applied.
    pub params: Value,
    /// params, request and vars, as the run's expressions see them.
    pub context: Value,
    pub idempotency_key: Option<String>,
    pub actor: String,
    /// The filing principal's team, kept on the request row; `None` for
    /// the engine's own callers and where access control is off.
    pub team: Option<String>,
}

/// Stores `requests` in one transaction: each request row, then the run,
/// steps, first history events and root tasks of every request that is new.
/// A request whose idempotency key was used before gets the earlier request
/// back (same parameters) or a conflict, and adds nothing; one validated
/// against a version that is no longer its Promise's head is not stored
/// and gets [`RequestError::HeadMoved`]. Answers one
/// outcome per request, in order, and only once the transaction committed;
/// an `Err` means nothing was stored.
pub(crate) async fn store_requests(
    engine: &Engine,
    requests: &[ValidRequest],
) -> Result<Vec<Result<Accepted, RequestError>>, RunError> {
    // A run whose first steps wait is filed by statements of their own
    // (see `crate::waits`), which one statement cannot hold.
    if engine.has_fast_publisher()
        && requests
            .iter()
            .all(|r| r.idempotency_key.is_none() && !r.promise.has_engine_steps())
    {
        match store_in_one_statement(engine, requests).await {
            Err(RunError::Db(sqlx::Error::Database(e)))
                if e.kind() == sqlx::error::ErrorKind::ForeignKeyViolation => {}
            outcome => return outcome,
        }
    }
    let mut tx = engine.pool().begin().await?;
    let staged = stage_requests(engine, &mut tx, requests).await?;
    tx.commit().await?;
    crate::metrics::transaction("intake");
    Ok(staged.committed(engine))
}

/// Requests written in a transaction that has not committed yet: their
/// outcomes are promised only once it has.
pub(crate) struct Staged {
    outcomes: Vec<Result<Accepted, RequestError>>,
    rows: Vec<crate::outbox::OutboxRow>,
    runs: Vec<Run>,
    notes: Vec<Option<crate::run::Stored>>,
}

impl Staged {
    /// The outcomes, once the transaction committed: hands the new runs'
    /// tasks to the publisher and keeps the runs in this process's cache.
    pub(crate) fn committed(self, engine: &Engine) -> Vec<Result<Accepted, RequestError>> {
        engine.after_commit(self.rows);
        engine
            .run_cache()
            .keep_stored(self.runs, self.notes, HashMap::new());
        self.outcomes
    }

    /// The outcome of each request, in order, before the commit.
    pub(crate) fn outcomes(&self) -> &[Result<Accepted, RequestError>] {
        &self.outcomes
    }
}

/// Writes `requests` on `tx` as [`store_requests`] does, without committing.
pub(crate) async fn stage_requests(
    engine: &Engine,
    tx: &mut sqlx::PgConnection,
    requests: &[ValidRequest],
) -> Result<Staged, RunError> {
    let mut arguments = sqlx::postgres::PgArguments::default();
    bind_requests(&mut arguments, requests).map_err(sqlx::Error::Encode)?;
    let inserted: Vec<Uuid> = sqlx::query_scalar_with(
        sqlx::AssertSqlSafe(format!(
            "{INSERT_REQUESTS}\n ON CONFLICT (promise, idempotency_key) DO NOTHING RETURNING id"
        )),
        arguments,
    )
    .fetch_all(&mut *tx)
    .await?;
    let inserted: HashSet<RequestId> = inserted.into_iter().map(RequestId::from).collect();
    let earlier = earlier_requests(&mut *tx, requests, &inserted).await?;

    let mut runs = Vec::with_capacity(inserted.len());
    let mut outcomes = Vec::with_capacity(requests.len());
    for request in requests {
        if inserted.contains(&request.request_id) {
            runs.push(start_run(engine, request)?);
            outcomes.push(Ok(Accepted {
                request_id: request.request_id,
                run_id: request.run_id,
                replayed: false,
            }));
            continue;
        }
        // Not stored: its idempotency key is held by an earlier request,
        // visible now (committed by another transaction, or this one's), or
        // else its version lost the head.
        let key = request.idempotency_key.clone().unwrap_or_default();
        let holder = earlier.get(&(request.promise.metadata.name.clone(), key.clone()));
        outcomes.push(match holder {
            Some((id, Some(run_id), params)) if *params == request.params => Ok(Accepted {
                request_id: *id,
                run_id: *run_id,
                replayed: true,
            }),
            Some((id, _, _)) => Err(RequestError::IdempotencyConflict {
                key,
                request_id: *id,
            }),
            None => Err(RequestError::HeadMoved(
                request.promise.metadata.name.clone(),
            )),
        });
    }
    let notes: Vec<_> = runs.iter().map(crate::run::Stored::note).collect();
    let rows = crate::run::flush(&mut *tx, &mut runs).await?;
    Ok(Staged {
        outcomes,
        rows,
        runs,
        notes,
    })
}

/// Inserts request rows, each only if the version it was validated against
/// is still its Promise's head.
const INSERT_REQUESTS: &str =
    "INSERT INTO fulfil.requests (id, promise, promise_version, params, idempotency_key,
                             status, run_id, created_by, team)
 SELECT id, promise, version, params, key, 'running', run_id, actor, team
 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::uuid[], $7::text[],
             $8::text[])
      AS u(id, promise, version, params, key, run_id, actor, team)
 WHERE EXISTS (SELECT 1 FROM fulfil.promise_heads h
               WHERE h.name = u.promise AND h.version = u.version)";

/// Binds the columns of [`INSERT_REQUESTS`].
fn bind_requests(
    arguments: &mut sqlx::postgres::PgArguments,
    requests: &[ValidRequest],
) -> Result<(), sqlx::error::BoxDynError> {
    let ids: Vec<Uuid> = requests.iter().map(|r| r.request_id.as_uuid()).collect();
    let promises: Vec<&str> = requests
        .iter()
        .map(|r| r.promise.metadata.name.as_str())
        .collect();
    let versions: Vec<&str> = requests
        .iter()
        .map(|r| r.promise.metadata.version.as_str())
        .collect();
    let params: Vec<&Value> = requests.iter().map(|r| &r.params).collect();
    let keys: Vec<Option<&str>> = requests
        .iter()
        .map(|r| r.idempotency_key.as_deref())
        .collect();
    let run_ids: Vec<Uuid> = requests.iter().map(|r| r.run_id.as_uuid()).collect();
    let actors: Vec<&str> = requests.iter().map(|r| r.actor.as_str()).collect();
    arguments.add(ids)?;
    arguments.add(promises)?;
    arguments.add(versions)?;
    arguments.add(params)?;
    arguments.add(keys)?;
    let teams: Vec<Option<&str>> = requests.iter().map(|r| r.team.as_deref()).collect();
    arguments.add(run_ids)?;
    arguments.add(actors)?;
    arguments.add(teams)
}

/// The common case in one round trip: requests without idempotency keys
/// cannot meet an earlier request, so the request rows and their runs are
/// written by one statement, which commits on its own. A request whose
/// version lost the head is not inserted and its run then breaks the run's
/// foreign key to it, failing the whole statement with nothing written;
/// the caller takes the checked path for such a batch.
async fn store_in_one_statement(
    engine: &Engine,
    requests: &[ValidRequest],
) -> Result<Vec<Result<Accepted, RequestError>>, RunError> {
    let mut runs = requests
        .iter()
        .map(|request| start_run(engine, request))
        .collect::<Result<Vec<_>, _>>()?;
    let leading = crate::run::LeadingPart {
        name: "new_requests",
        sql: INSERT_REQUESTS,
        bind: Box::new(|arguments| bind_requests(arguments, requests)),
    };
    let notes: Vec<_> = runs.iter().map(crate::run::Stored::note).collect();
    let mut conn = engine.pool().acquire().await?;
    let rows = crate::run::flush_with(&mut conn, &mut runs, Some(leading)).await?;
    crate::metrics::transaction("intake");
    engine.after_commit(rows);
    // The first results of these runs are decided without reading them.
    engine.run_cache().keep_stored(runs, notes, HashMap::new());
    Ok(requests
        .iter()
        .map(|r| {
            Ok(Accepted {
                request_id: r.request_id,
                run_id: r.run_id,
                replayed: false,
            })
        })
        .collect())
}

/// The requests already holding the idempotency keys of the requests that
/// were not inserted, by (promise, key): id, run id and parameters.
async fn earlier_requests(
    conn: &mut sqlx::PgConnection,
    requests: &[ValidRequest],
    inserted: &HashSet<RequestId>,
) -> Result<HashMap<(String, String), (RequestId, Option<RunId>, Value)>, RunError> {
    let (promises, keys): (Vec<&str>, Vec<&str>) = requests
        .iter()
        .filter(|r| !inserted.contains(&r.request_id))
        .filter_map(|r| {
            Some((
                r.promise.metadata.name.as_str(),
                r.idempotency_key.as_deref()?,
            ))
        })
        .unzip();
    if promises.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, String, Uuid, Option<Uuid>, Value)> = sqlx::query_as(
        "SELECT q.promise, q.idempotency_key, q.id, q.run_id, q.params
         FROM fulfil.requests q JOIN UNNEST($1::text[], $2::text[]) AS u(promise, key)
              ON q.promise = u.promise AND q.idempotency_key = u.key",
    )
    .bind(&promises)
    .bind(&keys)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(promise, key, id, run_id, params)| {
            (
                (promise, key),
                (RequestId::from(id), run_id.map(RunId::from), params),
            )
        })
        .collect())
}

/// The run of a new request, with its first events and root tasks, in memory.
fn start_run(engine: &Engine, request: &ValidRequest) -> Result<Run, RunError> {
    let promise = &request.promise;
    let mut run = Run::new(NewRun {
        kind: RunKind::Configure,
        run_id: request.run_id,
        request_id: request.request_id,
        context: request.context.clone(),
        promise: promise.clone(),
        names: engine.names().clone(),
        actor: request.actor.clone(),
        fast_publish: engine.has_fast_publisher(),
    });
    run.record(
        event::REQUEST_ACCEPTED,
        None,
        None,
        json!({ "request_id": request.request_id, "promise": promise.metadata.name,
                "promise_version": promise.metadata.version, "idempotency_key": request.idempotency_key }),
    );
    run.record(
        event::RUN_STARTED,
        None,
        None,
        json!({ "kind": run.kind() }),
    );
    run.observe(crate::metrics::Observed::Accepted);
    if let Some(limit) = promise.run_timeout() {
        // Saturates: a stored Promise may state a timeout no bound checked.
        let fire_at = fulfil_core::time::deadline_after(chrono::Utc::now(), limit);
        run.add_timer(TimerKind::RunTimeout, "", None, fire_at);
    }
    advance(&mut run)?;
    Ok(run)
}
