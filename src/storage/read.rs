//! Reading the data directory back: which days and files exist, and the rows
//! of a file, with the sealed columns of its companion decrypted when the
//! day key is given.
//!
//! This is the base of the lookup engine, compaction, preservation and the
//! checks in tests and `retention verify`. It never decrypts without a key
//! handed in by the caller, so the decision to unseal stays with the caller
//! (the lawful-access service, after the audit entry is durable).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_array::RecordBatchReader;
use arrow_schema::{ArrowError, SchemaRef};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::encryption::decrypt::FileDecryptionProperties;
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::page_index::offset_index::PageLocation;
use parquet::file::reader::ChunkReader;

use super::layout::{self, CDR_DIR, day_dir};
use super::{manifest, schema};
use crate::keys::DayKey;
use crate::model::{KeyId, PartitionDate};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot list {path}: {source}")]
    List { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Parquet { path: PathBuf, source: ParquetError },
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("the sealed columns of {path} cannot be read without the day key")]
    Sealed { path: PathBuf },
}

/// The days present in the data directory, sorted.
pub fn list_days(data_dir: &Path) -> Result<Vec<PartitionDate>, ReadError> {
    let root = data_dir.join(CDR_DIR);
    let entries = match fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ReadError::List { path: root, source }),
    };
    let mut days = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ReadError::List { path: root.clone(), source })?;
        if let Some(date) = entry.file_name().to_str().and_then(layout::date_of_dir) {
            days.push(date);
        }
    }
    days.sort();
    Ok(days)
}

/// The complete files of one day, sorted: temporaries are hidden and
/// skipped, and so are files a published compaction replaced (see
/// [`super::manifest`]).
pub fn list_files(data_dir: &Path, date: PartitionDate) -> Result<Vec<PathBuf>, ReadError> {
    let dir = day_dir(data_dir, date);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ReadError::List { path: dir, source }),
    };
    let mut files = Vec::new();
    let mut manifests = false;
    for entry in entries {
        let entry = entry.map_err(|source| ReadError::List { path: dir.clone(), source })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if layout::is_data_file(&name) {
            files.push(entry.path());
        }
        manifests |= layout::new_file_of_manifest(&name).is_some();
    }
    if manifests {
        // A compaction in progress (or cut short): once its new file is
        // published, the sources it replaces are no longer part of the day.
        for manifest in manifest::list(&dir) {
            if files.iter().any(|f| f.file_name().is_some_and(|n| n.to_string_lossy() == manifest.new_file)) {
                files.retain(|f| {
                    !f.file_name().is_some_and(|n| manifest.sources.iter().any(|s| n.to_string_lossy() == *s))
                });
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Reads the given columns of a file. Sealed columns can only be read with
/// the day key; clear columns need none.
pub fn read_file(path: &Path, day_key: Option<&DayKey>, columns: &[&str]) -> Result<Vec<RecordBatch>, ReadError> {
    let reader = file_reader(path, day_key, columns, 8_192)?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ReadError::Parquet { path: path.to_path_buf(), source: ParquetError::ArrowError(e.to_string()) })
}

/// The given columns of a file, `batch_size` rows at a time, for readers
/// that must not hold a whole file (compaction). Clear columns come from
/// the data file and need no key; sealed columns come from its companion
/// and can only be read with the day key, once the companion is shown to
/// pair with the data file ([`check_pairing`]).
pub fn file_reader(
    path: &Path,
    day_key: Option<&DayKey>,
    columns: &[&str],
    batch_size: usize,
) -> Result<FileReader, ReadError> {
    let parquet_err = |source| ReadError::Parquet { path: path.to_path_buf(), source };
    let open = |path: &Path| File::open(path).map_err(|source| ReadError::Open { path: path.to_path_buf(), source });
    let (sealed_columns, clear_columns): (Vec<&str>, Vec<&str>) =
        columns.iter().copied().partition(|c| schema::is_sealed(c));
    let file = open(path)?;
    // The clear chunks are checked through the same open file the rows
    // are read from, so that a file swapped under the name in between is
    // not the one checked.
    let checked = file.try_clone().map_err(|source| ReadError::Open { path: path.to_path_buf(), source })?;
    // Only a reader of sealed columns checks the pairing, which needs the
    // hash of the data file's footer.
    let data_footer = match sealed_columns.is_empty() {
        true => None,
        false => Some(footer_sha256(&file).map_err(parquet_err)?),
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err)?;
    let data_metadata = Arc::clone(builder.metadata());
    let clear = projected(builder, &clear_columns, batch_size).map_err(parquet_err)?;
    let Some(data_footer) = data_footer else { return Ok(FileReader { clear, sealed: None }) };
    let Some(key) = day_key else { return Err(ReadError::Sealed { path: path.to_path_buf() }) };
    let companion = layout::sealed_path(path);
    let companion_err = |source| ReadError::Parquet { path: companion.clone(), source };
    let options =
        ArrowReaderOptions::new().with_file_decryption_properties(decryption(&companion, key).map_err(companion_err)?);
    let builder =
        ParquetRecordBatchReaderBuilder::try_new_with_options(open(&companion)?, options).map_err(companion_err)?;
    check_pairing(&data_metadata, &data_footer, builder.metadata()).map_err(companion_err)?;
    if let Some(digests) = ChunkDigests::of(builder.metadata()).map_err(companion_err)? {
        let descr = data_metadata.file_metadata().schema_descr();
        for group in 0..data_metadata.num_row_groups() {
            for column in (0..descr.num_columns()).filter(|&c| clear_columns.contains(&descr.column(c).name())) {
                digests.check(&checked, &data_metadata, group, column).map_err(parquet_err)?;
            }
        }
    }
    let sealed = projected(builder, &sealed_columns, batch_size).map_err(companion_err)?;
    Ok(FileReader { clear, sealed: Some(sealed) })
}

fn projected(
    builder: ParquetRecordBatchReaderBuilder<File>,
    columns: &[&str],
    batch_size: usize,
) -> Result<ParquetRecordBatchReader, ParquetError> {
    let parquet_schema = builder.parquet_schema();
    let indices: Vec<usize> = parquet_schema
        .columns()
        .iter()
        .enumerate()
        .filter(|(_, c)| columns.contains(&c.name()))
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::leaves(parquet_schema, indices);
    builder.with_projection(mask).with_batch_size(batch_size.max(1)).build()
}

/// The rows of a data file, with the sealed columns of its companion
/// joined beside the clear ones ([`schema::join`]) when they were asked
/// for. Both files are read in batches of the same size over row groups of
/// the same rows, so each clear batch meets the sealed batch of its rows.
pub struct FileReader {
    clear: ParquetRecordBatchReader,
    sealed: Option<ParquetRecordBatchReader>,
}

impl FileReader {
    /// The schema of the batches: the columns asked for, in
    /// [`schema::cdr_schema`] order.
    pub fn schema(&self) -> SchemaRef {
        let clear = RecordBatch::new_empty(self.clear.schema());
        match &self.sealed {
            None => clear.schema(),
            Some(sealed) => schema::join(&clear, &RecordBatch::new_empty(sealed.schema()))
                .map(|b| b.schema())
                .unwrap_or_else(|_| clear.schema()),
        }
    }
}

impl Iterator for FileReader {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let clear = self.clear.next();
        let Some(sealed) = self.sealed.as_mut() else { return clear };
        match (clear, sealed.next()) {
            (None, None) => None,
            (Some(Ok(clear)), Some(Ok(sealed))) => Some(schema::join(&clear, &sealed)),
            (Some(Err(e)), _) | (_, Some(Err(e))) => Some(Err(e)),
            _ => Some(Err(ArrowError::InvalidArgumentError(
                "a data file and its companion hold different numbers of rows".into(),
            ))),
        }
    }
}

/// The decryption of a companion with `key`: the one counterpart of the
/// writer's encryption. The writer binds each companion to its place as the
/// AAD prefix ([`layout::aad_prefix`]) and does not store it, so a
/// companion moved to another day or name fails verification.
pub fn decryption(companion: &Path, key: &DayKey) -> Result<Arc<FileDecryptionProperties>, ParquetError> {
    FileDecryptionProperties::builder(key.secret.expose().to_vec())
        .with_aad_prefix(layout::aad_prefix(companion).into_bytes())
        .build()
}

/// The SHA-256 of a Parquet file's footer (its metadata, as the last 8
/// bytes frame it), in hex: what a companion records of its data file.
pub fn footer_sha256<R: ChunkReader>(file: &R) -> Result<String, ParquetError> {
    let len = file.len();
    let tail = file.get_bytes(len.saturating_sub(8), 8)?;
    if tail.len() != 8 || &tail[4..] != b"PAR1" {
        return Err(ParquetError::General("not a plaintext Parquet file".into()));
    }
    let footer_len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as u64;
    let start = len.checked_sub(8 + footer_len).ok_or_else(|| ParquetError::General("footer too long".into()))?;
    let footer = file.get_bytes(start, footer_len as usize)?;
    Ok(sha256_hex(&footer))
}

/// Checks that a companion (its decrypted `companion` metadata) belongs to
/// the data file of `data` metadata, whose footer hashes to `data_footer`:
/// the same file id, the data file's footer as written (so its row groups,
/// statistics and key ids are authenticated by the companion's own
/// encryption), and row groups of the same rows. A companion of another
/// file, or a data file altered or replaced, is refused rather than joined.
pub fn check_pairing(
    data: &ParquetMetaData,
    data_footer: &str,
    companion: &ParquetMetaData,
) -> Result<(), ParquetError> {
    let refuse =
        |what: &str| Err(ParquetError::General(format!("the companion does not pair with its data file: {what}")));
    let kv = |metadata: &ParquetMetaData, key: &str| {
        metadata.file_metadata().key_value_metadata()?.iter().find(|e| e.key == key)?.value.clone()
    };
    let file_id = kv(companion, schema::meta::FILE_ID);
    if file_id.is_none() || file_id != kv(data, schema::meta::FILE_ID) {
        return refuse("different file ids");
    }
    if kv(companion, schema::meta::DATA_FOOTER_SHA256).as_deref() != Some(data_footer) {
        return refuse("the data file's footer is not the one written with the companion");
    }
    let rows = |m: &ParquetMetaData| m.row_groups().iter().map(|g| g.num_rows()).collect::<Vec<_>>();
    if rows(data) != rows(companion) {
        return refuse("different row groups");
    }
    Ok(())
}

/// The SHA-256 of every column chunk of a data file that its companion
/// authenticates (all but the token columns), as
/// [`schema::meta::DATA_CHUNKS_SHA256`] records them.
pub fn chunk_digests<R: ChunkReader>(file: &R, data: &ParquetMetaData) -> Result<String, ParquetError> {
    let mut entries = Vec::new();
    for (group, row_group) in data.row_groups().iter().enumerate() {
        for (column, chunk) in row_group.columns().iter().enumerate() {
            let name = chunk.column_descr().name();
            if !schema::is_token(name) {
                entries.push(format!("{group}/{name}={}", chunk_sha256(file, data, group, column)?));
            }
        }
    }
    Ok(entries.join(","))
}

fn chunk_sha256<R: ChunkReader>(
    file: &R,
    data: &ParquetMetaData,
    group: usize,
    column: usize,
) -> Result<String, ParquetError> {
    let (_, bytes) = chunk_bytes(file, data, group, column)?;
    Ok(sha256_hex(&bytes))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// Where a column chunk starts, and its bytes.
fn chunk_bytes<R: ChunkReader>(
    file: &R,
    data: &ParquetMetaData,
    group: usize,
    column: usize,
) -> Result<(u64, bytes::Bytes), ParquetError> {
    let (start, len) = data.row_group(group).column(column).byte_range();
    let len = usize::try_from(len).map_err(|_| ParquetError::General("a column chunk too long".into()))?;
    Ok((start, file.get_bytes(start, len)?))
}

/// The digests of a data file's column chunks that its companion holds,
/// by row group and column name; `None` for a companion written before
/// they were recorded.
#[derive(Debug, Clone)]
pub struct ChunkDigests(std::collections::HashMap<(usize, String), String>);

impl ChunkDigests {
    /// The digests a decrypted `companion` footer records.
    pub fn of(companion: &ParquetMetaData) -> Result<Option<ChunkDigests>, ParquetError> {
        let value = companion
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|e| e.key == schema::meta::DATA_CHUNKS_SHA256))
            .and_then(|e| e.value.as_deref());
        let Some(value) = value else { return Ok(None) };
        let malformed = || ParquetError::General("the companion's chunk digests are malformed".into());
        let mut digests = std::collections::HashMap::new();
        for entry in value.split(',').filter(|e| !e.is_empty()) {
            let (place, digest) = entry.split_once('=').ok_or_else(malformed)?;
            let (group, column) = place.split_once('/').ok_or_else(malformed)?;
            digests.insert((group.parse().map_err(|_| malformed())?, column.to_string()), digest.to_string());
        }
        Ok(Some(ChunkDigests(digests)))
    }

    /// Checks column `column` of row group `group` of the data file against
    /// its digest: a clear chunk changed after writing is refused rather
    /// than read. Token columns carry no digest and pass.
    pub fn check<R: ChunkReader>(
        &self,
        file: &R,
        data: &ParquetMetaData,
        group: usize,
        column: usize,
    ) -> Result<(), ParquetError> {
        let name = data.file_metadata().schema_descr().column(column).name().to_string();
        if schema::is_token(&name) {
            return Ok(());
        }
        let Some(expected) = self.0.get(&(group, name.clone())) else {
            return Err(ParquetError::General(format!("the companion holds no digest of column {name}")));
        };
        let (start, bytes) = chunk_bytes(file, data, group, column)?;
        if *expected != sha256_hex(&bytes) {
            return Err(ParquetError::General(format!(
                "the data file's column {name} of row group {group} is not the one written with the companion"
            )));
        }
        // The page index lies outside the chunk and the footer: it is
        // trusted only once it describes the chunk's own pages.
        let locations = data.page_index().and_then(|index| index.offset_index(group, column));
        match locations {
            Some(index) if !pages_match(&bytes, start, index.page_locations(), data.row_group(group).num_rows()) => {
                Err(ParquetError::General(format!(
                    "the data file's page index of column {name} of row group {group} does not describe its pages"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Whether `locations` are the data pages of the chunk `bytes` (starting at
/// file offset `start`), in order: each page's offset and size, and its
/// first row, counted over a chunk of `rows` rows of a flat column. Pages
/// of version 1 only, which is what cdrvault writes; any other kind fails.
fn pages_match(bytes: &[u8], start: u64, locations: &[PageLocation], rows: i64) -> bool {
    let (mut at, mut row, mut page) = (0usize, 0i64, 0usize);
    while at < bytes.len() {
        let Ok((header, used)) = super::thrift::page_header(&bytes[at..]) else { return false };
        let Some(size) = usize::try_from(header.compressed_size).ok().and_then(|size| size.checked_add(used)) else {
            return false;
        };
        match (header.kind, header.data) {
            (super::thrift::DICTIONARY_PAGE, _) if at == 0 => {}
            (super::thrift::DATA_PAGE, Some(data)) => {
                let expected = locations.get(page).map(|l| (l.offset, l.compressed_page_size, l.first_row_index));
                let offset = start.checked_add(at as u64).and_then(|o| i64::try_from(o).ok());
                if expected != offset.map(|o| (o, i32::try_from(size).unwrap_or(-1), row)) {
                    return false;
                }
                row += i64::from(data.num_values);
                page += 1;
            }
            _ => return false,
        }
        at += size;
    }
    at == bytes.len() && page == locations.len() && row == rows
}

/// A file's row count and token key id, from its plaintext footer (no key
/// needed).
pub fn footer_facts(path: &Path) -> Result<(u64, Option<KeyId>), ReadError> {
    let parquet_err = |source| ReadError::Parquet { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(|source| ReadError::Open { path: path.to_path_buf(), source })?;
    let metadata =
        parquet::file::metadata::ParquetMetaDataReader::new().parse_and_finish(&file).map_err(parquet_err)?;
    let rows = metadata.file_metadata().num_rows().max(0) as u64;
    Ok((rows, token_key_of(&metadata)))
}

/// The token key id a data file's footer names.
pub fn token_key_of(metadata: &parquet::file::metadata::ParquetMetaData) -> Option<KeyId> {
    metadata
        .file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|e| e.key == schema::meta::TOKEN_KEY_ID)?
        .value
        .clone()
        .and_then(KeyId::new)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, RecordBatch, StringArray};
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::ArrowReaderMetadata;
    use parquet::file::metadata::PageIndexPolicy;
    use parquet::file::properties::WriterProperties;

    use super::*;

    /// A page index is taken only as the pages of its chunk, dictionary
    /// page first or not: offsets, sizes and first rows.
    #[test]
    fn a_page_index_matches_only_the_pages_it_describes() {
        for dictionary in [false, true] {
            let values: Vec<String> = (0..1_000).map(|i| format!("value-{}", i % 37)).collect();
            let column: ArrayRef = Arc::new(StringArray::from(values));
            let batch = RecordBatch::try_from_iter([("v", column)]).unwrap();
            let properties = WriterProperties::builder()
                .set_dictionary_enabled(dictionary)
                .set_data_page_row_count_limit(100)
                .set_write_batch_size(100)
                .build();
            let mut bytes = Vec::new();
            let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(properties)).unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
            let bytes = bytes::Bytes::from(bytes);
            let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
            let metadata = ArrowReaderMetadata::load(&bytes, options).unwrap();
            let data = metadata.metadata();
            let (start, chunk) = chunk_bytes(&bytes, data, 0, 0).unwrap();
            let pages = data.page_index().unwrap().offset_index(0, 0).unwrap().page_locations().clone();
            assert_eq!(pages.len(), 10, "pages of 100 rows");
            assert!(pages_match(&chunk, start, &pages, 1_000));

            let mut moved = pages.clone();
            moved[3].first_row_index += 1;
            assert!(!pages_match(&chunk, start, &moved, 1_000), "a first row moved");
            let mut swapped = pages.clone();
            swapped.swap(4, 5);
            (swapped[4].first_row_index, swapped[5].first_row_index) = (400, 500);
            assert!(!pages_match(&chunk, start, &swapped, 1_000), "two pages' places swapped");
            assert!(!pages_match(&chunk, start, &pages[..9], 1_000), "a page left out");
            assert!(!pages_match(&chunk, start, &pages, 999), "another row count");
        }
    }
}
