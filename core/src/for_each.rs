//! `for_each`: one step run once per item of a list.
//!
//! A step with `for_each` is one node of the DAG like any other: it starts
//! when its needs are met, and dependents start once it has succeeded. When
//! it starts, its `for_each` expression is evaluated once, over the run's
//! variables, into a list of at most [`MAX_ITEMS`] items; the engine records
//! that list with the step and runs one **instance** per item, named
//! `<id>[<index>]` ([`instance_id`]). An instance is a step of its own as
//! far as dispatch, retries, timeouts and compensation go, with its `with`
//! rendered over the run's variables plus `item` (the item) and `index` (its
//! place in the list, from 0). At most `max_parallel` instances are in flight
//! at once. The step succeeds, with the list of its instances' outputs in
//! index order as its outputs, once every instance did; it fails once an
//! instance failed for good and none is in flight any more.
//!
//! Step ids are `[a-z][a-z0-9_-]*`, so an instance id (`deploy[3]`) can never
//! be the id of a step, and [`parse_instance`] tells the two apart.

use serde_json::Value;

/// Most items a `for_each` list may hold: beyond it the step fails with
/// [`TOO_MANY_ITEMS`] instead of creating more instances than a run view,
/// a console page or one planning round should carry.
pub const MAX_ITEMS: usize = 1000;

/// The variable holding an instance's item.
pub const ITEM: &str = "item";

/// The variable holding an instance's index in the list, from 0.
pub const INDEX: &str = "index";

/// Error code of a `for_each` that evaluated to something other than a list.
pub const NOT_A_LIST: &str = "for_each_not_list";

/// Error code of a `for_each` list longer than [`MAX_ITEMS`].
pub const TOO_MANY_ITEMS: &str = "for_each_too_large";

/// Error code of a `for_each` step one of whose instances failed for good.
pub const INSTANCE_FAILED: &str = "for_each_instance_failed";

/// The id of instance `index` of step `step`: `step[index]`.
pub fn instance_id(step: &str, index: usize) -> String {
    format!("{step}[{index}]")
}

/// The step and index of an instance id (`deploy[3]` is `("deploy", 3)`);
/// `None` for anything else, a step id included. Strict: the index is
/// decimal without leading zeros, so each instance has exactly one id.
pub fn parse_instance(row_id: &str) -> Option<(&str, usize)> {
    let open = row_id.rfind('[')?;
    let digits = row_id[open + 1..].strip_suffix(']')?;
    let well_formed = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !well_formed || open == 0 {
        return None;
    }
    Some((&row_id[..open], digits.parse().ok()?))
}

/// Why a `for_each` value cannot be run over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemsError {
    /// The value is not a list.
    #[error(
        "for_each of step {step} evaluated to {got} {preview}, not a list: it must be a list \
         (e.g. \"${{{{ params.regions }}}}\" where regions is an array)"
    )]
    NotAList {
        step: String,
        /// The JSON type it had: `string`, `object`, ...
        got: &'static str,
        /// The value, cut short.
        preview: String,
    },
    /// The list is longer than [`MAX_ITEMS`].
    #[error(
        "for_each of step {step} evaluated to a list of {count} items; a for_each step runs over \
         at most {MAX_ITEMS}: split the list, or compose Promises"
    )]
    TooMany { step: String, count: usize },
}

impl ItemsError {
    /// The step's error code: [`NOT_A_LIST`] or [`TOO_MANY_ITEMS`]; both
    /// are permanent (the same run variables give the same list).
    pub fn code(&self) -> &'static str {
        match self {
            ItemsError::NotAList { .. } => NOT_A_LIST,
            ItemsError::TooMany { .. } => TOO_MANY_ITEMS,
        }
    }
}

/// The items of step `step`'s evaluated `for_each`.
pub fn items_of(step: &str, value: Value) -> Result<Vec<Value>, ItemsError> {
    match value {
        Value::Array(items) if items.len() > MAX_ITEMS => Err(ItemsError::TooMany {
            step: step.to_string(),
            count: items.len(),
        }),
        Value::Array(items) => Ok(items),
        other => Err(ItemsError::NotAList {
            step: step.to_string(),
            got: json_type(&other),
            preview: preview(&other),
        }),
    }
}

/// The JSON type of `value`, as a message names it.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// `value` as JSON, cut after 80 characters, for messages.
fn preview(value: &Value) -> String {
    const KEEP: usize = 80;
    let text = value.to_string();
    match text.char_indices().nth(KEEP) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn instance_ids_round_trip_and_never_look_like_step_ids() {
        assert_eq!(instance_id("deploy", 0), "deploy[0]");
        assert_eq!(parse_instance("deploy[0]"), Some(("deploy", 0)));
        assert_eq!(parse_instance("de-ploy_2[999]"), Some(("de-ploy_2", 999)));
        for not_one in [
            "deploy",
            "deploy[]",
            "deploy[01]",
            "deploy[-1]",
            "[3]",
            "deploy[3",
            "d[x]",
        ] {
            assert_eq!(parse_instance(not_one), None, "{not_one}");
        }
    }

    #[test]
    fn items_must_be_a_bounded_list() {
        assert_eq!(
            items_of("s", json!(["a", 1])).unwrap(),
            vec![json!("a"), json!(1)]
        );
        assert!(items_of("s", json!([])).unwrap().is_empty());
        let not_list = items_of("deploy", json!("eu-west")).unwrap_err();
        assert_eq!(not_list.code(), NOT_A_LIST);
        let message = not_list.to_string();
        assert!(
            message.contains("step deploy") && message.contains("a string"),
            "{message}"
        );
        assert!(message.contains("\"eu-west\""), "{message}");
        let too_many = items_of("s", Value::Array(vec![json!(1); MAX_ITEMS + 1])).unwrap_err();
        assert_eq!(too_many.code(), TOO_MANY_ITEMS);
        assert!(too_many.to_string().contains("1001 items"), "{too_many}");
        assert_eq!(
            items_of("s", Value::Array(vec![json!(1); MAX_ITEMS]))
                .unwrap()
                .len(),
            MAX_ITEMS
        );
    }
}
