//! `fulfil token create|list|revoke`: clients of `/v1/tokens` (admin), and
//! `token create --bootstrap`, which writes the first admin token straight
//! into the database so there is a way in before any token exists.
//!
//! `--bootstrap` never migrates: a database without the token tables is
//! reported as such (run `fulfil migrate` first). The secret is printed
//! once, to stdout, and nowhere else.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use fulfil_api::model::tokens::{CreateToken, CreatedToken, TokenList};
use fulfil_core::access::Role;
use fulfil_engine::tokens::{self, NewToken};
use serde_json::json;

use crate::client::{Api, model};
use crate::output::{at, opt, print_structured, print_table};
use crate::report::Reaching;
use crate::{ClientArgs, Format};

/// Name and team of a bootstrap token when none are given.
const BOOTSTRAP_DEFAULT_NAME: &str = "admin";

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown this once).
    #[command(
        after_help = "Examples:\n  fulfil token create --name ci --team team-data --role requester,viewer --expires 90d\n  DATABASE_URL=postgres://... fulfil token create --bootstrap -o json"
    )]
    Create {
        /// Unique among live tokens; the principal is `user:<name>`
        /// (`--bootstrap`: `admin` unless given).
        #[arg(long)]
        name: Option<String>,
        /// The team it acts for (`--bootstrap`: `platform` unless given).
        #[arg(long)]
        team: Option<String>,
        /// viewer, requester, approver, operator, author or admin;
        /// repeatable or a comma list.
        #[arg(long = "role", value_delimiter = ',')]
        roles: Vec<String>,
        /// How long it lasts: `90d`, `12h`; unset, until revoked.
        #[arg(long)]
        expires: Option<String>,
        /// Write an admin token straight into the database (no API call):
        /// the way in before any token exists.
        #[arg(long)]
        bootstrap: bool,
        /// The database `--bootstrap` writes to.
        #[arg(long, env = "DATABASE_URL", default_value = crate::server::DEFAULT_DATABASE_URL)]
        database_url: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List tokens (never a secret).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token by id or name; it stops working at once.
    Revoke {
        id_or_name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run_token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create {
            name,
            team,
            roles,
            expires,
            bootstrap,
            database_url,
            client,
        } if bootstrap => {
            create_bootstrap(name, team, &roles, expires, &database_url, client.output).await
        }
        TokenCommand::Create {
            name,
            team,
            roles,
            expires,
            client,
            ..
        } => {
            let (Some(name), Some(team)) = (name, team) else {
                bail!("--name and --team are required (or --bootstrap for a first admin token)");
            };
            if roles.is_empty() {
                bail!(
                    "give at least one --role: viewer, requester, approver, operator, author, admin"
                );
            }
            let api = Api::new(&client)?;
            let body = CreateToken {
                name,
                team,
                roles,
                expires_in: expires,
                expires_at: None,
            };
            let (_, answer) = api
                .send(api.http.post(format!("{}/v1/tokens", api.base)).json(&body))
                .await?;
            let created: CreatedToken = model(&answer, "token")?;
            print_created(&created, client.output)
        }
        TokenCommand::List { client } => {
            let body = Api::new(&client)?.get("/v1/tokens").await?;
            if client.output != Format::Table {
                return print_structured(client.output, &body);
            }
            let list: TokenList = model(&body, "token list")?;
            let rows = list
                .items
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.team.clone(),
                        t.roles.join(","),
                        t.state.clone(),
                        at(t.expires_at),
                        at(t.last_used_at),
                        t.id.to_string(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME",
                    "TEAM",
                    "ROLES",
                    "STATE",
                    "EXPIRES",
                    "LAST USED",
                    "ID",
                ],
                rows,
            );
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { id_or_name, client } => {
            let api = Api::new(&client)?;
            let path = format!("/v1/tokens/{}", crate::client::encode(&id_or_name));
            api.send(api.http.delete(format!("{}{path}", api.base)))
                .await?;
            if client.output == Format::Table {
                println!("revoked {id_or_name}");
            } else {
                print_structured(client.output, &json!({ "revoked": id_or_name }))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_created(created: &CreatedToken, format: Format) -> anyhow::Result<ExitCode> {
    if format != Format::Table {
        return print_structured(format, &serde_json::to_value(created)?);
    }
    println!("{}", created.token);
    eprintln!(
        "token {:?} (team {}, roles {}, expires {}) created; the secret above is shown only now",
        created.name,
        created.team,
        created.roles.join(","),
        opt(created.expires_at.map(|t| t.to_rfc3339()))
    );
    Ok(ExitCode::SUCCESS)
}

async fn create_bootstrap(
    name: Option<String>,
    team: Option<String>,
    roles: &[String],
    expires: Option<String>,
    database_url: &str,
    format: Format,
) -> anyhow::Result<ExitCode> {
    if roles.iter().any(|r| r.trim() != "admin") {
        bail!("--bootstrap always creates an admin token; drop --role");
    }
    let expires_at = match expires {
        Some(text) => {
            let duration = fulfil_core::promise::parse_duration(&text)
                .map_err(|e| anyhow::anyhow!("--expires {text:?}: {e}; write e.g. 90d, 12h"))?;
            let duration = chrono::Duration::from_std(duration)
                .with_context(|| format!("--expires {text:?} is too long"))?;
            Some(
                chrono::Utc::now()
                    .checked_add_signed(duration)
                    .with_context(|| format!("--expires {text:?} is too long"))?,
            )
        }
        None => None,
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pool = fulfil_engine::db::connect(database_url, 1)
        .await
        .with_context(|| Reaching::Postgres(crate::server::redact(database_url)))?;
    let new = NewToken {
        name: name.unwrap_or_else(|| BOOTSTRAP_DEFAULT_NAME.to_string()),
        team: team.unwrap_or_else(|| tokens::BOOTSTRAP_TEAM.to_string()),
        roles: BTreeSet::from([Role::Admin]),
        expires_at,
        created_by: "cli:bootstrap".to_string(),
    };
    let (secret, info) = tokens::create(&pool, new).await?;
    pool.close().await;
    print_created(&CreatedToken::new(&secret, info), format)
}
