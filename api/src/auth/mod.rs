//! Who is calling: every `/v1` route, the SSE streams and (through the
//! REST router) gRPC sit behind [`authenticate`], which puts the caller's
//! [`Principal`] into the request's extensions; handlers take it with the
//! [`Caller`] extractor.
//!
//! Where access control is off (`--auth none`, `dev`), the caller is the
//! `Fulfil-Actor` header's word ([`Principal::unauthenticated`]), or `api`
//! when there is none.

use axum::extract::{FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use fulfil_core::access::Principal;

pub mod oidc;

use crate::Problem;

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

/// Puts the caller's [`Principal`] into the request's extensions.
pub async fn authenticate(mut request: Request, next: Next) -> Response {
    let actor = actor_header(request.headers()).unwrap_or_else(|| "api".to_string());
    request
        .extensions_mut()
        .insert(Principal::unauthenticated(&actor));
    next.run(request).await
}

/// How callers are authenticated: cheap to clone, shared by every route.
/// The default is off (`--auth none`).
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub mode: AuthMode,
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
