//! The lookup engine: the retained records of given targets within a time
//! window, with only the allowed data categories unsealed.
//!
//! Pruning, cheapest first:
//!
//! 1. days outside the window are never opened, nor days whose key is gone
//!    (beyond retention); a day destroyed by retention is then searched in
//!    the preservation areas that hold copies of it, under each order's key;
//! 2. per file, the token index ([`crate::storage::index`]) names the rows
//!    where a target's token occurs; a file without a usable index (or a target of
//!    an unindexed kind, cells) falls back to row groups pruned by their
//!    `start_time` statistics and token bloom filters, then a scan of the
//!    clear token and time columns;
//! 3. only the candidate rows are read (page index and row selection), with
//!    the sealed columns of the allowed categories and of the target's kind,
//!    and every candidate is confirmed against its unsealed value, which
//!    removes index-prefix, bloom-filter and token-collision false matches.
//!
//! Tokens are computed under every token key id the searched files name, so
//! a token-key rotation inside the window loses nothing.
//!
//! `plan` chooses the days and keys, `search` searches one file, `cache`
//! keeps what was read of each file, and [`LookupEngine`] runs the files of
//! a query on its threads.
//! The parsed footer of a companion (the sealed columns) carries the parquet crate's copy of
//! the day key (its decryptor), so the cache forgets a day as soon as the
//! day is destroyed (tombstone) or its key is gone, and an order's files as
//! soon as its key is gone: every query checks, and the service calls
//! [`LookupEngine::forget_destroyed`] every minute between queries.
//! Decrypted values live only in the query that read them.
//!
//! This module returns raw identifiers: it is the disclosure path. Callers
//! (the lawful-access service) must have checked the request's scope and
//! made its audit entry durable before anything leaves the process. It
//! blocks (file reads, decryption, threads of its own): async callers use
//! [`LookupEngine::find_async`], which runs it off the runtime's workers.

mod cache;
mod engine;
mod plan;
mod search;

use std::collections::BTreeSet;

use parquet::errors::ParquetError;

pub use engine::LookupEngine;

use crate::keys::KeyError;
use crate::model::{Category, IdentifierField, IdentifierKind, PartitionDate, TimestampMicros};
use crate::storage::read::ReadError;

/// The most days one query may span: ten years. The lawful-access desk
/// bounds requests well below this (`access.max_window_days`); this bound
/// keeps the engine from planning an unbounded number of days for any
/// caller.
pub const MAX_WINDOW_DAYS: u32 = 3_660;

/// What to look for.
#[derive(Debug, Clone)]
pub struct Query {
    /// Targets as (kind, canonical value); see
    /// [`crate::privacy::target::canonical_value`].
    pub targets: Vec<(IdentifierKind, String)>,
    /// Inclusive window on `start_time`.
    pub from: TimestampMicros,
    pub to: TimestampMicros,
    /// The categories whose identifiers may be disclosed.
    pub categories: BTreeSet<Category>,
    /// The preservation orders whose copies may answer, for days already
    /// destroyed, and for which targets. Empty: copies are never searched.
    pub preserved: Vec<PreservedScope>,
}

impl Query {
    /// The days of the window, by UTC date with both ends included; zero
    /// or less if it ends before it starts.
    pub fn days(&self) -> i64 {
        window_days(self.from, self.to)
    }
}

/// The days from `from` to `to`, by UTC date with both ends included; zero
/// or less if `to` is before `from`'s date.
pub fn window_days(from: TimestampMicros, to: TimestampMicros) -> i64 {
    to.partition_date().days_since_epoch() - from.partition_date().days_since_epoch() + 1
}

/// An order whose copies a query may search, and the positions (in
/// [`Query::targets`]) of the targets it may search them for: an order's
/// copies answer only for the order's own targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreservedScope {
    pub order: String,
    pub targets: Vec<usize>,
}

/// One record found, with the identifiers of the allowed categories.
#[derive(Clone, PartialEq, Eq)]
pub struct FoundRecord {
    pub day: PartitionDate,
    pub record_id: String,
    pub service: String,
    pub direction: Option<String>,
    pub start_time: TimestampMicros,
    pub end_time: Option<TimestampMicros>,
    pub identifiers: Vec<(IdentifierField, String)>,
    pub src_port: Option<i32>,
    pub dst_port: Option<i32>,
    /// The preservation order whose copy held the record, if its day was
    /// already destroyed.
    pub preserved_under: Option<String>,
}

impl std::fmt::Debug for FoundRecord {
    // A found record holds raw identifiers: Debug shows the id only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FoundRecord({}, {} identifiers)", self.record_id, self.identifiers.len())
    }
}

/// How the lookup went, for metrics, tests and benchmarks (no identifiers).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LookupStats {
    pub days: u64,
    /// Days in the window whose key is gone (beyond retention): unavailable,
    /// except for what preservation orders hold.
    pub days_unavailable: u64,
    /// Directories listed: a day's directory unchanged since its last
    /// listing is not listed again.
    pub listings: u64,
    pub files: u64,
    pub row_groups: u64,
    pub row_groups_read: u64,
    pub candidates: u64,
    pub false_matches: u64,
    /// Files searched through their token index.
    pub files_indexed: u64,
    /// Files searched by bloom filters and a token-column scan.
    pub files_scanned: u64,
    /// Token column chunks read by scans (zero when every file was indexed).
    pub token_chunks_scanned: u64,
    /// Index pages read.
    pub index_pages: u64,
    /// Companion column chunks read: a sealed column that is null in every
    /// row of a group read is skipped.
    pub sealed_chunks_read: u64,
    /// Column chunks (clear or sealed) whose wanted rows were read straight
    /// from their pages ([`crate::storage::direct`]), not through the
    /// parquet crate's reader.
    pub chunks_read_directly: u64,
    /// Column chunks whose wanted rows were read through the parquet
    /// crate's reader.
    pub chunks_through_reader: u64,
    /// Files of preservation areas searched.
    pub preserved_files: u64,
    /// Files whose footer came from the cache, and files opened afresh.
    pub cache_hits: u64,
    pub cache_misses: u64,
}

impl LookupStats {
    pub(super) fn add(&mut self, other: &LookupStats) {
        self.days += other.days;
        self.days_unavailable += other.days_unavailable;
        self.listings += other.listings;
        self.files += other.files;
        self.row_groups += other.row_groups;
        self.row_groups_read += other.row_groups_read;
        self.candidates += other.candidates;
        self.false_matches += other.false_matches;
        self.files_indexed += other.files_indexed;
        self.files_scanned += other.files_scanned;
        self.token_chunks_scanned += other.token_chunks_scanned;
        self.index_pages += other.index_pages;
        self.sealed_chunks_read += other.sealed_chunks_read;
        self.chunks_read_directly += other.chunks_read_directly;
        self.chunks_through_reader += other.chunks_through_reader;
        self.preserved_files += other.preserved_files;
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("cannot read {path}: {source}")]
    Parquet { path: String, source: ParquetError },
    #[error("lookup worker failed")]
    Worker,
    #[error("the window spans {days} days; a lookup spans at most {limit}")]
    WindowTooLong { days: i64, limit: u32 },
}

impl From<crate::ops::pool::Panicked> for LookupError {
    fn from(_: crate::ops::pool::Panicked) -> Self {
        LookupError::Worker
    }
}
