//! The typed values that pass between the pipeline stages.
//!
//! This module owns the vocabulary of cdrvault: what a validated call-detail
//! record is ([`Cdr`]), which identifier fields it carries and how each is
//! tokenised ([`IdentifierField`], [`IdentifierKind`]), and the newtypes that
//! must not be confused ([`PartitionDate`], [`Token`], [`KeyId`], the raw
//! identifier types).
//!
//! Raw identifier types ([`Msisdn`], [`Imsi`], [`Imei`], [`SipUri`], [`CellId`],
//! [`IpAddress`]) implement neither `Serialize` nor a revealing `Debug`: a raw
//! identifier can only leave memory by being tokenised and sealed, never by
//! being printed.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Datelike, NaiveDate, Utc};

/// The kind of an identifier. Each kind has its own domain tag in the token
/// function, so a number gets the same token whichever role it plays (calling,
/// called or redirecting) but never collides by construction with, say, an
/// IMSI made of the same digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentifierKind {
    Msisdn,
    Imsi,
    Imei,
    Sip,
    Cell,
    Ip,
}

impl IdentifierKind {
    pub const ALL: [IdentifierKind; 6] = [
        IdentifierKind::Msisdn,
        IdentifierKind::Imsi,
        IdentifierKind::Imei,
        IdentifierKind::Sip,
        IdentifierKind::Cell,
        IdentifierKind::Ip,
    ];

    /// The domain tag mixed into the token of every identifier of this kind.
    pub fn domain_tag(self) -> &'static [u8] {
        match self {
            IdentifierKind::Msisdn => b"cdrvault/v1/msisdn",
            IdentifierKind::Imsi => b"cdrvault/v1/imsi",
            IdentifierKind::Imei => b"cdrvault/v1/imei",
            IdentifierKind::Sip => b"cdrvault/v1/sip",
            IdentifierKind::Cell => b"cdrvault/v1/cell",
            IdentifierKind::Ip => b"cdrvault/v1/ip",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IdentifierKind::Msisdn => "msisdn",
            IdentifierKind::Imsi => "imsi",
            IdentifierKind::Imei => "imei",
            IdentifierKind::Sip => "sip",
            IdentifierKind::Cell => "cell",
            IdentifierKind::Ip => "ip",
        }
    }

    /// The kind named by [`Self::as_str`].
    pub fn parse(text: &str) -> Option<IdentifierKind> {
        IdentifierKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// The data categories of a lawful request (Directive 2006/24/EC art. 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// Who communicated with whom: numbers and SIP identities.
    Traffic,
    /// Location of mobile equipment: cell ids.
    Location,
    /// Equipment: IMSI and IMEI.
    Device,
    /// IP addresses and ports.
    Ip,
}

impl Category {
    pub const ALL: [Category; 4] = [Category::Traffic, Category::Location, Category::Device, Category::Ip];
}

/// One identifier field of the record. Each has a token column (for lookup)
/// and a sealed column (for lawful disclosure) in the Parquet files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentifierField {
    CallingNumber,
    CalledNumber,
    RedirectingNumber,
    SipUri,
    Imsi,
    Imei,
    CellIdStart,
    CellIdEnd,
    SrcIp,
    DstIp,
}

impl IdentifierField {
    pub const ALL: [IdentifierField; 10] = [
        IdentifierField::CallingNumber,
        IdentifierField::CalledNumber,
        IdentifierField::RedirectingNumber,
        IdentifierField::SipUri,
        IdentifierField::Imsi,
        IdentifierField::Imei,
        IdentifierField::CellIdStart,
        IdentifierField::CellIdEnd,
        IdentifierField::SrcIp,
        IdentifierField::DstIp,
    ];

    /// The field's name in the record (JSON key, Protobuf field).
    pub fn name(self) -> &'static str {
        match self {
            IdentifierField::CallingNumber => "calling_number",
            IdentifierField::CalledNumber => "called_number",
            IdentifierField::RedirectingNumber => "redirecting_number",
            IdentifierField::SipUri => "sip_uri",
            IdentifierField::Imsi => "imsi",
            IdentifierField::Imei => "imei",
            IdentifierField::CellIdStart => "cell_id_start",
            IdentifierField::CellIdEnd => "cell_id_end",
            IdentifierField::SrcIp => "src_ip",
            IdentifierField::DstIp => "dst_ip",
        }
    }

    /// The Parquet column holding the keyed token of this field.
    pub fn token_column(self) -> &'static str {
        match self {
            IdentifierField::CallingNumber => "calling_number_token",
            IdentifierField::CalledNumber => "called_number_token",
            IdentifierField::RedirectingNumber => "redirecting_number_token",
            IdentifierField::SipUri => "sip_uri_token",
            IdentifierField::Imsi => "imsi_token",
            IdentifierField::Imei => "imei_token",
            IdentifierField::CellIdStart => "cell_id_start_token",
            IdentifierField::CellIdEnd => "cell_id_end_token",
            IdentifierField::SrcIp => "src_ip_token",
            IdentifierField::DstIp => "dst_ip_token",
        }
    }

    /// The Parquet column holding the sealed (encrypted) value of this field.
    pub fn sealed_column(self) -> &'static str {
        match self {
            IdentifierField::CallingNumber => "calling_number_sealed",
            IdentifierField::CalledNumber => "called_number_sealed",
            IdentifierField::RedirectingNumber => "redirecting_number_sealed",
            IdentifierField::SipUri => "sip_uri_sealed",
            IdentifierField::Imsi => "imsi_sealed",
            IdentifierField::Imei => "imei_sealed",
            IdentifierField::CellIdStart => "cell_id_start_sealed",
            IdentifierField::CellIdEnd => "cell_id_end_sealed",
            IdentifierField::SrcIp => "src_ip_sealed",
            IdentifierField::DstIp => "dst_ip_sealed",
        }
    }

    pub fn kind(self) -> IdentifierKind {
        match self {
            IdentifierField::CallingNumber | IdentifierField::CalledNumber | IdentifierField::RedirectingNumber => {
                IdentifierKind::Msisdn
            }
            IdentifierField::SipUri => IdentifierKind::Sip,
            IdentifierField::Imsi => IdentifierKind::Imsi,
            IdentifierField::Imei => IdentifierKind::Imei,
            IdentifierField::CellIdStart | IdentifierField::CellIdEnd => IdentifierKind::Cell,
            IdentifierField::SrcIp | IdentifierField::DstIp => IdentifierKind::Ip,
        }
    }

    pub fn category(self) -> Category {
        match self.kind() {
            IdentifierKind::Msisdn | IdentifierKind::Sip => Category::Traffic,
            IdentifierKind::Imsi | IdentifierKind::Imei => Category::Device,
            IdentifierKind::Cell => Category::Location,
            IdentifierKind::Ip => Category::Ip,
        }
    }
}

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

/// Microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimestampMicros(pub i64);

impl TimestampMicros {
    pub fn from_datetime(t: DateTime<Utc>) -> Self {
        TimestampMicros(t.timestamp_micros())
    }

    pub fn to_datetime(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self.0)
    }

    /// The UTC date of this instant: the partition of a record and the start
    /// of its retention clock.
    pub fn partition_date(self) -> PartitionDate {
        // Every i64 microsecond count is within chrono's range of dates
        // (about ±292,000 years), so the fallback is unreachable; it is kept
        // total rather than panicking.
        let days = self.0.div_euclid(86_400_000_000);
        PartitionDate::from_days_since_epoch(days).unwrap_or(PartitionDate::EPOCH)
    }
}

/// A UTC calendar date: the `dt=` partition of the data and the unit of
/// retention and of data keys.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionDate(NaiveDate);

impl PartitionDate {
    // 1970-01-01 is a valid date, so the const unwrap cannot fail.
    pub const EPOCH: PartitionDate = PartitionDate(NaiveDate::from_ymd_opt(1970, 1, 1).unwrap());

    pub fn new(date: NaiveDate) -> Self {
        PartitionDate(date)
    }

    pub fn from_days_since_epoch(days: i64) -> Option<Self> {
        let days = i32::try_from(days).ok()?;
        NaiveDate::from_num_days_from_ce_opt(days.checked_add(719_163)?).map(PartitionDate)
    }

    pub fn date(self) -> NaiveDate {
        self.0
    }

    pub fn days_since_epoch(self) -> i64 {
        i64::from(self.0.num_days_from_ce()) - 719_163
    }

    /// The first microsecond of the day.
    pub fn start(self) -> TimestampMicros {
        TimestampMicros(self.days_since_epoch() * 86_400_000_000)
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Option<Self> {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().map(PartitionDate)
    }

    /// The directory name of the partition, `dt=YYYY-MM-DD`.
    pub fn dir_name(self) -> String {
        format!("dt={self}")
    }

    /// Parses a directory name of the form `dt=YYYY-MM-DD`.
    pub fn from_dir_name(name: &str) -> Option<Self> {
        name.strip_prefix("dt=").and_then(Self::parse)
    }
}

impl fmt::Display for PartitionDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.0.year(), self.0.month(), self.0.day())
    }
}

// Serialised as `YYYY-MM-DD`, for tombstones and reports.
impl serde::Serialize for PartitionDate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for PartitionDate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        PartitionDate::parse(&text).ok_or_else(|| serde::de::Error::custom("expected YYYY-MM-DD"))
    }
}

impl fmt::Debug for PartitionDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartitionDate({self})")
    }
}

/// A keyed token: the first 64 bits of HMAC-SHA256 over the identifier's
/// domain tag and canonical value. See ARCHITECTURE.md for the width.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub i64);

impl fmt::Debug for Token {
    // Tokens are pseudonyms, not secrets, but they are still personal data:
    // they are kept out of logs, so Debug does not print them either.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The id of a key: a token key (`tk-0001`) or a day's data key
/// (`day-2026-11-24-1a2b3c4d`). Ids are written into every file's metadata
/// so that keys can be rotated and destroyed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// Accepts lower-case ASCII letters, digits and dashes, 1 to 64 of them.
    pub fn new(id: impl Into<String>) -> Option<Self> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        valid.then_some(KeyId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! raw_identifier {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Holds a raw identifier in canonical form. Its `Debug` never prints
        /// the value, and it has no `Display` or `Serialize`.
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub struct $name<'a>(Cow<'a, str>);

        impl<'a> $name<'a> {
            /// The canonical value, for tokenising and sealing only.
            pub fn expose(&self) -> &str {
                &self.0
            }

            pub fn into_owned(self) -> $name<'static> {
                $name(Cow::Owned(self.0.into_owned()))
            }
        }

        impl fmt::Debug for $name<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

raw_identifier!(
    /// An E.164 number, canonical form `+` followed by 3 to 15 digits.
    Msisdn
);
raw_identifier!(
    /// An IMSI, 14 or 15 digits.
    Imsi
);
raw_identifier!(
    /// An IMEI or IMEISV, 14 to 16 digits.
    Imei
);
raw_identifier!(
    /// A SIP or TEL URI, lower-cased.
    SipUri
);
raw_identifier!(
    /// A cell id `MCC-MNC-LAC/TAC-CI`, numbers without leading zeros except
    /// in the MNC, whose length is significant.
    CellId
);

impl<'a> Msisdn<'a> {
    pub(crate) fn from_canonical(value: Cow<'a, str>) -> Self {
        Msisdn(value)
    }
}
impl<'a> Imsi<'a> {
    pub(crate) fn from_canonical(value: Cow<'a, str>) -> Self {
        Imsi(value)
    }
}
impl<'a> Imei<'a> {
    pub(crate) fn from_canonical(value: Cow<'a, str>) -> Self {
        Imei(value)
    }
}
impl<'a> SipUri<'a> {
    pub(crate) fn from_canonical(value: Cow<'a, str>) -> Self {
        SipUri(value)
    }
}
impl<'a> CellId<'a> {
    pub(crate) fn from_canonical(value: Cow<'a, str>) -> Self {
        CellId(value)
    }
}

/// An IP address; IPv4-mapped IPv6 addresses are stored as IPv4.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpAddress(IpAddr);

impl IpAddress {
    pub fn new(addr: IpAddr) -> Self {
        IpAddress(addr.to_canonical())
    }

    /// The canonical text (RFC 5952 for IPv6), for tokenising and sealing only.
    pub fn expose(&self) -> IpAddr {
        self.0
    }
}

impl fmt::Debug for IpAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IpAddress(<redacted>)")
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

/// One identifier of a record, borrowed for tokenising and sealing.
#[derive(Clone, Copy)]
pub enum IdentifierValue<'r> {
    Text(&'r str),
    Ip(IpAddr),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partition_date_is_the_utc_date_of_start_time() {
        let t = DateTime::parse_from_rfc3339("2026-03-01T00:30:00+02:00").unwrap();
        let date = TimestampMicros::from_datetime(t.with_timezone(&Utc)).partition_date();
        assert_eq!(date.to_string(), "2026-02-28");
        assert_eq!(date.dir_name(), "dt=2026-02-28");
        assert_eq!(PartitionDate::from_dir_name("dt=2026-02-28"), Some(date));
    }

    #[test]
    fn debug_never_prints_a_raw_identifier() {
        let number = Msisdn::from_canonical(Cow::Borrowed("+4512345678"));
        let text = format!("{number:?}");
        assert!(!text.contains("4512345678"), "{text}");
        let ip = IpAddress::new("10.1.2.3".parse().unwrap());
        assert!(!format!("{ip:?}").contains("10.1.2.3"));
    }

    #[test]
    fn ipv4_mapped_ipv6_becomes_ipv4() {
        let ip = IpAddress::new("::ffff:192.0.2.7".parse().unwrap());
        assert_eq!(ip.expose().to_string(), "192.0.2.7");
    }

    #[test]
    fn key_ids_are_restricted() {
        assert!(KeyId::new("tk-0001").is_some());
        assert!(KeyId::new("Tk-0001").is_none());
        assert!(KeyId::new("../etc").is_none());
        assert!(KeyId::new("").is_none());
    }

    proptest! {
        #[test]
        fn partition_date_agrees_with_chrono(micros in -4_000_000_000_000_000i64..4_000_000_000_000_000i64) {
            let expected = DateTime::from_timestamp_micros(micros).unwrap().date_naive();
            let date = TimestampMicros(micros).partition_date();
            prop_assert_eq!(date.date(), expected);
            prop_assert!(date.start().0 <= micros);
            prop_assert!(micros - date.start().0 < 86_400_000_000);
        }

        #[test]
        fn days_since_epoch_round_trips(days in -100_000i64..100_000i64) {
            let date = PartitionDate::from_days_since_epoch(days).unwrap();
            prop_assert_eq!(date.days_since_epoch(), days);
            prop_assert_eq!(PartitionDate::parse(&date.to_string()), Some(date));
        }
    }
}
