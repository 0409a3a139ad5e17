//! Fixtures shared by the benchmark targets: a fixed clock, synthetic records
//! that fall on one UTC day, and a throwaway keystore.
//!
//! Each bench target compiles this module on its own and uses a different
//! subset of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod plaintext;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use cdrvault::ingest::decode::{Encoding, ValidationContext};
use cdrvault::ingest::process::{Input, ProcessorConfig};
use cdrvault::keys::{KeyStore, SecretKey, TokenKey};
use cdrvault::lifecycle::config::RetentionConfig;
use cdrvault::model::{KeyId, PartitionDate, TimestampMicros};
use cdrvault::privacy::token::Tokeniser;
use cdrvault::tools::synth::{Generator, SynthConfig, SyntheticCdr};

/// The last millisecond of the benchmark day. With `days = 1` every generated
/// start time lies within the 24 hours before it, so all records fall on
/// one UTC date and each batch writes exactly one file.
pub const UNTIL: &str = "2026-11-24T23:59:59.999Z";

/// The subscriber population of `cdrvault produce` and the demo.
pub const SUBSCRIBERS: usize = 5_000;

/// Allowed clock skew, as in the default `[ingest]` config.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

pub fn until() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(UNTIL).expect("UNTIL is RFC 3339").with_timezone(&Utc)
}

pub fn day() -> PartitionDate {
    TimestampMicros::from_datetime(until()).partition_date()
}

/// Validation as the processor does it with its clock at [`until`] and the
/// default retention window.
pub fn ctx() -> ValidationContext {
    ValidationContext {
        now: TimestampMicros::from_datetime(until()),
        max_clock_skew_micros: MAX_CLOCK_SKEW.as_micros() as i64,
        oldest_retained: Some(cdrvault::model::retention::oldest_retained(day(), RetentionConfig::default().days)),
    }
}

/// The processor settings of the default `[ingest]` and `[retention]`
/// config, with `threads` decode threads.
pub fn processor_config(threads: usize) -> ProcessorConfig {
    ProcessorConfig {
        max_clock_skew: MAX_CLOCK_SKEW,
        decode_threads: threads,
        retention_days: Some(RetentionConfig::default().days),
    }
}

/// `n` valid records of the realistic synthetic mix, all on [`day`].
pub fn records(n: usize, subscribers: usize) -> Vec<SyntheticCdr> {
    let config = SynthConfig { seed: 42, subscribers, days: 1, until: until(), invalid_ratio: 0.0 };
    let mut generator = Generator::new(config);
    (0..n).map(|_| generator.next_record()).collect()
}

pub fn payloads(records: &[SyntheticCdr], encoding: Encoding) -> Vec<Vec<u8>> {
    records
        .iter()
        .map(|r| match encoding {
            Encoding::Json => r.to_json(),
            Encoding::Protobuf => r.to_protobuf(),
        })
        .collect()
}

pub fn inputs(records: &[SyntheticCdr], encoding: Encoding) -> Vec<Input> {
    payloads(records, encoding).into_iter().map(|payload| Input { encoding, payload: payload.into() }).collect()
}

/// The fixed token key of the tokenise benchmarks.
pub fn tokeniser() -> Tokeniser {
    let key = TokenKey { id: KeyId::new("tk-0001").expect("a valid key id"), secret: SecretKey::from_bytes([7; 32]) };
    Tokeniser::new(&key)
}

/// A fresh keystore in `dir` (which must not exist yet or be empty).
pub fn key_store(dir: &Path) -> Arc<KeyStore> {
    KeyStore::init(dir, None).expect("keys init");
    Arc::new(KeyStore::open(dir, None).expect("keys open"))
}

/// Mean payload size, for the reports.
pub fn mean_len(payloads: &[Vec<u8>]) -> f64 {
    payloads.iter().map(Vec::len).sum::<usize>() as f64 / payloads.len().max(1) as f64
}
