//! Warrants: registered by one legal reviewer, approved or rejected by
//! another, closed when the investigation ends; and the scope check every
//! request passes before any data is looked up.
//!
//! Warrant targets are stored sealed under the warrant's own key (and
//! tokenised for lookups), never in clear; closing a warrant destroys its
//! key and so its targets. A request is executed only under an approved,
//! unexpired warrant of the requesting handler's own authority, with
//! targets, window and categories inside the warrant's.
//!
//! A cell target asks for a cell dump: every communication in the cell,
//! which is location data of everyone there. It needs a warrant that
//! grants cell dumps explicitly and the location category, and a request
//! that asks for the location category.
//!
//! Every change commits together with its audit entry.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::authz::{self, Action, Listing};
use super::desk::{Call, Desk};
use super::input;
use super::refusal::{AccessError, Refusal};
use super::store::AccessStore;
use crate::audit::AuditEvent;
use crate::keys::{self, KeyStore, RecordKeyScope};
use crate::model::{Category, IdentifierKind, TimestampMicros};
use crate::privacy::target::TargetInput;
use crate::registry::{AuditHook, KeptResults, Principal, StoredTarget, Warrant, WarrantStatus};

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
    /// Whether cell targets (cell dumps) are granted.
    pub cell_dump: bool,
    pub valid_until: DateTime<Utc>,
}

impl NewWarrant {
    /// A cell target needs the cell-dump grant and the location category.
    fn check_cell_dump(&self) -> Result<(), Refusal> {
        let has_cell = self.targets.iter().any(|t| t.kind == IdentifierKind::Cell);
        if has_cell && !(self.cell_dump && self.categories.contains(&Category::Location)) {
            return Err(Refusal::CellDumpNotGranted);
        }
        Ok(())
    }
}

/// A legal reviewer's decision on a registered warrant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject(String),
}

/// The scope a request asks for.
#[derive(Debug)]
pub struct RequestScope {
    pub targets: Vec<TargetInput>,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub categories: BTreeSet<Category>,
}

impl AccessStore {
    /// A new warrant's id.
    pub fn new_warrant_id(&self) -> Result<String, AccessError> {
        Ok(keys::new_record_id(&self.rng, "w")?)
    }

    /// Registers warrant `id` (legal reviewers only). Targets are sealed
    /// under the warrant's own key and tokenised under every token key.
    pub fn register_warrant(
        &self,
        by: &Principal,
        id: &str,
        warrant: NewWarrant,
        keys: &KeyStore,
        now: DateTime<Utc>,
        audit: AuditHook<'_>,
    ) -> Result<Warrant, AccessError> {
        authz::permit(by, Action::RegisterWarrant)?;
        if warrant.targets.is_empty() || warrant.categories.is_empty() {
            return Err(Refusal::EmptyScope.into());
        }
        warrant.check_cell_dump()?;
        if warrant.period_end < warrant.period_start {
            return Err(Refusal::EmptyWindow.into());
        }
        if self.authority_country(&warrant.authority)?.is_none() {
            return Err(Refusal::BadAuthority(warrant.authority).into());
        }
        let canonical = canonical_targets(&warrant.targets)?;
        let key = keys.create_record_key(RecordKeyScope::Warrant, id)?;
        let mut targets = Vec::with_capacity(canonical.len());
        for (kind, value) in &canonical {
            targets.push(StoredTarget {
                kind: *kind,
                sealed: keys::seal_value(&key.secret, &self.rng, id.as_bytes(), value)?,
            });
        }
        let stored = Warrant {
            id: id.to_string(),
            authority: warrant.authority,
            reference: warrant.reference,
            issued_by: warrant.issued_by,
            legal_basis: warrant.legal_basis,
            target_kinds: canonical.iter().map(|(k, _)| *k).collect(),
            period_start: TimestampMicros::from_datetime(warrant.period_start),
            period_end: TimestampMicros::from_datetime(warrant.period_end),
            categories: warrant.categories,
            cell_dump: warrant.cell_dump,
            valid_until: TimestampMicros::from_datetime(warrant.valid_until),
            status: WarrantStatus::Registered,
            registered_by: by.id.clone(),
            registered_by_person: by.person.clone(),
            decided_by: None,
            decision_reason: None,
        };
        if let Err(error) = self.registry.insert_warrant(&stored, &targets, now, audit) {
            // The warrant does not exist: its new key must not either. Best
            // effort; the insert's error is what the caller needs.
            let _ = keys.destroy_record_key(RecordKeyScope::Warrant, id);
            return Err(error.into());
        }
        self.warrant(id)?.ok_or(Refusal::UnknownWarrant.into())
    }

    /// Approves or rejects a registered warrant: four eyes, so never by its
    /// registrar.
    pub fn decide_warrant(
        &self,
        by: &Principal,
        id: &str,
        decision: &Decision,
        audit: AuditHook<'_>,
    ) -> Result<Warrant, AccessError> {
        authz::permit(by, Action::DecideWarrant)?;
        let warrant = self.warrant(id)?.ok_or(Refusal::UnknownWarrant)?;
        authz::may_decide(by, &warrant)?;
        if warrant.status != WarrantStatus::Registered {
            return Err(Refusal::AlreadyDecided.into());
        }
        let (status, reason) = match decision {
            Decision::Approve => (WarrantStatus::Approved, None),
            Decision::Reject(reason) => (WarrantStatus::Rejected, Some(reason.as_str())),
        };
        if !self.registry.decide_warrant(id, status, &by.id, reason, audit)? {
            return Err(Refusal::AlreadyDecided.into());
        }
        self.warrant(id)?.ok_or(Refusal::UnknownWarrant.into())
    }

    /// Closes a warrant and destroys its key: its targets become unreadable.
    /// Closing a closed warrant finishes what a crash may have left (the
    /// key), without a second entry.
    pub fn close_warrant(
        &self,
        by: &Principal,
        id: &str,
        keys: &KeyStore,
        audit: AuditHook<'_>,
    ) -> Result<(), AccessError> {
        authz::permit(by, Action::CloseWarrant)?;
        self.warrant(id)?.ok_or(Refusal::UnknownWarrant)?;
        self.registry.close_warrant(id, audit)?;
        keys.destroy_record_key(RecordKeyScope::Warrant, id)?;
        Ok(())
    }

    pub fn warrant(&self, id: &str) -> Result<Option<Warrant>, AccessError> {
        Ok(self.registry.warrant(id)?)
    }

    /// The warrants `by` may see ([`authz::warrant_listing`]), newest
    /// first: at most `limit`, after the warrant `after`.
    pub fn list_warrants(
        &self,
        by: &Principal,
        authority: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Warrant>, AccessError> {
        Ok(match authz::warrant_listing(by, authority)? {
            Listing::All(asked) => self.registry.list_warrants(asked, after, limit)?,
            Listing::Authority(own) => self.registry.list_warrants(Some(own), after, limit)?,
            Listing::Nothing => Vec::new(),
        })
    }

    /// The warrant's targets, unsealed with its key: for scope checks and
    /// match confirmation only, never for display.
    pub fn warrant_targets(&self, id: &str, keys: &KeyStore) -> Result<Vec<(IdentifierKind, String)>, AccessError> {
        let key = keys.record_key(RecordKeyScope::Warrant, id)?.ok_or(Refusal::WarrantClosed)?;
        let mut targets = Vec::new();
        for (kind, sealed) in self.registry.sealed_targets(id)? {
            let value = keys::open_value(&key.secret, id.as_bytes(), &sealed).ok_or(Refusal::WarrantClosed)?;
            targets.push((kind, value));
        }
        Ok(targets)
    }

    /// The scope check of a request: run before any lookup, and its refusal
    /// is what gets audited. Returns the warrant and the request's targets
    /// in canonical form.
    pub fn check_request(
        &self,
        by: &Principal,
        warrant_id: &str,
        scope: &RequestScope,
        keys: &KeyStore,
        now: DateTime<Utc>,
    ) -> Result<(Warrant, Vec<(IdentifierKind, String)>), AccessError> {
        authz::permit(by, Action::SubmitRequest)?;
        let warrant = self.warrant(warrant_id)?.ok_or(Refusal::UnknownWarrant)?;
        authz::may_request_under(by, &warrant)?;
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
            return Err(Refusal::CategoryOutOfScope(category.as_str()).into());
        }
        let cell_dump = scope.targets.iter().any(|t| t.kind == IdentifierKind::Cell);
        if cell_dump && !(warrant.cell_dump && scope.categories.contains(&Category::Location)) {
            return Err(Refusal::CellDumpNotGranted.into());
        }
        let allowed = self.warrant_targets(warrant_id, keys)?;
        let targets = canonical_targets(&scope.targets)?;
        for (position, (kind, value)) in targets.iter().enumerate() {
            if !allowed.iter().any(|(k, v)| k == kind && v == value) {
                return Err(Refusal::TargetOutOfScope(position + 1).into());
            }
        }
        Ok((warrant, targets))
    }
}

/// The canonical form of each target, or the position of the first that
/// is malformed.
fn canonical_targets(targets: &[TargetInput]) -> Result<Vec<(IdentifierKind, String)>, Refusal> {
    targets
        .iter()
        .enumerate()
        .map(|(position, t)| t.canonical().map(|v| (t.kind, v)).ok_or(Refusal::MalformedTarget(position + 1)))
        .collect()
}

impl Desk {
    /// Registers a warrant (legal reviewer), audited with its targets' kinds
    /// and tokens.
    pub fn register_warrant(&self, call: &mut Call, new: NewWarrant) -> Result<Warrant, AccessError> {
        let id = self.store.new_warrant_id()?;
        call.warrant = Some(id.clone());
        let canonical: Vec<(IdentifierKind, String)> =
            new.targets.iter().filter_map(|t| t.canonical().map(|v| (t.kind, v))).collect();
        let event = AuditEvent::WarrantRegistered {
            warrant: id.clone(),
            authority: new.authority.clone(),
            reference: new.reference.clone(),
            target_kinds: new.targets.iter().map(|t| t.kind.as_str().to_string()).collect(),
            target_refs: self.target_refs(&canonical),
            period_start: TimestampMicros::from_datetime(new.period_start).rfc3339(),
            period_end: TimestampMicros::from_datetime(new.period_end).rfc3339(),
            categories: new.categories.iter().map(|c| c.as_str().to_string()).collect(),
            cell_dump: new.cell_dump,
            valid_until: TimestampMicros::from_datetime(new.valid_until).rfc3339(),
        };
        let now = self.now();
        self.audited(&call.principal.id, event, |audit| {
            self.store.register_warrant(&call.principal, &id, new, &self.keys, now, audit)
        })
    }

    /// Approves or rejects a warrant (another legal reviewer), audited.
    pub fn decide_warrant(&self, call: &mut Call, id: &str, decision: Decision) -> Result<Warrant, AccessError> {
        call.warrant = Some(id.to_string());
        if let Decision::Reject(reason) = &decision
            && reason.trim().is_empty()
        {
            return Err(Refusal::ReasonRequired.into());
        }
        let (status, reason) = match &decision {
            Decision::Approve => (WarrantStatus::Approved, None),
            Decision::Reject(reason) => (WarrantStatus::Rejected, Some(reason.clone())),
        };
        let event =
            AuditEvent::WarrantDecided { warrant: id.to_string(), decision: status.as_str().to_string(), reason };
        self.audited(&call.principal.id, event, |audit| {
            self.store.decide_warrant(&call.principal, id, &decision, audit)
        })
    }

    /// Closes a warrant (legal reviewer), audited; its key goes, and the
    /// results of its requests with it, fetched or not.
    pub fn close_warrant(&self, call: &mut Call, id: &str) -> Result<Warrant, AccessError> {
        call.warrant = Some(id.to_string());
        let event = AuditEvent::WarrantClosed { warrant: id.to_string() };
        self.audited(&call.principal.id, event, |audit| {
            self.store.close_warrant(&call.principal, id, &self.keys, audit)
        })?;
        self.destroy_results(KeptResults::OfWarrant(id), "warrant closed")?;
        Ok(self.store.warrant(id)?.ok_or(Refusal::UnknownWarrant)?)
    }

    /// A warrant the caller may see.
    pub fn warrant(&self, call: &mut Call, id: &str) -> Result<Warrant, AccessError> {
        call.warrant = Some(id.to_string());
        authz::permit(&call.principal, Action::ReadWarrant)?;
        let warrant = self.store.warrant(id)?.ok_or(Refusal::UnknownWarrant)?;
        authz::may_see_warrant(&call.principal, &warrant)?;
        Ok(warrant)
    }

    /// A page of the warrants the caller may see, newest first, optionally
    /// of one authority: at most `page_size` ([`input::DEFAULT_PAGE`] for 0, at
    /// most [`input::MAX_PAGE`]), after the page `page_token` names (empty: the
    /// first). Years of warrants do not fit in one reply.
    pub fn list_warrants(
        &self,
        call: &mut Call,
        authority: Option<&str>,
        page_size: u32,
        page_token: &str,
    ) -> Result<WarrantPage, AccessError> {
        let limit = input::page_size(page_size);
        let after = input::page_after(page_token, parse_page_token)?;
        let warrants = self.store.list_warrants(&call.principal, authority, after.as_deref(), limit)?;
        let next_page_token = input::next_page_token(&warrants, limit, |last| hex::encode(&last.id));
        Ok(WarrantPage { warrants, next_page_token })
    }
}

/// One page of warrants, and the token of the next if there may be one.
#[derive(Debug)]
pub struct WarrantPage {
    pub warrants: Vec<Warrant>,
    pub next_page_token: Option<String>,
}

/// A page token of warrants: the id of the page's last warrant, in hex.
/// The caller's authority is applied again on every page.
fn parse_page_token(token: &str) -> Option<String> {
    String::from_utf8(hex::decode(token).ok()?).ok().filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::principals::NewPrincipal;
    use crate::registry::{Registries, Role};
    use chrono::TimeZone;

    struct Fixture {
        root: tempfile::TempDir,
        store: AccessStore,
        keys: KeyStore,
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
        let store = AccessStore::new(Registries::sqlite(&root.path().join("state"), &keys).unwrap().access);
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap();
        let admin = store.create_principal(None, &NewPrincipal::of("root", Role::Admin, None), now, &mut || Ok(()));
        let admin = admin.unwrap().0;
        store.create_authority(&admin, "dk-politi", "dk", "Danish National Police", now, &mut || Ok(())).unwrap();
        store.create_authority(&admin, "se-polisen", "se", "Swedish Police", now, &mut || Ok(())).unwrap();
        let person = |name: &str, role, authority: Option<&str>| {
            let new = NewPrincipal::of(name, role, authority);
            store.create_principal(Some(&admin), &new, now, &mut || Ok(())).unwrap().0
        };
        let (alice, bob) = (person("alice", Role::LegalReviewer, None), person("bob", Role::LegalReviewer, None));
        let handler = person("dk handler", Role::AuthorityHandler, Some("dk-politi"));
        let other_handler = person("se handler", Role::AuthorityHandler, Some("se-polisen"));
        Fixture { root, store, keys, alice, bob, handler, other_handler, now }
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
            cell_dump: false,
            valid_until: f.now + chrono::Duration::days(30),
        }
    }

    /// Registers the fixture's warrant by `by`, unaudited.
    fn register(f: &Fixture, by: &Principal, new: NewWarrant) -> Result<Warrant, AccessError> {
        let id = f.store.new_warrant_id()?;
        f.store.register_warrant(by, &id, new, &f.keys, f.now, &mut || Ok(()))
    }

    fn decide(f: &Fixture, by: &Principal, id: &str, decision: Decision) -> Result<Warrant, AccessError> {
        f.store.decide_warrant(by, id, &decision, &mut || Ok(()))
    }

    fn scope(f: &Fixture, target: &str) -> RequestScope {
        RequestScope {
            targets: vec![TargetInput::parse(target, 1).unwrap()],
            window_start: f.now - chrono::Duration::days(10),
            window_end: f.now - chrono::Duration::days(1),
            categories: [Category::Traffic].into(),
        }
    }

    fn refusal<T: std::fmt::Debug>(result: Result<T, AccessError>) -> Refusal {
        match result {
            Err(AccessError::Refused(r)) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn warrants_need_a_second_reviewer() {
        let f = fixture();
        let warrant = register(&f, &f.alice, new_warrant(&f)).unwrap();
        assert_eq!(warrant.status, WarrantStatus::Registered);
        assert_eq!(warrant.target_kinds, vec![IdentifierKind::Msisdn, IdentifierKind::Imsi]);
        assert_eq!(refusal(decide(&f, &f.alice, &warrant.id, Decision::Approve)), Refusal::SelfApproval);
        assert!(matches!(refusal(decide(&f, &f.handler, &warrant.id, Decision::Approve)), Refusal::MissingRole(_)));
        let approved = decide(&f, &f.bob, &warrant.id, Decision::Approve).unwrap();
        assert_eq!(approved.status, WarrantStatus::Approved);
        assert_eq!(approved.decided_by.as_deref(), Some(f.bob.id.as_str()));
        assert_eq!(refusal(decide(&f, &f.bob, &warrant.id, Decision::Reject("late".into()))), Refusal::AlreadyDecided);
    }

    #[test]
    fn requests_stay_inside_the_warrant() {
        let f = fixture();
        let warrant = register(&f, &f.alice, new_warrant(&f)).unwrap();
        let check = |by: &Principal, scope: &RequestScope, at: DateTime<Utc>| {
            f.store.check_request(by, &warrant.id, scope, &f.keys, at)
        };
        assert_eq!(
            refusal(check(&f.handler, &scope(&f, "msisdn:+4520000001"), f.now)),
            Refusal::NotApproved("registered")
        );
        decide(&f, &f.bob, &warrant.id, Decision::Approve).unwrap();

        // In scope, with the number written another way.
        let (_, targets) = check(&f.handler, &scope(&f, "msisdn:0045 2000 0001"), f.now).unwrap();
        assert_eq!(targets, vec![(IdentifierKind::Msisdn, "+4520000001".to_string())]);
        assert_eq!(refusal(check(&f.other_handler, &scope(&f, "msisdn:+4520000001"), f.now)), Refusal::OtherAuthority);
        assert!(matches!(refusal(check(&f.alice, &scope(&f, "msisdn:+4520000001"), f.now)), Refusal::MissingRole(_)));
        assert_eq!(refusal(check(&f.handler, &scope(&f, "msisdn:+4520000002"), f.now)), Refusal::TargetOutOfScope(1));
        assert_eq!(refusal(check(&f.handler, &scope(&f, "imei:352099001761481"), f.now)), Refusal::TargetOutOfScope(1));
        assert_eq!(refusal(check(&f.handler, &scope(&f, "msisdn:12"), f.now)), Refusal::MalformedTarget(1));
        let mut wide = scope(&f, "msisdn:+4520000001");
        wide.window_start = f.now - chrono::Duration::days(120);
        assert_eq!(refusal(check(&f.handler, &wide, f.now)), Refusal::WindowOutOfScope);
        let mut device = scope(&f, "imsi:238011234567890");
        device.categories = [Category::Device].into();
        assert_eq!(refusal(check(&f.handler, &device, f.now)), Refusal::CategoryOutOfScope("device"));
        assert_eq!(
            refusal(check(&f.handler, &scope(&f, "msisdn:+4520000001"), f.now + chrono::Duration::days(31))),
            Refusal::WarrantExpired
        );

        // Closing destroys the warrant's key: its targets are gone.
        f.store.close_warrant(&f.alice, &warrant.id, &f.keys, &mut || Ok(())).unwrap();
        assert_eq!(refusal(f.store.warrant_targets(&warrant.id, &f.keys)), Refusal::WarrantClosed);
        assert_eq!(refusal(check(&f.handler, &scope(&f, "msisdn:+4520000001"), f.now)), Refusal::NotApproved("closed"));
    }

    #[test]
    fn warrant_targets_are_not_stored_in_clear() {
        let f = fixture();
        register(&f, &f.alice, new_warrant(&f)).unwrap();
        let state = f.root.path().join("state");
        for file in ["registry.sqlite", "registry.sqlite-wal"] {
            let bytes = std::fs::read(state.join(file)).unwrap_or_default();
            assert!(!bytes.windows(10).any(|w| w == b"4520000001"), "{file}");
            assert!(!bytes.windows(15).any(|w| w == b"238011234567890"), "{file}");
        }
    }
}
