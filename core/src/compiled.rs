//! The executable form of a Promise: what the engine needs at run time,
//! parsed once when the Promise is built (applied, or read from the store).
//!
//! Every duration is a [`Duration`] and every retry policy a
//! [`RetryPolicy`], with the step's own setting, else `spec.defaults`, else
//! the built-in default already resolved; so code that runs a step never
//! parses a string, and never falls back to a default because one failed to
//! parse. A Promise whose durations do not compile is not a Promise: its
//! constructors return an error instead.
//!
//! Every expression (a step's `if` and `with`, a compensation's `with`,
//! `spec.outputs`, a trigger's `filter` and `params`) is parsed here too,
//! into a [`CompiledCondition`] or a [`CompiledTemplate`] the engine
//! renders; nothing parses CEL at run time. An expression that does not parse (validation refuses it, so only a
//! stored Promise could hold one) is kept with its parse error, which
//! rendering reports as the step's `render_error`, as it always did.

use std::collections::HashMap;
use std::time::Duration;

use crate::expr::{CompiledCondition, CompiledTemplate};
use crate::promise::{
    Compensation, DEFAULT_STEP_TIMEOUT, PromiseSpec, ReconcilePolicy, ReconcileSpec, RetryPolicy,
    RetrySpec, Step, StepDefaults,
};
use crate::status::WaitKind;
use crate::time::{DurationError, parse_duration};
use crate::trigger::CompiledTrigger;
use crate::wait::EngineStep;

/// A Promise's settings, compiled.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Compiled {
    pub run_timeout: Option<Duration>,
    /// What a step gets from `spec.defaults` alone.
    pub defaults: StepPolicy,
    /// One per step of `spec.workflow`, in order.
    pub workflow: Vec<StepPolicy>,
    /// One per step of `spec.delete`, in order.
    pub delete: Vec<StepPolicy>,
    /// `spec.workflow` step ids to their index.
    pub index: HashMap<String, usize>,
    /// The expressions of each step of `spec.workflow`, in order.
    pub workflow_expressions: Vec<StepExpressions>,
    /// The expressions of each step of `spec.delete`, in order.
    pub delete_expressions: Vec<StepExpressions>,
    /// `spec.outputs`, in name order.
    pub outputs: Vec<(String, CompiledTemplate)>,
    /// One per trigger of `spec.triggers`, in order.
    pub triggers: Vec<CompiledTrigger>,
    /// The vars the Promise's expressions read (triggers' included), sorted.
    pub var_references: Vec<String>,
    /// `spec.reconcile`, if any.
    pub reconcile: Option<ReconcilePolicy>,
    /// Some step of `spec.workflow` has `for_each`: what lets the engine
    /// skip everything about instances for the Promises that have none.
    pub has_for_each: bool,
    /// Some step of `spec.workflow` or `spec.delete` files a child request
    /// (`uses: promise`).
    pub has_promise_steps: bool,
}

/// One step's expressions, compiled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepExpressions {
    pub with: CompiledTemplate,
    pub condition: Option<CompiledCondition>,
    pub compensation_with: Option<CompiledTemplate>,
    /// A `for_each` step's list, to evaluate when the step starts.
    pub for_each: Option<CompiledTemplate>,
    /// For an engine-run step (see [`crate::wait`]), what it waits with.
    pub engine: Option<EngineStep>,
}

impl StepExpressions {
    fn compile(step: &Step) -> StepExpressions {
        let engine = WaitKind::of_handler(&step.uses).map(|kind| engine_step(kind, &step.with));
        // A wait's `match` is a condition evaluated per candidate event, not
        // a template rendered when the step starts.
        let with = match (&engine, &step.with) {
            (Some(_), serde_json::Value::Object(map)) if map.contains_key("match") => {
                let mut rest = map.clone();
                rest.remove("match");
                serde_json::Value::Object(rest)
            }
            _ => step.with.clone(),
        };
        StepExpressions {
            engine,
            with: CompiledTemplate::compile(&with),
            condition: step.condition.as_deref().map(CompiledCondition::compile),
            compensation_with: step
                .compensate
                .as_ref()
                .map(|c| CompiledTemplate::compile(&c.with)),
            for_each: step.for_each.as_ref().map(CompiledTemplate::compile),
        }
    }

    fn templates(&self) -> impl Iterator<Item = &CompiledTemplate> {
        std::iter::once(&self.with)
            .chain(self.compensation_with.as_ref())
            .chain(self.for_each.as_ref())
    }
}

/// An engine-run step's compiled `match` and its indexed part.
fn engine_step(kind: WaitKind, with: &serde_json::Value) -> EngineStep {
    let condition = match kind {
        WaitKind::Event => with
            .get("match")
            .and_then(serde_json::Value::as_str)
            .map(CompiledCondition::compile),
        WaitKind::Approval | WaitKind::Sleep => None,
    };
    let correlation = condition
        .as_ref()
        .and_then(|c| c.expression().parsed())
        .and_then(|parsed| parsed.correlation("event"));
    EngineStep {
        kind,
        condition,
        correlation,
    }
}

/// One step's settings, with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepPolicy {
    pub timeout: Duration,
    /// The step's own `timeout`, without defaults: how long an engine-run
    /// step waits (none: until something comes).
    pub own_timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub schedule_to_start: Option<Duration>,
    pub heartbeat_timeout: Option<Duration>,
    pub compensation_timeout: Duration,
    pub compensation_retry: RetryPolicy,
}

impl Default for StepPolicy {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_STEP_TIMEOUT,
            own_timeout: None,
            retry: RetryPolicy::none(),
            schedule_to_start: None,
            heartbeat_timeout: None,
            compensation_timeout: DEFAULT_STEP_TIMEOUT,
            compensation_retry: RetryPolicy::none(),
        }
    }
}

fn duration(text: Option<&String>) -> Result<Option<Duration>, DurationError> {
    text.map(|t| parse_duration(t)).transpose()
}

fn retry(spec: Option<&RetrySpec>) -> Result<Option<RetryPolicy>, DurationError> {
    spec.map(|r| {
        Ok(RetryPolicy {
            max_attempts: r.max_attempts,
            initial: parse_duration(&r.initial)?,
            max: parse_duration(&r.max)?,
            multiplier: r.multiplier,
            jitter: r.jitter,
            non_retryable: r.non_retryable.clone(),
        })
    })
    .transpose()
}

fn defaults(spec: &StepDefaults) -> Result<StepPolicy, DurationError> {
    let retry = retry(spec.retry.as_ref())?.unwrap_or_else(RetryPolicy::none);
    let timeout = duration(spec.timeout.as_ref())?.unwrap_or(DEFAULT_STEP_TIMEOUT);
    Ok(StepPolicy {
        timeout,
        own_timeout: None,
        retry: retry.clone(),
        schedule_to_start: duration(spec.schedule_to_start.as_ref())?,
        heartbeat_timeout: duration(spec.heartbeat_timeout.as_ref())?,
        compensation_timeout: timeout,
        compensation_retry: retry,
    })
}

fn step(step: &Step, defaults: &StepPolicy) -> Result<StepPolicy, DurationError> {
    let compensation: Option<&Compensation> = step.compensate.as_ref();
    Ok(StepPolicy {
        timeout: duration(step.timeout.as_ref())?.unwrap_or(defaults.timeout),
        own_timeout: duration(step.timeout.as_ref())?,
        retry: retry(step.retry.as_ref())?.unwrap_or_else(|| defaults.retry.clone()),
        schedule_to_start: duration(step.schedule_to_start.as_ref())?
            .or(defaults.schedule_to_start),
        heartbeat_timeout: duration(step.heartbeat_timeout.as_ref())?
            .or(defaults.heartbeat_timeout),
        compensation_timeout: duration(compensation.and_then(|c| c.timeout.as_ref()))?
            .unwrap_or(defaults.compensation_timeout),
        compensation_retry: retry(compensation.and_then(|c| c.retry.as_ref()))?
            .unwrap_or_else(|| defaults.compensation_retry.clone()),
    })
}

/// Compiles a Promise's spec; validation has already checked it, so an
/// error here means a document that skipped validation.
pub(crate) fn compile(spec: &PromiseSpec) -> Result<Compiled, DurationError> {
    let defaults = defaults(&spec.defaults)?;
    let workflow = spec
        .workflow
        .steps
        .iter()
        .map(|s| step(s, &defaults))
        .collect::<Result<Vec<_>, _>>()?;
    let delete = spec
        .delete
        .iter()
        .flat_map(|d| d.steps.iter())
        .map(|s| step(s, &defaults))
        .collect::<Result<Vec<_>, _>>()?;
    let mut index = HashMap::with_capacity(spec.workflow.steps.len());
    for (i, s) in spec.workflow.steps.iter().enumerate() {
        // The first of duplicate ids wins, as validation reports the rest.
        index.entry(s.id.clone()).or_insert(i);
    }
    let workflow_expressions: Vec<_> = spec
        .workflow
        .steps
        .iter()
        .map(StepExpressions::compile)
        .collect();
    let delete_expressions: Vec<_> = spec
        .delete
        .iter()
        .flat_map(|d| d.steps.iter())
        .map(StepExpressions::compile)
        .collect();
    let outputs: Vec<_> = spec
        .outputs
        .iter()
        .map(|(name, value)| (name.clone(), CompiledTemplate::compile(value)))
        .collect();
    let triggers: Vec<_> = spec.triggers.iter().map(CompiledTrigger::compile).collect();
    let var_references = var_references(
        &workflow_expressions,
        &delete_expressions,
        &outputs,
        &triggers,
    );
    Ok(Compiled {
        run_timeout: duration(spec.timeout.as_ref())?,
        defaults,
        workflow,
        delete,
        index,
        workflow_expressions,
        delete_expressions,
        outputs,
        triggers,
        var_references,
        reconcile: spec.reconcile.as_ref().map(reconcile).transpose()?,
        has_for_each: spec.workflow.steps.iter().any(|s| s.for_each.is_some()),
        has_promise_steps: spec
            .workflow
            .steps
            .iter()
            .chain(spec.delete.iter().flat_map(|d| d.steps.iter()))
            .any(|s| crate::child::is_promise_step(&s.uses)),
    })
}

/// Validation refuses an interval under a second and a `max_concurrent`
/// of 0; a stored Promise that skipped it is still held to both, so the
/// engine never divides by a zero interval or starts nothing forever.
fn reconcile(spec: &ReconcileSpec) -> Result<ReconcilePolicy, DurationError> {
    Ok(ReconcilePolicy {
        every: parse_duration(&spec.every)?.max(Duration::from_secs(1)),
        max_concurrent: spec.max_concurrent.max(1),
    })
}

/// `vars.<name>` names read anywhere, sorted; an expression that did not
/// parse reads none.
fn var_references(
    workflow: &[StepExpressions],
    delete: &[StepExpressions],
    outputs: &[(String, CompiledTemplate)],
    triggers: &[CompiledTrigger],
) -> Vec<String> {
    let steps = workflow.iter().chain(delete);
    let templates = steps
        .clone()
        .flat_map(StepExpressions::templates)
        .chain(outputs.iter().map(|(_, t)| t));
    let expressions = templates
        .flat_map(CompiledTemplate::expressions)
        .chain(steps.filter_map(|s| s.condition.as_ref().map(|c| c.expression())))
        .chain(triggers.iter().flat_map(CompiledTrigger::expressions));
    let mut names: Vec<String> = expressions
        .filter_map(|e| e.parsed())
        .flat_map(|e| e.selected_fields("vars"))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The index in `steps` of the step whose memory holds address `addr` (the
/// step itself, or its inline `compensate`): how an accessor given a `&Step`
/// or `&Compensation` of this Promise finds its compiled settings in O(1).
pub(crate) fn index_of_address(steps: &[Step], addr: usize) -> Option<usize> {
    let size = std::mem::size_of::<Step>();
    let start = steps.as_ptr() as usize;
    let offset = addr.checked_sub(start)?;
    (offset < std::mem::size_of_val(steps)).then_some(offset / size)
}
