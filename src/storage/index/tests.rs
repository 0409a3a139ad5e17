//! The token index's tests: entries, prefixes, and rows found through
//! the page index, read straight from the pages or through the reader.

use super::*;
use arrow_array::Int64Array;

/// The entries of a data file whose rows are `batch`.
fn entries(batch: &RecordBatch) -> Vec<(i32, u32)> {
    let mut keys = Vec::new();
    add_keys(batch, 0, &mut keys);
    sorted_entries(keys)
}

fn batch(columns: &[(&str, Vec<Option<i64>>)]) -> RecordBatch {
    let fields: Vec<Field> = columns.iter().map(|(n, _)| Field::new(*n, DataType::Int64, true)).collect();
    let arrays: Vec<Arc<dyn Array>> =
        columns.iter().map(|(_, v)| Arc::new(Int64Array::from(v.clone())) as Arc<dyn Array>).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
}

#[test]
fn entries_are_sorted_signed_deduplicated_and_skip_cells() {
    let b = batch(&[
        ("calling_number_token", vec![Some(5 << 32), Some(-3 << 32), None]),
        ("redirecting_number_token", vec![Some(5 << 32), None, Some((7 << 32) + 99)]),
        ("cell_id_start_token", vec![Some(1 << 32), Some(1 << 32), Some(1 << 32)]),
    ]);
    assert_eq!(entries(&b), vec![(-3, 0), (5, 0), (7, 0)]);
    // Rows 0-7 are granule 0, rows 8-15 granule 1.
    let many = batch(&[("calling_number_token", (0..20).map(|i| Some((i % 2) << 32)).collect())]);
    assert_eq!(entries(&many), vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
}

#[test]
fn keys_added_part_by_part_with_their_first_row_give_the_entries_of_the_whole() {
    let whole = batch(&[("called_number_token", (0..100).map(|i| Some((i % 7) << 32)).collect())]);
    let mut keys = Vec::new();
    add_keys(&whole.slice(0, 37), 0, &mut keys);
    add_keys(&whole.slice(37, 63), 37, &mut keys);
    assert_eq!(sorted_entries(keys), entries(&whole));
    // Without the offset, the second part's rows would be misplaced.
    let mut wrong = Vec::new();
    add_keys(&whole.slice(0, 37), 0, &mut wrong);
    add_keys(&whole.slice(37, 63), 0, &mut wrong);
    assert_ne!(sorted_entries(wrong), entries(&whole));
}

#[test]
fn the_pages_of_a_prefix_are_those_a_scan_of_every_page_finds() {
    // Sorted pages: a prefix may span several, repeat, or fall between.
    let pages = [(-9, -5), (-5, -5), (-5, 0), (2, 4), (4, 4), (4, 9), (11, 20)];
    let bounds = |page: usize| pages.get(page).copied();
    for prefix in -12..24 {
        let scanned: Vec<usize> = (0..pages.len()).filter(|&p| pages[p].0 <= prefix && prefix <= pages[p].1).collect();
        assert_eq!(pages_holding(pages.len(), bounds, &[prefix]), scanned, "prefix {prefix}");
    }
    assert_eq!(pages_holding(pages.len(), bounds, &[4, -5, 4]), vec![0, 1, 2, 3, 4, 5], "merged, in order");
    // A page without bounds is read for whatever its neighbours
    // leave room for, and never hides the pages that hold a prefix.
    let gap = |page: usize| if page == 1 { None } else { pages.get(page).copied() };
    for prefix in -12..24 {
        let found = pages_holding(pages.len(), gap, &[prefix]);
        let scanned = (0..pages.len()).filter(|&p| pages[p].0 <= prefix && prefix <= pages[p].1);
        assert!(scanned.into_iter().all(|p| found.contains(&p)), "prefix {prefix}: {found:?}");
    }
    assert!(pages_holding(pages.len(), gap, &[-5]).contains(&1), "where its neighbours leave room");
    assert_eq!(pages_holding(pages.len(), gap, &[11]), vec![6], "not where the search passes it by");
}

/// A token whose high bits spread `i` of `n` over the whole range.
fn spread(i: i64, n: i64) -> i64 {
    (i - n / 2) * (u64::MAX / n as u64) as i64
}

#[test]
fn rows_are_found_through_the_page_index_only_where_the_token_is() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("part-x.parquet");
    // 20,000 rows: several index pages; row r holds token r % 5000.
    let tokens: Vec<Option<i64>> = (0..20_000i64).map(|i| Some(spread(i % 5_000, 5_000))).collect();
    let b = batch(&[("calling_number_token", tokens)]);
    let key = KeyId::new("tk-0001").unwrap();
    let described = IndexedFile { name: "part-x.parquet", bytes: 1, rows: 20_000, token_key_id: &key };
    write(&layout::index_path(&data), entries(&b), &described).unwrap();
    let index = IndexReader::open(&data).unwrap().unwrap();
    assert_eq!(index.prefix_bits, 21, "log2 of 20,000 entries, rounded up, and 6");
    assert!(index.describes("part-x.parquet", 1, 20_000));
    assert!(!index.describes("part-y.parquet", 1, 20_000));
    let (rows, pages) = index.rows_for(&[spread(17, 5_000)]).unwrap();
    let granule = |row: u32| (row / 8 * 8..row / 8 * 8 + 8).collect::<Vec<u32>>();
    let expected: Vec<u32> = [17, 5_017, 10_017, 15_017].into_iter().flat_map(granule).collect();
    assert_eq!(rows, expected, "the granules of rows 17, 5017, 10017 and 15017");
    assert_eq!(pages, 1, "one page of the sorted index holds the token");
    assert!(index.rows_for(&[spread(17, 5_000) + (1 << 50)]).unwrap().0.is_empty(), "another prefix");
    // A token sharing the kept bits finds the same granules, to be
    // dropped when the lookup confirms its rows.
    assert_eq!(index.rows_for(&[spread(17, 5_000) + (1 << 40)]).unwrap().0, expected);
    assert!(IndexReader::open(&dir.path().join("other.parquet")).unwrap().is_none());
}

/// The index's pages read straight from the file give the rows the
/// parquet crate's reader gives, for tokens present, absent, and
/// sharing a prefix, over an index of many pages.
#[test]
fn rows_read_straight_from_the_index_pages_are_the_readers_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("part-d.parquet");
    let present: Vec<i64> = (0..30_000i64).map(|i| spread(i * 7_919 % 12_000, 12_000)).collect();
    let b = batch(&[("calling_number_token", present.iter().copied().map(Some).collect())]);
    let key = KeyId::new("tk-0001").unwrap();
    let described = IndexedFile { name: "part-d.parquet", bytes: 1, rows: 30_000, token_key_id: &key };
    write(&layout::index_path(&data), entries(&b), &described).unwrap();
    let index = IndexReader::open(&data).unwrap().unwrap();
    let mut searched = 0;
    for i in 0..3_000i64 {
        let tokens = [present[(i * 13) as usize % present.len()], spread(i, 3_000) + i, spread(i, 3_000) + (1 << 40)];
        for token in tokens.iter().take(1 + (i % 3) as usize) {
            let prefixes = [shortened(prefix(*token), index.prefix_bits)];
            let chosen = index.pages_of(&prefixes);
            let direct = index.rows_direct(&chosen, &prefixes).unwrap().expect("the writer's pages are read directly");
            assert_eq!(direct, index.rows_through_reader(&chosen, &prefixes).unwrap(), "token {token}");
            searched += usize::from(!direct.is_empty());
        }
    }
    assert!(searched > 3_000, "tokens found: {searched}");
}

#[test]
fn an_index_keeps_six_bits_beyond_log2_of_its_entries() {
    assert_eq!(prefix_bits(0), 16);
    assert_eq!(prefix_bits(1_000), 16);
    assert_eq!(prefix_bits(1 << 14), 20);
    assert_eq!(prefix_bits((1 << 14) + 1), 21);
    assert_eq!(prefix_bits(340_000), 25);
    assert_eq!(prefix_bits(1 << 30), 32);
    // Shortening keeps the signed order of the prefixes.
    let prefixes = [i32::MIN, -70_000, -1, 0, 65_535, 65_536, i32::MAX];
    for bits in [16, 21, 32] {
        let cut: Vec<i32> = prefixes.iter().map(|p| shortened(*p, bits)).collect();
        assert!(cut.windows(2).all(|w| w[0] <= w[1]), "{bits}: {cut:?}");
    }
}

#[test]
fn an_index_of_version_1_with_32_bit_prefixes_still_finds_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("part-v1.parquet");
    let entries = [(prefix(spread(3, 10)), 0i32), (prefix(spread(5, 10)), 2)];
    let columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(Int32Array::from_iter_values(entries.iter().map(|e| e.0))),
        Arc::new(Int32Array::from_iter_values(entries.iter().map(|e| e.1))),
    ];
    let batch = RecordBatch::try_new(index_schema(), columns).unwrap();
    let meta = [
        (meta::VERSION, "1"),
        (meta::DATA_FILE, "part-v1.parquet"),
        (meta::DATA_BYTES, "1"),
        (meta::DATA_ROWS, "24"),
        (meta::GRANULE_ROWS, "8"),
    ];
    let properties = WriterProperties::builder()
        .set_key_value_metadata(Some(meta.iter().map(|(k, v)| KeyValue::new(k.to_string(), v.to_string())).collect()))
        .build();
    let file = File::create(layout::index_path(&data)).unwrap();
    let mut writer = ArrowWriter::try_new(file, index_schema(), Some(properties)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let index = IndexReader::open(&data).unwrap().unwrap();
    assert_eq!(index.prefix_bits, 32);
    assert_eq!(index.rows_for(&[spread(5, 10)]).unwrap().0, (16..24).collect::<Vec<u32>>());
    assert!(index.rows_for(&[spread(5, 10) + (1 << 40)]).unwrap().0.is_empty(), "all 32 bits count");
}
