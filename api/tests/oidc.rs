//! The OIDC verifier against tokens signed with the test-only keys in
//! `tests/fixtures/oidc` (see its README), with the JWKS read from a file
//! and served over HTTP by a local server.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fulfil_api::auth::oidc::{JwksSource, OidcConfig, OidcError, OidcVerifier};
use fulfil_core::access::Role;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ISSUER: &str = "https://sso.example.test/realms/platform";
const AUDIENCE: &str = "fulfil";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/oidc")
        .join(name)
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims a valid token carries; tests change what they are about.
fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "email": "alice@example.test",
        "team": "team-data",
        "roles": ["requester", "approver"],
        "iat": now(),
        "exp": now() + 600,
    })
}

fn sign_with(claims: &Value, alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn rsa_token(claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(&pem("rsa-private.pem")).expect("rsa key");
    sign_with(claims, Algorithm::RS256, Some("rsa-1"), &key)
}

fn config(jwks: JwksSource) -> OidcConfig {
    OidcConfig::new(ISSUER, AUDIENCE, jwks)
}

async fn file_verifier() -> OidcVerifier {
    OidcVerifier::new(config(JwksSource::File(fixture("jwks.json"))))
        .await
        .expect("verifier")
}

#[tokio::test]
async fn a_valid_rs256_token_names_the_user_team_and_roles() {
    let verifier = file_verifier().await;
    let principal = verifier.verify(&rsa_token(&claims())).await.expect("valid");
    assert_eq!(principal.id, "user:alice");
    assert_eq!(principal.team.as_deref(), Some("team-data"));
    assert_eq!(
        principal.roles.iter().copied().collect::<Vec<_>>(),
        vec![Role::Requester, Role::Approver]
    );
    assert!(principal.authenticated);
}

#[tokio::test]
async fn a_valid_es256_token_is_accepted() {
    let verifier = file_verifier().await;
    let key = EncodingKey::from_ec_pem(&pem("ec-private.pem")).expect("ec key");
    let token = sign_with(&claims(), Algorithm::ES256, Some("ec-1"), &key);
    let principal = verifier.verify(&token).await.expect("valid");
    assert_eq!(principal.id, "user:alice");
}

#[tokio::test]
async fn claims_map_through_the_configured_names_and_paths() {
    let mut config = config(JwksSource::File(fixture("jwks.json")));
    config.user_claim = "email".into();
    config.team_claim = "groups".into();
    config.roles_claim = "realm_access.roles".into();
    let verifier = OidcVerifier::new(config).await.expect("verifier");
    let mut claims = claims();
    claims["groups"] = json!(["team-web"]);
    claims["realm_access"] = json!({"roles": ["operator", "offline_access"]});
    let principal = verifier.verify(&rsa_token(&claims)).await.expect("valid");
    assert_eq!(principal.id, "user:alice@example.test");
    assert_eq!(principal.team.as_deref(), Some("team-web"));
    // `offline_access` is the IdP's role, not Fulfil's: ignored.
    assert_eq!(
        principal.roles.iter().copied().collect::<Vec<_>>(),
        vec![Role::Operator]
    );
}

#[tokio::test]
async fn a_token_without_roles_holds_none() {
    let verifier = file_verifier().await;
    let mut claims = claims();
    claims.as_object_mut().expect("object").remove("roles");
    let principal = verifier.verify(&rsa_token(&claims)).await.expect("valid");
    assert!(principal.roles.is_empty());
    assert!(!principal.has(Role::Viewer));
}

#[tokio::test]
async fn a_wrong_audience_is_refused() {
    let verifier = file_verifier().await;
    let mut claims = claims();
    claims["aud"] = json!("another-app");
    let err = verifier.verify(&rsa_token(&claims)).await.unwrap_err();
    assert!(matches!(err, OidcError::WrongAudience { .. }), "{err:?}");
}

#[tokio::test]
async fn a_wrong_issuer_is_refused() {
    let verifier = file_verifier().await;
    let mut claims = claims();
    claims["iss"] = json!("https://evil.example.test");
    let err = verifier.verify(&rsa_token(&claims)).await.unwrap_err();
    assert!(matches!(err, OidcError::WrongIssuer { .. }), "{err:?}");
}

#[tokio::test]
async fn a_token_without_an_audience_is_refused() {
    let verifier = file_verifier().await;
    let mut claims = claims();
    claims.as_object_mut().expect("object").remove("aud");
    let err = verifier.verify(&rsa_token(&claims)).await.unwrap_err();
    assert!(
        matches!(&err, OidcError::ClaimMissing { claim } if claim == "aud"),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_beyond_the_leeway_only() {
    let verifier = file_verifier().await;
    let mut claims = claims();
    claims["exp"] = json!(now() - 600);
    let err = verifier.verify(&rsa_token(&claims)).await.unwrap_err();
    assert!(matches!(err, OidcError::Expired), "{err:?}");
    // Within the 60 s leeway: a clock a little behind the issuer's.
    claims["exp"] = json!(now() - 10);
    verifier
        .verify(&rsa_token(&claims))
        .await
        .expect("within leeway");
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let verifier = file_verifier().await;
    let mut claims = claims();
    claims["nbf"] = json!(now() + 600);
    let err = verifier.verify(&rsa_token(&claims)).await.unwrap_err();
    assert!(matches!(err, OidcError::NotYetValid), "{err:?}");
}

#[tokio::test]
async fn a_tampered_payload_fails_the_signature() {
    let verifier = file_verifier().await;
    let token = rsa_token(&claims());
    let mut forged = claims();
    forged["roles"] = json!(["admin"]);
    let other = rsa_token(&forged);
    // The first token's header and signature around the second's payload.
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[1] = other.split('.').nth(1).expect("payload");
    let err = verifier.verify(&parts.join(".")).await.unwrap_err();
    assert!(matches!(err, OidcError::BadSignature), "{err:?}");
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let verifier = file_verifier().await;
    // The algorithm-confusion forgery: the public PEM used as an HMAC secret.
    let key = EncodingKey::from_secret(&pem("rsa-public.pem")).expect("secret");
    let token = sign_with(&claims(), Algorithm::HS256, Some("rsa-1"), &key);
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(
        matches!(err, OidcError::DisallowedAlgorithm { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_algorithm_that_does_not_fit_the_key_is_refused() {
    let verifier = file_verifier().await;
    // Signed properly with the RSA key, but naming the EC key's kid.
    let key = EncodingKey::from_rsa_pem(&pem("rsa-private.pem")).expect("rsa key");
    let token = sign_with(&claims(), Algorithm::RS256, Some("ec-1"), &key);
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(
        matches!(err, OidcError::DisallowedAlgorithm { .. }),
        "{err:?}"
    );
    // The RSA key's JWK names RS256: PS256 with the right key is refused too.
    let token = sign_with(&claims(), Algorithm::PS256, Some("rsa-1"), &key);
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(
        matches!(err, OidcError::DisallowedAlgorithm { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_token_naming_the_decoy_key_fails_the_signature() {
    let verifier = file_verifier().await;
    let key = EncodingKey::from_rsa_pem(&pem("rsa-private.pem")).expect("rsa key");
    let token = sign_with(&claims(), Algorithm::RS256, Some("decoy"), &key);
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(matches!(err, OidcError::BadSignature), "{err:?}");
}

#[tokio::test]
async fn an_unknown_or_missing_kid_is_refused() {
    let verifier = file_verifier().await;
    let key = EncodingKey::from_rsa_pem(&pem("rsa2-private.pem")).expect("rsa key");
    let token = sign_with(&claims(), Algorithm::RS256, Some("rsa-2"), &key);
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(matches!(err, OidcError::UnknownKey), "{err:?}");
    let token = sign_with(&claims(), Algorithm::RS256, None, &key);
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(matches!(err, OidcError::NoKeyId), "{err:?}");
}

#[tokio::test]
async fn a_missing_or_ambiguous_team_claim_is_refused_by_name() {
    let verifier = file_verifier().await;
    let mut claims = claims();
    claims.as_object_mut().expect("object").remove("team");
    let err = verifier.verify(&rsa_token(&claims)).await.unwrap_err();
    assert!(
        matches!(&err, OidcError::ClaimMissing { claim } if claim == "team"),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"team\""), "{err}");
    claims["team"] = json!(["team-a", "team-b"]);
    let err = verifier.verify(&rsa_token(&claims)).await.unwrap_err();
    assert!(
        matches!(&err, OidcError::ClaimInvalid { claim, .. } if claim == "team"),
        "{err:?}"
    );
}

#[tokio::test]
async fn garbage_is_malformed_and_the_error_never_echoes_the_token() {
    let verifier = file_verifier().await;
    for token in ["a.b.c", "not-a-jwt", "..", &"x.".repeat(20_000)] {
        let err = verifier.verify(token).await.unwrap_err();
        assert!(matches!(err, OidcError::Malformed), "{token:.20}: {err:?}");
    }
    let mut claims = claims();
    claims["aud"] = json!("another-app");
    let token = rsa_token(&claims);
    let err = verifier.verify(&token).await.unwrap_err();
    for part in token.split('.') {
        assert!(!err.to_string().contains(part), "{err}");
    }
}

#[tokio::test]
async fn an_unreadable_jwks_fails_at_start() {
    let err = OidcVerifier::new(config(JwksSource::File(fixture("absent.json"))))
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::JwksUnreadable { .. }), "{err:?}");
    let err = OidcVerifier::new(config(JwksSource::File(fixture("README.md"))))
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::JwksUnreadable { .. }), "{err:?}");
}

/// A JWKS endpoint that counts its fetches and serves what `jwks` holds.
struct Issuer {
    url: String,
    fetches: Arc<AtomicUsize>,
    jwks: Arc<std::sync::Mutex<Vec<u8>>>,
}

async fn issuer() -> Issuer {
    let fetches = Arc::new(AtomicUsize::new(0));
    let jwks = Arc::new(std::sync::Mutex::new(
        std::fs::read(fixture("jwks.json")).expect("jwks"),
    ));
    let app = {
        let fetches = fetches.clone();
        let jwks = jwks.clone();
        axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                fetches.fetch_add(1, Ordering::SeqCst);
                let body = jwks.lock().expect("jwks").clone();
                async move { ([("content-type", "application/json")], body) }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Issuer {
        url: format!("http://{addr}/jwks"),
        fetches,
        jwks,
    }
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_unknown_kids_are_rate_limited() {
    let issuer = issuer().await;
    let verifier = OidcVerifier::new(config(JwksSource::Url(issuer.url.clone())))
        .await
        .expect("verifier");
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
    verifier.verify(&rsa_token(&claims())).await.expect("valid");
    assert_eq!(
        issuer.fetches.load(Ordering::SeqCst),
        1,
        "a known kid fetches nothing"
    );

    // The issuer rotates to rsa-2: the first token signed with it refetches.
    *issuer.jwks.lock().expect("jwks") = std::fs::read(fixture("jwks-rotated.json")).expect("jwks");
    let rotated = EncodingKey::from_rsa_pem(&pem("rsa2-private.pem")).expect("rsa key");
    let token = sign_with(&claims(), Algorithm::RS256, Some("rsa-2"), &rotated);
    let principal = verifier.verify(&token).await.expect("rotated key");
    assert_eq!(principal.id, "user:alice");
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 2);
    // The old key is gone with the rotation.
    let err = verifier.verify(&rsa_token(&claims())).await.unwrap_err();
    assert!(matches!(err, OidcError::UnknownKey), "{err:?}");

    // Made-up kids within the interval: refused without asking the issuer.
    for i in 0..50 {
        let token = sign_with(
            &claims(),
            Algorithm::RS256,
            Some(&format!("made-up-{i}")),
            &rotated,
        );
        let err = verifier.verify(&token).await.unwrap_err();
        assert!(matches!(err, OidcError::UnknownKey), "{err:?}");
    }
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn concurrent_unknown_kids_fetch_once_per_interval() {
    let issuer = issuer().await;
    let verifier = Arc::new(
        OidcVerifier::new(config(JwksSource::Url(issuer.url.clone())))
            .await
            .expect("verifier"),
    );
    let key = EncodingKey::from_rsa_pem(&pem("rsa2-private.pem")).expect("rsa key");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let token = sign_with(&claims(), Algorithm::RS256, Some(&format!("new-{i}")), &key);
        let verifier = verifier.clone();
        tasks.push(tokio::spawn(async move { verifier.verify(&token).await }));
    }
    for task in tasks {
        let err = task.await.expect("task").unwrap_err();
        assert!(matches!(err, OidcError::UnknownKey), "{err:?}");
    }
    assert_eq!(
        issuer.fetches.load(Ordering::SeqCst),
        2,
        "one load, one refetch"
    );
}

#[tokio::test]
async fn with_no_interval_every_unknown_kid_refetches() {
    // The rate limit is what keeps the count at 2 above: without it, each
    // unknown kid asks the issuer.
    let issuer = issuer().await;
    let verifier = OidcVerifier::new(config(JwksSource::Url(issuer.url.clone())))
        .await
        .expect("verifier")
        .with_refetch_interval(Duration::ZERO);
    let key = EncodingKey::from_rsa_pem(&pem("rsa2-private.pem")).expect("rsa key");
    for i in 0..3 {
        let token = sign_with(&claims(), Algorithm::RS256, Some(&format!("new-{i}")), &key);
        verifier.verify(&token).await.unwrap_err();
    }
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn an_unreachable_jwks_url_fails_at_start() {
    // Bound then dropped: nothing listens there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let err = OidcVerifier::new(config(JwksSource::Url(format!("http://{addr}/jwks"))))
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::JwksUnreadable { .. }), "{err:?}");
}
