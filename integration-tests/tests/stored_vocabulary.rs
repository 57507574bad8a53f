//! The CHECK constraints on status and kind columns list exactly the
//! spellings of their enums in `fulfil_core::status`, so a value the code
//! cannot read back can never be stored, and a variant the code can write
//! is never refused.

use std::collections::BTreeSet;

use anyhow::Context;
use fulfil_core::status::{
    AttemptStatus, CompensationStatus, EventVia, OverlapPolicy, RequestStatus, RolloutStatus,
    RolloutTargetState, RunKind, RunStatus, StatusEventKind, StepStatus, TaskKind, TickOutcome,
    TimerKind, WaitKind,
};
use fulfil_engine::db;
use fulfil_integration_tests::{database_url, with_database};
use uuid::Uuid;

/// The quoted literals of a constraint's definition.
fn literals(definition: &str) -> BTreeSet<String> {
    definition
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn spellings<T: Copy>(all: &[T], as_str: fn(T) -> &'static str) -> BTreeSet<String> {
    all.iter().map(|v| as_str(*v).to_owned()).collect()
}

#[tokio::test]
async fn check_constraints_list_exactly_the_enum_spellings() -> anyhow::Result<()> {
    let suffix = Uuid::now_v7().simple().to_string();
    let database = format!("fulfil_vocab_{}", &suffix[suffix.len() - 12..]);
    let url = with_database(&database_url(), &database);
    db::ensure_database(&url)
        .await
        .context("creating the test database")?;
    let pool = db::connect(&url, 2).await?;
    db::migrate(&pool).await?;

    let expected = [
        (
            "requests_status_check",
            spellings(RequestStatus::ALL, RequestStatus::as_str),
        ),
        (
            "runs_status_check",
            spellings(RunStatus::ALL, RunStatus::as_str),
        ),
        ("runs_kind_check", spellings(RunKind::ALL, RunKind::as_str)),
        (
            "steps_status_check",
            spellings(StepStatus::ALL, StepStatus::as_str),
        ),
        (
            "steps_compensation_status_check",
            spellings(CompensationStatus::ALL, CompensationStatus::as_str),
        ),
        (
            "attempts_status_check",
            spellings(AttemptStatus::ALL, AttemptStatus::as_str),
        ),
        (
            "attempts_kind_check",
            spellings(TaskKind::ALL, TaskKind::as_str),
        ),
        (
            "timers_kind_check",
            spellings(TimerKind::ALL, TimerKind::as_str),
        ),
        (
            "waits_kind_check",
            spellings(WaitKind::ALL, WaitKind::as_str),
        ),
        (
            "event_ledger_via_check",
            spellings(EventVia::ALL, EventVia::as_str),
        ),
        (
            "status_outbox_kind_check",
            spellings(StatusEventKind::ALL, StatusEventKind::as_str),
        ),
        (
            "schedules_overlap_check",
            spellings(OverlapPolicy::ALL, OverlapPolicy::as_str),
        ),
        (
            "schedule_ticks_outcome_check",
            spellings(TickOutcome::ALL, TickOutcome::as_str),
        ),
        (
            "rollouts_status_check",
            spellings(RolloutStatus::ALL, RolloutStatus::as_str),
        ),
        (
            "rollout_targets_state_check",
            spellings(RolloutTargetState::ALL, RolloutTargetState::as_str),
        ),
    ];
    for (constraint, spellings) in expected {
        let definition: String = sqlx::query_scalar(
            "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
             JOIN pg_namespace n ON n.oid = c.connamespace
             WHERE n.nspname = 'fulfil' AND c.conname = $1",
        )
        .bind(constraint)
        .fetch_optional(&pool)
        .await?
        .with_context(|| format!("constraint {constraint} is missing"))?;
        assert_eq!(
            literals(&definition),
            spellings,
            "{constraint}: {definition}"
        );
    }

    // And the constraint is enforced: an unknown status is refused.
    let refused = sqlx::query(
        "INSERT INTO fulfil.timers (run_id, step_id, kind, fire_at)
         VALUES ($1, 's', 'someday', now())",
    )
    .bind(Uuid::now_v7())
    .execute(&pool)
    .await
    .expect_err("an unknown timer kind is refused");
    assert!(
        refused.to_string().contains("timers_kind_check"),
        "{refused}"
    );

    pool.close().await;
    db::drop_database(&database_url(), &database).await?;
    Ok(())
}
