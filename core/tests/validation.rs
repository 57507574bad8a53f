//! Every kind of Promise problem is reported at its path, all in one answer.

use std::collections::BTreeSet;

use fulfil_core::document::{MAX_DEPTH, MAX_DOCUMENT_BYTES, MAX_STEPS};
use fulfil_core::{Promise, SpecErrors, ValidationContext, VarNames};

fn errors(yaml: &str) -> Vec<(String, &'static str, String)> {
    errors_with(yaml, &ValidationContext::default())
}

fn errors_with(yaml: &str, context: &ValidationContext) -> Vec<(String, &'static str, String)> {
    match Promise::parse_with(yaml, context) {
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
        with: { url: "${{ vars.provisioner_url }}/databases", body: { name: "${{ params.name }}" } }
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

fn provisioner_url() -> ValidationContext {
    ValidationContext::with_vars(BTreeSet::from(["provisioner_url".to_string()]))
}

#[test]
fn valid_promise_parses_with_policies_and_var_references() {
    let p = Promise::parse_with(VALID, &provisioner_url()).unwrap();
    assert_eq!(p.metadata.name, "postgres-database");
    let provision = p.step("provision").unwrap();
    assert_eq!(p.retry_of(provision).max_attempts, 5);
    assert_eq!(p.timeout_of(provision).as_secs(), 600);
    assert_eq!(p.queue_of(provision), "default");
    assert_eq!(p.var_references(), vec!["provisioner_url"]);
    // JSON is accepted as well as YAML.
    let json = serde_json::to_string(&serde_json::to_value(&p).unwrap()).unwrap();
    assert_eq!(Promise::parse_with(&json, &provisioner_url()).unwrap(), p);
    // A stored Promise is read back as it was, without validating again.
    assert_eq!(
        Promise::from_stored(serde_json::to_value(&p).unwrap()).unwrap(),
        p
    );
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
    assert!(e[0].2.contains("line 1"), "{e:?}");
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

#[test]
fn vars_must_be_exposed_and_env_is_gone() {
    // The engine's environment used to be readable as env.X (defect 7).
    let yaml = VALID.replace(
        "compensate: { uses: http, with: { url: \"${{ steps.provision.outputs.id }}\" } }",
        "compensate: { uses: http, with: { url: \"${{ env.DATABASE_URL }}\", r: \"${{ vars.region }}\" } }",
    );
    let e = errors_with(&yaml, &provisioner_url());
    has(
        &e,
        "spec.workflow.steps[0].compensate.with.url",
        "unknown_variable",
        "read vars.<name> instead",
    );
    has(
        &e,
        "spec.workflow.steps[0].compensate.with.r",
        "unknown_var",
        "vars.region, which is not exposed; exposed: provisioner_url",
    );
    assert_eq!(e.len(), 2, "{e:#?}");

    // Without a deployment's vars, none is known...
    let e = errors(VALID);
    has(
        &e,
        "spec.workflow.steps[0].with.url",
        "unknown_var",
        "FULFIL_VAR_PROVISIONER_URL",
    );
    // ...unless the caller says any name will do.
    let any = ValidationContext {
        vars: VarNames::Any,
    };
    assert!(Promise::parse_with(VALID, &any).is_ok());
}

#[test]
fn duplicate_keys_are_refused_with_key_and_line() {
    // The YAML reader used to keep the last value silently (defect 9).
    let yaml = VALID.replacen(
        "        timeout: 10m\n",
        "        timeout: 10m\n        timeout: 20m\n",
        1,
    );
    let e = errors_with(&yaml, &provisioner_url());
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].1, "duplicate_key");
    assert!(
        e[0].2.contains("\"timeout\"") && e[0].2.contains("line 19"),
        "{e:?}"
    );
    // In free-form maps too (with, api), where serde saw no duplicate.
    let yaml = VALID.replacen(
        "body: { name: \"${{ params.name }}\" }",
        "body: { name: a, name: b }",
        1,
    );
    let e = errors_with(&yaml, &provisioner_url());
    assert_eq!(e[0].1, "duplicate_key", "{e:?}");
    assert!(e[0].2.contains("\"name\""), "{e:?}");
}

/// A Promise with `steps` given as YAML lines, each needing the one before.
fn chain(steps: usize, with: &str) -> String {
    let mut yaml = String::from(
        "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: { name: chain, version: '1' }\nspec:\n  workflow:\n    steps:\n      - { id: s0, uses: noop }\n",
    );
    for i in 1..steps {
        yaml.push_str(&format!(
            "      - {{ id: s{i}, uses: noop, needs: [s{}], with: {with} }}\n",
            i - 1
        ));
    }
    yaml
}

#[test]
fn documents_are_bounded_in_size_depth_and_steps() {
    // Size.
    let big = format!("{VALID}\n#{}", "x".repeat(MAX_DOCUMENT_BYTES));
    let e = errors(&big);
    assert_eq!((e[0].1, e.len()), ("too_large", 1), "{e:?}");

    // Depth, in YAML and in an already parsed JSON value. A Promise nested
    // 100,000 levels deep took 52 s to refuse.
    let deep = |levels: usize| {
        VALID.replace(
            "body: { name: \"${{ params.name }}\" }",
            &format!("body: {}1{}", "[".repeat(levels), "]".repeat(levels)),
        )
    };
    let e = errors(&deep(100_000));
    assert_eq!((e[0].1, e.len()), ("too_large", 1), "{e:?}");
    assert!(e[0].2.contains(&MAX_DEPTH.to_string()), "{e:?}");
    // The document's own levels above `body` leave room for this much.
    assert!(Promise::parse_with(&deep(MAX_DEPTH - 7), &provisioner_url()).is_ok());
    let mut value =
        serde_json::to_value(Promise::parse_with(VALID, &provisioner_url()).unwrap()).unwrap();
    let mut inner = serde_json::json!(1);
    for _ in 0..MAX_DEPTH {
        inner = serde_json::json!([inner]);
    }
    value["spec"]["workflow"]["steps"][0]["with"]["body"] = inner;
    let e = Promise::from_value(value).unwrap_err().0;
    assert_eq!(e[0].code, "too_large", "{e:?}");

    // Steps: the bound is accepted, one more is refused at its path.
    assert!(Promise::parse(&chain(MAX_STEPS, "{}")).is_ok());
    let e = errors(&chain(MAX_STEPS + 1, "{}"));
    has(&e, "spec.workflow.steps", "too_large", "at most 5000");
    assert_eq!(e.len(), 1, "{e:?}");

    // Every problem is reported, up to a hundred.
    let e = errors(&chain(500, "{ x: \"${{ nope }}\" }"));
    assert_eq!(e.len(), 101);
    has(&e, "", "too_many_errors", "399 more");
}

#[test]
fn validation_of_long_chains_reading_far_upstream_is_linear_enough() {
    // Each step reads its direct need and the first step: a reachability
    // check per reference. Computing every step's ancestors made a
    // 10,000-step chain take 7.5 s; no timing is asserted here, but a
    // quadratic walk would make this test crawl.
    let p = Promise::parse(&chain(
        MAX_STEPS,
        "{ a: \"${{ steps.s0.outputs }}\", b: \"${{ size(steps) }}\" }",
    ))
    .unwrap();
    assert_eq!(p.spec.workflow.steps.len(), MAX_STEPS);
    let e = errors(&chain(50, "{ late: \"${{ steps.s49.outputs }}\" }"));
    // Every step but the last reads a step downstream of it.
    assert_eq!(e.len(), 49, "{e:#?}");
    has(
        &e,
        "spec.workflow.steps[1].with.late",
        "unknown_step_reference",
        "it needs s0 and what they need",
    );
}

#[test]
fn settings_are_compiled_once_with_defaults_resolved() {
    let yaml = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: compiled, version: "1" }
spec:
  timeout: 2h
  defaults:
    timeout: 1m
    heartbeat_timeout: 30s
    retry: { max_attempts: 3, initial: 2s }
  workflow:
    steps:
      - id: a
        uses: noop
        compensate: { uses: noop, timeout: 5s }
      - id: b
        uses: noop
        needs: [a]
        timeout: 10s
        schedule_to_start: 1m
        retry: { max_attempts: 7 }
        compensate: { uses: noop, retry: { max_attempts: 9 } }
  delete:
    steps:
      - { id: a, uses: noop, timeout: 3s }
"#;
    let p = Promise::parse(yaml).unwrap();
    let (a, b) = (p.step("a").unwrap(), p.step("b").unwrap());
    let secs = std::time::Duration::from_secs;
    assert_eq!(p.run_timeout(), Some(secs(7200)));
    assert_eq!(p.timeout_of(a), secs(60));
    assert_eq!(p.timeout_of(b), secs(10));
    assert_eq!(p.heartbeat_timeout_of(b), Some(secs(30)));
    assert_eq!(p.schedule_to_start_of(a), None);
    assert_eq!(p.schedule_to_start_of(b), Some(secs(60)));
    assert_eq!(
        (p.retry_of(a).max_attempts, p.retry_of(a).initial),
        (3, secs(2))
    );
    assert_eq!(p.retry_of(b).max_attempts, 7);
    let (ca, cb) = (
        a.compensate.as_ref().unwrap(),
        b.compensate.as_ref().unwrap(),
    );
    assert_eq!(p.compensation_timeout_of(ca), secs(5));
    assert_eq!(p.compensation_timeout_of(cb), secs(60));
    assert_eq!(p.compensation_retry_of(ca).max_attempts, 3);
    assert_eq!(p.compensation_retry_of(cb).max_attempts, 9);
    // A delete step is told apart from the workflow step of the same id.
    let delete_a = &p.spec.delete.as_ref().unwrap().steps[0];
    assert_eq!(p.timeout_of(delete_a), secs(3));
    // A copy of a step is found by its id.
    assert_eq!(p.timeout_of(&b.clone()), secs(10));

    // Read back from the store, the same; a stored duration that does not
    // compile is an error, never a default.
    let stored = serde_json::to_value(&p).unwrap();
    assert_eq!(Promise::from_stored(stored.clone()).unwrap(), p);
    let mut corrupt = stored;
    corrupt["spec"]["workflow"]["steps"][1]["timeout"] = "soon".into();
    let error = Promise::from_stored(corrupt).unwrap_err().to_string();
    assert!(error.contains("soon"), "{error}");
}

#[test]
fn expressions_are_compiled_once_and_rendered_without_parsing() {
    use fulfil_core::expr::{
        CompiledTemplate, RenderContext, RenderError, evaluate_condition, parses_on_this_thread,
        render_value,
    };
    use serde_json::json;

    let yaml = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: compiled-expressions, version: "1" }
spec:
  workflow:
    steps:
      - id: a
        uses: noop
        if: "${{ params.n > 1 }}"
        with:
          n: "${{ params.n + 1 }}"
          text: "n=${{ params.n }}, name=${{ params.name }}"
          plain: [1, "two", { three: true }]
        compensate: { uses: noop, with: { undo: "${{ steps.a.outputs.id }}" } }
  outputs:
    id: "${{ steps.a.outputs.id }}"
"#;
    // Six expressions; validation parses each, and so does compiling.
    let before = parses_on_this_thread();
    let p = Promise::parse(yaml).unwrap();
    assert_eq!(parses_on_this_thread() - before, 12);
    // Read back from the store: compiled once, without validation.
    let stored = serde_json::to_value(&p).unwrap();
    let before = parses_on_this_thread();
    let p = Promise::from_stored(stored.clone()).unwrap();
    assert_eq!(parses_on_this_thread() - before, 6);

    let context = RenderContext {
        params: json!({ "n": 2, "name": "x" }),
        steps: json!({ "a": { "status": "succeeded", "outputs": { "id": "i-1" } } }),
        ..RenderContext::default()
    };
    let a = p.step("a").unwrap();
    let raw_with = a.with.clone();
    // Rendering, from a clone too, parses nothing and renders what the
    // compile-per-call helpers render.
    let before = parses_on_this_thread();
    let copy = p.clone();
    for promise in [&p, &copy] {
        let a = promise.step("a").unwrap();
        let with = promise.with_of(a).unwrap().render(&context).unwrap();
        assert_eq!(
            with,
            json!({ "n": 3, "text": "n=2, name=x", "plain": [1, "two", { "three": true }] })
        );
        assert!(promise.condition_of(a).unwrap().evaluate(&context).unwrap());
        let undo = promise.compensation_with_of(a).unwrap();
        assert_eq!(undo.render(&context).unwrap(), json!({ "undo": "i-1" }));
        let [(name, output)] = promise.compiled_outputs() else {
            panic!("one output")
        };
        assert_eq!(
            (name.as_str(), output.render(&context).unwrap()),
            ("id", json!("i-1"))
        );
    }
    assert_eq!(
        parses_on_this_thread(),
        before,
        "nothing is parsed at run time"
    );
    assert_eq!(render_value(&raw_with, &context).unwrap()["n"], json!(3));
    assert!(evaluate_condition("${{ params.n > 1 }}", &context).unwrap());

    // A stored expression that does not parse (validation would refuse it)
    // still loads, and fails when rendered with the error it always had.
    let mut corrupt = stored;
    corrupt["spec"]["workflow"]["steps"][0]["with"]["n"] = "${{ params.n + }}".into();
    corrupt["spec"]["workflow"]["steps"][0]["with"]["text"] = "${{ params.n".into();
    let p = Promise::from_stored(corrupt.clone()).unwrap();
    let a = p.step("a").unwrap();
    let compiled = p.with_of(a).unwrap().render(&context).unwrap_err();
    let raw = render_value(&corrupt["spec"]["workflow"]["steps"][0]["with"], &context);
    assert_eq!(Err(compiled.clone()), raw);
    assert!(matches!(compiled, RenderError::Parse { .. }), "{compiled}");
    assert!(matches!(
        CompiledTemplate::compile(&json!("${{ params.n")),
        CompiledTemplate::Invalid(RenderError::Parse { .. })
    ));
}
