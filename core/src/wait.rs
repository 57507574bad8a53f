//! Engine-run steps: `wait.event`, `approval` and `sleep`.
//!
//! These steps hold no worker slot: the engine itself keeps them waiting,
//! as a durable row in Postgres, until an event, enough approvals, or a time
//! comes. This module is their language: which `uses` names them, what their
//! `with` accepts ([`EventWait`], [`Approval`], [`Sleep`]), what a waiting
//! step shows as `waiting_for`, and who may decide an approval
//! ([`Principal`]).
//!
//! A step's `with` is a template like any step's, rendered when the step
//! starts, so `message`, `subject` or `until` may read the run; `match` is
//! the exception: it is a CEL condition evaluated later, for every candidate
//! event, over `event` and the run's `params`, `request`, `vars` and
//! `steps` as they stood when the wait began. It is compiled once, with
//! its Promise (see [`crate::compiled`]).
//!
//! Matching stays indexed however many runs wait: when `match` holds a
//! conjunct `event.<path> == <expression without event>` (for example
//! `event.data.name == params.name`), the right-hand side is evaluated when
//! the wait begins and the wait is filed under `(type, path, value)`
//! ([`Correlation`]); an arriving event looks up only the waits filed under
//! its own values at those paths.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::expr::{CompiledCondition, Correlation, RenderError};
use crate::status::WaitKind;

/// `uses` of a step that waits for a matching event.
pub const WAIT_EVENT: &str = "wait.event";
/// `uses` of a step that waits for people to approve.
pub const APPROVAL: &str = "approval";
/// `uses` of a step that waits for a time.
pub const SLEEP: &str = "sleep";

/// Error code of an event wait whose `timeout` passed.
pub const WAIT_TIMEOUT: &str = "wait_timeout";
/// Error code of an approval step someone rejected.
pub const REJECTED: &str = "rejected";
/// Error code of an approval step whose `timeout` passed.
pub const APPROVAL_EXPIRED: &str = "approval_expired";

impl WaitKind {
    /// The engine-run kind a step's `uses` names, if it names one.
    pub fn of_handler(uses: &str) -> Option<WaitKind> {
        match uses {
            WAIT_EVENT => Some(WaitKind::Event),
            APPROVAL => Some(WaitKind::Approval),
            SLEEP => Some(WaitKind::Sleep),
            _ => None,
        }
    }

    /// The `uses` that names this kind.
    pub fn handler(self) -> &'static str {
        match self {
            WaitKind::Event => WAIT_EVENT,
            WaitKind::Approval => APPROVAL,
            WaitKind::Sleep => SLEEP,
        }
    }
}

/// The rendered `with` of a `wait.event` step (its `match` is compiled
/// apart, see [`EngineStep`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventWait {
    /// NATS subject pattern (`*`, `>`) the event must arrive on; an event
    /// posted over HTTP has none and never matches a wait that sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// CloudEvent `type`, exact.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// CloudEvent `source`, exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The CEL condition, as written (compiled with the Promise).
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// An event received up to this long before the wait began also matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookback: Option<String>,
}

/// The rendered `with` of an `approval` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// `team:T`, `user:U` or `role:R`.
    pub approvers: Vec<String>,
    /// Distinct principals whose approval completes the step.
    #[serde(default = "one")]
    pub quorum: u32,
    /// Whether whoever filed the request may approve it.
    #[serde(default)]
    pub allow_requester: bool,
    /// Shown to approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn one() -> u32 {
    1
}

/// The rendered `with` of a `sleep` step: exactly one of the two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sleep {
    #[serde(rename = "for", default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// An engine-run step of a Promise, compiled when the Promise is built.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineStep {
    pub kind: WaitKind,
    /// `wait.event`: the `match` condition, if any.
    pub condition: Option<CompiledCondition>,
    /// `wait.event`: the indexed part of `match`, if it has one.
    pub correlation: Option<Correlation>,
}

/// Why an engine step's rendered `with` cannot start the step.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WaitSpecError {
    /// A template of `with` failed to render.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// `with` does not have the shape the step kind accepts.
    #[error("with of a {kind} step: {message}")]
    Shape { kind: &'static str, message: String },
}

impl WaitSpecError {
    fn shape(kind: WaitKind, message: impl Into<String>) -> Self {
        WaitSpecError::Shape {
            kind: kind.handler(),
            message: message.into(),
        }
    }
}

/// A started engine step's settings, from its rendered `with`.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitSpec {
    Event {
        spec: EventWait,
        lookback: Option<Duration>,
    },
    Approval(Approval),
    Sleep {
        until: DateTime<Utc>,
    },
}

impl WaitSpec {
    /// Reads the rendered `with` of a step of `kind` that starts at `now`.
    pub fn from_rendered(
        kind: WaitKind,
        with: Value,
        now: DateTime<Utc>,
    ) -> Result<WaitSpec, WaitSpecError> {
        match kind {
            WaitKind::Event => {
                let spec: EventWait = serde_json::from_value(with)
                    .map_err(|e| WaitSpecError::shape(kind, e.to_string()))?;
                let lookback = spec
                    .lookback
                    .as_deref()
                    .map(crate::time::parse_duration)
                    .transpose()
                    .map_err(|e| WaitSpecError::shape(kind, format!("lookback: {e}")))?;
                Ok(WaitSpec::Event { spec, lookback })
            }
            WaitKind::Approval => {
                let approval: Approval = serde_json::from_value(with)
                    .map_err(|e| WaitSpecError::shape(kind, e.to_string()))?;
                check_approval(&approval).map_err(|m| WaitSpecError::shape(kind, m))?;
                Ok(WaitSpec::Approval(approval))
            }
            WaitKind::Sleep => {
                let sleep: Sleep = serde_json::from_value(with)
                    .map_err(|e| WaitSpecError::shape(kind, e.to_string()))?;
                let until = sleep_until(&sleep, now).map_err(|m| WaitSpecError::shape(kind, m))?;
                Ok(WaitSpec::Sleep { until })
            }
        }
    }

    pub fn kind(&self) -> WaitKind {
        match self {
            WaitSpec::Event { .. } => WaitKind::Event,
            WaitSpec::Approval(_) => WaitKind::Approval,
            WaitSpec::Sleep { .. } => WaitKind::Sleep,
        }
    }

    /// What the step shows as `waiting_for` (without `until`, which the
    /// engine adds from the step's timeout).
    pub fn waiting_for(&self) -> Value {
        let mut out = match self {
            WaitSpec::Event { spec, .. } => serde_json::to_value(spec),
            WaitSpec::Approval(approval) => serde_json::to_value(approval),
            WaitSpec::Sleep { .. } => Ok(Value::Object(serde_json::Map::new())),
        }
        .unwrap_or_else(|_| Value::Object(serde_json::Map::new()));
        if let Value::Object(map) = &mut out {
            map.insert("kind".into(), Value::String(self.kind().as_str().into()));
            if let WaitSpec::Sleep { until } = self {
                map.insert("until".into(), Value::String(until.to_rfc3339()));
            }
        }
        out
    }
}

/// Checks an approval's settings: what validation and the engine both
/// refuse.
pub fn check_approval(approval: &Approval) -> Result<(), String> {
    if approval.approvers.is_empty() {
        return Err("approvers must name at least one team:, user: or role: entry".into());
    }
    for approver in &approval.approvers {
        check_approver(approver)?;
    }
    if approval.quorum == 0 {
        return Err("quorum must be at least 1".into());
    }
    Ok(())
}

/// An approver entry is `team:T`, `user:U` or `role:R`.
pub fn check_approver(approver: &str) -> Result<(), String> {
    match approver.split_once(':') {
        Some(("team" | "user" | "role", name)) if !name.trim().is_empty() => Ok(()),
        _ => Err(format!(
            "approver {approver:?} must be team:<name>, user:<name> or role:<name>"
        )),
    }
}

/// When a sleep ends: `for` after `now`, or `until`.
pub fn sleep_until(sleep: &Sleep, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    match (&sleep.duration, &sleep.until) {
        (Some(duration), None) => {
            let duration =
                crate::time::parse_duration(duration).map_err(|e| format!("for: {e}"))?;
            Ok(crate::time::deadline_after(now, duration))
        }
        (None, Some(until)) => DateTime::parse_from_rfc3339(until)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("until {until:?} is not an RFC 3339 time: {e}")),
        _ => Err("set exactly one of for (a duration) and until (an RFC 3339 time)".into()),
    }
}

pub use crate::access::Principal;

/// One decision on an approval, as kept and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalDecision {
    pub by: String,
    pub decision: crate::status::Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rendered_with_is_read_per_kind_and_bad_shapes_name_the_problem() {
        let now = Utc::now();
        let spec = WaitSpec::from_rendered(
            WaitKind::Event,
            json!({"type": "com.acme.ready", "lookback": "10m"}),
            now,
        )
        .expect("an event wait");
        assert!(matches!(spec, WaitSpec::Event { lookback: Some(d), .. } if d.as_secs() == 600));
        assert_eq!(spec.waiting_for()["kind"], "event");

        let err = WaitSpec::from_rendered(WaitKind::Approval, json!({"approvers": ["dba"]}), now)
            .expect_err("approver without a kind");
        assert!(err.to_string().contains("team:<name>"), "{err}");
        let err = WaitSpec::from_rendered(
            WaitKind::Approval,
            json!({"approvers": ["team:dba"], "quorum": 0}),
            now,
        )
        .expect_err("zero quorum");
        assert!(err.to_string().contains("quorum"), "{err}");

        let WaitSpec::Sleep { until } =
            WaitSpec::from_rendered(WaitKind::Sleep, json!({"for": "10s"}), now).expect("a sleep")
        else {
            panic!("not a sleep")
        };
        assert_eq!((until - now).num_seconds(), 10);
        let err = WaitSpec::from_rendered(
            WaitKind::Sleep,
            json!({"for": "1s", "until": "2026-01-01T00:00:00Z"}),
            now,
        )
        .expect_err("both");
        assert!(err.to_string().contains("exactly one"), "{err}");
        let err = WaitSpec::from_rendered(WaitKind::Sleep, json!({"until": "tomorrow"}), now)
            .expect_err("not a time");
        assert!(err.to_string().contains("RFC 3339"), "{err}");
    }

    #[test]
    fn principals_match_approver_entries_literally() {
        let alice = Principal::from_actor(" user:alice ");
        assert!(alice.matches(&["team:dba".into(), "user:alice".into()]));
        assert!(!alice.matches(&["team:dba".into()]));
        assert_eq!(WaitKind::of_handler("approval"), Some(WaitKind::Approval));
        assert_eq!(WaitKind::of_handler("http"), None);
    }

    fn promise(steps: &str) -> Result<crate::Promise, crate::SpecErrors> {
        crate::Promise::parse(&format!(
            "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: {{ name: waits, version: 1.0.0 }}\n\
             spec:\n  api: {{ type: object, properties: {{ name: {{ type: string }} }} }}\n  workflow:\n    steps:\n{steps}"
        ))
    }

    #[test]
    fn a_match_comparing_an_event_field_to_the_run_is_indexed_by_that_field() {
        let promise = promise(
            "      - id: ready\n        uses: wait.event\n        with: { type: com.acme.ready, lookback: 10m,\n                match: \"event.source == 'db' && params.name == event.data['name']\" }\n        timeout: 1h\n",
        )
        .expect("valid");
        let step = promise.step("ready").expect("the step");
        let engine = promise.engine_step_of(step).expect("an engine step");
        assert_eq!(engine.kind, WaitKind::Event);
        // The first conjunct compares with a literal, which is also indexable.
        let correlation = engine.correlation.as_ref().expect("indexed");
        assert_eq!(correlation.path_text(), "source");
        let context = crate::expr::RenderContext {
            params: json!({"name": "orders"}),
            ..Default::default()
        };
        assert_eq!(correlation.value(&context).expect("evaluates"), json!("db"));
        assert!(promise.has_engine_steps());
        assert!(
            promise.inbound_subjects().is_empty(),
            "a wait by type adds no subject"
        );
        // `match` is not rendered as a template with the rest of `with`.
        let with = promise
            .with_of(step)
            .expect("compiled")
            .render(&context)
            .expect("renders");
        assert_eq!(with, json!({"type": "com.acme.ready", "lookback": "10m"}));

        let promise = promise_fn_unindexed();
        assert_eq!(promise.inbound_subjects(), vec!["acme.db.ready"]);
        let step = promise.step("ready").expect("the step");
        assert!(
            promise
                .engine_step_of(step)
                .expect("engine")
                .correlation
                .is_none()
        );
    }

    fn promise_fn_unindexed() -> crate::Promise {
        promise(
            "      - id: ready\n        uses: wait.event\n        with: { type: com.acme.ready, subject: acme.db.ready, match: \"event.data.size > 3\" }\n",
        )
        .expect("valid")
    }

    #[test]
    fn engine_steps_are_validated_at_their_paths() {
        let errors = promise(
            "      - id: ok\n        uses: noop\n      - id: w\n        uses: wait.event\n        retry: { max_attempts: 3 }\n        with: { colour: red, lookback: soon, match: \"event.data.x == nope.y\" }\n      - id: a\n        uses: approval\n        with: { approvers: [dba, \"team:dba\"], quorum: 0, allow_requester: maybe }\n      - id: s\n        uses: sleep\n        with: { for: 1m, until: \"2026-01-01T00:00:00Z\" }\n",
        )
        .expect_err("invalid");
        let text = errors.to_string();
        for expected in [
            "spec.workflow.steps[1].retry",
            "spec.workflow.steps[1].with.colour",
            "spec.workflow.steps[1].with.lookback",
            "spec.workflow.steps[1].with.match",
            "spec.workflow.steps[2].with.approvers[0]",
            "spec.workflow.steps[2].with.quorum",
            "spec.workflow.steps[2].with.allow_requester",
            "spec.workflow.steps[3].with",
        ] {
            assert!(text.contains(expected), "{expected} missing from: {text}");
        }
        assert!(!text.contains("approvers[1]"), "{text}");
    }
}
