//! Whether a retention sweep may trust the clock.
//!
//! Retention destroys what is older than the clock's today, so a clock that
//! jumps ahead destroys live days and ends preservation orders early, and
//! every later check agrees with it, because it measures against the same
//! clock. Before it destroys anything, a sweep therefore compares "now" with
//! two references that are not the clock's present:
//!
//! - the last sweep that succeeded (or the last confirmation), kept in the
//!   keys directory ([`crate::keys::KeyStore::retention_clock_path`]) next
//!   to the tombstones, which record how far destruction went;
//! - the newest day of data: its date is the start time of records, that is
//!   the mediation's clocks, and ingest refuses records too far ahead of
//!   its own clock, so fresh data means both clocks agree.
//!
//! The clock is suspect when "now" is earlier than the last sweep by more
//! than [`BACKWARD_TOLERANCE`], or later than the newer of the two references
//! by more than `retention.max_clock_jump`. With no reference at all (a
//! fresh install) it is trusted. An operator who knows the clock is right
//! says so with `cdrvault retention confirm-clock`, which is audited and then
//! recorded as the last sweep.
//!
//! This module reads and writes one small file, audits confirmations and
//! decides; it never deletes anything.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::audit::{AuditError, AuditEvent, AuditTrail};
use crate::model::{PartitionDate, TimestampMicros};
use crate::ops::durable::{self, DurableError, FileMode};
use crate::storage::read::{self, ReadError};

/// How far "now" may go back behind the last sweep: a clock stepped by
/// NTP, or two processes (the service and an operator's command) whose
/// sweeps interleave.
pub const BACKWARD_TOLERANCE: Duration = Duration::from_secs(3600);

/// What a sweep knows of time when it decides whether to trust the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReading {
    /// The clock's present.
    pub now: DateTime<Utc>,
    /// When the last successful sweep ran, or the clock was last confirmed.
    pub last_sweep: Option<DateTime<Utc>>,
    /// The newest day that has data.
    pub newest_day: Option<PartitionDate>,
}

/// Why a sweep distrusts the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockSuspicion {
    /// "now" is earlier than the last sweep, beyond [`BACKWARD_TOLERANCE`].
    WentBack,
    /// "now" is later than both the last sweep and the end of the newest day
    /// of data by more than `retention.max_clock_jump`.
    JumpedAhead,
}

impl fmt::Display for ClockSuspicion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClockSuspicion::WentBack => "the clock went back before the last sweep",
            ClockSuspicion::JumpedAhead => "the clock jumped beyond the last sweep and the newest data",
        })
    }
}

impl ClockReading {
    /// Why the clock cannot be trusted, if it cannot: see the module
    /// documentation for the rule.
    pub fn suspicion(&self, max_jump: Duration) -> Option<ClockSuspicion> {
        if let Some(last) = self.last_sweep
            && self.now < last - delta(BACKWARD_TOLERANCE)
        {
            return Some(ClockSuspicion::WentBack);
        }
        // Data of a day may arrive until its end, so the newest day vouches
        // for the clock up to its last microsecond.
        let newest_data = self.newest_day.and_then(|day| day.end().to_datetime());
        let reference = self.last_sweep.into_iter().chain(newest_data).max()?;
        (self.now - reference > delta(max_jump)).then_some(ClockSuspicion::JumpedAhead)
    }

    /// The last sweep in RFC 3339, as logs and the audit trail show it.
    pub fn last_sweep_text(&self) -> Option<String> {
        self.last_sweep.map(rfc3339)
    }

    /// The newest day as `YYYY-MM-DD`.
    pub fn newest_day_text(&self) -> Option<String> {
        self.newest_day.map(|day| day.to_string())
    }
}

impl fmt::Display for ClockReading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let none = || "none".to_string();
        write!(
            f,
            "now {}, last sweep {}, newest day {}",
            rfc3339(self.now),
            self.last_sweep_text().unwrap_or_else(none),
            self.newest_day_text().unwrap_or_else(none)
        )
    }
}

/// A time in RFC 3339, UTC, to the second.
pub fn rfc3339(time: DateTime<Utc>) -> String {
    TimestampMicros::from_datetime(time).rfc3339()
}

/// A configured duration as a chrono delta; one too long for chrono (far
/// beyond any clock) is the longest it has.
fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error(transparent)]
    Durable(#[from] DurableError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(
        "{0} does not hold an RFC 3339 time; if the clock is right, `cdrvault retention confirm-clock` rewrites it"
    )]
    Corrupt(PathBuf),
}

impl ClockError {
    /// True when the process must stop: an fsync failed.
    pub fn is_fatal(&self) -> bool {
        match self {
            ClockError::Durable(e) => e.is_fatal(),
            ClockError::Audit(e) => e.is_fatal(),
            ClockError::Read(_) | ClockError::Corrupt(_) => false,
        }
    }
}

/// The clock check of one data directory, with its record of the last
/// sweep.
#[derive(Debug, Clone)]
pub struct ClockCheck {
    record: SweepRecord,
    data_dir: PathBuf,
    max_jump: Duration,
}

impl ClockCheck {
    /// `record` is where the last sweep is kept, `max_jump` the
    /// configured `retention.max_clock_jump`.
    pub fn new(record: &Path, data_dir: &Path, max_jump: Duration) -> ClockCheck {
        ClockCheck { record: SweepRecord::new(record), data_dir: data_dir.to_path_buf(), max_jump }
    }

    /// What "now" is checked against.
    pub fn read(&self, now: DateTime<Utc>) -> Result<ClockReading, ClockError> {
        let last_sweep = self.record.read()?;
        Ok(ClockReading { now, last_sweep, newest_day: self.newest_day()? })
    }

    fn newest_day(&self) -> Result<Option<PartitionDate>, ClockError> {
        Ok(read::list_days(&self.data_dir)?.last().copied())
    }

    /// Why a sweep must not trust the clock of `reading`, if it must not;
    /// the refusal is logged as an error line that names the times.
    pub fn suspicion(&self, reading: &ClockReading) -> Option<ClockSuspicion> {
        let suspicion = reading.suspicion(self.max_jump)?;
        tracing::error!(
            %suspicion,
            now = %rfc3339(reading.now),
            last_sweep = reading.last_sweep_text().as_deref().unwrap_or("none"),
            newest_day = reading.newest_day_text().as_deref().unwrap_or("none"),
            max_clock_jump = %humantime::format_duration(self.max_jump),
            "clock suspect: retention destroyed nothing and ended no order; \
             if the clock is right, run `cdrvault retention confirm-clock`"
        );
        Some(suspicion)
    }

    /// Records the sweep of `reading` once it has succeeded. The reference
    /// never moves back: a clock within the tolerance behind the last sweep
    /// must not drag it back, step by step.
    pub fn record_sweep(&self, reading: &ClockReading) -> Result<(), ClockError> {
        self.record.write(reading.last_sweep.map_or(reading.now, |last| last.max(reading.now)))
    }

    /// An operator vouches for the clock at `now`: the confirmation is
    /// audited under `actor` first, then `now` is recorded as the last
    /// sweep, whichever way it moves. A damaged record is replaced. Returns
    /// what the clock was checked against until then.
    pub fn confirm(&self, now: DateTime<Utc>, audit: &AuditTrail, actor: &str) -> Result<ClockReading, ClockError> {
        let last_sweep = match self.record.read() {
            Err(ClockError::Corrupt(path)) => {
                tracing::warn!(path = %path.display(), "the damaged record of the last sweep is replaced");
                None
            }
            other => other?,
        };
        let reading = ClockReading { now, last_sweep, newest_day: self.newest_day()? };
        let event = AuditEvent::ClockConfirmed {
            now: rfc3339(now),
            last_sweep: reading.last_sweep_text(),
            newest_day: reading.newest_day_text(),
        };
        audit.append(actor, &event, now)?;
        self.record.write(now)?;
        Ok(reading)
    }
}

/// The durable record of the last sweep: one RFC 3339 time in one file.
#[derive(Debug, Clone)]
struct SweepRecord {
    path: PathBuf,
}

impl SweepRecord {
    fn new(path: &Path) -> SweepRecord {
        SweepRecord { path: path.to_path_buf() }
    }

    /// The recorded time; none before the first sweep.
    fn read(&self) -> Result<Option<DateTime<Utc>>, ClockError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DurableError::io("read", &self.path, e).into()),
        };
        let time = DateTime::parse_from_rfc3339(text.trim()).map_err(|_| ClockError::Corrupt(self.path.clone()))?;
        Ok(Some(time.with_timezone(&Utc)))
    }

    /// Records `at`, durably: complete under its name or not changed.
    fn write(&self, at: DateTime<Utc>) -> Result<(), ClockError> {
        let text = format!("{}\n", at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        Ok(durable::write_atomically(&self.path, text.as_bytes(), FileMode::Private)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    fn noon() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap()
    }

    fn reading(now: DateTime<Utc>, last_sweep: Option<DateTime<Utc>>, newest: Option<DateTime<Utc>>) -> ClockReading {
        let newest_day = newest.map(|t| TimestampMicros::from_datetime(t).partition_date());
        ClockReading { now, last_sweep, newest_day }
    }

    #[test]
    fn the_rule_as_a_table() {
        let t = noon();
        let days = TimeDelta::days;
        let hours = TimeDelta::hours;
        let cases = [
            ("fresh install", reading(t, None, None), None),
            ("an hour after the last sweep", reading(t, Some(t - hours(1)), Some(t)), None),
            ("a sweep interleaved with another", reading(t - hours(1), Some(t), Some(t)), None),
            ("back more than the tolerance", reading(t - hours(2), Some(t), Some(t)), Some(ClockSuspicion::WentBack)),
            ("back a year", reading(t - days(365), Some(t), None), Some(ClockSuspicion::WentBack)),
            ("a week after both", reading(t + days(7), Some(t), Some(t)), None),
            ("a year after both", reading(t + days(365), Some(t), Some(t)), Some(ClockSuspicion::JumpedAhead)),
            ("a year after the data alone", reading(t + days(365), None, Some(t)), Some(ClockSuspicion::JumpedAhead)),
            (
                "a year after the last sweep alone",
                reading(t + days(365), Some(t), None),
                Some(ClockSuspicion::JumpedAhead),
            ),
            ("an old sweep, fresh data", reading(t + days(30), Some(t), Some(t + days(30))), None),
            ("old data, a recent sweep", reading(t + days(30), Some(t + days(29)), Some(t)), None),
            // The newest day counts up to its end: day D's data vouches for D.
            ("the newest day ends a week ago", reading(t + days(7) + hours(11), None, Some(t)), None),
            (
                "a week and a day after the newest day",
                reading(t + days(8) + hours(12), None, Some(t)),
                Some(ClockSuspicion::JumpedAhead),
            ),
        ];
        for (case, reading, expected) in cases {
            assert_eq!(reading.suspicion(WEEK), expected, "{case}: {reading}");
        }
    }

    #[test]
    fn the_record_round_trips_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let record = SweepRecord::new(&dir.path().join("retention.clock"));
        assert_eq!(record.read().unwrap(), None);
        let at = noon() + TimeDelta::microseconds(123_456);
        record.write(at).unwrap();
        assert_eq!(record.read().unwrap(), Some(at));
        std::fs::write(dir.path().join("retention.clock"), "yesterday").unwrap();
        assert!(matches!(record.read(), Err(ClockError::Corrupt(_))));
    }
}
