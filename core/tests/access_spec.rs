//! `spec.access`: which teams may file requests, validated at its paths.

use fulfil_core::{Promise, SpecErrors};

fn promise(access: &str) -> String {
    format!(
        r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: db, version: 1.0.0, owner: team-a }}
spec:
  workflow:
    steps:
      - {{ id: create, uses: echo }}
{access}
"#
    )
}

fn errors(yaml: &str) -> Vec<(String, &'static str)> {
    match Promise::parse(yaml) {
        Ok(p) => panic!("expected errors, parsed {:?}", p.spec.access),
        Err(SpecErrors(errors)) => errors.into_iter().map(|e| (e.path, e.code)).collect(),
    }
}

#[test]
fn listed_teams_are_admitted_and_others_are_not() {
    let p = Promise::parse(&promise("  access: { teams: [team-a, team-b] }")).expect("valid");
    let access = p.spec.access.as_ref().expect("access kept");
    assert!(access.admits("team-a"));
    assert!(access.admits("team-b"));
    assert!(!access.admits("team-c"));

    // The stored form keeps it.
    let stored = serde_json::to_value(&p).expect("serializes");
    assert_eq!(
        stored["spec"]["access"]["teams"],
        serde_json::json!(["team-a", "team-b"])
    );
}

#[test]
fn absent_access_leaves_the_promise_open_to_every_team() {
    let p = Promise::parse(&promise("")).expect("valid");
    assert_eq!(p.spec.access, None);
    let stored = serde_json::to_value(&p).expect("serializes");
    assert!(stored["spec"].get("access").is_none());
}

#[test]
fn an_empty_team_list_is_refused_at_its_path() {
    assert_eq!(
        errors(&promise("  access: { teams: [] }")),
        vec![("spec.access.teams".to_string(), "invalid_value")]
    );
    assert_eq!(
        errors(&promise("  access: { teams: [team-a, \"  \"] }")),
        vec![("spec.access.teams[1]".to_string(), "invalid_value")]
    );
}

#[test]
fn a_team_that_is_not_a_string_is_refused_at_its_path() {
    let found = errors(&promise("  access: { teams: [team-a, 7] }"));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, "spec.access.teams[1]");
    let found = errors(&promise("  access: { teams: team-a }"));
    assert_eq!(found[0].0, "spec.access.teams");
    let found = errors(&promise("  access: { groups: [team-a] }"));
    assert_eq!(found[0].0, "spec.access.groups");
}
