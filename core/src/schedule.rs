//! The Schedule document: a Promise filed on a clock.
//!
//! ```yaml
//! apiVersion: fulfil.dev/v1
//! kind: Schedule
//! metadata: { name: nightly-backup, owner: team-data }
//! spec:
//!   promise: db-backup
//!   cron: "0 2 * * *"          # 5 fields, or 6 with seconds first
//!   timezone: Europe/Berlin    # IANA; default UTC
//!   params: { db: orders }
//!   overlap: skip              # skip (default) | buffer_one | allow
//!   catch_up: 1h               # default 0
//!   paused: false
//! ```
//!
//! [`Schedule::parse`] reads the document with the same bounded reader as
//! Promises ([`crate::document`]) and returns a [`Schedule`] only when the
//! whole document is valid; otherwise every problem is returned at its path
//! (`spec.cron`, `spec.timezone`, ...). A parsed Schedule holds its cron
//! expression compiled and its time zone resolved ([`Timing`]), so the
//! ticker never re-parses text.
//!
//! Times are computed in the Schedule's time zone with `croner`, which
//! handles daylight-saving changes as cron users expect (see
//! `docs/schedules.md`): a wall-clock time skipped by a spring-forward gap
//! fires once, at the first instant after the gap; a wall-clock time
//! repeated by a fall-back fires once, at its first occurrence; interval
//! patterns (`*/30 * * * *`) step through the repeated hour in UTC order
//! without losing or repeating an instant.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::promise::API_VERSION;
use crate::status::OverlapPolicy;
use crate::validate::{SpecError, SpecErrors, is_dns_label};

/// The `kind` of a Schedule document.
pub const KIND: &str = "Schedule";

/// The time zone of a Schedule that names none.
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// What a cron expression may look like, for error messages.
const CRON_HELP: &str = "use 5 fields (minute hour day-of-month month day-of-week), or 6 with \
                         seconds first, e.g. \"0 2 * * *\" or \"*/10 * * * * *\"; names \
                         (MON, JAN), ranges (1-5), lists (1,15), steps (*/5), L, W and # \
                         are accepted, and day-of-week 0 and 7 are both Sunday";

/// A Schedule document as written (and as stored and answered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScheduleDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: ScheduleMetadata,
    pub spec: ScheduleSpec,
}

/// `metadata` of a Schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleMetadata {
    /// Unique among Schedules; the rules of Promise names.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `spec` of a Schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// The Promise each tick files a request against.
    pub promise: String,
    /// When it ticks: 5 fields, or 6 with seconds first.
    pub cron: String,
    /// IANA time zone the cron expression is read in.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// The params of every request filed; checked against the Promise's
    /// schema when a tick files.
    #[serde(default = "empty_object")]
    pub params: Value,
    /// `skip`, `buffer_one` or `allow`.
    #[serde(default = "default_overlap")]
    pub overlap: String,
    /// How old a tick found on recovery may be and still fire, e.g. `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<String>,
    #[serde(default)]
    pub paused: bool,
}

fn default_timezone() -> String {
    DEFAULT_TIMEZONE.to_string()
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

fn default_overlap() -> String {
    OverlapPolicy::Skip.as_str().to_string()
}

/// A cron expression compiled, in its time zone: when a Schedule ticks.
#[derive(Debug, Clone)]
pub struct Timing {
    cron: Cron,
    timezone: Tz,
}

/// Why a cron expression or a time zone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    /// Not a cron expression Fulfil accepts.
    #[error("invalid cron expression {text:?}: {reason}; {CRON_HELP}")]
    Cron {
        /// The expression as given.
        text: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A valid expression that matches no time (`0 0 30 2 *`).
    #[error("cron expression {0:?} never fires (it matches no date); {CRON_HELP}")]
    NeverFires(String),
    /// Not an IANA time zone name.
    #[error(
        "unknown time zone {0:?}; use an IANA name such as UTC, Europe/Berlin or America/New_York"
    )]
    TimeZone(String),
}

impl Timing {
    /// Compiles `cron` (5 fields, 6 with seconds, or a nickname such as
    /// `@daily`) to be read in the IANA time zone `timezone`.
    pub fn new(cron: &str, timezone: &str) -> Result<Self, TimingError> {
        let timezone =
            Tz::from_str(timezone).map_err(|_| TimingError::TimeZone(timezone.to_string()))?;
        let cron = compile_cron(cron)?;
        Ok(Self { cron, timezone })
    }

    /// The time zone the expression is read in.
    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    /// The first tick strictly after `instant`; `None` when there is none
    /// before the year 5000.
    pub fn next_after(&self, instant: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&instant.with_timezone(&self.timezone), false)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }

    /// The first tick at or after `instant`.
    pub fn first_from(&self, instant: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&instant.with_timezone(&self.timezone), true)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }
}

fn compile_cron(text: &str) -> Result<Cron, TimingError> {
    let refuse = |reason: String| TimingError::Cron {
        text: text.to_string(),
        reason,
    };
    let trimmed = text.trim();
    let fields = trimmed.split_whitespace().count();
    // A nickname (`@daily`) is one field; everything else is 5 or 6. The
    // parser would also take 7 (a year), which cron users do not expect.
    let nickname = trimmed.starts_with('@') && fields == 1;
    if !nickname && !(5..=6).contains(&fields) {
        return Err(refuse(format!("it has {fields} field(s)")));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(trimmed)
        .map_err(|e| refuse(e.to_string()))?;
    // A pattern that matches no date (the 30th of February) would make
    // the search run to the parser's year limit at every tick; it is
    // refused once, here. A leap day is found within 8 years.
    let reference = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single();
    let fires = reference.is_some_and(|from| {
        cron.find_next_occurrence(&from, false)
            .is_ok_and(|at| at.signed_duration_since(from).num_days() < 366 * 9)
    });
    if !fires {
        return Err(TimingError::NeverFires(text.to_string()));
    }
    Ok(cron)
}

/// A validated Schedule, with its timing compiled. Built only by
/// [`Schedule::parse`] and [`Schedule::from_value`].
#[derive(Debug, Clone)]
pub struct Schedule {
    document: ScheduleDocument,
    timing: Timing,
    overlap: OverlapPolicy,
    catch_up: Duration,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.document == other.document
    }
}

impl Schedule {
    /// Parses and validates a Schedule from YAML (JSON is valid YAML).
    pub fn parse(text: &str) -> Result<Schedule, SpecErrors> {
        let value = crate::document::read(text).map_err(SpecErrors::one)?;
        Self::from_value(value)
    }

    /// Validates a Schedule given as a JSON value; every problem is
    /// reported at its path.
    pub fn from_value(value: Value) -> Result<Schedule, SpecErrors> {
        crate::document::check_depth(&value).map_err(SpecErrors::one)?;
        crate::document::check_strings(&value).map_err(SpecErrors::one)?;
        let document: ScheduleDocument = serde_path_to_error::deserialize(&value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            SpecErrors::one(SpecError::new(
                path,
                "structure",
                e.into_inner().to_string(),
            ))
        })?;
        validate(document)
    }

    /// The document as written (with defaults filled in).
    pub fn document(&self) -> &ScheduleDocument {
        &self.document
    }

    pub fn name(&self) -> &str {
        &self.document.metadata.name
    }

    pub fn promise(&self) -> &str {
        &self.document.spec.promise
    }

    pub fn cron(&self) -> &str {
        &self.document.spec.cron
    }

    /// The IANA name of the time zone.
    pub fn timezone(&self) -> &str {
        &self.document.spec.timezone
    }

    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    pub fn overlap(&self) -> OverlapPolicy {
        self.overlap
    }

    /// Missed ticks newer than this fire on recovery; zero by default.
    pub fn catch_up(&self) -> Duration {
        self.catch_up
    }

    /// A JSON object.
    pub fn params(&self) -> &Value {
        &self.document.spec.params
    }

    pub fn paused(&self) -> bool {
        self.document.spec.paused
    }

    /// The first tick strictly after `instant`.
    pub fn next_after(&self, instant: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.timing.next_after(instant)
    }
}

fn validate(document: ScheduleDocument) -> Result<Schedule, SpecErrors> {
    let mut errors = Vec::new();
    let mut err = |path: &str, code: &'static str, message: String| {
        errors.push(SpecError::new(path, code, message));
    };
    if document.api_version != API_VERSION {
        err(
            "apiVersion",
            "invalid_value",
            format!(
                "unsupported apiVersion {:?}; expected {API_VERSION:?}",
                document.api_version
            ),
        );
    }
    if document.kind != KIND {
        err(
            "kind",
            "invalid_value",
            format!("kind is {:?}; expected {KIND:?}", document.kind),
        );
    }
    for (path, name) in [
        ("metadata.name", &document.metadata.name),
        ("spec.promise", &document.spec.promise),
    ] {
        if !is_dns_label(name) {
            err(
                path,
                "invalid_value",
                format!(
                    "{name:?} is not a valid name: use 1-63 lowercase letters, digits and '-', \
                     starting with a letter"
                ),
            );
        }
    }
    let cron = compile_cron(&document.spec.cron)
        .map_err(|e| err("spec.cron", "invalid_value", e.to_string()))
        .ok();
    let timezone = Tz::from_str(&document.spec.timezone)
        .map_err(|_| {
            err(
                "spec.timezone",
                "invalid_value",
                TimingError::TimeZone(document.spec.timezone.clone()).to_string(),
            )
        })
        .ok();
    let overlap = OverlapPolicy::parse(&document.spec.overlap)
        .map_err(|e| err("spec.overlap", "invalid_value", e.to_string()))
        .ok();
    let catch_up = match &document.spec.catch_up {
        None => Some(Duration::ZERO),
        Some(text) => crate::time::parse_duration(text)
            .map_err(|e| err("spec.catch_up", "invalid_duration", e.to_string()))
            .ok(),
    };
    if !document.spec.params.is_object() {
        err(
            "spec.params",
            "invalid_value",
            "params must be a mapping of parameter names to values".to_string(),
        );
    }
    match (cron, timezone, overlap, catch_up) {
        (Some(cron), Some(timezone), Some(overlap), Some(catch_up)) if errors.is_empty() => {
            Ok(Schedule {
                document,
                timing: Timing { cron, timezone },
                overlap,
                catch_up,
            })
        }
        _ => Err(SpecErrors(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("an RFC 3339 time")
            .with_timezone(&Utc)
    }

    fn berlin(cron: &str) -> Timing {
        Timing::new(cron, "Europe/Berlin").expect("a valid timing")
    }

    #[test]
    fn a_daily_job_in_the_spring_forward_gap_runs_once_at_the_first_instant_after_it() {
        // 2026-03-29: Berlin jumps from 02:00 CET to 03:00 CEST; 02:30 does
        // not exist that day.
        let job = berlin("30 2 * * *");
        let before = job.next_after(utc("2026-03-27T12:00:00Z"));
        assert_eq!(before, Some(utc("2026-03-28T01:30:00Z")), "02:30 CET");
        let on_the_day = job.next_after(utc("2026-03-28T01:30:00Z"));
        assert_eq!(
            on_the_day,
            Some(utc("2026-03-29T01:00:00Z")),
            "03:00 CEST, the first instant after the gap"
        );
        let after = on_the_day.and_then(|t| job.next_after(t));
        assert_eq!(after, Some(utc("2026-03-30T00:30:00Z")), "02:30 CEST");
    }

    #[test]
    fn a_daily_job_in_the_repeated_autumn_hour_runs_once() {
        // 2026-10-25: Berlin goes back from 03:00 CEST to 02:00 CET; 02:30
        // happens twice (00:30 and 01:30 UTC).
        let job = berlin("30 2 * * *");
        let first = job.next_after(utc("2026-10-24T12:00:00Z"));
        assert_eq!(first, Some(utc("2026-10-25T00:30:00Z")), "02:30 CEST");
        let next = first.and_then(|t| job.next_after(t));
        assert_eq!(
            next,
            Some(utc("2026-10-26T01:30:00Z")),
            "the next day's 02:30 CET: not the repeated 02:30 of the 25th"
        );
    }

    #[test]
    fn half_hourly_ticks_step_through_the_repeated_hour_once_each_in_order() {
        let job = berlin("*/30 * * * *");
        // 01:50 CEST on 2026-10-25.
        let mut at = utc("2026-10-24T23:50:00Z");
        let mut ticks = Vec::new();
        for _ in 0..6 {
            at = job.next_after(at).expect("a next tick");
            ticks.push(at);
        }
        let expected: Vec<DateTime<Utc>> = [
            "2026-10-25T00:00:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:00:00Z",
            "2026-10-25T01:30:00Z",
            "2026-10-25T02:00:00Z",
            "2026-10-25T02:30:00Z",
        ]
        .into_iter()
        .map(utc)
        .collect();
        assert_eq!(ticks, expected);
        // The same in the spring: the skipped hour yields nothing twice.
        let mut at = utc("2026-03-29T00:40:00Z");
        let mut spring = Vec::new();
        for _ in 0..3 {
            at = job.next_after(at).expect("a next tick");
            spring.push(at);
        }
        assert_eq!(
            spring,
            vec![
                utc("2026-03-29T01:00:00Z"),
                utc("2026-03-29T01:30:00Z"),
                utc("2026-03-29T02:00:00Z")
            ]
        );
    }

    #[test]
    fn five_and_six_fields_nicknames_and_zones_are_read_as_cron_users_expect() {
        let utc_daily = Timing::new("0 2 * * *", "UTC").expect("5 fields");
        assert_eq!(
            utc_daily.next_after(utc("2026-06-01T02:00:00Z")),
            Some(utc("2026-06-02T02:00:00Z"))
        );
        let every_two_seconds = Timing::new("*/2 * * * * *", "UTC").expect("6 fields");
        assert_eq!(
            every_two_seconds.next_after(utc("2026-06-01T00:00:01.500Z")),
            Some(utc("2026-06-01T00:00:02Z"))
        );
        assert_eq!(
            every_two_seconds.first_from(utc("2026-06-01T00:00:02Z")),
            Some(utc("2026-06-01T00:00:02Z"))
        );
        // Day-of-week 1 is Monday; 2026-06-01 is a Monday.
        let mondays = Timing::new("0 9 * * 1", "UTC").expect("valid");
        assert_eq!(
            mondays.next_after(utc("2026-05-30T00:00:00Z")),
            Some(utc("2026-06-01T09:00:00Z"))
        );
        let nightly = Timing::new("@daily", "America/New_York").expect("a nickname");
        assert_eq!(
            nightly.next_after(utc("2026-06-01T12:00:00Z")),
            Some(utc("2026-06-02T04:00:00Z")),
            "midnight EDT"
        );
    }

    #[test]
    fn a_valid_schedule_is_compiled_with_its_defaults() {
        let schedule = Schedule::parse(
            "apiVersion: fulfil.dev/v1\nkind: Schedule\nmetadata: { name: nightly-backup, owner: team-data }\nspec:\n  promise: db-backup\n  cron: \"0 2 * * *\"\n  timezone: Europe/Berlin\n  params: { db: orders }\n  overlap: buffer_one\n  catch_up: 1h\n",
        )
        .expect("a valid Schedule");
        assert_eq!(schedule.name(), "nightly-backup");
        assert_eq!(schedule.promise(), "db-backup");
        assert_eq!(schedule.overlap(), OverlapPolicy::BufferOne);
        assert_eq!(schedule.catch_up(), Duration::from_secs(3600));
        assert_eq!(schedule.params(), &serde_json::json!({ "db": "orders" }));
        assert!(!schedule.paused());
        assert_eq!(schedule.timing().timezone(), chrono_tz::Europe::Berlin);

        let minimal = Schedule::parse(
            "apiVersion: fulfil.dev/v1\nkind: Schedule\nmetadata: { name: m }\nspec: { promise: p, cron: \"* * * * *\" }\n",
        )
        .expect("defaults fill the rest");
        assert_eq!(minimal.timezone(), "UTC");
        assert_eq!(minimal.overlap(), OverlapPolicy::Skip);
        assert_eq!(minimal.catch_up(), Duration::ZERO);
        assert_eq!(minimal.params(), &serde_json::json!({}));
        // The stored document reads back to the same Schedule.
        let stored = serde_json::to_value(minimal.document()).expect("serializes");
        assert_eq!(Schedule::from_value(stored).ok(), Some(minimal));
    }

    #[test]
    fn every_problem_is_reported_at_its_path() {
        let errors = Schedule::parse(
            "apiVersion: fulfil.dev/v2\nkind: Schedule\nmetadata: { name: Nightly }\nspec:\n  promise: db_backup\n  cron: \"0 2 * *\"\n  timezone: Mars/Olympus\n  params: [1]\n  overlap: queue\n  catch_up: soon\n",
        )
        .expect_err("invalid");
        let at: Vec<(&str, &str)> = errors.0.iter().map(|e| (e.path.as_str(), e.code)).collect();
        assert_eq!(
            at,
            vec![
                ("apiVersion", "invalid_value"),
                ("metadata.name", "invalid_value"),
                ("spec.promise", "invalid_value"),
                ("spec.cron", "invalid_value"),
                ("spec.timezone", "invalid_value"),
                ("spec.overlap", "invalid_value"),
                ("spec.catch_up", "invalid_duration"),
                ("spec.params", "invalid_value"),
            ]
        );
        let message = |path: &str| {
            errors
                .0
                .iter()
                .find(|e| e.path == path)
                .map(|e| e.message.clone())
                .unwrap_or_default()
        };
        assert!(message("spec.cron").contains("4 field(s)"), "{errors}");
        assert!(message("spec.cron").contains("6 with seconds first"));
        assert!(message("spec.timezone").contains("Europe/Berlin"));
        assert!(message("spec.overlap").contains("skip, buffer_one, allow"));

        for (cron, needle) in [
            ("0 0 30 2 *", "never fires"),
            ("61 * * * *", "invalid cron"),
            ("0 0 1 1 * 2030", "invalid cron"),
            ("0 0 1 1 * 2030 x", "7 field(s)"),
        ] {
            let e = Timing::new(cron, "UTC").expect_err(cron).to_string();
            assert!(e.contains(needle), "{cron}: {e}");
        }

        let unknown = Schedule::parse(
            "apiVersion: fulfil.dev/v1\nkind: Schedule\nmetadata: { name: m }\nspec: { promise: p, cron: \"* * * * *\", cronn: x }\n",
        )
        .expect_err("unknown field");
        assert_eq!(unknown.0[0].path, "spec.cronn");
        assert_eq!(unknown.0[0].code, "structure");
        assert!(unknown.0[0].message.contains("cronn"), "{unknown}");
    }
}
