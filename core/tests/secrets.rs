//! Secret references: where a Promise may write `${{ secrets.NAME }}`, how
//! it renders (to its own text), and which strings a task marks for its
//! worker to resolve.

use fulfil_core::expr::{CompiledTemplate, RenderContext};
use fulfil_core::wire::{SecretPart, SecretSlot};
use fulfil_core::{Promise, SpecErrors};
use serde_json::json;

fn context() -> RenderContext {
    RenderContext {
        params: json!({"name": "orders", "sneaky": "${{ secrets.api_token }}"}),
        request: json!({"id": "r1"}),
        vars: json!({}),
        steps: json!({}),
    }
}

fn text(t: &str) -> SecretPart {
    SecretPart::Text(t.into())
}

fn secret(name: &str) -> SecretPart {
    SecretPart::Secret(name.into())
}

#[test]
fn a_reference_renders_to_its_own_text_and_marks_a_slot() {
    let with = CompiledTemplate::compile(&json!({
        "headers": {"authorization": "Bearer ${{ secrets.api_token }}"},
        "token": "${{secrets.api_token}}",
        "url": "https://x/${{ params.name }}?k=${{ secrets.key_1 }}&v=1",
        "plain": "${{ params.name }}",
    }));
    let (input, slots) = with.render_with_secrets(&context()).unwrap();
    assert_eq!(
        input,
        json!({
            "headers": {"authorization": "Bearer ${{ secrets.api_token }}"},
            "token": "${{ secrets.api_token }}",
            "url": "https://x/orders?k=${{ secrets.key_1 }}&v=1",
            "plain": "orders",
        })
    );
    assert_eq!(
        slots,
        vec![
            SecretSlot {
                pointer: "/headers/authorization".into(),
                parts: vec![text("Bearer "), secret("api_token")],
            },
            SecretSlot {
                pointer: "/token".into(),
                parts: vec![secret("api_token")],
            },
            SecretSlot {
                pointer: "/url".into(),
                parts: vec![text("https://x/orders?k="), secret("key_1"), text("&v=1")],
            },
        ]
    );
    // Plain rendering gives the same input and needs no slots.
    assert_eq!(with.render(&context()).unwrap(), input);
}

#[test]
fn pointers_escape_odd_keys_and_index_arrays() {
    let with = CompiledTemplate::compile(&json!({
        "a/b": {"c~d": ["x", {"": "${{ secrets.s }}"}]},
        "": "${{ secrets.t }}${{ secrets.u }}",
    }));
    let (_, slots) = with.render_with_secrets(&context()).unwrap();
    let mut pointers: Vec<&str> = slots.iter().map(|s| s.pointer.as_str()).collect();
    pointers.sort_unstable();
    assert_eq!(pointers, vec!["/", "/a~1b/c~0d/1/"]);
    let both = slots.iter().find(|s| s.pointer == "/").unwrap();
    assert_eq!(both.parts, vec![secret("t"), secret("u")]);
    let (_, whole) = CompiledTemplate::compile(&json!("${{ secrets.s }}"))
        .render_with_secrets(&context())
        .unwrap();
    assert_eq!(whole[0].pointer, "");
}

#[test]
fn a_param_holding_reference_text_is_not_a_slot() {
    let with = CompiledTemplate::compile(&json!({
        "authorization": "Bearer ${{ params.sneaky }}",
        "whole": "${{ params.sneaky }}",
    }));
    let (input, slots) = with.render_with_secrets(&context()).unwrap();
    assert_eq!(input["whole"], "${{ secrets.api_token }}");
    assert!(slots.is_empty(), "{slots:?}");
    // A slot's text around a reference stays text, even if a param put
    // reference-looking text there.
    let mixed = CompiledTemplate::compile(&json!("${{ params.sneaky }}:${{ secrets.real }}"));
    let (_, slots) = mixed.render_with_secrets(&context()).unwrap();
    assert_eq!(
        slots[0].parts,
        vec![text("${{ secrets.api_token }}:"), secret("real")]
    );
}

fn promise(steps: &str, extra: &str) -> Result<Promise, SpecErrors> {
    Promise::parse(&format!(
        r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: p, version: 1.0.0, owner: team-a }}
spec:
  workflow:
    steps:
{steps}
{extra}
"#
    ))
}

fn refusals(result: Result<Promise, SpecErrors>) -> Vec<(String, &'static str, String)> {
    match result {
        Ok(_) => panic!("expected the Promise to be refused"),
        Err(SpecErrors(errors)) => errors
            .into_iter()
            .map(|e| (e.path, e.code, e.message))
            .collect(),
    }
}

fn refused_at(errors: &[(String, &'static str, String)], path: &str, needle: &str) {
    assert!(
        errors
            .iter()
            .any(|(p, _, m)| p == path && m.contains(needle)),
        "no refusal at {path} mentioning {needle:?} in {errors:#?}"
    );
}

#[test]
fn worker_steps_and_compensations_may_reference_secrets() {
    promise(
        r#"      - id: call
        uses: http
        with:
          url: "http://127.0.0.1:9/x"
          headers: { authorization: "Bearer ${{ secrets.api_token }}" }
          token: "${{ secrets.api_token }}"
        compensate:
          uses: http
          with: { url: "http://127.0.0.1:9/y", headers: { k: "${{ secrets.other }}" } }"#,
        "",
    )
    .unwrap();
}

#[test]
fn secrets_anywhere_else_or_computed_are_refused_at_their_path() {
    let errors = refusals(promise(
        r#"      - id: call
        uses: http
        if: "secrets.flag == 'on'"
        with:
          a: "${{ secrets.a + 'x' }}"
          b: "x ${{ size(secrets.a) }}"
          c: "${{ secrets['a'] }}"
          d: "${{ secrets.a-b }}"
      - id: approve
        uses: approval
        with: { approvers: ["team:a"], message: "token ${{ secrets.a }}" }
      - id: nap
        uses: sleep
        with: { for: "${{ secrets.delay }}" }"#,
        r#"  outputs:
    leaked: "${{ secrets.a }}"
  triggers:
    - name: t
      type: x
      params: { name: "${{ secrets.a }}" }"#,
    ));
    let computed = "referenced whole";
    refused_at(
        &errors,
        "spec.workflow.steps[0].if",
        "only a worker step's with",
    );
    refused_at(&errors, "spec.workflow.steps[0].with.a", computed);
    refused_at(&errors, "spec.workflow.steps[0].with.b", computed);
    refused_at(&errors, "spec.workflow.steps[0].with.c", computed);
    refused_at(&errors, "spec.workflow.steps[0].with.d", computed);
    refused_at(
        &errors,
        "spec.workflow.steps[1].with.message",
        "only a worker step's with",
    );
    refused_at(
        &errors,
        "spec.workflow.steps[2].with.for",
        "only a worker step's with",
    );
    refused_at(&errors, "spec.outputs.leaked", "only a worker step's with");
    refused_at(
        &errors,
        "spec.triggers[0].params.name",
        "only a worker step's with",
    );
}
