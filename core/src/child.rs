//! Compound Promises: a step `uses: promise` files a request against
//! another Promise (its *child*) and succeeds with the child run's outputs.
//!
//! ```yaml
//! - id: database
//!   uses: promise
//!   with:
//!     promise: postgres-database          # a literal name
//!     params: { name: "${{ params.app }}-db", size: small }
//! ```
//!
//! This module is the language of such steps: what their `with` accepts
//! ([`ChildWith`]), which Promises a Promise files requests against
//! ([`references`]), and the cycle check run when a Promise is applied
//! ([`find_cycle`]). The engine runs them (`fulfil_engine::run::child`).
//!
//! The child's Promise must be named literally, so the graph of which
//! Promise files which is known when a Promise is applied and a cycle
//! (`a` files `b`, `b` files `a`) is refused then, never found at run time
//! as an endless chain of requests. [`MAX_DEPTH`] bounds the chain anyway,
//! for a cycle made by two applies racing each other.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::promise::Promise;

/// `uses` of a step that files a child request.
pub const PROMISE: &str = "promise";

/// How deep requests may nest (a parent's child's child...): a child
/// filed deeper than this fails its step with [`TOO_DEEP`].
pub const MAX_DEPTH: u32 = 16;

/// Error code of a promise step whose child request could not be filed
/// (unknown Promise, parameters its schema refuses, a policy denial).
pub const CHILD_REFUSED: &str = "child_refused";
/// Error code of a promise step whose child run did not succeed.
pub const CHILD_FAILED: &str = "child_failed";
/// Error code of a promise step whose child request was deleted before
/// its run succeeded.
pub const CHILD_DELETED: &str = "child_deleted";
/// Error code of a promise step filed deeper than [`MAX_DEPTH`].
pub const TOO_DEEP: &str = "child_too_deep";

/// Whether `uses` names a step that files a child request.
pub fn is_promise_step(uses: &str) -> bool {
    uses == PROMISE
}

/// The rendered `with` of a promise step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildWith {
    /// The child's Promise.
    pub promise: String,
    /// The child request's parameters, validated against that Promise's
    /// schema when the step starts.
    #[serde(default = "empty_params")]
    pub params: Value,
}

fn empty_params() -> Value {
    Value::Object(serde_json::Map::new())
}

impl ChildWith {
    /// Reads a step's rendered `with`; the error names what is wrong.
    pub fn from_rendered(with: Value) -> Result<ChildWith, String> {
        let child: ChildWith =
            serde_json::from_value(with).map_err(|e| format!("with of a promise step: {e}"))?;
        if !child.params.is_object() {
            return Err(format!(
                "with.params of a promise step must be an object, got {}",
                crate::for_each::json_type(&child.params)
            ));
        }
        Ok(child)
    }
}

/// Where a child request comes from: recorded on the child (`request.parent`
/// in its runs' context) and on its request row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    pub request_id: crate::ids::RequestId,
    pub run_id: crate::ids::RunId,
    pub step: String,
    /// The parent step's attempt that filed it.
    pub attempt: i32,
    /// That attempt's task id: what the parent's timers name.
    pub task_id: crate::ids::TaskId,
    /// 1 for a child of a request filed by a person or a system.
    pub depth: u32,
}

impl ParentLink {
    /// The link a run's context holds, if the run's request is a child.
    pub fn of_context(context: &Value) -> Option<ParentLink> {
        let parent = context.get("request")?.get("parent")?;
        serde_json::from_value(parent.clone()).ok()
    }

    /// The idempotency key of the child request: one child per parent run,
    /// step and attempt, however often the engine restarts or replays the
    /// attempt's start. An operator's retry of the step is a new attempt,
    /// and files a new child (its compensation deleted the old one).
    pub fn idempotency_key(&self) -> String {
        idempotency_key(self.run_id, &self.step, self.attempt)
    }
}

/// The idempotency key of the child filed by `attempt` of `step` of run
/// `run_id`.
pub fn idempotency_key(run_id: crate::ids::RunId, step: &str, attempt: i32) -> String {
    format!("parent:{run_id}:{step}:{attempt}")
}

/// The depth of the requests a run with `context` files: one more than its
/// own.
pub fn child_depth(context: &Value) -> u32 {
    ParentLink::of_context(context).map_or(1, |p| p.depth.saturating_add(1))
}

/// The Promises `promise` files requests against (its workflow's and its
/// delete workflow's promise steps), by literal name.
pub fn references(promise: &Promise) -> BTreeSet<String> {
    promise
        .spec
        .workflow
        .steps
        .iter()
        .chain(promise.spec.delete.iter().flat_map(|d| d.steps.iter()))
        .filter(|s| is_promise_step(&s.uses))
        .filter_map(|s| s.with.get("promise").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// A cycle through `applying` in the graph of which Promise files which,
/// given every stored Promise's references (`applying`'s own as it is
/// being applied), as `a -> b -> a` in filing order. A cycle among stored
/// Promises alone is not `applying`'s fault and is not reported.
pub fn find_cycle(
    applying: &str,
    refs: &BTreeMap<String, BTreeSet<String>>,
) -> Option<Vec<String>> {
    fn walk(
        at: &str,
        target: &str,
        refs: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in refs.get(at).into_iter().flatten() {
            if next == target {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(next, target, refs, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![applying.to_string()];
    let mut seen = BTreeSet::new();
    walk(applying, applying, refs, &mut path, &mut seen).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(edges: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        edges
            .iter()
            .map(|(from, to)| (from.to_string(), to.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn a_cycle_through_the_applied_promise_is_told_from_it() {
        let graph = refs(&[("app", &["db"]), ("db", &["backup"]), ("backup", &["app"])]);
        assert_eq!(
            find_cycle("db", &graph),
            Some(vec![
                "db".into(),
                "backup".into(),
                "app".into(),
                "db".into()
            ])
        );
    }

    #[test]
    fn a_promise_filing_itself_is_a_cycle() {
        let graph = refs(&[("loop", &["loop"])]);
        assert_eq!(
            find_cycle("loop", &graph),
            Some(vec!["loop".into(), "loop".into()])
        );
    }

    #[test]
    fn sharing_a_child_is_not_a_cycle_and_unknown_children_are_ignored() {
        let graph = refs(&[
            ("a", &["db", "cache"]),
            ("b", &["db"]),
            ("db", &["not-applied-yet"]),
        ]);
        assert_eq!(find_cycle("a", &graph), None);
        assert_eq!(find_cycle("db", &graph), None);
    }

    #[test]
    fn a_cycle_elsewhere_is_not_blamed_on_the_applied_promise() {
        let graph = refs(&[
            ("x", &["y"]),
            ("y", &["x"]),
            ("app", &["db"]),
            ("db", &["app"]),
        ]);
        let cycle = find_cycle("app", &graph);
        assert_eq!(cycle, Some(vec!["app".into(), "db".into(), "app".into()]));
        let graph = refs(&[("x", &["y"]), ("y", &["x"]), ("app", &["db"])]);
        assert_eq!(find_cycle("app", &graph), None);
    }

    #[test]
    fn with_names_what_is_wrong() {
        let ok = ChildWith::from_rendered(serde_json::json!({"promise": "db"})).unwrap();
        assert_eq!(ok.params, serde_json::json!({}));
        let e = ChildWith::from_rendered(serde_json::json!({"promise": "db", "params": [1]}))
            .unwrap_err();
        assert!(e.contains("must be an object"), "{e}");
        let e =
            ChildWith::from_rendered(serde_json::json!({"promise": "db", "extra": 1})).unwrap_err();
        assert!(e.contains("extra"), "{e}");
    }
}
