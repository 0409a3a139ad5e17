//! The SQLite implementation of the registry traits: every statement
//! cdrvault runs against its database is in this folder, one file per
//! trait, so that another backend (PostgreSQL for instances sharing a
//! registry) implements the same three traits.

mod access;
mod migrations;
mod orders;
mod requests;

use std::fmt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

use super::RegistryError;
use crate::ops::durable;

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
    /// Opens (creating and migrating) the registry in `state_dir`, creating
    /// the directory if needed.
    pub fn open(state_dir: &Path) -> Result<SqliteRegistry, RegistryError> {
        durable::create_dir_all(state_dir).map_err(|e| RegistryError::Backend(e.to_string()))?;
        Ok(SqliteRegistry { connection: Mutex::new(migrations::open(state_dir)?) })
    }

    pub(super) fn db(&self) -> MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|p| p.into_inner())
    }
}
