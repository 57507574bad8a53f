//! The gRPC face (`fulfil.v1.Fulfil`) on the real Postgres and NATS: found
//! by a reflection client, and each family answering what REST answers,
//! errors included (same problem code, mapped to the gRPC status).

use std::time::Duration;

use async_trait::async_trait;
use fulfil_grpc::proto::fulfil_client::FulfilClient;
use fulfil_grpc::proto::{self};
use fulfil_integration_tests::{StackOptions, TestStack};
use fulfil_worker::{Handler, StepError, TaskContext};
use futures::StreamExt;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const WAIT: Duration = Duration::from_secs(30);

/// Takes long enough for a run to be cancelled while it runs.
struct Slow;

#[async_trait]
impl Handler for Slow {
    async fn handle(&self, _: &TaskContext, input: Value) -> Result<Value, StepError> {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(input)
    }
}

const SLOW: &str = r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: slow, version: 1.0.0 }
spec:
  workflow:
    steps:
      - { id: wait, uses: slow, with: { n: 1 } }
"#;

/// A stack, and a gRPC server over its engine on a free port.
async fn start() -> anyhow::Result<(TestStack, String, tokio::task::JoinHandle<()>)> {
    let stack = TestStack::start_with(StackOptions {
        handlers: Box::new(|h| {
            h.register("slow", Slow);
        }),
        ..StackOptions::default()
    })
    .await?;
    stack
        .apply(include_str!("../../workflows/postgres-database.yaml"))
        .await?;
    stack.apply(SLOW).await?;
    let state = fulfil_api::ApiState::new(stack.engine.clone(), Some(stack.nats.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        if let Err(e) = fulfil_grpc::serve(listener, state, std::future::pending()).await {
            panic!("gRPC server failed: {e}");
        }
    });
    Ok((stack, url, server))
}

fn code_of(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get("fulfil-problem-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn params(value: Value) -> Option<fulfil_grpc::prost_types::Struct> {
    match value {
        Value::Object(fields) => Some(fulfil_grpc::json::to_struct(fields)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reflection_client_finds_the_service_and_its_descriptor() -> anyhow::Result<()> {
    let (stack, url, server) = start().await?;
    let mut reflection = ServerReflectionClient::new(Channel::from_shared(url)?.connect().await?);
    let asks = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "fulfil.v1.Fulfil".into(),
            )),
        },
    ];
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter(asks))
        .await?
        .into_inner();
    let Some(Ok(listed)) = answers.next().await else {
        anyhow::bail!("no answer to ListServices");
    };
    let Some(MessageResponse::ListServicesResponse(listed)) = listed.message_response else {
        anyhow::bail!("not a service list: {listed:?}");
    };
    let names: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"fulfil.v1.Fulfil".to_string()), "{names:?}");
    let Some(Ok(file)) = answers.next().await else {
        anyhow::bail!("no answer to FileContainingSymbol");
    };
    let Some(MessageResponse::FileDescriptorResponse(files)) = file.message_response else {
        anyhow::bail!("not a descriptor: {file:?}");
    };
    let descriptor = files
        .file_descriptor_proto
        .iter()
        .find(|f| String::from_utf8_lossy(f).contains("fulfil/v1/fulfil.proto"))
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .unwrap_or_default();
    for method in [
        "WatchRun",
        "CreateRequest",
        "GetRunHistory",
        "ResumeSchedule",
    ] {
        assert!(
            descriptor.contains(method),
            "{method} not in the descriptor"
        );
    }
    server.abort();
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_family_answers_what_rest_answers() -> anyhow::Result<()> {
    let (stack, url, server) = start().await?;
    let mut client = FulfilClient::connect(url).await?;

    // Request -> run -> history, and the run's history live.
    let accepted = client
        .create_request(proto::CreateRequestRequest {
            promise: "postgres-database".into(),
            params: params(json!({"name": "orders"})),
            idempotency_key: String::new(),
        })
        .await?
        .into_inner();
    let run_id: fulfil_core::ids::RunId = accepted.run_id.parse()?;
    let watched: Vec<proto::HistoryEvent> = tokio::time::timeout(WAIT, async {
        let stream = client
            .watch_run(proto::WatchRunRequest {
                run_id: accepted.run_id.clone(),
                after: 0,
            })
            .await?
            .into_inner();
        stream
            .map(|e| e.map_err(anyhow::Error::from))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .await??;
    let run = client
        .get_run(proto::IdRequest {
            id: accepted.run_id.clone(),
        })
        .await?
        .into_inner();
    let rest_run = stack.run(run_id).await?;
    assert_eq!(run.status, "succeeded");
    assert_eq!(run.request_id, accepted.request_id);
    assert_eq!(
        run.steps.len(),
        rest_run["steps"].as_array().map_or(0, Vec::len)
    );
    assert_eq!(
        run.outputs.map(fulfil_grpc::json::from_proto),
        Some(rest_run["outputs"].clone())
    );
    // Each step's attempts as REST shows them: same tasks, workers, statuses.
    assert!(run.steps.iter().any(|s| !s.attempts.is_empty()));
    for (step, rest_step) in run
        .steps
        .iter()
        .zip(rest_run["steps"].as_array().into_iter().flatten())
    {
        assert_eq!(step.id, rest_step["id"].as_str().unwrap_or_default());
        let rest_attempts = rest_step["attempts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(step.attempts.len(), rest_attempts.len(), "step {}", step.id);
        for (a, rest) in step.attempts.iter().zip(&rest_attempts) {
            assert_eq!(a.task_id, rest["task_id"].as_str().unwrap_or_default());
            assert_eq!(a.status, rest["status"].as_str().unwrap_or_default());
            assert_eq!(a.worker, rest["worker"].as_str().unwrap_or_default());
            assert_eq!(a.duration_ms, rest["duration_ms"].as_i64());
        }
        assert_eq!(step.duration_ms, rest_step["duration_ms"].as_i64());
    }
    let history = client
        .get_run_history(proto::ListRequest {
            id: accepted.run_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let rest_history = stack.history(run_id).await?;
    let seqs = |items: &[proto::HistoryEvent]| items.iter().map(|e| e.seq).collect::<Vec<_>>();
    let rest_seqs: Vec<i64> = rest_history
        .iter()
        .filter_map(|e| e["seq"].as_i64())
        .collect();
    assert_eq!(seqs(&history.items), rest_seqs);
    assert_eq!(
        seqs(&watched),
        rest_seqs,
        "WatchRun streams the whole history, then ends"
    );
    assert_eq!(
        watched.last().map(|e| e.r#type.as_str()),
        Some("run.succeeded")
    );
    let request = client
        .get_request(proto::IdRequest {
            id: accepted.request_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(request.run_id, accepted.run_id);
    assert_eq!(
        request.params.map(fulfil_grpc::json::from_proto),
        Some(
            json!({"name": "orders", "size": "small", "team": "platform",
                    "environment": "development", "labels": {}})
        )
    );

    // Bad params: REST's 422 code, as InvalidArgument.
    let (status, _, body) = stack
        .post_request("postgres-database", json!({"params": {"name": 5}}), None)
        .await?;
    assert_eq!(status, 422);
    let refused = client
        .create_request(proto::CreateRequestRequest {
            promise: "postgres-database".into(),
            params: params(json!({"name": 5})),
            idempotency_key: String::new(),
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("bad params accepted"))?;
    assert_eq!(refused.code(), Code::InvalidArgument);
    let rest_code = body["type"].as_str().and_then(|t| t.rsplit('/').next());
    assert_eq!(Some(code_of(&refused)), rest_code);
    assert_eq!(code_of(&refused), "invalid-params");
    assert!(
        refused.message().starts_with("invalid-params: "),
        "{}",
        refused.message()
    );

    // Unknown run: NotFound, code not-found; not a UUID: InvalidArgument.
    let missing = client
        .get_run(proto::IdRequest {
            id: fulfil_core::ids::RunId::generate().to_string(),
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("unknown run found"))?;
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(code_of(&missing), "not-found");
    let watch_missing = client
        .watch_run(proto::WatchRunRequest {
            run_id: fulfil_core::ids::RunId::generate().to_string(),
            after: 0,
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("unknown run watched"))?;
    assert_eq!(watch_missing.code(), Code::NotFound);
    let not_uuid = client
        .get_run(proto::IdRequest {
            id: "../promises".into(),
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a path escaped its segment"))?;
    assert_eq!(not_uuid.code(), Code::InvalidArgument);
    assert_eq!(code_of(&not_uuid), "bad-request");

    // Cancel a running run, refuse a second cancel, retry it.
    let slow = client
        .create_request(proto::CreateRequestRequest {
            promise: "slow".into(),
            params: None,
            idempotency_key: String::new(),
        })
        .await?
        .into_inner();
    let cancelled = client
        .cancel_run(proto::CancelRunRequest {
            id: slow.run_id.clone(),
            compensate: Some(false),
            reason: "test".into(),
        })
        .await?
        .into_inner();
    let cancelled = cancelled.body.map(fulfil_grpc::json::from_proto);
    assert_eq!(
        cancelled.as_ref().map(|b| b["status"].clone()),
        Some(json!("cancelled"))
    );
    let again = client
        .cancel_run(proto::CancelRunRequest {
            id: slow.run_id.clone(),
            compensate: None,
            reason: String::new(),
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a cancelled run cancelled twice"))?;
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_eq!(code_of(&again), "run-state-conflict");
    client
        .retry_run(proto::RetryRunRequest {
            id: slow.run_id.clone(),
            step: String::new(),
            dry_run: false,
        })
        .await?;
    let retried = stack.wait_finished(slow.run_id.parse()?, WAIT).await?;
    assert_eq!(retried["status"], "succeeded", "{retried}");

    // The other families: the REST JSON, as a Value.
    let promises = client
        .list_promises(proto::ListRequest::default())
        .await?
        .into_inner();
    let promises = promises
        .body
        .map(fulfil_grpc::json::from_proto)
        .unwrap_or_default();
    let (_, rest_promises) = stack.get("/v1/promises").await?;
    assert_eq!(promises, rest_promises);
    let runs = client
        .list_runs(proto::ListRequest {
            filters: [("promise".to_string(), "slow".to_string())].into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(runs.items.len(), 1);
    let unknown_filter = client
        .list_runs(proto::ListRequest {
            filters: [("colour".to_string(), "red".to_string())].into(),
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("unknown filter accepted"))?;
    assert_eq!(code_of(&unknown_filter), "invalid-query");
    let schedule = client
        .get_schedule(proto::NameRequest {
            name: "none".into(),
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("unknown schedule found"))?;
    assert_eq!(schedule.code(), Code::NotFound);
    let sent = client
        .send_event(proto::SendEventRequest {
            event: params(
                json!({"specversion": "1.0", "id": "grpc-1", "source": "/test",
                                 "type": "dev.test.nothing", "data": {"k": 1}}),
            ),
        })
        .await?
        .into_inner();
    let sent = sent
        .body
        .map(fulfil_grpc::json::from_proto)
        .unwrap_or_default();
    assert_eq!(sent["id"], "grpc-1", "{sent}");
    let events = client
        .list_events(proto::ListRequest::default())
        .await?
        .into_inner();
    let events = events
        .body
        .map(fulfil_grpc::json::from_proto)
        .unwrap_or_default();
    let (_, rest_events) = stack.get("/v1/events").await?;
    assert_eq!(events, rest_events);
    let not_an_event = client
        .send_event(proto::SendEventRequest {
            event: params(json!({"id": "x"})),
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a non-CloudEvent accepted"))?;
    assert_eq!(not_an_event.code(), Code::InvalidArgument);
    assert_eq!(code_of(&not_an_event), "invalid-event");

    server.abort();
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_run_and_get_request_link_a_compound_parent_and_its_child() -> anyhow::Result<()> {
    let (stack, url, server) = start().await?;
    stack
        .apply(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: grpc-child, version: 1.0.0 }
spec:
  api: { type: object }
  workflow:
    steps:
      - { id: make, uses: noop }
"#,
        )
        .await?;
    stack
        .apply(
            r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: { name: grpc-parent, version: 1.0.0 }
spec:
  api: { type: object }
  workflow:
    steps:
      - { id: part, uses: promise, with: { promise: grpc-child } }
"#,
        )
        .await?;
    let run_id = stack.request("grpc-parent", json!({})).await?;
    let finished = stack.wait_finished(run_id, Duration::from_secs(60)).await?;
    assert_eq!(finished["status"], "succeeded", "{finished:#}");
    let mut client = FulfilClient::new(Channel::from_shared(url)?.connect().await?);
    let run = client
        .get_run(proto::IdRequest {
            id: run_id.to_string(),
        })
        .await?
        .into_inner();
    assert_eq!(run.children.len(), 1, "{run:?}");
    let child = &run.children[0];
    assert_eq!(child.promise, "grpc-child");
    assert_eq!(child.step, "part");
    assert_eq!(child.status, "succeeded");
    assert_eq!(
        run.steps[0].child.as_ref().map(|c| c.request_id.as_str()),
        Some(child.request_id.as_str())
    );
    let request = client
        .get_request(proto::IdRequest {
            id: child.request_id.clone(),
        })
        .await?
        .into_inner();
    let parent = request.parent.unwrap_or_default();
    assert_eq!(parent.run_id, run_id.to_string());
    assert_eq!(parent.step, "part");
    assert!(!request.pinned);
    server.abort();
    stack.stop().await
}
