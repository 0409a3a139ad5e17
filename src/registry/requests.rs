//! The record of lawful requests: one row per request received, with its
//! outcome, the digest of its result, where its sealed result is kept, and
//! the age of the data it delivered, which is what the yearly statistics
//! (Directive 2006/24/EC art. 10) are made of.
//!
//! A request number is used once per authority, whatever the outcome: the
//! unique key `(authority, number)` is what refuses a replayed request.
//! Rows hold ids, counts and digests, never a target value.

use super::{AuditHook, NamedKeys, RegistryError};
use crate::model::TimestampMicros;

/// The outcome of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RequestStatus {
    Answered,
    /// Part of the window lies beyond retention.
    AnsweredPartially,
    /// All of the window lies beyond retention.
    Unavailable,
    Refused,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Answered => "answered",
            RequestStatus::AnsweredPartially => "answered_partially",
            RequestStatus::Unavailable => "unavailable",
            RequestStatus::Refused => "refused",
        }
    }

    pub fn parse(text: &str) -> RequestStatus {
        match text {
            "answered" => RequestStatus::Answered,
            "answered_partially" => RequestStatus::AnsweredPartially,
            "unavailable" => RequestStatus::Unavailable,
            _ => RequestStatus::Refused,
        }
    }
}

/// Age buckets of the data delivered: time between the communication and
/// the request, in days (upper bounds, inclusive).
pub const AGE_BUCKETS: [(&str, i64); 4] =
    [("0-3 months", 91), ("3-6 months", 182), ("6-12 months", 366), ("over 12 months", i64::MAX)];

/// The bucket of data `age_days` old.
pub fn age_bucket(age_days: i64) -> usize {
    AGE_BUCKETS.iter().position(|(_, upper)| age_days <= *upper).unwrap_or(AGE_BUCKETS.len() - 1)
}

/// Where a page of [`RequestRegistry::list`] ended: the last request it
/// held, in the list's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedAfter {
    pub submitted_at: TimestampMicros,
    pub number: u64,
    pub request_id: String,
}

impl ListedAfter {
    pub fn of(request: &RequestRecord) -> ListedAfter {
        ListedAfter {
            submitted_at: request.submitted_at,
            number: request.number,
            request_id: request.request_id.clone(),
        }
    }
}

/// One request as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Country code + authority id + request number.
    pub request_id: String,
    pub authority: String,
    pub number: u64,
    pub warrant: String,
    pub principal: String,
    pub status: RequestStatus,
    /// The refusal's reason code.
    pub reason: Option<String>,
    pub submitted_at: TimestampMicros,
    pub records: u64,
    pub format: Option<String>,
    pub sha256: Option<String>,
    pub bytes: u64,
    pub days_unavailable: u64,
    /// The opaque name of the sealed result (file and key), while kept.
    pub result_name: Option<String>,
    pub result_expires: Option<TimestampMicros>,
}

/// A year's statistics for one authority.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorityStatistics {
    pub authority: String,
    pub received: u64,
    pub answered: u64,
    pub answered_partially: u64,
    pub unavailable: u64,
    pub refused: u64,
    /// Records delivered per [`AGE_BUCKETS`] entry.
    pub ages: [u64; AGE_BUCKETS.len()],
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request number {number} was already used by authority {authority}")]
    Replayed { authority: String, number: u64 },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Which kept results [`RequestRegistry::kept_results`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptResults<'a> {
    /// Those past their expiry at this instant.
    ExpiredAt(TimestampMicros),
    /// Those of the requests under this warrant.
    OfWarrant(&'a str),
}

/// Where request records live (SQLite by default, see [`super::sqlite`]).
pub trait RequestRegistry: Send + Sync {
    /// Whether the authority already used this request number.
    fn number_used(&self, authority: &str, number: u64) -> Result<bool, RequestError>;
    /// Records a request, the ages of the records it delivered and its
    /// sealed result (kept under the request's `result_name`), in one
    /// transaction with its audit entry: one commit makes all of them
    /// durable. A used number is refused as [`RequestError::Replayed`],
    /// unaudited.
    fn record(
        &self,
        request: &RequestRecord,
        ages: &[u64; AGE_BUCKETS.len()],
        sealed: Option<&[u8]>,
        audit: AuditHook<'_>,
    ) -> Result<(), RequestError>;
    /// The sealed result kept under `name`, if any.
    fn sealed_result(&self, name: &str) -> Result<Option<Vec<u8>>, RequestError>;
    fn get(&self, request_id: &str) -> Result<Option<RequestRecord>, RequestError>;
    /// At most `limit` requests, optionally of one authority, newest first
    /// (by submission time, then number, then id), from after `after`.
    fn list(
        &self,
        authority: Option<&str>,
        after: Option<&ListedAfter>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, RequestError>;
    /// Requests whose sealed result is still kept, of those `which` names.
    fn kept_results(&self, which: KeptResults<'_>) -> Result<Vec<RequestRecord>, RequestError>;
    /// Forgets a request's result once its key is destroyed, and deletes
    /// the sealed bytes (overwritten, not left in free pages).
    fn clear_result(&self, request_id: &str) -> Result<(), RequestError>;
    /// The names of every result a request still names as kept, from the
    /// rows whose seals hold; the others are reported, not counted.
    fn result_names(&self) -> Result<NamedKeys, RequestError>;
    /// Deletes the sealed results that no request names (their request's
    /// row deleted behind the service; their key is destroyed first).
    /// Returns how many.
    fn forget_unnamed_results(&self) -> Result<usize, RequestError>;
    /// The statistics of the requests received in `[from, to)`, per
    /// authority, authorities in order.
    fn statistics(&self, from: TimestampMicros, to: TimestampMicros) -> Result<Vec<AuthorityStatistics>, RequestError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::registry::AccessRegistry;
    use crate::registry::sqlite::SqliteRegistry;

    fn store() -> (tempfile::TempDir, SqliteRegistry) {
        let dir = tempfile::tempdir().unwrap();
        crate::keys::KeyStore::init(&dir.path().join("keys"), None).unwrap();
        let keys = crate::keys::KeyStore::open(&dir.path().join("keys"), None).unwrap();
        let store = SqliteRegistry::open(&dir.path().join("state"), &keys).unwrap();
        for id in ["dk-police", "dk-tax"] {
            assert!(store.insert_authority(id, "DK", "x", chrono::Utc::now(), &mut || Ok(())).unwrap());
        }
        (dir, store)
    }

    fn request(authority: &str, number: u64, status: RequestStatus, at: i64) -> RequestRecord {
        RequestRecord {
            request_id: format!("DK-{authority}-{number}"),
            authority: authority.into(),
            number,
            warrant: "w-1".into(),
            principal: "p-1".into(),
            status,
            reason: None,
            submitted_at: TimestampMicros(at),
            records: 3,
            format: Some("json".into()),
            sha256: Some("00".into()),
            bytes: 10,
            days_unavailable: 0,
            result_name: Some(format!("r{number}")),
            result_expires: Some(TimestampMicros(at + 10)),
        }
    }

    #[test]
    fn a_request_number_is_used_once_per_authority() {
        let (_dir, store) = store();
        store
            .record(&request("dk-police", 1, RequestStatus::Answered, 5), &[3, 0, 0, 0], None, &mut || Ok(()))
            .unwrap();
        assert!(store.number_used("dk-police", 1).unwrap());
        assert!(!store.number_used("dk-tax", 1).unwrap());
        let replay = store.record(&request("dk-police", 1, RequestStatus::Refused, 6), &[0; 4], None, &mut || Ok(()));
        assert!(matches!(replay, Err(RequestError::Replayed { number: 1, .. })), "{replay:?}");
        store.record(&request("dk-tax", 1, RequestStatus::Refused, 6), &[0; 4], None, &mut || Ok(())).unwrap();
        assert_eq!(store.get("DK-dk-police-1").unwrap().unwrap().status, RequestStatus::Answered);
    }

    #[test]
    fn statistics_count_outcomes_and_ages_per_authority_within_the_year() {
        let (_dir, store) = store();
        store
            .record(&request("dk-police", 1, RequestStatus::Answered, 100), &[2, 1, 0, 0], None, &mut || Ok(()))
            .unwrap();
        store
            .record(
                &request("dk-police", 2, RequestStatus::AnsweredPartially, 200),
                &[0, 0, 4, 0],
                None,
                &mut || Ok(()),
            )
            .unwrap();
        store.record(&request("dk-police", 3, RequestStatus::Refused, 300), &[0; 4], None, &mut || Ok(())).unwrap();
        store.record(&request("dk-tax", 1, RequestStatus::Unavailable, 400), &[0; 4], None, &mut || Ok(())).unwrap();
        // Outside the year.
        store
            .record(&request("dk-tax", 2, RequestStatus::Answered, 5_000), &[9, 0, 0, 0], None, &mut || Ok(()))
            .unwrap();
        let stats = store.statistics(TimestampMicros(0), TimestampMicros(1_000)).unwrap();
        assert_eq!(stats.len(), 2);
        assert_eq!(
            stats[0],
            AuthorityStatistics {
                authority: "dk-police".into(),
                received: 3,
                answered: 1,
                answered_partially: 1,
                unavailable: 0,
                refused: 1,
                ages: [2, 1, 4, 0],
            }
        );
        assert_eq!((stats[1].received, stats[1].unavailable, stats[1].ages), (1, 1, [0; 4]));
    }

    #[test]
    fn expired_results_are_listed_until_cleared() {
        let (_dir, store) = store();
        store.record(&request("dk-police", 1, RequestStatus::Answered, 100), &[0; 4], None, &mut || Ok(())).unwrap();
        assert!(store.kept_results(KeptResults::ExpiredAt(TimestampMicros(105))).unwrap().is_empty());
        assert_eq!(store.kept_results(KeptResults::ExpiredAt(TimestampMicros(200))).unwrap().len(), 1);
        assert_eq!(store.kept_results(KeptResults::OfWarrant("w-1")).unwrap().len(), 1);
        assert!(store.kept_results(KeptResults::OfWarrant("w-2")).unwrap().is_empty());
        store.clear_result("DK-dk-police-1").unwrap();
        assert!(store.kept_results(KeptResults::ExpiredAt(TimestampMicros(200))).unwrap().is_empty());
    }

    #[test]
    fn a_sealed_result_commits_with_its_record_and_goes_with_its_clearing() {
        let (_dir, store) = store();
        let failing = store.record(
            &request("dk-police", 1, RequestStatus::Answered, 100),
            &[0; 4],
            Some(b"sealed one"),
            &mut || Err(RegistryError::AuditFailed),
        );
        assert!(failing.is_err());
        assert_eq!(store.sealed_result("r1").unwrap(), None, "no audit entry, no record, no result");
        assert!(!store.number_used("dk-police", 1).unwrap());

        let answered = request("dk-police", 1, RequestStatus::Answered, 100);
        store.record(&answered, &[0; 4], Some(b"sealed one"), &mut || Ok(())).unwrap();
        assert_eq!(store.sealed_result("r1").unwrap().as_deref(), Some(&b"sealed one"[..]));
        // A replay keeps the first result.
        let replay = store.record(&answered, &[0; 4], Some(b"sealed two"), &mut || Ok(()));
        assert!(matches!(replay, Err(RequestError::Replayed { .. })));
        assert_eq!(store.sealed_result("r1").unwrap().as_deref(), Some(&b"sealed one"[..]));
        store.clear_result("DK-dk-police-1").unwrap();
        assert_eq!(store.sealed_result("r1").unwrap(), None);
        assert_eq!(store.get("DK-dk-police-1").unwrap().unwrap().result_name, None);
    }

    #[test]
    fn age_buckets_have_inclusive_upper_bounds() {
        assert_eq!(age_bucket(0), 0);
        assert_eq!(age_bucket(91), 0);
        assert_eq!(age_bucket(92), 1);
        assert_eq!(age_bucket(366), 2);
        assert_eq!(age_bucket(400), 3);
    }
}
