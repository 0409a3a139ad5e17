//! Every decision about who may do or see what in lawful access, and only
//! here: which roles an operation needs, which warrants and requests a
//! principal may see, whose results it may fetch, and the four-eyes rule.
//! The operations ask; none decides by itself.
//!
//! The roles (see [`Role`]): an admin manages authorities and principals; a
//! legal reviewer registers, decides and closes warrants and preservation
//! orders; an authority handler submits requests under its own authority's
//! warrants and fetches their results; an auditor reads the audit trail,
//! the statistics and the requests; a DPO exports a data subject's records.
//!
//! Separation of duties, per principal and per person: an admin holds no
//! other role (who makes principals does not use them), and a legal
//! reviewer is never an authority handler (who grants a warrant does not
//! execute it). The four-eyes rule compares persons, not principals: a
//! second principal of the same person is the same pair of eyes.

use std::collections::BTreeSet;

use super::refusal::Refusal;
use crate::registry::{Actor, Principal, RequestRecord, Role, Warrant};

/// What a call asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    CreateAuthority,
    CreatePrincipal,
    /// Revoking a principal, or rotating another principal's token.
    ManagePrincipals,
    RegisterWarrant,
    DecideWarrant,
    CloseWarrant,
    ReadWarrant,
    SubmitRequest,
    ReadRequest,
    FetchResult,
    VerifyAudit,
    Statistics,
    ExportSubject,
    /// Registering, deciding, extending and lifting preservation orders.
    ManageOrders,
    ReadOrder,
}

impl Action {
    /// The roles, any one of which permits the action.
    pub fn roles(self) -> &'static [Role] {
        match self {
            Action::CreateAuthority | Action::CreatePrincipal | Action::ManagePrincipals => &[Role::Admin],
            Action::RegisterWarrant | Action::DecideWarrant | Action::CloseWarrant | Action::ManageOrders => {
                &[Role::LegalReviewer]
            }
            Action::ReadOrder => &[Role::LegalReviewer, Role::Auditor, Role::AuthorityHandler],
            Action::ReadWarrant => &[Role::LegalReviewer, Role::Auditor, Role::AuthorityHandler],
            Action::SubmitRequest | Action::FetchResult => &[Role::AuthorityHandler],
            Action::ReadRequest => &[Role::AuthorityHandler, Role::Auditor],
            Action::VerifyAudit | Action::Statistics => &[Role::Auditor],
            Action::ExportSubject => &[Role::Dpo],
        }
    }
}

/// Refuses `action` to a principal that holds none of its roles.
pub fn permit(principal: &Principal, action: Action) -> Result<(), Refusal> {
    let roles = action.roles();
    if roles.iter().any(|role| principal.has(*role)) { Ok(()) } else { Err(Refusal::MissingRole(roles)) }
}

/// The authority a principal acts for; handlers need one to submit.
pub fn acting_authority(principal: &Principal) -> Result<&str, Refusal> {
    principal.authority.as_deref().ok_or(Refusal::NoAuthority)
}

/// Whose objects a listing shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing<'a> {
    /// Every authority's, or the one asked for.
    All(Option<&'a str>),
    /// One authority's only.
    Authority(&'a str),
    /// Nothing (asked for another authority's).
    Nothing,
}

/// Reviewers and auditors see every warrant; a handler its authority's.
fn sees_every_warrant(principal: &Principal) -> bool {
    principal.has(Role::LegalReviewer) || principal.has(Role::Auditor)
}

/// Whether `principal` may see `warrant`. Another authority's warrant is
/// [`Refusal::OtherAuthority`], which callers show as an unknown object.
pub fn may_see_warrant(principal: &Principal, warrant: &Warrant) -> Result<(), Refusal> {
    permit(principal, Action::ReadWarrant)?;
    if sees_every_warrant(principal) || principal.authority.as_deref() == Some(warrant.authority.as_str()) {
        Ok(())
    } else {
        Err(Refusal::OtherAuthority)
    }
}

/// The warrants a listing by `principal` shows, when it asks for `asked`'s.
pub fn warrant_listing<'a>(principal: &'a Principal, asked: Option<&'a str>) -> Result<Listing<'a>, Refusal> {
    permit(principal, Action::ReadWarrant)?;
    if sees_every_warrant(principal) {
        return Ok(Listing::All(asked));
    }
    Ok(match (principal.authority.as_deref(), asked) {
        (Some(own), None) => Listing::Authority(own),
        (Some(own), Some(asked)) if own == asked => Listing::Authority(own),
        _ => Listing::Nothing,
    })
}

/// Whether `principal` may submit a request under `warrant`: a handler of
/// the warrant's own authority.
pub fn may_request_under(principal: &Principal, warrant: &Warrant) -> Result<(), Refusal> {
    permit(principal, Action::SubmitRequest)?;
    if principal.authority.as_deref() == Some(warrant.authority.as_str()) {
        Ok(())
    } else {
        // Indistinguishable from an unknown warrant to the requester;
        // precise in the audit trail.
        Err(Refusal::OtherAuthority)
    }
}

/// The four-eyes rule: a warrant is decided by a reviewer who is another
/// person than the one who registered it (a second principal of the same
/// person does not count).
pub fn may_decide(principal: &Principal, warrant: &Warrant) -> Result<(), Refusal> {
    permit(principal, Action::DecideWarrant)?;
    other_person(principal, &warrant.registered_by, &warrant.registered_by_person)
}

/// The four-eyes rule for a preservation order, or for its pending new end
/// date: decided by another person than the one who asked.
pub fn may_decide_order(principal: &Principal, asked_by: &Actor) -> Result<(), Refusal> {
    permit(principal, Action::ManageOrders)?;
    other_person(principal, &asked_by.principal, &asked_by.person)
}

fn other_person(principal: &Principal, asked_by: &str, asked_by_person: &str) -> Result<(), Refusal> {
    if principal.id == asked_by || principal.person == asked_by_person { Err(Refusal::SelfApproval) } else { Ok(()) }
}

/// Separation of duties over the roles one principal, or one person across
/// its live principals, holds: an admin holds no other role, and a legal
/// reviewer is never an authority handler.
pub fn compatible_roles(roles: &BTreeSet<Role>) -> Result<(), Refusal> {
    if roles.contains(&Role::Admin) && roles.len() > 1 {
        return Err(Refusal::IncompatibleRoles("admin", "any other role"));
    }
    if roles.contains(&Role::LegalReviewer) && roles.contains(&Role::AuthorityHandler) {
        return Err(Refusal::IncompatibleRoles("legal_reviewer", "authority_handler"));
    }
    Ok(())
}

/// Whether `principal` may see an order of `authority`: reviewers and
/// auditors see every order, a handler its authority's. Another
/// authority's order is an unknown one.
pub fn may_see_order(principal: &Principal, authority: &str) -> Result<(), Refusal> {
    permit(principal, Action::ReadOrder)?;
    if sees_every_warrant(principal) || principal.authority.as_deref() == Some(authority) {
        Ok(())
    } else {
        Err(Refusal::UnknownOrder)
    }
}

/// Whether `principal` may see `request`: auditors see all, a handler its
/// authority's. Another authority's request is an unknown one.
pub fn may_see_request(principal: &Principal, request: &RequestRecord) -> Result<(), Refusal> {
    permit(principal, Action::ReadRequest)?;
    if principal.has(Role::Auditor) || principal.authority.as_deref() == Some(request.authority.as_str()) {
        Ok(())
    } else {
        Err(Refusal::UnknownRequest)
    }
}

/// Whether `principal` may fetch `request`'s result: a handler of the
/// request's own authority, and no one else, whatever other roles it holds
/// (an auditor sees every request, never another authority's result).
/// Another authority's request is an unknown one.
pub fn may_fetch(principal: &Principal, request: &RequestRecord) -> Result<(), Refusal> {
    permit(principal, Action::FetchResult)?;
    if principal.authority.as_deref() == Some(request.authority.as_str()) {
        Ok(())
    } else {
        Err(Refusal::UnknownRequest)
    }
}

/// The orders a listing by `principal` shows, when it asks for `asked`'s:
/// as for warrants.
pub fn order_listing<'a>(principal: &'a Principal, asked: Option<&'a str>) -> Result<Listing<'a>, Refusal> {
    permit(principal, Action::ReadOrder)?;
    if sees_every_warrant(principal) {
        return Ok(Listing::All(asked));
    }
    Ok(match (principal.authority.as_deref(), asked) {
        (Some(own), None) => Listing::Authority(own),
        (Some(own), Some(asked)) if own == asked => Listing::Authority(own),
        _ => Listing::Nothing,
    })
}

/// The requests a listing by `principal` shows, when it asks for `asked`'s.
pub fn request_listing<'a>(principal: &'a Principal, asked: Option<&'a str>) -> Result<Listing<'a>, Refusal> {
    permit(principal, Action::ReadRequest)?;
    if principal.has(Role::Auditor) {
        return Ok(Listing::All(asked));
    }
    Ok(match (principal.authority.as_deref(), asked) {
        (Some(own), None) => Listing::Authority(own),
        (Some(own), Some(asked)) if own == asked => Listing::Authority(own),
        _ => Listing::Nothing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(roles: &[Role], authority: Option<&str>) -> Principal {
        Principal {
            id: "p-1".into(),
            name: "x".into(),
            person: "x".into(),
            roles: roles.iter().copied().collect(),
            authority: authority.map(str::to_string),
            expires_at: None,
            revoked: false,
        }
    }

    #[test]
    fn duties_stay_separate() {
        let set = |roles: &[Role]| roles.iter().copied().collect::<BTreeSet<_>>();
        assert!(compatible_roles(&set(&[Role::Admin])).is_ok());
        assert!(compatible_roles(&set(&[Role::AuthorityHandler, Role::Auditor])).is_ok());
        assert!(compatible_roles(&set(&[Role::LegalReviewer, Role::Auditor, Role::Dpo])).is_ok());
        for other in [Role::LegalReviewer, Role::AuthorityHandler, Role::Auditor, Role::Dpo] {
            assert!(compatible_roles(&set(&[Role::Admin, other])).is_err(), "admin with {other:?}");
        }
        assert!(compatible_roles(&set(&[Role::LegalReviewer, Role::AuthorityHandler])).is_err());
    }

    #[test]
    fn each_action_needs_one_of_its_roles() {
        let handler = principal(&[Role::AuthorityHandler], Some("dk-police"));
        assert_eq!(permit(&handler, Action::SubmitRequest), Ok(()));
        assert_eq!(permit(&handler, Action::Statistics), Err(Refusal::MissingRole(&[Role::Auditor])));
        let admin = principal(&[Role::Admin], None);
        for action in [Action::RegisterWarrant, Action::SubmitRequest, Action::FetchResult, Action::ExportSubject] {
            assert!(permit(&admin, action).is_err(), "an admin alone cannot {action:?}");
        }
    }

    #[test]
    fn listings_show_a_handler_its_own_authority_only() {
        let handler = principal(&[Role::AuthorityHandler], Some("dk-police"));
        assert_eq!(warrant_listing(&handler, None), Ok(Listing::Authority("dk-police")));
        assert_eq!(warrant_listing(&handler, Some("se-police")), Ok(Listing::Nothing));
        assert_eq!(request_listing(&handler, Some("dk-police")), Ok(Listing::Authority("dk-police")));
        let auditor = principal(&[Role::Auditor], None);
        assert_eq!(request_listing(&auditor, Some("se-police")), Ok(Listing::All(Some("se-police"))));
        assert!(warrant_listing(&principal(&[Role::Dpo], None), None).is_err());
    }
}
