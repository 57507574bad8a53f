//! Catalog entities: each Promise as a `Component` of type
//! `fulfil-promise`, each live request as a `Resource` of type
//! `fulfil-request` that `dependsOn` its Promise's Component, and one
//! `Location` naming every file so Backstage registers the lot from one
//! URL.
//!
//! A Promise is a Component because it is software the platform team runs
//! and owns (its workflow), while a request is the infrastructure it made
//! for someone; Backstage's `dependsOn` of a Resource names Components and
//! Resources, and shows the reverse `dependencyOf` on the Promise's page.

use fulfil_api::model::Request;
use serde_json::{Map, Value, json};

use super::entity::{Entity, Link, Metadata, annotations};
use super::names::{entity_name, owner_ref};
use super::{ExportedPromise, Settings};

/// The Component standing for a Promise.
pub fn promise_component(promise: &ExportedPromise, settings: &Settings) -> Entity {
    Entity {
        api_version: "backstage.io/v1alpha1",
        kind: "Component",
        metadata: promise.metadata(settings, &["fulfil", "fulfil-promise"]),
        spec: json!({
            "type": "fulfil-promise",
            "lifecycle": "production",
            "owner": owner_ref(promise.owner_team()),
        }),
    }
}

/// The Resource standing for a request. `promise` is the exported Promise
/// it was filed against, when there is one: only then does it depend on
/// it, so every `dependsOn` names an entity the export wrote.
pub fn request_resource(
    request: &Request,
    name: String,
    promise: Option<&ExportedPromise>,
    settings: &Settings,
) -> Entity {
    let owner = request
        .team
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| promise.map(ExportedPromise::owner_team))
        .unwrap_or(super::UNOWNED);
    let mut spec = Map::new();
    spec.insert("type".into(), json!("fulfil-request"));
    spec.insert("owner".into(), json!(owner_ref(owner)));
    if let Some(promise) = promise {
        spec.insert(
            "dependsOn".into(),
            json!([format!("component:default/{}", promise.entity_name)]),
        );
    }
    // People know a request by the name it was given, when it has one.
    let label = request
        .params
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| request.id.to_string());
    let mut labels = Map::new();
    labels.insert(
        "fulfil.dev/status".into(),
        json!(entity_name(&request.status, "unknown")),
    );
    let mut notes = annotations([
        ("fulfil.dev/request-id", request.id.to_string()),
        ("fulfil.dev/promise", request.promise.clone()),
        (
            "fulfil.dev/promise-version",
            request.promise_version.clone(),
        ),
    ]);
    if let Some(run) = request.run_id {
        notes.insert("fulfil.dev/run-id".into(), json!(run.to_string()));
    }
    if let Some(by) = &request.created_by {
        notes.insert("fulfil.dev/created-by".into(), json!(by));
    }
    Entity {
        api_version: "backstage.io/v1alpha1",
        kind: "Resource",
        metadata: Metadata {
            name,
            title: Some(format!("{}: {label}", request.promise)),
            description: Some(format!(
                "A request against the Fulfil Promise {} {} ({}), filed {}",
                request.promise,
                request.promise_version,
                request.status,
                request.created_at.format("%Y-%m-%d %H:%M UTC"),
            )),
            tags: vec!["fulfil".into()],
            labels,
            annotations: notes,
            links: vec![Link {
                url: format!("{}/ui/requests/{}", settings.console_url, request.id),
                title: "Request in the Fulfil console".into(),
            }],
        },
        spec: Value::Object(spec),
    }
}

/// The `Location` listing every written file, relative to itself.
pub fn location(targets: Vec<String>) -> Entity {
    Entity {
        api_version: "backstage.io/v1alpha1",
        kind: "Location",
        metadata: Metadata {
            name: "fulfil".into(),
            title: None,
            description: Some(
                "Templates and catalog entities written by `fulfil backstage export`".into(),
            ),
            tags: Vec::new(),
            labels: Map::new(),
            annotations: Map::new(),
            links: Vec::new(),
        },
        // No `type`: the targets are read as the Location itself was
        // (a URL in Git, or a file), whichever way it is registered.
        spec: json!({ "targets": targets }),
    }
}

/// The request's entity name base: its Promise and the random tail of its
/// id (a UUIDv7 starts with its time, so the head of two ids filed in the
/// same minute is the same).
pub fn request_name_base(request: &Request) -> String {
    let id = request.id.to_string().replace('-', "");
    let tail = id.get(id.len().saturating_sub(12)..).unwrap_or(&id);
    let promise = entity_name(&request.promise, "request");
    let room = super::names::MAX_NAME - tail.len() - 1;
    format!(
        "{}-{tail}",
        promise
            .get(..room.min(promise.len()))
            .unwrap_or(&promise)
            .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
    )
}
