//! Handlers every worker ships with: `noop`, `echo`, `http`,
//! `nats.publish`, `exec` (commands of an operator's allow-list, none by
//! default: register [`Exec::new`] with one), and `git.commit` /
//! `git.remove`.
//!
//! Built-ins follow the same contract as custom handlers: bad input is a
//! permanent `invalid_input` error naming the field; transport failures are
//! retryable; every error carries a stable code.

mod echo;
mod exec;
mod git;
mod http;
mod nats_publish;
mod noop;
mod process;
mod scratch;

pub use echo::Echo;
pub use exec::{Exec, ExecAllowList, ExecConfigError, MAX_STDOUT_BYTES, STDERR_TAIL_BYTES};
pub use git::{GitCommit, GitRemove, MAX_PUSH_ATTEMPTS};
pub use http::{Http, HttpClientError};
pub use nats_publish::NatsPublish;
pub use noop::Noop;

use async_trait::async_trait;
use serde_json::Value;

use crate::handler::{Handler, Handlers, StepError, TaskContext};

/// Registers every built-in handler under its public name.
pub(crate) fn register_all(handlers: &mut Handlers, nats: async_nats::Client) {
    handlers
        .register(Noop::NAME, Noop)
        .register(Echo::NAME, Echo)
        .register(NatsPublish::NAME, NatsPublish::new(nats))
        .register(Exec::NAME, Exec::default())
        .register(GitCommit::NAME, GitCommit)
        .register(GitRemove::NAME, GitRemove);
    match Http::new() {
        Ok(http) => handlers.register(Http::NAME, http),
        Err(err) => {
            // Keep the name registered so steps fail with the reason instead
            // of `unknown_handler`.
            tracing::error!(error = %err, "the http handler is unavailable");
            handlers.register(
                Http::NAME,
                Unavailable {
                    reason: err.to_string(),
                },
            )
        }
    };
}

/// A header value from step input: strings as they are, numbers and booleans
/// as their JSON text; anything else is `invalid_input` at `field`.
pub(crate) fn header_value_text(field: &str, value: &Value) -> Result<String, StepError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Number(_) | Value::Bool(_) => Ok(value.to_string()),
        _ => Err(StepError::invalid_input(
            field,
            "expected a string, number or boolean",
        )),
    }
}

/// Stands in for a built-in that could not be set up.
struct Unavailable {
    reason: String,
}

#[async_trait]
impl Handler for Unavailable {
    async fn handle(&self, task: &TaskContext, _: Value) -> Result<Value, StepError> {
        Err(StepError::retryable(format!(
            "handler {:?} is unavailable on this worker: {}",
            task.handler, self.reason
        ))
        .with_code("handler_unavailable"))
    }
}
