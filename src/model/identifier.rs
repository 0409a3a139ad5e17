//! Identifiers: their kinds (the token domains), the ten identifier fields
//! of a record with their columns and data categories, and the raw
//! identifier types.
//!
//! Raw identifier types ([`Msisdn`], [`Imsi`], [`Imei`], [`SipUri`],
//! [`CellId`], [`IpAddress`]) implement neither `Serialize` nor a revealing
//! `Debug`: a raw identifier can only leave memory by being tokenised and
//! sealed, never by being printed.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

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

    /// The category's name in warrants, requests and results.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Traffic => "traffic",
            Category::Location => "location",
            Category::Device => "device",
            Category::Ip => "ip",
        }
    }

    /// The category named by [`Self::as_str`].
    pub fn parse(text: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == text)
    }
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

/// One identifier of a record, borrowed for tokenising and sealing.
#[derive(Clone, Copy)]
pub enum IdentifierValue<'r> {
    Text(&'r str),
    Ip(IpAddr),
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn names_parse_back() {
        for kind in IdentifierKind::ALL {
            assert_eq!(IdentifierKind::parse(kind.as_str()), Some(kind));
        }
        for category in Category::ALL {
            assert_eq!(Category::parse(category.as_str()), Some(category));
        }
    }
}
