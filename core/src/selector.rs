//! A rollout's `selector`: which live requests of a Promise a rollout
//! upgrades (docs/rollouts.md).
//!
//! A selector is a CEL expression, written bare or as one `${{ }}`, over
//! two variables: `params` (the request's validated parameters) and
//! `request` (`id`, `promise`, `promise_version`, `status`, `created_by`,
//! `team`, `outputs`). It is compiled once, when the rollout is created,
//! with the bounds every expression has ([`crate::expr`]); reading any
//! other variable is refused then, not at evaluation. Evaluated per
//! request, anything but a boolean is an error.

use serde_json::Value;

use crate::expr::{
    CompiledCondition, ParsedExpression, RenderContext, RenderError, condition_source,
};

/// Root variables a selector may read.
pub const SELECTOR_ROOTS: [&str; 2] = ["params", "request"];

/// Why a selector was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The source is not a CEL expression (or is over the size bounds).
    #[error("selector {expression:?} is not a valid CEL expression: {message}")]
    Parse {
        /// The selector as given.
        expression: String,
        /// What the parser said.
        message: String,
    },
    /// The expression reads a variable a selector does not have.
    #[error(
        "selector {expression:?} reads `{variable}`; a selector reads only `params` and `request`"
    )]
    Variable {
        /// The selector as given.
        expression: String,
        /// The variable it reads.
        variable: String,
    },
}

/// A compiled selector.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    source: String,
    condition: CompiledCondition,
}

impl Selector {
    /// Compiles `source`, refusing one that does not parse or reads
    /// anything but [`SELECTOR_ROOTS`].
    pub fn compile(source: &str) -> Result<Selector, SelectorError> {
        let parsed = ParsedExpression::parse(condition_source(source)).map_err(|message| {
            SelectorError::Parse {
                expression: source.to_string(),
                message,
            }
        })?;
        if let Some(variable) = parsed
            .variables()
            .into_iter()
            .find(|v| !SELECTOR_ROOTS.contains(&v.as_str()))
        {
            return Err(SelectorError::Variable {
                expression: source.to_string(),
                variable,
            });
        }
        Ok(Selector {
            source: source.to_string(),
            condition: CompiledCondition::compile(source),
        })
    }

    /// The selector as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the request with these `params` and `request` fields is
    /// selected; an expression that fails or is not a boolean is an error.
    pub fn matches(&self, params: &Value, request: &Value) -> Result<bool, RenderError> {
        self.condition.evaluate(&RenderContext {
            params: params.clone(),
            request: request.clone(),
            vars: Value::Null,
            steps: Value::Null,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn selects_by_params_and_request_and_refuses_other_variables() {
        let selector = Selector::compile("${{ params.size == 'large' }}").expect("compiles");
        let request = json!({"id": "r1", "promise_version": "1"});
        assert_eq!(
            selector.matches(&json!({"size": "large"}), &request),
            Ok(true)
        );
        assert_eq!(
            selector.matches(&json!({"size": "small"}), &request),
            Ok(false)
        );
        let by_version = Selector::compile("request.promise_version == '1'").expect("compiles");
        assert_eq!(by_version.matches(&json!({}), &request), Ok(true));
        // A missing key is an error, not a silent false.
        assert!(selector.matches(&json!({}), &request).is_err());
        assert!(
            Selector::compile("params.n")
                .expect("compiles")
                .matches(&json!({"n": 1}), &request)
                .is_err()
        );

        assert!(matches!(
            Selector::compile("params.size =="),
            Err(SelectorError::Parse { .. })
        ));
        let refused = Selector::compile("vars.region == 'eu'").expect_err("vars");
        assert_eq!(
            refused,
            SelectorError::Variable {
                expression: "vars.region == 'eu'".into(),
                variable: "vars".into()
            }
        );
        assert!(refused.to_string().contains("only `params` and `request`"));
    }
}
