//! Every kind of Promise problem is reported at its path, all in one answer.

use fulfil_core::{Promise, SpecErrors};

fn errors(yaml: &str) -> Vec<(String, &'static str, String)> {
    match Promise::parse(yaml) {
        Ok(p) => panic!("expected errors, parsed {}", p.metadata.name),
        Err(SpecErrors(errors)) => errors
            .into_iter()
            .map(|e| (e.path, e.code, e.message))
            .collect(),
    }
}

fn has(errors: &[(String, &'static str, String)], path: &str, code: &str, needle: &str) {
    assert!(
        errors
            .iter()
            .any(|(p, c, m)| p == path && *c == code && m.contains(needle)),
        "no {code} at {path} mentioning {needle:?} in {errors:#?}"
    );
}

const VALID: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: postgres-database, version: 1.0.0, owner: team-data }
spec:
  api:
    type: object
    required: [name]
    properties:
      name: { type: string }
      size: { type: string, enum: [small, large], default: small }
  workflow:
    steps:
      - id: provision
        uses: http
        with: { url: "${{ env.PROVISIONER_URL }}/databases", body: { name: "${{ params.name }}" } }
        retry: { max_attempts: 5, initial: 1s, max: 1m, multiplier: 2 }
        timeout: 10m
        compensate: { uses: http, with: { url: "${{ steps.provision.outputs.id }}" } }
      - id: configure
        needs: [provision]
        uses: configure-db
        with: { endpoint: "${{ steps.provision.outputs.endpoint }}" }
      - id: alert
        needs: [configure]
        if: "params.size == 'large'"
        uses: nats.publish
        with: { subject: alerts, data: { db: "${{ params.name }}" } }
  outputs:
    endpoint: "${{ steps.provision.outputs.endpoint }}"
"#;

#[test]
fn valid_promise_parses_with_policies_and_env_references() {
    let p = Promise::parse(VALID).unwrap();
    assert_eq!(p.metadata.name, "postgres-database");
    let provision = p.step("provision").unwrap();
    assert_eq!(p.retry_of(provision).max_attempts, 5);
    assert_eq!(p.timeout_of(provision).as_secs(), 600);
    assert_eq!(p.queue_of(provision), "default");
    assert_eq!(p.env_references(), vec!["PROVISIONER_URL"]);
    // JSON is accepted as well as YAML.
    let json =
        serde_json::to_string(&serde_yaml::from_str::<serde_json::Value>(VALID).unwrap()).unwrap();
    assert_eq!(Promise::parse(&json).unwrap(), p);
}

#[test]
fn structural_problems_name_their_path() {
    let e = errors(
        "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: {name: a, version: '1'}\nspec:\n  workflow:\n    steps:\n      - id: a\n        uses: noop\n        retries: 3\n",
    );
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].0, "spec.workflow.steps[0].retries");
    assert!(e[0].2.contains("retries"), "{e:?}");
    let e = errors("a: [unclosed");
    assert_eq!(e[0].1, "syntax");
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let yaml = r#"
apiVersion: fulfil.dev/v2
kind: Promise
metadata: { name: Bad_Name, version: "1.0 beta" }
spec:
  api: { type: array, items: { type: nonsense } }
  workflow:
    steps:
      - id: a
        uses: noop
        timeout: 10 parsecs
        retry: { max_attempts: 0, initial: soon, multiplier: 0.5 }
      - id: a
        uses: noop
      - id: b
        uses: echo
        needs: [ghost]
        queue: "gpu.large"
      - id: c
        uses: echo
        with: { x: "${{ params.name ==  }}", y: "${{ steps.d.outputs.v }}", z: "${{ secretz.k }}", w: "${{ unterminated" }
        if: "params.size =="
"#;
    let e = errors(yaml);
    has(&e, "apiVersion", "invalid_value", "fulfil.dev/v1");
    has(&e, "metadata.name", "invalid_value", "Bad_Name");
    has(&e, "metadata.version", "invalid_value", "1.0 beta");
    has(&e, "spec.api.items.type", "invalid_schema", "nonsense");
    has(
        &e,
        "spec.workflow.steps[0].timeout",
        "invalid_duration",
        "10 parsecs",
    );
    has(
        &e,
        "spec.workflow.steps[0].retry.max_attempts",
        "invalid_value",
        "at least 1",
    );
    has(
        &e,
        "spec.workflow.steps[0].retry.initial",
        "invalid_duration",
        "soon",
    );
    has(
        &e,
        "spec.workflow.steps[0].retry.multiplier",
        "invalid_value",
        ">= 1",
    );
    has(
        &e,
        "spec.workflow.steps[1].id",
        "duplicate_step",
        "steps[0]",
    );
    has(
        &e,
        "spec.workflow.steps[2].needs[0]",
        "unknown_need",
        "ghost",
    );
    has(
        &e,
        "spec.workflow.steps[2].queue",
        "invalid_value",
        "gpu.large",
    );
}

#[test]
fn expression_problems_are_reported_per_template() {
    let yaml = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: exprs, version: "1" }
spec:
  workflow:
    steps:
      - id: a
        uses: noop
      - id: b
        uses: echo
        with: { x: "${{ params.name ==  }}", y: "${{ steps.d.outputs.v }}", z: "${{ secretz.k }}", w: "${{ unterminated" }
        if: "params.size =="
      - id: c
        needs: [a]
        uses: echo
        with: { ok: "${{ steps.a.outputs.v }}", sibling: "${{ steps.b.outputs.v }}" }
  outputs:
    last: "${{ steps.c.outputs.ok }}"
    missing: "${{ steps.zzz.outputs.ok }}"
"#;
    let e = errors(yaml);
    has(
        &e,
        "spec.workflow.steps[1].with.x",
        "invalid_expression",
        "cannot parse",
    );
    has(
        &e,
        "spec.workflow.steps[1].with.y",
        "unknown_step_reference",
        "steps.d",
    );
    has(
        &e,
        "spec.workflow.steps[1].with.z",
        "unknown_variable",
        "secretz",
    );
    has(
        &e,
        "spec.workflow.steps[1].with.w",
        "invalid_expression",
        "unterminated",
    );
    has(
        &e,
        "spec.workflow.steps[1].if",
        "invalid_expression",
        "cannot parse",
    );
    has(
        &e,
        "spec.workflow.steps[2].with.sibling",
        "unknown_step_reference",
        "steps.b",
    );
    has(
        &e,
        "spec.outputs.missing",
        "unknown_step_reference",
        "steps.zzz",
    );
    assert_eq!(e.len(), 7, "{e:#?}");
}

#[test]
fn cycles_are_named() {
    let yaml = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: cyclic, version: "1" }
spec:
  workflow:
    steps:
      - { id: a, uses: noop, needs: [c] }
      - { id: b, uses: noop, needs: [a] }
      - { id: c, uses: noop, needs: [b] }
      - { id: self, uses: noop, needs: [self] }
"#;
    let e = errors(yaml);
    has(
        &e,
        "spec.workflow.steps[3].needs[0]",
        "cycle",
        "needs itself",
    );
    let yaml = yaml.replace("      - { id: self, uses: noop, needs: [self] }\n", "");
    let e = errors(&yaml);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].1, "cycle");
    assert!(
        e[0].2.contains("a -> b -> c -> a")
            || e[0].2.contains("b -> c -> a -> b")
            || e[0].2.contains("c -> a -> b -> c"),
        "{e:?}"
    );
}

#[test]
fn every_duration_is_bounded_at_its_path() {
    // Accepted by the parser before time::MAX_DURATION was enforced here,
    // and a panic in the engine when it computed the deadline.
    let yaml = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: long, version: "1" }
spec:
  timeout: 300000y
  defaults:
    timeout: 99999999999999s
    schedule_to_start: 367d
    heartbeat_timeout: 400d
    retry: { max_attempts: 2, initial: 1000y, max: 1000y }
  workflow:
    steps:
      - id: a
        uses: noop
        timeout: 300000y
        schedule_to_start: 9999d
        heartbeat_timeout: 367d
        retry: { max_attempts: 2, initial: 1s, max: 367d }
        compensate: { uses: noop, timeout: 367d, retry: { initial: 367d } }
"#;
    let e = errors(yaml);
    for path in [
        "spec.timeout",
        "spec.defaults.timeout",
        "spec.defaults.schedule_to_start",
        "spec.defaults.heartbeat_timeout",
        "spec.defaults.retry.initial",
        "spec.defaults.retry.max",
        "spec.workflow.steps[0].timeout",
        "spec.workflow.steps[0].schedule_to_start",
        "spec.workflow.steps[0].heartbeat_timeout",
        "spec.workflow.steps[0].retry.max",
        "spec.workflow.steps[0].compensate.timeout",
        "spec.workflow.steps[0].compensate.retry.initial",
    ] {
        has(
            &e,
            path,
            "invalid_duration",
            "longer than the maximum of 366d",
        );
    }
    assert_eq!(e.len(), 12, "{e:#?}");

    // The bound itself is accepted, and read back exactly.
    let p = Promise::parse(
        &yaml
            .replace("300000y", "366d")
            .replace("99999999999999s", "366d")
            .replace("367d", "366d")
            .replace("400d", "1h")
            .replace("9999d", "1h")
            .replace("1000y", "1s"),
    )
    .unwrap();
    let step = p.step("a").unwrap();
    assert_eq!(p.run_timeout(), Some(fulfil_core::time::MAX_DURATION));
    assert_eq!(p.timeout_of(step), fulfil_core::time::MAX_DURATION);
    assert_eq!(p.retry_of(step).max, fulfil_core::time::MAX_DURATION);
}
