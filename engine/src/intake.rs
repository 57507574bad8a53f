//! Group commit for new requests.
//!
//! Every accepted request needs its request, run, steps, history and first
//! tasks written and committed before it is answered. Written one at a time,
//! each is a transaction of its own with a WAL flush at its commit; under
//! load the commits queue behind each other. The intake instead hands each
//! validated request to a few writer tasks; a writer takes every request
//! waiting when it becomes free and stores them all in one transaction
//! ([`crate::requests::store_requests`]), so the batch grows with the load
//! and a lone request waits for no one.
//!
//! Each request is answered only after the transaction holding it
//! committed. If a batch fails, its requests are retried one transaction
//! each, so one bad request cannot fail the others and every caller gets
//! the error its own request met.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};

use futures::FutureExt;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::Engine;
use crate::engine::Inner;
use crate::requests::{Accepted, RequestError, ValidRequest, store_requests};
use crate::roles::{Roles, supervise};

/// Writer tasks: one can commit while the next batch gathers.
const WRITERS: usize = 4;
/// Most requests in one transaction.
const MAX_BATCH: usize = 256;
/// Requests waiting for a writer before new ones are turned away. Each
/// waiting request also holds its caller's HTTP connection (tens of KiB of
/// buffers in the API), so this bounds the API's memory under overload; at
/// the writers' pace it is well under a second of work.
pub(crate) const QUEUE: usize = 1024;

/// A request waiting to be stored, and where its answer goes.
pub(crate) struct Pending {
    request: ValidRequest,
    answer: oneshot::Sender<Result<Accepted, RequestError>>,
}

pub(crate) type IntakeSender = mpsc::Sender<Pending>;

/// Starts the writers of an engine. They hold the engine weakly: once every
/// handle is dropped the queue closes and they end.
/// Each writer is a supervised role (see [`crate::roles`]).
/// `dropped` is cancelled when the engine is dropped, after which the
/// writers end.
pub(crate) fn start(engine: Weak<Inner>, roles: Roles, dropped: CancellationToken) -> IntakeSender {
    let (sender, receiver) = mpsc::channel(QUEUE);
    let receiver = Arc::new(Mutex::new(receiver));
    for writer in 0..WRITERS {
        let (engine, receiver) = (engine.clone(), receiver.clone());
        // The writers end with the engine (its queue closes).
        tokio::spawn(supervise(
            roles.clone(),
            format!("intake writer {writer}"),
            dropped.clone(),
            move || write_batches(engine.clone(), receiver.clone()),
        ));
    }
    sender
}

/// Stores `request` with whatever else is waiting; answers once committed.
/// A full queue turns the request away at once ([`RequestError::Overloaded`])
/// rather than letting callers pile up without bound.
pub(crate) async fn submit(
    engine: &Engine,
    request: ValidRequest,
) -> Result<Accepted, RequestError> {
    let (answer, answered) = oneshot::channel();
    engine
        .intake()
        .try_send(Pending { request, answer })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RequestError::Overloaded(QUEUE),
            mpsc::error::TrySendError::Closed(_) => RequestError::IntakeStopped,
        })?;
    answered.await.map_err(|_| RequestError::IntakeStopped)?
}

async fn write_batches(engine: Weak<Inner>, receiver: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut receiver = receiver.lock().await;
            match receiver.recv().await {
                Some(first) => batch.push(first),
                None => return,
            }
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
        }
        let Some(engine) = Engine::upgrade(&engine) else {
            return;
        };
        write(&engine, batch).await;
    }
}

async fn write(engine: &Engine, batch: Vec<Pending>) {
    let (requests, answers): (Vec<ValidRequest>, Vec<_>) =
        batch.into_iter().map(|p| (p.request, p.answer)).unzip();
    // A panic storing a batch (a bug) answers its callers with an error
    // and leaves the writer taking the next batch: it never leaves the
    // callers waiting, nor the intake without writers.
    let outcomes = match AssertUnwindSafe(store(engine, &requests))
        .catch_unwind()
        .await
    {
        Ok(outcomes) => outcomes,
        Err(panic) => {
            let message = crate::roles::panic_message(panic);
            error!(panic = %message, requests = requests.len(), "storing requests panicked");
            requests
                .iter()
                .map(|_| {
                    Err(RequestError::Internal(format!(
                        "storing the request panicked: {message}"
                    )))
                })
                .collect()
        }
    };
    for (answer, outcome) in answers.into_iter().zip(outcomes) {
        // The caller may have gone away; its request is stored anyway.
        let _ = answer.send(outcome);
    }
}

/// One outcome per request, in order.
async fn store(engine: &Engine, requests: &[ValidRequest]) -> Vec<Result<Accepted, RequestError>> {
    let started = std::time::Instant::now();
    match store_requests(engine, requests).await {
        Ok(outcomes) => {
            debug!(
                requests = requests.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "requests stored"
            );
            outcomes
        }
        Err(e) if requests.len() == 1 => vec![Err(RequestError::Run(e))],
        Err(e) => {
            warn!(error = %e, requests = requests.len(),
                  "storing a batch of requests failed; storing them one by one");
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in requests {
                outcomes.push(
                    match store_requests(engine, std::slice::from_ref(request)).await {
                        Ok(mut outcomes) => {
                            outcomes.pop().unwrap_or(Err(RequestError::IntakeStopped))
                        }
                        Err(e) => Err(RequestError::Run(e)),
                    },
                );
            }
            outcomes
        }
    }
}
