//! The Policy document: admission rules every request must pass.
//!
//! ```yaml
//! apiVersion: fulfil.dev/v1
//! kind: Policy
//! metadata: { name: database-guardrails, owner: team-platform }
//! spec:
//!   promises: [postgres-database]   # optional; absent = every Promise
//!   rules:
//!     - name: large-is-for-data
//!       expression: "params.size != 'large' || team == 'team-data'"
//!       message: "only team-data may request size large"
//! ```
//!
//! [`Policy::parse`] reads the document with the same bounded reader as
//! Promises and Schedules ([`crate::document`]) and returns a [`Policy`]
//! only when the whole document is valid; otherwise every problem comes
//! back at its path (`spec.rules[1].expression`). Each rule's CEL
//! expression is bounded ([`crate::expr::MAX_EXPRESSION_BYTES`]), parsed
//! and checked to read only [`POLICY_ROOTS`] once, here: evaluating a
//! Policy parses nothing.
//!
//! A rule passes when its expression is `true`. `false` violates it, and so
//! does an evaluation error or a non-boolean result: admission fails
//! closed, and the error is part of the [`Violation`].

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::access::Principal;
use crate::expr::{POLICY_ROOTS, ParsedExpression, PolicyContext};
use crate::promise::{API_VERSION, Promise};
use crate::validate::{SpecError, SpecErrors, is_dns_label};

/// The `kind` of a Policy document.
pub const KIND: &str = "Policy";

/// Most rules in one Policy: every rule runs on every request it governs.
pub const MAX_RULES: usize = 64;

/// Longest rule message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// A Policy document as written (and as stored and answered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: PolicyMetadata,
    pub spec: PolicySpec,
}

/// `metadata` of a Policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyMetadata {
    /// Unique among Policies; the rules of Promise names.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `spec` of a Policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The Promises it governs; absent means every Promise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promises: Option<Vec<String>>,
    pub rules: Vec<RuleDocument>,
}

/// One rule as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDocument {
    /// Unique within the Policy.
    pub name: String,
    /// CEL over `params`, `promise`, `principal` and `team`; must be `true`.
    pub expression: String,
    /// What the caller is told when the rule is violated.
    pub message: String,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub policy: String,
    pub rule: String,
    pub message: String,
    /// Why the expression could not be evaluated to a boolean, when it
    /// could not (the rule then counts as violated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}: {}", self.policy, self.rule, self.message)?;
        if let Some(error) = &self.error {
            write!(f, " (evaluation error: {error})")?;
        }
        Ok(())
    }
}

/// Every violation's message, joined for a one-line answer or reason.
pub fn describe_violations(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(Violation::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a request's rules are evaluated over, as JSON values (see
/// [`PolicyContext`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionInput {
    pub params: Value,
    pub promise: Value,
    pub principal: Value,
    pub team: Value,
}

impl AdmissionInput {
    /// The input for `principal` filing `params` (validated, defaults
    /// applied) against `promise`.
    pub fn new(params: Value, promise: &Promise, principal: &Principal) -> AdmissionInput {
        let team = principal.team.as_ref().map_or(Value::Null, |t| json!(t));
        let roles: Vec<&str> = principal.roles.iter().map(|r| r.as_str()).collect();
        AdmissionInput {
            params,
            promise: json!({
                "name": promise.metadata.name,
                "version": promise.metadata.version,
                "owner": promise.metadata.owner,
                "labels": promise.metadata.labels,
            }),
            principal: json!({
                "id": principal.id,
                "team": team,
                "roles": roles,
                "authenticated": principal.authenticated,
            }),
            team,
        }
    }

    fn context(&self) -> PolicyContext<'_> {
        PolicyContext {
            params: &self.params,
            promise: &self.promise,
            principal: &self.principal,
            team: &self.team,
        }
    }
}

/// A rule with its expression parsed.
#[derive(Debug)]
struct Rule {
    name: String,
    message: String,
    expression: ParsedExpression,
}

/// A validated Policy, its rules compiled. Built only by [`Policy::parse`]
/// and [`Policy::from_value`].
#[derive(Debug)]
pub struct Policy {
    document: PolicyDocument,
    rules: Vec<Rule>,
}

impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        self.document == other.document
    }
}

impl Policy {
    /// Parses and validates a Policy from YAML (JSON is valid YAML).
    pub fn parse(text: &str) -> Result<Policy, SpecErrors> {
        let value = crate::document::read(text).map_err(SpecErrors::one)?;
        Self::from_value(value)
    }

    /// Validates a Policy given as a JSON value; every problem is reported
    /// at its path.
    pub fn from_value(value: Value) -> Result<Policy, SpecErrors> {
        crate::document::check_depth(&value).map_err(SpecErrors::one)?;
        let document: PolicyDocument = serde_path_to_error::deserialize(&value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            SpecErrors::one(SpecError::new(
                path,
                "structure",
                e.into_inner().to_string(),
            ))
        })?;
        validate(document)
    }

    /// The document as written.
    pub fn document(&self) -> &PolicyDocument {
        &self.document
    }

    pub fn name(&self) -> &str {
        &self.document.metadata.name
    }

    /// Whether requests for the Promise `promise` must pass this Policy.
    pub fn governs(&self, promise: &str) -> bool {
        self.document
            .spec
            .promises
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == promise))
    }

    /// Every rule the input breaks, in the document's order; empty when it
    /// passes them all.
    pub fn evaluate(&self, input: &AdmissionInput) -> Vec<Violation> {
        let context = input.context();
        let violation = |rule: &Rule, error: Option<String>| Violation {
            policy: self.name().to_string(),
            rule: rule.name.clone(),
            message: rule.message.clone(),
            error,
        };
        self.rules
            .iter()
            .filter_map(|rule| match rule.expression.evaluate(&context) {
                Ok(Value::Bool(true)) => None,
                Ok(Value::Bool(false)) => Some(violation(rule, None)),
                Ok(other) => Some(violation(
                    rule,
                    Some(format!("the expression gave {other}, not a boolean")),
                )),
                Err(e) => Some(violation(rule, Some(e.to_string()))),
            })
            .collect()
    }
}

fn validate(document: PolicyDocument) -> Result<Policy, SpecErrors> {
    let mut errors = Vec::new();
    let mut err = |path: String, code: &'static str, message: String| {
        errors.push(SpecError::new(path, code, message));
    };
    if document.api_version != API_VERSION {
        err(
            "apiVersion".into(),
            "invalid_value",
            format!(
                "unsupported apiVersion {:?}; expected {API_VERSION:?}",
                document.api_version
            ),
        );
    }
    if document.kind != KIND {
        err(
            "kind".into(),
            "invalid_value",
            format!("kind is {:?}; expected {KIND:?}", document.kind),
        );
    }
    let name_rule = "use 1-63 lowercase letters, digits and '-', starting with a letter";
    if !is_dns_label(&document.metadata.name) {
        err(
            "metadata.name".into(),
            "invalid_value",
            format!(
                "{:?} is not a valid name: {name_rule}",
                document.metadata.name
            ),
        );
    }
    for (i, promise) in document.spec.promises.iter().flatten().enumerate() {
        if !is_dns_label(promise) {
            err(
                format!("spec.promises[{i}]"),
                "invalid_value",
                format!("{promise:?} is not a valid Promise name: {name_rule}"),
            );
        }
    }
    if document.spec.promises.as_ref().is_some_and(Vec::is_empty) {
        err(
            "spec.promises".into(),
            "invalid_value",
            "an empty list governs no Promise; name at least one, or leave promises out to \
             govern every Promise"
                .into(),
        );
    }
    let rules = &document.spec.rules;
    if rules.is_empty() {
        err(
            "spec.rules".into(),
            "invalid_value",
            "a Policy needs at least one rule".into(),
        );
    }
    if rules.len() > MAX_RULES {
        err(
            "spec.rules".into(),
            "too_large",
            format!(
                "{} rules; at most {MAX_RULES} are accepted: split them over several Policies",
                rules.len()
            ),
        );
    }
    let mut seen = HashSet::new();
    let mut compiled = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate().take(MAX_RULES) {
        let at = format!("spec.rules[{i}]");
        if !is_dns_label(&rule.name) {
            err(
                format!("{at}.name"),
                "invalid_value",
                format!("{:?} is not a valid rule name: {name_rule}", rule.name),
            );
        } else if !seen.insert(rule.name.as_str()) {
            err(
                format!("{at}.name"),
                "duplicate_rule",
                format!("rule {:?} appears twice; rule names are unique", rule.name),
            );
        }
        if rule.message.trim().is_empty() {
            err(
                format!("{at}.message"),
                "invalid_value",
                "a rule needs a message telling the caller what to change".into(),
            );
        } else if rule.message.len() > MAX_MESSAGE_BYTES {
            err(
                format!("{at}.message"),
                "too_large",
                format!(
                    "the message is {} bytes; at most {MAX_MESSAGE_BYTES} are accepted",
                    rule.message.len()
                ),
            );
        }
        match ParsedExpression::parse(&rule.expression) {
            Err(message) => err(
                format!("{at}.expression"),
                "invalid_expression",
                format!(
                    "cannot parse expression: {}",
                    message.lines().next().unwrap_or_default()
                ),
            ),
            Ok(expression) => {
                let unknown: Vec<String> = expression
                    .variables()
                    .into_iter()
                    .filter(|v| !POLICY_ROOTS.contains(&v.as_str()))
                    .collect();
                if unknown.is_empty() {
                    compiled.push(Rule {
                        name: rule.name.clone(),
                        message: rule.message.clone(),
                        expression,
                    });
                } else {
                    err(
                        format!("{at}.expression"),
                        "unknown_variable",
                        format!(
                            "the expression reads unknown variable(s) {}; available: {}",
                            unknown.join(", "),
                            POLICY_ROOTS.join(", ")
                        ),
                    );
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(Policy {
            document,
            rules: compiled,
        })
    } else {
        Err(SpecErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Role;

    const GUARDRAILS: &str = r#"
apiVersion: fulfil.dev/v1
kind: Policy
metadata: { name: database-guardrails, owner: team-platform }
spec:
  promises: [postgres-database]
  rules:
    - name: large-is-for-data
      expression: "params.size != 'large' || team == 'team-data'"
      message: "only team-data may request size large"
    - name: production-needs-owner
      expression: "params.environment != 'production' || has(params.labels.owner)"
      message: "production databases need an owner label"
"#;

    fn promise() -> Promise {
        Promise::parse(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: postgres-database, version: "1", owner: team-platform }
spec:
  workflow:
    steps:
      - { id: a, uses: noop }
"#,
        )
        .expect("a valid Promise")
    }

    fn input(params: Value, team: Option<&str>) -> AdmissionInput {
        let principal = match team {
            Some(team) => Principal::new("user:alice", team, &[Role::Requester]),
            None => Principal::unauthenticated("api"),
        };
        AdmissionInput::new(params, &promise(), &principal)
    }

    fn rules_broken(violations: &[Violation]) -> Vec<&str> {
        violations.iter().map(|v| v.rule.as_str()).collect()
    }

    #[test]
    fn a_request_passing_every_rule_has_no_violations() {
        let policy = Policy::parse(GUARDRAILS).expect("valid");
        let ok = json!({"size": "large", "environment": "production", "labels": {"owner": "x"}});
        assert_eq!(policy.evaluate(&input(ok, Some("team-data"))), vec![]);
        let small = json!({"size": "small", "environment": "development", "labels": {}});
        assert_eq!(policy.evaluate(&input(small, None)), vec![]);
    }

    #[test]
    fn each_false_rule_is_one_violation_with_its_message() {
        let policy = Policy::parse(GUARDRAILS).expect("valid");
        let both = json!({"size": "large", "environment": "production", "labels": {}});
        let violations = policy.evaluate(&input(both, Some("team-web")));
        assert_eq!(
            rules_broken(&violations),
            vec!["large-is-for-data", "production-needs-owner"]
        );
        assert_eq!(
            violations[0].message,
            "only team-data may request size large"
        );
        assert_eq!(violations[0].policy, "database-guardrails");
        assert!(violations.iter().all(|v| v.error.is_none()));
        // No team at all (auth off) is not team-data either.
        let large = json!({"size": "large", "environment": "development", "labels": {}});
        assert_eq!(
            rules_broken(&policy.evaluate(&input(large, None))),
            vec!["large-is-for-data"]
        );
    }

    #[test]
    fn evaluation_errors_and_non_booleans_violate_the_rule() {
        let policy = Policy::parse(
            r#"
apiVersion: fulfil.dev/v1
kind: Policy
metadata: { name: strict }
spec:
  rules:
    - { name: unguarded, expression: "params.labels.owner == 'x'", message: "needs owner x" }
    - { name: not-boolean, expression: "params.size", message: "m" }
    - { name: principal, expression: "'requester' in principal.roles && promise.owner == 'team-platform'", message: "m" }
"#,
        )
        .expect("valid");
        let violations = policy.evaluate(&input(
            json!({"size": "small", "labels": {}}),
            Some("team-web"),
        ));
        assert_eq!(rules_broken(&violations), vec!["unguarded", "not-boolean"]);
        assert!(
            violations.iter().all(|v| v.error.is_some()),
            "{violations:?}"
        );
        assert!(describe_violations(&violations).contains("needs owner x"));
    }

    #[test]
    fn a_policy_without_promises_governs_every_promise() {
        let guardrails = Policy::parse(GUARDRAILS).expect("valid");
        assert!(guardrails.governs("postgres-database"));
        assert!(!guardrails.governs("ml-environment"));
        let everywhere = Policy::parse(
            "apiVersion: fulfil.dev/v1\nkind: Policy\nmetadata: {name: all}\nspec:\n  rules: [{name: r, expression: 'true', message: m}]\n",
        )
        .expect("valid");
        assert!(everywhere.governs("anything"));
    }

    #[test]
    fn invalid_policies_report_every_problem_at_its_path() {
        let errors = Policy::parse(
            r#"
apiVersion: fulfil.dev/v1
kind: Policy
metadata: { name: Bad_Name }
spec:
  promises: []
  rules:
    - { name: a, expression: "params.x ==", message: "m" }
    - { name: a, expression: "env.HOME == ''", message: "" }
"#,
        )
        .expect_err("invalid");
        let paths: Vec<(&str, &str)> = errors.0.iter().map(|e| (e.path.as_str(), e.code)).collect();
        assert_eq!(
            paths,
            vec![
                ("metadata.name", "invalid_value"),
                ("spec.promises", "invalid_value"),
                ("spec.rules[0].expression", "invalid_expression"),
                ("spec.rules[1].name", "duplicate_rule"),
                ("spec.rules[1].message", "invalid_value"),
                ("spec.rules[1].expression", "unknown_variable"),
            ]
        );
        let no_rules = Policy::parse(
            "apiVersion: fulfil.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec: {rules: []}\n",
        )
        .expect_err("no rules");
        assert_eq!(no_rules.0[0].path, "spec.rules");
        let missing = Policy::parse(
            "apiVersion: fulfil.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec: {rules: [{name: r, expression: 'true'}]}\n",
        )
        .expect_err("no message");
        assert_eq!(missing.0[0].code, "structure");
        assert!(missing.0[0].message.contains("message"), "{missing:?}");
    }

    #[test]
    fn oversized_expressions_are_refused_before_parsing() {
        let long = format!("{}true", "!".repeat(300));
        let doc = json!({
            "apiVersion": "fulfil.dev/v1", "kind": "Policy", "metadata": {"name": "p"},
            "spec": {"rules": [{"name": "r", "expression": long, "message": "m"}]}
        });
        let errors = Policy::from_value(doc).expect_err("too deep");
        assert_eq!(errors.0[0].path, "spec.rules[0].expression");
    }
}
