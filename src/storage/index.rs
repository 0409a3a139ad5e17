//! The token index: one small sidecar file per data file that says in which
//! rows each token occurs, so that a lookup reads one index page and then
//! only the pages of the matching rows, instead of scanning token columns.
//!
//! Why a sidecar and not a column: the random token columns carry no useful
//! min/max, and a subscriber with a handful of records a day appears in
//! every row group, so neither statistics nor bloom filters can point at
//! rows. A list sorted by token can.
//!
//! Format: itself a Parquet file (no hand-written binary format to get
//! wrong), beside its data file ([`layout::index_path`]). Two `INT32`
//! columns, sorted by (`token`, `granule`), deduplicated:
//!
//! - `token`: the high bits of the 64-bit token, as many as the file needs
//!   ([`prefix_bits`], recorded as `cdrvault.prefix_bits`; delta-encoded,
//!   page statistics, so the column index finds the page of a token);
//! - `granule`: the row within the data file, counted over its row groups,
//!   divided by [`GRANULE_ROWS`] (8). A lookup reads the 8 rows of a
//!   granule; it decodes whole pages anyway, and the writer sorts a file's
//!   rows by calling number, so a subscriber's records as calling party
//!   (with their IMSI, IMEI and SIP URI) share a few granules: one entry
//!   instead of one per row, and 3 bits less per entry.
//!
//! A prefix is enough: a lookup confirms every row against the unsealed
//! value, so a prefix shared by two identifiers only costs the reading of a
//! granule that is then dropped. With n entries the index keeps about
//! log2(n) + 6 bits, so a looked-up token meets a foreign entry with odds
//! of about 1 in 64 per file, and each bit less saves a bit per entry
//! (sorted prefixes delta-pack to about their bits minus log2(n)). Cell
//! fields are not indexed: a cell dump is
//! bounded in time and scans the cell token columns of its day, and cell
//! ids recur so much that their entries would cost more than they save.
//!
//! The index is derived data. It holds tokens (never a raw identifier, never
//! anything sealed) and can be deleted and rebuilt from the data file's
//! clear token columns at any time ([`rebuild`]). The writer publishes it
//! durably before the data file is renamed into place, so a visible data
//! file always has its index; the key-value metadata names the data file,
//! its size and row count, so a stale or foreign index is recognised and
//! ignored (lookups then fall back to bloom filters and a scan).

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, Int32Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::basic::{Compression, Encoding};
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, PageIndexPolicy};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::direct;
use super::error::WriteError;
use super::layout;
use super::published::PublishedFile;
use super::read::{self, ReadError};
use crate::model::{IdentifierField, IdentifierKind, KeyId};
use crate::ops::durable::{self, DurableError};

/// The two columns of an index file.
pub const TOKEN: &str = "token";
pub const GRANULE: &str = "granule";

/// Rows per granule, the unit an index entry points at.
pub const GRANULE_ROWS: u32 = 8;

/// Written into each index file as `cdrvault.index_version`. Version 1
/// (32-bit prefixes, no `cdrvault.prefix_bits`) is still read.
pub const INDEX_VERSION: &str = "2";

/// The bits of a token an index keeps beyond log2 of its entries.
const PREFIX_MARGIN_BITS: u32 = 6;

/// Key-value metadata of an index file.
pub mod meta {
    pub const VERSION: &str = "cdrvault.index_version";
    /// The data file's name (not its path: the pair moves together).
    pub const DATA_FILE: &str = "cdrvault.data_file";
    pub const DATA_BYTES: &str = "cdrvault.data_bytes";
    pub const DATA_ROWS: &str = "cdrvault.data_rows";
    pub const GRANULE_ROWS: &str = "cdrvault.granule_rows";
    pub const TOKEN_KEY_ID: &str = "cdrvault.token_key_id";
    /// How many high bits of a token the `token` column keeps.
    pub const PREFIX_BITS: &str = "cdrvault.prefix_bits";
}

/// Entries per index page: the unit a lookup decodes per token.
const PAGE_ROWS: usize = 1_024;

/// True for the kinds the index covers (all but cells).
pub fn is_indexed(kind: IdentifierKind) -> bool {
    kind != IdentifierKind::Cell
}

/// The fields whose tokens go into the index.
pub fn indexed_fields() -> impl Iterator<Item = IdentifierField> {
    IdentifierField::ALL.into_iter().filter(|f| is_indexed(f.kind()))
}

/// The high 32 bits of a token: what the writer sorts by, before
/// [`write`] keeps the [`prefix_bits`] the file needs.
pub fn prefix(token: i64) -> i32 {
    (token >> 32) as i32
}

/// The bits of the token an index of `entries` entries keeps: log2 of the
/// entries plus [`PREFIX_MARGIN_BITS`], between 16 and 32.
pub fn prefix_bits(entries: usize) -> u32 {
    let log2 = usize::BITS - entries.max(1).saturating_sub(1).leading_zeros();
    (log2 + PREFIX_MARGIN_BITS).clamp(16, 32)
}

/// `prefix` (32 bits) cut to its high `bits`, order kept.
fn shortened(prefix: i32, bits: u32) -> i32 {
    prefix >> (32 - bits)
}

fn index_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(TOKEN, DataType::Int32, false), Field::new(GRANULE, DataType::Int32, false)]))
}

/// Appends the entry keys of the rows of `batch`, whose first row is row
/// `first_row` of the data file, to `keys` (unsorted, with duplicates; see
/// [`sorted_entries`]). A file written group by group adds each group's.
pub fn add_keys(batch: &RecordBatch, first_row: usize, keys: &mut Vec<u64>) {
    for field in indexed_fields() {
        let Some(column) = batch.column_by_name(field.token_column()) else { continue };
        let Some(tokens) = column.as_primitive_opt::<Int64Type>() else { continue };
        keys.reserve(tokens.len() - tokens.null_count());
        for row in 0..tokens.len() {
            if tokens.is_valid(row) {
                // Flipping the sign bit makes the unsigned order of the key
                // the signed order of the prefix.
                let high = (prefix(tokens.value(row)) as u32) ^ 0x8000_0000;
                let granule = ((first_row + row) / GRANULE_ROWS as usize) as u32;
                keys.push((u64::from(high) << 32) | u64::from(granule));
            }
        }
    }
}

/// The (token prefix, granule) entries of the keys, sorted and deduplicated.
pub fn sorted_entries(mut keys: Vec<u64>) -> Vec<(i32, u32)> {
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter().map(|k| ((((k >> 32) as u32) ^ 0x8000_0000) as i32, k as u32)).collect()
}

/// What an index file describes.
#[derive(Debug, Clone)]
pub struct IndexedFile<'a> {
    /// The data file's name.
    pub name: &'a str,
    pub bytes: u64,
    pub rows: u64,
    pub token_key_id: &'a KeyId,
}

/// Writes the index of a data file from its entries, sorted and
/// deduplicated ([`sorted_entries`]), durably (temporary, fsync, rename,
/// fsync of the directory). Returns its size in bytes.
pub fn write(path: &Path, mut entries: Vec<(i32, u32)>, data: &IndexedFile<'_>) -> Result<u64, WriteError> {
    let bits = prefix_bits(entries.len());
    for (token, _) in &mut entries {
        *token = shortened(*token, bits);
    }
    // Still sorted: shortening keeps the order, and may make neighbours equal.
    entries.dedup();
    let tokens = Int32Array::from_iter_values(entries.iter().map(|(t, _)| *t));
    // Granules fit: a data file (one day of one token key) is far below
    // 2^34 rows.
    let granules = Int32Array::from_iter_values(entries.iter().map(|(_, g)| *g as i32));
    let index = RecordBatch::try_new(index_schema(), vec![Arc::new(tokens), Arc::new(granules)])?;
    let properties = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_encoding(Encoding::DELTA_BINARY_PACKED)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_column_statistics_enabled(ColumnPath::from(TOKEN), EnabledStatistics::Page)
        // Delta-packed granules are as random as their rows, and sorted
        // random prefixes pack to their entropy: zstd gains little on
        // either, and costs a lookup a decompression context per file.
        .set_compression(Compression::UNCOMPRESSED)
        .set_max_row_group_row_count(Some(entries.len().max(1)))
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_key_value_metadata(Some(vec![
            KeyValue::new(meta::VERSION.into(), INDEX_VERSION.to_string()),
            KeyValue::new(meta::DATA_FILE.into(), data.name.to_string()),
            KeyValue::new(meta::DATA_BYTES.into(), data.bytes.to_string()),
            KeyValue::new(meta::DATA_ROWS.into(), data.rows.to_string()),
            KeyValue::new(meta::GRANULE_ROWS.into(), GRANULE_ROWS.to_string()),
            KeyValue::new(meta::TOKEN_KEY_ID.into(), data.token_key_id.to_string()),
            KeyValue::new(meta::PREFIX_BITS.into(), bits.to_string()),
        ]))
        .build();

    let tmp = durable::temporary_path(path);
    durable::remove_file(&tmp)?;
    let written = (|| -> Result<u64, WriteError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| DurableError::io("create", &tmp, e))?;
        let mut writer = ArrowWriter::try_new(file, index_schema(), Some(properties))?;
        writer.write(&index)?;
        let file: File = writer.into_inner()?;
        durable::fsync_file(&file, &tmp)?;
        Ok(file.metadata().map(|m| m.len()).unwrap_or(0))
    })();
    match written {
        Ok(bytes) => {
            durable::publish(&tmp, path)?;
            Ok(bytes)
        }
        Err(e) => {
            // Best effort: the temporary is hidden and never read.
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Rebuilds the index of a published data file from its clear token
/// columns (no key needed): for a file whose index was lost or damaged.
pub fn rebuild(data_file: &Path) -> Result<u64, WriteError> {
    let unreadable = |e: ReadError| ParquetError::External(Box::new(e));
    let bytes = std::fs::metadata(data_file).map_err(|e| DurableError::io("stat", data_file, e))?.len();
    let (rows, token_key_id) = read::footer_facts(data_file).map_err(unreadable)?;
    let token_key_id = token_key_id.ok_or_else(|| ParquetError::General("data file names no token key".into()))?;
    let wanted: Vec<&str> = indexed_fields().map(IdentifierField::token_column).collect();
    let mut keys = Vec::new();
    let mut first_row = 0;
    for batch in read::file_reader(data_file, None, &wanted, 8_192).map_err(unreadable)? {
        let batch = batch?;
        add_keys(&batch, first_row, &mut keys);
        first_row += batch.num_rows();
    }
    let name = data_file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let data = IndexedFile { name: &name, bytes, rows, token_key_id: &token_key_id };
    write(&layout::index_path(data_file), sorted_entries(keys), &data)
}

fn file_meta(metadata: &parquet::file::metadata::ParquetMetaData, key: &str) -> Option<String> {
    metadata.file_metadata().key_value_metadata()?.iter().find(|kv| kv.key == key)?.value.clone()
}

/// An opened index: its footer and page index, parsed once and kept by the
/// lookup engine's cache. Holds tokens only.
#[derive(Debug, Clone)]
pub struct IndexReader {
    /// The index file, mapped where the system allows.
    file: PublishedFile,
    metadata: ArrowReaderMetadata,
    pub data_file: String,
    pub data_bytes: u64,
    pub data_rows: u64,
    /// The high bits of a token its `token` column keeps.
    prefix_bits: u32,
}

impl IndexReader {
    /// Opens the index of `data_file`; `None` if there is none.
    pub fn open(data_file: &Path) -> Result<Option<IndexReader>, ParquetError> {
        let path = layout::index_path(data_file);
        let file = match PublishedFile::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ParquetError::External(Box::new(e))),
        };
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
        let metadata = ArrowReaderMetadata::load(&file, options)?;
        let field = |key: &str| file_meta(metadata.metadata(), key);
        let prefix_bits = match field(meta::VERSION).as_deref() {
            Some("1") => Some(32),
            Some(INDEX_VERSION) => field(meta::PREFIX_BITS).and_then(|b| b.parse().ok()),
            _ => None,
        };
        let prefix_bits = match prefix_bits {
            Some(bits @ 16..=32) if field(meta::GRANULE_ROWS).as_deref() == Some(&GRANULE_ROWS.to_string()) => bits,
            _ => return Err(ParquetError::General("unknown index version".into())),
        };
        let number = |key: &str| field(key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(u64::MAX);
        Ok(Some(IndexReader {
            data_file: field(meta::DATA_FILE).unwrap_or_default(),
            data_bytes: number(meta::DATA_BYTES),
            data_rows: number(meta::DATA_ROWS),
            prefix_bits,
            file,
            metadata,
        }))
    }

    /// True if this index was written for `name` with this size and row count.
    pub fn describes(&self, name: &str, bytes: u64, rows: u64) -> bool {
        self.data_file == name && self.data_bytes == bytes && self.data_rows == rows
    }

    /// The rows (sorted, distinct) of the granules whose indexed tokens
    /// share the index's prefix with one of `tokens`, and the index pages
    /// read to find them.
    pub fn rows_for(&self, tokens: &[i64]) -> Result<(Vec<u32>, u64), ParquetError> {
        let prefixes: Vec<i32> = tokens.iter().map(|t| shortened(prefix(*t), self.prefix_bits)).collect();
        let chosen = self.pages_of(&prefixes);
        if chosen.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let rows = match self.rows_direct(&chosen, &prefixes)? {
            Some(rows) => rows,
            None => self.rows_through_reader(&chosen, &prefixes)?,
        };
        Ok((rows, chosen.len() as u64))
    }

    /// The index pages that can hold one of `prefixes`: (row group, page,
    /// the page's rows in the file).
    fn pages_of(&self, prefixes: &[i32]) -> Vec<(usize, usize, std::ops::Range<usize>)> {
        let metadata = self.metadata.metadata();
        let mut chosen = Vec::new();
        let mut offset = 0usize;
        for rg in 0..metadata.num_row_groups() {
            let group_rows = metadata.row_group(rg).num_rows().max(0) as usize;
            let page_index = metadata.page_index_for_row_group(rg);
            let Some(locations) = page_index.page_locations(0) else {
                offset += group_rows;
                continue;
            };
            let column_index = match page_index.column_index(0) {
                Some(ColumnIndexMetaData::INT32(index)) => Some(index),
                _ => None,
            };
            let bounds =
                |page: usize| column_index.and_then(|i| i.min_value(page).copied().zip(i.max_value(page).copied()));
            for page in pages_holding(locations.len(), bounds, prefixes) {
                let start = offset + locations[page].first_row_index.max(0) as usize;
                let end = locations
                    .get(page + 1)
                    .map_or(offset + group_rows, |next| offset + next.first_row_index.max(0) as usize);
                chosen.push((rg, page, start..end));
            }
            offset += group_rows;
        }
        chosen
    }

    /// What [`Self::rows_direct`] finds, through the parquet crate's reader.
    fn rows_through_reader(
        &self,
        chosen: &[(usize, usize, std::ops::Range<usize>)],
        prefixes: &[i32],
    ) -> Result<Vec<u32>, ParquetError> {
        let total = self.metadata.metadata().file_metadata().num_rows().max(0) as usize;
        let ranges = chosen.iter().map(|(_, _, rows)| rows.clone());
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(self.file.clone(), self.metadata.clone())
            .with_row_selection(RowSelection::from_consecutive_ranges(ranges, total))
            .with_batch_size(PAGE_ROWS * 2)
            .build()?;
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch?;
            let (Some(tokens), Some(positions)) = (
                batch.column_by_name(TOKEN).and_then(|c| c.as_primitive_opt::<Int32Type>()),
                batch.column_by_name(GRANULE).and_then(|c| c.as_primitive_opt::<Int32Type>()),
            ) else {
                return Err(ParquetError::General("index without token or granule column".into()));
            };
            for i in 0..tokens.len() {
                if prefixes.contains(&tokens.value(i)) {
                    let first = positions.value(i).max(0) as u64 * u64::from(GRANULE_ROWS);
                    let end = (first + u64::from(GRANULE_ROWS)).min(self.data_rows);
                    rows.extend((first..end).map(|r| r as u32));
                }
            }
        }
        rows.sort_unstable();
        rows.dedup();
        Ok(rows)
    }

    /// The rows of the granules of `prefixes` in the `chosen` pages (row
    /// group, page), read straight from the pages
    /// ([`direct::integer_page`]); `None` if a page is not of a kind that
    /// reader reads, for the parquet crate's reader to read instead.
    fn rows_direct(
        &self,
        chosen: &[(usize, usize, std::ops::Range<usize>)],
        prefixes: &[i32],
    ) -> Result<Option<Vec<u32>>, ParquetError> {
        let metadata = self.metadata.metadata();
        let columns = metadata.file_metadata().schema_descr();
        let position = |name: &str| columns.columns().iter().position(|c| c.name() == name);
        let (Some(token_column), Some(granule_column)) = (position(TOKEN), position(GRANULE)) else { return Ok(None) };
        // Pages are sorted by prefix: none is decoded past the greatest sought.
        let greatest = prefixes.iter().copied().max().unwrap_or(i32::MIN);
        let past = |token: i64| token as i32 > greatest;
        let mut rows = Vec::new();
        for &(rg, page, _) in chosen {
            let index = metadata.page_index_for_row_group(rg);
            let (Some(token_pages), Some(granule_pages)) =
                (index.page_locations(token_column), index.page_locations(granule_column))
            else {
                return Ok(None);
            };
            let group = metadata.row_group(rg);
            let tokens =
                direct::integer_page(&self.file, group.column(token_column), &token_pages[page], usize::MAX, past)?;
            let Some(tokens) = tokens else { return Ok(None) };
            // The granule page of each matching entry, and the entry's
            // place in it.
            let mut matching: Vec<(usize, usize)> = Vec::new();
            for (i, token) in tokens.iter().enumerate() {
                if !prefixes.contains(&(*token as i32)) {
                    continue;
                }
                let row = token_pages[page].first_row_index + i as i64;
                let Some(at) = granule_pages.partition_point(|p| p.first_row_index <= row).checked_sub(1) else {
                    return Err(ParquetError::General("an index granule before its first page".into()));
                };
                let place = usize::try_from(row - granule_pages[at].first_row_index).unwrap_or(usize::MAX);
                matching.push((at, place));
            }
            // Each granule page once, decoded up to its last matching entry.
            for entries in matching.chunk_by(|a, b| a.0 == b.0) {
                let (at, last) = entries[entries.len() - 1];
                let limit = last.saturating_add(1);
                let granules =
                    direct::integer_page(&self.file, group.column(granule_column), &granule_pages[at], limit, |_| {
                        false
                    })?;
                let Some(granules) = granules else { return Ok(None) };
                for (_, place) in entries {
                    let granule = granules
                        .get(*place)
                        .ok_or_else(|| ParquetError::General("an index token without its granule".into()))?;
                    let first = (*granule as i32).max(0) as u64 * u64::from(GRANULE_ROWS);
                    let end = (first + u64::from(GRANULE_ROWS)).min(self.data_rows);
                    rows.extend((first..end).map(|r| r as u32));
                }
            }
        }
        rows.sort_unstable();
        rows.dedup();
        Ok(Some(rows))
    }
}

/// The pages (of `pages`, `bounds` giving each one's min and max) that
/// can hold one of `prefixes`, in order. An index is sorted by token, so
/// the pages of a prefix are found by binary search. A page without
/// bounds is taken to hold whatever prefix the search meets it with
/// (more pages read, never fewer); where its neighbours leave no room
/// for a prefix, the search passes it by.
fn pages_holding(pages: usize, bounds: impl Fn(usize) -> Option<(i32, i32)>, prefixes: &[i32]) -> Vec<usize> {
    let min = |page: usize| bounds(page).map_or(i32::MIN, |(min, _)| min);
    let max = |page: usize| bounds(page).map_or(i32::MAX, |(_, max)| max);
    let mut holding = Vec::new();
    for prefix in prefixes {
        // The first page whose max reaches the prefix, then on while the
        // pages start at or below it (a prefix can span pages).
        let (mut low, mut high) = (0, pages);
        while low < high {
            let middle = low + (high - low) / 2;
            if max(middle) < *prefix {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        holding.extend((low..pages).take_while(|page| min(*page) <= *prefix));
    }
    holding.sort_unstable();
    holding.dedup();
    holding
}

#[cfg(test)]
mod tests;
