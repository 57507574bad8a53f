//! The engine handle shared by the API, the background loops and tests, and
//! the loops an engine process runs: outbox relay, status publisher, result
//! applier, timers.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use fulfil_bus::NatsNames;
use fulfil_core::{ValidationContext, Vars};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::outbox::OutboxRow;
use crate::promises::PromiseCache;

/// Tuning of an engine process.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Result batches applied concurrently by this process.
    pub result_concurrency: usize,
    /// Most worker reports applied in one transaction (group commit).
    pub result_batch: usize,
    /// Outbox rows published per transaction.
    pub outbox_batch: i64,
    /// How often the relay and timers look for work when no notification
    /// arrives (a fallback: notifications wake them at once).
    pub poll_interval: Duration,
    /// How long the event ledger and the dead letters keep an entry.
    pub event_retention: Duration,
    /// How late a schedule's tick may be decided and still fire when its
    /// `catch_up` is shorter (see [`crate::schedules`]).
    pub schedule_grace: Duration,
    /// How long finished runs are kept (see [`crate::retention`]); `None`
    /// keeps them for ever.
    pub run_retention: Option<Duration>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            result_concurrency: 4,
            result_batch: 64,
            outbox_batch: 256,
            poll_interval: Duration::from_millis(500),
            event_retention: crate::events::DEFAULT_RETENTION,
            schedule_grace: Duration::from_secs(30),
            run_retention: Some(crate::retention::DEFAULT_KEEP),
        }
    }
}

/// Cheap to clone; every clone shares one pool, cache and wake-up signal.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pool: PgPool,
    names: NatsNames,
    promises: PromiseCache,
    /// Admission policies as this process last read them.
    policies: crate::policies::PolicyCache,
    /// The vars an operator exposes to Promises (see [`fulfil_core::vars`]).
    vars: Vars,
    /// Runs as this process last stored them (see [`crate::run::RunCache`]).
    runs: crate::run::RunCache,
    id: String,
    outbox_wake: Notify,
    /// Wakes this process's status publisher (see [`crate::status_events`]).
    status_wake: Notify,
    /// Wakes this process's timers: an event matched a wait, whose timer
    /// is due now.
    timers_wake: Notify,
    /// Wakes this process's schedule ticker (see [`crate::schedules`]).
    schedule_wake: Notify,
    /// Set once [`Engine::start_fast_publisher`] ran.
    publisher: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Vec<OutboxRow>>>,
    /// Started on the first request this process accepts.
    intake: std::sync::OnceLock<crate::intake::IntakeSender>,
    /// The loops of this process and whether each runs (`/readyz`).
    roles: crate::roles::Roles,
    /// Cancelled when the last handle is dropped: the roles that live as
    /// long as the engine (intake writers, fast publisher) then end as shut
    /// down, not as failed.
    dropped: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.dropped.cancel();
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("id", &self.inner.id)
            .finish()
    }
}

impl Engine {
    /// An engine that exposes no vars to Promises.
    pub fn new(pool: PgPool, names: NatsNames, id: impl Into<String>) -> Self {
        Self::with_vars(pool, names, id, Vars::default())
    }

    /// An engine whose Promises may read `vars`. They live here rather than
    /// in [`EngineConfig`], which only the engine role's loop receives: the
    /// API role needs them too, to validate Promises and capture them into
    /// new runs.
    pub fn with_vars(pool: PgPool, names: NatsNames, id: impl Into<String>, vars: Vars) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                names,
                promises: PromiseCache::default(),
                policies: crate::policies::PolicyCache::default(),
                vars,
                runs: crate::run::RunCache::default(),
                id: id.into(),
                outbox_wake: Notify::new(),
                status_wake: Notify::new(),
                timers_wake: Notify::new(),
                schedule_wake: Notify::new(),
                publisher: std::sync::OnceLock::new(),
                intake: std::sync::OnceLock::new(),
                roles: crate::roles::Roles::default(),
                dropped: CancellationToken::new(),
            }),
        }
    }

    pub(crate) fn upgrade(inner: &std::sync::Weak<Inner>) -> Option<Engine> {
        inner.upgrade().map(|inner| Engine { inner })
    }

    /// Where new requests go to be stored (see [`crate::intake`]).
    pub(crate) fn intake(&self) -> &crate::intake::IntakeSender {
        self.inner.intake.get_or_init(|| {
            crate::intake::start(
                Arc::downgrade(&self.inner),
                self.inner.roles.clone(),
                self.inner.dropped.clone(),
            )
        })
    }

    /// The long-lived loops of this process and whether each is running.
    pub fn roles(&self) -> &crate::roles::Roles {
        &self.inner.roles
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub fn names(&self) -> &NatsNames {
        &self.inner.names
    }

    pub fn promises(&self) -> &PromiseCache {
        &self.inner.promises
    }

    /// The compiled admission policies (see [`crate::policies`]).
    pub fn policies(&self) -> &crate::policies::PolicyCache {
        &self.inner.policies
    }

    /// The vars Promises may read.
    pub fn vars(&self) -> &Vars {
        &self.inner.vars
    }

    /// What validating a Promise for this deployment needs to know.
    pub fn validation_context(&self) -> ValidationContext {
        ValidationContext::with_vars(self.inner.vars.names())
    }

    pub(crate) fn run_cache(&self) -> &crate::run::RunCache {
        &self.inner.runs
    }

    /// Identity recorded in history as the actor of engine decisions.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Makes this process publish the outbox rows it commits itself, right
    /// after each commit (see [`crate::outbox`]). Call once, with the
    /// process's JetStream context.
    pub fn start_fast_publisher(&self, js: jetstream::Context) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        if self.inner.publisher.set(sender).is_ok() {
            // The publisher gets the pool, not the engine: holding the engine
            // would keep its own sender alive and the task would never end.
            let (pool, receiver) = (
                self.inner.pool.clone(),
                Arc::new(tokio::sync::Mutex::new(receiver)),
            );
            // Ends with the engine (its queue closes).
            tokio::spawn(crate::roles::supervise(
                self.inner.roles.clone(),
                "fast publisher".into(),
                self.inner.dropped.clone(),
                move || {
                    crate::outbox::run_fast_publisher(pool.clone(), js.clone(), receiver.clone())
                },
            ));
        }
    }

    pub(crate) fn has_fast_publisher(&self) -> bool {
        self.inner.publisher.get().is_some()
    }

    /// Hands rows committed by this process to the fast publisher, or wakes
    /// the relay when there is none; wakes the status publisher, since almost
    /// every commit of a run records a status event (a wake-up that finds
    /// nothing costs one indexed read, and wake-ups coalesce).
    pub fn after_commit(&self, rows: Vec<OutboxRow>) {
        self.inner.status_wake.notify_one();
        if rows.is_empty() {
            return;
        }
        match self.inner.publisher.get() {
            Some(publisher) if publisher.send(rows).is_ok() => {}
            _ => self.wake_outbox(),
        }
    }

    /// Tells this process's outbox relay that rows were committed.
    pub fn wake_outbox(&self) {
        self.inner.outbox_wake.notify_one();
    }

    pub(crate) async fn outbox_woken(&self) {
        self.inner.outbox_wake.notified().await;
    }

    /// Tells this process's timers that a timer is due now.
    pub fn wake_timers(&self) {
        self.inner.timers_wake.notify_one();
    }

    pub(crate) async fn timers_woken(&self) {
        self.inner.timers_wake.notified().await;
    }

    pub(crate) async fn status_woken(&self) {
        self.inner.status_wake.notified().await;
    }

    /// Tells this process's schedule ticker that a schedule changed (other
    /// processes find it by polling).
    pub fn wake_schedules(&self) {
        self.inner.schedule_wake.notify_one();
    }

    pub(crate) async fn schedules_woken(&self) {
        self.inner.schedule_wake.notified().await;
    }

    /// Runs the engine's loops until `shutdown` is cancelled. Each loop
    /// survives transient Postgres and NATS errors by backing off and retrying.
    pub async fn run(
        &self,
        js: jetstream::Context,
        config: EngineConfig,
        shutdown: CancellationToken,
    ) -> Result<(), fulfil_bus::streams::StreamError> {
        fulfil_bus::streams::ensure_streams(&js, self.names()).await?;
        let run_retention = config.run_retention;
        // Each loop is supervised: a panic restarts it after a backoff and
        // `/readyz` shows it down meanwhile (see `crate::roles`).
        use crate::roles::supervise;
        let roles = &self.inner.roles;
        let relay = {
            let (engine, js, config, stop) =
                (self.clone(), js.clone(), config.clone(), shutdown.clone());
            supervise(
                roles.clone(),
                "outbox relay".into(),
                shutdown.clone(),
                move || {
                    crate::outbox::run_relay(
                        engine.clone(),
                        js.clone(),
                        config.clone(),
                        stop.clone(),
                    )
                },
            )
        };
        let status = {
            let (engine, js, stop) = (self.clone(), js.clone(), shutdown.clone());
            supervise(
                roles.clone(),
                "status publisher".into(),
                shutdown.clone(),
                move || {
                    crate::status_events::run_status_publisher(
                        engine.clone(),
                        js.clone(),
                        stop.clone(),
                    )
                },
            )
        };
        let results = {
            let (engine, js, config, stop) =
                (self.clone(), js.clone(), config.clone(), shutdown.clone());
            supervise(
                roles.clone(),
                "result applier".into(),
                shutdown.clone(),
                move || {
                    crate::results::run_applier(
                        engine.clone(),
                        js.clone(),
                        config.clone(),
                        stop.clone(),
                    )
                },
            )
        };
        let inbound = {
            let (engine, js, stop) = (self.clone(), js.clone(), shutdown.clone());
            supervise(
                roles.clone(),
                "inbound events".into(),
                shutdown.clone(),
                move || crate::events::run_consumer(engine.clone(), js.clone(), stop.clone()),
            )
        };
        let retention = {
            let (pool, keep, stop) = (
                self.pool().clone(),
                config.event_retention,
                shutdown.clone(),
            );
            supervise(
                roles.clone(),
                "event retention".into(),
                shutdown.clone(),
                move || {
                    crate::events::keep_retention(
                        pool.clone(),
                        keep,
                        Duration::from_secs(60),
                        stop.clone(),
                    )
                },
            )
        };
        let schedules = {
            let (engine, config, stop) = (self.clone(), config.clone(), shutdown.clone());
            supervise(
                roles.clone(),
                "schedules".into(),
                shutdown.clone(),
                move || crate::schedules::run_ticker(engine.clone(), config.clone(), stop.clone()),
            )
        };
        let timers = {
            let (engine, stop) = (self.clone(), shutdown.clone());
            supervise(
                roles.clone(),
                "timers".into(),
                shutdown.clone(),
                move || crate::timers::run_timers(engine.clone(), config.clone(), stop.clone()),
            )
        };
        let reconcile = {
            let (engine, stop) = (self.clone(), shutdown.clone());
            supervise(
                roles.clone(),
                "reconcile".into(),
                shutdown.clone(),
                move || crate::reconcile::run_loop(engine.clone(), stop.clone()),
            )
        };
        let rollouts = {
            let (engine, stop) = (self.clone(), shutdown.clone());
            supervise(
                roles.clone(),
                "rollouts".into(),
                shutdown.clone(),
                move || crate::rollout::run_loop(engine.clone(), stop.clone()),
            )
        };
        let run_retention = {
            let (pool, stop) = (self.pool().clone(), shutdown.clone());
            let (roles, shutdown) = (roles.clone(), shutdown.clone());
            async move {
                let Some(keep) = run_retention else {
                    return;
                };
                supervise(roles, "run retention".into(), shutdown, move || {
                    crate::retention::keep_runs(
                        pool.clone(),
                        crate::retention::RetentionConfig::keeping(keep),
                        stop.clone(),
                    )
                })
                .await
            }
        };
        let gauges = {
            let (pool, stop) = (self.pool().clone(), shutdown.clone());
            supervise(
                roles.clone(),
                "metric gauges".into(),
                shutdown.clone(),
                move || {
                    crate::metrics::count_periodically(
                        pool.clone(),
                        crate::metrics::GAUGE_INTERVAL,
                        stop.clone(),
                    )
                },
            )
        };
        tokio::join!(
            relay,
            status,
            results,
            inbound,
            retention,
            timers,
            reconcile,
            rollouts,
            schedules,
            run_retention,
            gauges
        );
        Ok(())
    }
}
