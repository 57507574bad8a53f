//! Connecting to Postgres, creating the database on first use, and applying
//! the embedded, forward-only migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

/// Why the database could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL does not parse as a Postgres connection string.
    #[error("invalid database URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// The server refused or failed a statement.
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// A migration failed to apply.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Whether `error` says nothing about the statement or its data, only that
/// the database could not run it now: the connection was lost or refused,
/// the pool had none to give, the server is shutting down or out of
/// resources (SQLSTATE classes 08, 53, 57), or the transaction lost a
/// serialization or deadlock race or a lock wait (40001, 40P01, 55P03).
/// Nothing was committed; the same work may succeed if tried again.
/// Anything else (a constraint, a value Postgres cannot store, a bug) fails
/// again the same way. The one answer the API, the result applier and the
/// timers all use.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            ["08", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
                || matches!(code.as_ref(), "40001" | "40P01" | "55P03")
        }),
        _ => false,
    }
}

/// Connection options from `url`. TLS to a loopback server protects nothing
/// and costs a record encryption per round trip on both sides, so unless the
/// URL sets `sslmode`, loopback connections go without it.
pub fn options(url: &str) -> Result<PgConnectOptions, DbError> {
    let mut options = PgConnectOptions::from_str(url).map_err(DbError::InvalidUrl)?;
    let loopback = matches!(options.get_host(), "127.0.0.1" | "localhost" | "::1")
        || options.get_host().starts_with('/');
    if loopback && !url.contains("sslmode=") {
        options = options.ssl_mode(sqlx::postgres::PgSslMode::Disable);
    }
    Ok(options)
}

/// Opens a pool of at most `max_connections`.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options = options(url)?
        .application_name("fulfil")
        // Every statement Fulfil runs on a hot path is a lookup by key,
        // usually of a batch of keys (`run_id = ANY($1)`, a join with an
        // UNNEST of 256 rows). Without table statistics (a fresh database;
        // a server with autovacuum off, like CI's) the planner guesses 1 in
        // 200 rows per key and turns such a batch into a sequential scan or
        // a hash join over the whole table: measured at three-step c=256,
        // 755 full scans of `steps` reading 6.8 M rows in a few seconds, and
        // 11 % of Postgres's CPU in them (perf). With these paths priced
        // out a plan is an index lookup whatever the statistics say, so
        // generic plans (made once per connection and statement) are safe
        // too. They are forced: left to choose, Postgres kept planning the
        // flush statements afresh on every call (a quarter of its CPU at
        // 500 requests/s, perf), as their generic cost never looked
        // cheaper. Forced, Postgres CPU per step fell 0.57 -> 0.46 ms at
        // 500 requests/s and 0.14 -> 0.13 ms at saturation. A query with no
        // index to use still runs, by the path it has.
        .options([
            ("enable_seqscan", "off"),
            ("enable_hashjoin", "off"),
            ("enable_mergejoin", "off"),
            ("plan_cache_mode", "force_generic_plan"),
        ])
        .log_statements(tracing::log::LevelFilter::Trace);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        // A ping per acquire is a round trip on every transaction; a dead
        // connection fails its first statement instead, and every caller
        // already treats that as "roll back and retry".
        .test_before_acquire(false)
        .connect_with(options)
        .await?)
}

/// Creates the URL's database if it does not exist, connecting to the
/// server's `postgres` database to do so. Returns whether it was created.
pub async fn ensure_database(url: &str) -> Result<bool, DbError> {
    let options = options(url)?;
    let Some(name) = options.get_database().map(str::to_string) else {
        return Ok(false);
    };
    let mut admin = options.database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if exists {
        return Ok(false);
    }
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
        .execute(&mut admin)
        .await
    {
        Ok(_) => Ok(true),
        // Another process created it between our check and our CREATE.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `url` with its database name replaced by `database` (query kept).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let server = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{database}?{q}"),
        None => format!("{server}/{database}"),
    }
}

/// Drops a database, closing its other sessions first.
pub async fn drop_database(server_url: &str, database: &str) -> Result<(), DbError> {
    let mut admin = options(server_url)?.database("postgres").connect().await?;
    let quoted = format!("\"{}\"", database.replace('"', "\"\""));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    Ok(())
}

/// Applies pending migrations; safe to call from several processes at once
/// (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_are_transient_and_bad_data_is_not() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::Protocol("bad".into())));
    }
}

/// A nullable `uuid` column, for reading it into an optional id newtype in a
/// `FromRow` derive: `#[sqlx(try_from = "NullableUuid")]` on an
/// `Option<RunId>` field (the ids live in `fulfil-core`, which has no sqlx).
#[derive(sqlx::Type)]
#[sqlx(transparent)]
pub struct NullableUuid(Option<uuid::Uuid>);

impl<T: From<uuid::Uuid>> From<NullableUuid> for Option<T> {
    fn from(column: NullableUuid) -> Self {
        column.0.map(T::from)
    }
}
