//! The JSON encoding: one object per message, field names as in
//! REQUIREMENTS.md. Unknown fields are ignored so that producers can add
//! fields without breaking ingest; their values are never stored.

use std::borrow::Cow;

use serde::Deserialize;

use super::{RawEnum, RawRecord, RawTime, RefuseReason, Refusal};

/// The wire shape. Strings borrow from the payload unless they contain JSON
/// escapes, so the common case allocates nothing.
#[derive(Deserialize)]
struct JsonCdr<'a> {
    #[serde(borrow)]
    record_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    service: Option<Cow<'a, str>>,
    #[serde(borrow)]
    direction: Option<Cow<'a, str>>,
    #[serde(borrow)]
    start_time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    end_time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    calling_number: Option<Cow<'a, str>>,
    #[serde(borrow)]
    called_number: Option<Cow<'a, str>>,
    #[serde(borrow)]
    redirecting_number: Option<Cow<'a, str>>,
    #[serde(borrow)]
    sip_uri: Option<Cow<'a, str>>,
    #[serde(borrow)]
    imsi: Option<Cow<'a, str>>,
    #[serde(borrow)]
    imei: Option<Cow<'a, str>>,
    #[serde(borrow)]
    cell_id_start: Option<Cow<'a, str>>,
    #[serde(borrow)]
    cell_id_end: Option<Cow<'a, str>>,
    #[serde(borrow)]
    src_ip: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dst_ip: Option<Cow<'a, str>>,
    src_port: Option<i64>,
    dst_port: Option<i64>,
    bytes_up: Option<i64>,
    bytes_down: Option<i64>,
    release_cause: Option<i64>,
}

pub(super) fn parse(payload: &[u8]) -> Result<RawRecord<'_>, Refusal> {
    // The parser's error is dropped on purpose: its message can quote input.
    let cdr: JsonCdr<'_> =
        serde_json::from_slice(payload).map_err(|_| Refusal::new(RefuseReason::MalformedPayload))?;
    Ok(RawRecord {
        record_id: cdr.record_id,
        service: cdr.service.map(RawEnum::Text),
        direction: cdr.direction.map(RawEnum::Text),
        start_time: cdr.start_time.map(RawTime::Text),
        end_time: cdr.end_time.map(RawTime::Text),
        identifiers: [
            cdr.calling_number,
            cdr.called_number,
            cdr.redirecting_number,
            cdr.sip_uri,
            cdr.imsi,
            cdr.imei,
            cdr.cell_id_start,
            cdr.cell_id_end,
            cdr.src_ip,
            cdr.dst_ip,
        ],
        src_port: cdr.src_port,
        dst_port: cdr.dst_port,
        bytes_up: cdr.bytes_up,
        bytes_down: cdr.bytes_down,
        release_cause: cdr.release_cause,
    })
}
