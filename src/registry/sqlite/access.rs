//! [`AccessRegistry`] over SQLite.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::SqliteRegistry;
use crate::model::{Category, IdentifierKind, TimestampMicros};
use crate::registry::{
    AccessRegistry, Principal, PrincipalKey, RegistryError, Role, StoredTarget, Warrant, WarrantStatus,
};

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
        let categories = warrant.categories.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(",");
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
                    params![warrant.id, position as i64, key_id.as_str(), token.0],
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
                        categories: r.get::<_, String>(7)?.split(',').filter_map(Category::parse).collect(),
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

    fn sealed_targets(&self, id: &str) -> Result<Vec<(IdentifierKind, Vec<u8>)>, RegistryError> {
        let db = self.db();
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
    ) -> Result<bool, RegistryError> {
        let updated = self.db().execute(
            "UPDATE warrants SET status = ?2, decided_by = ?3, decision_reason = ?4 WHERE id = ?1 AND status = 'registered'",
            params![id, status.as_str(), by, reason],
        )?;
        Ok(updated == 1)
    }

    fn close_warrant(&self, id: &str) -> Result<(), RegistryError> {
        // The targets' tokens match rows of the data files: a closed
        // warrant keeps none (its sealed values die with its key).
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute("UPDATE warrants SET status = 'closed' WHERE id = ?1", params![id])?;
        tx.execute("DELETE FROM warrant_target_tokens WHERE warrant_id = ?1", params![id])?;
        tx.commit()?;
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
