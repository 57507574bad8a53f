//! `POST/GET /v1/tokens` and `DELETE /v1/tokens/{id_or_name}` (admin; see
//! `fulfil_engine::tokens`): the secret is in the 201 answer to `POST` and
//! nowhere else; the listing never carries a secret or hash; revoking
//! evicts the token from this process's cache at once (other API
//! processes within `auth::CACHE_TTL`).

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use fulfil_core::access::Role;
use fulfil_engine::tokens::{self, NewToken, TokenError};
use serde_json::json;

use crate::auth::Caller;
use crate::extract::{self, Path};
use crate::model::tokens::{CreateToken, CreatedToken, TokenList, TokenSummary};
use crate::{ApiState, Problem, ProblemCode};

fn token_error(e: TokenError) -> Problem {
    match e {
        TokenError::NameTaken(_) => Problem::new(
            StatusCode::CONFLICT,
            ProblemCode::TokenNameTaken,
            "Token name taken",
            e.to_string(),
        )
        .with("field", json!("name")),
        TokenError::Invalid(_) => Problem::bad_request(e.to_string()),
        TokenError::NotFound(what) => Problem::not_found("token", &what),
        TokenError::Db(e) => crate::problem::from_db(&e),
        e if e.is_transient() => Problem::unavailable(&e),
        e => Problem::internal(&e),
    }
}

/// When a token asked for with `expires_in` or `expires_at` expires.
fn expiry(body: &CreateToken) -> Result<Option<DateTime<Utc>>, Problem> {
    match (&body.expires_in, body.expires_at) {
        (Some(_), Some(_)) => Err(Problem::bad_request(
            "expires_in and expires_at: give at most one",
        )),
        (Some(text), None) => {
            let duration = fulfil_core::time::parse_duration(text).map_err(|e| {
                Problem::bad_request(format!(
                    "expires_in: {text:?} is not a duration ({e}); write e.g. 90d, 12h, 30m"
                ))
                .with("field", json!("expires_in"))
            })?;
            let duration = chrono::Duration::from_std(duration)
                .map_err(|_| Problem::bad_request(format!("expires_in: {text:?} is too long")))?;
            Utc::now()
                .checked_add_signed(duration)
                .map(Some)
                .ok_or_else(|| Problem::bad_request(format!("expires_in: {text:?} is too long")))
        }
        (None, at) => Ok(at),
    }
}

/// Creates a token; the answer carries its secret, shown this once.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    operation_id = "create_token",
    tag = "tokens",
    request_body = CreateToken,
    responses(
        (status = 201, description = "Created; `token` is the secret, shown only now", body = CreatedToken),
        (status = 400, description = "A field is not valid (`bad-request` names it): an unknown role, an empty team, a bad duration", body = crate::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`token-name-taken`: a live token has this name", body = crate::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid-body`: the body is not a token request (a missing or unknown field, a wrong type), each error at its JSON pointer", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    extract::Json(body): extract::Json<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), Problem> {
    let roles = body
        .roles
        .iter()
        .map(|r| r.parse::<Role>())
        .collect::<Result<BTreeSet<Role>, _>>()
        .map_err(|e| Problem::bad_request(format!("roles: {e}")).with("field", json!("roles")))?;
    let expires_at = expiry(&body)?;
    let (secret, info) = tokens::create(
        state.engine.pool(),
        NewToken {
            name: body.name,
            team: body.team,
            roles,
            expires_at,
            created_by: caller.id,
        },
    )
    .await
    .map_err(token_error)?;
    Ok((StatusCode::CREATED, Json(CreatedToken::new(&secret, info))))
}

/// Every token, live, revoked or expired, newest first; never a secret.
#[utoipa::path(
    get,
    path = "/v1/tokens",
    operation_id = "list_tokens",
    tag = "tokens",
    responses((status = 200, description = "The tokens", body = TokenList))
)]
pub async fn list(State(state): State<ApiState>) -> Result<Json<TokenList>, Problem> {
    let items = tokens::list(state.engine.pool())
        .await
        .map_err(token_error)?
        .into_iter()
        .map(TokenSummary::from)
        .collect();
    Ok(Json(TokenList { items }))
}

/// Revokes a live token by id or name: it stops working at once here.
#[utoipa::path(
    delete,
    path = "/v1/tokens/{id_or_name}",
    operation_id = "revoke_token",
    tag = "tokens",
    params(("id_or_name" = String, Path, description = "The token's id or name")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No live token has this id or name", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke(
    State(state): State<ApiState>,
    Path(id_or_name): Path<String>,
) -> Result<StatusCode, Problem> {
    let info = tokens::revoke(state.engine.pool(), &id_or_name)
        .await
        .map_err(token_error)?;
    state.auth.evict(info.id);
    Ok(StatusCode::NO_CONTENT)
}
