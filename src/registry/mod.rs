//! The registry: what cdrvault keeps about authorities, principals and
//! their roles, warrants, lawful requests and preservation orders, behind
//! three traits ([`AccessRegistry`], [`RequestRegistry`], [`OrderRegistry`])
//! that only store. The rules over these records live with their subsystem
//! (`access`, `lifecycle`); a backend never decides anything.
//!
//! The embedded backend is SQLite ([`sqlite`]): one database in the state
//! directory, numbered migrations, durable commits (WAL with
//! `synchronous = FULL`). A shared PostgreSQL registry for several instances
//! implements the same traits. No constructor outside [`Registries`] opens a
//! backend: the composition root opens it once and hands the traits down.

mod access;
mod audited;
mod orders;
mod requests;
pub mod seal;
pub mod sqlite;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

pub use access::{AccessRegistry, NewPrincipalRow, Principal, PrincipalKey, Role, Warrant, WarrantStatus};
pub use audited::{Audited, with_audit};
pub use orders::{Actor, Order, OrderRegistry, OrderStatus, PendingEnd, Which};
pub use requests::{
    AGE_BUCKETS, AuthorityStatistics, KeptResults, ListedAfter, RequestError, RequestRecord, RequestRegistry,
    RequestStatus, age_bucket,
};

use crate::keys::KeyStore;
use crate::model::IdentifierKind;

/// An error of a registry backend. Messages name tables and columns, never
/// a value.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A unique key is taken (a reference, an id, a certificate).
    #[error("an object with that key already exists")]
    Conflict,
    #[error("registry error: {0}")]
    Backend(String),
    /// The change's audit entry could not be written; the change was rolled
    /// back. The caller holds the audit error.
    #[error("the change's audit entry could not be written; the change was rolled back")]
    AuditFailed,
    /// A row does not carry the seal of what the service wrote
    /// ([`seal`]): it was written or changed behind the service.
    #[error("the row {id} of {table} does not match its seal: it was changed outside cdrvault")]
    Tampered { table: &'static str, id: String },
    /// What a change records in the keys directory inside its transaction
    /// (a revocation, a rotated token, an order's approved end) could not
    /// be recorded; the change was rolled back.
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
}

/// Appends the audit entry of a change from inside the change's
/// transaction, after the change is applied and before it commits: a change
/// commits only once its entry is durable, and an entry that cannot be
/// written rolls the change back ([`RegistryError::AuditFailed`]). A crash
/// between the two can leave an entry for a change that did not commit,
/// never a change without its entry. A backend calls it exactly once per
/// change it applies, and not at all for a change it does not apply.
pub type AuditHook<'a> = &'a mut dyn FnMut() -> Result<(), RegistryError>;

/// The registry's file name in the state directory.
pub const REGISTRY_FILE: &str = "registry.sqlite";

/// A target of a warrant or an order as stored: its kind and its canonical
/// value sealed under the record's key. No token is stored: tokens are
/// computed from the unsealed value under each day's token key when used,
/// so a record holds nothing that matches the data without its key.
#[derive(Clone)]
pub struct StoredTarget {
    pub kind: IdentifierKind,
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for StoredTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredTarget({})", self.kind.as_str())
    }
}

/// The record keys that a registry's rows name (a request its result, a
/// warrant its own), as the sweep of unnamed keys reads them. Only rows
/// whose seals hold name anything: a row written or changed behind the
/// service cannot keep a key alive, and is reported instead.
#[derive(Debug, Default)]
pub struct NamedKeys {
    /// The names that rows with sound seals give.
    pub names: HashSet<String>,
    /// The names that rows refused for their seals give, each with that
    /// refusal ([`RegistryError::Tampered`]).
    pub refused: HashMap<String, RegistryError>,
}

/// The three traits over one backend, opened once by the composition root.
#[derive(Clone)]
pub struct Registries {
    pub access: Arc<dyn AccessRegistry>,
    pub requests: Arc<dyn RequestRegistry>,
    pub orders: Arc<dyn OrderRegistry>,
}

impl std::fmt::Debug for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registries")
    }
}

impl Registries {
    /// The embedded SQLite registry in `state_dir` (created and migrated),
    /// its rows sealed under the registry key of `keys`.
    pub fn sqlite(state_dir: &Path, keys: &KeyStore) -> Result<Registries, RegistryError> {
        let backend = Arc::new(sqlite::SqliteRegistry::open(state_dir, keys)?);
        Ok(Registries { access: backend.clone(), requests: backend.clone(), orders: backend })
    }
}
