//! Validation and canonical forms of each identifier kind.
//!
//! Every function takes the text as received and returns the canonical form,
//! borrowing the input when it is already canonical (the common case, so the
//! hot path does not allocate). `None` means the value is malformed; callers
//! turn that into a typed refusal without ever quoting the value.

use std::borrow::Cow;
use std::io::Write as _;
use std::net::IpAddr;

use crate::model::{CellId, Imei, Imsi, IpAddress, Msisdn, SipUri};

/// Longest E.164 number: 15 digits after the `+`.
const E164_MAX_DIGITS: usize = 15;
/// Shortest number accepted: short codes such as emergency numbers are
/// written in E.164 as country code plus the short number, at least 3 digits.
const E164_MIN_DIGITS: usize = 3;
/// Longest SIP or TEL URI accepted, in bytes.
const SIP_URI_MAX_LEN: usize = 256;
/// Largest LAC (16 bits) or TAC (24 bits).
const LAC_TAC_MAX: u64 = (1 << 24) - 1;
/// Largest cell identity: the 36-bit NR cell identity (an E-UTRAN ECI is 28
/// bits, a GERAN/UTRAN CI 16 or 28 bits).
const CELL_IDENTITY_MAX: u64 = (1 << 36) - 1;

/// Normalises an E.164 number to `+` followed by digits. Accepts an
/// international `00` prefix instead of `+`, and spaces, dashes, dots and
/// parentheses as separators.
pub fn msisdn(text: Cow<'_, str>) -> Option<Msisdn<'_>> {
    if let Some(digits) = text.strip_prefix('+')
        && is_e164_digits(digits)
    {
        return Some(Msisdn::from_canonical(text));
    }
    let rest = text.strip_prefix('+').or_else(|| text.strip_prefix("00"))?;
    let mut canonical = String::with_capacity(E164_MAX_DIGITS + 1);
    canonical.push('+');
    for c in rest.chars() {
        match c {
            '0'..='9' => canonical.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return None,
        }
    }
    is_e164_digits(&canonical[1..]).then(|| Msisdn::from_canonical(Cow::Owned(canonical)))
}

fn is_e164_digits(digits: &str) -> bool {
    (E164_MIN_DIGITS..=E164_MAX_DIGITS).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// An IMSI: 14 or 15 digits (MCC, MNC, MSIN).
pub fn imsi(text: Cow<'_, str>) -> Option<Imsi<'_>> {
    ((14..=15).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())).then(|| Imsi::from_canonical(text))
}

/// An IMEI (14 digits without, 15 with the check digit) or IMEISV (16
/// digits). Dashes and spaces, as printed on devices, are removed.
pub fn imei(text: Cow<'_, str>) -> Option<Imei<'_>> {
    let valid = |s: &str| (14..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    if valid(&text) {
        return Some(Imei::from_canonical(text));
    }
    let stripped: String = text.chars().filter(|c| !matches!(c, '-' | ' ')).collect();
    valid(&stripped).then(|| Imei::from_canonical(Cow::Owned(stripped)))
}

/// A `sip:`, `sips:` or `tel:` URI, with what compares case-insensitively
/// lower-cased and nothing else:
///
/// - the scheme (`SIP:` is `sip:`);
/// - in a SIP URI, the host (RFC 3261 §19.1.4). The user part (and a
///   password) is case-sensitive and kept as written, so `sip:Alice@…` and
///   `sip:alice@…` are two identities. The port, the URI parameters and
///   the headers are kept as written too: cdrvault does not reorder,
///   default or case-fold them, so a URI with a parameter or an explicit
///   port is another value than the same URI without (as RFC 3261 compares
///   an explicit default port);
/// - a `tel:` URI (RFC 3966) has no case-sensitive part and is lower-cased
///   whole.
///
/// The userinfo ends at the first `@`: RFC 3261 allows no unescaped `@`
/// elsewhere. Without one, the host starts right after the scheme. The host
/// ends at the first `;` (parameters) or `?` (headers). Ingest and every
/// target go through this one function (see [`super::target`]), so a
/// warrant finds exactly what ingest stored.
pub fn sip_uri(text: Cow<'_, str>) -> Option<SipUri<'_>> {
    if text.len() > SIP_URI_MAX_LEN || !text.is_ascii() {
        return None;
    }
    let colon = text.find(':')?;
    let scheme = ["sip", "sips", "tel"].into_iter().find(|s| text[..colon].eq_ignore_ascii_case(s))?;
    let rest = &text[colon + 1..];
    let well_formed = !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_graphic())
        && !rest.starts_with('@')
        && !rest.ends_with('@');
    if !well_formed {
        return None;
    }
    // The part after the scheme that compares case-insensitively.
    let folded = if scheme == "tel" { colon + 1..text.len() } else { host_range(rest, colon + 1) };
    let has_upper = |range: std::ops::Range<usize>| text[range].bytes().any(|b| b.is_ascii_uppercase());
    // Most URIs arrive canonical already: then nothing is allocated.
    if !has_upper(0..colon) && !has_upper(folded.clone()) {
        return Some(SipUri::from_canonical(text));
    }
    let mut canonical = text.into_owned();
    canonical[..colon].make_ascii_lowercase();
    canonical[folded].make_ascii_lowercase();
    Some(SipUri::from_canonical(Cow::Owned(canonical)))
}

/// Where the host of a SIP URI lies, as a range of the whole URI, given the
/// text after the scheme (`rest`) and where it starts (`offset`).
fn host_range(rest: &str, offset: usize) -> std::ops::Range<usize> {
    let start = rest.find('@').map_or(0, |at| at + 1);
    let end = rest[start..].find([';', '?']).map_or(rest.len(), |end| start + end);
    offset + start..offset + end
}

/// A cell id `MCC-MNC-LAC/TAC-CI`: a 3-digit MCC, a 2- or 3-digit MNC (its
/// length is significant and kept), then LAC or TAC and cell identity in
/// decimal, written without leading zeros.
pub fn cell_id(text: Cow<'_, str>) -> Option<CellId<'_>> {
    let mut parts = text.as_ref().split('-');
    let (mcc, mnc, area, cell) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let digits = |s: &str| !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_digit());
    if mcc.len() != 3 || !digits(mcc) || !(2..=3).contains(&mnc.len()) || !digits(mnc) {
        return None;
    }
    if !digits(area) || !digits(cell) {
        return None;
    }
    let area_value: u64 = area.parse().ok()?;
    let cell_value: u64 = cell.parse().ok()?;
    if area_value > LAC_TAC_MAX || cell_value > CELL_IDENTITY_MAX {
        return None;
    }
    let canonical_number = |s: &str| s == "0" || !s.starts_with('0');
    if canonical_number(area) && canonical_number(cell) {
        Some(CellId::from_canonical(text))
    } else {
        let canonical = format!("{mcc}-{mnc}-{area_value}-{cell_value}");
        Some(CellId::from_canonical(Cow::Owned(canonical)))
    }
}

/// An IPv4 or IPv6 address in text form.
pub fn ip(text: &str) -> Option<IpAddress> {
    text.parse::<IpAddr>().ok().map(IpAddress::new)
}

/// The canonical text of an IP address (dotted quad, or RFC 5952 for IPv6),
/// formatted on the stack.
pub fn canonical_ip(ip: IpAddr) -> IpText {
    let mut text = IpText { bytes: [0; 48], len: 0 };
    let mut cursor = std::io::Cursor::new(&mut text.bytes[..]);
    // The longest IPv6 text is 45 bytes, so the 48-byte buffer always fits.
    let _ = write!(cursor, "{ip}");
    text.len = cursor.position() as usize;
    text
}

/// An IP address as text, without a heap allocation.
pub struct IpText {
    bytes: [u8; 48],
    len: usize,
}

impl IpText {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub fn as_str(&self) -> &str {
        // Display of an IpAddr writes ASCII only.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn msisdn_canonical_forms() {
        assert_eq!(msisdn("+4512345678".into()).unwrap().expose(), "+4512345678");
        assert_eq!(msisdn("004512345678".into()).unwrap().expose(), "+4512345678");
        assert_eq!(msisdn("+45 12-34.56 (78)".into()).unwrap().expose(), "+4512345678");
        assert!(matches!(msisdn("+4512345678".into()).unwrap().expose(), "+4512345678"));
        assert!(msisdn("4512345678".into()).is_none(), "national or bare numbers are not E.164");
        assert!(msisdn("+0451234".into()).is_none(), "country codes never start with 0");
        assert!(msisdn("+1234567890123456".into()).is_none(), "16 digits is too long");
        assert!(msisdn("+12".into()).is_none());
        assert!(msisdn("+45abc".into()).is_none());
        assert!(msisdn("".into()).is_none());
    }

    #[test]
    fn imsi_and_imei() {
        assert!(imsi("238011234567890".into()).is_some());
        assert!(imsi("23801123456789".into()).is_some());
        assert!(imsi("2380112345678".into()).is_none());
        assert!(imsi("23801123456789a".into()).is_none());
        assert_eq!(imei("35-209900-176148-1".into()).unwrap().expose(), "352099001761481");
        assert!(imei("3520990017614812".into()).is_some());
        assert!(imei("35209900176148123".into()).is_none());
    }

    #[test]
    fn sip_scheme_and_host_are_lower_cased_and_the_user_is_kept() {
        let canonical = |text: &str| sip_uri(text.into()).map(|uri| uri.expose().to_string());
        assert_eq!(canonical("SIP:Alice@IMS.Example.NET").as_deref(), Some("sip:Alice@ims.example.net"));
        assert_eq!(canonical("SIP:alice@EXAMPLE.com"), canonical("sip:alice@example.com"));
        assert_ne!(canonical("sip:Alice@Example.COM"), canonical("sip:alice@example.com"), "users differ in case");
        assert_eq!(
            canonical("Sips:Bob:PassWord@Host.Example:5061").as_deref(),
            Some("sips:Bob:PassWord@host.example:5061")
        );
        assert_eq!(
            canonical("sip:Carol;Day=Tue@Example.COM;Transport=TCP?Subject=Hi").as_deref(),
            Some("sip:Carol;Day=Tue@example.com;Transport=TCP?Subject=Hi"),
            "the user may hold ; and ?, parameters and headers are kept"
        );
        assert_eq!(canonical("sip:Example.COM;Maddr=X").as_deref(), Some("sip:example.com;Maddr=X"), "no user");
        assert_eq!(canonical("sip:[2001:DB8::1]:5060").as_deref(), Some("sip:[2001:db8::1]:5060"));
        assert_ne!(canonical("sip:a@example.com:5060"), canonical("sip:a@example.com"), "the port is kept");
        assert_eq!(
            canonical("TEL:+45-1234-ABCD;Phone-Context=X").as_deref(),
            Some("tel:+45-1234-abcd;phone-context=x")
        );
    }

    #[test]
    fn sip_uris_already_canonical_are_borrowed() {
        let text = "sip:Alice@ims.example.net;Transport=TCP";
        assert!(matches!(sip_uri(Cow::Borrowed(text)).unwrap().expose(), t if std::ptr::eq(t, text)));
    }

    #[test]
    fn malformed_sip_uris_are_refused() {
        assert!(sip_uri("tel:+4512345678".into()).is_some());
        assert!(sip_uri("http://example.net".into()).is_none());
        assert!(sip_uri("sip:".into()).is_none());
        assert!(sip_uri("sip:@example.net".into()).is_none());
        assert!(sip_uri("sip:alice@".into()).is_none());
        assert!(sip_uri("sipx:alice@example.net".into()).is_none());
        assert!(sip_uri("sip:a b@c".into()).is_none());
        assert!(sip_uri("sip:ålice@example.net".into()).is_none());
    }

    #[test]
    fn cell_ids() {
        assert_eq!(cell_id("238-01-1234-56789".into()).unwrap().expose(), "238-01-1234-56789");
        assert_eq!(cell_id("238-001-01234-0056789".into()).unwrap().expose(), "238-001-1234-56789");
        assert_eq!(cell_id("238-01-0-0".into()).unwrap().expose(), "238-01-0-0");
        assert!(cell_id("238-1-1234-56789".into()).is_none(), "MNC has 2 or 3 digits");
        assert!(cell_id("23-01-1234-56789".into()).is_none());
        assert!(cell_id("238-01-99999999-1".into()).is_none(), "TAC is at most 24 bits");
        assert!(cell_id("238-01-1-1-1".into()).is_none());
        assert!(cell_id("238-01-1".into()).is_none());
    }

    #[test]
    fn ips() {
        assert_eq!(ip("::ffff:10.0.0.1").unwrap().expose().to_string(), "10.0.0.1");
        assert_eq!(ip("2001:DB8::1").unwrap().expose().to_string(), "2001:db8::1");
        assert!(ip("10.0.0.256").is_none());
    }

    proptest! {
        #[test]
        fn msisdn_normalisation_is_idempotent(digits in "[1-9][0-9]{2,14}", sep in prop::sample::select(vec!["", " ", "-"])) {
            let spaced: String = digits.chars().flat_map(|c| [c.to_string(), sep.to_string()]).collect();
            let first = msisdn(format!("00{spaced}").into()).unwrap();
            let canonical = first.expose().to_owned();
            prop_assert_eq!(&canonical, &format!("+{digits}"));
            let second = msisdn(canonical.as_str().into()).unwrap();
            prop_assert_eq!(second.expose(), canonical.as_str());
        }

        #[test]
        fn cell_id_normalisation_is_idempotent(mcc in 100u32..999, mnc in "[0-9]{2,3}", area in 0u64..=LAC_TAC_MAX, cell in 0u64..=CELL_IDENTITY_MAX, pad in 0usize..3) {
            let zeros = "0".repeat(pad);
            let text = format!("{mcc}-{mnc}-{zeros}{area}-{zeros}{cell}");
            let canonical = cell_id(text.as_str().into()).unwrap().expose().to_owned();
            prop_assert_eq!(&canonical, &format!("{mcc}-{mnc}-{area}-{cell}"));
            let again = cell_id(canonical.as_str().into()).unwrap();
            prop_assert_eq!(again.expose(), canonical.as_str());
        }

        #[test]
        fn ip_text_matches_display(v6 in any::<u128>(), v4 in any::<u32>()) {
            let a = IpAddr::from(std::net::Ipv6Addr::from(v6));
            let text = canonical_ip(a);
            prop_assert_eq!(text.as_str(), a.to_string());
            let b = IpAddr::from(std::net::Ipv4Addr::from(v4));
            let text = canonical_ip(b);
            prop_assert_eq!(text.as_str(), b.to_string());
        }

        #[test]
        fn sip_normalisation_is_idempotent_and_keeps_the_user(user in "[A-Za-z0-9.+_-]{1,20}", host in "[A-Za-z0-9.-]{1,30}", upper in any::<bool>()) {
            let scheme = if upper { "SIP" } else { "sip" };
            let first = sip_uri(format!("{scheme}:{user}@{host}").into()).unwrap().expose().to_owned();
            prop_assert_eq!(&first, &format!("sip:{user}@{}", host.to_ascii_lowercase()));
            let again = sip_uri(first.as_str().into()).unwrap();
            prop_assert_eq!(again.expose(), first.as_str());
        }

        #[test]
        fn normalisers_never_panic(text in ".{0,40}") {
            let _ = msisdn(text.as_str().into());
            let _ = imsi(text.as_str().into());
            let _ = imei(text.as_str().into());
            let _ = sip_uri(text.as_str().into());
            let _ = cell_id(text.as_str().into());
            let _ = ip(&text);
        }
    }
}
