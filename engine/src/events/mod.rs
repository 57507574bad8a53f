//! Inbound events: CloudEvents received on the bus or over HTTP, matched
//! against the triggers of every Promise, each trigger's outcome kept in the
//! event ledger, and what cannot be used kept as a dead letter.
//!
//! Guarantees (DESIGN.md, durability contract 9): an event is acknowledged
//! on the bus only after its outcome (requests filed, ledger entry, dead
//! letter) is committed; the same event (`source` + `id`) never files a
//! second request through the same trigger, because the request carries the
//! idempotency key `event:<trigger>:<source>:<id>`. A malformed message is
//! a dead letter with its reason and its original bytes and headers, and
//! never stops the consumer.

mod cloudevent;
mod consumer;
mod ledger;
mod model;
mod receive;

use std::collections::BTreeMap;

pub use cloudevent::{NotACloudEvent, ReceivedEvent};
pub(crate) use consumer::run_consumer;
pub use consumer::{InboundStreamError, MAX_DELIVER, capture_subjects};
pub use ledger::{
    DEFAULT_RETENTION, LedgerFilter, get_event, keep_retention, list_dead_letters, list_events,
};
pub use model::{DeadLetter, EventReceipt, LedgerEntry, TriggerOutcome, WaitCompleted};
pub use receive::{Arrival, RawMessage, ReceiveError, Received, receive};

use fulfil_core::status::EventVia;
use uuid::Uuid;

use crate::Engine;
use crate::inspect::InspectError;

/// Decides one event posted over HTTP (`POST /v1/events`) and commits its
/// outcome; answers once committed. `received_by` (the posting principal's
/// id) is kept in the ledger entry.
pub async fn receive_http(
    engine: &Engine,
    headers: &http::HeaderMap,
    body: &[u8],
    received_by: &str,
) -> Result<EventReceipt, HttpEventError> {
    let event = ReceivedEvent::from_http(headers, body)?;
    let arrival = Arrival {
        via: EventVia::Http,
        raw: RawMessage {
            subject: None,
            headers: headers
                .iter()
                .filter(|(name, _)| kept_for_replay(name))
                .filter_map(|(k, v)| Some((k.to_string(), vec![v.to_str().ok()?.to_string()])))
                .collect(),
            payload: body.to_vec(),
        },
        event: Ok(event),
        replay_of: None,
        received_by: Some(received_by.to_string()),
    };
    match receive(engine, std::slice::from_ref(&arrival)).await?.pop() {
        Some(Received::Event(receipt)) => Ok(receipt),
        _ => Err(HttpEventError::NoReceipt),
    }
}

/// Whether an HTTP header of a posted event is stored with it (in the
/// ledger and a dead letter, for replay): only what decodes the event, the
/// CloudEvent attributes (`ce-*`) and its content type. Everything else,
/// above all `Authorization` and cookies, is the caller's transport and
/// credentials, which no table may hold.
fn kept_for_replay(name: &http::HeaderName) -> bool {
    name == http::header::CONTENT_TYPE || name.as_str().starts_with("ce-")
}

/// Why an event posted over HTTP was not taken; nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum HttpEventError {
    /// The body is not a CloudEvent (422).
    #[error(transparent)]
    NotACloudEvent(#[from] NotACloudEvent),
    /// Its outcome could not be committed.
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    /// A bug: the decision returned no receipt for the event.
    #[error("the event was decided but no receipt came back")]
    NoReceipt,
}

/// Why a dead letter could not be replayed; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// There is no dead letter with this id (it may have aged out).
    #[error("no dead letter {0}")]
    NotFound(Uuid),
    /// Reading it failed.
    #[error(transparent)]
    Inspect(#[from] InspectError),
    /// Its new outcome could not be committed.
    #[error(transparent)]
    Receive(#[from] ReceiveError),
}

/// Sends dead letter `id` through the normal path again, as it arrived
/// (same subject, headers and bytes): triggers are matched against today's
/// Promises, so a Promise fixed since files now. The dead letter records
/// the replay; the event's ledger gains an entry with `via` = `replay`.
pub async fn replay_dead_letter(engine: &Engine, id: Uuid) -> Result<Received, ReplayError> {
    let (subject, headers, payload) = ledger::load_dead_letter(engine.pool(), id)
        .await?
        .ok_or(ReplayError::NotFound(id))?;
    let event = ReceivedEvent::from_header_map(&headers, &payload);
    let arrival = Arrival {
        via: EventVia::Replay,
        raw: RawMessage {
            subject,
            headers: BTreeMap::new(),
            payload: Vec::new(),
        },
        event,
        replay_of: Some(id),
        received_by: None,
    };
    receive(engine, std::slice::from_ref(&arrival))
        .await?
        .pop()
        .ok_or(ReplayError::NotFound(id))
}
