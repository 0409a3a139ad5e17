//! Why a lawful-access call was refused: every reason, each with its stable
//! reason code. A new reason is a new variant here; the compiler then asks
//! for its status code in [`super::api::denial`].
//!
//! A refusal names its reason precisely, so that the handler can correct
//! the request and the audit trail says what happened, and never quotes a
//! target value, so that it can be audited and logged.

use crate::audit::AuditError;
use crate::keys::KeyError;
use crate::registry::{RegistryError, RequestError, Role};

use super::lookup::LookupError;

/// A refused call: its reason, and the detail (value-free) shown to the
/// caller and kept in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("requires the role {}", role_names(.0))]
    MissingRole(&'static [Role]),
    #[error("the principal acts for no authority")]
    NoAuthority,
    #[error("the warrant belongs to another authority")]
    OtherAuthority,
    #[error("no such warrant")]
    UnknownWarrant,
    #[error("the warrant is {0}, not approved")]
    NotApproved(&'static str),
    #[error("the warrant expired")]
    WarrantExpired,
    #[error("the warrant's targets are destroyed")]
    WarrantClosed,
    #[error("a warrant cannot be approved or rejected by the principal who registered it")]
    SelfApproval,
    #[error("the warrant was already decided")]
    AlreadyDecided,
    #[error("a rejection needs a reason")]
    ReasonRequired,
    #[error("target {0} is not among the warrant's targets")]
    TargetOutOfScope(usize),
    #[error("target {0} is malformed")]
    MalformedTarget(usize),
    #[error("target {0} is not kind:value")]
    TargetSyntax(usize),
    #[error("the window is not inside the warrant's period")]
    WindowOutOfScope,
    #[error("the window ends before it starts")]
    EmptyWindow,
    #[error("the window spans more than {0} days; split it into several requests")]
    WindowTooLong(u32),
    #[error("category {0} is not allowed by the warrant")]
    CategoryOutOfScope(&'static str),
    #[error("categories are traffic, location, device, ip")]
    BadCategory,
    #[error("{0} is not an RFC 3339 time")]
    BadTime(&'static str),
    #[error("the request names no target or no category")]
    EmptyScope,
    #[error("{0} exceeds {1} bytes")]
    FieldTooLong(&'static str, usize),
    #[error("more than {0} targets")]
    TooManyTargets(usize),
    #[error("the message has {size} bytes; the limit is {limit}")]
    MessageTooLarge { size: usize, limit: usize },
    #[error("more than {0} calls a minute for this authority")]
    RateLimited(u32),
    #[error("roles are admin, legal_reviewer, authority_handler, auditor, dpo")]
    UnknownRole,
    #[error("name one role at least")]
    NoRole,
    #[error("authority {0} is unknown, taken or malformed")]
    BadAuthority(String),
    #[error("an authority handler needs an authority")]
    HandlerWithoutAuthority,
    #[error("the certificate digest is not 64 hex digits, or the principal is unknown")]
    BadCertificate,
    #[error("an object with that reference already exists")]
    Duplicate,
    #[error("request numbers start at 1")]
    BadRequestNumber,
    #[error("request number {0} was already used")]
    RequestNumberReused(u64),
    #[error("no such request for this authority")]
    UnknownRequest,
    #[error("the request has no result (refused or expired)")]
    NoResult,
    #[error("the result was destroyed")]
    ResultDestroyed,
    #[error("the sealed result fails authentication")]
    ResultUnsealable,
    #[error("the result differs from its recorded digest")]
    ResultDigestMismatch,
    #[error("the year is out of range")]
    BadYear,
    #[error("the page token is not one this service gave")]
    BadPageToken,
    #[error("name the case reference")]
    ReferenceRequired,
    #[error("a data subject is named by an msisdn, imsi, imei or sip identity, not by {0}")]
    NotASubject(&'static str),
    #[error("name the person the principal belongs to (1 to 64 printable characters)")]
    PersonRequired,
    #[error("{0} cannot be held with {1}, by one principal or one person")]
    IncompatibleRoles(&'static str, &'static str),
    #[error("no such live principal")]
    UnknownPrincipal,
    #[error("the last live admin cannot be revoked")]
    LastAdmin,
    #[error("a cell target needs a warrant that grants cell dumps and the location category")]
    CellDumpNotGranted,
    #[error("no such preservation order")]
    UnknownOrder,
    #[error("the order is {0}, not {1}")]
    OrderState(&'static str, &'static str),
    #[error("the order has no pending end date")]
    NoPendingEnd,
    #[error("an order ends at most {0} days from today")]
    OrderTooLong(u32),
    #[error(
        "an order preserves past communications of subscribers: its window must end by now and its targets must not be cells"
    )]
    BadOrderScope,
}

fn role_names(roles: &[Role]) -> String {
    roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or ")
}

impl Refusal {
    /// The stable reason code: in the status message, the `cdrvault-reason`
    /// trailer, the audit entry and the refusal metric's label.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::MissingRole(_) => "missing_role",
            Refusal::NoAuthority => "no_authority",
            Refusal::OtherAuthority => "other_authority",
            Refusal::UnknownWarrant => "unknown_warrant",
            Refusal::NotApproved(_) => "warrant_not_approved",
            Refusal::WarrantExpired => "warrant_expired",
            Refusal::WarrantClosed => "warrant_closed",
            Refusal::SelfApproval => "self_approval",
            Refusal::AlreadyDecided => "already_decided",
            Refusal::ReasonRequired => "reason_required",
            Refusal::TargetOutOfScope(_) => "target_out_of_scope",
            Refusal::MalformedTarget(_) | Refusal::TargetSyntax(_) => "malformed_target",
            Refusal::WindowOutOfScope => "window_out_of_scope",
            Refusal::EmptyWindow => "empty_window",
            Refusal::WindowTooLong(_) => "window_too_long",
            Refusal::CategoryOutOfScope(_) => "category_out_of_scope",
            Refusal::BadCategory => "bad_category",
            Refusal::BadTime(_) => "bad_time",
            Refusal::EmptyScope => "empty_scope",
            Refusal::FieldTooLong(..) | Refusal::TooManyTargets(_) => "request_too_large",
            Refusal::MessageTooLarge { .. } => "message_too_large",
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::UnknownRole | Refusal::NoRole => "bad_role",
            Refusal::BadAuthority(_) | Refusal::HandlerWithoutAuthority => "bad_authority",
            Refusal::BadCertificate => "bad_certificate",
            Refusal::Duplicate => "duplicate",
            Refusal::BadRequestNumber => "bad_request_number",
            Refusal::RequestNumberReused(_) => "request_number_reused",
            Refusal::UnknownRequest => "unknown_request",
            Refusal::NoResult | Refusal::ResultDestroyed => "result_expired",
            Refusal::ResultUnsealable | Refusal::ResultDigestMismatch => "result_damaged",
            Refusal::BadYear => "bad_year",
            Refusal::BadPageToken => "bad_page_token",
            Refusal::ReferenceRequired => "reference_required",
            Refusal::NotASubject(_) => "not_a_subject",
            Refusal::PersonRequired => "person_required",
            Refusal::IncompatibleRoles(..) => "incompatible_roles",
            Refusal::UnknownPrincipal => "unknown_principal",
            Refusal::LastAdmin => "last_admin",
            Refusal::CellDumpNotGranted => "cell_dump_not_granted",
            Refusal::UnknownOrder => "unknown_order",
            Refusal::OrderState(..) => "order_state",
            Refusal::NoPendingEnd => "no_pending_end",
            Refusal::OrderTooLong(_) => "order_too_long",
            Refusal::BadOrderScope => "bad_order_scope",
        }
    }
}

/// What a caller presented that did not authenticate it. Audited as an
/// authentication failure, never under a principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("missing_credentials")]
    MissingCredentials,
    #[error("unknown_token")]
    UnknownToken,
    #[error("unknown_certificate")]
    UnknownCertificate,
    #[error("revoked_credentials")]
    Revoked,
    #[error("expired_credentials")]
    Expired,
}

impl AuthFailure {
    /// The stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            AuthFailure::MissingCredentials => "missing_credentials",
            AuthFailure::UnknownToken => "unknown_token",
            AuthFailure::UnknownCertificate => "unknown_certificate",
            AuthFailure::Revoked => "revoked_credentials",
            AuthFailure::Expired => "expired_credentials",
        }
    }
}

/// Why a lawful-access operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Refused for a reason the caller can know (audited).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The caller is not authenticated (audited as such).
    #[error(transparent)]
    Unauthenticated(#[from] AuthFailure),
    /// The audit trail cannot be written: nothing is done or disclosed.
    #[error("the audit trail cannot be written: {0}")]
    AuditUnavailable(#[source] AuditError),
    #[error(transparent)]
    Registry(RegistryError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Durable(#[from] crate::ops::durable::DurableError),
    #[error("{0}")]
    Internal(&'static str),
}

impl AccessError {
    /// True when the process must stop: an fsync failed somewhere below,
    /// so the state of the disk is unknown.
    pub fn is_fatal(&self) -> bool {
        match self {
            AccessError::Durable(e) => e.is_fatal(),
            AccessError::Keys(e) => e.is_fatal(),
            AccessError::AuditUnavailable(e) => e.is_fatal(),
            _ => false,
        }
    }
}

impl From<RegistryError> for AccessError {
    /// A taken unique key (a reference, an id, a certificate) is the
    /// caller's to fix: a refusal. The backend's other errors are not.
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::Conflict => AccessError::Refused(Refusal::Duplicate),
            // Keeps what a failed fsync means: fatal.
            RegistryError::Keys(error) => AccessError::Keys(error),
            error => AccessError::Registry(error),
        }
    }
}

impl From<RequestError> for AccessError {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::Replayed { number, .. } => AccessError::Refused(Refusal::RequestNumberReused(number)),
            RequestError::Registry(error) => error.into(),
        }
    }
}

impl From<AuditError> for AccessError {
    fn from(error: AuditError) -> Self {
        AccessError::AuditUnavailable(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_no_value_and_roles_read_naturally() {
        let refusal = Refusal::MissingRole(&[Role::AuthorityHandler, Role::Auditor]);
        assert_eq!(refusal.to_string(), "requires the role authority_handler or auditor");
        assert_eq!(refusal.code(), "missing_role");
        assert_eq!(Refusal::TooManyTargets(64).code(), Refusal::FieldTooLong("name", 512).code());
    }
}
