//! The lawful-access desk: the domain behind the API. It holds what every
//! operation works with (the registry, keys, audit trail, lookup engine,
//! result store, clock, settings, metrics) and the call path every
//! operation runs on: who is calling ([`Desk::authenticate`]), what the call
//! is about ([`Call`]), and the audit of its refusal ([`Desk::handle`]).
//!
//! The operations themselves live with their concern: principals and
//! authorities in [`super::principals`], warrants in [`super::warrants`],
//! requests in [`super::requests`], delivery in [`super::fetch`], subject
//! access in [`super::export`], the auditor's calls in [`super::oversight`].
//! Who may do what is [`super::authz`]'s to decide.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::config::AccessSettings;
use super::failures::FailureTally;
use super::lookup::{FoundRecord, LookupEngine, LookupStats, Query};
use super::refusal::{AccessError, AuthFailure, Refusal};
use super::results::ResultStore;
use super::store::AccessStore;
use crate::audit::{AuditEvent, AuditTrail};
use crate::keys::KeyStore;
use crate::lifecycle::orders::OrderStore;
use crate::model::IdentifierKind;
use crate::ops::clock::Clock;
use crate::ops::metrics::{Metrics, ReasonLabel};
use crate::ops::periodic;
use crate::registry::{AuditHook, Audited, Principal, Registries, RegistryError, RequestRegistry, with_audit};

/// What a call presents: a bearer token and, over mTLS, the SHA-256 of the
/// client certificate's DER. A token, when present, decides. The peer's
/// address names the caller in the audit of a failure.
#[derive(Default, Clone)]
pub struct Credentials {
    pub token: Option<String>,
    pub certificate: Option<Vec<u8>>,
    pub peer: Option<IpAddr>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("certificate", &self.certificate.is_some())
            .field("peer", &self.peer)
            .finish()
    }
}

/// One call on the desk: who makes it, through which method, and the
/// objects it concerns as they become known, for the audit entry of a
/// refusal.
#[derive(Debug, Clone)]
pub struct Call {
    pub principal: Principal,
    /// The API method, as the audit trail and metrics name it.
    pub method: &'static str,
    pub warrant: Option<String>,
    pub request_id: Option<String>,
    /// The preservation order the call concerns.
    pub order: Option<String>,
    /// Set once the operation audited its own refusal, in the transaction
    /// that recorded it ([`Desk::handle`] then appends nothing more).
    pub refusal_audited: bool,
}

/// What a desk works with, opened once by the composition root and handed
/// down.
pub struct DeskParts {
    /// The data directory that lookups search.
    pub data_dir: PathBuf,
    /// Where results sealed by earlier versions are kept (in the state
    /// directory); new ones are kept in the registry.
    pub results_dir: PathBuf,
    pub keys: Arc<KeyStore>,
    pub audit: Arc<AuditTrail>,
    pub registries: Registries,
    /// The preservation orders, over the same registry.
    pub orders: Arc<OrderStore>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub settings: AccessSettings,
}

/// The lawful-access desk. `Send + Sync`: one desk serves every call.
pub struct Desk {
    pub(super) store: AccessStore,
    pub(super) requests: Arc<dyn RequestRegistry>,
    pub(super) orders: Arc<OrderStore>,
    pub(super) keys: Arc<KeyStore>,
    pub(super) trail: Arc<AuditTrail>,
    pub(super) engine: Arc<LookupEngine>,
    pub(super) results: ResultStore,
    clock: Arc<dyn Clock>,
    pub(super) settings: AccessSettings,
    limiter: RateLimiter,
    pub(super) failures: FailureTally,
    pub(super) metrics: Arc<Metrics>,
}

impl fmt::Debug for Desk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Desk")
    }
}

impl Desk {
    pub fn new(parts: DeskParts) -> Result<Desk, AccessError> {
        let results = ResultStore::open(parts.results_dir, Arc::clone(&parts.keys))?;
        Ok(Desk {
            store: AccessStore::new(parts.registries.access),
            requests: parts.registries.requests,
            orders: parts.orders,
            engine: Arc::new(
                LookupEngine::new(parts.data_dir, Arc::clone(&parts.keys)).with_metrics(Arc::clone(&parts.metrics)),
            ),
            keys: parts.keys,
            trail: parts.audit,
            results,
            clock: parts.clock,
            limiter: RateLimiter::new(parts.settings.requests_per_minute),
            failures: FailureTally::default(),
            settings: parts.settings,
            metrics: parts.metrics,
        })
    }

    /// The lookup engine, for the service's cache sweep.
    pub fn lookup_engine(&self) -> Arc<LookupEngine> {
        Arc::clone(&self.engine)
    }

    pub fn settings(&self) -> &AccessSettings {
        &self.settings
    }

    /// The metrics the desk counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(super) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The call of the principal `credentials` name, or an authentication
    /// failure, counted and audited per peer ([`super::failures`]).
    pub fn authenticate(&self, credentials: &Credentials, method: &'static str) -> Result<Call, AccessError> {
        // A principal once revoked stays revoked, and a token once rotated
        // stays unknown, even if a row is put back as it was before
        // ([`KeyStore::retire_principal`], [`KeyStore::retire_token`]).
        let identified = self.store.identify(credentials, self.now()).and_then(|principal| {
            if self.token_retired(credentials)? {
                return Err(AuthFailure::UnknownToken.into());
            }
            match self.keys.is_principal_retired(&principal.id)? {
                true => Err(AuthFailure::Revoked.into()),
                false => Ok(principal),
            }
        });
        match identified {
            Ok(principal) => {
                Ok(Call { principal, method, warrant: None, request_id: None, order: None, refusal_audited: false })
            }
            Err(AccessError::Unauthenticated(failure)) => {
                self.count_refusal(failure.code());
                let peer = credentials.peer.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
                self.authentication_failed(&peer, method, failure.code())?;
                Err(failure.into())
            }
            Err(error) => Err(error),
        }
    }

    /// Runs `operation` for `call`. A refusal is counted and audited under
    /// the caller, with the method, warrant and request the call names, and
    /// then returned; if it cannot be audited, the call fails as
    /// [`AccessError::AuditUnavailable`] instead. Every operation of the API
    /// runs here, so no refusal goes unaudited.
    pub fn handle<T>(
        &self,
        call: &mut Call,
        operation: impl FnOnce(&Desk, &mut Call) -> Result<T, AccessError>,
    ) -> Result<T, AccessError> {
        match operation(self, call) {
            Err(AccessError::Refused(refusal)) if call.refusal_audited => {
                self.count_refusal(refusal.code());
                Err(refusal.into())
            }
            Err(AccessError::Refused(refusal)) => {
                self.count_refusal(refusal.code());
                let event = AuditEvent::AccessRefused {
                    method: call.method.to_string(),
                    reason: refusal.code().to_string(),
                    detail: refusal.to_string(),
                    warrant: call.warrant.clone(),
                    request_id: call.request_id.clone(),
                    order: call.order.clone(),
                };
                self.audit(call, event)?;
                Err(refusal.into())
            }
            other => other,
        }
    }

    /// If `error` is a registry row refused for its seal: counts it for the
    /// operator's alert and records it in the audit trail, which (unlike
    /// the log) whoever edited the row cannot quietly tidy up afterwards.
    /// The call fails either way; a trail that cannot take the entry is
    /// logged.
    pub(super) fn row_refused(&self, method: &str, error: &AccessError) {
        let AccessError::Registry(RegistryError::Tampered { table, id }) = error else { return };
        self.metrics.registry_rows_refused.inc();
        let event = AuditEvent::RegistryRowRefused { table: table.to_string(), id: id.clone(), method: method.into() };
        if let Err(error) = self.append("cdrvault", event) {
            tracing::error!(%error, "the refusal of a registry row could not be audited");
        }
    }

    /// Counts and, if it is the peer's first in this interval, audits a
    /// failed authentication.
    fn authentication_failed(&self, peer: &str, method: &'static str, reason: &'static str) -> Result<(), AccessError> {
        if self.failures.record(peer, reason, self.now()) {
            let event =
                AuditEvent::AuthenticationFailed { peer: peer.into(), method: method.into(), reason: reason.into() };
            self.append("anonymous", event)?;
        }
        Ok(())
    }

    /// Audits the failed authentications of the interval that ends now, one
    /// entry per peer; returns how many entries. Run by the service's
    /// housekeeping and at shutdown.
    pub fn flush_failures(&self) -> Result<usize, AccessError> {
        let summaries = self.failures.summaries();
        for event in &summaries {
            self.append("anonymous", event.clone())?;
        }
        Ok(summaries.len())
    }

    fn count_refusal(&self, reason: &'static str) {
        self.metrics.access_refusals.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Appends an audit entry under the caller and makes it durable; a trail
    /// that cannot be written stops the call before anything is done or
    /// disclosed.
    pub(super) fn audit(&self, call: &Call, event: AuditEvent) -> Result<(), AccessError> {
        self.append(&call.principal.id, event)
    }

    /// Runs a registry change whose audit entry, `event` under `actor`, is
    /// appended inside the change's transaction ([`AuditHook`]): the change
    /// commits only once its entry is durable, and fails with the audit's
    /// error if the entry cannot be written.
    pub(super) fn audited<T, E: Into<AccessError>>(
        &self,
        actor: &str,
        event: AuditEvent,
        change: impl FnOnce(AuditHook<'_>) -> Result<T, E>,
    ) -> Result<T, AccessError> {
        with_audit(&self.trail, actor, &event, self.now(), change).map_err(|error| match error {
            Audited::Audit(error) => {
                tracing::error!(%error, "audit trail cannot be written; the change is rolled back");
                AccessError::AuditUnavailable(error)
            }
            Audited::Change(error) => error.into(),
        })
    }

    pub(super) fn append(&self, actor: &str, event: AuditEvent) -> Result<(), AccessError> {
        self.trail.append(actor, &event, self.now()).map(|_| ()).map_err(|error| {
            tracing::error!(%error, "audit trail cannot be written; refusing the call");
            AccessError::AuditUnavailable(error)
        })
    }

    /// Takes one call from the budget of the caller's authority.
    pub(super) fn rate_limit(&self, call: &Call) -> Result<(), AccessError> {
        let authority = call.principal.authority.as_deref().unwrap_or(&call.principal.id);
        if self.limiter.take(authority, self.now()) {
            Ok(())
        } else {
            Err(Refusal::RateLimited(self.settings.requests_per_minute).into())
        }
    }

    /// The audit trail's references of targets: keyed apart from the data's
    /// tokens, so that no entry can be matched against a data file.
    pub(super) fn target_refs(&self, targets: &[(IdentifierKind, String)]) -> Vec<String> {
        targets.iter().map(|(kind, value)| self.trail.target_ref(*kind, value)).collect()
    }

    /// A lookup, timed into the metrics.
    pub(super) fn lookup(&self, query: &Query) -> Result<(Vec<FoundRecord>, LookupStats), AccessError> {
        let started = std::time::Instant::now();
        let result = self.engine.find(query);
        self.metrics.access_lookup_duration.observe(started.elapsed().as_secs_f64());
        Ok(result?)
    }
}

/// What one round of housekeeping did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Housekeeping {
    /// Results past their expiry, destroyed.
    pub expired: usize,
    /// Result and warrant keys that no row names, destroyed.
    pub unnamed: usize,
    /// Peers whose failed authentications were audited.
    pub peers: usize,
}

/// The service's lawful-access housekeeping, every minute whether or not
/// anyone calls: expired results destroyed, keys that no row names
/// destroyed ([`super::unnamed`]), and the interval's failed
/// authentications audited.
impl periodic::Job for Desk {
    type Report = Housekeeping;
    type Error = AccessError;
    const NAME: &'static str = "lawful-access housekeeping";

    fn run_once(&self) -> Result<Housekeeping, AccessError> {
        let expired = self.sweep_results()?;
        let unnamed = self.sweep_unnamed_keys()?;
        Ok(Housekeeping { expired, unnamed, peers: self.flush_failures()? })
    }

    fn is_fatal(error: &AccessError) -> bool {
        error.is_fatal()
    }

    fn log(done: &Housekeeping) {
        if *done != Housekeeping::default() {
            tracing::info!(
                expired = done.expired,
                unnamed = done.unnamed,
                peers = done.peers,
                "results and unnamed keys destroyed, failed authentications audited"
            );
        }
    }
}

/// Per-authority token buckets, `per_minute` deep, refilled continuously on
/// the injected clock. Submissions and fetches count.
struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: DateTime<Utc>,
}

impl RateLimiter {
    fn new(per_minute: u32) -> RateLimiter {
        RateLimiter { per_minute, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token from `authority`'s bucket; false if it is empty. A
    /// limit of 0 means none.
    fn take(&self, authority: &str, now: DateTime<Utc>) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let depth = f64::from(self.per_minute);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(authority.to_string()).or_insert(Bucket { tokens: depth, at: now });
        let elapsed = (now - bucket.at).num_milliseconds().max(0) as f64 / 60_000.0;
        bucket.tokens = (bucket.tokens + elapsed * depth).min(depth);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn each_authority_has_its_own_bucket_refilled_with_time() {
        let limiter = RateLimiter::new(2);
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        assert!(limiter.take("a", now) && limiter.take("a", now));
        assert!(!limiter.take("a", now), "the third call of the minute");
        assert!(limiter.take("b", now), "another authority");
        assert!(limiter.take("a", now + chrono::Duration::seconds(30)), "half a minute refills one");
        assert!(RateLimiter::new(0).take("a", now), "0 means no limit");
    }
}
