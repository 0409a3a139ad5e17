//! Direct reads against the parquet crate's own writer: rows written in
//! clear and encrypted read back exactly, and encrypted pages altered,
//! moved, or under another key or AAD refused.

use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::basic::ZstdLevel;
use parquet::encryption::decrypt::FileDecryptionProperties;
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use parquet::file::properties::WriterProperties;

use super::*;

const KEY: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
const PREFIX: &[u8] = b"2026-12-01/file.sealed.parquet";

/// 100 rows of a required and an optional string column, 7 rows a
/// page, zstd, with every third value of the optional one null.
fn rows() -> (Vec<String>, Vec<Option<String>>) {
    let ids = (0..100).map(|i| format!("record-{i:04}")).collect();
    let numbers = (0..100).map(|i| (i % 3 != 1).then(|| format!("+45{:08}", i * 7919))).collect();
    (ids, numbers)
}

fn written(encrypted: bool) -> (Bytes, ParquetMetaData) {
    let (ids, numbers) = rows();
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(StringArray::from(ids)) as Arc<dyn Array>),
        ("number", Arc::new(StringArray::from(numbers)) as Arc<dyn Array>),
    ])
    .unwrap();
    let mut properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
        .set_dictionary_enabled(false)
        .set_data_page_row_count_limit(7)
        .set_write_batch_size(7);
    if encrypted {
        let encryption = FileEncryptionProperties::builder(KEY.to_vec())
            .with_plaintext_footer(false)
            .with_aad_prefix(PREFIX.to_vec())
            .build()
            .unwrap();
        properties = properties.with_file_encryption_properties(encryption);
    }
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(properties.build())).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let bytes = Bytes::from(out);
    let mut options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
    if encrypted {
        let decryption =
            FileDecryptionProperties::builder(KEY.to_vec()).with_aad_prefix(PREFIX.to_vec()).build().unwrap();
        options = options.with_file_decryption_properties(decryption);
    }
    let metadata = ArrowReaderMetadata::load(&bytes, options).unwrap().metadata().as_ref().clone();
    (bytes, metadata)
}

fn read(
    bytes: &Bytes,
    metadata: &ParquetMetaData,
    cipher: Option<&PageCipher>,
    column: usize,
    rows: &[usize],
) -> Result<Option<Vec<Option<String>>>, ParquetError> {
    let chunk_meta = metadata.row_group(0).column(column);
    assert!(readable(chunk_meta, cipher.is_some()));
    let pages = metadata.page_index().unwrap().offset_index(0, column).unwrap().page_locations();
    assert!(pages.len() > 10, "pages of 7 rows");
    let chunk = Chunk {
        column: chunk_meta,
        pages,
        rows: metadata.row_group(0).num_rows() as usize,
        sealed: cipher.map(|c| (c, 0, column)),
    };
    Ok(column_rows(bytes, &chunk, rows)?.map(|values| match values {
        Values::Strings(strings) => strings,
        Values::Integers(_) => panic!("strings read as integers"),
    }))
}

#[test]
fn rows_read_from_their_pages_are_the_rows_written_in_clear_and_encrypted() {
    let (ids, numbers) = rows();
    let wanted = [0, 1, 6, 7, 8, 50, 51, 52, 97, 99];
    for encrypted in [false, true] {
        let (bytes, metadata) = written(encrypted);
        let cipher = PageCipher::of(&bytes, KEY, PREFIX).unwrap();
        assert_eq!(cipher.is_some(), encrypted, "only an encrypted footer has a page cipher");
        let ids_read = read(&bytes, &metadata, cipher.as_ref(), 0, &wanted).unwrap().unwrap();
        assert_eq!(ids_read, wanted.iter().map(|&r| Some(ids[r].clone())).collect::<Vec<_>>());
        let numbers_read = read(&bytes, &metadata, cipher.as_ref(), 1, &wanted).unwrap().unwrap();
        assert_eq!(numbers_read, wanted.iter().map(|&r| numbers[r].clone()).collect::<Vec<_>>());
        let every: Vec<usize> = (0..100).collect();
        assert_eq!(read(&bytes, &metadata, cipher.as_ref(), 1, &every).unwrap().unwrap(), numbers);
        assert!(read(&bytes, &metadata, cipher.as_ref(), 1, &[100]).is_err(), "a row beyond the group");
    }
}

#[test]
fn an_encrypted_page_altered_moved_or_under_another_key_is_refused() {
    let (bytes, metadata) = written(true);
    let wanted = [50];
    let cipher = PageCipher::of(&bytes, KEY, PREFIX).unwrap().unwrap();
    let other_key = PageCipher::of(&bytes, b"another key of thirty-two bytes!", PREFIX).unwrap().unwrap();
    assert!(read(&bytes, &metadata, Some(&other_key), 1, &wanted).is_err());
    let elsewhere = PageCipher::of(&bytes, KEY, b"2026-12-02/file.sealed.parquet").unwrap().unwrap();
    assert!(read(&bytes, &metadata, Some(&elsewhere), 1, &wanted).is_err(), "a companion moved to another day");

    let pages = metadata.page_index().unwrap().offset_index(0, 1).unwrap().page_locations().clone();
    let page = &pages[50 / 7];
    let mut altered = bytes.to_vec();
    altered[(page.offset + i64::from(page.compressed_page_size) - 20) as usize] ^= 1;
    assert!(read(&Bytes::from(altered), &metadata, Some(&cipher), 1, &wanted).is_err(), "an altered page");

    // Page 7 copied over page 8, which is longer or as long: its own
    // ordinal in the AAD no longer matches.
    let (from, to) = (&pages[7], &pages[8]);
    assert!(to.compressed_page_size >= from.compressed_page_size);
    let mut moved = bytes.to_vec();
    let source = bytes[from.offset as usize..(from.offset + i64::from(from.compressed_page_size)) as usize].to_vec();
    moved[to.offset as usize..to.offset as usize + source.len()].copy_from_slice(&source);
    assert!(read(&Bytes::from(moved), &metadata, Some(&cipher), 1, &[to.first_row_index as usize]).is_err());
    assert!(read(&bytes, &metadata, Some(&cipher), 1, &[to.first_row_index as usize]).is_ok());
}

#[test]
fn the_page_of_a_row_is_found_whether_or_not_pages_hold_equal_rows() {
    let locations = |firsts: &[i64]| -> Vec<PageLocation> {
        firsts
            .iter()
            .map(|first| PageLocation { offset: 4, compressed_page_size: 1, first_row_index: *first })
            .collect()
    };
    let scanned = |pages: &[PageLocation], row: usize| pages.iter().rposition(|p| p.first_row_index as usize <= row);
    // Equal pages but the last; pages cut short (as a byte limit cuts
    // them); one page.
    for firsts in [&[0, 64, 128, 192][..], &[0, 64, 100, 164, 170, 300], &[0]] {
        let pages = locations(firsts);
        for row in 0..400 {
            assert_eq!(page_of(&pages, row), scanned(&pages, row), "row {row} of {firsts:?}");
        }
    }
    assert_eq!(page_of(&locations(&[5, 64]), 2), None, "a row before the first page");
}
