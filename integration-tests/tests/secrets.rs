//! Secrets end to end: a worker resolves `${{ secrets.NAME }}` from its own
//! sources, and the value is found nowhere else: not in any table of the
//! run's database, any message of its NATS streams, or the logs of the
//! engine, API and worker (captured at debug level in this process).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::{Json, Router, http::HeaderMap, routing::post};
use fulfil_integration_tests::{StackOptions, TestStack};
use fulfil_worker::{Handlers, SecretSources, Worker, WorkerConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Everything every tracing event of this process wrote.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buffer.clone());
        // Installed before any stack starts, so the stack's own (test
        // writer) subscriber is not the one in place.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buffer
    })
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut buffer) = self.0.lock() {
            buffer.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured_logs() -> String {
    logs()
        .lock()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// An echo server: answers with the `authorization` header it got, and
/// remembers every one.
async fn echo_server() -> anyhow::Result<(String, Arc<Mutex<Vec<String>>>)> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let app = Router::new().route(
        "/echo",
        post(move |headers: HeaderMap| {
            let recorded = recorded.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                if let Ok(mut seen) = recorded.lock() {
                    seen.push(auth.clone());
                }
                Json(json!({"authorization": auth}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/echo", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, seen))
}

/// A stack whose worker reads secrets from `dir` (then the environment).
async fn stack_with_secrets(
    dir: &std::path::Path,
) -> anyhow::Result<(TestStack, CancellationToken)> {
    logs();
    let stack = TestStack::start_with(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await?;
    let worker = Worker::new(
        stack.js.clone(),
        stack.names.clone(),
        Handlers::with_builtins(stack.nats.clone()),
        WorkerConfig {
            worker_id: "secrets-worker".into(),
            drain_timeout: Duration::from_secs(5),
            ..WorkerConfig::default()
        },
    )
    .with_secrets(SecretSources::standard(Some(dir.to_path_buf())));
    let stop = CancellationToken::new();
    let until = stop.clone();
    tokio::spawn(async move { worker.run(until).await });
    Ok((stack, stop))
}

fn promise(url: &str) -> String {
    format!(
        r#"
apiVersion: fulfil.dev/v1
kind: Promise
metadata: {{ name: secret-call, version: 1.0.0, owner: team-a }}
spec:
  api:
    type: object
    properties:
      note: {{ type: string, default: "" }}
  workflow:
    steps:
      - id: call
        uses: http
        retry: {{ max_attempts: 1 }}
        with:
          url: "{url}"
          method: POST
          headers: {{ authorization: "Bearer ${{{{ secrets.api_token }}}}" }}
          body: {{ note: "${{{{ params.note }}}}" }}
      - id: injected
        needs: [call]
        uses: http
        retry: {{ max_attempts: 1 }}
        with:
          url: "{url}"
          method: POST
          headers: {{ authorization: "${{{{ params.note }}}}" }}
"#
    )
}

/// Every row of every table of the stack's database, as text.
async fn database_text(stack: &TestStack) -> anyhow::Result<String> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_type = 'BASE TABLE' \
           AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&stack.pool)
    .await?;
    anyhow::ensure!(tables.len() > 5, "too few tables found: {tables:?}");
    let mut all = String::new();
    for (schema, table) in tables {
        // Names come from the catalog, quoted: not user input.
        let rows: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT string_agg(t::text, E'\\n') FROM \"{schema}\".\"{table}\" t"
        )))
        .fetch_one(&stack.pool)
        .await?;
        all.push_str(&rows.unwrap_or_default());
        all.push('\n');
    }
    Ok(all)
}

/// Every message (payload and headers) of every stream of the stack's
/// prefix, read by sequence with direct gets.
async fn streams_text(stack: &TestStack) -> anyhow::Result<String> {
    use futures::TryStreamExt;
    let prefix = format!("{}_", stack.names.prefix());
    let names: Vec<String> = stack.js.stream_names().try_collect().await?;
    let mut all = String::new();
    let mut streams = 0;
    for name in names.into_iter().filter(|n| n.starts_with(&prefix)) {
        streams += 1;
        let mut stream = stack.js.get_stream(&name).await?;
        let state = stream.info().await?.state.clone();
        if state.messages == 0 {
            continue;
        }
        for seq in state.first_sequence..=state.last_sequence {
            // Gaps (acked work-queue messages) are simply absent.
            if let Ok(message) = stream.get_raw_message(seq).await {
                all.push_str(&String::from_utf8_lossy(&message.payload));
                all.push_str(&format!("{:?}\n", message.headers));
            }
        }
    }
    anyhow::ensure!(streams >= 3, "too few streams with prefix {prefix}");
    Ok(all)
}

#[tokio::test]
async fn a_secret_reaches_the_server_and_no_store_stream_or_log() -> anyhow::Result<()> {
    let value = format!("s3cr3t-{}", uuid::Uuid::now_v7().simple());
    let dir = std::env::temp_dir().join(format!("fulfil-secrets-it-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("api_token"), format!("{value}\n"))?;
    let (url, seen) = echo_server().await?;
    let (stack, stop_worker) = stack_with_secrets(&dir).await?;
    stack.apply(&promise(&url)).await?;

    // The param carries reference text: it must reach the server as text.
    let run_id = stack
        .request("secret-call", json!({"note": "${{ secrets.api_token }}"}))
        .await?;
    let run = stack.wait_finished(run_id, Duration::from_secs(30)).await?;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let received = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(
        received,
        vec![
            format!("Bearer {value}"),
            "${{ secrets.api_token }}".to_string()
        ],
        "the slot is resolved, the injected param is not"
    );
    assert_eq!(
        run["steps"][0]["outputs"]["body"]["authorization"], "Bearer [redacted:api_token]",
        "{run:#}"
    );

    let database = database_text(&stack).await?;
    let streams = streams_text(&stack).await?;
    let logs = captured_logs();
    for (place, text) in [("postgres", &database), ("nats", &streams), ("logs", &logs)] {
        assert!(!text.contains(&value), "the secret value is in {place}");
    }
    // The greps look where the run went: the reference and the redaction
    // marker are there.
    for (place, text) in [("postgres", &database), ("nats", &streams)] {
        assert!(
            text.contains("${{ secrets.api_token }}"),
            "no reference text in {place}"
        );
        assert!(
            text.contains("[redacted:api_token]"),
            "no redaction marker in {place}"
        );
    }
    assert!(
        logs.contains("step attempt succeeded"),
        "no worker logs captured"
    );

    stop_worker.cancel();
    stack.stop().await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test]
async fn a_missing_secret_fails_the_step_naming_it() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("fulfil-secrets-it-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let (url, seen) = echo_server().await?;
    let (stack, stop_worker) = stack_with_secrets(&dir).await?;
    stack.apply(&promise(&url)).await?;
    let run_id = stack.request("secret-call", json!({})).await?;
    let run = stack.wait_finished(run_id, Duration::from_secs(30)).await?;
    assert_eq!(run["status"], "failed", "{run:#}");
    let attempt: &Value = &run["steps"][0]["attempts"][0];
    assert_eq!(attempt["error"]["code"], "secret_missing", "{run:#}");
    assert_eq!(attempt["error"]["retryable"], false, "{run:#}");
    let message = attempt["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("\"api_token\""), "{message}");
    assert!(message.contains("FULFIL_SECRET_API_TOKEN"), "{message}");
    assert!(
        seen.lock().map(|s| s.is_empty()).unwrap_or(false),
        "no request is sent"
    );
    stop_worker.cancel();
    stack.stop().await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
