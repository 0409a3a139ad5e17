//! The plaintext baseline of the storage benchmarks: the same records with
//! every identifier in clear, as an analyst's own export would hold them.

use std::sync::Arc;

use arrow_array::builder::{Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use cdrvault::model::{Cdr, IdentifierField, IdentifierValue};
use cdrvault::storage::schema;

/// The schema of the baseline: the clear columns and one UTF-8 column per
/// identifier with its canonical value.
pub fn schema() -> SchemaRef {
    let timestamp = || DataType::Timestamp(TimeUnit::Microsecond, Some(schema::UTC.into()));
    let mut fields = vec![
        Field::new(schema::RECORD_ID, DataType::Utf8, false),
        Field::new(schema::SERVICE, DataType::Utf8, false),
        Field::new(schema::DIRECTION, DataType::Utf8, true),
        Field::new(schema::START_TIME, timestamp(), false),
        Field::new(schema::END_TIME, timestamp(), true),
        Field::new(schema::DURATION_MS, DataType::Int64, true),
    ];
    for field in IdentifierField::ALL {
        fields.push(Field::new(field.name(), DataType::Utf8, true));
    }
    fields.extend([
        Field::new(schema::SRC_PORT, DataType::Int32, true),
        Field::new(schema::DST_PORT, DataType::Int32, true),
        Field::new(schema::BYTES_UP, DataType::Int64, true),
        Field::new(schema::BYTES_DOWN, DataType::Int64, true),
        Field::new(schema::RELEASE_CAUSE, DataType::Int32, true),
    ]);
    Arc::new(Schema::new(fields))
}

/// The records with every identifier in clear, canonical as cdrvault
/// stores it in its sealed columns.
pub fn batch(cdrs: &[Cdr<'_>]) -> RecordBatch {
    let rows = cdrs.len();
    let text = || StringBuilder::with_capacity(rows, rows * 16);
    let time = || TimestampMicrosecondBuilder::with_capacity(rows).with_timezone(schema::UTC);
    let (mut record_id, mut service, mut direction) = (text(), text(), text());
    let (mut start, mut end) = (time(), time());
    let mut duration = Int64Builder::with_capacity(rows);
    let mut identifiers: Vec<StringBuilder> = IdentifierField::ALL.iter().map(|_| text()).collect();
    let (mut src_port, mut dst_port) = (Int32Builder::new(), Int32Builder::new());
    let (mut bytes_up, mut bytes_down) = (Int64Builder::new(), Int64Builder::new());
    let mut release_cause = Int32Builder::new();
    for cdr in cdrs {
        record_id.append_value(&cdr.record_id);
        service.append_value(cdr.service.as_str());
        direction.append_option(cdr.direction.map(|d| d.as_str()));
        start.append_value(cdr.start_time.0);
        end.append_option(cdr.end_time.map(|t| t.0));
        duration.append_option(cdr.duration_ms());
        for (builder, field) in identifiers.iter_mut().zip(IdentifierField::ALL) {
            match cdr.identifier(field) {
                None => builder.append_null(),
                Some(IdentifierValue::Text(text)) => builder.append_value(text),
                Some(IdentifierValue::Ip(ip)) => builder.append_value(ip.to_string()),
            }
        }
        src_port.append_option(cdr.src_port.map(i32::from));
        dst_port.append_option(cdr.dst_port.map(i32::from));
        bytes_up.append_option(cdr.bytes_up);
        bytes_down.append_option(cdr.bytes_down);
        release_cause.append_option(cdr.release_cause);
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(record_id.finish()),
        Arc::new(service.finish()),
        Arc::new(direction.finish()),
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(duration.finish()),
    ];
    columns.extend(identifiers.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    columns.extend([
        Arc::new(src_port.finish()) as ArrayRef,
        Arc::new(dst_port.finish()),
        Arc::new(bytes_up.finish()),
        Arc::new(bytes_down.finish()),
        Arc::new(release_cause.finish()),
    ]);
    RecordBatch::try_new(schema(), columns).expect("plaintext batch")
}
