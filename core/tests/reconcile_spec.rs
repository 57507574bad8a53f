//! `spec.reconcile`: parsed, validated at its paths, compiled to typed
//! values.

use std::time::Duration;

use fulfil_core::promise::ReconcilePolicy;
use fulfil_core::{Promise, SpecErrors};

fn promise(reconcile: &str) -> String {
    format!(
        r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: db, version: 1.0.0 }}
spec:
  workflow:
    steps:
      - {{ id: create, uses: echo }}
{reconcile}
"#
    )
}

fn errors(yaml: &str) -> Vec<(String, &'static str, String)> {
    match Promise::parse(yaml) {
        Ok(p) => panic!("expected errors, parsed {:?}", p.spec.reconcile),
        Err(SpecErrors(errors)) => errors
            .into_iter()
            .map(|e| (e.path, e.code, e.message))
            .collect(),
    }
}

#[test]
fn reconcile_is_compiled_with_its_interval_and_limit() {
    let p =
        Promise::parse(&promise("  reconcile: { every: 10h, max_concurrent: 3 }")).expect("valid");
    assert_eq!(
        p.reconcile(),
        Some(ReconcilePolicy {
            every: Duration::from_secs(36_000),
            max_concurrent: 3
        })
    );
    // max_concurrent defaults to 10; a Promise without the section does
    // not reconcile on a clock.
    let p = Promise::parse(&promise("  reconcile: { every: 90s }")).expect("valid");
    assert_eq!(p.reconcile().map(|r| r.max_concurrent), Some(10));
    assert_eq!(
        p.reconcile().map(|r| r.every),
        Some(Duration::from_secs(90))
    );
    assert_eq!(
        Promise::parse(&promise("")).expect("valid").reconcile(),
        None
    );

    // The stored form keeps it, and compiles it again on the way back.
    let stored = serde_json::to_value(&p).expect("serializes");
    assert_eq!(stored["spec"]["reconcile"]["every"], "90s");
    let back = Promise::from_stored(stored).expect("reads back");
    assert_eq!(back.reconcile(), p.reconcile());
}

#[test]
fn reconcile_problems_are_reported_at_their_paths() {
    let found = errors(&promise("  reconcile: { every: 500ms, max_concurrent: 0 }"));
    assert!(
        found
            .iter()
            .any(|(path, code, message)| path == "spec.reconcile.every"
                && *code == "invalid_duration"
                && message.contains("1s")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|(path, code, _)| path == "spec.reconcile.max_concurrent"
                && *code == "invalid_value"),
        "{found:#?}"
    );

    let found = errors(&promise("  reconcile: { every: often }"));
    assert!(
        found
            .iter()
            .any(|(path, code, _)| path == "spec.reconcile.every" && *code == "invalid_duration"),
        "{found:#?}"
    );

    // Unknown fields and a missing interval are refused by the parser,
    // naming the field.
    let Err(SpecErrors(found)) = Promise::parse(&promise("  reconcile: { evry: 1h }")) else {
        panic!("an unknown field is refused");
    };
    assert!(
        found.iter().any(|e| e.message.contains("evry")),
        "{found:#?}"
    );
    let Err(SpecErrors(found)) = Promise::parse(&promise("  reconcile: { max_concurrent: 2 }"))
    else {
        panic!("every is required");
    };
    assert!(
        found.iter().any(|e| e.message.contains("every")),
        "{found:#?}"
    );
}
