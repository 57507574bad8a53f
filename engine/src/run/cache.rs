//! Runs as this process last stored them, so the next report about a run
//! can skip reading it.
//!
//! After a batch commits, each run it changed is kept here with the version
//! it now has and the attempts it left open (the ones a later report can
//! name). A batch whose reports all find their run here decides from these
//! copies without reading Postgres, and stores its changes only if each run
//! is still at the cached version (the same guard as an unlocked read, see
//! [`super::load`]). A copy is therefore never trusted, only tried: if any
//! other writer (another engine, a timer, an operator) changed the run, the
//! store is refused and the batch reads the run again.
//!
//! A batch takes its runs out of the cache while it decides, so two batches
//! never decide from the same copy. Runs that ended, and runs whose change
//! cancelled attempts (which the store does by a condition, not from this
//! copy), are not kept. The cache is bounded: when full it is emptied, which
//! costs the runs in it one read each.

use std::collections::HashMap;
use std::sync::Mutex;

use fulfil_core::ids::{RunId, TaskId};
use fulfil_core::status::AttemptStatus;

use super::Run;
use super::load::KnownAttempt;

/// Runs kept; at a few KiB each, a few MiB in all. Enough for every run in
/// flight at the concurrency one engine sustains.
const CAPACITY: usize = 4096;

/// A run as stored at `run.read_version`, with its open attempts.
pub(crate) struct CachedRun {
    pub run: Run,
    pub attempts: HashMap<TaskId, KnownAttempt>,
}

#[derive(Default)]
pub(crate) struct RunCache {
    runs: Mutex<HashMap<RunId, CachedRun>>,
}

impl RunCache {
    /// Takes `run_id`'s copy if it holds the attempt `task_id`.
    pub fn take_holding(&self, run_id: RunId, task_id: TaskId) -> Option<CachedRun> {
        let mut runs = self.lock();
        if !runs.get(&run_id)?.attempts.contains_key(&task_id) {
            return None;
        }
        runs.remove(&run_id)
    }

    /// Keeps `run` (stored at `run.read_version`) with its open attempts.
    pub fn keep(&self, run: Run, attempts: HashMap<TaskId, KnownAttempt>) {
        if run.status.is_terminal() || run.read_version.is_none() {
            return;
        }
        let attempts = attempts
            .into_iter()
            .filter(|(_, attempt)| attempt.is_open())
            .collect();
        let mut runs = self.lock();
        if runs.len() >= CAPACITY {
            runs.clear();
        }
        runs.insert(run.run_id, CachedRun { run, attempts });
    }

    /// Keeps the runs of a committed change: `notes` are theirs, in order,
    /// and `attempts` the attempts the change read (as it left them).
    pub fn keep_stored(
        &self,
        runs: Vec<Run>,
        notes: Vec<Option<Stored>>,
        attempts: HashMap<TaskId, KnownAttempt>,
    ) {
        let mut by_run: HashMap<RunId, HashMap<TaskId, KnownAttempt>> = HashMap::new();
        for (task_id, attempt) in attempts {
            by_run
                .entry(attempt.run_id)
                .or_default()
                .insert(task_id, attempt);
        }
        for (mut run, note) in runs.into_iter().zip(notes) {
            let Some(stored) = note else {
                self.forget(run.run_id);
                continue;
            };
            let mut known = by_run.remove(&run.run_id).unwrap_or_default();
            known.extend(stored.opened.into_iter().map(|a| (a.task_id, a)));
            for (task_id, status) in stored.updated {
                if let Some(attempt) = known.get_mut(&task_id) {
                    attempt.status = status;
                }
            }
            run.read_version = Some(stored.version);
            self.keep(run, known);
        }
    }

    /// Drops `run_id`'s copy: this process is changing the run another way.
    pub fn forget(&self, run_id: RunId) {
        self.lock().remove(&run_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, CachedRun>> {
        // A panic while holding the lock leaves a map of whole entries; any
        // of them is still only a guess that the store checks.
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a change leaves for the cache once stored, noted before the store
/// drains the run's buffered writes.
pub(crate) struct Stored {
    /// The run's version once the change is stored.
    version: i64,
    /// Attempts the change dispatches.
    opened: Vec<KnownAttempt>,
    /// Attempts whose status the change sets.
    updated: Vec<(TaskId, AttemptStatus)>,
}

impl Stored {
    /// `None` when the stored run will not be known exactly: the change
    /// cancels attempts (by a condition the store evaluates), or the run
    /// was read under its lock, by a path that keeps no copies.
    pub fn note(run: &Run) -> Option<Stored> {
        let writes = &run.writes;
        if !writes.cancels.is_empty() {
            return None;
        }
        let version = if writes.created.is_some() {
            0
        } else {
            run.read_version? + i64::from(!writes.is_empty())
        };
        let opened = writes
            .new_attempts
            .iter()
            .map(|a| KnownAttempt {
                task_id: a.task_id,
                run_id: run.run_id,
                step_id: a.step_id.clone(),
                attempt: a.attempt,
                status: AttemptStatus::Dispatched,
                kind: a.kind,
            })
            .collect();
        let updated = writes
            .attempt_updates
            .iter()
            .filter_map(|(task_id, update)| Some((*task_id, update.status?)))
            .collect();
        Some(Stored {
            version,
            opened,
            updated,
        })
    }
}
