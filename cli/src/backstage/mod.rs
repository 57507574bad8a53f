//! `fulfil backstage export --out DIR`: Backstage Templates and catalog
//! entities from what the API holds, so a developer portal offers every
//! Promise as a software template and shows every live request in its
//! catalog.
//!
//! What it writes (each file one entity, first line [`entity::HEADER`]):
//!
//! - `templates/<promise>.yaml`: a `Template` per Promise whose form comes
//!   from the Promise's request schema and whose step calls the
//!   `fulfil:request:create` action ([`template`]);
//! - `promises/<promise>.yaml`: a `Component` per Promise ([`catalog`]);
//! - `requests/<promise>-<id tail>.yaml`: a `Resource` per request not
//!   deleted, owned by its team and depending on its Promise's Component;
//! - `catalog-info.yaml`: a `Location` naming all of them, the one file to
//!   register in Backstage.
//!
//! The export owns those three directories: a file there that starts with
//! the header and was not written again (a request deleted since) is
//! removed, so a Git repository of the output follows Fulfil. Entity names
//! follow Backstage's rules and are unique per kind ([`names`]). Reads are
//! bounded: at most [`MAX_PAGES`] pages of each list.

mod catalog;
mod entity;
mod names;
mod template;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use fulfil_api::model::{self, Request};
use serde_json::Value;

use crate::ClientArgs;
use crate::client::{Api, encode, model as read_model};
use entity::{Entity, HEADER};

/// Pages of 500 read from each list at most (a quarter of a million
/// Promises or requests); past that the export stops with an error rather
/// than write a partial catalog.
pub const MAX_PAGES: usize = 500;
const PAGE: usize = 500;

/// The owner team when neither the request's team nor its Promise's owner
/// is known.
pub const UNOWNED: &str = "unknown";

/// The directories the export owns under `--out`.
const OWNED_DIRS: [&str; 3] = ["templates", "promises", "requests"];

#[derive(Subcommand)]
pub enum BackstageCommand {
    /// Write a Backstage Template per Promise, a catalog Component per
    /// Promise and a Resource per live request, and a Location listing them.
    #[command(
        after_help = "Example:\n  fulfil backstage export --out backstage/ --console-url https://fulfil.example.com\n  then register backstage/catalog-info.yaml in Backstage's catalog."
    )]
    Export {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Base URL of the Fulfil console for the entities' links
        /// (default: --api-url, which serves the console at /ui).
        #[arg(long, env = "FULFIL_CONSOLE_URL")]
        console_url: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// What every entity builder needs to know beyond its own data.
pub struct Settings {
    /// The console's base URL, without a trailing `/`.
    pub console_url: String,
}

/// A Promise as the export reads it.
#[derive(Debug, Clone)]
pub struct ExportedPromise {
    pub name: String,
    pub version: String,
    pub owner: Option<String>,
    pub description: Option<String>,
    /// The request JSON Schema (`spec.api`).
    pub api: Value,
    /// Its Template's and Component's `metadata.name`.
    pub entity_name: String,
}

impl ExportedPromise {
    /// The metadata its Template and its Component share: name, title,
    /// description, the Promise's annotations and its console link.
    pub fn metadata(&self, settings: &Settings, tags: &[&str]) -> entity::Metadata {
        entity::Metadata {
            name: self.entity_name.clone(),
            title: Some(names::humanize(&self.name)),
            description: self.description.clone(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            labels: serde_json::Map::new(),
            annotations: entity::annotations([
                ("fulfil.dev/promise", self.name.clone()),
                ("fulfil.dev/promise-version", self.version.clone()),
            ]),
            links: vec![entity::Link {
                url: format!("{}/ui/promises/{}", settings.console_url, self.name),
                title: "Promise in the Fulfil console".into(),
            }],
        }
    }

    /// The owning team, [`UNOWNED`] when the Promise names none.
    pub fn owner_team(&self) -> &str {
        self.owner
            .as_deref()
            .filter(|o| !o.trim().is_empty())
            .unwrap_or(UNOWNED)
    }
}

pub async fn run(command: BackstageCommand) -> anyhow::Result<ExitCode> {
    match command {
        BackstageCommand::Export {
            out,
            console_url,
            client,
        } => export(&client, &out, console_url).await,
    }
}

async fn export(
    client: &ClientArgs,
    out: &Path,
    console_url: Option<String>,
) -> anyhow::Result<ExitCode> {
    let api = Api::new(client)?;
    let settings = Settings {
        console_url: console_url
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| api.base.clone())
            .trim_end_matches('/')
            .to_string(),
    };
    let summaries: Vec<model::PromiseSummary> = list(&api, "/v1/promises").await?;
    let mut promises = Vec::with_capacity(summaries.len());
    for summary in summaries {
        let detail: model::PromiseSummary = read_model(
            &api.get(&format!("/v1/promises/{}", encode(&summary.name)))
                .await?,
            "Promise",
        )?;
        let api_schema = detail
            .promise
            .as_ref()
            .and_then(|p| p.pointer("/spec/api"))
            .cloned()
            .unwrap_or_else(|| serde_json::json!({ "type": "object" }));
        promises.push(ExportedPromise {
            name: detail.name,
            version: detail.version,
            owner: detail.owner,
            description: detail.description,
            api: api_schema,
            entity_name: String::new(),
        });
    }
    let requests: Vec<Request> = list::<Request>(&api, "/v1/requests")
        .await?
        .into_iter()
        .filter(|r| r.status != "deleted")
        .collect();
    let files = plan(promises, &requests, &settings);
    write(out, &files)?;
    let count = |kind: &str| files.iter().filter(|(_, e)| e.kind == kind).count();
    println!(
        "wrote {} Templates, {} Promise Components and {} request Resources to {}; register {} in Backstage",
        count("Template"),
        count("Component"),
        count("Resource"),
        out.display(),
        out.join("catalog-info.yaml").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Every item of a paged list.
async fn list<T: serde::de::DeserializeOwned>(api: &Api, path: &str) -> anyhow::Result<Vec<T>> {
    let mut all = Vec::new();
    let mut url = format!("{path}?limit={PAGE}");
    for _ in 0..MAX_PAGES {
        let page: model::Page<T> = read_model(&api.get(&url).await?, path)?;
        all.extend(page.items);
        match page.next_cursor {
            Some(cursor) => url = format!("{path}?limit={PAGE}&cursor={}", encode(&cursor)),
            None => return Ok(all),
        }
    }
    bail!(
        "{path} has more than {} items; the export stops rather than write a partial catalog",
        MAX_PAGES * PAGE
    )
}

/// The files to write, by path relative to the output directory: pure, so
/// names and references are checked without a server.
pub fn plan(
    mut promises: Vec<ExportedPromise>,
    requests: &[Request],
    settings: &Settings,
) -> Vec<(String, Entity)> {
    promises.sort_by(|a, b| a.name.cmp(&b.name));
    // Templates and Components share a name per Promise; names are unique
    // per kind, so one set serves both.
    let mut promise_names = names::Names::default();
    for promise in &mut promises {
        promise.entity_name = promise_names.unique(&promise.name, "promise");
    }
    let mut files = Vec::new();
    for promise in &promises {
        files.push((
            format!("templates/{}.yaml", promise.entity_name),
            template::template(promise, settings),
        ));
        files.push((
            format!("promises/{}.yaml", promise.entity_name),
            catalog::promise_component(promise, settings),
        ));
    }
    let by_name: HashMap<&str, &ExportedPromise> =
        promises.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut request_names = names::Names::default();
    let mut requests: Vec<&Request> = requests.iter().collect();
    requests.sort_by_key(|r| r.id.to_string());
    for request in requests {
        let name = request_names.unique(&catalog::request_name_base(request), "request");
        files.push((
            format!("requests/{name}.yaml"),
            catalog::request_resource(
                request,
                name,
                by_name.get(request.promise.as_str()).copied(),
                settings,
            ),
        ));
    }
    let targets = files.iter().map(|(path, _)| format!("./{path}")).collect();
    files.push(("catalog-info.yaml".to_string(), catalog::location(targets)));
    files
}

/// Writes the files (each through a temporary file renamed into place),
/// then removes the export's own files that were not written again.
fn write(out: &Path, files: &[(String, Entity)]) -> anyhow::Result<()> {
    for dir in OWNED_DIRS {
        std::fs::create_dir_all(out.join(dir))
            .with_context(|| format!("creating {}", out.join(dir).display()))?;
    }
    let mut written = HashSet::new();
    for (relative, entity) in files {
        let path = out.join(relative);
        let yaml = serde_saphyr::to_string(entity)
            .with_context(|| format!("rendering {relative} as YAML"))?;
        let temporary = path.with_extension("yaml.tmp");
        std::fs::write(&temporary, format!("{HEADER}\n{yaml}"))
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, &path)
            .with_context(|| format!("writing {}", path.display()))?;
        written.insert(path);
    }
    for dir in OWNED_DIRS {
        remove_stale(&out.join(dir), &written)?;
    }
    Ok(())
}

/// Files the export wrote before into `dir` and did not write this time.
fn remove_stale(dir: &Path, written: &HashSet<PathBuf>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if written.contains(&path) || path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        // Only what the export wrote: its first line is the header.
        let ours = std::fs::read_to_string(&path)
            .map(|text| text.lines().next() == Some(HEADER))
            .unwrap_or(false);
        if ours {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing {} (no longer exported)", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn promise(name: &str, owner: Option<&str>) -> ExportedPromise {
        ExportedPromise {
            name: name.into(),
            version: "1.0.0".into(),
            owner: owner.map(str::to_string),
            description: None,
            api: json!({"type": "object", "properties": {"name": {"type": "string"}}}),
            entity_name: String::new(),
        }
    }

    fn request(id: &str, promise: &str, team: Option<&str>) -> Request {
        serde_json::from_value(json!({
            "id": id, "promise": promise, "promise_version": "1.0.0",
            "params": {"name": "orders"}, "status": "succeeded",
            "run_id": "0193a1c2-7b3e-7c1a-9f00-000000000001", "outputs": null,
            "idempotency_key": null, "created_by": "user:alice", "team": team,
            "created_at": "2026-12-01T10:00:00Z", "updated_at": "2026-12-01T10:00:00Z"
        }))
        .expect("a request")
    }

    #[test]
    fn every_dependency_names_an_exported_entity_and_names_are_unique() {
        let settings = Settings {
            console_url: "https://fulfil.example".into(),
        };
        let files = plan(
            vec![
                promise("postgres-database", Some("team-data")),
                promise("Postgres_Database!", None),
            ],
            &[
                request(
                    "0193a1c2-7b3e-7c1a-9f00-3d2e1a4b5c6d",
                    "postgres-database",
                    Some("team-web"),
                ),
                request(
                    "0193a1c2-7b3e-7c1a-9f00-3d2e1a4b5c6e",
                    "postgres-database",
                    None,
                ),
                request("0193a1c2-7b3e-7c1a-9f00-3d2e1a4b5c6f", "gone-promise", None),
            ],
            &settings,
        );
        let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(files.len(), 2 * 2 + 3 + 1, "{paths:?}");
        let components: HashSet<String> = files
            .iter()
            .filter(|(_, e)| e.kind == "Component")
            .map(|(_, e)| format!("component:default/{}", e.metadata.name))
            .collect();
        assert_eq!(components.len(), 2, "{components:?}");
        for (path, entity) in &files {
            assert!(names::is_valid_name(&entity.metadata.name), "{path}");
            for dep in entity.spec["dependsOn"].as_array().into_iter().flatten() {
                assert!(
                    components.contains(dep.as_str().unwrap_or("")),
                    "{path}: {dep}"
                );
            }
        }
        let resources: Vec<&Entity> = files
            .iter()
            .filter(|(_, e)| e.kind == "Resource")
            .map(|(_, e)| e)
            .collect();
        // The request's team owns it; else its Promise's owner; else nobody known.
        assert_eq!(resources[0].spec["owner"], "group:default/team-web");
        assert_eq!(resources[1].spec["owner"], "group:default/team-data");
        assert_eq!(resources[2].spec["owner"], "group:default/unknown");
        assert_eq!(resources[0].metadata.name, "postgres-database-3d2e1a4b5c6d");
        assert_eq!(
            resources[0].metadata.title.as_deref(),
            Some("postgres-database: orders")
        );
        assert_eq!(
            resources[0].metadata.annotations["fulfil.dev/request-id"],
            "0193a1c2-7b3e-7c1a-9f00-3d2e1a4b5c6d"
        );
        assert_eq!(
            resources[0].metadata.links[0].url,
            "https://fulfil.example/ui/requests/0193a1c2-7b3e-7c1a-9f00-3d2e1a4b5c6d"
        );
        // A request whose Promise is not exported depends on nothing.
        assert!(resources[2].spec.get("dependsOn").is_none());
        // The Location lists every other file.
        let (last, location) = files.last().expect("files");
        assert_eq!(last, "catalog-info.yaml");
        assert_eq!(
            location.spec["targets"].as_array().map(Vec::len),
            Some(files.len() - 1)
        );
        // The template's step files against the Promise with each field.
        let (_, template) = &files[0];
        assert_eq!(template.kind, "Template");
        assert_eq!(template.spec["steps"][0]["action"], entity::ACTION_ID);
        assert_eq!(
            template.spec["steps"][0]["input"]["params"]["name"],
            "${{ parameters.name }}"
        );
    }
}
