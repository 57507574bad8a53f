//! Expressions are bounded before the CEL parser sees them, and the bound is
//! safe: the deepest expression of every shape that is accepted parses and
//! evaluates on a 2 MiB stack, the size of a tokio worker thread's.

use fulfil_core::Promise;
use fulfil_core::expr::{
    MAX_EXPRESSION_BYTES, MAX_EXPRESSION_OPERATORS, ParsedExpression, RenderContext,
    evaluate_condition, render_value,
};
use serde_json::{Value, json};

/// Runs `f` on a thread with a tokio worker's default stack; a stack
/// overflow aborts the test binary, which fails the test.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .expect("spawning a thread")
        .join()
        .expect("the thread panicked")
}

/// `{"b": {"b": ... "leaf"}}`, `depth` levels.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!("leaf"), |inner, _| json!({ "b": inner }))
}

fn operators(source: &str) -> usize {
    source
        .bytes()
        .filter(|b| b".+-*/%<>=!&|?:([{".contains(b))
        .count()
}

#[test]
fn deepest_accepted_expressions_parse_and_evaluate_on_a_small_stack() {
    let n = MAX_EXPRESSION_OPERATORS;
    let shapes: Vec<String> = vec![
        // Left-leaning chains: as deep as they are long.
        format!("{} > 0", vec!["1"; n].join("+")),
        format!("params{}", ".b".repeat(n)),
        format!("params{}", "['b']".repeat(n)),
        format!("{}1", "-".repeat(n)),
        format!("{}true", "!".repeat(n)),
        format!("{}1", "true ? 1 : ".repeat(n / 2)),
        vec!["true"; n / 2 + 1].join(" && "),
        // Nesting, alone and with a chain inside.
        format!("{}1{}", "(".repeat(n), ")".repeat(n)),
        format!("{}1{}", "[".repeat(n), "]".repeat(n)),
        format!("{}'x'{}", "string(".repeat(n), ")".repeat(n)),
        format!("{}1{}", "{'a': ".repeat(n / 2), "}".repeat(n / 2)),
        format!(
            "{}1{}{}",
            "(".repeat(90),
            "+1".repeat(n - 90),
            ")".repeat(90)
        ),
        format!("{}true{}", "[1].all(x, ".repeat(n / 3), ")".repeat(n / 3)),
    ];
    for source in shapes {
        assert!(
            operators(&source) <= MAX_EXPRESSION_OPERATORS && source.len() <= MAX_EXPRESSION_BYTES,
            "{source} is not within the bounds"
        );
        // Parse errors (CEL's own recursion limit refuses the deepest
        // nesting) and evaluation errors are fine; aborting is not.
        on_small_stack(move || {
            let context = RenderContext {
                params: nested(MAX_EXPRESSION_OPERATORS + 1),
                ..RenderContext::default()
            };
            if let Ok(expression) = ParsedExpression::parse(&source) {
                let _ = expression.evaluate(&context);
                let _ = evaluate_condition(&source, &context);
                let _ = render_value(&json!({ "x": format!("${{{{ {source} }}}}") }), &context);
            }
        });
    }

    // The chain at the bound evaluates to the right answer.
    let at_bound = format!("params{}", ".b".repeat(n));
    let value = on_small_stack(move || {
        ParsedExpression::parse(&at_bound)
            .expect("at the bound")
            .evaluate(&RenderContext {
                params: nested(MAX_EXPRESSION_OPERATORS),
                ..RenderContext::default()
            })
    });
    assert_eq!(value, Ok(json!("leaf")));
}

#[test]
fn oversized_expressions_are_refused_before_parsing() {
    let n = MAX_EXPRESSION_OPERATORS;
    let message = ParsedExpression::parse(&format!("{} > 0", vec!["1"; n + 1].join("+")))
        .expect_err("one operator too many");
    assert!(
        message.contains(&format!("has {} operators", n + 1)),
        "{message}"
    );
    assert!(message.contains(&format!("at most {n}")), "{message}");
    let message = ParsedExpression::parse(&format!("'{}'", "x".repeat(MAX_EXPRESSION_BYTES)))
        .expect_err("too long");
    assert!(message.contains("bytes long"), "{message}");
}

/// The reports of issue 12: PUT of a Promise with these aborted the process
/// (10,000 terms, a 5,000-deep member chain), or accepted it (3,000 terms)
/// and every request then aborted it.
#[test]
fn deep_expressions_in_a_promise_are_refused_at_their_path() {
    let plus = |terms: usize| format!("{} > 0", vec!["1"; terms].join("+"));
    for (field, value) in [
        ("if", plus(10_000)),
        ("if", plus(3_000)),
        ("if", format!("params{} == 1", ".b".repeat(5_000))),
        ("with", format!("{{ x: \"${{{{ {} }}}}\" }}", plus(3_000))),
    ] {
        let yaml = format!(
            "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: {{ name: deep, version: '1' }}\n\
             spec:\n  workflow:\n    steps:\n      - id: a\n        uses: noop\n        {field}: {}\n",
            if field == "if" {
                format!("\"{value}\"")
            } else {
                value.clone()
            }
        );
        let errors = on_small_stack(move || Promise::parse(&yaml).expect_err("refused"));
        let path = if field == "if" {
            "spec.workflow.steps[0].if"
        } else {
            "spec.workflow.steps[0].with.x"
        };
        assert!(
            errors.0.iter().any(|e| e.path == path
                && e.code == "invalid_expression"
                && e.message.contains("at most")
                && e.message.len() < 400),
            "{:?}",
            errors
                .0
                .iter()
                .map(|e| (&e.path, e.code))
                .collect::<Vec<_>>()
        );
    }
    // Run outputs are templates too.
    let yaml = format!(
        "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: {{ name: deep, version: '1' }}\n\
         spec:\n  workflow:\n    steps:\n      - {{ id: a, uses: noop }}\n  outputs:\n    x: \"${{{{ {} }}}}\"\n",
        plus(3_000)
    );
    let errors = on_small_stack(move || Promise::parse(&yaml).expect_err("refused"));
    assert_eq!(errors.0[0].path, "spec.outputs.x");
    assert_eq!(errors.0[0].code, "invalid_expression");
}
