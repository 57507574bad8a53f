//! Running one delivered task: decoding it, running its handler to an
//! [`Outcome`], keeping the message alive meanwhile, and acking it once the
//! result is stored.
//!
//! * A message that is not a [`TaskMessage`] is dead-lettered (by
//!   `fulfil_bus::dead_letter`) and never reaches a handler.
//! * The handler runs in its own tokio task: a panic becomes a retryable
//!   `handler_panic` failure, the task's deadline a retryable `timeout`; in
//!   both cases the handler is aborted and the worker carries on.
//! * While the handler runs, `+WPI` goes out every `ack_wait / 2`, and the
//!   handler's heartbeats are forwarded, throttled, to the engine.
//! * The message is acked only after the result is published; if that
//!   fails the message stays unacked and is redelivered.

use std::{any::Any, future::Future, sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use serde_json::Value;
use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, debug, error, info, info_span, warn};

use fulfil_core::wire::{Outcome, Progress, ResultMessage, TaskMessage};

use super::{
    Shared,
    publish::{publish_result, report_progress},
};
use crate::handler::{Handlers, Heartbeat, StepError, TaskContext};
use crate::secrets::Redactor;

/// Steps finishing sooner than this send no `started` report.
const STARTED_REPORT_DELAY: Duration = Duration::from_millis(250);

/// Handles one delivered message, holding a concurrency slot throughout.
pub(super) async fn process(
    shared: Arc<Shared>,
    message: jetstream::Message,
    ack_wait: Duration,
    _slot: OwnedSemaphorePermit,
) {
    let abandon = shared.abandon.clone();
    tokio::select! {
        biased;
        () = abandon.cancelled() => {
            debug!(subject = %message.subject, "abandoned at shutdown; it will be redelivered");
        }
        () = handle_message(&shared, &message, ack_wait) => {}
    }
}

async fn handle_message(shared: &Shared, message: &jetstream::Message, ack_wait: Duration) {
    let task: TaskMessage = match serde_json::from_slice(&message.payload) {
        Ok(task) => task,
        Err(err) => {
            fulfil_bus::dead_letter(
                &shared.js,
                &shared.names,
                "tasks",
                message,
                fulfil_bus::DeadLetterReason::Unparseable,
                &format!("not a valid task message: {err}"),
            )
            .await;
            return;
        }
    };
    let span = info_span!(
        "execute",
        run_id = %task.run_id,
        step_id = %task.step_id,
        attempt = task.attempt,
        task_id = %task.task_id,
        handler = %task.handler,
    );
    // The run's trace, from the engine's dispatch (docs/wire.md).
    if let Some(parent) =
        fulfil_bus::trace::of_message(message.headers.as_ref(), task.traceparent.as_deref())
    {
        parent.adopt(&span);
    }
    async {
        let delivered = message.info().map(|info| info.delivered).ok();
        debug!(?delivered, "task received");
        let work = async {
            let started_at = Utc::now();
            let clock = Instant::now();
            let (beats, heartbeats) = tokio::sync::mpsc::unbounded_channel();
            // Secret slots are filled here, in this process only; the input
            // is never logged, and everything the handler reports back is
            // redacted (see crate::secrets).
            let mut input = task.input.clone();
            let (resolved, redactor) = match shared.secrets.resolve(&mut input, &task.secrets).await
            {
                Ok(redactor) => (Ok(input), redactor),
                Err(err) => (Err(err), Redactor::default()),
            };
            let handler = async {
                let input = match resolved {
                    Ok(input) => input,
                    Err(err) => return Outcome::Error(err.into()),
                };
                let handler = run_handler(
                    &shared.handlers,
                    &task,
                    input,
                    &redactor,
                    Heartbeat::new(beats),
                );
                tokio::pin!(handler);
                // Quick steps report nothing but their result; a step still
                // running after a moment says it started, so the engine shows
                // it running and arms its timeout and heartbeat clocks.
                tokio::select! {
                    outcome = &mut handler => outcome,
                    () = tokio::time::sleep(started_report_delay(&task)) => {
                        report_progress(shared, &task, Progress::Started, None).await;
                        handler.await
                    }
                }
            };
            let (outcome, ()) = tokio::join!(
                handler,
                forward_heartbeats(shared, message, &task, &redactor, heartbeats)
            );
            match &outcome {
                Outcome::Ok { .. } => info!(elapsed = ?clock.elapsed(), "step attempt succeeded"),
                Outcome::Error(failure) => info!(
                    elapsed = ?clock.elapsed(),
                    code = failure.code.as_deref().unwrap_or(""),
                    retryable = failure.retryable,
                    error = %failure.message,
                    "step attempt failed"
                ),
            }
            let result = ResultMessage {
                task_id: task.task_id,
                run_id: task.run_id,
                step_id: task.step_id.clone(),
                attempt: task.attempt,
                worker_id: shared.worker_id.clone(),
                outcome,
                started_at,
                finished_at: Utc::now(),
            };
            publish_result(shared, result).await
        };
        match with_progress(message, ack_wait, work).await {
            Ok(()) => {
                if let Err(err) = message.ack().await {
                    // The result is stored; redelivery would only produce a
                    // duplicate result, which the engine ignores.
                    warn!(error = %err, "result published but the task ack failed");
                }
            }
            Err(err) => error!(
                error = %err,
                "cannot publish the result; leaving the task unacked so it is redelivered"
            ),
        }
    }
    .instrument(span)
    .await;
}

/// Runs the task's handler on `input` (its secret slots filled) in its own
/// task, so a panic is caught, and gives up at the task's deadline. The
/// outcome comes back with `redactor` applied.
async fn run_handler(
    handlers: &Handlers,
    task: &TaskMessage,
    input: Value,
    redactor: &Redactor,
    heartbeat: Heartbeat,
) -> Outcome {
    match run_unredacted(handlers, task, input, redactor, heartbeat).await {
        Outcome::Ok { output } => Outcome::Ok {
            output: redactor.value(output),
        },
        Outcome::Error(failure) => Outcome::Error(redactor.failure(failure)),
    }
}

async fn run_unredacted(
    handlers: &Handlers,
    task: &TaskMessage,
    input: Value,
    redactor: &Redactor,
    heartbeat: Heartbeat,
) -> Outcome {
    let handler = match handlers.resolve(&task.handler) {
        Ok(handler) => handler,
        Err(err) => return Outcome::Error(err.into()),
    };
    let ctx = TaskContext::from_task(task).with_heartbeat(heartbeat);
    let remaining = ctx.remaining();
    let timeout = || {
        StepError::retryable(format!(
            "handler {:?} did not finish before the task deadline {}",
            task.handler,
            task.deadline.to_rfc3339()
        ))
        .with_code("timeout")
    };
    if remaining.is_zero() {
        return Outcome::Error(timeout().into());
    }
    // Dropping the handle (on timeout or abandon) aborts the handler.
    let running = AbortOnDropHandle::new(tokio::spawn(
        async move { handler.handle(&ctx, input).await }.in_current_span(),
    ));
    match tokio::time::timeout(remaining, running).await {
        Err(_) => Outcome::Error(timeout().into()),
        Ok(Ok(Ok(output))) => Outcome::Ok { output },
        Ok(Ok(Err(err))) => Outcome::Error(err.into()),
        Ok(Err(join)) if join.is_panic() => {
            let message = redactor.text(&panic_message(join.into_panic()));
            error!(panic = %message, "handler panicked");
            Outcome::Error(
                StepError::retryable(format!("handler {:?} panicked: {message}", task.handler))
                    .with_code("handler_panic")
                    .into(),
            )
        }
        Ok(Err(join)) => Outcome::Error(
            StepError::retryable(format!("handler {:?} was cancelled: {join}", task.handler))
                .with_code("handler_cancelled")
                .into(),
        ),
    }
}

/// How long a handler runs before the worker reports it started.
fn started_report_delay(task: &TaskMessage) -> Duration {
    let quarter = |ms: u64| Duration::from_millis(ms / 4);
    [
        Some(STARTED_REPORT_DELAY),
        task.timeout_ms.map(quarter),
        task.heartbeat_timeout_ms.map(quarter),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(STARTED_REPORT_DELAY)
}

/// Forwards the handler's heartbeats to the engine, at most one per third
/// of the heartbeat timeout, and keeps the task message alive meanwhile.
/// Ends when the handler has finished (its sender is dropped).
async fn forward_heartbeats(
    shared: &Shared,
    message: &jetstream::Message,
    task: &TaskMessage,
    redactor: &Redactor,
    mut heartbeats: tokio::sync::mpsc::UnboundedReceiver<Option<Value>>,
) {
    let min_gap = task
        .heartbeat_timeout_ms
        .map(|ms| Duration::from_millis(ms / 3))
        .unwrap_or(Duration::from_secs(1));
    let mut last_sent: Option<Instant> = None;
    while let Some(details) = heartbeats.recv().await {
        if last_sent.is_some_and(|at| at.elapsed() < min_gap) {
            continue;
        }
        last_sent = Some(Instant::now());
        let details = details.map(|d| redactor.value(d));
        report_progress(shared, task, Progress::Heartbeat, details).await;
        if let Err(err) = message.ack_with(AckKind::Progress).await {
            debug!(error = %err, "progress ack failed");
        }
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Drives `work` while telling the server, every `ack_wait / 2`, that the
/// message is still being worked on.
async fn with_progress<F: Future>(
    message: &jetstream::Message,
    ack_wait: Duration,
    work: F,
) -> F::Output {
    let period = (ack_wait / 2).max(Duration::from_secs(1));
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = ticker.tick() => {
                match message.ack_with(AckKind::Progress).await {
                    Ok(()) => debug!("still working; sent progress"),
                    Err(err) => warn!(error = %err, "cannot send progress"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use serde_json::{Value, json};

    use fulfil_core::wire::StepFailure;

    use super::*;
    use crate::handler::Handler;

    struct Panics;

    #[async_trait]
    impl Handler for Panics {
        async fn handle(&self, _: &TaskContext, _: Value) -> Result<Value, StepError> {
            panic!("boom at step");
        }
    }

    struct Sleeps;

    #[async_trait]
    impl Handler for Sleeps {
        async fn handle(&self, _: &TaskContext, _: Value) -> Result<Value, StepError> {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(Value::Null)
        }
    }

    fn task(handler: &str, deadline_in: chrono::Duration) -> TaskMessage {
        TaskMessage {
            input: json!({"a": 1}),
            ..crate::test_support::task_message(handler, "s", deadline_in)
        }
    }

    async fn run(handlers: &Handlers, task: &TaskMessage) -> Outcome {
        let input = task.input.clone();
        run_handler(
            handlers,
            task,
            input,
            &Redactor::default(),
            Heartbeat::default(),
        )
        .await
    }

    fn failure(outcome: Outcome) -> StepFailure {
        match outcome {
            Outcome::Error(failure) => failure,
            Outcome::Ok { output } => panic!("expected a failure, got output {output}"),
        }
    }

    #[tokio::test]
    async fn handler_outcomes_cover_success_panic_timeout_and_unknown() {
        let mut handlers = Handlers::new();
        handlers
            .register("echo", crate::builtin::Echo)
            .register("panics", Panics)
            .register("sleeps", Sleeps);
        let minute = chrono::Duration::seconds(60);

        let ok = run(&handlers, &task("echo", minute)).await;
        assert_eq!(
            ok,
            Outcome::Ok {
                output: json!({"a": 1})
            }
        );

        let panicked = failure(run(&handlers, &task("panics", minute)).await);
        assert_eq!(panicked.code.as_deref(), Some("handler_panic"));
        assert!(panicked.retryable);
        assert!(
            panicked.message.contains("boom at step"),
            "{}",
            panicked.message
        );

        let started = Instant::now();
        let late = task("sleeps", chrono::Duration::milliseconds(200));
        let timed_out = failure(run(&handlers, &late).await);
        assert_eq!(timed_out.code.as_deref(), Some("timeout"));
        assert!(timed_out.retryable);
        assert!(started.elapsed() < Duration::from_secs(5));

        let expired = failure(run(&handlers, &task("echo", chrono::Duration::seconds(-1))).await);
        assert_eq!(expired.code.as_deref(), Some("timeout"));

        let unknown = failure(run(&handlers, &task("nope", minute)).await);
        assert_eq!(unknown.code.as_deref(), Some("unknown_handler"));
        assert!(!unknown.retryable);
    }

    struct Leaks;

    #[async_trait]
    impl Handler for Leaks {
        async fn handle(&self, _: &TaskContext, input: Value) -> Result<Value, StepError> {
            if input["fail"] == json!(true) {
                return Err(StepError::permanent(format!("rejected {}", input["token"])));
            }
            Ok(json!({"seen": input}))
        }
    }

    #[tokio::test]
    async fn what_a_handler_reports_is_redacted_and_injected_text_is_not_resolved() {
        let dir = std::env::temp_dir().join(format!("fulfil-exec-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("api_token"), "v4lue-42\n").unwrap();
        let sources = crate::secrets::SecretSources::standard(Some(dir.clone()));
        let mut handlers = Handlers::new();
        handlers.register("leaks", Leaks);
        for fail in [false, true] {
            let mut task = task("leaks", chrono::Duration::seconds(60));
            task.input = json!({
                "token": "${{ secrets.api_token }}",
                "injected": "${{ secrets.api_token }}",
                "fail": fail,
            });
            task.secrets = vec![fulfil_core::wire::SecretSlot {
                pointer: "/token".into(),
                parts: vec![fulfil_core::wire::SecretPart::Secret("api_token".into())],
            }];
            let mut input = task.input.clone();
            let redactor = sources.resolve(&mut input, &task.secrets).await.unwrap();
            assert_eq!(input["token"], "v4lue-42");
            let outcome =
                run_handler(&handlers, &task, input, &redactor, Heartbeat::default()).await;
            let text = serde_json::to_string(&outcome).unwrap();
            assert!(!text.contains("v4lue-42"), "{text}");
            assert!(text.contains("[redacted:api_token]"), "{text}");
            if !fail {
                assert_eq!(
                    outcome,
                    Outcome::Ok {
                        output: json!({"seen": {"token": "[redacted:api_token]",
                            "injected": "${{ secrets.api_token }}", "fail": false}})
                    }
                );
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn exec_output_and_stderr_are_redacted_like_any_handler() {
        let dir = std::env::temp_dir().join(format!("fulfil-exec-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("db_password"), "pa55-w0rd-xyz\n").unwrap();
        let sources = crate::secrets::SecretSources::standard(Some(dir.clone()));
        let mut handlers = Handlers::new();
        let allowed = crate::builtin::ExecAllowList::from_entries(["sh"]).unwrap();
        handlers.register("exec", crate::builtin::Exec::new(allowed));
        for script in [
            r#"printf '{"dsn":"postgres://app:%s@db/orders"}' "$PW""#,
            r#"echo "password $PW rejected" >&2; exit 2"#,
        ] {
            let mut task = task("exec", chrono::Duration::seconds(30));
            task.input = json!({"command": "sh", "args": ["-c", script],
                                "env": {"PW": "${{ secrets.db_password }}"}});
            task.secrets = vec![fulfil_core::wire::SecretSlot {
                pointer: "/env/PW".into(),
                parts: vec![fulfil_core::wire::SecretPart::Secret("db_password".into())],
            }];
            let mut input = task.input.clone();
            let redactor = sources.resolve(&mut input, &task.secrets).await.unwrap();
            let outcome =
                run_handler(&handlers, &task, input, &redactor, Heartbeat::default()).await;
            let text = serde_json::to_string(&outcome).unwrap();
            assert!(!text.contains("pa55-w0rd-xyz"), "{text}");
            assert!(text.contains("[redacted:db_password]"), "{text}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
