//! The search of one file: candidate rows from its token index (or, without
//! a usable one, row groups pruned by time statistics and bloom filters and
//! a scan of the clear token columns), then only the candidates' pages read
//! and unsealed, and every candidate confirmed against its unsealed value.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder, RowSelection};
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;

use super::cache::{Area, CachedFile, FileCache, Work};
use super::{FoundRecord, LookupStats, Query};
use crate::model::{Category, IdentifierField, IdentifierKind, KeyId, TimestampMicros};
use crate::storage::direct::{self, PageCipher, Values};
use crate::storage::published::PublishedFile;
use crate::storage::{index, schema};

/// Searches one file of a query, adding what it finds to `found`.
pub(super) fn search_file(
    cache: &FileCache,
    work: &Work,
    tokens: &HashMap<KeyId, Vec<i64>>,
    query: &Query,
    direct: bool,
    stats: &mut LookupStats,
    found: &mut Vec<FoundRecord>,
) -> Result<(), ParquetError> {
    stats.files += 1;
    if work.area != Area::Live {
        stats.preserved_files += 1;
    }
    let cached = cache.get(&work.path, stats)?;
    let metadata = Arc::clone(cached.metadata.metadata());
    stats.row_groups += metadata.num_row_groups() as u64;
    let Some(file_tokens) = cached.token_key.as_ref().and_then(|id| tokens.get(id)) else { return Ok(()) };
    // (field, token, canonical value) for every field a target can be in.
    // An order's copies are searched only for the targets the order names.
    let searched = |position: usize| match &work.area {
        Area::Live => true,
        Area::Preserved { targets, .. } => targets.contains(&position),
    };
    let wanted: Vec<(IdentifierField, i64, &str)> = query
        .targets
        .iter()
        .zip(file_tokens)
        .enumerate()
        .filter(|(position, _)| searched(*position))
        .flat_map(|(_, ((kind, value), token))| fields_of(*kind).map(move |f| (f, *token, value.as_str())))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let parquet_schema = metadata.file_metadata().schema_descr();
    let index_of = |name: &str| parquet_schema.columns().iter().position(|c| c.name() == name);
    let Some(time_index) = index_of(schema::START_TIME) else { return Ok(()) };
    // Row groups that overlap the window, by their time statistics.
    let in_window: Vec<bool> = (0..metadata.num_row_groups())
        .map(|rg| match metadata.row_group(rg).column(time_index).statistics() {
            Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                (Some(min), Some(max)) => *max >= query.from.0 && *min <= query.to.0,
                _ => true,
            },
            _ => true,
        })
        .collect();

    let starts = group_starts(&metadata);
    let all_indexed = query.targets.iter().all(|(kind, _)| index::is_indexed(*kind));
    // The cached index is a mapping of the file as it was opened, which
    // describes this very data file (checked at opening), so it stays
    // right even if the index file is deleted since. One that cannot
    // be decoded is derived data: the scan below finds the same rows.
    let indexed = match (&cached.index, all_indexed) {
        (Some(index), true) => index.rows_for(file_tokens).ok(),
        _ => None,
    };
    let mut candidates: Vec<usize> = match indexed {
        Some((rows, pages)) => {
            stats.files_indexed += 1;
            stats.index_pages += pages;
            rows.into_iter()
                .map(|r| r as usize)
                .filter(|r| group_of(&starts, *r).is_some_and(|rg| in_window[rg]))
                .collect()
        }
        None => {
            stats.files_scanned += 1;
            scan(&cached, &wanted, &in_window, time_index, query, stats)?
        }
    };
    // In file order, each once: the order every reader below returns.
    candidates.sort_unstable();
    candidates.dedup();
    let groups: BTreeSet<usize> = candidates.iter().filter_map(|r| group_of(&starts, *r)).collect();
    stats.row_groups_read += groups.len() as u64;
    if candidates.is_empty() {
        return Ok(());
    }
    stats.candidates += candidates.len() as u64;

    // Only the candidates' rows, with the sealed columns needed to
    // confirm them and to answer.
    let needed: BTreeSet<IdentifierField> = IdentifierField::ALL
        .into_iter()
        .filter(|f| query.categories.contains(&f.category()) || wanted.iter().any(|(w, _, _)| w == f))
        .collect();
    let mut returned =
        vec![schema::RECORD_ID, schema::SERVICE, schema::DIRECTION, schema::START_TIME, schema::END_TIME];
    // Ports belong to the ip category: not read unless it is allowed.
    if query.categories.contains(&Category::Ip) {
        returned.extend([schema::SRC_PORT, schema::DST_PORT]);
    }
    let columns: Vec<usize> = returned.iter().filter_map(|c| index_of(c)).collect();
    let sealed = cached.sealed(&work.path, &work.key)?;
    let sealed_schema = sealed.metadata.metadata().file_metadata().schema_descr();
    // A sealed column is null wherever its token column is: one whose
    // token column holds only nulls in the chosen groups is not read
    // (each column read costs a decryption and a decompression context).
    let groups: Vec<usize> = groups.into_iter().collect();
    let holds_values = |field: &&IdentifierField| {
        let Some(column) = index_of(field.token_column()) else { return true };
        !groups.iter().all(|&g| {
            let group = metadata.row_group(g);
            let nulls = group.column(column).statistics().and_then(|s| s.null_count_opt());
            nulls == Some(group.num_rows() as u64)
        })
    };
    let sealed_columns = needed
        .iter()
        .filter(holds_values)
        .map(|f| {
            sealed_schema
                .columns()
                .iter()
                .position(|c| c.name() == f.sealed_column())
                .ok_or_else(|| ParquetError::General(format!("the companion has no column {}", f.sealed_column())))
        })
        .collect::<Result<Vec<usize>, _>>()?;
    if sealed_columns.is_empty() {
        // Not one of the searched fields holds a value in these groups:
        // every candidate was a foreign index entry.
        stats.false_matches += candidates.len() as u64;
        return Ok(());
    }
    // The clear values returned (times, record ids, ports) are the ones
    // written: the companion holds each chunk's digest.
    cached.check_chunks(&sealed, &groups, &columns)?;
    stats.sealed_chunks_read += (sealed_columns.len() * groups.len()) as u64;
    let preserved_under = match &work.area {
        Area::Live => None,
        Area::Preserved { order, .. } => Some(order.as_str()),
    };
    let clear_file = Columns { file: &cached.file, reader: &cached.metadata, encrypted: false, cipher: None };
    let sealed_file =
        Columns { file: &sealed.file, reader: &sealed.metadata, encrypted: true, cipher: sealed.cipher.as_ref() };
    // Each column read straight from its pages where it can be; the rest
    // by the parquet crate's readers, clear and sealed apart.
    let mut read = Vec::new();
    let (mut clear_rest, mut sealed_rest) = (columns, sealed_columns);
    if direct {
        let by_group = rows_by_group(&starts, &groups, &candidates);
        for (side, rest) in [(&clear_file, &mut clear_rest), (&sealed_file, &mut sealed_rest)] {
            let mut left = Vec::new();
            for column in rest.drain(..) {
                match side.direct(column, &by_group)? {
                    Some(values) => read.push(values),
                    None => left.push(column),
                }
            }
            *rest = left;
        }
        stats.chunks_read_directly += (read.len() * groups.len()) as u64;
    }
    if !clear_rest.is_empty() || !sealed_rest.is_empty() {
        let selection = selection_in_groups(&starts, &groups, &candidates, metadata.file_metadata().num_rows());
        for (side, rest) in [(&clear_file, clear_rest), (&sealed_file, sealed_rest)] {
            if !rest.is_empty() {
                stats.chunks_through_reader += (rest.len() * groups.len()) as u64;
                read.extend(side.through_reader(&groups, &selection, rest)?);
            }
        }
    }
    let batch = RecordBatch::try_from_iter(read)?;
    collect(&batch, &wanted, query, preserved_under, stats, found);
    Ok(())
}

/// One side of a file a search reads (the data file, or its companion
/// with its pages' cipher).
struct Columns<'a> {
    file: &'a PublishedFile,
    reader: &'a ArrowReaderMetadata,
    /// Whether its pages are encrypted: then read directly only with
    /// `cipher`.
    encrypted: bool,
    cipher: Option<&'a PageCipher>,
}

impl Columns<'_> {
    fn metadata(&self) -> &ParquetMetaData {
        self.reader.metadata()
    }

    /// Columns `columns` at the rows `selection` picks of `groups`, through
    /// the parquet crate's reader, by name.
    fn through_reader(
        &self,
        groups: &[usize],
        selection: &RowSelection,
        columns: Vec<usize>,
    ) -> Result<Vec<(String, ArrayRef)>, ParquetError> {
        let batches = ParquetRecordBatchReaderBuilder::new_with_metadata(self.file.clone(), self.reader.clone())
            .with_row_groups(groups.to_vec())
            .with_row_selection(selection.clone())
            .with_projection(ProjectionMask::leaves(self.metadata().file_metadata().schema_descr(), columns))
            .build()?
            .collect::<Result<Vec<_>, _>>()?;
        let Some(schema) = batches.first().map(|b| b.schema()) else { return Ok(Vec::new()) };
        let batch = arrow_select::concat::concat_batches(&schema, &batches)?;
        Ok(schema.fields().iter().zip(batch.columns()).map(|(f, c)| (f.name().clone(), Arc::clone(c))).collect())
    }

    /// Column `column`'s values at the rows of `by_group` (group, rows
    /// within it, both ascending), read straight from its pages; `None` if
    /// [`direct`] does not read it.
    fn direct(
        &self,
        column: usize,
        by_group: &[(usize, Vec<usize>)],
    ) -> Result<Option<(String, ArrayRef)>, ParquetError> {
        let metadata = self.metadata();
        let Some(offsets) = metadata.page_index() else { return Ok(None) };
        let sealed = match (self.encrypted, self.cipher) {
            (false, _) => None,
            (true, Some(cipher)) => Some(cipher),
            (true, None) => return Ok(None),
        };
        let name = metadata.file_metadata().schema_descr().column(column).name().to_string();
        let Ok(field) = schema::cdr_schema().field_with_name(&name).cloned() else { return Ok(None) };
        let (mut strings, mut integers) = (Vec::new(), Vec::new());
        for (group, rows) in by_group {
            let chunk_meta = metadata.row_group(*group).column(column);
            let Some(pages) = offsets.offset_index(*group, column) else { return Ok(None) };
            if !direct::readable(chunk_meta, self.encrypted) {
                return Ok(None);
            }
            let chunk = direct::Chunk {
                column: chunk_meta,
                pages: pages.page_locations(),
                rows: metadata.row_group(*group).num_rows().max(0) as usize,
                sealed: sealed.map(|cipher| (cipher, *group, column)),
            };
            match direct::column_rows(self.file, &chunk, rows)? {
                Some(Values::Strings(read)) => strings.extend(read),
                Some(Values::Integers(read)) => integers.extend(read),
                None => return Ok(None),
            }
        }
        // As the crate's reader would give the column: by its type in the
        // record's schema.
        let array: ArrayRef = match (field.data_type(), strings.is_empty(), integers.is_empty()) {
            (DataType::Utf8, _, true) => Arc::new(StringArray::from(strings)),
            (DataType::Timestamp(TimeUnit::Microsecond, zone), true, _) => {
                Arc::new(TimestampMicrosecondArray::from(integers).with_timezone_opt(zone.clone()))
            }
            (DataType::Int32, true, _) => {
                let narrow: Option<Vec<Option<i32>>> =
                    integers.into_iter().map(|v| v.map(i32::try_from).transpose().ok()).collect();
                let Some(narrow) = narrow else { return Ok(None) };
                Arc::new(Int32Array::from(narrow))
            }
            (DataType::Int64, true, _) => Arc::new(Int64Array::from(integers)),
            _ => return Ok(None),
        };
        Ok(Some((name, array)))
    }
}

/// The candidate rows of each chosen group, relative to the group.
fn rows_by_group(starts: &[usize], groups: &[usize], rows: &[usize]) -> Vec<(usize, Vec<usize>)> {
    groups
        .iter()
        .map(|&group| {
            let (start, end) = (starts[group], starts[group + 1]);
            (group, rows.iter().filter(|r| **r >= start && **r < end).map(|r| r - start).collect())
        })
        .collect()
}

/// Candidate rows without an index: row groups pruned by bloom filters,
/// then the clear token and time columns scanned.
fn scan(
    cached: &CachedFile,
    wanted: &[(IdentifierField, i64, &str)],
    in_window: &[bool],
    time_index: usize,
    query: &Query,
    stats: &mut LookupStats,
) -> Result<Vec<usize>, ParquetError> {
    let metadata = cached.metadata.metadata();
    let parquet_schema = metadata.file_metadata().schema_descr();
    let index_of = |name: &str| parquet_schema.columns().iter().position(|c| c.name() == name);
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(cached.file.clone(), cached.metadata.clone());
    let mut groups = Vec::new();
    for (rg, overlaps) in in_window.iter().enumerate() {
        if !overlaps {
            continue;
        }
        let mut maybe = false;
        for (field, token, _) in wanted {
            let Some(column) = index_of(field.token_column()) else { continue };
            let bloom = {
                let blooms = cached.blooms.lock().unwrap_or_else(|p| p.into_inner());
                blooms.get(&(rg, column)).cloned()
            };
            let bloom = match bloom {
                Some(bloom) => bloom,
                None => {
                    let bloom = builder.get_row_group_column_bloom_filter(rg, column)?.map(Arc::new);
                    cached.blooms.lock().unwrap_or_else(|p| p.into_inner()).insert((rg, column), bloom.clone());
                    bloom
                }
            };
            maybe |= bloom.is_none_or(|b| b.check(token));
            if maybe {
                break;
            }
        }
        if maybe {
            groups.push(rg);
        }
    }
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let mut clear: Vec<usize> = vec![time_index];
    clear.extend(wanted.iter().filter_map(|(f, _, _)| index_of(f.token_column())));
    clear.sort_unstable();
    clear.dedup();
    stats.token_chunks_scanned += (groups.len() * (clear.len() - 1)) as u64;
    let starts = group_starts(metadata);
    let mut rows = Vec::new();
    for rg in groups {
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(cached.file.clone(), cached.metadata.clone())
            .with_row_groups(vec![rg])
            .with_projection(ProjectionMask::leaves(parquet_schema, clear.clone()))
            .with_batch_size(16_384)
            .build()?;
        let mut offset = starts[rg];
        for batch in reader {
            let batch = batch?;
            let mask = candidate_rows(&batch, wanted, query);
            rows.extend(mask.iter().enumerate().filter(|(_, m)| *m == Some(true)).map(|(i, _)| offset + i));
            offset += batch.num_rows();
        }
    }
    Ok(rows)
}

/// The first row of each row group, and the total after the last.
fn group_starts(metadata: &parquet::file::metadata::ParquetMetaData) -> Vec<usize> {
    let mut starts = Vec::with_capacity(metadata.num_row_groups() + 1);
    let mut offset = 0usize;
    for rg in 0..metadata.num_row_groups() {
        starts.push(offset);
        offset += metadata.row_group(rg).num_rows().max(0) as usize;
    }
    starts.push(offset);
    starts
}

fn group_of(starts: &[usize], row: usize) -> Option<usize> {
    let rg = starts.partition_point(|s| *s <= row).checked_sub(1)?;
    (rg + 1 < starts.len()).then_some(rg)
}

/// A selection of `rows` (sorted file rows) relative to the chosen groups.
fn selection_in_groups(starts: &[usize], groups: &[usize], rows: &[usize], _total: i64) -> RowSelection {
    let mut ranges = Vec::with_capacity(rows.len());
    let mut base = 0usize;
    for &rg in groups {
        let (start, end) = (starts[rg], starts[rg + 1]);
        for &row in rows.iter().filter(|r| **r >= start && **r < end) {
            let at = base + row - start;
            ranges.push(at..at + 1);
        }
        base += end - start;
    }
    RowSelection::from_consecutive_ranges(ranges.into_iter(), base)
}

/// The fields a target of `kind` can appear in.
fn fields_of(kind: IdentifierKind) -> impl Iterator<Item = IdentifierField> {
    IdentifierField::ALL.into_iter().filter(move |f| f.kind() == kind)
}

fn candidate_rows(batch: &RecordBatch, wanted: &[(IdentifierField, i64, &str)], query: &Query) -> BooleanArray {
    let time = batch.column_by_name(schema::START_TIME).map(|c| c.as_primitive::<TimestampMicrosecondType>().clone());
    let Some(time) = time else { return BooleanArray::from(vec![false; batch.num_rows()]) };
    let tokens: Vec<(i64, Option<arrow_array::PrimitiveArray<Int64Type>>)> = wanted
        .iter()
        .map(|(f, t, _)| (*t, batch.column_by_name(f.token_column()).map(|c| c.as_primitive::<Int64Type>().clone())))
        .collect();
    (0..batch.num_rows())
        .map(|row| {
            let t = time.value(row);
            let in_window = t >= query.from.0 && t <= query.to.0;
            Some(
                in_window
                    && tokens.iter().any(|(token, column)| {
                        column.as_ref().is_some_and(|c| !c.is_null(row) && c.value(row) == *token)
                    }),
            )
        })
        .collect()
}

fn collect(
    batch: &RecordBatch,
    wanted: &[(IdentifierField, i64, &str)],
    query: &Query,
    preserved_under: Option<&str>,
    stats: &mut LookupStats,
    found: &mut Vec<FoundRecord>,
) {
    let text = |name: &str| batch.column_by_name(name).map(|c| c.as_string::<i32>().clone());
    let (Some(ids), Some(service)) = (text(schema::RECORD_ID), text(schema::SERVICE)) else { return };
    let direction = text(schema::DIRECTION);
    let start = batch.column_by_name(schema::START_TIME).map(|c| c.as_primitive::<TimestampMicrosecondType>().clone());
    let end = batch.column_by_name(schema::END_TIME).map(|c| c.as_primitive::<TimestampMicrosecondType>().clone());
    let port = |name: &str| batch.column_by_name(name).map(|c| c.as_primitive::<Int32Type>().clone());
    let (src_port, dst_port) = (port(schema::SRC_PORT), port(schema::DST_PORT));
    let Some(start) = start else { return };
    let sealed: HashMap<IdentifierField, arrow_array::StringArray> =
        IdentifierField::ALL.into_iter().filter_map(|f| text(f.sealed_column()).map(|c| (f, c))).collect();
    let ip = query.categories.contains(&Category::Ip);
    for row in 0..batch.num_rows() {
        let value_of = |field: IdentifierField| sealed.get(&field).filter(|c| !c.is_null(row)).map(|c| c.value(row));
        let time = TimestampMicros(start.value(row));
        // Confirm against the unsealed value: drops index, bloom and token
        // collisions, so a stranger's record is never disclosed.
        let confirmed = wanted.iter().any(|(field, _, value)| value_of(*field) == Some(*value));
        if !confirmed {
            stats.false_matches += 1;
            continue;
        }
        if time.0 < query.from.0 || time.0 > query.to.0 {
            continue;
        }
        let identifiers = IdentifierField::ALL
            .into_iter()
            .filter(|f| query.categories.contains(&f.category()))
            .filter_map(|f| value_of(f).map(|v| (f, v.to_string())))
            .collect();
        let int = |column: &Option<arrow_array::PrimitiveArray<Int32Type>>| {
            column.as_ref().filter(|_| ip).and_then(|p| (!p.is_null(row)).then(|| p.value(row)))
        };
        found.push(FoundRecord {
            day: time.partition_date(),
            record_id: ids.value(row).to_string(),
            service: service.value(row).to_string(),
            direction: direction.as_ref().and_then(|d| (!d.is_null(row)).then(|| d.value(row).to_string())),
            start_time: time,
            end_time: end.as_ref().and_then(|e| (!e.is_null(row)).then(|| TimestampMicros(e.value(row)))),
            identifiers,
            src_port: int(&src_port),
            dst_port: int(&dst_port),
            preserved_under: preserved_under.map(str::to_string),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_map_to_their_groups_and_selections_are_relative_to_chosen_groups() {
        let starts = vec![0, 10, 20, 25];
        assert_eq!(group_of(&starts, 0), Some(0));
        assert_eq!(group_of(&starts, 9), Some(0));
        assert_eq!(group_of(&starts, 10), Some(1));
        assert_eq!(group_of(&starts, 24), Some(2));
        assert_eq!(group_of(&starts, 25), None);
        // Groups 0 and 2 chosen: rows 3 and 21 are the 4th and 12th rows read.
        let selection = selection_in_groups(&starts, &[0, 2], &[3, 21], 25);
        assert_eq!(selection.row_count(), 2);
        assert_eq!(selection.total_row_count(), 15);
        let selected: Vec<usize> = {
            let mut at = 0;
            let mut out = Vec::new();
            for s in selection.iter() {
                if !s.skip {
                    out.extend(at..at + s.row_count);
                }
                at += s.row_count;
            }
            out
        };
        assert_eq!(selected, vec![3, 11]);
    }
}
