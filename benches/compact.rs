//! Compaction of one large day: time, rows per second, and the peak memory
//! of the compaction alone.
//!
//! Writes one day of `COMPACT_RECORDS` records (default 1,000,000; 100,000
//! subscribers) through the real `Processor` as `COMPACT_FILES` batch files
//! (default 10), then compacts the day into one file. The process's peak
//! resident set is reset (`/proc/self/clear_refs`) after writing, so the
//! peak printed is that of the compaction: the streaming merge should hold
//! a batch per source, one encoded row group and the index entries, not the
//! day.
//!
//! `cargo bench --bench compact` (Linux only for the memory figure).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};

use cdrvault::ingest::decode::Encoding;
use cdrvault::ingest::process::{Input, Processor, ProcessorConfig};
use cdrvault::keys::KeyStore;
use cdrvault::model::TimestampMicros;
use cdrvault::ops::clock::{Clock, ManualClock};
use cdrvault::storage::config::ParquetConfig;
use cdrvault::storage::write::ParquetWriter;
use cdrvault::tools::synth::{Generator, SynthConfig};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A field of /proc/self/status in KiB (VmHWM: peak resident set).
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let records = env("COMPACT_RECORDS", 1_000_000);
    let files = env("COMPACT_FILES", 10).max(2);
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let keys_dir = root.path().join("keys");
    KeyStore::init(&keys_dir, None).unwrap();
    let keys = Arc::new(KeyStore::open(&keys_dir, None).unwrap());
    // 23:59:59, so that a day's worth of records falls on one date.
    let until = Utc.with_ymd_and_hms(2026, 11, 24, 23, 59, 59).unwrap();
    let clock = Arc::new(ManualClock::new(until));
    let processor = Processor::new(
        ParquetWriter::new(&data, ParquetConfig::default()),
        Arc::clone(&keys),
        clock as Arc<dyn Clock>,
        ProcessorConfig { max_clock_skew: Duration::from_secs(60), decode_threads: 2, retention_days: Some(365) },
    );
    let mut generator =
        Generator::new(SynthConfig { seed: 1, subscribers: 100_000, days: 0, until, invalid_ratio: 0.0 });
    for _ in 0..files {
        let inputs: Vec<Input> = (0..records / files)
            .map(|_| Input { encoding: Encoding::Json, payload: generator.next_record().to_json().into() })
            .collect();
        processor.process(&inputs).unwrap();
    }
    drop(processor);
    let day = TimestampMicros::from_datetime(until).partition_date();
    let sources = cdrvault::storage::read::list_files(&data, day).unwrap().len();
    let resident = status_kib("VmRSS:");
    // Resets the peak resident set to the current one (Linux).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();

    let writer = ParquetWriter::new(&data, ParquetConfig::default());
    let started = Instant::now();
    let report = cdrvault::storage::compact::compact_day(&writer, &keys, day, until.timestamp_millis()).unwrap();
    let elapsed = started.elapsed();
    let peak = status_kib("VmHWM:");
    println!(
        "RESULT compaction of one day: {} rows, {} files -> {} in {:.2} s ({:.0} rows/s), {:.1} MiB -> {:.1} MiB",
        report.rows,
        report.files_before,
        report.files_after,
        elapsed.as_secs_f64(),
        report.rows as f64 / elapsed.as_secs_f64(),
        report.bytes_before as f64 / (1 << 20) as f64,
        report.bytes_after as f64 / (1 << 20) as f64,
    );
    assert_eq!(report.files_before, sources);
    match (reset, resident, peak) {
        (true, Some(resident), Some(peak)) => println!(
            "RESULT compaction peak resident set: {:.0} MiB ({:.0} MiB above the {:.0} MiB resident before it)",
            peak as f64 / 1024.0,
            peak.saturating_sub(resident) as f64 / 1024.0,
            resident as f64 / 1024.0
        ),
        _ => println!("peak memory not measured (needs Linux /proc/self/clear_refs)"),
    }
}
