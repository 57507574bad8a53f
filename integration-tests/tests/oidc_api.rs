//! OIDC JWTs at the API: a bearer JWT from the configured issuer is a
//! principal like an API token's; a bad one is a 401 saying what failed
//! without echoing the token; a valid one with no Fulfil role is a 403.
//! Keys are the test-only fixtures in `api/tests/fixtures/oidc`.

use std::path::PathBuf;
use std::sync::Arc;

use fulfil_api::auth::oidc::{JwksSource, OidcConfig, OidcVerifier};
use fulfil_integration_tests::TestStack;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ISSUER: &str = "https://sso.example.test/realms/platform";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../api/tests/fixtures/oidc")
        .join(name)
}

fn jwt(claims: &Value) -> anyhow::Result<String> {
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem"))?)?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    Ok(jsonwebtoken::encode(&header, claims, &key)?)
}

fn claims(roles: &[&str], exp_in: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": ISSUER, "aud": "fulfil", "sub": "alice", "team": "team-data",
        "roles": roles, "iat": now, "exp": now + exp_in,
    })
}

async fn serve(stack: &TestStack) -> anyhow::Result<String> {
    let verifier = OidcVerifier::new(OidcConfig::new(
        ISSUER,
        "fulfil",
        JwksSource::File(fixture("jwks.json")),
    ))
    .await?;
    let state = fulfil_api::ApiState {
        auth: fulfil_api::auth::Auth::tokens(stack.pool.clone(), Some(Arc::new(verifier))),
        ..fulfil_api::ApiState::new(stack.engine.clone(), Some(stack.nats.clone()))
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { fulfil_api::serve(listener, state, std::future::pending()).await });
    Ok(url)
}

#[tokio::test]
async fn a_jwt_from_the_issuer_reads_promises_and_a_bad_one_is_a_401() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let api = serve(&stack).await?;
    let get = |token: String| {
        let (http, api) = (stack.http.clone(), api.clone());
        async move {
            let response = http
                .get(format!("{api}/v1/promises"))
                .bearer_auth(&token)
                .send()
                .await?;
            let status = response.status().as_u16();
            anyhow::Ok((status, response.json::<Value>().await?))
        }
    };

    let (status, body) = get(jwt(&claims(&["viewer"], 600))?).await?;
    assert_eq!(status, 200, "{body}");

    let expired = jwt(&claims(&["viewer"], -600))?;
    let (status, body) = get(expired.clone()).await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthenticated")),
        "{body}"
    );
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("expired"), "{body}");
    assert!(!body.to_string().contains(&expired), "{body}");

    let mut wrong_aud = claims(&["viewer"], 600);
    wrong_aud["aud"] = json!("another-app");
    let (status, body) = get(jwt(&wrong_aud)?).await?;
    assert_eq!(status, 401, "{body}");

    // Verified, but holding no Fulfil role: who it is is known, what it
    // may do is nothing.
    let (status, body) = get(jwt(&claims(&["offline_access"], 600))?).await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    stack.stop().await
}
