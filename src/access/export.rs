//! Subject access (GDPR art. 15/20): a DPO exports every retained record of
//! one subscriber, all categories, over the whole retention window,
//! rendered as JSON and audited with its digest before it leaves, like a
//! disclosure.

use std::collections::BTreeSet;

use super::authz::{self, Action};
use super::desk::{Call, Desk};
use super::input;
use super::lookup::Query;
use super::refusal::{AccessError, Refusal};
use super::render::{self, Rendered};
use crate::audit::AuditEvent;
use crate::model::{Category, TimestampMicros};
use crate::privacy::target::TargetInput;

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
        };
        let (found, _) = self.lookup(&query)?;
        let rendered = render::subject_export(reference, &self.settings.csp_id, now, &found);
        let target_token = self.target_tokens(&[(input.kind, value)]).remove(0);
        self.audit(
            call,
            AuditEvent::SubjectExported {
                reference: reference.to_string(),
                kind: input.kind.as_str().to_string(),
                target_token,
                records: found.len() as u64,
                sha256: rendered.sha256.clone(),
                bytes: rendered.bytes.len() as u64,
            },
        )?;
        self.metrics.access_records_disclosed.inc_by(found.len() as u64);
        Ok((found.len() as u64, rendered))
    }
}
