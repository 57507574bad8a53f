//! `GET /v1/runs`: runs newest first, filtered, paged by id.
//!
//! Each filter maps to an index that ends in `id DESC` (or to a small set of
//! live rows: timers, waits, open attempts), so a page is a range scan below
//! the cursor whatever the table's size. Filters of a closed vocabulary are
//! spelled into the SQL as literals: the planner then picks the partial
//! index that value has (a bound parameter would give it a generic plan that
//! cannot prove a partial index's predicate).
//!
//! Time ranges: `created_at` is the database clock, the id's timestamp the
//! creating process's clock. A range is mapped to id bounds widened by
//! [`CLOCK_SLACK`] (so the scan stays an id range) and then checked exactly
//! against `created_at`; runs whose two clocks differ by more than the slack
//! could be missed at the edges of a range.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use fulfil_core::ids::{RequestId, RunId};
use fulfil_core::status::{RunKind, RunStatus, UnknownValue, WaitKind};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{InspectError, Page, page_size, paged, uuid_cursor};

/// How far a run's id timestamp may be from its `created_at` and still be
/// found by a time range.
pub const CLOCK_SLACK: TimeDelta = TimeDelta::minutes(1);

/// A run as lists show it (without steps).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunSummary {
    #[sqlx(try_from = "Uuid")]
    pub id: RunId,
    #[sqlx(try_from = "Uuid")]
    pub request_id: RequestId,
    pub promise: String,
    pub promise_version: String,
    pub kind: String,
    pub status: String,
    /// The team owning the run's Promise (`metadata.owner`), as it stood when
    /// the run was created.
    pub owner: Option<String>,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// What the run's unfinished steps wait for, one entry per step (lists
    /// only; a run's detail says it per step).
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<WaitingFor>,
}

pub(super) const RUN_COLUMNS: &str = "id, request_id, promise, promise_version, kind, status, owner, outputs, error, created_at, finished_at";

/// What a run waits for, as `?waiting_for=` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitingFor {
    /// A step failed and waits for its next attempt (a retry timer).
    Retry,
    /// A step is dispatched to, or running on, a worker.
    Worker,
    /// An engine-run step waits for an event, approvals or a time.
    Wait(WaitKind),
    /// A promise step waits for its child request's run.
    Child,
}

impl WaitingFor {
    /// Every value, in the order help texts list them.
    pub const ALL: [WaitingFor; 6] = [
        WaitingFor::Retry,
        WaitingFor::Wait(WaitKind::Event),
        WaitingFor::Wait(WaitKind::Approval),
        WaitingFor::Wait(WaitKind::Sleep),
        WaitingFor::Child,
        WaitingFor::Worker,
    ];

    /// The one spelling of this value.
    pub const fn as_str(self) -> &'static str {
        match self {
            WaitingFor::Retry => "retry",
            WaitingFor::Worker => "worker",
            WaitingFor::Child => "child",
            WaitingFor::Wait(kind) => kind.as_str(),
        }
    }
}

impl fmt::Display for WaitingFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WaitingFor {
    type Err = UnknownValue;

    fn from_str(text: &str) -> Result<Self, UnknownValue> {
        Self::ALL
            .into_iter()
            .find(|w| w.as_str() == text)
            .ok_or_else(|| UnknownValue {
                what: "waiting_for",
                value: text.to_owned(),
                expected: Self::ALL.map(WaitingFor::as_str).join(", "),
            })
    }
}

impl Serialize for WaitingFor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for WaitingFor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Filters of a run list; `None` matches everything, and filters combine
/// with AND.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub promise: Option<String>,
    pub request: Option<RequestId>,
    pub kind: Option<RunKind>,
    /// The owning team (`metadata.owner` of the run's Promise).
    pub owner: Option<String>,
    pub waiting_for: Option<WaitingFor>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

/// One page of runs matching `filter`, newest first.
pub async fn list_runs(
    pool: &PgPool,
    filter: &RunFilter,
) -> Result<Page<RunSummary>, InspectError> {
    let limit = page_size(filter.limit);
    let mut query = list_query("", filter, limit)?;
    let mut items: Vec<RunSummary> = query.build_query_as().fetch_all(pool).await?;
    add_waits(pool, &mut items).await?;
    Ok(paged(items, limit, |r| r.id.to_string()))
}

/// Fills `waiting_for` of the live runs of a page: one statement over the
/// small live tables (retry timers, waits, open attempts), by run id.
async fn add_waits(pool: &PgPool, items: &mut [RunSummary]) -> Result<(), InspectError> {
    let live: Vec<Uuid> = items
        .iter()
        .filter(|r| RunStatus::parse(&r.status).is_ok_and(|s| !s.is_terminal()))
        .map(|r| r.id.as_uuid())
        .collect();
    if live.is_empty() {
        return Ok(());
    }
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT run_id, 'retry' FROM fulfil.timers
         WHERE run_id = ANY($1) AND kind IN ('retry', 'compensation_retry')
         UNION ALL
         SELECT run_id, kind FROM fulfil.waits WHERE run_id = ANY($1)
         UNION ALL
         SELECT a.run_id, CASE WHEN a.queue = 'engine' AND a.handler = 'promise'
                               THEN 'child' ELSE 'worker' END
         FROM fulfil.attempts a
         WHERE a.run_id = ANY($1) AND a.status IN ('dispatched', 'running')
           AND NOT EXISTS (SELECT 1 FROM fulfil.waits w WHERE w.task_id = a.task_id)",
    )
    .bind(&live)
    .fetch_all(pool)
    .await?;
    for (run, kind) in rows {
        // Spellings come from the CHECK-constrained columns and the literals
        // above, all in the vocabulary.
        let Ok(kind) = kind.parse::<WaitingFor>() else {
            continue;
        };
        if let Some(item) = items.iter_mut().find(|r| r.id.as_uuid() == run) {
            item.waiting_for.push(kind);
        }
    }
    Ok(())
}

/// `EXPLAIN (ANALYZE, FORMAT JSON)` of the page [`list_runs`] reads for
/// `filter`: how operators (and `fulfil bench --scenario queries`) check
/// that a filter is served by an index.
pub async fn explain_list_runs(pool: &PgPool, filter: &RunFilter) -> Result<Value, InspectError> {
    let limit = page_size(filter.limit);
    let mut query = list_query("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ", filter, limit)?;
    let (plan,): (Value,) = query.build_query_as().fetch_one(pool).await?;
    Ok(plan)
}

/// The SQL of one page (`limit` + 1 rows, to know whether another follows).
fn list_query(
    prefix: &str,
    filter: &RunFilter,
    limit: i64,
) -> Result<QueryBuilder<Postgres>, InspectError> {
    let mut query = QueryBuilder::new(format!(
        "{prefix}SELECT {RUN_COLUMNS} FROM fulfil.runs WHERE true"
    ));
    if let Some(status) = filter.status {
        query.push(format_args!(" AND status = '{}'", status.as_str()));
    }
    if let Some(kind) = filter.kind {
        query.push(format_args!(" AND kind = '{}'", kind.as_str()));
    }
    if let Some(promise) = &filter.promise {
        query.push(" AND promise = ").push_bind(promise.clone());
    }
    if let Some(request) = filter.request {
        query
            .push(" AND request_id = ")
            .push_bind(request.as_uuid());
    }
    if let Some(owner) = &filter.owner {
        query.push(" AND owner = ").push_bind(owner.clone());
    }
    // The runs waiting for something are a few thousand at most: read them
    // once from their small index into an array, then walk the runs' primary
    // key in id order over it (a semi-join would walk the runs and probe).
    match filter.waiting_for {
        None => {}
        Some(WaitingFor::Retry) => {
            query.push(
                " AND id = ANY(ARRAY(SELECT run_id FROM fulfil.timers
                                     WHERE kind IN ('retry', 'compensation_retry')))",
            );
        }
        Some(WaitingFor::Wait(kind)) => {
            query.push(format_args!(
                " AND id = ANY(ARRAY(SELECT run_id FROM fulfil.waits WHERE kind = '{}'))",
                kind.as_str()
            ));
        }
        Some(WaitingFor::Worker) => {
            // An engine-run step's attempt is open too while it waits; its
            // wait row (or, for a promise step, its engine queue) says it is
            // not on a worker.
            query.push(
                " AND id = ANY(ARRAY(SELECT a.run_id FROM fulfil.attempts a
                                     WHERE a.status IN ('dispatched', 'running')
                                       AND NOT (a.queue = 'engine' AND a.handler = 'promise')
                                       AND NOT EXISTS (SELECT 1 FROM fulfil.waits w
                                                       WHERE w.task_id = a.task_id)))",
            );
        }
        Some(WaitingFor::Child) => {
            query.push(
                " AND id = ANY(ARRAY(SELECT a.run_id FROM fulfil.attempts a
                                     WHERE a.status IN ('dispatched', 'running')
                                       AND a.queue = 'engine' AND a.handler = 'promise'))",
            );
        }
    }
    if let Some(since) = filter.since {
        query.push(" AND created_at >= ").push_bind(since);
        query.push(" AND id >= ").push_bind(id_floor(
            since.checked_sub_signed(CLOCK_SLACK).unwrap_or(since),
        ));
    }
    if let Some(until) = filter.until {
        query.push(" AND created_at < ").push_bind(until);
        query.push(" AND id < ").push_bind(id_floor(
            until.checked_add_signed(CLOCK_SLACK).unwrap_or(until),
        ));
    }
    if let Some(cursor) = uuid_cursor(filter.cursor.as_deref())? {
        query.push(" AND id < ").push_bind(cursor);
    }
    query.push(" ORDER BY id DESC LIMIT ").push_bind(limit + 1);
    Ok(query)
}

/// The smallest UUIDv7 of the millisecond `at` (before 1970: the nil id's
/// neighbour; past the 48-bit clock: the largest).
pub fn id_floor(at: DateTime<Utc>) -> Uuid {
    let millis = u64::try_from(at.timestamp_millis())
        .unwrap_or(0)
        .min((1 << 48) - 1);
    let mut bytes = [0u8; 16];
    // 48-bit big-endian milliseconds, then version 7 and the RFC 4122 variant.
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_spellings_round_trip_and_unknown_names_the_choices() {
        for w in WaitingFor::ALL {
            assert_eq!(w.as_str().parse::<WaitingFor>(), Ok(w));
        }
        let err = "human".parse::<WaitingFor>().unwrap_err();
        assert_eq!(err.value, "human");
        assert_eq!(err.expected, "retry, event, approval, sleep, child, worker");
    }

    #[test]
    fn id_floor_sorts_every_id_of_that_millisecond_after_it() {
        let at = Utc::now();
        let id = Uuid::now_v7();
        assert!(id_floor(at - TimeDelta::milliseconds(1)) < id);
        assert!(id_floor(at + TimeDelta::seconds(1)) > id);
        assert_eq!(id_floor(at).get_version_num(), 7);
        // Extreme times clamp instead of overflowing.
        assert!(id_floor(DateTime::<Utc>::MIN_UTC) < id);
        assert!(id_floor(DateTime::<Utc>::MAX_UTC) > id);
    }
}
