//! Durations and deadlines, in one place.
//!
//! Every duration a Promise states is bounded by [`MAX_DURATION`] when it is
//! parsed, and every duration that arrives from outside (a header, a wire
//! message) is clamped to it with [`clamp`]. Deadlines are computed with
//! [`deadline_after`], which saturates instead of overflowing: a bound
//! missed somewhere upstream yields a deadline far in the future, never a
//! panic in the engine or a worker.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// Longest duration Fulfil accepts anywhere: a year and a day. Long enough
/// for any timeout, approval or retry delay a platform needs; short enough
/// that `now + MAX_DURATION` is always a representable time.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// Why a duration text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a duration at all.
    #[error("invalid duration {text:?}: {reason}; use forms like 500ms, 10s, 5m, 1h, 3d")]
    Syntax {
        /// The text as given.
        text: String,
        /// What the parser objected to.
        reason: String,
    },
    /// A duration, but longer than [`MAX_DURATION`].
    #[error("duration {text:?} is longer than the maximum of 366d")]
    TooLong {
        /// The text as given.
        text: String,
    },
}

/// Parses a duration such as `500ms`, `10s`, `1m30s`, no longer than
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let duration = humantime::parse_duration(text.trim()).map_err(|err| DurationError::Syntax {
        text: text.to_owned(),
        reason: err.to_string(),
    })?;
    if duration > MAX_DURATION {
        return Err(DurationError::TooLong {
            text: text.to_owned(),
        });
    }
    Ok(duration)
}

/// `duration`, at most [`MAX_DURATION`]: for durations from outside.
pub fn clamp(duration: Duration) -> Duration {
    duration.min(MAX_DURATION)
}

/// Milliseconds from a wire message or header, clamped to [`MAX_DURATION`].
pub fn clamp_millis(millis: u64) -> Duration {
    clamp(Duration::from_millis(millis))
}

/// `duration` in whole milliseconds, for wire messages; saturates.
pub fn as_millis_u64(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `duration` as a chrono delta, clamped to [`MAX_DURATION`].
pub fn to_time_delta(duration: Duration) -> TimeDelta {
    // MAX_DURATION always converts; the fallback is for completeness only.
    TimeDelta::from_std(clamp(duration)).unwrap_or(TimeDelta::MAX)
}

/// `from + duration`, saturating at the latest representable time.
pub fn deadline_after(from: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    from.checked_add_signed(to_time_delta(duration))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_bounded_and_deadlines_saturate() {
        assert_eq!(parse_duration(" 10s "), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("366d"), Ok(MAX_DURATION));
        assert!(matches!(
            parse_duration("300000y"),
            Err(DurationError::TooLong { .. })
        ));
        assert!(matches!(
            parse_duration("99999999999999s"),
            Err(DurationError::TooLong { .. })
        ));
        assert!(matches!(
            parse_duration("soon"),
            Err(DurationError::Syntax { .. })
        ));

        assert_eq!(clamp_millis(u64::MAX), MAX_DURATION);
        assert_eq!(as_millis_u64(Duration::MAX), u64::MAX);
        let now = Utc::now();
        assert_eq!(
            deadline_after(now, Duration::MAX),
            now + to_time_delta(MAX_DURATION)
        );
        assert_eq!(
            deadline_after(DateTime::<Utc>::MAX_UTC, Duration::from_secs(1)),
            DateTime::<Utc>::MAX_UTC
        );
    }
}
