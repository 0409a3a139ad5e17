//! The record of lawful requests: one row per request received, with its
//! outcome, the digest of its result, where its sealed result is kept, and
//! the age of the data it delivered, which is what the yearly statistics
//! (Directive 2006/24/EC art. 10) are made of.
//!
//! A request number is used once per authority, whatever the outcome: the
//! unique key `(authority, number)` is what refuses a replayed request.
//! Rows hold ids, counts and digests, never a target value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::models::TimestampMicros;

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

    fn parse(text: &str) -> RequestStatus {
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
    #[error("registry error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// The request records over the embedded registry.
pub struct RequestStore {
    connection: Mutex<Connection>,
}

impl fmt::Debug for RequestStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestStore")
    }
}

const COLUMNS: &str =
    "request_id, authority_id, request_number, warrant_id, principal_id, status, reason, submitted_at_us,
    records, format, sha256, bytes, days_unavailable, result_name, result_expires_us";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RequestRecord> {
    Ok(RequestRecord {
        request_id: r.get(0)?,
        authority: r.get(1)?,
        number: r.get::<_, i64>(2)? as u64,
        warrant: r.get(3)?,
        principal: r.get(4)?,
        status: RequestStatus::parse(&r.get::<_, String>(5)?),
        reason: r.get(6)?,
        submitted_at: TimestampMicros(r.get(7)?),
        records: r.get::<_, i64>(8)? as u64,
        format: r.get(9)?,
        sha256: r.get(10)?,
        bytes: r.get::<_, i64>(11)? as u64,
        days_unavailable: r.get::<_, i64>(12)? as u64,
        result_name: r.get(13)?,
        result_expires: r.get::<_, Option<i64>>(14)?.map(TimestampMicros),
    })
}

impl RequestStore {
    pub fn open(state_dir: &Path) -> Result<RequestStore, RequestError> {
        Ok(RequestStore { connection: Mutex::new(crate::registry::open(state_dir)?) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the authority already used this request number.
    pub fn number_used(&self, authority: &str, number: u64) -> Result<bool, RequestError> {
        let found: Option<i64> = self
            .db()
            .query_row(
                "SELECT 1 FROM requests WHERE authority_id = ?1 AND request_number = ?2",
                params![authority, number as i64],
                |r| r.get(0),
            )
            .optional()?;
        Ok(found.is_some())
    }

    /// Records a request and the ages of the records it delivered, in one
    /// transaction. A used number is refused as [`RequestError::Replayed`].
    pub fn record(&self, request: &RequestRecord, ages: &[u64; AGE_BUCKETS.len()]) -> Result<(), RequestError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let inserted = tx.execute(
            &format!(
                "INSERT OR IGNORE INTO requests ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
            ),
            params![
                request.request_id,
                request.authority,
                request.number as i64,
                request.warrant,
                request.principal,
                request.status.as_str(),
                request.reason,
                request.submitted_at.0,
                request.records as i64,
                request.format,
                request.sha256,
                request.bytes as i64,
                request.days_unavailable as i64,
                request.result_name,
                request.result_expires.map(|t| t.0),
            ],
        )?;
        if inserted == 0 {
            return Err(RequestError::Replayed { authority: request.authority.clone(), number: request.number });
        }
        for (bucket, records) in ages.iter().enumerate().filter(|(_, n)| **n > 0) {
            tx.execute(
                "INSERT INTO request_ages (request_id, bucket, records) VALUES (?1, ?2, ?3)",
                params![request.request_id, bucket as i64, *records as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn get(&self, request_id: &str) -> Result<Option<RequestRecord>, RequestError> {
        Ok(self
            .db()
            .query_row(&format!("SELECT {COLUMNS} FROM requests WHERE request_id = ?1"), params![request_id], from_row)
            .optional()?)
    }

    /// Requests whose sealed result is past its expiry.
    pub fn expired_results(&self, now: TimestampMicros) -> Result<Vec<RequestRecord>, RequestError> {
        let db = self.db();
        let mut statement = db.prepare(&format!(
            "SELECT {COLUMNS} FROM requests WHERE result_name IS NOT NULL AND result_expires_us < ?1"
        ))?;
        let rows = statement.query_map(params![now.0], from_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Forgets a request's result once its file and key are destroyed.
    pub fn clear_result(&self, request_id: &str) -> Result<(), RequestError> {
        self.db().execute("UPDATE requests SET result_name = NULL WHERE request_id = ?1", params![request_id])?;
        Ok(())
    }

    /// The statistics of the requests received in `[from, to)`, per
    /// authority, authorities in order.
    pub fn statistics(
        &self,
        from: TimestampMicros,
        to: TimestampMicros,
    ) -> Result<Vec<AuthorityStatistics>, RequestError> {
        let db = self.db();
        let mut by_authority: BTreeMap<String, AuthorityStatistics> = BTreeMap::new();
        let mut statement = db.prepare(
            "SELECT authority_id, status, COUNT(*) FROM requests
             WHERE submitted_at_us >= ?1 AND submitted_at_us < ?2 GROUP BY authority_id, status",
        )?;
        let rows = statement.query_map(params![from.0, to.0], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)? as u64))
        })?;
        for row in rows {
            let (authority, status, count) = row?;
            let entry = by_authority
                .entry(authority.clone())
                .or_insert_with(|| AuthorityStatistics { authority, ..AuthorityStatistics::default() });
            entry.received += count;
            match RequestStatus::parse(&status) {
                RequestStatus::Answered => entry.answered += count,
                RequestStatus::AnsweredPartially => entry.answered_partially += count,
                RequestStatus::Unavailable => entry.unavailable += count,
                RequestStatus::Refused => entry.refused += count,
            }
        }
        let mut statement = db.prepare(
            "SELECT r.authority_id, a.bucket, SUM(a.records) FROM request_ages a JOIN requests r USING (request_id)
             WHERE r.submitted_at_us >= ?1 AND r.submitted_at_us < ?2 GROUP BY r.authority_id, a.bucket",
        )?;
        let rows = statement.query_map(params![from.0, to.0], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })?;
        for row in rows {
            let (authority, bucket, records) = row?;
            if let Some(entry) = by_authority.get_mut(&authority)
                && let Some(slot) = entry.ages.get_mut(bucket as usize)
            {
                *slot += records as u64;
            }
        }
        Ok(by_authority.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, RequestStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RequestStore::open(dir.path()).unwrap();
        let db = store.db();
        for id in ["dk-police", "dk-tax"] {
            db.execute(
                "INSERT INTO authorities (id, country, name, created_at) VALUES (?1, 'DK', 'x', 'now')",
                params![id],
            )
            .unwrap();
        }
        drop(db);
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
        store.record(&request("dk-police", 1, RequestStatus::Answered, 5), &[3, 0, 0, 0]).unwrap();
        assert!(store.number_used("dk-police", 1).unwrap());
        assert!(!store.number_used("dk-tax", 1).unwrap());
        let replay = store.record(&request("dk-police", 1, RequestStatus::Refused, 6), &[0; 4]);
        assert!(matches!(replay, Err(RequestError::Replayed { number: 1, .. })), "{replay:?}");
        store.record(&request("dk-tax", 1, RequestStatus::Refused, 6), &[0; 4]).unwrap();
        assert_eq!(store.get("DK-dk-police-1").unwrap().unwrap().status, RequestStatus::Answered);
    }

    #[test]
    fn statistics_count_outcomes_and_ages_per_authority_within_the_year() {
        let (_dir, store) = store();
        store.record(&request("dk-police", 1, RequestStatus::Answered, 100), &[2, 1, 0, 0]).unwrap();
        store.record(&request("dk-police", 2, RequestStatus::AnsweredPartially, 200), &[0, 0, 4, 0]).unwrap();
        store.record(&request("dk-police", 3, RequestStatus::Refused, 300), &[0; 4]).unwrap();
        store.record(&request("dk-tax", 1, RequestStatus::Unavailable, 400), &[0; 4]).unwrap();
        // Outside the year.
        store.record(&request("dk-tax", 2, RequestStatus::Answered, 5_000), &[9, 0, 0, 0]).unwrap();
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
        store.record(&request("dk-police", 1, RequestStatus::Answered, 100), &[0; 4]).unwrap();
        assert!(store.expired_results(TimestampMicros(105)).unwrap().is_empty());
        assert_eq!(store.expired_results(TimestampMicros(200)).unwrap().len(), 1);
        store.clear_result("DK-dk-police-1").unwrap();
        assert!(store.expired_results(TimestampMicros(200)).unwrap().is_empty());
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
