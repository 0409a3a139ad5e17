//! Delivery: a request's result fetched by its authority's handler, the
//! delivery audited with the digest of the exact bytes before they leave;
//! and the destruction of results: when they expire, swept every minute by
//! the service's housekeeping and before every submission and fetch, and
//! when their warrant is closed.
//!
//! A result may be fetched again while it is kept (a delivery that failed
//! on the way is retried), each delivery audited; closing its warrant ends
//! that at once.

use super::authz::{self, Action};
use super::desk::{Call, Desk};
use super::refusal::{AccessError, Refusal};
use super::render;
use crate::audit::AuditEvent;
use crate::model::TimestampMicros;
use crate::registry::{KeptResults, RequestRecord};

impl Desk {
    /// Destroys the sealed results past their expiry, each audited.
    pub(super) fn sweep_results(&self) -> Result<usize, AccessError> {
        self.destroy_results(KeptResults::ExpiredAt(TimestampMicros::from_datetime(self.now())), "expired")
    }

    /// Destroys the kept results `which` names, key first, each audited
    /// under `reason`. Returns how many.
    pub(super) fn destroy_results(&self, which: KeptResults<'_>, reason: &str) -> Result<usize, AccessError> {
        let kept = self.requests.kept_results(which)?;
        for request in &kept {
            let Some(name) = &request.result_name else { continue };
            self.results.destroy(name)?;
            self.requests.clear_result(&request.request_id)?;
            let event = AuditEvent::ResultDestroyed { request_id: request.request_id.clone(), reason: reason.into() };
            self.append("cdrvault", event)?;
        }
        Ok(kept.len())
    }

    /// A request's result, for its authority's handler: the delivery is
    /// audited with the digest of the bytes before they are returned.
    pub fn fetch(&self, call: &mut Call, request_id: &str) -> Result<(RequestRecord, Vec<u8>), AccessError> {
        call.request_id = Some(request_id.to_string());
        authz::permit(&call.principal, Action::FetchResult)?;
        self.rate_limit(call)?;
        self.sweep_results()?;
        let request = self.requests.get(request_id)?.ok_or(Refusal::UnknownRequest)?;
        authz::may_fetch(&call.principal, &request)?;
        call.warrant = Some(request.warrant.clone());
        let name = request.result_name.as_deref().ok_or(Refusal::NoResult)?;
        let bytes = self.results.unseal(name, self.requests.sealed_result(name)?)?;
        let sha256 = render::sha256_hex(&bytes);
        if Some(&sha256) != request.sha256.as_ref() {
            return Err(Refusal::ResultDigestMismatch.into());
        }
        self.audit(
            call,
            AuditEvent::ResultDelivered { request_id: request.request_id.clone(), sha256, bytes: bytes.len() as u64 },
        )?;
        self.metrics.disclosed(&request.authority, request.records);
        Ok((request, bytes))
    }
}
