//! The flags that make `serve` accept OIDC JWTs (a Backstage backend, an
//! SSO proxy calling on a user's behalf). All or none: an issuer without
//! an audience or a JWKS is a mistake refused at start, never a server
//! that quietly accepts no JWTs.

use anyhow::bail;
use fulfil_api::auth::oidc::{JwksSource, OidcConfig};

/// Where OIDC tokens come from and how their claims map to a principal.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct OidcArgs {
    /// Accept JWTs from this issuer (their `iss` must equal it exactly).
    #[arg(long, env = "FULFIL_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// The audience JWTs must name in `aud` (the client id Fulfil is
    /// registered as).
    #[arg(long, env = "FULFIL_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// The issuer's signing keys: a JWKS file path, or an http(s) URL
    /// (refetched when a token names an unknown key, at most every 30 s).
    #[arg(long, env = "FULFIL_OIDC_JWKS")]
    pub oidc_jwks: Option<String>,
    /// The claim naming the user; the principal is `user:<value>`.
    #[arg(long, env = "FULFIL_OIDC_USER_CLAIM", default_value = "sub")]
    pub oidc_user_claim: String,
    /// The claim naming the team (a string, or a one-element array).
    #[arg(long, env = "FULFIL_OIDC_TEAM_CLAIM", default_value = "team")]
    pub oidc_team_claim: String,
    /// The claim listing Fulfil roles (an array; a dotted path such as
    /// `realm_access.roles` reaches into an object).
    #[arg(long, env = "FULFIL_OIDC_ROLES_CLAIM", default_value = "roles")]
    pub oidc_roles_claim: String,
}

impl OidcArgs {
    /// The OIDC configuration, `None` when no OIDC flag is set; an error
    /// when some are set and others missing.
    pub fn config(&self) -> anyhow::Result<Option<OidcConfig>> {
        let (issuer, audience, jwks) = (
            given(&self.oidc_issuer),
            given(&self.oidc_audience),
            given(&self.oidc_jwks),
        );
        let (issuer, audience, jwks) = match (issuer, audience, jwks) {
            (None, None, None) => return Ok(None),
            (Some(i), Some(a), Some(j)) => (i, a, j),
            _ => {
                let missing: Vec<&str> = [
                    (issuer, "--oidc-issuer (FULFIL_OIDC_ISSUER)"),
                    (audience, "--oidc-audience (FULFIL_OIDC_AUDIENCE)"),
                    (jwks, "--oidc-jwks (FULFIL_OIDC_JWKS)"),
                ]
                .into_iter()
                .filter(|(v, _)| v.is_none())
                .map(|(_, flag)| flag)
                .collect();
                bail!(
                    "OIDC needs an issuer, an audience and a JWKS together; missing {}",
                    missing.join(", ")
                );
            }
        };
        for (flag, claim) in [
            ("--oidc-user-claim", &self.oidc_user_claim),
            ("--oidc-team-claim", &self.oidc_team_claim),
            ("--oidc-roles-claim", &self.oidc_roles_claim),
        ] {
            if claim.trim().is_empty() {
                bail!("{flag} names no claim");
            }
        }
        let mut config = OidcConfig::new(issuer, audience, JwksSource::parse(jwks));
        config.user_claim = self.oidc_user_claim.trim().to_string();
        config.team_claim = self.oidc_team_claim.trim().to_string();
        config.roles_claim = self.oidc_roles_claim.trim().to_string();
        Ok(Some(config))
    }
}

/// A flag's value, unless absent or blank.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        oidc: OidcArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<Option<OidcConfig>> {
        let mut argv = vec!["fulfil"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)?.oidc.config()
    }

    #[test]
    fn no_oidc_flag_is_no_oidc() {
        assert!(parse(&[]).expect("parses").is_none());
    }

    #[test]
    fn all_three_flags_make_a_config_with_the_default_claims() {
        let config = parse(&[
            "--oidc-issuer",
            "https://sso.example/realms/p",
            "--oidc-audience",
            "fulfil",
            "--oidc-jwks",
            "https://sso.example/realms/p/protocol/openid-connect/certs",
        ])
        .expect("parses")
        .expect("configured");
        assert_eq!(config.issuer, "https://sso.example/realms/p");
        assert_eq!(config.audience, "fulfil");
        assert!(matches!(config.jwks, JwksSource::Url(_)));
        assert_eq!(
            (
                config.user_claim.as_str(),
                config.team_claim.as_str(),
                config.roles_claim.as_str()
            ),
            ("sub", "team", "roles")
        );
        let config = parse(&[
            "--oidc-issuer=i",
            "--oidc-audience=a",
            "--oidc-jwks=/etc/fulfil/jwks.json",
            "--oidc-user-claim=email",
        ])
        .expect("parses")
        .expect("configured");
        assert_eq!(
            config.jwks,
            JwksSource::File("/etc/fulfil/jwks.json".into())
        );
        assert_eq!(config.user_claim, "email");
    }

    #[test]
    fn an_issuer_alone_is_an_error_naming_what_is_missing() {
        let err = parse(&["--oidc-issuer", "https://sso.example"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("--oidc-audience"), "{text}");
        assert!(text.contains("--oidc-jwks"), "{text}");
        assert!(!text.contains("--oidc-issuer"), "{text}");
    }
}
