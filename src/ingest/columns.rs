//! Builds the Arrow columns of one day from validated records: tokens for
//! every identifier, and the canonical value for the sealed columns.
//!
//! The sealed columns hold raw identifiers in memory only until the Parquet
//! writer encrypts their pages; they are never written anywhere in clear.

use std::sync::Arc;

use arrow_array::builder::{Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{ArrowError, SchemaRef};

use crate::model::{Cdr, IdentifierField, IdentifierValue, KeyId};
use crate::privacy::normalise::canonical_ip;
use crate::privacy::token::TokenMemo;
use crate::storage::schema::UTC;

const FIELDS: usize = IdentifierField::ALL.len();

/// The columns of one day's records, being filled.
pub struct DayColumns {
    record_id: StringBuilder,
    service: StringBuilder,
    direction: StringBuilder,
    start_time: TimestampMicrosecondBuilder,
    end_time: TimestampMicrosecondBuilder,
    duration_ms: Int64Builder,
    tokens: [Int64Builder; FIELDS],
    sealed: [StringBuilder; FIELDS],
    src_port: Int32Builder,
    dst_port: Int32Builder,
    bytes_up: Int64Builder,
    bytes_down: Int64Builder,
    release_cause: Int32Builder,
    /// The batch index of each row, so that a whole day can still be
    /// refused after decoding (a day destroyed by retention).
    inputs: Vec<usize>,
}

impl DayColumns {
    pub fn with_capacity(rows: usize) -> Self {
        let text = || StringBuilder::with_capacity(rows, rows * 16);
        let time = || TimestampMicrosecondBuilder::with_capacity(rows).with_timezone(UTC);
        DayColumns {
            record_id: text(),
            service: StringBuilder::with_capacity(rows, rows * 5),
            direction: StringBuilder::with_capacity(rows, rows * 2),
            start_time: time(),
            end_time: time(),
            duration_ms: Int64Builder::with_capacity(rows),
            tokens: std::array::from_fn(|_| Int64Builder::with_capacity(rows)),
            sealed: std::array::from_fn(|_| text()),
            src_port: Int32Builder::with_capacity(rows),
            dst_port: Int32Builder::with_capacity(rows),
            bytes_up: Int64Builder::with_capacity(rows),
            bytes_down: Int64Builder::with_capacity(rows),
            release_cause: Int32Builder::with_capacity(rows),
            inputs: Vec::with_capacity(rows),
        }
    }

    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// The batch indices of the rows, in order.
    pub fn inputs(&self) -> &[usize] {
        &self.inputs
    }

    /// Appends one record (input `index` of its batch), tokenising each of
    /// its identifiers.
    pub fn append(&mut self, index: usize, cdr: &Cdr<'_>, tokens: &mut TokenMemo) {
        self.inputs.push(index);
        self.record_id.append_value(&cdr.record_id);
        self.service.append_value(cdr.service.as_str());
        self.direction.append_option(cdr.direction.map(|d| d.as_str()));
        self.start_time.append_value(cdr.start_time.0);
        self.end_time.append_option(cdr.end_time.map(|t| t.0));
        self.duration_ms.append_option(cdr.duration_ms());
        for (i, field) in IdentifierField::ALL.into_iter().enumerate() {
            match cdr.identifier(field) {
                None => {
                    self.tokens[i].append_null();
                    self.sealed[i].append_null();
                }
                Some(IdentifierValue::Text(text)) => {
                    self.tokens[i].append_value(tokens.token(field.kind(), text).0);
                    self.sealed[i].append_value(text);
                }
                Some(IdentifierValue::Ip(ip)) => {
                    let text = canonical_ip(ip);
                    self.tokens[i].append_value(tokens.token(field.kind(), text.as_str()).0);
                    self.sealed[i].append_value(text.as_str());
                }
            }
        }
        self.src_port.append_option(cdr.src_port.map(i32::from));
        self.dst_port.append_option(cdr.dst_port.map(i32::from));
        self.bytes_up.append_option(cdr.bytes_up);
        self.bytes_down.append_option(cdr.bytes_down);
        self.release_cause.append_option(cdr.release_cause);
    }

    /// Finishes the columns into a batch of `schema` (see
    /// [`crate::storage::schema::cdr_schema`]).
    pub fn finish(
        mut self,
        schema: &SchemaRef,
        token_key_id: &KeyId,
        seal_key_id: &KeyId,
    ) -> Result<RecordBatch, ArrowError> {
        let rows = self.inputs.len();
        let constant =
            |value: &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(std::iter::repeat_n(value, rows))) };
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.record_id.finish()),
            Arc::new(self.service.finish()),
            Arc::new(self.direction.finish()),
            Arc::new(self.start_time.finish()),
            Arc::new(self.end_time.finish()),
            Arc::new(self.duration_ms.finish()),
        ];
        columns.extend(self.tokens.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.extend(self.sealed.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.extend([
            Arc::new(self.src_port.finish()) as ArrayRef,
            Arc::new(self.dst_port.finish()),
            Arc::new(self.bytes_up.finish()),
            Arc::new(self.bytes_down.finish()),
            Arc::new(self.release_cause.finish()),
            constant(token_key_id.as_str()),
            constant(seal_key_id.as_str()),
        ]);
        RecordBatch::try_new(Arc::clone(schema), columns)
    }
}
