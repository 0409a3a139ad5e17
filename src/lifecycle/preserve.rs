//! Preservation copies: before an expired day is destroyed, the records of
//! each active preservation order's targets within its window are copied
//! into the order's own area, sealed with the order's key.
//!
//! An order's area is laid out like the data directory
//! ([`layout::order_dir`]), so the same readers, the lookup engine among
//! them, read it. A copy keeps the source file's name, so making it again
//! after a crash replaces it instead of duplicating it. Matches are
//! confirmed against the unsealed value, so a token collision never
//! preserves a stranger's record.

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};

use crate::keys::{KeyError, KeyStore};
use crate::model::{IdentifierField, IdentifierKind, KeyId, PartitionDate};
use crate::ops::durable::{self, DurableError};
use crate::privacy::token::Tokeniser;
use crate::registry::Order;
use crate::storage::config::ParquetConfig;
use crate::storage::error::WriteError;
use crate::storage::layout::{self, order_dir};
use crate::storage::read::{self, ReadError};
use crate::storage::schema;
use crate::storage::write::ParquetWriter;

#[derive(Debug, thiserror::Error)]
pub enum PreserveError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Durable(#[from] DurableError),
    #[error("the key of order {0} is missing")]
    OrderKeyMissing(String),
}

impl PreserveError {
    /// True when the process must stop: an fsync failed.
    pub fn is_fatal(&self) -> bool {
        match self {
            PreserveError::Write(e) => e.is_fatal(),
            PreserveError::Keys(e) => e.is_fatal(),
            PreserveError::Durable(e) => e.is_fatal(),
            PreserveError::Read(_) | PreserveError::OrderKeyMissing(_) => false,
        }
    }
}

/// Copies the records of `order`'s targets (`targets`, unsealed) from `day`
/// (read with the day's key) into the order's area, sealed under the
/// order's key. Returns the rows preserved.
pub fn preserve_day(
    data_dir: &Path,
    keys: &KeyStore,
    order: &Order,
    targets: &[(IdentifierKind, String)],
    day: PartitionDate,
    config: &ParquetConfig,
) -> Result<u64, PreserveError> {
    let Some(day_key) = keys.existing_day_key(day)? else { return Ok(0) };
    let order_key = keys.order_key(&order.id)?.ok_or_else(|| PreserveError::OrderKeyMissing(order.id.clone()))?;
    let order_key = order_key.for_day(day);
    let writer = ParquetWriter::new(&order_dir(data_dir, &order.id), config.clone());
    let columns: Vec<&str> = writer.schema().fields().iter().map(|f| f.name().as_str()).collect();
    let day_tokens = Tokeniser::new(&day_key.token);
    let order_tokens = Tokeniser::new(&order_key.token);
    let target_tokens: Vec<i64> =
        targets.iter().map(|(kind, value)| day_tokens.token(*kind, value.as_bytes()).0).collect();
    let mut preserved = 0;
    for file in read::list_files(data_dir, day)? {
        let mut kept = Vec::new();
        for batch in read::read_file(&file, Some(&day_key), &columns)? {
            let mask = matching_rows(&batch, &day_key.token.id, order, targets, &target_tokens);
            if mask.true_count() == 0 {
                continue;
            }
            let filtered = arrow_select::filter::filter_record_batch(&batch, &mask).map_err(WriteError::from)?;
            kept.push(reseal(filtered, &order_key.id, &order_tokens)?);
        }
        if kept.is_empty() {
            continue;
        }
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let written = writer.write_day_named(day, &name, &kept, &order_key, &order_key.token.id)?;
        preserved += written.rows as u64;
    }
    Ok(preserved)
}

/// Rows within the order's window that carry one of its targets (whose
/// tokens under the day's token key are `target_tokens`), confirmed
/// against the unsealed value.
fn matching_rows(
    batch: &RecordBatch,
    day_token_key: &KeyId,
    order: &Order,
    targets: &[(IdentifierKind, String)],
    target_tokens: &[i64],
) -> BooleanArray {
    let start = batch.column_by_name(schema::START_TIME).map(|c| c.as_primitive::<TimestampMicrosecondType>().clone());
    let token_keys = batch.column_by_name(schema::TOKEN_KEY_ID).map(|c| c.as_string::<i32>().clone());
    let (Some(start), Some(token_keys)) = (start, token_keys) else {
        return BooleanArray::from(vec![false; batch.num_rows()]);
    };
    let fields: Vec<_> = IdentifierField::ALL
        .into_iter()
        .filter_map(|f| {
            let tokens = batch.column_by_name(f.token_column())?.as_primitive::<Int64Type>().clone();
            let sealed = batch.column_by_name(f.sealed_column())?.as_string::<i32>().clone();
            Some((f, tokens, sealed))
        })
        .collect();
    let mut mask = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let t = start.value(row);
        let in_window = t >= order.window_start.0 && t <= order.window_end.0;
        let hit = in_window
            && token_keys.value(row) == day_token_key.as_str()
            && targets.iter().zip(target_tokens).any(|((kind, value), token)| {
                fields.iter().any(|(f, tokens, sealed)| {
                    f.kind() == *kind
                        && !tokens.is_null(row)
                        && tokens.value(row) == *token
                        && sealed.value(row) == value
                })
            });
        mask.push(hit);
    }
    BooleanArray::from(mask)
}

/// The copy is sealed with the order's key (its `seal_key_id` says so) and
/// tokenised anew under the order's token key: it stays searchable once
/// its day's token key is destroyed, for as long as the order's key lives,
/// and its tokens match nothing in the day's files.
fn reseal(batch: RecordBatch, key_id: &KeyId, tokens: &Tokeniser) -> Result<RecordBatch, WriteError> {
    let schema = batch.schema();
    let rows = batch.num_rows();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    if let Ok(index) = schema.index_of(schema::SEAL_KEY_ID) {
        columns[index] = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(key_id.as_str(), rows)));
    }
    if let Ok(index) = schema.index_of(schema::TOKEN_KEY_ID) {
        columns[index] = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(tokens.key_id().as_str(), rows)));
    }
    for field in IdentifierField::ALL {
        let (Ok(token_index), Some(sealed)) =
            (schema.index_of(field.token_column()), batch.column_by_name(field.sealed_column()))
        else {
            continue;
        };
        // The sealed column holds the canonical value: what ingest tokenised.
        let sealed = sealed.as_string::<i32>();
        let retokenised: Int64Array =
            sealed.iter().map(|value| value.map(|v| tokens.token(field.kind(), v.as_bytes()).0)).collect();
        columns[token_index] = Arc::new(retokenised);
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// The data files in an order's area.
pub fn area_files(data_dir: &Path, order: &str) -> Result<u64, PreserveError> {
    let root = order_dir(data_dir, order);
    let mut files = 0;
    for day in read::list_days(&root)? {
        files += read::list_files(&root, day)?.len() as u64;
    }
    Ok(files)
}

/// Deletes an order's area (data files, their indexes, anything left),
/// durably. Returns the data files removed.
pub fn destroy_area(data_dir: &Path, order: &str) -> Result<u64, PreserveError> {
    let root = order_dir(data_dir, order);
    let mut removed = 0;
    for day in read::list_days(&root)? {
        let dir = layout::day_dir(&root, day);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                durable::remove_file(&entry.path())?;
                // Data files are counted; their token indexes (and any
                // temporaries) go with them.
                if layout::is_data_file(&entry.file_name().to_string_lossy()) {
                    removed += 1;
                }
            }
        }
        remove_dir(&dir)?;
    }
    remove_dir(&root.join(layout::CDR_DIR))?;
    remove_dir(&root)?;
    Ok(removed)
}

fn remove_dir(dir: &Path) -> Result<(), DurableError> {
    match std::fs::remove_dir(dir) {
        Ok(()) => durable::fsync_dir(dir.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DurableError::io("rmdir", dir, e)),
    }
}
