//! The RBAC matrix: every REST operation of the OpenAPI document and every
//! gRPC RPC, called with no token, a bad token, an expired token, and a
//! token of each role from the owning team (team-a) and another (team-b),
//! each answer's class checked against the tables below.
//!
//! The expectations are data written here, not derived from
//! `fulfil_api::auth::permissions`, so a change to the gate fails this
//! test. Classes: `u` 401 `unauthenticated`, `f` 403 `forbidden`, `+`
//! anything else (success, or an error that is not about access: a 404 for
//! a token that does not exist, a 409 for a run that cannot be retried).
//!
//! Columns: the no/bad/expired string, then roles in the order viewer,
//! requester, approver, operator, author, admin, once for a team-a caller
//! and once for a team-b caller. team-a owns the Promise, the Schedule, the
//! request and the run; team-b callers are refused what changes them
//! (the handlers' team checks), and may still read and file requests
//! (`spec.access` defaults to every team).
//!
//! Order matters where calls change state: every `DELETE` runs after the
//! other operations, and on each route team-b callers (refused) go before
//! team-a's, whose calls may delete what the route names. gRPC calls that
//! name no existing object (unknown ids) check the role gate only.

use std::collections::BTreeMap;

use fulfil_core::access::Role;
use fulfil_grpc::proto::{self, fulfil_client::FulfilClient};
use fulfil_integration_tests::TestStack;
use fulfil_integration_tests::auth::{BOOTSTRAP, expired_token, serve_with_tokens, token};
use serde_json::{Value, json};
use tonic::transport::Channel;

/// (method, route, unauthenticated callers, team-a roles, team-b roles).
const REST: &[(&str, &str, &str, &str, &str)] = &[
    ("GET", "/healthz", "+++", "++++++", "++++++"),
    ("GET", "/readyz", "+++", "++++++", "++++++"),
    ("GET", "/metrics", "+++", "++++++", "++++++"),
    ("GET", "/openapi.json", "+++", "++++++", "++++++"),
    ("GET", "/v1/promises", "uuu", "++++++", "++++++"),
    ("GET", "/v1/promises/{name}", "uuu", "++++++", "++++++"),
    ("PUT", "/v1/promises/{name}", "uuu", "ffff++", "fffff+"),
    (
        "POST",
        "/v1/promises/{name}/requests",
        "uuu",
        "f+fff+",
        "f+fff+",
    ),
    ("GET", "/v1/requests", "uuu", "++++++", "++++++"),
    ("GET", "/v1/requests/{id}", "uuu", "++++++", "++++++"),
    ("DELETE", "/v1/requests/{id}", "uuu", "f+fff+", "fffff+"),
    (
        "POST",
        "/v1/requests/{id}/reconcile",
        "uuu",
        "fff+f+",
        "fffff+",
    ),
    ("POST", "/v1/requests/{id}/pin", "uuu", "fff+f+", "fffff+"),
    ("DELETE", "/v1/requests/{id}/pin", "uuu", "fff+f+", "fffff+"),
    // The Promise has no request on another version: a rollout ends at
    // once, so each creation is a new one, never a 409.
    (
        "POST",
        "/v1/promises/{name}/rollout",
        "uuu",
        "ffff++",
        "fffff+",
    ),
    (
        "GET",
        "/v1/promises/{name}/rollouts",
        "uuu",
        "++++++",
        "++++++",
    ),
    ("GET", "/v1/rollouts/{id}", "uuu", "++++++", "++++++"),
    // An unknown rollout: the role gate, then 404.
    ("POST", "/v1/rollouts/{id}/pause", "uuu", "ffff++", "ffff++"),
    (
        "POST",
        "/v1/rollouts/{id}/resume",
        "uuu",
        "ffff++",
        "ffff++",
    ),
    (
        "POST",
        "/v1/rollouts/{id}/cancel",
        "uuu",
        "ffff++",
        "ffff++",
    ),
    ("GET", "/v1/runs", "uuu", "++++++", "++++++"),
    ("GET", "/v1/runs/{id}", "uuu", "++++++", "++++++"),
    ("GET", "/v1/runs/{id}/history", "uuu", "++++++", "++++++"),
    ("GET", "/v1/runs/{id}/events", "uuu", "++++++", "++++++"),
    ("POST", "/v1/runs/{id}/cancel", "uuu", "fff+f+", "fffff+"),
    ("POST", "/v1/runs/{id}/retry", "uuu", "fff+f+", "fffff+"),
    (
        "POST",
        "/v1/runs/{id}/steps/{step}/approve",
        "uuu",
        "ff+ff+",
        "ff+ff+",
    ),
    (
        "POST",
        "/v1/runs/{id}/steps/{step}/reject",
        "uuu",
        "ff+ff+",
        "ff+ff+",
    ),
    ("GET", "/v1/events", "uuu", "++++++", "++++++"),
    ("POST", "/v1/events", "uuu", "f+fff+", "f+fff+"),
    ("GET", "/v1/events/{id}", "uuu", "++++++", "++++++"),
    ("GET", "/v1/dead-letters", "uuu", "++++++", "++++++"),
    (
        "POST",
        "/v1/dead-letters/{id}/replay",
        "uuu",
        "fff+f+",
        "fff+f+",
    ),
    ("GET", "/v1/schedules", "uuu", "++++++", "++++++"),
    ("GET", "/v1/schedules/{name}", "uuu", "++++++", "++++++"),
    ("PUT", "/v1/schedules/{name}", "uuu", "ffff++", "fffff+"),
    ("DELETE", "/v1/schedules/{name}", "uuu", "ffff++", "fffff+"),
    (
        "GET",
        "/v1/schedules/{name}/ticks",
        "uuu",
        "++++++",
        "++++++",
    ),
    (
        "POST",
        "/v1/schedules/{name}/pause",
        "uuu",
        "fff+f+",
        "fffff+",
    ),
    (
        "POST",
        "/v1/schedules/{name}/resume",
        "uuu",
        "fff+f+",
        "fffff+",
    ),
    ("GET", "/v1/policies", "uuu", "++++++", "++++++"),
    ("GET", "/v1/policies/{name}", "uuu", "++++++", "++++++"),
    ("PUT", "/v1/policies/{name}", "uuu", "fffff+", "fffff+"),
    ("DELETE", "/v1/policies/{name}", "uuu", "fffff+", "fffff+"),
    ("GET", "/v1/tokens", "uuu", "fffff+", "fffff+"),
    ("POST", "/v1/tokens", "uuu", "fffff+", "fffff+"),
    (
        "DELETE",
        "/v1/tokens/{id_or_name}",
        "uuu",
        "fffff+",
        "fffff+",
    ),
];

/// (RPC, unauthenticated callers, team-a roles, team-b roles).
const GRPC: &[(&str, &str, &str, &str)] = &[
    ("ApplyPromise", "uuu", "ffff++", "fffff+"),
    ("ListPromises", "uuu", "++++++", "++++++"),
    ("GetPromise", "uuu", "++++++", "++++++"),
    ("CreateRequest", "uuu", "f+fff+", "f+fff+"),
    ("GetRequest", "uuu", "++++++", "++++++"),
    ("ListRequests", "uuu", "++++++", "++++++"),
    ("DeleteRequest", "uuu", "f+fff+", "f+fff+"),
    ("ReconcileRequest", "uuu", "fff+f+", "fff+f+"),
    ("ListRuns", "uuu", "++++++", "++++++"),
    ("GetRun", "uuu", "++++++", "++++++"),
    ("GetRunHistory", "uuu", "++++++", "++++++"),
    ("CancelRun", "uuu", "fff+f+", "fff+f+"),
    ("RetryRun", "uuu", "fff+f+", "fff+f+"),
    ("ApproveStep", "uuu", "ff+ff+", "ff+ff+"),
    ("RejectStep", "uuu", "ff+ff+", "ff+ff+"),
    ("WatchRun", "uuu", "++++++", "++++++"),
    ("SendEvent", "uuu", "f+fff+", "f+fff+"),
    ("ListEvents", "uuu", "++++++", "++++++"),
    ("GetEvent", "uuu", "++++++", "++++++"),
    ("ListDeadLetters", "uuu", "++++++", "++++++"),
    ("ReplayDeadLetter", "uuu", "fff+f+", "fff+f+"),
    ("ApplySchedule", "uuu", "ffff++", "fffff+"),
    ("ListSchedules", "uuu", "++++++", "++++++"),
    ("GetSchedule", "uuu", "++++++", "++++++"),
    ("DeleteSchedule", "uuu", "ffff++", "ffff++"),
    ("ListScheduleTicks", "uuu", "++++++", "++++++"),
    ("PauseSchedule", "uuu", "fff+f+", "fffff+"),
    ("ResumeSchedule", "uuu", "fff+f+", "fffff+"),
];

const PROMISE: &str = r#"apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: owned, version: "1", owner: team-a }
spec:
  api:
    type: object
    required: [name]
    properties:
      name: { type: string }
  workflow:
    steps:
      - id: approve
        uses: approval
        with: { approvers: ["role:approver"] }
"#;

const SCHEDULE: &str = "apiVersion: fulfil.dev/v1\nkind: Schedule\nmetadata: { name: nightly, owner: team-a }\nspec:\n  promise: owned\n  cron: \"0 2 * * *\"\n  params: { name: nightly-db }\n";

/// A caller of the matrix: its column label and bearer token.
struct Caller {
    label: String,
    bearer: Option<String>,
}

/// The callers in the tables' column order.
async fn callers(stack: &TestStack) -> anyhow::Result<Vec<Caller>> {
    let mut out = vec![
        Caller {
            label: "no token".into(),
            bearer: None,
        },
        Caller {
            label: "bad token".into(),
            bearer: Some("fulfil_this-token-was-never-made".into()),
        },
        Caller {
            label: "expired".into(),
            bearer: Some(expired_token(stack, "expired", "team-a").await?),
        },
    ];
    for team in ["team-a", "team-b"] {
        for role in Role::ALL {
            let name = format!("{role}-{team}");
            out.push(Caller {
                label: format!("{role}@{team}"),
                bearer: Some(token(stack, &name, team, &[role]).await?),
            });
        }
    }
    Ok(out)
}

fn expected(unauthenticated: &str, team_a: &str, team_b: &str) -> Vec<char> {
    format!("{unauthenticated}{team_a}{team_b}")
        .chars()
        .collect()
}

fn class_of(status: u16) -> char {
    match status {
        401 => 'u',
        403 => 'f',
        _ => '+',
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_and_rpc_answers_each_caller_as_the_table_says() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    stack.apply(PROMISE).await?;
    let (status, body) = {
        let r = stack
            .http
            .put(format!("{}/v1/schedules/nightly", stack.api))
            .header("content-type", "application/yaml")
            .body(SCHEDULE)
            .send()
            .await?;
        (r.status().as_u16(), r.json::<Value>().await?)
    };
    anyhow::ensure!(status == 201, "schedule refused: {status} {body}");
    let run_id = stack.request("owned", json!({"name": "db-a"})).await?;
    let run = stack.run(run_id).await?;
    let request_id = run["request_id"].as_str().unwrap_or_default().to_string();
    let (api, grpc) = serve_with_tokens(&stack).await?;
    let callers = callers(&stack).await?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;

    // Every operation of the document has a row (rows for routes not yet
    // served, the policies, are not called).
    let document = serde_json::to_value(fulfil_api::openapi::document())?;
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for method in ["get", "put", "post", "delete", "patch"] {
            if item.get(method).is_some() {
                operations.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    let rows: BTreeMap<(String, String), (&str, &str, &str)> = REST
        .iter()
        .map(|(m, p, u, a, b)| ((m.to_string(), p.to_string()), (*u, *a, *b)))
        .collect();
    let unlisted: Vec<_> = operations
        .iter()
        .filter(|op| !rows.contains_key(*op))
        .collect();
    assert!(
        unlisted.is_empty(),
        "operations without a row in this test: {unlisted:?}"
    );

    let run_text = run_id.to_string();
    // DELETEs last, so what they remove is there for the other calls.
    operations.sort_by_key(|(method, _)| method == "DELETE");
    // Unauthenticated callers, then team-b, then team-a (see the module doc).
    let order: Vec<usize> = (0..3).chain(9..15).chain(3..9).collect();
    let mut failures = Vec::new();
    let mut calls = 0usize;
    let mut token_names = 0usize;
    for (method, path) in &operations {
        let Some((unauthenticated, team_a, team_b)) = rows.get(&(method.clone(), path.clone()))
        else {
            continue;
        };
        let want = expected(unauthenticated, team_a, team_b);
        for &i in &order {
            let (caller, want) = (&callers[i], want[i]);
            let url = format!(
                "{api}{}",
                path.replace(
                    "{name}",
                    if path.starts_with("/v1/schedules") {
                        "nightly"
                    } else if path.starts_with("/v1/policies") {
                        "no-such-policy"
                    } else {
                        "owned"
                    }
                )
                .replace("{id_or_name}", "no-such-token")
                .replace("{step}", "approve")
                .replace(
                    "{id}",
                    if path.starts_with("/v1/runs") {
                        &run_text
                    } else if path.starts_with("/v1/requests") {
                        &request_id
                    } else {
                        "0193a1c2-7b3e-7c1a-9f00-3d2e1a4b5c6d"
                    }
                )
            );
            let mut request = http.request(method.parse()?, &url);
            if let Some(bearer) = &caller.bearer {
                request = request.bearer_auth(bearer);
            }
            request = match (method.as_str(), path.as_str()) {
                ("PUT", "/v1/promises/{name}") => request.header("content-type", "application/yaml").body(PROMISE),
                ("PUT", "/v1/schedules/{name}") => request.header("content-type", "application/yaml").body(SCHEDULE),
                ("PUT", _) => request.header("content-type", "application/yaml").body("kind: Policy"),
                ("POST", "/v1/promises/{name}/requests") => request.json(&json!({"params": {"name": "matrix"}})),
                ("POST", "/v1/promises/{name}/rollout") => request.json(&json!({"to_version": "1"})),
                ("POST", "/v1/events") => request.header("content-type", "application/cloudevents+json").body(json!({"specversion": "1.0", "id": "m", "source": "matrix", "type": "matrix.test"}).to_string()),
                ("POST", "/v1/tokens") => {
                    token_names += 1;
                    request.json(&json!({"name": format!("made-{token_names}"), "team": "team-a", "roles": ["viewer"]}))
                }
                _ => request,
            };
            let response = request.send().await?;
            calls += 1;
            let status = response.status().as_u16();
            let got = class_of(status);
            let code = if got == '+' {
                Value::Null
            } else {
                response.json::<Value>().await?["code"].clone()
            };
            let code_ok = match got {
                'u' => code == "unauthenticated",
                'f' => code == "forbidden",
                _ => true,
            };
            if got != want || !code_ok {
                failures.push(format!(
                    "{method} {path} as {}: want {want}, got {status} {code}",
                    caller.label
                ));
            }
        }
    }

    // gRPC: every RPC, authenticated through the same gate.
    let mut client = FulfilClient::connect(grpc).await?;
    for (rpc, unauthenticated, team_a, team_b) in GRPC {
        for (caller, want) in callers
            .iter()
            .zip(expected(unauthenticated, team_a, team_b))
        {
            let result = call_rpc(
                &mut client,
                rpc,
                caller.bearer.as_deref(),
                &run_id.to_string(),
                &request_id,
            )
            .await;
            calls += 1;
            let got = match &result {
                Err(s) if s.code() == tonic::Code::Unauthenticated => 'u',
                Err(s) if s.code() == tonic::Code::PermissionDenied => 'f',
                _ => '+',
            };
            if got != want {
                failures.push(format!(
                    "gRPC {rpc} as {}: want {want}, got {result:?}",
                    caller.label
                ));
            }
        }
    }

    println!(
        "RBAC matrix: {} REST operations + {} RPCs × {} callers = {calls} calls",
        operations.len(),
        GRPC.len(),
        callers.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {calls} answers differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The admin really is the bootstrap's kind: the matrix used the gate, not luck.
    assert!(!BOOTSTRAP.is_empty());
    stack.stop().await
}

/// Calls `rpc` with `bearer` as `authorization` metadata; Ok(()) on any
/// answer that is not an error.
async fn call_rpc(
    client: &mut FulfilClient<Channel>,
    rpc: &str,
    bearer: Option<&str>,
    run_id: &str,
    request_id: &str,
) -> Result<(), tonic::Status> {
    fn req<T>(message: T, bearer: Option<&str>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(bearer) = bearer
            && let Ok(value) = format!("Bearer {bearer}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
    let id = |id: &str| proto::IdRequest { id: id.to_string() };
    let name = |name: &str| proto::NameRequest {
        name: name.to_string(),
    };
    let list = |id: &str| proto::ListRequest {
        id: id.to_string(),
        ..Default::default()
    };
    let unknown = "0193a1c2-7b3e-7c1a-9f00-3d2e1a4b5c6d";
    match rpc {
        "ApplyPromise" => client
            .apply_promise(req(
                proto::ApplyDocumentRequest {
                    name: "owned".into(),
                    document: PROMISE.into(),
                },
                bearer,
            ))
            .await
            .map(drop),
        "ListPromises" => client.list_promises(req(list(""), bearer)).await.map(drop),
        "GetPromise" => client
            .get_promise(req(name("owned"), bearer))
            .await
            .map(drop),
        "CreateRequest" => client
            .create_request(req(
                proto::CreateRequestRequest {
                    promise: "owned".into(),
                    ..Default::default()
                },
                bearer,
            ))
            .await
            .map(drop),
        "GetRequest" => client
            .get_request(req(id(request_id), bearer))
            .await
            .map(drop),
        "ListRequests" => client.list_requests(req(list(""), bearer)).await.map(drop),
        "DeleteRequest" => client
            .delete_request(req(
                proto::DeleteRequestRequest {
                    id: unknown.into(),
                    force: false,
                },
                bearer,
            ))
            .await
            .map(drop),
        "ReconcileRequest" => client
            .reconcile_request(req(id(unknown), bearer))
            .await
            .map(drop),
        "ListRuns" => client.list_runs(req(list(""), bearer)).await.map(drop),
        "GetRun" => client.get_run(req(id(run_id), bearer)).await.map(drop),
        "GetRunHistory" => client
            .get_run_history(req(list(run_id), bearer))
            .await
            .map(drop),
        "CancelRun" => client
            .cancel_run(req(
                proto::CancelRunRequest {
                    id: unknown.into(),
                    ..Default::default()
                },
                bearer,
            ))
            .await
            .map(drop),
        "RetryRun" => client
            .retry_run(req(
                proto::RetryRunRequest {
                    id: unknown.into(),
                    ..Default::default()
                },
                bearer,
            ))
            .await
            .map(drop),
        "ApproveStep" => client
            .approve_step(req(
                proto::DecideStepRequest {
                    id: unknown.into(),
                    step: "approve".into(),
                    ..Default::default()
                },
                bearer,
            ))
            .await
            .map(drop),
        "RejectStep" => client
            .reject_step(req(
                proto::DecideStepRequest {
                    id: unknown.into(),
                    step: "approve".into(),
                    ..Default::default()
                },
                bearer,
            ))
            .await
            .map(drop),
        "WatchRun" => client
            .watch_run(req(
                proto::WatchRunRequest {
                    run_id: run_id.into(),
                    after: 0,
                },
                bearer,
            ))
            .await
            .map(drop),
        "SendEvent" => client
            .send_event(req(proto::SendEventRequest::default(), bearer))
            .await
            .map(drop),
        "ListEvents" => client.list_events(req(list(""), bearer)).await.map(drop),
        "GetEvent" => client.get_event(req(id(unknown), bearer)).await.map(drop),
        "ListDeadLetters" => client
            .list_dead_letters(req(list(""), bearer))
            .await
            .map(drop),
        "ReplayDeadLetter" => client
            .replay_dead_letter(req(id(unknown), bearer))
            .await
            .map(drop),
        "ApplySchedule" => client
            .apply_schedule(req(
                proto::ApplyDocumentRequest {
                    name: "nightly".into(),
                    document: SCHEDULE.into(),
                },
                bearer,
            ))
            .await
            .map(drop),
        "ListSchedules" => client.list_schedules(req(list(""), bearer)).await.map(drop),
        "GetSchedule" => client
            .get_schedule(req(name("nightly"), bearer))
            .await
            .map(drop),
        "DeleteSchedule" => client
            .delete_schedule(req(name("no-such-schedule"), bearer))
            .await
            .map(drop),
        "ListScheduleTicks" => client
            .list_schedule_ticks(req(list("nightly"), bearer))
            .await
            .map(drop),
        "PauseSchedule" => client
            .pause_schedule(req(name("nightly"), bearer))
            .await
            .map(drop),
        "ResumeSchedule" => client
            .resume_schedule(req(name("nightly"), bearer))
            .await
            .map(drop),
        other => Err(tonic::Status::internal(format!(
            "the test does not know the RPC {other}"
        ))),
    }
}
