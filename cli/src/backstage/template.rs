//! A Promise as a Backstage software Template
//! (`scaffolder.backstage.io/v1beta3`): its request JSON Schema becomes the
//! template's form, and its one step files the request with the
//! `fulfil:request:create` action (deploy/backstage).
//!
//! The form is react-jsonschema-form over JSON Schema, so a property's
//! schema is kept whole (type, enum, default, pattern, bounds, items,
//! nested objects) and the mapping adds what the form shows people: a
//! title where the schema has none, widgets where the schema says more
//! than its type (`format: password`, long text, a multi-choice array),
//! and an order (required fields first).

use serde_json::{Map, Value, json};

use super::entity::{ACTION_ID, Entity};
use super::names::{humanize, owner_ref};
use super::{ExportedPromise, Settings};

/// The template step's id: the template's output reads the action's
/// outputs through it.
pub const STEP_ID: &str = "fulfil";

/// Keywords of the top-level schema that shape the form as a whole and
/// are carried onto the form page (definitions so `$ref`s resolve there).
const PAGE_KEYWORDS: [&str; 8] = [
    "dependencies",
    "allOf",
    "anyOf",
    "oneOf",
    "if",
    "then",
    "else",
    "$defs",
];

/// Strings longer than this get a text area rather than a one-line field.
const TEXTAREA_FROM: u64 = 256;

/// The Template for one Promise.
pub fn template(promise: &ExportedPromise, settings: &Settings) -> Entity {
    let title = humanize(&promise.name);
    let schema = &promise.api;
    let pages = parameters(schema, &title, promise.description.as_deref());
    let properties = property_names(schema);
    let mut spec = Map::new();
    spec.insert("owner".into(), json!(owner_ref(promise.owner_team())));
    spec.insert("type".into(), json!("resource"));
    spec.insert("parameters".into(), Value::Array(pages));
    spec.insert(
        "steps".into(),
        json!([{
            "id": STEP_ID,
            "name": format!("File a {title} request with Fulfil"),
            "action": ACTION_ID,
            "input": { "promise": promise.name, "params": step_params(&properties) },
        }]),
    );
    spec.insert(
        "output".into(),
        json!({
            "links": [{
                "title": "Run in the Fulfil console",
                "url": format!("${{{{ steps['{STEP_ID}'].output.runUrl }}}}"),
            }],
            "text": [{
                "title": "Fulfil request",
                "content": format!(
                    "Request `${{{{ steps['{STEP_ID}'].output.requestId }}}}`: run \
                     `${{{{ steps['{STEP_ID}'].output.runId }}}}` \
                     ${{{{ steps['{STEP_ID}'].output.status }}}}."
                ),
            }],
        }),
    );
    let mut metadata = promise.metadata(settings, &["fulfil"]);
    if metadata.description.is_none() {
        metadata.description = Some(format!(
            "File a request against the Fulfil Promise {}",
            promise.name
        ));
    }
    Entity {
        api_version: "scaffolder.backstage.io/v1beta3",
        kind: "Template",
        metadata,
        spec: Value::Object(spec),
    }
}

/// The form pages for a Promise's request schema: one page holding every
/// property, or none when the Promise takes no parameters.
pub fn parameters(schema: &Value, title: &str, description: Option<&str>) -> Vec<Value> {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    if properties.is_empty() {
        return Vec::new();
    }
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut page = Map::new();
    page.insert(
        "title".into(),
        json!(schema.get("title").and_then(Value::as_str).unwrap_or(title)),
    );
    if let Some(text) = schema
        .get("description")
        .and_then(Value::as_str)
        .or(description)
    {
        page.insert("description".into(), json!(text));
    }
    let known: Vec<&str> = required
        .iter()
        .copied()
        .filter(|r| properties.contains_key(*r))
        .collect();
    if !known.is_empty() {
        page.insert("required".into(), json!(known));
    }
    page.insert(
        "properties".into(),
        Value::Object(
            properties
                .iter()
                .map(|(name, schema)| (name.clone(), field(name, schema)))
                .collect(),
        ),
    );
    // Required first, in the schema's order; then the rest as listed.
    let mut order: Vec<&str> = known.clone();
    order.extend(
        properties
            .keys()
            .map(String::as_str)
            .filter(|p| !known.contains(p)),
    );
    page.insert("ui:order".into(), json!(order));
    for keyword in PAGE_KEYWORDS {
        if let Some(value) = schema.get(keyword) {
            page.insert(keyword.into(), value.clone());
        }
    }
    if let Some(defs) = schema.get("definitions") {
        page.insert("definitions".into(), defs.clone());
    }
    vec![Value::Object(page)]
}

/// One property as a form field: its schema, a title, and widget hints.
fn field(name: &str, schema: &Value) -> Value {
    let mut out = match schema {
        Value::Object(map) => map.clone(),
        // `true` (anything goes) or a schema the form cannot read: a
        // titled field the form leaves free.
        _ => Map::new(),
    };
    out.entry("title").or_insert_with(|| json!(humanize(name)));
    let is = |key: &str, value: &str| out.get(key).and_then(Value::as_str) == Some(value);
    let widget = if is("format", "password") || out.get("writeOnly") == Some(&json!(true)) {
        Some("password")
    } else if is("type", "string")
        && out
            .get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > TEXTAREA_FROM)
    {
        Some("textarea")
    } else if is("type", "array")
        && out.get("uniqueItems") == Some(&json!(true))
        && out.get("items").and_then(|i| i.get("enum")).is_some()
    {
        Some("checkboxes")
    } else {
        None
    };
    if let Some(widget) = widget {
        out.insert("ui:widget".into(), json!(widget));
    }
    if out.get("readOnly") == Some(&json!(true)) {
        out.insert("ui:readonly".into(), json!(true));
    }
    if let Some(example) = out
        .get("examples")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
        .and_then(Value::as_str)
    {
        let example = example.to_string();
        out.insert("ui:placeholder".into(), json!(example));
    }
    Value::Object(out)
}

fn property_names(schema: &Value) -> Vec<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The action's `params`: each form field by name. A single `${{ }}`
/// keeps the value's type (number, boolean, object) when the scaffolder
/// renders it, and a field left empty is left out, so Fulfil applies the
/// Promise's default.
pub fn step_params(properties: &[String]) -> Value {
    Value::Object(
        properties
            .iter()
            .map(|name| {
                (
                    name.clone(),
                    json!(format!("${{{{ parameters{} }}}}", accessor(name))),
                )
            })
            .collect(),
    )
}

/// `.name` for an identifier, `["na-me"]` (a JSON string literal, which
/// Nunjucks reads alike) for anything else.
fn accessor(name: &str) -> String {
    let mut chars = name.chars();
    let identifier = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if identifier {
        format!(".{name}")
    } else {
        format!("[{}]", Value::String(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema of workflows/postgres-database.yaml.
    fn postgres_schema() -> Value {
        json!({
            "type": "object",
            "required": ["name"],
            "additionalProperties": false,
            "properties": {
                "name": { "type": "string", "pattern": "^[a-z][a-z0-9-]{2,30}$", "description": "Database name" },
                "size": { "type": "string", "enum": ["small", "large"], "default": "small" },
                "team": { "type": "string", "default": "platform" },
                "environment": { "type": "string", "enum": ["development", "staging", "production"], "default": "development" },
                "labels": { "type": "object", "additionalProperties": { "type": "string" }, "default": {} }
            }
        })
    }

    #[test]
    fn a_request_schema_becomes_one_form_page_with_its_rules_kept() {
        let pages = parameters(&postgres_schema(), "Postgres database", Some("A database"));
        assert_eq!(pages.len(), 1);
        let page = &pages[0];
        assert_eq!(page["title"], "Postgres database");
        assert_eq!(page["description"], "A database");
        assert_eq!(page["required"], json!(["name"]));
        let name = &page["properties"]["name"];
        assert_eq!(name["type"], "string");
        assert_eq!(name["title"], "Name");
        assert_eq!(name["pattern"], "^[a-z][a-z0-9-]{2,30}$");
        assert_eq!(name["description"], "Database name");
        let size = &page["properties"]["size"];
        assert_eq!(size["enum"], json!(["small", "large"]));
        assert_eq!(size["default"], "small");
        assert_eq!(
            page["properties"]["labels"]["additionalProperties"],
            json!({"type": "string"})
        );
        // Required first, then the others; every property listed once.
        let order = page["ui:order"].as_array().expect("ui:order");
        assert_eq!(order[0], "name");
        assert_eq!(order.len(), 5);
        // The page is a form, not the request schema: no
        // additionalProperties to fight the scaffolder's own fields.
        assert!(page.get("additionalProperties").is_none());
    }

    #[test]
    fn fields_get_widgets_titles_and_placeholders_from_their_schema() {
        let schema = json!({
            "type": "object",
            "title": "Access",
            "required": ["password", "ghost"],
            "$defs": { "region": { "type": "string", "enum": ["eu", "us"] } },
            "properties": {
                "password": { "type": "string", "format": "password" },
                "notes": { "type": "string", "maxLength": 4000 },
                "regions": { "type": "array", "uniqueItems": true, "items": { "enum": ["eu", "us"] } },
                "home": { "$ref": "#/$defs/region", "title": "Home region" },
                "id": { "type": "string", "readOnly": true, "examples": ["abc-1"] },
                "anything": true
            }
        });
        let page = &parameters(&schema, "ignored", None)[0];
        let p = &page["properties"];
        assert_eq!(page["title"], "Access");
        assert!(page.get("description").is_none());
        // A required name with no property is not asked for.
        assert_eq!(page["required"], json!(["password"]));
        assert_eq!(p["password"]["ui:widget"], "password");
        assert_eq!(p["notes"]["ui:widget"], "textarea");
        assert_eq!(p["regions"]["ui:widget"], "checkboxes");
        assert_eq!(p["home"]["title"], "Home region");
        assert_eq!(page["$defs"]["region"]["enum"], json!(["eu", "us"]));
        assert_eq!(p["id"]["ui:readonly"], true);
        assert_eq!(p["id"]["ui:placeholder"], "abc-1");
        assert_eq!(p["anything"], json!({"title": "Anything"}));
    }

    #[test]
    fn a_promise_without_parameters_has_no_form_page() {
        assert!(parameters(&json!({"type": "object"}), "t", None).is_empty());
        assert!(parameters(&json!({"type": "object", "properties": {}}), "t", None).is_empty());
        assert!(parameters(&json!(true), "t", None).is_empty());
        assert_eq!(step_params(&[]), json!({}));
    }

    #[test]
    fn step_params_read_each_field_and_quote_names_that_are_not_identifiers() {
        let params = step_params(&[
            "name".to_string(),
            "notebook-image".to_string(),
            "say \"hi\"".to_string(),
        ]);
        assert_eq!(params["name"], "${{ parameters.name }}");
        assert_eq!(
            params["notebook-image"],
            "${{ parameters[\"notebook-image\"] }}"
        );
        assert_eq!(
            params["say \"hi\""],
            "${{ parameters[\"say \\\"hi\\\"\"] }}"
        );
    }
}
