//! The retention rule, which ingest, compaction, lookups and the sweeper
//! all ask: a day `D` (the `dt` partition, UTC date of `start_time`) is
//! expired once `D < today − days`. With the default 365 days, data is kept
//! at least 365 and at most 366 days. Leap years need nothing special
//! because the rule counts days.

use super::time::PartitionDate;

/// The oldest day still within a window of `days` on `today`.
pub fn oldest_retained(today: PartitionDate, days: u32) -> PartitionDate {
    PartitionDate::from_days_since_epoch(today.days_since_epoch() - i64::from(days)).unwrap_or(PartitionDate::EPOCH)
}

/// The retention rule: `day < today − days`.
pub fn is_expired(day: PartitionDate, today: PartitionDate, days: u32) -> bool {
    day < oldest_retained(today, days)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TimestampMicros;
    use proptest::prelude::*;

    fn date(text: &str) -> PartitionDate {
        PartitionDate::parse(text).unwrap()
    }

    #[test]
    fn the_boundary_day_is_kept_and_the_one_before_goes() {
        let today = date("2026-11-24");
        assert!(!is_expired(date("2025-11-24"), today, 365));
        assert!(is_expired(date("2025-11-23"), today, 365));
    }

    #[test]
    fn leap_years_count_days_not_calendar_years() {
        // 2024 is a leap year: 365 days before 2025-02-28 is 2024-02-29.
        let today = date("2025-02-28");
        assert_eq!(oldest_retained(today, 365), date("2024-02-29"));
        assert!(is_expired(date("2024-02-28"), today, 365));
        assert!(!is_expired(date("2024-02-29"), today, 365));
    }

    #[test]
    fn the_first_sweep_after_midnight_utc_expires_one_more_day() {
        let before = TimestampMicros::from_datetime(
            chrono::DateTime::parse_from_rfc3339("2026-11-24T23:59:59.999999Z").unwrap().to_utc(),
        );
        let after = TimestampMicros(before.0 + 1);
        let day = date("2025-11-24");
        assert!(!is_expired(day, before.partition_date(), 365));
        assert!(is_expired(day, after.partition_date(), 365));
    }

    proptest! {
        #[test]
        fn expiry_is_monotonic_in_time(day in 0i64..40_000, today in 0i64..40_000, later in 0i64..1_000, days in 1u32..3_000) {
            let d = PartitionDate::from_days_since_epoch(day).unwrap();
            let t = PartitionDate::from_days_since_epoch(today).unwrap();
            let t2 = PartitionDate::from_days_since_epoch(today + later).unwrap();
            // Once expired, a day stays expired as the clock moves forward.
            if is_expired(d, t, days) {
                prop_assert!(is_expired(d, t2, days));
            }
            // Exactly the days before the cutoff are expired.
            prop_assert_eq!(is_expired(d, t, days), day < today - i64::from(days));
        }

        #[test]
        fn a_clock_that_jumps_back_never_resurrects_by_rule_alone(day in 0i64..40_000, today in 1_000i64..40_000, back in 0i64..1_000) {
            // The rule itself would keep a day again after a backward jump;
            // that is why deletion leaves a tombstone the writer respects.
            let d = PartitionDate::from_days_since_epoch(day).unwrap();
            let t = PartitionDate::from_days_since_epoch(today).unwrap();
            let earlier = PartitionDate::from_days_since_epoch(today - back).unwrap();
            prop_assert!(!is_expired(d, earlier, 365) || is_expired(d, t, 365));
        }
    }
}
