//! Turns Kafka message payloads into validated, normalised [`Cdr`]s, or into
//! a typed [`Refusal`].
//!
//! This module owns the accepted encodings (JSON and Protobuf, chosen per
//! topic) and every validation rule. A refusal names a reason code and, where
//! it helps, the field; it never quotes the offending value, because that
//! value may be a raw identifier. Errors from the JSON and Protobuf parsers
//! are dropped for the same reason: their messages can echo input.

mod json;
mod protobuf;

use std::borrow::Cow;
use std::fmt;

use chrono::DateTime;
use serde::Deserialize;

use crate::model::RefuseReason;
use crate::model::{Cdr, Direction, IdentifierField, IpAddress, PartitionDate, Service, TimestampMicros};
use crate::privacy::normalise;

/// How the payloads of a topic are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Json,
    Protobuf,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Protobuf => "protobuf",
        }
    }
}

/// A refused record: the reason and, where known, the field at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub struct Refusal {
    pub reason: RefuseReason,
    pub field: Option<&'static str>,
}

impl Refusal {
    pub fn new(reason: RefuseReason) -> Self {
        Refusal { reason, field: None }
    }

    pub fn on(reason: RefuseReason, field: &'static str) -> Self {
        Refusal { reason, field: Some(field) }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(f, "{} in field {field}", self.reason.code()),
            None => f.write_str(self.reason.code()),
        }
    }
}

/// The rules that depend on the moment of decoding rather than on the record.
#[derive(Debug, Clone, Copy)]
pub struct ValidationContext {
    /// Now, from the injected clock.
    pub now: TimestampMicros,
    /// How far in the future a `start_time` may lie, in microseconds.
    pub max_clock_skew_micros: i64,
    /// The oldest day within the retention window; records of earlier days
    /// are refused as expired. `None` disables the check.
    pub oldest_retained: Option<PartitionDate>,
}

/// Decodes one payload in the given encoding and validates it.
pub fn decode<'a>(encoding: Encoding, payload: &'a [u8], ctx: &ValidationContext) -> Result<Cdr<'a>, Refusal> {
    let raw = match encoding {
        Encoding::Json => json::parse(payload)?,
        Encoding::Protobuf => protobuf::parse(payload)?,
    };
    validate(raw, ctx)
}

/// A time as it came in: RFC 3339 text (JSON) or already a count (Protobuf).
#[derive(Debug)]
pub(crate) enum RawTime<'a> {
    Text(Cow<'a, str>),
    Micros(i64),
}

/// A field that must name one of a fixed set of values.
#[derive(Debug)]
pub(crate) enum RawEnum<'a, T> {
    Known(T),
    Text(Cow<'a, str>),
    Unknown,
}

/// The record as parsed, before validation; shared by both encodings so that
/// the rules exist once.
#[derive(Debug, Default)]
pub(crate) struct RawRecord<'a> {
    pub record_id: Option<Cow<'a, str>>,
    pub service: Option<RawEnum<'a, Service>>,
    pub direction: Option<RawEnum<'a, Direction>>,
    pub start_time: Option<RawTime<'a>>,
    pub end_time: Option<RawTime<'a>>,
    /// Indexed like [`IdentifierField::ALL`].
    pub identifiers: [Option<Cow<'a, str>>; 10],
    pub src_port: Option<i64>,
    pub dst_port: Option<i64>,
    pub bytes_up: Option<i64>,
    pub bytes_down: Option<i64>,
    pub release_cause: Option<i64>,
}

/// Longest record id accepted, in bytes.
const RECORD_ID_MAX_LEN: usize = 128;

fn validate<'a>(raw: RawRecord<'a>, ctx: &ValidationContext) -> Result<Cdr<'a>, Refusal> {
    use RefuseReason as R;

    let record_id = raw.record_id.ok_or(Refusal::on(R::MissingField, "record_id"))?;
    let record_id_valid = !record_id.is_empty()
        && record_id.len() <= RECORD_ID_MAX_LEN
        && record_id.bytes().all(|b| b.is_ascii_graphic());
    if !record_id_valid {
        return Err(Refusal::on(R::InvalidRecordId, "record_id"));
    }

    let service = match raw.service.ok_or(Refusal::on(R::MissingField, "service"))? {
        RawEnum::Known(service) => service,
        RawEnum::Text(text) => Service::parse(&text).ok_or(Refusal::on(R::UnknownService, "service"))?,
        RawEnum::Unknown => return Err(Refusal::on(R::UnknownService, "service")),
    };
    let direction = match raw.direction {
        None => None,
        Some(RawEnum::Known(direction)) => Some(direction),
        Some(RawEnum::Text(text)) => {
            Some(Direction::parse(&text).ok_or(Refusal::on(R::UnknownDirection, "direction"))?)
        }
        Some(RawEnum::Unknown) => return Err(Refusal::on(R::UnknownDirection, "direction")),
    };

    let start_time = raw.start_time.ok_or(Refusal::on(R::MissingField, "start_time"))?;
    let start_time = parse_time(start_time).ok_or(Refusal::on(R::InvalidTimestamp, "start_time"))?;
    let end_time = match raw.end_time {
        None => None,
        Some(t) => Some(parse_time(t).ok_or(Refusal::on(R::InvalidTimestamp, "end_time"))?),
    };
    if let Some(end) = end_time
        && end < start_time
    {
        return Err(Refusal::on(R::EndBeforeStart, "end_time"));
    }
    if start_time.0 > ctx.now.0.saturating_add(ctx.max_clock_skew_micros) {
        return Err(Refusal::on(R::StartInFuture, "start_time"));
    }
    if let Some(oldest) = ctx.oldest_retained
        && start_time.partition_date() < oldest
    {
        return Err(Refusal::on(R::Expired, "start_time"));
    }

    let [calling, called, redirecting, sip, imsi, imei, cell_start, cell_end, src_ip, dst_ip] = raw.identifiers;
    use IdentifierField as F;
    let calling_number = identifier(calling, F::CallingNumber, normalise::msisdn)?;
    let called_number = identifier(called, F::CalledNumber, normalise::msisdn)?;
    let redirecting_number = identifier(redirecting, F::RedirectingNumber, normalise::msisdn)?;
    let sip_uri = identifier(sip, F::SipUri, normalise::sip_uri)?;
    let imsi = identifier(imsi, F::Imsi, normalise::imsi)?;
    let imei = identifier(imei, F::Imei, normalise::imei)?;
    let cell_id_start = identifier(cell_start, F::CellIdStart, normalise::cell_id)?;
    let cell_id_end = identifier(cell_end, F::CellIdEnd, normalise::cell_id)?;
    let src_ip = ip_identifier(src_ip.as_deref(), F::SrcIp)?;
    let dst_ip = ip_identifier(dst_ip.as_deref(), F::DstIp)?;

    let has_party = calling_number.is_some()
        || called_number.is_some()
        || redirecting_number.is_some()
        || sip_uri.is_some()
        || imsi.is_some()
        || imei.is_some();
    if !has_party {
        return Err(Refusal::new(R::NoPartyIdentifier));
    }

    let port = |value: Option<i64>, field| match value {
        None => Ok(None),
        Some(v) => u16::try_from(v).map(Some).map_err(|_| Refusal::on(R::InvalidNumber, field)),
    };
    let count = |value: Option<i64>, field| match value {
        Some(v) if v < 0 => Err(Refusal::on(R::InvalidNumber, field)),
        v => Ok(v),
    };
    let release_cause = match raw.release_cause {
        None => None,
        Some(v) => {
            Some(i32::try_from(v).ok().filter(|v| *v >= 0).ok_or(Refusal::on(R::InvalidNumber, "release_cause"))?)
        }
    };

    Ok(Cdr {
        record_id,
        service,
        direction,
        start_time,
        end_time,
        calling_number,
        called_number,
        redirecting_number,
        sip_uri,
        imsi,
        imei,
        cell_id_start,
        cell_id_end,
        src_ip,
        dst_ip,
        src_port: port(raw.src_port, "src_port")?,
        dst_port: port(raw.dst_port, "dst_port")?,
        bytes_up: count(raw.bytes_up, "bytes_up")?,
        bytes_down: count(raw.bytes_down, "bytes_down")?,
        release_cause,
    })
}

/// Validates one text identifier. An empty string counts as absent: mediation
/// systems commonly send `""` for a field they do not have.
fn identifier<'a, T>(
    value: Option<Cow<'a, str>>,
    field: IdentifierField,
    normalise: fn(Cow<'a, str>) -> Option<T>,
) -> Result<Option<T>, Refusal> {
    match value {
        None => Ok(None),
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => normalise(text).map(Some).ok_or(Refusal::on(RefuseReason::for_identifier(field), field.name())),
    }
}

fn ip_identifier(value: Option<&str>, field: IdentifierField) -> Result<Option<IpAddress>, Refusal> {
    match value {
        None | Some("") => Ok(None),
        Some(text) => normalise::ip(text).map(Some).ok_or(Refusal::on(RefuseReason::InvalidIp, field.name())),
    }
}

fn parse_time(raw: RawTime<'_>) -> Option<TimestampMicros> {
    match raw {
        RawTime::Micros(micros) => Some(TimestampMicros(micros)),
        RawTime::Text(text) => DateTime::parse_from_rfc3339(&text).ok().map(|t| TimestampMicros(t.timestamp_micros())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ctx() -> ValidationContext {
        ValidationContext {
            now: TimestampMicros(DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z").unwrap().timestamp_micros()),
            max_clock_skew_micros: 300_000_000,
            oldest_retained: PartitionDate::parse("2025-11-24"),
        }
    }

    fn json(text: &str) -> Result<Cdr<'_>, Refusal> {
        decode(Encoding::Json, text.as_bytes(), &ctx())
    }

    const VALID: &str = r#"{"record_id":"msc1-1","service":"voice","direction":"mo",
        "start_time":"2026-11-24T10:00:00+01:00","end_time":"2026-11-24T10:01:30+01:00",
        "calling_number":"+4520000001","called_number":"004520000002",
        "imsi":"238011234567890","imei":"35-209900-176148-1","cell_id_start":"238-01-0100-0200",
        "release_cause":16}"#;

    #[test]
    fn a_valid_record_is_normalised() {
        let cdr = json(VALID).unwrap();
        assert_eq!(cdr.service, Service::Voice);
        assert_eq!(cdr.direction, Some(Direction::Mo));
        assert_eq!(cdr.duration_ms(), Some(90_000));
        assert_eq!(cdr.partition_date().to_string(), "2026-11-24");
        assert_eq!(cdr.called_number.as_ref().unwrap().expose(), "+4520000002");
        assert_eq!(cdr.imei.as_ref().unwrap().expose(), "352099001761481");
        assert_eq!(cdr.cell_id_start.as_ref().unwrap().expose(), "238-01-100-200");
        assert!(matches!(cdr.calling_number.as_ref().unwrap().expose(), "+4520000001"));
    }

    fn refused(text: &str) -> (RefuseReason, Option<&'static str>) {
        let refusal = json(text).unwrap_err();
        (refusal.reason, refusal.field)
    }

    #[test]
    fn each_failure_has_its_reason() {
        use RefuseReason as R;
        let with = |key: &str, value: &str| {
            let mut v: serde_json::Value = serde_json::from_str(VALID).unwrap();
            v[key] = serde_json::from_str(value).unwrap();
            v.to_string()
        };
        let without = |key: &str| {
            let mut v: serde_json::Value = serde_json::from_str(VALID).unwrap();
            v.as_object_mut().unwrap().remove(key);
            v.to_string()
        };
        assert_eq!(refused("{not json"), (R::MalformedPayload, None));
        assert_eq!(refused(&with("src_port", "\"eighty\"")).0, R::MalformedPayload);
        assert_eq!(refused(&without("record_id")), (R::MissingField, Some("record_id")));
        assert_eq!(refused(&without("service")), (R::MissingField, Some("service")));
        assert_eq!(refused(&without("start_time")), (R::MissingField, Some("start_time")));
        assert_eq!(refused(&with("service", "\"telex\"")), (R::UnknownService, Some("service")));
        assert_eq!(refused(&with("direction", "\"up\"")), (R::UnknownDirection, Some("direction")));
        assert_eq!(refused(&with("calling_number", "\"12345\"")), (R::InvalidMsisdn, Some("calling_number")));
        assert_eq!(refused(&with("redirecting_number", "\"+45x\"")).0, R::InvalidMsisdn);
        assert_eq!(refused(&with("imsi", "\"123\"")).0, R::InvalidImsi);
        assert_eq!(refused(&with("imei", "\"123\"")).0, R::InvalidImei);
        assert_eq!(refused(&with("sip_uri", "\"mailto:a@b\"")).0, R::InvalidSipUri);
        assert_eq!(refused(&with("cell_id_end", "\"1-2-3\"")), (R::InvalidCellId, Some("cell_id_end")));
        assert_eq!(refused(&with("src_ip", "\"300.1.1.1\"")), (R::InvalidIp, Some("src_ip")));
        assert_eq!(refused(&with("start_time", "\"yesterday\"")).0, R::InvalidTimestamp);
        assert_eq!(
            refused(&with("start_time", "\"2026-11-24T10:00:00\"")).0,
            R::InvalidTimestamp,
            "an offset is required"
        );
        assert_eq!(refused(&with("end_time", "\"2026-11-24T08:00:00Z\"")).0, R::EndBeforeStart);
        let future = with("start_time", "\"2026-11-24T12:06:00Z\"").replace("end_time", "ignored");
        assert_eq!(refused(&future).0, R::StartInFuture);
        assert_eq!(refused(&with("dst_port", "70000")).0, R::InvalidNumber);
        assert_eq!(refused(&with("bytes_up", "-1")).0, R::InvalidNumber);
        assert_eq!(refused(&with("record_id", "\"has space\"")).0, R::InvalidRecordId);
        let expired = with("start_time", "\"2025-11-23T23:59:59Z\"").replace("end_time", "ignored");
        assert_eq!(refused(&expired), (R::Expired, Some("start_time")));
        let kept = with("start_time", "\"2025-11-24T00:00:00Z\"").replace("end_time", "ignored");
        assert!(json(&kept).is_ok(), "the oldest day of the window is kept");
        let no_party = r#"{"record_id":"r","service":"data","start_time":"2026-11-24T10:00:00Z","src_ip":"10.0.0.1"}"#;
        assert_eq!(refused(no_party), (R::NoPartyIdentifier, None));
    }

    #[test]
    fn start_within_clock_skew_is_accepted() {
        let text = VALID
            .replace("2026-11-24T10:00:00+01:00", "2026-11-24T12:04:00Z")
            .replace("2026-11-24T10:01:30+01:00", "2026-11-24T12:05:00Z");
        assert!(json(&text).is_ok());
    }

    #[test]
    fn empty_strings_are_absent_fields() {
        let text = VALID.replace(r#""imsi":"238011234567890""#, r#""imsi":"""#);
        assert!(json(&text).unwrap().imsi.is_none());
    }

    #[test]
    fn refusals_never_quote_the_value() {
        let text = VALID.replace("+4520000001", "+45200000019999999");
        let refusal = json(&text).unwrap_err();
        let shown = format!("{refusal} {refusal:?}");
        assert!(!shown.contains("4520000001"), "{shown}");
    }
}
