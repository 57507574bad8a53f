//! Who is calling, and whether their roles let them: every route sits
//! behind [`authenticate`], which puts the caller's [`Principal`] into the
//! request's extensions (handlers take it with the [`Caller`] extractor)
//! and then applies the role gate of [`permissions`], which denies any
//! route it has no row for.
//!
//! Where access control is off (`--auth none`, `dev`), the caller is the
//! `Fulfil-Actor` header's word ([`Principal::unauthenticated`]), or `api`
//! when there is none; it holds every role, so the gate passes it.
//!
//! With tokens on ([`AuthMode::Tokens`]), every route the table does not
//! mark public needs `Authorization: Bearer <token>`, and `Fulfil-Actor`
//! is ignored. A token with two dots is a JWT, checked by the configured
//! [`oidc::OidcVerifier`]; anything else is an API token
//! (`fulfil_engine::tokens`), the principal `user:<name>` of its team with
//! its roles. Anything else answers 401 `unauthenticated` with
//! `WWW-Authenticate: Bearer` and a detail saying what was wrong (no
//! header, not `Bearer`, unknown, revoked, expired), never the token.
//!
//! Verified API tokens are cached in memory for [`CACHE_TTL`] (see
//! [`cache`]) so the hot path makes no Postgres round trip. Revoking
//! through this process evicts at once; **on other API processes a
//! revoked token keeps working for at most [`CACHE_TTL`]**. An expiry is
//! honoured to the instant: a cached token is never used past it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use fulfil_core::access::Principal;
use fulfil_engine::tokens::{self, TokenHash, TokenId};
use sqlx::PgPool;

pub mod cache;
pub mod oidc;
pub mod permissions;

use crate::{ApiState, Problem};

/// How long a verified API token is trusted without asking Postgres: the
/// longest a token revoked on another API process keeps working here.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Most verified tokens cached at once.
pub const CACHE_CAPACITY: usize = 10_000;

/// The caller of a route, as [`authenticate`] found it.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Missing only if a route was mounted outside the router's layers:
        // a bug, refused rather than guessed at.
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| Problem::internal(&"the route is not behind the authentication layer"))
    }
}

/// The `Fulfil-Actor` header's value, cleaned for history, if one was sent.
pub fn actor_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get("fulfil-actor")
        .and_then(|v| v.to_str().ok())
        .map(|v| fulfil_bus::header_text(v).trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Puts the caller's [`Principal`] into the request's extensions, then
/// lets it through only if [`permissions`] grants its route to it.
pub async fn authenticate(
    State(state): State<ApiState>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let route = matched.as_ref().map(MatchedPath::as_str).unwrap_or("");
    let access = permissions::access(&method, route);
    let principal = match state.auth.mode {
        AuthMode::None => {
            let actor = actor_header(request.headers()).unwrap_or_else(|| "api".to_string());
            Principal::unauthenticated(&actor)
        }
        AuthMode::Tokens if access == Some(permissions::Access::Public) => {
            // Public routes (probes, metrics, the document) need no token;
            // a caller still gets a principal, with no role and no team.
            Principal {
                id: "anonymous".to_string(),
                team: None,
                roles: Default::default(),
                authenticated: true,
            }
        }
        AuthMode::Tokens => match state.auth.principal(request.headers()).await {
            Ok(principal) => principal,
            Err(problem) => return problem.into_response(),
        },
    };
    if let Err(problem) = permissions::check(access, &method, route, &principal) {
        return problem.into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// How callers are authenticated: cheap to clone, shared by every route.
/// The default is off (`--auth none`).
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub mode: AuthMode,
    /// Where API tokens are looked up; set when `mode` is `Tokens`.
    pool: Option<PgPool>,
    /// Checks JWTs; `None` answers them 401 naming that OIDC is off.
    pub oidc: Option<Arc<oidc::OidcVerifier>>,
    cache: Arc<cache::TokenCache>,
}

/// Whether callers must prove who they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// Callers are who the `Fulfil-Actor` header says (`dev`, `--auth none`).
    #[default]
    None,
    /// A bearer token or an OIDC JWT on every `/v1` route.
    Tokens,
}

impl Auth {
    /// Access control off: every caller is who `Fulfil-Actor` says.
    pub fn off() -> Auth {
        Auth::default()
    }

    /// Bearer tokens required: API tokens looked up in `pool`, JWTs checked
    /// by `oidc` when one is given.
    pub fn tokens(pool: PgPool, oidc: Option<Arc<oidc::OidcVerifier>>) -> Auth {
        Auth {
            mode: AuthMode::Tokens,
            pool: Some(pool),
            oidc,
            cache: Arc::new(cache::TokenCache::new(CACHE_TTL, CACHE_CAPACITY)),
        }
    }

    /// Forgets a revoked token at once in this process.
    pub fn evict(&self, id: TokenId) {
        self.cache.evict(id);
    }

    /// The principal the request's bearer token names, or the 401 saying
    /// why there is none.
    async fn principal(&self, headers: &HeaderMap) -> Result<Principal, Problem> {
        let token = bearer(headers)?;
        if token.matches('.').count() == 2 {
            let Some(oidc) = &self.oidc else {
                return Err(Problem::unauthenticated(
                    "the bearer token is a JWT, but this server has no OIDC issuer configured; use an API token",
                ));
            };
            return oidc
                .verify(token)
                .await
                .map_err(|e| Problem::unauthenticated(format!("the OIDC token was refused: {e}")));
        }
        let hash = TokenHash::of(token);
        if let Some(principal) = self.cache.get(&hash) {
            return Ok(principal);
        }
        let Some(pool) = &self.pool else {
            return Err(Problem::internal(&"token auth is on without a database"));
        };
        let found = tokens::lookup(pool, &hash).await.map_err(|e| match e {
            e if e.is_transient() => Problem::unavailable(&e),
            e => Problem::internal(&e),
        })?;
        let Some(info) = found else {
            return Err(Problem::unauthenticated("the bearer token is unknown"));
        };
        match info.state(Utc::now()) {
            tokens::TokenState::Live => {}
            tokens::TokenState::Revoked => {
                return Err(Problem::unauthenticated(format!(
                    "the bearer token {:?} was revoked",
                    info.name
                )));
            }
            tokens::TokenState::Expired => {
                return Err(Problem::unauthenticated(format!(
                    "the bearer token {:?} expired",
                    info.name
                )));
            }
        }
        let principal = info.principal();
        self.cache
            .insert(hash, info.id, principal.clone(), info.expires_at);
        // Off the request's path; at most once a minute per token.
        let (pool, id) = (pool.clone(), info.id);
        tokio::spawn(async move {
            if let Err(e) = tokens::touch(&pool, id).await {
                tracing::debug!(error = %e, "recording a token's last use failed");
            }
        });
        Ok(principal)
    }
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<&str, Problem> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        Problem::unauthenticated(
            "no Authorization header: send `Authorization: Bearer <token>` (fulfil token create makes one)",
        )
    })?;
    let value = value.to_str().map_err(|_| {
        Problem::unauthenticated("the Authorization header is malformed: it is not ASCII")
    })?;
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Problem::unauthenticated(
            "the Authorization header is malformed: its scheme is not Bearer; send `Authorization: Bearer <token>`",
        ));
    }
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(Problem::unauthenticated(
            "the Authorization header is malformed: `Bearer` must be followed by one token",
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(value).expect("a header value"),
        );
        headers
    }

    #[test]
    fn a_bearer_header_yields_its_token_and_anything_else_says_what_is_wrong() {
        assert_eq!(bearer(&headers(b"Bearer abc")).ok(), Some("abc"));
        assert_eq!(bearer(&headers(b"bearer  abc ")).ok(), Some("abc"));
        let cases: [(&[u8], &str); 5] = [
            (b"Basic dXNlcjpwdw==", "scheme is not Bearer"),
            (b"Bearer", "followed by one token"),
            (b"Bearer a b", "followed by one token"),
            (b"Bearer \xff", "not ASCII"),
            (b"abc", "scheme is not Bearer"),
        ];
        for (value, says) in cases {
            let problem = bearer(&headers(value)).expect_err("refused");
            assert_eq!(problem.status, axum::http::StatusCode::UNAUTHORIZED);
            assert!(problem.detail.contains(says), "{:?}", problem.detail);
        }
        let problem = bearer(&HeaderMap::new()).expect_err("no header");
        assert!(problem.detail.contains("no Authorization header"));
        let problem = bearer(&headers(b"Basic s3cr3t-value")).expect_err("refused");
        assert!(!problem.detail.contains("s3cr3t"), "{}", problem.detail);
    }
}
