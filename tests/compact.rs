//! Compaction of closed days: many batch files become one sorted, indexed
//! file per day, with exactly the same rows and the same lookup answers,
//! and an interrupted switch never shows a row twice or not at all.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use chrono::{TimeZone, Utc};

use cdrvault::access::lookup::{FoundRecord, LookupEngine, Query};
use cdrvault::keys::KeyStore;
use cdrvault::model::{Category, IdentifierKind, PartitionDate, TimestampMicros};
use cdrvault::ops::metrics::Metrics;
use cdrvault::storage::compact::{self, Compactor};
use cdrvault::storage::config::ParquetConfig;
use cdrvault::storage::layout::{self, MANIFEST_SUFFIX};
use cdrvault::storage::read;
use cdrvault::storage::write::ParquetWriter;
use cdrvault::tools::synth::{Generator, SynthConfig};
use common::TestVault;

fn record_ids(data: &std::path::Path, keys: &KeyStore) -> Vec<String> {
    let mut ids = Vec::new();
    for day in read::list_days(data).unwrap() {
        let key = keys.existing_day_key(day).unwrap().unwrap();
        for file in read::list_files(data, day).unwrap() {
            for batch in read::read_file(&file, Some(&key), &["record_id", "calling_number_sealed"]).unwrap() {
                let column = batch.column(0).as_string::<i32>();
                ids.extend((0..batch.num_rows()).map(|r| column.value(r).to_string()));
            }
        }
    }
    ids.sort();
    ids
}

#[test]
fn a_compacted_day_holds_the_same_rows_and_answers_the_same_lookups() {
    let until = Utc.with_ymd_and_hms(2026, 11, 24, 23, 0, 0).unwrap();
    let vault = TestVault::new(until);
    let (data, keys) = (vault.data(), Arc::clone(&vault.keys));
    let mut generator = Generator::new(SynthConfig { seed: 3, subscribers: 300, days: 2, until, invalid_ratio: 0.0 });
    let mut records = Vec::new();
    for _ in 0..4 {
        let batch: Vec<_> = (0..2_500).map(|_| generator.next_record()).collect();
        vault.ingest(&batch);
        records.extend(batch);
    }
    let days = read::list_days(&data).unwrap();
    assert!(days.len() >= 2);
    assert!(days.iter().all(|d| read::list_files(&data, *d).unwrap().len() == 4), "one file per batch and day");

    let target = generator.subscribers()[2].msisdn.clone();
    let query = Query {
        targets: vec![(IdentifierKind::Msisdn, target.clone())],
        from: TimestampMicros::from_datetime(until - chrono::Duration::days(3)),
        to: TimestampMicros::from_datetime(until),
        categories: [Category::Traffic].into(),
        preserved: vec![],
    };
    let engine = LookupEngine::new(data.clone(), Arc::clone(&keys));
    let ids = |found: &[FoundRecord]| found.iter().map(|r| r.record_id.clone()).collect::<BTreeSet<_>>();
    let (before, _) = engine.find(&query).unwrap();
    let truth: BTreeSet<String> =
        records.iter().filter(|r| r.involves_number(&target)).map(|r| r.record_id.clone()).collect();
    assert_eq!(ids(&before), truth);
    let rows_before = record_ids(&data, &keys);

    let writer = ParquetWriter::new(&data, ParquetConfig::default());
    let mut rows = 0;
    for day in &days {
        let report = compact::compact_day(&writer, &keys, *day, 1_800_000_000_000).unwrap();
        assert_eq!((report.files_before, report.files_after), (4, 1), "{report:?}");
        rows += report.rows;
        let dir = layout::day_dir(&data, *day);
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 3, "one data file, its index and companion, no manifest or source left: {names:?}");
    }
    assert_eq!(rows as usize, records.len());
    assert_eq!(record_ids(&data, &keys), rows_before, "the same rows, sealed columns readable");

    // The warm engine (its cache knew the old files) and a fresh one agree.
    let (after, stats) = engine.find(&query).unwrap();
    assert_eq!(ids(&after), truth);
    assert_eq!(after.len(), before.len(), "no record twice");
    assert_eq!(stats.files_indexed, stats.files, "the compacted files are indexed: {stats:?}");
    let (fresh, _) = LookupEngine::new(data.clone(), Arc::clone(&keys)).find(&query).unwrap();
    assert_eq!(ids(&fresh), truth);

    // A second run has nothing to do.
    let again = compact::compact_day(&writer, &keys, days[0], 1_800_000_000_001).unwrap();
    assert_eq!((again.files_before, again.files_after, again.rows), (1, 1, 0));
}

#[test]
fn an_interrupted_switch_shows_either_the_sources_or_the_new_file() {
    let until = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
    let vault = TestVault::new(until);
    let data = vault.data();
    let mut generator = Generator::new(SynthConfig { seed: 4, subscribers: 50, days: 0, until, invalid_ratio: 0.0 });
    for _ in 0..3 {
        vault.ingest(&(0..100).map(|_| generator.next_record()).collect::<Vec<_>>());
    }
    let day = read::list_days(&data).unwrap()[0];
    let dir = layout::day_dir(&data, day);
    let files = read::list_files(&data, day).unwrap();
    assert_eq!(files.len(), 3);
    let name = |i: usize| files[i].file_name().unwrap().to_string_lossy().into_owned();
    let stem = |i: usize| name(i).strip_suffix(".parquet").unwrap().to_string();

    // Cut before the new file was published: the sources are the day.
    let pending = dir.join(format!("_part-9999999999999-00000000-000000{}", MANIFEST_SUFFIX));
    std::fs::write(&pending, format!("{}\n{}\n", name(0), name(1))).unwrap();
    assert_eq!(read::list_files(&data, day).unwrap(), files);

    // Cut after it was published: only the new file (here, the third).
    let published = dir.join(format!("_{}{}", stem(2), MANIFEST_SUFFIX));
    std::fs::write(&published, format!("{}\n{}\n", name(0), name(1))).unwrap();
    assert_eq!(read::list_files(&data, day).unwrap(), vec![files[2].clone()]);

    // Recovery finishes the one and drops the other.
    compact::recover(&dir).unwrap();
    assert!(!pending.exists() && !published.exists());
    assert!(!files[0].exists() && !files[1].exists() && files[2].exists());
    assert!(!layout::index_path(&files[0]).exists(), "sources go with their index");
    assert!(!layout::sealed_path(&files[0]).exists(), "and their companion");
    assert!(layout::sealed_path(&files[2]).exists());
    assert_eq!(read::list_files(&data, day).unwrap(), vec![files[2].clone()]);
}

/// The files of each day, by day.
fn files_per_day(data: &std::path::Path) -> std::collections::BTreeMap<PartitionDate, usize> {
    read::list_days(data).unwrap().into_iter().map(|d| (d, read::list_files(data, d).unwrap().len())).collect()
}

#[test]
fn the_compactor_merges_closed_days_only_and_reports_them_as_metrics() {
    let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
    let vault = TestVault::new(now);
    let (data, keys, clock) = (vault.data(), Arc::clone(&vault.keys), Arc::clone(&vault.clock));
    // Three batches over today and the two days before, and three of a day
    // 360 days back: inside the retention window, but too near its horizon
    // to be compacted.
    let recent = SynthConfig { seed: 5, subscribers: 80, days: 2, until: now, invalid_ratio: 0.0 };
    let old = SynthConfig { until: now - chrono::Duration::days(360), days: 0, ..recent.clone() };
    let mut ids = Vec::new();
    for config in [recent, old] {
        let mut generator = Generator::new(config);
        for _ in 0..3 {
            let batch: Vec<_> = (0..300).map(|_| generator.next_record()).collect();
            ids.extend(batch.iter().map(|r| r.record_id.clone()));
            vault.ingest(&batch);
        }
    }
    ids.sort();
    let today = TimestampMicros::from_datetime(now).partition_date();
    let near_horizon = |d: &PartitionDate| d.days_since_epoch() < today.days_since_epoch() - 300;
    let before = files_per_day(&data);
    assert!(before.values().all(|n| *n == 3), "three files a day: {before:?}");
    let closed: Vec<_> = before.keys().filter(|d| **d != today && !near_horizon(d)).copied().collect();
    assert!(closed.len() >= 2 && before.keys().any(near_horizon), "{before:?}");

    let metrics = Metrics::new();
    let compactor =
        Compactor::new(ParquetWriter::new(&data, ParquetConfig::default()), Arc::clone(&keys), clock.clone(), 365)
            .with_metrics(Arc::clone(&metrics));
    let reports = compactor.run(None).unwrap();
    assert_eq!(reports.len(), closed.len(), "only the closed days away from the horizon: {reports:?}");
    let after = files_per_day(&data);
    for (day, files) in &after {
        let expected = if closed.contains(day) { 1 } else { 3 };
        assert_eq!(*files, expected, "{day}: {after:?}");
    }
    assert_eq!(record_ids(&data, &keys), ids, "every record once, sealed columns readable");
    let text = metrics.encode();
    let value = |name: &str| common::metric(&text, name);
    assert_eq!(value("cdrvault_compaction_day_partitions_total"), Some(closed.len() as f64));
    assert_eq!(value("cdrvault_compaction_files_replaced_total"), Some(3.0 * closed.len() as f64));
    assert_eq!(value("cdrvault_compaction_failures_total"), Some(0.0));
    assert_eq!(value("cdrvault_compaction_last_success_timestamp_seconds"), Some(now.timestamp() as f64));

    // A day later, yesterday is closed too; what is compacted stays as it is.
    clock.advance(chrono::Duration::days(1));
    let reports = compactor.run(None).unwrap();
    assert!(reports.iter().all(|r| r.day == Some(today) || r.files_after == r.files_before), "{reports:?}");
    assert_eq!(files_per_day(&data)[&today], 1, "today became a closed day");
    assert!(files_per_day(&data).iter().all(|(d, n)| !near_horizon(d) || *n == 3), "still too near the horizon");
    let days_total = common::metric(&metrics.encode(), "cdrvault_compaction_day_partitions_total");
    assert_eq!(days_total, Some((closed.len() + 1) as f64));
}

#[test]
fn large_days_are_merged_batch_by_batch_into_sorted_row_groups_with_a_working_index() {
    // 23:59:59, so that a day's worth of records falls on one date.
    let until = Utc.with_ymd_and_hms(2026, 11, 24, 23, 59, 59).unwrap();
    let vault = TestVault::new(until);
    let (data, keys) = (vault.data(), Arc::clone(&vault.keys));
    let mut generator = Generator::new(SynthConfig { seed: 6, subscribers: 2_000, days: 0, until, invalid_ratio: 0.0 });
    let mut records = Vec::new();
    for _ in 0..3 {
        // Each source file is larger than a merge batch (8,192 rows).
        let batch: Vec<_> = (0..10_000).map(|_| generator.next_record()).collect();
        vault.ingest(&batch);
        records.extend(batch);
    }
    let day = TimestampMicros::from_datetime(until).partition_date();
    let sources = read::list_files(&data, day).unwrap();
    assert_eq!(sources.len(), 3);
    let rows_before = record_ids(&data, &keys);

    // Small row groups, so the new file has several, filled across merge batches.
    let writer = ParquetWriter::new(&data, ParquetConfig { row_group_rows: 4_096, ..ParquetConfig::default() });
    let report = compact::compact_day(&writer, &keys, day, 1_800_000_000_000).unwrap();
    assert_eq!((report.files_before, report.files_after), (3, 1), "{report:?}");
    assert_eq!(record_ids(&data, &keys), rows_before, "every row once, sealed columns readable");

    let file = read::list_files(&data, day).unwrap().remove(0);
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(std::fs::File::open(&file).unwrap());
    let groups = parquet::file::reader::FileReader::metadata(&reader.unwrap()).num_row_groups();
    assert!(groups >= 7, "{groups} row groups of at most 4,096 rows");
    let tokens: Vec<Option<i64>> = read::read_file(&file, None, &["calling_number_token"])
        .unwrap()
        .iter()
        .flat_map(|b| {
            let column = b.column(0).as_primitive::<arrow_array::types::Int64Type>();
            (0..column.len()).map(|r| column.is_valid(r).then(|| column.value(r))).collect::<Vec<_>>()
        })
        .collect();
    let key = |t: &Option<i64>| (t.is_none(), t.unwrap_or(0));
    assert!(tokens.windows(2).all(|w| key(&w[0]) <= key(&w[1])), "rows sorted by calling token, nulls last");

    // Lookups through the new file's index find exactly the ground truth.
    let engine = LookupEngine::new(data.clone(), Arc::clone(&keys));
    for subscriber in [0, 7, 500, 1_999] {
        let target = generator.subscribers()[subscriber].msisdn.clone();
        let query = Query {
            targets: vec![(IdentifierKind::Msisdn, target.clone())],
            from: TimestampMicros::from_datetime(until - chrono::Duration::days(1)),
            to: TimestampMicros::from_datetime(until),
            categories: [Category::Traffic].into(),
            preserved: vec![],
        };
        let (found, stats) = engine.find(&query).unwrap();
        assert_eq!(stats.files_indexed, stats.files, "{stats:?}");
        let truth: BTreeSet<String> = records
            .iter()
            .filter(|r| {
                r.involves_number(&target)
                    && TimestampMicros::from_datetime(r.start_time.unwrap()).partition_date() == day
            })
            .map(|r| r.record_id.clone())
            .collect();
        assert_eq!(found.iter().map(|r| r.record_id.clone()).collect::<BTreeSet<_>>(), truth);
    }
}

#[test]
fn a_day_that_cannot_be_merged_stays_as_it_was_and_does_not_hold_back_the_others() {
    let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
    let vault = TestVault::new(now);
    let (data, keys, clock) = (vault.data(), Arc::clone(&vault.keys), Arc::clone(&vault.clock));
    let mut generator =
        Generator::new(SynthConfig { seed: 7, subscribers: 80, days: 3, until: now, invalid_ratio: 0.0 });
    for _ in 0..3 {
        let batch: Vec<_> = (0..2_000).map(|_| generator.next_record()).collect();
        vault.ingest(&batch);
    }
    let today = TimestampMicros::from_datetime(now).partition_date();
    let closed: Vec<_> = read::list_days(&data).unwrap().into_iter().filter(|d| *d != today).collect();
    assert!(closed.len() >= 2);
    // Damage the middle of the companion of one file of the first closed
    // day: the file's footer still reads, its sealed pages do not verify.
    let damaged_day = closed[0];
    let damaged = read::list_files(&data, damaged_day).unwrap().remove(1);
    let victim = layout::sealed_path(&damaged);
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 256] {
        *b ^= 0x5a;
    }
    std::fs::write(&victim, bytes).unwrap();
    let listing = |day| {
        let mut names: Vec<String> = std::fs::read_dir(layout::day_dir(&data, day))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let damaged_before = listing(damaged_day);

    let metrics = Metrics::new();
    let compactor = Compactor::new(ParquetWriter::new(&data, ParquetConfig::default()), Arc::clone(&keys), clock, 365)
        .with_metrics(Arc::clone(&metrics));
    let error = compactor.run(None).unwrap_err().to_string();
    let name = damaged.file_name().unwrap().to_string_lossy().into_owned();
    assert!(error.contains(&name), "the error names the damaged file: {error}");
    assert_eq!(listing(damaged_day), damaged_before, "sources intact, no manifest, no temporary, no new file");
    for day in &closed[1..] {
        assert_eq!(read::list_files(&data, *day).unwrap().len(), 1, "{day} compacted all the same");
    }
    let text = metrics.encode();
    assert_eq!(common::metric(&text, "cdrvault_compaction_failures_total"), Some(1.0), "{text}");
    assert_eq!(
        common::metric(&text, "cdrvault_compaction_day_partitions_total"),
        Some((closed.len() - 1) as f64),
        "{text}"
    );
    let last_success = common::metric(&text, "cdrvault_compaction_last_success_timestamp_seconds");
    assert_eq!(last_success, Some(0.0), "no success yet: {text}");
}

#[test]
fn a_manifest_naming_anything_but_a_data_file_of_its_day_deletes_nothing_outside_it() {
    let until = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
    let vault = TestVault::new(until);
    let data = vault.data();
    let mut generator = Generator::new(SynthConfig { seed: 6, subscribers: 50, days: 0, until, invalid_ratio: 0.0 });
    for _ in 0..2 {
        vault.ingest(&(0..100).map(|_| generator.next_record()).collect::<Vec<_>>());
    }
    let day = read::list_days(&data).unwrap()[0];
    let dir = layout::day_dir(&data, day);
    let files = read::list_files(&data, day).unwrap();
    assert_eq!(files.len(), 2);
    let stem = |f: &std::path::Path| f.file_stem().unwrap().to_string_lossy().into_owned();

    // Files outside the day: beside the data directory (with an index, as a
    // data file would have), one level up inside it, and the master key.
    let outside = vault.root.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim.parquet");
    let victim_index = outside.join("_victim.index");
    let above = data.join("x.parquet");
    let master = vault.keys_dir().join("master.key");
    for file in [&victim, &victim_index, &above] {
        std::fs::write(file, b"not cdrvault's to delete").unwrap();
    }
    let master_before = std::fs::read(&master).unwrap();
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let nested = sub.join("part-1.parquet");
    std::fs::write(&nested, b"below the day").unwrap();

    // A manifest whose new file exists (the second data file), naming the
    // first data file and every one of those.
    let hostile = [
        victim.to_str().unwrap().to_string(),
        "../../x.parquet".to_string(),
        "sub/part-1.parquet".to_string(),
        master.to_str().unwrap().to_string(),
        "../../../keys/master.key".to_string(),
    ];
    let manifest = dir.join(format!("_{}{}", stem(&files[1]), MANIFEST_SUFFIX));
    let listed = [files[0].file_name().unwrap().to_string_lossy().into_owned()].into_iter().chain(hostile.clone());
    std::fs::write(&manifest, listed.collect::<Vec<_>>().join("\n") + "\n").unwrap();

    // Readers hide only the plain data file it names.
    assert_eq!(read::list_files(&data, day).unwrap(), vec![files[1].clone()]);

    // Recovery deletes that one, refuses and reports the others, and drops
    // the manifest.
    assert_eq!(compact::recover(&dir).unwrap(), hostile.len());
    assert!(!files[0].exists() && files[1].exists() && !manifest.exists());
    for file in [&victim, &victim_index, &above, &nested] {
        assert!(file.exists(), "{} was deleted", file.display());
    }
    assert_eq!(std::fs::read(&master).unwrap(), master_before, "the master key is untouched");

    // The start-up recovery and a compaction run refuse them the same way.
    std::fs::write(&manifest, hostile.join("\n") + "\n").unwrap();
    let found = cdrvault::storage::recover::remove_leftovers(&data).unwrap();
    assert_eq!(found.refused_manifest_entries, hostile.len() as u64);
    std::fs::write(&manifest, hostile.join("\n") + "\n").unwrap();
    let writer = ParquetWriter::new(&data, ParquetConfig::default());
    let report = compact::compact_day(&writer, &vault.keys, day, 1_800_000_000_000).unwrap();
    assert_eq!(report.refused_manifest_entries, hostile.len());
    assert!(!manifest.exists());
    for file in [&victim, &victim_index, &above, &nested, &files[1]] {
        assert!(file.exists(), "{} was deleted", file.display());
    }
    assert_eq!(std::fs::read(&master).unwrap(), master_before, "the master key is untouched");
}
