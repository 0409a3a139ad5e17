//! How a data file is encoded: compression, page sizes, statistics, bloom
//! filters, and Parquet Modular Encryption of the sealed columns under the
//! day key with a plaintext (signed) footer, so that standard readers read
//! tokens, times and service without any key. Statistics are disabled on
//! sealed columns so that no min/max of a raw identifier ever reaches the
//! footer. `docs/storage-format.md` says why each choice was made.

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

/// The properties of a new data file of `date` at `relative`
/// ([`crate::storage::layout::aad_prefix`]), sealed under `day_key`, holding
/// `rows` rows (which sizes the bloom filters).
pub(super) fn properties(
    config: &ParquetConfig,
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
    let zstd = ZstdLevel::try_new(config.zstd_level)?;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(zstd))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(config.row_group_rows))
        .set_data_page_row_count_limit(config.data_page_rows)
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
    // zstd (benches/README.md), while each compressed column chunk a
    // lookup touches costs it a decompression context.
    for column in [schema::SERVICE, schema::DIRECTION, schema::START_TIME, schema::END_TIME, schema::DST_PORT] {
        builder = builder.set_column_compression(ColumnPath::from(column), Compression::UNCOMPRESSED);
    }
    for column in lookup_columns() {
        builder = builder.set_column_data_page_row_count_limit(ColumnPath::from(column), config.lookup_page_rows);
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
            .set_column_bloom_filter_fpp(ColumnPath::from(column), config.bloom_fpp)
            // Sized for the largest possible group of this file, then
            // folded to the distinct values actually seen.
            .set_column_bloom_filter_max_ndv(ColumnPath::from(column), config.row_group_rows.min(rows).max(1) as u64);
    }
    Ok(builder.build())
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
