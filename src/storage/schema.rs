//! The Parquet schema of the CDR files: a public contract for Spark, Trino
//! and DuckDB users, documented column by column in `docs/storage-format.md`.
//! Changing a column's name or type is a breaking change and bumps
//! [`SCHEMA_VERSION`].
//!
//! A record's columns live in two files: the clear columns in the public
//! data file, which every generic tool opens ([`public_schema`]), and the
//! sealed columns in its companion, encrypted whole under the day key,
//! which only cdrvault opens ([`sealed_schema`]). [`cdr_schema`] is the
//! record as a whole; [`split`] and [`join`] go between the two.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};

use crate::model::IdentifierField;

/// Written into each file's key-value metadata as `cdrvault.schema_version`.
pub const SCHEMA_VERSION: &str = "2";

pub const RECORD_ID: &str = "record_id";
pub const SERVICE: &str = "service";
pub const DIRECTION: &str = "direction";
pub const START_TIME: &str = "start_time";
pub const END_TIME: &str = "end_time";
pub const DURATION_MS: &str = "duration_ms";
pub const SRC_PORT: &str = "src_port";
pub const DST_PORT: &str = "dst_port";
pub const BYTES_UP: &str = "bytes_up";
pub const BYTES_DOWN: &str = "bytes_down";
pub const RELEASE_CAUSE: &str = "release_cause";
pub const TOKEN_KEY_ID: &str = "token_key_id";
pub const SEAL_KEY_ID: &str = "seal_key_id";

/// Key-value metadata keys of every file.
pub mod meta {
    pub const SCHEMA_VERSION: &str = "cdrvault.schema_version";
    pub const PARTITION_DATE: &str = "cdrvault.partition_date";
    pub const TOKEN_KEY_ID: &str = "cdrvault.token_key_id";
    pub const SEAL_KEY_ID: &str = "cdrvault.seal_key_id";
    /// A random id shared by a data file and its companion, so that a
    /// companion pairs with the one data file it was written with.
    pub const FILE_ID: &str = "cdrvault.file_id";
    /// In the companion only: the SHA-256 of the data file's footer, which
    /// authenticates the data file's row groups, statistics and key ids.
    pub const DATA_FOOTER_SHA256: &str = "cdrvault.data_footer_sha256";
    /// In the companion only: the SHA-256 of each column chunk of the data
    /// file but the token columns (`{group}/{column}={hex}`, comma
    /// separated), which authenticates the clear values a lookup returns
    /// and filters on: times, record ids, ports. Tokens are left out: a
    /// changed token can only hide a row or make a candidate that its
    /// sealed values then refuse. Absent from files written before.
    pub const DATA_CHUNKS_SHA256: &str = "cdrvault.data_chunks_sha256";
}

/// The time zone of both timestamp columns.
pub const UTC: &str = "UTC";

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

/// The Arrow schema of a CDR file.
pub fn cdr_schema() -> SchemaRef {
    // Built once: every batch a lookup reads is joined in its order.
    static SCHEMA: std::sync::LazyLock<SchemaRef> = std::sync::LazyLock::new(build_cdr_schema);
    Arc::clone(&SCHEMA)
}

fn build_cdr_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new(RECORD_ID, DataType::Utf8, false),
        Field::new(SERVICE, DataType::Utf8, false),
        Field::new(DIRECTION, DataType::Utf8, true),
        Field::new(START_TIME, timestamp(), false),
        Field::new(END_TIME, timestamp(), true),
        Field::new(DURATION_MS, DataType::Int64, true),
    ];
    for field in IdentifierField::ALL {
        fields.push(Field::new(field.token_column(), DataType::Int64, true));
    }
    for field in IdentifierField::ALL {
        fields.push(Field::new(field.sealed_column(), DataType::Utf8, true));
    }
    fields.extend([
        Field::new(SRC_PORT, DataType::Int32, true),
        Field::new(DST_PORT, DataType::Int32, true),
        Field::new(BYTES_UP, DataType::Int64, true),
        Field::new(BYTES_DOWN, DataType::Int64, true),
        Field::new(RELEASE_CAUSE, DataType::Int32, true),
        Field::new(TOKEN_KEY_ID, DataType::Utf8, false),
        Field::new(SEAL_KEY_ID, DataType::Utf8, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// The clear columns of [`cdr_schema`], in its order: the public data file.
pub fn public_schema() -> SchemaRef {
    let full = cdr_schema();
    let fields: Vec<_> = full.fields().iter().filter(|f| !is_sealed(f.name())).cloned().collect();
    Arc::new(Schema::new(fields))
}

/// The sealed columns of [`cdr_schema`], in its order: the companion file.
pub fn sealed_schema() -> SchemaRef {
    let full = cdr_schema();
    let fields: Vec<_> = full.fields().iter().filter(|f| is_sealed(f.name())).cloned().collect();
    Arc::new(Schema::new(fields))
}

/// True for the name of a sealed column.
pub fn is_sealed(column: &str) -> bool {
    sealed_columns().any(|c| c == column)
}

/// A batch of [`cdr_schema`] rows as its clear and its sealed columns.
pub fn split(batch: &RecordBatch) -> Result<(RecordBatch, RecordBatch), ArrowError> {
    let part = |sealed: bool| {
        let indices: Vec<usize> = batch
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| is_sealed(f.name()) == sealed)
            .map(|(i, _)| i)
            .collect();
        batch.project(&indices)
    };
    Ok((part(false)?, part(true)?))
}

/// The rows of two batches side by side, columns in [`cdr_schema`] order
/// (columns it does not know last): the clear and the sealed columns of the
/// same rows. Refused unless both hold the same number of rows.
pub fn join(clear: &RecordBatch, sealed: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    if clear.num_rows() != sealed.num_rows() {
        return Err(ArrowError::InvalidArgumentError(format!(
            "{} clear rows beside {} sealed rows",
            clear.num_rows(),
            sealed.num_rows()
        )));
    }
    let full = cdr_schema();
    let position = |name: &str| full.index_of(name).unwrap_or(usize::MAX);
    let mut columns: Vec<(FieldRef, ArrayRef)> = [clear, sealed]
        .into_iter()
        .flat_map(|b| b.schema().fields().iter().cloned().zip(b.columns().iter().cloned()).collect::<Vec<_>>())
        .collect();
    columns.sort_by_key(|(f, _)| position(f.name()));
    let (fields, arrays): (Vec<FieldRef>, Vec<ArrayRef>) = columns.into_iter().unzip();
    let options = RecordBatchOptions::new().with_row_count(Some(clear.num_rows()));
    RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options)
}

/// The names of the sealed (encrypted) columns.
pub fn sealed_columns() -> impl Iterator<Item = &'static str> {
    IdentifierField::ALL.into_iter().map(IdentifierField::sealed_column)
}

/// True for the name of a token column.
pub fn is_token(column: &str) -> bool {
    token_columns().any(|c| c == column)
}

/// The names of the token columns, which carry bloom filters.
pub fn token_columns() -> impl Iterator<Item = &'static str> {
    IdentifierField::ALL.into_iter().map(IdentifierField::token_column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_splits_into_clear_and_sealed_columns_and_joins_back() {
        let full = cdr_schema();
        let (public, sealed) = (public_schema(), sealed_schema());
        assert_eq!(public.fields().len() + sealed.fields().len(), full.fields().len());
        assert!(public.fields().iter().all(|f| !f.name().ends_with("_sealed")));
        assert!(sealed.fields().iter().all(|f| f.name().ends_with("_sealed")));
        let batch = RecordBatch::new_empty(Arc::clone(&full));
        let (clear, hidden) = split(&batch).unwrap();
        assert_eq!((clear.schema(), hidden.schema()), (public, sealed));
        assert_eq!(join(&clear, &hidden).unwrap().schema(), full);
        // Joined the other way round, the order is still the record's.
        assert_eq!(join(&hidden, &clear).unwrap().schema(), full);
    }

    #[test]
    fn batches_of_different_lengths_do_not_join() {
        let id = |n: usize| {
            let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            let schema = Arc::new(Schema::new(vec![Field::new(RECORD_ID, DataType::Utf8, false)]));
            RecordBatch::try_new(schema, vec![Arc::new(arrow_array::StringArray::from(ids))]).unwrap()
        };
        let sealed = |n: usize| {
            let values: Vec<Option<&str>> = vec![None; n];
            let schema = Arc::new(Schema::new(vec![Field::new("imsi_sealed", DataType::Utf8, true)]));
            RecordBatch::try_new(schema, vec![Arc::new(arrow_array::StringArray::from(values))]).unwrap()
        };
        assert!(join(&id(3), &sealed(3)).is_ok());
        assert!(join(&id(3), &sealed(2)).is_err());
    }
}
