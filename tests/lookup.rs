//! The lookup engine against the generator's ground truth: exactly the
//! records of the target within the window, only the allowed categories
//! unsealed, and nothing for days whose key retention destroyed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};

use cdrvault::clock::{Clock, ManualClock};
use cdrvault::decode::Encoding;
use cdrvault::keys::KeyStore;
use cdrvault::lookup::{Query, find};
use cdrvault::models::{Category, IdentifierField, IdentifierKind, TimestampMicros};
use cdrvault::pipeline::{Input, Processor, ProcessorConfig};
use cdrvault::synth::{Generator, SynthConfig};
use cdrvault::write::{ParquetConfig, ParquetWriter};

#[test]
fn a_lookup_returns_exactly_the_targets_records_within_scope() {
    let until = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
    let root = tempfile::tempdir().unwrap();
    KeyStore::init(&root.path().join("keys"), None).unwrap();
    let keys = Arc::new(KeyStore::open(&root.path().join("keys"), None).unwrap());
    let clock = Arc::new(ManualClock::new(until));
    // Small row groups, so that bloom filters have something to prune.
    let parquet = ParquetConfig { row_group_rows: 2_000, ..ParquetConfig::default() };
    let processor = Processor::new(
        ParquetWriter::new(&root.path().join("data"), parquet),
        Arc::clone(&keys),
        clock.clone() as Arc<dyn Clock>,
        ProcessorConfig { max_clock_skew: Duration::from_secs(60), decode_threads: 2, retention_days: Some(365) },
    );
    let mut generator = Generator::new(SynthConfig { seed: 9, subscribers: 2_000, days: 5, until, invalid_ratio: 0.0 });
    let records: Vec<_> = (0..30_000).map(|_| generator.next_record()).collect();
    let inputs: Vec<Input> = records.iter().map(|r| Input { encoding: Encoding::Json, payload: r.to_json() }).collect();
    assert_eq!(processor.process(&inputs).unwrap().written, records.len());

    let target = generator.subscribers()[3].msisdn.clone();
    let from = until - chrono::Duration::days(3);
    let query = Query {
        targets: vec![(IdentifierKind::Msisdn, target.clone())],
        from: TimestampMicros::from_datetime(from),
        to: TimestampMicros::from_datetime(until),
        categories: [Category::Traffic].into(),
    };
    let (found, stats) = find(&root.path().join("data"), &keys, &query).unwrap();
    let truth: HashSet<&str> = records
        .iter()
        .filter(|r| r.involves_number(&target) && r.start_time.unwrap() >= from && r.start_time.unwrap() <= until)
        .map(|r| r.record_id.as_str())
        .collect();
    assert!(truth.len() > 5, "a subscriber with traffic");
    let ids: HashSet<&str> = found.iter().map(|r| r.record_id.as_str()).collect();
    assert_eq!(ids, truth);
    assert_eq!(found.len(), truth.len(), "each record once");
    assert!(stats.row_groups_read < stats.row_groups, "bloom filters pruned row groups: {stats:?}");

    // Only traffic identifiers are unsealed, and the target is among them.
    for record in &found {
        assert!(record.identifiers.iter().all(|(f, _)| f.category() == Category::Traffic));
        assert!(record.identifiers.iter().any(|(_, v)| v == &target));
        assert!(record.src_port.is_none(), "ports belong to the ip category");
    }
    let with_location = Query { categories: [Category::Traffic, Category::Location].into(), ..query.clone() };
    let (located, _) = find(&root.path().join("data"), &keys, &with_location).unwrap();
    assert!(located.iter().all(|r| r.identifiers.iter().any(|(f, _)| *f == IdentifierField::CellIdStart)));

    // A target that never occurs finds nothing.
    let nobody = Query { targets: vec![(IdentifierKind::Msisdn, "+4599999999".into())], ..query.clone() };
    assert!(find(&root.path().join("data"), &keys, &nobody).unwrap().0.is_empty());

    // An IMSI target searched with only the traffic category still finds the
    // records, but discloses no device identifier.
    let imsi = generator.subscribers()[3].imsi.clone();
    let by_imsi = Query { targets: vec![(IdentifierKind::Imsi, imsi)], ..query.clone() };
    let (by_device, _) = find(&root.path().join("data"), &keys, &by_imsi).unwrap();
    assert!(!by_device.is_empty());
    assert!(by_device.iter().all(|r| r.identifiers.iter().all(|(f, _)| f.category() != Category::Device)));
}
