//! Writing buffered changes: every run of a batch in one statement, plus
//! one for cancelled attempts when there are any.

use sqlx::PgConnection;
use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;

use super::columns::{Columns, write_cancels};
use crate::outbox::OutboxRow;
use crate::run::Run;

/// Writes the buffered changes of `runs` in one statement (plus one for
/// cancelled attempts, when there are any), leaving each run's buffer empty.
/// Returns the outbox rows written, for the fast publisher. The caller
/// commits.
pub(crate) async fn flush(
    conn: &mut PgConnection,
    runs: &mut [Run],
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    flush_with(conn, runs, None).await
}

/// Whether [`flush`] stores these runs' changes in a single statement,
/// which outside a transaction commits on its own: true unless an attempt
/// is cancelled or the relay must be woken (no fast publisher).
pub(crate) fn fits_one_statement(runs: &[Run]) -> bool {
    runs.iter().all(|run| {
        run.writes.cancels.is_empty()
            && !run.writes.has_wait_writes()
            && !run.writes.wake_timers
            && (run.fast_publish || run.writes.outbox.is_empty())
    })
}

/// A statement part written first, in the same statement as a flush: the
/// rows the flushed runs refer to (their requests).
pub(crate) struct LeadingPart<'a> {
    pub name: &'static str,
    /// Numbers its parameters from `$1`.
    pub sql: &'static str,
    pub bind: BindArguments<'a>,
}

/// Binds a statement part's parameters, in order.
pub(crate) type BindArguments<'a> =
    Box<dyn FnOnce(&mut PgArguments) -> Result<(), BoxDynError> + Send + 'a>;

/// [`flush`], with `leading` written by the same statement. Run outside a
/// transaction, that statement is a transaction of its own: one round trip
/// that writes everything or nothing, provided the runs
/// [fit in one statement](fits_one_statement).
pub(crate) async fn flush_with(
    conn: &mut PgConnection,
    runs: &mut [Run],
    leading: Option<LeadingPart<'_>>,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    if leading.is_some() && !fits_one_statement(runs) {
        // Refused before writing: a second statement outside a transaction
        // could commit half of the change.
        return Err(sqlx::Error::Protocol(
            "a flush with a leading part must fit in one statement".into(),
        ));
    }
    let mut columns = Columns::default();
    let mut cancels = Vec::new();
    let mut waits = crate::waits::WaitWrites::default();
    let mut slow_outbox = false;
    let mut wake_timers = false;
    let mut observed = Vec::new();
    for run in runs.iter_mut() {
        // A run this change created (a delete run a handed-off run starts
        // as it ends) is stored by the same statement, so neither commits
        // without the other.
        let mut spawned = run.take_spawned();
        for run in std::iter::once(run).chain(spawned.as_mut()) {
            let mut writes = std::mem::take(&mut run.writes);
            if writes.is_empty() {
                continue;
            }
            let finished = writes
                .ending
                .as_ref()
                .is_some_and(|e| e.finished)
                .then(|| run.status());
            if finished.is_some() || !writes.observed.is_empty() {
                observed.push((
                    run.promise().metadata.name.clone(),
                    finished,
                    std::mem::take(&mut writes.observed),
                ));
            }
            waits.add(
                run.run_id(),
                std::mem::take(&mut writes.new_waits),
                std::mem::take(&mut writes.ended_waits),
                std::mem::take(&mut writes.cleared_run_waits),
            );
            if !run.fast_publish && !writes.outbox.is_empty() {
                slow_outbox = true;
            }
            wake_timers |= writes.wake_timers;
            columns.add(run, writes, &mut cancels);
        }
    }
    if columns.is_empty() && cancels.is_empty() && waits.is_empty() && leading.is_none() {
        return Ok(Vec::new());
    }
    let inserted: Vec<(i64, String)> = if columns.is_empty() && leading.is_none() {
        Vec::new()
    } else {
        columns.write(conn, leading).await?
    };
    if !cancels.is_empty() {
        write_cancels(conn, &cancels).await?;
    }
    if !waits.is_empty() {
        // After the main statement: the waits' attempt rows exist by now.
        crate::waits::write(conn, waits).await?;
    }
    if slow_outbox {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(crate::outbox::CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    if wake_timers {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(crate::timers::CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    // Written (committed, outside a transaction); a rollback of the
    // caller's transaction after this point is rare enough to miscount.
    for (promise, finished, observed) in observed {
        crate::metrics::record_committed(&promise, finished, observed);
    }
    Ok(columns.into_fast_outbox_rows(&inserted))
}
