//! Authorities and principals: who exists, and how a caller proves who it
//! is. A bearer token is shown once, at creation, and only its SHA-256 is
//! stored; a client certificate authenticates the principal its SHA-256 is
//! mapped to.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use ring::digest::{SHA256, digest};

use super::authz::{self, Action};
use super::desk::{Call, Credentials, Desk};
use super::refusal::{AccessError, AuthFailure, Refusal};
use super::store::AccessStore;
use crate::audit::AuditEvent;
use crate::registry::{Principal, PrincipalKey, Role};

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
    ) -> Result<(), AccessError> {
        authz::permit(by, Action::CreateAuthority)?;
        if !authority_id_valid(id) || country.len() != 2 {
            return Err(Refusal::BadAuthority(id.to_string()).into());
        }
        if !self.registry.insert_authority(id, &country.to_ascii_uppercase(), name, now)? {
            return Err(Refusal::BadAuthority(id.to_string()).into());
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
            Some(admin) => authz::permit(admin, Action::CreatePrincipal)?,
            None if existing == 0 => {}
            None => return Err(Refusal::MissingRole(Action::CreatePrincipal.roles()).into()),
        }
        if let Some(authority) = authority
            && self.authority_country(authority)?.is_none()
        {
            return Err(Refusal::BadAuthority(authority.to_string()).into());
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
        authz::permit(by, Action::CreatePrincipal)?;
        if cert_sha256.len() != 32 || !self.registry.bind_certificate(principal, cert_sha256)? {
            return Err(Refusal::BadCertificate.into());
        }
        Ok(())
    }

    /// The principal a client certificate is mapped to, if any.
    pub fn authenticate_certificate(&self, cert_sha256: &[u8]) -> Result<Option<Principal>, AccessError> {
        Ok(self.registry.find_principal(PrincipalKey::CertificateSha256(cert_sha256))?)
    }

    /// The principal `credentials` name: a bearer token, when present,
    /// decides; otherwise a client certificate mapped to a principal.
    pub fn identify(&self, credentials: &Credentials) -> Result<Principal, AccessError> {
        let found = match (&credentials.token, &credentials.certificate) {
            (Some(token), _) => self.authenticate(token)?.ok_or(AuthFailure::UnknownToken),
            (None, Some(certificate)) => {
                self.authenticate_certificate(certificate)?.ok_or(AuthFailure::UnknownCertificate)
            }
            (None, None) => Err(AuthFailure::MissingCredentials),
        };
        Ok(found?)
    }
}

/// A new principal, as an admin asks for it.
#[derive(Debug)]
pub struct NewPrincipal {
    pub name: String,
    pub roles: BTreeSet<Role>,
    pub authority: Option<String>,
    /// The SHA-256 of a client certificate that authenticates it.
    pub certificate: Option<Vec<u8>>,
}

impl Desk {
    /// Registers an authority (admin), audited.
    pub fn create_authority(&self, call: &mut Call, id: &str, country: &str, name: &str) -> Result<(), AccessError> {
        self.store.create_authority(&call.principal, id, country, name, self.now())?;
        let country = country.to_ascii_uppercase();
        self.audit(call, AuditEvent::AuthorityCreated { authority: id.to_string(), country })
    }

    /// Creates a principal (admin), maps its certificate, audits it, and
    /// returns it with its token (shown once).
    pub fn create_principal(
        &self,
        call: &mut Call,
        new: NewPrincipal,
    ) -> Result<(Principal, BearerToken), AccessError> {
        authz::permit(&call.principal, Action::CreatePrincipal)?;
        if new.roles.is_empty() {
            return Err(Refusal::NoRole.into());
        }
        if new.roles.contains(&Role::AuthorityHandler) && new.authority.is_none() {
            return Err(Refusal::HandlerWithoutAuthority.into());
        }
        let (created, token) = self.store.create_principal(
            Some(&call.principal),
            &new.name,
            new.roles,
            new.authority.as_deref(),
            self.now(),
        )?;
        if let Some(certificate) = &new.certificate {
            self.store.bind_certificate(&call.principal, &created.id, certificate)?;
        }
        self.audit(
            call,
            AuditEvent::PrincipalCreated {
                principal: created.id.clone(),
                roles: created.roles.iter().map(|r| r.as_str().to_string()).collect(),
                authority: created.authority.clone(),
            },
        )?;
        Ok((created, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registries;

    #[test]
    fn tokens_are_shown_once_and_stored_hashed() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let registries = Registries::sqlite(&state).unwrap();
        let store = AccessStore::new(registries.access);
        let now = Utc::now();
        let (admin, _) = store.create_principal(None, "root", [Role::Admin].into(), None, now).unwrap();
        let (principal, token) =
            store.create_principal(Some(&admin), "carol", [Role::Auditor].into(), None, now).unwrap();
        assert_eq!(store.authenticate(token.expose()).unwrap(), Some(principal.clone()));
        assert_eq!(store.authenticate("cdv_0000").unwrap(), None);
        assert!(!format!("{token:?}").contains(token.expose()));
        let bytes = std::fs::read(state.join(crate::registry::REGISTRY_FILE)).unwrap();
        let wal = std::fs::read(state.join(format!("{}-wal", crate::registry::REGISTRY_FILE))).unwrap_or_default();
        for haystack in [&bytes, &wal] {
            assert!(!haystack.windows(token.expose().len()).any(|w| w == token.expose().as_bytes()));
        }
        let credentials = Credentials { token: Some(token.expose().to_string()), certificate: None, peer: None };
        assert_eq!(store.identify(&credentials).unwrap(), principal);
        assert!(matches!(
            store.identify(&Credentials::default()),
            Err(AccessError::Unauthenticated(AuthFailure::MissingCredentials))
        ));
        assert!(
            matches!(
                store.create_principal(None, "intruder", [Role::Admin].into(), None, now),
                Err(AccessError::Refused(Refusal::MissingRole(_)))
            ),
            "only the very first principal needs no admin"
        );
    }
}
