//! `for_each` steps: what a Promise may say about them, and how an
//! instance's input is rendered.

use fulfil_core::expr::{ItemContext, RenderContext};
use fulfil_core::for_each::MAX_ITEMS;
use fulfil_core::{Promise, SpecErrors};
use serde_json::json;

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

fn promise(steps: &str) -> String {
    format!(
        r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: fan-out, version: 1.0.0 }}
spec:
  api: {{ type: object, properties: {{ regions: {{ type: array }} }} }}
  workflow:
    steps:
{steps}
"#
    )
}

const VALID: &str = r#"
      - id: plan
        uses: echo
        with: { regions: "${{ params.regions }}" }
      - id: deploy
        needs: [plan]
        uses: deploy
        for_each: "${{ steps.plan.outputs.regions }}"
        max_parallel: 5
        with: { region: "${{ item }}", slot: "${{ index }}", label: "${{ item }}-${{ index }}" }
        compensate: { uses: undeploy, with: { region: "${{ item }}", id: "${{ steps.deploy.outputs.id }}" } }
      - id: literal
        uses: echo
        for_each: [a, "${{ params.regions[0] }}"]
        with: { x: "${{ item }}" }
      - id: report
        needs: [deploy]
        uses: echo
        with: { all: "${{ steps.deploy.outputs }}", n: "${{ size(steps.deploy.outputs) }}" }
"#;

#[test]
fn a_for_each_step_compiles_and_renders_each_instance_with_its_item_and_index() {
    let p = Promise::parse(&promise(VALID)).unwrap();
    assert!(p.has_for_each());
    let deploy = p.step("deploy").unwrap();
    assert_eq!(p.max_parallel_of(deploy), 5);
    assert_eq!(p.max_parallel_of(p.step("literal").unwrap()), MAX_ITEMS);
    // Instances resolve to their step; step ids to themselves.
    let (step, index) = p.step_of_row("deploy[7]").unwrap();
    assert_eq!((step.id.as_str(), index), ("deploy", Some(7)));
    assert_eq!(
        p.step_of_row("plan").map(|(s, i)| (s.id.as_str(), i)),
        Some(("plan", None))
    );
    assert!(p.step_of_row("plan[0]").is_none(), "plan has no for_each");
    assert!(p.step_of_row("nope[0]").is_none());

    let run = RenderContext {
        params: json!({ "regions": ["eu", "us"] }),
        steps: json!({ "plan": { "status": "succeeded", "outputs": { "regions": ["eu", "us"] } } }),
        ..RenderContext::default()
    };
    let list = p.for_each_of(deploy).unwrap().render(&run).unwrap();
    assert_eq!(list, json!(["eu", "us"]));
    let item = json!("us");
    let input = p
        .with_of(deploy)
        .unwrap()
        .render(&ItemContext {
            run: &run,
            item: &item,
            index: 1,
        })
        .unwrap();
    assert_eq!(input, json!({ "region": "us", "slot": 1, "label": "us-1" }));
    let literal = p.step("literal").unwrap();
    assert_eq!(
        p.for_each_of(literal).unwrap().render(&run).unwrap(),
        json!(["a", "eu"])
    );
    // Stored and read back, it is the same Promise.
    let stored = Promise::from_stored(serde_json::to_value(&p).unwrap()).unwrap();
    assert_eq!(stored, p);
    assert!(stored.has_for_each());
    // A Promise without for_each has none of it.
    let plain = Promise::parse(&promise("      - { id: a, uses: echo }")).unwrap();
    assert!(!plain.has_for_each());
    assert!(plain.step_of_row("a[0]").is_none());
}

#[test]
fn item_and_index_are_refused_outside_a_for_each_steps_with() {
    let e = errors(&promise(
        r#"
      - id: plain
        uses: echo
        with: { x: "${{ item }}" }
      - id: each
        uses: echo
        for_each: "${{ params.regions }}"
        if: "index == 0"
        with: { x: "${{ item }}" }
      - id: self-ref
        uses: echo
        for_each: "${{ [item] }}"
      - id: undo
        uses: echo
        with: {}
        compensate: { uses: echo, with: { i: "${{ index }}" } }
  outputs:
    first: "${{ item }}"
"#,
    ));
    let only = "only the with and compensate.with of a step with for_each";
    has(
        &e,
        "spec.workflow.steps[0].with.x",
        "unknown_variable",
        only,
    );
    has(&e, "spec.workflow.steps[1].if", "unknown_variable", only);
    has(
        &e,
        "spec.workflow.steps[2].for_each",
        "unknown_variable",
        only,
    );
    has(
        &e,
        "spec.workflow.steps[3].compensate.with.i",
        "unknown_variable",
        only,
    );
    has(&e, "spec.outputs.first", "unknown_variable", only);
    assert_eq!(e.len(), 5, "{e:#?}");
}

#[test]
fn for_each_and_max_parallel_are_checked_at_their_paths() {
    let many: Vec<u32> = (0..=MAX_ITEMS as u32).collect();
    let e = errors(&promise(&format!(
        r#"
      - id: text
        uses: echo
        for_each: "regions ${{{{ params.regions }}}}"
      - id: number
        uses: echo
        for_each: 3
      - id: zero
        uses: echo
        for_each: "${{{{ params.regions }}}}"
        max_parallel: 0
      - id: huge
        uses: echo
        for_each: "${{{{ params.regions }}}}"
        max_parallel: 1001
      - id: alone
        uses: echo
        max_parallel: 2
      - id: gate
        uses: approval
        for_each: "${{{{ params.regions }}}}"
        with: {{ approvers: ["team:sre"] }}
      - id: long
        uses: echo
        for_each: {many:?}
      - id: early
        uses: echo
        for_each: "${{{{ steps.late.outputs.list }}}}"
      - id: late
        uses: echo
      - id: secret
        uses: echo
        for_each: "${{{{ secrets.LIST }}}}"
"#
    )));
    has(
        &e,
        "spec.workflow.steps[0].for_each",
        "invalid_value",
        "is text",
    );
    has(
        &e,
        "spec.workflow.steps[1].for_each",
        "invalid_value",
        "not a number",
    );
    has(
        &e,
        "spec.workflow.steps[2].max_parallel",
        "invalid_value",
        "between 1 and 1000, not 0",
    );
    has(
        &e,
        "spec.workflow.steps[3].max_parallel",
        "invalid_value",
        "not 1001",
    );
    has(
        &e,
        "spec.workflow.steps[4].max_parallel",
        "invalid_value",
        "has no for_each",
    );
    has(
        &e,
        "spec.workflow.steps[5].for_each",
        "invalid_value",
        "cannot have for_each",
    );
    has(
        &e,
        "spec.workflow.steps[6].for_each",
        "too_large",
        "1001 items",
    );
    has(
        &e,
        "spec.workflow.steps[7].for_each",
        "unknown_step_reference",
        "steps.late",
    );
    has(
        &e,
        "spec.workflow.steps[9].for_each",
        "unknown_variable",
        "secrets",
    );
}

#[test]
fn the_multi_region_example_is_a_valid_for_each_promise() {
    let p = Promise::parse(include_str!("../../workflows/multi-region.yaml")).unwrap();
    let deploy = p.step("deploy").unwrap();
    assert_eq!(p.max_parallel_of(deploy), 2);
    let run = RenderContext {
        params: json!({ "app": "shop", "regions": ["eu-west", "us-east"] }),
        ..RenderContext::default()
    };
    let item = json!("us-east");
    let input = p
        .with_of(deploy)
        .unwrap()
        .render(&ItemContext {
            run: &run,
            item: &item,
            index: 1,
        })
        .unwrap();
    assert_eq!(input["url"], "https://shop.us-east.example.com");
    assert_eq!(input["order"], 1);
}
