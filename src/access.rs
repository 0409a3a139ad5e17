//! Who may do what in lawful access: principals and their roles, the
//! authorities they act for, warrants and their four-eyes review, and the
//! scope check every request must pass before any data is looked up.
//!
//! This is the domain core of the lawful-access service; the gRPC API and the
//! lookup engine stand on it. It owns these rules and must never bend them:
//!
//! - a bearer token is shown once, at creation; only its SHA-256 is stored;
//! - a warrant is approved by a legal reviewer other than its registrar;
//! - a request is executed only under an approved, unexpired warrant of the
//!   requesting handler's own authority, with targets, window and categories
//!   inside the warrant's;
//! - warrant targets are stored sealed (and tokenised for lookups), never in
//!   clear; closing a warrant destroys its key and so its targets.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

use crate::keys::{KeyError, KeyStore, RecordKeyScope};
use crate::models::{Category, IdentifierKind, TimestampMicros};
use crate::orders::{TargetInput, canonical_value};
use crate::pseudonymise::Tokeniser;
use crate::registry::RegistryError;
use crate::registry::sqlite::SqliteRegistry;

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

pub fn category_name(category: Category) -> &'static str {
    match category {
        Category::Traffic => "traffic",
        Category::Location => "location",
        Category::Device => "device",
        Category::Ip => "ip",
    }
}

pub fn parse_category(text: &str) -> Option<Category> {
    Category::ALL.into_iter().find(|c| category_name(*c) == text)
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

/// A bearer token, shown once. `Debug` never prints it.
pub struct BearerToken(String);

impl BearerToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
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

    pub(crate) fn parse(text: &str) -> WarrantStatus {
        match text {
            "approved" => WarrantStatus::Approved,
            "rejected" => WarrantStatus::Rejected,
            "closed" => WarrantStatus::Closed,
            _ => WarrantStatus::Registered,
        }
    }
}

/// A warrant to register.
#[derive(Debug)]
pub struct NewWarrant {
    pub authority: String,
    pub reference: String,
    pub issued_by: String,
    pub legal_basis: String,
    pub targets: Vec<TargetInput>,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub categories: BTreeSet<Category>,
    pub valid_until: DateTime<Utc>,
}

/// A registered warrant. Target values are not here: only their kinds and,
/// via [`AccessStore::warrant_targets`], the unsealed values for a check.
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

/// The scope a request asks for.
#[derive(Debug)]
pub struct RequestScope {
    pub targets: Vec<TargetInput>,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub categories: BTreeSet<Category>,
}

/// Why something was refused. Precise, so that the handler can correct the
/// request, and free of any target value, so that it can be audited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the principal lacks the role {0}")]
    MissingRole(&'static str),
    #[error("the warrant belongs to another authority")]
    OtherAuthority,
    #[error("no such warrant")]
    UnknownWarrant,
    #[error("the warrant is {0}, not approved")]
    NotApproved(&'static str),
    #[error("the warrant expired")]
    WarrantExpired,
    #[error("a warrant cannot be approved or rejected by the principal who registered it")]
    SelfApproval,
    #[error("the warrant was already decided")]
    AlreadyDecided,
    #[error("target {0} is not among the warrant's targets")]
    TargetOutOfScope(usize),
    #[error("target {0} is malformed")]
    MalformedTarget(usize),
    #[error("the window is not inside the warrant's period")]
    WindowOutOfScope,
    #[error("the window ends before it starts")]
    EmptyWindow,
    #[error("category {0} is not allowed by the warrant")]
    CategoryOutOfScope(&'static str),
    #[error("the request names no target or no category")]
    EmptyScope,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("authority {0} already exists or is malformed")]
    BadAuthority(String),
    #[error("the warrant's targets cannot be unsealed (its key is gone)")]
    Sealing,
    #[error("the certificate digest is malformed, taken, or the principal unknown")]
    BadCertificate,
}

/// How a principal is looked up.
#[derive(Debug, Clone, Copy)]
pub enum PrincipalKey<'a> {
    TokenSha256(&'a [u8]),
    CertificateSha256(&'a [u8]),
}

/// A warrant target as stored: its kind, its sealed value, and its token
/// under each token key id.
#[derive(Clone)]
pub struct StoredTarget {
    pub kind: IdentifierKind,
    pub sealed: Vec<u8>,
    pub tokens: Vec<(String, i64)>,
}

/// Where authorities, principals and warrants live. The rules are in
/// [`AccessStore`]; a backend only stores. SQLite by default
/// ([`SqliteRegistry`]); PostgreSQL when instances share a registry.
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
    fn sealed_targets(&self, id: &str) -> Result<Vec<(String, Vec<u8>)>, RegistryError>;
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

/// The lawful-access rules over a registry.
pub struct AccessStore {
    registry: Arc<dyn AccessRegistry>,
    rng: SystemRandom,
}

impl fmt::Debug for AccessStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessStore")
    }
}

fn token_hash(token: &str) -> Vec<u8> {
    digest(&SHA256, token.as_bytes()).as_ref().to_vec()
}

fn authority_id_valid(id: &str) -> bool {
    (2..=40).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl AccessStore {
    /// The rules over the embedded SQLite registry in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<AccessStore, AccessError> {
        crate::durable::create_dir_all(state_dir).map_err(KeyError::from)?;
        Ok(AccessStore::with_registry(Arc::new(SqliteRegistry::open(state_dir)?)))
    }

    /// The rules over any registry backend.
    pub fn with_registry(registry: Arc<dyn AccessRegistry>) -> AccessStore {
        AccessStore { registry, rng: SystemRandom::new() }
    }

    fn random_hex(&self, bytes: usize) -> Result<String, AccessError> {
        let mut buffer = vec![0u8; bytes];
        self.rng.fill(&mut buffer).map_err(|_| KeyError::Random)?;
        Ok(hex::encode(buffer))
    }

    /// Registers an authority. `by` must be an admin.
    pub fn create_authority(
        &self,
        by: &Principal,
        id: &str,
        country: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<(), AccessError> {
        require(by, Role::Admin)?;
        if !authority_id_valid(id) || country.len() != 2 {
            return Err(AccessError::BadAuthority(id.to_string()));
        }
        if !self.registry.insert_authority(id, &country.to_ascii_uppercase(), name, now)? {
            return Err(AccessError::BadAuthority(id.to_string()));
        }
        Ok(())
    }

    /// The authority's country code, if it exists.
    pub fn authority_country(&self, id: &str) -> Result<Option<String>, AccessError> {
        Ok(self.registry.authority_country(id)?)
    }

    /// Creates a principal and its bearer token, shown only now. The first
    /// principal (the bootstrap admin) needs no creator; every later one is
    /// created by an admin.
    pub fn create_principal(
        &self,
        by: Option<&Principal>,
        name: &str,
        roles: BTreeSet<Role>,
        authority: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(Principal, BearerToken), AccessError> {
        let existing = self.registry.principal_count()?;
        match by {
            Some(admin) => require(admin, Role::Admin)?,
            None if existing == 0 => {}
            None => return Err(Refusal::MissingRole(Role::Admin.as_str()).into()),
        }
        if let Some(authority) = authority
            && self.authority_country(authority)?.is_none()
        {
            return Err(AccessError::BadAuthority(authority.to_string()));
        }
        let id = format!("p-{}", self.random_hex(6)?);
        let token = BearerToken(format!("cdv_{}", self.random_hex(32)?));
        let principal = Principal { id, name: name.to_string(), roles, authority: authority.map(str::to_string) };
        self.registry.insert_principal(&principal, &token_hash(token.expose()), now)?;
        Ok((principal, token))
    }

    /// The principal holding `token`, if any.
    pub fn authenticate(&self, token: &str) -> Result<Option<Principal>, AccessError> {
        Ok(self.registry.find_principal(PrincipalKey::TokenSha256(&token_hash(token)))?)
    }

    /// Maps a client certificate (SHA-256 of its DER) to a principal, so that
    /// mTLS authenticates it. Admins only; a certificate maps to one
    /// principal.
    pub fn bind_certificate(&self, by: &Principal, principal: &str, cert_sha256: &[u8]) -> Result<(), AccessError> {
        require(by, Role::Admin)?;
        if cert_sha256.len() != 32 {
            return Err(AccessError::BadCertificate);
        }
        if !self.registry.bind_certificate(principal, cert_sha256)? {
            return Err(AccessError::BadCertificate);
        }
        Ok(())
    }

    /// The principal a client certificate is mapped to, if any.
    pub fn authenticate_certificate(&self, cert_sha256: &[u8]) -> Result<Option<Principal>, AccessError> {
        Ok(self.registry.find_principal(PrincipalKey::CertificateSha256(cert_sha256))?)
    }

    /// Registers a warrant (legal reviewers only). Targets are sealed under
    /// the warrant's own key and tokenised under every token key.
    pub fn register_warrant(
        &self,
        by: &Principal,
        warrant: NewWarrant,
        keys: &KeyStore,
        now: DateTime<Utc>,
    ) -> Result<Warrant, AccessError> {
        require(by, Role::LegalReviewer)?;
        if warrant.targets.is_empty() || warrant.categories.is_empty() {
            return Err(Refusal::EmptyScope.into());
        }
        if warrant.period_end < warrant.period_start {
            return Err(Refusal::EmptyWindow.into());
        }
        if self.authority_country(&warrant.authority)?.is_none() {
            return Err(AccessError::BadAuthority(warrant.authority));
        }
        let mut canonical = Vec::new();
        for (position, target) in warrant.targets.iter().enumerate() {
            canonical.push((
                target.kind,
                canonical_value(target.kind, &target.value).ok_or(Refusal::MalformedTarget(position + 1))?,
            ));
        }
        let id = format!("w-{}", self.random_hex(6)?);
        let (_, key) = keys.create_record_key(RecordKeyScope::Warrant, &id)?;
        let mut targets = Vec::with_capacity(canonical.len());
        for (kind, value) in &canonical {
            targets.push(StoredTarget {
                kind: *kind,
                sealed: crate::keys::seal_value(&key, &self.rng, id.as_bytes(), value)?,
                tokens: keys
                    .token_keys()
                    .iter()
                    .map(|k| (k.id.as_str().to_string(), Tokeniser::new(k).token(*kind, value.as_bytes()).0))
                    .collect(),
            });
        }
        let stored = Warrant {
            id: id.clone(),
            authority: warrant.authority,
            reference: warrant.reference,
            issued_by: warrant.issued_by,
            legal_basis: warrant.legal_basis,
            target_kinds: canonical.iter().map(|(k, _)| *k).collect(),
            period_start: TimestampMicros::from_datetime(warrant.period_start),
            period_end: TimestampMicros::from_datetime(warrant.period_end),
            categories: warrant.categories,
            valid_until: TimestampMicros::from_datetime(warrant.valid_until),
            status: WarrantStatus::Registered,
            registered_by: by.id.clone(),
            decided_by: None,
            decision_reason: None,
        };
        self.registry.insert_warrant(&stored, &targets, now)?;
        self.warrant(&id)?.ok_or(AccessError::Refused(Refusal::UnknownWarrant))
    }

    /// Approves or rejects a registered warrant: four eyes, so never by its
    /// registrar.
    pub fn decide_warrant(&self, by: &Principal, id: &str, decision: Decision) -> Result<Warrant, AccessError> {
        require(by, Role::LegalReviewer)?;
        let warrant = self.warrant(id)?.ok_or(Refusal::UnknownWarrant)?;
        if warrant.registered_by == by.id {
            return Err(Refusal::SelfApproval.into());
        }
        if warrant.status != WarrantStatus::Registered {
            return Err(Refusal::AlreadyDecided.into());
        }
        let (status, reason) = match decision {
            Decision::Approve => (WarrantStatus::Approved, None),
            Decision::Reject(reason) => (WarrantStatus::Rejected, Some(reason)),
        };
        if !self.registry.decide_warrant(id, status, &by.id, reason.as_deref())? {
            return Err(Refusal::AlreadyDecided.into());
        }
        self.warrant(id)?.ok_or(AccessError::Refused(Refusal::UnknownWarrant))
    }

    /// Closes a warrant and destroys its key: its targets become unreadable.
    pub fn close_warrant(&self, by: &Principal, id: &str, keys: &KeyStore) -> Result<(), AccessError> {
        require(by, Role::LegalReviewer)?;
        self.warrant(id)?.ok_or(Refusal::UnknownWarrant)?;
        self.registry.close_warrant(id)?;
        keys.destroy_record_key(RecordKeyScope::Warrant, id)?;
        Ok(())
    }

    pub fn warrant(&self, id: &str) -> Result<Option<Warrant>, AccessError> {
        Ok(self.registry.warrant(id)?)
    }

    /// The warrants `by` may see: all for reviewers and auditors, its own
    /// authority's for a handler.
    pub fn list_warrants(&self, by: &Principal, authority: Option<&str>) -> Result<Vec<Warrant>, AccessError> {
        if by.has(Role::LegalReviewer) || by.has(Role::Auditor) {
            return Ok(self.registry.list_warrants(authority)?);
        }
        require(by, Role::AuthorityHandler)?;
        match (&by.authority, authority) {
            (Some(own), None) => Ok(self.registry.list_warrants(Some(own))?),
            (Some(own), Some(asked)) if own == asked => Ok(self.registry.list_warrants(Some(own))?),
            _ => Ok(Vec::new()),
        }
    }

    /// The warrant's targets, unsealed with its key: for scope checks and
    /// match confirmation only, never for display.
    pub fn warrant_targets(&self, id: &str, keys: &KeyStore) -> Result<Vec<(IdentifierKind, String)>, AccessError> {
        let (_, key) = keys.record_key(RecordKeyScope::Warrant, id)?.ok_or(AccessError::Sealing)?;
        let mut targets = Vec::new();
        for (kind, sealed) in self.registry.sealed_targets(id)? {
            let kind = IdentifierKind::parse(&kind).ok_or(AccessError::Sealing)?;
            let value = crate::keys::open_value(&key, id.as_bytes(), &sealed).ok_or(AccessError::Sealing)?;
            targets.push((kind, value));
        }
        Ok(targets)
    }

    /// The scope check of a request: run before any lookup, and its refusal
    /// is what gets audited.
    pub fn check_request(
        &self,
        by: &Principal,
        warrant_id: &str,
        scope: &RequestScope,
        keys: &KeyStore,
        now: DateTime<Utc>,
    ) -> Result<Warrant, AccessError> {
        require(by, Role::AuthorityHandler)?;
        let warrant = self.warrant(warrant_id)?.ok_or(Refusal::UnknownWarrant)?;
        if by.authority.as_deref() != Some(warrant.authority.as_str()) {
            // Indistinguishable from an unknown warrant to the requester in
            // the API; precise here, for the audit trail.
            return Err(Refusal::OtherAuthority.into());
        }
        if warrant.status != WarrantStatus::Approved {
            return Err(Refusal::NotApproved(warrant.status.as_str()).into());
        }
        if now.timestamp_micros() > warrant.valid_until.0 {
            return Err(Refusal::WarrantExpired.into());
        }
        if scope.targets.is_empty() || scope.categories.is_empty() {
            return Err(Refusal::EmptyScope.into());
        }
        if scope.window_end < scope.window_start {
            return Err(Refusal::EmptyWindow.into());
        }
        if scope.window_start.timestamp_micros() < warrant.period_start.0
            || scope.window_end.timestamp_micros() > warrant.period_end.0
        {
            return Err(Refusal::WindowOutOfScope.into());
        }
        if let Some(category) = scope.categories.iter().find(|c| !warrant.categories.contains(c)) {
            return Err(Refusal::CategoryOutOfScope(category_name(*category)).into());
        }
        let allowed = self.warrant_targets(warrant_id, keys)?;
        for (position, target) in scope.targets.iter().enumerate() {
            let value = canonical_value(target.kind, &target.value).ok_or(Refusal::MalformedTarget(position + 1))?;
            if !allowed.iter().any(|(kind, v)| *kind == target.kind && *v == value) {
                return Err(Refusal::TargetOutOfScope(position + 1).into());
            }
        }
        Ok(warrant)
    }
}

/// A legal reviewer's decision on a registered warrant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject(String),
}

fn require(principal: &Principal, role: Role) -> Result<(), Refusal> {
    if principal.has(role) { Ok(()) } else { Err(Refusal::MissingRole(role.as_str())) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    struct Fixture {
        _root: tempfile::TempDir,
        store: AccessStore,
        keys: KeyStore,
        admin: Principal,
        alice: Principal,
        bob: Principal,
        handler: Principal,
        other_handler: Principal,
        now: DateTime<Utc>,
    }

    fn fixture() -> Fixture {
        let root = tempfile::tempdir().unwrap();
        KeyStore::init(&root.path().join("keys"), None).unwrap();
        let keys = KeyStore::open(&root.path().join("keys"), None).unwrap();
        let store = AccessStore::open(&root.path().join("state")).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap();
        let (admin, _) = store.create_principal(None, "root", [Role::Admin].into(), None, now).unwrap();
        store.create_authority(&admin, "dk-politi", "dk", "Danish National Police", now).unwrap();
        store.create_authority(&admin, "se-polisen", "se", "Swedish Police", now).unwrap();
        let reviewer =
            |name| store.create_principal(Some(&admin), name, [Role::LegalReviewer].into(), None, now).unwrap().0;
        let (alice, bob) = (reviewer("alice"), reviewer("bob"));
        let handler = store
            .create_principal(Some(&admin), "dk handler", [Role::AuthorityHandler].into(), Some("dk-politi"), now)
            .unwrap()
            .0;
        let other_handler = store
            .create_principal(Some(&admin), "se handler", [Role::AuthorityHandler].into(), Some("se-polisen"), now)
            .unwrap()
            .0;
        Fixture { _root: root, store, keys, admin, alice, bob, handler, other_handler, now }
    }

    fn new_warrant(f: &Fixture) -> NewWarrant {
        NewWarrant {
            authority: "dk-politi".into(),
            reference: "KBH-2026-0042".into(),
            issued_by: "Københavns Byret".into(),
            legal_basis: "retsplejeloven § 780".into(),
            targets: vec![
                TargetInput::parse("msisdn:+4520000001", 1).unwrap(),
                TargetInput::parse("imsi:238011234567890", 2).unwrap(),
            ],
            period_start: f.now - chrono::Duration::days(90),
            period_end: f.now,
            categories: [Category::Traffic, Category::Location].into(),
            valid_until: f.now + chrono::Duration::days(30),
        }
    }

    fn scope(f: &Fixture, target: &str) -> RequestScope {
        RequestScope {
            targets: vec![TargetInput::parse(target, 1).unwrap()],
            window_start: f.now - chrono::Duration::days(10),
            window_end: f.now - chrono::Duration::days(1),
            categories: [Category::Traffic].into(),
        }
    }

    #[test]
    fn tokens_are_shown_once_and_stored_hashed() {
        let f = fixture();
        let (principal, token) =
            f.store.create_principal(Some(&f.admin), "carol", [Role::Auditor].into(), None, f.now).unwrap();
        assert_eq!(f.store.authenticate(token.expose()).unwrap(), Some(principal));
        assert_eq!(f.store.authenticate("cdv_0000").unwrap(), None);
        assert!(!format!("{token:?}").contains(token.expose()));
        assert!(
            matches!(
                f.store.create_principal(None, "intruder", [Role::Admin].into(), None, f.now),
                Err(AccessError::Refused(Refusal::MissingRole("admin")))
            ),
            "only the very first principal needs no admin"
        );
    }

    #[test]
    fn warrants_need_a_second_reviewer() {
        let f = fixture();
        let warrant = f.store.register_warrant(&f.alice, new_warrant(&f), &f.keys, f.now).unwrap();
        assert_eq!(warrant.status, WarrantStatus::Registered);
        assert_eq!(warrant.target_kinds, vec![IdentifierKind::Msisdn, IdentifierKind::Imsi]);
        assert!(matches!(
            f.store.decide_warrant(&f.alice, &warrant.id, Decision::Approve),
            Err(AccessError::Refused(Refusal::SelfApproval))
        ));
        assert!(matches!(
            f.store.decide_warrant(&f.handler, &warrant.id, Decision::Approve),
            Err(AccessError::Refused(Refusal::MissingRole(_)))
        ));
        let approved = f.store.decide_warrant(&f.bob, &warrant.id, Decision::Approve).unwrap();
        assert_eq!(approved.status, WarrantStatus::Approved);
        assert_eq!(approved.decided_by.as_deref(), Some(f.bob.id.as_str()));
        assert!(matches!(
            f.store.decide_warrant(&f.bob, &warrant.id, Decision::Reject("late".into())),
            Err(AccessError::Refused(Refusal::AlreadyDecided))
        ));
    }

    #[test]
    fn requests_stay_inside_the_warrant() {
        let f = fixture();
        let warrant = f.store.register_warrant(&f.alice, new_warrant(&f), &f.keys, f.now).unwrap();
        let check = |by: &Principal, scope: &RequestScope, at: DateTime<Utc>| {
            f.store.check_request(by, &warrant.id, scope, &f.keys, at)
        };
        let refused = |result: Result<Warrant, AccessError>| match result {
            Err(AccessError::Refused(r)) => r,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(
            refused(check(&f.handler, &scope(&f, "msisdn:+4520000001"), f.now)),
            Refusal::NotApproved("registered")
        );
        f.store.decide_warrant(&f.bob, &warrant.id, Decision::Approve).unwrap();

        // In scope, with the number written another way.
        assert!(check(&f.handler, &scope(&f, "msisdn:0045 2000 0001"), f.now).is_ok());
        assert_eq!(refused(check(&f.other_handler, &scope(&f, "msisdn:+4520000001"), f.now)), Refusal::OtherAuthority);
        assert_eq!(
            refused(check(&f.alice, &scope(&f, "msisdn:+4520000001"), f.now)),
            Refusal::MissingRole("authority_handler")
        );
        assert_eq!(refused(check(&f.handler, &scope(&f, "msisdn:+4520000002"), f.now)), Refusal::TargetOutOfScope(1));
        assert_eq!(refused(check(&f.handler, &scope(&f, "imei:352099001761481"), f.now)), Refusal::TargetOutOfScope(1));
        assert_eq!(refused(check(&f.handler, &scope(&f, "msisdn:12"), f.now)), Refusal::MalformedTarget(1));
        let mut wide = scope(&f, "msisdn:+4520000001");
        wide.window_start = f.now - chrono::Duration::days(120);
        assert_eq!(refused(check(&f.handler, &wide, f.now)), Refusal::WindowOutOfScope);
        let mut device = scope(&f, "imsi:238011234567890");
        device.categories = [Category::Device].into();
        assert_eq!(refused(check(&f.handler, &device, f.now)), Refusal::CategoryOutOfScope("device"));
        assert_eq!(
            refused(check(&f.handler, &scope(&f, "msisdn:+4520000001"), f.now + chrono::Duration::days(31))),
            Refusal::WarrantExpired
        );

        // Closing destroys the warrant's key: its targets are gone.
        f.store.close_warrant(&f.alice, &warrant.id, &f.keys).unwrap();
        assert!(matches!(f.store.warrant_targets(&warrant.id, &f.keys), Err(AccessError::Sealing)));
        assert_eq!(refused(check(&f.handler, &scope(&f, "msisdn:+4520000001"), f.now)), Refusal::NotApproved("closed"));
    }

    #[test]
    fn warrant_targets_are_not_stored_in_clear() {
        let f = fixture();
        f.store.register_warrant(&f.alice, new_warrant(&f), &f.keys, f.now).unwrap();
        let state = f._root.path().join("state");
        for file in ["registry.sqlite", "registry.sqlite-wal"] {
            let bytes = std::fs::read(state.join(file)).unwrap_or_default();
            assert!(!bytes.windows(10).any(|w| w == b"4520000001"), "{file}");
            assert!(!bytes.windows(15).any(|w| w == b"238011234567890"), "{file}");
        }
    }
}
