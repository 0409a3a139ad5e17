//! Targets: an identifier named by a warrant, a request, a preservation
//! order or a subject-access export, as `kind:value`, and its canonical
//! form. Ingest, warrants, orders and lookups all compare values in the one
//! canonical form made here, so a number written `0045 20 00 00 01` in a
//! warrant finds the `+4520000001` that ingest stored.

use super::normalise::{self, canonical_ip};
use crate::model::IdentifierKind;

/// A target as given (raw: it lives only in memory). `Debug` shows its kind
/// only.
pub struct TargetInput {
    pub kind: IdentifierKind,
    pub value: String,
}

impl std::fmt::Debug for TargetInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TargetInput({}, <redacted>)", self.kind.as_str())
    }
}

/// A target not written `kind:value` with a known kind; the number is its
/// 1-based position in its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("target {0} must be written kind:value, kind one of msisdn, imsi, imei, sip, cell, ip")]
pub struct TargetSyntax(pub usize);

impl TargetInput {
    /// Parses `kind:value`, e.g. `msisdn:+4520000001`; `position` names it
    /// in the error.
    pub fn parse(text: &str, position: usize) -> Result<TargetInput, TargetSyntax> {
        let (kind, value) = text.split_once(':').ok_or(TargetSyntax(position))?;
        let kind = IdentifierKind::parse(kind).ok_or(TargetSyntax(position))?;
        Ok(TargetInput { kind, value: value.to_string() })
    }

    /// The canonical value; `None` if the value is malformed for its kind.
    pub fn canonical(&self) -> Option<String> {
        canonical_value(self.kind, &self.value)
    }
}

/// The canonical form of a value of `kind`, as ingest stores it; `None` if
/// it is malformed for its kind.
pub fn canonical_value(kind: IdentifierKind, text: &str) -> Option<String> {
    let text = text.into();
    Some(match kind {
        IdentifierKind::Msisdn => normalise::msisdn(text)?.expose().to_string(),
        IdentifierKind::Imsi => normalise::imsi(text)?.expose().to_string(),
        IdentifierKind::Imei => normalise::imei(text)?.expose().to_string(),
        IdentifierKind::Sip => normalise::sip_uri(text)?.expose().to_string(),
        IdentifierKind::Cell => normalise::cell_id(text)?.expose().to_string(),
        IdentifierKind::Ip => canonical_ip(normalise::ip(&text)?.expose()).as_str().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_by_kind_and_normalise_like_ingest() {
        let target = TargetInput::parse("msisdn:0045 20 00 00 01", 1).unwrap();
        assert_eq!(target.canonical().as_deref(), Some("+4520000001"));
        assert!(!format!("{target:?}").contains("20 00"), "Debug hides the value");
        assert_eq!(canonical_value(IdentifierKind::Ip, "::ffff:10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(TargetInput::parse("phone:+45", 2).unwrap_err(), TargetSyntax(2));
        assert_eq!(TargetInput::parse("+4520000001", 3).unwrap_err(), TargetSyntax(3));
        assert!(TargetInput::parse("imsi:123", 1).unwrap().canonical().is_none());
    }
}
