//! The record keys that no row of the registry names: a result's key whose
//! request's row is gone, a warrant's key whose warrant's row is gone.
//!
//! A row deleted behind the service would otherwise keep what its key
//! seals for good: no expiry finds a result whose request is not there,
//! and no closing destroys the key of a warrant that is not there, so the
//! sealed bytes (a result, a warrant's targets) would stay readable by
//! whoever can read the registry and the keys directory. A crash between
//! a key and its row leaves such a key too. The housekeeping destroys
//! them, each audited. Only a row whose seal holds names a key: a row
//! edited behind the service (an expiry cleared, a validity extended)
//! names nothing, as a deleted row names nothing.
//!
//! An order's key is not among them: an order's row gone stops retention
//! instead ([`crate::lifecycle::orders`]), because destroying the key
//! would destroy what the order preserves.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use super::desk::Desk;
use super::refusal::AccessError;
use crate::audit::AuditEvent;
use crate::keys::RecordKeyScope;
use crate::registry::NamedKeys;

/// How long a key may go unnamed before the housekeeping destroys it: far
/// longer than any call takes between making a key and committing the
/// row that names it (a submission makes its result's key before its
/// lookup; a registration its warrant's key before the insert). Measured
/// by the file system's clock, in which calls run, not the service's.
pub const UNNAMED_KEY_GRACE: Duration = Duration::from_secs(3600);

/// The kinds of record key swept.
#[derive(Debug, Clone, Copy)]
enum Swept {
    Result,
    Warrant,
}

impl Swept {
    fn scope(self) -> RecordKeyScope {
        match self {
            Swept::Result => RecordKeyScope::Result,
            Swept::Warrant => RecordKeyScope::Warrant,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Swept::Result => "result",
            Swept::Warrant => "warrant",
        }
    }
}

impl Desk {
    /// Destroys the result and warrant keys that no row names and that were
    /// written more than [`UNNAMED_KEY_GRACE`] ago, each audited, then the
    /// sealed results no request names. Returns how many keys.
    pub(super) fn sweep_unnamed_keys(&self) -> Result<usize, AccessError> {
        let before = SystemTime::now().checked_sub(UNNAMED_KEY_GRACE).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut destroyed = 0;
        for swept in [Swept::Result, Swept::Warrant] {
            // The keys first, then the names: a row committed in between
            // is seen.
            let written: BTreeSet<String> = self
                .keys
                .record_key_files(swept.scope())?
                .into_iter()
                .filter(|file| file.written < before)
                .map(|file| file.record)
                .collect();
            if written.is_empty() {
                continue;
            }
            // Only rows with sound seals name a key: a row forged or
            // changed behind the service keeps nothing alive.
            let mut named: NamedKeys = match swept {
                Swept::Result => self.requests.result_names()?,
                Swept::Warrant => self.store.registry.warrant_ids()?,
            };
            for name in written.into_iter().filter(|name| !named.names.contains(name)) {
                if let Some(refused) = named.refused.remove(&name) {
                    self.row_refused("housekeeping", &refused.into());
                }
                match swept {
                    // With the bytes of a result sealed before the
                    // registry kept them.
                    Swept::Result => self.results.destroy(&name)?,
                    Swept::Warrant => self.keys.destroy_record_key(swept.scope(), &name)?,
                }
                let of = swept.name();
                tracing::warn!(of, %name, "a key that no registry row names was destroyed");
                self.append("cdrvault", AuditEvent::UnnamedKeyDestroyed { of: of.into(), name })?;
                destroyed += 1;
            }
        }
        self.requests.forget_unnamed_results()?;
        Ok(destroyed)
    }
}
