//! Promise versions in Postgres.
//!
//! Versions are immutable: applying a name and version that exist with the
//! same spec changes nothing, with another spec is refused. Applying a new
//! version moves the head (the version new requests use) and keeps the old
//! one for the runs that use it.
//!
//! A Promise is validated once, when it is applied; what is stored is read
//! back with [`Promise::from_stored`], never validated again (validation is
//! the expensive part, and the vars it checked against may have changed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use fulfil_core::params::{ParamsError, ParamsSchema};
use fulfil_core::{Promise, SpecError, SpecErrors};
use serde::Serialize;
use sqlx::PgPool;

/// Why a Promise could not be applied or read.
#[derive(Debug, thiserror::Error)]
pub enum PromiseError {
    /// The document is not a valid Promise; every problem is listed.
    #[error("{0}")]
    Invalid(SpecErrors),
    /// The version exists with a different spec.
    #[error(
        "Promise {name} version {version} already exists with a different spec; versions are immutable, bump metadata.version"
    )]
    VersionConflict { name: String, version: String },
    /// No Promise (or version) of that name.
    #[error("no Promise named {0:?}")]
    NotFound(String),
    /// The stored spec no longer parses (the store was edited by hand).
    #[error("stored Promise {name}@{version} is corrupt: {message}")]
    Corrupt {
        name: String,
        version: String,
        message: String,
    },
    /// Postgres failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// What applying a Promise did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyOutcome {
    /// A new Promise or a new version, now the head.
    Created,
    /// The version existed with the same spec; it is the head again.
    Unchanged,
}

/// A stored Promise version.
#[derive(Debug, Clone, Serialize)]
pub struct PromiseRecord {
    pub name: String,
    pub version: String,
    pub owner: Option<String>,
    /// Whether new requests use this version.
    pub current: bool,
    pub versions: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub promise: Arc<Promise>,
}

/// Parsed Promise versions, shared by every task of a process. Versions are
/// immutable, so an entry never goes stale.
///
/// Heads do move, when any process applies a new version; the cached head
/// is a guess that the transaction storing a request checks
/// ([`crate::requests`]), and a request validated against a version that is
/// no longer the head is validated again against the new one.
#[derive(Debug, Default, Clone)]
pub struct PromiseCache {
    entries: Arc<RwLock<HashMap<NameVersion, Arc<Promise>>>>,
    /// Compiled request schemas, so a request does not recompile one.
    schemas: Arc<RwLock<HashMap<NameVersion, Arc<ParamsSchema>>>>,
    /// The head version of each name, as last read.
    heads: Arc<RwLock<HashMap<String, String>>>,
}

type NameVersion = (String, String);

impl PromiseCache {
    fn get(&self, name: &str, version: &str) -> Option<Arc<Promise>> {
        self.entries
            .read()
            .ok()?
            .get(&(name.to_string(), version.to_string()))
            .cloned()
    }

    fn put(&self, promise: Arc<Promise>) {
        if let Ok(mut entries) = self.entries.write() {
            entries.insert(
                (
                    promise.metadata.name.clone(),
                    promise.metadata.version.clone(),
                ),
                promise,
            );
        }
    }

    /// The Promise version, from the cache or the store.
    pub async fn load(
        &self,
        pool: &PgPool,
        name: &str,
        version: &str,
    ) -> Result<Arc<Promise>, PromiseError> {
        if let Some(p) = self.get(name, version) {
            return Ok(p);
        }
        let spec: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT spec FROM fulfil.promises WHERE name = $1 AND version = $2")
                .bind(name)
                .bind(version)
                .fetch_optional(pool)
                .await?;
        let spec = spec.ok_or_else(|| PromiseError::NotFound(format!("{name}@{version}")))?;
        let promise = Arc::new(
            Promise::from_stored(spec).map_err(|e| PromiseError::Corrupt {
                name: name.into(),
                version: version.into(),
                message: e.to_string(),
            })?,
        );
        self.put(promise.clone());
        Ok(promise)
    }

    /// The compiled request schema of a Promise version.
    pub fn params_schema(&self, promise: &Promise) -> Result<Arc<ParamsSchema>, ParamsError> {
        let key = (
            promise.metadata.name.clone(),
            promise.metadata.version.clone(),
        );
        if let Some(schema) = self.schemas.read().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(schema);
        }
        let schema = Arc::new(ParamsSchema::compile(&promise.spec.api)?);
        if let Ok(mut schemas) = self.schemas.write() {
            schemas.insert(key, schema.clone());
        }
        Ok(schema)
    }

    /// The head version of `name`, as this process last saw it (read from
    /// the store the first time and after [`Self::forget_head`]).
    pub async fn load_head(&self, pool: &PgPool, name: &str) -> Result<Arc<Promise>, PromiseError> {
        let cached = self
            .heads
            .read()
            .ok()
            .and_then(|heads| heads.get(name).cloned());
        let version = match cached {
            Some(version) => version,
            None => {
                let version: Option<String> =
                    sqlx::query_scalar("SELECT version FROM fulfil.promise_heads WHERE name = $1")
                        .bind(name)
                        .fetch_optional(pool)
                        .await?;
                let version = version.ok_or_else(|| PromiseError::NotFound(name.to_string()))?;
                if let Ok(mut heads) = self.heads.write() {
                    heads.insert(name.to_string(), version.clone());
                }
                version
            }
        };
        self.load(pool, name, &version).await
    }

    /// Drops the cached head of `name`: it moved, here or elsewhere.
    pub fn forget_head(&self, name: &str) {
        if let Ok(mut heads) = self.heads.write() {
            heads.remove(name);
        }
    }
}

/// Stores `promise` and makes it the head of its name.
pub async fn apply(pool: &PgPool, promise: &Promise) -> Result<ApplyOutcome, PromiseError> {
    let spec = serde_json::to_value(promise).map_err(|e| PromiseError::Corrupt {
        name: promise.metadata.name.clone(),
        version: promise.metadata.version.clone(),
        message: e.to_string(),
    })?;
    let digest = spec.to_string();
    let mut tx = pool.begin().await?;
    refuse_child_cycles(&mut tx, promise).await?;
    let inserted = sqlx::query(
        "INSERT INTO fulfil.promises (name, version, spec, digest, owner) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name, version) DO NOTHING",
    )
    .bind(&promise.metadata.name)
    .bind(&promise.metadata.version)
    .bind(&spec)
    .bind(&digest)
    .bind(&promise.metadata.owner)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        let existing: serde_json::Value =
            sqlx::query_scalar("SELECT spec FROM fulfil.promises WHERE name = $1 AND version = $2")
                .bind(&promise.metadata.name)
                .bind(&promise.metadata.version)
                .fetch_one(&mut *tx)
                .await?;
        if existing != spec {
            return Err(PromiseError::VersionConflict {
                name: promise.metadata.name.clone(),
                version: promise.metadata.version.clone(),
            });
        }
    }
    sqlx::query(
        "INSERT INTO fulfil.promise_heads (name, version) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, updated_at = now()",
    )
    .bind(&promise.metadata.name)
    .bind(&promise.metadata.version)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(if inserted {
        ApplyOutcome::Created
    } else {
        ApplyOutcome::Unchanged
    })
}

/// First key of the advisory lock that serialises applies of Promises
/// with promise steps, so two applies cannot each close half a cycle.
const CHILD_GRAPH_LOCK: i64 = 0x4348_494c_4447_5248; // "CHILDGRH"

/// Refuses `promise` if it would close a cycle of Promises filing each
/// other's requests (see [`fulfil_core::child`]), naming the cycle at the
/// promise step that closes it.
async fn refuse_child_cycles(
    conn: &mut sqlx::PgConnection,
    promise: &Promise,
) -> Result<(), PromiseError> {
    let own = fulfil_core::child::references(promise);
    if own.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CHILD_GRAPH_LOCK)
        .execute(&mut *conn)
        .await?;
    let edges: Vec<(String, String)> = sqlx::query_as(
        "SELECT h.name, s.step->'with'->>'promise'
         FROM fulfil.promise_heads h
              JOIN fulfil.promises p ON p.name = h.name AND p.version = h.version
              CROSS JOIN LATERAL jsonb_array_elements(
                  COALESCE(p.spec->'spec'->'workflow'->'steps', '[]'::jsonb)
                  || COALESCE(p.spec->'spec'->'delete'->'steps', '[]'::jsonb)) AS s(step)
         WHERE s.step->>'uses' = $1 AND h.name <> $2
               AND jsonb_typeof(s.step->'with'->'promise') = 'string'",
    )
    .bind(fulfil_core::child::PROMISE)
    .bind(&promise.metadata.name)
    .fetch_all(&mut *conn)
    .await?;
    let mut refs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in edges {
        refs.entry(from).or_default().insert(to);
    }
    refs.insert(promise.metadata.name.clone(), own);
    let Some(cycle) = fulfil_core::child::find_cycle(&promise.metadata.name, &refs) else {
        return Ok(());
    };
    let closing = cycle.get(1).cloned().unwrap_or_default();
    let at = promise
        .spec
        .workflow
        .steps
        .iter()
        .position(|s| {
            fulfil_core::child::is_promise_step(&s.uses)
                && s.with.get("promise").and_then(serde_json::Value::as_str)
                    == Some(closing.as_str())
        })
        .map_or_else(
            || "spec.delete".to_string(),
            |i| format!("spec.workflow.steps[{i}].with.promise"),
        );
    Err(PromiseError::Invalid(SpecErrors::one(SpecError::new(
        at,
        "cycle",
        format!(
            "Promises would file each other's requests without end: {}; a Promise may not \
             (transitively) file a request against itself",
            cycle.join(" -> ")
        ),
    ))))
}

#[derive(sqlx::FromRow)]
struct Row {
    name: String,
    version: String,
    owner: Option<String>,
    spec: serde_json::Value,
    created_at: DateTime<Utc>,
    current: bool,
    versions: Vec<String>,
}

const SELECT: &str = "SELECT p.name, p.version, p.owner, p.spec, p.created_at,
        (h.version = p.version) AS current,
        ARRAY(SELECT v.version FROM fulfil.promises v WHERE v.name = p.name ORDER BY v.created_at) AS versions
     FROM fulfil.promises p JOIN fulfil.promise_heads h ON h.name = p.name";

fn record(row: Row) -> Result<PromiseRecord, PromiseError> {
    let promise = Promise::from_stored(row.spec).map_err(|e| PromiseError::Corrupt {
        name: row.name.clone(),
        version: row.version.clone(),
        message: e.to_string(),
    })?;
    Ok(PromiseRecord {
        name: row.name,
        version: row.version,
        owner: row.owner,
        current: row.current,
        versions: row.versions,
        created_at: row.created_at,
        promise: Arc::new(promise),
    })
}

/// Most Promises one page of [`list`] returns.
pub const MAX_PAGE: u32 = 500;

/// One page of Promises and where the next one starts.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<PromiseRecord>,
    /// Pass as `after` for the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// The head version of Promises by name: at most `limit` (1 to
/// [`MAX_PAGE`]) of them, with names after `after` (a previous page's
/// `next_cursor`: the last name it returned).
pub async fn list(pool: &PgPool, limit: u32, after: Option<&str>) -> Result<Page, PromiseError> {
    let limit = limit.clamp(1, MAX_PAGE);
    // One row more than asked says whether there is a next page.
    let mut rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE h.version = p.version AND ($1::text IS NULL OR p.name > $1)
         ORDER BY p.name LIMIT $2"
    )))
    .bind(after)
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last().map(|row| row.name.clone()))
        .flatten();
    let items = rows.into_iter().map(record).collect::<Result<_, _>>()?;
    Ok(Page { items, next_cursor })
}

/// One Promise: the head, or the given version.
pub async fn get(
    pool: &PgPool,
    name: &str,
    version: Option<&str>,
) -> Result<PromiseRecord, PromiseError> {
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE p.name = $1 AND p.version = COALESCE($2, h.version)"
    )))
    .bind(name)
    .bind(version)
    .fetch_optional(pool)
    .await?;
    let row = row.ok_or_else(|| match version {
        Some(v) => PromiseError::NotFound(format!("{name}@{v}")),
        None => PromiseError::NotFound(name.to_string()),
    })?;
    record(row)
}
