//! `nats.publish`: publishes one message with core NATS, for alerts and
//! notifications to other systems on the bus.
//!
//! Input: `{subject, data: any JSON (sent as its JSON text), headers?: {k: v}}`;
//! output: `{subject}`. The publish is flushed before the step succeeds, so
//! the message has reached the server; it is not a JetStream publish, so no
//! stream acknowledges it and subscribers that are away miss it. Like every
//! step it may run more than once: subscribers see at-least-once delivery.

use std::{collections::BTreeMap, str::FromStr};

use async_nats::{HeaderMap, HeaderName, HeaderValue, client::PublishErrorKind};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::handler::{Handler, StepError, TaskContext, parse_input};

/// The `nats.publish` handler.
#[derive(Debug, Clone)]
pub struct NatsPublish {
    client: async_nats::Client,
}

impl NatsPublish {
    pub const NAME: &'static str = "nats.publish";

    pub fn new(client: async_nats::Client) -> Self {
        Self { client }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    subject: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    headers: BTreeMap<String, Value>,
}

/// A subject a message can be published on: dot-separated non-empty tokens,
/// no whitespace, no wildcards.
fn check_subject(subject: &str) -> Result<(), StepError> {
    let problem = if subject.is_empty() {
        Some("must not be empty")
    } else if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("must not contain whitespace")
    } else if subject.split('.').any(str::is_empty) {
        Some("must not have empty tokens (leading, trailing or double '.')")
    } else if subject.split('.').any(|token| token == "*" || token == ">") {
        Some("must not contain wildcards ('*', '>'): a message is published on one subject")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(StepError::invalid_input(
            "subject",
            format!("{subject:?} {problem}"),
        )),
        None => Ok(()),
    }
}

fn headers(input: &BTreeMap<String, Value>) -> Result<HeaderMap, StepError> {
    let mut headers = HeaderMap::new();
    for (name, value) in input {
        let field = format!("headers.{name}");
        let header_name = HeaderName::from_str(name)
            .map_err(|_| StepError::invalid_input(&field, "not a valid header name"))?;
        let text = super::header_value_text(&field, value)?;
        let header_value = HeaderValue::from_str(&text)
            .map_err(|_| StepError::invalid_input(&field, "must not contain line breaks"))?;
        headers.append(header_name, header_value);
    }
    Ok(headers)
}

#[async_trait]
impl Handler for NatsPublish {
    async fn handle(&self, _: &TaskContext, input: Value) -> Result<Value, StepError> {
        let input: Input = parse_input(input)?;
        check_subject(&input.subject)?;
        let headers = headers(&input.headers)?;
        let payload =
            serde_json::to_vec(&input.data).map_err(|err| StepError::invalid_input("data", err))?;

        self.client
            .publish_with_headers(input.subject.clone(), headers, payload.into())
            .await
            .map_err(|err| match err.kind() {
                PublishErrorKind::MaxPayloadExceeded => StepError::permanent(format!(
                    "message for {:?} is larger than the server accepts: {err}",
                    input.subject
                ))
                .with_code("nats_payload_too_large"),
                PublishErrorKind::InvalidSubject => {
                    StepError::invalid_input("subject", format!("{:?}: {err}", input.subject))
                }
                PublishErrorKind::Send => {
                    StepError::retryable(format!("cannot publish to {:?}: {err}", input.subject))
                        .with_code("nats_publish")
                }
            })?;
        self.client.flush().await.map_err(|err| {
            StepError::retryable(format!(
                "published to {:?} but could not flush: {err}",
                input.subject
            ))
            .with_code("nats_publish")
        })?;

        Ok(json!({ "subject": input.subject }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_headers_are_checked_before_publishing() {
        assert!(check_subject("alerts.team-data").is_ok());
        for bad in ["", "a..b", ".a", "a.", "a b", "alerts.*", "alerts.>"] {
            let err = check_subject(bad).unwrap_err();
            assert_eq!(err.code(), Some("invalid_input"), "{bad:?}");
            assert!(!err.is_retryable());
            assert!(err.message().contains("`subject`"), "{}", err.message());
        }

        let map = headers(&BTreeMap::from([
            ("X-Team".to_owned(), json!("data")),
            ("X-Count".to_owned(), json!(3)),
        ]))
        .unwrap();
        assert_eq!(map.get("X-Count").map(HeaderValue::as_str), Some("3"));

        let err = headers(&BTreeMap::from([("X-A".to_owned(), json!("a\nb"))])).unwrap_err();
        assert!(err.message().contains("`headers.X-A`"), "{}", err.message());
        let err = headers(&BTreeMap::from([("bad:name".to_owned(), json!("v"))])).unwrap_err();
        assert!(
            err.message().contains("`headers.bad:name`"),
            "{}",
            err.message()
        );
    }
}
