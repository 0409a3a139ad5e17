//! How a data file and its companion are encoded: compression, page sizes,
//! statistics, bloom filters, and Parquet Modular Encryption of the whole
//! companion under the day key. The data file holds no sealed column and
//! no encryption, so every standard reader opens all of it; the companion
//! is encrypted footer and all, and only cdrvault opens it. Statistics are
//! disabled on sealed columns so that no min/max of a raw identifier
//! exists, even encrypted. `docs/storage-format.md` says why each choice
//! was made.

use parquet::basic::{Compression, ZstdLevel};
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::keys::DayKey;
use crate::model::{IdentifierField, KeyId, PartitionDate};
use crate::storage::config::ParquetConfig;
use crate::storage::error::WriteError;
use crate::storage::schema;

/// The properties of a new public data file of `date`, holding `rows`
/// rows (which sizes the bloom filters), compressed at `zstd_level` (the
/// token columns only if `compress_tokens`): clear columns only, no key
/// needed to read any of it.
#[allow(clippy::too_many_arguments)]
pub(super) fn public_properties(
    config: &ParquetConfig,
    zstd_level: i32,
    compress_tokens: bool,
    date: PartitionDate,
    seal_key_id: &KeyId,
    token_key_id: &KeyId,
    file_id: &str,
    rows: usize,
) -> Result<WriterProperties, WriteError> {
    let zstd = ZstdLevel::try_new(zstd_level)?;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(zstd))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(config.row_group_rows))
        .set_data_page_row_count_limit(config.data_page_rows)
        .set_write_batch_size(write_batch_size(config))
        .set_key_value_metadata(Some(vec![
            KeyValue::new(schema::meta::SCHEMA_VERSION.into(), schema::SCHEMA_VERSION.to_string()),
            KeyValue::new(schema::meta::PARTITION_DATE.into(), date.to_string()),
            KeyValue::new(schema::meta::TOKEN_KEY_ID.into(), token_key_id.to_string()),
            KeyValue::new(schema::meta::SEAL_KEY_ID.into(), seal_key_id.to_string()),
            KeyValue::new(schema::meta::FILE_ID.into(), file_id.to_string()),
        ]));
    // Record ids are unique: a dictionary would only be built to be
    // thrown away.
    builder = builder.set_column_dictionary_enabled(ColumnPath::from(schema::RECORD_ID), false);
    // Times are nearly unique too; deltas take about 5 bytes of 8.
    for column in [schema::START_TIME, schema::END_TIME] {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), parquet::basic::Encoding::DELTA_BINARY_PACKED);
    }
    // Volumes are nearly unique: their dictionary would be as large as
    // the values (benches/README.md, "Storage, column by column").
    for column in [schema::BYTES_UP, schema::BYTES_DOWN] {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), parquet::basic::Encoding::DELTA_BINARY_PACKED);
    }
    // Source ports and addresses are ephemeral: a handful of rows each, so
    // their dictionaries (of ports, of address tokens) cost more than the
    // plain values. The address token is still indexed and bloom-filtered.
    for column in [schema::SRC_PORT, IdentifierField::SrcIp.token_column()] {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    // Delta-packed times and tiny dictionary indices gain nothing from
    // zstd (benches/README.md), while each compressed column chunk a
    // lookup touches costs it a decompression context.
    for column in [schema::SERVICE, schema::DIRECTION, schema::START_TIME, schema::END_TIME, schema::DST_PORT] {
        builder = builder.set_column_compression(ColumnPath::from(column), Compression::UNCOMPRESSED);
    }
    for column in lookup_columns() {
        builder = builder.set_column_data_page_row_count_limit(ColumnPath::from(column), config.lookup_page_rows);
    }
    for column in schema::token_columns() {
        if !compress_tokens {
            builder = builder.set_column_compression(ColumnPath::from(column), Compression::UNCOMPRESSED);
        }
        builder = builder
            // Tokens are uniformly random: min/max prune nothing, the
            // bloom filters do the pruning. The chunk's null count tells
            // a lookup which sealed columns hold nothing to read; the
            // min/max of a column that is itself in clear reveal nothing.
            .set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::Chunk)
            .set_column_bloom_filter_enabled(ColumnPath::from(column), true)
            .set_column_bloom_filter_fpp(ColumnPath::from(column), config.bloom_fpp)
            // Sized for the largest possible group of this file, then
            // folded to the distinct values actually seen.
            .set_column_bloom_filter_max_ndv(ColumnPath::from(column), config.row_group_rows.min(rows).max(1) as u64);
    }
    Ok(builder.build())
}

/// The properties of the companion of a data file of `date`, compressed at
/// `zstd_level`, at `relative`
/// ([`crate::storage::layout::aad_prefix`] of the companion): the sealed
/// columns, every module encrypted under `day_key`, footer included, so
/// that nothing of it reads without the key. No statistics and no bloom
/// filters, so no min/max of a raw identifier exists even encrypted.
pub(super) fn sealed_properties(
    config: &ParquetConfig,
    zstd_level: i32,
    relative: &str,
    date: PartitionDate,
    day_key: &DayKey,
    file_id: &str,
) -> Result<WriterProperties, WriteError> {
    let key = day_key.secret.expose().to_vec();
    let encryption = FileEncryptionProperties::builder(key)
        .with_plaintext_footer(false)
        .with_footer_key_metadata(day_key.id.as_str().as_bytes().to_vec())
        // Binds every module to the companion's place, which names its
        // data file: a companion cannot be swapped between files nor
        // moved between days. The prefix is not stored: readers derive it
        // from the path (`read::decryption`).
        .with_aad_prefix(relative.as_bytes().to_vec())
        .build()?;
    let zstd = ZstdLevel::try_new(zstd_level)?;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(zstd))
        .set_statistics_enabled(EnabledStatistics::None)
        .set_bloom_filter_enabled(false)
        .set_max_row_group_row_count(Some(config.row_group_rows))
        // A lookup reads a few rows of every sealed column it needs.
        .set_data_page_row_count_limit(config.lookup_page_rows)
        .set_write_batch_size(write_batch_size(config))
        // A dictionary page holds every distinct value of the file: for a
        // subscriber identifier the whole population, for cells the
        // thousands a day touches. A lookup would decrypt and decode all
        // of it to read a few rows (cells cost a 365-day lookup a tenth
        // of its time). Server addresses recur across subscribers and
        // keep small dictionaries, which save much more than they cost.
        .set_dictionary_enabled(false)
        .set_key_value_metadata(Some(vec![
            KeyValue::new(schema::meta::SCHEMA_VERSION.into(), schema::SCHEMA_VERSION.to_string()),
            KeyValue::new(schema::meta::PARTITION_DATE.into(), date.to_string()),
            KeyValue::new(schema::meta::SEAL_KEY_ID.into(), day_key.id.to_string()),
            KeyValue::new(schema::meta::FILE_ID.into(), file_id.to_string()),
        ]))
        .with_file_encryption_properties(encryption);
    for field in IdentifierField::ALL.into_iter().filter(|f| has_small_domain(*f)) {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(field.sealed_column()), true);
    }
    Ok(builder.build())
}

/// Values the writer takes at a time: a page closes only between two such
/// batches, so a page limit below the crate's default of 1,024 holds only
/// with batches no larger than it.
fn write_batch_size(config: &ParquetConfig) -> usize {
    config.lookup_page_rows.clamp(1, 1_024)
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
}

/// True for fields whose values recur across many subscribers (server
/// addresses), so that a file holds few distinct ones.
fn has_small_domain(field: IdentifierField) -> bool {
    matches!(field, IdentifierField::DstIp)
}
