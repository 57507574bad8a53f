//! The long-lived tasks of a process ("roles": intake writers, result
//! applier, outbox relay, timers) and whether each is running.
//!
//! Every role runs under `supervise`: a role that panics is logged with
//! its name and the panic's message, shown as down while it waits a backoff,
//! then started again; a role that ends while the process is not shutting
//! down stays down. `/readyz` answers 503 naming every role that is down
//! ([`Roles::down`]), so a process never looks alive while a loop of it is
//! dead.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fulfil_bus::Backoff;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{error, info};

/// First wait before a role that panicked is started again; doubles up to
/// [`MAX_RESTART_DELAY`].
const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);
/// A role that ran this long before failing restarts after the first delay
/// again: its failure is not part of a crash loop.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// One role's state, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleState {
    /// The role's task is running now.
    pub running: bool,
    /// Times it was started again after failing.
    pub restarts: u32,
    /// Why it last stopped, if it ever did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

/// The roles of a process. Cheap to clone; clones share the states.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    states: Arc<Mutex<BTreeMap<String, RoleState>>>,
}

impl Roles {
    /// Every role and its state, by name.
    pub fn snapshot(&self) -> BTreeMap<String, RoleState> {
        self.lock().clone()
    }

    /// The roles that are not running, with why they stopped.
    pub fn down(&self) -> BTreeMap<String, String> {
        self.lock()
            .iter()
            .filter(|(_, state)| !state.running)
            .map(|(name, state)| {
                let reason = state.last_failure.clone().unwrap_or_default();
                (name.clone(), reason)
            })
            .collect()
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut RoleState)) {
        let mut states = self.lock();
        let state = states.entry(name.to_string()).or_insert(RoleState {
            running: false,
            restarts: 0,
            last_failure: None,
        });
        change(state);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RoleState>> {
        // The map holds whole entries whatever panicked while it was held.
        self.states.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs the role `name`, made by `start`, until it ends or `shutdown` is
/// cancelled; a panic restarts it after a backoff (see the module docs).
pub(crate) async fn supervise<F, Fut>(
    roles: Roles,
    name: String,
    shutdown: CancellationToken,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Backoff::new(FIRST_RESTART_DELAY, MAX_RESTART_DELAY);
    loop {
        roles.update(&name, |state| state.running = true);
        let started = tokio::time::Instant::now();
        // Aborted with this future, so a role never outlives its supervisor.
        let outcome = AbortOnDropHandle::new(tokio::spawn(start())).await;
        let reason = match outcome {
            Ok(()) if shutdown.is_cancelled() => "shut down".to_string(),
            Ok(()) => {
                error!(role = %name, "a role ended while the process is running");
                roles.update(&name, |state| {
                    state.running = false;
                    state.last_failure = Some("ended".to_string());
                });
                return;
            }
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
            Err(e) => format!("was cancelled: {e}"),
        };
        roles.update(&name, |state| {
            state.running = false;
            state.last_failure = Some(reason.clone());
        });
        if shutdown.is_cancelled() {
            info!(role = %name, "role stopped");
            return;
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        error!(role = %name, %reason, restart_in = ?delay, "a role stopped; restarting it");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        roles.update(&name, |state| state.restarts += 1);
    }
}

/// The text a panic was raised with.
pub(crate) fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(
            || "non-string panic payload".to_string(),
            |s| (*s).to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Waits, bounded, until `check` holds for the roles.
    async fn until(roles: &Roles, check: impl Fn(&Roles) -> bool) -> bool {
        for _ in 0..500 {
            if check(roles) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_panicking_role_is_shown_down_then_restarted_and_an_ended_one_stays_down() {
        let roles = Roles::default();
        let shutdown = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        let (resume, resumed) = tokio::sync::watch::channel(false);
        let supervisor = tokio::spawn(supervise(
            roles.clone(),
            "timers".into(),
            shutdown.clone(),
            move || {
                let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
                let mut resumed = resumed.clone();
                async move {
                    if first {
                        let _ = resumed.wait_for(|go| *go).await;
                        panic!("boom in the loop");
                    }
                    std::future::pending::<()>().await;
                }
            },
        ));
        assert!(
            until(&roles, |r| r
                .snapshot()
                .get("timers")
                .is_some_and(|s| s.running))
            .await
        );
        assert!(roles.down().is_empty());

        resume.send(true).expect("the role listens");
        assert!(until(&roles, |r| !r.down().is_empty()).await);
        let down = roles.down();
        assert!(
            down["timers"].contains("panicked: boom in the loop"),
            "{down:?}"
        );

        // After the backoff it runs again, its restart counted.
        assert!(until(&roles, |r| r.down().is_empty()).await);
        let state = roles.snapshot()["timers"].clone();
        assert_eq!(state.restarts, 1);
        assert_eq!(starts.load(Ordering::SeqCst), 2);

        shutdown.cancel();
        supervisor.abort();

        // A role that returns while the process runs stays down, named.
        let ended = tokio::spawn(supervise(
            roles.clone(),
            "relay".into(),
            CancellationToken::new(),
            || async {},
        ));
        let _ = ended.await;
        assert_eq!(roles.down().get("relay").map(String::as_str), Some("ended"));
    }
}
