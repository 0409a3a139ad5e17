//! Authorities and principals: who exists, and how a caller proves who it
//! is. A bearer token is shown once, at creation or rotation, and only its
//! SHA-256 is stored; a client certificate authenticates the principal its
//! SHA-256 is mapped to. A principal belongs to a person; the roles a
//! person may hold together are [`authz::compatible_roles`]'s to decide.
//! Credentials stop working when revoked or past their expiry.
//!
//! Every change commits together with its audit entry ([`AuditHook`]).

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use ring::digest::{SHA256, digest};

use super::authz::{self, Action};
use super::desk::{Call, Credentials, Desk};
use super::refusal::{AccessError, AuthFailure, Refusal};
use super::store::AccessStore;
use crate::audit::{AuditEvent, AuditTrail};
use crate::keys;
use crate::model::TimestampMicros;
use crate::registry::{AuditHook, Audited, NewPrincipalRow, Principal, PrincipalKey, Role, with_audit};

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

fn token_hash(token: &str) -> Vec<u8> {
    digest(&SHA256, token.as_bytes()).as_ref().to_vec()
}

fn authority_id_valid(id: &str) -> bool {
    (2..=40).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl AccessStore {
    /// Registers an authority. `by` must be an admin.
    pub fn create_authority(
        &self,
        by: &Principal,
        id: &str,
        country: &str,
        name: &str,
        now: DateTime<Utc>,
        audit: AuditHook<'_>,
    ) -> Result<(), AccessError> {
        authz::permit(by, Action::CreateAuthority)?;
        if !authority_id_valid(id) || country.len() != 2 {
            return Err(Refusal::BadAuthority(id.to_string()).into());
        }
        if !self.registry.insert_authority(id, &country.to_ascii_uppercase(), name, now, audit)? {
            return Err(Refusal::BadAuthority(id.to_string()).into());
        }
        Ok(())
    }

    /// The authority's country code, if it exists.
    pub fn authority_country(&self, id: &str) -> Result<Option<String>, AccessError> {
        Ok(self.registry.authority_country(id)?)
    }

    /// A principal as `by` asks for it, checked but not yet stored, with
    /// its bearer token. The first principal (the bootstrap admin) needs no
    /// creator; every later one is created by an admin. Its roles must be
    /// compatible with each other and with those of the person's other live
    /// principals.
    pub fn prepare_principal(
        &self,
        by: Option<&Principal>,
        new: &NewPrincipal,
        now: DateTime<Utc>,
    ) -> Result<(Principal, BearerToken), AccessError> {
        match by {
            Some(admin) => authz::permit(admin, Action::CreatePrincipal)?,
            None if self.registry.principal_count()? == 0 => {}
            None => return Err(Refusal::MissingRole(Action::CreatePrincipal.roles()).into()),
        }
        if new.roles.is_empty() {
            return Err(Refusal::NoRole.into());
        }
        if !person_valid(&new.person) {
            return Err(Refusal::PersonRequired.into());
        }
        if new.roles.contains(&Role::AuthorityHandler) && new.authority.is_none() {
            return Err(Refusal::HandlerWithoutAuthority.into());
        }
        if let Some(authority) = &new.authority
            && self.authority_country(authority)?.is_none()
        {
            return Err(Refusal::BadAuthority(authority.clone()).into());
        }
        if new.expires_at.is_some_and(|t| t <= now) {
            return Err(Refusal::BadTime("valid_until").into());
        }
        let mut held = new.roles.clone();
        for other in self.registry.principals_of_person(&new.person)?.into_iter().filter(|p| !p.revoked) {
            held.extend(other.roles);
        }
        authz::compatible_roles(&held)?;
        let principal = Principal {
            id: keys::new_record_id(&self.rng, "p")?,
            name: new.name.clone(),
            person: new.person.clone(),
            roles: new.roles.clone(),
            authority: new.authority.clone(),
            expires_at: new.expires_at.map(TimestampMicros::from_datetime),
            revoked: false,
        };
        Ok((principal, self.new_token()?))
    }

    /// Stores a prepared principal with its token and certificate, in one
    /// transaction with its audit entry.
    pub fn insert_principal(
        &self,
        principal: &Principal,
        token: &BearerToken,
        certificate: Option<&[u8]>,
        now: DateTime<Utc>,
        audit: AuditHook<'_>,
    ) -> Result<(), AccessError> {
        if certificate.is_some_and(|c| c.len() != 32) {
            return Err(Refusal::BadCertificate.into());
        }
        let token_sha256 = token_hash(token.expose());
        let row = NewPrincipalRow { principal, token_sha256: &token_sha256, certificate_sha256: certificate };
        self.registry.insert_principal(row, now, audit)?;
        Ok(())
    }

    /// Creates the first admin, while the registry has no principal, audited
    /// under `bootstrap` in the same transaction.
    pub fn bootstrap(
        &self,
        trail: &AuditTrail,
        name: &str,
        person: &str,
        now: DateTime<Utc>,
    ) -> Result<(Principal, BearerToken), AccessError> {
        let new = NewPrincipal { person: person.to_string(), ..NewPrincipal::of(name, Role::Admin, None) };
        let (admin, token) = self.prepare_principal(None, &new, now)?;
        let event = AuditEvent::PrincipalCreated {
            principal: admin.id.clone(),
            person: admin.person.clone(),
            roles: vec![Role::Admin.as_str().to_string()],
            authority: None,
            expires_at: None,
        };
        with_audit(trail, "bootstrap", &event, now, |hook| self.insert_principal(&admin, &token, None, now, hook))
            .map_err(|error| match error {
                Audited::Audit(error) => AccessError::AuditUnavailable(error),
                Audited::Change(error) => error,
            })?;
        Ok((admin, token))
    }

    /// Prepares and stores a principal in one step (tests).
    pub fn create_principal(
        &self,
        by: Option<&Principal>,
        new: &NewPrincipal,
        now: DateTime<Utc>,
        audit: AuditHook<'_>,
    ) -> Result<(Principal, BearerToken), AccessError> {
        let (principal, token) = self.prepare_principal(by, new, now)?;
        self.insert_principal(&principal, &token, new.certificate.as_deref(), now, audit)?;
        Ok((principal, token))
    }

    fn new_token(&self) -> Result<BearerToken, AccessError> {
        Ok(BearerToken(format!("cdv_{}", self.random_hex(32)?)))
    }

    /// A principal by id.
    pub fn principal(&self, id: &str) -> Result<Option<Principal>, AccessError> {
        Ok(self.registry.find_principal(PrincipalKey::Id(id))?)
    }

    /// Revokes a principal (admin): its token and certificate never
    /// authenticate again. The last live admin cannot be revoked, so that
    /// the registry is never locked.
    pub fn revoke_principal(
        &self,
        by: &Principal,
        id: &str,
        now: DateTime<Utc>,
        audit: AuditHook<'_>,
    ) -> Result<(), AccessError> {
        authz::permit(by, Action::ManagePrincipals)?;
        let target = self.principal(id)?.ok_or(Refusal::UnknownPrincipal)?;
        if target.revoked {
            return Err(Refusal::UnknownPrincipal.into());
        }
        if target.has(Role::Admin) && self.live_admins()? <= 1 {
            return Err(Refusal::LastAdmin.into());
        }
        if !self.registry.revoke_principal(id, now, audit)? {
            return Err(Refusal::UnknownPrincipal.into());
        }
        Ok(())
    }

    fn live_admins(&self) -> Result<usize, AccessError> {
        Ok(self.registry.live_principals_with(Role::Admin)?)
    }

    /// A new token for a live principal (itself, or an admin for anyone):
    /// the old one stops working at once. `replaced` is told the digest of
    /// the token replaced before `audit` runs (see
    /// [`crate::registry::AccessRegistry::replace_token`]). Returns the new
    /// token, shown once.
    pub fn rotate_token(
        &self,
        by: &Principal,
        id: &str,
        replaced: &mut dyn FnMut(&[u8]),
        audit: AuditHook<'_>,
    ) -> Result<BearerToken, AccessError> {
        if by.id != id {
            authz::permit(by, Action::ManagePrincipals)?;
        }
        let token = self.new_token()?;
        let replaced = self.registry.replace_token(id, &token_hash(token.expose()), replaced, audit)?;
        replaced.ok_or(Refusal::UnknownPrincipal)?;
        Ok(token)
    }

    /// The principal holding `token`, if any (revoked and expired ones
    /// included: [`AccessStore::identify`] refuses them).
    pub fn authenticate(&self, token: &str) -> Result<Option<Principal>, AccessError> {
        Ok(self.registry.find_principal(PrincipalKey::TokenSha256(&token_hash(token)))?)
    }

    /// The principal a client certificate is mapped to, if any.
    pub fn authenticate_certificate(&self, cert_sha256: &[u8]) -> Result<Option<Principal>, AccessError> {
        Ok(self.registry.find_principal(PrincipalKey::CertificateSha256(cert_sha256))?)
    }

    /// The live principal `credentials` name at `now`: a bearer token, when
    /// present, decides; otherwise a client certificate mapped to a
    /// principal. Revoked and expired credentials are refused with their
    /// own reasons.
    pub fn identify(&self, credentials: &Credentials, now: DateTime<Utc>) -> Result<Principal, AccessError> {
        let found = match (&credentials.token, &credentials.certificate) {
            (Some(token), _) => self.authenticate(token)?.ok_or(AuthFailure::UnknownToken),
            (None, Some(certificate)) => {
                self.authenticate_certificate(certificate)?.ok_or(AuthFailure::UnknownCertificate)
            }
            (None, None) => Err(AuthFailure::MissingCredentials),
        }?;
        if found.revoked {
            return Err(AuthFailure::Revoked.into());
        }
        if found.expires_at.is_some_and(|t| t.0 <= now.timestamp_micros()) {
            return Err(AuthFailure::Expired.into());
        }
        Ok(found)
    }
}

/// A person's id: an employee or system id, 1 to 64 printable characters.
fn person_valid(person: &str) -> bool {
    !person.trim().is_empty() && person.len() <= 64 && !person.chars().any(char::is_control)
}

/// A new principal, as an admin asks for it.
#[derive(Debug)]
pub struct NewPrincipal {
    pub name: String,
    /// The person it belongs to.
    pub person: String,
    pub roles: BTreeSet<Role>,
    pub authority: Option<String>,
    /// The SHA-256 of a client certificate that authenticates it.
    pub certificate: Option<Vec<u8>>,
    /// When its credentials stop working, if they should.
    pub expires_at: Option<DateTime<Utc>>,
}

impl NewPrincipal {
    /// A principal with one role, for the person of its name, without a
    /// certificate or an expiry.
    pub fn of(name: &str, role: Role, authority: Option<&str>) -> NewPrincipal {
        NewPrincipal {
            name: name.to_string(),
            person: name.to_string(),
            roles: [role].into(),
            authority: authority.map(str::to_string),
            certificate: None,
            expires_at: None,
        }
    }
}

impl Desk {
    /// Registers an authority (admin), audited in the same transaction.
    pub fn create_authority(&self, call: &mut Call, id: &str, country: &str, name: &str) -> Result<(), AccessError> {
        let country = country.to_ascii_uppercase();
        let event = AuditEvent::AuthorityCreated { authority: id.to_string(), country: country.clone() };
        let now = self.now();
        self.audited(&call.principal.id, event, |audit| {
            self.store.create_authority(&call.principal, id, &country, name, now, audit)
        })?;
        // Its disclosure counter exists from 0, so that the first result
        // it receives counts in `increase()` (the unusual-volume alert).
        self.metrics.disclosed(id, 0);
        Ok(())
    }

    /// Creates a principal (admin) with its certificate, audited in the
    /// same transaction, and returns it with its token (shown once). A
    /// principal whose roles break the separation of duties is refused, and
    /// the refusal audited.
    pub fn create_principal(
        &self,
        call: &mut Call,
        new: NewPrincipal,
    ) -> Result<(Principal, BearerToken), AccessError> {
        let now = self.now();
        let (created, token) = self.store.prepare_principal(Some(&call.principal), &new, now)?;
        let event = AuditEvent::PrincipalCreated {
            principal: created.id.clone(),
            person: created.person.clone(),
            roles: created.roles.iter().map(|r| r.as_str().to_string()).collect(),
            authority: created.authority.clone(),
            expires_at: created.expires_at.map(|t| t.rfc3339()),
        };
        self.audited(&call.principal.id, event, |audit| {
            self.store.insert_principal(&created, &token, new.certificate.as_deref(), now, audit)
        })?;
        Ok((created, token))
    }

    /// Revokes a principal (admin), audited in the same transaction.
    pub fn revoke_principal(&self, call: &mut Call, id: &str, reason: &str) -> Result<Principal, AccessError> {
        if reason.trim().is_empty() {
            return Err(Refusal::ReasonRequired.into());
        }
        let event = AuditEvent::PrincipalRevoked { principal: id.to_string(), reason: reason.trim().to_string() };
        let now = self.now();
        self.audited(&call.principal.id, event, |audit| {
            // Also out of the registry's reach, where an older copy of the
            // row put back later would still carry a valid seal
            // ([`Desk::authenticate`]): recorded after the entry and before
            // the commit, so the registry never says revoked without it,
            // and a trail that refuses the entry leaves nothing done.
            let mut audit_then_retire = || {
                audit()?;
                Ok(self.keys.retire_principal(id)?)
            };
            self.store.revoke_principal(&call.principal, id, now, &mut audit_then_retire)
        })?;
        Ok(self.store.principal(id)?.ok_or(Refusal::UnknownPrincipal)?)
    }

    /// A new token for a principal (itself, or any principal for an admin),
    /// audited in the same transaction; shown once.
    pub fn rotate_token(&self, call: &mut Call, id: &str) -> Result<BearerToken, AccessError> {
        let event = AuditEvent::TokenRotated { principal: id.to_string() };
        // The old token never comes back, even with an older copy of the
        // row ([`Desk::authenticate`]): recorded, as for a revocation,
        // after the entry and before the commit.
        let replaced = std::cell::RefCell::new(None::<Vec<u8>>);
        let mut note = |old: &[u8]| *replaced.borrow_mut() = Some(old.to_vec());
        self.audited(&call.principal.id, event, |audit| {
            let mut audit_then_retire = || {
                audit()?;
                match replaced.borrow().as_deref() {
                    Some(old) => Ok(self.keys.retire_token(old)?),
                    None => Ok(()),
                }
            };
            self.store.rotate_token(&call.principal, id, &mut note, &mut audit_then_retire)
        })
    }

    /// True if `credentials` carry a token that was rotated away.
    pub(super) fn token_retired(&self, credentials: &Credentials) -> Result<bool, AccessError> {
        match &credentials.token {
            Some(token) => Ok(self.keys.is_token_retired(&token_hash(token))?),
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyStore;
    use crate::registry::Registries;

    #[test]
    fn tokens_are_shown_once_stored_hashed_and_stop_working_when_revoked_rotated_or_expired() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        KeyStore::init(&root.path().join("keys"), None).unwrap();
        let keys = KeyStore::open(&root.path().join("keys"), None).unwrap();
        let registries = Registries::sqlite(&state, &keys).unwrap();
        let store = AccessStore::new(registries.access);
        let now = Utc::now();
        let unaudited = &mut || Ok(());
        let (admin, _) =
            store.create_principal(None, &NewPrincipal::of("root", Role::Admin, None), now, unaudited).unwrap();
        let carol = NewPrincipal {
            expires_at: Some(now + chrono::Duration::days(1)),
            ..NewPrincipal::of("carol", Role::Auditor, None)
        };
        let (principal, token) = store.create_principal(Some(&admin), &carol, now, unaudited).unwrap();
        assert_eq!(store.authenticate(token.expose()).unwrap(), Some(principal.clone()));
        assert_eq!(store.authenticate("cdv_0000").unwrap(), None);
        assert!(!format!("{token:?}").contains(token.expose()));
        let bytes = std::fs::read(state.join(crate::registry::REGISTRY_FILE)).unwrap();
        let wal = std::fs::read(state.join(format!("{}-wal", crate::registry::REGISTRY_FILE))).unwrap_or_default();
        for haystack in [&bytes, &wal] {
            assert!(!haystack.windows(token.expose().len()).any(|w| w == token.expose().as_bytes()));
        }
        let credentials =
            |token: &BearerToken| Credentials { token: Some(token.expose().to_string()), ..Credentials::default() };
        assert_eq!(store.identify(&credentials(&token), now).unwrap(), principal);
        let refused = |result: Result<Principal, AccessError>| match result {
            Err(AccessError::Unauthenticated(failure)) => failure,
            other => panic!("expected an authentication failure, got {other:?}"),
        };
        assert_eq!(refused(store.identify(&Credentials::default(), now)), AuthFailure::MissingCredentials);
        assert_eq!(
            refused(store.identify(&credentials(&token), now + chrono::Duration::days(2))),
            AuthFailure::Expired
        );

        let mut replaced = Vec::new();
        let rotated =
            store.rotate_token(&principal, &principal.id, &mut |old| replaced = old.to_vec(), unaudited).unwrap();
        assert_eq!(replaced, token_hash(token.expose()), "the digest it replaced");
        assert_eq!(refused(store.identify(&credentials(&token), now)), AuthFailure::UnknownToken);
        assert_eq!(store.identify(&credentials(&rotated), now).unwrap().id, principal.id);
        store.revoke_principal(&admin, &principal.id, now, unaudited).unwrap();
        assert_eq!(refused(store.identify(&credentials(&rotated), now)), AuthFailure::Revoked);
        assert!(
            matches!(
                store.revoke_principal(&admin, &admin.id, now, unaudited),
                Err(AccessError::Refused(Refusal::LastAdmin))
            ),
            "the last admin stays"
        );
        assert!(
            matches!(
                store.create_principal(None, &NewPrincipal::of("intruder", Role::Admin, None), now, unaudited),
                Err(AccessError::Refused(Refusal::MissingRole(_)))
            ),
            "only the very first principal needs no admin"
        );
    }
}
