//! Lawful requests: submission, and reading them back.
//!
//! A submission is checked against its warrant, looked up, rendered,
//! sealed, recorded and audited, in that order ([`Desk::submit`]); the
//! result stays sealed until fetched ([`super::results`]). Every request
//! with a number is recorded, refused ones too, so that the yearly
//! statistics count it and the number cannot be used again.
//!
//! A window spans at most `access.max_window_days` days
//! ([`super::config::AccessSettings::max_window_days`]); a longer one is
//! refused as `window_too_long`, whatever the warrant's period.
//!
//! Statuses: `answered`; `answered_partially` when part of the window lies
//! before the retention horizon; `unavailable` when all of it does and
//! nothing (preserved) was found; `refused`.

use chrono::{DateTime, Utc};

use super::authz::{self, Action, Listing};
use super::desk::{Call, Desk};
use super::input;
use super::lookup::{FoundRecord, PreservedScope, Query, window_days};
use super::refusal::{AccessError, Refusal};
use super::render::{self, ResultFormat, ResultHeader};
use super::warrants::RequestScope;
use crate::audit::AuditEvent;
use crate::model::retention::oldest_retained;
use crate::model::{IdentifierKind, MICROS_PER_DAY, PartitionDate, TimestampMicros};
use crate::registry::{AGE_BUCKETS, ListedAfter, RequestRecord, RequestStatus, age_bucket};

/// A request as the handler submits it; the fields in their text forms
/// ([`input`]).
#[derive(Debug, Clone)]
pub struct Submission {
    pub warrant: String,
    /// The authority's request number, used once.
    pub number: u64,
    pub targets: Vec<String>,
    pub window_start: String,
    pub window_end: String,
    pub categories: Vec<String>,
    pub format: ResultFormat,
}

/// Where a submission stands once its id is known: what a refusal records.
struct Recording<'a> {
    request_id: String,
    authority: String,
    submission: &'a Submission,
    submitted_at: DateTime<Utc>,
}

impl Desk {
    /// Submits a request (authority handler) and answers it at once: the
    /// result is sealed, the request recorded and audited with the digest.
    pub fn submit(&self, call: &mut Call, submission: Submission) -> Result<RequestRecord, AccessError> {
        call.warrant = Some(submission.warrant.clone());
        authz::permit(&call.principal, Action::SubmitRequest)?;
        self.rate_limit(call)?;
        self.sweep_results()?;
        let authority = authz::acting_authority(&call.principal)?.to_string();
        let country = self
            .store
            .authority_country(&authority)?
            .ok_or(AccessError::Internal("the principal's authority is missing"))?;
        let recording = Recording {
            request_id: render::request_id(&country, &authority, submission.number),
            authority,
            submission: &submission,
            submitted_at: self.now(),
        };

        // Shape first: size, number, syntax; then replay; then the warrant.
        if submission.targets.len() > self.settings.max_targets {
            call.request_id = Some(recording.request_id.clone());
            return Err(self.record_refusal(&recording, call, Refusal::TooManyTargets(self.settings.max_targets)));
        }
        if submission.number == 0 {
            return Err(Refusal::BadRequestNumber.into());
        }
        call.request_id = Some(recording.request_id.clone());
        if self.requests.number_used(&recording.authority, submission.number)? {
            return Err(Refusal::RequestNumberReused(submission.number).into());
        }
        match self.answer(call, &recording, &country) {
            Err(AccessError::Refused(refusal)) => Err(self.record_refusal(&recording, call, refusal)),
            other => other,
        }
    }

    /// Records a refused request, so that its number is used and the
    /// statistics count it, together with the refusal's audit entry;
    /// returns what the caller is refused with.
    fn record_refusal(&self, recording: &Recording<'_>, call: &mut Call, refusal: Refusal) -> AccessError {
        let record = RequestRecord {
            request_id: recording.request_id.clone(),
            authority: recording.authority.clone(),
            number: recording.submission.number,
            warrant: recording.submission.warrant.clone(),
            principal: call.principal.id.clone(),
            status: RequestStatus::Refused,
            reason: Some(refusal.code().to_string()),
            submitted_at: TimestampMicros::from_datetime(recording.submitted_at),
            records: 0,
            format: None,
            sha256: None,
            bytes: 0,
            days_unavailable: 0,
            result_name: None,
            result_expires: None,
        };
        let event = AuditEvent::AccessRefused {
            method: call.method.to_string(),
            reason: refusal.code().to_string(),
            detail: refusal.to_string(),
            warrant: call.warrant.clone(),
            request_id: call.request_id.clone(),
            order: None,
        };
        let recorded = self.audited(&call.principal.id, event, |audit| {
            self.requests.record(&record, &[0; AGE_BUCKETS.len()], None, audit)
        });
        match recorded {
            Ok(()) => {
                call.refusal_audited = true;
                refusal.into()
            }
            Err(error) => error,
        }
    }

    /// The request in scope: checked, looked up, rendered, sealed, recorded
    /// and audited.
    fn answer(&self, call: &mut Call, recording: &Recording<'_>, country: &str) -> Result<RequestRecord, AccessError> {
        let submission = recording.submission;
        let now = recording.submitted_at;
        let scope = RequestScope {
            targets: input::targets(&submission.targets, self.settings.max_targets)?,
            window_start: input::time(&submission.window_start, "window_start")?,
            window_end: input::time(&submission.window_end, "window_end")?,
            categories: input::categories(&submission.categories)?,
        };
        // The window's length is the request's own: bounded before the
        // warrant is read, so that no lookup plans more days than that.
        let days = window_days(
            TimestampMicros::from_datetime(scope.window_start),
            TimestampMicros::from_datetime(scope.window_end),
        );
        if days > i64::from(self.settings.max_window_days) {
            return Err(Refusal::WindowTooLong(self.settings.max_window_days).into());
        }
        let (warrant, targets) =
            self.store.check_request(&call.principal, &submission.warrant, &scope, &self.keys, now)?;

        let query = Query {
            preserved: self.preserved_for(&targets, &recording.authority)?,
            targets: targets.clone(),
            from: TimestampMicros::from_datetime(scope.window_start),
            to: TimestampMicros::from_datetime(scope.window_end),
            categories: scope.categories.clone(),
        };
        // The result's key does not depend on the answer: it is made
        // durable while the lookup runs. Whatever stops the request from
        // being recorded destroys it again.
        let (key, found) = std::thread::scope(|scope| {
            let key = scope.spawn(|| self.results.reserve());
            let found = self.lookup(&query);
            (key.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), found)
        });
        let key = key?;
        let discard = |error: AccessError| {
            // Best effort; what the caller needs is the first error.
            let _ = self.results.destroy(&key.name);
            error
        };
        let (found, _) = found.map_err(discard)?;
        let (first, last) = (query.from.partition_date(), query.to.partition_date());
        let days = (last.days_since_epoch() - first.days_since_epoch() + 1).max(1) as u64;
        let beyond = self.days_beyond_retention(first, last);
        let status = match beyond {
            0 => RequestStatus::Answered,
            n if n >= days && found.is_empty() => RequestStatus::Unavailable,
            _ => RequestStatus::AnsweredPartially,
        };
        let header = ResultHeader {
            country: country.to_string(),
            authority: recording.authority.clone(),
            request_number: submission.number,
            csp_id: self.settings.csp_id.clone(),
            generated_at: now,
            warrant: warrant.id.clone(),
            status: status.as_str().to_string(),
            window_start: query.from,
            window_end: query.to,
            categories: scope.categories.clone(),
        };
        let rendered = render::render(submission.format, &header, &found);
        let sealed = self.results.seal(&key, &rendered.bytes).map_err(discard)?;
        let expires = now + chrono::Duration::from_std(self.settings.result_keep).unwrap_or(chrono::Duration::days(7));
        let record = RequestRecord {
            request_id: recording.request_id.clone(),
            authority: recording.authority.clone(),
            number: submission.number,
            warrant: warrant.id.clone(),
            principal: call.principal.id.clone(),
            status,
            reason: None,
            submitted_at: TimestampMicros::from_datetime(now),
            records: found.len() as u64,
            format: Some(submission.format.as_str().to_string()),
            sha256: Some(rendered.sha256.clone()),
            bytes: rendered.bytes.len() as u64,
            days_unavailable: beyond,
            result_name: Some(key.name.clone()),
            result_expires: Some(TimestampMicros::from_datetime(expires)),
        };
        let event = AuditEvent::RequestAnswered {
            request_id: record.request_id.clone(),
            warrant: warrant.id.clone(),
            status: status.as_str().to_string(),
            target_refs: self.target_refs(&targets),
            window_start: query.from.rfc3339(),
            window_end: query.to.rfc3339(),
            categories: scope.categories.iter().map(|c| c.as_str().to_string()).collect(),
            records: found.len() as u64,
            format: submission.format.as_str().to_string(),
            sha256: rendered.sha256.clone(),
            bytes: rendered.bytes.len() as u64,
        };
        let ages = ages_of(&found, now);
        let recorded =
            self.audited(&call.principal.id, event, |audit| self.requests.record(&record, &ages, Some(&sealed), audit));
        // Lost a race for the number, or the trail cannot take the entry:
        // the request does not exist, and its result's key goes.
        recorded.map_err(discard)?;
        Ok(record)
    }

    /// The preservation copies a request may be answered from: those of the
    /// active orders of the requesting authority, each for the request's
    /// targets that the order itself names. Another authority's copies, and
    /// an order's copies for anyone else's number, never answer.
    fn preserved_for(
        &self,
        targets: &[(IdentifierKind, String)],
        authority: &str,
    ) -> Result<Vec<PreservedScope>, AccessError> {
        let mut scopes = Vec::new();
        for order in self.orders.active()? {
            if order.authority != authority {
                continue;
            }
            let Some(frozen) = order.unseal_targets(&self.keys)? else { continue };
            let positions: Vec<usize> = targets
                .iter()
                .enumerate()
                .filter(|(_, target)| frozen.contains(target))
                .map(|(position, _)| position)
                .collect();
            if !positions.is_empty() {
                scopes.push(PreservedScope { order: order.id, targets: positions });
            }
        }
        Ok(scopes)
    }

    /// Days of `[first, last]` that lie beyond retention today.
    fn days_beyond_retention(&self, first: PartitionDate, last: PartitionDate) -> u64 {
        let today = TimestampMicros::from_datetime(self.now()).partition_date();
        // The retention rule's own horizon: days before it are expired.
        let horizon = oldest_retained(today, self.settings.retention_days).days_since_epoch();
        let (first, last) = (first.days_since_epoch(), last.days_since_epoch());
        if first >= horizon { 0 } else { (last.min(horizon - 1) - first + 1).max(0) as u64 }
    }

    /// A request the caller may see.
    pub fn request(&self, call: &mut Call, request_id: &str) -> Result<RequestRecord, AccessError> {
        call.request_id = Some(request_id.to_string());
        authz::permit(&call.principal, Action::ReadRequest)?;
        let request = self.requests.get(request_id)?.ok_or(Refusal::UnknownRequest)?;
        authz::may_see_request(&call.principal, &request)?;
        Ok(request)
    }

    /// A page of the requests the caller may see, newest first, optionally
    /// of one authority: at most `page_size` of them ([`input::DEFAULT_PAGE`] for
    /// 0, at most [`input::MAX_PAGE`]), after the page `page_token` names (empty:
    /// the first). A year of an authority's requests does not fit in one
    /// reply.
    pub fn list_requests(
        &self,
        call: &mut Call,
        authority: Option<&str>,
        page_size: u32,
        page_token: &str,
    ) -> Result<RequestPage, AccessError> {
        let limit = input::page_size(page_size);
        let after = input::page_after(page_token, parse_page_token)?;
        let requests = match authz::request_listing(&call.principal, authority)? {
            Listing::All(asked) => self.requests.list(asked, after.as_ref(), limit)?,
            Listing::Authority(own) => self.requests.list(Some(own), after.as_ref(), limit)?,
            Listing::Nothing => Vec::new(),
        };
        let next_page_token = input::next_page_token(&requests, limit, |last| page_token_of(&ListedAfter::of(last)));
        Ok(RequestPage { requests, next_page_token })
    }
}

/// One page of requests, and the token of the next if there may be one.
#[derive(Debug)]
pub struct RequestPage {
    pub requests: Vec<RequestRecord>,
    pub next_page_token: Option<String>,
}

/// A page token: where the page ended, as `time.number.hex(id)`. It names
/// only what the caller was just shown; the authority filter is applied
/// again on every page.
fn page_token_of(after: &ListedAfter) -> String {
    format!("{}.{}.{}", after.submitted_at.0, after.number, hex::encode(&after.request_id))
}

fn parse_page_token(token: &str) -> Option<ListedAfter> {
    let mut parts = token.splitn(3, '.');
    let submitted_at = TimestampMicros(parts.next()?.parse().ok()?);
    let number = parts.next()?.parse().ok()?;
    let request_id = String::from_utf8(hex::decode(parts.next()?).ok()?).ok()?;
    Some(ListedAfter { submitted_at, number, request_id })
}

/// Records delivered per age bucket, age counted from the communication to
/// the request.
fn ages_of(found: &[FoundRecord], now: DateTime<Utc>) -> [u64; AGE_BUCKETS.len()] {
    let mut ages = [0u64; AGE_BUCKETS.len()];
    let now = TimestampMicros::from_datetime(now).0;
    for record in found {
        let days = (now - record.start_time.0).max(0) / MICROS_PER_DAY;
        ages[age_bucket(days)] += 1;
    }
    ages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_token_names_where_its_page_ended_and_nothing_else_parses() {
        let after = ListedAfter {
            submitted_at: TimestampMicros(1_700_000_000_123_456),
            number: 42,
            request_id: "DK-dk.police-42".into(),
        };
        assert_eq!(parse_page_token(&page_token_of(&after)), Some(after));
        for bad in ["", "1.2", "x.2.41", "1.x.41", "1.2.zz", "1.2.ff", "-1.2.3.4"] {
            assert_eq!(parse_page_token(bad), None, "{bad}");
        }
    }
}
