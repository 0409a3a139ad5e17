//! The `[audit]` section.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// An append-only file, outside the state and keys directories, to
    /// which every signed head of the trail is also published, one JSON
    /// line each. An auditor copies it away from the host and checks the
    /// trail against it with `cdrvault audit verify --witness FILE`: that
    /// shows a trail rolled back or rewritten even by someone who holds the
    /// signing key. Off by default.
    pub witness_file: Option<PathBuf>,
}
