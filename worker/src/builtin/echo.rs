//! `echo`: outputs its input unchanged, so a Promise can name values once and
//! read them as `steps.<id>.outputs`.

use async_trait::async_trait;
use serde_json::Value;

use crate::handler::{Handler, StepError, TaskContext};

/// The `echo` handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Echo {
    pub const NAME: &'static str = "echo";
}

#[async_trait]
impl Handler for Echo {
    async fn handle(&self, _: &TaskContext, input: Value) -> Result<Value, StepError> {
        Ok(input)
    }
}
