//! Applying and reading Promises through the API: what could hurt the
//! server is refused at its path, big fan-outs are accepted, and the list
//! comes a page at a time.

use fulfil_integration_tests::{StackOptions, TestStack};
use serde_json::Value;

fn promise(name: &str, steps: &str) -> String {
    format!(
        "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: {{ name: {name}, version: '1' }}\nspec:\n  workflow:\n    steps:\n{steps}"
    )
}

fn first_error(body: &Value) -> (String, String, String) {
    let e = &body["errors"][0];
    (
        e["path"].as_str().unwrap_or_default().to_string(),
        e["code"].as_str().unwrap_or_default().to_string(),
        e["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn put_refuses_what_would_hurt_the_server_and_takes_big_fan_outs() -> anyhow::Result<()> {
    let stack = TestStack::start_with(StackOptions {
        vars: fulfil_core::Vars::from_file_text("region: eu-1")?,
        ..StackOptions::default()
    })
    .await?;

    // Each of these aborted the process or stalled it (issue 12).
    let plus = vec!["1"; 10_000].join("+");
    let cases = [
        (
            promise(
                "deep-if",
                &format!("      - {{ id: a, uses: noop, if: \"{plus} > 0\" }}\n"),
            ),
            "spec.workflow.steps[0].if",
            "invalid_expression",
        ),
        (
            promise(
                "deep-doc",
                &format!(
                    "      - {{ id: a, uses: noop, with: {{ x: {}1{} }} }}\n",
                    "[".repeat(100_000),
                    "]".repeat(100_000)
                ),
            ),
            "",
            "too_large",
        ),
        (
            promise(
                "long-timeout",
                "      - { id: a, uses: noop, timeout: 300000y }\n",
            ),
            "spec.workflow.steps[0].timeout",
            "invalid_duration",
        ),
        (
            promise(
                "dup",
                "      - id: a\n        uses: noop\n        uses: echo\n",
            ),
            "",
            "duplicate_key",
        ),
        (
            promise(
                "reads-env",
                "      - { id: a, uses: echo, with: { u: \"${{ env.DATABASE_URL }}\" } }\n",
            ),
            "spec.workflow.steps[0].with.u",
            "unknown_variable",
        ),
        (
            promise(
                "unknown-var",
                "      - { id: a, uses: echo, with: { u: \"${{ vars.zone }}\" } }\n",
            ),
            "spec.workflow.steps[0].with.u",
            "unknown_var",
        ),
    ];
    for (yaml, path, code) in cases {
        let (status, body) = stack.put_promise(&yaml).await?;
        assert_eq!(status, 422, "{body}");
        let (p, c, m) = first_error(&body);
        assert_eq!((p.as_str(), c.as_str()), (path, code), "{m}");
    }

    // An exposed var is accepted; a fan-out of 2,000 is accepted and read
    // back without being validated again.
    let (status, body) = stack
        .put_promise(&promise(
            "reads-var",
            "      - { id: a, uses: echo, with: { r: \"${{ vars.region }}\" } }\n",
        ))
        .await?;
    assert_eq!(status, 201, "{body}");
    let mut steps = String::from("      - { id: start, uses: noop }\n");
    for i in 0..2_000 {
        steps.push_str(&format!(
            "      - {{ id: b{i}, uses: echo, needs: [start], with: {{ n: {i}, s: \"${{{{ steps.start.outputs }}}}\" }} }}\n"
        ));
    }
    steps.push_str(&format!(
        "      - {{ id: join, uses: noop, needs: [{}] }}\n",
        (0..2_000)
            .map(|i| format!("b{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let (status, body) = stack.put_promise(&promise("fan", &steps)).await?;
    assert_eq!(status, 201, "{body}");
    let (status, body) = stack.get("/v1/promises/fan").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["steps"], 2_002);
    stack.stop().await
}

#[tokio::test]
async fn promises_are_listed_a_page_at_a_time() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let names = ["p-a", "p-b", "p-c", "p-d", "p-e"];
    for name in names {
        let (status, body) = stack
            .put_promise(&promise(name, "      - { id: a, uses: noop }\n"))
            .await?;
        assert_eq!(status, 201, "{body}");
    }
    // A second version is listed once, as the head.
    let (status, _) = stack
        .put_promise(
            &promise("p-c", "      - { id: a, uses: noop }\n")
                .replace("version: '1'", "version: '2'"),
        )
        .await?;
    assert_eq!(status, 201);

    let mut seen = Vec::new();
    let mut path = "/v1/promises?limit=2".to_string();
    let mut pages = 0;
    loop {
        let (status, body) = stack.get(&path).await?;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        let items = body["items"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 2, "{body}");
        for item in items {
            seen.push(item["name"].as_str().unwrap_or_default().to_string());
            assert_eq!(item["current"], true, "{item}");
            assert!(
                item["steps"].is_number() && item["versions"].is_array(),
                "{item}"
            );
        }
        match body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/promises?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, names);
    assert_eq!(pages, 3);

    // Without a limit, everything fits on the first page.
    let (_, body) = stack.get("/v1/promises").await?;
    assert_eq!(body["items"].as_array().map(Vec::len), Some(5));
    assert_eq!(body["next_cursor"], Value::Null);
    let (status, body) = stack.get("/v1/promises?cursor=Not%20a%20name").await?;
    assert_eq!(status, 400, "{body}");
    stack.stop().await
}
