//! Worker progress: `started` and `heartbeat` reports.
//!
//! `started` moves the attempt to `running`, records which worker took it,
//! disarms its schedule-to-start timer and arms the attempt timeout (measured
//! from the start, plus a grace so a worker's own timeout report normally
//! wins) and, for steps with a `heartbeat_timeout`, the heartbeat timer.
//! A `heartbeat` pushes the heartbeat timer forward. Reports about attempts
//! that are no longer open are dropped: they cannot change anything.

use std::time::Duration;

use chrono::Utc;
use fulfil_core::StepStatus;
use fulfil_core::dag::CompensationStatus;
use fulfil_core::status::{AttemptStatus, TimerKind};
use fulfil_core::time::deadline_after;
use fulfil_core::wire::{Progress, ProgressMessage, TaskKind};
use serde_json::json;

use super::advance::{set_compensation, set_step};
use super::apply::{Applied, stale_reason};
use super::event::{AttemptEvent, attempt_event};
use super::load::KnownAttempt;
use super::{AttemptUpdate, Run, RunError};

/// Added to an attempt's timeout before the engine declares it timed out:
/// the worker enforces the same timeout and reports it with more detail.
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(1);

/// Applies one progress report to its locked run, in memory.
pub(super) fn apply_progress_to(
    run: &mut Run,
    attempt: &mut KnownAttempt,
    report: &ProgressMessage,
) -> Result<Applied, RunError> {
    if let Some(reason) = stale_reason(run, attempt) {
        return Ok(Applied::Ignored(reason));
    }
    let kind = attempt.task_kind();
    let promise = run.promise.clone();
    let (step, _) = promise.step_of_row(&attempt.step_id).ok_or_else(|| {
        RunError::Corrupt(format!("step {} is not in the Promise", attempt.step_id))
    })?;
    let heartbeat_timeout = promise.heartbeat_timeout_of(step);
    let now = Utc::now();
    match report.progress {
        Progress::Started => {
            let timeout = match (kind, &step.compensate) {
                (TaskKind::Compensation, Some(c)) => promise.compensation_timeout_of(c),
                _ => promise.timeout_of(step),
            };
            run.update_attempt(
                report.task_id,
                AttemptUpdate {
                    status: Some(AttemptStatus::Running),
                    started_at: Some(now),
                    worker: Some(report.worker_id.clone()),
                    heartbeat_at: Some(now),
                    ..AttemptUpdate::default()
                },
            );
            attempt.status = AttemptStatus::Running;
            match kind {
                TaskKind::Action => {
                    set_step(run, &attempt.step_id, StepStatus::Running, None, None, None)?;
                }
                TaskKind::Compensation => {
                    set_compensation(
                        run,
                        &attempt.step_id,
                        CompensationStatus::Running,
                        None,
                        None,
                    )?;
                }
            }
            // A redelivered task starts again on another worker: its clocks restart.
            run.clear_attempt_timers(report.task_id, None);
            run.add_timer(
                TimerKind::AttemptTimeout,
                &attempt.step_id,
                Some(report.task_id),
                deadline_after(now, timeout.saturating_add(TIMEOUT_GRACE)),
            );
            if let Some(heartbeat) = heartbeat_timeout {
                run.add_timer(
                    TimerKind::HeartbeatTimeout,
                    &attempt.step_id,
                    Some(report.task_id),
                    deadline_after(now, heartbeat),
                );
            }
            run.record(
                attempt_event(kind, AttemptEvent::Started),
                Some(&attempt.step_id),
                Some(attempt.attempt),
                json!({ "task_id": report.task_id, "worker": report.worker_id }),
            );
        }
        Progress::Heartbeat => {
            run.update_attempt(
                report.task_id,
                AttemptUpdate {
                    heartbeat_at: Some(now),
                    heartbeat_details: report.details.clone(),
                    ..AttemptUpdate::default()
                },
            );
            if let Some(heartbeat) = heartbeat_timeout {
                run.clear_attempt_timers(report.task_id, Some(TimerKind::HeartbeatTimeout));
                run.add_timer(
                    TimerKind::HeartbeatTimeout,
                    &attempt.step_id,
                    Some(report.task_id),
                    deadline_after(now, heartbeat),
                );
            }
        }
    }
    Ok(Applied::Applied)
}
