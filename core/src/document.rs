//! Reading a Promise document, within bounds, before any semantic check.
//!
//! A Promise arrives as text from anyone allowed to apply one, so every
//! resource it can make the server spend is bounded here, before the
//! document is deserialized: its size ([`MAX_DOCUMENT_BYTES`]), its nesting
//! ([`MAX_DEPTH`]), its number of YAML nodes ([`MAX_NODES`]) and aliases
//! ([`MAX_ALIASES`], which also stops "billion laughs" expansion). The
//! workflow's step count ([`MAX_STEPS`]) and each step's `needs`
//! ([`MAX_NEEDS`]) are checked by validation, every string and key against
//! [`MAX_STRING_BYTES`] by [`check_strings`], and each expression by
//! [`crate::expr`]. Within these bounds, parsing and validating
//! a Promise takes time roughly linear in its size.
//!
//! YAML is read with `serde-saphyr`, which refuses a key repeated in one
//! mapping (the error names the key and its line) instead of keeping the
//! last one silently. JSON is YAML, so the same reader takes both.

use serde_json::Value;

use crate::validate::SpecError;

/// Largest Promise document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Deepest nesting of mappings and sequences accepted, the document's own
/// levels included (a step's `with` starts at level 6). Every walk over a
/// Promise's values recurses at most this deep.
pub const MAX_DEPTH: usize = 64;

/// Most YAML nodes (scalars, mappings, sequences) in one document, aliases
/// expanded: enough for [`MAX_STEPS`] steps of a dozen fields each.
pub const MAX_NODES: usize = 250_000;

/// Most aliases (`*name`) in one document. A Promise rarely needs any; each
/// one can copy a whole subtree, so few are allowed.
pub const MAX_ALIASES: usize = 100;

/// Most YAML events aliases may replay in one document, all aliases
/// together.
pub const MAX_REPLAYED_EVENTS: usize = 10_000;

/// Most steps in one workflow (`spec.workflow` or `spec.delete`): room for
/// fan-outs of 2,000 and more.
pub const MAX_STEPS: usize = 5_000;

/// Most entries in one step's `needs`: every other step of the largest
/// workflow.
pub const MAX_NEEDS: usize = MAX_STEPS;

/// Longest string (or mapping key) anywhere in a Promise or Schedule, in
/// bytes. Names, descriptions, expressions and `with` values are far
/// shorter; a longer one is data that belongs in an artifact, and would be
/// copied into every task and history entry that carries it.
pub const MAX_STRING_BYTES: usize = 64 * 1024;

fn yaml_options() -> serde_saphyr::Options {
    // Budget and Options are non_exhaustive: start from the defaults.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_nodes = MAX_NODES;
    budget.max_aliases = MAX_ALIASES;
    budget.max_anchors = MAX_ALIASES;
    budget.max_documents = 1;
    budget.flow_nesting_limit = MAX_DEPTH;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.duplicate_keys = serde_saphyr::options::DuplicateKeyPolicy::Error;
    // Aliases share small pieces (a retry policy); replaying more than this
    // is expansion, not sharing, and costs time before the node budget
    // would stop it.
    options.alias_limits.max_total_replayed_events = MAX_REPLAYED_EVENTS;
    // YAML 1.2 scalars, as serde_yaml read them: `no`, `on`, `y` stay
    // strings (a `with: { country: no }` is Norway, not false), and so do
    // `010` and `1_000`, rather than becoming numbers nobody wrote.
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.underscored_numbers_as_strings = true;
    options
}

/// Parses YAML or JSON text into a JSON value, within the bounds above.
pub fn read(text: &str) -> Result<Value, SpecError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(SpecError::new(
            "",
            "too_large",
            format!(
                "the document is {} bytes; at most {MAX_DOCUMENT_BYTES} (1 MiB) are accepted",
                text.len()
            ),
        ));
    }
    serde_saphyr::from_str_with_options::<Value>(text, yaml_options()).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        let (code, message) = match e.without_snippet() {
            serde_saphyr::Error::DuplicateMappingKey { key, .. } => (
                "duplicate_key",
                match key {
                    Some(key) => format!(
                        "key {key:?} appears twice in the same mapping{at}; each key may appear once"
                    ),
                    None => format!("a key appears twice in the same mapping{at}"),
                },
            ),
            serde_saphyr::Error::Budget { breach, .. } => (
                "too_large",
                format!(
                    "the document exceeds a limit{at}: {breach:?}; at most {MAX_DEPTH} levels \
                     of nesting, {MAX_NODES} nodes and {MAX_ALIASES} aliases are accepted"
                ),
            ),
            // The scanner's limit on nested flow collections (`[[[...`),
            // alias replay limits and budgets breached inside an alias
            // (wrapped with the alias's location) report themselves only
            // as text.
            other
                if ["recursion limit", "budget breached", "replay"]
                    .iter()
                    .any(|needle| other.to_string().contains(needle)) =>
            {
                (
                    "too_large",
                    format!(
                        "the document exceeds a limit{at}: {}; at most {MAX_DEPTH} levels of \
                         nesting, {MAX_NODES} nodes and {MAX_ALIASES} aliases expanding to \
                         {MAX_REPLAYED_EVENTS} events are accepted",
                        first_line(&other.to_string())
                    ),
                )
            }
            other => (
                "syntax",
                format!("not valid YAML or JSON{at}: {}", first_line(&other.to_string())),
            ),
        };
        SpecError::new("", code, message)
    })
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or(message)
}

/// Refuses a value nested deeper than [`MAX_DEPTH`], for documents that
/// arrive already parsed (JSON from the API, a stored Promise). Iterative,
/// so the check itself cannot overflow the stack.
pub fn check_depth(value: &Value) -> Result<(), SpecError> {
    let mut stack: Vec<(&Value, usize)> = vec![(value, 1)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth > MAX_DEPTH {
            return Err(SpecError::new(
                "",
                "too_large",
                format!("the document is nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    Ok(())
}

/// Refuses a string or key longer than [`MAX_STRING_BYTES`], naming its
/// path (`spec.workflow.steps[0].with.blob`). Recursive: call it after
/// [`check_depth`], which bounds how deep it goes.
pub fn check_strings(value: &Value) -> Result<(), SpecError> {
    fn walk(value: &Value, path: &mut String) -> Result<(), SpecError> {
        let too_long = |path: &str, what: &str, len: usize| {
            SpecError::new(
                path,
                "too_large",
                format!(
                    "{what} is {len} bytes; strings in a document may be at most \
                     {MAX_STRING_BYTES} bytes (64 KiB)"
                ),
            )
        };
        let len = path.len();
        match value {
            Value::String(text) if text.len() > MAX_STRING_BYTES => {
                Err(too_long(path, "the string", text.len()))
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push_str(&format!("[{i}]"));
                    walk(item, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            Value::Object(map) => {
                for (key, item) in map {
                    if key.len() > MAX_STRING_BYTES {
                        return Err(too_long(path, "a key", key.len()));
                    }
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                    walk(item, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    walk(value, &mut String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_aliases_are_bounded() {
        let many = |n: usize| format!("[{}]", vec!["0"; n].join(","));
        assert!(read(&many(MAX_NODES - 1)).is_ok());
        let e = read(&many(MAX_NODES)).unwrap_err();
        assert_eq!(e.code, "too_large", "{e:?}");
        assert!(e.message.contains("nodes"), "{e:?}");

        // A billion laughs: each level repeats the one before ten times.
        let mut laughs = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for (prev, next) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            laughs.push_str(&format!(
                "{next}: &{next} [{}]\n",
                vec![format!("*{prev}"); 10].join(", ")
            ));
        }
        let e = read(&laughs).unwrap_err();
        assert_eq!(e.code, "too_large", "{e:?}");
        // A few aliases are fine.
        assert!(read("a: &x [1]\nb: *x\n").is_ok());
    }

    #[test]
    fn scalars_are_read_as_yaml_1_2() {
        let value = read("a: no\nb: on\nc: y\nd: 010\ne: 1_000\nf: true\ng: 12\nh: ~\n")
            .expect("valid YAML");
        assert_eq!(
            value,
            serde_json::json!({ "a": "no", "b": "on", "c": "y", "d": "010", "e": "1_000",
                                "f": true, "g": 12, "h": null })
        );
    }

    #[test]
    fn depth_is_counted_like_the_yaml_budget() {
        let nested = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
        let at_bound = read(&nested(MAX_DEPTH)).expect("at the bound");
        assert_eq!(check_depth(&at_bound), Ok(()));
        assert_eq!(read(&nested(MAX_DEPTH + 1)).unwrap_err().code, "too_large");
        let deeper = serde_json::json!([at_bound]);
        assert_eq!(check_depth(&deeper).unwrap_err().code, "too_large");
    }
}
