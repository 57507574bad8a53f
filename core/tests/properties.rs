//! Property tests: every parser of outside input returns an error instead
//! of panicking, whatever it is given, and structurally valid Promises with
//! random DAGs of steps are accepted.

use std::collections::BTreeSet;

use fulfil_core::expr::{
    ParsedExpression, RenderContext, Template, evaluate_condition, render_value,
};
use fulfil_core::wire::{ProgressMessage, ResultMessage, TaskMessage};
use fulfil_core::{Graph, Promise, ValidationContext, VarNames, Vars};
use proptest::prelude::*;
use serde_json::json;

/// Fragments that steer random text into the interesting corners of YAML,
/// JSON, templates and CEL.
const FRAGMENTS: &[&str] = &[
    "apiVersion: fulfil.dev/v1\n",
    "kind: Promise\n",
    "metadata: {name: a, version: '1'}\n",
    "spec:\n",
    "  workflow:\n",
    "    steps:\n",
    "      - ",
    "id: a",
    "uses: noop",
    "needs: [a]",
    "timeout: ",
    "366d",
    "99999999999999s",
    "with: ",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    " ",
    "\n",
    "  ",
    "- ",
    "&x ",
    "*x",
    "<<: *x",
    "!!str ",
    "'",
    "\"",
    "\\",
    "${{",
    "}}",
    "${{ ",
    "steps.a.outputs",
    "params.x",
    "vars.v",
    "env.HOME",
    "+1",
    ".b",
    "['k']",
    "(",
    ")",
    "size(",
    "all(x, ",
    "? 1 : ",
    "&&",
    "==",
    "\u{feff}",
    "\u{0}",
    "é",
    "#",
    "---\n",
    "...\n",
];

/// `cases` cases; failures are shrunk and reported, not written to files
/// beside the tests.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..120).prop_map(|parts| parts.concat())
}

fn context() -> RenderContext {
    RenderContext {
        params: json!({ "x": 1, "name": "n", "tags": ["a"] }),
        request: json!({ "id": "r" }),
        vars: json!({ "v": "value" }),
        steps: json!({ "a": { "status": "succeeded", "outputs": { "k": [1, 2] } } }),
    }
}

fn any_vars() -> ValidationContext {
    ValidationContext {
        vars: VarNames::Any,
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn promise_parsing_never_panics(text in prop_oneof![soup(), any::<String>()]) {
        let _ = Promise::parse(&text);
        let _ = Promise::parse_with(&text, &any_vars());
        let _ = Vars::from_file_text(&text);
    }

    #[test]
    fn promise_parsing_of_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Promise::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn expressions_and_templates_never_panic(text in prop_oneof![soup(), any::<String>()]) {
        let _ = Template::parse(&text);
        if let Ok(expression) = ParsedExpression::parse(&text) {
            let _ = expression.evaluate(&context());
            let _ = expression.variables();
            let _ = expression.selected_fields("steps");
        }
        let _ = evaluate_condition(&text, &context());
        let _ = render_value(&json!({ "x": text, "y": [text] }), &context());
    }

    #[test]
    fn durations_never_panic(text in prop_oneof![
        any::<String>(),
        "[0-9]{1,30}(ns|us|ms|s|m|h|d|w|M|y)( [0-9]{1,20}[a-z]{1,3}){0,3}",
    ]) {
        if let Ok(duration) = fulfil_core::time::parse_duration(&text) {
            prop_assert!(duration <= fulfil_core::time::MAX_DURATION);
        }
        let _ = fulfil_core::promise::parse_duration(&text);
    }

    #[test]
    fn wire_messages_never_panic(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        soup().prop_map(String::into_bytes),
    ]) {
        let _ = serde_json::from_slice::<TaskMessage>(&bytes);
        let _ = serde_json::from_slice::<ResultMessage>(&bytes);
        let _ = serde_json::from_slice::<ProgressMessage>(&bytes);
    }
}

/// For each step, the earlier steps it needs (indices), and for each step an
/// index used to pick a step its expressions read.
fn random_dag() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<usize>)> {
    (2usize..300).prop_flat_map(|n| {
        let needs = (0..n)
            .map(|i| {
                if i == 0 {
                    Just(Vec::new()).boxed()
                } else {
                    prop::collection::btree_set(0..i, 0..4.min(i) + 1)
                        .prop_map(|s| s.into_iter().collect())
                        .boxed()
                }
            })
            .collect::<Vec<_>>();
        (needs, prop::collection::vec(any::<usize>(), n))
    })
}

/// Every step each step (transitively) needs, the slow obvious way.
fn ancestors(needs: &[Vec<usize>]) -> Vec<BTreeSet<usize>> {
    let mut all: Vec<BTreeSet<usize>> = Vec::new();
    for step_needs in needs {
        let mut mine = BTreeSet::new();
        for &n in step_needs {
            mine.insert(n);
            mine.extend(all[n].iter().copied());
        }
        all.push(mine);
    }
    all
}

proptest! {
    #![proptest_config(config(64))]

    /// A random DAG whose steps read random upstream steps, vars and
    /// params is accepted; reading a step that is not upstream is refused
    /// at exactly the steps that do it.
    #[test]
    fn random_valid_dags_are_accepted((needs, picks) in random_dag()) {
        let upstream = ancestors(&needs);
        let mut yaml = String::from(
            "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: { name: random, version: '1' }\nspec:\n  workflow:\n    steps:\n",
        );
        let mut bad = String::from(&yaml[..]);
        let mut expected_bad = 0;
        for (i, step_needs) in needs.iter().enumerate() {
            let list = step_needs.iter().map(|n| format!("s{n}")).collect::<Vec<_>>().join(", ");
            let read: Vec<usize> = upstream[i].iter().copied().collect();
            let with = match read.get(picks[i] % read.len().max(1)) {
                Some(r) => format!("{{ x: \"${{{{ steps.s{r}.outputs }}}}\", v: \"${{{{ vars.v }}}} ${{{{ params.p }}}}\" }}"),
                None => "{ v: \"${{ vars.v }}\" }".to_string(),
            };
            yaml.push_str(&format!("      - {{ id: s{i}, uses: noop, needs: [{list}], with: {with} }}\n"));
            // The same DAG, each step reading the step after it instead.
            let late = if i + 1 < needs.len() {
                expected_bad += 1;
                format!("{{ x: \"${{{{ steps.s{}.outputs }}}}\" }}", i + 1)
            } else {
                "{}".to_string()
            };
            bad.push_str(&format!("      - {{ id: s{i}, uses: noop, needs: [{list}], with: {late} }}\n"));
        }
        let context = ValidationContext::with_vars(BTreeSet::from(["v".to_string()]));
        let promise = Promise::parse_with(&yaml, &context);
        prop_assert!(promise.is_ok(), "{:?}", promise.err());
        let errors = Promise::parse_with(&bad, &context).expect_err("reads downstream steps").0;
        let max = fulfil_core::validate::MAX_ERRORS;
        if expected_bad > max {
            prop_assert_eq!(errors.len(), max + 1);
            prop_assert_eq!(errors[max].code, "too_many_errors");
        } else {
            prop_assert_eq!(errors.len(), expected_bad);
        }
        prop_assert!(errors[..errors.len().min(max)].iter().all(|e| e.code == "unknown_step_reference"));
    }

    /// The planner's graph agrees with the obvious ancestor computation.
    #[test]
    fn reachability_matches_ancestors((needs, _) in random_dag()) {
        let upstream = ancestors(&needs);
        let graph = Graph::new(needs.iter().enumerate().map(|(i, n)| {
            (format!("s{i}"), n.iter().map(|n| format!("s{n}")).collect())
        }));
        let mut reach = fulfil_core::dag::Reachability::new(&graph);
        for (i, mine) in upstream.iter().enumerate() {
            for j in 0..needs.len() {
                prop_assert_eq!(reach.needs(&format!("s{i}"), &format!("s{j}")), mine.contains(&j));
            }
        }
    }
}
