//! API tokens: opaque bearer secrets, each naming a principal
//! (`user:<name>`) with a team and roles (DESIGN.md "Access").
//!
//! Contract:
//!
//! * a secret is `fulfil_` followed by base64url (no padding) of 32 bytes
//!   from the operating system's generator: 256 bits, and a prefix secret
//!   scanners can look for when one leaks;
//! * it is shown once, by [`create`]; the store keeps only its SHA-256
//!   ([`TokenHash`]), so a copy of the database lets nobody in;
//! * [`find`] answers only live tokens (not revoked, not expired); its hash
//!   is looked up by Postgres's unique index and compared again in Rust in
//!   constant time. A B-tree walk over SHA-256 digests leaks nothing useful
//!   about a secret: the caller controls the secret, not its digest;
//! * a live token's name is unique (a partial unique index); a revoked
//!   token's row is kept for the record and its name may be reused;
//! * [`TokenSecret`] never prints its secret (`Debug`, `Display`), only
//!   [`TokenSecret::expose`] gives it;
//! * `last_used_at` is written by [`touch`] at most once a minute per
//!   token, by callers off the request's path; nothing here writes per use.
//!
//! [`bootstrap`] makes `FULFIL_BOOTSTRAP_TOKEN` an admin token named
//! [`BOOTSTRAP_NAME`] of team [`BOOTSTRAP_TEAM`], idempotently: the same
//! value again changes nothing; a new value revokes the previous bootstrap
//! token and installs itself, so the variable is the one source of truth.

use std::collections::BTreeSet;
use std::fmt;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use fulfil_core::access::{Principal, Role};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// What every generated secret starts with.
pub const SECRET_PREFIX: &str = "fulfil_";
/// The name of the token [`bootstrap`] installs.
pub const BOOTSTRAP_NAME: &str = "bootstrap";
/// The team of the bootstrap token: the platform team that runs Fulfil.
pub const BOOTSTRAP_TEAM: &str = "platform";
/// The shortest `FULFIL_BOOTSTRAP_TOKEN` accepted.
pub const BOOTSTRAP_MIN_CHARS: usize = 32;
/// The longest token name or team.
pub const MAX_NAME_CHARS: usize = 128;

/// Why a token operation failed; nothing of it was committed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Postgres failed; [`crate::db::is_transient`] says whether to retry.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The token tables do not exist: the database was not migrated.
    #[error(
        "the database has no fulfil.tokens table; run `fulfil migrate` (or start `fulfil serve`) first"
    )]
    NotMigrated,
    /// A live token already has this name.
    #[error("a live token is already named {0:?}; revoke it or pick another name")]
    NameTaken(String),
    /// The new token is not valid; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No live token has this id or name.
    #[error("no live token has the id or name {0:?}")]
    NotFound(String),
    /// `FULFIL_BOOTSTRAP_TOKEN` is too short to be a secret.
    #[error(
        "FULFIL_BOOTSTRAP_TOKEN is {0} characters; it must be at least {BOOTSTRAP_MIN_CHARS} (e.g. `openssl rand -base64 32`)"
    )]
    BootstrapTooShort(usize),
    /// A stored row holds a role this build does not know.
    #[error("token {id} holds an unknown role {role:?}")]
    UnknownStoredRole { id: Uuid, role: String },
}

impl TokenError {
    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, TokenError::Db(e) if crate::db::is_transient(e))
    }

    fn from_db(error: sqlx::Error) -> TokenError {
        match &error {
            // undefined_table
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => {
                TokenError::NotMigrated
            }
            _ => TokenError::Db(error),
        }
    }
}

/// A token's id (uuid v7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TokenId(pub Uuid);

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A token's secret, as given to its holder once.
#[derive(Clone)]
pub struct TokenSecret(String);

impl TokenSecret {
    /// A new random secret.
    pub fn generate() -> Result<TokenSecret, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(TokenSecret(format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )))
    }

    /// The secret itself: the only way to read it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its SHA-256, as stored.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

impl fmt::Display for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted token>")
    }
}

/// The SHA-256 of a secret: what the store keeps and looks up.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// The hash of a presented secret.
    pub fn of(secret: &str) -> TokenHash {
        TokenHash(Sha256::digest(secret.as_bytes()).into())
    }

    /// Compares in constant time.
    pub fn ct_matches(&self, other: &[u8]) -> bool {
        self.0.as_slice().ct_eq(other).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not secret, but there is no reason to spread it in logs either.
        f.write_str("TokenHash(..)")
    }
}

/// A token to create.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub team: String,
    pub roles: BTreeSet<Role>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The principal id of whoever creates it (`user:root`, `cli:bootstrap`).
    pub created_by: String,
}

/// What is known of a token; never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: TokenId,
    pub name: String,
    pub team: String,
    pub roles: BTreeSet<Role>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Whether a token lets its holder in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Live,
    Revoked,
    Expired,
}

impl TokenInfo {
    /// Its state at `now`; revoked wins over expired.
    pub fn state(&self, now: DateTime<Utc>) -> TokenState {
        if self.revoked_at.is_some() {
            TokenState::Revoked
        } else if self.expires_at.is_some_and(|at| at <= now) {
            TokenState::Expired
        } else {
            TokenState::Live
        }
    }

    /// The principal the token authenticates: `user:<name>`.
    pub fn principal(&self) -> Principal {
        let roles: Vec<Role> = self.roles.iter().copied().collect();
        Principal::new(format!("user:{}", self.name), self.team.clone(), &roles)
    }
}

/// A row of `fulfil.tokens` as read (the hash apart).
#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    team: String,
    roles: Vec<String>,
    created_at: DateTime<Utc>,
    created_by: String,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

/// A row with its hash, for the constant-time comparison.
#[derive(sqlx::FromRow)]
struct HashedRow {
    hash: Vec<u8>,
    #[sqlx(flatten)]
    row: Row,
}

const COLUMNS: &str =
    "id, name, team, roles, created_at, created_by, expires_at, revoked_at, last_used_at";

fn info(row: Row) -> Result<TokenInfo, TokenError> {
    let Row {
        id,
        name,
        team,
        roles,
        created_at,
        created_by,
        expires_at,
        revoked_at,
        last_used_at,
    } = row;
    let roles = roles
        .into_iter()
        .map(|r| {
            r.parse()
                .map_err(|_| TokenError::UnknownStoredRole { id, role: r })
        })
        .collect::<Result<_, _>>()?;
    Ok(TokenInfo {
        id: TokenId(id),
        name,
        team,
        roles,
        created_at,
        created_by,
        expires_at,
        revoked_at,
        last_used_at,
    })
}

/// Checks a token or team name: 1 to [`MAX_NAME_CHARS`] characters, no
/// whitespace or control characters; a token name is not a UUID either,
/// so [`revoke`] can tell ids from names.
pub fn check_name(field: &str, value: &str) -> Result<(), TokenError> {
    let chars = value.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(TokenError::Invalid(format!(
            "{field}: must be 1 to {MAX_NAME_CHARS} characters, got {chars}"
        )));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TokenError::Invalid(format!(
            "{field}: {value:?} holds whitespace or a control character"
        )));
    }
    if field == "name" && Uuid::parse_str(value).is_ok() {
        return Err(TokenError::Invalid(format!(
            "name: {value:?} is a UUID, which would read as a token id; pick another name"
        )));
    }
    Ok(())
}

fn check(new: &NewToken) -> Result<(), TokenError> {
    check_name("name", &new.name)?;
    check_name("team", &new.team)?;
    if new.roles.is_empty() {
        return Err(TokenError::Invalid(
            "roles: give at least one of viewer, requester, approver, operator, author, admin"
                .into(),
        ));
    }
    if new.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(TokenError::Invalid(
            "expires_at: is in the past; a token must expire in the future".into(),
        ));
    }
    Ok(())
}

async fn insert(
    executor: impl sqlx::PgExecutor<'_>,
    new: &NewToken,
    hash: &TokenHash,
) -> Result<TokenInfo, TokenError> {
    let roles: Vec<&str> = new.roles.iter().map(|r| r.as_str()).collect();
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO fulfil.tokens (id, name, team, roles, hash, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(&new.name)
    .bind(&new.team)
    .bind(&roles)
    .bind(hash.0.as_slice())
    .bind(&new.created_by)
    .bind(new.expires_at)
    .fetch_one(executor)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.constraint() == Some("tokens_live_name") => {
            TokenError::NameTaken(new.name.clone())
        }
        _ => TokenError::from_db(e),
    })?;
    info(row)
}

/// Creates a token: the secret (shown once) and what is stored of it.
pub async fn create(pool: &PgPool, new: NewToken) -> Result<(TokenSecret, TokenInfo), TokenError> {
    check(&new)?;
    let secret = TokenSecret::generate()
        .map_err(|e| TokenError::Invalid(format!("no randomness from the OS: {e}")))?;
    let info = insert(pool, &new, &secret.hash()).await?;
    Ok((secret, info))
}

/// Every token, live or not, newest first (never a secret or hash).
pub async fn list(pool: &PgPool) -> Result<Vec<TokenInfo>, TokenError> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM fulfil.tokens ORDER BY id DESC LIMIT 10000"
    )))
    .fetch_all(pool)
    .await
    .map_err(TokenError::from_db)?;
    rows.into_iter().map(info).collect()
}

/// Revokes the live token with this id or name; it stops working at once
/// for [`find`].
pub async fn revoke(pool: &PgPool, id_or_name: &str) -> Result<TokenInfo, TokenError> {
    let id = Uuid::parse_str(id_or_name).ok();
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE fulfil.tokens SET revoked_at = now()
         WHERE revoked_at IS NULL AND (id = $1 OR ($1 IS NULL AND name = $2))
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(id_or_name)
    .fetch_optional(pool)
    .await
    .map_err(TokenError::from_db)?;
    row.map(info)
        .transpose()?
        .ok_or_else(|| TokenError::NotFound(id_or_name.to_string()))
}

/// The live token (unrevoked, unexpired) whose secret hashes to `hash`.
pub async fn find(pool: &PgPool, hash: &TokenHash) -> Result<Option<TokenInfo>, TokenError> {
    Ok(lookup(pool, hash)
        .await?
        .filter(|info| info.state(Utc::now()) == TokenState::Live))
}

/// The token, live or not, whose secret hashes to `hash`: so a refusal can
/// say whether the token was unknown, revoked or expired.
pub async fn lookup(pool: &PgPool, hash: &TokenHash) -> Result<Option<TokenInfo>, TokenError> {
    let row: Option<HashedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT hash, {COLUMNS} FROM fulfil.tokens WHERE hash = $1"
    )))
    .bind(hash.0.as_slice())
    .fetch_optional(pool)
    .await
    .map_err(TokenError::from_db)?;
    match row {
        Some(found) if hash.ct_matches(&found.hash) => info(found.row).map(Some),
        _ => Ok(None),
    }
}

/// Records that a token was used, at most once a minute; for callers to
/// run off the request's path.
pub async fn touch(pool: &PgPool, id: TokenId) -> Result<(), TokenError> {
    sqlx::query(
        "UPDATE fulfil.tokens SET last_used_at = now()
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
    )
    .bind(id.0)
    .execute(pool)
    .await
    .map_err(TokenError::from_db)?;
    Ok(())
}

/// Makes `secret` (from `FULFIL_BOOTSTRAP_TOKEN`) the admin token named
/// [`BOOTSTRAP_NAME`]: nothing changes if it already is; a bootstrap token
/// with another secret is revoked first. Refuses secrets under
/// [`BOOTSTRAP_MIN_CHARS`] characters.
pub async fn bootstrap(pool: &PgPool, secret: &str) -> Result<TokenInfo, TokenError> {
    let chars = secret.chars().count();
    if chars < BOOTSTRAP_MIN_CHARS {
        return Err(TokenError::BootstrapTooShort(chars));
    }
    let hash = TokenHash::of(secret);
    let mut tx = pool.begin().await.map_err(TokenError::from_db)?;
    // Several API processes start at once: one decides, the others see its row.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('fulfil.tokens.bootstrap'))")
        .execute(&mut *tx)
        .await
        .map_err(TokenError::from_db)?;
    let live: Option<(Vec<u8>, Uuid)> =
        sqlx::query_as("SELECT hash, id FROM fulfil.tokens WHERE name = $1 AND revoked_at IS NULL")
            .bind(BOOTSTRAP_NAME)
            .fetch_optional(&mut *tx)
            .await
            .map_err(TokenError::from_db)?;
    if let Some((stored, id)) = live {
        if hash.ct_matches(&stored) {
            let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM fulfil.tokens WHERE id = $1"
            )))
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(TokenError::from_db)?;
            tx.commit().await.map_err(TokenError::from_db)?;
            return info(row);
        }
        sqlx::query("UPDATE fulfil.tokens SET revoked_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(TokenError::from_db)?;
    }
    let new = NewToken {
        name: BOOTSTRAP_NAME.to_string(),
        team: BOOTSTRAP_TEAM.to_string(),
        roles: BTreeSet::from([Role::Admin]),
        expires_at: None,
        created_by: "bootstrap".to_string(),
    };
    let created = insert(&mut *tx, &new, &hash).await?;
    tx.commit().await.map_err(TokenError::from_db)?;
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_prefixed_random_and_never_printed() {
        let a = TokenSecret::generate().expect("randomness");
        let b = TokenSecret::generate().expect("randomness");
        assert!(a.expose().starts_with(SECRET_PREFIX));
        // 32 bytes in base64url without padding.
        assert_eq!(a.expose().len(), SECRET_PREFIX.len() + 43);
        assert_ne!(a.expose(), b.expose());
        for shown in [format!("{a}"), format!("{a:?}"), format!("{:?}", a.hash())] {
            assert!(
                !shown.contains(&a.expose()[SECRET_PREFIX.len()..]),
                "{shown}"
            );
        }
        assert!(a.hash().ct_matches(&TokenHash::of(a.expose()).0));
        assert!(!a.hash().ct_matches(&b.hash().0));
        assert!(!a.hash().ct_matches(&[0u8; 3]));
    }

    #[test]
    fn names_are_checked_before_anything_is_stored() {
        assert!(check_name("name", "ci-bot").is_ok());
        for bad in ["", "a b", "x\n", &"n".repeat(129)] {
            assert!(check_name("name", bad).is_err(), "{bad:?}");
        }
        let uuid = Uuid::now_v7().to_string();
        let err = check_name("name", &uuid).expect_err("a UUID name");
        assert!(err.to_string().contains("token id"), "{err}");
        assert!(check_name("team", &uuid).is_ok());
    }
}
