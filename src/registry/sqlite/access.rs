//! [`AccessRegistry`] over SQLite.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::SqliteRegistry;
use crate::model::{Category, IdentifierKind, TimestampMicros};
use crate::registry::seal::SealedTable::{Principals, Warrants};
use crate::registry::{
    AccessRegistry, AuditHook, NamedKeys, NewPrincipalRow, Principal, PrincipalKey, RegistryError, Role, StoredTarget,
    Warrant, WarrantStatus,
};

const PRINCIPAL_COLUMNS: &str = "id, name, person, roles, authority_id, expires_at_us, revoked_at";

fn principal_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Principal> {
    Ok(Principal {
        id: r.get(0)?,
        name: r.get(1)?,
        person: r.get(2)?,
        roles: r.get::<_, String>(3)?.split(',').filter_map(Role::parse).collect(),
        authority: r.get(4)?,
        expires_at: r.get::<_, Option<i64>>(5)?.map(TimestampMicros),
        revoked: r.get::<_, Option<String>>(6)?.is_some(),
    })
}

impl AccessRegistry for SqliteRegistry {
    fn insert_authority(
        &self,
        id: &str,
        country: &str,
        name: &str,
        at: DateTime<Utc>,
        audit: AuditHook<'_>,
    ) -> Result<bool, RegistryError> {
        self.audited(audit, |tx| {
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO authorities (id, country, name, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, country, name, at.to_rfc3339()],
            )? == 1;
            Ok((inserted, inserted))
        })
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
        new: NewPrincipalRow<'_>,
        at: DateTime<Utc>,
        audit: AuditHook<'_>,
    ) -> Result<(), RegistryError> {
        let principal = new.principal;
        let roles = principal.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",");
        self.audited(audit, |tx| {
            tx.execute(
                "INSERT INTO principals (id, name, person, roles, authority_id, token_sha256, cert_sha256,
                    expires_at_us, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    principal.id,
                    principal.name,
                    principal.person,
                    roles,
                    principal.authority,
                    new.token_sha256,
                    new.certificate_sha256,
                    principal.expires_at.map(|t| t.0),
                    at.to_rfc3339()
                ],
            )?;
            self.reseal(tx, Principals, &principal.id)?;
            Ok(((), true))
        })
    }

    fn find_principal(&self, key: PrincipalKey<'_>) -> Result<Option<Principal>, RegistryError> {
        let connection = self.db();
        // One snapshot for the rows read and the check of their seals.
        let db = connection.unchecked_transaction()?;
        let query = |column: &str| format!("SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE {column} = ?1");
        let row = match key {
            PrincipalKey::Id(id) => db.query_row(&query("id"), params![id], principal_row),
            PrincipalKey::TokenSha256(v) => db.query_row(&query("token_sha256"), params![v], principal_row),
            PrincipalKey::CertificateSha256(v) => db.query_row(&query("cert_sha256"), params![v], principal_row),
        };
        let principal = row.optional()?;
        if let Some(principal) = &principal {
            self.check(&db, Principals, &principal.id)?;
        }
        Ok(principal)
    }

    fn principals_of_person(&self, person: &str) -> Result<Vec<Principal>, RegistryError> {
        let connection = self.db();
        // One snapshot for the rows read and the check of their seals.
        let db = connection.unchecked_transaction()?;
        let mut statement =
            db.prepare(&format!("SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE person = ?1 ORDER BY id"))?;
        let principals: Vec<Principal> =
            statement.query_map(params![person], principal_row)?.collect::<Result<_, _>>()?;
        for principal in &principals {
            self.check(&db, Principals, &principal.id)?;
        }
        Ok(principals)
    }

    fn live_principals_with(&self, role: Role) -> Result<usize, RegistryError> {
        let connection = self.db();
        // One snapshot for the rows read and the check of their seals.
        let db = connection.unchecked_transaction()?;
        let mut statement = db.prepare("SELECT id, roles FROM principals WHERE revoked_at IS NULL")?;
        let rows = statement
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        let holders: Vec<&String> =
            rows.iter().filter(|(_, roles)| roles.split(',').any(|r| r == role.as_str())).map(|(id, _)| id).collect();
        for id in &holders {
            self.check(&db, Principals, id)?;
        }
        Ok(holders.len())
    }

    fn revoke_principal(&self, id: &str, at: DateTime<Utc>, audit: AuditHook<'_>) -> Result<bool, RegistryError> {
        self.audited(audit, |tx| {
            let revoked = tx.execute(
                "UPDATE principals SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, at.to_rfc3339()],
            )? == 1;
            if revoked {
                self.reseal(tx, Principals, id)?;
            }
            Ok((revoked, revoked))
        })
    }

    fn replace_token(
        &self,
        id: &str,
        token_sha256: &[u8],
        replaced: &mut dyn FnMut(&[u8]),
        audit: AuditHook<'_>,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        self.audited(audit, |tx| {
            let old: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT token_sha256 FROM principals WHERE id = ?1 AND revoked_at IS NULL",
                    params![id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(old) = old else { return Ok((None, false)) };
            replaced(&old);
            tx.execute("UPDATE principals SET token_sha256 = ?2 WHERE id = ?1", params![id, token_sha256])?;
            self.reseal(tx, Principals, id)?;
            Ok((Some(old), true))
        })
    }

    fn insert_warrant(
        &self,
        warrant: &Warrant,
        targets: &[StoredTarget],
        at: DateTime<Utc>,
        audit: AuditHook<'_>,
    ) -> Result<(), RegistryError> {
        let categories = warrant.categories.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(",");
        self.audited(audit, |tx| {
            tx.execute(
            "INSERT INTO warrants (id, authority_id, reference, issued_by, legal_basis, period_start_us, period_end_us,
                categories, valid_until_us, status, registered_by, registered_at, cell_dump, registered_by_person)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
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
                warrant.cell_dump,
                warrant.registered_by_person,
            ],
        )?;
            for (position, target) in targets.iter().enumerate() {
                tx.execute(
                    "INSERT INTO warrant_targets (warrant_id, position, kind, sealed) VALUES (?1, ?2, ?3, ?4)",
                    params![warrant.id, position as i64, target.kind.as_str(), target.sealed],
                )?;
            }
            self.reseal(tx, Warrants, &warrant.id)?;
            Ok(((), true))
        })
    }

    fn warrant(&self, id: &str) -> Result<Option<Warrant>, RegistryError> {
        let connection = self.db();
        // One snapshot for the rows read and the check of their seals.
        let db = connection.unchecked_transaction()?;
        self.check(&db, Warrants, id)?;
        let row = db
            .query_row(
                "SELECT id, authority_id, reference, issued_by, legal_basis, period_start_us, period_end_us, categories,
                    valid_until_us, status, registered_by, decided_by, decision_reason, cell_dump, registered_by_person
                 FROM warrants WHERE id = ?1",
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
                        categories: r.get::<_, String>(7)?.split(',').filter_map(Category::parse).collect(),
                        cell_dump: r.get(13)?,
                        valid_until: TimestampMicros(r.get(8)?),
                        status: WarrantStatus::parse(&r.get::<_, String>(9)?),
                        registered_by: r.get(10)?,
                        registered_by_person: r.get(14)?,
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

    fn sealed_targets(&self, id: &str) -> Result<Vec<(IdentifierKind, Vec<u8>)>, RegistryError> {
        let connection = self.db();
        // One snapshot for the rows read and the check of their seals.
        let db = connection.unchecked_transaction()?;
        self.check(&db, Warrants, id)?;
        let mut statement =
            db.prepare("SELECT kind, sealed FROM warrant_targets WHERE warrant_id = ?1 ORDER BY position")?;
        let rows = statement
            .query_map(params![id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(kind, sealed)| {
                let kind = IdentifierKind::parse(&kind)
                    .ok_or_else(|| RegistryError::Backend("warrant_targets.kind holds an unknown kind".into()))?;
                Ok((kind, sealed))
            })
            .collect()
    }

    fn decide_warrant(
        &self,
        id: &str,
        status: WarrantStatus,
        by: &str,
        reason: Option<&str>,
        audit: AuditHook<'_>,
    ) -> Result<bool, RegistryError> {
        self.audited(audit, |tx| {
            let decided = tx.execute(
                "UPDATE warrants SET status = ?2, decided_by = ?3, decision_reason = ?4
                 WHERE id = ?1 AND status = 'registered'",
                params![id, status.as_str(), by, reason],
            )? == 1;
            if decided {
                self.reseal(tx, Warrants, id)?;
            }
            Ok((decided, decided))
        })
    }

    fn close_warrant(&self, id: &str, audit: AuditHook<'_>) -> Result<bool, RegistryError> {
        // A closed warrant's sealed values die with its key.
        self.audited(audit, |tx| {
            let closed = tx
                .execute("UPDATE warrants SET status = 'closed' WHERE id = ?1 AND status != 'closed'", params![id])?
                == 1;
            if closed {
                self.reseal(tx, Warrants, id)?;
            }
            Ok((closed, closed))
        })
    }

    fn warrant_ids(&self) -> Result<NamedKeys, RegistryError> {
        let connection = self.db();
        // One snapshot for the rows read and the check of their seals.
        let db = connection.unchecked_transaction()?;
        let ids: Vec<String> =
            db.prepare_cached("SELECT id FROM warrants")?.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        self.named_by_sealed_rows(&db, Warrants, ids.into_iter().map(|id| (id.clone(), id)))
    }

    fn list_warrants(
        &self,
        authority: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Warrant>, RegistryError> {
        let ids: Vec<String> = {
            let db = self.db();
            let mut statement = db.prepare_cached(
                "SELECT w.id FROM warrants w
                 WHERE (?1 IS NULL OR w.authority_id = ?1)
                   AND (?2 IS NULL OR EXISTS (SELECT 1 FROM warrants a WHERE a.id = ?2
                        AND (w.registered_at < a.registered_at
                             OR (w.registered_at = a.registered_at AND w.id > a.id))))
                 ORDER BY w.registered_at DESC, w.id
                 LIMIT ?3",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            statement.query_map(params![authority, after, limit], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        let mut warrants = Vec::with_capacity(ids.len());
        for id in ids {
            warrants.extend(self.warrant(&id)?);
        }
        Ok(warrants)
    }
}
