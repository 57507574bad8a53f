//! Semantic validation of a Promise: everything serde cannot check.
//!
//! Validation never stops at the first problem: it collects every one, each at
//! its path into the document (`spec.workflow.steps[2].needs[0]`), so a
//! platform engineer fixes a Promise in one round trip (at most
//! [`MAX_ERRORS`] of them, so that a broken document cannot make an answer
//! larger than itself).
//!
//! Validation is linear in the document's size, give or take the check that
//! an expression reads only steps upstream of its own, which walks only the
//! steps between the two. Expressions may read `vars.<name>` only for the
//! names a [`ValidationContext`] knows: the deployment's vars.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::dag::{Graph, Reachability};
use crate::document::{MAX_NEEDS, MAX_STEPS};
use crate::expr::{
    FOR_EACH_ROOTS, MATCH_ROOTS, ParsedExpression, ROOTS, SECRETS_ROOT, Template, WORKER_ROOTS,
    condition_source, secret_reference,
};
use crate::for_each::{INDEX, ITEM, MAX_ITEMS};
use crate::promise::{API_VERSION, AccessSpec, KIND, Promise, ReconcileSpec, RetrySpec, Step};
use crate::status::WaitKind;
use crate::time::parse_duration;

/// One problem in a Promise document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecError {
    /// Path into the document, e.g. `spec.workflow.steps[1].timeout`.
    pub path: String,
    /// Stable code: `syntax`, `duplicate_key`, `too_large`, `structure`,
    /// `invalid_value`, `duplicate_step`, `unknown_need`, `cycle`,
    /// `invalid_duration`, `invalid_schema`, `invalid_expression`,
    /// `unknown_step_reference`, `unknown_variable`, `unknown_var`,
    /// `duplicate_trigger`, `too_many_errors`.
    pub code: &'static str,
    pub message: String,
}

impl SpecError {
    pub fn new(path: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a Promise document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(transparent)]
pub struct SpecErrors(pub Vec<SpecError>);

impl SpecErrors {
    pub fn one(error: SpecError) -> Self {
        Self(vec![error])
    }
}

impl std::fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid Promise ({} problem(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e} [{}]", e.code)?;
        }
        Ok(())
    }
}

pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_step_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn is_version(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_'))
}

/// Most problems reported for one document; past it, one `too_many_errors`
/// entry says how many more there were.
pub const MAX_ERRORS: usize = 100;

/// What validation knows about the deployment a Promise is applied to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationContext {
    /// The vars expressions may read.
    pub vars: VarNames,
}

/// Which `vars.<name>` a Promise may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarNames {
    /// Exactly these; the default is none.
    Only(BTreeSet<String>),
    /// Any name: for tools that check a Promise away from any deployment.
    /// A name no deployment exposes then fails at run time instead.
    Any,
}

impl Default for VarNames {
    fn default() -> Self {
        VarNames::Only(BTreeSet::new())
    }
}

impl ValidationContext {
    /// A context in which expressions may read the vars named.
    pub fn with_vars(names: BTreeSet<String>) -> Self {
        Self {
            vars: VarNames::Only(names),
        }
    }
}

/// Checks everything about `promise` that its types do not, with no vars
/// known (see [`validate_with`]).
pub fn validate(promise: &Promise) -> Result<(), SpecErrors> {
    validate_with(promise, &ValidationContext::default())
}

/// Checks everything about `promise` that its types do not, for the
/// deployment `context` describes.
pub fn validate_with(promise: &Promise, context: &ValidationContext) -> Result<(), SpecErrors> {
    let mut errors = Vec::new();
    let mut err = |path: String, code: &'static str, message: String| {
        errors.push(SpecError::new(path, code, message));
    };

    if promise.api_version != API_VERSION {
        err(
            "apiVersion".into(),
            "invalid_value",
            format!(
                "unsupported apiVersion {:?}; expected {API_VERSION:?}",
                promise.api_version
            ),
        );
    }
    if promise.kind != KIND {
        err(
            "kind".into(),
            "invalid_value",
            format!("unsupported kind {:?}; expected {KIND:?}", promise.kind),
        );
    }
    if !is_dns_label(&promise.metadata.name) {
        err(
            "metadata.name".into(),
            "invalid_value",
            format!(
                "{:?} is not a valid name: use 1-63 lowercase letters, digits and '-', starting with a letter",
                promise.metadata.name
            ),
        );
    }
    if !is_version(&promise.metadata.version) {
        err(
            "metadata.version".into(),
            "invalid_value",
            format!(
                "{:?} is not a valid version: use letters, digits, '.', '-', '+', e.g. 1.2.0",
                promise.metadata.version
            ),
        );
    }

    check_schema(&promise.spec.api, &mut err);
    crate::trigger::check_triggers(&promise.spec.triggers, context, &mut err);

    if let Some(retry) = &promise.spec.defaults.retry {
        check_retry("spec.defaults.retry", retry, &mut err);
    }
    if let Some(timeout) = &promise.spec.defaults.timeout {
        check_duration("spec.defaults.timeout", timeout, &mut err);
    }
    if let Some(queue) = &promise.spec.defaults.queue {
        check_queue("spec.defaults.queue", queue, &mut err);
    }
    for (field, value) in [
        (
            "schedule_to_start",
            &promise.spec.defaults.schedule_to_start,
        ),
        (
            "heartbeat_timeout",
            &promise.spec.defaults.heartbeat_timeout,
        ),
    ] {
        if let Some(text) = value {
            check_duration(&format!("spec.defaults.{field}"), text, &mut err);
        }
    }
    if let Some(timeout) = &promise.spec.timeout {
        check_duration("spec.timeout", timeout, &mut err);
    }
    if let Some(access) = &promise.spec.access {
        check_access(access, &mut err);
    }
    if let Some(reconcile) = &promise.spec.reconcile {
        check_reconcile(reconcile, &mut err);
    }

    let graph = check_workflow(
        "spec.workflow",
        &promise.spec.workflow.steps,
        context,
        &mut err,
    );
    if let Some(delete) = &promise.spec.delete {
        check_workflow("spec.delete", &delete.steps, context, &mut err);
    }

    // Run outputs may read any step of the workflow.
    if let Some(graph) = &graph {
        let mut refs = Vec::new();
        for (name, value) in &promise.spec.outputs {
            check_templates(
                &format!("spec.outputs.{name}"),
                value,
                context,
                &mut err,
                &mut refs,
            );
        }
        for r in refs {
            if graph.position(&r.step).is_none() {
                err(
                    r.path,
                    "unknown_step_reference",
                    format!(
                        "expression {} reads steps.{}, which is not a step of spec.workflow",
                        r.quoted, r.step
                    ),
                );
            }
        }
    }

    if errors.is_empty() {
        return Ok(());
    }
    if errors.len() > MAX_ERRORS {
        let more = errors.len() - MAX_ERRORS;
        errors.truncate(MAX_ERRORS);
        errors.push(SpecError::new(
            "",
            "too_many_errors",
            format!("{more} more problem(s) not listed; fix these first"),
        ));
    }
    Err(SpecErrors(errors))
}

/// A `steps.<id>` an expression reads, checked once the graph is known.
pub(crate) struct StepRef {
    path: String,
    quoted: String,
    step: String,
}

/// `ids` joined with ", ", at most 20 of them, for messages.
fn some_ids<'a>(ids: impl ExactSizeIterator<Item = &'a str>) -> String {
    const SHOWN: usize = 20;
    let total = ids.len();
    let mut out = String::new();
    for (i, id) in ids.take(SHOWN).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(id);
    }
    if total > SHOWN {
        let _ = write!(out, " and {} more", total - SHOWN);
    }
    out
}

pub(crate) type Report<'a> = dyn FnMut(String, &'static str, String) + 'a;

fn check_schema(schema: &Value, err: &mut Report<'_>) {
    if let Err(e) = jsonschema::meta::validate(schema) {
        let at = e.instance_path().to_string();
        err(
            format!("spec.api{}", at.replace('/', ".")),
            "invalid_schema",
            format!("not a valid JSON Schema: {e}"),
        );
        return;
    }
    if let Err(e) = jsonschema::validator_for(schema) {
        err(
            "spec.api".into(),
            "invalid_schema",
            format!("not a usable JSON Schema: {e}"),
        );
        return;
    }
    match schema.get("type") {
        Some(Value::String(t)) if t == "object" => {}
        None => {}
        Some(other) => err(
            "spec.api.type".into(),
            "invalid_schema",
            format!(
                "request parameters are an object; the schema's type must be \"object\", not {other}"
            ),
        ),
    }
}

fn check_duration(path: &str, text: &str, err: &mut Report<'_>) {
    match parse_duration(text) {
        Ok(d) if d.is_zero() => err(
            path.into(),
            "invalid_duration",
            format!("{text:?} must be longer than zero"),
        ),
        Ok(_) => {}
        Err(e) => err(path.into(), "invalid_duration", e.to_string()),
    }
}

/// An empty list would close the Promise to every team but admins, which
/// is almost surely a mistake: omit `access` to open it to all, or name the
/// teams.
fn check_access(access: &AccessSpec, err: &mut Report<'_>) {
    if access.teams.is_empty() {
        err(
            "spec.access.teams".into(),
            "invalid_value",
            "teams must name at least one team; omit spec.access to let every team file requests"
                .into(),
        );
    }
    for (i, team) in access.teams.iter().enumerate() {
        if team.trim().is_empty() {
            err(
                format!("spec.access.teams[{i}]"),
                "invalid_value",
                "a team name must not be empty".into(),
            );
        }
    }
}

fn check_reconcile(reconcile: &ReconcileSpec, err: &mut Report<'_>) {
    match parse_duration(&reconcile.every) {
        Ok(every) if every < std::time::Duration::from_secs(1) => err(
            "spec.reconcile.every".into(),
            "invalid_duration",
            format!(
                "{:?} is too short: reconcile at most once a second (every: 1s or more)",
                reconcile.every
            ),
        ),
        Ok(_) => {}
        Err(e) => err(
            "spec.reconcile.every".into(),
            "invalid_duration",
            e.to_string(),
        ),
    }
    if reconcile.max_concurrent == 0 {
        err(
            "spec.reconcile.max_concurrent".into(),
            "invalid_value",
            "max_concurrent must be at least 1".into(),
        );
    }
}

fn check_retry(path: &str, retry: &RetrySpec, err: &mut Report<'_>) {
    if retry.max_attempts == 0 {
        err(
            format!("{path}.max_attempts"),
            "invalid_value",
            "max_attempts must be at least 1 (1 means no retry)".into(),
        );
    }
    check_duration(&format!("{path}.initial"), &retry.initial, err);
    check_duration(&format!("{path}.max"), &retry.max, err);
    if !(retry.jitter.is_finite() && (0.0..=1.0).contains(&retry.jitter)) {
        err(
            format!("{path}.jitter"),
            "invalid_value",
            format!("jitter must be between 0 and 1, not {}", retry.jitter),
        );
    }
    if !(retry.multiplier.is_finite() && retry.multiplier >= 1.0) {
        err(
            format!("{path}.multiplier"),
            "invalid_value",
            format!("multiplier must be a number >= 1, not {}", retry.multiplier),
        );
    }
}

fn check_queue(path: &str, queue: &str, err: &mut Report<'_>) {
    if !crate::wire::is_valid_queue_name(queue) {
        err(
            path.into(),
            "invalid_value",
            format!("{queue:?} is not a valid queue name: use letters, digits, '-' and '_'"),
        );
    }
}

/// Checks one workflow; returns its graph when the step structure is sound
/// enough to reason about references.
fn check_workflow(
    path: &str,
    steps: &[Step],
    context: &ValidationContext,
    err: &mut Report<'_>,
) -> Option<Graph> {
    if steps.len() > MAX_STEPS {
        err(
            format!("{path}.steps"),
            "too_large",
            format!(
                "{} steps; a workflow may have at most {MAX_STEPS}: split it into Promises that compose",
                steps.len()
            ),
        );
        return None;
    }
    let mut first_index: HashMap<&str, usize> = HashMap::new();
    let mut structure_ok = true;
    for (i, step) in steps.iter().enumerate() {
        let at = format!("{path}.steps[{i}]");
        if !is_step_id(&step.id) {
            err(
                format!("{at}.id"),
                "invalid_value",
                format!(
                    "{:?} is not a valid step id: use lowercase letters, digits, '-' and '_', starting with a letter",
                    step.id
                ),
            );
        }
        if let Some(first) = first_index.get(step.id.as_str()) {
            structure_ok = false;
            err(
                format!("{at}.id"),
                "duplicate_step",
                format!(
                    "duplicate step id {:?} (first used at {path}.steps[{first}])",
                    step.id
                ),
            );
        } else {
            first_index.insert(&step.id, i);
        }
        if step.uses.trim().is_empty() {
            err(
                format!("{at}.uses"),
                "invalid_value",
                "uses must name a handler".into(),
            );
        }
        for (field, value) in [
            ("timeout", &step.timeout),
            ("schedule_to_start", &step.schedule_to_start),
            ("heartbeat_timeout", &step.heartbeat_timeout),
        ] {
            if let Some(text) = value {
                check_duration(&format!("{at}.{field}"), text, err);
            }
        }
        if let Some(retry) = &step.retry {
            check_retry(&format!("{at}.retry"), retry, err);
        }
        if let Some(queue) = &step.queue {
            check_queue(&format!("{at}.queue"), queue, err);
        }
        check_for_each_shape(&at, step, err);
        if let Some(comp) = &step.compensate {
            if comp.uses.trim().is_empty() {
                err(
                    format!("{at}.compensate.uses"),
                    "invalid_value",
                    "uses must name a handler".into(),
                );
            }
            if let Some(timeout) = &comp.timeout {
                check_duration(&format!("{at}.compensate.timeout"), timeout, err);
            }
            if let Some(retry) = &comp.retry {
                check_retry(&format!("{at}.compensate.retry"), retry, err);
            }
        }
    }
    for (i, step) in steps.iter().enumerate() {
        if step.needs.len() > MAX_NEEDS {
            structure_ok = false;
            err(
                format!("{path}.steps[{i}].needs"),
                "too_large",
                format!(
                    "{} needs; a step may need at most {MAX_NEEDS} steps",
                    step.needs.len()
                ),
            );
            continue;
        }
        let mut seen = BTreeSet::new();
        for (j, need) in step.needs.iter().enumerate() {
            let at = format!("{path}.steps[{i}].needs[{j}]");
            if !first_index.contains_key(need.as_str()) {
                structure_ok = false;
                err(
                    at,
                    "unknown_need",
                    format!(
                        "unknown step {need:?}; steps in this workflow: {}",
                        some_ids(steps.iter().map(|s| s.id.as_str()))
                    ),
                );
            } else if need == &step.id {
                structure_ok = false;
                err(at, "cycle", format!("step {need:?} needs itself"));
            } else if !seen.insert(need) {
                err(at, "invalid_value", format!("{need:?} is listed twice"));
            }
        }
    }
    if !structure_ok {
        return None;
    }
    let graph = Graph::new(steps.iter().map(|s| (s.id.clone(), s.needs.clone())));
    if let Some(cycle) = graph.find_cycle() {
        let first = first_index.get(cycle[0].as_str()).copied().unwrap_or(0);
        err(
            format!("{path}.steps[{first}].needs"),
            "cycle",
            format!("dependency cycle: {}", cycle.join(" -> ")),
        );
        return None;
    }

    let mut reach = Reachability::new(&graph);
    for (i, step) in steps.iter().enumerate() {
        let at = format!("{path}.steps[{i}]");
        let mut refs = Vec::new();
        // An instance of a for_each step also reads its item and index.
        let worker_roots: &[&str] = if step.for_each.is_some() {
            &FOR_EACH_ROOTS
        } else {
            &WORKER_ROOTS
        };
        match WaitKind::of_handler(&step.uses) {
            Some(kind) => check_engine_step(&at, step, kind, context, err, &mut refs),
            None if crate::child::is_promise_step(&step.uses) => {
                check_promise_step(&at, step, context, err, &mut refs);
            }
            None => check_templates_in(
                &format!("{at}.with"),
                &step.with,
                worker_roots,
                context,
                err,
                &mut refs,
            ),
        }
        if let Some(list) = &step.for_each {
            // Evaluated once for the whole step, before any instance: it
            // reads what the step's `if` may read, and no item.
            check_templates(&format!("{at}.for_each"), list, context, err, &mut refs);
        }
        if let Some(condition) = &step.condition {
            check_expression(
                &format!("{at}.if"),
                condition_source(condition),
                context,
                err,
                &mut refs,
            );
        }
        let own_refs = refs.len();
        if let Some(comp) = &step.compensate {
            check_templates_in(
                &format!("{at}.compensate.with"),
                &comp.with,
                worker_roots,
                context,
                err,
                &mut refs,
            );
        }
        for (n, r) in refs.into_iter().enumerate() {
            // A compensation runs after its step succeeded, so it may read
            // the step's own outputs too.
            let own_step_ok = n >= own_refs && r.step == step.id;
            if own_step_ok || reach.needs(&step.id, &r.step) {
                continue;
            }
            let hint = if step.needs.is_empty() {
                "this step has no upstream steps".to_string()
            } else {
                format!(
                    "it needs {} and what they need",
                    some_ids(step.needs.iter().map(String::as_str))
                )
            };
            err(
                r.path,
                "unknown_step_reference",
                format!(
                    "expression {} reads steps.{}, which is not a step this one (transitively) needs; {hint}",
                    r.quoted, r.step
                ),
            );
        }
    }
    Some(graph)
}

/// Checks what can be checked of `for_each` and `max_parallel` before the
/// expressions: the list's shape (an expression or a list), the bound on
/// `max_parallel`, and that the step is one a worker runs.
fn check_for_each_shape(at: &str, step: &Step, err: &mut Report<'_>) {
    if let Some(max) = step.max_parallel {
        if step.for_each.is_none() {
            err(
                format!("{at}.max_parallel"),
                "invalid_value",
                "max_parallel bounds the instances of a for_each step; this step has no for_each"
                    .into(),
            );
        } else if max == 0 || max as usize > MAX_ITEMS {
            err(
                format!("{at}.max_parallel"),
                "invalid_value",
                format!(
                    "max_parallel must be between 1 and {MAX_ITEMS}, not {max}; omit it to run \
                     every instance at once"
                ),
            );
        }
    }
    let Some(list) = &step.for_each else {
        return;
    };
    let path = format!("{at}.for_each");
    let engine_run = WaitKind::of_handler(&step.uses)
        .map(WaitKind::handler)
        .or_else(|| crate::child::is_promise_step(&step.uses).then_some(crate::child::PROMISE));
    if let Some(uses) = engine_run {
        err(
            path.clone(),
            "invalid_value",
            format!(
                "a {uses} step is run by the engine, not a worker, and cannot have for_each: \
                 for_each runs a worker step once per item"
            ),
        );
    }
    match list {
        Value::String(text) => match Template::parse(text) {
            // Reported with the expressions.
            Err(_) => {}
            Ok(template) if template.single_expression().is_some() => {}
            Ok(_) => err(
                path,
                "invalid_value",
                format!(
                    "for_each must be a list, or one expression that evaluates to a list such as \
                     \"${{{{ params.regions }}}}\"; {text:?} is text"
                ),
            ),
        },
        Value::Array(items) if items.len() > MAX_ITEMS => err(
            path,
            "too_large",
            format!(
                "for_each lists {} items; a for_each step runs over at most {MAX_ITEMS}",
                items.len()
            ),
        ),
        Value::Array(_) => {}
        other => err(
            path,
            "invalid_value",
            format!(
                "for_each must be a list, or one expression that evaluates to a list such as \
                 \"${{{{ params.regions }}}}\", not {}",
                crate::for_each::json_type(other)
            ),
        ),
    }
}

/// Checks an engine-run step (`wait.event`, `approval`, `sleep`): the keys
/// its `with` accepts, the literal values that can be checked now, its
/// `match` (a condition over `event` and the run), and that it sets none of
/// the settings only a worker's step has.
fn check_engine_step(
    at: &str,
    step: &Step,
    kind: WaitKind,
    context: &ValidationContext,
    err: &mut Report<'_>,
    refs: &mut Vec<StepRef>,
) {
    let uses = kind.handler();
    for (field, set) in [
        ("retry", step.retry.is_some()),
        ("queue", step.queue.is_some()),
        ("schedule_to_start", step.schedule_to_start.is_some()),
        ("heartbeat_timeout", step.heartbeat_timeout.is_some()),
    ] {
        if set {
            err(
                format!("{at}.{field}"),
                "invalid_value",
                format!(
                    "a {uses} step is run by the engine, not a worker: it takes no {field} \
                     (timeout bounds how long it waits)"
                ),
            );
        }
    }
    let Some(with) = step.with.as_object() else {
        err(
            format!("{at}.with"),
            "invalid_value",
            format!("with of a {uses} step must be an object"),
        );
        return;
    };
    let accepted: &[&str] = match kind {
        WaitKind::Event => &["subject", "type", "source", "match", "lookback"],
        WaitKind::Approval => &["approvers", "quorum", "allow_requester", "message"],
        WaitKind::Sleep => &["for", "until"],
    };
    for key in with.keys() {
        if !accepted.contains(&key.as_str()) {
            err(
                format!("{at}.with.{key}"),
                "unknown_field",
                format!(
                    "a {uses} step takes no {key:?}; it accepts: {}",
                    accepted.join(", ")
                ),
            );
        }
    }
    let literal = |key: &str| {
        with.get(key)
            .filter(|v| !v.as_str().is_some_and(|s| s.contains("${{")))
    };
    match kind {
        WaitKind::Event => {
            match with.get("match") {
                Some(Value::String(condition)) => check_expression_in(
                    &format!("{at}.with.match"),
                    condition_source(condition),
                    &MATCH_ROOTS,
                    context,
                    err,
                    refs,
                ),
                Some(_) => err(
                    format!("{at}.with.match"),
                    "invalid_value",
                    "match must be a CEL condition over event and the run, as a string".into(),
                ),
                None => {}
            }
            if !["subject", "type", "source", "match"]
                .iter()
                .any(|k| with.contains_key(*k))
            {
                err(
                    format!("{at}.with"),
                    "invalid_value",
                    "a wait.event step must say which event: set type, subject, source or match"
                        .into(),
                );
            }
            if let Some(Value::String(lookback)) = literal("lookback") {
                check_duration(&format!("{at}.with.lookback"), lookback, err);
            }
        }
        WaitKind::Approval => {
            match literal("approvers") {
                Some(Value::Array(approvers)) if !approvers.is_empty() => {
                    for (i, approver) in approvers.iter().enumerate() {
                        match approver.as_str() {
                            Some(a) if a.contains("${{") => {}
                            Some(a) => {
                                if let Err(message) = crate::wait::check_approver(a) {
                                    err(
                                        format!("{at}.with.approvers[{i}]"),
                                        "invalid_value",
                                        message,
                                    );
                                }
                            }
                            None => err(
                                format!("{at}.with.approvers[{i}]"),
                                "invalid_value",
                                "an approver is a string: team:<name>, user:<name> or role:<name>"
                                    .into(),
                            ),
                        }
                    }
                }
                None if with.contains_key("approvers") => {}
                _ => err(
                    format!("{at}.with.approvers"),
                    "invalid_value",
                    "approvers must list at least one team:, user: or role: entry".into(),
                ),
            }
            if let Some(quorum) = literal("quorum")
                && !quorum
                    .as_u64()
                    .is_some_and(|q| (1..=u64::from(u32::MAX)).contains(&q))
            {
                err(
                    format!("{at}.with.quorum"),
                    "invalid_value",
                    format!("quorum must be a whole number of at least 1, not {quorum}"),
                );
            }
            if let Some(allow) = literal("allow_requester")
                && !allow.is_boolean()
            {
                err(
                    format!("{at}.with.allow_requester"),
                    "invalid_value",
                    format!("allow_requester must be true or false, not {allow}"),
                );
            }
        }
        WaitKind::Sleep => {
            if with.contains_key("for") == with.contains_key("until") {
                err(
                    format!("{at}.with"),
                    "invalid_value",
                    "a sleep step sets exactly one of for (a duration) and until (an RFC 3339 time)"
                        .into(),
                );
            }
            if let Some(Value::String(duration)) = literal("for") {
                check_duration(&format!("{at}.with.for"), duration, err);
            }
            if let Some(until) = literal("until")
                && until
                    .as_str()
                    .is_none_or(|u| chrono::DateTime::parse_from_rfc3339(u).is_err())
            {
                err(
                    format!("{at}.with.until"),
                    "invalid_value",
                    format!(
                        "until must be an RFC 3339 time such as 2026-12-24T18:00:00Z, not {until}"
                    ),
                );
            }
        }
    }
    let mut rest = with.clone();
    rest.remove("match");
    check_templates(
        &format!("{at}.with"),
        &Value::Object(rest),
        context,
        err,
        refs,
    );
}

/// Checks a step that files a child request (see [`crate::child`]): its
/// `with` names the child's Promise literally (so cycles are found when
/// Promises are applied) and gives its params; it sets none of the
/// settings the child's own steps carry, and no compensation: undoing it is
/// deleting the child request.
fn check_promise_step(
    at: &str,
    step: &Step,
    context: &ValidationContext,
    err: &mut Report<'_>,
    refs: &mut Vec<StepRef>,
) {
    for (field, set, why) in [
        ("retry", step.retry.is_some(), "the child's own steps retry"),
        ("queue", step.queue.is_some(), "no worker runs it"),
        (
            "timeout",
            step.timeout.is_some(),
            "the child's own steps and run time out",
        ),
        (
            "schedule_to_start",
            step.schedule_to_start.is_some(),
            "no worker runs it",
        ),
        (
            "heartbeat_timeout",
            step.heartbeat_timeout.is_some(),
            "no worker runs it",
        ),
        (
            "compensate",
            step.compensate.is_some(),
            "compensating it deletes the child request, which runs the child's delete workflow",
        ),
    ] {
        if set {
            err(
                format!("{at}.{field}"),
                "invalid_value",
                format!("a promise step files a child request and takes no {field}: {why}"),
            );
        }
    }
    let Some(with) = step.with.as_object() else {
        err(
            format!("{at}.with"),
            "invalid_value",
            "with of a promise step must be an object: {promise: <name>, params: {...}}".into(),
        );
        return;
    };
    for key in with.keys() {
        if !["promise", "params"].contains(&key.as_str()) {
            err(
                format!("{at}.with.{key}"),
                "unknown_field",
                format!("a promise step takes no {key:?}; it accepts: promise, params"),
            );
        }
    }
    match with.get("promise") {
        Some(Value::String(name)) if name.contains("${{") => err(
            format!("{at}.with.promise"),
            "invalid_value",
            "the child's Promise must be named literally, not computed, so a cycle of Promises \
             filing each other is found when they are applied"
                .into(),
        ),
        Some(Value::String(name)) if !name.trim().is_empty() => {}
        _ => err(
            format!("{at}.with.promise"),
            "invalid_value",
            "with.promise must name the Promise the child request is filed against".into(),
        ),
    }
    match with.get("params") {
        None | Some(Value::Object(_)) => {}
        Some(Value::String(text)) if text.contains("${{") => {}
        Some(other) => err(
            format!("{at}.with.params"),
            "invalid_value",
            format!(
                "with.params must be an object of the child's parameters, not a {}",
                crate::for_each::json_type(other)
            ),
        ),
    }
    // Rendered by the engine: like an engine-run step's, its templates may
    // not read secrets (they would be stored in the child's params).
    check_templates(&format!("{at}.with"), &step.with, context, err, refs);
}

/// Checks every template in a JSON value, collecting the steps each reads.
fn check_templates(
    path: &str,
    value: &Value,
    context: &ValidationContext,
    err: &mut Report<'_>,
    refs: &mut Vec<StepRef>,
) {
    check_templates_in(path, value, &ROOTS, context, err, refs);
}

/// [`check_templates`] for expressions that may read only `roots`.
pub(crate) fn check_templates_in(
    path: &str,
    value: &Value,
    roots: &[&str],
    context: &ValidationContext,
    err: &mut Report<'_>,
    refs: &mut Vec<StepRef>,
) {
    match value {
        Value::String(text) => match Template::parse(text) {
            Err(message) => err(path.into(), "invalid_expression", message),
            Ok(template) => {
                for expr in template.expressions() {
                    // An exact reference is not CEL the engine evaluates.
                    if roots.contains(&SECRETS_ROOT) && secret_reference(expr.0).is_some() {
                        continue;
                    }
                    check_expression_in(path, expr.0, roots, context, err, refs);
                }
            }
        },
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_templates_in(&format!("{path}[{i}]"), item, roots, context, err, refs);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                check_templates_in(&format!("{path}.{k}"), v, roots, context, err, refs);
            }
        }
        _ => {}
    }
}

/// Checks one expression; the steps it reads go to `refs`, for the caller
/// to check against what is upstream.
fn check_expression(
    path: &str,
    source: &str,
    context: &ValidationContext,
    err: &mut Report<'_>,
    refs: &mut Vec<StepRef>,
) {
    check_expression_in(path, source, &ROOTS, context, err, refs);
}

/// [`check_expression`] for an expression that may read only `roots`.
pub(crate) fn check_expression_in(
    path: &str,
    source: &str,
    roots: &[&str],
    context: &ValidationContext,
    err: &mut Report<'_>,
    refs: &mut Vec<StepRef>,
) {
    // Messages quote the expression; a long one is cut so that an error
    // about size is not itself as large as the document.
    let quoted = preview(source);
    let expr = match ParsedExpression::parse(source) {
        Ok(expr) => expr,
        Err(message) => {
            err(
                path.into(),
                "invalid_expression",
                format!("cannot parse expression {quoted}: {}", first_line(&message)),
            );
            return;
        }
    };
    for var in expr.variables() {
        if var == SECRETS_ROOT {
            // Exact references never get here (see check_templates_in).
            if roots.contains(&SECRETS_ROOT) {
                err(
                    path.into(),
                    "invalid_expression",
                    format!(
                        "expression {quoted} computes with a secret; a secret can only be \
                         referenced whole, as ${{{{ secrets.NAME }}}} alone or inside text \
                         (NAME: letters, digits and '_'), because the engine never holds its \
                         value and the worker only substitutes it"
                    ),
                );
            } else {
                err(
                    path.into(),
                    "unknown_variable",
                    format!(
                        "expression {quoted} reads secrets, which only a worker step's with and \
                         compensate.with may reference, as ${{{{ secrets.NAME }}}}: the engine \
                         never holds a secret's value, so it cannot use one here"
                    ),
                );
            }
        } else if (var == ITEM || var == INDEX) && !roots.contains(&var.as_str()) {
            err(
                path.into(),
                "unknown_variable",
                format!(
                    "expression {quoted} reads {var}, which only the with and compensate.with of \
                     a step with for_each may read (each instance's item and its index in the \
                     list)"
                ),
            );
        } else if var == "env" {
            err(
                path.into(),
                "unknown_variable",
                format!(
                    "expression {quoted} reads env, which does not exist: a Promise cannot read the \
                     engine's environment; read vars.<name> instead, which an operator exposes \
                     with FULFIL_VAR_<NAME> or a vars file"
                ),
            );
        } else if !roots.contains(&var.as_str()) {
            err(
                path.into(),
                "unknown_variable",
                format!(
                    "expression {quoted} reads unknown variable {var:?}; available: {}",
                    roots.join(", ")
                ),
            );
        }
    }
    if let VarNames::Only(known) = &context.vars {
        for name in expr.selected_fields("vars") {
            if !known.contains(&name) {
                let exposed = if known.is_empty() {
                    "this deployment exposes none".to_string()
                } else {
                    format!("exposed: {}", some_ids(known.iter().map(String::as_str)))
                };
                err(
                    path.into(),
                    "unknown_var",
                    format!(
                        "expression {quoted} reads vars.{name}, which is not exposed; {exposed} \
                         (an operator exposes one with FULFIL_VAR_{} or a vars file)",
                        name.to_ascii_uppercase()
                    ),
                );
            }
        }
    }
    for step in expr.selected_fields("steps") {
        refs.push(StepRef {
            path: path.into(),
            quoted: quoted.clone(),
            step,
        });
    }
}

/// `source` quoted, cut after 80 characters.
fn preview(source: &str) -> String {
    const KEEP: usize = 80;
    match source.char_indices().nth(KEEP) {
        Some((end, _)) => format!("{:?}...", &source[..end]),
        None => format!("{source:?}"),
    }
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or(message)
}
