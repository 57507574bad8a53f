//! The envelope every exported file holds: a Backstage entity
//! (`apiVersion`, `kind`, `metadata`, `spec`), in the field names and
//! order Backstage documents.

use serde::Serialize;
use serde_json::{Map, Value};

/// The scaffolder action the Templates call (deploy/backstage).
pub const ACTION_ID: &str = "fulfil:request:create";

/// The first line of every file the export writes; a later export removes
/// files that start with it and that it did not write again.
pub const HEADER: &str = "# Written by `fulfil backstage export`: edits are overwritten.";

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entity {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: Metadata,
    pub spec: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Metadata {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub labels: Map<String, Value>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub annotations: Map<String, Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Link {
    pub url: String,
    pub title: String,
}

/// Annotations from pairs (Backstage wants string values).
pub fn annotations<const N: usize>(pairs: [(&str, String); N]) -> Map<String, Value> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v)))
        .collect()
}
