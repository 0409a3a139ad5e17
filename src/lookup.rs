//! The lookup engine: the retained records of given targets within a time
//! window, with only the allowed data categories unsealed.
//!
//! Pruning, cheapest first: days outside the window are never opened; row
//! groups are skipped by their `start_time` statistics and by the bloom
//! filters of the token columns (under the token key each file records);
//! the surviving row groups' token and time columns (clear, no key needed)
//! select the candidate rows; only those rows' sealed columns are read and
//! decrypted, and every candidate is confirmed against its unsealed value,
//! which removes bloom-filter and token-collision false matches.
//!
//! This module returns raw identifiers: it is the disclosure path. Callers
//! (the lawful-access service) must have checked the request's scope and
//! made its audit entry durable before anything leaves the process.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, BooleanArray, RecordBatch};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection};
use parquet::errors::ParquetError;
use parquet::file::statistics::Statistics;

use crate::keys::{DayKey, KeyError, KeyStore};
use crate::models::{Category, IdentifierField, IdentifierKind, KeyId, PartitionDate, TimestampMicros};
use crate::pseudonymise::Tokeniser;
use crate::read::{self, ReadError};
use crate::write::schema;

/// What to look for.
#[derive(Debug, Clone)]
pub struct Query {
    /// Targets as (kind, canonical value); see `orders::canonical_value`.
    pub targets: Vec<(IdentifierKind, String)>,
    /// Inclusive window on `start_time`.
    pub from: TimestampMicros,
    pub to: TimestampMicros,
    /// The categories whose identifiers may be disclosed.
    pub categories: BTreeSet<Category>,
}

/// One record found, with the identifiers of the allowed categories.
#[derive(Clone, PartialEq, Eq)]
pub struct FoundRecord {
    pub day: PartitionDate,
    pub record_id: String,
    pub service: String,
    pub direction: Option<String>,
    pub start_time: TimestampMicros,
    pub end_time: Option<TimestampMicros>,
    pub identifiers: Vec<(IdentifierField, String)>,
    pub src_port: Option<i32>,
    pub dst_port: Option<i32>,
}

impl std::fmt::Debug for FoundRecord {
    // A found record holds raw identifiers: Debug shows the id only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FoundRecord({}, {} identifiers)", self.record_id, self.identifiers.len())
    }
}

/// How the lookup went, for metrics and benchmarks (no identifiers).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LookupStats {
    pub days: u64,
    /// Days in the window whose key is gone (beyond retention): unavailable.
    pub days_unavailable: u64,
    pub files: u64,
    pub row_groups: u64,
    pub row_groups_read: u64,
    pub candidates: u64,
    pub false_matches: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("cannot read {path}: {source}")]
    Parquet { path: String, source: ParquetError },
}

/// Runs a query over the data directory.
pub fn find(data_dir: &Path, keys: &KeyStore, query: &Query) -> Result<(Vec<FoundRecord>, LookupStats), LookupError> {
    let mut stats = LookupStats::default();
    let mut found = Vec::new();
    let (first, last) = (query.from.partition_date(), query.to.partition_date());
    let mut day = first;
    while day <= last {
        stats.days += 1;
        let files = read::list_files(data_dir, day)?;
        match keys.existing_day_key(day)? {
            Some(key) => {
                for file in files {
                    stats.files += 1;
                    search_file(&file, &key, keys, query, &mut stats, &mut found)
                        .map_err(|source| LookupError::Parquet { path: file.display().to_string(), source })?;
                }
            }
            None => stats.days_unavailable += 1,
        }
        let Some(next) = PartitionDate::from_days_since_epoch(day.days_since_epoch() + 1) else { break };
        day = next;
    }
    found.sort_by(|a, b| (a.start_time, &a.record_id).cmp(&(b.start_time, &b.record_id)));
    Ok((found, stats))
}

/// The fields a target of `kind` can appear in.
fn fields_of(kind: IdentifierKind) -> impl Iterator<Item = IdentifierField> {
    IdentifierField::ALL.into_iter().filter(move |f| f.kind() == kind)
}

fn options(path: &Path, key: &DayKey) -> Result<ArrowReaderOptions, ParquetError> {
    let secret = key.secret.expose().to_vec();
    let mut builder = parquet::encryption::decrypt::FileDecryptionProperties::builder(secret.clone())
        .with_aad_prefix(read::aad_prefix(path).into_bytes());
    for column in schema::sealed_columns() {
        builder = builder.with_column_key(column, secret.clone());
    }
    Ok(ArrowReaderOptions::new().with_file_decryption_properties(builder.build()?))
}

fn search_file(
    path: &Path,
    key: &DayKey,
    keys: &KeyStore,
    query: &Query,
    stats: &mut LookupStats,
    found: &mut Vec<FoundRecord>,
) -> Result<(), ParquetError> {
    let open = || -> Result<ParquetRecordBatchReaderBuilder<File>, ParquetError> {
        let file = File::open(path).map_err(|e| ParquetError::External(Box::new(e)))?;
        ParquetRecordBatchReaderBuilder::try_new_with_options(file, options(path, key)?)
    };
    let builder = open()?;
    let metadata = builder.metadata().clone();
    let token_key = metadata
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == schema::meta::TOKEN_KEY_ID))
        .and_then(|e| e.value.clone())
        .and_then(KeyId::new)
        .and_then(|id| keys.token_key(&id).cloned());
    let Some(token_key) = token_key else { return Ok(()) };
    let tokeniser = Tokeniser::new(&token_key);
    // (field, token, canonical value) for every field a target can be in.
    let wanted: Vec<(IdentifierField, i64, &str)> = query
        .targets
        .iter()
        .flat_map(|(kind, value)| {
            let token = tokeniser.token(*kind, value.as_bytes()).0;
            fields_of(*kind).map(move |f| (f, token, value.as_str()))
        })
        .collect();
    let parquet_schema = metadata.file_metadata().schema_descr();
    let index_of = |name: &str| parquet_schema.columns().iter().position(|c| c.name() == name);
    let Some(time_index) = index_of(schema::START_TIME) else { return Ok(()) };

    // Row groups: by time statistics, then by bloom filters.
    let mut groups = Vec::new();
    for rg in 0..metadata.num_row_groups() {
        stats.row_groups += 1;
        if let Some(Statistics::Int64(s)) = metadata.row_group(rg).column(time_index).statistics()
            && let (Some(min), Some(max)) = (s.min_opt(), s.max_opt())
            && (*max < query.from.0 || *min > query.to.0)
        {
            continue;
        }
        let mut maybe = false;
        for (field, token, _) in &wanted {
            let Some(column) = index_of(field.token_column()) else { continue };
            maybe |= match builder.get_row_group_column_bloom_filter(rg, column)? {
                Some(bloom) => bloom.check(token),
                None => true,
            };
            if maybe {
                break;
            }
        }
        if maybe {
            groups.push(rg);
        }
    }
    if groups.is_empty() {
        return Ok(());
    }
    stats.row_groups_read += groups.len() as u64;

    // Candidate rows, from clear columns only.
    let mut clear: Vec<usize> = vec![time_index];
    clear.extend(wanted.iter().filter_map(|(f, _, _)| index_of(f.token_column())));
    let reader = builder
        .with_row_groups(groups.clone())
        .with_projection(ProjectionMask::leaves(parquet_schema, clear))
        .build()?;
    let mut filters = Vec::new();
    for batch in reader {
        let batch = batch?;
        filters.push(candidate_rows(&batch, &wanted, query));
    }
    let candidates: u64 = filters.iter().map(|f| f.true_count() as u64).sum();
    if candidates == 0 {
        return Ok(());
    }
    stats.candidates += candidates;

    // Only the candidates' rows, with their sealed columns.
    let needed: BTreeSet<IdentifierField> = IdentifierField::ALL
        .into_iter()
        .filter(|f| query.categories.contains(&f.category()) || wanted.iter().any(|(w, _, _)| w == f))
        .collect();
    let mut columns: Vec<usize> = [
        schema::RECORD_ID,
        schema::SERVICE,
        schema::DIRECTION,
        schema::START_TIME,
        schema::END_TIME,
        schema::SRC_PORT,
        schema::DST_PORT,
    ]
    .iter()
    .filter_map(|c| index_of(c))
    .collect();
    columns.extend(needed.iter().filter_map(|f| index_of(f.sealed_column())));
    let reader = open()?
        .with_row_groups(groups)
        .with_row_selection(RowSelection::from_filters(&filters))
        .with_projection(ProjectionMask::leaves(parquet_schema, columns))
        .build()?;
    for batch in reader {
        let batch = batch?;
        collect(&batch, &wanted, query, stats, found);
    }
    Ok(())
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
    for row in 0..batch.num_rows() {
        let value_of = |field: IdentifierField| {
            text(field.sealed_column()).and_then(|c| (!c.is_null(row)).then(|| c.value(row).to_string()))
        };
        // Confirm against the unsealed value: drops bloom and token
        // collisions, so a stranger's record is never disclosed.
        let confirmed = wanted.iter().any(|(field, _, value)| value_of(*field).as_deref() == Some(*value));
        if !confirmed {
            stats.false_matches += 1;
            continue;
        }
        let identifiers = IdentifierField::ALL
            .into_iter()
            .filter(|f| query.categories.contains(&f.category()))
            .filter_map(|f| value_of(f).map(|v| (f, v)))
            .collect();
        let time = TimestampMicros(start.value(row));
        found.push(FoundRecord {
            day: time.partition_date(),
            record_id: ids.value(row).to_string(),
            service: service.value(row).to_string(),
            direction: direction.as_ref().and_then(|d| (!d.is_null(row)).then(|| d.value(row).to_string())),
            start_time: time,
            end_time: end.as_ref().and_then(|e| (!e.is_null(row)).then(|| TimestampMicros(e.value(row)))),
            identifiers,
            src_port: src_port
                .as_ref()
                .filter(|_| query.categories.contains(&Category::Ip))
                .and_then(|p| (!p.is_null(row)).then(|| p.value(row))),
            dst_port: dst_port
                .as_ref()
                .filter(|_| query.categories.contains(&Category::Ip))
                .and_then(|p| (!p.is_null(row)).then(|| p.value(row))),
        });
    }
}
