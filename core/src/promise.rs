//! The Promise document: a platform capability with a request schema and the
//! DAG workflow that fulfils a request.
//!
//! [`Promise::parse`] accepts YAML or JSON and returns a [`Promise`] only when
//! the whole document is valid; otherwise every problem found is returned at
//! its path (see [`crate::validate`]). A parsed `Promise` is immutable and its
//! durations and expressions are known to be well-formed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compiled::{Compiled, StepExpressions, StepPolicy, compile, index_of_address};
use crate::expr::{CompiledCondition, CompiledTemplate};
use crate::time::DurationError;
use crate::trigger::{MatchedTrigger, Trigger};
use crate::validate::{SpecError, SpecErrors, ValidationContext};

pub const API_VERSION: &str = "fulfil.dev/v1";
pub const KIND: &str = "Promise";

/// A validated Promise, with its settings compiled (see
/// [`crate::compiled`]). Built only by [`Promise::parse_with`],
/// [`Promise::from_value_with`] and deserialization (as
/// [`Promise::from_stored`] does), each of which compiles it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "PromiseDocument")]
pub struct Promise {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: PromiseSpec,
    #[serde(skip)]
    compiled: Compiled,
}

/// A Promise document as written, before it is compiled.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PromiseDocument {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: PromiseSpec,
}

impl PromiseDocument {
    fn uncompiled(self) -> Promise {
        Promise {
            api_version: self.api_version,
            kind: self.kind,
            metadata: self.metadata,
            spec: self.spec,
            compiled: Compiled::default(),
        }
    }
}

impl TryFrom<PromiseDocument> for Promise {
    type Error = DurationError;

    fn try_from(document: PromiseDocument) -> Result<Self, Self::Error> {
        let mut promise = document.uncompiled();
        promise.compiled = compile(&promise.spec)?;
        Ok(promise)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromiseSpec {
    /// JSON Schema of a request's `params`; must describe an object.
    #[serde(default = "empty_object_schema")]
    pub api: Value,
    pub workflow: Workflow,
    /// Teardown workflow, run when a request is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<Workflow>,
    /// Run outputs: each value is a template rendered once every step has
    /// finished, over the same context as step inputs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, Value>,
    /// Step settings applied where a step does not set its own.
    #[serde(default)]
    pub defaults: StepDefaults,
    /// Whole-run deadline, from acceptance; on expiry in-flight steps are
    /// cancelled and the run compensates, then fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Requests filed from inbound events (see [`crate::trigger`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
    /// Re-run the configure workflow of every live request on a clock
    /// (runs of kind `reconcile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<ReconcileSpec>,
    /// Which teams may file requests; absent, every team may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessSpec>,
}

/// `spec.access`: the teams whose principals may file requests for the
/// Promise (`access: { teams: [team-a, team-b] }`). It narrows who files,
/// never who reads: reads stay global to every authenticated principal.
/// Applies only where access control is on; admins file for any Promise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessSpec {
    /// At least one team name.
    pub teams: Vec<String>,
}

impl AccessSpec {
    /// Whether a principal of `team` may file requests.
    pub fn admits(&self, team: &str) -> bool {
        self.teams.iter().any(|t| t.trim() == team)
    }
}

/// `spec.reconcile`: every live request of the Promise re-runs its
/// configure workflow once per `every`, each at its own phase within the
/// interval, with at most `max_concurrent` such runs of the Promise in
/// flight at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSpec {
    /// The interval, e.g. `10h`; at least `1s`.
    pub every: String,
    /// Most reconcile runs of the Promise in flight at once; at least 1.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: u32,
}

fn default_max_concurrent() -> u32 {
    10
}

/// `spec.reconcile`, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcilePolicy {
    /// The interval; at least one second.
    pub every: Duration,
    /// At least 1.
    pub max_concurrent: u32,
}

fn empty_object_schema() -> Value {
    serde_json::json!({ "type": "object" })
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_to_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub id: String,
    /// Handler name: a built-in (`noop`, `echo`, `http`, `nats.publish`,
    /// `exec`, `git.commit`, `git.remove`) or one a custom worker registers.
    pub uses: String,
    /// Handler input; strings may hold `${{ expression }}` templates.
    #[serde(default = "empty_object", skip_serializing_if = "Value::is_null")]
    pub with: Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// CEL condition; when false the step is skipped.
    #[serde(rename = "if", default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Runs the step once per item of a list: an expression that evaluates
    /// to one (`"${{ params.regions }}"`) or a literal list. Its `with` and
    /// `compensate.with` read `item` and `index` (see [`crate::for_each`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<Value>,
    /// Most instances of a `for_each` step in flight at once; at least 1,
    /// default all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Per-attempt timeout from the moment a worker starts it, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// How long an attempt may wait for a worker of its queue to start it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_to_start: Option<String>,
    /// Longest silence allowed between a running handler's heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout: Option<String>,
    /// Worker queue; tasks go to `<prefix>.tasks.<queue>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<Compensation>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compensation {
    pub uses: String,
    #[serde(default = "empty_object", skip_serializing_if = "Value::is_null")]
    pub with: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_initial")]
    pub initial: String,
    #[serde(default = "default_max")]
    pub max: String,
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Each delay is spread uniformly over `delay * (1 ± jitter)`; 0 to 1.
    #[serde(default)]
    pub jitter: f64,
    /// Error codes that fail the step at once, whatever the handler said.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_retryable: Vec<String>,
}

fn default_max_attempts() -> u32 {
    1
}
fn default_initial() -> String {
    "1s".into()
}
fn default_max() -> String {
    "1m".into()
}
fn default_multiplier() -> f64 {
    2.0
}

/// Used when neither the step nor `spec.defaults` sets a timeout.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(300);

/// A retry policy with its durations parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    pub jitter: f64,
    pub non_retryable: Vec<String>,
}

impl RetryPolicy {
    /// One attempt, no retry: the default until a Promise asks for more.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.0,
            non_retryable: Vec::new(),
        }
    }

    /// The delay before attempt `next_attempt` (2 for the first retry),
    /// without jitter: `initial * multiplier^(next_attempt - 2)`, capped at `max`.
    pub fn base_backoff(&self, next_attempt: u32) -> Duration {
        let exponent = next_attempt.saturating_sub(2).min(64) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        Duration::from_secs_f64(secs.min(self.max.as_secs_f64()))
    }

    /// [`Self::base_backoff`] spread by jitter; `random` is uniform in [0, 1).
    pub fn backoff(&self, next_attempt: u32, random: f64) -> Duration {
        let base = self.base_backoff(next_attempt).as_secs_f64();
        let factor = 1.0 + self.jitter * (2.0 * random.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((base * factor).max(0.0))
    }

    /// Whether a failure with `code` may be retried after attempt `attempt`.
    pub fn allows_retry(&self, attempt: u32, retryable: bool, code: Option<&str>) -> bool {
        retryable
            && attempt < self.max_attempts
            && !code.is_some_and(|c| self.non_retryable.iter().any(|n| n == c))
    }
}

/// Parses a duration such as `500ms`, `10s`, `1m30s`, bounded by
/// [`crate::time::MAX_DURATION`]; the error as text, for command-line
/// argument parsers. Everything else uses [`crate::time::parse_duration`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::time::parse_duration(text).map_err(|e| e.to_string())
}

impl Promise {
    /// Parses and validates a Promise from YAML (JSON is valid YAML), with
    /// no vars known: a Promise that reads `vars.<name>` is refused. The
    /// API and the server validate with [`Promise::parse_with`] and the
    /// deployment's vars.
    pub fn parse(text: &str) -> Result<Promise, SpecErrors> {
        Self::parse_with(text, &ValidationContext::default())
    }

    /// Parses and validates a Promise from YAML or JSON for a deployment
    /// described by `context`. Bounded in size and shape (see
    /// [`crate::document`]) and linear-ish in time: callers on an async
    /// runtime still run it on a blocking thread.
    pub fn parse_with(text: &str, context: &ValidationContext) -> Result<Promise, SpecErrors> {
        let value = crate::document::read(text).map_err(SpecErrors::one)?;
        Self::from_value_with(value, context)
    }

    /// Validates a Promise given as a JSON value, with no vars known.
    pub fn from_value(value: Value) -> Result<Promise, SpecErrors> {
        Self::from_value_with(value, &ValidationContext::default())
    }

    /// Validates a Promise given as a JSON value for a deployment.
    pub fn from_value_with(
        value: Value,
        context: &ValidationContext,
    ) -> Result<Promise, SpecErrors> {
        crate::document::check_depth(&value).map_err(SpecErrors::one)?;
        crate::document::check_strings(&value).map_err(SpecErrors::one)?;
        let document: PromiseDocument = serde_path_to_error::deserialize(&value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            SpecErrors::one(SpecError::new(
                path,
                "structure",
                e.into_inner().to_string(),
            ))
        })?;
        let mut promise = document.uncompiled();
        crate::validate::validate_with(&promise, context)?;
        // Validation checked every duration compile() parses; an error here
        // would be a gap between the two, reported rather than defaulted.
        promise.compiled = compile(&promise.spec).map_err(|e| {
            SpecErrors::one(SpecError::new("spec", "invalid_duration", e.to_string()))
        })?;
        Ok(promise)
    }

    /// A Promise as it was stored after validation, read back without
    /// validating it again: validation ran once, when it was applied, and
    /// the vars it was checked against may have changed since (a var no
    /// longer exposed fails the expression that reads it, at run time).
    pub fn from_stored(value: Value) -> Result<Promise, serde_json::Error> {
        serde_json::from_value(value)
    }

    /// The `spec.workflow` step with this id.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.compiled
            .index
            .get(id)
            .and_then(|&i| self.spec.workflow.steps.get(i))
    }

    /// The compiled settings of the step of this Promise that holds `addr`
    /// (the step or its compensation), in `spec.workflow` or `spec.delete`;
    /// for a step that is not this Promise's, `id` decides, and failing
    /// that `spec.defaults`.
    fn policy(&self, addr: usize, id: Option<&str>) -> &StepPolicy {
        let c = &self.compiled;
        index_of_address(&self.spec.workflow.steps, addr)
            .and_then(|i| c.workflow.get(i))
            .or_else(|| {
                let delete = self.spec.delete.as_ref()?;
                index_of_address(&delete.steps, addr).and_then(|i| c.delete.get(i))
            })
            .or_else(|| {
                id.and_then(|id| c.index.get(id))
                    .and_then(|&i| c.workflow.get(i))
            })
            .unwrap_or(&c.defaults)
    }

    fn step_policy(&self, step: &Step) -> &StepPolicy {
        self.policy(std::ptr::from_ref(step) as usize, Some(&step.id))
    }

    fn compensation_policy(&self, compensation: &Compensation) -> &StepPolicy {
        self.policy(std::ptr::from_ref(compensation) as usize, None)
    }

    /// The step's queue, falling back to `spec.defaults.queue`, then `default`.
    pub fn queue_of<'a>(&'a self, step: &'a Step) -> &'a str {
        step.queue
            .as_deref()
            .or(self.spec.defaults.queue.as_deref())
            .unwrap_or(crate::wire::DEFAULT_QUEUE)
    }

    /// The step's per-attempt timeout: its own, else `spec.defaults`, else
    /// [`DEFAULT_STEP_TIMEOUT`].
    pub fn timeout_of(&self, step: &Step) -> Duration {
        self.step_policy(step).timeout
    }

    /// How long an engine-run step waits: its own `timeout` only (an
    /// approval must not expire after a default meant for worker steps);
    /// `None` waits until what it waits for comes.
    pub fn wait_timeout_of(&self, step: &Step) -> Option<Duration> {
        self.step_policy(step).own_timeout
    }

    /// The step's retry policy (its own, else the Promise default).
    pub fn retry_of(&self, step: &Step) -> RetryPolicy {
        self.step_policy(step).retry.clone()
    }

    /// The compensation's retry policy (its own, else the Promise default).
    pub fn compensation_retry_of(&self, compensation: &Compensation) -> RetryPolicy {
        self.compensation_policy(compensation)
            .compensation_retry
            .clone()
    }

    /// The compensation's per-attempt timeout.
    pub fn compensation_timeout_of(&self, compensation: &Compensation) -> Duration {
        self.compensation_policy(compensation).compensation_timeout
    }

    /// How long the step's attempts may wait for a worker, if bounded.
    pub fn schedule_to_start_of(&self, step: &Step) -> Option<Duration> {
        self.step_policy(step).schedule_to_start
    }

    /// Longest silence between heartbeats of the step's running attempts.
    pub fn heartbeat_timeout_of(&self, step: &Step) -> Option<Duration> {
        self.step_policy(step).heartbeat_timeout
    }

    /// The whole run's deadline, if any.
    pub fn run_timeout(&self) -> Option<Duration> {
        self.compiled.run_timeout
    }

    /// `spec.reconcile`, compiled; `None` when the Promise does not
    /// reconcile on a clock.
    pub fn reconcile(&self) -> Option<ReconcilePolicy> {
        self.compiled.reconcile
    }

    /// Names of the vars the Promise's expressions read as `vars.<name>`,
    /// sorted; found when the Promise was compiled.
    pub fn var_references(&self) -> Vec<String> {
        self.compiled.var_references.clone()
    }

    /// The compiled expressions of the step of this Promise that holds
    /// `addr` (the step or its compensation), found as [`Self::policy`]
    /// finds settings; `None` for a step that is not this Promise's.
    fn expressions(&self, addr: usize, id: &str) -> Option<&StepExpressions> {
        let c = &self.compiled;
        index_of_address(&self.spec.workflow.steps, addr)
            .and_then(|i| c.workflow_expressions.get(i))
            .or_else(|| {
                let delete = self.spec.delete.as_ref()?;
                index_of_address(&delete.steps, addr).and_then(|i| c.delete_expressions.get(i))
            })
            .or_else(|| c.index.get(id).and_then(|&i| c.workflow_expressions.get(i)))
    }

    fn step_expressions(&self, step: &Step) -> Option<&StepExpressions> {
        self.expressions(std::ptr::from_ref(step) as usize, &step.id)
    }

    /// The step's `with`, compiled; `None` for a step not of this Promise.
    pub fn with_of(&self, step: &Step) -> Option<&CompiledTemplate> {
        self.step_expressions(step).map(|e| &e.with)
    }

    /// The step's `if`, compiled; `None` when it has none or is not a step
    /// of this Promise.
    pub fn condition_of(&self, step: &Step) -> Option<&CompiledCondition> {
        self.step_expressions(step)
            .and_then(|e| e.condition.as_ref())
    }

    /// The `with` of the step's compensation, compiled; `None` when it has
    /// none or is not a step of this Promise.
    pub fn compensation_with_of(&self, step: &Step) -> Option<&CompiledTemplate> {
        self.step_expressions(step)
            .and_then(|e| e.compensation_with.as_ref())
    }

    /// A `for_each` step's list, compiled; `None` for a step without
    /// `for_each` or not of this Promise.
    pub fn for_each_of(&self, step: &Step) -> Option<&CompiledTemplate> {
        self.step_expressions(step)
            .and_then(|e| e.for_each.as_ref())
    }

    /// Most instances of a `for_each` step in flight at once: its
    /// `max_parallel`, else all of them; within 1 ..=
    /// [`crate::for_each::MAX_ITEMS`] whatever a stored Promise says.
    pub fn max_parallel_of(&self, step: &Step) -> usize {
        let max = crate::for_each::MAX_ITEMS;
        step.max_parallel
            .map_or(max, |n| usize::try_from(n).unwrap_or(max))
            .clamp(1, max)
    }

    /// Whether some step of the workflow has `for_each`.
    pub fn has_for_each(&self) -> bool {
        self.compiled.has_for_each
    }

    /// The step a step row of a run belongs to, and for an instance of a
    /// `for_each` step (`deploy[3]`) its index: `None` for a row that is
    /// neither a step of `spec.workflow` nor an instance of a `for_each`
    /// one. A step id is looked up first, so a plain step costs what
    /// [`Self::step`] does.
    pub fn step_of_row(&self, row_id: &str) -> Option<(&Step, Option<usize>)> {
        if let Some(step) = self.step(row_id) {
            return Some((step, None));
        }
        if !self.compiled.has_for_each {
            return None;
        }
        let (id, index) = crate::for_each::parse_instance(row_id)?;
        self.step(id)
            .filter(|step| step.for_each.is_some())
            .map(|step| (step, Some(index)))
    }

    /// What the step waits with, if it is an engine-run step (`wait.event`,
    /// `approval`, `sleep`; see [`crate::wait`]).
    pub fn engine_step_of(&self, step: &Step) -> Option<&crate::wait::EngineStep> {
        self.step_expressions(step).and_then(|e| e.engine.as_ref())
    }

    /// Whether any step of the workflow or the teardown is engine-run
    /// (a wait, or a promise step filing a child request).
    pub fn has_engine_steps(&self) -> bool {
        self.compiled.has_promise_steps
            || self
                .compiled
                .workflow_expressions
                .iter()
                .chain(&self.compiled.delete_expressions)
                .any(|e| e.engine.is_some())
    }

    /// `spec.outputs`, compiled, in name order.
    pub fn compiled_outputs(&self) -> &[(String, CompiledTemplate)] {
        &self.compiled.outputs
    }

    /// Triggers of this Promise that an event of `event_type` matches, in
    /// `spec.triggers` order: on the bus (`nats_subject` = Some) the
    /// trigger's `subject` (if set) must match the NATS subject and its
    /// `type` (if set) the CloudEvent type; over HTTP (`None`) a trigger
    /// matches by `type` alone and a trigger without `type` never matches.
    pub fn matching_triggers(
        &self,
        nats_subject: Option<&str>,
        event_type: &str,
    ) -> Vec<MatchedTrigger<'_>> {
        self.spec
            .triggers
            .iter()
            .zip(&self.compiled.triggers)
            .filter(|(trigger, _)| trigger.matches(nats_subject, event_type))
            .map(|(trigger, compiled)| MatchedTrigger::new(trigger, compiled))
            .collect()
    }

    /// Every NATS subject pattern the Promise listens on (for the inbound
    /// stream): its triggers' and its event waits' (a literal `subject` of
    /// a `wait.event` step; a templated one is known only when the wait
    /// begins, and must be captured by another Promise or a trigger), sorted,
    /// without duplicates. A trigger or wait with only a `type` adds none:
    /// it hears whatever subjects the inbound stream covers.
    pub fn inbound_subjects(&self) -> Vec<&str> {
        let waits = self
            .spec
            .workflow
            .steps
            .iter()
            .chain(self.spec.delete.iter().flat_map(|d| d.steps.iter()))
            .filter(|step| step.uses == crate::wait::WAIT_EVENT)
            .filter_map(|step| step.with.get("subject")?.as_str())
            .filter(|subject| !subject.contains("${{"));
        let mut subjects: Vec<&str> = self
            .spec
            .triggers
            .iter()
            .filter_map(|t| t.subject.as_deref())
            .chain(waits)
            .collect();
        subjects.sort_unstable();
        subjects.dedup();
        subjects
    }
}

impl RetrySpec {
    pub fn policy(&self) -> Result<RetryPolicy, String> {
        Ok(RetryPolicy {
            max_attempts: self.max_attempts,
            initial: crate::time::parse_duration(&self.initial).map_err(|e| e.to_string())?,
            max: crate::time::parse_duration(&self.max).map_err(|e| e.to_string())?,
            multiplier: self.multiplier,
            jitter: self.jitter,
            non_retryable: self.non_retryable.clone(),
        })
    }
}
