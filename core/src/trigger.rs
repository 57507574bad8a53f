//! Triggers: requests a Promise files from inbound events.
//!
//! A trigger (`spec.triggers[]`) names the events it wants by NATS subject
//! (`subject`, with the NATS wildcards `*` for one token and `>` for the rest)
//! and by CloudEvent type (`type`, exact or with a trailing `*` glob). An
//! event on the bus matches when every one of the two that the trigger sets
//! matches; an event posted over HTTP has no subject, so it matches by `type`
//! alone and a trigger without `type` never hears it.
//!
//! A matched trigger then decides ([`MatchedTrigger::map`]): its `filter`
//! (a CEL condition) must be true, and its `params` (templates) are rendered
//! into the request's parameters. Both read only `event` (the CloudEvent as
//! a JSON object) and `vars`: validation refuses any other root at its path,
//! so a trigger never sees a run's `params`, `steps` or `request`, which do
//! not exist yet, nor `secrets`, which the engine never holds.
//!
//! The trigger's name becomes part of the request's idempotency key,
//! `event:<trigger>:<source>:<id>`, so it is a short lowercase token, unique
//! within its Promise. Expressions are compiled once, with the Promise (see
//! [`crate::compiled`]); matching and mapping parse nothing.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::expr::{
    CompiledCondition, CompiledExpression, CompiledTemplate, EVENT_ROOTS, EventContext,
    RenderError, condition_source,
};
use crate::validate::{Report, ValidationContext, check_expression_in, check_templates_in};

/// Longest trigger name; the name is part of an idempotency key.
pub const MAX_TRIGGER_NAME: usize = 63;

/// One entry of `spec.triggers`, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// Unique within the Promise; `^[a-z0-9][a-z0-9-]{0,62}$`. Defaulted
    /// only so that validation reports a missing one at its path.
    #[serde(default)]
    pub name: String,
    /// NATS subject pattern the trigger listens on (bus events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// CloudEvent type: exact, or a prefix when it ends in `*`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// CEL condition over `event` and `vars`; when false nothing is filed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// The request's parameters; strings may hold `${{ }}` templates.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
}

impl Trigger {
    /// Whether an event on `nats_subject` (`None`: over HTTP) of
    /// `event_type` is one this trigger listens for.
    pub fn matches(&self, nats_subject: Option<&str>, event_type: &str) -> bool {
        let type_ok = self
            .event_type
            .as_deref()
            .is_none_or(|pattern| type_matches(pattern, event_type));
        match nats_subject {
            Some(subject) => {
                type_ok
                    && self
                        .subject
                        .as_deref()
                        .is_none_or(|pattern| subject_matches(pattern, subject))
            }
            None => self.event_type.is_some() && type_ok,
        }
    }
}

/// A trigger's expressions, compiled with its Promise.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CompiledTrigger {
    filter: Option<CompiledCondition>,
    /// Top-level `params` keys in order, so that an error names its field.
    params: Vec<(String, CompiledTemplate)>,
}

impl CompiledTrigger {
    // The one place a trigger's expressions are compiled: when its Promise is.
    pub(crate) fn compile(trigger: &Trigger) -> CompiledTrigger {
        CompiledTrigger {
            filter: trigger.filter.as_deref().map(CompiledCondition::compile),
            params: trigger
                .params
                .iter()
                .map(|(k, v)| (k.clone(), CompiledTemplate::compile(v)))
                .collect(),
        }
    }

    /// Every expression of the trigger.
    pub(crate) fn expressions(&self) -> Vec<&CompiledExpression> {
        self.filter
            .iter()
            .map(CompiledCondition::expression)
            .chain(self.params.iter().flat_map(|(_, t)| t.expressions()))
            .collect()
    }
}

/// A trigger of a Promise that an event matched, ready to map it.
#[derive(Debug, Clone, Copy)]
pub struct MatchedTrigger<'a> {
    trigger: &'a Trigger,
    compiled: &'a CompiledTrigger,
}

/// What a matched trigger made of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerMapping {
    /// The filter was false: nothing is filed. `filter` is its text.
    Filtered { filter: String },
    /// The rendered request parameters (an object), still to be validated
    /// against the Promise's schema.
    Params(Value),
}

/// Why a matched trigger could not map an event. Each names the trigger and
/// the field that failed, for the event ledger and dead letters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TriggerError {
    /// The filter could not be evaluated (a missing field, a type error...).
    #[error("trigger {trigger:?}: filter {filter:?} failed: {source}")]
    Filter {
        trigger: String,
        filter: String,
        source: RenderError,
    },
    /// The filter evaluated to something other than a boolean.
    #[error("trigger {trigger:?}: filter {filter:?} evaluated to {value}, not a boolean")]
    FilterNotBoolean {
        trigger: String,
        filter: String,
        value: String,
    },
    /// A `params` template failed to render; `path` is e.g. `params.name`.
    #[error("trigger {trigger:?}: {path} failed to render: {source}")]
    Params {
        trigger: String,
        path: String,
        source: RenderError,
    },
}

impl<'a> MatchedTrigger<'a> {
    pub(crate) fn new(trigger: &'a Trigger, compiled: &'a CompiledTrigger) -> Self {
        Self { trigger, compiled }
    }

    /// The trigger's name, as in the idempotency key `event:<name>:...`.
    pub fn name(&self) -> &'a str {
        &self.trigger.name
    }

    /// The trigger as written.
    pub fn trigger(&self) -> &'a Trigger {
        self.trigger
    }

    /// Maps an event. `context` is `{"event": <the CloudEvent as a JSON
    /// object: specversion, id, source, type, subject, time,
    /// datacontenttype, data, extensions at top level>, "vars": {...}}`; an
    /// absent member reads as an empty object. The filter first (false →
    /// [`TriggerMapping::Filtered`] naming the filter text), then `params`
    /// rendered, every key, the first error returned.
    pub fn map(&self, context: &Value) -> Result<TriggerMapping, TriggerError> {
        let scope = EventContext {
            event: context.get("event").unwrap_or(&Value::Null),
            vars: context.get("vars").unwrap_or(&Value::Null),
        };
        if let Some(filter) = &self.compiled.filter {
            let text = self.trigger.filter.as_deref().unwrap_or_default();
            match filter.evaluate(&scope) {
                Ok(true) => {}
                Ok(false) => {
                    return Ok(TriggerMapping::Filtered {
                        filter: text.to_string(),
                    });
                }
                Err(RenderError::NotBoolean { value, .. }) => {
                    return Err(TriggerError::FilterNotBoolean {
                        trigger: self.trigger.name.clone(),
                        filter: text.to_string(),
                        value,
                    });
                }
                Err(source) => {
                    return Err(TriggerError::Filter {
                        trigger: self.trigger.name.clone(),
                        filter: text.to_string(),
                        source,
                    });
                }
            }
        }
        let mut params = Map::with_capacity(self.compiled.params.len());
        for (key, template) in &self.compiled.params {
            let value = template
                .render(&scope)
                .map_err(|source| TriggerError::Params {
                    trigger: self.trigger.name.clone(),
                    path: format!("params.{key}"),
                    source,
                })?;
            params.insert(key.clone(), value);
        }
        Ok(TriggerMapping::Params(Value::Object(params)))
    }
}

/// Whether NATS subject `subject` matches `pattern`, with NATS semantics:
/// tokens are separated by `.`, `*` matches exactly one token and `>` (as
/// the last token) one or more. A pattern or subject with an empty token
/// matches nothing.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    let mut pattern_tokens = pattern.split('.').peekable();
    while let Some(p) = pattern_tokens.next() {
        if p.is_empty() {
            return false;
        }
        if p == ">" && pattern_tokens.peek().is_none() {
            // `>` needs at least one token, and every remaining one non-empty.
            let rest: Vec<&str> = subject_tokens.collect();
            return !rest.is_empty() && rest.iter().all(|t| !t.is_empty());
        }
        match subject_tokens.next() {
            Some(s) if !s.is_empty() && (p == "*" || p == s) => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Whether CloudEvent type `event_type` matches `pattern`: exactly, or by
/// prefix when the pattern ends in `*` (`com.acme.*`).
pub fn type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

fn is_trigger_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TRIGGER_NAME
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Why `subject` is not a valid NATS subject pattern, if it is not.
fn subject_problem(subject: &str) -> Option<String> {
    if subject.is_empty() {
        return Some("subject must not be empty".into());
    }
    if subject.chars().any(char::is_whitespace) {
        return Some(format!("{subject:?} contains whitespace"));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Some(format!(
                "{subject:?} has an empty token: tokens are separated by single dots"
            ));
        }
        if token.contains('>') && (*token != ">" || i != last) {
            return Some(format!(
                "{subject:?} uses '>' where it is not the whole last token"
            ));
        }
        if token.contains('*') && *token != "*" {
            return Some(format!(
                "{subject:?} uses '*' inside a token: '*' must be a whole token"
            ));
        }
    }
    None
}

/// Checks `spec.triggers`, each problem at its path.
pub(crate) fn check_triggers(
    triggers: &[Trigger],
    context: &ValidationContext,
    err: &mut Report<'_>,
) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, trigger) in triggers.iter().enumerate() {
        let at = format!("spec.triggers[{i}]");
        if trigger.name.is_empty() {
            err(
                format!("{at}.name"),
                "invalid_value",
                "a trigger needs a name (it becomes part of the idempotency key \
                 event:<trigger>:<source>:<id>)"
                    .into(),
            );
        } else if !is_trigger_name(&trigger.name) {
            err(
                format!("{at}.name"),
                "invalid_value",
                format!(
                    "{:?} is not a valid trigger name: use 1-63 lowercase letters, digits and '-', \
                     starting with a letter or digit",
                    trigger.name
                ),
            );
        } else if let Some(j) = first.get(trigger.name.as_str()) {
            err(
                format!("{at}.name"),
                "duplicate_trigger",
                format!(
                    "duplicate trigger name {:?} (first used at spec.triggers[{j}])",
                    trigger.name
                ),
            );
        } else {
            first.insert(&trigger.name, i);
        }
        if trigger.subject.is_none() && trigger.event_type.is_none() {
            err(
                at.clone(),
                "invalid_value",
                "a trigger needs a subject (NATS), a type (CloudEvent), or both".into(),
            );
        }
        if let Some(problem) = trigger.subject.as_deref().and_then(subject_problem) {
            err(
                format!("{at}.subject"),
                "invalid_value",
                format!(
                    "{problem}; a subject is dot-separated tokens, '*' for one token, '>' as the \
                     last for the rest, e.g. acme.teams.created or acme.teams.>"
                ),
            );
        }
        if let Some(event_type) = &trigger.event_type {
            let star = event_type.find('*');
            if event_type.trim().is_empty() || event_type.chars().any(char::is_whitespace) {
                err(
                    format!("{at}.type"),
                    "invalid_value",
                    format!(
                        "{event_type:?} is not a CloudEvent type: use e.g. com.acme.team.created"
                    ),
                );
            } else if star.is_some_and(|s| s != event_type.len() - 1) {
                err(
                    format!("{at}.type"),
                    "invalid_value",
                    format!(
                        "{event_type:?}: '*' is allowed only as the last character \
                         (a prefix match, e.g. com.acme.team.*)"
                    ),
                );
            }
        }
        // A trigger reads no steps, so the references collected are unused.
        let mut refs = Vec::new();
        if let Some(filter) = &trigger.filter {
            check_expression_in(
                &format!("{at}.filter"),
                condition_source(filter),
                &EVENT_ROOTS,
                context,
                err,
                &mut refs,
            );
        }
        for (key, value) in &trigger.params {
            check_templates_in(
                &format!("{at}.params.{key}"),
                value,
                &EVENT_ROOTS,
                context,
                err,
                &mut refs,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Promise, SpecErrors};
    use proptest::prelude::*;
    use serde_json::json;

    fn promise_with_triggers(triggers: &str) -> Result<Promise, SpecErrors> {
        let text = format!(
            "apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: team-db, version: 1.0.0 }}
spec:
  api:
    type: object
    properties: {{ name: {{ type: string }} }}
  workflow:
    steps:
      - {{ id: a, uses: noop }}
  triggers:
{triggers}"
        );
        Promise::parse_with(
            &text,
            &ValidationContext::with_vars(["region".to_string()].into()),
        )
    }

    fn paths(errors: &SpecErrors) -> Vec<(&str, &str)> {
        errors.0.iter().map(|e| (e.path.as_str(), e.code)).collect()
    }

    #[test]
    fn valid_triggers_parse_compile_and_round_trip() {
        let p = promise_with_triggers(
            r#"    - name: on-team-created
      subject: acme.teams.created
      type: com.acme.team.created
      filter: "event.data.tier == 'gold'"
      params: { name: "${{ event.data.team }}-db", region: "${{ vars.region }}" }
    - name: 2nd
      type: com.acme.*
"#,
        )
        .unwrap();
        assert_eq!(p.spec.triggers.len(), 2);
        assert_eq!(
            p.spec.triggers[0].event_type.as_deref(),
            Some("com.acme.team.created")
        );
        assert_eq!(p.inbound_subjects(), vec!["acme.teams.created"]);
        assert_eq!(p.var_references(), vec!["region".to_string()]);
        // Stored and read back, the triggers survive and compile again.
        let stored = serde_json::to_value(&p).unwrap();
        assert_eq!(
            stored["spec"]["triggers"][0]["type"],
            "com.acme.team.created"
        );
        let back = Promise::from_stored(stored).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            back.matching_triggers(None, "com.acme.team.created").len(),
            2
        );
        // A Promise without triggers serializes none.
        let plain = Promise::parse(
            "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: { name: x, version: '1' }\n\
             spec: { workflow: { steps: [ { id: a, uses: noop } ] } }",
        )
        .unwrap();
        assert!(plain.spec.triggers.is_empty());
        assert!(
            serde_json::to_value(&plain).unwrap()["spec"]
                .get("triggers")
                .is_none()
        );
        assert!(plain.inbound_subjects().is_empty());
    }

    #[test]
    fn invalid_triggers_are_reported_at_their_paths() {
        let errors = promise_with_triggers(
            r#"    - name: Bad_Name
      subject: "acme.*x.>"
      type: "com.*.created"
    - name: dup
      subject: "acme..teams"
    - name: dup
      subject: "acme.>.teams"
    - subject: "acme teams"
    - name: no-match
      filter: "params.name == 'x'"
      params: { name: "${{ steps.a.outputs.x }}", other: "${{ secrets.token }}", v: "${{ vars.nope }}" }
    - name: broken
      type: "*"
      filter: "event.data.tier =="
      params: { name: "${{ event.data.team" }
"#,
        )
        .unwrap_err();
        let got = paths(&errors);
        for expected in [
            ("spec.triggers[0].name", "invalid_value"),
            ("spec.triggers[0].subject", "invalid_value"),
            ("spec.triggers[0].type", "invalid_value"),
            ("spec.triggers[1].subject", "invalid_value"),
            ("spec.triggers[2].name", "duplicate_trigger"),
            ("spec.triggers[2].subject", "invalid_value"),
            ("spec.triggers[3].name", "invalid_value"),
            ("spec.triggers[3].subject", "invalid_value"),
            ("spec.triggers[4]", "invalid_value"),
            ("spec.triggers[4].filter", "unknown_variable"),
            ("spec.triggers[4].params.name", "unknown_variable"),
            ("spec.triggers[4].params.other", "unknown_variable"),
            ("spec.triggers[4].params.v", "unknown_var"),
            ("spec.triggers[5].filter", "invalid_expression"),
            ("spec.triggers[5].params.name", "invalid_expression"),
        ] {
            assert!(got.contains(&expected), "missing {expected:?} in {got:#?}");
        }
        assert_eq!(got.len(), 15, "{got:#?}");
        let message = |path: &str| {
            errors
                .0
                .iter()
                .find(|e| e.path == path)
                .map(|e| e.message.clone())
                .unwrap()
        };
        assert!(message("spec.triggers[4].filter").contains("\"params\""));
        assert!(message("spec.triggers[4].filter").contains("event, vars"));
        assert!(message("spec.triggers[2].name").contains("spec.triggers[1]"));
        // An unknown field is refused by structure, at its path.
        let unknown =
            promise_with_triggers("    - { name: x, type: t, subjects: a.b }\n").unwrap_err();
        assert_eq!(unknown.0[0].code, "structure");
        assert!(
            unknown.0[0].path.starts_with("spec.triggers[0]"),
            "{unknown:?}"
        );
        // Expressions are bounded like a step's.
        let long = format!(
            "    - {{ name: x, type: t, filter: \"{}\" }}\n",
            "1+".repeat(300) + "1 == 2"
        );
        let bounded = promise_with_triggers(&long).unwrap_err();
        assert_eq!(
            paths(&bounded),
            vec![("spec.triggers[0].filter", "invalid_expression")]
        );
    }

    #[test]
    fn bus_events_match_subject_and_type_http_events_type_alone() {
        let p = promise_with_triggers(
            r#"    - { name: both, subject: "acme.teams.*", type: com.acme.team.created }
    - { name: subject-only, subject: "acme.>" }
    - { name: type-glob, type: "com.acme.team.*" }
"#,
        )
        .unwrap();
        let names = |subject: Option<&str>, t: &str| -> Vec<&str> {
            p.matching_triggers(subject, t)
                .iter()
                .map(MatchedTrigger::name)
                .collect()
        };
        assert_eq!(
            names(Some("acme.teams.created"), "com.acme.team.created"),
            vec!["both", "subject-only", "type-glob"]
        );
        assert_eq!(
            names(Some("acme.teams.created"), "com.acme.team.deleted"),
            vec!["subject-only", "type-glob"]
        );
        assert_eq!(
            names(Some("other.teams.created"), "com.acme.team.created"),
            vec!["type-glob"]
        );
        assert_eq!(names(Some("acme.teams.a.b"), "x"), vec!["subject-only"]);
        // Over HTTP there is no subject: only triggers with a type can match.
        assert_eq!(
            names(None, "com.acme.team.created"),
            vec!["both", "type-glob"]
        );
        assert!(names(None, "com.other").is_empty());
        assert_eq!(p.inbound_subjects(), vec!["acme.>", "acme.teams.*"]);

        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.b.x.c"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches(">", "a"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(!subject_matches("a.b.c", "a.b"));
        assert!(!subject_matches("a..b", "a..b"));
        assert!(!subject_matches("a.>", "a.b..c"));
        assert!(type_matches("com.acme.*", "com.acme.team.created"));
        assert!(type_matches("*", "anything"));
        assert!(!type_matches("com.acme.*", "com.acmex"));
        assert!(!type_matches("com.acme.team", "com.acme.team.created"));
    }

    #[test]
    fn map_filters_then_renders_params_and_names_the_trigger_on_error() {
        let p = promise_with_triggers(
            r#"    - name: on-team-created
      type: com.acme.team.created
      filter: "${{ event.data.tier == 'gold' }}"
      params:
        name: "${{ event.data.team }}-db"
        region: "${{ vars.region }}"
        source: "${{ event.source }}"
        size: large
    - name: not-bool
      type: com.acme.team.created
      filter: "event.data.team"
"#,
        )
        .unwrap();
        let matched = p.matching_triggers(None, "com.acme.team.created");
        assert_eq!(matched.len(), 2);
        let context = |data: Value| {
            json!({
                "event": {"specversion": "1.0", "id": "e1", "source": "/hr", "type": "com.acme.team.created", "data": data},
                "vars": {"region": "eu-west-1"},
            })
        };
        assert_eq!(
            matched[0]
                .map(&context(json!({"tier": "gold", "team": "vision"})))
                .unwrap(),
            TriggerMapping::Params(json!({
                "name": "vision-db", "region": "eu-west-1", "source": "/hr", "size": "large"
            }))
        );
        assert_eq!(
            matched[0]
                .map(&context(json!({"tier": "silver", "team": "vision"})))
                .unwrap(),
            TriggerMapping::Filtered {
                filter: "${{ event.data.tier == 'gold' }}".into()
            }
        );
        let missing = matched[0]
            .map(&context(json!({"tier": "gold"})))
            .unwrap_err();
        assert!(
            matches!(&missing, TriggerError::Params { trigger, path, .. }
                if trigger == "on-team-created" && path == "params.name"),
            "{missing:?}"
        );
        assert!(missing.to_string().contains("on-team-created"), "{missing}");
        let no_tier = matched[0].map(&context(json!({"team": "x"}))).unwrap_err();
        assert!(
            matches!(no_tier, TriggerError::Filter { .. }),
            "{no_tier:?}"
        );

        let not_bool = matched[1].map(&context(json!({"team": "x"}))).unwrap_err();
        assert!(
            matches!(&not_bool, TriggerError::FilterNotBoolean { trigger, value, .. }
                if trigger == "not-bool" && value == "\"x\""),
            "{not_bool:?}"
        );
        assert!(not_bool.to_string().contains("not a boolean"), "{not_bool}");
        // Mapping parses nothing: the expressions were compiled with the Promise.
        let before = crate::expr::parses_on_this_thread();
        let _ = matched[0].map(&context(json!({"tier": "gold", "team": "v"})));
        assert_eq!(crate::expr::parses_on_this_thread(), before);
    }

    #[test]
    fn team_onboarding_example_maps_a_gold_team_event() {
        let p = Promise::parse_with(
            include_str!("../../workflows/team-onboarding.yaml"),
            &ValidationContext {
                vars: crate::VarNames::Any,
            },
        )
        .unwrap();
        let matched = p.matching_triggers(Some("acme.teams.created"), "com.acme.team.created");
        assert_eq!(matched.len(), 1);
        assert_eq!(p.inbound_subjects(), vec!["acme.teams.created"]);
        let mapped = matched[0]
            .map(
                &json!({"event": {"id": "1", "source": "/hr", "type": "com.acme.team.created",
                "data": {"team": "vision", "tier": "gold", "lead": "ada@acme.dev"}}}),
            )
            .unwrap();
        let TriggerMapping::Params(params) = mapped else {
            panic!("{mapped:?}")
        };
        assert_eq!(params["team"], "vision");
    }

    proptest! {
        #[test]
        fn subject_matching_never_panics(pattern in ".{0,40}", subject in ".{0,40}") {
            let _ = subject_matches(&pattern, &subject);
            let _ = type_matches(&pattern, &subject);
            let _ = subject_problem(&pattern);
        }

        #[test]
        fn a_subject_matches_itself_and_the_full_wildcard(tokens in proptest::collection::vec("[a-z0-9]{1,5}", 1..6)) {
            let subject = tokens.join(".");
            prop_assert!(subject_matches(&subject, &subject));
            prop_assert!(subject_matches(">", &subject));
            prop_assert!(subject_problem(&subject).is_none());
        }
    }
}
