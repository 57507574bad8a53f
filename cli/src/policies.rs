//! `fulfil policy list|get|delete`: a thin client of `/v1/policies`
//! (Policies are applied with `fulfil apply -f`, see [`crate::schedules`]).

use std::process::ExitCode;

use clap::Subcommand;
use fulfil_api::model::{Page, PolicyView};
use serde_json::Value;

use crate::client::{Api, model};
use crate::output::{at, opt, print_structured, print_table};
use crate::{ClientArgs, Format};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// List admission policies and the Promises each governs.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a policy: its rules and who applied it.
    Get {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a policy: new requests are no longer checked against it.
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run_policy(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::List { client } => {
            let body = Api::new(&client)?.get("/v1/policies").await?;
            if client.output != Format::Table {
                return print_structured(client.output, &body);
            }
            let page: Page<PolicyView> = model(&body, "list of policies")?;
            print_table(
                &["NAME", "OWNER", "PROMISES", "RULES", "UPDATED"],
                page.items
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            opt(p.owner.as_deref()),
                            governed(p),
                            rules(&p.document).len().to_string(),
                            at(Some(p.updated_at)),
                        ]
                    })
                    .collect(),
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Get { name, client } => {
            let body = Api::new(&client)?
                .get(&format!("/v1/policies/{name}"))
                .await?;
            if client.output != Format::Table {
                return print_structured(client.output, &body);
            }
            let p: PolicyView = model(&body, "policy")?;
            for (key, value) in [
                ("name", p.name.clone()),
                ("owner", opt(p.owner.as_deref())),
                ("promises", governed(&p)),
                ("applied_by", p.applied_by.clone()),
                ("updated_at", at(Some(p.updated_at))),
            ] {
                println!("{key:<11} {value}");
            }
            println!("rules:");
            for rule in rules(&p.document) {
                let text = |key: &str| rule[key].as_str().unwrap_or_default().to_string();
                println!("  - {}: {}", text("name"), text("expression"));
                println!("    message: {}", text("message"));
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Delete { name, client } => {
            let api = Api::new(&client)?;
            let request = api.http.delete(format!("{}/v1/policies/{name}", api.base));
            api.send(request).await?;
            println!("policy {name} deleted");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn governed(p: &PolicyView) -> String {
    p.promises
        .as_ref()
        .map_or_else(|| "*".to_string(), |names| names.join(","))
}

/// The rules of a stored document (validated when it was applied).
fn rules(document: &Value) -> Vec<Value> {
    document["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}
