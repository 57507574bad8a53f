//! What the ledger and the dead letters hold, as the API and the CLI show
//! them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use fulfil_core::ids::{RequestId, RunId};
use fulfil_core::params::Violation;
use fulfil_core::status::{EventOutcome, EventVia};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// What one trigger did with an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerOutcome {
    pub trigger: String,
    pub promise: String,
    pub outcome: EventOutcome,
    /// The request filed, or the one filed earlier for a duplicate.
    #[serde(default)]
    pub request_id: Option<RequestId>,
    #[serde(default)]
    pub run_id: Option<RunId>,
    /// Why: the filter that was false, the mapping error, the schema
    /// violations in words.
    #[serde(default)]
    pub reason: Option<String>,
    /// Schema violations of the rendered params, at their JSON pointers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
}

/// A waiting step an event completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitCompleted {
    pub run_id: RunId,
    pub step: String,
}

/// The answer to `POST /v1/events` and to a dead letter's replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventReceipt {
    /// The event's CloudEvent `id`.
    pub id: String,
    /// The event's CloudEvent `source`.
    pub source: String,
    /// Where the ledger keeps this receipt (`GET /v1/events/{ledger_id}`).
    pub ledger_id: Uuid,
    pub outcomes: Vec<TriggerOutcome>,
    #[serde(default)]
    pub waits_completed: Vec<WaitCompleted>,
    /// Set when the event was also kept as a dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_id: Option<Uuid>,
}

/// One received event in the ledger: `GET /v1/events[/{id}]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub ledger_id: Uuid,
    pub received_at: DateTime<Utc>,
    pub via: EventVia,
    /// The NATS subject it arrived on (bus events).
    #[serde(default)]
    pub nats_subject: Option<String>,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The whole CloudEvent in JSON format (attributes, extensions, data).
    pub event: Value,
    pub outcomes: Vec<TriggerOutcome>,
    #[serde(default)]
    pub waits_completed: Vec<WaitCompleted>,
    #[serde(default)]
    pub dead_letter_id: Option<Uuid>,
    /// Who posted it over HTTP (a principal id, `user:alice`); `None` for
    /// bus events and replays.
    #[serde(default)]
    pub received_by: Option<String>,
}

/// A bus message that could not be used: `GET /v1/dead-letters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: Uuid,
    pub received_at: DateTime<Utc>,
    /// The NATS subject it arrived on; none for an HTTP event.
    #[serde(default)]
    pub subject: Option<String>,
    /// Why it could not be used.
    pub reason: String,
    /// Its headers as received, each name with its values.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Its bytes as received: UTF-8 text when they are, else base64 with
    /// `payload_encoding` = `base64`.
    pub payload: String,
    /// `utf8` or `base64`.
    pub payload_encoding: String,
    /// The ledger entry of the event, when it was a CloudEvent.
    #[serde(default)]
    pub ledger_id: Option<Uuid>,
    /// How often an operator replayed it, and when last.
    pub replays: i32,
    #[serde(default)]
    pub replayed_at: Option<DateTime<Utc>>,
    /// What the last replay did: an [`EventReceipt`], or
    /// `{"not_a_cloudevent": reason}` when it still was not one.
    #[serde(default)]
    pub last_replay: Option<Value>,
}
