//! The kinds of audit entry. Each variant's fields are the evidence an
//! auditor needs, and never a raw identifier.

use serde::{Deserialize, Serialize};

/// What happened. Each variant is one kind of entry; its fields are the
/// evidence an auditor needs, and never a raw identifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A day's data key was destroyed and its files deleted.
    DayDeleted {
        day: String,
        files: u64,
        rows: u64,
        key_id: Option<String>,
        run: String,
    },
    /// An operator vouched for the clock after retention distrusted it:
    /// `now` (RFC 3339) becomes the last sweep, and sweeps destroy again as
    /// of its date. `last_sweep` (RFC 3339) and `newest_day` (YYYY-MM-DD) are
    /// the references the clock was checked against, absent if there were
    /// none.
    ClockConfirmed {
        now: String,
        last_sweep: Option<String>,
        newest_day: Option<String>,
    },
    /// A process created a day's data key, and with it the day's token key
    /// (the automatic rotation of token keys: one a day).
    DayKeysCreated {
        day: String,
        data_key_id: String,
        token_key_id: String,
    },
    /// A retention verification ran.
    RetentionVerified {
        as_of: String,
        violations: u64,
        run: String,
    },
    /// A preservation order was registered by a legal reviewer, to be
    /// decided by another; its targets appear as kinds and keyed references.
    OrderRegistered {
        order: String,
        authority: String,
        reference: String,
        target_kinds: Vec<String>,
        target_refs: Vec<String>,
        window_start: String,
        window_end: String,
        ends: String,
    },
    /// A registered order was approved (it preserves from now on) or
    /// rejected.
    OrderDecided {
        order: String,
        decision: String,
        reason: Option<String>,
    },
    /// A new end date was asked for an active order, to be approved by
    /// another reviewer.
    OrderEndRequested {
        order: String,
        ends: String,
    },
    /// A pending end date was approved (the order now ends then) or
    /// rejected.
    OrderEndDecided {
        order: String,
        ends: String,
        decision: String,
    },
    /// A preservation order was lifted (or ended) and its copies destroyed.
    OrderLifted {
        order: String,
        files: u64,
        reason: String,
    },
    /// Records of a day were copied into a preservation area before the day
    /// was deleted.
    RecordsPreserved {
        order: String,
        day: String,
        rows: u64,
    },
    /// A call came without valid credentials: the first from its peer in
    /// an interval. The token is never kept.
    AuthenticationFailed {
        peer: String,
        method: String,
        reason: String,
    },
    /// The further failed authentications of a peer in one interval,
    /// summarised: attempts stay visible without costing an entry each.
    AuthenticationFailures {
        peer: String,
        count: u64,
        reasons: Vec<String>,
        since: String,
        until: String,
    },
    /// A call was refused: role, object, scope, replay, rate or size.
    AccessRefused {
        method: String,
        reason: String,
        detail: String,
        warrant: Option<String>,
        request_id: Option<String>,
        order: Option<String>,
    },
    AuthorityCreated {
        authority: String,
        country: String,
    },
    PrincipalCreated {
        principal: String,
        person: String,
        roles: Vec<String>,
        authority: Option<String>,
        expires_at: Option<String>,
    },
    /// A principal was revoked: its credentials never work again.
    PrincipalRevoked {
        principal: String,
        reason: String,
    },
    /// A principal's bearer token was replaced; the old one stopped working.
    TokenRotated {
        principal: String,
    },
    /// A warrant was registered; its targets appear as kinds and keyed
    /// references ([`crate::audit::AuditTrail::target_ref`]).
    WarrantRegistered {
        warrant: String,
        authority: String,
        reference: String,
        target_kinds: Vec<String>,
        target_refs: Vec<String>,
        period_start: String,
        period_end: String,
        categories: Vec<String>,
        cell_dump: bool,
        valid_until: String,
    },
    WarrantDecided {
        warrant: String,
        decision: String,
        reason: Option<String>,
    },
    /// A warrant was closed and its key (so its sealed targets) destroyed.
    WarrantClosed {
        warrant: String,
    },
    /// A request was executed and its result sealed for delivery.
    RequestAnswered {
        request_id: String,
        warrant: String,
        status: String,
        target_refs: Vec<String>,
        window_start: String,
        window_end: String,
        categories: Vec<String>,
        records: u64,
        format: String,
        sha256: String,
        bytes: u64,
    },
    /// A result's bytes are about to leave the process (entry made first).
    ResultDelivered {
        request_id: String,
        sha256: String,
        bytes: u64,
    },
    /// A kept result's key and file were destroyed.
    ResultDestroyed {
        request_id: String,
        reason: String,
    },
    /// A record key that no row of the registry names (the row deleted
    /// behind the service, or a crash between the key and the row) was
    /// destroyed: `of` a `result` (with any sealed bytes kept under its
    /// name) or a `warrant`.
    UnnamedKeyDestroyed {
        of: String,
        name: String,
    },
    /// A data subject's records are about to leave the process.
    SubjectExported {
        reference: String,
        kind: String,
        target_ref: String,
        records: u64,
        sha256: String,
        bytes: u64,
    },
    /// A registry row whose seal is missing or wrong (written or changed
    /// outside the service) was refused, and the call `method` that needed
    /// it failed. `table` and `id` name the row.
    RegistryRowRefused {
        table: String,
        id: String,
        method: String,
    },
    AuditVerified {
        entries: u64,
        intact: bool,
    },
    /// A torn last line (a write interrupted by a crash, never
    /// acknowledged) was cut from the trail after entry `after_seq`.
    TrailRepaired {
        cut_bytes: u64,
        after_seq: u64,
    },
    StatisticsReported {
        year: i32,
    },
}
