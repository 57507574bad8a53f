//! `noop`: does nothing and outputs `{}`. Useful as a join point in a DAG and
//! in tests.

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::handler::{Handler, StepError, TaskContext};

/// The `noop` handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

impl Noop {
    pub const NAME: &'static str = "noop";
}

#[async_trait]
impl Handler for Noop {
    async fn handle(&self, _: &TaskContext, _: Value) -> Result<Value, StepError> {
        Ok(json!({}))
    }
}
