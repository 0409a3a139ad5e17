//! The lookup engine against the generator's ground truth: exactly the
//! records of the target within the window, only the allowed categories
//! unsealed, through the token index or, without it, through bloom filters
//! and a scan, with the same answers; index files that hold no identifier;
//! and lookups across a token-key rotation.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use cdrvault::access::lookup::{FoundRecord, LookupEngine, LookupStats, Query};
use cdrvault::ingest::decode::Encoding;
use cdrvault::ingest::process::Input;
use cdrvault::keys::KeyStore;
use cdrvault::model::{Category, IdentifierField, IdentifierKind, TimestampMicros};
use cdrvault::privacy::target::canonical_value;
use cdrvault::storage::config::ParquetConfig;
use cdrvault::storage::{index, layout, read};
use cdrvault::tools::synth::{Generator, SynthConfig, SyntheticCdr};
use common::{TestVault, VaultOptions, generated, noon};

#[test]
fn a_lookup_returns_exactly_the_targets_records_within_scope() {
    let until = noon();
    // Small row groups, so that bloom filters have something to prune.
    let parquet = ParquetConfig { row_group_rows: 2_000, ..ParquetConfig::default() };
    let vault = TestVault::with(VaultOptions { now: until, parquet, ..VaultOptions::default() });
    let (generator, records) =
        generated(SynthConfig { seed: 9, subscribers: 2_000, days: 5, until, invalid_ratio: 0.0 }, 30_000);
    assert_eq!(vault.ingest(&records), records.len());
    let engine = LookupEngine::new(vault.data(), Arc::clone(&vault.keys));

    let target = generator.subscribers()[3].msisdn.clone();
    let from = until - chrono::Duration::days(3);
    let query = Query {
        targets: vec![(IdentifierKind::Msisdn, target.clone())],
        from: TimestampMicros::from_datetime(from),
        to: TimestampMicros::from_datetime(until),
        categories: [Category::Traffic].into(),
        preserved: vec![],
    };
    let (found, stats) = engine.find(&query).unwrap();
    let truth: HashSet<&str> = records
        .iter()
        .filter(|r| r.involves_number(&target) && r.start_time.unwrap() >= from && r.start_time.unwrap() <= until)
        .map(|r| r.record_id.as_str())
        .collect();
    assert!(truth.len() > 5, "a subscriber with traffic");
    let ids: HashSet<&str> = found.iter().map(|r| r.record_id.as_str()).collect();
    assert_eq!(ids, truth);
    assert_eq!(found.len(), truth.len(), "each record once");
    // Which row groups a subscriber's records fall in depends on the
    // random token key (rows are sorted by token), so one subscriber may
    // have records in every group; twenty together do not.
    let (mut read, mut groups) = (stats.row_groups_read, stats.row_groups);
    for other in &generator.subscribers()[4..24] {
        let targets = vec![(IdentifierKind::Msisdn, other.msisdn.clone())];
        let (_, stats) = engine.find(&Query { targets, ..query.clone() }).unwrap();
        (read, groups) = (read + stats.row_groups_read, groups + stats.row_groups);
    }
    assert!(read < groups, "the index pruned row groups: {read} of {groups} read");

    // Only traffic identifiers are unsealed, and the target is among them.
    for record in &found {
        assert!(record.identifiers.iter().all(|(f, _)| f.category() == Category::Traffic));
        assert!(record.identifiers.iter().any(|(_, v)| v == &target));
        assert!(record.src_port.is_none(), "ports belong to the ip category");
    }
    let with_location = Query { categories: [Category::Traffic, Category::Location].into(), ..query.clone() };
    let (located, _) = engine.find(&with_location).unwrap();
    assert!(located.iter().all(|r| r.identifiers.iter().any(|(f, _)| *f == IdentifierField::CellIdStart)));

    // A target that never occurs finds nothing.
    let nobody = Query { targets: vec![(IdentifierKind::Msisdn, "+4599999999".into())], ..query.clone() };
    assert!(engine.find(&nobody).unwrap().0.is_empty());

    // An IMSI target searched with only the traffic category still finds the
    // records, but discloses no device identifier.
    let imsi = generator.subscribers()[3].imsi.clone();
    let by_imsi = Query { targets: vec![(IdentifierKind::Imsi, imsi)], ..query.clone() };
    let (by_device, _) = engine.find(&by_imsi).unwrap();
    assert!(!by_device.is_empty());
    assert!(by_device.iter().all(|r| r.identifiers.iter().all(|(f, _)| f.category() != Category::Device)));
}

/// Five days of generated records written through the real pipeline, with
/// row groups of 1,999 rows so that index granules (8 rows) straddle group
/// boundaries.
struct Fixture {
    vault: TestVault,
    records: Vec<SyntheticCdr>,
    generator: Generator,
}

impl Fixture {
    fn new(seed: u64) -> Fixture {
        Fixture::with(seed, ParquetConfig { row_group_rows: 1_999, ..ParquetConfig::default() })
    }

    fn with(seed: u64, parquet: ParquetConfig) -> Fixture {
        let vault = TestVault::with(VaultOptions { parquet, ..VaultOptions::default() });
        let synth = SynthConfig { seed, subscribers: 1_000, days: 5, until: vault.now(), invalid_ratio: 0.0 };
        let (generator, records) = generated(synth, 20_000);
        assert_eq!(vault.ingest(&records), records.len());
        Fixture { vault, records, generator }
    }

    fn data(&self) -> PathBuf {
        self.vault.data()
    }

    fn keys(&self) -> Arc<KeyStore> {
        Arc::clone(&self.vault.keys)
    }

    fn data_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for day in read::list_days(&self.data()).unwrap() {
            files.extend(read::list_files(&self.data(), day).unwrap());
        }
        files
    }

    fn query(&self, targets: Vec<(IdentifierKind, String)>, days: i64) -> Query {
        let until = self.vault.now();
        Query {
            targets,
            from: TimestampMicros::from_datetime(until - chrono::Duration::days(days)),
            to: TimestampMicros::from_datetime(until),
            categories: [Category::Traffic, Category::Location, Category::Device, Category::Ip].into(),
            preserved: vec![],
        }
    }
}

/// Every (kind, raw value) a generated record carries.
fn identifiers_of(record: &SyntheticCdr) -> Vec<(IdentifierKind, &str)> {
    use IdentifierKind::*;
    [
        (Msisdn, &record.calling_number),
        (Msisdn, &record.called_number),
        (Msisdn, &record.redirecting_number),
        (Sip, &record.sip_uri),
        (Imsi, &record.imsi),
        (Imei, &record.imei),
        (Cell, &record.cell_id_start),
        (Cell, &record.cell_id_end),
        (Ip, &record.src_ip),
        (Ip, &record.dst_ip),
    ]
    .into_iter()
    .filter_map(|(kind, value)| value.as_deref().map(|v| (kind, v)))
    .collect()
}

/// The brute-force answer: record ids of the records within the window in
/// which a target appears, comparing canonical values.
fn ground_truth(records: &[SyntheticCdr], query: &Query) -> BTreeSet<String> {
    records
        .iter()
        .filter(|r| {
            let t = TimestampMicros::from_datetime(r.start_time.unwrap()).0;
            t >= query.from.0 && t <= query.to.0
        })
        .filter(|r| {
            identifiers_of(r).iter().any(|(kind, raw)| {
                query.targets.iter().any(|(k, v)| k == kind && canonical_value(*kind, raw).as_deref() == Some(v))
            })
        })
        .map(|r| r.record_id.clone())
        .collect()
}

fn ids(found: &[FoundRecord]) -> BTreeSet<String> {
    found.iter().map(|r| r.record_id.clone()).collect()
}

/// Targets of every kind, taken from records of the fixture.
fn targets(fixture: &Fixture) -> Vec<Vec<(IdentifierKind, String)>> {
    let canonical = |kind, raw: &str| (kind, canonical_value(kind, raw).unwrap());
    let mut targets = Vec::new();
    for (i, record) in fixture.records.iter().enumerate().step_by(1_777).take(6) {
        for (kind, raw) in identifiers_of(record) {
            if kind != IdentifierKind::Cell || i == 0 {
                targets.push(vec![canonical(kind, raw)]);
            }
        }
    }
    // Two targets at once, and one that never occurs.
    let a = &fixture.generator.subscribers()[1];
    let b = &fixture.generator.subscribers()[2];
    targets.push(vec![canonical(IdentifierKind::Msisdn, &a.msisdn), canonical(IdentifierKind::Imei, &b.imei)]);
    targets.push(vec![(IdentifierKind::Msisdn, "+4599999999".into())]);
    targets
}

fn check_all(fixture: &Fixture, engine: &LookupEngine, expect_index: bool) -> LookupStats {
    let mut total = LookupStats::default();
    for targets in targets(fixture) {
        // A cell dump is bounded in time: one day.
        let days = if targets.iter().any(|(k, _)| *k == IdentifierKind::Cell) { 1 } else { 4 };
        let query = fixture.query(targets.clone(), days);
        let (found, stats) = engine.find(&query).unwrap();
        let truth = ground_truth(&fixture.records, &query);
        assert_eq!(ids(&found), truth, "targets of kinds {:?}", kinds(&targets));
        assert_eq!(found.len(), ids(&found).len(), "each record once");
        let indexable = targets.iter().all(|(k, _)| index::is_indexed(*k));
        if expect_index && indexable {
            assert_eq!(stats.files_indexed, stats.files, "every file through its index: {stats:?}");
            assert_eq!(stats.token_chunks_scanned, 0, "no token column scanned: {stats:?}");
        } else {
            assert_eq!(stats.files_indexed, 0, "{stats:?}");
            assert_eq!(stats.files_scanned, stats.files, "{stats:?}");
            // Bloom filters may prune every group of a target that is absent.
            assert!(truth.is_empty() || stats.token_chunks_scanned > 0, "{stats:?}");
        }
        total.files_indexed += stats.files_indexed;
        total.index_pages += stats.index_pages;
        total.cache_hits += stats.cache_hits;
        total.candidates += stats.candidates;
    }
    total
}

/// The rows a lookup reads straight from their pages are the rows the
/// parquet crate's readers read: every field of every record found, for
/// every kind of target, over pages of 64 rows with nulls in the sealed
/// columns.
#[test]
fn rows_read_straight_from_their_pages_equal_what_the_parquet_readers_read() {
    let parquet = ParquetConfig { row_group_rows: 1_999, lookup_page_rows: 64, ..ParquetConfig::default() };
    let fixture = Fixture::with(23, parquet);
    let direct = LookupEngine::new(fixture.data(), fixture.keys());
    let reference = LookupEngine::new(fixture.data(), fixture.keys()).without_direct_reads();
    let (mut read_directly, mut found_in_all) = (0, 0);
    // Of the queries for traffic only: chunks read directly, and sealed
    // chunks read (directly or not).
    let (mut traffic_direct, mut traffic_sealed, mut traffic_through_reader) = (0, 0, 0);
    for targets in targets(&fixture) {
        let days = if targets.iter().any(|(k, _)| *k == IdentifierKind::Cell) { 1 } else { 4 };
        for categories in
            [vec![Category::Traffic], vec![Category::Traffic, Category::Location, Category::Device, Category::Ip]]
        {
            let query = Query { categories: categories.into_iter().collect(), ..fixture.query(targets.clone(), days) };
            let (found, stats) = direct.find(&query).unwrap();
            let (expected, reference_stats) = reference.find(&query).unwrap();
            assert!(found == expected, "targets of kinds {:?}: the records differ", kinds(&targets));
            assert_eq!(reference_stats.chunks_read_directly, 0);
            read_directly += stats.chunks_read_directly;
            found_in_all += found.len();
            // An address target is confirmed against the server address,
            // a sealed column with a dictionary: read through the crate.
            if query.categories.len() == 1 && targets.iter().all(|(kind, _)| *kind != IdentifierKind::Ip) {
                traffic_direct += stats.chunks_read_directly;
                traffic_sealed += stats.sealed_chunks_read;
                traffic_through_reader += stats.chunks_through_reader;
            }
        }
    }
    assert!(found_in_all > 100, "records found: {found_in_all}");
    // Were the companion's chunks read through the crate's reader, only the
    // record ids would be read directly: fewer chunks than the sealed ones.
    assert!(traffic_sealed > 0 && traffic_direct > traffic_sealed, "{traffic_direct} direct, {traffic_sealed} sealed");
    // What a traffic request returns is read directly, clear and sealed.
    assert_eq!(traffic_through_reader, 0, "chunks through the crate's reader");
    assert!(read_directly > 100, "chunks read straight from their pages: {read_directly}");
}

fn kinds(targets: &[(IdentifierKind, String)]) -> Vec<&'static str> {
    targets.iter().map(|(k, _)| k.as_str()).collect()
}

#[test]
fn lookups_through_the_index_match_a_brute_force_scan_of_the_ground_truth() {
    let fixture = Fixture::new(11);
    let files = fixture.data_files();
    assert!(files.len() >= 5, "one file per day at least");
    for file in &files {
        assert!(layout::index_path(file).exists(), "{} has its index", file.display());
    }
    let engine = LookupEngine::new(fixture.data(), fixture.keys());
    let stats = check_all(&fixture, &engine, true);
    assert!(stats.files_indexed > 0 && stats.index_pages > 0 && stats.candidates > 0, "{stats:?}");
    assert!(stats.cache_hits > 0, "footers are read once and then cached: {stats:?}");

    // The same answers from a fresh engine.
    let query = fixture.query(vec![(IdentifierKind::Msisdn, fixture.generator.subscribers()[4].msisdn.clone())], 5);
    let (cached, _) = engine.find(&query).unwrap();
    let (fresh, stats) = LookupEngine::new(fixture.data(), fixture.keys()).find(&query).unwrap();
    assert_eq!(cached, fresh);
    assert_eq!(stats.cache_hits, 0);
}

#[test]
fn without_its_index_a_file_is_scanned_with_the_same_results_and_the_index_can_be_rebuilt() {
    let fixture = Fixture::new(12);
    let engine = LookupEngine::new(fixture.data(), fixture.keys());
    check_all(&fixture, &engine, true);
    for file in fixture.data_files() {
        std::fs::remove_file(layout::index_path(&file)).unwrap();
    }
    // An engine that mapped the indexes keeps reading them: they still
    // describe the unchanged data files. A new engine finds none and scans.
    check_all(&fixture, &engine, true);
    let unindexed = LookupEngine::new(fixture.data(), fixture.keys());
    check_all(&fixture, &unindexed, false);
    // A damaged index is ignored as well.
    let files = fixture.data_files();
    std::fs::write(layout::index_path(&files[0]), b"not an index").unwrap();
    check_all(&fixture, &LookupEngine::new(fixture.data(), fixture.keys()), false);
    // Rebuilt from the clear token columns, the indexes are used again,
    // also by the engine that cached the files without them.
    for file in &files {
        index::rebuild(file).unwrap();
    }
    check_all(&fixture, &unindexed, true);
}

#[test]
fn index_files_and_companions_hold_never_an_identifier_in_clear() {
    let fixture = Fixture::new(13);
    let needles: Vec<String> = fixture
        .records
        .iter()
        .flat_map(|r| identifiers_of(r).into_iter().map(|(_, v)| v.to_string()).collect::<Vec<_>>())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let scanner = aho_corasick::AhoCorasick::new(&needles).unwrap();
    let mut scanned = 0;
    for file in fixture.data_files() {
        let bytes = std::fs::read(layout::index_path(&file)).unwrap();
        assert!(bytes.len() > 1_000, "an index with entries");
        if let Some(hit) = scanner.find(&bytes) {
            panic!("an identifier of {} bytes in {}", hit.len(), layout::index_path(&file).display());
        }
        // The file name of an index says nothing either.
        let name = layout::index_path(&file).file_name().unwrap().to_string_lossy().into_owned();
        assert!(scanner.find(&name).is_none());
        // Nor does the companion, whose every byte is encrypted.
        let companion = layout::sealed_path(&file);
        let bytes = std::fs::read(&companion).unwrap();
        assert!(bytes.len() > 1_000, "a companion with values");
        if let Some(hit) = scanner.find(&bytes) {
            panic!("an identifier of {} bytes in {}", hit.len(), companion.display());
        }
        scanned += 1;
    }
    assert!(scanned >= 5);
    // And the scan would have caught one: a raw identifier is a needle.
    assert!(scanner.find(fixture.records[0].calling_number.as_deref().unwrap()).is_some());
}

#[test]
fn each_day_is_searched_under_its_own_token_key_even_a_day_made_after_the_engine_started() {
    let fixture = Fixture::new(14);
    let engine = LookupEngine::new(fixture.data(), fixture.keys());
    let subscriber = fixture.generator.subscribers()[0].msisdn.clone();
    let query = fixture.query(vec![(IdentifierKind::Msisdn, subscriber.clone())], 7);
    let (before, _) = engine.find(&query).unwrap();
    assert_eq!(ids(&before), ground_truth(&fixture.records, &query));

    // Every file names its day's token key, derived from the day's data key.
    let mut token_keys = HashSet::new();
    for file in fixture.data_files() {
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(std::fs::File::open(&file).unwrap());
        let metadata = parquet::file::reader::FileReader::metadata(&reader.unwrap()).file_metadata().clone();
        let kv = metadata.key_value_metadata().unwrap().clone();
        let value = |key: &str| kv.iter().find(|e| e.key == key).unwrap().value.clone().unwrap();
        let (token, seal) = (value("cdrvault.token_key_id"), value("cdrvault.seal_key_id"));
        assert_eq!(token[4..], seal[4..], "{} is tokenised under its own day's key", file.display());
        token_keys.insert(token);
    }
    assert_eq!(token_keys.len(), read::list_days(&fixture.data()).unwrap().len());

    // Another process writes a day that had no key when the engine started.
    let new_day = (fixture.vault.now() - chrono::Duration::days(6)).date_naive();
    let other = Arc::new(KeyStore::open(&fixture.vault.keys_dir(), None).unwrap());
    let inputs: Vec<Input> = (0..3)
        .map(|i| Input {
            encoding: Encoding::Json,
            payload: format!(
                r#"{{"record_id":"late-{i}","service":"voice","start_time":"{new_day}T0{i}:00:00Z","end_time":"{new_day}T0{i}:01:00Z","calling_number":"{subscriber}","called_number":"+4599999999{i}"}}"#
            )
            .into_bytes().into(),
        })
        .collect();
    assert_eq!(fixture.vault.processor_over(other).process(&inputs).unwrap().written, 3);

    // The running engine finds them, under the new day's token key.
    let (after, _) = engine.find(&query).unwrap();
    let mut expected = ground_truth(&fixture.records, &query);
    expected.extend((0..3).map(|i| format!("late-{i}")));
    assert_eq!(ids(&after), expected);
}

#[test]
fn the_index_path_discloses_only_allowed_categories_and_nothing_outside_the_window() {
    let fixture = Fixture::new(15);
    let engine = LookupEngine::new(fixture.data(), fixture.keys());
    let target = fixture.generator.subscribers()[0].msisdn.clone();
    let mut query = fixture.query(vec![(IdentifierKind::Msisdn, target.clone())], 2);
    query.categories = [Category::Traffic].into();
    let (found, stats) = engine.find(&query).unwrap();
    assert!(!found.is_empty());
    assert_eq!(ids(&found), ground_truth(&fixture.records, &query));
    assert_eq!(stats.files_indexed, stats.files);
    for record in &found {
        assert!(record.start_time.0 >= query.from.0 && record.start_time.0 <= query.to.0);
        assert!(record.identifiers.iter().all(|(f, _)| f.category() == Category::Traffic));
        assert!(record.src_port.is_none() && record.dst_port.is_none());
        assert!(record.preserved_under.is_none());
    }
}

#[test]
fn sip_users_that_differ_only_in_case_are_found_apart() {
    let vault = TestVault::new(noon());
    let day = vault.now().format("%Y-%m-%d").to_string();
    let record = |id: &str, sip: &str| {
        format!(
            r#"{{"record_id":"{id}","service":"voice","start_time":"{day}T08:00:00Z","calling_number":"+4520000001","sip_uri":"{sip}"}}"#
        )
        .into_bytes()
    };
    let payloads = [
        record("upper", "sip:Alice@Example.COM"),
        record("lower", "sip:alice@example.com"),
        record("shouted", "SIP:alice@EXAMPLE.com"),
    ];
    assert_eq!(vault.ingest_payloads(payloads).written, 3);

    let engine = LookupEngine::new(vault.data(), Arc::clone(&vault.keys));
    let find = |target: &str| {
        let value = canonical_value(IdentifierKind::Sip, target).unwrap();
        let query = Query {
            targets: vec![(IdentifierKind::Sip, value)],
            from: TimestampMicros::from_datetime(vault.now() - chrono::Duration::days(1)),
            to: TimestampMicros::from_datetime(vault.now()),
            categories: [Category::Traffic].into(),
            preserved: vec![],
        };
        engine.find(&query).unwrap().0
    };
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    let alice_upper = find("sip:Alice@Example.COM");
    assert_eq!(ids(&alice_upper), set(&["upper"]), "the user part is case-sensitive");
    assert_eq!(ids(&find("sip:alice@example.com")), set(&["lower", "shouted"]), "scheme and host are not");
    assert_eq!(ids(&find("SIP:alice@EXAMPLE.com")), set(&["lower", "shouted"]));
    let disclosed: Vec<&str> = alice_upper[0]
        .identifiers
        .iter()
        .filter(|(field, _)| *field == IdentifierField::SipUri)
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(disclosed, ["sip:Alice@example.com"], "stored with its user as written, its host lower-cased");
}

#[test]
fn a_sealed_column_null_in_every_row_read_is_not_read_and_nothing_is_missed() {
    let vault = TestVault::new(noon());
    let day = |days_ago: i64| (vault.now() - chrono::Duration::days(days_ago)).format("%Y-%m-%d").to_string();
    let record = |id: &str, day: &str, redirecting: &str| {
        format!(
            r#"{{"record_id":"{id}","service":"voice","start_time":"{day}T08:00:00Z","calling_number":"+4520000001","called_number":"+4520000002"{redirecting},"imsi":"238010000000001"}}"#
        )
        .into_bytes()
    };
    // Yesterday without a redirecting number, today with one; neither has
    // a SIP identity.
    let payloads =
        [record("plain", &day(1), ""), record("redirected", &day(0), r#","redirecting_number":"+4520000003""#)];
    assert_eq!(vault.ingest_payloads(payloads).written, 2);

    let engine = LookupEngine::new(vault.data(), Arc::clone(&vault.keys));
    let query = Query {
        targets: vec![(IdentifierKind::Msisdn, "+4520000001".into())],
        from: TimestampMicros::from_datetime(vault.now() - chrono::Duration::days(2)),
        to: TimestampMicros::from_datetime(vault.now()),
        categories: [Category::Traffic].into(),
        preserved: vec![],
    };
    let (found, stats) = engine.find(&query).unwrap();
    assert_eq!(stats.files_indexed, 2);
    // Of the four traffic columns, yesterday's file has two that hold
    // values, today's three.
    assert_eq!(stats.sealed_chunks_read, 2 + 3);
    let fields = |id: &str| -> BTreeSet<IdentifierField> {
        found.iter().filter(|r| r.record_id == id).flat_map(|r| r.identifiers.iter().map(|(f, _)| *f)).collect()
    };
    assert_eq!(fields("plain"), [IdentifierField::CallingNumber, IdentifierField::CalledNumber].into());
    assert_eq!(
        fields("redirected"),
        [IdentifierField::CallingNumber, IdentifierField::CalledNumber, IdentifierField::RedirectingNumber].into()
    );
    let redirected = found.iter().find(|r| r.record_id == "redirected").unwrap();
    assert!(redirected.identifiers.contains(&(IdentifierField::RedirectingNumber, "+4520000003".into())));
}

#[test]
fn times_changed_in_place_are_refused_even_in_a_file_the_engine_has_cached() {
    let fixture = Fixture::new(17);
    let engine = LookupEngine::new(fixture.data(), fixture.keys());
    let target = fixture.generator.subscribers()[0].msisdn.clone();
    let query = fixture.query(vec![(IdentifierKind::Msisdn, target)], 5);
    let (before, _) = engine.find(&query).unwrap();
    assert!(!before.is_empty());
    assert_eq!(ids(&before), ground_truth(&fixture.records, &query));

    // Someone who can write the data directory changes the start times of
    // every file in place (a bit at the end of each chunk: the delta-packed
    // values still decode, to other times) and sets each file's
    // modification time back, so that size and mtime are as cached.
    let flip = || {
        for path in fixture.data_files() {
            let reader =
                parquet::file::serialized_reader::SerializedFileReader::new(std::fs::File::open(&path).unwrap());
            let metadata = parquet::file::reader::FileReader::metadata(&reader.unwrap()).clone();
            let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
            let mut bytes = std::fs::read(&path).unwrap();
            for group in metadata.row_groups() {
                let chunk = group.columns().iter().find(|c| c.column_descr().name() == "start_time").unwrap();
                let (start, len) = chunk.byte_range();
                bytes[(start + len - 1) as usize] ^= 1;
            }
            std::fs::write(&path, &bytes).unwrap();
            std::fs::File::options().write(true).open(&path).unwrap().set_modified(modified).unwrap();
        }
    };
    flip();
    let error = engine.find(&query).unwrap_err().to_string();
    assert!(error.contains("start_time of row group 0 is not the one written with the companion"), "{error}");

    // Put back, the files are read again and answer as before.
    flip();
    let (after, _) = engine.find(&query).unwrap();
    assert_eq!(ids(&after), ids(&before));
}

/// A data file's page index (where each page of a chunk lies, and its first
/// row) lies outside both the chunks and the footer, which the companion
/// authenticates. Someone who can write the data directory swaps the places
/// of neighbouring pages of the start times and record ids, keeping each
/// page's first row: the chunks and the footer are unchanged, but read
/// through that index, rows would take other rows' times and ids. The
/// index is checked against the pages of the digested chunk, and the file
/// refused.
#[test]
fn a_page_index_edited_to_give_rows_other_rows_values_is_refused() {
    let parquet = ParquetConfig { row_group_rows: 1_999, lookup_page_rows: 64, ..ParquetConfig::default() };
    let fixture = Fixture::with(29, parquet);
    let target = fixture.generator.subscribers()[5].msisdn.clone();
    let query = fixture.query(vec![(IdentifierKind::Msisdn, target)], 4);
    let truth = ground_truth(&fixture.records, &query);
    assert!(truth.len() > 3, "a subscriber with traffic");
    let (before, _) = LookupEngine::new(fixture.data(), fixture.keys()).find(&query).unwrap();
    assert_eq!(ids(&before), truth);

    let saved: Vec<(PathBuf, Vec<u8>)> =
        fixture.data_files().into_iter().map(|path| (path.clone(), std::fs::read(&path).unwrap())).collect();
    let mut swapped = 0;
    for (path, bytes) in &saved {
        let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
            .parse_and_finish(&bytes::Bytes::from(bytes.clone()))
            .unwrap();
        let mut edited = bytes.clone();
        for group in metadata.row_groups() {
            for chunk in group.columns() {
                if ![cdrvault::storage::schema::START_TIME, cdrvault::storage::schema::RECORD_ID]
                    .contains(&chunk.column_descr().name())
                {
                    continue;
                }
                let start = chunk.offset_index_offset().unwrap() as usize;
                let end = start + chunk.offset_index_length().unwrap() as usize;
                let (index, pairs) = swap_page_places(&bytes[start..end]);
                edited[start..end].copy_from_slice(&index);
                swapped += pairs;
            }
        }
        std::fs::write(path, &edited).unwrap();
    }
    assert!(swapped > 100, "pages swapped: {swapped}");
    // Read directly or through the parquet crate's reader: refused.
    for engine in [
        LookupEngine::new(fixture.data(), fixture.keys()),
        LookupEngine::new(fixture.data(), fixture.keys()).without_direct_reads(),
    ] {
        match engine.find(&query) {
            Err(error) => assert!(error.to_string().contains("page index"), "{error}"),
            Ok((found, _)) => panic!("{} records answered, {} of them the truth", found.len(), {
                found.iter().filter(|r| truth.contains(&r.record_id)).count()
            }),
        }
    }

    // Put back, the files answer as before.
    for (path, bytes) in &saved {
        std::fs::write(path, bytes).unwrap();
    }
    let (after, _) = LookupEngine::new(fixture.data(), fixture.keys()).find(&query).unwrap();
    assert_eq!(ids(&after), truth);
}

/// An offset index (thrift compact protocol: a struct whose field 1 is a
/// list of page locations, each `offset: i64, compressed_page_size: i32,
/// first_row_index: i64`) with the offset and size of pages 2k and 2k+1
/// swapped, of the same length; and the pairs swapped. The last page,
/// usually shorter, stays in place.
fn swap_page_places(index: &[u8]) -> (Vec<u8>, usize) {
    let varint_end = |bytes: &[u8], mut at: usize| {
        while bytes[at] & 0x80 != 0 {
            at += 1;
        }
        at + 1
    };
    assert_eq!(index[0], 0x19, "field 1, a list");
    let (count, mut at) = match index[1] >> 4 {
        15 => {
            let end = varint_end(index, 2);
            let mut count = 0usize;
            for (shift, byte) in index[2..end].iter().enumerate() {
                count |= usize::from(byte & 0x7f) << (7 * shift);
            }
            (count, end)
        }
        short => (usize::from(short), 2),
    };
    assert_eq!(index[1] & 0x0f, 12, "a list of structs");
    // Each location: its place (offset and size fields) and the rest (first
    // row and the struct's stop).
    let mut places = Vec::new();
    for _ in 0..count {
        let start = at;
        assert_eq!(index[at], 0x16, "offset: field 1, i64");
        at = varint_end(index, at + 1);
        assert_eq!(index[at], 0x15, "compressed_page_size: field 2, i32");
        at = varint_end(index, at + 1);
        let place = start..at;
        assert_eq!(index[at], 0x16, "first_row_index: field 3 (delta 1), i64");
        at = varint_end(index, at + 1);
        assert_eq!(index[at], 0, "the struct's end");
        at += 1;
        places.push((place, at));
    }
    let mut out = index[..places.first().map_or(at, |(p, _)| p.start)].to_vec();
    let pairs = count.saturating_sub(1) / 2;
    for i in 0..count {
        let partner = match i {
            _ if i / 2 >= pairs => i,
            _ if i % 2 == 0 => i + 1,
            _ => i - 1,
        };
        out.extend_from_slice(&index[places[partner].0.clone()]);
        out.extend_from_slice(&index[places[i].0.end..places[i].1]);
    }
    out.extend_from_slice(&index[at..]);
    assert_eq!(out.len(), index.len());
    (out, pairs)
}
