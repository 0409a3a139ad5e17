//! Subject access (GDPR art. 15/20): a DPO exports a subscriber's own
//! retained records, over the whole retention window, rendered as JSON and
//! audited with its digest before it leaves, like a disclosure.
//!
//! What is the subject's own data:
//!
//! - the subject is named by a subscriber identifier only: an MSISDN, an
//!   IMSI, an IMEI or a SIP URI. A cell or an IP address names no one, and a
//!   whole cell's or address's records are other people's data;
//! - every record the subject appears in, with its time, service, direction
//!   and the numbers and SIP identities of both parties: the subject's
//!   communications, as an itemised bill shows them;
//! - the device (IMSI, IMEI), location (cells) and IP data of a record only
//!   where the subject is its served party: the record names the subject's
//!   own IMSI or IMEI, or the subject is the calling party of an
//!   originating record, the called party of a terminating one, or the
//!   forwarding party of a forwarded one. As the other party of someone
//!   else's record the subject gets none of that party's equipment or cells;
//! - never a preservation order's copies: records kept beyond the window
//!   for an investigation are not the subject's to see (GDPR art. 23), and
//!   naming the order would tip the subject off.

use std::collections::BTreeSet;

use super::authz::{self, Action};
use super::desk::{Call, Desk};
use super::input;
use super::lookup::{FoundRecord, Query};
use super::refusal::{AccessError, Refusal};
use super::render::{self, Rendered};
use crate::audit::AuditEvent;
use crate::model::{Category, Direction, IdentifierField, IdentifierKind, TimestampMicros};
use crate::privacy::target::TargetInput;

/// The kinds that name a subscriber.
const SUBJECT_KINDS: [IdentifierKind; 4] =
    [IdentifierKind::Msisdn, IdentifierKind::Imsi, IdentifierKind::Imei, IdentifierKind::Sip];

impl Desk {
    /// The export of the subscriber `target` (`kind:value`) for the case
    /// `reference`: the number of records and the rendered bytes, after the
    /// export entry is durable.
    pub fn export_subject(
        &self,
        call: &mut Call,
        reference: &str,
        target: &str,
    ) -> Result<(u64, Rendered), AccessError> {
        authz::permit(&call.principal, Action::ExportSubject)?;
        input::within_limit(&[("reference", reference), ("target", target)])?;
        if reference.trim().is_empty() {
            return Err(Refusal::ReferenceRequired.into());
        }
        let input = TargetInput::parse(target, 1).map_err(|e| Refusal::TargetSyntax(e.0))?;
        if !SUBJECT_KINDS.contains(&input.kind) {
            return Err(Refusal::NotASubject(input.kind.as_str()).into());
        }
        let value = input.canonical().ok_or(Refusal::MalformedTarget(1))?;
        let now = self.now();
        let all: BTreeSet<Category> = Category::ALL.into();
        let query = Query {
            targets: vec![(input.kind, value.clone())],
            from: TimestampMicros::from_datetime(
                now - chrono::Duration::days(i64::from(self.settings.retention_days) + 1),
            ),
            to: TimestampMicros::from_datetime(now),
            categories: all,
            preserved: Vec::new(),
        };
        let (found, _) = self.lookup(&query)?;
        let found: Vec<FoundRecord> = found.into_iter().map(|record| own_view(record, &value)).collect();
        let rendered = render::subject_export(reference, &self.settings.csp_id, now, &found);
        let target_ref = self.target_refs(&[(input.kind, value)]).remove(0);
        self.audit(
            call,
            AuditEvent::SubjectExported {
                reference: reference.to_string(),
                kind: input.kind.as_str().to_string(),
                target_ref,
                records: found.len() as u64,
                sha256: rendered.sha256.clone(),
                bytes: rendered.bytes.len() as u64,
            },
        )?;
        self.metrics.disclosed("data_subject", found.len() as u64);
        Ok((found.len() as u64, rendered))
    }
}

/// A record as its subject (canonical value `subject`) may see it: the
/// equipment, cells and addresses of the record only where the subject is
/// its served party.
fn own_view(mut record: FoundRecord, subject: &str) -> FoundRecord {
    let direction = record.direction.as_deref().and_then(Direction::parse);
    let is = |field: IdentifierField| record.identifiers.iter().any(|(f, v)| *f == field && v == subject);
    let served = is(IdentifierField::Imsi)
        || is(IdentifierField::Imei)
        || (is(IdentifierField::SipUri) && direction != Some(Direction::Mt))
        || (is(IdentifierField::CallingNumber) && matches!(direction, None | Some(Direction::Mo)))
        || (is(IdentifierField::CalledNumber) && direction == Some(Direction::Mt))
        || (is(IdentifierField::RedirectingNumber) && direction == Some(Direction::Forwarded));
    if !served {
        record.identifiers.retain(|(field, _)| field.category() == Category::Traffic);
        record.src_port = None;
        record.dst_port = None;
    }
    record.preserved_under = None;
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PartitionDate, TimestampMicros};

    fn record(direction: &str, identifiers: &[(IdentifierField, &str)]) -> FoundRecord {
        FoundRecord {
            day: PartitionDate::EPOCH,
            record_id: "r".into(),
            service: "voice".into(),
            direction: Some(direction.into()),
            start_time: TimestampMicros(0),
            end_time: None,
            identifiers: identifiers.iter().map(|(f, v)| (*f, v.to_string())).collect(),
            src_port: Some(5060),
            dst_port: Some(5060),
            preserved_under: Some("po-1".into()),
        }
    }

    #[test]
    fn the_called_party_of_an_originating_record_gets_no_device_or_cell_of_the_caller() {
        use IdentifierField::*;
        let call =
            [(CallingNumber, "+451"), (CalledNumber, "+452"), (Imsi, "238010000000001"), (CellIdStart, "238-01-1-1")];
        let as_called = own_view(record("mo", &call), "+452");
        let fields: Vec<IdentifierField> = as_called.identifiers.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, [CallingNumber, CalledNumber], "the other party's number, not their IMSI or cell");
        assert_eq!(as_called.src_port, None);
        let as_caller = own_view(record("mo", &call), "+451");
        assert_eq!(as_caller.identifiers.len(), 4, "the served party sees its own record whole");
        assert_eq!(as_caller.preserved_under, None);
        let terminating = own_view(record("mt", &call), "+452");
        assert_eq!(terminating.identifiers.len(), 4, "the called party is the served party of a terminating record");
    }
}
