//! The JSON encoding: one object per message, field names as in
//! REQUIREMENTS.md. Unknown fields are ignored so that producers can add
//! fields without breaking ingest; their values are never stored. A payload
//! must be UTF-8 throughout, as JSON requires, unknown fields included.

use std::borrow::Cow;

use serde::Deserialize;

use super::{RawEnum, RawRecord, RawTime, Refusal, RefuseReason};

/// A string field that borrows from the payload unless it contains JSON
/// escapes. (serde borrows a bare `Cow<'a, str>` field, but not one inside an
/// `Option`; the newtype restores borrowing there.)
#[derive(Deserialize)]
#[serde(transparent)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

fn text(t: Option<Text<'_>>) -> Option<Cow<'_, str>> {
    t.map(|t| t.0)
}

/// The wire shape. Strings borrow from the payload unless they contain JSON
/// escapes, so the common case allocates nothing.
#[derive(Deserialize)]
struct JsonCdr<'a> {
    #[serde(borrow)]
    record_id: Option<Text<'a>>,
    #[serde(borrow)]
    service: Option<Text<'a>>,
    #[serde(borrow)]
    direction: Option<Text<'a>>,
    #[serde(borrow)]
    start_time: Option<Text<'a>>,
    #[serde(borrow)]
    end_time: Option<Text<'a>>,
    #[serde(borrow)]
    calling_number: Option<Text<'a>>,
    #[serde(borrow)]
    called_number: Option<Text<'a>>,
    #[serde(borrow)]
    redirecting_number: Option<Text<'a>>,
    #[serde(borrow)]
    sip_uri: Option<Text<'a>>,
    #[serde(borrow)]
    imsi: Option<Text<'a>>,
    #[serde(borrow)]
    imei: Option<Text<'a>>,
    #[serde(borrow)]
    cell_id_start: Option<Text<'a>>,
    #[serde(borrow)]
    cell_id_end: Option<Text<'a>>,
    #[serde(borrow)]
    src_ip: Option<Text<'a>>,
    #[serde(borrow)]
    dst_ip: Option<Text<'a>>,
    src_port: Option<i64>,
    dst_port: Option<i64>,
    bytes_up: Option<i64>,
    bytes_down: Option<i64>,
    release_cause: Option<i64>,
}

pub(super) fn parse(payload: &[u8]) -> Result<RawRecord<'_>, Refusal> {
    // The whole payload is checked as UTF-8 once, up front (JSON is UTF-8,
    // so no valid record is lost), which spares the parser checking each
    // string on its own; borrowed strings come out of the checked text.
    // The parser's error is dropped on purpose: its message can quote input.
    let malformed = Refusal::new(RefuseReason::MalformedPayload);
    let payload = std::str::from_utf8(payload).map_err(|_| malformed)?;
    let cdr: JsonCdr<'_> = serde_json::from_str(payload).map_err(|_| malformed)?;
    Ok(RawRecord {
        record_id: text(cdr.record_id),
        service: text(cdr.service).map(RawEnum::Text),
        direction: text(cdr.direction).map(RawEnum::Text),
        start_time: text(cdr.start_time).map(RawTime::Text),
        end_time: text(cdr.end_time).map(RawTime::Text),
        identifiers: [
            text(cdr.calling_number),
            text(cdr.called_number),
            text(cdr.redirecting_number),
            text(cdr.sip_uri),
            text(cdr.imsi),
            text(cdr.imei),
            text(cdr.cell_id_start),
            text(cdr.cell_id_end),
            text(cdr.src_ip),
            text(cdr.dst_ip),
        ],
        src_port: cdr.src_port,
        dst_port: cdr.dst_port,
        bytes_up: cdr.bytes_up,
        bytes_down: cdr.bytes_down,
        release_cause: cdr.release_cause,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_that_is_not_utf8_is_malformed_wherever_the_bad_byte_is() {
        let known = b"{\"record_id\":\"msc-\xff\",\"calling_number\":\"+4520000001\"}";
        let unknown = b"{\"record_id\":\"msc-1\",\"note\":\"\xc3(\",\"calling_number\":\"+4520000001\"}";
        let valid = b"{\"record_id\":\"msc-1\",\"note\":\"caf\xc3\xa9\",\"calling_number\":\"+4520000001\"}";
        for payload in [&known[..], &unknown[..]] {
            assert_eq!(parse(payload).unwrap_err(), Refusal::new(RefuseReason::MalformedPayload));
        }
        assert!(parse(valid).is_ok(), "UTF-8 beyond ASCII is fine");
    }

    #[test]
    fn strings_borrow_from_the_payload_unless_escaped() {
        let payload = br#"{"record_id":"msc-1","calling_number":"+4520000001","sip_uri":"sip:a\u0040b"}"#;
        let raw = parse(payload).unwrap();
        assert!(matches!(raw.record_id, Some(Cow::Borrowed("msc-1"))));
        assert!(matches!(raw.identifiers[0], Some(Cow::Borrowed(_))));
        assert!(
            matches!(raw.identifiers[3], Some(Cow::Owned(_))),
            "an escaped string is unescaped into its own buffer"
        );
    }
}
