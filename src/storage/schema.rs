//! The Parquet schema of the CDR files: a public contract for Spark, Trino
//! and DuckDB users, documented column by column in `docs/storage-format.md`.
//! Changing a column's name or type is a breaking change and bumps
//! [`SCHEMA_VERSION`].

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::model::IdentifierField;

/// Written into each file's key-value metadata as `cdrvault.schema_version`.
pub const SCHEMA_VERSION: &str = "1";

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
}

/// The time zone of both timestamp columns.
pub const UTC: &str = "UTC";

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

/// The Arrow schema of a CDR file.
pub fn cdr_schema() -> SchemaRef {
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

/// The names of the sealed (encrypted) columns.
pub fn sealed_columns() -> impl Iterator<Item = &'static str> {
    IdentifierField::ALL.into_iter().map(IdentifierField::sealed_column)
}

/// The names of the token columns, which carry bloom filters.
pub fn token_columns() -> impl Iterator<Item = &'static str> {
    IdentifierField::ALL.into_iter().map(IdentifierField::token_column)
}
