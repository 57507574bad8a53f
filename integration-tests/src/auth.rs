//! Access-control helpers for tests: an API with tokens on over a stack's
//! engine, and tokens of any team and roles.

use std::collections::BTreeSet;

use anyhow::Context;
use fulfil_core::access::Role;
use fulfil_engine::tokens::{self, NewToken};

use crate::TestStack;

/// The bootstrap admin secret tests install.
pub const BOOTSTRAP: &str = "test-bootstrap-secret-0123456789-abcdefghij";

/// An API (REST, and gRPC over it) with `--auth tokens` over `stack`'s
/// engine, on free ports; both stop with the test process. Returns the
/// REST base URL, the gRPC URL and the router for in-process calls.
pub async fn serve_with_tokens(stack: &TestStack) -> anyhow::Result<(String, String)> {
    tokens::bootstrap(&stack.pool, BOOTSTRAP)
        .await
        .context("installing the bootstrap token")?;
    let state = fulfil_api::ApiState {
        auth: fulfil_api::auth::Auth::tokens(stack.pool.clone(), None),
        ..fulfil_api::ApiState::new(stack.engine.clone(), Some(stack.nats.clone()))
    };
    let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let rest_url = format!("http://{}", rest.local_addr()?);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let grpc_url = format!("http://{}", grpc.local_addr()?);
    let grpc_state = state.clone();
    tokio::spawn(async move {
        if let Err(e) = fulfil_api::serve(rest, state, std::future::pending()).await {
            panic!("the REST API failed: {e}");
        }
    });
    tokio::spawn(async move {
        if let Err(e) = fulfil_grpc::serve(grpc, grpc_state, std::future::pending()).await {
            panic!("the gRPC API failed: {e}");
        }
    });
    Ok((rest_url, grpc_url))
}

/// A live token named `name` of `team` holding `roles`; its secret.
pub async fn token(
    stack: &TestStack,
    name: &str,
    team: &str,
    roles: &[Role],
) -> anyhow::Result<String> {
    let (secret, _) = tokens::create(
        &stack.pool,
        NewToken {
            name: name.to_string(),
            team: team.to_string(),
            roles: roles.iter().copied().collect::<BTreeSet<_>>(),
            expires_at: None,
            created_by: "test".to_string(),
        },
    )
    .await?;
    Ok(secret.expose().to_string())
}

/// A token of `team` holding `roles` whose expiry is already past (moved
/// there in the store, as time would).
pub async fn expired_token(stack: &TestStack, name: &str, team: &str) -> anyhow::Result<String> {
    let secret = token(stack, name, team, &[Role::Admin]).await?;
    sqlx::query(
        "UPDATE fulfil.tokens SET expires_at = now() - interval '1 second' WHERE name = $1",
    )
    .bind(name)
    .execute(&stack.pool)
    .await?;
    Ok(secret)
}
