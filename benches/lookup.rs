//! Lookup latency: one MSISDN over a window of days, warm, against the
//! files the pipeline writes; and the same question for DuckDB, printed as
//! a script to run on the same files (`benches/lookup_duckdb.py`).
//!
//! `cargo bench --bench lookup` (env LOOKUP_DAYS, default 30;
//! LOOKUP_PER_DAY, default 100000; LOOKUP_DIR to keep the data).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};

use cdrvault::clock::{Clock, ManualClock};
use cdrvault::decode::Encoding;
use cdrvault::keys::KeyStore;
use cdrvault::lookup::{Query, find};
use cdrvault::models::{Category, IdentifierKind, TimestampMicros};
use cdrvault::pipeline::{Input, Processor, ProcessorConfig};
use cdrvault::pseudonymise::Tokeniser;
use cdrvault::synth::{Generator, SynthConfig};
use cdrvault::write::{ParquetConfig, ParquetWriter};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
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
        KeyStore::init(&keys_dir, None).unwrap();
        let keys = Arc::new(KeyStore::open(&keys_dir, None).unwrap());
        let clock = Arc::new(ManualClock::new(until));
        let processor = Processor::new(
            ParquetWriter::new(&data, ParquetConfig::default()),
            Arc::clone(&keys),
            clock.clone() as Arc<dyn Clock>,
            ProcessorConfig { max_clock_skew: Duration::from_secs(60), decode_threads: 2, retention_days: Some(365) },
        );
        let filling = Instant::now();
        for day in 0..days {
            let day_end = until - chrono::Duration::days(day);
            let mut generator =
                Generator::new(SynthConfig { seed: 1, subscribers, days: 1, until: day_end, invalid_ratio: 0.0 });
            let inputs: Vec<Input> = (0..per_day)
                .map(|_| Input { encoding: Encoding::Json, payload: generator.next_record().to_json() })
                .collect();
            processor.process(&inputs).unwrap();
        }
        println!(
            "wrote {days} days x {per_day} records in {:.1}s into {}",
            filling.elapsed().as_secs_f64(),
            data.display()
        );
    }

    let keys = KeyStore::open(&keys_dir, None).unwrap();
    let population = Generator::new(SynthConfig { seed: 1, subscribers, days: 1, until, invalid_ratio: 0.0 });
    let tokeniser = Tokeniser::new(keys.active_token_key());
    // Subscribers from the busy fifth and from the rest.
    let picks: Vec<String> = (0..20)
        .map(|i| population.subscribers()[if i % 2 == 0 { i * 7 } else { 30_000 + i * 997 }].msisdn.clone())
        .collect();
    let from = until - chrono::Duration::days(days);
    let mut times = Vec::new();
    let mut rows = 0;
    let mut script = String::from("# token, first day, last day\n");
    for (round, number) in picks.iter().cycle().take(picks.len() * 3).enumerate() {
        let query = Query {
            targets: vec![(IdentifierKind::Msisdn, number.clone())],
            from: TimestampMicros::from_datetime(from),
            to: TimestampMicros::from_datetime(until),
            categories: [Category::Traffic, Category::Location].into(),
        };
        let started = Instant::now();
        let (found, stats) = find(&data, &keys, &query).unwrap();
        let elapsed = started.elapsed();
        if round >= picks.len() {
            // Warm rounds only.
            times.push(elapsed);
            rows += found.len();
        }
        if round < picks.len() {
            let token = tokeniser.token(IdentifierKind::Msisdn, number.as_bytes()).0;
            script.push_str(&format!("{token} {} {}\n", from.format("%Y-%m-%d"), until.format("%Y-%m-%d")));
            if round == 0 {
                println!("first query: {} records, {stats:?}", found.len());
            }
        }
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0;
    println!(
        "lookup of one MSISDN over {days} days x {per_day}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} warm queries, {:.1} records each)",
        pct(0.5),
        pct(0.99),
        pct(1.0),
        times.len(),
        rows as f64 / times.len() as f64
    );
    std::fs::write(dir.join("queries.txt"), script).unwrap();
    println!("queries for DuckDB: {}", dir.join("queries.txt").display());
}
