//! Admission policies in Postgres, and the check every new request passes.
//!
//! A Policy ([`fulfil_core::policy`]) is stored as applied in
//! `fulfil.policies`; [`put`] is idempotent (the same document again changes
//! nothing), [`delete`] removes it. [`admit`] evaluates every Policy that
//! governs a request's Promise and answers the violations; callers refuse
//! the request before anything of it is stored.
//!
//! Admission stays off the hot path: each engine keeps the compiled
//! Policies in a [`PolicyCache`] and reads the table again only when its
//! copy is older than [`CACHE_TTL`]. A change made through this process
//! empties the cache at once; a change made through another process is
//! seen within [`CACHE_TTL`] (the staleness bound). A request when no
//! Policy exists costs a read of the cached list and no query.
//!
//! A stored document that no longer parses (edited by hand) is not
//! skipped: it denies every request it might govern, with the parse error,
//! so a broken policy fails closed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fulfil_core::Promise;
use fulfil_core::access::{Principal, Role};
use fulfil_core::policy::{AdmissionInput, Policy, Violation};
use serde::Serialize;
use serde_json::Value;

use crate::Engine;

/// How long an engine uses its copy of the Policies before reading them
/// again: the longest a Policy applied or deleted through another process
/// goes unseen.
pub const CACHE_TTL: Duration = Duration::from_secs(2);

/// Why a Policy could not be applied, read or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// No Policy of that name.
    #[error("no Policy named {0:?}")]
    NotFound(String),
    /// The document could not be turned into JSON for storing.
    #[error("the Policy could not be stored: {0}")]
    Encode(String),
    /// Postgres failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// What applying a Policy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PutOutcome {
    /// A new Policy.
    Created,
    /// The document changed.
    Updated,
    /// The same document was applied before; nothing changed.
    Unchanged,
}

/// A stored Policy, as `GET /v1/policies[/{name}]` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct PolicyRow {
    pub name: String,
    pub owner: Option<String>,
    /// The Promises it governs; `None` governs every Promise.
    pub promises: Option<Vec<String>>,
    pub applied_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The document as applied.
    pub document: Value,
}

const COLUMNS: &str = "name, owner, promises, applied_by, created_at, updated_at, document";

/// Stores `policy` (idempotent) and makes this process use it at once.
pub async fn put(engine: &Engine, policy: &Policy, actor: &str) -> Result<PutOutcome, PolicyError> {
    let document =
        serde_json::to_value(policy.document()).map_err(|e| PolicyError::Encode(e.to_string()))?;
    let meta = &policy.document().metadata;
    // `xmax = 0` tells an insert from an update; an unchanged document
    // matches no row of the conditional update and returns nothing.
    let written: Option<bool> = sqlx::query_scalar(
        "INSERT INTO fulfil.policies (name, document, owner, promises, applied_by)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO UPDATE
            SET document = EXCLUDED.document, owner = EXCLUDED.owner,
                promises = EXCLUDED.promises, applied_by = EXCLUDED.applied_by,
                updated_at = now()
            WHERE fulfil.policies.document IS DISTINCT FROM EXCLUDED.document
         RETURNING (xmax = 0)",
    )
    .bind(&meta.name)
    .bind(&document)
    .bind(&meta.owner)
    .bind(&policy.document().spec.promises)
    .bind(actor)
    .fetch_optional(engine.pool())
    .await?;
    engine.policies().invalidate();
    Ok(match written {
        Some(true) => PutOutcome::Created,
        Some(false) => PutOutcome::Updated,
        None => PutOutcome::Unchanged,
    })
}

/// One stored Policy.
pub async fn get(engine: &Engine, name: &str) -> Result<PolicyRow, PolicyError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM fulfil.policies WHERE name = $1"
    )))
    .bind(name)
    .fetch_optional(engine.pool())
    .await?
    .ok_or_else(|| PolicyError::NotFound(name.to_string()))
}

/// Every stored Policy, by name. Policies are few (each one runs on every
/// request it governs), so the list is not paged.
pub async fn list(engine: &Engine) -> Result<Vec<PolicyRow>, PolicyError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM fulfil.policies ORDER BY name"
    )))
    .fetch_all(engine.pool())
    .await?)
}

/// Deletes a Policy; requests are no longer checked against it.
pub async fn delete(engine: &Engine, name: &str) -> Result<(), PolicyError> {
    let deleted = sqlx::query("DELETE FROM fulfil.policies WHERE name = $1")
        .bind(name)
        .execute(engine.pool())
        .await?;
    engine.policies().invalidate();
    if deleted.rows_affected() == 0 {
        return Err(PolicyError::NotFound(name.to_string()));
    }
    Ok(())
}

/// The principal admission sees for the engine's own callers (triggers,
/// schedules): named by their actor (`event:<source>`,
/// `schedule:<name>`), acting for `team` (the Promise's owner for a
/// trigger, the Schedule's owner for a schedule), with no roles; not
/// authenticated, since nobody proved that name.
pub fn engine_principal(actor: &str, team: Option<&str>) -> Principal {
    Principal {
        id: actor.to_string(),
        team: team.map(str::to_string),
        roles: std::collections::BTreeSet::<Role>::new(),
        authenticated: false,
    }
}

/// Evaluates every Policy that governs `promise` for `principal` filing
/// `params` (validated, defaults applied): the violations, empty when the
/// request is admitted.
pub async fn admit(
    engine: &Engine,
    promise: &Promise,
    params: &Value,
    principal: &Principal,
) -> Result<Vec<Violation>, sqlx::Error> {
    Ok(snapshot(engine).await?.check(promise, params, principal))
}

/// The Policies as this process holds them now, for callers that decide
/// many requests without awaiting between them (a batch of events).
pub async fn snapshot(engine: &Engine) -> Result<Admission, sqlx::Error> {
    Ok(Admission(engine.policies().current(engine).await?))
}

/// A snapshot of the compiled Policies (see [`snapshot`]).
#[derive(Debug, Clone)]
pub struct Admission(Arc<Vec<Loaded>>);

impl Admission {
    /// What [`admit`] answers, over this snapshot.
    pub fn check(
        &self,
        promise: &Promise,
        params: &Value,
        principal: &Principal,
    ) -> Vec<Violation> {
        let name = promise.metadata.name.as_str();
        let mut governing = self.0.iter().filter(|p| p.governs(name)).peekable();
        if governing.peek().is_none() {
            return Vec::new();
        }
        let input = AdmissionInput::new(params.clone(), promise, principal);
        governing.flat_map(|p| p.evaluate(&input)).collect()
    }
}

/// A stored Policy as admission uses it: compiled, or broken.
#[derive(Debug)]
enum Loaded {
    Compiled(Policy),
    /// The stored document no longer parses; it denies what it names.
    Broken {
        name: String,
        promises: Option<Vec<String>>,
        error: String,
    },
}

impl Loaded {
    fn governs(&self, promise: &str) -> bool {
        match self {
            Loaded::Compiled(p) => p.governs(promise),
            Loaded::Broken { promises, .. } => promises
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| n == promise)),
        }
    }

    fn evaluate(&self, input: &AdmissionInput) -> Vec<Violation> {
        match self {
            Loaded::Compiled(p) => p.evaluate(input),
            Loaded::Broken { name, error, .. } => vec![Violation {
                policy: name.clone(),
                rule: String::new(),
                message: format!("the stored Policy {name} cannot be read; apply it again"),
                error: Some(error.clone()),
            }],
        }
    }
}

/// The compiled Policies of one process (see the module docs).
#[derive(Debug, Default)]
pub struct PolicyCache {
    loaded: RwLock<Option<(Instant, Arc<Vec<Loaded>>)>>,
    /// Bumped by every change through this process, so a read that began
    /// before the change does not store what it read.
    generation: AtomicU64,
    /// One reload at a time; the others wait for its result.
    reloading: tokio::sync::Mutex<()>,
}

impl PolicyCache {
    /// Drops the cached copy: the next request reads the table.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut loaded) = self.loaded.write() {
            *loaded = None;
        }
    }

    fn fresh(&self) -> Option<Arc<Vec<Loaded>>> {
        let loaded = self.loaded.read().ok()?;
        let (at, policies) = loaded.as_ref()?;
        (at.elapsed() < CACHE_TTL).then(|| policies.clone())
    }

    async fn current(&self, engine: &Engine) -> Result<Arc<Vec<Loaded>>, sqlx::Error> {
        if let Some(policies) = self.fresh() {
            return Ok(policies);
        }
        let _one = self.reloading.lock().await;
        if let Some(policies) = self.fresh() {
            return Ok(policies);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let rows: Vec<(String, Value, Option<Vec<String>>)> =
            sqlx::query_as("SELECT name, document, promises FROM fulfil.policies ORDER BY name")
                .fetch_all(engine.pool())
                .await?;
        let policies: Arc<Vec<Loaded>> = Arc::new(
            rows.into_iter()
                .map(
                    |(name, document, promises)| match Policy::from_value(document) {
                        Ok(policy) => Loaded::Compiled(policy),
                        Err(e) => Loaded::Broken {
                            name,
                            promises,
                            error: e
                                .0
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join("; "),
                        },
                    },
                )
                .collect(),
        );
        if self.generation.load(Ordering::SeqCst) == generation
            && let Ok(mut loaded) = self.loaded.write()
        {
            *loaded = Some((Instant::now(), policies.clone()));
        }
        Ok(policies)
    }
}
