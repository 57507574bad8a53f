//! OIDC JWTs as bearer tokens, so a portal's backend or an SSO proxy can
//! call Fulfil on a user's behalf: signature checked against the issuer's
//! JWKS (a file, or a URL), `iss` and `aud` required to match, and claims
//! mapped to a [`Principal`].
//!
//! Contract:
//! - Only asymmetric algorithms are accepted (RS*, PS*, ES256, ES384,
//!   EdDSA), and the token's `alg` must fit the key its `kid` names (an RSA
//!   key verifies RS*/PS* only, a P-256 key ES256 only, and a key whose JWK
//!   names an `alg` that one only). HS* is never accepted: with a JWKS of
//!   public keys, an HMAC "signature" made with a public key as the secret
//!   is the classic algorithm-confusion forgery.
//! - `iss`, `aud` and `exp` are required; `exp` and `nbf` are checked with
//!   [`LEEWAY_SECS`] of clock skew.
//! - The key is chosen by the header's `kid`. A `kid` the keys do not hold,
//!   with a URL source, refetches the JWKS (an issuer rotated its keys), at
//!   most once per [`REFETCH_INTERVAL`] whatever callers send, so a flood of
//!   made-up `kid`s cannot turn Fulfil into a load on the issuer. Fetches
//!   time out after [`FETCH_TIMEOUT`] and read at most [`MAX_JWKS_BYTES`].
//! - Claims: the principal is `user:<user_claim>`, its team the
//!   `team_claim` (a string, or a one-element array: a `groups` claim), its
//!   roles the `roles_claim` (an array of role names; unknown names are
//!   ignored, a missing claim is no roles). A claim name with dots that is
//!   not itself a claim is a path (`realm_access.roles`, as Keycloak puts
//!   them).
//! - An [`OidcError`]'s text says what failed and never echoes the token
//!   (nor its `kid`), so it can be a 401's detail.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fulfil_core::access::{Principal, Role};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 60;

/// The least time between two refetches of a URL's JWKS for an unknown
/// `kid`.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// How long fetching a JWKS may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest JWKS document read (a real one is a few KiB).
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The longest token looked at; real ones are one or two KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The longest user or team a claim may name.
pub const MAX_NAME_CHARS: usize = 256;

/// Where the issuer's signing keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

impl JwksSource {
    /// A JWKS location as an operator writes it: an `http(s)://` URL, or
    /// else a path.
    pub fn parse(text: &str) -> JwksSource {
        if text.starts_with("https://") || text.starts_with("http://") {
            JwksSource::Url(text.to_string())
        } else {
            JwksSource::File(PathBuf::from(text))
        }
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(path) => write!(f, "{}", path.display()),
            JwksSource::Url(url) => f.write_str(url),
        }
    }
}

/// What an OIDC token must carry, and how its claims map to a principal.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksSource,
    /// The claim naming the user (`sub`, `email`): the principal is `user:<it>`.
    pub user_claim: String,
    /// The claim naming the team.
    pub team_claim: String,
    /// The claim listing roles.
    pub roles_claim: String,
}

impl OidcConfig {
    /// A configuration with the default claims: `sub`, `team`, `roles`.
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        jwks: JwksSource,
    ) -> OidcConfig {
        OidcConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks,
            user_claim: "sub".to_string(),
            team_claim: "team".to_string(),
            roles_claim: "roles".to_string(),
        }
    }
}

/// Why a JWT was not accepted, or the verifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The process has no jsonwebtoken crypto backend (a build mistake).
    #[error("no jsonwebtoken crypto provider is available; the build enables no backend")]
    NoCryptoProvider,
    /// The JWKS could not be read or parsed.
    #[error("the issuer's keys (JWKS at {source_}) could not be read: {reason}")]
    JwksUnreadable { source_: String, reason: String },
    /// Not a JWT at all (shape, base64, JSON).
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// The header's `alg` is not an accepted asymmetric algorithm, or does
    /// not fit the key.
    #[error("the token's algorithm {alg} is not accepted{why}")]
    DisallowedAlgorithm { alg: String, why: &'static str },
    /// The header names a `kid` the issuer's keys do not hold (after a
    /// refetch, where the source is a URL).
    #[error("the token is signed with a key the issuer's JWKS does not hold")]
    UnknownKey,
    /// The header names no `kid`.
    #[error("the token's header names no key id (kid)")]
    NoKeyId,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's audience (aud) is not {expected:?}")]
    WrongAudience { expected: String },
    #[error("the token's issuer (iss) is not {expected:?}")]
    WrongIssuer { expected: String },
    /// A claim the configuration needs is absent.
    #[error("the token has no {claim:?} claim")]
    ClaimMissing { claim: String },
    /// A claim is there but is not what it must be.
    #[error("the token's {claim:?} claim is invalid: {why}")]
    ClaimInvalid { claim: String, why: &'static str },
}

/// The keys of one JWKS, by `kid`, parsed once.
type KeyMap = HashMap<String, VerifyKey>;

/// One usable key and the algorithms it may verify.
struct VerifyKey {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// Checks JWTs against one issuer.
pub struct OidcVerifier {
    config: OidcConfig,
    keys: RwLock<Arc<KeyMap>>,
    /// Only for a URL source.
    http: Option<reqwest::Client>,
    /// When an unknown `kid` last refetched the JWKS; held across the fetch
    /// so concurrent unknown `kid`s make one fetch, not many.
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
    refetch_interval: Duration,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Every algorithm a token may name: asymmetric only.
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl OidcVerifier {
    /// Loads the issuer's keys: a bad file, an unreachable URL or a JWKS
    /// with no usable key fails here, at start, rather than on every call.
    pub async fn new(config: OidcConfig) -> Result<OidcVerifier, OidcError> {
        // jsonwebtoken panics at first use without exactly one backend;
        // fail at start instead.
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            return Err(OidcError::NoCryptoProvider);
        }
        let http = match &config.jwks {
            JwksSource::File(_) => None,
            JwksSource::Url(_) => {
                // reqwest is built without a TLS provider; the binary
                // installs ring at start, this covers tests and embedders.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let client = reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .connect_timeout(FETCH_TIMEOUT)
                    .build()
                    .map_err(|e| OidcError::JwksUnreadable {
                        source_: config.jwks.to_string(),
                        reason: format!("could not build an HTTP client: {e}"),
                    })?;
                Some(client)
            }
        };
        let verifier = OidcVerifier {
            keys: RwLock::new(Arc::new(KeyMap::new())),
            http,
            last_refetch: tokio::sync::Mutex::new(None),
            refetch_interval: REFETCH_INTERVAL,
            config,
        };
        let keys = verifier.load().await?;
        if keys.is_empty() {
            return Err(verifier.unreadable("it holds no usable signing key with a kid".into()));
        }
        verifier.store(keys);
        Ok(verifier)
    }

    /// The same verifier with another least time between refetches (tests;
    /// an issuer that rotates unusually often).
    pub fn with_refetch_interval(mut self, interval: Duration) -> OidcVerifier {
        self.refetch_interval = interval;
        self
    }

    /// The configuration this verifier checks against.
    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// The principal a valid token names.
    pub async fn verify(&self, token: &str) -> Result<Principal, OidcError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(OidcError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| OidcError::Malformed)?;
        if !ASYMMETRIC.contains(&header.alg) {
            return Err(OidcError::DisallowedAlgorithm {
                alg: format!("{:?}", header.alg),
                why: "; only asymmetric algorithms (RS*, PS*, ES256, ES384, EdDSA) are",
            });
        }
        let kid = header.kid.as_deref().ok_or(OidcError::NoKeyId)?;
        let claims = self.check_signature(token, kid, header.alg).await?;
        self.principal(&claims)
    }

    /// Verifies the signature with the key `kid` names, refetching the
    /// keys once if it names none, and checks the registered claims.
    async fn check_signature(
        &self,
        token: &str,
        kid: &str,
        alg: Algorithm,
    ) -> Result<Map<String, Value>, OidcError> {
        let mut keys = self.current();
        if !keys.contains_key(kid) {
            keys = self.refetch(kid).await?;
        }
        let key = keys.get(kid).ok_or(OidcError::UnknownKey)?;
        if !key.algorithms.contains(&alg) {
            return Err(OidcError::DisallowedAlgorithm {
                alg: format!("{alg:?}"),
                why: " with the key the token names",
            });
        }
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map(|data| data.claims)
            .map_err(|e| self.explain(e))
    }

    /// Names what jsonwebtoken refused.
    fn explain(&self, e: jsonwebtoken::errors::Error) -> OidcError {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => OidcError::BadSignature,
            K::ExpiredSignature => OidcError::Expired,
            K::ImmatureSignature => OidcError::NotYetValid,
            K::InvalidAudience => OidcError::WrongAudience {
                expected: self.config.audience.clone(),
            },
            K::InvalidIssuer => OidcError::WrongIssuer {
                expected: self.config.issuer.clone(),
            },
            K::MissingRequiredClaim(claim) => OidcError::ClaimMissing {
                claim: claim.clone(),
            },
            K::InvalidClaimFormat(claim) => OidcError::ClaimInvalid {
                claim: claim.clone(),
                why: "it has the wrong type",
            },
            K::InvalidAlgorithm => OidcError::DisallowedAlgorithm {
                alg: "of the header".to_string(),
                why: " with the key the token names",
            },
            // A key that cannot verify this algorithm, bad base64, bad
            // JSON: the token is not something this issuer signed.
            K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidEddsaKey => {
                OidcError::BadSignature
            }
            _ => OidcError::Malformed,
        }
    }

    /// The claims of a verified token as a principal.
    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, OidcError> {
        let user_claim = &self.config.user_claim;
        let user = match claim(claims, user_claim) {
            None => {
                return Err(OidcError::ClaimMissing {
                    claim: user_claim.clone(),
                });
            }
            Some(value) => name(user_claim, value)?,
        };
        let team_claim = &self.config.team_claim;
        let team = match claim(claims, team_claim) {
            None => {
                return Err(OidcError::ClaimMissing {
                    claim: team_claim.clone(),
                });
            }
            Some(Value::Array(items)) => match items.as_slice() {
                [one] => name(team_claim, one)?,
                _ => {
                    return Err(OidcError::ClaimInvalid {
                        claim: team_claim.clone(),
                        why: "an array must hold exactly one team",
                    });
                }
            },
            Some(value) => name(team_claim, value)?,
        };
        let roles_claim = &self.config.roles_claim;
        let roles = match claim(claims, roles_claim) {
            None => Vec::new(),
            Some(Value::Array(items)) => roles(roles_claim, items)?,
            Some(_) => {
                return Err(OidcError::ClaimInvalid {
                    claim: roles_claim.clone(),
                    why: "it must be an array of role names",
                });
            }
        };
        Ok(Principal::new(format!("user:{user}"), team, &roles))
    }

    fn current(&self) -> Arc<KeyMap> {
        // A poisoned lock only means a writer panicked between two whole
        // assignments of an Arc: the value is still a complete key map.
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn store(&self, keys: KeyMap) {
        let keys = Arc::new(keys);
        match self.keys.write() {
            Ok(mut slot) => *slot = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
    }

    /// For an unknown `kid`: the keys after at most one refetch per
    /// interval (a file source is never reread: it does not rotate under a
    /// running process).
    async fn refetch(&self, kid: &str) -> Result<Arc<KeyMap>, OidcError> {
        if self.http.is_none() {
            return Err(OidcError::UnknownKey);
        }
        let mut last = self.last_refetch.lock().await;
        // Another caller may have refetched while this one waited.
        let keys = self.current();
        if keys.contains_key(kid) {
            return Ok(keys);
        }
        if last.is_some_and(|at| at.elapsed() < self.refetch_interval) {
            return Err(OidcError::UnknownKey);
        }
        // Counted whether or not the fetch succeeds: an issuer that is down
        // is not asked again sooner either.
        *last = Some(Instant::now());
        match self.load().await {
            Ok(fresh) if !fresh.is_empty() => {
                tracing::info!(jwks = %self.config.jwks, keys = fresh.len(), "refetched the OIDC issuer's keys for an unknown kid");
                self.store(fresh);
                Ok(self.current())
            }
            Ok(_) => {
                tracing::warn!(jwks = %self.config.jwks, "the refetched JWKS holds no usable key; keeping the old keys");
                Ok(keys)
            }
            Err(e) => {
                tracing::warn!(error = %e, "refetching the OIDC issuer's keys failed; keeping the old keys");
                Err(e)
            }
        }
    }

    /// Reads and parses the JWKS.
    async fn load(&self) -> Result<KeyMap, OidcError> {
        let bytes = match (&self.config.jwks, &self.http) {
            (JwksSource::File(path), _) => tokio::fs::read(path)
                .await
                .map_err(|e| self.unreadable(e.to_string()))?,
            (JwksSource::Url(url), Some(http)) => self.fetch(http, url).await?,
            (JwksSource::Url(_), None) => {
                return Err(self.unreadable("no HTTP client".into()));
            }
        };
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(self.unreadable(format!("it is larger than {MAX_JWKS_BYTES} bytes")));
        }
        let set: JwkSet = serde_json::from_slice(&bytes)
            .map_err(|e| self.unreadable(format!("it is not a JWKS: {e}")))?;
        Ok(key_map(&set))
    }

    async fn fetch(&self, http: &reqwest::Client, url: &str) -> Result<Vec<u8>, OidcError> {
        let mut response = http
            .get(url)
            .send()
            .await
            .map_err(|e| self.unreadable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(self.unreadable(format!("it answered {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.unreadable(e.to_string()))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(self.unreadable(format!("it is larger than {MAX_JWKS_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn unreadable(&self, reason: String) -> OidcError {
        OidcError::JwksUnreadable {
            source_: self.config.jwks.to_string(),
            reason,
        }
    }
}

/// The usable keys of a JWKS by `kid`: a key with no `kid`, a symmetric
/// key (`oct`), an encryption-only key or one jsonwebtoken cannot parse is
/// left out (and logged), not fatal: issuers publish such keys alongside.
fn key_map(set: &JwkSet) -> KeyMap {
    let mut keys = KeyMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            tracing::debug!("JWKS key without a kid ignored");
            continue;
        };
        let algorithms = algorithms_for(jwk);
        if algorithms.is_empty() {
            tracing::debug!(%kid, "JWKS key ignored: not an asymmetric signing key");
            continue;
        }
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid, VerifyKey { key, algorithms });
            }
            Err(e) => tracing::warn!(%kid, error = %e, "JWKS key ignored: unreadable"),
        }
    }
    keys
}

/// The algorithms a key may verify: by its type and curve, narrowed to its
/// `alg` if it names one.
fn algorithms_for(jwk: &Jwk) -> Vec<Algorithm> {
    use Algorithm as A;
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => {
            &[A::RS256, A::RS384, A::RS512, A::PS256, A::PS384, A::PS512]
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[A::ES256],
            EllipticCurve::P384 => &[A::ES384],
            _ => &[],
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => &[A::EdDSA],
            _ => &[],
        },
        // A shared secret in a JWKS would make HMAC tokens verifiable:
        // never.
        _ => &[],
    };
    match jwk.common.key_algorithm {
        None => by_type.to_vec(),
        Some(named) => by_type
            .iter()
            .copied()
            .filter(|alg| key_algorithm(*alg) == Some(named))
            .collect(),
    }
}

fn key_algorithm(alg: Algorithm) -> Option<KeyAlgorithm> {
    use Algorithm as A;
    Some(match alg {
        A::RS256 => KeyAlgorithm::RS256,
        A::RS384 => KeyAlgorithm::RS384,
        A::RS512 => KeyAlgorithm::RS512,
        A::PS256 => KeyAlgorithm::PS256,
        A::PS384 => KeyAlgorithm::PS384,
        A::PS512 => KeyAlgorithm::PS512,
        A::ES256 => KeyAlgorithm::ES256,
        A::ES384 => KeyAlgorithm::ES384,
        A::EdDSA => KeyAlgorithm::EdDSA,
        _ => return None,
    })
}

/// A claim by name, or else by dotted path (`realm_access.roles`).
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// A user or team name from a claim: a non-empty string, bounded, with no
/// control characters (it goes into history and logs).
fn name(claim: &str, value: &Value) -> Result<String, OidcError> {
    let invalid = |why| OidcError::ClaimInvalid {
        claim: claim.to_string(),
        why,
    };
    let text = value.as_str().ok_or(invalid("it must be a string"))?.trim();
    if text.is_empty() {
        return Err(invalid("it is empty"));
    }
    if text.chars().count() > MAX_NAME_CHARS {
        return Err(invalid("it is longer than 256 characters"));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid("it holds control characters"));
    }
    Ok(text.to_string())
}

/// The roles a claim's array names; names Fulfil does not know are
/// another application's roles, ignored.
fn roles(claim: &str, items: &[Value]) -> Result<Vec<Role>, OidcError> {
    let mut roles = Vec::new();
    for item in items {
        let Some(text) = item.as_str() else {
            return Err(OidcError::ClaimInvalid {
                claim: claim.to_string(),
                why: "it must be an array of role names",
            });
        };
        match text.parse::<Role>() {
            Ok(role) => roles.push(role),
            Err(_) => tracing::debug!(role = %text, "unknown role in an OIDC token ignored"),
        }
    }
    Ok(roles)
}
