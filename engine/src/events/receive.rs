//! Deciding what a batch of received events does, and committing it.
//!
//! For each event, every trigger of every Promise head is asked whether it
//! matches (the NATS subject and the CloudEvent type); a matching trigger's
//! `filter` and `params` are evaluated over `event`, the params validated
//! against the Promise's schema, and a request is filed with the idempotency
//! key `event:<trigger>:<source>:<id>`. The requests, the ledger entry of
//! every event and the dead letters of the batch are written in **one
//! transaction**: the outcome recorded in the ledger is exactly what was
//! committed, and a bus message is acknowledged only after that commit.
//!
//! The same event arriving again (redelivered, sent twice, posted over HTTP
//! after the bus) meets its own idempotency key and is recorded as a
//! `duplicate` naming the request filed the first time.

use std::collections::BTreeMap;
use std::sync::Arc;

use fulfil_core::Promise;
use fulfil_core::params::ParamsError;
use fulfil_core::status::{EventOutcome, EventVia};
use fulfil_core::trigger::TriggerMapping;
use serde_json::{Value, json};
use sqlx::Arguments;
use uuid::Uuid;

use super::cloudevent::{NotACloudEvent, ReceivedEvent};
use super::model::{EventReceipt, TriggerOutcome};
use crate::Engine;
use crate::promises::PromiseError;
use crate::requests::{RequestError, ValidRequest, prepare, stage_requests};
use crate::run::RunError;
use crate::waits::ArrivedEvent;

/// A message as it arrived, kept byte for byte for a dead letter.
#[derive(Debug, Clone, Default)]
pub struct RawMessage {
    /// The NATS subject; none for HTTP.
    pub subject: Option<String>,
    pub headers: BTreeMap<String, Vec<String>>,
    pub payload: Vec<u8>,
}

/// One received message and how it came.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub via: EventVia,
    pub raw: RawMessage,
    /// The message read as a CloudEvent, or why it is not one.
    pub event: Result<ReceivedEvent, NotACloudEvent>,
    /// Set for a replay: the dead letter this arrival came from, which is
    /// updated instead of a new one being written.
    pub replay_of: Option<Uuid>,
    /// Who posted it over HTTP (the principal's id), kept in the ledger as
    /// `received_by`; `None` for bus events and replays.
    pub received_by: Option<String>,
}

/// What became of one arrival, once committed.
#[derive(Debug, Clone)]
pub enum Received {
    /// A CloudEvent: its ledger entry and each trigger's outcome.
    Event(EventReceipt),
    /// Not a CloudEvent: kept as a dead letter with the reason.
    NotAnEvent {
        dead_letter_id: Uuid,
        reason: String,
    },
}

/// Why a batch could not be committed; nothing of it was.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Postgres failed; [`crate::db::is_transient`] says whether to retry.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Filing the requests failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A Promise head could not be read.
    #[error(transparent)]
    Promise(#[from] PromiseError),
    /// A Promise kept getting new versions while the batch was being
    /// filed; nothing was committed. Retry.
    #[error("Promise {0:?} kept changing while events were filed; retry")]
    HeadKeptMoving(String),
}

impl ReceiveError {
    /// Whether trying the same batch again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Db(e) | Self::Run(RunError::Db(e)) => crate::db::is_transient(e),
            Self::Promise(PromiseError::Db(e)) => crate::db::is_transient(e),
            Self::HeadKeptMoving(_) => true,
            _ => false,
        }
    }
}

/// Longest idempotency key a request takes (see `requests.rs`).
const MAX_KEY_LEN: usize = 255;

/// Decides and commits every arrival of the batch in one transaction; the
/// answers are in the order of `arrivals`.
pub async fn receive(engine: &Engine, arrivals: &[Arrival]) -> Result<Vec<Received>, ReceiveError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match receive_once(engine, arrivals).await {
            Err(ReceiveError::HeadKeptMoving(name)) if tries < 3 => {
                engine.promises().forget_head(&name);
            }
            outcome => return outcome,
        }
    }
}

/// A trigger's decision before anything is stored.
enum Decision {
    File { request: usize },
    Settled(TriggerOutcome),
}

struct Planned {
    ledger_id: Uuid,
    decisions: Vec<(String, String, Decision)>,
    dead_letter: Option<(Uuid, String)>,
}

async fn receive_once(
    engine: &Engine,
    arrivals: &[Arrival],
) -> Result<Vec<Received>, ReceiveError> {
    let heads = promise_heads(engine).await?;
    let admission = crate::policies::snapshot(engine).await?;
    let mut requests: Vec<ValidRequest> = Vec::new();
    let mut plans: Vec<Result<Planned, (Uuid, String)>> = Vec::with_capacity(arrivals.len());
    for arrival in arrivals {
        let event = match &arrival.event {
            Ok(event) => event,
            Err(not_an_event) => {
                let id = arrival.replay_of.unwrap_or_else(Uuid::now_v7);
                plans.push(Err((id, not_an_event.to_string())));
                continue;
            }
        };
        let subject = match arrival.via {
            EventVia::Http => None,
            EventVia::Bus | EventVia::Replay => arrival.raw.subject.as_deref(),
        };
        let mut decisions = Vec::new();
        for promise in &heads {
            for trigger in promise.matching_triggers(subject, event.event_type()) {
                let name = trigger.name().to_string();
                let decision = decide(engine, &admission, promise, &trigger, event, &mut requests);
                decisions.push((name, promise.metadata.name.clone(), decision));
            }
        }
        // Each reason names its trigger already.
        let invalid: Vec<&str> = decisions
            .iter()
            .filter_map(|(_, _, d)| match d {
                Decision::Settled(o) if o.outcome == EventOutcome::Invalid => {
                    Some(o.reason.as_deref().unwrap_or("invalid"))
                }
                _ => None,
            })
            .collect();
        let dead_letter = (!invalid.is_empty()).then(|| {
            (
                arrival.replay_of.unwrap_or_else(Uuid::now_v7),
                invalid.join("; "),
            )
        });
        plans.push(Ok(Planned {
            ledger_id: Uuid::now_v7(),
            decisions,
            dead_letter,
        }));
    }

    let mut tx = engine.pool().begin().await?;
    let staged = if requests.is_empty() {
        None
    } else {
        Some(stage_requests(engine, &mut tx, &requests).await?)
    };
    let stored = staged.as_ref().map(|s| s.outcomes()).unwrap_or_default();
    if let Some(Err(RequestError::HeadMoved(name))) = stored
        .iter()
        .find(|o| matches!(o, Err(RequestError::HeadMoved(_))))
    {
        return Err(ReceiveError::HeadKeptMoving(name.clone()));
    }

    // Waits are matched after the batch's runs were filed (a run it
    // started may already wait on one of its events, through `lookback`)
    // and before the ledger entries that report them.
    let arrived: Vec<ArrivedEvent<'_>> = arrivals
        .iter()
        .zip(&plans)
        .filter_map(|(arrival, plan)| {
            let (Ok(event), Ok(plan)) = (&arrival.event, plan) else {
                return None;
            };
            Some(ArrivedEvent {
                ledger_id: plan.ledger_id,
                event_type: event.event_type(),
                nats_subject: match arrival.via {
                    EventVia::Http => None,
                    EventVia::Bus | EventVia::Replay => arrival.raw.subject.as_deref(),
                },
                event: event.as_json(),
            })
        })
        .collect();
    let mut waits_completed = crate::waits::match_events(engine, &mut tx, &arrived)
        .await?
        .into_iter();
    let mut matched_any = false;

    let mut received = Vec::with_capacity(arrivals.len());
    let mut ledger = LedgerRows::default();
    let mut dead = DeadLetterRows::default();
    for (arrival, plan) in arrivals.iter().zip(plans) {
        match plan {
            Err((id, reason)) => {
                dead.push(id, arrival, &reason, None);
                if let Some(dead_letter) = arrival.replay_of {
                    dead.replayed_without_event(dead_letter, &reason);
                }
                received.push(Received::NotAnEvent {
                    dead_letter_id: id,
                    reason,
                });
            }
            Ok(plan) => {
                let Ok(event) = &arrival.event else { continue };
                let outcomes: Vec<TriggerOutcome> = plan
                    .decisions
                    .into_iter()
                    .map(|(trigger, promise, decision)| match decision {
                        Decision::Settled(outcome) => outcome,
                        Decision::File { request } => {
                            filed(trigger, promise, stored.get(request), &requests[request])
                        }
                    })
                    .collect();
                let dead_letter_id = plan.dead_letter.as_ref().map(|(id, _)| *id);
                if let Some((id, reason)) = &plan.dead_letter {
                    dead.push(*id, arrival, reason, Some(plan.ledger_id));
                }
                let waits_completed = waits_completed.next().unwrap_or_default();
                matched_any |= !waits_completed.is_empty();
                let receipt = EventReceipt {
                    id: event.id().to_string(),
                    source: event.source().to_string(),
                    ledger_id: plan.ledger_id,
                    outcomes,
                    waits_completed,
                    dead_letter_id,
                };
                ledger.push(arrival, event, &receipt)?;
                if let Some(dead_letter) = arrival.replay_of {
                    dead.replayed(dead_letter, &receipt)?;
                }
                received.push(Received::Event(receipt));
            }
        }
    }
    ledger.insert(&mut tx).await?;
    dead.insert(&mut tx).await?;
    tx.commit().await?;
    count_received(&received);
    if let Some(staged) = staged {
        staged.committed(engine);
    }
    if matched_any {
        engine.wake_timers();
    }
    Ok(received)
}

/// Counts committed arrivals by outcome (see
/// [`crate::metrics::EVENTS_RECEIVED`]).
fn count_received(received: &[Received]) {
    for r in received {
        match r {
            Received::NotAnEvent { .. } => crate::metrics::event_received("not_an_event"),
            Received::Event(receipt) if receipt.outcomes.is_empty() => {
                crate::metrics::event_received(if receipt.waits_completed.is_empty() {
                    "unmatched"
                } else {
                    "wait"
                });
            }
            Received::Event(receipt) => {
                for o in &receipt.outcomes {
                    crate::metrics::event_received(o.outcome.as_str());
                }
            }
        }
    }
}

/// The head of every Promise that has triggers or listens on a subject. The list of heads is read
/// each batch (one small query) so a Promise applied by another process
/// is matched at once; the Promises themselves come from the cache.
pub(crate) async fn promise_heads(engine: &Engine) -> Result<Vec<Arc<Promise>>, ReceiveError> {
    let heads: Vec<(String, String)> =
        sqlx::query_as("SELECT name, version FROM fulfil.promise_heads ORDER BY name")
            .fetch_all(engine.pool())
            .await?;
    let mut promises = Vec::new();
    for (name, version) in heads {
        let promise = engine
            .promises()
            .load(engine.pool(), &name, &version)
            .await?;
        if !promise.spec.triggers.is_empty() || !promise.inbound_subjects().is_empty() {
            promises.push(promise);
        }
    }
    Ok(promises)
}

fn decide(
    engine: &Engine,
    admission: &crate::policies::Admission,
    promise: &Arc<Promise>,
    trigger: &fulfil_core::trigger::MatchedTrigger<'_>,
    event: &ReceivedEvent,
    requests: &mut Vec<ValidRequest>,
) -> Decision {
    let settled = |outcome, reason: String| {
        Decision::Settled(TriggerOutcome {
            trigger: trigger.name().to_string(),
            promise: promise.metadata.name.clone(),
            outcome,
            request_id: None,
            run_id: None,
            reason: Some(reason),
            violations: Vec::new(),
        })
    };
    let context = json!({
        "event": event.as_json(),
        "vars": engine.vars().capture(promise.var_references().iter().map(String::as_str)),
    });
    let params = match trigger.map(&context) {
        Ok(TriggerMapping::Filtered { filter }) => {
            return settled(
                EventOutcome::Filtered,
                format!("filter of trigger {} was false: {filter}", trigger.name()),
            );
        }
        Ok(TriggerMapping::Params(params)) => params,
        Err(e) => return settled(EventOutcome::Invalid, e.to_string()),
    };
    let params = match engine
        .promises()
        .params_schema(promise)
        .and_then(|schema| schema.validate(params))
    {
        Ok(params) => params,
        Err(ParamsError::Invalid(violations)) => {
            let reason = format!(
                "params of trigger {} break the schema of Promise {}: {}",
                trigger.name(),
                promise.metadata.name,
                fulfil_core::params::describe_violations(&violations)
            );
            return Decision::Settled(TriggerOutcome {
                trigger: trigger.name().to_string(),
                promise: promise.metadata.name.clone(),
                outcome: EventOutcome::Invalid,
                request_id: None,
                run_id: None,
                reason: Some(reason),
                violations,
            });
        }
        Err(ParamsError::Schema(message)) => {
            return settled(
                EventOutcome::Invalid,
                format!(
                    "the schema of Promise {} does not compile: {message}",
                    promise.metadata.name
                ),
            );
        }
    };
    let bytes = crate::run::json_size(&params);
    if bytes > crate::run::MAX_TASK_INPUT_BYTES {
        return settled(
            EventOutcome::Invalid,
            format!(
                "the params trigger {} rendered are {bytes} bytes; at most {} are accepted",
                trigger.name(),
                crate::run::MAX_TASK_INPUT_BYTES
            ),
        );
    }
    let key = format!("event:{}:{}:{}", trigger.name(), event.source(), event.id());
    if key.len() > MAX_KEY_LEN {
        return settled(
            EventOutcome::Invalid,
            format!(
                "trigger {}: the idempotency key event:<trigger>:<source>:<id> would be {} bytes; source and id must be shorter (at most {MAX_KEY_LEN} in all)",
                trigger.name(),
                key.len()
            ),
        );
    }
    // A trigger files for its Promise's owner (see
    // `crate::policies::engine_principal`).
    let actor = format!("event:{}", event.source());
    let principal = crate::policies::engine_principal(&actor, promise.metadata.owner.as_deref());
    let violations = admission.check(promise, &params, &principal);
    if !violations.is_empty() {
        return settled(
            EventOutcome::Invalid,
            format!(
                "trigger {}: the request for Promise {} was denied by admission policy: {}",
                trigger.name(),
                promise.metadata.name,
                fulfil_core::policy::describe_violations(&violations)
            ),
        );
    }
    requests.push(prepare(
        engine,
        promise.clone(),
        params,
        Some(key),
        actor,
        event.traceparent(),
    ));
    Decision::File {
        request: requests.len() - 1,
    }
}

/// The outcome of a trigger whose request was written.
fn filed(
    trigger: String,
    promise: String,
    outcome: Option<&Result<crate::requests::Accepted, RequestError>>,
    request: &ValidRequest,
) -> TriggerOutcome {
    let (outcome, request_id, run_id, reason) = match outcome {
        Some(Ok(a)) if !a.replayed => (
            EventOutcome::Filed,
            Some(a.request_id),
            Some(a.run_id),
            None,
        ),
        Some(Ok(a)) => (
            EventOutcome::Duplicate,
            Some(a.request_id),
            Some(a.run_id),
            Some(format!(
                "this event was filed before through trigger {trigger} (idempotency key {})",
                request.idempotency_key.as_deref().unwrap_or_default()
            )),
        ),
        Some(Err(RequestError::IdempotencyConflict { request_id, .. })) => (
            EventOutcome::Duplicate,
            Some(*request_id),
            None,
            Some(format!(
                "this event was filed before through trigger {trigger} with other params (the Promise or the event changed since); nothing new was filed"
            )),
        ),
        Some(Err(e)) => (EventOutcome::Invalid, None, None, Some(e.to_string())),
        None => (
            EventOutcome::Invalid,
            None,
            None,
            Some("no outcome was recorded for this request".into()),
        ),
    };
    TriggerOutcome {
        trigger,
        promise,
        outcome,
        request_id,
        run_id,
        reason,
        violations: Vec::new(),
    }
}

/// `text` with each NUL written as `\0`, for a column that cannot hold it.
fn without_nul(text: &str) -> String {
    text.replace('\0', "\\0")
}

/// Ledger entries of a batch, as columns for one `INSERT ... UNNEST`.
#[derive(Default)]
struct LedgerRows {
    ids: Vec<Uuid>,
    via: Vec<&'static str>,
    subjects: Vec<Option<String>>,
    event_ids: Vec<String>,
    sources: Vec<String>,
    types: Vec<String>,
    events: Vec<Value>,
    outcomes: Vec<Value>,
    dead_letters: Vec<Option<Uuid>>,
    received_by: Vec<Option<String>>,
}

impl LedgerRows {
    fn push(
        &mut self,
        arrival: &Arrival,
        event: &ReceivedEvent,
        receipt: &EventReceipt,
    ) -> Result<(), ReceiveError> {
        self.ids.push(receipt.ledger_id);
        self.via.push(arrival.via.as_str());
        self.subjects.push(arrival.raw.subject.clone());
        self.event_ids.push(event.id().to_string());
        self.sources.push(event.source().to_string());
        self.types.push(event.event_type().to_string());
        self.events.push(event.as_json().clone());
        self.outcomes.push(
            serde_json::to_value(&receipt.outcomes)
                .map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
        );
        self.dead_letters.push(receipt.dead_letter_id);
        self.received_by.push(arrival.received_by.clone());
        Ok(())
    }

    async fn insert(self, conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let mut args = sqlx::postgres::PgArguments::default();
        (|| -> Result<(), sqlx::error::BoxDynError> {
            args.add(self.ids)?;
            args.add(self.via)?;
            args.add(self.subjects)?;
            args.add(self.event_ids)?;
            args.add(self.sources)?;
            args.add(self.types)?;
            args.add(self.events)?;
            args.add(self.outcomes)?;
            args.add(self.dead_letters)?;
            args.add(self.received_by)
        })()
        .map_err(sqlx::Error::Encode)?;
        sqlx::query_with(
            "INSERT INTO fulfil.event_ledger
                 (ledger_id, via, nats_subject, event_id, source, type, event, outcomes, dead_letter_id,
                  received_by)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::jsonb[], $8::jsonb[], $9::uuid[], $10::text[])",
            args,
        )
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Dead letters of a batch, and what the replays among the arrivals did
/// (a replayed dead letter is not written again: its row records the
/// replay).
#[derive(Default)]
struct DeadLetterRows {
    replays: Vec<Uuid>,
    replay_receipts: Vec<Value>,
    ids: Vec<Uuid>,
    subjects: Vec<Option<String>>,
    reasons: Vec<String>,
    headers: Vec<Value>,
    payloads: Vec<Vec<u8>>,
    ledger_ids: Vec<Option<Uuid>>,
}

impl DeadLetterRows {
    fn push(&mut self, id: Uuid, arrival: &Arrival, reason: &str, ledger_id: Option<Uuid>) {
        if arrival.replay_of.is_some() {
            return;
        }
        self.ids.push(id);
        self.subjects.push(arrival.raw.subject.clone());
        // Text columns refuse NUL; a bus message's headers (and a parser's
        // message quoting them) may hold one, and the dead letter must
        // still be written.
        self.reasons.push(without_nul(reason));
        self.headers.push(json!(
            arrival
                .raw
                .headers
                .iter()
                .map(|(name, values)| (
                    without_nul(name),
                    values.iter().map(|v| without_nul(v)).collect::<Vec<_>>()
                ))
                .collect::<BTreeMap<_, _>>()
        ));
        self.payloads.push(arrival.raw.payload.clone());
        self.ledger_ids.push(ledger_id);
    }

    fn replayed(&mut self, id: Uuid, receipt: &EventReceipt) -> Result<(), ReceiveError> {
        self.replays.push(id);
        self.replay_receipts
            .push(serde_json::to_value(receipt).map_err(|e| sqlx::Error::Encode(Box::new(e)))?);
        Ok(())
    }

    fn replayed_without_event(&mut self, id: Uuid, reason: &str) {
        self.replays.push(id);
        self.replay_receipts
            .push(json!({ "not_a_cloudevent": without_nul(reason) }));
    }

    async fn insert(self, conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        if !self.replays.is_empty() {
            sqlx::query(
                "UPDATE fulfil.dead_letters d
                 SET replays = d.replays + 1, replayed_at = now(), last_replay = u.receipt
                 FROM UNNEST($1::uuid[], $2::jsonb[]) AS u(id, receipt) WHERE d.id = u.id",
            )
            .bind(&self.replays)
            .bind(&self.replay_receipts)
            .execute(&mut *conn)
            .await?;
        }
        if self.ids.is_empty() {
            return Ok(());
        }
        let mut args = sqlx::postgres::PgArguments::default();
        (|| -> Result<(), sqlx::error::BoxDynError> {
            args.add(self.ids)?;
            args.add(self.subjects)?;
            args.add(self.reasons)?;
            args.add(self.headers)?;
            args.add(self.payloads)?;
            args.add(self.ledger_ids)
        })()
        .map_err(sqlx::Error::Encode)?;
        sqlx::query_with(
            "INSERT INTO fulfil.dead_letters (id, subject, reason, headers, payload, ledger_id)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::bytea[], $6::uuid[])",
            args,
        )
        .execute(conn)
        .await?;
        Ok(())
    }
}
