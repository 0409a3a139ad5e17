//! A data file written row group by row group from rows already in file
//! order, and the sort that puts a batch in that order.
//!
//! The rows of every data file are sorted by calling number token (rows
//! without one last): a subscriber's records as calling party, with their
//! IMSI, IMEI and SIP URI, end up side by side, which the token index and
//! zstd both profit from. Ingest sorts a batch before writing it
//! ([`sort_by_calling_party`]); compaction merges sorted files. Either way
//! the rows reach [`SortedFile::push`], which refuses rows out of order.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use super::{ParquetWriter, StagedFile, WrittenFile, properties};
use crate::keys::DayKey;
use crate::model::{IdentifierField, KeyId, PartitionDate};
use crate::ops::durable::{self, DurableError};
use crate::ops::pool;
use crate::storage::error::WriteError;
use crate::storage::{index, layout, read, schema};

/// The day's rows as one batch sorted by calling number token (rows
/// without one last, ties in arrival order). One sort of `u64` keys and one
/// gather per column: a few milliseconds per 100k records.
pub(super) fn sort_by_calling_party(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch, WriteError> {
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
/// order (sorted by calling number token, rows without one last), with its
/// companion beside it: the clear columns go to the data file, the sealed
/// ones to the companion, in row groups of the same rows. Each pushed batch
/// is encoded into the current row group's column writers at once, so
/// memory holds the group's encoded pages and the index entries, never the
/// file's rows. Rows out of order are refused. [`SortedFile::finish`]
/// publishes the companion, the token index and then the data file;
/// dropped unfinished, the file leaves nothing under its name.
pub struct SortedFile<'a> {
    parquet: &'a ParquetWriter,
    date: PartitionDate,
    name: String,
    target: PathBuf,
    token_key_id: KeyId,
    /// The clear columns: the data file.
    public: Part,
    /// The sealed columns: the companion.
    sealed: Part,
    groups: usize,
    /// Rows in the current row group (whose column writers are open).
    group_rows: Option<usize>,
    rows: usize,
    index_keys: Vec<u64>,
    last_key: Option<(bool, i64)>,
    /// The companion is under its name (and must go if the file does not
    /// follow).
    companion_published: bool,
    published: bool,
}

/// One of the two files of a [`SortedFile`], being written under a hidden
/// temporary name.
struct Part {
    schema: SchemaRef,
    tmp: PathBuf,
    writer: Option<(SerializedFileWriter<File>, ArrowRowGroupWriterFactory)>,
    group: Vec<ArrowColumnWriter>,
}

impl Part {
    fn create(tmp: PathBuf, schema: SchemaRef, properties: WriterProperties) -> Result<Part, WriteError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| DurableError::io("create", &tmp, e))?;
        let mut part = Part { schema: Arc::clone(&schema), tmp, writer: None, group: Vec::new() };
        let writer = ArrowWriter::try_new(file, schema, Some(properties))?;
        part.writer = Some(writer.into_serialized_writer()?);
        Ok(part)
    }

    fn open_group(&mut self, group: usize) -> Result<(), WriteError> {
        let (_, factory) = self.writer.as_ref().ok_or(WriteError::Finished)?;
        self.group = factory.create_column_writers(group)?;
        Ok(())
    }

    fn leaves(&self, part: &RecordBatch) -> Result<Vec<ArrowLeafColumn>, WriteError> {
        let mut leaves = Vec::with_capacity(self.group.len());
        for (field, column) in self.schema.fields().iter().zip(part.columns()) {
            leaves.extend(compute_leaves(field, column)?);
        }
        Ok(leaves)
    }

    fn close_group(&mut self, chunks: Vec<parquet::arrow::arrow_writer::ArrowColumnChunk>) -> Result<(), WriteError> {
        let (file_writer, _) = self.writer.as_mut().ok_or(WriteError::Finished)?;
        let mut row_group = file_writer.next_row_group()?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        Ok(())
    }

    /// Writes the footer and makes the file durable; returns it.
    fn close(&mut self) -> Result<File, WriteError> {
        let (file_writer, _) = self.writer.take().ok_or(WriteError::Finished)?;
        let file: File = file_writer.into_inner()?;
        durable::fsync_file(&file, &self.tmp)?;
        Ok(file)
    }
}

/// What a new file is for, which decides where it is written and how hard
/// it and its companion are compressed.
#[derive(Clone, Copy)]
pub(super) enum FileRole<'s> {
    /// Ingest's file, staged under a name tagged with this instance
    /// ([`layout::staged_name`]) until its offsets are committed.
    Staged(&'s str),
    /// A file published under its own name (preservation copies).
    Named,
    /// Compaction's one file of a closed day, kept for the year.
    Compacted,
}

impl<'a> SortedFile<'a> {
    /// A new file `name` of `date` under the writer's data directory; see
    /// [`ParquetWriter::sorted_file`].
    pub(super) fn create(
        parquet: &'a ParquetWriter,
        date: PartitionDate,
        name: &str,
        day_key: &DayKey,
        token_key_id: &KeyId,
        rows: usize,
        role: FileRole<'_>,
    ) -> Result<SortedFile<'a>, WriteError> {
        let dir = layout::day_dir(&parquet.data_dir, date);
        durable::create_dir_all(&dir)?;
        let target = dir.join(name);
        let tmp = match role {
            FileRole::Staged(instance) => dir.join(layout::staged_name(name, instance)),
            FileRole::Named | FileRole::Compacted => durable::temporary_path(&target),
        };
        let companion = layout::sealed_path(&target);
        let file_id = format!("{:032x}", rand::random::<u128>());
        let config = &parquet.config;
        // Ingest's files last until their day is compacted: they are
        // compressed for speed, their token columns not at all (random
        // 64-bit values; zstd shrinks their dictionary indices by about a
        // tenth, at about 3% of a batch's CPU).
        let (zstd_level, compress_tokens, companion_zstd_level) = match role {
            FileRole::Staged(_) => (config.ingest_zstd_level, false, config.ingest_zstd_level),
            FileRole::Named => (config.zstd_level, true, config.zstd_level),
            FileRole::Compacted => (config.zstd_level, true, config.compacted_companion_zstd_level),
        };
        let public = properties::public_properties(
            config,
            zstd_level,
            compress_tokens,
            date,
            &day_key.id,
            token_key_id,
            &file_id,
            rows,
        )?;
        let sealed = properties::sealed_properties(
            config,
            companion_zstd_level,
            &layout::aad_prefix(&companion),
            date,
            day_key,
            &file_id,
        )?;
        let public = Part::create(tmp, schema::public_schema(), public)?;
        // From here on the temporaries are removed if the file is not
        // finished (by `Drop` once the file exists).
        let sealed = match Part::create(durable::temporary_path(&companion), schema::sealed_schema(), sealed) {
            Ok(sealed) => sealed,
            Err(e) => {
                let _ = std::fs::remove_file(&public.tmp);
                return Err(e);
            }
        };
        Ok(SortedFile {
            parquet,
            date,
            name: name.to_string(),
            target,
            token_key_id: token_key_id.clone(),
            public,
            sealed,
            groups: 0,
            group_rows: None,
            rows: 0,
            index_keys: Vec::new(),
            last_key: None,
            companion_published: false,
            published: false,
        })
    }

    /// Appends rows, closing a row group whenever one is full.
    pub fn push(&mut self, batch: RecordBatch) -> Result<(), WriteError> {
        self.check_order(&batch)?;
        let step = self.parquet.config.row_group_rows.max(1);
        let mut batch = batch;
        while batch.num_rows() > 0 {
            let in_group = self.group_rows.unwrap_or(0);
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
                return Err(WriteError::OutOfOrder);
            }
            self.last_key = Some(key);
        }
        Ok(())
    }

    fn append(&mut self, part: &RecordBatch) -> Result<(), WriteError> {
        if self.group_rows.is_none() {
            self.public.open_group(self.groups)?;
            self.sealed.open_group(self.groups)?;
            self.group_rows = Some(0);
        }
        let (clear, sealed) = schema::split(part)?;
        let mut leaves = self.public.leaves(&clear)?;
        leaves.extend(self.sealed.leaves(&sealed)?);
        // Each column of either file is independent: one pool for all.
        let writers: Vec<&mut ArrowColumnWriter> =
            self.public.group.iter_mut().chain(self.sealed.group.iter_mut()).collect();
        pool::map(writers.into_iter().zip(leaves).collect(), self.parquet.config.encode_threads, |(writer, leaf)| {
            writer.write(&leaf).map_err(WriteError::from)
        })?;
        if let Some(rows) = self.group_rows.as_mut() {
            *rows += part.num_rows();
        }
        index::add_keys(part, self.rows, &mut self.index_keys);
        self.rows += part.num_rows();
        Ok(())
    }

    fn close_group(&mut self) -> Result<(), WriteError> {
        if self.group_rows.take().is_none() {
            return Ok(());
        }
        let public_columns = self.public.group.len();
        let writers: Vec<ArrowColumnWriter> =
            std::mem::take(&mut self.public.group).into_iter().chain(std::mem::take(&mut self.sealed.group)).collect();
        let mut chunks =
            pool::map(writers, self.parquet.config.encode_threads, |writer| writer.close().map_err(WriteError::from))?;
        let sealed_chunks = chunks.split_off(public_columns);
        self.public.close_group(chunks)?;
        self.sealed.close_group(sealed_chunks)?;
        self.groups += 1;
        Ok(())
    }

    /// Closes the last row group, makes the file durable, publishes its
    /// token index and then the file under its name.
    pub fn finish(self) -> Result<WrittenFile, WriteError> {
        let staged = self.stage()?;
        durable::publish(&staged.staged, &staged.file.path)?;
        Ok(staged.file)
    }

    /// Closes the last row group, makes the file durable under its
    /// temporary name and publishes its companion and its token index, but
    /// leaves the file invisible: whoever stages it publishes it
    /// ([`StagedFile::publish`]) or discards it.
    pub fn stage(mut self) -> Result<StagedFile, WriteError> {
        self.close_group()?;
        let file = self.public.close()?;
        let bytes = file.metadata().map_err(|e| DurableError::io("stat", &self.public.tmp, e))?.len();
        // The companion authenticates the data file's footer: its row
        // groups, statistics, bloom filter places and key ids.
        let footer = read::footer_sha256(&file)?;
        // And each clear column chunk but the tokens: the values a lookup
        // returns and filters on (times above all) cannot be changed in
        // place without the companion refusing them.
        let metadata = parquet::file::metadata::ParquetMetaDataReader::new().parse_and_finish(&file)?;
        let chunks = read::chunk_digests(&file, &metadata)?;
        if let Some((writer, _)) = self.sealed.writer.as_mut() {
            writer.append_key_value_metadata(KeyValue::new(schema::meta::DATA_FOOTER_SHA256.into(), footer));
            writer.append_key_value_metadata(KeyValue::new(schema::meta::DATA_CHUNKS_SHA256.into(), chunks));
        }
        let companion = self.sealed.close()?;
        let sealed_bytes = companion.metadata().map_err(|e| DurableError::io("stat", &self.sealed.tmp, e))?.len();
        // The companion and the token index are published before the data
        // file, so a visible data file always has both.
        self.companion_published = true;
        durable::publish(&self.sealed.tmp, &layout::sealed_path(&self.target))?;
        let entries = index::sorted_entries(std::mem::take(&mut self.index_keys));
        let described =
            index::IndexedFile { name: &self.name, bytes, rows: self.rows as u64, token_key_id: &self.token_key_id };
        index::write(&layout::index_path(&self.target), entries, &described)?;
        // From here on the staged file is its caller's.
        self.published = true;
        Ok(StagedFile {
            file: WrittenFile { date: self.date, path: self.target.clone(), rows: self.rows, bytes, sealed_bytes },
            staged: self.public.tmp.clone(),
        })
    }
}

impl Drop for SortedFile<'_> {
    fn drop(&mut self) {
        if !self.published {
            // Unfinished (an error, or dropped): best effort, temporaries
            // are hidden and never read, and `remove_leftovers` clears them
            // (and a companion without its file) at a later start.
            let _ = std::fs::remove_file(&self.public.tmp);
            let _ = std::fs::remove_file(&self.sealed.tmp);
            if self.companion_published {
                let _ = std::fs::remove_file(layout::sealed_path(&self.target));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;

    fn part(schema: &SchemaRef, rows: &[(Option<i64>, &str)]) -> RecordBatch {
        let tokens = Int64Array::from(rows.iter().map(|(t, _)| *t).collect::<Vec<_>>());
        let ids = StringArray::from(rows.iter().map(|(_, id)| *id).collect::<Vec<_>>());
        RecordBatch::try_new(Arc::clone(schema), vec![Arc::new(tokens), Arc::new(ids)]).unwrap()
    }

    #[test]
    fn parts_are_sorted_together_by_token_with_rows_without_one_last_and_ties_in_arrival_order() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new(IdentifierField::CallingNumber.token_column(), DataType::Int64, true),
            Field::new("record_id", DataType::Utf8, false),
        ]));
        let first = part(&schema, &[(Some(5), "a"), (None, "b"), (Some(-3), "c"), (Some(5), "d")]);
        let second = part(&schema, &[(Some(5), "e"), (Some(1), "f"), (None, "g")]);
        let ids = |batch: &RecordBatch| -> Vec<String> {
            batch.column(1).as_string::<i32>().iter().map(|v| v.unwrap().to_string()).collect()
        };

        let all = sort_by_calling_party(&schema, &[first.clone(), second]).unwrap();
        assert_eq!(ids(&all), ["c", "f", "a", "d", "e", "b", "g"]);
        let tokens = all.column(0).as_primitive::<arrow_array::types::Int64Type>();
        assert_eq!(tokens.iter().collect::<Vec<_>>(), [Some(-3), Some(1), Some(5), Some(5), Some(5), None, None]);

        assert_eq!(ids(&sort_by_calling_party(&schema, &[first]).unwrap()), ["c", "a", "d", "b"]);
        let sorted = part(&schema, &[(Some(1), "x"), (Some(2), "y"), (None, "z")]);
        assert_eq!(ids(&sort_by_calling_party(&schema, &[sorted]).unwrap()), ["x", "y", "z"]);
        assert_eq!(sort_by_calling_party(&schema, &[]).unwrap().num_rows(), 0);
    }
}
