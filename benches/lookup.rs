//! Lookup latency, warm, against the files the pipeline writes:
//!
//! - one MSISDN over a window of days (20 subscribers, busy and quiet,
//!   three rounds; the first round warms the cache and is not counted);
//! - a cell dump: one cell over one hour of one day;
//! - the same MSISDN question asked of DuckDB on the same files, in the same
//!   run (`benches/lookup_duckdb.py`, token columns only, hive partition
//!   pruning), and the ratio of the two.
//!
//! `cargo bench --bench lookup` (env LOOKUP_DAYS, default 30;
//! LOOKUP_PER_DAY, default 100000; LOOKUP_DIR to keep the data;
//! LOOKUP_THREADS to cap the engine's threads; LOOKUP_COMPACT=1 to compact
//! every day first, as `cdrvault compact` does to closed days;
//! LOOKUP_PAGE_ROWS to change `parquet.lookup_page_rows` of new files;
//! LOOKUP_ROUNDS, default 3, the rounds over the 20 subscribers, the first
//! one cold: more rounds for a profile of warm queries).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};

use cdrvault::access::lookup::{LookupEngine, LookupStats, Query};
use cdrvault::ingest::decode::Encoding;
use cdrvault::ingest::process::{Input, Processor, ProcessorConfig};
use cdrvault::keys::KeyStore;
use cdrvault::model::{Category, IdentifierKind, PartitionDate, TimestampMicros};
use cdrvault::ops::clock::{Clock, ManualClock};
use cdrvault::privacy::token::Tokeniser;
use cdrvault::storage::config::ParquetConfig;
use cdrvault::storage::write::ParquetWriter;
use cdrvault::tools::synth::{Generator, SynthConfig};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentiles(mut times: Vec<Duration>) -> (f64, f64, f64) {
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0;
    (pct(0.5), pct(0.99), pct(1.0))
}

fn parquet_config() -> ParquetConfig {
    let mut config = ParquetConfig::default();
    config.lookup_page_rows = env("LOOKUP_PAGE_ROWS", config.lookup_page_rows);
    config
}

fn fill(data: &Path, keys_dir: &Path, days: i64, per_day: usize, subscribers: usize, until: chrono::DateTime<Utc>) {
    KeyStore::init(keys_dir, None).unwrap();
    let keys = Arc::new(KeyStore::open(keys_dir, None).unwrap());
    let clock = Arc::new(ManualClock::new(until));
    let processor = Processor::new(
        ParquetWriter::new(data, parquet_config()),
        Arc::clone(&keys),
        clock.clone() as Arc<dyn Clock>,
        ProcessorConfig { max_clock_skew: Duration::from_secs(60), decode_threads: 2, retention_days: Some(400) },
    );
    let filling = Instant::now();
    for day in 0..days {
        let day_end = until - chrono::Duration::days(day);
        let mut generator =
            Generator::new(SynthConfig { seed: 1, subscribers, days: 1, until: day_end, invalid_ratio: 0.0 });
        let inputs: Vec<Input> = (0..per_day)
            .map(|_| Input { encoding: Encoding::Json, payload: generator.next_record().to_json().into() })
            .collect();
        processor.process(&inputs).unwrap();
    }
    println!(
        "wrote {days} days x {per_day} records in {:.1}s into {}",
        filling.elapsed().as_secs_f64(),
        data.display()
    );
}

fn main() {
    let days = env("LOOKUP_DAYS", 30) as i64;
    let per_day = env("LOOKUP_PER_DAY", 100_000);
    let dir = std::env::var("LOOKUP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("cdrvault-lookup-bench"));
    let data = dir.join("data");
    let keys_dir = dir.join("keys");
    let until = Utc.with_ymd_and_hms(2026, 11, 24, 23, 0, 0).unwrap();
    let subscribers = 100_000;
    if !keys_dir.exists() {
        fill(&data, &keys_dir, days, per_day, subscribers, until);
    }
    if std::env::var("LOOKUP_COMPACT").is_ok_and(|v| v == "1") {
        let keys = KeyStore::open(&keys_dir, None).unwrap();
        let writer = ParquetWriter::new(&data, parquet_config());
        let started = Instant::now();
        let (mut compacted, mut files) = (0, 0);
        for day in cdrvault::storage::read::list_days(&data).unwrap() {
            let report =
                cdrvault::storage::compact::compact_day(&writer, &keys, day, until.timestamp_millis()).unwrap();
            compacted += usize::from(report.files_after < report.files_before);
            files += report.files_after;
        }
        println!("compacted {compacted} days in {:.1}s; {files} files now", started.elapsed().as_secs_f64());
    }

    let keys = Arc::new(KeyStore::open(&keys_dir, None).unwrap());
    let mut engine = LookupEngine::new(data.clone(), Arc::clone(&keys));
    if let Ok(threads) = std::env::var("LOOKUP_THREADS").map(|t| t.parse::<usize>().unwrap_or(1)) {
        engine = engine.with_threads(threads);
    }
    let mut population = Generator::new(SynthConfig { seed: 1, subscribers, days: 1, until, invalid_ratio: 0.0 });
    // Each day has its own token key: the number's token of each day.
    let day_tokenisers: Vec<(PartitionDate, Tokeniser)> = (0..=days)
        .map(|back| PartitionDate::new((until - chrono::Duration::days(back)).date_naive()))
        .filter_map(|day| Some((day, Tokeniser::new(&keys.existing_day_key(day).unwrap()?.token))))
        .collect();
    // Subscribers from the busy fifth and from the rest.
    let picks: Vec<String> = (0..20)
        .map(|i| population.subscribers()[if i % 2 == 0 { i * 7 } else { 30_000 + i * 997 }].msisdn.clone())
        .collect();
    let from = until - chrono::Duration::days(days);
    let mut times = Vec::new();
    let mut rows = 0;
    let mut totals = LookupStats::default();
    let mut script = String::from("# the number's token of each day: day:token, comma-separated\n");
    let rounds = env("LOOKUP_ROUNDS", 3).max(2);
    for (round, number) in picks.iter().cycle().take(picks.len() * rounds).enumerate() {
        let query = Query {
            targets: vec![(IdentifierKind::Msisdn, number.clone())],
            from: TimestampMicros::from_datetime(from),
            to: TimestampMicros::from_datetime(until),
            categories: [Category::Traffic, Category::Location].into(),
            preserved: vec![],
        };
        let started = Instant::now();
        let (found, stats) = engine.find(&query).unwrap();
        let elapsed = started.elapsed();
        if round >= picks.len() {
            // Warm rounds only.
            times.push(elapsed);
            rows += found.len();
            totals = stats;
        } else {
            let tokens: Vec<String> = day_tokenisers
                .iter()
                .map(|(day, t)| format!("{day}:{}", t.token(IdentifierKind::Msisdn, number.as_bytes()).0))
                .collect();
            script.push_str(&tokens.join(","));
            script.push('\n');
            if round == 0 {
                println!(
                    "first (cold) query: {} records in {:.1} ms, {stats:?}",
                    found.len(),
                    elapsed.as_secs_f64() * 1e3
                );
            }
        }
    }
    println!("last warm query: {totals:?}");
    let (p50, p99, max) = percentiles(times.clone());
    println!(
        "RESULT lookup of one MSISDN over {days} days x {per_day}: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms ({} warm queries, {:.1} records each)",
        times.len(),
        rows as f64 / times.len() as f64
    );

    // Cell dump: the cell of one of the first day's records, one hour.
    let sample = population.next_record();
    let cell = sample.cell_id_start.clone().unwrap_or_default();
    let hour_end = until - chrono::Duration::hours(2);
    let dump = Query {
        targets: vec![(IdentifierKind::Cell, cell)],
        from: TimestampMicros::from_datetime(hour_end - chrono::Duration::hours(1)),
        to: TimestampMicros::from_datetime(hour_end),
        categories: [Category::Traffic, Category::Location, Category::Device].into(),
        preserved: vec![],
    };
    let mut dump_times = Vec::new();
    let mut dump_rows = 0;
    for round in 0..6 {
        let started = Instant::now();
        let (found, stats) = engine.find(&dump).unwrap();
        let elapsed = started.elapsed();
        if round == 0 {
            println!("cell dump, cold: {} records in {:.1} ms, {stats:?}", found.len(), elapsed.as_secs_f64() * 1e3);
        } else {
            dump_times.push(elapsed);
            dump_rows = found.len();
        }
    }
    let (d50, _, dmax) = percentiles(dump_times);
    println!(
        "RESULT cell dump, one cell over one hour of one day: p50 {d50:.1} ms, max {dmax:.1} ms ({dump_rows} records)"
    );

    std::fs::write(dir.join("queries.txt"), script).unwrap();
    duckdb(&dir, p50, p99);
}

/// Runs the DuckDB script on the same files and prints the ratio.
fn duckdb(dir: &Path, p50: f64, p99: f64) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/lookup_duckdb.py");
    let output = match Command::new("python3").arg(&script).arg(dir).output() {
        Ok(output) => output,
        Err(e) => {
            println!("DuckDB comparison skipped: python3 not runnable ({e})");
            return;
        }
    };
    if !output.status.success() {
        println!(
            "DuckDB comparison skipped: the script failed (is duckdb installed?): {}",
            String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or_default()
        );
        return;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    print!("{text}");
    // The script's last line: "duckdb X: p50 A ms, p99 B ms over N warm queries".
    let figure = |label: &str| text.split(label).nth(1)?.trim_start().split(' ').next()?.parse::<f64>().ok();
    if let (Some(d50), Some(d99)) = (figure("p50"), figure("p99")) {
        println!(
            "RESULT cdrvault vs DuckDB, same files, same run: p50 {p50:.1} vs {d50:.1} ms ({:.1}x faster), p99 {p99:.1} vs {d99:.1} ms ({:.1}x)",
            d50 / p50,
            d99 / p99
        );
    }
}
