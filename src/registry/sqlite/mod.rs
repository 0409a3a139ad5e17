//! The SQLite implementation of the registry traits: every statement
//! cdrvault runs against its database is in this folder, one file per
//! trait, so that another backend (PostgreSQL for instances sharing a
//! registry) implements the same three traits.

mod access;
mod migrations;
mod orders;
mod requests;
mod seal;

use std::fmt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, Transaction};

use super::seal::{RowSeal, SealedTable};
use super::{AuditHook, REGISTRY_FILE, RegistryError};
use crate::keys::KeyStore;
use crate::ops::durable::{self, DurableError};

/// One connection, serialised by a mutex (SQLite writes are serial anyway).
pub struct SqliteRegistry {
    connection: Mutex<Connection>,
    seal: RowSeal,
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
    /// Opens (creating and migrating if needed) the registry in `state_dir`. The
    /// directory, the database and its WAL files must be private to the
    /// service's user: they hold warrants, principals and sealed targets.
    /// Principals, warrants, orders and requests are sealed under the
    /// registry key of `keys` ([`super::seal`]); the first open with a
    /// table's seals seals the rows written before them.
    pub fn open(state_dir: &Path, keys: &KeyStore) -> Result<SqliteRegistry, RegistryError> {
        let backend = |e: DurableError| RegistryError::Backend(e.to_string());
        durable::create_private_dir(state_dir).map_err(backend)?;
        durable::ensure_private(state_dir).map_err(backend)?;
        let path = state_dir.join(REGISTRY_FILE);
        for suffix in ["", "-wal", "-shm"] {
            durable::ensure_private(&path.with_file_name(format!("{}{suffix}", REGISTRY_FILE))).map_err(backend)?;
        }
        // SQLite gives the WAL files the database's mode: create it 0600.
        durable::open_private_append(&path).map_err(backend)?;
        let key = keys.registry_key()?;
        let seal = RowSeal::new(key.secret.expose());
        let mut connection = migrations::open(state_dir)?;
        for (set, tables) in seal::SEALED_SETS {
            if keys.is_registry_adopted(set)? {
                continue;
            }
            let sealed = seal::adopt(&mut connection, &seal, tables)?;
            if tables.contains(&SealedTable::Principals) {
                // Principals revoked before are recorded as such in the
                // keys directory, as every revocation is from now on.
                let revoked: Vec<String> = connection
                    .prepare("SELECT id FROM principals WHERE revoked_at IS NOT NULL")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for id in &revoked {
                    keys.retire_principal(id)?;
                }
            }
            keys.mark_registry_adopted(set)?;
            tracing::info!(
                rows = sealed,
                tables = set,
                "rows written before their seals are sealed under the registry key"
            );
        }
        Ok(SqliteRegistry { connection: Mutex::new(connection), seal })
    }

    pub(super) fn db(&self) -> MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `change` in a transaction. If it reports that it changed
    /// something, the change's audit entry is appended before the commit
    /// ([`AuditHook`]); otherwise the transaction is rolled back and nothing
    /// is audited.
    pub(super) fn audited<T>(
        &self,
        audit: AuditHook<'_>,
        change: impl FnOnce(&Transaction<'_>) -> Result<(T, bool), RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let (value, changed) = change(&tx)?;
        if changed {
            audit()?;
            tx.commit()?;
        }
        Ok(value)
    }
}
