//! Promise documents are bounded beyond size and depth: every string and
//! key, and each step's `needs`, refused at the path naming the limit.

use fulfil_core::document::{MAX_NEEDS, MAX_STRING_BYTES};
use fulfil_core::{Promise, SpecErrors};

fn promise(steps: &str) -> String {
    format!(
        "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: {{ name: bounded, version: 1.0.0 }}\n\
         spec:\n  api: {{ type: object }}\n  workflow:\n    steps:\n{steps}"
    )
}

fn errors(yaml: &str) -> Vec<(String, &'static str, String)> {
    match Promise::parse(yaml) {
        Ok(p) => panic!("expected errors, parsed {}", p.metadata.name),
        Err(SpecErrors(errors)) => errors
            .into_iter()
            .map(|e| (e.path, e.code, e.message))
            .collect(),
    }
}

fn with_blob(len: usize) -> String {
    promise(&format!(
        "      - {{ id: a, uses: noop, with: {{ blob: \"{}\" }} }}\n",
        "x".repeat(len)
    ))
}

#[test]
fn a_string_over_64_kib_is_refused_at_its_path() {
    Promise::parse(&with_blob(MAX_STRING_BYTES)).expect("at the bound");
    let e = errors(&with_blob(MAX_STRING_BYTES + 1));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].0, "spec.workflow.steps[0].with.blob", "{e:?}");
    assert_eq!(e[0].1, "too_large", "{e:?}");
    assert!(e[0].2.contains(&MAX_STRING_BYTES.to_string()), "{e:?}");
}

#[test]
fn a_long_string_in_an_already_parsed_promise_is_refused_too() {
    let mut value = fulfil_core::document::read(&with_blob(10)).expect("yaml");
    value["spec"]["workflow"]["steps"][0]["with"]["blob"] =
        serde_json::json!("y".repeat(MAX_STRING_BYTES + 1));
    let e = Promise::from_value(value).unwrap_err().0;
    assert_eq!(e[0].path, "spec.workflow.steps[0].with.blob", "{e:?}");
    assert_eq!(e[0].code, "too_large", "{e:?}");
}

#[test]
fn a_key_over_64_kib_is_refused() {
    // YAML itself refuses implicit keys over 1,024 characters; JSON from
    // the API does not.
    let mut value = fulfil_core::document::read(&with_blob(10)).expect("yaml");
    value["spec"]["workflow"]["steps"][0]["with"]["k".repeat(MAX_STRING_BYTES + 1)] =
        serde_json::json!(1);
    let e = Promise::from_value(value).unwrap_err().0;
    assert_eq!(e[0].path, "spec.workflow.steps[0].with", "{e:?}");
    assert_eq!(e[0].code, "too_large", "{e:?}");
    assert!(e[0].message.contains("a key"), "{e:?}");
}

#[test]
fn a_step_needing_more_than_the_bound_is_refused_at_its_needs() {
    let needs = vec!["a"; MAX_NEEDS + 1].join(", ");
    let yaml = promise(&format!(
        "      - {{ id: a, uses: noop }}\n      - {{ id: b, uses: noop, needs: [{needs}] }}\n"
    ));
    let e = errors(&yaml);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].0, "spec.workflow.steps[1].needs", "{e:?}");
    assert_eq!(e[0].1, "too_large", "{e:?}");
    assert!(e[0].2.contains(&format!("at most {MAX_NEEDS}")), "{e:?}");
}
