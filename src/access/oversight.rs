//! The auditor's calls: verifying the audit trail, and the yearly
//! statistics of lawful requests (Directive 2006/24/EC art. 10), which hold
//! no personal data.

use super::authz::{self, Action};
use super::desk::{Call, Desk};
use super::refusal::{AccessError, Refusal};
use crate::audit::{self, AuditEvent, Verification};
use crate::model::TimestampMicros;
use crate::registry::AuthorityStatistics;

impl Desk {
    /// Verifies the whole trail (chain, signatures, signed head), reading
    /// it as a stream. The check of an intact trail is audited; a damaged
    /// trail takes no more entries, so its report goes to the auditor (and
    /// the log) alone.
    pub fn verify_audit(&self, call: &mut Call) -> Result<Verification, AccessError> {
        authz::permit(&call.principal, Action::VerifyAudit)?;
        let check =
            audit::verify(self.trail.path(), &self.trail.public_key(), &self.keys.audit_head_path(self.trail.path()))
                .map_err(AccessError::AuditUnavailable)?;
        match &check.problem {
            None => self.audit(call, AuditEvent::AuditVerified { entries: check.entries, intact: true })?,
            Some((seq, problem)) => {
                tracing::error!(principal = %call.principal.id, entry = seq, problem, "audit trail found damaged")
            }
        }
        Ok(check)
    }

    /// The statistics of the requests received in `year`, per authority.
    pub fn statistics(&self, call: &mut Call, year: i32) -> Result<Vec<AuthorityStatistics>, AccessError> {
        authz::permit(&call.principal, Action::Statistics)?;
        let bounds = |year: i32| {
            chrono::NaiveDate::from_ymd_opt(year, 1, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|d| TimestampMicros::from_datetime(d.and_utc()))
        };
        let (Some(from), Some(to)) = (bounds(year), year.checked_add(1).and_then(bounds)) else {
            return Err(Refusal::BadYear.into());
        };
        let statistics = self.requests.statistics(from, to)?;
        self.audit(call, AuditEvent::StatisticsReported { year })?;
        Ok(statistics)
    }
}
