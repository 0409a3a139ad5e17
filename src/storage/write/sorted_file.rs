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
use parquet::file::writer::SerializedFileWriter;

use super::{ParquetWriter, StagedFile, WrittenFile, properties};
use crate::keys::DayKey;
use crate::model::{IdentifierField, KeyId, PartitionDate};
use crate::ops::durable::{self, DurableError};
use crate::ops::pool;
use crate::storage::error::WriteError;
use crate::storage::{index, layout};

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
        staged_as: Option<&str>,
    ) -> Result<SortedFile<'a>, WriteError> {
        let dir = layout::day_dir(&parquet.data_dir, date);
        durable::create_dir_all(&dir)?;
        let target = dir.join(name);
        let tmp = match staged_as {
            Some(instance) => dir.join(layout::staged_name(name, instance)),
            None => durable::temporary_path(&target),
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| DurableError::io("create", &tmp, e))?;
        // From here on the temporary is removed if the file is not finished.
        let mut sorted = SortedFile {
            parquet,
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
        let properties = properties::properties(
            &parquet.config,
            &layout::aad_prefix(&sorted.target),
            date,
            day_key,
            token_key_id,
            rows,
        )?;
        let writer = ArrowWriter::try_new(file, Arc::clone(&parquet.schema), Some(properties))?;
        sorted.writer = Some(writer.into_serialized_writer()?);
        Ok(sorted)
    }

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
                return Err(WriteError::OutOfOrder);
            }
            self.last_key = Some(key);
        }
        Ok(())
    }

    fn append(&mut self, part: &RecordBatch) -> Result<(), WriteError> {
        let (_, factory) = self.writer.as_ref().ok_or(WriteError::Finished)?;
        if self.group.is_none() {
            self.group = Some((factory.create_column_writers(self.groups)?, 0));
        }
        let (writers, rows) = self.group.as_mut().ok_or(WriteError::Finished)?;
        write_columns(&self.parquet.schema, part, writers, self.parquet.config.encode_threads)?;
        *rows += part.num_rows();
        index::add_keys(part, self.rows, &mut self.index_keys);
        self.rows += part.num_rows();
        Ok(())
    }

    fn close_group(&mut self) -> Result<(), WriteError> {
        let Some((writers, _)) = self.group.take() else { return Ok(()) };
        let chunks =
            pool::map(writers, self.parquet.config.encode_threads, |writer| writer.close().map_err(WriteError::from))?;
        let (file_writer, _) = self.writer.as_mut().ok_or(WriteError::Finished)?;
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
    pub fn finish(self) -> Result<WrittenFile, WriteError> {
        let staged = self.stage()?;
        durable::publish(&staged.staged, &staged.file.path)?;
        Ok(staged.file)
    }

    /// Closes the last row group, makes the file durable under its
    /// temporary name and publishes its token index, but leaves the file
    /// invisible: whoever stages it publishes it ([`StagedFile::publish`])
    /// or discards it.
    pub fn stage(mut self) -> Result<StagedFile, WriteError> {
        self.close_group()?;
        let (file_writer, _) = self.writer.take().ok_or(WriteError::Finished)?;
        let file: File = file_writer.into_inner()?;
        durable::fsync_file(&file, &self.tmp)?;
        let bytes = file.metadata().map_err(|e| DurableError::io("stat", &self.tmp, e))?.len();
        // The token index is published before the data file, so a visible
        // data file always has its index.
        let entries = index::sorted_entries(std::mem::take(&mut self.index_keys));
        let described =
            index::IndexedFile { name: &self.name, bytes, rows: self.rows as u64, token_key_id: &self.token_key_id };
        index::write(&layout::index_path(&self.target), &entries, &described)?;
        // From here on the staged file is its caller's.
        self.published = true;
        Ok(StagedFile {
            file: WrittenFile { date: self.date, path: self.target.clone(), rows: self.rows, bytes },
            staged: self.tmp.clone(),
        })
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
    pool::map(writers.iter_mut().zip(leaves).collect(), threads, |(writer, leaf)| {
        writer.write(&leaf).map_err(WriteError::from)
    })?;
    Ok(())
}
