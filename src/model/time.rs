//! Time: instants in microseconds and the UTC calendar day that partitions
//! the data and keys.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, Utc};

/// Microseconds in one day.
pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimestampMicros(pub i64);

impl TimestampMicros {
    pub fn from_datetime(t: DateTime<Utc>) -> Self {
        TimestampMicros(t.timestamp_micros())
    }

    pub fn to_datetime(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self.0)
    }

    /// RFC 3339 in UTC to the second, as the API and the audit trail show
    /// times (empty for an instant chrono cannot represent).
    pub fn rfc3339(self) -> String {
        self.to_datetime().map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_default()
    }

    /// The UTC date of this instant: the partition of a record and the start
    /// of its retention clock.
    pub fn partition_date(self) -> PartitionDate {
        // Every i64 microsecond count is within chrono's range of dates
        // (about ±292,000 years), so the fallback is unreachable; it is kept
        // total rather than panicking.
        let days = self.0.div_euclid(MICROS_PER_DAY);
        PartitionDate::from_days_since_epoch(days).unwrap_or(PartitionDate::EPOCH)
    }
}

/// A UTC calendar date: the `dt=` partition of the data and the unit of
/// retention and of data keys.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionDate(NaiveDate);

impl PartitionDate {
    // 1970-01-01 is a valid date, so the const unwrap cannot fail.
    pub const EPOCH: PartitionDate = PartitionDate(NaiveDate::from_ymd_opt(1970, 1, 1).unwrap());

    pub fn new(date: NaiveDate) -> Self {
        PartitionDate(date)
    }

    pub fn from_days_since_epoch(days: i64) -> Option<Self> {
        let days = i32::try_from(days).ok()?;
        NaiveDate::from_num_days_from_ce_opt(days.checked_add(719_163)?).map(PartitionDate)
    }

    pub fn date(self) -> NaiveDate {
        self.0
    }

    pub fn days_since_epoch(self) -> i64 {
        i64::from(self.0.num_days_from_ce()) - 719_163
    }

    /// The first microsecond of the day.
    pub fn start(self) -> TimestampMicros {
        TimestampMicros(self.days_since_epoch() * MICROS_PER_DAY)
    }

    /// Parses `YYYY-MM-DD`. The written form (four, two and two digits) is
    /// read directly: a lookup parses every day directory and day key name
    /// of its window; anything else goes through chrono's parser.
    pub fn parse(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        let digits = |range: std::ops::Range<usize>| {
            b[range].iter().try_fold(0u32, |n, d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
        };
        if b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && let (Some(year), Some(month), Some(day)) = (digits(0..4), digits(5..7), digits(8..10))
        {
            return NaiveDate::from_ymd_opt(year as i32, month, day).map(PartitionDate);
        }
        NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().map(PartitionDate)
    }

    /// The last microsecond of the day.
    pub fn end(self) -> TimestampMicros {
        TimestampMicros(self.start().0 + MICROS_PER_DAY - 1)
    }

    /// The day after.
    pub fn next(self) -> Option<Self> {
        Self::from_days_since_epoch(self.days_since_epoch() + 1)
    }
}

impl fmt::Display for PartitionDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.0.year(), self.0.month(), self.0.day())
    }
}

// Serialised as `YYYY-MM-DD`, for tombstones and reports.
impl serde::Serialize for PartitionDate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for PartitionDate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        PartitionDate::parse(&text).ok_or_else(|| serde::de::Error::custom("expected YYYY-MM-DD"))
    }
}

impl fmt::Debug for PartitionDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartitionDate({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partition_date_is_the_utc_date_of_start_time() {
        let t = DateTime::parse_from_rfc3339("2026-03-01T00:30:00+02:00").unwrap();
        let date = TimestampMicros::from_datetime(t.with_timezone(&Utc)).partition_date();
        assert_eq!(date.to_string(), "2026-02-28");
        assert_eq!(date.end().0 - date.start().0, MICROS_PER_DAY - 1);
        assert_eq!(date.end().partition_date(), date);
        assert_eq!(date.next().unwrap().to_string(), "2026-03-01");
    }

    proptest! {
        #[test]
        fn partition_date_agrees_with_chrono(micros in -4_000_000_000_000_000i64..4_000_000_000_000_000i64) {
            let expected = DateTime::from_timestamp_micros(micros).unwrap().date_naive();
            let date = TimestampMicros(micros).partition_date();
            prop_assert_eq!(date.date(), expected);
            prop_assert!(date.start().0 <= micros);
            prop_assert!(micros - date.start().0 < MICROS_PER_DAY);
        }

        #[test]
        fn dates_parse_as_chrono_parses_them(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9 +-]{0,12}") {
            let chrono = NaiveDate::parse_from_str(&text, "%Y-%m-%d").ok().map(PartitionDate);
            prop_assert_eq!(PartitionDate::parse(&text), chrono);
        }

        #[test]
        fn days_since_epoch_round_trips(days in -100_000i64..100_000i64) {
            let date = PartitionDate::from_days_since_epoch(days).unwrap();
            prop_assert_eq!(date.days_since_epoch(), days);
            prop_assert_eq!(PartitionDate::parse(&date.to_string()), Some(date));
        }
    }
}
