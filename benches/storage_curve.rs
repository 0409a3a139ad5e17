//! The storage curve: bytes per CDR of one compacted day at each traffic
//! profile, against the Parquet file an analyst would write of the same
//! records in clear.
//!
//! Profiles of 1, 5 and 20 CDRs per subscriber per day, populations of
//! 10,000, 100,000 and 1,000,000 subscribers (`cdrvault::tools::synth`,
//! seed 42, one day). A day of more than `CURVE_MAX_RECORDS` records
//! (default 5,000,000) is skipped; `CURVE_MAX_RECORDS=20000000` runs the
//! whole grid; `CURVE_POINTS=10000x20,1000000x1` measures only those
//! points (subscribers x CDRs per subscriber per day), and
//! `CURVE_PAGE_ROWS` sets `parquet.lookup_page_rows` of the files written.
//! Each day is generated 100,000 records at a time and ingested
//! through the real `Processor` (one file per batch, as ingest writes), then
//! compacted into one file (`compact::compact_day`, as `serve` does to a
//! closed day): cdrvault's figure is that file with its companion and token
//! index. The baseline holds the same records with every identifier in
//! clear (`common::plaintext`), written by arrow with zstd 3 and then
//! rewritten by DuckDB (`COPY … (FORMAT parquet, COMPRESSION zstd)`, its
//! defaults otherwise), which is independent of cdrvault's writer. Without
//! python3 and its duckdb module the arrow file is the baseline, and the
//! bench says so.
//!
//! A harness, not a criterion benchmark: it measures bytes, not time.
//! Run: `cargo bench --bench storage_curve`.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use cdrvault::ingest::decode::{self, Encoding};
use cdrvault::ingest::process::Processor;
use cdrvault::keys::KeyStore;
use cdrvault::model::Cdr;
use cdrvault::ops::clock::{Clock, ManualClock};
use cdrvault::storage::compact;
use cdrvault::storage::config::ParquetConfig;
use cdrvault::storage::layout;
use cdrvault::storage::write::ParquetWriter;
use cdrvault::tools::synth::{Generator, SynthConfig};

const PROFILES: [usize; 3] = [1, 5, 20];
const POPULATIONS: [usize; 3] = [10_000, 100_000, 1_000_000];
const CHUNK: usize = 100_000;
const TARGET_RATIO: f64 = 2.0;
const TARGET_AT_20: f64 = 1.6;

fn main() {
    let max: usize = std::env::var("CURVE_MAX_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000_000);
    let points: Option<Vec<String>> =
        std::env::var("CURVE_POINTS").ok().map(|v| v.split(',').map(|p| p.trim().to_string()).collect());
    let duckdb = duckdb_available();
    println!(
        "storage curve: one compacted day per profile (seed 42), cdrvault (data file + companion + index) \
         against {}",
        if duckdb {
            "a DuckDB-written zstd Parquet of the same records in clear"
        } else {
            "arrow's zstd-3 Parquet (no duckdb module)"
        }
    );
    println!(
        "  {:>11} {:>12} {:>11} {:>13} {:>13} {:>13} {:>7}",
        "subscribers", "CDRs/sub/day", "CDRs", "cdrvault B/CDR", "index B/CDR", "baseline B/CDR", "ratio"
    );
    let mut worst: Option<f64> = None;
    let mut worst_at_20: Option<f64> = None;
    for subscribers in POPULATIONS {
        for profile in PROFILES {
            let n = subscribers * profile;
            if points.as_ref().is_some_and(|p| !p.contains(&format!("{subscribers}x{profile}"))) {
                continue;
            }
            if n > max {
                println!("  {subscribers:>11} {profile:>12} {n:>11}  skipped (CURVE_MAX_RECORDS={max})");
                continue;
            }
            let point = measure(subscribers, n, duckdb);
            let ratio = point.vault as f64 / point.baseline as f64;
            let per = |bytes: u64| bytes as f64 / n as f64;
            println!(
                "  {subscribers:>11} {profile:>12} {n:>11} {:>13.1} {:>13.1} {:>13.1} {ratio:>7.2}",
                per(point.vault),
                per(point.index),
                per(point.baseline)
            );
            worst = Some(worst.map_or(ratio, |w: f64| w.max(ratio)));
            if profile == 20 {
                worst_at_20 = Some(worst_at_20.map_or(ratio, |w: f64| w.max(ratio)));
            }
        }
    }
    let verdict = |ratio: Option<f64>, target: f64| match ratio {
        Some(r) if r <= target => format!("{r:.2} (target <= {target}: met)"),
        Some(r) => format!("{r:.2} (target <= {target}: MISSED)"),
        None => "not measured".to_string(),
    };
    println!();
    println!("RESULT storage curve: worst ratio {}", verdict(worst, TARGET_RATIO));
    println!(
        "RESULT storage curve at 20 CDRs per subscriber per day: worst ratio {}",
        verdict(worst_at_20, TARGET_AT_20)
    );
}

/// The bytes of one compacted day and of its baseline.
struct Point {
    /// Data file, companion and token index.
    vault: u64,
    /// The token index alone.
    index: u64,
    baseline: u64,
}

/// The layout measured: the defaults, with `CURVE_PAGE_ROWS` if set.
fn parquet_config() -> ParquetConfig {
    let mut config = ParquetConfig::default();
    if let Some(rows) = std::env::var("CURVE_PAGE_ROWS").ok().and_then(|v| v.parse().ok()) {
        config.lookup_page_rows = rows;
    }
    config
}

fn measure(subscribers: usize, n: usize, duckdb: bool) -> Point {
    let root = tempfile::tempdir().expect("tempdir");
    let keys: Arc<KeyStore> = common::key_store(&root.path().join("keys"));
    let data_dir = root.path().join("data");
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(common::until()));
    let processor = Processor::new(
        ParquetWriter::new(&data_dir, parquet_config()),
        Arc::clone(&keys),
        clock,
        common::processor_config(2),
    );
    let plain_path = root.path().join("plain.parquet");
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("zstd level 3")))
        .build();
    let mut plain = ArrowWriter::try_new(
        std::fs::File::create(&plain_path).expect("create"),
        common::plaintext::schema(),
        Some(properties),
    )
    .expect("writer");
    let config = SynthConfig { seed: 42, subscribers, days: 1, until: common::until(), invalid_ratio: 0.0 };
    let mut generator = Generator::new(config);
    let ctx = common::ctx();
    let mut left = n;
    while left > 0 {
        let take = left.min(CHUNK);
        let records: Vec<_> = (0..take).map(|_| generator.next_record()).collect();
        let inputs = common::inputs(&records, Encoding::Json);
        let outcome = processor.process(&inputs).expect("process");
        assert_eq!(outcome.written, take, "every record is valid");
        let cdrs: Vec<Cdr<'_>> =
            inputs.iter().map(|i| decode::decode(i.encoding, &i.payload, &ctx).expect("valid record")).collect();
        plain.write(&common::plaintext::batch(&cdrs)).expect("plaintext rows");
        left -= take;
    }
    plain.close().expect("close");
    let writer = ParquetWriter::new(&data_dir, parquet_config());
    let report = compact::compact_day(&writer, &keys, common::day(), 1_900_000_000_000).expect("compaction");
    assert_eq!(report.files_after, 1, "{report:?}");

    let (mut vault, mut index) = (0, 0);
    for entry in std::fs::read_dir(layout::day_dir(&data_dir, common::day())).expect("day dir") {
        let entry = entry.expect("entry");
        let bytes = entry.metadata().expect("stat").len();
        let name = entry.file_name().to_string_lossy().into_owned();
        if layout::data_file_of_index(&name).is_some() {
            index += bytes;
        }
        vault += bytes;
    }
    let baseline = if duckdb {
        duckdb_rewrite(&plain_path, &root.path().join("duckdb.parquet"))
    } else {
        std::fs::metadata(&plain_path).expect("stat").len()
    };
    Point { vault, index, baseline }
}

fn duckdb_available() -> bool {
    Command::new("python3").args(["-c", "import duckdb"]).output().is_ok_and(|o| o.status.success())
}

/// The size of the file DuckDB writes of `source`'s rows with zstd.
fn duckdb_rewrite(source: &Path, target: &Path) -> u64 {
    let program = "import duckdb, sys\n\
                   duckdb.connect().execute(\
                   f\"COPY (SELECT * FROM read_parquet('{sys.argv[1]}')) TO '{sys.argv[2]}' \
                   (FORMAT parquet, COMPRESSION zstd)\")";
    let run = Command::new("python3").arg("-c").arg(program).arg(source).arg(target).output().expect("python3");
    assert!(run.status.success(), "duckdb: {}", String::from_utf8_lossy(&run.stderr));
    std::fs::metadata(target).expect("stat").len()
}
