//! How a failed call reaches the caller: a gRPC status whose message starts
//! with the stable reason code, also in the `cdrvault-reason` trailer.
//!
//! Status codes: `unauthenticated` (no or unknown credentials),
//! `permission_denied` (role, self-approval, out of scope), `not_found`,
//! `failed_precondition` (warrant not approved, expired, closed),
//! `invalid_argument` (syntax, too many targets, fields too long, a window
//! too long),
//! `already_exists`, `resource_exhausted` (rate, message size),
//! `unavailable` (the audit trail cannot be written), `data_loss` (a sealed
//! result fails authentication), `internal` (logged; the caller learns
//! nothing). A warrant of another authority and a warrant that does not
//! exist look the same to the caller (`not_found: no such object`), so
//! existence does not leak; the audit entry keeps the precise reason.

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::access::refusal::{AccessError, Refusal};

/// The status a refusal is shown as.
pub fn code(refusal: &Refusal) -> Code {
    match refusal {
        Refusal::MissingRole(_)
        | Refusal::NoAuthority
        | Refusal::SelfApproval
        | Refusal::IncompatibleRoles(..)
        | Refusal::LastAdmin
        | Refusal::CellDumpNotGranted
        | Refusal::TargetOutOfScope(_)
        | Refusal::WindowOutOfScope
        | Refusal::CategoryOutOfScope(_) => Code::PermissionDenied,
        Refusal::OtherAuthority
        | Refusal::UnknownWarrant
        | Refusal::UnknownRequest
        | Refusal::NoResult
        | Refusal::ResultDestroyed
        | Refusal::UnknownPrincipal
        | Refusal::UnknownOrder => Code::NotFound,
        Refusal::NotApproved(_)
        | Refusal::WarrantExpired
        | Refusal::WarrantClosed
        | Refusal::AlreadyDecided
        | Refusal::OrderState(..)
        | Refusal::NoPendingEnd => Code::FailedPrecondition,
        Refusal::ReasonRequired
        | Refusal::MalformedTarget(_)
        | Refusal::TargetSyntax(_)
        | Refusal::EmptyWindow
        | Refusal::WindowTooLong(_)
        | Refusal::BadCategory
        | Refusal::BadTime(_)
        | Refusal::EmptyScope
        | Refusal::FieldTooLong(..)
        | Refusal::TooManyTargets(_)
        | Refusal::UnknownRole
        | Refusal::NoRole
        | Refusal::BadAuthority(_)
        | Refusal::HandlerWithoutAuthority
        | Refusal::BadCertificate
        | Refusal::BadRequestNumber
        | Refusal::BadYear
        | Refusal::BadPageToken
        | Refusal::ReferenceRequired
        | Refusal::NotASubject(_)
        | Refusal::PersonRequired
        | Refusal::OrderTooLong(_)
        | Refusal::BadOrderScope => Code::InvalidArgument,
        Refusal::Duplicate | Refusal::RequestNumberReused(_) => Code::AlreadyExists,
        Refusal::MessageTooLarge { .. } | Refusal::RateLimited(_) => Code::ResourceExhausted,
        Refusal::ResultUnsealable | Refusal::ResultDigestMismatch => Code::DataLoss,
    }
}

/// A status with its reason code in the message and the trailer.
fn with_reason(code: Code, reason: &'static str, detail: &str) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert("cdrvault-reason", MetadataValue::from_static(reason));
    Status::with_metadata(code, format!("{reason}: {detail}"), metadata)
}

/// The status a failed call returns.
pub fn status(error: AccessError) -> Status {
    match error {
        // Another authority's warrant looks exactly like no warrant at all.
        AccessError::Refused(Refusal::OtherAuthority | Refusal::UnknownWarrant) => {
            with_reason(Code::NotFound, "not_found", "no such object")
        }
        AccessError::Refused(refusal) => with_reason(code(&refusal), refusal.code(), &refusal.to_string()),
        AccessError::Unauthenticated(failure) => {
            with_reason(Code::Unauthenticated, failure.code(), "a valid bearer token or client certificate is required")
        }
        AccessError::AuditUnavailable(_) => {
            with_reason(Code::Unavailable, "audit_unavailable", "the audit trail cannot be written")
        }
        other => {
            // Errors of the registry, keystore or files carry paths and ids,
            // never an identifier; they are logged, and the caller gets a
            // generic message.
            tracing::error!(error = %other, "lawful-access call failed");
            with_reason(Code::Internal, "internal", "internal error; see the service log")
        }
    }
}

/// A status code's name for metric labels (a bounded set).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}
