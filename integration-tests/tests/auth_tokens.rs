//! API tokens end to end on the real Postgres: bootstrap, create through
//! the API, use, list (no secret), expiry, revocation (at once), malformed
//! and unknown headers, the role gate, refused input storing nothing, and
//! no secret in the tokens table.

use fulfil_core::access::Role;
use fulfil_engine::tokens::{self, TokenError};
use fulfil_integration_tests::TestStack;
use fulfil_integration_tests::auth::{BOOTSTRAP, expired_token, serve_with_tokens, token};
use serde_json::{Value, json};

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    bearer: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Value)> {
    let mut request = http.request(method, url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)?
    };
    Ok((status, headers, body))
}

async fn count_tokens(stack: &TestStack) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM fulfil.tokens")
        .fetch_one(&stack.pool)
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_lives_is_listed_without_its_secret_expires_and_dies_when_revoked()
-> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let (api, _) = serve_with_tokens(&stack).await?;
    let http = &stack.http;
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;

    // Bootstrap: short secrets refused; the same secret again changes nothing.
    assert!(matches!(
        tokens::bootstrap(&stack.pool, "short").await,
        Err(TokenError::BootstrapTooShort(5))
    ));
    let again = tokens::bootstrap(&stack.pool, BOOTSTRAP).await?;
    assert_eq!(
        (again.name.as_str(), again.team.as_str()),
        ("bootstrap", "platform")
    );
    assert_eq!(
        again.roles.iter().copied().collect::<Vec<_>>(),
        [Role::Admin]
    );
    assert_eq!(count_tokens(&stack).await?, 1);

    // Public routes need nothing; /v1 needs a token, and says so.
    let (status, _, _) = call(http, get.clone(), format!("{api}/healthz"), None, None).await?;
    assert_eq!(status, 200);
    let (status, headers, body) =
        call(http, get.clone(), format!("{api}/v1/runs"), None, None).await?;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "unauthenticated");
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("no Authorization header")
    );

    // The admin creates a viewer token through the API: the secret shows once.
    let (status, _, created) = call(
        http,
        post.clone(),
        format!("{api}/v1/tokens"),
        Some(BOOTSTRAP),
        Some(
            json!({"name": "viewer-a", "team": "team-a", "roles": ["viewer"], "expires_in": "90d"}),
        ),
    )
    .await?;
    assert_eq!(status, 201, "{created}");
    let secret = created["token"].as_str().unwrap_or_default().to_string();
    assert!(
        secret.starts_with("fulfil_") && secret.len() > 40,
        "{created}"
    );
    assert_eq!(created["roles"], json!(["viewer"]));
    assert!(created["expires_at"].is_string(), "{created}");

    // It reads, and it is not an admin.
    let (status, _, body) = call(
        http,
        get.clone(),
        format!("{api}/v1/runs"),
        Some(&secret),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = call(
        http,
        get.clone(),
        format!("{api}/v1/tokens"),
        Some(&secret),
        None,
    )
    .await?;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "forbidden");
    assert_eq!(body["missing_role"], "admin");

    // The listing never carries a secret or a hash.
    let (status, _, list) = call(
        http,
        get.clone(),
        format!("{api}/v1/tokens"),
        Some(BOOTSTRAP),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{list}");
    let text = list.to_string();
    assert!(
        !text.contains(&secret) && !text.contains(BOOTSTRAP),
        "{text}"
    );
    assert!(
        !text.contains("hash") && !text.contains("\"token\""),
        "{text}"
    );
    let names: Vec<&str> = list["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["viewer-a", "bootstrap"]);

    // The stored rows hold no secret, in any column.
    let rows: Vec<String> = sqlx::query_scalar("SELECT t::text FROM fulfil.tokens t")
        .fetch_all(&stack.pool)
        .await?;
    let encoded = &secret["fulfil_".len()..];
    for row in &rows {
        assert!(!row.contains(encoded) && !row.contains(BOOTSTRAP), "{row}");
    }

    // Bad input answers a problem naming it and stores nothing.
    let before = count_tokens(&stack).await?;
    let cases = [
        (
            json!({"name": "x", "team": "team-a", "roles": ["root"]}),
            400,
            "root",
        ),
        (
            json!({"name": "x", "team": "", "roles": ["viewer"]}),
            400,
            "team",
        ),
        (json!({"name": "x", "team": "t", "roles": []}), 400, "roles"),
        (
            json!({"name": "x", "team": "t", "roles": ["viewer"], "expires_in": "soon"}),
            400,
            "expires_in",
        ),
        (
            json!({"name": "x", "team": "t", "roles": ["viewer"], "expires_at": "2001-01-01T00:00:00Z"}),
            400,
            "past",
        ),
        (
            json!({"name": "viewer-a", "team": "t", "roles": ["viewer"]}),
            409,
            "viewer-a",
        ),
        (
            json!({"name": "x", "team": "t", "roles": ["viewer"], "secret": "mine"}),
            422,
            "secret",
        ),
    ];
    for (body, want, names) in cases {
        let (status, _, problem) = call(
            http,
            post.clone(),
            format!("{api}/v1/tokens"),
            Some(BOOTSTRAP),
            Some(body.clone()),
        )
        .await?;
        assert_eq!(status, want, "{body}: {problem}");
        assert!(problem.to_string().contains(names), "{body}: {problem}");
    }
    assert_eq!(count_tokens(&stack).await?, before);

    // Expired: refused, and said so.
    let expired = expired_token(&stack, "old", "team-a").await?;
    let (status, _, body) = call(
        http,
        get.clone(),
        format!("{api}/v1/runs"),
        Some(&expired),
        None,
    )
    .await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthenticated")),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{body}"
    );

    // Unknown, malformed, and a JWT with no OIDC configured.
    let headers_and_details = [
        ("Bearer fulfil_not-a-real-token", "unknown"),
        ("Basic dXNlcjpwYXNz", "not Bearer"),
        ("Bearer", "one token"),
        ("Bearer aaa.bbb.ccc", "OIDC"),
    ];
    for (header, says) in headers_and_details {
        let response = http
            .get(format!("{api}/v1/runs"))
            .header("authorization", header)
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 401, "{header}");
        let body: Value = response.json().await?;
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{header}: {detail}");
        assert!(
            !detail.contains("not-a-real-token") && !detail.contains("dXNlcjpwYXNz"),
            "{detail}"
        );
    }

    // Revoked through this process: refused at once, cached or not.
    let (status, _, _) = call(
        http,
        reqwest::Method::DELETE,
        format!("{api}/v1/tokens/viewer-a"),
        Some(BOOTSTRAP),
        None,
    )
    .await?;
    assert_eq!(status, 204);
    let (status, _, body) = call(
        http,
        get.clone(),
        format!("{api}/v1/runs"),
        Some(&secret),
        None,
    )
    .await?;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked"),
        "{body}"
    );
    let (status, _, body) = call(
        http,
        reqwest::Method::DELETE,
        format!("{api}/v1/tokens/viewer-a"),
        Some(BOOTSTRAP),
        None,
    )
    .await?;
    assert_eq!(status, 404, "revoking twice: {body}");
    // The name is free again.
    let again = token(&stack, "viewer-a", "team-a", &[Role::Viewer]).await?;
    assert_ne!(again, secret);

    // A new bootstrap value replaces the old one, which stops working.
    let rotated = "another-bootstrap-secret-0123456789-abcdefghij";
    tokens::bootstrap(&stack.pool, rotated).await?;
    assert!(
        tokens::find(&stack.pool, &tokens::TokenHash::of(BOOTSTRAP))
            .await?
            .is_none()
    );
    assert!(
        tokens::find(&stack.pool, &tokens::TokenHash::of(rotated))
            .await?
            .is_some()
    );

    stack.stop().await
}
