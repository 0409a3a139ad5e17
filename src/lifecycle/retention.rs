//! Retention: each day is destroyed once it is older than the retention
//! window, irreversibly, with evidence in the audit trail, and checked.
//!
//! The rule is [`crate::model::retention`]'s: a day `D` is expired once
//! `D < today − retention.days`.
//!
//! Deleting a day, in this order, each step durable before the next:
//!
//! 1. count its files and rows (from the plaintext footers);
//! 2. write its tombstone (with those counts): from now on the day can never
//!    be re-created, and an interrupted deletion is found again;
//! 3. destroy its data key: the sealed columns become undecryptable by
//!    anyone, whatever copies of the files may survive;
//! 4. delete its files (data files, their token indexes, temporaries) and
//!    directory, fsyncing as it goes;
//! 5. append the `day_deleted` audit entry, then mark the tombstone audited.
//!
//! A crash anywhere leaves the day intact (before 2) or on its way out; the
//! next sweep sees the pending tombstone or the expired files and finishes.
//!
//! A deleting sweep measures expiry only at the clock's today ([`SweepMode`]
//! gives a date to previews alone), and only once [`super::clock_check`]
//! trusts the clock; otherwise it destroys nothing, ends no order, and waits
//! for an operator to confirm the clock ([`Sweeper::confirm_clock`]).
//! This module must never delete a day that is not expired.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde::{Deserialize, Serialize};

use super::clock_check::{ClockCheck, ClockError, ClockReading, ClockSuspicion};
use super::config::RetentionConfig;
use super::orders::{OrderError, OrderStore};
use super::preserve::{self, PreserveError};
use crate::audit::{self, AuditError, AuditEvent, AuditTrail};
use crate::keys::{KeyError, KeyStore, token_key_id};
use crate::model::retention::{is_expired, oldest_retained};
use crate::model::{KeyId, PartitionDate, TimestampMicros};
use crate::ops::clock::Clock;
use crate::ops::durable::{self, DurableError};
use crate::ops::metrics::Metrics;
use crate::ops::periodic;
use crate::registry::OrderStatus;
use crate::storage::config::ParquetConfig;
use crate::storage::layout::{CDR_DIR, day_dir};
use crate::storage::read::{self, ReadError};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Durable(#[from] DurableError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error(transparent)]
    Preserve(#[from] PreserveError),
    #[error(transparent)]
    Clock(#[from] ClockError),
    #[error(
        "retention refused: {suspicion} ({reading}); nothing was destroyed and no order ended: if the clock is \
         right, run `cdrvault retention confirm-clock`"
    )]
    ClockSuspect { suspicion: ClockSuspicion, reading: ClockReading },
    #[error("sweep interrupted at {0:?} (crash injection)")]
    Injected(CrashPoint),
}

impl RetentionError {
    /// True when the process must stop: an fsync failed, whichever step
    /// (keys, audit, preservation, deletion) it failed in.
    pub fn is_fatal(&self) -> bool {
        match self {
            RetentionError::Keys(e) => e.is_fatal(),
            RetentionError::Durable(e) => e.is_fatal(),
            RetentionError::Audit(e) => e.is_fatal(),
            RetentionError::Order(e) => e.is_fatal(),
            RetentionError::Preserve(e) => e.is_fatal(),
            RetentionError::Clock(e) => e.is_fatal(),
            RetentionError::Read(_) | RetentionError::ClockSuspect { .. } | RetentionError::Injected(_) => false,
        }
    }
}

/// Points at which a test can make the sweep stop as if the process died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    AfterTombstone,
    AfterKeyDestroyed,
    AfterFirstFileDeleted,
    BeforeAudit,
}

/// Whether a run deletes or only reports what it would delete. Only a
/// preview takes a date: a deletion always measures expiry at the clock's
/// today, so no argument can make it destroy a live day or end an order
/// early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepMode {
    /// Destroys every day expired today, after ending the orders whose end
    /// has passed; refused while the clock is suspect.
    Delete,
    /// Lists the days a deletion as of `as_of` (default: today) would
    /// destroy. Destroys nothing and ends no order.
    DryRun { as_of: Option<PartitionDate> },
}

/// What one day's deletion removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedDay {
    pub day: PartitionDate,
    pub files: u64,
    pub rows: u64,
    pub key_id: Option<String>,
}

/// The tombstone's content: the evidence, kept until it is audited.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tombstone {
    #[serde(flatten)]
    deleted: DeletedDay,
    run: String,
    audited: bool,
}

#[derive(Debug, Clone)]
pub struct SweepReport {
    pub run: String,
    pub as_of: PartitionDate,
    pub oldest_retained: PartitionDate,
    pub mode: SweepMode,
    /// Days deleted (or, in a dry run, that would be).
    pub days: Vec<DeletedDay>,
    pub elapsed: std::time::Duration,
}

/// One finding of [`Sweeper::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    ExpiredDayHasFiles(PartitionDate),
    ExpiredDayHasKey(PartitionDate),
    DeletionIncomplete(PartitionDate),
    LiveDayWithoutKey(PartitionDate),
    AuditTrailDamaged(String),
    /// A lifted or ended order still has copies or a key.
    LiftedOrderHasData(String),
    /// A destroyed day's wrapped key file is still in the keys directory.
    DestroyedDayHasKey(PartitionDate),
    /// The HSM still holds the key-encryption key of a destroyed or
    /// expired day.
    DestroyedDayHasHsmKey(PartitionDate),
    /// The token key a destroyed day's files name can still be had.
    DestroyedDayHasTokenKey(PartitionDate),
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::ExpiredDayHasFiles(d) => write!(f, "expired day {d} still has files or a directory"),
            Violation::ExpiredDayHasKey(d) => write!(f, "expired day {d} still has its data key"),
            Violation::DeletionIncomplete(d) => write!(f, "deletion of {d} started but was not audited"),
            Violation::LiveDayWithoutKey(d) => write!(f, "live day {d} has files but no data key (unreadable)"),
            Violation::AuditTrailDamaged(problem) => write!(f, "audit trail damaged: {problem}"),
            Violation::LiftedOrderHasData(order) => {
                write!(f, "lifted order {order} still has preserved copies or a key")
            }
            Violation::DestroyedDayHasKey(d) => write!(f, "destroyed day {d} still has a wrapped key file"),
            Violation::DestroyedDayHasHsmKey(d) => {
                write!(f, "the HSM still holds the key-encryption key of destroyed or expired day {d}")
            }
            Violation::DestroyedDayHasTokenKey(d) => write!(f, "the token key of destroyed day {d} can still be had"),
        }
    }
}

/// The evidence of a verification.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub as_of: PartitionDate,
    pub oldest_retained: PartitionDate,
    pub live_days: Vec<PartitionDate>,
    pub live_files: u64,
    pub destroyed_days: Vec<PartitionDate>,
    /// `file` or `pkcs11`.
    pub custody: &'static str,
    /// The days whose key-encryption key the HSM holds, as listed through
    /// its module; `None` in file custody (days have no KEK of their own).
    pub hsm_day_keys: Option<Vec<PartitionDate>>,
    /// Destroyed days whose token key was looked for and not found.
    pub token_keys_gone: usize,
    pub audit_entries: u64,
    pub violations: Vec<Violation>,
}

/// Runs sweeps and verifications over one data directory and keystore.
pub struct Sweeper {
    data_dir: PathBuf,
    keys: Arc<KeyStore>,
    audit: Arc<AuditTrail>,
    clock: Arc<dyn Clock>,
    config: RetentionConfig,
    metrics: Option<Arc<Metrics>>,
    orders: Option<(Arc<OrderStore>, ParquetConfig)>,
    clock_check: ClockCheck,
    crash_at: Option<CrashPoint>,
}

impl Sweeper {
    pub fn new(
        data_dir: &Path,
        keys: Arc<KeyStore>,
        audit: Arc<AuditTrail>,
        clock: Arc<dyn Clock>,
        config: RetentionConfig,
    ) -> Self {
        Sweeper {
            data_dir: data_dir.to_path_buf(),
            clock_check: ClockCheck::new(&keys.retention_clock_path(), data_dir, config.max_clock_jump),
            keys,
            audit,
            clock,
            config,
            metrics: None,
            orders: None,
            crash_at: None,
        }
    }

    /// Honours the preservation orders of `orders` (copies written with
    /// `parquet` settings) before destroying a day, and ends them when
    /// their end date has passed.
    pub fn with_orders(mut self, orders: Arc<OrderStore>, parquet: ParquetConfig) -> Self {
        self.orders = Some((orders, parquet));
        self
    }

    /// Ends the orders whose end date has passed today, and finishes lifts
    /// that a crash interrupted. Only a deleting sweep calls it, with a
    /// trusted clock.
    fn end_orders(&self, today: PartitionDate) -> Result<(), RetentionError> {
        let Some((orders, _)) = &self.orders else { return Ok(()) };
        for order in orders.checked()? {
            // An order that was never decided ends too: its key goes.
            let ended = matches!(order.status, OrderStatus::Active | OrderStatus::Registered) && order.ends < today;
            let unfinished = order.status == OrderStatus::Lifted && orders.has_data(&order.id)?;
            if ended || unfinished {
                let reason = if ended { "ended" } else { "lift completed" };
                orders.lift(&order.id, reason, "retention", self.clock.now())?;
            }
        }
        Ok(())
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        metrics.retention_period.set(i64::from(self.config.days) * 86_400);
        self.metrics = Some(metrics);
        self
    }

    /// Makes the next sweep stop at `point`, as if the process had died there.
    pub fn crash_at(&mut self, point: Option<CrashPoint>) {
        self.crash_at = point;
    }

    fn today(&self) -> PartitionDate {
        TimestampMicros::from_datetime(self.clock.now()).partition_date()
    }

    /// Days that still have a trace: files or directory, key, or tombstone
    /// not yet audited.
    fn traces(&self) -> Result<Vec<PartitionDate>, RetentionError> {
        let mut days = read::list_days(&self.data_dir)?;
        days.extend(self.keys.days_with_keys()?);
        for day in self.keys.destroyed_days()? {
            if !self.tombstone(day)?.is_some_and(|t| t.audited) {
                days.push(day);
            }
        }
        days.sort();
        days.dedup();
        Ok(days)
    }

    fn tombstone(&self, day: PartitionDate) -> Result<Option<Tombstone>, RetentionError> {
        Ok(self.keys.tombstone(day)?.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Deletes every day expired today, or, in a dry run, lists the days
    /// expired at the date it previews.
    pub fn run(&self, mode: SweepMode) -> Result<SweepReport, RetentionError> {
        match mode {
            SweepMode::Delete => self.delete_expired(),
            SweepMode::DryRun { as_of } => self.preview(as_of.unwrap_or_else(|| self.today())),
        }
    }

    fn report(&self, now: DateTime<Utc>, as_of: PartitionDate, mode: SweepMode) -> SweepReport {
        SweepReport {
            run: format!("sweep-{}", now.format("%Y%m%dT%H%M%S%.6fZ")),
            as_of,
            oldest_retained: oldest_retained(as_of, self.config.days),
            mode,
            days: Vec::new(),
            elapsed: Default::default(),
        }
    }

    /// The days with a trace that are expired at `as_of`.
    fn expired(&self, as_of: PartitionDate) -> Result<Vec<PartitionDate>, RetentionError> {
        Ok(self.traces()?.into_iter().filter(|day| is_expired(*day, as_of, self.config.days)).collect())
    }

    fn preview(&self, as_of: PartitionDate) -> Result<SweepReport, RetentionError> {
        let started = Instant::now();
        let mut report = self.report(self.clock.now(), as_of, SweepMode::DryRun { as_of: Some(as_of) });
        for day in self.expired(as_of)? {
            report.days.push(self.measure(day)?);
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    fn delete_expired(&self) -> Result<SweepReport, RetentionError> {
        let started = Instant::now();
        // One reading of the clock for the whole sweep: the check, the
        // expiry and the evidence all speak of the same instant.
        let now = self.clock.now();
        let reading = self.clock_check.read(now)?;
        if let Some(suspicion) = self.clock_check.suspicion(&reading) {
            if let Some(metrics) = &self.metrics {
                metrics.retention_clock_suspect.set(1);
            }
            return Err(RetentionError::ClockSuspect { suspicion, reading });
        }
        let today = TimestampMicros::from_datetime(now).partition_date();
        let mut report = self.report(now, today, SweepMode::Delete);
        self.end_orders(today)?;
        for day in self.expired(today)? {
            let deleted = self.delete_day(day, &report.run, now)?;
            report.days.push(deleted);
        }
        self.clock_check.record_sweep(&reading)?;
        report.elapsed = started.elapsed();
        if let Some(metrics) = &self.metrics {
            metrics.retention_days_destroyed.inc_by(report.days.len() as u64);
            metrics.retention_rows_deleted.inc_by(report.days.iter().map(|d| d.rows).sum());
            metrics.retention_sweep_duration.observe(report.elapsed.as_secs_f64());
            metrics.retention_last_success.set(now.timestamp_millis() as f64 / 1000.0);
            metrics.retention_clock_suspect.set(0);
            self.update_gauges(today)?;
        }
        Ok(report)
    }

    /// An operator vouches for the clock: the confirmation is audited under
    /// `actor`, then "now" is recorded as the last sweep, so that the next
    /// sweep trusts the clock and destroys as of its today. Returns what the
    /// clock was checked against until then.
    pub fn confirm_clock(&self, actor: &str) -> Result<ClockReading, RetentionError> {
        Ok(self.clock_check.confirm(self.clock.now(), &self.audit, actor)?)
    }

    /// Refreshes the oldest day and the count of overdue days as of `as_of`.
    pub fn update_gauges(&self, as_of: PartitionDate) -> Result<(), RetentionError> {
        let Some(metrics) = &self.metrics else { return Ok(()) };
        let days = read::list_days(&self.data_dir)?;
        let oldest = days.first().map_or(0, |d| d.days_since_epoch() * 86_400);
        let overdue = days.iter().filter(|d| is_expired(**d, as_of, self.config.days)).count();
        metrics.retention_oldest_day_timestamp.set(oldest);
        metrics.retention_overdue_days.set(overdue as i64);
        Ok(())
    }

    /// [`Self::update_gauges`] as of the clock's today, at every scrape and
    /// on every instance, not only after the leader's hourly sweep.
    pub fn refresh_gauges(&self) {
        let _ = self.update_gauges(self.today()).inspect_err(|error| tracing::warn!(%error, "retention gauges"));
    }

    fn measure(&self, day: PartitionDate) -> Result<DeletedDay, RetentionError> {
        let files = read::list_files(&self.data_dir, day)?;
        let rows = files.iter().map(|f| row_count(f)).sum();
        let key_id = self.keys.existing_day_key(day)?.map(|k| k.id.to_string());
        Ok(DeletedDay { day, files: files.len() as u64, rows, key_id })
    }

    fn crash(&self, point: CrashPoint) -> Result<(), RetentionError> {
        if self.crash_at == Some(point) { Err(RetentionError::Injected(point)) } else { Ok(()) }
    }

    fn delete_day(&self, day: PartitionDate, run: &str, now: DateTime<Utc>) -> Result<DeletedDay, RetentionError> {
        // 1-2. Evidence first, in the tombstone. A deletion that was
        // interrupted keeps the evidence it recorded then.
        let mut tombstone = match self.tombstone(day)? {
            Some(existing) => existing,
            None => {
                // Preservation comes before anything irreversible: once the
                // tombstone exists the day key may be gone.
                if let Some((orders, parquet)) = &self.orders {
                    for order in orders.preserving()?.iter().filter(|o| o.covers(day)) {
                        let targets = orders.unseal_targets(order)?;
                        let rows = preserve::preserve_day(&self.data_dir, &self.keys, order, &targets, day, parquet)?;
                        self.audit.append(
                            "retention",
                            &AuditEvent::RecordsPreserved { order: order.id.clone(), day: day.to_string(), rows },
                            now,
                        )?;
                    }
                }
                let tombstone = Tombstone { deleted: self.measure(day)?, run: run.to_string(), audited: false };
                self.keys.write_tombstone(day, &serde_json::to_vec(&tombstone).unwrap_or_default())?;
                tombstone
            }
        };
        self.crash(CrashPoint::AfterTombstone)?;

        // 3. The key: after this the sealed columns are gone for good.
        if let Some(id) = self.keys.destroy_day_key(day)? {
            tombstone.deleted.key_id.get_or_insert(id.to_string());
        }
        self.crash(CrashPoint::AfterKeyDestroyed)?;

        // 4. The files (token indexes and temporaries included) and the
        // directory: everything in it goes, so no derived file outlives its
        // day.
        let dir = day_dir(&self.data_dir, day);
        if dir.exists() {
            let entries = std::fs::read_dir(&dir).map_err(|e| DurableError::io("list", &dir, e))?;
            for (n, entry) in entries.enumerate() {
                let entry = entry.map_err(|e| DurableError::io("list", &dir, e))?;
                durable::remove_file(&entry.path())?;
                if n == 0 {
                    self.crash(CrashPoint::AfterFirstFileDeleted)?;
                }
            }
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(DurableError::io("rmdir", &dir, e).into()),
            }
            durable::fsync_dir(&self.data_dir.join(CDR_DIR))?;
        }
        self.crash(CrashPoint::BeforeAudit)?;

        // 5. The evidence, durable, then the tombstone marked audited.
        let deleted = tombstone.deleted.clone();
        self.audit.append(
            "retention",
            &AuditEvent::DayDeleted {
                day: day.to_string(),
                files: deleted.files,
                rows: deleted.rows,
                key_id: deleted.key_id.clone(),
                run: tombstone.run.clone(),
            },
            now,
        )?;
        tombstone.audited = true;
        self.keys.write_tombstone(day, &serde_json::to_vec(&tombstone).unwrap_or_default())?;
        tracing::info!(day = %day, files = deleted.files, rows = deleted.rows, "day destroyed");
        Ok(deleted)
    }

    /// Checks that no expired day has files, a directory or a key, that no
    /// deletion is left half done, that every live day has its key, and that
    /// the audit trail verifies. The check itself is audited.
    pub fn verify(
        &self,
        as_of: Option<PartitionDate>,
        public_key: &[u8],
        audit_path: &Path,
    ) -> Result<VerifyReport, RetentionError> {
        let as_of = as_of.unwrap_or_else(|| self.today());
        let mut violations = Vec::new();
        let days_with_files = read::list_days(&self.data_dir)?;
        let days_with_keys = self.keys.days_with_keys()?;
        let mut live_days = Vec::new();
        let mut live_files = 0;
        for &day in &days_with_files {
            if is_expired(day, as_of, self.config.days) {
                violations.push(Violation::ExpiredDayHasFiles(day));
            } else {
                let files = read::list_files(&self.data_dir, day)?;
                live_files += files.len() as u64;
                if !files.is_empty() && !days_with_keys.contains(&day) {
                    violations.push(Violation::LiveDayWithoutKey(day));
                }
                live_days.push(day);
            }
        }
        for &day in &days_with_keys {
            if is_expired(day, as_of, self.config.days) {
                violations.push(Violation::ExpiredDayHasKey(day));
            }
        }
        let destroyed_days = self.keys.destroyed_days()?;
        let mut token_keys_gone = 0;
        for &day in &destroyed_days {
            let tombstone = self.tombstone(day)?;
            if !tombstone.as_ref().is_some_and(|t| t.audited) {
                violations.push(Violation::DeletionIncomplete(day));
            }
            if days_with_keys.contains(&day) {
                violations.push(Violation::DestroyedDayHasKey(day));
            }
            // The token key of the day, named after its data key: derived
            // from it, it must be gone with it.
            let token_key = tombstone.and_then(|t| t.deleted.key_id).and_then(KeyId::new).map(|id| token_key_id(&id));
            if let Some(token_key) = token_key {
                if self.keys.token_key(&token_key)?.is_some() {
                    violations.push(Violation::DestroyedDayHasTokenKey(day));
                } else {
                    token_keys_gone += 1;
                }
            }
        }
        let hsm_day_keys = self.keys.custody().days_with_keks()?;
        for &day in hsm_day_keys.iter().flatten() {
            if destroyed_days.contains(&day) || is_expired(day, as_of, self.config.days) {
                violations.push(Violation::DestroyedDayHasHsmKey(day));
            }
        }
        if let Some((orders, _)) = &self.orders {
            for order in orders.checked()? {
                if order.status == OrderStatus::Lifted && orders.has_data(&order.id)? {
                    violations.push(Violation::LiftedOrderHasData(order.id.clone()));
                }
            }
        }
        let check = audit::verify(audit_path, public_key, &self.keys.audit_head_path(audit_path))?;
        if let Some((seq, problem)) = &check.problem {
            violations.push(Violation::AuditTrailDamaged(format!("entry {seq}: {problem}")));
        }
        violations.sort_by_key(|v| v.to_string());
        let report = VerifyReport {
            as_of,
            oldest_retained: oldest_retained(as_of, self.config.days),
            live_days,
            live_files,
            destroyed_days,
            custody: self.keys.custody().name(),
            hsm_day_keys,
            token_keys_gone,
            audit_entries: check.entries,
            violations,
        };
        if check.problem.is_none() {
            self.audit.append(
                "retention-verify",
                &AuditEvent::RetentionVerified {
                    as_of: as_of.to_string(),
                    violations: report.violations.len() as u64,
                    run: format!("verify-{}", self.clock.now().format("%Y%m%dT%H%M%S%.6fZ")),
                },
                self.clock.now(),
            )?;
        }
        Ok(report)
    }
}

/// The service sweeps periodically ([`periodic`]), deleting.
impl periodic::Job for Sweeper {
    type Report = SweepReport;
    type Error = RetentionError;
    const NAME: &'static str = "retention sweep";

    fn run_once(&self) -> Result<SweepReport, RetentionError> {
        self.run(SweepMode::Delete)
    }

    fn is_fatal(error: &RetentionError) -> bool {
        error.is_fatal()
    }

    fn log(report: &SweepReport) {
        tracing::info!(
            days = report.days.len(),
            elapsed_ms = report.elapsed.as_millis() as u64,
            "retention sweep done"
        );
    }
}

/// Rows of a file from its plaintext footer; 0 if the footer is unreadable
/// (the file is deleted all the same).
fn row_count(path: &Path) -> u64 {
    std::fs::File::open(path)
        .ok()
        .and_then(|f| SerializedFileReader::new(f).ok())
        .map_or(0, |r| r.metadata().file_metadata().num_rows().max(0) as u64)
}
