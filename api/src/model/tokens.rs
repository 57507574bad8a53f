//! The bodies of `/v1/tokens`: what an admin sends to create a token, the
//! one answer that carries its secret, and the listing, which never does.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({ "name": "ci-deployer", "team": "team-data", "roles": ["requester"], "expires_in": "90d" }))]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Unique among live tokens; the principal is `user:<name>`.
    pub name: String,
    pub team: String,
    /// One or more of viewer, requester, approver, operator, author, admin.
    pub roles: Vec<String>,
    /// How long it lasts (`90d`, `12h`); at most one of this and `expires_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    /// When it stops working (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// `201` to `POST /v1/tokens`: the only answer that shows the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The secret, shown this once: send it as `Authorization: Bearer <token>`.
    pub token: String,
    pub id: Uuid,
    pub name: String,
    pub team: String,
    pub roles: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl CreatedToken {
    /// The answer for a token just created, with its secret.
    pub fn new(
        secret: &fulfil_engine::tokens::TokenSecret,
        info: fulfil_engine::tokens::TokenInfo,
    ) -> CreatedToken {
        CreatedToken {
            token: secret.expose().to_string(),
            id: info.id.0,
            name: info.name,
            team: info.team,
            roles: info.roles.iter().map(|r| r.to_string()).collect(),
            expires_at: info.expires_at,
        }
    }
}

/// A token as listed: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenSummary {
    pub id: Uuid,
    pub name: String,
    pub team: String,
    pub roles: Vec<String>,
    /// `live`, `revoked` or `expired`.
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Coarse (within a minute or so), null if never used.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<fulfil_engine::tokens::TokenInfo> for TokenSummary {
    fn from(info: fulfil_engine::tokens::TokenInfo) -> Self {
        use fulfil_engine::tokens::TokenState;
        let state = match info.state(Utc::now()) {
            TokenState::Live => "live",
            TokenState::Revoked => "revoked",
            TokenState::Expired => "expired",
        };
        TokenSummary {
            id: info.id.0,
            name: info.name,
            team: info.team,
            roles: info.roles.iter().map(|r| r.to_string()).collect(),
            state: state.to_string(),
            created_at: info.created_at,
            created_by: info.created_by,
            expires_at: info.expires_at,
            revoked_at: info.revoked_at,
            last_used_at: info.last_used_at,
        }
    }
}

/// `GET /v1/tokens`: every token, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<TokenSummary>,
}
