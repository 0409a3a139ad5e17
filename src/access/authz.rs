//! Every decision about who may do or see what in lawful access, and only
//! here: which roles an operation needs, which warrants and requests a
//! principal may see, whose results it may fetch, and the four-eyes rule.
//! The operations ask; none decides by itself.
//!
//! The roles (see [`Role`]): an admin manages authorities and principals; a
//! legal reviewer registers, decides and closes warrants; an authority
//! handler submits requests under its own authority's warrants and fetches
//! their results; an auditor reads the audit trail, the statistics and the
//! requests; a DPO exports a data subject's records.

use super::refusal::Refusal;
use crate::registry::{Principal, RequestRecord, Role, Warrant};

/// What a call asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    CreateAuthority,
    CreatePrincipal,
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
}

impl Action {
    /// The roles, any one of which permits the action.
    pub fn roles(self) -> &'static [Role] {
        match self {
            Action::CreateAuthority | Action::CreatePrincipal => &[Role::Admin],
            Action::RegisterWarrant | Action::DecideWarrant | Action::CloseWarrant => &[Role::LegalReviewer],
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

/// The four-eyes rule: a warrant is decided by a reviewer other than the
/// one who registered it.
pub fn may_decide(principal: &Principal, warrant: &Warrant) -> Result<(), Refusal> {
    permit(principal, Action::DecideWarrant)?;
    if warrant.registered_by == principal.id { Err(Refusal::SelfApproval) } else { Ok(()) }
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
            roles: roles.iter().copied().collect(),
            authority: authority.map(str::to_string),
        }
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
