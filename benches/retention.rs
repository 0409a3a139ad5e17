//! Retention sweep figures: the time to destroy 365 expired days (key
//! destruction, file deletion with fsyncs, audit entries) and the rows
//! destroyed per second, plus the cost of an hourly sweep that finds
//! nothing to do over a full year of live days.
//!
//! `cargo bench --bench retention` (env RETENTION_ROWS_PER_DAY, default 10000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};

use cdrvault::audit::AuditTrail;
use cdrvault::ingest::decode::Encoding;
use cdrvault::ingest::process::{Input, Processor, ProcessorConfig};
use cdrvault::keys::KeyStore;
use cdrvault::lifecycle::config::RetentionConfig;
use cdrvault::lifecycle::retention::{SweepMode, Sweeper};
use cdrvault::ops::clock::{Clock, ManualClock};
use cdrvault::storage::config::ParquetConfig;
use cdrvault::storage::write::ParquetWriter;

fn main() {
    let rows_per_day: usize =
        std::env::var("RETENTION_ROWS_PER_DAY").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let days = 365i64;
    let root = tempfile::tempdir().unwrap();
    KeyStore::init(&root.path().join("keys"), None).unwrap();
    let keys = Arc::new(KeyStore::open(&root.path().join("keys"), None).unwrap());
    let audit = Arc::new(AuditTrail::open(&root.path().join("state"), &keys).unwrap());
    let start = Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let processor = Processor::new(
        ParquetWriter::new(&root.path().join("data"), ParquetConfig::default()),
        Arc::clone(&keys),
        clock.clone() as Arc<dyn Clock>,
        ProcessorConfig { max_clock_skew: Duration::from_secs(300), decode_threads: 2, retention_days: Some(365) },
    );
    let sweeper = Sweeper::new(
        &root.path().join("data"),
        Arc::clone(&keys),
        audit,
        clock.clone() as Arc<dyn Clock>,
        RetentionConfig::default(),
    );

    let filling = Instant::now();
    for day in 0..days {
        clock.set(start + chrono::Duration::days(day));
        let date = clock.now().format("%Y-%m-%d").to_string();
        let inputs: Vec<Input> = (0..rows_per_day)
            .map(|i| Input {
                encoding: Encoding::Json,
                payload: format!(
                    r#"{{"record_id":"r-{day}-{i}","service":"voice","start_time":"{date}T00:{:02}:{:02}Z","calling_number":"+4520{:06}","called_number":"+4530{:06}","imsi":"2380110{:08}","cell_id_start":"238-01-{}-{}"}}"#,
                    (i / 60) % 60,
                    i % 60,
                    i % 50_000,
                    (i * 7) % 50_000,
                    i % 50_000,
                    i % 500,
                    i % 9_973
                )
                .into_bytes().into(),
            })
            .collect();
        processor.process(&inputs).unwrap();
    }
    println!("filled {days} days x {rows_per_day} rows in {:.1}s", filling.elapsed().as_secs_f64());

    // An hourly sweep over a year of live days that finds nothing to do.
    let idle = Instant::now();
    let report = sweeper.run(SweepMode::Delete).unwrap();
    assert!(report.days.is_empty());
    println!("idle sweep over {days} live days: {:.1} ms", idle.elapsed().as_secs_f64() * 1000.0);

    // Move a year and a day on: every one of the 365 days is expired.
    clock.set(start + chrono::Duration::days(days - 1 + 366));
    // A year without data or sweeps: vouched for, as an operator would.
    sweeper.confirm_clock("bench").unwrap();
    let sweep = Instant::now();
    let report = sweeper.run(SweepMode::Delete).unwrap();
    let elapsed = sweep.elapsed();
    let rows: u64 = report.days.iter().map(|d| d.rows).sum();
    assert_eq!(report.days.len() as i64, days);
    assert_eq!(rows, (days as u64) * rows_per_day as u64);
    println!(
        "sweep destroying {} days ({} files, {} rows): {:.2} s, {:.0} rows/s, {:.1} ms/day",
        report.days.len(),
        report.days.iter().map(|d| d.files).sum::<u64>(),
        rows,
        elapsed.as_secs_f64(),
        rows as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / days as f64
    );
}
