//! [`RequestRegistry`] over SQLite.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};

use super::SqliteRegistry;
use crate::model::TimestampMicros;
use crate::registry::seal::SealedTable::Requests;
use crate::registry::{
    AGE_BUCKETS, AuditHook, AuthorityStatistics, KeptResults, ListedAfter, NamedKeys, RegistryError, RequestError,
    RequestRecord, RequestRegistry, RequestStatus,
};

const REQUEST_COLUMNS: &str = "request_id, authority_id, request_number, warrant_id, principal_id, status, reason,
    submitted_at_us, records, format, sha256, bytes, days_unavailable, result_name, result_expires_us";

fn request_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<RequestRecord> {
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

/// A page of requests, newest first, of one authority or all, after a
/// given one: walked down an index (migration 10), never sorted whole.
fn list_sql(of_authority: bool, after: bool) -> String {
    let mut conditions = Vec::new();
    if of_authority {
        conditions.push("authority_id = :authority");
    }
    if after {
        conditions.push("(submitted_at_us, request_number, request_id) < (:at, :number, :id)");
    }
    let condition = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
    format!(
        "SELECT {REQUEST_COLUMNS} FROM requests {condition}
         ORDER BY submitted_at_us DESC, request_number DESC, request_id DESC LIMIT :limit"
    )
}

/// The requests whose result is kept and meets `condition` (on `?1`):
/// answered from the partial indexes of kept results (migration 9), never
/// by a scan of every request ever made.
fn kept_results_sql(condition: &str) -> String {
    format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE result_name IS NOT NULL AND {condition}")
}

impl RequestRegistry for SqliteRegistry {
    fn number_used(&self, authority: &str, number: u64) -> Result<bool, RequestError> {
        let found: Option<i64> = self
            .db()
            .query_row(
                "SELECT 1 FROM requests WHERE authority_id = ?1 AND request_number = ?2",
                params![authority, number as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(RegistryError::from)?;
        Ok(found.is_some())
    }

    fn record(
        &self,
        request: &RequestRecord,
        ages: &[u64; AGE_BUCKETS.len()],
        sealed: Option<&[u8]>,
        audit: AuditHook<'_>,
    ) -> Result<(), RequestError> {
        let inserted = self.audited(audit, |tx| {
            let inserted = tx.execute(
                &format!(
                    "INSERT OR IGNORE INTO requests ({REQUEST_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
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
            )? == 1;
            if inserted {
                for (bucket, records) in ages.iter().enumerate().filter(|(_, n)| **n > 0) {
                    tx.execute(
                        "INSERT INTO request_ages (request_id, bucket, records) VALUES (?1, ?2, ?3)",
                        params![request.request_id, bucket as i64, *records as i64],
                    )?;
                }
                if let (Some(name), Some(sealed)) = (&request.result_name, sealed) {
                    tx.execute("INSERT INTO sealed_results (name, sealed) VALUES (?1, ?2)", params![name, sealed])?;
                }
                self.reseal(tx, Requests, &request.request_id)?;
            }
            Ok((inserted, inserted))
        })?;
        if inserted {
            Ok(())
        } else {
            Err(RequestError::Replayed { authority: request.authority.clone(), number: request.number })
        }
    }

    fn get(&self, request_id: &str) -> Result<Option<RequestRecord>, RequestError> {
        let connection = self.db();
        // One snapshot for the row read and the check of its seal.
        let db = connection.unchecked_transaction().map_err(RegistryError::from)?;
        let request = db
            .query_row(
                &format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE request_id = ?1"),
                params![request_id],
                request_from,
            )
            .optional()
            .map_err(RegistryError::from)?;
        if let Some(request) = &request {
            self.check(&db, Requests, &request.request_id)?;
        }
        Ok(request)
    }

    fn list(
        &self,
        authority: Option<&str>,
        after: Option<&ListedAfter>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, RequestError> {
        let connection = self.db();
        // One snapshot for the rows listed and the check of their seals: a
        // listing shows only rows the service wrote.
        let db = connection.unchecked_transaction().map_err(RegistryError::from)?;
        let query = || -> Result<Vec<RequestRecord>, rusqlite::Error> {
            let mut statement = db.prepare_cached(&list_sql(authority.is_some(), after.is_some()))?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let (at, number, id) = after.map_or((None, None, None), |a| {
                (Some(a.submitted_at.0), Some(a.number as i64), Some(a.request_id.as_str()))
            });
            let all: [(&str, &dyn rusqlite::ToSql); 5] =
                [(":authority", &authority), (":at", &at), (":number", &number), (":id", &id), (":limit", &limit)];
            // Only the parameters this form of the statement names.
            let mut named = Vec::with_capacity(all.len());
            for (name, value) in all {
                if statement.parameter_index(name)?.is_some() {
                    named.push((name, value));
                }
            }
            statement.query_map(named.as_slice(), request_from)?.collect()
        };
        let listed = query().map_err(RegistryError::from)?;
        for request in &listed {
            self.check(&db, Requests, &request.request_id)?;
        }
        Ok(listed)
    }

    fn kept_results(&self, which: KeptResults<'_>) -> Result<Vec<RequestRecord>, RequestError> {
        let connection = self.db();
        // One snapshot for the rows read and the check of their seals: a
        // sweep destroys the keys the rows name.
        let db = connection.unchecked_transaction().map_err(RegistryError::from)?;
        let (condition, value): (&str, rusqlite::types::Value) = match which {
            KeptResults::ExpiredAt(now) => ("result_expires_us < ?1", now.0.into()),
            KeptResults::OfWarrant(warrant) => ("warrant_id = ?1", warrant.to_string().into()),
        };
        let kept: Vec<RequestRecord> = db
            .prepare_cached(&kept_results_sql(condition))
            .and_then(|mut statement| statement.query_map(params![value], request_from)?.collect())
            .map_err(RegistryError::from)?;
        for request in &kept {
            self.check(&db, Requests, &request.request_id)?;
        }
        Ok(kept)
    }

    fn sealed_result(&self, name: &str) -> Result<Option<Vec<u8>>, RequestError> {
        Ok(self
            .db()
            .query_row("SELECT sealed FROM sealed_results WHERE name = ?1", params![name], |r| r.get(0))
            .optional()
            .map_err(RegistryError::from)?)
    }

    fn clear_result(&self, request_id: &str) -> Result<(), RequestError> {
        let mut db = self.db();
        let tx = db.transaction().map_err(RegistryError::from)?;
        // Re-sealed below: what it seals must be what the service wrote.
        self.check(&tx, Requests, request_id)?;
        tx.execute(
            "DELETE FROM sealed_results WHERE name = (SELECT result_name FROM requests WHERE request_id = ?1)",
            params![request_id],
        )
        .map_err(RegistryError::from)?;
        tx.execute("UPDATE requests SET result_name = NULL WHERE request_id = ?1", params![request_id])
            .map_err(RegistryError::from)?;
        self.reseal(&tx, Requests, request_id)?;
        tx.commit().map_err(RegistryError::from)?;
        Ok(())
    }

    fn result_names(&self) -> Result<NamedKeys, RequestError> {
        let connection = self.db();
        // One snapshot for the rows read and the check of their seals.
        let db = connection.unchecked_transaction().map_err(RegistryError::from)?;
        let rows: Vec<(String, String)> = db
            .prepare_cached("SELECT request_id, result_name FROM requests WHERE result_name IS NOT NULL")
            .and_then(|mut statement| statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(RegistryError::from)?;
        Ok(self.named_by_sealed_rows(&db, Requests, rows)?)
    }

    fn forget_unnamed_results(&self) -> Result<usize, RequestError> {
        let forgotten = self
            .db()
            .execute(
                "DELETE FROM sealed_results WHERE name NOT IN
                     (SELECT result_name FROM requests WHERE result_name IS NOT NULL)",
                [],
            )
            .map_err(RegistryError::from)?;
        Ok(forgotten)
    }

    fn statistics(&self, from: TimestampMicros, to: TimestampMicros) -> Result<Vec<AuthorityStatistics>, RequestError> {
        let connection = self.db();
        // One snapshot for the rows counted and the check of their seals
        // (ages included): the report is refused rather than given wrong.
        let db = connection.unchecked_transaction().map_err(RegistryError::from)?;
        let counted: Vec<String> = db
            .prepare("SELECT request_id FROM requests WHERE submitted_at_us >= ?1 AND submitted_at_us < ?2")
            .and_then(|mut statement| statement.query_map(params![from.0, to.0], |r| r.get(0))?.collect())
            .map_err(RegistryError::from)?;
        for id in &counted {
            self.check(&db, Requests, id)?;
        }
        let query = || -> Result<Vec<AuthorityStatistics>, rusqlite::Error> {
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
        };
        Ok(query().map_err(RegistryError::from)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How SQLite plans `sql` (each of its parameters bound to 1): the
    /// detail column of its query plan.
    fn plan(db: &rusqlite::Connection, sql: &str) -> String {
        let mut statement = db.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let ones = rusqlite::params_from_iter(std::iter::repeat_n(1, statement.parameter_count()));
        let details: Vec<String> = statement.query_map(ones, |r| r.get(3)).unwrap().map(Result::unwrap).collect();
        details.join("; ")
    }

    #[test]
    fn a_page_of_requests_is_read_down_an_index_never_sorted_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = super::super::migrations::open(dir.path()).unwrap();
        for (of_authority, after) in [(false, false), (false, true), (true, false), (true, true)] {
            let plan = plan(&db, &list_sql(of_authority, after));
            assert!(plan.contains("USING INDEX requests_newest"), "{of_authority} {after}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{of_authority} {after}: {plan}");
        }
    }

    #[test]
    fn the_sweep_of_kept_results_searches_an_index_instead_of_scanning_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let db = super::super::migrations::open(dir.path()).unwrap();
        for condition in ["result_expires_us < ?1", "warrant_id = ?1"] {
            let plan = plan(&db, &kept_results_sql(condition));
            assert!(plan.contains("USING INDEX requests_kept_by_"), "{condition}: {plan}");
            assert!(!plan.contains("SCAN requests"), "{condition}: {plan}");
        }
    }
}
