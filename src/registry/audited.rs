//! A registry change and its audit entry, committed together: the bridge
//! between an [`AuditHook`] and the [`AuditTrail`].

use chrono::{DateTime, Utc};

use super::{AuditHook, RegistryError};
use crate::audit::{AuditError, AuditEvent, AuditTrail};

/// Why an audited change failed: its audit entry could not be written (the
/// change was rolled back), or the change itself failed.
#[derive(Debug)]
pub enum Audited<E> {
    Audit(AuditError),
    Change(E),
}

/// Runs `change` with a hook that appends `event` under `actor` inside the
/// change's transaction. If the entry cannot be written the change is
/// rolled back and the audit's error returned; otherwise the change's own
/// result.
pub fn with_audit<T, E>(
    trail: &AuditTrail,
    actor: &str,
    event: &AuditEvent,
    now: DateTime<Utc>,
    change: impl FnOnce(AuditHook<'_>) -> Result<T, E>,
) -> Result<T, Audited<E>> {
    let mut failure = None;
    let mut hook = || {
        trail.append(actor, event, now).map(|_| ()).map_err(|error| {
            failure = Some(error);
            RegistryError::AuditFailed
        })
    };
    let result = change(&mut hook);
    result.map_err(|error| match failure {
        Some(audit) => Audited::Audit(audit),
        None => Audited::Change(error),
    })
}
