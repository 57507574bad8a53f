//! Request parameters: defaults from the Promise's `spec.api`, then JSON
//! Schema validation that reports every violation at its path.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One way the parameters break the Promise's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// JSON Pointer into the parameters, e.g. `/name`; empty for the root.
    pub pointer: String,
    pub message: String,
}

/// Why parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    /// The parameters break the schema; every violation is listed.
    #[error("parameters do not match the Promise's schema: {}", summary(.0))]
    Invalid(Vec<Violation>),
    /// The stored schema itself cannot be compiled (validated at apply time,
    /// so this means the store was edited by hand).
    #[error("the Promise's schema cannot be compiled: {0}")]
    Schema(String),
}

fn summary(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| {
            if v.pointer.is_empty() {
                v.message.clone()
            } else {
                format!("{}: {}", v.pointer, v.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every violation as `<pointer> <message>` (`/` for the root), joined
/// with `; `: how the engine names them in a ledger or tick reason.
pub fn describe_violations(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| {
            let at = if v.pointer.is_empty() {
                "/"
            } else {
                &v.pointer
            };
            format!("{at} {}", v.message)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Applies `default`s of the schema's properties, recursively into nested
/// objects, without overwriting anything given.
pub fn apply_defaults(schema: &Value, params: &mut Value) {
    let (Some(properties), Value::Object(object)) =
        (schema.get("properties").and_then(Value::as_object), params)
    else {
        return;
    };
    for (name, property) in properties {
        match object.get_mut(name) {
            Some(value) => apply_defaults(property, value),
            None => {
                if let Some(default) = property.get("default") {
                    object.insert(name.clone(), default.clone());
                }
            }
        }
    }
}

/// A Promise's request schema, compiled once and used for every request.
pub struct ParamsSchema {
    schema: Value,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for ParamsSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamsSchema")
            .field("schema", &self.schema)
            .finish()
    }
}

impl ParamsSchema {
    pub fn compile(schema: &Value) -> Result<Self, ParamsError> {
        let validator =
            jsonschema::validator_for(schema).map_err(|e| ParamsError::Schema(e.to_string()))?;
        Ok(Self {
            schema: schema.clone(),
            validator,
        })
    }

    /// Returns the parameters with defaults applied, or every violation.
    pub fn validate(&self, params: Value) -> Result<Value, ParamsError> {
        let mut params = if params.is_null() {
            Value::Object(serde_json::Map::new())
        } else {
            params
        };
        apply_defaults(&self.schema, &mut params);
        let mut violations: Vec<Violation> = self
            .validator
            .iter_errors(&params)
            .map(|e| Violation {
                pointer: e.instance_path().to_string(),
                message: e.to_string(),
            })
            .collect();
        if violations.is_empty() {
            Ok(params)
        } else {
            violations.sort_by(|a, b| a.pointer.cmp(&b.pointer));
            Err(ParamsError::Invalid(violations))
        }
    }
}

/// Compiles `schema` and validates `params` against it; callers that see the
/// same schema again keep a [`ParamsSchema`] instead.
pub fn validate_params(schema: &Value, params: Value) -> Result<Value, ParamsError> {
    ParamsSchema::compile(schema)?.validate(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_then_every_violation() {
        let schema = json!({
            "type": "object", "required": ["name"], "additionalProperties": false,
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z][a-z0-9-]{2,30}$"},
                "size": {"type": "string", "enum": ["small", "large"], "default": "small"},
                "tags": {"type": "object", "properties": {"team": {"type": "string", "default": "core"}}}
            }
        });
        let ok = validate_params(&schema, json!({"name": "orders", "tags": {}})).unwrap();
        assert_eq!(
            ok,
            json!({"name": "orders", "size": "small", "tags": {"team": "core"}})
        );
        let Err(ParamsError::Invalid(v)) =
            validate_params(&schema, json!({"name": "X", "size": "huge", "extra": 1}))
        else {
            panic!("expected violations")
        };
        let pointers: Vec<&str> = v.iter().map(|v| v.pointer.as_str()).collect();
        assert_eq!(pointers, vec!["", "/name", "/size"], "{v:?}");
        assert!(validate_params(&schema, json!({})).is_err());
    }
}
