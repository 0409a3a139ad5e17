//! What the registry keeps for lawful access: authorities, principals with
//! their roles, and warrants, behind [`AccessRegistry`].

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::{RegistryError, StoredTarget};
use crate::model::{Category, IdentifierKind, TimestampMicros};

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Manages authorities and principals.
    Admin,
    /// Registers, approves or rejects warrants.
    LegalReviewer,
    /// Submits requests for its own authority and fetches its results.
    AuthorityHandler,
    /// Reads the audit trail and statistics.
    Auditor,
    /// Exports a data subject's records (GDPR art. 15/20).
    Dpo,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Admin, Role::LegalReviewer, Role::AuthorityHandler, Role::Auditor, Role::Dpo];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::LegalReviewer => "legal_reviewer",
            Role::AuthorityHandler => "authority_handler",
            Role::Auditor => "auditor",
            Role::Dpo => "dpo",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// An authenticated (or to-be-authenticated) person or system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub name: String,
    pub roles: BTreeSet<Role>,
    /// The authority a handler acts for.
    pub authority: Option<String>,
}

impl Principal {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarrantStatus {
    Registered,
    Approved,
    Rejected,
    Closed,
}

impl WarrantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WarrantStatus::Registered => "registered",
            WarrantStatus::Approved => "approved",
            WarrantStatus::Rejected => "rejected",
            WarrantStatus::Closed => "closed",
        }
    }

    pub fn parse(text: &str) -> WarrantStatus {
        match text {
            "approved" => WarrantStatus::Approved,
            "rejected" => WarrantStatus::Rejected,
            "closed" => WarrantStatus::Closed,
            _ => WarrantStatus::Registered,
        }
    }
}

/// A registered warrant. Target values are not here: only their kinds (the
/// values are sealed under the warrant's key, see [`StoredTarget`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Warrant {
    pub id: String,
    pub authority: String,
    pub reference: String,
    pub issued_by: String,
    pub legal_basis: String,
    pub target_kinds: Vec<IdentifierKind>,
    pub period_start: TimestampMicros,
    pub period_end: TimestampMicros,
    pub categories: BTreeSet<Category>,
    pub valid_until: TimestampMicros,
    pub status: WarrantStatus,
    pub registered_by: String,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
}

/// How a principal is looked up.
#[derive(Debug, Clone, Copy)]
pub enum PrincipalKey<'a> {
    TokenSha256(&'a [u8]),
    CertificateSha256(&'a [u8]),
}

/// Where authorities, principals and warrants live. The rules are in
/// [`crate::access`]; a backend only stores. SQLite by default
/// ([`super::sqlite::SqliteRegistry`]); PostgreSQL when instances share a
/// registry.
pub trait AccessRegistry: Send + Sync {
    /// Inserts an authority; `false` if the id is taken.
    fn insert_authority(&self, id: &str, country: &str, name: &str, at: DateTime<Utc>) -> Result<bool, RegistryError>;
    fn authority_country(&self, id: &str) -> Result<Option<String>, RegistryError>;
    fn principal_count(&self) -> Result<u64, RegistryError>;
    fn insert_principal(
        &self,
        principal: &Principal,
        token_sha256: &[u8],
        at: DateTime<Utc>,
    ) -> Result<(), RegistryError>;
    fn find_principal(&self, key: PrincipalKey<'_>) -> Result<Option<Principal>, RegistryError>;
    /// Maps a certificate to a principal; `false` if there is no such
    /// principal, [`RegistryError::Conflict`] if the certificate is taken.
    fn bind_certificate(&self, principal: &str, cert_sha256: &[u8]) -> Result<bool, RegistryError>;
    /// Inserts a warrant and its targets atomically.
    fn insert_warrant(
        &self,
        warrant: &Warrant,
        targets: &[StoredTarget],
        at: DateTime<Utc>,
    ) -> Result<(), RegistryError>;
    /// A warrant with its target kinds.
    fn warrant(&self, id: &str) -> Result<Option<Warrant>, RegistryError>;
    /// The warrant's targets as (kind, sealed value), in order.
    fn sealed_targets(&self, id: &str) -> Result<Vec<(IdentifierKind, Vec<u8>)>, RegistryError>;
    /// Records a decision on a registered warrant; `false` if it was not
    /// (or no longer) registered.
    fn decide_warrant(
        &self,
        id: &str,
        status: WarrantStatus,
        by: &str,
        reason: Option<&str>,
    ) -> Result<bool, RegistryError>;
    fn close_warrant(&self, id: &str) -> Result<(), RegistryError>;
    /// Warrants, optionally of one authority, newest first.
    fn list_warrants(&self, authority: Option<&str>) -> Result<Vec<Warrant>, RegistryError>;
}
