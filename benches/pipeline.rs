//! Criterion benchmarks of the pipeline stages and of one whole batch.
//!
//! Every figure is a throughput: records (or tokens) per second. The inputs
//! are the realistic synthetic mix of `cdrvault::tools::synth` (all six services,
//! recurring subscribers, roamers), without deliberate defects and all on
//! one UTC day, so that a batch writes exactly one file. See
//! benches/README.md for how to run them and for the figures measured.
//!
//! - `decode/{json,protobuf}`: parse and validate one payload.
//! - `tokenise/msisdn`: one keyed token, i.e. one HMAC-SHA256.
//! - `columns/append`: tokenise every identifier of a decoded record and
//!   append it to the Arrow columns of its day.
//! - `parquet_write/{1,2}_threads`: encode, encrypt, compress and durably
//!   publish the file of 100k records of one day.
//! - `end_to_end/json_{1,2}_threads`, `end_to_end/protobuf_1_thread`:
//!   `Processor::process` from payload bytes to a durable Parquet file,
//!   100k records per batch.

mod common;

use std::borrow::Cow;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

use cdrvault::ingest::columns::DayColumns;
use cdrvault::ingest::decode::{self, Encoding};
use cdrvault::ingest::process::Processor;
use cdrvault::model::{IdentifierKind, KeyId};
use cdrvault::ops::clock::{Clock, ManualClock};
use cdrvault::storage::config::ParquetConfig;
use cdrvault::storage::schema;
use cdrvault::storage::write::ParquetWriter;

/// Records per decode and column-building iteration.
const SMALL_BATCH: usize = 10_000;
/// Records per Parquet file and per end-to-end batch, as in the default
/// `ingest.batch_max_records`.
const BATCH: usize = 100_000;

fn decode_benches(c: &mut Criterion) {
    let records = common::records(SMALL_BATCH, common::SUBSCRIBERS);
    let ctx = common::ctx();
    let mut group = c.benchmark_group("decode");
    group.sample_size(30).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(SMALL_BATCH as u64));
    for (name, encoding) in [("json", Encoding::Json), ("protobuf", Encoding::Protobuf)] {
        let payloads = common::payloads(&records, encoding);
        eprintln!("decode/{name}: mean payload {:.0} bytes", common::mean_len(&payloads));
        // A benchmark of refusals would measure something else; make sure
        // every record takes the full path.
        assert!(payloads.iter().all(|p| decode::decode(encoding, p, &ctx).is_ok()));
        // Whether text fields borrow from the payload or are copied into
        // fresh allocations (one per field) shows up directly in the figure.
        let borrowed = payloads
            .iter()
            .filter_map(|p| decode::decode(encoding, p, &ctx).ok())
            .filter(|cdr| matches!(cdr.record_id, Cow::Borrowed(_)))
            .count();
        eprintln!("decode/{name}: record_id borrowed from the payload in {borrowed} of {} records", payloads.len());
        group.bench_function(name, |b| {
            b.iter(|| {
                for payload in &payloads {
                    let _ = black_box(decode::decode(encoding, black_box(payload), &ctx));
                }
            })
        });
    }
    group.finish();
}

fn tokenise_benches(c: &mut Criterion) {
    let tokeniser = common::tokeniser();
    let mut group = c.benchmark_group("tokenise");
    group.throughput(Throughput::Elements(1));
    group.bench_function("msisdn", |b| b.iter(|| tokeniser.token(IdentifierKind::Msisdn, black_box(b"+4520000001"))));
    group.finish();
}

fn columns_benches(c: &mut Criterion) {
    let records = common::records(SMALL_BATCH, common::SUBSCRIBERS);
    let payloads = common::payloads(&records, Encoding::Json);
    let ctx = common::ctx();
    let cdrs: Vec<_> =
        payloads.iter().map(|p| decode::decode(Encoding::Json, p, &ctx).expect("valid record")).collect();
    let tokeniser = common::tokeniser();
    let schema = schema::cdr_schema();
    let seal_key_id = KeyId::new("day-2026-11-24-00000000").expect("a valid key id");
    let mut group = c.benchmark_group("columns");
    group.sample_size(30).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(SMALL_BATCH as u64));
    group.bench_function("append", |b| {
        b.iter(|| {
            let mut columns = DayColumns::with_capacity(SMALL_BATCH);
            let mut tokens = cdrvault::privacy::token::TokenMemo::new(tokeniser.clone());
            for (index, cdr) in cdrs.iter().enumerate() {
                columns.append(index, cdr, &mut tokens);
            }
            black_box(columns.finish(&schema, tokeniser.key_id(), &seal_key_id).expect("batch"))
        })
    });
    group.finish();
}

fn parquet_write_benches(c: &mut Criterion) {
    let records = common::records(BATCH, common::SUBSCRIBERS);
    let payloads = common::payloads(&records, Encoding::Json);
    let ctx = common::ctx();
    let tokeniser = common::tokeniser();
    let root = tempfile::tempdir().expect("tempdir");
    let keys = common::key_store(&root.path().join("keys"));
    let day_key = keys.day_key(common::day()).expect("day key");
    let schema = schema::cdr_schema();
    let mut columns = DayColumns::with_capacity(BATCH);
    let mut tokens = cdrvault::privacy::token::TokenMemo::new(tokeniser.clone());
    for (index, payload) in payloads.iter().enumerate() {
        let cdr = decode::decode(Encoding::Json, payload, &ctx).expect("valid record");
        columns.append(index, &cdr, &mut tokens);
    }
    let batch = columns.finish(&schema, tokeniser.key_id(), &day_key.id).expect("batch");
    let batches = [batch];
    let now_millis = common::until().timestamp_millis();

    let mut group = c.benchmark_group("parquet_write");
    group.sample_size(10).sampling_mode(SamplingMode::Flat).measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(BATCH as u64));
    for threads in [1, 2] {
        let config = ParquetConfig { encode_threads: threads, ..ParquetConfig::default() };
        let writer = ParquetWriter::new(&root.path().join("data"), config);
        let probe = writer.write_day(common::day(), &batches, &day_key, tokeniser.key_id(), now_millis).expect("write");
        eprintln!(
            "parquet_write: {} records -> {} bytes ({:.1} bytes/record)",
            probe.rows,
            probe.bytes,
            probe.bytes as f64 / probe.rows as f64
        );
        std::fs::remove_file(&probe.path).expect("remove");
        group.bench_function(format!("{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let file = writer
                        .write_day(common::day(), &batches, &day_key, tokeniser.key_id(), now_millis)
                        .expect("write");
                    spent += started.elapsed();
                    // Outside the timing: keeps the disk from filling up.
                    std::fs::remove_file(&file.path).expect("remove");
                }
                spent
            })
        });
    }
    group.finish();
}

fn end_to_end_benches(c: &mut Criterion) {
    let records = common::records(BATCH, common::SUBSCRIBERS);
    let root = tempfile::tempdir().expect("tempdir");
    let keys = common::key_store(&root.path().join("keys"));
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(common::until()));

    let mut group = c.benchmark_group("end_to_end");
    group.sample_size(10).sampling_mode(SamplingMode::Flat).measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(BATCH as u64));
    let cases = [
        ("json_1_thread", Encoding::Json, 1),
        ("json_2_threads", Encoding::Json, 2),
        ("protobuf_1_thread", Encoding::Protobuf, 1),
    ];
    for (name, encoding, threads) in cases {
        let inputs = common::inputs(&records, encoding);
        let writer = ParquetWriter::new(
            &root.path().join("data"),
            ParquetConfig { encode_threads: threads, ..ParquetConfig::default() },
        );
        let processor =
            Processor::new(writer, Arc::clone(&keys), Arc::clone(&clock), common::processor_config(threads));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let outcome = processor.process(&inputs).expect("process");
                    spent += started.elapsed();
                    assert_eq!(outcome.written, BATCH, "every record is valid");
                    for file in &outcome.files {
                        std::fs::remove_file(&file.path).expect("remove");
                    }
                }
                spent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode_benches, tokenise_benches, columns_benches, parquet_write_benches, end_to_end_benches);
criterion_main!(benches);
