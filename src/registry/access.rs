//! What the registry keeps for lawful access: authorities, principals with
//! their roles, and warrants, behind [`AccessRegistry`].

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::{AuditHook, NamedKeys, RegistryError, StoredTarget};
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

/// A credential holder: one person (or system) acting in some roles. A
/// person may hold several principals (one per authority they handle for,
/// say); the four-eyes rule and the separation of duties look at the
/// person, not at the principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub name: String,
    /// The person the principal belongs to (an employee or system id).
    pub person: String,
    pub roles: BTreeSet<Role>,
    /// The authority a handler acts for.
    pub authority: Option<String>,
    /// When its credentials stop working, if they expire.
    pub expires_at: Option<TimestampMicros>,
    /// Revoked principals never authenticate again.
    pub revoked: bool,
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
    /// Whether the warrant grants cell dumps: every record in its cell
    /// targets' areas (which needs the location category too).
    pub cell_dump: bool,
    pub valid_until: TimestampMicros,
    pub status: WarrantStatus,
    pub registered_by: String,
    /// The person behind `registered_by`, for the four-eyes rule.
    pub registered_by_person: String,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
}

/// How a principal is looked up.
#[derive(Debug, Clone, Copy)]
pub enum PrincipalKey<'a> {
    Id(&'a str),
    TokenSha256(&'a [u8]),
    CertificateSha256(&'a [u8]),
}

/// A principal to insert, with the SHA-256 of its bearer token and, for
/// mTLS, of its client certificate.
#[derive(Debug)]
pub struct NewPrincipalRow<'a> {
    pub principal: &'a Principal,
    pub token_sha256: &'a [u8],
    pub certificate_sha256: Option<&'a [u8]>,
}

/// Where authorities, principals and warrants live. The rules are in
/// [`crate::access`]; a backend only stores. SQLite by default
/// ([`super::sqlite::SqliteRegistry`]); PostgreSQL when instances share a
/// registry.
pub trait AccessRegistry: Send + Sync {
    /// Inserts an authority; `false` if the id is taken.
    fn insert_authority(
        &self,
        id: &str,
        country: &str,
        name: &str,
        at: DateTime<Utc>,
        audit: AuditHook<'_>,
    ) -> Result<bool, RegistryError>;
    fn authority_country(&self, id: &str) -> Result<Option<String>, RegistryError>;
    fn principal_count(&self) -> Result<u64, RegistryError>;
    /// Inserts a principal with its token and certificate digests, in one
    /// transaction; [`RegistryError::Conflict`] if the id, token or
    /// certificate is taken.
    fn insert_principal(
        &self,
        new: NewPrincipalRow<'_>,
        at: DateTime<Utc>,
        audit: AuditHook<'_>,
    ) -> Result<(), RegistryError>;
    fn find_principal(&self, key: PrincipalKey<'_>) -> Result<Option<Principal>, RegistryError>;
    /// Every principal of a person, revoked ones included.
    fn principals_of_person(&self, person: &str) -> Result<Vec<Principal>, RegistryError>;
    /// How many live (unrevoked) principals hold `role`.
    fn live_principals_with(&self, role: Role) -> Result<usize, RegistryError>;
    /// Revokes a principal; `false` if there is no such principal or it is
    /// already revoked.
    fn revoke_principal(&self, id: &str, at: DateTime<Utc>, audit: AuditHook<'_>) -> Result<bool, RegistryError>;
    /// Replaces a live principal's token digest; returns the digest it
    /// replaced, or `None` if there is no such live principal. `replaced`
    /// is told the digest it replaces inside the change's transaction,
    /// before the audit hook runs (which can then act on it before the
    /// commit).
    fn replace_token(
        &self,
        id: &str,
        token_sha256: &[u8],
        replaced: &mut dyn FnMut(&[u8]),
        audit: AuditHook<'_>,
    ) -> Result<Option<Vec<u8>>, RegistryError>;
    /// Inserts a warrant and its targets in one transaction.
    fn insert_warrant(
        &self,
        warrant: &Warrant,
        targets: &[StoredTarget],
        at: DateTime<Utc>,
        audit: AuditHook<'_>,
    ) -> Result<(), RegistryError>;
    /// A warrant with its target kinds.
    fn warrant(&self, id: &str) -> Result<Option<Warrant>, RegistryError>;
    /// Every warrant's id, closed ones too, from the rows whose seals hold;
    /// the others are reported, not counted.
    fn warrant_ids(&self) -> Result<NamedKeys, RegistryError>;
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
        audit: AuditHook<'_>,
    ) -> Result<bool, RegistryError>;
    /// Closes a warrant and forgets its targets' tokens; `false` if it was
    /// already closed.
    fn close_warrant(&self, id: &str, audit: AuditHook<'_>) -> Result<bool, RegistryError>;
    /// Warrants, optionally of one authority, newest first: at most
    /// `limit`, those listed after the warrant `after` (the last of the
    /// page before; none if it does not exist).
    fn list_warrants(
        &self,
        authority: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Warrant>, RegistryError>;
}
