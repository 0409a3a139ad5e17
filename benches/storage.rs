//! Storage per CDR: cdrvault's pseudonymised, partially encrypted files
//! against a plain zstd Parquet file that keeps the identifiers in clear.
//!
//! Both files hold the same N = 200k synthetic records of one day (the
//! realistic mix of `cdrvault::tools::synth`). The baseline has the same clear
//! columns and one UTF-8 column per identifier with its canonical value; it
//! uses zstd level 3 and otherwise parquet's default writer settings
//! (dictionary on, page statistics, no bloom filters). The target is
//! cdrvault ≤ 2× the baseline.
//!
//! A harness, not a criterion benchmark: it measures bytes, not time. It
//! also prints where cdrvault's bytes go (clear, token, sealed columns,
//! bloom filters, footer and page indexes, token index), a baseline with cdrvault's own
//! row-group and page sizes, and the same comparison for a population 20
//! times larger, because tokens and identifiers compress by recurrence.
//!
//! Run: `cargo bench --bench storage` (add `-- N` to change the count).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;

use cdrvault::ingest::decode::{self, Encoding};
use cdrvault::ingest::process::Processor;
use cdrvault::keys::KeyStore;
use cdrvault::model::{Cdr, IdentifierField, IdentifierKind, IdentifierValue};
use cdrvault::ops::clock::{Clock, ManualClock};
use cdrvault::storage::config::ParquetConfig;
use cdrvault::storage::schema;
use cdrvault::storage::write::ParquetWriter;

const DEFAULT_RECORDS: usize = 200_000;
const TARGET_RATIO: f64 = 2.0;

fn main() {
    // `cargo bench` passes `--bench`; a bare number overrides N.
    let n = std::env::args().skip(1).find_map(|a| a.parse::<usize>().ok()).unwrap_or(DEFAULT_RECORDS);
    let root = tempfile::tempdir().expect("tempdir");
    let keys = common::key_store(&root.path().join("keys"));

    println!("storage per CDR: {n} synthetic records of one day (seed 42, no defects), zstd level 3");
    let mut headline = None;
    for subscribers in [common::SUBSCRIBERS, common::SUBSCRIBERS * 20] {
        let records = common::records(n, subscribers);
        let inputs = common::inputs(&records, Encoding::Json);
        let data_dir = root.path().join(format!("data-{subscribers}"));
        let vault = write_cdrvault(&data_dir, &keys, &inputs);
        let ctx = common::ctx();
        let cdrs: Vec<Cdr<'_>> =
            inputs.iter().map(|i| decode::decode(i.encoding, &i.payload, &ctx).expect("valid record")).collect();
        let plain_batch = common::plaintext::batch(&cdrs);
        let plain_default =
            write_plaintext(&root.path().join(format!("plain-{subscribers}.parquet")), &plain_batch, false);
        let plain_grouped =
            write_plaintext(&root.path().join(format!("plain-rg-{subscribers}.parquet")), &plain_batch, true);

        let per = |bytes: u64| bytes as f64 / n as f64;
        let ratio = vault as f64 / plain_default as f64;
        println!();
        println!("population {subscribers} subscribers");
        recurrence(&cdrs);
        println!("  {:<58} {:>12} {:>10}", "file", "bytes", "bytes/CDR");
        println!("  {:<58} {:>12} {:>10.1}", "cdrvault (data file + companion + index)", vault, per(vault));
        println!("  {:<58} {:>12} {:>10.1}", "plaintext zstd-3, parquet defaults", plain_default, per(plain_default));
        println!(
            "  {:<58} {:>12} {:>10.1}",
            "plaintext zstd-3, cdrvault's row-group and page sizes",
            plain_grouped,
            per(plain_grouped)
        );
        println!(
            "  ratio cdrvault / plaintext: {ratio:.2} (target <= {TARGET_RATIO}: {})",
            if ratio <= TARGET_RATIO { "met" } else { "MISSED" }
        );
        println!("  ratio cdrvault / plaintext with the same row groups: {:.2}", vault as f64 / plain_grouped as f64);
        breakdown(&data_dir, &keys, n);
        plaintext_breakdown(&root.path().join(format!("plain-{subscribers}.parquet")), n);
        if headline.is_none() {
            headline = Some(ratio);
        }
    }
    if let Some(ratio) = headline {
        println!();
        println!(
            "RESULT storage ratio {ratio:.2} at {} subscribers (target <= {TARGET_RATIO}: {})",
            common::SUBSCRIBERS,
            if ratio <= TARGET_RATIO { "met" } else { "MISSED" }
        );
    }
}

/// Writes all inputs through the real processor (one batch, one day, one
/// file) and returns the size of the file plus its companion and token
/// index.
fn write_cdrvault(data_dir: &Path, keys: &Arc<KeyStore>, inputs: &[cdrvault::ingest::process::Input]) -> u64 {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(common::until()));
    let writer = ParquetWriter::new(data_dir, ParquetConfig::default());
    let processor = Processor::new(writer, Arc::clone(keys), clock, common::processor_config(1));
    let outcome = processor.process(inputs).expect("process");
    assert_eq!(outcome.written, inputs.len(), "every record is valid");
    assert_eq!(outcome.files.len(), 1, "one day, one file");
    let index =
        std::fs::metadata(cdrvault::storage::layout::index_path(&outcome.files[0].path)).expect("token index").len();
    outcome.files[0].bytes + outcome.files[0].sealed_bytes + index
}

/// Writes the baseline file; `cdrvault_groups` applies cdrvault's row-group
/// and data-page row counts instead of parquet's defaults.
fn write_plaintext(path: &Path, batch: &RecordBatch, cdrvault_groups: bool) -> u64 {
    let zstd = ZstdLevel::try_new(3).expect("zstd level 3");
    let mut builder = WriterProperties::builder().set_compression(Compression::ZSTD(zstd));
    if cdrvault_groups {
        let defaults = ParquetConfig::default();
        builder = builder
            .set_max_row_group_row_count(Some(defaults.row_group_rows))
            .set_data_page_row_count_limit(defaults.data_page_rows);
    }
    let file = File::create(path).expect("create");
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(builder.build())).expect("writer");
    writer.write(batch).expect("write");
    writer.close().expect("close");
    std::fs::metadata(path).expect("stat").len()
}

/// Prints where the bytes of the (single) cdrvault file go.
fn breakdown(data_dir: &Path, keys: &KeyStore, n: usize) {
    let day_key = keys.day_key(common::day()).expect("day key");
    let dir = cdrvault::storage::layout::day_dir(data_dir, common::day());
    let path = std::fs::read_dir(&dir)
        .expect("day dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .expect("a parquet file");
    let companion = cdrvault::storage::layout::sealed_path(&path);
    let size = std::fs::metadata(&path).expect("stat").len() + std::fs::metadata(&companion).expect("stat").len();
    let metadata: ParquetMetaData =
        ParquetMetaDataReader::new().parse_and_finish(&File::open(&path).expect("open")).expect("footer");
    let decryption = cdrvault::storage::read::decryption(&companion, &day_key).expect("decryption properties");
    let sealed: ParquetMetaData = ParquetMetaDataReader::new()
        .with_decryption_properties(Some(decryption))
        .parse_and_finish(&File::open(&companion).expect("open"))
        .expect("companion footer");

    let mut parts: BTreeMap<&str, u64> = BTreeMap::new();
    for group in metadata.row_groups().iter().chain(sealed.row_groups()) {
        for column in group.columns() {
            let name = column.column_path().string();
            let part = if name.ends_with("_token") {
                "2 token columns (data pages)"
            } else if name.ends_with("_sealed") {
                "4 sealed columns (companion, encrypted data pages)"
            } else if name == schema::TOKEN_KEY_ID || name == schema::SEAL_KEY_ID {
                "5 key id columns"
            } else {
                "1 clear columns (times, service, counters, record id)"
            };
            *parts.entry(part).or_default() += column.compressed_size() as u64;
            if let Some(bloom) = column.bloom_filter_length() {
                *parts.entry("3 token bloom filters").or_default() += bloom as u64;
            }
        }
    }
    let accounted: u64 = parts.values().sum();
    *parts.entry("6 footers, page indexes, padding (both files)").or_default() += size.saturating_sub(accounted);
    let index = std::fs::metadata(cdrvault::storage::layout::index_path(&path)).expect("token index").len();
    *parts.entry("7 token index (sidecar file)").or_default() += index;
    let size = size + index;
    println!(
        "  cdrvault file, companion and index: {} row groups, {size} bytes; where they go:",
        metadata.num_row_groups()
    );
    for (part, bytes) in parts {
        println!(
            "    {:<56} {:>10} {:>8.1} B/CDR {:>5.1}%",
            &part[2..],
            bytes,
            bytes as f64 / n as f64,
            100.0 * bytes as f64 / size as f64
        );
    }
}

/// Prints how the default plaintext file splits between identifier columns
/// and the rest, to set against the token and sealed columns above.
fn plaintext_breakdown(path: &Path, n: usize) {
    let file = File::open(path).expect("open");
    let metadata = ParquetMetaDataReader::new().parse_and_finish(&file).expect("footer");
    let identifiers: Vec<&str> = IdentifierField::ALL.iter().map(|f| f.name()).collect();
    let (mut clear, mut ids) = (0u64, 0u64);
    for group in metadata.row_groups() {
        for column in group.columns() {
            let bytes = column.compressed_size() as u64;
            if identifiers.contains(&column.column_path().string().as_str()) {
                ids += bytes;
            } else {
                clear += bytes;
            }
        }
    }
    println!("  plaintext file: {} row groups; where the bytes go:", metadata.num_row_groups());
    println!("    {:<56} {:>10} {:>8.1} B/CDR", "clear columns", clear, clear as f64 / n as f64);
    println!("    {:<56} {:>10} {:>8.1} B/CDR", "identifier columns in clear", ids, ids as f64 / n as f64);
}

/// Records per ingest batch (the default `ingest.batch_max_records`).
const BATCH: usize = 100_000;

/// How often identifier values recur within a batch. Recurrence is what
/// dictionary encoding exploits in the token and sealed columns, and it is
/// the share of HMACs a per-batch token cache would save.
fn recurrence(cdrs: &[Cdr<'_>]) {
    let (mut values, mut distinct) = (0usize, 0usize);
    for batch in cdrs.chunks(BATCH) {
        // Tokens depend on the kind, not the field: a number has the same
        // token as calling and as called party.
        let mut seen: HashSet<(IdentifierKind, String)> = HashSet::new();
        for cdr in batch {
            for field in IdentifierField::ALL {
                let text = match cdr.identifier(field) {
                    None => continue,
                    Some(IdentifierValue::Text(text)) => text.to_owned(),
                    Some(IdentifierValue::Ip(ip)) => ip.to_string(),
                };
                values += 1;
                distinct += usize::from(seen.insert((field.kind(), text)));
            }
        }
    }
    println!(
        "  identifiers: {:.2} per record; {:.1}% of them recur within their {BATCH}-record batch",
        values as f64 / cdrs.len() as f64,
        100.0 * (values - distinct) as f64 / values as f64
    );
}
