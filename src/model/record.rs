//! The validated record ([`Cdr`]), its service and direction, and why a
//! record is refused ([`RefuseReason`]).

use std::borrow::Cow;

use super::identifier::{
    CellId, IdentifierField, IdentifierKind, IdentifierValue, Imei, Imsi, IpAddress, Msisdn, SipUri,
};
use super::time::{PartitionDate, TimestampMicros};

/// Type of service of the communication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Voice,
    Sms,
    Mms,
    Data,
    Voip,
    Fax,
}

impl Service {
    pub const ALL: [Service; 6] =
        [Service::Voice, Service::Sms, Service::Mms, Service::Data, Service::Voip, Service::Fax];

    pub fn as_str(self) -> &'static str {
        match self {
            Service::Voice => "voice",
            Service::Sms => "sms",
            Service::Mms => "mms",
            Service::Data => "data",
            Service::Voip => "voip",
            Service::Fax => "fax",
        }
    }

    pub fn parse(text: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Direction of the record relative to the served subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Mobile originating.
    Mo,
    /// Mobile terminating.
    Mt,
    Forwarded,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Mo => "mo",
            Direction::Mt => "mt",
            Direction::Forwarded => "forwarded",
        }
    }

    pub fn parse(text: &str) -> Option<Direction> {
        match text {
            "mo" => Some(Direction::Mo),
            "mt" => Some(Direction::Mt),
            "forwarded" => Some(Direction::Forwarded),
            _ => None,
        }
    }
}

/// A validated, normalised call-detail record. It borrows from the message
/// it was decoded from wherever no normalisation was needed.
#[derive(Debug, Clone, PartialEq)]
pub struct Cdr<'a> {
    pub record_id: Cow<'a, str>,
    pub service: Service,
    pub direction: Option<Direction>,
    pub start_time: TimestampMicros,
    pub end_time: Option<TimestampMicros>,
    pub calling_number: Option<Msisdn<'a>>,
    pub called_number: Option<Msisdn<'a>>,
    pub redirecting_number: Option<Msisdn<'a>>,
    pub sip_uri: Option<SipUri<'a>>,
    pub imsi: Option<Imsi<'a>>,
    pub imei: Option<Imei<'a>>,
    pub cell_id_start: Option<CellId<'a>>,
    pub cell_id_end: Option<CellId<'a>>,
    pub src_ip: Option<IpAddress>,
    pub dst_ip: Option<IpAddress>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub bytes_up: Option<i64>,
    pub bytes_down: Option<i64>,
    pub release_cause: Option<i32>,
}

impl Cdr<'_> {
    /// The partition date of the record: the UTC date of `start_time`.
    pub fn partition_date(&self) -> PartitionDate {
        self.start_time.partition_date()
    }

    /// The duration in milliseconds, when the record has an end time.
    pub fn duration_ms(&self) -> Option<i64> {
        self.end_time.map(|end| (end.0 - self.start_time.0) / 1_000)
    }

    /// The identifier held in `field`, if any.
    pub fn identifier(&self, field: IdentifierField) -> Option<IdentifierValue<'_>> {
        use IdentifierValue::{Ip, Text};
        match field {
            IdentifierField::CallingNumber => self.calling_number.as_ref().map(|v| Text(v.expose())),
            IdentifierField::CalledNumber => self.called_number.as_ref().map(|v| Text(v.expose())),
            IdentifierField::RedirectingNumber => self.redirecting_number.as_ref().map(|v| Text(v.expose())),
            IdentifierField::SipUri => self.sip_uri.as_ref().map(|v| Text(v.expose())),
            IdentifierField::Imsi => self.imsi.as_ref().map(|v| Text(v.expose())),
            IdentifierField::Imei => self.imei.as_ref().map(|v| Text(v.expose())),
            IdentifierField::CellIdStart => self.cell_id_start.as_ref().map(|v| Text(v.expose())),
            IdentifierField::CellIdEnd => self.cell_id_end.as_ref().map(|v| Text(v.expose())),
            IdentifierField::SrcIp => self.src_ip.map(|v| Ip(v.expose())),
            IdentifierField::DstIp => self.dst_ip.map(|v| Ip(v.expose())),
        }
    }
}

/// Why a record was refused. The codes are stable: they label metrics, go
/// into the dead-letter header `cdrvault-reason` and are documented in the
/// README.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefuseReason {
    /// Not valid JSON or Protobuf, or a field of the wrong type.
    MalformedPayload,
    /// `record_id`, `service` or `start_time` is missing.
    MissingField,
    /// None of the party identifiers is present.
    NoPartyIdentifier,
    InvalidRecordId,
    InvalidMsisdn,
    InvalidImsi,
    InvalidImei,
    InvalidSipUri,
    InvalidCellId,
    InvalidIp,
    InvalidTimestamp,
    /// A port, byte count or release cause out of range.
    InvalidNumber,
    UnknownService,
    UnknownDirection,
    EndBeforeStart,
    /// `start_time` lies further in the future than the allowed clock skew.
    StartInFuture,
    /// The record's day is already beyond the retention window (or was
    /// destroyed): it is never written.
    Expired,
}

impl RefuseReason {
    pub const ALL: [RefuseReason; 17] = [
        RefuseReason::MalformedPayload,
        RefuseReason::MissingField,
        RefuseReason::NoPartyIdentifier,
        RefuseReason::InvalidRecordId,
        RefuseReason::InvalidMsisdn,
        RefuseReason::InvalidImsi,
        RefuseReason::InvalidImei,
        RefuseReason::InvalidSipUri,
        RefuseReason::InvalidCellId,
        RefuseReason::InvalidIp,
        RefuseReason::InvalidTimestamp,
        RefuseReason::InvalidNumber,
        RefuseReason::UnknownService,
        RefuseReason::UnknownDirection,
        RefuseReason::EndBeforeStart,
        RefuseReason::StartInFuture,
        RefuseReason::Expired,
    ];

    /// The stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            RefuseReason::MalformedPayload => "malformed_payload",
            RefuseReason::MissingField => "missing_field",
            RefuseReason::NoPartyIdentifier => "no_party_identifier",
            RefuseReason::InvalidRecordId => "invalid_record_id",
            RefuseReason::InvalidMsisdn => "invalid_msisdn",
            RefuseReason::InvalidImsi => "invalid_imsi",
            RefuseReason::InvalidImei => "invalid_imei",
            RefuseReason::InvalidSipUri => "invalid_sip_uri",
            RefuseReason::InvalidCellId => "invalid_cell_id",
            RefuseReason::InvalidIp => "invalid_ip",
            RefuseReason::InvalidTimestamp => "invalid_timestamp",
            RefuseReason::InvalidNumber => "invalid_number",
            RefuseReason::UnknownService => "unknown_service",
            RefuseReason::UnknownDirection => "unknown_direction",
            RefuseReason::EndBeforeStart => "end_before_start",
            RefuseReason::StartInFuture => "start_in_future",
            RefuseReason::Expired => "expired",
        }
    }

    /// The reason for a malformed value in `field`.
    pub fn for_identifier(field: IdentifierField) -> RefuseReason {
        use IdentifierKind as K;
        match field.kind() {
            K::Msisdn => RefuseReason::InvalidMsisdn,
            K::Imsi => RefuseReason::InvalidImsi,
            K::Imei => RefuseReason::InvalidImei,
            K::Sip => RefuseReason::InvalidSipUri,
            K::Cell => RefuseReason::InvalidCellId,
            K::Ip => RefuseReason::InvalidIp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_unique() {
        let mut codes: Vec<_> = RefuseReason::ALL.iter().map(|r| r.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), RefuseReason::ALL.len());
    }
}
