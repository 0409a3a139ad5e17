//! Retention across a simulated year with an injected clock: 400 days of
//! data arrive day by day, the sweep runs daily, and at the end nothing
//! older than the window is readable, the keys of expired days are gone,
//! the audit trail and `retention verify` pass; then tampering is caught,
//! and a sweep killed mid-deletion is finished by the next one. A clock
//! that jumps destroys nothing until an operator confirms it, and a
//! previewed date never destroys anything.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use cdrvault::audit::{AUDIT_FILE, AuditTrail};
use cdrvault::ingest::decode::Encoding;
use cdrvault::ingest::process::Input;
use cdrvault::keys::{KeyStore, RecordKeyScope};
use cdrvault::lifecycle::clock_check::ClockSuspicion;
use cdrvault::lifecycle::config::RetentionConfig;
use cdrvault::lifecycle::orders::{NewOrder, OrderStore};
use cdrvault::lifecycle::retention::{CrashPoint, RetentionError, SweepMode, Sweeper, Violation};
use cdrvault::model::retention::is_expired;
use cdrvault::model::{PartitionDate, RefuseReason};
use cdrvault::ops::clock::Clock;
use cdrvault::ops::metrics::Metrics;
use cdrvault::privacy::target::TargetInput;
use cdrvault::registry::OrderStatus;
use cdrvault::storage::config::ParquetConfig;
use cdrvault::storage::{layout, read};
use common::{TestVault, VaultOptions};

const DAYS: i64 = 400;
const RECORDS_PER_DAY: usize = 40;

/// A vault with its audit trail, preservation orders, and sweeper with
/// its metrics.
struct World {
    vault: TestVault,
    audit: Arc<AuditTrail>,
    orders: Arc<OrderStore>,
    sweeper: Sweeper,
    metrics: Arc<Metrics>,
}

impl World {
    fn new(start: DateTime<Utc>) -> World {
        let options = VaultOptions {
            now: start,
            decode_threads: 1,
            max_clock_skew: Duration::from_secs(300),
            ..VaultOptions::default()
        };
        let vault = TestVault::with(options);
        let audit = vault.audit();
        // Orders here outlive the year they preserve past.
        let orders = Arc::new(
            OrderStore::new(vault.registries().orders, Arc::clone(&vault.keys), Arc::clone(&audit), vault.data())
                .with_max_days(3 * DAYS as u32),
        );
        let metrics = Metrics::new();
        let sweeper = vault.sweeper(&audit, Arc::clone(&orders)).with_metrics(Arc::clone(&metrics));
        World { vault, audit, orders, sweeper, metrics }
    }

    /// Moves the clock to `at` as after a pause with neither data nor
    /// sweeps: the operator confirms the clock, which the sweep would
    /// otherwise distrust.
    fn jump_to(&self, at: DateTime<Utc>) {
        self.vault.clock.set(at);
        self.sweeper.confirm_clock("operator").unwrap();
    }

    /// `cdrvault_retention_clock_suspect`.
    fn clock_suspect(&self) -> Option<f64> {
        common::metric(&self.metrics.encode(), "cdrvault_retention_clock_suspect")
    }

    /// The actions of the audit trail, in order.
    fn actions(&self) -> Vec<String> {
        std::fs::read_to_string(self.vault.state().join(AUDIT_FILE))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["action"].as_str().unwrap().to_string())
            .collect()
    }

    fn order_status(&self, id: &str) -> OrderStatus {
        self.orders.list().unwrap().into_iter().find(|o| o.id == id).unwrap().status
    }

    fn data(&self) -> PathBuf {
        self.vault.data()
    }

    fn today(&self) -> PartitionDate {
        self.vault.today()
    }

    /// Ingests records that started earlier today.
    fn ingest_today(&self, tag: &str) -> usize {
        let day = self.vault.now().format("%Y-%m-%d").to_string();
        let payloads = (0..RECORDS_PER_DAY).map(|i| {
            format!(
                r#"{{"record_id":"{tag}-{day}-{i}","service":"voice","start_time":"{day}T00:{:02}:00Z","calling_number":"+4520{:06}","called_number":"+4530000001"}}"#,
                i % 60,
                i
            )
            .into_bytes()
        });
        self.vault.ingest_payloads(payloads).written
    }

    fn verify(&self) -> Vec<Violation> {
        let public = self.audit.public_key();
        self.sweeper.verify(None, &public, &self.vault.state().join(AUDIT_FILE)).unwrap().violations
    }

    /// Places dk-police's order `freeze`.
    fn place(&self, freeze: Freeze<'_>) -> cdrvault::registry::Order {
        let (window_start, window_end) = NewOrder::days(*freeze.days.start(), *freeze.days.end()).unwrap();
        let order = NewOrder {
            authority: "dk-police".into(),
            reference: freeze.reference.into(),
            targets: vec![TargetInput::parse(freeze.target, 1).unwrap()],
            window_start,
            // An order preserves what is stored: its window ends by now.
            window_end: window_end.min(self.vault.now()),
            ends: freeze.until,
        };
        common::approved_order(&self.orders, order, self.vault.now())
    }
}

/// A preservation order: its reference, its target (`kind:value`), the
/// days of communications it covers, and its last day.
struct Freeze<'a> {
    reference: &'a str,
    target: &'a str,
    days: std::ops::RangeInclusive<PartitionDate>,
    until: PartitionDate,
}

fn day_files(data: &Path, day: PartitionDate) -> Vec<PathBuf> {
    read::list_files(data, day).unwrap()
}

#[test]
fn a_simulated_year_destroys_every_expired_day_and_proves_it() {
    let start = Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap();
    let world = World::new(start);
    let first_day = world.today();
    let mut backup: Option<(PathBuf, Vec<u8>)> = None;
    let mut deleted_rows = 0;
    let mut deleted_days = 0;

    for day in 0..DAYS {
        world.vault.clock.set(start + chrono::Duration::days(day));
        assert_eq!(world.ingest_today("r"), RECORDS_PER_DAY);
        if day == 0 {
            // A copy of the first day's file, as a backup or a disk would keep.
            let file = day_files(&world.data(), first_day).remove(0);
            backup = Some((file.clone(), std::fs::read(&file).unwrap()));
        }
        let report = world.sweeper.run(SweepMode::Delete).unwrap();
        deleted_days += report.days.len();
        deleted_rows += report.days.iter().map(|d| d.rows).sum::<u64>();
        // Never more than one day expires per simulated day, and a clock
        // moving a day at a time is never distrusted.
        assert!(report.days.len() <= 1);
        assert_eq!(world.clock_suspect(), Some(0.0));
    }

    let today = world.today();
    let live = read::list_days(&world.data()).unwrap();
    assert_eq!(live.len(), 366, "the window holds today and the 365 days before");
    assert!(live.iter().all(|d| !is_expired(*d, today, 365)));
    assert_eq!(deleted_days as i64, DAYS - 366);
    assert_eq!(deleted_rows as usize, (DAYS as usize - 366) * RECORDS_PER_DAY);

    // Expired days: no files, no directory, no key, here or after a reopen.
    let reopened = KeyStore::open(&world.vault.keys_dir(), None).unwrap();
    for n in 0..(DAYS - 366) {
        let day = PartitionDate::from_days_since_epoch(first_day.days_since_epoch() + n).unwrap();
        assert!(day_files(&world.data(), day).is_empty());
        assert!(!layout::day_dir(&world.data(), day).exists());
        assert!(reopened.existing_day_key(day).unwrap().is_none(), "{day} key destroyed");
        assert!(reopened.is_destroyed(day));
    }

    // The backed-up file of the first day can no longer be unsealed: its key
    // is gone, and no other day's key opens it.
    let (original, bytes) = backup.unwrap();
    let restored = world.vault.root.path().join("restored.parquet");
    std::fs::write(&restored, &bytes).unwrap();
    assert!(read::read_file(&restored, None, &["calling_number_sealed"]).is_err());
    let other_key = reopened.existing_day_key(*live.first().unwrap()).unwrap().unwrap();
    assert!(read::read_file(&restored, Some(&other_key), &["calling_number_sealed"]).is_err());
    // Its clear columns stay readable from the copy, and hold no identifier.
    assert!(read::read_file(&restored, None, &["calling_number_token"]).is_ok());

    // A record for a destroyed day is refused, never re-creating the day.
    let late = Input {
        encoding: Encoding::Json,
        payload: format!(r#"{{"record_id":"late","service":"sms","start_time":"{first_day}T10:00:00Z","calling_number":"+4520000001"}}"#)
            .into_bytes().into(),
    };
    let outcome = world.vault.processor.process(&[late]).unwrap();
    assert_eq!(outcome.refused[0].1.reason, RefuseReason::Expired);
    assert!(!layout::day_dir(&world.data(), first_day).exists());

    // The evidence holds.
    assert_eq!(world.verify(), vec![]);
    let trail = std::fs::read_to_string(world.vault.state().join(AUDIT_FILE)).unwrap();
    assert_eq!(trail.lines().filter(|l| l.contains("\"action\":\"day_deleted\"")).count(), DAYS as usize - 366);

    // Tampering: a file put back, a key put back, an audit line edited.
    let expired_dir = original.parent().unwrap();
    std::fs::create_dir_all(expired_dir).unwrap();
    std::fs::write(&original, &bytes).unwrap();
    assert!(world.verify().contains(&Violation::ExpiredDayHasFiles(first_day)));
    std::fs::remove_file(&original).unwrap();
    std::fs::remove_dir(expired_dir).unwrap();
    assert!(!world.verify().iter().any(|v| matches!(v, Violation::ExpiredDayHasFiles(_))));

    let live_key = world.vault.keys_dir().join("day").join(format!("{}.key", live[0]));
    let planted = world.vault.keys_dir().join("day").join(format!("{first_day}.key"));
    std::fs::copy(&live_key, &planted).unwrap();
    assert!(world.verify().contains(&Violation::ExpiredDayHasKey(first_day)));
    std::fs::remove_file(&planted).unwrap();

    let path = world.vault.state().join(AUDIT_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"rows\":40", "\"rows\":4", 1)).unwrap();
    assert!(world.verify().iter().any(|v| matches!(v, Violation::AuditTrailDamaged(_))));
}

#[test]
fn a_sweep_killed_mid_deletion_is_finished_by_the_next() {
    for point in [
        CrashPoint::AfterTombstone,
        CrashPoint::AfterKeyDestroyed,
        CrashPoint::AfterFirstFileDeleted,
        CrashPoint::BeforeAudit,
    ] {
        let start = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        let mut world = World::new(start);
        let first_day = world.today();
        world.ingest_today("a");
        world.ingest_today("b");
        assert_eq!(day_files(&world.data(), first_day).len(), 2);
        world.jump_to(start + chrono::Duration::days(366));

        world.sweeper.crash_at(Some(point));
        assert!(world.sweeper.run(SweepMode::Delete).is_err(), "{point:?}");
        // Interrupted: the day is on its way out, and verify says so.
        assert!(!world.verify().is_empty(), "{point:?}: an interrupted deletion is a violation");

        world.sweeper.crash_at(None);
        let report = world.sweeper.run(SweepMode::Delete).unwrap();
        assert_eq!(report.days.len(), 1, "{point:?}");
        assert_eq!(report.days[0].rows, 2 * RECORDS_PER_DAY as u64, "{point:?}: the evidence counted before the crash");
        assert!(report.days[0].key_id.is_some(), "{point:?}");
        assert_eq!(world.verify(), vec![], "{point:?}");
        assert!(!layout::day_dir(&world.data(), first_day).exists());
        assert!(world.vault.keys.existing_day_key(first_day).unwrap().is_none());
        let trail = std::fs::read_to_string(world.vault.state().join(AUDIT_FILE)).unwrap();
        assert_eq!(trail.lines().filter(|l| l.contains("day_deleted")).count(), 1, "{point:?}: audited once");

        // A second sweep finds nothing more to do.
        assert!(world.sweeper.run(SweepMode::Delete).unwrap().days.is_empty());
    }
}

#[test]
fn a_preview_of_a_future_date_destroys_nothing_and_ends_no_order() {
    let start = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
    let world = World::new(start);
    world.ingest_today("a");
    let day = world.today();
    let later = |n: i64| PartitionDate::from_days_since_epoch(day.days_since_epoch() + n).unwrap();
    let order =
        world.place(Freeze { reference: "QF-P", target: "msisdn:+4520000001", days: day..=day, until: later(5) });

    // A date a year and more ahead: the day would go, and the order would
    // have ended, but a preview does neither.
    let report = world.sweeper.run(SweepMode::DryRun { as_of: Some(later(366)) }).unwrap();
    assert_eq!(report.days.len(), 1);
    assert_eq!(report.days[0].rows, RECORDS_PER_DAY as u64);
    assert_eq!(day_files(&world.data(), day).len(), 1, "nothing deleted");
    assert!(world.vault.keys.existing_day_key(day).unwrap().is_some());
    assert_eq!(world.order_status(&order.id), OrderStatus::Active);
    assert!(world.vault.keys.order_key(&order.id).unwrap().is_some());
    let today_report = world.sweeper.run(SweepMode::DryRun { as_of: None }).unwrap();
    assert!(today_report.days.is_empty(), "nothing is expired today");

    // The only deletion there is measures at the clock's today: nothing
    // live goes, and the order holds.
    let deleted = world.sweeper.run(SweepMode::Delete).unwrap();
    assert_eq!((deleted.as_of, deleted.days.len()), (day, 0));
    assert_eq!(day_files(&world.data(), day).len(), 1);
    assert_eq!(world.order_status(&order.id), OrderStatus::Active);
    assert!(!world.actions().iter().any(|a| a == "day_deleted" || a == "order_lifted"));
    assert_eq!(world.verify(), vec![]);
}

#[test]
fn a_clock_jumping_a_year_ahead_destroys_nothing_until_an_operator_confirms_it() {
    let start = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
    let world = World::new(start);
    let first = world.today();
    let date_of = |n: i64| PartitionDate::from_days_since_epoch(first.days_since_epoch() + n).unwrap();
    for n in 0..3 {
        world.vault.clock.set(start + chrono::Duration::days(n));
        world.ingest_today("r");
        world.sweeper.run(SweepMode::Delete).unwrap();
    }
    let last_sweep = world.vault.now();
    let order = world.place(Freeze {
        reference: "QF-J",
        target: "msisdn:+4520000001",
        days: date_of(0)..=date_of(2),
        until: date_of(30),
    });

    // The clock jumps a year ahead: every sweep is refused, and refused
    // again, until someone vouches for the clock.
    let jumped = start + chrono::Duration::days(2 + 366);
    world.vault.clock.set(jumped);
    for _ in 0..2 {
        let error = world.sweeper.run(SweepMode::Delete).unwrap_err();
        let RetentionError::ClockSuspect { suspicion, reading } = &error else { panic!("{error}") };
        assert_eq!(*suspicion, ClockSuspicion::JumpedAhead);
        assert_eq!((reading.now, reading.last_sweep, reading.newest_day), (jumped, Some(last_sweep), Some(date_of(2))));
        assert!(!error.is_fatal(), "the service keeps running and retries");
        let message = error.to_string();
        assert!(message.contains("2026-06-04T12:00:00Z") && message.contains("confirm-clock"), "{message}");
        assert_eq!(world.clock_suspect(), Some(1.0));
    }
    for n in 0..3 {
        assert_eq!(day_files(&world.data(), date_of(n)).len(), 1, "day {n} intact");
        assert!(world.vault.keys.existing_day_key(date_of(n)).unwrap().is_some());
    }
    assert_eq!(world.order_status(&order.id), OrderStatus::Active, "no order ended");
    assert!(world.vault.keys.order_key(&order.id).unwrap().is_some());
    assert!(!world.actions().iter().any(|a| a == "day_deleted" || a == "order_lifted"));

    // The operator confirms the clock: audited first, then the sweep
    // destroys as of the new today and ends the order.
    let before = world.sweeper.confirm_clock("operator").unwrap();
    assert_eq!((before.last_sweep, before.newest_day), (Some(last_sweep), Some(date_of(2))));
    let report = world.sweeper.run(SweepMode::Delete).unwrap();
    assert_eq!(report.days.iter().map(|d| d.day).collect::<Vec<_>>(), vec![date_of(0), date_of(1), date_of(2)]);
    assert_eq!(world.order_status(&order.id), OrderStatus::Lifted);
    assert_eq!(world.clock_suspect(), Some(0.0));
    let actions = world.actions();
    let confirmed = actions.iter().position(|a| a == "clock_confirmed").unwrap();
    let first_deletion = actions.iter().position(|a| a == "day_deleted").unwrap();
    let lifted = actions.iter().position(|a| a == "order_lifted").unwrap();
    assert!(confirmed < first_deletion && confirmed < lifted, "{actions:?}");
    assert_eq!(world.verify(), vec![]);
}

#[test]
fn a_clock_going_back_before_the_last_sweep_is_refused() {
    let start = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
    let world = World::new(start);
    let first = world.today();
    world.ingest_today("r");
    world.sweeper.run(SweepMode::Delete).unwrap();

    // Within the tolerance (a stepped clock, an interleaved sweep): fine.
    world.vault.clock.set(start - chrono::Duration::minutes(30));
    world.sweeper.run(SweepMode::Delete).unwrap();

    // Two days back: refused, and still refused after the tolerated step,
    // which did not drag the reference back.
    world.vault.clock.set(start - chrono::Duration::days(2));
    let error = world.sweeper.run(SweepMode::Delete).unwrap_err();
    assert!(matches!(error, RetentionError::ClockSuspect { suspicion: ClockSuspicion::WentBack, .. }), "{error}");
    assert!(!error.is_fatal());
    assert_eq!(world.clock_suspect(), Some(1.0));
    world.vault.clock.set(start - chrono::Duration::minutes(90));
    assert!(world.sweeper.run(SweepMode::Delete).is_err(), "the reference stayed at the latest sweep");

    // The clock is put right: the sweep proceeds with no confirmation.
    world.vault.clock.set(start + chrono::Duration::hours(1));
    world.sweeper.run(SweepMode::Delete).unwrap();
    assert_eq!(world.clock_suspect(), Some(0.0));

    // Or the operator vouches for the earlier time, and it becomes the
    // reference.
    world.vault.clock.set(start - chrono::Duration::days(2));
    assert!(world.sweeper.run(SweepMode::Delete).is_err());
    world.sweeper.confirm_clock("operator").unwrap();
    world.sweeper.run(SweepMode::Delete).unwrap();
    assert_eq!(day_files(&world.data(), first).len(), 1, "a clock going back destroys nothing more");
    assert_eq!(world.actions().iter().filter(|a| *a == "clock_confirmed").count(), 1);
}

#[test]
fn daily_sweeps_without_data_and_a_fresh_install_trust_the_clock() {
    let start = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
    let world = World::new(start);
    // A fresh install: no sweep on record, no data. The sweep proceeds and
    // becomes the reference.
    world.sweeper.run(SweepMode::Delete).unwrap();
    assert!(world.vault.keys.retention_clock_path().exists());
    // The mediation falls silent for a year; the service keeps sweeping
    // every day, and every sweep vouches for the next.
    for day in 1..=400 {
        world.vault.clock.set(start + chrono::Duration::days(day));
        world.sweeper.run(SweepMode::Delete).unwrap();
    }
    assert_eq!(world.clock_suspect(), Some(0.0));
    assert!(!world.actions().iter().any(|a| a == "clock_confirmed"));
}

#[test]
fn preserved_records_survive_their_day_and_die_with_their_order() {
    use arrow_array::cast::AsArray;
    let start = Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap();
    let world = World::new(start);
    let day = |n: i64| PartitionDate::from_days_since_epoch(world.today().days_since_epoch() + n).unwrap();
    let first = world.today();
    let at = |n: i64| start + chrono::Duration::days(n);
    for n in 0..10 {
        world.vault.clock.set(at(n));
        world.ingest_today("r");
    }
    let date_of = |n: i64| PartitionDate::from_days_since_epoch(first.days_since_epoch() + n).unwrap();

    // Day 10: an authority orders the records of one number on days 2 to 4
    // preserved until day 380.
    // The window is days 2 to 4, whole days.
    let place = |reference: &str, until: i64| {
        world.place(Freeze {
            reference,
            target: "msisdn:+4520000005",
            days: date_of(2)..=date_of(4),
            until: date_of(until),
        })
    };
    let order = place("QF-1", 380);
    let other = place("QF-2", 500);
    let _ = day(0);

    // Day 370: days 0 to 4 are expired and destroyed; the order's records
    // of days 2 to 4 were copied first.
    world.jump_to(at(370));
    let report = world.sweeper.run(SweepMode::Delete).unwrap();
    assert_eq!(report.days.iter().map(|d| d.day).collect::<Vec<_>>(), (0..5).map(date_of).collect::<Vec<_>>());
    let area = layout::order_dir(&world.data(), &order.id);
    assert_eq!(read::list_days(&area).unwrap(), vec![date_of(2), date_of(3), date_of(4)]);
    let mut preserved = Vec::new();
    for d in read::list_days(&area).unwrap() {
        let key = world.vault.keys.order_key(&order.id).unwrap().unwrap().for_day(d);
        for file in read::list_files(&area, d).unwrap() {
            for batch in
                read::read_file(&file, Some(&key), &["record_id", "calling_number_sealed", "seal_key_id"]).unwrap()
            {
                for row in 0..batch.num_rows() {
                    preserved.push((
                        batch.column(0).as_string::<i32>().value(row).to_string(),
                        batch.column(1).as_string::<i32>().value(row).to_string(),
                        batch.column(2).as_string::<i32>().value(row).to_string(),
                    ));
                }
            }
        }
    }
    preserved.sort();
    let expected: Vec<String> = (2..5).map(|n| format!("r-{}-5", date_of(n))).collect();
    assert_eq!(
        preserved.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
        expected,
        "exactly the targets' records in the window"
    );
    assert!(preserved.iter().all(|p| p.1 == "+4520000005" && p.2 == format!("order-{}", order.id)));
    // The day itself is gone all the same.
    assert!(world.vault.keys.existing_day_key(date_of(3)).unwrap().is_none());
    assert_eq!(world.verify(), vec![]);

    // Day 381: the first order has ended: its key and copies are destroyed.
    world.jump_to(at(381));
    world.sweeper.run(SweepMode::Delete).unwrap();
    assert!(!area.exists());
    assert!(world.vault.keys.order_key(&order.id).unwrap().is_none());
    assert!(layout::order_dir(&world.data(), &other.id).exists(), "the other order still holds");
    // Lifting the other order by hand destroys it at once.
    let files = world.orders.lift(&other.id, "lifted", "test", world.vault.now()).unwrap();
    assert_eq!(files, 3);
    assert!(!layout::order_dir(&world.data(), &other.id).exists());
    assert_eq!(world.verify(), vec![]);
    let trail = std::fs::read_to_string(world.vault.state().join(AUDIT_FILE)).unwrap();
    assert_eq!(trail.lines().filter(|l| l.contains("\"action\":\"records_preserved\"")).count(), 6);
    assert_eq!(trail.lines().filter(|l| l.contains("\"action\":\"order_lifted\"")).count(), 2);
    assert!(!trail.contains("4520000005"), "the audit trail holds no raw identifier");
}

#[test]
fn preservation_follows_a_day_whose_keys_are_made_after_the_order() {
    let start = Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap();
    let world = World::new(start);
    let today = world.today();

    // The order is placed before the day has a key...
    let until = PartitionDate::from_days_since_epoch(today.days_since_epoch() + 400).unwrap();
    let order = world.place(Freeze { reference: "QF-R", target: "msisdn:+4520000007", days: today..=today, until });
    assert!(world.vault.keys.existing_day_key(today).unwrap().is_none());

    // ...then another process writes the day, under the day's new token key.
    let keys = Arc::new(KeyStore::open(&world.vault.keys_dir(), None).unwrap());
    let inputs: Vec<Input> = (0..10)
        .map(|i| Input {
            encoding: Encoding::Json,
            payload: format!(r#"{{"record_id":"k-{i}","service":"sms","start_time":"{today}T08:00:0{i}Z","calling_number":"+452000000{i}"}}"#)
                .into_bytes().into(),
        })
        .collect();
    assert_eq!(world.vault.processor_over(Arc::clone(&keys)).process(&inputs).unwrap().written, 10);

    // A sweeper of the rotated keystore preserves the record before the day goes.
    let sweeper = Sweeper::new(
        &world.data(),
        Arc::clone(&keys),
        Arc::clone(&world.audit),
        world.vault.clock.clone() as Arc<dyn Clock>,
        RetentionConfig::default(),
    )
    .with_orders(Arc::clone(&world.orders), ParquetConfig::default());
    world.jump_to(start + chrono::Duration::days(367));
    let report = sweeper.run(SweepMode::Delete).unwrap();
    assert_eq!(report.days.len(), 1);
    let area = layout::order_dir(&world.data(), &order.id);
    let key = keys.order_key(&order.id).unwrap().unwrap().for_day(today);
    let rows: usize = read::list_files(&area, today)
        .unwrap()
        .iter()
        .flat_map(|f| read::read_file(f, Some(&key), &["record_id"]).unwrap())
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 1, "the target's record, tokenised under the day's key, was preserved");
    // The copy is tokenised under the order's own token key: the day's is gone.
    let copies = read::list_files(&area, today).unwrap();
    let ids: Vec<String> = read::read_file(&copies[0], Some(&key), &["token_key_id"])
        .unwrap()
        .iter()
        .map(|b| arrow_array::cast::AsArray::as_string::<i32>(b.column(0)).value(0).to_string())
        .collect();
    assert_eq!(ids, vec![key.token.id.to_string()]);
    assert!(key.token.id.as_str().starts_with("tok-order-"), "{}", key.token.id);
}

#[test]
fn lookups_forget_destroyed_days_search_their_preserved_copies_and_retention_removes_the_indexes() {
    use cdrvault::access::lookup::{LookupEngine, PreservedScope, Query};
    use cdrvault::model::{Category, IdentifierKind, TimestampMicros};
    let start = Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap();
    let world = World::new(start);
    let first = world.today();
    let at = |n: i64| start + chrono::Duration::days(n);
    let date_of = |n: i64| PartitionDate::from_days_since_epoch(first.days_since_epoch() + n).unwrap();
    for n in 0..10 {
        world.vault.clock.set(at(n));
        world.ingest_today("r");
    }
    let order = world.place(Freeze {
        reference: "QF-9",
        target: "msisdn:+4520000005",
        days: date_of(2)..=date_of(4),
        until: date_of(400),
    });
    let index_files = |dir: &Path| -> usize {
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().filter(|e| layout::is_index(&e.file_name().to_string_lossy())).count())
            .unwrap_or(0)
    };
    for n in 0..10 {
        assert_eq!(index_files(&layout::day_dir(&world.data(), date_of(n))), 1, "day {n} has its index");
    }

    // Every record has the same called number: a lookup over the ten days
    // finds all 400, through the indexes, and caches the footers. The
    // order's copies may answer for its own target (the query's second).
    let engine =
        LookupEngine::new(world.data(), Arc::clone(&world.vault.keys)).with_metrics(Arc::clone(&world.metrics));
    let query = Query {
        targets: vec![(IdentifierKind::Msisdn, "+4530000001".into()), (IdentifierKind::Msisdn, "+4520000005".into())],
        from: TimestampMicros::from_datetime(date_of(0).start().to_datetime().unwrap()),
        to: TimestampMicros(date_of(10).start().0 - 1),
        categories: [Category::Traffic].into(),
        preserved: vec![PreservedScope { order: order.id.clone(), targets: vec![1] }],
    };
    let (found, stats) = engine.find(&query).unwrap();
    assert_eq!(found.len(), 10 * RECORDS_PER_DAY);
    assert_eq!((stats.files_indexed, stats.token_chunks_scanned), (10, 0));
    assert_eq!(engine.cached_files(), 10);
    let later_days = |from: i64| Query { from: TimestampMicros(date_of(from).start().0), ..query.clone() };

    // Day 370: days 0 to 4 are destroyed, their indexes with their files;
    // the order's copies (days 2 to 4) have indexes of their own.
    world.jump_to(at(370));
    world.sweeper.run(SweepMode::Delete).unwrap();
    for n in 0..5 {
        let dir = layout::day_dir(&world.data(), date_of(n));
        assert!(!dir.exists(), "day {n}: no data file, no index, no directory");
    }
    let area = layout::order_dir(&world.data(), &order.id);
    for n in 2..5 {
        assert_eq!(index_files(&layout::day_dir(&area, date_of(n))), 1, "preserved day {n} has its index");
    }
    assert_eq!(world.verify(), vec![]);

    // The service's cache sweep forgets them without waiting for a query:
    // their cached footers held the parquet crate's copy of the destroyed
    // keys.
    assert_eq!(engine.forget_destroyed().unwrap(), 5);
    assert_eq!(engine.cached_files(), 5, "days 0 to 4 forgotten");
    let (found, _) = engine.find(&later_days(5)).unwrap();
    assert_eq!(found.len(), 5 * RECORDS_PER_DAY);
    assert_eq!(engine.cached_files(), 5);

    // The same engine no longer serves the destroyed days; it finds their
    // preserved copies (the target's records of days 2 to 4 involve the
    // called number too), marked with the order.
    let (found, stats) = engine.find(&query).unwrap();
    assert_eq!(stats.days_unavailable, 5);
    assert_eq!(stats.preserved_files, 3);
    let preserved: Vec<_> = found.iter().filter(|r| r.preserved_under.is_some()).collect();
    assert_eq!(preserved.len(), 3);
    assert!(preserved.iter().all(|r| r.preserved_under.as_deref() == Some(order.id.as_str())));
    assert_eq!(
        preserved.iter().map(|r| r.day).collect::<Vec<_>>(),
        vec![date_of(2), date_of(3), date_of(4)],
        "one record of the target per preserved day"
    );
    assert_eq!(found.len(), 5 * RECORDS_PER_DAY + 3);
    // Without the order in its scope, a query never sees the copies.
    let (found, stats) = engine.find(&Query { preserved: vec![], ..query.clone() }).unwrap();
    assert_eq!((stats.preserved_files, found.len()), (0, 5 * RECORDS_PER_DAY));

    // Another process destroys day 5 (tombstone, then key) while this
    // process still holds the day's key in memory: the keystore drops its
    // copy at the next use, and the engine stops serving the day even though
    // its files are still there.
    let other = KeyStore::open(&world.vault.keys_dir(), None).unwrap();
    assert!(world.vault.keys.cached_days().contains(&date_of(5)), "this process holds day 5's key");
    other.write_tombstone(date_of(5), b"{}").unwrap();
    other.destroy_day_key(date_of(5)).unwrap();
    assert!(world.vault.keys.existing_day_key(date_of(5)).unwrap().is_none(), "no key for a destroyed day");
    assert!(!world.vault.keys.cached_days().contains(&date_of(5)), "the copy is dropped");
    assert!(!day_files(&world.data(), date_of(5)).is_empty());
    let (found, stats) = engine.find(&query).unwrap();
    assert_eq!(stats.days_unavailable, 6);
    assert!(found.iter().all(|r| r.day != date_of(5)));
    assert_eq!(found.len(), 4 * RECORDS_PER_DAY + 3);
    // A query that does not touch the destroyed day forgets it as well.
    engine.find(&later_days(6)).unwrap();
    assert_eq!(engine.cached_files(), 4 + 3, "day 5 forgotten once its key is gone; the order's copies kept");

    // Lifting the order: its copies are gone from the answers.
    world.orders.lift(&order.id, "lifted", "test", world.vault.now()).unwrap();
    let (found, stats) = engine.find(&query).unwrap();
    assert_eq!(stats.preserved_files, 0);
    assert_eq!(found.len(), 4 * RECORDS_PER_DAY);
    assert_eq!(engine.cached_files(), 4, "the lifted order's copies forgotten");
    // A day destroyed by another process that nobody asks for again: the
    // service's minute job drops this process's copy of its key.
    assert!(world.vault.keys.cached_days().contains(&date_of(6)));
    other.write_tombstone(date_of(6), b"{}").unwrap();
    other.destroy_day_key(date_of(6)).unwrap();
    assert_eq!(engine.key_cache_report().destroyed, vec![date_of(6)], "the report sees the copy");
    cdrvault::ops::periodic::Job::run_once(&engine).unwrap();
    assert!(!world.vault.keys.cached_days().contains(&date_of(6)), "no copy of a destroyed key is kept");
    let metrics = world.metrics.encode();
    assert_eq!(common::metric(&metrics, "cdrvault_keys_cached_destroyed"), Some(0.0));
    assert_eq!(common::metric(&metrics, "cdrvault_keys_cached_day_keys"), Some(3.0), "days 7 to 9 stay cached");
}

#[test]
fn an_fsync_failure_in_any_step_of_a_sweep_stops_the_service() {
    use cdrvault::audit::AuditError;
    use cdrvault::keys::KeyError;
    use cdrvault::lifecycle::orders::OrderError;
    use cdrvault::lifecycle::preserve::PreserveError;
    use cdrvault::lifecycle::retention::RetentionError;
    use cdrvault::ops::durable::DurableError;
    use cdrvault::ops::periodic::Job;

    let fsync = || DurableError::Fsync { path: "day.key".into(), source: std::io::Error::other("EIO") };
    let failed_fsyncs = [
        RetentionError::Durable(fsync()),
        RetentionError::Keys(KeyError::Durable(fsync())),
        RetentionError::Audit(AuditError::Durable(fsync())),
        RetentionError::Audit(AuditError::Keys(KeyError::Durable(fsync()))),
        RetentionError::Preserve(PreserveError::Durable(fsync())),
        RetentionError::Preserve(PreserveError::Keys(KeyError::Durable(fsync()))),
        RetentionError::Order(OrderError::Audit(AuditError::Durable(fsync()))),
        RetentionError::Order(OrderError::Preserve(PreserveError::Durable(fsync()))),
    ];
    for error in &failed_fsyncs {
        assert!(<Sweeper as Job>::is_fatal(error), "{error:?} must stop the service, not be retried");
    }
    let other = DurableError::io("read", std::path::Path::new("day.key"), std::io::Error::other("EACCES"));
    assert!(!<Sweeper as Job>::is_fatal(&RetentionError::Audit(AuditError::Durable(other))), "retried");
}

#[test]
fn a_record_key_is_created_once_and_an_existing_one_is_never_replaced() {
    let start = Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap();
    let world = World::new(start);
    let today = world.today();
    let until = PartitionDate::from_days_since_epoch(today.days_since_epoch() + 30).unwrap();
    let order = world.place(Freeze { reference: "QF-K", target: "msisdn:+4520000008", days: today..=today, until });
    let keys = &world.vault.keys;
    let key_file = world.vault.keys_dir().join("order").join(format!("{}.key", order.id));
    let wrapped = std::fs::read(&key_file).unwrap();

    // Creating the key of an order that drew the same id fails, and the
    // order's key still unseals the target it sealed.
    let error = keys.create_order_key(&order.id).unwrap_err();
    assert!(error.to_string().contains("exists already"), "{error}");
    assert_eq!(std::fs::read(&key_file).unwrap(), wrapped, "the key file is the original");
    let key = keys.order_key(&order.id).unwrap().unwrap();
    let target = cdrvault::keys::open_value(&key.secret, order.id.as_bytes(), &order.targets[0].sealed);
    assert_eq!(target.as_deref(), Some("+4520000008"));

    // The same holds for the keys of warrants and results.
    let rng = ring::rand::SystemRandom::new();
    for scope in [RecordKeyScope::Warrant, RecordKeyScope::Result] {
        let first = keys.create_record_key(scope, "r-0001").unwrap();
        let sealed = cdrvault::keys::seal_value(&first.secret, &rng, b"r-0001", "+4520000009").unwrap();
        let again = keys.create_record_key(scope, "r-0001").unwrap_err();
        assert!(again.to_string().contains("exists already"), "{scope:?}: {again}");
        let kept = keys.record_key(scope, "r-0001").unwrap().unwrap();
        let opened = cdrvault::keys::open_value(&kept.secret, b"r-0001", &sealed);
        assert_eq!(opened.as_deref(), Some("+4520000009"), "{scope:?}");
    }
    let leftovers: Vec<PathBuf> = common::files_below(&world.vault.keys_dir())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Order ids carry 64 random bits.
    let random = order.id.strip_prefix("po-").unwrap();
    assert!(random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit()), "{}", order.id);
}
