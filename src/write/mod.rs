//! Writes date-partitioned, pseudonymised Parquet files, atomically and
//! durably.
//!
//! Layout: `<data_dir>/cdr/dt=YYYY-MM-DD/part-<millis>-<instance>-<seq>.parquet`.
//! File names carry only time and sequence numbers, never anything derived
//! from a record.
//!
//! Each file is zstd-compressed, has page statistics on the clear columns,
//! bloom filters on the token columns, and its sealed columns encrypted with
//! Parquet Modular Encryption (AES-GCM) under the day's data key, with a
//! plaintext (signed) footer so that standard readers can read tokens, times
//! and service without any key. Statistics are disabled on sealed columns so
//! that no min/max of a raw identifier ever reaches the footer.
//!
//! Layout for lookups: the rows of a file are sorted by calling number token
//! (a subscriber's records as calling party, with their IMSI, IMEI and SIP
//! URI, end up side by side: one page to read instead of one per record,
//! and runs that zstd compresses), one row group per file (the token index
//! points at rows, so small groups buy nothing and repeat dictionaries),
//! small pages for the columns a lookup returns, and no dictionary on the
//! sealed identifiers but server addresses: a dictionary holds every
//! distinct value of the file (its population, or the day's cells) and
//! would have to be decrypted and decoded in full to read one row. Beside each data file the writer publishes its token index
//! ([`crate::index`]).
//!
//! A file becomes visible only once complete: it is written under a hidden
//! temporary name, fsynced, renamed and its directory fsynced, and its
//! token index is published before it. This module must never leave a
//! partial file under a `.parquet` name.

mod columns;
pub mod schema;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::basic::{Compression, ZstdLevel};
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use serde::Deserialize;

pub use columns::DayColumns;

use crate::durable::{self, DurableError};
use crate::index;
use crate::keys::DayKey;
use crate::models::IdentifierField;
use crate::models::{KeyId, PartitionDate};

/// The sub-directory of the data directory that holds the CDR files.
pub const CDR_DIR: &str = "cdr";

/// How files are laid out. Part of the `[parquet]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParquetConfig {
    /// Rows per row group. Larger groups compress better (one dictionary per
    /// column instead of one per group); lookups find rows through the token
    /// index, so small groups prune little that the index does not.
    pub row_group_rows: usize,
    /// Rows per data page of the columns a lookup does not return (tokens,
    /// volumes).
    pub data_page_rows: usize,
    /// Rows per data page of the columns a lookup returns (record id, times,
    /// service, direction, ports, sealed identifiers): the unit a lookup
    /// decrypts and decodes for each matching row.
    pub lookup_page_rows: usize,
    /// zstd level, 1 (fast) to 22 (small).
    pub zstd_level: i32,
    /// Target false-positive rate of the token bloom filters.
    pub bloom_fpp: f64,
    /// Threads that encode the columns of a row group in parallel.
    pub encode_threads: usize,
}

impl Default for ParquetConfig {
    fn default() -> Self {
        ParquetConfig {
            row_group_rows: 1_048_576,
            data_page_rows: 8_192,
            lookup_page_rows: 1_024,
            zstd_level: 3,
            bloom_fpp: 0.01,
            encode_threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("parquet encoding failed: {0}")]
    Parquet(#[from] ParquetError),
    #[error("arrow batch could not be built: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error(transparent)]
    Durable(#[from] DurableError),
}

/// A file that is complete and durable under its final name.
#[derive(Debug, Clone)]
pub struct WrittenFile {
    pub date: PartitionDate,
    pub path: PathBuf,
    pub rows: usize,
    pub bytes: u64,
}

/// Hands out unique file names: creation time, a random instance id, and a
/// sequence number within the instance.
#[derive(Debug)]
pub struct FileNamer {
    instance: u32,
    sequence: AtomicU64,
}

impl FileNamer {
    pub fn new() -> Self {
        FileNamer { instance: rand::random(), sequence: AtomicU64::new(0) }
    }

    fn next(&self, now_millis: i64) -> String {
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!("part-{now_millis:013}-{:08x}-{seq:06}.parquet", self.instance)
    }
}

impl Default for FileNamer {
    fn default() -> Self {
        FileNamer::new()
    }
}

/// How old a hidden temporary must be before a start-up removes it: no
/// writer takes this long over one file, so it belongs to a dead process.
pub const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the hidden temporaries (`.part-….parquet.<pid>.tmp`) that a
/// crashed writer left in the day directories, and token indexes whose data
/// file was never published (a crash between the two renames), once older
/// than [`LEFTOVER_AGE`]. They were never visible to readers; this only
/// returns their space. Returns how many were removed.
pub fn remove_leftovers(data_dir: &Path) -> Result<u64, DurableError> {
    let root = data_dir.join(CDR_DIR);
    let Ok(days) = std::fs::read_dir(&root) else { return Ok(0) };
    let mut removed = 0;
    for day in days.flatten() {
        // Interrupted compactions first: finished or dropped, never half.
        crate::compact::recover(&day.path())?;
        let Ok(files) = std::fs::read_dir(day.path()) else { continue };
        for file in files.flatten() {
            let name = file.file_name();
            let name = name.to_string_lossy();
            let temporary = name.starts_with('.') && name.ends_with(".tmp");
            let orphan_index = index::is_index_name(&name)
                && name
                    .strip_prefix('_')
                    .and_then(|n| n.strip_suffix(index::SUFFIX))
                    .is_some_and(|stem| !day.path().join(format!("{stem}.parquet")).exists());
            if !(temporary || orphan_index) {
                continue;
            }
            let old = file
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= LEFTOVER_AGE);
            if old {
                durable::remove_file(&file.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// The directory of one day's files.
pub fn day_dir(data_dir: &Path, date: PartitionDate) -> PathBuf {
    data_dir.join(CDR_DIR).join(date.dir_name())
}

/// Writes the files of the data directory.
#[derive(Debug)]
pub struct ParquetWriter {
    data_dir: PathBuf,
    config: ParquetConfig,
    schema: SchemaRef,
    namer: FileNamer,
}

impl ParquetWriter {
    pub fn new(data_dir: &Path, config: ParquetConfig) -> Self {
        ParquetWriter {
            data_dir: data_dir.to_path_buf(),
            config,
            schema: schema::cdr_schema(),
            namer: FileNamer::new(),
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A new file name, for [`Self::write_day_named`].
    pub fn next_name(&self, now_millis: i64) -> String {
        self.namer.next(now_millis)
    }

    /// Writes the records of one day into one new file and makes it durable.
    /// `now_millis` only names the file.
    pub fn write_day(
        &self,
        date: PartitionDate,
        batches: &[RecordBatch],
        day_key: &DayKey,
        token_key_id: &KeyId,
        now_millis: i64,
    ) -> Result<WrittenFile, WriteError> {
        let name = self.namer.next(now_millis);
        self.write_day_named(date, &name, batches, day_key, token_key_id)
    }

    /// Like [`Self::write_day`] under a given file name, replacing a file of
    /// that name atomically: for copies that must be idempotent (a
    /// preservation copy made again after a crash).
    pub fn write_day_named(
        &self,
        date: PartitionDate,
        name: &str,
        batches: &[RecordBatch],
        day_key: &DayKey,
        token_key_id: &KeyId,
    ) -> Result<WrittenFile, WriteError> {
        let all = sort_by_calling_party(&self.schema, batches)?;
        let mut file = self.sorted_file(date, name, day_key, token_key_id, all.num_rows())?;
        file.push(all)?;
        file.finish()
    }

    /// A new file `name` of `date` that takes rows already in file order
    /// (sorted by calling number token, see [`SortedFile`]); `rows` is the
    /// number it will hold, which sizes the bloom filters.
    pub fn sorted_file(
        &self,
        date: PartitionDate,
        name: &str,
        day_key: &DayKey,
        token_key_id: &KeyId,
        rows: usize,
    ) -> Result<SortedFile<'_>, WriteError> {
        let dir = day_dir(&self.data_dir, date);
        durable::create_dir_all(&dir)?;
        let target = dir.join(name);
        let tmp = durable::temporary_path(&target);
        let relative = format!("{}/{name}", date.dir_name());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| DurableError::io("create", &tmp, e))?;
        // From here on the temporary is removed if the file is not finished.
        let mut sorted = SortedFile {
            parquet: self,
            date,
            name: name.to_string(),
            target,
            tmp,
            token_key_id: token_key_id.clone(),
            writer: None,
            group: None,
            groups: 0,
            rows: 0,
            index_keys: Vec::new(),
            last_key: None,
            published: false,
        };
        let properties = self.properties(&relative, date, day_key, token_key_id, rows)?;
        let writer = ArrowWriter::try_new(file, Arc::clone(&self.schema), Some(properties))?;
        sorted.writer = Some(writer.into_serialized_writer()?);
        Ok(sorted)
    }

    fn properties(
        &self,
        relative: &str,
        date: PartitionDate,
        day_key: &DayKey,
        token_key_id: &KeyId,
        rows: usize,
    ) -> Result<WriterProperties, WriteError> {
        let key = day_key.secret.expose().to_vec();
        let key_id = day_key.id.as_str().as_bytes().to_vec();
        let mut encryption = FileEncryptionProperties::builder(key.clone())
            .with_plaintext_footer(true)
            .with_footer_key_metadata(key_id.clone())
            // Binds every encrypted module to this file's place, so pages
            // cannot be swapped between files nor files between days. The
            // prefix is not stored: readers derive it from the path
            // (`read::aad_prefix`).
            .with_aad_prefix(relative.as_bytes().to_vec());
        for column in schema::sealed_columns() {
            encryption = encryption.with_column_key_and_metadata(column, key.clone(), key_id.clone());
        }
        let zstd = ZstdLevel::try_new(self.config.zstd_level)?;
        let mut builder = WriterProperties::builder()
            .set_compression(Compression::ZSTD(zstd))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(self.config.row_group_rows))
            .set_data_page_row_count_limit(self.config.data_page_rows)
            .set_key_value_metadata(Some(vec![
                KeyValue::new(schema::meta::SCHEMA_VERSION.into(), schema::SCHEMA_VERSION.to_string()),
                KeyValue::new(schema::meta::PARTITION_DATE.into(), date.to_string()),
                KeyValue::new(schema::meta::TOKEN_KEY_ID.into(), token_key_id.to_string()),
                KeyValue::new(schema::meta::SEAL_KEY_ID.into(), day_key.id.to_string()),
            ]))
            .with_file_encryption_properties(encryption.build()?);
        for column in schema::sealed_columns() {
            builder = builder
                .set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None)
                .set_column_bloom_filter_enabled(ColumnPath::from(column), false);
        }
        // Record ids are unique: a dictionary would only be built to be
        // thrown away.
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(schema::RECORD_ID), false);
        // Times are nearly unique too; deltas take about 5 bytes of 8.
        for column in [schema::START_TIME, schema::END_TIME] {
            builder = builder
                .set_column_dictionary_enabled(ColumnPath::from(column), false)
                .set_column_encoding(ColumnPath::from(column), parquet::basic::Encoding::DELTA_BINARY_PACKED);
        }
        // Delta-packed times and tiny dictionary indices gain nothing from
        // zstd (measured: under 3%), while each compressed column chunk a
        // lookup touches costs it a decompression context.
        for column in [schema::SERVICE, schema::DIRECTION, schema::START_TIME, schema::END_TIME, schema::DST_PORT] {
            builder = builder.set_column_compression(ColumnPath::from(column), Compression::UNCOMPRESSED);
        }
        for column in lookup_columns() {
            builder =
                builder.set_column_data_page_row_count_limit(ColumnPath::from(column), self.config.lookup_page_rows);
        }
        // A dictionary page holds every distinct value of the file: for a
        // subscriber identifier the whole population, for cells the
        // thousands a day touches. A lookup would decrypt and decode all of
        // it to read a few rows (cells cost a 365-day lookup a tenth of its
        // time). Server addresses recur across subscribers and keep small
        // dictionaries, which save much more than they cost.
        for field in IdentifierField::ALL.into_iter().filter(|f| !has_small_domain(*f)) {
            builder = builder.set_column_dictionary_enabled(ColumnPath::from(field.sealed_column()), false);
        }
        for column in schema::token_columns() {
            builder = builder
                // Tokens are uniformly random: min/max prune nothing, the
                // bloom filters do the pruning.
                .set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None)
                .set_column_bloom_filter_enabled(ColumnPath::from(column), true)
                .set_column_bloom_filter_fpp(ColumnPath::from(column), self.config.bloom_fpp)
                // Sized for the largest possible group of this file, then
                // folded to the distinct values actually seen.
                .set_column_bloom_filter_max_ndv(
                    ColumnPath::from(column),
                    self.config.row_group_rows.min(rows).max(1) as u64,
                );
        }
        Ok(builder.build())
    }
}

/// The columns a lookup returns for each matching row.
fn lookup_columns() -> impl Iterator<Item = &'static str> {
    [
        schema::RECORD_ID,
        schema::SERVICE,
        schema::DIRECTION,
        schema::START_TIME,
        schema::END_TIME,
        schema::SRC_PORT,
        schema::DST_PORT,
    ]
    .into_iter()
    .chain(schema::sealed_columns())
}

/// True for fields whose values recur across many subscribers (server
/// addresses), so that a file holds few distinct ones.
fn has_small_domain(field: IdentifierField) -> bool {
    matches!(field, IdentifierField::DstIp)
}

/// The day's rows as one batch sorted by calling number token (rows
/// without one last, ties in arrival order). One sort of `u64` keys and one
/// gather per column: a few milliseconds per 100k records.
fn sort_by_calling_party(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch, WriteError> {
    // One part (one decode thread) needs no copy into a single batch.
    let all = match batches {
        [only] => only.clone(),
        _ => arrow_select::concat::concat_batches(schema, batches)?,
    };
    let Some(tokens) = all
        .column_by_name(IdentifierField::CallingNumber.token_column())
        .and_then(|c| c.as_primitive_opt::<arrow_array::types::Int64Type>())
    else {
        return Ok(all);
    };
    let mut order: Vec<(bool, i64, u32)> = (0..tokens.len())
        .map(|row| (tokens.is_null(row), if tokens.is_null(row) { 0 } else { tokens.value(row) }, row as u32))
        .collect();
    order.sort_unstable();
    if order.iter().enumerate().all(|(i, (_, _, row))| *row as usize == i) {
        return Ok(all);
    }
    let indices = arrow_array::UInt32Array::from_iter_values(order.into_iter().map(|(_, _, row)| row));
    Ok(arrow_select::take::take_record_batch(&all, &indices)?)
}

/// The sort key of a row: rows without a calling number token last.
fn calling_key(tokens: &arrow_array::PrimitiveArray<arrow_array::types::Int64Type>, row: usize) -> (bool, i64) {
    if tokens.is_null(row) { (true, 0) } else { (false, tokens.value(row)) }
}

/// A data file written row group by row group from rows already in file
/// order (sorted by calling number token, rows without one last). Each
/// pushed batch is encoded into the current row group's column writers at
/// once, so memory holds the group's encoded pages and the index entries,
/// never the file's rows. Rows out of order are refused.
/// [`SortedFile::finish`] publishes the token index and then the file;
/// dropped unfinished, the file leaves nothing under its name.
pub struct SortedFile<'a> {
    parquet: &'a ParquetWriter,
    date: PartitionDate,
    name: String,
    target: PathBuf,
    tmp: PathBuf,
    token_key_id: KeyId,
    writer: Option<(SerializedFileWriter<File>, ArrowRowGroupWriterFactory)>,
    /// The current row group's column writers and its rows so far.
    group: Option<(Vec<ArrowColumnWriter>, usize)>,
    groups: usize,
    rows: usize,
    index_keys: Vec<u64>,
    last_key: Option<(bool, i64)>,
    published: bool,
}

impl SortedFile<'_> {
    /// Appends rows, closing a row group whenever one is full.
    pub fn push(&mut self, batch: RecordBatch) -> Result<(), WriteError> {
        self.check_order(&batch)?;
        let step = self.parquet.config.row_group_rows.max(1);
        let mut batch = batch;
        while batch.num_rows() > 0 {
            let in_group = self.group.as_ref().map_or(0, |(_, rows)| *rows);
            let take = (step - in_group).min(batch.num_rows());
            self.append(&batch.slice(0, take))?;
            batch = batch.slice(take, batch.num_rows() - take);
            if in_group + take == step {
                self.close_group()?;
            }
        }
        Ok(())
    }

    fn check_order(&mut self, batch: &RecordBatch) -> Result<(), WriteError> {
        let Some(tokens) = batch
            .column_by_name(IdentifierField::CallingNumber.token_column())
            .and_then(|c| c.as_primitive_opt::<arrow_array::types::Int64Type>())
        else {
            return Ok(());
        };
        for row in 0..tokens.len() {
            let key = calling_key(tokens, row);
            if self.last_key.is_some_and(|last| key < last) {
                return Err(WriteError::Parquet(ParquetError::General(
                    "rows pushed out of order: a sorted file takes rows sorted by calling number token".into(),
                )));
            }
            self.last_key = Some(key);
        }
        Ok(())
    }

    fn append(&mut self, part: &RecordBatch) -> Result<(), WriteError> {
        let (_, factory) = self.writer.as_ref().ok_or_else(finished)?;
        if self.group.is_none() {
            self.group = Some((factory.create_column_writers(self.groups)?, 0));
        }
        let (writers, rows) = self.group.as_mut().ok_or_else(finished)?;
        write_columns(&self.parquet.schema, part, writers, self.parquet.config.encode_threads)?;
        *rows += part.num_rows();
        index::add_keys(part, self.rows, &mut self.index_keys);
        self.rows += part.num_rows();
        Ok(())
    }

    fn close_group(&mut self) -> Result<(), WriteError> {
        let Some((writers, _)) = self.group.take() else { return Ok(()) };
        let chunks = parallel_map(writers, self.parquet.config.encode_threads, |writer| writer.close())?;
        let (file_writer, _) = self.writer.as_mut().ok_or_else(finished)?;
        let mut row_group = file_writer.next_row_group()?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        self.groups += 1;
        Ok(())
    }

    /// Closes the last row group, makes the file durable, publishes its
    /// token index and then the file under its name.
    pub fn finish(mut self) -> Result<WrittenFile, WriteError> {
        self.close_group()?;
        let (file_writer, _) = self.writer.take().ok_or_else(finished)?;
        let file: File = file_writer.into_inner()?;
        durable::fsync_file(&file, &self.tmp)?;
        let bytes = file.metadata().map_err(|e| DurableError::io("stat", &self.tmp, e))?.len();
        // The token index is published before the data file, so a visible
        // data file always has its index.
        let entries = index::sorted_entries(std::mem::take(&mut self.index_keys));
        let described =
            index::IndexedFile { name: &self.name, bytes, rows: self.rows as u64, token_key_id: &self.token_key_id };
        index::write(&index::sidecar_path(&self.target), &entries, &described)?;
        durable::publish(&self.tmp, &self.target)?;
        self.published = true;
        Ok(WrittenFile { date: self.date, path: self.target.clone(), rows: self.rows, bytes })
    }
}

impl Drop for SortedFile<'_> {
    fn drop(&mut self) {
        if !self.published {
            // Unfinished (an error, or dropped): best effort, the temporary
            // is hidden and never read, and `remove_leftovers` clears it at
            // a later start.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn finished() -> WriteError {
    WriteError::Parquet(ParquetError::General("the file is already finished".into()))
}

/// Encodes the rows of `part` into the current row group's column writers
/// on up to `threads` threads. Each column is independent, so the work
/// splits cleanly.
fn write_columns(
    schema: &SchemaRef,
    part: &RecordBatch,
    writers: &mut [ArrowColumnWriter],
    threads: usize,
) -> Result<(), WriteError> {
    let mut leaves: Vec<ArrowLeafColumn> = Vec::with_capacity(writers.len());
    for (field, column) in schema.fields().iter().zip(part.columns()) {
        leaves.extend(compute_leaves(field, column)?);
    }
    parallel_map(writers.iter_mut().zip(leaves).collect(), threads, |(writer, leaf)| writer.write(&leaf))?;
    Ok(())
}

/// `f` over `items` on up to `threads` threads, results in the items'
/// order. Columns differ widely in cost (a sealed string column against a
/// constant key id), so threads take the next item from a shared queue
/// instead of a fixed share. Each item sits in its own slot; a thread
/// claims a slot by index, so no two threads touch one item.
fn parallel_map<T: Send, R: Send>(
    items: Vec<T>,
    threads: usize,
    f: impl Fn(T) -> Result<R, ParquetError> + Sync,
) -> Result<Vec<R>, ParquetError> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.into_iter().map(f).collect();
    }
    let slots: Vec<std::sync::Mutex<Option<T>>> = items.into_iter().map(|i| std::sync::Mutex::new(Some(i))).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let lanes: Vec<Result<Vec<(usize, R)>, ParquetError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (slots, next, f) = (&slots, &next, &f);
                scope.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(slot) = slots.get(index) else { break };
                        let item = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                        let Some(item) = item else { continue };
                        done.push((index, f(item)?));
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(ParquetError::General("column encoder panicked".into()))))
            .collect()
    });
    let mut results = Vec::new();
    for lane in lanes {
        results.extend(lane?);
    }
    results.sort_by_key(|(index, _)| *index);
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::keys::KeyStore;
    use crate::pipeline::{Input, Processor, ProcessorConfig};
    use crate::read;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    fn write_one_file(root: &Path) -> (Arc<KeyStore>, PathBuf) {
        let keys_dir = root.join("keys");
        KeyStore::init(&keys_dir, None).unwrap();
        let keys = Arc::new(KeyStore::open(&keys_dir, None).unwrap());
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z").unwrap().to_utc();
        let clock = Arc::new(ManualClock::new(now));
        let config = ParquetConfig { row_group_rows: 100, ..ParquetConfig::default() };
        let writer = ParquetWriter::new(&root.join("data"), config);
        let processor = Processor::new(
            writer,
            Arc::clone(&keys),
            clock,
            ProcessorConfig {
                max_clock_skew: std::time::Duration::from_secs(60),
                decode_threads: 2,
                retention_days: Some(365),
            },
        );
        let inputs: Vec<Input> = (0..250)
            .map(|i| Input {
                encoding: crate::decode::Encoding::Json,
                payload: format!(
                    r#"{{"record_id":"r-{i}","service":"voice","start_time":"2026-11-24T10:00:{:02}Z","calling_number":"+45200{i:05}","cell_id_start":"238-01-1-{i}"}}"#,
                    i % 60
                )
                .into_bytes(),
            })
            .collect();
        let outcome = processor.process(&inputs).unwrap();
        assert_eq!(outcome.written, 250);
        assert_eq!(outcome.files.len(), 1);
        (keys, outcome.files[0].path.clone())
    }

    #[test]
    fn files_carry_bloom_filters_on_tokens_and_nothing_revealing_on_sealed_columns() {
        let root = tempfile::tempdir().unwrap();
        let (_keys, path) = write_one_file(root.path());
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let metadata = reader.metadata();
        assert_eq!(metadata.num_row_groups(), 3, "row groups of 100 rows");
        let kv: std::collections::HashMap<_, _> = metadata
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(kv[schema::meta::TOKEN_KEY_ID], "tk-0001");
        assert!(kv[schema::meta::SEAL_KEY_ID].starts_with("day-2026-11-24-"));
        assert_eq!(kv[schema::meta::PARTITION_DATE], "2026-11-24");
        let row_group = metadata.row_group(0);
        for column in row_group.columns() {
            let name = column.column_path().string();
            if name.ends_with("_token") {
                assert!(column.bloom_filter_offset().is_some(), "{name} has a bloom filter");
            }
            if name.ends_with("_sealed") {
                assert!(column.bloom_filter_offset().is_none(), "{name} has no bloom filter");
                assert!(column.statistics().is_none(), "{name} has no statistics");
            }
        }
        // No min/max or dictionary of a raw value in clear anywhere in the file.
        let bytes = std::fs::read(&path).unwrap();
        let needle = b"+4520000007";
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn a_sorted_file_refuses_rows_out_of_order_and_leaves_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let (keys, path) = write_one_file(root.path());
        let date = PartitionDate::from_dir_name("dt=2026-11-24").unwrap();
        let day_key = keys.existing_day_key(date).unwrap().unwrap();
        let writer = ParquetWriter::new(&root.path().join("data"), ParquetConfig::default());
        let names: Vec<&str> = writer.schema().fields().iter().map(|f| f.name().as_str()).collect();
        let batches = read::read_file(&path, Some(&day_key), &names).unwrap();
        let all = arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap();
        let listing = || {
            let mut names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let before = listing();
        let token_key = keys.active_token_key().id.clone();

        // The file's rows are sorted: pushed in two parts, they are taken.
        let mut sorted = writer.sorted_file(date, "part-sorted.parquet", &day_key, &token_key, all.num_rows()).unwrap();
        sorted.push(all.slice(0, 120)).unwrap();
        sorted.push(all.slice(120, all.num_rows() - 120)).unwrap();
        let written = sorted.finish().unwrap();
        assert_eq!(written.rows, all.num_rows());
        assert!(index::sidecar_path(&written.path).exists());
        std::fs::remove_file(index::sidecar_path(&written.path)).unwrap();
        std::fs::remove_file(&written.path).unwrap();

        // Reversed, they are refused, and neither the file, its index nor a
        // temporary is left.
        let reversed = arrow_array::UInt32Array::from_iter_values((0..all.num_rows() as u32).rev());
        let reversed = arrow_select::take::take_record_batch(&all, &reversed).unwrap();
        let mut file = writer.sorted_file(date, "part-reversed.parquet", &day_key, &token_key, all.num_rows()).unwrap();
        assert!(file.push(reversed).is_err());
        drop(file);
        assert_eq!(listing(), before);
    }

    #[test]
    fn old_hidden_temporaries_are_removed_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let (_keys, path) = write_one_file(root.path());
        let dir = path.parent().unwrap();
        let old = dir.join(".part-1-2-3.parquet.77.tmp");
        let fresh = dir.join(".part-4-5-6.parquet.78.tmp");
        let orphan = dir.join("_part-7-8-9.index");
        std::fs::write(&old, b"partial").unwrap();
        std::fs::write(&fresh, b"being written").unwrap();
        std::fs::write(&orphan, b"index of a file never published").unwrap();
        let long_ago = std::time::SystemTime::now() - LEFTOVER_AGE - std::time::Duration::from_secs(60);
        File::options().write(true).open(&old).unwrap().set_modified(long_ago).unwrap();
        File::options().write(true).open(&orphan).unwrap().set_modified(long_ago).unwrap();
        File::options().write(true).open(index::sidecar_path(&path)).unwrap().set_modified(long_ago).unwrap();
        assert_eq!(remove_leftovers(&root.path().join("data")).unwrap(), 2);
        assert!(!old.exists() && !orphan.exists());
        assert!(index::sidecar_path(&path).exists(), "the index of a published file stays");
        assert!(fresh.exists(), "a temporary that may still be written is left alone");
        assert!(path.exists(), "published files are never touched");
    }

    #[test]
    fn sealed_columns_need_the_day_key_and_the_files_own_place() {
        let root = tempfile::tempdir().unwrap();
        let (keys, path) = write_one_file(root.path());
        let date = PartitionDate::parse("2026-11-24").unwrap();
        let key = keys.existing_day_key(date).unwrap().unwrap();
        let sealed = ["calling_number_sealed"];
        assert!(read::read_file(&path, None, &sealed).is_err(), "no key, no sealed column");
        let batches = read::read_file(&path, Some(&key), &sealed).unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 250);
        assert!(
            read::read_file(&path, None, &["calling_number_token", "start_time"]).is_ok(),
            "clear columns need no key"
        );

        // Moved to another day's directory, the file no longer verifies.
        let other = day_dir(&root.path().join("data"), PartitionDate::parse("2026-11-23").unwrap());
        std::fs::create_dir_all(&other).unwrap();
        let moved = other.join(path.file_name().unwrap());
        std::fs::rename(&path, &moved).unwrap();
        assert!(read::read_file(&moved, Some(&key), &sealed).is_err());
    }
}
