//! [`RequestRegistry`] over SQLite.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};

use super::SqliteRegistry;
use crate::model::TimestampMicros;
use crate::registry::{
    AGE_BUCKETS, AuditHook, AuthorityStatistics, KeptResults, RegistryError, RequestError, RequestRecord,
    RequestRegistry, RequestStatus,
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
        Ok(self
            .db()
            .query_row(
                &format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE request_id = ?1"),
                params![request_id],
                request_from,
            )
            .optional()
            .map_err(RegistryError::from)?)
    }

    fn list(&self, authority: Option<&str>) -> Result<Vec<RequestRecord>, RequestError> {
        let query = || -> Result<Vec<RequestRecord>, rusqlite::Error> {
            let db = self.db();
            let mut statement = db.prepare(&format!(
                "SELECT {REQUEST_COLUMNS} FROM requests WHERE ?1 IS NULL OR authority_id = ?1
                 ORDER BY submitted_at_us DESC, request_number DESC"
            ))?;
            statement.query_map(params![authority], request_from)?.collect()
        };
        Ok(query().map_err(RegistryError::from)?)
    }

    fn kept_results(&self, which: KeptResults<'_>) -> Result<Vec<RequestRecord>, RequestError> {
        let query = || -> Result<Vec<RequestRecord>, rusqlite::Error> {
            let db = self.db();
            let (condition, value): (&str, rusqlite::types::Value) = match which {
                KeptResults::ExpiredAt(now) => ("result_expires_us < ?1", now.0.into()),
                KeptResults::OfWarrant(warrant) => ("warrant_id = ?1", warrant.to_string().into()),
            };
            let mut statement = db.prepare_cached(&kept_results_sql(condition))?;
            statement.query_map(params![value], request_from)?.collect()
        };
        Ok(query().map_err(RegistryError::from)?)
    }

    fn sealed_result(&self, name: &str) -> Result<Option<Vec<u8>>, RequestError> {
        Ok(self
            .db()
            .query_row("SELECT sealed FROM sealed_results WHERE name = ?1", params![name], |r| r.get(0))
            .optional()
            .map_err(RegistryError::from)?)
    }

    fn clear_result(&self, request_id: &str) -> Result<(), RequestError> {
        let clear = || -> Result<(), rusqlite::Error> {
            let mut db = self.db();
            let tx = db.transaction()?;
            tx.execute(
                "DELETE FROM sealed_results WHERE name = (SELECT result_name FROM requests WHERE request_id = ?1)",
                params![request_id],
            )?;
            tx.execute("UPDATE requests SET result_name = NULL WHERE request_id = ?1", params![request_id])?;
            tx.commit()
        };
        Ok(clear().map_err(RegistryError::from)?)
    }

    fn statistics(&self, from: TimestampMicros, to: TimestampMicros) -> Result<Vec<AuthorityStatistics>, RequestError> {
        let query = || -> Result<Vec<AuthorityStatistics>, rusqlite::Error> {
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
        };
        Ok(query().map_err(RegistryError::from)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How SQLite plans `sql`: the detail column of its query plan.
    fn plan(db: &rusqlite::Connection, sql: &str) -> String {
        let mut statement = db.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let details: Vec<String> = statement.query_map([1], |r| r.get(3)).unwrap().map(Result::unwrap).collect();
        details.join("; ")
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
