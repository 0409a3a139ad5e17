//! The SQLite implementation of the registry traits ([`AccessRegistry`],
//! [`RequestRegistry`], [`OrderRegistry`]): every statement cdrvault runs
//! against its database is here, so that another backend (PostgreSQL for
//! instances sharing a registry) implements the same three traits.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::RegistryError;
use crate::access::{AccessRegistry, Principal, PrincipalKey, Role, StoredTarget, Warrant, WarrantStatus};
use crate::access::{category_name, parse_category};
use crate::models::{IdentifierKind, KeyId, PartitionDate, TimestampMicros, Token};
use crate::orders::{Order, OrderRegistry, OrderStatus, Which};
use crate::requests::{AGE_BUCKETS, AuthorityStatistics, RequestError, RequestRecord, RequestRegistry, RequestStatus};

/// One connection, serialised by a mutex (SQLite writes are serial anyway).
pub struct SqliteRegistry {
    connection: Mutex<Connection>,
}

impl fmt::Debug for SqliteRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SqliteRegistry")
    }
}

impl From<rusqlite::Error> for RegistryError {
    fn from(error: rusqlite::Error) -> RegistryError {
        match &error {
            rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                RegistryError::Conflict
            }
            // SQLite's messages name tables and columns, never values.
            _ => RegistryError::Backend(error.to_string()),
        }
    }
}

impl SqliteRegistry {
    /// Opens (creating and migrating) the registry in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<SqliteRegistry, RegistryError> {
        Ok(SqliteRegistry { connection: Mutex::new(super::open(state_dir)?) })
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn principal_from(id: String, name: String, roles: String, authority: Option<String>) -> Principal {
    Principal { id, name, roles: roles.split(',').filter_map(Role::parse).collect(), authority }
}

impl AccessRegistry for SqliteRegistry {
    fn insert_authority(&self, id: &str, country: &str, name: &str, at: DateTime<Utc>) -> Result<bool, RegistryError> {
        let inserted = self.db().execute(
            "INSERT OR IGNORE INTO authorities (id, country, name, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, country, name, at.to_rfc3339()],
        )?;
        Ok(inserted == 1)
    }

    fn authority_country(&self, id: &str) -> Result<Option<String>, RegistryError> {
        Ok(self
            .db()
            .query_row("SELECT country FROM authorities WHERE id = ?1", params![id], |r| r.get(0))
            .optional()?)
    }

    fn principal_count(&self) -> Result<u64, RegistryError> {
        let count: i64 = self.db().query_row("SELECT COUNT(*) FROM principals", [], |r| r.get(0))?;
        Ok(count as u64)
    }

    fn insert_principal(
        &self,
        principal: &Principal,
        token_sha256: &[u8],
        at: DateTime<Utc>,
    ) -> Result<(), RegistryError> {
        let roles = principal.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",");
        self.db().execute(
            "INSERT INTO principals (id, name, roles, authority_id, token_sha256, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![principal.id, principal.name, roles, principal.authority, token_sha256, at.to_rfc3339()],
        )?;
        Ok(())
    }

    fn find_principal(&self, key: PrincipalKey<'_>) -> Result<Option<Principal>, RegistryError> {
        let (column, value) = match key {
            PrincipalKey::TokenSha256(v) => ("token_sha256", v),
            PrincipalKey::CertificateSha256(v) => ("cert_sha256", v),
        };
        let row = self
            .db()
            .query_row(
                &format!("SELECT id, name, roles, authority_id FROM principals WHERE {column} = ?1"),
                params![value],
                |r| Ok(principal_from(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        Ok(row)
    }

    fn bind_certificate(&self, principal: &str, cert_sha256: &[u8]) -> Result<bool, RegistryError> {
        let updated = self
            .db()
            .execute("UPDATE principals SET cert_sha256 = ?2 WHERE id = ?1", params![principal, cert_sha256])?;
        Ok(updated == 1)
    }

    fn insert_warrant(
        &self,
        warrant: &Warrant,
        targets: &[StoredTarget],
        at: DateTime<Utc>,
    ) -> Result<(), RegistryError> {
        let categories = warrant.categories.iter().map(|c| category_name(*c)).collect::<Vec<_>>().join(",");
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO warrants (id, authority_id, reference, issued_by, legal_basis, period_start_us, period_end_us,
                categories, valid_until_us, status, registered_by, registered_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                warrant.id,
                warrant.authority,
                warrant.reference,
                warrant.issued_by,
                warrant.legal_basis,
                warrant.period_start.0,
                warrant.period_end.0,
                categories,
                warrant.valid_until.0,
                warrant.status.as_str(),
                warrant.registered_by,
                at.to_rfc3339(),
            ],
        )?;
        for (position, target) in targets.iter().enumerate() {
            tx.execute(
                "INSERT INTO warrant_targets (warrant_id, position, kind, sealed) VALUES (?1, ?2, ?3, ?4)",
                params![warrant.id, position as i64, target.kind.as_str(), target.sealed],
            )?;
            for (key_id, token) in &target.tokens {
                tx.execute(
                    "INSERT INTO warrant_target_tokens (warrant_id, position, token_key_id, token) VALUES (?1, ?2, ?3, ?4)",
                    params![warrant.id, position as i64, key_id, token],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn warrant(&self, id: &str) -> Result<Option<Warrant>, RegistryError> {
        let db = self.db();
        let row = db
            .query_row(
                "SELECT id, authority_id, reference, issued_by, legal_basis, period_start_us, period_end_us, categories,
                    valid_until_us, status, registered_by, decided_by, decision_reason FROM warrants WHERE id = ?1",
                params![id],
                |r| {
                    Ok(Warrant {
                        id: r.get(0)?,
                        authority: r.get(1)?,
                        reference: r.get(2)?,
                        issued_by: r.get(3)?,
                        legal_basis: r.get(4)?,
                        target_kinds: Vec::new(),
                        period_start: TimestampMicros(r.get(5)?),
                        period_end: TimestampMicros(r.get(6)?),
                        categories: r.get::<_, String>(7)?.split(',').filter_map(parse_category).collect(),
                        valid_until: TimestampMicros(r.get(8)?),
                        status: WarrantStatus::parse(&r.get::<_, String>(9)?),
                        registered_by: r.get(10)?,
                        decided_by: r.get(11)?,
                        decision_reason: r.get(12)?,
                    })
                },
            )
            .optional()?;
        let Some(mut warrant) = row else { return Ok(None) };
        let mut statement = db.prepare("SELECT kind FROM warrant_targets WHERE warrant_id = ?1 ORDER BY position")?;
        warrant.target_kinds = statement
            .query_map(params![id], |r| r.get::<_, String>(0))?
            .filter_map(Result::ok)
            .filter_map(|k| IdentifierKind::parse(&k))
            .collect();
        Ok(Some(warrant))
    }

    fn sealed_targets(&self, id: &str) -> Result<Vec<(String, Vec<u8>)>, RegistryError> {
        let db = self.db();
        let mut statement =
            db.prepare("SELECT kind, sealed FROM warrant_targets WHERE warrant_id = ?1 ORDER BY position")?;
        let rows = statement
            .query_map(params![id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn decide_warrant(
        &self,
        id: &str,
        status: WarrantStatus,
        by: &str,
        reason: Option<&str>,
    ) -> Result<bool, RegistryError> {
        let updated = self.db().execute(
            "UPDATE warrants SET status = ?2, decided_by = ?3, decision_reason = ?4 WHERE id = ?1 AND status = 'registered'",
            params![id, status.as_str(), by, reason],
        )?;
        Ok(updated == 1)
    }

    fn close_warrant(&self, id: &str) -> Result<(), RegistryError> {
        self.db().execute("UPDATE warrants SET status = 'closed' WHERE id = ?1", params![id])?;
        Ok(())
    }

    fn list_warrants(&self, authority: Option<&str>) -> Result<Vec<Warrant>, RegistryError> {
        let ids: Vec<String> = {
            let db = self.db();
            let mut statement = db.prepare(
                "SELECT id FROM warrants WHERE ?1 IS NULL OR authority_id = ?1 ORDER BY registered_at DESC, id",
            )?;
            statement.query_map(params![authority], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        let mut warrants = Vec::with_capacity(ids.len());
        for id in ids {
            warrants.extend(self.warrant(&id)?);
        }
        Ok(warrants)
    }
}

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

    fn record(&self, request: &RequestRecord, ages: &[u64; AGE_BUCKETS.len()]) -> Result<(), RequestError> {
        let write = || -> Result<bool, rusqlite::Error> {
            let mut db = self.db();
            let tx = db.transaction()?;
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
            )?;
            if inserted == 0 {
                return Ok(false);
            }
            for (bucket, records) in ages.iter().enumerate().filter(|(_, n)| **n > 0) {
                tx.execute(
                    "INSERT INTO request_ages (request_id, bucket, records) VALUES (?1, ?2, ?3)",
                    params![request.request_id, bucket as i64, *records as i64],
                )?;
            }
            tx.commit()?;
            Ok(true)
        };
        match write().map_err(RegistryError::from)? {
            true => Ok(()),
            false => Err(RequestError::Replayed { authority: request.authority.clone(), number: request.number }),
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

    fn expired_results(&self, now: TimestampMicros) -> Result<Vec<RequestRecord>, RequestError> {
        let query = || -> Result<Vec<RequestRecord>, rusqlite::Error> {
            let db = self.db();
            let mut statement = db.prepare(&format!(
                "SELECT {REQUEST_COLUMNS} FROM requests WHERE result_name IS NOT NULL AND result_expires_us < ?1"
            ))?;
            statement.query_map(params![now.0], request_from)?.collect()
        };
        Ok(query().map_err(RegistryError::from)?)
    }

    fn clear_result(&self, request_id: &str) -> Result<(), RequestError> {
        self.db()
            .execute("UPDATE requests SET result_name = NULL WHERE request_id = ?1", params![request_id])
            .map_err(RegistryError::from)?;
        Ok(())
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

impl OrderRegistry for SqliteRegistry {
    fn order_exists(&self, authority: &str, reference: &str) -> Result<bool, RegistryError> {
        let found: Option<String> = self
            .db()
            .query_row(
                "SELECT id FROM preservation_orders WHERE authority = ?1 AND reference = ?2",
                params![authority, reference],
                |r| r.get(0),
            )
            .optional()?;
        Ok(found.is_some())
    }

    fn insert_order(&self, order: &Order, placed_at: DateTime<Utc>) -> Result<(), RegistryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO preservation_orders (id, authority, reference, window_start_us, window_end_us, ends, status, placed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active', ?7)",
            params![
                order.id,
                order.authority,
                order.reference,
                order.window_start.0,
                order.window_end.0,
                order.ends.to_string(),
                placed_at.to_rfc3339(),
            ],
        )?;
        for (position, target) in order.targets.iter().enumerate() {
            tx.execute(
                "INSERT INTO preservation_targets (order_id, position, kind, sealed) VALUES (?1, ?2, ?3, ?4)",
                params![order.id, position as i64, target.kind.as_str(), target.sealed],
            )?;
            for (key, token) in &target.tokens {
                tx.execute(
                    "INSERT INTO preservation_target_tokens (order_id, position, token_key_id, token) VALUES (?1, ?2, ?3, ?4)",
                    params![order.id, position as i64, key.as_str(), token.0],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn load_orders(&self, which: Which<'_>) -> Result<Vec<Order>, RegistryError> {
        let (id, active_only) = match which {
            Which::One(id) => (Some(id), false),
            Which::All => (None, false),
            Which::Active => (None, true),
        };
        let db = self.db();
        let mut statement = db.prepare(
            "SELECT id, authority, reference, window_start_us, window_end_us, ends, status FROM preservation_orders
             WHERE (?1 IS NULL OR id = ?1) AND (?2 = 0 OR status = 'active') ORDER BY placed_at, id",
        )?;
        let rows = statement.query_map(params![id, active_only as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
            ))
        })?;
        let mut orders = Vec::new();
        for row in rows {
            let (id, authority, reference, start, end, ends, status) = row?;
            let mut targets = Vec::new();
            let mut stored = db.prepare(
                "SELECT position, kind, sealed FROM preservation_targets WHERE order_id = ?1 ORDER BY position",
            )?;
            let stored = stored.query_map(params![id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, Vec<u8>>(2)?))
            })?;
            for target in stored {
                let (position, kind, sealed) = target?;
                let kind = IdentifierKind::parse(&kind).unwrap_or(IdentifierKind::Msisdn);
                let mut tokens = db.prepare(
                    "SELECT token_key_id, token FROM preservation_target_tokens WHERE order_id = ?1 AND position = ?2",
                )?;
                let tokens = tokens
                    .query_map(params![id, position], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                    .filter_map(|r| r.ok())
                    .filter_map(|(key, token)| KeyId::new(key).map(|key| (key, Token(token))))
                    .collect();
                targets.push(crate::orders::StoredTarget { kind, tokens, sealed });
            }
            orders.push(Order {
                id,
                authority,
                reference,
                window_start: TimestampMicros(start),
                window_end: TimestampMicros(end),
                ends: PartitionDate::parse(&ends).unwrap_or(PartitionDate::EPOCH),
                status: if status == "active" { OrderStatus::Active } else { OrderStatus::Lifted },
                targets,
            });
        }
        Ok(orders)
    }

    fn set_order_end(&self, id: &str, ends: PartitionDate) -> Result<bool, RegistryError> {
        let changed = self.db().execute(
            "UPDATE preservation_orders SET ends = ?2 WHERE id = ?1 AND status = 'active'",
            params![id, ends.to_string()],
        )?;
        Ok(changed == 1)
    }

    fn mark_order_lifted(&self, id: &str, at: DateTime<Utc>) -> Result<bool, RegistryError> {
        let changed = self.db().execute(
            "UPDATE preservation_orders SET status = 'lifted', lifted_at = ?2 WHERE id = ?1 AND status = 'active'",
            params![id, at.to_rfc3339()],
        )?;
        Ok(changed == 1)
    }
}
